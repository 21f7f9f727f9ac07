//! `hygie audit verify`: recomputes the audit tree from the stored leaves, compares every
//! stored perfect-subtree hash (the leaf hashes, and the subtrees of 16 leaves and more:
//! `audit_level_is_stored`) and every signed checkpoint with it, and names the first leaf
//! that does not fit. Reads the store in batches (a snapshot each), never writes.
//!
//! What it catches: a leaf modified, deleted, inserted (indices shifted), reordered or
//! truncated; a stored node rewritten; a checkpoint whose signature does not verify or
//! whose root the leaves do not give. What it cannot catch alone: someone who holds the
//! log's key (it is kept with the data) and rewrote leaves, nodes and checkpoints alike;
//! a checkpoint held elsewhere (a witness's, an auditor's: `--checkpoint`) catches that.

use hygie_audit::checkpoint::{Checkpoint, VerifierKey, open_checkpoint};
use hygie_audit::merkle::{self, Discrepancy, Hash, NodeId, StreamVerifier};
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use hygie_store::{StoreError, StoreExt, StoredCheckpoint, audit_level_is_stored};

use crate::{Hub, HubError};

/// Leaves read per store snapshot.
const VERIFY_BATCH_LEAVES: usize = 10_000;
/// Checkpoints read per store snapshot.
const CHECKPOINT_BATCH: usize = 1_000;

/// What a verification went through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Leaves replayed (the tree's size).
    pub leaves: u64,
    /// Leaves whose body was pruned (their stored hash was used).
    pub pruned: u64,
    /// Stored checkpoints whose signature and root were checked.
    pub checkpoints: u64,
    /// Leaves appended but not yet integrated (they are checked once integrated).
    pub pending: u64,
    /// The root of the whole tree.
    pub root: Hash,
    /// The configured witnesses (`audit.witnesses`) whose kept cosignature verifies on a
    /// stored checkpoint, with that checkpoint's size. The hub keeps the latest one of each
    /// within reach (see `accept_audit_cosignature`), so this is one per witness.
    pub witness_cosigned: Vec<(String, u64)>,
}

/// Why verification failed: what, and the first leaf concerned when it is known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct VerifyFailure {
    pub first_bad_leaf: Option<u64>,
    pub message: String,
}

fn failure(first_bad_leaf: Option<u64>, message: String) -> VerifyFailure {
    VerifyFailure {
        first_bad_leaf,
        message,
    }
}

/// A checkpoint to hold the log to, with where it came from (for messages).
struct Expected {
    size: u64,
    root: Hash,
    source: String,
}

fn describe(discrepancy: &Discrepancy) -> (Option<u64>, String) {
    match discrepancy {
        Discrepancy::Leaf { index, .. } => (
            Some(*index),
            format!(
                "leaf {index} does not hash to its stored hash: it was modified, or leaves before it were removed, inserted or reordered"
            ),
        ),
        Discrepancy::Node { id, .. } => {
            let first = id.leaves().map(|(begin, _)| begin);
            (
                first,
                format!(
                    "the stored hash of the subtree (level {}, index {}) is not the one its leaves give: stored hashes were rewritten",
                    id.level, id.index
                ),
            )
        }
        other => (None, other.to_string()),
    }
}

