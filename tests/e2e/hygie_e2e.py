"""Helpers for Hygie's end-to-end tests: run a real `hygie serve`, check what it answers.

The fixtures in conftest.py build on these; tests import the assertions directly:

    from hygie_e2e import assert_valid_r4, assert_operation_outcome

Every failure here says what went wrong and shows the server's output, because an e2e
failure in CI is read by someone who cannot rerun it on the same machine.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping

import pytest
import requests

# Bounds, each with the reason for its size.
HEALTH_TIMEOUT_S = 30  # a debug build creating keys and schema on first start is well under this
HEALTH_POLL_INTERVAL_S = 0.1
HEALTH_PROBE_TIMEOUT_S = 2  # one /healthz probe; the server may be busy starting
STOP_TIMEOUT_S = 30  # graceful shutdown drains requests and flushes the audit log
HTTP_TIMEOUT_S = 30  # default per-request timeout of the `http` fixture's session
PSQL_TIMEOUT_S = 60  # CREATE/DROP DATABASE on a loaded CI machine
START_ATTEMPTS_MAX = 3  # retries when the free port we picked was taken in between
LOG_TAIL_CHARS_MAX = 12_000  # how much server output a failure message shows

FHIR_JSON = "application/fhir+json"


# --------------------------------------------------------------------------------------
# FHIR assertions


def assert_valid_r4(resource: Mapping[str, Any]) -> Any:
    """Asserts that `resource` (parsed JSON) is a valid FHIR R4 (4.0.1) resource.

    Validates with fhir.resources' R4 models; for a Bundle, every entry's resource is also
    validated on its own so that a failure names the entry. Returns the parsed model.
    """
    __tracebackhide__ = True  # failures point at the test, not at this helper
    # Imported here so that a broken venv fails the tests that validate, with this traceback.
    from fhir.resources import construct_fhir_element

    assert isinstance(resource, Mapping), f"expected a JSON object, got {type(resource).__name__}"
    resource_type = resource.get("resourceType")
    assert isinstance(resource_type, str) and resource_type, (
        f"no resourceType in {_short_json(resource)}"
    )
    if resource_type == "Bundle":
        for index, entry in enumerate(resource.get("entry") or []):
            inner = entry.get("resource") if isinstance(entry, Mapping) else None
            if inner is None:
                continue  # e.g. a transaction-response entry with only `response`
            try:
                assert_valid_r4(inner)
            except AssertionError as err:
                raise AssertionError(f"Bundle.entry[{index}].resource: {err}") from None
    try:
        return construct_fhir_element(resource_type, dict(resource))
    except Exception as err:  # pydantic.ValidationError, KeyError for unknown types, ...
        raise AssertionError(
            f"not a valid FHIR R4 {resource_type}: {err}\nresource: {_short_json(resource)}"
        ) from None


def assert_operation_outcome(response: requests.Response, status: int) -> dict:
    """Asserts that `response` has HTTP `status` and a valid OperationOutcome body.

    Returns the OperationOutcome as parsed JSON, for checks on its issues.
    """
    __tracebackhide__ = True  # failures point at the test, not at this helper
    assert response.status_code == status, (
        f"{response.request.method} {response.url}: expected HTTP {status}, "
        f"got {response.status_code}: {response.text[:2000]}"
    )
    body = fhir_json(response)
    assert body.get("resourceType") == "OperationOutcome", (
        f"expected an OperationOutcome, got {_short_json(body)}"
    )
    assert body.get("issue"), "an OperationOutcome needs at least one issue"
    assert_valid_r4(body)
    return body


def fhir_json(response: requests.Response) -> dict:
    """The JSON body of a FHIR response, after checking its Content-Type."""
    __tracebackhide__ = True  # failures point at the test, not at this helper
    content_type = response.headers.get("Content-Type", "")
    assert content_type.split(";")[0].strip() == FHIR_JSON, (
        f"{response.request.method} {response.url}: Content-Type is {content_type!r}, "
        f"expected {FHIR_JSON}"
    )
    try:
        return response.json()
    except ValueError:
        raise AssertionError(
            f"{response.request.method} {response.url}: body is not JSON: {response.text[:2000]!r}"
        ) from None


def _short_json(value: Any, limit: int = 2000) -> str:
    import json

    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + "…"


# --------------------------------------------------------------------------------------
# HTTP


class FhirSession(requests.Session):
    """A requests.Session that speaks FHIR JSON and never waits forever."""

    def __init__(self, timeout_s: float = HTTP_TIMEOUT_S):
        super().__init__()
        self.timeout_s = timeout_s
        self.headers.update({"Accept": FHIR_JSON})

    def request(self, method, url, *args, **kwargs):  # type: ignore[override]
        kwargs.setdefault("timeout", self.timeout_s)
        if kwargs.get("json") is not None:
            # requests would say application/json; FHIR servers expect this.
            headers = dict(kwargs.get("headers") or {})
            if not any(key.lower() == "content-type" for key in headers):
                headers["Content-Type"] = FHIR_JSON
            kwargs["headers"] = headers
        return super().request(method, url, *args, **kwargs)


# --------------------------------------------------------------------------------------
# The server under test


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the server may still lose it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when pytest dies (Linux), so no server outlives
    a killed test run."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:
        pass  # not Linux: the fixtures' teardown still stops the server


def tail(text: str, limit: int = LOG_TAIL_CHARS_MAX) -> str:
    return text if len(text) <= limit else "…(earlier output cut)…\n" + text[-limit:]


class HygieServer:
    """One `hygie serve` process on a free loopback port.

    Attributes a test may use: `root_url` (http://127.0.0.1:PORT), `fhir_url` (…/fhir),
    `backend` ("sqlite" or "postgres"), `data_dir` (sqlite), `database_url` (postgres),
    `workdir` (the process's cwd, holding its output in `server.log`), `process`.
    """

    def __init__(
        self,
        binary: Path,
        backend: str,
        workdir: Path,
        *,
        data_dir: Path | None = None,
        database_url: str | None = None,
        no_auth: bool = True,
        args: Iterable[str] = (),
        env: Mapping[str, str] | None = None,
    ):
        if backend not in ("sqlite", "postgres"):
            raise ValueError(f"unknown backend {backend!r}: expected 'sqlite' or 'postgres'")
        if backend == "sqlite" and data_dir is None:
            raise ValueError("a sqlite server needs a data_dir")
        if backend == "postgres" and not database_url:
            raise ValueError("a postgres server needs a database_url")
        self.binary = binary
        self.backend = backend
        self.workdir = workdir
        self.data_dir = data_dir
        self.database_url = database_url
        self.no_auth = no_auth
        self.extra_args = list(args)
        self.env = dict(env or {})
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.stopped = False
        self.log_path = workdir / "server.log"
        self.root_url = ""
        self.fhir_url = ""

    def command(self) -> list[str]:
        cmd = [str(self.binary), "serve", "--listen", f"127.0.0.1:{self.port}"]
        if self.no_auth:
            cmd.append("--no-auth")
        if self.backend == "sqlite":
            cmd += ["--data-dir", str(self.data_dir)]
        else:
            cmd += ["--database", str(self.database_url)]
        return cmd + self.extra_args

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no output file)"

    def describe(self) -> str:
        return (
            f"hygie server ({self.backend}, {self.root_url or 'not started'})\n"
            f"command: {' '.join(self.command()) if self.port else '-'}\n"
            f"--- server output ({self.log_path}) ---\n{tail(self.log_text())}"
        )

    def start(self) -> "HygieServer":
        """Starts the server and waits until GET /healthz answers 200."""
        assert self.process is None, "this server was already started"
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, START_ATTEMPTS_MAX + 1):
            self.port = free_port()
            self.root_url = f"http://127.0.0.1:{self.port}"
            self.fhir_url = f"{self.root_url}/fhir"
            env = {**os.environ, "RUST_BACKTRACE": "1", **self.env}
            # The server's own cwd is its temp dir: a default like ./hygie-data lands there.
            with open(self.log_path, "ab") as log:
                log.write(f"$ {' '.join(self.command())}\n".encode())
                log.flush()
                try:
                    self.process = subprocess.Popen(
                        self.command(),
                        cwd=self.workdir,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        preexec_fn=_die_with_parent,
                    )
                except OSError as err:
                    pytest.fail(f"could not run {self.binary}: {err}", pytrace=False)
            outcome = self._wait_healthy()
            if outcome == "ready":
                return self
            if outcome == "port-taken" and attempt < START_ATTEMPTS_MAX:
                self.process = None
                continue
            self.stopped = True  # nothing left for teardown to check
            self._kill()
            pytest.fail(f"{outcome}\n\n{self.describe()}", pytrace=False)
        raise AssertionError("unreachable")

    def _wait_healthy(self) -> str:
        """'ready', 'port-taken', or a message saying why the server is not healthy."""
        assert self.process is not None
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        last = "no answer yet"
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                text = self.log_text().lower()
                if "address already in use" in text or "addrinuse" in text:
                    return "port-taken"
                return f"hygie exited with code {code} before GET /healthz answered 200"
            try:
                resp = requests.get(f"{self.root_url}/healthz", timeout=HEALTH_PROBE_TIMEOUT_S)
                if resp.status_code == 200:
                    return "ready"
                last = f"HTTP {resp.status_code}: {resp.text[:500]}"
            except requests.RequestException as err:
                last = f"{type(err).__name__}: {err}"
            time.sleep(HEALTH_POLL_INTERVAL_S)
        return (
            f"GET {self.root_url}/healthz did not answer 200 within {HEALTH_TIMEOUT_S} s "
            f"(last: {last})"
        )

    def stop(self, *, expect_exit_code: int | None = 0) -> int | None:
        """Sends SIGTERM, waits for the exit and checks its code. Idempotent.

        Returns the exit code (None if never started).
        """
        if self.process is None:
            return None
        if self.stopped:
            return self.process.returncode
        self.stopped = True
        code = self.process.poll()
        if code is not None:
            pytest.fail(
                f"hygie exited by itself during the test, with code {code}\n\n{self.describe()}",
                pytrace=False,
            )
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._kill()
            pytest.fail(
                f"hygie did not exit within {STOP_TIMEOUT_S} s of SIGTERM (killed it)\n\n"
                f"{self.describe()}",
                pytrace=False,
            )
        if expect_exit_code is not None and code != expect_exit_code:
            pytest.fail(
                f"hygie exited with code {code} after SIGTERM, expected {expect_exit_code}\n\n"
                f"{self.describe()}",
                pytrace=False,
            )
        return code

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


# --------------------------------------------------------------------------------------
# PostgreSQL: one fresh database per server, with the psql CLI (no Python driver needed)


class PostgresDatabases:
    """Creates and drops databases on the server of `admin_url` (HYGIE_TEST_POSTGRES_URL)."""

    def __init__(self, admin_url: str):
        parts = urllib.parse.urlsplit(admin_url)
        if parts.scheme not in ("postgres", "postgresql") or not parts.hostname:
            pytest.fail(
                f"HYGIE_TEST_POSTGRES_URL={admin_url!r} is not a postgres://USER@HOST:PORT/DB URL",
                pytrace=False,
            )
        self.psql = shutil.which("psql")
        if self.psql is None:
            pytest.fail(
                "psql is not on PATH: the postgres fixtures create a database per server with it "
                "(Debian: apt-get install postgresql-client)",
                pytrace=False,
            )
        self.admin_url = admin_url
        self.created: list[str] = []

    def url_for(self, name: str) -> str:
        parts = urllib.parse.urlsplit(self.admin_url)
        return urllib.parse.urlunsplit(parts._replace(path="/" + name))

    def _run(self, sql: str) -> None:
        cmd = [self.psql, "-X", "-w", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.admin_url, "-c", sql]
        try:
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=PSQL_TIMEOUT_S, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"psql did not finish within {PSQL_TIMEOUT_S} s: {sql}", pytrace=False)
        if done.returncode != 0:
            pytest.fail(
                f"psql failed (exit {done.returncode}) on {self.admin_url}: {sql}\n"
                f"{done.stderr.strip()}",
                pytrace=False,
            )

    def create(self) -> str:
        """Creates an empty database and returns its URL."""
        name = f"hygie_e2e_{os.getpid()}_{uuid.uuid4().hex[:12]}"
        self._run(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return self.url_for(name)

    def create_from(self, template_url: str) -> str:
        """Creates a copy of the database of `template_url` (nobody may be connected to it)
        and returns the copy's URL."""
        template = urllib.parse.urlsplit(template_url).path.lstrip("/")
        name = f"hygie_e2e_{os.getpid()}_{uuid.uuid4().hex[:12]}"
        self._run(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        self.created.append(name)
        return self.url_for(name)

    def drop(self, url: str) -> None:
        name = urllib.parse.urlsplit(url).path.lstrip("/")
        assert name.startswith("hygie_e2e_"), f"refusing to drop a database we did not create: {name}"
        # WITH (FORCE) (PostgreSQL 13+) ends sessions a killed server may have left behind.
        self._run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self.created:
            self.created.remove(name)
