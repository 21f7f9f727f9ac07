//! The delivery loop of one export, its status, and the handles the hub keeps.
//!
//! load cursor → read a batch from the cursor → write it → flush (file: fsync) → save the
//! cursor → again; with nothing new, wait for a poke or the poll interval. Any failure drops
//! the connection, backs off, and starts again from the saved cursor, so a batch may arrive
//! twice but a leaf is never skipped: at least once.

use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{ConfigError, Delivery, ExportConfig, SinkPlan};
use crate::jsonl::JsonlSink;
use crate::net::{SyslogSink, tls_connector};
use crate::source::{AuditSource, ExportLeaf, SourceError};
use crate::syslog::BadLeaf;

/// Why a batch did not go through; shown in [`ExporterStatus::last_error`] and the logs.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExportError {
    #[error("audit source: {0}")]
    Source(#[from] SourceError),
    #[error(
        "the audit source answered leaf {got} where {expected} was expected; the log is dense \
         and the exporter does not skip leaves: fix the source"
    )]
    Gap { expected: u64, got: u64 },
    #[error(transparent)]
    BadLeaf(#[from] BadLeaf),
    #[error("connecting to {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with {address}: {source}")]
    Handshake {
        address: String,
        source: std::io::Error,
    },
    #[error("{address} closed the connection right after accepting it: {reason}")]
    Refused { address: String, reason: String },
    #[error("connection to {address} broken: {reason}")]
    Broken { address: String, reason: String },
    #[error("sending to {address}: {source}")]
    Send {
        address: String,
        source: std::io::Error,
    },
    #[error("{what} took longer than {timeout_ms} ms")]
    Timeout { what: String, timeout_ms: u64 },
    #[error("writing {path:?}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path:?} reached max_file_bytes ({max_file_bytes}): rename it away (the next batch \
         starts a new file) or raise the limit"
    )]
    FileFull { path: PathBuf, max_file_bytes: u64 },
}

/// What an export is doing, for `/readyz`, metrics and the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExporterStatus {
    pub name: String,
    /// `jsonl`, `syslog-tcp` or `syslog-tls`.
    pub kind: &'static str,
    /// Syslog: a connection is open. File: the last write succeeded.
    pub connected: bool,
    /// The saved cursor: the first index not yet delivered (`None` until first loaded).
    pub cursor: Option<u64>,
    /// The highest index delivered and counted by the cursor.
    pub last_delivered_index: Option<u64>,
    /// The latest failure, kept after recovery (see `consecutive_failures`).
    pub last_error: Option<String>,
    /// Failures since the last batch delivered: 0 is healthy.
    pub consecutive_failures: u32,
    /// The loop has ended (shutdown).
    pub stopped: bool,
}

/// The hub's poke after a commit: wakes every exporter subscribed, so a new leaf leaves at
/// once rather than at the next poll. Cheap, never blocks, never lost (a poke while an
/// exporter is busy makes its next wait return at once).
#[derive(Debug, Clone)]
pub struct Wakeup(Arc<watch::Sender<u64>>);

impl Default for Wakeup {
    fn default() -> Wakeup {
        Wakeup::new()
    }
}

impl Wakeup {
    pub fn new() -> Wakeup {
        Wakeup(Arc::new(watch::Sender::new(0)))
    }

    pub fn poke(&self) {
        self.0.send_modify(|count| *count = count.wrapping_add(1));
    }
}

/// A running export. Dropping it stops the export too (at its next step); [`shutdown`]
/// waits for it.
///
/// [`shutdown`]: ExporterHandle::shutdown
#[derive(Debug)]
pub struct ExporterHandle {
    status: watch::Receiver<ExporterStatus>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ExporterHandle {
    pub fn status(&self) -> ExporterStatus {
        self.status.borrow().clone()
    }

    /// A receiver of every status change (to wait for a cursor, or to export metrics).
    pub fn watch_status(&self) -> watch::Receiver<ExporterStatus> {
        self.status.clone()
    }

    /// Stops the loop: a batch being written is abandoned without advancing the cursor (it
    /// is sent again at the next start); a syslog connection is closed (TLS close_notify).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the audit export task ended abnormally");
        }
    }
}

