//! The witness against a fake log on 127.0.0.1: an axum server, in this test, serving the
//! hub's `/audit` endpoints from an in-memory tree that the tests grow, roll back, fork and
//! rewrite between rounds.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hygie_audit::checkpoint::{Checkpoint, Note, NoteSigner, VerifierKey};
use hygie_audit::merkle::{self, Frontier, Hash, MemoryNodes};
use hygie_witness::decide::Misbehaviour;
use hygie_witness::hub::{HubClient, HubError, MAX_CHECKPOINT_BYTES, MAX_PROOF_BYTES, Posted};
use hygie_witness::run::{Progress, WitnessArgs};
use hygie_witness::{Outcome, Witness, WitnessError, exit, run_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ORIGIN: &str = "hub.test/audit";

/// The fake log's tree and what it serves.
struct FakeLog {
    signer: NoteSigner,
    leaves: Vec<Vec<u8>>,
    /// Serve the checkpoint of this size instead of the latest (a rollback).
    served_size: Option<u64>,
    /// Serve these bytes at /audit/checkpoint.
    checkpoint_body: Option<Vec<u8>>,
    /// Serve these bytes at /audit/proof/consistency.
    proof_body: Option<Vec<u8>>,
    /// Serve this key at /audit/key instead of the signer's.
    served_key: Option<String>,
    /// Answer 503 to this many checkpoint requests.
    unavailable: u32,
    /// Whether /audit/cosignatures exists (404 otherwise).
    collects: bool,
    cosignatures: Vec<String>,
}

impl FakeLog {
    fn grow(&mut self, leaves: u64) {
        for _ in 0..leaves {
            let index = self.leaves.len();
            self.leaves.push(format!("AuditEvent {index}").into_bytes());
        }
    }

    fn nodes(&self) -> MemoryNodes {
        let hashes: Vec<Hash> = self.leaves.iter().map(|l| merkle::leaf_hash(l)).collect();
        let mut nodes = MemoryNodes::default();
        nodes
            .insert(&Frontier::new().extend(&hashes).unwrap())
            .unwrap();
        nodes
    }

    fn size(&self) -> u64 {
        self.leaves.len() as u64
    }

    fn note(&self, size: u64) -> String {
        let root = merkle::root(&mut self.nodes(), size).unwrap();
        Checkpoint::new(ORIGIN, size, root)
            .sign(&self.signer)
            .unwrap()
            .to_string()
    }
}

#[derive(Clone)]
struct Fake(Arc<Mutex<FakeLog>>);

impl Fake {
    fn log(&self) -> MutexGuard<'_, FakeLog> {
        self.0.lock().unwrap()
    }
}

