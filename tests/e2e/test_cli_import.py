"""`hygie import`: Synthea bundles, NDJSON with a bad line, an invalid transaction file; then
a server on the same store serves what was imported. Both backends."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from e2e_support import (
    MRN_SYSTEM,
    SYNTHEA_DIR,
    follow_pages,
    patient,
    read,
    run_cli,
    search_ids,
    system_history_size,
)

SYNTHEA_PATIENTS = {
    # identifier value (system https://github.com/synthetichealth/synthea) -> family name
    "bc0fbd67-bfe3-46c8-8ce9-ef20b0705b46": "Bins",
    "281f4a03-57e9-4b22-a322-68890ff22172": "Dach",
    "7735ab79-6ac8-4b81-9936-f7ddabd18751": "McLaughlin",
}
SYNTHEA_SYSTEM = "https://github.com/synthetichealth/synthea"


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    """Store arguments for `hygie import` and `start_hub` on one fresh store."""
    if request.param == "sqlite":
        data_dir = tmp_path / "data"
        yield {"backend": "sqlite", "cli": ["--data-dir", str(data_dir)], "hub": {"data_dir": data_dir}}
        return
    pg = request.getfixturevalue("pg_databases")
    url = pg.create()
    yield {"backend": "postgres", "cli": ["--database", url], "hub": {"database_url": url}}
    pg.drop(url)


def _import(hygie_bin, tmp_path, store, *paths):
    return run_cli(hygie_bin, ["import", *store["cli"], *map(str, paths)], cwd=tmp_path)


def _serve(start_hub, store):
    return start_hub(store["backend"], **store["hub"])


def test_import_synthea(hygie_bin, tmp_path, store, start_hub, http):
    bundles = sorted(SYNTHEA_DIR.glob("*.json"))
    expected = Counter()
    for path in bundles:
        for entry in json.loads(path.read_text())["entry"]:
            expected[entry["resource"]["resourceType"]] += 1
    total = sum(expected.values())

    done = _import(hygie_bin, tmp_path, store, SYNTHEA_DIR)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"hygie import exited {done.returncode}:\n{output}"
    summary = re.search(r"Imported (\d+) resources from (\d+) files", output)
    assert summary, f"a summary line is expected:\n{output}"
    assert (int(summary.group(1)), int(summary.group(2))) == (total, len(bundles)), summary.group(0)

    server = _serve(start_hub, store)
    hub = server.fhir_url
    for value, family in SYNTHEA_PATIENTS.items():
        ids = search_ids(http, hub, "Patient", {"identifier": f"{SYNTHEA_SYSTEM}|{value}"})
        assert len(ids) == 1, f"Patient {value}: {ids}"
        assert read(http, hub, f"Patient/{ids[0]}")["name"][0]["family"].startswith(family)
    for resource_type in ("Patient", "Practitioner", "Encounter"):
        entries, _ = follow_pages(http, f"{hub}/{resource_type}", "searchset", params={"_count": "100"})
        assert len(entries) == expected[resource_type], f"{resource_type}: {len(entries)} != {expected[resource_type]}"
    assert system_history_size(http, hub) == total


def test_ndjson_with_a_bad_line(hygie_bin, tmp_path, store, start_hub, http):
    lines = [json.dumps(patient(f"nd-{n}")) for n in range(1, 7)]
    lines[2] = '{"resourceType": "Patient", "birthDate": "1970-13-01"}'  # line 3: invalid
    lines[4] = '{"resourceType": "Patient", "name": [{"family": "cut'  # line 5: not JSON
    ndjson = tmp_path / "patients.ndjson"
    ndjson.write_text("\n".join(lines) + "\n")

    done = _import(hygie_bin, tmp_path, store, ndjson)
    output = done.stdout + done.stderr
    assert done.returncode != 0, f"a bad line must make the import fail:\n{output}"
    assert f"{ndjson}:3" in output or "patients.ndjson:3" in output, f"line 3 must be named file:line:\n{output}"
    assert "patients.ndjson:5" in output, f"line 5 must be named file:line:\n{output}"
    assert "birthDate" in output, f"the message should say what is wrong on line 3:\n{output}"

    server = _serve(start_hub, store)
    for n in (1, 2, 4, 6):
        assert len(search_ids(http, server.fhir_url, "Patient", {"identifier": f"{MRN_SYSTEM}|nd-{n}"})) == 1, n
    assert system_history_size(http, server.fhir_url) == 4


def test_invalid_transaction_file_imports_nothing(hygie_bin, tmp_path, store, start_hub, http):
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:6f1c3d52-7f0e-4c55-9a55-111111111111", "resource": patient("tx-1"),
             "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:6f1c3d52-7f0e-4c55-9a55-222222222222", "resource": patient("tx-2"),
             "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:6f1c3d52-7f0e-4c55-9a55-333333333333",
             "resource": patient("tx-3", unknownElement=True),
             "request": {"method": "POST", "url": "Patient"}},
        ],
    }
    path = tmp_path / "transaction.json"
    path.write_text(json.dumps(bundle))
    good = tmp_path / "good.ndjson"
    good.write_text(json.dumps(patient("tx-good")) + "\n")

    done = _import(hygie_bin, tmp_path, store, path, good)
    output = done.stdout + done.stderr
    assert done.returncode != 0, f"an invalid transaction must make the import fail:\n{output}"
    assert "transaction.json" in output and "Bundle.entry[2]" in output, (
        f"the message names the file and the entry:\n{output}"
    )

    server = _serve(start_hub, store)
    for n in (1, 2, 3):
        assert search_ids(http, server.fhir_url, "Patient", {"identifier": f"{MRN_SYSTEM}|tx-{n}"}) == []
    assert len(search_ids(http, server.fhir_url, "Patient", {"identifier": f"{MRN_SYSTEM}|tx-good"})) == 1
    assert system_history_size(http, server.fhir_url) == 1


def test_transaction_files_commit_together_in_order_each_all_or_nothing(
        hygie_bin, tmp_path, store, start_hub, http):
    """Consecutive transaction files are committed together, but each stays all-or-nothing
    and they run in file order: a file may reference what an earlier file created, and one
    that fails in the store (its conditional reference matches nothing) leaves no trace
    while the files before and after it are kept."""
    org_system = "http://example.org/organizations"

    def transaction(*resources):
        return {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{n:012}", "resource": r,
             "request": {"method": "POST", "url": r["resourceType"]}}
            for n, r in enumerate(resources)]}

    def managed_by(mrn, org):
        return patient(mrn, managingOrganization={"reference": f"Organization?identifier={org_system}|{org}"})

    files = {
        "01-organization.json": transaction(
            {"resourceType": "Organization", "identifier": [{"system": org_system, "value": "org-1"}],
             "name": "Hôpital d'exemple"}),
        "02-needs-01.json": transaction(managed_by("grp-1", "org-1")),
        "03-dangling.json": transaction(patient("grp-2"), managed_by("grp-3", "no-such-org")),
        "04-after.json": transaction(patient("grp-4")),
    }
    for name, bundle in files.items():
        (tmp_path / name).write_text(json.dumps(bundle))

    done = _import(hygie_bin, tmp_path, store, *(tmp_path / name for name in files))
    output = done.stdout + done.stderr
    assert done.returncode != 0, f"a failed transaction must make the import fail:\n{output}"
    assert "03-dangling.json" in output and "matches no resource" in output, output
    assert "02-needs-01.json" not in output and "04-after.json" not in output, output
    summary = re.search(r"Imported (\d+) resources from (\d+) files", output)
    assert summary and (int(summary.group(1)), int(summary.group(2))) == (3, 4), output

    server = _serve(start_hub, store)
    hub = server.fhir_url
    [org_id] = search_ids(http, hub, "Organization", {"identifier": f"{org_system}|org-1"})
    [managed] = search_ids(http, hub, "Patient", {"identifier": f"{MRN_SYSTEM}|grp-1"})
    assert read(http, hub, f"Patient/{managed}")["managingOrganization"]["reference"] == f"Organization/{org_id}"
    for mrn in ("grp-2", "grp-3"):
        assert search_ids(http, hub, "Patient", {"identifier": f"{MRN_SYSTEM}|{mrn}"}) == [], mrn
    assert len(search_ids(http, hub, "Patient", {"identifier": f"{MRN_SYSTEM}|grp-4"})) == 1
    assert system_history_size(http, hub) == 3


def test_import_of_a_missing_path(hygie_bin, tmp_path, store):
    done = _import(hygie_bin, tmp_path, store, tmp_path / "nowhere")
    assert done.returncode != 0
    assert "nowhere" in done.stdout + done.stderr
