//! Untrusted HL7 v2 messages through what the MLLP listener does after parsing: the
//! v2-to-FHIR mapping. It must never panic; what it maps must be a transaction whose every
//! resource is valid R4 (the hub would refuse it otherwise, and the sender get an AE where
//! the fault is the mapping's); what it refuses must say why.
#![no_main]

use std::collections::BTreeMap;

use hygie_hl7v2::{Limits, parse};
use hygie_mllp::mapping::{MappingSettings, map_message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(message) = parse(bytes, &Limits::default()) else {
        return;
    };
    let settings = MappingSettings {
        identifier_systems: BTreeMap::from([
            ("HOSP".to_owned(), "urn:example:hosp".to_owned()),
            ("1".to_owned(), "urn:example:one".to_owned()),
        ]),
        time_zone: jiff::tz::TimeZone::UTC,
    };
    match map_message(&message, &settings) {
        Ok(mapped) => {
            assert_eq!(mapped.bundle["type"], "transaction");
            for entry in mapped.bundle["entry"].as_array().expect("entries") {
                if let Err(issues) = hygie_fhir::validate::validate_resource(&entry["resource"]) {
                    panic!("the mapping wrote invalid FHIR: {issues:?}\n{:#}", entry["resource"]);
                }
            }
        }
        Err(refusal) => assert!(!refusal.error.diagnostic.is_empty()),
    }
});
