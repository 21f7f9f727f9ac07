//! Tokens of external OpenID Connect providers, whose keys come from a JWKS served on
//! 127.0.0.1: what is accepted, and every way a token or a key set must be refused. Each test
//! would fail if the check it names were removed.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hygie_auth::{
    AuthError, ConfigError, Issuer, JwksOptions, ProviderConfig, TokenRequest, Verifier,
};
use serde_json::{Value, json};
use support::{JwksServer, Reply, TestKey, jwks_of, sign_hs256};

const OWN_ISSUER: &str = "https://hygie.test/auth";
const AUDIENCE: &str = "https://hygie.test/fhir";
const ISSUER_A: &str = "http://127.0.0.1/realms/a";
const ISSUER_B: &str = "http://127.0.0.1/realms/b";
const NOW: i64 = 1_800_000_000;

/// Short intervals, so that the tests wait a fraction of a second, not 30.
fn quick() -> JwksOptions {
    JwksOptions {
        refresh: Duration::from_secs(600),
        min_refresh: Duration::from_millis(200),
        fetch_timeout: Duration::from_millis(1500),
    }
}

fn provider(issuer: &str, server: &JwksServer) -> ProviderConfig {
    ProviderConfig {
        issuer: issuer.into(),
        jwks_url: server.url.clone(),
        audience: None,
    }
}

/// A Keycloak-like access token of `issuer`.
fn claims(issuer: &str) -> Value {
    json!({
        "iss": issuer,
        "sub": "f3b1c2d4-0000-4000-8000-000000000001",
        "aud": AUDIENCE,
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "exp": NOW + 300,
        "jti": "a1b2c3",
        "scope": "openid user/*.rs",
        "fhirUser": "Practitioner/ext-1",
        "realm_access": {"roles": ["clinician", "offline_access"]},
    })
}

async fn verifier_for(providers: &[ProviderConfig], options: &JwksOptions) -> Verifier {
    let own = Issuer::generate(OWN_ISSUER).unwrap();
    let verifier = Verifier::new(&own, AUDIENCE, "realm_access.roles")
        .with_providers(providers, options)
        .unwrap();
    verifier.fetch_provider_keys().await;
    verifier
}

#[tokio::test]
async fn rs256_es256_and_eddsa_tokens_of_a_provider_are_accepted() {
    let (rsa, ec, ed) = (
        TestKey::rsa("rsa-1"),
        TestKey::ec("ec-1"),
        TestKey::ed("ed-1"),
    );
    let server = JwksServer::start(&jwks_of(&[&rsa, &ec, &ed]));
    let verifier = verifier_for(&[provider(ISSUER_A, &server)], &quick()).await;
    assert_eq!(verifier.issuers(), vec![OWN_ISSUER, ISSUER_A]);
    for key in [&rsa, &ec, &ed] {
        let claims = verifier
            .verify(&key.sign(&claims(ISSUER_A)), NOW)
            .unwrap_or_else(|e| panic!("{}: {e}", key.alg()));
        assert_eq!(claims.issuer, ISSUER_A);
        assert_eq!(claims.subject, "f3b1c2d4-0000-4000-8000-000000000001");
        assert_eq!(claims.roles, vec!["clinician", "offline_access"]);
        assert_eq!(claims.scope, "openid user/*.rs");
        assert_eq!(claims.fhir_user.as_deref(), Some("Practitioner/ext-1"));
        assert_eq!(claims.token_id.as_deref(), Some("a1b2c3"));
    }
    assert_eq!(server.hits(), 1, "fetched once, at start");
}

#[tokio::test]
async fn the_hubs_own_tokens_still_verify_beside_a_provider() {
    let key = TestKey::rsa("rsa-1");
    let server = JwksServer::start(&jwks_of(&[&key]));
    let own = Issuer::generate(OWN_ISSUER).unwrap();
    let verifier = Verifier::new(&own, AUDIENCE, "roles")
        .with_providers(&[provider(ISSUER_A, &server)], &quick())
        .unwrap();
    verifier.fetch_provider_keys().await;
    let token = own
        .issue(
            &TokenRequest {
                subject: "Practitioner/p1".into(),
                audience: AUDIENCE.into(),
                roles: vec!["clinician".into()],
                scope: "user/*.rs".into(),
                patient: None,
                ttl_seconds: 600,
            },
            NOW,
        )
        .unwrap();
    assert_eq!(verifier.verify(&token, NOW).unwrap().issuer, OWN_ISSUER);
    // The hub's JWKS document publishes its own key only.
    assert_eq!(verifier.jwks(NOW)["keys"].as_array().unwrap().len(), 1);
    // An issuer nobody trusts.
    let stranger = key.sign(&claims("https://evil.test"));
    assert_eq!(
        verifier.verify(&stranger, NOW).unwrap_err(),
        AuthError::UnknownIssuer
    );
}