impl Hub {
    /// Verifies the whole audit log (see the module's documentation). `log_key` pins the
    /// key checkpoints must be signed with (by default the stored one); `external` are
    /// checkpoints held outside the database (signed notes).
    pub async fn verify_audit(
        &self,
        log_key: Option<VerifierKey>,
        external: &[String],
    ) -> Result<Result<VerifyReport, VerifyFailure>, HubError> {
        let key = match log_key {
            Some(key) => key,
            None => self.audit_log_key().await?,
        };
        let keys = [key];
        let read = |error: StoreError| HubError::from_store(error);
        let tree_size = self
            .inner
            .store
            .read(|tx| crate::audit_log::tree_size(tx))
            .await
            .map_err(read)?;

        // Every checkpoint, stored and external, checked for its signature first.
        let mut expected: Vec<Expected> = Vec::new();
        let mut stored_count = 0u64;
        let mut from = 0i64;
        loop {
            let page: Vec<StoredCheckpoint> = self
                .inner
                .store
                .read(move |tx| tx.audit_checkpoints(from, CHECKPOINT_BATCH))
                .await
                .map_err(read)?;
            for stored in &page {
                let source = format!("the stored checkpoint of size {}", stored.tree_size);
                let checkpoint = match open(&stored.note, &keys, &source) {
                    Ok(checkpoint) => checkpoint,
                    Err(why) => return Ok(Err(why)),
                };
                if checkpoint.size != stored.tree_size as u64 || checkpoint.root != stored.root {
                    return Ok(Err(failure(
                        None,
                        format!("{source} says size {} in its signed note", checkpoint.size),
                    )));
                }
                expected.push(Expected {
                    size: checkpoint.size,
                    root: checkpoint.root,
                    source,
                });
                stored_count += 1;
            }
            match page.last() {
                Some(last) if page.len() == CHECKPOINT_BATCH => from = last.tree_size + 1,
                _ => break,
            }
        }
        for (number, note) in external.iter().enumerate() {
            let source = format!("the checkpoint given ({})", number + 1);
            match open(note, &keys, &source) {
                Ok(checkpoint) => expected.push(Expected {
                    size: checkpoint.size,
                    root: checkpoint.root,
                    source,
                }),
                Err(why) => return Ok(Err(why)),
            }
        }
        expected.sort_by_key(|e| e.size);

        // The leaves, in index order, against the stored nodes and the checkpoints.
        let mut verifier = StreamVerifier::new();
        let mut next_expected = expected.iter().peekable();
        while next_expected.peek().is_some_and(|e| e.size == 0) {
            let checkpoint = next_expected.next().expect("peeked");
            if let Err(d) = verifier.check_root(&checkpoint.root) {
                return Ok(Err(failure(Some(0), format!("{}: {d}", checkpoint.source))));
            }
        }
        let mut pruned = 0u64;
        let mut body_kept_before: Option<u64> = None;
        // The next batch is read (on a reader thread) while this one is hashed.
        let mut prefetched: Option<(i64, Prefetch<_>)> = None;
        while verifier.size() < tree_size {
            let start = verifier.size() as i64;
            let (leaves, nodes) = match prefetched.take() {
                Some((at, prefetch)) if at == start => prefetch.resolve().await,
                _ => self.read_batch(start, tree_size).await,
            }
            .map_err(read)?;
            let next = start + leaves.len() as i64;
            if !leaves.is_empty() && (next as u64) < tree_size {
                prefetched = Some((
                    next,
                    Prefetch::start(self.read_batch(next, tree_size)).await,
                ));
            }
            if leaves.is_empty() {
                return Ok(Err(failure(
                    Some(start as u64),
                    format!(
                        "the log ends at leaf {start}, before the {tree_size} leaves the tree had: leaves were deleted (truncated)"
                    ),
                )));
            }
            for (index, leaf) in leaves {
                let at = verifier.size();
                if index as u64 != at {
                    return Ok(Err(failure(
                        Some(at),
                        format!(
                            "leaf {at} is missing: it was deleted (the next stored leaf is {index})"
                        ),
                    )));
                }
                let outcome = match &leaf {
                    Some(leaf) => {
                        body_kept_before = Some(at);
                        verifier.verify_leaf_kept(
                            merkle::leaf_hash(leaf),
                            audit_level_is_stored,
                            |id| stored_node(&nodes, id),
                        )
                    }
                    // Retention prunes from the oldest leaf on: a body missing after one
                    // that was kept was removed by someone else.
                    None if body_kept_before.is_some() => {
                        let kept = body_kept_before.unwrap_or_default();
                        return Ok(Err(failure(
                            Some(at),
                            format!(
                                "leaf {at} has lost its body while leaf {kept} before it kept its own: retention prunes the oldest leaves first, so it was deleted"
                            ),
                        )));
                    }
                    None => {
                        pruned += 1;
                        match stored_node(&nodes, NodeId::leaf(at)) {
                            Some(hash) => verifier.verify_leaf_kept(
                                hash,
                                |level| level > 0 && audit_level_is_stored(level),
                                |id| stored_node(&nodes, id),
                            ),
                            None => {
                                return Ok(Err(failure(
                                    Some(at),
                                    format!("leaf {at} was pruned and its hash is missing"),
                                )));
                            }
                        }
                    }
                };
                if let Err(discrepancy) = outcome {
                    let (first, message) = describe(&discrepancy);
                    return Ok(Err(failure(first, message)));
                }
                while let Some(checkpoint) = next_expected.next_if(|e| e.size == verifier.size()) {
                    if verifier.check_root(&checkpoint.root).is_err() {
                        return Ok(Err(failure(
                            None,
                            format!(
                                "the first {} leaves do not give the root of {}: a leaf before {} was changed, and the stored hashes with it",
                                checkpoint.size, checkpoint.source, checkpoint.size
                            ),
                        )));
                    }
                }
            }
        }
        if let Some(beyond) = next_expected.next() {
            return Ok(Err(failure(
                Some(verifier.size()),
                format!(
                    "{} has {} leaves but the log ends at {}: leaves were deleted (truncated)",
                    beyond.source,
                    beyond.size,
                    verifier.size()
                ),
            )));
        }
        let pending = self
            .inner
            .store
            .read(move |tx| tx.pending_audit_leaves(tree_size as i64))
            .await
            .map_err(read)?;
        let witnesses = self.inner.config.audit.witnesses.clone();
        let witness_cosigned = self
            .inner
            .store
            .read(move |tx| crate::audit_log::verified_cosignatures(tx, &witnesses))
            .await
            .map_err(read)?;
        Ok(Ok(VerifyReport {
            leaves: verifier.size(),
            pruned,
            checkpoints: stored_count,
            pending: pending as u64,
            root: verifier.root(),
            witness_cosigned,
        }))
    }
}

