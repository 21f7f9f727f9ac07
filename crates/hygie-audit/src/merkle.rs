//! RFC 9162 (Certificate Transparency v2) Merkle tree arithmetic over a tree that a caller
//! stores as the hashes of its *perfect subtrees*.
//!
//! The node [`NodeId`] `(level, index)` covers leaves `[index·2^level, (index+1)·2^level)`;
//! level 0 holds the leaf hashes. Only perfect subtrees are ever stored: the right edge of a
//! tree whose size is not a power of two is recomputed from the perfect nodes under it, so
//! a stored node never changes once written (an append-only table).
//!
//! Proofs are built in two steps so that a database answers each proof with one query:
//! [`inclusion_plan`] / [`consistency_plan`] say which nodes a proof needs
//! ([`ProofPlan::nodes`]), and [`ProofPlan::assemble`] folds the fetched hashes into the
//! proof. [`NodeSource`] and the helpers [`inclusion_proof`], [`consistency_proof`] and
//! [`Frontier::load`] do both steps for a caller that implements the batch read.
//!
//! Appends go through a [`Frontier`] (the compact range `[0, size)`: one perfect node per
//! set bit of the size), which gives the root and every new perfect node to store.
//! [`StreamVerifier`] replays a whole log leaf by leaf and names the first stored node or
//! checkpoint root that disagrees with the leaves.
//!
//! ```
//! use hygie_audit::merkle::{self, Frontier, MemoryNodes};
//! let mut frontier = Frontier::new();
//! let mut store = MemoryNodes::default();
//! for leaf in [&b"a"[..], b"b", b"c"] {
//!     let new_nodes = frontier.extend(&[merkle::leaf_hash(leaf)]).unwrap();
//!     store.insert(&new_nodes).unwrap();
//! }
//! let root = frontier.root();
//! let proof = merkle::inclusion_proof(&mut store, 1, 3).unwrap();
//! merkle::verify_inclusion(&merkle::leaf_hash(b"b"), 1, 3, &proof, &root).unwrap();
//! ```

use sha2::{Digest, Sha256};

/// A SHA-256 hash: a leaf hash, a node hash or a root.
pub type Hash = [u8; 32];

/// The largest tree size: leaf indices and sizes must fit a signed 64-bit database integer.
pub const MAX_TREE_SIZE: u64 = (1 << 63) - 1;

/// The longest proof accepted: a tree of at most 2^63 − 1 leaves has at most 63 levels, so
/// no genuine inclusion or consistency proof is longer.
pub const MAX_PROOF_HASHES: usize = 64;

/// The root of the empty tree, `SHA-256("")` (RFC 9162 §2.1.1).
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// Why a Merkle computation or verification failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    #[error("a tree of {size} leaves is larger than the limit of 2^63 - 1")]
    TreeTooLarge { size: u64 },
    #[error("leaf index {index} is not in a tree of {size} leaves")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("the first tree size {size1} is larger than the second {size2}")]
    SizesReversed { size1: u64, size2: u64 },
    #[error("a proof of {len} hashes is longer than the limit of {MAX_PROOF_HASHES}")]
    ProofTooLong { len: usize },
    #[error("a proof of {len} hashes, where this index and tree size need {expected}")]
    WrongProofLength { len: usize, expected: usize },
    #[error("the root computed from the proof differs from the expected root")]
    RootMismatch,
    #[error("the first root computed from the consistency proof differs from the expected one")]
    FirstRootMismatch,
    #[error("the second root computed from the consistency proof differs from the expected one")]
    SecondRootMismatch,
    #[error("{got} node hashes given where {expected} were asked for")]
    WrongNodeCount { got: usize, expected: usize },
}

/// A failure of a helper that reads nodes through a [`NodeSource`].
#[derive(Debug, thiserror::Error)]
pub enum FetchError<E> {
    #[error(transparent)]
    Merkle(#[from] MerkleError),
    #[error("reading tree nodes: {0}")]
    Source(E),
}

/// RFC 9162 §2.1.1 leaf hash: `SHA-256(0x00 ‖ leaf)`.
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x00]);
    hasher.update(leaf);
    hasher.finalize().into()
}

/// RFC 9162 §2.1.1 interior node hash: `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x01]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// A perfect subtree: `(level, index)` covers leaves `[index·2^level, (index+1)·2^level)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    pub level: u32,
    pub index: u64,
}

