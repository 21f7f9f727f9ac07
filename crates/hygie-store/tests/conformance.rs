//! One conformance suite, run against every backend: the same tests, on embedded SQLite and
//! on a real PostgreSQL server (a throwaway database per test).

use hygie_store::testing::TestBackend;
use hygie_store::{
    AuditFacets, AuditQuery, Filter, HistoryQuery, HistoryScope, IndexCell, IndexRow,
    LeafToIntegrate, NewVersion, SearchSpec, StoreError, StoreExt, StoreResult, StoredDataKey,
    Test, Tx,
};

type Backend = TestBackend;

hygie_store::on_both_backends!(
    versions_are_written_read_and_listed,
    a_failed_unit_leaves_nothing_behind,
    savepoints_undo_part_of_a_unit,
    duplicate_versions_conflict,
    tokens_follow_the_current_version,
    long_tokens_are_indexed_and_found,
    history_pages_newest_first_and_is_stable,
    audit_leaves_are_dense_and_ordered,
    audit_leaves_share_the_fate_of_their_unit_in_a_batch,
    the_audit_index_finds_events_by_patient_agent_kind_and_date,
    concurrent_units_all_commit,
    failed_units_do_not_take_their_batch_down,
    read_units_cannot_write,
    revocations_are_kept_found_and_lifted,
    break_glass_grants_open_expire_and_close,
    a_long_read_does_not_hold_up_writes,
    data_keys_are_kept_replaced_rewrapped_and_erased,
    inbound_messages_are_remembered_once_and_forgotten_oldest_first,
);

fn version<'a>(
    ty: &'a str,
    id: &'a str,
    v: i64,
    body: &'a [u8],
    tokens: &'a [IndexRow],
) -> NewVersion<'a> {
    NewVersion {
        resource_type: ty,
        id,
        version: v,
        last_updated_us: 1_000 * v,
        deleted: false,
        body,
        index: tokens,
        key_id: None,
    }
}

async fn versions_are_written_read_and_listed(backend: Backend) {
    let store = backend.store;
    store
        .run(|tx| {
            tx.put_version(&version("Patient", "a", 1, b"one", &[]))?;
            tx.put_version(&version("Patient", "a", 2, b"two", &[]))?;
            tx.put_version(&version("Patient", "b", 1, b"bee", &[]))?;
            tx.put_version(&NewVersion {
                deleted: true,
                body: b"",
                ..version("Patient", "b", 2, b"", &[])
            })
        })
        .await
        .unwrap();
    let (head, current, first, missing, listed) = store
        .run(|tx| {
            Ok((
                tx.head("Patient", "a")?,
                tx.current("Patient", "a")?,
                tx.version("Patient", "a", 1)?,
                tx.current("Patient", "zzz")?,
                all_ids(tx, "Patient")?,
            ))
        })
        .await
        .unwrap();
    let head = head.unwrap();
    assert_eq!(
        (head.version, head.deleted, head.last_updated_us),
        (2, false, 2_000)
    );
    assert_eq!(current.unwrap().body, b"two");
    assert_eq!(first.unwrap().body, b"one");
    assert!(missing.is_none());
    assert_eq!(
        listed,
        vec!["a".to_owned()],
        "deleted resources are not listed"
    );
    let deleted = store
        .run(|tx| tx.current("Patient", "b"))
        .await
        .unwrap()
        .unwrap();
    assert!(deleted.deleted);
    assert_eq!(deleted.version, 2);
    store.close().await;
}

async fn a_failed_unit_leaves_nothing_behind(backend: Backend) {
    let store = backend.store;
    let result: Result<(), _> = store
        .run(|tx| {
            tx.put_version(&version("Patient", "x", 1, b"x", &[]))?;
            tx.append_audit(1, b"leaf")?;
            Err(StoreError::Database("the unit gives up".into()))
        })
        .await;
    assert!(result.is_err());
    let panicked: Result<(), _> = store
        .run(|tx| {
            tx.put_version(&version("Patient", "y", 1, b"y", &[]))?;
            panic!("a bug in a unit");
        })
        .await;
    assert!(matches!(panicked, Err(StoreError::Panicked(_))));
    let (x, y, history) = store
        .run(|tx| {
            Ok((
                tx.current("Patient", "x")?,
                tx.current("Patient", "y")?,
                tx.history(&HistoryQuery {
                    scope: HistoryScope::System,
                    since_us: None,
                    before_seq: None,
                    max_seq: None,
                    limit: 10,
                })?,
            ))
        })
        .await
        .unwrap();
    assert!(x.is_none() && y.is_none() && history.is_empty());
    // The store still works after a failed and a panicked unit.
    store.run(|tx| tx.append_audit(1, b"after")).await.unwrap();
    let leaves = store.run(|tx| tx.audit_leaves(0, 10)).await.unwrap();
    let bodies: Vec<&[u8]> = leaves.iter().map(|(_, leaf)| leaf.as_slice()).collect();
    assert_eq!(
        bodies,
        vec![b"after".as_slice()],
        "the failed unit's audit leaf was rolled back"
    );
}

