//! FHIR search: a parsed request (hygie-fhir) becomes a store query, runs inside the
//! pipeline, and comes back as a searchset Bundle with includes and signed paging links.
//!
//! What can leak through a search is bounded here: the page size (`_count`), the fan-out of
//! `_include`/`_revinclude`, and the paging links, which are signed: a client cannot edit
//! one to see what its original query could not (the cursor carries the whole query and
//! who asked it).

use std::sync::OnceLock;

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hygie_fhir::search::params::{ParamType, SearchParam};
use hygie_fhir::search::query::{
    self, Filter as QueryFilter, Hop, Include, Modifier, Prefix, QueryOptions, SearchRequest,
    Summary, TokenSystem, Total, Value,
};
use hygie_fhir::{Issue, IssueSeverity, IssueType};
use hygie_policy::{Action, Mask, Target};
use hygie_store::{
    Filter, IndexTable, PagePosition, RangeOp, SearchSpec, SortBy, SortValue, StoreExt, Test, Tx,
    VersionRecord,
};

use crate::history::{BundleOut, EntryOut, LinkOut, SearchOut, raw, raw_value};
use crate::interactions::mask_body;
use crate::pipeline::{Access, Audited, OpResult};
use crate::resource::check_resource_type;
use crate::shape::Shape;
use crate::{Caller, Hub, HubError};

/// Resources added by `_include`/`_revinclude` (all levels of `:iterate` together) at most.
pub const MAX_INCLUDED: usize = 1_000;
/// Levels of `_include:iterate` followed at most.
pub const MAX_INCLUDE_DEPTH: usize = 3;
const PAGING_KEY: &str = "search.paging_key";

/// A verified paging cursor.
#[derive(serde::Serialize, serde::Deserialize)]
struct Cursor {
    /// The query of the first page (without `_page`).
    q: Vec<(String, String)>,
    /// The resource type searched, and the compartment if any.
    t: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    c: Option<(String, String)>,
    /// Sort values of the position, `_id` last.
    v: Vec<CursorValue>,
    /// A previous page (rows before the position).
    b: bool,
    /// Who may follow it.
    s: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
enum CursorValue {
    I(i64),
    R(f64),
    T(String),
}

impl From<&SortValue> for CursorValue {
    fn from(value: &SortValue) -> CursorValue {
        match value {
            SortValue::Int(v) => CursorValue::I(*v),
            SortValue::Real(v) => CursorValue::R(*v),
            SortValue::Text(v) => CursorValue::T(v.clone()),
        }
    }
}

impl From<CursorValue> for SortValue {
    fn from(value: CursorValue) -> SortValue {
        match value {
            CursorValue::I(v) => SortValue::Int(v),
            CursorValue::R(v) => SortValue::Real(v),
            CursorValue::T(v) => SortValue::Text(v),
        }
    }
}

/// Where a search runs: a type, possibly within a compartment (`Patient/1/Observation`).
#[derive(Debug, Clone)]
pub struct SearchScope {
    pub resource_type: String,
    pub compartment: Option<(String, String)>,
}

struct Found {
    matches: Vec<VersionRecord>,
    included: Vec<VersionRecord>,
    total: Option<u64>,
    first: Option<Vec<SortValue>>,
    last: Option<Vec<SortValue>>,
    more_after: bool,
    more_before: bool,
    truncated_includes: bool,
}

impl Audited for Found {
    fn audit_entities(&self) -> Vec<String> {
        self.matches
            .iter()
            .chain(&self.included)
            .map(|r| format!("{}/{}/_history/{}", r.resource_type, r.id, r.version))
            .collect()
    }
}

impl Hub {
    /// `GET [base]/Type?…` (and `POST …/_search`, and compartment searches).
    pub async fn search(
        &self,
        caller: &Caller,
        scope: SearchScope,
        query_string: &str,
        strict: bool,
    ) -> Result<Vec<u8>, HubError> {
        check_resource_type(&scope.resource_type)?;
        if let Some((compartment_type, compartment_id)) = &scope.compartment {
            if compartment_type != "Patient" {
                return Err(HubError::new(
                    404,
                    IssueType::NotSupported,
                    format!("compartment {compartment_type} is not supported: only Patient"),
                ));
            }
            crate::resource::check_id(compartment_id)?;
        }
        let pairs = query::parse_query_string(query_string)
            .map_err(|issue| HubError::with_issues(400, vec![issue]))?;
        let pairs: Vec<(String, String)> = pairs
            .into_iter()
            .filter(|(name, _)| name != "_format" && name != "_pretty")
            .collect();
        let key = self.paging_key().await?;
        let (scope, pairs, position) = match pairs.iter().find(|(name, _)| name == "_page") {
            Some((_, token)) => {
                if pairs.len() > 1 {
                    return Err(HubError::bad_request(
                        "_page cannot be combined with other parameters: follow the link as given",
                    )
                    .located_in("_page"));
                }
                let cursor = open_cursor(&key, token, &caller.principal.subject)?;
                if cursor.t != scope.resource_type || cursor.c != scope.compartment {
                    return Err(invalid_cursor());
                }
                let position = PagePosition {
                    values: cursor.v.into_iter().map(SortValue::from).collect(),
                    backwards: cursor.b,
                };
                (scope, cursor.q, Some(position))
            }
            None => (scope, pairs, None),
        };
        let options = QueryOptions {
            strict,
            default_count: self.config().default_page_size,
            max_count: self.config().max_page_size,
            ..QueryOptions::default()
        };
        let request = query::parse(&scope.resource_type, &pairs, &options)
            .map_err(|issues| HubError::with_issues(400, issues))?;
        refuse_broken_chains(&request)?;
        self.authorize_reach(
            Access {
                caller,
                action: Action::Search,
                target: Target::resource_type(&scope.resource_type),
                query: None,
                patient_hint: None,
            },
            &reached_types(&request),
        )
        .await?;
        let plan = Plan::new(&request, &scope, &caller.base_url)?;
        let query_for_audit = encode_query(&pairs);
        let limit = request.count;
        let spec = SearchSpec {
            resource_type: scope.resource_type.clone(),
            filters: plan.filters.clone(),
            sort: plan.sort.clone(),
            position: position.clone(),
            limit: limit + 1,
        };
        let with_total = matches!(request.total, Some(Total::Accurate | Total::Estimate))
            || request.summary == Some(Summary::Count);
        let count_only = request.summary == Some(Summary::Count) || limit == 0;
        let includes = request.include.clone();
        let revincludes = request.revinclude.clone();
        let backwards = position.as_ref().is_some_and(|p| p.backwards);
        // A search that names its patients is refused (not answered empty) when one is out
        // of care: "no results" would read as "nothing there" to a clinician.
        let mut named = crate::break_glass::patients_named(&scope.resource_type, &pairs);
        named.extend(scope.compartment.as_ref().map(|(_, id)| id.clone()));
        let found = self
            .perform_read(
                Access {
                    caller,
                    action: Action::Search,
                    target: Target::resource_type(&scope.resource_type),
                    query: Some(query_for_audit),
                    patient_hint: scope.compartment.as_ref().map(|(_, id)| id.clone()),
                },
                move |tx, mask| {
                    if let Some(care) = &mask.care_of
                        && crate::care::limit_for(mask, &spec.resource_type).is_some()
                        && let Some(outside) = named.iter().find(|patient| {
                            !care.patients.as_ref().is_some_and(|p| p.contains(patient))
                        })
                    {
                        return Ok(Err(crate::care::no_relationship(&format!(
                            "Patient/{outside}"
                        ))));
                    }
                    // A search that names its patients is limited to them: the named ones
                    // in care (all of them, for a limited type, checked above) make a filter
                    // of a few ids instead of the caller's whole set.
                    let narrowed;
                    let mask = match &mask.care_of {
                        Some(care) if !named.is_empty() => {
                            let named: Vec<String> = named
                                .into_iter()
                                .filter(|patient| {
                                    care.patients.as_ref().is_some_and(|p| p.contains(patient))
                                })
                                .collect();
                            narrowed = Mask {
                                care_of: Some(hygie_policy::CareOf {
                                    subject: care.subject.clone(),
                                    window_days: care.window_days,
                                    open_types: care.open_types.clone(),
                                    patients: Some(named),
                                    checked: None,
                                }),
                                remove_elements: mask.remove_elements.clone(),
                                patient_compartment: mask.patient_compartment.clone(),
                                hidden_labels: mask.hidden_labels.clone(),
                                query_constraints: mask.query_constraints.clone(),
                            };
                            &narrowed
                        }
                        _ => mask,
                    };
                    run_search(
                        tx,
                        mask,
                        spec,
                        with_total,
                        count_only,
                        &includes,
                        &revincludes,
                        backwards,
                    )
                },
            )
            .await?;
        self.searchset(caller, &scope, &pairs, &request, &key, found, position)
    }

