//! `/admin/revocations`: revoking a token (`jti`) or a principal (`subject`) over HTTP, for
//! the security officer on call. Needs a token with the `admin` role (the policy decides,
//! `Action::Revoke`); every attempt is audited by the hub. `POST` revokes, `DELETE` lifts.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode};
use hygie_fhir::{Issue, IssueSeverity, IssueType};
use hygie_hub::{Caller, HubError, RevocationKind};
use serde_json::Value;

use crate::AppState;
use crate::fhir::{admit, origin};
use crate::response::{ErrorResponse, outcome_response};

/// The largest request body accepted here, bytes.
const MAX_BODY_BYTES: usize = 4 * 1024;

pub(crate) async fn revocations(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Response {
    match handle(state, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn handle(
    state: AppState,
    request: axum::extract::Request,
) -> Result<Response, ErrorResponse> {
    let (parts, body) = request.into_parts();
    let method = parts.method;
    let headers = parts.headers;
    let (remote, request_id) = origin(&parts.extensions);
    let principal = match admit(&state, &headers, remote) {
        Ok(principal) => principal,
        Err(refusal) => return Ok(*refusal),
    };
    let lift = match method {
        Method::POST => false,
        Method::DELETE => true,
        _ => {
            return Err(ErrorResponse(HubError::new(
                405,
                IssueType::NotSupported,
                "/admin/revocations takes POST (revoke) and DELETE (lift)",
            )));
        }
    };
    let bad = |why: &str| ErrorResponse(HubError::bad_request(why));
    let body = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            ErrorResponse(HubError::new(
                413,
                IssueType::TooLong,
                format!("the body is over {MAX_BODY_BYTES} bytes"),
            ))
        })?;
    let request: Value = serde_json::from_slice(&body).map_err(|_| {
        bad("the body must be a JSON object: {\"jti\": …} or {\"subject\": …}, and \"reason\"")
    })?;
    let text = |name: &str| request.get(name).and_then(Value::as_str);
    let (kind, value) = match (text("jti"), text("subject")) {
        (Some(jti), None) => (RevocationKind::TokenId, jti),
        (None, Some(subject)) => (RevocationKind::Subject, subject),
        _ => return Err(bad("give exactly one of \"jti\" and \"subject\"")),
    };
    let caller = Caller {
        principal,
        request_id,
        network_address: remote.map(|a| a.ip().to_string()),
        base_url: String::new(),
    };
    let changed = state
        .hub
        .revoke(&caller, kind, value, text("reason").unwrap_or(""), lift)
        .await?;
    let diagnostics = match (lift, changed) {
        (false, _) => format!("{value} is revoked"),
        (true, true) => format!("the revocation of {value} is lifted"),
        (true, false) => {
            return Err(ErrorResponse(HubError::not_found(format!(
                "{value} is not revoked"
            ))));
        }
    };
    Ok(outcome_response(
        StatusCode::OK.as_u16(),
        &[Issue {
            severity: IssueSeverity::Information,
            code: IssueType::Informational,
            diagnostics,
            expression: None,
        }],
    ))
}
