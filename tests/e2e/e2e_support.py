"""Shared building blocks of the topic test files: resources to send, and checks of what the
server answers. Every check validates the returned resource or Bundle as FHIR R4.

    from e2e_support import patient, create, check_resource, follow_pages, assert_outcome
"""

from __future__ import annotations

import email.utils
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import requests

from hygie_e2e import (
    FHIR_JSON,
    FhirSession,
    assert_operation_outcome,
    assert_valid_r4,
    fhir_json,
    free_port,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SYNTHEA_DIR = REPO_ROOT / "testdata" / "synthea"

MRN_SYSTEM = "urn:oid:1.2.250.1.999.1"  # the identifier system of the patients the tests make
PAGES_MAX = 200  # a paging loop that goes on longer than this is a server bug (a link cycle)
SUBPROCESS_TIMEOUT_S = 120  # one CLI run (an import of the Synthea sample takes a few seconds)

OO_SEVERITIES = {"fatal", "error", "warning", "information"}
ID_RE = re.compile(r"^[A-Za-z0-9\-\.]{1,64}$")  # FHIR R4 id


# --------------------------------------------------------------------------------------
# Resources


def unique_value(prefix: str = "e2e") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def patient(mrn: str | None = None, *, family: str = "Martin", given: str = "Claire", **extra) -> dict:
    """A small valid Patient with one MRN identifier."""
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": MRN_SYSTEM, "value": mrn or unique_value("mrn")}],
        "name": [{"family": family, "given": [given]}],
        "gender": "female",
        "birthDate": "1984-03-07",
    }
    resource.update(extra)
    return resource


