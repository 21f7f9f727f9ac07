//! The search index and search queries, as the store sees them: typed rows to write beside
//! each current version, and a small query language compiled to SQL for either backend.
//!
//! The store knows nothing of FHIR: the hub turns a FHIR search into a [`SearchSpec`] of
//! index tests on named parameters. The most selective filter becomes
//! `r.id IN (SELECT … FROM index …)`, so that each database can drive the query from its
//! index instead of probing every resource of the type; the others probe each candidate.
//! A page in `_id` order whose filters most resources match is the exception: walking the
//! type in key order and probing stops at the page's end ([`id_order_driver`]).

/// One index row of a resource's current version.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexRow {
    pub param: String,
    /// Components of one composite value share a group (> 0); plain rows have 0.
    pub group: i32,
    pub cell: IndexCell,
}

/// The typed value of an index row; each kind has its own table.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexCell {
    /// `system` is empty when the value has none.
    Token {
        system: String,
        code: String,
    },
    /// `normalized`: lowercase, accents removed, at most [`MAX_INDEXED_STRING`] bytes.
    String {
        normalized: String,
        exact: String,
    },
    /// Inclusive bounds, microseconds since the Unix epoch.
    Date {
        low: i64,
        high: i64,
    },
    Number {
        value: f64,
        low: f64,
        high: f64,
    },
    Quantity {
        system: String,
        code: String,
        value: f64,
        low: f64,
        high: f64,
    },
    /// `target_type` is empty when the reference is not to a local resource (an absolute URL,
    /// a URN); `target_id` then holds the whole spelling, a lookup key that no local id can
    /// equal. Whatever means "this resource" tests `target_type`.
    Reference {
        target_type: String,
        target_id: String,
        url: String,
    },
    Uri {
        value: String,
    },
    /// A keyed term of the blind index (names and addresses: an HMAC that the hub computes,
    /// see `hygie-hub/src/blind_index.rs`), matched by equality only. All the terms of a
    /// resource are kept together, one entry per resource, in an inverted index
    /// ([`IndexTable::Term`]): a new patient's hundred terms are one insert, not a hundred
    /// B-tree rows in random places.
    Term(BlindTerm),
}

/// The `hub_meta` key of the rules the search index was built by: when it differs from
/// the hub's, the hub rebuilds the index before serving (`hygie-hub/src/reindex.rs`).
pub const INDEX_VERSION_KEY: &str = "search.index_version";

/// The 128-bit MAC that stands for one searchable fact of a value (a prefix of a name, its
/// exact text, that it exists).
pub type BlindTerm = [u8; 16];

/// How a [`BlindTerm`] is written in the term index: one character per byte, `U+0100 +
/// byte` (Latin Extended-A and B). Never an ASCII letter, digit, space or quote: a whole
/// term is one word for SQLite's `ascii` FTS5 tokenizer, needs no escaping in a MATCH
/// phrase, and the index cannot spell a name or a number by chance.
pub fn term_text(term: &BlindTerm) -> String {
    let mut text = String::with_capacity(2 * term.len());
    push_term_text(&mut text, term);
    text
}

/// Appends [`term_text`] of `term` to `text`.
fn push_term_text(text: &mut String, term: &BlindTerm) {
    for &byte in term {
        text.push(char::from_u32(0x100 + u32::from(byte)).expect("U+0100..U+01FF are characters"));
    }
}

/// Strings longer than this are indexed by their first bytes (a btree entry is bounded).
pub const MAX_INDEXED_STRING: usize = 256;

/// The index tables, one per kind of value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IndexTable {
    Token,
    String,
    Date,
    Number,
    Quantity,
    Reference,
    Uri,
    /// The inverted index of blind terms: one entry per resource, not per row.
    Term,
}

impl IndexTable {
    /// The tables of one row per value (all but [`IndexTable::Term`]).
    pub const ALL: [IndexTable; 7] = [
        IndexTable::Token,
        IndexTable::String,
        IndexTable::Date,
        IndexTable::Number,
        IndexTable::Quantity,
        IndexTable::Reference,
        IndexTable::Uri,
    ];

    pub fn name(self) -> &'static str {
        match self {
            IndexTable::Token => "search_token",
            IndexTable::String => "search_string",
            IndexTable::Date => "search_date",
            IndexTable::Number => "search_number",
            IndexTable::Quantity => "search_quantity",
            IndexTable::Reference => "search_reference",
            IndexTable::Uri => "search_uri",
            IndexTable::Term => "search_term",
        }
    }
}

impl IndexCell {
    pub fn table(&self) -> IndexTable {
        match self {
            IndexCell::Token { .. } => IndexTable::Token,
            IndexCell::String { .. } => IndexTable::String,
            IndexCell::Date { .. } => IndexTable::Date,
            IndexCell::Number { .. } => IndexTable::Number,
            IndexCell::Quantity { .. } => IndexTable::Quantity,
            IndexCell::Reference { .. } => IndexTable::Reference,
            IndexCell::Uri { .. } => IndexTable::Uri,
            IndexCell::Term(_) => IndexTable::Term,
        }
    }
}

/// How a value's range relates to the searched range (FHIR R4 search prefixes). Both are
/// inclusive ranges `[low, high]`: the searched value's precision, the stored value's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOp {
    /// The stored range lies within the searched one.
    Eq,
    Ne,
    /// Some of the stored range lies above the searched one.
    Gt,
    Lt,
    Ge,
    Le,
    /// The stored range starts after the searched one.
    Sa,
    /// The stored range ends before the searched one.
    Eb,
    /// The ranges overlap (the hub widens the searched range for `ap`).
    Overlaps,
}

/// A test on one index row.
#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    /// `system`: `None` any, `Some("")` none. `code`: `None` any.
    Token {
        system: Option<String>,
        code: Option<String>,
    },
    StringStartsWith(String),
    StringContains(String),
    /// Compares the full original text, case and accents included.
    StringExact(String),
    Date {
        op: RangeOp,
        low: i64,
        high: i64,
    },
    Number {
        op: RangeOp,
        low: f64,
        high: f64,
    },
    Quantity {
        op: RangeOp,
        low: f64,
        high: f64,
        system: Option<String>,
        code: Option<String>,
    },
    /// A local reference; `target_type` `None` means any (local) type.
    Reference {
        target_type: Option<String>,
        target_id: String,
    },
    /// A reference spelled so that it names no local resource (an absolute URL of another
    /// server, a canonical, a URN): found by that spelling, the target id such a row holds
    /// (see [`IndexCell::Reference`]), so that the search goes through the target index.
    ReferenceUrl(String),
    Uri(String),
    UriBelow(String),
    /// The resource's blind terms include this one.
    Term(BlindTerm),
}

impl Test {
    pub fn table(&self) -> IndexTable {
        match self {
            Test::Token { .. } => IndexTable::Token,
            Test::StringStartsWith(_) | Test::StringContains(_) | Test::StringExact(_) => {
                IndexTable::String
            }
            Test::Date { .. } => IndexTable::Date,
            Test::Number { .. } => IndexTable::Number,
            Test::Quantity { .. } => IndexTable::Quantity,
            Test::Reference { .. } | Test::ReferenceUrl(_) => IndexTable::Reference,
            Test::Uri(_) | Test::UriBelow(_) => IndexTable::Uri,
            Test::Term(_) => IndexTable::Term,
        }
    }
}

