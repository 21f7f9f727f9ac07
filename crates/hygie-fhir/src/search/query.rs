//! Search queries, from the query string to a typed [`SearchRequest`], with precise errors.
//!
//! Syntax per the R4 search page (<http://hl7.org/fhir/R4/search.html>):
//! - `name=a,b` is OR; repeating `name` is AND (one [`Filter`] each);
//! - `\,` `\$` `\|` `\\` escape the separators in values; any other backslash is an error;
//! - modifiers, only where R4 allows them: `:missing` on every type; `:exact` `:contains` on
//!   string; `:text` `:not` `:above` `:below` `:of-type` on token (`:in` / `:not-in` need a
//!   terminology server: not supported); `:above` `:below` on uri; `:[Type]` `:identifier`
//!   on reference;
//! - prefixes `eq ne gt lt ge le sa eb ap` on date, number and quantity values (and on those
//!   components of a composite);
//! - dates `YYYY`, `YYYY-MM`, `YYYY-MM-DD`, `YYYY-MM-DDThh:mm[:ss[.s…]]` + `Z` or `±hh:mm` (a
//!   time needs its zone), each standing for the range of its precision (see
//!   [`date`](super::date));
//! - numbers with the range of their significant figures (see [`number`](super::number));
//!   quantities `[prefix]number[|system|code]` (`5.4|http://unitsofmeasure.org|mg`,
//!   `5.4||mg`);
//! - tokens `code`, `|code` (no system), `system|code`, `system|`; `:of-type` takes
//!   `system|code|value`;
//! - references `id`, `Type/id`, an absolute URL or canonical; `:Type` sets the type;
//!   `:identifier` takes a token;
//! - composites `a$b`, one part per component, each read by its component's type;
//! - chains `subject:Patient.name=x`, or `subject.name=x` when `subject` has a single target
//!   type; reverse chains `_has:Observation:patient:code=x`, nested; at most
//!   [`QueryOptions::max_chain_depth`] hops in all;
//! - result parameters `_count _sort _include[:iterate] _revinclude[:iterate] _summary
//!   _elements _total _page _format _pretty`.
//!
//! Unknown parameters, and R4 parameters this server cannot evaluate (`Patient` `deceased`,
//! `_text`, `_filter`, …): an error in strict mode (`invalid` for unknown, `not-supported`
//! for the others), otherwise a warning in [`SearchRequest::ignored`] (R4 `handling=lenient`,
//! the default). Malformed values, unknown modifiers and exceeded limits are errors in both
//! modes. Empty values (`name=`) are ignored with a warning, as R4 asks.
//!
//! Every error is collected (not just the first); each has severity `error`, the parameter
//! name in `expression` and diagnostics that quote the offending value and say what is
//! expected. No input makes this code panic (fuzzed: `fuzz/fuzz_targets/search_query_parse.rs`).

use std::collections::HashSet;

use super::date::{self, ZoneRule};
use super::number;
use super::params::{ParamType, SearchParam, search_param};
use super::text::normalize;
use crate::outcome::{Issue, IssueSeverity, IssueType};
use crate::schema::{self, Primitive};

/// Limits and handling of one kind of request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryOptions {
    /// `Prefer: handling=strict`: unknown and unsupported parameters are errors.
    pub strict: bool,
    /// `_count` when the query has none.
    pub default_count: usize,
    /// The largest `_count` accepted; more is an error.
    pub max_count: usize,
    /// Chained and `_has` hops in one parameter name.
    pub max_chain_depth: usize,
    /// OR values of one parameter (also items of `_sort` and `_elements`).
    pub max_values: usize,
    /// Name/value pairs in one query.
    pub max_params: usize,
    /// `_include` plus `_revinclude` values.
    pub max_includes: usize,
}

impl Default for QueryOptions {
    fn default() -> QueryOptions {
        QueryOptions {
            strict: false,
            default_count: 20,
            max_count: 1000,
            max_chain_depth: 2,
            max_values: 100,
            max_params: 50,
            max_includes: 10,
        }
    }
}

/// A parsed search.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchRequest {
    pub resource_type: String,
    /// All must match (AND).
    pub filters: Vec<Filter>,
    /// `_count`, or the default; 0 asks for the total only.
    pub count: usize,
    pub sort: Vec<SortKey>,
    pub include: Vec<Include>,
    pub revinclude: Vec<Include>,
    pub summary: Option<Summary>,
    pub elements: Vec<String>,
    pub total: Option<Total>,
    /// The opaque `_page` token, untouched.
    pub page: Option<String>,
    /// `_pretty`.
    pub pretty: Option<bool>,
    /// Lenient mode: one warning per ignored parameter, naming it in `expression`.
    pub ignored: Vec<Issue>,
}

