//! PostgreSQL: the production store, shared by any number of stateless hub processes.
//!
//! Each unit of work is one transaction on a pooled connection. Group commit happens inside
//! PostgreSQL: concurrent commits share WAL flushes. Writers of the same resource serialize
//! on the head row (`SELECT … FOR UPDATE`), and a race to create the same id ends in a
//! [`StoreError::Conflict`] for the loser, never in two version 1s.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, NoTls, Statement};

use crate::audit_index::{self, AuditFacets, AuditHit, AuditQuery};
use crate::migrations::{self, CREATE_MIGRATIONS_TABLE, now_us};
use crate::patient_refs;
use crate::search::{self, Dialect, SqlBuilder, SqlParam};
use crate::{
    BoxFuture, BoxedUnit, BreakGlassGrant, Filter, Head, HistoryQuery, HistoryScope, IndexCell,
    IndexRow, LeafToIntegrate, NewBreakGlass, NewVersion, SearchHit, SearchSpec, SortValue, Store,
    StoreError, StoreResult, StoredCheckpoint, StoredDataKey, Tx, VersionRecord, panic_message,
};

/// The most resources a page's walk in `_id` order probes before the driven query is run
/// instead (`PostgresTx::page_in_id_order`); a few milliseconds.
pub const ID_ORDER_WINDOW: usize = 4_000;

/// Settings of the PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Connections in the pool.
    pub pool_size: u32,
    /// How long a unit waits for a connection before failing.
    pub connect_timeout: Duration,
    /// A search or count running longer is cancelled (`statement_timeout`).
    pub query_time_limit: Duration,
}

impl Default for PostgresOptions {
    fn default() -> PostgresOptions {
        PostgresOptions {
            pool_size: 16,
            connect_timeout: Duration::from_secs(10),
            query_time_limit: Duration::from_secs(5),
        }
    }
}

/// A pooled connection with its prepared statements.
pub struct PgConnection {
    client: Client,
    statements: HashMap<String, Statement>,
}

struct Manager {
    config: postgres::Config,
}

impl r2d2::ManageConnection for Manager {
    type Connection = PgConnection;
    type Error = postgres::Error;

    fn connect(&self) -> Result<PgConnection, postgres::Error> {
        Ok(PgConnection {
            client: self.config.connect(NoTls)?,
            statements: HashMap::new(),
        })
    }

    fn is_valid(&self, connection: &mut PgConnection) -> Result<(), postgres::Error> {
        connection.client.simple_query("").map(|_| ())
    }

    fn has_broken(&self, connection: &mut PgConnection) -> bool {
        connection.client.is_closed()
    }
}

/// The PostgreSQL store.
pub struct PostgresStore {
    /// `Option` only so that `Drop` can move the pool to a plain thread: the sync client
    /// blocks on its own runtime when a connection closes, which must not happen on an
    /// async worker.
    pool: Option<r2d2::Pool<Manager>>,
    closed: Arc<AtomicBool>,
    query_time_limit: Duration,
}

/// Connects, migrates the schema (under an advisory lock, so several hub processes may
/// start together) and returns the store. Blocking: call it outside async tasks.
pub fn open_postgres(url: &str, options: &PostgresOptions) -> StoreResult<PostgresStore> {
    let config: postgres::Config = url
        .parse()
        .map_err(|e| StoreError::Config(format!("invalid PostgreSQL URL: {e}")))?;
    let mut client = config.connect(NoTls).map_err(|e| {
        StoreError::Config(format!(
            "cannot connect to PostgreSQL ({}): {e}",
            redact(url)
        ))
    })?;
    migrate(&mut client)?;
    drop(client);
    let pool = r2d2::Pool::builder()
        .max_size(options.pool_size.max(1))
        .min_idle(Some(1))
        .connection_timeout(options.connect_timeout)
        .build(Manager { config })
        .map_err(|e| StoreError::Config(format!("cannot open the PostgreSQL pool: {e}")))?;
    Ok(PostgresStore {
        pool: Some(pool),
        closed: Arc::new(AtomicBool::new(false)),
        query_time_limit: options.query_time_limit,
    })
}

/// The URL without its password, for error messages and logs.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &credentials[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// An arbitrary, fixed key for the migration advisory lock ("hygie" in ASCII).
pub(crate) const MIGRATION_LOCK_KEY: i64 = 0x0068_7967_6965;

fn migrate(client: &mut Client) -> StoreResult<()> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])?;
    tx.batch_execute(CREATE_MIGRATIONS_TABLE)?;
    let current: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations",
            &[],
        )?
        .get(0);
    let known = migrations::POSTGRES.len() as i64;
    if current > known {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known,
        });
    }
    for (index, sql) in migrations::POSTGRES
        .iter()
        .enumerate()
        .skip(current as usize)
    {
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at_us) VALUES ($1, $2)",
            &[&(index as i64 + 1), &now_us()],
        )?;
        tracing::info!(version = index + 1, "applied PostgreSQL schema migration");
    }
    tx.commit()?;
    Ok(())
}

impl PostgresStore {
    /// Runs a unit on a pooled connection, off the async workers.
    fn spawn_unit(
        &self,
        unit: BoxedUnit,
        read_only: bool,
    ) -> BoxFuture<StoreResult<Box<dyn std::any::Any + Send>>> {
        let pool = self
            .pool
            .clone()
            .expect("the pool lives as long as the store");
        let closed = self.closed.clone();
        let query_time_limit = self.query_time_limit;
        Box::pin(async move {
            if closed.load(Ordering::Acquire) {
                return Err(StoreError::Closed);
            }
            tokio::task::spawn_blocking(move || run_unit(&pool, unit, query_time_limit, read_only))
                .await
                .map_err(|e| StoreError::Panicked(e.to_string()))?
        })
    }
}

impl Store for PostgresStore {
    fn run_boxed(&self, unit: BoxedUnit) -> BoxFuture<StoreResult<Box<dyn std::any::Any + Send>>> {
        self.spawn_unit(unit, false)
    }

    fn read_boxed(&self, unit: BoxedUnit) -> BoxFuture<StoreResult<Box<dyn std::any::Any + Send>>> {
        self.spawn_unit(unit, true)
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn close(&self) -> BoxFuture<()> {
        self.closed.store(true, Ordering::Release);
        Box::pin(async {})
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            let _ = std::thread::spawn(move || drop(pool)).join();
        }
    }
}

fn run_unit(
    pool: &r2d2::Pool<Manager>,
    unit: BoxedUnit,
    query_time_limit: Duration,
    read_only: bool,
) -> StoreResult<Box<dyn std::any::Any + Send>> {
    let mut connection = pool
        .get()
        .map_err(|e| StoreError::Database(format!("no PostgreSQL connection: {e}")))?;
    let PgConnection { client, statements } = &mut *connection;
    let transaction = if read_only {
        // One snapshot for every query of the unit (a search and its includes), as on
        // SQLite; READ ONLY makes any write fail.
        client
            .build_transaction()
            .read_only(true)
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .start()?
    } else {
        client.transaction()?
    };
    let mut tx = PgTx {
        transaction,
        statements,
        savepoints: 0,
        query_time_limit,
        pending_audit: PendingPgAudit::default(),
    };
    let result = match catch_unwind(AssertUnwindSafe(|| unit(&mut tx))) {
        // The unit's leaves go in with its commit, or its error is the unit's.
        Ok(Ok(value)) => tx.flush_pending_audit().map(|()| value),
        Ok(Err(error)) => Err(error),
        Err(payload) => Err(StoreError::Panicked(panic_message(payload.as_ref()))),
    };
    match result {
        Ok(value) => {
            tx.transaction.commit()?;
            Ok(value)
        }
        Err(error) => {
            let _ = tx.transaction.rollback();
            Err(error)
        }
    }
}

struct PgTx<'a> {
    transaction: postgres::Transaction<'a>,
    statements: &'a mut HashMap<String, Statement>,
    savepoints: usize,
    query_time_limit: Duration,
    pending_audit: PendingPgAudit,
}

