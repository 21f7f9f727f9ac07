"""Type search as the hub implements it today: `identifier`, `_id`, `_count` with `next`
paging, unknown parameters (lenient: reported in an outcome entry; strict: 400), bounds, and
`_summary=true` (the elements R4 marks isSummary) on search and on read."""

from __future__ import annotations

from collections import Counter

from e2e_support import (
    MRN_SYSTEM,
    assert_outcome,
    check_bundle,
    check_resource,
    create,
    follow_pages,
    observation,
    patient,
    search_ids,
    unique_value,
)


def test_search_by_identifier(hub, http):
    mrns = [unique_value("mrn") for _ in range(3)]
    patients = [create(http, hub, patient(m)) for m in mrns]
    other_system = create(
        http, hub, patient(identifier=[{"system": "urn:oid:1.2.250.1.999.2", "value": mrns[0]}])
    )

    assert search_ids(http, hub, "Patient", {"identifier": f"{MRN_SYSTEM}|{mrns[0]}"}) == [patients[0]["id"]]
    # Code alone: any system.
    assert sorted(search_ids(http, hub, "Patient", {"identifier": mrns[0]})) == sorted(
        [patients[0]["id"], other_system["id"]]
    )
    # System alone: every code.
    assert sorted(search_ids(http, hub, "Patient", {"identifier": f"{MRN_SYSTEM}|"})) == sorted(
        p["id"] for p in patients
    )
    # Alternatives (OR).
    both = f"{MRN_SYSTEM}|{mrns[1]},{MRN_SYSTEM}|{mrns[2]}"
    assert sorted(search_ids(http, hub, "Patient", {"identifier": both})) == sorted(
        [patients[1]["id"], patients[2]["id"]]
    )
    assert search_ids(http, hub, "Patient", {"identifier": f"{MRN_SYSTEM}|no-such-mrn"}) == []
    # The identifier belongs to Patients, not to Observations.
    assert search_ids(http, hub, "Observation", {"identifier": f"{MRN_SYSTEM}|{mrns[0]}"}) == []

    bundle = check_bundle(http.get(f"{hub}/Patient", params={"identifier": f"{MRN_SYSTEM}|{mrns[0]}"}), "searchset")
    entry = bundle["entry"][0]
    assert entry["fullUrl"] == f"{hub}/Patient/{patients[0]['id']}", entry["fullUrl"]
    assert entry["resource"] == patients[0]
    assert entry["search"]["mode"] == "match"


def test_search_by_id(hub, http):
    a = create(http, hub, patient())
    b = create(http, hub, patient())
    create(http, hub, patient())
    assert search_ids(http, hub, "Patient", {"_id": a["id"]}) == [a["id"]]
    assert sorted(search_ids(http, hub, "Patient", {"_id": f"{a['id']},{b['id']}"})) == sorted([a["id"], b["id"]])
    assert search_ids(http, hub, "Patient", {"_id": "unknown-id"}) == []
    # _id AND identifier.
    assert search_ids(http, hub, "Patient", {"_id": a["id"], "identifier": f"{MRN_SYSTEM}|{b['identifier'][0]['value']}"}) == []


def test_search_count_paging(hub, http):
    ids = [create(http, hub, patient())["id"] for _ in range(7)]
    create(http, hub, observation(f"Patient/{ids[0]}"))

    entries, pages = follow_pages(http, f"{hub}/Patient", "searchset", params={"_count": "3"})
    assert pages == 3, f"7 matches at _count=3 make 3 pages, got {pages}"
    found = [e["resource"]["id"] for e in entries]
    duplicates = [i for i, n in Counter(found).items() if n > 1]
    assert not duplicates, f"paging repeated {duplicates}"
    assert sorted(found) == sorted(ids)
    assert all(e["search"]["mode"] == "match" for e in entries)

    first = check_bundle(http.get(f"{hub}/Patient", params={"_count": "3"}), "searchset")
    assert len(first["entry"]) == 3

    # Paging with a filter keeps the filter.
    entries, pages = follow_pages(http, f"{hub}/Patient", "searchset",
                                  params={"identifier": f"{MRN_SYSTEM}|", "_count": "2"})
    assert pages == 4 and sorted(e["resource"]["id"] for e in entries) == sorted(ids)


def test_deleted_resources_are_not_found(hub, http):
    a = create(http, hub, patient())
    b = create(http, hub, patient())
    assert http.delete(f"{hub}/Patient/{a['id']}").status_code == 204
    assert search_ids(http, hub, "Patient", {}) == [b["id"]]
    assert search_ids(http, hub, "Patient", {"identifier": f"{MRN_SYSTEM}|{a['identifier'][0]['value']}"}) == []