#[tokio::test]
async fn a_token_naming_no_known_key_is_refused() {
    let key = TestKey::rsa("rsa-1");
    let server = JwksServer::start(&jwks_of(&[&key]));
    let verifier = verifier_for(&[provider(ISSUER_A, &server)], &quick()).await;
    // A key the provider never published, under its own kid or under the published one.
    let stranger = TestKey::rsa("rsa-2");
    assert_eq!(
        verifier
            .verify_refreshing(&stranger.sign(&claims(ISSUER_A)), NOW)
            .await
            .unwrap_err(),
        AuthError::UnknownKey
    );
    let impostor = TestKey::rsa("rsa-1");
    assert_eq!(
        verifier
            .verify_refreshing(&impostor.sign(&claims(ISSUER_A)), NOW)
            .await
            .unwrap_err(),
        AuthError::BadSignature
    );
    // No kid at all: keys are selected by kid, never tried one after the other.
    let no_kid = key.sign_with_header(&json!({"alg": "RS256", "typ": "JWT"}), &claims(ISSUER_A));
    assert_eq!(
        verifier.verify(&no_kid, NOW).unwrap_err(),
        AuthError::MissingKeyId
    );
    // A tampered payload.
    let good = key.sign(&claims(ISSUER_A));
    let mut forged_claims = claims(ISSUER_A);
    forged_claims["realm_access"]["roles"] = json!(["admin"]);
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    parts[1] = support::b64_json(&forged_claims);
    assert_eq!(
        verifier.verify(&parts.join("."), NOW).unwrap_err(),
        AuthError::BadSignature
    );
    assert!(verifier.verify(&good, NOW).is_ok());
}

#[tokio::test]
async fn a_new_key_is_accepted_after_a_refresh_on_its_unknown_kid() {
    let old = TestKey::rsa("2024-01");
    let server = JwksServer::start(&jwks_of(&[&old]));
    let verifier = verifier_for(&[provider(ISSUER_A, &server)], &quick()).await;
    let new = TestKey::ec("2024-02");
    let token = new.sign(&claims(ISSUER_A));
    assert_eq!(
        verifier.verify_refreshing(&token, NOW).await.unwrap_err(),
        AuthError::UnknownKey,
        "not published yet"
    );
    // The provider rotates: both keys are published for a while.
    server.publish(&jwks_of(&[&old, &new]));
    assert_eq!(
        verifier.verify(&token, NOW).unwrap_err(),
        AuthError::UnknownKey,
        "verify alone never fetches"
    );
    tokio::time::sleep(quick().min_refresh).await;
    let hits = server.hits();
    let verified = verifier.verify_refreshing(&token, NOW).await.unwrap();
    assert_eq!(verified.issuer, ISSUER_A);
    assert_eq!(server.hits(), hits + 1, "one fetch for the new kid");
    assert!(
        verifier.verify(&old.sign(&claims(ISSUER_A)), NOW).is_ok(),
        "the old key is still published"
    );
}

#[tokio::test]
async fn concurrent_tokens_of_a_new_key_share_one_fetch_and_are_all_accepted() {
    let old = TestKey::rsa("2024-01");
    let server = JwksServer::start(&jwks_of(&[&old]));
    let verifier = Arc::new(verifier_for(&[provider(ISSUER_A, &server)], &quick()).await);
    let new = TestKey::rsa("2024-02");
    server.publish(&jwks_of(&[&old, &new]));
    let tokens: Vec<String> = (0..20)
        .map(|n| {
            let mut each = claims(ISSUER_A);
            each["jti"] = json!(format!("t{n}"));
            new.sign(&each)
        })
        .collect();
    tokio::time::sleep(quick().min_refresh).await;
    let mut tasks = tokio::task::JoinSet::new();
    for token in tokens {
        let verifier = verifier.clone();
        tasks.spawn(async move { verifier.verify_refreshing(&token, NOW).await });
    }
    for verified in tasks.join_all().await {
        // Those that waited for the fetch look again rather than give up.
        assert_eq!(verified.unwrap().issuer, ISSUER_A);
    }
    assert_eq!(server.hits(), 2, "the start, then one fetch for all 20");
}

