//! What `verify` and `restore` check of a backup's records, as they stream by, without a
//! database: the tables are those the header lists with as many rows, every data key
//! unwraps with the key file (erased ones are counted, not errors), every sealed version
//! opens with its key and its row (`type/id/_history/version`), and the audit leaves hash
//! to the tree whose root the latest checkpoint signed, with the log key the backup holds.
//!
//! Memory: every unwrapped data key is kept (about 100 bytes each: 1 M patients, some
//! 100 MB), `hub_meta` (at most [`MAX_META_ROWS`]), and one digest per
//! [`AUDIT_BLOCK_LEAVES`] leaves; rows are checked and dropped one by one.
//!
//! The audit leaves come in tree order before the tree's nodes (`hygie_store::backup`): each
//! leaf with a body is hashed (RFC 9162) into a digest per block of leaves, each stored leaf
//! hash (level 0 of `audit_node`) into another and into the tree's root. Equal digests say
//! every leaf hashes to its stored hash, and the stored hashes give the signed root. Leaves
//! pruned by retention (a prefix) count with their stored hashes, as `audit verify` counts
//! them.

use std::collections::HashMap;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use hygie_audit::checkpoint::{NoteSigner, open_checkpoint};
use hygie_audit::merkle::{self, Hash, StreamVerifier};
use hygie_store::backup::{Column, Value};
use hygie_vault::{DataKey, Keyring, VaultError, aead};
use sha2::{Digest, Sha256};

use super::format::Header;

/// `hub_meta` rows kept, at most (settings, keys' check values, witnesses' lines).
pub const MAX_META_ROWS: usize = 100_000;
/// Leaves per digest of the audit comparison: a mismatch is named to this block.
pub const AUDIT_BLOCK_LEAVES: u64 = 65_536;

/// What a verification went through.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub tables: usize,
    pub rows: u64,
    pub data_keys: u64,
    /// Data keys erased in the database, or whose slot the key file has punctured since.
    pub erased_keys: u64,
    pub versions_opened: u64,
    /// Versions sealed with an erased key: unreadable, by design.
    pub versions_erased: u64,
    /// Versions stored before encryption at rest (not sealed).
    pub versions_in_clear: u64,
    pub tombstones: u64,
    /// Whether the log has a signed checkpoint (verified), and its leaves, checked against
    /// its root.
    pub checkpoint: bool,
    pub checkpoint_size: u64,
    pub leaves: u64,
    pub pruned_leaves: u64,
    /// Leaves appended but not yet in the tree (PostgreSQL).
    pub pending_leaves: u64,
}

enum KeyState {
    Live(DataKey),
    Erased,
}

struct TableState {
    name: String,
    columns: Vec<Column>,
    rows: u64,
}

/// Checks records one by one; [`Checker::finish`] says whether the whole backup passed.
pub struct Checker<'k> {
    keyring: &'k Keyring,
    header: Header,
    /// The next table of the header expected.
    next_table: usize,
    table: Option<TableState>,
    meta: HashMap<String, String>,
    keys: HashMap<i64, KeyState>,
    report: Report,
    audit: Audit,
}

#[derive(Default)]
struct Audit {
    /// The latest checkpoint's size and root, once its signature verified.
    checkpoint: Option<(u64, Hash)>,
    next_leaf: u64,
    /// Leaves `[0, pruned)` have no body.
    pruned: u64,
    body_seen: Option<u64>,
    leaf_digests: Vec<Sha256>,
    next_node: u64,
    node_digests: Vec<Sha256>,
    tree: StreamVerifier,
    leaves_done: bool,
}

fn column(columns: &[Column], name: &str, table: &str) -> anyhow::Result<usize> {
    columns
        .iter()
        .position(|column| column.name == name)
        .ok_or_else(|| anyhow!("the backup's table {table} has no column {name}"))
}

