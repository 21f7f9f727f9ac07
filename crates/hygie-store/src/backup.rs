//! Backups at the level of tables: a consistent snapshot of every table the migrations
//! create, read row by row ([`Snapshot`]), and the loading of such rows into an empty
//! target at the same schema version ([`Restorer`]). Rows are plain [`Value`]s: what a
//! backup file looks like (encryption, framing) is the binary's business, not the store's.
//!
//! Consistency:
//! - SQLite: SQLite's online backup API copies every page of the database into a scratch
//!   file in one step, under one read transaction (a WAL snapshot: the hub keeps writing),
//!   and the rows are then read from that copy at leisure. Holding a read transaction
//!   for the whole dump instead would pin the WAL for minutes, and the writer waits for
//!   old readers once the WAL is past four times its limit (`sqlite_store.rs`): the copy
//!   holds it only for the time of a page copy. The cost is a scratch file the size of
//!   the database, removed afterwards.
//! - PostgreSQL: one `REPEATABLE READ, READ ONLY` transaction for the whole dump, each
//!   table read with `COPY … TO STDOUT (FORMAT binary)`, so every table is of one snapshot.
//!
//! Restore goes into an empty target only (a SQLite data directory that does not exist or
//! is empty; a PostgreSQL database without tables), of the same backend, creates the
//! schema with the migrations of the backup's version (the normal open migrates the rest),
//! loads the rows in one transaction (PostgreSQL: `COPY … FROM STDIN (FORMAT binary)`),
//! sets every sequence past what was restored, and commits once. Anything that fails
//! removes what the restore created: the data directory (or the files it created in an
//! empty one), or the PostgreSQL transaction that created the tables is rolled back.
//!
//! Limits: only the tables of [`TABLES`] are known (a database holding another table is
//! refused rather than half backed up), at most [`MAX_COLUMNS`] columns of the kinds of
//! [`ColumnKind`], values of at most [`MAX_VALUE_BYTES`].

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use postgres::{Client, NoTls};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use crate::migrations::{self, CREATE_MIGRATIONS_TABLE};
use crate::{StoreError, StoreResult};

/// Every table a backup holds, in the order a backup writes them: the settings and the
/// data keys first (a verifier needs them to open what follows), the audit leaves before
/// the tree's nodes. A table the migrations create must be listed here, or backups of a
/// database holding it are refused (`known_tables_are_those_the_migrations_create` in the
/// tests says which).
pub const TABLES: &[&str] = &[
    "schema_migrations",
    "hub_meta",
    "data_key",
    "resource_versions",
    "resources",
    "search_token",
    "search_string",
    "search_date",
    "search_number",
    "search_quantity",
    "search_reference",
    "search_uri",
    "revocations",
    "break_glass",
    "inbound_message",
    "audit_log",
    "audit_facet",
    "audit_node",
    "audit_checkpoint",
    "audit_cosignature",
];

/// Whether a table is left out of backups because the hub rebuilds it: the term index
/// (`search_term`, on SQLite an FTS5 table whose shadow tables are `search_term_*`). A
/// restore forgets the index version ([`crate::search::INDEX_VERSION_KEY`]), so the first
/// hub to open the restored store rebuilds the whole index, terms included.
pub fn rebuilt_not_backed_up(table: &str) -> bool {
    table == "search_term" || table.starts_with("search_term_")
}

const FORGET_INDEX_VERSION_SQLITE: &str = "DELETE FROM hub_meta WHERE key = ?1";
const FORGET_INDEX_VERSION_POSTGRES: &str = "DELETE FROM hub_meta WHERE key = $1";

/// Columns of one table, at most.
pub const MAX_COLUMNS: usize = 64;
/// Bytes of one value (a resource body, a leaf), at most: far above the request body
/// limit, below what PostgreSQL's `bytea` holds.
pub const MAX_VALUE_BYTES: usize = 256 << 20;
/// Bytes of a table or column name, at most.
pub const MAX_NAME_BYTES: usize = 63;

/// What a restore's PostgreSQL `COPY` sends at once, bytes.
const COPY_BATCH_BYTES: usize = 4 << 20;
/// How long a SQLite page copy retries while the database is locked.
const SQLITE_BUSY_RETRIES: u32 = 600;
/// The name of the embedded database in a data directory (as `sqlite_store.rs`).
const DATABASE_FILE: &str = "hygie.db";
/// Where a SQLite restore builds the database before renaming it into place.
const RESTORING_FILE: &str = "hygie.db.restoring";

/// Where a store lives: what a backup reads and what a restore writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Embedded SQLite in this data directory.
    Sqlite(PathBuf),
    /// A PostgreSQL database.
    Postgres(String),
}

impl Target {
    /// The target [`crate::open`] would open for the same arguments.
    pub fn resolve(database_url: Option<&str>, data_dir: &Path) -> StoreResult<Target> {
        match database_url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Target::Postgres(url.to_owned()))
            }
            Some(url) if url.starts_with("sqlite:") => Ok(Target::Sqlite(PathBuf::from(
                url.trim_start_matches("sqlite://")
                    .trim_start_matches("sqlite:"),
            ))),
            Some(other) => Err(StoreError::Config(format!(
                "unsupported database URL {other:?}: use postgres://… (or --data-dir for embedded SQLite)"
            ))),
            None => Ok(Target::Sqlite(data_dir.to_owned())),
        }
    }

    /// `"sqlite"` or `"postgres"`, as [`crate::Store::backend`] says.
    pub fn backend(&self) -> &'static str {
        match self {
            Target::Sqlite(_) => "sqlite",
            Target::Postgres(_) => "postgres",
        }
    }

    /// For messages: the data directory, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Target::Sqlite(dir) => format!("the data directory {}", dir.display()),
            Target::Postgres(url) => format!("the PostgreSQL database {}", redact(url)),
        }
    }
}

/// The kind of a column's values, the same on both backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    Integer,
    Real,
    Text,
    Blob,
    Boolean,
}

