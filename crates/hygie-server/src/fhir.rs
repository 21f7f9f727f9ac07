//! FHIR REST routing and content negotiation: from an HTTP request to one hub call.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use hygie_fhir::{Issue, IssueType};
use hygie_hub::{
    Caller, HistoryRequest, HubError, ReturnPreference, SearchScope, Stored, WriteOutcome,
};
use hygie_policy::Principal;
use serde_json::Value;

use crate::AppState;
use crate::middleware::RequestId;
use crate::response::{ErrorResponse, Throttled, fhir_json, outcome_response};

type Result<T> = std::result::Result<T, ErrorResponse>;

/// Any path outside the served ones.
pub async fn not_found(request: Request) -> Response {
    outcome_response(
        404,
        &[Issue::error(
            IssueType::NotFound,
            format!(
                "nothing is served at {}: the FHIR base is /fhir",
                request.uri().path()
            ),
        )],
    )
}

fn error(status: u16, code: IssueType, diagnostics: impl Into<String>) -> ErrorResponse {
    ErrorResponse(HubError::new(status, code, diagnostics))
}

/// The media types a FHIR JSON body may declare.
fn is_json_media_type(value: &str) -> bool {
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(
        essence.as_str(),
        "application/fhir+json" | "application/json"
    )
}

fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

/// 415 unless the body is declared as FHIR JSON (or, for PATCH, JSON Patch).
fn check_content_type(headers: &HeaderMap, patch: bool) -> Result<()> {
    let declared = content_type(headers);
    let ok = match declared {
        Some(value) if patch => value
            .split(';')
            .next()
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json-patch+json")),
        Some(value) => is_json_media_type(value),
        None => false,
    };
    if ok {
        return Ok(());
    }
    let expected = if patch {
        "application/json-patch+json"
    } else {
        "application/fhir+json (or application/json); XML is not supported"
    };
    Err(error(
        415,
        IssueType::NotSupported,
        format!(
            "unsupported Content-Type {}: send {expected}",
            declared
                .map(|d| format!("{d:?}"))
                .unwrap_or_else(|| "(none)".into())
        ),
    ))
}

/// 406 when the client accepts no JSON (e.g. only XML), or asks for `_format=xml`.
fn check_accept(headers: &HeaderMap, query: &str) -> Result<()> {
    for (name, value) in form_pairs(query) {
        if name == "_format" {
            let accepted = matches!(
                value.as_str(),
                "json" | "application/json" | "application/fhir+json"
            );
            if !accepted {
                return Err(error(
                    406,
                    IssueType::NotSupported,
                    format!("_format={value} is not supported: this server speaks JSON only"),
                ));
            }
        }
    }
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let acceptable = accept.split(',').any(|item| {
        let essence = item
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        matches!(
            essence.as_str(),
            "*/*" | "application/*" | "application/json" | "application/fhir+json" | ""
        )
    });
    if acceptable {
        Ok(())
    } else {
        Err(error(
            406,
            IssueType::NotSupported,
            format!(
                "Accept: {accept} cannot be served: this server speaks application/fhir+json only"
            ),
        ))
    }
}

fn form_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// `Prefer` header values we honour.
struct Prefer {
    return_preference: ReturnPreference,
    strict: bool,
}

fn prefer(headers: &HeaderMap) -> Prefer {
    let mut result = Prefer {
        return_preference: ReturnPreference::Representation,
        strict: false,
    };
    for value in headers.get_all("prefer") {
        let Ok(text) = value.to_str() else { continue };
        for token in text.split([',', ';']) {
            match token.trim().to_ascii_lowercase().as_str() {
                "return=minimal" => result.return_preference = ReturnPreference::Minimal,
                "return=representation" => {
                    result.return_preference = ReturnPreference::Representation
                }
                "return=operationoutcome" => {
                    result.return_preference = ReturnPreference::OperationOutcome
                }
                "handling=strict" => result.strict = true,
                "handling=lenient" => result.strict = false,
                _ => {}
            }
        }
    }
    result
}

