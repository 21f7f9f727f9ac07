//! Audit records for Hygie: one [`AuditRecord`] per access decision, serialized as a FHIR
//! R4 AuditEvent (shaped after IHE Basic Audit Log Patterns), stored as a leaf of the audit
//! log in the same transaction as the data it concerns.
//!
//! The leaf bytes are what the Merkle log hashes ([`leaf_hash`], RFC 9162 §2.1.1), so the
//! serialization is deterministic: the same record always gives the same bytes.
//!
//! ```
//! use hygie_audit::{AuditOutcome, AuditRecord};
//! let record = AuditRecord::new("read", "development", 1_700_000_000_000_000)
//!     .entity("Patient/123/_history/2");
//! let leaf = record.to_leaf();
//! assert!(std::str::from_utf8(&leaf).unwrap().contains("Patient/123/_history/2"));
//! assert_eq!(hygie_audit::leaf_hash(&leaf).len(), 32);
//! # let _ = AuditOutcome::Success;
//! ```
#![forbid(unsafe_code)]

use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// `AuditEvent.outcome`: 0 success, 4 minor failure (the client's fault), 8 serious failure
/// (the server's fault), 12 major failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditOutcome {
    Success,
    MinorFailure,
    SeriousFailure,
}

impl AuditOutcome {
    pub fn code(self) -> &'static str {
        match self {
            AuditOutcome::Success => "0",
            AuditOutcome::MinorFailure => "4",
            AuditOutcome::SeriousFailure => "8",
        }
    }

    /// The outcome of an HTTP-style status: 2xx/3xx success, 4xx minor, 5xx serious.
    pub fn from_status(status: u16) -> AuditOutcome {
        match status {
            0..=399 => AuditOutcome::Success,
            400..=499 => AuditOutcome::MinorFailure,
            _ => AuditOutcome::SeriousFailure,
        }
    }
}

/// One access, as the hub saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// FHIR interaction code (`read`, `create`, `search-type`, `transaction`, …).
    pub interaction: String,
    /// The principal's subject.
    pub who: String,
    /// Microseconds since the Unix epoch.
    pub recorded_us: i64,
    pub outcome: AuditOutcome,
    pub outcome_description: Option<String>,
    /// `Type/id/_history/version` (or `Type/id`, or `Type`) of each resource touched.
    pub entities: Vec<String>,
    /// The query string of a search or history, recorded base64-encoded as BALP asks.
    pub query: Option<String>,
    pub network_address: Option<String>,
    pub request_id: Option<String>,
}

impl AuditRecord {
    pub fn new(interaction: &str, who: &str, recorded_us: i64) -> AuditRecord {
        AuditRecord {
            interaction: interaction.to_owned(),
            who: who.to_owned(),
            recorded_us,
            outcome: AuditOutcome::Success,
            outcome_description: None,
            entities: Vec::new(),
            query: None,
            network_address: None,
            request_id: None,
        }
    }

    pub fn entity(mut self, reference: impl Into<String>) -> AuditRecord {
        self.entities.push(reference.into());
        self
    }

    /// The DICOM action code BALP uses for an interaction: C, R, U, D or E.
    fn action_code(&self) -> &'static str {
        match self.interaction.as_str() {
            "create" => "C",
            "read" | "vread" => "R",
            "update" | "patch" => "U",
            "delete" => "D",
            _ => "E",
        }
    }

    /// The record as a FHIR R4 AuditEvent.
    pub fn to_audit_event(&self) -> Value {
        let recorded =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.recorded_us) * 1_000)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned());
        let mut agent = json!({
            "type": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                "code": "IRCP",
            }]},
            "who": {"display": self.who},
            "requestor": true,
        });
        if let Some(address) = &self.network_address {
            agent["network"] = json!({"address": address, "type": "2"});
        }
        let mut event = json!({
            "resourceType": "AuditEvent",
            "type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                "code": "rest",
                "display": "RESTful Operation",
            },
            "subtype": [{
                "system": "http://hl7.org/fhir/restful-interaction",
                "code": self.interaction,
            }],
            "action": self.action_code(),
            "recorded": recorded,
            "outcome": self.outcome.code(),
            "agent": [agent],
            "source": {"observer": {"display": "hygie"}, "type": [{
                "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                "code": "4",
            }]},
        });
        if let Some(description) = &self.outcome_description {
            event["outcomeDesc"] = json!(description);
        }
        let mut entities: Vec<Value> = self
            .entities
            .iter()
            .map(|reference| json!({"what": {"reference": reference}}))
            .collect();
        if let Some(query) = &self.query {
            entities.push(json!({
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
                "query": base64::engine::general_purpose::STANDARD.encode(query),
            }));
        }
        if !entities.is_empty() {
            event["entity"] = Value::Array(entities);
        }
        if let Some(request_id) = &self.request_id {
            event["meta"] = json!({"tag": [{
                "system": "urn:hygie:request-id",
                "code": request_id,
            }]});
        }
        event
    }

    /// The leaf bytes stored in the audit log: the AuditEvent as compact JSON.
    pub fn to_leaf(&self) -> Vec<u8> {
        serde_json::to_vec(&self.to_audit_event()).expect("a JSON value always serializes")
    }
}

/// RFC 9162 §2.1.1 leaf hash: `SHA-256(0x00 ‖ leaf)`.
pub fn leaf_hash(leaf: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(leaf);
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_hash_of_empty_leaf_matches_rfc_6962_vector() {
        // The hash of the empty leaf from the Certificate Transparency test vectors.
        let expected = "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d";
        let hex: String = leaf_hash(b"").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected);
    }

    #[test]
    fn audit_event_carries_who_what_outcome_and_query() {
        let mut record = AuditRecord::new("search-type", "Practitioner/7", 0).entity("Patient");
        record.outcome = AuditOutcome::from_status(403);
        record.query = Some("name=smith".to_owned());
        record.network_address = Some("127.0.0.1".to_owned());
        let event = record.to_audit_event();
        assert_eq!(event["outcome"], "4");
        assert_eq!(event["action"], "E");
        assert_eq!(event["agent"][0]["who"]["display"], "Practitioner/7");
        assert_eq!(event["agent"][0]["network"]["address"], "127.0.0.1");
        assert_eq!(event["entity"][1]["query"], "bmFtZT1zbWl0aA==");
        assert_eq!(event["recorded"], "1970-01-01T00:00:00Z");
    }

    #[test]
    fn leaf_is_deterministic() {
        let record = AuditRecord::new("read", "x", 12).entity("Patient/1/_history/1");
        assert_eq!(record.to_leaf(), record.clone().to_leaf());
    }
}
