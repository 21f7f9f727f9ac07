//! Properties of the generated bundles that consumers rely on: determinism, counts,
//! self-contained references, FHIR R4 required elements and codes, clinical coherence.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use hygie_synth::{
    EPOCH_UNIX_SECONDS, INS_NIR_TEST_SYSTEM, MRN_SYSTEM, PRACTITIONER_IDENTIFIER_SYSTEM,
    SynthOptions, SynthOptionsError, demo_people, hospital_bundle, patient_bundles,
};
use serde_json::Value;

const EPOCH: &str = "2026-01-01T00:00:00Z";

fn entries(bundle: &Value) -> &Vec<Value> {
    bundle["entry"].as_array().expect("a bundle has entries")
}

fn resources_of<'a>(bundle: &'a Value, resource_type: &str) -> Vec<&'a Value> {
    entries(bundle)
        .iter()
        .map(|entry| &entry["resource"])
        .filter(|resource| resource["resourceType"] == resource_type)
        .collect()
}

fn count_by_type(bundle: &Value) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for entry in entries(bundle) {
        let resource_type = entry["resource"]["resourceType"]
            .as_str()
            .unwrap()
            .to_owned();
        *counts.entry(resource_type).or_insert(0) += 1;
    }
    counts
}

/// A `Reference` found in a resource.
struct Found {
    /// The element holding the reference (`subject`, `performer`...).
    holder: String,
    target: String,
    has_display: bool,
}