async fn savepoints_undo_part_of_a_unit(backend: Backend) {
    let store = backend.store;
    store
        .run(|tx| {
            tx.savepoint()?;
            tx.put_version(&version("Patient", "undone", 1, b"u", &[]))?;
            tx.rollback_to_savepoint()?;
            tx.savepoint()?;
            tx.put_version(&version("Patient", "kept", 1, b"k", &[]))?;
            tx.release_savepoint()?;
            tx.append_audit(5, b"the attempt is recorded")?;
            Ok(())
        })
        .await
        .unwrap();
    let (undone, kept) = store
        .run(|tx| {
            Ok((
                tx.current("Patient", "undone")?,
                tx.current("Patient", "kept")?,
            ))
        })
        .await
        .unwrap();
    assert!(undone.is_none());
    assert!(kept.is_some());
}

async fn duplicate_versions_conflict(backend: Backend) {
    let store = backend.store;
    store
        .run(|tx| tx.put_version(&version("Patient", "d", 1, b"1", &[])))
        .await
        .unwrap();
    let error = store
        .run(|tx| tx.put_version(&version("Patient", "d", 1, b"again", &[])))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Conflict { .. }), "{error:?}");
    // A conflict inside a savepoint can be recovered from (PostgreSQL aborts the
    // transaction on an error until the savepoint is rolled back).
    let recovered = store
        .run(|tx| {
            tx.savepoint()?;
            let conflict = tx.put_version(&version("Patient", "d", 1, b"again", &[]));
            assert!(matches!(conflict, Err(StoreError::Conflict { .. })));
            tx.rollback_to_savepoint()?;
            tx.append_audit(1, b"conflict recorded")
        })
        .await;
    assert!(recovered.is_ok(), "{recovered:?}");
    let current = store
        .run(|tx| tx.current("Patient", "d"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(current.body, b"1");
}

/// Ids of current Patients with an `identifier` token (`system` `Some("")`: none).
fn find_token(
    tx: &mut dyn Tx,
    system: Option<&str>,
    code: Option<&str>,
) -> StoreResult<Vec<String>> {
    let spec = SearchSpec {
        resource_type: "Patient".into(),
        filters: vec![Filter::Match {
            param: "identifier".into(),
            tests: vec![Test::Token {
                system: system.map(str::to_owned),
                code: code.map(str::to_owned),
            }],
            negate: false,
        }],
        sort: vec![],
        position: None,
        limit: 10,
    };
    Ok(tx.search(&spec)?.into_iter().map(|hit| hit.id).collect())
}

/// Ids of every current resource of a type, sorted.
fn all_ids(tx: &mut dyn Tx, resource_type: &str) -> StoreResult<Vec<String>> {
    let spec = SearchSpec {
        resource_type: resource_type.into(),
        filters: vec![],
        sort: vec![],
        position: None,
        limit: 1000,
    };
    Ok(tx.search(&spec)?.into_iter().map(|hit| hit.id).collect())
}

fn token(param: &str, system: &str, code: &str) -> IndexRow {
    IndexRow {
        param: param.into(),
        group: 0,
        cell: IndexCell::Token {
            system: system.into(),
            code: code.into(),
        },
    }
}

async fn tokens_follow_the_current_version(backend: Backend) {
    let store = backend.store;
    let first = [
        token("identifier", "urn:mrn", "123"),
        token("identifier", "", "bare"),
    ];
    let second = [token("identifier", "urn:mrn", "456")];
    store
        .run(move |tx| tx.put_version(&version("Patient", "p", 1, b"1", &first)))
        .await
        .unwrap();
    let find = |system: Option<&'static str>, code: Option<&'static str>| {
        let store = store.clone();
        async move {
            store
                .run(move |tx| find_token(tx, system, code))
                .await
                .unwrap()
        }
    };
    assert_eq!(find(Some("urn:mrn"), Some("123")).await, vec!["p"]);
    assert_eq!(find(None, Some("123")).await, vec!["p"]);
    assert_eq!(find(Some(""), Some("bare")).await, vec!["p"]);
    assert!(
        find(Some(""), Some("123")).await.is_empty(),
        "|code means no system"
    );
    assert_eq!(find(Some("urn:mrn"), None).await, vec!["p"]);
    assert!(find(Some("urn:other"), Some("123")).await.is_empty());
    store
        .run(move |tx| tx.put_version(&version("Patient", "p", 2, b"2", &second)))
        .await
        .unwrap();
    assert!(
        find(None, Some("123")).await.is_empty(),
        "old version's tokens are gone"
    );
    assert_eq!(find(None, Some("456")).await, vec!["p"]);
    store
        .run(|tx| {
            tx.put_version(&NewVersion {
                deleted: true,
                ..version("Patient", "p", 3, b"", &[])
            })
        })
        .await
        .unwrap();
    assert!(
        find(None, Some("456")).await.is_empty(),
        "deleted resources match nothing"
    );
}

async fn history_pages_newest_first_and_is_stable(backend: Backend) {
    let store = backend.store;
    store
        .run(|tx| {
            for i in 1..=5 {
                tx.put_version(&version("Patient", "h", i, b"p", &[]))?;
                tx.put_version(&version("Observation", &format!("o{i}"), 1, b"o", &[]))?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let query = |scope: HistoryScope, before_seq: Option<i64>, max_seq: Option<i64>| HistoryQuery {
        scope,
        since_us: None,
        before_seq,
        max_seq,
        limit: 3,
    };
    let instance = HistoryScope::Instance {
        resource_type: "Patient".into(),
        id: "h".into(),
    };
    let page1 = store
        .run({
            let q = query(instance.clone(), None, None);
            move |tx| tx.history(&q)
        })
        .await
        .unwrap();
    assert_eq!(
        page1.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![5, 4, 3]
    );
    let max_seq = page1[0].seq;
    // A write between pages must not shift the second page.
    store
        .run(|tx| tx.put_version(&version("Patient", "h", 6, b"p", &[])))
        .await
        .unwrap();
    let page2 = store
        .run({
            let q = query(instance.clone(), Some(page1[2].seq), Some(max_seq));
            move |tx| tx.history(&q)
        })
        .await
        .unwrap();
    assert_eq!(
        page2.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![2, 1]
    );
    let by_type = store
        .run({
            let q = HistoryQuery {
                limit: 100,
                ..query(HistoryScope::Type("Observation".into()), None, None)
            };
            move |tx| tx.history(&q)
        })
        .await
        .unwrap();
    assert_eq!(by_type.len(), 5);
    assert!(by_type.iter().all(|v| v.resource_type == "Observation"));
    let system = store
        .run({
            let q = HistoryQuery {
                limit: 100,
                ..query(HistoryScope::System, None, None)
            };
            move |tx| tx.history(&q)
        })
        .await
        .unwrap();
    assert_eq!(system.len(), 11);
    assert!(system.windows(2).all(|w| w[0].seq > w[1].seq));
    let since = store
        .run(|tx| {
            tx.history(&HistoryQuery {
                scope: HistoryScope::Instance {
                    resource_type: "Patient".into(),
                    id: "h".into(),
                },
                since_us: Some(4_000),
                before_seq: None,
                max_seq: None,
                limit: 100,
            })
        })
        .await
        .unwrap();
    assert_eq!(
        since.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![6, 5, 4]
    );
}

async fn audit_leaves_are_dense_and_ordered(backend: Backend) {
    let store = backend.store;
    let mut indices = Vec::new();
    for i in 0..20 {
        indices.push(
            store
                .run(move |tx| tx.append_audit(i, format!("leaf {i}").as_bytes()))
                .await
                .unwrap(),
        );
    }
    assert_eq!(
        indices,
        (0..20).collect::<Vec<i64>>(),
        "no unit failed, so no gaps"
    );
    let leaves = store.run(|tx| tx.audit_leaves(5, 3)).await.unwrap();
    assert_eq!(
        leaves,
        vec![
            (5, b"leaf 5".to_vec()),
            (6, b"leaf 6".to_vec()),
            (7, b"leaf 7".to_vec())
        ]
    );
    // Appended without a hash: the integrator gets the leaf, to hash it.
    let integrable = store
        .run(|tx| tx.integrate_audit_leaves(0, 2))
        .await
        .unwrap();
    assert_eq!(
        integrable,
        vec![
            (0, LeafToIntegrate::Body(b"leaf 0".to_vec())),
            (1, LeafToIntegrate::Body(b"leaf 1".to_vec()))
        ]
    );
}

/// Many units at once (SQLite groups them in batches, and inserts their leaves after the
/// last unit of each): a leaf is kept exactly when its unit, and the savepoint it was
/// appended in, are; the index a unit was given is where its leaf is, and the kept leaves
/// are dense and found by their facets.
async fn audit_leaves_share_the_fate_of_their_unit_in_a_batch(backend: Backend) {
    let store = backend.store;
    let mut units = Vec::new();
    for i in 0..120i64 {
        let store = store.clone();
        units.push(tokio::spawn(async move {
            let facets = move |what: &str| AuditFacets {
                event_type: "rest".into(),
                subtype: "read".into(),
                outcome: "0".into(),
                purpose: None,
                agents: vec![format!("agent-{i}")],
                patients: vec![format!("{what}-{i}")],
            };
            let outcome = store
                .run(move |tx| {
                    if i % 7 == 0 {
                        tx.savepoint()?;
                        tx.append_audit_indexed(i, b"undone", &[0xff; 32], &facets("undone"))?;
                        tx.rollback_to_savepoint()?;
                    }
                    let body = format!("kept {i}");
                    let number = tx.append_audit_indexed(
                        i,
                        body.as_bytes(),
                        &[i as u8; 32],
                        &facets("kept"),
                    )?;
                    if i % 5 == 0 {
                        return Err(StoreError::Database("the unit gives up".into()));
                    }
                    Ok(number)
                })
                .await;
            (i, outcome)
        }));
    }
    let mut kept = Vec::new();
    for unit in units {
        let (i, outcome) = unit.await.unwrap();
        match outcome {
            Ok(number) => kept.push((number, i)),
            Err(error) => assert!(i % 5 == 0, "unit {i} failed: {error:?}"),
        }
    }
    assert_eq!(kept.len(), 120 - 24);
    let leaves = store.run(|tx| tx.audit_leaves(0, 1_000)).await.unwrap();
    let numbers: Vec<i64> = leaves.iter().map(|(n, _)| *n).collect();
    // PostgreSQL numbers appends by a sequence (gaps where units failed); SQLite densely.
    if store.backend() == "sqlite" {
        assert_eq!(numbers, (0..96).collect::<Vec<i64>>(), "dense");
    }
    assert_eq!(leaves.len(), 96, "exactly the kept leaves");
    for (number, i) in &kept {
        let (_, body) = leaves
            .iter()
            .find(|(n, _)| n == number)
            .unwrap_or_else(|| panic!("unit {i} was told {number}, which holds no leaf"));
        assert_eq!(body, format!("kept {i}").as_bytes());
    }
    // Found by their facets, the undone and failed ones not.
    for (number, i) in kept.iter().take(10) {
        let query = AuditQuery {
            patients: vec![format!("kept-{i}")],
            ..AuditQuery::default()
        };
        let hits = store.run(move |tx| tx.search_audit(&query)).await.unwrap();
        assert_eq!(
            hits.iter().map(|h| h.number).collect::<Vec<_>>(),
            vec![*number]
        );
    }
    for what in ["undone-7", "kept-5"] {
        let query = AuditQuery {
            patients: vec![what.to_owned()],
            ..AuditQuery::default()
        };
        let hits = store.run(move |tx| tx.search_audit(&query)).await.unwrap();
        assert!(hits.is_empty(), "{what} was rolled back but is indexed");
    }
    // The integrator gets each kept leaf's hash as appended, in order, and no leaf body.
    let integrable = store
        .run(|tx| tx.integrate_audit_leaves(0, 1_000))
        .await
        .unwrap();
    assert_eq!(
        integrable
            .iter()
            .map(|(index, _)| *index)
            .collect::<Vec<_>>(),
        (0..96).collect::<Vec<i64>>()
    );
    let mut by_number = kept.clone();
    by_number.sort();
    let expected: Vec<LeafToIntegrate> = by_number
        .iter()
        .map(|(_, i)| LeafToIntegrate::Hashed([*i as u8; 32]))
        .collect();
    let got: Vec<LeafToIntegrate> = integrable.into_iter().map(|(_, leaf)| leaf).collect();
    assert_eq!(got, expected);

    // A leaf appended before a savepoint outlives the savepoint's rollback; one appended
    // inside it does not.
    let before = store
        .run(|tx| tx.audit_leaves(0, 10_000))
        .await
        .unwrap()
        .len();
    let (first, last) = store
        .run(|tx| {
            let first = tx.append_audit(1, b"before the savepoint")?;
            tx.savepoint()?;
            tx.append_audit(2, b"inside the savepoint")?;
            tx.savepoint()?;
            tx.append_audit(2, b"inside the inner savepoint")?;
            tx.release_savepoint()?;
            tx.rollback_to_savepoint()?;
            tx.savepoint()?;
            let last = tx.append_audit(3, b"after the savepoint")?;
            tx.release_savepoint()?;
            Ok((first, last))
        })
        .await
        .unwrap();
    let leaves = store.run(|tx| tx.audit_leaves(0, 10_000)).await.unwrap();
    let tail: Vec<(i64, &[u8])> = leaves[before..]
        .iter()
        .map(|(n, leaf)| (*n, leaf.as_slice()))
        .collect();
    assert_eq!(
        tail,
        vec![
            (first, b"before the savepoint".as_slice()),
            (last, b"after the savepoint".as_slice())
        ]
    );
}

async fn the_audit_index_finds_events_by_patient_agent_kind_and_date(backend: Backend) {
    let store = backend.store;
    // 30 events: agents alternate, patients rotate over three, every fifth is a denial,
    // every tenth an emergency access; event i is recorded at time 1000 + i.
    let mut numbers = Vec::new();
    for i in 0..30i64 {
        let facets = AuditFacets {
            event_type: if i == 29 { "110114" } else { "rest" }.to_owned(),
            subtype: if i % 2 == 0 { "read" } else { "search-type" }.to_owned(),
            outcome: if i % 5 == 0 { "4" } else { "0" }.to_owned(),
            purpose: (i % 10 == 0).then(|| "ETREAT".to_owned()),
            agents: vec![format!("Practitioner/{}", i % 2)],
            // The same patient twice is one facet.
            patients: vec![format!("p{}", i % 3), format!("p{}", i % 3)],
        };
        numbers.push(
            store
                .run(move |tx| {
                    tx.append_audit_indexed(
                        1_000 + i,
                        format!("leaf {i}").as_bytes(),
                        &[i as u8; 32],
                        &facets,
                    )
                })
                .await
                .unwrap(),
        );
    }
    let search = |query: AuditQuery| {
        let store = store.clone();
        async move {
            store
                .read(move |tx| tx.search_audit(&query))
                .await
                .unwrap()
                .into_iter()
                .map(|hit| {
                    assert_eq!(
                        hit.leaf,
                        format!("leaf {}", hit.recorded_us - 1_000).into_bytes()
                    );
                    hit.recorded_us - 1_000
                })
                .collect::<Vec<i64>>()
        }
    };
    let expect =
        |keep: &dyn Fn(i64) -> bool| (0..30).rev().filter(|i| keep(*i)).collect::<Vec<_>>();
    let patient = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        search(AuditQuery {
            patients: patient(&["p1"]),
            ..AuditQuery::default()
        })
        .await,
        expect(&|i| i % 3 == 1)
    );
    assert_eq!(
        search(AuditQuery {
            patients: patient(&["p1", "p2"]),
            agents: patient(&["Practitioner/0"]),
            ..AuditQuery::default()
        })
        .await,
        expect(&|i| i % 3 != 0 && i % 2 == 0)
    );
    assert_eq!(
        search(AuditQuery {
            agents: patient(&["Practitioner/1"]),
            outcomes: patient(&["4"]),
            ..AuditQuery::default()
        })
        .await,
        expect(&|i| i % 2 == 1 && i % 5 == 0)
    );
    assert_eq!(
        search(AuditQuery {
            purposes: patient(&["ETREAT"]),
            subtypes: patient(&["read"]),
            ..AuditQuery::default()
        })
        .await,
        expect(&|i| i % 10 == 0)
    );
    assert_eq!(
        search(AuditQuery {
            event_types: patient(&["110114"]),
            ..AuditQuery::default()
        })
        .await,
        vec![29]
    );
    assert_eq!(
        search(AuditQuery {
            since_us: Some(1_010),
            until_us: Some(1_015),
            ..AuditQuery::default()
        })
        .await,
        vec![14, 13, 12, 11, 10]
    );
    // Pages: newest first, `before` the last number seen, neither skipping nor repeating.
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let query = AuditQuery {
            patients: patient(&["p0"]),
            before,
            limit: 4,
            ..AuditQuery::default()
        };
        let page = store.read(move |tx| tx.search_audit(&query)).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 4);
        before = page.last().map(|hit| hit.number);
        seen.extend(page.into_iter().map(|hit| hit.recorded_us - 1_000));
    }
    assert_eq!(seen, expect(&|i| i % 3 == 0));
    // No match is an empty answer; one event by its number.
    assert!(
        search(AuditQuery {
            patients: patient(&["nobody"]),
            ..AuditQuery::default()
        })
        .await
        .is_empty()
    );
    let seventh = numbers[7];
    let hit = store
        .read(move |tx| tx.audit_event(seventh))
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(hit.leaf, b"leaf 7");
    assert!(
        store
            .read(|tx| tx.audit_event(10_000))
            .await
            .unwrap()
            .is_none()
    );
}

async fn concurrent_units_all_commit(backend: Backend) {
    let store = backend.store;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .run(move |tx| {
                    let id = format!("c{i}");
                    tx.put_version(&version("Patient", &id, 1, id.as_bytes(), &[]))?;
                    tx.append_audit(i, id.as_bytes())
                })
                .await
        }));
    }
    let mut leaves = Vec::new();
    for task in tasks {
        leaves.push(task.await.unwrap().unwrap());
    }
    leaves.sort();
    leaves.dedup();
    assert_eq!(leaves.len(), 200, "every unit got its own audit leaf");
    let ids = store.run(|tx| all_ids(tx, "Patient")).await.unwrap();
    assert_eq!(ids.len(), 200);
}

