//! C2SP signed notes (c2sp.org/signed-note), transparency log checkpoints
//! (c2sp.org/tlog-checkpoint) and Ed25519 witness cosignatures (c2sp.org/tlog-cosignature,
//! `cosignature/v1`): the formats in which the audit log publishes its tree heads, so that
//! anyone holding the log's verifier key (one line, [`VerifierKey`]) can check them with
//! any implementation of the specifications, ours or not.
//!
//! Everything here parses untrusted input: every size is bounded ([`MAX_NOTE_BYTES`],
//! [`MAX_SIGNATURES`], [`MAX_LINE_BYTES`], [`MAX_NAME_BYTES`], [`MAX_EXTENSION_LINES`],
//! [`MAX_VKEY_BYTES`]) and every refusal says which rule was broken.
//!
//! ```
//! use hygie_audit::checkpoint::{Checkpoint, NoteSigner, open_checkpoint};
//! let (signer, _pkcs8) = NoteSigner::generate("audit.example/log").unwrap();
//! let checkpoint = Checkpoint::new("audit.example/log", 3, [7; 32]);
//! let note = checkpoint.sign(&signer).unwrap().to_string();
//! let (opened, signatures) = open_checkpoint(note.as_bytes(), &[signer.verifier_key()]).unwrap();
//! assert_eq!(opened, checkpoint);
//! assert_eq!(signatures[0].name, "audit.example/log");
//! ```

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

use crate::merkle::{Hash, MAX_TREE_SIZE};

/// The largest signed note read: checkpoints are a few hundred bytes, and even 100
/// post-quantum signatures (about 5 KiB each, as the signed-note spec warns) fit.
pub const MAX_NOTE_BYTES: usize = 1 << 20;
/// The most signature lines read in one note (the signed-note spec asks for at least 16;
/// Go's sumdb/note stops at 100).
pub const MAX_SIGNATURES: usize = 100;
/// The longest line of a note: an ML-DSA-44 cosignature line is about 3.3 KB.
pub const MAX_LINE_BYTES: usize = 8 * 1024;
/// The longest key name: the ML-DSA cosignature message encodes names in 255 bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// The most extension lines of a checkpoint (the spec does not recommend any).
pub const MAX_EXTENSION_LINES: usize = 100;
/// The longest verifier key string: a name, 8 hex digits and a 33-byte key in base64.
pub const MAX_VKEY_BYTES: usize = 512;
/// The latest cosignature timestamp (c2sp.org/tlog-cosignature: at most 2^63 − 1).
pub const MAX_COSIGNATURE_TIMESTAMP_S: u64 = (1 << 63) - 1;

const SIGNATURE_PREFIX: &str = "\u{2014} ";
const COSIGNATURE_V1_HEADER: &str = "cosignature/v1\n";
const ED25519_PUBLIC_KEY_BYTES: usize = 32;
const ED25519_SIGNATURE_BYTES: usize = 64;
const COSIGNATURE_TIMESTAMP_BYTES: usize = 8;

/// The signature types of c2sp.org/signed-note this module knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignatureType {
    /// `0x01`: Ed25519 over the note text (a log's checkpoint signature).
    Ed25519,
    /// `0x04`: a timestamped Ed25519 witness cosignature, `cosignature/v1`.
    CosignatureV1,
}

impl SignatureType {
    pub const fn byte(self) -> u8 {
        match self {
            SignatureType::Ed25519 => 0x01,
            SignatureType::CosignatureV1 => 0x04,
        }
    }

    pub const fn from_byte(byte: u8) -> Option<SignatureType> {
        match byte {
            0x01 => Some(SignatureType::Ed25519),
            0x04 => Some(SignatureType::CosignatureV1),
            _ => None,
        }
    }
}

/// The key ID of c2sp.org/signed-note: `SHA-256(name ‖ 0x0A ‖ type ‖ public key)[:4]`,
/// big-endian.
pub fn key_id(name: &str, signature_type: SignatureType, public_key: &[u8]) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([b'\n', signature_type.byte()]);
    hasher.update(public_key);
    let digest = hasher.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// A key name: non-empty, no Unicode space, no `+` (signed-note), no control character.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("a key name is not empty");
    }
    if name.len() > MAX_NAME_BYTES {
        return Err("a key name is at most 255 bytes");
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '+')
    {
        return Err("a key name has no space, plus sign or control character");
    }
    Ok(())
}

