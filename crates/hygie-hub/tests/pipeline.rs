//! The hub's pipeline on both backends: every access is audited in its own transaction,
//! refusals are audited and write nothing, and an access whose audit cannot be written
//! fails (fail closed).

use std::any::Any;
use std::sync::Arc;

use hygie_hub::{Caller, Hub, HubConfig, ReturnPreference};
use hygie_policy::Principal;
use hygie_store::testing::TestBackend;
use hygie_store::{
    BoxFuture, BoxedUnit, Filter, Head, HistoryQuery, IndexRow, NewVersion, SearchHit, SearchSpec,
    SharedStore, Store, StoreError, StoreExt, StoreResult, StoredDataKey, Tx, VersionRecord,
};
use serde_json::{Value, json};

type Backend = TestBackend;

hygie_store::on_both_backends!(
    every_access_leaves_one_audit_record,
    refusals_are_audited_and_write_nothing,
    an_access_whose_audit_fails_is_not_performed,
    anonymous_callers_are_denied_and_audited,
    a_failing_transaction_writes_nothing_but_its_audit,
    a_history_page_audits_exactly_what_it_returned,
    a_reindex_is_audited_and_makes_old_data_findable,
    a_transaction_indexes_each_entry_as_it_is_written,
);

fn developer() -> Caller {
    Caller::new(Principal::development(), "test")
}

async fn audit_events(store: &SharedStore) -> Vec<Value> {
    store
        .run(|tx| tx.audit_leaves(0, 10_000))
        .await
        .unwrap()
        .into_iter()
        .map(|(_, leaf)| serde_json::from_slice(&leaf).unwrap())
        .collect()
}

/// The references of what an event touched (not its patient entities, nor its query).
fn data_entities(event: &Value) -> Vec<String> {
    event["entity"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.get("role").is_none())
        .filter_map(|e| e["what"]["reference"].as_str().map(str::to_owned))
        .collect()
}

fn subtype(event: &Value) -> &str {
    event["subtype"][0]["code"].as_str().unwrap()
}

async fn every_access_leaves_one_audit_record(backend: Backend) {
    let hub = Hub::new(backend.store.clone(), HubConfig::default());
    let caller = developer();
    let created = hub
        .create(&caller, "Patient", json!({"resourceType": "Patient"}), None)
        .await
        .unwrap();
    let id = created.stored.id.clone();
    hub.read(&caller, "Patient", &id).await.unwrap();
    hub.update(
        &caller,
        "Patient",
        &id,
        json!({"resourceType": "Patient", "id": id, "gender": "other"}),
        None,
    )
    .await
    .unwrap();
    hub.vread(&caller, "Patient", &id, "1").await.unwrap();
    hub.search(
        &caller,
        hygie_hub::SearchScope {
            resource_type: "Patient".into(),
            compartment: None,
        },
        "_id=x",
        false,
    )
    .await
    .unwrap();
    hub.history(&caller, hygie_hub::HistoryRequest::default())
        .await
        .unwrap();
    hub.delete(&caller, "Patient", &id).await.unwrap();
    let events = audit_events(&backend.store).await;
    let subtypes: Vec<&str> = events.iter().map(subtype).collect();
    assert_eq!(
        subtypes,
        [
            "create",
            "read",
            "update",
            "vread",
            "search-type",
            "history",
            "delete"
        ]
    );
    assert!(events.iter().all(|e| e["outcome"] == "0"));
    // Each names its patient first (BALP: the patient entity), then the data; the search
    // (`_id=x`) found nothing, and names no one.
    assert!(events[4]["entity"][0].get("role").is_none());
    for event in events.iter().filter(|e| subtype(e) != "search-type") {
        assert_eq!(
            event["entity"][0]["what"]["reference"],
            format!("Patient/{id}")
        );
        assert_eq!(event["entity"][0]["role"]["code"], "1");
    }
    assert_eq!(
        data_entities(&events[1]),
        [format!("Patient/{id}/_history/1")]
    );
    assert_eq!(
        data_entities(&events[2]),
        [format!("Patient/{id}/_history/2")]
    );
    assert_eq!(
        events[1]["agent"][0]["who"]["display"],
        "development (--no-auth)"
    );
    assert_eq!(
        events[4]["entity"].as_array().unwrap().last().unwrap()["query"],
        "X2lkPXg="
    );
}

