"""Security labels, end to end: a resource labelled restricted (R, V) or sensitive (PSY, HIV,
ETH, GDIS, STD) is invisible to roles not granted that label, as if it did not exist: not
read, not counted, not included, not reached through `_has`, not changed. Each check would
fail if its protection broke."""

from __future__ import annotations

import pytest

from e2e_support import assert_outcome, check_bundle, check_resource, observation, one_shot, patient, run_cli
from test_auth import admit, bearer, get, post, token

CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
DOCTOR = "Practitioner/p1"


def labelled(resource: dict, system: str, code: str) -> dict:
    return {**resource, "meta": {"security": [{"system": system, "code": code}]}}


class Record:
    """Two admitted patients, one of them a VIP (Patient labelled V), and observations of
    the other with no label, R, HIV and PSY; written by the hospital's feed."""

    def __init__(self, server, hygie_bin, tmp_path):
        self.hub = server.fhir_url
        self.feed = token(hygie_bin, tmp_path, server, subject="Device/feed", roles=("integration",),
                          scope="system/*.cruds")
        self.plain = self.write(patient("lab-plain", family="Ordinaire"))["id"]
        self.vip = self.write(labelled(patient("lab-vip", family="Celebre"), CONFIDENTIALITY, "V"))["id"]
        for admitted in (self.plain, self.vip):
            admit(hygie_bin, tmp_path, server, admitted, practitioner=DOCTOR)
        subject = f"Patient/{self.plain}"
        self.obs = {
            "none": self.write(observation(subject, value=70.0))["id"],
            "R": self.write(labelled(observation(subject, value=71.0), CONFIDENTIALITY, "R"))["id"],
            "HIV": self.write(labelled(observation(subject, value=72.0), ACT_CODE, "HIV"))["id"],
            "PSY": self.write(labelled(observation(subject, value=73.0), ACT_CODE, "PSY"))["id"],
        }

    def write(self, resource: dict) -> dict:
        return check_resource(post(f"{self.hub}/{resource['resourceType']}", self.feed, resource), 201,
                              resource["resourceType"])


@pytest.fixture(params=["sqlite", "postgres"])
def secured(request, start_hub):
    return start_hub(request.param, no_auth=False)


def ids(bundle: dict, mode: str = "match") -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode}


