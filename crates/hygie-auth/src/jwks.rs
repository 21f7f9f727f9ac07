//! JWKS documents (RFC 7517) of external OpenID Connect providers, read into the keys the
//! verifier may use, and nothing else. Pure: no IO; fuzzed (`fuzz/fuzz_targets/jwks_parse.rs`).
//!
//! A key fixes its one algorithm here, from its own members (`kty`, `crv`, `alg`), so that a
//! token's header can never choose it: RSA → RS256 (2048 to 8192 bits), EC P-256 → ES256,
//! OKP Ed25519 → EdDSA. Everything else (HMAC `oct` keys, other curves and algorithms,
//! encryption keys, keys without a `kid`, keys with private members, keys sharing a `kid`)
//! is skipped with its reason, so one odd key does not cost the provider its others.
//!
//! ```
//! let jwks = hygie_auth::jwks::parse(br#"{"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}"#).unwrap();
//! assert!(jwks.is_empty(), "an HMAC key is never trusted");
//! assert!(jwks.skipped()[0].reason.contains("HMAC"));
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ED25519, ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256,
    RsaPublicKeyComponents,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

/// The largest JWKS document read, bytes: real ones are a few KiB.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// The most keys one JWKS document may hold: providers publish two or three.
pub const MAX_JWKS_KEYS: usize = 100;
/// The smallest RSA modulus accepted, bits (NIST SP 800-131A; 1024-bit keys are breakable).
pub const MIN_RSA_BITS: usize = 2048;
/// The largest RSA modulus accepted, bits: aws-lc's RS256 range, and a bound on verify cost.
pub const MAX_RSA_BITS: usize = 8192;
/// The longest `kid` kept, bytes.
pub const MAX_KID_BYTES: usize = 256;
/// The reason of the keys skipped for sharing their `kid`.
pub const AMBIGUOUS_KID: &str = "more than one signing key has this kid";
/// The most characters (escaped) of a document's value repeated in a reason: reasons end up
/// in logs.
const SHOWN_CHARS_MAX: usize = 32;

/// Why a whole JWKS document is refused (a single bad key is only skipped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("the JWKS document is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("the JWKS document is not JSON: {0}")]
    NotJson(String),
    #[error("the JWKS document is not an object with a \"keys\" array")]
    NoKeys,
    #[error("the JWKS document has {0} keys, more than {MAX_JWKS_KEYS}")]
    TooManyKeys(usize),
}

/// A public key of a provider, with the one algorithm tokens signed by it must use.
pub struct PublicKey {
    kid: String,
    algorithm: Algorithm,
    decoding: DecodingKey,
    /// SHA-256 of the algorithm and the key material: tells a key from another with the same
    /// `kid`, so that a token verified with a key no longer published is not kept trusted.
    fingerprint: [u8; 32],
}

impl PublicKey {
    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.fingerprint
    }

    pub(crate) fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// A key of the document that is not used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    /// The key's `kid`, when it has a usable one.
    pub kid: Option<String>,
    pub reason: String,
    /// An encryption key (`use: enc`): published by most providers beside their signing
    /// keys, so not worth a warning.
    pub expected: bool,
}

/// The usable keys of a JWKS document, by `kid`, and the keys skipped.
#[derive(Debug, Default)]
pub struct Jwks {
    keys: HashMap<String, Arc<PublicKey>>,
    skipped: Vec<SkippedKey>,
}

