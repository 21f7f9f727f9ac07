//! Cross-cutting HTTP concerns: request ids, time limits, panics, readiness.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use hygie_fhir::{Issue, IssueType};

use crate::AppState;
use crate::response::outcome_response;

/// The request's id, as echoed in `X-Request-Id` and recorded in logs and audit.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

const REQUEST_ID_MAX_LEN: usize = 128;

fn acceptable_request_id(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let ok = !text.is_empty()
        && text.len() <= REQUEST_ID_MAX_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    ok.then(|| text.to_owned())
}

/// Echoes a well-formed `X-Request-Id` or makes one, and logs the request in its span.
pub async fn request_id(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(acceptable_request_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    request.extensions_mut().insert(RequestId(id.clone()));
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let span = tracing::info_span!("request", request_id = %id, %method, %path);
    let started = std::time::Instant::now();
    let mut response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    let status = response.status().as_u16();
    let elapsed_us = started.elapsed().as_micros() as u64;
    // Every access is in the audit log; the process log keeps failures at the default
    // level and the rest at debug, so that it stays cheap at tens of thousands of requests/s.
    span.in_scope(|| {
        if status >= 500 {
            tracing::warn!(status, elapsed_us, "failed");
        } else {
            tracing::debug!(status, elapsed_us, "handled");
        }
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// Answers 503 with an OperationOutcome when a request runs past the limit.
pub async fn time_limit(limit: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => outcome_response(
            503,
            &[Issue::error(
                IssueType::Timeout,
                format!(
                    "the request took longer than the limit (request_timeout = {} ms); it may or may not have been applied: read before retrying a write",
                    limit.as_millis()
                ),
            )],
        ),
    }
}

pub fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    outcome_response(
        500,
        &[Issue::error(
            IssueType::Exception,
            "internal error; the request was not completed",
        )],
    )
}

/// `/readyz`: 200 when the store accepts writes (and so audit leaves), else 503.
pub async fn readyz(State(state): State<AppState>) -> Response {
    match state.hub.ready().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(error) => outcome_response(503, &error.issues),
    }
}
