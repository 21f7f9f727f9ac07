"""Two `hygie serve` processes on ONE PostgreSQL database (stateless hub nodes): what one
writes the other reads, and concurrent If-Match updates from both let exactly one win per
version."""

from __future__ import annotations

import json
import threading
from collections import Counter

import pytest
import requests

from e2e_support import (
    FHIR_JSON,
    assert_outcome,
    check_resource,
    create,
    history_entries,
    patient,
    read,
    search_ids,
)

ROUNDS = 12  # lock-step rounds: both nodes update the same version at once
FREE_RUN_WRITERS_PER_NODE = 3
FREE_RUN_ATTEMPTS = 15  # per writer


@pytest.fixture
def two_nodes(start_hub):
    first = start_hub("postgres")
    second = start_hub("postgres", database_url=first.database_url)
    return first.fhir_url, second.fhir_url


def _session() -> requests.Session:
    session = requests.Session()
    session.headers["Accept"] = FHIR_JSON
    return session


def _put(session, url: str, body: dict, if_match: str) -> requests.Response:
    return session.put(url, data=json.dumps(body), timeout=30,
                       headers={"Content-Type": FHIR_JSON, "If-Match": if_match})


def test_write_on_one_node_read_on_the_other(two_nodes, http):
    a, b = two_nodes
    created = create(http, a, patient())
    pid = created["id"]
    assert read(http, b, f"Patient/{pid}") == created
    mrn = created["identifier"][0]["value"]
    assert search_ids(http, b, "Patient", {"identifier": f"urn:oid:1.2.250.1.999.1|{mrn}"}) == [pid]

    updated = check_resource(http.put(f"{b}/Patient/{pid}", json=dict(created, gender="male")), 200, "Patient")
    assert updated["meta"]["versionId"] == "2"
    assert read(http, a, f"Patient/{pid}") == updated
    assert len(history_entries(http, f"{a}/Patient/{pid}/_history")) == 2

    assert http.delete(f"{a}/Patient/{pid}").status_code == 204
    assert_outcome(http.get(f"{b}/Patient/{pid}"), 410)
    assert read(http, b, f"Patient/{pid}/_history/2") == updated

    # A conditional create on each node with the same identifier: one resource.
    condition = {"If-None-Exist": f"identifier=urn:oid:1.2.250.1.999.1|shared-{pid}"}
    first = http.post(f"{a}/Patient", json=patient(f"shared-{pid}"), headers=condition)
    second = http.post(f"{b}/Patient", json=patient(f"shared-{pid}"), headers=condition)
    assert (first.status_code, second.status_code) == (201, 200), (first.status_code, second.status_code)
    assert len(search_ids(http, a, "Patient", {"identifier": f"urn:oid:1.2.250.1.999.1|shared-{pid}"})) == 1


