"""HL7 v2 test support: messages built with hl7apy (an independent implementation), a raw
MLLP client for the malformed cases, and a hub started with an MLLP listener.

The independent client for well-formed traffic is the `hl7` library's MLLPClient; the raw
client below exists only to send what no library would (garbage, broken frames).
"""

from __future__ import annotations

import random
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import hl7
import hl7.client
from hl7apy.core import Message

SB, EB, CR = b"\x0b", b"\x1c", b"\x0d"
MRN_SYSTEM = "urn:oid:1.2.250.1.71.4.2.7.999"
SENDERS = [("ADT", "HOSP"), ("LAB", "HOSP")]


def hl7_config(extra: str = "", senders=SENDERS, processing_ids=("P",)) -> str:
    """The `[hl7]` section of a settings file: HOSP numbers map to MRN_SYSTEM."""
    lines = [
        "[hl7]",
        f"processing_ids = {list(processing_ids)!r}".replace("'", '"'),
        'time_zone = "Europe/Paris"',
        extra,
        "[hl7.identifier_systems]",
        f'HOSP = "{MRN_SYSTEM}"',
    ]
    for application, facility in senders:
        lines += ["[[hl7.senders]]", f'application = "{application}"', f'facility = "{facility}"']
    return "\n".join(lines) + "\n"


def start_mllp_hub(start_hub, backend: str, tmp_path: Path, *, config: str | None = None, **kwargs):
    """A hub with an MLLP listener on a free port; returns (server, (host, port))."""
    path = tmp_path / f"hygie-{backend}.toml"
    path.write_text(config if config is not None else hl7_config())
    args = ["--config", str(path), "--mllp-listen", "127.0.0.1:0", *kwargs.pop("args", [])]
    server = start_hub(backend, args=args, **kwargs)
    return server, mllp_address(server)