impl ColumnKind {
    /// One byte in a backup's table header.
    pub fn code(self) -> u8 {
        match self {
            ColumnKind::Integer => 1,
            ColumnKind::Real => 2,
            ColumnKind::Text => 3,
            ColumnKind::Blob => 4,
            ColumnKind::Boolean => 5,
        }
    }

    pub fn from_code(code: u8) -> Option<ColumnKind> {
        Some(match code {
            1 => ColumnKind::Integer,
            2 => ColumnKind::Real,
            3 => ColumnKind::Text,
            4 => ColumnKind::Blob,
            5 => ColumnKind::Boolean,
            _ => return None,
        })
    }
}

/// A column: its name and kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub kind: ColumnKind,
}

/// A table of a snapshot: its columns, in their order, and its rows in the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub name: String,
    pub columns: Vec<Column>,
    pub rows: u64,
}

/// One value of a row. SQLite's values are typed per value, not per column: a value is
/// written back as it was read.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
    Boolean(bool),
}

impl Value {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Integer(value) => Some(*value),
            _ => None,
        }
    }

    /// A boolean column: SQLite stores 0 or 1, PostgreSQL a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Boolean(value) => Some(*value),
            Value::Integer(value) => Some(*value != 0),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(text) => Some(text),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Blob(bytes) => Some(bytes),
            Value::Text(text) => Some(text.as_bytes()),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

/// A sequence's position: the highest number it has handed out (0: none). SQLite names
/// it by table (`sqlite_sequence`), PostgreSQL by `table.column`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceValue {
    pub name: String,
    pub value: i64,
}

/// A consistent snapshot of a store, read table by table (see the module's documentation).
pub struct Snapshot {
    /// Declared before the scratch directory: the connection closes before its file goes.
    source: Source,
    schema_version: i64,
    tables: Vec<TableInfo>,
    _scratch: Option<tempfile::TempDir>,
}

enum Source {
    Sqlite(Connection),
    Postgres(Client),
}

impl Snapshot {
    /// Takes the snapshot. `scratch_dir` receives SQLite's page copy (a directory of mode
    /// 0700, removed when the snapshot is dropped); put it on the backup's file system.
    /// Blocking: call it off the async workers.
    pub fn take(target: &Target, scratch_dir: &Path) -> StoreResult<Snapshot> {
        match target {
            Target::Sqlite(data_dir) => Snapshot::take_sqlite(data_dir, scratch_dir),
            Target::Postgres(url) => Snapshot::take_postgres(url),
        }
    }

    fn take_sqlite(data_dir: &Path, scratch_dir: &Path) -> StoreResult<Snapshot> {
        let path = data_dir.join(DATABASE_FILE);
        if !path.is_file() {
            return Err(StoreError::Config(format!(
                "there is no database at {}: is the data directory right?",
                path.display()
            )));
        }
        let source = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        source.busy_timeout(std::time::Duration::from_secs(30))?;
        let scratch = tempfile::Builder::new()
            .prefix(".hygie-backup-snapshot-")
            .tempdir_in(scratch_dir)
            .map_err(|e| {
                StoreError::Config(format!(
                    "cannot make a scratch directory in {} for the SQLite snapshot: {e}",
                    scratch_dir.display()
                ))
            })?;
        let mut copy = Connection::open(scratch.path().join(DATABASE_FILE))?;
        {
            let backup = rusqlite::backup::Backup::new(&source, &mut copy)?;
            let mut busy = 0;
            loop {
                // Every page in one step: one read transaction, so one snapshot. Steps of
                // a few pages would restart from the beginning after every write of the
                // hub, and might never end.
                match backup.step(-1)? {
                    rusqlite::backup::StepResult::Done => break,
                    rusqlite::backup::StepResult::More => {}
                    _ if busy < SQLITE_BUSY_RETRIES => {
                        busy += 1;
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    _ => {
                        return Err(StoreError::Database(format!(
                            "the database {} stayed locked for {} s: no snapshot could be copied",
                            path.display(),
                            SQLITE_BUSY_RETRIES / 20
                        )));
                    }
                }
            }
        }
        drop(source);
        copy.pragma_update(None, "query_only", true)?;
        let schema_version = sqlite_schema_version(&copy)?;
        let tables = sqlite_tables(&copy, true)?;
        Ok(Snapshot {
            source: Source::Sqlite(copy),
            schema_version,
            tables,
            _scratch: Some(scratch),
        })
    }

    fn take_postgres(url: &str) -> StoreResult<Snapshot> {
        let mut client = connect(url)?;
        client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")?;
        let schema_version = pg_schema_version(&mut client)?;
        let tables = pg_tables(&mut client, true)?;
        Ok(Snapshot {
            source: Source::Postgres(client),
            schema_version,
            tables,
            _scratch: None,
        })
    }

    pub fn backend(&self) -> &'static str {
        match self.source {
            Source::Sqlite(_) => "sqlite",
            Source::Postgres(_) => "postgres",
        }
    }

    /// The schema version: the highest applied migration.
    pub fn schema_version(&self) -> i64 {
        self.schema_version
    }

    /// The tables, in [`TABLES`] order, with their rows in the snapshot.
    pub fn tables(&self) -> &[TableInfo] {
        &self.tables
    }

    /// A `hub_meta` value.
    pub fn meta(&mut self, key: &str) -> StoreResult<Option<String>> {
        if !self.has_table("hub_meta") {
            return Ok(None);
        }
        Ok(match &mut self.source {
            Source::Sqlite(connection) => rusqlite::OptionalExtension::optional(
                connection.query_row("SELECT value FROM hub_meta WHERE key = ?1", [key], |row| {
                    row.get(0)
                }),
            )?,
            Source::Postgres(client) => client
                .query_opt("SELECT value FROM hub_meta WHERE key = $1", &[&key])?
                .map(|row| row.get(0)),
        })
    }