def test_concurrent_if_match_updates_from_both_nodes(two_nodes, http):
    a, b = two_nodes
    current = create(http, a, patient())
    pid = current["id"]
    sessions = {a: _session(), b: _session()}

    for round_number in range(1, ROUNDS + 1):
        version = current["meta"]["versionId"]
        barrier = threading.Barrier(2)
        results: dict[str, requests.Response] = {}

        def attempt(node: str, family: str) -> None:
            body = {k: v for k, v in current.items() if k != "meta"}
            body["name"] = [{"family": family}]
            barrier.wait(timeout=30)
            results[node] = _put(sessions[node], f"{node}/Patient/{pid}", body, f'W/"{version}"')

        threads = [threading.Thread(target=attempt, args=(node, f"{tag}{round_number}"))
                   for node, tag in ((a, "A"), (b, "B"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        statuses = sorted(r.status_code for r in results.values())
        assert len(results) == 2 and statuses[0] == 200 and statuses[1] in (409, 412), (
            f"round {round_number} (If-Match W/\"{version}\"): exactly one update may win, the other "
            f"gets 412 or 409; got {[(n, r.status_code, r.text[:200]) for n, r in results.items()]}"
        )
        winner = next(r for r in results.values() if r.status_code == 200)
        loser = next(r for r in results.values() if r.status_code != 200)
        assert_outcome(loser, loser.status_code)
        current = check_resource(winner, 200, "Patient")
        assert current["meta"]["versionId"] == str(int(version) + 1)
        assert read(http, a, f"Patient/{pid}") == current
        assert read(http, b, f"Patient/{pid}") == current

    entries = history_entries(http, f"{b}/Patient/{pid}/_history")
    versions = [e["resource"]["meta"]["versionId"] for e in entries]
    assert sorted(map(int, versions)) == list(range(1, ROUNDS + 2)), versions


def test_free_running_read_modify_write_from_both_nodes(two_nodes, http):
    """Writers on both nodes loop read → PUT with If-Match. Every 200 is a distinct version,
    and the history has exactly one version per success (no lost update)."""
    a, b = two_nodes
    created = create(http, a, patient())
    pid = created["id"]
    successes: list[tuple[str, str]] = []  # (versionId, family written)
    refused = Counter()
    problems: list[str] = []
    responses: list[requests.Response] = []  # validated after the run
    lock = threading.Lock()

    def writer(node: str, name: str) -> None:
        session = _session()
        for attempt in range(FREE_RUN_ATTEMPTS):
            got = session.get(f"{node}/Patient/{pid}", timeout=30)
            if got.status_code != 200:
                with lock:
                    problems.append(f"read {got.status_code}: {got.text[:200]}")
                return
            with lock:
                responses.append(got)
            body = got.json()
            version = body.pop("meta")["versionId"]
            family = f"{name}-{attempt}"
            body["name"] = [{"family": family}]
            response = _put(session, f"{node}/Patient/{pid}", body, f'W/"{version}"')
            with lock:
                responses.append(response)
                if response.status_code == 200:
                    successes.append((response.json()["meta"]["versionId"], family))
                elif response.status_code in (409, 412):
                    refused[response.status_code] += 1
                else:
                    problems.append(f"PUT {response.status_code}: {response.text[:200]}")
        session.close()

    threads = [threading.Thread(target=writer, args=(node, f"{tag}{n}"))
               for node, tag in ((a, "A"), (b, "B")) for n in range(FREE_RUN_WRITERS_PER_NODE)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive(), "a writer hung"
    assert not problems, problems[:5]
    assert successes, "no update succeeded"
    for response in responses:
        if response.status_code == 200:
            check_resource(response, 200, "Patient")
        else:
            assert_outcome(response, response.status_code)

    versions = [v for v, _ in successes]
    assert len(set(versions)) == len(versions), f"two successful updates got the same version: {Counter(versions)}"
    entries = history_entries(http, f"{a}/Patient/{pid}/_history")
    assert len(entries) == 1 + len(successes), (
        f"history has {len(entries)} versions, expected 1 + {len(successes)} successes ({dict(refused)} refused)"
    )
    by_version = {e["resource"]["meta"]["versionId"]: e["resource"]["name"][0]["family"] for e in entries}
    for version, family in successes:
        assert by_version.get(version) == family, f"version {version} should hold {family}, holds {by_version.get(version)}"
    final = read(http, b, f"Patient/{pid}")
    assert final["meta"]["versionId"] == str(1 + len(successes))


def test_concurrent_conditional_creates_from_both_nodes(two_nodes, http):
    """The same conditional create sent to both nodes at once creates ONE resource: the other
    answers 200 with it (or refuses with 409/412), never a duplicate."""
    a, b = two_nodes
    sessions = {a: _session(), b: _session()}
    duplicates = []
    for round_number in range(ROUNDS):
        mrn = f"race-{round_number}"
        barrier = threading.Barrier(2)
        results: dict[str, requests.Response] = {}

        def attempt(node: str) -> None:
            barrier.wait(timeout=30)
            results[node] = sessions[node].post(
                f"{node}/Patient", data=json.dumps(patient(mrn)), timeout=30,
                headers={"Content-Type": FHIR_JSON, "If-None-Exist": f"identifier=urn:oid:1.2.250.1.999.1|{mrn}"})

        threads = [threading.Thread(target=attempt, args=(node,)) for node in (a, b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        for response in results.values():
            if response.status_code in (200, 201):
                check_resource(response, response.status_code, "Patient")
            else:
                assert_outcome(response, response.status_code)
        statuses = sorted(r.status_code for r in results.values())
        assert statuses[0] in (200, 201) and all(s in (200, 201, 409, 412) for s in statuses), (
            f"round {round_number}: {[(r.status_code, r.text[:200]) for r in results.values()]}"
        )
        ids = search_ids(http, a, "Patient", {"identifier": f"urn:oid:1.2.250.1.999.1|{mrn}"})
        if len(ids) != 1:
            duplicates.append(f"round {round_number}: statuses {statuses}, {len(ids)} Patients {ids}")
    assert not duplicates, "concurrent conditional creates made duplicates:\n" + "\n".join(duplicates)


def test_two_nodes_write_one_audit_log_that_verifies(start_hub, hygie_bin, tmp_path):
    """Both nodes append concurrently; one integrator at a time numbers the leaves densely
    and signs: every request is one leaf, each node's checkpoints are consistent with the
    other's, and `hygie audit verify` passes."""
    import rfc9162
    from e2e_support import run_cli

    settings = tmp_path / "audit.toml"
    settings.write_text("[audit]\nintegrate_every_ms = 20\ncheckpoint_every_seconds = 1\n")
    first = start_hub("postgres", args=["--config", str(settings)])
    second = start_hub("postgres", database_url=first.database_url, args=["--config", str(settings)])
    sent: list[str] = []
    lock = threading.Lock()

    def client(node, n: int) -> None:
        session = _session()
        for i in range(n):
            answer = (session.post(f"{node.fhir_url}/Patient", data=json.dumps(patient(f"log-{id(node)}-{i}")),
                                   headers={"Content-Type": FHIR_JSON}, timeout=30)
                      if i % 4 == 0 else session.get(f"{node.fhir_url}/Patient", params={"_count": "1"}, timeout=30))
            assert answer.status_code in (200, 201), answer.text
            with lock:
                sent.append(answer.headers["X-Request-Id"])

    threads = [threading.Thread(target=client, args=(node, 40)) for node in (first, second) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(sent) == 240
    vkey = requests.get(f"{first.root_url}/audit/key", timeout=10).text.strip()
    assert requests.get(f"{second.root_url}/audit/key", timeout=10).text.strip() == vkey, "one log, one key"

    def checkpoint(node) -> tuple[int, bytes]:
        note = requests.get(f"{node.root_url}/audit/checkpoint", timeout=10)
        _, size, root, _ = rfc9162.parse_checkpoint(rfc9162.verify_note(note.text, vkey).body)
        return size, root

    older = checkpoint(first)
    newer = checkpoint(second)
    if older[0] > newer[0]:
        older, newer = newer, older
    if older[0] > 0 and older[0] < newer[0]:
        proof = requests.get(f"{second.root_url}/audit/proof/consistency",
                             params={"from": older[0], "to": newer[0]}, timeout=10).json()["hashes"]
        import base64
        rfc9162.verify_consistency(older[0], newer[0], [base64.b64decode(h) for h in proof], older[1], newer[1])
    first.stop()
    second.stop()
    done = run_cli(hygie_bin, ["audit", "verify", "--database", first.database_url], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    leaves = int(done.stdout.split("verified: ")[1].split(" leaves")[0])
    assert leaves >= 240
    assert "0 leaves not yet integrated" in done.stdout
    # Every request is exactly one leaf of the one log.
    import subprocess
    rows = subprocess.run(["psql", "-X", "-w", "-q", "-A", "-t", "-d", first.database_url, "-c",
                           "SELECT leaf_index, convert_from(leaf, 'UTF8')::jsonb->'meta'->'tag'->0->>'code' "
                           "FROM audit_log ORDER BY leaf_index"],
                          capture_output=True, text=True, timeout=60, check=True).stdout.split()
    indices = [int(row.split("|")[0]) for row in rows]
    assert indices == list(range(len(indices))), "dense leaf indices"
    tags = Counter(row.split("|")[1] for row in rows)
    assert all(tags[request_id] == 1 for request_id in sent), "one leaf per request"
