//! Encryption at rest: every stored resource version is sealed (XChaCha20-Poly1305,
//! `hygie-vault`) with a data key: its patient's for a resource in a patient's
//! compartment, its type's for the rest. Data keys are stored wrapped under the key
//! file's slot keys (the key file never enters the database or its backups); erasing a
//! patient destroys their keys, in the database and, by puncturing their slots, in the
//! key file, so that no copy of their data can be opened again.
//!
//! The vault sits between the hub and the store ([`SealedStore`]): every unit of work
//! sees a [`Tx`] that seals what it writes and opens what it reads, so no code path of
//! the hub can write a body in clear or forget to open one. The associated data of each
//! seal is the version's `type/id/_history/version`: a sealed body moved to another row
//! does not open.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hygie_store::{
    BoxFuture, BoxedUnit, Filter, Head, HistoryQuery, IndexCell, IndexRow, NewVersion, SearchHit,
    SearchSpec, SharedStore, Store, StoreError, StoreExt, StoreResult, StoredDataKey, Tx,
    VersionRecord,
};
use hygie_vault::{DataKey, Keyring, VaultError, aead};

use crate::blind_index;
use crate::instant::now_us;

/// How the vault keeps unwrapped data keys in memory.
#[derive(Debug, Clone)]
pub struct VaultSettings {
    /// Unwrapped data keys kept in memory, the oldest dropped first.
    pub cached_keys: usize,
    /// How long a cached key is used before its row is read again: an erasure made by
    /// another process (the CLI, another hub node) takes effect within this time; one
    /// made through this process, at once.
    pub recheck: Duration,
}

impl Default for VaultSettings {
    fn default() -> VaultSettings {
        VaultSettings {
            cached_keys: 10_000,
            recheck: Duration::from_secs(5),
        }
    }
}

/// What an erasure did.
#[derive(Debug, Clone)]
pub struct Erasure {
    /// The data keys destroyed (and their slots punctured in the key file).
    pub keys: Vec<i64>,
    /// Versions that can no longer be read, and the resources they belong to.
    pub versions: u64,
    pub resources: u64,
}

/// What a rotation of the key file did.
#[derive(Debug, Clone)]
pub struct Rotation {
    pub generation: u32,
    pub rewrapped: u64,
    pub retired: Vec<u32>,
}

/// What a patient's key rotation did.
#[derive(Debug, Clone)]
pub struct PatientRotation {
    pub old_key: i64,
    pub new_key: i64,
    pub versions: u64,
}

/// The keyring and the data keys in use.
pub struct Vault {
    keyring: RwLock<Arc<Keyring>>,
    /// Where the keyring was read from, to read it again after a rotation made by
    /// another process (`None`: from the environment).
    key_file: Option<PathBuf>,
    cache: Mutex<KeyCache>,
    settings: VaultSettings,
    key_file_watch: Mutex<KeyFileWatch>,
}

/// When the key file was last looked at, and its modification time then.
struct KeyFileWatch {
    checked: Instant,
    modified: Option<std::time::SystemTime>,
}

struct CachedKey {
    key: Arc<DataKey>,
    checked: Instant,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<i64, CachedKey>,
    /// Insertion order, for eviction.
    order: VecDeque<i64>,
}

/// The scope of the key that seals the queries recorded in AuditEvents.
const AUDIT_SCOPE: &str = "type/AuditEvent";
/// What a sealed AuditEvent query is bound to.
const AUDIT_QUERY_AAD: &[u8] = b"AuditEvent.entity.query";

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

/// Meta keys recording which keyring the database belongs to.
const INSTALLATION_META: &str = "vault.installation";
fn check_meta(generation: u32) -> String {
    format!("vault.check.{generation}")
}

/// The associated data of a version's seal.
pub(crate) fn version_aad(resource_type: &str, id: &str, version: i64) -> String {
    format!("{resource_type}/{id}/_history/{version}")
}

/// The scope of a version's data key: its patient's when it is in a patient's
/// compartment (the first compartment parameter, in the definition's order, that
/// references a Patient), else its type's.
pub(crate) fn scope_of(resource_type: &str, id: &str, index: &[IndexRow]) -> String {
    if resource_type == "Patient" {
        return format!("patient/{id}");
    }
    if let Some(params) = crate::search::patient_compartment().get(resource_type) {
        for param in params {
            for row in index.iter().filter(|row| &row.param == param) {
                if let IndexCell::Reference {
                    target_type,
                    target_id,
                    ..
                } = &row.cell
                    && target_type == "Patient"
                    && !target_id.is_empty()
                {
                    return format!("patient/{target_id}");
                }
            }
        }
    }
    format!("type/{resource_type}")
}

fn vault_error(error: VaultError) -> StoreError {
    match error {
        VaultError::Erased { slot } => StoreError::Erased(format!("data sealed with key {slot}")),
        other => StoreError::Vault(other.to_string()),
    }
}

impl Vault {
    /// Binds `keyring` to the database behind `store`: a database seen for the first
    /// time records the keyring's installation and check values; one seen before must
    /// have been written under this very keyring, or nothing is served.
    pub async fn attach(
        store: &SharedStore,
        keyring: Keyring,
        key_file: Option<PathBuf>,
        settings: VaultSettings,
    ) -> StoreResult<Arc<Vault>> {
        let installation = keyring.installation().to_owned();
        let mut checks = Vec::new();
        for generation in keyring.generation_ids() {
            checks.push((
                generation,
                keyring.check_value(generation).map_err(vault_error)?,
            ));
        }
        store
            .run(move |tx| {
                match tx.meta_get(INSTALLATION_META)? {
                    None => tx.meta_set(INSTALLATION_META, &installation)?,
                    Some(recorded) if recorded != installation => {
                        return Err(StoreError::Vault(format!(
                            "the key file belongs to installation {installation}, but this database to {recorded}: give the key file of this database (see vault.key_file)"
                        )));
                    }
                    Some(_) => {}
                }
                for (generation, check) in &checks {
                    match tx.meta_get(&check_meta(*generation))? {
                        None => tx.meta_set(&check_meta(*generation), check)?,
                        Some(recorded) if &recorded != check => {
                            return Err(StoreError::Vault(format!(
                                "generation {generation} of the key file is not the one this database's keys were wrapped under (check value {check}, expected {recorded}): wrong or damaged key file"
                            )));
                        }
                        Some(_) => {}
                    }
                }
                Ok(())
            })
            .await?;
        let modified = key_file
            .as_ref()
            .and_then(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok());
        Ok(Arc::new(Vault {
            keyring: RwLock::new(Arc::new(keyring)),
            key_file,
            cache: Mutex::new(KeyCache::default()),
            settings,
            key_file_watch: Mutex::new(KeyFileWatch {
                checked: Instant::now(),
                modified,
            }),
        }))
    }

