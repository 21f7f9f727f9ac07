//! The FHIR RESTful interactions on single resources, plus the minimal type search.
//!
//! Each public method prepares what it can outside the store (parsing, validation), then
//! hands one closure to [`Hub::perform`]. The `exec_*` functions are the in-transaction
//! halves, shared with batch and transaction Bundles.

use hygie_policy::{Action, Mask, Target};
use hygie_store::{IndexRow, NewVersion, StoreError, Tx, VersionRecord};
use serde_json::Value;

use crate::criteria::{self, Criteria};
use crate::instant::{http_date, now_us};
use crate::pipeline::{Access, Audited, OpResult};
use crate::resource::{
    check_body_type, check_id, check_resource_type, index_rows, localize_references, new_id,
    parse_version_tag, set_server_metadata, validate,
};
use crate::shape::Shape;
use crate::{Caller, Hub, HubError};

/// A stored version as the hub returns it. `body` is the resource's JSON, already carrying
/// its server metadata; empty for a deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub resource_type: String,
    pub id: String,
    pub version: i64,
    pub last_updated_us: i64,
    pub deleted: bool,
    pub body: Vec<u8>,
}

impl Stored {
    pub(crate) fn from_record(record: VersionRecord) -> Stored {
        Stored {
            resource_type: record.resource_type,
            id: record.id,
            version: record.version,
            last_updated_us: record.last_updated_us,
            deleted: record.deleted,
            body: record.body,
        }
    }

    /// `W/"<version>"`.
    pub fn etag(&self) -> String {
        format!("W/\"{}\"", self.version)
    }

    /// The `Last-Modified` HTTP date.
    pub fn last_modified(&self) -> String {
        http_date(self.last_updated_us)
    }

    /// `Type/id/_history/version`, relative to the base.
    pub fn versioned_reference(&self) -> String {
        format!(
            "{}/{}/_history/{}",
            self.resource_type, self.id, self.version
        )
    }
}

impl Audited for Stored {
    fn audit_entities(&self) -> Vec<String> {
        vec![self.versioned_reference()]
    }
}

/// The result of create, update and patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// 201 when a resource was created, 200 otherwise (updated, or a conditional create
    /// that found its match).
    pub status: u16,
    pub stored: Stored,
}

impl Audited for WriteOutcome {
    fn audit_entities(&self) -> Vec<String> {
        self.stored.audit_entities()
    }
}

/// The result of a delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteOutcome {
    pub resource_type: String,
    pub id: String,
    /// The version of the deletion tombstone (the earlier one if it was already deleted).
    pub version: i64,
}

impl Audited for DeleteOutcome {
    fn audit_entities(&self) -> Vec<String> {
        vec![format!(
            "{}/{}/_history/{}",
            self.resource_type, self.id, self.version
        )]
    }
}

/// `Prefer: return=…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReturnPreference {
    Minimal,
    #[default]
    Representation,
    OperationOutcome,
}

/// Applies the decision's mask to a body: removes the elements the caller's role may not
/// see and, when something was removed, marks the resource `REDACTED` in `meta.security`.
/// A body the mask does not touch is returned as stored, byte for byte.
pub(crate) fn mask_body(body: Vec<u8>, mask: &Mask) -> Result<Vec<u8>, StoreError> {
    if mask.remove_elements.is_empty() || body.is_empty() {
        return Ok(body);
    }
    let mut resource: Value = serde_json::from_slice(&body)
        .map_err(|e| StoreError::Database(format!("stored body is not JSON: {e}")))?;
    let Some(object) = resource.as_object_mut() else {
        return Ok(body);
    };
    let resource_type = object
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut removed = false;
    for element in masked_elements(mask, &resource_type) {
        removed |= object.remove(element).is_some();
    }
    if !removed {
        return Ok(body);
    }
    let meta = object
        .entry("meta")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Some(meta) = meta.as_object_mut() {
        let security = meta
            .entry("security")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Some(labels) = security.as_array_mut() {
            labels.push(serde_json::json!({
                "system": REDACTED_SYSTEM,
                "code": "REDACTED",
                "display": "redacted",
            }));
        }
    }
    serde_json::to_vec(&resource).map_err(|e| StoreError::Database(e.to_string()))
}

