//! Messages from the hospital's other systems (HL7 v2 over MLLP): each one is a FHIR
//! transaction, run through the same pipeline as any request (decided, audited, sealed),
//! plus what a transaction cannot say:
//!
//! - **once only**: the message's key (sender and control id) is recorded in the same unit
//!   as its data, with the acknowledgement that was answered; the same key again answers
//!   that acknowledgement and writes nothing;
//! - **a patient merge** (ADT^A40): the prior patient is marked replaced-by the surviving
//!   one, and every resource of the prior patient's compartment is moved to the survivor.

use hygie_policy::{Action, Decision, Mask, Target};
use hygie_store::{StoreError, StoreExt, Tx};
use serde_json::{Value, json};

use crate::bundle::{EntryResult, PreparedTransaction, TransactionOutcome};
use crate::instant::now_us;
use crate::interactions::{Prepared, WriteOutcome, exec_read, exec_update};
use crate::pipeline::{Access, Audited, OpResult};
use crate::{Caller, Hub, HubError};

/// Resources one merge may move from the prior patient to the survivor; a larger record
/// is refused (and nothing moved), to be merged by an operator in steps.
pub const MAX_MERGE_MEMBERS: usize = 10_000;

/// Remembered messages forgotten per unit by [`Hub::forget_inbound_messages`].
pub const FORGET_BATCH_MESSAGES: usize = 10_000;

/// One inbound message, mapped and ready for the store.
pub struct InboundMessage {
    /// Who sent it and its control id: the same key twice is the same message.
    pub key: String,
    /// A digest of the message's content: the same key with another content is a sender
    /// reusing a control id, refused (409) rather than acknowledged without its data.
    pub fingerprint: String,
    /// What the audit record says the message was (`ADT^A01 MSG00001`).
    pub description: String,
    pub transaction: PreparedTransaction,
    /// For a merge: the prior patient, by identifier; the survivor is the Patient the
    /// transaction writes.
    pub merge_prior: Option<(String, String)>,
    /// The acknowledgement to remember, answered again to a resend.
    pub acknowledgement: String,
}

/// What became of an inbound message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    /// Committed: the references written, in the order of the transaction.
    Committed { written: Vec<String> },
    /// Already processed: the acknowledgement answered then.
    Duplicate { acknowledgement: String },
}

impl Audited for Ingested {
    fn audit_entities(&self) -> Vec<String> {
        match self {
            Ingested::Committed { written } => written.clone(),
            Ingested::Duplicate { .. } => Vec::new(),
        }
    }
}

impl Hub {
    /// Runs an inbound message: once only, all or nothing, audited as its sender's.
    pub async fn ingest_message(
        &self,
        caller: &Caller,
        message: InboundMessage,
    ) -> Result<Ingested, HubError> {
        let access = |caller| Access {
            caller,
            action: Action::Bundle,
            target: Target::system(),
            query: Some(message.description.clone()),
            patient_hint: None,
        };
        let mut reached = message.transaction.reached();
        if message.merge_prior.is_some() {
            reached.push((
                Action::Search,
                Target::resource_type("Patient"),
                "MRG-1".to_owned(),
            ));
            reached.push((
                Action::Update,
                Target::resource_type("Patient"),
                "MRG-1".to_owned(),
            ));
        }
        self.authorize_reach(access(caller), &reached).await?;
        let policy = self.policy();
        let principal = caller.principal.clone();
        let InboundMessage {
            key,
            fingerprint,
            transaction,
            merge_prior,
            acknowledgement,
            ..
        } = message;
        self.perform(access(caller), move |tx, mask| {
            // Two hub nodes taking the same resend at once: one waits for the other.
            tx.lock(&format!("inbound_message:{key}"))?;
            if let Some((first, acknowledgement)) = tx.inbound_message(&key)? {
                if first != fingerprint {
                    return Ok(Err(HubError::conflict(format!(
                        "this sender already used the control id of this message ({key}) for another message; each message needs its own"
                    ))));
                }
                return Ok(Ok(Ingested::Duplicate { acknowledgement }));
            }
            let outcome = match transaction.execute(tx, mask)? {
                Ok(outcome) => outcome,
                Err(refused) => return Ok(Err(refused)),
            };
            let mut written = written_references(&outcome);
            if let Some((system, value)) = merge_prior {
                let survivor = surviving_patient(&outcome).ok_or_else(|| {
                    StoreError::Database("a merge message wrote no Patient".to_owned())
                })?;
                let allowed = |resource_type: &str| {
                    matches!(
                        policy.decide(
                            &principal,
                            Action::Update,
                            &Target::resource_type(resource_type)
                        ),
                        Decision::Permit { .. }
                    )
                };
                match merge_patients(tx, mask, &system, &value, &survivor, &allowed)? {
                    Ok(moved) => written.extend(moved),
                    Err(refused) => return Ok(Err(refused)),
                }
            }
            tx.put_inbound_message(&key, &fingerprint, now_us(), &acknowledgement)?;
            Ok(Ok(Ingested::Committed { written }))
        })
        .await
    }
}