    /// Seals the versions written before encryption at rest was turned on (stored without
    /// a key), in batches, each one unit with its audit leaf (sealing reads them); returns
    /// how many. `raw` is the store without the vault.
    pub async fn seal_plaintext_versions(self: &Arc<Self>, raw: &SharedStore) -> StoreResult<u64> {
        const BATCH: usize = 500;
        let mut after = 0i64;
        let mut sealed = 0u64;
        loop {
            let vault = self.clone();
            let batch = raw
                .run(move |tx| -> StoreResult<Option<(i64, u64)>> {
                    let records = tx.unsealed_versions(after, BATCH)?;
                    let Some(last) = records.last().map(|record| record.seq) else {
                        return Ok(None);
                    };
                    let mut audit =
                        hygie_audit::AuditRecord::new("seal", "system:hygie-vault", now_us());
                    let count = records.len() as u64;
                    let mut sealing = SealedTx {
                        inner: tx,
                        vault: &vault,
                        scope_keys: HashMap::new(),
                    };
                    for record in records {
                        let resource: serde_json::Value = serde_json::from_slice(&record.body)
                            .map_err(|e| {
                                StoreError::Database(format!(
                                    "{}/{} is not JSON: {e}",
                                    record.resource_type, record.id
                                ))
                            })?;
                        let index = crate::resource::index_rows(&resource);
                        let scope = scope_of(&record.resource_type, &record.id, &index);
                        let (key_id, key) = sealing.current_key(&scope)?;
                        let aad = version_aad(&record.resource_type, &record.id, record.version);
                        let body = aead::seal(&key, key_id, aad.as_bytes(), &record.body);
                        sealing.inner.reseal_version(record.seq, key_id, &body)?;
                        audit.entities.push(format!(
                            "{}/{}/_history/{}",
                            record.resource_type, record.id, record.version
                        ));
                    }
                    crate::audit_trail::append(sealing.inner, &audit)?;
                    Ok(Some((last, count)))
                })
                .await?;
            let Some((last, count)) = batch else {
                return Ok(sealed);
            };
            sealed += count;
            after = last;
        }
    }

    /// Where the keyring lives, for the operations that change it.
    fn writable_key_file(&self, what: &str) -> StoreResult<&PathBuf> {
        self.key_file.as_ref().ok_or_else(|| {
            StoreError::Vault(format!(
                "{what} changes the key file, but the keyring was given in HYGIE_VAULT_KEY: run it with --vault-key FILE (then put the new keyring where HYGIE_VAULT_KEY comes from)"
            ))
        })
    }

    /// Saves `keyring` to the key file and uses it from now on.
    fn save_keyring(&self, keyring: Keyring) -> StoreResult<()> {
        let path = self.writable_key_file("this")?;
        keyring.save(path).map_err(vault_error)?;
        self.replace_keyring(keyring);
        if let Ok(mut watch) = self.key_file_watch.lock() {
            watch.modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        }
        Ok(())
    }

    /// Erases a patient (GDPR Art. 17, crypto-shredding): their data keys are destroyed in
    /// the database (the rows stay, without their wrapped forms), each of their resources
    /// gets a tombstone (gone from searches and counts), the erasure is audited (who, why,
    /// which patient; no patient data), and then the keys' slots are punctured in the key
    /// file, so that no backup's copy of the wrapped keys can be unwrapped either. Running
    /// it again (after a failure to write the key file) finishes the puncturing.
    pub async fn erase_patient(
        self: &Arc<Self>,
        raw: &SharedStore,
        patient_id: &str,
        by: &str,
        reason: &str,
    ) -> StoreResult<Erasure> {
        self.writable_key_file("erasing a patient")?;
        let vault = self.clone();
        let (patient, by_owned, reason_owned) =
            (patient_id.to_owned(), by.to_owned(), reason.to_owned());
        let erasure = raw
            .run(move |tx| {
                let erasure = erase_scope(tx, &patient, &by_owned, &reason_owned)?;
                vault.forget(&erasure.keys);
                Ok(erasure)
            })
            .await?;
        let mut keyring = (*self.keyring()).clone();
        for key_id in &erasure.keys {
            keyring.puncture(*key_id as u64).map_err(vault_error)?;
        }
        self.save_keyring(keyring)?;
        self.forget(&erasure.keys);
        Ok(erasure)
    }

    /// Re-applies to this database the erasures the key file records (its erased slots)
    /// that the database does not know: a backup restored after an erasure still holds
    /// the erased keys' wrapped forms and their resources' index rows. Their data could
    /// not be opened anyway; this also takes them out of searches and counts, and says so
    /// in the audit log. Returns how many patients.
    pub async fn reapply_erasures(self: &Arc<Self>, raw: &SharedStore) -> StoreResult<u64> {
        let slots: Vec<i64> = self
            .keyring()
            .erased_slots()
            .iter()
            .filter_map(|slot| i64::try_from(*slot).ok())
            .collect();
        if slots.is_empty() {
            return Ok(0);
        }
        let vault = self.clone();
        raw.run(move |tx| {
            let mut patients = std::collections::BTreeSet::new();
            for slot in slots {
                if let Some(key) = tx.data_key(slot)?
                    && key.wrapped.is_some()
                    && let Some(patient) = key.scope.strip_prefix("patient/")
                {
                    patients.insert(patient.to_owned());
                }
            }
            for patient in &patients {
                let erasure = erase_scope(
                    tx,
                    patient,
                    "system:hygie-vault",
                    "re-applied: this database predates the erasure recorded in the key file (a restored backup)",
                )?;
                vault.forget(&erasure.keys);
            }
            Ok(patients.len() as u64)
        })
        .await
    }

