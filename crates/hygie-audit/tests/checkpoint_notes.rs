//! Signed notes, checkpoints and cosignatures: the published examples and keys of Go's
//! sumdb/note, the C2SP specifications and transparency-dev/formats (interoperability),
//! round trips, tampering, wrong keys, and the limits on untrusted input.

mod reference;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hygie_audit::checkpoint::{
    Checkpoint, CheckpointError, Cosigner, KeyError, MAX_COSIGNATURE_TIMESTAMP_S,
    MAX_EXTENSION_LINES, MAX_LINE_BYTES, MAX_NOTE_BYTES, MAX_SIGNATURES, Note, NoteError,
    NoteSignature, NoteSigner, SignatureType, VerifierKey, key_id, open_checkpoint,
};
use hygie_audit::merkle::{self, Frontier, MemoryNodes, leaf_hash};
use serde_json::json;
use sha2::{Digest, Sha256};

// golang.org/x/mod/sumdb/note: the package documentation's example and note_test.go.
const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
const PETER_SKEY: &str =
    "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
const ENOCH_VKEY: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
const TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n";
const PETER_SIG: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
const ENOCH_SIG: &str = "\u{2014} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

/// The Ed25519 seed of a Go `PRIVATE+KEY+<name>+<id>+base64(0x01 ‖ seed)` signer key.
fn go_signer_seed(skey: &str) -> (String, [u8; 32]) {
    let parts: Vec<&str> = skey.splitn(5, '+').collect();
    assert_eq!(&parts[..2], ["PRIVATE", "KEY"]);
    let key = STANDARD.decode(parts[4]).unwrap();
    assert_eq!(key[0], 0x01, "Ed25519");
    (parts[2].to_owned(), key[1..].try_into().unwrap())
}

fn seed(label: &str) -> [u8; 32] {
    Sha256::digest(label.as_bytes()).into()
}

#[test]
fn sumdb_verifier_keys_parse_and_print_back() {
    let peter = VerifierKey::parse(PETER_VKEY).unwrap();
    assert_eq!(peter.name(), "PeterNeumann");
    assert_eq!(peter.key_id(), 0xc74f20a3);
    assert_eq!(peter.signature_type(), SignatureType::Ed25519);
    assert_eq!(peter.to_string(), PETER_VKEY);
    let enoch: VerifierKey = ENOCH_VKEY.parse().unwrap();
    assert_eq!(enoch.key_id(), 0xaf0cfe78);
    assert_eq!(enoch.to_string(), ENOCH_VKEY);
    // Go reads the key ID with strconv.ParseUint(…, 16, 32): either case.
    assert_eq!(
        VerifierKey::parse(&PETER_VKEY.replace("c74f20a3", "C74F20A3")).unwrap(),
        peter
    );
}

/// note_test.go's TestNewVerifier: every substring and every byte bumped is refused.
#[test]
fn sumdb_verifier_key_manglings_are_refused() {
    let bytes = PETER_VKEY.as_bytes();
    for i in 0..=bytes.len() {
        for j in i + 1..=bytes.len() {
            if (i, j) != (0, bytes.len()) {
                let part = std::str::from_utf8(&bytes[i..j]).unwrap();
                assert!(VerifierKey::parse(part).is_err(), "{part:?}");
            }
        }
    }
    for i in 0..bytes.len() {
        let mut mangled = bytes.to_vec();
        mangled[i] += 1;
        let mangled = String::from_utf8(mangled).unwrap();
        assert!(VerifierKey::parse(&mangled).is_err(), "{mangled:?}");
    }
    // Go's "wrong length key": its base64 has non-zero trailing bits, which Go's decoder
    // ignores and ours (canonical encodings only) refuses first.
    assert_eq!(
        VerifierKey::parse(
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
        ),
        Err(KeyError::Malformed("the key is not standard base64"))
    );
    let long_key = VerifierKey::parse(&format!(
        "PeterNeumann+00000000+{}",
        STANDARD.encode([&[1u8][..], &[7; 33]].concat())
    ));
    assert_eq!(long_key, Err(KeyError::WrongKeyLength(33)));
    assert_eq!(
        VerifierKey::parse("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"),
        Err(KeyError::UnsupportedType(0x65))
    );
}

