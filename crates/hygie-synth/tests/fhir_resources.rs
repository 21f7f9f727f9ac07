//! Runs `validate_with_fhir_resources.py` (the independent Python library `fhir.resources`
//! 6.4.0, FHIR R4) on generated bundles, when `HYGIE_SYNTH_PYTHON` names a Python that has
//! it:
//!
//! ```text
//! python3 -m venv /tmp/synth-venv
//! /tmp/synth-venv/bin/pip install 'fhir.resources==6.4.0' 'pydantic<2'
//! HYGIE_SYNTH_PYTHON=/tmp/synth-venv/bin/python cargo test -p hygie-synth --test fhir_resources
//! ```
//!
//! Without the variable the test says it skipped the check and passes, so that a machine
//! without Python packages can still run the crate's tests.

use std::path::PathBuf;
use std::process::Command;

use hygie_synth::{SynthOptions, hospital_bundle, patient_bundles};

const PYTHON_VARIABLE: &str = "HYGIE_SYNTH_PYTHON";

#[test]
fn bundles_validate_with_fhir_resources() {
    let Some(python) = std::env::var_os(PYTHON_VARIABLE) else {
        // CI (scripts/test) always provides the venv: there, a missing one is a failure.
        assert!(
            std::env::var_os("CI").is_none(),
            "{PYTHON_VARIABLE} is not set under CI: scripts/test must provide fhir.resources"
        );
        eprintln!(
            "SKIPPED the fhir.resources check: set {PYTHON_VARIABLE} to a Python with \
             fhir.resources==6.4.0 (see tests/fhir_resources.rs)"
        );
        return;
    };
    let directory = std::env::temp_dir().join(format!("hygie-synth-{}", std::process::id()));
    std::fs::create_dir_all(&directory).expect("create a temporary directory");
    let mut files: Vec<PathBuf> = Vec::new();
    for seed in [42, 7] {
        let options = SynthOptions {
            patients: 40,
            seed,
            ..SynthOptions::default()
        };
        let path = directory.join(format!("hospital-{seed}.json"));
        std::fs::write(&path, hospital_bundle(&options).to_string()).expect("write the bundle");
        files.push(path);
    }
    let options = SynthOptions {
        patients: 5,
        seed: 3,
        observations_per_encounter: 16,
        encounters_per_patient_max: 6,
    };
    let per_patient: Vec<String> = patient_bundles(&options).map(|b| b.to_string()).collect();
    let path = directory.join("per-patient.ndjson");
    std::fs::write(&path, per_patient.join("\n")).expect("write the bundles");
    files.push(path);

    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/validate_with_fhir_resources.py");
    let output = Command::new(&python)
        .arg(&script)
        .args(&files)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", python.to_string_lossy()));
    let _ = std::fs::remove_dir_all(&directory);
    let report = String::from_utf8_lossy(&output.stdout);
    eprintln!("{report}{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "fhir.resources rejected generated resources:\n{report}"
    );
}
