//! Resource-level helpers: ids, server-set metadata, index extraction, references.

use std::collections::HashMap;

use hygie_store::{IndexCell, IndexRow};
use serde_json::{Map, Value};

use crate::HubError;
use crate::instant::format_instant;

/// A new server-assigned id: a UUID version 7, time-ordered, so that the store's indexes
/// keyed by id grow at their end instead of at random places (a write touches a few pages
/// instead of one per index). It reveals when the resource was created, which
/// `meta.lastUpdated` of its first version says anyway.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// FHIR `id`: `[A-Za-z0-9\-\.]{1,64}`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Checks the URL's resource type is a known, concrete resource type: 404 otherwise.
///
/// AuditEvent is the hub's own audit trail: never stored, changed or read as a resource
/// (405); it is read through `GET /fhir/AuditEvent` (see `audit_search`).
pub fn check_resource_type(resource_type: &str) -> Result<(), HubError> {
    if resource_type == hygie_policy::AUDIT_EVENT {
        return Err(HubError::new(
            405,
            hygie_fhir::IssueType::NotSupported,
            "AuditEvents are the hub's audit trail: written by the hub alone, never created, changed or deleted through the API; dpo and security read them with GET /fhir/AuditEvent?…, a patient with GET /fhir/Patient/{id}/$access-log",
        ));
    }
    if hygie_fhir::schema::is_resource_type(resource_type) {
        Ok(())
    } else {
        Err(HubError::not_found(format!(
            "unknown resource type {resource_type:?}: this server serves the FHIR R4 resource types listed in /fhir/metadata"
        )))
    }
}

pub fn check_id(id: &str) -> Result<(), HubError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(HubError::bad_request(format!(
            "invalid resource id {id:?}: an id is 1 to 64 characters among A-Z a-z 0-9 - ."
        )))
    }
}

/// The body must be a JSON object whose `resourceType` is the one the URL names.
pub fn check_body_type(resource: &Value, resource_type: &str) -> Result<(), HubError> {
    match resource.get("resourceType").and_then(Value::as_str) {
        Some(found) if found == resource_type => Ok(()),
        Some(found) => Err(HubError::bad_request(format!(
            "the body is a {found} but the URL names {resource_type}"
        ))),
        None if resource.is_object() => Err(HubError::bad_request(
            "the body has no resourceType: a FHIR resource was expected",
        )),
        None => Err(HubError::bad_request(
            "the body is not a JSON object: a FHIR resource was expected",
        )),
    }
}

/// Validates against the R4 structure definitions: 422 with every issue found.
pub fn validate(resource: &Value) -> Result<(), HubError> {
    hygie_fhir::validate::validate_resource(resource).map_err(HubError::unprocessable)
}

/// Sets `id`, `meta.versionId` and `meta.lastUpdated`, which only the server may set,
/// keeping the rest of `meta` (profiles, tags, security labels).
pub fn set_server_metadata(resource: &mut Value, id: &str, version: i64, last_updated_us: i64) {
    let Some(object) = resource.as_object_mut() else {
        return;
    };
    // `id` right after `resourceType`, as FHIR JSON is usually written.
    let mut ordered = Map::with_capacity(object.len() + 2);
    if let Some(resource_type) = object.shift_remove("resourceType") {
        ordered.insert("resourceType".to_owned(), resource_type);
    }
    object.shift_remove("id");
    ordered.insert("id".to_owned(), Value::String(id.to_owned()));
    let mut meta = match object.shift_remove("meta") {
        Some(Value::Object(meta)) => meta,
        _ => Map::new(),
    };
    meta.remove("versionId");
    meta.remove("lastUpdated");
    let mut new_meta = Map::with_capacity(meta.len() + 2);
    new_meta.insert("versionId".to_owned(), Value::String(version.to_string()));
    new_meta.insert(
        "lastUpdated".to_owned(),
        Value::String(format_instant(last_updated_us)),
    );
    new_meta.extend(meta);
    ordered.insert("meta".to_owned(), Value::Object(new_meta));
    ordered.extend(std::mem::take(object));
    *object = ordered;
}

