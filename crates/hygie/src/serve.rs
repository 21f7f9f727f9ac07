//! `hygie serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;

use crate::config::{self, LimitArgs, StoreArgs};

#[derive(Args, Debug, Clone, Default)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "HYGIE_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// PEM certificate chain for HTTPS.
    #[arg(
        long,
        env = "HYGIE_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS.
    #[arg(
        long,
        env = "HYGIE_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Allow plain HTTP on a non-loopback address (behind a TLS-terminating proxy).
    #[arg(long, env = "HYGIE_INSECURE_HTTP")]
    pub insecure_http: bool,
    /// Serve data without authentication, as a development principal. Loopback only.
    #[arg(long, env = "HYGIE_NO_AUTH")]
    pub no_auth: bool,
    /// Also listen for HL7 v2 over MLLP on this address (settings in `[hl7]`).
    #[arg(long, env = "HYGIE_MLLP_LISTEN", value_name = "ADDR")]
    pub mllp_listen: Option<String>,
    /// Base URL clients use (for links and Location headers) when behind a proxy; references
    /// written under it are stored as relative ones.
    #[arg(long, env = "HYGIE_PUBLIC_BASE_URL", value_name = "URL")]
    pub public_base_url: Option<String>,
}

/// Refuses configurations that would expose data: plain HTTP or no authentication on a
/// non-loopback address.
pub fn check_exposure(
    address: SocketAddr,
    tls: bool,
    insecure_http: bool,
    no_auth: bool,
) -> anyhow::Result<()> {
    let loopback = address.ip().is_loopback();
    if hygie_hub::UNAUDITED_BENCH_BUILD && !loopback {
        bail!(
            "this binary was built with the `bench-unaudited` feature: it writes NO audit log and serves on a loopback address only, for benchmarks, not {address}"
        );
    }
    if hygie_store::AUDIT_FLOOR_BENCH_BUILD && !loopback {
        bail!(
            "this binary was built with the `bench-audit-floor` feature: its audit log is neither indexed nor verifiable; it serves on a loopback address only, for benchmarks, not {address}"
        );
    }
    if no_auth && !loopback {
        bail!(
            "--no-auth serves patient data to anyone: it is allowed on a loopback address only (127.0.0.1 or [::1]), not {address}"
        );
    }
    if !tls && !loopback && !insecure_http {
        bail!(
            "plain HTTP on {address} would send patient data in clear: give --tls-cert and --tls-key, or --insecure-http if a TLS proxy sits in front"
        );
    }
    Ok(())
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let file = config::load_file(args.store.config.as_deref())?;
    let limits = config::limits(&args.limits, &file.limits)?;
    let listen_text = args
        .listen
        .clone()
        .or_else(|| file.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let address = config::parse_listen(&listen_text)?;
    let tls = match (
        args.tls_cert.clone().or(file.tls_cert.clone()),
        args.tls_key.clone().or(file.tls_key.clone()),
    ) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => bail!("TLS needs both a certificate (tls_cert) and a key (tls_key)"),
    };
    let no_auth = args.no_auth || file.no_auth.unwrap_or(false);
    let insecure_http = args.insecure_http || file.insecure_http.unwrap_or(false);
    check_exposure(address, tls.is_some(), insecure_http, no_auth)?;
    // Parse the embedded R4 definitions now, not on the first request.
    hygie_fhir::schema::preload();
    hygie_fhir::search::params::preload();
    let exports = config::audit_exports(&file)?;
    let store_settings = config::store_settings(&args.store, &file)?;
    let (raw_store, vault) = config::open_store_and_vault(&store_settings).await?;
    let store = vault.seal(raw_store);
    let backend = store.backend();
    let (audit, integrate_every) = config::audit_settings(&file)?;
    let mut hub_config = config::hub_config(&limits);
    hub_config.audit = audit;
    let hub = hygie_hub::Hub::with_policy(store, hub_config, config::policy(&file)?);
    hub.attach_vault(vault);
    hub.bring_index_up_to_date()
        .await
        .map_err(|e| anyhow::anyhow!("cannot bring the search index up to date: {e}"))?;
    // The audit log: what was appended while the hub was down, then every interval. A log
    // that cannot be integrated (a gap, a wrong origin) stops the start, loudly.
    hub.integrate_audit(false)
        .await
        .map_err(|e| anyhow::anyhow!("cannot integrate the audit log: {e}"))?;
    // The SIEM exports (their TLS files read now: a bad one stops the start) read
    // integrated leaves only, so the integrator wakes them after each integration.
    let wakeup = hygie_siem::Wakeup::new();
    let exporters = start_exports(&hub, &exports, &wakeup)?;
    let poke = wakeup.clone();
    let audit_integrator =
        hygie_server::spawn_audit_integrator(hub.clone(), integrate_every, move |_| poke.poke());
    let retention =
        config::audit_retention(&file)?.map(|keep| spawn_audit_retention(hub.clone(), keep));
    // Refreshes the providers' keys in the background while the hub serves.
    let mut key_refresh: Option<hygie_auth::KeyRefresh> = None;
    let mut own_keys_refresh: Option<tokio::task::JoinHandle<()>> = None;
    let tokens = if no_auth {
        None
    } else {
        let auth = config::auth_settings(&file)?;
        let issuer = hub
            .token_issuer(&auth.issuer)
            .await
            .map_err(|e| anyhow::anyhow!("cannot load the token issuer key: {e}"))?;
        let verifier = hygie_auth::Verifier::new(&issuer, &auth.audience, &auth.roles_claim)
            .with_providers(&auth.providers, &auth.jwks)
            .map_err(|e| anyhow::anyhow!("auth.providers: {e}"))?;
        if !auth.providers.is_empty() {
            // Before listening, so that the first requests find the keys; a provider that
            // does not answer delays the start by the fetch timeout at most, and has its
            // tokens refused (with the reason) until a later fetch succeeds.
            let ready = verifier.fetch_provider_keys().await;
            tracing::info!(
                issuers = ?verifier.issuers(),
                "trusting {} OpenID Connect provider(s), {ready} with keys",
                auth.providers.len()
            );
            key_refresh = Some(verifier.spawn_key_refresh());
        }
        let verifier = std::sync::Arc::new(verifier);
        // The hub's own keys as well: installed now (with those still retiring), then kept
        // in step with rotations made elsewhere.
        hygie_server::refresh_token_keys(&hub, &verifier)
            .await
            .map_err(|e| anyhow::anyhow!("cannot load the token signing keys: {e}"))?;
        own_keys_refresh = Some(hygie_server::spawn_token_key_refresh(
            hub.clone(),
            verifier.clone(),
            auth.keys_refresh,
        ));
        Some(verifier)
    };
    // Bind before announcing, so that a taken port is a clear error, and `:0` works.
    let listener =
        hygie_server::bind(address).with_context(|| format!("cannot listen on {address}"))?;
    let bound = listener.local_addr()?;
    let mllp = start_mllp(&hub, &args, &file).await?;
    let http = hygie_server::HttpConfig {
        max_body_bytes: limits.max_body_bytes,
        max_json_depth: limits.max_json_depth,
        request_timeout: limits.request_timeout,
        no_auth,
        tokens,
        rate_per_address: hygie_server::Rate::per_second(
            file.limits
                .rate_per_address
                .unwrap_or(hygie_server::DEFAULT_RATE_PER_ADDRESS),
        ),
        rate_per_principal: hygie_server::Rate::per_second(
            file.limits
                .rate_per_principal
                .unwrap_or(hygie_server::DEFAULT_RATE_PER_PRINCIPAL),
        ),
        public_base_url: args
            .public_base_url
            .clone()
            .or(file.public_base_url.clone()),
        scheme: if tls.is_some() { "https" } else { "http" },
        policy_source: Some(policy_source(args.store.config.clone())),
    };
    spawn_reload_on_hangup(hub.clone(), args.store.config.clone());
    let scheme = http.scheme;
    let app = hygie_server::router(hub.clone(), http);
    if !no_auth {
        tracing::info!(
            "every request needs a bearer token; there are no default credentials. With this hub's --data-dir or --database: `hygie token --subject Practitioner/ID --role clinician --scope 'user/*.rs'` for a clinician, `hygie token --subject Practitioner/ID --role admin --scope openid` for an administrator (revocations, policy reload, `hygie keys signing rotate`)"
        );
    }
    tracing::info!(
        address = %bound,
        store = backend,
        data_dir = %store_settings.data_dir.display(),
        "Hygie listening on {scheme}://{bound}/fhir"
    );
    let result = hygie_server::serve(
        app,
        hygie_server::Listen {
            listener,
            tls,
            grace: limits.shutdown_grace,
        },
        shutdown_signal(),
    )
    .await;
    if let Some(mllp) = mllp {
        // Each connection finishes (and acknowledges) the message it is on.
        mllp.stop(limits.shutdown_grace).await;
    }
    drop(key_refresh);
    audit_integrator.abort();
    if let Some(retention) = retention {
        retention.abort();
    }
    // The last accesses into the tree, under a final checkpoint, then out to the SIEMs.
    let final_size = match hub.integrate_audit(true).await {
        Ok(integrated) => Some(integrated.tree_size),
        Err(error) => {
            tracing::error!(%error, "cannot integrate the last audit leaves; the next start will");
            None
        }
    };
    wakeup.poke();
    stop_exports(exporters, final_size).await;
    if let Some(task) = own_keys_refresh {
        task.abort();
    }
    hub.close().await;
    result.context("the HTTP server failed")?;
    tracing::info!("stopped cleanly");
    Ok(ExitCode::SUCCESS)
}