#[tokio::test]
async fn a_key_withdrawn_from_the_jwks_is_refused_after_a_refresh_cached_tokens_included() {
    let (old, new) = (TestKey::rsa("old"), TestKey::rsa("new"));
    let server = JwksServer::start(&jwks_of(&[&old, &new]));
    let verifier = verifier_for(&[provider(ISSUER_A, &server)], &quick()).await;
    let token = old.sign(&claims(ISSUER_A));
    assert!(verifier.verify(&token, NOW).is_ok(), "verified, and cached");
    server.publish(&jwks_of(&[&new]));
    assert_eq!(verifier.fetch_provider_keys().await, 1);
    assert_eq!(
        verifier.verify(&token, NOW).unwrap_err(),
        AuthError::UnknownKey
    );
    assert!(verifier.verify(&new.sign(&claims(ISSUER_A)), NOW).is_ok());
    // The same kid, now another key: tokens of the former key are refused too.
    let replaced = TestKey::rsa("new");
    let cached = new.sign(&claims(ISSUER_A));
    assert!(verifier.verify(&cached, NOW).is_ok());
    server.publish(&jwks_of(&[&replaced]));
    verifier.fetch_provider_keys().await;
    assert_eq!(
        verifier.verify(&cached, NOW).unwrap_err(),
        AuthError::BadSignature
    );
}

#[tokio::test]
async fn the_scheduled_refresh_runs_in_the_background_and_stops_with_its_guard() {
    let (old, new) = (TestKey::ec("old"), TestKey::ec("new"));
    let server = JwksServer::start(&jwks_of(&[&old]));
    let options = JwksOptions {
        refresh: Duration::from_millis(300),
        ..quick()
    };
    let verifier = verifier_for(&[provider(ISSUER_A, &server)], &options).await;
    let token = old.sign(&claims(ISSUER_A));
    assert!(verifier.verify(&token, NOW).is_ok());
    let refresh = verifier.spawn_key_refresh();
    server.publish(&jwks_of(&[&new]));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(server.hits() >= 3, "{} fetches", server.hits());
    assert_eq!(
        verifier.verify(&token, NOW).unwrap_err(),
        AuthError::UnknownKey,
        "withdrawn by the scheduled refresh, without any request asking"
    );
    assert!(verifier.verify(&new.sign(&claims(ISSUER_A)), NOW).is_ok());
    drop(refresh);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let hits = server.hits();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(server.hits(), hits, "no fetch once the guard is dropped");
}

fn random_kid_token(key: &TestKey, n: usize) -> String {
    let kid = format!("random-{n}-{}", uuid_like());
    key.sign_with_header(&json!({"alg": key.alg(), "kid": kid}), &claims(ISSUER_A))
}

fn uuid_like() -> String {
    let mut bytes = [0u8; 8];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    support::b64(&bytes)
}

#[tokio::test]
async fn random_kids_cannot_make_the_hub_hammer_the_provider() {
    let key = TestKey::rsa("rsa-1");
    let server = JwksServer::start(&jwks_of(&[&key]));
    // The default minimum interval between two fetches for unknown kids: 30 s.
    let verifier = verifier_for(&[provider(ISSUER_A, &server)], &JwksOptions::default()).await;
    assert_eq!(server.hits(), 1);
    let attacker = TestKey::rsa("attacker");
    for n in 0..50 {
        let refused = verifier
            .verify_refreshing(&random_kid_token(&attacker, n), NOW)
            .await
            .unwrap_err();
        assert_eq!(refused, AuthError::UnknownKey);
    }
    assert!(
        server.hits() <= 2,
        "{} fetches for 50 random kids",
        server.hits()
    );
    // Concurrent misses once the interval has passed: one fetch between them all.
    let server = JwksServer::start(&jwks_of(&[&key]));
    let verifier = Arc::new(verifier_for(&[provider(ISSUER_A, &server)], &quick()).await);
    let tokens: Vec<String> = (0..50).map(|n| random_kid_token(&attacker, n)).collect();
    tokio::time::sleep(quick().min_refresh).await;
    let mut tasks = tokio::task::JoinSet::new();
    for token in tokens {
        let verifier = verifier.clone();
        tasks.spawn(async move { verifier.verify_refreshing(&token, NOW).await });
    }
    for refused in tasks.join_all().await {
        assert_eq!(refused.unwrap_err(), AuthError::UnknownKey);
    }
    assert_eq!(
        server.hits(),
        2,
        "the start, then one fetch for 50 concurrent misses"
    );
    // The good key was never out of service meanwhile.
    assert!(verifier.verify(&key.sign(&claims(ISSUER_A)), NOW).is_ok());
}

