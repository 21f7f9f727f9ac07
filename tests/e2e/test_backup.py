"""`hygie backup create | verify | restore` on both backends: a backup taken while the hub
serves restores into a hub that serves every resource as before and whose audit log
verifies; a tampered, truncated or reordered backup, or the wrong key file, is refused with
a message naming the problem, and a refused restore leaves no target behind; and the
ransomware drill: the live data destroyed under a running hub, then restored from the
backup."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from e2e_support import create, observation, patient, run_cli

SETTINGS = "[audit]\nintegrate_every_ms = 50\ncheckpoint_every_seconds = 1\n"


def _psql(url: str, sql: str) -> str:
    done = subprocess.run(["psql", "-X", "-w", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def settings(tmp_path) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(SETTINGS)
    return path


class Targets:
    """Fresh restore targets of one backend: a data directory that does not exist yet, or
    an empty database."""

    def __init__(self, backend: str, tmp_path: Path, request):
        self.backend = backend
        self.tmp_path = tmp_path
        self.request = request
        self.count = 0

    def new(self) -> dict:
        self.count += 1
        if self.backend == "sqlite":
            directory = self.tmp_path / f"restored-{self.count}"
            return {"cli": ["--data-dir", str(directory)], "hub": {"data_dir": directory},
                    "path": directory}
        url = self.request.getfixturevalue("pg_databases").create()
        return {"cli": ["--database", url], "hub": {"database_url": url}, "url": url}

    @staticmethod
    def is_left_empty(target: dict) -> bool:
        """Nothing of a refused restore is left: no directory, or no table."""
        if "path" in target:
            return not target["path"].exists()
        return _psql(target["url"], "SELECT COUNT(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                    "WHERE n.nspname = 'public'").strip() == "0"


@pytest.fixture
def targets(backend, tmp_path, request) -> Targets:
    return Targets(backend, tmp_path, request)


def _store_args(server) -> list[str]:
    return ["--database", server.database_url] if server.database_url else ["--data-dir", str(server.data_dir)]


def _wait_checkpoint(server, at_least: int) -> int:
    """Waits until the hub has signed a checkpoint of at least `at_least` leaves."""
    deadline = time.monotonic() + 20
    while True:
        note = requests.get(f"{server.root_url}/audit/checkpoint", timeout=10)
        assert note.status_code == 200, note.text
        size = int(note.text.split("\n")[1])
        if size >= at_least:
            return size
        assert time.monotonic() < deadline, f"no checkpoint of {at_least} leaves within 20 s (last: {size})"
        time.sleep(0.2)


def _write_resources(http, hub: str, *, big: int = 0) -> list[str]:
    """Patients, their observations, an update and a deletion; `big` observations carry a
    600 kB note (so that the backup spans several 1 MiB chunks). Returns the references."""
    references = []
    for number in range(3):
        person = create(http, hub, patient(family=f"Backup{number}"))
        references.append(f"Patient/{person['id']}")
        for value in (60.0 + number, 70.0 + number):
            made = create(http, hub, observation(f"Patient/{person['id']}", value))
            references.append(f"Observation/{made['id']}")
    for number in range(big):
        resource = observation(references[0], 80.0 + number)
        resource["note"] = [{"text": os.urandom(300_000).hex()}]
        references.append(f"Observation/{create(http, hub, resource)['id']}")
    updated = http.get(f"{hub}/{references[0]}").json()
    updated["gender"] = "male"
    response = http.put(f"{hub}/{references[0]}", json=updated)
    assert response.status_code == 200, response.text
    response = http.delete(f"{hub}/{references[1]}")
    assert response.status_code in (200, 204), response.text
    return references


def _snapshot(http, hub: str, references: list[str]) -> dict[str, tuple[int, dict | None]]:
    """Each reference's status and JSON as the hub serves it, and the first version of each."""
    seen = {}
    for reference in references:
        for path in (reference, f"{reference}/_history/1"):
            response = http.get(f"{hub}/{path}")
            seen[path] = (response.status_code, response.json() if response.status_code == 200 else None)
    return seen


