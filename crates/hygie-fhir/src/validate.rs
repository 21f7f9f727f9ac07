//! Validation of FHIR R4 JSON resources against the R4 structure definitions.
//!
//! Runs on every create and update, so it walks the JSON once, looks each property up in the
//! precomputed [`crate::schema`] tables, checks formats with hand-coded matchers (tested equal
//! to the spec regexes, see [`Primitive::is_valid_format`]) and allocates nothing per element:
//! the FHIRPath of the current element is a stack of borrowed segments, rendered into a
//! string only when an issue is reported. A bound element carries the index of its value
//! set, so a code is checked with one hash-set lookup and no allocation.
//!
//! Checked:
//! - the value is an object whose `resourceType` is a known, concrete R4 resource type;
//! - every property is an element R4 defines at its path (unknown ones are named). What the
//!   npm package of the definitions adds to R4 (Medplum's `meta.project`, `meta.compartment`,
//!   …, R5 backports) is unknown too: the generator left it out (see `data/PROVENANCE.md`);
//! - cardinality: required elements present; arrays exactly for repeating elements; max;
//!   no empty arrays, empty objects or `null` (except as the placeholder in an array of
//!   primitives whose `_name` array carries an extension at the same index);
//! - primitives: JSON type (string, number, boolean), the spec's regex (`\s` read as XML
//!   Schema whitespace, as in the XSD the patterns come from), integer ranges, calendar dates
//!   (no 30 February), strings non-empty and at most 1 Mi characters (every string-based type
//!   but base64Binary and xhtml, which only the request size bounds);
//! - choice elements (`value[x]`): only the listed type suffixes, at most one of them;
//! - `_name` companions of primitives: objects with `id`/`extension` only, arrays aligned;
//! - complex datatypes, BackboneElements and contentReferences, recursively;
//! - extensions: `url` required and ext-1 (either nested extensions or one `value[x]`);
//! - `contained` resources by their own type, with dom-2 (no nested `contained`), dom-4 (no
//!   `meta.versionId`/`meta.lastUpdated`) and dom-5 (no `meta.security`);
//! - `Resource`-typed elements (`Bundle.entry.resource`, `Parameters.parameter.resource`) by
//!   the type they declare;
//! - `Reference.reference` syntax (see [`check_reference`]);
//! - Narrative `div`: a string starting with `<div`;
//! - required terminology bindings (issue code `code-invalid`), against the value sets that
//!   the generator expanded from the R4 definitions (see [`schema::ValueSet`]; 349 of the 366
//!   required bindings of R4, every one whose value set is enumerable):
//!   - a `code` element (`Patient.gender`, `Bundle.entry.request.method`, each item of a
//!     repeating one) must be one of the value set's codes, from any of its code systems,
//!     compared case-sensitively; the diagnostics name the value set and its codes;
//!   - a `CodeableConcept` (`Condition.clinicalStatus`, …): every coding whose `system` is one
//!     of the value set's must carry one of that system's codes there (reported at
//!     `….coding[i].code`), and when codings are present, at least one must be from the value
//!     set, system and code (a coding without a system does not count; reported at the
//!     concept). A concept with `text` and no coding is accepted: it claims no code, and
//!     refusing it would reject data recorded before it could be coded;
//!   - a `Coding` must have a system and code of the value set (R4 itself binds no `Coding`
//!     `required`; the rule is there for completeness, tested on its own);
//!   - the expansions include nested concepts and exclude abstract ones (`notSelectable`, such
//!     as the item type `question`); deprecated and retired codes are accepted.
//!
//! Not checked (a deliberate scope, not an oversight):
//! - XHTML content of `Narrative.div` beyond its `<div` start (well-formedness, the allowed
//!   elements and attributes, no scripts): out of scope here, so whatever renders a narrative
//!   must treat it as untrusted markup;
//! - the spec's SHOULDs on strings (no control characters, no leading/trailing whitespace);
//! - FHIRPath invariants other than ext-1 and dom-2/4/5 (e.g. `obs-6`; the Bundle rules such
//!   as `bdl-7` unique fullUrls; `ele-1` beyond empty objects; dom-3 "contained resources are
//!   referenced");
//! - required bindings whose value set cannot be enumerated from the definitions: mime types
//!   (BCP 13: `Attachment.contentType`, `Binary.contentType`, …), UCUM units, ISO 4217
//!   currencies (`Money.currency`) and a LOINC answer list; the full list is in
//!   `data/PROVENANCE.md`. R4
//!   binds no `Quantity.code` `required` (the UCUM rules of Age, Duration, … are invariants,
//!   not checked);
//! - bindings of strength `extensible`, `preferred` or `example` (they do not make a code
//!   wrong), `display` texts, and whether a code system outside the value set is real;
//! - profiles in `meta.profile` (SimpleQuantity included: a `comparator` where one is
//!   forbidden is accepted), and reference target types (`Observation.subject` may point to
//!   any resource type);
//! - duplicate JSON keys: `serde_json` keeps the last one before this code sees the value.

