//! What a stored resource is found by: one [`IndexEntry`] per value per supported search
//! parameter of its type.
//!
//! [`extract`] evaluates each supported parameter's expression (see
//! [`params`](super::params)) and reads every selected node by its FHIR type:
//!
//! | kind | node type | entries |
//! | --- | --- | --- |
//! | token | `Coding` | `Token(system, code)`, `TokenText(display)` |
//! | token | `CodeableConcept` | each coding as above, `TokenText(text)` |
//! | token | `Identifier` | `Token(system, value)`, `IdentifierOfType` per `type.coding`, `TokenText(type.text)` |
//! | token | `ContactPoint` | `Token(None, value)` |
//! | token | `code`, `id`, `string`, `uri`, …, `boolean` | `Token(None, value)`; booleans as `true`/`false` |
//! | string | `string`, `markdown`, `code`, … | `String` |
//! | string | `HumanName` | `String` for family, each given, prefix, suffix, text |
//! | string | `Address` | `String` for each line, city, district, state, postalCode, country, text |
//! | date | `date`, `dateTime`, `instant` | `Date`, the range of its precision (see [`date`](super::date)) |
//! | date | `Period` | `Date` from the start's low to the end's high; open ends are `i64::MIN` / `i64::MAX` |
//! | date | `Timing` | `Date` per `event`, and for `repeat.boundsPeriod` |
//! | number | `decimal`, `integer`, … | `Number` with the range of its significant figures |
//! | quantity | `Quantity`, `Age`, `Duration`, `Distance`, `Count`, `SimpleQuantity` | `Quantity` (value, its precision range, system, code, unit) |
//! | quantity | `Money` | `Quantity` with `code` = currency, `system` = `urn:iso:std:iso:4217` |
//! | quantity | `Range` | `Quantity` from `low` to `high` (open ends `f64::MIN` / `f64::MAX`), value the midpoint or the bound given |
//! | reference | `Reference` | `Reference` from `reference` (see below); `Token(system, value)` from `identifier`, for `:identifier` |
//! | reference | `canonical`, `uri`, `url` | `Reference` (version after `|` removed from the URL) and `Uri` (as written) |
//! | uri | `uri`, `url`, `canonical`, `oid`, `uuid` | `Uri` |
//!
//! References: `Patient/123` (or `…/_history/2`) is (`Patient`, `123`, `Patient/123`); an
//! absolute URL (`http://x/fhir/Patient/123`, a canonical), a `urn:uuid:…` or `urn:oid:…` and
//! other forms are the URL only, with no target: they name no resource of this server (the
//! hub stores a URL under its own base as a relative reference); `#contained` is skipped (a
//! contained resource is not searchable on its own).
//!
//! Other node types are ignored (`SampledData` for `value-quantity`, a `Reference` reached by a
//! token expression, …), as are empty strings and values that do not parse (a malformed date
//! never makes extraction fail: validation reports it, search just does not find it).
//!
//! Composite parameters: each node the composite's expression selects (one
//! `Observation.component` for `component-code-value-quantity`, the Observation itself for
//! `code-value-quantity`) whose every component has a value emits, for each component `i`,
//! one entry per value with `param = "{code}#{i}"`, all with the same `group` (> 0, unique in
//! the resource). A search `a$b` then matches when one group has an `#0` entry matching `a`
//! and an `#1` entry matching `b`. Components carry only the matchable values (no `TokenText`
//! or `IdentifierOfType`: composites take no modifiers). Plain entries have group 0.
//!
//! `_id` and `_lastUpdated` are not extracted: the store has them as columns.
//!
//! The size of the result is proportional to the resource (each JSON value is read at most
//! once per parameter that selects it); the request size limit bounds both.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};

use serde_json::{Map, Value};

use super::date::{self, ZoneRule};
use super::fhirpath::{self, Typed, split_local_reference};
use super::number::{self, Decimal};
use super::params::{ParamType, SearchParam, search_params};
use super::text::normalize;

/// One value a resource can be found by.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    /// The parameter code; `{code}#{i}` for component `i` of a composite.
    pub param: String,
    /// 0 for plain parameters; for composites, the instance the component values belong to.
    pub group: u32,
    pub value: IndexValue,
}