/// One search parameter of the query: any of `values` matches (OR).
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// Chained (`subject:Patient.name`) and reverse-chained (`_has:…`) hops, in order; the
    /// parameter is on the type the last hop reaches.
    pub path: Vec<Hop>,
    pub param: &'static SearchParam,
    pub modifier: Option<Modifier>,
    /// Non-empty, except for `:missing`.
    pub values: Vec<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Hop {
    /// Follow `reference` (a parameter of the current type) to resources of `target_type`.
    Chain {
        reference: &'static SearchParam,
        target_type: String,
    },
    /// Resources of `source_type` whose `reference` (a parameter on `source_type`) points at
    /// the current resource.
    Has {
        source_type: String,
        reference: &'static SearchParam,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modifier {
    Exact,
    Contains,
    Text,
    Not,
    OfType,
    Above,
    Below,
    Identifier,
    /// `subject:Patient=1`.
    Type(String),
    Missing(bool),
}

/// The system part of a token value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSystem {
    /// `code`: any system.
    Any,
    /// `|code`: no system.
    NoSystem,
    /// `system|code` or `system|`.
    Is(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

impl Prefix {
    pub const ALL: [Prefix; 9] = [
        Prefix::Eq,
        Prefix::Ne,
        Prefix::Gt,
        Prefix::Lt,
        Prefix::Ge,
        Prefix::Le,
        Prefix::Sa,
        Prefix::Eb,
        Prefix::Ap,
    ];

    pub fn as_code(self) -> &'static str {
        match self {
            Prefix::Eq => "eq",
            Prefix::Ne => "ne",
            Prefix::Gt => "gt",
            Prefix::Lt => "lt",
            Prefix::Ge => "ge",
            Prefix::Le => "le",
            Prefix::Sa => "sa",
            Prefix::Eb => "eb",
            Prefix::Ap => "ap",
        }
    }
}

/// One value of a filter, typed by the parameter's kind and modifier.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Token; also `:identifier` on a reference.
    Token {
        system: TokenSystem,
        code: Option<String>,
    },
    /// `:of-type`: `system|code|value`.
    OfType {
        type_system: String,
        type_code: String,
        value: String,
    },
    /// `:text`, normalized like [`IndexValue::String`](super::index::IndexValue::String).
    Text(String),
    /// Normalized; as given for `:exact`.
    String(String),
    /// The given value's precision range, inclusive, microseconds since the epoch (UTC).
    Date {
        prefix: Prefix,
        low_us: i64,
        high_us: i64,
    },
    Number {
        prefix: Prefix,
        value: f64,
        low: f64,
        high: f64,
    },
    Quantity {
        prefix: Prefix,
        value: f64,
        low: f64,
        high: f64,
        system: Option<String>,
        code: Option<String>,
    },
    /// `Patient/1` or `1` (with `:Patient`, `resource_type` is filled).
    Reference {
        resource_type: Option<String>,
        id: String,
    },
    /// An absolute URL or canonical.
    ReferenceUrl(String),
    Uri(String),
    /// `a$b`: one value per component, typed by the components' kinds.
    Composite(Vec<Value>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SortKey {
    pub param: &'static SearchParam,
    pub descending: bool,
}

/// `_include=Observation:subject:Patient`, `_revinclude=Provenance:target`.
#[derive(Debug, Clone, PartialEq)]
pub struct Include {
    pub source_type: String,
    pub param: &'static SearchParam,
    pub target_type: Option<String>,
    pub iterate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    True,
    False,
    Count,
    Data,
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Total {
    None,
    Estimate,
    Accurate,
}

/// Splits an `application/x-www-form-urlencoded` query (an optional leading `?` is dropped)
/// into decoded name/value pairs, in order. `+` is a space; `%XX` a byte. A malformed `%`
/// escape or a result that is not UTF-8 is an error naming the parameter.
pub fn parse_query_string(query: &str) -> Result<Vec<(String, String)>, Issue> {
    let query = query.strip_prefix('?').unwrap_or(query);
    let mut pairs = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        let name = decode(name).map_err(|e| {
            Issue::error(
                IssueType::Invalid,
                format!("parameter name '{}': {e}", quote(name)),
            )
        })?;
        let value = decode(value).map_err(|e| {
            let issue = Issue::error(
                IssueType::Invalid,
                format!(
                    "value '{}' of parameter '{}': {e}",
                    quote(value),
                    quote(&name)
                ),
            );
            if name.is_empty() {
                issue
            } else {
                issue.at(name.clone())
            }
        })?;
        pairs.push((name, value));
    }
    Ok(pairs)
}

fn decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (
                    b.get(i + 1).and_then(|&c| hex(c)),
                    b.get(i + 2).and_then(|&c| hex(c)),
                ) {
                    (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                    _ => return Err("'%' must be followed by two hexadecimal digits".into()),
                }
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "the percent-decoded bytes are not UTF-8".into())
}

/// At most 100 characters of untrusted input, for diagnostics.
fn quote(s: &str) -> String {
    const MAX: usize = 100;
    match s.char_indices().nth(MAX) {
        None => s.to_string(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

/// Result parameters that may appear once.
const SINGLE: [&str; 8] = [
    "_count",
    "_sort",
    "_summary",
    "_elements",
    "_total",
    "_page",
    "_format",
    "_pretty",
];

/// Search features of R4 that this server does not implement.
const NOT_IMPLEMENTED: [&str; 5] = ["_contained", "_containedType", "_list", "_filter", "_type"];

/// A problem with one parameter: an error, or (lenient mode) a reason to ignore it.
enum Problem {
    Error(Issue),
    /// Unknown (`strict_code` Invalid) or unsupported (NotSupported) parameter.
    Skip {
        issue: Issue,
        strict_code: IssueType,
    },
}

fn invalid(name: &str, diagnostics: String) -> Problem {
    Problem::Error(Issue::error(IssueType::Invalid, diagnostics).at(name))
}

/// Parses the decoded `pairs` of a search on `resource_type`.
pub fn parse(
    resource_type: &str,
    pairs: &[(String, String)],
    options: &QueryOptions,
) -> Result<SearchRequest, Vec<Issue>> {
    if !schema::is_resource_type(resource_type) {
        return Err(vec![Issue::error(
            IssueType::NotSupported,
            format!("'{}' is not an R4 resource type", quote(resource_type)),
        )]);
    }
    if pairs.len() > options.max_params {
        return Err(vec![Issue::error(
            IssueType::Processing,
            format!(
                "{} search parameters given; at most {} are accepted in one search",
                pairs.len(),
                options.max_params
            ),
        )]);
    }
    let mut p = QueryParser {
        resource_type,
        options,
        request: SearchRequest {
            resource_type: resource_type.to_string(),
            filters: Vec::new(),
            count: options.default_count,
            sort: Vec::new(),
            include: Vec::new(),
            revinclude: Vec::new(),
            summary: None,
            elements: Vec::new(),
            total: None,
            page: None,
            pretty: None,
            ignored: Vec::new(),
        },
        errors: Vec::new(),
        seen: HashSet::new(),
    };
    for (name, value) in pairs {
        if let Err(problem) = p.pair(name, value) {
            p.report(problem);
        }
    }
    let includes = p.request.include.len() + p.request.revinclude.len();
    if includes > options.max_includes {
        p.errors.push(
            Issue::error(
                IssueType::Processing,
                format!(
                    "{includes} _include and _revinclude values given; at most {} are accepted",
                    options.max_includes
                ),
            )
            .at("_include"),
        );
    }
    if p.errors.is_empty() {
        Ok(p.request)
    } else {
        Err(p.errors)
    }
}

struct QueryParser<'o> {
    resource_type: &'o str,
    options: &'o QueryOptions,
    request: SearchRequest,
    errors: Vec<Issue>,
    seen: HashSet<&'static str>,
}

impl QueryParser<'_> {
    fn report(&mut self, problem: Problem) {
        match problem {
            Problem::Error(issue) => self.errors.push(issue),
            Problem::Skip { issue, strict_code } if self.options.strict => {
                self.errors.push(Issue {
                    code: strict_code,
                    ..issue
                });
            }
            Problem::Skip { issue, .. } => self.request.ignored.push(Issue {
                severity: IssueSeverity::Warning,
                code: IssueType::NotSupported,
                diagnostics: format!("{} The parameter was ignored.", issue.diagnostics),
                ..issue
            }),
        }
    }

    fn warn(&mut self, name: &str, diagnostics: String) {
        self.request.ignored.push(Issue {
            severity: IssueSeverity::Warning,
            code: IssueType::Invalid,
            diagnostics,
            expression: Some(name.to_string()),
        });
    }

    fn pair(&mut self, name: &str, value: &str) -> Result<(), Problem> {
        if name.is_empty() {
            // No expression: there is no name to point at.
            return Err(Problem::Error(Issue::error(
                IssueType::Invalid,
                format!("a value '{}' without a parameter name", quote(value)),
            )));
        }
        if value.is_empty() {
            self.warn(
                name,
                format!(
                    "parameter '{}' has an empty value and was ignored",
                    quote(name)
                ),
            );
            return Ok(());
        }
        let (head, modifier) = match name.split_once(':') {
            Some((h, m)) => (h, Some(m)),
            None => (name, None),
        };
        if let Some(&single) = SINGLE.iter().find(|s| **s == head)
            && !self.seen.insert(single)
        {
            return Err(invalid(
                name,
                format!("{head} is given more than once; give it once"),
            ));
        }
        match head {
            "_include" | "_revinclude" => {
                let iterate = match modifier {
                    None => false,
                    Some("iterate") => true,
                    Some(m) => {
                        return Err(invalid(
                            name,
                            format!(
                                "unknown modifier ':{}' on {head}: only ':iterate' is allowed",
                                quote(m)
                            ),
                        ));
                    }
                };
                return self.include(name, value, head == "_revinclude", iterate);
            }
            _ if SINGLE.contains(&head) => {
                if let Some(m) = modifier {
                    return Err(invalid(
                        name,
                        format!("{head} takes no modifier (':{}' given)", quote(m)),
                    ));
                }
                return self.result_param(head, value);
            }
            _ if NOT_IMPLEMENTED.contains(&head) => {
                return Err(Problem::Skip {
                    issue: Issue::error(
                        IssueType::NotSupported,
                        format!("{head} is not supported by this server."),
                    )
                    .at(name),
                    strict_code: IssueType::NotSupported,
                });
            }
            _ => {}
        }
        let filter = self.filter(name, value)?;
        self.request.filters.push(filter);
        Ok(())
    }

    fn result_param(&mut self, name: &str, value: &str) -> Result<(), Problem> {
        let r = &mut self.request;
        match name {
            "_count" => {
                let n = (value.len() <= 9 && value.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| value.parse::<usize>().ok())
                    .flatten();
                match n {
                    Some(n) if n <= self.options.max_count => r.count = n,
                    Some(_) => {
                        return Err(invalid(
                            name,
                            format!(
                                "_count={} is more than the {} this server returns in one page",
                                quote(value),
                                self.options.max_count
                            ),
                        ));
                    }
                    None => {
                        return Err(invalid(
                            name,
                            format!(
                                "_count='{}': expected a whole number, 0 or more",
                                quote(value)
                            ),
                        ));
                    }
                }
            }
            "_summary" => {
                r.summary = Some(match value {
                    "true" => Summary::True,
                    "false" => Summary::False,
                    "count" => Summary::Count,
                    "data" => Summary::Data,
                    "text" => Summary::Text,
                    _ => {
                        return Err(invalid(
                            name,
                            format!(
                                "_summary='{}': expected true, false, count, data or text",
                                quote(value)
                            ),
                        ));
                    }
                });
            }
            "_total" => {
                r.total = Some(match value {
                    "none" => Total::None,
                    "estimate" => Total::Estimate,
                    "accurate" => Total::Accurate,
                    _ => {
                        return Err(invalid(
                            name,
                            format!(
                                "_total='{}': expected none, estimate or accurate",
                                quote(value)
                            ),
                        ));
                    }
                });
            }
            "_pretty" => {
                r.pretty = Some(match value {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(invalid(
                            name,
                            format!("_pretty='{}': expected true or false", quote(value)),
                        ));
                    }
                });
            }
            "_page" => r.page = Some(value.to_string()),
            "_format" => {
                let mime = value.split(';').next().unwrap_or_default().trim();
                // A raw `+` in a query string decodes to a space: accept `fhir json` too.
                let json = [
                    "json",
                    "application/json",
                    "application/fhir+json",
                    "application/fhir json",
                    "application/json+fhir",
                    "application/json fhir",
                ];
                if !json.contains(&mime) {
                    return Err(Problem::Error(
                        Issue::error(
                            IssueType::NotSupported,
                            format!(
                                "_format='{}': this server speaks JSON only (json or application/fhir+json)",
                                quote(value)
                            ),
                        )
                        .at(name),
                    ));
                }
            }
            "_sort" => self.sort(value)?,
            "_elements" => self.elements(value)?,
            _ => {}
        }
        Ok(())
    }

    fn sort(&mut self, value: &str) -> Result<(), Problem> {
        let items: Vec<&str> = value.split(',').collect();
        if items.len() > self.options.max_values {
            return Err(too_many_values(
                "_sort",
                items.len(),
                self.options.max_values,
            ));
        }
        let mut errors = Vec::new();
        for item in items {
            let (code, descending) = match item.strip_prefix('-') {
                Some(code) => (code, true),
                None => (item, false),
            };
            let param = match search_param(self.resource_type, code) {
                Some(p) if p.supported => p,
                Some(p) => {
                    errors.push(format!(
                        "'{}' cannot be sorted on: {}",
                        quote(code),
                        p.unsupported_reason().unwrap_or("not supported")
                    ));
                    continue;
                }
                None => {
                    errors.push(format!(
                        "'{}' is not a search parameter of {}",
                        quote(code),
                        self.resource_type
                    ));
                    continue;
                }
            };
            if matches!(param.kind, ParamType::Composite | ParamType::Special) {
                errors.push(format!(
                    "cannot sort on the {} parameter '{code}'",
                    param.kind.as_code()
                ));
                continue;
            }
            self.request.sort.push(SortKey { param, descending });
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(invalid(
                "_sort",
                format!(
                    "_sort='{}': {}; expected comma-separated parameter codes, each optionally preceded by '-' for descending order",
                    quote(value),
                    errors.join("; ")
                ),
            ))
        }
    }

    fn elements(&mut self, value: &str) -> Result<(), Problem> {
        let items: Vec<&str> = value.split(',').map(str::trim).collect();
        if items.len() > self.options.max_values {
            return Err(too_many_values(
                "_elements",
                items.len(),
                self.options.max_values,
            ));
        }
        for item in items {
            let known = !item.is_empty()
                && item.bytes().all(|b| b.is_ascii_alphanumeric())
                && (schema::element(&format!("{}.{item}", self.resource_type)).is_some()
                    || schema::element(&format!("{}.{item}[x]", self.resource_type)).is_some());
            if known {
                self.request.elements.push(item.to_string());
                continue;
            }
            let diagnostics = format!(
                "_elements: '{}' is not an element of {}",
                quote(item),
                self.resource_type
            );
            if self.options.strict {
                return Err(invalid("_elements", diagnostics));
            }
            self.warn("_elements", format!("{diagnostics}; it was ignored"));
        }
        Ok(())
    }

    fn include(
        &mut self,
        name: &str,
        value: &str,
        reverse: bool,
        iterate: bool,
    ) -> Result<(), Problem> {
        let expected = "expected SourceType:parameter or SourceType:parameter:TargetType";
        let parts: Vec<&str> = value.split(':').collect();
        if parts.contains(&"*") {
            return Err(Problem::Error(
                Issue::error(
                    IssueType::NotSupported,
                    format!(
                        "{name}='{}': wildcard includes are not supported",
                        quote(value)
                    ),
                )
                .at(name),
            ));
        }
        let (source, code, target) = match parts[..] {
            [s, c] => (s, c, None),
            [s, c, t] => (s, c, Some(t)),
            _ => {
                return Err(invalid(
                    name,
                    format!("{name}='{}': {expected}", quote(value)),
                ));
            }
        };
        if !schema::is_resource_type(source) {
            return Err(invalid(
                name,
                format!(
                    "{name}='{}': '{}' is not a resource type",
                    quote(value),
                    quote(source)
                ),
            ));
        }
        if !reverse && !iterate && source != self.resource_type {
            return Err(invalid(
                name,
                format!(
                    "_include='{}': the source type must be the searched type {} (use _include:iterate for included resources)",
                    quote(value),
                    self.resource_type
                ),
            ));
        }
        let param = match search_param(source, code) {
            Some(p) if p.kind == ParamType::Reference && p.supported => p,
            Some(_) => {
                return Err(invalid(
                    name,
                    format!(
                        "{name}='{}': {source}.{code} is not a reference parameter",
                        quote(value)
                    ),
                ));
            }
            None => {
                return Err(invalid(
                    name,
                    format!(
                        "{name}='{}': '{}' is not a search parameter of {source}",
                        quote(value),
                        quote(code)
                    ),
                ));
            }
        };
        if let Some(t) = target
            && !param.targets_type(t)
        {
            return Err(invalid(
                name,
                format!(
                    "{name}='{}': {source}.{code} cannot point at '{}' (it points at {})",
                    quote(value),
                    quote(t),
                    param.targets.join(", ")
                ),
            ));
        }
        if reverse && !iterate && !param.targets_type(self.resource_type) {
            return Err(invalid(
                name,
                format!(
                    "_revinclude='{}': {source}.{code} never points at {}",
                    quote(value),
                    self.resource_type
                ),
            ));
        }
        let include = Include {
            source_type: source.to_string(),
            param,
            target_type: target.map(str::to_string),
            iterate,
        };
        if reverse {
            self.request.revinclude.push(include);
        } else {
            self.request.include.push(include);
        }
        Ok(())
    }

    fn filter(&self, name: &str, value: &str) -> Result<Filter, Problem> {
        let mut path = Vec::new();
        let (param, modifier) = self.name(name, self.resource_type, name, &mut path)?;
        let modifier = match modifier {
            None => None,
            Some(m) => Some(self.modifier(name, param, m)?),
        };
        if let Some(Modifier::Missing(_)) = modifier {
            let missing = match value {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(invalid(
                        name,
                        format!("{name}='{}': :missing takes true or false", quote(value)),
                    ));
                }
            };
            return Ok(Filter {
                path,
                param,
                modifier: Some(Modifier::Missing(missing)),
                values: Vec::new(),
            });
        }
        let raw_values = split_unescaped(value, b',');
        if raw_values.len() > self.options.max_values {
            return Err(too_many_values(
                name,
                raw_values.len(),
                self.options.max_values,
            ));
        }
        let mut values = Vec::with_capacity(raw_values.len());
        let mut errors = Vec::new();
        for raw in raw_values {
            if raw.is_empty() {
                errors.push(format!(
                    "'{}' has an empty value between commas",
                    quote(value)
                ));
                continue;
            }
            match parse_value(param, param.kind, modifier.as_ref(), raw) {
                Ok(v) => values.push(v),
                Err(e) => errors.push(format!("'{}': {e}", quote(raw))),
            }
        }
        if !errors.is_empty() {
            return Err(invalid(
                name,
                format!(
                    "invalid value for the {} parameter {name}: {}",
                    param.kind.as_code(),
                    errors.join("; ")
                ),
            ));
        }
        Ok(Filter {
            path,
            param,
            modifier,
            values,
        })
    }

    /// Resolves a parameter name (with chains and `_has`) on `current`; returns the final
    /// parameter and its modifier text.
    fn name<'n>(
        &self,
        full: &str,
        current: &str,
        name: &'n str,
        path: &mut Vec<Hop>,
    ) -> Result<(&'static SearchParam, Option<&'n str>), Problem> {
        let depth_error = || {
            Problem::Error(
                Issue::error(
                    IssueType::Processing,
                    format!(
                        "'{}' chains more than {} hops (chained and _has parameters); this server allows {}",
                        quote(full),
                        self.options.max_chain_depth,
                        self.options.max_chain_depth
                    ),
                )
                .at(full),
            )
        };
        if let Some(rest) = name.strip_prefix("_has:") {
            let mut parts = rest.splitn(3, ':');
            let (Some(source), Some(code), Some(tail)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(invalid(
                    full,
                    format!(
                        "'{}': expected _has:SourceType:referenceParameter:parameter",
                        quote(full)
                    ),
                ));
            };
            if path.len() >= self.options.max_chain_depth {
                return Err(depth_error());
            }
            if !schema::is_resource_type(source) {
                return Err(invalid(
                    full,
                    format!(
                        "'{}': '{}' is not a resource type",
                        quote(full),
                        quote(source)
                    ),
                ));
            }
            let reference = self.reference_param(full, source, code)?;
            if !reference.targets_type(current) {
                return Err(invalid(
                    full,
                    format!(
                        "'{}': {source}.{code} never points at {current} (it points at {})",
                        quote(full),
                        reference.targets.join(", ")
                    ),
                ));
            }
            path.push(Hop::Has {
                source_type: source.to_string(),
                reference,
            });
            return self.name(full, source, tail, path);
        }
        if let Some((head, tail)) = name.split_once('.') {
            if path.len() >= self.options.max_chain_depth {
                return Err(depth_error());
            }
            let (code, explicit) = match head.split_once(':') {
                Some((c, t)) => (c, Some(t)),
                None => (head, None),
            };
            let reference = self.reference_param(full, current, code)?;
            let target = match explicit {
                Some(t) if reference.targets_type(t) => t.to_string(),
                Some(t) => {
                    return Err(invalid(
                        full,
                        format!(
                            "'{}': {current}.{code} cannot point at '{}'; it points at {}",
                            quote(full),
                            quote(t),
                            reference.targets.join(", ")
                        ),
                    ));
                }
                None => match reference.targets.as_slice() {
                    [only] => only.clone(),
                    [] => {
                        return Err(invalid(
                            full,
                            format!(
                                "'{}': {current}.{code} cannot be chained: R4 declares no target type for it",
                                quote(full)
                            ),
                        ));
                    }
                    targets => {
                        return Err(invalid(
                            full,
                            format!(
                                "'{}': {current}.{code} may point at {} types ({}); name one, e.g. {code}:{}.{}",
                                quote(full),
                                targets.len(),
                                quote(&targets.join(", ")),
                                targets
                                    .iter()
                                    .find(|t| *t == "Patient")
                                    .or(targets.first())
                                    .map_or("Patient", String::as_str),
                                quote(tail)
                            ),
                        ));
                    }
                },
            };
            path.push(Hop::Chain {
                reference,
                target_type: target.clone(),
            });
            let (param, modifier) = self.name(full, &target, tail, path)?;
            return Ok((param, modifier));
        }
        let (code, modifier) = match name.split_once(':') {
            Some((c, m)) => (c, Some(m)),
            None => (name, None),
        };
        Ok((self.param(full, current, code)?, modifier))
    }

    /// A supported parameter `code` of `resource_type`, or the problem to report.
    fn param(
        &self,
        full: &str,
        resource_type: &str,
        code: &str,
    ) -> Result<&'static SearchParam, Problem> {
        match search_param(resource_type, code) {
            Some(p) if p.supported => Ok(p),
            Some(p) => Err(Problem::Skip {
                issue: Issue::error(
                    IssueType::NotSupported,
                    format!(
                        "The search parameter '{code}' of {resource_type} is not supported by this server ({}).",
                        p.unsupported_reason().unwrap_or("not implemented")
                    ),
                )
                .at(full),
                strict_code: IssueType::NotSupported,
            }),
            None => Err(Problem::Skip {
                issue: Issue::error(
                    IssueType::Invalid,
                    format!(
                        "'{}' is not a search parameter of {resource_type}.",
                        quote(code)
                    ),
                )
                .at(full),
                strict_code: IssueType::Invalid,
            }),
        }
    }

    fn reference_param(
        &self,
        full: &str,
        resource_type: &str,
        code: &str,
    ) -> Result<&'static SearchParam, Problem> {
        let p = self.param(full, resource_type, code)?;
        if p.kind != ParamType::Reference {
            return Err(invalid(
                full,
                format!(
                    "'{}': {resource_type}.{code} is a {} parameter; only reference parameters can be chained",
                    quote(full),
                    p.kind.as_code()
                ),
            ));
        }
        Ok(p)
    }

    fn modifier(&self, name: &str, param: &SearchParam, m: &str) -> Result<Modifier, Problem> {
        use ParamType as P;
        let modifier = match m {
            "missing" => return Ok(Modifier::Missing(true)),
            "exact" => Modifier::Exact,
            "contains" => Modifier::Contains,
            "text" => Modifier::Text,
            "not" => Modifier::Not,
            "of-type" => Modifier::OfType,
            "above" => Modifier::Above,
            "below" => Modifier::Below,
            "identifier" => Modifier::Identifier,
            "in" | "not-in" => {
                return Err(Problem::Error(
                    Issue::error(
                        IssueType::NotSupported,
                        format!(":{m} needs value set expansion, which this server does not do"),
                    )
                    .at(name),
                ));
            }
            t if schema::is_resource_type(t) => Modifier::Type(t.to_string()),
            _ => {
                return Err(invalid(
                    name,
                    format!(
                        "unknown modifier ':{}' on {name}; {}",
                        quote(m),
                        allowed_modifiers(param.kind)
                    ),
                ));
            }
        };
        let ok = match (&modifier, param.kind) {
            (Modifier::Exact | Modifier::Contains, P::String) => true,
            (Modifier::Text | Modifier::Not, P::Token) => true,
            (Modifier::OfType, P::Token) => param
                .plan
                .as_ref()
                .is_some_and(|p| p.result_types().any(|t| t == "Identifier")),
            (Modifier::Above | Modifier::Below, P::Token | P::Uri) => true,
            (Modifier::Identifier, P::Reference) => true,
            (Modifier::Type(t), P::Reference) => {
                if !param.targets_type(t) {
                    return Err(invalid(
                        name,
                        format!(
                            "{name}: {}.{} cannot point at {t}; it points at {}",
                            param.base,
                            param.code,
                            param.targets.join(", ")
                        ),
                    ));
                }
                true
            }
            _ => false,
        };
        if ok {
            Ok(modifier)
        } else {
            Err(invalid(
                name,
                format!(
                    "modifier ':{m}' cannot be used on the {} parameter {}; {}",
                    param.kind.as_code(),
                    param.code,
                    allowed_modifiers(param.kind)
                ),
            ))
        }
    }
}

