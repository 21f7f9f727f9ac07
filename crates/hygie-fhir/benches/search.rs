//! Cost of search on realistic input: index extraction of a Synthea Observation (a blood
//! pressure panel, with components) and Patient, and parsing a typical query.
//!
//! `cargo bench -p hygie-fhir --bench search`

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hygie_fhir::search::{index, params, query};
use serde_json::Value;

fn synthea_resources() -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/synthea/Malcolm_Dach_281f4a03-57e9-4b22-a322-68890ff22172.json");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let bundle: Value = serde_json::from_slice(&bytes).expect("Synthea bundle is JSON");
    bundle["entry"]
        .as_array()
        .expect("bundle has entries")
        .iter()
        .map(|e| e["resource"].clone())
        .collect()
}

fn bench(c: &mut Criterion) {
    params::preload();
    let resources = synthea_resources();
    let patient = resources
        .iter()
        .find(|r| r["resourceType"] == "Patient")
        .expect("a Patient");
    let observation = resources
        .iter()
        .find(|r| r["resourceType"] == "Observation" && r.get("component").is_some())
        .expect("an Observation with components");
    assert!(!index::extract(patient).is_empty());
    assert!(!index::extract(observation).is_empty());

    let mut group = c.benchmark_group("search");
    group.throughput(Throughput::Elements(1));
    group.bench_function("extract_synthea_patient", |b| {
        b.iter(|| index::extract(black_box(patient)))
    });
    group.bench_function("extract_synthea_observation", |b| {
        b.iter(|| index::extract(black_box(observation)))
    });
    let q = "subject=Patient/e2d08f86-4813-4f3a-971f-87c09e0ec0c7&code=http://loinc.org|55284-4,http://loinc.org|8480-6\
             &date=ge2012-01-01&date=lt2013-01-01T00:00:00Z&status=final&_sort=-date&_count=50\
             &_include=Observation:subject:Patient";
    let options = query::QueryOptions::default();
    assert!(
        query::parse(
            "Observation",
            &query::parse_query_string(q).unwrap(),
            &options
        )
        .is_ok()
    );
    group.bench_function("parse_observation_query", |b| {
        b.iter(|| {
            let pairs = query::parse_query_string(black_box(q)).unwrap();
            query::parse("Observation", &pairs, &options)
        })
    });
    group.throughput(Throughput::Elements(resources.len() as u64));
    group.bench_function(
        format!("extract_bundle_{}_resources", resources.len()),
        |b| {
            b.iter(|| {
                resources
                    .iter()
                    .map(|r| index::extract(black_box(r)).len())
                    .sum::<usize>()
            })
        },
    );
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
