"""Bearer tokens from `hygie token`: what they grant, what they do not, and the tokens that
must be refused (OWASP API1, API2, API5). Each check would fail if its protection broke.
Both backends; the SMART client library `fhirclient` and PyJWT act as independent clients."""

from __future__ import annotations

import base64
import json

import jwt  # PyJWT, an independent JWT implementation
import pytest
import requests
from fhirclient.auth import FHIROAuth2Auth
from fhirclient.models.observation import Observation as ClientObservation
from fhirclient.models.patient import Patient as ClientPatient
from fhirclient.server import FHIRServer

from e2e_support import (
    MRN_SYSTEM,
    assert_outcome,
    check_resource,
    observation,
    one_shot,
    patient,
    run_cli,
)


def _store_args(server) -> list[str]:
    if server.database_url:
        return ["--database", server.database_url]
    return ["--data-dir", str(server.data_dir)]


def token(hygie_bin, tmp_path, server, *, subject="Practitioner/p1", roles=("clinician",), scope="user/*.cruds",
          ttl=None, patient_context=None) -> str:
    args = ["token", *_store_args(server), "--subject", subject, "--scope", scope]
    if patient_context:
        args += ["--patient", patient_context]
    for role in roles:
        args += ["--role", role]
    if ttl is not None:
        args += ["--ttl", str(ttl)]
    done = run_cli(hygie_bin, args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def admit(hygie_bin, tmp_path, server, patient_id, practitioner="Practitioner/p1") -> dict:
    """Admits a patient with `practitioner` attending, as the ADT feed would (an integration
    system token): the care relationship need-to-know asks of clinicians."""
    adt = token(hygie_bin, tmp_path, server, subject="Device/adt", roles=("integration",),
                scope="system/Encounter.cruds")
    encounter = {"resourceType": "Encounter", "status": "in-progress",
                 "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
                 "subject": {"reference": f"Patient/{patient_id}"},
                 "participant": [{"individual": {"reference": practitioner}}],
                 "period": {"start": "2026-01-01T08:00:00Z"}}
    return check_resource(post(f"{server.fhir_url}/Encounter", adt, encounter), 201, "Encounter")


def bearer(value: str) -> dict:
    return {"Authorization": f"Bearer {value}"}


def get(url, value, **params):
    return one_shot("GET", url, headers=bearer(value), params=params)


def post(url, value, body):
    return one_shot("POST", url, headers={**bearer(value), "Content-Type": "application/fhir+json"}, json=body)


@pytest.fixture(params=["sqlite", "postgres"])
def secured(request, start_hub):
    """A hub that requires tokens (no --no-auth)."""
    return start_hub(request.param, no_auth=False)


def test_a_token_grants_what_its_scopes_and_role_allow(secured, hygie_bin, tmp_path):
    hub = secured.fhir_url
    writer = token(hygie_bin, tmp_path, secured, scope="user/Patient.cruds user/Observation.cruds")
    created = check_resource(post(f"{hub}/Patient", writer, patient("auth-1")), 201, "Patient")
    admit(hygie_bin, tmp_path, secured, created["id"])
    obs = check_resource(post(f"{hub}/Observation", writer, observation(f"Patient/{created['id']}")),
                         201, "Observation")
    # Read-only on Observation: reads and searches, no write, nothing else.
    reader = token(hygie_bin, tmp_path, secured, scope="user/Observation.rs")
    check_resource(get(f"{hub}/Observation/{obs['id']}", reader), 200, "Observation")
    check_resource(get(f"{hub}/Observation", reader, subject=f"Patient/{created['id']}"), 200, "Bundle")
    assert_outcome(post(f"{hub}/Observation", reader, observation(f"Patient/{created['id']}")), 403,
                   code="forbidden")
    assert_outcome(get(f"{hub}/Patient/{created['id']}", reader), 403, code="forbidden",
                   diagnostics_contains="Patient.r")
    # `r` without `s`: reads, does not search.
    read_only = token(hygie_bin, tmp_path, secured, scope="user/Observation.r")
    check_resource(get(f"{hub}/Observation/{obs['id']}", read_only), 200, "Observation")
    assert_outcome(get(f"{hub}/Observation", read_only), 403, code="forbidden")
    # The role caps the scopes: reception sees patients, not observations.
    reception = token(hygie_bin, tmp_path, secured, roles=("reception",), scope="user/*.cruds")
    check_resource(get(f"{hub}/Patient/{created['id']}", reception), 200, "Patient")
    assert_outcome(get(f"{hub}/Observation/{obs['id']}", reception), 403, code="forbidden",
                   diagnostics_contains="reception")
    # An unknown role grants nothing.
    nobody = token(hygie_bin, tmp_path, secured, roles=("superuser",), scope="user/*.cruds")
    assert_outcome(get(f"{hub}/Patient/{created['id']}", nobody), 403, code="forbidden")


def test_includes_chains_and_transactions_cannot_reach_around_a_scope(secured, hygie_bin, tmp_path):
    """API1: data of a type the token may not read must not come back through _include,
    _revinclude, a chain, _has, or hide in a transaction entry."""
    hub = secured.fhir_url
    writer = token(hygie_bin, tmp_path, secured, scope="user/Patient.cruds user/Observation.cruds")
    pat = check_resource(post(f"{hub}/Patient", writer, patient("auth-2", family="Hidden")), 201, "Patient")
    admit(hygie_bin, tmp_path, secured, pat["id"])
    check_resource(post(f"{hub}/Observation", writer, observation(f"Patient/{pat['id']}")), 201, "Observation")
    observations_only = token(hygie_bin, tmp_path, secured, scope="user/Observation.rs")
    for params, named in (({"_include": "Observation:subject"}, "_include of"),
                          ({"_include": "Observation:patient:Patient"}, "_include of Patient"),
                          ({"subject:Patient.family": "Hidden"}, "chain through Patient"),
                          ({"patient.family": "Hidden"}, "chain through Patient")):
        assert_outcome(get(f"{hub}/Observation", observations_only, **params), 403, code="forbidden",
                       diagnostics_contains=named)
    patients_only = token(hygie_bin, tmp_path, secured, scope="user/Patient.rs")
    for params, named in (({"_revinclude": "Observation:subject"}, "_revinclude of Observation"),
                          ({"_has:Observation:subject:code": "8867-4"}, "_has on Observation")):
        assert_outcome(get(f"{hub}/Patient", patients_only, **params), 403, code="forbidden",
                       diagnostics_contains=named)
    # A transaction with one entry the token may not write writes nothing.
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:7a1c3d52-7f0e-4c55-9a55-000000000001", "resource": patient("auth-3"),
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": observation("urn:uuid:7a1c3d52-7f0e-4c55-9a55-000000000001"),
         "request": {"method": "POST", "url": "Observation"}},
    ]}
    patient_writer = token(hygie_bin, tmp_path, secured, scope="user/Patient.cruds")
    assert_outcome(post(hub, patient_writer, bundle), 403, code="forbidden", diagnostics_contains="entry[1]")
    found = check_resource(get(f"{hub}/Patient", writer, identifier=f"{MRN_SYSTEM}|auth-3"), 200, "Bundle")
    assert not found.get("entry"), "the refused transaction wrote its Patient"
    # The same transaction with the right scopes goes through (a system's token: a user's
    # entries under need-to-know are sent one by one, each checked against their patient).
    system_writer = token(hygie_bin, tmp_path, secured, subject="Device/feed", roles=("integration",),
                          scope="system/Patient.cruds system/Observation.cruds")
    check_resource(post(hub, system_writer, bundle), 200, "Bundle")
    assert_outcome(post(hub, writer, bundle), 403, code="forbidden", diagnostics_contains="need-to-know")


