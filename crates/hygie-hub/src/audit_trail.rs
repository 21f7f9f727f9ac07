//! Writing an audit record with its search index, and finding the patients it concerns.
//!
//! BALP asks for one patient entity per patient whose data an access reached, so that a
//! patient's access report (`Patient/{id}/$access-log`) is complete: a search that
//! returned the Observations of three patients names all three. The patients are found
//! from the resources the access returned or wrote, through the reference index, inside
//! the access's own unit of work.

use std::collections::BTreeSet;

use hygie_audit::AuditRecord;
use hygie_policy::Mask;
use hygie_store::{AuditFacets, StoreError, Tx};

/// The most resources of one access looked up for their patients; past that (a very large
/// `$everything` or history page) the leaf still lists every resource, and the target
/// patient, but not the patients of the rest.
pub const MAX_PATIENT_LOOKUPS: usize = 2_000;

/// Appends `record` as a leaf of the audit log, with its search index.
/// The leaf's hash is kept with it, for the integrator.
pub(crate) fn append(tx: &mut dyn Tx, record: &AuditRecord) -> Result<i64, StoreError> {
    let leaf = record.to_leaf();
    let hash = hygie_audit::merkle::leaf_hash(&leaf);
    tx.append_audit_indexed(record.recorded_us, &leaf, &hash, &facets(record))
}

/// What the audit search finds a record by: the same codes as its AuditEvent.
pub(crate) fn facets(record: &AuditRecord) -> AuditFacets {
    AuditFacets {
        event_type: record.event_type_code().to_owned(),
        subtype: record.subtype_code().to_owned(),
        outcome: record.outcome.code().to_owned(),
        purpose: record.purpose_of_use.as_ref().map(|p| p.code.clone()),
        agents: vec![record.who.clone()],
        patients: record.patients.clone(),
    }
}

/// Adds to `record.patients` the patients of the resources in `record.entities`. The
/// resource of a read by id whose patients the need-to-know check already found in this
/// unit (`CareOf::checked` in `mask`) is not looked up again: a clinician's read asked twice.
pub(crate) fn add_patients_of_entities(
    tx: &mut dyn Tx,
    record: &mut AuditRecord,
    mask: &Mask,
) -> Result<(), StoreError> {
    let known = mask.care_of.as_ref().and_then(|care| care.checked.as_ref());
    let mut patients: BTreeSet<String> = record.patients.drain(..).collect();
    let mut looked_up = BTreeSet::new();
    for entity in &record.entities {
        let mut parts = entity.split('/');
        let (Some(resource_type), Some(id)) = (parts.next(), parts.next()) else {
            continue;
        };
        if resource_type == "Patient" {
            patients.insert(id.to_owned());
            continue;
        }
        // The audit trail is not in the reference index: its patients are its own facets.
        if resource_type == hygie_policy::AUDIT_EVENT {
            continue;
        }
        if let Some(known) = known
            && known.resource_type == resource_type
            && known.id == id
        {
            patients.extend(known.patients.iter().cloned());
            continue;
        }
        if looked_up.len() >= MAX_PATIENT_LOOKUPS || !looked_up.insert((resource_type, id)) {
            continue;
        }
        if let Some(params) = crate::search::patient_compartment().get(resource_type)
            && !params.is_empty()
        {
            patients.extend(tx.referenced_through(resource_type, id, params, "Patient")?);
        }
    }
    record.patients = patients.into_iter().collect();
    Ok(())
}

/// The patient a request names in its target (`Patient/{id}`), if any.
pub(crate) fn named_patient(resource_type: Option<&str>, id: Option<&str>) -> Option<String> {
    match (resource_type, id) {
        (Some("Patient"), Some(id)) => Some(id.to_owned()),
        _ => None,
    }
}
