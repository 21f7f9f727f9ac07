//! The JWKS parser: which keys it keeps, with which algorithm, and every key and document it
//! must not take. Pure, no network.

mod support;

use hygie_auth::jwks::{self, JwksError, MAX_JWKS_BYTES, MAX_JWKS_KEYS};
use jsonwebtoken::Algorithm;
use proptest::prelude::*;
use serde_json::{Value, json};
use support::{TestKey, b64, jwks_of};

fn only_skipped(document: Value) -> String {
    let parsed = jwks::parse(&serde_json::to_vec(&document).unwrap()).unwrap();
    assert!(parsed.is_empty(), "{document}: kept {:?}", parsed.key_ids());
    assert_eq!(parsed.skipped().len(), 1, "{document}");
    parsed.skipped()[0].reason.clone()
}

fn with(key: &TestKey, changes: Value) -> Value {
    let mut jwk = key.jwk();
    for (name, value) in changes.as_object().unwrap() {
        if value.is_null() {
            jwk.as_object_mut().unwrap().remove(name);
        } else {
            jwk[name] = value.clone();
        }
    }
    json!({ "keys": [jwk] })
}

#[test]
fn each_accepted_key_type_gets_its_one_algorithm() {
    let (rsa, ec, ed) = (TestKey::rsa("r"), TestKey::ec("e"), TestKey::ed("d"));
    let parsed = jwks::parse(&serde_json::to_vec(&jwks_of(&[&rsa, &ec, &ed])).unwrap()).unwrap();
    assert_eq!(parsed.key_ids(), vec!["d", "e", "r"]);
    assert_eq!(parsed.get("r").unwrap().algorithm(), Algorithm::RS256);
    assert_eq!(parsed.get("e").unwrap().algorithm(), Algorithm::ES256);
    assert_eq!(parsed.get("d").unwrap().algorithm(), Algorithm::EdDSA);
    assert!(parsed.skipped().is_empty());
    // Without `alg` (Entra ID omits it), the key type decides.
    let parsed =
        jwks::parse(&serde_json::to_vec(&with(&rsa, json!({"alg": null}))).unwrap()).unwrap();
    assert_eq!(parsed.get("r").unwrap().algorithm(), Algorithm::RS256);
}

#[test]
fn keys_that_must_not_be_trusted_are_skipped_with_their_reason() {
    let (rsa, ec, ed) = (TestKey::rsa("r"), TestKey::ec("e"), TestKey::ed("d"));
    let cases = [
        (
            json!({"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0", "alg": "HS256"}]}),
            "HMAC",
        ),
        (with(&rsa, json!({"alg": "RS512"})), "only RS256"),
        (with(&rsa, json!({"alg": "PS256"})), "only RS256"),
        (with(&rsa, json!({"alg": "none"})), "only RS256"),
        (with(&rsa, json!({"e": "AQ"})), "exponent"),
        (with(&rsa, json!({"e": "AAE"})), "exponent"),
        (with(&rsa, json!({"e": "AQAAAAAB"})), "exponent"),
        (with(&rsa, json!({"n": "not base64!"})), "base64url"),
        (with(&rsa, json!({"n": null})), "lacks \"n\""),
        (with(&rsa, json!({"d": "AQAB"})), "private"),
        (with(&rsa, json!({"kid": null})), "no kid"),
        (with(&rsa, json!({"kid": ""})), "no kid"),
        (with(&rsa, json!({"kid": "k".repeat(300)})), "no kid"),
        (with(&rsa, json!({"key_ops": ["encrypt"]})), "key_ops"),
        (with(&ec, json!({"crv": "P-384"})), "only P-256"),
        (with(&ec, json!({"alg": "ES384"})), "only ES256"),
        (with(&ec, json!({"alg": "RS256"})), "only ES256"),
        (with(&ec, json!({"x": b64(&[7; 32])})), "not a point"),
        (with(&ec, json!({"x": b64(&[7; 31])})), "32 bytes"),
        (with(&ed, json!({"crv": "X25519"})), "only Ed25519"),
        (with(&ed, json!({"x": b64(&[1; 31])})), "not an Ed25519"),
        (with(&ed, json!({"d": b64(&[1; 32])})), "private"),
        (json!({"keys": [{"kty": "EC2", "kid": "x"}]}), "key type"),
        (json!({"keys": [{"kid": "x"}]}), "key type"),
        (json!({"keys": ["a string"]}), "not a JSON object"),
    ];
    for (document, reason) in cases {
        let got = only_skipped(document.clone());
        assert!(
            got.contains(reason),
            "{document}: {got:?}, expected {reason:?}"
        );
    }
}