    #[allow(clippy::too_many_arguments)]
    fn searchset(
        &self,
        caller: &Caller,
        scope: &SearchScope,
        pairs: &[(String, String)],
        request: &SearchRequest,
        key: &hmac::Key,
        found: Found,
        position: Option<PagePosition>,
    ) -> Result<Vec<u8>, HubError> {
        let base = &caller.base_url;
        let path = match &scope.compartment {
            Some((ty, id)) => format!("{ty}/{id}/{}", scope.resource_type),
            None => scope.resource_type.clone(),
        };
        let link = |values: &[SortValue], backwards: bool| {
            let cursor = Cursor {
                q: pairs.to_vec(),
                t: scope.resource_type.clone(),
                c: scope.compartment.clone(),
                v: values.iter().map(CursorValue::from).collect(),
                b: backwards,
                s: caller.principal.subject.clone(),
            };
            format!(
                "{base}/{path}?_page={}",
                seal_cursor(key, &cursor).expect("a cursor serializes")
            )
        };
        let mut bundle = BundleOut::new("searchset");
        bundle.total = found.total;
        let self_url = match &position {
            Some(position) => link(&position.values, position.backwards),
            None => {
                let query = encode_query(pairs);
                if query.is_empty() {
                    format!("{base}/{path}")
                } else {
                    format!("{base}/{path}?{query}")
                }
            }
        };
        bundle.link.push(LinkOut {
            relation: "self",
            url: self_url,
        });
        if let Some(first) = &found.first
            && found.more_before
        {
            bundle.link.push(LinkOut {
                relation: "previous",
                url: link(first, true),
            });
        }
        if let Some(last) = &found.last
            && found.more_after
        {
            bundle.link.push(LinkOut {
                relation: "next",
                url: link(last, false),
            });
        }
        let shape = Shape::of(request);
        for record in found.matches {
            bundle.entry.push(entry(base, record, "match", &shape)?);
        }
        for record in found.included {
            bundle.entry.push(entry(base, record, "include", &shape)?);
        }
        let mut warnings: Vec<Issue> = request.ignored.clone();
        if found.truncated_includes {
            warnings.push(Issue {
                severity: IssueSeverity::Warning,
                code: IssueType::TooCostly,
                diagnostics: format!(
                    "_include/_revinclude stopped at {MAX_INCLUDED} resources; narrow the search"
                ),
                expression: None,
            });
        }
        if !warnings.is_empty() {
            let outcome = hygie_fhir::outcome::operation_outcome(&warnings);
            bundle.entry.push(EntryOut {
                resource: Some(raw_value(&outcome)),
                search: Some(SearchOut { mode: "outcome" }),
                ..EntryOut::default()
            });
        }
        Ok(bundle.to_vec())
    }

