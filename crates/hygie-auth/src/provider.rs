//! External OpenID Connect providers: their JWKS fetched, cached and refreshed.
//!
//! The one place of this crate that does IO: an HTTPS client of each provider's `jwks_uri`.
//! The rules, each there to keep a misbehaving network or IdP from costing us either our
//! security or our availability:
//! - https only (plain http to 127.0.0.0/8 and ::1 alone, for tests); redirects follow the
//!   same rule, three at most; the trust roots are the system's (a hospital's own CA works);
//!   `HTTPS_PROXY`/`NO_PROXY` of the environment are honoured (never for loopback);
//! - every fetch is bounded: [`JwksOptions::fetch_timeout`], [`MAX_JWKS_BYTES`] read at
//!   most, [`crate::jwks::MAX_JWKS_KEYS`] keys;
//! - fetched at start; a provider whose first fetch fails has its tokens refused with a
//!   clear reason ([`AuthError::KeysUnavailable`]) until a fetch succeeds, and does not keep
//!   the hub from starting;
//! - refreshed every [`JwksOptions::refresh`] (after a failure: every
//!   [`JwksOptions::min_refresh`]), and when a token names a `kid` not known, so that a key
//!   rotation needs no restart; that on-demand fetch happens at most once per
//!   [`JwksOptions::min_refresh`], and concurrent misses share one fetch, so random `kid`s
//!   cannot make the hub hammer the IdP;
//! - a failed refresh keeps the keys of the last good fetch; a successful one replaces them,
//!   so a key the provider withdrew is no longer trusted, cached tokens included.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::AuthError;
use crate::jwks::{self, Jwks, MAX_JWKS_BYTES, SkippedKey};

/// Default interval between two scheduled fetches of a provider's JWKS, seconds.
pub const DEFAULT_JWKS_REFRESH_SECONDS: u64 = 600;
/// Default shortest interval between two fetches caused by unknown `kid`s, seconds.
pub const DEFAULT_JWKS_MIN_REFRESH_SECONDS: u64 = 30;
/// Default time limit of one JWKS fetch (connection, TLS, headers and body), milliseconds.
pub const DEFAULT_JWKS_FETCH_TIMEOUT_MS: u64 = 5_000;
/// The most external providers one hub trusts.
pub const MAX_PROVIDERS: usize = 16;
/// Redirects followed at most by one JWKS fetch.
pub const MAX_JWKS_REDIRECTS: usize = 3;

/// An external OpenID Connect provider whose tokens the hub accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderConfig {
    /// `iss` of its tokens, exactly as they carry it: it selects the provider.
    pub issuer: String,
    /// Its JWKS (`jwks_uri` of its discovery document).
    pub jwks_url: String,
    /// `aud` its tokens must carry, when not the hub's (an IdP's client id, say).
    pub audience: Option<String>,
}

/// When and how JWKS documents are fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksOptions {
    /// Between two scheduled fetches.
    pub refresh: Duration,
    /// Between two fetches caused by unknown `kid`s; also the retry interval after a failure.
    pub min_refresh: Duration,
    /// Time limit of one fetch.
    pub fetch_timeout: Duration,
}

impl Default for JwksOptions {
    fn default() -> JwksOptions {
        JwksOptions {
            refresh: Duration::from_secs(DEFAULT_JWKS_REFRESH_SECONDS),
            min_refresh: Duration::from_secs(DEFAULT_JWKS_MIN_REFRESH_SECONDS),
            fetch_timeout: Duration::from_millis(DEFAULT_JWKS_FETCH_TIMEOUT_MS),
        }
    }
}

/// Why the providers' settings are refused, at start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("provider {index}: the issuer is empty")]
    EmptyIssuer { index: usize },
    #[error(
        "provider {index}: the issuer {issuer:?} is already trusted (the hub's own, or another provider's): the token's iss must name one key set"
    )]
    DuplicateIssuer { index: usize, issuer: String },
    #[error("provider {index}: the audience is empty (leave it out to use the hub's)")]
    EmptyAudience { index: usize },
    #[error("provider {index}: jwks_url {url:?}: {why}")]
    BadUrl {
        index: usize,
        url: String,
        why: String,
    },
    #[error("more than {MAX_PROVIDERS} providers")]
    TooManyProviders,
    #[error(
        "JWKS intervals: refresh ({refresh:?}) must be at least min_refresh ({min_refresh:?}), which must be at least 100 ms; the fetch timeout must be from 100 ms to 60 s"
    )]
    BadOptions {
        refresh: Duration,
        min_refresh: Duration,
    },
    #[error("cannot build the HTTPS client for the JWKS fetches: {0}")]
    HttpClient(String),
}