    /// Rotates the key file's keys (the key-encryption keys): a new generation becomes
    /// active, every data key is re-wrapped under it (online: hub processes reading keys
    /// meanwhile read the key file again when they meet the new generation), passes
    /// repeated until none is left under an older one. With `retire_previous`, the older
    /// generations are then removed from the key file: backups made before can no longer
    /// be opened with it (what a leaked key file calls for).
    pub async fn rotate_key_file(
        self: &Arc<Self>,
        raw: &SharedStore,
        by: &str,
        retire_previous: bool,
    ) -> StoreResult<Rotation> {
        self.writable_key_file("rotating the key file")?;
        let mut keyring = (*self.keyring()).clone();
        let previous = keyring.generation_ids();
        let generation = keyring.rotate(now_us());
        let check = keyring.check_value(generation).map_err(vault_error)?;
        self.save_keyring(keyring)?;
        raw.run(move |tx| tx.meta_set(&check_meta(generation), &check))
            .await?;
        let mut rewrapped = 0u64;
        loop {
            let mut pass = 0u64;
            let mut after = 0i64;
            loop {
                let vault = self.clone();
                let page = raw
                    .run(move |tx| -> StoreResult<Option<(i64, u64)>> {
                        let keys = tx.data_keys(after, 1_000)?;
                        let Some(last) = keys.last().map(|key| key.key_id) else {
                            return Ok(None);
                        };
                        let keyring = vault.keyring();
                        let mut done = 0;
                        for stored in keys {
                            if stored.wrapped.is_none()
                                || stored.generation == i64::from(generation)
                            {
                                continue;
                            }
                            let key = vault.unwrap(&stored)?;
                            let wrapped = keyring
                                .wrap(
                                    generation,
                                    stored.key_id as u64,
                                    &key,
                                    stored.scope.as_bytes(),
                                )
                                .map_err(vault_error)?;
                            tx.rewrap_data_key(stored.key_id, i64::from(generation), &wrapped)?;
                            done += 1;
                        }
                        Ok(Some((last, done)))
                    })
                    .await?;
                let Some((last, done)) = page else { break };
                after = last;
                pass += done;
            }
            rewrapped += pass;
            if pass == 0 {
                break;
            }
        }
        let retired = if retire_previous {
            let mut keyring = (*self.keyring()).clone();
            for old in &previous {
                keyring.retire(*old).map_err(vault_error)?;
            }
            self.save_keyring(keyring)?;
            previous.clone()
        } else {
            Vec::new()
        };
        let by = by.to_owned();
        let retired_list = retired.clone();
        raw.run(move |tx| {
            let mut audit = hygie_audit::AuditRecord::new("rotate-key-file", &by, now_us());
            audit.outcome_description = Some(format!(
                "key file generation {generation} active, {rewrapped} data key(s) re-wrapped{}",
                if retired_list.is_empty() {
                    String::new()
                } else {
                    format!(", generation(s) {retired_list:?} retired")
                }
            ));
            crate::audit_trail::append(tx, &audit)
        })
        .await?;
        Ok(Rotation {
            generation,
            rewrapped,
            retired,
        })
    }

    /// Re-encrypts one patient's data under a new data key (the old one may have leaked):
    /// in one unit, every version sealed with their current key is opened and sealed again
    /// with the new one. The old key stays wrapped in the database, not current, so that
    /// backups taken before still open with the key file.
    pub async fn rotate_patient_key(
        self: &Arc<Self>,
        raw: &SharedStore,
        patient_id: &str,
        by: &str,
    ) -> StoreResult<PatientRotation> {
        let vault = self.clone();
        let (patient, by) = (patient_id.to_owned(), by.to_owned());
        raw.run(move |tx| {
            let scope = format!("patient/{patient}");
            let mut sealing = SealedTx {
                inner: tx,
                vault: &vault,
                scope_keys: HashMap::new(),
            };
            let old = match sealing.inner.current_data_key(&scope)? {
                Some(old) if old.wrapped.is_some() => old,
                Some(_) => return Err(StoreError::Erased(format!("Patient/{patient}"))),
                None => {
                    return Err(StoreError::Unsupported(format!(
                        "Patient/{patient} has no data key: nothing was ever stored for this patient (check the id)"
                    )));
                }
            };
            let old_key = sealing.key(old.key_id)?;
            let (stored, new_key) = vault.new_key(&mut *sealing.inner, &scope)?;
            sealing.inner.put_data_key(&stored, true)?;
            let mut versions = 0u64;
            let mut after = 0;
            loop {
                let page = sealing.inner.versions_sealed_with(&[old.key_id], after, 500)?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                for version in page {
                    let aad = version_aad(&version.resource_type, &version.id, version.version);
                    let body = aead::open(&old_key, aad.as_bytes(), &version.body)
                        .map_err(vault_error)?;
                    let sealed = aead::seal(&new_key, stored.key_id, aad.as_bytes(), &body);
                    sealing.inner.reseal_version(version.seq, stored.key_id, &sealed)?;
                    versions += 1;
                }
            }
            let mut audit = hygie_audit::AuditRecord::new("rotate-patient-key", &by, now_us());
            audit.entities.push(format!("Patient/{patient}"));
            audit.patients.push(patient.clone());
            audit.outcome_description = Some(format!(
                "{versions} version(s) re-encrypted under data key {} (was {})",
                stored.key_id, old.key_id
            ));
            crate::audit_trail::append(sealing.inner, &audit)?;
            Ok(PatientRotation {
                old_key: old.key_id,
                new_key: stored.key_id,
                versions,
            })
        })
        .await
    }

    /// `store`, sealing and opening through this vault.
    pub fn seal(self: &Arc<Self>, store: SharedStore) -> SharedStore {
        Arc::new(SealedStore {
            inner: store,
            vault: self.clone(),
        })
    }