/// Why a key or a verifier key string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a verifier key of {len} bytes is longer than the limit of {MAX_VKEY_BYTES}")]
    TooLong { len: usize },
    #[error("a verifier key is `<name>+<8 hex digits>+<base64 of type and key>`: {0}")]
    Malformed(&'static str),
    #[error("invalid key name: {0}")]
    InvalidName(&'static str),
    #[error(
        "signature type {0:#04x} is not supported (only 0x01, Ed25519, and 0x04, Ed25519 cosignatures)"
    )]
    UnsupportedType(u8),
    #[error("an Ed25519 public key is 32 bytes, not {0}")]
    WrongKeyLength(usize),
    #[error("the key ID {stated:08x} does not match the name and key, which give {computed:08x}")]
    KeyIdMismatch { stated: u32, computed: u32 },
    #[error("the Ed25519 private key was rejected: {0}")]
    Rejected(String),
}

/// Why a note was refused: malformed, over a limit, or not signed by a known key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("a note of {len} bytes is longer than the limit of {MAX_NOTE_BYTES}")]
    TooLarge { len: usize },
    #[error("a note is UTF-8 text")]
    NotUtf8,
    #[error("a control character other than newline at byte {offset}")]
    ControlCharacter { offset: usize },
    #[error("line {line} is longer than the limit of {MAX_LINE_BYTES} bytes")]
    LineTooLong { line: usize },
    #[error("no signature lines after a blank line")]
    NoSignatures,
    #[error("the note does not end with a newline")]
    Unterminated,
    #[error("more than {MAX_SIGNATURES} signature lines")]
    TooManySignatures,
    #[error("signature line {line}: {reason}")]
    MalformedSignature { line: usize, reason: &'static str },
    #[error("note text: {0}")]
    InvalidText(&'static str),
    #[error("invalid key name: {0}")]
    InvalidName(&'static str),
    #[error("two different known keys are named {name} with key ID {key_id:08x}")]
    AmbiguousKey { name: String, key_id: u32 },
    #[error("the signature of known key {name}+{key_id:08x} does not verify")]
    InvalidSignature { name: String, key_id: u32 },
    #[error("the cosignature of known key {name}+{key_id:08x} is malformed: {reason}")]
    MalformedCosignature {
        name: String,
        key_id: u32,
        reason: &'static str,
    },
    #[error("no signature of a known key")]
    NoVerifiedSignature,
}

/// A public key that signatures are checked with, as the one-line verifier key of Go's
/// sumdb/note: `<name>+<hex key ID>+<base64(type ‖ public key)>` (its [`Display`] and
/// [`FromStr`]). What a witness or an auditor is given.
///
/// [`Display`]: fmt::Display
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VerifierKey {
    name: String,
    key_id: u32,
    signature_type: SignatureType,
    public_key: [u8; ED25519_PUBLIC_KEY_BYTES],
}

impl VerifierKey {
    pub fn new(
        name: &str,
        signature_type: SignatureType,
        public_key: [u8; 32],
    ) -> Result<VerifierKey, KeyError> {
        check_name(name).map_err(KeyError::InvalidName)?;
        Ok(VerifierKey {
            name: name.to_owned(),
            key_id: key_id(name, signature_type, &public_key),
            signature_type,
            public_key,
        })
    }

    /// Reads a verifier key string, checking that its key ID is the one its name and key
    /// give.
    pub fn parse(vkey: &str) -> Result<VerifierKey, KeyError> {
        if vkey.len() > MAX_VKEY_BYTES {
            return Err(KeyError::TooLong { len: vkey.len() });
        }
        let (name, rest) = vkey
            .split_once('+')
            .ok_or(KeyError::Malformed("no `+` after the name"))?;
        let (id_hex, key_base64) = rest
            .split_once('+')
            .ok_or(KeyError::Malformed("no `+` after the key ID"))?;
        check_name(name).map_err(KeyError::InvalidName)?;
        if id_hex.len() != 8 || !id_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(KeyError::Malformed("the key ID is not 8 hex digits"));
        }
        let stated =
            u32::from_str_radix(id_hex, 16).map_err(|_| KeyError::Malformed("bad key ID"))?;
        let key = STANDARD
            .decode(key_base64)
            .map_err(|_| KeyError::Malformed("the key is not standard base64"))?;
        let (&type_byte, public_key) = key
            .split_first()
            .ok_or(KeyError::Malformed("the key is empty"))?;
        let signature_type =
            SignatureType::from_byte(type_byte).ok_or(KeyError::UnsupportedType(type_byte))?;
        let public_key: [u8; 32] = public_key
            .try_into()
            .map_err(|_| KeyError::WrongKeyLength(public_key.len()))?;
        let computed = key_id(name, signature_type, &public_key);
        if computed != stated {
            return Err(KeyError::KeyIdMismatch { stated, computed });
        }
        Ok(VerifierKey {
            name: name.to_owned(),
            key_id: computed,
            signature_type,
            public_key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    pub fn signature_type(&self) -> SignatureType {
        self.signature_type
    }

    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_key
    }

    /// Checks one signature (the bytes after the key ID) over `text`; a cosignature's
    /// timestamp is returned.
    fn verify(&self, text: &str, signature: &[u8]) -> Result<Option<u64>, NoteError> {
        let invalid = || NoteError::InvalidSignature {
            name: self.name.clone(),
            key_id: self.key_id,
        };
        let public_key = UnparsedPublicKey::new(&ED25519, &self.public_key);
        match self.signature_type {
            SignatureType::Ed25519 => {
                if signature.len() != ED25519_SIGNATURE_BYTES {
                    return Err(invalid());
                }
                public_key
                    .verify(text.as_bytes(), signature)
                    .map_err(|_| invalid())?;
                Ok(None)
            }
            SignatureType::CosignatureV1 => {
                let malformed = |reason| NoteError::MalformedCosignature {
                    name: self.name.clone(),
                    key_id: self.key_id,
                    reason,
                };
                if signature.len() != COSIGNATURE_TIMESTAMP_BYTES + ED25519_SIGNATURE_BYTES {
                    return Err(malformed(
                        "not an 8-byte timestamp and a 64-byte Ed25519 signature",
                    ));
                }
                let (timestamp, signature) = signature.split_at(COSIGNATURE_TIMESTAMP_BYTES);
                let timestamp_s =
                    u64::from_be_bytes(timestamp.try_into().expect("split at 8 bytes"));
                if timestamp_s > MAX_COSIGNATURE_TIMESTAMP_S {
                    return Err(malformed("the timestamp is past 2^63 - 1"));
                }
                public_key
                    .verify(&cosignature_v1_message(text, timestamp_s), signature)
                    .map_err(|_| invalid())?;
                Ok(Some(timestamp_s))
            }
        }
    }
}

impl fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut key = Vec::with_capacity(1 + ED25519_PUBLIC_KEY_BYTES);
        key.push(self.signature_type.byte());
        key.extend_from_slice(&self.public_key);
        write!(
            f,
            "{}+{:08x}+{}",
            self.name,
            self.key_id,
            STANDARD.encode(key)
        )
    }
}

impl FromStr for VerifierKey {
    type Err = KeyError;

    fn from_str(vkey: &str) -> Result<VerifierKey, KeyError> {
        VerifierKey::parse(vkey)
    }
}

/// The message a `cosignature/v1` signs: two header lines, then the checkpoint body.
fn cosignature_v1_message(text: &str, timestamp_s: u64) -> Vec<u8> {
    let mut message = Vec::with_capacity(COSIGNATURE_V1_HEADER.len() + 26 + text.len());
    message.extend_from_slice(COSIGNATURE_V1_HEADER.as_bytes());
    message.extend_from_slice(format!("time {timestamp_s}\n").as_bytes());
    message.extend_from_slice(text.as_bytes());
    message
}

/// An Ed25519 key pair with the name it signs under.
struct NamedKeyPair {
    name: String,
    key_id: u32,
    signature_type: SignatureType,
    key_pair: Ed25519KeyPair,
}

impl NamedKeyPair {
    fn new(
        name: &str,
        signature_type: SignatureType,
        key_pair: Ed25519KeyPair,
    ) -> Result<NamedKeyPair, KeyError> {
        check_name(name).map_err(KeyError::InvalidName)?;
        let public_key = key_pair.public_key().as_ref();
        if public_key.len() != ED25519_PUBLIC_KEY_BYTES {
            return Err(KeyError::WrongKeyLength(public_key.len()));
        }
        Ok(NamedKeyPair {
            name: name.to_owned(),
            key_id: key_id(name, signature_type, public_key),
            signature_type,
            key_pair,
        })
    }

    fn from_pkcs8(
        name: &str,
        signature_type: SignatureType,
        pkcs8: &[u8],
    ) -> Result<NamedKeyPair, KeyError> {
        let key_pair =
            Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| KeyError::Rejected(e.to_string()))?;
        NamedKeyPair::new(name, signature_type, key_pair)
    }

    fn from_seed(
        name: &str,
        signature_type: SignatureType,
        seed: &[u8; 32],
    ) -> Result<NamedKeyPair, KeyError> {
        let key_pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|e| KeyError::Rejected(e.to_string()))?;
        NamedKeyPair::new(name, signature_type, key_pair)
    }

    /// A new key pair and its PKCS#8 document (to keep it).
    fn generate(
        name: &str,
        signature_type: SignatureType,
    ) -> Result<(NamedKeyPair, Vec<u8>), KeyError> {
        let key_pair = Ed25519KeyPair::generate().map_err(|e| KeyError::Rejected(e.to_string()))?;
        let pkcs8 = key_pair
            .to_pkcs8()
            .map_err(|e| KeyError::Rejected(e.to_string()))?;
        let pkcs8 = pkcs8.as_ref().to_vec();
        Ok((NamedKeyPair::new(name, signature_type, key_pair)?, pkcs8))
    }

    fn verifier_key(&self) -> VerifierKey {
        let public_key: [u8; 32] = self
            .key_pair
            .public_key()
            .as_ref()
            .try_into()
            .expect("checked at construction");
        VerifierKey {
            name: self.name.clone(),
            key_id: self.key_id,
            signature_type: self.signature_type,
            public_key,
        }
    }

    fn signature(&self, value: Vec<u8>) -> NoteSignature {
        NoteSignature {
            name: self.name.clone(),
            key_id: self.key_id,
            signature: value,
        }
    }
}

