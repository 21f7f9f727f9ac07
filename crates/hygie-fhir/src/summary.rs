//! `_summary=true`: a resource cut down to the elements the R4 definitions mark `isSummary`.
//!
//! What a summary keeps (R4 search.html#summary and the comment of
//! `ElementDefinition.isSummary`):
//!
//! - `resourceType`, `id` and `meta`;
//! - every element of the resource marked summary ([`Element::is_summary`]);
//! - inside a kept BackboneElement (`Patient.link`, `Observation.component`), only its summary
//!   children, recursively (its `modifierExtension` is one of them);
//! - a summary element of a complex datatype (`HumanName`, `CodeableConcept`, `Reference`, …)
//!   whole, as R4 says: "Other than Attachment.data, all data type properties are included
//!   in the summary form". So `Attachment.data` goes wherever it is (an attachment in an
//!   extension too): a summary never carries an embedded document;
//! - a resource-typed element (`Bundle.entry.resource`) whole; the `_name` companion of a
//!   primitive (its id and extensions) with its element.
//!
//! One departure: the resource's own `modifierExtension` stays. R4 leaves
//! `DomainResource.modifierExtension` unmarked, against its own rule that a modifier at the
//! root must be summary; a summary without it could say the opposite of the resource.
//!
//! Everything else goes, unknown properties included. A BackboneElement or datatype object
//! left empty is removed (and an array left empty), so that no `{}` appears. Recursion stops
//! at [`MAX_DEPTH`] nested objects: what is deeper is left out (the JSON depth check that runs
//! before any parser rejects such input anyway).
//!
//! A summary is a subset of the resource, and summarizing it again changes nothing. It is
//! valid R4 when the resource was, except for the resource types where R4 marks a required
//! element of the root non-summary: `Appointment.participant`, `AuditEvent.agent` and
//! `.source`, `Provenance.agent` (the generator of the schema checks that list). The caller
//! marks every summary `SUBSETTED`, which tells the client it is not the whole resource.
//!
//! ```
//! use serde_json::json;
//! let mut patient = json!({
//!     "resourceType": "Patient", "id": "p1",
//!     "name": [{"family": "Martin"}],
//!     "photo": [{"contentType": "image/png", "data": "iVBORw0K"}],
//!     "link": [{"other": {"reference": "Patient/p2"}, "type": "seealso", "id": "l1"}],
//! });
//! hygie_fhir::summary::summarize(&mut patient);
//! assert_eq!(patient, json!({
//!     "resourceType": "Patient", "id": "p1",
//!     "name": [{"family": "Martin"}],
//!     "link": [{"other": {"reference": "Patient/p2"}, "type": "seealso"}],
//! }));
//! ```
//!
//! [`Element::is_summary`]: crate::schema::Element::is_summary

use serde_json::{Map, Value};

use crate::schema::{self, Node, NodeKind, Schema, TypeKind};

/// Nested objects a summary descends into; deeper values are left out. The same bound as
/// validation's ([`crate::validate::MAX_DEPTH`]).
pub const MAX_DEPTH: usize = crate::validate::MAX_DEPTH;

/// Cuts `resource` down to its summary, in place (see the module documentation). A value that
/// is not an object is left as it is; an object whose `resourceType` is not a concrete R4
/// type keeps only `resourceType`, `id` and `meta`.
pub fn summarize(resource: &mut Value) {
    let Some(object) = resource.as_object_mut() else {
        return;
    };
    let s = schema::schema();
    let root = object
        .get("resourceType")
        .and_then(Value::as_str)
        .and_then(|t| s.resource_node(t));
    match root {
        Some(id) => keep_summary(s, s.node(id), object, 0, true),
        None => object.retain(|key, _| is_always_kept(key)),
    }
}

/// Kept at the root whatever the definitions say (`id` and `meta` are summary in R4 anyway).
fn is_always_kept(key: &str) -> bool {
    matches!(key, "resourceType" | "id" | "meta")
}

/// Keeps the summary children of a resource or of one of its BackboneElements.
fn keep_summary(
    s: &Schema,
    node: &Node,
    object: &mut Map<String, Value>,
    depth: usize,
    root: bool,
) {
    object.retain(|key, value| {
        if root && (is_always_kept(key) || key == "modifierExtension") {
            return true;
        }
        let Some((child, element)) = node.child(key) else {
            return false;
        };
        if !element.is_summary() {
            return false;
        }
        match element.types[usize::from(child.ty)].kind {
            TypeKind::Node(id) if !child.primitive_extension => {
                let inner = s.node(id);
                // An inline node of a resource is reached only from the resource: its
                // children are chosen by their flags. A datatype is kept whole.
                if inner.kind == NodeKind::Backbone {
                    each_object(value, depth, |object| {
                        keep_summary(s, inner, object, depth + 1, false);
                    })
                } else {
                    each_object(value, depth, |object| {
                        drop_attachment_data(s, inner, object, depth + 1);
                    })
                }
            }
            _ => true,
        }
    });
}

