//! The settings of one export (`[[audit.export]]`), read with serde, and their validation.
//!
//! Every field but `name` and `kind` is optional and defaults to the named constant below. A
//! field that does not apply to the kind (a `path` for syslog, a `facility` for a file) is an
//! error rather than silently ignored: a misplaced setting usually means a misread intent.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::syslog::{self, SyslogFormat};

/// The default syslog facility: 13, "log audit" (RFC 5424 §6.2.1).
pub const DEFAULT_FACILITY: u8 = 13;
/// The highest syslog facility number (local7).
pub const FACILITY_MAX: u8 = 23;
/// The IANA example Private Enterprise Number (RFC 5612). A site with its own PEN sets it.
pub const DEFAULT_ENTERPRISE_ID: u32 = 32473;
pub const DEFAULT_APP_NAME: &str = "hygie";
pub const DEFAULT_BATCH_LEAVES: usize = 500;
/// A batch is read into memory whole: 10,000 leaves of a few KiB is tens of MiB at most.
pub const BATCH_LEAVES_MAX: usize = 10_000;
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 1_000;
pub const DEFAULT_BACKOFF_MIN_MS: u64 = 100;
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 30_000;
/// Any interval above an hour is a typo: an audit export an hour late is an outage.
pub const INTERVAL_MS_MAX: u64 = 3_600_000;
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_SEND_TIMEOUT_MS: u64 = 30_000;
/// How long a new connection is watched for a refusal before the first batch is counted as
/// delivered: a TLS 1.3 server rejects a client certificate only after the client's
/// handshake is over, with an alert that arrives one round trip later.
pub const DEFAULT_CONNECT_SETTLE_MS: u64 = 200;
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// RFC 5425 §4.3.1: a TLS syslog receiver MUST accept 2048-byte messages.
pub const MESSAGE_BYTES_MIN: usize = 2048;
pub const MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Leaves sent again after a broken syslog connection (see `resend_leaves_max`).
pub const DEFAULT_RESEND_LEAVES_MAX: u64 = 10_000;
pub const RESEND_LEAVES_MAX: u64 = 1_000_000;
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1024 * 1024 * 1024;
/// A file smaller than this could not hold one large AuditEvent.
pub const FILE_BYTES_MIN: u64 = 64 * 1024;
/// Sink names are cursor keys in the hub's database and appear in logs.
pub const NAME_BYTES_MAX: usize = 64;

/// One `[[audit.export]]` entry, as written in the settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// The cursor name: renaming a sink starts it again from leaf 0.
    pub name: String,
    /// `jsonl`, `syslog-tcp` or `syslog-tls`.
    pub kind: String,

    /// JSON lines: the file appended to.
    pub path: Option<PathBuf>,
    /// JSON lines: the file is refused more lines past this size (rename it away to go on).
    pub max_file_bytes: Option<u64>,

    /// Syslog: `host:port` (`[::1]:6514` for IPv6), resolved at each connection.
    pub address: Option<String>,
    /// Syslog over TLS: the name the server's certificate must carry; default the host of
    /// `address`.
    pub server_name: Option<String>,
    /// Syslog over TLS: the CA certificates (PEM) that sign the server's certificate; default
    /// the system's trust roots.
    pub ca_file: Option<PathBuf>,
    /// Syslog over TLS: the client certificate chain (PEM) for mutual TLS.
    pub client_cert_file: Option<PathBuf>,
    /// Syslog over TLS: the client certificate's private key (PEM, PKCS#8, PKCS#1 or SEC1).
    pub client_key_file: Option<PathBuf>,
    pub facility: Option<u8>,
    pub enterprise_id: Option<u32>,
    /// Syslog HOSTNAME; default the machine's host name (`-` when it has none usable).
    pub hostname: Option<String>,
    pub app_name: Option<String>,
    /// The largest RFC 5424 message sent (the frame's LEN); a longer event is truncated.
    pub max_message_bytes: Option<usize>,
    pub connect_timeout_ms: Option<u64>,
    pub connect_settle_ms: Option<u64>,
    /// Syslog: the longest a batch may take to be written and flushed, since a collector
    /// that stops reading would otherwise hold the export forever. (A file batch is not
    /// timed: its write cannot be cancelled, and a second one must not overlap it.)
    pub send_timeout_ms: Option<u64>,
    /// After a broken connection, the leaves written on it are sent again, at most this many
    /// before the cursor: syslog has no acknowledgement, so a collector that dies loses what
    /// its socket had accepted but it had not read.
    pub resend_leaves_max: Option<u64>,

    /// Leaves read, sent and acknowledged (flushed or fsynced, then the cursor saved) at once.
    pub batch_leaves: Option<usize>,
    /// How often the log is looked at when nothing woke the exporter.
    pub poll_interval_ms: Option<u64>,
    pub backoff_min_ms: Option<u64>,
    pub backoff_max_ms: Option<u64>,
    /// Random spread of each backoff (on by default), so that many hubs do not reconnect at
    /// the same instant.
    pub backoff_jitter: Option<bool>,
}

