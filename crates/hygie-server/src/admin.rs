//! `POST /admin/policy/reload`: reads the settings file again and puts its policy (role
//! ceilings, need-to-know, labels, masks) in force from the next request on; a file that
//! does not load is refused and the policy in force stays. Admin role (`Action::ReloadPolicy`).
//!
//! `/admin/break-glass`: the review items of break-the-glass accesses, for the DPO
//! (`GET`, `?all=true` for closed ones too; `POST /admin/break-glass/{id}/close` with
//! `{"review": "…"}`). Needs the dpo or security role (`Action::ReviewBreakGlass`).
//!
//! `POST /admin/patients/{id}/erase` with `{"reason": "…"}`: erases a patient (GDPR
//! Art. 17), for the dpo role alone (`Action::ErasePatient`); the hub needs its vault.
//!
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

/// The caller of an admin request: its credentials checked (rate limits, token), or the
/// refusal to answer.
async fn admitted(
    state: &AppState,
    parts: &http::request::Parts,
) -> std::result::Result<Caller, Response> {
    let (remote, request_id) = origin(&parts.extensions);
    let principal = admit(state, &parts.headers, remote, &request_id)
        .await
        .map_err(|refusal| *refusal)?;
    Ok(Caller {
        principal,
        request_id,
        network_address: remote.map(|a| a.ip().to_string()),
        base_url: String::new(),
        break_glass: None,
    })
}

/// The largest request body accepted here, bytes.
const MAX_BODY_BYTES: usize = 4 * 1024;

