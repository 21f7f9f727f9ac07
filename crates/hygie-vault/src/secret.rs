//! Key material: 32 bytes, wiped when dropped, never printed.

use zeroize::{Zeroize, ZeroizeOnDrop};

/// 32 bytes of key material. Wiped from memory when dropped, so that a key does not
/// outlive its use in freed memory; its `Debug` prints `Secret(..)` only, so that no log
/// line can leak it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Secret([u8; 32]);

impl Secret {
    /// The length of every secret, in bytes.
    pub const LEN: usize = 32;

    /// A fresh secret from the system's random generator (aws-lc-rs).
    ///
    /// # Panics
    /// If the system's random generator fails: no key may be made without it.
    pub fn random() -> Secret {
        let mut secret = Secret([0; Self::LEN]);
        aws_lc_rs::rand::fill(&mut secret.0)
            .expect("the system's random generator failed: no key can be generated");
        secret
    }

    /// A secret from its bytes (read from the key file, or derived).
    pub fn from_bytes(bytes: [u8; 32]) -> Secret {
        Secret(bytes)
    }

    /// The bytes, to key a primitive with.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Secret(..)")
    }
}

/// HMAC-SHA256 (aws-lc-rs) of the concatenation of `parts`, as a secret: every use in this
/// crate either derives a key or is truncated by its caller.
pub(crate) fn hmac_sha256(key: &Secret, parts: &[&[u8]]) -> Secret {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key.as_bytes());
    let mut context = aws_lc_rs::hmac::Context::with_key(&key);
    for part in parts {
        context.update(part);
    }
    let tag = context.sign();
    let mut output = Secret([0; Secret::LEN]);
    output.0.copy_from_slice(tag.as_ref());
    output
}

/// Lower-case hex, for check values.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_bytes() {
        let secret = Secret::from_bytes([0xab; 32]);
        assert_eq!(format!("{secret:?}"), "Secret(..)");
    }

    #[test]
    fn random_secrets_differ() {
        assert_ne!(Secret::random().as_bytes(), Secret::random().as_bytes());
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2_on_concatenated_parts() {
        // RFC 4231 test case 2 has a 4-byte key ("Jefe"); HMAC pads keys shorter than the
        // block with zeros, so the same key padded to 32 bytes gives the same MAC.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let mac = hmac_sha256(
            &Secret::from_bytes(key),
            &[b"what do ya want ", b"for nothing?"],
        );
        assert_eq!(
            hex(mac.as_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