impl NodeId {
    pub const fn new(level: u32, index: u64) -> NodeId {
        NodeId { level, index }
    }

    /// The node of one leaf.
    pub const fn leaf(index: u64) -> NodeId {
        NodeId { level: 0, index }
    }

    /// The leaves the node covers, `[begin, end)`; `None` past 2^64.
    pub fn leaves(self) -> Option<(u64, u64)> {
        if self.level >= 64 {
            return None;
        }
        let begin = u128::from(self.index) << self.level;
        let end = begin + (1u128 << self.level);
        Some((u64::try_from(begin).ok()?, u64::try_from(end).ok()?))
    }

    pub const fn parent(self) -> NodeId {
        NodeId {
            level: self.level + 1,
            index: self.index >> 1,
        }
    }

    /// Whether the node is a perfect subtree of a tree of `size` leaves.
    pub fn is_within(self, size: u64) -> bool {
        self.leaves().is_some_and(|(_, end)| end <= size)
    }
}

/// A perfect node and its hash: what a store writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredNode {
    pub id: NodeId,
    pub hash: Hash,
}

/// The batch read a store offers: the hashes of perfect nodes, in the order asked. Every
/// proof is one call, so a database serves it with one query.
pub trait NodeSource {
    type Error;
    fn nodes(&mut self, ids: &[NodeId]) -> Result<Vec<Hash>, Self::Error>;
}

fn check_size(size: u64) -> Result<(), MerkleError> {
    if size > MAX_TREE_SIZE {
        return Err(MerkleError::TreeTooLarge { size });
    }
    Ok(())
}

/// The largest power of two strictly below `n` (RFC 9162's split point `k`), for `n ≥ 2`.
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// The perfect nodes under the RFC 9162 subtree over `[begin, end)`, largest (leftmost)
/// first. Such a subtree starts at a multiple of the power of two at or above its size, so
/// each part is aligned.
fn range_nodes(begin: u64, end: u64, out: &mut Vec<NodeId>) {
    let mut position = begin;
    let mut remaining = end - begin;
    while remaining > 0 {
        let level = 63 - remaining.leading_zeros();
        debug_assert_eq!(position % (1 << level), 0, "an RFC 9162 subtree is aligned");
        out.push(NodeId::new(level, position >> level));
        position += 1 << level;
        remaining -= 1 << level;
    }
}

/// The hash of a subtree from its perfect parts, leftmost first: the RFC splits off the
/// largest perfect subtree on the left, so the parts fold from the right.
fn fold_parts<'a>(mut parts: impl DoubleEndedIterator<Item = &'a Hash>) -> Hash {
    let Some(mut hash) = parts.next_back().copied() else {
        return EMPTY_ROOT;
    };
    for left in parts.rev() {
        hash = node_hash(left, &hash);
    }
    hash
}

/// Which perfect nodes a proof needs, and how to fold them into its hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofPlan {
    /// Distinct, sorted: what to fetch.
    nodes: Vec<NodeId>,
    /// For each proof hash in turn, positions in `nodes` of its parts, leftmost first.
    parts: Vec<u16>,
    /// End of each proof hash's parts in `parts`.
    ends: Vec<u16>,
}

impl ProofPlan {
    fn from_ranges(ranges: &[(u64, u64)]) -> ProofPlan {
        let mut wanted = Vec::with_capacity(2 * ranges.len());
        let mut ends = Vec::with_capacity(ranges.len());
        for &(begin, end) in ranges {
            range_nodes(begin, end, &mut wanted);
            ends.push(u16::try_from(wanted.len()).expect("at most 64 × 64 parts"));
        }
        let mut nodes = wanted.clone();
        nodes.sort_unstable();
        nodes.dedup();
        let parts = wanted
            .iter()
            .map(|id| {
                let position = nodes.binary_search(id).expect("every part is in nodes");
                u16::try_from(position).expect("at most 64 × 64 nodes")
            })
            .collect();
        ProofPlan { nodes, parts, ends }
    }

