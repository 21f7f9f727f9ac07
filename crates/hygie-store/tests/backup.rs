//! Table-level backups on both backends: a snapshot restored into an empty target holds
//! every row of every table (compared with queries of their own, not with the backup's
//! code), a snapshot taken while units commit is of one instant, and a target that is not
//! empty is refused and left as it was.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use hygie_store::backup::{Restorer, Snapshot, TABLES, TableInfo, Target, Value};
use hygie_store::testing::{TestBackend, ThrowawayDatabase};
use hygie_store::{
    AuditFacets, IndexCell, IndexRow, NewBreakGlass, NewVersion, SharedStore, StoreError, StoreExt,
    StoredCheckpoint, StoredDataKey,
};

hygie_store::on_both_backends!(
    every_row_of_every_table_comes_back,
    a_snapshot_taken_during_writes_is_of_one_instant,
    a_target_that_is_not_empty_is_refused_and_left_alone,
    a_failed_restore_leaves_no_target_behind,
);

/// An empty target of the backend of `like`, and what keeps it alive.
struct EmptyTarget {
    target: Target,
    _dir: Option<tempfile::TempDir>,
    _database: Option<ThrowawayDatabase>,
}

fn empty_target(like: &Target) -> EmptyTarget {
    match like {
        Target::Sqlite(_) => {
            let dir = tempfile::tempdir().expect("a temporary directory");
            EmptyTarget {
                target: Target::Sqlite(dir.path().join("restored")),
                _dir: Some(dir),
                _database: None,
            }
        }
        Target::Postgres(_) => {
            let database = ThrowawayDatabase::create();
            EmptyTarget {
                target: Target::Postgres(database.url.clone()),
                _dir: None,
                _database: Some(database),
            }
        }
    }
}

fn index_rows() -> Vec<IndexRow> {
    let row = |param: &str, cell| IndexRow {
        param: param.to_owned(),
        group: 0,
        cell,
    };
    vec![
        row(
            "identifier",
            IndexCell::Token {
                system: "urn:mrn".into(),
                code: "42".into(),
            },
        ),
        row(
            "family",
            IndexCell::String {
                normalized: "durand".into(),
                exact: "Durand".into(),
            },
        ),
        row("birthdate", IndexCell::Date { low: 10, high: 20 }),
        row(
            "value",
            IndexCell::Number {
                value: 1.5,
                low: 1.45,
                high: 1.55,
            },
        ),
        row(
            "value-quantity",
            IndexCell::Quantity {
                system: "http://unitsofmeasure.org".into(),
                code: "kg".into(),
                value: 70.25,
                low: 70.2,
                high: 70.3,
            },
        ),
        row(
            "general-practitioner",
            IndexCell::Reference {
                target_type: "Practitioner".into(),
                target_id: "dr".into(),
                url: "Practitioner/dr".into(),
            },
        ),
        row(
            "url",
            IndexCell::Uri {
                value: "http://example.org/x".into(),
            },
        ),
    ]
}

fn facets(patient: &str) -> AuditFacets {
    AuditFacets {
        event_type: "rest".into(),
        subtype: "read".into(),
        outcome: "0".into(),
        purpose: Some("TREAT".into()),
        agents: vec!["dr-house".into()],
        patients: vec![patient.to_owned()],
    }
}

