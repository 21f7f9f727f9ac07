//! The hub's side of the SIEM export (`hygie-siem`): [`StoreAuditSource`] reads integrated
//! audit leaves and keeps each export's cursor in `hub_meta`.
//!
//! Only integrated leaves are exported (index below `audit.tree_size`): on SQLite a leaf has
//! its index from its append, but a SIEM should see what the signed tree holds, so that any
//! exported leaf can be proven against a checkpoint. A leaf whose body was pruned by
//! retention is never skipped at or past the export's cursor: that would lose it silently,
//! so the read fails with its index and the export waits for an operator. Below the cursor
//! (a syslog resend after a broken connection) it was delivered already, and the resend
//! stops short of it.
//!
//! Several hub processes on one PostgreSQL database each run their exports: the cursor is
//! shared through the store and only moves forward, so two processes may both send a
//! batch (a duplicate, dropped by its index) but neither makes the other skip a leaf. At
//! least once is the contract; a lock could not span the send, which leaves the database.

use hygie_siem::{AuditSource, ExportLeaf, SourceError};
use hygie_store::{SharedStore, StoreError, StoreExt, Tx};

use crate::audit_log::tree_size;

/// The `hub_meta` key of export `name`'s cursor.
pub fn export_cursor_key(name: &str) -> String {
    format!("audit.export.{name}.cursor")
}

/// The store lock taken while a cursor is read and advanced.
fn export_lock(name: &str) -> String {
    format!("audit.export.{name}")
}

fn stored_cursor(tx: &mut dyn Tx, name: &str) -> Result<u64, StoreError> {
    match tx.meta_get(&export_cursor_key(name))? {
        None => Ok(0),
        Some(text) => text.parse().map_err(|_| {
            StoreError::Database(format!(
                "the stored cursor of audit export {name:?}: {text:?}"
            ))
        }),
    }
}

/// The audit log and cursors of one hub's store, for one export (its name decides which
/// cursor tells delivered pruned leaves from lost ones).
#[derive(Clone)]
pub struct StoreAuditSource {
    store: SharedStore,
    export: String,
}

impl std::fmt::Debug for StoreAuditSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreAuditSource")
            .field("export", &self.export)
            .finish_non_exhaustive()
    }
}

impl StoreAuditSource {
    pub fn new(store: SharedStore, export: &str) -> StoreAuditSource {
        StoreAuditSource {
            store,
            export: export.to_owned(),
        }
    }
}

impl crate::Hub {
    /// The source export `export` reads from: this hub's store.
    pub fn audit_export_source(&self, export: &str) -> StoreAuditSource {
        StoreAuditSource::new(self.inner.store.clone(), export)
    }
}

/// The `recorded` of an AuditEvent leaf, in microseconds (the syslog TIMESTAMP).
fn recorded_us(index: u64, leaf: &[u8]) -> Result<i64, SourceError> {
    #[derive(serde::Deserialize)]
    struct Recorded<'a> {
        #[serde(borrow)]
        recorded: Option<&'a str>,
    }
    serde_json::from_slice::<Recorded<'_>>(leaf)
        .ok()
        .and_then(|event| event.recorded)
        .and_then(crate::parse_fhir_instant_us)
        .ok_or_else(|| {
            SourceError::new(format!(
                "audit leaf {index} has no readable `recorded` instant: run `hygie audit verify`"
            ))
        })
}

/// Turns stored rows (from `from`, in index order) into a batch: only below `tree_size`, a
/// pruned leaf below `cursor` ends the batch (delivered already), one at or past it fails.
fn batch(
    rows: Vec<(i64, Option<Vec<u8>>)>,
    tree_size: u64,
    cursor: u64,
    export: &str,
) -> Result<Vec<ExportLeaf>, SourceError> {
    let mut leaves = Vec::with_capacity(rows.len());
    for (index, leaf) in rows {
        let index = u64::try_from(index)
            .map_err(|_| SourceError::new(format!("a negative audit leaf index {index}")))?;
        if index >= tree_size {
            break;
        }
        match leaf {
            Some(leaf) => leaves.push(ExportLeaf {
                index,
                recorded_us: recorded_us(index, &leaf)?,
                leaf,
            }),
            None if index < cursor => break,
            None => {
                return Err(SourceError::new(format!(
                    "audit leaf {index} was pruned before export {export:?} delivered it: \
                     recover it from a backup into the sink, then set the cursor \
                     `{}` past it",
                    export_cursor_key(export)
                )));
            }
        }
    }
    Ok(leaves)
}

