//! Untrusted bearer tokens through the verifier (`hygie-auth`). Whatever the bytes, it must
//! not panic, and must never accept a token the hub's issuer did not sign: either the input
//! is refused, or it decodes to exactly the claims of the genuine token it was mutated from
//! (base64url's last character may carry unused bits).
#![no_main]

use std::sync::LazyLock;

use hygie_auth::{Claims, Issuer, TokenRequest, Verifier};
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_800_000_000;

struct Fixture {
    verifier: Verifier,
    genuine: String,
    claims: Claims,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let issuer = Issuer::generate("https://hygie.fuzz/auth").expect("a key");
    let genuine = issuer
        .issue(
            &TokenRequest {
                subject: "Practitioner/fuzz".into(),
                audience: "hygie".into(),
                roles: vec!["clinician".into()],
                scope: "user/*.rs".into(),
                patient: None,
                ttl_seconds: 3600,
            },
            NOW,
        )
        .expect("a token");
    let verifier = Verifier::new(&issuer, "hygie", "roles");
    let claims = verifier.verify(&genuine, NOW).expect("the genuine token verifies");
    Fixture {
        verifier,
        genuine,
        claims,
    }
});

fuzz_target!(|bytes: &[u8]| {
    let fixture = &*FIXTURE;
    let Ok(input) = std::str::from_utf8(bytes) else {
        return;
    };
    // 1. The input as a whole token: never accepted, unless it is the genuine one.
    if let Ok(claims) = fixture.verifier.verify(input, NOW) {
        assert_eq!(claims, fixture.claims, "accepted a token nobody signed: {input:?}");
    }
    // 2. The input spliced into the genuine token (header, payload or signature replaced).
    let parts: Vec<&str> = fixture.genuine.split('.').collect();
    for position in 0..3 {
        let mut forged = parts.clone();
        forged[position] = input;
        let forged = forged.join(".");
        if let Ok(claims) = fixture.verifier.verify(&forged, NOW) {
            assert_eq!(claims, fixture.claims, "accepted a forged token: {forged:?}");
        }
    }
});