    /// The key that signs paging cursors: made once per database (so that every hub
    /// process of one PostgreSQL accepts the others' links), cached by this hub.
    async fn paging_key(&self) -> Result<hmac::Key, HubError> {
        if let Some(key) = self.inner.paging_key.get() {
            return Ok(key.clone());
        }
        let secret = self
            .inner
            .store
            .run(|tx| {
                tx.lock(PAGING_KEY)?;
                if let Some(existing) = tx.meta_get(PAGING_KEY)? {
                    return Ok(existing);
                }
                let mut bytes = [0u8; 32];
                aws_lc_rs::rand::fill(&mut bytes).map_err(|_| {
                    hygie_store::StoreError::Config(
                        "no system randomness for the paging key".into(),
                    )
                })?;
                let made = URL_SAFE_NO_PAD.encode(bytes);
                tx.meta_set(PAGING_KEY, &made)?;
                Ok(made)
            })
            .await
            .map_err(HubError::from_store)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(secret)
            .map_err(|_| HubError::new(500, IssueType::Exception, "corrupt paging key"))?;
        let key = hmac::Key::new(hmac::HMAC_SHA256, &bytes);
        let _ = self.inner.paging_key.set(key.clone());
        Ok(key)
    }
}

#[allow(clippy::too_many_arguments)]
fn run_search(
    tx: &mut dyn Tx,
    mask: &Mask,
    spec: SearchSpec,
    with_total: bool,
    count_only: bool,
    includes: &[Include],
    revincludes: &[Include],
    backwards: bool,
) -> OpResult<Found> {
    let mut spec = spec;
    if let Some(patient) = &mask.patient_compartment {
        // A patient/ scope: only that patient's compartment, for the matches, the total and
        // the paging alike; includes keep to it too (`visible_ids`).
        spec.filters
            .push(compartment_filter(&spec.resource_type, "Patient", patient));
    }
    // A query-constrained scope: only what its query matches, for matches, total and pages.
    match crate::care::constraint_filters(mask, &spec.resource_type) {
        Ok(filters) => spec.filters.extend(filters),
        Err(refusal) => return Ok(Err(refusal)),
    }
    // Searching by an element the caller may not see would tell its value.
    if let Err(refusal) = refuse_masked_params(mask, &spec.resource_type, &spec.filters, &spec.sort)
    {
        return Ok(Err(refusal));
    }
    // Need-to-know: the patients in care only, for the matches, the total, the paging, and
    // what `_has` and chains look at.
    crate::care::limit_filters(mask, &spec.resource_type, &mut spec.filters);
    let total = if with_total {
        Some(tx.count(&spec.resource_type, &spec.filters)?)
    } else {
        None
    };
    if count_only {
        return Ok(Ok(Found {
            matches: Vec::new(),
            included: Vec::new(),
            total,
            first: None,
            last: None,
            more_after: false,
            more_before: false,
            truncated_includes: false,
        }));
    }
    let page_size = spec.limit - 1;
    let mut hits = tx.search(&spec)?;
    let more = hits.len() > page_size;
    hits.truncate(page_size);
    if backwards {
        hits.reverse();
    }
    // Forwards: more rows after; a position means rows before. Backwards: the reverse.
    let (more_after, more_before) = if backwards {
        (true, more)
    } else {
        (more, spec.position.is_some())
    };
    let ids: Vec<String> = hits.iter().map(|hit| hit.id.clone()).collect();
    let mut records = tx.current_many(&spec.resource_type, &ids)?;
    // current_many answers in no particular order: restore the page's.
    records.sort_by_key(|record| ids.iter().position(|id| *id == record.id));
    let mut matches = Vec::with_capacity(records.len());
    for mut record in records {
        record.body = mask_body(std::mem::take(&mut record.body), mask)?;
        matches.push(record);
    }
    let (included, truncated_includes) = follow_includes(
        tx,
        mask,
        &spec.resource_type,
        &matches,
        includes,
        revincludes,
    )?;
    Ok(Ok(Found {
        first: hits.first().map(|hit| hit.sort_values.clone()),
        last: hits.last().map(|hit| hit.sort_values.clone()),
        matches,
        included,
        total,
        more_after,
        more_before,
        truncated_includes,
    }))
}

/// Refuses a search (or sort) on a parameter whose expression reads an element the caller's
/// role may not see (`Encounter?reason-code=…` for reception): the answer would reveal it.
fn refuse_masked_params(
    mask: &Mask,
    resource_type: &str,
    filters: &[Filter],
    sort: &[hygie_store::SortBy],
) -> Result<(), HubError> {
    if mask.remove_elements.is_empty() {
        return Ok(());
    }
    let check = |ty: &str, code: &str| -> Result<(), HubError> {
        let Some(param) = hygie_fhir::search::params::search_param(ty, code) else {
            return Ok(());
        };
        for element in crate::interactions::masked_elements(mask, ty) {
            let path = format!("{ty}.{element}");
            let reads_it = param.expression.match_indices(&path).any(|(at, _)| {
                !param.expression[at + path.len()..]
                    .starts_with(|c: char| c.is_ascii_alphanumeric())
            });
            if reads_it {
                return Err(HubError::new(
                    403,
                    IssueType::Forbidden,
                    format!("{code} searches {path}, which this token's role may not see"),
                )
                .located_in(code));
            }
        }
        Ok(())
    };
    for filter in filters {
        match filter {
            Filter::Match { param, .. }
            | Filter::Missing { param, .. }
            | Filter::Composite { param, .. } => check(resource_type, param)?,
            Filter::Chain {
                param,
                target_type,
                inner,
            } => {
                check(resource_type, param)?;
                refuse_masked_params(mask, target_type, inner, &[])?;
            }
            Filter::Has {
                source_type,
                param,
                inner,
            } => {
                check(source_type, param)?;
                refuse_masked_params(mask, source_type, inner, &[])?;
            }
            _ => {}
        }
    }
    for key in sort {
        if let hygie_store::SortBy::Param { param, .. } = key {
            check(resource_type, param)?;
        }
    }
    Ok(())
}

/// The resources `_include` and `_revinclude` add, at most [`MAX_INCLUDED`].
fn follow_includes(
    tx: &mut dyn Tx,
    mask: &Mask,
    resource_type: &str,
    matches: &[VersionRecord],
    includes: &[Include],
    revincludes: &[Include],
) -> Result<(Vec<VersionRecord>, bool), hygie_store::StoreError> {
    let mut seen: std::collections::HashSet<(String, String)> = matches
        .iter()
        .map(|r| (r.resource_type.clone(), r.id.clone()))
        .collect();
    let mut included = Vec::new();
    let mut truncated = false;
    let mut add = |tx: &mut dyn Tx,
                   ty: &str,
                   ids: Vec<String>,
                   seen: &mut std::collections::HashSet<(String, String)>,
                   included: &mut Vec<VersionRecord>,
                   fresh: &mut Vec<VersionRecord>|
     -> Result<(), hygie_store::StoreError> {
        let new: Vec<String> = ids
            .into_iter()
            .filter(|id| !seen.contains(&(ty.to_owned(), id.clone())))
            .collect();
        // Need-to-know: what a caller may not see is not included either.
        let new = crate::care::visible_ids(tx, mask, ty, new)?;
        if new.is_empty() {
            return Ok(());
        }
        for mut record in tx.current_many(ty, &new)? {
            if included.len() >= MAX_INCLUDED {
                truncated = true;
                return Ok(());
            }
            seen.insert((record.resource_type.clone(), record.id.clone()));
            record.body = mask_body(std::mem::take(&mut record.body), mask)?;
            fresh.push(record.clone());
            included.push(record);
        }
        Ok(())
    };
    // Level 0 works from the matches; `:iterate` includes also from what was included.
    let mut frontier: Vec<VersionRecord> = matches.to_vec();
    for depth in 0..MAX_INCLUDE_DEPTH {
        let mut fresh = Vec::new();
        for include in includes.iter().filter(|i| depth == 0 || i.iterate) {
            let sources: Vec<String> = frontier
                .iter()
                .filter(|r| r.resource_type == include.source_type)
                .map(|r| r.id.clone())
                .collect();
            if sources.is_empty() {
                continue;
            }
            let targets = tx.references_from(
                &include.source_type,
                &sources,
                Some(&include.param.code),
                MAX_INCLUDED + 1,
            )?;
            let mut by_type: std::collections::BTreeMap<String, Vec<String>> = Default::default();
            for (ty, id) in targets {
                if include.target_type.as_ref().is_none_or(|t| *t == ty) {
                    by_type.entry(ty).or_default().push(id);
                }
            }
            for (ty, ids) in by_type {
                add(tx, &ty, ids, &mut seen, &mut included, &mut fresh)?;
            }
        }
        for include in revincludes.iter().filter(|i| depth == 0 || i.iterate) {
            let mut by_type: std::collections::BTreeMap<String, Vec<String>> = Default::default();
            for record in &frontier {
                by_type
                    .entry(record.resource_type.clone())
                    .or_default()
                    .push(record.id.clone());
            }
            for (target_type, targets) in by_type {
                if depth == 0 && target_type != resource_type {
                    continue;
                }
                let sources = tx.references_to(
                    &include.source_type,
                    Some(&include.param.code),
                    &target_type,
                    &targets,
                    MAX_INCLUDED + 1,
                )?;
                add(
                    tx,
                    &include.source_type,
                    sources,
                    &mut seen,
                    &mut included,
                    &mut fresh,
                )?;
            }
        }
        if fresh.is_empty() {
            break;
        }
        frontier = fresh;
    }
    Ok((included, truncated))
}

/// A chain (`subject:Patient.nosuch=x`) or reverse chain that cannot be followed is an
/// error even in lenient mode: ignoring it would widen the search from one patient's data
/// to everyone's, which no client means.
fn refuse_broken_chains(request: &SearchRequest) -> Result<(), HubError> {
    let broken: Vec<Issue> = request
        .ignored
        .iter()
        .filter(|issue| {
            issue
                .expression
                .as_deref()
                .is_some_and(|name| name.contains('.') || name.starts_with("_has"))
        })
        .map(|issue| Issue {
            severity: IssueSeverity::Error,
            ..issue.clone()
        })
        .collect();
    if broken.is_empty() {
        Ok(())
    } else {
        Err(HubError::with_issues(400, broken))
    }
}

/// The store query of a parsed request.
struct Plan {
    filters: Vec<Filter>,
    sort: Vec<SortBy>,
}

impl Plan {
    fn new(request: &SearchRequest, scope: &SearchScope, base_url: &str) -> Result<Plan, HubError> {
        let mut filters = Vec::with_capacity(request.filters.len() + 1);
        for filter in &request.filters {
            filters.push(store_filter(filter, base_url)?);
        }
        if let Some((compartment_type, compartment_id)) = &scope.compartment {
            filters.push(compartment_filter(
                &scope.resource_type,
                compartment_type,
                compartment_id,
            ));
        }
        let mut sort = Vec::with_capacity(request.sort.len());
        for key in &request.sort {
            sort.push(match key.param.code.as_str() {
                "_id" => SortBy::Id {
                    descending: key.descending,
                },
                "_lastUpdated" => SortBy::LastUpdated {
                    descending: key.descending,
                },
                code => SortBy::Param {
                    param: code.to_owned(),
                    table: table_of(key.param).ok_or_else(|| {
                        HubError::bad_request(format!("cannot sort by {code}")).located_in("_sort")
                    })?,
                    descending: key.descending,
                },
            });
        }
        Ok(Plan { filters, sort })
    }
}

/// Patient compartment membership (R4 CompartmentDefinition `patient`): for each resource
/// type, the parameters through which it belongs to a patient's compartment.
pub(crate) fn patient_compartment() -> &'static std::collections::BTreeMap<String, Vec<String>> {
    static DEFINITION: OnceLock<std::collections::BTreeMap<String, Vec<String>>> = OnceLock::new();
    DEFINITION.get_or_init(|| {
        serde_json::from_str(include_str!("../data/r4-patient-compartment.json"))
            .expect("the embedded compartment definition is valid JSON")
    })
}

