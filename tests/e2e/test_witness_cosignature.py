"""The witness's cosignatures, checked by the independent verifier (rfc9162.py): what
`hygie audit witness` cosigns (crates/hygie-witness/tests/data/cosigned.json, written by
its Rust test cosignature_fixture.rs through the witness's own code path) verifies here
with the witness's verifier key, as c2sp.org/tlog-cosignature says, and with the log's.

The fixture tests need no server (`-k "not hub"`); the others run `hygie serve` on
SQLite and PostgreSQL with a witness key in `[audit] witnesses`: the witness's `--post`
ends with its cosignature stored and served with the checkpoint, and a forged cosignature
or one of a witness the hub does not know is refused with 400 and not served.

    python3 -m venv target/py-venv && target/py-venv/bin/pip install -q -r tests/e2e/requirements.txt
    cd tests/e2e && ../../target/py-venv/bin/pytest -q test_witness_cosignature.py
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import requests

import rfc9162
from e2e_support import assert_outcome, one_shot, run_cli
from test_audit_log import _checkpoint
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


def _witness(tmp_path: Path, name: str, hub_url: str | None = None) -> list[str]:
    args = ["audit", "witness", "--state", str(tmp_path / f"{name}.state.json"),
            "--key", str(tmp_path / f"{name}.pem"), "--name", name]
    return args + (["--hub", hub_url] if hub_url else ["--show-key"])


def _witness_key(hygie_bin, tmp_path: Path, name: str) -> str:
    shown = run_cli(hygie_bin, _witness(tmp_path, name), cwd=tmp_path)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    return shown.stdout.strip()


def _served_names(server) -> list[str]:
    note = requests.get(f"{server.root_url}/audit/checkpoint", timeout=10).text
    return [signature.name for signature in parse_note(note)[1]]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_hub_keeps_and_serves_a_configured_witness_cosignature(backend, start_hub, hygie_bin, tmp_path):
    witness_key = _witness_key(hygie_bin, tmp_path, "witness.test")
    stranger_key = _witness_key(hygie_bin, tmp_path, "stranger.test")
    settings = tmp_path / "audit.toml"
    # A checkpoint at 4 leaves, then none for an hour: the one cosigned stays the latest.
    settings.write_text("[audit]\nintegrate_every_ms = 50\ncheckpoint_every_seconds = 3600\n"
                        "checkpoint_every_leaves = 4\n"
                        f"witnesses = [{json.dumps(witness_key)}]\n")
    server = start_hub(backend, args=["--config", str(settings)])
    log_key = requests.get(f"{server.root_url}/audit/key", timeout=10).text.strip()
    for _ in range(4):
        assert one_shot("GET", f"{server.fhir_url}/Patient").status_code == 200
    _checkpoint(server, log_key, 4)

    posted = run_cli(hygie_bin, [*_witness(tmp_path, "witness.test", server.root_url), "--post",
                                 "--log-key", log_key, "--out", str(tmp_path / "cosigned.txt")], cwd=tmp_path)
    assert posted.returncode == 0, posted.stdout + posted.stderr
    assert "cosignature delivered to the hub" in posted.stdout + posted.stderr, posted.stdout + posted.stderr
    served = requests.get(f"{server.root_url}/audit/checkpoint", timeout=10)
    assert served.status_code == 200
    cosigned = verify_note(served.text, witness_key)
    assert cosigned.timestamp is not None
    assert verify_note(served.text, log_key).body == cosigned.body
    assert _served_names(server) == [parse_vkey(log_key).name, "witness.test"]
    # Sent again: accepted (idempotent), still served once.
    again = requests.post(f"{server.root_url}/audit/cosignatures",
                          data=(tmp_path / "cosigned.txt").read_bytes(), timeout=10)
    assert again.status_code == 204, again.text
    assert _served_names(server) == [parse_vkey(log_key).name, "witness.test"]

    # A forged cosignature: the witness's line with its last signature byte changed.
    text = (tmp_path / "cosigned.txt").read_text()
    prefix = "\u2014 witness.test "
    line = next(line for line in text.splitlines() if line.startswith(prefix))
    value = bytearray(base64.b64decode(line[len(prefix):]))
    value[-1] ^= 1
    forged = text.replace(line, prefix + base64.b64encode(bytes(value)).decode())
    assert_outcome(requests.post(f"{server.root_url}/audit/cosignatures", data=forged.encode(), timeout=10), 400)

    # A witness the hub was not told about, cosigning the same checkpoint.
    stranger = run_cli(hygie_bin, [*_witness(tmp_path, "stranger.test", server.root_url),
                                   "--log-key", log_key, "--out", str(tmp_path / "stranger.txt")], cwd=tmp_path)
    assert stranger.returncode == 0, stranger.stdout + stranger.stderr
    assert verify_note((tmp_path / "stranger.txt").read_text(), stranger_key).timestamp
    refused = requests.post(f"{server.root_url}/audit/cosignatures",
                            data=(tmp_path / "stranger.txt").read_bytes(), timeout=10)
    assert_outcome(refused, 400)
    assert "unknown witness stranger.test" in refused.text

    # Neither is kept: the served checkpoint still carries the one good cosignature.
    served = requests.get(f"{server.root_url}/audit/checkpoint", timeout=10).text
    assert _served_names(server) == [parse_vkey(log_key).name, "witness.test"]
    verify_note(served, witness_key)
    with pytest.raises(VerificationError):
        verify_note(served, stranger_key)

    # A body over the limit, and a GET where a POST belongs.
    too_large = requests.post(f"{server.root_url}/audit/cosignatures", data=b"x" * (64 * 1024), timeout=10)
    assert too_large.status_code == 413
    assert_outcome(requests.get(f"{server.root_url}/audit/cosignatures", timeout=10), 405)

    # `hygie audit verify` counts the witness whose kept cosignature verifies.
    server.stop()
    store = ["--database", server.database_url] if server.database_url else ["--data-dir", str(server.data_dir)]
    verified = run_cli(hygie_bin, ["audit", "verify", *store, "--config", str(settings)], cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "1 of 1 configured witnesses cosigned a stored checkpoint: witness.test+" in verified.stdout, verified.stdout
