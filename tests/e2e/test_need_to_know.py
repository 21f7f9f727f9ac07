"""Need-to-know and break-the-glass, end to end: a clinician sees the patients they care for
(an encounter they take part in, current or recent; a care team; their department), nothing
of the others leaks through totals, includes, `_has` or writes, and the glass can be broken
with a reason, recorded and reviewed. Each check would fail if its protection broke."""

from __future__ import annotations

import datetime
import json

import pytest

from e2e_support import assert_outcome, check_bundle, check_resource, observation, one_shot, patient, run_cli
from test_auth import bearer, get, post, token

ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
DOCTOR = "Practitioner/doc1"


def instant(days_ago: float) -> str:
    moment = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=days_ago)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def encounter(patient_id: str, *, ended_days_ago: float | None, participant: str | None = DOCTOR,
              service_provider: str | None = None) -> dict:
    period = {"start": instant((ended_days_ago or 0) + 3)}
    if ended_days_ago is not None:
        period["end"] = instant(ended_days_ago)
    resource = {"resourceType": "Encounter", "status": "finished" if ended_days_ago is not None else "in-progress",
                "class": {"system": ACT_CODE, "code": "IMP"}, "subject": {"reference": f"Patient/{patient_id}"},
                "period": period}
    if participant:
        resource["participant"] = [{"individual": {"reference": participant}}]
    if service_provider:
        resource["serviceProvider"] = {"reference": service_provider}
    return resource


def care_team(patient_id: str, status: str) -> dict:
    return {"resourceType": "CareTeam", "status": status, "subject": {"reference": f"Patient/{patient_id}"},
            "participant": [{"member": {"reference": DOCTOR}}]}


class Ward:
    """Seven patients, each with one heart-rate Observation, related to Practitioner/doc1
    in a different way (or not at all), written by the ADT/lab feed's system token."""

    RELATED = ("current", "recent", "team", "department")
    UNRELATED = ("long_ago", "team_ended", "stranger")

    def __init__(self, server, hygie_bin, tmp_path):
        self.server, self.hub = server, server.fhir_url
        self.feed = token(hygie_bin, tmp_path, server, subject="Device/feed", roles=("integration",),
                          scope="system/*.cruds")
        self.patients: dict[str, str] = {}
        self.observations: dict[str, str] = {}
        for name in self.RELATED + self.UNRELATED:
            created = check_resource(post(f"{self.hub}/Patient", self.feed, patient(f"ntk-{name}", family=name)),
                                     201, "Patient")
            self.patients[name] = created["id"]
            self.observations[name] = self.write(observation(f"Patient/{created['id']}"))["id"]
        p = self.patients
        self.write(encounter(p["current"], ended_days_ago=None))
        self.write(encounter(p["recent"], ended_days_ago=10))
        self.write(encounter(p["long_ago"], ended_days_ago=100))
        self.write(care_team(p["team"], "active"))
        self.write(care_team(p["team_ended"], "inactive"))
        # Department: doc1 works in cardiology; the patient's current stay is there, with
        # another doctor attending.
        self.write({"resourceType": "PractitionerRole", "active": True,
                    "practitioner": {"reference": DOCTOR}, "organization": {"reference": "Organization/cardio"}})
        self.write(encounter(p["department"], ended_days_ago=None, participant="Practitioner/doc2",
                             service_provider="Organization/cardio"))

    def write(self, resource: dict) -> dict:
        return check_resource(post(f"{self.hub}/{resource['resourceType']}", self.feed, resource), 201,
                              resource["resourceType"])

    def ids(self, names) -> set[str]:
        return {self.observations[name] for name in names}


@pytest.fixture(params=["sqlite", "postgres"])
def secured(request, start_hub):
    return start_hub(request.param, no_auth=False)


