"""Fixtures for Hygie's end-to-end tests.

Every test that takes `hub` (or `hub_server`) runs twice: once against a server on embedded
SQLite, once against PostgreSQL, each on a fresh store. Select one with `-k sqlite` or
`-k postgres`.

    def test_read_patient(hub, http):            # hub == "http://127.0.0.1:PORT/fhir"
        r = http.get(f"{hub}/metadata")

    def test_health(hub_server, http):            # the HygieServer behind `hub`
        assert http.get(hub_server.root_url + "/healthz").status_code == 200

    def test_restart_keeps_data(start_hub, http): # custom servers: backend, args, restarts
        first = start_hub("sqlite")
        ...
        first.stop()
        again = start_hub("sqlite", data_dir=first.data_dir)

Environment (scripts/test sets both):
    HYGIE_BIN                the `hygie` binary (default: target/debug/hygie of this repo)
    HYGIE_TEST_POSTGRES_URL  a PostgreSQL where we may CREATE DATABASE; required by the
                             postgres runs, which fail (never skip) without it
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import pytest

from hygie_e2e import (  # noqa: F401  (re-exported for tests that import from conftest)
    FhirSession,
    HygieServer,
    PostgresDatabases,
    assert_operation_outcome,
    assert_valid_r4,
    fhir_json,
    tail,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
BACKENDS = ("sqlite", "postgres")

# One key file for the whole session, unless a test names its own: a PostgreSQL database is
# served by several processes (and read by CLI commands run from other directories), which
# must all hold the keyring it was first encrypted under. A SQLite data directory would
# otherwise get its own `vault.key` (tests of that default unset this variable).
_SESSION_KEYS = Path(tempfile.mkdtemp(prefix="hygie-e2e-vault-"))
os.environ.setdefault("HYGIE_VAULT_KEY_FILE", str(_SESSION_KEYS / "vault.key"))

# Servers of the running test, so that a failing test's report shows their output.
_live_servers: list[HygieServer] = []


@pytest.fixture(scope="session")
def hygie_bin() -> Path:
    """Path of the `hygie` binary under test."""
    given = os.environ.get("HYGIE_BIN")
    if given:
        # Absolute: each server runs in its own temp dir, where a relative path means nothing.
        path = Path(given).resolve()
        hint = "HYGIE_BIN points at it"
    else:
        target = Path(os.environ.get("CARGO_TARGET_DIR", REPO_ROOT / "target"))
        path = target / "debug" / "hygie"
        hint = "HYGIE_BIN is not set, so the default build output was used"
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"no executable hygie binary at {path} ({hint}). Run scripts/test, or "
            f"`cargo build -p hygie` and export HYGIE_BIN=target/debug/hygie",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PostgresDatabases]:
    """Creates fresh databases on HYGIE_TEST_POSTGRES_URL's server; drops leftovers at the end."""
    url = os.environ.get("HYGIE_TEST_POSTGRES_URL")
    if not url:
        pytest.fail(
            "HYGIE_TEST_POSTGRES_URL is not set, and the postgres runs never skip silently. "
            "Run scripts/test (it finds or starts a PostgreSQL), export the URL of a server "
            "where you may CREATE DATABASE, or deselect them with `-k 'not postgres'`.",
            pytrace=False,
        )
    databases = PostgresDatabases(url)
    yield databases
    for name in list(databases.created):
        databases.drop(databases.url_for(name))


@pytest.fixture
def start_hub(
    request: pytest.FixtureRequest, hygie_bin: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., HygieServer]]:
    """A factory that starts `hygie serve` and returns its HygieServer once /healthz is 200.

    start_hub(backend="sqlite", *, data_dir=None, database_url=None, no_auth=True, args=(),
              env=None)

    backend      "sqlite" (--data-dir) or "postgres" (--database)
    data_dir     reuse a data dir (restart tests); default: a fresh one
    database_url reuse a database (restart tests); default: a fresh database
    no_auth      pass --no-auth (default); False to test authentication
    args         more arguments for `hygie serve` (e.g. ["--mllp-listen", "127.0.0.1:0"])
    env          extra environment variables for the server

    At the end of the test every server still running gets SIGTERM and must exit with 0,
    then the databases this factory created are dropped.
    """
    started: list[HygieServer] = []
    created_urls: list[str] = []
    pg: list[PostgresDatabases] = []  # looked up on first postgres use only

    def start(
        backend: str = "sqlite",
        *,
        data_dir: Path | None = None,
        database_url: str | None = None,
        no_auth: bool = True,
        args=(),
        env=None,
    ) -> HygieServer:
        workdir = tmp_path_factory.mktemp(f"hygie-{backend}-")
        if backend == "sqlite" and data_dir is None:
            data_dir = workdir / "data"
        if backend == "postgres" and database_url is None:
            if not pg:
                pg.append(request.getfixturevalue("pg_databases"))
            database_url = pg[0].create()
            created_urls.append(database_url)
        server = HygieServer(
            hygie_bin,
            backend,
            workdir,
            data_dir=data_dir,
            database_url=database_url,
            no_auth=no_auth,
            args=args,
            env=env,
        )
        started.append(server)
        _live_servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        errors = []
        for server in reversed(started):
            try:
                server.stop()
            except BaseException as err:  # pytest.fail raises a BaseException subclass
                errors.append(str(err))
            finally:
                if server in _live_servers:
                    _live_servers.remove(server)
        for url in created_urls:
            try:
                pg[0].drop(url)
            except BaseException as err:
                errors.append(str(err))
        if errors:
            pytest.fail("\n\n".join(errors), pytrace=False)


@pytest.fixture(params=BACKENDS)
def hub_server(request: pytest.FixtureRequest, start_hub) -> HygieServer:
    """A fresh Hygie server (--no-auth) for this test, on each backend in turn."""
    return start_hub(request.param)


@pytest.fixture
def hub(hub_server: HygieServer) -> str:
    """The FHIR base URL of this test's fresh server: http://127.0.0.1:PORT/fhir."""
    return hub_server.fhir_url


@pytest.fixture
def http() -> Iterator[FhirSession]:
    """A requests.Session that sends Accept (and, for json=, Content-Type)
    application/fhir+json and times out after 30 s."""
    with FhirSession() as session:
        yield session


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Adds the output of this test's servers to the report of a failing test."""
    report = yield
    # Setup and teardown failures of the fixtures already carry the output in their message.
    if report.when == "call" and report.failed and _live_servers:
        for server in _live_servers:
            report.sections.append(
                (f"hygie server output ({server.backend}, {server.root_url})",
                 tail(server.log_text()))
            )
    return report
