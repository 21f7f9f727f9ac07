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
    // 2: the search index of every parameter type (issue 3), and the hub's own settings.
    r#"
    ALTER TABLE search_token ADD COLUMN grp INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE search_string (
        resource_type TEXT NOT NULL, id TEXT NOT NULL, param TEXT NOT NULL,
        grp INTEGER NOT NULL, normalized TEXT NOT NULL, exact TEXT NOT NULL
    );
    CREATE INDEX search_string_lookup ON search_string (resource_type, param, normalized);
    CREATE INDEX search_string_owner ON search_string (resource_type, id);
    CREATE TABLE search_date (
        resource_type TEXT NOT NULL, id TEXT NOT NULL, param TEXT NOT NULL,
        grp INTEGER NOT NULL, low INTEGER NOT NULL, high INTEGER NOT NULL
    );
    CREATE INDEX search_date_low ON search_date (resource_type, param, low);
    CREATE INDEX search_date_high ON search_date (resource_type, param, high);
    CREATE INDEX search_date_owner ON search_date (resource_type, id);
    CREATE TABLE search_number (
        resource_type TEXT NOT NULL, id TEXT NOT NULL, param TEXT NOT NULL,
        grp INTEGER NOT NULL, value REAL NOT NULL, low REAL NOT NULL, high REAL NOT NULL
    );
    CREATE INDEX search_number_lookup ON search_number (resource_type, param, low);
    CREATE INDEX search_number_owner ON search_number (resource_type, id);
    CREATE TABLE search_quantity (
        resource_type TEXT NOT NULL, id TEXT NOT NULL, param TEXT NOT NULL,
        grp INTEGER NOT NULL, system TEXT NOT NULL, code TEXT NOT NULL,
        value REAL NOT NULL, low REAL NOT NULL, high REAL NOT NULL
    );
    CREATE INDEX search_quantity_lookup ON search_quantity (resource_type, param, code, low);
    CREATE INDEX search_quantity_owner ON search_quantity (resource_type, id);
    CREATE TABLE search_reference (
        resource_type TEXT NOT NULL, id TEXT NOT NULL, param TEXT NOT NULL,
        grp INTEGER NOT NULL, target_type TEXT NOT NULL, target_id TEXT NOT NULL,
        url TEXT NOT NULL
    );
    CREATE INDEX search_reference_lookup ON search_reference (resource_type, param, target_id);
    CREATE INDEX search_reference_target ON search_reference (target_type, target_id);
    CREATE INDEX search_reference_owner ON search_reference (resource_type, id);
    CREATE TABLE search_uri (
        resource_type TEXT NOT NULL, id TEXT NOT NULL, param TEXT NOT NULL,
        grp INTEGER NOT NULL, value TEXT NOT NULL
    );
    CREATE INDEX search_uri_lookup ON search_uri (resource_type, param, value);
    CREATE INDEX search_uri_owner ON search_uri (resource_type, id);
    CREATE TABLE hub_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    "#,
    // 3: revoked tokens (by `jti`) and revoked principals (every token of a subject).
    r#"
    CREATE TABLE revocations (
        kind TEXT NOT NULL, value TEXT NOT NULL, revoked_us INTEGER NOT NULL,
        reason TEXT NOT NULL, PRIMARY KEY (kind, value)
    ) WITHOUT ROWID;
    "#,
    // 4: break-the-glass grants: who opened which patient, why, until when; and their review.
    r#"
    CREATE TABLE break_glass (
        grant_id INTEGER PRIMARY KEY AUTOINCREMENT, subject TEXT NOT NULL,
        patient TEXT NOT NULL, reason TEXT NOT NULL, opened_us INTEGER NOT NULL,
        until_us INTEGER NOT NULL, request_id TEXT NOT NULL, closed_us INTEGER,
        closed_by TEXT, review TEXT
    );
    CREATE INDEX break_glass_active ON break_glass (subject, until_us);
    "#,
    // 5: the audit log as an RFC 9162 Merkle tree: the hashes of its perfect subtrees
    // (level 0: the leaf hashes), the signed checkpoints, and witnesses' cosignatures.
    // SQLite appends leaves with their tree index (one writer, commit order).
    r#"
    CREATE TABLE audit_node (
        level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,
        PRIMARY KEY (level, idx)
    ) WITHOUT ROWID;
    CREATE TABLE audit_checkpoint (
        tree_size INTEGER PRIMARY KEY, root BLOB NOT NULL, note TEXT NOT NULL,
        created_us INTEGER NOT NULL
    );
    CREATE TABLE audit_cosignature (
        tree_size INTEGER NOT NULL, witness TEXT NOT NULL, note TEXT NOT NULL,
        received_us INTEGER NOT NULL, PRIMARY KEY (tree_size, witness)
    );
    "#,
    // 6: the audit trail's search index (see audit_index.rs): facets of each leaf, written
    // with it. Leaves recorded before this version are found by date and number only.
    // The leaf becomes nullable (retention prunes bodies, the tree keeps their hashes):
    // SQLite cannot drop a NOT NULL in place, so the table is rebuilt.
    r#"
    CREATE TABLE audit_log_v6 (
        leaf_index INTEGER PRIMARY KEY,
        recorded_us INTEGER NOT NULL,
        leaf BLOB,
        event_type TEXT, subtype TEXT, outcome TEXT, purpose TEXT
    );
    INSERT INTO audit_log_v6 (leaf_index, recorded_us, leaf)
        SELECT leaf_index, recorded_us, leaf FROM audit_log;
    DROP TABLE audit_log;
    ALTER TABLE audit_log_v6 RENAME TO audit_log;
    CREATE INDEX audit_log_recorded ON audit_log (recorded_us);
    CREATE TABLE audit_facet (
        kind TEXT NOT NULL, value TEXT NOT NULL, num INTEGER NOT NULL,
        PRIMARY KEY (kind, value, num)
    ) WITHOUT ROWID;
    "#,
    // 7: each leaf's RFC 9162 hash, computed when it is appended, so that the integrator
    // reads 32 bytes per leaf instead of the leaf (NULL for leaves appended before).
    r#"
    ALTER TABLE audit_log ADD COLUMN leaf_hash BLOB;
    "#,
    // 8: encryption at rest (hygie-vault). Each version names the data key its body is
    // sealed with (NULL: written before encryption, or a tombstone); `data_key` holds the
    // keys wrapped under the key file's slot keys (`key_id` is the slot), one current key
    // per scope (`patient/<id>`, `type/<Type>`); an erased key keeps its row, without
    // `wrapped`, so that its versions read as erased rather than as corrupt.
    r#"
    ALTER TABLE resource_versions ADD COLUMN key_id INTEGER;
    CREATE INDEX resource_versions_key ON resource_versions (key_id, seq) WHERE key_id IS NOT NULL;
    -- What is left to seal (versions written before encryption): empty once sealed, so
    -- that looking at every start costs nothing.
    CREATE INDEX resource_versions_unsealed ON resource_versions (seq)
        WHERE key_id IS NULL AND deleted = 0;
    CREATE TABLE data_key (
        key_id INTEGER PRIMARY KEY,
        scope TEXT NOT NULL,
        generation INTEGER NOT NULL,
        wrapped BLOB,
        is_current INTEGER NOT NULL,
        created_us INTEGER NOT NULL,
        erased_us INTEGER
    );
    CREATE UNIQUE INDEX data_key_current ON data_key (scope) WHERE is_current = 1;
    CREATE INDEX data_key_scope ON data_key (scope, key_id);
    "#,
    // 9: messages taken from other systems (HL7 v2 over MLLP), remembered so that a resend
    // is answered with the same acknowledgement and writes nothing: the sender and control
    // id as key, a digest of the content, when it was received (what retention prunes by)
    // and the acknowledgement answered.
    r#"
    CREATE TABLE inbound_message (
        message_key TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        received_us INTEGER NOT NULL,
        acknowledgement TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX inbound_message_received ON inbound_message (received_us);
    "#,
    // 10: the blind terms of names and addresses in an inverted index, one entry per
    // resource keyed by the seq of the version it describes (a B-tree row per term made a
    // new patient a hundred inserts in random places). Contentless: the terms are not
    // stored twice; deletable, so an update replaces its entry. The rows these replace
    // leave search_string when the hub rebuilds the index (its index version changed).
    r#"
    CREATE VIRTUAL TABLE search_term USING fts5(
        terms, content='', contentless_delete=1, tokenize='ascii', detail=none
    );
    "#,
    // 11: one index for references, keyed by target first. It answers both questions
    // that the two indexes it replaces answered: which resources of a type hold `param`
    // to a target (a search, a chain, a compartment) and which point at a target (merges,
    // deletes, `_revinclude`). A reference row was four B-tree inserts and is three: a
    // fifth of an admission's pages in the WAL were these two indexes' (bench/mllp).
    r#"
    DROP INDEX search_reference_lookup;
    DROP INDEX search_reference_target;
    CREATE INDEX search_reference_to
        ON search_reference (target_id, resource_type, param, target_type);
    "#,
    // 12: each head's references to patients (`patient_refs.rs`), filled from the index
    // here; NULL where a parameter or an id holds a separator (the index is asked then).
    r#"
    ALTER TABLE resources ADD COLUMN patient_refs TEXT;
    UPDATE resources SET patient_refs = (
        SELECT CASE
            WHEN count(*) = 0 THEN ''
            WHEN max(instr(s.param, char(9)) + instr(s.param, char(10))
                     + instr(s.target_id, char(9)) + instr(s.target_id, char(10))) > 0 THEN NULL
            ELSE (SELECT group_concat(line, char(10)) FROM (
                SELECT DISTINCT t.param || char(9) || t.target_id AS line
                FROM search_reference t
                WHERE t.resource_type = resources.resource_type AND t.id = resources.id
                  AND t.target_type = 'Patient'
                ORDER BY line))
        END
        FROM search_reference s
        WHERE s.resource_type = resources.resource_type AND s.id = resources.id
          AND s.target_type = 'Patient');
    "#,
    // 13: the audit tree keeps its leaf hashes (level 0) and its subtrees of 16 leaves and
    // more (`audit_level_is_stored`); levels 1 to 3 are recomputed from the leaf hashes.
    r#"
    DELETE FROM audit_node WHERE level BETWEEN 1 AND 3;
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
    // 2: the search index of every parameter type (issue 3), and the hub's own settings.
    // Values that may be long are indexed by hash (a btree entry holds at most ~2.7 kB);
    // normalized strings are cut to 256 bytes by the store before they are written.
    r#"
    ALTER TABLE search_token ADD COLUMN grp INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE search_string (
        resource_type TEXT NOT NULL, id TEXT COLLATE "C" NOT NULL, param TEXT NOT NULL,
        grp INTEGER NOT NULL, normalized TEXT COLLATE "C" NOT NULL, exact TEXT NOT NULL
    );
    CREATE INDEX search_string_lookup ON search_string (resource_type, param, normalized);
    CREATE INDEX search_string_owner ON search_string (resource_type, id);
    CREATE TABLE search_date (
        resource_type TEXT NOT NULL, id TEXT COLLATE "C" NOT NULL, param TEXT NOT NULL,
        grp INTEGER NOT NULL, low BIGINT NOT NULL, high BIGINT NOT NULL
    );
    CREATE INDEX search_date_low ON search_date (resource_type, param, low);
    CREATE INDEX search_date_high ON search_date (resource_type, param, high);
    CREATE INDEX search_date_owner ON search_date (resource_type, id);
    CREATE TABLE search_number (
        resource_type TEXT NOT NULL, id TEXT COLLATE "C" NOT NULL, param TEXT NOT NULL,
        grp INTEGER NOT NULL, value DOUBLE PRECISION NOT NULL,
        low DOUBLE PRECISION NOT NULL, high DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX search_number_lookup ON search_number (resource_type, param, low);
    CREATE INDEX search_number_owner ON search_number (resource_type, id);
    CREATE TABLE search_quantity (
        resource_type TEXT NOT NULL, id TEXT COLLATE "C" NOT NULL, param TEXT NOT NULL,
        grp INTEGER NOT NULL, system TEXT NOT NULL, code TEXT NOT NULL,
        value DOUBLE PRECISION NOT NULL, low DOUBLE PRECISION NOT NULL,
        high DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX search_quantity_lookup ON search_quantity (resource_type, param, md5(code), low);
    CREATE INDEX search_quantity_owner ON search_quantity (resource_type, id);
    CREATE TABLE search_reference (
        resource_type TEXT NOT NULL, id TEXT COLLATE "C" NOT NULL, param TEXT NOT NULL,
        grp INTEGER NOT NULL, target_type TEXT NOT NULL, target_id TEXT COLLATE "C" NOT NULL,
        url TEXT COLLATE "C" NOT NULL
    );
    CREATE INDEX search_reference_lookup ON search_reference (resource_type, param, target_id);
    CREATE INDEX search_reference_target ON search_reference (target_type, target_id);
    CREATE INDEX search_reference_owner ON search_reference (resource_type, id);
    CREATE TABLE search_uri (
        resource_type TEXT NOT NULL, id TEXT COLLATE "C" NOT NULL, param TEXT NOT NULL,
        grp INTEGER NOT NULL, value TEXT COLLATE "C" NOT NULL
    );
    CREATE INDEX search_uri_lookup ON search_uri (resource_type, param, md5(value));
    CREATE INDEX search_uri_owner ON search_uri (resource_type, id);
    CREATE TABLE hub_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    "#,
    // 3: revoked tokens (by `jti`) and revoked principals (every token of a subject).
    r#"
    CREATE TABLE revocations (
        kind TEXT COLLATE "C" NOT NULL, value TEXT COLLATE "C" NOT NULL,
        revoked_us BIGINT NOT NULL, reason TEXT NOT NULL, PRIMARY KEY (kind, value)
    );
    "#,
    // 4: break-the-glass grants: who opened which patient, why, until when; and their review.
    r#"
    CREATE TABLE break_glass (
        grant_id BIGSERIAL PRIMARY KEY, subject TEXT COLLATE "C" NOT NULL,
        patient TEXT COLLATE "C" NOT NULL, reason TEXT NOT NULL, opened_us BIGINT NOT NULL,
        until_us BIGINT NOT NULL, request_id TEXT NOT NULL, closed_us BIGINT,
        closed_by TEXT, review TEXT
    );
    CREATE INDEX break_glass_active ON break_glass (subject, until_us);
    "#,
    // 5: the audit log as an RFC 9162 Merkle tree. Several hub processes append
    // concurrently: `seq` orders appends (with gaps, and not in commit order); the one
    // integrator at a time gives each committed leaf its dense tree index (`leaf_index`).
    r#"
    ALTER TABLE audit_log RENAME COLUMN leaf_index TO seq;
    ALTER TABLE audit_log ADD COLUMN leaf_index BIGINT UNIQUE;
    CREATE INDEX audit_log_pending ON audit_log (seq) WHERE leaf_index IS NULL;
    CREATE TABLE audit_node (
        level INTEGER NOT NULL, idx BIGINT NOT NULL, hash BYTEA NOT NULL,
        PRIMARY KEY (level, idx)
    );
    CREATE TABLE audit_checkpoint (
        tree_size BIGINT PRIMARY KEY, root BYTEA NOT NULL, note TEXT NOT NULL,
        created_us BIGINT NOT NULL
    );
    CREATE TABLE audit_cosignature (
        tree_size BIGINT NOT NULL, witness TEXT NOT NULL, note TEXT NOT NULL,
        received_us BIGINT NOT NULL, PRIMARY KEY (tree_size, witness)
    );
    "#,
    // 6: the audit trail's search index (see audit_index.rs); `num` is `seq - 1`.
    r#"
    ALTER TABLE audit_log ADD COLUMN event_type TEXT, ADD COLUMN subtype TEXT,
        ADD COLUMN outcome TEXT, ADD COLUMN purpose TEXT,
        ALTER COLUMN leaf DROP NOT NULL;
    CREATE INDEX audit_log_recorded ON audit_log (recorded_us);
    CREATE TABLE audit_facet (
        kind TEXT NOT NULL, value TEXT COLLATE "C" NOT NULL, num BIGINT NOT NULL,
        PRIMARY KEY (kind, value, num)
    );
    "#,
    // 7: each leaf's RFC 9162 hash, as on SQLite.
    r#"
    ALTER TABLE audit_log ADD COLUMN leaf_hash BYTEA;
    "#,
    // 8: encryption at rest, as on SQLite.
    r#"
    ALTER TABLE resource_versions ADD COLUMN key_id BIGINT;
    CREATE INDEX resource_versions_key ON resource_versions (key_id, seq) WHERE key_id IS NOT NULL;
    CREATE INDEX resource_versions_unsealed ON resource_versions (seq)
        WHERE key_id IS NULL AND NOT deleted;
    CREATE TABLE data_key (
        key_id BIGSERIAL PRIMARY KEY,
        scope TEXT COLLATE "C" NOT NULL,
        generation BIGINT NOT NULL,
        wrapped BYTEA,
        is_current BOOLEAN NOT NULL,
        created_us BIGINT NOT NULL,
        erased_us BIGINT
    );
    CREATE UNIQUE INDEX data_key_current ON data_key (scope) WHERE is_current;
    CREATE INDEX data_key_scope ON data_key (scope, key_id);
    "#,
    // 9: remembered inbound messages, as on SQLite.
    r#"
    CREATE TABLE inbound_message (
        message_key TEXT COLLATE "C" PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        received_us BIGINT NOT NULL,
        acknowledgement TEXT NOT NULL
    );
    CREATE INDEX inbound_message_received ON inbound_message (received_us);
    "#,
    // 10: the blind terms of names and addresses, an array per resource under a GIN index
    // (whose pending list takes a new patient's hundred terms in one append).
    r#"
    CREATE TABLE search_term (
        resource_type TEXT COLLATE "C" NOT NULL,
        id TEXT COLLATE "C" NOT NULL,
        terms TEXT[] COLLATE "C" NOT NULL,
        PRIMARY KEY (resource_type, id)
    );
    CREATE INDEX search_term_terms ON search_term USING GIN (terms);
    "#,
    // 11: one index for references, keyed by target first, as on SQLite.
    r#"
    DROP INDEX search_reference_lookup;
    DROP INDEX search_reference_target;
    CREATE INDEX search_reference_to
        ON search_reference (target_id, resource_type, param, target_type);
    "#,
    // 12: each head's references to patients, as on SQLite.
    r#"
    ALTER TABLE resources ADD COLUMN patient_refs TEXT;
    UPDATE resources r SET patient_refs = (
        SELECT CASE
            WHEN count(*) = 0 THEN ''
            WHEN bool_or(strpos(s.param, E'\t') > 0 OR strpos(s.param, E'\n') > 0
                         OR strpos(s.target_id, E'\t') > 0 OR strpos(s.target_id, E'\n') > 0)
                THEN NULL
            ELSE string_agg(DISTINCT (s.param || E'\t' || s.target_id) COLLATE "C", E'\n'
                            ORDER BY (s.param || E'\t' || s.target_id) COLLATE "C")
        END
        FROM search_reference s
        WHERE s.resource_type = r.resource_type AND s.id = r.id AND s.target_type = 'Patient');
    "#,
    // 13: the audit tree keeps levels 0 and 4 up, as on SQLite.
    r#"
    DELETE FROM audit_node WHERE level BETWEEN 1 AND 3;
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
