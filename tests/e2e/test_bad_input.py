"""Bad input: every refusal is an OperationOutcome with severity, code, diagnostics (and an
expression where one applies), with the right HTTP status, and leaves nothing written.
Limits (body size, JSON depth, Bundle entries) run on a server started with small ones."""

from __future__ import annotations

import json
import random
import string

import pytest
import requests

from hygie_e2e import FhirSession

from e2e_support import (
    FHIR_JSON,
    MRN_SYSTEM,
    assert_outcome,
    check_bundle,
    check_resource,
    create,
    observation,
    one_shot,
    patient,
    read,
    system_history_size,
)

BACKENDS = ("sqlite", "postgres")
MAX_BODY_BYTES = 2048
MAX_JSON_DEPTH = 16
MAX_BUNDLE_ENTRIES = 5


def _post_raw(http, url: str, data: bytes | str, content_type: str = FHIR_JSON, **headers):
    return http.post(url, data=data, headers={"Content-Type": content_type, **headers})


def _refused_post(url: str, data: bytes | str, content_type: str = FHIR_JSON, **headers):
    """A POST the server refuses before reading the body, on its own connection (one_shot)."""
    return one_shot("POST", url, data=data, headers={"Content-Type": content_type, **headers})


def _nested(depth: int) -> str:
    """A Patient whose `extension` value nests `depth` arrays deep (invalid, but the depth
    check must answer first)."""
    return '{"resourceType":"Patient","extension":' + "[" * depth + "]" * depth + "}"


def test_malformed_json(hub, http):
    for body in (b'{"resourceType": "Patient", ', b"not json at all", b'{"resourceType":"Patient"}}', b"\xff\xfe{}"):
        assert_outcome(_post_raw(http, f"{hub}/Patient", body), 400)
    assert_outcome(_post_raw(http, f"{hub}/Patient", b""), 400)
    assert system_history_size(http, hub) == 0


def test_json_that_is_not_a_resource(hub, http):
    for body in ("[]", "42", '"Patient"', "null", "{}", '{"resourceType": 7}'):
        response = _post_raw(http, f"{hub}/Patient", body)
        assert response.status_code in (400, 422), f"{body}: {response.status_code} {response.text[:500]}"
        assert_outcome(response, response.status_code)
    assert system_history_size(http, hub) == 0


def test_resource_type_contradicting_the_url(hub, http):
    response = http.post(f"{hub}/Patient", json=observation("Patient/x"))
    assert_outcome(response, 400, diagnostics_contains="Observation")
    existing = create(http, hub, patient())
    response = http.put(f"{hub}/Observation/{existing['id']}", json=existing)
    assert_outcome(response, 400)
    assert system_history_size(http, hub) == 1


def test_id_in_body_contradicting_the_url(hub, http):
    existing = create(http, hub, patient())
    response = http.put(f"{hub}/Patient/{existing['id']}", json=dict(existing, id="another-id"))
    assert_outcome(response, 400, diagnostics_contains="id")
    response = http.put(f"{hub}/Patient/{existing['id']}", json={k: v for k, v in existing.items() if k != "id"})
    assert_outcome(response, 400)
    assert read(http, hub, f"Patient/{existing['id']}") == existing
    assert_outcome(http.get(f"{hub}/Patient/another-id"), 404)
    assert system_history_size(http, hub) == 1


def test_unknown_resource_type(hub, http):
    assert_outcome(http.get(f"{hub}/Patients/1"), 404)
    assert_outcome(http.post(f"{hub}/Patients", json=dict(patient(), resourceType="Patients")), 404)
    assert_outcome(http.put(f"{hub}/Unicorn/1", json={"resourceType": "Unicorn", "id": "1"}), 404)
    assert_outcome(http.get(f"{hub}/patient/1"), 404)  # resource types are case-sensitive
    assert system_history_size(http, hub) == 0


@pytest.mark.parametrize(
    "resource, expression",
    [
        (patient(birthDate="1970-13-01"), "Patient.birthDate"),
        (patient(shoeSize=42), "Patient.shoeSize"),
        (patient(gender="mostly"), "Patient.gender"),
        (patient(active="yes"), "Patient.active"),
        (patient(name={"family": "NotAnArray"}), "Patient.name"),
        (patient(name=[{"family": ["array", "for", "a", "string"]}]), "Patient.name"),
        (patient(identifier=[{"system": "urn:x", "value": ""}]), "Patient.identifier"),
        ({k: v for k, v in observation("Patient/x").items() if k != "status"}, "Observation.status"),
        ({k: v for k, v in observation("Patient/x").items() if k != "code"}, "Observation.code"),
        (dict(observation("Patient/x"), valueQuantity={"value": "seventy"}), "Observation.value"),
    ],
    ids=["bad-date", "unknown-element", "bad-code", "bad-boolean", "object-for-array",
         "array-for-string", "empty-string", "missing-status", "missing-code", "string-for-decimal"],
)
def test_invalid_resource_is_422_with_expression(hub, http, resource, expression):
    response = http.post(f"{hub}/{resource['resourceType']}", json=resource)
    assert_outcome(response, 422, expression=expression)
    assert system_history_size(http, hub) == 0


