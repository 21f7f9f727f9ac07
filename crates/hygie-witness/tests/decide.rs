//! The witness's judgement, without a network: every branch, on trees built with
//! hygie-audit's `Frontier` and `MemoryNodes` and checkpoints signed with `NoteSigner`.

use hygie_audit::checkpoint::{
    Checkpoint, CheckpointError, Cosigner, Note, NoteError, NoteSigner, VerifierKey,
};
use hygie_audit::merkle::{self, Frontier, Hash, MemoryNodes, MerkleError};
use hygie_witness::decide::{
    self, Accepted, Evidence, Judgement, LogTrust, Misbehaviour, Opened, Refusal,
};

const ORIGIN: &str = "hub.example/audit";
const NOW_S: u64 = 1_750_000_000;

/// A log of `leaves`, signed by `signer`.
struct Log {
    signer: NoteSigner,
    leaves: Vec<Vec<u8>>,
}

impl Log {
    fn new(leaves: u64) -> Log {
        let signer = NoteSigner::from_seed(ORIGIN, &[1; 32]).unwrap();
        Log {
            signer,
            leaves: (0..leaves)
                .map(|i| format!("leaf {i}").into_bytes())
                .collect(),
        }
    }

    fn nodes(&self) -> MemoryNodes {
        let hashes: Vec<Hash> = self.leaves.iter().map(|l| merkle::leaf_hash(l)).collect();
        let mut store = MemoryNodes::default();
        store
            .insert(&Frontier::new().extend(&hashes).unwrap())
            .unwrap();
        store
    }

    fn root(&self, size: u64) -> Hash {
        merkle::root(&mut self.nodes(), size).unwrap()
    }

    /// The signed note of the tree of `size` leaves.
    fn note(&self, size: u64) -> String {
        Checkpoint::new(ORIGIN, size, self.root(size))
            .sign(&self.signer)
            .unwrap()
            .to_string()
    }

    fn proof(&self, from_size: u64, to_size: u64) -> Vec<Hash> {
        merkle::consistency_proof(&mut self.nodes(), from_size, to_size).unwrap()
    }

    fn trust(&self) -> LogTrust {
        LogTrust::new(self.signer.verifier_key(), Some(ORIGIN.to_owned())).unwrap()
    }
}

fn witness() -> Cosigner {
    Cosigner::from_seed("witness.example", &[2; 32]).unwrap()
}

fn accept(log: &Log, size: u64) -> Accepted {
    let opened = decide::open(&log.trust(), log.note(size).as_bytes()).unwrap();
    decide::accepted(&opened, NOW_S - 60)
}

fn open(log: &Log, size: u64) -> Opened {
    decide::open(&log.trust(), log.note(size).as_bytes()).unwrap()
}

#[test]
fn first_contact_pins_nothing_yet_and_is_cosigned() {
    let log = Log::new(5);
    let trust = LogTrust::new(log.signer.verifier_key(), None).unwrap();
    let opened = decide::open(&trust, log.note(5).as_bytes()).unwrap();
    assert_eq!(opened.checkpoint, Checkpoint::new(ORIGIN, 5, log.root(5)));
    assert_eq!(decide::judge(None, &opened), Judgement::FirstContact);

    let cosigned = decide::cosign(&opened, &witness(), NOW_S).unwrap();
    let verified = cosigned.verify(&[witness().verifier_key()]).unwrap();
    assert_eq!(verified[0].timestamp_s, Some(NOW_S));
    cosigned.verify(&[log.signer.verifier_key()]).unwrap();
    assert_eq!(
        cosigned.signatures().len(),
        2,
        "the log's and the witness's"
    );

    let accepted = decide::accepted(&opened, NOW_S);
    assert_eq!((accepted.size, accepted.root), (5, log.root(5)));
    assert_eq!(accepted.note, log.note(5), "the note as the log signed it");
}

