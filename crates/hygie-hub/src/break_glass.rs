//! Breaking the glass: a clinician without a care relationship opens one patient's record
//! in an emergency, with a reason. The grant lasts a bounded window, every access under it
//! is recorded as emergency treatment (`ETREAT`), and each grant is a review item that the
//! DPO lists and closes.

use hygie_audit::{AuditOutcome, AuditRecord, PurposeOfUse};
use hygie_fhir::IssueType;
use hygie_policy::{Action, Decision, DenyReason, Mask, Target};
use hygie_store::{BreakGlassGrant, NewBreakGlass, StoreExt};

use crate::instant::now_us;
use crate::pipeline::Access;
use crate::{Caller, Hub, HubError};

/// The longest reason accepted, in characters: a sentence, not a document.
pub const MAX_BREAK_GLASS_REASON_CHARS: usize = 500;
/// The most review items one listing returns.
pub const MAX_REVIEW_ITEMS: usize = 1_000;

/// What a request reaches, to find the one patient a broken glass opens.
pub(crate) struct BreakGlassReach {
    target: Target,
    query: Option<String>,
    patient_hint: Option<String>,
}

impl BreakGlassReach {
    pub(crate) fn of(access: &Access<'_>) -> Option<BreakGlassReach> {
        access.caller.break_glass.as_ref()?;
        Some(BreakGlassReach {
            target: access.target.clone(),
            query: access.query.clone(),
            patient_hint: access.patient_hint.clone(),
        })
    }
}

impl Hub {
    /// When the caller gave a reason to break the glass and the access is limited by
    /// need-to-know: opens the patient the request is about, unless a care relationship
    /// already does. Recorded on its own, before the access itself.
    pub(crate) async fn break_glass_if_asked(
        &self,
        caller: &Caller,
        mask: &Mask,
        reach: Option<BreakGlassReach>,
    ) -> Result<(), HubError> {
        let (Some(reach), Some(care), Some(reason)) = (reach, &mask.care_of, &caller.break_glass)
        else {
            return Ok(());
        };
        let reason = check_reason(reason)?;
        let mut record = AuditRecord::new(
            Action::BreakGlass.interaction_code(),
            &caller.principal.subject,
            now_us(),
        );
        record.network_address = caller.network_address.clone();
        record.request_id = Some(caller.request_id.clone());
        record.purpose_of_use = Some(PurposeOfUse::emergency(&reason));
        record.roles = caller
            .principal
            .access
            .as_ref()
            .map(|access| access.roles.clone())
            .unwrap_or_default();
        if let Decision::Deny { reason } =
            self.policy()
                .decide(&caller.principal, Action::BreakGlass, &Target::system())
        {
            let error = match reason {
                DenyReason::Unauthenticated => HubError::new(
                    401,
                    IssueType::Login,
                    "authentication required: send Authorization: Bearer <token>",
                ),
                DenyReason::Forbidden(why) => HubError::new(403, IssueType::Forbidden, why),
            };
            record.outcome = AuditOutcome::from_status(error.status);
            record.outcome_description = Some(error.to_string());
            self.append_record(record).await?;
            return Err(error);
        }
        let subject = care.subject.clone();
        let window_days = care.window_days;
        let hours = self.policy().need_to_know().break_glass_hours;
        let request_id = caller.request_id.clone();
        let cache = self.inner.care_cache.clone();
        let outcome = self
            .inner
            .store
            .run(move |tx| {
                let now = now_us();
                let patients = patients_reached(tx, &reach)?;
                let result = match patients.as_slice() {
                    [patient] if tx.head("Patient", patient)?.is_none_or(|head| head.deleted) => {
                        record.entities.push(format!("Patient/{patient}"));
                        Err(HubError::not_found(format!(
                            "Patient/{patient} is not known: there is no record to open"
                        )))
                    }
                    [patient] => {
                        record.entities.push(format!("Patient/{patient}"));
                        let in_care = crate::care::care_patients(tx, &subject, window_days, now)?
                            .contains(patient);
                        if in_care {
                            record.outcome_description = Some(
                                "a care relationship or an open grant already opens this patient"
                                    .to_owned(),
                            );
                        } else {
                            let until_us = now + i64::from(hours) * 3_600_000_000;
                            let grant_id = tx.open_break_glass(&NewBreakGlass {
                                subject: &subject,
                                patient,
                                reason: &reason,
                                opened_us: now,
                                until_us,
                                request_id: &request_id,
                            })?;
                            cache.forget(&subject);
                            record.outcome_description = Some(format!(
                                "grant {grant_id} opened until {}",
                                crate::instant::format_instant(until_us)
                            ));
                        }
                        Ok(())
                    }
                    [] => Err(HubError::bad_request(
                        "breaking the glass opens one patient, and this request names none: ask for a resource of theirs, or search with patient=… (or subject=…), or their compartment",
                    )),
                    _ => Err(HubError::bad_request(
                        "breaking the glass opens one patient, and this request is about several: name one",
                    )),
                };
                if let Err(error) = &result {
                    record.outcome = AuditOutcome::from_status(error.status);
                    record.outcome_description = Some(error.to_string());
                }
                record.patients = patients;
                crate::audit_trail::append(tx, &record)?;
                Ok(result)
            })
            .await
            .map_err(HubError::from_store)?;
        // Again once committed: a search racing the grant may have cached the set without it.
        self.inner.care_cache.forget(&care.subject);
        outcome
    }