/// One condition of a search; a [`SearchSpec`] holds all of its filters (AND).
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// `_id`: any of these.
    Ids(Vec<String>),
    /// `_lastUpdated`: any of these ranges.
    LastUpdated(Vec<(RangeOp, i64, i64)>),
    /// Some index row of `param` passes one of `tests` (all of one table); `negate`: none does.
    Match {
        param: String,
        tests: Vec<Test>,
        negate: bool,
    },
    /// `param:missing=true|false`.
    Missing {
        param: String,
        table: IndexTable,
        missing: bool,
    },
    /// One of `alternatives`, each a test per component (`param#i`) within one group.
    Composite {
        param: String,
        alternatives: Vec<Vec<Test>>,
    },
    /// A reference `param` to a current `target_type` resource that passes `inner`.
    Chain {
        param: String,
        target_type: String,
        inner: Vec<Filter>,
    },
    /// Referenced by a current `source_type` resource, through its `param`, that passes `inner`.
    Has {
        source_type: String,
        param: String,
        inner: Vec<Filter>,
    },
    /// In the compartment of one of `target_ids` (all of `target_type`): references it
    /// through one of `params`. No target: nothing passes.
    Compartment {
        params: Vec<String>,
        target_type: String,
        target_ids: Vec<String>,
    },
}

/// A sort key of a search. `_id` is always the last key, so every order is total.
#[derive(Debug, Clone, PartialEq)]
pub enum SortBy {
    LastUpdated {
        descending: bool,
    },
    Id {
        descending: bool,
    },
    /// By the lowest (ascending) or highest (descending) value of `param`; resources with
    /// none come last.
    Param {
        param: String,
        table: IndexTable,
        descending: bool,
    },
}

impl SortBy {
    pub fn descending(&self) -> bool {
        match self {
            SortBy::LastUpdated { descending }
            | SortBy::Id { descending }
            | SortBy::Param { descending, .. } => *descending,
        }
    }
}

/// A sort key's value for one resource: what a paging cursor carries.
#[derive(Debug, Clone, PartialEq)]
pub enum SortValue {
    Int(i64),
    Real(f64),
    Text(String),
}

/// Where a page starts: strictly after (or, for a previous page, before) a position in the
/// sort order, given by its sort values with the id last.
#[derive(Debug, Clone, PartialEq)]
pub struct PagePosition {
    pub values: Vec<SortValue>,
    pub backwards: bool,
}

/// A search on one resource type.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchSpec {
    pub resource_type: String,
    pub filters: Vec<Filter>,
    /// `_id` ascending is appended when absent.
    pub sort: Vec<SortBy>,
    pub position: Option<PagePosition>,
    /// Rows to return at most (the hub asks one more than a page to know if there is a next).
    pub limit: usize,
}

/// A page of search results, in sort order.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    pub id: String,
    /// The sort values, `_id` last: the cursor of the next page.
    pub sort_values: Vec<SortValue>,
}

// --- SQL -----------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// A bound SQL parameter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SqlParam {
    Text(String),
    Int(i64),
    Real(f64),
}

/// Text greater than any stored text, for "no value sorts last" and prefix ranges.
pub(crate) const TEXT_MAX: &str = "\u{10FFFF}";

pub(crate) struct SqlBuilder {
    dialect: Dialect,
    pub(crate) params: Vec<SqlParam>,
    aliases: usize,
    /// `false`: no filter drives, every one is a probe of each resource taken in the
    /// order of the primary key (see [`id_order_driver`]).
    drive_by_index: bool,
    /// With `drive_by_index` off: probe only this many resources from the cursor on.
    walk_window: Option<usize>,
}

impl SqlBuilder {
    pub(crate) fn new(dialect: Dialect) -> SqlBuilder {
        SqlBuilder {
            dialect,
            params: Vec::new(),
            aliases: 0,
            drive_by_index: true,
            walk_window: None,
        }
    }

    /// A builder whose page query walks the resources in `_id` order and probes each one
    /// with every filter, stopping at the page's end, instead of collecting every match of
    /// the most selective filter first (see [`id_order_driver`]).
    pub(crate) fn in_id_order(dialect: Dialect) -> SqlBuilder {
        SqlBuilder {
            drive_by_index: false,
            ..SqlBuilder::new(dialect)
        }
    }

    /// Like [`SqlBuilder::in_id_order`], probing only the first `window` resources of the
    /// type after the cursor: a page that fills within them is the exact page (they come
    /// in `_id` order, and every match among them was found); one that does not says
    /// nothing, and the driven query must answer. A bound in rows rather than time.
    pub(crate) fn in_id_order_window(dialect: Dialect, window: usize) -> SqlBuilder {
        SqlBuilder {
            walk_window: Some(window),
            ..SqlBuilder::in_id_order(dialect)
        }
    }

    fn bind(&mut self, param: SqlParam) -> String {
        self.params.push(param);
        match self.dialect {
            Dialect::Sqlite => format!("?{}", self.params.len()),
            Dialect::Postgres => format!("${}", self.params.len()),
        }
    }

    fn text(&mut self, value: &str) -> String {
        self.bind(SqlParam::Text(value.to_owned()))
    }

    fn int(&mut self, value: i64) -> String {
        self.bind(SqlParam::Int(value))
    }

    fn real(&mut self, value: f64) -> String {
        self.bind(SqlParam::Real(value))
    }

    fn alias(&mut self, prefix: &str) -> String {
        self.aliases += 1;
        format!("{prefix}{}", self.aliases)
    }

    /// Whether `FROM {from}` has a row (`negate`: has none), for one candidate resource.
    /// `EXISTS`, except in PostgreSQL's walk in `_id` order: PostgreSQL turns an `EXISTS`
    /// into a semi-join and, its estimate of a common code's rows being far too low (the
    /// code is tested twice, through its md5 and itself), hashes every match before the
    /// first row (113 ms for 22,106 vital signs); a scalar subquery it cannot pull up keeps
    /// the walk a walk (0.8 ms).
    fn probe(&self, negate: bool, from: &str) -> String {
        if self.dialect == Dialect::Postgres && !self.drive_by_index {
            let null = if negate { "NULL" } else { "NOT NULL" };
            format!("(SELECT 1 FROM {from} LIMIT 1) IS {null}")
        } else {
            let not = if negate { "NOT " } else { "" };
            format!("{not}EXISTS (SELECT 1 FROM {from})")
        }
    }

    /// `table alias`, read through its owner index `(resource_type, id)`: the right path for
    /// a probe of one resource's rows. SQLite, without statistics, would otherwise prefer
    /// the lookup index with more equality columns and walk every row of a common code for
    /// each candidate (measured: 1.7 s instead of 1 ms); PostgreSQL plans from statistics.
    fn by_owner(&self, table: IndexTable, alias: &str) -> String {
        match self.dialect {
            Dialect::Sqlite => {
                format!("{} {alias} INDEXED BY {}_owner", table.name(), table.name())
            }
            Dialect::Postgres => format!("{} {alias}", table.name()),
        }
    }

