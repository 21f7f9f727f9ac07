//! What of a resource a response shows: `_summary` and `_elements`, for a search's matches
//! and for a read. Anything cut down is tagged SUBSETTED, as R4 requires (search.html#summary).
//!
//! Shaping happens after the mask, outside the unit of work: it only ever removes more.

use hygie_fhir::search::query::{self, QueryOptions, SearchRequest, Summary};
use hygie_fhir::{IssueType, schema};
use serde_json::Value as Json;

use crate::HubError;

/// How much of each resource to show.
pub(crate) struct Shape {
    /// `_elements`, as the JSON names they stand for: `value` (Observation.value[x]) is
    /// `valueQuantity`, `valueString`, …; a primitive's `_name` companion goes with `name`.
    elements: Option<Vec<String>>,
    summary: Option<Summary>,
}

impl Shape {
    /// The whole resource.
    pub(crate) fn full() -> Shape {
        Shape {
            elements: None,
            summary: None,
        }
    }

    /// What a search asked for.
    pub(crate) fn of(request: &SearchRequest) -> Shape {
        let resource_type = &request.resource_type;
        let elements = request
            .elements
            .iter()
            .flat_map(|name| {
                let choice = schema::element(&format!("{resource_type}.{name}[x]"))
                    .filter(|_| schema::element(&format!("{resource_type}.{name}")).is_none());
                match choice {
                    Some(element) => element.json_names().map(str::to_owned).collect(),
                    None => vec![name.clone()],
                }
            })
            .collect::<Vec<String>>();
        Shape {
            elements: (!elements.is_empty()).then_some(elements),
            summary: request.summary,
        }
    }

    /// What a read (`GET [type]/[id]?…`, also vread) asks for: `_summary` and `_elements`,
    /// checked as a search checks them (so `_elements` naming no element is ignored, or
    /// refused under strict handling). The read's other parameters are ignored, as they always
    /// were. `_summary=count` counts search matches: a read refuses it.
    pub(crate) fn for_read(
        resource_type: &str,
        query_string: &str,
        strict: bool,
    ) -> Result<Shape, HubError> {
        let pairs = query::parse_query_string(query_string)
            .map_err(|issue| HubError::with_issues(400, vec![issue]))?;
        let pairs: Vec<(String, String)> = pairs
            .into_iter()
            .filter(|(name, _)| name == "_summary" || name == "_elements")
            .collect();
        if pairs.is_empty() {
            return Ok(Shape::full());
        }
        let options = QueryOptions {
            strict,
            ..QueryOptions::default()
        };
        let request = query::parse(resource_type, &pairs, &options)
            .map_err(|issues| HubError::with_issues(400, issues))?;
        if request.summary == Some(Summary::Count) {
            return Err(HubError::new(
                400,
                IssueType::Invalid,
                "_summary=count counts the matches of a search; a read returns one resource: use true, text, data or false",
            )
            .located_in("_summary"));
        }
        Ok(Shape::of(&request))
    }

    /// Whether the resource is shown as stored.
    pub(crate) fn is_full(&self) -> bool {
        self.elements.is_none() && matches!(self.summary, None | Some(Summary::False))
    }

    /// The resource cut down to what was asked, marked SUBSETTED as the spec requires.
    /// `_elements` wins over `_summary` when both are given.
    pub(crate) fn apply(&self, mut resource: Json) -> Json {
        if !resource.is_object() {
            return resource;
        }
        if self.elements.is_none() && self.summary == Some(Summary::True) {
            hygie_fhir::summary::summarize(&mut resource);
        } else if let Some(object) = resource.as_object_mut() {
            object.retain(|key, _| self.keeps(key));
        }
        if let Some(object) = resource.as_object_mut() {
            let meta = object
                .entry("meta")
                .or_insert_with(|| Json::Object(Default::default()));
            if let Some(meta) = meta.as_object_mut() {
                let tags = meta.entry("tag").or_insert_with(|| Json::Array(Vec::new()));
                if let Some(tags) = tags.as_array_mut() {
                    tags.push(serde_json::json!({
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                        "code": "SUBSETTED",
                        "display": "subsetted"
                    }));
                }
            }
        }
        resource
    }

    /// Whether a top-level element stays under `_elements` or `_summary=text|data`.
    fn keeps(&self, key: &str) -> bool {
        if matches!(key, "resourceType" | "id" | "meta") {
            return true;
        }
        match (&self.elements, self.summary) {
            (Some(elements), _) => {
                let name = key.strip_prefix('_').unwrap_or(key);
                elements.iter().any(|e| e == name)
            }
            (None, Some(Summary::Text)) => key == "text",
            (None, Some(Summary::Data)) => key != "text",
            _ => true,
        }
    }

