//! Every way a token must be refused (OWASP API2: broken authentication), and that a good
//! one is accepted. Each test would fail if the check it names were removed.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hygie_auth::{
    AuthError, CLOCK_SKEW_SECONDS, Issuer, MAX_OWN_KEYS, MAX_TOKEN_BYTES, OwnKey, TokenRequest,
    Verifier,
};
use proptest::prelude::*;
use serde_json::{Value, json};

const ISSUER: &str = "https://hygie.test/auth";
const AUDIENCE: &str = "https://hygie.test/fhir";
const NOW: i64 = 1_800_000_000;

fn request() -> TokenRequest {
    TokenRequest {
        subject: "Practitioner/p1".into(),
        audience: AUDIENCE.into(),
        roles: vec!["clinician".into()],
        scope: "user/*.rs".into(),
        patient: None,
        ttl_seconds: 3600,
    }
}

fn setup() -> (Issuer, Verifier) {
    let issuer = Issuer::generate(ISSUER).unwrap();
    let verifier = Verifier::new(&issuer, AUDIENCE, "roles");
    (issuer, verifier)
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

fn parts(token: &str) -> (Value, Value, String) {
    let mut it = token.split('.');
    let header =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap()).unwrap();
    let payload =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap()).unwrap();
    (header, payload, it.next().unwrap().to_owned())
}

/// Signs `payload` with the issuer's own key, as the issuer would, but with our claims.
fn sign_as(issuer: &Issuer, payload: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(issuer.key_id().to_owned());
    jsonwebtoken::encode(
        &header,
        payload,
        &jsonwebtoken::EncodingKey::from_ed_der(issuer.pkcs8()),
    )
    .unwrap()
}

#[test]
fn a_good_token_is_accepted_with_its_claims() {
    let (issuer, verifier) = setup();
    let token = issuer
        .issue(
            &TokenRequest {
                patient: Some("pat-9".into()),
                ..request()
            },
            NOW,
        )
        .unwrap();
    let claims = verifier.verify(&token, NOW + 10).unwrap();
    assert_eq!(claims.subject, "Practitioner/p1");
    assert_eq!(claims.roles, vec!["clinician".to_owned()]);
    assert_eq!(claims.scope, "user/*.rs");
    assert_eq!(claims.patient.as_deref(), Some("pat-9"));
    assert_eq!(claims.fhir_user.as_deref(), Some("Practitioner/p1"));
    assert!(
        claims.token_id.is_some(),
        "every token has a jti, for revocation"
    );
    // A stored key signs tokens the same verifier accepts.
    let reloaded = Issuer::from_pkcs8(ISSUER, issuer.pkcs8()).unwrap();
    assert_eq!(reloaded.key_id(), issuer.key_id());
    let again = reloaded.issue(&request(), NOW).unwrap();
    assert!(verifier.verify(&again, NOW).is_ok());
}

#[test]
fn alg_none_is_refused() {
    let (issuer, verifier) = setup();
    let good = issuer.issue(&request(), NOW).unwrap();
    let (_, payload, _) = parts(&good);
    for header in [
        json!({"alg": "none", "typ": "JWT"}),
        json!({"alg": "None"}),
        json!({"alg": "NONE", "kid": issuer.key_id()}),
    ] {
        for signature in ["", "e30"] {
            let forged = format!("{}.{}.{signature}", b64(&header), b64(&payload));
            let refused = verifier.verify(&forged, NOW).unwrap_err();
            assert!(
                matches!(
                    refused,
                    AuthError::UnsupportedAlgorithm(_) | AuthError::Malformed
                ),
                "{header}: {refused:?}"
            );
        }
    }
}

#[test]
fn hs256_keyed_with_the_public_key_is_refused() {
    let (issuer, verifier) = setup();
    let good = issuer.issue(&request(), NOW).unwrap();
    let (_, payload, _) = parts(&good);
    let public_x = issuer.public_jwk()["x"].as_str().unwrap().to_owned();
    let public = URL_SAFE_NO_PAD.decode(&public_x).unwrap();
    for secret in [
        public.clone(),
        public_x.into_bytes(),
        issuer.pkcs8().to_vec(),
    ] {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(issuer.key_id().to_owned());
        let forged = jsonwebtoken::encode(
            &header,
            &payload,
            &jsonwebtoken::EncodingKey::from_secret(&secret),
        )
        .unwrap();
        let refused = verifier.verify(&forged, NOW).unwrap_err();
        assert!(
            matches!(refused, AuthError::UnsupportedAlgorithm(_)),
            "{refused:?}"
        );
    }
}

