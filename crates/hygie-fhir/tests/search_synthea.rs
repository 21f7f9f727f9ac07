//! Index extraction on real-world data: every resource of every Synthea bundle we have.
//!
//! The bundles are transactions whose references are `urn:uuid:` fullUrls; a server resolves
//! those to `Type/id` when it stores the entries, so the test does the same before extracting
//! (otherwise `patient`, which needs `resolve() is Patient`, could not see the subject's type).
//!
//! `testdata/synthea/` always; `../shared/data/synthea-r4` relative to the workspace root too
//! when it exists (a larger corpus that is not committed).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use hygie_fhir::search::date::{ZoneRule, parse_range};
use hygie_fhir::search::index::{IndexEntry, IndexValue, extract};
use hygie_fhir::search::params::{ParamType, search_param};
use serde_json::Value;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

/// The bundle's resources with `urn:uuid:` references rewritten to `Type/id`, as a server
/// storing the transaction would.
fn stored_resources(file: &Path) -> Vec<Value> {
    let bytes = std::fs::read(file).expect("readable file");
    let bundle: Value = serde_json::from_slice(&bytes).expect("valid JSON");
    let entries = bundle["entry"].as_array().expect("bundle entries");
    let ids: HashMap<String, String> = entries
        .iter()
        .filter_map(|e| {
            let r = &e["resource"];
            Some((
                e["fullUrl"].as_str()?.to_string(),
                format!("{}/{}", r["resourceType"].as_str()?, r["id"].as_str()?),
            ))
        })
        .collect();
    entries
        .iter()
        .map(|e| {
            let mut r = e["resource"].clone();
            rewrite(&mut r, &ids);
            r
        })
        .collect()
}

fn rewrite(value: &mut Value, ids: &HashMap<String, String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get_mut("reference")
                && let Some(local) = ids.get(r.as_str())
            {
                *r = local.clone();
            }
            map.values_mut().for_each(|v| rewrite(v, ids));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite(v, ids)),
        _ => {}
    }
}

/// What must hold of every extraction; returns the failures.
fn check(resource: &Value, entries: &[IndexEntry]) -> Vec<String> {
    let rt = resource["resourceType"].as_str().unwrap_or_default();
    let mut failures = Vec::new();
    let mut groups: HashMap<u32, (String, HashSet<usize>)> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if entries[..i].contains(e) {
            failures.push(format!("{rt}: duplicate {e:?}"));
        }
        let (code, component) = match e.param.split_once('#') {
            Some((c, n)) => (c, Some(n.parse::<usize>().expect("component index"))),
            None => (e.param.as_str(), None),
        };
        let Some(param) = search_param(rt, code) else {
            failures.push(format!("{rt}: entry for unknown parameter {}", e.param));
            continue;
        };
        if !param.supported || code == "_id" || code == "_lastUpdated" {
            failures.push(format!("{rt}: entry for {code}"));
        }
        match component {
            None if e.group != 0 || param.kind == ParamType::Composite => {
                failures.push(format!("{rt}: plain entry {e:?}"));
            }
            Some(n) => {
                let (owner, seen) = groups
                    .entry(e.group)
                    .or_insert_with(|| (code.to_string(), HashSet::new()));
                if e.group == 0 || *owner != code || n >= param.components.len() {
                    failures.push(format!("{rt}: composite entry {e:?}"));
                }
                seen.insert(n);
            }
            None => {}
        }
        match &e.value {
            IndexValue::Date { low_us, high_us } if low_us > high_us => {
                failures.push(format!("{rt}: {e:?}"));
            }
            IndexValue::Number { value, low, high }
            | IndexValue::Quantity {
                value, low, high, ..
            } if !(low <= value && value <= high) => failures.push(format!("{rt}: {e:?}")),
            IndexValue::String { normalized, .. } if normalized.is_empty() => {
                failures.push(format!("{rt}: {e:?}"));
            }
            _ => {}
        }
    }
    for (group, (code, seen)) in groups {
        let n = search_param(rt, &code).map_or(0, |p| p.components.len());
        if seen.len() != n {
            failures.push(format!("{rt}: group {group} of {code} lacks a component"));
        }
    }
    failures
}

fn extract_all(files: &[PathBuf]) -> (usize, usize, Vec<String>) {
    let (mut resources, mut entries, mut failures) = (0, 0, Vec::new());
    for file in files {
        for r in stored_resources(file) {
            let got = extract(&r);
            resources += 1;
            entries += got.len();
            failures.extend(check(&r, &got));
        }
    }
    (resources, entries, failures)
}

fn values<'e>(entries: &'e [IndexEntry], param: &str) -> Vec<&'e IndexValue> {
    entries
        .iter()
        .filter(|e| e.param == param)
        .map(|e| &e.value)
        .collect()
}

fn token(system: &str, code: &str) -> IndexValue {
    IndexValue::Token {
        system: Some(system.to_string()),
        code: code.to_string(),
    }
}