/// Writes at least one row into every table a backup knows.
async fn fill_every_table(store: &SharedStore) {
    store
        .run(|tx| {
            let index = index_rows();
            for (ty, id, version) in [
                ("Patient", "p1", 1),
                ("Patient", "p1", 2),
                ("Observation", "o1", 1),
            ] {
                tx.put_version(&NewVersion {
                    resource_type: ty,
                    id,
                    version,
                    last_updated_us: 1_000 * version,
                    deleted: false,
                    body: b"HV1 sealed bytes \x00\xff",
                    index: &index,
                    key_id: Some(1),
                })?;
            }
            tx.put_version(&NewVersion {
                resource_type: "Observation",
                id: "o1",
                version: 2,
                last_updated_us: 3_000,
                deleted: true,
                body: b"",
                index: &[],
                key_id: None,
            })?;
            for scope in ["patient/p1", "type/Observation", "patient/erased"] {
                let key_id = tx.next_data_key_id()?;
                tx.put_data_key(
                    &StoredDataKey {
                        key_id,
                        scope: scope.into(),
                        generation: 1,
                        wrapped: Some(vec![7; 75]),
                        is_current: true,
                        created_us: 5,
                        erased_us: None,
                    },
                    false,
                )?;
            }
            tx.erase_data_keys("patient/erased", 6)?;
            tx.meta_set("vault.installation", "backup-test")?;
            tx.meta_set("text with 'quotes'", "and\na newline")?;
            tx.revoke("jti", "token-1", 7, "lost laptop")?;
            tx.open_break_glass(&NewBreakGlass {
                subject: "dr-house",
                patient: "Patient/p1",
                reason: "cardiac arrest",
                opened_us: 8,
                until_us: 9,
                request_id: "req-1",
            })?;
            for number in 0..3 {
                let leaf = format!("{{\"resourceType\":\"AuditEvent\",\"n\":{number}}}");
                tx.append_audit_indexed(
                    10 + number,
                    leaf.as_bytes(),
                    &[number as u8; 32],
                    &facets("p1"),
                )?;
            }
            Ok(())
        })
        .await
        .expect("fill");
    store
        .run(|tx| {
            let leaves = tx.integrate_audit_leaves(0, 10)?;
            assert_eq!(leaves.len(), 3);
            tx.put_audit_nodes(&[(0, 0, [0; 32]), (0, 1, [1; 32]), (1, 0, [9; 32])])?;
            tx.put_audit_checkpoint(&StoredCheckpoint {
                tree_size: 2,
                root: [9; 32],
                note: "origin\n2\nroot\n\n— sig\n".into(),
                created_us: 11,
            })?;
            tx.put_audit_cosignature(2, "witness", "cosigned note", 12)?;
            tx.close_break_glass(1, "dpo", "justified", 13)?;
            tx.put_inbound_message("ADT|HOSP|42", "fingerprint", 14, "MSH|^~\\&|ACK")?;
            Ok(())
        })
        .await
        .expect("fill the audit tables");
}

/// Copies `source` into `into` through a snapshot and a restorer; returns the tables.
fn backup_and_restore(source: &Target, into: &Target, scratch: &Path) -> Vec<TableInfo> {
    let mut snapshot = Snapshot::take(source, scratch).expect("snapshot");
    let mut restorer =
        Restorer::begin(into, snapshot.backend(), snapshot.schema_version()).expect("begin");
    let tables = snapshot.tables().to_vec();
    for info in &tables {
        restorer.begin_table(&info.name, &info.columns).unwrap();
        let dumped = snapshot
            .dump(&info.name, |row| restorer.row(row))
            .unwrap_or_else(|e: StoreError| panic!("{}: {e}", info.name));
        assert_eq!(dumped, info.rows, "{}: rows dumped vs counted", info.name);
        assert_eq!(restorer.end_table().unwrap(), dumped, "{}", info.name);
    }
    for sequence in snapshot.sequences().expect("sequences") {
        restorer.set_sequence(&sequence).expect("sequence");
    }
    snapshot.finish().expect("finish");
    restorer.commit().expect("commit");
    tables
}

/// Every row of `table`, as sorted text, read with plain queries of each backend.
fn rows_as_text(target: &Target, table: &str) -> Vec<String> {
    let mut rows: Vec<String> = match target {
        Target::Sqlite(dir) => {
            let connection = rusqlite::Connection::open(dir.join("hygie.db")).unwrap();
            let mut statement = connection
                .prepare(&format!("SELECT * FROM {table}"))
                .unwrap();
            let columns = statement.column_count();
            let mut rows = statement.query([]).unwrap();
            let mut found = Vec::new();
            while let Some(row) = rows.next().unwrap() {
                let cells: Vec<String> = (0..columns)
                    .map(|index| format!("{:?}", row.get_ref(index).unwrap()))
                    .collect();
                found.push(cells.join(" | "));
            }
            found
        }
        Target::Postgres(url) => {
            let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
            client
                .query(&format!("SELECT t::TEXT FROM {table} t"), &[])
                .unwrap()
                .iter()
                .map(|row| row.get(0))
                .collect()
        }
    };
    rows.sort();
    rows
}

