//! Need-to-know: the patients a caller may see, found inside the access's own unit (so a
//! relationship ended, or a grant closed, holds from the next request on), and where that
//! limit applies: searches and their totals, includes, `_has` and chains, reads, writes.
//!
//! A practitioner has a care relationship with a patient through:
//! - an encounter of the patient in which they (or one of their PractitionerRoles) take
//!   part, current or ended within the window (`Encounter.participant`);
//! - a care team of the patient they belong to, not inactive, whose period (if any) has
//!   not ended before the window;
//! - an encounter of the patient in their department: the organization or location of one
//!   of their active PractitionerRoles (`Encounter.serviceProvider`, `Encounter.location`);
//! - an open break-the-glass grant (any subject).

use std::collections::BTreeSet;

use hygie_fhir::IssueType;
use hygie_policy::{CareOf, CheckedRead, Mask};
use hygie_store::{Filter, RangeOp, SearchSpec, StoreError, Test, Tx};

use crate::HubError;
use crate::search::patient_compartment;

/// Encounters (or care teams, or roles) one source of relationships may contribute: a
/// department busier than this within the window is cut off, and logged.
pub const MAX_CARE_SOURCES: usize = 20_000;
/// Patients one caller may be in a care relationship with at once.
pub const MAX_CARE_PATIENTS: usize = 10_000;

const MICROS_PER_DAY: i64 = 86_400 * 1_000_000;

/// How long a caller's set of patients in care is reused by its next searches. A new
/// relationship (an admission) is seen at most this late, an ended one kept at most this
/// long; a grant this process opens is seen at once (`CareCache::forget`).
pub const CARE_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(5);
/// Callers whose sets are kept at most.
pub const CARE_CACHE_ENTRIES: usize = 10_000;

/// Recently found sets of patients in care, by subject: a search by a clinician of a busy
/// department costs tens of milliseconds to find them (measured), a lookup nothing.
#[derive(Default)]
pub(crate) struct CareCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, CachedCare>>,
    /// Whether (subject, patient) is in care, for reads by id: a clinician reads many
    /// resources of the same few patients.
    pairs:
        std::sync::Mutex<std::collections::HashMap<(String, String), (std::time::Instant, bool)>>,
}

/// (subject, patient) answers kept at most.
pub const CARE_PAIR_ENTRIES: usize = 100_000;

/// When a subject's set was found, and the set.
type CachedCare = (std::time::Instant, std::sync::Arc<Vec<String>>);

impl CareCache {
    fn get(&self, subject: &str) -> Option<std::sync::Arc<Vec<String>>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(subject)
            .filter(|(found, _)| found.elapsed() < CARE_CACHE_TTL)
            .map(|(_, patients)| patients.clone())
    }

    fn put(&self, subject: &str, patients: std::sync::Arc<Vec<String>>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CARE_CACHE_ENTRIES {
            entries.retain(|_, (found, _)| found.elapsed() < CARE_CACHE_TTL);
            if entries.len() >= CARE_CACHE_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(subject.to_owned(), (std::time::Instant::now(), patients));
    }

    /// Drops what is kept of a subject: its next access finds it again (a grant was just
    /// opened).
    pub(crate) fn forget(&self, subject: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(subject);
        self.pairs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(who, _), _| who != subject);
    }

    /// Whether `subject` may see `patient`, from the cache or found (and kept).
    fn pair(
        &self,
        tx: &mut dyn Tx,
        subject: &str,
        window_days: u32,
        now_us: i64,
        patient: &str,
    ) -> Result<bool, StoreError> {
        let key = (subject.to_owned(), patient.to_owned());
        if let Some((found, open)) = self
            .pairs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            && found.elapsed() < CARE_CACHE_TTL
        {
            return Ok(*open);
        }
        let open = in_care(tx, subject, window_days, now_us, patient)?;
        let mut pairs = self.pairs.lock().unwrap_or_else(|e| e.into_inner());
        if pairs.len() >= CARE_PAIR_ENTRIES {
            pairs.retain(|_, (found, _)| found.elapsed() < CARE_CACHE_TTL);
            if pairs.len() >= CARE_PAIR_ENTRIES {
                pairs.clear();
            }
        }
        pairs.insert(key, (std::time::Instant::now(), open));
        Ok(open)
    }
}

