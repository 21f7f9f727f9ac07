//! Formatting ~1 KiB AuditEvents into octet-counted RFC 5424 frames: the CPU cost per leaf
//! of a syslog export (the network is not measured).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hygie_audit::{AuditOutcome, AuditRecord};
use hygie_siem::{ExportLeaf, SyslogFormat};

/// A search's AuditEvent with enough entities to weigh about 1 KiB, as the hub writes it.
fn leaf(index: u64) -> ExportLeaf {
    let mut record = AuditRecord::new(
        "search-type",
        "Practitioner/dr-house",
        1_700_000_000_123_456,
    )
    .entity("Patient/5b2f3c1e-8f0b-4c5e-9d1a-0e7c2b9f4a11/_history/3")
    .entity("Observation/0190f1c2-7a3b-7c4d-8e5f-6a7b8c9d0e1f/_history/1")
    .entity("Observation/0190f1c2-7a3b-7c4d-8e5f-6a7b8c9d0e20/_history/2");
    record.outcome = AuditOutcome::Success;
    record.query = Some("patient=Patient/5b2f3c1e-8f0b-4c5e-9d1a-0e7c2b9f4a11&code=http://loinc.org|8867-4&_count=50".to_owned());
    record.network_address = Some("10.20.30.40".to_owned());
    record.request_id = Some("0190f1c2-7a3b-7c4d-8e5f-6a7b8c9d0e99".to_owned());
    ExportLeaf {
        index,
        recorded_us: record.recorded_us,
        leaf: record.to_leaf(),
    }
}

fn format(c: &mut Criterion) {
    let format = SyslogFormat {
        hostname: "hygie-1.hospital.example".to_owned(),
        ..SyslogFormat::default()
    };
    let leaves: Vec<ExportLeaf> = (0..500).map(|i| leaf(1_000_000 + i)).collect();
    let leaf_bytes = leaves[0].leaf.len();
    eprintln!("AuditEvent: {leaf_bytes} bytes");
    let mut group = c.benchmark_group("syslog");
    group.throughput(Throughput::Elements(leaves.len() as u64));
    let mut frames = Vec::with_capacity(leaves.len() * (leaf_bytes + 256));
    group.bench_function("frame_batch_of_500", |b| {
        b.iter(|| {
            frames.clear();
            for leaf in &leaves {
                format.frame(leaf, &mut frames).expect("a hub leaf formats");
            }
            frames.len()
        })
    });
    group.finish();
}

criterion_group!(benches, format);
criterion_main!(benches);