    /// The keyring, read again from the key file when another process changed it (a
    /// rotation, an erasure), looked at every `recheck` at most.
    pub fn keyring(&self) -> Arc<Keyring> {
        if let Some(path) = &self.key_file
            && let Ok(mut watch) = self.key_file_watch.try_lock()
            && watch.checked.elapsed() >= self.settings.recheck
        {
            watch.checked = Instant::now();
            let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
            if modified.is_some() && modified != watch.modified {
                match Keyring::load(path) {
                    Ok(keyring) => {
                        watch.modified = modified;
                        self.replace_keyring(keyring);
                    }
                    Err(error) => tracing::error!(
                        key_file = %path.display(),
                        %error,
                        "the key file changed but cannot be read: keeping the keyring in memory"
                    ),
                }
            }
        }
        self.keyring.read().expect("keyring lock").clone()
    }

    /// Replaces the keyring (after a rotation or an erasure made through this process).
    pub fn replace_keyring(&self, keyring: Keyring) {
        *self.keyring.write().expect("keyring lock") = Arc::new(keyring);
    }

    /// Forgets the cached keys `key_ids` (an erasure made through this process).
    pub fn forget(&self, key_ids: &[i64]) {
        let mut cache = self.cache.lock().expect("key cache lock");
        for key_id in key_ids {
            cache.keys.remove(key_id);
        }
    }

    fn cached(&self, key_id: i64) -> Option<Arc<DataKey>> {
        let cache = self.cache.lock().expect("key cache lock");
        cache
            .keys
            .get(&key_id)
            .filter(|cached| cached.checked.elapsed() < self.settings.recheck)
            .map(|cached| cached.key.clone())
    }

    fn remember(&self, key_id: i64, key: Arc<DataKey>) {
        let mut cache = self.cache.lock().expect("key cache lock");
        if cache
            .keys
            .insert(
                key_id,
                CachedKey {
                    key,
                    checked: Instant::now(),
                },
            )
            .is_none()
        {
            cache.order.push_back(key_id);
        }
        while cache.keys.len() > self.settings.cached_keys.max(1) {
            match cache.order.pop_front() {
                Some(oldest) => {
                    cache.keys.remove(&oldest);
                }
                None => break,
            }
        }
    }

    /// Unwraps a stored key, reading the key file again once if it names a generation
    /// this process has not seen (a rotation made by another process).
    fn unwrap(&self, stored: &StoredDataKey) -> StoreResult<DataKey> {
        let wrapped = stored
            .wrapped
            .as_deref()
            .ok_or_else(|| StoreError::Erased(format!("data of {}", stored.scope)))?;
        let generation = u32::try_from(stored.generation).map_err(|_| {
            StoreError::Vault(format!("generation {} out of range", stored.generation))
        })?;
        let slot = stored.key_id as u64;
        let attempt =
            |keyring: &Keyring| keyring.unwrap(generation, slot, wrapped, stored.scope.as_bytes());
        match attempt(&self.keyring()) {
            Err(VaultError::UnknownGeneration(_)) if self.key_file.is_some() => {
                let path = self.key_file.as_ref().expect("checked");
                let reloaded = Keyring::load(path).map_err(vault_error)?;
                let key = attempt(&reloaded).map_err(vault_error)?;
                self.replace_keyring(reloaded);
                Ok(key)
            }
            other => other.map_err(|error| match error {
                VaultError::Erased { .. } => {
                    StoreError::Erased(format!("data of {}", stored.scope))
                }
                other => vault_error(other),
            }),
        }
    }

    /// A new data key for `scope`, wrapped under the active generation, at a slot the
    /// key file has not erased.
    fn new_key(&self, tx: &mut dyn Tx, scope: &str) -> StoreResult<(StoredDataKey, DataKey)> {
        let keyring = self.keyring();
        let mut key_id = tx.next_data_key_id()?;
        while keyring.is_erased(key_id as u64) {
            key_id = tx.next_data_key_id()?;
            if tx.data_key(key_id)?.is_some() {
                return Err(StoreError::Vault(format!(
                    "key number {key_id} is taken: the data_key table and the key file disagree"
                )));
            }
        }
        let key = DataKey::generate();
        let generation = keyring.active_generation();
        let wrapped = keyring
            .wrap(generation, key_id as u64, &key, scope.as_bytes())
            .map_err(vault_error)?;
        Ok((
            StoredDataKey {
                key_id,
                scope: scope.to_owned(),
                generation: i64::from(generation),
                wrapped: Some(wrapped),
                is_current: true,
                created_us: now_us(),
                erased_us: None,
            },
            key,
        ))
    }
}

/// Records in the audit log an operation on the whole store made outside the hub's
/// requests (a backup taken, a restore): whoever copies everything is in the trail too.
pub async fn record_operation(
    store: &SharedStore,
    interaction: &str,
    by: &str,
    description: String,
) -> StoreResult<()> {
    let mut audit = hygie_audit::AuditRecord::new(interaction, by, now_us());
    audit.outcome_description = Some(description);
    store
        .run(move |tx| crate::audit_trail::append(tx, &audit).map(|_| ()))
        .await
}

