//! The fixture the independent Python verifier checks (tests/e2e/rfc9162.py, through
//! tests/e2e/test_witness_cosignature.py): a checkpoint cosigned by the witness's own code
//! path (`decide::open`, `judge`, `cosign`), deterministic (fixed seeds and timestamp;
//! Ed25519 signatures are deterministic). Regenerate with
//! `HYGIE_WITNESS_WRITE_FIXTURE=1 cargo test -p hygie-witness --test cosignature_fixture`.

use hygie_audit::checkpoint::{Checkpoint, Cosigner, NoteSigner};
use hygie_audit::merkle::{self, Frontier};
use hygie_witness::decide::{self, Judgement, LogTrust};

const ORIGIN: &str = "hub.example/audit";
const WITNESS: &str = "witness.example";
const LEAVES: u64 = 11;
const FIRST_SIZE: u64 = 6;
const COSIGNED_AT_S: u64 = 1_750_000_000;

#[test]
fn cosignature_fixture_is_current() {
    let log = NoteSigner::from_seed(ORIGIN, &[0x11; 32]).unwrap();
    let witness = Cosigner::from_seed(WITNESS, &[0x22; 32]).unwrap();
    let hashes: Vec<_> = (0..LEAVES)
        .map(|i| merkle::leaf_hash(format!("hygie witness leaf {i}").as_bytes()))
        .collect();
    let mut first = Frontier::new();
    first.extend(&hashes[..FIRST_SIZE as usize]).unwrap();
    let mut second = first.clone();
    second.extend(&hashes[FIRST_SIZE as usize..]).unwrap();
    let mut nodes = merkle::MemoryNodes::default();
    nodes
        .insert(&Frontier::new().extend(&hashes).unwrap())
        .unwrap();

    // The witness's round: first contact at 6 leaves, then growth to 11 with a proof.
    let trust = LogTrust::new(log.verifier_key(), None).unwrap();
    let note = |frontier: &Frontier| {
        Checkpoint::new(ORIGIN, frontier.size(), frontier.root())
            .sign(&log)
            .unwrap()
            .to_string()
    };
    let opened = decide::open(&trust, note(&first).as_bytes()).unwrap();
    assert_eq!(decide::judge(None, &opened), Judgement::FirstContact);
    let accepted = decide::accepted(&opened, COSIGNED_AT_S - 600);
    let opened = decide::open(&trust, note(&second).as_bytes()).unwrap();
    assert_eq!(
        decide::judge(Some(&accepted), &opened),
        Judgement::Grew {
            from_size: FIRST_SIZE
        }
    );
    let proof = merkle::consistency_proof(&mut nodes, FIRST_SIZE, LEAVES).unwrap();
    decide::check_growth(&accepted, &opened, &proof).unwrap();
    let cosigned = decide::cosign(&opened, &witness, COSIGNED_AT_S).unwrap();

    let fixture = serde_json::json!({
        "about": "Written by crates/hygie-witness/tests/cosignature_fixture.rs; read by tests/e2e/test_witness_cosignature.py.",
        "log_vkey": log.verifier_key().to_string(),
        "witness_vkey": witness.verifier_key().to_string(),
        "cosigned_at_s": COSIGNED_AT_S,
        "size": LEAVES,
        "root_hex": second.root().iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "cosigned_note": cosigned.to_string(),
    });
    let text = serde_json::to_string_pretty(&fixture).unwrap() + "\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cosigned.json");
    if std::env::var_os("HYGIE_WITNESS_WRITE_FIXTURE").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "{} is stale: regenerate it with HYGIE_WITNESS_WRITE_FIXTURE=1",
        path.display()
    );
}
