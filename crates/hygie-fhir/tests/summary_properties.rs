//! `_summary=true` on real and on random resources: a summary is a subset of the resource,
//! summarizing twice changes nothing, and the summary of a valid resource is valid, except for
//! the four resource types where R4 marks a required root element non-summary.

use std::path::Path;
use std::sync::LazyLock;

use hygie_fhir::summary::summarize;
use hygie_fhir::validate::validate_resource;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Map, Value, json};

/// Resource types whose summary lacks a required element (see `hygie_fhir::summary`).
const SUMMARY_NOT_VALID: [&str; 3] = ["Appointment", "AuditEvent", "Provenance"];

/// Every resource of the committed Synthea bundles, and the bundles themselves.
static POOL: LazyLock<Vec<Value>> = LazyLock::new(|| {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/synthea");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("testdata/synthea")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut pool = Vec::new();
    for file in files {
        let bundle: Value =
            serde_json::from_slice(&std::fs::read(&file).expect("readable")).expect("JSON");
        for entry in bundle["entry"].as_array().expect("entries") {
            pool.push(entry["resource"].clone());
        }
        pool.push(bundle);
    }
    for resource in &pool {
        assert!(validate_resource(resource).is_ok(), "the pool is valid");
    }
    pool
});

fn summary(resource: &Value) -> Value {
    let mut out = resource.clone();
    summarize(&mut out);
    out
}

/// Whether `part` is `whole` with things left out: object members, array items (in order),
/// never a value changed or added.
fn is_subset(part: &Value, whole: &Value) -> bool {
    match (part, whole) {
        (Value::Object(p), Value::Object(w)) => p
            .iter()
            .all(|(k, v)| w.get(k).is_some_and(|wv| is_subset(v, wv))),
        (Value::Array(p), Value::Array(w)) => {
            // Greedy: matching each item at the earliest place leaves the most room.
            let mut rest = w.iter();
            p.iter()
                .all(|item| rest.any(|candidate| is_subset(item, candidate)))
        }
        _ => part == whole,
    }
}

fn assert_summary_properties(resource: &Value) -> Result<Value, TestCaseError> {
    let once = summary(resource);
    prop_assert!(is_subset(&once, resource), "not a subset: {once}");
    prop_assert_eq!(&summary(&once), &once, "not idempotent");
    let resource_type = resource["resourceType"].as_str().unwrap_or("");
    if validate_resource(resource).is_ok() && !SUMMARY_NOT_VALID.contains(&resource_type) {
        let issues = validate_resource(&once).err();
        prop_assert!(issues.is_none(), "{once}: {issues:#?}");
    }
    Ok(once)
}

#[test]
fn every_synthea_resource() {
    let mut by_type = std::collections::BTreeMap::<&str, (usize, usize)>::new();
    for resource in POOL.iter() {
        let once = assert_summary_properties(resource).unwrap();
        let sizes = by_type
            .entry(resource["resourceType"].as_str().unwrap())
            .or_default();
        sizes.0 += resource.to_string().len();
        sizes.1 += once.to_string().len();
    }
    for t in [
        "Patient",
        "Observation",
        "Claim",
        "ExplanationOfBenefit",
        "Bundle",
    ] {
        assert!(by_type.contains_key(t), "{t} in the pool");
    }
    // Some are all summary (a Bundle, whose entries are kept whole; Synthea's Procedures).
    for t in ["Patient", "Observation", "Claim", "ExplanationOfBenefit"] {
        let (full, cut) = by_type[t];
        assert!(cut < full, "{t}: {cut} of {full} bytes");
    }
}

#[test]
fn a_patient_summary_by_hand() {
    let patient = POOL
        .iter()
        .find(|r| r["resourceType"] == "Patient")
        .unwrap();
    let once = summary(patient);
    let keys: Vec<&str> = once
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for key in &keys {
        assert!(
            [
                "resourceType",
                "id",
                "meta",
                "identifier",
                "name",
                "telecom",
                "gender",
                "birthDate",
                "deceasedDateTime",
                "address",
            ]
            .contains(key),
            "{key}"
        );
    }
    for gone in [
        "text",
        "extension",
        "maritalStatus",
        "multipleBirthBoolean",
        "communication",
    ] {
        assert!(
            patient.get(gone).is_some() && once.get(gone).is_none(),
            "{gone}"
        );
    }
    assert_eq!(once["name"], patient["name"], "datatypes are kept whole");
}