    /// The signed checkpoint of the largest tree: `(tree size, note)`.
    pub fn latest_checkpoint(&mut self) -> StoreResult<Option<(i64, String)>> {
        if !self.has_table("audit_checkpoint") {
            return Ok(None);
        }
        const SQL: &str =
            "SELECT tree_size, note FROM audit_checkpoint ORDER BY tree_size DESC LIMIT 1";
        Ok(match &mut self.source {
            Source::Sqlite(connection) => rusqlite::OptionalExtension::optional(
                connection.query_row(SQL, [], |row| Ok((row.get(0)?, row.get(1)?))),
            )?,
            Source::Postgres(client) => client
                .query_opt(SQL, &[])?
                .map(|row| (row.get(0), row.get(1))),
        })
    }

    /// Every sequence's position (see [`SequenceValue`]).
    pub fn sequences(&mut self) -> StoreResult<Vec<SequenceValue>> {
        match &mut self.source {
            Source::Sqlite(connection) => sqlite_sequences(connection),
            Source::Postgres(client) => {
                let mut found = Vec::new();
                for (table, column, sequence) in pg_serial_columns(client)? {
                    let row = client.query_one(
                        &format!("SELECT last_value, is_called FROM {sequence}"),
                        &[],
                    )?;
                    let (last, called): (i64, bool) = (row.get(0), row.get(1));
                    found.push(SequenceValue {
                        name: format!("{table}.{column}"),
                        value: if called { last } else { last - 1 },
                    });
                }
                Ok(found)
            }
        }
    }

    /// Reads every row of `table`, its columns in [`TableInfo`] order, and hands each to
    /// `row`; returns how many. `audit_log` comes in tree order (leaves not yet in the
    /// tree last), `audit_node` by level then index: what a verifier can replay.
    pub fn dump<E: From<StoreError>>(
        &mut self,
        table: &str,
        mut row: impl FnMut(&[Value]) -> Result<(), E>,
    ) -> Result<u64, E> {
        let info = self
            .tables
            .iter()
            .find(|info| info.name == table)
            .ok_or_else(|| StoreError::Config(format!("no table {table} in the snapshot")))?
            .clone();
        let columns = column_list(&info.columns);
        let backend = self.backend();
        let order = dump_order(backend, table);
        let mut count = 0u64;
        let mut values = Vec::with_capacity(info.columns.len());
        match &mut self.source {
            Source::Sqlite(connection) => {
                let sql = format!("SELECT {columns} FROM {table}{order}");
                let mut statement = connection.prepare(&sql).map_err(StoreError::from)?;
                let mut rows = statement.query([]).map_err(StoreError::from)?;
                while let Some(found) = rows.next().map_err(StoreError::from)? {
                    values.clear();
                    for index in 0..info.columns.len() {
                        let value = found.get_ref(index).map_err(StoreError::from)?;
                        values.push(sqlite_value(table, &info.columns[index].name, value)?);
                    }
                    row(&values)?;
                    count += 1;
                }
            }
            Source::Postgres(client) => {
                let types = pg_column_types(client, table)?;
                let sql = format!(
                    "COPY (SELECT {columns} FROM {table}{order}) TO STDOUT (FORMAT binary)"
                );
                let reader = client.copy_out(sql.as_str()).map_err(StoreError::from)?;
                let mut reader = BufReader::with_capacity(1 << 20, reader);
                read_copy_header(&mut reader)?;
                while read_copy_tuple(&mut reader, table, &types, &mut values)? {
                    row(&values)?;
                    count += 1;
                }
            }
        }
        Ok(count)
    }

    /// Ends the snapshot (the PostgreSQL transaction; the SQLite copy is removed).
    pub fn finish(mut self) -> StoreResult<()> {
        if let Source::Postgres(client) = &mut self.source {
            client.batch_execute("COMMIT")?;
        }
        Ok(())
    }

    fn has_table(&self, name: &str) -> bool {
        self.tables.iter().any(|info| info.name == name)
    }
}

/// Loads a backup's rows into an empty target (see the module's documentation). Dropped
/// without [`Restorer::commit`], it removes what it created.
pub struct Restorer {
    sink: Sink,
    tables: Vec<TableInfo>,
    /// Whether each table of `tables` was loaded.
    loaded: Vec<bool>,
    /// The table being loaded: its position in `tables`, rows so far.
    current: Option<(usize, u64)>,
    /// SQLite: the insert of the current table's rows.
    insert_sql: String,
    finished: bool,
}

enum Sink {
    Sqlite {
        /// `None` once closed (at commit).
        connection: Option<Connection>,
        data_dir: PathBuf,
        /// Whether the restore created the directory (else it was empty, and only the
        /// files it created are removed).
        created_dir: bool,
    },
    Postgres {
        client: Client,
        target: String,
        /// Per table being loaded: its PostgreSQL types, and the rows not yet sent.
        types: Vec<PgType>,
        buffer: Vec<u8>,
        buffered: u64,
    },
}

impl Restorer {
    /// Checks that `target` is empty and of `backend`, then creates the schema at
    /// `schema_version` (without recording it: the backup's `schema_migrations` rows are
    /// loaded like any table). Blocking.
    pub fn begin(target: &Target, backend: &str, schema_version: i64) -> StoreResult<Restorer> {
        if backend != target.backend() {
            return Err(StoreError::Config(format!(
                "the backup is of a {backend} store, and {} is {}: a backup is restored into the backend it was made from",
                target.describe(),
                target.backend()
            )));
        }
        let known = match target {
            Target::Sqlite(_) => migrations::SQLITE.len(),
            Target::Postgres(_) => migrations::POSTGRES.len(),
        } as i64;
        if schema_version > known {
            return Err(StoreError::SchemaTooNew {
                found: schema_version,
                known,
            });
        }
        if schema_version < 1 {
            return Err(StoreError::Config(format!(
                "schema version {schema_version} is not one a backup can be of"
            )));
        }
        let version = schema_version as usize;
        match target {
            Target::Sqlite(data_dir) => Restorer::begin_sqlite(data_dir, version),
            Target::Postgres(url) => Restorer::begin_postgres(url, version),
        }
    }

