//! Settings: a TOML file, overridden by `HYGIE_*` environment variables, overridden by
//! flags. clap merges flags and environment; the file fills what both left unset.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde::Deserialize;

/// Where a hub's data lives: shared by every subcommand that works on it.
#[derive(Args, Debug, Clone, Default)]
pub struct StoreArgs {
    /// Directory of the embedded SQLite store (created on first start).
    #[arg(long, env = "HYGIE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// PostgreSQL URL (postgres://user@host/db); overrides --data-dir.
    #[arg(long, env = "HYGIE_DATABASE", value_name = "URL")]
    pub database: Option<String>,
    /// TOML settings file.
    #[arg(long, env = "HYGIE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The key file that encrypts the data at rest (made on first start; keep a copy
    /// apart from the data and its backups) [default: DATA_DIR/vault.key]. The keyring
    /// itself may instead be given in HYGIE_VAULT_KEY.
    #[arg(long, env = "HYGIE_VAULT_KEY_FILE", value_name = "FILE")]
    pub vault_key: Option<PathBuf>,
}

/// Named limits (DESIGN.md invariant 8). Every one can be set in the file, the
/// environment or a flag.
#[derive(Args, Debug, Clone, Default)]
pub struct LimitArgs {
    /// Largest request body, bytes [default: 10485760].
    #[arg(long, env = "HYGIE_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Entries in one batch or transaction Bundle [default: 1000].
    #[arg(long, env = "HYGIE_MAX_BUNDLE_ENTRIES")]
    pub max_bundle_entries: Option<usize>,
    /// Deepest JSON nesting of a request body [default: 64].
    #[arg(long, env = "HYGIE_MAX_JSON_DEPTH")]
    pub max_json_depth: Option<usize>,
    /// Time limit of one request, milliseconds [default: 30000].
    #[arg(long, env = "HYGIE_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Largest _count honoured [default: 1000].
    #[arg(long, env = "HYGIE_MAX_PAGE_SIZE")]
    pub max_page_size: Option<usize>,
}

/// The settings file. Every field is optional.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database: Option<String>,
    pub no_auth: Option<bool>,
    pub insecure_http: Option<bool>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub public_base_url: Option<String>,
    #[serde(default)]
    pub limits: FileLimits,
    #[serde(default)]
    pub sqlite: FileSqlite,
    #[serde(default)]
    pub postgres: FilePostgres,
    #[serde(default)]
    pub auth: FileAuth,
    #[serde(default)]
    pub need_to_know: FileNeedToKnow,
    /// `[labels]`: the protected security labels each role may see, over the built-in
    /// grants (role = ["R", "PSY", …]).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, Vec<String>>,
    /// `[minimize]`: the elements each role may not see, over the built-in masks
    /// (role = ["Encounter.diagnosis", …]; `[]` lifts a built-in mask).
    #[serde(default)]
    pub minimize: std::collections::BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub audit: FileAudit,
    #[serde(default)]
    pub vault: FileVault,
    #[serde(default)]
    pub hl7: crate::hl7::FileHl7,
}

/// `[vault]`: encryption at rest.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileVault {
    /// The key file [default: DATA_DIR/vault.key].
    pub key_file: Option<PathBuf>,
    /// Unwrapped data keys kept in memory [default: 10000].
    pub cached_keys: Option<usize>,
    /// Seconds a cached data key is used before its row is read again: how long an
    /// erasure made by another process may take to reach this one [default: 5].
    pub recheck_seconds: Option<u64>,
}

/// `[audit]`: the audit log's name and how often it is checkpointed.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileAudit {
    /// The log's name in its checkpoints (C2SP origin), e.g. `hospital.example/hygie/audit`;
    /// fixed when the log is created.
    pub origin: Option<String>,
    /// A signed checkpoint at least every this many seconds while the log grows.
    pub checkpoint_every_seconds: Option<u64>,
    /// A signed checkpoint at least every this many leaves.
    pub checkpoint_every_leaves: Option<u64>,
    /// How often new leaves are put into the tree, milliseconds.
    pub integrate_every_ms: Option<u64>,
    /// Leaves put into the tree by one unit of work, at most: the SQLite writer serves no
    /// other request while a unit runs, so this bounds the delay integration adds to one.
    pub integrate_batch_leaves: Option<usize>,
    /// The witnesses whose cosignatures `POST /audit/cosignatures` accepts: their verifier
    /// key lines (`name+keyid+base64`, type `cosignature/v1`, as `hygie audit witness`
    /// prints them).
    #[serde(default)]
    pub witnesses: Vec<String>,
    /// `[[audit.export]]`: copies of the audit log sent to SIEMs (see `hygie-siem`).
    #[serde(default)]
    pub export: Vec<hygie_siem::ExportConfig>,
    /// Retention: AuditEvents older than this many days have their body pruned (their
    /// hashes stay, the log stays verifiable); checked hourly by `hygie serve`. Unset:
    /// kept forever. French hospitals commonly keep access traces 1 to 3 years.
    pub retention_days: Option<u64>,
}