async fn refusals_are_audited_and_write_nothing(backend: Backend) {
    let hub = Hub::new(backend.store.clone(), HubConfig::default());
    let caller = developer();
    let invalid = hub
        .update(
            &caller,
            "Patient",
            "p1",
            json!({"resourceType": "Patient", "id": "p1", "birthDate": "1970-13-01"}),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(invalid.status, 422);
    assert_eq!(
        invalid.issues[0].expression.as_deref(),
        Some("Patient.birthDate")
    );
    hub.update(
        &caller,
        "Patient",
        "p1",
        json!({"resourceType": "Patient", "id": "p1"}),
        None,
    )
    .await
    .unwrap();
    let stale = hub
        .update(
            &caller,
            "Patient",
            "p1",
            json!({"resourceType": "Patient", "id": "p1", "gender": "male"}),
            Some("W/\"7\""),
        )
        .await
        .unwrap_err();
    assert_eq!(stale.status, 412);
    let head = backend
        .store
        .run(|tx| tx.head("Patient", "p1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head.version, 1, "the stale update wrote nothing");
    let events = audit_events(&backend.store).await;
    // The invalid body never reached the store (rejected before the pipeline); the stale
    // update did, and is recorded as a failure.
    let outcomes: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (subtype(e), e["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(outcomes, [("update", "0"), ("update", "4")]);
    assert_eq!(events[1]["entity"][0]["what"]["reference"], "Patient/p1");
    assert!(events[1]["outcomeDesc"].as_str().unwrap().contains("412"));
}

/// Ids of every current resource of a type, as the store holds them.
fn ids(tx: &mut dyn Tx, resource_type: &str) -> StoreResult<Vec<String>> {
    let spec = SearchSpec {
        resource_type: resource_type.into(),
        filters: vec![],
        sort: vec![],
        position: None,
        limit: 100,
    };
    Ok(tx.search(&spec)?.into_iter().map(|hit| hit.id).collect())
}

/// A store whose audit appends fail: what a full disk or a revoked grant on the audit
/// table looks like to the hub.
struct FailingAudit(SharedStore);

struct FailingAuditTx<'a>(&'a mut dyn Tx);

impl Tx for FailingAuditTx<'_> {
    fn head(&mut self, t: &str, id: &str) -> StoreResult<Option<Head>> {
        self.0.head(t, id)
    }
    fn current(&mut self, t: &str, id: &str) -> StoreResult<Option<VersionRecord>> {
        self.0.current(t, id)
    }
    fn version(&mut self, t: &str, id: &str, v: i64) -> StoreResult<Option<VersionRecord>> {
        self.0.version(t, id, v)
    }
    fn put_version(&mut self, v: &NewVersion<'_>) -> StoreResult<()> {
        self.0.put_version(v)
    }
    fn history(&mut self, q: &HistoryQuery) -> StoreResult<Vec<VersionRecord>> {
        self.0.history(q)
    }
    fn max_seq(&mut self) -> StoreResult<i64> {
        self.0.max_seq()
    }
    fn search(&mut self, s: &SearchSpec) -> StoreResult<Vec<SearchHit>> {
        self.0.search(s)
    }
    fn count(&mut self, t: &str, f: &[Filter]) -> StoreResult<u64> {
        self.0.count(t, f)
    }
    fn references_from(
        &mut self,
        t: &str,
        ids: &[String],
        p: Option<&str>,
        l: usize,
    ) -> StoreResult<Vec<(String, String)>> {
        self.0.references_from(t, ids, p, l)
    }
    fn references_to(
        &mut self,
        s: &str,
        p: Option<&str>,
        t: &str,
        ids: &[String],
        l: usize,
    ) -> StoreResult<Vec<String>> {
        self.0.references_to(s, p, t, ids, l)
    }
    fn current_many(&mut self, t: &str, ids: &[String]) -> StoreResult<Vec<VersionRecord>> {
        self.0.current_many(t, ids)
    }
    fn compartment(
        &mut self,
        t: &str,
        id: &str,
        m: &[(String, Vec<String>)],
        a: Option<(&str, &str)>,
        l: usize,
    ) -> StoreResult<Vec<(String, String)>> {
        self.0.compartment(t, id, m, a, l)
    }
    fn scan_current(
        &mut self,
        a: Option<(&str, &str)>,
        l: usize,
    ) -> StoreResult<Vec<VersionRecord>> {
        self.0.scan_current(a, l)
    }
    fn replace_index(&mut self, t: &str, id: &str, rows: &[IndexRow]) -> StoreResult<()> {
        self.0.replace_index(t, id, rows)
    }
    fn refresh_statistics(&mut self) -> StoreResult<()> {
        self.0.refresh_statistics()
    }
    fn data_key(&mut self, key_id: i64) -> StoreResult<Option<StoredDataKey>> {
        self.0.data_key(key_id)
    }
    fn current_data_key(&mut self, scope: &str) -> StoreResult<Option<StoredDataKey>> {
        self.0.current_data_key(scope)
    }
    fn next_data_key_id(&mut self) -> StoreResult<i64> {
        self.0.next_data_key_id()
    }
    fn put_data_key(&mut self, key: &StoredDataKey, replace: bool) -> StoreResult<bool> {
        self.0.put_data_key(key, replace)
    }
    fn rewrap_data_key(&mut self, key_id: i64, generation: i64, wrapped: &[u8]) -> StoreResult<()> {
        self.0.rewrap_data_key(key_id, generation, wrapped)
    }
    fn erase_data_keys(&mut self, scope: &str, erased_us: i64) -> StoreResult<Vec<i64>> {
        self.0.erase_data_keys(scope, erased_us)
    }
    fn data_keys(&mut self, after: i64, limit: usize) -> StoreResult<Vec<StoredDataKey>> {
        self.0.data_keys(after, limit)
    }
    fn versions_sealed_with(
        &mut self,
        key_ids: &[i64],
        after_seq: i64,
        limit: usize,
    ) -> StoreResult<Vec<VersionRecord>> {
        self.0.versions_sealed_with(key_ids, after_seq, limit)
    }
    fn unsealed_versions(
        &mut self,
        after_seq: i64,
        limit: usize,
    ) -> StoreResult<Vec<VersionRecord>> {
        self.0.unsealed_versions(after_seq, limit)
    }
    fn reseal_version(&mut self, seq: i64, key_id: i64, body: &[u8]) -> StoreResult<()> {
        self.0.reseal_version(seq, key_id, body)
    }
    fn inbound_message(&mut self, k: &str) -> StoreResult<Option<(String, String)>> {
        self.0.inbound_message(k)
    }
    fn put_inbound_message(&mut self, k: &str, f: &str, r: i64, a: &str) -> StoreResult<()> {
        self.0.put_inbound_message(k, f, r, a)
    }
    fn prune_inbound_messages(&mut self, b: i64, l: usize) -> StoreResult<usize> {
        self.0.prune_inbound_messages(b, l)
    }
    fn meta_get(&mut self, k: &str) -> StoreResult<Option<String>> {
        self.0.meta_get(k)
    }
    fn meta_set(&mut self, k: &str, v: &str) -> StoreResult<()> {
        self.0.meta_set(k, v)
    }
    fn revoke(&mut self, k: &str, v: &str, at: i64, why: &str) -> StoreResult<()> {
        self.0.revoke(k, v, at, why)
    }
    fn lift_revocation(&mut self, k: &str, v: &str) -> StoreResult<bool> {
        self.0.lift_revocation(k, v)
    }
    fn revocation(&mut self, jti: Option<&str>, subject: &str) -> StoreResult<Option<String>> {
        self.0.revocation(jti, subject)
    }
    fn referenced_through(
        &mut self,
        t: &str,
        id: &str,
        params: &[String],
        target: &str,
    ) -> StoreResult<Vec<String>> {
        self.0.referenced_through(t, id, params, target)
    }
    fn open_break_glass(&mut self, grant: &hygie_store::NewBreakGlass<'_>) -> StoreResult<i64> {
        self.0.open_break_glass(grant)
    }
    fn break_glass_patients(&mut self, subject: &str, now: i64) -> StoreResult<Vec<String>> {
        self.0.break_glass_patients(subject, now)
    }
    fn break_glass_grants(
        &mut self,
        all: bool,
        limit: usize,
    ) -> StoreResult<Vec<hygie_store::BreakGlassGrant>> {
        self.0.break_glass_grants(all, limit)
    }
    fn close_break_glass(&mut self, id: i64, by: &str, review: &str, at: i64) -> StoreResult<bool> {
        self.0.close_break_glass(id, by, review, at)
    }
    fn append_audit(&mut self, _: i64, _: &[u8]) -> StoreResult<i64> {
        Err(StoreError::Database("audit_log: disk full".into()))
    }
    fn append_audit_indexed(
        &mut self,
        _: i64,
        _: &[u8],
        _: &[u8; 32],
        _: &hygie_store::AuditFacets,
    ) -> StoreResult<i64> {
        Err(StoreError::Database("audit_log: disk full".into()))
    }
    fn search_audit(
        &mut self,
        query: &hygie_store::AuditQuery,
    ) -> StoreResult<Vec<hygie_store::AuditHit>> {
        self.0.search_audit(query)
    }
    fn audit_event(&mut self, number: i64) -> StoreResult<Option<hygie_store::AuditHit>> {
        self.0.audit_event(number)
    }
    fn prune_audit_leaves(
        &mut self,
        leaves: &[(i64, hygie_store::AuditFacets)],
    ) -> StoreResult<()> {
        self.0.prune_audit_leaves(leaves)
    }
    fn audit_leaves(&mut self, f: i64, l: usize) -> StoreResult<Vec<(i64, Vec<u8>)>> {
        self.0.audit_leaves(f, l)
    }
    fn integrate_audit_leaves(
        &mut self,
        n: i64,
        l: usize,
    ) -> StoreResult<Vec<(i64, hygie_store::LeafToIntegrate)>> {
        self.0.integrate_audit_leaves(n, l)
    }
    fn audit_tree_leaves(&mut self, f: i64, l: usize) -> StoreResult<Vec<(i64, Option<Vec<u8>>)>> {
        self.0.audit_tree_leaves(f, l)
    }
    fn audit_nodes(&mut self, ids: &[(u32, i64)]) -> StoreResult<Vec<Option<[u8; 32]>>> {
        self.0.audit_nodes(ids)
    }
    fn audit_node_range(
        &mut self,
        level: u32,
        f: i64,
        t: i64,
    ) -> StoreResult<Vec<(i64, [u8; 32])>> {
        self.0.audit_node_range(level, f, t)
    }
    fn put_audit_nodes(&mut self, nodes: &[(u32, i64, [u8; 32])]) -> StoreResult<()> {
        self.0.put_audit_nodes(nodes)
    }
    fn put_audit_checkpoint(&mut self, c: &hygie_store::StoredCheckpoint) -> StoreResult<()> {
        self.0.put_audit_checkpoint(c)
    }
    fn audit_checkpoints(
        &mut self,
        f: i64,
        l: usize,
    ) -> StoreResult<Vec<hygie_store::StoredCheckpoint>> {
        self.0.audit_checkpoints(f, l)
    }
    fn latest_audit_checkpoint(&mut self) -> StoreResult<Option<hygie_store::StoredCheckpoint>> {
        self.0.latest_audit_checkpoint()
    }
    fn put_audit_cosignature(&mut self, s: i64, w: &str, n: &str, at: i64) -> StoreResult<()> {
        self.0.put_audit_cosignature(s, w, n, at)
    }
    fn pending_audit_leaves(&mut self, size: i64) -> StoreResult<i64> {
        self.0.pending_audit_leaves(size)
    }
    fn lock(&mut self, key: &str) -> StoreResult<()> {
        self.0.lock(key)
    }
    fn savepoint(&mut self) -> StoreResult<()> {
        self.0.savepoint()
    }
    fn rollback_to_savepoint(&mut self) -> StoreResult<()> {
        self.0.rollback_to_savepoint()
    }
    fn release_savepoint(&mut self) -> StoreResult<()> {
        self.0.release_savepoint()
    }
}

impl Store for FailingAudit {
    fn run_boxed(&self, unit: BoxedUnit) -> BoxFuture<StoreResult<Box<dyn Any + Send>>> {
        self.0
            .run_boxed(Box::new(move |tx| unit(&mut FailingAuditTx(tx))))
    }
    fn read_boxed(&self, unit: BoxedUnit) -> BoxFuture<StoreResult<Box<dyn Any + Send>>> {
        self.0
            .read_boxed(Box::new(move |tx| unit(&mut FailingAuditTx(tx))))
    }
    fn backend(&self) -> &'static str {
        self.0.backend()
    }
    fn close(&self) -> BoxFuture<()> {
        self.0.close()
    }
}

async fn an_access_whose_audit_fails_is_not_performed(backend: Backend) {
    let healthy = Hub::new(backend.store.clone(), HubConfig::default());
    let caller = developer();
    healthy
        .update(
            &caller,
            "Patient",
            "kept",
            json!({"resourceType": "Patient", "id": "kept"}),
            None,
        )
        .await
        .unwrap();
    let failing = Hub::new(
        Arc::new(FailingAudit(backend.store.clone())),
        HubConfig::default(),
    );
    let create = failing
        .update(
            &caller,
            "Patient",
            "lost",
            json!({"resourceType": "Patient", "id": "lost"}),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(create.status, 500);
    let read = failing.read(&caller, "Patient", "kept").await.unwrap_err();
    assert_eq!(
        read.status, 500,
        "no data is returned without its audit record"
    );
    assert!(read.issues[0].diagnostics.contains("not performed"));
    // A search reads on a snapshot beside the writer, then appends its leaf: no leaf, no
    // data either.
    let search = failing
        .search(
            &caller,
            hygie_hub::SearchScope {
                resource_type: "Patient".to_owned(),
                compartment: None,
            },
            "",
            false,
        )
        .await
        .unwrap_err();
    assert_eq!(
        search.status, 500,
        "no search result is returned without its audit record"
    );
    assert!(
        failing.ready().await.is_err(),
        "/readyz reports the audit as not writable"
    );
    let lost = backend
        .store
        .run(|tx| tx.head("Patient", "lost"))
        .await
        .unwrap();
    assert!(
        lost.is_none(),
        "the write whose audit failed was rolled back"
    );
    assert_eq!(
        audit_events(&backend.store).await.len(),
        1,
        "only the healthy write is recorded"
    );
}

async fn anonymous_callers_are_denied_and_audited(backend: Backend) {
    let hub = Hub::new(backend.store.clone(), HubConfig::default());
    let anonymous = Caller::new(Principal::anonymous(), "anon");
    let denied = hub.read(&anonymous, "Patient", "x").await.unwrap_err();
    assert_eq!(denied.status, 401);
    let denied_write = hub
        .create(
            &anonymous,
            "Patient",
            json!({"resourceType": "Patient"}),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(denied_write.status, 401);
    let listed = backend.store.run(|tx| ids(tx, "Patient")).await.unwrap();
    assert!(listed.is_empty());
    let events = audit_events(&backend.store).await;
    assert_eq!(events.len(), 2);
    assert!(
        events
            .iter()
            .all(|e| e["outcome"] == "4" && e["agent"][0]["who"]["display"] == "anonymous")
    );
}

async fn a_failing_transaction_writes_nothing_but_its_audit(backend: Backend) {
    let hub = Hub::new(backend.store.clone(), HubConfig::default());
    let caller = developer();
    hub.update(
        &caller,
        "Patient",
        "existing",
        json!({"resourceType": "Patient", "id": "existing"}),
        None,
    )
    .await
    .unwrap();
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:0b8e6c8e-7a3e-4bb0-9bde-3c0f1b3f0a11",
             "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:t", "value": "new"}]},
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                          "subject": {"reference": "urn:uuid:0b8e6c8e-7a3e-4bb0-9bde-3c0f1b3f0a11"}},
             "request": {"method": "POST", "url": "Observation"}},
            {"resource": {"resourceType": "Patient", "id": "existing", "gender": "female"},
             "request": {"method": "PUT", "url": "Patient/existing", "ifMatch": "W/\"9\""}},
        ],
    });
    let error = hub
        .bundle(&caller, bundle.clone(), ReturnPreference::Minimal)
        .await
        .unwrap_err();
    assert_eq!(error.status, 412);
    assert_eq!(
        error.issues[0].expression.as_deref(),
        Some("Bundle.entry[2]")
    );
    let (patients, observations) = backend
        .store
        .run(|tx| Ok((ids(tx, "Patient")?, ids(tx, "Observation")?)))
        .await
        .unwrap();
    assert_eq!(
        patients,
        ["existing"],
        "the transaction's create was rolled back"
    );
    assert!(observations.is_empty());
    let events = audit_events(&backend.store).await;
    assert_eq!(events.last().unwrap()["outcome"], "4");
    // The same transaction without the stale precondition commits, references resolved.
    let mut fixed = bundle;
    fixed["entry"][2]["request"]["ifMatch"] = json!("W/\"1\"");
    let response: Value = serde_json::from_slice(
        &hub.bundle(&caller, fixed, ReturnPreference::Representation)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(response["type"], "transaction-response");
    let patient_id = response["entry"][0]["resource"]["id"].as_str().unwrap();
    assert_eq!(
        response["entry"][1]["resource"]["subject"]["reference"],
        format!("Patient/{patient_id}")
    );
    assert_eq!(response["entry"][2]["response"]["status"], "200 OK");
}