def mllp_address(server) -> tuple[str, int]:
    """The MLLP address the hub logged (it binds port 0)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = re.findall(r"HL7 v2 \(MLLP\) listening on 127\.0\.0\.1:(\d+)", server.log_text())
        if found:
            return ("127.0.0.1", int(found[-1]))
        time.sleep(0.05)
    raise AssertionError(f"the hub did not log its MLLP address\n{server.describe()}")


# ---------------------------------------------------------------- message building (hl7apy)

def _msh(m: Message, sender: tuple[str, str], kind: str, control_id: str, version: str, processing: str):
    m.msh.msh_3 = sender[0]
    m.msh.msh_4 = sender[1]
    m.msh.msh_5 = "HYGIE"
    m.msh.msh_6 = "HOSP"
    m.msh.msh_7 = "20261130080000"
    m.msh.msh_9 = kind
    m.msh.msh_10 = control_id
    m.msh.msh_11 = processing
    m.msh.msh_12 = version


@dataclass
class Person:
    mrn: str
    family: str
    given: str
    birth: str = "19620315"
    sex: str = "F"
    phone: str = ""


@dataclass
class Visit:
    number: str
    ward: str = "CARDIO"
    room: str = "101"
    bed: str = "A"
    patient_class: str = "I"
    attending: tuple[str, str, str] | None = ("1234", "House", "Gregory")
    admitted: str = "202611300815"
    discharged: str = ""
    prior: tuple[str, str, str] | None = None


def adt(event: str, control_id: str, person: Person, visit: Visit | None = None, *,
        sender=("ADT", "HOSP"), version="2.5", processing="P", prior_mrn: str | None = None) -> str:
    """An ADT message built with hl7apy, as ER7 with `\\r` between segments."""
    structure = {"A01": "ADT_A01", "A02": "ADT_A02", "A03": "ADT_A03", "A04": "ADT_A01",
                 "A08": "ADT_A01", "A11": "ADT_A09", "A28": "ADT_A05", "A31": "ADT_A05",
                 "A40": "ADT_A39"}.get(event, "ADT_A01")
    m = Message(structure, version=version)
    _msh(m, sender, f"ADT^{event}^{structure}", control_id, version, processing)
    m.evn.evn_1 = event
    m.evn.evn_2 = "20261130080000"
    if event == "A40":
        # ADT_A39: PID and MRG inside the PATIENT group.
        group = m.add_group("ADT_A39_PATIENT")
        pid, mrg = group.add_segment("PID"), group.add_segment("MRG")
        target = pid
    else:
        target = m.pid
        mrg = None
    target.pid_3 = f"{person.mrn}^^^HOSP^MR"
    target.pid_5 = f"{person.family}^{person.given}"
    target.pid_7 = person.birth
    target.pid_8 = person.sex
    if person.phone:
        target.pid_13 = f"^PRN^PH^^^^^^^^^{person.phone}"
    if mrg is not None and prior_mrn:
        mrg.mrg_1 = f"{prior_mrn}^^^HOSP^MR"
    if visit is not None:
        pv1 = m.pv1
        pv1.pv1_2 = visit.patient_class
        pv1.pv1_3 = f"{visit.ward}^{visit.room}^{visit.bed}"
        if visit.prior:
            pv1.pv1_6 = "^".join(visit.prior)
        if visit.attending:
            pv1.pv1_7 = "^".join(visit.attending)
        pv1.pv1_19 = visit.number
        pv1.pv1_44 = visit.admitted
        if visit.discharged:
            pv1.pv1_45 = visit.discharged
    return m.to_er7()


@dataclass
class Result:
    code: str
    display: str
    value: str
    unit: str = ""
    kind: str = "NM"
    flag: str = ""
    range: str = ""


def oru(control_id: str, person: Person, order: str, panel: tuple[str, str], results: list[Result], *,
        sender=("LAB", "HOSP"), status="F", observed="202611300930", visit: Visit | None = None) -> str:
    """An ORU^R01 built with hl7apy: one OBR and its OBX; with `visit`, the PV1 of the stay
    the results were taken in (class and number)."""
    m = Message("ORU_R01", version="2.5")
    _msh(m, sender, "ORU^R01^ORU_R01", control_id, "2.5", "P")
    result_group = m.add_group("ORU_R01_PATIENT_RESULT")
    patient = result_group.add_group("ORU_R01_PATIENT")
    pid = patient.add_segment("PID")
    pid.pid_3 = f"{person.mrn}^^^HOSP^MR"
    pid.pid_5 = f"{person.family}^{person.given}"
    pid.pid_7 = person.birth
    pid.pid_8 = person.sex
    if visit is not None:
        pv1 = patient.add_group("ORU_R01_VISIT").add_segment("PV1")
        pv1.pv1_2 = visit.patient_class
        pv1.pv1_19 = visit.number
    observation = result_group.add_group("ORU_R01_ORDER_OBSERVATION")
    obr = observation.add_segment("OBR")
    obr.obr_1 = "1"
    obr.obr_3 = f"{order}^LAB"
    obr.obr_4 = f"{panel[0]}^{panel[1]}^LN"
    obr.obr_7 = observed
    obr.obr_25 = status
    for index, result in enumerate(results, start=1):
        group = observation.add_group("ORU_R01_OBSERVATION")
        obx = group.add_segment("OBX")
        obx.obx_1 = str(index)
        obx.obx_2 = result.kind
        obx.obx_3 = f"{result.code}^{result.display}^LN"
        obx.obx_5 = result.value
        if result.unit:
            obx.obx_6 = f"{result.unit}^{result.unit}^UCUM"
        if result.range:
            obx.obx_7 = result.range
        if result.flag:
            obx.obx_8 = result.flag
        obx.obx_11 = status
    return m.to_er7()


# ---------------------------------------------------------------- sending

def send_all(address: tuple[str, int], messages: list[str]) -> list[hl7.Message]:
    """Sends with the `hl7` library's MLLP client, one at a time; returns the parsed ACKs."""
    acks = []
    with hl7.client.MLLPClient(*address) as client:
        for message in messages:
            acks.append(hl7.parse(client.send_message(message)))
    return acks


def ack_code(ack: hl7.Message) -> str:
    return str(ack.segment("MSA")[1])


def err_of(ack: hl7.Message) -> tuple[str, str, str]:
    """(ERR-3 code, ERR-2 location, ERR-8 text) of a NAK."""
    err = ack.segment("ERR")
    return (str(err[3][0][0]), str(err[2]), str(err[8]) if len(err) > 8 else "")