/// Starts one export on the current tokio runtime (it panics outside one). Validates the
/// settings and reads the TLS files first (synchronously: this runs once, at start), so a
/// bad setting fails here rather than in the background.
pub fn spawn<S: AuditSource>(
    config: &ExportConfig,
    source: Arc<S>,
    wakeup: &Wakeup,
) -> Result<ExporterHandle, ConfigError> {
    let plan = config.plan()?;
    let name = plan.name.clone();
    let fail = |problem| ConfigError {
        sink: name.clone(),
        problem,
    };
    let (sink, kind) = match plan.sink {
        SinkPlan::Jsonl {
            path,
            max_file_bytes,
        } => (Sink::Jsonl(JsonlSink::new(path, max_file_bytes)), "jsonl"),
        SinkPlan::Syslog(syslog) => {
            let (tls, kind) = match &syslog.tls {
                Some(tls) => (Some(tls_connector(tls).map_err(fail)?), "syslog-tls"),
                None => (None, "syslog-tcp"),
            };
            (Sink::Syslog(Box::new(SyslogSink::new(*syslog, tls))), kind)
        }
    };
    let (status_tx, status) = watch::channel(ExporterStatus {
        name: plan.name.clone(),
        kind,
        connected: false,
        cursor: None,
        last_delivered_index: None,
        last_error: None,
        consecutive_failures: 0,
        stopped: false,
    });
    let (stop, stop_rx) = watch::channel(false);
    let exporter = Exporter {
        name: plan.name.clone(),
        delivery: plan.delivery.clone(),
        backoff: Backoff::new(&plan.delivery),
        source,
        sink,
        status: status_tx,
        stop: stop_rx,
        wakeup: wakeup.clone(),
    };
    let span = tracing::info_span!("audit_export", export = %plan.name, kind);
    let task = tokio::spawn(tracing::Instrument::instrument(exporter.run(), span));
    Ok(ExporterHandle { status, stop, task })
}

enum Sink {
    Jsonl(JsonlSink),
    Syslog(Box<SyslogSink>),
}

impl Sink {
    async fn deliver(&mut self, batch: &[ExportLeaf]) -> Result<usize, ExportError> {
        match self {
            Sink::Jsonl(sink) => sink.deliver(batch).await,
            Sink::Syslog(sink) => sink.deliver(batch).await,
        }
    }

    fn connected(&self) -> bool {
        match self {
            Sink::Jsonl(sink) => sink.is_healthy(),
            Sink::Syslog(sink) => sink.is_connected(),
        }
    }

    fn resume_from(&self, cursor: u64) -> u64 {
        match self {
            Sink::Jsonl(_) => cursor,
            Sink::Syslog(sink) => sink.resume_from(cursor),
        }
    }

    fn take_broken(&mut self) -> Option<String> {
        match self {
            Sink::Jsonl(_) => None,
            Sink::Syslog(sink) => sink.take_broken(),
        }
    }

    async fn closed(&mut self) {
        match self {
            Sink::Jsonl(_) => std::future::pending().await,
            Sink::Syslog(sink) => sink.closed().await,
        }
    }

    fn drop_connection(&mut self, reason: &ExportError) {
        if let Sink::Syslog(sink) = self {
            sink.drop_connection(reason);
        }
    }

    /// A syslog batch may be dropped half-sent at shutdown (its cursor is not saved); a
    /// file batch is finished, since its blocking write cannot be cancelled and must not
    /// overlap the next process's.
    fn abandonable(&self) -> bool {
        matches!(self, Sink::Syslog(_))
    }

    async fn close(&mut self) {
        if let Sink::Syslog(sink) = self {
            sink.close().await;
        }
    }
}

struct Exporter<S> {
    name: String,
    delivery: Delivery,
    backoff: Backoff,
    source: Arc<S>,
    sink: Sink,
    status: watch::Sender<ExporterStatus>,
    stop: watch::Receiver<bool>,
    wakeup: Wakeup,
}

/// What the loop does next.
enum Step {
    Continue,
    Stop,
}

impl<S: AuditSource> Exporter<S> {
    async fn run(mut self) {
        let mut wakeups = self.wakeup.0.subscribe();
        // `None`: the cursor must be (re)loaded before anything is read.
        let mut position: Option<(u64, u64)> = None;
        loop {
            if self.stopping() {
                break;
            }
            let (cursor, next) = match position {
                Some(position) => position,
                None => match self.source.load_cursor(&self.name).await {
                    Ok(cursor) => {
                        let next = self.sink.resume_from(cursor);
                        tracing::info!(from = next, cursor, "resuming the audit export");
                        self.status.send_modify(|s| {
                            s.cursor = Some(cursor);
                            s.last_delivered_index = cursor.checked_sub(1);
                        });
                        position = Some((cursor, next));
                        (cursor, next)
                    }
                    Err(e) => match self.fail(e.into()).await {
                        Step::Continue => continue,
                        Step::Stop => break,
                    },
                },
            };
            if self.sink.take_broken().is_some() {
                self.status.send_modify(|s| s.connected = false);
                position = None;
                continue;
            }
            let batch = match self.read_batch(next).await {
                Ok(batch) => batch,
                Err(e) => match self.fail(e).await {
                    Step::Continue => continue,
                    Step::Stop => break,
                },
            };
            if batch.is_empty() {
                if next < cursor {
                    // A resend of leaves the source can no longer read (pruned by
                    // retention): they were delivered once; go on from the cursor.
                    tracing::info!(
                        from = next,
                        cursor,
                        "leaves to resend are gone; resuming at the cursor"
                    );
                    position = Some((cursor, cursor));
                    continue;
                }
                self.idle(&mut wakeups).await;
                continue;
            }
            let outcome = if self.sink.abandonable() {
                tokio::select! {
                    biased;
                    _ = stopped(&mut self.stop) => break,
                    outcome = self.sink.deliver(&batch) => outcome,
                }
            } else {
                self.sink.deliver(&batch).await
            };
            let delivered = match outcome {
                Ok(count) => count,
                Err(e) => {
                    self.sink.drop_connection(&e);
                    position = None;
                    match self.fail(e).await {
                        Step::Continue => continue,
                        Step::Stop => break,
                    }
                }
            };
            let after = next + delivered as u64;
            if after > cursor {
                if let Err(e) = self.source.save_cursor(&self.name, after).await {
                    // The batch went out but is not counted: it is sent again.
                    position = None;
                    match self.fail(e.into()).await {
                        Step::Continue => continue,
                        Step::Stop => break,
                    }
                }
                tracing::debug!(next = after, "audit leaves delivered");
            }
            let cursor = cursor.max(after);
            position = Some((cursor, after));
            self.backoff.reset();
            let connected = self.sink.connected();
            self.status.send_modify(|s| {
                s.cursor = Some(cursor);
                s.last_delivered_index = cursor.checked_sub(1);
                s.consecutive_failures = 0;
                s.connected = connected;
            });
        }
        self.sink.close().await;
        self.status.send_modify(|s| {
            s.connected = false;
            s.stopped = true;
        });
        tracing::info!("audit export stopped");
    }