fn allowed_modifiers(kind: ParamType) -> &'static str {
    match kind {
        ParamType::String => "allowed: :exact, :contains, :missing",
        ParamType::Token => {
            "allowed: :text, :not, :above, :below, :of-type (identifiers), :missing"
        }
        ParamType::Uri => "allowed: :above, :below, :missing",
        ParamType::Reference => "allowed: :[ResourceType], :identifier, :missing",
        _ => "allowed: :missing",
    }
}

fn too_many_values(name: &str, n: usize, max: usize) -> Problem {
    Problem::Error(
        Issue::error(
            IssueType::Processing,
            format!("{name} has {n} values; at most {max} are accepted"),
        )
        .at(name),
    )
}

/// Splits on `sep` where it is not escaped by a backslash; the parts keep their escapes.
fn split_unescaped(s: &str, sep: u8) -> Vec<&str> {
    let b = s.as_bytes();
    let mut parts = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == sep {
            // `sep` is ASCII, so `i` is a char boundary.
            parts.push(&s[start..i]);
            start = i + 1;
        }
        i += 1;
    }
    parts.push(&s[start.min(s.len())..]);
    parts
}

/// Removes the search escapes `\,` `\$` `\|` `\\`.
fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(e @ (',' | '$' | '|' | '\\')) => out.push(e),
            Some(e) => {
                return Err(format!(
                    "'\\{e}' is not an escape (only \\, \\$ \\| and \\\\ are; write \\\\ for a backslash)"
                ));
            }
            None => return Err("a value cannot end with a lone backslash (write \\\\)".into()),
        }
    }
    Ok(out)
}

