"""Operating the server: health probes, request ids, graceful shutdown without losing
acknowledged writes, refusal of unsafe exposure, authentication required by default, TLS,
and settings precedence (flag > environment > TOML file)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from e2e_support import (
    FHIR_JSON,
    MRN_SYSTEM,
    Process,
    assert_outcome,
    check_resource,
    free_port,
    one_shot,
    patient,
    run_cli,
    search_ids,
    system_history_size,
    wait_http_ok,
)

REFUSAL_TIMEOUT_S = 20  # a refusing `hygie serve` exits at once; one still running failed to refuse
SHUTDOWN_WRITERS = 6
SHUTDOWN_MIN_ACKED_BEFORE_SIGTERM = 40


# ---------------------------------------------------------------------------------------
# Probes and request ids


def test_health_probes(hub_server, http):
    for path in ("/healthz", "/readyz"):
        response = http.get(hub_server.root_url + path)
        assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text[:500]}"


def test_request_id_is_echoed_or_generated(hub_server, http):
    hub = hub_server.fhir_url
    sent = "e2e-req-0001.abc:xyz_9"
    for method, url in (("GET", f"{hub}/metadata"), ("GET", f"{hub}/Patient/unknown"),
                        ("GET", hub_server.root_url + "/healthz")):
        response = http.request(method, url, headers={"X-Request-Id": sent})
        assert response.headers.get("X-Request-Id") == sent, f"{method} {url}: {response.headers}"
    created = http.post(f"{hub}/Patient", json=patient(), headers={"X-Request-Id": sent})
    assert created.status_code == 201 and created.headers.get("X-Request-Id") == sent

    generated = set()
    for _ in range(3):
        response = http.get(f"{hub}/metadata")
        value = response.headers.get("X-Request-Id", "")
        assert value.strip(), f"a request without X-Request-Id gets a generated one: {response.headers}"
        generated.add(value)
    assert len(generated) == 3, f"generated request ids must differ: {generated}"

    # An id that is not safe to log is replaced, not echoed.
    for unsafe in ("has spaces in it", "x" * 500, "a\tb"):
        response = http.get(f"{hub}/metadata", headers={"X-Request-Id": unsafe})
        echoed = response.headers.get("X-Request-Id", "")
        assert echoed and echoed != unsafe, f"unsafe request id {unsafe[:20]!r} echoed as {echoed[:40]!r}"


# ---------------------------------------------------------------------------------------
# Graceful shutdown


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_graceful_shutdown_keeps_every_acknowledged_write(start_hub, backend):
    server = start_hub(backend)
    hub = server.fhir_url
    acked: list[tuple[str, str]] = []  # (mrn, id) answered 201
    acked_at: list[float] = []
    bodies: list[requests.Response] = []  # validated after the run (not in the writer threads)
    cut = [0]  # requests that failed at the transport level (refused or cut by the shutdown)
    unexpected: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(number: int) -> None:
        session = requests.Session()
        sequence = 0
        while not stop.is_set():
            sequence += 1
            mrn = f"shutdown-{number}-{sequence}"
            try:
                response = session.post(f"{hub}/Patient", data=json.dumps(patient(mrn)),
                                        headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}, timeout=30)
            except requests.RequestException:
                # Refused or cut by the shutdown: not acknowledged, so nothing was promised.
                with lock:
                    cut[0] += 1
                if not server.running:
                    break
                time.sleep(0.01)
                continue
            with lock:
                if response.status_code == 201:
                    acked.append((mrn, response.json()["id"]))
                    acked_at.append(time.monotonic())
                    bodies.append(response)
                elif response.status_code != 503:
                    unexpected.append(f"{response.status_code}: {response.text[:300]}")
        session.close()

    threads = [threading.Thread(target=writer, args=(n,), daemon=True) for n in range(SHUTDOWN_WRITERS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(acked) < SHUTDOWN_MIN_ACKED_BEFORE_SIGTERM and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(acked) >= SHUTDOWN_MIN_ACKED_BEFORE_SIGTERM, f"only {len(acked)} creates in 60 s"

    sigterm_at = time.monotonic()
    server.stop()  # SIGTERM while the writers are busy; fails unless the exit code is 0
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive(), "a writer thread hung after the shutdown"
    assert not unexpected, f"answers other than 201 (or 503) during shutdown: {unexpected[:5]}"
    for response in bodies:
        check_resource(response, 201, "Patient")
    drained = sum(1 for t in acked_at if t > sigterm_at)
    print(f"{len(acked)} creates acknowledged, {drained} of them after SIGTERM; {cut[0]} cut or refused")

    again = start_hub(backend, data_dir=server.data_dir, database_url=server.database_url)
    with requests.Session() as http:
        http.headers["Accept"] = FHIR_JSON
        lost = []
        for mrn, rid in acked:
            response = http.get(f"{again.fhir_url}/Patient/{rid}")
            if response.status_code != 200:
                lost.append(f"Patient/{rid} ({mrn}): {response.status_code}")
            elif check_resource(response, 200, "Patient")["identifier"][0]["value"] != mrn:
                lost.append(f"Patient/{rid} ({mrn}): another identifier")
        assert not lost, f"{len(lost)} of {len(acked)} acknowledged creates were lost: {lost[:10]}"
        stored = search_ids(http, again.fhir_url, "Patient", {"identifier": f"{MRN_SYSTEM}|", "_count": "500"})
        assert len(stored) >= len(acked)
        assert len(set(stored)) == len(stored)


# ---------------------------------------------------------------------------------------
# Refusals


def _refused(hygie_bin: Path, tmp_path: Path, args: list[str], env: dict | None = None) -> str:
    """Runs `hygie serve ARGS`, asserts it exits non-zero at once; returns its output."""
    done = run_cli(hygie_bin, ["serve", *args], cwd=tmp_path, env=env, timeout_s=REFUSAL_TIMEOUT_S)
    output = done.stdout + done.stderr
    assert done.returncode != 0, f"hygie serve {' '.join(args)} should refuse to start:\n{output}"
    return output


def test_no_auth_outside_loopback_is_refused(hygie_bin, tmp_path):
    port = free_port()
    data_dir = tmp_path / "data"
    output = _refused(hygie_bin, tmp_path, ["--listen", f"0.0.0.0:{port}", "--no-auth", "--data-dir", str(data_dir)])
    assert "--no-auth" in output and "loopback" in output, f"the message should explain the refusal:\n{output}"
    # The same through the environment and through the settings file.
    output = _refused(hygie_bin, tmp_path, ["--listen", f"0.0.0.0:{port}", "--data-dir", str(data_dir)],
                      env={"HYGIE_NO_AUTH": "true", "HYGIE_INSECURE_HTTP": "true"})
    assert "loopback" in output, output
    config = tmp_path / "hygie.toml"
    config.write_text(f'listen = "0.0.0.0:{port}"\nno_auth = true\ninsecure_http = true\n')
    output = _refused(hygie_bin, tmp_path, ["--config", str(config), "--data-dir", str(data_dir)])
    assert "loopback" in output, output
    assert not data_dir.exists() or not any(data_dir.iterdir()), "a refused start must not create a store"


def test_plain_http_outside_loopback_is_refused(hygie_bin, tmp_path):
    port = free_port()
    output = _refused(hygie_bin, tmp_path, ["--listen", f"0.0.0.0:{port}", "--data-dir", str(tmp_path / "d")])
    assert "--insecure-http" in output and "tls" in output.lower(), f"the message should say what to do:\n{output}"


def test_insecure_http_outside_loopback_starts_with_authentication(hygie_bin, tmp_path):
    """The positive control of the refusals: with --insecure-http (a TLS proxy in front) the
    server starts, and still requires authentication."""
    port = free_port()
    process = Process([hygie_bin, "serve", "--listen", f"0.0.0.0:{port}", "--insecure-http",
                       "--data-dir", tmp_path / "data"], cwd=tmp_path)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", process=process.process)
        response = one_shot("GET", f"http://127.0.0.1:{port}/fhir/Patient")
        assert_outcome(response, 401)
        assert process.signal_and_wait(signal.SIGTERM) == 0, process.output()[-3000:]
    finally:
        process.close()


# ---------------------------------------------------------------------------------------
# Authentication


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_data_requires_authentication(start_hub, backend, http):
    server = start_hub(backend, no_auth=False)
    hub = server.fhir_url
    statement = check_resource(http.get(f"{hub}/metadata"), 200, "CapabilityStatement")
    assert statement["fhirVersion"] == "4.0.1"
    assert http.get(server.root_url + "/healthz").status_code == 200

    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"resource": patient(), "request": {"method": "POST", "url": "Patient"}}]}
    attempts = [
        ("GET", f"{hub}/Patient", None),
        ("GET", f"{hub}/Patient/some-id", None),  # 401, not 404: nothing is told about ids
        ("GET", f"{hub}/_history", None),
        ("GET", f"{hub}/Patient/some-id/_history/1", None),
        ("POST", f"{hub}/Patient", patient()),
        ("PUT", f"{hub}/Patient/chosen-id", patient(id="chosen-id")),
        ("DELETE", f"{hub}/Patient/some-id", None),
        ("POST", hub, bundle),
    ]
    for token in (None, "Bearer not-a-jwt", "Basic dXNlcjpwYXNz"):
        headers = {"Authorization": token} if token else {}
        for method, url, body in attempts:
            response = one_shot(method, url, json=body, headers=headers)
            assert_outcome(response, 401)
            assert response.headers.get("WWW-Authenticate"), (
                f"{method} {url}: a 401 must carry WWW-Authenticate (RFC 9110 §11.6.1)"
            )
    server.stop()

    # Nothing was written by the refused requests.
    again = start_hub(backend, data_dir=server.data_dir, database_url=server.database_url)
    assert system_history_size(http, again.fhir_url) == 0
    assert_outcome(http.get(f"{again.fhir_url}/Patient/chosen-id"), 404)


# ---------------------------------------------------------------------------------------
# TLS


@pytest.fixture
def self_signed(tmp_path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("the openssl CLI is needed to make a test certificate (apt-get install openssl)", pytrace=False)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    done = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, f"openssl failed: {done.stderr}"
    return cert, key


def test_tls(hygie_bin, tmp_path, self_signed):
    cert, key = self_signed
    port = free_port()
    process = Process([hygie_bin, "serve", "--listen", f"127.0.0.1:{port}", "--no-auth", "--data-dir",
                       tmp_path / "data", "--tls-cert", cert, "--tls-key", key], cwd=tmp_path)
    base = f"https://127.0.0.1:{port}/fhir"
    try:
        wait_http_ok(f"https://127.0.0.1:{port}/healthz", process=process.process, verify=str(cert))
        with requests.Session() as https:
            # verify= per request: a Session's verify loses to REQUESTS_CA_BUNDLE in the environment.
            https.headers["Accept"] = FHIR_JSON
            response = https.post(f"{base}/Patient", data=json.dumps(patient()),
                                  headers={"Content-Type": FHIR_JSON}, timeout=30, verify=str(cert))
            created = check_resource(response, 201, "Patient")
            assert response.headers.get("Location") == f"{base}/Patient/{created['id']}/_history/1", (
                f"links of an HTTPS server are https: {response.headers.get('Location')}"
            )
            read_back = https.get(f"{base}/Patient/{created['id']}", timeout=30, verify=str(cert))
            assert check_resource(read_back, 200, "Patient") == created
        # Plain HTTP on the TLS port serves nothing.
        try:
            plain = requests.get(f"http://127.0.0.1:{port}/fhir/Patient/{created['id']}", timeout=10)
            assert created["id"] not in plain.text, "patient data served over plain HTTP"
            assert plain.status_code != 200
        except requests.RequestException:
            pass
        # A client that does not trust the certificate is refused by the handshake.
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{base}/metadata", timeout=10)
        assert process.signal_and_wait(signal.SIGTERM) == 0, process.output()[-3000:]
    finally:
        process.close()


def test_tls_with_a_missing_key_is_refused(hygie_bin, tmp_path, self_signed):
    cert, _ = self_signed
    output = _refused(hygie_bin, tmp_path, ["--listen", f"127.0.0.1:{free_port()}", "--no-auth", "--data-dir",
                                            str(tmp_path / "d"), "--tls-cert", str(cert), "--tls-key",
                                            str(tmp_path / "missing.pem")])
    assert "missing.pem" in output, output


# ---------------------------------------------------------------------------------------
# Settings: TOML file < environment < flag


def _body_of(size: int) -> bytes:
    body = patient()
    body["name"][0]["text"] = ""
    base = len(json.dumps(body).encode())
    body["name"][0]["text"] = "x" * (size - base)
    return json.dumps(body).encode()


def _accepts(hub: str, size: int) -> bool:
    response = one_shot("POST", f"{hub}/Patient", data=_body_of(size), headers={"Content-Type": FHIR_JSON})
    if response.status_code == 201:
        check_resource(response, 201, "Patient")
        return True
    assert_outcome(response, 413)
    return False


def test_settings_precedence(start_hub, tmp_path, monkeypatch):
    for name in ("HYGIE_MAX_BODY_BYTES", "HYGIE_CONFIG"):
        monkeypatch.delenv(name, raising=False)  # the servers inherit the test's environment
    config = tmp_path / "hygie.toml"
    config.write_text("[limits]\nmax_body_bytes = 2048\n")

    file_only = start_hub("sqlite", args=["--config", str(config)])
    assert _accepts(file_only.fhir_url, 2000) and not _accepts(file_only.fhir_url, 3000), "the file's limit"
    file_only.stop()

    with_env = start_hub("sqlite", args=["--config", str(config)], env={"HYGIE_MAX_BODY_BYTES": "4096"})
    assert _accepts(with_env.fhir_url, 3000) and not _accepts(with_env.fhir_url, 5000), "env overrides the file"
    with_env.stop()

    with_flag = start_hub("sqlite", args=["--config", str(config), "--max-body-bytes", "8192"],
                          env={"HYGIE_MAX_BODY_BYTES": "4096"})
    assert _accepts(with_flag.fhir_url, 5000) and not _accepts(with_flag.fhir_url, 9000), "a flag overrides env"


def test_settings_from_the_environment_variable_HYGIE_CONFIG(start_hub, tmp_path, monkeypatch):
    monkeypatch.delenv("HYGIE_MAX_BODY_BYTES", raising=False)
    config = tmp_path / "via-env.toml"
    config.write_text("[limits]\nmax_body_bytes = 2048\nmax_bundle_entries = 2\n")
    server = start_hub("sqlite", env={"HYGIE_CONFIG": str(config)})
    assert not _accepts(server.fhir_url, 3000)
    bundle = {"resourceType": "Bundle", "type": "batch",
              "entry": [{"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}] * 3}
    assert_outcome(one_shot("POST", server.fhir_url, json=bundle), 413)


def test_invalid_settings_file_is_refused(hygie_bin, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits]\nmax_body_bytez = 2048\n")
    output = _refused(hygie_bin, tmp_path, ["--listen", f"127.0.0.1:{free_port()}", "--no-auth",
                                            "--data-dir", str(tmp_path / "d"), "--config", str(bad)])
    assert "bad.toml" in output and "max_body_bytez" in output, f"name the file and the key:\n{output}"
    output = _refused(hygie_bin, tmp_path, ["--listen", f"127.0.0.1:{free_port()}", "--no-auth",
                                            "--data-dir", str(tmp_path / "d"), "--config", str(tmp_path / "nope.toml")])
    assert "nope.toml" in output, output
    output = _refused(hygie_bin, tmp_path, ["--listen", f"127.0.0.1:{free_port()}", "--no-auth",
                                            "--data-dir", str(tmp_path / "d"), "--max-body-bytes", "10"])
    assert "max_body_bytes" in output, output
    zero_wal = tmp_path / "zero-wal.toml"
    zero_wal.write_text("[sqlite]\nwal_limit_mib = 0\n")
    output = _refused(hygie_bin, tmp_path, ["--listen", f"127.0.0.1:{free_port()}", "--no-auth",
                                            "--data-dir", str(tmp_path / "d"), "--config", str(zero_wal)])
    assert "wal_limit_mib" in output, output
    zero_cache = tmp_path / "zero-cache.toml"
    zero_cache.write_text("[sqlite]\ncache_mib = 0\n")
    output = _refused(hygie_bin, tmp_path, ["--listen", f"127.0.0.1:{free_port()}", "--no-auth",
                                            "--data-dir", str(tmp_path / "d"), "--config", str(zero_cache)])
    assert "cache_mib" in output, output
    no_readers = tmp_path / "no-readers.toml"
    no_readers.write_text("[sqlite]\nreaders = 0\n")
    output = _refused(hygie_bin, tmp_path, ["--listen", f"127.0.0.1:{free_port()}", "--no-auth",
                                            "--data-dir", str(tmp_path / "d"), "--config", str(no_readers)])
    assert "sqlite.readers" in output, output


def test_request_time_limit_answers_503_with_an_outcome(start_hub, http):
    """A request running past --request-timeout-ms gets a 503 OperationOutcome (code
    timeout); the server keeps serving; and with --log-format json every log line is JSON."""
    server = start_hub("sqlite", args=["--request-timeout-ms", "1", "--log-format", "json"])
    bundle = json.loads(
        (Path(__file__).resolve().parents[2] / "testdata/synthea/Denny_Bins_bc0fbd67-bfe3-46c8-8ce9-ef20b0705b46.json").read_text()
    )
    response = http.post(server.fhir_url, json=bundle)
    assert response.status_code == 503, response.text[:500]
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "timeout"
    assert "request_timeout" in outcome["issue"][0]["diagnostics"]
    assert http.get(server.root_url + "/healthz").status_code == 200
    lines = [line for line in server.log_text().splitlines() if line.strip().startswith("{")]
    assert lines, server.log_text()[:2000]
    for line in lines:
        record = json.loads(line)
        assert "level" in record and "fields" in record