def test_unknown_parameter_is_ignored_and_reported(hub, http):
    p = create(http, hub, patient())
    response = http.get(f"{hub}/Patient", params={"shoe-size": "42"})
    bundle = check_bundle(response, "searchset")
    modes = Counter(e["search"]["mode"] for e in bundle["entry"])
    assert modes == {"match": 1, "outcome": 1}, modes
    outcome_entry = next(e for e in bundle["entry"] if e["search"]["mode"] == "outcome")
    outcome = outcome_entry["resource"]
    assert outcome["resourceType"] == "OperationOutcome"
    assert any("shoe-size" in (i.get("diagnostics") or "") for i in outcome["issue"]), outcome
    assert all(i["severity"] in ("warning", "information") for i in outcome["issue"]), outcome
    match = next(e for e in bundle["entry"] if e["search"]["mode"] == "match")
    assert match["resource"]["id"] == p["id"]

    strict = http.get(f"{hub}/Patient", params={"shoe-size": "42"}, headers={"Prefer": "handling=strict"})
    assert_outcome(strict, 400, diagnostics_contains="shoe-size")
    lenient = http.get(f"{hub}/Patient", params={"shoe-size": "42"}, headers={"Prefer": "handling=lenient"})
    check_bundle(lenient, "searchset")


def test_count_out_of_bounds(hub, http):
    create(http, hub, patient())
    for value in ("-1", "100000", "abc"):
        assert_outcome(http.get(f"{hub}/Patient", params={"_count": value}), 400)
    assert_outcome(http.get(f"{hub}/Patient", params={"_page": "%%%"}), 400)
    # An empty value is ignored (and said so), not an error.
    empty = check_bundle(http.get(f"{hub}/Patient", params={"identifier": ""}), "searchset")
    outcomes = [e for e in empty["entry"] if e["search"]["mode"] == "outcome"]
    assert outcomes and "identifier" in str(outcomes[0]["resource"]), empty


def test_search_of_unknown_type(hub, http):
    assert_outcome(http.get(f"{hub}/NotAType", params={"_count": "1"}), 404)


# The elements R4 marks isSummary (the Σ column of patient.html and observation.html), plus
# resourceType, id and meta, which every summary keeps.
PATIENT_SUMMARY = {"resourceType", "id", "meta", "identifier", "active", "name", "telecom", "gender",
                   "birthDate", "deceasedBoolean", "deceasedDateTime", "address", "managingOrganization",
                   "link", "implicitRules", "modifierExtension"}
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}


def is_subsetted(resource: dict) -> bool:
    return any(t.get("system") == SUBSETTED["system"] and t.get("code") == SUBSETTED["code"]
               for t in (resource.get("meta") or {}).get("tag") or [])