    /// `column = value`; on PostgreSQL through the md5 expression indexes that stand in for
    /// btree entries on values too long for one.
    fn hashed_equals(&self, column: &str, placeholder: &str) -> String {
        match self.dialect {
            Dialect::Sqlite => format!("{column} = {placeholder}"),
            Dialect::Postgres => {
                format!("(md5({column}) = md5({placeholder}) AND {column} = {placeholder})")
            }
        }
    }

    /// `SELECT id, sort values… FROM resources … ORDER BY … LIMIT …`.
    pub(crate) fn page_query(&mut self, spec: &SearchSpec) -> String {
        let sort = full_sort(&spec.sort);
        let keys: Vec<String> = sort
            .iter()
            .map(|key| self.sort_expression(&spec.resource_type, key, "r"))
            .collect();
        let mut sql = String::from("SELECT r.id");
        for key in &keys {
            sql.push_str(", ");
            sql.push_str(key);
        }
        let backwards = spec.position.as_ref().is_some_and(|p| p.backwards);
        match self.walk_window {
            // The walk's first `window` resources of the type from the cursor, in `_id`
            // order: the page is exact if it fills within them (see `in_id_order_window`).
            Some(window) if !self.drive_by_index => {
                let ty = self.text(&spec.resource_type);
                let mut from = format!("SELECT * FROM resources w WHERE w.resource_type = {ty}");
                if let Some(position) = &spec.position {
                    from.push_str(" AND ");
                    from.push_str(&self.keyset(&sort, &["w.id".to_owned()], position));
                }
                let descending = sort.first().is_some_and(SortBy::descending) != backwards;
                let window = self.int(window as i64);
                sql.push_str(&format!(
                    " FROM ({from} ORDER BY w.id{} LIMIT {window}) r WHERE ",
                    if descending { " DESC" } else { "" }
                ));
            }
            _ => sql.push_str(" FROM resources r WHERE "),
        }
        sql.push_str(&self.where_clause(&spec.resource_type, &spec.filters, "r"));
        if let Some(position) = &spec.position {
            sql.push_str(" AND ");
            sql.push_str(&self.keyset(&sort, &keys, position));
        }
        sql.push_str(" ORDER BY ");
        let order: Vec<String> = sort
            .iter()
            .zip(&keys)
            .map(|(key, expression)| {
                let descending = key.descending() != backwards;
                format!("{expression}{}", if descending { " DESC" } else { "" })
            })
            .collect();
        sql.push_str(&order.join(", "));
        let limit = self.int(spec.limit as i64);
        sql.push_str(&format!(" LIMIT {limit}"));
        sql
    }

    /// `SELECT COUNT(*)` of everything the filters match.
    pub(crate) fn count_query(&mut self, resource_type: &str, filters: &[Filter]) -> String {
        format!(
            "SELECT COUNT(*) FROM resources r WHERE {}",
            self.where_clause(resource_type, filters, "r")
        )
    }

    /// `SELECT COUNT(*)` of the rows of `filter`'s index that match it, stopping at `cap`:
    /// how many resources it would collect if it drove the query (an estimate for the
    /// blind terms, whose index holds every type). `None` for a filter of another kind.
    pub(crate) fn driver_rows_query(
        &mut self,
        resource_type: &str,
        filter: &Filter,
        cap: usize,
    ) -> Option<String> {
        let Filter::Match {
            param,
            tests,
            negate: false,
        } = filter
        else {
            return None;
        };
        let table = tests.first()?.table();
        let rows = if table == IndexTable::Term {
            match self.dialect {
                Dialect::Sqlite => {
                    let query = self.text(&term_phrases(tests));
                    format!("SELECT 1 FROM search_term WHERE search_term MATCH {query}")
                }
                Dialect::Postgres => return None,
            }
        } else {
            let t = self.alias("t");
            let ty = self.text(resource_type);
            let param = self.text(param);
            let alternatives = self.alternatives(tests, &t);
            format!(
                "SELECT 1 FROM {} {t} WHERE {t}.resource_type = {ty} AND {t}.param = {param} AND ({})",
                table.name(),
                alternatives.join(" OR ")
            )
        };
        let cap = self.int(cap as i64);
        Some(format!(
            "SELECT COUNT(*) FROM ({rows} LIMIT {cap}) driver_rows"
        ))
    }

    /// One filter, the most selective by a simple ranking, drives the query as
    /// `id IN (SELECT …)` (an index range the database walks first); the others are
    /// correlated `EXISTS` probes on each candidate through the owner index. Every
    /// subquery in `IN` form would be materialized in full: a common code (every patient's
    /// height) costs thousands of rows even when the patient filter leaves ten.
    fn where_clause(&mut self, resource_type: &str, filters: &[Filter], alias: &str) -> String {
        let ty = self.text(resource_type);
        let mut parts = vec![
            format!("{alias}.resource_type = {ty}"),
            format!("NOT {alias}.deleted"),
        ];
        let driver = if self.drive_by_index {
            driving_filter(filters)
        } else {
            None
        };
        for (index, filter) in filters.iter().enumerate() {
            let drives = Some(index) == driver;
            parts.push(self.filter(resource_type, filter, alias, drives));
        }
        parts.join(" AND ")
    }

