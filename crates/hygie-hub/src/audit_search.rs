//! The audit trail read through FHIR.
//!
//! - `GET /fhir/AuditEvent?patient=&agent=&date=&type=&subtype=&outcome=&purpose=` and
//!   `GET /fhir/AuditEvent/{id}`: the AuditEvents exactly as the log holds them, for the
//!   dpo and security roles (the policy refuses everyone else, whatever their scopes).
//! - `GET /fhir/Patient/{id}/$access-log`: a patient's access report, for the patient
//!   themself and for the DPO: who (name and role), when, what kind of data, why, whether
//!   the glass was broken. It shows nothing of other patients (a search that returned
//!   several patients' data is shown by the resource types it reached) nor the staff's
//!   network addresses and queries.
//!
//! Reading the audit trail is itself an access, audited like any other. AuditEvent ids are
//! the numbers the store gave the leaves as they were appended (on SQLite the leaf's index
//! in the Merkle tree; on PostgreSQL its append sequence).

use std::collections::{BTreeMap, BTreeSet};

use hygie_fhir::IssueType;
use hygie_fhir::search::date::{ZoneRule, parse_range};
use hygie_policy::{AUDIT_EVENT, Action, Target};
use hygie_store::audit_index::MAX_AUDIT_PAGE;
use hygie_store::{AuditHit, AuditQuery, StoreError, Tx};
use serde_json::{Value, json};

use crate::pipeline::{Access, Audited};
use crate::{Caller, Hub, HubError};

/// The search parameters of AuditEvent this hub supports (besides `_count` and the paging
/// cursor `_before`).
pub const AUDIT_SEARCH_PARAMETERS: &[&str] = &[
    "patient", "agent", "date", "type", "subtype", "outcome", "purpose",
];

/// The most values one parameter may list (an OR), and the most times one may repeat.
pub const MAX_AUDIT_PARAMETER_VALUES: usize = 100;

/// Audit events found, with what the read of them reached.
struct AuditPage {
    hits: Vec<AuditHit>,
    /// The patients the request named: reading their access trail is an access to them.
    patients: Vec<String>,
    /// Display names of the agents (`Practitioner/7` → "Dr Anne Martin"), for a report.
    names: BTreeMap<String, String>,
}

impl Audited for AuditPage {
    fn audit_entities(&self) -> Vec<String> {
        self.patients
            .iter()
            .map(|p| format!("Patient/{p}"))
            .chain(
                self.hits
                    .iter()
                    .map(|hit| format!("AuditEvent/{}", hit.number)),
            )
            .collect()
    }
}

/// One line of a patient's access report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AccessReportLine {
    pub id: i64,
    /// RFC 3339.
    pub when: String,
    /// The name of who acted, or their identifier when the hub knows no name.
    pub who: String,
    pub roles: Vec<String>,
    /// The interaction (`read`, `search-type`, `update`, …).
    pub action: String,
    /// The kinds of data reached (`Observation`, `Patient`, …).
    pub what: Vec<String>,
    /// Why, when a purpose was recorded (`ETREAT`, with the stated reason).
    pub why: Option<String>,
    /// Whether the glass was broken (emergency access without a care relationship).
    pub emergency: bool,
    /// Whether the access was granted (`0`) or refused (`4`, `8`).
    pub outcome: String,
}

impl Hub {
    /// `GET /fhir/AuditEvent?…`: a searchset Bundle, newest first.
    pub async fn search_audit(&self, caller: &Caller, query: &str) -> Result<Vec<u8>, HubError> {
        let (audit_query, patients) = parse_search(query, self.config().default_page_size)?;
        let page = self
            .read_audit_trail(
                caller,
                Action::Search,
                Target::resource_type(AUDIT_EVENT),
                query,
                audit_query.clone(),
                patients,
            )
            .await?;
        let entries: Vec<Value> = page
            .hits
            .iter()
            .map(|hit| {
                json!({
                    "fullUrl": format!("{}/AuditEvent/{}", caller.base_url, hit.number),
                    "resource": event_with_id(hit),
                    "search": {"mode": "match"},
                })
            })
            .collect();
        let links = page_links(
            &caller.base_url,
            "AuditEvent",
            query,
            &audit_query,
            &page.hits,
        );
        Ok(serde_json::to_vec(&json!({
            "resourceType": "Bundle",
            "type": "searchset",
            "link": links,
            "entry": entries,
        }))
        .expect("a Bundle serializes"))
    }