    /// [`Shape::apply`] on stored bytes; the bytes as they are when nothing is cut (or for a
    /// deletion, which has no body).
    pub(crate) fn apply_to_body(&self, body: Vec<u8>) -> Result<Vec<u8>, HubError> {
        if self.is_full() || body.is_empty() {
            return Ok(body);
        }
        let parsed: Json = serde_json::from_slice(&body)
            .map_err(|e| HubError::new(500, IssueType::Exception, format!("stored body: {e}")))?;
        serde_json::to_vec(&self.apply(parsed))
            .map_err(|e| HubError::new(500, IssueType::Exception, format!("shaped body: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn subsetted(resource: &Json) -> bool {
        resource["meta"]["tag"]
            .as_array()
            .is_some_and(|tags| tags.iter().any(|t| t["code"] == "SUBSETTED"))
    }

    #[test]
    fn read_shapes() {
        let patient = json!({
            "resourceType": "Patient", "id": "p", "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
            "name": [{"family": "Martin"}], "photo": [{"contentType": "image/png"}],
        });
        let full = Shape::for_read("Patient", "_format=json&_pretty=true&foo=bar", true).unwrap();
        assert!(full.is_full());
        assert!(
            Shape::for_read("Patient", "_summary=false", false)
                .unwrap()
                .is_full()
        );

        let summary = Shape::for_read("Patient", "_summary=true", true).unwrap();
        let out = summary.apply(patient.clone());
        assert_eq!(out["name"], patient["name"]);
        assert!(out.get("photo").is_none() && out.get("text").is_none());
        assert!(subsetted(&out));

        let elements = Shape::for_read("Patient", "_elements=photo", false).unwrap();
        let out = elements.apply(patient.clone());
        assert!(out.get("photo").is_some() && out.get("name").is_none());
        assert!(subsetted(&out));

        let text = Shape::for_read("Patient", "_summary=text", false).unwrap();
        assert!(text.apply(patient).get("name").is_none());
    }

    #[test]
    fn elements_name_choices_and_keep_primitive_companions() {
        let observation = json!({
            "resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "valueQuantity": {"value": 1}, "effectiveDateTime": "2024-01-01",
            "_effectiveDateTime": {"extension": [{"url": "http://example.org/e", "valueString": "x"}]},
        });
        let shape = Shape::for_read("Observation", "_elements=value,effective", false).unwrap();
        let out = shape.apply(observation.clone());
        let mut keys: Vec<&str> = out
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "_effectiveDateTime",
                "effectiveDateTime",
                "meta",
                "resourceType",
                "valueQuantity"
            ]
        );
        // A choice's type name is not the element: `valueQuantity` is not `_elements=value`.
        let plain = Shape::for_read("Observation", "_elements=status", false).unwrap();
        assert!(plain.apply(observation).get("valueQuantity").is_none());
    }

    #[test]
    fn read_refusals() {
        let count = Shape::for_read("Patient", "_summary=count", false)
            .err()
            .unwrap();
        assert_eq!(count.status, 400);
        assert_eq!(count.issues[0].expression.as_deref(), Some("_summary"));
        let bad = Shape::for_read("Patient", "_summary=maybe", false)
            .err()
            .unwrap();
        assert_eq!(bad.status, 400);
        // An unknown element: ignored when lenient, refused when strict.
        assert!(
            Shape::for_read("Patient", "_elements=nope", false)
                .unwrap()
                .is_full()
        );
        let strict = Shape::for_read("Patient", "_elements=nope", true)
            .err()
            .unwrap();
        assert_eq!(strict.status, 400);
        let malformed = Shape::for_read("Patient", "_summary=%zz", false)
            .err()
            .unwrap();
        assert_eq!(malformed.status, 400);
    }

    #[test]
    fn bodies() {
        let shape = Shape::for_read("Patient", "_summary=true", false).unwrap();
        assert_eq!(shape.apply_to_body(Vec::new()).unwrap(), b"");
        let body = br#"{"resourceType":"Patient","photo":[{"contentType":"image/png"}]}"#.to_vec();
        let out: Json =
            serde_json::from_slice(&shape.apply_to_body(body.clone()).unwrap()).unwrap();
        assert!(out.get("photo").is_none() && subsetted(&out));
        assert_eq!(Shape::full().apply_to_body(body.clone()).unwrap(), body);
    }
}
