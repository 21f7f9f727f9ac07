//! The CapabilityStatement: exactly what this server supports, nothing more.

use serde_json::{Value, json};

use crate::Hub;

/// AuditEvent: the audit trail, read and searched (by the dpo and security roles), never
/// written through the API.
fn audit_event_capability() -> Value {
    let search_params: Vec<Value> = crate::audit_search::AUDIT_SEARCH_PARAMETERS
        .iter()
        .map(|code| {
            let kind = match *code {
                "patient" | "agent" => "reference",
                "date" => "date",
                _ => "token",
            };
            json!({
                "name": code,
                "definition": format!("http://hl7.org/fhir/SearchParameter/AuditEvent-{code}"),
                "type": kind,
            })
        })
        .collect();
    json!({
        "type": hygie_policy::AUDIT_EVENT,
        "documentation": "The hub's tamper-evident audit log (one AuditEvent per access, IHE BALP); newest first; paging by next link.",
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "searchParam": search_params,
    })
}

impl Hub {
    /// `GET [base]/metadata`.
    pub fn capability_statement(&self, base_url: &str) -> Value {
        let resources: Vec<Value> = hygie_fhir::schema::resource_types()
            .map(|resource_type| {
                // Only what the index can evaluate: an unsupported parameter is left out,
                // never half-supported.
                let search_params: Vec<Value> =
                    hygie_fhir::search::params::search_params(resource_type)
                        .iter()
                        .filter(|param| param.supported)
                        .map(|param| {
                            json!({
                                "name": param.code,
                                "definition": param.url,
                                "type": param.kind.as_code(),
                            })
                        })
                        .collect();
                let mut operations = Vec::new();
                if resource_type == "Patient" {
                    operations.push(json!({
                        "name": "everything",
                        "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                    }));
                    operations.push(json!({
                        "name": "access-log",
                        "definition": "urn:hygie:operation:access-log",
                        "documentation": "Who reached this patient's record, when, what kind of data, why, and whether the glass was broken: for the patient themself and the DPO.",
                    }));
                }
                if resource_type == hygie_policy::AUDIT_EVENT {
                    return audit_event_capability();
                }
                let mut entry = json!({
                    "type": resource_type,
                    "interaction": [
                        {"code": "read"}, {"code": "vread"}, {"code": "update"},
                        {"code": "patch"}, {"code": "delete"}, {"code": "history-instance"},
                        {"code": "history-type"}, {"code": "create"}, {"code": "search-type"},
                    ],
                    "versioning": "versioned-update",
                    "readHistory": true,
                    "updateCreate": true,
                    "conditionalCreate": true,
                    "conditionalRead": "not-supported",
                    "conditionalUpdate": true,
                    "conditionalDelete": "not-supported",
                    "referencePolicy": ["literal", "local"],
                    "searchInclude": ["*"],
                    "searchRevInclude": ["*"],
                });
                // FHIR JSON has no empty arrays.
                if !search_params.is_empty() {
                    entry["searchParam"] = Value::Array(search_params);
                }
                if !operations.is_empty() {
                    entry["operation"] = Value::Array(operations);
                }
                entry
            })
            .collect();
        json!({
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": "2026-11-29",
            "publisher": "Hygie",
            "kind": "instance",
            "software": {"name": "Hygie", "version": env!("CARGO_PKG_VERSION")},
            "implementation": {
                "description": format!("Hygie health-data hub ({} store)", self.backend()),
                "url": base_url,
            },
            "fhirVersion": "4.0.1",
            "format": ["application/fhir+json", "json"],
            "patchFormat": ["application/json-patch+json"],
            "rest": [{
                "mode": "server",
                "documentation": "Every access is decided by one policy point and recorded in the audit log. Search: the R4 search parameters listed per resource (generated from the official definitions), with _count, _sort, _include/_revinclude (:iterate), _summary (true: the elements marked isSummary in the R4 definitions; count, data, text, false), _elements, _total and signed paging links; _summary and _elements on read and vread too; unknown parameters are reported as ignored (or refused with Prefer: handling=strict). Compartment search and $everything for Patient.",
                "resource": resources,
                "interaction": [
                    {"code": "transaction"}, {"code": "batch"}, {"code": "history-system"},
                ],
            }],
        })
    }
}