/// Starts the MLLP listener when `--mllp-listen` or `hl7.listen` asks for one. Plain TCP
/// carries patient data in clear: on a non-loopback address it needs TLS, or
/// `hl7.insecure_plain_tcp` when a tunnel protects it.
async fn start_mllp(
    hub: &hygie_hub::Hub,
    args: &ServeArgs,
    file: &config::FileSettings,
) -> anyhow::Result<Option<hygie_mllp::Listener>> {
    let Some(text) = args.mllp_listen.clone().or_else(|| file.hl7.listen.clone()) else {
        return Ok(None);
    };
    let address = config::parse_listen(&text)?;
    let settings = crate::hl7::listener_settings(&file.hl7, format!("mllp://{address}"))?;
    if settings.tls.is_none()
        && !address.ip().is_loopback()
        && !file.hl7.insecure_plain_tcp.unwrap_or(false)
    {
        bail!(
            "plain MLLP on {address} would send patient data in clear: give hl7.tls_cert and hl7.tls_key, or hl7.insecure_plain_tcp = true if a TLS tunnel or VPN protects it"
        );
    }
    if settings.senders.is_empty() {
        tracing::warn!("no [[hl7.senders]] configured: every HL7 message will be refused (AR)");
    }
    let tls = settings.tls.is_some();
    let remember = crate::hl7::remember(&file.hl7)?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen for MLLP on {address}"))?;
    let running = hygie_mllp::serve(hub.clone(), listener, settings)?;
    spawn_message_retention(hub.clone(), remember);
    tracing::info!(
        address = %running.local_addr(),
        tls,
        "HL7 v2 (MLLP) listening on {}",
        running.local_addr()
    );
    Ok(Some(running))
}