/// The database side of an erasure, in the caller's unit (see [`Vault::erase_patient`]).
fn erase_scope(tx: &mut dyn Tx, patient: &str, by: &str, reason: &str) -> StoreResult<Erasure> {
    let scope = format!("patient/{patient}");
    let now = now_us();
    let keys = tx.erase_data_keys(&scope, now)?;
    if keys.is_empty() {
        return Err(StoreError::Unsupported(format!(
            "Patient/{patient} has no data key: nothing was ever stored for this patient (check the id)"
        )));
    }
    // Every resource whose current version is sealed with the patient's keys gets a
    // tombstone.
    let mut sealed_versions = std::collections::HashSet::new();
    let mut after = 0;
    loop {
        let page = tx.versions_sealed_with(&keys, after, 1_000)?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for version in page {
            sealed_versions.insert((version.resource_type, version.id, version.version));
        }
    }
    let versions = sealed_versions.len() as u64;
    let mut resources: Vec<(String, String)> = sealed_versions
        .iter()
        .map(|(ty, id, _)| (ty.clone(), id.clone()))
        .collect();
    resources.sort();
    resources.dedup();
    let mut tombstoned = 0u64;
    for (ty, id) in &resources {
        let Some(head) = tx.head(ty, id)? else {
            continue;
        };
        if head.deleted || !sealed_versions.contains(&(ty.clone(), id.clone(), head.version)) {
            continue;
        }
        tx.put_version(&NewVersion {
            resource_type: ty,
            id,
            version: head.version + 1,
            last_updated_us: now,
            deleted: true,
            body: &[],
            index: &[],
            key_id: None,
        })?;
        tombstoned += 1;
    }
    let mut audit = hygie_audit::AuditRecord::new("erase", by, now);
    audit.entities.push(format!("Patient/{patient}"));
    audit.patients.push(patient.to_owned());
    audit.outcome_description = Some(format!(
        "erased (GDPR Art. 17): {} data key(s) destroyed, {versions} version(s) of {} resource(s) unreadable, {tombstoned} tombstone(s); reason: {reason}",
        keys.len(),
        resources.len()
    ));
    crate::audit_trail::append(tx, &audit)?;
    Ok(Erasure {
        keys,
        versions,
        resources: resources.len() as u64,
    })
}

/// A store whose units see a [`SealedTx`].
pub struct SealedStore {
    inner: SharedStore,
    vault: Arc<Vault>,
}

impl SealedStore {
    fn wrap_unit(&self, unit: BoxedUnit) -> BoxedUnit {
        let vault = self.vault.clone();
        Box::new(move |tx| {
            unit(&mut SealedTx {
                inner: tx,
                vault: &vault,
                scope_keys: HashMap::new(),
            })
        })
    }
}

impl Store for SealedStore {
    fn run_boxed(&self, unit: BoxedUnit) -> BoxFuture<StoreResult<Box<dyn std::any::Any + Send>>> {
        self.inner.run_boxed(self.wrap_unit(unit))
    }

    fn read_boxed(&self, unit: BoxedUnit) -> BoxFuture<StoreResult<Box<dyn std::any::Any + Send>>> {
        self.inner.read_boxed(self.wrap_unit(unit))
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn close(&self) -> BoxFuture<()> {
        self.inner.close()
    }
}

/// A unit's transaction, sealing and opening bodies.
pub struct SealedTx<'a> {
    inner: &'a mut dyn Tx,
    vault: &'a Vault,
    /// The current key of each scope this unit sealed with (a bulk load seals many
    /// versions of one patient): read once per unit, so that a key replaced or erased by
    /// another unit is seen by the next unit.
    scope_keys: HashMap<String, (i64, Arc<DataKey>)>,
}