use serde_json::{Map, Value};

use crate::outcome::{Issue, IssueType};
use crate::schema::{
    self, BindingKind, Element, Node, NodeId, NodeKind, Primitive, Schema, Special, TypeKind,
    ValueSet,
};

/// Issues reported before validation stops with one more "too many issues" issue.
pub const MAX_ISSUES: usize = 100;

/// Nesting of objects beyond which validation stops descending. The caller's JSON depth check
/// normally rejects such input first; this bound keeps the recursion safe on its own.
pub const MAX_DEPTH: usize = 128;

/// The longest string the spec allows: 1 MiB (1024 × 1024 characters).
pub const STRING_CHARS_MAX: usize = 1024 * 1024;

/// Validates one resource (with everything it contains) against the R4 definitions.
///
/// On failure, returns every issue found, in document order, each with the FHIRPath of the
/// offending element (`Patient.name[0].given[1]`), at most [`MAX_ISSUES`] + 1 of them.
pub fn validate_resource(resource: &Value) -> Result<(), Vec<Issue>> {
    let mut validator = Validator {
        schema: schema::schema(),
        path: Vec::with_capacity(32),
        choices: Vec::with_capacity(16),
        issues: Vec::new(),
        depth: 0,
        stopped: false,
    };
    validator.resource(resource, None, false);
    if validator.issues.is_empty() {
        Ok(())
    } else {
        Err(validator.issues)
    }
}

/// Checks the syntax of a `Reference.reference` string.
///
/// Accepted: `Type/id`, `Type/id/_history/vid` (Type a concrete R4 resource type, ids per the
/// `id` regex), `Type?search` (a conditional reference, resolved in a transaction), an absolute
/// URI (`https://…`, without whitespace), `urn:uuid:…`, `urn:oid:…`, and `#id` or `#` for a
/// contained resource or the container. Whether the target exists is not checked here.
pub fn check_reference(reference: &str) -> Result<(), String> {
    if let Some(local) = reference.strip_prefix('#') {
        return if local.is_empty() || Primitive::Id.is_valid_format(local) {
            Ok(())
        } else {
            Err(format!(
                "'#{local}' is not a valid local reference: the id after # is not a valid id"
            ))
        };
    }
    if reference.starts_with("urn:uuid:") {
        return if Primitive::Uuid.is_valid_format(reference) {
            Ok(())
        } else {
            Err("a urn:uuid: reference needs a lowercase UUID (urn:uuid:xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)".into())
        };
    }
    if reference.starts_with("urn:oid:") {
        return if Primitive::Oid.is_valid_format(reference) {
            Ok(())
        } else {
            Err("a urn:oid: reference needs a valid OID (urn:oid:1.2.3)".into())
        };
    }
    if has_uri_scheme(reference) {
        return if Primitive::Uri.is_valid_format(reference) {
            Ok(())
        } else {
            Err("an absolute reference must be a URI without whitespace".into())
        };
    }
    if let Some((type_name, query)) = reference.split_once('?') {
        return if !schema::is_resource_type(type_name) {
            Err(format!(
                "conditional reference to unknown resource type '{type_name}'"
            ))
        } else if query.is_empty() || !Primitive::Uri.is_valid_format(query) {
            Err(
                "a conditional reference needs search parameters without whitespace after '?'"
                    .into(),
            )
        } else {
            Ok(())
        };
    }
    let mut parts = reference.split('/');
    let shape = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    );
    let (type_name, id, version) = match shape {
        (Some(t), Some(id), None, None, None) => (t, id, None),
        (Some(t), Some(id), Some("_history"), Some(v), None) => (t, id, Some(v)),
        _ => {
            return Err(format!(
                "'{}' is not a valid reference: expected Type/id, Type/id/_history/vid, an absolute URL, urn:uuid:, urn:oid: or #id",
                excerpt(reference)
            ));
        }
    };
    if !schema::is_resource_type(type_name) {
        return Err(format!(
            "reference to unknown resource type '{}'",
            excerpt(type_name)
        ));
    }
    if !Primitive::Id.is_valid_format(id) {
        return Err(format!("'{}' is not a valid resource id", excerpt(id)));
    }
    if let Some(v) = version
        && !Primitive::Id.is_valid_format(v)
    {
        return Err(format!("'{}' is not a valid version id", excerpt(v)));
    }
    Ok(())
}