const REDACTED_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";

/// Removes the `REDACTED` marker from a resource sent back by a client: the hub sets it on
/// what it answers; it is not a label to store.
fn strip_redacted_tag(resource: &mut Value) {
    let Some(meta) = resource.get_mut("meta").and_then(Value::as_object_mut) else {
        return;
    };
    if let Some(security) = meta.get_mut("security").and_then(Value::as_array_mut) {
        security.retain(|coding| {
            !(coding.get("system").and_then(Value::as_str) == Some(REDACTED_SYSTEM)
                && coding.get("code").and_then(Value::as_str) == Some("REDACTED"))
        });
        if security.is_empty() {
            meta.remove("security");
        }
    }
}

/// The top-level elements of `resource_type` the mask removes.
pub(crate) fn masked_elements<'a>(
    mask: &'a Mask,
    resource_type: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    mask.remove_elements.iter().filter_map(move |path| {
        path.split_once('.')
            .filter(|(ty, _)| *ty == resource_type)
            .map(|(_, element)| element)
    })
}

fn hidden_element(resource_type: &str, element: &str) -> HubError {
    HubError::new(
        403,
        hygie_fhir::IssueType::Forbidden,
        format!(
            "{resource_type}.{element} is not visible to this token's role, so it may not set or change it"
        ),
    )
    .located_in(&format!("{resource_type}.{element}"))
}

/// A create or update under a mask: an element the caller cannot see may not be set or
/// changed (no mass assignment), and one it omitted keeps its stored value (it could not
/// have seen it to send it back).
pub(crate) fn guard_masked_write(
    tx: &mut dyn Tx,
    mask: &Mask,
    mut prepared: Prepared,
    id: Option<&str>,
) -> Result<Result<Prepared, HubError>, StoreError> {
    let elements: Vec<String> = masked_elements(mask, &prepared.resource_type)
        .map(str::to_owned)
        .collect();
    if elements.is_empty() {
        return Ok(Ok(prepared));
    }
    let stored: Option<Value> = match id {
        Some(id) => match tx.current(&prepared.resource_type, id)? {
            Some(record) if !record.deleted => Some(
                serde_json::from_slice(&record.body)
                    .map_err(|e| StoreError::Database(format!("stored body is not JSON: {e}")))?,
            ),
            _ => None,
        },
        None => None,
    };
    let resource_type = prepared.resource_type.clone();
    let Some(object) = prepared.resource.as_object_mut() else {
        return Ok(Ok(prepared));
    };
    let mut merged = false;
    for element in &elements {
        let kept = stored.as_ref().and_then(|s| s.get(element.as_str()));
        match (object.get(element.as_str()), kept) {
            (Some(sent), Some(kept)) if sent == kept => {}
            (Some(_), _) => return Ok(Err(hidden_element(&resource_type, element))),
            (None, Some(kept)) => {
                object.insert(element.clone(), kept.clone());
                merged = true;
            }
            (None, None) => {}
        }
    }
    if merged {
        // The index was computed from what was sent: recompute it from what is written.
        prepared.index = None;
    }
    Ok(Ok(prepared))
}

/// A patch under a mask: refused if it changed an element the caller cannot see.
fn guard_masked_patch(
    mask: &Mask,
    resource_type: &str,
    before: Option<&[u8]>,
    after: &[u8],
) -> Result<(), HubError> {
    let parse = |body: &[u8]| serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
    let before = before.map(parse).unwrap_or(Value::Null);
    let after = parse(after);
    for element in masked_elements(mask, resource_type) {
        if before.get(element) != after.get(element) {
            return Err(hidden_element(resource_type, element));
        }
    }
    Ok(())
}

/// A validated resource ready to be written.
pub(crate) struct Prepared {
    pub resource_type: String,
    pub resource: Value,
    /// The index rows, when computed before the transaction (off the store's writer).
    /// `None` when the resource may still change inside it (references a transaction
    /// Bundle rewrites): then they are computed at the write.
    pub index: Option<Vec<IndexRow>>,
}