class RawMllp:
    """A socket speaking MLLP by hand: for what a real client would never send."""

    def __init__(self, address: tuple[str, int], timeout: float = 15.0):
        self.sock = socket.create_connection(address, timeout=timeout)
        self.buffer = b""

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, message: str | bytes) -> bytes:
        payload = message.encode() if isinstance(message, str) else message
        self.sock.sendall(SB + payload + EB + CR)
        return self.read_frame()

    def read_frame(self) -> bytes:
        while True:
            end = self.buffer.find(EB + CR)
            if end >= 0 and self.buffer.startswith(SB):
                frame, self.buffer = self.buffer[1:end], self.buffer[end + 2:]
                return frame
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed by the hub (buffered: {self.buffer[:200]!r})")
            self.buffer += chunk

    def closed_by_peer(self, wait: float = 5.0) -> bool:
        self.sock.settimeout(wait)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------- a day at a hospital

WARDS = ["CARDIO", "NEURO", "ICU", "SURG", "PEDS", "GERI"]
DOCTORS = [("1001", "Martin", "Claire"), ("1002", "Bernard", "Luc"), ("1003", "Petit", "Anne"),
           ("1004", "Durand", "Hugo"), ("1005", "Leroy", "Emma"), ("1006", "Moreau", "Paul")]
PANEL = ("58410-2", "CBC panel - Blood by Automated count")
TESTS = [("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 11.0, 17.0),
         ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 3.5, 11.0),
         ("777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", 140, 420)]


@dataclass
class Day:
    """Messages of one day and what a clinician should find at its end."""
    messages: list[str] = field(default_factory=list)
    patients: dict[str, Person] = field(default_factory=dict)
    # visit number -> (mrn, final status, final ward, attending id)
    visits: dict[str, tuple[str, str, str, str]] = field(default_factory=dict)
    # order number -> (mrn, number of results)
    orders: dict[str, tuple[str, int]] = field(default_factory=dict)


def a_day(patients: int, seed: int = 7, prefix: str = "D") -> Day:
    """Admissions through the morning, transfers, lab results, discharges in the evening:
    each patient's messages in order, patients interleaved as a hospital's feed is."""
    rng = random.Random(seed)
    day = Day()
    streams: list[list[str]] = []
    counter = 0

    def control() -> str:
        nonlocal counter
        counter += 1
        return f"{prefix}{counter:06d}"

    for n in range(patients):
        mrn = f"{prefix}{n:05d}"
        person = Person(mrn, rng.choice(["Martin", "Bernard", "Thomas", "Robert", "Richard"]) + f"-{n}",
                        rng.choice(["Jeanne", "Louis", "Alice", "Jules", "Lina"]),
                        birth=f"{rng.randint(1930, 2020)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
                        sex=rng.choice("FM"))
        day.patients[mrn] = person
        doctor = rng.choice(DOCTORS)
        ward = rng.choice(WARDS)
        visit = Visit(f"V{prefix}{n:05d}", ward=ward, room=str(rng.randint(1, 40)), bed=rng.choice("AB"),
                      attending=doctor, admitted=f"20261130{rng.randint(0, 11):02d}{rng.randint(0, 59):02d}")
        stream = [adt("A01", control(), person, visit)]
        if rng.random() < 0.4:
            new_ward = rng.choice([w for w in WARDS if w != ward])
            prior = (visit.ward, visit.room, visit.bed)
            visit = Visit(visit.number, ward=new_ward, room=str(rng.randint(1, 40)), bed="A", attending=doctor,
                          admitted=visit.admitted, prior=prior)
            stream.append(adt("A02", control(), person, visit))
        for o in range(rng.randint(0, 2)):
            order = f"O{prefix}{n:05d}{o}"
            results = [Result(code, name, f"{rng.uniform(low * 0.8, high * 1.2):.1f}", unit,
                              range=f"{low}-{high}") for code, name, unit, low, high in TESTS]
            stream.append(oru(control(), person, order, PANEL, results))
            day.orders[order] = (mrn, len(results))
        status = "in-progress"
        if rng.random() < 0.5:
            visit = Visit(visit.number, ward=visit.ward, room=visit.room, bed=visit.bed, attending=doctor,
                          admitted=visit.admitted, discharged=f"20261130{rng.randint(16, 22):02d}00")
            stream.append(adt("A03", control(), person, visit))
            status = "finished"
        day.visits[visit.number] = (mrn, status, visit.ward, doctor[0])
        streams.append(stream)
    # Interleave: take the next message of a random patient still having some.
    while streams:
        index = rng.randrange(len(streams))
        day.messages.append(streams[index].pop(0))
        if not streams[index]:
            streams.pop(index)
    return day
