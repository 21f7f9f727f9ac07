//! Sealing of stored resources: XChaCha20-Poly1305 under a data key, with a header that
//! names the key.
//!
//! Format of a sealed value (all integers big-endian):
//!
//! ```text
//! "HV1" (3 bytes) ‖ key id (i64, 8) ‖ nonce (24, random) ‖ ciphertext ‖ tag (16)
//! ```
//!
//! The AEAD's associated data is `"HV1" ‖ key id ‖ aad`: the header cannot be altered
//! without failing the tag, and the caller's `aad` (resource type, id, version) binds the
//! ciphertext to its row, so that a sealed body copied into another row does not open.
//! Nonces are random: 192 bits make a collision negligible however many values one key
//! seals, so no counter has to be kept anywhere.

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};

use crate::{Secret, VaultError};

/// The first bytes of every sealed value; a JSON body starts with `{`, never with these.
pub const MAGIC: &[u8; 3] = b"HV1";
/// The length of an XChaCha20-Poly1305 nonce, in bytes.
pub const NONCE_LEN: usize = 24;
/// The length of a Poly1305 tag, in bytes.
pub const TAG_LEN: usize = 16;
/// Magic, key id and nonce.
const HEADER_LEN: usize = MAGIC.len() + 8 + NONCE_LEN;
/// What sealing adds to a plaintext, in bytes (51).
pub const SEALED_OVERHEAD_BYTES: usize = HEADER_LEN + TAG_LEN;

/// A data key (DEK): one per patient, one per resource type for the rest. Stored in the
/// database only wrapped (see [`crate::keyring::Keyring::wrap`]); wiped when dropped.
#[derive(Clone)]
pub struct DataKey(Secret);

impl DataKey {
    /// A fresh random data key.
    pub fn generate() -> DataKey {
        DataKey(Secret::random())
    }

    /// A data key from its bytes (after unwrapping).
    pub fn from_bytes(bytes: [u8; 32]) -> DataKey {
        DataKey(Secret::from_bytes(bytes))
    }

    /// The bytes, to wrap the key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("DataKey(..)")
    }
}

/// Encrypts `plaintext` under `key`: the result names `key_id` in its header (see
/// [`sealed_key_id`]) and opens only with the same `aad`.
pub fn seal(key: &DataKey, key_id: i64, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let nonce = random_nonce();
    let mut sealed = Vec::with_capacity(SEALED_OVERHEAD_BYTES + plaintext.len());
    sealed.extend_from_slice(MAGIC);
    sealed.extend_from_slice(&key_id.to_be_bytes());
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(plaintext);
    let associated = associated_data(key_id, aad);
    let tag = encrypt_in_place(
        key.as_bytes(),
        &nonce,
        &associated,
        &mut sealed[HEADER_LEN..],
    );
    sealed.extend_from_slice(&tag);
    sealed
}

/// The key id in the header of sealed bytes, so that the caller can fetch (and unwrap)
/// the right data key before [`open`].
pub fn sealed_key_id(sealed: &[u8]) -> Result<i64, VaultError> {
    Ok(parse(sealed)?.key_id)
}

/// Decrypts bytes made by [`seal`] with the same key and `aad`.
pub fn open(key: &DataKey, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, VaultError> {
    let parts = parse(sealed)?;
    let mut plaintext = parts.ciphertext.to_vec();
    decrypt_in_place(
        key.as_bytes(),
        parts.nonce,
        &associated_data(parts.key_id, aad),
        &mut plaintext,
        parts.tag,
    )?;
    Ok(plaintext)
}

/// Whether `bytes` look sealed (the magic and room for a header and a tag): tells the rows
/// written before encryption was turned on (plain JSON, starting with `{`) from sealed
/// ones. Says nothing of whether they open.
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC) && bytes.len() >= SEALED_OVERHEAD_BYTES
}

/// A sealed value cut into its fields, borrowed.
struct SealedParts<'a> {
    key_id: i64,
    nonce: &'a [u8; NONCE_LEN],
    ciphertext: &'a [u8],
    tag: &'a [u8; TAG_LEN],
}

fn parse(sealed: &[u8]) -> Result<SealedParts<'_>, VaultError> {
    if !sealed.starts_with(MAGIC) {
        return Err(VaultError::NotSealed);
    }
    if sealed.len() < SEALED_OVERHEAD_BYTES {
        return Err(VaultError::Truncated);
    }
    let (header, rest) = sealed.split_at(HEADER_LEN);
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
    let key_id = i64::from_be_bytes(header[MAGIC.len()..MAGIC.len() + 8].try_into().unwrap());
    Ok(SealedParts {
        key_id,
        nonce: header[MAGIC.len() + 8..].try_into().unwrap(),
        ciphertext,
        tag: tag.try_into().unwrap(),
    })
}

fn associated_data(key_id: i64, aad: &[u8]) -> Vec<u8> {
    [MAGIC.as_slice(), &key_id.to_be_bytes(), aad].concat()
}

/// A fresh random nonce (aws-lc-rs).
pub(crate) fn random_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce)
        .expect("the system's random generator failed: nothing can be encrypted safely");
    nonce
}

/// XChaCha20-Poly1305 (RustCrypto) in place; returns the tag. The cipher wipes its copy of
/// the key when dropped.
pub(crate) fn encrypt_in_place(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    associated: &[u8],
    buffer: &mut [u8],
) -> [u8; TAG_LEN] {
    XChaCha20Poly1305::new(key.into())
        .encrypt_in_place_detached(nonce.into(), associated, buffer)
        // Fails only beyond 256 GiB of plaintext, which no stored value comes near.
        .expect("XChaCha20-Poly1305 refused to encrypt: the plaintext exceeds its limit")
        .into()
}

