//! Audit records for Hygie: one [`AuditRecord`] per access decision, serialized as a FHIR
//! R4 AuditEvent (shaped after IHE Basic Audit Log Patterns), stored as a leaf of the audit
//! log in the same transaction as the data it concerns.
//!
//! The leaf bytes are what the Merkle log hashes ([`leaf_hash`], RFC 9162 §2.1.1), so the
//! serialization is deterministic: the same record always gives the same bytes.
//!
//! - [`merkle`]: the RFC 9162 tree over those leaves, as a store keeps it (perfect
//!   subtrees), with inclusion and consistency proofs, appends and a streaming verifier;
//! - [`checkpoint`]: C2SP signed notes, checkpoints (the signed tree head) and witness
//!   cosignatures.
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

pub mod checkpoint;
pub mod merkle;

pub use merkle::leaf_hash;

use base64::Engine;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

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
    /// Why the data was reached, when it is not plain treatment under a care relationship:
    /// `ETREAT` (emergency treatment, the glass broken), with the caller's stated reason.
    pub purpose_of_use: Option<PurposeOfUse>,
    /// A RESTful interaction (the default), or an authentication.
    pub kind: AuditEventKind,
    /// The ids of the patients whose data the access reached (one entity each, as BALP
    /// asks), so that a patient's access report finds every access to their record.
    pub patients: Vec<String>,
    /// The principal's roles (`clinician`, `dpo`, …): who they are, in a report.
    pub roles: Vec<String>,
}

/// What kind of event a record is: its AuditEvent `type` and `subtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuditEventKind {
    /// A FHIR RESTful interaction: type `rest`, subtype the interaction code.
    #[default]
    Rest,
    /// A sign-in attempt (a bearer token presented): DICOM `110114` User Authentication,
    /// subtype `110122` Login, as IHE BALP records authentication.
    Login,
}

/// `AuditEvent.entity.type`: 1 a person (the patient), 2 a system object (data, a query).
const ENTITY_TYPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";

/// The hub's role names (`clinician`, `dpo`, …), as `AuditEvent.agent.role` codings.
pub const ROLE_SYSTEM: &str = "urn:hygie:role";

/// DICOM's controlled terminology, for BALP's authentication events.
const DICOM_SYSTEM: &str = "http://dicom.nema.org/resources/ontology/DCM";

/// A purpose of use (v3 ActReason code) and the caller's own words for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurposeOfUse {
    pub code: String,
    pub reason: Option<String>,
}