/// What an access needs to know of the caller's patients in care.
pub(crate) enum Reach<'a> {
    /// A search or `$everything`: the whole set.
    Set,
    /// A read of one resource: whether its patients are in care (cached).
    One(&'a str, &'a str),
    /// A write: looked up when checked (what it writes is only known then).
    Later,
}

/// Finds what the access needs of a need-to-know limit (see [`Reach`]).
pub(crate) fn resolve(
    tx: &mut dyn Tx,
    mask: &mut Mask,
    cache: &CareCache,
    reach: Reach<'_>,
    now_us: i64,
) -> Result<(), StoreError> {
    let Some(care) = &mut mask.care_of else {
        return Ok(());
    };
    if care.patients.is_some() {
        return Ok(());
    }
    match reach {
        Reach::Later => {}
        Reach::Set => {
            let patients = match cache.get(&care.subject) {
                Some(patients) => patients,
                None => {
                    let found = std::sync::Arc::new(care_patients(
                        tx,
                        &care.subject,
                        care.window_days,
                        now_us,
                    )?);
                    cache.put(&care.subject, found.clone());
                    found
                }
            };
            care.patients = Some(patients.as_ref().clone());
        }
        Reach::One(resource_type, id) => {
            if care.open_types.iter().any(|t| t == resource_type) || !is_patient_data(resource_type)
            {
                return Ok(());
            }
            // The patients of this resource that are in care: all the read checks. A
            // resource of no patient is not patient data (open).
            let patients = patients_of(tx, resource_type, id)?;
            let mut open = patients.is_empty();
            let mut in_care = Vec::new();
            for patient in &patients {
                if cache.pair(tx, &care.subject, care.window_days, now_us, patient)? {
                    open = true;
                    in_care.push(patient.clone());
                }
            }
            care.patients = Some(in_care);
            care.checked = Some(CheckedRead {
                resource_type: resource_type.to_owned(),
                id: id.to_owned(),
                in_care: open,
                patients,
            });
        }
    }
    Ok(())
}

/// The patients `subject` may see at `now_us`, sorted.
pub(crate) fn care_patients(
    tx: &mut dyn Tx,
    subject: &str,
    window_days: u32,
    now_us: i64,
) -> Result<Vec<String>, StoreError> {
    find_patients(tx, subject, window_days, now_us, None)
}

/// Whether `subject` may see `patient`'s data at `now_us`: the same relationships, each
/// looked up for this one patient (a read does not need the whole set).
pub(crate) fn in_care(
    tx: &mut dyn Tx,
    subject: &str,
    window_days: u32,
    now_us: i64,
    patient: &str,
) -> Result<bool, StoreError> {
    Ok(!find_patients(tx, subject, window_days, now_us, Some(patient))?.is_empty())
}

