//! The hub: the one door to the data (DESIGN.md invariant 1).
//!
//! Every front door (HTTP, MLLP, CLI) turns its request into a call on [`Hub`], which runs
//! the same pipeline for all of them:
//!
//! 1. **decide**: the policy decision point ([`hygie_policy::Policy::decide`]) permits or denies;
//! 2. **execute**: a unit of work on the store, in one transaction;
//! 3. **mask**: remove what the decision's mask says the caller may not see;
//! 4. **audit**: an AuditEvent leaf appended *in the same transaction* as the data it
//!    concerns; if it cannot be written, the whole request fails (fail closed).
//!
//! The hub speaks FHIR semantics (status codes, OperationOutcome issues, Bundles) but not
//! HTTP: it never sees a header or a socket.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use hygie_hub::{Caller, Hub, HubConfig};
//! let store = hygie_store::open(None, "./hygie-data".as_ref(), &Default::default(), &Default::default())?;
//! let hub = Hub::new(store, HubConfig::default());
//! let caller = Caller::new(hygie_policy::Principal::development(), "req-1");
//! let patient = serde_json::json!({"resourceType": "Patient", "name": [{"family": "Martin"}]});
//! let created = hub.create(&caller, "Patient", patient, None).await?;
//! let read = hub.read(&caller, "Patient", &created.stored.id).await?;
//! assert_eq!(read.version, 1);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod audit_export;
mod audit_log;
mod audit_retention;
mod audit_search;
mod audit_trail;
mod audit_verify;
mod blind_index;
mod break_glass;
mod bundle;
mod capability;
mod care;
mod criteria;
mod error;
mod history;
mod instant;
mod interactions;
mod keys;
mod messaging;
mod pipeline;
mod reindex;
mod resource;
mod search;
mod shape;
pub mod vault;

use std::sync::Arc;

use hygie_policy::{Policy, Principal};
use hygie_store::SharedStore;

pub use audit_export::{StoreAuditSource, export_cursor_key};
pub use audit_log::{AuditLogSettings, Cosigned, Integrated, MAX_COSIGNED_NOTE_BYTES, Proof};
pub use audit_retention::{PRUNE_BATCH_LEAVES, Pruned};
pub use audit_search::{AUDIT_SEARCH_PARAMETERS, AccessReportLine, MAX_AUDIT_PARAMETER_VALUES};
pub use audit_trail::MAX_PATIENT_LOOKUPS;
pub use audit_verify::{VerifyFailure, VerifyReport};
pub use break_glass::{MAX_BREAK_GLASS_REASON_CHARS, MAX_REVIEW_ITEMS};
pub use bundle::PreparedTransaction;
pub use care::{CARE_CACHE_ENTRIES, CARE_CACHE_TTL, MAX_CARE_PATIENTS, MAX_CARE_SOURCES};
pub use error::HubError;
pub use history::HistoryRequest;
pub use hygie_store::BreakGlassGrant;
pub use instant::{format_instant, parse_fhir_instant_us};
pub use interactions::{DeleteOutcome, ReturnPreference, Stored, WriteOutcome};
pub use keys::{RETIRED_KEYS_KEPT, ROTATION_GRACE_SECONDS, Retire, RetiredKey, TokenKeys};
pub use messaging::{FORGET_BATCH_MESSAGES, InboundMessage, Ingested, MAX_MERGE_MEMBERS};
pub use search::{MAX_INCLUDE_DEPTH, MAX_INCLUDED, SearchScope};

/// `true` only in a binary built with the `bench-unaudited` feature, for benchmarks: the
/// pipeline then writes no audit leaf. A front door built with it must say so loudly and
/// refuse to serve anything but a loopback address; a default build always audits
/// (`pipeline::tests::a_default_build_audits_a_read`).
pub const UNAUDITED_BENCH_BUILD: bool = cfg!(feature = "bench-unaudited");

/// Named bounds of the hub (DESIGN.md invariant 8). The front doors enforce body size and
/// time; these are the ones the hub itself enforces.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Entries in one batch or transaction Bundle.
    pub max_bundle_entries: usize,
    /// `_count` when the client gives none.
    pub default_page_size: usize,
    /// The largest `_count` honoured; larger values are refused with 400.
    pub max_page_size: usize,
    /// The audit log's checkpoints and integration.
    pub audit: AuditLogSettings,
}

