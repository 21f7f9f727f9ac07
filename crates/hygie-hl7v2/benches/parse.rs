//! Parse throughput on the sample files and on a large synthetic ORU (500 OBX).

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hygie_hl7v2::{Limits, encode, parse};

/// The allocator of the `hygie` binary, where the MLLP listener parses: a parse allocates
/// its tree, and glibc's malloc would measure something the hub does not run.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn samples() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("tests/data")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|f| std::fs::read(f).expect("sample"))
        .collect()
}

fn large_oru() -> Vec<u8> {
    let mut text = String::from(
        "MSH|^~\\&|LAB|HOSP^1.2.3^ISO|HUB|HOSP|20250101120000||ORU^R01^ORU_R01|BIG-1|P|2.5.1|||AL|NE|FRA||UNICODE UTF-8\r\
         PID|1||123456^^^HOSP^MR~987654^^^NIR^NH||Dupont^Jean^Marie^^M.||19700101|M|||1 rue de la Paix^^Paris^^75001^FRA\r\
         OBR|1|ORD-1|FIL-1|24331-1^Lipid panel^LN|||20250101110000\r",
    );
    for i in 1..=500 {
        text.push_str(&format!(
            "OBX|{i}|NM|2093-3^Cholesterol \\T\\ total^LN|{i}|{}.{}|mmol/L^mmol/L^UCUM|3.5-5.2|N|||F|||20250101113000|LAB^Biochimie&1.2.250&ISO\r",
            i % 9,
            i % 10
        ));
    }
    text.into_bytes()
}

fn bench_parse(c: &mut Criterion) {
    let limits = Limits::default();
    let mut group = c.benchmark_group("parse");

    let files = samples();
    group.throughput(Throughput::Bytes(
        files.iter().map(|f| f.len() as u64).sum(),
    ));
    group.bench_function("sample_files", |b| {
        b.iter(|| {
            for file in &files {
                black_box(parse(black_box(file), &limits).expect("parses"));
            }
        })
    });

    let oru = large_oru();
    group.throughput(Throughput::Bytes(oru.len() as u64));
    group.bench_function("oru_500_obx", |b| {
        b.iter(|| black_box(parse(black_box(&oru), &limits).expect("parses")))
    });

    let message = parse(&oru, &limits).expect("parses");
    group.bench_function("encode_oru_500_obx", |b| {
        b.iter(|| black_box(encode(black_box(&message))))
    });
    group.finish();
}

criterion_group!(benches, bench_parse);
criterion_main!(benches);