impl fmt::Debug for NamedKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{:08x}", self.name, self.key_id)
    }
}

/// A log's signing key (type `0x01`): signs note texts, checkpoints above all.
#[derive(Debug)]
pub struct NoteSigner(NamedKeyPair);

impl NoteSigner {
    /// From an Ed25519 PKCS#8 document (as [`NoteSigner::generate`] gives).
    pub fn from_pkcs8(name: &str, pkcs8: &[u8]) -> Result<NoteSigner, KeyError> {
        NamedKeyPair::from_pkcs8(name, SignatureType::Ed25519, pkcs8).map(NoteSigner)
    }

    /// From a raw 32-byte Ed25519 seed (what Go's `PRIVATE+KEY+…` strings hold).
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<NoteSigner, KeyError> {
        NamedKeyPair::from_seed(name, SignatureType::Ed25519, seed).map(NoteSigner)
    }

    /// A new key, and its PKCS#8 document for the caller to keep.
    pub fn generate(name: &str) -> Result<(NoteSigner, Vec<u8>), KeyError> {
        let (key, pkcs8) = NamedKeyPair::generate(name, SignatureType::Ed25519)?;
        Ok((NoteSigner(key), pkcs8))
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn key_id(&self) -> u32 {
        self.0.key_id
    }

    pub fn verifier_key(&self) -> VerifierKey {
        self.0.verifier_key()
    }

    /// The signature of a note text (checked as [`Note::new`] does).
    pub fn sign(&self, text: &str) -> Result<NoteSignature, NoteError> {
        check_text(text)?;
        let value = self.0.key_pair.sign(text.as_bytes()).as_ref().to_vec();
        Ok(self.0.signature(value))
    }
}

/// A witness's cosigning key (type `0x04`, `cosignature/v1`). Its name is not signed, so
/// one key must serve one witness name only (c2sp.org/tlog-cosignature).
#[derive(Debug)]
pub struct Cosigner(NamedKeyPair);

impl Cosigner {
    pub fn from_pkcs8(name: &str, pkcs8: &[u8]) -> Result<Cosigner, KeyError> {
        NamedKeyPair::from_pkcs8(name, SignatureType::CosignatureV1, pkcs8).map(Cosigner)
    }

    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Cosigner, KeyError> {
        NamedKeyPair::from_seed(name, SignatureType::CosignatureV1, seed).map(Cosigner)
    }