fn written_references(outcome: &TransactionOutcome) -> Vec<String> {
    outcome
        .results
        .iter()
        .filter_map(|result| match result {
            EntryResult::Written(written) => Some(written.stored.versioned_reference()),
            _ => None,
        })
        .collect()
}

fn surviving_patient(outcome: &TransactionOutcome) -> Option<String> {
    outcome.results.iter().find_map(|result| match result {
        EntryResult::Written(written) if written.stored.resource_type == "Patient" => {
            Some(written.stored.id.clone())
        }
        _ => None,
    })
}

/// Moves the patient identified by `system|value` into `survivor`: the prior patient is
/// made inactive and `replaced-by` the survivor, the survivor `replaces` it, and every
/// resource of the prior patient's compartment now references the survivor.
fn merge_patients(
    tx: &mut dyn Tx,
    mask: &Mask,
    system: &str,
    value: &str,
    survivor: &str,
    allowed: &dyn Fn(&str) -> bool,
) -> OpResult<Vec<String>> {
    let query = hygie_fhir::search::identifier_query(system, value);
    let criteria = match crate::criteria::parse_conditional("Patient", &query) {
        Ok(criteria) => criteria,
        Err(refused) => return Ok(Err(refused)),
    };
    let found = crate::criteria::matching_ids(tx, "Patient", &criteria, 2)?;
    let prior = match found.as_slice() {
        [prior] => prior.clone(),
        [] => {
            return Ok(Err(HubError::not_found(format!(
                "no patient has the prior identifier {system}|{value}"
            ))));
        }
        _ => {
            return Ok(Err(HubError::precondition_failed(format!(
                "several patients have the prior identifier {system}|{value}"
            ))));
        }
    };
    if prior == survivor {
        return Ok(Err(HubError::bad_request(
            "the prior and the surviving patient are the same record",
        )));
    }
    let now = now_us();
    let prior_reference = format!("Patient/{prior}");
    let survivor_reference = format!("Patient/{survivor}");
    let mut written = Vec::new();
    // The compartment, before the prior patient's own record changes.
    let members: Vec<(String, Vec<String>)> = crate::search::patient_compartment()
        .iter()
        .map(|(ty, params)| (ty.clone(), params.clone()))
        .collect();
    let mut moved = tx.compartment("Patient", &prior, &members, None, MAX_MERGE_MEMBERS + 1)?;
    moved.retain(|(ty, id)| !(ty == "Patient" && (id == &prior || id == survivor)));
    if moved.len() > MAX_MERGE_MEMBERS {
        return Ok(Err(HubError::too_large(format!(
            "the prior patient's record holds more than {MAX_MERGE_MEMBERS} resources (MAX_MERGE_MEMBERS); merge it in steps"
        ))));
    }
    if let Some((ty, _)) = moved.iter().find(|(ty, _)| !allowed(ty)) {
        return Ok(Err(HubError::new(
            403,
            hygie_fhir::IssueType::Forbidden,
            format!(
                "the prior patient's record holds {ty} resources, which this sender may not update; nothing was merged"
            ),
        )));
    }
    let map =
        std::collections::HashMap::from([(prior_reference.clone(), survivor_reference.clone())]);
    for (ty, id) in moved {
        let mut resource = match read_json(tx, mask, &ty, &id)? {
            Ok(resource) => resource,
            Err(refused) => return Ok(Err(refused)),
        };
        crate::resource::rewrite_references(&mut resource, &map);
        match update(tx, &ty, &id, resource, now)? {
            Ok(outcome) => written.push(outcome.stored.versioned_reference()),
            Err(refused) => return Ok(Err(refused)),
        }
    }
    // The two records point at each other (R4 Patient.link).
    for (id, other, link_type, active) in [
        (&prior, &survivor_reference, "replaced-by", Some(false)),
        (&survivor.to_owned(), &prior_reference, "replaces", None),
    ] {
        let mut resource = match read_json(tx, mask, "Patient", id)? {
            Ok(resource) => resource,
            Err(refused) => return Ok(Err(refused)),
        };
        let object = resource
            .as_object_mut()
            .ok_or_else(|| StoreError::Database("a stored Patient is not an object".to_owned()))?;
        let links = object.entry("link").or_insert_with(|| json!([]));
        if let Value::Array(links) = links {
            links.retain(|link| link["other"]["reference"] != json!(other));
            links.push(json!({"other": {"reference": other}, "type": link_type}));
        }
        if let Some(active) = active {
            object.insert("active".to_owned(), json!(active));
        }
        match update(tx, "Patient", id, resource, now)? {
            Ok(outcome) => written.push(outcome.stored.versioned_reference()),
            Err(refused) => return Ok(Err(refused)),
        }
    }
    Ok(Ok(written))
}