    fn filter(
        &mut self,
        resource_type: &str,
        filter: &Filter,
        alias: &str,
        drives: bool,
    ) -> String {
        match filter {
            Filter::Ids(ids) => {
                let list: Vec<String> = ids.iter().map(|id| self.text(id)).collect();
                format!("{alias}.id IN ({})", list.join(", "))
            }
            Filter::LastUpdated(ranges) => {
                let column = format!("{alias}.last_updated_us");
                let alternatives: Vec<String> = ranges
                    .iter()
                    .map(|(op, low, high)| {
                        range_test(
                            self,
                            *op,
                            &column,
                            &column,
                            SqlParam::Int(*low),
                            SqlParam::Int(*high),
                        )
                    })
                    .collect();
                format!("({})", alternatives.join(" OR "))
            }
            Filter::Match {
                param,
                tests,
                negate,
            } => {
                let Some(first) = tests.first() else {
                    return "FALSE".to_owned();
                };
                let table = first.table();
                if table == IndexTable::Term {
                    return self.term_match(tests, alias, *negate, drives);
                }
                let t = self.alias("t");
                let ty = self.text(resource_type);
                let param = self.text(param);
                let alternatives = self.alternatives(tests, &t);
                if !drives {
                    return self.probe(
                        *negate,
                        &format!(
                            "{} WHERE {t}.resource_type = {ty} AND {t}.id = {alias}.id AND {t}.param = {param} AND ({})",
                            self.by_owner(table, &t),
                            alternatives.join(" OR ")
                        ),
                    );
                }
                format!(
                    "{alias}.id {}IN (SELECT {t}.id FROM {} {t} WHERE {t}.resource_type = {ty} AND {t}.param = {param} AND ({}))",
                    if *negate { "NOT " } else { "" },
                    table.name(),
                    alternatives.join(" OR ")
                )
            }
            Filter::Missing {
                table: IndexTable::Term,
                ..
            } => {
                // Terms carry no parameter name: the hub asks for the term that says a
                // parameter has a value instead (`Filter::Match`).
                "FALSE".to_owned()
            }
            Filter::Missing {
                param,
                table,
                missing,
            } => {
                let t = self.alias("t");
                let ty = self.text(resource_type);
                let param = self.text(param);
                self.probe(
                    *missing,
                    &format!(
                        "{} WHERE {t}.resource_type = {ty} AND {t}.id = {alias}.id AND {t}.param = {param}",
                        self.by_owner(*table, &t)
                    ),
                )
            }
            Filter::Composite {
                param,
                alternatives,
            } => {
                let parts: Vec<String> = alternatives
                    .iter()
                    .map(|components| self.composite(resource_type, param, components, alias))
                    .collect();
                if parts.is_empty() {
                    "FALSE".to_owned()
                } else {
                    format!("({})", parts.join(" OR "))
                }
            }
            Filter::Chain {
                param,
                target_type,
                inner,
            } => {
                let x = self.alias("x");
                let r2 = self.alias("r");
                let ty = self.text(resource_type);
                let param = self.text(param);
                let target = self.text(target_type);
                let inner = self.where_clause(target_type, inner, &r2);
                format!(
                    "{alias}.id IN (SELECT {x}.id FROM search_reference {x} WHERE {x}.resource_type = {ty} AND {x}.param = {param} AND {x}.target_type = {target} AND {x}.target_id IN (SELECT {r2}.id FROM resources {r2} WHERE {inner}))"
                )
            }
            Filter::Has {
                source_type,
                param,
                inner,
            } => {
                let x = self.alias("x");
                let r2 = self.alias("r");
                let source = self.text(source_type);
                let param = self.text(param);
                let ty = self.text(resource_type);
                let inner = self.where_clause(source_type, inner, &r2);
                format!(
                    "{alias}.id IN (SELECT {x}.target_id FROM search_reference {x} WHERE {x}.resource_type = {source} AND {x}.param = {param} AND {x}.target_type = {ty} AND {x}.id IN (SELECT {r2}.id FROM resources {r2} WHERE {inner}))"
                )
            }
            Filter::Compartment {
                params,
                target_type,
                target_ids,
            } => {
                if params.is_empty() || target_ids.is_empty() {
                    return "FALSE".to_owned();
                }
                let x = self.alias("x");
                let ty = self.text(resource_type);
                let list: Vec<String> = params.iter().map(|p| self.text(p)).collect();
                let target = self.text(target_type);
                let ids: Vec<String> = target_ids.iter().map(|id| self.text(id)).collect();
                format!(
                    "{alias}.id IN (SELECT {x}.id FROM search_reference {x} WHERE {x}.resource_type = {ty} AND {x}.param IN ({}) AND {x}.target_type = {target} AND {x}.target_id IN ({}))",
                    list.join(", "),
                    ids.join(", ")
                )
            }
        }
    }

    fn composite(
        &mut self,
        resource_type: &str,
        param: &str,
        components: &[Test],
        alias: &str,
    ) -> String {
        if components.is_empty() {
            return "FALSE".to_owned();
        }
        let aliases: Vec<String> = components.iter().map(|_| self.alias("c")).collect();
        let ty = self.text(resource_type);
        let first = &aliases[0];
        let mut from = format!("{} {first}", components[0].table().name());
        let mut conditions = vec![format!("{first}.resource_type = {ty}")];
        for (index, (test, c)) in components.iter().zip(&aliases).enumerate() {
            if index > 0 {
                from.push_str(&format!(
                    " JOIN {} {c} ON {c}.resource_type = {first}.resource_type AND {c}.id = {first}.id AND {c}.grp = {first}.grp",
                    test.table().name()
                ));
            }
            let component = self.text(&format!("{param}#{index}"));
            conditions.push(format!("{c}.param = {component}"));
            let test = self.test(test, c);
            conditions.push(format!("({test})"));
        }
        format!(
            "{alias}.id IN (SELECT {first}.id FROM {from} WHERE {})",
            conditions.join(" AND ")
        )
    }

    /// A resource (`alias`) whose blind terms include one of `tests`' (`negate`: none).
    /// SQLite: the FTS5 table's rowid is the `seq` of the version it indexes, the current
    /// one; a driving filter walks from the matching versions to their resources. PostgreSQL:
    /// a GIN index over each resource's array of terms.
    fn term_match(&mut self, tests: &[Test], alias: &str, negate: bool, drives: bool) -> String {
        let terms: Vec<String> = tests
            .iter()
            .filter_map(|test| match test {
                Test::Term(term) => Some(term_text(term)),
                _ => None,
            })
            .collect();
        let not = if negate { "NOT " } else { "" };
        match self.dialect {
            Dialect::Sqlite => {
                let query = self.text(&term_phrases(tests));
                let seqs = format!("SELECT rowid FROM search_term WHERE search_term MATCH {query}");
                if drives && !negate {
                    let v = self.alias("v");
                    format!(
                        "({alias}.resource_type, {alias}.id) IN (SELECT {v}.resource_type, {v}.id FROM resource_versions {v} WHERE {v}.seq IN ({seqs}))"
                    )
                } else {
                    format!("{alias}.seq {not}IN ({seqs})")
                }
            }
            Dialect::Postgres => {
                let t = self.alias("t");
                let list: Vec<String> = terms.iter().map(|term| self.text(term)).collect();
                let array = format!("ARRAY[{}]::text[]", list.join(", "));
                if drives && !negate {
                    format!(
                        "{alias}.id IN (SELECT {t}.id FROM search_term {t} WHERE {t}.resource_type = {alias}.resource_type AND {t}.terms && {array})"
                    )
                } else {
                    self.probe(
                        negate,
                        &format!(
                            "search_term {t} WHERE {t}.resource_type = {alias}.resource_type AND {t}.id = {alias}.id AND {t}.terms && {array}"
                        ),
                    )
                }
            }
        }
    }

    /// The tests of one filter as SQL alternatives. Many codes without a system (a date
    /// search on an encrypted birth date expands into hundreds of bucket codes) are one
    /// `IN` list: as `OR`s they would nest past SQLite's expression depth (1,000).
    fn alternatives(&mut self, tests: &[Test], t: &str) -> Vec<String> {
        let codes: Vec<&str> = tests
            .iter()
            .filter_map(|test| match test {
                Test::Token {
                    system: None,
                    code: Some(code),
                } => Some(code.as_str()),
                _ => None,
            })
            .collect();
        if codes.len() < 2 {
            return tests.iter().map(|test| self.test(test, t)).collect();
        }
        let placeholders: Vec<String> = codes.iter().map(|code| self.text(code)).collect();
        let column = format!("{t}.code");
        let list = match self.dialect {
            Dialect::Sqlite => format!("{column} IN ({})", placeholders.join(", ")),
            Dialect::Postgres => {
                let hashes: Vec<String> =
                    placeholders.iter().map(|p| format!("md5({p})")).collect();
                format!(
                    "(md5({column}) IN ({}) AND {column} IN ({}))",
                    hashes.join(", "),
                    placeholders.join(", ")
                )
            }
        };
        let mut alternatives = vec![list];
        for test in tests {
            if !matches!(
                test,
                Test::Token {
                    system: None,
                    code: Some(_)
                }
            ) {
                alternatives.push(self.test(test, t));
            }
        }
        alternatives
    }