def _backup(hygie_bin, tmp_path, args, out: Path) -> subprocess.CompletedProcess:
    done = run_cli(hygie_bin, ["backup", "create", *args, "--out", str(out)], cwd=tmp_path)
    assert done.returncode == 0, f"backup create exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    assert out.is_file() and not Path(f"{out}.partial").exists()
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    return done


def _verify(hygie_bin, tmp_path, backup: Path, *extra) -> subprocess.CompletedProcess:
    return run_cli(hygie_bin, ["backup", "verify", str(backup), *extra], cwd=tmp_path)


def _restore(hygie_bin, tmp_path, backup: Path, target: dict, *extra) -> subprocess.CompletedProcess:
    return run_cli(hygie_bin, ["backup", "restore", str(backup), *target["cli"], *extra], cwd=tmp_path)


def _audit_verify(hygie_bin, tmp_path, args) -> None:
    done = run_cli(hygie_bin, ["audit", "verify", *args], cwd=tmp_path)
    assert done.returncode == 0, f"audit verify exited {done.returncode}:\n{done.stdout}\n{done.stderr}"


def test_a_backup_taken_while_serving_restores_every_resource(backend, settings, targets, start_hub, http,
                                                             hygie_bin, tmp_path):
    server = start_hub(backend, args=["--config", str(settings)])
    references = _write_resources(http, server.fhir_url)
    before = _snapshot(http, server.fhir_url, references)
    by_name = _names_found(http, server.fhir_url)
    assert by_name["family=Backup"], by_name
    size = _wait_checkpoint(server, len(references))
    backup = tmp_path / "hub.backup"
    made = _backup(hygie_bin, tmp_path, _store_args(server), backup)
    assert "written to" in made.stdout, made.stdout

    # The header is plaintext and holds no patient data; the rest is ciphertext.
    raw = backup.read_bytes()
    header = json.loads(raw[: raw.index(b"\n")])
    assert header["format"] == "hygie-backup/1" and header["backend"] == backend
    assert {t["name"] for t in header["tables"]} >= {"resource_versions", "audit_log", "data_key", "hub_meta"}
    # The term index of names and addresses is rebuilt by the restored hub, not backed up.
    assert not any(t["name"].startswith("search_term") for t in header["tables"]), header["tables"]
    for secret in (b"Backup0", b"Backup1", b"beats/minute", b"8867-4"):
        assert secret not in raw, f"{secret!r} is in clear in the backup"

    verified = _verify(hygie_bin, tmp_path, backup)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "backup verified: every check passed" in verified.stdout, verified.stdout
    assert "the latest checkpoint (" in verified.stdout and "verifies with the log's key" in verified.stdout
    checkpoint_leaves = int(verified.stdout.split("the latest checkpoint (")[1].split(" ")[0])
    assert checkpoint_leaves >= size

    target = targets.new()
    restored = _restore(hygie_bin, tmp_path, backup, target, "--config", str(settings))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "audit verify of the restored store: OK" in restored.stdout, restored.stdout
    _audit_verify(hygie_bin, tmp_path, target["cli"])

    again = start_hub(backend, **target["hub"])
    after = _snapshot(http, again.fhir_url, references)
    assert after == before
    # Names are found again: the restored hub rebuilt the term index before serving.
    assert _names_found(http, again.fhir_url) == by_name
    # The restored hub takes new writes, numbered after the restored ones.
    create(http, again.fhir_url, patient(family="AfterRestore"))
    _audit_verify(hygie_bin, tmp_path, target["cli"])


def _names_found(http, hub) -> dict[str, list[str]]:
    """The patients that searches on (encrypted, blind-indexed) names find."""
    found = {}
    for query in ("family=Backup", "family:exact=Backup1", "family:contains=ckup", "family:missing=true"):
        response = http.get(f"{hub}/Patient?{query}&_count=100")
        assert response.status_code == 200, response.text
        found[query] = sorted(e["resource"]["id"] for e in response.json().get("entry", []))
    return found


