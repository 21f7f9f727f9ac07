//! Bearer tokens: who a request comes from.
//!
//! Two kinds of issuers sign the JWTs a request may present, side by side; the token's
//! `iss` says which one verifies it, and an `iss` trusted by none is refused:
//! - the hub's own [`Issuer`] (Ed25519, `alg: EdDSA`), whose key the hub keeps with its
//!   data, for development, tests and small sites (`hygie token`);
//! - external OpenID Connect providers ([`ProviderConfig`]: Keycloak, Entra ID, …), whose
//!   keys come from their JWKS, fetched and refreshed by [`provider`] and read by [`jwks`]
//!   (RS256, ES256, EdDSA; a key is chosen by the token's `kid`).
//!
//! [`Verifier::verify`] checks a token completely before anything of it is believed: the
//! algorithm is the one of the key it names (never `none`, never an HMAC keyed with a
//! public key, never one the header picks), the signature, then `iss`, `aud`, `exp` and
//! `nbf` with a bounded clock skew. Verified tokens are cached until they expire (or their
//! provider withdraws the key), so a request pays the signature check once per token, not
//! once per request. What the claims allow is the policy's business (`hygie-policy`); this
//! crate only says who signed what.
//!
//! ```
//! use hygie_auth::{Issuer, TokenRequest, Verifier};
//! let issuer = Issuer::generate("https://hygie.example/auth").unwrap();
//! let token = issuer
//!     .issue(&TokenRequest {
//!         subject: "Practitioner/123".into(),
//!         audience: "https://hygie.example/fhir".into(),
//!         roles: vec!["clinician".into()],
//!         scope: "user/*.rs".into(),
//!         patient: None,
//!         ttl_seconds: 3600,
//!     }, 1_700_000_000)
//!     .unwrap();
//! let verifier = Verifier::new(&issuer, "https://hygie.example/fhir", "roles");
//! let claims = verifier.verify(&token, 1_700_000_100).unwrap();
//! assert_eq!(claims.subject, "Practitioner/123");
//! assert!(verifier.verify(&token, 1_700_003_700).is_err(), "expired");
//! ```
#![forbid(unsafe_code)]

pub mod jwks;
pub mod provider;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use crate::jwks::PublicKey;
use crate::provider::Provider;
pub use crate::provider::{
    ConfigError, DEFAULT_JWKS_FETCH_TIMEOUT_MS, DEFAULT_JWKS_MIN_REFRESH_SECONDS,
    DEFAULT_JWKS_REFRESH_SECONDS, JwksOptions, KeyRefresh, MAX_PROVIDERS, ProviderConfig,
};

/// Clock skew tolerated on `exp` and `nbf`, seconds.
pub const CLOCK_SKEW_SECONDS: u64 = 60;
/// The longest lifetime `hygie token` signs, seconds (one day).
pub const MAX_TTL_SECONDS: u64 = 24 * 3600;
/// The longest token accepted, bytes: a JWT is a few hundred bytes to a few KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Verified tokens kept in the cache at most.
pub const MAX_CACHED_TOKENS: usize = 10_000;
/// Most keys the hub's own issuer is trusted with at once (the current one and those
/// retired by rotations whose tokens have not run out yet).
pub const MAX_OWN_KEYS: usize = 16;

/// Why a token is refused. The messages may be shown to the caller: they name what failed,
/// never a key or what the token would have granted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the bearer token is not a well-formed JWT")]
    Malformed,
    #[error("the bearer token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("the token's algorithm {0} is not accepted (EdDSA, RS256, ES256 only)")]
    UnsupportedAlgorithm(String),
    #[error("the token was not signed by a trusted issuer")]
    UnknownIssuer,
    #[error("the token's algorithm {token} is not the one of its key ({key})")]
    AlgorithmMismatch { token: String, key: String },
    #[error("the token names no key (kid): its issuer's keys are selected by kid")]
    MissingKeyId,
    #[error("the token's key (kid) is not among its issuer's current keys")]
    UnknownKey,
    #[error("the token was signed with a key that has been retired: ask for a new token")]
    RetiredKey,
    #[error(
        "the signing keys of the issuer {0} could not be fetched yet; the hub keeps trying (its log says why)"
    )]
    KeysUnavailable(String),
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is meant for another audience")]
    WrongAudience,
    #[error("the token lacks the claim {0}")]
    MissingClaim(&'static str),
    #[error("the token has been revoked")]
    Revoked,
    #[error("cannot sign the token: {0}")]
    Signing(String),
}

