//! Search criteria the hub can evaluate today: `_id` and `identifier` (token), each with
//! comma-separated alternatives (OR) and repeatable (AND). They serve conditional create,
//! update and references, and the first searches; the full search engine extends them.

use std::collections::BTreeSet;

use hygie_store::{StoreResult, TokenQuery, Tx};

use crate::HubError;

/// One token value: `[system|]code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenValue {
    /// `None`: any system; `Some("")`: explicitly no system (`|code`).
    pub system: Option<String>,
    /// `None`: any code (`system|`).
    pub code: Option<String>,
}

/// One criterion; its alternatives are OR-ed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Criterion {
    Id(Vec<String>),
    Identifier(Vec<TokenValue>),
}

/// Criteria, AND-ed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Criteria {
    pub criteria: Vec<Criterion>,
}

/// The parameters a query string carries, decoded, in order.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.trim_start_matches('?').as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Parses one filter parameter; `Ok(None)` when the parameter is not one we evaluate.
pub fn parse_criterion(name: &str, value: &str) -> Result<Option<Criterion>, HubError> {
    if value.is_empty() {
        return Err(HubError::bad_request(format!(
            "search parameter {name} has an empty value"
        )));
    }
    match name {
        "_id" => Ok(Some(Criterion::Id(
            value.split(',').map(str::to_owned).collect(),
        ))),
        "identifier" => Ok(Some(Criterion::Identifier(
            value.split(',').map(parse_token).collect(),
        ))),
        _ => Ok(None),
    }
}

fn parse_token(text: &str) -> TokenValue {
    match text.split_once('|') {
        Some((system, code)) => TokenValue {
            system: Some(system.to_owned()),
            code: (!code.is_empty()).then(|| code.to_owned()),
        },
        None => TokenValue {
            system: None,
            code: Some(text.to_owned()),
        },
    }
}

/// Parses criteria for a conditional interaction (`If-None-Exist`, conditional update,
/// conditional reference). Unlike a search, a parameter we cannot evaluate is an error: a
/// condition silently ignored would match too much.
pub fn parse_conditional(query: &str) -> Result<Criteria, HubError> {
    let mut criteria = Criteria::default();
    for (name, value) in parse_query(query) {
        match parse_criterion(&name, &value)? {
            Some(criterion) => criteria.criteria.push(criterion),
            None => {
                return Err(HubError::new(
                    400,
                    hygie_fhir::IssueType::NotSupported,
                    format!(
                        "conditional criteria may use only _id and identifier today; {name:?} is not supported"
                    ),
                ));
            }
        }
    }
    if criteria.criteria.is_empty() {
        return Err(HubError::bad_request(
            "conditional criteria are empty: give at least one search parameter",
        ));
    }
    Ok(criteria)
}

/// Serializes conditional writes on one resource type, so that two of them cannot both
/// see "no match" and both create. Per type rather than per criteria: two conditions that
/// differ may still describe the same new resource.
pub fn lock_conditional(tx: &mut dyn Tx, resource_type: &str) -> StoreResult<()> {
    tx.lock(&format!("hygie:conditional:{resource_type}"))
}

/// Ids of current resources of `resource_type` matching every criterion (sorted), after
/// `after_id`, at most `limit`. With no criteria: every resource of the type.
pub fn matching_ids(
    tx: &mut dyn Tx,
    resource_type: &str,
    criteria: &Criteria,
    after_id: Option<&str>,
    limit: usize,
) -> StoreResult<Vec<String>> {
    if criteria.criteria.is_empty() {
        return tx.list_ids(resource_type, after_id, limit);
    }
    // Evaluate each criterion to a bounded id set and intersect. Bounded: a criterion that
    // matches more than `CANDIDATES_MAX` ids is cut, which only the full search engine
    // (with SQL joins) will lift; identifiers and ids are selective in practice.
    const CANDIDATES_MAX: usize = 10_000;
    let mut result: Option<BTreeSet<String>> = None;
    for criterion in &criteria.criteria {
        let mut matched = BTreeSet::new();
        match criterion {
            Criterion::Id(ids) => {
                for id in ids {
                    if after_id.is_some_and(|after| id.as_str() <= after) {
                        continue;
                    }
                    if let Some(head) = tx.head(resource_type, id)?
                        && !head.deleted
                    {
                        matched.insert(id.clone());
                    }
                }
            }
            Criterion::Identifier(values) => {
                for value in values {
                    let ids = tx.find_by_token(
                        &TokenQuery {
                            resource_type,
                            param: "identifier",
                            system: value.system.as_deref(),
                            code: value.code.as_deref(),
                            after_id,
                        },
                        CANDIDATES_MAX,
                    )?;
                    matched.extend(ids);
                }
            }
        }
        result = Some(match result {
            None => matched,
            Some(previous) => previous.intersection(&matched).cloned().collect(),
        });
    }
    Ok(result.unwrap_or_default().into_iter().take(limit).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert_eq!(
            parse_token("urn:mrn|12"),
            TokenValue {
                system: Some("urn:mrn".into()),
                code: Some("12".into())
            }
        );
        assert_eq!(
            parse_token("|12"),
            TokenValue {
                system: Some("".into()),
                code: Some("12".into())
            }
        );
        assert_eq!(
            parse_token("urn:mrn|"),
            TokenValue {
                system: Some("urn:mrn".into()),
                code: None
            }
        );
        assert_eq!(
            parse_token("12"),
            TokenValue {
                system: None,
                code: Some("12".into())
            }
        );
    }

    #[test]
    fn conditional_criteria_refuse_what_they_cannot_evaluate() {
        assert!(parse_conditional("identifier=urn:mrn%7C12&_id=a,b").is_ok());
        assert_eq!(parse_conditional("name=smith").unwrap_err().status, 400);
        assert_eq!(parse_conditional("").unwrap_err().status, 400);
        assert_eq!(parse_conditional("identifier=").unwrap_err().status, 400);
    }
}
