//! The audit log as an RFC 9162 Merkle tree, with signed checkpoints.
//!
//! Every access appends its AuditEvent leaf in its own unit of work (fail closed). The
//! integrator, one at a time (a store lock: one process of many on PostgreSQL), takes the
//! leaves appended since, gives them their dense tree index, stores their hashes and those
//! of the perfect subtrees of 16 leaves and more they complete (`audit_level_is_stored`),
//! and signs a checkpoint (C2SP tlog-checkpoint) when `checkpoint_every_leaves` leaves or
//! `checkpoint_every` have passed. A proof reads its stored subtrees in one read, and
//! recomputes its smaller ones from the leaf hashes of their block of 16 leaves (one read
//! per block: one or two).
//!
//! The log's signing key and origin are made on first use and kept with the data
//! (`hub_meta`): whoever can write the database could sign a rewritten log, which is why
//! checkpoints are handed to witnesses (`hygie audit witness`) and auditors, whose copies
//! `hygie audit verify --checkpoint` checks the stored log against.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hygie_audit::checkpoint::{Checkpoint, Note, NoteSigner, VerifierKey};
use hygie_audit::merkle::{self, Hash, NodeId, NodeSource, StoredNode};
use hygie_store::{
    AUDIT_FULLY_STORED_FROM, LeafToIntegrate, StoreError, StoreExt, StoredCheckpoint, Tx,
    audit_level_is_stored,
};

use crate::instant::now_us;
use crate::{Hub, HubError};

/// `hub_meta` keys.
const TREE_SIZE: &str = "audit.tree_size";
const LOG_KEY: &str = "audit.log_key";
const ORIGIN: &str = "audit.origin";
/// The lock held while integrating (one integrator at a time, across processes).
const INTEGRATION_LOCK: &str = "audit.integrate";

/// Settings of the audit log.
#[derive(Debug, Clone)]
pub struct AuditLogSettings {
    /// The log's name in its checkpoints (C2SP origin), fixed when the log is created; by
    /// default `hygie/audit/` and a random id.
    pub origin: Option<String>,
    /// A checkpoint at least this many leaves after the last one.
    pub checkpoint_every_leaves: u64,
    /// A checkpoint at least this often while the log grows.
    pub checkpoint_every: Duration,
    /// Leaves integrated in one unit of work, at most. The SQLite writer serves nothing
    /// else while the unit runs: with 20,000, the p99 of audited reads under load was
    /// 47–67 ms (bench/audit §5); with 2,000 it was 10–18 ms, at the same throughput; with
    /// 500 the writer's turns over 3 ms took a third of the time they took with 2,000, and
    /// audited reads ran 7% faster (§12). A backlog is integrated in as many units as it
    /// takes.
    pub integrate_batch_leaves: usize,
    /// The witnesses whose cosignatures are accepted (`cosignature/v1` keys).
    pub witnesses: Vec<VerifierKey>,
}

impl Default for AuditLogSettings {
    fn default() -> AuditLogSettings {
        AuditLogSettings {
            origin: None,
            checkpoint_every_leaves: 10_000,
            checkpoint_every: Duration::from_secs(10),
            integrate_batch_leaves: 500,
            witnesses: Vec::new(),
        }
    }
}

/// What one integration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Integrated {
    /// Leaves put into the tree by this integration.
    pub leaves: u64,
    /// The tree's size after it.
    pub tree_size: u64,
    /// The size of the checkpoint it signed, if it signed one.
    pub checkpoint: Option<u64>,
}

/// A proof, as served: the hashes, in RFC 9162 order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    pub hashes: Vec<Hash>,
}

/// The stored tree, read through a unit of work: the levels kept (`audit_level_is_stored`)
/// in one read, and each node of levels 1 to 3 from the leaf hashes of its block of 16
/// leaves (one range read per block asked about).
struct TxNodes<'a>(&'a mut dyn Tx);

