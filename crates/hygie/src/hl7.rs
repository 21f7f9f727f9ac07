//! HL7 v2: the `[hl7]` settings of the MLLP listener (`hygie serve --mllp-listen`), and
//! `hygie hl7 send`, a client for tests and replays.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use hygie_mllp::client::{ClientTls, Connection, split_messages};
use hygie_mllp::settings::{self, ListenerSettings, Sender};
use rustls_pki_types::pem::PemObject;
use serde::Deserialize;

/// `[hl7]`: the MLLP listener.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileHl7 {
    /// Address of the MLLP listener; none: no listener (`--mllp-listen` sets it too).
    pub listen: Option<String>,
    /// PEM certificate chain and key: MLLP over TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: senders must present a client certificate signed by one.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: a sender without a certificate is still let in (to be checked
    /// by its sender's `certificate_sha256`, if any).
    pub optional_client_certificate: Option<bool>,
    /// Allow plain TCP on a non-loopback address (a TLS tunnel or VPN in front).
    pub insecure_plain_tcp: Option<bool>,
    /// The largest message taken, bytes [default: 1 MiB].
    pub max_message_bytes: Option<usize>,
    /// A connection silent this long is closed, seconds [default: 300].
    pub idle_timeout_seconds: Option<u64>,
    /// Connections served at once [default: 64].
    pub max_connections: Option<usize>,
    /// The longest a message may take to be stored and acknowledged, seconds [default: 30].
    pub message_timeout_seconds: Option<u64>,
    /// Days a message is remembered, so that its resend is answered without being stored
    /// twice; older ones are forgotten hourly [default: 30].
    pub remember_days: Option<u64>,
    /// MSH-11 processing ids taken [default: ["P"]].
    pub processing_ids: Option<Vec<String>>,
    /// IANA zone of times sent without an offset [default: the system's].
    pub time_zone: Option<String>,
    /// Assigning authority (CX-4 namespace id or universal id) to identifier system URI.
    #[serde(default)]
    pub identifier_systems: BTreeMap<String, String>,
    /// The systems allowed to send; none: every message is refused (AR).
    #[serde(default)]
    pub senders: Vec<FileSender>,
}

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileSender {
    /// MSH-3, first component.
    pub application: String,
    /// MSH-4, first component.
    pub facility: String,
    /// SHA-256 fingerprints of the client certificates this sender may use.
    #[serde(default)]
    pub certificate_sha256: Vec<String>,
}

/// The largest `max_message_bytes` accepted (64 MiB).
pub const MAX_MESSAGE_BYTES_LIMIT: usize = 64 * 1024 * 1024;
/// The most connections accepted in `max_connections`.
pub const MAX_CONNECTIONS_LIMIT: usize = 10_000;

/// `hl7.remember_days` when none is set.
pub const DEFAULT_REMEMBER_DAYS: u64 = 30;

/// How long messages are remembered (`hl7.remember_days`, 1 to 3650).
pub fn remember(file: &FileHl7) -> anyhow::Result<Duration> {
    let days = file.remember_days.unwrap_or(DEFAULT_REMEMBER_DAYS);
    if !(1..=3_650).contains(&days) {
        bail!("hl7.remember_days must be from 1 to 3650, not {days}");
    }
    Ok(Duration::from_secs(days * 86_400))
}

