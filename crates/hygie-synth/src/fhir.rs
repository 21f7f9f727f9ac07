//! Small builders for the FHIR R4 JSON shapes every generated resource uses.

use serde_json::{Map, Value, json};

use crate::catalog::{Code, UCUM};

/// A transaction entry that creates `resource` at `full_url` (`urn:uuid:…`).
///
/// With `if_none_exist` (a search query such as `identifier=system|value`) the server reuses
/// a matching resource instead of creating a second one (FHIR conditional create), which lets
/// many small bundles share one hospital and its staff.
pub(crate) fn create_entry(full_url: &str, resource: Value, if_none_exist: Option<&str>) -> Value {
    let resource_type = resource["resourceType"]
        .as_str()
        .expect("every generated resource names its resourceType")
        .to_owned();
    let mut request = json!({"method": "POST", "url": resource_type});
    if let Some(query) = if_none_exist {
        request["ifNoneExist"] = Value::from(query);
    }
    // Built by hand: `json!` would deep-copy `resource` through the serializer.
    let mut entry = Map::with_capacity(3);
    entry.insert("fullUrl".to_owned(), Value::from(full_url));
    entry.insert("resource".to_owned(), resource);
    entry.insert("request".to_owned(), request);
    Value::Object(entry)
}

/// A `Reference` to another entry of the same bundle, with a display for humans.
pub(crate) fn reference(full_url: &str, display: &str) -> Value {
    json!({"reference": full_url, "display": display})
}

pub(crate) fn coding(system: &str, code: Code) -> Value {
    json!({"system": system, "code": code.code, "display": code.display})
}

pub(crate) fn codeable_concept(system: &str, code: Code) -> Value {
    json!({"coding": [coding(system, code)], "text": code.display})
}

/// A CodeableConcept from one of HL7's small code systems, where the code's display is the text.
pub(crate) fn hl7_concept(system: &str, code: &str, display: &str) -> Value {
    json!({"coding": [{"system": system, "code": code, "display": display}]})
}

/// A FHIR decimal from a scaled integer (`value_scaled / 10^decimals`), so that values print
/// with the intended precision (`36.7`, not `36.699999`) and integers print without `.0`.
pub(crate) fn decimal(value_scaled: i64, decimals: u32) -> Value {
    if decimals == 0 {
        Value::from(value_scaled)
    } else {
        Value::from(value_scaled as f64 / 10_i64.pow(decimals) as f64)
    }
}

/// A UCUM `Quantity`: `unit` is for humans, `ucum_code` for machines.
pub(crate) fn ucum_quantity(value: Value, unit: &str, ucum_code: &str) -> Value {
    json!({"value": value, "unit": unit, "system": UCUM, "code": ucum_code})
}

/// `identifier=system|value`, the conditional-create query that finds a resource again.
pub(crate) fn identifier_query(system: &str, value: &str) -> String {
    format!("identifier={system}|{value}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_print_as_written() {
        assert_eq!(decimal(367, 1).to_string(), "36.7");
        assert_eq!(decimal(87, 2).to_string(), "0.87");
        assert_eq!(decimal(72, 0).to_string(), "72");
        assert_eq!(decimal(1205, 1).to_string(), "120.5");
    }

    #[test]
    fn conditional_create_only_when_asked() {
        let plain = create_entry("urn:uuid:x", json!({"resourceType": "Patient"}), None);
        assert_eq!(
            plain["request"],
            json!({"method": "POST", "url": "Patient"})
        );
        let conditional = create_entry(
            "urn:uuid:x",
            json!({"resourceType": "Practitioner"}),
            Some("identifier=a|b"),
        );
        assert_eq!(conditional["request"]["ifNoneExist"], "identifier=a|b");
    }
}
