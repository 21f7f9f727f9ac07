//! What an MLLP listener is configured with: limits, senders, TLS, the mapping's tables.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::mapping::MappingSettings;

/// The largest message taken by default (1 MiB): an ADT is a few kB, a result with an
/// embedded report some hundreds.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// A connection with no byte for this long is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Connections served at once; more are closed as they arrive (and logged).
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// The longest a message may take from its last byte to its acknowledgement (the store
/// included); past it the sender gets an AR and should resend.
pub const DEFAULT_MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// The most a TLS handshake may take.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HL7 versions taken (MSH-12): 2.3 to 2.8.
pub const SUPPORTED_VERSIONS: &[&str] = &[
    "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2",
];
/// The role of every sender's principal; its ceiling (built into the policy) is the
/// resource types the mapping writes.
pub const SENDER_ROLE: &str = "hl7-interface";
/// The scopes of a sender's principal.
pub const SENDER_SCOPES: &str = "system/Patient.crus system/Encounter.crus system/Practitioner.crus system/Location.crus system/Observation.crus system/DiagnosticReport.crus";

/// One system allowed to send: MSH-3 (application) and MSH-4 (facility), first
/// components, compared exactly; optionally bound to the client certificates it may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    pub application: String,
    pub facility: String,
    /// SHA-256 of the DER of the client certificates this sender may present (any of
    /// them). Empty: not bound (a certificate may still be required by the listener).
    pub certificate_sha256: Vec<[u8; 32]>,
}

impl Sender {
    /// The principal's subject in the audit trail.
    pub fn subject(&self) -> String {
        format!("hl7v2:{}@{}", self.application, self.facility)
    }
}

/// Everything a listener needs.
#[derive(Clone)]
pub struct ListenerSettings {
    pub max_message_bytes: usize,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub message_timeout: Duration,
    /// MSH-11 processing ids taken (`P` production by default; `T` training, `D` debug).
    pub processing_ids: Vec<String>,
    pub senders: Vec<Sender>,
    pub mapping: MappingSettings,
    /// TLS (with or without client certificates); `None`: plain TCP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The base URL written in the audit trail for this door.
    pub base_url: String,
}

impl Default for ListenerSettings {
    fn default() -> ListenerSettings {
        ListenerSettings {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            message_timeout: DEFAULT_MESSAGE_TIMEOUT,
            processing_ids: vec!["P".to_owned()],
            senders: Vec::new(),
            mapping: MappingSettings::default(),
            tls: None,
            base_url: "mllp://localhost".to_owned(),
        }
    }
}

/// A problem with the TLS files.
#[derive(Debug, thiserror::Error)]
pub enum TlsProblem {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
}

/// The server side of TLS: certificate chain and key, and when `client_ca` is given, client
/// certificates signed by it: required unless `optional_client_certificate`.
pub fn tls_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    optional_client_certificate: bool,
) -> Result<Arc<rustls::ServerConfig>, TlsProblem> {
    let file = |path: &Path, reason: String| TlsProblem::File {
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file(cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(file(cert, "no certificate in the file".to_owned()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file(key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in
                CertificateDer::pem_file_iter(ca).map_err(|e| file(ca, e.to_string()))?
            {
                roots
                    .add(certificate.map_err(|e| file(ca, e.to_string()))?)
                    .map_err(|e| file(ca, e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(file(ca, "no certificate in the file".to_owned()));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = if optional_client_certificate {
                verifier.allow_unauthenticated()
            } else {
                verifier
            }
            .build()
            .map_err(|e| TlsProblem::Verifier(e.to_string()))?;
            builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(certs, key_der)?
        }
        None => builder
            .with_no_client_auth()
            .with_single_cert(certs, key_der)?,
    };
    Ok(Arc::new(config))
}

/// Parses a SHA-256 fingerprint written as 64 hex digits (colons allowed).
pub fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}