/// A batch of leaves and the stored nodes they complete, by level in index order.
type Batch = (Vec<(i64, Option<Vec<u8>>)>, Vec<Vec<(i64, Hash)>>);

impl Hub {
    /// Reads the batch of leaves from `start` (one snapshot), with every node they complete
    /// (and a few more). Nodes are kept by level in index order and looked up by binary
    /// search: a hash map of them cost an eighth of the whole verification.
    fn read_batch(
        &self,
        start: i64,
        tree_size: u64,
    ) -> impl Future<Output = Result<Batch, StoreError>> + Send + '_ {
        let end = (start + VERIFY_BATCH_LEAVES as i64).min(tree_size as i64) - 1;
        self.inner.store.read(move |tx| {
            let leaves = tx.audit_tree_leaves(start, (end - start + 1) as usize)?;
            let mut nodes: Vec<Vec<(i64, Hash)>> = Vec::new();
            for level in 0..63u32 {
                if (1i64 << level) > end + 1 {
                    break;
                }
                if !audit_level_is_stored(level) {
                    nodes.push(Vec::new());
                    continue;
                }
                let (first, last) = (start >> level, end >> level);
                let mut range = tx.audit_node_range(level, first, last)?;
                if !range.is_sorted_by_key(|(index, _)| *index) {
                    range.sort_unstable_by_key(|(index, _)| *index);
                }
                nodes.push(range);
            }
            Ok((leaves, nodes))
        })
    }
}

/// A store read started ahead: polled once, which queues its unit, then left to run
/// beside the caller's own work until it is awaited.
enum Prefetch<F: Future> {
    Running(Pin<Box<F>>),
    Done(F::Output),
}

impl<F: Future> Prefetch<F> {
    async fn start(future: F) -> Prefetch<F> {
        let mut future = Box::pin(future);
        let early = std::future::poll_fn(|cx| {
            Poll::Ready(match future.as_mut().poll(cx) {
                Poll::Ready(output) => Some(output),
                Poll::Pending => None,
            })
        })
        .await;
        match early {
            Some(output) => Prefetch::Done(output),
            None => Prefetch::Running(future),
        }
    }

    async fn resolve(self) -> F::Output {
        match self {
            Prefetch::Running(future) => future.await,
            Prefetch::Done(output) => output,
        }
    }
}

/// A stored node of a batch (`nodes[level]`, sorted by index), if it was read.
fn stored_node(nodes: &[Vec<(i64, Hash)>], id: NodeId) -> Option<Hash> {
    let level = nodes.get(id.level as usize)?;
    let index = i64::try_from(id.index).ok()?;
    let at = level.binary_search_by_key(&index, |(i, _)| *i).ok()?;
    Some(level[at].1)
}

fn open(note: &str, keys: &[VerifierKey], source: &str) -> Result<Checkpoint, VerifyFailure> {
    let (checkpoint, _) = open_checkpoint(note.as_bytes(), keys).map_err(|e| {
        failure(
            None,
            format!("{source} does not verify with the log's key: {e}"),
        )
    })?;
    if checkpoint.origin != keys[0].name() {
        return Err(failure(
            None,
            format!(
                "{source} is of the log {:?}, not {:?}",
                checkpoint.origin,
                keys[0].name()
            ),
        ));
    }
    Ok(checkpoint)
}