/// What `hygie token` (or a test) asks the hub's issuer to sign.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// `sub`: `Practitioner/ID`, `Patient/ID`, `Device/ID` (a system), …
    pub subject: String,
    /// `aud`: the FHIR base URL the token is for.
    pub audience: String,
    pub roles: Vec<String>,
    /// SMART scopes, space-separated.
    pub scope: String,
    /// The SMART `patient` launch context.
    pub patient: Option<String>,
    pub ttl_seconds: u64,
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub issuer: String,
    pub subject: String,
    /// `jti`, for revocation.
    pub token_id: Option<String>,
    pub expires_at: i64,
    pub roles: Vec<String>,
    /// SMART scopes, space-separated, as the token has them.
    pub scope: String,
    pub patient: Option<String>,
    /// `fhirUser`: the FHIR resource of the user, when the issuer says.
    pub fhir_user: Option<String>,
}

/// The hub's own token issuer: an Ed25519 key pair.
pub struct Issuer {
    key_pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
    issuer: String,
    key_id: String,
}

impl Issuer {
    /// A new key pair, from the system's randomness.
    pub fn generate(issuer: &str) -> Result<Issuer, AuthError> {
        let document = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
            .map_err(|_| AuthError::Signing("no system randomness for a key".into()))?;
        Issuer::from_pkcs8(issuer, document.as_ref())
    }

    /// The issuer of a stored key (PKCS#8 v2, as [`Issuer::pkcs8`] gives it).
    pub fn from_pkcs8(issuer: &str, pkcs8: &[u8]) -> Result<Issuer, AuthError> {
        let key_pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| {
            AuthError::Signing(
                "the stored issuer key is not a valid Ed25519 PKCS#8 document".into(),
            )
        })?;
        let key_id = key_id_of(key_pair.public_key().as_ref());
        Ok(Issuer {
            key_pair,
            pkcs8: pkcs8.to_vec(),
            issuer: issuer.to_owned(),
            key_id,
        })
    }

    /// The private key, to keep with the hub's data.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public key as a JWK (`kty: OKP`, `crv: Ed25519`), for a JWKS document.
    pub fn public_jwk(&self) -> Value {
        ed25519_jwk(&self.key_id, self.key_pair.public_key().as_ref())
    }

    /// The raw Ed25519 public key (32 bytes).
    pub fn public_key(&self) -> &[u8] {
        self.key_pair.public_key().as_ref()
    }

    /// This issuer's key as the verifier trusts it: with no end.
    pub fn own_key(&self) -> OwnKey {
        OwnKey {
            public_key: self.public_key().to_vec(),
            trusted_until: None,
        }
    }

    /// Signs a token valid from `now` (Unix seconds) for `ttl_seconds` (at most
    /// [`MAX_TTL_SECONDS`]), with a fresh `jti`.
    pub fn issue(&self, request: &TokenRequest, now: i64) -> Result<String, AuthError> {
        if request.ttl_seconds == 0 || request.ttl_seconds > MAX_TTL_SECONDS {
            return Err(AuthError::Signing(format!(
                "the lifetime must be between 1 and {MAX_TTL_SECONDS} seconds"
            )));
        }
        if request.subject.is_empty() {
            return Err(AuthError::Signing("the subject is empty".into()));
        }
        let mut claims = Map::new();
        claims.insert("iss".into(), Value::from(self.issuer.clone()));
        claims.insert("sub".into(), Value::from(request.subject.clone()));
        claims.insert("aud".into(), Value::from(request.audience.clone()));
        claims.insert("iat".into(), Value::from(now));
        claims.insert("nbf".into(), Value::from(now));
        claims.insert("exp".into(), Value::from(now + request.ttl_seconds as i64));
        claims.insert("jti".into(), Value::from(uuid::Uuid::new_v4().to_string()));
        claims.insert("scope".into(), Value::from(request.scope.clone()));
        claims.insert("roles".into(), Value::from(request.roles.clone()));
        if let Some(patient) = &request.patient {
            claims.insert("patient".into(), Value::from(patient.clone()));
        }
        if request.subject.contains('/') {
            claims.insert("fhirUser".into(), Value::from(request.subject.clone()));
        }
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.key_id.clone());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&self.pkcs8))
            .map_err(|e| AuthError::Signing(e.to_string()))
    }
}