impl Prepared {
    /// Checks type, validates, makes references under `base_url` (this server's base, as the
    /// caller reached it; empty when there is none) relative: everything that can be done
    /// before the transaction.
    pub(crate) fn new(
        resource_type: &str,
        mut resource: Value,
        base_url: &str,
    ) -> Result<Prepared, HubError> {
        check_resource_type(resource_type)?;
        check_body_type(&resource, resource_type)?;
        validate(&resource)?;
        localize_references(&mut resource, base_url);
        strip_redacted_tag(&mut resource);
        Ok(Prepared {
            resource_type: resource_type.to_owned(),
            resource,
            index: None,
        })
    }

    /// Computes the index rows now, on the caller's thread: the resource will not change
    /// before it is written (server metadata does not affect them).
    pub(crate) fn index_now(mut self) -> Prepared {
        self.index = Some(index_rows(&self.resource));
        self
    }
}

/// Writes `resource` as version `version` of `resource_type/id`.
pub(crate) fn write_version(
    tx: &mut dyn Tx,
    resource_type: &str,
    id: &str,
    version: i64,
    mut resource: Value,
    last_updated_us: i64,
    index: Option<Vec<IndexRow>>,
) -> Result<Stored, StoreError> {
    set_server_metadata(&mut resource, id, version, last_updated_us);
    let body = serde_json::to_vec(&resource).map_err(|e| StoreError::Database(e.to_string()))?;
    let tokens = index.unwrap_or_else(|| index_rows(&resource));
    tx.put_version(&NewVersion {
        resource_type,
        id,
        version,
        last_updated_us,
        deleted: false,
        body: &body,
        index: &tokens,
        key_id: None,
    })?;
    Ok(Stored {
        resource_type: resource_type.to_owned(),
        id: id.to_owned(),
        version,
        last_updated_us,
        deleted: false,
        body,
    })
}

/// Under a `patient/` scope, a resource outside the compartment of the token's patient is
/// refused whether it exists or not, so that the answer says nothing about it.
pub(crate) fn check_patient_compartment(
    tx: &mut dyn Tx,
    mask: &Mask,
    resource_type: &str,
    id: &str,
) -> Result<Result<(), HubError>, StoreError> {
    let Some(patient) = &mask.patient_compartment else {
        return Ok(Ok(()));
    };
    let inside = if resource_type == "Patient" {
        id == patient
    } else {
        let compartment = crate::search::compartment_filter(resource_type, "Patient", patient);
        crate::care::passes(tx, resource_type, id, vec![compartment])?
    };
    Ok(if inside {
        Ok(())
    } else {
        Err(HubError::new(
            403,
            hygie_fhir::IssueType::Forbidden,
            format!("{resource_type}/{id} is not in the compartment of the token's patient"),
        ))
    })
}

pub(crate) fn exec_read(
    tx: &mut dyn Tx,
    mask: &Mask,
    resource_type: &str,
    id: &str,
) -> OpResult<Stored> {
    if let Err(refusal) = check_patient_compartment(tx, mask, resource_type, id)? {
        return Ok(Err(refusal));
    }
    let Some(record) = tx.current(resource_type, id)? else {
        return Ok(Err(HubError::not_found(format!(
            "{resource_type}/{id} is not known"
        ))));
    };
    if record.deleted {
        return Ok(Err(HubError::gone(format!(
            "{resource_type}/{id} was deleted (version {}); its history is kept",
            record.version
        ))));
    }
    if let Err(refusal) = check_read(tx, mask, resource_type, id, &record.body)? {
        return Ok(Err(refusal));
    }
    let mut stored = Stored::from_record(record);
    stored.body = mask_body(stored.body, mask)?;
    Ok(Ok(stored))
}