/// Units queued together share a transaction (group commit): the failed ones must be
/// undone alone, the others kept, whether they fail with an error or a panic.
async fn failed_units_do_not_take_their_batch_down(backend: Backend) {
    let store = backend.store;
    let mut tasks = Vec::new();
    for i in 0..300 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .run(move |tx| {
                    let id = format!("b{i}");
                    tx.put_version(&version("Patient", &id, 1, id.as_bytes(), &[]))?;
                    tx.append_audit(i, id.as_bytes())?;
                    match (i % 3, i % 30) {
                        (0, _) => Ok(i),
                        (_, 2) => panic!("a bug in unit {i}"),
                        _ => Err(StoreError::Database("the unit gives up".into())),
                    }
                })
                .await
        }));
    }
    let mut kept = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        match (i % 3, task.await.unwrap()) {
            (0, Ok(n)) => kept.push(format!("b{n}")),
            (_, Err(StoreError::Panicked(_))) if i % 30 == 2 => {}
            (_, Err(StoreError::Database(_))) if i % 30 != 2 => {}
            (_, other) => panic!("unit {i}: unexpected answer {other:?}"),
        }
    }
    kept.sort();
    let mut ids = store.run(|tx| all_ids(tx, "Patient")).await.unwrap();
    ids.sort();
    assert_eq!(ids, kept, "exactly the units that succeeded are stored");
    let leaves = store.run(|tx| tx.audit_leaves(0, 1_000)).await.unwrap();
    let mut bodies: Vec<String> = leaves
        .iter()
        .map(|(_, leaf)| String::from_utf8(leaf.clone()).unwrap())
        .collect();
    bodies.sort();
    assert_eq!(bodies, kept, "exactly their audit leaves are kept");
}