/// The interoperability vector: Go's example key signs Go's example text into exactly the
/// note Go's documentation shows (Ed25519 is deterministic).
#[test]
fn sumdb_signature_is_reproduced_from_its_private_key() {
    let (name, seed) = go_signer_seed(PETER_SKEY);
    let signer = NoteSigner::from_seed(&name, &seed).unwrap();
    assert_eq!(signer.key_id(), 0xc74f20a3);
    assert_eq!(signer.verifier_key().to_string(), PETER_VKEY);
    let mut note = Note::new(TEXT).unwrap();
    note.sign(&signer).unwrap();
    assert_eq!(note.to_string(), format!("{TEXT}\n{PETER_SIG}"));
    // Re-signing replaces the signature of the same key (Go's "BADSIGN=" case).
    note.sign(&signer).unwrap();
    assert_eq!(note.signatures().len(), 1);
}

/// note_test.go's TestOpen.
#[test]
fn sumdb_notes_open_with_the_known_keys_only() {
    let peter = VerifierKey::parse(PETER_VKEY).unwrap();
    let enoch = VerifierKey::parse(ENOCH_VKEY).unwrap();
    let both = format!("{TEXT}\n{PETER_SIG}{ENOCH_SIG}");
    let note = Note::parse(both.as_bytes()).unwrap();
    assert_eq!(note.text(), TEXT);
    assert_eq!(
        note.to_string(),
        both,
        "a parsed note prints back as it was"
    );

    let verified = note.verify(std::slice::from_ref(&peter)).unwrap();
    assert_eq!(verified.len(), 1);
    assert_eq!(
        (verified[0].name.as_str(), verified[0].key_id),
        ("PeterNeumann", 0xc74f20a3)
    );
    assert_eq!(verified[0].timestamp_s, None);
    assert_eq!(
        note.verify(&[peter.clone(), enoch.clone()]).unwrap().len(),
        2
    );
    assert_eq!(note.verify(&[]), Err(NoteError::NoVerifiedSignature));
    // The same key given twice is not ambiguous (Go's list refuses it; nothing is gained).
    assert_eq!(
        note.verify(&[enoch.clone(), enoch.clone()]).unwrap().len(),
        1
    );

    let too_many = format!("{TEXT}\n{}", PETER_SIG.repeat(MAX_SIGNATURES + 1));
    assert_eq!(
        Note::parse(too_many.as_bytes()),
        Err(NoteError::TooManySignatures)
    );
    let as_many = format!("{TEXT}\n{}", PETER_SIG.repeat(MAX_SIGNATURES));
    assert_eq!(
        Note::parse(as_many.as_bytes())
            .unwrap()
            .verify(std::slice::from_ref(&peter))
            .unwrap()
            .len(),
        1
    );

    let invalid = format!("{TEXT}\n{}ABCD{}", &PETER_SIG[..60], &PETER_SIG[60..]);
    assert_eq!(
        Note::parse(invalid.as_bytes())
            .unwrap()
            .verify(std::slice::from_ref(&peter)),
        Err(NoteError::InvalidSignature {
            name: "PeterNeumann".into(),
            key_id: 0xc74f20a3
        })
    );
    // A known key's bad signature refuses the whole note, even beside a good one.
    let mixed = format!(
        "{TEXT}\n{PETER_SIG}{}ABCD{}",
        &ENOCH_SIG[..60],
        &ENOCH_SIG[60..]
    );
    assert!(matches!(
        Note::parse(mixed.as_bytes())
            .unwrap()
            .verify(&[peter.clone(), enoch]),
        Err(NoteError::InvalidSignature { .. })
    ));

    let malformed: [(&str, String, NoteError); 7] = [
        ("no blank line", TEXT.to_owned(), NoteError::NoSignatures),
        ("no signature", format!("{TEXT}\n"), NoteError::NoSignatures),
        (
            "unterminated",
            format!("{TEXT}\n{}", &PETER_SIG[..PETER_SIG.len() - 1]),
            NoteError::Unterminated,
        ),
        (
            "control character",
            format!("\x01{TEXT}\n{PETER_SIG}"),
            NoteError::ControlCharacter { offset: 0 },
        ),
        (
            "not UTF-8",
            format!("\u{ff}{TEXT}\n{PETER_SIG}"),
            NoteError::NotUtf8,
        ),
        (
            "space in name",
            format!(
                "{TEXT}\n\u{2014} Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
            ),
            NoteError::MalformedSignature {
                line: 4,
                reason: "the signature is not standard base64",
            },
        ),
        (
            "unexpected line",
            format!("{TEXT}\n{PETER_SIG}Unexpected line.\n"),
            NoteError::MalformedSignature {
                line: 5,
                reason: "it does not start with an em dash and a space",
            },
        ),
    ];
    for (what, message, error) in malformed {
        // Go's "\xff" is not UTF-8; "\u{ff}" is, so make the byte itself.
        let bytes = if what == "not UTF-8" {
            [&[0xff], message.as_bytes()[2..].as_ref()].concat()
        } else {
            message.into_bytes()
        };
        assert_eq!(Note::parse(&bytes), Err(error), "{what}");
    }
}