fn header_text<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The base URL the client used: configured, or derived from a well-formed `Host` (HTTP/1.1
/// requires one; without it, `localhost`).
fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(base) = &state.config.public_base_url {
        return base.trim_end_matches('/').to_owned();
    }
    let host = header_text(headers, "host").filter(|host| {
        !host.is_empty()
            && host.len() <= 255
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
    });
    let host = host.unwrap_or("localhost");
    format!("{}://{host}/fhir", state.config.scheme)
}

/// The request body, read at most once, remembering whether it was read to its end: a
/// response sent before that must close the connection, or the unread bytes would be
/// taken for the next request on it.
struct BodySlot {
    body: Option<Body>,
    declared: bool,
    fully_read: bool,
}

impl BodySlot {
    fn new(body: Body, headers: &HeaderMap) -> BodySlot {
        let declared = headers.contains_key(header::TRANSFER_ENCODING)
            || headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim() != "0");
        BodySlot {
            body: Some(body),
            declared,
            fully_read: false,
        }
    }

    fn must_close_connection(&self) -> bool {
        self.declared && !self.fully_read
    }

    /// The raw bytes, within the size limit.
    async fn bytes(&mut self, limit: usize) -> Result<bytes::Bytes> {
        let body = self.body.take().unwrap_or_else(Body::empty);
        let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
            error(
                413,
                IssueType::TooCostly,
                format!("the request body is larger than the limit (max_body_bytes = {limit})"),
            )
        })?;
        self.fully_read = true;
        Ok(bytes)
    }

    /// Reads the body, checks its nesting depth before parsing, and parses it.
    async fn json(&mut self, state: &AppState) -> Result<Value> {
        let bytes = self.bytes(state.config.max_body_bytes).await?;
        if bytes.is_empty() {
            return Err(error(400, IssueType::Invalid, "the request body is empty"));
        }
        hygie_fhir::json_depth::check_json_depth(&bytes, state.config.max_json_depth)
            .map_err(|e| error(400, IssueType::TooCostly, format!("{e} (max_json_depth)")))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            error(
                400,
                IssueType::Structure,
                format!("the body is not valid JSON: {e}"),
            )
        })
    }
}

fn resource_response(stored: &Stored, status: StatusCode, base: &str) -> Response {
    let mut response = fhir_json(status, stored.body.clone());
    set_version_headers(response.headers_mut(), stored, base, false);
    response
}

fn set_version_headers(headers: &mut HeaderMap, stored: &Stored, base: &str, location: bool) {
    if let Ok(etag) = HeaderValue::from_str(&stored.etag()) {
        headers.insert(header::ETAG, etag);
    }
    if let Ok(modified) = HeaderValue::from_str(&stored.last_modified()) {
        headers.insert(header::LAST_MODIFIED, modified);
    }
    if location
        && let Ok(location) =
            HeaderValue::from_str(&format!("{base}/{}", stored.versioned_reference()))
    {
        headers.insert(header::LOCATION, location);
    }
}

fn write_response(outcome: WriteOutcome, preference: ReturnPreference, base: &str) -> Response {
    let status = StatusCode::from_u16(outcome.status).unwrap_or(StatusCode::OK);
    let stored = outcome.stored;
    let mut response = match preference {
        ReturnPreference::Representation => fhir_json(status, stored.body.clone()),
        ReturnPreference::Minimal => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = status;
            response
        }
        ReturnPreference::OperationOutcome => {
            let verb = if outcome.status == 201 {
                "created"
            } else {
                "updated"
            };
            let outcome = hygie_fhir::outcome::operation_outcome(&[Issue {
                severity: hygie_fhir::IssueSeverity::Information,
                code: IssueType::Informational,
                diagnostics: format!("{} {verb}", stored.versioned_reference()),
                expression: None,
            }]);
            fhir_json(status, serde_json::to_vec(&outcome).expect("serializes"))
        }
    };
    set_version_headers(response.headers_mut(), &stored, base, true);
    response
}