#[tokio::test]
async fn the_algorithm_comes_from_the_key_never_from_the_token() {
    let (rsa, ec) = (TestKey::rsa("rsa-1"), TestKey::ec("ec-1"));
    let server = JwksServer::start(&jwks_of(&[&rsa, &ec]));
    let verifier = verifier_for(&[provider(ISSUER_A, &server)], &quick()).await;
    let payload = claims(ISSUER_A);
    // HS256 keyed with what is public: the RSA key's bytes, its JWK, its modulus.
    let jwk = serde_json::to_vec(&rsa.jwk()).unwrap();
    let modulus = rsa.jwk()["n"].as_str().unwrap().as_bytes().to_vec();
    for secret in [rsa.public_bytes(), jwk, modulus] {
        let forged = sign_hs256(&json!({"alg": "HS256", "kid": "rsa-1"}), &payload, &secret);
        let refused = verifier.verify_refreshing(&forged, NOW).await.unwrap_err();
        assert!(
            matches!(refused, AuthError::UnsupportedAlgorithm(_)),
            "{refused:?}"
        );
    }
    // A header claiming the other family than its key's, whoever signed it.
    for (header_alg, kid, signer) in [
        ("RS256", "ec-1", &rsa),
        ("RS256", "ec-1", &ec),
        ("ES256", "rsa-1", &ec),
        ("ES256", "rsa-1", &rsa),
        ("EdDSA", "rsa-1", &rsa),
    ] {
        let forged = signer.sign_with_header(&json!({"alg": header_alg, "kid": kid}), &payload);
        let refused = verifier.verify(&forged, NOW).unwrap_err();
        assert!(
            matches!(refused, AuthError::AlgorithmMismatch { .. }),
            "{header_alg} with {kid}: {refused:?}"
        );
    }
    // alg none, unsigned.
    for alg in ["none", "None", "NONE"] {
        let header = support::b64_json(&json!({"alg": alg, "kid": "rsa-1"}));
        let body = support::b64_json(&payload);
        for signature in ["", "e30"] {
            let refused = verifier
                .verify(&format!("{header}.{body}.{signature}"), NOW)
                .unwrap_err();
            assert!(
                matches!(
                    refused,
                    AuthError::UnsupportedAlgorithm(_) | AuthError::Malformed
                ),
                "{alg}: {refused:?}"
            );
        }
    }
    // Algorithms of the right family but not accepted.
    for alg in ["RS512", "PS256", "ES384"] {
        let forged = rsa.sign_with_header(&json!({"alg": alg, "kid": "rsa-1"}), &payload);
        assert!(matches!(
            verifier.verify(&forged, NOW).unwrap_err(),
            AuthError::UnsupportedAlgorithm(_)
        ));
    }
}

#[tokio::test]
async fn a_providers_iss_with_another_providers_key_is_refused() {
    let (key_a, key_b) = (TestKey::rsa("a-1"), TestKey::rsa("b-1"));
    let same_kid_b = TestKey::ec("shared");
    let same_kid_a = TestKey::ec("shared");
    let server_a = JwksServer::start(&jwks_of(&[&key_a, &same_kid_a]));
    let server_b = JwksServer::start(&jwks_of(&[&key_b, &same_kid_b]));
    let verifier = verifier_for(
        &[provider(ISSUER_A, &server_a), provider(ISSUER_B, &server_b)],
        &quick(),
    )
    .await;
    assert!(verifier.verify(&key_a.sign(&claims(ISSUER_A)), NOW).is_ok());
    assert!(verifier.verify(&key_b.sign(&claims(ISSUER_B)), NOW).is_ok());
    // B's key signing a token that says it comes from A: A's key set does not have it.
    assert_eq!(
        verifier
            .verify_refreshing(&key_b.sign(&claims(ISSUER_A)), NOW)
            .await
            .unwrap_err(),
        AuthError::UnknownKey
    );
    // The same kid at both: A's key is the one that must have signed.
    assert_eq!(
        verifier
            .verify(&same_kid_b.sign(&claims(ISSUER_A)), NOW)
            .unwrap_err(),
        AuthError::BadSignature
    );
    assert!(
        verifier
            .verify(&same_kid_b.sign(&claims(ISSUER_B)), NOW)
            .is_ok()
    );
}

