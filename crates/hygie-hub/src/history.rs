//! History (instance, type, system), the first type searches, and the Bundles they return.
//!
//! Bundles embed the stored bodies as raw JSON: a page of 50 resources is never parsed
//! into trees and written out again.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hygie_fhir::IssueType;
use hygie_policy::{Action, Target};
use hygie_store::{HistoryQuery, HistoryScope, VersionRecord};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::criteria;
use crate::instant::{format_instant, parse_fhir_instant_us};
use crate::interactions::mask_body;
use crate::pipeline::{Access, Audited};
use crate::resource::{check_id, check_resource_type};
use crate::{Caller, Hub, HubError};

/// A history request: system (`/_history`), type (`/Patient/_history`) or instance.
#[derive(Debug, Clone, Default)]
pub struct HistoryRequest {
    pub resource_type: Option<String>,
    pub id: Option<String>,
    /// The raw query string (`_count`, `_since`, `_page`).
    pub query: String,
}

#[derive(Serialize)]
pub(crate) struct BundleOut {
    #[serde(rename = "resourceType")]
    pub resource_type: &'static str,
    pub id: String,
    pub meta: MetaOut,
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub link: Vec<LinkOut>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub entry: Vec<EntryOut>,
}

#[derive(Serialize)]
pub(crate) struct MetaOut {
    #[serde(rename = "lastUpdated")]
    pub last_updated: String,
}

#[derive(Serialize)]
pub(crate) struct LinkOut {
    pub relation: &'static str,
    pub url: String,
}

#[derive(Serialize, Default)]
pub(crate) struct EntryOut {
    #[serde(rename = "fullUrl", skip_serializing_if = "Option::is_none")]
    pub full_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<ResponseOut>,
}

#[derive(Serialize)]
pub(crate) struct SearchOut {
    pub mode: &'static str,
}

#[derive(Serialize)]
pub(crate) struct RequestOut {
    pub method: &'static str,
    pub url: String,
}

#[derive(Serialize, Default)]
pub(crate) struct ResponseOut {
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(rename = "lastModified", skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Box<RawValue>>,
}

impl BundleOut {
    pub fn new(kind: &'static str) -> BundleOut {
        BundleOut {
            resource_type: "Bundle",
            id: crate::resource::new_id(),
            meta: MetaOut {
                last_updated: format_instant(crate::instant::now_us()),
            },
            kind,
            total: None,
            link: Vec::new(),
            entry: Vec::new(),
        }
    }

    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a Bundle of valid JSON always serializes")
    }
}

/// Stored JSON bytes as an embeddable raw value.
pub(crate) fn raw(body: Vec<u8>) -> Result<Box<RawValue>, hygie_store::StoreError> {
    let text = String::from_utf8(body)
        .map_err(|e| hygie_store::StoreError::Database(format!("stored body is not UTF-8: {e}")))?;
    RawValue::from_string(text)
        .map_err(|e| hygie_store::StoreError::Database(format!("stored body is not JSON: {e}")))
}

pub(crate) fn raw_value(value: &serde_json::Value) -> Box<RawValue> {
    RawValue::from_string(value.to_string()).expect("a serialized Value is valid JSON")
}

/// An opaque paging cursor. (Signing it, so that a client cannot forge one, comes with
/// the search engine.)
fn encode_cursor(parts: &[i64]) -> String {
    let text = parts
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(".");
    URL_SAFE_NO_PAD.encode(text)
}

fn decode_cursor(cursor: &str, expected_parts: usize) -> Result<Vec<i64>, HubError> {
    let invalid =
        || HubError::bad_request("invalid _page cursor: use the links the server returned");
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let parts = text
        .split('.')
        .map(|p| p.parse::<i64>().map_err(|_| invalid()))
        .collect::<Result<Vec<_>, _>>()?;
    if parts.len() != expected_parts {
        return Err(invalid());
    }
    Ok(parts)
}

fn parse_count(value: &str, max: usize) -> Result<usize, HubError> {
    match value.parse::<usize>() {
        Ok(count) if (1..=max).contains(&count) => Ok(count),
        _ => Err(HubError::new(
            400,
            IssueType::Invalid,
            format!("_count={value:?} is out of bounds: give a whole number from 1 to {max}"),
        )
        .located_in("_count")),
    }
}

/// Parameters the HTTP layer already handled.
fn is_transport_parameter(name: &str) -> bool {
    matches!(name, "_format" | "_pretty")
}

/// One page of history: what the client receives (and so what is audited), the newest
/// sequence number the paging is pinned to, and whether older versions remain.
struct Page {
    records: Vec<VersionRecord>,
    max_seq: i64,
    has_next: bool,
}

impl Audited for Page {
    fn audit_entities(&self) -> Vec<String> {
        self.records
            .iter()
            .map(|r| format!("{}/{}/_history/{}", r.resource_type, r.id, r.version))
            .collect()
    }
}