/// Audit leaves appended by a unit, inserted together (leaves and facets in ONE
/// statement) just before its commit. A leaf inserted at its append cost one round trip
/// each, so a unit of 1,000 leaves (an import's) made 1,000 of them; now it makes one,
/// plus the few that reserve the leaves' numbers from the sequence (1, 2, 4, … at a
/// time: a unit of one leaf still makes two round trips in all, as before). A leaf keeps
/// the number it was given at its append; numbers reserved and not used, or used by a
/// leaf that a rolled-back savepoint drops, are gaps in `seq`, which has gaps anyway
/// (the integrator, not `seq`, gives the dense tree index). As on SQLite, a unit's
/// leaves are visible to audit reads once it has committed (see `Tx::append_audit`), and
/// rolling back a savepoint drops the leaves appended since.
#[derive(Default)]
struct PendingPgAudit {
    leaves: Vec<PendingPgLeaf>,
    /// How many leaves were queued when each open savepoint began.
    savepoint_marks: Vec<usize>,
    /// Sequence values reserved for this unit's next leaves, the next one last.
    reserved: Vec<i64>,
    /// How many values the last reservation took (doubled at each, up to 1,024).
    last_reservation: i64,
}

struct PendingPgLeaf {
    seq: i64,
    recorded_us: i64,
    leaf: Vec<u8>,
    /// `append_audit_indexed`'s hash and facets; `None` for `append_audit`.
    indexed: Option<([u8; 32], AuditFacets)>,
}

const RESERVE_AUDIT_SEQ_SQL: &str = "SELECT nextval(pg_get_serial_sequence('audit_log', 'seq')) FROM generate_series(1, $1::BIGINT)";
/// One statement for the unit's leaves and their facets (a data-modifying CTE runs
/// whether or not it is referenced).
const FLUSH_AUDIT_SQL: &str = "WITH leaves AS (
        INSERT INTO audit_log
        (seq, recorded_us, leaf, leaf_hash, event_type, subtype, outcome, purpose)
        SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[], $3::BYTEA[], $4::BYTEA[],
            $5::TEXT[], $6::TEXT[], $7::TEXT[], $8::TEXT[])
    )
    INSERT INTO audit_facet (kind, value, num)
    SELECT * FROM unnest($9::TEXT[], $10::TEXT[], $11::BIGINT[])
    ON CONFLICT DO NOTHING";