#[tokio::test]
async fn expiry_not_before_audience_and_claims_hold_for_provider_tokens() {
    let key = TestKey::ec("ec-1");
    let server = JwksServer::start(&jwks_of(&[&key]));
    let verifier = verifier_for(&[provider(ISSUER_A, &server)], &quick()).await;
    let skew = hygie_auth::CLOCK_SKEW_SECONDS as i64;
    let token = key.sign(&claims(ISSUER_A));
    assert!(verifier.verify(&token, NOW + 300 + skew - 1).is_ok());
    assert_eq!(
        verifier.verify(&token, NOW + 300 + skew).unwrap_err(),
        AuthError::Expired
    );
    let mut future = claims(ISSUER_A);
    future["nbf"] = json!(NOW + 600);
    future["exp"] = json!(NOW + 900);
    assert_eq!(
        verifier.verify(&key.sign(&future), NOW).unwrap_err(),
        AuthError::NotYetValid
    );
    let mut elsewhere = claims(ISSUER_A);
    elsewhere["aud"] = json!("account");
    assert_eq!(
        verifier.verify(&key.sign(&elsewhere), NOW).unwrap_err(),
        AuthError::WrongAudience
    );
    // aud as a list holding ours is fine (Keycloak sends lists).
    let mut listed = claims(ISSUER_A);
    listed["aud"] = json!(["account", AUDIENCE]);
    assert!(verifier.verify(&key.sign(&listed), NOW).is_ok());
    for claim in ["exp", "aud", "sub"] {
        let mut missing = claims(ISSUER_A);
        missing.as_object_mut().unwrap().remove(claim);
        let refused = verifier.verify(&key.sign(&missing), NOW).unwrap_err();
        assert!(
            matches!(refused, AuthError::MissingClaim(_)),
            "{claim}: {refused:?}"
        );
    }
}

#[tokio::test]
async fn a_provider_may_have_its_own_audience() {
    let key = TestKey::rsa("rsa-1");
    let server = JwksServer::start(&jwks_of(&[&key]));
    let config = ProviderConfig {
        audience: Some("hygie-client".into()),
        ..provider(ISSUER_A, &server)
    };
    let verifier = verifier_for(&[config], &quick()).await;
    let mut own_audience = claims(ISSUER_A);
    own_audience["aud"] = json!("hygie-client");
    assert!(verifier.verify(&key.sign(&own_audience), NOW).is_ok());
    assert_eq!(
        verifier
            .verify(&key.sign(&claims(ISSUER_A)), NOW)
            .unwrap_err(),
        AuthError::WrongAudience,
        "the hub's audience is not the provider's"
    );
}

#[tokio::test]
async fn a_failed_first_fetch_refuses_the_providers_tokens_until_a_fetch_succeeds() {
    let key = TestKey::rsa("rsa-1");
    let server = JwksServer::start(&jwks_of(&[&key]));
    server.answer_with(Reply {
        status: 503,
        ..Reply::json(&json!({}))
    });
    let verifier = verifier_for(&[provider(ISSUER_A, &server)], &quick()).await;
    let token = key.sign(&claims(ISSUER_A));
    let refused = verifier.verify_refreshing(&token, NOW).await.unwrap_err();
    assert_eq!(refused, AuthError::KeysUnavailable(ISSUER_A.into()));
    assert!(refused.to_string().contains(ISSUER_A), "{refused}");
    // The IdP is back: the next token after the retry interval gets through.
    server.publish(&jwks_of(&[&key]));
    tokio::time::sleep(quick().min_refresh).await;
    assert!(verifier.verify_refreshing(&token, NOW).await.is_ok());
}

