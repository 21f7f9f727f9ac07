//! The CapabilityStatement: exactly what this server supports, nothing more.

use serde_json::{Value, json};

use crate::Hub;

impl Hub {
    /// `GET [base]/metadata`.
    pub fn capability_statement(&self, base_url: &str) -> Value {
        let resources: Vec<Value> = hygie_fhir::schema::resource_types()
            .map(|resource_type| {
                let mut search_params = vec![json!({
                    "name": "_id",
                    "definition": "http://hl7.org/fhir/SearchParameter/Resource-id",
                    "type": "token",
                })];
                if hygie_fhir::schema::element(&format!("{resource_type}.identifier")).is_some() {
                    search_params.push(json!({
                        "name": "identifier",
                        "type": "token",
                        "documentation": "system|value of the resource's business identifiers",
                    }));
                }
                json!({
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
                    "searchParam": search_params,
                })
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
                "documentation": "Every access is decided by one policy point and recorded in the audit log. Search supports _id, identifier, _count and paging; other parameters are reported as ignored (or refused with Prefer: handling=strict).",
                "resource": resources,
                "interaction": [
                    {"code": "transaction"}, {"code": "batch"}, {"code": "history-system"},
                ],
            }],
        })
    }
}