impl PgTx<'_> {
    /// Queues a leaf (see [`PendingPgAudit`]); returns its number (`seq - 1`).
    fn queue_leaf(
        &mut self,
        recorded_us: i64,
        leaf: &[u8],
        indexed: Option<([u8; 32], AuditFacets)>,
    ) -> StoreResult<i64> {
        if self.pending_audit.reserved.is_empty() {
            let take = (self.pending_audit.last_reservation * 2).clamp(1, 1024);
            let statement = self.statement(RESERVE_AUDIT_SEQ_SQL)?;
            // nextval fails in a read-only transaction: an append on a reader fails here.
            let rows = self.transaction.query(&statement, &[&take])?;
            self.pending_audit.reserved = rows.iter().rev().map(|row| row.get(0)).collect();
            self.pending_audit.last_reservation = take;
        }
        let seq = self
            .pending_audit
            .reserved
            .pop()
            .ok_or_else(|| StoreError::Database("no audit sequence value reserved".into()))?;
        self.pending_audit.leaves.push(PendingPgLeaf {
            seq,
            recorded_us,
            leaf: leaf.to_vec(),
            indexed,
        });
        Ok(seq - 1)
    }

    /// Inserts the queued leaves and their facets in one statement.
    fn flush_pending_audit(&mut self) -> StoreResult<()> {
        if self.pending_audit.leaves.is_empty() {
            return Ok(());
        }
        let leaves = std::mem::take(&mut self.pending_audit.leaves);
        let mut seqs = Vec::with_capacity(leaves.len());
        let mut recorded = Vec::with_capacity(leaves.len());
        let mut bodies = Vec::with_capacity(leaves.len());
        let mut hashes = Vec::with_capacity(leaves.len());
        let mut event_types = Vec::with_capacity(leaves.len());
        let mut subtypes = Vec::with_capacity(leaves.len());
        let mut outcomes = Vec::with_capacity(leaves.len());
        let mut purposes = Vec::with_capacity(leaves.len());
        let (mut kinds, mut values, mut nums) = (Vec::new(), Vec::new(), Vec::new());
        for pending in &leaves {
            seqs.push(pending.seq);
            recorded.push(pending.recorded_us);
            bodies.push(pending.leaf.as_slice());
            let facets = pending.indexed.as_ref().map(|(_, facets)| facets);
            hashes.push(pending.indexed.as_ref().map(|(hash, _)| hash.as_slice()));
            event_types.push(facets.map(|f| pg_text(&f.event_type)));
            subtypes.push(facets.map(|f| pg_text(&f.subtype)));
            outcomes.push(facets.map(|f| pg_text(&f.outcome)));
            purposes.push(facets.and_then(|f| f.purpose.as_deref().map(pg_text)));
            if let Some(facets) = facets {
                for (kind, value) in audit_index::facet_rows(facets) {
                    kinds.push(kind);
                    values.push(pg_text(value).into_owned());
                    nums.push(pending.seq - 1);
                }
            }
        }
        let statement = self.statement(FLUSH_AUDIT_SQL)?;
        self.transaction.execute(
            &statement,
            &[
                &seqs,
                &recorded,
                &bodies,
                &hashes,
                &event_types,
                &subtypes,
                &outcomes,
                &purposes,
                &kinds,
                &values,
                &nums,
            ],
        )?;
        Ok(())
    }

    fn statement(&mut self, sql: &str) -> StoreResult<Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.transaction.prepare(sql)?;
        // Search statements vary with the query's shape: bound the cache.
        if self.statements.len() >= MAX_CACHED_STATEMENTS {
            self.statements.clear();
        }
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    /// A search query under `statement_timeout`, so that one runaway query cannot hold a
    /// pooled connection (and its locks) indefinitely.
    fn query_bounded(&mut self, sql: &str, params: &[SqlParam]) -> StoreResult<Vec<postgres::Row>> {
        // 0 would mean "no limit" to PostgreSQL.
        let limit_ms = (self.query_time_limit.as_millis() as u64).max(1);
        // A custom plan for each search: a cached generic plan does not see the values,
        // and picks a scan of every row of a common code (measured 50 ms instead of 2 ms).
        self.transaction.batch_execute(&format!(
            "SET LOCAL statement_timeout = {limit_ms}; SET LOCAL plan_cache_mode = force_custom_plan"
        ))?;
        match self.query_built(sql, params) {
            Err(StoreError::Database(message)) if message.contains("57014") => {
                Err(StoreError::TooCostly { limit_ms })
            }
            other => other,
        }
    }

    /// The rows of `spec`'s page walked in `_id` order, as on SQLite
    /// (`SqliteTx::page_in_id_order`): when the driving filter has at least
    /// `ID_ORDER_DENSE_ROWS` rows, the first [`ID_ORDER_WINDOW`] resources from the cursor
    /// are probed; `None` (the driven query then runs) when the page did not fill within
    /// them.
    fn page_in_id_order(&mut self, spec: &SearchSpec) -> StoreResult<Option<Vec<postgres::Row>>> {
        let Some(driver) = search::id_order_driver(spec) else {
            return Ok(None);
        };
        let dense_rows = search::ID_ORDER_DENSE_ROWS;
        let mut probe = SqlBuilder::new(Dialect::Postgres);
        let Some(sql) = probe.driver_rows_query(&spec.resource_type, driver, dense_rows) else {
            return Ok(None);
        };
        let rows = self.query_bounded(&sql, &probe.params)?;
        if (rows.first().map_or(0, |row| row.get::<_, i64>(0)) as usize) < dense_rows {
            return Ok(None);
        }
        let mut walk = SqlBuilder::in_id_order_window(Dialect::Postgres, ID_ORDER_WINDOW);
        let sql = walk.page_query(spec);
        let rows = self.query_bounded(&sql, &walk.params)?;
        Ok((rows.len() >= spec.limit).then_some(rows))
    }

    fn query_built(&mut self, sql: &str, params: &[SqlParam]) -> StoreResult<Vec<postgres::Row>> {
        let statement = self.statement(sql)?;
        let values: Vec<Box<dyn postgres::types::ToSql + Sync>> = params
            .iter()
            .map(|param| -> Box<dyn postgres::types::ToSql + Sync> {
                match param {
                    SqlParam::Text(text) => Box::new(pg_text(text).into_owned()),
                    SqlParam::Int(value) => Box::new(*value),
                    SqlParam::Real(value) => Box::new(*value),
                }
            })
            .collect();
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
            values.iter().map(|value| value.as_ref()).collect();
        Ok(self.transaction.query(&statement, &refs)?)
    }

    fn delete_index(&mut self, resource_type: &str, id: &str) -> StoreResult<()> {
        for sql in search::delete_index_sql(Dialect::Postgres) {
            let statement = self.statement(&sql)?;
            self.transaction
                .execute(&statement, &[&resource_type, &id])?;
        }
        let statement =
            self.statement("DELETE FROM search_term WHERE resource_type = $1 AND id = $2")?;
        self.transaction
            .execute(&statement, &[&resource_type, &id])?;
        Ok(())
    }

    /// One multi-row INSERT per table (UNNEST of arrays): a round trip per row would make
    /// indexing an Observation cost dozens of round trips.
    fn insert_index(
        &mut self,
        resource_type: &str,
        id: &str,
        rows: &[IndexRow],
    ) -> StoreResult<()> {
        let mut tokens = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut strings = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut dates = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut numbers = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut quantities = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        let mut references = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut uris = (Vec::new(), Vec::new(), Vec::new());
        for row in rows {
            let (param, group) = (row.param.as_str(), row.group);
            match &row.cell {
                IndexCell::Token { system, code } => {
                    tokens.0.push(param);
                    tokens.1.push(group);
                    tokens.2.push(pg_text(system));
                    tokens.3.push(pg_text(code));
                }
                IndexCell::String { normalized, exact } => {
                    strings.0.push(param);
                    strings.1.push(group);
                    strings.2.push(pg_text(search::truncate(
                        normalized,
                        search::MAX_INDEXED_STRING,
                    )));
                    strings.3.push(pg_text(exact));
                }
                IndexCell::Date { low, high } => {
                    dates.0.push(param);
                    dates.1.push(group);
                    dates.2.push(*low);
                    dates.3.push(*high);
                }
                IndexCell::Number { value, low, high } => {
                    numbers.0.push(param);
                    numbers.1.push(group);
                    numbers.2.push(*value);
                    numbers.3.push(*low);
                    numbers.4.push(*high);
                }
                IndexCell::Quantity {
                    system,
                    code,
                    value,
                    low,
                    high,
                } => {
                    quantities.0.push(param);
                    quantities.1.push(group);
                    quantities.2.push(pg_text(system));
                    quantities.3.push(pg_text(code));
                    quantities.4.push(*value);
                    quantities.5.push(*low);
                    quantities.6.push(*high);
                }
                IndexCell::Reference {
                    target_type,
                    target_id,
                    url,
                } => {
                    references.0.push(param);
                    references.1.push(group);
                    references.2.push(pg_text(target_type));
                    references.3.push(pg_text(target_id));
                    references.4.push(pg_text(url));
                }
                IndexCell::Uri { value } => {
                    uris.0.push(param);
                    uris.1.push(group);
                    uris.2.push(pg_text(value));
                }
                IndexCell::Term(_) => {}
            }
        }
        let terms = search::term_entry(rows);
        if !terms.is_empty() {
            let statement = self.statement(
                "INSERT INTO search_term (resource_type, id, terms) VALUES ($1, $2, $3)",
            )?;
            self.transaction
                .execute(&statement, &[&resource_type, &id, &terms])?;
        }
        if !tokens.0.is_empty() {
            let statement = self.statement(INSERT_TOKENS_SQL)?;
            self.transaction.execute(
                &statement,
                &[
                    &resource_type,
                    &id,
                    &tokens.0,
                    &tokens.1,
                    &tokens.2,
                    &tokens.3,
                ],
            )?;
        }
        if !strings.0.is_empty() {
            let statement = self.statement(INSERT_STRINGS_SQL)?;
            self.transaction.execute(
                &statement,
                &[
                    &resource_type,
                    &id,
                    &strings.0,
                    &strings.1,
                    &strings.2,
                    &strings.3,
                ],
            )?;
        }
        if !dates.0.is_empty() {
            let statement = self.statement(INSERT_DATES_SQL)?;
            self.transaction.execute(
                &statement,
                &[&resource_type, &id, &dates.0, &dates.1, &dates.2, &dates.3],
            )?;
        }
        if !numbers.0.is_empty() {
            let statement = self.statement(INSERT_NUMBERS_SQL)?;
            self.transaction.execute(
                &statement,
                &[
                    &resource_type,
                    &id,
                    &numbers.0,
                    &numbers.1,
                    &numbers.2,
                    &numbers.3,
                    &numbers.4,
                ],
            )?;
        }
        if !quantities.0.is_empty() {
            let statement = self.statement(INSERT_QUANTITIES_SQL)?;
            self.transaction.execute(
                &statement,
                &[
                    &resource_type,
                    &id,
                    &quantities.0,
                    &quantities.1,
                    &quantities.2,
                    &quantities.3,
                    &quantities.4,
                    &quantities.5,
                    &quantities.6,
                ],
            )?;
        }
        if !references.0.is_empty() {
            let statement = self.statement(INSERT_REFERENCES_SQL)?;
            self.transaction.execute(
                &statement,
                &[
                    &resource_type,
                    &id,
                    &references.0,
                    &references.1,
                    &references.2,
                    &references.3,
                    &references.4,
                ],
            )?;
        }
        if !uris.0.is_empty() {
            let statement = self.statement(INSERT_URIS_SQL)?;
            self.transaction.execute(
                &statement,
                &[&resource_type, &id, &uris.0, &uris.1, &uris.2],
            )?;
        }
        Ok(())
    }
}

fn data_key_from_row(row: &postgres::Row) -> StoredDataKey {
    StoredDataKey {
        key_id: row.get(0),
        scope: row.get(1),
        generation: row.get(2),
        wrapped: row.get(3),
        is_current: row.get(4),
        created_us: row.get(5),
        erased_us: row.get(6),
    }
}

fn version_from_row(row: &postgres::Row) -> VersionRecord {
    VersionRecord {
        seq: row.get(0),
        resource_type: row.get(1),
        id: row.get(2),
        version: row.get(3),
        last_updated_us: row.get(4),
        deleted: row.get(5),
        body: row.get(6),
    }
}

const HEAD_SQL: &str = "SELECT version, deleted, last_updated_us FROM resources
    WHERE resource_type = $1 AND id = $2 FOR UPDATE";
const CURRENT_SQL: &str =
    "SELECT v.seq, v.resource_type, v.id, v.version, v.last_updated_us, v.deleted, v.body
    FROM resources r JOIN resource_versions v ON v.seq = r.seq
    WHERE r.resource_type = $1 AND r.id = $2";
const VERSION_SQL: &str =
    "SELECT seq, resource_type, id, version, last_updated_us, deleted, body FROM resource_versions
    WHERE resource_type = $1 AND id = $2 AND version = $3";
const INSERT_VERSION_SQL: &str = "INSERT INTO resource_versions
    (resource_type, id, version, last_updated_us, deleted, body, key_id)
    VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq";
const DATA_KEY_COLUMNS: &str =
    "SELECT key_id, scope, generation, wrapped, is_current, created_us, erased_us FROM data_key";