/// The most days of retention accepted (100 years).
pub const MAX_RETENTION_DAYS: u64 = 36_500;

/// `audit.retention_days`, checked: from 1 to [`MAX_RETENTION_DAYS`].
pub fn audit_retention(file: &FileSettings) -> anyhow::Result<Option<Duration>> {
    match file.audit.retention_days {
        None => Ok(None),
        Some(days) if (1..=MAX_RETENTION_DAYS).contains(&days) => {
            Ok(Some(Duration::from_secs(days * 86_400)))
        }
        Some(days) => {
            bail!("audit.retention_days must be from 1 to {MAX_RETENTION_DAYS}, not {days}")
        }
    }
}

/// The `[[audit.export]]` entries, checked (names, kinds, addresses, TLS files): a bad one
/// stops the start with the entry's name rather than failing later in the background.
pub fn audit_exports(file: &FileSettings) -> anyhow::Result<Vec<hygie_siem::ExportConfig>> {
    hygie_siem::validate_all(&file.audit.export).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(file.audit.export.clone())
}

/// The witness keys of `audit.witnesses`: cosignature keys only, since a log key there
/// would let a second log's signature pass for a witness's.
fn witness_keys(lines: &[String]) -> anyhow::Result<Vec<hygie_audit::checkpoint::VerifierKey>> {
    use hygie_audit::checkpoint::{SignatureType, VerifierKey};
    let mut keys: Vec<VerifierKey> = Vec::with_capacity(lines.len());
    for (position, line) in lines.iter().enumerate() {
        let key = VerifierKey::parse(line.trim()).map_err(|e| {
            anyhow::anyhow!("audit.witnesses[{position}] {line:?} is not a verifier key: {e}")
        })?;
        if key.signature_type() != SignatureType::CosignatureV1 {
            bail!(
                "audit.witnesses[{position}] {line:?} is not a witness key (cosignature/v1, type 0x04): give the key `hygie audit witness` prints"
            );
        }
        if keys
            .iter()
            .any(|k| k.name() == key.name() && k.key_id() == key.key_id())
        {
            bail!("audit.witnesses[{position}] {line:?} is given twice");
        }
        keys.push(key);
    }
    Ok(keys)
}

/// The audit log settings, checked, and the integration interval.
pub fn audit_settings(
    file: &FileSettings,
) -> anyhow::Result<(hygie_hub::AuditLogSettings, Duration)> {
    let audit = &file.audit;
    let defaults = hygie_hub::AuditLogSettings::default();
    let every_seconds = audit
        .checkpoint_every_seconds
        .unwrap_or(defaults.checkpoint_every.as_secs());
    if !(1..=86_400).contains(&every_seconds) {
        bail!("audit.checkpoint_every_seconds must be from 1 to 86400, not {every_seconds}");
    }
    let every_leaves = audit
        .checkpoint_every_leaves
        .unwrap_or(defaults.checkpoint_every_leaves);
    if !(1..=10_000_000).contains(&every_leaves) {
        bail!("audit.checkpoint_every_leaves must be from 1 to 10000000, not {every_leaves}");
    }
    let integrate_ms = audit.integrate_every_ms.unwrap_or(1_000);
    if !(10..=60_000).contains(&integrate_ms) {
        bail!("audit.integrate_every_ms must be from 10 to 60000, not {integrate_ms}");
    }
    let batch_leaves = audit
        .integrate_batch_leaves
        .unwrap_or(defaults.integrate_batch_leaves);
    if !(100..=1_000_000).contains(&batch_leaves) {
        bail!("audit.integrate_batch_leaves must be from 100 to 1000000, not {batch_leaves}");
    }
    if let Some(origin) = &audit.origin
        && (origin.trim().is_empty() || origin.len() > 255 || origin.chars().any(char::is_control))
    {
        bail!("audit.origin must be 1 to 255 printable characters, not {origin:?}");
    }
    let witnesses = witness_keys(&audit.witnesses)?;
    Ok((
        hygie_hub::AuditLogSettings {
            origin: audit.origin.clone(),
            witnesses,
            checkpoint_every_leaves: every_leaves,
            checkpoint_every: Duration::from_secs(every_seconds),
            integrate_batch_leaves: batch_leaves,
        },
        Duration::from_millis(integrate_ms),
    ))
}

