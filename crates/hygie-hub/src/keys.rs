//! The keys the hub signs its own tokens with (`hygie token`, the demo): one current
//! Ed25519 key, kept with the data (`hub_meta`) so that every hub process of one database
//! signs and verifies alike, and the keys earlier rotations retired.
//!
//! A rotation makes a new current key. The old one is either retired at once (it may have
//! leaked: every token it signed is refused from the next request on) or kept trusted until
//! the longest-lived token it could have signed has run out (a routine rotation: nobody is
//! logged out). Rotating and retiring are administrative acts (admin role), audited.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hygie_auth::{CLOCK_SKEW_SECONDS, Issuer, MAX_OWN_KEYS, MAX_TTL_SECONDS, OwnKey};
use hygie_policy::{Action, Target};
use hygie_store::{StoreError, StoreExt, Tx};
use serde::{Deserialize, Serialize};

use crate::pipeline::{Access, Audited};
use crate::{Caller, Hub, HubError};

/// `hub_meta` key of the current signing key (PKCS#8, base64).
const CURRENT_KEY: &str = "auth.issuer_key";
/// `hub_meta` key of the retired keys (JSON list of [`RetiredRecord`], newest first).
const RETIRED_KEYS: &str = "auth.issuer_keys_retired";
/// How many retired keys are remembered: listed, and trusted while their grace lasts.
pub const RETIRED_KEYS_KEPT: usize = MAX_OWN_KEYS - 1;

/// How long a key retired by a routine rotation stays trusted: the longest a token it
/// signed can live, plus the clock skew the verifier allows.
pub const ROTATION_GRACE_SECONDS: i64 = MAX_TTL_SECONDS as i64 + CLOCK_SKEW_SECONDS as i64;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RetiredRecord {
    /// Raw Ed25519 public key, base64: a retired key signs nothing more.
    public_key: String,
    /// Unix seconds.
    retired_at: i64,
    /// Unix seconds; `retired_at` when retired at once.
    trusted_until: i64,
}

/// What to do with the key a rotation replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retire {
    /// It may have leaked: its tokens are refused from the next request on.
    Now,
    /// Routine: its tokens keep working until they run out ([`ROTATION_GRACE_SECONDS`]).
    AfterExpiry,
}

/// A key earlier rotations replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiredKey {
    pub key_id: String,
    pub public_key: Vec<u8>,
    /// Unix seconds.
    pub retired_at: i64,
    /// Unix seconds: tokens it signed are refused from then on.
    pub trusted_until: i64,
}

/// The hub's signing keys: the current one, and those retired.
pub struct TokenKeys {
    pub current: Issuer,
    /// Newest first, at most [`RETIRED_KEYS_KEPT`].
    pub retired: Vec<RetiredKey>,
}

impl TokenKeys {
    /// Every key a verifier should know: the current one, and the retired ones with the
    /// time their trust ends (past ends included: they verify nothing, and say why).
    pub fn own_keys(&self) -> Vec<OwnKey> {
        std::iter::once(self.current.own_key())
            .chain(self.retired.iter().map(|r| OwnKey {
                public_key: r.public_key.clone(),
                trusted_until: Some(r.trusted_until),
            }))
            .collect()
    }

    /// The keys as an administrator lists them (no private key, ever).
    pub fn describe(&self, now: i64) -> serde_json::Value {
        let mut keys = vec![serde_json::json!({
            "kid": self.current.key_id(),
            "state": "current",
        })];
        for retired in &self.retired {
            keys.push(serde_json::json!({
                "kid": retired.key_id,
                "state": if now < retired.trusted_until { "retiring" } else { "retired" },
                "retiredAt": crate::format_instant(retired.retired_at * 1_000_000),
                "trustedUntil": crate::format_instant(retired.trusted_until * 1_000_000),
            }));
        }
        serde_json::json!({ "issuer": self.current.issuer(), "keys": keys })
    }
}

/// The keys after an administrative act on them.
struct KeysChanged(TokenKeys);

impl Audited for KeysChanged {
    fn audit_entities(&self) -> Vec<String> {
        Vec::new()
    }
}

fn config_error(why: impl Into<String>) -> StoreError {
    StoreError::Config(why.into())
}

/// Reads the keys, making the first current key if there is none yet. Within the caller's
/// unit of work, under the keys' lock.
fn load(tx: &mut dyn Tx, issuer: &str) -> Result<TokenKeys, StoreError> {
    tx.lock(CURRENT_KEY)?;
    let current = match tx.meta_get(CURRENT_KEY)? {
        Some(encoded) => {
            let pkcs8 = STANDARD
                .decode(encoded)
                .map_err(|_| config_error("the stored token signing key is not base64"))?;
            Issuer::from_pkcs8(issuer, &pkcs8).map_err(|e| config_error(e.to_string()))?
        }
        None => {
            let made = Issuer::generate(issuer).map_err(|e| config_error(e.to_string()))?;
            tx.meta_set(CURRENT_KEY, &STANDARD.encode(made.pkcs8()))?;
            made
        }
    };
    let records: Vec<RetiredRecord> = match tx.meta_get(RETIRED_KEYS)? {
        Some(json) => serde_json::from_str(&json)
            .map_err(|e| config_error(format!("the stored retired signing keys: {e}")))?,
        None => Vec::new(),
    };
    let mut retired = Vec::with_capacity(records.len());
    for record in records {
        let public_key = STANDARD
            .decode(&record.public_key)
            .ok()
            .filter(|key| key.len() == 32)
            .ok_or_else(|| config_error("a stored retired signing key is not an Ed25519 key"))?;
        retired.push(RetiredKey {
            key_id: hygie_auth::key_id_of(&public_key),
            public_key,
            retired_at: record.retired_at,
            trusted_until: record.trusted_until,
        });
    }
    Ok(TokenKeys { current, retired })
}

