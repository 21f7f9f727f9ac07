//! Property tests of the Merkle module against the naive RFC 9162 transcription: roots,
//! proofs, appends in any batching, the verifiers' refusals, and the streaming verifier
//! naming the first tampered leaf.

mod reference;

use hygie_audit::merkle::{
    self, Discrepancy, Frontier, Hash, MemoryNodes, MerkleError, StreamVerifier, leaf_hash,
    verify_consistency, verify_inclusion,
};
use proptest::prelude::*;
use proptest::sample::Index;

/// Distinct leaves (their index is in them), random otherwise.
fn leaves(count: usize, salt: u64) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| format!("{{\"leaf\":{i},\"salt\":{salt}}}").into_bytes())
        .collect()
}

fn hashes(leaves: &[Vec<u8>]) -> Vec<Hash> {
    leaves.iter().map(|leaf| leaf_hash(leaf)).collect()
}

/// The tree stored as perfect nodes, appended in batches of the given sizes.
fn stored(leaf_hashes: &[Hash], batches: &[usize]) -> (Frontier, MemoryNodes) {
    let mut frontier = Frontier::new();
    let mut store = MemoryNodes::default();
    let mut rest = leaf_hashes;
    let mut batches = batches.iter().cycle();
    while !rest.is_empty() {
        let take = (*batches.next().expect("cycle")).clamp(1, rest.len());
        let (batch, tail) = rest.split_at(take);
        store.insert(&frontier.extend(batch).unwrap()).unwrap();
        rest = tail;
    }
    (frontier, store)
}