/// An admin request's body, refused (413) beyond [`MAX_BODY_BYTES`].
async fn bounded_body(body: axum::body::Body) -> Result<axum::body::Bytes, ErrorResponse> {
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            ErrorResponse(HubError::new(
                413,
                IssueType::TooLong,
                format!("the body is over {MAX_BODY_BYTES} bytes"),
            ))
        })
}

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
    let caller = match admitted(&state, &parts).await {
        Ok(caller) => caller,
        Err(refusal) => return Ok(refusal),
    };
    let lift = match parts.method {
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
    let body = bounded_body(body).await?;
    let request: Value = serde_json::from_slice(&body).map_err(|_| {
        bad("the body must be a JSON object: {\"jti\": …} or {\"subject\": …}, and \"reason\"")
    })?;
    let text = |name: &str| request.get(name).and_then(Value::as_str);
    let (kind, value) = match (text("jti"), text("subject")) {
        (Some(jti), None) => (RevocationKind::TokenId, jti),
        (None, Some(subject)) => (RevocationKind::Subject, subject),
        _ => return Err(bad("give exactly one of \"jti\" and \"subject\"")),
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

pub(crate) async fn break_glass(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Response {
    match handle_break_glass(state, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn handle_break_glass(
    state: AppState,
    request: axum::extract::Request,
) -> Result<Response, ErrorResponse> {
    let (parts, body) = request.into_parts();
    let caller = match admitted(&state, &parts).await {
        Ok(caller) => caller,
        Err(refusal) => return Ok(refusal),
    };
    let path = parts.uri.path().trim_end_matches('/');
    let closing = path
        .strip_prefix("/admin/break-glass/")
        .and_then(|rest| rest.strip_suffix("/close"));
    match (&parts.method, closing) {
        (&Method::GET, None) if path == "/admin/break-glass" => {
            let all = match parts.uri.query().unwrap_or("") {
                "" | "all=false" => false,
                "all=true" => true,
                other => {
                    return Err(ErrorResponse(HubError::bad_request(format!(
                        "/admin/break-glass takes all=true or all=false, not {other:?}"
                    ))));
                }
            };
            let grants = state.hub.break_glass_reviews(&caller, all).await?;
            let items: Vec<Value> = grants
                .into_iter()
                .map(|grant| {
                    serde_json::json!({
                        "id": grant.grant_id,
                        "subject": grant.subject,
                        "patient": format!("Patient/{}", grant.patient),
                        "reason": grant.reason,
                        "opened": hygie_hub::format_instant(grant.opened_us),
                        "until": hygie_hub::format_instant(grant.until_us),
                        "request_id": grant.request_id,
                        "closed": grant.closed_us.map(hygie_hub::format_instant),
                        "closed_by": grant.closed_by,
                        "review": grant.review,
                    })
                })
                .collect();
            let body = serde_json::to_vec(&serde_json::json!({ "items": items })).map_err(|e| {
                ErrorResponse(HubError::new(500, IssueType::Exception, e.to_string()))
            })?;
            Ok((
                StatusCode::OK,
                [(http::header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response())
        }
        (&Method::POST, Some(id)) => {
            let grant_id: i64 = id.parse().map_err(|_| {
                ErrorResponse(HubError::bad_request(format!(
                    "{id:?} is not a break-the-glass grant number"
                )))
            })?;
            let body = bounded_body(body).await?;
            let request: Value = serde_json::from_slice(&body).map_err(|_| {
                ErrorResponse(HubError::bad_request(
                    "the body must be a JSON object: {\"review\": \"…\"}",
                ))
            })?;
            let review = request.get("review").and_then(Value::as_str).unwrap_or("");
            state
                .hub
                .close_break_glass(&caller, grant_id, review)
                .await?;
            Ok(outcome_response(
                StatusCode::OK.as_u16(),
                &[Issue {
                    severity: IssueSeverity::Information,
                    code: IssueType::Informational,
                    diagnostics: format!("break-the-glass grant {grant_id} is reviewed and closed"),
                    expression: None,
                }],
            ))
        }
        _ => Err(ErrorResponse(HubError::new(
            405,
            IssueType::NotSupported,
            "/admin/break-glass takes GET; /admin/break-glass/{id}/close takes POST",
        ))),
    }
}

/// `POST /admin/patients/{id}/erase` with `{"reason": "…"}`: erases a patient (GDPR
/// Art. 17, crypto-shredding), for the dpo role. Answers what was erased.
pub(crate) async fn erase_patient(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    request: axum::extract::Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let caller = match admitted(&state, &parts).await {
        Ok(caller) => caller,
        Err(refusal) => return refusal,
    };
    let erased = async {
        let body = bounded_body(body).await?;
        let request: Value = serde_json::from_slice(&body).map_err(|_| {
            ErrorResponse(HubError::bad_request(
                "the body must be a JSON object: {\"reason\": \"…\"}",
            ))
        })?;
        let reason = request.get("reason").and_then(Value::as_str).unwrap_or("");
        let erasure = state.hub.erase_patient(&caller, &id, reason).await?;
        Ok::<_, ErrorResponse>(outcome_response(
            StatusCode::OK.as_u16(),
            &[Issue {
                severity: IssueSeverity::Information,
                code: IssueType::Informational,
                diagnostics: format!(
                    "Patient/{id} erased: {} data key(s) destroyed, {} version(s) of {} resource(s) can no longer be read; replace every copy of the key file with the hub's",
                    erasure.keys.len(),
                    erasure.versions,
                    erasure.resources
                ),
                expression: None,
            }],
        ))
    }
    .await;
    erased.unwrap_or_else(|error| error.into_response())
}

pub(crate) async fn reload_policy(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Response {
    let (parts, _) = request.into_parts();
    let caller = match admitted(&state, &parts).await {
        Ok(caller) => caller,
        Err(refusal) => return refusal,
    };
    let Some(source) = &state.config.policy_source else {
        return ErrorResponse(HubError::not_found(
            "this hub has no settings file to reload the policy from",
        ))
        .into_response();
    };
    // Decided before the file is read: only an administrator learns whether it loads.
    if let hygie_policy::Decision::Deny { .. } = state.hub.policy().decide(
        &caller.principal,
        hygie_policy::Action::ReloadPolicy,
        &hygie_policy::Target::system(),
    ) {
        return match state
            .hub
            .reload_policy(&caller, state.hub.policy().as_ref().clone())
            .await
        {
            Err(error) => ErrorResponse(error).into_response(),
            Ok(()) => ErrorResponse(HubError::new(500, IssueType::Exception, "unexpected"))
                .into_response(),
        };
    }
    let policy = match (source.0)() {
        Ok(policy) => policy,
        Err(why) => {
            return ErrorResponse(HubError::bad_request(format!(
                "the settings were not reloaded, the policy in force stays: {why}"
            )))
            .into_response();
        }
    };
    match state.hub.reload_policy(&caller, policy).await {
        Ok(()) => outcome_response(
            StatusCode::OK.as_u16(),
            &[Issue {
                severity: IssueSeverity::Information,
                code: IssueType::Informational,
                diagnostics: "the policy is reloaded: it holds from the next request on".to_owned(),
                expression: None,
            }],
        ),
        Err(error) => ErrorResponse(error).into_response(),
    }
}

/// `/admin/keys`: the keys the hub signs its own tokens with. `GET` lists them (key ids and
/// states, never a private key); `POST /admin/keys/rotate` with
/// `{"retire_previous": "after-expiry"}` (routine, the default) or `"now"` (the key may
/// have leaked) makes a new current key; `POST /admin/keys/{kid}/retire` ends a retiring
/// key's grace at once. Admin role (`Action::ManageKeys`), audited. The change holds on
/// this process at once, on the others within `auth.keys_refresh_seconds`, or as soon as
/// they meet a token signed with the new key.
pub(crate) async fn keys(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Response {
    match handle_keys(state, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn handle_keys(
    state: AppState,
    request: axum::extract::Request,
) -> Result<Response, ErrorResponse> {
    let (parts, body) = request.into_parts();
    let caller = match admitted(&state, &parts).await {
        Ok(caller) => caller,
        Err(refusal) => return Ok(refusal),
    };
    let Some(verifier) = state.config.tokens.clone() else {
        return Err(ErrorResponse(HubError::not_found(
            "this hub verifies no tokens (--no-auth): it has no signing keys in use",
        )));
    };
    let issuer = verifier.own_issuer().to_owned();
    let path = parts.uri.path().trim_end_matches('/');
    let rest = path.strip_prefix("/admin/keys").unwrap_or("");
    let keys = match (&parts.method, rest) {
        (&Method::GET, "") => state.hub.list_token_keys(&caller, &issuer).await?,
        (&Method::POST, "/rotate") => {
            let body = bounded_body(body).await?;
            let request: Value = if body.is_empty() {
                Value::Object(Default::default())
            } else {
                serde_json::from_slice(&body).map_err(|_| {
                    ErrorResponse(HubError::bad_request(
                        "the body must be a JSON object: {\"retire_previous\": \"after-expiry\" | \"now\"}",
                    ))
                })?
            };
            let retire = match request.get("retire_previous") {
                None => hygie_hub::Retire::AfterExpiry,
                Some(Value::String(s)) if s == "after-expiry" => hygie_hub::Retire::AfterExpiry,
                Some(Value::String(s)) if s == "now" => hygie_hub::Retire::Now,
                Some(other) => {
                    return Err(ErrorResponse(HubError::bad_request(format!(
                        "retire_previous is \"after-expiry\" or \"now\", not {other}"
                    ))));
                }
            };
            state.hub.rotate_token_key(&caller, &issuer, retire).await?
        }
        (&Method::POST, rest)
            if rest.starts_with('/')
                && rest.ends_with("/retire")
                && rest.len() > "//retire".len() =>
        {
            let key_id = &rest[1..rest.len() - "/retire".len()];
            state.hub.retire_token_key(&caller, &issuer, key_id).await?
        }
        _ => {
            return Err(ErrorResponse(HubError::new(
                405,
                IssueType::NotSupported,
                "/admin/keys takes GET; /admin/keys/rotate and /admin/keys/{kid}/retire take POST",
            )));
        }
    };
    if parts.method == Method::POST {
        verifier
            .set_own_keys(&keys.own_keys())
            .map_err(|e| ErrorResponse(HubError::new(500, IssueType::Exception, e.to_string())))?;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let body = serde_json::to_vec(&keys.describe(now))
        .map_err(|e| ErrorResponse(HubError::new(500, IssueType::Exception, e.to_string())))?;
    Ok((
        StatusCode::OK,
        [(http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}
