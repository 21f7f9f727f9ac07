"""Query-constrained SMART scopes, end to end (`user/Observation.rs?category=…|laboratory`):
the token reads, searches and writes only the resources its query matches, and reaches
nothing around it. Each check would fail if its protection broke."""

from __future__ import annotations

import pytest

from e2e_support import assert_outcome, check_bundle, check_resource, observation, one_shot, patient
from test_auth import admit, bearer, get, post, token

CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
LAB = f"{CATEGORY}|laboratory"
DOCTOR = "Practitioner/p1"


def categorized(subject: str, category: str, value: float = 70.0) -> dict:
    return {**observation(subject, value=value),
            "category": [{"coding": [{"system": CATEGORY, "code": category}]}]}


@pytest.fixture(params=["sqlite", "postgres"])
def secured(request, start_hub):
    return start_hub(request.param, no_auth=False)


def test_a_query_constrained_scope_reaches_only_what_its_query_matches(secured, hygie_bin, tmp_path):
    hub = secured.fhir_url
    feed = token(hygie_bin, tmp_path, secured, subject="Device/lab", roles=("integration",), scope="system/*.cruds")
    pid = check_resource(post(f"{hub}/Patient", feed, patient("qs-1")), 201, "Patient")["id"]
    admit(hygie_bin, tmp_path, secured, pid, practitioner=DOCTOR)
    subject = f"Patient/{pid}"
    lab = check_resource(post(f"{hub}/Observation", feed, categorized(subject, "laboratory")), 201, "Observation")
    vital = check_resource(post(f"{hub}/Observation", feed, categorized(subject, "vital-signs")), 201,
                           "Observation")

    labs_only = token(hygie_bin, tmp_path, secured, subject=DOCTOR,
                      scope=f"user/Observation.crus?category={LAB} user/Patient.rs")
    found = check_bundle(get(f"{hub}/Observation", labs_only, subject=subject, _total="accurate"), "searchset")
    assert [e["resource"]["id"] for e in found["entry"]] == [lab["id"]] and found["total"] == 1, found
    check_resource(get(f"{hub}/Observation/{lab['id']}", labs_only), 200, "Observation")
    assert_outcome(get(f"{hub}/Observation/{vital['id']}", labs_only), 403, code="forbidden",
                   diagnostics_contains="query-constrained")
    assert_outcome(get(f"{hub}/Observation/{vital['id']}/_history", labs_only), 403, code="forbidden")
    assert_outcome(get(f"{hub}/Observation/_history", labs_only), 403, code="forbidden")
    # It does not reach around its query through what a search of another type pulls in.
    assert_outcome(get(f"{hub}/Patient", labs_only, _id=pid, _revinclude="Observation:subject"), 403,
                   code="forbidden", diagnostics_contains="query-constrained")
    assert_outcome(get(f"{hub}/Patient", labs_only, **{"_has:Observation:subject:code": "8867-4"}), 403,
                   code="forbidden")
    # Writes: only what matches, before and after.
    assert_outcome(post(f"{hub}/Observation", labs_only, categorized(subject, "vital-signs", 99.0)), 403,
                   code="forbidden", diagnostics_contains="query-constrained")
    feed_view = check_bundle(get(f"{hub}/Observation", feed, subject=subject, _total="accurate"), "searchset")
    assert feed_view["total"] == 2, "the refused create wrote nothing"
    check_resource(post(f"{hub}/Observation", labs_only, categorized(subject, "laboratory", 5.0)), 201,
                   "Observation")
    moved = dict(categorized(subject, "vital-signs"), id=lab["id"])
    assert_outcome(one_shot("PUT", f"{hub}/Observation/{lab['id']}", json=moved,
                            headers={**bearer(labs_only), "Content-Type": "application/fhir+json"}),
                   403, code="forbidden")
    assert check_resource(get(f"{hub}/Observation/{lab['id']}", feed), 200)["category"][0]["coding"][0]["code"] \
        == "laboratory"

    # Alternatives on one parameter are ORed; other combinations are refused, not half-applied.
    either = token(hygie_bin, tmp_path, secured, subject=DOCTOR,
                   scope=f"user/Observation.rs?category={LAB} user/Observation.rs?category={CATEGORY}|vital-signs")
    both = check_bundle(get(f"{hub}/Observation", either, subject=subject, _total="accurate"), "searchset")
    assert both["total"] == 3, both
    mixed = token(hygie_bin, tmp_path, secured, subject=DOCTOR,
                  scope=f"user/Observation.rs?category={LAB}&status=final user/Observation.rs?code=8867-4")
    assert_outcome(get(f"{hub}/Observation", mixed), 403, code="forbidden", diagnostics_contains="alternatives")

    # A patient's app with a constrained patient/ scope: their own labs only.
    own = token(hygie_bin, tmp_path, secured, subject=subject, roles=("patient",),
                scope=f"patient/Observation.rs?category={LAB}", patient_context=pid)
    mine = check_bundle(get(f"{hub}/Observation", own, _total="accurate"), "searchset")
    assert mine["total"] == 2 and all(e["resource"]["category"][0]["coding"][0]["code"] == "laboratory"
                                      for e in mine["entry"])
    assert_outcome(get(f"{hub}/Observation/{vital['id']}", own), 403, code="forbidden")
