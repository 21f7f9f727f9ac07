//! Untrusted JWKS documents (what an OpenID Connect provider's `jwks_uri` answers, or whoever
//! sits on the path to it) through `hygie_auth::jwks::parse`. It must never panic, must keep
//! its bounds, and must keep only keys that the document itself publishes as public signing
//! keys of the one algorithm their type allows: RSA → RS256, EC P-256 → ES256, OKP Ed25519 →
//! EdDSA; never a key without a kid, with private members, for encryption, or sharing its
//! kid; and every member it does not keep is reported skipped.
#![no_main]

use hygie_auth::jwks::{self, AMBIGUOUS_KID, MAX_JWKS_BYTES, MAX_JWKS_KEYS, MAX_KID_BYTES};
use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

fuzz_target!(|bytes: &[u8]| {
    let Ok(parsed) = jwks::parse(bytes) else {
        return;
    };
    assert!(
        bytes.len() <= MAX_JWKS_BYTES,
        "a document over the bound was read"
    );
    assert!(parsed.len() <= MAX_JWKS_KEYS);
    // The oracle: the same bytes read as plain JSON.
    let document: Value = serde_json::from_slice(bytes).expect("parse accepted non-JSON");
    let members = document["keys"]
        .as_array()
        .expect("parse accepted a document without a keys array");
    assert!(members.len() <= MAX_JWKS_KEYS);
    let with_kid = |kid: &str| -> Vec<&Value> {
        members
            .iter()
            .filter(|m| m.get("kid").and_then(Value::as_str) == Some(kid))
            .collect()
    };
    for key in parsed.keys() {
        let kid = key.kid();
        assert!(!kid.is_empty() && kid.len() <= MAX_KID_BYTES);
        let same_kid = with_kid(kid);
        let member = same_kid
            .iter()
            .find(|m| usable_alone(m))
            .expect("a kept key comes from a usable member");
        assert_eq!(
            same_kid.iter().filter(|m| usable_alone(m)).count(),
            1,
            "kid {kid:?} kept although two usable keys have it"
        );
        let text = |name: &str| member.get(name).and_then(Value::as_str);
        let (kty, crv, alg) = (text("kty"), text("crv"), text("alg"));
        match key.algorithm() {
            Algorithm::RS256 => {
                assert_eq!(kty, Some("RSA"));
                assert!(alg.is_none() || alg == Some("RS256"));
            }
            Algorithm::ES256 => {
                assert_eq!((kty, crv), (Some("EC"), Some("P-256")));
                assert!(alg.is_none() || alg == Some("ES256"));
            }
            Algorithm::EdDSA => assert_eq!((kty, crv), (Some("OKP"), Some("Ed25519"))),
            other => panic!("kid {kid:?} kept with algorithm {other:?}"),
        }
        for private in PRIVATE_MEMBERS {
            assert!(
                member.get(private).is_none(),
                "kid {kid:?} kept with the private member {private}"
            );
        }
        assert!(member.get("use").is_none() || text("use") == Some("sig"));
    }
    for skipped in parsed.skipped() {
        // Reasons go to logs: whatever the document holds, they stay short.
        assert!(
            skipped.reason.len() <= 200,
            "reason too long: {}",
            skipped.reason
        );
    }
    // Every member is kept, reported skipped, or one of several usable keys sharing a kid
    // (those are reported once per kid).
    let mut shared = 0;
    for skipped in parsed
        .skipped()
        .iter()
        .filter(|s| s.reason == AMBIGUOUS_KID)
    {
        let kid = skipped.kid.as_deref().expect("an ambiguous kid is named");
        assert!(
            parsed.get(kid).is_none(),
            "kid {kid:?} both ambiguous and kept"
        );
        let usable = with_kid(kid)
            .into_iter()
            .filter(|m| usable_alone(m))
            .count();
        assert!(
            usable >= 2,
            "kid {kid:?} reported ambiguous with {usable} usable key(s)"
        );
        shared += usable - 1;
    }
    assert_eq!(
        members.len(),
        parsed.len() + parsed.skipped().len() + shared
    );
});

/// Whether `member` alone makes a usable key.
fn usable_alone(member: &Value) -> bool {
    let single = serde_json::to_vec(&json!({ "keys": [member] })).expect("JSON");
    jwks::parse(&single).is_ok_and(|one| one.len() == 1)
}