/// The patients `subject` may see, or (`only`) whether it may see that one.
fn find_patients(
    tx: &mut dyn Tx,
    subject: &str,
    window_days: u32,
    now_us: i64,
    only: Option<&str>,
) -> Result<Vec<String>, StoreError> {
    let mut patients: BTreeSet<String> = tx
        .break_glass_patients(subject, now_us)?
        .into_iter()
        .filter(|patient| only.is_none_or(|p| p == patient))
        .collect();
    if only.is_some() && !patients.is_empty() {
        return Ok(patients.into_iter().collect());
    }
    // With `only`, every source is looked up for that patient alone, and that filter comes
    // first: the store drives a query by its first most selective filter.
    let of_patient = || {
        only.map(|patient| Filter::Match {
            param: "subject".to_owned(),
            tests: vec![Test::Reference {
                target_type: Some("Patient".to_owned()),
                target_id: patient.to_owned(),
            }],
            negate: false,
        })
    };
    if let Some(practitioner) = subject.strip_prefix("Practitioner/") {
        let cutoff = now_us.saturating_sub(i64::from(window_days) * MICROS_PER_DAY);
        let recent = || Filter::Match {
            param: "date".to_owned(),
            tests: vec![Test::Date {
                op: RangeOp::Ge,
                low: cutoff,
                high: cutoff,
            }],
            negate: false,
        };
        let reference = |target_type: &str, id: &str| Test::Reference {
            target_type: Some(target_type.to_owned()),
            target_id: id.to_owned(),
        };
        let roles = ids_of(
            tx,
            "PractitionerRole",
            vec![
                Filter::Match {
                    param: "practitioner".to_owned(),
                    tests: vec![reference("Practitioner", practitioner)],
                    negate: false,
                },
                Filter::Match {
                    param: "active".to_owned(),
                    tests: vec![Test::Token {
                        system: None,
                        code: Some("false".to_owned()),
                    }],
                    negate: true,
                },
            ],
        )?;
        let mut as_participant = vec![reference("Practitioner", practitioner)];
        as_participant.extend(roles.iter().map(|role| reference("PractitionerRole", role)));
        let encounters = ids_of(
            tx,
            "Encounter",
            of_patient()
                .into_iter()
                .chain(vec![
                    Filter::Match {
                        param: "participant".to_owned(),
                        tests: as_participant.clone(),
                        negate: false,
                    },
                    recent(),
                ])
                .collect(),
        )?;
        patients.extend(subjects(tx, "Encounter", &encounters)?);
        let teams = ids_of(
            tx,
            "CareTeam",
            of_patient()
                .into_iter()
                .chain(vec![
                    Filter::Match {
                        param: "participant".to_owned(),
                        tests: as_participant,
                        negate: false,
                    },
                    Filter::Match {
                        param: "status".to_owned(),
                        tests: ["inactive", "entered-in-error"]
                            .iter()
                            .map(|code| Test::Token {
                                system: None,
                                code: Some((*code).to_owned()),
                            })
                            .collect(),
                        negate: true,
                    },
                    // A team with no period, or one still open, is current: no period ended
                    // before the cutoff.
                    Filter::Match {
                        param: "date".to_owned(),
                        tests: vec![Test::Date {
                            op: RangeOp::Eb,
                            low: cutoff,
                            high: cutoff,
                        }],
                        negate: true,
                    },
                ])
                .collect(),
        )?;
        patients.extend(subjects(tx, "CareTeam", &teams)?);
        if !roles.is_empty() {
            for (param, via, target_type) in [
                ("service-provider", "organization", "Organization"),
                ("location", "location", "Location"),
            ] {
                let places: Vec<Test> = tx
                    .references_from("PractitionerRole", &roles, Some(via), MAX_CARE_SOURCES)?
                    .into_iter()
                    .filter(|(ty, _)| ty == target_type)
                    .map(|(ty, id)| reference(&ty, &id))
                    .collect();
                if places.is_empty() {
                    continue;
                }
                let in_department = ids_of(
                    tx,
                    "Encounter",
                    of_patient()
                        .into_iter()
                        .chain(vec![
                            Filter::Match {
                                param: param.to_owned(),
                                tests: places,
                                negate: false,
                            },
                            recent(),
                        ])
                        .collect(),
                )?;
                patients.extend(subjects(tx, "Encounter", &in_department)?);
            }
        }
    }
    if patients.len() > MAX_CARE_PATIENTS {
        tracing::warn!(
            subject,
            found = patients.len(),
            limit = MAX_CARE_PATIENTS,
            "more care relationships than the limit: the rest are not opened"
        );
    }
    Ok(patients.into_iter().take(MAX_CARE_PATIENTS).collect())
}

/// Ids of current `resource_type` resources passing `filters`, at most `MAX_CARE_SOURCES`.
fn ids_of(
    tx: &mut dyn Tx,
    resource_type: &str,
    filters: Vec<Filter>,
) -> Result<Vec<String>, StoreError> {
    let hits = tx.search(&SearchSpec {
        resource_type: resource_type.to_owned(),
        filters,
        sort: Vec::new(),
        position: None,
        limit: MAX_CARE_SOURCES + 1,
    })?;
    if hits.len() > MAX_CARE_SOURCES {
        tracing::warn!(
            resource_type,
            limit = MAX_CARE_SOURCES,
            "more care relationship sources than the limit: the rest are not looked at"
        );
    }
    Ok(hits
        .into_iter()
        .take(MAX_CARE_SOURCES)
        .map(|hit| hit.id)
        .collect())
}

