//! The mapping over real sample messages (tests/data, from microsoft/FHIR-Converter): each
//! maps to a transaction whose every resource is valid R4 and whose every reference is
//! resolved inside it, or gets the precise refusal a sender can act on.

use std::collections::{BTreeMap, HashSet};

use hygie_hl7v2::{AckCode, ErrorCode, Limits, parse};
use hygie_mllp::mapping::{MappingSettings, Refusal, map_message};
use proptest::prelude::*;
use serde_json::Value;

fn settings() -> MappingSettings {
    MappingSettings {
        identifier_systems: BTreeMap::from(
            [
                ("test1", "urn:oid:2.16.1"),
                ("BCBS", "urn:example:bcbs"),
                ("1", "urn:example:accmgr"),
                ("EHRID", "urn:example:ehr"),
                ("NIST MPI", "urn:example:nist-mpi"),
            ]
            .map(|(a, s)| (a.to_owned(), s.to_owned())),
        ),
        time_zone: jiff::tz::TimeZone::get("Europe/Paris").unwrap(),
    }
}

fn sample(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn map(name: &str) -> Result<hygie_mllp::Mapped, Refusal> {
    let message = parse(&sample(name), &Limits::default()).expect("the sample parses");
    map_message(&message, &settings())
}

/// Every resource valid R4, every `urn:uuid:` reference one of the entries' fullUrl.
fn check_transaction(bundle: &Value) -> Vec<(String, String)> {
    assert_eq!(bundle["type"], "transaction");
    let entries = bundle["entry"].as_array().unwrap();
    let full_urls: HashSet<&str> = entries
        .iter()
        .map(|e| e["fullUrl"].as_str().unwrap())
        .collect();
    let mut requests = Vec::new();
    for entry in entries {
        let resource = &entry["resource"];
        if let Err(issues) = hygie_fhir::validate::validate_resource(resource) {
            panic!(
                "invalid {}: {issues:?}\n{resource:#}",
                resource["resourceType"]
            );
        }
        let text = resource.to_string();
        for reference in text.split("\"reference\":\"").skip(1) {
            let reference = &reference[..reference.find('"').unwrap()];
            assert!(
                full_urls.contains(reference),
                "{reference} is not an entry of the transaction"
            );
        }
        requests.push((
            entry["request"]["method"].as_str().unwrap().to_owned(),
            entry["request"]["url"].as_str().unwrap().to_owned(),
        ));
    }
    requests
}

fn types(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn admissions_map_to_patient_encounter_practitioners_and_ward() {
    for name in [
        "ADT-A01-01.hl7",
        "ADT-A02-01.hl7",
        "ADT-A03-01.hl7",
        "ADT-A04-01.hl7",
        "ADT-A08-01.hl7",
        "ADT-A11-01.hl7",
        "ADT01-23.hl7",
        "ADT04-28.hl7",
    ] {
        let mapped = map(name).unwrap_or_else(|r| panic!("{name}: {r:?}"));
        let requests = check_transaction(&mapped.bundle);
        let kinds = types(&mapped.bundle);
        assert_eq!(kinds[0], "Patient", "{name}");
        assert_eq!(
            kinds.iter().filter(|k| *k == "Encounter").count(),
            1,
            "{name}"
        );
        // ADT is the source of demographics: a conditional update by identifier.
        assert_eq!(requests[0].0, "PUT", "{name}");
        assert!(requests[0].1.starts_with("Patient?identifier="), "{name}");
        assert!(mapped.merge_prior.is_none());
    }
    let a01 = map("ADT-A01-01.hl7").unwrap().bundle;
    let patient = &a01["entry"][0]["resource"];
    assert_eq!(patient["identifier"][0]["system"], "urn:oid:2.16.1");
    assert_eq!(patient["identifier"][0]["value"], "PATID1234");
    assert_eq!(patient["name"][0]["family"], "EVERYMAN");
    assert_eq!(patient["address"][0]["line"][0], "1000 Hospital Lane");
    assert_eq!(patient["birthDate"], "1988-08-18");
    let encounter = a01["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["resource"]["resourceType"] == "Encounter")
        .unwrap();
    let roles: Vec<&str> = encounter["resource"]["participant"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"][0]["coding"][0]["code"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["ATND", "REF", "CON", "ADM"]);
    // An offset sent with the time is kept.
    assert_eq!(
        encounter["resource"]["period"]["start"],
        "2015-02-08T11:34:19+01:10"
    );
}

#[test]
fn demographics_updates_and_merges() {
    let a31 = map("ADT-A31-01.hl7").unwrap();
    assert_eq!(types(&a31.bundle), ["Patient"]);
    let a40 = map("ADT-A40-01.hl7").unwrap();
    check_transaction(&a40.bundle);
    assert_eq!(
        a40.merge_prior,
        Some(("urn:example:bcbs".to_owned(), "56789".to_owned()))
    );
}

#[test]
fn results_map_to_reports_and_observations() {
    let lab = map("LAB-ORU-1.hl7").unwrap().bundle;
    let requests = check_transaction(&lab);
    let kinds = types(&lab);
    assert_eq!(kinds.iter().filter(|k| *k == "DiagnosticReport").count(), 2);
    // Results only create an unknown patient; they never overwrite demographics.
    assert_eq!(requests[0].0, "POST");
    let cbc = map("LRI_2.0-NG_CBC_Typ_Message.hl7").unwrap().bundle;
    check_transaction(&cbc);
    let observations: Vec<&Value> = cbc["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == "Observation")
        .collect();
    assert!(observations.len() >= 6);
    let hemoglobin = observations
        .iter()
        .find(|o| o["code"]["coding"][0]["code"] == "718-7")
        .unwrap();
    assert_eq!(hemoglobin["valueQuantity"]["value"], 12.5);
    assert_eq!(hemoglobin["valueQuantity"]["code"], "g/mL");
    assert_eq!(hemoglobin["interpretation"][0]["coding"][0]["code"], "L");
    assert_eq!(hemoglobin["effectiveDateTime"], "2011-01-03T14:34:28-08:00");
}

/// A PV1 in a result message: the report and its observations point at the visit's
/// Encounter, created only if unknown (POST with `ifNoneExist`, never a PUT over the
/// admission's data).
#[test]
fn results_with_a_visit_point_at_its_encounter() {
    let text = String::from_utf8(sample("LAB-ORU-1.hl7")).unwrap();
    let with_visit = text.replacen("\nOBR|", "\nPV1|1|O|||||||||||||||||V777\nOBR|", 1);
    assert_ne!(with_visit, text, "the sample has an OBR after its PID");
    let message = parse(with_visit.as_bytes(), &Limits::default()).unwrap();
    let bundle = map_message(&message, &settings()).unwrap().bundle;
    let requests = check_transaction(&bundle);
    let entries = bundle["entry"].as_array().unwrap();
    let visits: Vec<&Value> = entries
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "Encounter")
        .collect();
    assert_eq!(visits.len(), 1, "one Encounter for the one visit");
    let visit = visits[0];
    assert_eq!(visit["request"]["method"], "POST");
    assert!(
        visit["request"]["ifNoneExist"]
            .as_str()
            .unwrap()
            .ends_with("%7CV777"),
        "{visit}"
    );
    assert_eq!(visit["resource"]["status"], "unknown");
    assert_eq!(visit["resource"]["class"]["code"], "AMB");
    let url = visit["fullUrl"].as_str().unwrap();
    let results: Vec<&Value> = entries
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| {
            matches!(
                r["resourceType"].as_str(),
                Some("DiagnosticReport" | "Observation")
            )
        })
        .collect();
    assert!(results.len() >= 3);
    for result in results {
        assert_eq!(result["encounter"]["reference"], url, "{result}");
    }
    assert!(
        !requests
            .iter()
            .any(|(method, url)| method == "PUT" && url.starts_with("Encounter"))
    );
    // A class outside table 0004 is refused at PV1-2.
    let bad = with_visit.replace("PV1|1|O|", "PV1|1|Z|");
    let message = parse(bad.as_bytes(), &Limits::default()).unwrap();
    let refused = map_message(&message, &settings()).unwrap_err();
    assert_eq!(refused.error.code, ErrorCode::TableValueNotFound);
    let location = refused.error.location.unwrap();
    assert_eq!(
        (location.segment_id.as_str(), location.field),
        ("PV1", Some(2))
    );
}

#[test]
fn what_cannot_be_mapped_is_refused_precisely() {
    let refused = |name: &str| map(name).expect_err(name);
    let unsupported_event = refused("ADT-A05-01.hl7");
    assert_eq!(
        (unsupported_event.code, unsupported_event.error.code),
        (AckCode::Reject, ErrorCode::UnsupportedEventCode)
    );
    let unsupported_type = refused("SIU-S12-01.hl7");
    assert_eq!(
        (unsupported_type.code, unsupported_type.error.code),
        (AckCode::Reject, ErrorCode::UnsupportedMessageType)
    );
    // PID-3 without an assigning authority: which system would the number belong to?
    let no_authority = refused("ADT04-251.hl7");
    assert_eq!(no_authority.error.code, ErrorCode::TableValueNotFound);
    let location = no_authority.error.location.unwrap();
    assert_eq!(
        (location.segment_id.as_str(), location.field),
        ("PID", Some(3))
    );
    assert!(no_authority.error.diagnostic.contains("CX-4 is empty"));
    // An OBX before any OBR (this sample puts one under the patient).
    let stray = refused("ORU-R01-01.hl7");
    assert_eq!(stray.error.code, ErrorCode::SegmentSequenceError);
    assert_eq!(stray.error.location.unwrap().segment_id, "OBX");
}

const ALPHABET: &[u8] = b"|^~\\&\r0123456789AZ .-+";

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    /// Damaged messages: the mapping never panics, and what it maps is still valid R4.
    #[test]
    fn damaged_messages_map_or_are_refused(
        which in 0usize..8,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0usize..ALPHABET.len(), any::<bool>()), 1..12),
    ) {
        let names = ["ADT-A01-01.hl7", "ADT-A02-01.hl7", "ADT-A03-01.hl7", "ADT-A40-01.hl7",
                     "ADT01-23.hl7", "LAB-ORU-1.hl7", "LRI_2.0-NG_CBC_Typ_Message.hl7", "ADT-A31-01.hl7"];
        let mut bytes = sample(names[which]);
        for (at, replacement, delete) in edits {
            let at = at.index(bytes.len());
            if delete { bytes.remove(at); } else { bytes[at] = ALPHABET[replacement]; }
        }
        if let Ok(message) = parse(&bytes, &Limits::default()) {
            match map_message(&message, &settings()) {
                Ok(mapped) => { check_transaction(&mapped.bundle); }
                Err(refusal) => prop_assert!(!refusal.error.diagnostic.is_empty()),
            }
        }
    }
}