/// `scheme:` as in RFC 3986 (`ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ":"`).
fn has_uri_scheme(s: &str) -> bool {
    let Some((scheme, _)) = s.split_once(':') else {
        return false;
    };
    let mut bytes = scheme.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// One step of the FHIRPath of the element being validated.
#[derive(Clone, Copy)]
enum Segment<'a> {
    Name(&'a str),
    Index(usize),
}

struct Validator<'a> {
    schema: &'static Schema,
    path: Vec<Segment<'a>>,
    /// Choice elements seen in the objects being walked, as (element, type): a stack shared by
    /// all levels (each object truncates back to where it started), so no allocation per object.
    choices: Vec<(u16, u8)>,
    issues: Vec<Issue>,
    depth: usize,
    stopped: bool,
}

impl<'a> Validator<'a> {
    /// The FHIRPath of the current element; `$this` for the document itself (a top-level
    /// value that is not an object has no better name).
    fn expression(&self) -> String {
        if self.path.is_empty() {
            return "$this".into();
        }
        let mut out = String::new();
        for segment in &self.path {
            match segment {
                Segment::Name(name) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(name);
                }
                Segment::Index(i) => {
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
            }
        }
        out
    }

    fn report(&mut self, code: IssueType, diagnostics: String) {
        if self.stopped {
            return;
        }
        if self.issues.len() == MAX_ISSUES {
            self.stopped = true;
            let issue = Issue::error(
                IssueType::TooCostly,
                format!("too many issues: validation stopped after {MAX_ISSUES}"),
            );
            self.issues.push(issue.at(self.expression()));
            return;
        }
        let issue = Issue::error(code, diagnostics).at(self.expression());
        self.issues.push(issue);
    }

    fn report_at(&mut self, name: &'a str, code: IssueType, diagnostics: String) {
        self.path.push(Segment::Name(name));
        self.report(code, diagnostics);
        self.path.pop();
    }

    fn resource(&mut self, value: &'a Value, expected: Option<NodeId>, contained: bool) {
        let Value::Object(object) = value else {
            let found = json_kind(value);
            self.report(
                IssueType::Structure,
                format!("expected a resource (a JSON object with a resourceType), found {found}"),
            );
            return;
        };
        let resource_type = match object.get("resourceType") {
            Some(Value::String(name)) => name.as_str(),
            Some(other) => {
                let found = json_kind(other);
                self.report_at(
                    "resourceType",
                    IssueType::Structure,
                    format!("resourceType must be a string, found {found}"),
                );
                return;
            }
            None => {
                self.report_at(
                    "resourceType",
                    IssueType::Required,
                    "resourceType is missing: every resource names its type".into(),
                );
                return;
            }
        };
        let Some(node_id) = self.schema.resource_node(resource_type) else {
            let shown = excerpt(resource_type);
            if self.schema.is_abstract_resource_type(resource_type) {
                self.report_at(
                    "resourceType",
                    IssueType::Invalid,
                    format!(
                        "{shown} is an abstract type; name a concrete resource type such as Patient"
                    ),
                );
            } else {
                self.report_at(
                    "resourceType",
                    IssueType::NotSupported,
                    format!("unknown resource type '{shown}': not a FHIR R4 resource type"),
                );
            }
            return;
        };
        let top = self.path.is_empty();
        if top {
            self.path.push(Segment::Name(resource_type));
        }
        if let Some(expected) = expected
            && expected != node_id
        {
            let wanted = &self.schema.node(expected).path;
            self.report_at(
                "resourceType",
                IssueType::Invalid,
                format!("expected a {wanted} here, found {resource_type}"),
            );
        }
        self.object(object, self.schema.node(node_id));
        if contained {
            self.contained_rules(object);
        }
        if top {
            self.path.pop();
        }
    }