#[test]
fn an_empty_log_is_witnessed_too() {
    let log = Log::new(0);
    let opened = open(&log, 0);
    assert_eq!(opened.checkpoint.root, merkle::EMPTY_ROOT);
    assert_eq!(decide::judge(None, &opened), Judgement::FirstContact);
    let grown = Log::new(3);
    let accepted = decide::accepted(&opened, NOW_S);
    let served = open(&grown, 3);
    assert_eq!(
        decide::judge(Some(&accepted), &served),
        Judgement::Grew { from_size: 0 }
    );
    decide::check_growth(&accepted, &served, &[]).unwrap();
}

#[test]
fn another_key_is_refused_even_under_the_same_name() {
    let log = Log::new(4);
    let impostor = NoteSigner::from_seed(ORIGIN, &[9; 32]).unwrap();
    let note = Checkpoint::new(ORIGIN, 4, log.root(4))
        .sign(&impostor)
        .unwrap()
        .to_string();
    let refusal = decide::open(&log.trust(), note.as_bytes()).unwrap_err();
    assert_eq!(
        refusal,
        Refusal::Unverified {
            key: log.signer.verifier_key().to_string(),
            reason: CheckpointError::Note(NoteError::NoVerifiedSignature),
        }
    );
    // The impostor's note verifies with its own key: the refusal is the pinning's doing.
    let impostor_trust = LogTrust::new(impostor.verifier_key(), None).unwrap();
    decide::open(&impostor_trust, note.as_bytes()).unwrap();
}

#[test]
fn a_bad_signature_or_an_edited_text_is_refused() {
    let log = Log::new(4);
    let note = log.note(4);
    // One base64 character of the signature changed (past the key ID).
    let line_start = note.find('\u{2014}').unwrap();
    let mut bytes = note.clone().into_bytes();
    let at = bytes.len() - 10;
    assert!(at > line_start);
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    let invalid = |refusal: Refusal| {
        matches!(
            refusal,
            Refusal::Unverified {
                reason: CheckpointError::Note(NoteError::InvalidSignature { .. }),
                ..
            }
        )
    };
    assert!(invalid(decide::open(&log.trust(), &bytes).unwrap_err()));

    // The text of size 4 with the signature of size 4, but a size of 5 written in.
    let edited = note.replacen("\n4\n", "\n5\n", 1);
    assert_ne!(edited, note);
    assert!(invalid(
        decide::open(&log.trust(), edited.as_bytes()).unwrap_err()
    ));

    for garbage in [&b""[..], b"not a note", &[0xff, 0xfe, b'\n']] {
        assert!(matches!(
            decide::open(&log.trust(), garbage),
            Err(Refusal::Unverified { .. })
        ));
    }
}

#[test]
fn a_checkpoint_of_another_origin_is_refused() {
    let log = Log::new(4);
    let note = Checkpoint::new("other.example/audit", 4, log.root(4))
        .sign(&log.signer)
        .unwrap()
        .to_string();
    assert_eq!(
        decide::open(&log.trust(), note.as_bytes()),
        Err(Refusal::WrongOrigin {
            pinned: ORIGIN.into(),
            served: "other.example/audit".into()
        })
    );
}

#[test]
fn a_cosignature_key_is_not_a_log_key() {
    let key = witness().verifier_key();
    assert!(matches!(
        LogTrust::new(key, None),
        Err(Refusal::NotALogKey { .. })
    ));
}

#[test]
fn the_same_checkpoint_is_unchanged() {
    let log = Log::new(6);
    let accepted = accept(&log, 6);
    assert_eq!(
        decide::judge(Some(&accepted), &open(&log, 6)),
        Judgement::Unchanged
    );
}

#[test]
fn growth_with_a_valid_proof_is_accepted_for_every_pair_of_sizes() {
    let log = Log::new(17);
    for to_size in 1..=17 {
        let served = open(&log, to_size);
        for from_size in 0..to_size {
            let accepted = accept(&log, from_size);
            assert_eq!(
                decide::judge(Some(&accepted), &served),
                Judgement::Grew { from_size }
            );
            decide::check_growth(&accepted, &served, &log.proof(from_size, to_size))
                .unwrap_or_else(|e| panic!("{from_size} -> {to_size}: {e}"));
        }
    }
}

