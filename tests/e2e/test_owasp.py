"""The OWASP API Security Top 10 (2023), category by category, against a hub with tokens.
Most cases live beside the feature they attack; this file holds the rest and the index:

API1 Broken object level authorization: test_auth.py (a patient token and another patient's
     record, nonexistent ids answered alike, includes/chains/_has/transactions reaching around a
     scope), test_need_to_know.py, test_security_labels.py, test_query_scopes.py, and
     `test_id_enumeration_tells_nothing` below.
API2 Broken authentication: test_auth.py::test_tokens_that_must_be_refused (alg none, HS256 with
     the public key, wrong key, expired, not yet valid, wrong aud/iss, tampered payload, foreign
     issuer), test_oidc.py (external providers, key rotation, alg confusion), revocation tests.
API3 Broken object property level authorization: test_minimization.py (reading, searching,
     writing and patching masked elements; REDACTED).
API4 Unrestricted resource consumption: `test_resource_limits` below, test_bad_input.py (body,
     depth, Bundle entries), test_auth.py rate limits (429 + Retry-After).
API5 Broken function level authorization: `test_admin_functions_refuse_clinical_tokens` below.
API8 Security misconfiguration: `test_errors_do_not_leak_internals` and
     `test_plain_http_and_no_auth_stay_on_loopback` below.
Each denial is a 401 or 403 OperationOutcome naming the reason, never the hidden data."""

from __future__ import annotations

import re

import pytest

from e2e_support import assert_outcome, check_resource, observation, one_shot, patient, run_cli
from test_auth import admit, bearer, get, post, token

LEAKS = re.compile(r"SELECT |INSERT |sqlite|postgres|panicked|\.rs:\d|/src/|stack backtrace|rusqlite|tokio",
                   re.IGNORECASE)


@pytest.fixture(params=["sqlite", "postgres"])
def secured(request, start_hub):
    return start_hub(request.param, no_auth=False)


def test_id_enumeration_tells_nothing(secured, hygie_bin, tmp_path):
    """API1: a patient's token probing ids gets the same answer for another patient's record
    and for an id that exists nowhere."""
    hub = secured.fhir_url
    feed = token(hygie_bin, tmp_path, secured, subject="Device/feed", roles=("integration",), scope="system/*.cruds")
    me = check_resource(post(f"{hub}/Patient", feed, patient("ow-1")), 201, "Patient")["id"]
    other = check_resource(post(f"{hub}/Patient", feed, patient("ow-2")), 201, "Patient")["id"]
    theirs = check_resource(post(f"{hub}/Observation", feed, observation(f"Patient/{other}")), 201,
                            "Observation")["id"]
    mine = token(hygie_bin, tmp_path, secured, subject=f"Patient/{me}", roles=("patient",), scope="patient/*.rs",
                 patient_context=me)
    answers = [get(f"{hub}/Observation/{ident}", mine) for ident in (theirs, "does-not-exist", "a" * 64)]
    assert {a.status_code for a in answers} == {403}
    normalized = {a.json()["issue"][0]["diagnostics"].split("/")[1].split(" ", 1)[1] for a in answers}
    assert len(normalized) == 1, f"the answers differ beyond the id: {normalized}"


def test_admin_functions_refuse_clinical_tokens(secured, hygie_bin, tmp_path):
    """API5: revocation, policy reload, break-the-glass review and import are not for
    clinical tokens, whatever their scopes."""
    root = secured.root_url
    for roles, scope in ((("clinician",), "user/*.cruds"), (("integration",), "system/*.cruds"),
                         (("nurse", "reception"), "user/*.cruds")):
        value = token(hygie_bin, tmp_path, secured, roles=roles, scope=scope)
        assert_outcome(one_shot("POST", f"{root}/admin/revocations", json={"jti": "x"}, headers=bearer(value)),
                       403, code="forbidden", diagnostics_contains="admin")
        assert_outcome(one_shot("POST", f"{root}/admin/policy/reload", headers=bearer(value)), 403,
                       code="forbidden", diagnostics_contains="admin")
        assert_outcome(one_shot("GET", f"{root}/admin/break-glass", headers=bearer(value)), 403,
                       code="forbidden")
    # Without a token at all: 401, not 403, and no hint of what lies behind.
    assert_outcome(one_shot("GET", f"{root}/admin/break-glass"), 401, code="login")


