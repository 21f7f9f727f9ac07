//! The one error type of the crate: every message says what happened and, where the
//! operator can act, what to do. No message ever contains key material.

use std::path::PathBuf;

/// What can go wrong when sealing, wrapping or loading keys.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The bytes do not start with the `HV1` header: a row written before encryption was
    /// turned on, or bytes that are not a sealed resource at all.
    #[error("the stored bytes are not encrypted by Hygie's vault (no HV1 header)")]
    NotSealed,
    /// The `HV1` header is there but the bytes are too short to hold a sealed resource.
    #[error(
        "the stored encrypted bytes are truncated (shorter than a header and a tag): the row was cut short; restore it from a backup"
    )]
    Truncated,
    /// The integrity check failed: the wrong key, bytes moved to another row, or bytes
    /// altered or damaged on disk.
    #[error(
        "encrypted data failed its integrity check: it was opened with the wrong key, belongs to another row, or was altered or damaged; check that the key file is the right one, else restore the row from a backup"
    )]
    Corrupt,
    /// The slot was punctured (the patient was erased): its data key can never be
    /// unwrapped again with this key file, by design.
    #[error(
        "slot {slot} was erased (crypto-shredded): its data key can no longer be unwrapped, by design"
    )]
    Erased {
        /// The erased slot.
        slot: u64,
    },
    /// The key file has no generation of that id: it was retired, or this key file is not
    /// the one that wrapped the key.
    #[error(
        "key generation {0} is not in the key file: it was retired, or this is not the key file of this installation"
    )]
    UnknownGeneration(u32),
    /// Retiring the active generation would leave nothing to wrap new keys under.
    #[error(
        "key generation {0} is the active one and cannot be retired: rotate first, re-wrap the data keys, then retire it"
    )]
    ActiveGeneration(u32),
    /// A slot number outside `0..2^32`: a damaged slot column, or a caller's bug.
    #[error("slot {0} is out of range: slots are below 2^32")]
    SlotOutOfRange(u64),
    /// The check slot is reserved for the key check value: never handed out, never
    /// punctured.
    #[error("slot {0} is reserved for the key check value and cannot be used or erased")]
    ReservedSlot(u64),
    /// No key file at this path.
    #[error(
        "key file {} does not exist: restore it from its safe copy, or generate a new one only for a new installation",
        .0.display()
    )]
    Missing(PathBuf),
    /// The key file may be read by its group or by others.
    #[error(
        "key file {} has mode {mode:04o}: it holds the keys to every patient's data and must be readable by its owner only (mode 0600): run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    ReadableByOthers {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file is larger than [`crate::keyring::MAX_KEY_FILE_BYTES`].
    #[error(
        "key file {} is larger than {limit} bytes: it is not a Hygie key file, or too many erasures accumulated in old generations (rotate and retire them)",
        path.display()
    )]
    TooLarge {
        /// The key file.
        path: PathBuf,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The key file (or `HYGIE_VAULT_KEY`) is not a valid keyring; the message names the
    /// field.
    #[error("the key file is malformed: {0}")]
    Malformed(String),
    /// Reading or writing the key file failed.
    #[error("key file {}: {source}", path.display())]
    Io {
        /// The file being read or written.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
}
