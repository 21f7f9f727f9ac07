//! FHIR R4 search: the search parameters of every resource type, what a stored resource is
//! found by, and typed search requests.
//!
//! - [`params`]: the R4 SearchParameters (generated `data/r4-search-params.json`, embedded and
//!   parsed once), each restricted to one resource type and marked `supported` when
//!   [`fhirpath`] can evaluate its expression and [`index`] can index what it selects;
//! - [`fhirpath`]: the subset of FHIRPath that R4 search expressions use, typed with
//!   [`crate::schema`];
//! - [`index`]: the index entries of a resource, one per value per supported parameter;
//! - [`query`]: a search query string into a [`query::SearchRequest`], with precise errors;
//! - [`date`], [`number`], [`text`]: the value rules that `index` and `query` share, so a
//!   stored value and a searched one are read the same way.
//!
//! Pure: no IO, no store. Matching entries against a request is the store's job; what each
//! value means (ranges, normalization) is fixed here.
//!
//! ```
//! use hygie_fhir::search::{index, params, query};
//! use serde_json::json;
//!
//! let family = params::search_param("Patient", "family").unwrap();
//! assert!(family.supported && family.kind == params::ParamType::String);
//!
//! let patient = json!({"resourceType": "Patient", "name": [{"family": "Müller"}]});
//! let entries = index::extract(&patient);
//! assert!(entries.iter().any(|e| e.param == "family"
//!     && e.value == index::IndexValue::String { normalized: "muller".into(), exact: "Müller".into() }));
//!
//! let pairs = query::parse_query_string("family=muller&_count=10").unwrap();
//! let request = query::parse("Patient", &pairs, &query::QueryOptions::default()).unwrap();
//! assert_eq!((request.filters.len(), request.count), (1, 10));
//! ```

pub mod date;
pub mod fhirpath;
pub mod index;
pub mod number;
pub mod params;
pub mod query;
pub mod text;

/// `identifier=system|value` as a query string: FHIR's escapes for token parts (`\`, `|`,
/// `,`, `$`), then URL encoding. For conditional URLs built from message content.
pub fn identifier_query(system: &str, value: &str) -> String {
    fn escaped(part: &str) -> String {
        let mut out = String::with_capacity(part.len());
        for c in part.chars() {
            if matches!(c, '\\' | '|' | ',' | '$') {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }
    let token = format!("{}|{}", escaped(system), escaped(value));
    form_urlencoded::Serializer::new(String::new())
        .append_pair("identifier", &token)
        .finish()
}

#[cfg(test)]
mod identifier_query_tests {
    #[test]
    fn identifier_queries_escape_what_search_syntax_means() {
        let query = super::identifier_query("urn:x|y", "a,b$c\\d e&f=g");
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        assert_eq!(
            pairs,
            vec![(
                "identifier".to_owned(),
                "urn:x\\|y|a\\,b\\$c\\\\d e&f=g".to_owned()
            )]
        );
    }
}
