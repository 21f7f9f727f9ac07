//! Encryption at rest through the hub (`hygie_hub::vault`), on both backends: what is
//! stored is sealed, what is read is opened; a sealed body moved to another row, a
//! corrupted one, and a foreign keyring are refused; an erased patient's data reads as
//! gone while everyone else's stays; two units racing to make a patient's first key end
//! with one key.

use std::sync::Arc;

use hygie_hub::vault::{Vault, VaultSettings};
use hygie_hub::{Caller, Hub, HubConfig};
use hygie_policy::Principal;
use hygie_store::testing::TestBackend;
use hygie_store::{SharedStore, StoreError, StoreExt};
use hygie_vault::{Keyring, aead};
use serde_json::{Value, json};

hygie_store::on_both_backends!(
    bodies_are_sealed_at_rest_and_opened_on_read,
    a_moved_or_corrupted_body_is_refused,
    an_erased_patient_reads_as_gone_and_others_do_not,
    a_foreign_keyring_is_refused,
    racing_units_share_one_patient_key,
    versions_stored_in_clear_before_are_sealed,
    audit_queries_are_sealed_whatever_the_leafs_layout,
    a_record_seen_before_is_blinded_by_the_writer_when_written_after_all,
);

async fn sealed(backend: &TestBackend, keyring: Keyring) -> (Hub, Arc<Vault>) {
    let vault = Vault::attach(&backend.store, keyring, None, VaultSettings::default())
        .await
        .expect("the vault attaches");
    let hub = Hub::new(vault.seal(backend.store.clone()), HubConfig::default());
    (hub, vault)
}

fn operator() -> Caller {
    Caller::new(Principal::development(), "vault-test")
}

async fn create(hub: &Hub, resource: Value) -> String {
    let ty = resource["resourceType"].as_str().unwrap().to_owned();
    hub.create(&operator(), &ty, resource, None)
        .await
        .expect("created")
        .stored
        .id
}

/// The stored bytes of a version, read past the vault.
async fn raw_body(store: &SharedStore, ty: &str, id: &str, version: i64) -> Vec<u8> {
    let (ty, id) = (ty.to_owned(), id.to_owned());
    store
        .run(move |tx| tx.version(&ty, &id, version))
        .await
        .unwrap()
        .expect("the version is stored")
        .body
}

fn patient(family: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family, "given": ["Zoé"]}],
           "birthDate": "1971-03-04", "telecom": [{"system": "phone", "value": "+33 6 12 34 56 78"}]})
}

fn observation(patient_id: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
           "subject": {"reference": format!("Patient/{patient_id}"), "display": "Zoé Dupontel"},
           "valueQuantity": {"value": 6.3, "unit": "mmol/L"}})
}

async fn bodies_are_sealed_at_rest_and_opened_on_read(backend: TestBackend) {
    let (hub, _) = sealed(&backend, Keyring::generate("test-installation", 1)).await;
    let patient_id = create(&hub, patient("Dupontel")).await;
    let observation_id = create(&hub, observation(&patient_id)).await;
    let organization_id = create(
        &hub,
        json!({"resourceType": "Organization", "name": "CHU Nord"}),
    )
    .await;

    for (ty, id, secret) in [
        ("Patient", &patient_id, "Dupontel"),
        ("Observation", &observation_id, "Dupontel"),
        ("Organization", &organization_id, "CHU Nord"),
    ] {
        let stored = raw_body(&backend.store, ty, id, 1).await;
        assert!(aead::is_sealed(&stored), "{ty} is stored sealed");
        assert!(
            !String::from_utf8_lossy(&stored).contains(secret),
            "{ty}'s stored bytes hold {secret}"
        );
        let read = hub.read(&operator(), ty, id).await.expect("read back");
        assert!(String::from_utf8_lossy(&read.body).contains(secret));
    }
    // The patient's resources share the patient's key; the organization has its type's.
    let key_of = |body: &[u8]| aead::sealed_key_id(body).unwrap();
    let patient_key = key_of(&raw_body(&backend.store, "Patient", &patient_id, 1).await);
    let observation_key =
        key_of(&raw_body(&backend.store, "Observation", &observation_id, 1).await);
    let organization_key =
        key_of(&raw_body(&backend.store, "Organization", &organization_id, 1).await);
    assert_eq!(patient_key, observation_key);
    assert_ne!(patient_key, organization_key);
    let scopes = backend
        .store
        .run(|tx| tx.data_keys(0, 10))
        .await
        .unwrap()
        .into_iter()
        .map(|key| key.scope)
        .collect::<Vec<_>>();
    assert_eq!(
        scopes,
        vec![
            format!("patient/{patient_id}"),
            "type/Organization".to_owned()
        ]
    );
}