impl Hub {
    /// `GET [base]/_history`, `[base]/Type/_history`, `[base]/Type/id/_history`.
    pub async fn history(
        &self,
        caller: &Caller,
        request: HistoryRequest,
    ) -> Result<Vec<u8>, HubError> {
        let scope = match (&request.resource_type, &request.id) {
            (None, _) => HistoryScope::System,
            (Some(resource_type), None) => {
                check_resource_type(resource_type)?;
                HistoryScope::Type(resource_type.clone())
            }
            (Some(resource_type), Some(id)) => {
                check_resource_type(resource_type)?;
                check_id(id)?;
                HistoryScope::Instance {
                    resource_type: resource_type.clone(),
                    id: id.clone(),
                }
            }
        };
        let mut count = self.config().default_page_size;
        let mut since_us = None;
        let mut cursor = None;
        let mut kept = Vec::new();
        for (name, value) in criteria::parse_query(&request.query) {
            match name.as_str() {
                "_count" => count = parse_count(&value, self.config().max_page_size)?,
                "_since" => {
                    since_us = Some(parse_fhir_instant_us(&value).ok_or_else(|| {
                        HubError::bad_request(format!(
                            "_since={value:?} is not an instant: use e.g. 2026-01-31T08:00:00Z"
                        ))
                    })?)
                }
                "_page" => cursor = Some(decode_cursor(&value, 2)?),
                name if is_transport_parameter(name) => continue,
                other => {
                    return Err(HubError::new(
                        400,
                        IssueType::NotSupported,
                        format!(
                            "history does not support the parameter {other:?}; it supports _count, _since"
                        ),
                    ));
                }
            }
            if name != "_page" {
                kept.push((name, value));
            }
        }
        let (before_seq, max_seq) = match cursor {
            Some(parts) => (Some(parts[0]), Some(parts[1])),
            None => (None, None),
        };
        let target = Target {
            resource_type: request.resource_type.clone(),
            id: request.id.clone(),
        };
        let page_scope = scope.clone();
        let (history_type, history_id) = (request.resource_type.clone(), request.id.clone());
        let page = self
            .perform_read(
                Access {
                    caller,
                    action: Action::History,
                    target,
                    query: (!request.query.is_empty()).then(|| request.query.clone()),
                    patient_hint: None,
                },
                move |tx, mask| {
                    // Need-to-know: one resource's history if its patient is in care;
                    // never a history that mixes patients.
                    match (&history_type, &history_id) {
                        (Some(resource_type), Some(id)) => {
                            if let Err(refusal) = crate::interactions::check_patient_compartment(
                                tx,
                                mask,
                                resource_type,
                                id,
                            )? {
                                return Ok(Err(refusal));
                            }
                            if let Err(refusal) =
                                crate::care::check_visible(tx, mask, resource_type, id)?
                            {
                                return Ok(Err(refusal));
                            }
                        }
                        (resource_type, _) => {
                            if let Err(refusal) =
                                crate::care::refuse_wide_history(mask, resource_type.as_deref())
                            {
                                return Ok(Err(refusal));
                            }
                        }
                    }
                    let max_seq = match max_seq {
                        Some(max) => max,
                        None => tx.max_seq()?,
                    };
                    let mut records = tx.history(&HistoryQuery {
                        scope: page_scope,
                        since_us,
                        before_seq,
                        max_seq: Some(max_seq),
                        limit: count + 1,
                    })?;
                    // One record more than the page tells whether a next page exists; the
                    // cursor carries max_seq so that later pages ignore newer writes.
                    let has_next = records.len() > count;
                    records.truncate(count);
                    // Versions carrying a label the caller may not see are left out (a page
                    // may then be short; the paging still walks every version).
                    records.retain(|record| !crate::care::has_hidden_label(mask, &record.body));
                    for record in &mut records {
                        record.body = mask_body(std::mem::take(&mut record.body), mask)?;
                    }
                    Ok(Ok(Page {
                        records,
                        max_seq,
                        has_next,
                    }))
                },
            )
            .await?;
        let Page {
            records,
            max_seq,
            has_next,
        } = page;
        let path = match (&request.resource_type, &request.id) {
            (None, _) => "_history".to_owned(),
            (Some(t), None) => format!("{t}/_history"),
            (Some(t), Some(i)) => format!("{t}/{i}/_history"),
        };
        let base = &caller.base_url;
        let query_string = encode_query(&kept);
        let mut bundle = BundleOut::new("history");
        bundle.link.push(LinkOut {
            relation: "self",
            url: join_url(base, &path, &query_string),
        });
        if has_next && let Some(last) = records.last() {
            let mut next = kept.clone();
            next.push(("_page".to_owned(), encode_cursor(&[last.seq, max_seq])));
            bundle.link.push(LinkOut {
                relation: "next",
                url: join_url(base, &path, &encode_query(&next)),
            });
        }
        for record in records {
            bundle
                .entry
                .push(history_entry(base, record).map_err(HubError::from_store)?);
        }
        Ok(bundle.to_vec())
    }
}

fn history_entry(base: &str, record: VersionRecord) -> Result<EntryOut, hygie_store::StoreError> {
    let full_url = format!("{base}/{}/{}", record.resource_type, record.id);
    let (method, url, status) = if record.deleted {
        (
            "DELETE",
            format!("{}/{}", record.resource_type, record.id),
            "204 No Content",
        )
    } else if record.version == 1 {
        ("POST", record.resource_type.clone(), "201 Created")
    } else {
        (
            "PUT",
            format!("{}/{}", record.resource_type, record.id),
            "200 OK",
        )
    };
    Ok(EntryOut {
        full_url: Some(full_url),
        resource: if record.deleted {
            None
        } else {
            Some(raw(record.body)?)
        },
        request: Some(RequestOut { method, url }),
        response: Some(ResponseOut {
            status: status.to_owned(),
            etag: Some(format!("W/\"{}\"", record.version)),
            // `Bundle.entry.response.lastModified` is a FHIR instant, not an HTTP date.
            last_modified: Some(format_instant(record.last_updated_us)),
            ..ResponseOut::default()
        }),
        ..EntryOut::default()
    })
}

fn encode_query(pairs: &[(String, String)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        serializer.append_pair(name, value);
    }
    serializer.finish()
}

fn join_url(base: &str, path: &str, query: &str) -> String {
    if query.is_empty() {
        format!("{base}/{path}")
    } else {
        format!("{base}/{path}?{query}")
    }
}
