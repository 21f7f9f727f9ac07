//! The audit log through the real store (SQLite in a directory under `target/`, and
//! PostgreSQL when `HYGIE_TEST_POSTGRES_URL` is set): appending leaves, integrating them
//! into the tree, `verify` over a stored log, and inclusion proofs from a large log.
//!
//! ```sh
//! cargo bench -p hygie-hub --bench audit_log                 # everything
//! cargo bench -p hygie-hub --bench audit_log -- append       # one group
//! ```
//!
//! - `audit_append/*`: leaves of a realistic AuditEvent (`AuditRecord::to_leaf`, the size
//!   is printed) appended as the hub does (`append_audit_indexed`: with the leaf's hash and
//!   its patient and agent facets): each request a unit of its own, many in flight,
//!   the SQLite writer grouping them in one transaction (group commit, one fsync) or
//!   PostgreSQL committing them concurrently; and one unit of many leaves (a bulk load's).
//! - `audit_integrate/*`: `Hub::integrate_audit` over the leaves appended since the last
//!   integration (20,000, in one unit: the hub's units are smaller, `integrate_batch_leaves`),
//!   checkpoint signing included.
//! - `audit_verify/*`: `Hub::verify_audit` over a stored log of `HYGIE_BENCH_VERIFY_LEAVES`
//!   (1,000,000) realistic leaves.
//! - `audit_proof/*`: `Hub::audit_inclusion_proof` at random indices, in that log and in
//!   one of `HYGIE_BENCH_PROOF_LEAVES` (10,000,000) small leaves.
//!
//! The two large logs are built on first use (the time it took is printed) in
//! `target/bench-audit/` (or `$CARGO_TARGET_DIR/bench-audit/`) and reused by later runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use hygie_audit::AuditRecord;
use hygie_audit::merkle;
use hygie_hub::{AuditLogSettings, Hub, HubConfig};
use hygie_store::{AuditFacets, SharedStore, StoreError, StoreExt, Tx};
use tokio::runtime::Runtime;

/// Units in flight in the group-commit benchmark (the SQLite writer's `max_batch`).
const IN_FLIGHT: usize = 512;
/// Leaves of the one-unit benchmark.
const UNIT_LEAVES: usize = 1_000;
/// Leaves integrated per iteration, in one unit (the hub's default units hold 2,000).
const INTEGRATE_LEAVES: usize = 20_000;
/// Leaves appended per unit while a large log is built.
const BUILD_UNIT_LEAVES: usize = 50_000;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

fn bench_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("bench-audit");
    std::fs::create_dir_all(&dir).expect("the benchmark directory");
    dir
}

fn env_count(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| v.replace('_', "").parse().expect("a number of leaves"))
        .unwrap_or(default)
}

/// A pool of distinct, realistic leaves: what a clinician's read of an Observation records
/// (BALP-shaped AuditEvent: who, from where, which version, request id).
fn realistic_leaves(count: usize) -> Vec<Vec<u8>> {
    realistic_appends(count)
        .into_iter()
        .map(|append| append.leaf)
        .collect()
}

/// A leaf as the hub appends it: with its RFC 9162 hash and its search facets.
struct Append {
    leaf: Vec<u8>,
    hash: [u8; 32],
    facets: AuditFacets,
}

fn realistic_appends(count: usize) -> Vec<Append> {
    (0..count)
        .map(|i| {
            let practitioner = format!("Practitioner/{}", uuid::Uuid::new_v4());
            let patient = uuid::Uuid::new_v4().to_string();
            let mut record =
                AuditRecord::new("read", &practitioner, 1_790_000_000_000_000 + i as i64);
            record.network_address = Some(format!("10.20.{}.{}", i % 250, (i / 250) % 250));
            record.request_id = Some(uuid::Uuid::new_v4().to_string());
            let leaf = record
                .entity(format!(
                    "Observation/{}/_history/{}",
                    uuid::Uuid::new_v4(),
                    1 + i % 3
                ))
                .entity(format!("Patient/{patient}"))
                .to_leaf();
            Append {
                hash: merkle::leaf_hash(&leaf),
                leaf,
                facets: AuditFacets {
                    event_type: "rest".to_owned(),
                    subtype: "read".to_owned(),
                    outcome: "0".to_owned(),
                    purpose: None,
                    agents: vec![practitioner],
                    patients: vec![patient],
                },
            }
        })
        .collect()
}

fn make_hub(store: SharedStore, integrate_batch_leaves: usize) -> Hub {
    let config = HubConfig {
        audit: AuditLogSettings {
            origin: Some("bench.example/audit".to_owned()),
            integrate_batch_leaves,
            ..AuditLogSettings::default()
        },
        ..HubConfig::default()
    };
    Hub::new(store, config)
}

fn open_sqlite(dir: &Path) -> SharedStore {
    Arc::new(hygie_store::open_sqlite(dir, &Default::default()).expect("open SQLite"))
}

/// The stores the append and integrate benchmarks run on, with what keeps them alive.
struct Backend {
    name: &'static str,
    store: SharedStore,
    _dir: Option<tempfile::TempDir>,
    _database: Option<hygie_store::testing::ThrowawayDatabase>,
}

fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir_in(bench_dir()).expect("a temporary directory");
    let mut backends = vec![Backend {
        name: "sqlite",
        store: open_sqlite(dir.path()),
        _dir: Some(dir),
        _database: None,
    }];
    if std::env::var_os("HYGIE_TEST_POSTGRES_URL").is_some() {
        let database = hygie_store::testing::ThrowawayDatabase::create();
        let url = database.url.clone();
        let store = std::thread::spawn(move || {
            hygie_store::open(
                Some(&url),
                Path::new("/nonexistent"),
                &Default::default(),
                &Default::default(),
            )
        })
        .join()
        .expect("the opening thread")
        .expect("open PostgreSQL");
        backends.push(Backend {
            name: "postgres",
            store,
            _dir: None,
            _database: Some(database),
        });
    }
    backends
}

/// `IN_FLIGHT` requests' leaves, each in a unit of its own, all in flight at once (each a
/// task, as requests are), awaited until durable.
async fn append_units_of_one(store: &SharedStore, appends: &Arc<Vec<Append>>, offset: usize) {
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            let appends = appends.clone();
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .run(move |tx| append(tx, &appends[(offset + i) % appends.len()]))
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("the task").expect("appended");
    }
}

async fn append_one_unit(store: &SharedStore, appends: Arc<Vec<Append>>, offset: usize) {
    store
        .run(move |tx| {
            for i in 0..UNIT_LEAVES {
                append(tx, &appends[(offset + i) % appends.len()])?;
            }
            Ok(())
        })
        .await
        .expect("appended");
}

/// What the hub's audit trail does for each access.
fn append(tx: &mut dyn Tx, append: &Append) -> Result<i64, StoreError> {
    tx.append_audit_indexed(0, &append.leaf, &append.hash, &append.facets)
}

fn append_and_integrate(c: &mut Criterion) {
    let rt = runtime();
    let leaves = Arc::new(realistic_appends(4096));
    let mean = leaves.iter().map(|a| a.leaf.len()).sum::<usize>() / leaves.len();
    eprintln!("realistic leaf: {mean} bytes on average");
    for backend in backends() {
        let store = backend.store.clone();
        let hub = make_hub(store.clone(), INTEGRATE_LEAVES);
        let mut group = c.benchmark_group("audit_append");
        group.sample_size(20);
        group.measurement_time(Duration::from_secs(10));
        group.throughput(Throughput::Elements(IN_FLIGHT as u64));
        let mut offset = 0;
        group.bench_function(
            BenchmarkId::new("units_of_one_leaf_512_in_flight", backend.name),
            |b| {
                b.iter(|| {
                    offset += IN_FLIGHT;
                    rt.block_on(append_units_of_one(&store, &leaves, offset))
                })
            },
        );
        group.throughput(Throughput::Elements(UNIT_LEAVES as u64));
        group.bench_function(
            BenchmarkId::new("one_unit_of_1000_leaves", backend.name),
            |b| {
                b.iter(|| {
                    offset += UNIT_LEAVES;
                    rt.block_on(append_one_unit(&store, leaves.clone(), offset))
                })
            },
        );
        group.finish();
        // What the appends above left is integrated first, untimed.
        rt.block_on(hub.integrate_audit(false)).expect("integrated");

        let mut group = c.benchmark_group("audit_integrate");
        group.sample_size(10);
        group.sampling_mode(SamplingMode::Flat);
        group.measurement_time(Duration::from_secs(10));
        group.throughput(Throughput::Elements(INTEGRATE_LEAVES as u64));
        group.bench_function(BenchmarkId::new("20000_leaves", backend.name), |b| {
            b.iter_custom(|iterations| {
                let mut timed = Duration::ZERO;
                for _ in 0..iterations {
                    for _ in 0..INTEGRATE_LEAVES / UNIT_LEAVES {
                        offset += UNIT_LEAVES;
                        rt.block_on(append_one_unit(&store, leaves.clone(), offset));
                    }
                    let start = Instant::now();
                    let done = rt.block_on(hub.integrate_audit(false)).expect("integrated");
                    timed += start.elapsed();
                    assert_eq!(done.leaves, INTEGRATE_LEAVES as u64);
                }
                timed
            })
        });
        group.finish();
        rt.block_on(hub.close());
    }
}