/// The leaves under one node of the lowest stored level above 0.
const BLOCK_LEAVES: u64 = 1 << AUDIT_FULLY_STORED_FROM;

impl NodeSource for TxNodes<'_> {
    type Error = StoreError;

    fn nodes(&mut self, ids: &[NodeId]) -> Result<Vec<Hash>, StoreError> {
        let asked: Vec<(u32, i64)> = ids
            .iter()
            .filter(|id| audit_level_is_stored(id.level))
            .map(|id| (id.level, id.index as i64))
            .collect();
        let mut stored = if asked.is_empty() {
            Vec::new()
        } else {
            self.0.audit_nodes(&asked)?
        }
        .into_iter();
        // Each block's leaf hashes, `(block, [(index, hash)])`, read once.
        let mut blocks: Vec<(u64, Vec<(i64, Hash)>)> = Vec::new();
        ids.iter()
            .map(|id| {
                if audit_level_is_stored(id.level) {
                    return stored.next().flatten().ok_or_else(|| missing_node(*id));
                }
                let (begin, end) = id.leaves().ok_or_else(|| missing_node(*id))?;
                let block = begin / BLOCK_LEAVES;
                let at = match blocks.iter().position(|(b, _)| *b == block) {
                    Some(at) => at,
                    None => {
                        let first = (block * BLOCK_LEAVES) as i64;
                        let leaves =
                            self.0
                                .audit_node_range(0, first, first + BLOCK_LEAVES as i64 - 1)?;
                        blocks.push((block, leaves));
                        blocks.len() - 1
                    }
                };
                subtree_hash(&blocks[at].1, *id, begin, end)
            })
            .collect()
    }
}

fn missing_node(id: NodeId) -> StoreError {
    StoreError::Database(format!(
        "the audit tree lacks its node (level {}, index {}): run `hygie audit verify`",
        id.level, id.index
    ))
}

/// The hash of the perfect subtree `id` over leaves `[begin, end)`, from the leaf hashes
/// of its block (`leaves`, by index).
fn subtree_hash(
    leaves: &[(i64, Hash)],
    id: NodeId,
    begin: u64,
    end: u64,
) -> Result<Hash, StoreError> {
    let mut level: Vec<Hash> = (begin..end)
        .map(|index| {
            leaves
                .iter()
                .find(|(stored, _)| *stored == index as i64)
                .map(|(_, hash)| *hash)
                .ok_or_else(|| missing_node(NodeId::leaf(index)))
        })
        .collect::<Result<_, _>>()?;
    while level.len() > 1 {
        level = level
            .chunks_exact(2)
            .map(|pair| merkle::node_hash(&pair[0], &pair[1]))
            .collect();
    }
    level.pop().ok_or_else(|| missing_node(id))
}

fn merkle_error<E: std::fmt::Display>(error: E) -> StoreError {
    StoreError::Database(format!("audit tree: {error}"))
}

fn fetch_error(error: merkle::FetchError<StoreError>) -> StoreError {
    match error {
        merkle::FetchError::Source(error) => error,
        merkle::FetchError::Merkle(error) => merkle_error(error),
    }
}

/// The integrated tree size, as stored.
pub(crate) fn tree_size(tx: &mut dyn Tx) -> Result<u64, StoreError> {
    match tx.meta_get(TREE_SIZE)? {
        None => Ok(0),
        Some(text) => text
            .parse()
            .map_err(|_| StoreError::Database(format!("stored audit tree size {text:?}"))),
    }
}

