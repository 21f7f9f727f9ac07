//! The SIEM export's source over the store, on both backends: only integrated leaves,
//! dense and byte for byte as the tree holds them, and cursors that never move back.

use hygie_hub::{Caller, Hub, HubConfig, StoreAuditSource};
use hygie_policy::Principal;
use hygie_siem::AuditSource;
use hygie_store::StoreExt;
use hygie_store::testing::TestBackend;
use serde_json::json;

hygie_store::on_both_backends!(
    only_integrated_leaves_are_exported_as_stored,
    a_cursor_never_moves_back
);

async fn only_integrated_leaves_are_exported_as_stored(backend: TestBackend) {
    let hub = Hub::new(backend.store.clone(), HubConfig::default());
    let source = StoreAuditSource::new(backend.store.clone(), "siem");
    let operator = Caller::new(Principal::development(), "load");
    for _ in 0..3 {
        hub.create(
            &operator,
            "Patient",
            json!({"resourceType": "Patient"}),
            None,
        )
        .await
        .unwrap();
    }
    assert!(
        source.leaves_from(0, 100).await.unwrap().is_empty(),
        "leaves not yet in the tree are not exported"
    );
    let integrated = hub.integrate_audit(false).await.unwrap();
    assert!(integrated.tree_size >= 3);
    let leaves = source.leaves_from(0, 100).await.unwrap();
    assert_eq!(leaves.len() as u64, integrated.tree_size);
    let stored = backend
        .store
        .read(|tx| tx.audit_tree_leaves(0, 100))
        .await
        .unwrap();
    for (leaf, (index, body)) in leaves.iter().zip(stored) {
        assert_eq!(leaf.index, index as u64);
        assert_eq!(Some(&leaf.leaf), body.as_ref());
        assert!(
            leaf.recorded_us > 1_600_000_000_000_000,
            "{}",
            leaf.recorded_us
        );
    }
    let tail = source.leaves_from(1, 1).await.unwrap();
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0].index, 1);
    assert!(
        source
            .leaves_from(integrated.tree_size, 100)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn a_cursor_never_moves_back(backend: TestBackend) {
    let source = StoreAuditSource::new(backend.store.clone(), "siem");
    assert_eq!(source.load_cursor("siem").await.unwrap(), 0);
    source.save_cursor("siem", 5).await.unwrap();
    source.save_cursor("siem", 3).await.unwrap();
    assert_eq!(source.load_cursor("siem").await.unwrap(), 5);
    assert_eq!(
        source.load_cursor("archive").await.unwrap(),
        0,
        "each export has its own cursor"
    );
    let stored = backend
        .store
        .read(|tx| tx.meta_get(&hygie_hub::export_cursor_key("siem")))
        .await
        .unwrap();
    assert_eq!(stored.as_deref(), Some("5"));
}