/// The examples of c2sp.org/signed-note, tlog-checkpoint and tlog-cosignature (no keys are
/// published for them, so they are read, not verified).
#[test]
fn c2sp_examples_parse() {
    let poem = "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned \u{e8} subito sera.\n\n\u{2014} quasimodo.example/salvatore NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKONrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n";
    let note = Note::parse(poem.as_bytes()).unwrap();
    assert!(
        note.text().ends_with("\n\ned \u{e8} subito sera.\n"),
        "a text may hold blank lines"
    );
    assert_eq!(note.signatures()[0].name, "quasimodo.example/salvatore");
    assert_eq!(note.signatures()[0].key_id, 0x367ba04b);
    assert_eq!(note.signatures()[0].signature.len(), 64);

    let cosigned = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n\u{2014} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n\u{2014} witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n";
    let note = Note::parse(cosigned.as_bytes()).unwrap();
    assert_eq!(note.to_string(), cosigned);
    let checkpoint = Checkpoint::parse_body(note.text()).unwrap();
    assert_eq!(checkpoint.origin, "example.com/behind-the-sofa");
    assert_eq!(checkpoint.size, 20_852_163);
    assert_eq!(
        STANDARD.encode(checkpoint.root),
        "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="
    );
    assert_eq!(checkpoint.to_body().unwrap(), note.text());
    let log = &note.signatures()[0];
    assert_eq!((log.key_id, log.signature.len()), (0x033de0ae, 64));
    // key ID ‖ 8-byte timestamp ‖ 64-byte signature; the spec's message example shows
    // `time 1679315147`.
    let witness = &note.signatures()[1];
    assert_eq!(witness.key_id, 0x8d66cf3f);
    assert_eq!(witness.signature.len(), 72);
    assert_eq!(
        u64::from_be_bytes(witness.signature[..8].try_into().unwrap()),
        1_679_315_147
    );
}