    fn test(&mut self, test: &Test, t: &str) -> String {
        match test {
            Test::Token { system, code } => {
                let mut parts = Vec::new();
                if let Some(code) = code {
                    let code = self.text(code);
                    parts.push(self.hashed_equals(&format!("{t}.code"), &code));
                }
                if let Some(system) = system {
                    let system = self.text(system);
                    parts.push(self.hashed_equals(&format!("{t}.system"), &system));
                }
                if parts.is_empty() {
                    "TRUE".to_owned()
                } else {
                    parts.join(" AND ")
                }
            }
            Test::StringStartsWith(prefix) => {
                let prefix = truncate(prefix, MAX_INDEXED_STRING);
                let low = self.text(prefix);
                let high = self.text(&format!("{prefix}{TEXT_MAX}"));
                format!("{t}.normalized >= {low} AND {t}.normalized < {high}")
            }
            Test::StringContains(part) => {
                let part = self.text(part);
                match self.dialect {
                    Dialect::Sqlite => format!("instr({t}.normalized, {part}) > 0"),
                    Dialect::Postgres => format!("strpos({t}.normalized, {part}) > 0"),
                }
            }
            Test::StringExact(value) => {
                let value = self.text(value);
                format!("{t}.exact = {value}")
            }
            Test::Date { op, low, high } => range_test(
                self,
                *op,
                &format!("{t}.low"),
                &format!("{t}.high"),
                SqlParam::Int(*low),
                SqlParam::Int(*high),
            ),
            Test::Number { op, low, high } => range_test(
                self,
                *op,
                &format!("{t}.low"),
                &format!("{t}.high"),
                SqlParam::Real(*low),
                SqlParam::Real(*high),
            ),
            Test::Quantity {
                op,
                low,
                high,
                system,
                code,
            } => {
                let mut parts = vec![range_test(
                    self,
                    *op,
                    &format!("{t}.low"),
                    &format!("{t}.high"),
                    SqlParam::Real(*low),
                    SqlParam::Real(*high),
                )];
                if let Some(system) = system {
                    let system = self.text(system);
                    parts.push(format!("{t}.system = {system}"));
                }
                if let Some(code) = code {
                    let code = self.text(code);
                    parts.push(self.hashed_equals(&format!("{t}.code"), &code));
                }
                format!("({})", parts.join(" AND "))
            }
            Test::Reference {
                target_type,
                target_id,
            } => {
                let id = self.text(target_id);
                match target_type {
                    Some(target_type) => {
                        let target_type = self.text(target_type);
                        format!("({t}.target_id = {id} AND {t}.target_type = {target_type})")
                    }
                    // A reference elsewhere has no type: its target id is its spelling.
                    None => format!("({t}.target_id = {id} AND {t}.target_type <> '')"),
                }
            }
            Test::ReferenceUrl(url) => {
                let url = self.text(url);
                format!("({t}.target_id = {url} AND {t}.target_type = '')")
            }
            Test::Uri(value) => {
                let value = self.text(value);
                self.hashed_equals(&format!("{t}.value"), &value)
            }
            Test::UriBelow(prefix) => {
                let low = self.text(prefix);
                let high = self.text(&format!("{prefix}{TEXT_MAX}"));
                format!("{t}.value >= {low} AND {t}.value < {high}")
            }
            // Terms are matched by `term_match` and never reach a row-table test.
            Test::Term(_) => "FALSE".to_owned(),
        }
    }

    /// The expression of one sort key for the resource aliased `alias`; absent values are
    /// replaced by a sentinel that sorts last in the key's direction.
    fn sort_expression(&mut self, resource_type: &str, key: &SortBy, alias: &str) -> String {
        match key {
            SortBy::LastUpdated { .. } => format!("{alias}.last_updated_us"),
            SortBy::Id { .. } => format!("{alias}.id"),
            SortBy::Param {
                param,
                table,
                descending,
            } => {
                let (column, kind) = sort_column(*table, *descending);
                let aggregate = if *descending { "MAX" } else { "MIN" };
                let s = self.alias("s");
                let ty = self.text(resource_type);
                let param = self.text(param);
                let sentinel = match (kind, descending) {
                    (SortKind::Int, false) => self.int(i64::MAX),
                    (SortKind::Int, true) => self.int(i64::MIN),
                    (SortKind::Real, false) => self.real(f64::MAX),
                    (SortKind::Real, true) => self.real(f64::MIN),
                    (SortKind::Text, false) => self.text(TEXT_MAX),
                    (SortKind::Text, true) => self.text(""),
                };
                if *table == IndexTable::Term {
                    return sentinel;
                }
                format!(
                    "COALESCE((SELECT {aggregate}({s}.{column}) FROM {} WHERE {s}.resource_type = {ty} AND {s}.id = {alias}.id AND {s}.param = {param}), {sentinel})",
                    self.by_owner(*table, &s)
                )
            }
        }
    }

    /// Rows strictly after (or before) `position` in the order of `sort`.
    fn keyset(&mut self, sort: &[SortBy], keys: &[String], position: &PagePosition) -> String {
        let mut alternatives = Vec::new();
        for index in 0..sort.len().min(position.values.len()) {
            let mut parts = Vec::new();
            for (key, value) in keys.iter().zip(&position.values).take(index) {
                let value = self.sort_param(value);
                parts.push(format!("{key} = {value}"));
            }
            let descending = sort[index].descending() != position.backwards;
            let value = self.sort_param(&position.values[index]);
            parts.push(format!(
                "{} {} {value}",
                keys[index],
                if descending { "<" } else { ">" }
            ));
            alternatives.push(format!("({})", parts.join(" AND ")));
        }
        if alternatives.is_empty() {
            "TRUE".to_owned()
        } else {
            format!("({})", alternatives.join(" OR "))
        }
    }

    fn sort_param(&mut self, value: &SortValue) -> String {
        match value {
            SortValue::Int(v) => self.int(*v),
            SortValue::Real(v) => self.real(*v),
            SortValue::Text(v) => self.text(v),
        }
    }
}

/// The FTS5 query for blind terms: any of `tests`' terms, each a phrase.
fn term_phrases(tests: &[Test]) -> String {
    let phrases: Vec<String> = tests
        .iter()
        .filter_map(|test| match test {
            Test::Term(term) => Some(format!("\"{}\"", term_text(term))),
            _ => None,
        })
        .collect();
    phrases.join(" OR ")
}

/// The filter that drives a query: the most selective by [`selectivity_rank`].
fn driving_filter(filters: &[Filter]) -> Option<usize> {
    filters
        .iter()
        .enumerate()
        .filter_map(|(index, filter)| selectivity_rank(filter).map(|rank| (rank, index)))
        .min()
        .map(|(_, index)| index)
}