    /// The patients `subject` may see now through need-to-know (care relationships and
    /// open grants): what a reviewer checks when an access is questioned.
    pub async fn patients_in_care(
        &self,
        caller: &Caller,
        subject: &str,
    ) -> Result<Vec<String>, HubError> {
        let subject_owned = subject.to_owned();
        let window_days = self.policy().need_to_know().window_days;
        let patients = self
            .perform_read(
                review_access(caller, &format!("care-of={subject}")),
                move |tx, _| {
                    let patients =
                        crate::care::care_patients(tx, &subject_owned, window_days, now_us())?;
                    Ok(Ok(PatientList(patients)))
                },
            )
            .await?;
        Ok(patients.0)
    }

    /// Break-the-glass grants awaiting review (all of them with `all`), newest first.
    pub async fn break_glass_reviews(
        &self,
        caller: &Caller,
        all: bool,
    ) -> Result<Vec<BreakGlassGrant>, HubError> {
        let grants = self
            .perform_read(
                review_access(caller, if all { "all" } else { "open" }),
                move |tx, _| {
                    Ok(Ok(ReviewItems(
                        tx.break_glass_grants(all, MAX_REVIEW_ITEMS)?,
                    )))
                },
            )
            .await?;
        Ok(grants.0)
    }

    /// Closes the review of grant `grant_id` with the reviewer's conclusion. The grant
    /// runs its window (revoking the subject stops it at once). 404 when there is no such
    /// open review.
    pub async fn close_break_glass(
        &self,
        caller: &Caller,
        grant_id: i64,
        review: &str,
    ) -> Result<(), HubError> {
        let review = check_reason(review).map_err(|_| {
            HubError::bad_request(format!(
                "a review needs a conclusion: 1 to {MAX_BREAK_GLASS_REASON_CHARS} characters, no control characters"
            ))
        })?;
        let closed_by = caller.principal.subject.clone();
        self.perform(
            review_access(caller, &format!("close={grant_id}")),
            move |tx, _| {
                if tx.close_break_glass(grant_id, &closed_by, &review, now_us())? {
                    Ok(Ok(ReviewItems(Vec::new())))
                } else {
                    Ok(Err(HubError::not_found(format!(
                        "no break-the-glass grant {grant_id} awaits review"
                    ))))
                }
            },
        )
        .await
        .map(|_| ())
    }
}

fn review_access<'a>(caller: &'a Caller, what: &str) -> Access<'a> {
    Access {
        caller,
        action: Action::ReviewBreakGlass,
        target: Target::system(),
        query: Some(what.to_owned()),
        patient_hint: None,
    }
}

struct ReviewItems(Vec<BreakGlassGrant>);

struct PatientList(Vec<String>);

impl crate::pipeline::Audited for PatientList {
    fn audit_entities(&self) -> Vec<String> {
        Vec::new()
    }
}

impl crate::pipeline::Audited for ReviewItems {
    fn audit_entities(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|grant| format!("Patient/{}", grant.patient))
            .collect()
    }
}

/// A reason (or a review's conclusion): trimmed, not empty, bounded, printable.
fn check_reason(reason: &str) -> Result<String, HubError> {
    let reason = reason.trim();
    if reason.is_empty()
        || reason.chars().count() > MAX_BREAK_GLASS_REASON_CHARS
        || reason.chars().any(char::is_control)
    {
        return Err(HubError::bad_request(format!(
            "X-Break-Glass-Reason must say why, in 1 to {MAX_BREAK_GLASS_REASON_CHARS} characters without control characters"
        )));
    }
    Ok(reason.to_owned())
}

/// The patients a request is about: its compartment, the patient it reads, the patient
/// of the resource it reads or changes, or the `patient`/`subject` its search names.
fn patients_reached(
    tx: &mut dyn hygie_store::Tx,
    reach: &BreakGlassReach,
) -> Result<Vec<String>, hygie_store::StoreError> {
    if let Some(patient) = &reach.patient_hint {
        return Ok(vec![patient.clone()]);
    }
    let Some(resource_type) = reach.target.resource_type.as_deref() else {
        return Ok(Vec::new());
    };
    if let Some(id) = &reach.target.id {
        if resource_type == "Patient" {
            return Ok(vec![id.clone()]);
        }
        return crate::care::patients_of(tx, resource_type, id);
    }
    let pairs = hygie_fhir::search::query::parse_query_string(reach.query.as_deref().unwrap_or(""))
        .unwrap_or_default();
    Ok(patients_named(resource_type, &pairs))
}

/// The patients a search names: by `patient` or `subject` (`Patient/x` or `x`), or by
/// `_id` on Patient.
pub(crate) fn patients_named(resource_type: &str, pairs: &[(String, String)]) -> Vec<String> {
    let mut patients = std::collections::BTreeSet::new();
    for (name, value) in pairs {
        let named = match name.as_str() {
            "patient" | "subject" | "patient:Patient" | "subject:Patient" => true,
            "_id" => resource_type == "Patient",
            _ => false,
        };
        if !named {
            continue;
        }
        for value in value.split(',') {
            let id = value.strip_prefix("Patient/").unwrap_or(value);
            if !id.is_empty() && !id.contains('/') {
                patients.insert(id.to_owned());
            }
        }
    }
    patients.into_iter().collect()
}
