//! The search index of the audit trail: what a DPO or a security officer asks of it
//! ("every access to this patient", "everything this user did", "the denials of last
//! night"), kept beside each leaf and written in the same transaction.
//!
//! The leaf itself (the AuditEvent the Merkle tree hashes) is never touched: the index is a
//! convenience that can be rebuilt from the leaves, and `hygie audit verify` trusts only the
//! leaves; a facet row already there is left as it is (after a database cut back by an
//! attacker, SQLite numbers new leaves again from the cut: the hub keeps serving, and
//! `verify` and the witnesses report the cut). Patients and agents are rows of
//! `audit_facet (kind, value, num)`, read in `num` order through its primary key; the event
//! type, subtype, outcome and purpose of use are columns of the leaf's own row; dates use an
//! index on `recorded_us`.

use crate::search::{Dialect, SqlParam};

/// The longest facet value stored; longer ones (a token subject of kilobytes) are cut at a
/// character boundary, at write and at query time alike, so that a B-tree entry stays small.
pub const MAX_FACET_BYTES: usize = 200;

/// The most audit events one search answers.
pub const MAX_AUDIT_PAGE: usize = 1_000;

/// What an audit leaf is about, for searching.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFacets {
    /// `AuditEvent.type.code`: `rest`, `110114` (authentication).
    pub event_type: String,
    /// `AuditEvent.subtype.code`: the interaction (`read`, `search-type`, …).
    pub subtype: String,
    /// `AuditEvent.outcome`: `0`, `4`, `8`.
    pub outcome: String,
    /// `AuditEvent.purposeOfEvent` code, when one is recorded (`ETREAT`).
    pub purpose: Option<String>,
    /// Who acted (the principal's subject).
    pub agents: Vec<String>,
    /// Ids of the patients whose data the access reached.
    pub patients: Vec<String>,
}

/// A search of the audit trail. Every list is an OR of its values, the lists an AND;
/// answers come newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    pub patients: Vec<String>,
    pub agents: Vec<String>,
    pub event_types: Vec<String>,
    pub subtypes: Vec<String>,
    pub outcomes: Vec<String>,
    pub purposes: Vec<String>,
    /// Recorded at or after (microseconds since the epoch).
    pub since_us: Option<i64>,
    /// Recorded before.
    pub until_us: Option<i64>,
    /// Paging: only events numbered below this one.
    pub before: Option<i64>,
    /// At most this many (capped by [`MAX_AUDIT_PAGE`]).
    pub limit: usize,
}

impl Default for AuditQuery {
    fn default() -> AuditQuery {
        AuditQuery {
            patients: Vec::new(),
            agents: Vec::new(),
            event_types: Vec::new(),
            subtypes: Vec::new(),
            outcomes: Vec::new(),
            purposes: Vec::new(),
            since_us: None,
            until_us: None,
            before: None,
            limit: 100,
        }
    }
}

/// One audit event found: its number (the AuditEvent id) and its leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditHit {
    pub number: i64,
    pub recorded_us: i64,
    pub leaf: Vec<u8>,
}