/// A stored log of `size` leaves in `target/bench-audit/<name>`, built once: the leaves
/// appended in units of `BUILD_UNIT_LEAVES`, integrated a million at a time, a checkpoint
/// forced at the end (by which a later run knows the log is complete).
fn large_log(
    rt: &Runtime,
    name: &str,
    size: u64,
    leaf: impl Fn(u64) -> Vec<u8>,
) -> (Hub, SharedStore) {
    let dir = bench_dir().join(name);
    if dir.exists() {
        let store = open_sqlite(&dir);
        let hub = make_hub(store.clone(), 1_000_000);
        if let Ok(checkpoint) = rt.block_on(hub.audit_checkpoint())
            && checkpoint.tree_size as u64 == size
        {
            eprintln!(
                "{name}: reusing the log of {size} leaves in {}",
                dir.display()
            );
            return (hub, store);
        }
        rt.block_on(hub.close());
        std::fs::remove_dir_all(&dir).expect("remove an incomplete log");
    }
    std::fs::create_dir_all(&dir).expect("the log's directory");
    let store = open_sqlite(&dir);
    let hub = make_hub(store.clone(), 1_000_000);
    eprintln!(
        "{name}: building a log of {size} leaves in {} ...",
        dir.display()
    );
    let start = Instant::now();
    let (mut appending, mut integrating) = (Duration::ZERO, Duration::ZERO);
    let mut next = 0u64;
    while next < size {
        let step = Instant::now();
        let million_end = (next + 1_000_000).min(size);
        while next < million_end {
            let end = (next + BUILD_UNIT_LEAVES as u64).min(million_end);
            let batch: Vec<Vec<u8>> = (next..end).map(&leaf).collect();
            rt.block_on(store.run(move |tx| {
                for leaf in &batch {
                    tx.append_audit(0, leaf)?;
                }
                Ok(())
            }))
            .expect("appended");
            next = end;
        }
        appending += step.elapsed();
        let step = Instant::now();
        rt.block_on(hub.integrate_audit(next == size))
            .expect("integrated");
        integrating += step.elapsed();
        eprintln!(
            "  {next} leaves, {:.0} s (append {:.0} s, integrate {:.0} s)",
            start.elapsed().as_secs_f64(),
            appending.as_secs_f64(),
            integrating.as_secs_f64()
        );
    }
    eprintln!(
        "{name}: built {size} leaves in {:.1} s: append {:.1} s ({:.0} leaves/s, one unit of {BUILD_UNIT_LEAVES}), integrate {:.1} s ({:.0} leaves/s)",
        start.elapsed().as_secs_f64(),
        appending.as_secs_f64(),
        size as f64 / appending.as_secs_f64(),
        integrating.as_secs_f64(),
        size as f64 / integrating.as_secs_f64(),
    );
    (hub, store)
}

fn verify(c: &mut Criterion) {
    let rt = runtime();
    let size = env_count("HYGIE_BENCH_VERIFY_LEAVES", 1_000_000);
    let mut group = c.benchmark_group("audit_verify");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(size));
    let mut hub = None;
    group.bench_function(BenchmarkId::new("sqlite", size), |b| {
        let (hub, _) = hub.get_or_insert_with(|| verify_log(&rt, size));
        b.iter(|| {
            let report = rt
                .block_on(hub.verify_audit(None, &[]))
                .expect("no store error")
                .expect("the log verifies");
            assert_eq!(report.leaves, size);
        })
    });
    group.finish();
}

fn verify_log(rt: &Runtime, size: u64) -> (Hub, SharedStore) {
    let pool = realistic_leaves(4096);
    large_log(rt, &format!("verify-{size}"), size, move |i| {
        pool[(i % pool.len() as u64) as usize].clone()
    })
}

/// Indices spread over the whole tree (a 64-bit LCG, deterministic).
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

fn proofs(c: &mut Criterion) {
    let rt = runtime();
    let verify_size = env_count("HYGIE_BENCH_VERIFY_LEAVES", 1_000_000);
    let proof_size = env_count("HYGIE_BENCH_PROOF_LEAVES", 10_000_000);
    let mut group = c.benchmark_group("audit_proof");
    group.sample_size(50);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(1));
    for (size, name) in [(verify_size, "verify"), (proof_size, "proof")] {
        let mut hub = None;
        let mut indices = Indices(7);
        group.bench_function(BenchmarkId::new("inclusion_sqlite", size), |b| {
            let (hub, _) = hub.get_or_insert_with(|| {
                let (hub, store) = match name {
                    "verify" => verify_log(&rt, size),
                    _ => large_log(&rt, &format!("proof-{size}"), size, |i| {
                        format!("bench leaf {i}").into_bytes()
                    }),
                };
                check_a_proof(&rt, &hub, &store, size);
                (hub, store)
            });
            b.iter(|| {
                let index = indices.next_below(size);
                rt.block_on(hub.audit_inclusion_proof(index, size))
                    .expect("a proof")
            })
        });
    }
    group.finish();
}

/// One proof checked against the signed root: the benchmark measures real proofs.
fn check_a_proof(rt: &Runtime, hub: &Hub, store: &SharedStore, size: u64) {
    let checkpoint = rt.block_on(hub.audit_checkpoint()).expect("a checkpoint");
    assert_eq!(checkpoint.tree_size as u64, size);
    let index = size / 3;
    let proof = rt
        .block_on(hub.audit_inclusion_proof(index, size))
        .expect("a proof");
    let stored = rt
        .block_on(store.read(move |tx| tx.audit_tree_leaves(index as i64, 1)))
        .expect("the leaf");
    let leaf = stored[0].1.clone().expect("not pruned");
    merkle::verify_inclusion(
        &merkle::leaf_hash(&leaf),
        index,
        size,
        &proof.hashes,
        &checkpoint.root,
    )
    .expect("the proof verifies against the signed root");
}

criterion_group!(benches, append_and_integrate, verify, proofs);
criterion_main!(benches);
