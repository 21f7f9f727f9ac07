//! The one pipeline every access goes through: decide → execute → mask → audit.
//!
//! This is where an access decision is applied and where its audit leaf is written; a
//! reader looking for "who can reach the data, and is it recorded" starts here.

use hygie_audit::{AuditOutcome, AuditRecord};
use hygie_policy::{Action, Decision, DenyReason, Mask, Target};
use hygie_store::{StoreError, StoreExt, Tx};

use crate::break_glass::BreakGlassReach;
use crate::instant::now_us;
use crate::{Caller, Hub, HubError};

/// The result of an operation inside its unit of work: `Err(StoreError)` aborts the whole
/// unit (nothing written, no answer but a 5xx); `Ok(Err(HubError))` is a refusal that is
/// rolled back but still audited.
pub type OpResult<T> = Result<Result<T, HubError>, StoreError>;

/// What an operation touched, for its audit record.
pub trait Audited {
    /// `Type/id/_history/v` (or less precise) references of what was read or written.
    fn audit_entities(&self) -> Vec<String>;
}

/// Describes one access for the pipeline.
pub struct Access<'a> {
    pub caller: &'a Caller,
    pub action: Action,
    pub target: Target,
    /// The query string of a search or history, or the conditional criteria.
    pub query: Option<String>,
    /// The patient a request is about when neither its target nor its query says it (a
    /// compartment search): the one a broken glass opens.
    pub patient_hint: Option<String>,
}

impl Access<'_> {
    pub(crate) fn record(&self, recorded_us: i64) -> AuditRecord {
        let mut record = AuditRecord::new(
            self.action.interaction_code(),
            &self.caller.principal.subject,
            recorded_us,
        );
        record.network_address = self.caller.network_address.clone();
        record.request_id = Some(self.caller.request_id.clone());
        record.query = self.query.clone();
        record.roles = self
            .caller
            .principal
            .access
            .as_ref()
            .map(|access| access.roles.clone())
            .unwrap_or_default();
        record.patients.extend(crate::audit_trail::named_patient(
            self.target.resource_type.as_deref(),
            self.target.id.as_deref(),
        ));
        record.purpose_of_use = self
            .caller
            .break_glass
            .as_deref()
            .map(hygie_audit::PurposeOfUse::emergency);
        record
    }

    fn target_reference(&self) -> Option<String> {
        match (&self.target.resource_type, &self.target.id) {
            (Some(resource_type), Some(id)) => Some(format!("{resource_type}/{id}")),
            (Some(resource_type), None) => Some(resource_type.clone()),
            _ => None,
        }
    }
}

/// A denied access: the error to answer and the record of the attempt.
struct Denied {
    error: HubError,
    record: AuditRecord,
}

/// One access, decided, with what its audit record needs once it has run.
struct Decided<F> {
    /// For a token: its `jti` and subject, checked against the revocations inside the
    /// unit, so that a revocation holds from the next request on, on every hub process.
    revocable: Option<(Option<String>, String)>,
    record: AuditRecord,
    target_reference: Option<String>,
    /// What a write aims at, checked against a need-to-know limit before it runs.
    target: Target,
    /// Whether the access needs the caller's whole set of patients in care.
    needs_set: bool,
    care_cache: std::sync::Arc<crate::care::CareCache>,
    writes: bool,
    undoable: bool,
    mask: Mask,
    op: F,
}