impl Jwks {
    pub fn get(&self, kid: &str) -> Option<&Arc<PublicKey>> {
        self.keys.get(kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The usable keys' ids, sorted (for logs and tests).
    pub fn key_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        ids.sort_unstable();
        ids
    }

    pub fn keys(&self) -> impl Iterator<Item = &Arc<PublicKey>> {
        self.keys.values()
    }

    pub fn skipped(&self) -> &[SkippedKey] {
        &self.skipped
    }
}

/// Reads a JWKS document. Bounded: [`MAX_JWKS_BYTES`], [`MAX_JWKS_KEYS`].
pub fn parse(bytes: &[u8]) -> Result<Jwks, JwksError> {
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(JwksError::TooLarge);
    }
    // serde_json stops at 128 levels of nesting: no stack overflow on hostile documents.
    let document: Value =
        serde_json::from_slice(bytes).map_err(|e| JwksError::NotJson(e.to_string()))?;
    let members = document
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(JwksError::NoKeys)?;
    if members.len() > MAX_JWKS_KEYS {
        return Err(JwksError::TooManyKeys(members.len()));
    }
    let mut jwks = Jwks::default();
    let mut ambiguous: Vec<String> = Vec::new();
    for member in members {
        match parse_key(member) {
            Ok(key) => {
                if ambiguous.contains(&key.kid) {
                    continue;
                }
                if jwks.keys.remove(&key.kid).is_some() {
                    // Which of two keys a token means cannot be known: neither is used.
                    ambiguous.push(key.kid.clone());
                    jwks.skipped.push(SkippedKey {
                        kid: Some(key.kid.clone()),
                        reason: AMBIGUOUS_KID.into(),
                        expected: false,
                    });
                    continue;
                }
                jwks.keys.insert(key.kid.clone(), Arc::new(key));
            }
            Err(skipped) => jwks.skipped.push(skipped),
        }
    }
    Ok(jwks)
}

/// Members that only a private key has: a provider publishing them has leaked its key.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

fn parse_key(member: &Value) -> Result<PublicKey, SkippedKey> {
    let kid = member
        .get("kid")
        .and_then(Value::as_str)
        .filter(|kid| !kid.is_empty() && kid.len() <= MAX_KID_BYTES)
        .map(str::to_owned);
    let skip = |reason: String| SkippedKey {
        kid: kid.clone(),
        reason,
        expected: false,
    };
    let Some(object) = member.as_object() else {
        return Err(skip("not a JSON object".into()));
    };
    let text = |name: &str| object.get(name).and_then(Value::as_str);
    if let Some(usage) = object.get("use")
        && usage.as_str() != Some("sig")
    {
        return Err(SkippedKey {
            expected: usage.as_str() == Some("enc"),
            ..skip(format!(
                "its use is {}, not \"sig\"",
                shown(&usage.to_string())
            ))
        });
    }
    if let Some(operations) = object.get("key_ops") {
        let verifies = operations
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify")));
        if !verifies {
            return Err(skip("its key_ops do not include \"verify\"".into()));
        }
    }
    let kty = text("kty").unwrap_or_default();
    if kty == "oct" {
        return Err(skip(
            "a symmetric (HMAC) key is never trusted: anyone who can verify with it can sign"
                .into(),
        ));
    }
    if let Some(private) = PRIVATE_MEMBERS.iter().find(|m| object.contains_key(**m)) {
        return Err(skip(format!(
            "it has the private member \"{private}\": the provider publishes its private key"
        )));
    }
    let Some(kid) = kid.clone() else {
        return Err(skip(format!(
            "it has no kid (1 to {MAX_KID_BYTES} bytes): keys are selected by kid"
        )));
    };
    let alg = text("alg");
    let bytes = |name: &str| -> Result<Vec<u8>, SkippedKey> {
        let value = text(name).ok_or_else(|| skip(format!("it lacks \"{name}\"")))?;
        URL_SAFE_NO_PAD
            .decode(value.trim_end_matches('='))
            .map_err(|_| skip(format!("\"{name}\" is not base64url")))
    };
    let (algorithm, decoding, material) = match kty {
        "RSA" => {
            if alg.is_some_and(|a| a != "RS256") {
                return Err(skip(format!(
                    "RSA with alg {}: only RS256 is accepted",
                    shown(alg.unwrap_or_default())
                )));
            }
            let n = strip_leading_zeros(bytes("n")?);
            let e = strip_leading_zeros(bytes("e")?);
            let bits = bit_length(&n);
            if bits < MIN_RSA_BITS {
                return Err(skip(format!(
                    "an RSA key of {bits} bits: at least {MIN_RSA_BITS} are required"
                )));
            }
            if bits > MAX_RSA_BITS {
                return Err(skip(format!(
                    "an RSA key of {bits} bits: at most {MAX_RSA_BITS} are accepted"
                )));
            }
            let exponent = if e.len() <= 4 {
                e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
            } else {
                0
            };
            if exponent < 3 || exponent % 2 == 0 {
                return Err(skip(
                    "the RSA exponent is not an odd number from 3 to 2^32".into(),
                ));
            }
            RsaPublicKeyComponents { n: &n, e: &e }
                .to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256)
                .map_err(|_| skip("not a valid RSA public key".into()))?;
            let mut material = n.clone();
            material.extend_from_slice(&e);
            (
                Algorithm::RS256,
                DecodingKey::from_rsa_raw_components(&n, &e),
                material,
            )
        }
        "EC" => {
            let crv = text("crv").unwrap_or_default();
            if crv != "P-256" {
                return Err(skip(format!(
                    "an EC key on curve {}: only P-256 (ES256) is accepted",
                    shown(crv)
                )));
            }
            if alg.is_some_and(|a| a != "ES256") {
                return Err(skip(format!(
                    "a P-256 key with alg {}: only ES256 is accepted",
                    shown(alg.unwrap_or_default())
                )));
            }
            let (x, y) = (bytes("x")?, bytes("y")?);
            if x.len() != 32 || y.len() != 32 {
                return Err(skip("a P-256 coordinate is not 32 bytes".into()));
            }
            let mut point = vec![0x04];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
                .map_err(|_| skip("not a point of P-256".into()))?;
            (Algorithm::ES256, DecodingKey::from_ec_der(&point), point)
        }
        "OKP" => {
            let crv = text("crv").unwrap_or_default();
            if crv != "Ed25519" {
                return Err(skip(format!(
                    "an OKP key on curve {}: only Ed25519 (EdDSA) is accepted",
                    shown(crv)
                )));
            }
            if alg.is_some_and(|a| a != "EdDSA" && a != "Ed25519") {
                return Err(skip(format!(
                    "an Ed25519 key with alg {}: only EdDSA is accepted",
                    shown(alg.unwrap_or_default())
                )));
            }
            let x = bytes("x")?;
            ParsedPublicKey::new(&ED25519, &x)
                .map_err(|_| skip("not an Ed25519 public key".into()))?;
            (Algorithm::EdDSA, DecodingKey::from_ed_der(&x), x)
        }
        other => {
            return Err(skip(format!(
                "key type {}: only RSA, EC (P-256) and OKP (Ed25519) are accepted",
                shown(other)
            )));
        }
    };
    Ok(PublicKey {
        fingerprint: fingerprint(algorithm, &material),
        kid,
        algorithm,
        decoding,
    })
}