/// Keys and a cosignature published by transparency-dev/formats (note_cosigv1_test.go,
/// witness_test.go): type 0x04 key IDs, and the timestamp layout.
#[test]
fn transparency_dev_keys_and_cosignature() {
    let remora =
        VerifierKey::parse("remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2")
            .unwrap();
    assert_eq!(remora.signature_type(), SignatureType::CosignatureV1);
    assert_eq!(remora.key_id(), 0xda77ade7);
    let test =
        VerifierKey::parse("TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6").unwrap();
    assert_eq!(test.signature_type(), SignatureType::Ed25519);
    for (bad, error) in [
        (
            "bananas.sigstore.dev+12344556",
            KeyError::Malformed("no `+` after the key ID"),
        ),
        (
            "rekor.sigstore.dev+12345678+THIS_IS_NOT_BASE64!",
            KeyError::Malformed("the key is not standard base64"),
        ),
        (
            "rekor.sigstore.dev+12345678+AwEB",
            KeyError::UnsupportedType(3),
        ),
        (
            "rekor.sigstore.dev+NOT_A_NU+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6",
            KeyError::Malformed("the key ID is not 8 hex digits"),
        ),
    ] {
        assert_eq!(VerifierKey::parse(bad), Err(error), "{bad}");
    }
    assert!(matches!(
        VerifierKey::parse("TEST+00000000+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6"),
        Err(KeyError::KeyIdMismatch {
            stated: 0,
            computed: 0x7997405c
        })
    ));

    // witness_test.go: a signer key and its verifier key.
    let (name, wit1_seed) =
        go_signer_seed("PRIVATE+KEY+Wit1+55ee4561+AeadRiG7XM4XiieCHzD8lxysXMwcViy5nYsoXURWGrlE");
    assert_eq!(
        NoteSigner::from_seed(&name, &wit1_seed)
            .unwrap()
            .verifier_key()
            .to_string(),
        "Wit1+55ee4561+AVhZSmQj9+SoL+p/nN0Hh76xXmF7QcHfytUrI1XfSClk"
    );
    // The same key as a cosigner: same public key, type 0x04, another key ID.
    let cosigner = Cosigner::from_seed(&name, &wit1_seed).unwrap();
    let vkey = cosigner.verifier_key();
    assert_eq!(vkey.signature_type(), SignatureType::CosignatureV1);
    assert_eq!(
        vkey.key_id(),
        key_id("Wit1", SignatureType::CosignatureV1, vkey.public_key())
    );
    assert_ne!(vkey.key_id(), 0x55ee4561);

    // CoSigV1Timestamp's "works" case: key ID ‖ timestamp ‖ signature.
    let line = "\u{2014} w ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWWOworDcFiEBYJXORmnFBOBA==\n";
    let note = Note::parse(format!("a\nb\nc\n\n{line}").as_bytes()).unwrap();
    let signature = &note.signatures()[0].signature;
    assert_eq!(
        u64::from_be_bytes(signature[..8].try_into().unwrap()),
        1_727_964_367
    );
}

struct Keys {
    log: NoteSigner,
    witness: Cosigner,
}

fn keys() -> Keys {
    Keys {
        log: NoteSigner::from_seed("audit.hygie.example/log", &seed("hygie-audit test log key"))
            .unwrap(),
        witness: Cosigner::from_seed("witness.example/w1", &seed("hygie-audit test witness key"))
            .unwrap(),
    }
}

fn sample_checkpoint() -> Checkpoint {
    let mut checkpoint = Checkpoint::new("audit.hygie.example/log", 13, leaf_hash(b"root"));
    checkpoint.extensions.push("hygie ext/1".into());
    checkpoint
}