/// Checks a JWKS URL: https, or http to a loopback address (tests). Host names are not taken
/// for loopback: `localhost` may resolve elsewhere.
pub fn check_jwks_url(url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("credentials in the URL would end up in logs".into());
    }
    match parsed.scheme() {
        "https" if parsed.host().is_some() => Ok(parsed),
        "http" if is_loopback(&parsed) => Ok(parsed),
        "http" => Err(
            "plain http would let anyone on the path substitute the keys: use https (http is allowed to 127.0.0.0/8 and [::1] only, for tests)"
                .into(),
        ),
        other => Err(format!("scheme {other:?}: use https")),
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    // An IPv6 host comes bracketed (`[::1]`); a name never parses as an address.
    url.host_str()
        .map(|host| host.trim_start_matches('[').trim_end_matches(']'))
        .and_then(|host| host.parse::<IpAddr>().ok())
        .is_some_and(|ip| ip.is_loopback())
}

/// The keys of a provider as last fetched.
struct KeyState {
    keys: Arc<Jwks>,
    /// At least one fetch succeeded: until then, every token of the provider is refused.
    ready: bool,
    /// The last fetch's error, while it is the latest outcome.
    last_error: Option<String>,
    /// The skipped keys last reported, to warn once per change rather than every refresh.
    skipped: Vec<SkippedKey>,
}

/// One trusted provider: its settings, HTTP client and current keys.
pub(crate) struct Provider {
    config: ProviderConfig,
    url: reqwest::Url,
    client: reqwest::Client,
    options: JwksOptions,
    state: RwLock<KeyState>,
    /// Held during a fetch, so that fetches of one provider never overlap; holds when the
    /// last one began.
    fetching: tokio::sync::Mutex<Option<Instant>>,
    /// Fetches completed (success or failure): tells a waiting miss that the keys were just
    /// fetched again.
    fetches: AtomicU64,
}

impl Provider {
    pub(crate) fn new(
        index: usize,
        config: &ProviderConfig,
        options: &JwksOptions,
    ) -> Result<Provider, ConfigError> {
        if config.issuer.trim().is_empty() {
            return Err(ConfigError::EmptyIssuer { index });
        }
        if config
            .audience
            .as_ref()
            .is_some_and(|a| a.trim().is_empty())
        {
            return Err(ConfigError::EmptyAudience { index });
        }
        let url = check_jwks_url(&config.jwks_url).map_err(|why| ConfigError::BadUrl {
            index,
            url: config.jwks_url.clone(),
            why,
        })?;
        let loopback = is_loopback(&url);
        let redirects = reqwest::redirect::Policy::custom(|attempt| {
            if attempt.previous().len() >= MAX_JWKS_REDIRECTS {
                attempt.error(format!("more than {MAX_JWKS_REDIRECTS} redirects"))
            } else if let Err(why) = check_jwks_url(attempt.url().as_str()) {
                let to = attempt.url().to_string();
                attempt.error(format!("redirected to {to}: {why}"))
            } else {
                attempt.follow()
            }
        });
        let mut builder = reqwest::Client::builder()
            .timeout(options.fetch_timeout)
            .connect_timeout(options.fetch_timeout)
            .redirect(redirects)
            .user_agent(concat!("hygie/", env!("CARGO_PKG_VERSION"), " (JWKS)"))
            .https_only(!loopback);
        if loopback {
            // A proxy from the environment must not see (nor break) a loopback fetch.
            builder = builder.no_proxy();
        }
        let client = builder
            .build()
            .map_err(|e| ConfigError::HttpClient(error_chain(&e)))?;
        Ok(Provider {
            config: config.clone(),
            url,
            client,
            options: options.clone(),
            state: RwLock::new(KeyState {
                keys: Arc::new(Jwks::default()),
                ready: false,
                last_error: None,
                skipped: Vec::new(),
            }),
            fetching: tokio::sync::Mutex::new(None),
            fetches: AtomicU64::new(0),
        })
    }

    pub(crate) fn issuer(&self) -> &str {
        &self.config.issuer
    }

    pub(crate) fn audience(&self) -> Option<&str> {
        self.config.audience.as_deref()
    }

    /// The current keys, or why there are none yet.
    pub(crate) fn keys(&self) -> Result<Arc<Jwks>, AuthError> {
        let state = self.state.read().expect("JWKS state");
        if state.ready {
            Ok(state.keys.clone())
        } else {
            Err(AuthError::KeysUnavailable(self.config.issuer.clone()))
        }
    }