async fn a_moved_or_corrupted_body_is_refused(backend: TestBackend) {
    let (hub, _) = sealed(&backend, Keyring::generate("test-installation", 1)).await;
    let first = create(&hub, patient("Alpha")).await;
    let second = create(&hub, patient("Beta")).await;
    // Someone with write access to the database copies Alpha's sealed body onto Beta's row.
    let alpha = raw_body(&backend.store, "Patient", &first, 1).await;
    let target = second.clone();
    backend
        .store
        .run(move |tx| {
            let seq = tx.version("Patient", &target, 1)?.unwrap().seq;
            tx.reseal_version(seq, aead::sealed_key_id(&alpha).unwrap(), &alpha)
        })
        .await
        .unwrap();
    let moved = hub.read(&operator(), "Patient", &second).await;
    assert_eq!(moved.expect_err("a moved body must not open").status, 500);
    // One flipped byte in the ciphertext.
    let mut damaged = raw_body(&backend.store, "Patient", &first, 1).await;
    let last = damaged.len() - 1;
    damaged[last] ^= 0x01;
    let target = first.clone();
    backend
        .store
        .run(move |tx| {
            let seq = tx.version("Patient", &target, 1)?.unwrap().seq;
            tx.reseal_version(seq, aead::sealed_key_id(&damaged).unwrap(), &damaged)
        })
        .await
        .unwrap();
    let corrupted = hub.read(&operator(), "Patient", &first).await;
    assert_eq!(
        corrupted
            .expect_err("a corrupted body must not open")
            .status,
        500
    );
}

async fn an_erased_patient_reads_as_gone_and_others_do_not(backend: TestBackend) {
    let mut keyring = Keyring::generate("test-installation", 1);
    let (hub, _) = sealed(&backend, keyring.clone()).await;
    let erased = create(&hub, patient("Erased")).await;
    let observation_id = create(&hub, observation(&erased)).await;
    let kept = create(&hub, patient("Kept")).await;
    // The key destroyed in the database and its slot punctured in the key file.
    let scope = format!("patient/{erased}");
    let key_ids = backend
        .store
        .run(move |tx| tx.erase_data_keys(&scope, 1))
        .await
        .unwrap();
    for key_id in &key_ids {
        keyring.puncture(*key_id as u64).unwrap();
    }
    // A process started after the erasure (no key in memory).
    let (after, _) = sealed(&backend, keyring).await;
    for (ty, id) in [("Patient", &erased), ("Observation", &observation_id)] {
        let gone = after.read(&operator(), ty, id).await;
        assert_eq!(
            gone.expect_err("erased data must not be read").status,
            410,
            "{ty}"
        );
    }
    after
        .read(&operator(), "Patient", &kept)
        .await
        .expect("another patient's data is untouched");
    // Writing into the erased patient's compartment is refused too.
    let refused = after
        .create(&operator(), "Observation", observation(&erased), None)
        .await;
    assert_eq!(
        refused.expect_err("no new data under an erased key").status,
        410
    );
}

async fn a_foreign_keyring_is_refused(backend: TestBackend) {
    let (hub, _) = sealed(&backend, Keyring::generate("installation-a", 1)).await;
    create(&hub, patient("Alpha")).await;
    let foreign = Vault::attach(
        &backend.store,
        Keyring::generate("installation-b", 1),
        None,
        VaultSettings::default(),
    )
    .await;
    match foreign {
        Err(StoreError::Vault(message)) => assert!(
            message.contains("installation-a") && message.contains("installation-b"),
            "{message}"
        ),
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("a keyring of another installation was accepted"),
    }
    // Same installation name, other keys (a regenerated file): the check value differs.
    let forged = Vault::attach(
        &backend.store,
        Keyring::generate("installation-a", 1),
        None,
        VaultSettings::default(),
    )
    .await;
    assert!(
        matches!(forged, Err(StoreError::Vault(ref m)) if m.contains("wrong or damaged key file")),
        "a regenerated key file was accepted"
    );
}