    pub fn generate(name: &str) -> Result<(Cosigner, Vec<u8>), KeyError> {
        let (key, pkcs8) = NamedKeyPair::generate(name, SignatureType::CosignatureV1)?;
        Ok((Cosigner(key), pkcs8))
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn key_id(&self) -> u32 {
        self.0.key_id
    }

    pub fn verifier_key(&self) -> VerifierKey {
        self.0.verifier_key()
    }

    /// The cosignature of a checkpoint's note text at `timestamp_s` (Unix seconds): the
    /// statement that, then, this was the largest consistent tree the witness had seen.
    pub fn cosign(&self, text: &str, timestamp_s: u64) -> Result<NoteSignature, NoteError> {
        check_text(text)?;
        if timestamp_s > MAX_COSIGNATURE_TIMESTAMP_S {
            return Err(NoteError::InvalidText(
                "a cosignature timestamp is at most 2^63 - 1",
            ));
        }
        let message = cosignature_v1_message(text, timestamp_s);
        let mut value = Vec::with_capacity(COSIGNATURE_TIMESTAMP_BYTES + ED25519_SIGNATURE_BYTES);
        value.extend_from_slice(&timestamp_s.to_be_bytes());
        value.extend_from_slice(self.0.key_pair.sign(&message).as_ref());
        Ok(self.0.signature(value))
    }
}

/// One signature line: `— <name> base64(key ID ‖ signature)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    pub name: String,
    pub key_id: u32,
    /// The signature bytes after the key ID (for a cosignature: timestamp and signature).
    pub signature: Vec<u8>,
}

impl fmt::Display for NoteSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut value = Vec::with_capacity(4 + self.signature.len());
        value.extend_from_slice(&self.key_id.to_be_bytes());
        value.extend_from_slice(&self.signature);
        writeln!(
            f,
            "{SIGNATURE_PREFIX}{} {}",
            self.name,
            STANDARD.encode(value)
        )
    }
}

