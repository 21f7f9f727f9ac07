//! The one pipeline every access goes through: decide → execute → mask → audit.
//!
//! This is where an access decision is applied and where its audit leaf is written; a
//! reader looking for "who can reach the data, and is it recorded" starts here.

use hygie_audit::{AuditOutcome, AuditRecord};
use hygie_policy::{Action, Decision, DenyReason, Mask, Target};
use hygie_store::{StoreError, StoreExt, Tx};

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
}

impl Access<'_> {
    fn record(&self, recorded_us: i64) -> AuditRecord {
        let mut record = AuditRecord::new(
            self.action.interaction_code(),
            &self.caller.principal.subject,
            recorded_us,
        );
        record.network_address = self.caller.network_address.clone();
        record.request_id = Some(self.caller.request_id.clone());
        record.query = self.query.clone();
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

impl Hub {
    /// Runs `op` for `access` if the policy permits it, and audits the attempt either way,
    /// in the same transaction as `op`'s writes.
    pub(crate) async fn perform<T, F>(&self, access: Access<'_>, op: F) -> Result<T, HubError>
    where
        T: Audited + Send + 'static,
        F: FnOnce(&mut dyn Tx, &Mask) -> OpResult<T> + Send + 'static,
    {
        let decision =
            self.inner
                .policy
                .decide(&access.caller.principal, access.action, &access.target);
        let mut record = access.record(now_us());
        let target_reference = access.target_reference();
        let mask = match decision {
            Decision::Permit { mask } => mask,
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
                let leaf = record.to_leaf();
                let recorded_us = record.recorded_us;
                self.inner
                    .store
                    .run(move |tx| tx.append_audit(recorded_us, &leaf))
                    .await
                    .map_err(HubError::from_store)?;
                return Err(error);
            }
        };
        // A read writes nothing but its audit leaf: it needs no savepoint to undo.
        let undoable = access.action.writes() || access.action == Action::Bundle;
        let outcome = self
            .inner
            .store
            .run(move |tx| {
                if undoable {
                    tx.savepoint()?;
                }
                let result = match op(tx, &mask) {
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
                match &result {
                    Ok(value) => record.entities = value.audit_entities(),
                    Err(error) => {
                        record.outcome = AuditOutcome::from_status(error.status);
                        record.outcome_description = Some(error.to_string());
                        record.entities.extend(target_reference);
                    }
                }
                tx.append_audit(record.recorded_us, &record.to_leaf())?;
                Ok(result)
            })
            .await;
        match outcome {
            Ok(result) => result,
            Err(error) => Err(HubError::from_store(error)),
        }
    }
}
