//! Batch and transaction Bundles (`POST [base]`).
//!
//! A transaction is one unit of work: every entry succeeds or none does, `urn:uuid:`
//! full URLs and conditional references are resolved to the ids the server assigns, and
//! entries run in the order FHIR prescribes (DELETE, POST, PUT/PATCH, GET). A batch runs
//! each entry as its own interaction; one failing entry fails alone.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use base64::Engine;
use hygie_fhir::IssueType;
use hygie_policy::{Action, Mask, Target};
use hygie_store::{IndexRow, StoreError, Tx};
use serde_json::Value;

use crate::blind_index::{PreparedBlinding, RecentWrites};
use crate::criteria::{self, Criteria};
use crate::history::{BundleOut, EntryOut, ResponseOut, raw, raw_value};
use crate::instant::{format_instant, now_us};
use crate::interactions::{
    Prepared, ReturnPreference, Stored, WriteOutcome, exec_create, exec_delete, exec_patch,
    exec_read, exec_update, exec_vread,
};
use crate::pipeline::{Access, Audited, OpResult};
use crate::resource::{
    check_id, check_resource_type, collect_references, index_rows, local_spelling, new_id,
    parse_version_tag, rewrite_references,
};
use crate::{Caller, Hub, HubError};

/// `Bundle.type` of a request Bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BundleKind {
    Batch,
    Transaction,
}

/// What one entry asks for, parsed and checked before any store work.
#[derive(Debug)]
enum Plan {
    Read {
        resource_type: String,
        id: String,
    },
    VRead {
        resource_type: String,
        id: String,
        version: String,
    },
    Search {
        resource_type: String,
        query: String,
    },
    Create {
        resource_type: String,
        resource: Value,
        if_none_exist: Option<String>,
    },
    Update {
        resource_type: String,
        id: String,
        resource: Value,
        if_match: Option<String>,
    },
    ConditionalUpdate {
        resource_type: String,
        query: String,
        resource: Value,
        if_match: Option<String>,
    },
    Patch {
        resource_type: String,
        id: String,
        patch: Value,
        if_match: Option<String>,
    },
    Delete {
        resource_type: String,
        id: String,
    },
}

/// The outcome of one entry, for the response Bundle.
pub(crate) enum EntryResult {
    Written(WriteOutcome),
    Deleted { version: i64 },
    Read(Stored),
    Searched(Vec<u8>),
}

pub(crate) struct TransactionOutcome {
    pub(crate) results: Vec<EntryResult>,
}

impl Audited for TransactionOutcome {
    fn audit_entities(&self) -> Vec<String> {
        self.results
            .iter()
            .filter_map(|result| match result {
                EntryResult::Written(outcome) => Some(outcome.stored.versioned_reference()),
                EntryResult::Read(stored) => Some(stored.versioned_reference()),
                _ => None,
            })
            .collect()
    }
}

fn entry_error(index: usize, diagnostics: impl Into<String>) -> HubError {
    HubError::bad_request(diagnostics).located_in(&format!("Bundle.entry[{index}]"))
}

/// Strips our own base URL from an absolute entry URL; other absolute URLs are refused.
fn relative_url<'a>(url: &'a str, base: &str) -> Option<&'a str> {
    if let Some(rest) = url.strip_prefix(base) {
        return Some(rest.trim_start_matches('/'));
    }
    if url.contains("://") {
        return None;
    }
    Some(url.trim_start_matches('/'))
}

