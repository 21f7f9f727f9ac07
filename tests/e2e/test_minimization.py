"""Field-level minimization, end to end: each role receives the elements its work needs and
no more (reception: no diagnoses or reasons for the stay; billing: no contacts), redacted
resources say so (`REDACTED` in meta.security), and a role can neither search by nor write
what it cannot see. Each check would fail if its protection broke."""

from __future__ import annotations

import pytest

from e2e_support import assert_outcome, check_bundle, check_resource, one_shot, patient, run_cli
from test_auth import bearer, get, post, token

ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
SNOMED = "http://snomed.info/sct"
REDACTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "REDACTED"}
DOCTOR = "Practitioner/p1"
HIDDEN_FROM_RECEPTION = ("diagnosis", "reasonCode", "hospitalization")


def redacted(resource: dict) -> bool:
    return any(c.get("system") == REDACTED["system"] and c.get("code") == "REDACTED"
               for c in resource.get("meta", {}).get("security", []))


def put(url, value, body):
    return one_shot("PUT", url, json=body, headers={**bearer(value), "Content-Type": "application/fhir+json"})


class Stay:
    def __init__(self, server, hygie_bin, tmp_path):
        self.hub = server.fhir_url
        self.feed = token(hygie_bin, tmp_path, server, subject="Device/adt", roles=("integration",),
                          scope="system/*.cruds")
        self.patient = self.write(dict(patient("min-1", family="Lefèvre"),
                                       telecom=[{"system": "phone", "value": "+33 6 12 34 56 78"}],
                                       maritalStatus={"text": "married"},
                                       contact=[{"name": {"family": "Lefèvre", "given": ["Anne"]}}]))
        self.condition = self.write({"resourceType": "Condition", "subject": {"reference": self.patient_ref},
                                     "code": {"coding": [{"system": SNOMED, "code": "22298006"}]}})
        self.encounter = self.write({
            "resourceType": "Encounter", "status": "in-progress",
            "class": {"system": ACT_CODE, "code": "IMP"},
            "subject": {"reference": self.patient_ref},
            "participant": [{"individual": {"reference": DOCTOR}}],
            "period": {"start": "2026-11-01T08:00:00Z"},
            "reasonCode": [{"coding": [{"system": SNOMED, "code": "29857009", "display": "Chest pain"}]}],
            "diagnosis": [{"condition": {"reference": f"Condition/{self.condition['id']}"}}],
            "hospitalization": {"admitSource": {"text": "emergency"}},
        })

    @property
    def patient_ref(self) -> str:
        return f"Patient/{self.patient['id']}" if hasattr(self, "patient") else ""

    def write(self, resource: dict) -> dict:
        return check_resource(post(f"{self.hub}/{resource['resourceType']}", self.feed, resource), 201,
                              resource["resourceType"])

    def stored(self, reference: str) -> dict:
        return check_resource(get(f"{self.hub}/{reference}", self.feed), 200)


@pytest.fixture(params=["sqlite", "postgres"])
def secured(request, start_hub):
    return start_hub(request.param, no_auth=False)


