//! The keyring: the key file held outside the database.
//!
//! It holds the installation's name, the blind-index key, and generations of puncturable
//! keys (see [`crate::ggm`]). A data key is wrapped under the slot key of its patient's slot
//! in a generation; erasing the patient punctures the slot in every generation and the key
//! file is saved again. Backups of the database keep the wrapped data key, but the current
//! key file can no longer derive the slot key that unwraps it: erasure reaches the backups
//! as long as **old copies of the key file are not kept** (an old copy still unwraps, by
//! construction; key-file backups must be replaced, not accumulated).
//!
//! File format (JSON, UTF-8, mode 0600; secrets in standard base64 with padding):
//!
//! ```text
//! {"format": "hygie-vault-keyring/1",
//!  "installation": "hospital.example",
//!  "index_key": "<32 bytes>",
//!  "erased_slots": [42, 1337],
//!  "generations": [{"id": 1, "created_us": 1700000000000000,
//!                   "nodes": [[0, 0, "<32 bytes>"], [32, 43, "<32 bytes>"], ...]}]}
//! ```
//!
//! `erased_slots` lists the punctured slots: slot numbers are not secret, and without the
//! list a rotation could not puncture them in the new generation (a cover set does not
//! enumerate its holes cheaply), and an unwrap could only say "corrupt" where it means
//! "erased". It may be left out (no erasure yet). Every generation must have every erased
//! slot punctured and must cover [`CHECK_SLOT`] and [`BACKUP_SLOT`] (the slot whose key
//! wraps each backup's key: never erased, so that an erasure leaves backups restorable
//! without the erased patient); a file that breaks this is refused.
//!
//! Wrapped data key (75 bytes):
//!
//! ```text
//! "HK1" (3) ‖ nonce (24, random) ‖ encrypted data key (32) ‖ tag (16)
//! ```
//!
//! XChaCha20-Poly1305 under the slot key, associated data `"hygie-dek-v1" ‖ generation
//! (u32 BE) ‖ slot (u64 BE) ‖ aad`: a wrapped key moved to another slot, generation or
//! row (the caller's `aad`) does not unwrap.
//!
//! Size: a node is about 62 bytes of JSON; an erasure adds at most 31 nodes to each
//! generation (fewer when erased slots are close together), so about 2 KiB per generation
//! at worst. [`MAX_KEY_FILE_BYTES`] (64 MiB) allows some 30,000 scattered erasures in one
//! generation; rotating and retiring old generations does not shrink the new one, since it
//! is punctured at every erased slot too.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::aead::{DataKey, NONCE_LEN, TAG_LEN, decrypt_in_place, encrypt_in_place, random_nonce};
use crate::ggm::{BACKUP_SLOT, CHECK_SLOT, PuncturableKey};
use crate::secret::{hex, hmac_sha256};
use crate::{Secret, VaultError};

/// The `format` of the key files this version reads and writes.
pub const FORMAT: &str = "hygie-vault-keyring/1";
/// The largest key file read, in bytes (see the module's size estimate).
pub const MAX_KEY_FILE_BYTES: u64 = 64 << 20;
/// The mode of the key file: its owner only.
pub const KEY_FILE_MODE: u32 = 0o600;

/// The first bytes of a wrapped data key.
const WRAP_MAGIC: &[u8; 3] = b"HK1";
/// The length of a wrapped data key, in bytes.
pub const WRAPPED_KEY_LEN: usize = WRAP_MAGIC.len() + NONCE_LEN + Secret::LEN + TAG_LEN;
const WRAP_LABEL: &[u8] = b"hygie-dek-v1";
const CHECK_LABEL: &[u8] = b"hygie-keyring-check-v1";
/// The length of a check value's MAC before hex, in bytes.
const CHECK_VALUE_BYTES: usize = 16;

/// The key file in memory. Its `Debug` shows ids and sizes, never a key.
#[derive(Clone)]
pub struct Keyring {
    installation: String,
    index_key: Secret,
    /// Punctured slots, kept so that a rotation punctures them in the new generation too.
    erased_slots: BTreeSet<u64>,
    /// Sorted by id; the last is the active one.
    generations: Vec<Generation>,
}

/// One generation of slot keys. The active generation (the highest id) wraps new data
/// keys; older ones only unwrap, until their keys are re-wrapped and they are retired.
#[derive(Clone)]
pub struct Generation {
    /// Its number, from 1; stored beside each wrapped data key.
    pub id: u32,
    /// When it was created, in microseconds since the Unix epoch.
    pub created_us: i64,
    key: PuncturableKey,
}