/// An indexed value; see the [module documentation](self) for what each FHIR type yields.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue {
    /// Coding, CodeableConcept.coding[], Identifier (system, value), ContactPoint (value; no
    /// system), code/boolean/id/string/uri primitives (no system; booleans `true`/`false`).
    Token {
        system: Option<String>,
        code: String,
    },
    /// Normalized CodeableConcept.text, Coding.display, Identifier.type.text: for `:text`.
    TokenText(String),
    /// One per Identifier.type.coding, for `:of-type`.
    IdentifierOfType {
        type_system: Option<String>,
        type_code: String,
        value: String,
    },
    /// `normalized` per [`normalize`](super::text::normalize); `exact` as written.
    String {
        normalized: String,
        exact: String,
    },
    /// Inclusive bounds in microseconds since the Unix epoch, UTC.
    Date {
        low_us: i64,
        high_us: i64,
    },
    /// `low`/`high` from the significant figures (100 → [99.5, 100.5]).
    Number {
        value: f64,
        low: f64,
        high: f64,
    },
    Quantity {
        value: f64,
        low: f64,
        high: f64,
        system: Option<String>,
        code: Option<String>,
        unit: Option<String>,
    },
    Reference {
        target_type: Option<String>,
        target_id: Option<String>,
        url: String,
    },
    Uri(String),
}

/// Every index entry of `resource`: each supported parameter of its type except `_id` and
/// `_lastUpdated`, by parameter code, then in document order; no duplicates. Empty for a
/// value that is not a resource of a known type. Never fails and never panics, whatever the
/// JSON (validation is a separate step).
pub fn extract(resource: &Value) -> Vec<IndexEntry> {
    let Some(resource_type) = resource.get("resourceType").and_then(Value::as_str) else {
        return Vec::new();
    };
    let Some(root) = fhirpath::root(resource) else {
        return Vec::new();
    };
    let context = [root];
    let mut out = Vec::new();
    let mut group = 0u32;
    for param in search_params(resource_type) {
        if !param.supported || param.code == "_id" || param.code == "_lastUpdated" {
            continue;
        }
        let Some(plan) = &param.plan else {
            continue;
        };
        let nodes = plan.evaluate_on(resource, &context);
        if param.kind == ParamType::Composite {
            for node in nodes {
                composite_instance(param, resource, node, &mut group, &mut out);
            }
        } else {
            let mut values = Vec::new();
            for node in &nodes {
                index_node(param.kind, node, true, &mut values);
            }
            for value in dedup(values) {
                out.push(IndexEntry {
                    param: param.code.clone(),
                    group: 0,
                    value,
                });
            }
        }
    }
    out
}

fn composite_instance(
    param: &SearchParam,
    root: &Value,
    node: Typed<'_>,
    group: &mut u32,
    out: &mut Vec<IndexEntry>,
) {
    let mut per_component = Vec::with_capacity(param.components.len());
    for component in &param.components {
        let Some(plan) = &component.plan else {
            return;
        };
        let mut values = Vec::new();
        for n in plan.evaluate_on(root, &[node]) {
            index_node(component.kind, &n, false, &mut values);
        }
        if values.is_empty() {
            return;
        }
        per_component.push(dedup(values));
    }
    *group = group.saturating_add(1);
    for (i, values) in per_component.into_iter().enumerate() {
        for value in values {
            out.push(IndexEntry {
                param: format!("{}#{i}", param.code),
                group: *group,
                value,
            });
        }
    }
}

/// Removes repeated values, keeping the first of each.
fn dedup(mut values: Vec<IndexValue>) -> Vec<IndexValue> {
    // Comparing in turn beats hashing for the few values most parameters have.
    const SCAN_MAX: usize = 16;
    if values.len() <= SCAN_MAX {
        let mut kept = 0;
        for i in 0..values.len() {
            if !values[..kept].contains(&values[i]) {
                values.swap(kept, i);
                kept += 1;
            }
        }
        values.truncate(kept);
        return values;
    }
    let mut seen = HashSet::with_capacity(values.len());
    let keep: Vec<bool> = values.iter().map(|v| seen.insert(Key(v))).collect();
    drop(seen);
    values
        .into_iter()
        .zip(keep)
        .filter_map(|(v, k)| k.then_some(v))
        .collect()
}

/// Hashes an IndexValue (floats by their bits; JSON numbers are never NaN).
struct Key<'a>(&'a IndexValue);