def test_each_role_gets_the_elements_its_work_needs(secured, hygie_bin, tmp_path):
    stay = Stay(secured, hygie_bin, tmp_path)
    hub = stay.hub
    encounter_url = f"{hub}/Encounter/{stay.encounter['id']}"
    patient_url = f"{hub}/{stay.patient_ref}"
    reception = token(hygie_bin, tmp_path, secured, subject="Practitioner/desk", roles=("reception",),
                      scope="user/*.crus")
    billing = token(hygie_bin, tmp_path, secured, subject="Practitioner/billing", roles=("billing",),
                    scope="user/*.rs")
    doctor = token(hygie_bin, tmp_path, secured, subject=DOCTOR, scope="user/*.cruds")

    # Reception: the stay's administrative part, not why the patient came.
    seen = check_resource(get(encounter_url, reception), 200, "Encounter")
    assert not set(HIDDEN_FROM_RECEPTION) & set(seen), seen
    assert seen["class"]["code"] == "IMP" and seen["subject"]["reference"] == stay.patient_ref
    assert redacted(seen)
    whole_patient = check_resource(get(patient_url, reception), 200, "Patient")
    assert whole_patient["telecom"] and not redacted(whole_patient), "reception needs the phone number"
    # In searches too, and searching by what is hidden is refused.
    found = check_bundle(get(f"{hub}/Encounter", reception, subject=stay.patient_ref), "searchset")
    assert [redacted(e["resource"]) and "diagnosis" not in e["resource"] for e in found["entry"]] == [True]
    for param in ("reason-code", "diagnosis"):
        value = f"{SNOMED}|29857009" if param == "reason-code" else f"Condition/{stay.condition['id']}"
        assert_outcome(get(f"{hub}/Encounter", reception, **{param: value}), 403, code="forbidden",
                       diagnostics_contains="may not see")
    # Billing: codes the claim from the diagnoses; no contacts.
    billed = check_resource(get(patient_url, billing), 200, "Patient")
    assert not {"telecom", "contact", "maritalStatus"} & set(billed) and redacted(billed)
    assert billed["name"][0]["family"] == "Lefèvre"
    billing_view = check_resource(get(encounter_url, billing), 200, "Encounter")
    assert "diagnosis" in billing_view and "reasonCode" not in billing_view
    # The treating clinician sees everything, unmarked.
    full = check_resource(get(encounter_url, doctor), 200, "Encounter")
    assert set(HIDDEN_FROM_RECEPTION) <= set(full) and not redacted(full)

    # Writes: what the role sent back without the hidden elements keeps them.
    seen["status"] = "finished"
    seen["period"]["end"] = "2026-11-03T10:00:00Z"
    check_resource(put(encounter_url, reception, seen), 200, "Encounter")
    after = stay.stored(f"Encounter/{stay.encounter['id']}")
    assert after["status"] == "finished"
    assert after["diagnosis"] == stay.encounter["diagnosis"] and after["reasonCode"] == stay.encounter["reasonCode"]
    assert not redacted(after), "the REDACTED marker sent back is not stored"
    # Setting or changing a hidden element is refused, and nothing changes.
    tampered = dict(seen, reasonCode=[{"text": "nothing serious"}])
    assert_outcome(put(encounter_url, reception, tampered), 403, code="forbidden",
                   diagnostics_contains="Encounter.reasonCode")
    assert stay.stored(f"Encounter/{stay.encounter['id']}")["reasonCode"] == stay.encounter["reasonCode"]
    fresh = {"resourceType": "Encounter", "status": "planned", "class": {"system": ACT_CODE, "code": "AMB"},
             "subject": {"reference": stay.patient_ref}, "diagnosis": stay.encounter["diagnosis"]}
    assert_outcome(post(f"{hub}/Encounter", reception, fresh), 403, code="forbidden")
    patch = [{"op": "add", "path": "/reasonCode/0", "value": {"text": "injected"}}]
    assert_outcome(one_shot("PATCH", encounter_url, json=patch,
                            headers={**bearer(reception), "Content-Type": "application/json-patch+json"}),
                   403, code="forbidden")
    harmless = [{"op": "replace", "path": "/status", "value": "cancelled"}]
    patched = one_shot("PATCH", encounter_url, json=harmless,
                       headers={**bearer(reception), "Content-Type": "application/json-patch+json"})
    assert patched.status_code == 200, patched.text
    assert stay.stored(f"Encounter/{stay.encounter['id']}")["reasonCode"] == stay.encounter["reasonCode"]


def test_masks_come_from_the_settings_file(start_hub, hygie_bin, tmp_path):
    settings = tmp_path / "hygie.toml"
    settings.write_text('[minimize]\nreception = []\nbilling = ["Patient.birthDate"]\n')
    server = start_hub("sqlite", no_auth=False, args=["--config", str(settings)])
    stay = Stay(server, hygie_bin, tmp_path)
    reception = token(hygie_bin, tmp_path, server, subject="Practitioner/desk", roles=("reception",),
                      scope="user/*.rs")
    seen = check_resource(get(f"{stay.hub}/Encounter/{stay.encounter['id']}", reception), 200, "Encounter")
    assert "diagnosis" in seen and not redacted(seen)
    billing = token(hygie_bin, tmp_path, server, subject="Practitioner/b", roles=("billing",), scope="user/*.rs")
    billed = check_resource(get(f"{stay.hub}/{stay.patient_ref}", billing), 200, "Patient")
    assert "birthDate" not in billed and "telecom" in billed and redacted(billed)

    bad = tmp_path / "bad.toml"
    bad.write_text('[minimize]\nreception = ["Encounter.nosuch"]\n')
    refused = run_cli(hygie_bin, ["serve", "--config", str(bad), "--data-dir", str(tmp_path / "d2")], cwd=tmp_path)
    assert refused.returncode != 0 and "Encounter.nosuch" in refused.stderr, refused.stderr
