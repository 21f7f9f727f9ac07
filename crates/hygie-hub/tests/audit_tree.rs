//! The audit tree as stored, on both backends: the leaf hashes and the subtrees of 16 leaves
//! and more are kept, levels 1 to 3 are not, and every proof the hub serves, recomputing
//! those levels from the leaf hashes, is the proof of the whole tree held in memory.

use hygie_audit::merkle::{self, Frontier, Hash, MemoryNodes};
use hygie_hub::{Hub, HubConfig};
use hygie_store::StoreExt;
use hygie_store::testing::TestBackend;

hygie_store::on_both_backends!(every_proof_is_the_whole_trees_though_levels_1_to_3_are_not_stored);

/// The sizes the tree is integrated at, one integration each: partial blocks of 16 leaves
/// at each end of an integration, and one that ends on a block boundary.
const INTEGRATED_AT: [u64; 6] = [3, 16, 17, 47, 97, 150];

async fn every_proof_is_the_whole_trees_though_levels_1_to_3_are_not_stored(backend: TestBackend) {
    let hub = Hub::new(backend.store.clone(), HubConfig::default());
    let mut leaves: Vec<Vec<u8>> = Vec::new();
    for size in INTEGRATED_AT {
        let batch: Vec<Vec<u8>> = (leaves.len() as u64..size)
            .map(|n| format!("{{\"leaf\":{n}}}").into_bytes())
            .collect();
        leaves.extend(batch.iter().cloned());
        backend
            .store
            .run(move |tx| {
                for leaf in &batch {
                    tx.append_audit(0, leaf)?;
                }
                Ok(())
            })
            .await
            .unwrap();
        let integrated = hub.integrate_audit(true).await.unwrap();
        assert_eq!(integrated.tree_size, size);
    }

    // The whole tree, every level, in memory.
    let hashes: Vec<Hash> = leaves.iter().map(|leaf| merkle::leaf_hash(leaf)).collect();
    let mut frontier = Frontier::new();
    let mut whole = MemoryNodes::default();
    whole.insert(&frontier.extend(&hashes).unwrap()).unwrap();

    // What is stored: every leaf hash, nothing of levels 1 to 3, every perfect subtree above.
    let size = *INTEGRATED_AT.last().unwrap();
    let stored: Vec<Vec<(i64, Hash)>> = backend
        .store
        .read(move |tx| {
            (0..8u32)
                .map(|level| tx.audit_node_range(level, 0, size as i64))
                .collect()
        })
        .await
        .unwrap();
    for (level, nodes) in stored.iter().enumerate() {
        let expected: Vec<(i64, Hash)> = if (1..=3).contains(&level) {
            Vec::new()
        } else {
            (0..size >> level)
                .map(|index| {
                    let id = merkle::NodeId::new(level as u32, index);
                    (index as i64, whole.get(id).unwrap())
                })
                .collect()
        };
        assert_eq!(nodes, &expected, "level {level}");
    }

    // Every inclusion proof at every size integrated, and every consistency proof between
    // them, is the whole tree's.
    for size in INTEGRATED_AT {
        for index in 0..size {
            let served = hub.audit_inclusion_proof(index, size).await.unwrap();
            let expected = merkle::inclusion_proof(&mut whole, index, size).unwrap();
            assert_eq!(served.hashes, expected, "leaf {index} in {size}");
        }
    }
    for (at, from) in INTEGRATED_AT.iter().enumerate() {
        for to in &INTEGRATED_AT[at..] {
            let served = hub.audit_consistency_proof(*from, *to).await.unwrap();
            let expected = merkle::consistency_proof(&mut whole, *from, *to).unwrap();
            assert_eq!(served.hashes, expected, "from {from} to {to}");
        }
    }
    let checkpoint = hub.audit_checkpoint().await.unwrap();
    assert_eq!(checkpoint.root, frontier.root());

    let report = hub.verify_audit(None, &[]).await.unwrap().unwrap();
    assert_eq!(report.leaves, size);
}