    /// dom-2, dom-4 and dom-5: what a contained resource may not carry.
    fn contained_rules(&mut self, object: &'a Map<String, Value>) {
        if object.contains_key("contained") {
            self.report_at(
                "contained",
                IssueType::Invariant,
                "dom-2: a contained resource must not contain resources".into(),
            );
        }
        if let Some(Value::Object(meta)) = object.get("meta") {
            self.path.push(Segment::Name("meta"));
            for (key, rule) in [
                (
                    "versionId",
                    "dom-4: a contained resource has no meta.versionId",
                ),
                (
                    "lastUpdated",
                    "dom-4: a contained resource has no meta.lastUpdated",
                ),
                (
                    "security",
                    "dom-5: a contained resource has no security labels",
                ),
            ] {
                if meta.contains_key(key) {
                    self.report_at(key, IssueType::Invariant, rule.into());
                }
            }
            self.path.pop();
        }
    }

    fn object(&mut self, object: &'a Map<String, Value>, node: &'static Node) {
        if self.stopped {
            return;
        }
        if object.is_empty() {
            self.report(
                IssueType::Structure,
                "empty object: FHIR JSON does not allow {}; omit the element".into(),
            );
            return;
        }
        if self.depth >= MAX_DEPTH {
            self.report(
                IssueType::Structure,
                format!(
                    "nested deeper than {MAX_DEPTH} objects; validation does not descend further"
                ),
            );
            return;
        }
        self.depth += 1;
        let mark = self.choices.len();
        let mut required_seen = 0u64;
        let mut has_extensions = false;
        for (key, value) in object {
            if self.stopped {
                break;
            }
            let Some((child, element)) = node.child(key) else {
                if !(node.kind == NodeKind::Resource && key == "resourceType") {
                    self.unknown_element(key, node);
                }
                continue;
            };
            required_seen |= child.required_bit;
            has_extensions |= node.is_extension && key == "extension";
            if element.choice {
                let conflict = self.choices[mark..]
                    .iter()
                    .any(|&(e, ty)| e == child.element && ty != child.ty);
                if conflict {
                    let names = name_list(element);
                    let shown = if child.primitive_extension {
                        &key[1..]
                    } else {
                        key
                    };
                    self.report_at(
                        shown,
                        IssueType::Structure,
                        format!(
                            "{} takes one type only: at most one of {names} may be present",
                            element.name
                        ),
                    );
                }
                self.choices.push((child.element, child.ty));
            }
            if child.primitive_extension {
                let base = &key[1..];
                self.path.push(Segment::Name(base));
                self.primitive_extension(object, key, value, element, base);
            } else {
                self.path.push(Segment::Name(key));
                self.element_value(object, value, element, child.ty);
            }
            self.path.pop();
        }
        for (bit, &index) in node.required.iter().enumerate() {
            if required_seen & (1 << bit) == 0 {
                let element = &node.elements[usize::from(index)];
                let (name, min) = (&*element.name, element.min);
                self.report_at(
                    name,
                    IssueType::Required,
                    format!("{} is required (min {min}) but missing", element.path),
                );
            }
        }
        if node.is_extension {
            // ext-1. The only choice of Extension is value[x].
            let has_value = self.choices.len() > mark;
            if has_value == has_extensions {
                let msg = if has_value {
                    "ext-1: an extension has either nested extensions or a value[x], not both"
                } else {
                    "ext-1: an extension needs either nested extensions or a value[x]"
                };
                self.report(IssueType::Invariant, msg.into());
            }
        }
        self.choices.truncate(mark);
        self.depth -= 1;
    }