/// `[need_to_know]`: who needs a care relationship to see a patient's data, and who may
/// break the glass. Every field defaults to the built-in rules.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileNeedToKnow {
    /// Roles limited to the patients they care for [clinician, nurse].
    pub roles: Option<Vec<String>>,
    /// Days an encounter or care team still counts after it ends [30].
    pub window_days: Option<u32>,
    /// Roles that may break the glass [clinician, nurse].
    pub break_glass_roles: Option<Vec<String>>,
    /// Hours a broken glass opens the patient [8].
    pub break_glass_hours: Option<u32>,
    /// Types anyone with the scope may see without a relationship [Patient].
    pub open_types: Option<Vec<String>>,
}

/// `[auth]`: the bearer tokens this hub accepts.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileAuth {
    /// `iss` of the tokens the hub signs (`hygie token`).
    pub issuer: Option<String>,
    /// `aud` every token must carry: this hub's FHIR base URL, or a name for it.
    pub audience: Option<String>,
    /// The claim that holds the roles: `roles`, or a dotted path (`realm_access.roles`).
    /// The same path is read in the tokens of every issuer, own or external.
    pub roles_claim: Option<String>,
    /// Role ceilings replacing or adding to the built-in ones: role = "SMART scopes".
    #[serde(default)]
    pub roles: std::collections::BTreeMap<String, String>,
    /// `[[auth.providers]]`: external OpenID Connect providers whose tokens are accepted
    /// too, each selected by the token's `iss`.
    #[serde(default)]
    pub providers: Vec<FileProvider>,
    /// Seconds between two scheduled fetches of each provider's JWKS.
    pub jwks_refresh_seconds: Option<u64>,
    /// Seconds at least between two JWKS fetches caused by unknown key ids (and between
    /// retries after a failed fetch): random `kid`s cannot make the hub hammer the IdP.
    pub jwks_min_refresh_seconds: Option<u64>,
    /// Time limit of one JWKS fetch, milliseconds.
    pub jwks_fetch_timeout_ms: Option<u64>,
    /// Seconds between two reads of the hub's own signing keys by a serving process: a key
    /// retired on another process (or by `hygie keys`) stops verifying here within this.
    pub keys_refresh_seconds: Option<u64>,
}

/// `[[auth.providers]]`: one external OpenID Connect provider.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileProvider {
    /// `iss` of its tokens, exactly (`https://sso.example/realms/hospital`).
    pub issuer: String,
    /// Its JWKS: https (http only to a loopback address).
    pub jwks_url: String,
    /// `aud` its tokens carry, when not `auth.audience` (an IdP client id, say).
    pub audience: Option<String>,
}

/// The token settings, with their defaults.
pub struct AuthSettings {
    pub issuer: String,
    pub audience: String,
    pub roles_claim: String,
    pub providers: Vec<hygie_auth::ProviderConfig>,
    pub jwks: hygie_auth::JwksOptions,
    pub keys_refresh: Duration,
}

/// Default of `auth.keys_refresh_seconds`.
pub const DEFAULT_KEYS_REFRESH_SECONDS: u64 = 5;
/// Longest `auth.keys_refresh_seconds` accepted: a retired key must stop verifying soon.
const MAX_KEYS_REFRESH_SECONDS: u64 = 300;

/// The longest JWKS refresh interval accepted, seconds (one day): a withdrawn key must not
/// stay trusted longer.
const MAX_JWKS_REFRESH_SECONDS: u64 = 24 * 3600;