impl PartialEq for Key<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for Key<'_> {}

impl Hash for Key<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        std::mem::discriminant(self.0).hash(h);
        match self.0 {
            IndexValue::Token { system, code } => (system, code).hash(h),
            IndexValue::TokenText(s) | IndexValue::Uri(s) => s.hash(h),
            IndexValue::IdentifierOfType {
                type_system,
                type_code,
                value,
            } => (type_system, type_code, value).hash(h),
            IndexValue::String { normalized, exact } => (normalized, exact).hash(h),
            IndexValue::Date { low_us, high_us } => (low_us, high_us).hash(h),
            IndexValue::Number { value, low, high } => {
                (value.to_bits(), low.to_bits(), high.to_bits()).hash(h);
            }
            IndexValue::Quantity {
                value,
                system,
                code,
                ..
            } => (value.to_bits(), system, code).hash(h),
            IndexValue::Reference {
                target_type,
                target_id,
                url,
            } => (target_type, target_id, url).hash(h),
        }
    }
}

fn str_field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    object
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The items of an array property (or the property itself when it is not an array).
fn items<'a>(object: &'a Map<String, Value>, name: &str) -> &'a [Value] {
    match object.get(name) {
        Some(Value::Array(a)) => a,
        Some(v) => std::slice::from_ref(v),
        None => &[],
    }
}

/// Appends the values of one selected node for a parameter of kind `kind`.
/// `full`: also the values only modifiers use (`TokenText`, `IdentifierOfType`), which
/// composite components (no modifiers) leave out.
fn index_node(kind: ParamType, node: &Typed<'_>, full: bool, out: &mut Vec<IndexValue>) {
    if !kind.indexes(node.type_code) {
        return;
    }
    match kind {
        ParamType::Token => token(node, full, out),
        ParamType::String => string(node, out),
        ParamType::Date => date_values(node, out),
        ParamType::Number => {
            if let Some(d) = node.value.as_number().and_then(number::from_json) {
                out.push(IndexValue::Number {
                    value: d.value,
                    low: d.low,
                    high: d.high,
                });
            }
        }
        ParamType::Quantity => quantity(node, out),
        ParamType::Reference => reference(node, out),
        ParamType::Uri => {
            if let Some(s) = node.value.as_str().filter(|s| !s.is_empty()) {
                out.push(IndexValue::Uri(s.to_string()));
            }
        }
        ParamType::Composite | ParamType::Special => {}
    }
}

fn text_value(s: &str, full: bool, out: &mut Vec<IndexValue>) {
    if !full {
        return;
    }
    let n = normalize(s);
    if !n.is_empty() {
        out.push(IndexValue::TokenText(n));
    }
}

fn coding(value: &Value, full: bool, out: &mut Vec<IndexValue>) {
    let Some(c) = value.as_object() else {
        return;
    };
    if let Some(code) = str_field(c, "code") {
        out.push(IndexValue::Token {
            system: str_field(c, "system").map(str::to_string),
            code: code.to_string(),
        });
    }
    if let Some(display) = str_field(c, "display") {
        text_value(display, full, out);
    }
}

fn token(node: &Typed<'_>, full: bool, out: &mut Vec<IndexValue>) {
    match node.type_code {
        "Coding" => coding(node.value, full, out),
        "CodeableConcept" => {
            let Some(cc) = node.value.as_object() else {
                return;
            };
            for c in items(cc, "coding") {
                coding(c, full, out);
            }
            if let Some(text) = str_field(cc, "text") {
                text_value(text, full, out);
            }
        }
        "Identifier" => {
            let Some(id) = node.value.as_object() else {
                return;
            };
            let value = str_field(id, "value");
            if let Some(value) = value {
                out.push(IndexValue::Token {
                    system: str_field(id, "system").map(str::to_string),
                    code: value.to_string(),
                });
            }
            let Some(ty) = id.get("type").and_then(Value::as_object).filter(|_| full) else {
                return;
            };
            if let Some(value) = value {
                for c in items(ty, "coding").iter().filter_map(Value::as_object) {
                    if let Some(code) = str_field(c, "code") {
                        out.push(IndexValue::IdentifierOfType {
                            type_system: str_field(c, "system").map(str::to_string),
                            type_code: code.to_string(),
                            value: value.to_string(),
                        });
                    }
                }
            }
            if let Some(text) = str_field(ty, "text") {
                text_value(text, full, out);
            }
        }
        "ContactPoint" => {
            if let Some(value) = node.value.as_object().and_then(|c| str_field(c, "value")) {
                out.push(IndexValue::Token {
                    system: None,
                    code: value.to_string(),
                });
            }
        }
        "boolean" => {
            if let Some(b) = node.value.as_bool() {
                out.push(IndexValue::Token {
                    system: None,
                    code: b.to_string(),
                });
            }
        }
        _ => {
            if let Some(s) = node.value.as_str().filter(|s| !s.is_empty()) {
                out.push(IndexValue::Token {
                    system: None,
                    code: s.to_string(),
                });
            }
        }
    }
}