    fn unknown_element(&mut self, key: &'a str, node: &Node) {
        let owner = &node.path;
        let mut msg = format!(
            "unknown element '{}': {owner} defines no such element",
            excerpt(key)
        );
        let bare = key.strip_prefix('_').unwrap_or(key);
        if let Some((_, element)) = node.child(bare) {
            msg = format!(
                "'{}' is not allowed: only primitive elements have a '_' companion, and {} is not one",
                excerpt(key),
                element.path
            );
        } else if let Some(element) = node
            .elements
            .iter()
            .find(|e| e.choice && bare.starts_with(e.name.trim_end_matches("[x]")))
        {
            let names = name_list(element);
            msg = format!(
                "unknown element '{}': {} allows {names}",
                excerpt(key),
                element.path
            );
        }
        self.report_at(key, IssueType::Structure, msg);
    }

    fn element_value(
        &mut self,
        parent: &'a Map<String, Value>,
        value: &'a Value,
        element: &'static Element,
        ty: u8,
    ) {
        match (value, element.repeats()) {
            (Value::Array(items), true) => {
                if items.is_empty() {
                    self.report(
                        IssueType::Structure,
                        "empty array: FHIR JSON does not allow []; omit the element".into(),
                    );
                    return;
                }
                if let Some(max) = element.max
                    && items.len() > max as usize
                {
                    let n = items.len();
                    self.report(
                        IssueType::Structure,
                        format!("{} allows at most {max} entries, found {n}", element.path),
                    );
                }
                if items.len() < element.min as usize {
                    let (n, min) = (items.len(), element.min);
                    self.report(
                        IssueType::Required,
                        format!("{} needs at least {min} entries, found {n}", element.path),
                    );
                }
                let extension_name = element.types[usize::from(ty)].extension_name.as_deref();
                for (i, item) in items.iter().enumerate() {
                    if self.stopped {
                        break;
                    }
                    self.path.push(Segment::Index(i));
                    if item.is_null() {
                        let has_extension =
                            extension_name.is_some_and(|k| companion_at(parent, k, i));
                        if !has_extension {
                            self.report(
                                IssueType::Structure,
                                "null is only allowed in an array of primitives, where the '_' array has an extension at the same index".into(),
                            );
                        }
                    } else {
                        self.item(item, element, ty);
                    }
                    self.path.pop();
                }
            }
            (Value::Array(_), false) => self.report(
                IssueType::Structure,
                format!(
                    "{} is not repeating (max 1): expected a single value, not an array",
                    element.path
                ),
            ),
            (_, true) => {
                let found = json_kind(value);
                self.report(
                    IssueType::Structure,
                    format!(
                        "{} repeats: expected a JSON array, found {found}",
                        element.path
                    ),
                );
            }
            (Value::Null, false) => self.report(
                IssueType::Structure,
                "null is not allowed: omit the element instead".into(),
            ),
            (_, false) => self.item(value, element, ty),
        }
    }

    fn item(&mut self, value: &'a Value, element: &'static Element, ty: u8) {
        let t = &element.types[usize::from(ty)];
        match t.kind {
            TypeKind::Primitive(p) => self.primitive(value, p, element),
            TypeKind::Node(id) => match value {
                Value::Object(object) => {
                    self.object(object, self.schema.node(id));
                    if let Some(binding) = element.binding {
                        let value_set = self.schema.value_set(binding.value_set);
                        match binding.kind {
                            BindingKind::CodeableConcept => self.concept_binding(object, value_set),
                            BindingKind::Coding => self.coding_binding(object, value_set),
                            BindingKind::Code => {}
                        }
                    }
                }
                other => {
                    let found = json_kind(other);
                    self.report(
                        IssueType::Structure,
                        format!("expected an object ({}), found {found}", t.code),
                    );
                }
            },
            TypeKind::Resource(expected) => {
                if self.depth >= MAX_DEPTH {
                    self.report(
                        IssueType::Structure,
                        format!("nested deeper than {MAX_DEPTH} objects; validation does not descend further"),
                    );
                    return;
                }
                self.resource(value, expected, element.special == Special::Contained)
            }
        }
    }