    /// Fetches completed so far.
    pub(crate) fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Acquire)
    }

    /// Fetches the JWKS now (after any fetch in flight), whatever the rate limit: at start,
    /// and on schedule. True when it succeeded.
    pub(crate) async fn fetch_now(&self) -> bool {
        let mut last = self.fetching.lock().await;
        self.fetch_locked(&mut last).await
    }

    /// After a token named a key not known (or came while there are no keys): fetches again,
    /// unless a fetch ended since the caller looked (`seen`, from [`Provider::fetches`]) or
    /// the last one began less than `min_refresh` ago. True when the keys may have changed
    /// since `seen`, so that looking again is worth it.
    pub(crate) async fn refresh_on_miss(&self, seen: u64) -> bool {
        let mut last = self.fetching.lock().await;
        if self.fetches() != seen {
            return true;
        }
        if last.is_some_and(|began| began.elapsed() < self.options.min_refresh) {
            tracing::debug!(
                issuer = %self.config.issuer,
                "unknown key id: the JWKS was fetched less than {:?} ago, not fetching again",
                self.options.min_refresh
            );
            return false;
        }
        self.fetch_locked(&mut last).await;
        true
    }

    async fn fetch_locked(&self, last: &mut Option<Instant>) -> bool {
        *last = Some(Instant::now());
        let outcome = self
            .download()
            .await
            .and_then(|bytes| jwks::parse(&bytes).map_err(|e| e.to_string()));
        let ok = outcome.is_ok();
        self.install(outcome);
        self.fetches.fetch_add(1, Ordering::AcqRel);
        ok
    }

    /// Takes the outcome of a fetch: new keys, or an error that keeps the old ones.
    fn install(&self, outcome: Result<Jwks, String>) {
        let issuer = &self.config.issuer;
        let url = self.url.as_str();
        let mut state = self.state.write().expect("JWKS state");
        match outcome {
            Ok(keys) => {
                let skipped: Vec<SkippedKey> = keys.skipped().to_vec();
                if skipped != state.skipped {
                    for key in &skipped {
                        if key.expected {
                            tracing::debug!(%issuer, kid = ?key.kid, reason = %key.reason, "JWKS key not used");
                        } else {
                            tracing::warn!(%issuer, kid = ?key.kid, reason = %key.reason, "JWKS key skipped");
                        }
                    }
                }
                let changed = !state.ready || state.keys.key_ids() != keys.key_ids();
                if changed || state.last_error.is_some() {
                    tracing::info!(
                        %issuer, %url, keys = ?keys.key_ids(),
                        "JWKS fetched: {} signing key(s) of this provider trusted", keys.len()
                    );
                }
                if keys.is_empty() {
                    tracing::warn!(%issuer, %url, "the JWKS holds no usable signing key: every token of this provider is refused");
                }
                *state = KeyState {
                    keys: Arc::new(keys),
                    ready: true,
                    last_error: None,
                    skipped,
                };
            }
            Err(error) => {
                if state.ready {
                    tracing::warn!(
                        %issuer, %url, %error,
                        "cannot refresh the JWKS; the {} key(s) of the last good fetch stay trusted",
                        state.keys.len()
                    );
                } else {
                    tracing::warn!(
                        %issuer, %url, %error,
                        "cannot fetch the JWKS: this provider's tokens are refused until a fetch succeeds (retried every {:?})",
                        self.options.min_refresh
                    );
                }
                state.last_error = Some(error);
            }
        }
    }

    /// The JWKS document's bytes, bounded in time (the client's timeout) and size.
    async fn download(&self) -> Result<Vec<u8>, String> {
        let mut response = self
            .client
            .get(self.url.clone())
            .header(
                reqwest::header::ACCEPT,
                "application/jwk-set+json, application/json",
            )
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("the JWKS URL answered HTTP {status}"));
        }
        let too_large = || format!("the JWKS document is larger than {MAX_JWKS_BYTES} bytes");
        if response
            .content_length()
            .is_some_and(|length| length > MAX_JWKS_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| error_chain(&e))? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Fetches on schedule until the task is aborted: every `refresh`, or every
    /// `min_refresh` while the last fetch failed.
    pub(crate) async fn refresh_forever(self: Arc<Self>) {
        loop {
            let failing = {
                let state = self.state.read().expect("JWKS state");
                state.last_error.is_some() || !state.ready
            };
            let delay = if failing {
                self.options.min_refresh
            } else {
                self.options.refresh
            };
            tokio::time::sleep(delay).await;
            self.fetch_now().await;
        }
    }
}

/// An error and its sources, one line: reqwest's own message rarely says what failed.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// The background refresh of the providers' keys: stops when dropped.
#[must_use = "the keys are refreshed only while this is kept"]
pub struct KeyRefresh {
    pub(crate) tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for KeyRefresh {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