    /// `GET /fhir/AuditEvent/{id}`.
    pub async fn read_audit(&self, caller: &Caller, id: &str) -> Result<Vec<u8>, HubError> {
        let number: i64 = id
            .parse()
            .ok()
            .filter(|n: &i64| *n >= 0)
            .ok_or_else(|| HubError::not_found(format!("AuditEvent/{id} is not known")))?;
        let access = Access {
            caller,
            action: Action::Read,
            target: Target::instance(AUDIT_EVENT, id),
            query: None,
            patient_hint: None,
        };
        let id = id.to_owned();
        let page = self
            .perform_read(access, move |tx: &mut dyn Tx, _mask| {
                Ok(match tx.audit_event(number)? {
                    Some(hit) => Ok(AuditPage {
                        hits: vec![hit],
                        patients: Vec::new(),
                        names: BTreeMap::new(),
                    }),
                    None => Err(HubError::not_found(format!("AuditEvent/{id} is not known"))),
                })
            })
            .await?;
        Ok(serde_json::to_vec(&event_with_id(&page.hits[0])).expect("JSON serializes"))
    }

    /// `GET /fhir/Patient/{id}/$access-log`: the patient's access report as a Bundle.
    pub async fn access_log(
        &self,
        caller: &Caller,
        patient_id: &str,
        query: &str,
    ) -> Result<Vec<u8>, HubError> {
        let (lines, audit_query, hits) = self.access_report_page(caller, patient_id, query).await?;
        let entries: Vec<Value> = lines
            .iter()
            .map(|line| {
                json!({
                    "fullUrl": format!("{}/AuditEvent/{}", caller.base_url, line.id),
                    "resource": report_event(patient_id, line),
                })
            })
            .collect();
        let path = format!("Patient/{patient_id}/$access-log");
        Ok(serde_json::to_vec(&json!({
            "resourceType": "Bundle",
            "type": "collection",
            "link": page_links(&caller.base_url, &path, query, &audit_query, &hits),
            "entry": entries,
        }))
        .expect("a Bundle serializes"))
    }

    /// A patient's whole access report (every page), newest first: for `hygie audit report`.
    pub async fn access_report(
        &self,
        caller: &Caller,
        patient_id: &str,
    ) -> Result<Vec<AccessReportLine>, HubError> {
        let mut all = Vec::new();
        let mut before: Option<i64> = None;
        loop {
            let query = match before {
                Some(before) => format!("_count={MAX_AUDIT_PAGE}&_before={before}"),
                None => format!("_count={MAX_AUDIT_PAGE}"),
            };
            let (lines, _, hits) = self.access_report_page(caller, patient_id, &query).await?;
            let Some(last) = hits.last() else { break };
            before = Some(last.number);
            all.extend(lines);
            if hits.len() < MAX_AUDIT_PAGE {
                break;
            }
        }
        Ok(all)
    }

    async fn access_report_page(
        &self,
        caller: &Caller,
        patient_id: &str,
        query: &str,
    ) -> Result<(Vec<AccessReportLine>, AuditQuery, Vec<AuditHit>), HubError> {
        crate::resource::check_id(patient_id)?;
        let mut audit_query = parse_access_log(query, self.config().default_page_size)?;
        audit_query.patients = vec![patient_id.to_owned()];
        let page = self
            .read_audit_trail(
                caller,
                Action::AccessLog,
                Target::instance("Patient", patient_id),
                query,
                audit_query.clone(),
                vec![patient_id.to_owned()],
            )
            .await?;
        let lines = page
            .hits
            .iter()
            .filter_map(|hit| report_line(hit, &page.names))
            .collect();
        Ok((lines, audit_query, page.hits))
    }

    async fn read_audit_trail(
        &self,
        caller: &Caller,
        action: Action,
        target: Target,
        query: &str,
        audit_query: AuditQuery,
        patients: Vec<String>,
    ) -> Result<AuditPage, HubError> {
        let access = Access {
            caller,
            action,
            target,
            query: (!query.is_empty()).then(|| query.to_owned()),
            patient_hint: None,
        };
        let with_names = action == Action::AccessLog;
        self.perform_read(access, move |tx: &mut dyn Tx, mask| {
            if mask.patient_compartment.is_some() && action != Action::AccessLog {
                return Ok(Err(HubError::new(
                    403,
                    IssueType::Forbidden,
                    "a patient reads their own access log with Patient/{id}/$access-log",
                )));
            }
            let hits = tx.search_audit(&audit_query)?;
            let names = if with_names {
                agent_names(tx, &hits)?
            } else {
                BTreeMap::new()
            };
            Ok(Ok(AuditPage {
                hits,
                patients,
                names,
            }))
        })
        .await
    }
}

