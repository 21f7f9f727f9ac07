"""The audit trail read through FHIR, on SQLite and PostgreSQL: AuditEvent search for the
DPO and the security officer (patient, agent, date, type, subtype, outcome, purpose), one
patient entity per patient an access reached, nobody able to write an AuditEvent, reading
the trail itself audited, and a patient's access report (`Patient/{id}/$access-log`,
`hygie audit report`) that shows who, when, what and why without leaking other patients or
the staff's network details. Each check would fail if its protection broke."""

from __future__ import annotations

import json

import pytest

from e2e_support import assert_outcome, check_bundle, check_resource, follow_pages, observation, one_shot, patient, run_cli
from hygie_e2e import FhirSession, assert_valid_r4
from test_auth import _store_args, admit, bearer, get, post, token

DOCTOR = "Practitioner/p1"
PATIENT_ENTITY = ("http://terminology.hl7.org/CodeSystem/object-role", "1")


def patients_of(event: dict) -> set[str]:
    """The ids of the BALP patient entities of an AuditEvent."""
    return {e["what"]["reference"].removeprefix("Patient/") for e in event.get("entity", [])
            if (e.get("role", {}).get("system"), e.get("role", {}).get("code")) == PATIENT_ENTITY}


def events(server, tok, **params) -> list[dict]:
    response = get(f"{server.fhir_url}/AuditEvent", tok, **params)
    bundle = check_bundle(response, "searchset")
    return [entry["resource"] for entry in bundle.get("entry", [])]


class Trail:
    """Three patients (A and B in the doctor's care, C not), each with two Observations;
    the doctor reads and searches, is refused C, then breaks the glass for C."""

    def __init__(self, server, hygie_bin, tmp_path):
        self.server, self.hub, self.bin, self.tmp = server, server.fhir_url, hygie_bin, tmp_path
        feed = token(hygie_bin, tmp_path, server, subject="Device/feed", roles=("integration",),
                     scope="system/*.cruds")
        practitioner = {"resourceType": "Practitioner", "id": "p1",
                        "name": [{"prefix": ["Dr"], "given": ["Anne"], "family": "Martin"}]}
        put = one_shot("PUT", f"{self.hub}/Practitioner/p1", json=practitioner,
                       headers={**bearer(feed), "Content-Type": "application/fhir+json"})
        assert put.status_code in (200, 201), put.text
        self.ids, self.observations = {}, {}
        for name in "ABC":
            created = check_resource(post(f"{self.hub}/Patient", feed, patient(f"trail-{name}", family=name)),
                                     201, "Patient")
            self.ids[name] = created["id"]
            for value in (60.0, 70.0):
                obs = check_resource(post(f"{self.hub}/Observation", feed,
                                          observation(f"Patient/{created['id']}", value)), 201, "Observation")
                self.observations[name] = obs["id"]
        for name in "AB":
            admit(hygie_bin, tmp_path, server, self.ids[name])
        self.doctor = token(hygie_bin, tmp_path, server)
        self.dpo = token(hygie_bin, tmp_path, server, subject="Practitioner/dpo", roles=("dpo",),
                         scope="user/AuditEvent.rs user/Patient.rs")
        self.security = token(hygie_bin, tmp_path, server, subject="Practitioner/sec", roles=("security",),
                              scope="user/AuditEvent.rs")
        a, b, c = (self.ids[n] for n in "ABC")
        assert get(f"{self.hub}/Patient/{a}", self.doctor).status_code == 200
        # One search that answers both A's and B's Observations (need-to-know keeps C's out).
        both = check_bundle(get(f"{self.hub}/Observation", self.doctor, _count="50"), "searchset")
        subjects = {e["resource"]["subject"]["reference"] for e in both["entry"]}
        assert subjects == {f"Patient/{a}", f"Patient/{b}"}, subjects
        # Not in care: refused (a read of C's Observation, whose patient the trail names).
        assert get(f"{self.hub}/Observation/{self.observations['C']}", self.doctor).status_code == 403
        glass = one_shot("GET", f"{self.hub}/Observation", params={"subject": f"Patient/{c}"},
                         headers={**bearer(self.doctor), "X-Break-Glass-Reason": "arrived unconscious in the ER"})
        assert glass.status_code == 200, glass.text


@pytest.fixture(params=["sqlite", "postgres"])
def trail(request, start_hub, hygie_bin, tmp_path):
    return Trail(start_hub(request.param, no_auth=False), hygie_bin, tmp_path)