/// A signature of a known key that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSignature {
    pub name: String,
    pub key_id: u32,
    pub signature_type: SignatureType,
    /// A cosignature's timestamp, Unix seconds.
    pub timestamp_s: Option<u64>,
}

/// A note text: ends with a newline, no control character but newlines, bounded lines.
fn check_text(text: &str) -> Result<(), NoteError> {
    if text.len() > MAX_NOTE_BYTES {
        return Err(NoteError::TooLarge { len: text.len() });
    }
    if !text.ends_with('\n') {
        return Err(NoteError::InvalidText("it ends with a newline"));
    }
    check_characters(text, 0)?;
    check_line_lengths(text, 1)?;
    Ok(())
}

/// No ASCII control character but newline (signed-note); `base` offsets the reported byte.
fn check_characters(text: &str, base: usize) -> Result<(), NoteError> {
    match text.bytes().position(|b| b < 0x20 && b != b'\n') {
        Some(offset) => Err(NoteError::ControlCharacter {
            offset: base + offset,
        }),
        None => Ok(()),
    }
}

/// Every line within [`MAX_LINE_BYTES`]; `first_line` numbers the first one.
fn check_line_lengths(text: &str, first_line: usize) -> Result<(), NoteError> {
    match text
        .split('\n')
        .position(|line| line.len() > MAX_LINE_BYTES)
    {
        Some(line) => Err(NoteError::LineTooLong {
            line: first_line + line,
        }),
        None => Ok(()),
    }
}