/// The patients `resource_type` resources `ids` are about (their `subject`).
fn subjects(
    tx: &mut dyn Tx,
    resource_type: &str,
    ids: &[String],
) -> Result<Vec<String>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(tx
        .references_from(resource_type, ids, Some("subject"), MAX_CARE_PATIENTS + 1)?
        .into_iter()
        .filter(|(ty, _)| ty == "Patient")
        .map(|(_, id)| id)
        .collect())
}

/// The patients of the limit, when it applies to `resource_type`: a type of the patient
/// compartment (or Patient itself) that is not open.
pub(crate) fn limit_for<'a>(mask: &'a Mask, resource_type: &str) -> Option<&'a [String]> {
    let care: &CareOf = mask.care_of.as_ref()?;
    if care.open_types.iter().any(|t| t == resource_type) || !is_patient_data(resource_type) {
        return None;
    }
    Some(care.patients.as_deref().unwrap_or(&[]))
}

/// Whether resources of this type belong to patients' compartments.
pub(crate) fn is_patient_data(resource_type: &str) -> bool {
    resource_type == "Patient"
        || patient_compartment()
            .get(resource_type)
            .is_some_and(|params| !params.is_empty())
}

/// The filter keeping `resource_type` resources of `patients` only.
pub(crate) fn care_filter(resource_type: &str, patients: &[String]) -> Filter {
    if resource_type == "Patient" {
        return Filter::Ids(patients.to_vec());
    }
    Filter::Compartment {
        params: patient_compartment()
            .get(resource_type)
            .cloned()
            .unwrap_or_default(),
        target_type: "Patient".to_owned(),
        target_ids: patients.to_vec(),
    }
}

/// Whether the current `resource_type/id` passes every one of `filters` (one indexed
/// lookup: the id drives).
pub(crate) fn passes(
    tx: &mut dyn Tx,
    resource_type: &str,
    id: &str,
    mut filters: Vec<Filter>,
) -> Result<bool, StoreError> {
    filters.insert(0, Filter::Ids(vec![id.to_owned()]));
    Ok(!tx
        .search(&SearchSpec {
            resource_type: resource_type.to_owned(),
            filters,
            sort: Vec::new(),
            position: None,
            limit: 1,
        })?
        .is_empty())
}

/// The filter that hides resources carrying a security label the caller may not see.
pub(crate) fn label_filter(mask: &Mask) -> Option<Filter> {
    if mask.hidden_labels.is_empty() {
        return None;
    }
    Some(Filter::Match {
        param: "_security".to_owned(),
        tests: mask
            .hidden_labels
            .iter()
            .map(|label| Test::Token {
                system: Some(label.system.to_owned()),
                code: Some(label.code.to_owned()),
            })
            .collect(),
        negate: true,
    })
}

/// Adds the caller's limits (need-to-know, hidden security labels) to a search of
/// `resource_type`, and to what its `_has` and chains look at: a hidden resource must not
/// decide what a search finds.
pub(crate) fn limit_filters(mask: &Mask, resource_type: &str, filters: &mut Vec<Filter>) {
    if mask.care_of.is_none() && mask.hidden_labels.is_empty() && mask.patient_compartment.is_none()
    {
        return;
    }
    for filter in filters.iter_mut() {
        let (inner_type, inner) = match filter {
            Filter::Has {
                source_type, inner, ..
            } => (source_type.clone(), inner),
            Filter::Chain {
                target_type, inner, ..
            } => (target_type.clone(), inner),
            _ => continue,
        };
        limit_filters(mask, &inner_type, inner);
        // A patient/ scope: what `_has` and chains look at stays in the compartment too.
        if let Some(patient) = &mask.patient_compartment
            && is_patient_data(&inner_type)
        {
            inner.push(crate::search::compartment_filter(
                &inner_type,
                "Patient",
                patient,
            ));
        }
    }
    if let Some(patients) = limit_for(mask, resource_type) {
        filters.push(care_filter(resource_type, patients));
    }
    filters.extend(label_filter(mask));
}