def test_tokens_that_must_be_refused(secured, hygie_bin, tmp_path, start_hub):
    """API2: forged, tampered, foreign and malformed tokens get 401 with WWW-Authenticate."""
    hub = secured.fhir_url
    good = token(hygie_bin, tmp_path, secured, scope="user/Patient.rs")
    assert get(f"{hub}/Patient", good).status_code == 200
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))

    def encode(part: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=")

    escalated = dict(claims, scope="user/*.cruds", roles=["admin", "clinician"])
    forged = {
        "tampered payload": f"{header}.{encode(escalated)}.{signature}",
        "alg none": f"{encode({'alg': 'none', 'typ': 'JWT'})}.{encode(escalated)}.",
        "HS256 keyed with the public key": jwt.encode(
            escalated, _public_key_bytes(hub), algorithm="HS256", headers={"kid": _kid(good)}),
        "not a JWT": "not-a-jwt",
        "truncated": f"{header}.{payload}",
    }
    # Signed by another hub's key (another data directory or database).
    other = start_hub("sqlite", no_auth=False)
    forged["another hub's key"] = token(hygie_bin, tmp_path, other, scope="user/Patient.rs")
    for name, value in forged.items():
        response = get(f"{hub}/Patient", value)
        assert_outcome(response, 401, code="login")
        assert response.headers.get("WWW-Authenticate", "").startswith("Bearer"), name
    # Only Bearer.
    response = one_shot("GET", f"{hub}/Patient", headers={"Authorization": f"Basic {good}"})
    assert_outcome(response, 401)
    # An expired token (PyJWT re-signs nothing: we ask our issuer for the shortest life and
    # check the claim PyJWT reads; expiry itself is tested in hygie-auth with a clock).
    short = token(hygie_bin, tmp_path, secured, scope="user/Patient.rs", ttl=1)
    decoded = jwt.decode(short, options={"verify_signature": False})
    assert decoded["exp"] - decoded["iat"] == 1


def _public_key_bytes(hub: str) -> bytes:
    keys = requests.get(f"{hub}/.well-known/jwks.json", timeout=10).json()["keys"]
    x = keys[0]["x"]
    return base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))


