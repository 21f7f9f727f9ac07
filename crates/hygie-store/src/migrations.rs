//! Versioned schema migrations. Each backend has its own ordered list; a migration is
//! applied once, in a transaction, and recorded in `schema_migrations`. A database whose
//! schema is newer than the binary is refused rather than misread.

/// SQLite migrations, in order. Index + 1 is the schema version.
pub const SQLITE: &[&str] = &[
    // 1: resource versions, heads, token index, audit log.
    r#"
    CREATE TABLE resource_versions (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        resource_type TEXT NOT NULL,
        id TEXT NOT NULL,
        version INTEGER NOT NULL,
        last_updated_us INTEGER NOT NULL,
        deleted INTEGER NOT NULL,
        body BLOB NOT NULL,
        UNIQUE (resource_type, id, version)
    );
    CREATE INDEX resource_versions_type_seq ON resource_versions (resource_type, seq);
    CREATE TABLE resources (
        resource_type TEXT NOT NULL,
        id TEXT NOT NULL,
        version INTEGER NOT NULL,
        deleted INTEGER NOT NULL,
        last_updated_us INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (resource_type, id)
    ) WITHOUT ROWID;
    CREATE TABLE search_token (
        resource_type TEXT NOT NULL,
        id TEXT NOT NULL,
        param TEXT NOT NULL,
        system TEXT NOT NULL,
        code TEXT NOT NULL
    );
    CREATE INDEX search_token_lookup ON search_token (resource_type, param, code, system);
    CREATE INDEX search_token_owner ON search_token (resource_type, id);
    CREATE TABLE audit_log (
        leaf_index INTEGER PRIMARY KEY,
        recorded_us INTEGER NOT NULL,
        leaf BLOB NOT NULL
    );
    "#,
];

/// PostgreSQL migrations, in order. Index + 1 is the schema version.
pub const POSTGRES: &[&str] = &[
    // 1: resource versions, heads, token index, audit log. Ids sort bytewise (COLLATE "C"),
    // as on SQLite, so paging cursors mean the same on both backends.
    r#"
    CREATE TABLE resource_versions (
        seq BIGSERIAL PRIMARY KEY,
        resource_type TEXT NOT NULL,
        id TEXT COLLATE "C" NOT NULL,
        version BIGINT NOT NULL,
        last_updated_us BIGINT NOT NULL,
        deleted BOOLEAN NOT NULL,
        body BYTEA NOT NULL,
        UNIQUE (resource_type, id, version)
    );
    CREATE INDEX resource_versions_type_seq ON resource_versions (resource_type, seq);
    CREATE TABLE resources (
        resource_type TEXT NOT NULL,
        id TEXT COLLATE "C" NOT NULL,
        version BIGINT NOT NULL,
        deleted BOOLEAN NOT NULL,
        last_updated_us BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        PRIMARY KEY (resource_type, id)
    );
    CREATE TABLE search_token (
        resource_type TEXT NOT NULL,
        id TEXT COLLATE "C" NOT NULL,
        param TEXT NOT NULL,
        system TEXT NOT NULL,
        code TEXT NOT NULL
    );
    -- Hashes, not values: a btree entry holds at most ~2.7 kB, and codes may be longer.
    CREATE INDEX search_token_lookup ON search_token (resource_type, param, md5(code));
    CREATE INDEX search_token_system ON search_token (resource_type, param, md5(system));
    CREATE INDEX search_token_owner ON search_token (resource_type, id);
    CREATE TABLE audit_log (
        leaf_index BIGSERIAL PRIMARY KEY,
        recorded_us BIGINT NOT NULL,
        leaf BYTEA NOT NULL
    );
    "#,
];

pub const CREATE_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version BIGINT PRIMARY KEY,
    applied_at_us BIGINT NOT NULL
)";

pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