    fn begin_sqlite(data_dir: &Path, version: usize) -> StoreResult<Restorer> {
        let created_dir = match std::fs::read_dir(data_dir) {
            Ok(mut entries) => {
                if let Some(entry) = entries.next() {
                    let name = entry
                        .map(|entry| entry.file_name().to_string_lossy().into_owned())
                        .unwrap_or_default();
                    return Err(StoreError::Config(format!(
                        "the data directory {} is not empty (it holds {name}, …): restore into a new directory, or one that is empty; nothing was changed",
                        data_dir.display()
                    )));
                }
                false
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(data_dir).map_err(|e| {
                    StoreError::Config(format!("cannot create {}: {e}", data_dir.display()))
                })?;
                true
            }
            Err(error) => {
                return Err(StoreError::Config(format!(
                    "cannot read the data directory {}: {error}",
                    data_dir.display()
                )));
            }
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700));
        }
        let mut restorer = Restorer {
            sink: Sink::Sqlite {
                connection: None,
                data_dir: data_dir.to_owned(),
                created_dir,
            },
            tables: Vec::new(),
            loaded: Vec::new(),
            current: None,
            insert_sql: String::new(),
            finished: false,
        };
        // From here on, dropping `restorer` removes what was created.
        let connection = Connection::open(data_dir.join(RESTORING_FILE))?;
        // No journal, no fsync while loading: a failed restore deletes the file, and the
        // finished one is fsynced once before it is renamed into place.
        connection.pragma_update(None, "journal_mode", "OFF")?;
        connection.pragma_update(None, "synchronous", "OFF")?;
        connection.pragma_update(None, "cache_size", -65_536)?;
        connection.execute_batch("BEGIN")?;
        connection.execute_batch(CREATE_MIGRATIONS_TABLE)?;
        for sql in &migrations::SQLITE[..version] {
            connection.execute_batch(sql)?;
        }
        restorer.tables = sqlite_tables(&connection, false)?;
        restorer.loaded = vec![false; restorer.tables.len()];
        if let Sink::Sqlite {
            connection: slot, ..
        } = &mut restorer.sink
        {
            *slot = Some(connection);
        }
        Ok(restorer)
    }

    fn begin_postgres(url: &str, version: usize) -> StoreResult<Restorer> {
        let mut client = connect(url)?;
        client.batch_execute("BEGIN")?;
        // The migrations' lock: a hub starting on this database meanwhile waits for the
        // restore's commit, then finds the schema and migrates the rest.
        client.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&crate::postgres_store::MIGRATION_LOCK_KEY],
        )?;
        let present: Vec<String> = client
            .query(
                "SELECT n.nspname || '.' || c.relname FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                   AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
                 ORDER BY 1 LIMIT 6",
                &[],
            )?
            .iter()
            .map(|row| row.get(0))
            .collect();
        if !present.is_empty() {
            let _ = client.batch_execute("ROLLBACK");
            return Err(StoreError::Config(format!(
                "the PostgreSQL database {} is not empty (it holds {}{}): restore into a new, empty database (CREATE DATABASE …); nothing was changed",
                redact(url),
                present[..present.len().min(5)].join(", "),
                if present.len() > 5 { ", …" } else { "" }
            )));
        }
        client.batch_execute(CREATE_MIGRATIONS_TABLE)?;
        for sql in &migrations::POSTGRES[..version] {
            client.batch_execute(sql)?;
        }
        let tables = pg_tables(&mut client, false)?;
        Ok(Restorer {
            sink: Sink::Postgres {
                client,
                target: redact(url),
                types: Vec::new(),
                buffer: Vec::new(),
                buffered: 0,
            },
            loaded: vec![false; tables.len()],
            tables,
            current: None,
            insert_sql: String::new(),
            finished: false,
        })
    }

    /// The tables the schema of the backup's version has.
    pub fn tables(&self) -> &[TableInfo] {
        &self.tables
    }

    /// Starts loading `table`, whose rows have `columns`: the target's table must have
    /// exactly these, in this order.
    pub fn begin_table(&mut self, table: &str, columns: &[Column]) -> StoreResult<()> {
        if self.current.is_some() {
            return Err(StoreError::Config(format!(
                "table {table} starts before the previous one ended"
            )));
        }
        let position = self
            .tables
            .iter()
            .position(|info| info.name == table)
            .ok_or_else(|| {
                StoreError::Config(format!(
                    "the backup holds a table {table} that its schema version does not create"
                ))
            })?;
        if self.loaded[position] {
            return Err(StoreError::Config(format!(
                "the backup holds the table {table} twice"
            )));
        }
        let expected = &self.tables[position].columns;
        if expected != columns {
            return Err(StoreError::Config(format!(
                "the backup's table {table} has the columns ({}), but its schema version creates ({}): the database was changed by hand",
                describe_columns(columns),
                describe_columns(expected)
            )));
        }
        if let Sink::Postgres { client, types, .. } = &mut self.sink {
            *types = pg_column_types(client, table)?;
        }
        self.insert_sql = format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            column_list(columns),
            vec!["?"; columns.len()].join(", ")
        );
        self.current = Some((position, 0));
        Ok(())
    }

    /// Loads one row of the current table.
    pub fn row(&mut self, values: &[Value]) -> StoreResult<()> {
        let (position, rows) = self
            .current
            .as_mut()
            .ok_or_else(|| StoreError::Config("a row outside of any table".into()))?;
        let info = &self.tables[*position];
        if values.len() != info.columns.len() {
            return Err(StoreError::Config(format!(
                "a row of {} has {} values for {} columns",
                info.name,
                values.len(),
                info.columns.len()
            )));
        }
        *rows += 1;
        match &mut self.sink {
            Sink::Sqlite { connection, .. } => {
                let connection = connection.as_ref().expect("open until commit");
                let mut statement = connection.prepare_cached(&self.insert_sql)?;
                statement.execute(rusqlite::params_from_iter(values.iter().map(sqlite_param)))?;
            }
            Sink::Postgres {
                client,
                types,
                buffer,
                buffered,
                ..
            } => {
                write_copy_tuple(buffer, &info.name, &info.columns, types, values)?;
                *buffered += 1;
                if buffer.len() >= COPY_BATCH_BYTES {
                    let sent = flush_copy(client, info, buffer)?;
                    check_sent(&info.name, sent, *buffered)?;
                    *buffered = 0;
                }
            }
        }
        Ok(())
    }

    /// Ends the current table; returns its rows.
    pub fn end_table(&mut self) -> StoreResult<u64> {
        let (position, rows) = self
            .current
            .take()
            .ok_or_else(|| StoreError::Config("a table ends that did not start".into()))?;
        if let Sink::Postgres {
            client,
            buffer,
            buffered,
            ..
        } = &mut self.sink
            && *buffered > 0
        {
            let info = &self.tables[position];
            let sent = flush_copy(client, info, buffer)?;
            check_sent(&info.name, sent, *buffered)?;
            *buffered = 0;
        }
        self.tables[position].rows = rows;
        self.loaded[position] = true;
        Ok(rows)
    }

    /// Sets a sequence past `value` and past every number its column holds.
    pub fn set_sequence(&mut self, sequence: &SequenceValue) -> StoreResult<()> {
        let unknown = || {
            StoreError::Config(format!(
                "the backup has a sequence {} that its schema version does not create",
                sequence.name
            ))
        };
        match &mut self.sink {
            Sink::Sqlite { connection, .. } => {
                let connection = connection.as_ref().expect("open until commit");
                if !self.tables.iter().any(|info| info.name == sequence.name) {
                    return Err(unknown());
                }
                // Inserting rows with their numbers already moved it to their maximum;
                // the backup's value may be higher (rows deleted since).
                let changed = connection.execute(
                    "UPDATE sqlite_sequence SET seq = MAX(seq, ?1) WHERE name = ?2",
                    rusqlite::params![sequence.value, sequence.name],
                )?;
                if changed == 0 {
                    connection.execute(
                        "INSERT INTO sqlite_sequence (name, seq) VALUES (?1, ?2)",
                        rusqlite::params![sequence.name, sequence.value],
                    )?;
                }
            }
            Sink::Postgres { client, .. } => {
                let (table, column) = sequence.name.split_once('.').ok_or_else(unknown)?;
                let serial = pg_serial_columns(client)?;
                let (_, _, name) = serial
                    .iter()
                    .find(|(t, c, _)| t == table && c == column)
                    .ok_or_else(unknown)?;
                let highest: i64 = client
                    .query_one(
                        &format!("SELECT COALESCE(MAX({column}), 0)::BIGINT FROM {table}"),
                        &[],
                    )?
                    .get(0);
                let value = highest.max(sequence.value);
                if value >= 1 {
                    client.execute(&format!("SELECT setval('{name}', $1, true)"), &[&value])?;
                } else {
                    client.execute(&format!("SELECT setval('{name}', 1, false)"), &[])?;
                }
            }
        }
        Ok(())
    }

    /// Commits: every table of the schema must have been loaded. SQLite: the file is
    /// fsynced, renamed to `hygie.db` and the directory fsynced.
    pub fn commit(mut self) -> StoreResult<()> {
        if self.current.is_some() {
            return Err(StoreError::Config("the backup ends inside a table".into()));
        }
        if let Some(position) = self.loaded.iter().position(|loaded| !loaded) {
            return Err(StoreError::Config(format!(
                "the backup has no table {}, which its schema version creates",
                self.tables[position].name
            )));
        }
        match &mut self.sink {
            Sink::Sqlite {
                connection,
                data_dir,
                ..
            } => {
                let open = connection.take().expect("open until commit");
                open.execute(
                    FORGET_INDEX_VERSION_SQLITE,
                    [crate::search::INDEX_VERSION_KEY],
                )?;
                open.execute_batch("COMMIT")?;
                open.close().map_err(|(_, error)| StoreError::from(error))?;
                let restoring = data_dir.join(RESTORING_FILE);
                let io = |what: &str, error: std::io::Error| {
                    StoreError::Config(format!("cannot {what} {}: {error}", restoring.display()))
                };
                std::fs::File::open(&restoring)
                    .and_then(|file| file.sync_all())
                    .map_err(|e| io("fsync", e))?;
                std::fs::rename(&restoring, data_dir.join(DATABASE_FILE))
                    .map_err(|e| io("rename", e))?;
                std::fs::File::open(&*data_dir)
                    .and_then(|dir| dir.sync_all())
                    .map_err(|e| io("fsync the directory of", e))?;
            }
            Sink::Postgres { client, .. } => {
                client.execute(
                    FORGET_INDEX_VERSION_POSTGRES,
                    &[&crate::search::INDEX_VERSION_KEY],
                )?;
                client.batch_execute("COMMIT")?
            }
        }
        self.finished = true;
        Ok(())
    }

    /// Removes what the restore created; says what that was.
    pub fn abort(mut self) -> String {
        self.undo()
    }

    fn undo(&mut self) -> String {
        self.finished = true;
        match &mut self.sink {
            Sink::Sqlite {
                connection,
                data_dir,
                created_dir,
            } => {
                drop(connection.take());
                if *created_dir {
                    match std::fs::remove_dir_all(&*data_dir) {
                        Ok(()) => format!(
                            "the data directory {} it had created was removed",
                            data_dir.display()
                        ),
                        Err(error) => format!(
                            "the data directory {} it had created could not be removed ({error}): remove it by hand",
                            data_dir.display()
                        ),
                    }
                } else {
                    let restoring = data_dir.join(RESTORING_FILE);
                    match std::fs::remove_file(&restoring) {
                        Ok(()) => format!(
                            "the file it had created in {} was removed",
                            data_dir.display()
                        ),
                        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                            "nothing had been created".to_owned()
                        }
                        Err(error) => format!(
                            "{} could not be removed ({error}): remove it by hand",
                            restoring.display()
                        ),
                    }
                }
            }
            Sink::Postgres { client, target, .. } => match client.batch_execute("ROLLBACK") {
                Ok(()) => format!(
                    "the transaction was rolled back: the PostgreSQL database {target} is left without tables"
                ),
                // A lost connection rolls the transaction back too.
                Err(_) if client.is_closed() => format!(
                    "the connection was lost, which rolled the transaction back: the PostgreSQL database {target} is left without tables"
                ),
                Err(error) => format!(
                    "the transaction could not be rolled back ({error}): check the PostgreSQL database {target}, and drop its tables"
                ),
            },
        }
    }
}