fn source_error(what: &str) -> impl FnOnce(StoreError) -> SourceError + '_ {
    move |error| SourceError::with_source(format!("{what}: {error}"), error)
}

impl AuditSource for StoreAuditSource {
    async fn leaves_from(&self, from: u64, limit: usize) -> Result<Vec<ExportLeaf>, SourceError> {
        let export = self.export.clone();
        let start = i64::try_from(from)
            .map_err(|_| SourceError::new(format!("audit leaf index {from} is out of range")))?;
        let (rows, size, cursor) = self
            .store
            .read(move |tx| {
                let size = tree_size(tx)?;
                let cursor = stored_cursor(tx, &export)?;
                let room = usize::try_from(size.saturating_sub(from)).unwrap_or(usize::MAX);
                let rows = if room == 0 {
                    Vec::new()
                } else {
                    tx.audit_tree_leaves(start, limit.min(room))?
                };
                Ok((rows, size, cursor))
            })
            .await
            .map_err(source_error("reading audit leaves"))?;
        batch(rows, size, cursor, &self.export)
    }

    async fn load_cursor(&self, name: &str) -> Result<u64, SourceError> {
        let name = name.to_owned();
        self.store
            .read(move |tx| stored_cursor(tx, &name))
            .await
            .map_err(source_error("reading the export cursor"))
    }

    /// Never moves a cursor back: another process that exported further keeps its lead.
    async fn save_cursor(&self, name: &str, next: u64) -> Result<(), SourceError> {
        let name = name.to_owned();
        self.store
            .run(move |tx| {
                tx.lock(&export_lock(&name))?;
                if stored_cursor(tx, &name)? < next {
                    tx.meta_set(&export_cursor_key(&name), &next.to_string())?;
                }
                Ok(())
            })
            .await
            .map_err(source_error("saving the export cursor"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(recorded: &str) -> Vec<u8> {
        format!(r#"{{"resourceType":"AuditEvent","recorded":"{recorded}"}}"#).into_bytes()
    }

    #[test]
    fn a_batch_stops_at_the_tree_size() {
        let rows = vec![
            (0, Some(leaf("2024-01-01T00:00:00Z"))),
            (1, Some(leaf("2024-01-01T00:00:01.5Z"))),
            (2, Some(leaf("2024-01-01T00:00:02Z"))),
        ];
        let leaves = batch(rows, 2, 0, "siem").unwrap();
        assert_eq!(leaves.len(), 2);
        assert_eq!(leaves[0].recorded_us, 1_704_067_200_000_000);
        assert_eq!(leaves[1].recorded_us, 1_704_067_201_500_000);
        assert_eq!(leaves[1].leaf, leaf("2024-01-01T00:00:01.5Z"));
    }

    #[test]
    fn a_pruned_leaf_not_yet_delivered_is_an_error_naming_it() {
        let rows = vec![(4, Some(leaf("2024-01-01T00:00:00Z"))), (5, None)];
        let error = batch(rows, 10, 5, "siem").unwrap_err().to_string();
        assert!(error.contains("audit leaf 5 was pruned"), "{error}");
        assert!(error.contains("audit.export.siem.cursor"), "{error}");
    }

    #[test]
    fn a_pruned_leaf_already_delivered_ends_the_resend() {
        let rows = vec![
            (3, Some(leaf("2024-01-01T00:00:00Z"))),
            (4, None),
            (5, Some(leaf("2024-01-01T00:00:00Z"))),
        ];
        let leaves = batch(rows, 10, 6, "siem").unwrap();
        assert_eq!(leaves.iter().map(|l| l.index).collect::<Vec<_>>(), vec![3]);
        assert!(batch(vec![(4, None)], 10, 6, "siem").unwrap().is_empty());
    }

    #[test]
    fn a_leaf_without_a_recorded_instant_is_refused() {
        for bad in [b"{}".to_vec(), b"not json".to_vec(), leaf("yesterday")] {
            let error = batch(vec![(7, Some(bad))], 10, 0, "siem").unwrap_err();
            assert!(error.to_string().contains("audit leaf 7"), "{error}");
        }
    }
}
