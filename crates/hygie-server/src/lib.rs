//! Hygie's HTTP front door: FHIR R4 REST (JSON) at `/fhir`, `/healthz`, `/readyz`.
//!
//! The only crate that knows HTTP. It turns a request into a [`hygie_hub::Caller`] and a
//! hub call, and the hub's answer (or [`hygie_hub::HubError`]) into a FHIR response with
//! the right status, headers and OperationOutcome. It never touches the store.
//!
//! ```no_run
//! # async fn example(hub: hygie_hub::Hub) {
//! let app = hygie_server::router(hub, hygie_server::HttpConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await.unwrap();
//! axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
//!     .await
//!     .unwrap();
//! # }
//! ```
#![forbid(unsafe_code)]

mod admin;
mod audit;
mod fhir;
mod middleware;
mod rate;
mod response;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{any, get, post};
use hygie_hub::Hub;

pub use rate::Rate;
pub use response::outcome_response;

/// Reads the policy again from where it came from (the settings file), for
/// `POST /admin/policy/reload`; an error says why the new settings were refused.
#[derive(Clone)]
pub struct PolicySource(pub Arc<dyn Fn() -> Result<hygie_policy::Policy, String> + Send + Sync>);

impl std::fmt::Debug for PolicySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PolicySource")
    }
}

/// Named bounds and switches of the HTTP front door.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Deepest JSON nesting accepted (400 beyond), checked before parsing.
    pub max_json_depth: usize,
    /// A request still running after this is answered 503 (its unit of work, if already
    /// queued, still commits or fails atomically).
    pub request_timeout: Duration,
    /// Every request acts as the development principal (loopback only; checked by the CLI).
    pub no_auth: bool,
    /// Verifies bearer tokens; without one (and without `no_auth`), every request is
    /// anonymous and refused.
    pub tokens: Option<Arc<hygie_auth::Verifier>>,
    /// Requests per client address (token bucket, 429 beyond).
    pub rate_per_address: Rate,
    /// Requests per authenticated principal (token bucket, 429 beyond).
    pub rate_per_principal: Rate,
    /// The base URL clients use, for links and `Location`; derived from `Host` when unset.
    pub public_base_url: Option<String>,
    /// `https` when serving TLS, for derived base URLs.
    pub scheme: &'static str,
    /// Where `POST /admin/policy/reload` reads the policy again; without one, it is 404.
    pub policy_source: Option<PolicySource>,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            max_body_bytes: 10 * 1024 * 1024,
            max_json_depth: 64,
            request_timeout: Duration::from_secs(30),
            no_auth: false,
            tokens: None,
            rate_per_address: Rate::per_second(DEFAULT_RATE_PER_ADDRESS),
            rate_per_principal: Rate::per_second(DEFAULT_RATE_PER_PRINCIPAL),
            public_base_url: None,
            scheme: "http",
            policy_source: None,
        }
    }
}

/// Default sustained requests per second from one address (burst: twice as many).
pub const DEFAULT_RATE_PER_ADDRESS: u32 = 2_000;
/// Default sustained requests per second of one principal (burst: twice as many).
pub const DEFAULT_RATE_PER_PRINCIPAL: u32 = 1_000;

#[derive(Clone)]
pub(crate) struct AppState {
    pub hub: Hub,
    pub config: Arc<HttpConfig>,
    pub by_address: Arc<rate::Limiter>,
    pub by_principal: Arc<rate::Limiter>,
    /// When the hub's own signing keys were last read again because a token named a key
    /// this process did not know (a rotation on another process): at most once a second.
    pub own_keys_reread: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

/// Least time between two reads of the signing keys prompted by unknown key ids: a flood
/// of forged key ids costs the store one read a second, no more.
pub const OWN_KEYS_REREAD_MIN: Duration = Duration::from_secs(1);

/// Reads the hub's own signing keys from the store into `verifier` (after a rotation made
/// by another hub process or by `hygie keys`). Returns how many keys it now knows.
pub async fn refresh_token_keys(
    hub: &Hub,
    verifier: &hygie_auth::Verifier,
) -> Result<usize, hygie_hub::HubError> {
    let keys = hub.token_keys(verifier.own_issuer()).await?.own_keys();
    verifier.set_own_keys(&keys).map_err(|e| {
        hygie_hub::HubError::new(500, hygie_fhir::IssueType::Exception, e.to_string())
    })?;
    Ok(keys.len())
}

/// Integrates the audit log's new leaves every `every` (and signs checkpoints as due)
/// until the returned task is aborted. A failure is logged and retried: the leaves stay
/// appended, only their integration waits. `on_integrated` runs after each integration
/// that added leaves: the SIEM exporters export only integrated leaves, and this wakes
/// them at once rather than at their next poll.
pub fn spawn_audit_integrator(
    hub: Hub,
    every: Duration,
    on_integrated: impl Fn(&hygie_hub::Integrated) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match hub.integrate_audit(false).await {
                Ok(integrated) if integrated.leaves > 0 => on_integrated(&integrated),
                Ok(_) => {}
                Err(error) => tracing::error!(%error, "audit integration failed; retrying"),
            }
        }
    })
}

