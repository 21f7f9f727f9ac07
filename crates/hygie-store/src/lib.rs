//! Storage for Hygie: resource versions (opaque bodies), a search index kept beside them,
//! and the audit log, always written in ONE transaction (DESIGN.md invariants 3 and 5).
//!
//! The hub hands the store a *unit of work*, a closure over a [`Tx`]; the store runs it
//! atomically and says when it is durable. Units are plain synchronous code, so one hub
//! implementation serves both backends:
//!
//! - [`SqliteStore`]: embedded, WAL, `synchronous=FULL`. One writer thread takes every queued
//!   unit, runs each in its own savepoint inside one transaction and commits them together:
//!   group commit, one fsync for many requests.
//! - [`PostgresStore`]: a connection pool; each unit is a transaction. Concurrent commits
//!   share WAL flushes inside PostgreSQL itself, and several hub processes can share one
//!   database.
//!
//! The store never interprets bodies: the hub decides what they are (JSON today, ciphertext
//! once the vault lands) and what goes into the index.
//!
//! ```no_run
//! # async fn example() -> Result<(), hygie_store::StoreError> {
//! use hygie_store::{open_sqlite, SqliteOptions, StoreExt};
//! let store = open_sqlite(std::path::Path::new("./hygie-data"), &SqliteOptions::default())?;
//! let leaf_index = store.run(|tx| tx.append_audit(0, b"{\"resourceType\":\"AuditEvent\"}")).await?;
//! # let _ = leaf_index; Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod audit_index;
pub mod backup;
mod migrations;
mod patient_refs;
mod postgres_store;
pub mod search;
mod sqlite_store;

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use audit_index::{AuditFacets, AuditHit, AuditQuery};
pub use postgres_store::{PostgresOptions, PostgresStore, open_postgres};
pub use search::{
    BlindTerm, Filter, INDEX_VERSION_KEY, IndexCell, IndexRow, IndexTable, LONE_TOKEN_ROWS,
    MAX_INDEXED_STRING, PagePosition, RangeOp, SearchHit, SearchSpec, SortBy, SortValue, Test,
    full_sort, term_text, truncate,
};
pub use sqlite_store::{SqliteOptions, SqliteStore, open_sqlite};

/// Errors of the storage layer. Business rules (versions, conditions) are the hub's.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Two writers raced on the same resource version (another hub process, most likely).
    #[error("conflicting write on {resource_type}/{id}: {detail}")]
    Conflict {
        resource_type: String,
        id: String,
        detail: String,
    },
    #[error("the store is closed")]
    Closed,
    #[error("the store's work queue is full ({capacity} units waiting)")]
    Busy { capacity: usize },
    #[error("database error: {0}")]
    Database(String),
    #[error(
        "the database schema is at version {found}, newer than this binary knows ({known}); upgrade hygie"
    )]
    SchemaTooNew { found: i64, known: i64 },
    /// A search ran past the store's query time limit and was interrupted.
    #[error("the query ran past its time limit ({limit_ms} ms)")]
    TooCostly { limit_ms: u64 },
    #[error("a unit of work panicked: {0}")]
    Panicked(String),
    #[error("{0}")]
    Config(String),
    /// The data key that sealed it was destroyed (crypto-shredding, GDPR Art. 17).
    #[error("{0} was erased: its data key was destroyed")]
    Erased(String),
    /// Stored data could not be opened or sealed: a corrupted ciphertext, a key missing
    /// from the key file, a key file that does not belong to this database.
    #[error("encryption at rest: {0}")]
    Vault(String),
    /// A search the store cannot run as asked (on encrypted elements): the caller's to fix.
    #[error("{0}")]
    Unsupported(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> StoreError {
        StoreError::Database(error.to_string())
    }
}