#[tokio::test]
async fn an_unreachable_provider_does_not_keep_the_others_from_working() {
    let key = TestKey::rsa("rsa-1");
    let server = JwksServer::start(&jwks_of(&[&key]));
    // A port nobody listens on any more.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = ProviderConfig {
        issuer: ISSUER_B.into(),
        jwks_url: format!("http://{}/certs", closed.local_addr().unwrap()),
        audience: None,
    };
    drop(closed);
    let own = Issuer::generate(OWN_ISSUER).unwrap();
    let verifier = Verifier::new(&own, AUDIENCE, "roles")
        .with_providers(&[dead, provider(ISSUER_A, &server)], &quick())
        .unwrap();
    assert_eq!(verifier.fetch_provider_keys().await, 1);
    assert!(verifier.verify(&key.sign(&claims(ISSUER_A)), NOW).is_ok());
    assert_eq!(
        verifier
            .verify_refreshing(&key.sign(&claims(ISSUER_B)), NOW)
            .await
            .unwrap_err(),
        AuthError::KeysUnavailable(ISSUER_B.into())
    );
}

#[tokio::test]
async fn a_slow_provider_is_given_up_after_the_fetch_timeout() {
    let key = TestKey::rsa("rsa-1");
    let server = JwksServer::start(&jwks_of(&[&key]));
    server.answer_with(Reply {
        delay: Duration::from_secs(5),
        ..Reply::json(&jwks_of(&[&key]))
    });
    let options = JwksOptions {
        fetch_timeout: Duration::from_millis(300),
        ..quick()
    };
    let started = Instant::now();
    let verifier = verifier_for(&[provider(ISSUER_A, &server)], &options).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        verifier
            .verify(&key.sign(&claims(ISSUER_A)), NOW)
            .unwrap_err(),
        AuthError::KeysUnavailable(ISSUER_A.into())
    );
}