/// A setting that cannot be used, with the export it belongs to.
#[derive(Debug, thiserror::Error)]
#[error("audit.export {sink:?}: {problem}")]
pub struct ConfigError {
    pub sink: String,
    pub problem: ConfigProblem,
}

/// What is wrong with a setting, and what to write instead.
#[derive(Debug, thiserror::Error)]
pub enum ConfigProblem {
    #[error(
        "the name must be 1 to {NAME_BYTES_MAX} characters of letters, digits, '-', '_' or '.'"
    )]
    BadName,
    #[error("another export has the same name (each keeps its own cursor)")]
    DuplicateName,
    #[error("another export writes the same file {0:?}")]
    DuplicatePath(PathBuf),
    #[error("unknown kind {0:?}: use \"jsonl\", \"syslog-tcp\" or \"syslog-tls\"")]
    UnknownKind(String),
    #[error("{field} is required for kind {kind:?}")]
    Missing {
        field: &'static str,
        kind: &'static str,
    },
    #[error("{field} does not apply to kind {kind:?}")]
    NotForKind {
        field: &'static str,
        kind: &'static str,
    },
    #[error("address {address:?}: {reason} (write host:port, [IPv6]:port for IPv6)")]
    BadAddress {
        address: String,
        reason: &'static str,
    },
    #[error("server_name {0:?} is neither a DNS name nor an IP address")]
    BadServerName(String),
    #[error("{field} = {value} is out of range: {min} to {max}")]
    OutOfRange {
        field: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error("backoff_min_ms ({min_ms}) is above backoff_max_ms ({max_ms})")]
    BackoffOrder { min_ms: u64, max_ms: u64 },
    #[error("{field} {value:?}: {reason}")]
    BadHeaderField {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("client_cert_file and client_key_file go together: set both or neither")]
    ClientCertAndKey,
    #[error("reading {path:?}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("{path:?} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("the system's trust roots could not be loaded ({0}); set ca_file")]
    NoSystemRoots(String),
    #[error("TLS settings: {0}")]
    Tls(#[from] rustls::Error),
}

/// What an export does, validated: built by [`ExportConfig::validate`].
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub name: String,
    pub sink: SinkPlan,
    pub delivery: Delivery,
}

#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub batch_leaves: usize,
    pub poll_interval: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub backoff_jitter: bool,
}

#[derive(Debug, Clone)]
pub(crate) enum SinkPlan {
    Jsonl { path: PathBuf, max_file_bytes: u64 },
    Syslog(Box<SyslogPlan>),
}

#[derive(Debug, Clone)]
pub(crate) struct SyslogPlan {
    pub address: String,
    pub tls: Option<TlsPlan>,
    pub format: SyslogFormat,
    pub connect_timeout: Duration,
    pub connect_settle: Duration,
    pub send_timeout: Duration,
    pub resend_leaves_max: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct TlsPlan {
    pub server_name: rustls_pki_types::ServerName<'static>,
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Jsonl,
    SyslogTcp,
    SyslogTls,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Jsonl => "jsonl",
            Kind::SyslogTcp => "syslog-tcp",
            Kind::SyslogTls => "syslog-tls",
        }
    }
}