@pytest.mark.parametrize("length", [2_000, 3_000, 100_000])
def test_long_identifier_values(hub, http, length):
    """A valid string of any length up to the 1 MiB FHIR limit is either stored and found, or
    refused with a 4xx OperationOutcome naming a limit: never a 5xx."""
    rng = random.Random(length)
    value = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(length))
    response = http.post(f"{hub}/Patient", json=patient(value))
    assert response.status_code < 500, (
        f"POST a Patient whose identifier.value has {length} characters: {response.status_code} "
        f"{response.text[:500]}"
    )
    if response.status_code == 201:
        created = check_resource(response, 201, "Patient")
        assert read(http, hub, f"Patient/{created['id']}") == created
        # POST _search: a GET with this value in the URL could be too long for any server.
        response = http.post(f"{hub}/Patient/_search", data={"identifier": f"{MRN_SYSTEM}|{value}"})
        found = [e["resource"]["id"] for e in check_bundle(response, "searchset").get("entry") or []]
        assert found == [created["id"]], f"search by the {length}-character identifier found {found}"
    else:
        assert_outcome(response, response.status_code)
        assert system_history_size(http, hub) == 0


def test_invalid_update_is_422_and_keeps_the_resource(hub, http):
    existing = create(http, hub, patient())
    response = http.put(f"{hub}/Patient/{existing['id']}", json=dict(existing, birthDate="1970-02-30"))
    assert_outcome(response, 422, expression="Patient.birthDate")
    assert read(http, hub, f"Patient/{existing['id']}") == existing
    assert system_history_size(http, hub) == 1


def test_xml_is_not_supported(hub, http):
    xml = '<Patient xmlns="http://hl7.org/fhir"><gender value="female"/></Patient>'
    assert_outcome(_refused_post(f"{hub}/Patient", xml, "application/fhir+xml"), 415)
    # A JSON body declared as XML is refused by its declaration.
    assert_outcome(_refused_post(f"{hub}/Patient", json.dumps(patient()), "application/fhir+xml"), 415)
    assert_outcome(_refused_post(f"{hub}/Patient", json.dumps(patient()), "text/plain"), 415)

    existing = create(http, hub, patient())
    xml_only = {"Accept": "application/fhir+xml"}
    assert_outcome(http.get(f"{hub}/Patient/{existing['id']}", headers=xml_only), 406)
    assert_outcome(one_shot("POST", f"{hub}/Patient", json=patient(), headers=xml_only), 406)
    assert_outcome(http.get(f"{hub}/Patient/{existing['id']}", params={"_format": "xml"}), 406)
    # A JSON alternative in Accept is served.
    response = http.get(f"{hub}/Patient/{existing['id']}",
                        headers={"Accept": "application/fhir+xml, application/fhir+json;q=0.5"})
    check_resource(response, 200, "Patient")
    assert system_history_size(http, hub) == 1


def test_default_json_depth_limit(hub, http):
    """The default max_json_depth is 64: deeper is refused with 400 before parsing."""
    assert_outcome(_post_raw(http, f"{hub}/Patient", _nested(200)), 400)
    # Depth far beyond any parser's stack.
    assert_outcome(_post_raw(http, f"{hub}/Patient", _nested(100_000)), 400)
    bundle = '{"resourceType":"Bundle","type":"batch","entry":' + "[" * 300 + "]" * 300 + "}"
    assert_outcome(_post_raw(http, hub, bundle), 400)
    assert system_history_size(http, hub) == 0


def test_wrong_methods(hub, http):
    existing = create(http, hub, patient())
    assert_outcome(one_shot("POST", f"{hub}/Patient/{existing['id']}", json=existing), 405)
    assert_outcome(http.delete(f"{hub}/Patient"), 405)
    assert_outcome(one_shot("PUT", f"{hub}/metadata", json=patient()), 405)
    assert_outcome(http.get(f"{hub}/Patient/{existing['id']}/_history/1/extra"), 404)
    assert_outcome(http.get(f"{hub}/Patient/{existing['id']}/_history/x"), 404)
    assert read(http, hub, f"Patient/{existing['id']}") == existing
    assert system_history_size(http, hub) == 1


# ---------------------------------------------------------------------------------------
# A server with small limits


@pytest.fixture(params=BACKENDS)
def limited_hub(request, start_hub) -> str:
    server = start_hub(
        request.param,
        args=[
            "--max-body-bytes", str(MAX_BODY_BYTES),
            "--max-json-depth", str(MAX_JSON_DEPTH),
            "--max-bundle-entries", str(MAX_BUNDLE_ENTRIES),
        ],
    )
    return server.fhir_url


