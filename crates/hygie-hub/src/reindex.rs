//! Keeps the search index in step with the code that builds it.
//!
//! The index rows of a resource depend on the search-parameter definitions and on the
//! extraction code (hygie-fhir). When either changes, [`INDEX_VERSION`] changes, and a hub
//! rebuilds the rows of every current resource before it serves: searches never mix rows of
//! two versions of the rules.

use hygie_store::{INDEX_VERSION_KEY, StoreExt, StoreResult};

use crate::resource::index_rows;
use crate::{Hub, HubError};

/// Bump when what `index_rows` produces for a resource changes.
pub const INDEX_VERSION: &str = "r4-search-5-blind-terms";
/// Resources re-indexed per transaction.
const REINDEX_BATCH: usize = 500;

impl Hub {
    /// Rebuilds the search index if it was built by other rules than this binary's; returns
    /// how many resources were re-indexed (0 when the index was up to date).
    pub async fn bring_index_up_to_date(&self) -> Result<u64, HubError> {
        let store = &self.inner.store;
        let current = store
            .run(|tx| tx.meta_get(INDEX_VERSION_KEY))
            .await
            .map_err(HubError::from_store)?;
        if current.as_deref() == Some(INDEX_VERSION) {
            return Ok(0);
        }
        tracing::info!(
            from = current.as_deref().unwrap_or("none"),
            to = INDEX_VERSION,
            "rebuilding the search index"
        );
        let mut after: Option<(String, String)> = None;
        let mut done = 0u64;
        loop {
            let position = after.clone();
            let batch = store
                .run(move |tx| -> StoreResult<Option<(String, String, u64)>> {
                    let records = tx.scan_current(
                        position.as_ref().map(|(t, i)| (t.as_str(), i.as_str())),
                        REINDEX_BATCH,
                    )?;
                    let Some(last) = records.last() else {
                        return Ok(None);
                    };
                    let last = (last.resource_type.clone(), last.id.clone());
                    // Re-indexing reads patient data: it is recorded like any access, in
                    // the same transaction (DESIGN.md invariant 3).
                    let mut audit = hygie_audit::AuditRecord::new(
                        "reindex",
                        "system:hygie-reindex",
                        crate::instant::now_us(),
                    );
                    for record in &records {
                        audit.entities.push(format!(
                            "{}/{}/_history/{}",
                            record.resource_type, record.id, record.version
                        ));
                        let resource: serde_json::Value = serde_json::from_slice(&record.body)
                            .map_err(|e| {
                                hygie_store::StoreError::Database(format!(
                                    "{}/{} is not JSON: {e}",
                                    record.resource_type, record.id
                                ))
                            })?;
                        tx.replace_index(
                            &record.resource_type,
                            &record.id,
                            &index_rows(&resource),
                        )?;
                    }
                    crate::audit_trail::append(tx, &audit)?;
                    Ok(Some((last.0, last.1, records.len() as u64)))
                })
                .await
                .map_err(HubError::from_store)?;
            let Some((last_type, last_id, count)) = batch else {
                break;
            };
            done += count;
            after = Some((last_type, last_id));
        }
        store
            .run(|tx| tx.meta_set(INDEX_VERSION_KEY, INDEX_VERSION))
            .await
            .map_err(HubError::from_store)?;
        tracing::info!(resources = done, "search index rebuilt");
        Ok(done)
    }
}

impl Hub {
    /// After a bulk load: lets the database re-plan with the new data's statistics.
    pub async fn refresh_statistics(&self) -> Result<(), HubError> {
        self.inner
            .store
            .run(|tx| tx.refresh_statistics())
            .await
            .map_err(HubError::from_store)
    }
}