#[test]
fn checkpoints_sign_cosign_and_open() {
    let keys = keys();
    let checkpoint = sample_checkpoint();
    let mut note = checkpoint.sign(&keys.log).unwrap();
    note.cosign(&keys.witness, 1_700_000_000).unwrap();
    let text = note.to_string();
    assert_eq!(Note::parse(text.as_bytes()).unwrap(), note);

    let vkeys = [keys.log.verifier_key(), keys.witness.verifier_key()];
    let (opened, verified) = open_checkpoint(text.as_bytes(), &vkeys).unwrap();
    assert_eq!(opened, checkpoint);
    assert_eq!(verified.len(), 2);
    assert_eq!(verified[0].signature_type, SignatureType::Ed25519);
    assert_eq!(verified[0].timestamp_s, None);
    assert_eq!(verified[1].name, "witness.example/w1");
    assert_eq!(verified[1].signature_type, SignatureType::CosignatureV1);
    assert_eq!(verified[1].timestamp_s, Some(1_700_000_000));

    // Verifier keys travel as one line.
    for vkey in &vkeys {
        assert_eq!(&VerifierKey::parse(&vkey.to_string()).unwrap(), vkey);
    }
    // Each key alone opens it; the log's signature is no cosignature and the reverse.
    assert_eq!(
        open_checkpoint(text.as_bytes(), &vkeys[..1])
            .unwrap()
            .1
            .len(),
        1
    );
    assert_eq!(
        open_checkpoint(text.as_bytes(), &vkeys[1..])
            .unwrap()
            .1
            .len(),
        1
    );
    let log_as_cosigner = VerifierKey::new(
        keys.log.name(),
        SignatureType::CosignatureV1,
        *keys.log.verifier_key().public_key(),
    )
    .unwrap();
    let log_only = checkpoint.sign(&keys.log).unwrap().to_string();
    assert_eq!(
        open_checkpoint(log_only.as_bytes(), &[log_as_cosigner]),
        Err(CheckpointError::Note(NoteError::NoVerifiedSignature))
    );
    // PKCS#8 round trip.
    let (generated, pkcs8) = NoteSigner::generate("audit.hygie.example/log").unwrap();
    let reloaded = NoteSigner::from_pkcs8("audit.hygie.example/log", &pkcs8).unwrap();
    assert_eq!(generated.verifier_key(), reloaded.verifier_key());
    let (witness, pkcs8) = Cosigner::generate("witness.example/w2").unwrap();
    assert_eq!(
        Cosigner::from_pkcs8("witness.example/w2", &pkcs8)
            .unwrap()
            .verifier_key(),
        witness.verifier_key()
    );
}

#[test]
fn a_wrong_key_does_not_open_a_checkpoint() {
    let keys = keys();
    let note = sample_checkpoint().sign(&keys.log).unwrap().to_string();
    // Another key under the same name: another key ID, an unknown signature.
    let other = NoteSigner::from_seed(keys.log.name(), &seed("another key")).unwrap();
    assert_eq!(
        open_checkpoint(note.as_bytes(), &[other.verifier_key()]),
        Err(CheckpointError::Note(NoteError::NoVerifiedSignature))
    );
    // The right key under another name.
    let renamed = VerifierKey::new(
        "audit.hygie.example/other",
        SignatureType::Ed25519,
        *keys.log.verifier_key().public_key(),
    )
    .unwrap();
    assert_eq!(
        open_checkpoint(note.as_bytes(), &[renamed]),
        Err(CheckpointError::Note(NoteError::NoVerifiedSignature))
    );
}

/// Every bit of a signed checkpoint matters: flipping any one of them (body, blank line,
/// signature line) makes it refused.
#[test]
fn tampering_any_bit_of_a_signed_checkpoint_fails() {
    let keys = keys();
    let vkeys = [keys.log.verifier_key()];
    let note = sample_checkpoint().sign(&keys.log).unwrap().to_string();
    assert!(open_checkpoint(note.as_bytes(), &vkeys).is_ok());
    for i in 0..note.len() {
        for bit in 0..8 {
            let mut tampered = note.clone().into_bytes();
            tampered[i] ^= 1 << bit;
            assert!(
                open_checkpoint(&tampered, &vkeys).is_err(),
                "byte {i} bit {bit} flipped: {:?}",
                String::from_utf8_lossy(&tampered)
            );
        }
    }
}