pub(crate) fn compartment_filter(resource_type: &str, compartment_type: &str, id: &str) -> Filter {
    if resource_type == compartment_type {
        return Filter::Ids(vec![id.to_owned()]);
    }
    Filter::Compartment {
        params: patient_compartment()
            .get(resource_type)
            .cloned()
            .unwrap_or_default(),
        target_type: compartment_type.to_owned(),
        target_ids: vec![id.to_owned()],
    }
}

fn table_of(param: &SearchParam) -> Option<IndexTable> {
    Some(match param.kind {
        ParamType::Number => IndexTable::Number,
        ParamType::Date => IndexTable::Date,
        ParamType::String => IndexTable::String,
        ParamType::Token => IndexTable::Token,
        ParamType::Reference => IndexTable::Reference,
        ParamType::Quantity => IndexTable::Quantity,
        ParamType::Uri => IndexTable::Uri,
        ParamType::Composite | ParamType::Special => return None,
    })
}

/// The store filter of one parsed filter. `base_url`: this server's base, so that an
/// absolute reference to it means the same as a relative one.
pub(crate) fn store_filter(filter: &QueryFilter, base_url: &str) -> Result<Filter, HubError> {
    let mut current = param_filter(
        filter.param,
        filter.modifier.as_ref(),
        &filter.values,
        base_url,
    )?;
    for hop in filter.path.iter().rev() {
        current = match hop {
            Hop::Chain {
                reference,
                target_type,
            } => Filter::Chain {
                param: reference.code.clone(),
                target_type: target_type.clone(),
                inner: vec![current],
            },
            Hop::Has {
                source_type,
                reference,
            } => Filter::Has {
                source_type: source_type.clone(),
                param: reference.code.clone(),
                inner: vec![current],
            },
        };
    }
    Ok(current)
}