async fn a_history_page_audits_exactly_what_it_returned(backend: Backend) {
    let hub = Hub::new(backend.store.clone(), HubConfig::default());
    let caller = developer();
    for gender in ["male", "female", "other"] {
        hub.update(
            &caller,
            "Patient",
            "h",
            json!({"resourceType": "Patient", "id": "h", "gender": gender}),
            None,
        )
        .await
        .unwrap();
    }
    let page: Value = serde_json::from_slice(
        &hub.history(
            &caller,
            hygie_hub::HistoryRequest {
                resource_type: Some("Patient".into()),
                id: Some("h".into()),
                query: "_count=2".into(),
            },
        )
        .await
        .unwrap(),
    )
    .unwrap();
    assert_eq!(page["entry"].as_array().unwrap().len(), 2);
    assert!(
        page["link"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["relation"] == "next")
    );
    let events = audit_events(&backend.store).await;
    let history = events.last().unwrap();
    assert_eq!(subtype(history), "history");
    // The version fetched only to know that a next page exists was not returned, so it
    // is not recorded as accessed.
    assert_eq!(
        data_entities(history),
        ["Patient/h/_history/3", "Patient/h/_history/2"]
    );
}

async fn a_reindex_is_audited_and_makes_old_data_findable(backend: Backend) {
    let hub = Hub::new(backend.store.clone(), HubConfig::default());
    let caller = developer();
    assert_eq!(
        hub.bring_index_up_to_date().await.unwrap(),
        0,
        "empty store"
    );
    let created = hub
        .create(
            &caller,
            "Patient",
            json!({"resourceType": "Patient", "name": [{"family": "Reindexed"}]}),
            None,
        )
        .await
        .unwrap();
    let id = created.stored.id.clone();
    // As if the data had been indexed by older rules: rows gone, version marker stale.
    let wipe_id = id.clone();
    backend
        .store
        .run(move |tx| {
            tx.replace_index("Patient", &wipe_id, &[])?;
            tx.meta_set("search.index_version", "older-rules")
        })
        .await
        .unwrap();
    let scope = || hygie_hub::SearchScope {
        resource_type: "Patient".into(),
        compartment: None,
    };
    let found = |bytes: Vec<u8>| -> usize {
        let bundle: Value = serde_json::from_slice(&bytes).unwrap();
        bundle["entry"].as_array().map_or(0, Vec::len)
    };
    let before = hub
        .search(&caller, scope(), "family=reindexed", false)
        .await
        .unwrap();
    assert_eq!(found(before), 0, "the rows were wiped");
    let leaves_before = audit_events(&backend.store).await.len();
    assert_eq!(hub.bring_index_up_to_date().await.unwrap(), 1);
    let events = audit_events(&backend.store).await;
    assert_eq!(events.len(), leaves_before + 1, "one leaf for the batch");
    let leaf = events.last().unwrap().to_string();
    assert!(leaf.contains("reindex"), "{leaf}");
    assert!(leaf.contains(&format!("Patient/{id}/_history/1")), "{leaf}");
    let after = hub
        .search(&caller, scope(), "family=reindexed", false)
        .await
        .unwrap();
    assert_eq!(found(after), 1, "found again after the re-index");
    assert_eq!(
        hub.bring_index_up_to_date().await.unwrap(),
        0,
        "once is enough"
    );
}