def test_the_dpo_finds_every_access_to_a_patient_each_naming_the_patients_it_reached(trail):
    a, b, c = (trail.ids[n] for n in "ABC")
    found = events(trail.server, trail.dpo, patient=a, _count="1000")
    assert found, "the accesses to A are found"
    for event in found:
        assert_valid_r4(event)
        assert a in patients_of(event), event
    # The search that answered two patients' data names both, and not the third.
    search = [e for e in events(trail.server, trail.dpo, patient=b, agent=DOCTOR, subtype="search-type")
              if e["outcome"] == "0"]
    assert len(search) == 1, search
    assert patients_of(search[0]) == {a, b}
    assert search[0]["agent"][0]["role"][0]["coding"][0]["code"] == "clinician"
    assert search[0]["agent"][0]["network"]["address"].startswith("127.")
    # Several patients are an OR; with the agent, an AND. (The DPO's own searches are
    # recorded under the patients they name: left out of the comparison.)
    def by_staff(**params):
        return {e["id"] for e in events(trail.server, trail.dpo, _count="1000", **params)
                if e["agent"][0]["who"]["display"] != "Practitioner/dpo"}
    assert by_staff(patient=f"{a},Patient/{b}") == by_staff(patient=a) | by_staff(patient=b)
    assert by_staff(patient=f"{a},{b}", agent=DOCTOR) == by_staff(patient=a, agent=DOCTOR) | by_staff(
        patient=b, agent=DOCTOR)
    assert events(trail.server, trail.dpo, patient=a, agent="Practitioner/nobody") == []


def test_searches_by_purpose_outcome_type_and_date(trail):
    c = trail.ids["C"]
    emergency = events(trail.server, trail.security, purpose="ETREAT", patient=c)
    kinds = {e["subtype"][0]["code"] for e in emergency}
    assert kinds == {"break-the-glass", "search-type"}, kinds
    for event in emergency:
        assert event["purposeOfEvent"][0]["text"] == "arrived unconscious in the ER"
    refused = events(trail.server, trail.security, outcome="4", agent=DOCTOR)
    assert refused and all(e["outcome"] == "4" for e in refused)
    assert any(c in patients_of(e) for e in refused), "the refused read of C names C"
    # A failed sign-in is a DICOM user authentication event.
    assert one_shot("GET", f"{trail.hub}/Patient", headers=bearer("not-a-token")).status_code == 401
    logins = events(trail.server, trail.security, type="http://dicom.nema.org/resources/ontology/DCM|110114")
    assert logins and all(e["subtype"][0]["code"] == "110122" and e["outcome"] == "4" for e in logins)
    everything = {e["id"] for e in events(trail.server, trail.security, _count="1000")}
    today = {e["id"] for e in events(trail.server, trail.security, date=f"ge{found_day(trail)}", _count="1000")}
    assert everything <= today  # later searches add their own events
    assert events(trail.server, trail.security, date="lt2000-01-01") == []
    assert events(trail.server, trail.security, date="ge2999") == []


def found_day(trail) -> str:
    newest = events(trail.server, trail.security, _count="1")[0]
    return newest["recorded"][:10]


def test_pages_go_newest_first_without_gap_or_repeat(trail, http: FhirSession):
    a = trail.ids["A"]
    whole = [e["id"] for e in events(trail.server, trail.dpo, patient=a, _count="1000")]
    assert len(whole) >= 4
    assert [int(i) for i in whole] == sorted((int(i) for i in whole), reverse=True)
    http.headers.update(bearer(trail.dpo))
    entries, pages = follow_pages(http, f"{trail.hub}/AuditEvent", "searchset", {"patient": a, "_count": "2"})
    # Each search is itself recorded under A, newer than what it answers: the pages, held
    # by their cursor, neither skip nor repeat what was there when the first was read.
    paged = [e["resource"]["id"] for e in entries]
    assert len(paged) == len(set(paged)) and pages >= 2
    assert [i for i in paged if int(i) <= int(whole[0])] == whole
    one = get(f"{trail.hub}/AuditEvent/{whole[0]}", trail.dpo)
    assert one.status_code == 200 and one.json()["id"] == whole[0]
    assert_valid_r4(one.json())
    assert_outcome(get(f"{trail.hub}/AuditEvent/999999999", trail.dpo), 404)


def test_only_the_dpo_and_security_read_the_trail_and_nobody_writes_it(trail, hygie_bin, tmp_path):
    a = trail.ids["A"]
    integration = token(hygie_bin, tmp_path, trail.server, subject="Device/x", roles=("integration",),
                        scope="system/*.cruds")
    own = token(hygie_bin, tmp_path, trail.server, subject=f"Patient/{a}", roles=("patient",),
                scope="patient/*.rs", patient_context=a)
    for tok in (trail.doctor, integration, own):
        assert_outcome(get(f"{trail.hub}/AuditEvent", tok, patient=a), 403)
        assert_outcome(get(f"{trail.hub}/AuditEvent/0", tok), 403)
    assert_outcome(one_shot("GET", f"{trail.hub}/AuditEvent"), 401)
    event = {"resourceType": "AuditEvent", "type": {"code": "rest"}, "recorded": "2026-01-01T00:00:00Z",
             "agent": [{"requestor": True}], "source": {"observer": {"display": "forger"}}}
    headers = {**bearer(integration), "Content-Type": "application/fhir+json"}
    for tok in (trail.dpo, integration):
        headers = {**bearer(tok), "Content-Type": "application/fhir+json"}
        assert_outcome(one_shot("POST", f"{trail.hub}/AuditEvent", json=event, headers=headers), 405)
        assert_outcome(one_shot("PUT", f"{trail.hub}/AuditEvent/0", json={**event, "id": "0"}, headers=headers), 405)
        assert_outcome(one_shot("DELETE", f"{trail.hub}/AuditEvent/0", headers=headers), 405)
        assert_outcome(one_shot("PATCH", f"{trail.hub}/AuditEvent/0", json=[],
                                headers={**bearer(tok), "Content-Type": "application/json-patch+json"}), 405)
    # Nor through a transaction.
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"resource": event, "request": {"method": "POST", "url": "AuditEvent"}}]}
    answer = one_shot("POST", trail.hub, json=bundle, headers={**bearer(integration),
                                                                 "Content-Type": "application/fhir+json"})
    assert answer.status_code >= 400, answer.text
    assert not [e for e in events(trail.server, trail.dpo, _count="1000")
                if e.get("source", {}).get("observer", {}).get("display") == "forger"]
    # Strict parameters.
    for bad in ({"name": "x"}, {"patient": "../x"}, {"_count": "100000"}, {"date": "yesterday"}):
        assert_outcome(get(f"{trail.hub}/AuditEvent", trail.dpo, **bad), 400)