impl SealedTx<'_> {
    /// The key `key_id`, from the cache or unwrapped from its row.
    fn key(&mut self, key_id: i64) -> StoreResult<Arc<DataKey>> {
        if let Some(key) = self.vault.cached(key_id) {
            return Ok(key);
        }
        let stored = self
            .inner
            .data_key(key_id)?
            .ok_or_else(|| StoreError::Vault(format!("no data key {key_id} in the database")))?;
        if stored.wrapped.is_none() {
            self.vault.forget(&[key_id]);
        }
        let key = Arc::new(self.vault.unwrap(&stored)?);
        self.vault.remember(key_id, key.clone());
        Ok(key)
    }

    /// The current key of `scope`, made on first use. An erased scope takes no new data.
    fn current_key(&mut self, scope: &str) -> StoreResult<(i64, Arc<DataKey>)> {
        if let Some(found) = self.scope_keys.get(scope) {
            return Ok(found.clone());
        }
        let found = match self.inner.current_data_key(scope)? {
            Some(stored) if stored.wrapped.is_none() => {
                return Err(StoreError::Erased(scope.to_owned()));
            }
            Some(stored) => (stored.key_id, self.key(stored.key_id)?),
            None => {
                let (stored, key) = self.vault.new_key(&mut *self.inner, scope)?;
                if self.inner.put_data_key(&stored, false)? {
                    let key = Arc::new(key);
                    self.vault.remember(stored.key_id, key.clone());
                    (stored.key_id, key)
                } else {
                    // Another process made the scope's key first: use theirs.
                    let theirs = self.inner.current_data_key(scope)?.ok_or_else(|| {
                        StoreError::Vault(format!("the data key of {scope} vanished"))
                    })?;
                    (theirs.key_id, self.key(theirs.key_id)?)
                }
            }
        };
        self.scope_keys.insert(scope.to_owned(), found.clone());
        Ok(found)
    }

    /// Opens a version's body. A body written before encryption was turned on (not
    /// sealed) is returned as it is; tombstones have none.
    fn open(&mut self, mut record: VersionRecord) -> StoreResult<VersionRecord> {
        if record.body.is_empty() || !aead::is_sealed(&record.body) {
            return Ok(record);
        }
        let key_id = aead::sealed_key_id(&record.body).map_err(vault_error)?;
        let key = self.key(key_id).map_err(|error| match error {
            StoreError::Erased(_) => {
                StoreError::Erased(format!("{}/{}", record.resource_type, record.id))
            }
            other => other,
        })?;
        let aad = version_aad(&record.resource_type, &record.id, record.version);
        record.body = aead::open(&key, aad.as_bytes(), &record.body).map_err(|error| {
            StoreError::Vault(format!(
                "{}/{} version {}: {error}",
                record.resource_type, record.id, record.version
            ))
        })?;
        Ok(record)
    }

    /// An AuditEvent leaf with its search query sealed (`None`: it has none). A search's
    /// query names what was searched for (`family=Dupont`): in the log for good, it would
    /// be identifying data in clear at rest. Sealed under the `type/AuditEvent` key (base64
    /// of the sealed bytes, still a base64Binary), it is opened for the auditors who read
    /// the trail through the hub (`search_audit`, `audit_event`); `verify`, the witness and
    /// the SIEM exports see the sealed leaf, which is the one in the tree.
    fn seal_leaf_query(&mut self, leaf: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        let keys = memchr::memmem::find_iter(leaf, b"\"query\"").count();
        if keys == 0 {
            return Ok(None);
        }
        // The leaves the hub writes are compact JSON (`AuditRecord::to_leaf`), where the
        // only `"query"` is an entity's, followed by `:"` and base64: its value is sealed
        // in place, without parsing and writing the whole event again (4% of the writer
        // thread under an HL7 feed, which audits every message with its description as
        // query). Any other layout goes through the JSON below.
        if memchr::memmem::find_iter(leaf, b"\"query\":\"").count() == keys {
            return self.seal_compact_leaf_queries(leaf);
        }
        let mut event: serde_json::Value = match serde_json::from_slice(leaf) {
            Ok(event) => event,
            Err(_) => return Ok(None),
        };
        let Some(entities) = event.get_mut("entity").and_then(|e| e.as_array_mut()) else {
            return Ok(None);
        };
        let mut sealed_any = false;
        for entity in entities {
            let Some(query) = entity.get("query").and_then(|q| q.as_str()) else {
                continue;
            };
            let Ok(plain) = BASE64.decode(query) else {
                continue;
            };
            let (key_id, key) = self.current_key(AUDIT_SCOPE)?;
            let sealed = aead::seal(&key, key_id, AUDIT_QUERY_AAD, &plain);
            entity["query"] = serde_json::Value::String(BASE64.encode(sealed));
            sealed_any = true;
        }
        if !sealed_any {
            return Ok(None);
        }
        serde_json::to_vec(&event)
            .map(Some)
            .map_err(|e| StoreError::Database(format!("an AuditEvent leaf: {e}")))
    }

    /// [`Self::seal_leaf_query`] on a compact leaf: each `"query":"<base64>"` value
    /// replaced by the base64 of its sealed bytes, the rest of the leaf unchanged.
    fn seal_compact_leaf_queries(&mut self, leaf: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        const KEY: &[u8] = b"\"query\":\"";
        let mut sealed_leaf = Vec::with_capacity(leaf.len() + 64);
        let mut copied = 0;
        for found in memchr::memmem::find_iter(leaf, KEY) {
            let start = found + KEY.len();
            let Some(length) = memchr::memchr(b'"', &leaf[start..]) else {
                break;
            };
            let end = start + length;
            let Ok(plain) = BASE64.decode(&leaf[start..end]) else {
                continue;
            };
            let (key_id, key) = self.current_key(AUDIT_SCOPE)?;
            let sealed = aead::seal(&key, key_id, AUDIT_QUERY_AAD, &plain);
            sealed_leaf.extend_from_slice(&leaf[copied..start]);
            sealed_leaf.extend_from_slice(BASE64.encode(sealed).as_bytes());
            copied = end;
        }
        if copied == 0 {
            return Ok(None);
        }
        sealed_leaf.extend_from_slice(&leaf[copied..]);
        Ok(Some(sealed_leaf))
    }

    /// Opens the sealed query of a leaf read back for an auditor; a query that cannot be
    /// opened is left sealed (and said so in the log).
    fn open_leaf_query(&mut self, leaf: &mut Vec<u8>) {
        if memchr::memmem::find(leaf, b"\"query\"").is_none() {
            return;
        }
        let Ok(mut event) = serde_json::from_slice::<serde_json::Value>(leaf) else {
            return;
        };
        let Some(entities) = event.get_mut("entity").and_then(|e| e.as_array_mut()) else {
            return;
        };
        let mut opened_any = false;
        for entity in entities {
            let Some(sealed) = entity
                .get("query")
                .and_then(|q| q.as_str())
                .and_then(|q| BASE64.decode(q).ok())
            else {
                continue;
            };
            if !aead::is_sealed(&sealed) {
                continue;
            }
            let opened = aead::sealed_key_id(&sealed)
                .map_err(vault_error)
                .and_then(|key_id| self.key(key_id))
                .and_then(|key| aead::open(&key, AUDIT_QUERY_AAD, &sealed).map_err(vault_error));
            match opened {
                Ok(plain) => {
                    entity["query"] = serde_json::Value::String(BASE64.encode(plain));
                    opened_any = true;
                }
                Err(error) => tracing::error!(%error, "an AuditEvent query could not be opened"),
            }
        }
        if opened_any && let Ok(bytes) = serde_json::to_vec(&event) {
            *leaf = bytes;
        }
    }

    /// Opens every record; the erased ones are left out (their patient's data is gone).
    fn open_all(&mut self, records: Vec<VersionRecord>) -> StoreResult<Vec<VersionRecord>> {
        let mut opened = Vec::with_capacity(records.len());
        for record in records {
            match self.open(record) {
                Ok(record) => opened.push(record),
                Err(StoreError::Erased(_)) => {}
                Err(other) => return Err(other),
            }
        }
        Ok(opened)
    }
}