/// The key id of an Ed25519 public key: a digest of it, stable, and says nothing secret.
pub fn key_id_of(public_key: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, public_key);
    URL_SAFE_NO_PAD.encode(&digest.as_ref()[..12])
}

fn ed25519_jwk(key_id: &str, public_key: &[u8]) -> Value {
    serde_json::json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "alg": "EdDSA",
        "use": "sig",
        "kid": key_id,
        "x": URL_SAFE_NO_PAD.encode(public_key),
    })
}

/// A public key of the hub's own issuer that its tokens may be signed with: the current
/// one, or one a rotation retired, trusted until `trusted_until` (Unix seconds) so that the
/// tokens it signed run out rather than fail at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnKey {
    /// Raw Ed25519 public key, 32 bytes.
    pub public_key: Vec<u8>,
    /// `None`: the current key, trusted with no end.
    pub trusted_until: Option<i64>,
}

impl OwnKey {
    pub fn key_id(&self) -> String {
        key_id_of(&self.public_key)
    }

    /// Whether tokens signed with this key are accepted at `now` (Unix seconds).
    pub fn trusted_at(&self, now: i64) -> bool {
        self.trusted_until.is_none_or(|until| now < until)
    }
}

/// The hub's own key, and the one algorithm it may be used with.
struct TrustedKey {
    /// The public key as a JWK, for the hub's JWKS document.
    jwk: Value,
    key_id: String,
    algorithm: Algorithm,
    key: DecodingKey,
    /// After this (Unix seconds), the key verifies nothing: a retired key.
    trusted_until: Option<i64>,
}

impl TrustedKey {
    fn own(key: &OwnKey) -> TrustedKey {
        let key_id = key.key_id();
        TrustedKey {
            jwk: ed25519_jwk(&key_id, &key.public_key),
            key_id,
            algorithm: Algorithm::EdDSA,
            key: DecodingKey::from_ed_der(&key.public_key),
            trusted_until: key.trusted_until,
        }
    }

    fn trusted_at(&self, now: i64) -> bool {
        self.trusted_until.is_none_or(|until| now < until)
    }
}

/// The key that verified a token: a cached token stays trusted only while that key is
/// (the hub's own key still trusted, the provider still publishing it).
#[derive(Clone)]
enum VerifiedBy {
    /// One of the hub's own keys, by key id.
    Own(String),
    /// A provider (index) and its key.
    Provider(usize, Arc<PublicKey>),
}

/// A verified token, as the cache keeps it.
struct CachedToken {
    claims: Claims,
    key: VerifiedBy,
}

/// Verifies tokens against the keys it trusts, and caches what it verified.
pub struct Verifier {
    /// The hub's own issuer name, and its keys: replaced whole when they rotate.
    own_issuer: String,
    keys: RwLock<Arc<Vec<TrustedKey>>>,
    /// External OpenID Connect providers, each selected by its `iss`.
    providers: Vec<Arc<Provider>>,
    audience: String,
    /// The claim holding the roles: a dotted path (`roles`, `realm_access.roles`).
    roles_claim: String,
    cache: Mutex<HashMap<String, CachedToken>>,
}