fn unsupported(param: &SearchParam, what: &str) -> HubError {
    HubError::new(
        400,
        IssueType::NotSupported,
        format!("{}: {what} is not supported", param.code),
    )
    .located_in(&param.code)
}

fn param_filter(
    param: &SearchParam,
    modifier: Option<&Modifier>,
    values: &[Value],
    base_url: &str,
) -> Result<Filter, HubError> {
    if let Some(Modifier::Missing(missing)) = modifier {
        let table = table_of(param).ok_or_else(|| unsupported(param, ":missing"))?;
        if param.code == "_id" || param.code == "_lastUpdated" {
            return Err(unsupported(param, ":missing"));
        }
        return Ok(Filter::Missing {
            param: param.code.clone(),
            table,
            missing: *missing,
        });
    }
    match param.code.as_str() {
        "_id" => {
            if modifier.is_some() {
                return Err(unsupported(param, "a modifier on _id"));
            }
            let ids = values
                .iter()
                .filter_map(|value| match value {
                    Value::Token { code, .. } => code.clone(),
                    Value::String(text) | Value::Uri(text) => Some(text.clone()),
                    _ => None,
                })
                .collect();
            return Ok(Filter::Ids(ids));
        }
        "_lastUpdated" => {
            let ranges = values
                .iter()
                .filter_map(|value| match value {
                    Value::Date {
                        prefix,
                        low_us,
                        high_us,
                    } => Some(date_range(*prefix, *low_us, *high_us)),
                    _ => None,
                })
                .collect();
            return Ok(Filter::LastUpdated(ranges));
        }
        _ => {}
    }
    if param.kind == ParamType::Composite {
        let mut alternatives = Vec::new();
        for value in values {
            let Value::Composite(parts) = value else {
                continue;
            };
            let mut tests = Vec::with_capacity(parts.len());
            for part in parts {
                tests.push(value_test(param, None, part, base_url)?);
            }
            alternatives.push(tests);
        }
        return Ok(Filter::Composite {
            param: param.code.clone(),
            alternatives,
        });
    }
    let (code, negate) = match modifier {
        Some(Modifier::Not) => (param.code.clone(), true),
        Some(Modifier::Text) => (format!("{}:text", param.code), false),
        Some(Modifier::OfType) => (format!("{}:of-type", param.code), false),
        Some(Modifier::Above) | Some(Modifier::Identifier) => {
            return Err(unsupported(param, "this modifier"));
        }
        Some(Modifier::Below) if param.kind != ParamType::Uri => {
            return Err(unsupported(param, ":below"));
        }
        _ => (param.code.clone(), false),
    };
    let mut tests = Vec::with_capacity(values.len());
    for value in values {
        tests.push(value_test(param, modifier, value, base_url)?);
    }
    Ok(Filter::Match {
        param: code,
        tests,
        negate,
    })
}