def test_a_clinician_sees_the_patients_they_care_for_and_nothing_of_the_others(secured, hygie_bin, tmp_path):
    ward = Ward(secured, hygie_bin, tmp_path)
    hub, p = ward.hub, ward.patients
    doctor = token(hygie_bin, tmp_path, secured, subject=DOCTOR, scope="user/*.cruds")

    # Reads: each relationship opens its patient; the others are refused, with the way out.
    for name in Ward.RELATED:
        check_resource(get(f"{hub}/Observation/{ward.observations[name]}", doctor), 200, "Observation")
    for name in Ward.UNRELATED:
        assert_outcome(get(f"{hub}/Observation/{ward.observations[name]}", doctor), 403, code="forbidden",
                       diagnostics_contains="X-Break-Glass-Reason")

    # Searches and their totals count only what the clinician may see, page after page.
    found = check_bundle(get(f"{hub}/Observation", doctor, _total="accurate", _count="2"), "searchset")
    assert found["total"] == len(Ward.RELATED), found
    seen, page = set(), found
    while True:
        seen |= {e["resource"]["id"] for e in page.get("entry", [])}
        following = [link["url"] for link in page["link"] if link["relation"] == "next"]
        if not following:
            break
        page = check_bundle(one_shot("GET", following[0], headers=bearer(doctor)), "searchset")
    assert seen == ward.ids(Ward.RELATED)
    counted = check_bundle(get(f"{hub}/Observation", doctor, _summary="count"), "searchset")
    assert counted["total"] == len(Ward.RELATED)
    # A search naming a patient out of care is refused, not answered empty.
    assert_outcome(get(f"{hub}/Observation", doctor, subject=f"Patient/{p['stranger']}"), 403,
                   code="forbidden", diagnostics_contains="X-Break-Glass-Reason")
    assert_outcome(get(f"{hub}/Patient/{p['stranger']}/Observation", doctor), 403, code="forbidden")
    assert_outcome(get(f"{hub}/Patient/{p['stranger']}/$everything", doctor), 403, code="forbidden")
    check_bundle(get(f"{hub}/Patient/{p['current']}/$everything", doctor), "searchset")

    # Patients are open (finding them is how care starts), but what hangs off them is not:
    # _has and _revinclude look only at the data of patients in care.
    has = check_bundle(get(f"{hub}/Patient", doctor, **{"_has:Observation:subject:code": "8867-4"}), "searchset")
    assert {e["resource"]["id"] for e in has.get("entry", [])} == {p[n] for n in Ward.RELATED}
    both = f"{p['current']},{p['stranger']}"
    rev = check_bundle(get(f"{hub}/Patient", doctor, _id=both, _revinclude="Observation:subject"), "searchset")
    included = {e["resource"]["id"] for e in rev["entry"] if e["search"]["mode"] == "include"}
    assert included == ward.ids(["current"]), rev
    assert {e["resource"]["id"] for e in rev["entry"] if e["search"]["mode"] == "match"} == {p["current"],
                                                                                                p["stranger"]}

    # Writes: not into the record of a patient out of care, not by moving data out of it.
    assert_outcome(post(f"{hub}/Observation", doctor, observation(f"Patient/{p['stranger']}", value=99.0)),
                   403, code="forbidden")
    feed_view = check_bundle(get(f"{hub}/Observation", ward.feed, subject=f"Patient/{p['stranger']}"), "searchset")
    assert len(feed_view["entry"]) == 1, "the refused create wrote nothing"
    check_resource(post(f"{hub}/Observation", doctor, observation(f"Patient/{p['current']}", value=61.0)), 201,
                   "Observation")
    moved = dict(observation(f"Patient/{p['current']}"), id=ward.observations["stranger"])
    assert_outcome(one_shot("PUT", f"{hub}/Observation/{ward.observations['stranger']}", json=moved,
                            headers={**bearer(doctor), "Content-Type": "application/fhir+json"}),
                   403, code="forbidden")
    # Histories: one resource in care, never a history that mixes patients.
    check_bundle(get(f"{hub}/Observation/{ward.observations['current']}/_history", doctor), "history")
    assert_outcome(get(f"{hub}/Observation/{ward.observations['stranger']}/_history", doctor), 403,
                   code="forbidden")
    assert_outcome(get(f"{hub}/Observation/_history", doctor), 403, code="forbidden")

    # A nurse of no ward sees no clinical data; reception and system tokens are not limited.
    nurse = token(hygie_bin, tmp_path, secured, subject="Practitioner/nurse9", roles=("nurse",), scope="user/*.rs")
    assert check_bundle(get(f"{hub}/Observation", nurse, _summary="count"), "searchset")["total"] == 0
    everyone = check_bundle(get(f"{hub}/Observation", ward.feed, _summary="count"), "searchset")
    assert everyone["total"] == len(Ward.RELATED) + len(Ward.UNRELATED) + 1