/// The leaf as a FHIR resource: the stored AuditEvent with its id.
fn event_with_id(hit: &AuditHit) -> Value {
    let mut event: Value =
        serde_json::from_slice(&hit.leaf).unwrap_or_else(|_| json!({"resourceType": "AuditEvent"}));
    if let Some(object) = event.as_object_mut() {
        object.insert("id".to_owned(), Value::String(hit.number.to_string()));
    }
    event
}

/// The names of the agents that are Practitioner references, from their current resource.
fn agent_names(tx: &mut dyn Tx, hits: &[AuditHit]) -> Result<BTreeMap<String, String>, StoreError> {
    let mut agents = BTreeSet::new();
    for hit in hits {
        if let Ok(event) = serde_json::from_slice::<Value>(&hit.leaf)
            && let Some(who) = event["agent"][0]["who"]["display"].as_str()
        {
            agents.insert(who.to_owned());
        }
    }
    let mut names = BTreeMap::new();
    for agent in agents {
        let Some(id) = agent.strip_prefix("Practitioner/") else {
            continue;
        };
        if !crate::resource::is_valid_id(id) {
            continue;
        }
        if let Some(record) = tx.current("Practitioner", id)?
            && !record.deleted
            && let Ok(practitioner) = serde_json::from_slice::<Value>(&record.body)
            && let Some(name) = human_name(&practitioner["name"][0])
        {
            names.insert(agent, name);
        }
    }
    Ok(names)
}

/// A HumanName as one line: its text, or prefix, given and family names.
fn human_name(name: &Value) -> Option<String> {
    if let Some(text) = name["text"].as_str() {
        return Some(text.to_owned());
    }
    let words: Vec<&str> = ["prefix", "given"]
        .iter()
        .flat_map(|part| name[part].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .chain(name["family"].as_str())
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

/// One event as the patient's report shows it.
fn report_line(hit: &AuditHit, names: &BTreeMap<String, String>) -> Option<AccessReportLine> {
    let event: Value = serde_json::from_slice(&hit.leaf).ok()?;
    let agent = &event["agent"][0];
    let who = agent["who"]["display"].as_str().unwrap_or("unknown");
    let roles = agent["role"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|role| role["coding"][0]["code"].as_str())
        .map(str::to_owned)
        .collect();
    let what: BTreeSet<String> = event["entity"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entity| entity["role"]["code"] != "1")
        .filter_map(|entity| entity["what"]["reference"].as_str())
        .filter_map(|reference| reference.split('/').next())
        .filter(|ty| *ty != "AuditEvent")
        .map(str::to_owned)
        .collect();
    let purpose = &event["purposeOfEvent"][0];
    let purpose_code = purpose["coding"][0]["code"].as_str();
    let why = purpose_code.map(|code| match purpose["text"].as_str() {
        Some(text) => format!("{code}: {text}"),
        None => code.to_owned(),
    });
    Some(AccessReportLine {
        id: hit.number,
        when: event["recorded"].as_str().unwrap_or_default().to_owned(),
        who: names.get(who).cloned().unwrap_or_else(|| who.to_owned()),
        roles,
        action: event["subtype"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        what: what.into_iter().collect(),
        emergency: purpose_code == Some("ETREAT"),
        why,
        outcome: event["outcome"].as_str().unwrap_or_default().to_owned(),
    })
}

/// A report line as an AuditEvent the patient may see: no network address, no query, no
/// other patient, and the data reached named by kind only.
fn report_event(patient_id: &str, line: &AccessReportLine) -> Value {
    let mut entities = vec![json!({
        "what": {"reference": format!("Patient/{patient_id}")},
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
        "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"},
    })];
    entities.extend(line.what.iter().map(|kind| {
        json!({
            "what": {"display": kind},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
        })
    }));
    let mut agent = json!({
        "who": {"display": line.who},
        "requestor": true,
    });
    if !line.roles.is_empty() {
        agent["role"] = Value::Array(
            line.roles
                .iter()
                .map(|role| json!({"coding": [{"system": hygie_audit::ROLE_SYSTEM, "code": role}]}))
                .collect(),
        );
    }
    let mut event = json!({
        "resourceType": "AuditEvent",
        "id": line.id.to_string(),
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": line.action}],
        "recorded": line.when,
        "outcome": line.outcome,
        "agent": [agent],
        "source": {"observer": {"display": "hygie"}},
        "entity": entities,
    });
    if let Some(why) = &line.why {
        let (code, text) = why.split_once(": ").unwrap_or((why, ""));
        let mut purpose = json!({"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": code}]});
        if !text.is_empty() {
            purpose["text"] = Value::String(text.to_owned());
        }
        event["purposeOfEvent"] = json!([purpose]);
    }
    event
}