/// Walks a datatype value, removing `Attachment.data` (and its `_data`) wherever it is.
/// Everything else of the value stays, unknown properties included.
fn drop_attachment_data(s: &Schema, node: &Node, object: &mut Map<String, Value>, depth: usize) {
    if &*node.path == "Attachment" {
        object.remove("data");
        object.remove("_data");
    }
    object.retain(|key, value| match node.child(key) {
        Some((child, element)) if !child.primitive_extension => {
            match element.types[usize::from(child.ty)].kind {
                TypeKind::Node(id) => {
                    let inner = s.node(id);
                    each_object(value, depth, |object| {
                        drop_attachment_data(s, inner, object, depth + 1);
                    })
                }
                _ => true,
            }
        }
        _ => true,
    });
}

/// Applies `f` to `value` if it is an object, or to each object of `value` if it is an array;
/// says whether to keep `value`: not if an object was left empty (an array loses its emptied
/// objects, and goes if none remains), nor if it lies deeper than [`MAX_DEPTH`]. Other values
/// (a string where an object belongs) are kept untouched, as the definitions say nothing of them.
fn each_object(
    value: &mut Value,
    depth: usize,
    mut f: impl FnMut(&mut Map<String, Value>),
) -> bool {
    if depth >= MAX_DEPTH {
        return false;
    }
    match value {
        Value::Object(object) => {
            f(object);
            !object.is_empty()
        }
        Value::Array(items) => {
            items.retain_mut(|item| match item {
                Value::Object(object) => {
                    f(object);
                    !object.is_empty()
                }
                _ => true,
            });
            !items.is_empty()
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn summary(mut resource: Value) -> Value {
        summarize(&mut resource);
        resource
    }

    #[test]
    fn keeps_the_summary_elements_of_the_root() {
        let patient = json!({
            "resourceType": "Patient",
            "id": "p1",
            "meta": {"versionId": "2", "tag": [{"code": "x"}]},
            "implicitRules": "http://example.org/rules",
            "language": "fr",
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
            "contained": [{"resourceType": "Organization", "id": "o"}],
            "extension": [{"url": "http://example.org/e", "valueString": "x"}],
            "identifier": [{"system": "urn:oid:1.2.3", "value": "42"}],
            "active": true,
            "name": [{"family": "Martin", "given": ["Claire"], "extension": [{"url": "http://example.org/n", "valueString": "kept: part of the datatype"}]}],
            "gender": "female",
            "birthDate": "1970-01-01",
            "_birthDate": {"extension": [{"url": "http://example.org/t", "valueTime": "10:00:00"}]},
            "deceasedBoolean": false,
            "maritalStatus": {"text": "married"},
            "multipleBirthInteger": 2,
            "photo": [{"contentType": "image/png", "data": "iVBORw0K"}],
            "contact": [{"name": {"family": "Martin"}}],
            "communication": [{"language": {"text": "French"}}],
            "generalPractitioner": [{"reference": "Practitioner/d"}],
            "managingOrganization": {"reference": "Organization/o"},
            "unknownElement": 1,
        });
        assert_eq!(
            summary(patient.clone()),
            json!({
                "resourceType": "Patient",
                "id": "p1",
                "meta": patient["meta"],
                "implicitRules": "http://example.org/rules",
                "identifier": patient["identifier"],
                "active": true,
                "name": patient["name"],
                "gender": "female",
                "birthDate": "1970-01-01",
                "_birthDate": patient["_birthDate"],
                "deceasedBoolean": false,
                "managingOrganization": {"reference": "Organization/o"},
            })
        );
    }

    #[test]
    fn keeps_only_the_summary_children_of_backbone_elements() {
        let observation = json!({
            "resourceType": "Observation",
            "status": "final",
            "category": [{"text": "vital-signs"}],
            "code": {"text": "Blood pressure"},
            "valueString": "normal",
            "note": [{"text": "not summary"}],
            "referenceRange": [{"text": "not summary"}],
            "component": [
                {
                    "id": "c1",
                    "extension": [{"url": "http://example.org/e", "valueString": "x"}],
                    "modifierExtension": [{"url": "http://example.org/m", "valueBoolean": true}],
                    "code": {"text": "systolic"},
                    "valueQuantity": {"value": 120, "unit": "mm[Hg]"},
                    "interpretation": [{"text": "not summary"}],
                },
                {"code": {"text": "diastolic"}, "dataAbsentReason": {"text": "not summary"}},
            ],
        });
        assert_eq!(
            summary(observation),
            json!({
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "Blood pressure"},
                "valueString": "normal",
                "component": [
                    {
                        "modifierExtension": [{"url": "http://example.org/m", "valueBoolean": true}],
                        "code": {"text": "systolic"},
                        "valueQuantity": {"value": 120, "unit": "mm[Hg]"},
                    },
                    {"code": {"text": "diastolic"}},
                ],
            })
        );
    }

    #[test]
    fn keeps_the_root_modifier_extension() {
        let resource = json!({
            "resourceType": "Condition",
            "subject": {"reference": "Patient/p"},
            "modifierExtension": [{"url": "http://example.org/negated", "valueBoolean": true}],
            "extension": [{"url": "http://example.org/e", "valueString": "x"}],
        });
        let out = summary(resource.clone());
        assert_eq!(out["modifierExtension"], resource["modifierExtension"]);
        assert!(out.get("extension").is_none());
    }

    #[test]
    fn drops_attachment_data_wherever_it_is() {
        let reference = json!({
            "resourceType": "DocumentReference",
            "status": "current",
            "content": [{
                "attachment": {
                    "contentType": "text/plain",
                    "data": "aGVsbG8=",
                    "_data": {"id": "d"},
                    "title": "note",
                    "extension": [{
                        "url": "http://example.org/thumbnail",
                        "valueAttachment": {"contentType": "image/png", "data": "iVBORw0K"},
                    }],
                },
                "format": {"code": "urn:ihe:iti:xds:2017:mimeTypeSufficient"},
            }],
        });
        assert_eq!(
            summary(reference),
            json!({
                "resourceType": "DocumentReference",
                "status": "current",
                "content": [{
                    "attachment": {
                        "contentType": "text/plain",
                        "title": "note",
                        "extension": [{
                            "url": "http://example.org/thumbnail",
                            "valueAttachment": {"contentType": "image/png"},
                        }],
                    },
                    "format": {"code": "urn:ihe:iti:xds:2017:mimeTypeSufficient"},
                }],
            })
        );
    }

    #[test]
    fn follows_content_references_and_keeps_resources_whole() {
        // Bundle.entry.link is Bundle.link again (a contentReference): its children are
        // chosen by their flags too. Bundle.entry.resource is kept as it is.
        let bundle = json!({
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{
                "link": [{"id": "l", "relation": "self", "url": "http://example.org/p"}],
                "resource": {"resourceType": "Patient", "photo": [{"data": "aGVsbG8="}]},
            }],
        });
        let mut expected = bundle.clone();
        expected["entry"][0]["link"][0]
            .as_object_mut()
            .unwrap()
            .remove("id");
        assert_eq!(summary(bundle), expected);
        // Questionnaire.item is not summary: the nested items go with it.
        let questionnaire = json!({
            "resourceType": "Questionnaire",
            "status": "active",
            "item": [{"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "string"}]}],
        });
        assert_eq!(
            summary(questionnaire),
            json!({"resourceType": "Questionnaire", "status": "active"})
        );
    }

    #[test]
    fn removes_what_it_empties_and_leaves_odd_values_alone() {
        // Invalid input (a link without its required children): no `{}` comes out.
        let patient = json!({
            "resourceType": "Patient",
            "link": [{"id": "only-an-id"}, {"other": {"reference": "Patient/q"}, "type": "refer"}],
            "managingOrganization": "not an object",
        });
        assert_eq!(
            summary(patient),
            json!({
                "resourceType": "Patient",
                "link": [{"other": {"reference": "Patient/q"}, "type": "refer"}],
                "managingOrganization": "not an object",
            })
        );
        let emptied = json!({"resourceType": "Patient", "link": [{"id": "x"}]});
        assert_eq!(summary(emptied), json!({"resourceType": "Patient"}));
    }

    #[test]
    fn unknown_types_and_non_objects() {
        let unknown = json!({"resourceType": "Nope", "id": "1", "meta": {}, "name": "x"});
        assert_eq!(
            summary(unknown),
            json!({"resourceType": "Nope", "id": "1", "meta": {}})
        );
        assert_eq!(summary(json!([1, 2])), json!([1, 2]));
        assert_eq!(summary(json!({"name": [{"family": "x"}]})), json!({}));
    }

    #[test]
    fn stops_at_the_depth_bound() {
        // Extensions nest without bound: a deep chain in a kept datatype, which the walk
        // looking for Attachment.data descends into.
        let mut extension = json!({"url": "http://example.org/leaf", "valueString": "x"});
        for _ in 0..(MAX_DEPTH + 10) {
            extension = json!({"url": "http://example.org/e", "extension": [extension]});
        }
        let mut patient = json!({
            "resourceType": "Patient",
            "name": [{"family": "Martin", "extension": [extension]}],
        });
        summarize(&mut patient);
        // Cut somewhere below the bound; the shallow part stays.
        assert_eq!(patient["name"][0]["family"], "Martin");
        let mut depth = 0;
        let mut at = &patient["name"][0]["extension"][0];
        while let Some(next) = at.get("extension").and_then(|e| e.get(0)) {
            depth += 1;
            at = next;
        }
        assert!(depth > 100 && depth < MAX_DEPTH, "{depth}");
    }
}