/// A value of the document, escaped (one log line), quoted and cut short, for a reason.
fn shown(value: &str) -> String {
    let mut escaped = value.escape_debug();
    let cut: String = escaped.by_ref().take(SHOWN_CHARS_MAX).collect();
    let more = if escaped.next().is_some() { "…" } else { "" };
    format!("\"{cut}{more}\"")
}

fn strip_leading_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros);
    bytes
}

fn bit_length(unsigned: &[u8]) -> usize {
    match unsigned.first() {
        None => 0,
        Some(first) => (unsigned.len() - 1) * 8 + (8 - first.leading_zeros() as usize),
    }
}

pub(crate) fn fingerprint(algorithm: Algorithm, material: &[u8]) -> [u8; 32] {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    context.update(format!("{algorithm:?}").as_bytes());
    context.update(&[0]);
    context.update(material);
    let mut out = [0u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_repeated_in_reasons_are_cut_short() {
        assert_eq!(shown("RS512"), "\"RS512\"");
        let long = shown(&"x\n\u{7f}".repeat(1000));
        assert!(long.len() < 40, "{long}");
        assert!(!long.contains('\n'), "escaped: one log line");
    }

    #[test]
    fn bit_lengths() {
        assert_eq!(bit_length(&[]), 0);
        assert_eq!(bit_length(&[1]), 1);
        assert_eq!(bit_length(&[0x80, 0]), 16);
        assert_eq!(bit_length(&[0x7f; 256]), 2047);
        assert_eq!(strip_leading_zeros(vec![0, 0, 1, 0]), vec![1, 0]);
    }
}