/// Forgets remembered HL7 messages older than `keep`, at start and every hour (for as
/// long as the process runs: the task holds only a clone of the hub).
fn spawn_message_retention(hub: hygie_hub::Hub, keep: std::time::Duration) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(RETENTION_EVERY);
        loop {
            every.tick().await;
            match hub.forget_inbound_messages(keep).await {
                Ok(0) => {}
                Ok(forgotten) => tracing::info!(
                    forgotten,
                    "HL7 retention: messages older than hl7.remember_days forgotten"
                ),
                Err(error) => tracing::warn!(%error, "HL7 retention failed; will try again"),
            }
        }
    });
}

/// How long the exports get at shutdown to deliver the last leaves; what is left goes
/// out at the next start (the cursors say where).
pub const EXPORT_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Starts one exporter per `[[audit.export]]` entry, each with a task that logs its
/// progress and failures.
fn start_exports(
    hub: &hygie_hub::Hub,
    exports: &[hygie_siem::ExportConfig],
    wakeup: &hygie_siem::Wakeup,
) -> anyhow::Result<Vec<hygie_siem::ExporterHandle>> {
    let mut handles = Vec::with_capacity(exports.len());
    for export in exports {
        let source = std::sync::Arc::new(hub.audit_export_source(&export.name));
        let handle = hygie_siem::spawn(export, source, wakeup)
            .map_err(|e| anyhow::anyhow!("cannot start the audit export: {e}"))?;
        tokio::spawn(log_export_status(handle.watch_status()));
        tracing::info!(export = %export.name, kind = %export.kind, "audit export started");
        handles.push(handle);
    }
    Ok(handles)
}

/// Logs an export's cursor when it recovers and its failures when they start, so
/// that the logs tell where each SIEM copy stands (the exporter logs each retry itself).
async fn log_export_status(mut status: tokio::sync::watch::Receiver<hygie_siem::ExporterStatus>) {
    let mut failing = false;
    while status.changed().await.is_ok() {
        let now = status.borrow_and_update().clone();
        if now.consecutive_failures > 0 && !failing {
            failing = true;
            tracing::warn!(
                export = %now.name,
                cursor = ?now.cursor,
                error = now.last_error.as_deref().unwrap_or(""),
                "audit export failing; leaves wait in the log and go out once it recovers"
            );
        } else if now.consecutive_failures == 0 && failing {
            failing = false;
            tracing::info!(export = %now.name, cursor = ?now.cursor, "audit export recovered");
        }
    }
}