/// A signed note: a text and its signature lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    text: String,
    signatures: Vec<NoteSignature>,
}

impl Note {
    /// An unsigned note of `text`, which must end with a newline.
    pub fn new(text: &str) -> Result<Note, NoteError> {
        check_text(text)?;
        Ok(Note {
            text: text.to_owned(),
            signatures: Vec::new(),
        })
    }

    /// Reads a signed note (untrusted input): the text, a blank line, then one or more
    /// signature lines. Signatures are not checked here; see [`Note::verify`].
    pub fn parse(bytes: &[u8]) -> Result<Note, NoteError> {
        if bytes.len() > MAX_NOTE_BYTES {
            return Err(NoteError::TooLarge { len: bytes.len() });
        }
        let note = std::str::from_utf8(bytes).map_err(|_| NoteError::NotUtf8)?;
        check_characters(note, 0)?;
        check_line_lengths(note, 1)?;
        // The text ends at the last blank line; it may hold blank lines itself.
        let split = note.rfind("\n\n").ok_or(NoteError::NoSignatures)?;
        let (text, block) = (&note[..=split], &note[split + 2..]);
        if block.is_empty() {
            return Err(NoteError::NoSignatures);
        }
        let Some(block) = block.strip_suffix('\n') else {
            return Err(NoteError::Unterminated);
        };
        let first_line = text.matches('\n').count() + 2;
        let mut signatures = Vec::new();
        for (number, line) in block.split('\n').enumerate() {
            if signatures.len() == MAX_SIGNATURES {
                return Err(NoteError::TooManySignatures);
            }
            signatures.push(parse_signature_line(line, first_line + number)?);
        }
        Ok(Note {
            text: text.to_owned(),
            signatures,
        })
    }

    /// The signed text, final newline included (what every signature covers).
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn signatures(&self) -> &[NoteSignature] {
        &self.signatures
    }

    /// Adds a signature line, replacing one of the same key (name and key ID), as Go's
    /// sumdb/note does when re-signing.
    pub fn add_signature(&mut self, signature: NoteSignature) -> Result<(), NoteError> {
        check_name(&signature.name).map_err(NoteError::InvalidName)?;
        self.signatures
            .retain(|s| (s.name.as_str(), s.key_id) != (signature.name.as_str(), signature.key_id));
        if self.signatures.len() == MAX_SIGNATURES {
            return Err(NoteError::TooManySignatures);
        }
        self.signatures.push(signature);
        let len = self.to_string().len();
        if len > MAX_NOTE_BYTES {
            self.signatures.pop();
            return Err(NoteError::TooLarge { len });
        }
        Ok(())
    }

    /// Signs the note with a log key.
    pub fn sign(&mut self, signer: &NoteSigner) -> Result<(), NoteError> {
        let signature = signer.sign(&self.text)?;
        self.add_signature(signature)
    }

    /// Cosigns the note with a witness key at `timestamp_s` (Unix seconds).
    pub fn cosign(&mut self, cosigner: &Cosigner, timestamp_s: u64) -> Result<(), NoteError> {
        let signature = cosigner.cosign(&self.text, timestamp_s)?;
        self.add_signature(signature)
    }

    /// Checks the signatures of the known `keys` (c2sp.org/signed-note): a signature whose
    /// name and key ID match no key is ignored; one that matches must verify, or the whole
    /// note is refused; at least one must verify. Returns those that did, each key once.
    pub fn verify(&self, keys: &[VerifierKey]) -> Result<Vec<VerifiedSignature>, NoteError> {
        let mut verified: Vec<VerifiedSignature> = Vec::new();
        for signature in &self.signatures {
            let mut matching = keys
                .iter()
                .filter(|k| k.name == signature.name && k.key_id == signature.key_id);
            let Some(key) = matching.next() else {
                continue;
            };
            if matching.any(|other| other != key) {
                return Err(NoteError::AmbiguousKey {
                    name: key.name.clone(),
                    key_id: key.key_id,
                });
            }
            let timestamp_s = key.verify(&self.text, &signature.signature)?;
            if !verified
                .iter()
                .any(|v| v.name == key.name && v.key_id == key.key_id)
            {
                verified.push(VerifiedSignature {
                    name: key.name.clone(),
                    key_id: key.key_id,
                    signature_type: key.signature_type,
                    timestamp_s,
                });
            }
        }
        if verified.is_empty() {
            return Err(NoteError::NoVerifiedSignature);
        }
        Ok(verified)
    }
}

