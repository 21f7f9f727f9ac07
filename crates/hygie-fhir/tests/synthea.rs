//! Real-world input: every Synthea bundle we have, and every resource in it, validates.
//!
//! `testdata/synthea/` (in the repository) always; `../shared/data/synthea-r4` relative to the
//! workspace root too when it exists (a larger corpus that is not committed).

use std::path::{Path, PathBuf};

use hygie_fhir::validate::validate_resource;
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

/// Validates each bundle and each entry's resource on its own; returns the failures.
fn validate_bundles(files: &[PathBuf]) -> (usize, Vec<String>) {
    let mut failures = Vec::new();
    let mut resources = 0;
    for file in files {
        let bytes = std::fs::read(file).expect("readable file");
        let bundle: Value = serde_json::from_slice(&bytes).expect("valid JSON");
        let name = file.file_name().unwrap().to_string_lossy();
        if let Err(issues) = validate_resource(&bundle) {
            failures.push(format!("{name}: {issues:#?}"));
        }
        for entry in bundle["entry"].as_array().expect("bundle entries") {
            resources += 1;
            if let Err(issues) = validate_resource(&entry["resource"]) {
                failures.push(format!("{name} {}: {issues:#?}", entry["fullUrl"]));
            }
        }
    }
    (resources, failures)
}

#[test]
fn every_committed_synthea_bundle_and_resource_validates() {
    let files = json_files(&workspace_root().join("testdata/synthea"));
    assert!(
        files.len() >= 4,
        "testdata/synthea has the committed bundles"
    );
    let (resources, failures) = validate_bundles(&files);
    assert!(resources > 300, "{resources} resources");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The binding checks do run on real data: a Synthea Condition with its clinical status code
/// changed is rejected.
#[test]
fn a_synthea_condition_with_a_wrong_clinical_status_is_rejected() {
    let files = json_files(&workspace_root().join("testdata/synthea"));
    let mut checked = 0;
    for file in &files {
        let bytes = std::fs::read(file).expect("readable file");
        let bundle: Value = serde_json::from_slice(&bytes).expect("valid JSON");
        for entry in bundle["entry"].as_array().expect("bundle entries") {
            let resource = &entry["resource"];
            if resource["resourceType"] != "Condition" {
                continue;
            }
            let mut wrong = resource.clone();
            wrong["clinicalStatus"]["coding"][0]["code"] = "finished".into();
            let issues = validate_resource(&wrong).expect_err("wrong clinical status");
            assert_eq!(issues.len(), 1, "{issues:#?}");
            assert_eq!(
                issues[0].expression.as_deref(),
                Some("Condition.clinicalStatus.coding[0].code")
            );
            checked += 1;
        }
    }
    assert!(checked >= 5, "{checked} conditions");
}

#[test]
fn every_shared_synthea_bundle_and_resource_validates() {
    let dir = workspace_root().join("../shared/data/synthea-r4");
    if !dir.is_dir() {
        eprintln!("skipped: {} does not exist", dir.display());
        return;
    }
    let files = json_files(&dir);
    assert!(!files.is_empty());
    let (resources, failures) = validate_bundles(&files);
    eprintln!("{} bundles, {resources} resources", files.len());
    let shown: Vec<&String> = failures.iter().take(20).collect();
    assert!(
        failures.is_empty(),
        "{} failures, first ones:\n{shown:#?}",
        failures.len()
    );
}