/// The listener's settings from `[hl7]`, checked.
pub fn listener_settings(file: &FileHl7, base_url: String) -> anyhow::Result<ListenerSettings> {
    let mut settings = ListenerSettings {
        base_url,
        ..ListenerSettings::default()
    };
    if let Some(bytes) = file.max_message_bytes {
        if !(1024..=MAX_MESSAGE_BYTES_LIMIT).contains(&bytes) {
            bail!(
                "hl7.max_message_bytes must be from 1024 to {MAX_MESSAGE_BYTES_LIMIT}, not {bytes}"
            );
        }
        settings.max_message_bytes = bytes;
    }
    if let Some(seconds) = file.idle_timeout_seconds {
        if !(1..=86_400).contains(&seconds) {
            bail!("hl7.idle_timeout_seconds must be from 1 to 86400, not {seconds}");
        }
        settings.idle_timeout = Duration::from_secs(seconds);
    }
    if let Some(connections) = file.max_connections {
        if !(1..=MAX_CONNECTIONS_LIMIT).contains(&connections) {
            bail!(
                "hl7.max_connections must be from 1 to {MAX_CONNECTIONS_LIMIT}, not {connections}"
            );
        }
        settings.max_connections = connections;
    }
    if let Some(seconds) = file.message_timeout_seconds {
        if !(1..=600).contains(&seconds) {
            bail!("hl7.message_timeout_seconds must be from 1 to 600, not {seconds}");
        }
        settings.message_timeout = Duration::from_secs(seconds);
    }
    if let Some(ids) = &file.processing_ids {
        if let Some(bad) = ids
            .iter()
            .find(|id| !matches!(id.as_str(), "P" | "T" | "D"))
        {
            bail!("hl7.processing_ids: {bad:?} is not a processing id (P, T or D)");
        }
        settings.processing_ids = ids.clone();
    }
    settings.mapping.time_zone = match &file.time_zone {
        Some(zone) => jiff::tz::TimeZone::get(zone)
            .with_context(|| format!("hl7.time_zone: {zone:?} is not an IANA time zone"))?,
        None => jiff::tz::TimeZone::system(),
    };
    for (authority, system) in &file.identifier_systems {
        if !system.contains(':') || system.contains(char::is_whitespace) {
            bail!("hl7.identifier_systems.{authority}: {system:?} is not a URI");
        }
    }
    settings.mapping.identifier_systems = file.identifier_systems.clone();
    for sender in &file.senders {
        if sender.application.is_empty() || sender.facility.is_empty() {
            bail!("hl7.senders: each sender needs its application (MSH-3) and facility (MSH-4)");
        }
        let mut pins = Vec::new();
        for pin in &sender.certificate_sha256 {
            pins.push(settings::parse_fingerprint(pin).with_context(|| {
                format!(
                    "hl7.senders ({}): {pin:?} is not a SHA-256 fingerprint (64 hex digits)",
                    sender.application
                )
            })?);
        }
        settings.senders.push(Sender {
            application: sender.application.clone(),
            facility: sender.facility.clone(),
            certificate_sha256: pins,
        });
    }
    settings.tls = match (&file.tls_cert, &file.tls_key) {
        (Some(cert), Some(key)) => Some(
            settings::tls_config(
                cert,
                key,
                file.client_ca.as_deref(),
                file.optional_client_certificate.unwrap_or(false),
            )
            .context("hl7 TLS")?,
        ),
        (None, None) => {
            if file.client_ca.is_some() {
                bail!("hl7.client_ca needs TLS: give hl7.tls_cert and hl7.tls_key");
            }
            None
        }
        _ => bail!("MLLP over TLS needs both hl7.tls_cert and hl7.tls_key"),
    };
    let needs_certificate = settings
        .senders
        .iter()
        .any(|s| !s.certificate_sha256.is_empty());
    if needs_certificate && file.client_ca.is_none() {
        bail!(
            "hl7.senders bind certificates (certificate_sha256): give hl7.client_ca so that clients present one"
        );
    }
    Ok(settings)
}

#[derive(Args, Debug)]
pub struct Hl7Args {
    #[command(subcommand)]
    command: Hl7Command,
}

#[derive(Subcommand, Debug)]
enum Hl7Command {
    /// Send the messages of files over MLLP, one at a time per connection, each waiting
    /// for its acknowledgement; prints one line per message. Exits non-zero if any is not
    /// accepted (AA/CA).
    Send(SendArgs),
}

#[derive(Args, Debug)]
struct SendArgs {
    /// Files of HL7 v2 messages (each message starts with a line `MSH`).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The listener, HOST:PORT.
    #[arg(long, value_name = "ADDR")]
    to: String,
    /// Connections to send over; messages are dealt to them in turn.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Send the whole set this many times (with --unique-control-ids, for load tests).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Rewrite each MSH-10 to be unique (the original, `-`, a counter).
    #[arg(long)]
    unique_control_ids: bool,
    /// Seconds to wait for each acknowledgement.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Print only the summary.
    #[arg(long, short)]
    quiet: bool,
    /// TLS: the CA certificates (PEM) to trust for the listener.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// TLS: the listener's name to check [default: the host of --to].
    #[arg(long, value_name = "NAME")]
    tls_server_name: Option<String>,
    /// TLS: a client certificate (PEM) and its key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// The most connections `hygie hl7 send` opens.
pub const MAX_SEND_CONNECTIONS: usize = 256;

pub async fn run(args: Hl7Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Hl7Command::Send(args) => send(args).await,
    }
}