def _kid(value: str) -> str:
    return jwt.get_unverified_header(value)["kid"]


def test_jwks_verifies_our_tokens_with_an_independent_library(secured, hygie_bin, tmp_path):
    hub = secured.fhir_url
    configuration = requests.get(f"{hub}/.well-known/smart-configuration", timeout=10).json()
    assert "permission-v2" in configuration["capabilities"]
    jwks = requests.get(configuration["jwks_uri"], timeout=10).json()
    assert all("d" not in key for key in jwks["keys"]), "no private key material is published"
    value = token(hygie_bin, tmp_path, secured, subject="Practitioner/p9", scope="user/Patient.rs")
    key = jwt.PyJWK(jwks["keys"][0])
    claims = jwt.decode(value, key=key, algorithms=["EdDSA"], audience="hygie")
    assert claims["sub"] == "Practitioner/p9"
    assert claims["scope"] == "user/Patient.rs"
    assert claims["roles"] == ["clinician"]
    assert claims["jti"]


def test_a_smart_client_library_uses_a_token(secured, hygie_bin, tmp_path):
    """Python fhirclient (SMART on FHIR's reference client) reads and searches with it."""
    hub = secured.fhir_url
    writer = token(hygie_bin, tmp_path, secured, scope="user/Patient.cruds user/Observation.cruds")
    pat = check_resource(post(f"{hub}/Patient", writer, patient("auth-4", family="Client")), 201, "Patient")
    admit(hygie_bin, tmp_path, secured, pat["id"])
    check_resource(post(f"{hub}/Observation", writer, observation(f"Patient/{pat['id']}")), 201, "Observation")

    auth = FHIROAuth2Auth()
    auth.access_token = token(hygie_bin, tmp_path, secured, scope="user/Patient.rs user/Observation.rs")
    server = FHIRServer(None, base_uri=hub + "/")
    server.auth = auth
    read = ClientPatient.read(pat["id"], server)
    assert read.name[0].family == "Client"
    bundle = ClientObservation.where(struct={"subject": f"Patient/{pat['id']}"}).perform(server)
    assert len(bundle.entry) == 1
    assert bundle.entry[0].resource.subject.reference == f"Patient/{pat['id']}"
    # Without the token, the same library gets the 401.
    anonymous = FHIRServer(None, base_uri=hub + "/")
    with pytest.raises(Exception) as refused:
        ClientPatient.read(pat["id"], anonymous)
    assert "401" in str(refused.value)


