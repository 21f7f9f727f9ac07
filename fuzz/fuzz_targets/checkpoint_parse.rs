//! Untrusted signed checkpoints (what a witness, an auditor or `hygie audit verify` reads)
//! through `hygie_audit::checkpoint`: `Note::parse`, `Note::verify`, `Checkpoint::parse_body`
//! and `open_checkpoint`, as a whole note and spliced in place of the body or of the
//! signature lines of a genuine one. They must never panic, must keep their bounds, must
//! print back exactly what they read, and must never accept what the log's and the witness's
//! keys did not sign: whatever verifies is the genuine text, with the genuine signatures.
#![no_main]

use std::sync::LazyLock;

use hygie_audit::checkpoint::{
    Checkpoint, Cosigner, MAX_EXTENSION_LINES, MAX_NOTE_BYTES, MAX_SIGNATURES, Note, NoteSigner,
    VerifierKey, open_checkpoint,
};
use hygie_audit::merkle::{MAX_TREE_SIZE, leaf_hash};
use libfuzzer_sys::fuzz_target;

const COSIGNED_AT_S: u64 = 1_700_000_000;

struct Fixture {
    keys: [VerifierKey; 2],
    genuine: Note,
    checkpoint: Checkpoint,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let log = NoteSigner::from_seed("audit.hygie.fuzz/log", &[1; 32]).expect("a key");
    let witness = Cosigner::from_seed("witness.fuzz/w1", &[2; 32]).expect("a key");
    let mut checkpoint = Checkpoint::new("audit.hygie.fuzz/log", 1234, leaf_hash(b"root"));
    checkpoint.extensions.push("ext".into());
    let mut genuine = checkpoint.sign(&log).expect("signs");
    genuine.cosign(&witness, COSIGNED_AT_S).expect("cosigns");
    Fixture {
        keys: [log.verifier_key(), witness.verifier_key()],
        genuine,
        checkpoint,
    }
});

fuzz_target!(|bytes: &[u8]| {
    check(bytes);
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let genuine = FIXTURE.genuine.to_string();
    let body_len = FIXTURE.genuine.text().len();
    // The genuine signatures under another body; another signature block under the
    // genuine body.
    check(format!("{text}\n{}", &genuine[body_len + 1..]).as_bytes());
    check(format!("{}\n{text}", FIXTURE.genuine.text()).as_bytes());
});

fn check(bytes: &[u8]) {
    let opened = open_checkpoint(bytes, &FIXTURE.keys);
    let Ok(note) = Note::parse(bytes) else {
        assert!(opened.is_err(), "opened what does not parse as a note");
        return;
    };
    assert!(
        bytes.len() <= MAX_NOTE_BYTES,
        "a note over the bound was read"
    );
    assert!(!note.signatures().is_empty() && note.signatures().len() <= MAX_SIGNATURES);
    assert_eq!(
        note.to_string().as_bytes(),
        bytes,
        "a note prints back as it was read"
    );
    if let Ok(checkpoint) = Checkpoint::parse_body(note.text()) {
        assert!(checkpoint.size <= MAX_TREE_SIZE);
        assert!(checkpoint.extensions.len() <= MAX_EXTENSION_LINES);
        assert_eq!(
            checkpoint.to_body().expect("what parses serializes"),
            note.text(),
            "a checkpoint prints back as it was read"
        );
    }
    let Ok(verified) = note.verify(&FIXTURE.keys) else {
        assert!(opened.is_err(), "opened a note that does not verify");
        return;
    };
    assert_eq!(
        note.text(),
        FIXTURE.genuine.text(),
        "a text the keys never signed verified"
    );
    for signature in &verified {
        let line = note
            .signatures()
            .iter()
            .find(|s| s.name == signature.name && s.key_id == signature.key_id)
            .expect("a verified signature is in the note");
        assert!(
            FIXTURE.genuine.signatures().contains(line),
            "a signature the keys never made verified: {line:?}"
        );
        assert!(signature.timestamp_s.is_none_or(|t| t == COSIGNED_AT_S));
    }
    let (checkpoint, opened_verified) = opened.expect("verified and genuine, so it opens");
    assert_eq!(checkpoint, FIXTURE.checkpoint);
    assert_eq!(opened_verified, verified);
}