impl PurposeOfUse {
    /// Emergency treatment: the access a broken glass opened.
    pub fn emergency(reason: &str) -> PurposeOfUse {
        PurposeOfUse {
            code: "ETREAT".to_owned(),
            reason: Some(reason.to_owned()),
        }
    }
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
            purpose_of_use: None,
            kind: AuditEventKind::Rest,
            patients: Vec::new(),
            roles: Vec::new(),
        }
    }

    /// A failed sign-in: who presented what is unknown (the token did not verify); the
    /// network address and the reason are what an investigation needs.
    pub fn failed_login(reason: &str, recorded_us: i64) -> AuditRecord {
        let mut record = AuditRecord::new("login", "unauthenticated", recorded_us);
        record.kind = AuditEventKind::Login;
        record.outcome = AuditOutcome::MinorFailure;
        record.outcome_description = Some(reason.to_owned());
        record
    }

    pub fn entity(mut self, reference: impl Into<String>) -> AuditRecord {
        self.entities.push(reference.into());
        self
    }

    /// `AuditEvent.type.code`: `rest`, or DICOM `110114` for an authentication.
    pub fn event_type_code(&self) -> &'static str {
        match self.kind {
            AuditEventKind::Rest => "rest",
            AuditEventKind::Login => "110114",
        }
    }

    /// `AuditEvent.subtype.code`: the interaction, or DICOM `110122` for a login.
    pub fn subtype_code(&self) -> &str {
        match self.kind {
            AuditEventKind::Rest => &self.interaction,
            AuditEventKind::Login => "110122",
        }
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
        serde_json::from_slice(&self.to_leaf()).expect("the leaf is JSON")
    }

    /// The leaf bytes stored in the audit log: the AuditEvent as compact JSON.
    ///
    /// Serialized from borrowed structs rather than a `Value` tree: this runs once per
    /// request, reads included, inside the store's transaction.
    pub fn to_leaf(&self) -> Vec<u8> {
        let fixed = &*FIXED_PARTS;
        let recorded = format_recorded(self.recorded_us);
        let query = self
            .query
            .as_ref()
            .map(|q| base64::engine::general_purpose::STANDARD.encode(q));
        let patient_references: Vec<String> = self
            .patients
            .iter()
            .map(|id| format!("Patient/{id}"))
            .collect();
        let mut entities: Vec<EntityOut<'_>> = patient_references
            .iter()
            .map(|reference| EntityOut {
                what: Some(ReferenceOut { reference }),
                entity_type: Some(&fixed.person_type),
                role: Some(&fixed.patient_role),
                query: None,
            })
            .collect();
        entities.extend(self.entities.iter().map(|reference| EntityOut {
            what: Some(ReferenceOut { reference }),
            entity_type: None,
            role: None,
            query: None,
        }));
        if let Some(query) = &query {
            entities.push(EntityOut {
                what: None,
                entity_type: Some(&fixed.query_type),
                role: None,
                query: Some(query),
            });
        }
        let event = AuditEventOut {
            resource_type: "AuditEvent",
            meta: self.request_id.as_deref().map(|code| MetaOut {
                tag: [Coding {
                    system: "urn:hygie:request-id",
                    code,
                    display: None,
                }],
            }),
            event_type: match self.kind {
                AuditEventKind::Rest => &fixed.rest_type,
                AuditEventKind::Login => &fixed.login_type,
            },
            subtype: [match self.kind {
                AuditEventKind::Rest => Coding {
                    system: "http://hl7.org/fhir/restful-interaction",
                    code: self.subtype_code(),
                    display: None,
                },
                AuditEventKind::Login => Coding {
                    system: DICOM_SYSTEM,
                    code: self.subtype_code(),
                    display: Some("Login"),
                },
            }],
            action: self.action_code(),
            recorded: &recorded,
            outcome: self.outcome.code(),
            outcome_desc: self.outcome_description.as_deref(),
            purpose_of_event: self.purpose_of_use.as_ref().map(|purpose| {
                [PurposeOut {
                    coding: [Coding {
                        system: "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                        code: &purpose.code,
                        display: None,
                    }],
                    text: purpose.reason.as_deref(),
                }]
            }),
            agent: [AgentOut {
                agent_type: &fixed.agent_type,
                who: Display { display: &self.who },
                role: (!self.roles.is_empty()).then(|| {
                    self.roles
                        .iter()
                        .map(|code| CodeableConcept {
                            coding: [Coding {
                                system: ROLE_SYSTEM,
                                code,
                                display: None,
                            }],
                        })
                        .collect()
                }),
                requestor: true,
                network: self.network_address.as_deref().map(|address| NetworkOut {
                    address,
                    network_type: "2",
                }),
            }],
            source: &fixed.source,
            entity: entities,
        };
        serde_json::to_vec(&event).expect("an AuditEvent always serializes")
    }
}

