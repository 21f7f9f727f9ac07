"""`Prefer: return=` on create, update and patch (http.html#ops): minimal (no body, headers
still there), OperationOutcome, representation (the default)."""

from __future__ import annotations

from e2e_support import assert_http_date, check_resource, create, patient, read

JSON_PATCH = "application/json-patch+json"


def _assert_headers(response, hub: str, reference: str, version: str) -> None:
    assert response.headers.get("ETag") == f'W/"{version}"', response.headers
    assert_http_date(response.headers.get("Last-Modified"))
    location = response.headers.get("Location")
    if response.status_code == 201:
        assert location == f"{hub}/{reference}/_history/{version}", f"Location: {location!r}"
    elif location is not None:
        assert location.endswith(f"/{reference}/_history/{version}"), f"Location: {location!r}"


def test_return_minimal(hub, http):
    minimal = {"Prefer": "return=minimal"}
    response = http.post(f"{hub}/Patient", json=patient(), headers=minimal)
    assert response.status_code == 201, response.text[:1000]
    assert response.content == b"", f"return=minimal: no body, got {response.text[:500]!r}"
    location = response.headers.get("Location", "")
    assert "/Patient/" in location, f"Location: {location!r}"
    pid = location.split("/Patient/")[1].split("/")[0]
    _assert_headers(response, hub, f"Patient/{pid}", "1")
    stored = read(http, hub, f"Patient/{pid}")

    response = http.put(f"{hub}/Patient/{pid}", json=dict(stored, gender="male"), headers=minimal)
    assert response.status_code == 200 and response.content == b"", (response.status_code, response.text[:500])
    _assert_headers(response, hub, f"Patient/{pid}", "2")

    patch = [{"op": "replace", "path": "/gender", "value": "other"}]
    response = http.patch(f"{hub}/Patient/{pid}", json=patch,
                          headers={"Content-Type": JSON_PATCH, **minimal})
    assert response.status_code == 200 and response.content == b"", (response.status_code, response.text[:500])
    _assert_headers(response, hub, f"Patient/{pid}", "3")
    assert read(http, hub, f"Patient/{pid}")["gender"] == "other"


def test_return_operation_outcome(hub, http):
    prefer = {"Prefer": "return=OperationOutcome"}
    response = http.post(f"{hub}/Patient", json=patient(), headers=prefer)
    outcome = check_resource(response, 201, "OperationOutcome")
    assert outcome["issue"] and all(i["severity"] in ("information", "warning") for i in outcome["issue"]), outcome
    pid = response.headers["Location"].split("/Patient/")[1].split("/")[0]
    _assert_headers(response, hub, f"Patient/{pid}", "1")

    stored = read(http, hub, f"Patient/{pid}")
    response = http.put(f"{hub}/Patient/{pid}", json=dict(stored, gender="male"), headers=prefer)
    check_resource(response, 200, "OperationOutcome")
    _assert_headers(response, hub, f"Patient/{pid}", "2")


def test_return_representation_is_the_default(hub, http):
    created = create(http, hub, patient())
    explicit = http.post(f"{hub}/Patient", json=patient(), headers={"Prefer": "return=representation"})
    other = check_resource(explicit, 201, "Patient")
    assert other["id"] != created["id"]
    assert read(http, hub, f"Patient/{created['id']}") == created
    assert read(http, hub, f"Patient/{other['id']}") == other