/// Whether a stored version's body carries a label the caller may not see (history pages
/// show past versions, whose labels may differ from the current one's).
pub(crate) fn has_hidden_label(mask: &Mask, body: &[u8]) -> bool {
    if mask.hidden_labels.is_empty() || body.is_empty() {
        return false;
    }
    // Most resources carry no label: a body without the key `"security"` (stored bodies
    // are our own serializer's, which writes keys unescaped; a `\u` escape anywhere sends
    // the body to the full parse) has none, and is not parsed.
    if memchr::memmem::find(body, br#""security""#).is_none()
        && memchr::memmem::find(body, br"\u").is_none()
    {
        return false;
    }
    #[derive(serde::Deserialize)]
    struct Labelled {
        meta: Option<Meta>,
    }
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(default)]
        security: Vec<Coding>,
    }
    #[derive(serde::Deserialize)]
    struct Coding {
        system: Option<String>,
        code: Option<String>,
    }
    let Ok(labelled) = serde_json::from_slice::<Labelled>(body) else {
        // A body that does not parse is not shown to a limited caller.
        return true;
    };
    labelled.meta.is_some_and(|meta| {
        meta.security.iter().any(|coding| {
            mask.hidden_labels.iter().any(|label| {
                coding.system.as_deref() == Some(label.system)
                    && coding.code.as_deref() == Some(label.code)
            })
        })
    })
}

/// Which of `ids` (of `resource_type`) the caller's limits (need-to-know, a `patient/`
/// scope's compartment, hidden security labels) let through, in their order.
pub(crate) fn visible_ids(
    tx: &mut dyn Tx,
    mask: &Mask,
    resource_type: &str,
    ids: Vec<String>,
) -> Result<Vec<String>, StoreError> {
    let mut filters: Vec<Filter> = label_filter(mask).into_iter().collect();
    if let Some(patients) = limit_for(mask, resource_type) {
        filters.push(care_filter(resource_type, patients));
    }
    if let Some(patient) = &mask.patient_compartment
        && is_patient_data(resource_type)
    {
        filters.push(crate::search::compartment_filter(
            resource_type,
            "Patient",
            patient,
        ));
    }
    if filters.is_empty() || ids.is_empty() {
        return Ok(ids);
    }
    filters.push(Filter::Ids(ids.clone()));
    let visible: BTreeSet<String> = tx
        .search(&SearchSpec {
            resource_type: resource_type.to_owned(),
            filters,
            sort: Vec::new(),
            position: None,
            limit: ids.len() + 1,
        })?
        .into_iter()
        .map(|hit| hit.id)
        .collect();
    Ok(ids.into_iter().filter(|id| visible.contains(id)).collect())
}

/// Refuses `resource_type/id` when the caller may not see it: answered as unknown when it
/// carries a hidden security label (its existence is not told), refused when it is the
/// data of a patient out of care. A resource of no patient, or one that does not exist,
/// passes (and is answered as such).
pub(crate) fn check_visible(
    tx: &mut dyn Tx,
    mask: &Mask,
    resource_type: &str,
    id: &str,
) -> Result<Result<(), HubError>, StoreError> {
    if let Some(labels) = label_filter(mask) {
        let visible = passes(tx, resource_type, id, vec![labels])?;
        // `current`, not `head`: this runs in read units too, where nothing may be locked.
        if !visible
            && tx
                .current(resource_type, id)?
                .is_some_and(|record| !record.deleted)
        {
            return Ok(Err(HubError::not_found(format!(
                "{resource_type}/{id} is not known"
            ))));
        }
    }
    if let Err(refusal) = check_constraints(tx, mask, resource_type, id)? {
        return Ok(Err(refusal));
    }
    check_care(tx, mask, resource_type, id)
}

