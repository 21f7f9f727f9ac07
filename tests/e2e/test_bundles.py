"""Batch and transaction Bundles at POST [base] (http.html#transaction): urn:uuid resolution,
all-or-nothing transactions, per-entry batch results, conditional create in a transaction,
a whole Synthea bundle."""

from __future__ import annotations

import json
import uuid
from collections import Counter

from hygie_e2e import assert_valid_r4

from e2e_support import (
    MRN_SYSTEM,
    SYNTHEA_DIR,
    assert_outcome,
    check_bundle,
    create,
    follow_pages,
    observation,
    patient,
    read,
    search_ids,
    system_history_size,
    unique_value,
)

DENNY = SYNTHEA_DIR / "Denny_Bins_bc0fbd67-bfe3-46c8-8ce9-ef20b0705b46.json"


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _post_entry(resource: dict, full_url: str | None = None, **request) -> dict:
    entry = {
        "fullUrl": full_url or _urn(),
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"], **request},
    }
    return entry


def _reference_of(location: str) -> str:
    """`Type/id` from a response location (absolute or relative, with or without _history)."""
    path = location.split("/fhir/", 1)[-1]
    parts = path.split("/")
    assert len(parts) >= 2, location
    return f"{parts[0]}/{parts[1]}"


def _status_code(entry: dict) -> int:
    return int(entry["response"]["status"].split()[0])


def test_transaction_resolves_urn_uuid_references(hub, http):
    mrn = unique_value("mrn")
    patient_urn = _urn()
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            _post_entry(observation(patient_urn, 70)),
            _post_entry(patient(mrn), patient_urn),
            _post_entry(observation(patient_urn, 80)),
        ],
    }
    response = http.post(hub, json=bundle)
    result = check_bundle(response, "transaction-response")
    entries = result["entry"]
    assert len(entries) == 3, "one response entry per request entry, in request order"
    for entry in entries:
        assert _status_code(entry) == 201, entry["response"]
        assert entry["response"].get("location"), entry["response"]
        assert entry["response"].get("etag") == 'W/"1"', entry["response"]

    patient_ref = _reference_of(entries[1]["response"]["location"])
    assert patient_ref.startswith("Patient/")
    stored_patient = read(http, hub, patient_ref)
    assert stored_patient["identifier"][0]["value"] == mrn
    for index in (0, 2):
        obs_ref = _reference_of(entries[index]["response"]["location"])
        assert obs_ref.startswith("Observation/")
        stored = read(http, hub, obs_ref)
        assert stored["subject"]["reference"] == patient_ref, (
            f"urn:uuid must be rewritten to the new id: {stored['subject']}"
        )
    assert search_ids(http, hub, "Patient", {"identifier": f"{MRN_SYSTEM}|{mrn}"}) == [patient_ref.split("/")[1]]


def test_transaction_with_an_invalid_entry_writes_nothing(hub, http):
    existing = create(http, hub, patient())
    before = system_history_size(http, hub)
    mrns = [unique_value("mrn") for _ in range(3)]
    patient_urn = _urn()
    bad = patient(mrns[2], birthDate="1970-13-01")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            _post_entry(patient(mrns[0]), patient_urn),
            _post_entry(observation(patient_urn)),
            _post_entry(bad),
            _post_entry(patient(mrns[1])),
            {
                "fullUrl": f"{hub}/Patient/{existing['id']}",
                "resource": dict(existing, gender="male"),
                "request": {"method": "PUT", "url": f"Patient/{existing['id']}"},
            },
        ],
    }
    response = http.post(hub, json=bundle)
    assert 400 <= response.status_code < 500, f"a failed transaction answers 4xx: {response.status_code}"
    outcome = assert_outcome(response, response.status_code, expression="Bundle.entry[2]")
    assert any("birthDate" in " ".join(i.get("expression") or []) + (i.get("diagnostics") or "")
               for i in outcome["issue"]), f"the outcome should also say what is wrong: {outcome}"

    assert system_history_size(http, hub) == before, "nothing of a failed transaction may be written"
    for mrn in mrns:
        assert search_ids(http, hub, "Patient", {"identifier": f"{MRN_SYSTEM}|{mrn}"}) == []
    assert search_ids(http, hub, "Observation", {}) == []
    assert read(http, hub, f"Patient/{existing['id']}") == existing


def test_transaction_failing_in_the_store_writes_nothing(hub, http):
    """An entry that only fails when executed (If-Match on a stale version) rolls back the
    entries executed before it."""
    existing = create(http, hub, patient())
    before = system_history_size(http, hub)
    mrn = unique_value("mrn")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            _post_entry(patient(mrn)),
            {
                "fullUrl": f"{hub}/Patient/{existing['id']}",
                "resource": dict(existing, gender="male"),
                "request": {"method": "PUT", "url": f"Patient/{existing['id']}", "ifMatch": 'W/"9"'},
            },
        ],
    }
    response = http.post(hub, json=bundle)
    assert response.status_code in (409, 412), f"{response.status_code}: {response.text[:1000]}"
    assert_outcome(response, response.status_code)
    assert system_history_size(http, hub) == before
    assert search_ids(http, hub, "Patient", {"identifier": f"{MRN_SYSTEM}|{mrn}"}) == []
    assert read(http, hub, f"Patient/{existing['id']}") == existing