fn parse_entry(index: usize, entry: &Value, base: &str) -> Result<Plan, HubError> {
    let request = entry
        .get("request")
        .ok_or_else(|| entry_error(index, "entry has no request"))?;
    let method = request
        .get("method")
        .and_then(Value::as_str)
        .ok_or_else(|| entry_error(index, "entry.request.method is missing"))?;
    let raw_url = request
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| entry_error(index, "entry.request.url is missing"))?;
    let url = relative_url(raw_url, base).ok_or_else(|| {
        entry_error(
            index,
            format!("entry.request.url {raw_url:?} points at another server"),
        )
    })?;
    let (path, query) = match url.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (url, None),
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let text = |key: &str| request.get(key).and_then(Value::as_str).map(str::to_owned);
    let resource = || {
        entry
            .get("resource")
            .cloned()
            .ok_or_else(|| entry_error(index, format!("a {method} entry needs a resource")))
    };
    let located = |error: HubError| error.located_in(&format!("Bundle.entry[{index}]"));
    let plan = match (method, segments.as_slice(), query) {
        ("GET" | "HEAD", [resource_type, id], None) => Plan::Read {
            resource_type: resource_type.to_string(),
            id: id.to_string(),
        },
        ("GET" | "HEAD", [resource_type, id, "_history", version], None) => Plan::VRead {
            resource_type: resource_type.to_string(),
            id: id.to_string(),
            version: version.to_string(),
        },
        ("GET" | "HEAD", [resource_type], query) => Plan::Search {
            resource_type: resource_type.to_string(),
            query: query.unwrap_or_default(),
        },
        ("POST", [resource_type], None) => Plan::Create {
            resource_type: resource_type.to_string(),
            resource: resource()?,
            if_none_exist: text("ifNoneExist"),
        },
        ("PUT", [resource_type, id], None) => Plan::Update {
            resource_type: resource_type.to_string(),
            id: id.to_string(),
            resource: resource()?,
            if_match: text("ifMatch"),
        },
        ("PUT", [resource_type], Some(query)) => Plan::ConditionalUpdate {
            resource_type: resource_type.to_string(),
            query,
            resource: resource()?,
            if_match: text("ifMatch"),
        },
        ("PATCH", [resource_type, id], None) => Plan::Patch {
            resource_type: resource_type.to_string(),
            id: id.to_string(),
            patch: patch_document(index, &resource()?)?,
            if_match: text("ifMatch"),
        },
        ("DELETE", [resource_type, id], None) => Plan::Delete {
            resource_type: resource_type.to_string(),
            id: id.to_string(),
        },
        _ => {
            return Err(HubError::new(
                400,
                IssueType::NotSupported,
                format!(
                    "{method} {raw_url} is not an interaction this server supports in a Bundle"
                ),
            )
            .located_in(&format!("Bundle.entry[{index}].request")));
        }
    };
    match &plan {
        Plan::Read { resource_type, id }
        | Plan::VRead {
            resource_type, id, ..
        }
        | Plan::Update {
            resource_type, id, ..
        }
        | Plan::Patch {
            resource_type, id, ..
        }
        | Plan::Delete { resource_type, id } => {
            check_resource_type(resource_type).map_err(located)?;
            check_id(id).map_err(located)?;
        }
        Plan::Search { resource_type, .. }
        | Plan::Create { resource_type, .. }
        | Plan::ConditionalUpdate { resource_type, .. } => {
            check_resource_type(resource_type).map_err(located)?
        }
    }
    Ok(plan)
}