impl Drop for Restorer {
    fn drop(&mut self) {
        if !self.finished {
            let what = self.undo();
            tracing::warn!("restore abandoned: {what}");
        }
    }
}

fn connect(url: &str) -> StoreResult<Client> {
    let config: postgres::Config = url
        .parse()
        .map_err(|e| StoreError::Config(format!("invalid PostgreSQL URL: {e}")))?;
    config.connect(NoTls).map_err(|e| {
        StoreError::Config(format!(
            "cannot connect to PostgreSQL ({}): {e}",
            redact(url)
        ))
    })
}

fn redact(url: &str) -> String {
    crate::postgres_store::redact(url)
}

fn column_list(columns: &[Column]) -> String {
    columns
        .iter()
        .map(|column| column.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe_columns(columns: &[Column]) -> String {
    columns
        .iter()
        .map(|column| format!("{} {:?}", column.name, column.kind))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The order a table is dumped in, when it matters to a verifier.
fn dump_order(backend: &str, table: &str) -> &'static str {
    match (backend, table) {
        ("sqlite", "audit_log") => " ORDER BY leaf_index",
        ("postgres", "audit_log") => " ORDER BY leaf_index NULLS LAST, seq",
        (_, "audit_node") => " ORDER BY level, idx",
        _ => "",
    }
}

/// A name read from the database, checked before it is put into SQL.
fn checked_name(name: &str) -> StoreResult<&str> {
    let plain = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_');
    if plain {
        Ok(name)
    } else {
        Err(StoreError::Config(format!(
            "the name {name:?} is not one backups know (lowercase letters, digits, _)"
        )))
    }
}

/// The tables of the database, in [`TABLES`] order; with `refuse_unknown`, a table not
/// in [`TABLES`] is an error (a backup would lose it).
fn order_tables(found: Vec<TableInfo>, refuse_unknown: bool) -> StoreResult<Vec<TableInfo>> {
    if refuse_unknown
        && let Some(unknown) = found
            .iter()
            .find(|info| !TABLES.contains(&info.name.as_str()))
    {
        return Err(StoreError::Config(format!(
            "the database has a table {} that backups do not know (hygie-store backup::TABLES): a backup would lose it, so none is made",
            unknown.name
        )));
    }
    let mut ordered: Vec<TableInfo> = Vec::with_capacity(found.len());
    for name in TABLES {
        if let Some(info) = found.iter().find(|info| info.name == *name) {
            ordered.push(info.clone());
        }
    }
    Ok(ordered)
}

fn sqlite_schema_version(connection: &Connection) -> StoreResult<i64> {
    Ok(connection.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |row| row.get(0),
    )?)
}

fn sqlite_tables(connection: &Connection, count_rows: bool) -> StoreResult<Vec<TableInfo>> {
    let names: Vec<String> = connection
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let mut found = Vec::with_capacity(names.len());
    for name in names
        .into_iter()
        .filter(|name| !rebuilt_not_backed_up(name))
    {
        let name = checked_name(&name)?.to_owned();
        let mut columns = Vec::new();
        let mut statement = connection.prepare(&format!("PRAGMA table_info({name})"))?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let column: String = row.get(1)?;
            let declared: String = row.get(2)?;
            columns.push(Column {
                kind: sqlite_kind(&name, &column, &declared)?,
                name: checked_name(&column)?.to_owned(),
            });
        }
        if columns.len() > MAX_COLUMNS {
            return Err(StoreError::Config(format!(
                "table {name} has {} columns, more than backups take ({MAX_COLUMNS})",
                columns.len()
            )));
        }
        let rows = if count_rows {
            connection.query_row(&format!("SELECT COUNT(*) FROM {name}"), [], |row| {
                row.get::<_, i64>(0)
            })? as u64
        } else {
            0
        };
        found.push(TableInfo {
            name,
            columns,
            rows,
        });
    }
    order_tables(found, count_rows)
}