#[test]
fn rsa_keys_under_2048_bits_are_refused() {
    let rsa = TestKey::rsa("r");
    // A 1024-bit and a 2040-bit modulus (odd, top bit set): the size decides, before any use.
    for (bytes, bits) in [(128usize, 1024), (255, 2040)] {
        let mut modulus = vec![0xC3u8; bytes];
        modulus[bytes - 1] |= 1;
        let reason = only_skipped(with(&rsa, json!({"n": b64(&modulus)})));
        assert!(reason.contains(&format!("{bits} bits")), "{reason}");
    }
    // Leading zero bytes do not make a key larger than it is.
    let mut padded = vec![0u8; 200];
    padded.extend_from_slice(&[0xC3; 128]);
    assert!(only_skipped(with(&rsa, json!({"n": b64(&padded)}))).contains("1024 bits"));
    // 8192 bits at most.
    let huge = vec![0xC3u8; 1025];
    assert!(only_skipped(with(&rsa, json!({"n": b64(&huge)}))).contains("at most 8192"));
}

#[test]
fn encryption_keys_are_skipped_without_a_warning() {
    let rsa = TestKey::rsa("enc-1");
    let parsed = jwks::parse(
        &serde_json::to_vec(&with(&rsa, json!({"use": "enc", "alg": "RSA-OAEP"}))).unwrap(),
    )
    .unwrap();
    assert!(parsed.is_empty());
    assert!(
        parsed.skipped()[0].expected,
        "Keycloak always publishes one"
    );
    let parsed =
        jwks::parse(&serde_json::to_vec(&with(&rsa, json!({"use": "other"}))).unwrap()).unwrap();
    assert!(!parsed.skipped()[0].expected);
}

#[test]
fn two_keys_with_one_kid_are_both_skipped() {
    let (first, second, other) = (TestKey::ec("same"), TestKey::rsa("same"), TestKey::ed("o"));
    let third = TestKey::ec("same");
    let parsed =
        jwks::parse(&serde_json::to_vec(&jwks_of(&[&first, &other, &second, &third])).unwrap())
            .unwrap();
    assert_eq!(parsed.key_ids(), vec!["o"]);
    assert_eq!(parsed.skipped().len(), 1);
    assert!(parsed.skipped()[0].reason.contains("more than one"));
}

#[test]
fn one_bad_key_does_not_cost_the_others() {
    let (good, bad) = (TestKey::rsa("good"), TestKey::rsa("bad"));
    let mut document = jwks_of(&[&good, &bad]);
    document["keys"][1]["n"] = json!(b64(&[0xC3; 64]));
    document["keys"]
        .as_array_mut()
        .unwrap()
        .push(json!({"kty": "oct", "kid": "h", "k": "AA"}));
    let parsed = jwks::parse(&serde_json::to_vec(&document).unwrap()).unwrap();
    assert_eq!(parsed.key_ids(), vec!["good"]);
    assert_eq!(parsed.skipped().len(), 2);
}

