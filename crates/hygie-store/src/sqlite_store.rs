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

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use crate::migrations::{self, CREATE_MIGRATIONS_TABLE, now_us};
use crate::{
    BoxFuture, BoxedUnit, Head, HistoryQuery, HistoryScope, NewVersion, Store, StoreError,
    StoreResult, TokenQuery, Tx, VersionRecord, panic_message,
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
}

impl Default for SqliteOptions {
    fn default() -> SqliteOptions {
        SqliteOptions {
            queue_capacity: 16_384,
            max_batch: 512,
            synchronous_full: true,
            cache_size_kib: 64 * 1024,
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
    migrate(&mut connection)?;
    let (sender, receiver) = mpsc::channel::<Job>(options.queue_capacity);
    let max_batch = options.max_batch.max(1);
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
    let writer = std::thread::Builder::new()
        .name("hygie-sqlite-writer".to_owned())
        .spawn(move || writer_loop(connection, receiver, max_batch, durability, poisoned))
        .map_err(|e| StoreError::Config(format!("cannot start the writer thread: {e}")))?;
    Ok(SqliteStore {
        sender: Mutex::new(Some(sender)),
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

fn configure(connection: &Connection, options: &SqliteOptions) -> StoreResult<()> {
    connection.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL: commits append to the WAL without fsync; the syncer thread makes them
    // durable before they are acknowledged (see the module documentation).
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    connection.pragma_update(None, "cache_size", -options.cache_size_kib)?;
    // Another process (a CLI import beside a running server) may hold the write lock.
    connection.busy_timeout(std::time::Duration::from_secs(30))?;
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
    max_batch: usize,
    durability: Option<std::sync::mpsc::Sender<Answered>>,
    poisoned: Arc<AtomicBool>,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
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
        let Some(answered) = run_batch(&mut connection, &mut batch) else {
            continue;
        };
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
    if let Err(error) = connection.pragma_update(None, "wal_checkpoint", "TRUNCATE") {
        tracing::warn!(%error, "WAL checkpoint at close failed");
    }
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
fn run_batch(connection: &mut Connection, batch: &mut Vec<Job>) -> Option<Answered> {
    let mut jobs = std::mem::take(batch).into_iter();
    let mut answered: Answered = Vec::with_capacity(jobs.len());
    let outcome = (|| -> StoreResult<()> {
        execute_cached(connection, "BEGIN IMMEDIATE")?;
        for (unit, sender) in jobs.by_ref() {
            if let Err(error) = execute_cached(connection, "SAVEPOINT unit") {
                answered.push((sender, Err(StoreError::Database(error.to_string()))));
                return Err(error.into());
            }
            let mut tx = SqliteTx {
                connection,
                savepoints: 0,
            };
            let result = match catch_unwind(AssertUnwindSafe(|| unit(&mut tx))) {
                Ok(result) => result,
                Err(payload) => Err(StoreError::Panicked(panic_message(payload.as_ref()))),
            };
            let cleanup = if result.is_err() {
                execute_cached(connection, "ROLLBACK TO unit")
                    .and_then(|()| execute_cached(connection, "RELEASE unit"))
            } else {
                execute_cached(connection, "RELEASE unit")
            };
            answered.push((sender, result));
            cleanup?;
        }
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

    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn close(&self) -> BoxFuture<()> {
        let sender = self.sender.lock().expect("sender lock").take();
        let writer = self.writer.lock().expect("writer lock").take();
        let syncer = self.syncer.lock().expect("syncer lock").take();
        let path = self.path.clone();
        Box::pin(async move {
            drop(sender);
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
}

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

impl Tx for SqliteTx<'_> {
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
            "SELECT v.seq, v.resource_type, v.id, v.version, v.last_updated_us, v.deleted, v.body
             FROM resources r JOIN resource_versions v ON v.seq = r.seq
             WHERE r.resource_type = ?1 AND r.id = ?2",
        )?;
        Ok(statement
            .query_row(params![resource_type, id], version_from_row)
            .optional()?)
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
                "INSERT INTO resource_versions (resource_type, id, version, last_updated_us, deleted, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                new.resource_type,
                new.id,
                new.version,
                new.last_updated_us,
                new.deleted,
                new.body
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
        self.connection
            .prepare_cached(
                "INSERT INTO resources (resource_type, id, version, deleted, last_updated_us, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (resource_type, id) DO UPDATE SET
                   version = excluded.version, deleted = excluded.deleted,
                   last_updated_us = excluded.last_updated_us, seq = excluded.seq",
            )?
            .execute(params![
                new.resource_type,
                new.id,
                new.version,
                new.deleted,
                new.last_updated_us,
                seq
            ])?;
        if new.version > 1 {
            self.connection
                .prepare_cached("DELETE FROM search_token WHERE resource_type = ?1 AND id = ?2")?
                .execute(params![new.resource_type, new.id])?;
        }
        if !new.deleted {
            let mut insert = self.connection.prepare_cached(
                "INSERT INTO search_token (resource_type, id, param, system, code) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for token in new.tokens {
                insert.execute(params![
                    new.resource_type,
                    new.id,
                    token.param,
                    token.system,
                    token.code
                ])?;
            }
        }
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

    fn find_by_token(&mut self, query: &TokenQuery<'_>, limit: usize) -> StoreResult<Vec<String>> {
        // Two shapes, so that each can use an index: by code, or by system alone.
        let mut statement = self.connection.prepare_cached(if query.code.is_some() {
            "SELECT DISTINCT id FROM search_token
             WHERE resource_type = ?1 AND param = ?2 AND code = ?3
               AND (?4 IS NULL OR system = ?4) AND id > ?6
             ORDER BY id LIMIT ?5"
        } else {
            "SELECT DISTINCT id FROM search_token
             WHERE resource_type = ?1 AND param = ?2 AND ?3 IS NULL
               AND (?4 IS NULL OR system = ?4) AND id > ?6
             ORDER BY id LIMIT ?5"
        })?;
        let ids = statement
            .query_map(
                params![
                    query.resource_type,
                    query.param,
                    query.code,
                    query.system,
                    limit as i64,
                    query.after_id.unwrap_or("")
                ],
                |row| row.get(0),
            )?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(ids)
    }

    fn list_ids(
        &mut self,
        resource_type: &str,
        after_id: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let mut statement = self.connection.prepare_cached(
            "SELECT id FROM resources WHERE resource_type = ?1 AND deleted = 0 AND id > ?2
             ORDER BY id LIMIT ?3",
        )?;
        let ids = statement
            .query_map(
                params![resource_type, after_id.unwrap_or(""), limit as i64],
                |row| row.get(0),
            )?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(ids)
    }

    fn append_audit(&mut self, recorded_us: i64, leaf: &[u8]) -> StoreResult<i64> {
        let mut statement = self.connection.prepare_cached(
            "INSERT INTO audit_log (leaf_index, recorded_us, leaf)
             VALUES ((SELECT COALESCE(MAX(leaf_index), -1) + 1 FROM audit_log), ?1, ?2)
             RETURNING leaf_index",
        )?;
        Ok(statement.query_row(params![recorded_us, leaf], |row| row.get(0))?)
    }

    fn audit_leaves(&mut self, from: i64, limit: usize) -> StoreResult<Vec<(i64, Vec<u8>)>> {
        let mut statement = self.connection.prepare_cached(
            "SELECT leaf_index, leaf FROM audit_log WHERE leaf_index >= ?1 ORDER BY leaf_index LIMIT ?2",
        )?;
        let leaves = statement
            .query_map(params![from, limit as i64], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(leaves)
    }

    fn lock(&mut self, _key: &str) -> StoreResult<()> {
        // One writer per database (BEGIN IMMEDIATE): units never run concurrently.
        Ok(())
    }

    fn savepoint(&mut self) -> StoreResult<()> {
        self.savepoints += 1;
        execute_cached(
            self.connection,
            &format!("SAVEPOINT nested_{}", self.savepoints),
        )?;
        Ok(())
    }

    fn rollback_to_savepoint(&mut self) -> StoreResult<()> {
        let name = self.savepoints;
        self.savepoints = self.savepoints.saturating_sub(1);
        execute_cached(self.connection, &format!("ROLLBACK TO nested_{name}"))?;
        execute_cached(self.connection, &format!("RELEASE nested_{name}"))?;
        Ok(())
    }

    fn release_savepoint(&mut self) -> StoreResult<()> {
        let name = self.savepoints;
        self.savepoints = self.savepoints.saturating_sub(1);
        execute_cached(self.connection, &format!("RELEASE nested_{name}"))?;
        Ok(())
    }
}