fn parse_signature_line(line: &str, number: usize) -> Result<NoteSignature, NoteError> {
    let malformed = |reason| NoteError::MalformedSignature {
        line: number,
        reason,
    };
    let rest = line
        .strip_prefix(SIGNATURE_PREFIX)
        .ok_or(malformed("it does not start with an em dash and a space"))?;
    let (name, value) = rest
        .split_once(' ')
        .ok_or(malformed("no space between the key name and the signature"))?;
    check_name(name).map_err(malformed)?;
    let value = STANDARD
        .decode(value)
        .map_err(|_| malformed("the signature is not standard base64"))?;
    if value.len() < 5 {
        return Err(malformed(
            "the signature is shorter than a key ID and one byte",
        ));
    }
    let (id, signature) = value.split_at(4);
    Ok(NoteSignature {
        name: name.to_owned(),
        key_id: u32::from_be_bytes(id.try_into().expect("split at 4 bytes")),
        signature: signature.to_vec(),
    })
}

impl fmt::Display for Note {
    /// The signed note as sent: text, blank line, signature lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)?;
        f.write_str("\n")?;
        for signature in &self.signatures {
            write!(f, "{signature}")?;
        }
        Ok(())
    }
}

/// Why a checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("a checkpoint ends with a newline")]
    Unterminated,
    #[error("a checkpoint has at least three lines: origin, tree size, root hash")]
    TooFewLines,
    #[error("the origin (line 1) is empty")]
    EmptyOrigin,
    #[error("line {line} has a control character or a newline")]
    ControlCharacter { line: usize },
    #[error("line {line} is longer than the limit of {MAX_LINE_BYTES} bytes")]
    LineTooLong { line: usize },
    #[error("the tree size (line 2) is not a decimal number without leading zeros")]
    BadSize,
    #[error("tree size {size} is larger than the limit of 2^63 - 1")]
    SizeTooLarge { size: u64 },
    #[error("the root hash (line 3) is not the standard base64 of 32 bytes")]
    BadRootHash,
    #[error("extension line {line} is empty")]
    EmptyExtension { line: usize },
    #[error("more than {MAX_EXTENSION_LINES} extension lines")]
    TooManyExtensions,
    #[error(transparent)]
    Note(#[from] NoteError),
}

/// A checkpoint (c2sp.org/tlog-checkpoint): the log's origin, tree size and root hash, and
/// optional extension lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    pub extensions: Vec<String>,
}

