"""Tokens of an external OpenID Connect provider, as Keycloak issues them (RS256 and ES256,
roles in `realm_access.roles`), verified against the provider's JWKS, which a Python server
on 127.0.0.1 publishes. The keys are made here with `cryptography` and the tokens signed with
PyJWT: implementations independent of the hub's. Each check would fail if its protection
broke. SQLite only: verification happens before the store, whatever the backend."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt  # PyJWT
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from e2e_support import assert_outcome, check_resource, one_shot, patient, run_cli, wait_http_ok
from hygie_e2e import free_port

AUDIENCE = "hygie"  # the hub's default `auth.audience`
MIN_REFRESH_S = 1  # jwks_min_refresh_seconds of the hubs below


class JwksServer:
    """A provider's JWKS endpoint on 127.0.0.1 that counts its hits."""

    def __init__(self, keys):
        self.document = {"keys": [key.jwk() for key in keys]}
        self.hits = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                with server._lock:
                    server.hits += 1
                    body = json.dumps(server.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        port = self.httpd.server_address[1]
        self.issuer = f"http://127.0.0.1:{port}/realms/hospital"
        self.url = f"{self.issuer}/protocol/openid-connect/certs"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, keys):
        with self._lock:
            self.document = {"keys": [key.jwk() for key in keys]}

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class Key:
    """A signing key of the provider."""

    def __init__(self, kind: str, kid: str):
        self.kid = kid
        if kind == "RS256":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.alg, self.codec = "RS256", RSAAlgorithm
        else:
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.alg, self.codec = "ES256", ECAlgorithm

    def jwk(self) -> dict:
        jwk = self.codec.to_jwk(self.private.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.alg}

    def sign(self, claims: dict, **header) -> str:
        return jwt.encode(claims, self.private, algorithm=self.alg, headers={"kid": self.kid, **header})


def claims(issuer: str, *, roles=("clinician",), scope="openid user/*.cruds", **extra) -> dict:
    """An access token's claims, shaped like Keycloak's."""
    now = int(time.time())
    return {
        "iss": issuer,
        "sub": str(uuid.uuid4()),
        "aud": [AUDIENCE, "account"],
        "typ": "Bearer",
        "azp": "hygie-ui",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": str(uuid.uuid4()),
        "scope": scope,
        "realm_access": {"roles": [*roles, "offline_access", "uma_authorization"]},
        "preferred_username": "dr.martin",
        **extra,
    }


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def get(url: str, token: str):
    return one_shot("GET", url, headers=bearer(token))


def write_config(tmp_path, providers: list[dict]) -> str:
    lines = [
        "[auth]",
        'roles_claim = "realm_access.roles"',
        f"jwks_min_refresh_seconds = {MIN_REFRESH_S}",
        "jwks_refresh_seconds = 600",
        "jwks_fetch_timeout_ms = 2000",
    ]
    for provider in providers:
        lines += ["", "[[auth.providers]]"]
        lines += [f"{name} = {json.dumps(value)}" for name, value in provider.items()]
    path = tmp_path / "hygie.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def provider():
    """A provider with one RSA and one EC signing key."""
    keys = [Key("RS256", "rsa-2024"), Key("ES256", "ec-2024")]
    server = JwksServer(keys)
    server.keys = keys
    yield server
    server.close()


@pytest.fixture
def hub(start_hub, provider, tmp_path):
    config = write_config(tmp_path, [{"issuer": provider.issuer, "jwks_url": provider.url}])
    return start_hub("sqlite", no_auth=False, args=["--config", config])


def test_a_providers_clinician_reads_a_patient(hub, provider):
    rsa_key, ec_key = provider.keys
    base = hub.fhir_url
    token = rsa_key.sign(claims(provider.issuer))
    created = check_resource(
        one_shot("POST", f"{base}/Patient", headers={**bearer(token), "Content-Type": "application/fhir+json"},
                 json=patient("oidc-1")),
        201, "Patient")
    check_resource(get(f"{base}/Patient/{created['id']}", token), 200, "Patient")
    read_only = ec_key.sign(claims(provider.issuer, scope="user/Patient.rs"))
    check_resource(get(f"{base}/Patient/{created['id']}", read_only), 200, "Patient")
    # The roles come from realm_access.roles: a receptionist reads no observations.
    reception = rsa_key.sign(claims(provider.issuer, roles=("reception",)))
    assert_outcome(get(f"{base}/Observation?subject=Patient/{created['id']}", reception), 403,
                   code="forbidden")
    # Roles elsewhere than the configured claim count for nothing.
    elsewhere = rsa_key.sign({**claims(provider.issuer, roles=()), "roles": ["clinician"]})
    assert_outcome(get(f"{base}/Patient/{created['id']}", elsewhere), 403, code="forbidden")
    # SMART discovery still answers.
    discovery = one_shot("GET", f"{base}/.well-known/smart-configuration")
    assert discovery.status_code == 200, discovery.text
    assert "capabilities" in discovery.json()
    assert provider.hits == 1, "fetched once, at start"