const UPSERT_HEAD_SQL: &str = "INSERT INTO resources
    (resource_type, id, version, deleted, last_updated_us, seq, patient_refs)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
    ON CONFLICT (resource_type, id) DO UPDATE SET
      version = excluded.version, deleted = excluded.deleted,
      last_updated_us = excluded.last_updated_us, seq = excluded.seq,
      patient_refs = excluded.patient_refs";
/// Statements kept prepared per connection at most.
const MAX_CACHED_STATEMENTS: usize = 512;
const INSERT_TOKENS_SQL: &str =
    "INSERT INTO search_token (resource_type, id, param, grp, system, code)
    SELECT $1, $2, * FROM UNNEST($3::TEXT[], $4::INTEGER[], $5::TEXT[], $6::TEXT[])";
const INSERT_STRINGS_SQL: &str =
    "INSERT INTO search_string (resource_type, id, param, grp, normalized, exact)
    SELECT $1, $2, * FROM UNNEST($3::TEXT[], $4::INTEGER[], $5::TEXT[], $6::TEXT[])";
const INSERT_DATES_SQL: &str = "INSERT INTO search_date (resource_type, id, param, grp, low, high)
    SELECT $1, $2, * FROM UNNEST($3::TEXT[], $4::INTEGER[], $5::BIGINT[], $6::BIGINT[])";
const INSERT_NUMBERS_SQL: &str = "INSERT INTO search_number (resource_type, id, param, grp, value, low, high)
    SELECT $1, $2, * FROM UNNEST($3::TEXT[], $4::INTEGER[], $5::FLOAT8[], $6::FLOAT8[], $7::FLOAT8[])";
const INSERT_QUANTITIES_SQL: &str = "INSERT INTO search_quantity (resource_type, id, param, grp, system, code, value, low, high)
    SELECT $1, $2, * FROM UNNEST($3::TEXT[], $4::INTEGER[], $5::TEXT[], $6::TEXT[], $7::FLOAT8[], $8::FLOAT8[], $9::FLOAT8[])";
const INSERT_REFERENCES_SQL: &str =
    "INSERT INTO search_reference (resource_type, id, param, grp, target_type, target_id, url)
    SELECT $1, $2, * FROM UNNEST($3::TEXT[], $4::INTEGER[], $5::TEXT[], $6::TEXT[], $7::TEXT[])";
const INSERT_URIS_SQL: &str = "INSERT INTO search_uri (resource_type, id, param, grp, value)
    SELECT $1, $2, * FROM UNNEST($3::TEXT[], $4::INTEGER[], $5::TEXT[])";
const REFERENCES_FROM_SQL: &str = "SELECT DISTINCT target_type, target_id FROM search_reference
    WHERE resource_type = $1 AND id = ANY($2) AND ($3::TEXT IS NULL OR param = $3) AND target_type <> ''
    ORDER BY target_type, target_id LIMIT $4";
const REFERENCES_TO_SQL: &str = "SELECT DISTINCT x.id FROM search_reference x
    JOIN resources r ON r.resource_type = x.resource_type AND r.id = x.id
    WHERE x.target_type = $1 AND x.target_id = ANY($2) AND x.resource_type = $3
      AND ($4::TEXT IS NULL OR x.param = $4) AND NOT r.deleted
    ORDER BY x.id LIMIT $5";
const CURRENT_MANY_SQL: &str =
    "SELECT v.seq, v.resource_type, v.id, v.version, v.last_updated_us, v.deleted, v.body
    FROM resources r JOIN resource_versions v ON v.seq = r.seq
    WHERE r.resource_type = $1 AND r.id = ANY($2) AND NOT r.deleted";
const SCAN_CURRENT_SQL: &str =
    "SELECT v.seq, v.resource_type, v.id, v.version, v.last_updated_us, v.deleted, v.body
    FROM resources r JOIN resource_versions v ON v.seq = r.seq
    WHERE NOT r.deleted AND (r.resource_type, r.id) > ($1, $2::TEXT COLLATE \"C\")
    ORDER BY r.resource_type, r.id LIMIT $3";
const META_GET_SQL: &str = "SELECT value FROM hub_meta WHERE key = $1";
const META_SET_SQL: &str = "INSERT INTO hub_meta (key, value) VALUES ($1, $2)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value";
const HISTORY_SYSTEM_SQL: &str =
    "SELECT seq, resource_type, id, version, last_updated_us, deleted, body FROM resource_versions
    WHERE seq < $1 AND seq <= $2 AND last_updated_us >= $3 ORDER BY seq DESC LIMIT $4";
const HISTORY_TYPE_SQL: &str =
    "SELECT seq, resource_type, id, version, last_updated_us, deleted, body FROM resource_versions
    WHERE resource_type = $5 AND seq < $1 AND seq <= $2 AND last_updated_us >= $3
    ORDER BY seq DESC LIMIT $4";
const HISTORY_INSTANCE_SQL: &str =
    "SELECT seq, resource_type, id, version, last_updated_us, deleted, body FROM resource_versions
    WHERE resource_type = $5 AND id = $6 AND seq < $1 AND seq <= $2 AND last_updated_us >= $3
    ORDER BY seq DESC LIMIT $4";
// Two shapes, so that each can use an index: by code (through its hash, since a code may
// be longer than a btree entry allows), or by system alone (`system|`).
const LOCK_SQL: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";
const PRUNE_AUDIT_LEAF_SQL: &str =
    "UPDATE audit_log SET leaf = NULL WHERE leaf_index = $1 RETURNING seq - 1";
const UNINDEX_AUDIT_SQL: &str = "DELETE FROM audit_facet f
    USING unnest($1::TEXT[], $2::TEXT[]) AS d(kind, value)
    WHERE f.kind = d.kind AND f.value = d.value AND f.num = $3";
const AUDIT_EVENT_SQL: &str =
    "SELECT recorded_us, leaf FROM audit_log WHERE seq = $1::BIGINT + 1 AND leaf IS NOT NULL";
const AUDIT_LEAVES_SQL: &str = "SELECT seq - 1, leaf FROM audit_log
    WHERE seq - 1 >= $1 ORDER BY seq LIMIT $2";
/// Numbers the oldest pending leaves from $1 on, in append order; the caller holds the
/// integration lock, so no other process numbers concurrently.
const INTEGRATE_AUDIT_SQL: &str = "WITH pending AS (
        SELECT seq, $1::BIGINT + row_number() OVER (ORDER BY seq) - 1 AS idx
        FROM audit_log WHERE leaf_index IS NULL ORDER BY seq LIMIT $2
    )
    UPDATE audit_log a SET leaf_index = p.idx FROM pending p WHERE a.seq = p.seq
    RETURNING a.leaf_index, a.leaf_hash, CASE WHEN a.leaf_hash IS NULL THEN a.leaf END";
const AUDIT_TREE_LEAVES_SQL: &str = "SELECT leaf_index, leaf FROM audit_log
    WHERE leaf_index >= $1 ORDER BY leaf_index LIMIT $2";
const AUDIT_NODES_SQL: &str = "SELECT n.level, n.idx, n.hash FROM audit_node n
    JOIN unnest($1::INT[], $2::BIGINT[]) AS w(level, idx) ON n.level = w.level AND n.idx = w.idx";
const AUDIT_NODE_RANGE_SQL: &str = "SELECT idx, hash FROM audit_node
    WHERE level = $1 AND idx >= $2 AND idx <= $3 ORDER BY idx";
const PUT_AUDIT_NODES_SQL: &str = "INSERT INTO audit_node (level, idx, hash)
    SELECT * FROM unnest($1::INT[], $2::BIGINT[], $3::BYTEA[])";
const PUT_AUDIT_CHECKPOINT_SQL: &str =
    "INSERT INTO audit_checkpoint (tree_size, root, note, created_us)
    VALUES ($1, $2, $3, $4)";
const AUDIT_CHECKPOINTS_SQL: &str = "SELECT tree_size, root, note, created_us FROM audit_checkpoint
    WHERE tree_size >= $1 ORDER BY tree_size LIMIT $2";
