"""Encryption at rest, as someone who steals the files would see them: after an import of
the Synthea sample, the SQLite files (WAL included) and a `pg_dump` hold none of the
patients' names, birth dates, identifiers, addresses or phone numbers, in any usual form
(as written, lowercased, without accents, digits only; `pg_dump`'s hex-printed bytea
decoded first); yet the hub finds the patients by all of them. Then: a missing, foreign or
world-readable key file stops the hub before it serves anything, and a corrupted
ciphertext is refused, not served."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import unicodedata

import pytest

from e2e_support import SYNTHEA_DIR, assert_outcome, one_shot, run_cli, search_ids


def _normalized(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()


def _secrets() -> dict[str, set[str]]:
    """What identifies each Synthea patient, by kind."""
    found: dict[str, set[str]] = {"name": set(), "birth date": set(), "identifier": set(),
                                  "address": set(), "phone": set()}
    for path in sorted(SYNTHEA_DIR.glob("*.json")):
        for entry in json.loads(path.read_text())["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] != "Patient":
                continue
            for name in resource.get("name", []):
                found["name"].add(name.get("family", ""))
                found["name"].update(name.get("given", []))
            found["birth date"].add(resource.get("birthDate", ""))
            for identifier in resource.get("identifier", []):
                found["identifier"].add(identifier.get("value", ""))
            for address in resource.get("address", []):
                found["address"].update(address.get("line", []))
                found["address"].add(address.get("city", ""))
                found["address"].add(address.get("postalCode", ""))
            for telecom in resource.get("telecom", []):
                found["phone"].add(telecom.get("value", ""))
    # Four characters at least: shorter strings occur by chance in any binary file.
    return {kind: {value for value in values if len(value) >= 4} for kind, values in found.items()}


def _forms(value: str) -> set[str]:
    forms = {value.lower(), _normalized(value)}
    digits = re.sub(r"\D", "", value)
    if len(digits) >= 6:
        forms.add(digits)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        forms.add(value.replace("-", ""))
    return {form for form in forms if len(form) >= 4}


# The index's keyed hashes (`Patient.family/p:` and 22 base64url characters): random
# letters, where any four-letter name turns up by chance among tens of thousands.
BLIND_TERM = re.compile(r"[A-Za-z]+\.[a-z:-]+/[a-z]:[A-Za-z0-9_-]{22}")


def _facility_names() -> set[str]:
    """Names of the organizations and locations of the sample: public, not patient data,
    and often made of a patient's city ("Newton-Wellesley Hospital")."""
    names = set()
    for path in sorted(SYNTHEA_DIR.glob("*.json")):
        for entry in json.loads(path.read_text())["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] in ("Organization", "Location") and resource.get("name"):
                names.add(resource["name"].lower())
                names.add(_normalized(resource["name"]))
    return names


# Base64 of random bytes (sealed AuditEvent queries, signatures and hashes in checkpoint
# notes): random letters too.
QUOTED_BASE64 = re.compile(r'"[A-Za-z0-9+/]{24,}={0,2}"')
SPACED_BASE64 = re.compile(r"(?<=\s)[A-Za-z0-9+/]{40,}={0,2}(?=\s)")
# A word in clear has text around it (JSON, an index row's other columns); a chance match
# inside ciphertext has random bytes around it: one side must hold this many printable
# characters. (A 4-letter name turns up by chance about once in 10 MB of random bytes.)
CONTEXT = 5


def _inside_number(haystack: str, form: str, start: int, end: int) -> bool:
    """Whether a value made of digits was found inside a longer number: the stores'
    microsecond times and counters (`1764524446017523` holds the postcode `01752`) are
    not that value, which in clear stands between quotes or a column's separators."""
    if not form.isdigit():
        return False
    return (start > 0 and haystack[start - 1].isdigit()) or (end < len(haystack) and haystack[end].isdigit())


def _in_text(haystack: str, start: int, end: int) -> bool:
    printable = lambda text: len(text) == CONTEXT and all(" " <= c <= "~" or c in "\t\r\n" for c in text)  # noqa: E731
    return printable(haystack[max(0, start - CONTEXT):start]) or printable(haystack[end:end + CONTEXT])


def _leaks(haystack: str) -> list[str]:
    haystack = BLIND_TERM.sub(" ", haystack)
    haystack = SPACED_BASE64.sub(" ", QUOTED_BASE64.sub('" "', haystack)).lower()
    for name in sorted(_facility_names(), key=len, reverse=True):
        haystack = haystack.replace(name, " ")
    leaks = []
    for kind, values in _secrets().items():
        for value in values:
            for form in _forms(value):
                if any(_in_text(haystack, m.start(), m.end()) and not _inside_number(haystack, form, m.start(), m.end())
                       for m in re.finditer(re.escape(form), haystack)):
                    leaks.append(f"{kind} {value!r} (as {form!r})")
    return leaks


@pytest.fixture(params=["sqlite", "postgres"])
def imported(request, hygie_bin, tmp_path, start_hub):
    key_file = tmp_path / "keys" / "vault.key"
    if request.param == "sqlite":
        store = ["--data-dir", str(tmp_path / "data")]
        hub_args = {"data_dir": tmp_path / "data"}
    else:
        pg = request.getfixturevalue("pg_databases")
        url = pg.create()
        store = ["--database", url]
        hub_args = {"database_url": url}
    env = {"HYGIE_VAULT_KEY_FILE": str(key_file)}
    bundles = sorted(SYNTHEA_DIR.glob("*.json"))
    done = run_cli(hygie_bin, ["import", *store, *map(str, bundles)], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert key_file.exists() and (key_file.stat().st_mode & 0o777) == 0o600
    yield request.param, store, hub_args, env, key_file
    if request.param == "postgres":
        request.getfixturevalue("pg_databases").drop(hub_args["database_url"])


def test_no_identifying_data_in_clear_at_rest_yet_search_finds_it(imported, tmp_path, start_hub, http):
    backend, store, hub_args, env, _ = imported
    # Searches that the blind index must answer, while the hub runs (its WAL is live).
    server = start_hub(backend, env=env, **hub_args)
    hub = server.fhir_url
    for path in sorted(SYNTHEA_DIR.glob("*.json")):
        patients = [e["resource"] for e in json.loads(path.read_text())["entry"]
                    if e["resource"]["resourceType"] == "Patient"]
        if not patients:
            continue  # the practitioners' bundle
        patient = patients[0]
        name = patient["name"][0]
        identifier = next(i for i in patient["identifier"] if i.get("system", "").endswith("us-ssn"))
        phone = patient["telecom"][0]["value"]
        city = patient["address"][0]["city"]
        searches = [
            {"family": name["family"]},
            {"given": name["given"][0][:4].lower()},
            {"family:exact": name["family"]},
            {"family:contains": name["family"][1:5]},
            {"birthdate": patient["birthDate"]},
            {"birthdate": patient["birthDate"][:7]},
            {"identifier": f"{identifier['system']}|{identifier['value']}"},
            {"phone": phone},
            {"address-city": city, "family": name["family"]},
        ]
        for params in searches:
            found = search_ids(http, hub, "Patient", params)
            assert len(found) == 1, f"{params}: {found}"
    files = b""
    if backend == "sqlite":
        data_dir = hub_args["data_dir"]
        names = sorted(os.listdir(data_dir))
        assert "hygie.db" in names, names
        for name in names:
            files += (data_dir / name).read_bytes()
        haystack = files.decode("latin-1")
    else:
        dump = subprocess.run(["pg_dump", "--data-only", "--no-owner", hub_args["database_url"]],
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert dump.returncode == 0, dump.stderr
        assert "resource_versions" in dump.stdout
        # bytea columns are printed as hex (`\\x7b22…`): decoded, so that a body in clear
        # would read as text, and so that hex digits do not spell postcodes by chance.
        haystack = re.sub(r"\\{1,2}x([0-9a-f]+)",
                          lambda m: bytes.fromhex(m.group(1)).decode("latin-1"), dump.stdout)
    assert len(haystack) > 100_000, "the files hold the import"
    # The searches above are in the audit log; their queries (base64, as BALP has them)
    # must not spell what was searched for.
    queries = _audit_queries(backend, hub_args)
    assert len(queries) >= 9, queries
    decoded = " ".join(base64.b64decode(q).decode("latin-1") for q in queries)
    assert not _leaks(decoded), f"search queries in clear in the audit log: {_leaks(decoded)[:5]}"
    # … while the DPO reading the trail through the hub sees them.
    trail = http.get(f"{hub}/AuditEvent", params={"subtype": "search-type", "_count": "200"})
    assert trail.status_code == 200, trail.text
    served = [base64.b64decode(e["query"]).decode() for entry in trail.json().get("entry", [])
              for e in entry["resource"].get("entity", []) if "query" in e]
    assert any("family=" in q for q in served), served[:5]
    leaks = _leaks(haystack)
    assert not leaks, f"in clear at rest ({backend}): {leaks[:20]}"
    # The check itself can fail: the key file, were it kept with the data, would be found
    # by nothing above; but a body written in clear would be.
    assert _leaks(json.dumps({"family": next(iter(_secrets()["name"]))}))
    # … and a postcode in clear is found, though numbers around it are not that postcode.
    postcode = next(value for value in sorted(_secrets()["address"]) if value.isdigit())
    assert _leaks(json.dumps({"postalCode": postcode}))
    assert not _leaks(f"\t17645244460{postcode}3\t")


def _audit_queries(backend, hub_args) -> list[str]:
    """The `entity.query` of every stored AuditEvent leaf."""
    if backend == "sqlite":
        import sqlite3
        with sqlite3.connect(hub_args["data_dir"] / "hygie.db") as db:
            leaves = [row[0] for row in db.execute("SELECT leaf FROM audit_log WHERE leaf IS NOT NULL")]
    else:
        out = subprocess.run(["psql", "-X", "-A", "-t", "-d", hub_args["database_url"], "-c",
                              "SELECT encode(leaf, 'hex') FROM audit_log WHERE leaf IS NOT NULL"],
                             capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert out.returncode == 0, out.stderr
        leaves = [bytes.fromhex(line) for line in out.stdout.split()]
    return [entity["query"] for leaf in leaves for entity in json.loads(leaf).get("entity", [])
            if "query" in entity]


def test_a_missing_foreign_or_exposed_key_file_stops_the_hub(imported, hygie_bin, tmp_path):
    backend, store, hub_args, env, key_file = imported
    serve = ["serve", "--no-auth", "--listen", "127.0.0.1:0", *store]

    moved = key_file.with_name("elsewhere.key")
    key_file.rename(moved)
    missing = run_cli(hygie_bin, serve, cwd=tmp_path, env=env, timeout_s=60)
    assert missing.returncode != 0
    assert "is missing" in missing.stderr and str(key_file) in missing.stderr, missing.stderr
    assert not key_file.exists(), "no new key file was made for a database that has one"

    foreign_dir = tmp_path / "foreign"
    foreign = run_cli(hygie_bin, ["import", "--data-dir", str(foreign_dir / "data"),
                                  str(sorted(SYNTHEA_DIR.glob("*.json"))[0])],
                      cwd=tmp_path, env={"HYGIE_VAULT_KEY_FILE": str(foreign_dir / "vault.key")})
    assert foreign.returncode == 0, foreign.stderr
    wrong = run_cli(hygie_bin, serve, cwd=tmp_path,
                    env={"HYGIE_VAULT_KEY_FILE": str(foreign_dir / "vault.key")}, timeout_s=60)
    assert wrong.returncode != 0
    assert "belongs to installation" in wrong.stderr, wrong.stderr

    moved.rename(key_file)
    key_file.chmod(0o644)
    exposed = run_cli(hygie_bin, serve, cwd=tmp_path, env=env, timeout_s=60)
    assert exposed.returncode != 0
    assert "0644" in exposed.stderr and "0600" in exposed.stderr, exposed.stderr
    key_file.chmod(0o600)


def test_a_corrupted_ciphertext_is_refused_not_served(imported, start_hub, http, tmp_path):
    backend, store, hub_args, env, _ = imported
    server = start_hub(backend, env=env, **hub_args)
    hub = server.fhir_url
    ids = search_ids(http, hub, "Patient", {})
    assert len(ids) >= 2
    victim, bystander = ids[0], ids[1]
    server.stop()
    # One byte of the victim's stored body flipped, as a disk or an attacker would.
    flip = ("UPDATE resource_versions SET body = overlay(body placing "
            "decode(lpad(to_hex(get_byte(body, 60) # 1), 2, '0'), 'hex') from 61 for 1) "
            f"WHERE resource_type = 'Patient' AND id = '{victim}'")
    if backend == "sqlite":
        import sqlite3
        with sqlite3.connect(hub_args["data_dir"] / "hygie.db") as db:
            body = bytearray(db.execute("SELECT body FROM resource_versions WHERE resource_type = 'Patient' "
                                        "AND id = ?", (victim,)).fetchone()[0])
            body[60] ^= 1
            db.execute("UPDATE resource_versions SET body = ? WHERE resource_type = 'Patient' AND id = ?",
                       (bytes(body), victim))
    else:
        done = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", hub_args["database_url"],
                               "-c", flip], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
    server = start_hub(backend, env=env, **hub_args)
    refused = one_shot("GET", f"{server.fhir_url}/Patient/{victim}")
    assert_outcome(refused, 500)
    assert not _leaks(refused.text), "a corrupted record was partly served"
    assert one_shot("GET", f"{server.fhir_url}/Patient/{bystander}").status_code == 200