    /// The perfect nodes to fetch, distinct and sorted by (level, index).
    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    /// The number of hashes in the proof.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The proof, from the hashes of [`ProofPlan::nodes`] in the same order.
    pub fn assemble(&self, hashes: &[Hash]) -> Result<Vec<Hash>, MerkleError> {
        if hashes.len() != self.nodes.len() {
            return Err(MerkleError::WrongNodeCount {
                got: hashes.len(),
                expected: self.nodes.len(),
            });
        }
        let mut proof = Vec::with_capacity(self.ends.len());
        let mut begin = 0;
        for &end in &self.ends {
            let end = usize::from(end);
            let parts = self.parts[begin..end]
                .iter()
                .map(|&position| &hashes[usize::from(position)]);
            proof.push(fold_parts(parts));
            begin = end;
        }
        Ok(proof)
    }
}

/// The plan of RFC 9162 §2.1.3.1 `PATH(index, D[size])`: the inclusion proof of leaf
/// `index` in the tree of `size` leaves, from the leaf up.
pub fn inclusion_plan(index: u64, size: u64) -> Result<ProofPlan, MerkleError> {
    check_size(size)?;
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    // PATH, walked from the root down: the sibling of the side holding the leaf, each time.
    let mut ranges = Vec::with_capacity(64);
    let (mut low, mut high) = (0, size);
    while high - low > 1 {
        let k = split_point(high - low);
        if index < low + k {
            ranges.push((low + k, high));
            high = low + k;
        } else {
            ranges.push((low, low + k));
            low += k;
        }
    }
    ranges.reverse();
    Ok(ProofPlan::from_ranges(&ranges))
}