/// `value` cut to at most [`MAX_FACET_BYTES`] at a character boundary.
pub fn facet_value(value: &str) -> &str {
    if value.len() <= MAX_FACET_BYTES {
        return value;
    }
    let mut end = MAX_FACET_BYTES;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

/// The `(kind, value)` facet rows of a leaf, deduplicated.
pub(crate) fn facet_rows(facets: &AuditFacets) -> Vec<(&'static str, &str)> {
    let mut rows: Vec<(&'static str, &str)> = facets
        .patients
        .iter()
        .map(|p| ("patient", facet_value(p)))
        .chain(facets.agents.iter().map(|a| ("agent", facet_value(a))))
        .collect();
    rows.sort_unstable();
    rows.dedup();
    rows
}

/// The SQL of an audit search and its parameters. The most selective facet given (a
/// patient, else an agent) drives through its primary key in number order; the rest are
/// checked on the rows it yields.
///
/// `number` is the leaf row's key as the store numbers appends: SQLite's `leaf_index`,
/// PostgreSQL's `seq - 1`.
pub(crate) fn audit_search_sql(dialect: Dialect, query: &AuditQuery) -> (String, Vec<SqlParam>) {
    let mut params = Vec::new();
    let mut bind = |param: SqlParam| {
        params.push(param);
        match dialect {
            Dialect::Sqlite => format!("?{}", params.len()),
            Dialect::Postgres => format!("${}", params.len()),
        }
    };
    let number = match dialect {
        Dialect::Sqlite => "l.leaf_index",
        Dialect::Postgres => "(l.seq - 1)",
    };
    let list = |values: &[String], bind: &mut dyn FnMut(SqlParam) -> String| {
        values
            .iter()
            .map(|v| bind(SqlParam::Text(facet_value(v).to_owned())))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let driver = if !query.patients.is_empty() {
        Some(("patient", &query.patients))
    } else if !query.agents.is_empty() {
        Some(("agent", &query.agents))
    } else {
        None
    };
    let mut conditions = vec!["l.leaf IS NOT NULL".to_owned()];
    let (from, order) = match driver {
        Some((kind, values)) => {
            let kind = bind(SqlParam::Text(kind.to_owned()));
            let values = list(values, &mut bind);
            let join = match dialect {
                Dialect::Sqlite => "l.leaf_index = f.num",
                Dialect::Postgres => "l.seq = f.num + 1",
            };
            conditions.push(format!("f.kind = {kind} AND f.value IN ({values})"));
            if let Some(before) = query.before {
                let before = bind(SqlParam::Int(before));
                conditions.push(format!("f.num < {before}"));
            }
            (
                format!("audit_facet f JOIN audit_log l ON {join}"),
                "f.num DESC".to_owned(),
            )
        }
        None => {
            // On the key column itself, so that the primary key gives the order.
            let (key, bound) = match dialect {
                Dialect::Sqlite => ("l.leaf_index", query.before),
                Dialect::Postgres => ("l.seq", query.before.map(|b| b.saturating_add(1))),
            };
            if let Some(bound) = bound {
                let bound = bind(SqlParam::Int(bound));
                conditions.push(format!("{key} < {bound}"));
            }
            ("audit_log l".to_owned(), format!("{key} DESC"))
        }
    };
    // The agents, when the patients drove.
    if driver.is_some_and(|(kind, _)| kind == "patient") && !query.agents.is_empty() {
        let kind = bind(SqlParam::Text("agent".to_owned()));
        let values = list(&query.agents, &mut bind);
        let key = match dialect {
            Dialect::Sqlite => "l.leaf_index",
            Dialect::Postgres => "l.seq - 1",
        };
        conditions.push(format!(
            "EXISTS (SELECT 1 FROM audit_facet a WHERE a.kind = {kind} AND a.value IN ({values}) AND a.num = {key})"
        ));
    }
    for (column, values) in [
        ("l.event_type", &query.event_types),
        ("l.subtype", &query.subtypes),
        ("l.outcome", &query.outcomes),
        ("l.purpose", &query.purposes),
    ] {
        if !values.is_empty() {
            let values = list(values, &mut bind);
            conditions.push(format!("{column} IN ({values})"));
        }
    }
    if let Some(since) = query.since_us {
        let since = bind(SqlParam::Int(since));
        conditions.push(format!("l.recorded_us >= {since}"));
    }
    if let Some(until) = query.until_us {
        let until = bind(SqlParam::Int(until));
        conditions.push(format!("l.recorded_us < {until}"));
    }
    let limit = bind(SqlParam::Int(query.limit.min(MAX_AUDIT_PAGE) as i64));
    let sql = format!(
        "SELECT {number}, l.recorded_us, l.leaf FROM {from} WHERE {} ORDER BY {order} LIMIT {limit}",
        conditions.join(" AND ")
    );
    (sql, params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_at_a_character_boundary() {
        let long = "é".repeat(150); // 300 bytes
        let cut = facet_value(&long);
        assert!(cut.len() <= MAX_FACET_BYTES);
        assert!(long.starts_with(cut));
        assert_eq!(facet_value("Practitioner/1"), "Practitioner/1");
    }

    #[test]
    fn the_patient_drives_and_every_other_criterion_is_a_condition() {
        let query = AuditQuery {
            patients: vec!["p1".to_owned(), "p2".to_owned()],
            agents: vec!["Practitioner/9".to_owned()],
            outcomes: vec!["4".to_owned()],
            since_us: Some(5),
            before: Some(100),
            limit: 5_000,
            ..AuditQuery::default()
        };
        let (sql, params) = audit_search_sql(Dialect::Postgres, &query);
        assert!(sql.contains("FROM audit_facet f JOIN audit_log l ON l.seq = f.num + 1"));
        assert!(sql.contains("f.value IN ($2, $3)"));
        assert!(sql.contains("EXISTS (SELECT 1 FROM audit_facet a"));
        assert!(sql.contains("l.outcome IN ("));
        assert!(sql.ends_with("ORDER BY f.num DESC LIMIT $9"));
        assert_eq!(params.last(), Some(&SqlParam::Int(MAX_AUDIT_PAGE as i64)));
    }
}