async fn send(args: SendArgs) -> anyhow::Result<ExitCode> {
    if !(1..=MAX_SEND_CONNECTIONS).contains(&args.connections) {
        bail!("--connections must be from 1 to {MAX_SEND_CONNECTIONS}");
    }
    let mut messages = Vec::new();
    for file in &args.files {
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let found = split_messages(&bytes);
        if found.is_empty() {
            bail!("{}: no HL7 message in the file", file.display());
        }
        messages.extend(found);
    }
    let tls = match &args.tls_ca {
        None => {
            if args.tls_cert.is_some() {
                bail!("--tls-cert needs --tls-ca (the CA of the listener's certificate)");
            }
            None
        }
        Some(ca) => Some(client_tls(&args, ca)?),
    };
    let tls = tls.map(Arc::new);
    let timeout = Duration::from_secs(args.timeout.max(1));
    let total = messages.len() * args.repeat.max(1);
    let messages = Arc::new(messages);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..args.connections {
        let messages = messages.clone();
        let tls = tls.clone();
        let to = args.to.clone();
        let unique = args.unique_control_ids;
        let quiet = args.quiet;
        let connections = args.connections;
        tasks.spawn(async move {
            let mut connection = Connection::open(&to, tls.as_deref(), timeout).await?;
            let mut failures = 0usize;
            let mut sent = 0usize;
            for index in (lane..total).step_by(connections) {
                let original = &messages[index % messages.len()];
                let message = if unique {
                    with_control_id_suffix(original, index)
                } else {
                    original.clone()
                };
                let ack = connection.send(&message).await?;
                sent += 1;
                let (code, line) = describe_ack(&message, &ack);
                if !matches!(code.as_str(), "AA" | "CA") {
                    failures += 1;
                }
                if !quiet || !matches!(code.as_str(), "AA" | "CA") {
                    println!("{line}");
                }
            }
            connection.close().await?;
            anyhow::Ok((sent, failures))
        });
    }
    let (mut sent, mut failures) = (0, 0);
    let mut broken = None;
    while let Some(done) = tasks.join_next().await {
        match done? {
            Ok((s, f)) => {
                sent += s;
                failures += f;
            }
            Err(error) => broken = Some(error),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "{sent} of {total} messages acknowledged, {failures} not accepted, in {elapsed:.2} s ({:.0} messages/s over {} connection(s))",
        sent as f64 / elapsed.max(1e-9),
        args.connections
    );
    if let Some(error) = broken {
        return Err(error.context("sending stopped"));
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn client_tls(args: &SendArgs, ca: &std::path::Path) -> anyhow::Result<ClientTls> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls_pki_types::CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("cannot read {}", ca.display()))?
    {
        roots.add(certificate.with_context(|| format!("{}", ca.display()))?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let chain = rustls_pki_types::CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("cannot read {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()?;
            let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("cannot read {}", key.display()))?;
            builder.with_client_auth_cert(chain, key)?
        }
        _ => builder.with_no_client_auth(),
    };
    let host = args.tls_server_name.clone().unwrap_or_else(|| {
        args.to
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(&args.to)
            .trim_matches(['[', ']'])
            .to_owned()
    });
    Ok(ClientTls {
        config: Arc::new(config),
        server_name: host,
    })
}

/// `MSH-10` rewritten as `MSH-10-N`.
fn with_control_id_suffix(message: &[u8], n: usize) -> Vec<u8> {
    let text = String::from_utf8_lossy(message);
    let Some(separator) = text.chars().nth(3) else {
        return message.to_vec();
    };
    let header_end = text.find('\r').unwrap_or(text.len());
    let mut fields: Vec<String> = text[..header_end]
        .split(separator)
        .map(str::to_owned)
        .collect();
    if fields.len() > 9 {
        fields[9] = format!("{}-{n}", fields[9]);
    }
    let mut out = fields.join(&separator.to_string());
    out.push_str(&text[header_end..]);
    out.into_bytes()
}

/// MSA-1, and a line: control id, code, and the ERR text for a NAK.
fn describe_ack(message: &[u8], ack: &[u8]) -> (String, String) {
    let limits = hygie_hl7v2::Limits::default();
    let control = hygie_hl7v2::parse(message, &limits)
        .map(|m| m.control_id().to_owned())
        .unwrap_or_else(|_| "?".to_owned());
    match hygie_hl7v2::parse(ack, &limits) {
        Ok(ack) => {
            let code = ack
                .segment("MSA")
                .map(|s| s.value(1).to_owned())
                .unwrap_or_default();
            let error = ack
                .segment("ERR")
                .map(|err| {
                    let location = err
                        .field(2)
                        .map(|f| {
                            f.repetitions
                                .first()
                                .map(|r| {
                                    r.components
                                        .iter()
                                        .map(|c| c.value())
                                        .collect::<Vec<_>>()
                                        .join("^")
                                })
                                .unwrap_or_default()
                        })
                        .unwrap_or_default();
                    let code = err
                        .field(3)
                        .and_then(|f| f.component(1))
                        .map(|c| c.value())
                        .unwrap_or("");
                    format!(" ERR {code} at {location}: {}", err.value(8))
                })
                .unwrap_or_default();
            (code.clone(), format!("{control}\t{code}{error}"))
        }
        Err(error) => (
            "?".to_owned(),
            format!("{control}\t? unreadable acknowledgement: {error}"),
        ),
    }
}