def test_reading_the_trail_is_itself_audited(trail):
    a = trail.ids["A"]
    events(trail.server, trail.dpo, patient=a)
    reads = events(trail.server, trail.security, agent="Practitioner/dpo", subtype="search-type", patient=a)
    assert reads, "the DPO's search of A's trail is recorded, and found under A"
    assert any(x.get("what", {}).get("reference", "").startswith("AuditEvent/")
               for e in reads for x in e["entity"])


def test_a_patient_reads_who_accessed_their_record_and_nothing_of_others(trail, hygie_bin, tmp_path):
    a, b, c = (trail.ids[n] for n in "ABC")
    own = token(hygie_bin, tmp_path, trail.server, subject=f"Patient/{a}", roles=("patient",),
                scope="patient/*.rs", patient_context=a)
    response = get(f"{trail.hub}/Patient/{a}/$access-log", own)
    log = check_bundle(response, "collection")
    text = response.text
    for hidden in (b, c, '"network"', '"address"', '"query"', "Observation/"):
        assert hidden not in text, f"{hidden} leaked into A's access log"
    lines = [entry["resource"] for entry in log["entry"]]
    by_doctor = [e for e in lines if e["agent"][0]["who"]["display"] == "Dr Anne Martin"]
    assert {e["subtype"][0]["code"] for e in by_doctor} >= {"read", "search-type"}
    assert all(e["agent"][0]["role"][0]["coding"][0]["code"] == "clinician" for e in by_doctor)
    searched = [e for e in by_doctor if e["subtype"][0]["code"] == "search-type"]
    assert any(x["what"].get("display") == "Observation" for x in searched[0]["entity"])
    # Another patient's log, and the clinician: refused. The DPO: granted.
    assert_outcome(get(f"{trail.hub}/Patient/{b}/$access-log", own), 403)
    assert_outcome(get(f"{trail.hub}/Patient/{a}/$access-log", trail.doctor), 403)
    c_log = check_bundle(get(f"{trail.hub}/Patient/{c}/$access-log", trail.dpo), "collection")
    emergencies = [e["resource"] for e in c_log["entry"]
                   if e["resource"].get("purposeOfEvent", [{}])[0].get("coding", [{}])[0].get("code") == "ETREAT"]
    assert emergencies and emergencies[0]["purposeOfEvent"][0]["text"] == "arrived unconscious in the ER"
    # The patient's own reading is in the trail.
    assert events(trail.server, trail.dpo, patient=a, agent=f"Patient/{a}")
    assert_outcome(get(f"{trail.hub}/Patient/{a}/$access-log", own, agent="x"), 400)


def test_the_report_command_prints_the_same_accesses_for_a_letter(trail, hygie_bin, tmp_path):
    c = trail.ids["C"]
    store = _store_args(trail.server)
    done = run_cli(hygie_bin, ["audit", "report", *store, "--patient", c, "--format", "json"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["patient"] == f"Patient/{c}"
    logged = check_bundle(get(f"{trail.hub}/Patient/{c}/$access-log", trail.dpo, _count="1000"), "collection")
    logged_ids = [int(e["resource"]["id"]) for e in logged["entry"]]
    report_ids = [line["id"] for line in report["accesses"]]
    # The report came first; the DPO's read since is newer and is not in it.
    assert report_ids == [i for i in logged_ids if i <= report_ids[0]]
    assert any(line["emergency"] and line["who"] == "Dr Anne Martin" for line in report["accesses"])
    done = run_cli(hygie_bin, ["audit", "report", *store, "--patient", f"Patient/{c}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"# Accesses to the health record of Patient/{c}" in done.stdout
    assert "| Dr Anne Martin | clinician | break-the-glass |" in done.stdout
    assert trail.ids["A"] not in done.stdout
    done = run_cli(hygie_bin, ["audit", "report", *store, "--patient", "../etc"], cwd=tmp_path)
    assert done.returncode != 0 and "invalid resource id" in done.stderr