def test_tokens_the_providers_keys_did_not_sign_get_401(hub, provider):
    rsa_key, ec_key = provider.keys
    url = f"{hub.fhir_url}/Patient"
    good = claims(provider.issuer)
    assert get(url, rsa_key.sign(good)).status_code == 200
    # A key not in the JWKS: under a kid of its own, or under a published one.
    rogue = Key("RS256", "rogue")
    assert_outcome(get(url, rogue.sign(good)), 401, code="login", diagnostics_contains="kid")
    impostor = Key("RS256", "rsa-2024")
    assert_outcome(get(url, impostor.sign(good)), 401, code="login", diagnostics_contains="signature")
    # alg none, unsigned.
    for alg in ("none", "None"):
        unsigned = f"{b64(json.dumps({'alg': alg, 'kid': 'rsa-2024'}).encode())}.{b64(json.dumps(good).encode())}."
        assert_outcome(get(url, unsigned), 401, code="login")
    # HS256 keyed with the RSA public key as published (algorithm confusion).
    public_pem = rsa_key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = b64(json.dumps({"alg": "HS256", "kid": "rsa-2024", "typ": "JWT"}).encode())
    payload = b64(json.dumps(good).encode())
    mac = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert_outcome(get(url, f"{header}.{payload}.{b64(mac)}"), 401, code="login",
                   diagnostics_contains="algorithm")
    # The RSA key's kid with the EC key's algorithm: the key, not the header, decides.
    confused = ec_key.sign(good, kid="rsa-2024")
    assert_outcome(get(url, confused), 401, code="login", diagnostics_contains="algorithm")
    # Expired, for another audience, from an issuer nobody trusts.
    now = int(time.time())
    assert_outcome(get(url, rsa_key.sign({**good, "exp": now - 3600, "nbf": now - 7200})), 401,
                   diagnostics_contains="expired")
    assert_outcome(get(url, rsa_key.sign({**good, "aud": "another-app"})), 401,
                   diagnostics_contains="audience")
    assert_outcome(get(url, rsa_key.sign({**good, "iss": "https://evil.example/realms/x"})), 401,
                   diagnostics_contains="trusted issuer")


def test_key_rotation_needs_no_restart(hub, provider):
    rsa_key, ec_key = provider.keys
    url = f"{hub.fhir_url}/Patient"
    old_token = rsa_key.sign(claims(provider.issuer))
    assert get(url, old_token).status_code == 200
    # The provider rolls a new key and, later, withdraws the old one.
    new_key = Key("ES256", "ec-2025")
    provider.publish([new_key, ec_key])
    time.sleep(MIN_REFRESH_S + 0.2)
    hits = provider.hits
    check_resource(get(url, new_key.sign(claims(provider.issuer))), 200, "Bundle")
    assert provider.hits == hits + 1, "one fetch for the unknown kid"
    # The old RSA key is gone from the JWKS that was just fetched: its token, although the
    # hub had verified (and cached) it, is refused now.
    assert_outcome(get(url, old_token), 401, code="login", diagnostics_contains="kid")
    check_resource(get(url, ec_key.sign(claims(provider.issuer))), 200, "Bundle")


def test_random_kids_do_not_make_the_hub_hammer_the_provider(hub, provider):
    rogue = Key("ES256", "unused")
    url = f"{hub.fhir_url}/Patient"
    before = provider.hits
    for n in range(30):
        token = rogue.sign(claims(provider.issuer), kid=f"random-{uuid.uuid4().hex}")
        assert get(url, token).status_code == 401
    assert provider.hits - before <= 1, f"{provider.hits - before} fetches for 30 random kids"


def test_a_provider_down_at_start_does_not_stop_the_hub(start_hub, tmp_path, hygie_bin):
    """The hub starts, its own tokens work, the provider's are refused with the reason, and
    its log says what failed."""
    port = free_port()  # nobody listens there
    issuer = f"http://127.0.0.1:{port}/realms/down"
    config = write_config(tmp_path, [{"issuer": issuer, "jwks_url": f"{issuer}/certs"}])
    server = start_hub("sqlite", no_auth=False, args=["--config", config])
    token = Key("RS256", "k1").sign(claims(issuer))
    assert_outcome(get(f"{server.fhir_url}/Patient", token), 401, code="login",
                   diagnostics_contains="could not be fetched")
    assert "cannot fetch the JWKS" in server.log_text()
    wait_http_ok(f"{server.root_url}/healthz")


@pytest.mark.parametrize("jwks_url", ["http://sso.example/certs", "ftp://127.0.0.1/certs"])
def test_a_jwks_url_without_https_is_refused_at_start(tmp_path, hygie_bin, jwks_url):
    config = write_config(tmp_path, [{"issuer": "https://sso.example/realms/h", "jwks_url": jwks_url}])
    done = run_cli(hygie_bin, ["serve", "--listen", f"127.0.0.1:{free_port()}", "--data-dir",
                               str(tmp_path / "data"), "--config", config], cwd=tmp_path, timeout_s=60)
    assert done.returncode != 0
    assert "jwks_url" in done.stderr and "https" in done.stderr, done.stderr