/// Keeps `verifier`'s own keys in step with the store, every `every`, until the returned
/// task is aborted: a key retired on another hub process stops verifying here within
/// `every`.
pub fn spawn_token_key_refresh(
    hub: Hub,
    verifier: Arc<hygie_auth::Verifier>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            if let Err(error) = refresh_token_keys(&hub, &verifier).await {
                tracing::error!(%error, "cannot read the token signing keys again; the ones known stay");
            }
        }
    })
}

/// The application: FHIR REST under `/fhir`, health probes, request ids, time-outs.
pub fn router(hub: Hub, config: HttpConfig) -> Router {
    let timeout = config.request_timeout;
    let state = AppState {
        hub,
        by_address: Arc::new(rate::Limiter::new(config.rate_per_address)),
        by_principal: Arc::new(rate::Limiter::new(config.rate_per_principal)),
        config: Arc::new(config),
        own_keys_reread: Arc::new(std::sync::Mutex::new(None)),
    };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(middleware::readyz))
        .route(
            "/fhir/.well-known/smart-configuration",
            get(fhir::smart_configuration),
        )
        .route("/fhir/.well-known/jwks.json", get(fhir::jwks))
        .route(
            "/audit/checkpoint",
            get(audit::checkpoint).fallback(audit::other),
        )
        .route("/audit/key", get(audit::key).fallback(audit::other))
        .route(
            "/audit/proof/inclusion",
            get(audit::inclusion).fallback(audit::other),
        )
        .route(
            "/audit/proof/consistency",
            get(audit::consistency).fallback(audit::other),
        )
        .route(
            "/audit/cosignatures",
            post(audit::cosignatures).fallback(audit::other),
        )
        .route("/audit", any(audit::other))
        .route("/audit/{*rest}", any(audit::other))
        .route("/admin/policy/reload", post(admin::reload_policy))
        .route("/admin/keys", any(admin::keys))
        .route("/admin/keys/{*rest}", any(admin::keys))
        .route("/admin/patients/{id}/erase", post(admin::erase_patient))
        .route("/admin/break-glass", any(admin::break_glass))
        .route("/admin/break-glass/{*rest}", any(admin::break_glass))
        .route(
            "/admin/revocations",
            post(admin::revocations).delete(admin::revocations),
        )
        .route("/fhir", any(fhir::dispatch))
        .route("/fhir/", any(fhir::dispatch))
        .route("/fhir/{*path}", any(fhir::dispatch))
        .fallback(fhir::not_found)
        .with_state(state)
        .layer(axum::middleware::from_fn(move |request, next| {
            middleware::time_limit(timeout, request, next)
        }))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            middleware::panic_response,
        ))
        .layer(axum::middleware::from_fn(middleware::request_id))
}

/// Where and how to listen.
pub struct Listen {
    /// Bound by the caller (see [`bind`]), so that errors come early, `:0` reveals its
    /// port, and no other process can take the address between binding and serving.
    pub listener: std::net::TcpListener,
    /// PEM certificate chain and private key, for HTTPS.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// How long in-flight requests get to finish after a shutdown signal.
    pub grace: Duration,
}

/// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish
/// (up to `grace`), and returns.
pub async fn serve(
    app: Router,
    listen: Listen,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let handle = axum_server::Handle::new();
    let signal_handle = handle.clone();
    let grace = listen.grace;
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        signal_handle.graceful_shutdown(Some(grace));
    });
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    match listen.tls {
        Some((cert, key)) => {
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
                .await
                .map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!(
                            "cannot load TLS certificate {} / key {}: {e}",
                            cert.display(),
                            key.display()
                        ),
                    )
                })?;
            axum_server::from_tcp_rustls(listen.listener, tls)?
                .handle(handle)
                .serve(service)
                .await
        }
        None => {
            axum_server::from_tcp(listen.listener)?
                .handle(handle)
                .serve(service)
                .await
        }
    }
}

/// Binds the listening socket that [`serve`] will use.
pub fn bind(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(address)
}
