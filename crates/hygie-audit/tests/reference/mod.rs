//! A naive, recursive transcription of RFC 9162 §2.1 (MTH, PATH, PROOF/SUBPROOF) over leaf
//! hashes, to check the optimized code against: the spec's own definitions, no cleverness.
#![allow(dead_code)]

use hygie_audit::merkle::{Hash, node_hash};
use sha2::{Digest, Sha256};

/// The largest power of two strictly smaller than `n` (n ≥ 2).
pub fn split(n: usize) -> usize {
    assert!(n >= 2);
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// MTH(D[n]) from the leaf hashes.
pub fn mth(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => Sha256::digest(b"").into(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

/// PATH(m, D[n]).
pub fn path(m: usize, leaves: &[Hash]) -> Vec<Hash> {
    let n = leaves.len();
    if n <= 1 {
        return Vec::new();
    }
    let k = split(n);
    if m < k {
        let mut p = path(m, &leaves[..k]);
        p.push(mth(&leaves[k..]));
        p
    } else {
        let mut p = path(m - k, &leaves[k..]);
        p.push(mth(&leaves[..k]));
        p
    }
}

/// The shape of PATH(m, D[n]): for each element, whether it is a right sibling. Two
/// (index, size) pairs with one shape are verified by exactly the same hash operations.
pub fn path_shape(m: u64, n: u64) -> Vec<bool> {
    if n <= 1 {
        return Vec::new();
    }
    let k = split(n as usize) as u64;
    if m < k {
        let mut s = path_shape(m, k);
        s.push(true);
        s
    } else {
        let mut s = path_shape(m - k, n - k);
        s.push(false);
        s
    }
}

/// PROOF(m, D[n]) = SUBPROOF(m, D[n], true).
pub fn proof(m: usize, leaves: &[Hash]) -> Vec<Hash> {
    if m == 0 || m >= leaves.len() {
        return Vec::new();
    }
    subproof(m, leaves, true)
}

fn subproof(m: usize, leaves: &[Hash], b: bool) -> Vec<Hash> {
    let n = leaves.len();
    if m == n {
        return if b { Vec::new() } else { vec![mth(leaves)] };
    }
    let k = split(n);
    if m <= k {
        let mut p = subproof(m, &leaves[..k], b);
        p.push(mth(&leaves[k..]));
        p
    } else {
        let mut p = subproof(m - k, &leaves[k..], false);
        p.push(mth(&leaves[..k]));
        p
    }
}

/// The shape of PROOF(m, D[n]) for 0 < m < n: whether the first tree's root is the seed
/// (true) or the first element is, then for each further element whether it is a subtree
/// of the second tree only (true: a right sibling) or of both (false: a left sibling).
pub fn proof_shape(m: u64, n: u64) -> (bool, Vec<bool>) {
    fn sub(m: u64, n: u64, b: bool) -> (bool, Vec<bool>) {
        if m == n {
            return (b, Vec::new());
        }
        let k = split(n as usize) as u64;
        if m <= k {
            let (seed, mut ops) = sub(m, k, b);
            ops.push(true);
            (seed, ops)
        } else {
            let (seed, mut ops) = sub(m - k, n - k, false);
            ops.push(false);
            (seed, ops)
        }
    }
    sub(m, n, true)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "{text}");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

pub fn unhex32(text: &str) -> Hash {
    unhex(text).try_into().expect("32 bytes")
}
