//! What encryption at rest costs per operation (criterion):
//!
//! ```sh
//! cargo bench -p hygie-vault --bench vault
//! ```
//!
//! - `seal`/`open`: a 2 KiB resource body (a Synthea Observation is 1–3 KiB), per version
//!   written or read;
//! - `unwrap`: a data key from its stored form (a cache miss: the first read of a patient
//!   in `vault.recheck_seconds`), fresh key file and one with 1,000 erasures;
//! - `term`: one blind-index hash (a Patient write makes a few hundred).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hygie_vault::{DataKey, Keyring, Secret, aead, blind};

fn body(bytes: usize) -> Vec<u8> {
    let unit = br#"{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"2339-0"}]},"#;
    unit.iter().copied().cycle().take(bytes).collect()
}

fn aead_benches(c: &mut Criterion) {
    let key = DataKey::generate();
    let plain = body(2048);
    let aad = b"Observation/0193f2a4-7c1e-7a4b-9f3e-2b8d5c6e7f80/_history/1";
    let sealed = aead::seal(&key, 42, aad, &plain);
    let mut group = c.benchmark_group("aead");
    group.throughput(Throughput::Bytes(plain.len() as u64));
    group.bench_function("seal_2KiB", |b| {
        b.iter(|| aead::seal(&key, 42, aad, &plain))
    });
    group.bench_function("open_2KiB", |b| {
        b.iter(|| aead::open(&key, aad, &sealed).expect("opens"))
    });
    group.finish();
}

fn unwrap_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("unwrap");
    for erasures in [0u64, 1_000] {
        let mut keyring = Keyring::generate("bench", 1);
        // Erasures spread over the slots: the cover set grows by ~31 nodes each.
        for n in 0..erasures {
            keyring
                .puncture(1_000_000 + n * 4_001)
                .expect("a slot in range");
        }
        let key = DataKey::generate();
        let slot = 77;
        let wrapped = keyring
            .wrap(1, slot, &key, b"patient/0193f2a4")
            .expect("wraps");
        group.bench_with_input(BenchmarkId::new("data_key", erasures), &wrapped, |b, w| {
            b.iter(|| {
                keyring
                    .unwrap(1, slot, w, b"patient/0193f2a4")
                    .expect("unwraps")
            })
        });
    }
    group.finish();
}

/// A new patient's key is wrapped under the next slot: the kept path of the slot before
/// makes it one or two HMACs of the GGM tree instead of 32. Scattered slots show the cost
/// without it.
fn wrap_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("wrap");
    let keyring = Keyring::generate("bench", 1);
    let key = DataKey::generate();
    let mut next = 1_000u64;
    group.bench_function("data_key_next_slot", |b| {
        b.iter(|| {
            next += 1;
            keyring
                .wrap(1, next, &key, b"patient/0193f2a4")
                .expect("wraps")
        })
    });
    let mut scattered = 1u64;
    group.bench_function("data_key_scattered_slot", |b| {
        b.iter(|| {
            // A multiplicative walk over the slots: consecutive calls share no path.
            scattered = scattered.wrapping_mul(0x9E37_79B9) % (1 << 31) + 1;
            keyring
                .wrap(1, scattered, &key, b"patient/0193f2a4")
                .expect("wraps")
        })
    });
    group.finish();
}

fn term_benches(c: &mut Criterion) {
    let key = Secret::from_bytes([7; 32]);
    c.bench_function("blind/term", |b| {
        b.iter(|| blind::term(&key, "Patient.family/p", "lefevre-dupont"))
    });
    let family = blind::NamespaceMac::new(&key, "Patient.family/p");
    c.bench_function("blind/term_mac_in_a_keyed_namespace", |b| {
        b.iter(|| family.term_mac("lefevre-dupont"))
    });
    c.bench_function("blind/substrings_32_chars", |b| {
        b.iter(|| blind::substrings("christophersen-de-la-fontaine-x", 3).len())
    });
}

criterion_group!(
    benches,
    aead_benches,
    unwrap_benches,
    wrap_benches,
    term_benches
);
criterion_main!(benches);
