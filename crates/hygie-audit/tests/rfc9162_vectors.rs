//! The published Certificate Transparency Merkle test vectors, and exhaustive comparison
//! with the naive RFC 9162 transcription on every small tree.
//!
//! Vectors copied from google/certificate-transparency `cpp/merkletree/merkle_tree_test.cc`
//! (kInputs, kSHA256Roots, kSHA256Paths, kSHA256Proofs), the same as in
//! transparency-dev/merkle `proof/verify_test.go`. Their leaf numbers are 1-based; here
//! indices are 0-based.

mod reference;

use hygie_audit::merkle::{
    self, EMPTY_ROOT, Frontier, Hash, MAX_PROOF_HASHES, MAX_TREE_SIZE, MemoryNodes, MerkleError,
    consistency_plan, inclusion_plan, leaf_hash, verify_consistency, verify_inclusion,
};
use reference::{unhex, unhex32};

/// kInputs: the eight leaves of the reference tree.
const INPUTS: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];

/// kSHA256Roots: the root after each of the eight leaves.
const ROOTS: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

/// kSHA256EmptyTreeHash.
const EMPTY_TREE_HASH: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// kSHA256Paths (leaf made 0-based): (index, size, path).
const PATHS: [(u64, u64, &[&str]); 5] = [
    (0, 1, &[]),
    (
        0,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        &[
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        3,
        &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
    ),
    (
        1,
        5,
        &[
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
];

/// kSHA256Proofs, plus the (6, 7) proof of transparency-dev/merkle: (size1, size2, proof).
const PROOFS: [(u64, u64, &[&str]); 5] = [
    (1, 1, &[]),
    (
        1,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        &[
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
];

/// A hash that is in no vector (abacaba… of transparency-dev's `sha256SomeHash`).
const SOME_HASH: &str = "abacaba000000000000000000000000000000000000000000060061e00123456";

fn hashes(hex: &[&str]) -> Vec<Hash> {
    hex.iter().map(|h| unhex32(h)).collect()
}

fn leaf_hashes() -> Vec<Hash> {
    INPUTS
        .iter()
        .map(|input| leaf_hash(&unhex(input)))
        .collect()
}

/// The reference tree stored as perfect nodes, built by appending one leaf at a time.
fn store() -> MemoryNodes {
    let mut frontier = Frontier::new();
    let mut store = MemoryNodes::default();
    for hash in leaf_hashes() {
        store.insert(&frontier.extend(&[hash]).unwrap()).unwrap();
    }
    store
}

#[test]
fn empty_tree_root_is_the_vector() {
    assert_eq!(EMPTY_ROOT, unhex32(EMPTY_TREE_HASH));
    assert_eq!(merkle::root(&mut store(), 0).unwrap(), EMPTY_ROOT);
}

#[test]
fn roots_after_each_leaf_match_the_vectors() {
    let mut frontier = Frontier::new();
    for (i, hash) in leaf_hashes().into_iter().enumerate() {
        frontier.extend(&[hash]).unwrap();
        assert_eq!(frontier.root(), unhex32(ROOTS[i]), "root of size {}", i + 1);
        // Rebuilt from the stored nodes, as a store does at start.
        assert_eq!(
            merkle::root(&mut store(), i as u64 + 1).unwrap(),
            unhex32(ROOTS[i])
        );
    }
    // In one batch, and in two (3 then 5), as kSHA256Roots' tree2 and tree3.
    let mut one = Frontier::new();
    one.extend(&leaf_hashes()).unwrap();
    assert_eq!(one.root(), unhex32(ROOTS[7]));
    let mut two = Frontier::new();
    two.extend(&leaf_hashes()[..3]).unwrap();
    assert_eq!(two.root(), unhex32(ROOTS[2]));
    two.extend(&leaf_hashes()[3..]).unwrap();
    assert_eq!(two.root(), unhex32(ROOTS[7]));
}

#[test]
fn inclusion_proofs_match_the_vectors_and_verify() {
    let leaves = leaf_hashes();
    for (index, size, path) in PATHS {
        let expected = hashes(path);
        let proof = merkle::inclusion_proof(&mut store(), index, size).unwrap();
        assert_eq!(proof, expected, "PATH({index}, D[{size}])");
        let root = unhex32(ROOTS[size as usize - 1]);
        verify_inclusion(&leaves[index as usize], index, size, &proof, &root).unwrap();
        assert_corrupted_inclusion_fails(&leaves[index as usize], index, size, &proof, &root);
    }
}

/// (what is wrong, leaf hash, index, size, proof, root)
type InclusionProbe = (&'static str, Hash, u64, u64, Vec<Hash>, Hash);

/// The corruptions of transparency-dev's `corruptInclusionProof` and CT's `VerifierCheck`.
fn assert_corrupted_inclusion_fails(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) {
    let some = unhex32(SOME_HASH);
    let mut probes: Vec<InclusionProbe> = vec![
        (
            "index - 1",
            *leaf,
            index.wrapping_sub(1),
            size,
            proof.to_vec(),
            *root,
        ),
        ("index + 1", *leaf, index + 1, size, proof.to_vec(), *root),
        ("index ^ 2", *leaf, index ^ 2, size, proof.to_vec(), *root),
        ("size * 2", *leaf, index, size * 2, proof.to_vec(), *root),
        ("size / 2", *leaf, index, size / 2, proof.to_vec(), *root),
        (
            "wrong leaf",
            leaf_hash(b"WrongLeaf"),
            index,
            size,
            proof.to_vec(),
            *root,
        ),
        ("empty root", *leaf, index, size, proof.to_vec(), EMPTY_ROOT),
        ("random root", *leaf, index, size, proof.to_vec(), some),
    ];
    let mut with = |desc, proof: Vec<Hash>| probes.push((desc, *leaf, index, size, proof, *root));
    with("trailing garbage", [proof, &[[0; 32]]].concat());
    with("trailing root", [proof, &[*root]].concat());
    with("preceding garbage", [&[[0; 32]], proof].concat());
    with("preceding root", [&[*root], proof].concat());
    for i in 0..proof.len() {
        let mut wrong = proof.to_vec();
        wrong[i][0] ^= 8;
        with("modified element", wrong);
        let mut wrong = proof.to_vec();
        wrong[i] = EMPTY_ROOT;
        with("replaced element", wrong);
    }
    if !proof.is_empty() {
        with("removed element", proof[..proof.len() - 1].to_vec());
    }
    if proof.len() > 1 {
        with(
            "inserted element",
            [&proof[..1], &[some], &proof[1..]].concat(),
        );
    }
    for (desc, leaf, index, size, proof, root) in probes {
        assert!(
            verify_inclusion(&leaf, index, size, &proof, &root).is_err(),
            "{desc}: PATH({index}, D[{size}]) verified"
        );
    }
}

#[test]
fn consistency_proofs_match_the_vectors_and_verify() {
    for (size1, size2, expected) in PROOFS {
        let expected = hashes(expected);
        let proof = merkle::consistency_proof(&mut store(), size1, size2).unwrap();
        assert_eq!(proof, expected, "PROOF({size1}, D[{size2}])");
        let root1 = unhex32(ROOTS[size1 as usize - 1]);
        let root2 = unhex32(ROOTS[size2 as usize - 1]);
        verify_consistency(size1, size2, &proof, &root1, &root2).unwrap();
        if !proof.is_empty() {
            assert_corrupted_consistency_fails(size1, size2, &proof, &root1, &root2);
        }
    }
}

/// (what is wrong, size1, size2, proof, root1, root2)
type ConsistencyProbe = (&'static str, u64, u64, Vec<Hash>, Hash, Hash);

/// The corruptions of transparency-dev's `corruptConsistencyProof` and CT's
/// `VerifierConsistencyCheck`.
fn assert_corrupted_consistency_fails(
    size1: u64,
    size2: u64,
    proof: &[Hash],
    root1: &Hash,
    root2: &Hash,
) {
    let wrong_root = leaf_hash(b"WrongRoot");
    let mut probes: Vec<ConsistencyProbe> = vec![
        (
            "size1 - 1",
            size1 - 1,
            size2,
            proof.to_vec(),
            *root1,
            *root2,
        ),
        (
            "size1 + 1",
            size1 + 1,
            size2,
            proof.to_vec(),
            *root1,
            *root2,
        ),
        (
            "size1 ^ 2",
            size1 ^ 2,
            size2,
            proof.to_vec(),
            *root1,
            *root2,
        ),
        (
            "size2 * 2",
            size1,
            size2 * 2,
            proof.to_vec(),
            *root1,
            *root2,
        ),
        (
            "size2 / 2",
            size1,
            size2 / 2,
            proof.to_vec(),
            *root1,
            *root2,
        ),
        (
            "wrong root1",
            size1,
            size2,
            proof.to_vec(),
            wrong_root,
            *root2,
        ),
        (
            "wrong root2",
            size1,
            size2,
            proof.to_vec(),
            *root1,
            wrong_root,
        ),
        (
            "swapped roots",
            size1,
            size2,
            proof.to_vec(),
            *root2,
            *root1,
        ),
        ("empty proof", size1, size2, Vec::new(), *root1, *root2),
    ];
    let mut with =
        |desc, proof: Vec<Hash>| probes.push((desc, size1, size2, proof, *root1, *root2));
    with("trailing garbage", [proof, &[[0; 32]]].concat());
    with("trailing root1", [proof, &[*root1]].concat());
    with("trailing root2", [proof, &[*root2]].concat());
    with("preceding garbage", [&[[0; 32]], proof].concat());
    with("preceding root1", [&[*root1], proof].concat());
    with("preceding root2", [&[*root2], proof].concat());
    with("preceding proof[0]", [&proof[..1], proof].concat());
    with("truncated", proof[..proof.len() - 1].to_vec());
    for i in 0..proof.len() {
        let mut wrong = proof.to_vec();
        wrong[i][0] ^= 16;
        with("modified element", wrong);
    }
    for (desc, size1, size2, proof, root1, root2) in probes {
        assert!(
            verify_consistency(size1, size2, &proof, &root1, &root2).is_err(),
            "{desc}: PROOF({size1}, D[{size2}]) verified"
        );
    }
}

#[test]
fn invalid_inclusion_queries_are_precise_errors() {
    let some = unhex32(SOME_HASH);
    // CT's VerifyPath probes: (0, 0), (0, 1) with a wrong root, (1, 0), (2, 1).
    for (index, size) in [(0, 0), (1, 0), (2, 1), (1, 1)] {
        assert_eq!(
            verify_inclusion(&some, index, size, &[], &EMPTY_ROOT),
            Err(MerkleError::IndexOutOfRange { index, size })
        );
        assert_eq!(
            inclusion_plan(index, size),
            Err(MerkleError::IndexOutOfRange { index, size })
        );
    }
    assert_eq!(
        verify_inclusion(&some, 0, 1, &[], &EMPTY_ROOT),
        Err(MerkleError::RootMismatch)
    );
    // A one-leaf tree: the root is the leaf hash, the proof is empty.
    let leaf = leaf_hash(b"data");
    verify_inclusion(&leaf, 0, 1, &[], &leaf).unwrap();
    assert_eq!(
        verify_inclusion(&leaf, 0, 1, &[leaf], &leaf),
        Err(MerkleError::WrongProofLength {
            len: 1,
            expected: 0
        })
    );
    assert_eq!(
        verify_inclusion(&leaf, 0, MAX_TREE_SIZE + 1, &[], &leaf),
        Err(MerkleError::TreeTooLarge {
            size: MAX_TREE_SIZE + 1
        })
    );
    let long = vec![leaf; MAX_PROOF_HASHES + 1];
    assert_eq!(
        verify_inclusion(&leaf, 0, 8, &long, &leaf),
        Err(MerkleError::ProofTooLong { len: 65 })
    );
    assert_eq!(
        verify_inclusion(&leaf, 0, 8, &[leaf], &leaf),
        Err(MerkleError::WrongProofLength {
            len: 1,
            expected: 3
        })
    );
}

#[test]
fn invalid_consistency_queries_are_precise_errors() {
    let r1 = leaf_hash(b"don't care 1");
    let r2 = leaf_hash(b"don't care 2");
    // Always consistent, without a proof.
    verify_consistency(0, 0, &[], &EMPTY_ROOT, &EMPTY_ROOT).unwrap();
    verify_consistency(0, 1, &[], &EMPTY_ROOT, &r2).unwrap();
    verify_consistency(1, 1, &[], &r2, &r2).unwrap();
    // From 0: the first root is the empty tree's.
    assert_eq!(
        verify_consistency(0, 5, &[], &r1, &r2),
        Err(MerkleError::FirstRootMismatch)
    );
    // Equal sizes: equal roots.
    assert_eq!(
        verify_consistency(1, 1, &[], &r1, &r2),
        Err(MerkleError::SecondRootMismatch)
    );
    // Time travel.
    assert_eq!(
        verify_consistency(1, 0, &[], &r1, &r2),
        Err(MerkleError::SizesReversed { size1: 1, size2: 0 })
    );
    assert_eq!(
        verify_consistency(2, 1, &[], &r1, &r2),
        Err(MerkleError::SizesReversed { size1: 2, size2: 1 })
    );
    assert_eq!(
        consistency_plan(2, 1),
        Err(MerkleError::SizesReversed { size1: 2, size2: 1 })
    );
    // Empty proof between different sizes.
    assert_eq!(
        verify_consistency(1, 2, &[], &r1, &r2),
        Err(MerkleError::WrongProofLength {
            len: 0,
            expected: 1
        })
    );
    // Trivial cases with a proof.
    for (size1, size2) in [(0, 0), (0, 1), (1, 1)] {
        assert_eq!(
            verify_consistency(size1, size2, &[EMPTY_ROOT], &EMPTY_ROOT, &EMPTY_ROOT),
            Err(MerkleError::WrongProofLength {
                len: 1,
                expected: 0
            }),
            "({size1}, {size2})"
        );
    }
    assert_eq!(
        verify_consistency(1, MAX_TREE_SIZE + 1, &[r1], &r1, &r2),
        Err(MerkleError::TreeTooLarge {
            size: MAX_TREE_SIZE + 1
        })
    );
    assert_eq!(
        verify_consistency(3, 9, &vec![r1; 65], &r1, &r2),
        Err(MerkleError::ProofTooLong { len: 65 })
    );
    // Plans of trivial cases are empty.
    assert!(consistency_plan(0, 9).unwrap().is_empty());
    assert!(consistency_plan(9, 9).unwrap().is_empty());
}

/// Every proof of every tree up to 64 leaves against the naive transcription of the RFC:
/// the same hashes, the nodes fetched all perfect subtrees of the tree, and verification.
#[test]
fn every_small_tree_matches_the_reference() {
    const N: usize = 64;
    let leaves: Vec<Hash> = (0..N)
        .map(|i| leaf_hash(&(i as u32).to_be_bytes()))
        .collect();
    let mut frontier = Frontier::new();
    let mut store = MemoryNodes::default();
    store.insert(&frontier.extend(&leaves).unwrap()).unwrap();
    let roots: Vec<Hash> = (0..=N).map(|n| reference::mth(&leaves[..n])).collect();
    for size in 1..=N {
        assert_eq!(merkle::root(&mut store, size as u64).unwrap(), roots[size]);
        for index in 0..size {
            let plan = inclusion_plan(index as u64, size as u64).unwrap();
            assert!(plan.nodes().iter().all(|id| id.is_within(size as u64)));
            let proof = merkle::inclusion_proof(&mut store, index as u64, size as u64).unwrap();
            assert_eq!(
                proof,
                reference::path(index, &leaves[..size]),
                "PATH({index}, {size})"
            );
            verify_inclusion(
                &leaves[index],
                index as u64,
                size as u64,
                &proof,
                &roots[size],
            )
            .unwrap();
        }
        for size1 in 0..=size {
            let plan = consistency_plan(size1 as u64, size as u64).unwrap();
            assert!(plan.nodes().iter().all(|id| id.is_within(size as u64)));
            let proof = merkle::consistency_proof(&mut store, size1 as u64, size as u64).unwrap();
            assert_eq!(
                proof,
                reference::proof(size1, &leaves[..size]),
                "PROOF({size1}, {size})"
            );
            verify_consistency(
                size1 as u64,
                size as u64,
                &proof,
                &roots[size1],
                &roots[size],
            )
            .unwrap();
        }
    }
}