def test_breaking_the_glass_opens_one_patient_is_recorded_and_reviewed(secured, hygie_bin, tmp_path):
    ward = Ward(secured, hygie_bin, tmp_path)
    hub, p = ward.hub, ward.patients
    doctor = token(hygie_bin, tmp_path, secured, subject=DOCTOR, scope="user/*.cruds")
    target = f"{hub}/Observation/{ward.observations['stranger']}"
    reason = "arrivée inconsciente aux urgences, aucun dossier"

    def glass(url, why, value=doctor, **params):
        return one_shot("GET", url, params=params,
                        headers={**bearer(value), "X-Break-Glass-Reason": why.encode("utf-8")})

    # A reason is required: empty, too long, control characters are refused, nothing opened.
    for bad in ("", "x" * 501, "line\tbreak"):
        assert_outcome(glass(target, bad), 400, code="invalid", diagnostics_contains="X-Break-Glass-Reason")
    assert_outcome(get(target, doctor), 403, code="forbidden")
    # One patient: a search that names none cannot break the glass.
    assert_outcome(glass(f"{hub}/Observation", reason), 400, code="invalid", diagnostics_contains="one patient")

    check_resource(glass(target, reason), 200, "Observation")
    # The grant holds for its window, for this patient and this clinician only.
    check_resource(get(target, doctor), 200, "Observation")
    check_bundle(get(f"{hub}/Observation", doctor, subject=f"Patient/{p['stranger']}"), "searchset")
    assert_outcome(get(f"{hub}/Observation/{ward.observations['long_ago']}", doctor), 403, code="forbidden")
    colleague = token(hygie_bin, tmp_path, secured, subject="Practitioner/doc3", scope="user/*.rs")
    assert_outcome(get(target, colleague), 403, code="forbidden")
    # Reception is not limited by need-to-know and may not break the glass: the header
    # changes nothing for it (its role still has no Observation).
    reception = token(hygie_bin, tmp_path, secured, subject="Practitioner/desk", roles=("reception",),
                      scope="user/*.rs")
    assert_outcome(glass(target, reason, value=reception), 403, code="forbidden")

    admin = hub.removesuffix("/fhir")
    dpo = token(hygie_bin, tmp_path, secured, subject="Practitioner/dpo", roles=("dpo",), scope="user/AuditEvent.rs")
    assert_outcome(one_shot("GET", f"{admin}/admin/break-glass", headers=bearer(doctor)), 403, code="forbidden")
    listing = one_shot("GET", f"{admin}/admin/break-glass", headers=bearer(dpo))
    assert listing.status_code == 200, listing.text
    items = listing.json()["items"]
    assert len(items) == 1, items
    item = items[0]
    assert (item["subject"], item["patient"], item["reason"]) == (DOCTOR, f"Patient/{p['stranger']}", reason)
    assert item["closed"] is None
    opened = datetime.datetime.fromisoformat(item["opened"].replace("Z", "+00:00"))
    until = datetime.datetime.fromisoformat(item["until"].replace("Z", "+00:00"))
    assert until - opened == datetime.timedelta(hours=8)
    # A second request with a reason while the grant is open adds no review item.
    check_resource(glass(target, "still in resus"), 200, "Observation")
    assert len(one_shot("GET", f"{admin}/admin/break-glass", headers=bearer(dpo)).json()["items"]) == 1

    close = f"{admin}/admin/break-glass/{item['id']}/close"
    assert_outcome(one_shot("POST", close, json={"review": "ok"}, headers=bearer(doctor)), 403, code="forbidden")
    assert_outcome(one_shot("POST", close, json={"review": ""}, headers=bearer(dpo)), 400, code="invalid")
    done = one_shot("POST", close, json={"review": "justified: cardiac arrest"}, headers=bearer(dpo))
    assert done.status_code == 200, done.text
    assert_outcome(one_shot("POST", close, json={"review": "again"}, headers=bearer(dpo)), 404, code="not-found")
    assert one_shot("GET", f"{admin}/admin/break-glass", headers=bearer(dpo)).json()["items"] == []
    closed = one_shot("GET", f"{admin}/admin/break-glass", params={"all": "true"}, headers=bearer(dpo)).json()
    assert [(i["review"], i["closed_by"]) for i in closed["items"]] == [("justified: cardiac arrest",
                                                                         "Practitioner/dpo")]


