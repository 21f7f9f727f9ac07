//! The witness's judgement, pure: from what it trusts, the checkpoint it last accepted, the
//! note the log serves now and, when the tree grew, a consistency proof, whether to cosign
//! or to raise the alarm. No IO and no clock (the time is an argument), so that every
//! branch is tested without a network; [`crate::run`] does the fetching and the saving.
//!
//! A round is two steps because the proof to ask for depends on the first:
//! [`open`] verifies the note with the pinned key and origin, [`judge`] compares it with the
//! last accepted checkpoint, and only for a larger tree [`check_growth`] verifies the
//! consistency proof the log then serves.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hygie_audit::checkpoint::{
    Checkpoint, CheckpointError, Cosigner, Note, NoteError, SignatureType, VerifierKey,
};
use hygie_audit::merkle::{Hash, MerkleError, verify_consistency};

/// What the witness trusts about the log: its signing key and, once known, its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogTrust {
    pub key: VerifierKey,
    /// The origin line of the log's checkpoints; `None` until the first one is accepted
    /// (trust on first use), unless the operator gave it.
    pub origin: Option<String>,
}

impl LogTrust {
    /// Trusts `key`, which must be a log's checkpoint key (type 0x01): a witness's
    /// cosignature key (0x04) signs another message, so nothing would ever verify.
    pub fn new(key: VerifierKey, origin: Option<String>) -> Result<LogTrust, Refusal> {
        if key.signature_type() != SignatureType::Ed25519 {
            return Err(Refusal::NotALogKey {
                key: key.to_string(),
            });
        }
        Ok(LogTrust { key, origin })
    }
}

/// The last checkpoint the witness accepted and cosigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub size: u64,
    pub root: Hash,
    /// The checkpoint as a note with the log's signature: the evidence, should the log
    /// later serve one that does not extend it.
    pub note: String,
    /// When it was accepted, Unix seconds.
    pub accepted_at_s: u64,
}

/// A checkpoint whose signature by the pinned log key verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub checkpoint: Checkpoint,
    /// The note with the log's signature lines only: other witnesses' cosignatures, which
    /// the witness cannot check, are neither kept nor passed on.
    pub note: Note,
}

/// Why a served checkpoint was not even considered: it proves nothing about the log (anyone
/// can serve a note that does not verify), so it is an error of the round, not an alarm.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "{key} is not a log's checkpoint key (type 0x01, Ed25519): a witness's cosignature key cannot sign checkpoints"
    )]
    NotALogKey { key: String },
    #[error("the checkpoint is not signed by the pinned log key {key}: {reason}")]
    Unverified {
        key: String,
        reason: CheckpointError,
    },
    #[error("the checkpoint is of origin {served:?}, where the pinned origin is {pinned:?}")]
    WrongOrigin { pinned: String, served: String },
}

/// Verifies a served note (untrusted bytes) with the pinned key, then reads it as a
/// checkpoint and checks its origin, in that order: nothing unsigned is ever parsed further.
pub fn open(trust: &LogTrust, served: &[u8]) -> Result<Opened, Refusal> {
    let unverified = |reason: CheckpointError| Refusal::Unverified {
        key: trust.key.to_string(),
        reason,
    };
    let note = Note::parse(served).map_err(|e| unverified(e.into()))?;
    note.verify(std::slice::from_ref(&trust.key))
        .map_err(|e| unverified(e.into()))?;
    let checkpoint = Checkpoint::parse_body(note.text()).map_err(unverified)?;
    if let Some(pinned) = &trust.origin
        && *pinned != checkpoint.origin
    {
        return Err(Refusal::WrongOrigin {
            pinned: pinned.clone(),
            served: checkpoint.origin,
        });
    }
    let mut logs_only = Note::new(note.text()).map_err(|e| unverified(e.into()))?;
    for signature in note.signatures() {
        if (signature.name.as_str(), signature.key_id) == (trust.key.name(), trust.key.key_id()) {
            logs_only
                .add_signature(signature.clone())
                .map_err(|e| unverified(e.into()))?;
        }
    }
    Ok(Opened {
        checkpoint,
        note: logs_only,
    })
}

/// How a verified checkpoint compares with the last accepted one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// Nothing accepted yet: accepted as is (there is nothing to be consistent with).
    FirstContact,
    /// The very checkpoint accepted last (same size, same root).
    Unchanged,
    /// A larger tree: to be accepted only with a consistency proof from `from_size`.
    Grew { from_size: u64 },
    /// The log misbehaved: a smaller tree, or another root at the same size.
    Misbehaviour(Evidence),
}

