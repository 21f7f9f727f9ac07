//! FHIR R4 JSON for Hygie: validation against the official R4 structure definitions,
//! search (parameters, index extraction, query parsing), the `_summary=true` subset of a
//! resource, OperationOutcome, Bundle helpers and the CapabilityStatement.
//!
//! Pure: this crate knows nothing about HTTP, SQL or files. Inner crates exchange plain
//! `serde_json::Value`s and the types below; only `hygie-server` knows the wire.
//!
//! ```
//! use serde_json::json;
//! let patient = json!({"resourceType": "Patient", "birthDate": "1970-13-01"});
//! let issues = hygie_fhir::validate::validate_resource(&patient).unwrap_err();
//! assert_eq!(issues[0].expression.as_deref(), Some("Patient.birthDate"));
//! ```
#![forbid(unsafe_code)]

pub mod json_depth;
pub mod outcome;
pub mod schema;
pub mod search;
pub mod summary;
pub mod validate;

pub use outcome::{Issue, IssueSeverity, IssueType};