def test_the_rules_come_from_the_settings_file_and_the_cli_reviews(start_hub, hygie_bin, tmp_path):
    settings = tmp_path / "hygie.toml"
    settings.write_text('[need_to_know]\nwindow_days = 5\nbreak_glass_roles = ["clinician"]\n'
                        'break_glass_hours = 1\n')
    server = start_hub("sqlite", no_auth=False, args=["--config", str(settings)])
    ward = Ward(server, hygie_bin, tmp_path)
    hub = ward.hub
    doctor = token(hygie_bin, tmp_path, server, subject=DOCTOR, scope="user/*.cruds")
    # Ended ten days ago: outside a five-day window.
    assert_outcome(get(f"{hub}/Observation/{ward.observations['recent']}", doctor), 403, code="forbidden")
    check_resource(get(f"{hub}/Observation/{ward.observations['current']}", doctor), 200, "Observation")
    # Nurses may not break the glass here.
    nurse = token(hygie_bin, tmp_path, server, subject="Practitioner/nurse1", roles=("nurse",), scope="user/*.rs")
    refused = one_shot("GET", f"{hub}/Observation/{ward.observations['stranger']}",
                       headers={**bearer(nurse), "X-Break-Glass-Reason": "emergency"})
    assert_outcome(refused, 403, code="forbidden", diagnostics_contains="breaking the glass needs")
    opened = one_shot("GET", f"{hub}/Observation/{ward.observations['stranger']}",
                      headers={**bearer(doctor), "X-Break-Glass-Reason": "emergency"})
    check_resource(opened, 200, "Observation")

    store = ["--data-dir", str(server.data_dir)]
    listed = run_cli(hygie_bin, ["btg", "list", *store, "--format", "json"], cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    grants = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(g["subject"], g["reason"]) for g in grants] == [(DOCTOR, "emergency")]
    assert grants[0]["until_us"] - grants[0]["opened_us"] == 3_600_000_000
    closed = run_cli(hygie_bin, ["btg", "close", *store, str(grants[0]["grant_id"]), "--review", "justified"],
                     cwd=tmp_path)
    assert closed.returncode == 0, closed.stderr
    again = run_cli(hygie_bin, ["btg", "close", *store, str(grants[0]["grant_id"]), "--review", "justified"],
                    cwd=tmp_path)
    assert again.returncode != 0 and "awaits review" in again.stderr, again.stderr
    table = run_cli(hygie_bin, ["btg", "list", *store, "--all"], cwd=tmp_path)
    assert table.returncode == 0 and "closed by" in table.stdout and "justified" in table.stdout, table.stdout

    bad = tmp_path / "bad.toml"
    bad.write_text('[need_to_know]\nbreak_glass_hours = 0\n')
    refused_start = run_cli(hygie_bin, ["serve", "--config", str(bad), "--data-dir", str(tmp_path / "d2")],
                            cwd=tmp_path)
    assert refused_start.returncode != 0 and "break_glass_hours" in refused_start.stderr, refused_start.stderr