/// Compares a verified checkpoint with the last accepted one.
pub fn judge(last: Option<&Accepted>, served: &Opened) -> Judgement {
    let Some(last) = last else {
        return Judgement::FirstContact;
    };
    let checkpoint = &served.checkpoint;
    let evidence = |kind| {
        Judgement::Misbehaviour(Evidence {
            kind,
            accepted_note: last.note.clone(),
            served_note: served.note.to_string(),
        })
    };
    if checkpoint.size < last.size {
        evidence(Misbehaviour::Rollback {
            accepted_size: last.size,
            served_size: checkpoint.size,
        })
    } else if checkpoint.size == last.size && checkpoint.root != last.root {
        evidence(Misbehaviour::Fork {
            size: checkpoint.size,
        })
    } else if checkpoint.size == last.size {
        Judgement::Unchanged
    } else {
        Judgement::Grew {
            from_size: last.size,
        }
    }
}

/// Checks that the served (larger) tree extends the last accepted one. A failure is
/// evidence: a log that did not rewrite its history can always prove consistency.
pub fn check_growth(last: &Accepted, served: &Opened, proof: &[Hash]) -> Result<(), Evidence> {
    let checkpoint = &served.checkpoint;
    verify_consistency(
        last.size,
        checkpoint.size,
        proof,
        &last.root,
        &checkpoint.root,
    )
    .map_err(|reason| Evidence {
        kind: Misbehaviour::Inconsistent {
            from_size: last.size,
            to_size: checkpoint.size,
            reason,
        },
        accepted_note: last.note.clone(),
        served_note: served.note.to_string(),
    })
}

/// The served checkpoint cosigned at `now_s` (Unix seconds): the log's signature and the
/// witness's `cosignature/v1` line.
pub fn cosign(served: &Opened, cosigner: &Cosigner, now_s: u64) -> Result<Note, NoteError> {
    let mut note = served.note.clone();
    note.cosign(cosigner, now_s)?;
    Ok(note)
}

/// What the witness keeps of a checkpoint it accepts at `now_s`.
pub fn accepted(served: &Opened, now_s: u64) -> Accepted {
    Accepted {
        size: served.checkpoint.size,
        root: served.checkpoint.root,
        note: served.note.to_string(),
        accepted_at_s: now_s,
    }
}

/// How the log misbehaved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Misbehaviour {
    /// The log served a smaller tree than one it signed before.
    Rollback {
        accepted_size: u64,
        served_size: u64,
    },
    /// Two different roots signed for one tree size.
    Fork { size: u64 },
    /// The log could not prove that its larger tree extends the accepted one: history was
    /// rewritten (or the log forked before growing).
    Inconsistent {
        from_size: u64,
        to_size: u64,
        reason: MerkleError,
    },
}

impl fmt::Display for Misbehaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Misbehaviour::Rollback {
                accepted_size,
                served_size,
            } => write!(
                f,
                "ROLLBACK: the log serves a tree of {served_size} leaves after signing one of {accepted_size}"
            ),
            Misbehaviour::Fork { size } => write!(
                f,
                "FORK: the log signed two different roots for the tree of {size} leaves"
            ),
            Misbehaviour::Inconsistent {
                from_size,
                to_size,
                reason,
            } => write!(
                f,
                "FORK OR REWRITTEN HISTORY: the log cannot prove that its tree of {to_size} leaves extends the one of {from_size} it signed before ({reason})"
            ),
        }
    }
}

/// Two checkpoints signed by the log that cannot both be honest: what the witness hands to
/// auditors. Each note verifies with the log's key alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    pub kind: Misbehaviour,
    /// The checkpoint accepted before, as signed by the log.
    pub accepted_note: String,
    /// The checkpoint served now, as signed by the log.
    pub served_note: String,
}

impl fmt::Display for Evidence {
    /// The report: what happened, then both signed notes, each between marker lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.kind)?;
        writeln!(f, "--- checkpoint accepted before ---")?;
        f.write_str(&self.accepted_note)?;
        writeln!(f, "--- checkpoint served now ---")?;
        f.write_str(&self.served_note)?;
        writeln!(f, "--- end of evidence ---")
    }
}

/// A root hash as checkpoints write it: standard base64.
pub fn root_base64(root: &Hash) -> String {
    STANDARD.encode(root)
}