fn format_recorded(recorded_us: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(recorded_us) * 1_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

/// The parts of a leaf that never change, serialized once. serde_json escapes every
/// string it writes, keys included, and these are about half of a leaf's bytes: written
/// each time, they were most of the 13,000 instructions a leaf's escaping cost the writer
/// per audited read (bench/audit §9, §11).
struct FixedParts {
    rest_type: Box<RawValue>,
    login_type: Box<RawValue>,
    agent_type: Box<RawValue>,
    source: Box<RawValue>,
    person_type: Box<RawValue>,
    patient_role: Box<RawValue>,
    query_type: Box<RawValue>,
}

static FIXED_PARTS: std::sync::LazyLock<FixedParts> = std::sync::LazyLock::new(|| {
    fn raw(part: &impl Serialize) -> Box<RawValue> {
        serde_json::value::to_raw_value(part).expect("a fixed part serializes")
    }
    FixedParts {
        rest_type: raw(&Coding {
            system: "http://terminology.hl7.org/CodeSystem/audit-event-type",
            code: "rest",
            display: Some("RESTful Operation"),
        }),
        login_type: raw(&Coding {
            system: DICOM_SYSTEM,
            code: "110114",
            display: Some("User Authentication"),
        }),
        agent_type: raw(&CodeableConcept {
            coding: [Coding {
                system: "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                code: "IRCP",
                display: None,
            }],
        }),
        source: raw(&SourceOut {
            observer: Display { display: "hygie" },
            source_type: [Coding {
                system: "http://terminology.hl7.org/CodeSystem/security-source-type",
                code: "4",
                display: None,
            }],
        }),
        person_type: raw(&Coding {
            system: ENTITY_TYPE_SYSTEM,
            code: "1",
            display: Some("Person"),
        }),
        patient_role: raw(&Coding {
            system: "http://terminology.hl7.org/CodeSystem/object-role",
            code: "1",
            display: Some("Patient"),
        }),
        query_type: raw(&Coding {
            system: ENTITY_TYPE_SYSTEM,
            code: "2",
            display: None,
        }),
    }
});

#[derive(Serialize)]
struct AuditEventOut<'a> {
    #[serde(rename = "resourceType")]
    resource_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<MetaOut<'a>>,
    #[serde(rename = "type")]
    event_type: &'a RawValue,
    subtype: [Coding<'a>; 1],
    action: &'static str,
    recorded: &'a str,
    outcome: &'static str,
    #[serde(rename = "outcomeDesc", skip_serializing_if = "Option::is_none")]
    outcome_desc: Option<&'a str>,
    #[serde(rename = "purposeOfEvent", skip_serializing_if = "Option::is_none")]
    purpose_of_event: Option<[PurposeOut<'a>; 1]>,
    agent: [AgentOut<'a>; 1],
    source: &'a RawValue,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    entity: Vec<EntityOut<'a>>,
}

#[derive(Serialize)]
struct MetaOut<'a> {
    tag: [Coding<'a>; 1],
}

#[derive(Serialize)]
struct Coding<'a> {
    system: &'a str,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    display: Option<&'a str>,
}

#[derive(Serialize)]
struct PurposeOut<'a> {
    coding: [Coding<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
}

#[derive(Serialize)]
struct CodeableConcept<'a> {
    coding: [Coding<'a>; 1],
}

#[derive(Serialize)]
struct Display<'a> {
    display: &'a str,
}

#[derive(Serialize)]
struct AgentOut<'a> {
    #[serde(rename = "type")]
    agent_type: &'a RawValue,
    who: Display<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<Vec<CodeableConcept<'a>>>,
    requestor: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    network: Option<NetworkOut<'a>>,
}

#[derive(Serialize)]
struct NetworkOut<'a> {
    address: &'a str,
    #[serde(rename = "type")]
    network_type: &'static str,
}

#[derive(Serialize)]
struct SourceOut<'a> {
    observer: Display<'a>,
    #[serde(rename = "type")]
    source_type: [Coding<'a>; 1],
}

#[derive(Serialize)]
struct ReferenceOut<'a> {
    reference: &'a str,
}