def test_labelled_resources_are_invisible_to_roles_without_the_label(secured, hygie_bin, tmp_path):
    record = Record(secured, hygie_bin, tmp_path)
    hub, obs = record.hub, record.obs
    doctor = token(hygie_bin, tmp_path, secured, subject=DOCTOR, scope="user/*.cruds")
    visible = {obs["none"], obs["R"]}  # a clinician is granted R, not HIV or PSY

    found = check_bundle(get(f"{hub}/Observation", doctor, subject=f"Patient/{record.plain}", _total="accurate"),
                         "searchset")
    assert ids(found) == visible and found["total"] == 2, found
    assert check_bundle(get(f"{hub}/Observation", doctor, _summary="count"), "searchset")["total"] == 2
    # Asking for the label itself finds nothing: not even that such data exists.
    for code in ("HIV", "PSY"):
        probe = check_bundle(get(f"{hub}/Observation", doctor, _security=f"{ACT_CODE}|{code}", _total="accurate"),
                             "searchset")
        assert probe["total"] == 0 and not probe.get("entry"), probe
    # A read answers exactly as for an id that does not exist.
    unknown = get(f"{hub}/Observation/no-such-id", doctor)
    for code in ("HIV", "PSY"):
        hidden = get(f"{hub}/Observation/{obs[code]}", doctor)
        assert_outcome(hidden, 404, code="not-found")
        assert hidden.json()["issue"][0]["diagnostics"].replace(obs[code], "X") == \
            unknown.json()["issue"][0]["diagnostics"].replace("no-such-id", "X")
        assert_outcome(get(f"{hub}/Observation/{obs[code]}/_history", doctor), 404, code="not-found")
    # Includes, _has and $everything see only what the caller may see.
    rev = check_bundle(get(f"{hub}/Patient", doctor, _id=record.plain, _revinclude="Observation:subject"),
                       "searchset")
    assert ids(rev, "include") == visible, rev
    has = check_bundle(get(f"{hub}/Patient", doctor, **{"_has:Observation:subject:_security": f"{ACT_CODE}|HIV"}),
                       "searchset")
    assert not has.get("entry"), "a hidden observation must not select its patient"
    everything = check_bundle(get(f"{hub}/Patient/{record.plain}/$everything", doctor), "searchset")
    everything_ids = {e["resource"]["id"] for e in everything["entry"]}
    assert visible <= everything_ids and not ({obs["HIV"], obs["PSY"]} & everything_ids)
    # A very restricted patient does not exist for the clinician: read, search, count.
    assert_outcome(get(f"{hub}/Patient/{record.vip}", doctor), 404, code="not-found")
    assert not check_bundle(get(f"{hub}/Patient", doctor, family="Celebre"), "searchset").get("entry")
    assert_outcome(get(f"{hub}/Patient/{record.vip}/$everything", doctor), 404, code="not-found")
    reception = token(hygie_bin, tmp_path, secured, subject="Practitioner/desk", roles=("reception",),
                      scope="user/*.crus")
    history = check_bundle(get(f"{hub}/Patient/_history", reception), "history")
    assert record.vip not in {e.get("resource", {}).get("id") for e in history["entry"]}
    assert record.plain in {e.get("resource", {}).get("id") for e in history["entry"]}

    # No changing what one cannot see; labelling beyond one's sight is allowed.
    overwrite = dict(observation(f"Patient/{record.plain}", value=1.0), id=obs["HIV"])
    assert_outcome(one_shot("PUT", f"{hub}/Observation/{obs['HIV']}", json=overwrite,
                            headers={**bearer(doctor), "Content-Type": "application/fhir+json"}), 404,
                   code="not-found")
    kept = check_resource(get(f"{hub}/Observation/{obs['HIV']}", record.feed), 200, "Observation")
    assert kept["valueQuantity"]["value"] == 72.0 and kept["meta"]["versionId"] == "1"
    mine = check_resource(post(f"{hub}/Observation", doctor,
                               labelled(observation(f"Patient/{record.plain}", value=74.0), ACT_CODE, "STD")),
                          201, "Observation")
    assert_outcome(get(f"{hub}/Observation/{mine['id']}", doctor), 404, code="not-found")
    # A transaction cannot reach around the labels either: reading or replacing in place.
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"resource": overwrite, "request": {"method": "PUT", "url": f"Observation/{obs['HIV']}"}}]}
    assert_outcome(post(hub, doctor, bundle), 403, code="forbidden")

    # The hospital's systems and the patient themself see everything of the record.
    everyone = check_bundle(get(f"{hub}/Observation", record.feed, subject=f"Patient/{record.plain}"), "searchset")
    assert set(obs.values()) <= ids(everyone)
    own = token(hygie_bin, tmp_path, secured, subject=f"Patient/{record.plain}", roles=("patient",),
                scope="patient/*.rs", patient_context=record.plain)
    assert set(obs.values()) <= ids(check_bundle(get(f"{hub}/Observation", own), "searchset"))
    vip_self = token(hygie_bin, tmp_path, secured, subject=f"Patient/{record.vip}", roles=("patient",),
                     scope="patient/*.rs", patient_context=record.vip)
    check_resource(get(f"{hub}/Patient/{record.vip}", vip_self), 200, "Patient")


def test_label_grants_come_from_the_settings_file(start_hub, hygie_bin, tmp_path):
    settings = tmp_path / "hygie.toml"
    settings.write_text('[labels]\nclinician = ["R", "HIV"]\npsychiatrist = ["PSY"]\n')
    server = start_hub("sqlite", no_auth=False, args=["--config", str(settings)])
    record = Record(server, hygie_bin, tmp_path)
    hub = record.hub
    doctor = token(hygie_bin, tmp_path, server, subject=DOCTOR, scope="user/*.rs")
    check_resource(get(f"{hub}/Observation/{record.obs['HIV']}", doctor), 200, "Observation")
    assert_outcome(get(f"{hub}/Observation/{record.obs['PSY']}", doctor), 404, code="not-found")
    psychiatrist = token(hygie_bin, tmp_path, server, subject=DOCTOR, roles=("clinician", "psychiatrist"),
                         scope="user/*.rs")
    check_resource(get(f"{hub}/Observation/{record.obs['PSY']}", psychiatrist), 200, "Observation")

    bad = tmp_path / "bad.toml"
    bad.write_text('[labels]\nclinician = ["SECRET"]\n')
    refused = run_cli(hygie_bin, ["serve", "--config", str(bad), "--data-dir", str(tmp_path / "d2")], cwd=tmp_path)
    assert refused.returncode != 0 and "SECRET" in refused.stderr, refused.stderr
