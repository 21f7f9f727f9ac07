//! Retention of the audit trail: the bodies of leaves older than the retention period are
//! pruned (the AuditEvent and its search facets deleted), while their hashes stay in the
//! tree. The log remains verifiable (`hygie audit verify` counts pruned leaves and uses
//! their stored hashes), inclusion and consistency proofs still work, and what a leaf said
//! about a person is gone.
//!
//! Pruning goes from the oldest leaf on and stops at the first leaf not old enough, so the
//! pruned leaves are always a prefix of the log: `verify` reports a missing body after a kept
//! one as tampering.

use hygie_audit::AuditRecord;
use hygie_store::{AuditFacets, StoreError, StoreExt, Tx};
use serde_json::Value;

use crate::instant::now_us;
use crate::{Caller, Hub, HubError};

/// Leaves pruned in one unit of work.
pub const PRUNE_BATCH_LEAVES: usize = 1_000;

/// The first leaf whose body was not pruned yet.
const PRUNED_BELOW: &str = "audit.pruned_below";

/// The outcome of a pruning run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Leaf bodies pruned by this run.
    pub leaves: u64,
    /// Every leaf below this index has been pruned.
    pub pruned_below: u64,
}

impl Hub {
    /// Prunes the bodies of integrated leaves recorded before `recorded_before_us`, and
    /// records that it did (an administrative act, in the log it prunes).
    pub async fn prune_audit(
        &self,
        caller: &Caller,
        recorded_before_us: i64,
    ) -> Result<Pruned, HubError> {
        let mut total = Pruned {
            leaves: 0,
            pruned_below: 0,
        };
        loop {
            let (count, below, more) = self
                .inner
                .store
                .run(move |tx| prune_batch(tx, recorded_before_us))
                .await
                .map_err(HubError::from_store)?;
            total.leaves += count;
            total.pruned_below = below;
            if !more {
                break;
            }
        }
        if total.leaves > 0 {
            let mut record =
                AuditRecord::new("audit-retention", &caller.principal.subject, now_us());
            record.request_id = Some(caller.request_id.clone());
            record.outcome_description = Some(format!(
                "pruned the bodies of {} audit leaves recorded before {}; every leaf below {} is pruned, their hashes kept",
                total.leaves,
                crate::format_instant(recorded_before_us),
                total.pruned_below
            ));
            self.append_record(record).await?;
        }
        Ok(total)
    }
}

/// One batch, under the integration lock (the tree size cannot move under it): returns the
/// leaves pruned, the new watermark and whether more may be due.
fn prune_batch(tx: &mut dyn Tx, recorded_before_us: i64) -> Result<(u64, u64, bool), StoreError> {
    tx.lock("audit.integrate")?;
    let tree_size = crate::audit_log::tree_size(tx)?;
    let from: u64 = tx
        .meta_get(PRUNED_BELOW)?
        .and_then(|text| text.parse().ok())
        .unwrap_or(0);
    if from >= tree_size {
        return Ok((0, from, false));
    }
    let limit = PRUNE_BATCH_LEAVES.min((tree_size - from) as usize);
    let leaves = tx.audit_tree_leaves(from as i64, limit)?;
    let mut batch = Vec::with_capacity(leaves.len());
    let mut next = from;
    let mut reached_recent = false;
    for (index, leaf) in leaves {
        if index as u64 != next {
            // A gap: not retention's business; `verify` names it.
            reached_recent = true;
            break;
        }
        match leaf {
            None => {}
            Some(body) => match recorded_us(&body) {
                Some(recorded) if recorded < recorded_before_us => {
                    batch.push((index, facets_of_leaf(&body)));
                }
                _ => {
                    reached_recent = true;
                    break;
                }
            },
        }
        next += 1;
    }
    tx.prune_audit_leaves(&batch)?;
    tx.meta_set(PRUNED_BELOW, &next.to_string())?;
    let more = !reached_recent && next < tree_size && next > from;
    Ok((batch.len() as u64, next, more))
}

fn recorded_us(leaf: &[u8]) -> Option<i64> {
    let event: Value = serde_json::from_slice(leaf).ok()?;
    crate::parse_fhir_instant_us(event["recorded"].as_str()?)
}

/// The facets a leaf was indexed by (its agents and patients), read back from the leaf.
pub(crate) fn facets_of_leaf(leaf: &[u8]) -> AuditFacets {
    let Ok(event) = serde_json::from_slice::<Value>(leaf) else {
        return AuditFacets::default();
    };
    let agents = event["agent"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|agent| agent["who"]["display"].as_str())
        .map(str::to_owned)
        .collect();
    let patients = event["entity"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entity| {
            entity["role"]["code"] == "1"
                && entity["role"]["system"] == "http://terminology.hl7.org/CodeSystem/object-role"
        })
        .filter_map(|entity| entity["what"]["reference"].as_str())
        .filter_map(|reference| reference.strip_prefix("Patient/"))
        .map(str::to_owned)
        .collect();
    AuditFacets {
        agents,
        patients,
        ..AuditFacets::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaf_gives_back_the_facets_it_was_indexed_by() {
        let mut record = AuditRecord::new("read", "Practitioner/7", 1_000_000)
            .entity("Observation/1/_history/1");
        record.patients = vec!["a".to_owned(), "b".to_owned()];
        let leaf = record.to_leaf();
        let facets = facets_of_leaf(&leaf);
        let indexed = crate::audit_trail::facets(&record);
        assert_eq!(facets.agents, indexed.agents);
        assert_eq!(facets.patients, indexed.patients);
        assert_eq!(recorded_us(&leaf), Some(1_000_000));
    }
}