/// The plan of RFC 9162 §2.1.4.1 `PROOF(size1, D[size2])`: the consistency proof between
/// the trees of `size1` and `size2` leaves. Empty when `size1` is 0 or equals `size2`:
/// those are consistent without a proof (as c2sp.org/tlog-witness also has it).
pub fn consistency_plan(size1: u64, size2: u64) -> Result<ProofPlan, MerkleError> {
    check_size(size2)?;
    if size1 > size2 {
        return Err(MerkleError::SizesReversed { size1, size2 });
    }
    let mut ranges = Vec::with_capacity(64);
    if size1 == 0 || size1 == size2 {
        return Ok(ProofPlan::from_ranges(&ranges));
    }
    // SUBPROOF(m, D[low:high], whole), walked from the root down; `whole` is the RFC's `b`:
    // still on the path of the first tree's own root, whose hash the verifier has.
    let (mut low, mut high) = (0, size2);
    let mut whole = true;
    while size1 != high {
        let k = split_point(high - low);
        if size1 <= low + k {
            ranges.push((low + k, high));
            high = low + k;
        } else {
            ranges.push((low, low + k));
            low += k;
            whole = false;
        }
    }
    if !whole {
        ranges.push((low, high));
    }
    ranges.reverse();
    Ok(ProofPlan::from_ranges(&ranges))
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves, read from `source` in
/// one call.
pub fn inclusion_proof<S: NodeSource>(
    source: &mut S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, FetchError<S::Error>> {
    let plan = inclusion_plan(index, size)?;
    let hashes = source.nodes(plan.nodes()).map_err(FetchError::Source)?;
    Ok(plan.assemble(&hashes)?)
}

/// The consistency proof from `size1` to `size2`, read from `source` in one call.
pub fn consistency_proof<S: NodeSource>(
    source: &mut S,
    size1: u64,
    size2: u64,
) -> Result<Vec<Hash>, FetchError<S::Error>> {
    let plan = consistency_plan(size1, size2)?;
    if plan.is_empty() {
        return Ok(Vec::new());
    }
    let hashes = source.nodes(plan.nodes()).map_err(FetchError::Source)?;
    Ok(plan.assemble(&hashes)?)
}

/// The proof length for leaf `index` in a tree of `size` leaves (`index < size`): the
/// levels below the point where the leaf's path leaves the right edge, plus one hash for
/// each left sibling above it.
fn inclusion_proof_len(index: u64, size: u64) -> usize {
    let inner = 64 - (index ^ (size - 1)).leading_zeros();
    let border = (index >> inner).count_ones();
    (inner + border) as usize
}

/// RFC 9162 §2.1.3.2: the root that `proof` gives for leaf `index` of a tree of `size`.
pub fn root_from_inclusion_proof(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
) -> Result<Hash, MerkleError> {
    check_size(size)?;
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    if proof.len() > MAX_PROOF_HASHES {
        return Err(MerkleError::ProofTooLong { len: proof.len() });
    }
    let expected = inclusion_proof_len(index, size);
    if proof.len() != expected {
        return Err(MerkleError::WrongProofLength {
            len: proof.len(),
            expected,
        });
    }
    let wrong_length = MerkleError::WrongProofLength {
        len: proof.len(),
        expected,
    };
    // The steps of §2.1.3.2, with `f`, `s` for its `fn`, `sn`.
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf_hash;
    for p in proof {
        if s == 0 {
            return Err(wrong_length);
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(wrong_length);
    }
    Ok(r)
}

/// RFC 9162 §2.1.3.2: checks that `leaf_hash` is leaf `index` of the tree of `size` leaves
/// whose root is `root`.
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), MerkleError> {
    if root_from_inclusion_proof(leaf_hash, index, size, proof)? != *root {
        return Err(MerkleError::RootMismatch);
    }
    Ok(())
}

/// The consistency proof length for `0 < size1 < size2`: the inclusion proof of leaf
/// `size1 − 1` in the second tree, without the levels inside the first tree's largest
/// perfect right subtree, plus that subtree's hash unless it is the first tree itself.
fn consistency_proof_len(size1: u64, size2: u64) -> usize {
    let shift = size1.trailing_zeros();
    let inner = 64 - ((size1 - 1) ^ (size2 - 1)).leading_zeros();
    let border = ((size1 - 1) >> inner).count_ones();
    let seed = usize::from(!size1.is_power_of_two());
    (inner - shift + border) as usize + seed
}

/// RFC 9162 §2.1.4.2: checks that the tree of `size2` leaves with root `root2` extends the
/// tree of `size1` leaves with root `root1`. Sizes 0 and equal sizes need an empty proof
/// (and, for 0, `root1` must be the empty tree's root).
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    proof: &[Hash],
    root1: &Hash,
    root2: &Hash,
) -> Result<(), MerkleError> {
    check_size(size2)?;
    if size1 > size2 {
        return Err(MerkleError::SizesReversed { size1, size2 });
    }
    if proof.len() > MAX_PROOF_HASHES {
        return Err(MerkleError::ProofTooLong { len: proof.len() });
    }
    if size1 == 0 || size1 == size2 {
        if !proof.is_empty() {
            return Err(MerkleError::WrongProofLength {
                len: proof.len(),
                expected: 0,
            });
        }
        if size1 == 0 && *root1 != EMPTY_ROOT {
            return Err(MerkleError::FirstRootMismatch);
        }
        if size1 == size2 && root1 != root2 {
            return Err(MerkleError::SecondRootMismatch);
        }
        return Ok(());
    }
    let expected = consistency_proof_len(size1, size2);
    if proof.len() != expected {
        return Err(MerkleError::WrongProofLength {
            len: proof.len(),
            expected,
        });
    }
    let wrong_length = MerkleError::WrongProofLength {
        len: proof.len(),
        expected,
    };
    // The steps of §2.1.4.2: when size1 is a power of two its root is the path's seed.
    let (seed, path) = if size1.is_power_of_two() {
        (root1, proof)
    } else {
        (&proof[0], &proof[1..])
    };
    let (mut f, mut s) = (size1 - 1, size2 - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*seed, *seed);
    for c in path {
        if s == 0 {
            return Err(wrong_length);
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(wrong_length);
    }
    if fr != *root1 {
        return Err(MerkleError::FirstRootMismatch);
    }
    if sr != *root2 {
        return Err(MerkleError::SecondRootMismatch);
    }
    Ok(())
}

/// The compact range `[0, size)`: one perfect node per set bit of `size`, largest first.
/// What a store keeps in memory to append without reading the tree, and to give the root.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frontier {
    size: u64,
    /// The hashes of [`Frontier::node_ids`]`(size)`, in that order.
    hashes: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Frontier {
        Frontier::default()
    }

    /// The stored nodes a frontier of `size` is rebuilt from, largest (leftmost) first.
    pub fn node_ids(size: u64) -> Result<Vec<NodeId>, MerkleError> {
        check_size(size)?;
        let mut ids = Vec::with_capacity(size.count_ones() as usize);
        range_nodes(0, size, &mut ids);
        Ok(ids)
    }

    /// A frontier from the hashes of [`Frontier::node_ids`]`(size)`, in that order.
    pub fn from_hashes(size: u64, hashes: &[Hash]) -> Result<Frontier, MerkleError> {
        check_size(size)?;
        let expected = size.count_ones() as usize;
        if hashes.len() != expected {
            return Err(MerkleError::WrongNodeCount {
                got: hashes.len(),
                expected,
            });
        }
        Ok(Frontier {
            size,
            hashes: hashes.to_vec(),
        })
    }

    /// The frontier of the stored tree of `size` leaves, read in one call.
    pub fn load<S: NodeSource>(
        source: &mut S,
        size: u64,
    ) -> Result<Frontier, FetchError<S::Error>> {
        let ids = Frontier::node_ids(size)?;
        if ids.is_empty() {
            return Ok(Frontier::new());
        }
        let hashes = source.nodes(&ids).map_err(FetchError::Source)?;
        Ok(Frontier::from_hashes(size, &hashes)?)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The frontier's nodes with their hashes, largest first.
    pub fn nodes(&self) -> Vec<StoredNode> {
        let mut ids = Vec::with_capacity(self.hashes.len());
        range_nodes(0, self.size, &mut ids);
        ids.into_iter()
            .zip(&self.hashes)
            .map(|(id, hash)| StoredNode { id, hash: *hash })
            .collect()
    }

    /// RFC 9162 `MTH(D[0:size])`.
    pub fn root(&self) -> Hash {
        fold_parts(self.hashes.iter())
    }

    /// Appends the leaf at index `size()`; pushes onto `completed` every perfect node it
    /// completes: the leaf node `(0, index)` first, then its ancestors upwards.
    pub fn push(
        &mut self,
        leaf_hash: Hash,
        completed: &mut Vec<StoredNode>,
    ) -> Result<(), MerkleError> {
        if self.size >= MAX_TREE_SIZE {
            return Err(MerkleError::TreeTooLarge {
                size: self.size.saturating_add(1),
            });
        }
        let mut id = NodeId::leaf(self.size);
        let mut hash = leaf_hash;
        completed.push(StoredNode { id, hash });
        // Each set low bit of the index is a left sibling waiting on the frontier.
        while id.index & 1 == 1 {
            let left = self
                .hashes
                .pop()
                .expect("a set bit of the size has its frontier node");
            hash = node_hash(&left, &hash);
            id = id.parent();
            completed.push(StoredNode { id, hash });
        }
        self.hashes.push(hash);
        self.size += 1;
        Ok(())
    }

    /// Appends leaves (by their hashes); returns every new perfect node to store.
    /// All or nothing: a batch that would pass the size limit appends nothing.
    pub fn extend(&mut self, leaf_hashes: &[Hash]) -> Result<Vec<StoredNode>, MerkleError> {
        let count = u64::try_from(leaf_hashes.len()).unwrap_or(u64::MAX);
        let size = self.size.saturating_add(count);
        check_size(size)?;
        // About two nodes per leaf (a leaf and, on average, one completed parent).
        let mut completed = Vec::with_capacity(2 * leaf_hashes.len() + 64);
        for hash in leaf_hashes {
            self.push(*hash, &mut completed)?;
        }
        Ok(completed)
    }
}

/// Every new perfect node from appending `leaf_hashes` to the stored tree of `size` leaves,
/// reading the frontier in one call. A store that keeps its [`Frontier`] in memory calls
/// [`Frontier::extend`] instead and reads nothing.
pub fn append<S: NodeSource>(
    source: &mut S,
    size: u64,
    leaf_hashes: &[Hash],
) -> Result<(Frontier, Vec<StoredNode>), FetchError<S::Error>> {
    let mut frontier = Frontier::load(source, size)?;
    let nodes = frontier.extend(leaf_hashes)?;
    Ok((frontier, nodes))
}

/// The root of the stored tree of `size` leaves, read in one call.
pub fn root<S: NodeSource>(source: &mut S, size: u64) -> Result<Hash, FetchError<S::Error>> {
    Ok(Frontier::load(source, size)?.root())
}

/// What the replay of a log found different from what is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Discrepancy {
    /// The leaf's bytes do not hash to the stored leaf node: this leaf (or its stored hash)
    /// was changed, or a leaf before it was removed or inserted.
    #[error("leaf {index}: its hash differs from the stored leaf node")]
    Leaf {
        index: u64,
        stored: Option<Hash>,
        recomputed: Hash,
    },
    /// An interior node differs though the leaf nodes under it matched: the stored nodes
    /// were changed (proofs served from them would not verify).
    #[error("node (level {}, index {}) differs from the one its leaves give", .id.level, .id.index)]
    Node {
        id: NodeId,
        stored: Option<Hash>,
        recomputed: Hash,
    },
    /// The root of the first `size` leaves differs from the checkpoint of that size.
    #[error("the root of the first {size} leaves differs from the checkpoint of that size")]
    Root {
        size: u64,
        checkpoint: Hash,
        recomputed: Hash,
    },
    /// The log ends before a size it once had (a checkpoint's, or the stored tree size).
    #[error("the log ends at leaf {first_missing}, before the size {expected_size} it had")]
    Truncated {
        first_missing: u64,
        expected_size: u64,
    },
    #[error(transparent)]
    Limit(#[from] MerkleError),
}

/// Replays a log leaf by leaf, in index order, for `hygie audit verify`: recomputes every
/// perfect node and the root of every prefix, and compares them with what is stored.
#[derive(Debug, Clone, Default)]
pub struct StreamVerifier {
    frontier: Frontier,
    completed: Vec<StoredNode>,
}

impl StreamVerifier {
    pub fn new() -> StreamVerifier {
        StreamVerifier::default()
    }

    /// Continues after a prefix already verified (the frontier of a trusted checkpoint).
    pub fn resume(frontier: Frontier) -> StreamVerifier {
        StreamVerifier {
            frontier,
            completed: Vec::with_capacity(64),
        }
    }

    /// The leaves replayed so far, which is the index of the next one.
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// The root of the leaves replayed so far.
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    pub fn frontier(&self) -> &Frontier {
        &self.frontier
    }

    /// Hashes the next leaf; returns the perfect nodes it completes, leaf node first.
    pub fn push_leaf(&mut self, leaf: &[u8]) -> Result<&[StoredNode], MerkleError> {
        self.push_leaf_hash(leaf_hash(leaf))
    }

    pub fn push_leaf_hash(&mut self, leaf_hash: Hash) -> Result<&[StoredNode], MerkleError> {
        self.completed.clear();
        self.frontier.push(leaf_hash, &mut self.completed)?;
        Ok(&self.completed)
    }

    /// Replays the next leaf and compares each node it completes with the stored one
    /// (`stored(id)`, `None` when absent); the leaf node comes first, so a changed leaf is
    /// named as such.
    pub fn verify_leaf(
        &mut self,
        leaf: &[u8],
        stored: impl FnMut(NodeId) -> Option<Hash>,
    ) -> Result<(), Discrepancy> {
        self.verify_leaf_kept(leaf_hash(leaf), |_| true, stored)
    }

    /// Like [`StreamVerifier::verify_leaf`], from the leaf's hash, for a store that keeps
    /// only some levels: nodes of a level where `kept(level)` is false are not compared.
    pub fn verify_leaf_kept(
        &mut self,
        leaf_hash: Hash,
        kept: impl Fn(u32) -> bool,
        mut stored: impl FnMut(NodeId) -> Option<Hash>,
    ) -> Result<(), Discrepancy> {
        let index = self.size();
        for node in self.push_leaf_hash(leaf_hash)? {
            if !kept(node.id.level) {
                continue;
            }
            let found = stored(node.id);
            if found == Some(node.hash) {
                continue;
            }
            return Err(if node.id.level == 0 {
                Discrepancy::Leaf {
                    index,
                    stored: found,
                    recomputed: node.hash,
                }
            } else {
                Discrepancy::Node {
                    id: node.id,
                    stored: found,
                    recomputed: node.hash,
                }
            });
        }
        Ok(())
    }

    /// Compares the root of the leaves replayed so far with a checkpoint of that size.
    pub fn check_root(&self, checkpoint_root: &Hash) -> Result<(), Discrepancy> {
        let recomputed = self.root();
        if recomputed != *checkpoint_root {
            return Err(Discrepancy::Root {
                size: self.size(),
                checkpoint: *checkpoint_root,
                recomputed,
            });
        }
        Ok(())
    }

    /// Checks that the log reached `expected_size` (a checkpoint's, or the stored size).
    pub fn check_reached(&self, expected_size: u64) -> Result<(), Discrepancy> {
        if self.size() < expected_size {
            return Err(Discrepancy::Truncated {
                first_missing: self.size(),
                expected_size,
            });
        }
        Ok(())
    }
}

/// An in-memory [`NodeSource`]: one vector of hashes per level. For tests, benchmarks and
/// small tools; a hub keeps its nodes in its database.
#[derive(Debug, Clone, Default)]
pub struct MemoryNodes {
    levels: Vec<Vec<Hash>>,
}

/// A node asked of [`MemoryNodes`] that it does not hold, or one given out of order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryNodesError {
    #[error("node (level {}, index {}) is not stored", .0.level, .0.index)]
    Missing(NodeId),
    #[error("node (level {}, index {}) is not the next one of its level", .0.level, .0.index)]
    OutOfOrder(NodeId),
}

impl MemoryNodes {
    /// Stores new nodes; each must be the next one of its level (as [`Frontier::push`]
    /// completes them), so the levels stay dense.
    pub fn insert(&mut self, nodes: &[StoredNode]) -> Result<(), MemoryNodesError> {
        for node in nodes {
            let level = node.id.level as usize;
            if level > 64 {
                return Err(MemoryNodesError::OutOfOrder(node.id));
            }
            if self.levels.len() <= level {
                self.levels.resize_with(level + 1, Vec::new);
            }
            let hashes = &mut self.levels[level];
            if hashes.len() as u64 != node.id.index {
                return Err(MemoryNodesError::OutOfOrder(node.id));
            }
            hashes.push(node.hash);
        }
        Ok(())
    }

    pub fn get(&self, id: NodeId) -> Option<Hash> {
        let hashes = self.levels.get(id.level as usize)?;
        hashes.get(usize::try_from(id.index).ok()?).copied()
    }
}

impl NodeSource for MemoryNodes {
    type Error = MemoryNodesError;

    fn nodes(&mut self, ids: &[NodeId]) -> Result<Vec<Hash>, MemoryNodesError> {
        ids.iter()
            .map(|&id| self.get(id).ok_or(MemoryNodesError::Missing(id)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_root_is_the_hash_of_nothing() {
        assert_eq!(EMPTY_ROOT, <[u8; 32]>::from(Sha256::digest(b"")));
        assert_eq!(Frontier::new().root(), EMPTY_ROOT);
    }

    #[test]
    fn split_point_is_the_largest_power_of_two_below() {
        for (n, k) in [
            (2, 1),
            (3, 2),
            (4, 2),
            (5, 4),
            (8, 4),
            (9, 8),
            (MAX_TREE_SIZE, 1 << 62),
        ] {
            assert_eq!(split_point(n), k, "n = {n}");
        }
    }

    #[test]
    fn node_leaves_and_bounds() {
        assert_eq!(NodeId::new(3, 2).leaves(), Some((16, 24)));
        assert_eq!(NodeId::new(64, 0).leaves(), None);
        assert_eq!(NodeId::new(63, 2).leaves(), None);
        assert!(NodeId::new(2, 1).is_within(8));
        assert!(!NodeId::new(2, 1).is_within(7));
    }

    #[test]
    fn frontier_nodes_follow_the_bits_of_the_size() {
        let ids = Frontier::node_ids(13).unwrap();
        assert_eq!(
            ids,
            vec![NodeId::new(3, 0), NodeId::new(2, 2), NodeId::new(0, 12)]
        );
        assert_eq!(
            Frontier::node_ids(MAX_TREE_SIZE + 1),
            Err(MerkleError::TreeTooLarge {
                size: MAX_TREE_SIZE + 1
            })
        );
    }

    #[test]
    fn a_full_tree_refuses_one_more_leaf() {
        let hashes = vec![[7; 32]; 63];
        let mut frontier = Frontier::from_hashes(MAX_TREE_SIZE, &hashes).unwrap();
        assert_eq!(
            frontier.extend(&[[1; 32]]),
            Err(MerkleError::TreeTooLarge {
                size: MAX_TREE_SIZE + 1
            })
        );
        assert_eq!(frontier.size(), MAX_TREE_SIZE, "nothing appended");
        // The largest tree still has proofs within the length limit.
        let plan = inclusion_plan(MAX_TREE_SIZE - 1, MAX_TREE_SIZE).unwrap();
        assert!(plan.len() <= MAX_PROOF_HASHES);
        let plan = consistency_plan(MAX_TREE_SIZE - 1, MAX_TREE_SIZE).unwrap();
        assert!(plan.len() <= MAX_PROOF_HASHES);
    }
}