#[test]
fn documents_that_are_not_a_bounded_jwks_are_refused() {
    assert_eq!(
        jwks::parse(&vec![b' '; MAX_JWKS_BYTES + 1]).unwrap_err(),
        JwksError::TooLarge
    );
    assert!(matches!(
        jwks::parse(b"<html>").unwrap_err(),
        JwksError::NotJson(_)
    ));
    for document in [json!({}), json!([]), json!({"keys": {}}), json!("keys")] {
        assert_eq!(
            jwks::parse(&serde_json::to_vec(&document).unwrap()).unwrap_err(),
            JwksError::NoKeys
        );
    }
    let many = json!({"keys": vec![json!({"kty": "oct"}); MAX_JWKS_KEYS + 1]});
    assert_eq!(
        jwks::parse(&serde_json::to_vec(&many).unwrap()).unwrap_err(),
        JwksError::TooManyKeys(MAX_JWKS_KEYS + 1)
    );
    let enough = json!({"keys": vec![json!({"kty": "oct"}); MAX_JWKS_KEYS]});
    assert!(jwks::parse(&serde_json::to_vec(&enough).unwrap()).is_ok());
    // Deep nesting is an error, not a stack overflow.
    let deep = format!(
        "{{\"keys\": {}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(matches!(
        jwks::parse(deep.as_bytes()).unwrap_err(),
        JwksError::NotJson(_)
    ));
}

/// A JWKS document with one key of each kind, as the property tests mutate it.
fn genuine() -> Value {
    let keys = [TestKey::rsa("r"), TestKey::ec("e"), TestKey::ed("d")];
    jwks_of(&keys.iter().collect::<Vec<_>>())
}

fn accepted_invariants(parsed: &jwks::Jwks) -> Result<(), TestCaseError> {
    prop_assert!(parsed.len() <= MAX_JWKS_KEYS);
    for key in parsed.keys() {
        prop_assert!(matches!(
            key.algorithm(),
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA
        ));
        prop_assert!(!key.kid().is_empty());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        if let Ok(parsed) = jwks::parse(&bytes) {
            accepted_invariants(&parsed)?;
        }
    }

    /// A member of a genuine key replaced by another value: never a key of another algorithm
    /// than its type's, never a panic.
    #[test]
    fn altered_keys_keep_their_algorithm_or_are_skipped(
        index in 0usize..3,
        member in prop::sample::select(vec!["kty", "alg", "crv", "use", "kid", "n", "e", "x", "y", "key_ops", "d", "k"]),
        value in prop_oneof![
            Just(json!(null)),
            Just(json!("HS256")), Just(json!("none")), Just(json!("RS256")), Just(json!("ES256")),
            Just(json!("EdDSA")), Just(json!("oct")), Just(json!("RSA")), Just(json!("EC")),
            Just(json!("OKP")), Just(json!("P-256")), Just(json!("Ed25519")), Just(json!("sig")),
            Just(json!(["verify"])), Just(json!(12)), Just(json!({})),
            "[A-Za-z0-9_-]{0,64}".prop_map(Value::from),
        ],
    ) {
        let mut altered = GENUINE.with(|g| g.clone());
        // Renamed after another key: both are then ambiguous, and skipped.
        let collides = member == "kid" && ["r", "e", "d"].contains(&value.as_str().unwrap_or(""));
        if value.is_null() {
            altered["keys"][index].as_object_mut().unwrap().remove(member);
        } else {
            altered["keys"][index][member] = value;
        }
        let parsed = jwks::parse(&serde_json::to_vec(&altered).unwrap()).unwrap();
        accepted_invariants(&parsed)?;
        let expected = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];
        for (i, kid) in ["r", "e", "d"].iter().enumerate() {
            if let Some(key) = parsed.get(kid) {
                prop_assert_eq!(key.algorithm(), expected[i], "{}", altered);
            }
        }
        // The keys not touched are all still there.
        prop_assert!(collides || parsed.len() >= 2, "{}", altered);
    }
}

thread_local! {
    static GENUINE: Value = genuine();
}
