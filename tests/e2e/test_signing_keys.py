"""The keys the hub signs its own tokens with: an administrator rotates them (routine: old
tokens run out; after a leak: old tokens are refused at once), over HTTP or with `hygie keys
signing`, and every serving process follows. Key operations need the admin role (API5)."""

from __future__ import annotations

import time

import jwt  # PyJWT, an independent JWT implementation
import pytest
import requests

from e2e_support import assert_outcome, one_shot, run_cli
from test_auth import _store_args, bearer, get, token


@pytest.fixture(params=["sqlite", "postgres"])
def quick_keys(request, start_hub, tmp_path):
    """A hub that requires tokens and reads its signing keys again every second."""
    settings = tmp_path / "keys.toml"
    settings.write_text("[auth]\nkeys_refresh_seconds = 1\n")
    return start_hub(request.param, no_auth=False, args=["--config", str(settings)])


def _kid(value: str) -> str:
    return jwt.get_unverified_header(value)["kid"]


def _keys(response: requests.Response) -> dict:
    assert response.status_code == 200, response.text
    listing = response.json()
    return {key["kid"]: key for key in listing["keys"]}


def test_an_admin_rotates_the_signing_key_and_old_tokens_run_out_or_are_retired(quick_keys, hygie_bin, tmp_path):
    server = quick_keys
    keys_url = f"{server.root_url}/admin/keys"
    old_clinician = token(hygie_bin, tmp_path, server, scope="user/Patient.rs")
    old_admin = token(hygie_bin, tmp_path, server, subject="Practitioner/officer", roles=("admin",), scope="openid")
    assert get(f"{server.fhir_url}/Patient", old_clinician).status_code == 200  # verified and cached
    old_kid = _kid(old_clinician)

    # API5: clinical tokens and anonymous callers touch no key.
    for headers, status in (({}, 401), (bearer(old_clinician), 403)):
        assert_outcome(one_shot("POST", f"{keys_url}/rotate", json={}, headers=headers), status)
        assert_outcome(one_shot("GET", keys_url, headers=headers), status)
    listed = _keys(one_shot("GET", keys_url, headers=bearer(old_admin)))
    assert listed == {old_kid: {"kid": old_kid, "state": "current"}}, "nothing was rotated"
    assert all(set(key) <= {"kid", "state", "retiredAt", "trustedUntil"} for key in listed.values()), \
        "no key material"

    # A malformed request: a precise 400, nothing rotated.
    assert_outcome(one_shot("POST", f"{keys_url}/rotate", json={"retire_previous": "soon"},
                            headers=bearer(old_admin)), 400, diagnostics_contains="retire_previous")
    # Routine rotation: the old key keeps verifying until its tokens could have run out.
    rotated = _keys(one_shot("POST", f"{keys_url}/rotate", json={}, headers=bearer(old_admin)))
    assert rotated[old_kid]["state"] == "retiring"
    (new_kid,) = [kid for kid, key in rotated.items() if key["state"] == "current"]
    assert new_kid != old_kid
    assert get(f"{server.fhir_url}/Patient", old_clinician).status_code == 200
    jwks = requests.get(f"{server.fhir_url}/.well-known/jwks.json", timeout=10).json()
    assert {key["kid"] for key in jwks["keys"]} == {old_kid, new_kid}
    # `hygie token` now signs with the new key, which the running hub already trusts, and
    # which an independent library verifies with the published JWKS.
    new_clinician = token(hygie_bin, tmp_path, server, scope="user/Patient.rs")
    assert _kid(new_clinician) == new_kid
    assert get(f"{server.fhir_url}/Patient", new_clinician).status_code == 200
    published = {key["kid"]: key for key in jwks["keys"]}
    jwt.decode(new_clinician, key=jwt.PyJWK(published[new_kid]), algorithms=["EdDSA"], audience="hygie")
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(new_clinician, key=jwt.PyJWK(published[old_kid]), algorithms=["EdDSA"], audience="hygie")

    # The old key turns out to have leaked: retired at once. Its tokens, cached or not, are
    # refused; so is the admin's own old token, hence a new one first.
    new_admin = token(hygie_bin, tmp_path, server, subject="Practitioner/officer", roles=("admin",), scope="openid")
    assert_outcome(one_shot("POST", f"{keys_url}/{new_kid}/retire", headers=bearer(new_admin)), 409,
                   diagnostics_contains="rotate")
    assert_outcome(one_shot("POST", f"{keys_url}/no-such-kid/retire", headers=bearer(new_admin)), 404)
    retired = _keys(one_shot("POST", f"{keys_url}/{old_kid}/retire", headers=bearer(new_admin)))
    assert retired[old_kid]["state"] == "retired"
    for old in (old_clinician, old_admin):
        assert_outcome(get(f"{server.fhir_url}/Patient", old), 401, code="login", diagnostics_contains="retired")
    assert get(f"{server.fhir_url}/Patient", new_clinician).status_code == 200
    jwks = requests.get(f"{server.fhir_url}/.well-known/jwks.json", timeout=10).json()
    assert [key["kid"] for key in jwks["keys"]] == [new_kid], "a retired key is no longer published"

    # Rotating with the previous key retired now: one step after a leak.
    rotated = _keys(one_shot("POST", f"{keys_url}/rotate", json={"retire_previous": "now"},
                             headers=bearer(new_admin)))
    assert rotated[new_kid]["state"] == "retired"
    assert_outcome(get(f"{server.fhir_url}/Patient", new_clinician), 401, code="login")


