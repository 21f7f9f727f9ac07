"""FHIR R4 RESTful interactions on single resources (http.html): create, read, vread, update,
conditional create and update, If-Match, JSON Patch, delete. Each test runs on both backends.
"""

from __future__ import annotations

import json
import re
import threading
from datetime import datetime

import pytest
import requests

from e2e_support import (
    MRN_SYSTEM,
    assert_http_date,
    assert_outcome,
    check_resource,
    create,
    etag_version,
    history_entries,
    one_shot,
    patient,
    read,
    search_ids,
    system_history_size,
    unique_value,
)

JSON_PATCH = "application/json-patch+json"


def _instant(value: str) -> datetime:
    assert re.fullmatch(
        r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})", value
    ), f"meta.lastUpdated is not a FHIR instant: {value!r}"
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_create_sets_id_meta_and_headers(hub, http):
    sent = patient(id="client-chosen-id", meta={"versionId": "7", "lastUpdated": "2001-01-01T00:00:00Z"})
    response = http.post(f"{hub}/Patient", json=sent)
    body = check_resource(response, 201, "Patient")

    new_id = body.get("id")
    assert new_id and new_id != "client-chosen-id", f"the server must assign the id of a create: {body}"
    assert re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", new_id), f"not a FHIR id: {new_id!r}"
    assert body["meta"].get("versionId") == "1", f"meta.versionId of a new resource: {body['meta']}"
    last_updated = _instant(body["meta"]["lastUpdated"])
    assert last_updated.year > 2001, "the client's meta.lastUpdated must be replaced"

    location = response.headers.get("Location")
    assert location == f"{hub}/Patient/{new_id}/_history/1", f"Location: {location!r}"
    assert response.headers.get("ETag") == 'W/"1"', response.headers
    assert_http_date(response.headers.get("Last-Modified"))
    modified = datetime.strptime(response.headers["Last-Modified"], "%a, %d %b %Y %H:%M:%S GMT")
    assert abs(modified.timestamp() - last_updated.replace(tzinfo=None).timestamp()) < 1.5, (
        f"Last-Modified {response.headers['Last-Modified']} disagrees with meta.lastUpdated "
        f"{body['meta']['lastUpdated']}"
    )
    # What was sent, apart from server metadata, is what was stored.
    for key in ("identifier", "name", "gender", "birthDate"):
        assert body[key] == sent[key], key

    # Nothing was stored under the id the client made up.
    assert_outcome(http.get(f"{hub}/Patient/client-chosen-id"), 404)


def test_read_and_vread(hub, http):
    created = create(http, hub, patient())
    pid = created["id"]

    response = http.get(f"{hub}/Patient/{pid}")
    assert check_resource(response, 200, "Patient") == created
    assert response.headers.get("ETag") == 'W/"1"'
    assert_http_date(response.headers.get("Last-Modified"))

    response = http.get(f"{hub}/Patient/{pid}/_history/1")
    assert check_resource(response, 200, "Patient") == created
    assert response.headers.get("ETag") == 'W/"1"'

    assert_outcome(http.get(f"{hub}/Patient/{pid}/_history/2"), 404)
    assert_outcome(http.get(f"{hub}/Patient/does-not-exist"), 404)
    assert_outcome(http.get(f"{hub}/Observation/{pid}"), 404)  # same id, other type


def test_update_increments_version_and_keeps_old_versions(hub, http):
    v1 = create(http, hub, patient(family="Martin"))
    pid = v1["id"]

    changed = dict(v1, name=[{"family": "Dupont", "given": ["Claire"]}])
    changed["meta"] = {"versionId": "42"}  # a client's versionId is not the server's business
    response = http.put(f"{hub}/Patient/{pid}", json=changed)
    v2 = check_resource(response, 200, "Patient")
    assert v2["id"] == pid
    assert v2["meta"]["versionId"] == "2", v2["meta"]
    assert v2["name"][0]["family"] == "Dupont"
    assert response.headers.get("ETag") == 'W/"2"'
    assert_http_date(response.headers.get("Last-Modified"))
    assert _instant(v2["meta"]["lastUpdated"]) >= _instant(v1["meta"]["lastUpdated"])

    assert read(http, hub, f"Patient/{pid}") == v2
    assert read(http, hub, f"Patient/{pid}/_history/1") == v1
    assert read(http, hub, f"Patient/{pid}/_history/2") == v2

    response = http.put(f"{hub}/Patient/{pid}", json=dict(v2, gender="other"))
    v3 = check_resource(response, 200, "Patient")
    assert v3["meta"]["versionId"] == "3"
    assert etag_version(response.headers.get("ETag")) == "3"


def test_update_with_client_assigned_id_creates(hub, http):
    pid = unique_value("client")
    body = patient(id=pid)
    response = http.put(f"{hub}/Patient/{pid}", json=body)
    created = check_resource(response, 201, "Patient")
    assert created["id"] == pid
    assert created["meta"]["versionId"] == "1"
    assert response.headers.get("ETag") == 'W/"1"'
    assert response.headers.get("Location") == f"{hub}/Patient/{pid}/_history/1"
    assert read(http, hub, f"Patient/{pid}") == created

    response = http.put(f"{hub}/Patient/{pid}", json=dict(body, gender="male"))
    assert check_resource(response, 200, "Patient")["meta"]["versionId"] == "2"