/// The log's signing key and origin, made on first use (under the integration lock).
fn log_signer(tx: &mut dyn Tx, wanted_origin: Option<&str>) -> Result<NoteSigner, StoreError> {
    let origin = match tx.meta_get(ORIGIN)? {
        Some(origin) => {
            if let Some(wanted) = wanted_origin
                && wanted != origin
            {
                return Err(StoreError::Config(format!(
                    "audit.origin is {wanted:?} but this log was created as {origin:?}: a log keeps its name (remove the setting, or set it to the log's)"
                )));
            }
            origin
        }
        None => {
            let origin = match wanted_origin {
                Some(wanted) => wanted.to_owned(),
                None => format!(
                    "hygie/audit/{}",
                    &uuid::Uuid::new_v4().simple().to_string()[..12]
                ),
            };
            // Checked as the checkpoint's first line will be.
            Checkpoint::new(&origin, 0, merkle::EMPTY_ROOT)
                .to_body()
                .map_err(|e| StoreError::Config(format!("audit.origin {origin:?}: {e}")))?;
            tx.meta_set(ORIGIN, &origin)?;
            origin
        }
    };
    let pkcs8 = match tx.meta_get(LOG_KEY)? {
        Some(encoded) => STANDARD
            .decode(encoded)
            .map_err(|_| StoreError::Database("the stored audit log key is not base64".into()))?,
        None => {
            let (_, pkcs8) = NoteSigner::generate(&origin).map_err(merkle_error)?;
            tx.meta_set(LOG_KEY, &STANDARD.encode(&pkcs8))?;
            pkcs8
        }
    };
    NoteSigner::from_pkcs8(&origin, &pkcs8).map_err(merkle_error)
}

/// Integrates up to `settings.integrate_batch_leaves` appended leaves, and signs a
/// checkpoint when one is due (or `force_checkpoint` and the tree grew since the last).
fn integrate(
    tx: &mut dyn Tx,
    settings: &AuditLogSettings,
    now_us: i64,
    force_checkpoint: bool,
) -> Result<Integrated, StoreError> {
    tx.lock(INTEGRATION_LOCK)?;
    let size = tree_size(tx)?;
    let leaves = tx.integrate_audit_leaves(size as i64, settings.integrate_batch_leaves)?;
    for (position, (index, _)) in leaves.iter().enumerate() {
        if *index != (size + position as u64) as i64 {
            return Err(StoreError::Database(format!(
                "audit leaf {index} where {} was expected: the audit log has a gap; run `hygie audit verify`",
                size + position as u64
            )));
        }
    }
    // Hashed when appended; hashed here only for a leaf appended without its hash.
    let hashes: Vec<Hash> = leaves
        .iter()
        .map(|(_, leaf)| match leaf {
            LeafToIntegrate::Hashed(hash) => *hash,
            LeafToIntegrate::Body(leaf) => merkle::leaf_hash(leaf),
        })
        .collect();
    let (frontier, nodes) = if hashes.is_empty() {
        (
            merkle::Frontier::load(&mut TxNodes(tx), size).map_err(fetch_error)?,
            Vec::new(),
        )
    } else {
        merkle::append(&mut TxNodes(tx), size, &hashes).map_err(fetch_error)?
    };
    let rows: Vec<(u32, i64, [u8; 32])> = nodes
        .iter()
        .filter(|node| audit_level_is_stored(node.id.level))
        .map(|StoredNode { id, hash }| (id.level, id.index as i64, *hash))
        .collect();
    tx.put_audit_nodes(&rows)?;
    let new_size = frontier.size();
    if new_size != size {
        tx.meta_set(TREE_SIZE, &new_size.to_string())?;
    }
    let last = tx.latest_audit_checkpoint()?;
    let last_size = last.as_ref().map_or(0, |c| c.tree_size as u64);
    let last_us = last.as_ref().map_or(i64::MIN / 2, |c| c.created_us);
    let due = new_size > last_size
        && (force_checkpoint
            || new_size - last_size >= settings.checkpoint_every_leaves
            || now_us - last_us >= settings.checkpoint_every.as_micros() as i64);
    let mut checkpoint = None;
    if due || last.is_none() {
        let signer = log_signer(tx, settings.origin.as_deref())?;
        let root = frontier.root();
        let note = Checkpoint::new(signer.name(), new_size, root)
            .sign(&signer)
            .map_err(merkle_error)?;
        tx.put_audit_checkpoint(&StoredCheckpoint {
            tree_size: new_size as i64,
            root,
            note: note.to_string(),
            created_us: now_us,
        })?;
        checkpoint = Some(new_size);
    }
    Ok(Integrated {
        leaves: hashes.len() as u64,
        tree_size: new_size,
        checkpoint,
    })
}

