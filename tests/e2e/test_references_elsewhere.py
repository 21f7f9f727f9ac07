"""A reference to another server's `Patient/X` is not a reference to our Patient X: it does not
put a resource in X's compartment, under X's patient token, in an `_include` of X, nor in a
care relationship; a reference spelled with our own base URL is stored relative and is ours.
Each check fails if the hub took the type and id of any absolute URL as local."""

from __future__ import annotations

import pytest

from e2e_support import assert_outcome, check_bundle, check_resource, observation, one_shot, patient
from test_auth import admit, bearer, get, post, token

OTHER = "http://other.example/fhir"


@pytest.fixture(params=["sqlite", "postgres"])
def secured(request, start_hub):
    return start_hub(request.param, no_auth=False)


def ids_of(bundle: dict, resource_type: str | None = None) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", [])
            if resource_type is None or e["resource"]["resourceType"] == resource_type}


def test_another_servers_patient_is_not_ours(secured, hygie_bin, tmp_path):
    hub = secured.fhir_url
    feed = token(hygie_bin, tmp_path, secured, subject="Device/lab", roles=("integration",), scope="system/*.cruds")
    pid = check_resource(post(f"{hub}/Patient", feed, patient("ref-elsewhere")), 201, "Patient")["id"]
    local = check_resource(post(f"{hub}/Observation", feed, observation(f"Patient/{pid}")), 201)
    # Our own base, as the client reached it: stored relative, so the same patient.
    ours = check_resource(post(f"{hub}/Observation", feed, observation(f"{hub}/Patient/{pid}")), 201)
    assert ours["subject"]["reference"] == f"Patient/{pid}", ours
    elsewhere = check_resource(post(f"{hub}/Observation", feed, observation(f"{OTHER}/Patient/{pid}")), 201)
    assert elsewhere["subject"]["reference"] == f"{OTHER}/Patient/{pid}", "another server's URL is kept"
    mine = {local["id"], ours["id"]}

    def search(**params) -> set[str]:
        return ids_of(check_bundle(get(f"{hub}/Observation", feed, _count="100", **params), "searchset"))

    assert search(subject=f"Patient/{pid}") == mine
    assert search(subject=pid) == mine
    assert search(subject=f"{hub}/Patient/{pid}") == mine
    assert search(patient=pid) == mine
    assert search(subject=f"{OTHER}/Patient/{pid}") == {elsewhere["id"]}
    assert search(subject=f"http://nowhere.example/Patient/{pid}") == set()
    compartment = check_bundle(get(f"{hub}/Patient/{pid}/Observation", feed, _count="100"), "searchset")
    assert ids_of(compartment) == mine
    # `_include` does not bring our Patient in for another server's.
    included = check_bundle(get(f"{hub}/Observation", feed, _id=elsewhere["id"],
                                _include="Observation:subject"), "searchset")
    assert ids_of(included) == {elsewhere["id"]}, included
    included = check_bundle(get(f"{hub}/Observation", feed, _id=local["id"],
                                _include="Observation:subject"), "searchset")
    assert ids_of(included, "Patient") == {pid}, "the local reference is included: the check above can fail"

    # The patient's own app sees their Observations, not another server's patient's.
    own = token(hygie_bin, tmp_path, secured, subject=f"Patient/{pid}", roles=("patient",),
                scope="patient/Observation.rs", patient_context=pid)
    assert ids_of(check_bundle(get(f"{hub}/Observation", own, _count="100"), "searchset")) == mine
    check_resource(get(f"{hub}/Observation/{local['id']}", own), 200, "Observation")
    assert_outcome(get(f"{hub}/Observation/{elsewhere['id']}", own), 403, code="forbidden")


def test_another_servers_practitioner_has_no_care_relationship_here(secured, hygie_bin, tmp_path):
    hub = secured.fhir_url
    feed = token(hygie_bin, tmp_path, secured, subject="Device/lab", roles=("integration",), scope="system/*.cruds")
    pid = check_resource(post(f"{hub}/Patient", feed, patient("ref-care")), 201, "Patient")["id"]
    chart = check_resource(post(f"{hub}/Observation", feed, observation(f"Patient/{pid}")), 201)["id"]
    doctor = "Practitioner/elsewhere-1"
    # Admitted with the other server's Practitioner elsewhere-1 attending: not ours.
    admit(hygie_bin, tmp_path, secured, pid, practitioner=f"{OTHER}/{doctor}")
    clinician = token(hygie_bin, tmp_path, secured, subject=doctor, scope="user/*.rs")
    assert_outcome(get(f"{hub}/Observation/{chart}", clinician), 403, code="forbidden")
    # Our own base spelled in full is ours: a clinician admitted so has the relationship (another
    # one, as a refusal is kept for a few seconds: `CARE_CACHE_TTL`).
    ours = "Practitioner/elsewhere-2"
    admit(hygie_bin, tmp_path, secured, pid, practitioner=f"{hub}/{ours}")
    colleague = token(hygie_bin, tmp_path, secured, subject=ours, scope="user/*.rs")
    check_resource(get(f"{hub}/Observation/{chart}", colleague), 200, "Observation")


def test_a_transaction_entry_named_by_our_base_is_referenced_relative(secured, hygie_bin, tmp_path):
    hub = secured.fhir_url
    feed = token(hygie_bin, tmp_path, secured, subject="Device/lab", roles=("integration",), scope="system/*.cruds")
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"{hub}/Patient/tx-ref-1", "resource": {**patient("ref-tx"), "id": "tx-ref-1"},
         "request": {"method": "PUT", "url": "Patient/tx-ref-1"}},
        {"fullUrl": "urn:uuid:6f1d2a40-0000-4000-8000-000000000001",
         "resource": observation(f"{hub}/Patient/tx-ref-1"),
         "request": {"method": "POST", "url": "Observation"}},
    ]}
    answer = check_bundle(one_shot("POST", hub, headers={**bearer(feed), "Content-Type": "application/fhir+json"},
                                   json=bundle), "transaction-response")
    created = answer["entry"][1]["response"]["location"].split("/_history")[0].rsplit("/", 1)[1]
    stored = check_resource(get(f"{hub}/Observation/{created}", feed), 200, "Observation")
    assert stored["subject"]["reference"] == "Patient/tx-ref-1", stored
    found = check_bundle(get(f"{hub}/Observation", feed, subject="Patient/tx-ref-1"), "searchset")
    assert ids_of(found) == {created}