    /// `_name`: the id and extensions of a primitive, aligned with `name` when it repeats.
    fn primitive_extension(
        &mut self,
        parent: &'a Map<String, Value>,
        key: &str,
        value: &'a Value,
        element: &'static Element,
        base: &str,
    ) {
        let element_node = self.schema.node(self.schema.element_node);
        let repeats = element.repeats();
        match value {
            Value::Object(object) if !repeats => self.object(object, element_node),
            Value::Array(items) if repeats => {
                if items.is_empty() {
                    self.report(
                        IssueType::Structure,
                        format!("empty array in '{key}': FHIR JSON does not allow []"),
                    );
                    return;
                }
                let values = parent.get(base).and_then(Value::as_array);
                if let Some(values) = values
                    && values.len() != items.len()
                {
                    let (n, m) = (items.len(), values.len());
                    self.report(
                        IssueType::Structure,
                        format!("'{key}' has {n} entries but '{base}' has {m}: the arrays must be aligned, with null placeholders"),
                    );
                }
                for (i, item) in items.iter().enumerate() {
                    if self.stopped {
                        break;
                    }
                    self.path.push(Segment::Index(i));
                    match item {
                        // With a `base` array, its own null check reports a double null.
                        Value::Null if values.is_none() => self.report(
                            IssueType::Structure,
                            format!("null in '{key}' without a '{base}' value at the same index"),
                        ),
                        Value::Null => {}
                        Value::Object(object) => self.object(object, element_node),
                        other => {
                            let found = json_kind(other);
                            self.report(
                                IssueType::Structure,
                                format!("expected an object with id/extension or null in '{key}', found {found}"),
                            );
                        }
                    }
                    self.path.pop();
                }
            }
            other => {
                let expected = if repeats {
                    "an array of objects (id/extension) or nulls"
                } else {
                    "an object with id and/or extension"
                };
                let found = json_kind(other);
                self.report(
                    IssueType::Structure,
                    format!("'{key}' must be {expected}, found {found}"),
                );
            }
        }
    }

    fn primitive(&mut self, value: &Value, p: Primitive, element: &'static Element) {
        let json_type = match p {
            Primitive::Boolean => "boolean",
            Primitive::Decimal
            | Primitive::Integer
            | Primitive::PositiveInt
            | Primitive::UnsignedInt => "number",
            _ => "string",
        };
        match (value, json_type) {
            (Value::Bool(_), "boolean") => {}
            (Value::Number(_), "number") if p == Primitive::Decimal => {}
            (Value::Number(n), "number") => {
                let (low, name) = match p {
                    Primitive::PositiveInt => (1, "positiveInt"),
                    Primitive::UnsignedInt => (0, "unsignedInt"),
                    _ => (i64::from(i32::MIN), "integer"),
                };
                match n.as_i64() {
                    Some(i) if (low..=i64::from(i32::MAX)).contains(&i) => {}
                    Some(_) => self.report(
                        IssueType::Value,
                        format!("{n} is out of range for {name} ({low} to {})", i32::MAX),
                    ),
                    None if n.is_u64() => self.report(
                        IssueType::Value,
                        format!("{n} is out of range for {name} ({low} to {})", i32::MAX),
                    ),
                    None => self.report(
                        IssueType::Value,
                        format!("{n} is not a valid {name}: write a whole number without fraction or exponent"),
                    ),
                }
            }
            (Value::String(s), "string") => self.string(s, p, element),
            (other, _) => {
                let found = json_kind(other);
                self.report(
                    IssueType::Structure,
                    format!(
                        "expected a JSON {json_type} for a FHIR {}, found {found}",
                        p.code()
                    ),
                );
            }
        }
    }

    fn string(&mut self, s: &str, p: Primitive, element: &'static Element) {
        if s.is_empty() {
            self.report(
                IssueType::Value,
                "empty string: FHIR JSON does not allow \"\"; omit the element".into(),
            );
            return;
        }
        // base64Binary (attachments) and xhtml (narratives) are bounded by the request size.
        if !matches!(p, Primitive::Base64Binary | Primitive::Xhtml)
            && s.len() > STRING_CHARS_MAX
            && s.chars().count() > STRING_CHARS_MAX
        {
            self.report(
                IssueType::TooLong,
                format!("string longer than {STRING_CHARS_MAX} characters"),
            );
            return;
        }
        if p == Primitive::Xhtml {
            if !s.starts_with("<div") {
                self.report(
                    IssueType::Value,
                    "a narrative div must be XHTML starting with <div".into(),
                );
            }
            return;
        }
        if !p.is_valid_format(s) {
            let code = p.code();
            self.report(
                IssueType::Value,
                format!("'{}' is not a valid {code}", excerpt(s)),
            );
            return;
        }
        if matches!(
            p,
            Primitive::Date | Primitive::DateTime | Primitive::Instant
        ) && !calendar_date_exists(s)
        {
            self.report(
                IssueType::Value,
                format!(
                    "'{}' is not a calendar date (day beyond the end of the month)",
                    excerpt(s)
                ),
            );
            return;
        }
        if element.special == Special::ReferenceString
            && let Err(msg) = check_reference(s)
        {
            self.report(IssueType::Value, msg);
        }
        if let Some(binding) = element.binding
            && binding.kind == BindingKind::Code
        {
            let value_set = self.schema.value_set(binding.value_set);
            if !value_set.contains_code(s) {
                self.report(
                    IssueType::CodeInvalid,
                    format!(
                        "'{}' is not in the required value set {}: expected {}",
                        excerpt(s),
                        value_set.url(),
                        code_list(value_set, None)
                    ),
                );
            }
        }
    }

