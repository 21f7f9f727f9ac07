//! What the witness remembers between rounds, and its cosigning key: two files.
//!
//! - The **state file** (`--state`, JSON, [`STATE_FORMAT`]): the log's pinned key and
//!   origin, the last accepted checkpoint (size, root, the note as the log signed it, when)
//!   and the witness's own verifier key. It holds no secret, so it can be shown to an
//!   auditor or kept in a backup; but its integrity is the witness's memory: losing it lets
//!   the log roll back unseen. Written whole, atomically (a temporary file, fsync, rename,
//!   fsync of the directory), mode 0600: a crash between two rounds leaves the previous
//!   state or the new one, never a mixture; a leftover temporary file is never read.
//! - The **key file** (`--key`): the Ed25519 private key as PKCS#8 in PEM (what `openssl
//!   pkey` reads), mode 0600, created once, never rewritten; refused if others may read
//!   it. Kept apart from the state so that the state can be shared and the key cannot.
//!   The witness's name is not in it: the name is fixed at the first run (`--name`) and
//!   recorded in the state with the public key ([`WitnessState::witness_key`]), and every
//!   later run checks that the key file still holds that key.
//!
//! One witness process per state file: two at once would each write its own view.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hygie_audit::checkpoint::{Cosigner, KeyError, SignatureType, VerifierKey};
use hygie_audit::merkle::Hash;
use serde::{Deserialize, Serialize};

use crate::decide::{self, Accepted, LogTrust};

/// The `format` member of a state file this version reads and writes.
pub const STATE_FORMAT: &str = "hygie-witness-state/1";
/// The largest state file read: one note of at most 1 MiB, JSON-escaped (at most twice as
/// long), and a few keys.
pub const MAX_STATE_BYTES: u64 = 4 << 20;
/// The largest key file read: a PEM PKCS#8 Ed25519 key is about 200 bytes.
pub const MAX_KEY_FILE_BYTES: u64 = 16 << 10;
/// Mode of the state and key files: the owner's alone.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";
const PEM_LINE_CHARS: usize = 64;

/// Why the state or the key could not be read or written. Local problems: the operator's to
/// fix, never retried.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is larger than {limit} bytes: not a witness {what}")]
    TooLarge {
        path: PathBuf,
        what: &'static str,
        limit: u64,
    },
    #[error(
        "{path} is not a valid witness state: {reason} (restore it from a backup; starting afresh would trust the log anew)"
    )]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error(
        "{path} may be read by others (mode {mode:o}): it holds the witness's private key; `chmod 600` it"
    )]
    KeyReadableByOthers { path: PathBuf, mode: u32 },
    #[error(
        "{path} does not exist, but the state says this witness cosigns as {witness_key}: restore the key file (a new key would be a new witness, and needs a new state file)"
    )]
    KeyMissing { path: PathBuf, witness_key: String },
    #[error(
        "{path} holds the key {found}, but the state says this witness cosigns as {expected}: wrong key file or wrong --name"
    )]
    KeyMismatch {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error(
        "this witness has no state yet: give its name with --name (e.g. witness.example.org), fixed from then on"
    )]
    NameNeeded,
    #[error("the witness name: {0}")]
    BadName(KeyError),
}

/// The witness's memory, as read from or written to the state file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessState {
    /// The witness's own verifier key (`name+id+key`, type 0x04): what the hub operator
    /// and auditors pin.
    pub witness_key: VerifierKey,
    /// The log, once pinned.
    pub log: Option<LogTrust>,
    /// The last accepted checkpoint; only with a pinned log.
    pub last: Option<Accepted>,
}

/// The state file's JSON.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    format: String,
    witness_key: String,
    log_key: Option<String>,
    origin: Option<String>,
    checkpoint: Option<CheckpointRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointRecord {
    size: u64,
    /// Standard base64, as in the checkpoint.
    root: String,
    /// The note as signed by the log.
    note: String,
    accepted_at_s: u64,
}

impl WitnessState {
    /// A new witness, that knows no log yet.
    pub fn new(witness_key: VerifierKey) -> WitnessState {
        WitnessState {
            witness_key,
            log: None,
            last: None,
        }
    }

