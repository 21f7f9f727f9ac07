//! Deterministic synthetic hospital data, as FHIR R4 transaction Bundles, for `hygie demo`,
//! tests and benchmarks.
//!
//! One hospital (an Organization with two departments, four Locations, eight Practitioners
//! and their PractitionerRoles) and its patients: French and international names, national
//! (INS test namespace) and hospital identifiers, 1–4 encounters each (outpatient,
//! emergency, inpatient) with vital signs and laboratory results (LOINC, UCUM), diagnoses
//! (SNOMED CT), prescriptions (ATC), allergies and care teams. Values follow the patient:
//! a diabetic's glucose is high, a patient with pneumonia is febrile, a patient allergic to
//! penicillin is not prescribed amoxicillin.
//!
//! The same [`SynthOptions`] always give byte-identical output: a small seeded generator
//! (not cryptographic) draws everything, including the `urn:uuid:` full URLs, and dates are
//! relative to a fixed epoch ([`EPOCH_UNIX_SECONDS`], 2026-01-01) instead of "now". Pure:
//! no IO, no clock, no global state.
//!
//! ```
//! use hygie_synth::{SynthOptions, hospital_bundle};
//!
//! let options = SynthOptions { patients: 3, ..SynthOptions::default() };
//! let bundle = hospital_bundle(&options);
//! assert_eq!(bundle["type"], "transaction");
//! let patients = bundle["entry"]
//!     .as_array()
//!     .unwrap()
//!     .iter()
//!     .filter(|entry| entry["resource"]["resourceType"] == "Patient")
//!     .count();
//! assert_eq!(patients, 3);
//! assert_eq!(bundle, hospital_bundle(&options)); // deterministic
//! ```
//!
//! # Checked against an independent FHIR implementation
//!
//! `tests/validate_with_fhir_resources.py` validates every entry of a bundle file, and the
//! whole Bundle, with the Python library `fhir.resources` 6.4.0 (FHIR R4 4.0.1 models):
//!
//! ```text
//! python3 -m venv /tmp/synth-venv
//! /tmp/synth-venv/bin/pip install 'fhir.resources==6.4.0' 'pydantic<2'
//! cargo run -p hygie-synth --example synth_bundle -- --patients 20 --seed 42 > /tmp/bundle.json
//! /tmp/synth-venv/bin/python crates/hygie-synth/tests/validate_with_fhir_resources.py /tmp/bundle.json
//! ```
//!
//! `cargo test -p hygie-synth` runs the same check when `HYGIE_SYNTH_PYTHON` names a Python
//! with `fhir.resources` installed (for example `/tmp/synth-venv/bin/python`), and says it
//! skipped the check otherwise.
#![forbid(unsafe_code)]

mod catalog;
mod clinical;
mod fhir;
mod hospital;
mod observations;
mod patient;
mod people;
mod rng;
mod time;

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{Map, Value};

pub use clinical::VISIT_IDENTIFIER_SYSTEM;
pub use hospital::{
    HOSPITAL_LOCAL_IDENTIFIER_SYSTEM, ORGANIZATION_IDENTIFIER_SYSTEM,
    PRACTITIONER_IDENTIFIER_SYSTEM,
};
pub use patient::{INS_NIR_TEST_SYSTEM, MRN_SYSTEM};
pub use time::EPOCH_UNIX_SECONDS;

use clinical::generate_patient;
use hospital::Hospital;
use patient::PatientIdentity;
use rng::SynthRng;

/// Most patients in the single bundle of [`hospital_bundle`]: beyond this the bundle (about
/// 40 entries and 60 KiB of JSON per patient) is too large for one transaction; use
/// [`patient_bundles`].
pub const HOSPITAL_BUNDLE_PATIENTS_MAX: usize = 5_000;
/// Most patients [`patient_bundles`] and [`demo_people`] generate.
pub const PATIENTS_MAX: usize = 10_000_000;
/// Most encounters one patient can have (also keeps encounters from overlapping in time).
pub const ENCOUNTERS_PER_PATIENT_MAX: usize = 12;
/// Most observations recorded during one encounter.
pub const OBSERVATIONS_PER_ENCOUNTER_MAX: usize = 100;

/// Generator streams: each part of the data draws from its own, so that adding draws to one
/// part does not shift another, and patient N is the same however many patients are asked.
const STREAM_HOSPITAL: u64 = 1;
const STREAM_PATIENT: u64 = 2;

/// What to generate. Equal options give byte-identical output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthOptions {
    /// Number of patients.
    pub patients: usize,
    /// Seed of the generator: a different seed gives different people and data.
    pub seed: u64,
    /// Observations (vital signs then laboratory results) recorded during each encounter.
    pub observations_per_encounter: usize,
    /// Each patient gets between 1 and this many encounters.
    pub encounters_per_patient_max: usize,
}

impl Default for SynthOptions {
    fn default() -> Self {
        Self {
            patients: 20,
            seed: 42,
            observations_per_encounter: 8,
            encounters_per_patient_max: 4,
        }
    }
}