fn flip_bit(hash: &Hash, bit: usize) -> Hash {
    let mut flipped = *hash;
    flipped[bit / 8 % 32] ^= 1 << (bit % 8);
    flipped
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// The root after any batching of appends, and rebuilt from the stored nodes, is the
    /// RFC's MTH; so is the root the `append` helper reaches from a stored prefix.
    #[test]
    fn roots_from_appends_match_the_reference(
        count in 0usize..300,
        batches in prop::collection::vec(1usize..40, 1..8),
        salt: u64,
        cut: Index,
    ) {
        let leaf_hashes = hashes(&leaves(count, salt));
        let (frontier, mut store) = stored(&leaf_hashes, &batches);
        prop_assert_eq!(frontier.root(), reference::mth(&leaf_hashes));
        for size in [0, count / 3, count / 2, count] {
            prop_assert_eq!(
                merkle::root(&mut store, size as u64).unwrap(),
                reference::mth(&leaf_hashes[..size])
            );
        }
        // A store restarting at `cut` and appending the rest reaches the same tree.
        let cut = cut.index(count + 1);
        let (mut prefix_frontier, mut prefix_store) = stored(&leaf_hashes[..cut], &batches);
        let (resumed, new_nodes) =
            merkle::append(&mut prefix_store, cut as u64, &leaf_hashes[cut..]).unwrap();
        prop_assert_eq!(resumed.root(), frontier.root());
        prop_assert_eq!(&new_nodes, &prefix_frontier.extend(&leaf_hashes[cut..]).unwrap());
        prefix_store.insert(&new_nodes).unwrap();
        for size in [cut, count] {
            prop_assert_eq!(
                Frontier::load(&mut prefix_store, size as u64).unwrap(),
                Frontier::load(&mut store, size as u64).unwrap()
            );
        }
    }

    /// Every inclusion proof is the RFC's PATH, reads only perfect subtrees, and verifies;
    /// flipping any bit of the proof, the leaf or the root, or changing the index, makes it
    /// fail; another size verifies exactly when it has the same PATH shape (RFC 9162 binds
    /// the size through the signed checkpoint, not through the proof).
    #[test]
    fn inclusion_proofs_verify_and_corruptions_fail(
        count in 1usize..300,
        salt: u64,
        size: Index,
        index: Index,
        other_index: Index,
        other_size in 1u64..600,
        element: Index,
        bit in 0usize..256,
    ) {
        let leaf_hashes = hashes(&leaves(count, salt));
        let (_, mut store) = stored(&leaf_hashes, &[count]);
        let size = size.index(count) + 1;
        let index = index.index(size);
        let root = reference::mth(&leaf_hashes[..size]);
        let leaf = leaf_hashes[index];
        let (size, index) = (size as u64, index as u64);

        let plan = merkle::inclusion_plan(index, size).unwrap();
        prop_assert!(plan.nodes().iter().all(|id| id.is_within(size)));
        let proof = merkle::inclusion_proof(&mut store, index, size).unwrap();
        prop_assert_eq!(&proof, &reference::path(index as usize, &leaf_hashes[..size as usize]));
        prop_assert_eq!(verify_inclusion(&leaf, index, size, &proof, &root), Ok(()));

        if !proof.is_empty() {
            let mut wrong = proof.clone();
            let at = element.index(proof.len());
            wrong[at] = flip_bit(&wrong[at], bit);
            prop_assert_eq!(
                verify_inclusion(&leaf, index, size, &wrong, &root),
                Err(MerkleError::RootMismatch)
            );
        }
        prop_assert_eq!(
            verify_inclusion(&flip_bit(&leaf, bit), index, size, &proof, &root),
            Err(MerkleError::RootMismatch)
        );
        prop_assert_eq!(
            verify_inclusion(&leaf, index, size, &proof, &flip_bit(&root, bit)),
            Err(MerkleError::RootMismatch)
        );
        let other_index = other_index.index(size as usize) as u64;
        if other_index != index {
            prop_assert!(verify_inclusion(&leaf, other_index, size, &proof, &root).is_err());
        }
        if other_size != size {
            let verified = verify_inclusion(&leaf, index, other_size, &proof, &root).is_ok();
            let same_shape = index < other_size
                && reference::path_shape(index, other_size) == reference::path_shape(index, size);
            prop_assert_eq!(verified, same_shape, "size {} → {}", size, other_size);
        }
    }

    /// Every consistency proof is the RFC's PROOF, reads only perfect subtrees, and
    /// verifies; flipping any bit of the proof or of either root makes it fail; other sizes
    /// verify exactly when they have the same PROOF shape.
    #[test]
    fn consistency_proofs_verify_and_corruptions_fail(
        count in 1usize..300,
        salt: u64,
        size2: Index,
        size1: Index,
        other_size1 in 0u64..600,
        other_size2 in 0u64..600,
        element: Index,
        bit in 0usize..256,
    ) {
        let leaf_hashes = hashes(&leaves(count, salt));
        let (_, mut store) = stored(&leaf_hashes, &[7]);
        let size2 = size2.index(count) + 1;
        let size1 = size1.index(size2 + 1);
        let root1 = reference::mth(&leaf_hashes[..size1]);
        let root2 = reference::mth(&leaf_hashes[..size2]);
        let (size1, size2) = (size1 as u64, size2 as u64);

        let plan = merkle::consistency_plan(size1, size2).unwrap();
        prop_assert!(plan.nodes().iter().all(|id| id.is_within(size2)));
        let proof = merkle::consistency_proof(&mut store, size1, size2).unwrap();
        prop_assert_eq!(
            &proof,
            &reference::proof(size1 as usize, &leaf_hashes[..size2 as usize])
        );
        prop_assert_eq!(verify_consistency(size1, size2, &proof, &root1, &root2), Ok(()));
        if size1 == 0 || size1 == size2 {
            return Ok(());
        }

        let mut wrong = proof.clone();
        let at = element.index(proof.len());
        wrong[at] = flip_bit(&wrong[at], bit);
        prop_assert!(verify_consistency(size1, size2, &wrong, &root1, &root2).is_err());
        prop_assert!(
            verify_consistency(size1, size2, &proof, &flip_bit(&root1, bit), &root2).is_err()
        );
        prop_assert!(
            verify_consistency(size1, size2, &proof, &root1, &flip_bit(&root2, bit)).is_err()
        );
        for (s1, s2) in [(other_size1, size2), (size1, other_size2), (other_size1, other_size2)] {
            if (s1, s2) == (size1, size2) {
                continue;
            }
            let verified = verify_consistency(s1, s2, &proof, &root1, &root2).is_ok();
            let same_shape = 0 < s1 && s1 < s2
                && reference::proof_shape(s1, s2) == reference::proof_shape(size1, size2);
            prop_assert_eq!(verified, same_shape, "({}, {}) → ({}, {})", size1, size2, s1, s2);
        }
    }

    /// The streaming verifier, replaying a tampered log against the nodes stored for the
    /// genuine one, names exactly the first tampered leaf (or the first missing one), and
    /// agrees with every checkpoint before it.
    #[test]
    fn streaming_verifier_names_the_first_tampered_leaf(
        count in 1usize..200,
        salt: u64,
        tamper in 0u8..6,
        at: Index,
        other: Index,
        checkpoint_sizes in prop::collection::vec(any::<Index>(), 0..6),
    ) {
        let genuine = leaves(count, salt);
        let genuine_hashes = hashes(&genuine);
        let (_, store) = stored(&genuine_hashes, &[count]);
        let at = at.index(count);
        let other = other.index(count);
        let mut log = genuine.clone();
        match tamper {
            0 => *log[at].last_mut().expect("a leaf is not empty") ^= 1,
            1 => { log.remove(at); }
            2 => log.insert(at.min(other), b"{\"inserted\":true}".to_vec()),
            3 => log.swap(at, other),
            4 => log.truncate(at),
            _ => log.push(b"{\"appended\":true}".to_vec()),
        }
        let mut checkpoints: Vec<(u64, Hash)> = checkpoint_sizes
            .iter()
            .map(|i| {
                let size = i.index(count) + 1;
                (size as u64, reference::mth(&genuine_hashes[..size]))
            })
            .collect();
        checkpoints.sort();
        checkpoints.dedup();

        let first_difference = (0..log.len().max(count)).find(|&i| log.get(i) != genuine.get(i));
        let mut verifier = StreamVerifier::new();
        let mut found = None;
        for leaf in &log {
            if let Err(discrepancy) = verifier.verify_leaf(leaf, |id| store.get(id)) {
                found = Some(discrepancy);
                break;
            }
            for (size, root) in &checkpoints {
                if *size == verifier.size() {
                    prop_assert_eq!(verifier.check_root(root), Ok(()));
                }
            }
        }
        let found = found.or_else(|| verifier.check_reached(count as u64).err());
        match first_difference {
            None => prop_assert_eq!(found, None),
            Some(index) if index < log.len() => prop_assert!(
                matches!(found, Some(Discrepancy::Leaf { index: i, .. }) if i == index as u64),
                "expected leaf {} named, found {:?}", index, found
            ),
            Some(index) => prop_assert_eq!(
                found,
                Some(Discrepancy::Truncated {
                    first_missing: index as u64,
                    expected_size: count as u64
                })
            ),
        }
    }

    /// When the stored nodes were rewritten to match tampered leaves, the first checkpoint
    /// past the first tampered leaf is the one named; changing one stored interior node is
    /// named as that node.
    #[test]
    fn streaming_verifier_catches_rewritten_nodes(
        count in 2usize..200,
        salt: u64,
        at: Index,
        checkpoint_sizes in prop::collection::vec(any::<Index>(), 1..6),
        node: Index,
        bit in 0usize..256,
    ) {
        let genuine_hashes = hashes(&leaves(count, salt));
        let mut log = leaves(count, salt);
        let at = at.index(count);
        *log[at].last_mut().expect("not empty") ^= 1;
        // The node table rewritten to match the tampered leaves.
        let (_, rewritten) = stored(&hashes(&log), &[count]);
        let mut checkpoints: Vec<(u64, Hash)> = checkpoint_sizes
            .iter()
            .map(|i| {
                let size = i.index(count) + 1;
                (size as u64, reference::mth(&genuine_hashes[..size]))
            })
            .collect();
        checkpoints.sort();
        checkpoints.dedup();
        let mut verifier = StreamVerifier::new();
        let mut named = None;
        'replay: for leaf in &log {
            prop_assert_eq!(verifier.verify_leaf(leaf, |id| rewritten.get(id)), Ok(()));
            for (size, root) in &checkpoints {
                if *size == verifier.size() && verifier.check_root(root).is_err() {
                    named = Some(*size);
                    break 'replay;
                }
            }
        }
        let expected = checkpoints.iter().map(|(size, _)| *size).find(|&size| size > at as u64);
        prop_assert_eq!(named, expected);

        // One interior node changed in the genuine table.
        let mut nodes = Frontier::new().extend(&genuine_hashes).unwrap();
        let interior: Vec<usize> =
            (0..nodes.len()).filter(|&i| nodes[i].id.level > 0).collect();
        let target = interior[node.index(interior.len())];
        nodes[target].hash = flip_bit(&nodes[target].hash, bit);
        let target = nodes[target];
        let mut altered = MemoryNodes::default();
        altered.insert(&nodes).unwrap();
        let mut verifier = StreamVerifier::new();
        let genuine = leaves(count, salt);
        let mut found = None;
        for leaf in &genuine {
            if let Err(discrepancy) = verifier.verify_leaf(leaf, |id| altered.get(id)) {
                found = Some(discrepancy);
                break;
            }
        }
        prop_assert!(
            matches!(found, Some(Discrepancy::Node { id, stored: Some(h), .. }) if id == target.id && h == target.hash),
            "expected node {:?} named, found {:?}", target.id, found
        );
    }
}