fn sqlite_kind(table: &str, column: &str, declared: &str) -> StoreResult<ColumnKind> {
    let declared = declared.to_ascii_uppercase();
    Ok(if declared.contains("INT") {
        ColumnKind::Integer
    } else if declared.contains("TEXT") || declared.contains("CHAR") {
        ColumnKind::Text
    } else if declared.contains("BLOB") {
        ColumnKind::Blob
    } else if declared.contains("REAL") || declared.contains("DOUB") {
        ColumnKind::Real
    } else {
        return Err(StoreError::Config(format!(
            "column {table}.{column} is declared {declared:?}, a type backups do not know"
        )));
    })
}

fn sqlite_sequences(connection: &Connection) -> StoreResult<Vec<SequenceValue>> {
    let exists: i64 = connection.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE name = 'sqlite_sequence'",
        [],
        |row| row.get(0),
    )?;
    if exists == 0 {
        return Ok(Vec::new());
    }
    let mut statement =
        connection.prepare("SELECT name, seq FROM sqlite_sequence ORDER BY name")?;
    let found = statement
        .query_map([], |row| {
            Ok(SequenceValue {
                name: row.get(0)?,
                value: row.get(1)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(found)
}

fn sqlite_value(table: &str, column: &str, value: ValueRef<'_>) -> StoreResult<Value> {
    let too_large = |len: usize| {
        StoreError::Config(format!(
            "a value of {table}.{column} has {len} bytes, more than backups take ({MAX_VALUE_BYTES})"
        ))
    };
    Ok(match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(value) => Value::Integer(value),
        ValueRef::Real(value) => Value::Real(value),
        ValueRef::Text(bytes) => {
            if bytes.len() > MAX_VALUE_BYTES {
                return Err(too_large(bytes.len()));
            }
            Value::Text(String::from_utf8(bytes.to_vec()).map_err(|_| {
                StoreError::Database(format!("a text of {table}.{column} is not UTF-8"))
            })?)
        }
        ValueRef::Blob(bytes) => {
            if bytes.len() > MAX_VALUE_BYTES {
                return Err(too_large(bytes.len()));
            }
            Value::Blob(bytes.to_vec())
        }
    })
}

fn sqlite_param(value: &Value) -> rusqlite::types::ToSqlOutput<'_> {
    use rusqlite::types::{ToSqlOutput, ValueRef as Ref};
    ToSqlOutput::Borrowed(match value {
        Value::Null => Ref::Null,
        Value::Integer(value) => Ref::Integer(*value),
        Value::Real(value) => Ref::Real(*value),
        Value::Text(text) => Ref::Text(text.as_bytes()),
        Value::Blob(bytes) => Ref::Blob(bytes),
        Value::Boolean(value) => Ref::Integer(i64::from(*value)),
    })
}

// --- PostgreSQL -----------------------------------------------------------------------

/// The PostgreSQL types the migrations use, as `COPY … (FORMAT binary)` sends them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PgType {
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Bool,
    Text,
    Bytea,
}