impl<'k> Checker<'k> {
    pub fn new(keyring: &'k Keyring, header: Header) -> Checker<'k> {
        Checker {
            keyring,
            header,
            next_table: 0,
            table: None,
            meta: HashMap::new(),
            keys: HashMap::new(),
            report: Report::default(),
            audit: Audit::default(),
        }
    }

    /// The authenticated copy of the header must be the plaintext header, byte for byte.
    pub fn header_copy(&mut self, plaintext_line: &[u8], copy: &[u8]) -> anyhow::Result<()> {
        if plaintext_line == copy {
            return Ok(());
        }
        let difference = match serde_json::from_slice::<Header>(copy) {
            Ok(inner) => inner.first_difference(&self.header),
            Err(_) => "its text".to_owned(),
        };
        bail!(
            "the plaintext header differs from the authenticated copy inside the backup ({difference}): the header was altered"
        )
    }

    pub fn begin_table(&mut self, name: &str, columns: &[Column]) -> anyhow::Result<()> {
        let expected = self.header.tables.get(self.next_table).ok_or_else(|| {
            anyhow!(
                "the backup holds a table {name} beyond the {} its header lists",
                self.header.tables.len()
            )
        })?;
        if expected.name != name {
            bail!(
                "the backup holds the table {name} where its header lists {}",
                expected.name
            );
        }
        if name == "audit_log" {
            self.start_audit()?;
        }
        self.table = Some(TableState {
            name: name.to_owned(),
            columns: columns.to_vec(),
            rows: 0,
        });
        Ok(())
    }

    pub fn row(&mut self, values: &[Value]) -> anyhow::Result<()> {
        let table = self
            .table
            .as_mut()
            .ok_or_else(|| anyhow!("a row outside of any table"))?;
        table.rows += 1;
        self.report.rows += 1;
        let (name, columns) = (
            table.name.clone(),
            &self.table.as_ref().expect("set").columns,
        );
        let get = |column_name: &str| -> anyhow::Result<&Value> {
            Ok(&values[column(columns, column_name, &name)?])
        };
        match name.as_str() {
            "hub_meta" => {
                if self.meta.len() >= MAX_META_ROWS {
                    bail!("hub_meta holds more than {MAX_META_ROWS} rows");
                }
                let key = get("key")?.as_str().unwrap_or_default().to_owned();
                let value = get("value")?.as_str().unwrap_or_default().to_owned();
                self.meta.insert(key, value);
            }
            "data_key" => {
                let key_id = get("key_id")?
                    .as_i64()
                    .ok_or_else(|| anyhow!("a data key without a number"))?;
                let generation = get("generation")?.as_i64().unwrap_or(-1);
                let scope = get("scope")?.as_str().unwrap_or_default().to_owned();
                let state = match get("wrapped")?.as_bytes() {
                    None => KeyState::Erased,
                    Some(wrapped) => self.unwrap_data_key(key_id, generation, &scope, wrapped)?,
                };
                self.report.data_keys += 1;
                if matches!(state, KeyState::Erased) {
                    self.report.erased_keys += 1;
                }
                self.keys.insert(key_id, state);
            }
            "resource_versions" => {
                let deleted = get("deleted")?.as_bool().unwrap_or(false);
                let body = get("body")?.as_bytes().unwrap_or_default();
                if deleted || body.is_empty() {
                    self.report.tombstones += 1;
                } else if !aead::is_sealed(body) {
                    self.report.versions_in_clear += 1;
                } else {
                    let resource_type = get("resource_type")?.as_str().unwrap_or_default();
                    let id = get("id")?.as_str().unwrap_or_default();
                    let version = get("version")?.as_i64().unwrap_or_default();
                    let what = format!("{resource_type}/{id}/_history/{version}");
                    let key_id = aead::sealed_key_id(body)
                        .map_err(|e| anyhow!("the version {what}: {e}"))?;
                    match self.keys.get(&key_id) {
                        None => bail!(
                            "the version {what} is sealed with data key {key_id}, which the backup does not hold"
                        ),
                        Some(KeyState::Erased) => self.report.versions_erased += 1,
                        Some(KeyState::Live(key)) => {
                            aead::open(key, what.as_bytes(), body).map_err(|e| {
                                anyhow!("the version {what} does not open with its data key {key_id}: {e}")
                            })?;
                            self.report.versions_opened += 1;
                        }
                    }
                }
            }
            "audit_log" => {
                let index = get("leaf_index")?.as_i64();
                let leaf = get("leaf")?.as_bytes().map(<[u8]>::to_vec);
                let stored = get("leaf_hash")?.as_bytes().map(<[u8]>::to_vec);
                self.audit_leaf(index, leaf.as_deref(), stored.as_deref())?;
            }
            "audit_node" => {
                let level = get("level")?.as_i64().unwrap_or(-1);
                let index = get("idx")?.as_i64().unwrap_or(-1);
                let hash = get("hash")?.as_bytes().unwrap_or_default().to_vec();
                if level == 0 {
                    self.audit_node(index, &hash)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    pub fn end_table(&mut self, rows_said: u64) -> anyhow::Result<()> {
        let table = self
            .table
            .take()
            .ok_or_else(|| anyhow!("a table ends that did not start"))?;
        let listed = self.header.tables[self.next_table].rows;
        if table.rows != rows_said || table.rows != listed {
            bail!(
                "the table {} holds {} rows, but its header lists {listed}",
                table.name,
                table.rows
            );
        }
        self.next_table += 1;
        self.report.tables += 1;
        match table.name.as_str() {
            "audit_log" => self.end_audit_leaves()?,
            "audit_node" => self.end_audit_nodes()?,
            _ => {}
        }
        Ok(())
    }

    /// The end of the stream: every table listed was there, the audit tree was checked.
    pub fn finish(&mut self, tables_said: u32) -> anyhow::Result<Report> {
        if self.next_table != self.header.tables.len() || tables_said as usize != self.next_table {
            bail!(
                "the backup ends after {} tables, and its header lists {}",
                self.next_table,
                self.header.tables.len()
            );
        }
        if !self.audit.leaves_done {
            // A schema before the audit tables: nothing to check.
            self.start_audit()?;
        }
        Ok(self.report.clone())
    }

    fn unwrap_data_key(
        &self,
        key_id: i64,
        generation: i64,
        scope: &str,
        wrapped: &[u8],
    ) -> anyhow::Result<KeyState> {
        let generation = u32::try_from(generation)
            .map_err(|_| anyhow!("data key {key_id} names generation {generation}"))?;
        let slot = u64::try_from(key_id).map_err(|_| anyhow!("data key number {key_id}"))?;
        match self
            .keyring
            .unwrap(generation, slot, wrapped, scope.as_bytes())
        {
            Ok(key) => Ok(KeyState::Live(key)),
            Err(VaultError::Erased { .. }) => Ok(KeyState::Erased),
            Err(VaultError::UnknownGeneration(generation)) => bail!(
                "data key {key_id} is wrapped under generation {generation} of the key file, which this key file does not hold (retired, or another key file)"
            ),
            Err(error) => bail!("data key {key_id} does not unwrap with this key file: {error}"),
        }
    }

    /// The latest checkpoint, verified with the log key in `hub_meta`.
    fn start_audit(&mut self) -> anyhow::Result<()> {
        let Some(note) = self.header.audit.checkpoint.clone() else {
            return Ok(());
        };
        let origin = self.meta.get("audit.origin").ok_or_else(|| {
            anyhow!("the backup has a checkpoint but no audit.origin in hub_meta")
        })?;
        let pkcs8 = self
            .meta
            .get("audit.log_key")
            .and_then(|encoded| {
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .ok()
            })
            .ok_or_else(|| {
                anyhow!("the backup has a checkpoint but no audit log key in hub_meta")
            })?;
        let key = NoteSigner::from_pkcs8(origin, &pkcs8)
            .map_err(|e| anyhow!("the audit log key in the backup: {e}"))?
            .verifier_key();
        let (checkpoint, _) = open_checkpoint(note.as_bytes(), &[key]).map_err(|e| {
            anyhow!("the latest checkpoint does not verify with the log's key: {e}")
        })?;
        if checkpoint.origin != *origin {
            bail!(
                "the latest checkpoint is of the log {:?}, not {origin:?}",
                checkpoint.origin
            );
        }
        if checkpoint.size > self.header.audit.tree_size {
            bail!(
                "the latest checkpoint has {} leaves, more than the tree's {}",
                checkpoint.size,
                self.header.audit.tree_size
            );
        }
        self.report.checkpoint = true;
        self.report.checkpoint_size = checkpoint.size;
        let blocks = checkpoint.size.div_ceil(AUDIT_BLOCK_LEAVES) as usize;
        self.audit.leaf_digests = vec![Sha256::new(); blocks];
        self.audit.node_digests = vec![Sha256::new(); blocks];
        self.audit.checkpoint = Some((checkpoint.size, checkpoint.root));
        if checkpoint.size == 0 {
            self.audit
                .tree
                .check_root(&checkpoint.root)
                .map_err(|_| anyhow!("the empty checkpoint's root is not the empty tree's"))?;
        }
        Ok(())
    }

    fn checkpoint_size(&self) -> u64 {
        self.audit.checkpoint.map_or(0, |(size, _)| size)
    }

    fn audit_leaf(
        &mut self,
        index: Option<i64>,
        leaf: Option<&[u8]>,
        stored: Option<&[u8]>,
    ) -> anyhow::Result<()> {
        let Some(index) = index else {
            self.report.pending_leaves += 1;
            return Ok(());
        };
        let expected = self.audit.next_leaf;
        if index < 0 || index as u64 != expected {
            bail!("audit leaf {expected} is missing from the backup (the next one is {index})");
        }
        self.audit.next_leaf += 1;
        self.report.leaves += 1;
        let index = index as u64;
        match leaf {
            Some(leaf) => {
                let hash = merkle::leaf_hash(leaf);
                if let Some(stored) = stored
                    && stored != hash.as_slice()
                {
                    bail!("audit leaf {index}: its stored hash is not the hash of its body");
                }
                self.audit.body_seen.get_or_insert(index);
                if index < self.checkpoint_size() {
                    self.audit.leaf_digests[(index / AUDIT_BLOCK_LEAVES) as usize].update(hash);
                }
            }
            None => {
                if let Some(kept) = self.audit.body_seen {
                    bail!(
                        "audit leaf {index} has no body while leaf {kept} before it kept its own: retention prunes the oldest leaves first, so it was deleted"
                    );
                }
                self.audit.pruned = index + 1;
                self.report.pruned_leaves += 1;
            }
        }
        Ok(())
    }

    fn end_audit_leaves(&mut self) -> anyhow::Result<()> {
        self.audit.leaves_done = true;
        let size = self.checkpoint_size();
        if self.audit.next_leaf < size {
            bail!(
                "the backup's audit log ends at leaf {}, before the {size} leaves of its latest checkpoint",
                self.audit.next_leaf
            );
        }
        Ok(())
    }

    fn audit_node(&mut self, index: i64, hash: &[u8]) -> anyhow::Result<()> {
        let size = self.checkpoint_size();
        let Some((_, root)) = self.audit.checkpoint else {
            return Ok(());
        };
        if index < 0 || index as u64 >= size {
            return Ok(());
        }
        let expected = self.audit.next_node;
        if index as u64 != expected {
            bail!("the audit tree's hash of leaf {expected} is missing from the backup");
        }
        let hash: Hash = hash
            .try_into()
            .map_err(|_| anyhow!("the audit tree's hash of leaf {index} is not 32 bytes"))?;
        self.audit.next_node += 1;
        self.audit
            .tree
            .push_leaf_hash(hash)
            .map_err(|e| anyhow!("the audit tree: {e}"))?;
        if index as u64 >= self.audit.pruned {
            self.audit.node_digests[(index as u64 / AUDIT_BLOCK_LEAVES) as usize].update(hash);
        }
        if self.audit.next_node == size {
            self.audit.tree.check_root(&root).map_err(|_| {
                anyhow!(
                    "the audit tree's leaf hashes do not give the root of the latest checkpoint (size {size}): the log was rewritten"
                )
            })?;
        }
        Ok(())
    }

    fn end_audit_nodes(&mut self) -> anyhow::Result<()> {
        let size = self.checkpoint_size();
        if self.audit.next_node < size {
            bail!(
                "the audit tree holds {} leaf hashes, fewer than the {size} of its latest checkpoint",
                self.audit.next_node
            );
        }
        let leaves = std::mem::take(&mut self.audit.leaf_digests);
        let nodes = std::mem::take(&mut self.audit.node_digests);
        for (block, (leaves, nodes)) in leaves.into_iter().zip(nodes).enumerate() {
            if leaves.finalize() != nodes.finalize() {
                let first = block as u64 * AUDIT_BLOCK_LEAVES;
                let last = (first + AUDIT_BLOCK_LEAVES).min(size) - 1;
                bail!(
                    "an audit leaf between {} and {last} does not hash to the tree's stored hash of it: the leaf was altered",
                    first.max(self.audit.pruned)
                );
            }
        }
        Ok(())
    }
}

/// The data key of the backup itself, from its header and the key file, with a message
/// naming what does not fit.
pub fn unwrap_backup_key(keyring: &Keyring, header: &Header) -> anyhow::Result<DataKey> {
    if keyring.installation() != header.installation {
        bail!(
            "this backup was made by installation {}; the key file is of installation {}: give the key file of installation {}",
            header.installation,
            keyring.installation(),
            header.installation
        );
    }
    if !keyring.generation_ids().contains(&header.generation) {
        bail!(
            "the backup's key is wrapped under generation {} of the key file, and the key file's generation {} is missing (retired, or an older copy of the key file): give a key file that holds it",
            header.generation,
            header.generation
        );
    }
    let wrapped = base64::engine::general_purpose::STANDARD
        .decode(&header.wrapped_key)
        .context("the header's wrapped_key is not base64")?;
    keyring
        .unwrap(
            header.generation,
            hygie_vault::ggm::BACKUP_SLOT,
            &wrapped,
            &header.key_aad(),
        )
        .map_err(|error| match error {
            VaultError::Corrupt => anyhow!(
                "the backup's key does not unwrap with generation {} of this key file: the header was altered, or the key file was regenerated since",
                header.generation
            ),
            other => anyhow!("the backup's key does not unwrap: {other}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::format::{AuditSummary, FORMAT, TableRows};
    use hygie_store::backup::ColumnKind;

    fn columns(names: &[(&str, ColumnKind)]) -> Vec<Column> {
        names
            .iter()
            .map(|(name, kind)| Column {
                name: (*name).to_owned(),
                kind: *kind,
            })
            .collect()
    }

    fn header(keys: u64, versions: u64) -> Header {
        Header {
            format: FORMAT.into(),
            backup_id: uuid::Uuid::new_v4().to_string(),
            created_us: 0,
            created: String::new(),
            backend: "sqlite".into(),
            schema_version: 8,
            installation: "test".into(),
            generation: 1,
            wrapped_key: String::new(),
            tables: vec![
                TableRows {
                    name: "data_key".into(),
                    rows: keys,
                },
                TableRows {
                    name: "resource_versions".into(),
                    rows: versions,
                },
            ],
            audit: AuditSummary {
                tree_size: 0,
                checkpoint: None,
            },
        }
    }

    /// A patient erased after the backup (slot punctured in the key file): their key and
    /// versions are counted as erased, the others open, and the backup passes.
    #[test]
    fn keys_erased_since_the_backup_are_counted_not_errors() {
        use ColumnKind::{Blob, Integer, Text};
        let mut keyring = Keyring::generate("test", 0);
        let (kept, erased) = (DataKey::generate(), DataKey::generate());
        let key_rows: Vec<Vec<Value>> = [(1, "patient/a", &kept), (2, "patient/b", &erased)]
            .into_iter()
            .map(|(id, scope, key)| {
                let wrapped = keyring.wrap(1, id as u64, key, scope.as_bytes()).unwrap();
                vec![
                    Value::Integer(id),
                    Value::Text(scope.into()),
                    Value::Integer(1),
                    Value::Blob(wrapped),
                ]
            })
            .collect();
        let version_rows: Vec<Vec<Value>> = [(1, "a", &kept), (2, "b", &erased)]
            .into_iter()
            .map(|(key_id, id, key)| {
                let aad = format!("Patient/{id}/_history/1");
                let body = aead::seal(key, key_id, aad.as_bytes(), b"{}");
                vec![
                    Value::Text("Patient".into()),
                    Value::Text(id.into()),
                    Value::Integer(1),
                    Value::Integer(0),
                    Value::Blob(body),
                ]
            })
            .collect();
        keyring.puncture(2).unwrap();
        let key_columns = columns(&[
            ("key_id", Integer),
            ("scope", Text),
            ("generation", Integer),
            ("wrapped", Blob),
        ]);
        let version_columns = columns(&[
            ("resource_type", Text),
            ("id", Text),
            ("version", Integer),
            ("deleted", Integer),
            ("body", Blob),
        ]);

        let mut checker = Checker::new(&keyring, header(2, 2));
        checker.begin_table("data_key", &key_columns).unwrap();
        for row in &key_rows {
            checker.row(row).unwrap();
        }
        checker.end_table(2).unwrap();
        checker
            .begin_table("resource_versions", &version_columns)
            .unwrap();
        for row in &version_rows {
            checker.row(row).unwrap();
        }
        checker.end_table(2).unwrap();
        let report = checker.finish(2).unwrap();
        assert_eq!((report.data_keys, report.erased_keys), (2, 1));
        assert_eq!((report.versions_opened, report.versions_erased), (1, 1));

        // A body moved to another row does not open: named.
        let mut checker = Checker::new(&keyring, header(2, 1));
        checker.begin_table("data_key", &key_columns).unwrap();
        for row in &key_rows {
            checker.row(row).unwrap();
        }
        checker.end_table(2).unwrap();
        checker
            .begin_table("resource_versions", &version_columns)
            .unwrap();
        let mut moved = version_rows[0].clone();
        moved[2] = Value::Integer(2);
        let error = checker.row(&moved).unwrap_err().to_string();
        assert!(
            error.contains("Patient/a/_history/2 does not open with its data key 1"),
            "{error}"
        );
    }
}
