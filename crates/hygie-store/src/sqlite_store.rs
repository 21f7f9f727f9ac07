//! Embedded SQLite: WAL, one writer thread with group commit, and pipelined fsync.
//!
//! Cost sketch: every request (reads included, since each writes an audit leaf) is a write.
//! One fsync costs ~0.2–0.5 ms here; a commit per request would cap the hub at a few
//! thousand requests/s. The writer thread instead drains whatever units are queued (up to
//! `max_batch`), runs each in its own savepoint inside ONE transaction and commits once.
//!
//! Durability is then made by a second thread, so that the writer never waits on the disk:
//! the connection runs with `synchronous=NORMAL` (a commit appends its frames to the WAL
//! without fsync) and the *syncer* thread fsyncs the WAL file once for every batch that
//! committed meanwhile, and only then answers their units. A unit is acknowledged only
//! when its frames are on stable storage, as with `synchronous=FULL`, but the next batch
//! executes while the previous one is being flushed. Units of a later batch may see a
//! commit before it is durable; they are answered after it, so no answer depends on data
//! that a power loss could take back. A failed fsync poisons the store: nothing more is
//! acknowledged (the state of the file is unknown after it).
//!
//! Checkpoints (copying WAL frames into the database file, then fsyncing it) would stall
//! the writer for milliseconds; a third thread runs them instead (see `checkpointer_loop`).
//! Moving them off the writer took creates from ~2.8k/s to ~4.5k/s on a 2-core machine.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use crate::audit_index::{self, AuditFacets, AuditHit, AuditQuery};
use crate::migrations::{self, CREATE_MIGRATIONS_TABLE, now_us};
use crate::patient_refs;
use crate::search::{self, Dialect, IndexTable, SqlBuilder, SqlParam};
use crate::{
    BoxFuture, BoxedUnit, BreakGlassGrant, Filter, Head, HistoryQuery, HistoryScope, IndexCell,
    IndexRow, LeafToIntegrate, NewBreakGlass, NewVersion, SearchHit, SearchSpec, SortValue, Store,
    StoreError, StoreResult, StoredCheckpoint, StoredDataKey, Tx, VersionRecord, panic_message,
};

/// Settings of the embedded store.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Units waiting for the writer before new ones are refused (back-pressure).
    pub queue_capacity: usize,
    /// Units committed together at most.
    pub max_batch: usize,
    /// `true` (default): a unit is acknowledged once its WAL frames are fsynced, so every
    /// acknowledged unit survives power loss. `false`: acknowledged at commit, which
    /// survives a crash of the process but not of the machine.
    pub synchronous_full: bool,
    /// Page cache per connection, KiB.
    pub cache_size_kib: i64,
    /// How often the checkpointer folds committed WAL frames back into the database file.
    pub checkpoint_interval: std::time::Duration,
    /// A search or count running longer is interrupted: one runaway query must not hold
    /// a reader (or the writer) for long.
    pub query_time_limit: std::time::Duration,
    /// Threads, each with its own read-only connection, that run read units (searches)
    /// beside the writer: a search that takes seconds must not hold up every write. Two
    /// measured best on two cores (four: more context switches, no more throughput).
    pub readers: usize,
    /// WAL size beyond which the writer pauses to fold the WAL in and restart it: a
    /// never-idle writer otherwise grows the WAL forever (it restarts only when a write
    /// begins after every frame was checkpointed).
    pub wal_limit_bytes: u64,
}

impl Default for SqliteOptions {
    fn default() -> SqliteOptions {
        SqliteOptions {
            queue_capacity: 16_384,
            max_batch: 512,
            synchronous_full: true,
            cache_size_kib: 256 * 1024,
            checkpoint_interval: std::time::Duration::from_millis(100),
            wal_limit_bytes: 64 * 1024 * 1024,
            query_time_limit: std::time::Duration::from_secs(5),
            readers: 2,
        }
    }
}

type Job = (
    BoxedUnit,
    oneshot::Sender<StoreResult<Box<dyn std::any::Any + Send>>>,
);

/// The embedded store. Cheap to share behind an `Arc`.
pub struct SqliteStore {
    sender: Mutex<Option<mpsc::Sender<Job>>>,
    /// Read units for the reader threads; they end when it is dropped.
    read_sender: Mutex<Option<std::sync::mpsc::SyncSender<Job>>>,
    readers: Mutex<Vec<JoinHandle<()>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    syncer: Mutex<Option<JoinHandle<()>>>,
    queue_capacity: usize,
    path: PathBuf,
}

const DATABASE_FILE: &str = "hygie.db";

/// Opens (creating if needed) the store in `data_dir`, migrating the schema.
pub fn open_sqlite(data_dir: &Path, options: &SqliteOptions) -> StoreResult<SqliteStore> {
    std::fs::create_dir_all(data_dir).map_err(|e| {
        StoreError::Config(format!(
            "cannot create the data directory {}: {e}",
            data_dir.display()
        ))
    })?;
    restrict_permissions(data_dir);
    let path = data_dir.join(DATABASE_FILE);
    let mut connection = Connection::open(&path)?;
    configure(&connection, options)?;
    // After `configure`: setting `wal_autocheckpoint` replaces the connection's WAL hook.
    connection.wal_hook(Some(record_wal_frames));
    migrate(&mut connection)?;
    #[cfg(feature = "bench-audit-floor")]
    audit_floor::create_table(&connection)?;
    let (sender, receiver) = mpsc::channel::<Job>(options.queue_capacity);
    let poisoned = Arc::new(AtomicBool::new(false));
    let (durability, syncer) = if options.synchronous_full {
        let wal = open_wal(&connection, &path)?;
        let (to_syncer, from_writer) = std::sync::mpsc::channel::<Answered>();
        let poisoned = poisoned.clone();
        let syncer = std::thread::Builder::new()
            .name("hygie-sqlite-syncer".to_owned())
            .spawn(move || syncer_loop(wal, from_writer, poisoned))
            .map_err(|e| StoreError::Config(format!("cannot start the syncer thread: {e}")))?;
        (Some(to_syncer), Some(syncer))
    } else {
        (None, None)
    };
    let checkpointer = spawn_checkpointer(&path, options)?;
    let writer_options = options.clone();
    let (read_sender, readers) = spawn_readers(&path, options)?;
    let writer = std::thread::Builder::new()
        .name("hygie-sqlite-writer".to_owned())
        .spawn(move || {
            writer_loop(
                connection,
                receiver,
                durability,
                poisoned,
                checkpointer,
                &writer_options,
            )
        })
        .map_err(|e| StoreError::Config(format!("cannot start the writer thread: {e}")))?;
    Ok(SqliteStore {
        sender: Mutex::new(Some(sender)),
        read_sender: Mutex::new(Some(read_sender)),
        readers: Mutex::new(readers),
        writer: Mutex::new(Some(writer)),
        syncer: Mutex::new(syncer),
        queue_capacity: options.queue_capacity,
        path,
    })
}

#[cfg(unix)]
fn restrict_permissions(data_dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    // Patient data: owner only. Best effort: a directory we don't own keeps its mode.
    let _ = std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700));
}

#[cfg(not(unix))]
fn restrict_permissions(_data_dir: &Path) {}

/// Prepared statements kept per connection. rusqlite's default (16) is fewer than the
/// distinct statements of one unit (versions, heads, each index table, data keys, audit
/// leaves and facets, meta rows, conditional searches): past it, every unit prepared its
/// statements again, measured as 6 to 10% of the writer's time under an HL7 feed.
pub const STATEMENT_CACHE_CAPACITY: usize = 512;

fn configure(connection: &Connection, options: &SqliteOptions) -> StoreResult<()> {
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    plans_independent_of_bindings(connection)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL: commits append to the WAL without fsync; the syncer thread makes them
    // durable before they are acknowledged (see the module documentation).
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    // What is deleted or overwritten is zeroed in the file, not left in free space: an
    // audit leaf pruned by retention, an erased patient's wrapped key, a body sealed in
    // place of its clear text, index rows replaced.
    connection.pragma_update(None, "secure_delete", "ON")?;
    connection.pragma_update(None, "cache_size", -options.cache_size_kib)?;
    // Each unit runs in a savepoint: SQLite keeps the original of every page the unit
    // changes in a statement journal, by default a temporary file once past 64 KiB. In
    // memory instead (a unit's journal is at most the pages it touched, and units are
    // bounded by the body and Bundle limits): the file's writes were about 40% of the system
    // time of an import.
    connection.pragma_update(None, "temp_store", "MEMORY")?;
    // Checkpoints run on their own thread (see `checkpointer_loop`), never on the writer's:
    // a checkpoint copies megabytes and fsyncs the database file.
    connection.pragma_update(None, "wal_autocheckpoint", 0)?;
    // Another process (a CLI import beside a running server) may hold the write lock.
    connection.busy_timeout(std::time::Duration::from_secs(30))?;
    Ok(())
}

/// Turns on SQLite's query planner stability guarantee: a cached statement keeps its plan
/// whatever values are bound. Without it, a statement whose plan looked at a bound value
/// (every search ends in `LIMIT ?`, which the planner inspects) is marked expired by each
/// new binding and compiled again at its next run: 7% of the writer's time during HL7
/// ingestion went to recompiling the conditional searches. Our queries bind no pattern
/// (`LIKE`) and the store keeps no `sqlite_stat4` samples, so no plan is lost.
fn plans_independent_of_bindings(connection: &Connection) -> StoreResult<()> {
    connection.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

fn migrate(connection: &mut Connection) -> StoreResult<()> {
    let tx = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute(CREATE_MIGRATIONS_TABLE, [])?;
    let current: i64 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |row| row.get(0),
    )?;
    let known = migrations::SQLITE.len() as i64;
    if current > known {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known,
        });
    }
    for (index, sql) in migrations::SQLITE.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at_us) VALUES (?1, ?2)",
            params![index as i64 + 1, now_us()],
        )?;
        tracing::info!(version = index + 1, "applied SQLite schema migration");
    }
    tx.commit()?;
    Ok(())
}

/// Page cache of each reader connection, KiB.
const READER_CACHE_KIB: i64 = 16 * 1024;

/// Starts the reader threads. They share one queue; each owns a connection that can only
/// read (`query_only`), so a read unit that tries to write fails instead of writing
/// outside the writer's serialized, audited path. In WAL mode they read a committed
/// snapshot while the writer goes on.
fn spawn_readers(
    database: &Path,
    options: &SqliteOptions,
) -> StoreResult<(std::sync::mpsc::SyncSender<Job>, Vec<JoinHandle<()>>)> {
    let (sender, receiver) = std::sync::mpsc::sync_channel::<Job>(options.queue_capacity);
    let receiver = Arc::new(Mutex::new(receiver));
    let mut threads = Vec::new();
    for number in 0..options.readers.max(1) {
        let connection = Connection::open(database)?;
        connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
        plans_independent_of_bindings(&connection)?;
        connection.pragma_update(None, "query_only", true)?;
        // A small page cache: SQLite empties a connection's cache whenever another one has
        // written since its last transaction, which here is always (every request appends
        // an audit leaf). Readers read from the OS page cache; a large private cache would
        // only hold memory. (Mapping the file instead, `mmap_size`, measured slower here.)
        connection.pragma_update(None, "cache_size", -READER_CACHE_KIB)?;
        connection.pragma_update(None, "temp_store", "MEMORY")?;
        connection.busy_timeout(std::time::Duration::from_secs(30))?;
        let receiver = receiver.clone();
        let query_time_limit = options.query_time_limit;
        let thread = std::thread::Builder::new()
            .name(format!("hygie-sqlite-reader-{number}"))
            .spawn(move || reader_loop(connection, receiver, query_time_limit))
            .map_err(|e| StoreError::Config(format!("cannot start a reader thread: {e}")))?;
        threads.push(thread);
    }
    Ok((sender, threads))
}

fn reader_loop(
    connection: Connection,
    receiver: Arc<Mutex<std::sync::mpsc::Receiver<Job>>>,
    query_time_limit: std::time::Duration,
) {
    loop {
        let job = match receiver.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        let Ok((unit, reply)) = job else {
            return;
        };
        let _ = reply.send(run_read(&connection, unit, query_time_limit));
    }
}

/// Runs `unit` on `connection` inside the transaction already begun; a panic becomes an
/// error of the unit instead of killing the thread that serves every unit.
fn run_caught(
    connection: &Connection,
    unit: BoxedUnit,
    query_time_limit: std::time::Duration,
    pending: Option<&mut Deferred>,
) -> StoreResult<Box<dyn std::any::Any + Send>> {
    // The leaves and term writes a failed unit queued go with the rest of its work.
    let mark = pending.as_ref().map(|p| p.mark());
    let mut tx = SqliteTx {
        connection,
        savepoints: 0,
        query_time_limit,
        pending,
        savepoint_marks: Vec::new(),
        read_head: None,
    };
    let result = match catch_unwind(AssertUnwindSafe(|| unit(&mut tx))) {
        Ok(result) => result,
        Err(payload) => Err(StoreError::Panicked(panic_message(payload.as_ref()))),
    };
    if result.is_err()
        && let (Some(pending), Some(mark)) = (tx.pending, mark)
    {
        pending.roll_back_to(mark);
    }
    result
}

