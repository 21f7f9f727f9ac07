//! Cost of validation on realistic input: one Synthea Patient, one whole Synthea bundle.
//!
//! `cargo bench -p hygie-fhir --bench validate`

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hygie_fhir::validate::validate_resource;
use serde_json::Value;

fn synthea_bundle() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/synthea/Malcolm_Dach_281f4a03-57e9-4b22-a322-68890ff22172.json");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).expect("Synthea bundle is JSON")
}

fn bench(c: &mut Criterion) {
    let bundle = synthea_bundle();
    let entries = bundle["entry"].as_array().expect("bundle has entries");
    let patient = entries
        .iter()
        .map(|e| &e["resource"])
        .find(|r| r["resourceType"] == "Patient")
        .expect("bundle has a Patient")
        .clone();
    assert!(validate_resource(&patient).is_ok());
    assert!(validate_resource(&bundle).is_ok());

    let mut group = c.benchmark_group("validate");
    group.throughput(Throughput::Elements(1));
    group.bench_function("synthea_patient", |b| {
        b.iter(|| validate_resource(black_box(&patient)))
    });
    group.throughput(Throughput::Elements(entries.len() as u64));
    group.bench_function(format!("synthea_bundle_{}_entries", entries.len()), |b| {
        b.iter(|| validate_resource(black_box(&bundle)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
