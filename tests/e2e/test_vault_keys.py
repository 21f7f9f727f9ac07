"""The keys of encryption at rest, as a DPO and a security officer use them, on both
backends: `hygie patient erase` makes one patient's data unreadable (on the running hub,
and in a copy of the database taken before, opened with the new key file), leaves the
others readable and the audit log verifiable; `hygie keys rotate` re-wraps every data key
online, `--retire-previous` makes older copies unopenable, and `--patient` re-encrypts
one patient's data under a new key."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import time

import pytest

from e2e_support import SYNTHEA_DIR, one_shot, run_cli, search_ids


def _patients() -> list[dict]:
    found = []
    for path in sorted(SYNTHEA_DIR.glob("*.json")):
        for entry in json.loads(path.read_text())["entry"]:
            if entry["resource"]["resourceType"] == "Patient":
                found.append(entry["resource"])
    return found


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, hygie_bin, tmp_path):
    key_file = tmp_path / "keys" / "vault.key"
    if request.param == "sqlite":
        cli = ["--data-dir", str(tmp_path / "data")]
        hub = {"data_dir": tmp_path / "data"}
    else:
        pg = request.getfixturevalue("pg_databases")
        url = pg.create()
        cli = ["--database", url]
        hub = {"database_url": url}
    env = {"HYGIE_VAULT_KEY_FILE": str(key_file)}
    done = run_cli(hygie_bin, ["import", *cli, *map(str, sorted(SYNTHEA_DIR.glob("*.json")))],
                   cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    made = []

    def copy() -> dict:
        """A copy of the database as it is now (what a backup holds)."""
        if request.param == "sqlite":
            target = tmp_path / f"copy-{len(made)}"
            target.mkdir()
            with sqlite3.connect(tmp_path / "data" / "hygie.db") as source, \
                    sqlite3.connect(target / "hygie.db") as dest:
                source.backup(dest)
            made.append(target)
            return {"data_dir": target}
        url = request.getfixturevalue("pg_databases").create_from(hub["database_url"])
        made.append(url)
        return {"database_url": url}

    def empty_target() -> dict:
        """Where a backup may be restored: a data directory or a database not made yet."""
        if request.param == "sqlite":
            target = tmp_path / f"restored-{len(made)}"
            made.append(target)
            return {"cli": ["--data-dir", str(target)], "hub": {"data_dir": target}}
        url = request.getfixturevalue("pg_databases").create()
        made.append(url)
        return {"cli": ["--database", url], "hub": {"database_url": url}}

    yield {"backend": request.param, "cli": cli, "hub": hub, "env": env, "key_file": key_file, "copy": copy,
           "empty_target": empty_target}
    if request.param == "postgres":
        pg = request.getfixturevalue("pg_databases")
        for url in [hub["database_url"], *made]:
            pg.drop(url)


def _find_patient(http, hub, resource) -> str:
    ids = search_ids(http, hub, "Patient", {"family": resource["name"][0]["family"],
                                            "birthdate": resource["birthDate"]})
    assert len(ids) == 1, ids
    return ids[0]


def _until(check, timeout_s: float = 15):
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.25)


def test_an_erased_patient_is_unreadable_everywhere_and_others_are_not(store, hygie_bin, tmp_path,
                                                                         start_hub, http):
    server = start_hub(store["backend"], env=store["env"], **store["hub"])
    hub = server.fhir_url
    erased, kept = _patients()[0], _patients()[1]
    erased_id, kept_id = _find_patient(http, hub, erased), _find_patient(http, hub, kept)
    observations = search_ids(http, hub, "Observation", {"subject": f"Patient/{erased_id}"})
    assert observations
    before_total = len(search_ids(http, hub, "Observation", {}))
    # A backup taken while the hub runs, before the erasure (`hygie backup create`).
    backup_file = tmp_path / "before-erasure.hygie-backup"
    made = run_cli(hygie_bin, ["backup", "create", *store["cli"], "--out", str(backup_file)],
                   cwd=tmp_path, env=store["env"])
    assert made.returncode == 0, made.stderr
    server.stop()
    # Whoever took a copy of everything is in the audit trail.
    assert any(b'"backup"' in leaf and b"cli:" in leaf for leaf in _leaves(store))
    old_key_file = store["key_file"].with_name("before-erasure.key")
    shutil.copy2(store["key_file"], old_key_file)
    backup = store["copy"]()

    server = start_hub(store["backend"], env=store["env"], **store["hub"])
    hub = server.fhir_url
    refused = run_cli(hygie_bin, ["patient", "erase", *store["cli"], erased_id, "--reason", "request 113"],
                      cwd=tmp_path, env=store["env"])
    assert refused.returncode == 2 and "--yes" in refused.stderr
    done = run_cli(hygie_bin, ["patient", "erase", *store["cli"], erased_id, "--reason",
                               "GDPR Art. 17 request 2026-113", "--yes"], cwd=tmp_path, env=store["env"])
    assert done.returncode == 0, done.stderr
    assert f"Erased Patient/{erased_id}" in done.stdout
    # The running hub sees it within its recheck time (5 s by default).
    _until(lambda: one_shot("GET", f"{hub}/Patient/{erased_id}").status_code == 410)
    assert one_shot("GET", f"{hub}/Observation/{observations[0]}").status_code == 410
    assert search_ids(http, hub, "Patient", {"family": erased["name"][0]["family"]}) == []
    assert search_ids(http, hub, "Observation", {"subject": f"Patient/{erased_id}"}) == []
    assert len(search_ids(http, hub, "Observation", {})) == before_total - len(observations)
    assert one_shot("GET", f"{hub}/Patient/{kept_id}").status_code == 200
    # No new data for the erased patient.
    refused = one_shot("POST", f"{hub}/Observation", json={
        "resourceType": "Observation", "status": "final", "code": {"text": "late result"},
        "subject": {"reference": f"Patient/{erased_id}"}})
    assert refused.status_code == 410, refused.text
    server.stop()
    verified = run_cli(hygie_bin, ["audit", "verify", *store["cli"]], cwd=tmp_path, env=store["env"])
    assert verified.returncode == 0, verified.stderr
    report = run_cli(hygie_bin, ["audit", "report", *store["cli"], "--patient", erased_id, "--format", "json"],
                     cwd=tmp_path, env=store["env"])
    assert report.returncode == 0, report.stderr
    actions = [access["action"] for access in json.loads(report.stdout)["accesses"]]
    assert "erase" in actions, actions
    # The leaf keeps why, and no patient data.
    leaves = _leaves(store)
    erase_leaf = next(leaf for leaf in leaves if b'"erase"' in leaf)
    assert b"2026-113" in erase_leaf
    assert erased["name"][0]["family"].encode() not in erase_leaf

    # The backup taken before the erasure, restored with the key file as it is now: the
    # erased patient's keys are in it, wrapped, but the key file can no longer unwrap them.
    checked = run_cli(hygie_bin, ["backup", "verify", str(backup_file)], cwd=tmp_path, env=store["env"])
    assert checked.returncode == 0, checked.stderr
    target = store["empty_target"]()
    restored_run = run_cli(hygie_bin, ["backup", "restore", str(backup_file), *target["cli"]],
                           cwd=tmp_path, env=store["env"])
    assert restored_run.returncode == 0, restored_run.stderr
    restored = start_hub(store["backend"], env=store["env"], **target["hub"])
    assert one_shot("GET", f"{restored.fhir_url}/Patient/{erased_id}").status_code == 410
    assert one_shot("GET", f"{restored.fhir_url}/Observation/{observations[0]}").status_code == 410
    # Opened with this key file, the restored database gets the erasure re-applied: their
    # resources are gone from searches and counts too.
    assert search_ids(http, restored.fhir_url, "Observation", {"subject": f"Patient/{erased_id}"}) == []
    assert len(search_ids(http, restored.fhir_url, "Observation", {})) == before_total - len(observations)
    assert one_shot("GET", f"{restored.fhir_url}/Patient/{kept_id}").status_code == 200
    restored.stop()

    # The same with a plain copy of the database taken before the erasure (opened, it gets
    # the erasure the key file records re-applied: tombstones, an audit record).
    restored = start_hub(store["backend"], env=store["env"], **backup)
    assert one_shot("GET", f"{restored.fhir_url}/Patient/{erased_id}").status_code == 410
    assert one_shot("GET", f"{restored.fhir_url}/Observation/{observations[0]}").status_code == 410
    assert one_shot("GET", f"{restored.fhir_url}/Patient/{kept_id}").status_code == 200
    restored.stop()
    # With the key file as it was before the erasure, the backup still opens: why every
    # copy of the key file must be replaced after an erasure (the command says so).
    old_env = {"HYGIE_VAULT_KEY_FILE": str(old_key_file)}
    target = store["empty_target"]()
    restored_run = run_cli(hygie_bin, ["backup", "restore", str(backup_file), *target["cli"]],
                           cwd=tmp_path, env=old_env)
    assert restored_run.returncode == 0, restored_run.stderr
    old = start_hub(store["backend"], env=old_env, **target["hub"])
    assert one_shot("GET", f"{old.fhir_url}/Patient/{erased_id}").status_code == 200
    assert "replace every copy" in done.stdout


def test_key_file_rotation_is_online_and_retiring_closes_older_copies(store, hygie_bin, tmp_path,
                                                                      start_hub, http):
    older = store["copy"]()  # before any server holds the database (PostgreSQL copies need that)
    server = start_hub(store["backend"], env=store["env"], **store["hub"])
    hub = server.fhir_url
    someone = _patients()[0]
    patient_id = _find_patient(http, hub, someone)
    before = one_shot("GET", f"{hub}/Patient/{patient_id}").json()

    rotated = run_cli(hygie_bin, ["keys", "rotate", *store["cli"]], cwd=tmp_path, env=store["env"])
    assert rotated.returncode == 0, rotated.stderr
    assert "generation 2 is active" in rotated.stdout
    keyring = json.loads(store["key_file"].read_text())
    assert [g["id"] for g in keyring["generations"]] == [1, 2]
    # The running hub still reads everything, and writes.
    assert one_shot("GET", f"{hub}/Patient/{patient_id}").json() == before
    created = one_shot("POST", f"{hub}/Patient", json={"resourceType": "Patient", "name": [{"family": "Après"}]})
    assert created.status_code == 201

    retired = run_cli(hygie_bin, ["keys", "rotate", *store["cli"], "--retire-previous"], cwd=tmp_path,
                      env=store["env"])
    assert retired.returncode == 0, retired.stderr
    assert [g["id"] for g in json.loads(store["key_file"].read_text())["generations"]] == [3]
    assert _generations(store) == {3}
    _until(lambda: one_shot("GET", f"{hub}/Patient/{patient_id}").status_code == 200)
    assert one_shot("GET", f"{hub}/Patient/{created.json()['id']}").status_code == 200
    server.stop()
    assert run_cli(hygie_bin, ["audit", "verify", *store["cli"]], cwd=tmp_path).returncode == 0

    # A copy made before the rotations holds keys wrapped under generation 1, which the key
    # file no longer has.
    stale = start_hub(store["backend"], env=store["env"], **older)
    response = one_shot("GET", f"{stale.fhir_url}/Patient/{patient_id}")
    assert response.status_code == 500, response.text


def test_a_patient_key_rotation_re_encrypts_their_data(store, hygie_bin, tmp_path, start_hub, http):
    server = start_hub(store["backend"], env=store["env"], **store["hub"])
    hub = server.fhir_url
    patient_id = _find_patient(http, hub, _patients()[0])
    observations = search_ids(http, hub, "Observation", {"subject": f"Patient/{patient_id}"})
    before = {o: one_shot("GET", f"{hub}/Observation/{o}").json() for o in observations[:20]}
    keys_before = _key_ids(store, patient_id)
    done = run_cli(hygie_bin, ["keys", "rotate", *store["cli"], "--patient", patient_id], cwd=tmp_path,
                   env=store["env"])
    assert done.returncode == 0, done.stderr
    assert "Re-encrypted" in done.stdout
    keys_after = _key_ids(store, patient_id)
    assert len(keys_after) == 1 and keys_after.isdisjoint(keys_before), (keys_before, keys_after)
    for observation, body in before.items():
        assert one_shot("GET", f"{hub}/Observation/{observation}").json() == body
    unknown = run_cli(hygie_bin, ["keys", "rotate", *store["cli"], "--patient", "no-such-patient"],
                      cwd=tmp_path, env=store["env"])
    assert unknown.returncode != 0 and "no data key" in unknown.stderr


def _sql(store, query: str) -> list[tuple]:
    if store["backend"] == "sqlite":
        with sqlite3.connect(store["hub"]["data_dir"] / "hygie.db") as db:
            return db.execute(query).fetchall()
    out = subprocess.run(["psql", "-X", "-A", "-t", "-F", "\t", "-d", store["hub"]["database_url"], "-c", query],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    return [tuple(line.split("\t")) for line in out.stdout.splitlines() if line]


def _generations(store) -> set[int]:
    return {int(row[0]) for row in _sql(store, "SELECT DISTINCT generation FROM data_key WHERE wrapped IS NOT NULL")}


def _key_ids(store, patient_id: str) -> set[int]:
    """The keys that seal the patient's current data."""
    rows = _sql(store, "SELECT DISTINCT v.key_id FROM resource_versions v JOIN resources r ON v.seq = r.seq "
                       f"JOIN data_key k ON k.key_id = v.key_id WHERE k.scope = 'patient/{patient_id}'")
    return {int(row[0]) for row in rows}


