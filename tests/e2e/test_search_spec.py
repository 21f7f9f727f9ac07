"""The search examples of the FHIR R4 search page (http://hl7.org/fhir/R4/search.html), run
against data that makes them meaningful: each returns exactly the resources the
specification says it should, on SQLite and on PostgreSQL. Plus what a client relies on
beyond the examples: signed paging links, includes, _summary/_elements, compartments,
$everything, and precise 400s for bad parameters."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from e2e_support import assert_outcome, check_bundle, create, follow_pages, search_ids

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
ACME_PATIENT = "http://acme.org/patient"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def ids(http, hub, resource_type, params):
    return sorted(search_ids(http, hub, resource_type, params))


@pytest.fixture
def world(hub, http):
    """A small hospital: patients Peter, Eve, Ève (accented), a patient with no gender,
    observations with codes, quantities and dates, conditions, encounters."""
    peter = create(http, hub, {
        "resourceType": "Patient",
        "identifier": [{"system": ACME_PATIENT, "value": "2345",
                        "type": {"coding": [{"system": V2_0203, "code": "MR"}]}}],
        "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
        "gender": "male", "birthDate": "1974-12-25",
        "telecom": [{"system": "email", "value": "peter@example.org"}],
        "address": [{"city": "Paris", "postalCode": "75011"}],
        "meta": {"tag": [{"system": "http://acme.org/codes", "code": "needs-review"}]},
    })
    eve = create(http, hub, {
        "resourceType": "Patient",
        "identifier": [{"system": ACME_PATIENT, "value": "446053",
                        "type": {"coding": [{"system": V2_0203, "code": "MR"}]}}],
        "name": [{"family": "Everywoman", "given": ["Eve"]}],
        "gender": "female", "birthDate": "1987-02-20",
    })
    eve_accent = create(http, hub, {
        "resourceType": "Patient",
        "name": [{"family": "Lefèvre", "given": ["Ève"]}],
        "gender": "female", "birthDate": "2010-06-01",
    })
    nobody = create(http, hub, {
        "resourceType": "Patient", "name": [{"family": "Unknown"}], "birthDate": "2015",
    })
    def obs(subject, code, value, unit, date, display):
        return create(http, hub, {
            "resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
            "subject": {"reference": f"Patient/{subject['id']}"},
            "effectiveDateTime": date,
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
        })
    glucose_peter = obs(peter, "2339-0", 5.4, "mmol/L", "2013-03-14T10:00:00Z", "Glucose")
    glucose_eve = obs(eve, "2339-0", 7.9, "mmol/L", "2014-06-01T08:30:00+02:00", "Glucose")
    weight_peter = obs(peter, "29463-7", 72.0, "kg", "2013-11-02", "Body weight")
    bp = create(http, hub, {
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure"}]},
        "subject": {"reference": f"Patient/{eve['id']}"},
        "effectiveDateTime": "2014-06-01",
        "component": [
            {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
             "valueQuantity": {"value": 140, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
             "valueQuantity": {"value": 55, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}},
        ],
    })
    headache = create(http, hub, {
        "resourceType": "Condition",
        "code": {"coding": [{"system": "http://acme.org/conditions/codes", "code": "ha125"}],
                 "text": "headache"},
        "subject": {"reference": f"Patient/{peter['id']}"},
        "meta": {"tag": [{"system": "http://acme.org/codes", "code": "needs-review"}]},
    })
    return dict(peter=peter, eve=eve, eve_accent=eve_accent, nobody=nobody,
                glucose_peter=glucose_peter, glucose_eve=glucose_eve,
                weight_peter=weight_peter, bp=bp, headache=headache)


def i(*resources):
    return sorted(r["id"] for r in resources)


def test_common_parameters(world, hub, http):
    w = world
    assert ids(http, hub, "Patient", {"_id": w["peter"]["id"]}) == i(w["peter"])
    assert ids(http, hub, "Condition", {"_tag": "http://acme.org/codes|needs-review"}) == i(w["headache"])
    assert ids(http, hub, "Patient", {"_tag": "http://acme.org/codes|needs-review"}) == i(w["peter"])
    assert ids(http, hub, "Observation", {"_lastUpdated": "gt2010-10-01"}) == i(
        w["glucose_peter"], w["glucose_eve"], w["weight_peter"], w["bp"])
    assert ids(http, hub, "Observation", {"_lastUpdated": "lt2010-10-01"}) == []


def test_string(world, hub, http):
    w = world
    # Default: case- and accent-insensitive, matching the start of any name part.
    assert ids(http, hub, "Patient", {"name": "eve"}) == i(w["eve"], w["eve_accent"])
    assert ids(http, hub, "Patient", {"given": "eve"}) == i(w["eve"], w["eve_accent"])
    assert ids(http, hub, "Patient", {"family": "LEFEVRE"}) == i(w["eve_accent"])
    assert ids(http, hub, "Patient", {"given:exact": "Eve"}) == i(w["eve"])
    assert ids(http, hub, "Patient", {"given:exact": "eve"}) == []
    assert ids(http, hub, "Patient", {"family:contains": "woma"}) == i(w["eve"])
    assert ids(http, hub, "Patient", {"address-city": "paris"}) == i(w["peter"])
    # OR with commas, AND with repetition.
    assert ids(http, hub, "Patient", {"family": "chalmers,everywoman"}) == i(w["peter"], w["eve"])
    assert ids(http, hub, "Patient", [("given", "peter"), ("given", "james")]) == i(w["peter"])
    assert ids(http, hub, "Patient", [("given", "peter"), ("given", "eve")]) == []


def test_token(world, hub, http):
    w = world
    assert ids(http, hub, "Patient", {"identifier": f"{ACME_PATIENT}|2345"}) == i(w["peter"])
    assert ids(http, hub, "Patient", {"gender": "female"}) == i(w["eve"], w["eve_accent"])
    assert ids(http, hub, "Patient", {"gender:not": "male"}) == i(w["eve"], w["eve_accent"], w["nobody"])
    assert ids(http, hub, "Patient", {"gender:missing": "true"}) == i(w["nobody"])
    assert ids(http, hub, "Patient", {"gender:missing": "false"}) == i(w["peter"], w["eve"], w["eve_accent"])
    assert ids(http, hub, "Condition", {"code": "http://acme.org/conditions/codes|ha125"}) == i(w["headache"])
    assert ids(http, hub, "Condition", {"code": "ha125"}) == i(w["headache"])
    assert ids(http, hub, "Condition", {"code": "http://other.org|ha125"}) == []
    assert ids(http, hub, "Condition", {"code:text": "headache"}) == i(w["headache"])
    assert ids(http, hub, "Patient", {"identifier:of-type": f"{V2_0203}|MR|446053"}) == i(w["eve"])
    assert ids(http, hub, "Patient", {"email": "peter@example.org"}) == i(w["peter"])
    assert ids(http, hub, "Observation", {"code": f"{LOINC}|2339-0"}) == i(w["glucose_peter"], w["glucose_eve"])


def test_date(world, hub, http):
    w = world
    assert ids(http, hub, "Patient", {"birthdate": "1987-02-20"}) == i(w["eve"])
    assert ids(http, hub, "Patient", {"birthdate": "1987"}) == i(w["eve"])
    assert ids(http, hub, "Patient", {"birthdate": "lt1980"}) == i(w["peter"])
    assert ids(http, hub, "Patient", {"birthdate": "ge2010-06-01"}) == i(w["eve_accent"], w["nobody"])
    # A year-precision birth date (2015) is a range: not within June 2015, but overlapping it.
    assert ids(http, hub, "Patient", {"birthdate": "2015-06"}) == []
    assert ids(http, hub, "Patient", {"birthdate": "2015"}) == i(w["nobody"])
    assert ids(http, hub, "Patient", {"birthdate": "sa2000"}) == i(w["eve_accent"], w["nobody"])
    assert ids(http, hub, "Patient", {"birthdate": "eb1980"}) == i(w["peter"])
    assert ids(http, hub, "Patient", {"birthdate": "ne1987-02-20"}) == i(w["peter"], w["eve_accent"], w["nobody"])
    # A range with two parameters (AND): the observations of 2013.
    in_2013 = [("date", "ge2013-01-01"), ("date", "le2013-12-31")]
    assert ids(http, hub, "Observation", in_2013) == i(w["glucose_peter"], w["weight_peter"])
    # Time zones: 2014-06-01T08:30+02:00 is 06:30Z.
    assert ids(http, hub, "Observation", {"date": "lt2014-06-01T07:00:00Z", "code": "2339-0"}) == i(
        w["glucose_peter"], w["glucose_eve"])
    assert ids(http, hub, "Observation", {"date": "gt2014-06-01T07:00:00Z", "code": "2339-0"}) == []


def test_quantity_and_number(world, hub, http):
    w = world
    assert ids(http, hub, "Observation", {"value-quantity": f"5.4|{UCUM}|mmol/L"}) == i(w["glucose_peter"])
    assert ids(http, hub, "Observation", {"value-quantity": "5.4||mmol/L"}) == i(w["glucose_peter"])
    assert ids(http, hub, "Observation", {"value-quantity": f"gt5.4|{UCUM}|mmol/L"}) == i(w["glucose_eve"])
    assert ids(http, hub, "Observation", {"value-quantity": f"ap5.4|{UCUM}|mmol/L"}) == i(w["glucose_peter"])
    assert ids(http, hub, "Observation", {"value-quantity": f"5.4|{UCUM}|kg"}) == []
    assert ids(http, hub, "Observation", {"value-quantity": "lt100"}) == i(
        w["glucose_peter"], w["glucose_eve"], w["weight_peter"])


def test_reference_chain_and_reverse_chain(world, hub, http):
    w = world
    peter_ref = f"Patient/{w['peter']['id']}"
    assert ids(http, hub, "Observation", {"subject": peter_ref}) == i(w["glucose_peter"], w["weight_peter"])
    assert ids(http, hub, "Observation", {"subject:Patient": w["peter"]["id"]}) == i(
        w["glucose_peter"], w["weight_peter"])
    assert ids(http, hub, "Observation", {"patient": w["peter"]["id"]}) == i(w["glucose_peter"], w["weight_peter"])
    assert ids(http, hub, "Observation", {"subject": f"{hub}/{peter_ref}"}) == i(
        w["glucose_peter"], w["weight_peter"])
    assert ids(http, hub, "Observation", {"subject:Patient.name": "peter"}) == i(
        w["glucose_peter"], w["weight_peter"])
    assert ids(http, hub, "Observation", {"patient.birthdate": "1987"}) == i(w["glucose_eve"], w["bp"])
    assert ids(http, hub, "Patient", {"_has:Observation:patient:code": "2339-0"}) == i(w["peter"], w["eve"])
    assert ids(http, hub, "Patient", {"_has:Observation:patient:code": "85354-9"}) == i(w["eve"])
    assert ids(http, hub, "Patient", {"_has:Condition:subject:code": "ha125"}) == i(w["peter"])


def test_composite(world, hub, http):
    w = world
    assert ids(http, hub, "Observation", {"component-code-value-quantity": f"{LOINC}|8480-6$gt100"}) == i(w["bp"])
    # The diastolic (55) is below 60, the systolic is not: no cross-component match.
    assert ids(http, hub, "Observation", {"component-code-value-quantity": f"{LOINC}|8462-4$lt60"}) == i(w["bp"])
    assert ids(http, hub, "Observation", {"component-code-value-quantity": f"{LOINC}|8480-6$lt60"}) == []
    assert ids(http, hub, "Observation", {"code-value-quantity": f"{LOINC}|2339-0$gt6"}) == i(w["glucose_eve"])


def test_sort_total_summary_elements(world, hub, http):
    w = world
    bundle = check_bundle(http.get(f"{hub}/Patient", params={"_sort": "-birthdate"}), "searchset")
    assert [e["resource"]["id"] for e in bundle["entry"]] == [
        w["nobody"]["id"], w["eve_accent"]["id"], w["eve"]["id"], w["peter"]["id"]]
    bundle = check_bundle(http.get(f"{hub}/Patient", params={"_sort": "family"}), "searchset")
    assert [e["resource"]["name"][0]["family"] for e in bundle["entry"]] == [
        "Chalmers", "Everywoman", "Lefèvre", "Unknown"]
    counted = check_bundle(http.get(f"{hub}/Patient", params={"gender": "female", "_summary": "count"}), "searchset")
    assert counted["total"] == 2 and not counted.get("entry")
    total = check_bundle(http.get(f"{hub}/Patient", params={"gender": "female", "_total": "accurate", "_count": "1"}),
                         "searchset")
    assert total["total"] == 2 and len(total["entry"]) == 1
    # _summary=true: the summary elements (all of Peter's are), his own tag kept beside SUBSETTED.
    for headers in ({}, {"Prefer": "handling=strict"}):
        summary = check_bundle(http.get(f"{hub}/Patient", params={"_id": w["peter"]["id"], "_summary": "true"},
                                        headers=headers), "searchset")
        assert [e["search"]["mode"] for e in summary["entry"]] == ["match"], summary
        match = summary["entry"][0]["resource"]
        assert {k: v for k, v in match.items() if k != "meta"} == {
            k: v for k, v in w["peter"].items() if k != "meta"}
        assert [t["code"] for t in match["meta"]["tag"]] == ["needs-review", "SUBSETTED"]
    elements = check_bundle(http.get(f"{hub}/Patient", params={"_id": w["peter"]["id"], "_elements": "identifier"}),
                            "searchset")
    resource = elements["entry"][0]["resource"]
    assert set(resource) <= {"resourceType", "id", "meta", "identifier"}, resource
    assert any(t.get("code") == "SUBSETTED" for t in resource["meta"]["tag"])


def test_include_and_revinclude(world, hub, http):
    w = world
    bundle = check_bundle(http.get(f"{hub}/Observation", params={
        "code": "29463-7", "_include": "Observation:subject"}), "searchset")
    modes = sorted((e["search"]["mode"], e["resource"]["resourceType"]) for e in bundle["entry"])
    assert modes == [("include", "Patient"), ("match", "Observation")]
    bundle = check_bundle(http.get(f"{hub}/Patient", params={
        "_id": w["eve"]["id"], "_revinclude": "Observation:subject"}), "searchset")
    included = sorted(e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "include")
    assert included == i(w["glucose_eve"], w["bp"])


def test_paging_links_are_signed_and_complete(world, hub, http):
    entries, pages = follow_pages(http, f"{hub}/Observation", "searchset", params={"_count": "1", "_sort": "date"})
    assert pages == 4 and len(entries) == 4
    first = check_bundle(http.get(f"{hub}/Observation", params={"_count": "1", "code": "2339-0"}), "searchset")
    next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
    token = parse_qs(urlsplit(next_url).query)["_page"][0]
    payload, signature = token.split(".")
    # Editing the cursor (here: its signature, or its payload) is refused.
    forged = f"{payload}.{signature[:-2]}AA"
    assert_outcome(http.get(f"{hub}/Observation", params={"_page": forged}), 400)
    assert_outcome(http.get(f"{hub}/Observation", params={"_page": payload[:-4] + "AAAA." + signature}), 400)
    # A link cannot be combined with other criteria.
    assert_outcome(http.get(f"{hub}/Observation", params={"_page": token, "code": "29463-7"}), 400)
    second = check_bundle(http.get(next_url), "searchset")
    assert any(link["relation"] == "previous" for link in second["link"])
    previous_url = next(link["url"] for link in second["link"] if link["relation"] == "previous")
    back = check_bundle(http.get(previous_url), "searchset")
    assert [e["resource"]["id"] for e in back["entry"]] == [e["resource"]["id"] for e in first["entry"]]


def test_compartment_search_and_everything(world, hub, http):
    w = world
    peter = w["peter"]["id"]
    bundle = check_bundle(http.get(f"{hub}/Patient/{peter}/Observation"), "searchset")
    assert sorted(e["resource"]["id"] for e in bundle["entry"]) == i(w["glucose_peter"], w["weight_peter"])
    bundle = check_bundle(http.get(f"{hub}/Patient/{peter}/Observation", params={"code": "2339-0"}), "searchset")
    assert [e["resource"]["id"] for e in bundle["entry"]] == [w["glucose_peter"]["id"]]
    everything, _ = follow_pages(http, f"{hub}/Patient/{peter}/$everything", "searchset", params={"_count": "2"})
    found = sorted((e["resource"]["resourceType"], e["resource"]["id"]) for e in everything)
    assert found == sorted([("Patient", peter), ("Observation", w["glucose_peter"]["id"]),
                            ("Observation", w["weight_peter"]["id"]), ("Condition", w["headache"]["id"])])
    assert_outcome(http.get(f"{hub}/Patient/no-such-patient/$everything"), 404)


def test_bad_parameters_get_a_400_naming_them(world, hub, http):
    for resource_type, params, name in [
        ("Patient", {"birthdate": "1987-13-45"}, "birthdate"),
        ("Patient", {"birthdate": "xx1987"}, "birthdate"),
        ("Observation", {"value-quantity": "abc"}, "value-quantity"),
        ("Observation", {"subject.name": "peter"}, "subject"),  # subject has several target types
        ("Observation", {"subject:Patient.nosuch": "x"}, "nosuch"),
        ("Observation", {"_sort": "nosuch"}, "_sort"),
        ("Observation", {"_count": "-1"}, "_count"),
        ("Observation", {"_count": "100000000"}, "_count"),
        ("Observation", {"_include": "Observation:nosuch"}, "_include"),
        ("Observation", {"code:exact": "x"}, "code"),
    ]:
        response = http.get(f"{hub}/{resource_type}", params=params)
        assert_outcome(response, 400)
        outcome = response.json()
        text = " ".join((issue.get("diagnostics") or "") + " ".join(issue.get("expression") or [])
                        for issue in outcome["issue"])
        assert name in text, f"{params}: the outcome should name {name}: {outcome}"
    deep = ".".join(["subject:Patient.link:Patient"] * 5) + ".name"
    assert_outcome(http.get(f"{hub}/Observation", params={deep: "x"}), 400)


def test_conditional_create_uses_search(world, hub, http):
    w = world
    headers = {"If-None-Exist": "family=chalmers&birthdate=1974-12-25"}
    again = http.post(f"{hub}/Patient", json={"resourceType": "Patient", "name": [{"family": "Chalmers"}]},
                      headers={**headers, "Content-Type": "application/fhir+json"})
    assert again.status_code == 200, again.text
    assert ids(http, hub, "Patient", {"family": "chalmers"}) == i(w["peter"])