async fn every_row_of_every_table_comes_back(backend: TestBackend) {
    let source = backend.target();
    fill_every_table(&backend.store).await;
    let empty = empty_target(&source);
    let scratch = tempfile::tempdir().unwrap();
    let (from, into) = (source.clone(), empty.target.clone());
    let scratch_path = scratch.path().to_owned();
    let tables =
        tokio::task::spawn_blocking(move || backup_and_restore(&from, &into, &scratch_path))
            .await
            .unwrap();

    // Every table the migrations create is known, and this test wrote into each.
    let names: BTreeSet<&str> = tables.iter().map(|info| info.name.as_str()).collect();
    assert_eq!(names, TABLES.iter().copied().collect::<BTreeSet<_>>());
    for info in &tables {
        assert!(info.rows > 0, "the test writes no row into {}", info.name);
    }
    // The scratch copy of the SQLite snapshot is gone.
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);

    let (from, into) = (source.clone(), empty.target.clone());
    tokio::task::spawn_blocking(move || {
        for table in TABLES {
            let (original, restored) = (rows_as_text(&from, table), rows_as_text(&into, table));
            assert!(!original.is_empty(), "{table}");
            assert_eq!(original, restored, "table {table} differs after restore");
        }
    })
    .await
    .unwrap();

    // The restored store opens (no migration left), and every number it hands out comes
    // after those restored.
    let into = empty.target.clone();
    let restored = tokio::task::spawn_blocking(move || match &into {
        Target::Sqlite(dir) => {
            hygie_store::open(None, dir, &Default::default(), &Default::default())
        }
        Target::Postgres(url) => hygie_store::open(
            Some(url),
            Path::new("/nonexistent"),
            &Default::default(),
            &Default::default(),
        ),
    })
    .await
    .unwrap()
    .expect("the restored store opens");
    let (seq, key_id, grant, leaf) = restored
        .run(|tx| {
            tx.put_version(&NewVersion {
                resource_type: "Patient",
                id: "after",
                version: 1,
                last_updated_us: 99,
                deleted: false,
                body: b"new",
                index: &[],
                key_id: None,
            })?;
            let seq = tx.max_seq()?;
            let key_id = tx.next_data_key_id()?;
            let grant = tx.open_break_glass(&NewBreakGlass {
                subject: "s",
                patient: "Patient/after",
                reason: "r",
                opened_us: 1,
                until_us: 2,
                request_id: "q",
            })?;
            let leaf = tx.append_audit(1, b"{}")?;
            Ok((seq, key_id, grant, leaf))
        })
        .await
        .expect("write after the restore");
    assert_eq!(seq, 5, "a version after 4 restored ones");
    assert_eq!(key_id, 4, "a data key after 3 restored ones");
    assert_eq!(grant, 2, "a grant after the restored one");
    assert!(leaf >= 3, "an audit leaf after 3 restored ones: {leaf}");
    restored.close().await;
}

async fn a_snapshot_taken_during_writes_is_of_one_instant(backend: TestBackend) {
    let source = backend.target();
    let store = backend.store.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for writer in 0..4 {
        let (store, stop, written) = (store.clone(), stop.clone(), written.clone());
        writers.push(tokio::spawn(async move {
            let mut number = 0u64;
            while !stop.load(Ordering::Acquire) {
                number += 1;
                let id = format!("w{writer}-{number}");
                store
                    .run(move |tx| {
                        // One version and one audit leaf per unit: a snapshot of one
                        // instant holds as many of each.
                        tx.put_version(&NewVersion {
                            resource_type: "Observation",
                            id: &id,
                            version: 1,
                            last_updated_us: 1,
                            deleted: false,
                            body: &[b'x'; 2_000],
                            index: &index_rows(),
                            key_id: None,
                        })?;
                        tx.append_audit_indexed(1, id.as_bytes(), &[0; 32], &facets(&id))?;
                        Ok(())
                    })
                    .await
                    .expect("a write");
                written.fetch_add(1, Ordering::AcqRel);
            }
        }));
    }
    while written.load(Ordering::Acquire) < 300 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let before = written.load(Ordering::Acquire);
    let scratch = tempfile::tempdir().unwrap();
    let scratch_path = scratch.path().to_owned();
    let (counted, dumped, heads, versions, leaves) = tokio::task::spawn_blocking(move || {
        let mut snapshot = Snapshot::take(&source, &scratch_path).expect("snapshot");
        let mut dumped = BTreeMap::new();
        let mut heads = Vec::new();
        let mut versions = HashSet::new();
        let mut leaves = 0u64;
        let tables = snapshot.tables().to_vec();
        for info in &tables {
            let position = |name: &str| {
                info.columns
                    .iter()
                    .position(|column| column.name == name)
                    .unwrap()
            };
            let key = |row: &[Value]| {
                (
                    row[position("resource_type")].as_str().unwrap().to_owned(),
                    row[position("id")].as_str().unwrap().to_owned(),
                    row[position("version")].as_i64().unwrap(),
                )
            };
            let count = snapshot
                .dump(&info.name, |row| -> Result<(), StoreError> {
                    match info.name.as_str() {
                        "resources" => heads.push(key(row)),
                        "resource_versions" => {
                            versions.insert(key(row));
                        }
                        "audit_log" => leaves += 1,
                        _ => {}
                    }
                    Ok(())
                })
                .unwrap();
            dumped.insert(info.name.clone(), count);
        }
        let counted: BTreeMap<String, u64> = tables
            .iter()
            .map(|info| (info.name.clone(), info.rows))
            .collect();
        snapshot.finish().unwrap();
        (counted, dumped, heads, versions, leaves)
    })
    .await
    .unwrap();
    // Let the writers go on a little after the snapshot, then stop them.
    let at_end = written.load(Ordering::Acquire);
    while written.load(Ordering::Acquire) < at_end + 50 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Release);
    for writer in writers {
        writer.await.unwrap();
    }
    let after = written.load(Ordering::Acquire);

    // Counted and dumped in the same snapshot, while units kept committing.
    assert_eq!(counted, dumped, "row counts of one snapshot");
    let snapshot_units = versions.len() as u64;
    assert!(
        (before..after).contains(&snapshot_units),
        "the snapshot ({snapshot_units} units) falls between {before} and {after}"
    );
    assert_eq!(leaves, snapshot_units, "one audit leaf per version");
    assert_eq!(heads.len() as u64, snapshot_units);
    for head in &heads {
        assert!(versions.contains(head), "the head {head:?} has its version");
    }
    for table in ["search_token", "search_string", "search_date", "search_uri"] {
        assert_eq!(
            dumped[table], snapshot_units,
            "{table}: one row per resource"
        );
    }
    assert_eq!(dumped["audit_facet"], 2 * snapshot_units);
}