def test_revocation_refuses_a_token_or_a_principal_from_the_next_request(secured, hygie_bin, tmp_path):
    """`hygie revoke --jti` refuses one token, `--subject` every token of a principal (even
    one already verified and cached), until `--lift`; the refusals are 401."""
    hub = secured.fhir_url
    first = token(hygie_bin, tmp_path, secured, subject="Practitioner/rev", scope="user/Patient.rs")
    second = token(hygie_bin, tmp_path, secured, subject="Practitioner/rev", scope="user/Patient.crs")
    other = token(hygie_bin, tmp_path, secured, subject="Practitioner/stays", scope="user/Patient.rs")
    for value in (first, second, other):
        assert get(f"{hub}/Patient", value).status_code == 200  # verified and cached
    jti = jwt.decode(first, options={"verify_signature": False})["jti"]

    def revoke(*args):
        done = run_cli(hygie_bin, ["revoke", *_store_args(secured), *args], cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return done

    revoke("--jti", jti, "--reason", "stolen laptop")
    assert_outcome(get(f"{hub}/Patient", first), 401, code="login", diagnostics_contains="stolen laptop")
    assert get(f"{hub}/Patient", second).status_code == 200, "only that token"
    revoke("--subject", "Practitioner/rev", "--reason", "left the hospital")
    for value in (first, second):
        assert_outcome(get(f"{hub}/Patient", value), 401, code="login")
    # Writes too, and searches on the reader threads.
    assert_outcome(post(f"{hub}/Patient", second, patient("rev-1")), 401, code="login")
    assert get(f"{hub}/Patient", other).status_code == 200, "another principal is not affected"
    revoke("--subject", "Practitioner/rev", "--lift")
    assert get(f"{hub}/Patient", second).status_code == 200
    assert_outcome(get(f"{hub}/Patient", first), 401, code="login")  # its own revocation stays
    # Lifting what is not revoked says so.
    done = run_cli(hygie_bin, ["revoke", *_store_args(secured), "--subject", "Practitioner/none", "--lift"],
                   cwd=tmp_path)
    assert done.returncode != 0 and "not revoked" in done.stderr


def test_rate_limits_per_principal_and_per_address(start_hub, hygie_bin, tmp_path):
    """API4: a flood from one principal, or from one address, gets 429 with Retry-After and
    a `throttled` OperationOutcome; others are not held up by it."""
    settings = tmp_path / "limits.toml"
    settings.write_text("[limits]\nrate_per_principal = 5\nrate_per_address = 20\n")
    server = start_hub("sqlite", no_auth=False, args=["--config", str(settings)])
    hub = server.fhir_url
    flooder = token(hygie_bin, tmp_path, server, subject="Practitioner/flood", scope="user/Patient.rs")
    calm = token(hygie_bin, tmp_path, server, subject="Practitioner/calm", scope="user/Patient.rs")
    with requests.Session() as session:
        statuses = [session.get(f"{hub}/Patient", headers=bearer(flooder)).status_code for _ in range(30)]
        assert statuses[:10] == [200] * 10, f"the burst (twice the rate) passes: {statuses}"
        assert 429 in statuses, statuses
        refused = session.get(f"{hub}/Patient", headers=bearer(flooder))
        assert_outcome(refused, 429, code="throttled")
        assert int(refused.headers["Retry-After"]) >= 1
        # Another principal, same address: its own bucket.
        assert session.get(f"{hub}/Patient", headers=bearer(calm)).status_code == 200
        # The address's own limit (20/s, burst 40) holds whatever the tokens: 200 requests
        # overrun it unless each takes over 40 ms (a loaded debug build takes ~10).
        seen = [session.get(f"{hub}/metadata").status_code for _ in range(200)]
        assert 429 in seen, "the address is limited, even without a token"


def test_a_patient_token_sees_only_that_patients_compartment(secured, hygie_bin, tmp_path):
    """API1: a patient's own token (patient/ scopes, a patient context) reads and searches
    that patient's data and nothing of anyone else's, not even whether it exists."""
    hub = secured.fhir_url
    writer = token(hygie_bin, tmp_path, secured, scope="user/Patient.cruds user/Observation.cruds")
    me = check_resource(post(f"{hub}/Patient", writer, patient("pt-me")), 201, "Patient")["id"]
    other = check_resource(post(f"{hub}/Patient", writer, patient("pt-other")), 201, "Patient")["id"]
    for admitted in (me, other):
        admit(hygie_bin, tmp_path, secured, admitted)
    mine = [check_resource(post(f"{hub}/Observation", writer, observation(f"Patient/{me}", value=v)), 201,
                           "Observation")["id"] for v in (60.0, 61.0)]
    theirs = check_resource(post(f"{hub}/Observation", writer, observation(f"Patient/{other}")), 201,
                            "Observation")["id"]
    value = token(hygie_bin, tmp_path, secured, subject=f"Patient/{me}", roles=("patient",),
                  scope="patient/*.rs", patient_context=me)

    check_resource(get(f"{hub}/Patient/{me}", value), 200, "Patient")
    for observation_id in mine:
        check_resource(get(f"{hub}/Observation/{observation_id}", value), 200, "Observation")
    # Someone else's, and one that does not exist: the same refusal, so nothing is told.
    for reference in (f"Observation/{theirs}", f"Patient/{other}", "Observation/does-not-exist"):
        assert_outcome(get(f"{hub}/{reference}", value), 403, code="forbidden",
                       diagnostics_contains="compartment")
    # Searches, totals and compartment searches hold only this patient's data.
    found = check_resource(get(f"{hub}/Observation", value, _total="accurate"), 200, "Bundle")
    assert sorted(e["resource"]["id"] for e in found.get("entry", [])) == sorted(mine)
    assert found["total"] == 2
    patients = check_resource(get(f"{hub}/Patient", value), 200, "Bundle")
    assert [e["resource"]["id"] for e in patients["entry"]] == [me]
    elsewhere = check_resource(get(f"{hub}/Patient/{other}/Observation", value), 200, "Bundle")
    assert not elsewhere.get("entry"), "another patient's compartment is empty to this token"
    everything = check_resource(get(f"{hub}/Patient/{me}/$everything", value), 200, "Bundle")
    assert theirs not in {e["resource"]["id"] for e in everything["entry"]}
    assert_outcome(get(f"{hub}/Patient/{other}/$everything", value), 403, code="forbidden")
    # Includes and _has keep to the compartment; one resource's history, never a type's.
    included = check_resource(get(f"{hub}/Observation", value, _include="Observation:subject"), 200, "Bundle")
    assert {e["resource"]["id"] for e in included["entry"] if e["search"]["mode"] == "include"} == {me}
    revinclude = check_resource(get(f"{hub}/Patient", value, _revinclude="Observation:subject"), 200, "Bundle")
    assert {e["resource"]["id"] for e in revinclude["entry"]} == {me, *mine}
    has = check_resource(get(f"{hub}/Patient", value, **{"_has:Observation:subject:code": "8867-4"}), 200,
                         "Bundle")
    assert [e["resource"]["id"] for e in has["entry"]] == [me]
    check_resource(get(f"{hub}/Observation/{mine[0]}/_history", value), 200, "Bundle")
    assert_outcome(get(f"{hub}/Observation/{theirs}/_history", value), 403, code="forbidden")
    assert_outcome(get(f"{hub}/Observation/_history", value), 403, code="forbidden")
    # The patient's role reads; it writes nothing, whatever its scopes say.
    assert_outcome(post(f"{hub}/Observation", value, observation(f"Patient/{me}")), 403, code="forbidden")
    # A clinician's app launched on this patient (patient/ scopes, patient context) writes
    # within the compartment only.
    admit(hygie_bin, tmp_path, secured, me)
    admit(hygie_bin, tmp_path, secured, other)
    app = token(hygie_bin, tmp_path, secured, scope="patient/*.cruds", patient_context=me)
    check_resource(post(f"{hub}/Observation", app, observation(f"Patient/{me}", value=80.0)), 201, "Observation")
    assert_outcome(post(f"{hub}/Observation", app, observation(f"Patient/{other}", value=81.0)), 403,
                   code="forbidden", diagnostics_contains="compartment")
    moved = dict(observation(f"Patient/{me}"), id=theirs)
    assert_outcome(one_shot("PUT", f"{hub}/Observation/{theirs}", json=moved,
                            headers={**bearer(app), "Content-Type": "application/fhir+json"}), 403,
                   code="forbidden")
    assert_outcome(one_shot("DELETE", f"{hub}/Observation/{theirs}", headers=bearer(app)), 403, code="forbidden")
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"request": {"method": "GET", "url": f"Observation/{theirs}"}}]}
    assert_outcome(post(hub, value, bundle), 403, code="forbidden")
    # A patient's token with user/ scopes gets nothing from them.
    sneaky = token(hygie_bin, tmp_path, secured, subject=f"Patient/{me}", roles=("patient",),
                   scope="user/*.rs", patient_context=me)
    assert_outcome(get(f"{hub}/Observation/{theirs}", sneaky), 403, code="forbidden")


