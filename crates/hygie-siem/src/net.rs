//! The syslog sink: octet-counted RFC 5424 frames over TCP (RFC 6587) or TLS (RFC 5425).
//!
//! Syslog has no acknowledgement: a flushed batch is in the kernel's send buffer, not
//! necessarily read by the collector. Two things narrow that gap:
//! - a reader task watches every connection for the collector closing it (or, with TLS, an
//!   alert such as a refused client certificate), so a broken connection is noticed even
//!   while idle, and a new one is watched for `connect_settle_ms` before it is used;
//! - after a break, the leaves written on the broken connection are sent again (at most
//!   `resend_leaves_max` before the cursor), since the collector may have lost them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use crate::config::{ConfigProblem, SyslogPlan, TlsPlan};
use crate::exporter::ExportError;
use crate::source::ExportLeaf;

/// The write buffer of a connection: frames are flushed per batch anyway.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// How long a closing connection may take to send its TLS close_notify.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The rustls client of a `syslog-tls` export: the configured CA (or the system's roots),
/// TLS 1.2 and 1.3, and the client certificate when one is configured.
pub(crate) fn tls_connector(plan: &TlsPlan) -> Result<TlsConnector, ConfigProblem> {
    let mut roots = rustls::RootCertStore::empty();
    match &plan.ca_file {
        Some(path) => {
            for cert in read_certificates(path)? {
                roots.add(cert)?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _unparsable) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let reasons: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
                let reason = if reasons.is_empty() {
                    "none found".to_owned()
                } else {
                    reasons.join("; ")
                };
                return Err(ConfigProblem::NoSystemRoots(reason));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match (&plan.client_cert_file, &plan.client_key_file) {
        (Some(cert), Some(key)) => {
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| ConfigProblem::Pem {
                path: key.clone(),
                reason: e.to_string(),
            })?;
            builder.with_client_auth_cert(read_certificates(cert)?, key)?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigProblem> {
    let pem = |e: rustls_pki_types::pem::Error| ConfigProblem::Pem {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(ConfigProblem::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Stream for T {}

/// One open connection: the write half, and the reader task that reports its end.
struct Connection {
    writer: BufWriter<WriteHalf<Box<dyn Stream>>>,
    /// Why the connection ended, once the reader saw it end.
    closed: watch::Receiver<Option<String>>,
    reader: JoinHandle<()>,
}

impl Connection {
    fn new(stream: Box<dyn Stream>) -> Connection {
        let (mut read, write) = tokio::io::split(stream);
        let (closed_tx, closed) = watch::channel(None);
        let reader = tokio::spawn(async move {
            // Collectors send nothing on a syslog connection; what they do send is dropped.
            // Reading also lets rustls process TLS session tickets and alerts.
            let mut buffer = [0u8; 1024];
            let reason = loop {
                match read.read(&mut buffer).await {
                    Ok(0) => break "the collector closed the connection".to_owned(),
                    Ok(_) => {}
                    Err(e) => break e.to_string(),
                }
            };
            let _ = closed_tx.send(Some(reason));
        });
        Connection {
            writer: BufWriter::with_capacity(WRITE_BUFFER_BYTES, write),
            closed,
            reader,
        }
    }

    fn broken(&self) -> Option<String> {
        self.closed.borrow().clone()
    }

    async fn wait_closed(&mut self) {
        let _ = self.closed.wait_for(Option::is_some).await;
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

pub(crate) struct SyslogSink {
    plan: SyslogPlan,
    tls: Option<TlsConnector>,
    connection: Option<Connection>,
    /// Frames of the batch being sent, kept to reuse the allocation.
    frames: Vec<u8>,
    /// The connection was opened since anything was last written.
    fresh: bool,
    /// The first index written on the latest connection that wrote anything: where a resend
    /// starts after a break.
    first_sent: Option<u64>,
    /// A connection broke since the last resend began.
    resend_pending: bool,
}

impl SyslogSink {
    pub(crate) fn new(plan: SyslogPlan, tls: Option<TlsConnector>) -> SyslogSink {
        SyslogSink {
            plan,
            tls,
            connection: None,
            frames: Vec::new(),
            fresh: false,
            first_sent: None,
            resend_pending: false,
        }
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.connection
            .as_ref()
            .is_some_and(|c| c.broken().is_none())
    }

    /// Where sending resumes after the cursor was (re)loaded: the cursor, or before it when
    /// a broken connection may have lost leaves the cursor already counts.
    pub(crate) fn resume_from(&self, cursor: u64) -> u64 {
        match self.first_sent {
            Some(first) if self.resend_pending => first
                .max(cursor.saturating_sub(self.plan.resend_leaves_max))
                .min(cursor),
            _ => cursor,
        }
    }

    /// The reason the open connection ended, if the reader saw it end; the connection is
    /// then dropped.
    pub(crate) fn take_broken(&mut self) -> Option<String> {
        let reason = self.connection.as_ref()?.broken()?;
        self.drop_connection(&reason);
        Some(reason)
    }

    /// Resolves when the open connection ends; never without one.
    pub(crate) async fn closed(&mut self) {
        match &mut self.connection {
            Some(connection) => connection.wait_closed().await,
            None => std::future::pending().await,
        }
    }

    /// Drops the connection after a failure: what was written on it will be sent again.
    pub(crate) fn drop_connection(&mut self, reason: &dyn std::fmt::Display) {
        if self.connection.take().is_some() {
            tracing::warn!(address = %self.plan.address, error = %reason, "disconnected from the SIEM collector");
            self.resend_pending = true;
        }
    }

    /// Formats, writes and flushes the batch (up to a bad leaf): the count is of leaves
    /// flushed to an open connection.
    pub(crate) async fn deliver(&mut self, batch: &[ExportLeaf]) -> Result<usize, ExportError> {
        let Some(first) = batch.first() else {
            return Ok(0);
        };
        self.frames.clear();
        let mut count = 0;
        for leaf in batch {
            if let Err(bad) = self.plan.format.frame(leaf, &mut self.frames) {
                if count == 0 {
                    return Err(bad.into());
                }
                break;
            }
            count += 1;
        }
        let connection = match self.connection.take() {
            Some(connection) => self.connection.insert(connection),
            None => {
                let connection = self.connect().await?;
                self.fresh = true;
                self.connection.insert(connection)
            }
        };
        let address = &self.plan.address;
        if let Some(reason) = connection.broken() {
            return Err(ExportError::Broken {
                address: address.clone(),
                reason,
            });
        }
        if self.fresh {
            self.first_sent = Some(first.index);
            self.fresh = false;
            self.resend_pending = false;
        }
        let send = |source| ExportError::Send {
            address: address.clone(),
            source,
        };
        let frames = &self.frames;
        let write = async {
            connection.writer.write_all(frames).await.map_err(send)?;
            connection.writer.flush().await.map_err(send)
        };
        match tokio::time::timeout(self.plan.send_timeout, write).await {
            Ok(written) => written?,
            Err(_) => {
                return Err(ExportError::Timeout {
                    what: format!("sending {count} leaves to {address}"),
                    timeout_ms: self.plan.send_timeout.as_millis() as u64,
                });
            }
        }
        if let Some(reason) = connection.broken() {
            return Err(ExportError::Broken {
                address: address.clone(),
                reason,
            });
        }
        Ok(count)
    }

    async fn connect(&self) -> Result<Connection, ExportError> {
        let address = &self.plan.address;
        let timeout_ms = self.plan.connect_timeout.as_millis() as u64;
        let timed_out = |what: &str| ExportError::Timeout {
            what: format!("{what} {address}"),
            timeout_ms,
        };
        let tcp = tokio::time::timeout(self.plan.connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| timed_out("connecting to"))?
            .map_err(|source| ExportError::Connect {
                address: address.clone(),
                source,
            })?;
        // Frames go out per batch; Nagle would only delay the last one.
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = match (&self.tls, &self.plan.tls) {
            (Some(connector), Some(tls)) => {
                let handshake = connector.connect(tls.server_name.clone(), tcp);
                let stream = tokio::time::timeout(self.plan.connect_timeout, handshake)
                    .await
                    .map_err(|_| timed_out("the TLS handshake with"))?
                    .map_err(|source| ExportError::Handshake {
                        address: address.clone(),
                        source,
                    })?;
                Box::new(stream)
            }
            _ => Box::new(tcp),
        };
        let mut connection = Connection::new(stream);
        if !self.plan.connect_settle.is_zero()
            && tokio::time::timeout(self.plan.connect_settle, connection.wait_closed())
                .await
                .is_ok()
        {
            return Err(ExportError::Refused {
                address: address.clone(),
                reason: connection.broken().unwrap_or_default(),
            });
        }
        tracing::info!(%address, tls = self.tls.is_some(), "connected to the SIEM collector");
        Ok(connection)
    }

    /// Ends the connection politely (TLS close_notify) at shutdown.
    pub(crate) async fn close(&mut self) {
        if let Some(mut connection) = self.connection.take() {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.writer.shutdown()).await;
        }
    }
}