def observation(subject_reference: str, value: float = 72.0, code: str = "8867-4") -> dict:
    """A heart-rate Observation about `subject_reference`."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": "Heart rate"}]},
        "subject": {"reference": subject_reference},
        "effectiveDateTime": "2024-05-01T10:00:00Z",
        "valueQuantity": {
            "value": value,
            "unit": "beats/minute",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
    }


def mrn_of(resource: Mapping[str, Any]) -> str:
    return next(i["value"] for i in resource["identifier"] if i.get("system") == MRN_SYSTEM)


# --------------------------------------------------------------------------------------
# Checks


def describe(response: requests.Response) -> str:
    return (
        f"{response.request.method} {response.url} -> {response.status_code}: "
        f"{response.text[:1500]}"
    )


def one_shot(method: str, url: str, **kwargs) -> requests.Response:
    """One request on its own connection.

    For requests the server refuses before reading their body (413, 415, 406, 405): it then
    closes the connection without saying so (see test_bad_input.py::
    test_refusal_before_reading_the_body_keeps_the_connection_usable), which would make the
    NEXT request of a shared session fail. That bug has its own test; the other tests keep
    checking the refusal itself.
    """
    with FhirSession() as session:
        return session.request(method, url, **kwargs)


def check_resource(response: requests.Response, status: int, resource_type: str | None = None) -> dict:
    """Asserts the status, the FHIR JSON Content-Type and a valid R4 body; returns the body."""
    __tracebackhide__ = True
    assert response.status_code == status, f"expected HTTP {status}: {describe(response)}"
    body = fhir_json(response)
    if resource_type is not None:
        assert body.get("resourceType") == resource_type, (
            f"expected a {resource_type}: {describe(response)}"
        )
    assert_valid_r4(body)
    return body


def check_bundle(response: requests.Response, bundle_type: str, status: int = 200) -> dict:
    __tracebackhide__ = True
    bundle = check_resource(response, status, "Bundle")
    assert bundle.get("type") == bundle_type, f"expected a {bundle_type} Bundle: {describe(response)}"
    return bundle


def assert_outcome(
    response: requests.Response,
    status: int,
    *,
    code: str | Iterable[str] | None = None,
    expression: str | None = None,
    diagnostics_contains: str | None = None,
) -> dict:
    """Asserts an OperationOutcome with `status` whose error issue carries a severity, a code,
    diagnostics and (when given) an expression containing `expression`."""
    __tracebackhide__ = True
    outcome = assert_operation_outcome(response, status)
    issues = outcome["issue"]
    for issue in issues:
        assert issue.get("severity") in OO_SEVERITIES, f"issue without a valid severity: {issue}"
        assert issue.get("code"), f"issue without a code: {issue}"
    errors = [i for i in issues if i["severity"] in ("error", "fatal")]
    assert errors, f"HTTP {status} but no issue of severity error/fatal: {outcome}"
    assert any((i.get("diagnostics") or "").strip() for i in errors), (
        f"no diagnostics to tell the client what went wrong: {outcome}"
    )
    if code is not None:
        codes = {code} if isinstance(code, str) else set(code)
        assert any(i["code"] in codes for i in errors), f"expected issue code in {codes}: {outcome}"
    if expression is not None:
        found = [e for i in errors for e in (i.get("expression") or [])]
        assert any(expression in e for e in found), (
            f"expected an issue.expression naming {expression!r}, got {found}: {outcome}"
        )
    if diagnostics_contains is not None:
        text = " ".join(i.get("diagnostics") or "" for i in issues)
        assert diagnostics_contains.lower() in text.lower(), (
            f"diagnostics should mention {diagnostics_contains!r}: {outcome}"
        )
    return outcome


def assert_http_date(value: str | None, what: str = "Last-Modified") -> None:
    __tracebackhide__ = True
    assert value, f"{what} header missing"
    assert email.utils.parsedate_to_datetime(value) is not None, f"{what} is not an HTTP date: {value!r}"
    assert value.endswith("GMT"), f"{what} must be an IMF-fixdate in GMT: {value!r}"


def create(http, hub: str, resource: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> dict:
    """POSTs `resource` to its type, asserts 201 and a valid body; returns the stored resource."""
    __tracebackhide__ = True
    response = http.post(f"{hub}/{resource['resourceType']}", json=dict(resource), headers=headers)
    return check_resource(response, 201, resource["resourceType"])


def read(http, hub: str, reference: str, status: int = 200) -> dict:
    __tracebackhide__ = True
    response = http.get(f"{hub}/{reference}")
    if status != 200:
        return assert_outcome(response, status)
    return check_resource(response, 200, reference.split("/")[0])


def follow_pages(http, url: str, bundle_type: str, params: Mapping[str, str] | None = None):
    """Fetches `url` and every `next` page; returns (entries of all pages, number of pages).

    Each page is validated; a `next` link that repeats an earlier URL fails (a paging loop)."""
    __tracebackhide__ = True
    entries: list[dict] = []
    seen_urls: set[str] = set()
    response = http.get(url, params=params)
    pages = 0
    while True:
        pages += 1
        assert pages <= PAGES_MAX, f"more than {PAGES_MAX} pages from {url}: a paging loop?"
        bundle = check_bundle(response, bundle_type)
        entries.extend(bundle.get("entry") or [])
        links = {link["relation"]: link["url"] for link in bundle.get("link") or []}
        assert "self" in links, f"a {bundle_type} Bundle should have a self link: {links}"
        next_url = links.get("next")
        if not next_url:
            return entries, pages
        assert next_url not in seen_urls, f"the next link repeats an earlier page: {next_url}"
        seen_urls.add(next_url)
        response = http.get(next_url)


def history_entries(http, url: str, count: int = 1000) -> list[dict]:
    entries, _ = follow_pages(http, url, "history", params={"_count": str(count)})
    return entries


def search_ids(http, hub: str, resource_type: str, params: Mapping[str, str]) -> list[str]:
    """Ids of every `match` entry of a search, over all pages."""
    __tracebackhide__ = True
    entries, _ = follow_pages(http, f"{hub}/{resource_type}", "searchset", params=params)
    return [e["resource"]["id"] for e in entries if (e.get("search") or {}).get("mode") == "match"]


def system_history_size(http, hub: str) -> int:
    """Number of versions in the whole store (system history, every page)."""
    return len(history_entries(http, f"{hub}/_history"))


def etag_version(etag: str | None) -> str:
    __tracebackhide__ = True
    assert etag, "ETag header missing"
    match = re.fullmatch(r'W/"([^"]+)"', etag)
    assert match, f'ETag should be a weak version tag W/"n", got {etag!r}'
    return match.group(1)


# --------------------------------------------------------------------------------------
# Processes other than `hygie serve` on the HygieServer path


class Process:
    """A subprocess whose output is read by a thread into `lines` (stdout and stderr merged
    unless split). Killed on close if still running."""

    def __init__(self, cmd: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None):
        from hygie_e2e import _die_with_parent

        self.cmd = [str(c) for c in cmd]
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self.process = subprocess.Popen(
            self.cmd,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            preexec_fn=_die_with_parent,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def wait_for_output(self, pattern: str, timeout_s: float) -> re.Match:
        """Waits until the output matches `pattern` (a regex, MULTILINE)."""
        deadline = time.monotonic() + timeout_s
        regex = re.compile(pattern, re.MULTILINE)
        while time.monotonic() < deadline:
            match = regex.search(self.output())
            if match:
                return match
            if self.process.poll() is not None:
                self._reader.join(timeout=5)
                match = regex.search(self.output())
                if match:
                    return match
                raise AssertionError(
                    f"{' '.join(self.cmd)} exited with {self.process.returncode} before printing "
                    f"/{pattern}/:\n{self.output()[-6000:]}"
                )
            time.sleep(0.05)
        raise AssertionError(
            f"{' '.join(self.cmd)} did not print /{pattern}/ within {timeout_s} s:\n{self.output()[-6000:]}"
        )

    def signal_and_wait(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.close()
            raise AssertionError(
                f"{' '.join(self.cmd)} did not exit within {timeout_s} s of signal {sig}:\n"
                f"{self.output()[-6000:]}"
            ) from None
        self._reader.join(timeout=5)
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self._reader.join(timeout=5)


def run_cli(binary: Path, args: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None,
            timeout_s: float = SUBPROCESS_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Runs `hygie ARGS…` to completion; stdout and stderr captured separately."""
    try:
        return subprocess.run(
            [str(binary), *map(str, args)],
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"hygie {' '.join(map(str, args))} ran longer than {timeout_s} s: {err}") from None


def wait_http_ok(url: str, timeout_s: float = 30, process: subprocess.Popen | None = None, **kwargs) -> requests.Response:
    """Polls `url` until it answers 200 (or the process exits)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process exited with {process.returncode} while waiting for {url}")
        try:
            response = requests.get(url, timeout=2, **kwargs)
            if response.status_code == 200:
                return response
            last = f"HTTP {response.status_code}"
        except requests.RequestException as err:
            last = f"{type(err).__name__}: {err}"
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer 200 within {timeout_s} s (last: {last})")


__all__ = [
    "FHIR_JSON",
    "MRN_SYSTEM",
    "Process",
    "REPO_ROOT",
    "SYNTHEA_DIR",
    "assert_http_date",
    "assert_outcome",
    "check_bundle",
    "check_resource",
    "create",
    "describe",
    "etag_version",
    "follow_pages",
    "free_port",
    "history_entries",
    "mrn_of",
    "one_shot",
    "observation",
    "patient",
    "read",
    "run_cli",
    "search_ids",
    "system_history_size",
    "unique_value",
    "wait_http_ok",
]