    /// Reads the state file; `None` when there is none (the witness's first run). A file
    /// that is there but unreadable or inconsistent is an error, never a fresh start.
    pub fn load(path: &Path) -> Result<Option<WitnessState>, StateError> {
        let bytes = match read_bounded(path, MAX_STATE_BYTES, "state file") {
            Ok(bytes) => bytes,
            Err(StateError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(None);
            }
            Err(error) => return Err(error),
        };
        let invalid = |reason: String| StateError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let file: StateFile =
            serde_json::from_slice(&bytes).map_err(|e| invalid(format!("{e}")))?;
        WitnessState::from_file(file).map(Some).map_err(invalid)
    }

    fn from_file(file: StateFile) -> Result<WitnessState, String> {
        if file.format != STATE_FORMAT {
            return Err(format!(
                "format {:?}, where this version reads {STATE_FORMAT:?}",
                file.format
            ));
        }
        let witness_key =
            VerifierKey::parse(&file.witness_key).map_err(|e| format!("witness_key: {e}"))?;
        if witness_key.signature_type() != SignatureType::CosignatureV1 {
            return Err("witness_key is not a cosignature key (type 0x04)".into());
        }
        let log = match file.log_key {
            None => None,
            Some(key) => {
                let key = VerifierKey::parse(&key).map_err(|e| format!("log_key: {e}"))?;
                Some(LogTrust::new(key, file.origin.clone()).map_err(|e| format!("log_key: {e}"))?)
            }
        };
        let last = match (file.checkpoint, &log) {
            (None, _) => None,
            (Some(record), Some(log)) => Some(record.check(log)?),
            (Some(_), None) => return Err("a checkpoint without a log_key".into()),
        };
        if log.is_none() && file.origin.is_some() {
            return Err("an origin without a log_key".into());
        }
        Ok(WitnessState {
            witness_key,
            log,
            last,
        })
    }

    fn to_file(&self) -> StateFile {
        StateFile {
            format: STATE_FORMAT.to_owned(),
            witness_key: self.witness_key.to_string(),
            log_key: self.log.as_ref().map(|log| log.key.to_string()),
            origin: self.log.as_ref().and_then(|log| log.origin.clone()),
            checkpoint: self.last.as_ref().map(|last| CheckpointRecord {
                size: last.size,
                root: decide::root_base64(&last.root),
                note: last.note.clone(),
                accepted_at_s: last.accepted_at_s,
            }),
        }
    }

    /// Writes the state file atomically, mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let mut json = serde_json::to_vec_pretty(&self.to_file())
            .expect("a state serializes: strings and integers only");
        json.push(b'\n');
        write_atomically(path, &json, PRIVATE_FILE_MODE)
    }
}

impl CheckpointRecord {
    /// The recorded note must still verify with the pinned key and say what the record
    /// says: a state edited by hand or damaged is refused rather than trusted.
    fn check(self, log: &LogTrust) -> Result<Accepted, String> {
        let root: Hash = STANDARD
            .decode(&self.root)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or("checkpoint.root is not the base64 of 32 bytes")?;
        let opened =
            decide::open(log, self.note.as_bytes()).map_err(|e| format!("checkpoint.note: {e}"))?;
        if opened.checkpoint.size != self.size || opened.checkpoint.root != root {
            return Err("checkpoint.size or checkpoint.root differ from its note".into());
        }
        if log.origin.is_none() {
            return Err("a checkpoint without an origin".into());
        }
        Ok(Accepted {
            size: self.size,
            root,
            note: self.note,
            accepted_at_s: self.accepted_at_s,
        })
    }
}