/// Read units run beside the writer, outside its serialized and audited path: they must
/// not be able to write anything.
async fn read_units_cannot_write(backend: Backend) {
    let store = backend.store;
    let audit = store.read(|tx| tx.append_audit(1, b"sneaky")).await;
    assert!(audit.is_err(), "a read unit appended an audit leaf");
    let put = store
        .read(|tx| tx.put_version(&version("Patient", "sneaky", 1, b"x", &[])))
        .await;
    assert!(put.is_err(), "a read unit wrote a version");
    let (head, leaves) = store
        .run(|tx| Ok((tx.head("Patient", "sneaky")?, tx.audit_leaves(0, 10)?)))
        .await
        .unwrap();
    assert!(head.is_none() && leaves.is_empty(), "nothing was written");
    // Reads see what was committed before them.
    store
        .run(|tx| tx.put_version(&version("Patient", "seen", 1, b"x", &[])))
        .await
        .unwrap();
    let seen = store
        .read(|tx| tx.current("Patient", "seen"))
        .await
        .unwrap();
    assert_eq!(seen.map(|h| h.version), Some(1));
}

/// A read that takes its time (a costly search) holds up no write: the write below must
/// complete while the read is still running, or the read gives up waiting for it.
async fn a_long_read_does_not_hold_up_writes(backend: Backend) {
    let store = backend.store;
    let (written, wait_for_write) = std::sync::mpsc::channel::<()>();
    let (started, read_started) = std::sync::mpsc::channel::<()>();
    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .read(move |tx| {
                    let before = tx.current("Patient", "during")?;
                    started.send(()).expect("the test waits");
                    let saw_write = wait_for_write
                        .recv_timeout(std::time::Duration::from_secs(20))
                        .is_ok();
                    // Still the snapshot the read started on.
                    let after = tx.current("Patient", "during")?;
                    Ok((saw_write, before.is_none() && after.is_none()))
                })
                .await
        })
    };
    // The read has taken its snapshot before the write.
    tokio::task::spawn_blocking(move || read_started.recv())
        .await
        .unwrap()
        .unwrap();
    store
        .run(|tx| tx.put_version(&version("Patient", "during", 1, b"x", &[])))
        .await
        .unwrap();
    written.send(()).unwrap();
    let (saw_write, one_snapshot) = reader.await.unwrap().unwrap();
    assert!(saw_write, "the write waited for the read to finish");
    assert!(
        one_snapshot,
        "the read saw a write committed after it began"
    );
}