impl Hub {
    /// Runs `op` for `access` if the policy permits it, and audits the attempt either way,
    /// in the same transaction as `op`'s writes.
    pub(crate) async fn perform<T, F>(&self, access: Access<'_>, op: F) -> Result<T, HubError>
    where
        T: Audited + Send + 'static,
        F: FnOnce(&mut dyn Tx, &Mask) -> OpResult<T> + Send + 'static,
    {
        let reach = BreakGlassReach::of(&access);
        let caller = access.caller;
        let decided = match self.decide(access, op) {
            Ok(decided) => decided,
            Err(denied) => return self.audit_denial(denied).await,
        };
        self.break_glass_if_asked(caller, &decided.mask, reach)
            .await?;
        let outcome = self
            .inner
            .store
            .run(move |tx| run_decided(tx, decided))
            .await;
        match outcome {
            Ok(result) => result,
            Err(error) => Err(HubError::from_store(error)),
        }
    }

    /// Like `perform`, for an operation that only reads (a search, a history page,
    /// `$everything`): it runs on a read-only snapshot beside the writes, so that a search
    /// of seconds holds up no write; its audit leaf is appended afterwards, and the answer
    /// still waits until that leaf is durable (fail closed: no leaf, no data). A read that
    /// fails in the store (too costly, a database error) is audited as a failed attempt.
    pub(crate) async fn perform_read<T, F>(&self, access: Access<'_>, op: F) -> Result<T, HubError>
    where
        T: Audited + Send + 'static,
        F: FnOnce(&mut dyn Tx, &Mask) -> OpResult<T> + Send + 'static,
    {
        let reach = BreakGlassReach::of(&access);
        let caller = access.caller;
        let needs_set = needs_care_set(access.action);
        let cache = self.inner.care_cache.clone();
        let Decided {
            revocable,
            record,
            target_reference,
            mut mask,
            op,
            ..
        } = match self.decide(access, op) {
            Ok(decided) => decided,
            Err(denied) => return self.audit_denial(denied).await,
        };
        self.break_glass_if_asked(caller, &mask, reach).await?;
        // The record to write when the read fails in the store.
        let fallback = record.clone();
        let read =
            move |tx: &mut dyn Tx| -> Result<(Result<T, HubError>, AuditRecord), StoreError> {
                let mut record = record;
                if let Some(refusal) = revoked(tx, revocable.as_ref())? {
                    return Ok((Err(refusal), record));
                }
                let reach = if needs_set {
                    crate::care::Reach::Set
                } else {
                    crate::care::Reach::Later
                };
                crate::care::resolve(tx, &mut mask, &cache, reach, now_us())?;
                let result = op(tx, &mask)?;
                // The patients whose data is answered, looked up in the same snapshot (not in
                // a benchmark build without audit, which writes no record).
                if let Ok(value) = &result
                    && !crate::UNAUDITED_BENCH_BUILD
                {
                    record.entities = value.audit_entities();
                    crate::audit_trail::add_patients_of_entities(tx, &mut record, &mask)?;
                }
                Ok((result, record))
            };
        let (result, mut record) = match self.inner.store.read(read).await {
            Ok((result, record)) => (result, record),
            Err(error) => (Err(HubError::from_store(error)), fallback),
        };
        record_result(&mut record, &result, target_reference);
        self.append_record(record).await?;
        result
    }

    /// Runs several accesses, in order, in ONE unit of work: one commit (and one fsync)
    /// for all. Each is decided, undone on refusal and audited on its own, exactly as
    /// `perform` would; a store failure fails them all (nothing of the unit is kept).
    /// For bulk loads, where a commit per request would dominate the cost.
    pub(crate) async fn perform_all<T, F>(
        &self,
        accesses: Vec<(Access<'_>, F)>,
    ) -> Vec<Result<T, HubError>>
    where
        T: Audited + Send + 'static,
        F: FnOnce(&mut dyn Tx, &Mask) -> OpResult<T> + Send + 'static,
    {
        let count = accesses.len();
        let mut answers: Vec<Option<Result<T, HubError>>> = (0..count).map(|_| None).collect();
        let mut permitted = Vec::with_capacity(count);
        for (position, (access, op)) in accesses.into_iter().enumerate() {
            match self.decide(access, op) {
                Ok(decided) => permitted.push((position, decided)),
                Err(denied) => answers[position] = Some(self.audit_denial(denied).await),
            }
        }
        let positions: Vec<usize> = permitted.iter().map(|(position, _)| *position).collect();
        let outcome = self
            .inner
            .store
            .run(move |tx| {
                let mut results = Vec::with_capacity(permitted.len());
                for (_, decided) in permitted {
                    results.push(run_decided(tx, decided)?);
                }
                Ok(results)
            })
            .await;
        match outcome {
            Ok(results) => {
                for (position, result) in positions.into_iter().zip(results) {
                    answers[position] = Some(result);
                }
            }
            Err(error) => {
                let error = HubError::from_store(error);
                for position in positions {
                    answers[position] = Some(Err(error.clone()));
                }
            }
        }
        answers
            .into_iter()
            .map(|answer| answer.expect("every access was answered"))
            .collect()
    }

    /// Asks the policy about every `(action, target)` a request reaches besides its main
    /// one (the types a search's includes and chains reach, the entries of a transaction).
    /// The first denial is audited as the refused attempt of `access` and returned.
    pub(crate) async fn authorize_reach(
        &self,
        access: Access<'_>,
        reached: &[(Action, Target, String)],
    ) -> Result<(), HubError> {
        for (action, target, what) in reached {
            let decision = self
                .policy()
                .decide(&access.caller.principal, *action, target);
            // What a transaction entry does runs unmasked: an entry the policy would only
            // permit in part (a patient/ scope's compartment) is refused.
            // What a search reaches besides its target is not filtered by a query
            // constraint (it applies to the target type): refused rather than leaked.
            let decision = match decision {
                Decision::Permit { mask }
                    if !mask.query_constraints.is_empty() && access.action != Action::Bundle =>
                {
                    Decision::Deny {
                        reason: DenyReason::Forbidden(
                            "the token's scope on this type is query-constrained: it does not reach through _include, _revinclude, chains or _has"
                                .to_owned(),
                        ),
                    }
                }
                other => other,
            };
            let decision = match decision {
                Decision::Permit { mask }
                    if limits_entry(&mask, *action, target) && access.action == Action::Bundle =>
                {
                    Decision::Deny {
                        reason: DenyReason::Forbidden(
                            "this token's access is limited (a patient/ scope, or need-to-know): send this entry as a request of its own"
                                .to_owned(),
                        ),
                    }
                }
                other => other,
            };
            if let Decision::Deny { reason } = decision {
                let error = match reason {
                    DenyReason::Unauthenticated => HubError::new(
                        401,
                        hygie_fhir::IssueType::Login,
                        "authentication required: send Authorization: Bearer <token>",
                    ),
                    DenyReason::Forbidden(why) => HubError::new(
                        403,
                        hygie_fhir::IssueType::Forbidden,
                        format!("{what}: {why}"),
                    ),
                };
                let mut record = access.record(now_us());
                record.outcome = AuditOutcome::from_status(error.status);
                record.outcome_description = Some(error.to_string());
                record.entities.extend(access.target_reference());
                return self
                    .audit_denial::<()>(Box::new(Denied { error, record }))
                    .await;
            }
        }
        Ok(())
    }

    /// Applies the policy: a permit carries its mask, a denial the error and its record.
    fn decide<F>(&self, access: Access<'_>, op: F) -> Result<Decided<F>, Box<Denied>> {
        let decision =
            self.policy()
                .decide(&access.caller.principal, access.action, &access.target);
        let mut record = access.record(now_us());
        let target_reference = access.target_reference();
        match decision {
            // A read writes nothing but its audit leaf: it needs no savepoint to undo.
            Decision::Permit { mask } => Ok(Decided {
                revocable: access.caller.principal.access.as_ref().map(|token| {
                    (
                        token.token_id.clone(),
                        access.caller.principal.subject.clone(),
                    )
                }),
                record,
                target_reference,
                writes: access.action.writes(),
                needs_set: needs_care_set(access.action),
                care_cache: self.inner.care_cache.clone(),
                undoable: access.action.writes() || access.action == Action::Bundle,
                target: access.target,
                mask,
                op,
            }),
            Decision::Deny { reason } => {
                let error = match reason {
                    DenyReason::Unauthenticated => HubError::new(
                        401,
                        hygie_fhir::IssueType::Login,
                        "authentication required: send Authorization: Bearer <token>",
                    ),
                    DenyReason::Forbidden(why) => {
                        HubError::new(403, hygie_fhir::IssueType::Forbidden, why)
                    }
                };
                record.outcome = AuditOutcome::from_status(error.status);
                record.outcome_description = Some(error.to_string());
                record.entities.extend(target_reference);
                Err(Box::new(Denied { error, record }))
            }
        }
    }

    /// Records a denied access, then answers with its error.
    async fn audit_denial<T>(&self, denied: Box<Denied>) -> Result<T, HubError> {
        let Denied { error, record } = *denied;
        self.append_record(record).await?;
        Err(error)
    }

    /// Appends a record in a unit of its own (an access that wrote nothing to undo with it).
    pub(crate) async fn append_record(&self, record: AuditRecord) -> Result<(), HubError> {
        if crate::UNAUDITED_BENCH_BUILD {
            return Ok(()); // benchmarks only (the `bench-unaudited` feature)
        }
        self.inner
            .store
            .run(move |tx| crate::audit_trail::append(tx, &record))
            .await
            .map(|_| ())
            .map_err(HubError::from_store)
    }
}

/// Searches and `$everything` filter by the caller's whole set of patients in care; reads
/// and writes look up the one patient they touch.
fn needs_care_set(action: Action) -> bool {
    matches!(
        action,
        Action::Search | Action::Everything | Action::History
    )
}

/// Whether a mask limits what a transaction entry on `target` may do (entries run
/// unmasked): need-to-know on an open type (a Patient) does not.
/// Hidden labels limit what an entry reads or changes in place (it could touch a hidden
/// resource), not what it creates.
fn limits_entry(mask: &Mask, action: Action, target: &Target) -> bool {
    let open = match (&mask.care_of, &target.resource_type) {
        (Some(care), Some(resource_type)) => care.open_types.contains(resource_type),
        _ => false,
    };
    let touches_existing = target.id.is_some() || !action.writes();
    let masks_type = target.resource_type.as_deref().is_some_and(|ty| {
        crate::interactions::masked_elements(mask, ty)
            .next()
            .is_some()
    });
    mask.patient_compartment.is_some()
        || !mask.query_constraints.is_empty()
        || masks_type
        || (mask.care_of.is_some() && !open)
        || (!mask.hidden_labels.is_empty() && touches_existing)
}

/// Runs one permitted operation inside the unit: undone on refusal, audited either way.
fn run_decided<T, F>(
    tx: &mut dyn Tx,
    decided: Decided<F>,
) -> Result<Result<T, HubError>, StoreError>
where
    T: Audited,
    F: FnOnce(&mut dyn Tx, &Mask) -> OpResult<T>,
{
    let Decided {
        revocable,
        mut record,
        target_reference,
        target,
        writes,
        needs_set,
        care_cache,
        undoable,
        mut mask,
        op,
    } = decided;
    if undoable {
        tx.savepoint()?;
    }
    // Whose data a write changes, looked up before it runs: a delete takes the resource's
    // references (and so its patient) out of the index.
    if writes && let (Some(resource_type), Some(id)) = (&target.resource_type, &target.id) {
        record
            .patients
            .extend(crate::care::patients_of(tx, resource_type, id)?);
    }
    let outcome = match revoked(tx, revocable.as_ref())? {
        Some(refusal) => Ok(Err(refusal)),
        None => {
            let reach = match (&target.resource_type, &target.id) {
                _ if needs_set => crate::care::Reach::Set,
                (Some(resource_type), Some(id)) if !writes => {
                    crate::care::Reach::One(resource_type, id)
                }
                _ => crate::care::Reach::Later,
            };
            crate::care::resolve(tx, &mut mask, &care_cache, reach, now_us())?;
            if writes
                && (mask.care_of.is_some()
                    || !mask.hidden_labels.is_empty()
                    || !mask.query_constraints.is_empty()
                    || mask.patient_compartment.is_some())
            {
                write_within_care(tx, &mask, &target, op)
            } else {
                op(tx, &mask)
            }
        }
    };
    let result = match outcome {
        Ok(Ok(value)) => {
            if undoable {
                tx.release_savepoint()?;
            }
            Ok(value)
        }
        Ok(Err(refusal)) => {
            if undoable {
                tx.rollback_to_savepoint()?;
            }
            Err(refusal)
        }
        Err(conflict @ StoreError::Conflict { .. }) if undoable => {
            tx.rollback_to_savepoint()?;
            Err(HubError::from_store(conflict))
        }
        // Anything else aborts the unit: no data, no answer (fail closed).
        Err(other) => return Err(other),
    };
    record_result(&mut record, &result, target_reference);
    if crate::UNAUDITED_BENCH_BUILD {
        return Ok(result); // benchmarks only (the `bench-unaudited` feature)
    }
    match (&result, &target.resource_type, &target.id) {
        (Ok(_), _, _) => crate::audit_trail::add_patients_of_entities(tx, &mut record, &mask)?,
        // A refused read names the patient it aimed at (writes looked theirs up before):
        // "someone tried to open my record" belongs in the patient's access report.
        (Err(_), Some(resource_type), Some(id)) if !writes => {
            for patient in crate::care::patients_of(tx, resource_type, id)? {
                if !record.patients.contains(&patient) {
                    record.patients.push(patient);
                }
            }
        }
        (Err(_), _, _) => {}
    }
    crate::audit_trail::append(tx, &record)?;
    Ok(result)
}

/// A write under a limit (need-to-know, hidden labels, a query-constrained scope, a
/// `patient/` scope's compartment): what it replaces or deletes must be visible to the
/// caller (no changing what one cannot see), and what it wrote must be within the limits
/// (a patient in care, the scope's query, the compartment).
fn write_within_care<T, F>(tx: &mut dyn Tx, mask: &Mask, target: &Target, op: F) -> OpResult<T>
where
    T: Audited,
    F: FnOnce(&mut dyn Tx, &Mask) -> OpResult<T>,
{
    if let (Some(resource_type), Some(id)) = (&target.resource_type, &target.id) {
        if let Err(refusal) = crate::care::check_visible(tx, mask, resource_type, id)? {
            return Ok(Err(refusal));
        }
        if let Err(refusal) = crate::care::check_compartment_write(tx, mask, resource_type, id)? {
            return Ok(Err(refusal));
        }
    }
    let value = match op(tx, mask)? {
        Ok(value) => value,
        Err(refusal) => return Ok(Err(refusal)),
    };
    for entity in value.audit_entities() {
        let mut parts = entity.split('/');
        let (Some(resource_type), Some(id)) = (parts.next(), parts.next()) else {
            continue;
        };
        for check in [
            crate::care::check_care,
            crate::care::check_constraints,
            crate::care::check_compartment_write,
        ] {
            if let Err(refusal) = check(tx, mask, resource_type, id)? {
                return Ok(Err(refusal));
            }
        }
    }
    Ok(Ok(value))
}

/// The refusal of a revoked token (or of a token whose subject is revoked), if it is.
fn revoked(
    tx: &mut dyn Tx,
    revocable: Option<&(Option<String>, String)>,
) -> Result<Option<HubError>, StoreError> {
    let Some((token_id, subject)) = revocable else {
        return Ok(None);
    };
    Ok(tx.revocation(token_id.as_deref(), subject)?.map(|reason| {
        HubError::new(
            401,
            hygie_fhir::IssueType::Login,
            format!("the token has been revoked: {reason}"),
        )
    }))
}

/// What an access touched, or how it failed, into its audit record.
fn record_result<T: Audited>(
    record: &mut AuditRecord,
    result: &Result<T, HubError>,
    target_reference: Option<String>,
) {
    match result {
        Ok(value) => record.entities = value.audit_entities(),
        Err(error) => {
            record.outcome = AuditOutcome::from_status(error.status);
            record.outcome_description = Some(error.to_string());
            record.entities.extend(target_reference);
        }
    }
}

#[cfg(test)]
mod tests {
    /// A default build audits: a read by id leaves its leaf, in its own unit. Built with
    /// `bench-unaudited` (benchmarks only) this test does not exist, and the integration
    /// tests that count leaves (`tests/pipeline.rs`, `every_access_leaves_one_audit_record`,
    /// on both backends) fail, as they should.
    #[cfg(not(feature = "bench-unaudited"))]
    #[tokio::test]
    async fn a_default_build_audits_a_read() {
        use hygie_store::StoreExt;
        const { assert!(!crate::UNAUDITED_BENCH_BUILD) };
        let dir = tempfile::tempdir().unwrap();
        let store: hygie_store::SharedStore =
            std::sync::Arc::new(hygie_store::open_sqlite(dir.path(), &Default::default()).unwrap());
        let hub = crate::Hub::new(store.clone(), crate::HubConfig::default());
        let caller = crate::Caller::new(hygie_policy::Principal::development(), "t");
        let patient = serde_json::json!({"resourceType": "Patient"});
        let created = hub.create(&caller, "Patient", patient, None).await.unwrap();
        let before = store.run(|tx| tx.audit_leaves(0, 100)).await.unwrap().len();
        hub.read(&caller, "Patient", &created.stored.id)
            .await
            .unwrap();
        let leaves = store.run(|tx| tx.audit_leaves(0, 100)).await.unwrap();
        assert_eq!(
            leaves.len(),
            before + 1,
            "a read must append one audit leaf"
        );
        let event: serde_json::Value = serde_json::from_slice(&leaves[before].1).unwrap();
        assert_eq!(event["subtype"][0]["code"], "read");
        hub.close().await;
    }
}