async fn a_target_that_is_not_empty_is_refused_and_left_alone(backend: TestBackend) {
    let source = backend.target();
    fill_every_table(&backend.store).await;
    let target = source.clone();
    tokio::task::spawn_blocking(move || {
        let before = rows_as_text(&target, "resource_versions");
        let refused = Restorer::begin(&target, target.backend(), 8)
            .err()
            .expect("a store's own target is refused");
        let message = refused.to_string();
        assert!(message.contains("not empty"), "{message}");
        assert!(message.contains("nothing was changed"), "{message}");
        if let Target::Postgres(_) = &target {
            assert!(message.contains("public."), "names a table: {message}");
        }
        assert_eq!(rows_as_text(&target, "resource_versions"), before);

        // Another backend, or a newer schema, is refused before anything is touched.
        let other = match &target {
            Target::Sqlite(_) => "postgres",
            Target::Postgres(_) => "sqlite",
        };
        let message = Restorer::begin(&target, other, 8)
            .err()
            .unwrap()
            .to_string();
        assert!(
            message.contains("into the backend it was made from"),
            "{message}"
        );
        assert!(matches!(
            Restorer::begin(&target, target.backend(), 1_000),
            Err(StoreError::SchemaTooNew { found: 1_000, .. })
        ));
        assert_eq!(rows_as_text(&target, "resource_versions"), before);
    })
    .await
    .unwrap();

    if let Target::Sqlite(_) = &source {
        // A directory holding anything at all is refused, and keeps only what it held.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "keep me").unwrap();
        let message = Restorer::begin(&Target::Sqlite(dir.path().to_owned()), "sqlite", 8)
            .err()
            .unwrap()
            .to_string();
        assert!(message.contains("notes.txt"), "{message}");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(left, ["notes.txt"]);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("notes.txt")).unwrap(),
            "keep me"
        );
    }
}

async fn a_failed_restore_leaves_no_target_behind(backend: TestBackend) {
    let source = backend.target();
    fill_every_table(&backend.store).await;
    let empty = empty_target(&source);
    let into = empty.target.clone();
    let scratch = tempfile::tempdir().unwrap();
    let scratch_path = scratch.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let mut snapshot = Snapshot::take(&source, &scratch_path).unwrap();
        let mut restorer =
            Restorer::begin(&into, snapshot.backend(), snapshot.schema_version()).unwrap();
        let first = snapshot.tables()[0].clone();
        restorer.begin_table(&first.name, &first.columns).unwrap();
        snapshot.dump(&first.name, |row| restorer.row(row)).unwrap();
        restorer.end_table().unwrap();
        // Committing without every table is refused: the restore is not done.
        let message = match restorer.commit() {
            Err(error) => error.to_string(),
            Ok(()) => panic!("a restore missing tables committed"),
        };
        assert!(message.contains("has no table hub_meta"), "{message}");

        // A row of the wrong shape fails the load; abort says what it removed.
        let mut restorer =
            Restorer::begin(&into, snapshot.backend(), snapshot.schema_version()).unwrap();
        restorer.begin_table(&first.name, &first.columns).unwrap();
        assert!(restorer.row(&[Value::Integer(1)]).is_err());
        let said = restorer.abort();
        match &into {
            Target::Sqlite(dir) => {
                assert!(said.contains("removed"), "{said}");
                assert!(!dir.exists(), "{} is left behind", dir.display());
            }
            Target::Postgres(url) => {
                assert!(said.contains("rolled back"), "{said}");
                let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
                let tables: i64 = client
                    .query_one(
                        "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'",
                        &[],
                    )
                    .unwrap()
                    .get(0);
                assert_eq!(tables, 0, "tables are left in the database");
            }
        }
        snapshot.finish().unwrap();
    })
    .await
    .unwrap();
}