/// With a log signature and a cosignature, a flipped bit in the body is always refused; in
/// a signature line it may only make that signature unknown (then ignored, as the spec
/// says), never yield another checkpoint or a signature that was not there.
#[test]
fn tampering_a_cosigned_checkpoint_never_yields_anything_new() {
    let keys = keys();
    let vkeys = [keys.log.verifier_key(), keys.witness.verifier_key()];
    let checkpoint = sample_checkpoint();
    let mut note = checkpoint.sign(&keys.log).unwrap();
    note.cosign(&keys.witness, 1_700_000_000).unwrap();
    let text = note.to_string();
    let (_, genuine) = open_checkpoint(text.as_bytes(), &vkeys).unwrap();
    let body_len = note.text().len();
    for i in 0..text.len() {
        for bit in 0..8 {
            let mut tampered = text.clone().into_bytes();
            tampered[i] ^= 1 << bit;
            match open_checkpoint(&tampered, &vkeys) {
                Err(_) => {}
                Ok((opened, verified)) => {
                    assert!(
                        i >= body_len,
                        "body byte {i} bit {bit} flipped and accepted"
                    );
                    assert_eq!(opened, checkpoint);
                    assert!(verified.len() < genuine.len());
                    assert!(verified.iter().all(|v| genuine.contains(v)));
                }
            }
        }
    }
}

#[test]
fn cosignature_timestamps_are_bounded() {
    let keys = keys();
    let body = sample_checkpoint().to_body().unwrap();
    assert_eq!(
        keys.witness.cosign(&body, MAX_COSIGNATURE_TIMESTAMP_S + 1),
        Err(NoteError::InvalidText(
            "a cosignature timestamp is at most 2^63 - 1"
        ))
    );
    keys.witness
        .cosign(&body, MAX_COSIGNATURE_TIMESTAMP_S)
        .unwrap();
    // A signature line claiming a timestamp past 2^63 − 1, or of the wrong length.
    let vkey = keys.witness.verifier_key();
    for (value, reason) in [
        (
            [&u64::MAX.to_be_bytes()[..], &[0; 64]].concat(),
            "the timestamp is past 2^63 - 1",
        ),
        (
            vec![0; 71],
            "not an 8-byte timestamp and a 64-byte Ed25519 signature",
        ),
    ] {
        let mut note = Note::new(&body).unwrap();
        note.add_signature(NoteSignature {
            name: vkey.name().into(),
            key_id: vkey.key_id(),
            signature: value,
        })
        .unwrap();
        assert_eq!(
            note.verify(std::slice::from_ref(&vkey)),
            Err(NoteError::MalformedCosignature {
                name: vkey.name().into(),
                key_id: vkey.key_id(),
                reason
            })
        );
    }
}

#[test]
fn checkpoint_bodies_are_checked_line_by_line() {
    let root = STANDARD.encode([9; 32]);
    let cases: Vec<(String, CheckpointError)> = vec![
        ("o\n1\n".into(), CheckpointError::TooFewLines),
        (format!("o\n1\n{root}"), CheckpointError::Unterminated),
        (format!("\n1\n{root}\n"), CheckpointError::EmptyOrigin),
        (format!("o\n01\n{root}\n"), CheckpointError::BadSize),
        (format!("o\n-1\n{root}\n"), CheckpointError::BadSize),
        (format!("o\n\n{root}\n"), CheckpointError::BadSize),
        (
            format!("o\n9223372036854775808\n{root}\n"),
            CheckpointError::SizeTooLarge { size: 1 << 63 },
        ),
        ("o\n1\nAAAA\n".into(), CheckpointError::BadRootHash),
        ("o\n1\nnot base64\n".into(), CheckpointError::BadRootHash),
        (
            format!("o\n1\n{}\n", &root[..root.len() - 1]),
            CheckpointError::BadRootHash,
        ),
        (
            format!("o\n1\n{root}\nx\n\n"),
            CheckpointError::EmptyExtension { line: 5 },
        ),
        (
            format!("o\t\n1\n{root}\n"),
            CheckpointError::ControlCharacter { line: 1 },
        ),
        (
            format!("{}\n1\n{root}\n", "o".repeat(MAX_LINE_BYTES + 1)),
            CheckpointError::LineTooLong { line: 1 },
        ),
        (
            format!("o\n1\n{root}\n{}", "x\n".repeat(MAX_EXTENSION_LINES + 1)),
            CheckpointError::TooManyExtensions,
        ),
    ];
    for (body, error) in cases {
        assert_eq!(Checkpoint::parse_body(&body), Err(error), "{body:?}");
    }
    let fine = format!("o\n0\n{root}\n{}", "x\n".repeat(MAX_EXTENSION_LINES));
    let checkpoint = Checkpoint::parse_body(&fine).unwrap();
    assert_eq!(checkpoint.size, 0);
    assert_eq!(checkpoint.to_body().unwrap(), fine);

    // Serializing refuses what parsing would.
    let mut bad = Checkpoint::new("o\nx", 1, [0; 32]);
    assert_eq!(
        bad.to_body(),
        Err(CheckpointError::ControlCharacter { line: 1 })
    );
    bad.origin = String::new();
    assert_eq!(bad.to_body(), Err(CheckpointError::EmptyOrigin));
    bad.origin = "o".into();
    bad.extensions.push(String::new());
    assert_eq!(
        bad.to_body(),
        Err(CheckpointError::EmptyExtension { line: 4 })
    );
    bad.extensions.clear();
    bad.size = 1 << 63;
    assert_eq!(
        bad.to_body(),
        Err(CheckpointError::SizeTooLarge { size: 1 << 63 })
    );
}