/// The witness's cosigner: read from the key file, or made and written there on the first
/// run. `state` is the witness's recorded key, when a state exists; `name` is `--name`.
/// Returns the cosigner and whether it was just generated.
pub fn load_or_create_key(
    path: &Path,
    name: Option<&str>,
    recorded: Option<&VerifierKey>,
) -> Result<(Cosigner, bool), StateError> {
    let name = match (recorded, name) {
        (Some(recorded), Some(name)) if recorded.name() != name => {
            return Err(StateError::KeyMismatch {
                path: path.to_owned(),
                found: format!("named {name:?} (--name)"),
                expected: recorded.to_string(),
            });
        }
        (Some(recorded), _) => recorded.name().to_owned(),
        (None, Some(name)) => name.to_owned(),
        (None, None) => return Err(StateError::NameNeeded),
    };
    let bad_key = |reason: String| StateError::BadKey {
        path: path.to_owned(),
        reason,
    };
    match read_bounded(path, MAX_KEY_FILE_BYTES, "key file") {
        Ok(pem) => {
            check_private_mode(path)?;
            let pkcs8 = pem_decode(&pem).map_err(|e| bad_key(e.to_owned()))?;
            let cosigner =
                Cosigner::from_pkcs8(&name, &pkcs8).map_err(|e| bad_key(e.to_string()))?;
            if let Some(recorded) = recorded
                && cosigner.verifier_key() != *recorded
            {
                return Err(StateError::KeyMismatch {
                    path: path.to_owned(),
                    found: cosigner.verifier_key().to_string(),
                    expected: recorded.to_string(),
                });
            }
            Ok((cosigner, false))
        }
        Err(StateError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            if let Some(recorded) = recorded {
                return Err(StateError::KeyMissing {
                    path: path.to_owned(),
                    witness_key: recorded.to_string(),
                });
            }
            let (cosigner, pkcs8) = Cosigner::generate(&name).map_err(StateError::BadName)?;
            write_new(path, pem_encode(&pkcs8).as_bytes(), PRIVATE_FILE_MODE)?;
            Ok((cosigner, true))
        }
        Err(error) => Err(error),
    }
}

fn check_private_mode(path: &Path) -> Result<(), StateError> {
    let mode = fs::metadata(path)
        .map_err(|source| StateError::Io {
            path: path.to_owned(),
            source,
        })?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(StateError::KeyReadableByOthers {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// A whole file, refused beyond `limit` bytes (read no further than that).
fn read_bounded(path: &Path, limit: u64, what: &'static str) -> Result<Vec<u8>, StateError> {
    let io_error = |source| StateError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_error)?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() as u64 > limit {
        return Err(StateError::TooLarge {
            path: path.to_owned(),
            what,
            limit,
        });
    }
    Ok(bytes)
}

/// The temporary file a write goes through: beside the target, so that the rename stays
/// within one file system.
pub fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Replaces `path` with `bytes` atomically: a fresh temporary file of `mode` (created
/// anew, so a leftover one's mode or content never carries over), fsynced, renamed over
/// `path`, then the directory fsynced so that the rename itself survives a power loss.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    let temporary = temporary_path(path);
    let io_error = |path: &Path| {
        let path = path.to_owned();
        move |source| StateError::Io { path, source }
    };
    match fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_error(&temporary)(error)),
    }
    write_new(&temporary, bytes, mode)?;
    fs::rename(&temporary, path).map_err(io_error(path))?;
    sync_directory(path).map_err(io_error(path))
}

/// Writes a file that must not exist yet, of `mode`, and fsyncs it.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    let io_error = |source| StateError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_error)?;
    file.write_all(bytes).map_err(io_error)?;
    file.sync_all().map_err(io_error)?;
    drop(file);
    sync_directory(path).map_err(io_error)
}

fn sync_directory(path: &Path) -> io::Result<()> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(directory)?.sync_all()
}

fn pem_encode(der: &[u8]) -> String {
    let base64 = STANDARD.encode(der);
    let mut pem = String::with_capacity(base64.len() + 80);
    pem.push_str(PEM_BEGIN);
    pem.push('\n');
    for line in base64.as_bytes().chunks(PEM_LINE_CHARS) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str(PEM_END);
    pem.push('\n');
    pem
}

fn pem_decode(pem: &[u8]) -> Result<Vec<u8>, &'static str> {
    let pem = std::str::from_utf8(pem).map_err(|_| "not a PEM file (not text)")?;
    let body = pem
        .split_once(PEM_BEGIN)
        .and_then(|(_, rest)| rest.split_once(PEM_END))
        .map(|(body, _)| body)
        .ok_or("no `-----BEGIN PRIVATE KEY-----` block (PKCS#8 in PEM)")?;
    let base64: String = body.split_whitespace().collect();
    STANDARD
        .decode(base64)
        .map_err(|_| "the PEM block is not base64")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips() {
        let der: Vec<u8> = (0..=255).collect();
        let pem = pem_encode(&der);
        assert!(pem.lines().all(|line| line.len() <= PEM_LINE_CHARS));
        assert_eq!(pem_decode(pem.as_bytes()).unwrap(), der);
        assert!(pem_decode(b"no block").is_err());
    }
}