#[test]
fn a_token_signed_by_another_key_is_refused() {
    let (issuer, verifier) = setup();
    // Same issuer name, another key: with its own kid, pretending to have ours, or none.
    let impostor = Issuer::generate(ISSUER).unwrap();
    let token = impostor.issue(&request(), NOW).unwrap();
    assert_eq!(
        verifier.verify(&token, NOW).unwrap_err(),
        AuthError::UnknownKey
    );
    let (_, payload, _) = parts(&token);
    for kid in [None, Some(issuer.key_id().to_owned())] {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = kid.clone();
        let forged = jsonwebtoken::encode(
            &header,
            &payload,
            &jsonwebtoken::EncodingKey::from_ed_der(impostor.pkcs8()),
        )
        .unwrap();
        assert_eq!(
            verifier.verify(&forged, NOW).unwrap_err(),
            AuthError::BadSignature,
            "kid {kid:?}"
        );
    }
}

#[test]
fn a_tampered_payload_is_refused() {
    let (issuer, verifier) = setup();
    let token = issuer.issue(&request(), NOW).unwrap();
    let (header, mut payload, signature) = parts(&token);
    for (claim, value) in [
        ("sub", json!("Practitioner/admin")),
        ("roles", json!(["admin"])),
        ("scope", json!("system/*.cruds")),
        ("exp", json!(NOW + 10 * 365 * 24 * 3600)),
        ("patient", json!("someone-else")),
    ] {
        let original = payload.clone();
        payload[claim] = value;
        let forged = format!("{}.{}.{signature}", b64(&header), b64(&payload));
        assert_eq!(
            verifier.verify(&forged, NOW).unwrap_err(),
            AuthError::BadSignature,
            "{claim}"
        );
        payload = original;
    }
}

#[test]
fn expiry_and_not_before_hold_with_a_bounded_skew() {
    let (issuer, verifier) = setup();
    let token = issuer.issue(&request(), NOW).unwrap();
    let skew = CLOCK_SKEW_SECONDS as i64;
    assert!(
        verifier.verify(&token, NOW + 3600 + skew - 1).is_ok(),
        "within the skew"
    );
    assert_eq!(
        verifier.verify(&token, NOW + 3600 + skew).unwrap_err(),
        AuthError::Expired
    );
    // Expired once cached, too.
    let (issuer, verifier) = setup();
    let token = issuer.issue(&request(), NOW).unwrap();
    assert!(verifier.verify(&token, NOW).is_ok());
    assert_eq!(
        verifier.verify(&token, NOW + 7200).unwrap_err(),
        AuthError::Expired
    );
    // Not yet valid: signed for the future, beyond the skew.
    let future = issuer.issue(&request(), NOW + 600).unwrap();
    assert_eq!(
        verifier.verify(&future, NOW).unwrap_err(),
        AuthError::NotYetValid
    );
    assert!(verifier.verify(&future, NOW + 600 - skew + 1).is_ok());
}

#[test]
fn wrong_audience_issuer_or_missing_claims_are_refused() {
    let (issuer, verifier) = setup();
    let other_audience = issuer
        .issue(
            &TokenRequest {
                audience: "https://elsewhere.test/fhir".into(),
                ..request()
            },
            NOW,
        )
        .unwrap();
    assert_eq!(
        verifier.verify(&other_audience, NOW).unwrap_err(),
        AuthError::WrongAudience
    );
    let (_, payload, _) = parts(&issuer.issue(&request(), NOW).unwrap());
    let mut other_issuer = payload.clone();
    other_issuer["iss"] = json!("https://evil.test");
    assert_eq!(
        verifier
            .verify(&sign_as(&issuer, &other_issuer), NOW)
            .unwrap_err(),
        AuthError::UnknownIssuer
    );
    for claim in ["exp", "aud", "sub", "iss"] {
        let mut missing = payload.clone();
        missing.as_object_mut().unwrap().remove(claim);
        let refused = verifier
            .verify(&sign_as(&issuer, &missing), NOW)
            .unwrap_err();
        assert!(
            matches!(refused, AuthError::MissingClaim(_)),
            "{claim}: {refused:?}"
        );
    }
    let mut empty_subject = payload;
    empty_subject["sub"] = json!("");
    assert!(
        verifier
            .verify(&sign_as(&issuer, &empty_subject), NOW)
            .is_err()
    );
}

#[test]
fn roles_come_from_the_configured_claim() {
    let issuer = Issuer::generate(ISSUER).unwrap();
    let (_, mut payload, _) = parts(&issuer.issue(&request(), NOW).unwrap());
    payload["realm_access"] = json!({"roles": ["nurse", "btg"]});
    let token = sign_as(&issuer, &payload);
    let keycloak = Verifier::new(&issuer, AUDIENCE, "realm_access.roles");
    assert_eq!(
        keycloak.verify(&token, NOW).unwrap().roles,
        vec!["nurse".to_owned(), "btg".to_owned()]
    );
    let plain = Verifier::new(&issuer, AUDIENCE, "roles");
    assert_eq!(
        plain.verify(&token, NOW).unwrap().roles,
        vec!["clinician".to_owned()]
    );
}