impl ExportConfig {
    /// Checks every setting without touching the network or the certificate files (those
    /// are read when the exporter starts).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.plan().map(|_| ())
    }

    pub(crate) fn plan(&self) -> Result<Plan, ConfigError> {
        let fail = |problem| ConfigError {
            sink: self.name.clone(),
            problem,
        };
        self.plan_inner().map_err(fail)
    }

    fn plan_inner(&self) -> Result<Plan, ConfigProblem> {
        if !valid_name(&self.name) {
            return Err(ConfigProblem::BadName);
        }
        let kind = match self.kind.as_str() {
            "jsonl" => Kind::Jsonl,
            "syslog-tcp" => Kind::SyslogTcp,
            "syslog-tls" => Kind::SyslogTls,
            other => return Err(ConfigProblem::UnknownKind(other.to_owned())),
        };
        let kind_name = kind.as_str();
        let not_for = |field: &'static str, given: bool| {
            if given {
                Err(ConfigProblem::NotForKind {
                    field,
                    kind: kind_name,
                })
            } else {
                Ok(())
            }
        };
        let delivery = self.delivery()?;
        let sink = if kind == Kind::Jsonl {
            not_for("address", self.address.is_some())?;
            not_for("facility", self.facility.is_some())?;
            not_for("enterprise_id", self.enterprise_id.is_some())?;
            not_for("hostname", self.hostname.is_some())?;
            not_for("app_name", self.app_name.is_some())?;
            not_for("max_message_bytes", self.max_message_bytes.is_some())?;
            not_for("connect_timeout_ms", self.connect_timeout_ms.is_some())?;
            not_for("connect_settle_ms", self.connect_settle_ms.is_some())?;
            not_for("resend_leaves_max", self.resend_leaves_max.is_some())?;
            not_for("send_timeout_ms", self.send_timeout_ms.is_some())?;
            self.no_tls_fields(kind_name)?;
            let path = self.path.clone().ok_or(ConfigProblem::Missing {
                field: "path",
                kind: kind_name,
            })?;
            let max_file_bytes = in_range(
                "max_file_bytes",
                self.max_file_bytes,
                DEFAULT_MAX_FILE_BYTES,
                FILE_BYTES_MIN,
                u64::MAX,
            )?;
            SinkPlan::Jsonl {
                path,
                max_file_bytes,
            }
        } else {
            not_for("path", self.path.is_some())?;
            not_for("max_file_bytes", self.max_file_bytes.is_some())?;
            let address = self.address.clone().ok_or(ConfigProblem::Missing {
                field: "address",
                kind: kind_name,
            })?;
            let host = address_host(&address)?;
            let tls = if kind == Kind::SyslogTls {
                Some(self.tls_plan(host)?)
            } else {
                self.no_tls_fields(kind_name)?;
                None
            };
            SinkPlan::Syslog(Box::new(SyslogPlan {
                address,
                tls,
                format: self.format()?,
                connect_timeout: millis(
                    "connect_timeout_ms",
                    self.connect_timeout_ms,
                    DEFAULT_CONNECT_TIMEOUT_MS,
                )?,
                connect_settle: Duration::from_millis(in_range(
                    "connect_settle_ms",
                    self.connect_settle_ms,
                    DEFAULT_CONNECT_SETTLE_MS,
                    0,
                    60_000,
                )?),
                send_timeout: millis(
                    "send_timeout_ms",
                    self.send_timeout_ms,
                    DEFAULT_SEND_TIMEOUT_MS,
                )?,
                resend_leaves_max: in_range(
                    "resend_leaves_max",
                    self.resend_leaves_max,
                    DEFAULT_RESEND_LEAVES_MAX,
                    0,
                    RESEND_LEAVES_MAX,
                )?,
            }))
        };
        Ok(Plan {
            name: self.name.clone(),
            sink,
            delivery,
        })
    }

    fn delivery(&self) -> Result<Delivery, ConfigProblem> {
        let batch_leaves = in_range(
            "batch_leaves",
            self.batch_leaves.map(|n| n as u64),
            DEFAULT_BATCH_LEAVES as u64,
            1,
            BATCH_LEAVES_MAX as u64,
        )? as usize;
        let backoff_min = millis(
            "backoff_min_ms",
            self.backoff_min_ms,
            DEFAULT_BACKOFF_MIN_MS,
        )?;
        let backoff_max = millis(
            "backoff_max_ms",
            self.backoff_max_ms,
            DEFAULT_BACKOFF_MAX_MS,
        )?;
        if backoff_min > backoff_max {
            return Err(ConfigProblem::BackoffOrder {
                min_ms: backoff_min.as_millis() as u64,
                max_ms: backoff_max.as_millis() as u64,
            });
        }
        Ok(Delivery {
            batch_leaves,
            poll_interval: millis(
                "poll_interval_ms",
                self.poll_interval_ms,
                DEFAULT_POLL_INTERVAL_MS,
            )?,
            backoff_min,
            backoff_max,
            backoff_jitter: self.backoff_jitter.unwrap_or(true),
        })
    }

    fn no_tls_fields(&self, kind: &'static str) -> Result<(), ConfigProblem> {
        for (field, given) in [
            ("server_name", self.server_name.is_some()),
            ("ca_file", self.ca_file.is_some()),
            ("client_cert_file", self.client_cert_file.is_some()),
            ("client_key_file", self.client_key_file.is_some()),
        ] {
            if given {
                return Err(ConfigProblem::NotForKind { field, kind });
            }
        }
        Ok(())
    }

    fn tls_plan(&self, address_host: &str) -> Result<TlsPlan, ConfigProblem> {
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err(ConfigProblem::ClientCertAndKey);
        }
        let name = self.server_name.as_deref().unwrap_or(address_host);
        let server_name = rustls_pki_types::ServerName::try_from(name)
            .map_err(|_| ConfigProblem::BadServerName(name.to_owned()))?
            .to_owned();
        Ok(TlsPlan {
            server_name,
            ca_file: self.ca_file.clone(),
            client_cert_file: self.client_cert_file.clone(),
            client_key_file: self.client_key_file.clone(),
        })
    }

    fn format(&self) -> Result<SyslogFormat, ConfigProblem> {
        let facility = in_range(
            "facility",
            self.facility.map(u64::from),
            u64::from(DEFAULT_FACILITY),
            0,
            u64::from(FACILITY_MAX),
        )? as u8;
        let hostname = match &self.hostname {
            Some(name) => {
                header_field("hostname", name, syslog::HOSTNAME_BYTES_MAX)?;
                name.clone()
            }
            None => syslog::machine_hostname(),
        };
        let app_name = self.app_name.as_deref().unwrap_or(DEFAULT_APP_NAME);
        header_field("app_name", app_name, syslog::APP_NAME_BYTES_MAX)?;
        let max_message_bytes = in_range(
            "max_message_bytes",
            self.max_message_bytes.map(|n| n as u64),
            DEFAULT_MAX_MESSAGE_BYTES as u64,
            MESSAGE_BYTES_MIN as u64,
            MESSAGE_BYTES_MAX as u64,
        )? as usize;
        Ok(SyslogFormat {
            facility,
            hostname,
            app_name: app_name.to_owned(),
            enterprise_id: self.enterprise_id.unwrap_or(DEFAULT_ENTERPRISE_ID),
            max_message_bytes,
        })
    }
}