#[test]
fn every_committed_synthea_resource_extracts() {
    let files = json_files(&workspace_root().join("testdata/synthea"));
    let (resources, entries, failures) = extract_all(&files);
    assert!(resources > 300, "{resources} resources");
    assert!(entries > 10 * resources, "{entries} entries");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn a_synthea_patient() {
    let file = workspace_root()
        .join("testdata/synthea/Malcolm_Dach_281f4a03-57e9-4b22-a322-68890ff22172.json");
    let resources = stored_resources(&file);
    let patient = resources
        .iter()
        .find(|r| r["resourceType"] == "Patient")
        .expect("a Patient");
    let entries = extract(patient);
    assert_eq!(
        values(&entries, "family"),
        [&IndexValue::String {
            normalized: "dach".into(),
            exact: "Dach".into()
        }]
    );
    let (low_us, high_us) = parse_range("1978-05-26", ZoneRule::Required).unwrap();
    assert_eq!(
        values(&entries, "birthdate"),
        [&IndexValue::Date { low_us, high_us }]
    );
    assert_eq!(
        values(&entries, "gender"),
        [&IndexValue::Token {
            system: None,
            code: "male".into()
        }]
    );
    let identifiers = values(&entries, "identifier");
    assert!(identifiers.contains(&&token(
        "https://github.com/synthetichealth/synthea",
        "281f4a03-57e9-4b22-a322-68890ff22172"
    )));
    assert!(identifiers.contains(&&IndexValue::IdentifierOfType {
        type_system: Some("http://terminology.hl7.org/CodeSystem/v2-0203".into()),
        type_code: "SS".into(),
        value: "999-15-6195".into()
    }));
    assert!(identifiers.contains(&&IndexValue::TokenText("social security number".into())));
    let names = values(&entries, "name");
    assert!(names.len() >= 3, "{names:?}"); // family, given, prefix
    assert!(!values(&entries, "address-city").is_empty());
    assert!(!values(&entries, "phone").is_empty());
    assert_eq!(
        values(&entries, "_tag"),
        [&token("https://smarthealthit.org/tags", "synthea-5-2019")]
    );
}

#[test]
fn a_synthea_blood_pressure_observation() {
    let file = workspace_root()
        .join("testdata/synthea/Malcolm_Dach_281f4a03-57e9-4b22-a322-68890ff22172.json");
    let resources = stored_resources(&file);
    let bp = resources
        .iter()
        .find(|r| r["resourceType"] == "Observation" && r.get("component").is_some())
        .expect("a blood pressure Observation");
    let entries = extract(bp);
    assert!(values(&entries, "code").contains(&&token("http://loinc.org", "55284-4")));
    let patient = IndexValue::Reference {
        target_type: Some("Patient".into()),
        target_id: Some("e2d08f86-4813-4f3a-971f-87c09e0ec0c7".into()),
        url: "Patient/e2d08f86-4813-4f3a-971f-87c09e0ec0c7".into(),
    };
    assert_eq!(values(&entries, "subject"), [&patient]);
    assert_eq!(values(&entries, "patient"), [&patient]);
    let (low_us, high_us) = parse_range("2012-06-29T14:37:55+00:00", ZoneRule::Required).unwrap();
    assert_eq!(
        values(&entries, "date"),
        [&IndexValue::Date { low_us, high_us }]
    );
    let systolic: Vec<&IndexEntry> = entries
        .iter()
        .filter(|e| e.param.starts_with("component-code-value-quantity#"))
        .collect();
    assert_eq!(systolic.len(), 4, "{systolic:#?}");
    let group = systolic
        .iter()
        .find(|e| e.value == token("http://loinc.org", "8480-6"))
        .expect("systolic code")
        .group;
    let value = systolic
        .iter()
        .find(|e| e.group == group && e.param.ends_with("#1"))
        .expect("systolic value");
    assert!(
        matches!(&value.value, IndexValue::Quantity { value, code: Some(c), .. }
        if (*value - 132.172).abs() < 0.001 && c == "mm[Hg]")
    );

    // A single-value Observation: value-quantity and code-value-quantity#0/#1.
    let temperature = resources
        .iter()
        .find(|r| r["resourceType"] == "Observation" && r.get("valueQuantity").is_some())
        .expect("an Observation with a valueQuantity");
    let entries = extract(temperature);
    assert_eq!(values(&entries, "value-quantity").len(), 1);
    let cvq: Vec<&IndexEntry> = entries
        .iter()
        .filter(|e| e.param.starts_with("code-value-quantity#"))
        .collect();
    assert!(cvq.iter().any(|e| e.param == "code-value-quantity#0"));
    assert!(cvq.iter().any(|e| e.param == "code-value-quantity#1"));
    assert!(cvq.iter().all(|e| e.group == cvq[0].group && e.group > 0));
}

#[test]
fn every_shared_synthea_resource_extracts() {
    let dir = workspace_root().join("../shared/data/synthea-r4");
    if !dir.is_dir() {
        eprintln!("skipped: {} does not exist", dir.display());
        return;
    }
    let files = json_files(&dir);
    let (resources, entries, failures) = extract_all(&files);
    eprintln!(
        "{} bundles, {resources} resources, {entries} entries",
        files.len()
    );
    let shown: Vec<&String> = failures.iter().take(20).collect();
    assert!(
        failures.is_empty(),
        "{} failures, first ones:\n{shown:#?}",
        failures.len()
    );
}