impl std::fmt::Debug for Verifier {
    /// The issuers and audience only: never a key nor a cached token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuers", &self.issuers())
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier of the hub's own tokens for `audience`.
    pub fn new(issuer: &Issuer, audience: &str, roles_claim: &str) -> Verifier {
        Verifier {
            own_issuer: issuer.issuer.clone(),
            keys: RwLock::new(Arc::new(vec![TrustedKey::own(&issuer.own_key())])),
            providers: Vec::new(),
            audience: audience.to_owned(),
            roles_claim: roles_claim.to_owned(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Trusts the tokens of external OpenID Connect providers too, each verified with the
    /// keys of its JWKS. Nothing is fetched yet: see [`Verifier::fetch_provider_keys`]; until
    /// then their tokens are refused ([`AuthError::KeysUnavailable`]).
    pub fn with_providers(
        mut self,
        providers: &[ProviderConfig],
        options: &JwksOptions,
    ) -> Result<Verifier, ConfigError> {
        if providers.len() > MAX_PROVIDERS {
            return Err(ConfigError::TooManyProviders);
        }
        if options.min_refresh < std::time::Duration::from_millis(100)
            || options.refresh < options.min_refresh
            || options.fetch_timeout < std::time::Duration::from_millis(100)
            || options.fetch_timeout > std::time::Duration::from_secs(60)
        {
            return Err(ConfigError::BadOptions {
                refresh: options.refresh,
                min_refresh: options.min_refresh,
            });
        }
        for (index, config) in providers.iter().enumerate() {
            if self.issuers().contains(&config.issuer.as_str()) {
                return Err(ConfigError::DuplicateIssuer {
                    index,
                    issuer: config.issuer.clone(),
                });
            }
            self.providers
                .push(Arc::new(Provider::new(index, config, options)?));
        }
        Ok(self)
    }

    /// Every issuer trusted: the hub's own first, then the providers'.
    pub fn issuers(&self) -> Vec<&str> {
        std::iter::once(self.own_issuer.as_str())
            .chain(self.providers.iter().map(|p| p.issuer()))
            .collect()
    }

    /// The name (`iss`) of the hub's own issuer.
    pub fn own_issuer(&self) -> &str {
        &self.own_issuer
    }

    /// Replaces the hub's own keys (after a rotation, here or on another hub process of the
    /// same store). A key left out, or past its `trusted_until`, verifies nothing from the
    /// next request on, even a token verified and cached before.
    pub fn set_own_keys(&self, keys: &[OwnKey]) -> Result<(), AuthError> {
        if keys.is_empty() || keys.len() > MAX_OWN_KEYS {
            return Err(AuthError::Signing(format!(
                "the hub's own issuer needs 1 to {MAX_OWN_KEYS} keys, not {}",
                keys.len()
            )));
        }
        if let Some(bad) = keys.iter().find(|k| k.public_key.len() != 32) {
            return Err(AuthError::Signing(format!(
                "an Ed25519 public key is 32 bytes, not {}",
                bad.public_key.len()
            )));
        }
        let trusted = Arc::new(keys.iter().map(TrustedKey::own).collect());
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = trusted;
        Ok(())
    }

    fn own_keys(&self) -> Arc<Vec<TrustedKey>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Fetches every provider's JWKS once, concurrently, each within the fetch timeout. A
    /// failure is logged and leaves that provider's tokens refused until a later fetch
    /// succeeds; it is not an error: the hub serves its other issuers meanwhile. Returns
    /// how many providers have keys.
    pub async fn fetch_provider_keys(&self) -> usize {
        let mut fetches = tokio::task::JoinSet::new();
        for provider in &self.providers {
            let provider = provider.clone();
            fetches.spawn(async move { provider.fetch_now().await });
        }
        fetches
            .join_all()
            .await
            .into_iter()
            .filter(|ok| *ok)
            .count()
    }

    /// Keeps refreshing every provider's keys in the background (on the current tokio
    /// runtime) until the returned guard is dropped.
    pub fn spawn_key_refresh(&self) -> KeyRefresh {
        KeyRefresh {
            tasks: self
                .providers
                .iter()
                .map(|provider| tokio::spawn(provider.clone().refresh_forever()))
                .collect(),
        }
    }

    /// The JWKS document of the hub's own keys trusted at `now` (public keys only; the
    /// providers publish theirs).
    pub fn jwks(&self, now: i64) -> Value {
        let keys: Vec<Value> = self
            .own_keys()
            .iter()
            .filter(|k| k.trusted_at(now))
            .map(|k| k.jwk.clone())
            .collect();
        serde_json::json!({ "keys": keys })
    }

    /// Checks `token` at time `now` (Unix seconds) and returns what it says. Never waits for
    /// the network: a token of a provider whose key is not known yet is refused
    /// ([`AuthError::UnknownKey`]); [`Verifier::verify_refreshing`] fetches and looks again.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLong);
        }
        if let Some(known) = self.cached(token, now) {
            return known;
        }
        let (claims, key) = self.verify_uncached(token, now)?;
        let mut cache = self.cache.lock().expect("token cache");
        if cache.len() >= MAX_CACHED_TOKENS {
            cache.retain(|_, c| c.claims.expires_at > now);
            if cache.len() >= MAX_CACHED_TOKENS {
                cache.clear();
            }
        }
        cache.insert(
            token.to_owned(),
            CachedToken {
                claims: claims.clone(),
                key,
            },
        );
        Ok(claims)
    }

    /// What the cache knows of `token`: its claims, or that it expired; `None` when it is
    /// not cached, or its key is no longer trusted (then dropped, to be verified again).
    fn cached(&self, token: &str, now: i64) -> Option<Result<Claims, AuthError>> {
        let mut cache = self.cache.lock().expect("token cache");
        let cached = cache.get(token)?;
        // Cached tokens expire like any other.
        if cached.claims.expires_at + CLOCK_SKEW_SECONDS as i64 <= now {
            return Some(Err(AuthError::Expired));
        }
        if self.still_published(&cached.key, now) {
            return Some(Ok(cached.claims.clone()));
        }
        cache.remove(token);
        None
    }

    /// [`Verifier::verify`], and when the token's provider has no key of its `kid` (a key
    /// rotation) or no keys at all (its IdP was down), one more look after fetching its JWKS
    /// again, within the rate limit of [`JwksOptions::min_refresh`].
    pub async fn verify_refreshing(&self, token: &str, now: i64) -> Result<Claims, AuthError> {
        // The common case first, without decoding the token: verified before, still good.
        if token.len() <= MAX_TOKEN_BYTES
            && let Some(known) = self.cached(token, now)
        {
            return known;
        }
        let provider = (token.len() <= MAX_TOKEN_BYTES)
            .then(|| unverified_claim(token, "iss"))
            .flatten()
            .and_then(|iss| self.providers.iter().find(|p| p.issuer() == iss));
        let seen = provider.map(|p| p.fetches());
        match self.verify(token, now) {
            Err(error @ (AuthError::UnknownKey | AuthError::KeysUnavailable(_))) => {
                if let (Some(provider), Some(seen)) = (provider, seen)
                    && provider.refresh_on_miss(seen).await
                {
                    return self.verify(token, now);
                }
                Err(error)
            }
            other => other,
        }
    }

    fn still_published(&self, key: &VerifiedBy, now: i64) -> bool {
        let (index, key) = match key {
            VerifiedBy::Own(key_id) => {
                return self
                    .own_keys()
                    .iter()
                    .any(|k| &k.key_id == key_id && k.trusted_at(now));
            }
            VerifiedBy::Provider(index, key) => (index, key),
        };
        self.providers[*index].keys().is_ok_and(|keys| {
            keys.get(key.kid())
                .is_some_and(|current| current.fingerprint() == key.fingerprint())
        })
    }

    fn verify_uncached(&self, token: &str, now: i64) -> Result<(Claims, VerifiedBy), AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|error| {
            match error.kind() {
                // `alg` is a name jsonwebtoken does not know (`none`, a typo).
                jsonwebtoken::errors::ErrorKind::Json(_) if token_alg(token).is_some() => {
                    AuthError::UnsupportedAlgorithm(token_alg(token).unwrap_or_default())
                }
                _ => AuthError::Malformed,
            }
        })?;
        if !matches!(
            header.alg,
            Algorithm::EdDSA | Algorithm::RS256 | Algorithm::ES256
        ) {
            return Err(AuthError::UnsupportedAlgorithm(format!("{:?}", header.alg)));
        }
        let unverified_issuer =
            unverified_claim(token, "iss").ok_or(AuthError::MissingClaim("iss"))?;
        if let Some(index) = self
            .providers
            .iter()
            .position(|p| p.issuer() == unverified_issuer)
        {
            let provider = &self.providers[index];
            let keys = provider.keys()?;
            let kid = header.kid.as_deref().ok_or(AuthError::MissingKeyId)?;
            let key = keys.get(kid).ok_or(AuthError::UnknownKey)?;
            // The key decides the algorithm, never the token.
            if header.alg != key.algorithm() {
                return Err(AuthError::AlgorithmMismatch {
                    token: format!("{:?}", header.alg),
                    key: format!("{:?}", key.algorithm()),
                });
            }
            let audience = provider.audience().unwrap_or(&self.audience);
            let claims = decode(
                token,
                key.decoding_key(),
                key.algorithm(),
                provider.issuer(),
                audience,
            )?;
            return Ok((
                self.claims(&claims, now)?,
                VerifiedBy::Provider(index, key.clone()),
            ));
        }
        if unverified_issuer != self.own_issuer {
            return Err(AuthError::UnknownIssuer);
        }
        let own_keys = self.own_keys();
        let candidates: Vec<&TrustedKey> = own_keys
            .iter()
            .filter(|k| header.kid.as_ref().is_none_or(|kid| *kid == k.key_id))
            .collect();
        if candidates.is_empty() {
            return Err(AuthError::UnknownKey);
        }
        if !candidates.iter().any(|k| k.trusted_at(now)) {
            return Err(AuthError::RetiredKey);
        }
        let candidates = candidates.into_iter().filter(|k| k.trusted_at(now));
        let mut last = AuthError::BadSignature;
        for trusted in candidates {
            // The key decides the algorithm, never the token: a token saying HS256 (an HMAC
            // keyed with the public key) or anything else than the key's is refused.
            if header.alg != trusted.algorithm {
                last = AuthError::AlgorithmMismatch {
                    token: format!("{:?}", header.alg),
                    key: format!("{:?}", trusted.algorithm),
                };
                continue;
            }
            match decode(
                token,
                &trusted.key,
                trusted.algorithm,
                &self.own_issuer,
                &self.audience,
            ) {
                Ok(claims) => {
                    return Ok((
                        self.claims(&claims, now)?,
                        VerifiedBy::Own(trusted.key_id.clone()),
                    ));
                }
                Err(error) => last = error,
            }
        }
        Err(last)
    }

    fn claims(&self, claims: &Map<String, Value>, now: i64) -> Result<Claims, AuthError> {
        let skew = CLOCK_SKEW_SECONDS as i64;
        let expires_at = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or(AuthError::MissingClaim("exp"))?;
        if expires_at + skew <= now {
            return Err(AuthError::Expired);
        }
        if let Some(not_before) = claims.get("nbf") {
            let not_before = not_before.as_i64().ok_or(AuthError::Malformed)?;
            if not_before - skew > now {
                return Err(AuthError::NotYetValid);
            }
        }
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
        let mut roles_value = Some(&Value::Object(claims.clone()));
        for part in self.roles_claim.split('.') {
            roles_value = roles_value.and_then(|v| v.get(part));
        }
        let roles = match roles_value {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(one)) => one.split_whitespace().map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        Ok(Claims {
            issuer: text("iss").ok_or(AuthError::MissingClaim("iss"))?,
            subject: text("sub")
                .filter(|s| !s.is_empty())
                .ok_or(AuthError::MissingClaim("sub"))?,
            token_id: text("jti"),
            expires_at,
            roles,
            scope: text("scope").unwrap_or_default(),
            patient: text("patient"),
            fhir_user: text("fhirUser"),
        })
    }
}

