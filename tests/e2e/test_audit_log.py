"""The audit log as outsiders check it: signed checkpoints and RFC 9162 proofs served over
HTTP, verified with an independent implementation (rfc9162.py: hashlib + cryptography),
and `hygie audit verify` catching every kind of tampering with the stored leaves, on
SQLite and PostgreSQL, every time."""

from __future__ import annotations

import base64
import random
import shutil
import sqlite3
import subprocess
import time

import pytest
import requests

import rfc9162
from e2e_support import assert_outcome, one_shot, patient, run_cli


@pytest.fixture(params=["sqlite", "postgres"])
def audited(request, start_hub, tmp_path):
    """A hub that integrates its audit log every 50 ms and signs a checkpoint every second."""
    settings = tmp_path / "audit.toml"
    settings.write_text("[audit]\nintegrate_every_ms = 50\ncheckpoint_every_seconds = 1\n")
    return start_hub(request.param, args=["--config", str(settings)])


def _psql(url: str, sql: str) -> str:
    done = subprocess.run(["psql", "-X", "-w", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _leaf(server, index: int) -> bytes:
    """A leaf's bytes, read from the database as an auditor with access to it would."""
    if server.database_url:
        return bytes.fromhex(_psql(server.database_url,
                                   f"SELECT encode(leaf, 'hex') FROM audit_log WHERE leaf_index = {index}").strip())
    with sqlite3.connect(server.data_dir / "hygie.db") as db:
        return db.execute("SELECT leaf FROM audit_log WHERE leaf_index = ?", (index,)).fetchone()[0]


def _checkpoint(server, vkey: str, at_least: int) -> tuple[str, int, bytes]:
    deadline = time.monotonic() + 15
    while True:
        note = requests.get(f"{server.root_url}/audit/checkpoint", timeout=10)
        assert note.status_code == 200, note.text
        assert note.headers["content-type"].startswith("text/plain")
        verified = rfc9162.verify_note(note.text, vkey)
        origin, size, root, _ = rfc9162.parse_checkpoint(verified.body)
        if size >= at_least:
            return origin, size, root
        assert time.monotonic() < deadline, f"no checkpoint of {at_least} leaves within 15 s (last: {size})"
        time.sleep(0.2)


def _hashes(response: requests.Response) -> list[bytes]:
    assert response.status_code == 200, response.text
    return [base64.b64decode(h) for h in response.json()["hashes"]]


def test_checkpoints_and_proofs_verify_with_an_independent_implementation(audited):
    server = audited
    vkey = requests.get(f"{server.root_url}/audit/key", timeout=10).text.strip()
    for n in range(8):
        assert one_shot("POST", f"{server.fhir_url}/Patient", json=patient(f"audit-{n}")).status_code == 201
    origin, first_size, first_root = _checkpoint(server, vkey, 8)
    assert vkey.startswith(origin + "+")
    for _ in range(13):
        assert one_shot("GET", f"{server.fhir_url}/Patient").status_code == 200
    _, size, root = _checkpoint(server, vkey, first_size + 13)

    for index in sorted({0, 1, first_size - 1, first_size, size - 1, random.randrange(size)}):
        proof = _hashes(requests.get(f"{server.root_url}/audit/proof/inclusion",
                                     params={"index": index, "size": size}, timeout=10))
        leaf_hash = rfc9162.leaf_hash(_leaf(server, index))
        rfc9162.verify_inclusion(leaf_hash, index, size, proof, root)
        with pytest.raises(rfc9162.VerificationError):
            rfc9162.verify_inclusion(rfc9162.leaf_hash(b"another access"), index, size, proof, root)
    proof = _hashes(requests.get(f"{server.root_url}/audit/proof/consistency",
                                 params={"from": first_size, "to": size}, timeout=10))
    rfc9162.verify_consistency(first_size, size, proof, first_root, root)
    with pytest.raises(rfc9162.VerificationError):
        rfc9162.verify_consistency(first_size, size, proof, rfc9162.leaf_hash(b"rewritten"), root)

    # Bad requests: a precise 400, never a proof of something else.
    for path, params in (("inclusion", {"index": size, "size": size}),
                         ("inclusion", {"index": 0, "size": size + 10_000}),
                         ("inclusion", {"index": "one", "size": size}),
                         ("inclusion", {"index": 0}),
                         ("inclusion", {"index": 0, "size": size, "sise": 1}),
                         ("consistency", {"from": size, "to": first_size}),
                         ("consistency", {"from": -1, "to": size})):
        assert_outcome(requests.get(f"{server.root_url}/audit/proof/{path}", params=params, timeout=10), 400)
    assert_outcome(requests.post(f"{server.root_url}/audit/checkpoint", data="x", timeout=10), 405)
    assert_outcome(requests.get(f"{server.root_url}/audit/leaves", timeout=10), 404)


def _verify(hygie_bin, tmp_path, store_args, *extra) -> subprocess.CompletedProcess:
    return run_cli(hygie_bin, ["audit", "verify", *store_args, *extra], cwd=tmp_path)


TAMPERINGS = ("modify", "delete", "swap", "truncate", "shift")


def _tamper_sql(kind: str, position: int, other: int, size: int, postgres: bool) -> tuple[str, int]:
    """SQL that tampers with the stored leaves as someone with database access would, and the
    first leaf `verify` must name."""
    if kind == "modify":
        # One byte of the leaf's JSON changed ("0" outcome → "4", or a letter).
        flip = ("UPDATE audit_log SET leaf = overlay(leaf placing '\\x20'::bytea from 10 for 1) WHERE leaf_index = {i}"
                if postgres else "UPDATE audit_log SET leaf = CAST(replace(CAST(leaf AS TEXT), '\"', ' ') AS BLOB) WHERE leaf_index = {i}")
        return flip.format(i=position), position
    if kind == "delete":
        return f"DELETE FROM audit_log WHERE leaf_index = {position}", position
    if kind == "swap":
        low, high = sorted((position, other))
        swap = (f"UPDATE audit_log SET leaf_index = -1 WHERE leaf_index = {low}; "
                f"UPDATE audit_log SET leaf_index = {low} WHERE leaf_index = {high}; "
                f"UPDATE audit_log SET leaf_index = {high} WHERE leaf_index = -1")
        return swap, low
    if kind == "truncate":
        return f"DELETE FROM audit_log WHERE leaf_index >= {position}", position
    # shift: a forged leaf inserted at `position`, the later ones moved up by one.
    move = "UPDATE audit_log SET leaf_index = leaf_index + 1000000 WHERE leaf_index >= {p}; " \
           "UPDATE audit_log SET leaf_index = leaf_index - 1000000 + 1 WHERE leaf_index >= 1000000; "
    if postgres:
        insert = "INSERT INTO audit_log (recorded_us, leaf, leaf_index) VALUES (0, '\\x7b7d'::bytea, {p})"
    else:
        insert = "INSERT INTO audit_log (leaf_index, recorded_us, leaf) VALUES ({p}, 0, x'7b7d')"
    return (move + insert).format(p=position), position


def test_any_tampering_with_the_stored_leaves_is_caught_and_located(audited, hygie_bin, tmp_path, request):
    server = audited
    for n in range(30):
        method = "POST" if n % 3 == 0 else "GET"
        body = patient(f"tamper-{n}") if method == "POST" else None
        assert one_shot(method, f"{server.fhir_url}/Patient", json=body).status_code in (200, 201)
    server.stop()  # a final checkpoint covers every leaf
    postgres = bool(server.database_url)
    store_args = ["--database", server.database_url] if postgres else ["--data-dir", str(server.data_dir)]
    clean = _verify(hygie_bin, tmp_path, store_args)
    assert clean.returncode == 0, clean.stderr
    assert "audit log verified" in clean.stdout
    size = int(clean.stdout.split("verified: ")[1].split(" leaves")[0])
    assert size >= 30

    rng = random.Random(20261130)
    trials = [(kind, rng.randrange(size), rng.randrange(size)) for kind in TAMPERINGS for _ in range(3)]
    for kind, position, other in trials:
        if kind == "swap" and position == other:
            other = (position + 1) % size
        sql, expected = _tamper_sql(kind, position, other, size, postgres)
        if postgres:
            databases = request.getfixturevalue("pg_databases")
            copy = databases.create_from(server.database_url)
            _psql(copy, sql)
            args = ["--database", copy]
        else:
            copy = tmp_path / f"copy-{kind}-{position}-{other}"
            shutil.copytree(server.data_dir, copy)
            with sqlite3.connect(copy / "hygie.db") as db:
                db.executescript(sql)
            args = ["--data-dir", str(copy)]
        done = _verify(hygie_bin, tmp_path, args)
        assert done.returncode == 1, f"{kind} at {position}: not caught\n{done.stdout}{done.stderr}"
        assert f"first bad leaf {expected}:" in done.stderr, f"{kind} at {position}/{other}: {done.stderr}"
        if postgres:
            databases.drop(copy)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_stored_leaf_hash_rewritten_before_integration_is_caught(backend, start_hub, hygie_bin, tmp_path):
    """Each leaf's hash is stored at its append and the integrator trusts it: someone who
    rewrites it before the leaf is integrated gets a tree, and a signed checkpoint, over a
    hash its leaf does not have. `verify` hashes every leaf itself and names that one."""
    settings = tmp_path / "slow.toml"
    settings.write_text("[audit]\nintegrate_every_ms = 60000\n")
    server = start_hub(backend, args=["--config", str(settings)])
    for n in range(5):
        assert one_shot("POST", f"{server.fhir_url}/Patient", json=patient(f"hash-{n}")).status_code == 201
    forged = "00" * 32
    if server.database_url:
        seq = _psql(server.database_url, "SELECT max(seq) FROM audit_log WHERE leaf_index IS NULL").strip()
        assert seq, "every leaf was integrated already: the window this test needs is gone"
        _psql(server.database_url, f"UPDATE audit_log SET leaf_hash = '\\x{forged}'::bytea WHERE seq = {seq}")
    else:
        with sqlite3.connect(server.data_dir / "hygie.db", timeout=30) as db:
            tree_size = db.execute("SELECT coalesce(max(tree_size), 0) FROM audit_checkpoint").fetchone()[0]
            index = db.execute("SELECT max(leaf_index) FROM audit_log").fetchone()[0]
            assert index >= tree_size, "every leaf was integrated already: the window this test needs is gone"
            db.execute("UPDATE audit_log SET leaf_hash = ? WHERE leaf_index = ?", (bytes.fromhex(forged), index))
    server.stop()  # integrates the forged hash, and signs a checkpoint over it
    if server.database_url:
        index = int(_psql(server.database_url, f"SELECT leaf_index FROM audit_log WHERE seq = {seq}").strip())
        store_args = ["--database", server.database_url]
    else:
        store_args = ["--data-dir", str(server.data_dir)]
    done = _verify(hygie_bin, tmp_path, store_args)
    assert done.returncode == 1, f"a forged leaf hash was not caught\n{done.stdout}{done.stderr}"
    assert f"first bad leaf {index}:" in done.stderr, done.stderr


def _leaves(server) -> list[dict]:
    import json
    if server.database_url:
        rows = _psql(server.database_url, "SELECT encode(leaf, 'hex') FROM audit_log ORDER BY seq").split()
        return [json.loads(bytes.fromhex(row)) for row in rows]
    with sqlite3.connect(server.data_dir / "hygie.db") as db:
        return [json.loads(row[0]) for row in db.execute("SELECT leaf FROM audit_log ORDER BY leaf_index")]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_failed_authentications_are_audited(backend, start_hub):
    """BALP: a bearer token that does not verify is a failed login (DICOM 110114/110122,
    outcome 4), recorded with the caller's address and the reason, and refused (401)."""
    server = start_hub(backend, no_auth=False)
    forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJQcmFjdGl0aW9uZXIvZXZlIn0."
    for headers in ({"Authorization": f"Bearer {forged}"}, {"Authorization": "Basic dXNlcjpwYXNz"}):
        assert_outcome(one_shot("GET", f"{server.fhir_url}/Patient", headers=headers), 401)
    logins = [leaf for leaf in _leaves(server) if leaf["type"]["code"] == "110114"]
    assert len(logins) == 2, logins
    for leaf in logins:
        assert leaf["type"]["system"] == "http://dicom.nema.org/resources/ontology/DCM"
        assert leaf["subtype"][0]["code"] == "110122"
        assert leaf["outcome"] == "4"
        assert leaf["agent"][0]["network"]["address"] == "127.0.0.1"
        assert leaf["outcomeDesc"]
    assert "none" in logins[0]["outcomeDesc"]
    assert "Bearer" in logins[1]["outcomeDesc"]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_witness_follows_the_log_and_catches_it_rewritten(backend, start_hub, hygie_bin, tmp_path):
    """`hygie audit witness` accepts a log that grows consistently (exit 0, a cosignature
    the independent verifier checks), and exits 3 when the hub's database was cut back and
    the log went on from there: what an attacker with database access would do to hide
    accesses."""
    settings = tmp_path / "audit.toml"
    settings.write_text("[audit]\nintegrate_every_ms = 50\ncheckpoint_every_seconds = 1\n")
    server = start_hub(backend, args=["--config", str(settings)])
    vkey = requests.get(f"{server.root_url}/audit/key", timeout=10).text.strip()
    witness = ["audit", "witness", "--hub", server.root_url, "--state", str(tmp_path / "state.json"),
               "--key", str(tmp_path / "witness.pem"), "--name", "witness.test", "--log-key", vkey,
               "--out", str(tmp_path / "cosigned.txt")]
    for n in range(12):
        assert one_shot("GET", f"{server.fhir_url}/Patient").status_code == 200
    _checkpoint(server, vkey, 12)
    first = run_cli(hygie_bin, witness, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    for n in range(5):
        assert one_shot("GET", f"{server.fhir_url}/Patient").status_code == 200
    _checkpoint(server, vkey, 17)
    grown = run_cli(hygie_bin, witness, cwd=tmp_path)
    assert grown.returncode == 0, grown.stdout + grown.stderr
    assert "consistent" in grown.stdout
    witness_key = [line.split()[-1] for line in (first.stdout + first.stderr).splitlines()
                   if "witness.test+" in line and "verifier key" in line][0]
    verified = rfc9162.verify_note((tmp_path / "cosigned.txt").read_text(), witness_key)
    assert verified.timestamp is not None

    # The database cut back to 5 leaves (leaves, nodes, checkpoints, size), then restarted.
    server.stop()
    cut = ("DELETE FROM audit_log WHERE leaf_index >= 5; "
           "DELETE FROM audit_node WHERE ((idx + 1) << level) > 5; "
           "DELETE FROM audit_checkpoint WHERE tree_size > 5; "
           "UPDATE hub_meta SET value = '5' WHERE key = 'audit.tree_size';")
    if server.database_url:
        _psql(server.database_url, cut)
    else:
        with sqlite3.connect(server.data_dir / "hygie.db") as db:
            db.executescript(cut)
    again = start_hub(backend, data_dir=server.data_dir, database_url=server.database_url,
                      args=["--config", str(settings)])
    for n in range(3):
        assert one_shot("GET", f"{again.fhir_url}/Patient").status_code == 200
    _checkpoint(again, vkey, 8)
    witness[witness.index("--hub") + 1] = again.root_url
    caught = run_cli(hygie_bin, witness, cwd=tmp_path)
    assert caught.returncode == 3, caught.stdout + caught.stderr
    assert "hygie/audit/" in caught.stdout, "both signed checkpoints are printed as evidence"


def test_retention_prunes_old_bodies_and_the_log_stays_verifiable(audited, start_hub, hygie_bin, tmp_path):
    server = audited
    for n in range(12):
        method = "POST" if n % 3 == 0 else "GET"
        body = patient(f"retention-{n}") if method == "POST" else None
        assert one_shot(method, f"{server.fhir_url}/Patient", json=body).status_code in (200, 201)
    vkey = requests.get(f"{server.root_url}/audit/key", timeout=10).text.strip()
    _, size, root = _checkpoint(server, vkey, 12)
    saved = {index: _leaf(server, index) for index in (0, 5, size - 1)}
    creates = one_shot("GET", f"{server.fhir_url}/AuditEvent", params={"subtype": "create"}).json()
    assert len(creates["entry"]) == 4
    server.stop()
    postgres = bool(server.database_url)
    store_args = ["--database", server.database_url] if postgres else ["--data-dir", str(server.data_dir)]

    done = run_cli(hygie_bin, ["audit", "prune", *store_args, "--older-than-days", "0"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    pruned = int(done.stdout.split("pruned the bodies of ")[1].split(" ")[0])
    assert pruned >= size, done.stdout
    assert _leaf(server, 0) in (None, b""), "the body is gone"
    verified = _verify(hygie_bin, tmp_path, store_args)
    assert verified.returncode == 0, verified.stderr
    assert f"({pruned} pruned)" in verified.stdout, verified.stdout

    # The hashes stayed: a proof for a pruned leaf still verifies, from the bytes kept aside.
    again = start_hub("postgres" if postgres else "sqlite", data_dir=server.data_dir,
                      database_url=server.database_url)
    for index, leaf in saved.items():
        proof = _hashes(requests.get(f"{again.root_url}/audit/proof/inclusion",
                                     params={"index": index, "size": size}, timeout=10))
        rfc9162.verify_inclusion(rfc9162.leaf_hash(leaf), index, size, proof, root)
    # The pruned events are no longer served; the pruning itself is recorded.
    assert one_shot("GET", f"{again.fhir_url}/AuditEvent", params={"subtype": "create"}).json().get("entry", []) == []
    retention = one_shot("GET", f"{again.fhir_url}/AuditEvent", params={"subtype": "audit-retention"}).json()
    assert len(retention["entry"]) == 1
    assert one_shot("GET", f"{again.fhir_url}/Patient").status_code == 200
    again.stop()

    # A body removed after one that was kept is not retention: caught.
    last = int(_verify(hygie_bin, tmp_path, store_args).stdout.split("verified: ")[1].split(" leaves")[0]) - 1
    if postgres:
        _psql(server.database_url, f"UPDATE audit_log SET leaf = NULL WHERE leaf_index = {last}")
    else:
        with sqlite3.connect(server.data_dir / "hygie.db") as db:
            db.execute("UPDATE audit_log SET leaf = NULL WHERE leaf_index = ?", (last,))
    caught = _verify(hygie_bin, tmp_path, store_args)
    assert caught.returncode == 1, caught.stdout
    assert f"first bad leaf {last}:" in caught.stderr and "lost its body" in caught.stderr, caught.stderr
