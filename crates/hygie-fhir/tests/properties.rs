//! Property tests: valid Synthea resources made invalid in random ways are rejected, with the
//! issue at the mutated element; and no JSON value, however odd, makes validation panic.

use std::path::Path;
use std::sync::LazyLock;

use hygie_fhir::validate::{MAX_ISSUES, validate_resource};
use hygie_fhir::{IssueType, schema};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Map, Value, json};

/// Every resource of one committed Synthea bundle, plus the bundle itself.
static POOL: LazyLock<Vec<Value>> = LazyLock::new(|| {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/synthea/Denny_Bins_bc0fbd67-bfe3-46c8-8ce9-ef20b0705b46.json");
    let bundle: Value =
        serde_json::from_slice(&std::fs::read(path).expect("bundle")).expect("JSON");
    let mut pool: Vec<Value> = bundle["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["resource"].clone())
        .collect();
    pool.push(bundle);
    for resource in &pool {
        assert!(validate_resource(resource).is_ok(), "the pool is valid");
    }
    pool
});

#[derive(Clone, Debug)]
enum Step {
    Key(String),
    Index(usize),
}

/// Where a mutation can go in one resource.
#[derive(Default)]
struct Locations {
    objects: Vec<Vec<Step>>,
    leaves: Vec<Vec<Step>>,
    /// (object, key) of each present element whose definition has min >= 1.
    required: Vec<(Vec<Step>, String)>,
    /// Each `code` value whose element has a required binding.
    bound_codes: Vec<Vec<Step>>,
}

/// Walks `value`, tracking the definition path (`Patient.name.given`) where the public
/// `schema::element` lookup can follow it (not through choice elements).
fn walk(value: &Value, pointer: &mut Vec<Step>, spec: Option<String>, out: &mut Locations) {
    match value {
        Value::Object(object) => {
            let spec = match object.get("resourceType") {
                Some(Value::String(t)) => Some(t.clone()),
                _ => spec,
            };
            out.objects.push(pointer.clone());
            for (key, child) in object {
                let child_spec = spec.as_ref().map(|s| format!("{s}.{key}"));
                let element = child_spec.as_deref().and_then(schema::element);
                if element.is_some_and(|e| e.min() >= 1) {
                    out.required.push((pointer.clone(), key.clone()));
                }
                if key == "resourceType" && pointer.is_empty() {
                    continue; // the top-level type is the resource's name, not an element
                }
                pointer.push(Step::Key(key.clone()));
                walk(child, pointer, element.and(child_spec), out);
                pointer.pop();
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                pointer.push(Step::Index(i));
                walk(item, pointer, spec.clone(), out);
                pointer.pop();
            }
        }
        _ => {
            let element = spec.as_deref().and_then(schema::element);
            if element
                .is_some_and(|e| e.required_binding().is_some() && e.type_codes().eq(["code"]))
            {
                out.bound_codes.push(pointer.clone());
            }
            out.leaves.push(pointer.clone())
        }
    }
}

fn locations(resource: &Value) -> Locations {
    let mut out = Locations::default();
    walk(resource, &mut Vec::new(), None, &mut out);
    out
}

/// The FHIRPath the validator reports for a location.
fn expression(resource: &Value, pointer: &[Step]) -> String {
    let mut out = resource["resourceType"].as_str().unwrap().to_string();
    for step in pointer {
        match step {
            Step::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
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

#[track_caller]
fn assert_reported(resource: &Value, code: IssueType, expected: &str) {
    let issues = validate_resource(resource).expect_err("the mutation must be rejected");
    assert!(
        issues
            .iter()
            .any(|i| i.code == code && i.expression.as_deref() == Some(expected)),
        "expected {code:?} at {expected}, got {issues:#?}"
    );
}

/// A JSON value of a different type than `old`.
fn other_json_type(old: &Value, choice: usize) -> Value {
    let candidates = [
        json!("text"),
        json!(7),
        json!(true),
        json!({"a": 1}),
        json!([1]),
        Value::Null,
    ];
    let same = |v: &Value| std::mem::discriminant(v) == std::mem::discriminant(old);
    let others: Vec<&Value> = candidates.iter().filter(|v| !same(v)).collect();
    others[choice % others.len()].clone()
}

const VOCABULARY: &[&str] = &[
    "resourceType",
    "id",
    "meta",
    "versionId",
    "lastUpdated",
    "extension",
    "modifierExtension",
    "url",
    "valueString",
    "valueQuantity",
    "value",
    "_value",
    "valueCodeableConcept",
    "name",
    "given",
    "_given",
    "family",
    "text",
    "div",
    "status",
    "code",
    "coding",
    "system",
    "display",
    "contained",
    "entry",
    "resource",
    "fullUrl",
    "item",
    "linkId",
    "type",
    "reference",
    "subject",
    "birthDate",
    "_birthDate",
    "gender",
    "identifier",
    "period",
    "start",
    "parameter",
    "part",
    "component",
    "effectiveDateTime",
    "valueInteger",
    "telecom",
    "address",
    "clinicalStatus",
    "method",
    "request",
];

const STRINGS: &[&str] = &[
    "Patient",
    "Bundle",
    "Observation",
    "Questionnaire",
    "Parameters",
    "Resource",
    "collection",
    "final",
    "generated",
    "Condition",
    "active",
    "POST",
    "http://terminology.hl7.org/CodeSystem/condition-clinical",
    "#x",
    "#",
    "Patient/1",
    "Patient/1/_history/2",
    "Patient?x=1",
    "urn:uuid:c757873d-ec9a-4326-a141-556f43239520",
    "urn:oid:1.2",
    "http://x/y",
    "<div>x</div>",
    "2020-02-30",
    "2020-01-01T00:00:00Z",
    "12:00:00",
    "",
    " ",
    "\u{0}",
];

/// Arbitrary JSON biased towards FHIR names, so it reaches deep into the validator.
fn arbitrary_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        3 => prop::sample::select(VOCABULARY).prop_map(String::from),
        1 => "[a-zA-Z_]{0,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(STRINGS).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(8, 128, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|members| Value::Object(members.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A resource-shaped object: a real `resourceType` and arbitrary members.
fn arbitrary_resource() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(&STRINGS[..6]),
        prop::collection::vec((prop::sample::select(VOCABULARY), arbitrary_json()), 0..8),
    )
        .prop_map(|(resource_type, members)| {
            let mut object = Map::new();
            object.insert("resourceType".into(), resource_type.into());
            for (k, v) in members {
                object.insert(k.into(), v);
            }
            Value::Object(object)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// An unknown key anywhere is reported, at that key.
    #[test]
    fn unknown_keys_are_rejected(pick in any::<Index>(), at in any::<Index>(), suffix in "[a-zA-Z0-9]{0,8}") {
        let mut resource = pick.get(&POOL).clone();
        let objects = locations(&resource).objects;
        let pointer = at.get(&objects).clone();
        // No FHIR R4 element name starts with "zz".
        let key = format!("zz{suffix}");
        get_mut(&mut resource, &pointer)[key.as_str()] = json!("x");
        let expected = format!("{}.{key}", expression(&resource, &pointer));
        assert_reported(&resource, IssueType::Structure, &expected);
    }

    /// A leaf value replaced by one of another JSON type is reported, at that leaf.
    #[test]
    fn wrong_json_types_are_rejected(pick in any::<Index>(), at in any::<Index>(), choice in 0usize..8) {
        let mut resource = pick.get(&POOL).clone();
        let leaves = locations(&resource).leaves;
        let pointer = at.get(&leaves).clone();
        let leaf = get_mut(&mut resource, &pointer);
        *leaf = other_json_type(leaf, choice);
        let expected = expression(&resource, &pointer);
        assert_reported(&resource, IssueType::Structure, &expected);
    }

    /// A required element removed is reported as required, at that element.
    #[test]
    fn dropped_required_elements_are_rejected(pick in any::<Index>(), at in any::<Index>()) {
        let mut resource = pick.get(&POOL).clone();
        let required = locations(&resource).required;
        prop_assume!(!required.is_empty());
        let (pointer, key) = at.get(&required).clone();
        let parent = get_mut(&mut resource, &pointer).as_object_mut().unwrap();
        parent.remove(&key);
        parent.remove(&format!("_{key}"));
        if parent.is_empty() {
            // Then the object itself is empty, which is reported instead.
            let expected = expression(&resource, &pointer);
            assert_reported(&resource, IssueType::Structure, &expected);
        } else {
            let expected = format!("{}.{key}", expression(&resource, &pointer));
            assert_reported(&resource, IssueType::Required, &expected);
        }
    }

    /// A code of a required binding replaced by a well-formed code outside its value set is
    /// reported as code-invalid, at that element.
    #[test]
    fn codes_outside_a_required_value_set_are_rejected(pick in any::<Index>(), at in any::<Index>(), code in "[a-zA-Z][a-zA-Z0-9-]{0,10}") {
        let mut resource = pick.get(&POOL).clone();
        let bound = locations(&resource).bound_codes;
        prop_assume!(!bound.is_empty());
        let pointer = at.get(&bound).clone();
        // No code of an R4 value set starts with "zz".
        *get_mut(&mut resource, &pointer) = json!(format!("zz{code}"));
        let expected = expression(&resource, &pointer);
        assert_reported(&resource, IssueType::CodeInvalid, &expected);
    }

    /// Arbitrary JSON never panics, and the issue list keeps its bounds and shape.
    #[test]
    fn arbitrary_json_never_panics(value in prop_oneof![arbitrary_json(), arbitrary_resource()]) {
        if let Err(issues) = validate_resource(&value) {
            prop_assert!(!issues.is_empty());
            prop_assert!(issues.len() <= MAX_ISSUES + 1);
            prop_assert!(issues.iter().all(|i| i.expression.as_deref().is_some_and(|e| !e.is_empty())));
        }
    }
}

#[test]
fn the_mutation_sites_cover_the_pool() {
    // Guards the properties above against vacuity: there is something to mutate.
    let (mut objects, mut leaves, mut required, mut bound) = (0, 0, 0, 0);
    for resource in POOL.iter() {
        let l = locations(resource);
        objects += l.objects.len();
        leaves += l.leaves.len();
        required += l.required.len();
        bound += l.bound_codes.len();
    }
    assert!(
        objects > 1000 && leaves > 1000 && required > 100 && bound > 50,
        "{objects} {leaves} {required} {bound}"
    );
}