    /// A `CodeableConcept` with a required binding: every coding whose system is one of the
    /// value set's must carry one of its codes, and when codings are present, at least one
    /// must be from the value set (system and code). Text alone is accepted.
    fn concept_binding(&mut self, object: &'a Map<String, Value>, value_set: &'static ValueSet) {
        let Some(Value::Array(codings)) = object.get("coding") else {
            return;
        };
        let mut any = false;
        let mut from_set = false;
        let mut reported = false;
        self.path.push(Segment::Name("coding"));
        for (i, coding) in codings.iter().enumerate() {
            let Value::Object(coding) = coding else {
                continue; // a structure issue, already reported
            };
            any = true;
            self.path.push(Segment::Index(i));
            match self.coding_verdict(coding, value_set) {
                CodingVerdict::InSet => from_set = true,
                CodingVerdict::Reported => reported = true,
                CodingVerdict::OtherSystem => {}
            }
            self.path.pop();
        }
        self.path.pop();
        if any && !from_set && !reported {
            self.report(
                IssueType::CodeInvalid,
                format!(
                    "no coding is from the required value set {}: expected {}",
                    value_set.url(),
                    system_and_codes(value_set)
                ),
            );
        }
    }

    /// A `Coding` with a required binding: its system and code must be from the value set.
    fn coding_binding(&mut self, coding: &'a Map<String, Value>, value_set: &'static ValueSet) {
        if self.coding_verdict(coding, value_set) == CodingVerdict::OtherSystem {
            self.report(
                IssueType::CodeInvalid,
                format!(
                    "the coding is not from the required value set {}: expected {}",
                    value_set.url(),
                    system_and_codes(value_set)
                ),
            );
        }
    }

    /// Checks one coding (the current path) against a value set, reporting a code that its
    /// system's part of the value set does not have.
    fn coding_verdict(
        &mut self,
        coding: &Map<String, Value>,
        value_set: &'static ValueSet,
    ) -> CodingVerdict {
        let system = coding.get("system").and_then(Value::as_str);
        let code = coding.get("code").and_then(Value::as_str);
        let (Some(system), Some(code)) = (system, code) else {
            return CodingVerdict::OtherSystem;
        };
        if !value_set.includes_system(system) {
            return CodingVerdict::OtherSystem;
        }
        if value_set.contains(system, code) {
            return CodingVerdict::InSet;
        }
        // A malformed code already has its issue from the walk.
        if Primitive::Code.is_valid_format(code) {
            self.path.push(Segment::Name("code"));
            self.report(
                IssueType::CodeInvalid,
                format!(
                    "'{}' is not a code of {system} in the required value set {}: expected {}",
                    excerpt(code),
                    value_set.url(),
                    code_list(value_set, Some(system))
                ),
            );
            self.path.pop();
        }
        CodingVerdict::Reported
    }
}

/// What a coding is with respect to a bound value set.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CodingVerdict {
    /// Its system and code are a pair of the value set.
    InSet,
    /// Its system is one of the value set's but its code is not (an issue was reported).
    Reported,
    /// No system, no code, or a system the value set does not use.
    OtherSystem,
}