def test_revocation_over_http_needs_the_admin_role(secured, hygie_bin, tmp_path):
    """API5: administrative functions refuse clinical tokens and anonymous callers."""
    admin_url = secured.root_url + "/admin/revocations"
    victim = token(hygie_bin, tmp_path, secured, subject="Practitioner/v", scope="user/Patient.rs")
    jti = jwt.decode(victim, options={"verify_signature": False})["jti"]
    clinician = token(hygie_bin, tmp_path, secured, scope="user/*.cruds")
    admin = token(hygie_bin, tmp_path, secured, subject="Practitioner/officer", roles=("admin",), scope="openid")
    body = {"jti": jti, "reason": "phished"}
    assert_outcome(one_shot("POST", admin_url, json=body), 401)
    assert_outcome(one_shot("POST", admin_url, json=body, headers=bearer(clinician)), 403, code="forbidden",
                   diagnostics_contains="admin")
    assert get(f"{secured.fhir_url}/Patient", victim).status_code == 200, "nothing was revoked"
    # Malformed requests: a precise 400.
    for bad in ({}, {"jti": jti, "subject": "Practitioner/v"}, {"jti": 7}):
        assert_outcome(one_shot("POST", admin_url, json=bad, headers=bearer(admin)), 400)
    done = one_shot("POST", admin_url, json=body, headers=bearer(admin))
    assert done.status_code == 200, done.text
    assert_outcome(get(f"{secured.fhir_url}/Patient", victim), 401, diagnostics_contains="phished")
    # The admin role reads no clinical data.
    assert_outcome(get(f"{secured.fhir_url}/Patient", admin), 403, code="forbidden")
    lifted = one_shot("DELETE", admin_url, json={"jti": jti}, headers=bearer(admin))
    assert lifted.status_code == 200, lifted.text
    assert get(f"{secured.fhir_url}/Patient", victim).status_code == 200
    assert_outcome(one_shot("DELETE", admin_url, json={"jti": jti}, headers=bearer(admin)), 404)