/// The index rows of a resource: one per value of every supported search parameter
/// (hygie-fhir decides what a resource is found by; the store only keeps the rows).
pub fn index_rows(resource: &Value) -> Vec<IndexRow> {
    use hygie_fhir::search::index::{IndexValue, extract};
    extract(resource)
        .into_iter()
        .map(|entry| {
            let group = i32::try_from(entry.group).unwrap_or(i32::MAX);
            let (param, cell) = match entry.value {
                IndexValue::Token { system, code } => (
                    entry.param,
                    IndexCell::Token {
                        system: system.unwrap_or_default(),
                        code,
                    },
                ),
                IndexValue::TokenText(text) => (
                    format!("{}:text", entry.param),
                    IndexCell::String {
                        normalized: text.clone(),
                        exact: text,
                    },
                ),
                IndexValue::IdentifierOfType {
                    type_system,
                    type_code,
                    value,
                } => (
                    format!("{}:of-type", entry.param),
                    IndexCell::Token {
                        system: type_system.unwrap_or_default(),
                        code: format!("{type_code}|{value}"),
                    },
                ),
                IndexValue::String { normalized, exact } => {
                    (entry.param, IndexCell::String { normalized, exact })
                }
                IndexValue::Date { low_us, high_us } => (
                    entry.param,
                    IndexCell::Date {
                        low: low_us,
                        high: high_us,
                    },
                ),
                IndexValue::Number { value, low, high } => {
                    (entry.param, IndexCell::Number { value, low, high })
                }
                IndexValue::Quantity {
                    value,
                    low,
                    high,
                    system,
                    code,
                    unit,
                } => (
                    entry.param,
                    IndexCell::Quantity {
                        system: system.unwrap_or_default(),
                        code: code.or(unit).unwrap_or_default(),
                        value,
                        low,
                        high,
                    },
                ),
                IndexValue::Reference {
                    target_type,
                    target_id,
                    url,
                } => (
                    entry.param,
                    IndexCell::Reference {
                        target_type: target_type.unwrap_or_default(),
                        // Not a local resource: keyed by its spelling, which no local
                        // id can equal (see `IndexCell::Reference`).
                        target_id: target_id.unwrap_or_else(|| url.clone()),
                        url,
                    },
                ),
                IndexValue::Uri(value) => (entry.param, IndexCell::Uri { value }),
            };
            IndexRow { param, group, cell }
        })
        .collect()
}

/// Replaces every `reference` string found in `map` (e.g. `urn:uuid:…` → `Patient/123`).
pub fn rewrite_references(value: &mut Value, map: &HashMap<String, String>) {
    replace_references(value, &|reference| map.get(reference).cloned());
}

/// Replaces every `reference` string, at any depth, by what `replacement` gives for it.
fn replace_references(value: &mut Value, replacement: &dyn Fn(&str) -> Option<String>) {
    match value {
        Value::Object(object) => {
            for (key, child) in object.iter_mut() {
                if key == "reference" {
                    if let Value::String(reference) = child
                        && let Some(new) = replacement(reference)
                    {
                        *reference = new;
                    }
                } else {
                    replace_references(child, replacement);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                replace_references(item, replacement);
            }
        }
        _ => {}
    }
}

/// The relative reference that `url` stands for when it is an absolute URL under this
/// server's base (`{base_url}/Type/id`, or `…/_history/v`); `None` for anything else, other
/// servers' URLs included.
pub fn local_spelling<'a>(url: &'a str, base_url: &str) -> Option<&'a str> {
    if base_url.is_empty() {
        return None;
    }
    let rest = url.strip_prefix(base_url)?.strip_prefix('/')?;
    let parts: Vec<&str> = rest.split('/').collect();
    let names_a_resource = match parts[..] {
        [ty, id] => hygie_fhir::schema::is_resource_type(ty) && is_valid_id(id),
        [ty, id, "_history", version] => {
            hygie_fhir::schema::is_resource_type(ty) && is_valid_id(id) && is_valid_id(version)
        }
        _ => false,
    };
    names_a_resource.then_some(rest)
}

/// Rewrites every absolute `reference` under this server's base to the relative reference it
/// stands for, as it is stored: only a relative reference names a resource here (the search
/// index gives an absolute URL no target), so that `{base}/Patient/1` and `Patient/1` are
/// one patient, and another server's `Patient/1` is never ours.
pub fn localize_references(value: &mut Value, base_url: &str) {
    replace_references(value, &|reference| {
        local_spelling(reference, base_url).map(str::to_owned)
    });
}

/// Every `reference` string in a resource.
pub fn collect_references<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(object) => {
            for (key, child) in object {
                match (key.as_str(), child) {
                    ("reference", Value::String(reference)) => out.push(reference),
                    _ => collect_references(child, out),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                collect_references(item, out);
            }
        }
        _ => {}
    }
}