pub fn auth_settings(file: &FileSettings) -> anyhow::Result<AuthSettings> {
    let auth = &file.auth;
    let refresh_seconds = auth
        .jwks_refresh_seconds
        .unwrap_or(hygie_auth::DEFAULT_JWKS_REFRESH_SECONDS);
    let min_refresh_seconds = auth
        .jwks_min_refresh_seconds
        .unwrap_or(hygie_auth::DEFAULT_JWKS_MIN_REFRESH_SECONDS);
    let fetch_timeout_ms = auth
        .jwks_fetch_timeout_ms
        .unwrap_or(hygie_auth::DEFAULT_JWKS_FETCH_TIMEOUT_MS);
    if min_refresh_seconds == 0 {
        bail!(
            "auth.jwks_min_refresh_seconds must be at least 1: it bounds how often unknown key ids make the hub fetch a provider's JWKS"
        );
    }
    if !(min_refresh_seconds..=MAX_JWKS_REFRESH_SECONDS).contains(&refresh_seconds) {
        bail!(
            "auth.jwks_refresh_seconds must be from auth.jwks_min_refresh_seconds ({min_refresh_seconds}) to {MAX_JWKS_REFRESH_SECONDS}, not {refresh_seconds}"
        );
    }
    let keys_refresh_seconds = auth
        .keys_refresh_seconds
        .unwrap_or(DEFAULT_KEYS_REFRESH_SECONDS);
    if !(1..=MAX_KEYS_REFRESH_SECONDS).contains(&keys_refresh_seconds) {
        bail!(
            "auth.keys_refresh_seconds must be from 1 to {MAX_KEYS_REFRESH_SECONDS}, not {keys_refresh_seconds}"
        );
    }
    if !(100..=60_000).contains(&fetch_timeout_ms) {
        bail!("auth.jwks_fetch_timeout_ms must be from 100 to 60000, not {fetch_timeout_ms}");
    }
    let settings = AuthSettings {
        issuer: auth.issuer.clone().unwrap_or_else(|| "hygie".to_owned()),
        audience: auth.audience.clone().unwrap_or_else(|| "hygie".to_owned()),
        roles_claim: auth
            .roles_claim
            .clone()
            .unwrap_or_else(|| "roles".to_owned()),
        providers: auth
            .providers
            .iter()
            .map(|p| hygie_auth::ProviderConfig {
                issuer: p.issuer.clone(),
                jwks_url: p.jwks_url.clone(),
                audience: p.audience.clone(),
            })
            .collect(),
        jwks: hygie_auth::JwksOptions {
            refresh: Duration::from_secs(refresh_seconds),
            min_refresh: Duration::from_secs(min_refresh_seconds),
            fetch_timeout: Duration::from_millis(fetch_timeout_ms),
        },
        keys_refresh: Duration::from_secs(keys_refresh_seconds),
    };
    for (name, value) in [
        ("auth.issuer", &settings.issuer),
        ("auth.audience", &settings.audience),
        ("auth.roles_claim", &settings.roles_claim),
    ] {
        if value.trim().is_empty() {
            bail!("{name} must not be empty");
        }
    }
    Ok(settings)
}

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    pub max_body_bytes: Option<usize>,
    pub max_bundle_entries: Option<usize>,
    pub max_json_depth: Option<usize>,
    pub request_timeout_ms: Option<u64>,
    pub default_page_size: Option<usize>,
    pub max_page_size: Option<usize>,
    pub shutdown_grace_ms: Option<u64>,
    /// A search (or count) running longer is stopped with 400 too-costly.
    pub search_time_limit_ms: Option<u64>,
    /// Sustained requests per second from one client address (0: no limit).
    pub rate_per_address: Option<u32>,
    /// Sustained requests per second of one authenticated principal (0: no limit).
    pub rate_per_principal: Option<u32>,
}

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileSqlite {
    /// `full` (default) or `normal`.
    pub synchronous: Option<String>,
    pub max_batch: Option<usize>,
    pub queue_capacity: Option<usize>,
    /// WAL size (MiB) past which the writer pauses to fold it into the database.
    pub wal_limit_mib: Option<u64>,
    /// Page cache of the writer's connection (MiB): index pages that stay in memory. At
    /// most 32 MiB while the database is under 1 GiB (see the store's `WriterCache`).
    pub cache_mib: Option<u64>,
    /// Threads reading (searches, history) beside the writer, each with a connection.
    pub readers: Option<usize>,
}

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct FilePostgres {
    pub pool_size: Option<u32>,
}