impl From<postgres::Error> for StoreError {
    fn from(error: postgres::Error) -> StoreError {
        // `Display` says only "db error"; the server's message is what an operator needs.
        match error.as_db_error() {
            Some(db) => {
                StoreError::Database(format!("PostgreSQL {}: {}", db.code().code(), db.message()))
            }
            None => StoreError::Database(error.to_string()),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The head of a resource: its current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub version: i64,
    pub deleted: bool,
    pub last_updated_us: i64,
}

/// One stored version of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRecord {
    /// Global, increasing write order: the cursor of history paging.
    pub seq: i64,
    pub resource_type: String,
    pub id: String,
    pub version: i64,
    /// Microseconds since the Unix epoch.
    pub last_updated_us: i64,
    /// A deletion tombstone (empty body).
    pub deleted: bool,
    /// Opaque to the store.
    pub body: Vec<u8>,
}

/// A version to write. The hub has already checked that `version` follows the head.
#[derive(Debug, Clone)]
pub struct NewVersion<'a> {
    pub resource_type: &'a str,
    pub id: &'a str,
    pub version: i64,
    pub last_updated_us: i64,
    pub deleted: bool,
    pub body: &'a [u8],
    /// Replaces the resource's index rows (ignored for deletions, which clear them).
    pub index: &'a [IndexRow],
    /// The data key `body` is sealed with (`None`: not sealed, or a tombstone).
    pub key_id: Option<i64>,
}

/// A data key as stored: wrapped under the key file's slot key `key_id` of `generation`
/// (see `hygie-vault`). The store never sees a key in clear.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDataKey {
    /// Also the key's slot in the key file's puncturable tree.
    pub key_id: i64,
    /// `patient/<id>` or `type/<Type>`.
    pub scope: String,
    pub generation: i64,
    /// `None` once erased (crypto-shredding).
    pub wrapped: Option<Vec<u8>>,
    /// The one a scope's new versions are sealed with.
    pub is_current: bool,
    pub created_us: i64,
    pub erased_us: Option<i64>,
}

/// Which history to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryScope {
    System,
    Type(String),
    Instance { resource_type: String, id: String },
}

/// A page of history, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    pub scope: HistoryScope,
    /// Only versions written at or after this instant (`_since`).
    pub since_us: Option<i64>,
    /// Only versions older than this sequence number: the paging cursor.
    pub before_seq: Option<i64>,
    /// The newest version to show: fixed by the first page so later pages don't shift.
    pub max_seq: Option<i64>,
    pub limit: usize,
}

/// A break-the-glass grant to record.
#[derive(Debug, Clone)]
pub struct NewBreakGlass<'a> {
    pub subject: &'a str,
    /// The patient's id (`Patient/{id}`).
    pub patient: &'a str,
    pub reason: &'a str,
    pub opened_us: i64,
    pub until_us: i64,
    pub request_id: &'a str,
}

/// A signed checkpoint of the audit tree, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    pub tree_size: i64,
    pub root: [u8; 32],
    /// The C2SP signed note.
    pub note: String,
    pub created_us: i64,
}

/// A recorded break-the-glass grant and the state of its review.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BreakGlassGrant {
    pub grant_id: i64,
    pub subject: String,
    pub patient: String,
    pub reason: String,
    pub opened_us: i64,
    pub until_us: i64,
    pub request_id: String,
    pub closed_us: Option<i64>,
    pub closed_by: Option<String>,
    pub review: Option<String>,
}