fn value_test(
    param: &SearchParam,
    modifier: Option<&Modifier>,
    value: &Value,
    base_url: &str,
) -> Result<Test, HubError> {
    Ok(match value {
        Value::Token { system, code } => Test::Token {
            system: match system {
                TokenSystem::Any => None,
                TokenSystem::NoSystem => Some(String::new()),
                TokenSystem::Is(system) => Some(system.clone()),
            },
            code: code.clone(),
        },
        Value::OfType {
            type_system,
            type_code,
            value,
        } => Test::Token {
            system: Some(type_system.clone()),
            code: Some(format!("{type_code}|{value}")),
        },
        Value::Text(text) => Test::StringStartsWith(text.clone()),
        Value::String(text) => match modifier {
            Some(Modifier::Exact) => Test::StringExact(text.clone()),
            Some(Modifier::Contains) => Test::StringContains(text.clone()),
            _ => Test::StringStartsWith(text.clone()),
        },
        Value::Date {
            prefix,
            low_us,
            high_us,
        } => {
            let (op, low, high) = date_range(*prefix, *low_us, *high_us);
            Test::Date { op, low, high }
        }
        Value::Number {
            prefix,
            value,
            low,
            high,
        } => {
            let (op, low, high) = number_range(*prefix, *value, *low, *high);
            Test::Number { op, low, high }
        }
        Value::Quantity {
            prefix,
            value,
            low,
            high,
            system,
            code,
        } => {
            let (op, low, high) = number_range(*prefix, *value, *low, *high);
            Test::Quantity {
                op,
                low,
                high,
                system: system.clone(),
                code: code.clone(),
            }
        }
        Value::Reference { resource_type, id } => Test::Reference {
            target_type: resource_type.clone(),
            target_id: id.clone(),
        },
        Value::ReferenceUrl(url) => {
            // Stored references under our base are relative (`localize_references`).
            let local = crate::resource::local_spelling(url, base_url)
                .and_then(|rest| rest.split_once('/'))
                .filter(|(_, id)| crate::resource::is_valid_id(id));
            match local {
                Some((ty, id)) => Test::Reference {
                    target_type: Some(ty.to_owned()),
                    target_id: id.to_owned(),
                },
                None => Test::ReferenceUrl(url.clone()),
            }
        }
        Value::Uri(uri) => match modifier {
            Some(Modifier::Below) => Test::UriBelow(uri.clone()),
            _ => Test::Uri(uri.clone()),
        },
        Value::Composite(_) => return Err(unsupported(param, "a composite value here")),
    })
}

fn range_op(prefix: Prefix) -> RangeOp {
    match prefix {
        Prefix::Eq => RangeOp::Eq,
        Prefix::Ne => RangeOp::Ne,
        Prefix::Gt => RangeOp::Gt,
        Prefix::Lt => RangeOp::Lt,
        Prefix::Ge => RangeOp::Ge,
        Prefix::Le => RangeOp::Le,
        Prefix::Sa => RangeOp::Sa,
        Prefix::Eb => RangeOp::Eb,
        Prefix::Ap => RangeOp::Overlaps,
    }
}

/// `ap` on a date: within 10% of the gap between now and the date (the spec's suggestion).
fn date_range(prefix: Prefix, low: i64, high: i64) -> (RangeOp, i64, i64) {
    if prefix == Prefix::Ap {
        let now = crate::instant::now_us();
        let gap = (now.saturating_sub(low)).unsigned_abs() / 10;
        let gap = i64::try_from(gap).unwrap_or(i64::MAX);
        return (
            RangeOp::Overlaps,
            low.saturating_sub(gap),
            high.saturating_add(gap),
        );
    }
    (range_op(prefix), low, high)
}

/// `ap` on a number: within 10% of the value.
fn number_range(prefix: Prefix, value: f64, low: f64, high: f64) -> (RangeOp, f64, f64) {
    if prefix == Prefix::Ap {
        let margin = (value * 0.1).abs();
        return (RangeOp::Overlaps, low - margin, high + margin);
    }
    (range_op(prefix), low, high)
}

fn entry(
    base: &str,
    record: VersionRecord,
    mode: &'static str,
    shape: &Shape,
) -> Result<EntryOut, HubError> {
    let full_url = format!("{base}/{}/{}", record.resource_type, record.id);
    // Included resources are shown whole: `_summary` and `_elements` shape the matches.
    let body = if mode == "include" {
        record.body
    } else {
        shape.apply_to_body(record.body)?
    };
    let resource = raw(body).map_err(HubError::from_store)?;
    Ok(EntryOut {
        full_url: Some(full_url),
        resource: Some(resource),
        search: Some(SearchOut { mode }),
        ..EntryOut::default()
    })
}

fn invalid_cursor() -> HubError {
    HubError::bad_request("invalid _page cursor: use the links the server returned")
        .located_in("_page")
}

fn seal_cursor(key: &hmac::Key, cursor: &Cursor) -> Result<String, serde_json::Error> {
    let payload = serde_json::to_vec(cursor)?;
    let tag = hmac::sign(key, &payload);
    Ok(format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(&payload),
        URL_SAFE_NO_PAD.encode(tag.as_ref())
    ))
}

fn open_cursor(key: &hmac::Key, token: &str, subject: &str) -> Result<Cursor, HubError> {
    let (payload, tag) = token.split_once('.').ok_or_else(invalid_cursor)?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| invalid_cursor())?;
    let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| invalid_cursor())?;
    hmac::verify(key, &payload, &tag).map_err(|_| invalid_cursor())?;
    let cursor: Cursor = serde_json::from_slice(&payload).map_err(|_| invalid_cursor())?;
    if cursor.s != subject {
        return Err(HubError::new(
            403,
            IssueType::Forbidden,
            "this paging link was issued to another user",
        ));
    }
    Ok(cursor)
}