def test_if_match(hub, http):
    v1 = create(http, hub, patient())
    pid = v1["id"]
    v2 = check_resource(http.put(f"{hub}/Patient/{pid}", json=dict(v1, gender="male")), 200, "Patient")

    stale = http.put(f"{hub}/Patient/{pid}", json=dict(v2, gender="other"), headers={"If-Match": 'W/"1"'})
    assert_outcome(stale, 412)
    assert read(http, hub, f"Patient/{pid}") == v2, "a refused If-Match update must change nothing"
    assert len(history_entries(http, f"{hub}/Patient/{pid}/_history")) == 2

    current = http.put(f"{hub}/Patient/{pid}", json=dict(v2, gender="other"), headers={"If-Match": 'W/"2"'})
    v3 = check_resource(current, 200, "Patient")
    assert v3["meta"]["versionId"] == "3" and v3["gender"] == "other"

    # If-Match on PATCH too.
    patch = [{"op": "replace", "path": "/gender", "value": "female"}]
    stale = http.patch(f"{hub}/Patient/{pid}", json=patch,
                       headers={"Content-Type": JSON_PATCH, "If-Match": 'W/"2"'})
    assert_outcome(stale, 412)
    assert read(http, hub, f"Patient/{pid}") == v3


def test_conditional_create(hub, http):
    mrn = unique_value("mrn")
    condition = {"If-None-Exist": f"identifier={MRN_SYSTEM}|{mrn}"}

    first = http.post(f"{hub}/Patient", json=patient(mrn), headers=condition)
    created = check_resource(first, 201, "Patient")

    second = http.post(f"{hub}/Patient", json=patient(mrn, family="Other"), headers=condition)
    assert second.status_code == 200, f"a conditional create with one match answers 200: {second.text[:1000]}"
    if second.content:
        existing = check_resource(second, 200, "Patient")
        assert existing["id"] == created["id"]
        assert existing["name"][0]["family"] == "Martin", "the existing resource must not be overwritten"
    location = second.headers.get("Location", "")
    if location:
        assert f"/Patient/{created['id']}" in location, location

    assert search_ids(http, hub, "Patient", {"identifier": f"{MRN_SYSTEM}|{mrn}"}) == [created["id"]]
    assert read(http, hub, f"Patient/{created['id']}") == created
    assert system_history_size(http, hub) == 1, "nothing may be written by the matching create"


def test_conditional_update(hub, http):
    mrn = unique_value("mrn")
    url = f"{hub}/Patient?identifier={MRN_SYSTEM}|{mrn}"

    response = http.put(url, json=patient(mrn, family="Before"))
    created = check_resource(response, 201, "Patient")
    assert created["meta"]["versionId"] == "1"

    response = http.put(url, json=patient(mrn, family="After"))
    updated = check_resource(response, 200, "Patient")
    assert updated["id"] == created["id"], "one match: the match is updated"
    assert updated["meta"]["versionId"] == "2"
    assert updated["name"][0]["family"] == "After"

    assert search_ids(http, hub, "Patient", {"identifier": f"{MRN_SYSTEM}|{mrn}"}) == [created["id"]]


def test_conditional_update_with_several_matches_is_refused(hub, http):
    mrn = unique_value("mrn")
    a = create(http, hub, patient(mrn))
    b = create(http, hub, patient(mrn))
    response = http.put(f"{hub}/Patient?identifier={MRN_SYSTEM}|{mrn}", json=patient(mrn, family="X"))
    assert_outcome(response, 412)
    assert read(http, hub, f"Patient/{a['id']}") == a
    assert read(http, hub, f"Patient/{b['id']}") == b


def test_json_patch(hub, http):
    v1 = create(http, hub, patient())
    pid = v1["id"]

    patch = [
        {"op": "replace", "path": "/birthDate", "value": "1990-02-03"},
        {"op": "add", "path": "/name/0/given/-", "value": "Anne"},
    ]
    response = http.patch(f"{hub}/Patient/{pid}", json=patch, headers={"Content-Type": JSON_PATCH})
    v2 = check_resource(response, 200, "Patient")
    assert v2["birthDate"] == "1990-02-03"
    assert v2["name"][0]["given"] == ["Claire", "Anne"]
    assert v2["meta"]["versionId"] == "2"
    assert response.headers.get("ETag") == 'W/"2"'
    assert read(http, hub, f"Patient/{pid}") == v2

    # A failing `test` operation: the whole patch is refused, nothing is written.
    failing = [
        {"op": "test", "path": "/birthDate", "value": "1900-01-01"},
        {"op": "replace", "path": "/gender", "value": "male"},
    ]
    response = http.patch(f"{hub}/Patient/{pid}", json=failing, headers={"Content-Type": JSON_PATCH})
    assert_outcome(response, 422)
    assert read(http, hub, f"Patient/{pid}") == v2
    assert len(history_entries(http, f"{hub}/Patient/{pid}/_history")) == 2

    # A patch whose result is not a valid Patient is refused and names the element.
    invalid = [{"op": "replace", "path": "/birthDate", "value": "1990-13-01"}]
    response = http.patch(f"{hub}/Patient/{pid}", json=invalid, headers={"Content-Type": JSON_PATCH})
    assert_outcome(response, 422, expression="Patient.birthDate")
    assert read(http, hub, f"Patient/{pid}") == v2

    # A patch sent as a FHIR resource is refused by media type (on its own connection: see
    # e2e_support.one_shot).
    response = one_shot("PATCH", f"{hub}/Patient/{pid}", json=patch)
    assert_outcome(response, 415)

    # A patch of an unknown resource.
    response = http.patch(f"{hub}/Patient/nope", json=patch, headers={"Content-Type": JSON_PATCH})
    assert_outcome(response, 404)
    assert len(history_entries(http, f"{hub}/Patient/{pid}/_history")) == 2