pub fn load_file(path: Option<&Path>) -> anyhow::Result<FileSettings> {
    let Some(path) = path else {
        return Ok(FileSettings::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the settings file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid settings file {}", path.display()))
}

/// Everything needed to open a store.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub data_dir: PathBuf,
    pub database: Option<String>,
    /// Where the keyring is read from (and made, on first start).
    pub vault_key_file: PathBuf,
    pub vault: hygie_hub::vault::VaultSettings,
    pub sqlite: hygie_store::SqliteOptions,
    pub postgres: hygie_store::PostgresOptions,
}

pub fn store_settings(args: &StoreArgs, file: &FileSettings) -> anyhow::Result<StoreSettings> {
    let mut sqlite = hygie_store::SqliteOptions::default();
    if let Some(mode) = &file.sqlite.synchronous {
        sqlite.synchronous_full = match mode.to_ascii_lowercase().as_str() {
            "full" => true,
            "normal" => false,
            other => bail!("sqlite.synchronous must be \"full\" or \"normal\", not {other:?}"),
        };
    }
    if let Some(max_batch) = file.sqlite.max_batch {
        sqlite.max_batch = max_batch;
    }
    if let Some(capacity) = file.sqlite.queue_capacity {
        sqlite.queue_capacity = capacity;
    }
    if let Some(mib) = file.sqlite.wal_limit_mib {
        if mib == 0 {
            bail!("sqlite.wal_limit_mib must be at least 1");
        }
        sqlite.wal_limit_bytes = mib.saturating_mul(1024 * 1024);
    }
    if let Some(mib) = file.sqlite.cache_mib {
        if mib == 0 {
            bail!("sqlite.cache_mib must be at least 1");
        }
        sqlite.cache_size_kib = i64::try_from(mib.saturating_mul(1024)).unwrap_or(i64::MAX);
    }
    if let Some(readers) = file.sqlite.readers {
        if !(1..=64).contains(&readers) {
            bail!("sqlite.readers must be between 1 and 64, not {readers}");
        }
        sqlite.readers = readers;
    }
    let mut postgres = hygie_store::PostgresOptions::default();
    if let Some(pool_size) = file.postgres.pool_size {
        postgres.pool_size = pool_size;
    }
    if let Some(ms) = file.limits.search_time_limit_ms {
        if ms == 0 {
            bail!("limits.search_time_limit_ms must be at least 1");
        }
        sqlite.query_time_limit = std::time::Duration::from_millis(ms);
        postgres.query_time_limit = std::time::Duration::from_millis(ms);
    }
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("./hygie-data"));
    let mut vault = hygie_hub::vault::VaultSettings::default();
    if let Some(cached) = file.vault.cached_keys {
        if cached == 0 {
            bail!("vault.cached_keys must be at least 1");
        }
        vault.cached_keys = cached;
    }
    if let Some(seconds) = file.vault.recheck_seconds {
        if !(1..=3600).contains(&seconds) {
            bail!("vault.recheck_seconds must be from 1 to 3600, not {seconds}");
        }
        vault.recheck = Duration::from_secs(seconds);
    }
    Ok(StoreSettings {
        vault_key_file: args
            .vault_key
            .clone()
            .or_else(|| file.vault.key_file.clone())
            .unwrap_or_else(|| data_dir.join("vault.key")),
        vault,
        data_dir,
        database: args.database.clone().or_else(|| file.database.clone()),
        sqlite,
        postgres,
    })
}

/// Opens the store with encryption at rest: what every subcommand that reads or writes
/// resources works on.
pub async fn open_store(settings: &StoreSettings) -> anyhow::Result<hygie_store::SharedStore> {
    let (raw, vault) = open_store_and_vault(settings).await?;
    Ok(vault.seal(raw))
}

/// The store without encryption, and its vault: for the commands that work on the keys
/// themselves (`hygie keys rotate`, `hygie patient erase`).
pub async fn open_store_and_vault(
    settings: &StoreSettings,
) -> anyhow::Result<(
    hygie_store::SharedStore,
    std::sync::Arc<hygie_hub::vault::Vault>,
)> {
    let raw = open_raw_store(settings).await?;
    let vault = open_vault(settings, &raw).await?;
    let sealed = vault
        .seal_plaintext_versions(&raw)
        .await
        .map_err(|e| anyhow::anyhow!("cannot seal the versions stored in clear: {e}"))?;
    if sealed > 0 {
        tracing::info!(
            versions = sealed,
            "sealed the versions stored before encryption at rest"
        );
    }
    let reapplied = vault
        .reapply_erasures(&raw)
        .await
        .map_err(|e| anyhow::anyhow!("cannot re-apply the erasures of the key file: {e}"))?;
    if reapplied > 0 {
        tracing::warn!(
            patients = reapplied,
            "this database held patients the key file had erased (a backup from before the erasure): erased again"
        );
    }
    Ok((raw, vault))
}

