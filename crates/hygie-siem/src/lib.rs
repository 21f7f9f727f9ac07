//! Exports Hygie's audit trail to a SIEM, at least once.
//!
//! Every access the hub records is a FHIR AuditEvent, a numbered leaf of the append-only
//! audit log. An export copies those leaves, in index order, to one destination:
//!
//! - `jsonl`: a file of `{"index":N,"event":<AuditEvent>}` lines, fsynced per batch;
//! - `syslog-tcp`: RFC 5424 messages in RFC 6587 octet-counted frames over TCP;
//! - `syslog-tls`: the same over TLS (RFC 5425), the server verified against a CA file or
//!   the system's roots, with an optional client certificate.
//!
//! Each export keeps a cursor (the first index not yet delivered) in the hub's store through
//! [`AuditSource`], and advances it only after a batch was flushed (file: fsynced). After a
//! failure it backs off and resends from the cursor, so the SIEM may see a leaf twice (the
//! index, in the line or the structured data, lets it drop the copy) but never misses one.
//! The crate knows nothing of the database: the hub implements [`AuditSource`].
//!
//! ```
//! use std::sync::Arc;
//! use hygie_siem::{ExportConfig, MemorySource, Wakeup};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let source = Arc::new(MemorySource::new());
//! source.append(1_700_000_000_000_000, br#"{"resourceType":"AuditEvent","outcome":"0"}"#.to_vec());
//! let config: ExportConfig = toml::from_str(&format!(
//!     "name = 'archive'\nkind = 'jsonl'\npath = {:?}",
//!     dir.path().join("audit.jsonl")
//! )).unwrap();
//!
//! let wakeup = Wakeup::new();
//! let export = hygie_siem::spawn(&config, source.clone(), &wakeup).unwrap();
//! wakeup.poke(); // the hub does this after each commit
//! let mut status = export.watch_status();
//! status.wait_for(|s| s.cursor == Some(1)).await.unwrap();
//! export.shutdown().await;
//!
//! let lines = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
//! assert_eq!(lines, "{\"index\":0,\"event\":{\"resourceType\":\"AuditEvent\",\"outcome\":\"0\"}}\n");
//! assert_eq!(source.cursor("archive"), Some(1));
//! # });
//! ```
#![forbid(unsafe_code)]

pub mod config;
mod exporter;
pub mod jsonl;
mod net;
mod source;
pub mod syslog;

pub use config::{ConfigError, ConfigProblem, ExportConfig, validate_all};
pub use exporter::{ExporterHandle, ExporterStatus, Wakeup, spawn};
pub use source::{AuditSource, ExportLeaf, MemorySource, SourceError};
pub use syslog::{BadLeaf, SyslogFormat};