def _split(raw: bytes) -> tuple[bytes, list[bytes]]:
    """The header line (with its newline) and the chunks (flags, length, ciphertext)."""
    at = raw.index(b"\n") + 1
    header, rest, chunks = raw[:at], raw[at:], []
    at = 0
    while at < len(rest):
        length = int.from_bytes(rest[at + 1: at + 5], "big")
        chunks.append(rest[at: at + 5 + length])
        at += 5 + length
    return header, chunks


def _tampered(raw: bytes, kind: str) -> bytes:
    header, chunks = _split(raw)
    assert len(chunks) >= 3, f"the test needs a backup of several chunks, not {len(chunks)}"
    if kind == "flip":
        chunk = bytearray(chunks[1])
        chunk[1000] ^= 0x01
        chunks[1] = bytes(chunk)
    elif kind == "truncate":
        return header + b"".join(chunks[:-2]) + chunks[-2][: len(chunks[-2]) // 2]
    elif kind == "drop-last":
        chunks = chunks[:-1]
    elif kind == "swap":
        chunks[0], chunks[1] = chunks[1], chunks[0]
    elif kind == "row-count":
        fields = json.loads(header)
        table = next(t for t in fields["tables"] if t["name"] == "resource_versions")
        table["rows"] += 1
        header = json.dumps(fields, separators=(",", ":")).encode() + b"\n"
    return header + b"".join(chunks)


def _expected_message(kind: str, chunks: int) -> str:
    return {
        "flip": "chunk 1 does not authenticate: the backup was altered or damaged",
        "truncate": f"the backup is truncated after chunk {chunks - 3}",
        "drop-last": f"the backup is truncated after chunk {chunks - 2}",
        "swap": "chunk 0 is in the place of chunk 1: the backup's chunks were reordered",
        "row-count": "table resource_versions: ",
    }[kind]


def test_a_tampered_backup_is_refused_and_leaves_no_target(backend, settings, targets, start_hub, http,
                                                          hygie_bin, tmp_path):
    server = start_hub(backend, args=["--config", str(settings)])
    _write_resources(http, server.fhir_url, big=8)
    backup = tmp_path / "hub.backup"
    _backup(hygie_bin, tmp_path, _store_args(server), backup)
    raw = backup.read_bytes()
    chunks = len(_split(raw)[1])
    for kind in ("flip", "truncate", "drop-last", "swap", "row-count"):
        bad = tmp_path / f"{kind}.backup"
        bad.write_bytes(_tampered(raw, kind))
        expected = _expected_message(kind, chunks)
        verified = _verify(hygie_bin, tmp_path, bad)
        assert verified.returncode == 1, f"{kind}: verify exited {verified.returncode}\n{verified.stdout}"
        assert expected in verified.stderr, f"{kind}: {verified.stderr}"
        if kind == "row-count":
            assert "the header was altered" in verified.stderr, verified.stderr
        target = targets.new()
        restored = _restore(hygie_bin, tmp_path, bad, target)
        assert restored.returncode == 1, f"{kind}: restore exited {restored.returncode}\n{restored.stdout}"
        assert expected in restored.stderr, f"{kind}: {restored.stderr}"
        assert targets.is_left_empty(target), f"{kind}: the refused restore left {target} behind"
    # The untouched backup still verifies.
    assert _verify(hygie_bin, tmp_path, backup).returncode == 0


def test_the_wrong_or_a_missing_key_file_is_named(backend, settings, targets, start_hub, http, hygie_bin, tmp_path):
    server = start_hub(backend, args=["--config", str(settings)])
    _write_resources(http, server.fhir_url)
    backup = tmp_path / "hub.backup"
    _backup(hygie_bin, tmp_path, _store_args(server), backup)
    installation = json.loads(backup.read_bytes().split(b"\n")[0])["installation"]

    # Another installation's key file: made by opening another store with it.
    other_key = tmp_path / "other" / "vault.key"
    made = run_cli(hygie_bin, ["keys", "signing", "list", "--data-dir", str(tmp_path / "other-data"),
                               "--vault-key", str(other_key)], cwd=tmp_path)
    assert made.returncode == 0 and other_key.is_file(), made.stderr
    other_installation = json.loads(other_key.read_text())["installation"]
    expected = (f"this backup was made by installation {installation}; "
                f"the key file is of installation {other_installation}")
    for command in ("verify", "restore"):
        target = targets.new()
        args = ["backup", command, str(backup), "--vault-key", str(other_key)]
        if command == "restore":
            args += target["cli"]
        done = run_cli(hygie_bin, args, cwd=tmp_path)
        assert done.returncode == 1 and expected in done.stderr, f"{command}: {done.stderr}"
        assert targets.is_left_empty(target)

    missing = tmp_path / "nowhere" / "vault.key"
    for command in ("verify", "restore"):
        target = targets.new()
        args = ["backup", command, str(backup), "--vault-key", str(missing)]
        if command == "restore":
            args += target["cli"]
        done = run_cli(hygie_bin, args, cwd=tmp_path)
        assert done.returncode == 1, done.stderr
        assert f"key file {missing} does not exist" in done.stderr, f"{command}: {done.stderr}"
        assert targets.is_left_empty(target)

    # Backing up with another installation's key file is refused too, and writes nothing.
    refused = run_cli(hygie_bin, ["backup", "create", *_store_args(server), "--vault-key", str(other_key),
                                  "--out", str(tmp_path / "never.backup")], cwd=tmp_path)
    assert refused.returncode == 1 and "the key file is of installation" in refused.stderr, refused.stderr
    assert not (tmp_path / "never.backup").exists() and not (tmp_path / "never.backup.partial").exists()
    # And a backup never overwrites a file.
    again = run_cli(hygie_bin, ["backup", "create", *_store_args(server), "--out", str(backup)], cwd=tmp_path)
    assert again.returncode == 1 and "exists: a backup never overwrites" in again.stderr, again.stderr


def test_ransomware_drill(backend, settings, targets, start_hub, http, hygie_bin, tmp_path):
    """Back up a serving hub (with writes going on), destroy its data under it, restore the
    backup elsewhere: every resource written before the backup is served as it was."""
    server = start_hub(backend, args=["--config", str(settings)])
    references = _write_resources(http, server.fhir_url, big=2)
    before = _snapshot(http, server.fhir_url, references)
    _wait_checkpoint(server, len(references))

    # Writes keep coming while the backup runs: it is online.
    stop = threading.Event()
    written: list[str] = []

    def keep_writing():
        with requests.Session() as session:
            while not stop.is_set():
                response = session.post(f"{server.fhir_url}/Patient", json=patient(family="During"),
                                        headers={"Content-Type": "application/fhir+json"}, timeout=30)
                if response.status_code == 201:
                    written.append(response.json()["id"])

    writer = threading.Thread(target=keep_writing, daemon=True)
    writer.start()
    time.sleep(0.3)
    backup = tmp_path / "drill.backup"
    try:
        _backup(hygie_bin, tmp_path, _store_args(server), backup)
    finally:
        time.sleep(0.3)
        stop.set()
        writer.join(timeout=30)
    assert written, "no write went through while the backup ran"
    assert _verify(hygie_bin, tmp_path, backup).returncode == 0

    # The attack: every file of the data directory overwritten with random bytes, or every
    # table dropped, while the hub still runs.
    if backend == "sqlite":
        for path in server.data_dir.iterdir():
            if path.is_file():
                size = path.stat().st_size
                with open(path, "r+b") as file:
                    file.write(os.urandom(max(size, 4096)))
    else:
        _psql(server.database_url, "DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    try:
        http.get(f"{server.fhir_url}/{references[0]}")
    except requests.RequestException:
        pass
    if server.running:
        server.stop(expect_exit_code=None)  # it may fail its shutdown: accepted
    else:
        server.stopped = True

    target = targets.new()
    restored = _restore(hygie_bin, tmp_path, backup, target, "--config", str(settings))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "audit verify of the restored store: OK" in restored.stdout
    again = start_hub(backend, **target["hub"])
    _audit_verify(hygie_bin, tmp_path, target["cli"])
    assert _snapshot(http, again.fhir_url, references) == before