#[test]
fn notes_are_bounded() {
    let sig = PETER_SIG;
    let huge = format!("{}\n\n{sig}", "a\n".repeat(MAX_NOTE_BYTES / 2));
    assert_eq!(
        Note::parse(huge.as_bytes()),
        Err(NoteError::TooLarge { len: huge.len() })
    );
    let long_line = format!("{}\n\n{sig}", "a".repeat(MAX_LINE_BYTES + 1));
    assert_eq!(
        Note::parse(long_line.as_bytes()),
        Err(NoteError::LineTooLong { line: 1 })
    );
    for (line, reason) in [
        (
            "- PeterNeumann AAAAAAA=",
            "it does not start with an em dash and a space",
        ),
        (
            "\u{2014} PeterNeumann",
            "no space between the key name and the signature",
        ),
        (
            "\u{2014} Peter+Neumann AAAAAAA=",
            "a key name has no space, plus sign or control character",
        ),
        ("\u{2014}  AAAAAAA=", "a key name is not empty"),
        (
            "\u{2014} PeterNeumann AAAA",
            "the signature is shorter than a key ID and one byte",
        ),
        (
            "\u{2014} PeterNeumann AAAAAAB=",
            "the signature is not standard base64",
        ),
    ] {
        assert_eq!(
            Note::parse(format!("{TEXT}\n{line}\n").as_bytes()),
            Err(NoteError::MalformedSignature { line: 4, reason }),
            "{line}"
        );
    }
    // Signing refuses a text that would not parse back.
    let keys = keys();
    assert_eq!(
        keys.log.sign("no final newline"),
        Err(NoteError::InvalidText("it ends with a newline"))
    );
    assert_eq!(
        keys.log.sign("a\rb\n"),
        Err(NoteError::ControlCharacter { offset: 1 })
    );
    assert!(matches!(
        NoteSigner::from_seed("a name", &[1; 32]),
        Err(KeyError::InvalidName(_))
    ));
    let mut note = Note::new("a\n").unwrap();
    assert_eq!(
        note.add_signature(NoteSignature {
            name: "bad+name".into(),
            key_id: 1,
            signature: vec![1],
        }),
        Err(NoteError::InvalidName(
            "a key name has no space, plus sign or control character"
        ))
    );
    for i in 0..MAX_SIGNATURES {
        note.add_signature(NoteSignature {
            name: format!("k{i}"),
            key_id: 1,
            signature: vec![1],
        })
        .unwrap();
    }
    assert_eq!(
        note.add_signature(NoteSignature {
            name: "one-more".into(),
            key_id: 1,
            signature: vec![1],
        }),
        Err(NoteError::TooManySignatures)
    );
}

