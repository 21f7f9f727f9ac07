//! Criteria of conditional interactions (`If-None-Exist`, conditional update, conditional
//! references in a transaction): the full search language, evaluated in the unit of work
//! of the write they condition.

use hygie_fhir::search::query::{self, QueryOptions};
use hygie_store::{Filter, SearchSpec, StoreResult, Tx};

use crate::HubError;

/// Parsed criteria: the store filters they mean, AND-ed.
#[derive(Debug, Clone, PartialEq)]
pub struct Criteria {
    pub filters: Vec<Filter>,
}

/// The parameters a query string carries, decoded, in order.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.trim_start_matches('?').as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Parses criteria for a conditional interaction on `resource_type`. Unlike a search, a
/// parameter we cannot evaluate is an error (strict handling): a condition silently ignored
/// would match too much and overwrite the wrong resource.
pub fn parse_conditional(resource_type: &str, query_string: &str) -> Result<Criteria, HubError> {
    let pairs = query::parse_query_string(query_string.trim_start_matches('?'))
        .map_err(|issue| HubError::with_issues(400, vec![issue]))?;
    let options = QueryOptions {
        strict: true,
        ..QueryOptions::default()
    };
    let request = query::parse(resource_type, &pairs, &options)
        .map_err(|issues| HubError::with_issues(400, issues))?;
    if request.filters.is_empty() {
        return Err(HubError::bad_request(
            "conditional criteria are empty: give at least one search parameter",
        ));
    }
    if !request.include.is_empty() || !request.revinclude.is_empty() || !request.sort.is_empty() {
        return Err(HubError::bad_request(
            "conditional criteria take search parameters only, not _include, _revinclude or _sort",
        ));
    }
    let filters = request
        .filters
        .iter()
        .map(|filter| crate::search::store_filter(filter, ""))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Criteria { filters })
}

/// Serializes conditional writes on one resource type, so that two of them cannot both
/// see "no match" and both create. Per type rather than per criteria: two conditions that
/// differ may still describe the same new resource.
pub fn lock_conditional(tx: &mut dyn Tx, resource_type: &str) -> StoreResult<()> {
    tx.lock(&format!("hygie:conditional:{resource_type}"))
}

/// Ids of current resources of `resource_type` matching every criterion, sorted, at most
/// `limit` (callers ask 2 to tell "one" from "several").
pub fn matching_ids(
    tx: &mut dyn Tx,
    resource_type: &str,
    criteria: &Criteria,
    limit: usize,
) -> StoreResult<Vec<String>> {
    let hits = tx.search(&SearchSpec {
        resource_type: resource_type.to_owned(),
        filters: criteria.filters.clone(),
        sort: Vec::new(),
        position: None,
        limit,
    })?;
    Ok(hits.into_iter().map(|hit| hit.id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditional_criteria_refuse_what_they_cannot_evaluate() {
        assert!(parse_conditional("Patient", "identifier=urn:mrn%7C12&_id=a,b").is_ok());
        assert!(parse_conditional("Patient", "family=smith&birthdate=1970").is_ok());
        assert_eq!(
            parse_conditional("Patient", "no-such-param=1")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(parse_conditional("Patient", "").unwrap_err().status, 400);
        assert_eq!(
            parse_conditional("Patient", "birthdate=notadate")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            parse_conditional("Patient", "identifier=1&_include=Patient:organization")
                .unwrap_err()
                .status,
            400
        );
    }
}