/// `one of male, female, other, unknown` (the first codes and a count when there are many).
fn code_list(value_set: &ValueSet, system: Option<&str>) -> String {
    const SHOWN: usize = 12;
    let codes: Vec<&str> = value_set.codes_of(system).collect();
    let shown = codes[..codes.len().min(SHOWN)].join(", ");
    match codes.len() {
        1 => format!("'{shown}'"),
        n if n <= SHOWN => format!("one of {shown}"),
        n => format!("one of {shown}, … ({} more)", n - SHOWN),
    }
}

/// `system S with one of a, b` for each system of a value set, joined with `or`.
fn system_and_codes(value_set: &ValueSet) -> String {
    value_set
        .systems()
        .map(|s| format!("system {s} with code {}", code_list(value_set, Some(s))))
        .collect::<Vec<_>>()
        .join(", or ")
}

/// Whether `parent[extension_name][index]` is an object (the id/extension of a primitive).
fn companion_at(parent: &Map<String, Value>, extension_name: &str, index: usize) -> bool {
    parent
        .get(extension_name)
        .and_then(Value::as_array)
        .and_then(|a| a.get(index))
        .is_some_and(Value::is_object)
}

/// For a string that already matched the date/dateTime/instant regex: whether its day, if
/// any, exists in its month (leap years included).
fn calendar_date_exists(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 10 {
        return true; // year or year-month only
    }
    let num = |range: std::ops::Range<usize>| {
        b[range]
            .iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'))
    };
    let (year, month, day) = (num(0..4), num(5..7), num(8..10));
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let last = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    day <= last
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// At most 64 characters of an input string, for diagnostics.
fn excerpt(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        None => s.to_string(),
        Some((cut, _)) => format!("{}…", &s[..cut]),
    }
}

/// `valueQuantity, valueString, … (n more)` for a choice element's diagnostics.
fn name_list(element: &Element) -> String {
    const SHOWN: usize = 8;
    let names: Vec<&str> = element.json_names().take(SHOWN).collect();
    let more = element.types.len().saturating_sub(SHOWN);
    if more == 0 {
        names.join(", ")
    } else {
        format!("{}, … ({more} more)", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_dates() {
        assert!(calendar_date_exists("2024-02-29"));
        assert!(!calendar_date_exists("2023-02-29"));
        assert!(calendar_date_exists("2000-02-29"));
        assert!(!calendar_date_exists("1900-02-29"));
        assert!(!calendar_date_exists("2023-04-31T10:00:00Z"));
        assert!(calendar_date_exists("2023-04"));
        assert!(calendar_date_exists("2023"));
    }

    #[test]
    fn uri_schemes() {
        assert!(has_uri_scheme("https://x"));
        assert!(has_uri_scheme("urn:x"));
        assert!(!has_uri_scheme("Patient/1"));
        assert!(!has_uri_scheme("1a:b"));
        assert!(!has_uri_scheme(":b"));
    }

    /// No R4 element binds a `Coding` `required`, so the rule is tested here directly.
    #[test]
    fn codings_with_a_required_binding() {
        let schema = schema::schema();
        let value_set = schema::element("Condition.clinicalStatus")
            .unwrap()
            .required_binding()
            .unwrap();
        let clinical = "http://terminology.hl7.org/CodeSystem/condition-clinical";
        let check = |coding: Value| {
            let mut v = Validator {
                schema,
                path: vec![Segment::Name("X"), Segment::Name("coding")],
                choices: Vec::new(),
                issues: Vec::new(),
                depth: 0,
                stopped: false,
            };
            v.coding_binding(coding.as_object().unwrap(), value_set);
            v.issues
                .into_iter()
                .map(|i| (i.code, i.expression.unwrap()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            check(serde_json::json!({"system": clinical, "code": "active"})),
            []
        );
        assert_eq!(
            check(serde_json::json!({"system": clinical, "code": "nope"})),
            [(IssueType::CodeInvalid, "X.coding.code".to_string())]
        );
        for other in [
            serde_json::json!({"code": "active"}),
            serde_json::json!({"system": "http://snomed.info/sct", "code": "1"}),
            serde_json::json!({"system": clinical, "display": "Active"}),
        ] {
            assert_eq!(
                check(other),
                [(IssueType::CodeInvalid, "X.coding".to_string())]
            );
        }
    }

    #[test]
    fn excerpts_are_bounded() {
        assert_eq!(excerpt("abc"), "abc");
        assert_eq!(excerpt(&"é".repeat(100)).chars().count(), 65);
    }
}