fn bad_request(why: String) -> HubError {
    HubError::bad_request(why)
}

/// The largest cosigned checkpoint accepted: a checkpoint is a few hundred bytes and each
/// signature line about a hundred; this leaves room for dozens of witnesses.
pub const MAX_COSIGNED_NOTE_BYTES: usize = 16 * 1024;

/// The `hub_meta` key of a witness's latest cosignature line, served with the checkpoint
/// (the `audit_cosignature` table keeps every one, but the store offers no read of it).
fn cosignature_key(witness: &VerifierKey) -> String {
    format!(
        "audit.cosignature.{}+{:08x}",
        witness.name(),
        witness.key_id()
    )
}

/// The stored `"<tree size> <signature line>"` of a witness's latest cosignature.
fn parse_stored_cosignature(value: &str) -> Option<(u64, &str)> {
    let (size, line) = value.split_once(' ')?;
    Some((size.parse().ok()?, line))
}

/// The configured witnesses whose kept cosignature (the latest, the one served) verifies
/// on the stored checkpoint of its size: `(name+keyid, tree size)`. For `hygie audit
/// verify`; a line that does not verify (edited in the database) is simply not counted.
pub(crate) fn verified_cosignatures(
    tx: &mut dyn Tx,
    witnesses: &[VerifierKey],
) -> Result<Vec<(String, u64)>, StoreError> {
    let mut verified = Vec::new();
    for witness in witnesses {
        let Some(value) = tx.meta_get(&cosignature_key(witness))? else {
            continue;
        };
        let Some((size, line)) = parse_stored_cosignature(&value) else {
            continue;
        };
        let Ok(stored_size) = i64::try_from(size) else {
            continue;
        };
        let Some(stored) = tx
            .audit_checkpoints(stored_size, 1)?
            .into_iter()
            .find(|c| c.tree_size == stored_size)
        else {
            continue;
        };
        let cosigned = format!("{}{line}\n", stored.note);
        if Note::parse(cosigned.as_bytes())
            .is_ok_and(|note| note.verify(std::slice::from_ref(witness)).is_ok())
        {
            verified.push((format!("{}+{:08x}", witness.name(), witness.key_id()), size));
        }
    }
    Ok(verified)
}

/// A cosigned checkpoint that was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cosigned {
    pub tree_size: u64,
    /// The witnesses whose cosignature verified, as `name+keyid` (hex).
    pub witnesses: Vec<String>,
}

/// Checks a cosigned note (untrusted bytes) against the configured witnesses: every
/// signature line is the log's (the origin's name) or a configured witness's, and each
/// witness line verifies. Returns the note, its checkpoint and the witnesses that signed.
fn open_cosigned(
    body: &[u8],
    witnesses: &[VerifierKey],
) -> Result<(Note, Checkpoint, Vec<VerifierKey>), HubError> {
    if body.len() > MAX_COSIGNED_NOTE_BYTES {
        return Err(HubError::new(
            413,
            hygie_fhir::IssueType::TooLong,
            format!("a cosigned checkpoint is at most {MAX_COSIGNED_NOTE_BYTES} bytes"),
        ));
    }
    let note = Note::parse(body).map_err(|e| bad_request(format!("not a signed note: {e}")))?;
    let checkpoint = Checkpoint::parse_body(note.text())
        .map_err(|e| bad_request(format!("not a checkpoint: {e}")))?;
    let mut signers: Vec<VerifierKey> = Vec::new();
    for signature in note.signatures() {
        if signature.name == checkpoint.origin {
            continue;
        }
        let Some(key) = witnesses
            .iter()
            .find(|k| k.name() == signature.name && k.key_id() == signature.key_id)
        else {
            return Err(bad_request(format!(
                "unknown witness {}+{:08x}: the hub accepts cosignatures of the keys in audit.witnesses only",
                signature.name, signature.key_id
            )));
        };
        if !signers.contains(key) {
            signers.push(key.clone());
        }
    }
    if signers.is_empty() {
        return Err(bad_request(
            "no witness cosignature: the note carries only the log's signature".to_owned(),
        ));
    }
    note.verify(&signers)
        .map_err(|e| bad_request(format!("a witness cosignature does not verify: {e}")))?;
    Ok((note, checkpoint, signers))
}