def _leaves(store) -> list[bytes]:
    return [bytes(row[0]) if isinstance(row[0], (bytes, memoryview)) else bytes.fromhex(row[0][2:])
            for row in _sql(store, "SELECT leaf FROM audit_log WHERE leaf IS NOT NULL")]


def test_the_dpo_erases_over_http_and_nobody_else_can(store, hygie_bin, tmp_path, start_hub, http):
    server = start_hub(store["backend"], env=store["env"], no_auth=False, **store["hub"])
    rows = _sql(store, "SELECT scope FROM data_key WHERE scope LIKE 'patient/%' AND wrapped IS NOT NULL")
    scopes = sorted(row[0] for row in rows)
    assert len(scopes) >= 3
    patient_id = scopes[0].removeprefix("patient/")

    def bearer(subject, role, scope):
        done = run_cli(hygie_bin, ["token", *store["cli"], "--subject", subject, "--role", role,
                                   "--scope", scope], cwd=tmp_path, env=store["env"])
        assert done.returncode == 0, done.stderr
        return {"Authorization": f"Bearer {done.stdout.strip()}"}

    url = f"{server.root_url}/admin/patients/{patient_id}/erase"
    reason = {"reason": "GDPR Art. 17 request 2026-114"}
    for role, scope in (("clinician", "user/*.cruds"), ("security", "user/AuditEvent.rs"),
                        ("admin", "system/*.cruds")):
        refused = one_shot("POST", url, json=reason, headers=bearer(f"Practitioner/{role}", role, scope))
        assert refused.status_code == 403, (role, refused.text)
    assert one_shot("POST", url, json=reason).status_code == 401
    dpo = bearer("Practitioner/dpo1", "dpo", "user/AuditEvent.rs")
    missing = one_shot("POST", url, json={}, headers=dpo)
    assert missing.status_code == 400 and "reason" in missing.text
    still = _sql(store, f"SELECT count(*) FROM data_key WHERE scope = 'patient/{patient_id}' AND wrapped IS NOT NULL")
    assert int(still[0][0]) == 1, "refused attempts erased nothing"

    done = one_shot("POST", url, json=reason, headers=dpo)
    assert done.status_code == 200, done.text
    assert "erased" in done.text
    gone = _sql(store, f"SELECT count(*) FROM data_key WHERE scope = 'patient/{patient_id}' AND wrapped IS NOT NULL")
    assert int(gone[0][0]) == 0
    assert json.loads(store["key_file"].read_text()).get("erased_slots"), "the key file was punctured"
    erase_leaves = [leaf for leaf in _leaves(store) if b'"erase"' in leaf]
    assert any(b"Practitioner/dpo1" in leaf and b"2026-114" in leaf for leaf in erase_leaves)
    # Refusals were recorded too.
    assert any(b"Practitioner/clinician" in leaf for leaf in erase_leaves)