def summary_patient() -> dict:
    """A Patient with summary elements and elements that are not (photo, contact,
    communication, maritalStatus, text), and a BackboneElement that is (link)."""
    return patient(
        text={"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Claire Martin</div>'},
        maritalStatus={"text": "married"},
        photo=[{"contentType": "image/png", "data": "iVBORw0KGgo="}],
        contact=[{"name": {"family": "Martin", "given": ["Paul"]}}],
        communication=[{"language": {"text": "French"}}],
        link=[{"id": "l1", "other": {"reference": "Patient/someone-else"}, "type": "seealso"}],
    )


def assert_patient_summary(summary: dict, full: dict) -> None:
    """`summary` is `full` cut down to its summary elements, read through fhir.resources."""
    __tracebackhide__ = True
    from fhir.resources.patient import Patient

    assert is_subsetted(summary), summary
    assert set(summary) <= PATIENT_SUMMARY, set(summary) - PATIENT_SUMMARY
    model = Patient.parse_obj(summary)
    for gone in ("photo", "contact", "communication", "maritalStatus", "text"):
        assert getattr(model, gone) is None, f"Patient.{gone} is not a summary element"
    assert model.name[0].family == full["name"][0]["family"]
    assert model.identifier[0].value == full["identifier"][0]["value"]
    assert str(model.birthDate) == full["birthDate"] and model.gender == full["gender"]
    # Patient.link is summary, and so are its children other and type; its id is not.
    assert [(l.other.reference, l.type, l.id) for l in model.link] == [("Patient/someone-else", "seealso", None)]
    for key in set(summary) - {"meta", "link"}:
        assert summary[key] == full[key], key


def test_summary_true_on_search(hub, http):
    full = create(http, hub, summary_patient())
    for headers in ({}, {"Prefer": "handling=strict"}):
        bundle = check_bundle(http.get(f"{hub}/Patient", params={"_id": full["id"], "_summary": "true"},
                                       headers=headers), "searchset")
        # No "not supported" warning any more, and strict handling accepts it.
        modes = [e["search"]["mode"] for e in bundle["entry"]]
        assert modes == ["match"], bundle
        assert_patient_summary(bundle["entry"][0]["resource"], full)
    # _summary=false is the whole resource, untagged.
    whole = check_bundle(http.get(f"{hub}/Patient", params={"_id": full["id"], "_summary": "false"}), "searchset")
    assert whole["entry"][0]["resource"] == full


def test_summary_true_keeps_summary_children_and_includes_whole(hub, http):
    from fhir.resources.observation import Observation

    subject = create(http, hub, summary_patient())
    obs = observation(f"Patient/{subject['id']}", value=120.0, code="85354-9")
    obs.update(
        category=[{"text": "vital-signs"}],
        note=[{"text": "after exercise"}],
        component=[{
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "valueQuantity": {"value": 120, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org",
                              "code": "mm[Hg]"},
            "interpretation": [{"text": "normal"}],
        }],
    )
    full = create(http, hub, obs)
    bundle = check_bundle(http.get(f"{hub}/Observation", params={
        "_id": full["id"], "_summary": "true", "_include": "Observation:subject"}), "searchset")
    matched = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
    included = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "include"]
    assert len(matched) == 1 and len(included) == 1, bundle
    summary = matched[0]
    assert is_subsetted(summary)
    model = Observation.parse_obj(summary)
    # Not summary: Observation.note, .category, .component.interpretation.
    assert model.note is None and model.category is None
    assert model.component[0].interpretation is None
    # Summary: status, code, subject, effective[x], value[x], component with its code and value[x].
    assert model.status == "final" and model.code.coding[0].code == "85354-9"
    assert model.subject.reference == f"Patient/{subject['id']}"
    assert summary["effectiveDateTime"] == full["effectiveDateTime"]
    assert summary["valueQuantity"] == full["valueQuantity"]
    assert model.component[0].valueQuantity.value == 120
    assert model.component[0].code.coding[0].code == "8480-6"
    # The included Patient is not cut down.
    assert included[0] == subject
    # _elements names a choice element as R4 does (value[x] is `value`).
    elements = check_bundle(http.get(f"{hub}/Observation", params={
        "_id": full["id"], "_elements": "status,code,value"}), "searchset")["entry"][0]["resource"]
    assert set(elements) == {"resourceType", "id", "meta", "status", "code", "valueQuantity"}, elements


def test_summary_and_elements_on_read(hub, http):
    full = create(http, hub, summary_patient())
    plain = http.get(f"{hub}/Patient/{full['id']}")
    for headers in ({}, {"Prefer": "handling=strict"}):
        response = http.get(f"{hub}/Patient/{full['id']}", params={"_summary": "true"}, headers=headers)
        summary = check_resource(response, 200, "Patient")
        assert_patient_summary(summary, full)
        assert response.headers.get("ETag") == plain.headers.get("ETag") == 'W/"1"'
    vread = check_resource(http.get(f"{hub}/Patient/{full['id']}/_history/1", params={"_summary": "true"}), 200,
                           "Patient")
    assert_patient_summary(vread, full)
    elements = check_resource(http.get(f"{hub}/Patient/{full['id']}", params={"_elements": "photo"}), 200, "Patient")
    assert set(elements) == {"resourceType", "id", "meta", "photo"} and is_subsetted(elements), elements
    assert elements["photo"] == full["photo"]
    # No shaping asked: the resource as stored.
    assert check_resource(http.get(f"{hub}/Patient/{full['id']}", params={"_summary": "false"}), 200) == full
    # A read has no matches to count; a bad value is refused, an unknown element under strict too.
    assert_outcome(http.get(f"{hub}/Patient/{full['id']}", params={"_summary": "count"}), 400, expression="_summary")
    assert_outcome(http.get(f"{hub}/Patient/{full['id']}", params={"_summary": "maybe"}), 400)
    assert_outcome(http.get(f"{hub}/Patient/{full['id']}", params={"_elements": "nope"},
                            headers={"Prefer": "handling=strict"}), 400)
