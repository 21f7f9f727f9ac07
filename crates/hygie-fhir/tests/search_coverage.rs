//! Which R4 search parameters are supported, for the resource types Hygie's clients use
//! most. A parameter that stops being supported (or starts to) fails the test, so the list
//! below stays the truth; `cargo test -p hygie-fhir --test search_coverage -- --nocapture`
//! prints the table.

use hygie_fhir::schema;
use hygie_fhir::search::params::search_params;

/// Unsupported everywhere: `_text` and `_content` (full-text search) and `_query` (named
/// queries) have no expression in R4.
const NO_EXPRESSION: [&str; 3] = ["_content", "_query", "_text"];

/// The common types and, beyond [`NO_EXPRESSION`], their unsupported parameters.
const EXPECTED: &[(&str, &[&str])] = &[
    // deceased: `Patient.deceased.exists() and Patient.deceased != false` (a computed
    // boolean); phonetic: a sound-alike match.
    ("Patient", &["deceased", "phonetic"]),
    ("Practitioner", &["phonetic"]),
    ("PractitionerRole", &[]),
    ("Organization", &["phonetic"]),
    // near: a geographic distance search (kind special).
    ("Location", &["near"]),
    ("Encounter", &[]),
    ("EpisodeOfCare", &[]),
    ("Observation", &[]),
    ("Condition", &[]),
    ("Procedure", &[]),
    ("MedicationRequest", &[]),
    ("MedicationAdministration", &[]),
    ("MedicationStatement", &[]),
    ("Medication", &[]),
    ("AllergyIntolerance", &[]),
    ("Immunization", &[]),
    ("DiagnosticReport", &[]),
    ("DocumentReference", &[]),
    ("ServiceRequest", &[]),
    ("CarePlan", &[]),
    ("CareTeam", &[]),
    ("Goal", &[]),
    ("Coverage", &[]),
    ("Claim", &[]),
    ("ExplanationOfBenefit", &[]),
    ("Device", &[]),
    ("Specimen", &[]),
    ("ImagingStudy", &[]),
    ("QuestionnaireResponse", &[]),
    ("Group", &[]),
    ("RelatedPerson", &["phonetic"]),
    ("Consent", &[]),
    ("Provenance", &[]),
    ("AuditEvent", &[]),
];

#[test]
fn coverage_of_common_types() {
    let mut failures = Vec::new();
    for (t, expected) in EXPECTED {
        let params = search_params(t);
        assert!(!params.is_empty(), "{t}");
        let mut unsupported: Vec<&str> = params
            .iter()
            .filter(|p| !p.supported)
            .map(|p| p.code.as_str())
            .collect();
        let mut want: Vec<&str> = NO_EXPRESSION
            .iter()
            .chain(expected.iter())
            .copied()
            .collect();
        unsupported.sort_unstable();
        want.sort_unstable();
        println!(
            "{t}: {} supported, {} unsupported ({})",
            params.len() - unsupported.len(),
            unsupported.len(),
            unsupported.join(", ")
        );
        if unsupported != want {
            failures.push(format!(
                "{t}: unsupported {unsupported:?}, expected {want:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Across all 146 types, the only unsupported parameters are the ones without an expression,
/// the phonetic and special ones, and four whose expressions are outside the subset (listed).
#[test]
fn coverage_of_all_types() {
    let mut all = 0;
    let mut other = Vec::new();
    for t in schema::resource_types() {
        for p in search_params(t) {
            all += 1;
            if p.supported || NO_EXPRESSION.contains(&p.code.as_str()) {
                continue;
            }
            let reason = p.unsupported_reason().unwrap_or_default();
            if reason.contains("phonetic") || p.code == "near" {
                continue;
            }
            other.push(format!("{t}.{}", p.code));
            println!("{t}.{}: {reason}", p.code);
        }
    }
    assert_eq!(
        other,
        [
            "Bundle.composition",
            "Bundle.message",
            "MolecularSequence.chromosome-variant-coordinate",
            "MolecularSequence.referenceseqid-variant-coordinate",
            "Patient.deceased",
        ]
    );
    assert!(all > 3000, "{all}");
}
