//! Cost of the audit log's Merkle arithmetic: proofs from a tree of 10 million leaves held
//! as perfect nodes in memory (a store's work minus its one query), appends through the
//! frontier, and replaying 1 KiB leaves as `hygie audit verify` does.
//!
//! `cargo bench -p hygie-audit --bench merkle` (`-- --quick` for a short run). Building the
//! 10-million-leaf tree takes a few seconds and about 640 MiB.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use hygie_audit::merkle::{
    self, Frontier, Hash, MemoryNodes, NodeSource, StreamVerifier, leaf_hash,
};

const TREE_SIZE: u64 = 10_000_000;
const APPEND_BATCH: usize = 1_000;
const STREAM_LEAVES: usize = 10_000;
const STREAM_LEAF_BYTES: usize = 1024;

/// Leaf `i` of the benchmark tree: small and distinct.
fn leaf(i: u64) -> Hash {
    leaf_hash(&i.to_be_bytes())
}

/// A cheap deterministic sequence of indices (a 64-bit LCG), so proofs hit the whole tree.
struct Indices(u64);

impl Indices {
    fn next_below(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 1) % bound
    }
}

fn build_tree() -> (Frontier, MemoryNodes) {
    let mut frontier = Frontier::new();
    let mut store = MemoryNodes::default();
    let mut next = 0;
    while next < TREE_SIZE {
        let end = (next + 100_000).min(TREE_SIZE);
        let batch: Vec<Hash> = (next..end).map(leaf).collect();
        store
            .insert(&frontier.extend(&batch).expect("within limits"))
            .expect("in order");
        next = end;
    }
    (frontier, store)
}

fn proofs(c: &mut Criterion) {
    let (frontier, mut store) = build_tree();
    let root = frontier.root();
    let mut group = c.benchmark_group("proof_10M_leaves");
    group.throughput(Throughput::Elements(1));

    let mut indices = Indices(1);
    group.bench_function("inclusion_plan_fetch_assemble", |b| {
        b.iter(|| {
            let index = indices.next_below(TREE_SIZE);
            let plan = merkle::inclusion_plan(index, TREE_SIZE).expect("in range");
            let hashes = store.nodes(plan.nodes()).expect("stored");
            black_box(plan.assemble(&hashes).expect("as many as asked"))
        })
    });

    let mut indices = Indices(2);
    group.bench_function("inclusion_verify", |b| {
        let index = indices.next_below(TREE_SIZE);
        let proof = merkle::inclusion_proof(&mut store, index, TREE_SIZE).expect("stored");
        let leaf = leaf(index);
        b.iter(|| merkle::verify_inclusion(&leaf, index, TREE_SIZE, black_box(&proof), &root))
    });

    let mut indices = Indices(3);
    group.bench_function("consistency_plan_fetch_assemble", |b| {
        b.iter(|| {
            let size1 = indices.next_below(TREE_SIZE - 1) + 1;
            let plan = merkle::consistency_plan(size1, TREE_SIZE).expect("in range");
            let hashes = store.nodes(plan.nodes()).expect("stored");
            black_box(plan.assemble(&hashes).expect("as many as asked"))
        })
    });

    group.bench_function("root_from_stored_frontier", |b| {
        b.iter(|| merkle::root(&mut store, black_box(TREE_SIZE)).expect("stored"))
    });
    group.finish();

    // Appends at the far end of the same tree, through the in-memory frontier: what the
    // store does per committed batch (leaf hashing excluded: it happens with the record).
    let batch: Vec<Hash> = (TREE_SIZE..TREE_SIZE + APPEND_BATCH as u64)
        .map(leaf)
        .collect();
    let mut group = c.benchmark_group("append");
    group.throughput(Throughput::Elements(APPEND_BATCH as u64));
    group.bench_function("frontier_extend_1000_at_10M", |b| {
        b.iter_batched(
            || frontier.clone(),
            |mut frontier| black_box(frontier.extend(&batch).expect("within limits")),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn stream(c: &mut Criterion) {
    let leaves: Vec<Vec<u8>> = (0..STREAM_LEAVES)
        .map(|i| {
            let mut leaf = vec![b'x'; STREAM_LEAF_BYTES];
            leaf[..8].copy_from_slice(&(i as u64).to_be_bytes());
            leaf
        })
        .collect();
    let mut stored = MemoryNodes::default();
    let hashes: Vec<Hash> = leaves.iter().map(|l| leaf_hash(l)).collect();
    stored
        .insert(&Frontier::new().extend(&hashes).expect("within limits"))
        .expect("in order");

    let mut group = c.benchmark_group("stream_verify");
    group.throughput(Throughput::Elements(STREAM_LEAVES as u64));
    group.bench_function("1KiB_leaves_against_stored_nodes", |b| {
        b.iter(|| {
            let mut verifier = StreamVerifier::new();
            for leaf in &leaves {
                verifier
                    .verify_leaf(leaf, |id| stored.get(id))
                    .expect("genuine");
            }
            black_box(verifier.root())
        })
    });
    group.finish();
}

criterion_group!(benches, proofs, stream);
criterion_main!(benches);