impl PgType {
    fn from_udt(table: &str, column: &str, udt: &str) -> StoreResult<PgType> {
        Ok(match udt {
            "int2" => PgType::Int2,
            "int4" => PgType::Int4,
            "int8" => PgType::Int8,
            "float4" => PgType::Float4,
            "float8" => PgType::Float8,
            "bool" => PgType::Bool,
            "text" | "varchar" => PgType::Text,
            "bytea" => PgType::Bytea,
            other => {
                return Err(StoreError::Config(format!(
                    "column {table}.{column} is of type {other}, a type backups do not know"
                )));
            }
        })
    }

    fn kind(self) -> ColumnKind {
        match self {
            PgType::Int2 | PgType::Int4 | PgType::Int8 => ColumnKind::Integer,
            PgType::Float4 | PgType::Float8 => ColumnKind::Real,
            PgType::Bool => ColumnKind::Boolean,
            PgType::Text => ColumnKind::Text,
            PgType::Bytea => ColumnKind::Blob,
        }
    }
}

fn pg_schema_version(client: &mut Client) -> StoreResult<i64> {
    Ok(client
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations",
            &[],
        )?
        .get(0))
}

fn pg_columns(client: &mut Client, table: &str) -> StoreResult<Vec<(String, PgType)>> {
    let rows = client.query(
        "SELECT column_name::TEXT, udt_name::TEXT FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        &[&table],
    )?;
    let mut columns = Vec::with_capacity(rows.len());
    for row in &rows {
        let name: String = row.get(0);
        let udt: String = row.get(1);
        let kind = PgType::from_udt(table, &name, &udt)?;
        columns.push((checked_name(&name)?.to_owned(), kind));
    }
    if columns.len() > MAX_COLUMNS {
        return Err(StoreError::Config(format!(
            "table {table} has {} columns, more than backups take ({MAX_COLUMNS})",
            columns.len()
        )));
    }
    Ok(columns)
}

fn pg_column_types(client: &mut Client, table: &str) -> StoreResult<Vec<PgType>> {
    Ok(pg_columns(client, table)?
        .into_iter()
        .map(|(_, kind)| kind)
        .collect())
}

fn pg_tables(client: &mut Client, count_rows: bool) -> StoreResult<Vec<TableInfo>> {
    let names: Vec<String> = client
        .query(
            "SELECT tablename::TEXT FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1",
            &[],
        )?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut found = Vec::with_capacity(names.len());
    for name in names
        .into_iter()
        .filter(|name| !rebuilt_not_backed_up(name))
    {
        let name = checked_name(&name)?.to_owned();
        let columns = pg_columns(client, &name)?
            .into_iter()
            .map(|(column, kind)| Column {
                name: column,
                kind: kind.kind(),
            })
            .collect();
        let rows = if count_rows {
            client
                .query_one(&format!("SELECT COUNT(*)::BIGINT FROM {name}"), &[])?
                .get::<_, i64>(0) as u64
        } else {
            0
        };
        found.push(TableInfo {
            name,
            columns,
            rows,
        });
    }
    order_tables(found, count_rows)
}

/// `(table, column, sequence)` of every column numbered by a sequence.
fn pg_serial_columns(client: &mut Client) -> StoreResult<Vec<(String, String, String)>> {
    let rows = client.query(
        "SELECT table_name::TEXT, column_name::TEXT,
                pg_get_serial_sequence(quote_ident(table_name), column_name)::TEXT
         FROM information_schema.columns
         WHERE table_schema = current_schema() AND column_default LIKE 'nextval(%'
         ORDER BY 1, 2",
        &[],
    )?;
    let mut found = Vec::with_capacity(rows.len());
    for row in &rows {
        let (table, column): (String, String) = (row.get(0), row.get(1));
        let sequence: Option<String> = row.get(2);
        let sequence = sequence.ok_or_else(|| {
            StoreError::Database(format!("{table}.{column} has no sequence of its own"))
        })?;
        // `schema.name`, each part checked before it is put into SQL.
        for part in sequence.split('.') {
            checked_name(part)?;
        }
        found.push((table, column, sequence));
    }
    Ok(found)
}

const COPY_SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

fn copy_error(table: &str, what: &str) -> StoreError {
    StoreError::Database(format!("COPY of {table}: {what}"))
}

fn read_copy_header(reader: &mut impl Read) -> StoreResult<()> {
    let mut header = [0u8; 19];
    reader
        .read_exact(&mut header)
        .map_err(|e| StoreError::Database(format!("COPY header: {e}")))?;
    if &header[..11] != COPY_SIGNATURE {
        return Err(StoreError::Database(
            "COPY did not answer in its binary format".into(),
        ));
    }
    let extension = u32::from_be_bytes(header[15..19].try_into().expect("4 bytes"));
    std::io::copy(&mut reader.take(u64::from(extension)), &mut std::io::sink())
        .map_err(|e| StoreError::Database(format!("COPY header: {e}")))?;
    Ok(())
}

