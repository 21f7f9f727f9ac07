"""Type search as the hub implements it today: `identifier`, `_id`, `_count` with `next`
paging, unknown parameters (lenient: reported in an outcome entry; strict: 400), bounds."""

from __future__ import annotations

from collections import Counter

from e2e_support import (
    MRN_SYSTEM,
    assert_outcome,
    check_bundle,
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
