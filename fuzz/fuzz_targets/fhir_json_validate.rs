//! Untrusted bytes through the same steps as a FHIR create: depth check, parse, validate.
//! Validation must never panic, and what it reports must keep its documented bounds.
#![no_main]

use hygie_fhir::json_depth::check_json_depth;
use hygie_fhir::validate::{MAX_ISSUES, validate_resource};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if check_json_depth(bytes, 64).is_err() {
        return;
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return;
    };
    if let Err(issues) = validate_resource(&value) {
        assert!(!issues.is_empty() && issues.len() <= MAX_ISSUES + 1);
        assert!(issues.iter().all(|i| i.expression.is_some()));
    }
});