/// Refuses `resource_type/id` when it is the data of a patient out of care (what a write
/// produced is checked with this: a caller may label what it writes beyond its own sight).
pub(crate) fn check_care(
    tx: &mut dyn Tx,
    mask: &Mask,
    resource_type: &str,
    id: &str,
) -> Result<Result<(), HubError>, StoreError> {
    let Some(care) = &mask.care_of else {
        return Ok(Ok(()));
    };
    if limit_for(mask, resource_type).is_none() {
        return Ok(Ok(()));
    }
    if let Some(checked) = &care.checked
        && checked.in_care
        && checked.resource_type == resource_type
        && checked.id == id
    {
        return Ok(Ok(()));
    }
    let patients = patients_of(tx, resource_type, id)?;
    let Some(first) = patients.first() else {
        return Ok(Ok(()));
    };
    for patient in &patients {
        let open = match &care.patients {
            Some(found) => found.contains(patient),
            None => in_care(tx, &care.subject, care.window_days, now(), patient)?,
        };
        if open {
            return Ok(Ok(()));
        }
    }
    Ok(Err(no_relationship(&format!("Patient/{first}"))))
}

fn now() -> i64 {
    crate::instant::now_us()
}

/// The refusal of an access to a patient without a care relationship.
pub(crate) fn no_relationship(patient: &str) -> HubError {
    HubError::new(
        403,
        IssueType::Forbidden,
        format!(
            "no care relationship with {patient}: in an emergency, repeat the request with the header X-Break-Glass-Reason: <why>; the access will be recorded and reviewed"
        ),
    )
}

/// The patients whose compartment `resource_type/id` belongs to (its own id for a
/// Patient that exists).
pub(crate) fn patients_of(
    tx: &mut dyn Tx,
    resource_type: &str,
    id: &str,
) -> Result<Vec<String>, StoreError> {
    if resource_type == "Patient" {
        return Ok(match tx.current("Patient", id)? {
            Some(record) if !record.deleted => vec![id.to_owned()],
            _ => Vec::new(),
        });
    }
    let Some(params) = patient_compartment().get(resource_type) else {
        return Ok(Vec::new());
    };
    tx.referenced_through(resource_type, id, params, "Patient")
}

/// Refuses a history across resources (of a type, or of the system) under the limit: its
/// versions belong to many patients, including ones outside it.
pub(crate) fn refuse_wide_history(
    mask: &Mask,
    resource_type: Option<&str>,
) -> Result<(), HubError> {
    let limited = match resource_type {
        Some(resource_type) => limit_for(mask, resource_type).is_some(),
        None => mask.care_of.is_some(),
    };
    if !mask.query_constraints.is_empty() {
        return Err(HubError::new(
            403,
            IssueType::Forbidden,
            "a history across resources is not open to a query-constrained scope: ask for one resource's history",
        ));
    }
    if limited {
        return Err(HubError::new(
            403,
            IssueType::Forbidden,
            "a history across patients is not open to need-to-know roles: ask for one resource's history",
        ));
    }
    Ok(())
}

/// The filters a mask's query-constrained scopes put on `resource_type` resources: each
/// group (the token's scopes, a role's ceiling) must match one of its constraints. A group
/// of several constraints is expressible when they all constrain the same single
/// parameter (its values ORed); other combinations are refused rather than half-applied.
pub(crate) fn constraint_filters(
    mask: &Mask,
    resource_type: &str,
) -> Result<Vec<Filter>, HubError> {
    let mut filters = Vec::new();
    for group in &mask.query_constraints {
        let pairs: Vec<(String, String)> = match group.as_slice() {
            [one] => one.params().to_vec(),
            several => {
                let name = several[0].params().first().map(|(name, _)| name.clone());
                let single = several
                    .iter()
                    .all(|c| c.params().len() == 1 && Some(&c.params()[0].0) == name.as_ref());
                let (Some(name), true) = (name, single) else {
                    return Err(HubError::new(
                        403,
                        IssueType::Forbidden,
                        "these query-constrained scopes combine several parameters in alternatives, which this server does not apply: ask for one query per type",
                    ));
                };
                let values: Vec<&str> = several.iter().map(|c| c.params()[0].1.as_str()).collect();
                vec![(name, values.join(","))]
            }
        };
        let options = hygie_fhir::search::query::QueryOptions {
            strict: true,
            ..Default::default()
        };
        let request = hygie_fhir::search::query::parse(resource_type, &pairs, &options).map_err(|issues| {
            HubError::new(
                403,
                IssueType::Forbidden,
                format!(
                    "the token's query-constrained scope on {resource_type} cannot be applied: {}",
                    issues
                        .first()
                        .map(|issue| issue.diagnostics.clone())
                        .unwrap_or_default()
                ),
            )
        })?;
        let only_filters = request.sort.is_empty()
            && request.include.is_empty()
            && request.revinclude.is_empty()
            && request.summary.is_none()
            && request.elements.is_empty();
        if !only_filters {
            return Err(HubError::new(
                403,
                IssueType::Forbidden,
                "a query-constrained scope may only filter (no _sort, _include, _summary, _elements)",
            ));
        }
        for filter in &request.filters {
            filters.push(crate::search::store_filter(filter, "")?);
        }
    }
    Ok(filters)
}