def test_batch_entries_succeed_or_fail_alone(hub, http):
    mrns = [unique_value("mrn") for _ in range(3)]
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": patient(mrns[0]), "request": {"method": "POST", "url": "Patient"}},
            {"resource": patient(mrns[1], birthDate="1970-13-01"), "request": {"method": "POST", "url": "Patient"}},
            {"resource": patient(mrns[2]), "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
        ],
    }
    response = http.post(hub, json=bundle)
    result = check_bundle(response, "batch-response")
    entries = result["entry"]
    assert len(entries) == 4
    assert [_status_code(e) for e in entries] == [201, 422, 201, 404], [e["response"]["status"] for e in entries]

    for index in (1, 3):
        outcome = entries[index]["response"].get("outcome")
        assert outcome and outcome["resourceType"] == "OperationOutcome", entries[index]
        assert_valid_r4(outcome)  # response.outcome is not entry.resource: check_bundle skipped it
    failed_expressions = [e for i in entries[1]["response"]["outcome"]["issue"] for e in i.get("expression") or []]
    assert any("birthDate" in e for e in failed_expressions), failed_expressions

    for index, mrn in ((0, mrns[0]), (2, mrns[2])):
        ref = _reference_of(entries[index]["response"]["location"])
        assert read(http, hub, ref)["identifier"][0]["value"] == mrn
    assert search_ids(http, hub, "Patient", {"identifier": f"{MRN_SYSTEM}|{mrns[1]}"}) == []
    assert system_history_size(http, hub) == 2


def test_conditional_create_in_a_transaction(hub, http):
    existing_mrn = unique_value("mrn")
    existing = create(http, hub, patient(existing_mrn))
    new_mrn = unique_value("mrn")
    existing_urn, new_urn = _urn(), _urn()
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            _post_entry(patient(existing_mrn, family="Duplicate"), existing_urn,
                        ifNoneExist=f"identifier={MRN_SYSTEM}|{existing_mrn}"),
            _post_entry(patient(new_mrn), new_urn, ifNoneExist=f"identifier={MRN_SYSTEM}|{new_mrn}"),
            _post_entry(observation(existing_urn, 61)),
            _post_entry(observation(new_urn, 62)),
        ],
    }
    result = check_bundle(http.post(hub, json=bundle), "transaction-response")
    entries = result["entry"]
    assert [_status_code(e) for e in entries] == [200, 201, 201, 201], [e["response"]["status"] for e in entries]
    assert _reference_of(entries[0]["response"]["location"]) == f"Patient/{existing['id']}"
    new_ref = _reference_of(entries[1]["response"]["location"])

    assert read(http, hub, f"Patient/{existing['id']}") == existing, "the match is left alone"
    assert search_ids(http, hub, "Patient", {"identifier": f"{MRN_SYSTEM}|{existing_mrn}"}) == [existing["id"]]
    assert search_ids(http, hub, "Patient", {"identifier": f"{MRN_SYSTEM}|{new_mrn}"}) == [new_ref.split("/")[1]]
    obs_existing = read(http, hub, _reference_of(entries[2]["response"]["location"]))
    obs_new = read(http, hub, _reference_of(entries[3]["response"]["location"]))
    assert obs_existing["subject"]["reference"] == f"Patient/{existing['id']}", (
        "a reference to a conditional create that matched points at the match"
    )
    assert obs_new["subject"]["reference"] == new_ref

    # The same transaction again creates no Patient.
    result = check_bundle(http.post(hub, json=bundle), "transaction-response")
    assert [_status_code(e) for e in result["entry"]] == [200, 200, 201, 201]
    assert len(search_ids(http, hub, "Patient", {})) == 2


def test_synthea_bundle_as_a_transaction(hub, http):
    bundle = json.loads(DENNY.read_text())
    expected = Counter(e["resource"]["resourceType"] for e in bundle["entry"])
    response = http.post(hub, json=bundle)
    result = check_bundle(response, "transaction-response")
    assert len(result["entry"]) == len(bundle["entry"])
    assert all(_status_code(e) == 201 for e in result["entry"]), Counter(e["response"]["status"] for e in result["entry"])

    for resource_type, count in expected.items():
        entries, _ = follow_pages(http, f"{hub}/{resource_type}", "searchset", params={"_count": "20"})
        assert len(entries) == count, f"{resource_type}: {len(entries)} stored, {count} in the Bundle"
    assert system_history_size(http, hub) == len(bundle["entry"])

    patient_ids = search_ids(http, hub, "Patient", {
        "identifier": "https://github.com/synthetichealth/synthea|bc0fbd67-bfe3-46c8-8ce9-ef20b0705b46"})
    assert len(patient_ids) == 1
    observations, _ = follow_pages(http, f"{hub}/Observation", "searchset", params={"_count": "50"})
    subjects = {e["resource"]["subject"]["reference"] for e in observations}
    assert subjects == {f"Patient/{patient_ids[0]}"}, f"urn:uuid subjects must point at the Patient: {subjects}"
    # Every reference between the Bundle's resources now resolves on the server.
    encounters = {e["resource"].get("encounter", {}).get("reference") for e in observations} - {None}
    for reference in sorted(encounters)[:5]:
        read(http, hub, reference)


def test_bundle_endpoint_refusals(hub, http):
    assert_outcome(http.post(hub, json={"resourceType": "Bundle", "type": "collection", "entry": []}), 400)
    assert_outcome(http.post(hub, json=patient()), 400)
    entry_without_request = {"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": patient()}]}
    assert_outcome(http.post(hub, json=entry_without_request), 400, expression="Bundle.entry[0]")
    assert system_history_size(http, hub) == 0
