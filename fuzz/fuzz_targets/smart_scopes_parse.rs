//! Untrusted scope strings (the `scope` claim of an access token) through the SMART scope
//! parser, then every grant question on a few resource types. Parsing must never panic,
//! must keep its bounds, must print clinical scopes in a canonical form that reads back the
//! same, and a grant must be backed by the scopes that cover it.
#![no_main]

use hygie_fhir::schema::is_resource_type;
use hygie_policy::scopes::{
    Grant, MAX_CONSTRAINTS_PER_SCOPE, MAX_SCOPE_STRING_BYTES, MAX_SCOPES, Permission, Scope,
    ScopeContext, ScopeSet, ScopeSetError,
};
use libfuzzer_sys::fuzz_target;

/// Real types, and names that no scope may match (`*` included).
const TYPES: [&str; 7] = [
    "Patient",
    "Observation",
    "Encounter",
    "*",
    "",
    "metadata",
    "Foo/1",
];

fuzz_target!(|bytes: &[u8]| {
    // A token's claims are JSON strings: always UTF-8 by the time they get here.
    let Ok(input) = std::str::from_utf8(bytes) else {
        return;
    };
    let set = match ScopeSet::parse(input, is_resource_type) {
        Ok(set) => set,
        Err(ScopeSetError::TooLong { bytes, max }) => {
            assert!(bytes == input.len() && bytes > max && max == MAX_SCOPE_STRING_BYTES);
            return;
        }
        Err(ScopeSetError::TooMany { max }) => {
            assert!(input.split(' ').filter(|t| !t.is_empty()).count() > max);
            return;
        }
    };
    assert!(input.len() <= MAX_SCOPE_STRING_BYTES);
    assert!(set.scopes().len() <= MAX_SCOPES);
    for scope in set.scopes() {
        match scope {
            Scope::Clinical(clinical) => {
                assert!(!clinical.permissions().is_empty());
                if let Some(query) = clinical.query() {
                    let params = query.params();
                    assert!(!params.is_empty() && params.len() <= MAX_CONSTRAINTS_PER_SCOPE);
                    assert!(params.iter().all(|(n, v)| !n.is_empty() && !v.is_empty()));
                }
                let printed = clinical.to_string();
                assert_eq!(
                    &Scope::parse(&printed, is_resource_type),
                    scope,
                    "{printed}"
                );
            }
            Scope::Invalid { token, reason } => {
                assert!(!token.is_empty() && !reason.to_string().is_empty());
            }
            Scope::Unrecognised(token) => assert!(!token.is_empty() && !token.contains(' ')),
            Scope::Other(_) => {}
        }
    }
    for context in ScopeContext::ALL {
        for resource_type in TYPES {
            for permission in Permission::ALL {
                let covering: Vec<_> = set
                    .clinical()
                    .filter(|s| s.covers(context, resource_type, permission))
                    .collect();
                match set.grants(context, resource_type, permission) {
                    Grant::Denied => assert!(covering.is_empty()),
                    Grant::Allowed => assert!(covering.iter().any(|s| s.query().is_none())),
                    Grant::Constrained(constraints) => {
                        assert!(!constraints.is_empty());
                        assert!(covering.iter().all(|s| s.query().is_some()));
                        assert!(
                            constraints
                                .iter()
                                .all(|c| covering.iter().any(|s| s.query() == Some(c)))
                        );
                    }
                }
                if !is_resource_type(resource_type) {
                    assert!(
                        covering.is_empty(),
                        "{resource_type:?} is not a resource type"
                    );
                }
            }
        }
    }
});
