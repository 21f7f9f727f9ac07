"""HL7 v2 over MLLP (issue 7): a hospital's systems feed the hub, and nothing acknowledged
is lost.

Messages are built with hl7apy and sent with the `hl7` library's MLLP client (both
independent of Hygie), except the malformed ones, which no library would send. What the
hub stored is read back through FHIR and validated as R4 with fhir.resources.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import hl7
import hl7.client
import pytest

from conftest import BACKENDS
from hl7_support import (
    MRN_SYSTEM,
    Person,
    RawMllp,
    Result,
    Visit,
    a_day,
    ack_code,
    adt,
    err_of,
    hl7_config,
    oru,
    send_all,
    start_mllp_hub,
)
from hygie_e2e import FhirSession, assert_valid_r4, fhir_json

LOCAL = "urn:hygie:hl7v2:HOSP"


def search(http: FhirSession, server, query: str) -> list[dict]:
    bundle = fhir_json(http.get(f"{server.fhir_url}/{query}", params={"_count": 1000}))
    return [entry["resource"] for entry in bundle.get("entry", [])]


def one(http, server, query: str) -> dict:
    found = search(http, server, query)
    assert len(found) == 1, f"{query}: {len(found)} resources: {found}"
    assert_valid_r4(found[0])
    return found[0]


def patient_by_mrn(http, server, mrn: str) -> dict:
    return one(http, server, f"Patient?identifier={MRN_SYSTEM}|{mrn}")


def encounter_by_visit(http, server, visit: str) -> dict:
    return one(http, server, f"Encounter?identifier={LOCAL}:visit|{visit}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_event_ends_in_the_fhir_a_clinician_expects(start_hub, backend, tmp_path, http):
    server, address = start_mllp_hub(start_hub, backend, tmp_path)
    claire = Person("1001", "Martin", "Claire", birth="19620315", sex="F")
    admit = Visit("V1", ward="CARDIO", room="101", bed="A", attending=("1234", "House", "Gregory"),
                  admitted="202611300815")
    transfer = Visit("V1", ward="ICU", room="5", bed="1", attending=("1234", "House", "Gregory"),
                     admitted="202611300815", prior=("CARDIO", "101", "A"))
    discharge = Visit("V1", ward="ICU", room="5", bed="1", attending=("1234", "House", "Gregory"),
                      admitted="202611300815", discharged="202611301830")
    renamed = Person("1001", "Martin-Durand", "Claire", birth="19620315", sex="F")
    results = [Result("718-7", "Hemoglobin", "13.2", "g/dL", range="12-16"),
               Result("6690-2", "Leukocytes", "12.5", "10*3/uL", flag="H", range="4-10")]
    acks = send_all(address, [
        adt("A01", "M1", claire, admit),
        adt("A02", "M2", claire, transfer),
        adt("A08", "M3", renamed, transfer),
        oru("M4", claire, "ORD1", ("58410-2", "CBC panel"), results),
        adt("A03", "M5", renamed, discharge),
        adt("A04", "M6", renamed, Visit("V2", ward="CONSULT", room="3", bed="", patient_class="O",
                                        admitted="202612011000")),
        adt("A11", "M7", renamed, Visit("V2", ward="CONSULT", room="3", bed="", patient_class="O",
                                        admitted="202612011000")),
        adt("A31", "M8", Person("1001", "Martin-Durand", "Claire", phone="+33612345678")),
    ])
    assert [ack_code(a) for a in acks] == ["AA"] * 8, [str(a) for a in acks]
    for sent, ack in zip(["M1", "M2", "M3", "M4", "M5", "M6", "M7", "M8"], acks):
        assert str(ack.segment("MSA")[2]) == sent
        assert str(ack.segment("MSH")[9][0][0]) == "ACK"

    patient = patient_by_mrn(http, server, "1001")
    # Each ADT repeats the PID: only the A08 (new name) and the A31 (a phone) changed it.
    patient_history = fhir_json(http.get(f"{server.fhir_url}/Patient/{patient['id']}/_history"))
    assert len(patient_history["entry"]) == 3
    assert patient["name"][0]["family"] == "Martin-Durand"
    assert patient["birthDate"] == "1962-03-15" and patient["gender"] == "female"
    assert {"system": "phone", "value": "+33612345678", "use": "home"} in patient["telecom"]

    stay = encounter_by_visit(http, server, "V1")
    assert stay["subject"]["reference"] == f"Patient/{patient['id']}"
    assert stay["status"] == "finished" and stay["class"]["code"] == "IMP"
    # Paris is UTC+1 in November: times without an offset are read in hl7.time_zone.
    assert stay["period"] == {"start": "2026-11-30T08:15:00+01:00", "end": "2026-11-30T18:30:00+01:00"}
    attending = [p for p in stay["participant"] if p["type"][0]["coding"][0]["code"] == "ATND"]
    assert len(attending) == 1
    doctor = one(http, server, f"Practitioner?identifier={LOCAL}:practitioner|1234")
    assert attending[0]["individual"]["reference"] == f"Practitioner/{doctor['id']}"
    assert doctor["name"][0]["family"] == "House"
    # Each message created at most one Practitioner and one Location per identifier.
    assert len(search(http, server, "Practitioner")) == 1
    wards = {loc["name"]: loc["id"] for loc in search(http, server, "Location")}
    assert set(wards) == {"CARDIO", "ICU", "CONSULT"}
    # The A03 repeats the current location; the A02 had recorded the ward left. History
    # keeps every step: the transfer version has CARDIO completed and ICU active.
    history = fhir_json(http.get(f"{server.fhir_url}/Encounter/{stay['id']}/_history"))
    versions = {int(e["resource"]["meta"]["versionId"]): e["resource"] for e in history["entry"]}
    # A01, A02, A08 (it lists the current ward only, not the one the A02 left), A03.
    assert len(versions) == 4, sorted(versions)
    transferred = versions[2]
    assert [(l["location"]["reference"], l["status"]) for l in transferred["location"]] == [
        (f"Location/{wards['CARDIO']}", "completed"), (f"Location/{wards['ICU']}", "active")]
    assert transferred["location"][1]["location"]["display"] == "ICU, room 5, bed 1"

    registration = encounter_by_visit(http, server, "V2")
    assert registration["status"] == "cancelled" and registration["class"]["code"] == "AMB"

    report = one(http, server, f"DiagnosticReport?identifier={LOCAL}:order|ORD1")
    assert report["status"] == "final" and report["code"]["coding"][0]["code"] == "58410-2"
    assert report["subject"]["reference"] == f"Patient/{patient['id']}"
    observations = {o["id"]: o for o in search(http, server, f"Observation?subject=Patient/{patient['id']}")}
    assert sorted(r["reference"] for r in report["result"]) == sorted(f"Observation/{i}" for i in observations)
    by_code = {o["code"]["coding"][0]["code"]: o for o in observations.values()}
    assert by_code["718-7"]["valueQuantity"] == {"value": 13.2, "unit": "g/dL",
                                                "system": "http://unitsofmeasure.org", "code": "g/dL"}
    assert by_code["6690-2"]["interpretation"][0]["coding"][0]["code"] == "H"
    assert by_code["6690-2"]["referenceRange"][0]["high"]["value"] == 10
    for resource in observations.values():
        assert_valid_r4(resource)

    # The sender is who the audit trail names, with its address, for each message.
    events = search(http, server, "AuditEvent?subtype=transaction")
    senders = [e for e in events if any(a.get("who", {}).get("display") == "hl7v2:ADT@HOSP" or
                                        a.get("who", {}).get("identifier", {}).get("value") == "hl7v2:ADT@HOSP"
                                        for a in e.get("agent", []))]
    assert len(senders) >= 7, [e.get("agent") for e in events][:3]
    assert any("127.0.0.1" in str(e.get("agent")) for e in senders)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_merge_moves_the_prior_patients_record(start_hub, backend, tmp_path, http):
    server, address = start_mllp_hub(start_hub, backend, tmp_path)
    survivor = Person("2001", "Petit", "Anne")
    duplicate = Person("2002", "Petit", "Anne")  # registered twice by mistake
    acks = send_all(address, [
        adt("A01", "G1", survivor, Visit("V21")),
        adt("A28", "G2", duplicate),
        oru("G3", duplicate, "ORD21", ("2345-7", "Glucose"), [Result("2345-7", "Glucose", "5.4", "mmol/L")]),
        adt("A40", "G4", survivor, prior_mrn="2002"),
    ])
    assert [ack_code(a) for a in acks] == ["AA"] * 4, [str(a) for a in acks]
    kept, prior = patient_by_mrn(http, server, "2001"), patient_by_mrn(http, server, "2002")
    assert prior["active"] is False
    assert prior["link"] == [{"other": {"reference": f"Patient/{kept['id']}"}, "type": "replaced-by"}]
    assert {"other": {"reference": f"Patient/{prior['id']}"}, "type": "replaces"} in kept["link"]
    # The result and its report moved with the record; nothing points at the prior one.
    moved = search(http, server, f"Observation?subject=Patient/{kept['id']}")
    assert len(moved) == 1 and moved[0]["valueQuantity"]["value"] == 5.4
    assert search(http, server, f"Observation?subject=Patient/{prior['id']}") == []
    report = one(http, server, f"DiagnosticReport?identifier={LOCAL}:order|ORD21")
    assert report["subject"]["reference"] == f"Patient/{kept['id']}"
    # A merge of an unknown prior patient is an AE 204 (unknown key) and writes nothing.
    before = len(search(http, server, "Patient"))
    [nak] = send_all(address, [adt("A40", "G5", survivor, prior_mrn="9999")])
    assert ack_code(nak) == "AE" and err_of(nak)[0] == "204", str(nak)
    assert len(search(http, server, "Patient")) == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_resend_gets_the_same_ack_and_writes_nothing_twice(start_hub, backend, tmp_path, http):
    server, address = start_mllp_hub(start_hub, backend, tmp_path)
    person = Person("3001", "Robert", "Jules")
    message = adt("A01", "R1", person, Visit("V31"))
    raw = RawMllp(address)
    first = raw.send(message)
    second = raw.send(message)
    assert first == second, "the resend is answered with the very same acknowledgement"
    assert ack_code(hl7.parse(first.decode())) == "AA"
    # Another connection, later: still the same answer.
    again = RawMllp(address)
    assert again.send(message) == first
    assert len(search(http, server, f"Patient?identifier={MRN_SYSTEM}|3001")) == 1
    assert len(search(http, server, f"Encounter?identifier={LOCAL}:visit|V31")) == 1
    versions = fhir_json(http.get(f"{server.fhir_url}/Encounter/"
                                  f"{encounter_by_visit(http, server, 'V31')['id']}/_history"))
    assert len(versions["entry"]) == 1
    # The same control id for another message is the sender's bug: AE 205, nothing written.
    other = adt("A01", "R1", Person("3002", "Robert", "Lina"), Visit("V32"))
    nak = hl7.parse(again.send(other).decode())
    assert ack_code(nak) == "AE" and err_of(nak)[0] == "205", str(nak)
    assert search(http, server, f"Patient?identifier={MRN_SYSTEM}|3002") == []
    raw.close()
    again.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_results_are_linked_to_the_stay_they_were_taken_in(start_hub, backend, tmp_path, http):
    """An ORU's PV1 links its report and observations to the Encounter of that visit; a
    result that comes before its admission creates the stay (status unknown), which the
    admission then completes, the results still pointing at it."""
    server, address = start_mllp_hub(start_hub, backend, tmp_path)
    person = Person("3201", "Lien", "Marie")
    glucose = [Result("2345-7", "Glucose", "5.4", "mmol/L")]
    acks = send_all(address, [
        adt("A01", "L1", person, Visit("V51")),
        oru("L2", person, "ORD51", ("2345-7", "Glucose"), glucose, visit=Visit("V51")),
        # The lab is faster than the admission office: its stay is not known yet.
        oru("L3", person, "ORD52", ("2345-7", "Glucose"), glucose, visit=Visit("V52", patient_class="E")),
    ])
    assert [ack_code(a) for a in acks] == ["AA"] * 3, [str(a) for a in acks]
    admitted = encounter_by_visit(http, server, "V51")
    report = one(http, server, f"DiagnosticReport?identifier={LOCAL}:order|ORD51")
    assert report["encounter"]["reference"] == f"Encounter/{admitted['id']}"
    for reference in report["result"]:
        observation = fhir_json(http.get(f"{server.fhir_url}/{reference['reference']}"))
        assert observation["encounter"]["reference"] == f"Encounter/{admitted['id']}"
    assert admitted["status"] == "in-progress", "a result does not overwrite the admission"
    early = encounter_by_visit(http, server, "V52")
    assert (early["status"], early["class"]["code"]) == ("unknown", "EMER")
    assert early["subject"]["reference"] == admitted["subject"]["reference"]
    late = one(http, server, f"DiagnosticReport?identifier={LOCAL}:order|ORD52")
    assert late["encounter"]["reference"] == f"Encounter/{early['id']}"
    # The admission arrives: the same Encounter, now complete.
    assert ack_code(send_all(address, [adt("A01", "L4", person, Visit("V52", patient_class="E"))])[0]) == "AA"
    completed = encounter_by_visit(http, server, "V52")
    assert completed["id"] == early["id"] and completed["status"] == "in-progress"
    assert completed["participant"], completed
    # A PV1 whose class is not one of table 0004: AE at PV1-2, nothing written.
    nak = send_all(address, [oru("L5", person, "ORD53", ("2345-7", "Glucose"), glucose,
                                 visit=Visit("V53", patient_class="Z"))])[0]
    assert ack_code(nak) == "AE" and err_of(nak)[0] == "103" and err_of(nak)[1] == "PV1^3^2", str(nak)
    assert search(http, server, f"DiagnosticReport?identifier={LOCAL}:order|ORD53") == []
    assert search(http, server, f"Encounter?identifier={LOCAL}:visit|V53") == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_message_past_message_timeout_gets_ar_and_its_resend_the_outcome(start_hub, backend, tmp_path, http):
    """The store is held by another session (a DBA's lock) past `message_timeout_seconds`:
    the sender gets AR "resend" instead of waiting forever. The unit is still queued and
    commits once the lock goes; the resend then finds it and gets AA, with no duplicate."""
    server, address = start_mllp_hub(start_hub, backend, tmp_path,
                                     config=hl7_config(extra="message_timeout_seconds = 1"))
    person = Person("3101", "Lent", "Paul")
    message = adt("A01", "T1", person, Visit("V41"))
    hold_seconds = 5
    if backend == "sqlite":
        import sqlite3
        blocker = sqlite3.connect(server.data_dir / "hygie.db", isolation_level=None, timeout=10,
                                  check_same_thread=False)
        blocker.execute("BEGIN IMMEDIATE")
        release = threading.Timer(hold_seconds, blocker.rollback)
    else:
        blocker = subprocess.Popen(
            ["psql", server.database_url, "-q", "-c",
             f"BEGIN; LOCK TABLE inbound_message IN ACCESS EXCLUSIVE MODE; "
             f"SELECT pg_sleep({hold_seconds}); COMMIT;"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while subprocess.run(
                ["psql", server.database_url, "-tAq", "-c",
                 "SELECT count(*) FROM pg_locks WHERE relation = 'inbound_message'::regclass "
                 "AND mode = 'AccessExclusiveLock' AND granted"],
                capture_output=True, text=True, stdin=subprocess.DEVNULL).stdout.strip() != "1":
            assert time.monotonic() < deadline and blocker.poll() is None, "the lock was never taken"
            time.sleep(0.05)
        release = threading.Timer(0, lambda: None)
    release.start()
    try:
        started = time.monotonic()
        nak = hl7.parse(RawMllp(address).send(message).decode())
        assert ack_code(nak) == "AR", str(nak)
        code, _, text = err_of(nak)
        assert code == "207" and "message_timeout" in text and "resend" in text, str(nak)
        assert time.monotonic() - started >= 1
    finally:
        release.join()
        if backend == "postgres":
            assert blocker.wait(timeout=30) == 0, blocker.stderr.read()
    again = hl7.parse(RawMllp(address).send(message).decode())
    assert ack_code(again) == "AA", str(again)
    assert len(search(http, server, f"Patient?identifier={MRN_SYSTEM}|3101")) == 1
    assert len(search(http, server, f"Encounter?identifier={LOCAL}:visit|V41")) == 1


def test_bad_input_gets_the_right_nak_and_leaves_nothing(start_hub, tmp_path, http):
    config = hl7_config(extra="max_message_bytes = 4096")
    server, address = start_mllp_hub(start_hub, "sqlite", tmp_path, config=config)
    good = Person("4001", "Thomas", "Alice")
    raw = RawMllp(address)

    def nak(message: str | bytes) -> tuple[str, str, str, str]:
        ack = hl7.parse(raw.send(message).decode())
        if ack_code(ack) == "AA":
            return ("AA", "", "", str(ack))
        return (ack_code(ack), *err_of(ack))

    cases = {
        "unknown sender": (adt("A01", "B1", good, Visit("VB1"), sender=("EVIL", "ELSEWHERE")), "AR", "207", "MSH^1^3"),
        "unknown event": (adt("A01", "B2", good, Visit("VB1")).replace("ADT^A01^ADT_A01", "ADT^A05^ADT_A05"),
                          "AR", "201", "MSH^1^9"),
        "unknown type": (adt("A01", "B3", good, Visit("VB1")).replace("ADT^A01^ADT_A01", "SIU^S12^SIU_S12"),
                         "AR", "200", "MSH^1^9"),
        "training message": (adt("A01", "B4", good, Visit("VB1"), processing="T"), "AR", "202", "MSH^1^11"),
        "version 2.2": (adt("A01", "B5", good, Visit("VB1")).replace("|P|2.5", "|P|2.2", 1), "AR", "203", "MSH^1^12"),
        "invalid birth date": (adt("A01", "B6", Person("4002", "X", "Y", birth="19621399"), Visit("VB2")),
                               "AE", "102", "PID^3^7"),
        "unknown authority": (adt("A01", "B7", good, Visit("VB3")).replace("^^^HOSP^MR", "^^^NOWHERE^MR"),
                              "AE", "103", "PID^3^3"),
        # An escape never closed (hl7apy would escape the backslash: it is put in after).
        "bad escape": (adt("A01", "B8", Person("4003", "BADESC", "Y"), Visit("VB4")).replace("BADESC", "Bad\\esc"),
                       "AE", "102", "PID^3^5"),
        "no PV1 for an admission": (adt("A01", "B9", good, None), "AE", "100", "PV1"),
        "bad patient class": (adt("A01", "B10", good, Visit("VB5", patient_class="Q")), "AE", "103", "PV1^4^2"),
    }
    for name, (message, code, error, location) in cases.items():
        got = nak(message)
        assert got[0] == code and got[1] == error, f"{name}: {got}"
        assert got[2].startswith(location), f"{name}: ERR-2 {got[2]!r}, expected {location}"
        assert got[3], f"{name}: ERR-8 says why"
    # Missing MSH and wrong delimiters: rejected, answered though the header is unreadable.
    for payload in [b"PID|1||4001^^^HOSP^MR", b"MSH|^~\\&", b"MSH|^^^^|ADT|HOSP"]:
        ack = hl7.parse(raw.send(payload).decode())
        assert ack_code(ack) == "AR", (payload, str(ack))
    # Nothing of any refused message was written.
    assert search(http, server, "Patient") == []
    assert search(http, server, "Encounter") == []

    # Oversize: AE 207 naming the message, then the connection closes (its stream is lost).
    big = adt("A01", "B20", good, Visit("VB6")) + "\rNTE|1||" + "x" * 8000
    ack = hl7.parse(raw.send(big).decode())
    assert ack_code(ack) == "AE" and err_of(ack)[0] == "207"
    assert str(ack.segment("MSA")[2]) == "B20"
    assert raw.closed_by_peer()
    # Garbage between frames: the connection is closed, no answer; others keep being served.
    garbage = RawMllp(address)
    bystander = RawMllp(address)
    garbage.send_bytes(b"GET / HTTP/1.1\r\n\r\n")
    assert garbage.closed_by_peer()
    # A truncated frame (the sender dies mid-message): dropped, never acknowledged.
    truncated = RawMllp(address)
    truncated.send_bytes(b"\x0b" + adt("A01", "B21", Person("4005", "Trunc", "A"), Visit("VB7")).encode()[:200])
    truncated.close()
    ok = hl7.parse(bystander.send(adt("A01", "B22", good, Visit("VB8"))).decode())
    assert ack_code(ok) == "AA"
    assert len(search(http, server, "Patient")) == 1
    assert search(http, server, f"Patient?identifier={MRN_SYSTEM}|4005") == []
    # Each refusal is in the audit trail, with the sender it claimed.
    refused = [e for e in search(http, server, "AuditEvent?outcome=4") if "hl7v2:" in str(e.get("agent"))]
    assert len(refused) >= len(cases), len(refused)
    assert any("hl7v2:EVIL@ELSEWHERE" in str(e.get("agent")) for e in refused)


def test_connection_limits(start_hub, tmp_path):
    config = hl7_config(extra="max_connections = 2\nidle_timeout_seconds = 1")
    server, address = start_mllp_hub(start_hub, "sqlite", tmp_path, config=config)
    first, second = RawMllp(address), RawMllp(address)
    time.sleep(0.2)
    third = RawMllp(address)
    assert third.closed_by_peer(wait=3), "a third connection over max_connections is closed"
    # Idle connections are closed after idle_timeout_seconds, freeing their slots.
    assert first.closed_by_peer(wait=5) and second.closed_by_peer(wait=5)
    fourth = RawMllp(address)
    ack = hl7.parse(fourth.send(adt("A28", "L1", Person("5001", "Limit", "A"))).decode())
    assert ack_code(ack) == "AA"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_day_replayed_by_an_independent_client(start_hub, backend, tmp_path, http):
    """A day of admissions, transfers, results and discharges, each sender on its own
    connection as in a hospital, ends with what a clinician expects, every message AA."""
    day = a_day(patients=60, seed=11)
    server, address = start_mllp_hub(start_hub, backend, tmp_path)
    feeds = {"ADT": [], "LAB": []}
    for message in day.messages:
        feeds["LAB" if "|LAB|HOSP|" in message[:40] else "ADT"].append(message)
    outcomes: dict[str, list] = {}

    def feed(name):
        outcomes[name] = send_all(address, feeds[name])

    threads = [threading.Thread(target=feed, args=(name,)) for name in feeds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    codes = [ack_code(a) for acks in outcomes.values() for a in acks]
    assert codes == ["AA"] * len(day.messages), [c for c in codes if c != "AA"]

    patients = {p["identifier"][0]["value"]: p for p in search(http, server, "Patient")}
    assert set(patients) == set(day.patients)
    for mrn, person in day.patients.items():
        assert patients[mrn]["name"][0]["family"] == person.family
    encounters = {e["identifier"][0]["value"]: e for e in search(http, server, "Encounter")}
    assert set(encounters) == set(day.visits)
    wards = {loc["id"]: loc["name"] for loc in search(http, server, "Location")}
    doctors = {p["id"]: p["identifier"][0]["value"] for p in search(http, server, "Practitioner")}
    for number, (mrn, status, ward, attending) in day.visits.items():
        encounter = encounters[number]
        assert encounter["status"] == status, number
        assert encounter["subject"]["reference"] == f"Patient/{patients[mrn]['id']}"
        current = [l for l in encounter["location"] if l["status"] in ("active", "completed")][-1]
        assert wards[current["location"]["reference"].split("/")[1]] == ward
        assert doctors[encounter["participant"][0]["individual"]["reference"].split("/")[1]] == attending
    reports = search(http, server, "DiagnosticReport")
    assert len(reports) == len(day.orders)
    assert len(search(http, server, "Observation")) == sum(n for _, n in day.orders.values())
    for report in reports[:10]:
        assert_valid_r4(report)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kill_9_loses_no_acknowledged_message(start_hub, backend, tmp_path, http):
    """Four senders stream registrations; the hub is killed with SIGKILL mid-stream. Every
    message acknowledged AA before the kill is in the store after a restart, and resending
    everything afterwards writes nothing twice."""
    server, address = start_mllp_hub(start_hub, backend, tmp_path)
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def sender(lane: int):
        try:
            with hl7.client.MLLPClient(*address) as client:
                for n in range(100_000):
                    if stop.is_set():
                        return
                    visit = f"K{lane}-{n}"
                    message = adt("A04", visit, Person(f"K{lane}{n:06d}", "Kill", "Nine"),
                                  Visit(visit, patient_class="O", attending=None))
                    if ack_code(hl7.parse(client.send_message(message))) == "AA":
                        with lock:
                            acknowledged.append(visit)
        except Exception:  # the hub died: this sender stops
            return

    threads = [threading.Thread(target=sender, args=(lane,)) for lane in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 150 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    server.stopped = True
    assert len(acknowledged) >= 150, f"only {len(acknowledged)} acknowledged before the kill"

    config = tmp_path / f"hygie-{backend}.toml"
    if backend == "sqlite":
        again = start_hub("sqlite", data_dir=server.data_dir, args=["--config", str(config), "--mllp-listen", "127.0.0.1:0"])
    else:
        again = start_hub("postgres", database_url=server.database_url,
                          args=["--config", str(config), "--mllp-listen", "127.0.0.1:0"])
    stored = {e["identifier"][0]["value"] for e in search(http, again, "Encounter")}
    missing = [v for v in acknowledged if v not in stored]
    assert missing == [], f"{len(missing)} acknowledged messages lost: {missing[:10]}"
    # A sender resends what it was not sure of: answered AA, stored once.
    from hl7_support import mllp_address
    resend = [adt("A04", v, Person(f"K{v[1]}{int(v.split('-')[1]):06d}", "Kill", "Nine"),
                  Visit(v, patient_class="O", attending=None)) for v in acknowledged[-20:]]
    assert [ack_code(a) for a in send_all(mllp_address(again), resend)] == ["AA"] * 20
    assert len(search(http, again, "Encounter")) == len(stored)
    # The audit log survived the kill too.
    verify = subprocess.run(
        [str(again.binary), "audit", "verify", *(["--data-dir", str(again.data_dir)] if backend == "sqlite"
                                                   else ["--database", again.database_url])],
        capture_output=True, text=True, timeout=120, cwd=again.workdir)
    assert verify.returncode == 0, verify.stderr + verify.stdout


def test_hygie_hl7_send(start_hub, tmp_path, hygie_bin):
    server, (host, port) = start_mllp_hub(start_hub, "sqlite", tmp_path)
    person = Person("6001", "Send", "Cli")
    good = tmp_path / "good.hl7"
    good.write_text("\n".join([adt("A01", "S1", person, Visit("VS1")).replace("\r", "\n"),
                               adt("A03", "S2", person, Visit("VS1", discharged="202611302000")).replace("\r", "\n")]))
    run = subprocess.run([str(hygie_bin), "hl7", "send", str(good), "--to", f"{host}:{port}"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["S1", "AA", "S2", "AA"]
    assert "2 of 2 messages acknowledged, 0 not accepted" in run.stderr
    bad = tmp_path / "bad.hl7"
    bad.write_text(adt("A01", "S3", person, Visit("VS2")).replace("^^^HOSP^MR", "^^^NOWHERE^MR"))
    run = subprocess.run([str(hygie_bin), "hl7", "send", str(bad), "--to", f"{host}:{port}"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "S3\tAE ERR 103 at PID^3^3" in run.stdout, run.stdout + run.stderr
    run = subprocess.run([str(hygie_bin), "hl7", "send", str(tmp_path / "missing.hl7"), "--to", f"{host}:{port}"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "cannot read" in run.stderr
    run = subprocess.run([str(hygie_bin), "hl7", "send", str(good), "--to", "127.0.0.1:1"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "cannot connect" in run.stderr


def test_plain_mllp_is_refused_on_a_public_address(hygie_bin, tmp_path):
    config = tmp_path / "hygie.toml"
    config.write_text(hl7_config())
    run = subprocess.run([str(hygie_bin), "serve", "--data-dir", str(tmp_path / "data"), "--config", str(config),
                          "--listen", "127.0.0.1:0", "--no-auth", "--mllp-listen", "0.0.0.0:0"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "plain MLLP on 0.0.0.0" in run.stderr, run.stderr


def _pki(tmp_path: Path):
    """A CA, the listener's certificate for 127.0.0.1, and two client certificates."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hospital test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    fingerprints = {}

    def issue(name: str, usage, san=None):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(hours=1))
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        (tmp_path / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (tmp_path / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        fingerprints[name] = cert.fingerprint(hashes.SHA256()).hex()

    issue("listener", ExtendedKeyUsageOID.SERVER_AUTH, [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    issue("adt-system", ExtendedKeyUsageOID.CLIENT_AUTH)
    issue("other-system", ExtendedKeyUsageOID.CLIENT_AUTH)
    return fingerprints


def test_mllp_over_tls_binds_senders_to_their_certificates(start_hub, tmp_path, hygie_bin, http):
    import ssl

    pins = _pki(tmp_path)
    config = hl7_config(extra=(f'tls_cert = "{tmp_path}/listener.pem"\ntls_key = "{tmp_path}/listener.key"\n'
                               f'client_ca = "{tmp_path}/ca.pem"'))
    # ADT is bound to its certificate; LAB to none (any certificate of the CA).
    config = config.replace('application = "ADT"\nfacility = "HOSP"',
                            f'application = "ADT"\nfacility = "HOSP"\ncertificate_sha256 = ["{pins["adt-system"]}"]')
    server, (host, port) = start_mllp_hub(start_hub, "sqlite", tmp_path, config=config)
    assert "tls=true" in server.log_text()

    # An independent TLS client (Python's ssl) with the ADT system's certificate.
    context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    context.load_cert_chain(tmp_path / "adt-system.pem", tmp_path / "adt-system.key")
    import socket
    with socket.create_connection((host, port), timeout=15) as plain:
        with context.wrap_socket(plain, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"\x0b" + adt("A01", "T1", Person("7001", "Tls", "Ok"), Visit("VT1")).encode() + b"\x1c\x0d")
            answer = b""
            while not answer.endswith(b"\x1c\x0d"):
                answer += tls.recv(65536)
    assert ack_code(hl7.parse(answer.strip(b"\x0b\x1c\x0d").decode())) == "AA"

    def send(message: str, name: str | None):
        path = tmp_path / "m.hl7"
        path.write_text(message)
        args = [str(hygie_bin), "hl7", "send", str(path), "--to", f"{host}:{port}", "--tls-ca", str(tmp_path / "ca.pem")]
        if name:
            args += ["--tls-cert", str(tmp_path / f"{name}.pem"), "--tls-key", str(tmp_path / f"{name}.key")]
        return subprocess.run(args, capture_output=True, text=True, timeout=60)

    # ADT's messages on another system's certificate: AR, nothing written.
    run = send(adt("A01", "T2", Person("7002", "Tls", "Wrong"), Visit("VT2")), "other-system")
    assert run.returncode == 1 and "T2\tAR" in run.stdout and "client certificate" in run.stdout, run.stdout
    # LAB is not bound: any certificate the CA signed will do.
    run = send(adt("A28", "T3", Person("7003", "Tls", "Lab"), sender=("LAB", "HOSP")), "other-system")
    assert run.returncode == 0 and "T3\tAA" in run.stdout, run.stdout + run.stderr
    # No client certificate at all: the handshake fails.
    run = send(adt("A28", "T4", Person("7004", "Tls", "None"), sender=("LAB", "HOSP")), None)
    assert run.returncode != 0 and "AA" not in run.stdout
    # Plain MLLP on the TLS port gets nothing.
    raw = RawMllp((host, port), timeout=5)
    raw.send_bytes(b"\x0b" + adt("A28", "T5", Person("7005", "Plain", "X"), sender=("LAB", "HOSP")).encode() + b"\x1c\x0d")
    received = b""
    raw.sock.settimeout(5)
    try:
        while chunk := raw.sock.recv(65536):
            received += chunk
    except (ConnectionResetError, OSError):
        pass
    assert b"MSA" not in received, received  # at most a TLS alert, then the connection ends
    found = {p["identifier"][0]["value"] for p in search(http, server, "Patient")}
    assert found == {"7001", "7003"}


def test_an_admission_opens_the_stay_to_its_attending_doctor(start_hub, tmp_path, hygie_bin):
    """Need-to-know from HL7: the attending doctor PV1-7 of an A01 may read the stay; a
    doctor the message did not name may not."""
    from e2e_support import one_shot
    from test_auth import bearer, token

    server, address = start_mllp_hub(start_hub, "sqlite", tmp_path, no_auth=False)
    [ack] = send_all(address, [adt("A01", "N1", Person("8001", "Care", "Ful"),
                                   Visit("VN1", attending=("555", "Lambert", "Rose")))])
    assert ack_code(ack) == "AA"
    feed = token(hygie_bin, tmp_path, server, subject="Device/feed", roles=("integration",), scope="system/*.rs")

    def read(url, credential):
        return one_shot("GET", url, headers=bearer(credential))

    doctors = read(f"{server.fhir_url}/Practitioner?identifier={LOCAL}:practitioner|555", feed).json()
    rose = doctors["entry"][0]["resource"]["id"]
    stays = read(f"{server.fhir_url}/Encounter?identifier={LOCAL}:visit|VN1", feed).json()
    stay = stays["entry"][0]["resource"]["id"]
    attending = token(hygie_bin, tmp_path, server, subject=f"Practitioner/{rose}", roles=("clinician",))
    stranger = token(hygie_bin, tmp_path, server, subject="Practitioner/someone-else", roles=("clinician",))
    assert read(f"{server.fhir_url}/Encounter/{stay}", attending).status_code == 200
    assert read(f"{server.fhir_url}/Encounter/{stay}", stranger).status_code == 403