impl Hub {
    /// Integrates the leaves appended since the last integration (as many units as it
    /// takes, each of `integrate_batch_leaves` at most), signing checkpoints as due.
    pub async fn integrate_audit(&self, force_checkpoint: bool) -> Result<Integrated, HubError> {
        let mut total = Integrated {
            leaves: 0,
            tree_size: 0,
            checkpoint: None,
        };
        loop {
            let settings = self.inner.config.audit.clone();
            let now = now_us();
            let step = self
                .inner
                .store
                .run(move |tx| integrate(tx, &settings, now, force_checkpoint))
                .await
                .map_err(HubError::from_store)?;
            total.leaves += step.leaves;
            total.tree_size = step.tree_size;
            total.checkpoint = step.checkpoint.or(total.checkpoint);
            if step.leaves < self.inner.config.audit.integrate_batch_leaves as u64 {
                return Ok(total);
            }
        }
    }

    /// Records a sign-in that failed (a bearer token that did not verify, a malformed
    /// `Authorization`): IHE BALP's failed login, with the address and request id.
    pub async fn audit_failed_authentication(
        &self,
        network_address: Option<String>,
        request_id: &str,
        reason: &str,
    ) -> Result<(), HubError> {
        let mut record = hygie_audit::AuditRecord::failed_login(reason, now_us());
        record.network_address = network_address;
        record.request_id = Some(request_id.to_owned());
        self.inner
            .store
            .run(move |tx| crate::audit_trail::append(tx, &record))
            .await
            .map(|_| ())
            .map_err(HubError::from_store)
    }

    /// The latest signed checkpoint (the integrator signs them: a reader never writes),
    /// its note followed by the cosignature lines stored for its size by the witnesses
    /// still configured (C2SP: a cosigned checkpoint is the note with more signature lines).
    pub async fn audit_checkpoint(&self) -> Result<StoredCheckpoint, HubError> {
        let witnesses = self.inner.config.audit.witnesses.clone();
        self.inner
            .store
            .read(move |tx| {
                let Some(mut checkpoint) = tx.latest_audit_checkpoint()? else {
                    return Ok(None);
                };
                for witness in &witnesses {
                    let Some(value) = tx.meta_get(&cosignature_key(witness))? else {
                        continue;
                    };
                    if let Some((size, line)) = parse_stored_cosignature(&value)
                        && size == checkpoint.tree_size as u64
                    {
                        checkpoint.note.push_str(line);
                        checkpoint.note.push('\n');
                    }
                }
                Ok(Some(checkpoint))
            })
            .await
            .map_err(HubError::from_store)?
            .ok_or_else(|| HubError::not_found("the audit log has no checkpoint yet"))
    }