impl Tx for SealedTx<'_> {
    fn head(&mut self, t: &str, id: &str) -> StoreResult<Option<Head>> {
        self.inner.head(t, id)
    }
    fn current(&mut self, t: &str, id: &str) -> StoreResult<Option<VersionRecord>> {
        let record = self.inner.current(t, id)?;
        record.map(|record| self.open(record)).transpose()
    }
    fn version(&mut self, t: &str, id: &str, v: i64) -> StoreResult<Option<VersionRecord>> {
        let record = self.inner.version(t, id, v)?;
        record.map(|record| self.open(record)).transpose()
    }
    fn put_version(&mut self, v: &NewVersion<'_>) -> StoreResult<()> {
        if v.deleted || v.body.is_empty() {
            return self.inner.put_version(v);
        }
        let scope = scope_of(v.resource_type, v.id, v.index);
        let (key_id, key) = self.current_key(&scope)?;
        let sealed = aead::seal(
            &key,
            key_id,
            version_aad(v.resource_type, v.id, v.version).as_bytes(),
            v.body,
        );
        let keyring = self.vault.keyring();
        let index = blind_index::blind_rows(keyring.index_key(), v.resource_type, v.index);
        self.inner.put_version(&NewVersion {
            body: &sealed,
            key_id: Some(key_id),
            index: &index,
            ..v.clone()
        })
    }
    fn history(&mut self, q: &HistoryQuery) -> StoreResult<Vec<VersionRecord>> {
        let records = self.inner.history(q)?;
        self.open_all(records)
    }
    fn max_seq(&mut self) -> StoreResult<i64> {
        self.inner.max_seq()
    }
    fn search(&mut self, s: &SearchSpec) -> StoreResult<Vec<SearchHit>> {
        let index_key = self.vault.keyring();
        let filters =
            blind_index::blind_filters(index_key.index_key(), &s.resource_type, &s.filters)?;
        if !blind_index::sorts_blind(s) {
            return self.inner.search(&SearchSpec {
                filters,
                ..s.clone()
            });
        }
        // Sorted by an encrypted element: every match, opened and sorted here.
        let everything = self.inner.search(&SearchSpec {
            resource_type: s.resource_type.clone(),
            filters,
            sort: Vec::new(),
            position: None,
            limit: blind_index::MAX_SORTED_IN_MEMORY + 1,
        })?;
        if everything.len() > blind_index::MAX_SORTED_IN_MEMORY {
            return Err(StoreError::Unsupported(format!(
                "this search matches more than {} {} resources, too many to sort by an encrypted element (names, addresses, birth dates are sorted after decryption): narrow it, or sort by another parameter",
                blind_index::MAX_SORTED_IN_MEMORY,
                s.resource_type
            )));
        }
        let ids: Vec<String> = everything.into_iter().map(|hit| hit.id).collect();
        let candidates = self.current_many(&s.resource_type, &ids)?;
        blind_index::sort_in_memory(s, candidates)
    }
    fn count(&mut self, t: &str, f: &[Filter]) -> StoreResult<u64> {
        let keyring = self.vault.keyring();
        let filters = blind_index::blind_filters(keyring.index_key(), t, f)?;
        self.inner.count(t, &filters)
    }
    fn references_from(
        &mut self,
        t: &str,
        ids: &[String],
        p: Option<&str>,
        l: usize,
    ) -> StoreResult<Vec<(String, String)>> {
        self.inner.references_from(t, ids, p, l)
    }
    fn references_to(
        &mut self,
        s: &str,
        p: Option<&str>,
        t: &str,
        ids: &[String],
        l: usize,
    ) -> StoreResult<Vec<String>> {
        self.inner.references_to(s, p, t, ids, l)
    }
    fn current_many(&mut self, t: &str, ids: &[String]) -> StoreResult<Vec<VersionRecord>> {
        let records = self.inner.current_many(t, ids)?;
        self.open_all(records)
    }
    fn compartment(
        &mut self,
        t: &str,
        id: &str,
        m: &[(String, Vec<String>)],
        a: Option<(&str, &str)>,
        l: usize,
    ) -> StoreResult<Vec<(String, String)>> {
        self.inner.compartment(t, id, m, a, l)
    }
    fn scan_current(
        &mut self,
        a: Option<(&str, &str)>,
        l: usize,
    ) -> StoreResult<Vec<VersionRecord>> {
        let records = self.inner.scan_current(a, l)?;
        self.open_all(records)
    }
    fn replace_index(&mut self, t: &str, id: &str, rows: &[IndexRow]) -> StoreResult<()> {
        let keyring = self.vault.keyring();
        let rows = blind_index::blind_rows(keyring.index_key(), t, rows);
        self.inner.replace_index(t, id, &rows)
    }
    fn refresh_statistics(&mut self) -> StoreResult<()> {
        self.inner.refresh_statistics()
    }
    fn data_key(&mut self, key_id: i64) -> StoreResult<Option<StoredDataKey>> {
        self.inner.data_key(key_id)
    }
    fn current_data_key(&mut self, scope: &str) -> StoreResult<Option<StoredDataKey>> {
        self.inner.current_data_key(scope)
    }
    fn next_data_key_id(&mut self) -> StoreResult<i64> {
        self.inner.next_data_key_id()
    }
    fn put_data_key(&mut self, key: &StoredDataKey, replace: bool) -> StoreResult<bool> {
        self.inner.put_data_key(key, replace)
    }
    fn rewrap_data_key(&mut self, key_id: i64, generation: i64, wrapped: &[u8]) -> StoreResult<()> {
        self.inner.rewrap_data_key(key_id, generation, wrapped)
    }
    fn erase_data_keys(&mut self, scope: &str, erased_us: i64) -> StoreResult<Vec<i64>> {
        self.inner.erase_data_keys(scope, erased_us)
    }
    fn data_keys(&mut self, after: i64, limit: usize) -> StoreResult<Vec<StoredDataKey>> {
        self.inner.data_keys(after, limit)
    }
    fn versions_sealed_with(
        &mut self,
        key_ids: &[i64],
        after_seq: i64,
        limit: usize,
    ) -> StoreResult<Vec<VersionRecord>> {
        self.inner.versions_sealed_with(key_ids, after_seq, limit)
    }
    fn unsealed_versions(
        &mut self,
        after_seq: i64,
        limit: usize,
    ) -> StoreResult<Vec<VersionRecord>> {
        self.inner.unsealed_versions(after_seq, limit)
    }
    fn reseal_version(&mut self, seq: i64, key_id: i64, body: &[u8]) -> StoreResult<()> {
        self.inner.reseal_version(seq, key_id, body)
    }
    fn inbound_message(&mut self, k: &str) -> StoreResult<Option<(String, String)>> {
        self.inner.inbound_message(k)
    }
    fn put_inbound_message(&mut self, k: &str, f: &str, r: i64, a: &str) -> StoreResult<()> {
        self.inner.put_inbound_message(k, f, r, a)
    }
    fn prune_inbound_messages(&mut self, b: i64, l: usize) -> StoreResult<usize> {
        self.inner.prune_inbound_messages(b, l)
    }
    fn meta_get(&mut self, k: &str) -> StoreResult<Option<String>> {
        self.inner.meta_get(k)
    }
    fn meta_set(&mut self, k: &str, v: &str) -> StoreResult<()> {
        self.inner.meta_set(k, v)
    }
    fn revoke(&mut self, k: &str, v: &str, at: i64, why: &str) -> StoreResult<()> {
        self.inner.revoke(k, v, at, why)
    }
    fn lift_revocation(&mut self, k: &str, v: &str) -> StoreResult<bool> {
        self.inner.lift_revocation(k, v)
    }
    fn revocation(&mut self, jti: Option<&str>, subject: &str) -> StoreResult<Option<String>> {
        self.inner.revocation(jti, subject)
    }
    fn referenced_through(
        &mut self,
        t: &str,
        id: &str,
        params: &[String],
        target: &str,
    ) -> StoreResult<Vec<String>> {
        self.inner.referenced_through(t, id, params, target)
    }
    fn open_break_glass(&mut self, grant: &hygie_store::NewBreakGlass<'_>) -> StoreResult<i64> {
        self.inner.open_break_glass(grant)
    }
    fn break_glass_patients(&mut self, subject: &str, now: i64) -> StoreResult<Vec<String>> {
        self.inner.break_glass_patients(subject, now)
    }
    fn break_glass_grants(
        &mut self,
        all: bool,
        limit: usize,
    ) -> StoreResult<Vec<hygie_store::BreakGlassGrant>> {
        self.inner.break_glass_grants(all, limit)
    }
    fn close_break_glass(&mut self, id: i64, by: &str, review: &str, at: i64) -> StoreResult<bool> {
        self.inner.close_break_glass(id, by, review, at)
    }
    fn append_audit(&mut self, recorded_us: i64, leaf: &[u8]) -> StoreResult<i64> {
        match self.seal_leaf_query(leaf)? {
            Some(sealed) => self.inner.append_audit(recorded_us, &sealed),
            None => self.inner.append_audit(recorded_us, leaf),
        }
    }
    fn append_audit_indexed(
        &mut self,
        recorded_us: i64,
        leaf: &[u8],
        leaf_hash: &[u8; 32],
        facets: &hygie_store::AuditFacets,
    ) -> StoreResult<i64> {
        match self.seal_leaf_query(leaf)? {
            // The leaf of the log is the sealed one: its hash is taken again.
            Some(sealed) => {
                let hash = hygie_audit::merkle::leaf_hash(&sealed);
                self.inner
                    .append_audit_indexed(recorded_us, &sealed, &hash, facets)
            }
            None => self
                .inner
                .append_audit_indexed(recorded_us, leaf, leaf_hash, facets),
        }
    }
    fn search_audit(
        &mut self,
        query: &hygie_store::AuditQuery,
    ) -> StoreResult<Vec<hygie_store::AuditHit>> {
        let mut hits = self.inner.search_audit(query)?;
        for hit in &mut hits {
            self.open_leaf_query(&mut hit.leaf);
        }
        Ok(hits)
    }
    fn audit_event(&mut self, number: i64) -> StoreResult<Option<hygie_store::AuditHit>> {
        let mut hit = self.inner.audit_event(number)?;
        if let Some(hit) = &mut hit {
            self.open_leaf_query(&mut hit.leaf);
        }
        Ok(hit)
    }
    fn prune_audit_leaves(
        &mut self,
        leaves: &[(i64, hygie_store::AuditFacets)],
    ) -> StoreResult<()> {
        self.inner.prune_audit_leaves(leaves)
    }
    fn audit_leaves(&mut self, f: i64, l: usize) -> StoreResult<Vec<(i64, Vec<u8>)>> {
        self.inner.audit_leaves(f, l)
    }
    fn integrate_audit_leaves(
        &mut self,
        n: i64,
        l: usize,
    ) -> StoreResult<Vec<(i64, hygie_store::LeafToIntegrate)>> {
        self.inner.integrate_audit_leaves(n, l)
    }
    fn audit_tree_leaves(&mut self, f: i64, l: usize) -> StoreResult<Vec<(i64, Option<Vec<u8>>)>> {
        self.inner.audit_tree_leaves(f, l)
    }
    fn audit_nodes(&mut self, ids: &[(u32, i64)]) -> StoreResult<Vec<Option<[u8; 32]>>> {
        self.inner.audit_nodes(ids)
    }
    fn audit_node_range(
        &mut self,
        level: u32,
        f: i64,
        t: i64,
    ) -> StoreResult<Vec<(i64, [u8; 32])>> {
        self.inner.audit_node_range(level, f, t)
    }
    fn put_audit_nodes(&mut self, nodes: &[(u32, i64, [u8; 32])]) -> StoreResult<()> {
        self.inner.put_audit_nodes(nodes)
    }
    fn put_audit_checkpoint(&mut self, c: &hygie_store::StoredCheckpoint) -> StoreResult<()> {
        self.inner.put_audit_checkpoint(c)
    }
    fn audit_checkpoints(
        &mut self,
        f: i64,
        l: usize,
    ) -> StoreResult<Vec<hygie_store::StoredCheckpoint>> {
        self.inner.audit_checkpoints(f, l)
    }
    fn latest_audit_checkpoint(&mut self) -> StoreResult<Option<hygie_store::StoredCheckpoint>> {
        self.inner.latest_audit_checkpoint()
    }
    fn put_audit_cosignature(&mut self, s: i64, w: &str, n: &str, at: i64) -> StoreResult<()> {
        self.inner.put_audit_cosignature(s, w, n, at)
    }
    fn pending_audit_leaves(&mut self, size: i64) -> StoreResult<i64> {
        self.inner.pending_audit_leaves(size)
    }
    fn lock(&mut self, key: &str) -> StoreResult<()> {
        self.inner.lock(key)
    }
    fn savepoint(&mut self) -> StoreResult<()> {
        self.inner.savepoint()
    }
    fn rollback_to_savepoint(&mut self) -> StoreResult<()> {
        self.inner.rollback_to_savepoint()
    }
    fn release_savepoint(&mut self) -> StoreResult<()> {
        self.inner.release_savepoint()
    }
}