/// The inverse of [`encrypt_in_place`]; on a failed tag the buffer is left as it was
/// (the tag is checked before anything is decrypted).
pub(crate) fn decrypt_in_place(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    associated: &[u8],
    buffer: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> Result<(), VaultError> {
    XChaCha20Poly1305::new(key.into())
        .decrypt_in_place_detached(nonce.into(), associated, buffer, tag.into())
        .map_err(|_| VaultError::Corrupt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const AAD: &[u8] = b"Observation/abc/3";
    const BODY: &[u8] = br#"{"resourceType":"Observation","id":"abc"}"#;

    #[test]
    fn round_trips() {
        let key = DataKey::generate();
        let sealed = seal(&key, 42, AAD, BODY);
        assert_eq!(sealed.len(), BODY.len() + SEALED_OVERHEAD_BYTES);
        assert!(is_sealed(&sealed));
        assert_eq!(open(&key, AAD, &sealed).unwrap(), BODY);
    }

    #[test]
    fn round_trips_an_empty_plaintext() {
        let key = DataKey::generate();
        let sealed = seal(&key, 1, b"", b"");
        assert_eq!(sealed.len(), SEALED_OVERHEAD_BYTES);
        assert!(is_sealed(&sealed));
        assert_eq!(open(&key, b"", &sealed).unwrap(), b"");
    }

    #[test]
    fn header_names_the_key_id() {
        let key = DataKey::generate();
        for key_id in [0, 1, -1, i64::MIN, i64::MAX, 0x0102_0304_0506_0708] {
            let sealed = seal(&key, key_id, AAD, BODY);
            assert_eq!(sealed_key_id(&sealed).unwrap(), key_id);
            assert_eq!(&sealed[3..11], &key_id.to_be_bytes());
        }
    }

    #[test]
    fn two_seals_of_the_same_body_differ() {
        let key = DataKey::generate();
        assert_ne!(seal(&key, 1, AAD, BODY), seal(&key, 1, AAD, BODY));
    }

    #[test]
    fn another_aad_does_not_open() {
        let key = DataKey::generate();
        let sealed = seal(&key, 1, AAD, BODY);
        assert!(matches!(
            open(&key, b"Observation/abc/4", &sealed),
            Err(VaultError::Corrupt)
        ));
        assert!(matches!(open(&key, b"", &sealed), Err(VaultError::Corrupt)));
    }

    #[test]
    fn another_key_does_not_open() {
        let sealed = seal(&DataKey::generate(), 1, AAD, BODY);
        assert!(matches!(
            open(&DataKey::generate(), AAD, &sealed),
            Err(VaultError::Corrupt)
        ));
    }

    #[test]
    fn plaintext_rows_are_not_sealed() {
        assert!(!is_sealed(BODY));
        assert!(!is_sealed(b""));
        assert!(matches!(sealed_key_id(BODY), Err(VaultError::NotSealed)));
        assert!(matches!(
            open(&DataKey::generate(), AAD, BODY),
            Err(VaultError::NotSealed)
        ));
    }

    #[test]
    fn truncated_seals_are_told_apart() {
        let key = DataKey::generate();
        let sealed = seal(&key, 1, AAD, b"");
        for length in MAGIC.len()..sealed.len() {
            assert!(!is_sealed(&sealed[..length]));
            assert!(matches!(
                sealed_key_id(&sealed[..length]),
                Err(VaultError::Truncated)
            ));
            assert!(matches!(
                open(&key, AAD, &sealed[..length]),
                Err(VaultError::Truncated)
            ));
        }
    }

    #[test]
    fn data_key_debug_hides_the_key() {
        assert_eq!(format!("{:?}", DataKey::from_bytes([7; 32])), "DataKey(..)");
    }

    proptest! {
        /// Any byte changed anywhere (header, nonce, ciphertext, tag) is caught: a changed
        /// magic is no longer sealed, anything else fails the tag.
        #[test]
        fn any_altered_byte_is_caught(
            body in proptest::collection::vec(any::<u8>(), 0..64),
            position in any::<proptest::sample::Index>(),
            flip in 1..=255u8,
        ) {
            let key = DataKey::generate();
            let mut sealed = seal(&key, 9, AAD, &body);
            let position = position.index(sealed.len());
            sealed[position] ^= flip;
            let error = open(&key, AAD, &sealed).unwrap_err();
            if position < MAGIC.len() {
                prop_assert!(matches!(error, VaultError::NotSealed));
            } else {
                prop_assert!(matches!(error, VaultError::Corrupt));
            }
        }

        /// Bytes added or removed at the end are caught too.
        #[test]
        fn a_changed_length_is_caught(extra in proptest::collection::vec(any::<u8>(), 1..8), cut in 1..8usize) {
            let key = DataKey::generate();
            let sealed = seal(&key, 9, AAD, BODY);
            let longer = [sealed.as_slice(), &extra].concat();
            prop_assert!(matches!(open(&key, AAD, &longer), Err(VaultError::Corrupt)));
            prop_assert!(matches!(open(&key, AAD, &sealed[..sealed.len() - cut]), Err(VaultError::Corrupt)));
        }
    }
}