/// What a read of a stored body must pass: its own labels (answered as unknown, without a
/// query: the body is at hand), the token's query constraints, need-to-know.
fn check_read(
    tx: &mut dyn Tx,
    mask: &Mask,
    resource_type: &str,
    id: &str,
    body: &[u8],
) -> Result<Result<(), HubError>, StoreError> {
    if crate::care::has_hidden_label(mask, body) {
        return Ok(Err(HubError::not_found(format!(
            "{resource_type}/{id} is not known"
        ))));
    }
    if let Err(refusal) = crate::care::check_constraints(tx, mask, resource_type, id)? {
        return Ok(Err(refusal));
    }
    crate::care::check_care(tx, mask, resource_type, id)
}

pub(crate) fn exec_vread(
    tx: &mut dyn Tx,
    mask: &Mask,
    resource_type: &str,
    id: &str,
    version: i64,
) -> OpResult<Stored> {
    if let Err(refusal) = check_patient_compartment(tx, mask, resource_type, id)? {
        return Ok(Err(refusal));
    }
    let Some(record) = tx.version(resource_type, id, version)? else {
        return Ok(Err(HubError::not_found(format!(
            "{resource_type}/{id} has no version {version}"
        ))));
    };
    if record.deleted {
        return Ok(Err(HubError::gone(format!(
            "version {version} of {resource_type}/{id} is its deletion"
        ))));
    }
    // The current version's labels too: a resource labelled since stays hidden whole.
    if let Err(refusal) = crate::care::check_visible(tx, mask, resource_type, id)? {
        return Ok(Err(refusal));
    }
    if let Err(refusal) = check_read(tx, mask, resource_type, id, &record.body)? {
        return Ok(Err(refusal));
    }
    let mut stored = Stored::from_record(record);
    stored.body = mask_body(stored.body, mask)?;
    Ok(Ok(stored))
}

/// Create, honouring `If-None-Exist`. `id` is the server-assigned id.
pub(crate) fn exec_create(
    tx: &mut dyn Tx,
    prepared: Prepared,
    id: &str,
    if_none_exist: Option<&Criteria>,
    now: i64,
) -> OpResult<WriteOutcome> {
    if let Some(criteria) = if_none_exist {
        criteria::lock_conditional(tx, &prepared.resource_type)?;
        let matches = criteria::matching_ids(tx, &prepared.resource_type, criteria, 2)?;
        match matches.as_slice() {
            [] => {}
            [existing] => {
                let record = tx
                    .current(&prepared.resource_type, existing)?
                    .ok_or_else(|| StoreError::Database("matched resource vanished".into()))?;
                return Ok(Ok(WriteOutcome {
                    status: 200,
                    stored: Stored::from_record(record),
                }));
            }
            _ => {
                return Ok(Err(HubError::precondition_failed(format!(
                    "If-None-Exist matches more than one {}: make the criteria more selective",
                    prepared.resource_type
                ))));
            }
        }
    }
    let stored = write_version(
        tx,
        &prepared.resource_type,
        id,
        1,
        prepared.resource,
        now,
        prepared.index,
    )?;
    Ok(Ok(WriteOutcome {
        status: 201,
        stored,
    }))
}

/// Update (or create with a client-assigned id), honouring `If-Match`.
pub(crate) fn exec_update(
    tx: &mut dyn Tx,
    prepared: Prepared,
    id: &str,
    if_match: Option<i64>,
    now: i64,
) -> OpResult<WriteOutcome> {
    let head = tx.head(&prepared.resource_type, id)?;
    if let Some(expected) = if_match {
        match head {
            Some(head) if head.version == expected && !head.deleted => {}
            Some(head) => {
                return Ok(Err(HubError::precondition_failed(format!(
                    "If-Match expects version {expected} of {}/{id}, but the current version is {}{}",
                    prepared.resource_type,
                    head.version,
                    if head.deleted { " (deleted)" } else { "" }
                ))));
            }
            None => {
                return Ok(Err(HubError::precondition_failed(format!(
                    "If-Match expects version {expected} of {}/{id}, which does not exist",
                    prepared.resource_type
                ))));
            }
        }
    }
    let (version, status) = match head {
        None => (1, 201),
        Some(head) if head.deleted => (head.version + 1, 201),
        Some(head) => (head.version + 1, 200),
    };
    let stored = write_version(
        tx,
        &prepared.resource_type,
        id,
        version,
        prepared.resource,
        now,
        prepared.index,
    )?;
    Ok(Ok(WriteOutcome { status, stored }))
}