fn read_json(tx: &mut dyn Tx, mask: &Mask, ty: &str, id: &str) -> OpResult<Value> {
    let stored = match exec_read(tx, mask, ty, id)? {
        Ok(stored) => stored,
        Err(refused) => return Ok(Err(refused)),
    };
    serde_json::from_slice(&stored.body)
        .map(Ok)
        .map_err(|e| StoreError::Database(format!("stored {ty}/{id} is not JSON: {e}")))
}

fn update(
    tx: &mut dyn Tx,
    ty: &str,
    id: &str,
    resource: Value,
    now: i64,
) -> OpResult<WriteOutcome> {
    // A stored resource a merge rewrites: its references were made relative when written.
    let prepared = match Prepared::new(ty, resource, "") {
        Ok(prepared) => prepared.index_now(),
        Err(refused) => return Ok(Err(refused)),
    };
    exec_update(tx, prepared, id, None, now)
}

impl Hub {
    /// Records a message refused before it reached the data (unknown sender, unsupported
    /// type, content that does not map): the attempt is in the trail, with the reason.
    pub async fn record_refused_message(
        &self,
        caller: &Caller,
        description: &str,
        reason: &str,
    ) -> Result<(), HubError> {
        let access = Access {
            caller,
            action: Action::Bundle,
            target: Target::system(),
            query: Some(description.to_owned()),
            patient_hint: None,
        };
        let mut record = access.record(now_us());
        record.outcome = hygie_audit::AuditOutcome::MinorFailure;
        record.outcome_description = Some(reason.to_owned());
        self.append_record(record).await
    }
}

impl Hub {
    /// Forgets the messages received more than `keep` ago, in units of
    /// [`FORGET_BATCH_MESSAGES`]: a resend of one of them is then taken as a new message.
    /// Returns how many were forgotten.
    pub async fn forget_inbound_messages(
        &self,
        keep: std::time::Duration,
    ) -> Result<usize, HubError> {
        let before = now_us() - i64::try_from(keep.as_micros()).unwrap_or(i64::MAX);
        let mut forgotten = 0;
        loop {
            let pruned = self
                .inner
                .store
                .run(move |tx| tx.prune_inbound_messages(before, FORGET_BATCH_MESSAGES))
                .await
                .map_err(HubError::from_store)?;
            forgotten += pruned;
            if pruned < FORGET_BATCH_MESSAGES {
                return Ok(forgotten);
            }
        }
    }
}