/// Runs a read unit in one read transaction: every query of it sees the same snapshot.
fn run_read(
    connection: &Connection,
    unit: BoxedUnit,
    query_time_limit: std::time::Duration,
) -> StoreResult<Box<dyn std::any::Any + Send>> {
    execute_cached(connection, "BEGIN")?;
    let result = run_caught(connection, unit, query_time_limit, None);
    // Nothing to keep: a read transaction ends the same way whatever happened in it.
    let ended = execute_cached(connection, "ROLLBACK");
    let value = result?;
    ended?;
    Ok(value)
}

/// Units answered by a committed batch, waiting for durability.
type Answered = Vec<(Reply, StoreResult<Box<dyn std::any::Any + Send>>)>;
type Reply = oneshot::Sender<StoreResult<Box<dyn std::any::Any + Send>>>;

/// The WAL file, opened for fsync. It exists once the connection has read the database in
/// WAL mode, which the query below makes sure of; the data directory is synced too, so
/// that the file's existence is durable.
fn open_wal(connection: &Connection, database: &Path) -> StoreResult<std::fs::File> {
    let _: i64 = connection.query_row("SELECT COUNT(*) FROM schema_migrations", [], |row| {
        row.get(0)
    })?;
    let mut wal_path = database.as_os_str().to_owned();
    wal_path.push("-wal");
    let wal = std::fs::File::open(&wal_path).map_err(|e| {
        StoreError::Config(format!(
            "cannot open the WAL file {}: {e}",
            Path::new(&wal_path).display()
        ))
    })?;
    if let Some(directory) = database.parent()
        && let Ok(directory) = std::fs::File::open(directory)
    {
        let _ = directory.sync_all();
    }
    Ok(wal)
}

fn writer_loop(
    mut connection: Connection,
    mut receiver: mpsc::Receiver<Job>,
    durability: Option<std::sync::mpsc::Sender<Answered>>,
    poisoned: Arc<AtomicBool>,
    checkpointer: Checkpointer,
    options: &SqliteOptions,
) {
    let max_batch = options.max_batch.max(1);
    let query_time_limit = options.query_time_limit;
    let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
    let mut cache = WriterCache::new(options.cache_size_kib);
    cache.fit(&connection);
    while let Some(first) = receiver.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match receiver.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if poisoned.load(Ordering::Acquire) {
            for (_, reply) in batch.drain(..) {
                let _ = reply.send(Err(poisoned_error()));
            }
            continue;
        }
        let Some(answered) = run_batch(&mut connection, &mut batch, query_time_limit) else {
            continue;
        };
        checkpointer.committed(&connection);
        cache.committed(&connection);
        match &durability {
            Some(syncer) => {
                if let Err(unsent) = syncer.send(answered) {
                    for (reply, _) in unsent.0 {
                        let _ = reply.send(Err(StoreError::Closed));
                    }
                }
            }
            None => {
                for (reply, result) in answered {
                    let _ = reply.send(result);
                }
            }
        }
    }
    // Every sender is gone: fold the WAL back into the database so the files are tidy.
    checkpointer.stop();
    if let Err(error) = connection.pragma_update(None, "wal_checkpoint", "TRUNCATE") {
        tracing::warn!(%error, "WAL checkpoint at close failed");
    }
}

/// The writer's page cache while the database is smaller than 1 GiB, KiB.
pub const WRITER_CACHE_BELOW_LOCK_PAGE_KIB: i64 = 32 * 1024;

/// SQLite's lock-byte page starts at this offset in the file (`PENDING_BYTE`).
const LOCK_BYTE_OFFSET: i64 = 1 << 30;

/// Sizes the writer's page cache. At every commit SQLite drops from the cache the pages
/// past the end of the database; when the B-tree balancing of the transaction reordered
/// new pages, it had parked one at the lock-byte page's number (1 GiB / page size + 1),
/// and while the database is smaller than that, the drop scans the cache's whole hash
/// table. With the 256 MiB default, that scan was a tenth of the writer's time in an HL7
/// ingestion at 64 MB, and grows with the cache: 24,000 ADT messages (190 MB) ran at
/// 1,147–1,292 msg/s with 256 MiB, 1,305–1,481 with 32 MiB (8 MiB: 1,391; 64 MiB: 1,292).
/// So the writer's cache is held to [`WRITER_CACHE_BELOW_LOCK_PAGE_KIB`] until the
/// database passes 1 GiB, where the scan no longer happens and the configured size is
/// used. Readers never reorder pages and keep theirs.
struct WriterCache {
    configured_kib: i64,
    applied_kib: i64,
    commits: u32,
}

impl WriterCache {
    /// The database's size is looked at once every this many commits.
    const CHECK_EVERY: u32 = 256;

    fn new(configured_kib: i64) -> WriterCache {
        WriterCache {
            configured_kib,
            applied_kib: configured_kib,
            commits: 0,
        }
    }

    fn committed(&mut self, connection: &Connection) {
        self.commits = self.commits.wrapping_add(1);
        if self.commits.is_multiple_of(Self::CHECK_EVERY) {
            self.fit(connection);
        }
    }

    /// Sets the cache size the database's current size calls for.
    fn fit(&mut self, connection: &Connection) {
        let size = connection
            .query_row("PRAGMA page_count", [], |row| row.get::<_, i64>(0))
            .and_then(|pages| {
                connection
                    .query_row("PRAGMA page_size", [], |row| row.get::<_, i64>(0))
                    .map(|page_size| pages.saturating_mul(page_size))
            });
        let Ok(size) = size else {
            return; // Keeps the size it has: a cache size is no reason to fail a write.
        };
        let wanted = writer_cache_kib(size, self.configured_kib);
        if wanted != self.applied_kib
            && connection
                .pragma_update(None, "cache_size", -wanted)
                .is_ok()
        {
            self.applied_kib = wanted;
        }
    }
}

/// The writer's cache size for a database of `database_bytes` (see [`WriterCache`]).
fn writer_cache_kib(database_bytes: i64, configured_kib: i64) -> i64 {
    if database_bytes < LOCK_BYTE_OFFSET {
        configured_kib.min(WRITER_CACHE_BELOW_LOCK_PAGE_KIB)
    } else {
        configured_kib
    }
}

/// How long the writer waits for readers to leave the old WAL before it postpones a
/// restart (see `Checkpointer::committed`), while the WAL is under `HARD_LIMIT_FACTOR`
/// times its limit.
const RESTART_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Past this many times its limit, the WAL must restart: the writer waits for the readers
/// on the old WAL however long they take (each is interrupted at the query time limit), so
/// writes slow down instead of the WAL growing without bound.
const HARD_LIMIT_FACTOR: i64 = 4;

/// Past this many times its limit, the writer restarts the WAL without waiting for the
/// checkpointer's word (see `Checkpointer::committed`).
const WRITER_RESTART_FACTOR: i64 = 2;

/// The writer's handle on the checkpointer thread.
struct Checkpointer {
    /// Holds at most one pending "something was committed": signals coalesce.
    signal: Option<std::sync::mpsc::SyncSender<()>>,
    /// Set by the checkpointer, as its pass ends, when the WAL is over its limit.
    over_limit: Arc<AtomicBool>,
    /// The limit, in WAL frames. The writer also checks [`WRITER_RESTART_FACTOR`] times it
    /// after each commit: a checkpointer starved of CPU must not let a fast writer grow
    /// the WAL unbounded.
    limit_frames: i64,
    /// Held by whoever checkpoints. SQLite answers BUSY at once, without calling the busy
    /// handler, to a checkpoint that finds another one running; this lock turns that into
    /// a wait for the checkpointer's pass to end.
    pass: Arc<std::sync::Mutex<()>>,
    /// How long a reader may hold a snapshot: the bound on a forced restart's wait.
    reader_bound: std::time::Duration,
    thread: Option<JoinHandle<()>>,
}

thread_local! {
    /// Frames in the WAL after the last commit of the connection on this thread (the
    /// writer's: each store has its own writer thread), from SQLite's WAL hook.
    static WAL_FRAMES: std::cell::Cell<i64> = const { std::cell::Cell::new(0) };
}

fn record_wal_frames(_: &rusqlite::hooks::Wal, frames: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.with(|cell| cell.set(i64::from(frames)));
    Ok(())
}

impl Checkpointer {
    /// Called by the writer after each commit, between batches: the only moment when a
    /// checkpoint can restart the WAL, since the writer holds the write lock otherwise.
    fn committed(&self, connection: &Connection) {
        let frames = WAL_FRAMES.with(std::cell::Cell::get);
        // Over the limit, the restart waits for the checkpointer's word, given as its pass
        // ends: the pass lock is then free and only the frames of the last moments are left
        // to copy. Restarting at the first commit over the limit instead waited for a pass
        // in progress and copied up to an interval's frames, with every request held behind
        // the writer: 20 to 60 ms, about once a second under audited reads (bench/audit
        // §12). The writer still restarts on its own past `WRITER_RESTART_FACTOR` times the
        // limit, so a checkpointer starved of CPU cannot let the WAL grow unbounded.
        let over_limit = self.over_limit.swap(false, Ordering::AcqRel)
            | (frames > WRITER_RESTART_FACTOR * self.limit_frames);
        if over_limit {
            // A RESTART first waits for the checkpointer's pass (milliseconds), then for
            // the readers still on the old WAL: a little while under the hard limit (past
            // `RESTART_WAIT` the restart is postponed to a later commit rather than stall
            // writes behind a long search), as long as a reader may run past it.
            let wait = if frames > HARD_LIMIT_FACTOR * self.limit_frames {
                self.reader_bound
            } else {
                RESTART_WAIT
            };
            let restarted = {
                let _pass = self.pass.lock().unwrap_or_else(|e| e.into_inner());
                let _ = connection.busy_timeout(wait);
                checkpoint(connection, "RESTART")
            };
            let _ = connection.busy_timeout(std::time::Duration::from_secs(30));
            match restarted {
                Ok((0, _, _)) => WAL_FRAMES.with(|cell| cell.set(0)),
                Ok(_) => {
                    tracing::debug!(frames, "SQLite WAL restart postponed: a reader is running")
                }
                Err(error) => tracing::warn!(%error, "SQLite WAL restart checkpoint failed"),
            }
        }
        if let Some(signal) = &self.signal {
            let _ = signal.try_send(());
        }
    }