/// Reads one tuple into `values`; false at the end of the data.
fn read_copy_tuple(
    reader: &mut impl BufRead,
    table: &str,
    types: &[PgType],
    values: &mut Vec<Value>,
) -> StoreResult<bool> {
    let io = |e: std::io::Error| copy_error(table, &e.to_string());
    let mut count = [0u8; 2];
    reader.read_exact(&mut count).map_err(io)?;
    let count = i16::from_be_bytes(count);
    if count == -1 {
        return Ok(false);
    }
    if count as usize != types.len() {
        return Err(copy_error(
            table,
            &format!("a tuple of {count} fields for {} columns", types.len()),
        ));
    }
    values.clear();
    for kind in types {
        let mut length = [0u8; 4];
        reader.read_exact(&mut length).map_err(io)?;
        let length = i32::from_be_bytes(length);
        if length == -1 {
            values.push(Value::Null);
            continue;
        }
        let length = usize::try_from(length).map_err(|_| copy_error(table, "a negative length"))?;
        if length > MAX_VALUE_BYTES {
            return Err(copy_error(
                table,
                &format!("a value of {length} bytes, more than backups take ({MAX_VALUE_BYTES})"),
            ));
        }
        let mut bytes = vec![0u8; length];
        reader.read_exact(&mut bytes).map_err(io)?;
        let fixed = |size: usize| -> StoreResult<()> {
            if length == size {
                Ok(())
            } else {
                Err(copy_error(table, &format!("{kind:?} of {length} bytes")))
            }
        };
        values.push(match kind {
            PgType::Int2 => {
                fixed(2)?;
                Value::Integer(i16::from_be_bytes([bytes[0], bytes[1]]).into())
            }
            PgType::Int4 => {
                fixed(4)?;
                Value::Integer(i32::from_be_bytes(bytes[..4].try_into().expect("4")).into())
            }
            PgType::Int8 => {
                fixed(8)?;
                Value::Integer(i64::from_be_bytes(bytes[..8].try_into().expect("8")))
            }
            PgType::Float4 => {
                fixed(4)?;
                Value::Real(f32::from_be_bytes(bytes[..4].try_into().expect("4")).into())
            }
            PgType::Float8 => {
                fixed(8)?;
                Value::Real(f64::from_be_bytes(bytes[..8].try_into().expect("8")))
            }
            PgType::Bool => {
                fixed(1)?;
                Value::Boolean(bytes[0] != 0)
            }
            PgType::Text => Value::Text(
                String::from_utf8(bytes).map_err(|_| copy_error(table, "a text is not UTF-8"))?,
            ),
            PgType::Bytea => Value::Blob(bytes),
        });
    }
    Ok(true)
}

fn write_copy_tuple(
    buffer: &mut Vec<u8>,
    table: &str,
    columns: &[Column],
    types: &[PgType],
    values: &[Value],
) -> StoreResult<()> {
    if types.len() != values.len() {
        return Err(copy_error(
            table,
            "the row does not fit the table's columns",
        ));
    }
    buffer.extend_from_slice(&(values.len() as i16).to_be_bytes());
    for ((value, kind), column) in values.iter().zip(types).zip(columns) {
        let wrong = || {
            StoreError::Config(format!(
                "a value of {table}.{} is {value_kind} where the column is {kind:?}",
                column.name,
                value_kind = value_kind(value)
            ))
        };
        let mut field = |bytes: &[u8]| {
            buffer.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
            buffer.extend_from_slice(bytes);
        };
        match (kind, value) {
            (_, Value::Null) => buffer.extend_from_slice(&(-1i32).to_be_bytes()),
            (PgType::Int2, Value::Integer(v)) => {
                field(&i16::try_from(*v).map_err(|_| wrong())?.to_be_bytes())
            }
            (PgType::Int4, Value::Integer(v)) => {
                field(&i32::try_from(*v).map_err(|_| wrong())?.to_be_bytes())
            }
            (PgType::Int8, Value::Integer(v)) => field(&v.to_be_bytes()),
            (PgType::Float4, Value::Real(v)) => field(&(*v as f32).to_be_bytes()),
            (PgType::Float8, Value::Real(v)) => field(&v.to_be_bytes()),
            (PgType::Bool, Value::Boolean(v)) => field(&[u8::from(*v)]),
            (PgType::Text, Value::Text(text)) => field(text.as_bytes()),
            (PgType::Bytea, Value::Blob(bytes)) => field(bytes),
            _ => return Err(wrong()),
        }
    }
    Ok(())
}

fn value_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Integer(_) => "an integer",
        Value::Real(_) => "a real",
        Value::Text(_) => "a text",
        Value::Blob(_) => "bytes",
        Value::Boolean(_) => "a boolean",
    }
}

/// Sends the buffered tuples of `table` in one `COPY … FROM STDIN`; returns the rows the
/// server counted.
fn flush_copy(client: &mut Client, info: &TableInfo, buffer: &mut Vec<u8>) -> StoreResult<u64> {
    let sql = format!(
        "COPY {} ({}) FROM STDIN (FORMAT binary)",
        info.name,
        column_list(&info.columns)
    );
    let mut writer = client.copy_in(sql.as_str())?;
    let io = |e: std::io::Error| copy_error(&info.name, &e.to_string());
    writer.write_all(COPY_SIGNATURE).map_err(io)?;
    writer.write_all(&[0u8; 8]).map_err(io)?; // flags, header extension length
    writer.write_all(buffer).map_err(io)?;
    writer.write_all(&(-1i16).to_be_bytes()).map_err(io)?;
    buffer.clear();
    Ok(writer.finish()?)
}

fn check_sent(table: &str, sent: u64, buffered: u64) -> StoreResult<()> {
    if sent == buffered {
        Ok(())
    } else {
        Err(copy_error(
            table,
            &format!("the server took {sent} rows of {buffered}"),
        ))
    }
}