/// Checks a list of exports together: names (cursors) and files must not be shared.
pub fn validate_all(configs: &[ExportConfig]) -> Result<(), ConfigError> {
    for (position, config) in configs.iter().enumerate() {
        let plan = config.plan()?;
        let earlier = &configs[..position];
        if earlier.iter().any(|other| other.name == config.name) {
            return Err(ConfigError {
                sink: config.name.clone(),
                problem: ConfigProblem::DuplicateName,
            });
        }
        if let SinkPlan::Jsonl { path, .. } = &plan.sink
            && earlier
                .iter()
                .any(|other| other.path.as_ref() == Some(path))
        {
            return Err(ConfigError {
                sink: config.name.clone(),
                problem: ConfigProblem::DuplicatePath(path.clone()),
            });
        }
    }
    Ok(())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn in_range(
    field: &'static str,
    value: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigProblem> {
    let value = value.unwrap_or(default);
    if value < min || value > max {
        return Err(ConfigProblem::OutOfRange {
            field,
            value,
            min,
            max,
        });
    }
    Ok(value)
}

/// A time setting in milliseconds: at least 1 ms (0 would spin), at most an hour.
fn millis(
    field: &'static str,
    value: Option<u64>,
    default: u64,
) -> Result<Duration, ConfigProblem> {
    in_range(field, value, default, 1, INTERVAL_MS_MAX).map(Duration::from_millis)
}

/// RFC 5424 §6: header fields are 1 to N printable US-ASCII characters (33–126).
fn header_field(field: &'static str, value: &str, bytes_max: usize) -> Result<(), ConfigProblem> {
    let reason = if value.is_empty() {
        Some("must not be empty (write \"-\" for none)".to_owned())
    } else if value.len() > bytes_max {
        Some(format!("longer than {bytes_max} characters"))
    } else if !value.bytes().all(syslog::is_print_us_ascii) {
        Some("only printable US-ASCII without spaces is allowed".to_owned())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ConfigProblem::BadHeaderField {
            field,
            value: value.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// The host of `host:port` or `[v6]:port`, checked to have a port.
fn address_host(address: &str) -> Result<&str, ConfigProblem> {
    let bad = |reason| ConfigProblem::BadAddress {
        address: address.to_owned(),
        reason,
    };
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(bad("unclosed '['"))?;
        let port = after.strip_prefix(':').ok_or(bad("no port"))?;
        (host, port)
    } else {
        let (host, port) = address.rsplit_once(':').ok_or(bad("no port"))?;
        if host.contains(':') {
            return Err(bad("an IPv6 address needs brackets"));
        }
        (host, port)
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad("the port must be 1 to 65535")),
        Ok(_) => Ok(host),
    }
}