def test_a_rotation_by_the_operator_reaches_the_running_hub(quick_keys, hygie_bin, tmp_path):
    """`hygie keys signing rotate --retire-previous now` on the hub's store, as another
    process: the running hub trusts the new key at its first token, and refuses the old
    key's tokens within `auth.keys_refresh_seconds`."""
    server = quick_keys
    old = token(hygie_bin, tmp_path, server, scope="user/Patient.rs")
    assert get(f"{server.fhir_url}/Patient", old).status_code == 200

    done = run_cli(hygie_bin, ["keys", "signing", "rotate", *_store_args(server), "--retire-previous", "now"],
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Rotated" in done.stderr
    lines = done.stdout.splitlines()
    assert any(line.endswith("current") for line in lines), done.stdout
    assert any(_kid(old) in line and "retired" in line for line in lines), done.stdout

    new = token(hygie_bin, tmp_path, server, scope="user/Patient.rs")
    assert _kid(new) != _kid(old)
    assert get(f"{server.fhir_url}/Patient", new).status_code == 200, "read again at the unknown kid"
    deadline = time.monotonic() + 10
    while get(f"{server.fhir_url}/Patient", old).status_code == 200:
        assert time.monotonic() < deadline, "the old key still verifies 10 s after it was retired"
        time.sleep(0.2)
    assert_outcome(get(f"{server.fhir_url}/Patient", old), 401, code="login", diagnostics_contains="retired")

    # A wrong key id, a bad option: a message and a non-zero exit.
    done = run_cli(hygie_bin, ["keys", "signing", "retire", *_store_args(server), "nope"], cwd=tmp_path)
    assert done.returncode != 0 and "no signing key" in done.stderr, done.stderr
    done = run_cli(hygie_bin, ["keys", "signing", "rotate", *_store_args(server), "--retire-previous", "later"],
                   cwd=tmp_path)
    assert done.returncode != 0 and "retire-previous" in done.stderr, done.stderr
    listing = run_cli(hygie_bin, ["keys", "signing", "list", *_store_args(server)], cwd=tmp_path)
    assert listing.returncode == 0 and _kid(new) in listing.stdout, listing.stdout


def test_a_bad_keys_refresh_setting_is_refused_at_start(hygie_bin, tmp_path):
    settings = tmp_path / "bad.toml"
    settings.write_text("[auth]\nkeys_refresh_seconds = 0\n")
    done = run_cli(hygie_bin, ["serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "d"),
                               "--config", str(settings)], cwd=tmp_path)
    assert done.returncode != 0 and "auth.keys_refresh_seconds" in done.stderr, done.stderr