#[test]
fn growth_over_rewritten_history_is_caught_for_every_pair_of_sizes() {
    let honest = Log::new(17);
    for changed in 0..16u64 {
        let mut rewritten = Log::new(17);
        rewritten.leaves[changed as usize] = b"rewritten".to_vec();
        for from_size in (changed + 1)..17 {
            let accepted = accept(&honest, from_size);
            for to_size in (from_size + 1)..=17 {
                let served = open(&rewritten, to_size);
                let evidence =
                    decide::check_growth(&accepted, &served, &rewritten.proof(from_size, to_size))
                        .expect_err("a rewritten leaf must break consistency");
                assert!(matches!(
                    evidence.kind,
                    Misbehaviour::Inconsistent {
                        reason: MerkleError::FirstRootMismatch | MerkleError::SecondRootMismatch,
                        ..
                    }
                ));
            }
        }
    }
}

#[test]
fn a_missing_or_padded_proof_is_inconsistency_with_both_notes_as_evidence() {
    let log = Log::new(10);
    let accepted = accept(&log, 6);
    let served = open(&log, 10);
    let mut proof = log.proof(6, 10);
    for bad in [Vec::new(), proof[1..].to_vec(), {
        proof.push([0; 32]);
        proof.clone()
    }] {
        let evidence = decide::check_growth(&accepted, &served, &bad).unwrap_err();
        assert!(matches!(
            evidence.kind,
            Misbehaviour::Inconsistent {
                from_size: 6,
                to_size: 10,
                reason: MerkleError::WrongProofLength { .. }
            }
        ));
        assert_eq!(evidence.accepted_note, log.note(6));
        assert_eq!(evidence.served_note, log.note(10));
    }
}

/// The evidence is two notes each verifying with the log's key alone, in one report.
fn assert_signed_evidence(evidence: &Evidence, key: &VerifierKey) {
    for note in [&evidence.accepted_note, &evidence.served_note] {
        Note::parse(note.as_bytes())
            .unwrap()
            .verify(std::slice::from_ref(key))
            .unwrap();
    }
    let report = evidence.to_string();
    assert!(report.contains(&evidence.accepted_note), "{report}");
    assert!(report.contains(&evidence.served_note), "{report}");
    assert!(report.contains(&evidence.kind.to_string()), "{report}");
}

#[test]
fn a_smaller_tree_is_a_rollback() {
    let log = Log::new(9);
    let accepted = accept(&log, 9);
    let Judgement::Misbehaviour(evidence) = decide::judge(Some(&accepted), &open(&log, 4)) else {
        panic!("a rollback is misbehaviour");
    };
    assert_eq!(
        evidence.kind,
        Misbehaviour::Rollback {
            accepted_size: 9,
            served_size: 4
        }
    );
    assert!(evidence.to_string().starts_with("ROLLBACK"));
    assert_signed_evidence(&evidence, &log.signer.verifier_key());
}

#[test]
fn another_root_at_the_same_size_is_a_fork() {
    let log = Log::new(9);
    let mut forked = Log::new(9);
    forked.leaves[8] = b"the other branch".to_vec();
    let accepted = accept(&log, 9);
    let Judgement::Misbehaviour(evidence) = decide::judge(Some(&accepted), &open(&forked, 9))
    else {
        panic!("a fork is misbehaviour");
    };
    assert_eq!(evidence.kind, Misbehaviour::Fork { size: 9 });
    assert_signed_evidence(&evidence, &log.signer.verifier_key());
}

#[test]
fn only_the_logs_signatures_are_kept_and_passed_on() {
    let log = Log::new(3);
    let mut note = Note::parse(log.note(3).as_bytes()).unwrap();
    let other = Cosigner::from_seed("other-witness.example", &[3; 32]).unwrap();
    note.cosign(&other, NOW_S).unwrap();
    let opened = decide::open(&log.trust(), note.to_string().as_bytes()).unwrap();
    assert_eq!(opened.note.to_string(), log.note(3));
    let cosigned = decide::cosign(&opened, &witness(), NOW_S).unwrap();
    assert_eq!(cosigned.signatures().len(), 2);
    assert!(
        cosigned
            .signatures()
            .iter()
            .all(|s| s.name != "other-witness.example")
    );
}