fn method_not_allowed(method: &Method, path: &str, allowed: &str) -> ErrorResponse {
    error(
        405,
        IssueType::NotSupported,
        format!("{method} is not supported on {path}; allowed: {allowed}"),
    )
}

/// The single FHIR entry point: parses the path and dispatches to the hub.
pub async fn dispatch(State(state): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let mut body = BodySlot::new(body, &parts.headers);
    let mut response = match dispatch_inner(state, parts, &mut body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    if body.must_close_connection() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

async fn dispatch_inner(
    state: AppState,
    parts: http::request::Parts,
    body: &mut BodySlot,
) -> Result<Response> {
    let method = parts.method.clone();
    let headers = parts.headers;
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let (remote, request_id) = origin(&parts.extensions);
    check_accept(&headers, &query)?;
    let base = base_url(&state, &headers);
    let principal = match admit(&state, &headers, remote, &request_id).await {
        Ok(principal) => principal,
        Err(refusal) => return Ok(*refusal),
    };
    let caller = Caller {
        principal,
        request_id,
        network_address: remote.map(|a| a.ip().to_string()),
        base_url: base.clone(),
        break_glass: break_glass_reason(&headers)?,
    };
    let hub = &state.hub;
    let prefer = prefer(&headers);
    let segments: Vec<&str> = path
        .trim_start_matches("/fhir")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let if_match = header_text(&headers, "if-match");
    let response = match (segments.as_slice(), &method) {
        (["AuditEvent"], &Method::GET) => {
            fhir_json(StatusCode::OK, hub.search_audit(&caller, &query).await?)
        }
        (["AuditEvent", "_search"], &Method::POST) => {
            let combined = form_search(&state, &headers, body, &query).await?;
            fhir_json(StatusCode::OK, hub.search_audit(&caller, &combined).await?)
        }
        (["AuditEvent", id], &Method::GET) => {
            fhir_json(StatusCode::OK, hub.read_audit(&caller, id).await?)
        }
        (["AuditEvent", ..], _) => {
            return Err(error(
                405,
                IssueType::NotSupported,
                "AuditEvents are the hub's audit trail: written by the hub alone, never created, changed or deleted through the API",
            ));
        }
        (["Patient", patient_id, "$access-log"], &Method::GET) => fhir_json(
            StatusCode::OK,
            hub.access_log(&caller, patient_id, &query).await?,
        ),
        (["Patient", _, "$access-log"], _) => {
            return Err(method_not_allowed(&method, &path, "GET"));
        }
        ([], &Method::POST) => {
            check_content_type(&headers, false)?;
            let bundle = body.json(&state).await?;
            let bytes = hub
                .bundle(&caller, bundle, prefer.return_preference)
                .await?;
            fhir_json(StatusCode::OK, bytes)
        }
        ([], _) => {
            return Err(method_not_allowed(
                &method,
                "/fhir",
                "POST (batch, transaction)",
            ));
        }
        (["metadata"], &Method::GET) => {
            let statement = hub.capability_statement(&base);
            fhir_json(
                StatusCode::OK,
                serde_json::to_vec(&statement).expect("serializes"),
            )
        }
        (["metadata"], _) => return Err(method_not_allowed(&method, &path, "GET")),
        (["_history"], &Method::GET) => {
            let bytes = hub
                .history(
                    &caller,
                    HistoryRequest {
                        query,
                        ..HistoryRequest::default()
                    },
                )
                .await?;
            fhir_json(StatusCode::OK, bytes)
        }
        ([resource_type], &Method::GET) => {
            let scope = SearchScope {
                resource_type: (*resource_type).to_owned(),
                compartment: None,
            };
            let bytes = hub.search(&caller, scope, &query, prefer.strict).await?;
            fhir_json(StatusCode::OK, bytes)
        }
        (["Patient", patient_id, "$everything"], &Method::GET) => {
            let bytes = hub.everything(&caller, patient_id, &query).await?;
            fhir_json(StatusCode::OK, bytes)
        }
        ([compartment_type, compartment_id, resource_type], &Method::GET)
            if !resource_type.starts_with('$') && *resource_type != "_history" =>
        {
            let scope = SearchScope {
                resource_type: (*resource_type).to_owned(),
                compartment: Some(((*compartment_type).to_owned(), (*compartment_id).to_owned())),
            };
            let bytes = hub.search(&caller, scope, &query, prefer.strict).await?;
            fhir_json(StatusCode::OK, bytes)
        }
        ([resource_type, "_search"], &Method::POST) => {
            let combined = form_search(&state, &headers, body, &query).await?;
            let scope = SearchScope {
                resource_type: (*resource_type).to_owned(),
                compartment: None,
            };
            let bytes = hub.search(&caller, scope, &combined, prefer.strict).await?;
            fhir_json(StatusCode::OK, bytes)
        }
        ([resource_type], &Method::POST) => {
            check_content_type(&headers, false)?;
            let resource = body.json(&state).await?;
            let outcome = hub
                .create(
                    &caller,
                    resource_type,
                    resource,
                    header_text(&headers, "if-none-exist"),
                )
                .await?;
            write_response(outcome, prefer.return_preference, &base)
        }
        ([resource_type], &Method::PUT) => {
            check_content_type(&headers, false)?;
            if query.is_empty() {
                return Err(error(
                    400,
                    IssueType::Invalid,
                    "PUT on a type needs search criteria (conditional update) or an id in the URL",
                ));
            }
            let resource = body.json(&state).await?;
            let outcome = hub
                .conditional_update(&caller, resource_type, &query, resource, if_match)
                .await?;
            write_response(outcome, prefer.return_preference, &base)
        }
        ([_], _) => return Err(method_not_allowed(&method, &path, "GET, POST, PUT")),
        ([resource_type, "_history"], &Method::GET) => {
            let bytes = hub
                .history(
                    &caller,
                    HistoryRequest {
                        resource_type: Some(resource_type.to_string()),
                        id: None,
                        query,
                    },
                )
                .await?;
            fhir_json(StatusCode::OK, bytes)
        }
        ([resource_type, id], &Method::GET) => {
            let stored = hub
                .read_with_query(&caller, resource_type, id, &query, prefer.strict)
                .await?;
            resource_response(&stored, StatusCode::OK, &base)
        }
        ([resource_type, id], &Method::PUT) => {
            check_content_type(&headers, false)?;
            let resource = body.json(&state).await?;
            let outcome = hub
                .update(&caller, resource_type, id, resource, if_match)
                .await?;
            write_response(outcome, prefer.return_preference, &base)
        }
        ([resource_type, id], &Method::PATCH) => {
            check_content_type(&headers, true)?;
            let patch = body.json(&state).await?;
            let outcome = hub
                .patch(&caller, resource_type, id, patch, if_match)
                .await?;
            write_response(outcome, prefer.return_preference, &base)
        }
        ([resource_type, id], &Method::DELETE) => {
            let outcome = hub.delete(&caller, resource_type, id).await?;
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::NO_CONTENT;
            if let Ok(etag) = HeaderValue::from_str(&format!("W/\"{}\"", outcome.version)) {
                response.headers_mut().insert(header::ETAG, etag);
            }
            response
        }
        ([_, _], _) => {
            return Err(method_not_allowed(
                &method,
                &path,
                "GET, PUT, PATCH, DELETE",
            ));
        }
        ([resource_type, id, "_history"], &Method::GET) => {
            let bytes = hub
                .history(
                    &caller,
                    HistoryRequest {
                        resource_type: Some(resource_type.to_string()),
                        id: Some(id.to_string()),
                        query,
                    },
                )
                .await?;
            fhir_json(StatusCode::OK, bytes)
        }
        ([resource_type, id, "_history", version], &Method::GET) => {
            let stored = hub
                .vread_with_query(&caller, resource_type, id, version, &query, prefer.strict)
                .await?;
            resource_response(&stored, StatusCode::OK, &base)
        }
        ([_, _, "_history", _], _) => return Err(method_not_allowed(&method, &path, "GET")),
        _ => {
            return Err(error(
                404,
                IssueType::NotFound,
                format!("{path} is not a FHIR endpoint of this server"),
            ));
        }
    };
    Ok(response)
}

/// The parameters of `POST Type/_search`: the form body, after the URL's query if any.
async fn form_search(
    state: &AppState,
    headers: &HeaderMap,
    body: &mut BodySlot,
    query: &str,
) -> Result<String> {
    let is_form =
        content_type(headers).is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(error(
            415,
            IssueType::NotSupported,
            "POST _search takes application/x-www-form-urlencoded parameters",
        ));
    }
    let bytes = body.bytes(state.config.max_body_bytes).await?;
    let form = String::from_utf8_lossy(&bytes);
    Ok(match (query.is_empty(), form.is_empty()) {
        (true, _) => form.into_owned(),
        (false, true) => query.to_owned(),
        (false, false) => format!("{query}&{form}"),
    })
}

/// The client's address and the request id, as the connection and middleware layers
/// attached them.
pub(crate) fn origin(extensions: &http::Extensions) -> (Option<SocketAddr>, String) {
    let remote = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    let request_id = extensions
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    (remote, request_id)
}

/// The rate limits and the credentials of a request: who it comes from, or the answer that
/// refuses it (429, 401). Async: a token naming a provider's key not known yet waits for
/// one JWKS fetch (bounded, rate-limited; see `hygie_auth::provider`).
pub(crate) async fn admit(
    state: &AppState,
    headers: &HeaderMap,
    remote: Option<SocketAddr>,
    request_id: &str,
) -> std::result::Result<Principal, Box<Response>> {
    let now = std::time::Instant::now();
    if let Some(address) = remote
        && let Err(wait) = state.by_address.check(&address.ip().to_string(), now)
    {
        return Err(Box::new(Throttled(wait).into_response()));
    }
    let principal = match principal(state, headers).await {
        Ok(principal) => principal,
        Err(refusal) => {
            // A failed sign-in is an access attempt: recorded (BALP), then refused. The
            // refusal stands even if the record cannot be written.
            let address = remote.map(|a| a.ip().to_string());
            if let Err(error) = state
                .hub
                .audit_failed_authentication(address, request_id, &refusal.0.to_string())
                .await
            {
                tracing::error!(%error, "cannot record a failed authentication");
            }
            return Err(Box::new(refusal.into_response()));
        }
    };
    if principal.access.is_some()
        && let Err(wait) = state.by_principal.check(&principal.subject, now)
    {
        return Err(Box::new(Throttled(wait).into_response()));
    }
    Ok(principal)
}

/// Who the request comes from: the development principal under `--no-auth`, the bearer of
/// a verified token, or anonymous (no `Authorization`, refused by the policy). A token that
/// does not verify is refused here with 401 and the reason.
async fn principal(state: &AppState, headers: &HeaderMap) -> Result<Principal> {
    if state.config.no_auth {
        return Ok(Principal::development());
    }
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(Principal::anonymous());
    };
    let unauthorized = |why: String| ErrorResponse(HubError::new(401, IssueType::Login, why));
    let value = value
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not ASCII".to_owned()))?;
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => {
            return Err(unauthorized(
                "only Authorization: Bearer <token> is accepted".to_owned(),
            ));
        }
    };
    let Some(verifier) = &state.config.tokens else {
        return Err(unauthorized("this server accepts no tokens".to_owned()));
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut verified = verifier.verify_refreshing(token, now).await;
    if verified == Err(hygie_auth::AuthError::UnknownKey) && own_keys_may_be_reread(state) {
        // Perhaps a key rotated on another hub process: read the keys again, once.
        match crate::refresh_token_keys(&state.hub, verifier).await {
            Ok(_) => verified = verifier.verify(token, now),
            Err(error) => tracing::error!(%error, "cannot read the token signing keys again"),
        }
    }
    let claims = verified.map_err(|error| {
        tracing::warn!(%error, "bearer token refused");
        unauthorized(format!("invalid bearer token: {error}"))
    })?;
    let scopes = hygie_policy::ScopeSet::parse(&claims.scope, hygie_fhir::schema::is_resource_type)
        .map_err(|error| unauthorized(format!("invalid bearer token: scope: {error}")))?;
    Ok(Principal::token(
        &claims.subject,
        hygie_policy::TokenAccess {
            token_id: claims.token_id,
            roles: claims.roles,
            scopes,
            patient: claims.patient,
        },
    ))
}