fn string_value(s: &str, out: &mut Vec<IndexValue>) {
    let normalized = normalize(s);
    if !normalized.is_empty() {
        out.push(IndexValue::String {
            normalized,
            exact: s.to_string(),
        });
    }
}

fn string(node: &Typed<'_>, out: &mut Vec<IndexValue>) {
    let parts: &[&str] = match node.type_code {
        "HumanName" => &["family", "given", "prefix", "suffix", "text"],
        "Address" => &[
            "line",
            "city",
            "district",
            "state",
            "postalCode",
            "country",
            "text",
        ],
        _ => {
            if let Some(s) = node.value.as_str() {
                string_value(s, out);
            }
            return;
        }
    };
    let Some(object) = node.value.as_object() else {
        return;
    };
    for part in parts {
        for s in items(object, part).iter().filter_map(Value::as_str) {
            string_value(s, out);
        }
    }
}

fn date_range(value: Option<&Value>) -> Option<(i64, i64)> {
    date::parse_range(value?.as_str()?, ZoneRule::AssumeUtc).ok()
}

fn period(value: &Value, out: &mut Vec<IndexValue>) {
    let Some(p) = value.as_object() else {
        return;
    };
    let (start, end) = (p.get("start"), p.get("end"));
    if start.is_none() && end.is_none() {
        return;
    }
    let low = match start {
        None => i64::MIN,
        Some(s) => match date_range(Some(s)) {
            Some((low, _)) => low,
            None => return,
        },
    };
    let high = match end {
        None => i64::MAX,
        Some(e) => match date_range(Some(e)) {
            Some((_, high)) => high,
            None => return,
        },
    };
    out.push(IndexValue::Date {
        low_us: low.min(high),
        high_us: high.max(low),
    });
}

fn date_values(node: &Typed<'_>, out: &mut Vec<IndexValue>) {
    match node.type_code {
        "Period" => period(node.value, out),
        "Timing" => {
            let Some(t) = node.value.as_object() else {
                return;
            };
            for event in items(t, "event") {
                if let Some((low_us, high_us)) = date_range(Some(event)) {
                    out.push(IndexValue::Date { low_us, high_us });
                }
            }
            if let Some(bounds) = t.get("repeat").and_then(|r| r.get("boundsPeriod")) {
                period(bounds, out);
            }
        }
        _ => {
            if let Some((low_us, high_us)) = date_range(Some(node.value)) {
                out.push(IndexValue::Date { low_us, high_us });
            }
        }
    }
}

fn decimal_field(object: &Map<String, Value>, name: &str) -> Option<Decimal> {
    object
        .get(name)
        .and_then(Value::as_number)
        .and_then(number::from_json)
}