/// Waits (up to [`EXPORT_DRAIN_TIMEOUT`]) for every export to pass `final_size` or to
/// fail again (a SIEM that is down would only hold the shutdown), then stops them.
async fn stop_exports(exporters: Vec<hygie_siem::ExporterHandle>, final_size: Option<u64>) {
    if let Some(size) = final_size {
        let drained = async {
            for export in &exporters {
                let mut status = export.watch_status();
                let failures = status.borrow().consecutive_failures;
                let _ = status
                    .wait_for(|s| {
                        s.cursor.is_some_and(|cursor| cursor >= size)
                            || s.consecutive_failures > failures
                    })
                    .await;
            }
        };
        let _ = tokio::time::timeout(EXPORT_DRAIN_TIMEOUT, drained).await;
        for export in &exporters {
            let status = export.status();
            if status.cursor.is_none_or(|cursor| cursor < size) {
                tracing::warn!(
                    export = %status.name,
                    cursor = ?status.cursor,
                    tree_size = size,
                    last_error = ?status.last_error,
                    "the audit export did not catch up before shutdown; it resumes at the next start"
                );
            }
        }
    }
    for export in exporters {
        let status = export.watch_status();
        export.shutdown().await;
        let last = status.borrow().clone();
        tracing::info!(
            export = %last.name,
            cursor = ?last.cursor,
            last_error = ?last.last_error,
            "audit export stopped; it resumes from this cursor at the next start"
        );
    }
}

/// Reads the policy from the settings file again (or the built-in one without a file).
/// How often the audit retention is applied.
const RETENTION_EVERY: std::time::Duration = std::time::Duration::from_secs(3_600);

/// Prunes the bodies of audit leaves older than `keep`, at start and every hour.
fn spawn_audit_retention(
    hub: hygie_hub::Hub,
    keep: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let caller = hygie_hub::Caller::new(
            hygie_policy::Principal::local_operator("retention"),
            "audit-retention",
        );
        let mut every = tokio::time::interval(RETENTION_EVERY);
        loop {
            every.tick().await;
            let cutoff = std::time::SystemTime::now()
                .checked_sub(keep)
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_micros() as i64);
            match hub.prune_audit(&caller, cutoff).await {
                Ok(pruned) if pruned.leaves > 0 => tracing::info!(
                    leaves = pruned.leaves,
                    pruned_below = pruned.pruned_below,
                    "audit retention: old AuditEvent bodies pruned, their hashes kept"
                ),
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "audit retention failed; will try again"),
            }
        }
    })
}

fn policy_source(path: Option<std::path::PathBuf>) -> hygie_server::PolicySource {
    hygie_server::PolicySource(std::sync::Arc::new(move || {
        let file = config::load_file(path.as_deref()).map_err(|e| format!("{e:#}"))?;
        config::policy(&file).map_err(|e| format!("{e:#}"))
    }))
}

/// SIGHUP reloads the policy from the settings file, as the local operator; a file that
/// does not load is logged and the policy in force stays.
fn spawn_reload_on_hangup(hub: hygie_hub::Hub, path: Option<std::path::PathBuf>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: reload the policy over HTTP instead");
            return;
        };
        let source = policy_source(path);
        while hangups.recv().await.is_some() {
            let user = std::env::var("USER").unwrap_or_else(|_| "operator".to_owned());
            let caller =
                hygie_hub::Caller::new(hygie_policy::Principal::local_operator(&user), "sighup");
            match (source.0)() {
                Ok(policy) => {
                    if let Err(error) = hub.reload_policy(&caller, policy).await {
                        tracing::error!(%error, "SIGHUP: the policy could not be reloaded");
                    }
                }
                Err(why) => {
                    tracing::error!(%why, "SIGHUP: the settings do not load; the policy in force stays")
                }
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (hub, path);
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = terminate.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::check_exposure;

    #[test]
    fn exposure_rules() {
        let loopback = "127.0.0.1:8080".parse().unwrap();
        let v6_loopback = "[::1]:8080".parse().unwrap();
        let public = "0.0.0.0:8080".parse().unwrap();
        assert!(check_exposure(loopback, false, false, true).is_ok());
        assert!(check_exposure(v6_loopback, false, false, true).is_ok());
        assert!(
            check_exposure(public, false, false, false).is_err(),
            "plain HTTP outside loopback"
        );
        assert_eq!(
            check_exposure(public, true, false, false).is_ok(),
            !hygie_hub::UNAUDITED_BENCH_BUILD,
            "TLS on a public address is fine, except in a build that does not audit"
        );
        assert_eq!(
            check_exposure(public, false, true, false).is_ok(),
            !hygie_hub::UNAUDITED_BENCH_BUILD
        );
        assert!(
            check_exposure(public, true, false, true).is_err(),
            "no-auth outside loopback"
        );
        assert!(check_exposure(public, false, true, true).is_err());
    }
}
