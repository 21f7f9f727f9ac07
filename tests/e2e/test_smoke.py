"""Smoke test: the server starts on each backend, is healthy and describes itself as FHIR R4."""

from hygie_e2e import assert_valid_r4, fhir_json


def test_healthz_answers_200(hub_server, http):
    response = http.get(f"{hub_server.root_url}/healthz")
    assert response.status_code == 200, f"GET /healthz: {response.status_code} {response.text[:500]}"


def test_metadata_is_an_r4_capability_statement(hub, http):
    response = http.get(f"{hub}/metadata")
    assert response.status_code == 200, f"GET /fhir/metadata: {response.status_code} {response.text[:2000]}"
    statement = fhir_json(response)
    assert statement.get("resourceType") == "CapabilityStatement", statement.get("resourceType")
    assert statement.get("fhirVersion") == "4.0.1", statement.get("fhirVersion")
    assert_valid_r4(statement)
