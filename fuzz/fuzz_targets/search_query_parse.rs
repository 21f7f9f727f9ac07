//! Untrusted query strings through the same steps as a FHIR search: decode the query string,
//! then parse it for a few resource types, lenient and strict. Parsing must never panic, and
//! what it returns must keep its documented shape and bounds.
#![no_main]

use hygie_fhir::IssueSeverity;
use hygie_fhir::search::query::{Modifier, QueryOptions, parse, parse_query_string};
use libfuzzer_sys::fuzz_target;

const TYPES: [&str; 4] = ["Patient", "Observation", "Encounter", "MedicationRequest"];

fuzz_target!(|bytes: &[u8]| {
    // The server hands over the raw query as text; non-UTF-8 bytes never reach this far.
    let Ok(query) = std::str::from_utf8(bytes) else {
        return;
    };
    let pairs = match parse_query_string(query) {
        Ok(pairs) => pairs,
        Err(issue) => {
            assert_eq!(issue.severity, IssueSeverity::Error);
            return;
        }
    };
    for strict in [false, true] {
        let options = QueryOptions {
            strict,
            ..QueryOptions::default()
        };
        for t in TYPES {
            match parse(t, &pairs, &options) {
                Ok(request) => {
                    assert!(request.count <= options.max_count);
                    assert!(
                        request.include.len() + request.revinclude.len() <= options.max_includes
                    );
                    for f in &request.filters {
                        assert!(f.param.supported);
                        assert!(f.path.len() <= options.max_chain_depth);
                        assert!(f.values.len() <= options.max_values);
                        assert!(
                            !f.values.is_empty()
                                || matches!(f.modifier, Some(Modifier::Missing(_)))
                        );
                    }
                    assert!(
                        request
                            .ignored
                            .iter()
                            .all(|i| i.severity == IssueSeverity::Warning)
                    );
                }
                Err(issues) => {
                    assert!(!issues.is_empty());
                    assert!(issues.iter().all(|i| i.severity == IssueSeverity::Error));
                }
            }
        }
    }
});