/// A driving filter with at least this many matching rows makes a page in `_id` order
/// walk the resources rather than collect them all (each backend's `page_in_id_order`).
pub(crate) const ID_ORDER_DENSE_ROWS: usize = 1_000;

/// The most matching index rows the lone-token page reads before it leaves the page to
/// the general query: an identifier or a code names a few resources, not thousands.
pub const LONE_TOKEN_ROWS: usize = 64;

/// The token test of a first page in `_id` order made of that one test alone, as
/// `(param, system, code)`: `identifier=system|value`, which every conditional create and
/// update asks. Such a page can be read straight from the token index (the matching ids,
/// their resources not deleted, then sorted and deduplicated by the caller), where the
/// general query first gathers the ids in a temporary table; see [`LONE_TOKEN_ROWS`].
pub(crate) fn lone_token(spec: &SearchSpec) -> Option<(&str, Option<&str>, &str)> {
    let in_id_order = matches!(
        spec.sort.as_slice(),
        [] | [SortBy::Id { descending: false }]
    );
    if !in_id_order || spec.position.is_some() {
        return None;
    }
    match spec.filters.as_slice() {
        [
            Filter::Match {
                param,
                tests,
                negate: false,
            },
        ] => match tests.as_slice() {
            [
                Test::Token {
                    system,
                    code: Some(code),
                },
            ] => Some((param.as_str(), system.as_deref(), code.as_str())),
            _ => None,
        },
        _ => None,
    }
}

/// The filter that would drive `spec`, when walking the resources in `_id` order instead
/// may be far cheaper: the page is in `_id` order (the default), and every filter can be
/// probed on one resource at a time (matches on index tables, absences, `_lastUpdated`;
/// not chains, `_has`, compartments, composites or `_id` lists, which are written as
/// subqueries). A driving filter collects every match before the first page is cut, so
/// `Observation?category=vital-signs&_count=10` read 20,000 index rows for ten answers;
/// walking the type in key order stops after the page's ten, when matches are dense. When
/// they are sparse the walk is long: the store decides with a bounded count of the
/// driver's rows and a step budget on the walk ([`crate::sqlite_store`]).
pub(crate) fn id_order_driver(spec: &SearchSpec) -> Option<&Filter> {
    if !spec.sort.iter().all(|key| matches!(key, SortBy::Id { .. })) {
        return None;
    }
    let probed_one_by_one = spec.filters.iter().all(|filter| {
        matches!(
            filter,
            Filter::Match { .. } | Filter::Missing { .. } | Filter::LastUpdated(_)
        )
    });
    if !probed_one_by_one {
        return None;
    }
    let driver = &spec.filters[driving_filter(&spec.filters)?];
    matches!(driver, Filter::Match { negate: false, .. }).then_some(driver)
}

/// How selective a filter is likely to be, lower first; `None` for filters that cannot
/// drive a query (negations, absences). A guess from the shape of the filter: the
/// databases cannot know that `code=8302-2` matches every patient while `patient=123`
/// matches one.
fn selectivity_rank(filter: &Filter) -> Option<u8> {
    match filter {
        Filter::Ids(_) => Some(0),
        Filter::Compartment { .. } => Some(1),
        Filter::Match {
            negate: false,
            tests,
            ..
        } => Some(match tests.first()? {
            Test::Reference { .. } | Test::ReferenceUrl(_) => 1,
            Test::StringExact(_) | Test::Term(_) => 2,
            Test::Token { code: Some(_), .. } => 3,
            Test::StringStartsWith(_) | Test::Uri(_) => 4,
            Test::Quantity { .. } | Test::Number { .. } => 6,
            Test::Date { .. } => 7,
            Test::Token { code: None, .. } | Test::UriBelow(_) | Test::StringContains(_) => 8,
        }),
        Filter::Composite { .. } => Some(5),
        // A chain usually names one resource (a patient by name, an encounter by number):
        // more selective than a code that every patient has.
        Filter::Chain { .. } | Filter::Has { .. } => Some(2),
        Filter::LastUpdated(_) => Some(9),
        Filter::Match { negate: true, .. } | Filter::Missing { .. } => None,
    }
}