#[test]
fn the_issuer_refuses_what_it_must_not_sign() {
    let (issuer, _) = setup();
    assert!(
        issuer
            .issue(
                &TokenRequest {
                    ttl_seconds: 0,
                    ..request()
                },
                NOW
            )
            .is_err()
    );
    assert!(
        issuer
            .issue(
                &TokenRequest {
                    ttl_seconds: 10 * 24 * 3600,
                    ..request()
                },
                NOW
            )
            .is_err()
    );
    assert!(
        issuer
            .issue(
                &TokenRequest {
                    subject: String::new(),
                    ..request()
                },
                NOW
            )
            .is_err()
    );
    assert!(Issuer::from_pkcs8(ISSUER, b"not a key").is_err());
}

#[test]
fn oversized_tokens_are_refused_before_parsing() {
    let (_, verifier) = setup();
    let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
    assert_eq!(verifier.verify(&huge, NOW).unwrap_err(), AuthError::TooLong);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_input_never_verifies_nor_panics(input in ".{0,600}") {
        let (_, verifier) = setup();
        prop_assert!(verifier.verify(&input, NOW).is_err());
    }

    #[test]
    fn any_altered_character_is_refused_or_harmless(position in 0usize..2000, replacement in "[A-Za-z0-9_.=-]") {
        let (issuer, verifier) = setup();
        let token = issuer.issue(&request(), NOW).unwrap();
        let original = verifier.verify(&token, NOW).unwrap();
        let position = position % token.len();
        let mut altered: Vec<char> = token.chars().collect();
        altered[position] = replacement.chars().next().unwrap();
        let altered: String = altered.into_iter().collect();
        // base64url's last character may carry unused bits: an alteration there can decode
        // to the same bytes, and so to the same, genuinely signed, claims.
        if let Ok(claims) = verifier.verify(&altered, NOW) {
            prop_assert_eq!(claims, original);
        }
    }
}

#[test]
fn after_a_rotation_both_keys_verify_until_the_old_one_is_retired() {
    let (old, verifier) = setup();
    let old_token = old.issue(&request(), NOW).unwrap();
    // Verified, so cached: the cache must not outlive the key.
    verifier.verify(&old_token, NOW).unwrap();
    let new = Issuer::generate(ISSUER).unwrap();
    let new_token = new.issue(&request(), NOW).unwrap();
    assert_eq!(
        verifier.verify(&new_token, NOW).unwrap_err(),
        AuthError::UnknownKey,
        "a key the verifier was not told about"
    );
    let grace_until = NOW + 600;
    verifier
        .set_own_keys(&[
            new.own_key(),
            OwnKey {
                public_key: old.public_key().to_vec(),
                trusted_until: Some(grace_until),
            },
        ])
        .unwrap();
    verifier.verify(&new_token, NOW).unwrap();
    verifier.verify(&old_token, NOW).unwrap();
    assert_eq!(verifier.jwks(NOW)["keys"].as_array().unwrap().len(), 2);
    // The grace period ends: the old key's tokens, cached or not, are refused.
    assert_eq!(
        verifier.verify(&old_token, grace_until).unwrap_err(),
        AuthError::RetiredKey
    );
    let other_old_token = old.issue(&request(), NOW).unwrap();
    assert_eq!(
        verifier.verify(&other_old_token, grace_until).unwrap_err(),
        AuthError::RetiredKey
    );
    verifier.verify(&new_token, grace_until).unwrap();
    let published = verifier.jwks(grace_until);
    assert_eq!(published["keys"].as_array().unwrap().len(), 1);
    assert_eq!(published["keys"][0]["kid"], new.key_id());
}

#[test]
fn a_key_left_out_of_the_keyring_verifies_nothing_even_cached() {
    let (old, verifier) = setup();
    let old_token = old.issue(&request(), NOW).unwrap();
    verifier.verify(&old_token, NOW).unwrap();
    let new = Issuer::generate(ISSUER).unwrap();
    verifier.set_own_keys(&[new.own_key()]).unwrap();
    assert_eq!(
        verifier.verify(&old_token, NOW).unwrap_err(),
        AuthError::UnknownKey
    );
}

#[test]
fn a_keyring_that_is_empty_too_large_or_not_ed25519_is_refused_and_the_old_one_stays() {
    let (issuer, verifier) = setup();
    let token = issuer.issue(&request(), NOW).unwrap();
    assert!(verifier.set_own_keys(&[]).is_err());
    let many: Vec<OwnKey> = (0..=MAX_OWN_KEYS)
        .map(|_| Issuer::generate(ISSUER).unwrap().own_key())
        .collect();
    assert!(verifier.set_own_keys(&many).is_err());
    assert!(
        verifier
            .set_own_keys(&[OwnKey {
                public_key: vec![7; 31],
                trusted_until: None
            }])
            .is_err()
    );
    verifier.verify(&token, NOW).unwrap();
}