/// The prefix of a date, number or quantity value, and the rest.
fn prefix(s: &str) -> Result<(Prefix, &str), String> {
    let b = s.as_bytes();
    if b.len() >= 2 && b[0].is_ascii_lowercase() && b[1].is_ascii_lowercase() {
        let (p, rest) = s.split_at(2);
        return match Prefix::ALL.iter().find(|x| x.as_code() == p) {
            Some(&x) => Ok((x, rest)),
            None => Err(format!(
                "unknown prefix '{p}' (expected eq, ne, gt, lt, ge, le, sa, eb or ap)"
            )),
        };
    }
    Ok((Prefix::Eq, s))
}

const DATE_EXPECTED: &str = "expected [prefix]YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss[.fff](Z|±hh:mm), prefix one of eq ne gt lt ge le sa eb ap";

fn parse_value(
    param: &SearchParam,
    kind: ParamType,
    modifier: Option<&Modifier>,
    raw: &str,
) -> Result<Value, String> {
    match kind {
        ParamType::Token => match modifier {
            Some(Modifier::Text) => {
                let text = normalize(&unescape(raw)?);
                if text.is_empty() {
                    return Err("expected some text".into());
                }
                Ok(Value::Text(text))
            }
            Some(Modifier::OfType) => match split_unescaped(raw, b'|')[..] {
                [s, c, v] if !s.is_empty() && !c.is_empty() && !v.is_empty() => Ok(Value::OfType {
                    type_system: unescape(s)?,
                    type_code: unescape(c)?,
                    value: unescape(v)?,
                }),
                _ => Err("expected system|code|value for :of-type (the identifier type's system and code, then the identifier value)".into()),
            },
            _ => token(raw),
        },
        ParamType::String => {
            let s = unescape(raw)?;
            if modifier == Some(&Modifier::Exact) {
                return Ok(Value::String(s));
            }
            let n = normalize(&s);
            if n.is_empty() {
                return Err("expected some text, not only spaces".into());
            }
            Ok(Value::String(n))
        }
        ParamType::Date => {
            let (prefix, rest) = prefix(raw).map_err(|e| format!("{e}; {DATE_EXPECTED}"))?;
            let (low_us, high_us) = date::parse_range(rest, ZoneRule::Required)
                .map_err(|e| format!("{e}; {DATE_EXPECTED}"))?;
            Ok(Value::Date {
                prefix,
                low_us,
                high_us,
            })
        }
        ParamType::Number => {
            let (prefix, rest) = prefix(raw)?;
            let d = number::parse_decimal(rest)
                .map_err(|e| format!("{e}, optionally after a prefix (gt5.4)"))?;
            Ok(Value::Number {
                prefix,
                value: d.value,
                low: d.low,
                high: d.high,
            })
        }
        ParamType::Quantity => {
            let (prefix, rest) = prefix(raw)?;
            let parts = split_unescaped(rest, b'|');
            let (number, system, code) = match parts[..] {
                [n] => (n, None, None),
                [n, s, c] => {
                    let opt = |x: &str| -> Result<Option<String>, String> {
                        Ok(Some(unescape(x)?).filter(|x| !x.is_empty()))
                    };
                    (n, opt(s)?, opt(c)?)
                }
                _ => {
                    return Err(
                        "expected [prefix]number, or [prefix]number|system|code (e.g. 5.4|http://unitsofmeasure.org|mg or 5.4||mg)".into(),
                    );
                }
            };
            let d = number::parse_decimal(number)?;
            Ok(Value::Quantity {
                prefix,
                value: d.value,
                low: d.low,
                high: d.high,
                system,
                code,
            })
        }
        ParamType::Reference => {
            if modifier == Some(&Modifier::Identifier) {
                return match token(raw)? {
                    v @ Value::Token { code: Some(_), .. } => Ok(v),
                    _ => Err("expected system|value or value for :identifier".into()),
                };
            }
            let s = unescape(raw)?;
            let typed = match modifier {
                Some(Modifier::Type(t)) => Some(t.as_str()),
                _ => None,
            };
            reference(param, typed, s)
        }
        ParamType::Uri => Ok(Value::Uri(unescape(raw)?)),
        ParamType::Composite => {
            let parts = split_unescaped(raw, b'$');
            if parts.len() != param.components.len() {
                let codes: Vec<&str> = param.components.iter().map(|c| c.code.as_str()).collect();
                return Err(format!(
                    "expected {} parts separated by '$' ({})",
                    codes.len(),
                    codes.join("$")
                ));
            }
            let mut values = Vec::with_capacity(parts.len());
            for (part, component) in parts.into_iter().zip(&param.components) {
                if part.is_empty() {
                    return Err(format!("the {} part is empty", component.code));
                }
                // A reference component is checked against its own parameter's targets.
                let own = search_param(&param.base, &component.code).unwrap_or(param);
                let v = parse_value(own, component.kind, None, part)
                    .map_err(|e| format!("{} part '{}': {e}", component.code, quote(part)))?;
                values.push(v);
            }
            Ok(Value::Composite(values))
        }
        ParamType::Special => Err("special parameters are not supported".into()),
    }
}

