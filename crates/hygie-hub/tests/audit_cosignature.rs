//! Witness cosignatures (`Hub::accept_audit_cosignature`), on both backends: a configured
//! witness's cosignature of a stored checkpoint is kept and served with it; a forged one,
//! one of an unknown witness and one of a checkpoint the log never signed are refused and
//! leave nothing behind.

use hygie_audit::checkpoint::{Checkpoint, Cosigner, Note, open_checkpoint};
use hygie_hub::{AuditLogSettings, Caller, Hub, HubConfig};
use hygie_policy::Principal;
use hygie_store::StoreExt;
use hygie_store::testing::TestBackend;
use serde_json::json;

hygie_store::on_both_backends!(
    a_witness_cosignature_is_kept_and_served,
    bad_cosignatures_are_refused_and_not_kept
);

const NOW_S: u64 = 1_800_000_000;

/// A hub trusting `witnesses`, with one signed checkpoint; answers it (the log's note).
async fn hub_with_checkpoint(backend: &TestBackend, witnesses: &[&Cosigner]) -> (Hub, String) {
    let config = HubConfig {
        audit: AuditLogSettings {
            witnesses: witnesses.iter().map(|w| w.verifier_key()).collect(),
            ..AuditLogSettings::default()
        },
        ..HubConfig::default()
    };
    let hub = Hub::new(backend.store.clone(), config);
    let operator = Caller::new(Principal::development(), "load");
    hub.create(
        &operator,
        "Patient",
        json!({"resourceType": "Patient"}),
        None,
    )
    .await
    .unwrap();
    hub.integrate_audit(true).await.unwrap();
    let note = hub.audit_checkpoint().await.unwrap().note;
    (hub, note)
}

fn cosign(note: &str, witness: &Cosigner) -> String {
    let mut note = Note::parse(note.as_bytes()).unwrap();
    note.cosign(witness, NOW_S).unwrap();
    note.to_string()
}

async fn a_witness_cosignature_is_kept_and_served(backend: TestBackend) {
    let (witness, _) = Cosigner::generate("witness.example").unwrap();
    let (hub, note) = hub_with_checkpoint(&backend, &[&witness]).await;
    let log_key = hub.audit_log_key().await.unwrap();
    let cosigned = cosign(&note, &witness);

    let accepted = hub
        .accept_audit_cosignature(cosigned.as_bytes())
        .await
        .unwrap();
    assert_eq!(
        accepted.witnesses,
        vec![format!("witness.example+{:08x}", witness.key_id())]
    );
    let served = hub.audit_checkpoint().await.unwrap().note;
    assert_eq!(served, cosigned, "served with the cosignature line");
    let (checkpoint, verified) =
        open_checkpoint(served.as_bytes(), &[log_key, witness.verifier_key()]).unwrap();
    assert_eq!(checkpoint.size, accepted.tree_size);
    assert_eq!(verified.len(), 2);
    assert_eq!(verified[1].timestamp_s, Some(NOW_S));

    // `hygie audit verify` counts it.
    let report = hub.verify_audit(None, &[]).await.unwrap().unwrap();
    assert_eq!(
        report.witness_cosigned,
        vec![(accepted.witnesses[0].clone(), accepted.tree_size)]
    );

    // Sent again (the witness retries): accepted, served once.
    hub.accept_audit_cosignature(cosigned.as_bytes())
        .await
        .unwrap();
    assert_eq!(hub.audit_checkpoint().await.unwrap().note, cosigned);

    // A newer checkpoint is served without the old size's cosignature.
    let operator = Caller::new(Principal::development(), "more");
    hub.create(
        &operator,
        "Patient",
        json!({"resourceType": "Patient"}),
        None,
    )
    .await
    .unwrap();
    hub.integrate_audit(true).await.unwrap();
    let newer = hub.audit_checkpoint().await.unwrap().note;
    assert_eq!(Note::parse(newer.as_bytes()).unwrap().signatures().len(), 1);

    // A kept cosignature edited in the database no longer counts.
    let key = format!("audit.cosignature.{}", accepted.witnesses[0]);
    backend
        .store
        .run(move |tx| {
            let value = tx.meta_get(&key)?.unwrap();
            let (head, last) = value.split_at(value.len() - 10);
            let flipped = if last.starts_with('A') { "B" } else { "A" };
            tx.meta_set(&key, &format!("{head}{flipped}{}", &last[1..]))
        })
        .await
        .unwrap();
    let report = hub.verify_audit(None, &[]).await.unwrap().unwrap();
    assert!(report.witness_cosigned.is_empty());
}

async fn bad_cosignatures_are_refused_and_not_kept(backend: TestBackend) {
    let (witness, _) = Cosigner::generate("witness.example").unwrap();
    let (stranger, _) = Cosigner::generate("stranger.example").unwrap();
    let (hub, note) = hub_with_checkpoint(&backend, &[&witness]).await;
    let refused = |body: String| {
        let hub = hub.clone();
        async move {
            let error = hub
                .accept_audit_cosignature(body.as_bytes())
                .await
                .unwrap_err();
            (error.status, format!("{error:?}"))
        }
    };

    // Forged: the witness's line with one signature byte changed.
    let mut forged = Note::parse(cosign(&note, &witness).as_bytes()).unwrap();
    let mut lines = forged.signatures().to_vec();
    let last = lines.last_mut().unwrap();
    let byte = last.signature.len() - 1;
    last.signature[byte] ^= 1;
    forged = Note::parse(note.as_bytes()).unwrap();
    forged.add_signature(lines.pop().unwrap()).unwrap();
    let (status, why) = refused(forged.to_string()).await;
    assert_eq!(status, 400, "{why}");
    assert!(why.contains("does not verify"), "{why}");

    // A witness the hub was not told about.
    let (status, why) = refused(cosign(&note, &stranger)).await;
    assert_eq!(status, 400, "{why}");
    assert!(why.contains("unknown witness stranger.example"), "{why}");

    // Only the log's signature.
    let (status, why) = refused(note.clone()).await;
    assert_eq!(status, 400, "{why}");
    assert!(why.contains("no witness cosignature"), "{why}");

    // A checkpoint the log never signed (another root), cosigned by the witness.
    let real = Checkpoint::parse_body(Note::parse(note.as_bytes()).unwrap().text()).unwrap();
    let other = Checkpoint::new(&real.origin, real.size, [7; 32]);
    let mut unknown = Note::new(&other.to_body().unwrap()).unwrap();
    unknown.cosign(&witness, NOW_S).unwrap();
    let (status, why) = refused(unknown.to_string()).await;
    assert_eq!(status, 400, "{why}");
    assert!(why.contains("unknown checkpoint"), "{why}");

    // Not a note at all, and one over the size limit.
    let (status, _) = refused("hello\n".to_owned()).await;
    assert_eq!(status, 400);
    let (status, _) = refused("x".repeat(hygie_hub::MAX_COSIGNED_NOTE_BYTES + 1)).await;
    assert_eq!(status, 413);

    // Nothing of it is served or counted.
    assert_eq!(hub.audit_checkpoint().await.unwrap().note, note);
    let report = hub.verify_audit(None, &[]).await.unwrap().unwrap();
    assert!(report.witness_cosigned.is_empty());
}