/// Every `reference` in a value, with the name of the element that holds it.
fn references(value: &Value, holder: &str, found: &mut Vec<Found>) {
    match value {
        Value::Object(object) => {
            for (key, child) in object {
                match child {
                    Value::String(target) if key == "reference" => found.push(Found {
                        holder: holder.to_owned(),
                        target: target.clone(),
                        has_display: object.contains_key("display"),
                    }),
                    _ => references(child, key, found),
                }
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|item| references(item, holder, found)),
        _ => {}
    }
}

fn options(patients: usize, seed: u64) -> SynthOptions {
    SynthOptions {
        patients,
        seed,
        ..SynthOptions::default()
    }
}

/// The resource type of every fullUrl in the bundle.
fn types_by_url(bundle: &Value) -> HashMap<&str, &str> {
    entries(bundle)
        .iter()
        .map(|entry| {
            (
                entry["fullUrl"].as_str().unwrap(),
                entry["resource"]["resourceType"].as_str().unwrap(),
            )
        })
        .collect()
}

#[test]
fn same_options_give_byte_identical_output() {
    let options = SynthOptions::default();
    let first = serde_json::to_string(&hospital_bundle(&options)).unwrap();
    let second = serde_json::to_string(&hospital_bundle(&options)).unwrap();
    assert_eq!(first, second);
    let first: Vec<String> = patient_bundles(&options).map(|b| b.to_string()).collect();
    let second: Vec<String> = patient_bundles(&options).map(|b| b.to_string()).collect();
    assert_eq!(first, second);
    assert_eq!(demo_people(&options), demo_people(&options));
}

#[test]
fn different_seeds_give_different_people_and_urls() {
    let first = hospital_bundle(&options(10, 1));
    let second = hospital_bundle(&options(10, 2));
    assert_ne!(first, second);
    let urls = |bundle: &Value| -> BTreeSet<String> {
        entries(bundle)
            .iter()
            .map(|e| e["fullUrl"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(
        urls(&first).is_disjoint(&urls(&second)),
        "full URLs must not repeat across seeds"
    );
    let names = |seed| -> Vec<String> {
        demo_people(&options(10, seed))
            .patients
            .into_iter()
            .map(|p| p.name)
            .collect()
    };
    assert_ne!(names(1), names(2));
}

#[test]
fn a_patient_does_not_depend_on_how_many_others_are_generated() {
    let few = hospital_bundle(&options(3, 9));
    let many = hospital_bundle(&options(12, 9));
    let few_patients = resources_of(&few, "Patient");
    assert_eq!(few_patients, resources_of(&many, "Patient")[..3]);
}

#[test]
fn counts_follow_the_options() {
    let cases = [
        SynthOptions {
            patients: 0,
            ..SynthOptions::default()
        },
        SynthOptions {
            patients: 1,
            seed: 5,
            observations_per_encounter: 0,
            encounters_per_patient_max: 1,
        },
        SynthOptions {
            patients: 7,
            seed: 6,
            observations_per_encounter: 3,
            encounters_per_patient_max: 4,
        },
        SynthOptions {
            patients: 25,
            seed: 7,
            observations_per_encounter: 20,
            encounters_per_patient_max: 12,
        },
        SynthOptions::default(),
    ];
    for options in cases {
        let bundle = hospital_bundle(&options);
        let counts = count_by_type(&bundle);
        let count = |resource_type: &str| counts.get(resource_type).copied().unwrap_or(0);
        assert_eq!(count("Organization"), 3, "{options:?}");
        assert_eq!(count("Location"), 4);
        assert_eq!(count("Practitioner"), 8);
        assert_eq!(count("PractitionerRole"), 8);
        assert_eq!(count("Patient"), options.patients);
        let encounters = resources_of(&bundle, "Encounter");
        let mut per_patient: HashMap<&str, usize> = HashMap::new();
        for encounter in &encounters {
            *per_patient
                .entry(encounter["subject"]["reference"].as_str().unwrap())
                .or_default() += 1;
        }
        assert_eq!(
            per_patient.len(),
            options.patients,
            "every patient has an encounter"
        );
        assert!(
            per_patient
                .values()
                .all(|&n| (1..=options.encounters_per_patient_max).contains(&n))
        );
        assert_eq!(
            count("Observation"),
            encounters.len() * options.observations_per_encounter
        );
        // Every diagnosis is treated: one prescription per condition.
        assert_eq!(count("MedicationRequest"), count("Condition"));
        // Every encounter has a reason, so every patient has at least one condition.
        let with_conditions: BTreeSet<&str> = resources_of(&bundle, "Condition")
            .iter()
            .map(|c| c["subject"]["reference"].as_str().unwrap())
            .collect();
        assert_eq!(with_conditions.len(), options.patients);
        assert!(count("CareTeam") <= options.patients);
    }
}

#[test]
fn default_options_make_a_varied_hospital() {
    let bundle = hospital_bundle(&SynthOptions::default());
    let counts = count_by_type(&bundle);
    for resource_type in [
        "AllergyIntolerance",
        "CareTeam",
        "Condition",
        "MedicationRequest",
    ] {
        assert!(
            counts.get(resource_type).copied().unwrap_or(0) > 0,
            "no {resource_type}"
        );
    }
    let classes: BTreeSet<&str> = resources_of(&bundle, "Encounter")
        .iter()
        .map(|e| e["class"]["code"].as_str().unwrap())
        .collect();
    assert_eq!(classes, BTreeSet::from(["AMB", "EMER", "IMP"]));
    let categories: BTreeSet<&str> = resources_of(&bundle, "Observation")
        .iter()
        .map(|o| o["category"][0]["coding"][0]["code"].as_str().unwrap())
        .collect();
    assert_eq!(categories, BTreeSet::from(["laboratory", "vital-signs"]));
}

#[test]
fn every_reference_points_inside_the_bundle_at_the_right_type() {
    for options in [SynthOptions::default(), options(30, 77)] {
        let bundle = hospital_bundle(&options);
        let types = types_by_url(&bundle);
        for entry in entries(&bundle) {
            let resource = &entry["resource"];
            let mut found = Vec::new();
            references(resource, "", &mut found);
            for Found {
                holder,
                target,
                has_display,
            } in found
            {
                let Some(&target_type) = types.get(target.as_str()) else {
                    panic!(
                        "{} refers to {target}, which is not in the bundle",
                        resource["resourceType"]
                    );
                };
                let allowed: &[&str] = match holder.as_str() {
                    "subject" | "patient" => &["Patient"],
                    "encounter" => &["Encounter"],
                    "individual" | "requester" | "recorder" | "practitioner" | "member" => {
                        &["Practitioner"]
                    }
                    "performer" => &["Practitioner", "Organization"],
                    "serviceProvider"
                    | "partOf"
                    | "organization"
                    | "onBehalfOf"
                    | "managingOrganization"
                    | "assigner" => &["Organization"],
                    "location" => &["Location"],
                    "reasonReference" | "condition" => &["Condition"],
                    other => panic!("unexpected reference holder {other}"),
                };
                assert!(
                    allowed.contains(&target_type),
                    "{}.{holder} refers to a {target_type}",
                    resource["resourceType"]
                );
                if target_type == "Patient" {
                    assert!(
                        !has_display,
                        "a patient's name must live only in the Patient resource"
                    );
                }
            }
        }
    }
}

#[test]
fn entries_are_uniquely_addressed_posts() {
    let bundle = hospital_bundle(&options(40, 3));
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "transaction");
    let mut seen = BTreeSet::new();
    for entry in entries(&bundle) {
        let full_url = entry["fullUrl"].as_str().unwrap();
        assert!(seen.insert(full_url), "duplicate fullUrl {full_url}");
        let uuid = full_url
            .strip_prefix("urn:uuid:")
            .expect("urn:uuid full URL");
        let bytes = uuid.as_bytes();
        assert_eq!(uuid.len(), 36);
        assert_eq!(
            (bytes[8], bytes[13], bytes[18], bytes[23]),
            (b'-', b'-', b'-', b'-')
        );
        assert_eq!(bytes[14], b'4', "version 4: {uuid}");
        assert!(b"89ab".contains(&bytes[19]), "RFC variant: {uuid}");
        let resource = &entry["resource"];
        assert_eq!(entry["request"]["method"], "POST");
        assert_eq!(entry["request"]["url"], resource["resourceType"]);
        assert!(entry["request"].get("ifNoneExist").is_none());
        assert!(resource.get("id").is_none(), "the server assigns ids");
    }
}

/// The codes of R4 elements bound to a *required* value set: `fhir.resources` checks
/// structure and cardinality but not these, so they are checked here.
#[test]
fn required_bindings_use_their_value_sets_codes() {
    let bundle = hospital_bundle(&options(60, 11));
    let required: &[(&str, &str, &[&str])] = &[
        (
            "Patient",
            "/gender",
            &["male", "female", "other", "unknown"],
        ),
        (
            "Practitioner",
            "/gender",
            &["male", "female", "other", "unknown"],
        ),
        ("Location", "/status", &["active", "suspended", "inactive"]),
        ("Location", "/mode", &["instance", "kind"]),
        (
            "Encounter",
            "/status",
            &[
                "planned",
                "arrived",
                "triaged",
                "in-progress",
                "onleave",
                "finished",
                "cancelled",
                "entered-in-error",
                "unknown",
            ],
        ),
        (
            "Encounter",
            "/location/0/status",
            &["planned", "active", "reserved", "completed"],
        ),
        (
            "Observation",
            "/status",
            &[
                "registered",
                "preliminary",
                "final",
                "amended",
                "corrected",
                "cancelled",
                "entered-in-error",
                "unknown",
            ],
        ),
        (
            "Condition",
            "/clinicalStatus/coding/0/code",
            &[
                "active",
                "recurrence",
                "relapse",
                "inactive",
                "remission",
                "resolved",
            ],
        ),
        (
            "Condition",
            "/verificationStatus/coding/0/code",
            &[
                "unconfirmed",
                "provisional",
                "differential",
                "confirmed",
                "refuted",
                "entered-in-error",
            ],
        ),
        (
            "MedicationRequest",
            "/status",
            &[
                "active",
                "on-hold",
                "cancelled",
                "completed",
                "entered-in-error",
                "stopped",
                "draft",
                "unknown",
            ],
        ),
        (
            "MedicationRequest",
            "/intent",
            &[
                "proposal",
                "plan",
                "order",
                "original-order",
                "reflex-order",
                "filler-order",
                "instance-order",
                "option",
            ],
        ),
        (
            "MedicationRequest",
            "/dosageInstruction/0/timing/repeat/periodUnit",
            &["s", "min", "h", "d", "wk", "mo", "a"],
        ),
        (
            "AllergyIntolerance",
            "/clinicalStatus/coding/0/code",
            &["active", "inactive", "resolved"],
        ),
        (
            "AllergyIntolerance",
            "/verificationStatus/coding/0/code",
            &["unconfirmed", "confirmed", "refuted", "entered-in-error"],
        ),
        ("AllergyIntolerance", "/type", &["allergy", "intolerance"]),
        (
            "AllergyIntolerance",
            "/category/0",
            &["food", "medication", "environment", "biologic"],
        ),
        (
            "AllergyIntolerance",
            "/criticality",
            &["low", "high", "unable-to-assess"],
        ),
        (
            "AllergyIntolerance",
            "/reaction/0/severity",
            &["mild", "moderate", "severe"],
        ),
        (
            "CareTeam",
            "/status",
            &[
                "proposed",
                "active",
                "suspended",
                "inactive",
                "entered-in-error",
            ],
        ),
    ];
    for &(resource_type, pointer, codes) in required {
        let resources = resources_of(&bundle, resource_type);
        assert!(!resources.is_empty(), "no {resource_type} to check");
        for resource in resources {
            let code = resource.pointer(pointer).and_then(Value::as_str);
            assert!(
                code.is_some_and(|code| codes.contains(&code)),
                "{resource_type}{pointer} = {code:?}"
            );
        }
    }
    // Every name, telecom, address and identifier use is from its value set.
    let mut uses = BTreeSet::new();
    for entry in entries(&bundle) {
        for element in ["name", "telecom", "address", "identifier"] {
            for item in entry["resource"][element].as_array().into_iter().flatten() {
                uses.insert((element, item["use"].as_str().unwrap_or("").to_owned()));
                if element == "telecom" {
                    assert!(["phone", "email"].contains(&item["system"].as_str().unwrap()));
                }
            }
        }
    }
    for (element, used) in uses {
        let allowed: &[&str] = match element {
            "name" => &[
                "usual",
                "official",
                "temp",
                "nickname",
                "anonymous",
                "old",
                "maiden",
            ],
            "telecom" => &["home", "work", "temp", "old", "mobile"],
            "address" => &["home", "work", "temp", "old", "billing"],
            _ => &["usual", "official", "temp", "secondary", "old", ""],
        };
        assert!(allowed.contains(&used.as_str()), "{element}.use = {used}");
    }
}

#[test]
fn required_elements_are_present() {
    let bundle = hospital_bundle(&options(30, 12));
    let required: &[(&str, &[&str])] = &[
        (
            "Observation",
            &[
                "status",
                "code",
                "subject",
                "encounter",
                "effectiveDateTime",
            ],
        ),
        (
            "Encounter",
            &[
                "status",
                "class",
                "subject",
                "period",
                "serviceProvider",
                "location",
            ],
        ),
        (
            "MedicationRequest",
            &[
                "status",
                "intent",
                "subject",
                "medicationCodeableConcept",
                "requester",
                "authoredOn",
            ],
        ),
        ("AllergyIntolerance", &["patient", "code"]),
        (
            "Condition",
            &[
                "subject",
                "code",
                "clinicalStatus",
                "verificationStatus",
                "category",
            ],
        ),
        ("CareTeam", &["subject", "participant"]),
        (
            "Patient",
            &[
                "identifier",
                "name",
                "gender",
                "birthDate",
                "telecom",
                "address",
            ],
        ),
        ("Practitioner", &["identifier", "name"]),
        (
            "PractitionerRole",
            &["practitioner", "organization", "location"],
        ),
    ];
    for &(resource_type, elements) in required {
        for resource in resources_of(&bundle, resource_type) {
            for element in elements {
                assert!(
                    resource.get(element).is_some(),
                    "{resource_type} without {element}"
                );
            }
        }
    }
    for observation in resources_of(&bundle, "Observation") {
        let has_value = observation.get("valueQuantity").is_some();
        let has_components = observation.get("component").is_some();
        assert!(
            has_value != has_components,
            "one value or components: {observation}"
        );
        let quantities: Vec<&Value> = if has_value {
            vec![&observation["valueQuantity"]]
        } else {
            observation["component"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| &c["valueQuantity"])
                .collect()
        };
        for quantity in quantities {
            assert_eq!(quantity["system"], "http://unitsofmeasure.org");
            assert!(quantity["value"].is_number() && quantity["code"].is_string());
        }
        assert_eq!(
            observation["code"]["coding"][0]["system"],
            "http://loinc.org"
        );
    }
}

#[test]
fn timestamps_are_ordered_and_never_after_the_epoch() {
    for options in [
        SynthOptions::default(),
        options(40, 5),
        SynthOptions {
            encounters_per_patient_max: 12,
            ..options(15, 8)
        },
    ] {
        let bundle = hospital_bundle(&options);
        let encounters: HashMap<&str, &Value> = entries(&bundle)
            .iter()
            .filter(|e| e["resource"]["resourceType"] == "Encounter")
            .map(|e| (e["fullUrl"].as_str().unwrap(), &e["resource"]))
            .collect();
        let patients: HashMap<&str, &Value> = entries(&bundle)
            .iter()
            .filter(|e| e["resource"]["resourceType"] == "Patient")
            .map(|e| (e["fullUrl"].as_str().unwrap(), &e["resource"]))
            .collect();
        // Same-format UTC timestamps compare correctly as strings.
        let within = |at: &str, encounter: &Value| {
            let start = encounter["period"]["start"].as_str().unwrap();
            let end = encounter["period"]["end"].as_str().unwrap_or(EPOCH);
            start <= at && at <= end
        };
        let mut by_patient: HashMap<&str, Vec<&Value>> = HashMap::new();
        for encounter in encounters.values() {
            let patient = encounter["subject"]["reference"].as_str().unwrap();
            by_patient.entry(patient).or_default().push(encounter);
            let birth = patients[patient]["birthDate"].as_str().unwrap();
            assert!(birth < encounter["period"]["start"].as_str().unwrap());
            assert_eq!(
                encounter["status"] == "finished",
                encounter["period"].get("end").is_some()
            );
        }
        for (_, mut stays) in by_patient {
            stays.sort_by_key(|e| e["period"]["start"].as_str().unwrap().to_owned());
            for pair in stays.windows(2) {
                assert_eq!(
                    pair[0]["status"], "finished",
                    "only the last encounter may be in progress"
                );
                assert!(
                    pair[0]["period"]["end"].as_str().unwrap()
                        < pair[1]["period"]["start"].as_str().unwrap()
                );
            }
        }
        for observation in resources_of(&bundle, "Observation") {
            let encounter = encounters[observation["encounter"]["reference"].as_str().unwrap()];
            assert!(within(
                observation["effectiveDateTime"].as_str().unwrap(),
                encounter
            ));
            if let Some(issued) = observation["issued"].as_str() {
                assert!(
                    observation["effectiveDateTime"].as_str().unwrap() < issued && issued <= EPOCH
                );
            }
        }
        for request in resources_of(&bundle, "MedicationRequest") {
            let encounter = encounters[request["encounter"]["reference"].as_str().unwrap()];
            assert!(within(request["authoredOn"].as_str().unwrap(), encounter));
        }
        for condition in resources_of(&bundle, "Condition") {
            let encounter = encounters[condition["encounter"]["reference"].as_str().unwrap()];
            assert!(within(
                condition["recordedDate"].as_str().unwrap(),
                encounter
            ));
            let onset = condition["onsetDateTime"].as_str().unwrap();
            assert!(onset <= condition["recordedDate"].as_str().unwrap());
            if let Some(abated) = condition["abatementDateTime"].as_str() {
                assert_eq!(condition["clinicalStatus"]["coding"][0]["code"], "resolved");
                assert!(abated <= EPOCH);
            }
        }
        // Nothing at all is dated after the epoch (a lab result may be issued at it).
        let text = bundle.to_string();
        assert_eq!(
            text.matches("\"2026-").count(),
            text.matches(&format!("\"{EPOCH}\"")).count()
        );
        assert!(!text.contains("\"2027-") && !text.contains("\"2028-"));
    }
    assert_eq!(EPOCH_UNIX_SECONDS, 1_767_225_600);
}

#[test]
fn clinical_data_is_coherent() {
    let bundle = hospital_bundle(&options(300, 21));
    let mut by_patient: HashMap<&str, Vec<&Value>> = HashMap::new();
    for entry in entries(&bundle) {
        let resource = &entry["resource"];
        if let Some(patient) = resource["subject"]["reference"]
            .as_str()
            .or(resource["patient"]["reference"].as_str())
        {
            by_patient.entry(patient).or_default().push(resource);
        }
    }
    let code_of = |resource: &Value| {
        resource["code"]["coding"][0]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    let mut checked_penicillin = 0;
    let mut checked_diabetes = 0;
    for resources in by_patient.values() {
        let has = |resource_type: &str, code: &str| {
            resources
                .iter()
                .any(|r| r["resourceType"] == resource_type && code_of(r) == code)
        };
        if has("AllergyIntolerance", "91936005") {
            checked_penicillin += 1;
            assert!(
                !resources
                    .iter()
                    .any(|r| r["medicationCodeableConcept"]["coding"][0]["code"] == "J01CA04"),
                "amoxicillin prescribed to a patient allergic to penicillin"
            );
        }
        if has("Condition", "44054006") {
            for glucose in resources
                .iter()
                .filter(|r| r["resourceType"] == "Observation" && code_of(r) == "2345-7")
            {
                checked_diabetes += 1;
                assert!(glucose["valueQuantity"]["value"].as_i64().unwrap() > 110);
            }
        }
    }
    assert!(
        checked_penicillin > 0 && checked_diabetes > 0,
        "the sample exercises both rules"
    );
    for observation in resources_of(&bundle, "Observation") {
        let Some(range) = observation["referenceRange"].get(0) else {
            continue;
        };
        let value = observation["valueQuantity"]["value"].as_f64().unwrap();
        let interpretation = observation["interpretation"][0]["coding"][0]["code"]
            .as_str()
            .unwrap();
        let low = range["low"]["value"].as_f64().unwrap_or(f64::MIN);
        let high = range["high"]["value"].as_f64().unwrap_or(f64::MAX);
        let expected = if value < low {
            "L"
        } else if value > high {
            "H"
        } else {
            "N"
        };
        assert_eq!(interpretation, expected, "{observation}");
        assert_eq!(
            observation["category"][0]["coding"][0]["code"],
            "laboratory"
        );
    }
}

#[test]
fn identifiers_are_well_formed_and_unique() {
    let bundle = hospital_bundle(&options(200, 31));
    let mut mrns = BTreeSet::new();
    for patient in resources_of(&bundle, "Patient") {
        let identifier = |system: &str| {
            patient["identifier"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["system"] == system)
                .and_then(|i| i["value"].as_str())
                .unwrap_or_else(|| panic!("no {system} identifier"))
                .to_owned()
        };
        assert!(mrns.insert(identifier(MRN_SYSTEM)), "duplicate MRN");
        let nir = identifier(INS_NIR_TEST_SYSTEM);
        assert_eq!(nir.len(), 15);
        assert!(nir.bytes().all(|b| b.is_ascii_digit()));
        let body: u64 = nir[..13].parse().unwrap();
        let key: u64 = nir[13..].parse().unwrap();
        assert_eq!(key, 97 - body % 97, "NIR key of {nir}");
        let sex = &nir[..1];
        assert_eq!(
            sex,
            if patient["gender"] == "male" {
                "1"
            } else {
                "2"
            }
        );
        assert_eq!(
            &nir[1..3],
            &patient["birthDate"].as_str().unwrap()[2..4],
            "NIR year"
        );
    }
    let mut national_ids = BTreeSet::new();
    for practitioner in resources_of(&bundle, "Practitioner") {
        let identifier = &practitioner["identifier"][0];
        assert_eq!(identifier["system"], PRACTITIONER_IDENTIFIER_SYSTEM);
        let value = identifier["value"].as_str().unwrap();
        assert!(national_ids.insert(value.to_owned()));
        // IDNPS = 8 + RPPS; the RPPS's last digit is a Luhn check digit.
        assert_eq!(value.len(), 12);
        assert!(value.starts_with("810"));
        let luhn_sum: u32 = value[1..]
            .chars()
            .rev()
            .enumerate()
            .map(|(position, c)| {
                let digit = c.to_digit(10).unwrap();
                if position % 2 == 1 {
                    let doubled = digit * 2;
                    if doubled > 9 { doubled - 9 } else { doubled }
                } else {
                    digit
                }
            })
            .sum();
        assert_eq!(luhn_sum % 10, 0, "Luhn check of {value}");
    }
}

#[test]
fn people_are_diverse() {
    let bundle = hospital_bundle(&options(200, 41));
    let patients = resources_of(&bundle, "Patient");
    let languages: BTreeSet<&str> = patients
        .iter()
        .map(|p| {
            p["communication"][0]["language"]["coding"][0]["code"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert!(languages.len() >= 6, "{languages:?}");
    assert!(languages.contains("fr"));
    let genders: BTreeSet<&str> = patients
        .iter()
        .map(|p| p["gender"].as_str().unwrap())
        .collect();
    assert_eq!(genders.len(), 2);
    let births: BTreeSet<&str> = patients
        .iter()
        .map(|p| &p["birthDate"].as_str().unwrap()[..3])
        .collect();
    assert!(births.len() >= 5, "birth decades {births:?}");
    let families: BTreeSet<&str> = patients
        .iter()
        .map(|p| p["name"][0]["family"].as_str().unwrap())
        .collect();
    assert!(families.len() > 80);
    assert!(
        patients
            .iter()
            .any(|p| p["name"].as_array().unwrap().len() == 2),
        "some married names"
    );
}

#[test]
fn patient_bundles_hold_the_same_patients_and_stand_alone() {
    let options = options(12, 51);
    let whole = hospital_bundle(&options);
    let whole_entries: HashMap<&str, &Value> = entries(&whole)
        .iter()
        .map(|e| (e["fullUrl"].as_str().unwrap(), e))
        .collect();
    let bundles = patient_bundles(&options);
    assert_eq!(bundles.len(), 12);
    let mut patient_entries = 0;
    let mut shared_seen = BTreeSet::new();
    for bundle in bundles {
        assert_eq!(bundle["type"], "transaction");
        let types = types_by_url(&bundle);
        assert_eq!(resources_of(&bundle, "Patient").len(), 1);
        for entry in entries(&bundle) {
            let full_url = entry["fullUrl"].as_str().unwrap();
            let original = whole_entries[full_url];
            assert_eq!(
                entry["resource"], original["resource"],
                "same resource in both shapes"
            );
            let shared = ![
                "Patient",
                "Encounter",
                "Observation",
                "Condition",
                "MedicationRequest",
                "AllergyIntolerance",
                "CareTeam",
            ]
            .contains(&entry["resource"]["resourceType"].as_str().unwrap());
            if shared {
                shared_seen.insert(full_url.to_owned());
                let query = entry["request"]["ifNoneExist"]
                    .as_str()
                    .expect("shared entries are conditional");
                let identifier = &entry["resource"]["identifier"][0];
                assert_eq!(
                    query,
                    format!(
                        "identifier={}|{}",
                        identifier["system"].as_str().unwrap(),
                        identifier["value"].as_str().unwrap()
                    )
                );
            } else {
                patient_entries += 1;
                assert!(entry["request"].get("ifNoneExist").is_none());
            }
            let mut found = Vec::new();
            references(&entry["resource"], "", &mut found);
            for Found { target, .. } in found {
                assert!(
                    types.contains_key(target.as_str()),
                    "{target} missing from a patient bundle"
                );
            }
        }
    }
    let whole_patient_entries = entries(&whole).len() - 23;
    assert_eq!(patient_entries, whole_patient_entries);
    assert!(
        shared_seen.len() >= 4,
        "organizations, locations and practitioners come along"
    );
}

#[test]
fn the_demo_directory_names_people_of_the_bundle() {
    let options = options(15, 61);
    let bundle = hospital_bundle(&options);
    let by_url: HashMap<&str, &Value> = entries(&bundle)
        .iter()
        .map(|e| (e["fullUrl"].as_str().unwrap(), &e["resource"]))
        .collect();
    let directory = demo_people(&options);
    assert_eq!(directory.patients.len(), 15);
    assert_eq!(directory.practitioners.len(), 8);
    for person in directory.patients.iter().chain(&directory.practitioners) {
        let resource = by_url[person.full_url.as_str()];
        let identifiers = resource["identifier"].as_array().unwrap();
        assert!(
            identifiers
                .iter()
                .any(|i| i["system"] == person.identifier.system.as_str()
                    && i["value"] == person.identifier.value.as_str())
        );
        let token = person.identifier.search_token();
        assert!(token.contains('|') && token.ends_with(&person.identifier.value));
        let family_names: Vec<&str> = resource["name"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["family"].as_str().unwrap())
            .collect();
        assert!(
            family_names
                .iter()
                .any(|family| person.name.ends_with(family)),
            "{} vs {family_names:?}",
            person.name
        );
        assert!(!person.summary.is_empty());
    }
    assert!(
        directory
            .practitioners
            .iter()
            .filter(|p| p.name.starts_with("Dr "))
            .count()
            == 5
    );
}

#[test]
fn options_beyond_the_limits_are_refused() {
    assert_eq!(SynthOptions::default().check(), Ok(()));
    assert_eq!(SynthOptions::default().check_hospital_bundle(), Ok(()));
    let too_many = SynthOptions {
        patients: hygie_synth::HOSPITAL_BUNDLE_PATIENTS_MAX + 1,
        ..SynthOptions::default()
    };
    assert_eq!(too_many.check(), Ok(()), "fine as one bundle per patient");
    let error = too_many.check_hospital_bundle().unwrap_err();
    assert!(
        error.to_string().contains("one bundle per patient"),
        "{error}"
    );
    let cases = [
        SynthOptions {
            patients: hygie_synth::PATIENTS_MAX + 1,
            ..SynthOptions::default()
        },
        SynthOptions {
            observations_per_encounter: hygie_synth::OBSERVATIONS_PER_ENCOUNTER_MAX + 1,
            ..SynthOptions::default()
        },
        SynthOptions {
            encounters_per_patient_max: hygie_synth::ENCOUNTERS_PER_PATIENT_MAX + 1,
            ..SynthOptions::default()
        },
    ];
    for options in cases {
        assert!(
            matches!(options.check(), Err(SynthOptionsError::AboveLimit { .. })),
            "{options:?}"
        );
    }
    let none = SynthOptions {
        encounters_per_patient_max: 0,
        ..SynthOptions::default()
    };
    assert_eq!(none.check(), Err(SynthOptionsError::NoEncounters));
}

#[test]
#[should_panic(expected = "invalid synthetic data options")]
fn hospital_bundle_panics_on_refused_options() {
    hospital_bundle(&SynthOptions {
        encounters_per_patient_max: 0,
        ..SynthOptions::default()
    });
}

/// Benchmarks and demo instructions compare runs across versions: a change of the default
/// output must be deliberate, so its first patient is pinned here.
#[test]
fn default_output_is_pinned() {
    let bundle = hospital_bundle(&SynthOptions::default());
    let first = entries(&bundle)
        .iter()
        .find(|entry| entry["resource"]["resourceType"] == "Patient")
        .unwrap();
    assert_eq!(
        first["fullUrl"],
        "urn:uuid:49eeee42-ff74-417d-8c0f-5ef912b45160"
    );
    assert_eq!(first["resource"]["identifier"][0]["value"], "23683405");
    assert_eq!(first["resource"]["name"][0]["family"], "Morin");
    assert_eq!(entries(&bundle).len(), 762);
}