async fn racing_units_share_one_patient_key(backend: TestBackend) {
    let (hub, _) = sealed(&backend, Keyring::generate("test-installation", 1)).await;
    let patient_id = create(&hub, patient("Racing")).await;
    // Erase nothing; forget the key row so that the next writes must make one, all at once.
    let scope = format!("patient/{patient_id}");
    let hub = Arc::new(hub);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let hub = hub.clone();
        let other = format!("{patient_id}-sibling");
        tasks.push(tokio::spawn(async move {
            create(&hub, observation(&other)).await
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let keys = backend.store.run(|tx| tx.data_keys(0, 100)).await.unwrap();
    let sibling = format!("patient/{patient_id}-sibling");
    assert_eq!(keys.iter().filter(|k| k.scope == sibling).count(), 1);
    assert_eq!(keys.iter().filter(|k| k.scope == scope).count(), 1);
}

/// A database written before encryption at rest: its versions are sealed once the vault
/// is attached (each under its patient's key), read back the same, and found as before.
async fn versions_stored_in_clear_before_are_sealed(backend: TestBackend) {
    let plain = Hub::new(backend.store.clone(), HubConfig::default());
    let patient_id = create(&plain, patient("Legacy")).await;
    let observation_id = create(&plain, observation(&patient_id)).await;
    let before = plain
        .read(&operator(), "Observation", &observation_id)
        .await
        .unwrap()
        .body;
    assert!(!aead::is_sealed(
        &raw_body(&backend.store, "Patient", &patient_id, 1).await
    ));

    let vault = Vault::attach(
        &backend.store,
        Keyring::generate("test-installation", 1),
        None,
        VaultSettings::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        vault.seal_plaintext_versions(&backend.store).await.unwrap(),
        2
    );
    assert_eq!(
        vault.seal_plaintext_versions(&backend.store).await.unwrap(),
        0
    );
    let patient_body = raw_body(&backend.store, "Patient", &patient_id, 1).await;
    let observation_body = raw_body(&backend.store, "Observation", &observation_id, 1).await;
    assert!(aead::is_sealed(&patient_body) && aead::is_sealed(&observation_body));
    assert!(!String::from_utf8_lossy(&patient_body).contains("Legacy"));
    assert_eq!(
        aead::sealed_key_id(&patient_body).unwrap(),
        aead::sealed_key_id(&observation_body).unwrap(),
        "the patient's key for both"
    );
    let hub = Hub::new(vault.seal(backend.store.clone()), HubConfig::default());
    let after = hub
        .read(&operator(), "Observation", &observation_id)
        .await
        .unwrap()
        .body;
    assert_eq!(after, before);
}

/// The query of an AuditEvent leaf is sealed at rest, in a compact leaf (sealed in place)
/// as in any other JSON layout, the rest of the leaf unchanged; auditors reading through
/// the hub get it opened.
async fn audit_queries_are_sealed_whatever_the_leafs_layout(backend: TestBackend) {
    let (_, vault) = sealed(&backend, Keyring::generate("test-installation", 1)).await;
    let store = vault.seal(backend.store.clone());
    let query = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        "family=Dupontel",
    );
    let compact = format!(
        r#"{{"resourceType":"AuditEvent","entity":[{{"what":{{"reference":"Patient/1"}}}},{{"query":"{query}"}},{{"query":"{query}"}}]}}"#
    );
    let spaced =
        format!(r#"{{"resourceType": "AuditEvent", "entity": [{{"query" : "{query}"}}]}}"#);
    let facets = hygie_store::AuditFacets {
        event_type: "rest".into(),
        subtype: "search-type".into(),
        outcome: "0".into(),
        purpose: None,
        agents: vec!["someone".into()],
        patients: vec![],
    };
    for (n, leaf) in [compact.clone(), spaced.clone()].into_iter().enumerate() {
        let facets = facets.clone();
        let number = store
            .run(move |tx| {
                let hash = hygie_audit::merkle::leaf_hash(leaf.as_bytes());
                tx.append_audit_indexed(n as i64, leaf.as_bytes(), &hash, &facets)
            })
            .await
            .unwrap();
        assert_eq!(number, n as i64);
    }
    let raw = backend
        .store
        .run(|tx| tx.audit_leaves(0, 10))
        .await
        .unwrap();
    assert_eq!(raw.len(), 2);
    for ((_, stored), original) in raw.iter().zip([&compact, &spaced]) {
        let text = String::from_utf8(stored.clone()).unwrap();
        assert!(!text.contains(&query), "a query in clear at rest: {text}");
        let event: Value = serde_json::from_str(&text).unwrap();
        let original: Value = serde_json::from_str(original).unwrap();
        let entities = event["entity"].as_array().unwrap();
        assert_eq!(entities.len(), original["entity"].as_array().unwrap().len());
        for (entity, before) in entities.iter().zip(original["entity"].as_array().unwrap()) {
            match entity.get("query").and_then(Value::as_str) {
                Some(sealed) => {
                    let bytes =
                        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, sealed)
                            .unwrap();
                    assert!(aead::is_sealed(&bytes));
                }
                None => assert_eq!(entity, before, "what is not a query is left as it was"),
            }
        }
    }
    // Read through the vault, for an auditor: opened.
    for number in [0, 1] {
        let hit = store
            .run(move |tx| tx.audit_event(number))
            .await
            .unwrap()
            .expect("the event is found");
        let text = String::from_utf8(hit.leaf).unwrap();
        assert!(text.contains(&query), "opened for the auditor: {text}");
    }
}

fn practitioner_feed_bundle(family: &str) -> Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:7f1f0c1e-0000-4000-8000-000000000001",
         "resource": {"resourceType": "Practitioner",
                      "identifier": [{"system": "urn:test:staff", "value": "2001"}],
                      "name": [{"family": family, "given": ["Claire"]}]},
         "request": {"method": "POST", "url": "Practitioner",
                     "ifNoneExist": "identifier=urn:test:staff|2001"}},
        {"resource": {"resourceType": "Patient",
                      "identifier": [{"system": "urn:test:mrn", "value": "P-77"}],
                      "name": [{"family": "Martineau", "given": ["Léa"]}],
                      "address": [{"city": "Montpellier"}]},
         "request": {"method": "PUT", "url": "Patient?identifier=urn:test:mrn|P-77"}}]})
}