impl Generation {
    /// The number of nodes of its cover set: what its share of the key file grows with.
    pub fn cover_len(&self) -> usize {
        self.key.cover_len()
    }
}

impl Keyring {
    /// A new keyring for a new installation: generation 1 with a fresh root, a fresh index
    /// key.
    pub fn generate(installation: &str, now_us: i64) -> Keyring {
        Keyring {
            installation: installation.to_owned(),
            index_key: Secret::random(),
            erased_slots: BTreeSet::new(),
            generations: vec![Generation {
                id: 1,
                created_us: now_us,
                key: PuncturableKey::random(),
            }],
        }
    }

    /// Reads the key file. Refused when group or others may read it, when it is missing
    /// ([`VaultError::Missing`]) or not a valid keyring ([`VaultError::Malformed`]).
    pub fn load(path: &Path) -> Result<Keyring, VaultError> {
        let io_error = |source| VaultError::Io {
            path: path.to_owned(),
            source,
        };
        let file = match File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(VaultError::Missing(path.to_owned()));
            }
            Err(error) => return Err(io_error(error)),
        };
        // The mode of the file opened, not of whatever the path names a moment later.
        let metadata = file.metadata().map_err(io_error)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = metadata.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(VaultError::ReadableByOthers {
                    path: path.to_owned(),
                    mode,
                });
            }
        }
        if metadata.len() > MAX_KEY_FILE_BYTES {
            return Err(VaultError::TooLarge {
                path: path.to_owned(),
                limit: MAX_KEY_FILE_BYTES,
            });
        }
        // Sized up front so that no reallocation leaves copies of the keys in freed memory.
        let mut bytes = Zeroizing::new(Vec::with_capacity(metadata.len() as usize + 1));
        file.take(MAX_KEY_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io_error)?;
        if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
            return Err(VaultError::TooLarge {
                path: path.to_owned(),
                limit: MAX_KEY_FILE_BYTES,
            });
        }
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| VaultError::Malformed("the file is not UTF-8 text".into()))?;
        Keyring::from_json(text)
    }

    /// A keyring from the key file's JSON, or from that JSON base64-encoded (standard
    /// alphabet, line breaks allowed): the form of the `HYGIE_VAULT_KEY` environment
    /// variable.
    pub fn from_text(text: &str) -> Result<Keyring, VaultError> {
        let text = text.trim();
        if text.starts_with('{') {
            return Keyring::from_json(text);
        }
        let compact: Zeroizing<Vec<u8>> = Zeroizing::new(
            text.bytes()
                .filter(|byte| !byte.is_ascii_whitespace())
                .collect(),
        );
        let json = Zeroizing::new(STANDARD.decode(&*compact).map_err(|_| {
            VaultError::Malformed(
                "neither JSON (starting with `{`) nor standard base64 of that JSON".into(),
            )
        })?);
        let json = std::str::from_utf8(&json).map_err(|_| {
            VaultError::Malformed("the base64 does not decode to UTF-8 text".into())
        })?;
        Keyring::from_json(json)
    }

    /// The key file's JSON. Wiped when dropped.
    pub fn to_text(&self) -> Zeroizing<String> {
        let encoded: Vec<Vec<(u8, u64, Zeroizing<String>)>> = self
            .generations
            .iter()
            .map(|generation| {
                generation
                    .key
                    .nodes()
                    .map(|(depth, index, secret)| (depth, index, encode(secret)))
                    .collect()
            })
            .collect();
        let index_key = encode(&self.index_key);
        let file = KeyFile {
            format: FORMAT.into(),
            installation: self.installation.clone(),
            index_key: &index_key,
            erased_slots: self.erased_slots.iter().copied().collect(),
            generations: self
                .generations
                .iter()
                .zip(&encoded)
                .map(|(generation, nodes)| GenerationFile {
                    id: generation.id,
                    created_us: generation.created_us,
                    nodes: nodes
                        .iter()
                        .map(|(depth, index, secret)| (*depth, *index, secret.as_str()))
                        .collect(),
                })
                .collect(),
        };
        // Sized generously so that no reallocation leaves copies of the keys behind.
        let nodes: usize = self.generations.iter().map(Generation::cover_len).sum();
        let capacity =
            1024 + 6 * self.installation.len() + 24 * self.erased_slots.len() + 80 * nodes;
        let mut bytes = Zeroizing::new(Vec::with_capacity(capacity));
        serde_json::to_writer(&mut *bytes, &file).expect("a keyring always serializes");
        bytes.push(b'\n');
        Zeroizing::new(
            String::from_utf8(std::mem::take(&mut *bytes)).expect("serde_json writes UTF-8"),
        )
    }

    /// Writes the key file atomically and durably: `path` + `.tmp` created anew with mode
    /// 0600, written, fsynced, renamed over `path`, then the directory fsynced, so that a
    /// crash leaves either the old file or the new one, and an erasure once saved stays.
    pub fn save(&self, path: &Path) -> Result<(), VaultError> {
        let text = self.to_text();
        let temporary = temporary_path(path);
        let io_error = |path: &Path| {
            let path = path.to_owned();
            move |source| VaultError::Io { path, source }
        };
        // A leftover from a crash: removed rather than reused, so its mode never carries over.
        match fs::remove_file(&temporary) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error(&temporary)(error)),
        }
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(KEY_FILE_MODE);
        }
        let mut file = options.open(&temporary).map_err(io_error(&temporary))?;
        file.write_all(text.as_bytes())
            .map_err(io_error(&temporary))?;
        file.sync_all().map_err(io_error(&temporary))?;
        drop(file);
        fs::rename(&temporary, path).map_err(io_error(path))?;
        sync_parent_directory(path).map_err(io_error(path))
    }

    /// The installation's name, as written in the key file.
    pub fn installation(&self) -> &str {
        &self.installation
    }

    /// The key of the blind-index terms (see [`crate::blind::term`]).
    pub fn index_key(&self) -> &Secret {
        &self.index_key
    }

    /// The generation new data keys are wrapped under: the highest id.
    pub fn active_generation(&self) -> u32 {
        self.generations
            .last()
            .expect("a keyring has a generation")
            .id
    }

    /// The ids of the generations held, ascending.
    pub fn generation_ids(&self) -> Vec<u32> {
        self.generations
            .iter()
            .map(|generation| generation.id)
            .collect()
    }

    /// The generations held, ascending by id.
    pub fn generations(&self) -> &[Generation] {
        &self.generations
    }

    /// The slots erased so far.
    pub fn erased_slots(&self) -> &BTreeSet<u64> {
        &self.erased_slots
    }

    /// Adds a generation with a fresh root, active from now on, and returns its id. Every
    /// erased slot is punctured in it too, so that a rotation never revives an erasure.
    /// The caller re-wraps the live data keys under it (erased ones cannot be, and need not
    /// be), then retires the older generations.
    pub fn rotate(&mut self, now_us: i64) -> u32 {
        let id = self
            .active_generation()
            .checked_add(1)
            .expect("fewer than 2^32 rotations");
        let mut key = PuncturableKey::random();
        for &slot in &self.erased_slots {
            key.puncture(slot)
                .expect("erased slots are in range and never the check slot");
        }
        self.generations.push(Generation {
            id,
            created_us: now_us,
            key,
        });
        id
    }

    /// Drops an older generation once no data key is wrapped under it any more. The active
    /// generation cannot be retired.
    pub fn retire(&mut self, id: u32) -> Result<(), VaultError> {
        if id == self.active_generation() {
            return Err(VaultError::ActiveGeneration(id));
        }
        let position = self
            .generations
            .iter()
            .position(|generation| generation.id == id)
            .ok_or(VaultError::UnknownGeneration(id))?;
        self.generations.remove(position);
        Ok(())
    }

    /// Erases `slot`: punctures it in every generation and records it. Takes effect for
    /// good when the keyring is saved (and old copies of the key file are gone). Returns
    /// whether the slot was not erased before.
    pub fn puncture(&mut self, slot: u64) -> Result<bool, VaultError> {
        for generation in &mut self.generations {
            generation.key.puncture(slot)?;
        }
        Ok(self.erased_slots.insert(slot))
    }

    /// Whether `slot` was erased.
    pub fn is_erased(&self, slot: u64) -> bool {
        self.erased_slots.contains(&slot)
    }

    /// The key check value of a generation: hex of the first 16 bytes of
    /// HMAC-SHA256(slot key of [`CHECK_SLOT`], `"hygie-keyring-check-v1"` ‖ installation).
    /// Stored in the database, so that the hub refuses to start with another key file.
    pub fn check_value(&self, generation: u32) -> Result<String, VaultError> {
        let check_key = self
            .generation(generation)?
            .key
            .derive(CHECK_SLOT)?
            .ok_or_else(|| {
                VaultError::Malformed(format!(
                    "generation {generation} does not cover the check slot"
                ))
            })?;
        let mac = hmac_sha256(&check_key, &[CHECK_LABEL, self.installation.as_bytes()]);
        Ok(hex(&mac.as_bytes()[..CHECK_VALUE_BYTES]))
    }

    /// Wraps a data key under the slot key of `slot` in `generation`, bound to `aad` (the
    /// row that stores it). See the module's documentation for the format.
    pub fn wrap(
        &self,
        generation: u32,
        slot: u64,
        dek: &DataKey,
        aad: &[u8],
    ) -> Result<Vec<u8>, VaultError> {
        let slot_key = self.slot_key(generation, slot)?;
        let nonce = random_nonce();
        let mut wrapped = Vec::with_capacity(WRAPPED_KEY_LEN);
        wrapped.extend_from_slice(WRAP_MAGIC);
        wrapped.extend_from_slice(&nonce);
        wrapped.extend_from_slice(dek.as_bytes());
        let tag = encrypt_in_place(
            slot_key.as_bytes(),
            &nonce,
            &wrap_associated_data(generation, slot, aad),
            &mut wrapped[WRAP_MAGIC.len() + NONCE_LEN..],
        );
        wrapped.extend_from_slice(&tag);
        Ok(wrapped)
    }

    /// Unwraps what [`Keyring::wrap`] made with the same generation, slot and `aad`.
    /// [`VaultError::Erased`] once the slot was punctured.
    pub fn unwrap(
        &self,
        generation: u32,
        slot: u64,
        wrapped: &[u8],
        aad: &[u8],
    ) -> Result<DataKey, VaultError> {
        let slot_key = self.slot_key(generation, slot)?;
        if wrapped.len() != WRAPPED_KEY_LEN || !wrapped.starts_with(WRAP_MAGIC) {
            return Err(VaultError::Corrupt);
        }
        let (nonce, rest) = wrapped[WRAP_MAGIC.len()..].split_at(NONCE_LEN);
        let (encrypted, tag) = rest.split_at(Secret::LEN);
        let mut dek = Zeroizing::new([0u8; Secret::LEN]);
        dek.copy_from_slice(encrypted);
        decrypt_in_place(
            slot_key.as_bytes(),
            nonce.try_into().expect("split at the nonce's length"),
            &wrap_associated_data(generation, slot, aad),
            &mut *dek,
            tag.try_into().expect("the rest is the tag"),
        )?;
        Ok(DataKey::from_bytes(*dek))
    }

    fn generation(&self, id: u32) -> Result<&Generation, VaultError> {
        self.generations
            .iter()
            .find(|generation| generation.id == id)
            .ok_or(VaultError::UnknownGeneration(id))
    }

    /// The slot key of a slot that may hold a data key: known generation, not the check
    /// slot, not erased.
    fn slot_key(&self, generation: u32, slot: u64) -> Result<Secret, VaultError> {
        let generation = self.generation(generation)?;
        if slot == CHECK_SLOT {
            return Err(VaultError::ReservedSlot(slot));
        }
        if self.erased_slots.contains(&slot) {
            return Err(VaultError::Erased { slot });
        }
        generation
            .key
            .derive(slot)?
            .ok_or(VaultError::Erased { slot })
    }

    fn from_json(text: &str) -> Result<Keyring, VaultError> {
        // The format first, so that a file of another version says so instead of failing
        // on a field.
        let header: FormatOnly = serde_json::from_str(text).map_err(json_error)?;
        if header.format != FORMAT {
            return Err(VaultError::Malformed(format!(
                "format: {:?} is not {FORMAT:?}, the only format this version of Hygie reads",
                header.format
            )));
        }
        let file: KeyFile<'_> = serde_json::from_str(text).map_err(json_error)?;
        let index_key = decode(file.index_key, "index_key")?;
        let erased_slots: BTreeSet<u64> = file.erased_slots.into_iter().collect();
        if let Some(&slot) = erased_slots.range(BACKUP_SLOT..).next() {
            return Err(VaultError::Malformed(format!(
                "erased_slots: {slot} is not a slot that can be erased"
            )));
        }
        if file.generations.is_empty() {
            return Err(VaultError::Malformed("generations: none".into()));
        }
        let mut generations = Vec::with_capacity(file.generations.len());
        for (position, generation) in file.generations.into_iter().enumerate() {
            let field = format!("generations[{position}] (id {})", generation.id);
            let mut nodes = Vec::with_capacity(generation.nodes.len());
            for (node, (depth, index, secret)) in generation.nodes.into_iter().enumerate() {
                let secret = decode(secret, &format!("{field}.nodes[{node}]"))?;
                nodes.push((depth, index, secret));
            }
            let key = PuncturableKey::from_nodes(nodes)
                .map_err(|problem| VaultError::Malformed(format!("{field}.nodes: {problem}")))?;
            if key.is_punctured(CHECK_SLOT)? {
                return Err(VaultError::Malformed(format!(
                    "{field}.nodes: the check slot is not covered"
                )));
            }
            if key.is_punctured(BACKUP_SLOT)? {
                return Err(VaultError::Malformed(format!(
                    "{field}.nodes: the backup slot is not covered"
                )));
            }
            if let Some(slot) = erased_slots
                .iter()
                .find(|&&slot| !key.is_punctured(slot).unwrap_or(false))
            {
                return Err(VaultError::Malformed(format!(
                    "{field}.nodes: erased slot {slot} is not punctured"
                )));
            }
            if generation.id == 0 {
                return Err(VaultError::Malformed(format!("{field}: ids start at 1")));
            }
            generations.push(Generation {
                id: generation.id,
                created_us: generation.created_us,
                key,
            });
        }
        generations.sort_by_key(|generation| generation.id);
        if let Some(pair) = generations.windows(2).find(|pair| pair[0].id == pair[1].id) {
            return Err(VaultError::Malformed(format!(
                "generations: id {} appears twice",
                pair[0].id
            )));
        }
        Ok(Keyring {
            installation: file.installation,
            index_key,
            erased_slots,
            generations,
        })
    }
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Keyring")
            .field("installation", &self.installation)
            .field("erased_slots", &self.erased_slots.len())
            .field("generations", &self.generations)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Generation")
            .field("id", &self.id)
            .field("created_us", &self.created_us)
            .field("cover_len", &self.key.cover_len())
            .finish()
    }
}