/// Parses an `If-Match` / `ETag` value: `W/"3"`, `"3"` or `3`.
pub fn parse_version_tag(tag: &str) -> Result<i64, HubError> {
    let trimmed = tag.trim();
    let unquoted = trimmed
        .strip_prefix("W/")
        .unwrap_or(trimmed)
        .trim_matches('"');
    unquoted.parse::<i64>().map_err(|_| {
        HubError::bad_request(format!(
            "invalid version tag {tag:?}: expected W/\"<versionId>\", as the ETag header gives it"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_metadata_replaces_client_values_and_keeps_the_rest() {
        let mut patient = json!({
            "gender": "female",
            "resourceType": "Patient",
            "id": "client",
            "meta": {"versionId": "99", "lastUpdated": "1999-01-01T00:00:00Z", "tag": [{"code": "x"}]},
        });
        set_server_metadata(&mut patient, "abc", 3, 0);
        assert_eq!(patient["id"], "abc");
        assert_eq!(patient["meta"]["versionId"], "3");
        assert_eq!(
            patient["meta"]["lastUpdated"],
            "1970-01-01T00:00:00.000000Z"
        );
        assert_eq!(patient["meta"]["tag"][0]["code"], "x");
        let keys: Vec<&String> = patient.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["resourceType", "id", "meta", "gender"]);
    }

    #[test]
    fn identifiers_become_tokens() {
        let patient = json!({"resourceType": "Patient", "identifier": [
            {"system": "urn:mrn", "value": "1"}, {"value": "2"}, {"system": "urn:no-value"}
        ]});
        let tokens: Vec<(String, String)> = index_rows(&patient)
            .into_iter()
            .filter(|row| row.param == "identifier")
            .map(|row| match row.cell {
                IndexCell::Token { system, code } => (system, code),
                other => panic!("not a token: {other:?}"),
            })
            .collect();
        assert_eq!(
            tokens,
            [("urn:mrn".into(), "1".into()), (String::new(), "2".into())]
        );
    }

    #[test]
    fn only_references_under_our_base_are_made_relative() {
        let base = "https://hub.example/fhir";
        let mut resource = json!({
            "resourceType": "Observation",
            "subject": {"reference": "https://hub.example/fhir/Patient/p1"},
            "performer": [
                {"reference": "https://hub.example/fhir/Practitioner/d1/_history/3"},
                {"reference": "https://other.example/fhir/Practitioner/d1"},
                {"reference": "https://hub.example/fhirx/Practitioner/d2"},
                {"reference": "https://hub.example/fhir/Nope/d3"},
                {"reference": "https://hub.example/fhir/Patient/p1/extra"},
                {"reference": "Practitioner/d4"}
            ],
            "hasMember": [{"reference": "https://hub.example/fhir/Observation/o 1"}]
        });
        localize_references(&mut resource, base);
        assert_eq!(resource["subject"]["reference"], "Patient/p1");
        let performers: Vec<&str> = resource["performer"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["reference"].as_str().unwrap())
            .collect();
        assert_eq!(
            performers,
            [
                "Practitioner/d1/_history/3",
                "https://other.example/fhir/Practitioner/d1",
                "https://hub.example/fhirx/Practitioner/d2",
                "https://hub.example/fhir/Nope/d3",
                "https://hub.example/fhir/Patient/p1/extra",
                "Practitioner/d4"
            ]
        );
        assert_eq!(
            resource["hasMember"][0]["reference"],
            "https://hub.example/fhir/Observation/o 1"
        );
        // No base known (a message from an HL7 v2 listener): nothing changes.
        let mut unchanged =
            json!({"subject": {"reference": "https://hub.example/fhir/Patient/p1"}});
        localize_references(&mut unchanged, "");
        assert_eq!(
            unchanged["subject"]["reference"],
            "https://hub.example/fhir/Patient/p1"
        );
    }

    #[test]
    fn references_are_rewritten_at_any_depth() {
        let mut observation = json!({
            "subject": {"reference": "urn:uuid:1"},
            "performer": [{"reference": "urn:uuid:2"}, {"reference": "Practitioner/kept"}],
            "note": [{"text": "urn:uuid:1"}],
        });
        let map = HashMap::from([
            ("urn:uuid:1".to_owned(), "Patient/a".to_owned()),
            ("urn:uuid:2".to_owned(), "Practitioner/b".to_owned()),
        ]);
        rewrite_references(&mut observation, &map);
        assert_eq!(observation["subject"]["reference"], "Patient/a");
        assert_eq!(observation["performer"][0]["reference"], "Practitioner/b");
        assert_eq!(
            observation["performer"][1]["reference"],
            "Practitioner/kept"
        );
        assert_eq!(
            observation["note"][0]["text"], "urn:uuid:1",
            "only references change"
        );
    }

    #[test]
    fn version_tags() {
        assert_eq!(parse_version_tag("W/\"3\"").unwrap(), 3);
        assert_eq!(parse_version_tag("\"4\"").unwrap(), 4);
        assert_eq!(parse_version_tag("5").unwrap(), 5);
        assert_eq!(parse_version_tag("W/\"x\"").unwrap_err().status, 400);
    }

    #[test]
    fn ids() {
        assert!(is_valid_id("a-B.9"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id(&"a".repeat(65)));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id("a b"));
    }
}