pub(crate) fn exec_patch(
    tx: &mut dyn Tx,
    target: (&str, &str),
    patch: &json_patch::Patch,
    if_match: Option<i64>,
    base_url: &str,
    now: i64,
) -> OpResult<WriteOutcome> {
    let (resource_type, id) = target;
    let current = match exec_read(tx, &Mask::default(), resource_type, id)? {
        Ok(current) => current,
        Err(error) => return Ok(Err(error)),
    };
    if let Some(expected) = if_match
        && expected != current.version
    {
        return Ok(Err(HubError::precondition_failed(format!(
            "If-Match expects version {expected} of {resource_type}/{id}, but the current version is {}",
            current.version
        ))));
    }
    let mut resource: Value = serde_json::from_slice(&current.body)
        .map_err(|e| StoreError::Database(format!("stored body is not JSON: {e}")))?;
    if let Err(error) = json_patch::patch(&mut resource, patch) {
        return Ok(Err(HubError::new(
            422,
            hygie_fhir::IssueType::Processing,
            format!("the JSON Patch could not be applied: {error}"),
        )));
    }
    if resource.get("resourceType").and_then(Value::as_str) != Some(resource_type)
        || resource.get("id").and_then(Value::as_str) != Some(id)
    {
        return Ok(Err(HubError::new(
            422,
            hygie_fhir::IssueType::Processing,
            "a patch may not change a resource's resourceType or id",
        )));
    }
    if let Err(error) = validate(&resource) {
        return Ok(Err(error));
    }
    localize_references(&mut resource, base_url);
    let stored = write_version(
        tx,
        resource_type,
        id,
        current.version + 1,
        resource,
        now,
        None,
    )?;
    Ok(Ok(WriteOutcome {
        status: 200,
        stored,
    }))
}

pub(crate) fn exec_delete(
    tx: &mut dyn Tx,
    resource_type: &str,
    id: &str,
    now: i64,
) -> OpResult<DeleteOutcome> {
    let Some(head) = tx.head(resource_type, id)? else {
        return Ok(Err(HubError::not_found(format!(
            "{resource_type}/{id} is not known"
        ))));
    };
    if head.deleted {
        return Ok(Ok(DeleteOutcome {
            resource_type: resource_type.to_owned(),
            id: id.to_owned(),
            version: head.version,
        }));
    }
    let version = head.version + 1;
    tx.put_version(&NewVersion {
        resource_type,
        id,
        version,
        last_updated_us: now,
        deleted: true,
        body: &[],
        index: &[],
        key_id: None,
    })?;
    Ok(Ok(DeleteOutcome {
        resource_type: resource_type.to_owned(),
        id: id.to_owned(),
        version,
    }))
}

fn parse_version_id(version: &str) -> Result<i64, HubError> {
    version
        .parse::<i64>()
        .ok()
        .filter(|v| *v >= 1)
        .ok_or_else(|| {
            HubError::not_found(format!(
                "version {version:?} does not exist: versions are 1, 2, 3, …"
            ))
        })
}

impl Hub {
    pub async fn read(
        &self,
        caller: &Caller,
        resource_type: &str,
        id: &str,
    ) -> Result<Stored, HubError> {
        check_resource_type(resource_type)?;
        check_id(id)?;
        let (ty, id_owned) = (resource_type.to_owned(), id.to_owned());
        self.perform(
            Access {
                caller,
                action: Action::Read,
                target: Target::instance(resource_type, id),
                query: None,
                patient_hint: None,
            },
            move |tx, mask| exec_read(tx, mask, &ty, &id_owned),
        )
        .await
    }

    pub async fn vread(
        &self,
        caller: &Caller,
        resource_type: &str,
        id: &str,
        version: &str,
    ) -> Result<Stored, HubError> {
        check_resource_type(resource_type)?;
        check_id(id)?;
        let version = parse_version_id(version)?;
        let (ty, id_owned) = (resource_type.to_owned(), id.to_owned());
        self.perform(
            Access {
                caller,
                action: Action::VRead,
                target: Target::instance(resource_type, id),
                query: None,
                patient_hint: None,
            },
            move |tx, mask| exec_vread(tx, mask, &ty, &id_owned, version),
        )
        .await
    }