def _padded_patient(size: int) -> bytes:
    """A valid Patient of exactly `size` bytes of JSON."""
    body = patient()
    body["name"][0]["text"] = ""
    base = len(json.dumps(body).encode())
    body["name"][0]["text"] = "x" * (size - base)
    data = json.dumps(body).encode()
    assert len(data) == size
    return data


def test_body_size_limit(limited_hub, http):
    hub = limited_hub
    check_resource(_post_raw(http, f"{hub}/Patient", _padded_patient(MAX_BODY_BYTES)), 201, "Patient")
    assert_outcome(_refused_post(f"{hub}/Patient", _padded_patient(MAX_BODY_BYTES + 1)), 413)
    assert_outcome(_refused_post(f"{hub}/Patient", _padded_patient(50_000)), 413)

    # Without Content-Length (chunked): the limit still holds.
    def chunks():
        data = _padded_patient(20_000)
        for start in range(0, len(data), 1000):
            yield data[start:start + 1000]

    assert_outcome(one_shot("POST", f"{hub}/Patient", data=chunks(), headers={"Content-Type": FHIR_JSON}), 413)

    assert system_history_size(http, hub) == 1


def test_body_size_limit_on_update_and_bundle(limited_hub, http):
    hub = limited_hub
    existing = create(http, hub, patient())
    too_big = dict(existing, name=[{"text": "y" * (MAX_BODY_BYTES * 2)}])
    assert_outcome(one_shot("PUT", f"{hub}/Patient/{existing['id']}", json=too_big), 413)
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"resource": patient(name=[{"text": "z" * MAX_BODY_BYTES}]),
                         "request": {"method": "POST", "url": "Patient"}}]}
    assert_outcome(one_shot("POST", hub, json=bundle), 413)
    assert read(http, hub, f"Patient/{existing['id']}") == existing
    assert system_history_size(http, hub) == 1


def test_json_depth_limit(limited_hub, http):
    hub = limited_hub
    assert_outcome(_post_raw(http, f"{hub}/Patient", _nested(MAX_JSON_DEPTH + 5)), 400)
    assert_outcome(_post_raw(http, f"{hub}/Patient", _nested(MAX_JSON_DEPTH * 3)), 400)
    # A Patient within the depth is accepted.
    create(http, hub, patient())
    assert system_history_size(http, hub) == 1


def test_bundle_entry_limit(limited_hub, http):
    hub = limited_hub

    def bundle(kind: str, count: int) -> dict:
        return {"resourceType": "Bundle", "type": kind,
                "entry": [{"resource": {"resourceType": "Patient", "gender": "male"},
                           "request": {"method": "POST", "url": "Patient"}} for _ in range(count)]}

    for kind in ("transaction", "batch"):
        assert_outcome(http.post(hub, json=bundle(kind, MAX_BUNDLE_ENTRIES + 1)), 413)
    assert system_history_size(http, hub) == 0
    check_bundle(http.post(hub, json=bundle("transaction", MAX_BUNDLE_ENTRIES)), "transaction-response")
    assert system_history_size(http, hub) == MAX_BUNDLE_ENTRIES


def test_refusal_before_reading_the_body_keeps_the_connection_usable(limited_hub):
    """HTTP/1.1 keep-alive after a refusal: a server that answers without reading the request
    body must either read (drain) it or announce `Connection: close` (RFC 9112 §9.6). Closing
    the connection silently makes the client's NEXT request on it fail."""
    hub = limited_hub
    big = json.dumps(patient(name=[{"text": "x" * 100_000}]))
    refusals = {
        "413 (body over max_body_bytes)": ("POST", f"{hub}/Patient", {"Content-Type": FHIR_JSON}),
        "415 (XML)": ("POST", f"{hub}/Patient", {"Content-Type": "application/fhir+xml"}),
        "406 (Accept: XML)": ("POST", f"{hub}/Patient", {"Content-Type": FHIR_JSON, "Accept": "application/fhir+xml"}),
        "405 (POST on an instance)": ("POST", f"{hub}/Patient/some-id", {"Content-Type": FHIR_JSON}),
    }
    broken = {}
    for name, (method, url, headers) in refusals.items():
        with FhirSession() as session:
            for attempt in range(25):
                refused = session.request(method, url, data=big, headers=headers)
                assert 400 <= refused.status_code < 500, f"{name}: {refused.status_code}"
                announced_close = "close" in refused.headers.get("Connection", "").lower()
                try:
                    session.get(f"{hub}/metadata").raise_for_status()
                except requests.ConnectionError as err:
                    if not announced_close:
                        broken[name] = f"attempt {attempt + 1}: {type(err).__name__}: {err}"
                        break
    assert not broken, (
        "after these refusals the server closed the keep-alive connection without "
        "`Connection: close`, so the next request on it failed:\n"
        + "\n".join(f"  {k}: {v}" for k, v in broken.items())
    )