async fn revocations_are_kept_found_and_lifted(backend: Backend) {
    let store = backend.store;
    let found = |jti: Option<&'static str>, subject: &'static str| {
        let store = store.clone();
        async move {
            store
                .read(move |tx| tx.revocation(jti, subject))
                .await
                .unwrap()
        }
    };
    assert_eq!(found(Some("t1"), "Practitioner/a").await, None);
    store
        .run(|tx| {
            tx.revoke("jti", "t1", 1, "stolen laptop")?;
            tx.revoke("subject", "Practitioner/b", 2, "left the hospital")?;
            // Revoking again keeps the first reason.
            tx.revoke("jti", "t1", 3, "again")
        })
        .await
        .unwrap();
    assert_eq!(
        found(Some("t1"), "Practitioner/a").await.as_deref(),
        Some("stolen laptop")
    );
    assert_eq!(
        found(Some("t2"), "Practitioner/a").await,
        None,
        "another token of the same subject"
    );
    assert_eq!(
        found(None, "Practitioner/b").await.as_deref(),
        Some("left the hospital")
    );
    assert_eq!(
        found(Some("t9"), "Practitioner/b").await.as_deref(),
        Some("left the hospital")
    );
    // A jti equal to a subject's name, or the reverse, is not confused.
    assert_eq!(found(Some("Practitioner/b"), "x").await, None);
    assert_eq!(found(None, "t1").await, None);
    let lifted = store
        .run(|tx| {
            Ok((
                tx.lift_revocation("jti", "t1")?,
                tx.lift_revocation("jti", "t1")?,
            ))
        })
        .await
        .unwrap();
    assert_eq!(lifted, (true, false));
    assert_eq!(found(Some("t1"), "Practitioner/a").await, None);
}