const LATEST_AUDIT_CHECKPOINT_SQL: &str = "SELECT tree_size, root, note, created_us
    FROM audit_checkpoint ORDER BY tree_size DESC LIMIT 1";
const PUT_AUDIT_COSIGNATURE_SQL: &str =
    "INSERT INTO audit_cosignature (tree_size, witness, note, received_us)
    VALUES ($1, $2, $3, $4) ON CONFLICT (tree_size, witness) DO NOTHING";
const PENDING_AUDIT_SQL: &str = "SELECT count(*) FROM audit_log WHERE leaf_index IS NULL";

fn hash32(bytes: &[u8]) -> StoreResult<[u8; 32]> {
    bytes.try_into().map_err(|_| {
        StoreError::Database(format!("an audit hash of {} bytes, not 32", bytes.len()))
    })
}

fn checkpoint_from_row(row: &postgres::Row) -> StoreResult<StoredCheckpoint> {
    Ok(StoredCheckpoint {
        tree_size: row.get(0),
        root: hash32(row.get::<_, &[u8]>(1))?,
        note: row.get(2),
        created_us: row.get(3),
    })
}

impl Tx for PgTx<'_> {
    fn head(&mut self, resource_type: &str, id: &str) -> StoreResult<Option<Head>> {
        let statement = self.statement(HEAD_SQL)?;
        let row = self
            .transaction
            .query_opt(&statement, &[&resource_type, &id])?;
        Ok(row.map(|row| Head {
            version: row.get(0),
            deleted: row.get(1),
            last_updated_us: row.get(2),
        }))
    }

    fn current(&mut self, resource_type: &str, id: &str) -> StoreResult<Option<VersionRecord>> {
        let statement = self.statement(CURRENT_SQL)?;
        let row = self
            .transaction
            .query_opt(&statement, &[&resource_type, &id])?;
        Ok(row.as_ref().map(version_from_row))
    }

    fn version(
        &mut self,
        resource_type: &str,
        id: &str,
        version: i64,
    ) -> StoreResult<Option<VersionRecord>> {
        let statement = self.statement(VERSION_SQL)?;
        let row = self
            .transaction
            .query_opt(&statement, &[&resource_type, &id, &version])?;
        Ok(row.as_ref().map(version_from_row))
    }

    fn put_version(&mut self, new: &NewVersion<'_>) -> StoreResult<()> {
        let insert = self.statement(INSERT_VERSION_SQL)?;
        let seq: i64 = match self.transaction.query_one(
            &insert,
            &[
                &new.resource_type,
                &new.id,
                &new.version,
                &new.last_updated_us,
                &new.deleted,
                &new.body,
                &new.key_id,
            ],
        ) {
            Ok(row) => row.get(0),
            Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                return Err(StoreError::Conflict {
                    resource_type: new.resource_type.to_owned(),
                    id: new.id.to_owned(),
                    detail: format!("version {} already exists", new.version),
                });
            }
            Err(error) => return Err(error.into()),
        };
        let rows = if new.deleted { &[][..] } else { new.index };
        let upsert = self.statement(UPSERT_HEAD_SQL)?;
        self.transaction.execute(
            &upsert,
            &[
                &new.resource_type,
                &new.id,
                &new.version,
                &new.deleted,
                &new.last_updated_us,
                &seq,
                &patient_refs::encode(rows),
            ],
        )?;
        if new.version > 1 {
            self.delete_index(new.resource_type, new.id)?;
        }
        if !new.deleted {
            self.insert_index(new.resource_type, new.id, new.index)?;
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
                let statement = self.statement(HISTORY_SYSTEM_SQL)?;
                self.transaction
                    .query(&statement, &[&before, &max, &since, &limit])?
            }
            HistoryScope::Type(resource_type) => {
                let statement = self.statement(HISTORY_TYPE_SQL)?;
                self.transaction
                    .query(&statement, &[&before, &max, &since, &limit, resource_type])?
            }
            HistoryScope::Instance { resource_type, id } => {
                let statement = self.statement(HISTORY_INSTANCE_SQL)?;
                self.transaction.query(
                    &statement,
                    &[&before, &max, &since, &limit, resource_type, id],
                )?
            }
        };
        Ok(rows.iter().map(version_from_row).collect())
    }

    fn max_seq(&mut self) -> StoreResult<i64> {
        Ok(self
            .transaction
            .query_one(
                "SELECT COALESCE(MAX(seq), 0)::BIGINT FROM resource_versions",
                &[],
            )?
            .get(0))
    }

    fn search(&mut self, spec: &SearchSpec) -> StoreResult<Vec<SearchHit>> {
        let kinds = search::sort_kinds(&spec.sort);
        let rows = match self.page_in_id_order(spec)? {
            Some(rows) => rows,
            None => {
                let mut builder = SqlBuilder::new(Dialect::Postgres);
                let sql = builder.page_query(spec);
                self.query_bounded(&sql, &builder.params)?
            }
        };
        Ok(rows
            .iter()
            .map(|row| SearchHit {
                id: row.get(0),
                sort_values: kinds
                    .iter()
                    .enumerate()
                    .map(|(index, kind)| match kind {
                        search::SortKind::Int => SortValue::Int(row.get(index + 1)),
                        search::SortKind::Real => SortValue::Real(row.get(index + 1)),
                        search::SortKind::Text => SortValue::Text(row.get(index + 1)),
                    })
                    .collect(),
            })
            .collect())
    }

    fn count(&mut self, resource_type: &str, filters: &[Filter]) -> StoreResult<u64> {
        let mut builder = SqlBuilder::new(Dialect::Postgres);
        let sql = builder.count_query(resource_type, filters);
        let rows = self.query_bounded(&sql, &builder.params)?;
        Ok(rows.first().map(|row| row.get::<_, i64>(0)).unwrap_or(0) as u64)
    }

    fn references_from(
        &mut self,
        resource_type: &str,
        ids: &[String],
        param: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<(String, String)>> {
        let statement = self.statement(REFERENCES_FROM_SQL)?;
        let rows = self
            .transaction
            .query(&statement, &[&resource_type, &ids, &param, &(limit as i64)])?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    fn referenced_through(
        &mut self,
        resource_type: &str,
        id: &str,
        params: &[String],
        target_type: &str,
    ) -> StoreResult<Vec<String>> {
        // Kept with the head (`patient_refs.rs`), as on SQLite.
        if target_type == patient_refs::TARGET_TYPE {
            let statement = self.statement(
                "SELECT patient_refs FROM resources WHERE resource_type = $1 AND id = $2",
            )?;
            match self
                .transaction
                .query_opt(&statement, &[&resource_type, &id])?
            {
                None => return Ok(Vec::new()),
                Some(row) => {
                    let kept: Option<String> = row.get(0);
                    if let Some(patients) =
                        kept.and_then(|encoded| patient_refs::decode(&encoded, params))
                    {
                        return Ok(patients);
                    }
                }
            }
        }
        let statement = self.statement(
            "SELECT DISTINCT target_id FROM search_reference
             WHERE resource_type = $1 AND id = $2 AND target_type = $3
               AND param = ANY($4) ORDER BY target_id",
        )?;
        let rows = self
            .transaction
            .query(&statement, &[&resource_type, &id, &target_type, &params])?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    fn references_to(
        &mut self,
        source_type: &str,
        param: Option<&str>,
        target_type: &str,
        targets: &[String],
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let statement = self.statement(REFERENCES_TO_SQL)?;
        let rows = self.transaction.query(
            &statement,
            &[
                &target_type,
                &targets,
                &source_type,
                &param,
                &(limit as i64),
            ],
        )?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    fn current_many(
        &mut self,
        resource_type: &str,
        ids: &[String],
    ) -> StoreResult<Vec<VersionRecord>> {
        let statement = self.statement(CURRENT_MANY_SQL)?;
        let rows = self
            .transaction
            .query(&statement, &[&resource_type, &ids])?;
        Ok(rows.iter().map(version_from_row).collect())
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
            Dialect::Postgres,
            target_type,
            target_id,
            members,
            after,
            limit,
        );
        let rows = self.query_built(&sql, &values)?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    fn scan_current(
        &mut self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> StoreResult<Vec<VersionRecord>> {
        let (after_type, after_id) = after.unwrap_or(("", ""));
        let statement = self.statement(SCAN_CURRENT_SQL)?;
        let rows = self
            .transaction
            .query(&statement, &[&after_type, &after_id, &(limit as i64)])?;
        Ok(rows.iter().map(version_from_row).collect())
    }

    fn replace_index(
        &mut self,
        resource_type: &str,
        id: &str,
        rows: &[IndexRow],
    ) -> StoreResult<()> {
        self.delete_index(resource_type, id)?;
        let statement = self.statement(
            "UPDATE resources SET patient_refs = $3 WHERE resource_type = $1 AND id = $2",
        )?;
        self.transaction.execute(
            &statement,
            &[&resource_type, &id, &patient_refs::encode(rows)],
        )?;
        self.insert_index(resource_type, id, rows)
    }

    fn refresh_statistics(&mut self) -> StoreResult<()> {
        self.transaction.batch_execute(
            "ANALYZE resources; ANALYZE resource_versions; ANALYZE search_token;
             ANALYZE search_string; ANALYZE search_date; ANALYZE search_number;
             ANALYZE search_quantity; ANALYZE search_reference; ANALYZE search_uri;
             ANALYZE search_term;",
        )?;
        Ok(())
    }

    fn data_key(&mut self, key_id: i64) -> StoreResult<Option<StoredDataKey>> {
        let statement = self.statement(&format!("{DATA_KEY_COLUMNS} WHERE key_id = $1"))?;
        Ok(self
            .transaction
            .query_opt(&statement, &[&key_id])?
            .map(|row| data_key_from_row(&row)))
    }

    fn current_data_key(&mut self, scope: &str) -> StoreResult<Option<StoredDataKey>> {
        let statement = self.statement(&format!(
            "{DATA_KEY_COLUMNS} WHERE scope = $1 AND is_current"
        ))?;
        Ok(self
            .transaction
            .query_opt(&statement, &[&scope])?
            .map(|row| data_key_from_row(&row)))
    }

    fn next_data_key_id(&mut self) -> StoreResult<i64> {
        let statement =
            self.statement("SELECT nextval(pg_get_serial_sequence('data_key', 'key_id'))")?;
        Ok(self.transaction.query_one(&statement, &[])?.get(0))
    }

    fn put_data_key(&mut self, key: &StoredDataKey, replace_current: bool) -> StoreResult<bool> {
        if replace_current {
            let statement = self.statement(
                "UPDATE data_key SET is_current = FALSE WHERE scope = $1 AND is_current",
            )?;
            self.transaction.execute(&statement, &[&key.scope])?;
        }
        // Two processes making a patient's first key at once: the unique index on the
        // current key of a scope lets one in; the other stores nothing and re-reads.
        let statement = self.statement(
            "INSERT INTO data_key (key_id, scope, generation, wrapped, is_current, created_us)
             VALUES ($1, $2, $3, $4, TRUE, $5)
             ON CONFLICT (scope) WHERE is_current DO NOTHING",
        )?;
        let inserted = self.transaction.execute(
            &statement,
            &[
                &key.key_id,
                &key.scope,
                &key.generation,
                &key.wrapped,
                &key.created_us,
            ],
        )?;
        Ok(inserted == 1)
    }

    fn rewrap_data_key(&mut self, key_id: i64, generation: i64, wrapped: &[u8]) -> StoreResult<()> {
        let statement = self.statement(
            "UPDATE data_key SET generation = $2, wrapped = $3
             WHERE key_id = $1 AND wrapped IS NOT NULL",
        )?;
        self.transaction
            .execute(&statement, &[&key_id, &generation, &wrapped])?;
        Ok(())
    }

    fn erase_data_keys(&mut self, scope: &str, erased_us: i64) -> StoreResult<Vec<i64>> {
        let statement = self.statement(
            "UPDATE data_key SET wrapped = NULL, erased_us = COALESCE(erased_us, $2)
             WHERE scope = $1 RETURNING key_id",
        )?;
        let mut ids: Vec<i64> = self
            .transaction
            .query(&statement, &[&scope, &erased_us])?
            .iter()
            .map(|row| row.get(0))
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    fn data_keys(&mut self, after: i64, limit: usize) -> StoreResult<Vec<StoredDataKey>> {
        let statement = self.statement(&format!(
            "{DATA_KEY_COLUMNS} WHERE key_id > $1 ORDER BY key_id LIMIT $2"
        ))?;
        Ok(self
            .transaction
            .query(&statement, &[&after, &(limit as i64)])?
            .iter()
            .map(data_key_from_row)
            .collect())
    }

    fn versions_sealed_with(
        &mut self,
        key_ids: &[i64],
        after_seq: i64,
        limit: usize,
    ) -> StoreResult<Vec<VersionRecord>> {
        let statement = self.statement(
            "SELECT seq, resource_type, id, version, last_updated_us, deleted, body
             FROM resource_versions
             WHERE key_id = ANY($1) AND seq > $2 AND NOT deleted ORDER BY seq LIMIT $3",
        )?;
        Ok(self
            .transaction
            .query(&statement, &[&key_ids, &after_seq, &(limit as i64)])?
            .iter()
            .map(version_from_row)
            .collect())
    }

    fn unsealed_versions(
        &mut self,
        after_seq: i64,
        limit: usize,
    ) -> StoreResult<Vec<VersionRecord>> {
        let statement = self.statement(
            "SELECT seq, resource_type, id, version, last_updated_us, deleted, body
             FROM resource_versions
             WHERE seq > $1 AND key_id IS NULL AND NOT deleted ORDER BY seq LIMIT $2",
        )?;
        Ok(self
            .transaction
            .query(&statement, &[&after_seq, &(limit as i64)])?
            .iter()
            .map(version_from_row)
            .collect())
    }

    fn reseal_version(&mut self, seq: i64, key_id: i64, body: &[u8]) -> StoreResult<()> {
        let statement =
            self.statement("UPDATE resource_versions SET body = $2, key_id = $3 WHERE seq = $1")?;
        if self
            .transaction
            .execute(&statement, &[&seq, &body, &key_id])?
            != 1
        {
            return Err(StoreError::Database(format!(
                "no version with seq {seq} to reseal"
            )));
        }
        Ok(())
    }

    fn inbound_message(&mut self, key: &str) -> StoreResult<Option<(String, String)>> {
        let statement = self.statement(
            "SELECT fingerprint, acknowledgement FROM inbound_message WHERE message_key = $1",
        )?;
        Ok(self
            .transaction
            .query_opt(&statement, &[&key])?
            .map(|row| (row.get(0), row.get(1))))
    }

    fn put_inbound_message(
        &mut self,
        key: &str,
        fingerprint: &str,
        received_us: i64,
        acknowledgement: &str,
    ) -> StoreResult<()> {
        let statement = self.statement(
            "INSERT INTO inbound_message (message_key, fingerprint, received_us, acknowledgement)
             VALUES ($1, $2, $3, $4)",
        )?;
        self.transaction.execute(
            &statement,
            &[&key, &fingerprint, &received_us, &acknowledgement],
        )?;
        Ok(())
    }

    fn prune_inbound_messages(&mut self, before_us: i64, limit: usize) -> StoreResult<usize> {
        let statement = self.statement(
            "DELETE FROM inbound_message WHERE message_key IN (
                 SELECT message_key FROM inbound_message WHERE received_us < $1
                 ORDER BY received_us LIMIT $2)",
        )?;
        let deleted = self
            .transaction
            .execute(&statement, &[&before_us, &(limit as i64)])?;
        Ok(deleted as usize)
    }

    fn meta_get(&mut self, key: &str) -> StoreResult<Option<String>> {
        let statement = self.statement(META_GET_SQL)?;
        Ok(self
            .transaction
            .query_opt(&statement, &[&key])?
            .map(|row| row.get(0)))
    }

    fn meta_set(&mut self, key: &str, value: &str) -> StoreResult<()> {
        let statement = self.statement(META_SET_SQL)?;
        self.transaction.execute(&statement, &[&key, &value])?;
        Ok(())
    }

    fn revoke(
        &mut self,
        kind: &str,
        value: &str,
        revoked_us: i64,
        reason: &str,
    ) -> StoreResult<()> {
        let statement = self.statement(
            "INSERT INTO revocations (kind, value, revoked_us, reason) VALUES ($1, $2, $3, $4)
             ON CONFLICT (kind, value) DO NOTHING",
        )?;
        self.transaction
            .execute(&statement, &[&kind, &value, &revoked_us, &reason])?;
        Ok(())
    }

    fn lift_revocation(&mut self, kind: &str, value: &str) -> StoreResult<bool> {
        let statement = self.statement("DELETE FROM revocations WHERE kind = $1 AND value = $2")?;
        Ok(self.transaction.execute(&statement, &[&kind, &value])? > 0)
    }

    fn revocation(&mut self, token_id: Option<&str>, subject: &str) -> StoreResult<Option<String>> {
        let statement = self.statement(
            "SELECT reason FROM revocations
             WHERE (kind = 'jti' AND value = $1) OR (kind = 'subject' AND value = $2) LIMIT 1",
        )?;
        Ok(self
            .transaction
            .query_opt(&statement, &[&token_id.unwrap_or(""), &subject])?
            .map(|row| row.get(0)))
    }

    fn open_break_glass(&mut self, grant: &NewBreakGlass<'_>) -> StoreResult<i64> {
        let statement = self.statement(
            "INSERT INTO break_glass (subject, patient, reason, opened_us, until_us, request_id)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING grant_id",
        )?;
        Ok(self
            .transaction
            .query_one(
                &statement,
                &[
                    &grant.subject,
                    &grant.patient,
                    &grant.reason,
                    &grant.opened_us,
                    &grant.until_us,
                    &grant.request_id,
                ],
            )?
            .get(0))
    }

    fn break_glass_patients(&mut self, subject: &str, now_us: i64) -> StoreResult<Vec<String>> {
        let statement = self.statement(
            "SELECT DISTINCT patient FROM break_glass
             WHERE subject = $1 AND until_us > $2",
        )?;
        let rows = self.transaction.query(&statement, &[&subject, &now_us])?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    fn break_glass_grants(&mut self, all: bool, limit: usize) -> StoreResult<Vec<BreakGlassGrant>> {
        let statement = self.statement(
            "SELECT grant_id, subject, patient, reason, opened_us, until_us, request_id,
                    closed_us, closed_by, review
             FROM break_glass WHERE $1 OR closed_us IS NULL ORDER BY grant_id DESC LIMIT $2",
        )?;
        let rows = self
            .transaction
            .query(&statement, &[&all, &(limit as i64)])?;
        Ok(rows
            .iter()
            .map(|row| BreakGlassGrant {
                grant_id: row.get(0),
                subject: row.get(1),
                patient: row.get(2),
                reason: row.get(3),
                opened_us: row.get(4),
                until_us: row.get(5),
                request_id: row.get(6),
                closed_us: row.get(7),
                closed_by: row.get(8),
                review: row.get(9),
            })
            .collect())
    }

    fn close_break_glass(
        &mut self,
        grant_id: i64,
        closed_by: &str,
        review: &str,
        closed_us: i64,
    ) -> StoreResult<bool> {
        let statement = self.statement(
            "UPDATE break_glass SET closed_us = $1, closed_by = $2, review = $3
             WHERE grant_id = $4 AND closed_us IS NULL",
        )?;
        Ok(self
            .transaction
            .execute(&statement, &[&closed_us, &closed_by, &review, &grant_id])?
            > 0)
    }

    fn append_audit(&mut self, recorded_us: i64, leaf: &[u8]) -> StoreResult<i64> {
        self.queue_leaf(recorded_us, leaf, None)
    }

    fn audit_leaves(&mut self, from: i64, limit: usize) -> StoreResult<Vec<(i64, Vec<u8>)>> {
        let statement = self.statement(AUDIT_LEAVES_SQL)?;
        let rows = self
            .transaction
            .query(&statement, &[&from, &(limit as i64)])?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    fn integrate_audit_leaves(
        &mut self,
        next_index: i64,
        limit: usize,
    ) -> StoreResult<Vec<(i64, LeafToIntegrate)>> {
        let statement = self.statement(INTEGRATE_AUDIT_SQL)?;
        let rows = self
            .transaction
            .query(&statement, &[&next_index, &(limit as i64)])?;
        let mut leaves = rows
            .iter()
            .map(|row| {
                let index: i64 = row.get(0);
                Ok((
                    index,
                    crate::leaf_to_integrate(index, row.get(1), row.get(2))?,
                ))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        leaves.sort_unstable_by_key(|(index, _)| *index);
        Ok(leaves)
    }

    fn audit_tree_leaves(
        &mut self,
        from: i64,
        limit: usize,
    ) -> StoreResult<Vec<(i64, Option<Vec<u8>>)>> {
        let statement = self.statement(AUDIT_TREE_LEAVES_SQL)?;
        let rows = self
            .transaction
            .query(&statement, &[&from, &(limit as i64)])?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    fn audit_nodes(&mut self, ids: &[(u32, i64)]) -> StoreResult<Vec<Option<[u8; 32]>>> {
        let statement = self.statement(AUDIT_NODES_SQL)?;
        let levels: Vec<i32> = ids.iter().map(|(level, _)| *level as i32).collect();
        let indices: Vec<i64> = ids.iter().map(|(_, index)| *index).collect();
        let rows = self.transaction.query(&statement, &[&levels, &indices])?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in &rows {
            let level: i32 = row.get(0);
            found.insert((level as u32, row.get::<_, i64>(1)), hash32(row.get(2))?);
        }
        Ok(ids.iter().map(|id| found.get(id).copied()).collect())
    }

    fn audit_node_range(
        &mut self,
        level: u32,
        from: i64,
        to: i64,
    ) -> StoreResult<Vec<(i64, [u8; 32])>> {
        let statement = self.statement(AUDIT_NODE_RANGE_SQL)?;
        let rows = self
            .transaction
            .query(&statement, &[&(level as i32), &from, &to])?;
        rows.iter()
            .map(|row| Ok((row.get(0), hash32(row.get(1))?)))
            .collect()
    }

    fn put_audit_nodes(&mut self, nodes: &[(u32, i64, [u8; 32])]) -> StoreResult<()> {
        if nodes.is_empty() {
            return Ok(());
        }
        let statement = self.statement(PUT_AUDIT_NODES_SQL)?;
        let levels: Vec<i32> = nodes.iter().map(|n| n.0 as i32).collect();
        let indices: Vec<i64> = nodes.iter().map(|n| n.1).collect();
        let hashes: Vec<&[u8]> = nodes.iter().map(|n| &n.2[..]).collect();
        self.transaction
            .execute(&statement, &[&levels, &indices, &hashes])?;
        Ok(())
    }

    fn put_audit_checkpoint(&mut self, checkpoint: &StoredCheckpoint) -> StoreResult<()> {
        let statement = self.statement(PUT_AUDIT_CHECKPOINT_SQL)?;
        self.transaction.execute(
            &statement,
            &[
                &checkpoint.tree_size,
                &&checkpoint.root[..],
                &checkpoint.note,
                &checkpoint.created_us,
            ],
        )?;
        Ok(())
    }

    fn audit_checkpoints(
        &mut self,
        from_size: i64,
        limit: usize,
    ) -> StoreResult<Vec<StoredCheckpoint>> {
        let statement = self.statement(AUDIT_CHECKPOINTS_SQL)?;
        let rows = self
            .transaction
            .query(&statement, &[&from_size, &(limit as i64)])?;
        rows.iter().map(checkpoint_from_row).collect()
    }

    fn latest_audit_checkpoint(&mut self) -> StoreResult<Option<StoredCheckpoint>> {
        let statement = self.statement(LATEST_AUDIT_CHECKPOINT_SQL)?;
        self.transaction
            .query_opt(&statement, &[])?
            .as_ref()
            .map(checkpoint_from_row)
            .transpose()
    }

    fn put_audit_cosignature(
        &mut self,
        tree_size: i64,
        witness: &str,
        note: &str,
        received_us: i64,
    ) -> StoreResult<()> {
        let statement = self.statement(PUT_AUDIT_COSIGNATURE_SQL)?;
        self.transaction
            .execute(&statement, &[&tree_size, &witness, &note, &received_us])?;
        Ok(())
    }

    fn append_audit_indexed(
        &mut self,
        recorded_us: i64,
        leaf: &[u8],
        leaf_hash: &[u8; 32],
        facets: &AuditFacets,
    ) -> StoreResult<i64> {
        self.queue_leaf(recorded_us, leaf, Some((*leaf_hash, facets.clone())))
    }

    fn prune_audit_leaves(&mut self, leaves: &[(i64, AuditFacets)]) -> StoreResult<()> {
        let forget = self.statement(PRUNE_AUDIT_LEAF_SQL)?;
        let unindex = self.statement(UNINDEX_AUDIT_SQL)?;
        for (index, facets) in leaves {
            let Some(row) = self.transaction.query_opt(&forget, &[index])? else {
                continue;
            };
            let number: i64 = row.get(0);
            let rows = audit_index::facet_rows(facets);
            let kinds: Vec<&str> = rows.iter().map(|(kind, _)| *kind).collect();
            let values: Vec<String> = rows.iter().map(|(_, v)| pg_text(v).into_owned()).collect();
            self.transaction
                .execute(&unindex, &[&kinds, &values, &number])?;
        }
        Ok(())
    }

    fn search_audit(&mut self, query: &AuditQuery) -> StoreResult<Vec<AuditHit>> {
        let (sql, params) = audit_index::audit_search_sql(Dialect::Postgres, query);
        let rows = self.query_bounded(&sql, &params)?;
        Ok(rows
            .iter()
            .map(|row| AuditHit {
                number: row.get(0),
                recorded_us: row.get(1),
                leaf: row.get(2),
            })
            .collect())
    }

    fn audit_event(&mut self, number: i64) -> StoreResult<Option<AuditHit>> {
        let statement = self.statement(AUDIT_EVENT_SQL)?;
        Ok(self
            .transaction
            .query_opt(&statement, &[&number])?
            .map(|row| AuditHit {
                number,
                recorded_us: row.get(0),
                leaf: row.get(1),
            }))
    }

    fn pending_audit_leaves(&mut self, _tree_size: i64) -> StoreResult<i64> {
        let statement = self.statement(PENDING_AUDIT_SQL)?;
        Ok(self.transaction.query_one(&statement, &[])?.get(0))
    }

    fn lock(&mut self, key: &str) -> StoreResult<()> {
        let statement = self.statement(LOCK_SQL)?;
        self.transaction.execute(&statement, &[&key])?;
        Ok(())
    }

    fn savepoint(&mut self) -> StoreResult<()> {
        let queued = self.pending_audit.leaves.len();
        self.pending_audit.savepoint_marks.push(queued);
        self.savepoints += 1;
        self.transaction
            .batch_execute(&format!("SAVEPOINT nested_{}", self.savepoints))?;
        Ok(())
    }

    fn rollback_to_savepoint(&mut self) -> StoreResult<()> {
        // Drops the leaves appended since the savepoint, as its rollback undoes the rows.
        let mark = self.pending_audit.savepoint_marks.pop().unwrap_or(0);
        self.pending_audit.leaves.truncate(mark);
        let name = self.savepoints;
        self.savepoints = self.savepoints.saturating_sub(1);
        self.transaction.batch_execute(&format!(
            "ROLLBACK TO SAVEPOINT nested_{name}; RELEASE SAVEPOINT nested_{name}"
        ))?;
        Ok(())
    }

    fn release_savepoint(&mut self) -> StoreResult<()> {
        self.pending_audit.savepoint_marks.pop();
        let name = self.savepoints;
        self.savepoints = self.savepoints.saturating_sub(1);
        self.transaction
            .batch_execute(&format!("RELEASE SAVEPOINT nested_{name}"))?;
        Ok(())
    }
}

/// PostgreSQL text cannot hold NUL, which a FHIR string may: index values and searched
/// values replace it alike (with U+FFFD), so equality and prefixes still mean the same.
fn pg_text(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection to `database`, migrated up to schema `version` and recorded as such,
    /// for a migration's test to fill before `migrate` runs the rest.
    fn at_schema_version(database: &crate::testing::ThrowawayDatabase, version: usize) -> Client {
        let mut client = Client::connect(&database.url, NoTls).unwrap();
        client.batch_execute(CREATE_MIGRATIONS_TABLE).unwrap();
        for (index, sql) in migrations::POSTGRES.iter().enumerate().take(version) {
            client.batch_execute(sql).unwrap();
            client
                .execute(
                    "INSERT INTO schema_migrations (version, applied_at_us) VALUES ($1, 0)",
                    &[&(index as i64 + 1)],
                )
                .unwrap();
        }
        client
    }

    /// Migration 12 fills each head's `patient_refs` from the reference index as the store
    /// would have written it (`patient_refs::encode`), NULL where that cannot be encoded.
    #[test]
    fn migration_12_fills_the_patients_of_every_head_from_the_index() {
        let database = crate::testing::ThrowawayDatabase::create();
        let mut client = at_schema_version(&database, 11);
        use patient_refs::migration_fixture::{OBSERVATIONS, index_rows};
        for (id, rows) in OBSERVATIONS {
            client
                .execute(
                    "INSERT INTO resources (resource_type, id, version, deleted, last_updated_us, seq)
                     VALUES ('Observation', $1, 1, false, 0, 0)",
                    &[id],
                )
                .unwrap();
            for (param, target_type, target) in rows.iter() {
                client
                    .execute(
                        "INSERT INTO search_reference (resource_type, id, param, grp, target_type, target_id, url)
                         VALUES ('Observation', $1, $2, 0, $3, $4, '')",
                        &[id, param, target_type, target],
                    )
                    .unwrap();
            }
        }
        migrate(&mut client).unwrap();

        for (id, rows) in OBSERVATIONS {
            let stored: Option<String> = client
                .query_one(
                    "SELECT patient_refs FROM resources WHERE resource_type = 'Observation' AND id = $1",
                    &[id],
                )
                .unwrap()
                .get(0);
            assert_eq!(
                stored,
                patient_refs::encode(&index_rows(rows)),
                "Observation/{id}"
            );
        }
    }

    /// Migration 13 keeps the audit tree's leaf hashes and its subtrees of 16 leaves and
    /// more, and removes levels 1 to 3, as on SQLite.
    #[test]
    fn migration_13_keeps_the_audit_trees_stored_levels_only() {
        let database = crate::testing::ThrowawayDatabase::create();
        let mut client = at_schema_version(&database, 12);
        for level in 0..6i32 {
            for index in 0..(64i64 >> level) {
                client
                    .execute(
                        "INSERT INTO audit_node (level, idx, hash) VALUES ($1, $2, $3)",
                        &[&level, &index, &vec![level as u8; 32]],
                    )
                    .unwrap();
            }
        }
        migrate(&mut client).unwrap();
        let kept: Vec<(i32, i64)> = client
            .query(
                "SELECT level, count(*) FROM audit_node GROUP BY level ORDER BY level",
                &[],
            )
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        assert_eq!(kept, vec![(0, 64), (4, 4), (5, 2)]);
    }

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact("postgres://hygie:s3cret@db:5432/hygie"),
            "postgres://hygie:***@db:5432/hygie"
        );
        assert_eq!(
            redact("postgres://postgres@127.0.0.1/test"),
            "postgres://postgres@127.0.0.1/test"
        );
    }
}
