"""The witness's cosignatures, checked by the independent verifier (rfc9162.py): what
`hygie audit witness` cosigns (crates/hygie-witness/tests/data/cosigned.json, written by
its Rust test cosignature_fixture.rs through the witness's own code path) verifies here
with the witness's verifier key, as c2sp.org/tlog-cosignature says, and with the log's.

Needs no server; only pytest and `cryptography`:

    python3 -m venv target/py-venv && target/py-venv/bin/pip install -q -r tests/e2e/requirements.txt
    cd tests/e2e && ../../target/py-venv/bin/pytest -q --noconftest test_witness_cosignature.py
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from rfc9162 import (
    SIGNATURE_TYPE_COSIGNATURE_V1,
    VerificationError,
    parse_checkpoint,
    parse_note,
    parse_vkey,
    verify_note,
)

FIXTURE = Path(__file__).resolve().parents[2] / "crates/hygie-witness/tests/data/cosigned.json"


@pytest.fixture(scope="module")
def data() -> dict:
    return json.loads(FIXTURE.read_text())


def test_the_witness_cosignature_verifies(data):
    note = data["cosigned_note"]
    witness = verify_note(note, data["witness_vkey"])
    assert witness.timestamp == data["cosigned_at_s"]
    assert parse_vkey(data["witness_vkey"]).signature_type == SIGNATURE_TYPE_COSIGNATURE_V1
    log = verify_note(note, data["log_vkey"])
    assert log.timestamp is None
    assert log.body == witness.body
    origin, size, root, extensions = parse_checkpoint(witness.body)
    assert origin == parse_vkey(data["log_vkey"]).name
    assert (size, root.hex(), extensions) == (data["size"], data["root_hex"], [])


def test_the_witness_passes_on_the_logs_signature_and_its_own_only(data):
    _, signatures = parse_note(data["cosigned_note"])
    names = [signature.name for signature in signatures]
    assert names == [parse_vkey(data["log_vkey"]).name, parse_vkey(data["witness_vkey"]).name]


def test_another_checkpoint_or_another_time_does_not_verify(data):
    note = data["cosigned_note"]
    size = str(data["size"])
    other_size = note.replace(f"\n{size}\n", f"\n{int(size) + 1}\n", 1)
    assert other_size != note
    with pytest.raises(VerificationError):
        verify_note(other_size, data["witness_vkey"])
    # The timestamp is signed: the same signature under another time fails.
    prefix = "\u2014 " + parse_vkey(data["witness_vkey"]).name + " "
    line = next(line for line in note.splitlines() if line.startswith(prefix))
    value = bytearray(base64.b64decode(line[len(prefix):]))
    value[4 + 7] ^= 1  # the last byte of the 8-byte timestamp, after the 4-byte key ID
    retimed = note.replace(line, prefix + base64.b64encode(bytes(value)).decode())
    assert retimed != note
    with pytest.raises(VerificationError):
        verify_note(retimed, data["witness_vkey"])