async fn break_glass_grants_open_expire_and_close(backend: Backend) {
    let store = backend.store;
    let grant = |patient: &'static str, until_us: i64| hygie_store::NewBreakGlass {
        subject: "Practitioner/a",
        patient,
        reason: "unconscious in the ER",
        opened_us: 100,
        until_us,
        request_id: "r1",
    };
    let (first, second) = store
        .run(move |tx| {
            Ok((
                tx.open_break_glass(&grant("p1", 1_000))?,
                tx.open_break_glass(&grant("p2", 500))?,
            ))
        })
        .await
        .unwrap();
    assert_ne!(first, second);
    let patients = |subject: &'static str, now: i64| {
        let store = store.clone();
        async move {
            let mut found = store
                .read(move |tx| tx.break_glass_patients(subject, now))
                .await
                .unwrap();
            found.sort();
            found
        }
    };
    assert_eq!(patients("Practitioner/a", 400).await, ["p1", "p2"]);
    assert_eq!(patients("Practitioner/a", 600).await, ["p1"], "p2 expired");
    assert!(
        patients("Practitioner/b", 400).await.is_empty(),
        "not another's"
    );
    let closed = store
        .run(move |tx| {
            Ok((
                tx.close_break_glass(first, "dpo:x", "justified", 700)?,
                tx.close_break_glass(first, "dpo:x", "again", 800)?,
                tx.close_break_glass(999_999, "dpo:x", "none", 800)?,
            ))
        })
        .await
        .unwrap();
    assert_eq!(closed, (true, false, false));
    assert_eq!(
        patients("Practitioner/a", 600).await,
        ["p1"],
        "a closed review does not cut an emergency short: the grant runs its window"
    );
    let (open, all) = store
        .read(|tx| {
            Ok((
                tx.break_glass_grants(false, 10)?,
                tx.break_glass_grants(true, 10)?,
            ))
        })
        .await
        .unwrap();
    assert_eq!(
        open.iter().map(|g| g.grant_id).collect::<Vec<_>>(),
        [second]
    );
    assert_eq!(all.len(), 2);
    let reviewed = all.iter().find(|g| g.grant_id == first).unwrap();
    assert_eq!(reviewed.review.as_deref(), Some("justified"));
    assert_eq!(reviewed.closed_by.as_deref(), Some("dpo:x"));
    assert_eq!(reviewed.reason, "unconscious in the ER");
}