/// `self` and, when the page is full, `next` (with `_before` the last number answered).
fn page_links(
    base_url: &str,
    path: &str,
    query: &str,
    audit_query: &AuditQuery,
    hits: &[AuditHit],
) -> Vec<Value> {
    let mut links = vec![json!({
        "relation": "self",
        "url": if query.is_empty() { format!("{base_url}/{path}") } else { format!("{base_url}/{path}?{query}") },
    })];
    if hits.len() >= audit_query.limit
        && let Some(last) = hits.last()
    {
        let mut serializer = form_urlencoded::Serializer::new(String::new());
        for (name, value) in crate::criteria::parse_query(query) {
            if name != "_before" {
                serializer.append_pair(&name, &value);
            }
        }
        serializer.append_pair("_before", &last.number.to_string());
        links.push(json!({
            "relation": "next",
            "url": format!("{base_url}/{path}?{}", serializer.finish()),
        }));
    }
    links
}

fn bad(parameter: &str, why: impl std::fmt::Display) -> HubError {
    HubError::bad_request(format!("{parameter}: {why}")).located_in(parameter)
}

/// The values of a comma-separated list, checked and bounded.
fn values<'a>(parameter: &str, value: &'a str) -> Result<Vec<&'a str>, HubError> {
    let list: Vec<&str> = value.split(',').collect();
    if list.len() > MAX_AUDIT_PARAMETER_VALUES {
        return Err(bad(
            parameter,
            format!("at most {MAX_AUDIT_PARAMETER_VALUES} values"),
        ));
    }
    if list.iter().any(|v| v.is_empty()) {
        return Err(bad(parameter, "an empty value"));
    }
    Ok(list)
}

/// A token value: `code` or `system|code`; the code is what is matched.
fn token_code<'a>(parameter: &str, value: &'a str) -> Result<&'a str, HubError> {
    let code = value.rsplit_once('|').map_or(value, |(_, code)| code);
    if code.is_empty() {
        return Err(bad(parameter, "a token needs a code"));
    }
    Ok(code)
}