/// The keyring: from `HYGIE_VAULT_KEY`, else the key file, made there on the first start
/// of a database that has none recorded. A database already bound to a keyring never
/// gets a new one: a missing or foreign key file stops everything (the data would be
/// unreadable, or worse, written under keys nobody keeps).
pub async fn open_vault(
    settings: &StoreSettings,
    raw: &hygie_store::SharedStore,
) -> anyhow::Result<std::sync::Arc<hygie_hub::vault::Vault>> {
    use hygie_store::StoreExt;
    let path = settings.vault_key_file.clone();
    let (keyring, key_file) = match std::env::var("HYGIE_VAULT_KEY") {
        Ok(text) if !text.trim().is_empty() => (
            hygie_vault::Keyring::from_text(&text)
                .map_err(|e| anyhow::anyhow!("HYGIE_VAULT_KEY: {e}"))?,
            None,
        ),
        _ => match hygie_vault::Keyring::load(&path) {
            Ok(keyring) => (keyring, Some(path)),
            Err(hygie_vault::VaultError::Missing(_)) => {
                let bound = raw
                    .read(|tx| tx.meta_get("vault.installation"))
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot read the database: {e}"))?;
                if let Some(installation) = bound {
                    bail!(
                        "the key file {} is missing, and this database's data is encrypted under the keyring of installation {installation}: put that key file back (from where you keep its copy, never from the data's backups), or point --vault-key at it; nothing was changed",
                        path.display()
                    );
                }
                let keyring = hygie_vault::Keyring::generate(
                    &uuid::Uuid::new_v4().to_string(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_micros() as i64)
                        .unwrap_or(0),
                );
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("cannot create {}", parent.display()))?;
                }
                keyring
                    .save(&path)
                    .map_err(|e| anyhow::anyhow!("cannot write the new key file: {e}"))?;
                tracing::warn!(
                    key_file = %path.display(),
                    "made a new key file for encryption at rest: keep a copy of it apart from the data and from its backups (whoever holds both can read them), and move it off this disk in production"
                );
                (keyring, Some(path))
            }
            Err(error) => bail!("{error}"),
        },
    };
    hygie_hub::vault::Vault::attach(raw, keyring, key_file, settings.vault.clone())
        .await
        .map_err(|e| anyhow::anyhow!("{e}; nothing was changed"))
}

/// Opens the store off the async workers (the PostgreSQL client blocks while it connects),
/// without encryption: for what reads no resource (`audit verify`).
pub async fn open_raw_store(settings: &StoreSettings) -> anyhow::Result<hygie_store::SharedStore> {
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || {
        hygie_store::open(
            settings.database.as_deref(),
            &settings.data_dir,
            &settings.sqlite,
            &settings.postgres,
        )
    })
    .await
    .context("the store-opening task failed")?
    .map_err(|e| anyhow::anyhow!("cannot open the store: {e}"))
}

/// The resolved limits.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_bundle_entries: usize,
    pub max_json_depth: usize,
    pub request_timeout: Duration,
    pub default_page_size: usize,
    pub max_page_size: usize,
    pub shutdown_grace: Duration,
}

pub fn limits(args: &LimitArgs, file: &FileLimits) -> anyhow::Result<Limits> {
    let limits = Limits {
        max_body_bytes: args
            .max_body_bytes
            .or(file.max_body_bytes)
            .unwrap_or(10 * 1024 * 1024),
        max_bundle_entries: args
            .max_bundle_entries
            .or(file.max_bundle_entries)
            .unwrap_or(1_000),
        max_json_depth: args.max_json_depth.or(file.max_json_depth).unwrap_or(64),
        request_timeout: Duration::from_millis(
            args.request_timeout_ms
                .or(file.request_timeout_ms)
                .unwrap_or(30_000),
        ),
        default_page_size: file.default_page_size.unwrap_or(50),
        max_page_size: args.max_page_size.or(file.max_page_size).unwrap_or(1_000),
        shutdown_grace: Duration::from_millis(file.shutdown_grace_ms.unwrap_or(30_000)),
    };
    if limits.max_json_depth < 8 {
        bail!("max_json_depth must be at least 8: FHIR resources nest that deep");
    }
    if limits.default_page_size == 0 || limits.default_page_size > limits.max_page_size {
        bail!("default_page_size must be between 1 and max_page_size");
    }
    if limits.max_body_bytes < 1024 || limits.max_bundle_entries == 0 {
        bail!("max_body_bytes must be at least 1024 and max_bundle_entries at least 1");
    }
    Ok(limits)
}