impl Default for HubConfig {
    fn default() -> HubConfig {
        HubConfig {
            max_bundle_entries: 1_000,
            default_page_size: 50,
            max_page_size: 1_000,
            audit: AuditLogSettings::default(),
        }
    }
}

/// An erasure permitted: its own record follows.
struct ErasureDecided;

impl pipeline::Audited for ErasureDecided {
    fn audit_entities(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Who is calling, and from where: what the decision and the audit record need.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub request_id: String,
    /// The client's network address, for the audit trail.
    pub network_address: Option<String>,
    /// The base URL the client used (`https://host/fhir`), for absolute links in Bundles.
    pub base_url: String,
    /// The reason given to break the glass (`X-Break-Glass-Reason`), if any: the request
    /// opens the patient it is about when no care relationship does, and is recorded as
    /// emergency treatment.
    pub break_glass: Option<String>,
}

impl Caller {
    pub fn new(principal: Principal, request_id: &str) -> Caller {
        Caller {
            principal,
            request_id: request_id.to_owned(),
            network_address: None,
            base_url: "http://localhost/fhir".to_owned(),
            break_glass: None,
        }
    }
}

struct PolicyReloaded;

impl pipeline::Audited for PolicyReloaded {
    fn audit_entities(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The hub. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    store: SharedStore,
    /// Swapped whole by `reload_policy`: a request decides with the policy it started with.
    policy: std::sync::RwLock<Arc<Policy>>,
    config: HubConfig,
    /// Signs search paging links; read from the store on first use.
    paging_key: std::sync::OnceLock<aws_lc_rs::hmac::Key>,
    /// Patients in care, by subject, for a few seconds (need-to-know searches).
    care_cache: Arc<care::CareCache>,
    /// The vault behind `store`, for what changes keys (an erasure requested over HTTP).
    vault: std::sync::OnceLock<Arc<vault::Vault>>,
    /// What transactions recently asked to write if absent or changed (their blinding).
    recent_writes: blind_index::RecentWrites,
}

impl Hub {
    pub fn new(store: SharedStore, config: HubConfig) -> Hub {
        Hub::with_policy(store, config, Policy::default())
    }

    /// A hub deciding with `policy` (role ceilings from the settings) instead of the default.
    pub fn with_policy(store: SharedStore, config: HubConfig, policy: Policy) -> Hub {
        Hub {
            inner: Arc::new(Inner {
                store,
                policy: std::sync::RwLock::new(Arc::new(policy)),
                config,
                paging_key: std::sync::OnceLock::new(),
                care_cache: Arc::default(),
                vault: std::sync::OnceLock::new(),
                recent_writes: blind_index::RecentWrites::default(),
            }),
        }
    }

    /// Gives the hub the vault its store is sealed by, for the operations that change keys
    /// (`erase_patient`). Set once; later calls are ignored.
    pub fn attach_vault(&self, vault: Arc<vault::Vault>) {
        let _ = self.inner.vault.set(vault);
    }