/// A PATCH entry carries its JSON Patch as a Binary resource (FHIR R4 §3.1.0.11.2).
fn patch_document(index: usize, resource: &Value) -> Result<Value, HubError> {
    let is_json_patch = resource.get("resourceType").and_then(Value::as_str) == Some("Binary")
        && resource.get("contentType").and_then(Value::as_str)
            == Some("application/json-patch+json");
    if !is_json_patch {
        return Err(entry_error(
            index,
            "a PATCH entry's resource must be a Binary with contentType application/json-patch+json",
        ));
    }
    let data = resource
        .get("data")
        .and_then(Value::as_str)
        .ok_or_else(|| entry_error(index, "the PATCH Binary has no data"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| entry_error(index, format!("the PATCH Binary's data is not base64: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| entry_error(index, format!("the PATCH Binary's data is not JSON: {e}")))
}

/// A transaction entry after the checks that need no store.
struct TxEntry {
    index: usize,
    plan: TxPlan,
}

enum TxPlan {
    Read {
        resource_type: String,
        id: String,
    },
    VRead {
        resource_type: String,
        id: String,
        version: i64,
    },
    Create {
        prepared: Prepared,
        id: String,
        full_url: Option<String>,
        if_none_exist: Option<Criteria>,
    },
    Update {
        prepared: Prepared,
        id: String,
        if_match: Option<i64>,
    },
    ConditionalUpdate {
        prepared: Prepared,
        criteria: Criteria,
        body_id: Option<String>,
        full_url: Option<String>,
        if_match: Option<i64>,
    },
    Patch {
        resource_type: String,
        id: String,
        patch: json_patch::Patch,
        if_match: Option<i64>,
    },
    Delete {
        resource_type: String,
        id: String,
    },
}

impl Hub {
    /// `POST [base]` with a batch or transaction Bundle. Returns the response Bundle.
    pub async fn bundle(
        &self,
        caller: &Caller,
        bundle: Value,
        preference: ReturnPreference,
    ) -> Result<Vec<u8>, HubError> {
        let (kind, entries) = self.bundle_entries(&bundle)?;
        match kind {
            BundleKind::Transaction => self.transaction(caller, entries, preference).await,
            BundleKind::Batch => Ok(self.batch(caller, entries, preference).await),
        }
    }

    /// The kind and entries of a request Bundle, within the configured limits.
    fn bundle_entries<'b>(&self, bundle: &'b Value) -> Result<(BundleKind, &'b [Value]), HubError> {
        if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(HubError::bad_request(
                "POST to the base URL takes a Bundle of type batch or transaction",
            ));
        }
        let kind = match bundle.get("type").and_then(Value::as_str) {
            Some("transaction") => BundleKind::Transaction,
            Some("batch") => BundleKind::Batch,
            other => {
                return Err(HubError::bad_request(format!(
                    "Bundle.type is {other:?}; this endpoint processes batch and transaction Bundles"
                ))
                .located_in("Bundle.type"));
            }
        };
        let entries = match bundle.get("entry") {
            Some(Value::Array(entries)) => entries.as_slice(),
            None => &[],
            Some(_) => {
                return Err(HubError::bad_request("Bundle.entry must be an array")
                    .located_in("Bundle.entry"));
            }
        };
        let max = self.config().max_bundle_entries;
        if entries.len() > max {
            return Err(HubError::too_large(format!(
                "the Bundle has {} entries; the limit (max_bundle_entries) is {max}",
                entries.len()
            ))
            .located_in("Bundle.entry"));
        }
        Ok((kind, entries))
    }

    async fn batch(
        &self,
        caller: &Caller,
        entries: &[Value],
        preference: ReturnPreference,
    ) -> Vec<u8> {
        let mut response = BundleOut::new("batch-response");
        for (index, entry) in entries.iter().enumerate() {
            let result = match parse_entry(index, entry, &caller.base_url) {
                Ok(plan) => self.run_single(caller, plan).await,
                Err(error) => Err(error),
            };
            response.entry.push(match result {
                Ok(result) => response_entry(&caller.base_url, result, preference),
                Err(error) => error_entry(&error),
            });
        }
        response.to_vec()
    }

    async fn run_single(&self, caller: &Caller, plan: Plan) -> Result<EntryResult, HubError> {
        Ok(match plan {
            Plan::Read { resource_type, id } => {
                EntryResult::Read(self.read(caller, &resource_type, &id).await?)
            }
            Plan::VRead {
                resource_type,
                id,
                version,
            } => EntryResult::Read(self.vread(caller, &resource_type, &id, &version).await?),
            Plan::Search {
                resource_type,
                query,
            } => EntryResult::Searched(
                self.search(
                    caller,
                    crate::SearchScope {
                        resource_type: resource_type.clone(),
                        compartment: None,
                    },
                    &query,
                    false,
                )
                .await?,
            ),
            Plan::Create {
                resource_type,
                resource,
                if_none_exist,
            } => EntryResult::Written(
                self.create(caller, &resource_type, resource, if_none_exist.as_deref())
                    .await?,
            ),
            Plan::Update {
                resource_type,
                id,
                resource,
                if_match,
            } => EntryResult::Written(
                self.update(caller, &resource_type, &id, resource, if_match.as_deref())
                    .await?,
            ),
            Plan::ConditionalUpdate {
                resource_type,
                query,
                resource,
                if_match,
            } => EntryResult::Written(
                self.conditional_update(
                    caller,
                    &resource_type,
                    &query,
                    resource,
                    if_match.as_deref(),
                )
                .await?,
            ),
            Plan::Patch {
                resource_type,
                id,
                patch,
                if_match,
            } => EntryResult::Written(
                self.patch(caller, &resource_type, &id, patch, if_match.as_deref())
                    .await?,
            ),
            Plan::Delete { resource_type, id } => {
                let outcome = self.delete(caller, &resource_type, &id).await?;
                EntryResult::Deleted {
                    version: outcome.version,
                }
            }
        })
    }

    async fn transaction(
        &self,
        caller: &Caller,
        entries: &[Value],
        preference: ReturnPreference,
    ) -> Result<Vec<u8>, HubError> {
        let mut prepared = PreparedTransaction::new(&caller.base_url, entries)?;
        self.authorize_reach(transaction_access(caller), &prepared.reached())
            .await?;
        self.prepare_blinding(&mut prepared);
        let outcome = self
            .perform(transaction_access(caller), move |tx, mask| {
                prepared.execute(tx, mask)
            })
            .await?;
        Ok(transaction_response(&caller.base_url, outcome, preference))
    }

    /// Parses, validates and plans a transaction Bundle: all the work that needs no store,
    /// so that a bulk load can do it for the next Bundles while the store writes these.
    pub fn prepare_transaction(
        &self,
        caller: &Caller,
        bundle: &Value,
    ) -> Result<PreparedTransaction, HubError> {
        self.prepare_transaction_as(caller, bundle, false)
    }

    /// [`Self::prepare_transaction`] for a feed that repeats its records with every
    /// message (HL7 v2 sends the patient's PID with each ADT): a conditional update whose
    /// content equals the current version writes nothing and answers that version.
    pub fn prepare_feed_transaction(
        &self,
        caller: &Caller,
        bundle: &Value,
    ) -> Result<PreparedTransaction, HubError> {
        self.prepare_transaction_as(caller, bundle, true)
    }

    fn prepare_transaction_as(
        &self,
        caller: &Caller,
        bundle: &Value,
        skip_unchanged: bool,
    ) -> Result<PreparedTransaction, HubError> {
        match self.bundle_entries(bundle)? {
            (BundleKind::Transaction, entries) => {
                let mut prepared = PreparedTransaction::new(&caller.base_url, entries)?;
                prepared.skip_unchanged = skip_unchanged;
                self.prepare_blinding(&mut prepared);
                Ok(prepared)
            }
            (BundleKind::Batch, _) => Err(HubError::bad_request(
                "a bulk load takes transaction Bundles; this is a batch",
            )
            .located_in("Bundle.type")),
        }
    }

    /// Runs prepared transactions in order, in ONE unit of work (one commit, one fsync),
    /// each still all-or-nothing and audited on its own: one that fails leaves the others.
    /// Returns the response Bundle of each, in order.
    pub async fn commit_transactions(
        &self,
        caller: &Caller,
        transactions: Vec<PreparedTransaction>,
        preference: ReturnPreference,
    ) -> Vec<Result<Vec<u8>, HubError>> {
        let mut permitted = Vec::with_capacity(transactions.len());
        let mut answers: Vec<Option<Result<Vec<u8>, HubError>>> = Vec::new();
        for prepared in transactions {
            match self
                .authorize_reach(transaction_access(caller), &prepared.reached())
                .await
            {
                Ok(()) => {
                    permitted.push(prepared);
                    answers.push(None);
                }
                Err(error) => answers.push(Some(Err(error))),
            }
        }
        let accesses = permitted
            .into_iter()
            .map(|prepared| {
                (
                    transaction_access(caller),
                    move |tx: &mut dyn Tx, mask: &Mask| prepared.execute(tx, mask),
                )
            })
            .collect();
        let mut done = self.perform_all(accesses).await.into_iter().map(|outcome| {
            outcome.map(|outcome| transaction_response(&caller.base_url, outcome, preference))
        });
        answers
            .into_iter()
            .map(|answer| match answer {
                Some(refused) => refused,
                None => done.next().expect("one outcome per permitted transaction"),
            })
            .collect()
    }

    /// Lets `prepared` compute the blind index cells of what it writes before it reaches
    /// the store, when the store is sealed by a vault.
    fn prepare_blinding(&self, prepared: &mut PreparedTransaction) {
        if let Some(vault) = self.inner.vault.get() {
            prepared.prepare_blinding(vault.keyring(), &self.inner.recent_writes);
        }
    }
}

fn transaction_access(caller: &Caller) -> Access<'_> {
    Access {
        caller,
        action: Action::Bundle,
        target: Target::system(),
        query: None,
        patient_hint: None,
    }
}

pub(crate) fn transaction_response(
    base: &str,
    outcome: TransactionOutcome,
    preference: ReturnPreference,
) -> Vec<u8> {
    let mut response = BundleOut::new("transaction-response");
    for result in outcome.results {
        response
            .entry
            .push(response_entry(base, result, preference));
    }
    response.to_vec()
}

/// A transaction Bundle parsed, validated and planned, ready for the store.
pub struct PreparedTransaction {
    planned: Vec<TxEntry>,
    references: HashMap<String, String>,
    conditionals: Vec<(String, String, Criteria)>,
    now: i64,
    /// A conditional update whose content equals the current version writes nothing.
    skip_unchanged: bool,
    /// The blind index cells of what the entries write, computed before the store.
    blinding: Option<PreparedBlinding>,
    /// This server's base as the caller reached it: references under it are made relative.
    base_url: String,
}

impl PreparedTransaction {
    fn new(base: &str, entries: &[Value]) -> Result<PreparedTransaction, HubError> {
        // 1. Parse, validate and assign ids: everything that needs no store.
        let mut planned = Vec::with_capacity(entries.len());
        let mut references: HashMap<String, String> = HashMap::new();
        let mut touched: HashSet<String> = HashSet::new();
        // Every entry's fullUrl: a reference to one may be rewritten in the store.
        let mut full_urls: HashSet<String> = HashSet::new();
        for (index, entry) in entries.iter().enumerate() {
            // Keyed as the entries' references will be spelled once made relative, so that
            // `{base}/Patient/x` as fullUrl and as a reference stay one resource.
            let full_url = entry
                .get("fullUrl")
                .and_then(Value::as_str)
                .map(|url| local_spelling(url, base).unwrap_or(url).to_owned());
            full_urls.extend(full_url.clone());
            let located = |error: HubError, what: &str| {
                error.located_in(&format!("Bundle.entry[{index}]{what}"))
            };
            let plan = match parse_entry(index, entry, base)? {
                Plan::Read { resource_type, id } => TxPlan::Read { resource_type, id },
                Plan::VRead {
                    resource_type,
                    id,
                    version,
                } => TxPlan::VRead {
                    resource_type,
                    id,
                    version: version.parse::<i64>().map_err(|_| {
                        entry_error(index, format!("version {version:?} is not a number"))
                    })?,
                },
                Plan::Search { .. } => {
                    return Err(HubError::new(
                        400,
                        IssueType::NotSupported,
                        "searches inside a transaction are not supported; use a batch",
                    )
                    .located_in(&format!("Bundle.entry[{index}].request")));
                }
                Plan::Create {
                    resource_type,
                    resource,
                    if_none_exist,
                } => {
                    let prepared = Prepared::new(&resource_type, resource, base)
                        .map_err(|e| located(e, ".resource"))?;
                    let id = new_id();
                    if let Some(full_url) = &full_url {
                        references.insert(full_url.clone(), format!("{resource_type}/{id}"));
                    }
                    TxPlan::Create {
                        prepared,
                        id,
                        full_url,
                        if_none_exist: if_none_exist
                            .as_deref()
                            .map(|query| criteria::parse_conditional(&resource_type, query))
                            .transpose()
                            .map_err(|e| located(e, ".request.ifNoneExist"))?,
                    }
                }
                Plan::Update {
                    resource_type,
                    id,
                    resource,
                    if_match,
                } => {
                    if resource.get("id").and_then(Value::as_str) != Some(id.as_str()) {
                        return Err(entry_error(
                            index,
                            format!("the resource's id must equal the id in request.url ({id})"),
                        ));
                    }
                    let prepared = Prepared::new(&resource_type, resource, base)
                        .map_err(|e| located(e, ".resource"))?;
                    if let Some(full_url) = &full_url {
                        references.insert(full_url.clone(), format!("{resource_type}/{id}"));
                    }
                    TxPlan::Update {
                        prepared,
                        id,
                        if_match: if_match
                            .as_deref()
                            .map(parse_version_tag)
                            .transpose()
                            .map_err(|e| located(e, ".request.ifMatch"))?,
                    }
                }
                Plan::ConditionalUpdate {
                    resource_type,
                    query,
                    resource,
                    if_match,
                } => {
                    let body_id = resource
                        .get("id")
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                    TxPlan::ConditionalUpdate {
                        prepared: Prepared::new(&resource_type, resource, base)
                            .map_err(|e| located(e, ".resource"))?,
                        criteria: criteria::parse_conditional(&resource_type, &query)
                            .map_err(|e| located(e, ".request.url"))?,
                        body_id,
                        full_url,
                        if_match: if_match
                            .as_deref()
                            .map(parse_version_tag)
                            .transpose()
                            .map_err(|e| located(e, ".request.ifMatch"))?,
                    }
                }
                Plan::Patch {
                    resource_type,
                    id,
                    patch,
                    if_match,
                } => TxPlan::Patch {
                    resource_type,
                    id,
                    patch: serde_json::from_value(patch).map_err(|e| {
                        entry_error(index, format!("not a JSON Patch document: {e}"))
                    })?,
                    if_match: if_match
                        .as_deref()
                        .map(parse_version_tag)
                        .transpose()
                        .map_err(|e| located(e, ".request.ifMatch"))?,
                },
                Plan::Delete { resource_type, id } => TxPlan::Delete { resource_type, id },
            };
            // A transaction may not touch one resource twice: the result would depend on
            // an order the client cannot see.
            let identity = match &plan {
                TxPlan::Update { prepared, id, .. } => {
                    Some(format!("{}/{id}", prepared.resource_type))
                }
                TxPlan::Patch {
                    resource_type, id, ..
                }
                | TxPlan::Delete { resource_type, id } => Some(format!("{resource_type}/{id}")),
                _ => None,
            };
            if let Some(identity) = identity
                && !touched.insert(identity.clone())
            {
                return Err(entry_error(
                    index,
                    format!("{identity} appears in more than one entry of this transaction"),
                ));
            }
            planned.push(TxEntry { index, plan });
        }
        // Conditional references (`Patient?identifier=…`) are resolved in the transaction.
        let mut conditional_references: Vec<String> = Vec::new();
        for entry in &planned {
            if let Some(resource) = entry.resource() {
                let mut found = Vec::new();
                collect_references(resource, &mut found);
                for reference in found {
                    if reference.contains('?')
                        && !conditional_references.iter().any(|r| r == reference)
                    {
                        conditional_references.push(reference.to_owned());
                    }
                }
            }
        }
        let mut parsed_conditionals = Vec::with_capacity(conditional_references.len());
        for reference in conditional_references {
            let (resource_type, query) = reference.split_once('?').unwrap_or_default();
            check_resource_type(resource_type)?;
            parsed_conditionals.push((
                reference.clone(),
                resource_type.to_owned(),
                criteria::parse_conditional(resource_type, query)?,
            ));
        }
        // Without conditional references, conditional creates or conditional updates, every
        // reference is known now: rewrite them and build the search index here rather
        // than in the store's unit of work (on SQLite, the one writer thread).
        let decided_in_store = !parsed_conditionals.is_empty()
            || planned.iter().any(|entry| {
                matches!(
                    entry.plan,
                    TxPlan::Create {
                        if_none_exist: Some(_),
                        ..
                    } | TxPlan::ConditionalUpdate { .. }
                )
            });
        if !decided_in_store {
            for entry in &mut planned {
                entry.resolve_now(&references);
            }
            references.clear();
        } else {
            // What references no other entry and no conditional reference is written as
            // sent (an HL7 admission's Patient, doctors and ward): indexed here all the same.
            let rewritable = |reference: &str| {
                full_urls.contains(reference)
                    || parsed_conditionals.iter().any(|(r, _, _)| r == reference)
            };
            for entry in &mut planned {
                entry.index_unless_rewritable(&rewritable);
            }
        }
        Ok(PreparedTransaction {
            planned,
            references,
            conditionals: parsed_conditionals,
            now: now_us(),
            skip_unchanged: false,
            blinding: None,
            base_url: base.to_owned(),
        })
    }

    /// Computes, here rather than on the store's writer, the blind index cells of what the
    /// entries write (see [`PreparedBlinding`]), but for the entries that likely write
    /// nothing: a conditional create or a skipped-if-unchanged update whose resource
    /// `recent` has seen lately (see [`RecentWrites`]). If the store writes one after all,
    /// the writer blinds it.
    fn prepare_blinding(&mut self, keyring: Arc<hygie_vault::Keyring>, recent: &RecentWrites) {
        let skip_unchanged = self.skip_unchanged;
        let blinded: Vec<Option<&Prepared>> = self
            .planned
            .iter()
            .map(|entry| match &entry.plan {
                TxPlan::Create {
                    prepared,
                    if_none_exist: Some(_),
                    ..
                } => (!recent.seen_before(&prepared.resource_type, &prepared.resource))
                    .then_some(prepared),
                TxPlan::ConditionalUpdate { prepared, .. } if skip_unchanged => (!recent
                    .seen_before(&prepared.resource_type, &prepared.resource))
                .then_some(prepared),
                TxPlan::Create { prepared, .. }
                | TxPlan::Update { prepared, .. }
                | TxPlan::ConditionalUpdate { prepared, .. } => Some(prepared),
                _ => None,
            })
            .collect();
        let computed: Vec<Option<Vec<IndexRow>>> = blinded
            .iter()
            .map(|prepared| match prepared {
                Some(prepared) if prepared.index.is_none() => Some(index_rows(&prepared.resource)),
                _ => None,
            })
            .collect();
        let resources = blinded
            .iter()
            .zip(&computed)
            .filter_map(|(prepared, computed)| {
                let prepared = (*prepared)?;
                let rows = prepared.index.as_ref().or(computed.as_ref())?;
                Some((prepared.resource_type.as_str(), rows.as_slice()))
            });
        self.blinding = Some(PreparedBlinding::prepare(keyring, resources));
    }

    /// How many index rows of blind parameters had their cells computed before the store
    /// (the writer computes the others' if it writes them); for tests and benchmarks.
    pub fn blinded_before_store(&self) -> usize {
        self.blinding.as_ref().map_or(0, PreparedBlinding::rows)
    }

    /// What each entry does, for the policy: a transaction is permitted only if every
    /// entry would be on its own (conditional criteria and references search their type).
    pub(crate) fn reached(&self) -> Vec<(Action, Target, String)> {
        let mut reached = Vec::new();
        for entry in &self.planned {
            let at = format!("Bundle.entry[{}]", entry.index);
            let (action, target) = match &entry.plan {
                TxPlan::Read { resource_type, id }
                | TxPlan::VRead {
                    resource_type, id, ..
                } => (Action::Read, Target::instance(resource_type, id)),
                TxPlan::Create {
                    prepared,
                    if_none_exist,
                    ..
                } => {
                    if if_none_exist.is_some() {
                        reached.push((
                            Action::Search,
                            Target::resource_type(&prepared.resource_type),
                            format!("{at}.request.ifNoneExist"),
                        ));
                    }
                    (
                        Action::Create,
                        Target::resource_type(&prepared.resource_type),
                    )
                }
                TxPlan::Update { prepared, id, .. } => (
                    Action::Update,
                    Target::instance(&prepared.resource_type, id),
                ),
                TxPlan::ConditionalUpdate { prepared, .. } => {
                    reached.push((
                        Action::Search,
                        Target::resource_type(&prepared.resource_type),
                        format!("{at}.request.url"),
                    ));
                    (
                        Action::Update,
                        Target::resource_type(&prepared.resource_type),
                    )
                }
                TxPlan::Patch {
                    resource_type, id, ..
                } => (Action::Patch, Target::instance(resource_type, id)),
                TxPlan::Delete { resource_type, id } => {
                    (Action::Delete, Target::instance(resource_type, id))
                }
            };
            reached.push((action, target, at));
        }
        for (reference, resource_type, _) in &self.conditionals {
            reached.push((
                Action::Search,
                Target::resource_type(resource_type),
                format!("the conditional reference {reference}"),
            ));
        }
        reached
    }

    pub(crate) fn execute(self, tx: &mut dyn Tx, mask: &Mask) -> OpResult<TransactionOutcome> {
        let count = self.planned.len();
        let run = move || {
            execute_transaction(
                tx,
                mask,
                self.planned,
                self.references,
                self.conditionals,
                (self.now, self.skip_unchanged, &self.base_url),
                count,
            )
        };
        match self.blinding {
            Some(blinding) => blinding.during(run),
            None => run(),
        }
    }
}

impl TxEntry {
    /// Rewrites the entry's references with ids known before the store, and indexes it.
    fn resolve_now(&mut self, references: &HashMap<String, String>) {
        if let TxPlan::Create { prepared, .. }
        | TxPlan::Update { prepared, .. }
        | TxPlan::ConditionalUpdate { prepared, .. } = &mut self.plan
        {
            rewrite_references(&mut prepared.resource, references);
            prepared.index = Some(index_rows(&prepared.resource));
        }
    }

    /// Indexes the entry now when none of its references is one the store may rewrite.
    fn index_unless_rewritable(&mut self, rewritable: &dyn Fn(&str) -> bool) {
        if let TxPlan::Create { prepared, .. }
        | TxPlan::Update { prepared, .. }
        | TxPlan::ConditionalUpdate { prepared, .. } = &mut self.plan
            && prepared.index.is_none()
        {
            let mut found = Vec::new();
            collect_references(&prepared.resource, &mut found);
            if !found.into_iter().any(rewritable) {
                prepared.index = Some(index_rows(&prepared.resource));
            }
        }
    }

    fn resource(&self) -> Option<&Value> {
        match &self.plan {
            TxPlan::Create { prepared, .. }
            | TxPlan::Update { prepared, .. }
            | TxPlan::ConditionalUpdate { prepared, .. } => Some(&prepared.resource),
            _ => None,
        }
    }

    fn resource_mut(&mut self) -> Option<&mut Value> {
        match &mut self.plan {
            TxPlan::Create { prepared, .. }
            | TxPlan::Update { prepared, .. }
            | TxPlan::ConditionalUpdate { prepared, .. } => Some(&mut prepared.resource),
            _ => None,
        }
    }

    fn order(&self) -> u8 {
        match &self.plan {
            TxPlan::Delete { .. } => 0,
            TxPlan::Create { .. } => 1,
            TxPlan::Update { .. } | TxPlan::ConditionalUpdate { .. } | TxPlan::Patch { .. } => 2,
            TxPlan::Read { .. } | TxPlan::VRead { .. } => 3,
        }
    }
}

/// The current version of `type/id` when `check` and its content (but for `meta` and `id`)
/// equals `prepared`'s.
fn unchanged(
    tx: &mut dyn Tx,
    prepared: &Prepared,
    id: &str,
    check: bool,
) -> Result<Option<Stored>, StoreError> {
    if !check {
        return Ok(None);
    }
    let Some(record) = tx.current(&prepared.resource_type, id)? else {
        return Ok(None);
    };
    if record.deleted {
        return Ok(None);
    }
    let mut stored: Value = serde_json::from_slice(&record.body)
        .map_err(|e| StoreError::Database(format!("stored body is not JSON: {e}")))?;
    let mut wanted = prepared.resource.clone();
    for value in [&mut stored, &mut wanted] {
        if let Some(object) = value.as_object_mut() {
            object.remove("meta");
            object.remove("id");
        }
    }
    Ok((stored == wanted).then(|| Stored::from_record(record)))
}

fn execute_transaction(
    tx: &mut dyn Tx,
    mask: &Mask,
    mut planned: Vec<TxEntry>,
    mut references: HashMap<String, String>,
    conditionals: Vec<(String, String, Criteria)>,
    (now, skip_unchanged, base_url): (i64, bool, &str),
    count: usize,
) -> OpResult<TransactionOutcome> {
    // Conditional creates that find their match, and conditional updates, decide ids now.
    for entry in &mut planned {
        let index = entry.index;
        match &mut entry.plan {
            TxPlan::Create {
                prepared,
                id,
                full_url,
                if_none_exist: Some(criteria),
            } => {
                criteria::lock_conditional(tx, &prepared.resource_type)?;
                let matches = criteria::matching_ids(tx, &prepared.resource_type, criteria, 2)?;
                match matches.as_slice() {
                    [] => {}
                    [existing] => {
                        *id = existing.clone();
                        if let Some(full_url) = full_url {
                            references.insert(
                                full_url.clone(),
                                format!("{}/{existing}", prepared.resource_type),
                            );
                        }
                    }
                    _ => {
                        return Ok(Err(HubError::precondition_failed(
                            "ifNoneExist matches more than one resource",
                        )
                        .located_in(&format!("Bundle.entry[{index}].request.ifNoneExist"))));
                    }
                }
            }
            TxPlan::ConditionalUpdate {
                prepared,
                criteria,
                body_id,
                full_url,
                ..
            } => {
                criteria::lock_conditional(tx, &prepared.resource_type)?;
                let matches = criteria::matching_ids(tx, &prepared.resource_type, criteria, 2)?;
                let id = match matches.as_slice() {
                    [] => body_id.clone().unwrap_or_else(new_id),
                    [existing] => existing.clone(),
                    _ => {
                        return Ok(Err(HubError::precondition_failed(
                            "the conditional update's criteria match more than one resource",
                        )
                        .located_in(&format!("Bundle.entry[{index}].request.url"))));
                    }
                };
                *body_id = Some(id.clone());
                if let Some(full_url) = full_url {
                    references.insert(full_url.clone(), format!("{}/{id}", prepared.resource_type));
                }
            }
            _ => {}
        }
    }
    for (reference, resource_type, criteria) in &conditionals {
        let matches = criteria::matching_ids(tx, resource_type, criteria, 2)?;
        match matches.as_slice() {
            [one] => {
                references.insert(reference.clone(), format!("{resource_type}/{one}"));
            }
            [] => {
                return Ok(Err(HubError::precondition_failed(format!(
                    "the conditional reference {reference} matches no resource"
                ))));
            }
            _ => {
                return Ok(Err(HubError::precondition_failed(format!(
                    "the conditional reference {reference} matches more than one resource"
                ))));
            }
        }
    }
    for entry in &mut planned {
        if let Some(resource) = entry.resource_mut() {
            rewrite_references(resource, &references);
        }
    }
    let mut order: Vec<usize> = (0..planned.len()).collect();
    order.sort_by_key(|&i| planned[i].order());
    let mut slots: Vec<Option<TxEntry>> = planned.into_iter().map(Some).collect();
    let mut results: Vec<Option<EntryResult>> = (0..count).map(|_| None).collect();
    for position in order {
        let entry = slots[position].take().expect("each entry runs once");
        let index = entry.index;
        let result = match entry.plan {
            TxPlan::Read { resource_type, id } => {
                exec_read(tx, mask, &resource_type, &id)?.map(EntryResult::Read)
            }
            TxPlan::VRead {
                resource_type,
                id,
                version,
            } => exec_vread(tx, mask, &resource_type, &id, version)?.map(EntryResult::Read),
            TxPlan::Create {
                prepared,
                id,
                if_none_exist,
                ..
            } => {
                if if_none_exist.is_some() && tx.head(&prepared.resource_type, &id)?.is_some() {
                    // The conditional create found its match: answer it, write nothing.
                    match tx.current(&prepared.resource_type, &id)? {
                        Some(record) if !record.deleted => Ok(EntryResult::Written(WriteOutcome {
                            status: 200,
                            stored: Stored::from_record(record),
                        })),
                        _ => Err(HubError::conflict("the matched resource changed")),
                    }
                } else {
                    exec_create(tx, prepared, &id, None, now)?.map(EntryResult::Written)
                }
            }
            TxPlan::Update {
                prepared,
                id,
                if_match,
            } => exec_update(tx, prepared, &id, if_match, now)?.map(EntryResult::Written),
            TxPlan::ConditionalUpdate {
                prepared,
                body_id,
                if_match,
                ..
            } => {
                let id = body_id.ok_or_else(|| StoreError::Database("unresolved id".into()))?;
                match unchanged(tx, &prepared, &id, skip_unchanged && if_match.is_none())? {
                    Some(current) => Ok(EntryResult::Written(WriteOutcome {
                        status: 200,
                        stored: current,
                    })),
                    None => {
                        exec_update(tx, prepared, &id, if_match, now)?.map(EntryResult::Written)
                    }
                }
            }
            TxPlan::Patch {
                resource_type,
                id,
                patch,
                if_match,
            } => exec_patch(tx, (&resource_type, &id), &patch, if_match, base_url, now)?
                .map(EntryResult::Written),
            TxPlan::Delete { resource_type, id } => exec_delete(tx, &resource_type, &id, now)?
                .map(|d| EntryResult::Deleted { version: d.version }),
        };
        match result {
            Ok(result) => results[index] = Some(result),
            Err(error) => {
                // One entry failed: the whole transaction is rolled back by the pipeline.
                let mut error = error;
                for issue in &mut error.issues {
                    issue.diagnostics = format!("entry {index}: {}", issue.diagnostics);
                    if issue.expression.is_none() {
                        issue.expression = Some(format!("Bundle.entry[{index}]"));
                    }
                }
                return Ok(Err(error));
            }
        }
    }
    Ok(Ok(TransactionOutcome {
        results: results
            .into_iter()
            .map(|r| r.expect("every entry produced a result"))
            .collect(),
    }))
}

fn status_text(status: u16) -> String {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    };
    format!("{status} {reason}").trim_end().to_owned()
}