    /// The next batch, checked to start at `next` and to have no gap.
    async fn read_batch(&self, next: u64) -> Result<Vec<ExportLeaf>, ExportError> {
        let mut batch = self
            .source
            .leaves_from(next, self.delivery.batch_leaves)
            .await?;
        batch.truncate(self.delivery.batch_leaves);
        for (offset, leaf) in batch.iter().enumerate() {
            let expected = next + offset as u64;
            if leaf.index != expected {
                return Err(ExportError::Gap {
                    expected,
                    got: leaf.index,
                });
            }
        }
        Ok(batch)
    }

    /// Records the failure and waits the backoff (or until told to stop).
    async fn fail(&mut self, error: ExportError) -> Step {
        let connected = self.sink.connected();
        let message = error.to_string();
        let delay = self.backoff.next_delay();
        tracing::warn!(error = %message, retry_in_ms = delay.as_millis() as u64, "audit export failed");
        self.status.send_modify(|s| {
            s.last_error = Some(message);
            s.consecutive_failures = s.consecutive_failures.saturating_add(1);
            s.connected = connected;
        });
        tokio::select! {
            _ = stopped(&mut self.stop) => Step::Stop,
            _ = tokio::time::sleep(delay) => Step::Continue,
        }
    }

    /// Nothing new: wait for a poke, the poll interval, a broken connection, or a stop.
    async fn idle(&mut self, wakeups: &mut watch::Receiver<u64>) {
        tokio::select! {
            _ = stopped(&mut self.stop) => {}
            _ = wakeups.changed() => {}
            _ = tokio::time::sleep(self.delivery.poll_interval) => {}
            _ = self.sink.closed() => {}
        }
    }

    fn stopping(&self) -> bool {
        self.stop.has_changed().is_err() || *self.stop.borrow()
    }
}

/// Resolves once a stop was asked for, or the handle was dropped.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Exponential backoff between `backoff_min` and `backoff_max`, with "equal jitter" (half
/// the delay fixed, half random) when enabled.
struct Backoff {
    min: Duration,
    max: Duration,
    jitter: bool,
    current: Duration,
}

impl Backoff {
    fn new(delivery: &Delivery) -> Backoff {
        Backoff {
            min: delivery.backoff_min,
            max: delivery.backoff_max,
            jitter: delivery.backoff_jitter,
            current: delivery.backoff_min,
        }
    }

    fn reset(&mut self) {
        self.current = self.min;
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.current;
        self.current = (self.current * 2).min(self.max);
        if !self.jitter {
            return delay;
        }
        let half = delay / 2;
        let spread_ns = (delay - half).as_nanos() as u64;
        // A fresh SipHash key per call is random enough to spread reconnections, without a
        // dependency on a random number generator.
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        half + Duration::from_nanos(random % spread_ns.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(jitter: bool) -> Delivery {
        Delivery {
            batch_leaves: 1,
            poll_interval: Duration::from_millis(1),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1_000),
            backoff_jitter: jitter,
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_maximum_and_resets() {
        let mut backoff = Backoff::new(&delivery(false));
        let delays: Vec<u128> = (0..6).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1_000, 1_000]);
        backoff.reset();
        assert_eq!(backoff.next_delay().as_millis(), 100);
    }

    #[test]
    fn jittered_backoff_stays_between_half_and_whole() {
        let mut backoff = Backoff::new(&delivery(true));
        for expected in [100u128, 200, 400, 800, 1_000, 1_000] {
            let delay = backoff.next_delay().as_millis();
            assert!(
                (expected / 2..=expected).contains(&delay),
                "{delay} for {expected}"
            );
        }
    }
}