    fn stop(mut self) {
        self.signal.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn spawn_checkpointer(database: &Path, options: &SqliteOptions) -> StoreResult<Checkpointer> {
    let connection = Connection::open(database)?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    connection.busy_timeout(std::time::Duration::from_secs(30))?;
    let (signal, receiver) = std::sync::mpsc::sync_channel::<()>(1);
    let interval = options.checkpoint_interval;
    // Frames are one page each plus a 24-byte header.
    let page_size: i64 = connection.query_row("PRAGMA page_size", [], |row| row.get(0))?;
    let limit_frames = (options.wal_limit_bytes / (page_size as u64 + 24)).max(1) as i64;
    let over_limit = Arc::new(AtomicBool::new(false));
    let pass = Arc::new(std::sync::Mutex::new(()));
    let (flag, held) = (over_limit.clone(), pass.clone());
    let thread = std::thread::Builder::new()
        .name("hygie-sqlite-checkpoint".to_owned())
        .spawn(move || checkpointer_loop(connection, receiver, interval, limit_frames, flag, held))
        .map_err(|e| StoreError::Config(format!("cannot start the checkpoint thread: {e}")))?;
    Ok(Checkpointer {
        signal: Some(signal),
        over_limit,
        limit_frames,
        pass,
        reader_bound: options.query_time_limit + std::time::Duration::from_secs(1),
        thread: Some(thread),
    })
}

/// Folds committed WAL frames back into the database file, at most once per `interval`,
/// while the writer goes on (a PASSIVE checkpoint never blocks it). When the WAL has grown
/// past its limit anyway, it asks the writer to restart it (see `Checkpointer::committed`).
fn checkpointer_loop(
    connection: Connection,
    receiver: std::sync::mpsc::Receiver<()>,
    interval: std::time::Duration,
    limit_frames: i64,
    over_limit: Arc<AtomicBool>,
    pass: Arc<std::sync::Mutex<()>>,
) {
    while receiver.recv().is_ok() {
        let started = std::time::Instant::now();
        let passed = {
            let _pass = pass.lock().unwrap_or_else(|e| e.into_inner());
            checkpoint(&connection, "PASSIVE")
        };
        match passed {
            Ok((_, log_frames, _)) if log_frames > limit_frames => {
                // One more pass copies what was committed during this one, so that the
                // writer's restart, which holds every request, finds almost nothing left.
                let again = {
                    let _pass = pass.lock().unwrap_or_else(|e| e.into_inner());
                    checkpoint(&connection, "PASSIVE")
                };
                if let Err(error) = again {
                    tracing::warn!(%error, "SQLite WAL checkpoint failed");
                }
                over_limit.store(true, Ordering::Release);
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "SQLite WAL checkpoint failed"),
        }
        if let Some(rest) = interval.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

/// Runs `PRAGMA wal_checkpoint(mode)`: (busy, frames in the WAL, frames checkpointed).
fn checkpoint(connection: &Connection, mode: &str) -> rusqlite::Result<(i64, i64, i64)> {
    connection.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
    })
}

fn poisoned_error() -> StoreError {
    StoreError::Database(
        "an fsync of the SQLite WAL failed earlier: the store accepts no more work; restart the hub after checking the disk".to_owned(),
    )
}

/// Makes committed batches durable: one `fdatasync` of the WAL for every batch that
/// committed since the last one, then their answers.
fn syncer_loop(
    wal: std::fs::File,
    receiver: std::sync::mpsc::Receiver<Answered>,
    poisoned: Arc<AtomicBool>,
) {
    while let Ok(first) = receiver.recv() {
        let mut batches = vec![first];
        while let Ok(more) = receiver.try_recv() {
            batches.push(more);
        }
        let synced = if poisoned.load(Ordering::Acquire) {
            Err(poisoned_error())
        } else {
            wal.sync_data().map_err(|error| {
                tracing::error!(%error, "fsync of the SQLite WAL failed: poisoning the store");
                poisoned.store(true, Ordering::Release);
                poisoned_error()
            })
        };
        for (reply, result) in batches.into_iter().flatten() {
            let _ = reply.send(match &synced {
                Ok(()) => result,
                Err(_) => Err(poisoned_error()),
            });
        }
    }
}

/// Runs one batch in one transaction. Returns the answers of a committed batch (to be
/// sent once durable); answers a failed batch itself and returns `None`.
fn run_batch(
    connection: &mut Connection,
    batch: &mut Vec<Job>,
    query_time_limit: std::time::Duration,
) -> Option<Answered> {
    let mut jobs = std::mem::take(batch).into_iter();
    let mut answered: Answered = Vec::with_capacity(jobs.len());
    // A unit alone in its batch needs no savepoint of its own: if it fails, the whole
    // transaction is rolled back. That spares it two statements and, for a unit that
    // opens no savepoint itself (a read), the copy of every page it changes into the
    // statement journal.
    let alone = jobs.len() == 1;
    let mut pending = Deferred::default();
    let outcome = (|| -> StoreResult<()> {
        execute_cached(connection, "BEGIN IMMEDIATE")?;
        for (unit, sender) in jobs.by_ref() {
            if !alone && let Err(error) = execute_cached(connection, "SAVEPOINT unit") {
                answered.push((sender, Err(StoreError::Database(error.to_string()))));
                return Err(error.into());
            }
            let result = run_caught(connection, unit, query_time_limit, Some(&mut pending));
            let cleanup = match (alone, result.is_err()) {
                (true, true) => execute_cached(connection, "ROLLBACK"),
                (true, false) => Ok(()),
                (false, true) => execute_cached(connection, "ROLLBACK TO unit")
                    .and_then(|()| execute_cached(connection, "RELEASE unit")),
                (false, false) => execute_cached(connection, "RELEASE unit"),
            };
            let failed_alone = alone && result.is_err();
            answered.push((sender, result));
            cleanup?;
            if failed_alone {
                // Rolled back: nothing to commit. The answer still waits for the next
                // fsync, as it may rest on a commit of an earlier batch not yet durable.
                return Ok(());
            }
        }
        apply_term_writes(connection, &mut pending.terms)?;
        flush_pending_audit(connection, &mut pending.audit)?;
        execute_cached(connection, "COMMIT")?;
        Ok(())
    })();
    match outcome {
        Ok(()) => Some(answered),
        Err(error) => {
            // Nothing of this batch is durable: every unit fails, none is acknowledged.
            tracing::error!(%error, units = answered.len() + jobs.len(), "SQLite batch failed; rolled back");
            let _ = connection.execute_batch("ROLLBACK");
            let message = error.to_string();
            for (sender, _) in answered {
                let _ = sender.send(Err(StoreError::Database(message.clone())));
            }
            for (_, sender) in jobs {
                let _ = sender.send(Err(StoreError::Database(message.clone())));
            }
            None
        }
    }
}

/// Runs a statement through the prepared-statement cache: the savepoints and commits of
/// every unit would otherwise be parsed again each time.
fn execute_cached(connection: &Connection, sql: &str) -> rusqlite::Result<()> {
    connection.prepare_cached(sql)?.execute([])?;
    Ok(())
}

impl Store for SqliteStore {
    fn run_boxed(&self, unit: BoxedUnit) -> BoxFuture<StoreResult<Box<dyn std::any::Any + Send>>> {
        let sender = self.sender.lock().expect("sender lock").clone();
        let capacity = self.queue_capacity;
        Box::pin(async move {
            let sender = sender.ok_or(StoreError::Closed)?;
            let (reply, answer) = oneshot::channel();
            match sender.try_send((unit, reply)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(StoreError::Busy { capacity });
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(StoreError::Closed),
            }
            answer.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn read_boxed(&self, unit: BoxedUnit) -> BoxFuture<StoreResult<Box<dyn std::any::Any + Send>>> {
        let sender = self.read_sender.lock().expect("reader lock").clone();
        let capacity = self.queue_capacity;
        Box::pin(async move {
            let sender = sender.ok_or(StoreError::Closed)?;
            let (reply, answer) = oneshot::channel();
            match sender.try_send((unit, reply)) {
                Ok(()) => {}
                Err(std::sync::mpsc::TrySendError::Full(_)) => {
                    return Err(StoreError::Busy { capacity });
                }
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                    return Err(StoreError::Closed);
                }
            }
            answer.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn close(&self) -> BoxFuture<()> {
        let sender = self.sender.lock().expect("sender lock").take();
        let read_sender = self.read_sender.lock().expect("reader lock").take();
        let readers = std::mem::take(&mut *self.readers.lock().expect("readers lock"));
        let writer = self.writer.lock().expect("writer lock").take();
        let syncer = self.syncer.lock().expect("syncer lock").take();
        let path = self.path.clone();
        Box::pin(async move {
            drop(sender);
            drop(read_sender);
            if !readers.is_empty() {
                let _ = tokio::task::spawn_blocking(move || {
                    for reader in readers {
                        let _ = reader.join();
                    }
                })
                .await;
            }
            if let Some(writer) = writer {
                let _ = tokio::task::spawn_blocking(move || {
                    // The writer ends when the queue is drained; the syncer when the writer
                    // has handed over its last batch.
                    let _ = writer.join();
                    if let Some(syncer) = syncer {
                        let _ = syncer.join();
                    }
                })
                .await;
                tracing::info!(path = %path.display(), "SQLite store closed");
            }
        })
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        if let Ok(mut sender) = self.sender.lock() {
            sender.take();
        }
        if let Ok(mut sender) = self.read_sender.lock() {
            sender.take();
        }
        if let Ok(mut readers) = self.readers.lock() {
            for reader in readers.drain(..) {
                let _ = reader.join();
            }
        }
        if let Ok(mut writer) = self.writer.lock()
            && let Some(writer) = writer.take()
        {
            let _ = writer.join();
        }
        if let Ok(mut syncer) = self.syncer.lock()
            && let Some(syncer) = syncer.take()
        {
            let _ = syncer.join();
        }
    }
}

struct SqliteTx<'c> {
    connection: &'c Connection,
    savepoints: usize,
    query_time_limit: std::time::Duration,
    /// The writer's: audit leaves and term-index writes of the batch, written just
    /// before its commit. `None` on a reader, whose writes then fail as every write there
    /// does.
    pending: Option<&'c mut Deferred>,
    /// What was queued when each open savepoint began: rolling one back drops what was
    /// queued since, as it undoes the rows written since.
    savepoint_marks: Vec<DeferredMark>,
    /// The patients of the last head [`Tx::current`] read in this unit ([`ReadHead`]).
    read_head: Option<ReadHead>,
}

/// The `patient_refs` of a head as [`Tx::current`] read it, with the connection's count of
/// changed rows at that moment. An audited read asks for the patients of what it read right
/// after reading it (`referenced_through(…, "Patient")`): this answers without reading the
/// row again. Any row changed since, or a savepoint rolled back, and it is not used.
struct ReadHead {
    resource_type: String,
    id: String,
    patient_refs: Option<String>,
    changes: u64,
}

/// Writes of one batch deferred to its end: the audit leaves ([`PendingAudit`]) and the
/// term-index entries ([`PendingTerms`]).
#[derive(Default)]
struct Deferred {
    audit: PendingAudit,
    terms: PendingTerms,
}

/// How much of a [`Deferred`] existed when a unit or a savepoint began.
#[derive(Clone, Copy)]
struct DeferredMark {
    leaves: usize,
    term_writes: usize,
    terms_applied: usize,
}

impl Deferred {
    fn mark(&self) -> DeferredMark {
        DeferredMark {
            leaves: self.audit.leaves.len(),
            term_writes: self.terms.writes.len(),
            terms_applied: self.terms.applied,
        }
    }

    /// Forgets what was queued since `mark`, after the rows written since were rolled
    /// back. Term writes queued before `mark` but applied after it were undone by that
    /// rollback too: they are applied again later.
    fn roll_back_to(&mut self, mark: DeferredMark) {
        self.audit.leaves.truncate(mark.leaves);
        self.terms.writes.truncate(mark.term_writes);
        self.terms.applied = self.terms.applied.min(mark.terms_applied);
    }
}

/// Term-index writes of one batch, applied in order before its commit, or earlier when a
/// query of the batch reads the term index (`SqliteTx::terms_current`). The term index is
/// an FTS5 table, and FTS5 writes the entries it holds in memory to a new segment of its
/// index at every savepoint, which every unit of a batch runs in: written unit by unit, a
/// batch made one small segment per unit, segments FTS5 then spent time merging (a tenth
/// of the writer's time in an HL7 ingestion). Deferred, a batch makes one.
#[derive(Default)]
struct PendingTerms {
    writes: Vec<TermWrite>,
    /// How many of `writes`, from the first, are already in the table.
    applied: usize,
}

enum TermWrite {
    /// A version's blind terms, keyed by its seq.
    Insert { seq: i64, terms: String },
    /// The entry of a version no longer current.
    Delete { seq: i64 },
}

/// Applies the term writes not yet in the table, in the order they were queued.
fn apply_term_writes(connection: &Connection, terms: &mut PendingTerms) -> StoreResult<()> {
    for write in &terms.writes[terms.applied..] {
        match write {
            TermWrite::Insert { seq, terms } => connection
                .prepare_cached("INSERT INTO search_term (rowid, terms) VALUES (?1, ?2)")?
                .execute(params![seq, terms])?,
            TermWrite::Delete { seq } => connection
                .prepare_cached("DELETE FROM search_term WHERE rowid = ?1")?
                .execute(params![seq])?,
        };
    }
    terms.applied = terms.writes.len();
    Ok(())
}

/// Audit leaves appended by the units of one batch, inserted together after the last
/// unit, before the commit (`flush_pending_audit`). Every read appends a leaf, and the
/// batch's units each run in a savepoint: a leaf inserted inside one made SQLite copy
/// the audit table's last page (and each index page it touched) into the statement
/// journal, unit after unit; inserted after the units, each page is written once per
/// batch. Nothing changes for the unit: its leaves are numbered when appended (the
/// writer is the only one, so it knows the next index), are dropped when the unit fails
/// or rolls back the savepoint they were appended in, and commit with its writes (same
/// transaction) or not at all.
#[derive(Default)]
struct PendingAudit {
    /// The log's next index when the batch's first leaf was appended.
    first_index: Option<i64>,
    leaves: Vec<PendingLeaf>,
}

struct PendingLeaf {
    recorded_us: i64,
    leaf: Vec<u8>,
    /// With the facets: `append_audit_indexed`'s. `None`: `append_audit`'s.
    indexed: Option<([u8; 32], AuditFacets)>,
}

impl PendingAudit {
    /// Queues a leaf; returns its tree index.
    fn append(
        &mut self,
        connection: &Connection,
        recorded_us: i64,
        leaf: &[u8],
        indexed: Option<(&[u8; 32], &AuditFacets)>,
    ) -> StoreResult<i64> {
        let first = match self.first_index {
            Some(first) => first,
            None => {
                let first: i64 = connection
                    .prepare_cached("SELECT COALESCE(MAX(leaf_index), -1) + 1 FROM audit_log")?
                    .query_row([], |row| row.get(0))?;
                *self.first_index.insert(first)
            }
        };
        self.leaves.push(PendingLeaf {
            recorded_us,
            leaf: leaf.to_vec(),
            indexed: indexed.map(|(hash, facets)| (*hash, facets.clone())),
        });
        Ok(first + self.leaves.len() as i64 - 1)
    }
}

/// Writes the batch's pending leaves before its commit. A failure fails the whole batch.
fn flush_pending_audit(connection: &Connection, pending: &mut PendingAudit) -> StoreResult<()> {
    let Some(first) = pending.first_index.take() else {
        return Ok(());
    };
    let leaves = std::mem::take(&mut pending.leaves);
    #[cfg(feature = "bench-audit-floor")]
    return audit_floor::store_batch(connection, first, &leaves);
    #[cfg(not(feature = "bench-audit-floor"))]
    insert_leaves(connection, first, &leaves)
}

/// Inserts leaves numbered from `first`, in index order, and their facets sorted by key
/// (neighbours in the index land on the same pages).
#[cfg_attr(feature = "bench-audit-floor", allow(dead_code))]
fn insert_leaves(connection: &Connection, first: i64, leaves: &[PendingLeaf]) -> StoreResult<()> {
    let mut insert = connection.prepare_cached(
        "INSERT INTO audit_log
         (leaf_index, recorded_us, leaf, leaf_hash, event_type, subtype, outcome, purpose)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut facet_rows = Vec::new();
    for (offset, pending_leaf) in leaves.iter().enumerate() {
        let index = first + offset as i64;
        let hash = pending_leaf
            .indexed
            .as_ref()
            .map(|(hash, _)| hash.as_slice());
        let facets = pending_leaf.indexed.as_ref().map(|(_, facets)| facets);
        insert.execute(params![
            index,
            pending_leaf.recorded_us,
            pending_leaf.leaf,
            hash,
            facets.map(|f| &f.event_type),
            facets.map(|f| &f.subtype),
            facets.map(|f| &f.outcome),
            facets.and_then(|f| f.purpose.as_ref()),
        ])?;
        if let Some(facets) = facets {
            facet_rows.extend(
                audit_index::facet_rows(facets)
                    .into_iter()
                    .map(|(kind, value)| (kind, value, index)),
            );
        }
    }
    facet_rows.sort_unstable();
    let mut insert_facet = connection.prepare_cached(
        "INSERT OR IGNORE INTO audit_facet (kind, value, num) VALUES (?1, ?2, ?3)",
    )?;
    for (kind, value, index) in facet_rows {
        insert_facet.execute(params![kind, value, index])?;
    }
    Ok(())
}

impl SqliteTx<'_> {
    /// Appends a leaf: queued on the writer (see [`PendingAudit`]), inserted at once on
    /// a reader (where it fails: readers cannot write).
    fn append_leaf(
        &mut self,
        recorded_us: i64,
        leaf: &[u8],
        indexed: Option<(&[u8; 32], &AuditFacets)>,
    ) -> StoreResult<i64> {
        match self.pending.as_deref_mut() {
            Some(pending) => pending
                .audit
                .append(self.connection, recorded_us, leaf, indexed),
            None => Ok(self
                .connection
                .prepare_cached(
                    "INSERT INTO audit_log (leaf_index, recorded_us, leaf)
                     VALUES ((SELECT COALESCE(MAX(leaf_index), -1) + 1 FROM audit_log), ?1, ?2)
                     RETURNING leaf_index",
                )?
                .query_row(params![recorded_us, leaf], |row| row.get(0))?),
        }
    }

    /// Writes a version's blind terms as one entry of the term index, under `seq`, the
    /// version they describe.
    fn insert_terms(&mut self, seq: i64, rows: &[IndexRow]) -> StoreResult<()> {
        let terms = search::term_entry_text(rows);
        if terms.is_empty() {
            return Ok(());
        }
        self.write_terms(TermWrite::Insert { seq, terms })
    }

    /// Queues a term-index write on the writer (see [`PendingTerms`]); applies it at once
    /// on a reader (where it fails: readers cannot write).
    fn write_terms(&mut self, write: TermWrite) -> StoreResult<()> {
        match self.pending.as_deref_mut() {
            Some(pending) => {
                pending.terms.writes.push(write);
                Ok(())
            }
            None => {
                let mut once = PendingTerms {
                    writes: vec![write],
                    applied: 0,
                };
                apply_term_writes(self.connection, &mut once)
            }
        }
    }

    /// Makes the term index current before a query that reads it: the batch's queued
    /// term writes are applied.
    fn terms_current(&mut self, sql: &str) -> StoreResult<()> {
        match self.pending.as_deref_mut() {
            Some(pending) if sql.contains("search_term") => {
                apply_term_writes(self.connection, &mut pending.terms)
            }
            _ => Ok(()),
        }
    }

    /// Runs `query` with an interrupt armed at the query time limit.
    fn bounded<T>(&self, query: impl FnOnce() -> rusqlite::Result<T>) -> StoreResult<T> {
        Ok(self
            .bounded_within(None, query)?
            .expect("without a step budget, a query is never cut short by one"))
    }

    /// Like [`SqliteTx::bounded`], and gives up (`None`) once the query has run
    /// `step_budget` virtual-machine steps, if given.
    fn bounded_within<T>(
        &self,
        step_budget: Option<u64>,
        query: impl FnOnce() -> rusqlite::Result<T>,
    ) -> StoreResult<Option<T>> {
        let limit = self.query_time_limit;
        let deadline = std::time::Instant::now() + limit;
        let over_budget = Arc::new(AtomicBool::new(false));
        let mut checks_left = step_budget.map(|steps| steps / PROGRESS_CHECK_STEPS as u64);
        let flag = over_budget.clone();
        // Checked every ~10k virtual-machine steps: a few hundred microseconds.
        self.connection.progress_handler(
            PROGRESS_CHECK_STEPS,
            Some(move || {
                if let Some(left) = checks_left.as_mut() {
                    if *left == 0 {
                        flag.store(true, Ordering::Relaxed);
                        return true;
                    }
                    *left -= 1;
                }
                std::time::Instant::now() > deadline
            }),
        );
        let result = query();
        self.connection.progress_handler(0, None::<fn() -> bool>);
        match result {
            Err(rusqlite::Error::SqliteFailure(error, _))
                if error.code == rusqlite::ErrorCode::OperationInterrupted =>
            {
                if over_budget.load(Ordering::Relaxed) {
                    return Ok(None);
                }
                Err(StoreError::TooCostly {
                    limit_ms: limit.as_millis() as u64,
                })
            }
            other => Ok(Some(other?)),
        }
    }

    /// One page of `spec` by `builder`'s query; `None` when `step_budget` ran out first.
    fn page(
        &mut self,
        spec: &SearchSpec,
        mut builder: SqlBuilder,
        step_budget: Option<u64>,
    ) -> StoreResult<Option<Vec<SearchHit>>> {
        let sql = builder.page_query(spec);
        self.terms_current(&sql)?;
        let kinds = search::sort_kinds(&spec.sort);
        let connection = self.connection;
        self.bounded_within(step_budget, || {
            let mut statement = connection.prepare_cached(&sql)?;
            let mut rows = statement.query(rusqlite::params_from_iter(
                builder.params.iter().map(sqlite_value),
            ))?;
            let mut hits = Vec::new();
            while let Some(row) = rows.next()? {
                let mut sort_values = Vec::with_capacity(kinds.len());
                for (index, kind) in kinds.iter().enumerate() {
                    sort_values.push(match kind {
                        search::SortKind::Int => SortValue::Int(row.get(index + 1)?),
                        search::SortKind::Real => SortValue::Real(row.get(index + 1)?),
                        search::SortKind::Text => SortValue::Text(row.get(index + 1)?),
                    });
                }
                hits.push(SearchHit {
                    id: row.get(0)?,
                    sort_values,
                });
            }
            Ok(hits)
        })
    }

    /// The page of `spec` walked in `_id` order ([`search::id_order_driver`]), when its
    /// driving filter matches at least [`search::ID_ORDER_DENSE_ROWS`] rows and the walk ends
    /// within [`ID_ORDER_STEP_BUDGET`]; `None` otherwise (the driven query then runs, so
    /// an unlucky walk costs at most that budget more).
    fn page_in_id_order(&mut self, spec: &SearchSpec) -> StoreResult<Option<Vec<SearchHit>>> {
        let Some(driver) = search::id_order_driver(spec) else {
            return Ok(None);
        };
        let mut probe = SqlBuilder::new(Dialect::Sqlite);
        let Some(sql) =
            probe.driver_rows_query(&spec.resource_type, driver, search::ID_ORDER_DENSE_ROWS)
        else {
            return Ok(None);
        };
        self.terms_current(&sql)?;
        let connection = self.connection;
        let rows: i64 = self.bounded(|| {
            connection.prepare_cached(&sql)?.query_row(
                rusqlite::params_from_iter(probe.params.iter().map(sqlite_value)),
                |row| row.get(0),
            )
        })?;
        if (rows as usize) < search::ID_ORDER_DENSE_ROWS {
            return Ok(None);
        }
        self.page(
            spec,
            SqlBuilder::in_id_order(Dialect::Sqlite),
            Some(ID_ORDER_STEP_BUDGET),
        )
    }

    /// The first page of a search made of one token test alone ([`search::lone_token`]),
    /// read from the token index in one statement when it finds fewer than
    /// [`search::LONE_TOKEN_ROWS`] rows; `None` otherwise, and the general query answers.
    /// Each conditional create or update asks this (four per HL7 admission). The general
    /// query builds and runs two statements for it (the dense-walk count, then the page,
    /// whose `IN (SELECT …)` gathers the ids in a temporary table) to sort a handful of rows.
    fn page_of_lone_token(&mut self, spec: &SearchSpec) -> StoreResult<Option<Vec<SearchHit>>> {
        let Some((param, system, code)) = search::lone_token(spec) else {
            return Ok(None);
        };
        const WITH_SYSTEM: &str = "SELECT t.id FROM search_token t
             JOIN resources r ON r.resource_type = t.resource_type AND r.id = t.id
             WHERE t.resource_type = ?1 AND t.param = ?2 AND t.code = ?3 AND t.system = ?4
               AND NOT r.deleted
             LIMIT ?5";
        const ANY_SYSTEM: &str = "SELECT t.id FROM search_token t
             JOIN resources r ON r.resource_type = t.resource_type AND r.id = t.id
             WHERE t.resource_type = ?1 AND t.param = ?2 AND t.code = ?3
               AND NOT r.deleted
             LIMIT ?4";
        let rows = search::LONE_TOKEN_ROWS as i64;
        let connection = self.connection;
        let mut ids: Vec<String> = self.bounded(|| match system {
            Some(system) => connection
                .prepare_cached(WITH_SYSTEM)?
                .query_map(
                    params![spec.resource_type, param, code, system, rows],
                    |row| row.get(0),
                )?
                .collect(),
            None => connection
                .prepare_cached(ANY_SYSTEM)?
                .query_map(params![spec.resource_type, param, code, rows], |row| {
                    row.get(0)
                })?
                .collect(),
        })?;
        if ids.len() >= search::LONE_TOKEN_ROWS {
            return Ok(None); // Perhaps not every match: the general query pages them.
        }
        // A resource holds the token once per row that carries it: once in the answer.
        ids.sort_unstable();
        ids.dedup();
        ids.truncate(spec.limit);
        Ok(Some(
            ids.into_iter()
                .map(|id| SearchHit {
                    sort_values: vec![SortValue::Text(id.clone())],
                    id,
                })
                .collect(),
        ))
    }
}

/// How often (in virtual-machine steps) a running query checks its time limit and budget.
const PROGRESS_CHECK_STEPS: std::os::raw::c_int = 10_000;

/// The most virtual-machine steps that walk may take before the driven query is run
/// instead: about 4,000 resources probed, a few milliseconds.
pub const ID_ORDER_STEP_BUDGET: u64 = 200_000;

const SELECT_VERSION: &str =
    "SELECT seq, resource_type, id, version, last_updated_us, deleted, body FROM resource_versions";

fn version_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<VersionRecord> {
    Ok(VersionRecord {
        seq: row.get(0)?,
        resource_type: row.get(1)?,
        id: row.get(2)?,
        version: row.get(3)?,
        last_updated_us: row.get(4)?,
        deleted: row.get(5)?,
        body: row.get(6)?,
    })
}

const DATA_KEY_COLUMNS: &str =
    "SELECT key_id, scope, generation, wrapped, is_current, created_us, erased_us FROM data_key";

fn data_key_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredDataKey> {
    Ok(StoredDataKey {
        key_id: row.get(0)?,
        scope: row.get(1)?,
        generation: row.get(2)?,
        wrapped: row.get(3)?,
        is_current: row.get(4)?,
        created_us: row.get(5)?,
        erased_us: row.get(6)?,
    })
}

impl Tx for SqliteTx<'_> {
    fn data_key(&mut self, key_id: i64) -> StoreResult<Option<StoredDataKey>> {
        Ok(self
            .connection
            .prepare_cached(&format!("{DATA_KEY_COLUMNS} WHERE key_id = ?1"))?
            .query_row(params![key_id], data_key_from_row)
            .optional()?)
    }

    fn current_data_key(&mut self, scope: &str) -> StoreResult<Option<StoredDataKey>> {
        Ok(self
            .connection
            .prepare_cached(&format!(
                "{DATA_KEY_COLUMNS} WHERE scope = ?1 AND is_current = 1"
            ))?
            .query_row(params![scope], data_key_from_row)
            .optional()?)
    }

    fn next_data_key_id(&mut self) -> StoreResult<i64> {
        // One writer: the next number cannot be taken by anyone else before this unit
        // commits; a rolled-back unit's number is handed out again, which is harmless
        // since its key was never stored.
        Ok(self
            .connection
            .prepare_cached("SELECT COALESCE(MAX(key_id), 0) + 1 FROM data_key")?
            .query_row([], |row| row.get(0))?)
    }

    fn put_data_key(&mut self, key: &StoredDataKey, replace_current: bool) -> StoreResult<bool> {
        if replace_current {
            self.connection
                .prepare_cached(
                    "UPDATE data_key SET is_current = 0 WHERE scope = ?1 AND is_current = 1",
                )?
                .execute(params![key.scope])?;
        } else if self.current_data_key(&key.scope)?.is_some() {
            return Ok(false);
        }
        self.connection
            .prepare_cached(
                "INSERT INTO data_key (key_id, scope, generation, wrapped, is_current, created_us)
                 VALUES (?1, ?2, ?3, ?4, 1, ?5)",
            )?
            .execute(params![
                key.key_id,
                key.scope,
                key.generation,
                key.wrapped,
                key.created_us
            ])?;
        Ok(true)
    }

    fn rewrap_data_key(&mut self, key_id: i64, generation: i64, wrapped: &[u8]) -> StoreResult<()> {
        self.connection
            .prepare_cached(
                "UPDATE data_key SET generation = ?2, wrapped = ?3
                 WHERE key_id = ?1 AND wrapped IS NOT NULL",
            )?
            .execute(params![key_id, generation, wrapped])?;
        Ok(())
    }

    fn erase_data_keys(&mut self, scope: &str, erased_us: i64) -> StoreResult<Vec<i64>> {
        let ids = self
            .connection
            .prepare_cached("SELECT key_id FROM data_key WHERE scope = ?1 ORDER BY key_id")?
            .query_map(params![scope], |row| row.get(0))?
            .collect::<rusqlite::Result<Vec<i64>>>()?;
        self.connection
            .prepare_cached(
                "UPDATE data_key SET wrapped = NULL, erased_us = COALESCE(erased_us, ?2)
                 WHERE scope = ?1",
            )?
            .execute(params![scope, erased_us])?;
        Ok(ids)
    }

    fn data_keys(&mut self, after: i64, limit: usize) -> StoreResult<Vec<StoredDataKey>> {
        Ok(self
            .connection
            .prepare_cached(&format!(
                "{DATA_KEY_COLUMNS} WHERE key_id > ?1 ORDER BY key_id LIMIT ?2"
            ))?
            .query_map(params![after, limit as i64], data_key_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn versions_sealed_with(
        &mut self,
        key_ids: &[i64],
        after_seq: i64,
        limit: usize,
    ) -> StoreResult<Vec<VersionRecord>> {
        let mut found = Vec::new();
        for key_id in key_ids {
            let rows = self
                .connection
                .prepare_cached(&format!(
                    "{SELECT_VERSION} WHERE key_id = ?1 AND seq > ?2 AND deleted = 0
                     ORDER BY seq LIMIT ?3"
                ))?
                .query_map(params![key_id, after_seq, limit as i64], version_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            found.extend(rows);
        }
        found.sort_by_key(|record| record.seq);
        found.truncate(limit);
        Ok(found)
    }

    fn unsealed_versions(
        &mut self,
        after_seq: i64,
        limit: usize,
    ) -> StoreResult<Vec<VersionRecord>> {
        Ok(self
            .connection
            .prepare_cached(&format!(
                "{SELECT_VERSION} WHERE seq > ?1 AND key_id IS NULL AND deleted = 0
                 ORDER BY seq LIMIT ?2"
            ))?
            .query_map(params![after_seq, limit as i64], version_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn reseal_version(&mut self, seq: i64, key_id: i64, body: &[u8]) -> StoreResult<()> {
        let changed = self
            .connection
            .prepare_cached("UPDATE resource_versions SET body = ?2, key_id = ?3 WHERE seq = ?1")?
            .execute(params![seq, body, key_id])?;
        if changed != 1 {
            return Err(StoreError::Database(format!(
                "no version with seq {seq} to reseal"
            )));
        }
        Ok(())
    }

    fn head(&mut self, resource_type: &str, id: &str) -> StoreResult<Option<Head>> {
        let mut statement = self.connection.prepare_cached(
            "SELECT version, deleted, last_updated_us FROM resources WHERE resource_type = ?1 AND id = ?2",
        )?;
        Ok(statement
            .query_row(params![resource_type, id], |row| {
                Ok(Head {
                    version: row.get(0)?,
                    deleted: row.get(1)?,
                    last_updated_us: row.get(2)?,
                })
            })
            .optional()?)
    }

    fn current(&mut self, resource_type: &str, id: &str) -> StoreResult<Option<VersionRecord>> {
        let mut statement = self.connection.prepare_cached(
            "SELECT v.seq, v.resource_type, v.id, v.version, v.last_updated_us, v.deleted, v.body,
                    r.patient_refs
             FROM resources r JOIN resource_versions v ON v.seq = r.seq
             WHERE r.resource_type = ?1 AND r.id = ?2",
        )?;
        let found = statement
            .query_row(params![resource_type, id], |row| {
                Ok((version_from_row(row)?, row.get::<_, Option<String>>(7)?))
            })
            .optional()?;
        Ok(found.map(|(record, patient_refs)| {
            self.read_head = Some(ReadHead {
                resource_type: resource_type.to_owned(),
                id: id.to_owned(),
                patient_refs,
                changes: self.connection.total_changes(),
            });
            record
        }))
    }

    fn version(
        &mut self,
        resource_type: &str,
        id: &str,
        version: i64,
    ) -> StoreResult<Option<VersionRecord>> {
        let mut statement = self.connection.prepare_cached(&format!(
            "{SELECT_VERSION} WHERE resource_type = ?1 AND id = ?2 AND version = ?3"
        ))?;
        Ok(statement
            .query_row(params![resource_type, id, version], version_from_row)
            .optional()?)
    }

    fn put_version(&mut self, new: &NewVersion<'_>) -> StoreResult<()> {
        let inserted = self
            .connection
            .prepare_cached(
                "INSERT INTO resource_versions
                 (resource_type, id, version, last_updated_us, deleted, body, key_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                new.resource_type,
                new.id,
                new.version,
                new.last_updated_us,
                new.deleted,
                new.body,
                new.key_id
            ]);
        match inserted {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(error, _))
                if error.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                return Err(StoreError::Conflict {
                    resource_type: new.resource_type.to_owned(),
                    id: new.id.to_owned(),
                    detail: format!("version {} already exists", new.version),
                });
            }
            Err(error) => return Err(error.into()),
        }
        let seq = self.connection.last_insert_rowid();
        // The term index is keyed by the indexed version's seq: the one replaced is
        // read before the head moves on.
        let replaced_seq = if new.version > 1 {
            indexed_seq(self.connection, new.resource_type, new.id)?
        } else {
            None
        };
        let rows = if new.deleted { &[][..] } else { new.index };
        self.connection
            .prepare_cached(
                "INSERT INTO resources
                 (resource_type, id, version, deleted, last_updated_us, seq, patient_refs)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (resource_type, id) DO UPDATE SET
                   version = excluded.version, deleted = excluded.deleted,
                   last_updated_us = excluded.last_updated_us, seq = excluded.seq,
                   patient_refs = excluded.patient_refs",
            )?
            .execute(params![
                new.resource_type,
                new.id,
                new.version,
                new.deleted,
                new.last_updated_us,
                seq,
                patient_refs::encode(rows)
            ])?;
        if new.version > 1 {
            replace_index_rows(self.connection, new.resource_type, new.id, rows)?;
            if let Some(replaced_seq) = replaced_seq {
                self.write_terms(TermWrite::Delete { seq: replaced_seq })?;
            }
        } else {
            insert_index(self.connection, new.resource_type, new.id, rows.iter())?;
        }
        self.insert_terms(seq, rows)?;
        Ok(())
    }

    fn history(&mut self, query: &HistoryQuery) -> StoreResult<Vec<VersionRecord>> {
        let before = query.before_seq.unwrap_or(i64::MAX);
        let max = query.max_seq.unwrap_or(i64::MAX);
        let since = query.since_us.unwrap_or(i64::MIN);
        let limit = query.limit as i64;
        let rows = match &query.scope {
            HistoryScope::System => {
                let mut statement = self.connection.prepare_cached(&format!(
                    "{SELECT_VERSION} WHERE seq < ?1 AND seq <= ?2 AND last_updated_us >= ?3
                     ORDER BY seq DESC LIMIT ?4"
                ))?;
                statement
                    .query_map(params![before, max, since, limit], version_from_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()?
            }
            HistoryScope::Type(resource_type) => {
                let mut statement = self.connection.prepare_cached(&format!(
                    "{SELECT_VERSION} WHERE resource_type = ?5 AND seq < ?1 AND seq <= ?2
                     AND last_updated_us >= ?3 ORDER BY seq DESC LIMIT ?4"
                ))?;
                statement
                    .query_map(
                        params![before, max, since, limit, resource_type],
                        version_from_row,
                    )?
                    .collect::<rusqlite::Result<Vec<_>>>()?
            }
            HistoryScope::Instance { resource_type, id } => {
                let mut statement = self.connection.prepare_cached(&format!(
                    "{SELECT_VERSION} WHERE resource_type = ?5 AND id = ?6 AND seq < ?1 AND seq <= ?2
                     AND last_updated_us >= ?3 ORDER BY seq DESC LIMIT ?4"
                ))?;
                statement
                    .query_map(
                        params![before, max, since, limit, resource_type, id],
                        version_from_row,
                    )?
                    .collect::<rusqlite::Result<Vec<_>>>()?
            }
        };
        Ok(rows)
    }

    fn max_seq(&mut self) -> StoreResult<i64> {
        Ok(self.connection.query_row(
            "SELECT COALESCE(MAX(seq), 0) FROM resource_versions",
            [],
            |row| row.get(0),
        )?)
    }

    fn search(&mut self, spec: &SearchSpec) -> StoreResult<Vec<SearchHit>> {
        if let Some(hits) = self.page_of_lone_token(spec)? {
            return Ok(hits);
        }
        if let Some(hits) = self.page_in_id_order(spec)? {
            return Ok(hits);
        }
        Ok(self
            .page(spec, SqlBuilder::new(Dialect::Sqlite), None)?
            .expect("a page without a step budget is never cut short by one"))
    }

    fn count(&mut self, resource_type: &str, filters: &[Filter]) -> StoreResult<u64> {
        let mut builder = SqlBuilder::new(Dialect::Sqlite);
        let sql = builder.count_query(resource_type, filters);
        self.terms_current(&sql)?;
        let connection = self.connection;
        let count: i64 = self.bounded(|| {
            connection.prepare_cached(&sql)?.query_row(
                rusqlite::params_from_iter(builder.params.iter().map(sqlite_value)),
                |row| row.get(0),
            )
        })?;
        Ok(count as u64)
    }

    fn references_from(
        &mut self,
        resource_type: &str,
        ids: &[String],
        param: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<(String, String)>> {
        let mut statement = self.connection.prepare_cached(
            "SELECT DISTINCT target_type, target_id FROM search_reference
             WHERE resource_type = ?1 AND id = ?2 AND (?3 IS NULL OR param = ?3) AND target_type <> ''
             ORDER BY target_type, target_id",
        )?;
        let mut targets = std::collections::BTreeSet::new();
        for id in ids {
            let rows = statement.query_map(params![resource_type, id, param], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })?;
            for row in rows {
                targets.insert(row?);
                if targets.len() >= limit {
                    return Ok(targets.into_iter().collect());
                }
            }
        }
        Ok(targets.into_iter().collect())
    }

    fn referenced_through(
        &mut self,
        resource_type: &str,
        id: &str,
        params: &[String],
        target_type: &str,
    ) -> StoreResult<Vec<String>> {
        // A resource's patients are kept with its head (`patient_refs.rs`): one row, where
        // the index takes one per reference.
        if target_type == patient_refs::TARGET_TYPE {
            let read = self.read_head.take().filter(|head| {
                head.resource_type == resource_type
                    && head.id == id
                    && head.changes == self.connection.total_changes()
            });
            let kept: Option<Option<String>> = match read {
                Some(head) => Some(head.patient_refs),
                None => self
                    .connection
                    .prepare_cached(
                        "SELECT patient_refs FROM resources WHERE resource_type = ?1 AND id = ?2",
                    )?
                    .query_row(params![resource_type, id], |row| row.get(0))
                    .optional()?,
            };
            match kept {
                // No head, no index rows.
                None => return Ok(Vec::new()),
                Some(Some(encoded)) => {
                    if let Some(patients) = patient_refs::decode(&encoded, params) {
                        return Ok(patients);
                    }
                }
                Some(None) => {}
            }
        }
        // Every reference the resource holds, by the owner index, filtered here: a resource
        // holds few, and SQLite would build a temporary b-tree per call for an IN list or a
        // DISTINCT (measured: most of this query's cost, on every read need-to-know checks).
        let mut statement = self.connection.prepare_cached(
            "SELECT param, target_type, target_id FROM search_reference
             WHERE resource_type = ?1 AND id = ?2",
        )?;
        let mut rows = statement.query(params![resource_type, id])?;
        let mut found = std::collections::BTreeSet::new();
        while let Some(row) = rows.next()? {
            let param = row.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?;
            let row_target_type = row.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?;
            if row_target_type != target_type || !params.iter().any(|p| p == param) {
                continue;
            }
            let target_id = row.get_ref(2)?.as_str().map_err(rusqlite::Error::from)?;
            if !target_id.is_empty() && !found.contains(target_id) {
                found.insert(target_id.to_owned());
            }
        }
        Ok(found.into_iter().collect())
    }

    fn references_to(
        &mut self,
        source_type: &str,
        param: Option<&str>,
        target_type: &str,
        targets: &[String],
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let mut statement = self.connection.prepare_cached(REFERENCES_TO_SQL)?;
        let mut sources = std::collections::BTreeSet::new();
        for target in targets {
            let rows = statement.query_map(
                params![target_type, target, source_type, param, limit as i64],
                |row| row.get::<_, String>(0),
            )?;
            for row in rows {
                sources.insert(row?);
            }
            if sources.len() >= limit {
                break;
            }
        }
        Ok(sources.into_iter().take(limit).collect())
    }

    fn current_many(
        &mut self,
        resource_type: &str,
        ids: &[String],
    ) -> StoreResult<Vec<VersionRecord>> {
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(record) = self.current(resource_type, id)?
                && !record.deleted
            {
                found.push(record);
            }
        }
        Ok(found)
    }

    fn compartment(
        &mut self,
        target_type: &str,
        target_id: &str,
        members: &[(String, Vec<String>)],
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> StoreResult<Vec<(String, String)>> {
        let (sql, values) = search::compartment_sql(
            Dialect::Sqlite,
            target_type,
            target_id,
            members,
            after,
            limit,
        );
        let mut statement = self.connection.prepare_cached(&sql)?;
        let rows = statement.query_map(
            rusqlite::params_from_iter(values.iter().map(sqlite_value)),
            |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)),
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn scan_current(
        &mut self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> StoreResult<Vec<VersionRecord>> {
        let (after_type, after_id) = after.unwrap_or(("", ""));
        let mut statement = self.connection.prepare_cached(
            "SELECT v.seq, v.resource_type, v.id, v.version, v.last_updated_us, v.deleted, v.body
             FROM resources r JOIN resource_versions v ON v.seq = r.seq
             WHERE NOT r.deleted AND (r.resource_type > ?1 OR (r.resource_type = ?1 AND r.id > ?2))
             ORDER BY r.resource_type, r.id LIMIT ?3",
        )?;
        let rows = statement.query_map(
            params![after_type, after_id, limit as i64],
            version_from_row,
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn replace_index(
        &mut self,
        resource_type: &str,
        id: &str,
        rows: &[IndexRow],
    ) -> StoreResult<()> {
        let Some(seq) = indexed_seq(self.connection, resource_type, id)? else {
            return Err(StoreError::Database(format!(
                "{resource_type}/{id} has no current version to index"
            )));
        };
        replace_index_rows(self.connection, resource_type, id, rows)?;
        self.connection
            .prepare_cached(
                "UPDATE resources SET patient_refs = ?3 WHERE resource_type = ?1 AND id = ?2",
            )?
            .execute(params![resource_type, id, patient_refs::encode(rows)])?;
        self.write_terms(TermWrite::Delete { seq })?;
        self.insert_terms(seq, rows)
    }

    fn refresh_statistics(&mut self) -> StoreResult<()> {
        Ok(())
    }

    fn inbound_message(&mut self, key: &str) -> StoreResult<Option<(String, String)>> {
        Ok(self
            .connection
            .prepare_cached(
                "SELECT fingerprint, acknowledgement FROM inbound_message WHERE message_key = ?1",
            )?
            .query_row(params![key], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?)
    }

    fn put_inbound_message(
        &mut self,
        key: &str,
        fingerprint: &str,
        received_us: i64,
        acknowledgement: &str,
    ) -> StoreResult<()> {
        self.connection
            .prepare_cached(
                "INSERT INTO inbound_message (message_key, fingerprint, received_us, acknowledgement)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![key, fingerprint, received_us, acknowledgement])?;
        Ok(())
    }

    fn prune_inbound_messages(&mut self, before_us: i64, limit: usize) -> StoreResult<usize> {
        Ok(self
            .connection
            .prepare_cached(
                "DELETE FROM inbound_message WHERE message_key IN (
                     SELECT message_key FROM inbound_message WHERE received_us < ?1
                     ORDER BY received_us LIMIT ?2)",
            )?
            .execute(params![before_us, limit as i64])?)
    }

    fn meta_get(&mut self, key: &str) -> StoreResult<Option<String>> {
        Ok(self
            .connection
            .prepare_cached("SELECT value FROM hub_meta WHERE key = ?1")?
            .query_row(params![key], |row| row.get(0))
            .optional()?)
    }

    fn meta_set(&mut self, key: &str, value: &str) -> StoreResult<()> {
        self.connection
            .prepare_cached(
                "INSERT INTO hub_meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![key, value])?;
        Ok(())
    }

    fn revoke(
        &mut self,
        kind: &str,
        value: &str,
        revoked_us: i64,
        reason: &str,
    ) -> StoreResult<()> {
        self.connection
            .prepare_cached(
                "INSERT INTO revocations (kind, value, revoked_us, reason) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (kind, value) DO NOTHING",
            )?
            .execute(params![kind, value, revoked_us, reason])?;
        Ok(())
    }

    fn lift_revocation(&mut self, kind: &str, value: &str) -> StoreResult<bool> {
        Ok(self
            .connection
            .prepare_cached("DELETE FROM revocations WHERE kind = ?1 AND value = ?2")?
            .execute(params![kind, value])?
            > 0)
    }

    fn revocation(&mut self, token_id: Option<&str>, subject: &str) -> StoreResult<Option<String>> {
        // Two primary-key lookups; an OR would make SQLite build a temporary index per call
        // to merge them (on every request that carries a token).
        Ok(self
            .connection
            .prepare_cached(
                "SELECT COALESCE(
                    (SELECT reason FROM revocations WHERE kind = 'jti' AND value = ?1),
                    (SELECT reason FROM revocations WHERE kind = 'subject' AND value = ?2))",
            )?
            .query_row(params![token_id.unwrap_or(""), subject], |row| {
                row.get::<_, Option<String>>(0)
            })?)
    }

    fn open_break_glass(&mut self, grant: &NewBreakGlass<'_>) -> StoreResult<i64> {
        Ok(self
            .connection
            .prepare_cached(
                "INSERT INTO break_glass (subject, patient, reason, opened_us, until_us, request_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING grant_id",
            )?
            .query_row(
                params![
                    grant.subject,
                    grant.patient,
                    grant.reason,
                    grant.opened_us,
                    grant.until_us,
                    grant.request_id
                ],
                |row| row.get(0),
            )?)
    }

    fn break_glass_patients(&mut self, subject: &str, now_us: i64) -> StoreResult<Vec<String>> {
        let mut statement = self.connection.prepare_cached(
            "SELECT DISTINCT patient FROM break_glass
             WHERE subject = ?1 AND until_us > ?2",
        )?;
        let patients = statement
            .query_map(params![subject, now_us], |row| row.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(patients)
    }

    fn break_glass_grants(&mut self, all: bool, limit: usize) -> StoreResult<Vec<BreakGlassGrant>> {
        let mut statement = self.connection.prepare_cached(
            "SELECT grant_id, subject, patient, reason, opened_us, until_us, request_id,
                    closed_us, closed_by, review
             FROM break_glass WHERE ?1 OR closed_us IS NULL ORDER BY grant_id DESC LIMIT ?2",
        )?;
        let grants = statement
            .query_map(params![all, limit as i64], |row| {
                Ok(BreakGlassGrant {
                    grant_id: row.get(0)?,
                    subject: row.get(1)?,
                    patient: row.get(2)?,
                    reason: row.get(3)?,
                    opened_us: row.get(4)?,
                    until_us: row.get(5)?,
                    request_id: row.get(6)?,
                    closed_us: row.get(7)?,
                    closed_by: row.get(8)?,
                    review: row.get(9)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(grants)
    }

    fn close_break_glass(
        &mut self,
        grant_id: i64,
        closed_by: &str,
        review: &str,
        closed_us: i64,
    ) -> StoreResult<bool> {
        Ok(self
            .connection
            .prepare_cached(
                "UPDATE break_glass SET closed_us = ?1, closed_by = ?2, review = ?3
                 WHERE grant_id = ?4 AND closed_us IS NULL",
            )?
            .execute(params![closed_us, closed_by, review, grant_id])?
            > 0)
    }

    fn append_audit(&mut self, recorded_us: i64, leaf: &[u8]) -> StoreResult<i64> {
        self.append_leaf(recorded_us, leaf, None)
    }

    fn audit_leaves(&mut self, from: i64, limit: usize) -> StoreResult<Vec<(i64, Vec<u8>)>> {
        let mut statement = self.connection.prepare_cached(
            "SELECT leaf_index, leaf FROM audit_log WHERE leaf_index >= ?1 ORDER BY leaf_index LIMIT ?2",
        )?;
        let leaves = statement
            .query_map(params![from, limit as i64], |row| {
                Ok((row.get(0)?, leaf_bytes(row.get_ref(1)?).unwrap_or_default()))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(leaves)
    }

    fn integrate_audit_leaves(
        &mut self,
        next_index: i64,
        limit: usize,
    ) -> StoreResult<Vec<(i64, LeafToIntegrate)>> {
        // Leaves have their tree index from the moment they are appended (one writer).
        // The leaf itself only where no hash was stored with it.
        let mut statement = self.connection.prepare_cached(
            "SELECT leaf_index, leaf_hash, CASE WHEN leaf_hash IS NULL THEN leaf END
             FROM audit_log WHERE leaf_index >= ?1 ORDER BY leaf_index LIMIT ?2",
        )?;
        let leaves = statement
            .query_map(params![next_index, limit as i64], |row| {
                let index: i64 = row.get(0)?;
                Ok((
                    index,
                    leaf_bytes(row.get_ref(1)?),
                    leaf_bytes(row.get_ref(2)?),
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        leaves
            .into_iter()
            .map(|(index, hash, body)| Ok((index, crate::leaf_to_integrate(index, hash, body)?)))
            .collect()
    }

    fn audit_tree_leaves(
        &mut self,
        from: i64,
        limit: usize,
    ) -> StoreResult<Vec<(i64, Option<Vec<u8>>)>> {
        let mut statement = self.connection.prepare_cached(
            "SELECT leaf_index, leaf FROM audit_log WHERE leaf_index >= ?1
             ORDER BY leaf_index LIMIT ?2",
        )?;
        let leaves = statement
            .query_map(params![from, limit as i64], |row| {
                Ok((row.get(0)?, leaf_bytes(row.get_ref(1)?)))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(leaves)
    }

    fn audit_nodes(&mut self, ids: &[(u32, i64)]) -> StoreResult<Vec<Option<[u8; 32]>>> {
        let mut statement = self
            .connection
            .prepare_cached("SELECT hash FROM audit_node WHERE level = ?1 AND idx = ?2")?;
        let mut hashes = Vec::with_capacity(ids.len());
        for (level, index) in ids {
            let hash: Option<Vec<u8>> = statement
                .query_row(params![level, index], |row| row.get(0))
                .optional()?;
            hashes.push(hash.map(|h| hash32(&h)).transpose()?);
        }
        Ok(hashes)
    }

    fn audit_node_range(
        &mut self,
        level: u32,
        from: i64,
        to: i64,
    ) -> StoreResult<Vec<(i64, [u8; 32])>> {
        let mut statement = self.connection.prepare_cached(
            "SELECT idx, hash FROM audit_node WHERE level = ?1 AND idx >= ?2 AND idx <= ?3
             ORDER BY idx",
        )?;
        let mut rows = statement.query(params![level, from, to])?;
        let mut nodes = Vec::new();
        while let Some(row) = rows.next()? {
            let hash = row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
            nodes.push((row.get(0)?, hash32(hash)?));
        }
        Ok(nodes)
    }

    fn put_audit_nodes(&mut self, nodes: &[(u32, i64, [u8; 32])]) -> StoreResult<()> {
        let mut statement = self
            .connection
            .prepare_cached("INSERT INTO audit_node (level, idx, hash) VALUES (?1, ?2, ?3)")?;
        for (level, index, hash) in nodes {
            statement.execute(params![level, index, &hash[..]])?;
        }
        Ok(())
    }

    fn put_audit_checkpoint(&mut self, checkpoint: &StoredCheckpoint) -> StoreResult<()> {
        self.connection
            .prepare_cached(
                "INSERT INTO audit_checkpoint (tree_size, root, note, created_us)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                checkpoint.tree_size,
                &checkpoint.root[..],
                checkpoint.note,
                checkpoint.created_us
            ])?;
        Ok(())
    }

    fn audit_checkpoints(
        &mut self,
        from_size: i64,
        limit: usize,
    ) -> StoreResult<Vec<StoredCheckpoint>> {
        let mut statement = self.connection.prepare_cached(
            "SELECT tree_size, root, note, created_us FROM audit_checkpoint
             WHERE tree_size >= ?1 ORDER BY tree_size LIMIT ?2",
        )?;
        let rows = statement
            .query_map(params![from_size, limit as i64], checkpoint_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().map(checkpoint_from_parts).collect()
    }

    fn latest_audit_checkpoint(&mut self) -> StoreResult<Option<StoredCheckpoint>> {
        let row = self
            .connection
            .prepare_cached(
                "SELECT tree_size, root, note, created_us FROM audit_checkpoint
                 ORDER BY tree_size DESC LIMIT 1",
            )?
            .query_row([], checkpoint_row)
            .optional()?;
        row.map(checkpoint_from_parts).transpose()
    }

    fn put_audit_cosignature(
        &mut self,
        tree_size: i64,
        witness: &str,
        note: &str,
        received_us: i64,
    ) -> StoreResult<()> {
        self.connection
            .prepare_cached(
                "INSERT OR IGNORE INTO audit_cosignature (tree_size, witness, note, received_us)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![tree_size, witness, note, received_us])?;
        Ok(())
    }

    fn append_audit_indexed(
        &mut self,
        recorded_us: i64,
        leaf: &[u8],
        leaf_hash: &[u8; 32],
        facets: &AuditFacets,
    ) -> StoreResult<i64> {
        self.append_leaf(recorded_us, leaf, Some((leaf_hash, facets)))
    }

    fn prune_audit_leaves(&mut self, leaves: &[(i64, AuditFacets)]) -> StoreResult<()> {
        let mut forget = self
            .connection
            .prepare_cached("UPDATE audit_log SET leaf = NULL WHERE leaf_index = ?1")?;
        for (index, _) in leaves {
            forget.execute(params![index])?;
        }
        let mut unindex = self.connection.prepare_cached(
            "DELETE FROM audit_facet WHERE kind = ?1 AND value = ?2 AND num = ?3",
        )?;
        for (index, facets) in leaves {
            for (kind, value) in audit_index::facet_rows(facets) {
                unindex.execute(params![kind, value, index])?;
            }
        }
        Ok(())
    }

    fn search_audit(&mut self, query: &AuditQuery) -> StoreResult<Vec<AuditHit>> {
        let (sql, params) = audit_index::audit_search_sql(Dialect::Sqlite, query);
        let connection = self.connection;
        self.bounded(|| {
            let mut statement = connection.prepare_cached(&sql)?;
            let hits = statement
                .query_map(
                    rusqlite::params_from_iter(params.iter().map(sqlite_value)),
                    |row| {
                        Ok(AuditHit {
                            number: row.get(0)?,
                            recorded_us: row.get(1)?,
                            leaf: leaf_bytes(row.get_ref(2)?).unwrap_or_default(),
                        })
                    },
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(hits)
        })
    }

    fn audit_event(&mut self, number: i64) -> StoreResult<Option<AuditHit>> {
        Ok(self
            .connection
            .prepare_cached(
                "SELECT recorded_us, leaf FROM audit_log WHERE leaf_index = ?1 AND leaf IS NOT NULL",
            )?
            .query_row(params![number], |row| {
                Ok(AuditHit {
                    number,
                    recorded_us: row.get(0)?,
                    leaf: leaf_bytes(row.get_ref(1)?).unwrap_or_default(),
                })
            })
            .optional()?)
    }

    fn pending_audit_leaves(&mut self, tree_size: i64) -> StoreResult<i64> {
        Ok(self
            .connection
            .prepare_cached("SELECT count(*) FROM audit_log WHERE leaf_index >= ?1")?
            .query_row(params![tree_size], |row| row.get(0))?)
    }

    fn lock(&mut self, _key: &str) -> StoreResult<()> {
        // One writer per database (BEGIN IMMEDIATE): units never run concurrently.
        Ok(())
    }

    fn savepoint(&mut self) -> StoreResult<()> {
        if let Some(pending) = self.pending.as_deref() {
            self.savepoint_marks.push(pending.mark());
        }
        self.savepoints += 1;
        execute_cached(
            self.connection,
            &format!("SAVEPOINT nested_{}", self.savepoints),
        )?;
        Ok(())
    }

    fn rollback_to_savepoint(&mut self) -> StoreResult<()> {
        // The rows come back as they were, and the count of changes does not say so.
        self.read_head = None;
        let mark = self.savepoint_marks.pop();
        if let (Some(pending), Some(mark)) = (self.pending.as_deref_mut(), mark) {
            pending.roll_back_to(mark);
        }
        let name = self.savepoints;
        self.savepoints = self.savepoints.saturating_sub(1);
        execute_cached(self.connection, &format!("ROLLBACK TO nested_{name}"))?;
        execute_cached(self.connection, &format!("RELEASE nested_{name}"))?;
        Ok(())
    }

    fn release_savepoint(&mut self) -> StoreResult<()> {
        self.savepoint_marks.pop();
        let name = self.savepoints;
        self.savepoints = self.savepoints.saturating_sub(1);
        execute_cached(self.connection, &format!("RELEASE nested_{name}"))?;
        Ok(())
    }
}

fn sqlite_value(param: &SqlParam) -> rusqlite::types::Value {
    match param {
        SqlParam::Text(text) => rusqlite::types::Value::Text(text.clone()),
        SqlParam::Int(value) => rusqlite::types::Value::Integer(*value),
        SqlParam::Real(value) => rusqlite::types::Value::Real(*value),
    }
}

/// The seq of the version `resource_type/id`'s index rows describe: its current one.
fn indexed_seq(connection: &Connection, resource_type: &str, id: &str) -> StoreResult<Option<i64>> {
    Ok(connection
        .prepare_cached("SELECT seq FROM resources WHERE resource_type = ?1 AND id = ?2")?
        .query_row(params![resource_type, id], |row| row.get(0))
        .optional()?)
}

/// An index row as stored, to compare what a resource has with what it is to have.
#[derive(PartialEq, Eq, Hash)]
struct StoredRow {
    table: IndexTable,
    param: String,
    group: i64,
    values: Vec<StoredValue>,
}

#[derive(PartialEq, Eq, Hash)]
enum StoredValue {
    Text(String),
    Int(i64),
    /// The bits of the float: equal exactly when SQLite gives back what was written.
    Real(u64),
}

/// The value columns of each index table, in the order [`StoredRow::of`] lists them.
fn value_columns(table: IndexTable) -> &'static str {
    match table {
        IndexTable::Token => "system, code",
        IndexTable::String => "normalized, exact",
        IndexTable::Date => "low, high",
        IndexTable::Number => "value, low, high",
        IndexTable::Quantity => "system, code, value, low, high",
        IndexTable::Reference => "target_type, target_id, url",
        IndexTable::Uri => "value",
        IndexTable::Term => "",
    }
}

impl StoredRow {
    /// What `row` is stored as (`None`: a blind term, which has its own index).
    fn of(row: &IndexRow) -> Option<StoredRow> {
        use StoredValue::{Int, Real, Text};
        let values = match &row.cell {
            IndexCell::Token { system, code } => vec![Text(system.clone()), Text(code.clone())],
            IndexCell::String { normalized, exact } => vec![
                Text(search::truncate(normalized, search::MAX_INDEXED_STRING).to_owned()),
                Text(exact.clone()),
            ],
            IndexCell::Date { low, high } => vec![Int(*low), Int(*high)],
            IndexCell::Number { value, low, high } => {
                vec![
                    Real(value.to_bits()),
                    Real(low.to_bits()),
                    Real(high.to_bits()),
                ]
            }
            IndexCell::Quantity {
                system,
                code,
                value,
                low,
                high,
            } => vec![
                Text(system.clone()),
                Text(code.clone()),
                Real(value.to_bits()),
                Real(low.to_bits()),
                Real(high.to_bits()),
            ],
            IndexCell::Reference {
                target_type,
                target_id,
                url,
            } => vec![
                Text(target_type.clone()),
                Text(target_id.clone()),
                Text(url.clone()),
            ],
            IndexCell::Uri { value } => vec![Text(value.clone())],
            IndexCell::Term(_) => return None,
        };
        Some(StoredRow {
            table: row.cell.table(),
            param: row.param.clone(),
            group: i64::from(row.group),
            values,
        })
    }
}

/// The resources of a type that hold a reference to a target (through one parameter or
/// any). Through the target index: without statistics SQLite would take the owner index,
/// for its order by id, and walk every reference of the source type for each target.
const REFERENCES_TO_SQL: &str =
    "SELECT DISTINCT x.id FROM search_reference x INDEXED BY search_reference_to
     JOIN resources r ON r.resource_type = x.resource_type AND r.id = x.id
     WHERE x.target_type = ?1 AND x.target_id = ?2 AND x.resource_type = ?3
       AND (?4 IS NULL OR x.param = ?4) AND NOT r.deleted
     ORDER BY x.id LIMIT ?5";

/// Brings a resource's index rows (but its blind terms) from what they are to `rows`,
/// touching only the rows that differ: an update usually changes few of them (a
/// discharge changes an Encounter's status and period, not its subject, participants or
/// locations), and each row rewritten is an entry in two or three B-trees, in pages the
/// commit writes again. Rows are compared as a multiset: a row listed twice is kept twice.
fn replace_index_rows(
    connection: &Connection,
    resource_type: &str,
    id: &str,
    rows: &[IndexRow],
) -> StoreResult<()> {
    let mut wanted: std::collections::HashMap<StoredRow, usize> =
        std::collections::HashMap::with_capacity(rows.len());
    for stored in rows.iter().filter_map(StoredRow::of) {
        *wanted.entry(stored).or_default() += 1;
    }
    for table in IndexTable::ALL {
        let mut select = connection.prepare_cached(&format!(
            "SELECT rowid, param, grp, {} FROM {} WHERE resource_type = ?1 AND id = ?2",
            value_columns(table),
            table.name()
        ))?;
        let mut found = select.query(params![resource_type, id])?;
        let mut stale = Vec::new();
        while let Some(row) = found.next()? {
            let rowid: i64 = row.get(0)?;
            // A value the index never writes (NULL, a blob, text that is not UTF-8)
            // matches nothing wanted: the row goes.
            let values = (3..row.as_ref().column_count())
                .map(|column| {
                    Ok(match row.get_ref(column)? {
                        rusqlite::types::ValueRef::Text(text) => std::str::from_utf8(text)
                            .ok()
                            .map(|text| StoredValue::Text(text.to_owned())),
                        rusqlite::types::ValueRef::Integer(value) => Some(StoredValue::Int(value)),
                        rusqlite::types::ValueRef::Real(value) => {
                            Some(StoredValue::Real(value.to_bits()))
                        }
                        _ => None,
                    })
                })
                .collect::<rusqlite::Result<Option<Vec<_>>>>()?;
            let kept = match values {
                Some(values) => {
                    let stored = StoredRow {
                        table,
                        param: row.get(1)?,
                        group: row.get(2)?,
                        values,
                    };
                    wanted.get_mut(&stored).is_some_and(|count| {
                        let keep = *count > 0;
                        *count = count.saturating_sub(1);
                        keep
                    })
                }
                None => false,
            };
            if !kept {
                stale.push(rowid);
            }
        }
        drop(found);
        if !stale.is_empty() {
            let mut delete = connection
                .prepare_cached(&format!("DELETE FROM {} WHERE rowid = ?1", table.name()))?;
            for rowid in stale {
                delete.execute(params![rowid])?;
            }
        }
    }
    // What is still wanted is new.
    let missing = rows.iter().filter(|row| {
        StoredRow::of(row)
            .and_then(|stored| wanted.get_mut(&stored))
            .is_some_and(|count| {
                let new = *count > 0;
                *count = count.saturating_sub(1);
                new
            })
    });
    insert_index(connection, resource_type, id, missing)
}

/// Writes index rows of a resource but its blind terms (`SqliteTx::insert_terms`).
fn insert_index<'r>(
    connection: &Connection,
    resource_type: &str,
    id: &str,
    rows: impl Iterator<Item = &'r IndexRow>,
) -> StoreResult<()> {
    for row in rows {
        let (param, group) = (&row.param, row.group);
        match &row.cell {
            IndexCell::Token { system, code } => connection
                .prepare_cached(
                    "INSERT INTO search_token (resource_type, id, param, grp, system, code) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![resource_type, id, param, group, system, code])?,
            IndexCell::String { normalized, exact } => connection
                .prepare_cached(
                    "INSERT INTO search_string (resource_type, id, param, grp, normalized, exact) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    resource_type,
                    id,
                    param,
                    group,
                    search::truncate(normalized, search::MAX_INDEXED_STRING),
                    exact
                ])?,
            IndexCell::Date { low, high } => connection
                .prepare_cached(
                    "INSERT INTO search_date (resource_type, id, param, grp, low, high) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![resource_type, id, param, group, low, high])?,
            IndexCell::Number { value, low, high } => connection
                .prepare_cached(
                    "INSERT INTO search_number (resource_type, id, param, grp, value, low, high) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![resource_type, id, param, group, value, low, high])?,
            IndexCell::Quantity {
                system,
                code,
                value,
                low,
                high,
            } => connection
                .prepare_cached(
                    "INSERT INTO search_quantity (resource_type, id, param, grp, system, code, value, low, high) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?
                .execute(params![resource_type, id, param, group, system, code, value, low, high])?,
            IndexCell::Reference {
                target_type,
                target_id,
                url,
            } => connection
                .prepare_cached(
                    "INSERT INTO search_reference (resource_type, id, param, grp, target_type, target_id, url) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![resource_type, id, param, group, target_type, target_id, url])?,
            IndexCell::Uri { value } => connection
                .prepare_cached(
                    "INSERT INTO search_uri (resource_type, id, param, grp, value) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![resource_type, id, param, group, value])?,
            IndexCell::Term(_) => 0,
        };
    }
    Ok(())
}

fn hash32(bytes: &[u8]) -> StoreResult<[u8; 32]> {
    bytes.try_into().map_err(|_| {
        StoreError::Database(format!("an audit hash of {} bytes, not 32", bytes.len()))
    })
}

type CheckpointParts = (i64, Vec<u8>, String, i64);

fn checkpoint_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<CheckpointParts> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
}

fn checkpoint_from_parts(
    (tree_size, root, note, created_us): CheckpointParts,
) -> StoreResult<StoredCheckpoint> {
    Ok(StoredCheckpoint {
        tree_size,
        root: hash32(&root)?,
        note,
        created_us,
    })
}

/// A leaf's bytes whatever SQLite type they were written as (someone editing the database
/// by hand may have made them TEXT: verification must see the bytes, not fail to read
/// them); `None` for a pruned (NULL) leaf.
fn leaf_bytes(value: rusqlite::types::ValueRef<'_>) -> Option<Vec<u8>> {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Blob(bytes) | ValueRef::Text(bytes) => Some(bytes.to_vec()),
        ValueRef::Null => None,
        ValueRef::Integer(n) => Some(n.to_string().into_bytes()),
        ValueRef::Real(x) => Some(x.to_string().into_bytes()),
    }
}

/// FOR BENCHMARKS ONLY (the `bench-audit-floor` feature): the cheapest storage of a
/// batch's audit leaves that SQLite allows, to measure what storing them costs at the
/// least (bench/audit/floor, bench/audit/README §12). The leaves of a group commit go
/// into ONE row, bodies and hashes concatenated, and nothing else is written: no row per
/// leaf, no search facets, no tree (the integrator finds nothing to integrate, `verify`
/// sees none of these leaves). A binary built with it says so at start and serves on a
/// loopback address only; it is never a default build.
#[cfg(feature = "bench-audit-floor")]
mod audit_floor {
    use rusqlite::{Connection, params};

    use super::PendingLeaf;
    use crate::StoreResult;

    pub(super) fn create_table(connection: &Connection) -> StoreResult<()> {
        connection.execute_batch(
            "CREATE TABLE IF NOT EXISTS bench_audit_floor (
                batch INTEGER PRIMARY KEY, first_number INTEGER NOT NULL,
                first_recorded_us INTEGER NOT NULL, leaves BLOB NOT NULL, hashes BLOB NOT NULL)",
        )?;
        Ok(())
    }

    pub(super) fn store_batch(
        connection: &Connection,
        first: i64,
        leaves: &[PendingLeaf],
    ) -> StoreResult<()> {
        let Some(first_leaf) = leaves.first() else {
            return Ok(());
        };
        let mut bodies = Vec::with_capacity(leaves.iter().map(|l| l.leaf.len() + 4).sum());
        let mut hashes = Vec::with_capacity(32 * leaves.len());
        for leaf in leaves {
            bodies.extend_from_slice(&(leaf.leaf.len() as u32).to_le_bytes());
            bodies.extend_from_slice(&leaf.leaf);
            if let Some((hash, _)) = &leaf.indexed {
                hashes.extend_from_slice(hash);
            }
        }
        connection
            .prepare_cached(
                "INSERT INTO bench_audit_floor (first_number, first_recorded_us, leaves, hashes)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![first, first_leaf.recorded_us, bodies, hashes])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How SQLite answers `sql`: the details of `EXPLAIN QUERY PLAN`, one per line.
    fn plan(connection: &Connection, sql: &str) -> String {
        let mut statement = connection
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        let unbound = vec![rusqlite::types::Null; statement.parameter_count()];
        let details = statement
            .query_map(rusqlite::params_from_iter(unbound), |row| {
                row.get::<_, String>(3)
            })
            .unwrap()
            .collect::<rusqlite::Result<Vec<_>>>()
            .unwrap();
        details.join("\n")
    }

    /// An in-memory database migrated up to schema `version` and recorded as such, for a
    /// migration's test to fill before `migrate` runs the rest.
    fn at_schema_version(version: usize) -> Connection {
        let connection = Connection::open_in_memory().unwrap();
        connection.execute(CREATE_MIGRATIONS_TABLE, []).unwrap();
        for (index, sql) in migrations::SQLITE.iter().enumerate().take(version) {
            connection.execute_batch(sql).unwrap();
            connection
                .execute(
                    "INSERT INTO schema_migrations (version, applied_at_us) VALUES (?1, 0)",
                    params![index as i64 + 1],
                )
                .unwrap();
        }
        connection
    }

    /// Migration 12 fills each head's `patient_refs` from the reference index as the store
    /// would have written it, and NULL (ask the index) where that cannot be encoded; a
    /// deleted resource, or one without patients, gets the empty list.
    #[test]
    fn migration_12_fills_the_patients_of_every_head_from_the_index() {
        let mut connection = at_schema_version(11);
        use patient_refs::migration_fixture::{OBSERVATIONS, index_rows};
        for (id, rows) in OBSERVATIONS {
            connection
                .execute(
                    "INSERT INTO resources (resource_type, id, version, deleted, last_updated_us, seq)
                     VALUES ('Observation', ?1, 1, 0, 0, 0)",
                    params![id],
                )
                .unwrap();
            for (param, target_type, target) in rows.iter() {
                connection
                    .execute(
                        "INSERT INTO search_reference (resource_type, id, param, grp, target_type, target_id, url)
                         VALUES ('Observation', ?1, ?2, 0, ?3, ?4, '')",
                        params![id, param, target_type, target],
                    )
                    .unwrap();
            }
        }
        migrate(&mut connection).unwrap();

        for (id, rows) in OBSERVATIONS {
            let stored: Option<String> = connection
                .query_row(
                    "SELECT patient_refs FROM resources WHERE resource_type = 'Observation' AND id = ?1",
                    params![id],
                    |row| row.get(0),
                )
                .unwrap();
            assert_eq!(
                stored,
                patient_refs::encode(&index_rows(rows)),
                "Observation/{id}"
            );
        }
        let o1: String = connection
            .query_row(
                "SELECT patient_refs FROM resources WHERE id = 'o1'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(o1, "patient\tp2\nperformer\tp1\nsubject\tp2");
    }

    /// Migration 13 keeps the audit tree's leaf hashes and its subtrees of 16 leaves and
    /// more, and removes levels 1 to 3 (recomputed from the leaf hashes since).
    #[test]
    fn migration_13_keeps_the_audit_trees_stored_levels_only() {
        let mut connection = at_schema_version(12);
        for level in 0..6u32 {
            for index in 0..(64i64 >> level) {
                connection
                    .execute(
                        "INSERT INTO audit_node (level, idx, hash) VALUES (?1, ?2, ?3)",
                        params![level, index, vec![level as u8; 32]],
                    )
                    .unwrap();
            }
        }
        migrate(&mut connection).unwrap();
        let mut levels = connection
            .prepare("SELECT level, count(*) FROM audit_node GROUP BY level ORDER BY level")
            .unwrap();
        let kept: Vec<(u32, i64)> = levels
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(kept, vec![(0, 64), (4, 4), (5, 2)]);
        for (level, _) in kept {
            assert!(crate::audit_level_is_stored(level), "level {level}");
        }
    }

    /// A database made before migration 11 keeps its references, and every question about
    /// them is answered through the one target index that replaced the two.
    #[test]
    fn references_are_found_through_the_target_index_after_migration_11() {
        let mut connection = at_schema_version(10);
        for (id, target) in [("e1", "p1"), ("e2", "p1"), ("e3", "p2")] {
            connection
                .execute(
                    "INSERT INTO resources (resource_type, id, version, deleted, last_updated_us, seq)
                     VALUES ('Encounter', ?1, 1, 0, 0, 0)",
                    params![id],
                )
                .unwrap();
            connection
                .execute(
                    "INSERT INTO search_reference (resource_type, id, param, grp, target_type, target_id, url)
                     VALUES ('Encounter', ?1, 'subject', 0, 'Patient', ?2, 'Patient/' || ?2)",
                    params![id, target],
                )
                .unwrap();
        }
        migrate(&mut connection).unwrap();

        let indexes: Vec<String> = connection
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'search_reference' ORDER BY name")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(indexes, ["search_reference_owner", "search_reference_to"]);
        let sources: Vec<String> = connection
            .prepare(REFERENCES_TO_SQL)
            .unwrap()
            .query_map(
                params!["Patient", "p1", "Encounter", Option::<String>::None, 10],
                |row| row.get(0),
            )
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(sources, ["e1", "e2"]);

        // Which references a target, and a search by reference: both by the target index,
        // never by walking the owner index over every reference of the type.
        let reverse = plan(&connection, REFERENCES_TO_SQL);
        assert!(
            reverse.contains("USING INDEX search_reference_to (target_id=? AND resource_type=?"),
            "{reverse}"
        );
        // The searches as the query builder writes them: by a local reference, and by one
        // spelled as another server's URL.
        for (test, keys) in [
            (
                search::Test::Reference {
                    target_type: Some("Patient".into()),
                    target_id: "p1".into(),
                },
                "target_id=? AND resource_type=? AND param=? AND target_type=?",
            ),
            (
                search::Test::ReferenceUrl("http://other.example/fhir/Patient/p1".into()),
                "target_id=? AND resource_type=? AND param=? AND target_type=?",
            ),
        ] {
            let sql = SqlBuilder::new(Dialect::Sqlite).page_query(&SearchSpec {
                resource_type: "Encounter".into(),
                filters: vec![Filter::Match {
                    param: "subject".into(),
                    tests: vec![test],
                    negate: false,
                }],
                sort: Vec::new(),
                position: None,
                limit: 10,
            });
            let search = plan(&connection, &sql);
            assert!(
                search.contains(&format!("USING INDEX search_reference_to ({keys})")),
                "{search}"
            );
        }
    }

    /// The writer's cache is held small while the database is under 1 GiB, then given its
    /// configured size; a configured size smaller than the hold is kept.
    #[test]
    fn the_writers_cache_is_held_small_below_one_gibibyte() {
        let configured = 256 * 1024;
        assert_eq!(
            writer_cache_kib(64 << 20, configured),
            WRITER_CACHE_BELOW_LOCK_PAGE_KIB
        );
        assert_eq!(
            writer_cache_kib(LOCK_BYTE_OFFSET - 4096, configured),
            WRITER_CACHE_BELOW_LOCK_PAGE_KIB
        );
        assert_eq!(writer_cache_kib(LOCK_BYTE_OFFSET, configured), configured);
        assert_eq!(writer_cache_kib(64 << 20, 1024), 1024);
        // Applied to the connection, and looked at again every `CHECK_EVERY` commits.
        let dir = tempfile::tempdir().unwrap();
        let connection = Connection::open(dir.path().join("cache.db")).unwrap();
        configure(&connection, &SqliteOptions::default()).unwrap();
        let cache_size = || -> i64 {
            connection
                .query_row("PRAGMA cache_size", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(cache_size(), -configured);
        let mut cache = WriterCache::new(configured);
        cache.fit(&connection);
        assert_eq!(cache_size(), -WRITER_CACHE_BELOW_LOCK_PAGE_KIB);
        connection
            .pragma_update(None, "cache_size", -configured)
            .unwrap();
        cache.applied_kib = configured;
        for _ in 0..WriterCache::CHECK_EVERY {
            cache.committed(&connection);
        }
        assert_eq!(cache_size(), -WRITER_CACHE_BELOW_LOCK_PAGE_KIB);
    }

    /// A cached search is compiled once: binding another `LIMIT` (or any other value) does
    /// not expire it. Without the planner stability guarantee, SQLite recompiles it at
    /// every new binding (the count below is then 3).
    #[test]
    fn a_cached_statement_is_not_compiled_again_for_new_bindings() {
        let dir = tempfile::tempdir().unwrap();
        let connection = Connection::open(dir.path().join("plans.db")).unwrap();
        configure(&connection, &SqliteOptions::default()).unwrap();
        connection
            .execute_batch(
                "CREATE TABLE t (k TEXT, v INTEGER); CREATE INDEX t_k ON t (k);
                 INSERT INTO t VALUES ('a', 1), ('a', 2), ('b', 3);",
            )
            .unwrap();
        let sql = "SELECT v FROM t WHERE k = ?1 ORDER BY v LIMIT ?2";
        for (key, limit) in [("a", 1_i64), ("a", 2), ("b", 5)] {
            let mut statement = connection.prepare_cached(sql).unwrap();
            let found: Vec<i64> = statement
                .query_map(params![key, limit], |row| row.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(found.len() as i64 <= limit);
        }
        let statement = connection.prepare_cached(sql).unwrap();
        assert_eq!(
            statement.get_status(rusqlite::StatementStatus::RePrepare),
            0,
            "the statement was compiled again for new bindings"
        );
    }
}
