//! FHIR responses: resource bodies with their headers, and OperationOutcomes.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use hygie_fhir::Issue;
use hygie_hub::HubError;

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// A response with a FHIR JSON body.
pub fn fhir_json(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

/// An OperationOutcome response.
pub fn outcome_response(status: u16, issues: &[Issue]) -> Response {
    let outcome = hygie_fhir::outcome::operation_outcome(issues);
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(&outcome).expect("OperationOutcome serializes");
    let mut response = fhir_json(status, body);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"hygie\""),
        );
    }
    response
}

pub struct ErrorResponse(pub HubError);

impl IntoResponse for ErrorResponse {
    fn into_response(self) -> Response {
        outcome_response(self.0.status, &self.0.issues)
    }
}

impl From<HubError> for ErrorResponse {
    fn from(error: HubError) -> ErrorResponse {
        ErrorResponse(error)
    }
}

/// 429 with `Retry-After: wait_seconds`.
pub struct Throttled(pub u64);

impl IntoResponse for Throttled {
    fn into_response(self) -> Response {
        let issue = Issue::error(
            hygie_fhir::IssueType::Throttled,
            format!("too many requests: try again in {} s", self.0),
        );
        let mut response = outcome_response(429, &[issue]);
        if let Ok(value) = HeaderValue::from_str(&self.0.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}