pub fn hub_config(limits: &Limits) -> hygie_hub::HubConfig {
    hygie_hub::HubConfig {
        max_bundle_entries: limits.max_bundle_entries,
        default_page_size: limits.default_page_size,
        max_page_size: limits.max_page_size,
        audit: Default::default(),
    }
}

pub fn parse_listen(text: &str) -> anyhow::Result<SocketAddr> {
    text.parse().with_context(|| {
        format!("invalid listen address {text:?}: use IP:PORT, e.g. 127.0.0.1:8080 or [::1]:8080")
    })
}

/// The policy: the built-in role ceilings with the settings' `[auth.roles]` over them.
pub fn policy(file: &FileSettings) -> anyhow::Result<hygie_policy::Policy> {
    let ceilings = hygie_policy::RoleCeilings::with_overrides(
        file.auth
            .roles
            .iter()
            .map(|(role, scopes)| (role.as_str(), scopes.as_str())),
        hygie_fhir::schema::is_resource_type,
    )
    .map_err(|e| anyhow::anyhow!("auth.roles: {e}"))?;
    let defaults = hygie_policy::NeedToKnow::default();
    let file_labels = &file.labels;
    let file_minimize = &file.minimize;
    let file = &file.need_to_know;
    let need_to_know = hygie_policy::NeedToKnow {
        roles: file.roles.clone().unwrap_or(defaults.roles),
        window_days: file.window_days.unwrap_or(defaults.window_days),
        break_glass_roles: file
            .break_glass_roles
            .clone()
            .unwrap_or(defaults.break_glass_roles),
        break_glass_hours: file.break_glass_hours.unwrap_or(defaults.break_glass_hours),
        open_types: file.open_types.clone().unwrap_or(defaults.open_types),
    };
    if !(1..=72).contains(&need_to_know.break_glass_hours) {
        bail!(
            "need_to_know.break_glass_hours = {}: give 1 to 72 hours",
            need_to_know.break_glass_hours
        );
    }
    if need_to_know.window_days > 3_650 {
        bail!(
            "need_to_know.window_days = {}: give at most 3650 days",
            need_to_know.window_days
        );
    }
    for resource_type in &need_to_know.open_types {
        if !hygie_fhir::schema::is_resource_type(resource_type) {
            bail!("need_to_know.open_types: {resource_type:?} is not an R4 resource type");
        }
    }
    let labels = hygie_policy::LabelGrants::with_overrides(
        file_labels
            .iter()
            .map(|(role, codes)| (role.as_str(), codes.as_slice())),
    )
    .map_err(|e| anyhow::anyhow!("labels: {e}"))?;
    let elements = hygie_policy::ElementMasks::with_overrides(
        file_minimize
            .iter()
            .map(|(role, paths)| (role.as_str(), paths.as_slice())),
        |resource_type, element| {
            hygie_fhir::schema::is_resource_type(resource_type)
                && hygie_fhir::schema::element(&format!("{resource_type}.{element}")).is_some()
        },
    )
    .map_err(|e| anyhow::anyhow!("minimize: {e}"))?;
    Ok(hygie_policy::Policy::with_ceilings(ceilings)
        .with_need_to_know(need_to_know)
        .with_labels(labels)
        .with_element_masks(elements))
}

#[cfg(test)]
mod auth_tests {
    use super::*;

    fn settings(text: &str) -> anyhow::Result<AuthSettings> {
        auth_settings(&toml::from_str::<FileSettings>(text)?)
    }

    #[test]
    fn providers_and_jwks_intervals_are_read() {
        let auth = settings(
            r#"
            [auth]
            roles_claim = "realm_access.roles"
            jwks_refresh_seconds = 300
            jwks_min_refresh_seconds = 10

            [[auth.providers]]
            issuer = "https://sso.example/realms/h"
            jwks_url = "https://sso.example/realms/h/protocol/openid-connect/certs"

            [[auth.providers]]
            issuer = "https://login.example/tenant/v2.0"
            jwks_url = "https://login.example/tenant/discovery/v2.0/keys"
            audience = "api://hygie"
            "#,
        )
        .unwrap();
        assert_eq!(auth.providers.len(), 2);
        assert_eq!(auth.providers[1].audience.as_deref(), Some("api://hygie"));
        assert_eq!(auth.providers[0].audience, None);
        assert_eq!(auth.jwks.refresh, Duration::from_secs(300));
        assert_eq!(auth.jwks.min_refresh, Duration::from_secs(10));
        assert_eq!(
            auth.jwks.fetch_timeout,
            Duration::from_millis(hygie_auth::DEFAULT_JWKS_FETCH_TIMEOUT_MS)
        );
        // Without any: no provider, the default intervals.
        let auth = settings("").unwrap();
        assert!(auth.providers.is_empty());
        assert_eq!(auth.jwks, hygie_auth::JwksOptions::default());
    }