    /// Erases a patient (GDPR Art. 17), on the DPO's decision (the `dpo` role): see
    /// [`vault::Vault::erase_patient`]. Decided and audited like any request (a refusal
    /// too), then the erasure records itself.
    pub async fn erase_patient(
        &self,
        caller: &Caller,
        patient_id: &str,
        reason: &str,
    ) -> Result<vault::Erasure, HubError> {
        resource::check_id(patient_id)?;
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > 500 || reason.chars().any(char::is_control)
        {
            return Err(HubError::bad_request(
                "an erasure needs its reason: 1 to 500 characters without control characters (a request number, not patient data: it stays in the audit log)",
            ));
        }
        let vault = self.inner.vault.get().cloned().ok_or_else(|| {
            HubError::new(
                501,
                hygie_fhir::outcome::IssueType::NotSupported,
                "this hub was started without its vault: erase with `hygie patient erase`",
            )
        })?;
        self.perform(
            pipeline::Access {
                caller,
                action: hygie_policy::Action::ErasePatient,
                target: hygie_policy::Target::instance("Patient", patient_id),
                query: None,
                patient_hint: None,
            },
            |_, _| Ok(Ok(ErasureDecided)),
        )
        .await?;
        vault
            .erase_patient(
                &self.inner.store,
                patient_id,
                &caller.principal.subject,
                reason,
            )
            .await
            .map_err(HubError::from_store)
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.inner
            .policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the policy (role ceilings, need-to-know, labels, masks), from the next
    /// request on. An administrative act: the admin role (or the local operator), audited.
    pub async fn reload_policy(&self, caller: &Caller, policy: Policy) -> Result<(), HubError> {
        let policy = Arc::new(policy);
        let slot = self.clone();
        self.perform(
            pipeline::Access {
                caller,
                action: hygie_policy::Action::ReloadPolicy,
                target: hygie_policy::Target::system(),
                query: None,
                patient_hint: None,
            },
            move |_, _| {
                *slot.inner.policy.write().unwrap_or_else(|e| e.into_inner()) = policy;
                Ok(Ok(PolicyReloaded))
            },
        )
        .await?;
        tracing::info!("policy reloaded");
        Ok(())
    }

    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        self.inner.store.backend()
    }

    /// Whether the store accepts writes: runs a unit that writes a row and appends an
    /// audit leaf, and rolls both back. (The row, because the SQLite writer inserts leaves
    /// only at the end of its batch, so a leaf rolled back never reaches the database.)
    pub async fn ready(&self) -> Result<(), HubError> {
        use hygie_store::StoreExt;
        let outcome = self
            .inner
            .store
            .run(|tx| {
                tx.savepoint()?;
                tx.meta_set("ready.probe", "1")?;
                tx.append_audit(0, b"readiness probe")?;
                tx.rollback_to_savepoint()?;
                Ok(())
            })
            .await;
        outcome.map_err(HubError::from_store)
    }

    /// Revokes one token (`kind` `jti`) or every token of a principal (`kind` `subject`),
    /// from the next request on, on every hub process of the store; with `lift`, undoes it.
    /// Audited as an administrative act of `caller`.
    pub async fn revoke(
        &self,
        caller: &Caller,
        kind: RevocationKind,
        value: &str,
        reason: &str,
        lift: bool,
    ) -> Result<bool, HubError> {
        if value.is_empty() || value.len() > 1024 {
            return Err(HubError::bad_request(
                "the revoked value must be 1 to 1024 bytes",
            ));
        }
        let kind = kind.as_str();
        let value_owned = value.to_owned();
        let reason = if reason.is_empty() {
            "revoked by an administrator".to_owned()
        } else {
            reason.to_owned()
        };
        let now = instant::now_us();
        let changed = self
            .perform(
                pipeline::Access {
                    caller,
                    action: hygie_policy::Action::Revoke,
                    target: hygie_policy::Target::system(),
                    query: Some(format!("{}{kind}={value}", if lift { "lift:" } else { "" })),
                    patient_hint: None,
                },
                move |tx, _mask| {
                    if lift {
                        Ok(Ok(Revocation(tx.lift_revocation(kind, &value_owned)?)))
                    } else {
                        tx.revoke(kind, &value_owned, now, &reason)?;
                        Ok(Ok(Revocation(true)))
                    }
                },
            )
            .await?;
        Ok(changed.0)
    }

    /// Stops the store after the work in flight; nothing acknowledged is lost.
    pub async fn close(&self) {
        self.inner.store.close().await;
    }
}

/// What a revocation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationKind {
    /// One token, by its `jti`.
    TokenId,
    /// Every token of a principal (`sub`): a kill switch.
    Subject,
}

impl RevocationKind {
    fn as_str(self) -> &'static str {
        match self {
            RevocationKind::TokenId => "jti",
            RevocationKind::Subject => "subject",
        }
    }
}

/// Whether a revocation changed anything.
struct Revocation(bool);

impl pipeline::Audited for Revocation {
    fn audit_entities(&self) -> Vec<String> {
        Vec::new()
    }
}
