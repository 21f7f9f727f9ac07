//! `/audit/…`: what anyone needs to check the audit log without trusting the hub, and no
//! patient data: the latest signed checkpoint (C2SP signed note), the log's verifier key,
//! and RFC 9162 inclusion and consistency proofs (hashes, base64). Public, like a
//! Certificate Transparency log's; limited by the per-address rate limit. Witnesses `POST
//! /audit/cosignatures` their cosigned checkpoints, which need no token: the cosignature
//! of a configured witness key is the credential, and the checkpoint is then served with it.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::StatusCode;
use hygie_fhir::IssueType;
use hygie_hub::{HubError, MAX_COSIGNED_NOTE_BYTES, Proof};

use crate::AppState;
use crate::fhir::origin;
use crate::response::{ErrorResponse, Throttled};

/// The per-address rate limit, as for every request.
fn throttle(state: &AppState, request: &axum::extract::Request) -> Option<Response> {
    let (remote, _) = origin(request.extensions());
    let address = remote?;
    state
        .by_address
        .check(&address.ip().to_string(), std::time::Instant::now())
        .err()
        .map(|wait| Throttled(wait).into_response())
}

fn text(body: String) -> Response {
    (
        StatusCode::OK,
        [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn json(document: serde_json::Value) -> Response {
    (
        StatusCode::OK,
        [(http::header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(&document).expect("a JSON document serializes"),
    )
        .into_response()
}

/// The query's two numbers `first` and `second`, and nothing else (a typo must not pass
/// as a default).
fn two_numbers(query: Option<&str>, first: &str, second: &str) -> Result<(u64, u64), HubError> {
    let mut values = [None, None];
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let slot = if name == first {
            0
        } else if name == second {
            1
        } else {
            return Err(HubError::bad_request(format!(
                "unknown parameter {name:?}: this proof takes {first} and {second}"
            )));
        };
        if values[slot].is_some() {
            return Err(HubError::bad_request(format!("{name} is given twice")));
        }
        let number = value.parse::<u64>().map_err(|_| {
            HubError::bad_request(format!("{name} must be a whole number, not {value:?}"))
        })?;
        values[slot] = Some(number);
    }
    match values {
        [Some(a), Some(b)] => Ok((a, b)),
        _ => Err(HubError::bad_request(format!(
            "this proof needs {first} and {second}"
        ))),
    }
}

fn hashes(proof: &Proof) -> Vec<String> {
    proof.hashes.iter().map(|h| STANDARD.encode(h)).collect()
}

fn answer(result: Result<Response, HubError>) -> Response {
    result.unwrap_or_else(|error| ErrorResponse(error).into_response())
}

/// `GET /audit/checkpoint`: the latest signed checkpoint, `text/plain`.
pub(crate) async fn checkpoint(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Response {
    if let Some(refusal) = throttle(&state, &request) {
        return refusal;
    }
    answer(state.hub.audit_checkpoint().await.map(|c| text(c.note)))
}

/// `GET /audit/key`: the log's verifier key (`origin+keyid+base64`), `text/plain`.
pub(crate) async fn key(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Response {
    if let Some(refusal) = throttle(&state, &request) {
        return refusal;
    }
    answer(
        state
            .hub
            .audit_log_key()
            .await
            .map(|key| text(format!("{key}\n"))),
    )
}

/// The two kinds of RFC 9162 proof, named by their query parameters.
#[derive(Clone, Copy)]
enum ProofKind {
    Inclusion,
    Consistency,
}

/// `GET /audit/proof/inclusion?index=I&size=N`.
pub(crate) async fn inclusion(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Response {
    proof(state, request, ProofKind::Inclusion).await
}

/// `GET /audit/proof/consistency?from=M&to=N`.
pub(crate) async fn consistency(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Response {
    proof(state, request, ProofKind::Consistency).await
}

async fn proof(state: AppState, request: axum::extract::Request, kind: ProofKind) -> Response {
    if let Some(refusal) = throttle(&state, &request) {
        return refusal;
    }
    let query = request.uri().query().map(str::to_owned);
    drop(request);
    let (first_name, second_name) = match kind {
        ProofKind::Inclusion => ("index", "size"),
        ProofKind::Consistency => ("from", "to"),
    };
    let result = async {
        let (first, second) = two_numbers(query.as_deref(), first_name, second_name)?;
        let proof = match kind {
            ProofKind::Inclusion => state.hub.audit_inclusion_proof(first, second).await?,
            ProofKind::Consistency => state.hub.audit_consistency_proof(first, second).await?,
        };
        Ok(json(serde_json::json!({
            first_name: first, second_name: second, "hashes": hashes(&proof),
        })))
    }
    .await;
    answer(result)
}

/// `POST /audit/cosignatures`: a witness's cosigned checkpoint (a C2SP signed note, the
/// log's signature line and the witness's `cosignature/v1` line). 204 once stored; 400 for
/// a note that is not a cosignature of a checkpoint of this log by a configured witness;
/// 413 over [`MAX_COSIGNED_NOTE_BYTES`].
pub(crate) async fn cosignatures(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Response {
    if let Some(refusal) = throttle(&state, &request) {
        return refusal;
    }
    let body = match axum::body::to_bytes(request.into_body(), MAX_COSIGNED_NOTE_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            return ErrorResponse(HubError::new(
                413,
                IssueType::TooLong,
                format!("a cosigned checkpoint is at most {MAX_COSIGNED_NOTE_BYTES} bytes"),
            ))
            .into_response();
        }
    };
    answer(
        state
            .hub
            .accept_audit_cosignature(&body)
            .await
            .map(|_| StatusCode::NO_CONTENT.into_response()),
    )
}

/// Anything else under `/audit/`: 404, or 405 for another method on a known path.
pub(crate) async fn other(request: axum::extract::Request) -> Response {
    let known = matches!(
        request.uri().path(),
        "/audit/checkpoint" | "/audit/key" | "/audit/proof/inclusion" | "/audit/proof/consistency"
    );
    let error = if known {
        HubError::new(
            405,
            IssueType::NotSupported,
            "the audit log is read-only: GET",
        )
    } else if request.uri().path() == "/audit/cosignatures" {
        HubError::new(
            405,
            IssueType::NotSupported,
            "POST a cosigned checkpoint here",
        )
    } else {
        HubError::not_found(format!("no audit resource {}", request.uri().path()))
    };
    ErrorResponse(error).into_response()
}