    #[test]
    fn settings_that_would_lift_the_bounds_are_refused() {
        for text in [
            "[auth]\njwks_min_refresh_seconds = 0",
            "[auth]\njwks_refresh_seconds = 5\njwks_min_refresh_seconds = 30",
            "[auth]\njwks_refresh_seconds = 864000",
            "[auth]\njwks_fetch_timeout_ms = 0",
            "[auth]\njwks_fetch_timeout_ms = 600000",
        ] {
            assert!(settings(text).is_err(), "{text}");
        }
        // A provider's settings are checked by name: a typo is not silently ignored.
        assert!(
            toml::from_str::<FileSettings>(
                "[[auth.providers]]\nissuer = \"i\"\njwks_uri = \"https://x/certs\""
            )
            .is_err()
        );
        assert!(
            toml::from_str::<FileSettings>("[[auth.providers]]\nissuer = \"i\"").is_err(),
            "jwks_url is required"
        );
    }
}

#[cfg(test)]
mod audit_tests {
    use super::*;
    use hygie_audit::checkpoint::{Cosigner, NoteSigner};

    fn file(text: &str) -> FileSettings {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn witness_keys_are_cosignature_keys_each_once() {
        let (witness, _) = Cosigner::generate("witness.example").unwrap();
        let line = witness.verifier_key().to_string();
        let text = format!("[audit]\nwitnesses = [{line:?}]");
        let (settings, _) = audit_settings(&file(&text)).unwrap();
        assert_eq!(settings.witnesses, vec![witness.verifier_key()]);

        let (log, _) = NoteSigner::generate("hygie/audit/x").unwrap();
        let log_key = log.verifier_key().to_string();
        for (bad, why) in [
            (
                format!("[audit]\nwitnesses = [{log_key:?}]"),
                "not a witness key",
            ),
            (
                "[audit]\nwitnesses = [\"nonsense\"]".to_owned(),
                "not a verifier key",
            ),
            (
                format!("[audit]\nwitnesses = [{line:?}, {line:?}]"),
                "given twice",
            ),
        ] {
            let error = audit_settings(&file(&bad)).unwrap_err().to_string();
            assert!(error.contains(why), "{error}");
            assert!(error.contains("audit.witnesses["), "{error}");
        }
    }

    #[test]
    fn integration_units_are_bounded_both_ways() {
        let (settings, _) = audit_settings(&file("")).unwrap();
        assert_eq!(
            settings.integrate_batch_leaves,
            hygie_hub::AuditLogSettings::default().integrate_batch_leaves
        );
        let (settings, _) = audit_settings(&file("[audit]\nintegrate_batch_leaves = 500")).unwrap();
        assert_eq!(settings.integrate_batch_leaves, 500);
        for bad in [0, 99, 1_000_001] {
            let text = format!("[audit]\nintegrate_batch_leaves = {bad}");
            let error = audit_settings(&file(&text)).unwrap_err().to_string();
            assert!(error.contains("audit.integrate_batch_leaves"), "{error}");
        }
    }

    #[test]
    fn a_bad_export_entry_is_refused_by_name() {
        let good =
            file("[[audit.export]]\nname = 'archive'\nkind = 'jsonl'\npath = '/tmp/audit.jsonl'");
        assert_eq!(audit_exports(&good).unwrap().len(), 1);
        let bad = file(
            "[[audit.export]]\nname = 'archive'\nkind = 'jsonl'\npath = '/tmp/a.jsonl'\n\
             [[audit.export]]\nname = 'siem'\nkind = 'syslog-udp'\naddress = '127.0.0.1:514'",
        );
        let error = audit_exports(&bad).unwrap_err().to_string();
        assert!(error.contains("\"siem\""), "{error}");
        assert!(error.contains("syslog-udp"), "{error}");
        assert!(audit_exports(&file("")).unwrap().is_empty());
    }
}