pub(crate) fn encode_query(pairs: &[(String, String)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        serializer.append_pair(name, value);
    }
    serializer.finish()
}

/// One page of `$everything`: compartment members, and what they reference.
struct Everything {
    members: Vec<VersionRecord>,
    referenced: Vec<VersionRecord>,
    last: Option<(String, String)>,
    more: bool,
    truncated: bool,
}

impl Audited for Everything {
    fn audit_entities(&self) -> Vec<String> {
        self.members
            .iter()
            .chain(&self.referenced)
            .map(|r| format!("{}/{}/_history/{}", r.resource_type, r.id, r.version))
            .collect()
    }
}

impl Hub {
    /// `GET [base]/Patient/{id}/$everything`: the patient, every resource of their
    /// compartment, and the resources those reference (practitioners, organizations,
    /// medications…), paged by `_count`, narrowed by `_type`.
    pub async fn everything(
        &self,
        caller: &Caller,
        patient_id: &str,
        query_string: &str,
    ) -> Result<Vec<u8>, HubError> {
        crate::resource::check_id(patient_id)?;
        let pairs = query::parse_query_string(query_string)
            .map_err(|issue| HubError::with_issues(400, vec![issue]))?;
        let key = self.paging_key().await?;
        let operation = "$everything".to_owned();
        let compartment = Some(("Patient".to_owned(), patient_id.to_owned()));
        let (pairs, after) = match pairs.iter().find(|(name, _)| name == "_page") {
            Some((_, token)) => {
                let cursor = open_cursor(&key, token, &caller.principal.subject)?;
                if cursor.t != operation || cursor.c != compartment || pairs.len() > 1 {
                    return Err(invalid_cursor());
                }
                let mut values = cursor.v.into_iter();
                match (values.next(), values.next()) {
                    (Some(CursorValue::T(ty)), Some(CursorValue::T(id))) => {
                        (cursor.q, Some((ty, id)))
                    }
                    _ => return Err(invalid_cursor()),
                }
            }
            None => (pairs, None),
        };
        let mut count = self.config().default_page_size;
        let mut types: Option<Vec<String>> = None;
        for (name, value) in &pairs {
            match name.as_str() {
                "_count" => {
                    count = value
                        .parse::<usize>()
                        .ok()
                        .filter(|c| (1..=self.config().max_page_size).contains(c))
                        .ok_or_else(|| {
                            HubError::bad_request(format!(
                                "_count={value:?}: give a whole number from 1 to {}",
                                self.config().max_page_size
                            ))
                            .located_in("_count")
                        })?;
                }
                "_type" => {
                    let listed: Vec<String> = value.split(',').map(str::to_owned).collect();
                    for ty in &listed {
                        check_resource_type(ty).map_err(|e| e.located_in("_type"))?;
                    }
                    types = Some(listed);
                }
                "_format" | "_pretty" => {}
                other => {
                    return Err(HubError::new(
                        400,
                        IssueType::NotSupported,
                        format!("$everything takes _count and _type; {other:?} is not supported"),
                    )
                    .located_in(other));
                }
            }
        }
        let members: Vec<(String, Vec<String>)> = patient_compartment()
            .iter()
            .filter(|(ty, _)| types.as_ref().is_none_or(|t| t.contains(ty)))
            .map(|(ty, params)| (ty.clone(), params.clone()))
            .collect();
        let include_patient = types
            .as_ref()
            .is_none_or(|t| t.iter().any(|ty| ty == "Patient"));
        let id = patient_id.to_owned();
        let page = self
            .perform_read(
                Access {
                    caller,
                    action: Action::Everything,
                    target: Target::instance("Patient", patient_id),
                    query: Some(encode_query(&pairs)),
                    patient_hint: None,
                },
                move |tx, mask| {
                    let Some(patient) = tx.current("Patient", &id)? else {
                        return Ok(Err(HubError::not_found(format!(
                            "Patient/{id} is not known"
                        ))));
                    };
                    if patient.deleted {
                        return Ok(Err(HubError::gone(format!("Patient/{id} was deleted"))));
                    }
                    if let Some(care) = &mask.care_of
                        && !care.patients.as_ref().is_some_and(|p| p.contains(&id))
                    {
                        return Ok(Err(crate::care::no_relationship(&format!("Patient/{id}"))));
                    }
                    if let Err(refusal) = crate::care::check_visible(tx, mask, "Patient", &id)? {
                        return Ok(Err(refusal));
                    }
                    // The patient leads the first page; the compartment follows in (type, id)
                    // order, which is what the cursor records (the patient is outside it).
                    let mut keys = Vec::new();
                    if after.is_none() && include_patient {
                        keys.push(("Patient".to_owned(), id.clone()));
                    }
                    let room = count - keys.len();
                    let position = after.as_ref().map(|(t, i)| (t.as_str(), i.as_str()));
                    let mut rest = tx.compartment("Patient", &id, &members, position, room + 2)?;
                    rest.retain(|key| !(key.0 == "Patient" && key.1 == id));
                    let more = rest.len() > room;
                    rest.truncate(room);
                    let last = rest
                        .last()
                        .cloned()
                        .unwrap_or_else(|| (String::new(), String::new()));
                    keys.extend(rest);
                    let mut records = Vec::with_capacity(keys.len());
                    let mut by_type: std::collections::BTreeMap<String, Vec<String>> =
                        Default::default();
                    for (ty, member) in &keys {
                        by_type.entry(ty.clone()).or_default().push(member.clone());
                    }
                    // What the caller may not see is neither shown nor followed.
                    let mut visible = std::collections::BTreeMap::new();
                    for (ty, ids) in by_type {
                        let ids = crate::care::visible_ids(tx, mask, &ty, ids)?;
                        visible.insert(ty, ids);
                    }
                    let by_type = visible;
                    for (ty, ids) in &by_type {
                        records.extend(tx.current_many(ty, ids)?);
                    }
                    records.sort_by(|a, b| {
                        (a.resource_type != "Patient" || a.id != id)
                            .cmp(&(b.resource_type != "Patient" || b.id != id))
                            .then_with(|| a.resource_type.cmp(&b.resource_type))
                            .then_with(|| a.id.cmp(&b.id))
                    });
                    // The patient is never "referenced": it leads the first page.
                    let mut seen: std::collections::HashSet<(String, String)> = records
                        .iter()
                        .map(|r| (r.resource_type.clone(), r.id.clone()))
                        .chain([("Patient".to_owned(), id.clone())])
                        .collect();
                    // What the page's resources reference, outside the compartment.
                    let mut referenced = Vec::new();
                    let mut truncated = false;
                    for (ty, ids) in &by_type {
                        let targets = tx.references_from(ty, ids, None, MAX_INCLUDED + 1)?;
                        let mut wanted: std::collections::BTreeMap<String, Vec<String>> =
                            Default::default();
                        for (target_type, target_id) in targets {
                            if seen.insert((target_type.clone(), target_id.clone())) {
                                wanted.entry(target_type).or_default().push(target_id);
                            }
                        }
                        for (target_type, target_ids) in wanted {
                            // Another patient's data, referenced from this record, stays
                            // behind the limits of the caller.
                            let target_ids =
                                crate::care::visible_ids(tx, mask, &target_type, target_ids)?;
                            for record in tx.current_many(&target_type, &target_ids)? {
                                if referenced.len() >= MAX_INCLUDED {
                                    truncated = true;
                                    break;
                                }
                                referenced.push(record);
                            }
                        }
                    }
                    let mut members_out = Vec::with_capacity(records.len());
                    for mut record in records {
                        record.body = mask_body(std::mem::take(&mut record.body), mask)?;
                        members_out.push(record);
                    }
                    for record in &mut referenced {
                        record.body = mask_body(std::mem::take(&mut record.body), mask)?;
                    }
                    Ok(Ok(Everything {
                        members: members_out,
                        referenced,
                        last: Some(last),
                        more,
                        truncated,
                    }))
                },
            )
            .await?;
        let base = &caller.base_url;
        let mut bundle = BundleOut::new("searchset");
        let query = encode_query(&pairs);
        bundle.link.push(LinkOut {
            relation: "self",
            url: if query.is_empty() {
                format!("{base}/Patient/{patient_id}/$everything")
            } else {
                format!("{base}/Patient/{patient_id}/$everything?{query}")
            },
        });
        if let (true, Some((ty, id))) = (page.more, &page.last) {
            let cursor = Cursor {
                q: pairs.clone(),
                t: operation,
                c: compartment,
                v: vec![CursorValue::T(ty.clone()), CursorValue::T(id.clone())],
                b: false,
                s: caller.principal.subject.clone(),
            };
            bundle.link.push(LinkOut {
                relation: "next",
                url: format!(
                    "{base}/Patient/{patient_id}/$everything?_page={}",
                    seal_cursor(&key, &cursor).expect("a cursor serializes")
                ),
            });
        }
        let full = Shape::full();
        for record in page.members {
            bundle.entry.push(entry(base, record, "match", &full)?);
        }
        for record in page.referenced {
            bundle.entry.push(entry(base, record, "include", &full)?);
        }
        if page.truncated {
            let outcome = hygie_fhir::outcome::operation_outcome(&[Issue {
                severity: IssueSeverity::Warning,
                code: IssueType::TooCostly,
                diagnostics: format!(
                    "referenced resources stopped at {MAX_INCLUDED} on this page; use a smaller _count"
                ),
                expression: None,
            }]);
            bundle.entry.push(EntryOut {
                resource: Some(raw_value(&outcome)),
                search: Some(SearchOut { mode: "outcome" }),
                ..EntryOut::default()
            });
        }
        Ok(bundle.to_vec())
    }
}

