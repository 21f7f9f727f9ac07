//! Hygie's key hierarchy, from the key file down to each stored resource.
//!
//! - The **keyring** ([`keyring::Keyring`]) is the key file, kept outside the database
//!   (mode 0600): the blind-index key and generations of puncturable keys.
//! - Each **data key** ([`aead::DataKey`]: one per patient, one per resource type for the
//!   rest) is stored in the database wrapped under the **slot key** of its patient's slot,
//!   derived from the keyring's puncturable key ([`ggm`]).
//! - Each stored resource version is **sealed** under its data key ([`aead::seal`]), bound
//!   to its row.
//! - Search runs on **blind-index terms** ([`blind::term`]), keyed HMACs of the values.
//!
//! Erasing a patient (GDPR Art. 17) punctures the patient's slot in the key file: the slot
//! key can no longer be derived, so the wrapped data key found in any backup of the
//! database can no longer be unwrapped. What erasure changes is the key file: an old copy
//! of it still unwraps, so key-file copies must be replaced, never accumulated.
//!
//! Pure except for [`keyring::Keyring::load`] and [`keyring::Keyring::save`]. The
//! primitives are aws-lc-rs (HMAC-SHA256, randomness) and RustCrypto's
//! XChaCha20-Poly1305; secrets are wiped on drop and never printed.
//!
//! ```
//! use hygie_vault::{VaultError, aead, keyring::Keyring};
//!
//! let mut keyring = Keyring::generate("hospital.example", 1_700_000_000_000_000);
//! let generation = keyring.active_generation();
//! let slot = 42; // the patient's slot, handed out by the hub
//!
//! let dek = aead::DataKey::generate();
//! let wrapped = keyring.wrap(generation, slot, &dek, b"patient-dek/7").unwrap();
//! let sealed = aead::seal(&dek, 7, b"Patient/p1/1", br#"{"resourceType":"Patient"}"#);
//!
//! let dek = keyring.unwrap(generation, slot, &wrapped, b"patient-dek/7").unwrap();
//! assert_eq!(aead::sealed_key_id(&sealed).unwrap(), 7);
//! assert_eq!(aead::open(&dek, b"Patient/p1/1", &sealed).unwrap(), br#"{"resourceType":"Patient"}"#);
//!
//! keyring.puncture(slot).unwrap(); // then keyring.save(path)
//! assert!(matches!(
//!     keyring.unwrap(generation, slot, &wrapped, b"patient-dek/7"),
//!     Err(VaultError::Erased { slot: 42 })
//! ));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod aead;
pub mod blind;
mod error;
pub mod ggm;
pub mod keyring;
mod secret;

pub use aead::DataKey;
pub use error::VaultError;
pub use keyring::Keyring;
pub use secret::Secret;
