//! The hub's error: a FHIR status and the OperationOutcome issues that explain it.

use hygie_fhir::{Issue, IssueType};
use hygie_store::StoreError;

/// A failed request, as FHIR reports it: an HTTP-style status and OperationOutcome issues.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {}", issues.first().map(|i| i.diagnostics.as_str()).unwrap_or(""))]
pub struct HubError {
    pub status: u16,
    pub issues: Vec<Issue>,
}

impl HubError {
    pub fn new(status: u16, code: IssueType, diagnostics: impl Into<String>) -> HubError {
        HubError {
            status,
            issues: vec![Issue::error(code, diagnostics)],
        }
    }

    pub fn with_issues(status: u16, issues: Vec<Issue>) -> HubError {
        HubError { status, issues }
    }

    pub fn bad_request(diagnostics: impl Into<String>) -> HubError {
        HubError::new(400, IssueType::Invalid, diagnostics)
    }

    pub fn not_found(diagnostics: impl Into<String>) -> HubError {
        HubError::new(404, IssueType::NotFound, diagnostics)
    }

    pub fn gone(diagnostics: impl Into<String>) -> HubError {
        HubError::new(410, IssueType::Deleted, diagnostics)
    }

    pub fn precondition_failed(diagnostics: impl Into<String>) -> HubError {
        HubError::new(412, IssueType::Conflict, diagnostics)
    }

    pub fn conflict(diagnostics: impl Into<String>) -> HubError {
        HubError::new(409, IssueType::Conflict, diagnostics)
    }

    pub fn unprocessable(issues: Vec<Issue>) -> HubError {
        HubError::with_issues(422, issues)
    }

    pub fn too_large(diagnostics: impl Into<String>) -> HubError {
        HubError::new(413, IssueType::TooCostly, diagnostics)
    }

    /// Prefixes every issue's expression, e.g. with `Bundle.entry[3].resource`.
    pub fn located_in(mut self, prefix: &str) -> HubError {
        for issue in &mut self.issues {
            issue.expression = Some(match issue.expression.take() {
                // `Patient.name[0]` inside entry 3 becomes `Bundle.entry[3].resource.name[0]`.
                Some(expression) => match expression.split_once('.') {
                    Some((_, rest)) => format!("{prefix}.{rest}"),
                    None => prefix.to_owned(),
                },
                None => prefix.to_owned(),
            });
        }
        self
    }

    /// Maps a storage failure: conflicts are the client's (409); the rest are ours (5xx).
    pub fn from_store(error: StoreError) -> HubError {
        match error {
            StoreError::Conflict { .. } => HubError::conflict(format!(
                "{error}; another request changed this resource at the same time: read it again and retry"
            )),
            StoreError::Busy { .. } => {
                HubError::new(503, IssueType::Transient, format!("{error}; retry shortly"))
            }
            StoreError::TooCostly { limit_ms } => HubError::new(
                400,
                IssueType::TooCostly,
                format!(
                    "the search ran past its time limit ({limit_ms} ms) and was stopped: narrow it (a more selective parameter, a shorter date range)"
                ),
            ),
            StoreError::Unsupported(message) => {
                HubError::new(400, IssueType::NotSupported, message)
            }
            StoreError::Erased(what) => HubError::new(
                410,
                IssueType::Deleted,
                format!(
                    "{what} was erased (its data key was destroyed, GDPR Art. 17): it can no longer be read or written"
                ),
            ),
            StoreError::Closed => HubError::new(
                503,
                IssueType::Transient,
                "the hub is shutting down; retry on another node or shortly",
            ),
            other => {
                tracing::error!(error = %other, "store failure");
                HubError::new(
                    500,
                    IssueType::Exception,
                    "the request could not be stored or audited, so it was not performed",
                )
            }
        }
    }
}