/// What a search reads besides its own type: the types its chains and reverse chains search
/// (a chain reveals what matched), and those its includes return. Each must be permitted
/// to the caller as much as the search itself.
fn reached_types(request: &SearchRequest) -> Vec<(Action, Target, String)> {
    let mut reached: Vec<(Action, Target, String)> = Vec::new();
    let mut add = |action: Action, resource_type: &str, what: String| {
        if resource_type != request.resource_type
            && !reached
                .iter()
                .any(|(a, t, _)| *a == action && t.resource_type.as_deref() == Some(resource_type))
        {
            reached.push((action, Target::resource_type(resource_type), what));
        }
    };
    for filter in &request.filters {
        for hop in &filter.path {
            match hop {
                Hop::Chain { target_type, .. } => add(
                    Action::Search,
                    target_type,
                    format!("a chain through {target_type}"),
                ),
                Hop::Has { source_type, .. } => add(
                    Action::Search,
                    source_type,
                    format!("_has on {source_type}"),
                ),
            }
        }
    }
    for include in &request.include {
        let targets = match &include.target_type {
            Some(target) => vec![target.clone()],
            None => include.param.targets.clone(),
        };
        for target in targets {
            add(Action::Read, &target, format!("_include of {target}"));
        }
    }
    for include in &request.revinclude {
        add(
            Action::Search,
            &include.source_type,
            format!("_revinclude of {}", include.source_type),
        );
    }
    reached
}