/// The signature, `iss` and `aud` of `token` under `key`, which fixes the algorithm; the
/// times are checked by the caller, against its `now`.
fn decode(
    token: &str,
    key: &DecodingKey,
    algorithm: Algorithm,
    issuer: &str,
    audience: &str,
) -> Result<Map<String, Value>, AuthError> {
    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.leeway = CLOCK_SKEW_SECONDS;
    // `now` is ours to give (tests, and one clock per request): the library's own clock
    // checks are replaced by the ones of `Verifier::claims`.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    match jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation) {
        Ok(data) => Ok(data.claims),
        Err(error) => {
            use jsonwebtoken::errors::ErrorKind;
            Err(match error.kind() {
                ErrorKind::InvalidAudience => AuthError::WrongAudience,
                ErrorKind::InvalidIssuer => AuthError::UnknownIssuer,
                ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
                    "exp" => AuthError::MissingClaim("exp"),
                    "aud" => AuthError::MissingClaim("aud"),
                    "sub" => AuthError::MissingClaim("sub"),
                    _ => AuthError::MissingClaim("iss"),
                },
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAlgorithm => {
                    AuthError::UnsupportedAlgorithm(format!("{algorithm:?}"))
                }
                _ => AuthError::Malformed,
            })
        }
    }
}

/// The `alg` of a token's header, read without trusting it (for the error message).
fn token_alg(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let bytes = URL_SAFE_NO_PAD.decode(header.trim_end_matches('=')).ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    let alg = value.get("alg")?.as_str()?;
    Some(alg.chars().take(16).collect())
}

/// A claim of the payload, read WITHOUT verification: only to choose which key verifies.
fn unverified_claim(token: &str, name: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    value.get(name)?.as_str().map(str::to_owned)
}