impl SynthOptions {
    /// Checks the options against the generator's limits ([`PATIENTS_MAX`],
    /// [`ENCOUNTERS_PER_PATIENT_MAX`], [`OBSERVATIONS_PER_ENCOUNTER_MAX`]).
    pub fn check(&self) -> Result<(), SynthOptionsError> {
        let bounded = |field, value, max| {
            if value > max {
                Err(SynthOptionsError::AboveLimit { field, value, max })
            } else {
                Ok(())
            }
        };
        bounded("patients", self.patients, PATIENTS_MAX)?;
        bounded(
            "observations_per_encounter",
            self.observations_per_encounter,
            OBSERVATIONS_PER_ENCOUNTER_MAX,
        )?;
        bounded(
            "encounters_per_patient_max",
            self.encounters_per_patient_max,
            ENCOUNTERS_PER_PATIENT_MAX,
        )?;
        if self.encounters_per_patient_max == 0 {
            return Err(SynthOptionsError::NoEncounters);
        }
        Ok(())
    }

    /// [`check`](Self::check), plus [`HOSPITAL_BUNDLE_PATIENTS_MAX`] for one single bundle.
    pub fn check_hospital_bundle(&self) -> Result<(), SynthOptionsError> {
        self.check()?;
        if self.patients > HOSPITAL_BUNDLE_PATIENTS_MAX {
            return Err(SynthOptionsError::AboveLimit {
                field: "patients",
                value: self.patients,
                max: HOSPITAL_BUNDLE_PATIENTS_MAX,
            });
        }
        Ok(())
    }
}

/// Options the generator refuses, with the limit that was crossed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SynthOptionsError {
    AboveLimit {
        field: &'static str,
        value: usize,
        max: usize,
    },
    NoEncounters,
}

impl fmt::Display for SynthOptionsError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AboveLimit {
                field: "patients",
                value,
                max,
            } if *max == HOSPITAL_BUNDLE_PATIENTS_MAX => {
                write!(
                    formatter,
                    "{value} patients is more than one bundle holds ({max}); \
                     generate one bundle per patient instead"
                )
            }
            Self::AboveLimit { field, value, max } => {
                write!(formatter, "{field} = {value} is above the limit of {max}")
            }
            Self::NoEncounters => {
                write!(formatter, "encounters_per_patient_max must be at least 1")
            }
        }
    }
}

impl std::error::Error for SynthOptionsError {}

/// ONE FHIR R4 transaction Bundle with the whole hospital and all its patients.
///
/// Entries create resources with `POST` at `urn:uuid:` full URLs and refer to each other by
/// those URLs, so a server can load it in one transaction.
///
/// # Panics
///
/// If [`SynthOptions::check_hospital_bundle`] fails: call it first on untrusted options.
pub fn hospital_bundle(options: &SynthOptions) -> Value {
    if let Err(error) = options.check_hospital_bundle() {
        panic!("invalid synthetic data options: {error}");
    }
    let hospital = generate_hospital(options.seed);
    let mut entries = hospital.entries(false);
    for patient_index in 0..options.patients {
        entries.extend(generate_record(&hospital, options, patient_index));
    }
    transaction(entries)
}

/// One small, self-contained transaction Bundle per patient (for benchmarks and bulk loads),
/// with the same patients as [`hospital_bundle`] for the same options.
///
/// Each bundle also carries the hospital resources its patient refers to (organizations,
/// locations, practitioners) as *conditional* creates (`ifNoneExist` on their identifier), so
/// that a server loading many bundles creates the hospital once and links every patient to it.
///
/// # Panics
///
/// If [`SynthOptions::check`] fails: call it first on untrusted options.
pub fn patient_bundles(options: &SynthOptions) -> PatientBundles {
    if let Err(error) = options.check() {
        panic!("invalid synthetic data options: {error}");
    }
    let hospital = generate_hospital(options.seed);
    let shared_entries = hospital.entries(true);
    PatientBundles {
        options: options.clone(),
        hospital,
        shared_entries,
        next_patient: 0,
    }
}

/// The iterator of [`patient_bundles`]: generates each bundle when asked for it, so that
/// millions of patients need no more memory than one.
#[derive(Debug, Clone)]
pub struct PatientBundles {
    options: SynthOptions,
    hospital: Hospital,
    shared_entries: Vec<Value>,
    next_patient: usize,
}

impl Iterator for PatientBundles {
    type Item = Value;

    fn next(&mut self) -> Option<Value> {
        if self.next_patient >= self.options.patients {
            return None;
        }
        let record = generate_record(&self.hospital, &self.options, self.next_patient);
        self.next_patient += 1;
        let referenced = referenced_urls(&record, &self.shared_entries);
        let mut entries: Vec<Value> = self
            .shared_entries
            .iter()
            .filter(|entry| referenced.contains(entry["fullUrl"].as_str().unwrap_or_default()))
            .cloned()
            .collect();
        entries.extend(record);
        Some(transaction(entries))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let remaining = self.options.patients - self.next_patient;
        (remaining, Some(remaining))
    }
}

impl ExactSizeIterator for PatientBundles {}