fn quantity(node: &Typed<'_>, out: &mut Vec<IndexValue>) {
    let Some(q) = node.value.as_object() else {
        return;
    };
    let owned = |name: &str| str_field(q, name).map(str::to_string);
    match node.type_code {
        "Money" => {
            if let Some(d) = decimal_field(q, "value") {
                let code = owned("currency");
                out.push(IndexValue::Quantity {
                    value: d.value,
                    low: d.low,
                    high: d.high,
                    system: code.as_ref().map(|_| "urn:iso:std:iso:4217".to_string()),
                    code,
                    unit: None,
                });
            }
        }
        "Range" => {
            let bound = |name: &str| q.get(name).and_then(Value::as_object);
            let (low_q, high_q) = (bound("low"), bound("high"));
            let low = low_q.and_then(|l| decimal_field(l, "value"));
            let high = high_q.and_then(|h| decimal_field(h, "value"));
            let value = match (low, high) {
                (Some(l), Some(h)) => l.value / 2.0 + h.value / 2.0,
                (Some(l), None) => l.value,
                (None, Some(h)) => h.value,
                (None, None) => return,
            };
            let Some(unit_from) = low.and(low_q).or(high_q) else {
                return;
            };
            let field = |name: &str| str_field(unit_from, name).map(str::to_string);
            out.push(IndexValue::Quantity {
                value,
                low: low.map_or(f64::MIN, |l| l.low),
                high: high.map_or(f64::MAX, |h| h.high),
                system: field("system"),
                code: field("code"),
                unit: field("unit"),
            });
        }
        _ => {
            if let Some(d) = decimal_field(q, "value") {
                out.push(IndexValue::Quantity {
                    value: d.value,
                    low: d.low,
                    high: d.high,
                    system: owned("system"),
                    code: owned("code"),
                    unit: owned("unit"),
                });
            }
        }
    }
}

/// The entry of a literal reference, or `None` for a contained one. Only a relative
/// reference has a target type and id: an absolute URL or a URN names nothing here.
pub(crate) fn reference_value(reference: &str) -> Option<IndexValue> {
    if reference.is_empty() || reference.starts_with('#') {
        return None;
    }
    let (target_type, target_id) = match split_local_reference(reference) {
        Some((t, id)) => (Some(t.to_string()), Some(id.to_string())),
        None => (None, None),
    };
    Some(IndexValue::Reference {
        target_type,
        target_id,
        url: reference.to_string(),
    })
}