    /// [`Hub::read`] with the query of `GET [type]/[id]?…`: `_summary` and `_elements` cut
    /// the resource down as they do a search's matches (marked SUBSETTED); `_summary=count`
    /// is refused, other parameters are ignored. A bad `_summary`/`_elements` is refused
    /// before anything is read.
    pub async fn read_with_query(
        &self,
        caller: &Caller,
        resource_type: &str,
        id: &str,
        query: &str,
        strict: bool,
    ) -> Result<Stored, HubError> {
        check_resource_type(resource_type)?;
        let shape = Shape::for_read(resource_type, query, strict)?;
        let mut stored = self.read(caller, resource_type, id).await?;
        stored.body = shape.apply_to_body(stored.body)?;
        Ok(stored)
    }

    /// [`Hub::vread`] with the query, shaped as [`Hub::read_with_query`] does.
    pub async fn vread_with_query(
        &self,
        caller: &Caller,
        resource_type: &str,
        id: &str,
        version: &str,
        query: &str,
        strict: bool,
    ) -> Result<Stored, HubError> {
        check_resource_type(resource_type)?;
        let shape = Shape::for_read(resource_type, query, strict)?;
        let mut stored = self.vread(caller, resource_type, id, version).await?;
        stored.body = shape.apply_to_body(stored.body)?;
        Ok(stored)
    }

    /// `POST /Type`, with optional `If-None-Exist` criteria. The server assigns the id.
    pub async fn create(
        &self,
        caller: &Caller,
        resource_type: &str,
        resource: Value,
        if_none_exist: Option<&str>,
    ) -> Result<WriteOutcome, HubError> {
        let prepared = Prepared::new(resource_type, resource, &caller.base_url)?.index_now();
        let criteria = if_none_exist
            .map(|query| criteria::parse_conditional(resource_type, query))
            .transpose()?;
        let id = new_id();
        let now = now_us();
        self.perform(
            Access {
                caller,
                action: Action::Create,
                target: Target::resource_type(resource_type),
                query: if_none_exist.map(str::to_owned),
                patient_hint: None,
            },
            move |tx, mask| match guard_masked_write(tx, mask, prepared, None)? {
                Ok(prepared) => exec_create(tx, prepared, &id, criteria.as_ref(), now),
                Err(refusal) => Ok(Err(refusal)),
            },
        )
        .await
    }

    /// `PUT /Type/id`: update, or create with a client-assigned id.
    pub async fn update(
        &self,
        caller: &Caller,
        resource_type: &str,
        id: &str,
        resource: Value,
        if_match: Option<&str>,
    ) -> Result<WriteOutcome, HubError> {
        check_resource_type(resource_type)?;
        check_id(id)?;
        match resource.get("id").and_then(Value::as_str) {
            Some(body_id) if body_id == id => {}
            Some(body_id) => {
                return Err(HubError::bad_request(format!(
                    "the body's id {body_id:?} differs from the URL's id {id:?}"
                )));
            }
            None => {
                return Err(HubError::bad_request(
                    "an update must carry the resource's id in the body, equal to the URL's id",
                ));
            }
        }
        let prepared = Prepared::new(resource_type, resource, &caller.base_url)?.index_now();
        let if_match = if_match.map(parse_version_tag).transpose()?;
        let id_owned = id.to_owned();
        let now = now_us();
        self.perform(
            Access {
                caller,
                action: Action::Update,
                target: Target::instance(resource_type, id),
                query: None,
                patient_hint: None,
            },
            move |tx, mask| match guard_masked_write(tx, mask, prepared, Some(&id_owned))? {
                Ok(prepared) => exec_update(tx, prepared, &id_owned, if_match, now),
                Err(refusal) => Ok(Err(refusal)),
            },
        )
        .await
    }