fn save_retired(tx: &mut dyn Tx, retired: &[RetiredKey]) -> Result<(), StoreError> {
    let records: Vec<RetiredRecord> = retired
        .iter()
        .map(|r| RetiredRecord {
            public_key: STANDARD.encode(&r.public_key),
            retired_at: r.retired_at,
            trusted_until: r.trusted_until,
        })
        .collect();
    tx.meta_set(
        RETIRED_KEYS,
        &serde_json::to_string(&records).expect("records serialize"),
    )
}

fn unix_now() -> i64 {
    crate::instant::now_us() / 1_000_000
}

impl Hub {
    /// The hub's own token issuer, named `issuer`, with its current key (made on first use).
    /// Whoever can read the database can sign tokens: the same people who can read the data.
    pub async fn token_issuer(&self, issuer: &str) -> Result<Issuer, HubError> {
        Ok(self.token_keys(issuer).await?.current)
    }

    /// The current signing key and the retired ones, for a verifier
    /// ([`TokenKeys::own_keys`]). Not audited: public keys only.
    pub async fn token_keys(&self, issuer: &str) -> Result<TokenKeys, HubError> {
        let issuer = issuer.to_owned();
        self.inner
            .store
            .run(move |tx| load(tx, &issuer))
            .await
            .map_err(HubError::from_store)
    }

    /// Lists the signing keys as an administrator sees them (admin role; audited).
    pub async fn list_token_keys(
        &self,
        caller: &Caller,
        issuer: &str,
    ) -> Result<TokenKeys, HubError> {
        self.change_token_keys(caller, issuer, |_, _| Ok(Ok(())))
            .await
    }

    /// Makes a new current signing key; the replaced one is retired as `retire` says
    /// (admin role; audited). Returns the keys after the rotation.
    pub async fn rotate_token_key(
        &self,
        caller: &Caller,
        issuer: &str,
        retire: Retire,
    ) -> Result<TokenKeys, HubError> {
        let outcome = self
            .change_token_keys(caller, issuer, move |tx, keys| {
                let now = unix_now();
                let replaced = RetiredKey {
                    key_id: keys.current.key_id().to_owned(),
                    public_key: keys.current.public_key().to_vec(),
                    retired_at: now,
                    trusted_until: match retire {
                        Retire::Now => now,
                        Retire::AfterExpiry => now + ROTATION_GRACE_SECONDS,
                    },
                };
                let made = Issuer::generate(keys.current.issuer())
                    .map_err(|e| config_error(e.to_string()))?;
                tx.meta_set(CURRENT_KEY, &STANDARD.encode(made.pkcs8()))?;
                keys.current = made;
                keys.retired.insert(0, replaced);
                keys.retired.truncate(RETIRED_KEYS_KEPT);
                save_retired(tx, &keys.retired)?;
                Ok(Ok(()))
            })
            .await?;
        tracing::warn!(
            key_id = outcome.current.key_id(),
            ?retire,
            "token signing key rotated"
        );
        Ok(outcome)
    }

    /// Ends at once the trust of a key a rotation retired with a grace period (it turned
    /// out to have leaked). The current key cannot be retired this way: rotate it.
    pub async fn retire_token_key(
        &self,
        caller: &Caller,
        issuer: &str,
        key_id: &str,
    ) -> Result<TokenKeys, HubError> {
        let key_id = key_id.to_owned();
        self.change_token_keys(caller, issuer, move |tx, keys| {
            if keys.current.key_id() == key_id {
                return Ok(Err(HubError::new(
                    409,
                    hygie_fhir::IssueType::Conflict,
                    format!("{key_id} is the current signing key: rotate it (with the previous key retired now) instead"),
                )));
            }
            let now = unix_now();
            let Some(retired) = keys.retired.iter_mut().find(|r| r.key_id == key_id) else {
                return Ok(Err(HubError::not_found(format!(
                    "no signing key {key_id:?}"
                ))));
            };
            retired.trusted_until = retired.trusted_until.min(now);
            save_retired(tx, &keys.retired)?;
            Ok(Ok(()))
        })
        .await
    }

    /// Runs `change` on the keys within one audited unit of work (Action::ManageKeys).
    async fn change_token_keys<F>(
        &self,
        caller: &Caller,
        issuer: &str,
        change: F,
    ) -> Result<TokenKeys, HubError>
    where
        F: FnOnce(&mut dyn Tx, &mut TokenKeys) -> Result<Result<(), HubError>, StoreError>
            + Send
            + 'static,
    {
        let issuer = issuer.to_owned();
        let KeysChanged(keys) = self
            .perform(
                Access {
                    caller,
                    action: Action::ManageKeys,
                    target: Target::system(),
                    query: None,
                    patient_hint: None,
                },
                move |tx, _| {
                    let mut keys = load(tx, &issuer)?;
                    if let Err(refusal) = change(tx, &mut keys)? {
                        return Ok(Err(refusal));
                    }
                    Ok(Ok(KeysChanged(keys)))
                },
            )
            .await?;
        Ok(keys)
    }
}