fn response_entry(base: &str, result: EntryResult, preference: ReturnPreference) -> EntryOut {
    match result {
        EntryResult::Written(outcome) => {
            let stored = outcome.stored;
            EntryOut {
                full_url: Some(format!("{base}/{}/{}", stored.resource_type, stored.id)),
                response: Some(ResponseOut {
                    status: status_text(outcome.status),
                    location: Some(format!("{}/{}", base, stored.versioned_reference())),
                    etag: Some(stored.etag()),
                    last_modified: Some(format_instant(stored.last_updated_us)),
                    outcome: None,
                }),
                resource: match preference {
                    ReturnPreference::Representation => raw(stored.body).ok(),
                    _ => None,
                },
                ..EntryOut::default()
            }
        }
        EntryResult::Deleted { version } => EntryOut {
            response: Some(ResponseOut {
                status: status_text(204),
                etag: Some(format!("W/\"{version}\"")),
                ..ResponseOut::default()
            }),
            ..EntryOut::default()
        },
        EntryResult::Read(stored) => EntryOut {
            full_url: Some(format!("{base}/{}/{}", stored.resource_type, stored.id)),
            response: Some(ResponseOut {
                status: status_text(200),
                etag: Some(stored.etag()),
                last_modified: Some(format_instant(stored.last_updated_us)),
                ..ResponseOut::default()
            }),
            resource: raw(stored.body).ok(),
            ..EntryOut::default()
        },
        EntryResult::Searched(bundle) => EntryOut {
            response: Some(ResponseOut {
                status: status_text(200),
                ..ResponseOut::default()
            }),
            resource: raw(bundle).ok(),
            ..EntryOut::default()
        },
    }
}

fn error_entry(error: &HubError) -> EntryOut {
    let outcome = hygie_fhir::outcome::operation_outcome(&error.issues);
    EntryOut {
        response: Some(ResponseOut {
            status: status_text(error.status),
            outcome: Some(raw_value(&outcome)),
            ..ResponseOut::default()
        }),
        ..EntryOut::default()
    }
}