async fn search_ids(hub: &Hub, ty: &str, query: &str) -> Vec<String> {
    let scope = hygie_hub::SearchScope {
        resource_type: ty.to_owned(),
        compartment: None,
    };
    let body = hub
        .search(&operator(), scope, query, true)
        .await
        .expect("searched");
    let bundle: Value = serde_json::from_slice(&body).unwrap();
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|entry| entry["resource"]["id"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A feed's records seen lately skip their blinding before the store (they likely write
/// nothing); when the store does write one after all, the writer blinds it, and its names
/// and addresses are found as those of any record. Without that fallback, the practitioner
/// created again below would be stored without its name's terms.
async fn a_record_seen_before_is_blinded_by_the_writer_when_written_after_all(
    backend: TestBackend,
) {
    let (hub, vault) = sealed(&backend, Keyring::generate("test-installation", 1)).await;
    // As `hygie serve` does: the hub blinds before the store only with its vault at hand.
    hub.attach_vault(vault);
    let commit = |prepared| {
        let hub = hub.clone();
        async move {
            hub.commit_transactions(
                &operator(),
                vec![prepared],
                hygie_hub::ReturnPreference::Minimal,
            )
            .await
            .pop()
            .unwrap()
            .expect("committed")
        }
    };
    let first = hub
        .prepare_feed_transaction(&operator(), &practitioner_feed_bundle("Dupontel"))
        .unwrap();
    assert!(
        first.blinded_before_store() > 0,
        "a new record is blinded before the store"
    );
    commit(first).await;
    let doctors = search_ids(&hub, "Practitioner", "name=dupon").await;
    assert_eq!(doctors.len(), 1);

    // Seen: nothing is blinded before the store, and nothing needs to be.
    let again = hub
        .prepare_feed_transaction(&operator(), &practitioner_feed_bundle("Dupontel"))
        .unwrap();
    assert_eq!(again.blinded_before_store(), 0, "both records were seen");
    commit(again).await;
    assert_eq!(
        search_ids(&hub, "Practitioner", "name=dupon").await,
        doctors
    );

    // The practitioner goes; the same message creates it again, blinded by the writer.
    hub.delete(&operator(), "Practitioner", &doctors[0])
        .await
        .expect("deleted");
    assert!(
        search_ids(&hub, "Practitioner", "name=dupon")
            .await
            .is_empty()
    );
    let recreating = hub
        .prepare_feed_transaction(&operator(), &practitioner_feed_bundle("Dupontel"))
        .unwrap();
    assert_eq!(recreating.blinded_before_store(), 0);
    commit(recreating).await;
    let recreated = search_ids(&hub, "Practitioner", "name=dupon").await;
    assert_eq!(recreated.len(), 1);
    assert_ne!(recreated, doctors);
    assert_eq!(
        search_ids(&hub, "Practitioner", "name:contains=ontel").await,
        recreated
    );
    assert_eq!(
        search_ids(&hub, "Practitioner", "family:exact=Dupontel").await,
        recreated
    );
    assert_eq!(
        search_ids(&hub, "Patient", "address-city=montp")
            .await
            .len(),
        1
    );

    // A changed record is blinded before the store again.
    let renamed = hub
        .prepare_feed_transaction(&operator(), &practitioner_feed_bundle("Durand"))
        .unwrap();
    assert!(renamed.blinded_before_store() > 0);
    commit(renamed).await;
    assert!(
        search_ids(&hub, "Practitioner", "name=durand")
            .await
            .is_empty(),
        "a conditional create that finds its match writes nothing"
    );
}