def test_role_ceilings_come_from_the_settings_file(start_hub, hygie_bin, tmp_path):
    """`[auth.roles]` replaces or adds role ceilings; a ceiling that is not valid SMART is
    refused at start, naming the setting."""
    settings = tmp_path / "roles.toml"
    settings.write_text('[auth.roles]\nclinician = "user/Patient.cruds"\npharmacist = "user/Medication.rs"\n')
    server = start_hub("sqlite", no_auth=False, args=["--config", str(settings)])
    hub = server.fhir_url
    clinician = token(hygie_bin, tmp_path, server, scope="user/*.cruds")
    check_resource(post(f"{hub}/Patient", clinician, patient("roles-1")), 201, "Patient")
    assert_outcome(get(f"{hub}/Observation", clinician), 403, code="forbidden", diagnostics_contains="clinician")
    pharmacist = token(hygie_bin, tmp_path, server, roles=("pharmacist",), scope="user/*.rs")
    check_resource(get(f"{hub}/Medication", pharmacist), 200, "Bundle")
    assert_outcome(get(f"{hub}/Patient", pharmacist), 403, code="forbidden")

    bad = tmp_path / "bad-roles.toml"
    bad.write_text('[auth.roles]\nclinician = "user/Observation.sr"\n')
    done = run_cli(hygie_bin, ["serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "d"),
                               "--config", str(bad)], cwd=tmp_path)
    assert done.returncode != 0
    assert "auth.roles" in done.stderr and "clinician" in done.stderr, done.stderr