/// The people of a generated data set, for a CLI to print "try these" examples.
///
/// `full_url`s are the bundle's `urn:uuid:` URLs; a server assigns its own ids when it loads
/// the bundle, so search by `identifier` (`identifier.search_token()`) to find them again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoDirectory {
    pub practitioners: Vec<DemoPerson>,
    pub patients: Vec<DemoPerson>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoPerson {
    /// The entry's `fullUrl` (`urn:uuid:…`) in the generated bundles.
    pub full_url: String,
    /// How the person is addressed: "Dr Claire Martin", "Youssef Benali".
    pub name: String,
    /// The identifier to search for: the MRN of a patient, the RPPS-based IDNPS of a
    /// practitioner.
    pub identifier: DemoIdentifier,
    /// One line about them: "female, 67, born 1958-03-02" or "physician, Cardiology – …".
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoIdentifier {
    pub system: String,
    pub value: String,
}

impl DemoIdentifier {
    /// `system|value`, as a FHIR token search takes it: `Patient?identifier=<this>`.
    pub fn search_token(&self) -> String {
        format!("{}|{}", self.system, self.value)
    }
}

/// The practitioners and patients that [`hospital_bundle`] and [`patient_bundles`] generate
/// for the same options, without generating their clinical data.
///
/// # Panics
///
/// If [`SynthOptions::check`] fails: call it first on untrusted options.
pub fn demo_people(options: &SynthOptions) -> DemoDirectory {
    if let Err(error) = options.check() {
        panic!("invalid synthetic data options: {error}");
    }
    let hospital = generate_hospital(options.seed);
    let practitioners = hospital
        .staff
        .iter()
        .map(|member| DemoPerson {
            full_url: member.practitioner_url.clone(),
            name: member.display_name(),
            identifier: DemoIdentifier {
                system: PRACTITIONER_IDENTIFIER_SYSTEM.to_owned(),
                value: member.national_id.clone(),
            },
            summary: member.description(),
        })
        .collect();
    let patients = (0..options.patients)
        .map(|patient_index| {
            let identity = generate_identity(
                &mut patient_rng(options.seed, patient_index),
                &hospital,
                patient_index,
            );
            DemoPerson {
                full_url: identity.full_url.clone(),
                name: identity.display_name(),
                identifier: DemoIdentifier {
                    system: MRN_SYSTEM.to_owned(),
                    value: identity.mrn.clone(),
                },
                summary: format!(
                    "{}, {}, born {}",
                    identity.gender().fhir_code(),
                    identity.age_years(),
                    time::fhir_date(identity.birth)
                ),
            }
        })
        .collect();
    DemoDirectory {
        practitioners,
        patients,
    }
}

fn generate_hospital(seed: u64) -> Hospital {
    Hospital::generate(&mut SynthRng::for_stream(seed, STREAM_HOSPITAL, 0))
}

fn patient_rng(seed: u64, patient_index: usize) -> SynthRng {
    SynthRng::for_stream(seed, STREAM_PATIENT, patient_index as u64)
}

fn generate_identity(
    rng: &mut SynthRng,
    hospital: &Hospital,
    patient_index: usize,
) -> PatientIdentity {
    PatientIdentity::generate(rng, hospital, patient_index)
}

/// The entries of patient `patient_index`, Patient first.
fn generate_record(
    hospital: &Hospital,
    options: &SynthOptions,
    patient_index: usize,
) -> Vec<Value> {
    let mut rng = patient_rng(options.seed, patient_index);
    let identity = generate_identity(&mut rng, hospital, patient_index);
    generate_patient(
        &mut rng,
        hospital,
        &identity,
        options.encounters_per_patient_max,
        options.observations_per_encounter,
    )
}

fn transaction(entries: Vec<Value>) -> Value {
    // Built by hand: `json!` would deep-copy every entry through the serializer.
    let mut bundle = Map::with_capacity(3);
    bundle.insert("resourceType".to_owned(), Value::from("Bundle"));
    bundle.insert("type".to_owned(), Value::from("transaction"));
    bundle.insert("entry".to_owned(), Value::Array(entries));
    Value::Object(bundle)
}

/// The full URLs that `entries` refer to, closed over what the referenced `shared` entries
/// refer to in turn (a Location names its department, a department its hospital).
fn referenced_urls(entries: &[Value], shared: &[Value]) -> BTreeSet<String> {
    let mut referenced = BTreeSet::new();
    for entry in entries {
        collect_references(&entry["resource"], &mut referenced);
    }
    // Shared entries only refer to entries before them, so one pass from the end suffices.
    for entry in shared.iter().rev() {
        if referenced.contains(entry["fullUrl"].as_str().unwrap_or_default()) {
            collect_references(&entry["resource"], &mut referenced);
        }
    }
    referenced
}

/// Every `reference` string inside a resource.
fn collect_references(value: &Value, found: &mut BTreeSet<String>) {
    match value {
        Value::Object(object) => {
            for (key, child) in object {
                match child {
                    Value::String(target) if key == "reference" => {
                        found.insert(target.clone());
                    }
                    _ => collect_references(child, found),
                }
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|item| collect_references(item, found)),
        _ => {}
    }
}