/// Whether a token naming an unknown key may make this process read the signing keys
/// again: at most once per [`crate::OWN_KEYS_REREAD_MIN`].
fn own_keys_may_be_reread(state: &AppState) -> bool {
    let now = std::time::Instant::now();
    let mut last = state
        .own_keys_reread
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    match *last {
        Some(at) if now.duration_since(at) < crate::OWN_KEYS_REREAD_MIN => false,
        _ => {
            *last = Some(now);
            true
        }
    }
}

/// `GET /fhir/.well-known/smart-configuration`: what a SMART client needs to know. This hub
/// has no authorization endpoint of its own: tokens come from `hygie token` (signed with the
/// keys of `jwks.json`) or from the site's OpenID Connect providers (`[[auth.providers]]`),
/// whose own discovery documents clients use.
pub(crate) async fn smart_configuration(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Response {
    let base = base_url(&state, &headers);
    let document = serde_json::json!({
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "grant_types_supported": [],
        "token_endpoint_auth_methods_supported": [],
        "scopes_supported": [
            "openid", "fhirUser", "user/*.cruds", "user/*.rs", "system/*.cruds", "system/*.rs"
        ],
        "response_types_supported": [],
        "capabilities": ["permission-v1", "permission-v2"],
    });
    fhir_json_plain(document)
}

/// `X-Break-Glass-Reason`, as UTF-8 (a clinician writes in their own language); the hub
/// checks its length and content.
fn break_glass_reason(headers: &HeaderMap) -> std::result::Result<Option<String>, ErrorResponse> {
    let Some(value) = headers.get("x-break-glass-reason") else {
        return Ok(None);
    };
    std::str::from_utf8(value.as_bytes())
        .map(|reason| Some(reason.to_owned()))
        .map_err(|_| {
            ErrorResponse(
                HubError::bad_request("X-Break-Glass-Reason must be UTF-8 text")
                    .located_in("X-Break-Glass-Reason"),
            )
        })
}

/// `GET /fhir/.well-known/jwks.json`: the public keys tokens of this hub are signed with.
pub(crate) async fn jwks(State(state): State<AppState>) -> Response {
    match &state.config.tokens {
        Some(verifier) => fhir_json_plain(
            verifier.jwks(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0),
            ),
        ),
        None => fhir_json_plain(serde_json::json!({ "keys": [] })),
    }
}

fn fhir_json_plain(document: Value) -> Response {
    let mut response = (
        StatusCode::OK,
        serde_json::to_vec(&document).expect("a JSON document serializes"),
    )
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        assert!(is_json_media_type("application/fhir+json"));
        assert!(is_json_media_type("application/fhir+json; charset=UTF-8"));
        assert!(is_json_media_type("Application/JSON"));
        assert!(!is_json_media_type("application/fhir+xml"));
        assert!(!is_json_media_type("application/xml"));
        assert!(!is_json_media_type("text/plain"));
    }

    #[test]
    fn accept_header() {
        let mut headers = HeaderMap::new();
        assert!(check_accept(&headers, "").is_ok());
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/fhir+xml"),
        );
        assert_eq!(check_accept(&headers, "").unwrap_err().0.status, 406);
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/fhir+xml, application/fhir+json;q=0.5"),
        );
        assert!(check_accept(&headers, "").is_ok());
        assert_eq!(
            check_accept(&HeaderMap::new(), "_format=xml")
                .unwrap_err()
                .0
                .status,
            406
        );
    }
}