/// The sort keys with `_id` appended (ascending unless `_id` is already a key).
pub fn full_sort(sort: &[SortBy]) -> Vec<SortBy> {
    let mut keys = sort.to_vec();
    if !keys.iter().any(|key| matches!(key, SortBy::Id { .. })) {
        keys.push(SortBy::Id { descending: false });
    }
    keys
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SortKind {
    Int,
    Real,
    Text,
}

/// The column a sort by `table` reads, and its kind.
pub(crate) fn sort_column(table: IndexTable, descending: bool) -> (&'static str, SortKind) {
    match table {
        IndexTable::Token => ("code", SortKind::Text),
        IndexTable::String => ("normalized", SortKind::Text),
        IndexTable::Date if descending => ("high", SortKind::Int),
        IndexTable::Date => ("low", SortKind::Int),
        IndexTable::Number | IndexTable::Quantity => ("value", SortKind::Real),
        IndexTable::Reference => ("url", SortKind::Text),
        IndexTable::Uri => ("value", SortKind::Text),
        // Terms say nothing of order: the hub sorts by blind elements in memory.
        IndexTable::Term => ("NULL", SortKind::Text),
    }
}

/// The kind of each sort key, `_id` included, to read its value back from a row.
pub(crate) fn sort_kinds(sort: &[SortBy]) -> Vec<SortKind> {
    full_sort(sort)
        .iter()
        .map(|key| match key {
            SortBy::LastUpdated { .. } => SortKind::Int,
            SortBy::Id { .. } => SortKind::Text,
            SortBy::Param {
                table, descending, ..
            } => sort_column(*table, *descending).1,
        })
        .collect()
}

/// The FHIR R4 range semantics: the stored range `[rl, rh]` against the searched `[low,
/// high]`. Binds only the bounds the test uses (an unused placeholder is an error).
fn range_test(
    builder: &mut SqlBuilder,
    op: RangeOp,
    rl: &str,
    rh: &str,
    low: SqlParam,
    high: SqlParam,
) -> String {
    let within = |builder: &mut SqlBuilder| {
        let (pl, ph) = (builder.bind(low.clone()), builder.bind(high.clone()));
        format!("({rl} >= {pl} AND {rh} <= {ph})")
    };
    match op {
        RangeOp::Eq => within(builder),
        RangeOp::Ne => format!("NOT {}", within(builder)),
        RangeOp::Gt => format!("{rh} > {}", builder.bind(high.clone())),
        RangeOp::Lt => format!("{rl} < {}", builder.bind(low.clone())),
        // `rh >= pl` (resp. `rl <= ph`) follows from either branch; said first, it gives
        // the database an index range instead of a scan of the parameter's rows.
        RangeOp::Ge => {
            let (pl, ph) = (builder.bind(low.clone()), builder.bind(high.clone()));
            format!("({rh} >= {pl} AND ({rh} > {ph} OR {}))", within(builder))
        }
        RangeOp::Le => {
            let (pl, ph) = (builder.bind(low.clone()), builder.bind(high.clone()));
            format!("({rl} <= {ph} AND ({rl} < {pl} OR {}))", within(builder))
        }
        RangeOp::Sa => format!("{rl} > {}", builder.bind(high.clone())),
        RangeOp::Eb => format!("{rh} < {}", builder.bind(low.clone())),
        RangeOp::Overlaps => {
            let (pl, ph) = (builder.bind(low.clone()), builder.bind(high.clone()));
            format!("({rl} <= {ph} AND {rh} >= {pl})")
        }
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
pub fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A resource's blind terms, distinct and sorted.
fn distinct_terms(rows: &[IndexRow]) -> std::collections::BTreeSet<&BlindTerm> {
    rows.iter()
        .filter_map(|row| match &row.cell {
            IndexCell::Term(term) => Some(term),
            _ => None,
        })
        .collect()
}

/// A resource's blind terms as the term index holds them: distinct, in [`term_text`] form.
pub(crate) fn term_entry(rows: &[IndexRow]) -> Vec<String> {
    distinct_terms(rows).into_iter().map(term_text).collect()
}

/// [`term_entry`] as the one text SQLite's term index takes, terms separated by spaces,
/// written in one buffer (a new patient has about a hundred terms: a `String` each, then
/// joined, was about 1.5% of the writer's time under an HL7 feed).
pub(crate) fn term_entry_text(rows: &[IndexRow]) -> String {
    let terms = distinct_terms(rows);
    let mut text = String::with_capacity(terms.len() * (2 * std::mem::size_of::<BlindTerm>() + 1));
    for (n, term) in terms.into_iter().enumerate() {
        if n > 0 {
            text.push(' ');
        }
        push_term_text(&mut text, term);
    }
    text
}

/// The DELETE statements that clear a resource's index rows.
pub(crate) fn delete_index_sql(dialect: Dialect) -> Vec<String> {
    IndexTable::ALL
        .iter()
        .map(|table| match dialect {
            Dialect::Sqlite => format!(
                "DELETE FROM {} WHERE resource_type = ?1 AND id = ?2",
                table.name()
            ),
            Dialect::Postgres => format!(
                "DELETE FROM {} WHERE resource_type = $1 AND id = $2",
                table.name()
            ),
        })
        .collect()
}

/// The members of a compartment, by (type, id), for both backends.
pub(crate) fn compartment_sql(
    dialect: Dialect,
    target_type: &str,
    target_id: &str,
    members: &[(String, Vec<String>)],
    after: Option<(&str, &str)>,
    limit: usize,
) -> (String, Vec<SqlParam>) {
    let mut values = Vec::new();
    let mut bind = |value: SqlParam| {
        values.push(value);
        match dialect {
            Dialect::Sqlite => format!("?{}", values.len()),
            Dialect::Postgres => format!("${}", values.len()),
        }
    };
    let target_type = bind(SqlParam::Text(target_type.to_owned()));
    let target_id = bind(SqlParam::Text(target_id.to_owned()));
    let mut alternatives = Vec::new();
    for (member_type, params) in members {
        if params.is_empty() {
            continue;
        }
        let member_type = bind(SqlParam::Text(member_type.clone()));
        let params: Vec<String> = params
            .iter()
            .map(|p| bind(SqlParam::Text(p.clone())))
            .collect();
        alternatives.push(format!(
            "(x.resource_type = {member_type} AND x.param IN ({}))",
            params.join(", ")
        ));
    }
    if alternatives.is_empty() {
        alternatives.push("FALSE".to_owned());
    }
    let (after_type, after_id) = after.unwrap_or(("", ""));
    let after_type = bind(SqlParam::Text(after_type.to_owned()));
    let after_id = bind(SqlParam::Text(after_id.to_owned()));
    let limit = bind(SqlParam::Int(limit as i64));
    let sql = format!(
        "SELECT DISTINCT x.resource_type, x.id FROM search_reference x
         JOIN resources r ON r.resource_type = x.resource_type AND r.id = x.id
         WHERE x.target_type = {target_type} AND x.target_id = {target_id} AND NOT r.deleted
           AND ({})
           AND (x.resource_type > {after_type} OR (x.resource_type = {after_type} AND x.id > {after_id}))
         ORDER BY x.resource_type, x.id LIMIT {limit}",
        alternatives.join(" OR ")
    );
    (sql, values)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The one-buffer entry SQLite stores is the distinct terms, sorted, each in
        /// `term_text` form, separated by single spaces, and nothing else.
        #[test]
        fn term_entry_text_is_the_terms_joined(
            terms in proptest::collection::vec(proptest::array::uniform16(proptest::num::u8::ANY), 0..40),
            other in proptest::collection::vec(".{0,8}", 0..4),
        ) {
            let mut rows: Vec<IndexRow> = terms
                .iter()
                .chain(terms.iter().take(3))
                .map(|term| IndexRow { param: "name".into(), group: 0, cell: IndexCell::Term(*term) })
                .collect();
            rows.extend(other.iter().map(|code| IndexRow {
                param: "gender".into(),
                group: 0,
                cell: IndexCell::Token { system: String::new(), code: code.clone() },
            }));
            let text = term_entry_text(&rows);
            proptest::prop_assert_eq!(&text, &term_entry(&rows).join(" "));
            let mut distinct = terms.clone();
            distinct.sort();
            distinct.dedup();
            let words: Vec<&str> = if text.is_empty() { Vec::new() } else { text.split(' ').collect() };
            proptest::prop_assert_eq!(words.len(), distinct.len());
            for (word, term) in words.iter().zip(&distinct) {
                let bytes: Vec<u8> = word.chars().map(|c| (u32::from(c) - 0x100) as u8).collect();
                proptest::prop_assert_eq!(bytes.as_slice(), term.as_slice());
                let latin_extended = word.chars().all(|c| (0x100..=0x1ff).contains(&u32::from(c)));
                proptest::prop_assert!(latin_extended);
            }
        }
    }

    #[test]
    fn page_query_binds_every_value() {
        let spec = SearchSpec {
            resource_type: "Observation".into(),
            filters: vec![
                Filter::Match {
                    param: "code".into(),
                    tests: vec![Test::Token {
                        system: Some("http://loinc.org".into()),
                        code: Some("1234-5".into()),
                    }],
                    negate: false,
                },
                Filter::Chain {
                    param: "subject".into(),
                    target_type: "Patient".into(),
                    inner: vec![Filter::Match {
                        param: "name".into(),
                        tests: vec![Test::StringStartsWith("o'brien".into())],
                        negate: false,
                    }],
                },
            ],
            sort: vec![SortBy::Param {
                param: "date".into(),
                table: IndexTable::Date,
                descending: true,
            }],
            position: Some(PagePosition {
                values: vec![SortValue::Int(5), SortValue::Text("x".into())],
                backwards: false,
            }),
            limit: 11,
        };
        let mut sqlite = SqlBuilder::new(Dialect::Sqlite);
        let sql = sqlite.page_query(&spec);
        assert!(!sql.contains("o'brien"), "values are bound, never inlined");
        assert!(!sql.contains("1234-5"));
        // Every bound value is used (SQLite and PostgreSQL both refuse unused ones).
        let spaced = format!("{sql} ");
        for n in 1..=sqlite.params.len() {
            assert!(
                spaced.contains(&format!("?{n} ")) || spaced.contains(&format!("?{n})")),
                "?{n} unused in {sql}"
            );
        }
        assert!(!sql.contains(&format!("?{}", sqlite.params.len() + 1)));
        let mut postgres = SqlBuilder::new(Dialect::Postgres);
        let sql = postgres.page_query(&spec);
        assert!(sql.contains(&format!("${}", postgres.params.len())));
        assert!(!sql.contains('?'));
    }

    fn category(code: &str) -> Filter {
        code_is_any("category", code)
    }

    fn observations(filters: Vec<Filter>, sort: Vec<SortBy>) -> SearchSpec {
        SearchSpec {
            resource_type: "Observation".into(),
            filters,
            sort,
            position: None,
            limit: 11,
        }
    }

    #[test]
    fn only_one_token_test_alone_on_a_first_page_in_id_order_is_a_lone_token() {
        let identifier = || Filter::Match {
            param: "identifier".into(),
            tests: vec![Test::Token {
                system: Some("urn:mrn".into()),
                code: Some("12".into()),
            }],
            negate: false,
        };
        let spec = |filters: Vec<Filter>, sort: Vec<SortBy>| SearchSpec {
            resource_type: "Patient".into(),
            filters,
            sort,
            position: None,
            limit: 2,
        };
        assert_eq!(
            lone_token(&spec(vec![identifier()], vec![])),
            Some(("identifier", Some("urn:mrn"), "12"))
        );
        assert_eq!(
            lone_token(&spec(
                vec![code_is_any("gender", "female")],
                vec![SortBy::Id { descending: false }]
            )),
            Some(("gender", None, "female"))
        );
        let descending = spec(vec![identifier()], vec![SortBy::Id { descending: true }]);
        assert_eq!(lone_token(&descending), None);
        let by_date = vec![SortBy::LastUpdated { descending: false }];
        assert_eq!(lone_token(&spec(vec![identifier()], by_date)), None);
        let mut later_page = spec(vec![identifier()], vec![]);
        later_page.position = Some(PagePosition {
            values: vec![SortValue::Text("a".into())],
            backwards: false,
        });
        assert_eq!(lone_token(&later_page), None);
        let two_filters = spec(vec![identifier(), code_is_any("gender", "female")], vec![]);
        assert_eq!(lone_token(&two_filters), None);
        let Filter::Match { tests, .. } = identifier() else {
            unreachable!()
        };
        let negated = Filter::Match {
            param: "identifier".into(),
            tests: tests.clone(),
            negate: true,
        };
        assert_eq!(lone_token(&spec(vec![negated], vec![])), None);
        let either = Filter::Match {
            param: "identifier".into(),
            tests: [tests.clone(), tests].concat(),
            negate: false,
        };
        assert_eq!(lone_token(&spec(vec![either], vec![])), None);
        let any_code = Filter::Match {
            param: "identifier".into(),
            tests: vec![Test::Token {
                system: Some("urn:mrn".into()),
                code: None,
            }],
            negate: false,
        };
        assert_eq!(lone_token(&spec(vec![any_code], vec![])), None);
    }

    fn code_is_any(param: &str, code: &str) -> Filter {
        Filter::Match {
            param: param.into(),
            tests: vec![Test::Token {
                system: None,
                code: Some(code.into()),
            }],
            negate: false,
        }
    }

    #[test]
    fn a_walk_in_id_order_probes_every_filter_and_collects_none() {
        let spec = observations(
            vec![category("vital-signs"), category("laboratory")],
            vec![],
        );
        let driven = SqlBuilder::new(Dialect::Sqlite).page_query(&spec);
        assert!(driven.contains("r.id IN (SELECT"), "{driven}");
        let walked = SqlBuilder::in_id_order(Dialect::Sqlite).page_query(&spec);
        assert!(!walked.contains(" IN (SELECT"), "{walked}");
        assert_eq!(
            walked.matches("EXISTS (SELECT 1 FROM").count(),
            2,
            "{walked}"
        );
        assert!(walked.ends_with("ORDER BY r.id LIMIT ?8"), "{walked}");
        // PostgreSQL would make an EXISTS a semi-join, hashed in full: scalar probes.
        let walked = SqlBuilder::in_id_order(Dialect::Postgres).page_query(&spec);
        assert!(
            !walked.contains("EXISTS") && !walked.contains(" IN (SELECT"),
            "{walked}"
        );
        assert_eq!(
            walked.matches("LIMIT 1) IS NOT NULL").count(),
            2,
            "{walked}"
        );
        let driven = SqlBuilder::new(Dialect::Postgres).page_query(&spec);
        assert!(driven.contains("EXISTS (SELECT 1 FROM"), "{driven}");
        // A window: only the first resources from the cursor are probed.
        let windowed = SqlBuilder::in_id_order_window(Dialect::Postgres, 4_000).page_query(&spec);
        assert!(
            windowed.contains("FROM (SELECT * FROM resources w WHERE w.resource_type = $1 ORDER BY w.id LIMIT $2) r WHERE"),
            "{windowed}"
        );
    }

    #[test]
    fn only_pages_in_id_order_of_filters_probed_one_by_one_are_walked() {
        let dense = category("vital-signs");
        let by_id = observations(vec![dense.clone()], vec![]);
        assert_eq!(id_order_driver(&by_id), Some(&dense));
        let by_id_descending =
            observations(vec![dense.clone()], vec![SortBy::Id { descending: true }]);
        assert_eq!(id_order_driver(&by_id_descending), Some(&dense));
        // Sorted by a parameter: every match is needed for the order.
        let by_date = observations(
            vec![dense.clone()],
            vec![SortBy::Param {
                param: "date".into(),
                table: IndexTable::Date,
                descending: true,
            }],
        );
        assert_eq!(id_order_driver(&by_date), None);
        // A chain is a subquery whatever drives.
        let chained = observations(
            vec![
                dense.clone(),
                Filter::Chain {
                    param: "subject".into(),
                    target_type: "Patient".into(),
                    inner: vec![],
                },
            ],
            vec![],
        );
        assert_eq!(id_order_driver(&chained), None);
        // Nothing that could drive: the query already walks the type.
        let absent = observations(
            vec![Filter::Missing {
                param: "code".into(),
                table: IndexTable::Token,
                missing: true,
            }],
            vec![],
        );
        assert_eq!(id_order_driver(&absent), None);
        let mut probe = SqlBuilder::new(Dialect::Sqlite);
        let sql = probe
            .driver_rows_query("Observation", &dense, 1_000)
            .expect("a match on an index table can be counted");
        assert!(
            sql.starts_with("SELECT COUNT(*) FROM (SELECT 1 FROM search_token t1"),
            "{sql}"
        );
        assert!(sql.ends_with("LIMIT ?4) driver_rows"), "{sql}");
        assert_eq!(probe.params.last(), Some(&SqlParam::Int(1_000)));
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate("éé", 3), "é");
        assert_eq!(truncate("abc", 3), "abc");
    }
}