def test_resource_limits(secured, hygie_bin, tmp_path):
    """API4: absurd page sizes and deep include chains are refused with 400, not run."""
    hub = secured.fhir_url
    value = token(hygie_bin, tmp_path, secured, subject="Device/feed", roles=("integration",), scope="system/*.rs")
    assert_outcome(get(f"{hub}/Observation", value, _count="100000000"), 400, code="invalid",
                   diagnostics_contains="_count")
    assert_outcome(get(f"{hub}/Observation", value, _count="-1"), 400, code="invalid")
    chain = ".".join(["subject:Patient.link:Patient"] * 6) + ".name"
    answer = get(f"{hub}/Observation", value, **{chain: "x"})
    assert answer.status_code == 400, answer.text


def test_errors_do_not_leak_internals(secured, hygie_bin, tmp_path):
    """API8: malformed requests get a precise OperationOutcome that says what was wrong with
    the request, never SQL, file paths, backtraces or the storage engine."""
    hub = secured.fhir_url
    value = token(hygie_bin, tmp_path, secured, subject="Device/feed", roles=("integration",), scope="system/*.cruds")
    pid = check_resource(post(f"{hub}/Patient", value, patient("ow-3")), 201, "Patient")["id"]
    admit(hygie_bin, tmp_path, secured, pid)
    probes = [
        one_shot("GET", f"{hub}/Observation", params={"date": "ge2024-13-45"}, headers=bearer(value)),
        one_shot("GET", f"{hub}/Observation", params={"subject:Patient.nosuch": "x"}, headers=bearer(value)),
        one_shot("GET", f"{hub}/Observation", params={"_sort": "'; DROP TABLE resources; --"},
                 headers=bearer(value)),
        one_shot("GET", f"{hub}/Patient/{'x' * 300}", headers=bearer(value)),
        one_shot("POST", f"{hub}/Observation", data=b"{\"resourceType\": \"Observation\", ",
                 headers={**bearer(value), "Content-Type": "application/fhir+json"}),
        one_shot("GET", f"{hub}/Observation", params={"_page": "forged"}, headers=bearer(value)),
        one_shot("GET", f"{hub}/Patient", headers={"Authorization": "Bearer not.a.jwt"}),
        one_shot("GET", f"{hub}/Observation", params={"value-quantity": "gt12abc"}, headers=bearer(value)),
    ]
    for answer in probes:
        assert 400 <= answer.status_code < 500, (answer.request.url, answer.status_code, answer.text[:300])
        assert answer.headers["Content-Type"].startswith("application/fhir+json"), answer.headers
        body = answer.text
        assert answer.json()["resourceType"] == "OperationOutcome", body[:300]
        assert not LEAKS.search(body), f"{answer.request.url} leaks: {body[:500]}"


def test_plain_http_and_no_auth_stay_on_loopback(hygie_bin, tmp_path):
    """API8: the hub refuses to serve patient data over plain HTTP, or without
    authentication, on a non-loopback address."""
    for extra, needle in ((["--listen", "0.0.0.0:0"], "plain HTTP"),
                          (["--listen", "0.0.0.0:0", "--insecure-http", "--no-auth"], "loopback")):
        done = run_cli(hygie_bin, ["serve", "--data-dir", str(tmp_path / "d"), *extra], cwd=tmp_path)
        assert done.returncode != 0, done.stdout + done.stderr
        assert needle in done.stderr, done.stderr