/// What a unit of work can do inside its transaction.
///
/// Every method runs inside the unit's transaction; nothing is visible to others, nor
/// durable, until the store commits the unit.
pub trait Tx {
    /// The current head of a resource, locked against concurrent writers until commit.
    fn head(&mut self, resource_type: &str, id: &str) -> StoreResult<Option<Head>>;
    /// The current version (possibly a deletion tombstone).
    fn current(&mut self, resource_type: &str, id: &str) -> StoreResult<Option<VersionRecord>>;
    fn version(
        &mut self,
        resource_type: &str,
        id: &str,
        version: i64,
    ) -> StoreResult<Option<VersionRecord>>;
    /// Writes a new version, moves the head and replaces the index entries.
    fn put_version(&mut self, version: &NewVersion<'_>) -> StoreResult<()>;
    fn history(&mut self, query: &HistoryQuery) -> StoreResult<Vec<VersionRecord>>;
    /// The highest sequence number written so far (0 when empty).
    fn max_seq(&mut self) -> StoreResult<i64>;
    /// A page of current, non-deleted resources that pass every filter, in sort order.
    fn search(&mut self, spec: &SearchSpec) -> StoreResult<Vec<SearchHit>>;
    /// How many current, non-deleted resources pass every filter.
    fn count(&mut self, resource_type: &str, filters: &[Filter]) -> StoreResult<u64>;
    /// The local targets `(type, id)` that `resource_type` resources `ids` reference through
    /// `param` (any parameter when `None`), deduplicated, at most `limit`.
    fn references_from(
        &mut self,
        resource_type: &str,
        ids: &[String],
        param: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<(String, String)>>;
    /// Ids of the `target_type` resources that `resource_type/id` references through any of
    /// `params`, deduplicated: whose compartment a resource belongs to, in one query.
    fn referenced_through(
        &mut self,
        resource_type: &str,
        id: &str,
        params: &[String],
        target_type: &str,
    ) -> StoreResult<Vec<String>>;
    /// Ids of current `source_type` resources that reference one of `targets` (all of
    /// `target_type`) through `param` (any when `None`), sorted, at most `limit`.
    fn references_to(
        &mut self,
        source_type: &str,
        param: Option<&str>,
        target_type: &str,
        targets: &[String],
        limit: usize,
    ) -> StoreResult<Vec<String>>;
    /// The current, non-deleted versions of `ids`, in no particular order.
    fn current_many(
        &mut self,
        resource_type: &str,
        ids: &[String],
    ) -> StoreResult<Vec<VersionRecord>>;
    /// Members `(type, id)` of the compartment of `target_type/target_id`: current resources
    /// of a type in `members` that reference it through one of that type's parameters;
    /// sorted by type then id, after `after`, at most `limit`.
    fn compartment(
        &mut self,
        target_type: &str,
        target_id: &str,
        members: &[(String, Vec<String>)],
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> StoreResult<Vec<(String, String)>>;
    /// Current, non-deleted versions of every type, ordered by (type, id), after `after`:
    /// what a re-index walks through.
    fn scan_current(
        &mut self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> StoreResult<Vec<VersionRecord>>;
    /// Replaces a resource's index rows (a re-index).
    fn replace_index(
        &mut self,
        resource_type: &str,
        id: &str,
        rows: &[IndexRow],
    ) -> StoreResult<()>;
    /// Refreshes the planner's statistics after a bulk load. PostgreSQL plans from them
    /// (stale ones after an import made a 2 ms search take 6 s, measured); SQLite's plans
    /// are pinned by the SQL the store writes, so this is a no-op there.
    fn refresh_statistics(&mut self) -> StoreResult<()>;
    /// The data key `key_id`, erased or not.
    fn data_key(&mut self, key_id: i64) -> StoreResult<Option<StoredDataKey>>;
    /// The current data key of `scope`.
    fn current_data_key(&mut self, scope: &str) -> StoreResult<Option<StoredDataKey>>;
    /// A number for a new data key (its slot), above every stored key's. A number whose
    /// key was not stored may be handed out again (SQLite), or not (PostgreSQL's sequence);
    /// after a restore, numbers of keys made after the backup come again: the vault skips
    /// the slots its key file has erased.
    fn next_data_key_id(&mut self) -> StoreResult<i64>;
    /// Stores a new data key, current for its scope. When the scope has a current key
    /// already: with `replace_current` that one stops being current (it still opens what
    /// it sealed); without, nothing is stored and false is returned (another unit made
    /// the scope's key first).
    fn put_data_key(&mut self, key: &StoredDataKey, replace_current: bool) -> StoreResult<bool>;
    /// Replaces a key's wrapped form (a rotation of the key file's generation).
    fn rewrap_data_key(&mut self, key_id: i64, generation: i64, wrapped: &[u8]) -> StoreResult<()>;
    /// Erases every key of `scope` (their wrapped forms are deleted, the rows stay);
    /// returns their ids.
    fn erase_data_keys(&mut self, scope: &str, erased_us: i64) -> StoreResult<Vec<i64>>;
    /// Data keys in `key_id` order after `after`, at most `limit`.
    fn data_keys(&mut self, after: i64, limit: usize) -> StoreResult<Vec<StoredDataKey>>;
    /// Versions (tombstones excluded) sealed with one of `key_ids`, in `seq` order after
    /// `after_seq`, at most `limit`.
    fn versions_sealed_with(
        &mut self,
        key_ids: &[i64],
        after_seq: i64,
        limit: usize,
    ) -> StoreResult<Vec<VersionRecord>>;
    /// Versions (tombstones excluded) stored without a data key, in `seq` order after
    /// `after_seq`: those written before encryption at rest, to seal.
    fn unsealed_versions(
        &mut self,
        after_seq: i64,
        limit: usize,
    ) -> StoreResult<Vec<VersionRecord>>;
    /// Replaces a stored version's body and key (re-encryption; the version is unchanged).
    fn reseal_version(&mut self, seq: i64, key_id: i64, body: &[u8]) -> StoreResult<()>;
    /// The hub's own settings (index version, paging key), kept with its data.
    /// A remembered inbound message: its fingerprint and the acknowledgement answered.
    fn inbound_message(&mut self, key: &str) -> StoreResult<Option<(String, String)>>;
    /// Remembers an inbound message (the key is new: the caller looked first, in the unit).
    fn put_inbound_message(
        &mut self,
        key: &str,
        fingerprint: &str,
        received_us: i64,
        acknowledgement: &str,
    ) -> StoreResult<()>;
    /// Forgets at most `limit` inbound messages received before `before_us`; returns how
    /// many.
    fn prune_inbound_messages(&mut self, before_us: i64, limit: usize) -> StoreResult<usize>;
    fn meta_get(&mut self, key: &str) -> StoreResult<Option<String>>;
    fn meta_set(&mut self, key: &str, value: &str) -> StoreResult<()>;
    /// Records a revocation: `kind` is `jti` (one token) or `subject` (every token of a
    /// principal, a kill switch). Revoking again keeps the first record.
    fn revoke(&mut self, kind: &str, value: &str, revoked_us: i64, reason: &str)
    -> StoreResult<()>;
    /// Lifts a revocation; false when there was none.
    fn lift_revocation(&mut self, kind: &str, value: &str) -> StoreResult<bool>;
    /// The reason a token (its `jti`) or its subject is revoked, if either is.
    fn revocation(&mut self, token_id: Option<&str>, subject: &str) -> StoreResult<Option<String>>;
    /// Opens a break-the-glass grant: `subject` may see `patient`'s data until `until_us`.
    /// Returns the grant's number, for its review.
    fn open_break_glass(&mut self, grant: &NewBreakGlass<'_>) -> StoreResult<i64>;
    /// Patients `subject` holds an unexpired grant for at `now_us`.
    fn break_glass_patients(&mut self, subject: &str, now_us: i64) -> StoreResult<Vec<String>>;
    /// Grants, newest first: only those still awaiting review unless `all`.
    fn break_glass_grants(&mut self, all: bool, limit: usize) -> StoreResult<Vec<BreakGlassGrant>>;
    /// Closes a grant's review. The grant still runs its window: a review does not cut an
    /// emergency short (revoking the subject does). False when there is no such grant or
    /// its review is already closed.
    fn close_break_glass(
        &mut self,
        grant_id: i64,
        closed_by: &str,
        review: &str,
        closed_us: i64,
    ) -> StoreResult<bool>;
    /// Appends one leaf to the audit log; returns its sequence number, increasing in commit
    /// order on SQLite. On PostgreSQL several processes append concurrently, so numbers
    /// may have gaps (rolled-back units) and are dense only once the audit integrator
    /// orders them. Both backends queue a unit's leaves and write them just before its
    /// commit: audit reads (`audit_leaves`, `search_audit`, …) see them once it has
    /// committed, not within the unit that appended them.
    fn append_audit(&mut self, recorded_us: i64, leaf: &[u8]) -> StoreResult<i64>;
    /// Appends one leaf like [`Tx::append_audit`], with its RFC 9162 leaf hash (kept for
    /// the integrator, which then need not read the leaf back; `verify` never trusts it)
    /// and its search index ([`audit_index`]), in the same transaction.
    fn append_audit_indexed(
        &mut self,
        recorded_us: i64,
        leaf: &[u8],
        leaf_hash: &[u8; 32],
        facets: &AuditFacets,
    ) -> StoreResult<i64>;
    /// Retention: forgets the bodies of integrated audit leaves (by tree index) and their
    /// search facets; their hashes stay in the tree, so the log remains verifiable.
    /// `facets` are each leaf's, as it was indexed (the hub reads them from the leaf).
    fn prune_audit_leaves(&mut self, leaves: &[(i64, AuditFacets)]) -> StoreResult<()>;
    /// Audit events matching `query`, newest first (leaves pruned by retention excepted).
    fn search_audit(&mut self, query: &AuditQuery) -> StoreResult<Vec<AuditHit>>;
    /// The audit event numbered `number` (as `append_audit` answered), if it is stored and
    /// not pruned.
    fn audit_event(&mut self, number: i64) -> StoreResult<Option<AuditHit>>;
    /// Audit leaves with a sequence number of at least `from`, in order, at most `limit`.
    fn audit_leaves(&mut self, from: i64, limit: usize) -> StoreResult<Vec<(i64, Vec<u8>)>>;
    /// Gives tree indices to leaves appended and committed but not yet in the audit tree:
    /// up to `limit` of them, numbered from `next_index` in the order they were appended.
    /// Returns `(tree index, hash or leaf)`, in index order. The caller holds the integration lock
    /// and knows the tree's size (`next_index`). On SQLite leaves get their index when
    /// appended, and this returns those from `next_index` on.
    fn integrate_audit_leaves(
        &mut self,
        next_index: i64,
        limit: usize,
    ) -> StoreResult<Vec<(i64, LeafToIntegrate)>>;
    /// Leaves of the audit tree (integrated) by tree index from `from`, in order, at most
    /// `limit`: `(index, leaf)`; a pruned leaf's body is `None`.
    fn audit_tree_leaves(
        &mut self,
        from: i64,
        limit: usize,
    ) -> StoreResult<Vec<(i64, Option<Vec<u8>>)>>;
    /// Stored hashes of the audit tree's perfect subtrees `(level, index)`, in the order
    /// asked; `None` for one not stored.
    fn audit_nodes(&mut self, ids: &[(u32, i64)]) -> StoreResult<Vec<Option<[u8; 32]>>>;
    /// Stored hashes of one level from index `from` to `to` inclusive: `(index, hash)`.
    fn audit_node_range(
        &mut self,
        level: u32,
        from: i64,
        to: i64,
    ) -> StoreResult<Vec<(i64, [u8; 32])>>;
    /// Stores hashes of perfect subtrees (new ones: a stored node never changes).
    fn put_audit_nodes(&mut self, nodes: &[(u32, i64, [u8; 32])]) -> StoreResult<()>;
    /// Stores a signed checkpoint of the audit tree at `tree_size`.
    fn put_audit_checkpoint(&mut self, checkpoint: &StoredCheckpoint) -> StoreResult<()>;
    /// Checkpoints of at least `from_size`, by size, at most `limit`.
    fn audit_checkpoints(
        &mut self,
        from_size: i64,
        limit: usize,
    ) -> StoreResult<Vec<StoredCheckpoint>>;
    /// The checkpoint of the largest tree size.
    fn latest_audit_checkpoint(&mut self) -> StoreResult<Option<StoredCheckpoint>>;
    /// Keeps a witness's cosigned checkpoint (one per witness and size).
    fn put_audit_cosignature(
        &mut self,
        tree_size: i64,
        witness: &str,
        note: &str,
        received_us: i64,
    ) -> StoreResult<()>;
    /// Leaves appended but not yet in the tree (0 on SQLite once integrated).
    fn pending_audit_leaves(&mut self, tree_size: i64) -> StoreResult<i64>;
    /// Holds an exclusive lock named `key` until the unit ends. Conditional writes take one
    /// so that two of them cannot both find "no match" and both create (on PostgreSQL,
    /// across every hub process). A no-op on SQLite, whose writes are already serialized.
    fn lock(&mut self, key: &str) -> StoreResult<()>;
    /// Starts a nested savepoint: lets a unit undo part of its work (a failed transaction
    /// Bundle) and still commit its audit leaf.
    fn savepoint(&mut self) -> StoreResult<()>;
    fn rollback_to_savepoint(&mut self) -> StoreResult<()>;
    fn release_savepoint(&mut self) -> StoreResult<()>;
}

/// Whether the audit tree keeps the nodes of `level` in `audit_node`: level 0 (the leaf
/// hashes, each bound to its tree index, so that `verify` names a leaf moved or replaced)
/// and the subtrees of 16 leaves and more. Levels 1 to 3 are recomputed from at most 16
/// leaf hashes when a proof needs them. Storing every level cost two rows per leaf (13,800
/// of the writer's instructions per audited read, bench/audit §9); this stores 1.125 and
/// saves about 6,500 of them (§10). Migration 13 removed the levels 1 to 3 stored before.
pub const fn audit_level_is_stored(level: u32) -> bool {
    level == 0 || level >= AUDIT_FULLY_STORED_FROM
}

/// `true` only in a binary built with the `bench-audit-floor` feature, for benchmarks: the
/// SQLite store then keeps each group commit's audit leaves as one row and nothing else,
/// no search index and no tree (bench/audit/floor). A front door built with it must say
/// so loudly and serve on a loopback address only.
pub const AUDIT_FLOOR_BENCH_BUILD: bool = cfg!(feature = "bench-audit-floor");

/// The lowest audit tree level above 0 that is stored (see [`audit_level_is_stored`]).
pub const AUDIT_FULLY_STORED_FROM: u32 = 4;

/// A leaf about to enter the audit tree: the hash computed when it was appended, or, for a
/// leaf appended without one (before schema version 7, or by [`Tx::append_audit`]), the
/// leaf itself, to hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeafToIntegrate {
    Hashed([u8; 32]),
    Body(Vec<u8>),
}

/// A stored leaf hash that is not 32 bytes is a damaged row: the integration stops on it
/// (`verify` names it) rather than hashing something else into the tree.
pub(crate) fn leaf_to_integrate(
    index: i64,
    hash: Option<Vec<u8>>,
    body: Option<Vec<u8>>,
) -> StoreResult<LeafToIntegrate> {
    match hash {
        Some(hash) => <[u8; 32]>::try_from(hash.as_slice())
            .map(LeafToIntegrate::Hashed)
            .map_err(|_| {
                StoreError::Database(format!(
                    "audit leaf {index}: its stored hash is {} bytes, not 32; run `hygie audit verify`",
                    hash.len()
                ))
            }),
        None => Ok(LeafToIntegrate::Body(body.unwrap_or_default())),
    }
}

/// A type-erased unit of work.
pub type BoxedUnit = Box<dyn FnOnce(&mut dyn Tx) -> StoreResult<Box<dyn Any + Send>> + Send>;
/// A boxed future, as trait objects need.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A store: runs units of work atomically and durably.
pub trait Store: Send + Sync + 'static {
    /// Runs `unit` in a transaction. When the future resolves `Ok`, the unit's writes are
    /// durable. When the unit returns `Err`, none of its writes remain.
    fn run_boxed(&self, unit: BoxedUnit) -> BoxFuture<StoreResult<Box<dyn Any + Send>>>;
    /// Runs `unit` in a read-only transaction that sees one committed snapshot, beside the
    /// writes: on SQLite on a reader thread, not the one writer. Any write in it fails
    /// (and `head`, which locks for a write, on PostgreSQL: read with `current`).
    /// What it read may be committed but not yet durable: a caller that must not answer
    /// before that (the hub, whose answers wait for their audit leaf) writes afterwards
    /// with `run`, which is durable only once everything committed before it is.
    fn read_boxed(&self, unit: BoxedUnit) -> BoxFuture<StoreResult<Box<dyn Any + Send>>>;
    /// `"sqlite"` or `"postgres"`.
    fn backend(&self) -> &'static str;
    /// Stops taking work, finishes what is queued, and closes. Idempotent.
    fn close(&self) -> BoxFuture<()>;
}

/// The typed face of [`Store::run_boxed`].
pub trait StoreExt {
    fn run<R, F>(&self, unit: F) -> impl Future<Output = StoreResult<R>> + Send
    where
        R: Send + 'static,
        F: FnOnce(&mut dyn Tx) -> StoreResult<R> + Send + 'static;
    /// The typed face of [`Store::read_boxed`].
    fn read<R, F>(&self, unit: F) -> impl Future<Output = StoreResult<R>> + Send
    where
        R: Send + 'static,
        F: FnOnce(&mut dyn Tx) -> StoreResult<R> + Send + 'static;
}

impl<S: Store + ?Sized> StoreExt for S {
    fn run<R, F>(&self, unit: F) -> impl Future<Output = StoreResult<R>> + Send
    where
        R: Send + 'static,
        F: FnOnce(&mut dyn Tx) -> StoreResult<R> + Send + 'static,
    {
        let boxed: BoxedUnit =
            Box::new(move |tx| unit(tx).map(|value| Box::new(value) as Box<dyn Any + Send>));
        let future = self.run_boxed(boxed);
        async move {
            let any = future.await?;
            Ok(*any
                .downcast::<R>()
                .expect("run_boxed returns what its unit returned"))
        }
    }

    fn read<R, F>(&self, unit: F) -> impl Future<Output = StoreResult<R>> + Send
    where
        R: Send + 'static,
        F: FnOnce(&mut dyn Tx) -> StoreResult<R> + Send + 'static,
    {
        let boxed: BoxedUnit =
            Box::new(move |tx| unit(tx).map(|value| Box::new(value) as Box<dyn Any + Send>));
        let future = self.read_boxed(boxed);
        async move {
            let any = future.await?;
            Ok(*any
                .downcast::<R>()
                .expect("read_boxed returns what its unit returned"))
        }
    }
}

/// A shared store of either backend.
pub type SharedStore = Arc<dyn Store>;

/// Opens the store a URL names: `postgres://…` or `postgresql://…` for PostgreSQL;
/// otherwise SQLite in `data_dir`.
pub fn open(
    database_url: Option<&str>,
    data_dir: &std::path::Path,
    sqlite: &SqliteOptions,
    postgres: &PostgresOptions,
) -> StoreResult<SharedStore> {
    match database_url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(Arc::new(open_postgres(url, postgres)?))
        }
        Some(url) if url.starts_with("sqlite:") => {
            let path = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:");
            Ok(Arc::new(open_sqlite(std::path::Path::new(path), sqlite)?))
        }
        Some(other) => Err(StoreError::Config(format!(
            "unsupported database URL {other:?}: use postgres://… (or omit --database for embedded SQLite)"
        ))),
        None => Ok(Arc::new(open_sqlite(data_dir, sqlite)?)),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "unknown panic".to_owned()
    }
}

pub mod testing;