async fn long_tokens_are_indexed_and_found(backend: Backend) {
    // Longer than a PostgreSQL btree entry may be (~2.7 kB): the index must not refuse it.
    let long_code: String = "x".repeat(100_000);
    let long_system: String = "urn:é:".repeat(2_000);
    let tokens = [token("identifier", &long_system, &long_code)];
    let store = backend.store;
    store
        .run(move |tx| tx.put_version(&version("Patient", "long", 1, b"1", &tokens)))
        .await
        .unwrap();
    let (by_code, by_system) = store
        .run(move |tx| {
            let by_code = find_token(tx, Some(&long_system), Some(&long_code))?;
            let by_system = find_token(tx, Some(&long_system), None)?;
            Ok((by_code, by_system))
        })
        .await
        .unwrap();
    assert_eq!(by_code, ["long"]);
    assert_eq!(by_system, ["long"]);
}

fn data_key(key_id: i64, scope: &str, wrapped: &[u8]) -> StoredDataKey {
    StoredDataKey {
        key_id,
        scope: scope.to_owned(),
        generation: 1,
        wrapped: Some(wrapped.to_vec()),
        is_current: true,
        created_us: 10,
        erased_us: None,
    }
}

/// The vault's key table: one current key per scope (a second "first" key is refused, as
/// when two processes race), replaced keys still found by id, rewrapped, erased (the row
/// stays, without its wrapped form), and the versions each key sealed found again.
async fn data_keys_are_kept_replaced_rewrapped_and_erased(backend: Backend) {
    let store = backend.store;
    let (first, second) = store
        .run(|tx| {
            let first = tx.next_data_key_id()?;
            assert!(tx.put_data_key(&data_key(first, "patient/p", b"w1"), false)?);
            let second = tx.next_data_key_id()?;
            assert_ne!(first, second, "key numbers are never handed out twice");
            assert!(
                !tx.put_data_key(&data_key(second, "patient/p", b"w2"), false)?,
                "a scope has one current key"
            );
            Ok((first, second))
        })
        .await
        .unwrap();
    let current = store
        .run(|tx| tx.current_data_key("patient/p"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(current, data_key(first, "patient/p", b"w1"));

    // A new key for the scope (a patient's re-encryption): the old one still opens.
    let third = store
        .run(move |tx| {
            let third = tx.next_data_key_id()?;
            assert!(third > first && third >= second);
            assert!(tx.put_data_key(&data_key(third, "patient/p", b"w3"), true)?);
            tx.put_version(&NewVersion {
                key_id: Some(first),
                ..version("Patient", "p", 1, b"sealed-1", &[])
            })?;
            tx.put_version(&NewVersion {
                key_id: Some(third),
                ..version("Patient", "p", 2, b"sealed-3", &[])
            })?;
            tx.put_version(&NewVersion {
                key_id: Some(third),
                ..version("Observation", "o", 1, b"obs", &[])
            })?;
            let organization = tx.next_data_key_id()?;
            tx.put_data_key(&data_key(organization, "type/Organization", b"wo"), false)?;
            Ok(third)
        })
        .await
        .unwrap();
    let (old, now, all) = store
        .run(move |tx| {
            Ok((
                tx.data_key(first)?.unwrap(),
                tx.current_data_key("patient/p")?.unwrap(),
                tx.data_keys(0, 10)?,
            ))
        })
        .await
        .unwrap();
    assert!(!old.is_current && old.wrapped.as_deref() == Some(b"w1".as_slice()));
    assert_eq!(now.key_id, third);
    assert_eq!(all.len(), 3);
    assert!(all.windows(2).all(|w| w[0].key_id < w[1].key_id));

    // Versions sealed with the patient's keys, in write order; a reseal moves one.
    let sealed = store
        .run(move |tx| tx.versions_sealed_with(&[first, third], 0, 10))
        .await
        .unwrap();
    let bodies: Vec<&[u8]> = sealed.iter().map(|v| v.body.as_slice()).collect();
    assert_eq!(bodies, [b"sealed-1".as_slice(), b"sealed-3", b"obs"]);
    let seq = sealed[0].seq;
    store
        .run(move |tx| tx.reseal_version(seq, third, b"resealed"))
        .await
        .unwrap();
    let (under_first, version_1) = store
        .run(move |tx| {
            Ok((
                tx.versions_sealed_with(&[first], 0, 10)?,
                tx.version("Patient", "p", 1)?.unwrap(),
            ))
        })
        .await
        .unwrap();
    assert!(under_first.is_empty());
    assert_eq!(version_1.body, b"resealed");
    let missing = store.run(|tx| tx.reseal_version(999_999, 1, b"x")).await;
    assert!(
        missing.is_err(),
        "resealing a version that is not there fails"
    );

    // Rewrapped, then erased: the rows stay, without their wrapped forms.
    store
        .run(move |tx| tx.rewrap_data_key(third, 2, b"w3-gen2"))
        .await
        .unwrap();
    let rewrapped = store
        .run(move |tx| tx.data_key(third))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (rewrapped.generation, rewrapped.wrapped.as_deref()),
        (2, Some(b"w3-gen2".as_slice()))
    );
    let erased = store
        .run(|tx| tx.erase_data_keys("patient/p", 99))
        .await
        .unwrap();
    assert_eq!(erased, vec![first, third]);
    let (gone_old, gone_now, other) = store
        .run(move |tx| {
            Ok((
                tx.data_key(first)?.unwrap(),
                tx.data_key(third)?.unwrap(),
                tx.current_data_key("type/Organization")?.unwrap(),
            ))
        })
        .await
        .unwrap();
    assert_eq!((gone_old.wrapped, gone_old.erased_us), (None, Some(99)));
    assert_eq!((gone_now.wrapped, gone_now.erased_us), (None, Some(99)));
    assert!(other.wrapped.is_some(), "other scopes keep their keys");
    // An erased key cannot be rewrapped back into use.
    store
        .run(move |tx| tx.rewrap_data_key(third, 3, b"revived"))
        .await
        .unwrap();
    let still = store
        .run(move |tx| tx.data_key(third))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(still.wrapped, None);
}

async fn inbound_messages_are_remembered_once_and_forgotten_oldest_first(backend: Backend) {
    let store = backend.store;
    store
        .run(|tx| {
            assert_eq!(tx.inbound_message("ADT|HOSP|1")?, None);
            for (n, received) in [(1, 100), (2, 200), (3, 300)] {
                tx.put_inbound_message(
                    &format!("ADT|HOSP|{n}"),
                    &format!("f{n}"),
                    received,
                    &format!("ack {n}"),
                )?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let remembered = store
        .read(|tx| tx.inbound_message("ADT|HOSP|2"))
        .await
        .unwrap();
    assert_eq!(remembered, Some(("f2".to_owned(), "ack 2".to_owned())));
    // A key is remembered once: a second insert fails (and its unit with it).
    let again = store
        .run(|tx| tx.put_inbound_message("ADT|HOSP|2", "other", 400, "other ack"))
        .await;
    assert!(again.is_err(), "a remembered key cannot be overwritten");
    // A rolled-back unit remembers nothing.
    let failed: StoreResult<()> = store
        .run(|tx| {
            tx.put_inbound_message("ADT|HOSP|9", "f9", 900, "ack 9")?;
            Err(StoreError::Database(
                "the message's transaction failed".to_owned(),
            ))
        })
        .await;
    assert!(failed.is_err());
    assert_eq!(
        store
            .read(|tx| tx.inbound_message("ADT|HOSP|9"))
            .await
            .unwrap(),
        None
    );
    // Forgotten: received before the cutoff, oldest first, at most `limit` per call.
    assert_eq!(
        store
            .run(|tx| tx.prune_inbound_messages(301, 2))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .read(|tx| tx.inbound_message("ADT|HOSP|1"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .read(|tx| tx.inbound_message("ADT|HOSP|2"))
            .await
            .unwrap(),
        None
    );
    assert!(
        store
            .read(|tx| tx.inbound_message("ADT|HOSP|3"))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        store
            .run(|tx| tx.prune_inbound_messages(300, 10))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .run(|tx| tx.prune_inbound_messages(301, 10))
            .await
            .unwrap(),
        1
    );
}