def test_the_policy_reloads_from_the_settings_file_for_an_admin_or_on_sighup(start_hub, hygie_bin, tmp_path):
    """Administrative functions need the admin role: a policy reload over HTTP is refused to
    a clinician (and audited), done for an admin; a settings file that does not load leaves
    the policy in force; SIGHUP reloads too."""
    import signal
    import time

    settings = tmp_path / "policy.toml"
    settings.write_text('[auth.roles]\nclinician = "user/*.rs"\n')
    server = start_hub("sqlite", no_auth=False, args=["--config", str(settings)])
    hub, reload_url = server.fhir_url, f"{server.root_url}/admin/policy/reload"
    clinician = token(hygie_bin, tmp_path, server, scope="user/*.rs")
    admin = token(hygie_bin, tmp_path, server, subject="Practitioner/root", roles=("admin",), scope="openid")
    check_resource(get(f"{hub}/Observation", clinician), 200, "Bundle")

    settings.write_text('[auth.roles]\nclinician = "user/Patient.rs"\n')
    assert_outcome(one_shot("POST", reload_url, headers=bearer(clinician)), 403, code="forbidden",
                   diagnostics_contains="admin")
    check_resource(get(f"{hub}/Observation", clinician), 200, "Bundle")  # nothing changed
    reloaded = one_shot("POST", reload_url, headers=bearer(admin))
    assert reloaded.status_code == 200, reloaded.text
    assert_outcome(get(f"{hub}/Observation", clinician), 403, code="forbidden")
    check_resource(get(f"{hub}/Patient", clinician), 200, "Bundle")

    settings.write_text('[auth.roles]\nclinician = "user/Observation.sr"\n')  # not a scope
    assert_outcome(one_shot("POST", reload_url, headers=bearer(admin)), 400, code="invalid",
                   diagnostics_contains="stays")
    assert_outcome(get(f"{hub}/Observation", clinician), 403, code="forbidden")

    settings.write_text('[auth.roles]\nclinician = "user/*.rs"\n')
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while get(f"{hub}/Observation", clinician).status_code != 200:
        assert time.monotonic() < deadline, "SIGHUP did not reload the policy"
        time.sleep(0.1)