impl Checkpoint {
    pub fn new(origin: &str, size: u64, root: Hash) -> Checkpoint {
        Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
            extensions: Vec::new(),
        }
    }

    /// The note text: one line each for origin, size and base64 root, then extensions.
    pub fn to_body(&self) -> Result<String, CheckpointError> {
        check_line(&self.origin, 1)?;
        if self.origin.is_empty() {
            return Err(CheckpointError::EmptyOrigin);
        }
        if self.size > MAX_TREE_SIZE {
            return Err(CheckpointError::SizeTooLarge { size: self.size });
        }
        if self.extensions.len() > MAX_EXTENSION_LINES {
            return Err(CheckpointError::TooManyExtensions);
        }
        let mut body = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        );
        for (number, extension) in self.extensions.iter().enumerate() {
            let line = number + 4;
            check_line(extension, line)?;
            if extension.is_empty() {
                return Err(CheckpointError::EmptyExtension { line });
            }
            body.push_str(extension);
            body.push('\n');
        }
        Ok(body)
    }

    /// Reads a note text as a checkpoint (untrusted input; to be read only once its
    /// signature is verified, as [`open_checkpoint`] does).
    pub fn parse_body(text: &str) -> Result<Checkpoint, CheckpointError> {
        let body = text
            .strip_suffix('\n')
            .ok_or(CheckpointError::Unterminated)?;
        let mut lines = body.split('\n');
        let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next())
        else {
            return Err(CheckpointError::TooFewLines);
        };
        check_line(origin, 1)?;
        check_line(size, 2)?;
        check_line(root, 3)?;
        if origin.is_empty() {
            return Err(CheckpointError::EmptyOrigin);
        }
        let size = parse_size(size)?;
        let root: Hash = STANDARD
            .decode(root)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(CheckpointError::BadRootHash)?;
        let mut extensions = Vec::new();
        for (number, extension) in lines.enumerate() {
            let line = number + 4;
            if extensions.len() == MAX_EXTENSION_LINES {
                return Err(CheckpointError::TooManyExtensions);
            }
            check_line(extension, line)?;
            if extension.is_empty() {
                return Err(CheckpointError::EmptyExtension { line });
            }
            extensions.push(extension.to_owned());
        }
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }

    /// The checkpoint as a note signed by the log's key (whose name should be the origin).
    pub fn sign(&self, signer: &NoteSigner) -> Result<Note, CheckpointError> {
        let mut note = Note::new(&self.to_body()?)?;
        note.sign(signer)?;
        Ok(note)
    }
}

/// One line of a checkpoint: no control character (nor newline), bounded.
fn check_line(line: &str, number: usize) -> Result<(), CheckpointError> {
    if line.len() > MAX_LINE_BYTES {
        return Err(CheckpointError::LineTooLong { line: number });
    }
    if line.bytes().any(|b| b < 0x20) {
        return Err(CheckpointError::ControlCharacter { line: number });
    }
    Ok(())
}

/// ASCII decimal, no leading zero unless the size is 0, within the tree size limit.
fn parse_size(size: &str) -> Result<u64, CheckpointError> {
    let digits_only = !size.is_empty() && size.bytes().all(|b| b.is_ascii_digit());
    if !digits_only || (size.len() > 1 && size.starts_with('0')) {
        return Err(CheckpointError::BadSize);
    }
    let size: u64 = size.parse().map_err(|_| CheckpointError::BadSize)?;
    if size > MAX_TREE_SIZE {
        return Err(CheckpointError::SizeTooLarge { size });
    }
    Ok(size)
}

/// Reads a signed checkpoint: parses the note, verifies it with the known `keys` (see
/// [`Note::verify`]), and only then reads its text as a checkpoint. Which keys must have
/// signed (the log's, a quorum of witnesses) is the caller's policy, applied to the
/// returned signatures.
pub fn open_checkpoint(
    note: &[u8],
    keys: &[VerifierKey],
) -> Result<(Checkpoint, Vec<VerifiedSignature>), CheckpointError> {
    let note = Note::parse(note)?;
    let verified = note.verify(keys)?;
    let checkpoint = Checkpoint::parse_body(note.text())?;
    Ok((checkpoint, verified))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_canonical_decimals() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("20852163"), Ok(20_852_163));
        for bad in ["", "00", "01", "+1", "-1", "1 ", " 1", "1e3", "0x10", "١"] {
            assert_eq!(parse_size(bad), Err(CheckpointError::BadSize), "{bad:?}");
        }
        assert_eq!(
            parse_size("18446744073709551616"),
            Err(CheckpointError::BadSize)
        );
        assert_eq!(
            parse_size("9223372036854775808"),
            Err(CheckpointError::SizeTooLarge {
                size: 9_223_372_036_854_775_808
            })
        );
        assert_eq!(parse_size("9223372036854775807"), Ok(MAX_TREE_SIZE));
    }

    #[test]
    fn key_names_refuse_spaces_pluses_and_controls() {
        assert!(check_name("example.com/log").is_ok());
        for bad in [
            "",
            "a b",
            "a+b",
            "a\tb",
            "a\u{a0}b",
            "a\u{2003}b",
            "a\u{7f}b",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(&"n".repeat(MAX_NAME_BYTES)).is_ok());
        assert!(check_name(&"n".repeat(MAX_NAME_BYTES + 1)).is_err());
    }
}
