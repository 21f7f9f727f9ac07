//! Where the exporter reads leaves and keeps its cursors: [`AuditSource`], implemented by the
//! hub over its store, and [`MemorySource`] for tests and examples.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// One leaf of the audit log, as the exporter receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportLeaf {
    /// The leaf's position in the log (dense: 0, 1, 2, …).
    pub index: u64,
    /// When the access was recorded, microseconds since the Unix epoch: the syslog TIMESTAMP.
    pub recorded_us: i64,
    /// The AuditEvent JSON, exactly as stored (the bytes the Merkle tree hashes).
    pub leaf: Vec<u8>,
}

/// A failure of the source (its store). The exporter logs it, backs off and tries again.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl SourceError {
    pub fn new(message: impl Into<String>) -> SourceError {
        SourceError {
            message: message.into(),
            source: None,
        }
    }

    /// Keeps the underlying error as the `source()`, so logs show the whole chain.
    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> SourceError {
        SourceError {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

/// Where the exporter reads leaves and keeps its position. The hub implements it over its
/// store; the exporter knows nothing else about the database.
///
/// Cursors are per sink name, so that two sinks progress independently and a restarted
/// process resumes each where it stopped.
pub trait AuditSource: Send + Sync + 'static {
    /// Up to `limit` leaves with index >= `from`, in index order, with no gap: the log is
    /// dense, and a gap is reported as an error by the exporter rather than skipped.
    fn leaves_from(
        &self,
        from: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ExportLeaf>, SourceError>> + Send;

    /// The cursor of sink `name`: the first index not yet delivered (0 for a new sink).
    fn load_cursor(&self, name: &str) -> impl Future<Output = Result<u64, SourceError>> + Send;

    /// Records that every leaf below `next` was delivered to sink `name`. Called only after
    /// the sink flushed (file: fsynced) those leaves.
    fn save_cursor(
        &self,
        name: &str,
        next: u64,
    ) -> impl Future<Output = Result<(), SourceError>> + Send;
}

/// An in-memory log and cursor table: for tests, examples and benchmarks.
///
/// ```
/// use hygie_siem::MemorySource;
/// let source = MemorySource::new();
/// assert_eq!(source.append(1_700_000_000_000_000, br#"{"resourceType":"AuditEvent"}"#.to_vec()), 0);
/// assert_eq!(source.len(), 1);
/// assert_eq!(source.cursor("siem"), None);
/// ```
#[derive(Debug, Default)]
pub struct MemorySource {
    leaves: Mutex<Vec<(i64, Vec<u8>)>>,
    cursors: Mutex<HashMap<String, u64>>,
}

/// A poisoned lock only means a test thread panicked while holding it; the data is plain.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemorySource {
    pub fn new() -> MemorySource {
        MemorySource::default()
    }

    /// Appends a leaf and answers its index.
    pub fn append(&self, recorded_us: i64, leaf: Vec<u8>) -> u64 {
        let mut leaves = lock(&self.leaves);
        leaves.push((recorded_us, leaf));
        (leaves.len() - 1) as u64
    }

    /// The number of leaves (the log's size).
    pub fn len(&self) -> u64 {
        lock(&self.leaves).len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The saved cursor of sink `name`, `None` if it never saved one.
    pub fn cursor(&self, name: &str) -> Option<u64> {
        lock(&self.cursors).get(name).copied()
    }
}

impl AuditSource for MemorySource {
    async fn leaves_from(&self, from: u64, limit: usize) -> Result<Vec<ExportLeaf>, SourceError> {
        let leaves = lock(&self.leaves);
        let start = usize::try_from(from)
            .unwrap_or(usize::MAX)
            .min(leaves.len());
        Ok(leaves[start..]
            .iter()
            .take(limit)
            .enumerate()
            .map(|(offset, (recorded_us, leaf))| ExportLeaf {
                index: from + offset as u64,
                recorded_us: *recorded_us,
                leaf: leaf.clone(),
            })
            .collect())
    }

    async fn load_cursor(&self, name: &str) -> Result<u64, SourceError> {
        Ok(self.cursor(name).unwrap_or(0))
    }

    async fn save_cursor(&self, name: &str, next: u64) -> Result<(), SourceError> {
        lock(&self.cursors).insert(name.to_owned(), next);
        Ok(())
    }
}