fn reference(node: &Typed<'_>, out: &mut Vec<IndexValue>) {
    if node.type_code == "Reference" {
        let Some(r) = node.value.as_object() else {
            return;
        };
        if let Some(v) = str_field(r, "reference").and_then(reference_value) {
            out.push(v);
        }
        if let Some(id) = r.get("identifier").and_then(Value::as_object)
            && let Some(value) = str_field(id, "value")
        {
            out.push(IndexValue::Token {
                system: str_field(id, "system").map(str::to_string),
                code: value.to_string(),
            });
        }
        return;
    }
    // canonical, uri, url
    let Some(s) = node.value.as_str().filter(|s| !s.is_empty()) else {
        return;
    };
    let unversioned = s.split_once('|').map_or(s, |(url, _)| url);
    if let Some(v) = reference_value(unversioned) {
        out.push(v);
    }
    out.push(IndexValue::Uri(s.to_string()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Only a relative reference names a target: another server's `Patient/1`, a canonical
    /// or a URN has none (the store keys it by its spelling).
    #[test]
    fn only_a_relative_reference_has_a_target() {
        for (spelling, local) in [
            ("Patient/1", true),
            ("Patient/1/_history/2", true),
            ("http://other.example/fhir/Patient/1", false),
            ("https://x/Patient/1/_history/2", false),
            ("urn:uuid:3b2c1a00-0000-4000-8000-000000000001", false),
            ("http://hl7.org/fhir/ValueSet/x?version=1", false),
            ("Nope/1", false),
            ("a/Patient/1", false),
        ] {
            let Some(IndexValue::Reference {
                target_type,
                target_id,
                url,
            }) = reference_value(spelling)
            else {
                panic!("{spelling} is indexed as a reference");
            };
            assert_eq!(url, spelling);
            assert_eq!(target_type.is_some(), local, "{spelling}");
            assert_eq!(target_id.as_deref(), local.then_some("1"), "{spelling}");
        }
    }

    fn values(resource: &Value, param: &str) -> Vec<IndexValue> {
        extract(resource)
            .into_iter()
            .filter(|e| e.param == param)
            .map(|e| e.value)
            .collect()
    }

    fn token(system: Option<&str>, code: &str) -> IndexValue {
        IndexValue::Token {
            system: system.map(str::to_string),
            code: code.to_string(),
        }
    }

    #[test]
    fn patient() {
        let p = json!({"resourceType": "Patient", "id": "p1",
            "meta": {"lastUpdated": "2020-01-01T00:00:00Z", "tag": [{"system": "s", "code": "t"}]},
            "active": true, "gender": "female", "birthDate": "1970-01",
            "name": [{"family": "Dupont", "given": ["Élodie", "Marie"], "prefix": ["Dr"]}],
            "telecom": [{"system": "email", "value": "e@x.org"}, {"system": "phone", "value": "+33 1"}],
            "address": [{"line": ["1 rue X"], "city": "Paris", "postalCode": "75001"}],
            "identifier": [{"system": "urn:s", "value": "123",
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}], "text": "Medical record"}}],
            "generalPractitioner": [{"reference": "Practitioner/9"}, {"reference": "#c"}],
            "managingOrganization": {"identifier": {"system": "urn:org", "value": "o1"}}});
        let all = extract(&p);
        assert!(
            all.iter()
                .all(|e| e.param != "_id" && e.param != "_lastUpdated" && e.group == 0)
        );
        assert_eq!(values(&p, "gender"), [token(None, "female")]);
        assert_eq!(values(&p, "active"), [token(None, "true")]);
        assert_eq!(values(&p, "_tag"), [token(Some("s"), "t")]);
        let (low, high) = date::parse_range("1970-01", ZoneRule::AssumeUtc).unwrap();
        assert_eq!(
            values(&p, "birthdate"),
            [IndexValue::Date {
                low_us: low,
                high_us: high
            }]
        );
        let given = values(&p, "given");
        assert_eq!(
            given[0],
            IndexValue::String {
                normalized: "elodie".into(),
                exact: "Élodie".into()
            }
        );
        assert_eq!(values(&p, "name").len(), 4);
        assert_eq!(values(&p, "email"), [token(None, "e@x.org")]);
        assert_eq!(values(&p, "phone"), [token(None, "+33 1")]);
        assert_eq!(values(&p, "telecom").len(), 2);
        assert_eq!(values(&p, "address").len(), 3);
        assert_eq!(values(&p, "address-city").len(), 1);
        let ids = values(&p, "identifier");
        assert_eq!(ids[0], token(Some("urn:s"), "123"));
        assert!(ids.contains(&IndexValue::IdentifierOfType {
            type_system: Some("http://terminology.hl7.org/CodeSystem/v2-0203".into()),
            type_code: "MR".into(),
            value: "123".into()
        }));
        assert!(ids.contains(&IndexValue::TokenText("medical record".into())));
        assert_eq!(
            values(&p, "general-practitioner"),
            [IndexValue::Reference {
                target_type: Some("Practitioner".into()),
                target_id: Some("9".into()),
                url: "Practitioner/9".into()
            }]
        );
        assert_eq!(values(&p, "organization"), [token(Some("urn:org"), "o1")]);
    }

    #[test]
    fn observation_composites() {
        let o = json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "55284-4", "display": "BP"}], "text": "Blood pressure"},
        "subject": {"reference": "Patient/1"},
        "effectivePeriod": {"start": "2020-01-01T10:00:00Z"},
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
             "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
             "valueQuantity": {"value": 80, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "x"}]}}
        ]});
        let all = extract(&o);
        let date = values(&o, "date");
        assert!(matches!(
            date[..],
            [IndexValue::Date {
                high_us: i64::MAX,
                ..
            }]
        ));
        assert_eq!(values(&o, "patient").len(), 1);
        assert_eq!(values(&o, "subject").len(), 1);
        assert!(values(&o, "code").contains(&IndexValue::TokenText("blood pressure".into())));
        let groups: Vec<(u32, &str)> = all
            .iter()
            .filter(|e| e.param.starts_with("component-code-value-quantity#"))
            .map(|e| (e.group, e.param.as_str()))
            .collect();
        // Two components with a value; the third has none and yields nothing.
        assert_eq!(groups.len(), 4);
        assert_eq!(groups[0].0, groups[1].0);
        assert_ne!(groups[0].0, groups[2].0);
        assert!(groups.iter().all(|(g, _)| *g > 0));
        assert!(
            all.iter()
                .filter(|e| e.param.contains('#'))
                .all(|e| !matches!(e.value, IndexValue::TokenText(_)))
        );
        let q = values(&o, "component-value-quantity");
        assert!(
            matches!(&q[0], IndexValue::Quantity { value, low, high, code: Some(c), .. }
            if *value == 120.0 && *low == 119.5 && *high == 120.5 && c == "mm[Hg]")
        );
        // combo: the Observation has no value, so only its components form groups.
        assert_eq!(values(&o, "combo-code-value-quantity#0").len(), 2);
    }

    #[test]
    fn references_and_canonicals() {
        assert_eq!(reference_value("#x"), None);
        assert_eq!(
            reference_value("Patient/1/_history/3"),
            Some(IndexValue::Reference {
                target_type: Some("Patient".into()),
                target_id: Some("1".into()),
                url: "Patient/1/_history/3".into()
            })
        );
        // Another server's Patient/1 is not ours: no target type or id.
        assert_eq!(
            reference_value("http://x/fhir/Patient/1"),
            Some(IndexValue::Reference {
                target_type: None,
                target_id: None,
                url: "http://x/fhir/Patient/1".into()
            })
        );
        assert_eq!(
            reference_value("urn:uuid:1"),
            Some(IndexValue::Reference {
                target_type: None,
                target_id: None,
                url: "urn:uuid:1".into()
            })
        );
        let qr = json!({"resourceType": "QuestionnaireResponse",
            "questionnaire": "http://x/Questionnaire/q1|2.0", "status": "completed"});
        let v = values(&qr, "questionnaire");
        assert_eq!(
            v,
            [
                IndexValue::Reference {
                    target_type: None,
                    target_id: None,
                    url: "http://x/Questionnaire/q1".into()
                },
                IndexValue::Uri("http://x/Questionnaire/q1|2.0".into())
            ]
        );
    }

    #[test]
    fn quantities_money_ranges_timing() {
        let c = json!({"resourceType": "Condition", "subject": {"reference": "Patient/1"},
            "onsetRange": {"low": {"value": 10, "unit": "a"}, "high": {"value": 20}}});
        let v = values(&c, "onset-age");
        assert!(
            matches!(&v[..], [IndexValue::Quantity { value, low, high, unit: Some(u), .. }]
            if *value == 15.0 && *low == 9.5 && *high == 20.5 && u == "a")
        );
        let claim = json!({"resourceType": "Claim", "item": [{"sequence": 1, "net": {"value": 12.5, "currency": "EUR"}}]});
        // Claim has no Money parameter in R4; ExplanationOfBenefit neither: check the reader.
        let node = Typed {
            value: &claim["item"][0]["net"],
            type_code: "Money",
            ty: super::super::fhirpath::Ty::AnyResource,
        };
        let mut out = Vec::new();
        quantity(&node, &mut out);
        assert!(
            matches!(&out[..], [IndexValue::Quantity { code: Some(c), system: Some(s), .. }]
            if c == "EUR" && s == "urn:iso:std:iso:4217")
        );
        let mr = json!({"resourceType": "MedicationRequest", "subject": {"reference": "Patient/1"},
            "dosageInstruction": [{"timing": {"event": ["2020-01-01", "2020-01-02"],
                "repeat": {"boundsPeriod": {"start": "2020-01-01", "end": "2020-02-01"}}}}]});
        assert_eq!(values(&mr, "date").len(), 2);
        let cp = json!({"resourceType": "CarePlan", "status": "active", "intent": "plan",
            "subject": {"reference": "Patient/1"},
            "activity": [{"detail": {"status": "scheduled", "scheduledTiming": {
                "event": ["2020-01-01"],
                "repeat": {"boundsPeriod": {"start": "2020-01-01", "end": "2020-02-01"}}}}}]});
        assert_eq!(values(&cp, "activity-date").len(), 2);
    }

    #[test]
    fn garbage_never_panics() {
        for v in [
            json!(null),
            json!({"resourceType": 5}),
            json!({"resourceType": "Nope"}),
            json!({"resourceType": "Patient", "name": "x", "birthDate": 7, "gender": ["a"],
                "identifier": [null, 1, {"value": 3}], "telecom": {"value": true}}),
            json!({"resourceType": "Observation", "valueQuantity": {"value": "x"},
                "effectivePeriod": {"start": "bad"}, "component": [{"code": 1}]}),
        ] {
            let _ = extract(&v);
        }
    }

    #[test]
    fn duplicates_are_removed() {
        let p =
            json!({"resourceType": "Patient", "name": [{"given": ["A", "A"]}, {"given": ["a"]}]});
        assert_eq!(values(&p, "given").len(), 2);
    }
}