#[derive(Serialize)]
struct EntityOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    what: Option<ReferenceOut<'a>>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    entity_type: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    query: Option<&'a str>,
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
        assert!(
            event.get("purposeOfEvent").is_none(),
            "no purpose unless one is given"
        );
    }

    #[test]
    fn a_broken_glass_is_recorded_as_emergency_treatment_with_its_reason() {
        let mut record = AuditRecord::new("read", "Practitioner/7", 0).entity("Observation/1");
        record.purpose_of_use = Some(PurposeOfUse::emergency("unconscious, no ID"));
        let event = record.to_audit_event();
        assert_eq!(event["purposeOfEvent"][0]["coding"][0]["code"], "ETREAT");
        assert_eq!(
            event["purposeOfEvent"][0]["coding"][0]["system"],
            "http://terminology.hl7.org/CodeSystem/v3-ActReason"
        );
        assert_eq!(event["purposeOfEvent"][0]["text"], "unconscious, no ID");
    }

    #[test]
    fn a_failed_sign_in_is_a_balp_user_authentication_login_that_failed() {
        let mut record = AuditRecord::failed_login("invalid bearer token: expired", 0);
        record.network_address = Some("192.0.2.7".to_owned());
        let event = record.to_audit_event();
        assert_eq!(event["type"]["system"], DICOM_SYSTEM);
        assert_eq!(event["type"]["code"], "110114");
        assert_eq!(event["subtype"][0]["code"], "110122");
        assert_eq!(event["outcome"], "4");
        assert_eq!(event["outcomeDesc"], "invalid bearer token: expired");
        assert_eq!(event["agent"][0]["network"]["address"], "192.0.2.7");
        assert_eq!(event["agent"][0]["who"]["display"], "unauthenticated");
        // A REST record keeps its own type.
        let rest = AuditRecord::new("read", "x", 0).to_audit_event();
        assert_eq!(rest["type"]["code"], "rest");
        assert_eq!(rest["subtype"][0]["code"], "read");
    }

    #[test]
    fn each_patient_reached_is_a_balp_patient_entity_and_roles_are_agent_roles() {
        let mut record = AuditRecord::new("search-type", "Practitioner/7", 0)
            .entity("Observation/1/_history/1")
            .entity("Observation/2/_history/3");
        record.patients = vec!["a".to_owned(), "b".to_owned()];
        record.roles = vec!["clinician".to_owned()];
        let event = record.to_audit_event();
        let patients: Vec<&str> = event["entity"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["role"]["code"] == "1" && e["type"]["code"] == "1")
            .map(|e| e["what"]["reference"].as_str().unwrap())
            .collect();
        assert_eq!(patients, ["Patient/a", "Patient/b"]);
        assert_eq!(
            event["entity"][2]["what"]["reference"],
            "Observation/1/_history/1"
        );
        assert_eq!(
            event["agent"][0]["role"][0]["coding"][0]["code"],
            "clinician"
        );
        assert_eq!(
            event["agent"][0]["role"][0]["coding"][0]["system"],
            ROLE_SYSTEM
        );
        // No roles, no empty array.
        let bare = AuditRecord::new("read", "x", 0).to_audit_event();
        assert!(bare["agent"][0].get("role").is_none());
    }

    /// The leaf, fixed parts included, is byte for byte the AuditEvent as serde_json writes
    /// it (keys in this order): for a read that reached patients, with every optional part,
    /// and for a failed sign-in with none. The leaf's hash depends on every byte.
    #[test]
    fn the_leaf_is_the_audit_event_as_serde_json_writes_it() {
        let mut read = AuditRecord::new("read", "Practitioner/\"7\"", 1_700_000_000_123_456)
            .entity("Observation/1/_history/2");
        read.request_id = Some("req-1".to_owned());
        read.outcome_description = Some("é\u{7}".to_owned());
        read.purpose_of_use = Some(PurposeOfUse::emergency("unconscious"));
        read.roles = vec!["clinician".to_owned(), "dpo".to_owned()];
        read.network_address = Some("::1".to_owned());
        read.patients = vec!["a".to_owned()];
        read.query = Some("_id=1".to_owned());
        let expected = serde_json::json!({
            "resourceType": "AuditEvent",
            "meta": {"tag": [{"system": "urn:hygie:request-id", "code": "req-1"}]},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                     "code": "rest", "display": "RESTful Operation"},
            "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}],
            "action": "R",
            "recorded": "2023-11-14T22:13:20.123456Z",
            "outcome": "0",
            "outcomeDesc": "é\u{7}",
            "purposeOfEvent": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                            "code": "ETREAT"}], "text": "unconscious"}],
            "agent": [{
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                     "code": "IRCP"}]},
                "who": {"display": "Practitioner/\"7\""},
                "role": [{"coding": [{"system": ROLE_SYSTEM, "code": "clinician"}]},
                         {"coding": [{"system": ROLE_SYSTEM, "code": "dpo"}]}],
                "requestor": true,
                "network": {"address": "::1", "type": "2"}
            }],
            "source": {"observer": {"display": "hygie"},
                       "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                                 "code": "4"}]},
            "entity": [
                {"what": {"reference": "Patient/a"},
                 "type": {"system": ENTITY_TYPE_SYSTEM, "code": "1", "display": "Person"},
                 "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role",
                          "code": "1", "display": "Patient"}},
                {"what": {"reference": "Observation/1/_history/2"}},
                {"type": {"system": ENTITY_TYPE_SYSTEM, "code": "2"}, "query": "X2lkPTE="}
            ]
        });
        assert_eq!(
            String::from_utf8(read.to_leaf()).unwrap(),
            serde_json::to_string(&expected).unwrap()
        );

        let login = AuditRecord::failed_login("expired", 0);
        let expected = serde_json::json!({
            "resourceType": "AuditEvent",
            "type": {"system": DICOM_SYSTEM, "code": "110114", "display": "User Authentication"},
            "subtype": [{"system": DICOM_SYSTEM, "code": "110122", "display": "Login"}],
            "action": "E",
            "recorded": "1970-01-01T00:00:00Z",
            "outcome": "4",
            "outcomeDesc": "expired",
            "agent": [{
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                     "code": "IRCP"}]},
                "who": {"display": "unauthenticated"},
                "requestor": true
            }],
            "source": {"observer": {"display": "hygie"},
                       "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                                 "code": "4"}]}
        });
        assert_eq!(
            String::from_utf8(login.to_leaf()).unwrap(),
            serde_json::to_string(&expected).unwrap()
        );
    }

    #[test]
    fn leaf_is_deterministic() {
        let record = AuditRecord::new("read", "x", 12).entity("Patient/1/_history/1");
        assert_eq!(record.to_leaf(), record.clone().to_leaf());
    }
}