/// The resource types R4 makes an exception of: valid, yet their summary is not.
#[test]
fn summaries_that_lack_a_required_element() {
    let cases = [
        json!({
            "resourceType": "Provenance",
            "target": [{"reference": "Patient/p"}],
            "recorded": "2024-01-01T00:00:00Z",
            "agent": [{"who": {"reference": "Practitioner/d"}}],
        }),
        json!({
            "resourceType": "Appointment",
            "status": "booked",
            "participant": [{"actor": {"reference": "Patient/p"}, "status": "accepted"}],
        }),
        json!({
            "resourceType": "AuditEvent",
            "type": {"code": "rest"},
            "recorded": "2024-01-01T00:00:00Z",
            "agent": [{"who": {"reference": "Practitioner/d"}, "requestor": true}],
            "source": {"observer": {"reference": "Device/d"}},
        }),
    ];
    for resource in cases {
        assert!(validate_resource(&resource).is_ok(), "{resource}");
        let once = assert_summary_properties(&resource).unwrap();
        let issues = validate_resource(&once).unwrap_err();
        assert!(
            issues
                .iter()
                .all(|i| i.diagnostics.contains("required") || i.diagnostics.contains("minimum")),
            "{issues:#?}"
        );
    }
}

#[derive(Clone, Debug)]
enum Step {
    Key(String),
    Index(usize),
}

/// Every member of every object of `value`, as (object pointer, key).
fn members(value: &Value, pointer: &mut Vec<Step>, out: &mut Vec<(Vec<Step>, String)>) {
    match value {
        Value::Object(object) => {
            for (key, child) in object {
                if key != "resourceType" {
                    out.push((pointer.clone(), key.clone()));
                }
                pointer.push(Step::Key(key.clone()));
                members(child, pointer, out);
                pointer.pop();
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                pointer.push(Step::Index(i));
                members(item, pointer, out);
                pointer.pop();
            }
        }
        _ => {}
    }
}

fn get_mut<'v>(mut value: &'v mut Value, pointer: &[Step]) -> &'v mut Value {
    for step in pointer {
        value = match step {
            Step::Key(k) => &mut value[k.as_str()],
            Step::Index(i) => &mut value[*i],
        };
    }
    value
}

/// Arbitrary JSON biased towards FHIR element names, summary ones and not.
fn arbitrary_json() -> impl Strategy<Value = Value> {
    const NAMES: &[&str] = &[
        "id",
        "meta",
        "text",
        "extension",
        "modifierExtension",
        "url",
        "valueString",
        "valueAttachment",
        "data",
        "_data",
        "contentType",
        "name",
        "family",
        "photo",
        "contact",
        "link",
        "other",
        "type",
        "component",
        "code",
        "valueQuantity",
        "value",
        "note",
        "status",
        "subject",
        "entry",
        "resource",
        "resourceType",
        "Patient",
        "content",
        "attachment",
        "_birthDate",
        "birthDate",
        "item",
    ];
    let key = prop_oneof![
        3 => prop::sample::select(NAMES).prop_map(String::from),
        1 => "[a-zA-Z_]{0,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        ".{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(8, 96, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|members| Value::Object(members.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Real resources with random members removed (kept only while they stay valid).
    #[test]
    fn valid_resources_give_valid_summaries(pick in any::<Index>(), cuts in prop::collection::vec(any::<Index>(), 0..12)) {
        let mut resource = pick.get(&POOL).clone();
        for cut in cuts {
            let mut all = Vec::new();
            members(&resource, &mut Vec::new(), &mut all);
            if all.is_empty() {
                break;
            }
            let (pointer, key) = cut.get(&all).clone();
            let mut candidate = resource.clone();
            if let Some(object) = get_mut(&mut candidate, &pointer).as_object_mut() {
                object.remove(&key);
            }
            if validate_resource(&candidate).is_ok() {
                resource = candidate;
            }
        }
        assert_summary_properties(&resource)?;
    }

    /// Anything at all: no panic, a subset, idempotent.
    #[test]
    fn arbitrary_values(
        resource_type in prop::sample::select(&["Patient", "Observation", "DocumentReference", "Bundle", "Nope"][..]),
        members in prop::collection::vec((prop::sample::select(&[
            "id", "meta", "text", "name", "photo", "contact", "link", "component", "code",
            "valueQuantity", "note", "status", "entry", "content", "modifierExtension",
            "extension", "_birthDate", "birthDate", "contained",
        ][..]), arbitrary_json()), 0..8),
        raw in arbitrary_json(),
    ) {
        let mut object = Map::new();
        object.insert("resourceType".into(), json!(resource_type));
        for (k, v) in members {
            object.insert(k.into(), v);
        }
        assert_summary_properties(&Value::Object(object))?;
        assert_summary_properties(&raw)?;
    }
}