/// How many resources a search by `query` on `resource_type` matches.
async fn matched(hub: &Hub, resource_type: &str, query: &str) -> usize {
    let bundle: Value = serde_json::from_slice(
        &hub.search(
            &developer(),
            hygie_hub::SearchScope {
                resource_type: resource_type.into(),
                compartment: None,
            },
            query,
            false,
        )
        .await
        .unwrap(),
    )
    .unwrap();
    bundle["entry"].as_array().map_or(0, |entries| {
        entries
            .iter()
            .filter(|e| e["search"]["mode"] == "match")
            .count()
    })
}

/// A transaction whose ids are decided in the store (a conditional update, a conditional
/// reference) indexes the entries that reference no other entry before the store, and the
/// others after their references are rewritten: each is found by what it was written with.
async fn a_transaction_indexes_each_entry_as_it_is_written(backend: Backend) {
    let hub = Hub::new(backend.store.clone(), HubConfig::default());
    let caller = developer();
    hub.update(
        &caller,
        "Patient",
        "known",
        json!({"resourceType": "Patient", "id": "known", "identifier": [{"system": "urn:t", "value": "p0"}]}),
        None,
    )
    .await
    .unwrap();
    let patient = "urn:uuid:6f1c1d2e-8a55-4c39-9a4e-1f0d3c2b1a01";
    let doctor = "urn:uuid:6f1c1d2e-8a55-4c39-9a4e-1f0d3c2b1a02";
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": patient,
             "resource": {"resourceType": "Patient", "name": [{"family": "Quintero"}],
                          "identifier": [{"system": "urn:t", "value": "p1"}]},
             "request": {"method": "PUT", "url": "Patient?identifier=urn:t|p1"}},
            {"fullUrl": doctor,
             "resource": {"resourceType": "Practitioner", "name": [{"family": "Okafor"}]},
             "request": {"method": "POST", "url": "Practitioner"}},
            {"resource": {"resourceType": "Encounter", "status": "finished",
                          "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
                          "subject": {"reference": patient},
                          "participant": [{"individual": {"reference": doctor}}]},
             "request": {"method": "POST", "url": "Encounter"}},
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                          "subject": {"reference": "Patient?identifier=urn:t|p0"}},
             "request": {"method": "POST", "url": "Observation"}},
        ],
    });
    let response: Value = serde_json::from_slice(
        &hub.bundle(&caller, bundle, ReturnPreference::Representation)
            .await
            .unwrap(),
    )
    .unwrap();
    let patient_id = response["entry"][0]["resource"]["id"].as_str().unwrap();
    let doctor_id = response["entry"][1]["resource"]["id"].as_str().unwrap();
    assert_eq!(matched(&hub, "Patient", "name=Quintero").await, 1);
    assert_eq!(matched(&hub, "Practitioner", "name=Okafor").await, 1);
    // Indexed with the references the store rewrote, not with those sent.
    assert_eq!(
        matched(&hub, "Encounter", &format!("subject=Patient/{patient_id}")).await,
        1
    );
    assert_eq!(
        matched(
            &hub,
            "Encounter",
            &format!("participant=Practitioner/{doctor_id}")
        )
        .await,
        1
    );
    assert_eq!(
        matched(&hub, "Observation", "subject=Patient/known").await,
        1
    );
}