def test_delete_then_gone_with_history_kept(hub, http):
    v1 = create(http, hub, patient())
    pid = v1["id"]
    v2 = check_resource(http.put(f"{hub}/Patient/{pid}", json=dict(v1, gender="male")), 200, "Patient")

    response = http.delete(f"{hub}/Patient/{pid}")
    assert response.status_code == 204, f"DELETE: {response.status_code} {response.text[:1000]}"
    assert response.content == b"", "204 has no body"

    assert_outcome(http.get(f"{hub}/Patient/{pid}"), 410)
    assert read(http, hub, f"Patient/{pid}/_history/1") == v1
    assert read(http, hub, f"Patient/{pid}/_history/2") == v2
    # The deletion is version 3; reading it says gone, not found.
    assert http.get(f"{hub}/Patient/{pid}/_history/3").status_code in (404, 410)

    entries = history_entries(http, f"{hub}/Patient/{pid}/_history")
    methods = [e["request"]["method"] for e in entries]
    assert methods == ["DELETE", "PUT", "POST"], f"instance history, newest first: {methods}"
    assert "resource" not in entries[0], "a deletion entry carries no resource"
    assert [e["resource"]["meta"]["versionId"] for e in entries[1:]] == ["2", "1"]

    # Gone from searches.
    assert search_ids(http, hub, "Patient", {"_id": pid}) == []

    # Deleting again changes nothing.
    again = http.delete(f"{hub}/Patient/{pid}")
    assert again.status_code in (200, 204), f"repeated DELETE: {again.status_code} {again.text[:500]}"
    assert len(history_entries(http, f"{hub}/Patient/{pid}/_history")) == 3

    # An update brings it back as the next version.
    response = http.put(f"{hub}/Patient/{pid}", json=dict(v1, gender="other"))
    assert response.status_code in (200, 201), response.text[:1000]
    back = check_resource(response, response.status_code, "Patient")
    assert back["meta"]["versionId"] == "4"
    assert read(http, hub, f"Patient/{pid}") == back


def test_delete_unknown_resource(hub, http):
    response = http.delete(f"{hub}/Patient/never-existed")
    assert response.status_code in (200, 204, 404), f"{response.status_code} {response.text[:500]}"
    if response.status_code == 404:
        assert_outcome(response, 404)
    assert system_history_size(http, hub) == 0


@pytest.mark.parametrize("interaction", ["conditional-create", "conditional-update"])
def test_concurrent_conditional_writes_make_one_resource(hub, http, interaction):
    """Several clients sending the same conditional create (If-None-Exist), or the same
    conditional update (PUT ?identifier=) when nothing matches yet, at once: ONE resource
    results; the others find it (200) or are refused (409/412), never a duplicate."""
    duplicates = []
    for round_number in range(6):
        mrn = unique_value("race")
        barrier = threading.Barrier(4)
        responses: list[requests.Response] = []
        headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}

        def attempt() -> None:
            with requests.Session() as session:
                barrier.wait(timeout=30)
                if interaction == "conditional-create":
                    response = session.post(
                        f"{hub}/Patient", data=json.dumps(patient(mrn)), timeout=30,
                        headers={**headers, "If-None-Exist": f"identifier={MRN_SYSTEM}|{mrn}"})
                else:
                    response = session.put(
                        f"{hub}/Patient?identifier={MRN_SYSTEM}|{mrn}", data=json.dumps(patient(mrn)),
                        timeout=30, headers=headers)
                responses.append(response)

        threads = [threading.Thread(target=attempt) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        statuses = [r.status_code for r in responses]
        assert all(s in (200, 201, 409, 412) for s in statuses), statuses
        for response in responses:
            if response.status_code in (200, 201):
                check_resource(response, response.status_code, "Patient")
            else:
                assert_outcome(response, response.status_code)
        found = search_ids(http, hub, "Patient", {"identifier": f"{MRN_SYSTEM}|{mrn}"})
        if len(found) != 1:
            duplicates.append(f"round {round_number}: statuses {sorted(statuses)}, {len(found)} Patients")
    assert not duplicates, f"concurrent {interaction}s made duplicates:\n" + "\n".join(duplicates)