/// `_count` and `_before`, shared by the search and the access log.
fn paging(
    name: &str,
    value: &str,
    query: &mut AuditQuery,
    default_page_size: usize,
) -> Result<bool, HubError> {
    match name {
        "_count" => {
            let count: usize = value.parse().map_err(|_| bad("_count", "a whole number"))?;
            if count > MAX_AUDIT_PAGE {
                return Err(bad(
                    "_count",
                    format!("at most {MAX_AUDIT_PAGE} audit events a page"),
                ));
            }
            query.limit = if count == 0 { default_page_size } else { count };
            Ok(true)
        }
        "_before" => {
            let before: i64 = value
                .parse()
                .ok()
                .filter(|n: &i64| *n >= 0)
                .ok_or_else(|| bad("_before", "the paging cursor of a next link"))?;
            query.before = Some(before);
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// A `date` parameter narrows `[since, until)`: `eq` (the default), `ge`, `gt`, `le`, `lt`
/// with the value's precision (`2026`, `2026-11`, `2026-11-30`, a dateTime).
fn narrow_dates(value: &str, query: &mut AuditQuery) -> Result<(), HubError> {
    let (prefix, date) = match value.get(..2) {
        Some(p @ ("eq" | "ge" | "gt" | "le" | "lt")) => (p, &value[2..]),
        Some(p @ ("ne" | "sa" | "eb" | "ap")) => {
            return Err(bad(
                "date",
                format!("the prefix {p} is not supported on the audit trail: eq, ge, gt, le, lt"),
            ));
        }
        _ => ("eq", value),
    };
    let (low, high) = parse_range(date, ZoneRule::AssumeUtc).map_err(|e| {
        bad(
            "date",
            format!("{date:?} is not a FHIR date or dateTime: {e}"),
        )
    })?;
    let after_high = high.saturating_add(1);
    let (since, until) = match prefix {
        "eq" => (Some(low), Some(after_high)),
        "ge" => (Some(low), None),
        "gt" => (Some(after_high), None),
        "le" => (None, Some(after_high)),
        _ => (None, Some(low)),
    };
    if let Some(since) = since {
        query.since_us = Some(query.since_us.map_or(since, |s| s.max(since)));
    }
    if let Some(until) = until {
        query.until_us = Some(query.until_us.map_or(until, |u| u.min(until)));
    }
    Ok(())
}

/// Parses an AuditEvent search; also answers the patients it names.
fn parse_search(
    query: &str,
    default_page_size: usize,
) -> Result<(AuditQuery, Vec<String>), HubError> {
    let mut audit_query = AuditQuery {
        limit: default_page_size,
        ..AuditQuery::default()
    };
    let mut repeats = 0usize;
    for (name, value) in crate::criteria::parse_query(query) {
        repeats += 1;
        if repeats > MAX_AUDIT_PARAMETER_VALUES {
            return Err(HubError::bad_request(format!(
                "at most {MAX_AUDIT_PARAMETER_VALUES} parameters in an audit search"
            )));
        }
        if paging(&name, &value, &mut audit_query, default_page_size)? {
            continue;
        }
        match name.as_str() {
            "patient" | "patient:Patient" => {
                if !audit_query.patients.is_empty() {
                    return Err(bad("patient", "give the patients once, comma-separated"));
                }
                for value in values("patient", &value)? {
                    let id = value.rsplit_once("Patient/").map_or(value, |(_, id)| id);
                    if !crate::resource::is_valid_id(id) {
                        return Err(bad("patient", format!("{value:?} is not a patient id")));
                    }
                    audit_query.patients.push(id.to_owned());
                }
            }
            "agent" => {
                if !audit_query.agents.is_empty() {
                    return Err(bad("agent", "give the agents once, comma-separated"));
                }
                audit_query.agents = values("agent", &value)?
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
            }
            "date" => narrow_dates(&value, &mut audit_query)?,
            "type" | "subtype" | "outcome" | "purpose" => {
                let list = match name.as_str() {
                    "type" => &mut audit_query.event_types,
                    "subtype" => &mut audit_query.subtypes,
                    "outcome" => &mut audit_query.outcomes,
                    _ => &mut audit_query.purposes,
                };
                if !list.is_empty() {
                    return Err(bad(&name, "give the codes once, comma-separated"));
                }
                for value in values(&name, &value)? {
                    list.push(token_code(&name, value)?.to_owned());
                }
            }
            _ => {
                return Err(HubError::new(
                    400,
                    IssueType::NotSupported,
                    format!(
                        "unknown or unsupported AuditEvent search parameter {name:?}: this server supports {}, _count",
                        AUDIT_SEARCH_PARAMETERS.join(", ")
                    ),
                )
                .located_in(&name));
            }
        }
    }
    let patients = audit_query.patients.clone();
    Ok((audit_query, patients))
}

/// Parses the parameters of `$access-log`: `date`, `_count`, `_before`.
fn parse_access_log(query: &str, default_page_size: usize) -> Result<AuditQuery, HubError> {
    let mut audit_query = AuditQuery {
        limit: default_page_size,
        ..AuditQuery::default()
    };
    for (name, value) in crate::criteria::parse_query(query) {
        if paging(&name, &value, &mut audit_query, default_page_size)? {
            continue;
        }
        if name == "date" {
            narrow_dates(&value, &mut audit_query)?;
            continue;
        }
        return Err(HubError::new(
            400,
            IssueType::NotSupported,
            format!("unknown parameter {name:?}: $access-log takes date, _count, _before"),
        )
        .located_in(&name));
    }
    Ok(audit_query)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_narrow_by_prefix_and_precision() {
        let (query, _) = parse_search("date=ge2026-11-01&date=lt2026-11-02", 50).unwrap();
        let day = parse_range("2026-11-01", ZoneRule::AssumeUtc).unwrap();
        assert_eq!(query.since_us, Some(day.0));
        assert_eq!(query.until_us, Some(day.1 + 1));
        let (query, _) = parse_search("date=2026", 50).unwrap();
        let year = parse_range("2026", ZoneRule::AssumeUtc).unwrap();
        assert_eq!(
            (query.since_us, query.until_us),
            (Some(year.0), Some(year.1 + 1))
        );
        let error = parse_search("date=ne2026", 50).unwrap_err();
        assert_eq!(error.status, 400);
        assert!(parse_search("date=yesterday", 50).is_err());
    }

    #[test]
    fn parameters_are_strict() {
        let (query, patients) =
            parse_search("patient=Patient/a,b&agent=Practitioner/1&outcome=4&subtype=http://hl7.org/fhir/restful-interaction|read&_count=10", 50)
                .unwrap();
        assert_eq!(patients, ["a", "b"]);
        assert_eq!(query.agents, ["Practitioner/1"]);
        assert_eq!(query.outcomes, ["4"]);
        assert_eq!(query.subtypes, ["read"]);
        assert_eq!(query.limit, 10);
        for bad_query in [
            "name=smith",
            "patient=../x",
            "patient=a,",
            "patient=a&patient=b",
            "_count=1001",
            "_count=-1",
            "_before=x",
            "outcome=",
            "type=sys|",
        ] {
            let error = parse_search(bad_query, 50).unwrap_err();
            assert_eq!(error.status, 400, "{bad_query}");
        }
        let too_many = vec!["a"; MAX_AUDIT_PARAMETER_VALUES + 1].join(",");
        assert!(parse_search(&format!("patient={too_many}"), 50).is_err());
        assert!(parse_access_log("patient=x", 50).is_err());
        assert_eq!(parse_access_log("_count=5", 50).unwrap().limit, 5);
    }

    #[test]
    fn the_report_shows_kinds_of_data_not_other_patients() {
        let mut record = hygie_audit::AuditRecord::new("search-type", "Practitioner/7", 0)
            .entity("Observation/1/_history/1")
            .entity("Observation/2/_history/1")
            .entity("Encounter/5/_history/2");
        record.patients = vec!["me".to_owned(), "someone-else".to_owned()];
        record.roles = vec!["clinician".to_owned()];
        record.network_address = Some("10.1.2.3".to_owned());
        record.query = Some("code=1234".to_owned());
        record.purpose_of_use = Some(hygie_audit::PurposeOfUse::emergency("unconscious"));
        let hit = AuditHit {
            number: 9,
            recorded_us: 0,
            leaf: record.to_leaf(),
        };
        let names = BTreeMap::from([("Practitioner/7".to_owned(), "Anne Martin".to_owned())]);
        let line = report_line(&hit, &names).unwrap();
        assert_eq!(line.who, "Anne Martin");
        assert_eq!(line.roles, ["clinician"]);
        assert_eq!(line.what, ["Encounter", "Observation"]);
        assert!(line.emergency);
        assert_eq!(line.why.as_deref(), Some("ETREAT: unconscious"));
        let shown = serde_json::to_string(&report_event("me", &line)).unwrap();
        for hidden in [
            "someone-else",
            "10.1.2.3",
            "Observation/1",
            "code=1234",
            "Y29kZT0xMjM0",
        ] {
            assert!(!shown.contains(hidden), "{hidden} leaked: {shown}");
        }
        assert!(shown.contains("Patient/me"));
        assert!(shown.contains("ETREAT"));
    }

    proptest::proptest! {
        /// Whatever a client sends, parsing answers a query within its bounds or a 400,
        /// and never panics.
        #[test]
        fn any_query_is_bounded_or_refused(query in "[a-z_:|,./0-9=&%-]{0,200}") {
            match parse_search(&query, 50) {
                Ok((parsed, patients)) => {
                    proptest::prop_assert!(parsed.limit >= 1 && parsed.limit <= MAX_AUDIT_PAGE);
                    for list in [&parsed.patients, &parsed.agents, &parsed.event_types,
                                 &parsed.subtypes, &parsed.outcomes, &parsed.purposes] {
                        proptest::prop_assert!(list.len() <= MAX_AUDIT_PARAMETER_VALUES);
                        proptest::prop_assert!(list.iter().all(|v| !v.is_empty()));
                    }
                    proptest::prop_assert!(patients.iter().all(|p| crate::resource::is_valid_id(p)));
                }
                Err(error) => proptest::prop_assert_eq!(error.status, 400),
            }
            if let Err(error) = parse_access_log(&query, 50) {
                proptest::prop_assert_eq!(error.status, 400);
            }
        }
    }

    #[test]
    fn names_are_read_from_human_names() {
        assert_eq!(
            human_name(&json!({"given": ["Anne", "Marie"], "family": "Martin", "prefix": ["Dr"]})),
            Some("Dr Anne Marie Martin".to_owned())
        );
        assert_eq!(
            human_name(&json!({"text": "A. Martin"})),
            Some("A. Martin".to_owned())
        );
        assert_eq!(human_name(&json!({})), None);
    }
}