#[tokio::test]
async fn an_oversized_jwks_is_refused_with_or_without_content_length() {
    let key = TestKey::rsa("rsa-1");
    // A valid document padded past the bound.
    let mut document = jwks_of(&[&key]);
    document["padding"] = json!("x".repeat(hygie_auth::jwks::MAX_JWKS_BYTES));
    for content_length in [true, false] {
        let server = JwksServer::start(&json!({}));
        server.answer_with(Reply {
            content_length,
            ..Reply::json(&document)
        });
        let verifier = verifier_for(&[provider(ISSUER_A, &server)], &quick()).await;
        assert_eq!(
            verifier
                .verify(&key.sign(&claims(ISSUER_A)), NOW)
                .unwrap_err(),
            AuthError::KeysUnavailable(ISSUER_A.into()),
            "content_length {content_length}"
        );
    }
    // The same document just under the bound is read.
    let server = JwksServer::start(&json!({}));
    let mut document = jwks_of(&[&key]);
    let size = serde_json::to_vec(&document).unwrap().len();
    document["padding"] = json!("x".repeat(hygie_auth::jwks::MAX_JWKS_BYTES - size - 20));
    server.answer_with(Reply {
        content_length: false,
        ..Reply::json(&document)
    });
    let verifier = verifier_for(&[provider(ISSUER_A, &server)], &quick()).await;
    assert!(verifier.verify(&key.sign(&claims(ISSUER_A)), NOW).is_ok());
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_last_good_keys() {
    let key = TestKey::rsa("rsa-1");
    let server = JwksServer::start(&jwks_of(&[&key]));
    let verifier = verifier_for(&[provider(ISSUER_A, &server)], &quick()).await;
    for bad in [
        Reply {
            status: 500,
            ..Reply::json(&json!({}))
        },
        Reply::json(&json!({"not": "a jwks"})),
        Reply {
            body: b"<html>".to_vec(),
            ..Reply::json(&json!({}))
        },
    ] {
        server.answer_with(bad);
        assert_eq!(verifier.fetch_provider_keys().await, 0);
        assert!(verifier.verify(&key.sign(&claims(ISSUER_A)), NOW).is_ok());
    }
}

#[tokio::test]
async fn a_redirect_to_plain_http_elsewhere_is_not_followed() {
    let key = TestKey::rsa("rsa-1");
    let server = JwksServer::start(&jwks_of(&[&key]));
    server.answer_with(Reply {
        status: 302,
        location: Some("http://192.0.2.1/certs".into()),
        ..Reply::json(&json!({}))
    });
    let verifier = verifier_for(&[provider(ISSUER_A, &server)], &quick()).await;
    assert_eq!(
        verifier
            .verify(&key.sign(&claims(ISSUER_A)), NOW)
            .unwrap_err(),
        AuthError::KeysUnavailable(ISSUER_A.into())
    );
    // A redirect to another loopback URL is followed.
    let target = JwksServer::start(&jwks_of(&[&key]));
    server.answer_with(Reply {
        status: 302,
        location: Some(target.url.clone()),
        ..Reply::json(&json!({}))
    });
    assert_eq!(verifier.fetch_provider_keys().await, 1);
    assert!(verifier.verify(&key.sign(&claims(ISSUER_A)), NOW).is_ok());
}

#[test]
fn provider_settings_that_would_weaken_verification_are_refused() {
    let own = Issuer::generate(OWN_ISSUER).unwrap();
    let with = |config: ProviderConfig| {
        Verifier::new(&own, AUDIENCE, "roles").with_providers(&[config], &JwksOptions::default())
    };
    let config = |issuer: &str, url: &str| ProviderConfig {
        issuer: issuer.into(),
        jwks_url: url.into(),
        audience: None,
    };
    for url in [
        "http://sso.example/certs",
        "http://10.1.2.3/certs",
        "http://localhost:8080/certs",
        "http://0.0.0.0/certs",
        "ftp://sso.example/certs",
        "file:///etc/jwks.json",
        "https://user:secret@sso.example/certs",
        "not a url",
    ] {
        assert!(
            matches!(
                with(config(ISSUER_A, url)).unwrap_err(),
                ConfigError::BadUrl { .. }
            ),
            "{url}"
        );
    }
    for url in [
        "https://sso.example/realms/h/protocol/openid-connect/certs",
        "http://127.0.0.1:8080/certs",
        "http://127.5.6.7/certs",
        "http://[::1]:8080/certs",
    ] {
        assert!(with(config(ISSUER_A, url)).is_ok(), "{url}");
    }
    // One iss, one key set: not the hub's own issuer, not two providers.
    assert!(matches!(
        with(config(OWN_ISSUER, "https://sso.example/certs")).unwrap_err(),
        ConfigError::DuplicateIssuer { .. }
    ));
    let twice = [
        config(ISSUER_A, "https://a.example/certs"),
        config(ISSUER_A, "https://b.example/certs"),
    ];
    assert!(matches!(
        Verifier::new(&own, AUDIENCE, "roles")
            .with_providers(&twice, &JwksOptions::default())
            .unwrap_err(),
        ConfigError::DuplicateIssuer { index: 1, .. }
    ));
    assert!(matches!(
        with(config(" ", "https://a.example/certs")).unwrap_err(),
        ConfigError::EmptyIssuer { .. }
    ));
    assert!(matches!(
        with(ProviderConfig {
            audience: Some(String::new()),
            ..config(ISSUER_A, "https://a.example/certs")
        })
        .unwrap_err(),
        ConfigError::EmptyAudience { .. }
    ));
    let many: Vec<ProviderConfig> = (0..=hygie_auth::MAX_PROVIDERS)
        .map(|i| {
            config(
                &format!("https://idp{i}.example"),
                "https://a.example/certs",
            )
        })
        .collect();
    assert_eq!(
        Verifier::new(&own, AUDIENCE, "roles")
            .with_providers(&many, &JwksOptions::default())
            .unwrap_err(),
        ConfigError::TooManyProviders
    );
    // No rate limit, or a refresh faster than the rate limit, are refused.
    for options in [
        JwksOptions {
            min_refresh: Duration::ZERO,
            ..JwksOptions::default()
        },
        JwksOptions {
            refresh: Duration::from_secs(10),
            ..JwksOptions::default()
        },
        JwksOptions {
            fetch_timeout: Duration::from_secs(600),
            ..JwksOptions::default()
        },
    ] {
        assert!(matches!(
            Verifier::new(&own, AUDIENCE, "roles")
                .with_providers(&[config(ISSUER_A, "https://a.example/certs")], &options)
                .unwrap_err(),
            ConfigError::BadOptions { .. }
        ));
    }
}