/// Only the format, read before the rest.
#[derive(Deserialize)]
struct FormatOnly {
    format: String,
}

/// The key file as written. Secrets are borrowed from the (wiped) text rather than copied
/// into strings that nothing would wipe.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile<'a> {
    format: String,
    installation: String,
    #[serde(borrow)]
    index_key: &'a str,
    #[serde(default)]
    erased_slots: Vec<u64>,
    #[serde(borrow)]
    generations: Vec<GenerationFile<'a>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerationFile<'a> {
    id: u32,
    created_us: i64,
    #[serde(borrow)]
    nodes: Vec<(u8, u64, &'a str)>,
}

fn encode(secret: &Secret) -> Zeroizing<String> {
    Zeroizing::new(STANDARD.encode(secret.as_bytes()))
}

/// A secret from standard base64; `field` names it in the error, which never shows the
/// value.
fn decode(text: &str, field: &str) -> Result<Secret, VaultError> {
    let bytes = Zeroizing::new(
        STANDARD
            .decode(text)
            .map_err(|_| VaultError::Malformed(format!("{field}: not standard base64")))?,
    );
    let bytes: &[u8; Secret::LEN] = bytes.as_slice().try_into().map_err(|_| {
        VaultError::Malformed(format!(
            "{field}: {} bytes where a key has {}",
            bytes.len(),
            Secret::LEN
        ))
    })?;
    Ok(Secret::from_bytes(*bytes))
}

/// serde_json's message, unless it quotes a string from the file (which might be a key):
/// then only the position.
fn json_error(error: serde_json::Error) -> VaultError {
    let message = error.to_string();
    if message.contains('"') {
        VaultError::Malformed(format!(
            "a value of the wrong type at line {} column {}",
            error.line(),
            error.column()
        ))
    } else {
        VaultError::Malformed(message)
    }
}

fn wrap_associated_data(generation: u32, slot: u64, aad: &[u8]) -> Vec<u8> {
    [
        WRAP_LABEL,
        &generation.to_be_bytes(),
        &slot.to_be_bytes(),
        aad,
    ]
    .concat()
}

/// `path` + `.tmp`, beside it so that the rename stays within one file system.
fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Makes a rename in the directory durable.
fn sync_parent_directory(path: &Path) -> io::Result<()> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(directory)?.sync_all()
}