/// Refuses `resource_type/id` when it exists and a query-constrained scope does not match
/// it.
pub(crate) fn check_constraints(
    tx: &mut dyn Tx,
    mask: &Mask,
    resource_type: &str,
    id: &str,
) -> Result<Result<(), HubError>, StoreError> {
    if mask.query_constraints.is_empty() {
        return Ok(Ok(()));
    }
    let filters = match constraint_filters(mask, resource_type) {
        Ok(filters) => filters,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let matches = passes(tx, resource_type, id, filters)?;
    if matches
        || tx
            .current(resource_type, id)?
            .is_none_or(|record| record.deleted)
    {
        return Ok(Ok(()));
    }
    Ok(Err(HubError::new(
        403,
        IssueType::Forbidden,
        format!("{resource_type}/{id} is outside the token's query-constrained scope"),
    )))
}

/// Under a `patient/` scope, a write may only touch resources of the token's patient's
/// compartment: what it replaces (before) and what it wrote (after). A resource that does
/// not exist (yet, or any more) passes.
pub(crate) fn check_compartment_write(
    tx: &mut dyn Tx,
    mask: &Mask,
    resource_type: &str,
    id: &str,
) -> Result<Result<(), HubError>, StoreError> {
    let Some(patient) = &mask.patient_compartment else {
        return Ok(Ok(()));
    };
    if tx
        .current(resource_type, id)?
        .is_none_or(|record| record.deleted)
    {
        return Ok(Ok(()));
    }
    let compartment = crate::search::compartment_filter(resource_type, "Patient", patient);
    let inside = passes(tx, resource_type, id, vec![compartment])?;
    if inside || !is_patient_data(resource_type) {
        return Ok(Ok(()));
    }
    Ok(Err(HubError::new(
        403,
        IssueType::Forbidden,
        format!(
            "{resource_type}/{id} is not in the compartment of the token's patient (Patient/{patient})"
        ),
    )))
}

#[cfg(test)]
mod tests {
    use super::has_hidden_label;
    use hygie_policy::{Mask, PROTECTED_LABELS};

    #[test]
    fn hidden_labels_are_found_by_the_quick_look_and_by_the_full_parse() {
        let mask = Mask {
            hidden_labels: PROTECTED_LABELS.to_vec(),
            ..Mask::default()
        };
        let labelled = br#"{"resourceType":"Observation","meta":{"security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"PSY"}]}}"#;
        assert!(has_hidden_label(&mask, labelled));
        // The key written with an escape: the quick look cannot see it, the parse does.
        let escaped = br#"{"resourceType":"Observation","meta":{"securit\u0079":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"PSY"}]}}"#;
        assert!(has_hidden_label(&mask, escaped));
        let unlabelled =
            br#"{"resourceType":"Observation","note":[{"text":"security guard present"}]}"#;
        assert!(!has_hidden_label(&mask, unlabelled));
        let other_label = br#"{"resourceType":"Observation","meta":{"security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-Confidentiality","code":"N"}]}}"#;
        assert!(!has_hidden_label(&mask, other_label));
        // Nothing hidden: nothing to look for.
        assert!(!has_hidden_label(&Mask::default(), labelled));
    }
}