/// Two different keys with one name and one key ID (a 32-bit collision, found by birthday
/// search over made-up public keys) make a note that either signs ambiguous.
#[test]
fn colliding_known_keys_are_refused_as_ambiguous() {
    let name = "collide.example";
    let mut seen = std::collections::HashMap::new();
    let (first, second) = (0u64..)
        .find_map(|i| {
            let public_key: [u8; 32] = Sha256::digest(i.to_be_bytes()).into();
            let id = key_id(name, SignatureType::Ed25519, &public_key);
            seen.insert(id, public_key)
                .filter(|other| *other != public_key)
                .map(|other| (other, public_key))
        })
        .expect("a collision within 2^20 or so keys");
    let first = VerifierKey::new(name, SignatureType::Ed25519, first).unwrap();
    let second = VerifierKey::new(name, SignatureType::Ed25519, second).unwrap();
    assert_eq!(first.key_id(), second.key_id());
    let mut note = Note::new("a\n").unwrap();
    note.add_signature(NoteSignature {
        name: name.into(),
        key_id: first.key_id(),
        signature: vec![0; 64],
    })
    .unwrap();
    assert_eq!(
        note.verify(&[first.clone(), second]),
        Err(NoteError::AmbiguousKey {
            name: name.into(),
            key_id: first.key_id()
        })
    );
}

/// The fixture the independent Python verifier (tests/e2e/rfc9162.py) checks: proofs of
/// every small tree and a signed, cosigned checkpoint, all deterministic. Regenerate with
/// `HYGIE_AUDIT_WRITE_FIXTURE=1 cargo test -p hygie-audit --test checkpoint_notes`.
#[test]
fn interop_fixture_is_current() {
    const LEAVES: u64 = 13;
    const COSIGNED_AT_S: u64 = 1_700_000_000;
    let leaves: Vec<Vec<u8>> = (0..LEAVES)
        .map(|i| format!("hygie interop leaf {i}").into_bytes())
        .collect();
    let hashes: Vec<_> = leaves.iter().map(|l| leaf_hash(l)).collect();
    let mut frontier = Frontier::new();
    let mut store = MemoryNodes::default();
    store.insert(&frontier.extend(&hashes).unwrap()).unwrap();
    let hex = |h: &[u8]| reference::hex(h);
    let roots: Vec<String> = (0..=LEAVES)
        .map(|size| hex(&merkle::root(&mut store, size).unwrap()))
        .collect();
    let mut inclusion = Vec::new();
    let mut consistency = Vec::new();
    for size in 1..=LEAVES {
        for index in 0..size {
            let proof = merkle::inclusion_proof(&mut store, index, size).unwrap();
            let proof: Vec<String> = proof.iter().map(|h| hex(h)).collect();
            inclusion.push(json!({"index": index, "size": size, "proof": proof}));
        }
        for size1 in 0..=size {
            let proof = merkle::consistency_proof(&mut store, size1, size).unwrap();
            let proof: Vec<String> = proof.iter().map(|h| hex(h)).collect();
            consistency.push(json!({"size1": size1, "size2": size, "proof": proof}));
        }
    }
    let keys = keys();
    let checkpoint = Checkpoint::new(keys.log.name(), LEAVES, frontier.root());
    let mut note = checkpoint.sign(&keys.log).unwrap();
    note.cosign(&keys.witness, COSIGNED_AT_S).unwrap();
    let fixture = json!({
        "about": "Written by crates/hygie-audit/tests/checkpoint_notes.rs (interop_fixture_is_current); read by tests/e2e/test_rfc9162_vectors.py.",
        "leaves": leaves.iter().map(|l| hex(l)).collect::<Vec<_>>(),
        "roots": roots,
        "inclusion": inclusion,
        "consistency": consistency,
        "log_vkey": keys.log.verifier_key().to_string(),
        "witness_vkey": keys.witness.verifier_key().to_string(),
        "cosigned_at_s": COSIGNED_AT_S,
        "checkpoint": note.to_string(),
    });
    let text = serde_json::to_string_pretty(&fixture).unwrap() + "\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/interop.json");
    if std::env::var_os("HYGIE_AUDIT_WRITE_FIXTURE").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "{} is stale: regenerate it with HYGIE_AUDIT_WRITE_FIXTURE=1",
        path.display()
    );
}