fn token(raw: &str) -> Result<Value, String> {
    match split_unescaped(raw, b'|')[..] {
        [code] => Ok(Value::Token {
            system: TokenSystem::Any,
            code: Some(unescape(code)?),
        }),
        ["", ""] => Err("expected code, |code, system|code or system|".into()),
        ["", code] => Ok(Value::Token {
            system: TokenSystem::NoSystem,
            code: Some(unescape(code)?),
        }),
        [system, ""] => Ok(Value::Token {
            system: TokenSystem::Is(unescape(system)?),
            code: None,
        }),
        [system, code] => Ok(Value::Token {
            system: TokenSystem::Is(unescape(system)?),
            code: Some(unescape(code)?),
        }),
        _ => Err("more than one '|': expected code, |code, system|code or system| (escape a literal | as \\|)".into()),
    }
}

fn has_scheme(s: &str) -> bool {
    s.contains("://") || s.starts_with("urn:")
}

fn reference(param: &SearchParam, typed: Option<&str>, s: String) -> Result<Value, String> {
    if has_scheme(&s) {
        return Ok(Value::ReferenceUrl(s));
    }
    let (resource_type, id) = match s.split_once('/') {
        None => (typed.map(str::to_string), s),
        Some((t, rest)) => {
            if rest.contains('/') {
                return Err(
                    "expected Type/id or id (version-specific and other paths are not supported)"
                        .into(),
                );
            }
            if !schema::is_resource_type(t) {
                return Err(format!(
                    "'{}' is not a resource type; expected Type/id or id",
                    quote(t)
                ));
            }
            if !param.targets_type(t) {
                return Err(format!(
                    "{}.{} cannot point at {t}; it points at {}",
                    param.base,
                    param.code,
                    param.targets.join(", ")
                ));
            }
            if let Some(m) = typed
                && m != t
            {
                return Err(format!("the value names {t} but the modifier :{m}"));
            }
            (Some(t.to_string()), rest.to_string())
        }
    };
    if !Primitive::Id.is_valid_format(&id) {
        return Err(format!(
            "'{}' is not a valid resource id (1 to 64 of A-Z a-z 0-9 - .)",
            quote(&id)
        ));
    }
    Ok(Value::Reference { resource_type, id })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &str) -> Vec<(String, String)> {
        parse_query_string(q).unwrap()
    }

    fn ok(rt: &str, q: &str) -> SearchRequest {
        parse(rt, &pairs(q), &QueryOptions::default()).unwrap_or_else(|e| panic!("{q}: {e:#?}"))
    }

    fn strict() -> QueryOptions {
        QueryOptions {
            strict: true,
            ..QueryOptions::default()
        }
    }

    fn err(rt: &str, q: &str, options: &QueryOptions) -> Vec<Issue> {
        match parse(rt, &pairs(q), options) {
            Ok(r) => panic!("{q}: accepted as {r:#?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn query_strings() {
        assert_eq!(
            pairs("?a=1&b=x+y%2Cz&&c&d=%C3%A9"),
            [
                ("a".to_string(), "1".to_string()),
                ("b".into(), "x y,z".into()),
                ("c".into(), "".into()),
                ("d".into(), "é".into())
            ]
        );
        assert!(parse_query_string("a=%zz").is_err());
        assert!(parse_query_string("a=%4").is_err());
        let e = parse_query_string("name=%FF").unwrap_err();
        assert_eq!(e.expression.as_deref(), Some("name"));
        assert!(e.diagnostics.contains("UTF-8"));
    }

    #[test]
    fn tokens_and_escapes() {
        let r = ok(
            "Observation",
            "code=http://loinc.org|1234,|x,sys|,plain&code=a\\,b\\|c",
        );
        assert_eq!(r.filters.len(), 2);
        assert_eq!(
            r.filters[0].values,
            [
                Value::Token {
                    system: TokenSystem::Is("http://loinc.org".into()),
                    code: Some("1234".into())
                },
                Value::Token {
                    system: TokenSystem::NoSystem,
                    code: Some("x".into())
                },
                Value::Token {
                    system: TokenSystem::Is("sys".into()),
                    code: None
                },
                Value::Token {
                    system: TokenSystem::Any,
                    code: Some("plain".into())
                },
            ]
        );
        assert_eq!(
            r.filters[1].values,
            [Value::Token {
                system: TokenSystem::Any,
                code: Some("a,b|c".into())
            }]
        );
        let e = err("Observation", "code=a|b|c", &QueryOptions::default());
        assert!(e[0].diagnostics.contains("'a|b|c'"), "{e:?}");
        assert_eq!(e[0].expression.as_deref(), Some("code"));
        assert!(
            err("Observation", "code=a\\x", &QueryOptions::default())[0]
                .diagnostics
                .contains("escape")
        );
        assert!(
            err("Observation", "code=a,,b", &QueryOptions::default())[0]
                .diagnostics
                .contains("empty")
        );
        let r = ok(
            "Patient",
            "identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|123&identifier:text=Medical+Record",
        );
        assert_eq!(r.filters[0].modifier, Some(Modifier::OfType));
        assert_eq!(r.filters[1].values, [Value::Text("medical record".into())]);
        assert!(
            err("Patient", "gender:of-type=a|b|c", &QueryOptions::default())[0]
                .diagnostics
                .contains("of-type")
        );
        assert!(
            err("Patient", "gender:in=http://x", &QueryOptions::default())[0].code
                == IssueType::NotSupported
        );
    }

    #[test]
    fn strings_dates_numbers_quantities() {
        let r = ok(
            "Patient",
            "family=M%C3%BCller&given:exact=Jos%C3%A9&name:contains=ann",
        );
        assert_eq!(r.filters[0].values, [Value::String("muller".into())]);
        assert_eq!(r.filters[1].values, [Value::String("José".into())]);
        assert_eq!(r.filters[2].modifier, Some(Modifier::Contains));
        let r = ok(
            "Patient",
            "birthdate=ge1970-01&birthdate=lt2000-01-01T00:00:00%2B01:00",
        );
        let (low, high) = date::parse_range("1970-01", ZoneRule::Required).unwrap();
        assert_eq!(
            r.filters[0].values,
            [Value::Date {
                prefix: Prefix::Ge,
                low_us: low,
                high_us: high
            }]
        );
        assert!(matches!(
            r.filters[1].values[0],
            Value::Date {
                prefix: Prefix::Lt,
                ..
            }
        ));
        let e = err(
            "Patient",
            "birthdate=2000-01-01T10:00:00",
            &QueryOptions::default(),
        );
        assert!(e[0].diagnostics.contains("time zone"), "{e:?}");
        assert!(
            err("Patient", "birthdate=xx2000", &QueryOptions::default())[0]
                .diagnostics
                .contains("prefix")
        );
        let r = ok(
            "Observation",
            "value-quantity=gt5.4|http://unitsofmeasure.org|mg&value-quantity=5.4||mg&value-quantity=ap100",
        );
        let Value::Quantity {
            prefix,
            value,
            low,
            high,
            system,
            code,
        } = &r.filters[0].values[0]
        else {
            panic!("{r:?}")
        };
        assert_eq!((*prefix, *value), (Prefix::Gt, 5.4));
        assert!((low - 5.35).abs() < 1e-12 && (high - 5.45).abs() < 1e-12);
        assert_eq!(
            (system.as_deref(), code.as_deref()),
            (Some("http://unitsofmeasure.org"), Some("mg"))
        );
        assert!(
            matches!(&r.filters[1].values[0], Value::Quantity { system: None, code: Some(c), .. } if c == "mg")
        );
        assert!(
            err(
                "Observation",
                "value-quantity=5|mg",
                &QueryOptions::default()
            )[0]
            .diagnostics
            .contains("number|system|code")
        );
        let r = ok("RiskAssessment", "probability=le0.5");
        assert!(
            matches!(r.filters[0].values[0], Value::Number { prefix: Prefix::Le, value, .. } if value == 0.5)
        );
    }

    #[test]
    fn references_and_chains() {
        let r = ok(
            "Observation",
            "subject=Patient/1,2,http://x/fhir/Patient/3&subject:Patient=4&subject:identifier=urn:s|9",
        );
        assert_eq!(
            r.filters[0].values,
            [
                Value::Reference {
                    resource_type: Some("Patient".into()),
                    id: "1".into()
                },
                Value::Reference {
                    resource_type: None,
                    id: "2".into()
                },
                Value::ReferenceUrl("http://x/fhir/Patient/3".into()),
            ]
        );
        assert_eq!(
            r.filters[1].values,
            [Value::Reference {
                resource_type: Some("Patient".into()),
                id: "4".into()
            }]
        );
        assert_eq!(
            r.filters[1].modifier,
            Some(Modifier::Type("Patient".into()))
        );
        assert!(matches!(&r.filters[2].values[0], Value::Token { code: Some(c), .. } if c == "9"));
        assert!(
            err(
                "Observation",
                "subject=Medication/1",
                &QueryOptions::default()
            )[0]
            .diagnostics
            .contains("cannot point")
        );
        assert!(
            err(
                "Observation",
                "subject:Patient=Group/1",
                &QueryOptions::default()
            )[0]
            .diagnostics
            .contains("modifier")
        );
        assert!(
            err(
                "Observation",
                "subject=Patient/a b",
                &QueryOptions::default()
            )[0]
            .diagnostics
            .contains("valid resource id")
        );

        let r = ok(
            "Observation",
            "subject:Patient.name=x&patient.birthdate=1970&encounter.status=finished",
        );
        assert!(
            matches!(&r.filters[0].path[..], [Hop::Chain { target_type, .. }] if target_type == "Patient")
        );
        assert_eq!(r.filters[0].param.base, "Patient");
        assert_eq!(r.filters[1].param.code, "birthdate");
        assert_eq!(r.filters[2].param.base, "Encounter");
        let e = err("Observation", "subject.name=x", &QueryOptions::default());
        assert!(e[0].diagnostics.contains("subject:"), "{e:?}");
        let r = ok(
            "Observation",
            "patient.general-practitioner:Practitioner.name=x",
        );
        assert_eq!(r.filters[0].path.len(), 2);
        let e = err(
            "Observation",
            "patient.organization.partof.name=x",
            &QueryOptions::default(),
        );
        assert_eq!(e[0].code, IssueType::Processing);

        let r = ok("Patient", "_has:Observation:patient:code=1234");
        assert!(
            matches!(&r.filters[0].path[..], [Hop::Has { source_type, reference }]
            if source_type == "Observation" && reference.code == "patient")
        );
        let r = ok(
            "Patient",
            "_has:Observation:patient:_has:Provenance:target:agent=Practitioner/1",
        );
        assert_eq!(r.filters[0].path.len(), 2);
        assert!(
            err(
                "Patient",
                "_has:Observation:code:code=1",
                &QueryOptions::default()
            )[0]
            .diagnostics
            .contains("reference")
        );
        assert!(
            err(
                "Patient",
                "_has:Observation:encounter:code=1",
                &QueryOptions::default()
            )[0]
            .diagnostics
            .contains("never points")
        );
        assert!(
            err("Patient", "_has:Observation=1", &QueryOptions::default())[0]
                .diagnostics
                .contains("_has:SourceType")
        );
    }

    #[test]
    fn composites_and_missing() {
        let r = ok(
            "Observation",
            "code-value-quantity=http://loinc.org|8480-6$gt140|http://unitsofmeasure.org|mm[Hg]",
        );
        let Value::Composite(parts) = &r.filters[0].values[0] else {
            panic!()
        };
        assert!(matches!(parts[0], Value::Token { .. }));
        assert!(matches!(
            parts[1],
            Value::Quantity {
                prefix: Prefix::Gt,
                ..
            }
        ));
        assert!(
            err(
                "Observation",
                "code-value-quantity=1",
                &QueryOptions::default()
            )[0]
            .diagnostics
            .contains("code$value-quantity")
        );
        let r = ok(
            "Patient",
            "birthdate:missing=true&subject:missing=false&organization:missing=false",
        );
        assert_eq!(r.filters.len(), 2);
        assert_eq!(r.filters[0].modifier, Some(Modifier::Missing(true)));
        assert!(r.filters[0].values.is_empty());
        assert_eq!(r.ignored.len(), 1); // subject is not a Patient parameter
        assert!(
            err("Patient", "birthdate:missing=yes", &QueryOptions::default())[0]
                .diagnostics
                .contains("true or false")
        );
    }

    #[test]
    fn modifiers_per_type() {
        for q in [
            "birthdate:exact=1970",
            "family:text=x",
            "gender:exact=x",
            "gender:contains=x",
            "organization:exact=x",
            "family:Patient=x",
            "family:nope=x",
            "birthdate:not=1970",
        ] {
            let e = err("Patient", q, &QueryOptions::default());
            assert_eq!(e[0].code, IssueType::Invalid, "{q}");
            assert!(
                e[0].diagnostics.contains("allowed") || e[0].diagnostics.contains("cannot"),
                "{q}: {e:?}"
            );
        }
        ok(
            "Patient",
            "gender:not=male&_profile:below=http://x&general-practitioner:Practitioner=1",
        );
        assert!(
            err(
                "Patient",
                "general-practitioner:Device=1",
                &QueryOptions::default()
            )[0]
            .diagnostics
            .contains("cannot point")
        );
    }

    #[test]
    fn unknown_and_unsupported() {
        let r = ok("Patient", "nope=1&deceased=true&_text=x&_filter=x&family=x");
        assert_eq!(r.filters.len(), 1);
        let ignored: Vec<&str> = r
            .ignored
            .iter()
            .map(|i| i.expression.as_deref().unwrap())
            .collect();
        assert_eq!(ignored, ["nope", "deceased", "_text", "_filter"]);
        assert!(
            r.ignored
                .iter()
                .all(|i| i.severity == IssueSeverity::Warning)
        );
        let e = err("Patient", "nope=1&deceased=true&family=x", &strict());
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].code, e[1].code),
            (IssueType::Invalid, IssueType::NotSupported)
        );
        assert!(e[1].diagnostics.contains("deceased"));
        let r = ok("Patient", "family=");
        assert_eq!((r.filters.len(), r.ignored.len()), (0, 1));
    }

    #[test]
    fn result_parameters() {
        let r = ok(
            "Observation",
            "_count=0&_sort=-date,_id,code&_include=Observation:subject:Patient&_include:iterate=Patient:general-practitioner&_revinclude=Provenance:target&_summary=count&_elements=status,code,value&_total=accurate&_page=abc%3D%3D&_format=application/fhir%2Bjson&_pretty=true",
        );
        assert_eq!(r.count, 0);
        assert_eq!(
            r.sort
                .iter()
                .map(|s| (s.param.code.as_str(), s.descending))
                .collect::<Vec<_>>(),
            [("date", true), ("_id", false), ("code", false)]
        );
        assert_eq!(r.include.len(), 2);
        assert!(r.include[1].iterate);
        assert_eq!(r.revinclude[0].source_type, "Provenance");
        assert_eq!(r.summary, Some(Summary::Count));
        assert_eq!(r.elements, ["status", "code", "value"]);
        assert_eq!(r.total, Some(Total::Accurate));
        assert_eq!(r.page.as_deref(), Some("abc=="));
        assert_eq!(r.pretty, Some(true));
        assert_eq!(ok("Patient", "_format=json").count, 20);

        let d = QueryOptions::default();
        for (q, what) in [
            ("_count=1001", "more than"),
            ("_count=-1", "whole number"),
            ("_count=1&_count=2", "more than once"),
            ("_sort=nope", "not a search parameter"),
            ("_sort=code-value-quantity", "composite"),
            ("_include=Patient:general-practitioner", "source type"),
            ("_include=Observation:code", "not a reference"),
            ("_include=Observation:subject:Medication", "cannot point"),
            ("_include=*", "wildcard"),
            ("_include:recurse=Observation:subject", "iterate"),
            ("_revinclude=Observation:encounter", "never points"),
            ("_summary=yes", "count"),
            ("_total=all", "accurate"),
            ("_format=xml", "JSON"),
            ("_count:x=1", "modifier"),
        ] {
            let e = err("Observation", q, &d);
            assert!(e[0].diagnostics.contains(what), "{q}: {e:?}");
        }
        assert!(
            err("Observation", "_elements=nope", &strict())[0]
                .diagnostics
                .contains("nope")
        );
        assert_eq!(
            ok("Observation", "_elements=nope,status").elements,
            ["status"]
        );
    }

    #[test]
    fn limits() {
        let options = QueryOptions {
            max_params: 3,
            max_values: 2,
            max_includes: 1,
            ..QueryOptions::default()
        };
        let e = parse("Patient", &pairs("a=1&b=2&c=3&d=4"), &options).unwrap_err();
        assert_eq!(e[0].code, IssueType::Processing);
        let e = parse("Patient", &pairs("gender=a,b,c"), &options).unwrap_err();
        assert!(e[0].diagnostics.contains("3 values"));
        let e = parse(
            "Observation",
            &pairs("_include=Observation:subject&_include=Observation:encounter"),
            &options,
        )
        .unwrap_err();
        assert!(e[0].diagnostics.contains("at most 1"));
        assert!(parse("Nope", &[], &options).is_err());
    }

    #[test]
    fn helpers() {
        assert_eq!(split_unescaped("a\\,b,c", b','), ["a\\,b", "c"]);
        assert_eq!(split_unescaped("", b','), [""]);
        assert_eq!(split_unescaped("a\\", b','), ["a\\"]);
        assert_eq!(split_unescaped("é,ü", b','), ["é", "ü"]);
        assert_eq!(unescape("a\\$b\\\\").unwrap(), "a$b\\");
        assert!(unescape("a\\").is_err());
        assert_eq!(quote(&"x".repeat(500)).chars().count(), 101);
    }
}