    /// `PUT /Type?criteria`: update the one match, or create when none matches.
    pub async fn conditional_update(
        &self,
        caller: &Caller,
        resource_type: &str,
        criteria_query: &str,
        resource: Value,
        if_match: Option<&str>,
    ) -> Result<WriteOutcome, HubError> {
        let criteria = criteria::parse_conditional(resource_type, criteria_query)?;
        let body_id = resource
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if let Some(body_id) = &body_id {
            check_id(body_id)?;
        }
        let prepared = Prepared::new(resource_type, resource, &caller.base_url)?.index_now();
        let if_match = if_match.map(parse_version_tag).transpose()?;
        let now = now_us();
        let new_id = body_id.clone().unwrap_or_else(new_id);
        let ty = resource_type.to_owned();
        self.perform(
            Access {
                caller,
                action: Action::Update,
                target: Target::resource_type(resource_type),
                query: Some(criteria_query.to_owned()),
                patient_hint: None,
            },
            move |tx, mask| {
                criteria::lock_conditional(tx, &ty)?;
                let matches = criteria::matching_ids(tx, &ty, &criteria, 2)?;
                let id = match matches.as_slice() {
                    [] => new_id,
                    [existing] => {
                        if body_id.as_deref().is_some_and(|b| b != existing) {
                            return Ok(Err(HubError::bad_request(format!(
                                "the criteria match {ty}/{existing} but the body's id is {:?}",
                                body_id.unwrap_or_default()
                            ))));
                        }
                        existing.clone()
                    }
                    _ => {
                        return Ok(Err(HubError::precondition_failed(format!(
                            "the criteria match more than one {ty}: make them more selective"
                        ))));
                    }
                };
                match guard_masked_write(tx, mask, prepared, Some(&id))? {
                    Ok(prepared) => exec_update(tx, prepared, &id, if_match, now),
                    Err(refusal) => Ok(Err(refusal)),
                }
            },
        )
        .await
    }

    /// `PATCH /Type/id` with a JSON Patch document (RFC 6902).
    pub async fn patch(
        &self,
        caller: &Caller,
        resource_type: &str,
        id: &str,
        patch: Value,
        if_match: Option<&str>,
    ) -> Result<WriteOutcome, HubError> {
        check_resource_type(resource_type)?;
        check_id(id)?;
        let patch: json_patch::Patch = serde_json::from_value(patch).map_err(|e| {
            HubError::bad_request(format!(
                "the body is not a JSON Patch document (RFC 6902): {e}"
            ))
        })?;
        let if_match = if_match.map(parse_version_tag).transpose()?;
        let (ty, id_owned) = (resource_type.to_owned(), id.to_owned());
        let base_url = caller.base_url.clone();
        let now = now_us();
        self.perform(
            Access {
                caller,
                action: Action::Patch,
                target: Target::instance(resource_type, id),
                query: None,
                patient_hint: None,
            },
            move |tx, mask| {
                let guarded = masked_elements(mask, &ty).next().is_some();
                let before = if guarded {
                    tx.current(&ty, &id_owned)?.map(|record| record.body)
                } else {
                    None
                };
                let outcome = exec_patch(tx, (&ty, &id_owned), &patch, if_match, &base_url, now)?;
                if guarded
                    && let Ok(written) = &outcome
                    && let Err(refusal) =
                        guard_masked_patch(mask, &ty, before.as_deref(), &written.stored.body)
                {
                    return Ok(Err(refusal));
                }
                Ok(outcome)
            },
        )
        .await
    }

    pub async fn delete(
        &self,
        caller: &Caller,
        resource_type: &str,
        id: &str,
    ) -> Result<DeleteOutcome, HubError> {
        check_resource_type(resource_type)?;
        check_id(id)?;
        let (ty, id_owned) = (resource_type.to_owned(), id.to_owned());
        let now = now_us();
        self.perform(
            Access {
                caller,
                action: Action::Delete,
                target: Target::instance(resource_type, id),
                query: None,
                patient_hint: None,
            },
            move |tx, _mask| exec_delete(tx, &ty, &id_owned, now),
        )
        .await
    }
}