async fn checkpoint(State(fake): State<Fake>) -> Response {
    let mut log = fake.log();
    if log.unavailable > 0 {
        log.unavailable -= 1;
        return (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response();
    }
    let body = match &log.checkpoint_body {
        Some(body) => body.clone(),
        None => log.note(log.served_size.unwrap_or(log.size())).into_bytes(),
    };
    ([(CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

async fn key(State(fake): State<Fake>) -> Response {
    let log = fake.log();
    let key = log
        .served_key
        .clone()
        .unwrap_or_else(|| log.signer.verifier_key().to_string());
    ([(CONTENT_TYPE, "text/plain")], format!("{key}\n")).into_response()
}

async fn consistency(
    State(fake): State<Fake>,
    Query(query): Query<HashMap<String, u64>>,
) -> Response {
    let log = fake.log();
    if let Some(body) = &log.proof_body {
        return ([(CONTENT_TYPE, "application/json")], body.clone()).into_response();
    }
    let (Some(&from), Some(&to)) = (query.get("from"), query.get("to")) else {
        return (StatusCode::BAD_REQUEST, "from and to").into_response();
    };
    if from > to || to > log.size() {
        let outcome = serde_json::json!({"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "invalid", "diagnostics": "beyond the tree"}]});
        return (StatusCode::BAD_REQUEST, axum::Json(outcome)).into_response();
    }
    let proof = merkle::consistency_proof(&mut log.nodes(), from, to).unwrap();
    let hashes: Vec<String> = proof.iter().map(|h| STANDARD.encode(h)).collect();
    axum::Json(serde_json::json!({"from": from, "to": to, "hashes": hashes})).into_response()
}

async fn cosignatures(State(fake): State<Fake>, body: String) -> Response {
    let mut log = fake.log();
    if !log.collects {
        return StatusCode::NOT_FOUND.into_response();
    }
    log.cosignatures.push(body);
    StatusCode::NO_CONTENT.into_response()
}

/// A fake log of `leaves` leaves, listening on 127.0.0.1: its state and base URL.
async fn serve(leaves: u64) -> (Fake, String) {
    let mut log = FakeLog {
        signer: NoteSigner::from_seed(ORIGIN, &[7; 32]).unwrap(),
        leaves: Vec::new(),
        served_size: None,
        checkpoint_body: None,
        proof_body: None,
        served_key: None,
        unavailable: 0,
        collects: true,
        cosignatures: Vec::new(),
    };
    log.grow(leaves);
    let fake = Fake(Arc::new(Mutex::new(log)));
    let app = Router::new()
        .route("/audit/checkpoint", get(checkpoint))
        .route("/audit/key", get(key))
        .route("/audit/proof/consistency", get(consistency))
        .route("/audit/cosignatures", post(cosignatures))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (fake, url)
}

fn args(hub: &str, dir: &Path) -> WitnessArgs {
    WitnessArgs {
        hub: Some(hub.to_owned()),
        state: dir.join("state.json"),
        key: dir.join("witness.key"),
        name: Some("witness.test".into()),
        log_key: None,
        origin: None,
        out: Some(dir.join("cosigned.txt")),
        post: true,
        every_s: None,
        rounds: None,
        timeout_s: 5,
        ca_file: None,
        show_key: false,
    }
}

/// Runs the witness as the CLI does: exit code, stdout, stderr.
async fn run(args: &WitnessArgs) -> (u8, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run_with(args, &mut out, &mut err).await;
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn cosigned(outcome: Outcome) -> hygie_witness::run::Cosigned {
    match outcome {
        Outcome::Cosigned(cosigned) => cosigned,
        Outcome::Misbehaviour(evidence) => panic!("unexpected misbehaviour: {evidence}"),
    }
}

#[tokio::test]
async fn follows_growth_then_catches_rewritten_history() {
    let (fake, hub) = serve(3).await;
    let dir = tempfile::tempdir().unwrap();
    let args = args(&hub, dir.path());
    let (mut witness, notices) = Witness::open(&args).unwrap();
    assert!(
        notices
            .iter()
            .any(|n| n.contains("generated the witness key"))
    );
    let witness_key = witness.witness_key();
    let log_key = fake.log().signer.verifier_key();

    let first = cosigned(witness.run_once().await.unwrap());
    assert_eq!(first.progress, Progress::FirstContact { pinned_key: true });
    assert_eq!(first.checkpoint.size, 3);
    assert_eq!(witness.state().log.as_ref().unwrap().key, log_key);
    assert_eq!(
        witness.state().log.as_ref().unwrap().origin.as_deref(),
        Some(ORIGIN)
    );
    assert_eq!(mode(&args.state), 0o600);
    assert_eq!(mode(&args.key), 0o600);

    // Several rounds of growth, each proven; then a round with nothing new.
    for (grow, from_size) in [(4, 3), (13, 7), (1, 20)] {
        fake.log().grow(grow);
        let round = cosigned(witness.run_once().await.unwrap());
        assert_eq!(round.progress, Progress::Grew { from_size });
        assert_eq!(round.posted, Some(Posted::Accepted));
    }
    let unchanged = cosigned(witness.run_once().await.unwrap());
    assert_eq!(unchanged.progress, Progress::Unchanged);
    assert_eq!(unchanged.checkpoint.size, 21);

    // What the hub received and what --out holds verify with both keys.
    let received = fake.log().cosignatures.clone();
    assert_eq!(received.len(), 5);
    for note in received
        .iter()
        .chain([&std::fs::read_to_string(args.out.as_ref().unwrap()).unwrap()])
    {
        let note = Note::parse(note.as_bytes()).unwrap();
        note.verify(std::slice::from_ref(&witness_key)).unwrap();
        note.verify(std::slice::from_ref(&log_key)).unwrap();
    }
    let accepted_note = fake.log().note(21);
    assert_eq!(witness.state().last.as_ref().unwrap().note, accepted_note);

    // History rewritten: an old leaf changed, the tree grown and the checkpoint re-signed.
    {
        let mut log = fake.log();
        log.leaves[1] = b"AuditEvent 1, edited".to_vec();
        log.grow(4);
    }
    let state_before = std::fs::read(&args.state).unwrap();
    let (code, out, err) = run(&args).await;
    assert_eq!(code, exit::MISBEHAVIOUR, "{out}\n{err}");
    assert!(out.contains("FORK OR REWRITTEN HISTORY"), "{out}");
    assert!(
        out.contains(&accepted_note),
        "the checkpoint accepted before: {out}"
    );
    assert!(
        out.contains(&fake.log().note(25)),
        "the checkpoint served now: {out}"
    );
    assert!(err.contains("misbehaved"), "{err}");
    assert_eq!(
        std::fs::read(&args.state).unwrap(),
        state_before,
        "state unchanged"
    );

    // It is not forgotten: the next run finds it again.
    let (code, _, _) = run(&args).await;
    assert_eq!(code, exit::MISBEHAVIOUR);
}

#[tokio::test]
async fn a_rollback_and_a_fork_are_caught_with_the_evidence() {
    let (fake, hub) = serve(10).await;
    let dir = tempfile::tempdir().unwrap();
    let args = args(&hub, dir.path());
    let (code, out, err) = run(&args).await;
    assert_eq!(code, exit::OK, "{out}\n{err}");
    assert!(out.contains("size 10"), "{out}");
    assert!(out.contains("trust on first use"), "{out}");

    fake.log().served_size = Some(6);
    let (code, out, _) = run(&args).await;
    assert_eq!(code, exit::MISBEHAVIOUR, "{out}");
    assert!(out.contains("ROLLBACK"), "{out}");
    assert!(out.contains(&fake.log().note(10)) && out.contains(&fake.log().note(6)));

    // Another tree of the same size.
    {
        let mut log = fake.log();
        log.served_size = None;
        log.leaves[9] = b"the other branch".to_vec();
    }
    let (code, out, _) = run(&args).await;
    assert_eq!(code, exit::MISBEHAVIOUR, "{out}");
    assert!(
        out.contains("FORK: the log signed two different roots"),
        "{out}"
    );

    // Both leave the state as it was: the honest tree is still accepted.
    fake.log().leaves[9] = b"AuditEvent 9".to_vec();
    let (code, out, err) = run(&args).await;
    assert_eq!(code, exit::OK, "{out}\n{err}");
    assert!(out.contains("unchanged"), "{out}");
}

#[tokio::test]
async fn a_checkpoint_signed_by_another_key_is_refused() {
    let (fake, hub) = serve(5).await;
    let dir = tempfile::tempdir().unwrap();
    let args = args(&hub, dir.path());
    assert_eq!(run(&args).await.0, exit::OK);
    let state_before = std::fs::read(&args.state).unwrap();

    // The same name, another key: the pinned key does not verify it.
    fake.log().signer = NoteSigner::from_seed(ORIGIN, &[8; 32]).unwrap();
    fake.log().grow(1);
    let (code, out, err) = run(&args).await;
    assert_eq!(code, exit::HUB_ERROR, "{out}\n{err}");
    assert!(err.contains("not signed by the pinned log key"), "{err}");
    assert_eq!(std::fs::read(&args.state).unwrap(), state_before);

    // Nor may the operator swap the pinned key by a flag.
    let mut swapped = args.clone();
    swapped.log_key = Some(fake.log().signer.verifier_key().to_string());
    let (code, _, err) = run(&swapped).await;
    assert_eq!(code, exit::LOCAL_ERROR);
    assert!(err.contains("differs from the log key pinned"), "{err}");
}

#[tokio::test]
async fn first_contact_pins_nothing_that_does_not_verify() {
    let (fake, hub) = serve(5).await;
    let dir = tempfile::tempdir().unwrap();
    let args = args(&hub, dir.path());
    // /audit/key serves one key, the checkpoints are signed by another.
    let other = NoteSigner::from_seed(ORIGIN, &[9; 32]).unwrap();
    fake.log().served_key = Some(other.verifier_key().to_string());
    let (code, _, err) = run(&args).await;
    assert_eq!(code, exit::HUB_ERROR, "{err}");
    let (witness, _) = Witness::open(&args).unwrap();
    assert_eq!(witness.state().log, None, "nothing pinned");

    // With the key given by the operator, /audit/key is not even asked.
    let mut given = args.clone();
    given.log_key = Some(fake.log().signer.verifier_key().to_string());
    let (code, out, err) = run(&given).await;
    assert_eq!(code, exit::OK, "{out}\n{err}");
    assert!(out.contains("first contact with log key"), "{out}");

    // A pinned origin is kept: another origin given later is refused.
    let mut other_origin = args.clone();
    other_origin.origin = Some("elsewhere/audit".into());
    let (code, _, err) = run(&other_origin).await;
    assert_eq!(code, exit::LOCAL_ERROR);
    assert!(err.contains("differs from the origin pinned"), "{err}");
}

#[tokio::test]
async fn an_origin_given_before_the_first_contact_must_match() {
    let (_fake, hub) = serve(5).await;
    let dir = tempfile::tempdir().unwrap();
    let mut args = args(&hub, dir.path());
    args.origin = Some("elsewhere/audit".into());
    let (code, _, err) = run(&args).await;
    assert_eq!(code, exit::HUB_ERROR);
    assert!(
        err.contains("pinned origin is \"elsewhere/audit\""),
        "{err}"
    );
}

#[tokio::test]
async fn oversize_and_malformed_answers_are_refused() {
    let (fake, hub) = serve(5).await;
    let client = HubClient::new(&hub, std::time::Duration::from_secs(5), None).unwrap();

    fake.log().checkpoint_body = Some(vec![b'a'; MAX_CHECKPOINT_BYTES + 1]);
    assert!(matches!(
        client.checkpoint().await,
        Err(HubError::TooLarge {
            limit: MAX_CHECKPOINT_BYTES,
            ..
        })
    ));
    fake.log().checkpoint_body = Some(vec![b'a'; MAX_CHECKPOINT_BYTES]);
    assert_eq!(
        client.checkpoint().await.unwrap().len(),
        MAX_CHECKPOINT_BYTES
    );

    let padding = " ".repeat(MAX_PROOF_BYTES);
    fake.log().proof_body =
        Some(format!(r#"{{"from":1,"to":5,"hashes":[]}}{padding}"#).into_bytes());
    assert!(matches!(
        client.consistency_proof(1, 5).await,
        Err(HubError::TooLarge {
            limit: MAX_PROOF_BYTES,
            ..
        })
    ));

    let hash = STANDARD.encode([0u8; 32]);
    let too_many = vec![hash.clone(); 65];
    let malformed: [(serde_json::Value, &str); 4] = [
        (
            serde_json::json!({"from": 1, "to": 5, "hashes": too_many}),
            "more than the limit of 64",
        ),
        (
            serde_json::json!({"from": 2, "to": 5, "hashes": [hash]}),
            "the proof from 2 to 5",
        ),
        (
            serde_json::json!({"from": 1, "to": 5, "hashes": ["AAAA"]}),
            "hash 0 is not",
        ),
        (serde_json::json!({"from": 1, "to": 5}), "missing field"),
    ];
    for (body, reason) in malformed {
        fake.log().proof_body = Some(body.to_string().into_bytes());
        let error = client.consistency_proof(1, 5).await.unwrap_err();
        assert!(
            matches!(&error, HubError::Malformed { .. }) && error.to_string().contains(reason),
            "{error}"
        );
    }

    // The hub's 400 (an OperationOutcome) is quoted.
    fake.log().proof_body = None;
    let error = client.consistency_proof(1, 9).await.unwrap_err();
    assert!(
        matches!(error, HubError::Status { status: 400, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("beyond the tree"), "{error}");
}

/// A server that streams an endless chunked body (no Content-Length): the limit must hold
/// as the body comes in.
#[tokio::test]
async fn a_chunked_answer_is_cut_at_the_limit() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hub = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = format!("10000\r\n{}\r\n", "a".repeat(0x10000));
                // 64 MiB at most, should the client never stop reading.
                for _ in 0..1024 {
                    if socket.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                }
                let _ = socket.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    let client = HubClient::new(&hub, std::time::Duration::from_secs(5), None).unwrap();
    assert!(matches!(
        client.checkpoint().await,
        Err(HubError::TooLarge {
            limit: MAX_CHECKPOINT_BYTES,
            ..
        })
    ));
}

#[tokio::test]
async fn network_errors_are_exit_2_and_retried_in_a_loop() {
    // A port nothing listens on (bound, then released).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(&args(&dead, dir.path())).await;
    assert_eq!(code, exit::HUB_ERROR, "{err}");

    // The hub answers 503 at first: the loop goes on, and the next round succeeds.
    let (fake, hub) = serve(4).await;
    fake.log().unavailable = 1;
    let dir = tempfile::tempdir().unwrap();
    let mut looping = args(&hub, dir.path());
    looping.every_s = Some(1);
    looping.rounds = Some(2);
    let (code, out, err) = run(&looping).await;
    assert_eq!(code, exit::OK, "{out}\n{err}");
    assert!(err.contains("HTTP 503"), "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("size 4"), "{out}");
}

#[tokio::test]
async fn misbehaviour_stops_the_loop_at_once() {
    let (fake, hub) = serve(8).await;
    let dir = tempfile::tempdir().unwrap();
    let args = args(&hub, dir.path());
    assert_eq!(run(&args).await.0, exit::OK);
    fake.log().served_size = Some(2);
    let mut looping = args.clone();
    looping.every_s = Some(3600);
    looping.rounds = Some(5);
    // A second round would come an hour later: the time limit fails the test instead.
    let (code, out, _) = tokio::time::timeout(std::time::Duration::from_secs(60), run(&looping))
        .await
        .expect("the loop stops at the first misbehaviour");
    assert_eq!(code, exit::MISBEHAVIOUR, "{out}");
    assert_eq!(out.matches("ROLLBACK").count(), 1, "{out}");
}

#[tokio::test]
async fn a_hub_that_does_not_collect_cosignatures_is_no_error() {
    let (fake, hub) = serve(2).await;
    fake.log().collects = false;
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run(&args(&hub, dir.path())).await;
    assert_eq!(code, exit::OK, "{out}\n{err}");
    assert!(out.contains("does not collect cosignatures"), "{out}");
}

#[tokio::test]
async fn the_state_survives_a_crash_and_refuses_damage() {
    let (fake, hub) = serve(6).await;
    let dir = tempfile::tempdir().unwrap();
    let args = args(&hub, dir.path());
    assert_eq!(run(&args).await.0, exit::OK);

    // A process that died while writing leaves a partial temporary file: it is ignored,
    // then replaced by the next write.
    let temporary: PathBuf = dir.path().join("state.json.tmp");
    std::fs::write(&temporary, b"{\"format\": \"hygie-witn").unwrap();
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o644)).unwrap();
    fake.log().grow(3);
    let (code, out, err) = run(&args).await;
    assert_eq!(code, exit::OK, "{out}\n{err}");
    assert!(out.contains("grew from 6"), "{out}");
    assert!(!temporary.exists());
    assert_eq!(mode(&args.state), 0o600);
    let (witness, _) = Witness::open(&args).unwrap();
    assert_eq!(witness.state().last.as_ref().unwrap().size, 9);

    // A damaged state is an error, never a fresh start (which would trust the log anew).
    let saved = std::fs::read(&args.state).unwrap();
    std::fs::write(&args.state, &saved[..saved.len() / 2]).unwrap();
    let (code, _, err) = run(&args).await;
    assert_eq!(code, exit::LOCAL_ERROR);
    assert!(err.contains("is not a valid witness state"), "{err}");
    // So is a hand-edited one whose note no longer says what it records.
    let edited = String::from_utf8(saved.clone())
        .unwrap()
        .replace("\"size\": 9", "\"size\": 3");
    std::fs::write(&args.state, edited).unwrap();
    let (code, _, err) = run(&args).await;
    assert_eq!(code, exit::LOCAL_ERROR);
    assert!(err.contains("differ from its note"), "{err}");
    std::fs::write(&args.state, &saved).unwrap();
    assert_eq!(run(&args).await.0, exit::OK);
}

#[tokio::test]
async fn the_key_file_is_private_and_bound_to_the_state() {
    let (_fake, hub) = serve(1).await;
    let dir = tempfile::tempdir().unwrap();
    let args = args(&hub, dir.path());
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut show = args.clone();
    show.show_key = true;
    show.hub = None;
    assert_eq!(run_with(&show, &mut out, &mut err).await, exit::OK);
    let vkey = VerifierKey::parse(String::from_utf8(out).unwrap().trim()).unwrap();
    assert_eq!(vkey.name(), "witness.test");
    assert_eq!(run(&args).await.0, exit::OK);
    let (witness, _) = Witness::open(&args).unwrap();
    assert_eq!(witness.witness_key(), vkey, "the key shown is the key used");

    let mut renamed = args.clone();
    renamed.name = Some("other.test".into());
    let (code, _, err) = run(&renamed).await;
    assert_eq!(code, exit::LOCAL_ERROR, "{err}");

    std::fs::set_permissions(&args.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = run(&args).await;
    assert_eq!(code, exit::LOCAL_ERROR);
    assert!(err.contains("chmod 600"), "{err}");

    let moved = dir.path().join("moved.key");
    std::fs::rename(&args.key, &moved).unwrap();
    let (code, _, err) = run(&args).await;
    assert_eq!(code, exit::LOCAL_ERROR);
    assert!(err.contains("restore the key file"), "{err}");

    // Another witness's key under this state's name.
    let other_dir = tempfile::tempdir().unwrap();
    let mut other = args.clone();
    other.state = other_dir.path().join("state.json");
    other.key = args.key.clone();
    other.show_key = true;
    assert_eq!(
        run(&other).await.0,
        exit::OK,
        "a new key where the old one was"
    );
    let (code, _, err) = run(&args).await;
    assert_eq!(code, exit::LOCAL_ERROR);
    assert!(
        err.contains("but the state says this witness cosigns as"),
        "{err}"
    );
}

#[tokio::test]
async fn plain_http_is_for_loopback_only() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(&args("http://hub.example", dir.path())).await;
    assert_eq!(code, exit::LOCAL_ERROR);
    assert!(err.contains("use https"), "{err}");
    assert!(matches!(
        Witness::open(&args("http://10.1.2.3:8080", dir.path())),
        Err(WitnessError::Hub(HubError::BadUrl { .. }))
    ));
}

#[tokio::test]
async fn a_ca_file_that_is_missing_or_holds_no_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = args("https://hub.example", dir.path());
    args.ca_file = Some(dir.path().join("missing.pem"));
    let (code, _, err) = run(&args).await;
    assert_eq!(code, exit::LOCAL_ERROR);
    assert!(err.contains("missing.pem"), "{err}");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    args.ca_file = Some(garbage);
    let (code, _, err) = run(&args).await;
    assert_eq!(code, exit::LOCAL_ERROR);
    assert!(err.contains("no PEM certificate"), "{err}");
    assert!(
        !args.state.exists(),
        "nothing created before the options are checked"
    );
}

#[test]
fn inconsistency_kinds_read_as_alarms() {
    let kind = Misbehaviour::Fork { size: 3 };
    assert!(kind.to_string().starts_with("FORK"));
}