    /// Keeps a witness's cosignature of one of the log's checkpoints (`POST
    /// /audit/cosignatures`): the note's text must be a checkpoint the hub signed, and every
    /// signature line but the log's a verifying cosignature of a configured witness. Sending
    /// it again is harmless: the first one of a witness for a size is kept in the table,
    /// and the latest one is served with the checkpoint.
    pub async fn accept_audit_cosignature(&self, body: &[u8]) -> Result<Cosigned, HubError> {
        let (note, checkpoint, signers) = open_cosigned(body, &self.inner.config.audit.witnesses)?;
        let size = checkpoint.size;
        let text = note.text().to_owned();
        let full = note.to_string();
        let lines: Vec<(String, String)> = note
            .signatures()
            .iter()
            .filter(|s| s.name != checkpoint.origin)
            .map(|s| {
                let key = signers
                    .iter()
                    .find(|k| k.name() == s.name && k.key_id() == s.key_id)
                    .expect("every other line is a signer's");
                (cosignature_key(key), s.to_string())
            })
            .collect();
        let witnesses: Vec<String> = signers
            .iter()
            .map(|k| format!("{}+{:08x}", k.name(), k.key_id()))
            .collect();
        let names = witnesses.clone();
        let now = now_us();
        let stored_size = i64::try_from(size)
            .map_err(|_| bad_request(format!("tree size {size} is out of range")))?;
        let outcome = self
            .inner
            .store
            .run(move |tx| {
                let found = tx.audit_checkpoints(stored_size, 1)?;
                let matches = found.first().is_some_and(|stored| {
                    stored.tree_size == stored_size
                        && Note::parse(stored.note.as_bytes())
                            .is_ok_and(|stored| stored.text() == text)
                });
                if !matches {
                    return Ok(Err(bad_request(format!(
                        "unknown checkpoint: the log signed no checkpoint of size {size} with this root and origin"
                    ))));
                }
                tx.lock("audit.cosignature")?;
                for ((key, line), name) in lines.iter().zip(&names) {
                    tx.put_audit_cosignature(stored_size, name, &full, now)?;
                    let newer = match tx.meta_get(key)? {
                        Some(value) => {
                            parse_stored_cosignature(&value).is_none_or(|(kept, _)| kept <= size)
                        }
                        None => true,
                    };
                    if newer {
                        tx.meta_set(key, &format!("{size} {}", line.trim_end_matches('\n')))?;
                    }
                }
                Ok(Ok(()))
            })
            .await
            .map_err(HubError::from_store)?;
        outcome?;
        tracing::info!(tree_size = size, witnesses = ?witnesses, "witness cosignature stored");
        Ok(Cosigned {
            tree_size: size,
            witnesses,
        })
    }

    /// The log's verifier key line (`origin+keyid+base64`), for witnesses and auditors.
    pub async fn audit_log_key(&self) -> Result<VerifierKey, HubError> {
        let origin = self.inner.config.audit.origin.clone();
        self.inner
            .store
            .run(move |tx| {
                tx.lock(INTEGRATION_LOCK)?;
                Ok(log_signer(tx, origin.as_deref())?.verifier_key())
            })
            .await
            .map_err(HubError::from_store)
    }

    /// The inclusion proof of leaf `index` in the tree of `size` leaves (RFC 9162 §2.1.3).
    pub async fn audit_inclusion_proof(&self, index: u64, size: u64) -> Result<Proof, HubError> {
        let plan = merkle::inclusion_plan(index, size).map_err(|e| bad_request(e.to_string()))?;
        self.proof(plan, size).await
    }

    /// The consistency proof between the trees of `from` and `to` leaves (§2.1.4).
    pub async fn audit_consistency_proof(&self, from: u64, to: u64) -> Result<Proof, HubError> {
        let plan = merkle::consistency_plan(from, to).map_err(|e| bad_request(e.to_string()))?;
        self.proof(plan, to).await
    }

    async fn proof(&self, plan: merkle::ProofPlan, size: u64) -> Result<Proof, HubError> {
        let outcome = self
            .inner
            .store
            .read(move |tx| {
                let stored = tree_size(tx)?;
                if size > stored {
                    return Ok(Err(bad_request(format!(
                        "the audit tree has {stored} leaves: no proof for a tree of {size}"
                    ))));
                }
                let hashes = TxNodes(tx).nodes(plan.nodes())?;
                Ok(Ok(plan.assemble(&hashes).map_err(merkle_error)?))
            })
            .await
            .map_err(HubError::from_store)?;
        Ok(Proof { hashes: outcome? })
    }
}
