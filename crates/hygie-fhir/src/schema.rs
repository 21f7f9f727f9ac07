//! The FHIR R4 structure definitions, as lookup tables for validation.
//!
//! The definitions come from the committed, generated `data/r4-schema.json` (HL7 FHIR 4.0.1,
//! CC0; see `data/PROVENANCE.md` and `tools/gen-r4-schema.py`). The file is embedded at
//! compile time and parsed once, on first use, into a graph of nodes: one per resource
//! type, complex datatype and inline BackboneElement. Each node maps every JSON property name
//! it allows (`birthDate`, `_birthDate`, `valueQuantity`, …) to its element, so validating
//! one property is one hash lookup on the name as written, with no string building.
//!
//!
//! Required terminology bindings come with their value sets expanded by the generator (see
//! [`ValueSet`]); an element knows its own, so checking a code is one hash lookup.
//!
//! ```
//! use hygie_fhir::schema;
//! assert!(schema::is_resource_type("Patient"));
//! assert!(!schema::is_resource_type("DomainResource")); // abstract
//! let given = schema::element("Patient.name.given").unwrap();
//! assert_eq!((given.min(), given.max()), (0, None));
//! assert_eq!(given.type_codes().collect::<Vec<_>>(), ["string"]);
//! let genders = schema::element("Patient.gender").unwrap().required_binding().unwrap();
//! assert_eq!(genders.url(), "http://hl7.org/fhir/ValueSet/administrative-gender");
//! assert!(genders.contains_code("female") && !genders.contains_code("Female"));
//! assert!(schema::element("Patient.name").unwrap().is_summary());
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use regex::Regex;
use serde::Deserialize;

/// The generated definitions; see `data/PROVENANCE.md`.
const SCHEMA_JSON: &str = include_str!("../data/r4-schema.json");

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    // The input is a constant checked by this crate's tests, so failing here is a build defect.
    Schema::build(SCHEMA_JSON).expect("embedded data/r4-schema.json is consistent")
});

pub(crate) fn schema() -> &'static Schema {
    &SCHEMA
}

/// Parses the embedded definitions now instead of on first use. That takes some tens of
/// milliseconds (about 50 ms measured on a loaded 2-core machine, release build), so a server
/// calls this at startup rather than making its first request pay for it.
pub fn preload() {
    LazyLock::force(&SCHEMA);
}

/// The FHIR version of the embedded definitions (`4.0.1`).
pub fn fhir_version() -> &'static str {
    &schema().fhir_version
}

/// Whether `name` is a concrete (instantiable) R4 resource type. `Resource` and
/// `DomainResource` are abstract and so are not.
pub fn is_resource_type(name: &str) -> bool {
    schema().resource_roots.contains_key(name)
}

/// The concrete R4 resource types, sorted.
pub fn resource_types() -> impl Iterator<Item = &'static str> {
    schema().resource_types.iter().map(|name| &**name)
}

/// The element at `path`, written with element names as in the specification
/// (`Observation.value[x]`, `Patient.contact.name`). The path may go through complex
/// datatypes (`Patient.name.given`) and contentReferences (`Questionnaire.item.item.text`),
/// but not through choice elements or `Resource`-typed elements. `None` if there is no such
/// element.
pub fn element(path: &str) -> Option<&'static Element> {
    let s = schema();
    let mut segments = path.split('.');
    let mut node = s.node(*s.type_roots.get(segments.next()?)?);
    let mut segment = segments.next()?;
    loop {
        let element = node.elements.iter().find(|e| &*e.name == segment)?;
        match segments.next() {
            None => return Some(element),
            Some(next) => {
                segment = next;
                node = match element.types.as_slice() {
                    [
                        ElementType {
                            kind: TypeKind::Node(id),
                            ..
                        },
                    ] => s.node(*id),
                    _ => return None,
                };
            }
        }
    }
}

/// The FHIR primitive datatypes. Their value formats come from the regexes in the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Primitive {
    Base64Binary,
    Boolean,
    Canonical,
    Code,
    Date,
    DateTime,
    Decimal,
    Id,
    Instant,
    Integer,
    Markdown,
    Oid,
    PositiveInt,
    String,
    Time,
    UnsignedInt,
    Uri,
    Url,
    Uuid,
    Xhtml,
}

impl Primitive {
    const ALL: [Primitive; 20] = [
        Primitive::Base64Binary,
        Primitive::Boolean,
        Primitive::Canonical,
        Primitive::Code,
        Primitive::Date,
        Primitive::DateTime,
        Primitive::Decimal,
        Primitive::Id,
        Primitive::Instant,
        Primitive::Integer,
        Primitive::Markdown,
        Primitive::Oid,
        Primitive::PositiveInt,
        Primitive::String,
        Primitive::Time,
        Primitive::UnsignedInt,
        Primitive::Uri,
        Primitive::Url,
        Primitive::Uuid,
        Primitive::Xhtml,
    ];

    /// The FHIR type code, e.g. `dateTime`.
    pub fn code(self) -> &'static str {
        match self {
            Primitive::Base64Binary => "base64Binary",
            Primitive::Boolean => "boolean",
            Primitive::Canonical => "canonical",
            Primitive::Code => "code",
            Primitive::Date => "date",
            Primitive::DateTime => "dateTime",
            Primitive::Decimal => "decimal",
            Primitive::Id => "id",
            Primitive::Instant => "instant",
            Primitive::Integer => "integer",
            Primitive::Markdown => "markdown",
            Primitive::Oid => "oid",
            Primitive::PositiveInt => "positiveInt",
            Primitive::String => "string",
            Primitive::Time => "time",
            Primitive::UnsignedInt => "unsignedInt",
            Primitive::Uri => "uri",
            Primitive::Url => "url",
            Primitive::Uuid => "uuid",
            Primitive::Xhtml => "xhtml",
        }
    }

    fn from_code(code: &str) -> Option<Primitive> {
        Primitive::ALL.into_iter().find(|p| p.code() == code)
    }

    /// Whether the spec's regex for this type matches `value` (the whole of it). Always
    /// true for types without a regex (xhtml) and for the JSON number and boolean types,
    /// whose format the JSON parser already fixed.
    pub fn matches_regex(self, value: &str) -> bool {
        schema().regexes[self as usize]
            .as_ref()
            .is_none_or(|re| re.is_match(value))
    }

    /// Whether `value` has this type's R4 format: the same answer as [`matches_regex`]
    /// (a property test checks it), hand-coded for the types that make up most of real
    /// resources, because a regex search was a third of validation time.
    ///
    /// [`matches_regex`]: Primitive::matches_regex
    pub fn is_valid_format(self, value: &str) -> bool {
        let b = value.as_bytes();
        match self {
            // [ \r\n\t\S]+ with XML Schema whitespace: any character.
            Primitive::String | Primitive::Markdown => !b.is_empty(),
            // \S*
            Primitive::Uri | Primitive::Url | Primitive::Canonical => {
                !b.iter().any(|&c| is_xml_space(c))
            }
            // [^\s]+(\s[^\s]+)*: single spaces between non-space runs.
            Primitive::Code => {
                !b.is_empty()
                    && !is_xml_space(b[0])
                    && !is_xml_space(b[b.len() - 1])
                    && !b
                        .windows(2)
                        .any(|w| is_xml_space(w[0]) && is_xml_space(w[1]))
            }
            // [A-Za-z0-9\-\.]{1,64}
            Primitive::Id => {
                (1..=64).contains(&b.len())
                    && b.iter()
                        .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
            }
            Primitive::Date => DateParts::Date.matches(b),
            Primitive::DateTime => DateParts::DateTime.matches(b),
            Primitive::Instant => DateParts::Instant.matches(b),
            Primitive::Time => {
                let mut c = Cursor { b, i: 0 };
                c.time() && c.at_end()
            }
            // urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}
            Primitive::Uuid => b.strip_prefix(b"urn:uuid:").is_some_and(|u| {
                u.len() == 36
                    && u.iter().enumerate().all(|(i, &c)| match i {
                        8 | 13 | 18 | 23 => c == b'-',
                        _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
                    })
            }),
            // urn:oid:[0-2](\.(0|[1-9][0-9]*))+
            Primitive::Oid => b.strip_prefix(b"urn:oid:").is_some_and(|o| {
                let mut arcs = o.split(|&c| c == b'.');
                let root_ok = arcs.next().is_some_and(|r| matches!(r, b"0" | b"1" | b"2"));
                let mut count = 0;
                let rest_ok = arcs.all(|arc| {
                    count += 1;
                    !arc.is_empty()
                        && arc.iter().all(u8::is_ascii_digit)
                        && (arc == b"0" || arc[0] != b'0')
                });
                root_ok && rest_ok && count > 0
            }),
            // (\s*([0-9a-zA-Z\+/=]){4}\s*)+: runs of base64 characters whose lengths are
            // multiples of 4, separated by whitespace; at least one run.
            Primitive::Base64Binary => {
                let mut run = 0usize;
                let mut any = false;
                for &c in b {
                    if is_xml_space(c) {
                        if !run.is_multiple_of(4) {
                            return false;
                        }
                        run = 0;
                    } else if c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=') {
                        run += 1;
                        any = true;
                    } else {
                        return false;
                    }
                }
                any && run.is_multiple_of(4)
            }
            // JSON booleans and numbers are not strings; xhtml has no regex.
            Primitive::Boolean
            | Primitive::Decimal
            | Primitive::Integer
            | Primitive::PositiveInt
            | Primitive::UnsignedInt
            | Primitive::Xhtml => self.matches_regex(value),
        }
    }
}

/// The XML Schema `\s` class, which the FHIR patterns use (see [`translate_regex`]).
fn is_xml_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

/// How much of `YYYY-MM-DDThh:mm:ss(.s+)(Z|±hh:mm)` a date type allows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DateParts {
    /// `YYYY(-MM(-DD)?)?`
    Date,
    /// `YYYY(-MM(-DD(Thh:mm:ss(.s+)?TZ)?)?)?`
    DateTime,
    /// `YYYY-MM-DDThh:mm:ss(.s+)?TZ`
    Instant,
}

impl DateParts {
    fn matches(self, b: &[u8]) -> bool {
        let mut c = Cursor { b, i: 0 };
        // Year: four digits, not 0000.
        if c.number(4).is_none_or(|y| y == 0) {
            return false;
        }
        let partial_ok = self != DateParts::Instant;
        if c.at_end() {
            return partial_ok;
        }
        if !(c.eat(b'-') && c.number(2).is_some_and(|m| (1..=12).contains(&m))) {
            return false;
        }
        if c.at_end() {
            return partial_ok;
        }
        if !(c.eat(b'-') && c.number(2).is_some_and(|d| (1..=31).contains(&d))) {
            return false;
        }
        if c.at_end() {
            return self != DateParts::Instant;
        }
        self != DateParts::Date && c.eat(b'T') && c.time() && c.zone() && c.at_end()
    }
}

struct Cursor<'b> {
    b: &'b [u8],
    i: usize,
}

impl Cursor<'_> {
    fn at_end(&self) -> bool {
        self.i == self.b.len()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let hit = self.b.get(self.i) == Some(&byte);
        self.i += usize::from(hit);
        hit
    }

    /// Exactly `n` ASCII digits as a number.
    fn number(&mut self, n: usize) -> Option<u32> {
        let digits = self.b.get(self.i..self.i + n)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.i += n;
        Some(
            digits
                .iter()
                .fold(0, |acc, d| acc * 10 + u32::from(d - b'0')),
        )
    }

    /// `hh:mm:ss(.s+)?` with hh ≤ 23, mm ≤ 59, ss ≤ 60 (leap second).
    fn time(&mut self) -> bool {
        let hms = self.number(2).is_some_and(|h| h <= 23)
            && self.eat(b':')
            && self.number(2).is_some_and(|m| m <= 59)
            && self.eat(b':')
            && self.number(2).is_some_and(|s| s <= 60);
        if !hms {
            return false;
        }
        if self.eat(b'.') {
            let start = self.i;
            while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
                self.i += 1;
            }
            return self.i > start;
        }
        true
    }

    /// `Z` or `±hh:mm` with an offset of at most 14:00.
    fn zone(&mut self) -> bool {
        if self.eat(b'Z') {
            return true;
        }
        if !(self.eat(b'+') || self.eat(b'-')) {
            return false;
        }
        match (self.number(2), self.eat(b':'), self.number(2)) {
            (Some(h), true, Some(m)) => (h <= 13 && m <= 59) || (h == 14 && m == 0),
            _ => false,
        }
    }
}

/// One element of a structure definition, e.g. `Patient.name` or `Observation.value[x]`.
#[derive(Debug)]
pub struct Element {
    pub(crate) path: Box<str>,
    pub(crate) name: Box<str>,
    pub(crate) min: u32,
    /// `None` for `*`.
    pub(crate) max: Option<u32>,
    pub(crate) types: Vec<ElementType>,
    pub(crate) choice: bool,
    /// `isSummary` in the definitions.
    pub(crate) summary: bool,
    pub(crate) special: Special,
    /// The required terminology binding, when its value set could be expanded.
    pub(crate) binding: Option<Binding>,
}

impl Element {
    /// The path in the specification, e.g. `Patient.contact.name`.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn min(&self) -> u32 {
        self.min
    }

    /// The maximum cardinality; `None` means unbounded (`*`).
    pub fn max(&self) -> Option<u32> {
        self.max
    }

    /// Whether this is a choice element (`value[x]`).
    pub fn is_choice(&self) -> bool {
        self.choice
    }

    /// Whether the definitions mark this element `isSummary`: part of what `_summary=true`
    /// returns (see [`crate::summary`]). Inherited elements keep their base's flag
    /// (`Patient.id` from `Resource.id`, `Patient.contact.modifierExtension` from
    /// `BackboneElement.modifierExtension`).
    pub fn is_summary(&self) -> bool {
        self.summary
    }

    /// The allowed type codes; for a contentReference, the code of the element it points to.
    pub fn type_codes(&self) -> impl Iterator<Item = &str> {
        self.types.iter().map(|t| &*t.code)
    }

    /// The JSON property names this element may appear under, e.g. `valueQuantity`,
    /// `valueString`, … for `Observation.value[x]`; the element name otherwise.
    pub fn json_names(&self) -> impl Iterator<Item = &str> {
        self.types.iter().map(|t| &*t.json_name)
    }

    /// The value set of this element's `required` binding, if the element has one and its
    /// value set is enumerable from the definitions (see `data/PROVENANCE.md` for the
    /// required bindings that are not, such as mime types and UCUM units).
    pub fn required_binding(&self) -> Option<&'static ValueSet> {
        self.binding.map(|b| schema().value_set(b.value_set))
    }

    pub(crate) fn repeats(&self) -> bool {
        self.max != Some(1)
    }
}

/// A required binding of an element, resolved at load time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Binding {
    /// Index in `Schema::value_sets`.
    pub(crate) value_set: u16,
    pub(crate) kind: BindingKind,
}

/// The type of a bound element, which says how its value is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BindingKind {
    /// A `code`: the string is one of the codes, from any system of the value set.
    Code,
    /// A `Coding`: its system and code are a pair of the value set.
    Coding,
    /// A `CodeableConcept`: see the validator's documentation.
    CodeableConcept,
}

/// The expansion of a value set that a required binding points to: codes by code system, in
/// the order of the definitions. Case-sensitive, as every R4 code system it comes from.
#[derive(Debug)]
pub struct ValueSet {
    id: Box<str>,
    url: Box<str>,
    include: Vec<SystemCodes>,
}

#[derive(Debug)]
struct SystemCodes {
    system: Box<str>,
    /// In definition order, for diagnostics.
    codes: Vec<Box<str>>,
    set: HashSet<Box<str>, FxBuildHasher>,
}

impl SystemCodes {
    /// Up to this many codes, comparing them in turn beats hashing (most R4 value sets have
    /// 2 to 6 codes, and most comparisons stop at the length).
    const SCAN_MAX: usize = 8;

    fn contains(&self, code: &str) -> bool {
        if self.codes.len() <= Self::SCAN_MAX {
            self.codes.iter().any(|c| **c == *code)
        } else {
            self.set.contains(code)
        }
    }
}

impl ValueSet {
    /// The value set's id, e.g. `administrative-gender`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The canonical URL, e.g. `http://hl7.org/fhir/ValueSet/administrative-gender`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The code systems the codes come from.
    pub fn systems(&self) -> impl Iterator<Item = &str> {
        self.include.iter().map(|s| &*s.system)
    }

    /// Every (system, code) pair, in definition order.
    pub fn codes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.include
            .iter()
            .flat_map(|s| s.codes.iter().map(move |c| (&*s.system, &**c)))
    }

    /// The number of codes.
    pub fn len(&self) -> usize {
        self.include.iter().map(|s| s.codes.len()).sum()
    }

    /// Never true: the generator keeps no empty value set.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `code` is a code of the value set, from any of its systems (what a `code`
    /// element, which carries no system, is checked against).
    pub fn contains_code(&self, code: &str) -> bool {
        self.include.iter().any(|s| s.contains(code))
    }

    /// Whether the value set includes codes of `system`.
    pub fn includes_system(&self, system: &str) -> bool {
        self.system_codes(system).is_some()
    }

    /// Whether `code` of `system` is in the value set.
    pub fn contains(&self, system: &str, code: &str) -> bool {
        self.system_codes(system).is_some_and(|s| s.contains(code))
    }

    fn system_codes(&self, system: &str) -> Option<&SystemCodes> {
        self.include.iter().find(|s| &*s.system == system)
    }

    /// The codes of `system` (all codes for `None`) in definition order.
    pub(crate) fn codes_of(&self, system: Option<&str>) -> impl Iterator<Item = &str> {
        self.include
            .iter()
            .filter(move |s| system.is_none_or(|sys| &*s.system == sys))
            .flat_map(|s| s.codes.iter().map(|c| &**c))
    }

    fn build(id: &str, raw: &RawValueSet) -> Result<ValueSet, String> {
        let mut include = Vec::with_capacity(raw.include.len());
        for (system, codes) in &raw.include {
            let codes: Vec<Box<str>> = serde_json::from_value::<Vec<String>>(codes.clone())
                .map_err(|e| format!("value set {id}: {e}"))?
                .into_iter()
                .map(String::into_boxed_str)
                .collect();
            let set: HashSet<Box<str>, FxBuildHasher> = codes.iter().cloned().collect();
            if codes.is_empty() || set.len() != codes.len() {
                return Err(format!(
                    "value set {id}: empty or repeated codes for {system}"
                ));
            }
            if codes.iter().any(|c| !Primitive::Code.is_valid_format(c)) {
                return Err(format!(
                    "value set {id}: a code of {system} is not a valid code"
                ));
            }
            include.push(SystemCodes {
                system: system.as_str().into(),
                codes,
                set,
            });
        }
        if include.is_empty() {
            return Err(format!("value set {id} is empty"));
        }
        Ok(ValueSet {
            id: id.into(),
            url: raw.url.as_str().into(),
            include,
        })
    }
}

/// One allowed type of an element, resolved to what validation walks into.
#[derive(Debug)]
pub(crate) struct ElementType {
    pub(crate) code: Box<str>,
    /// The JSON property name: `valueQuantity` for a choice, the element name otherwise.
    pub(crate) json_name: Box<str>,
    /// `_valueString`: the id/extension companion, for primitives other than xhtml.
    pub(crate) extension_name: Option<Box<str>>,
    pub(crate) kind: TypeKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TypeKind {
    Primitive(Primitive),
    /// A complex datatype, an inline BackboneElement or a contentReference target.
    Node(NodeId),
    /// A resource of any type (`None`) or of the given concrete type.
    Resource(Option<NodeId>),
}

/// Rules that are not expressible as elements and types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Special {
    None,
    /// `Reference.reference`: the string has a reference syntax.
    ReferenceString,
    /// `DomainResource.contained`: the dom-2/4/5 rules apply to the items.
    Contained,
}

pub(crate) type NodeId = u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeKind {
    Resource,
    Datatype,
    Backbone,
}

/// What a JSON property name means in a node.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Child {
    /// Index in `Node::elements`.
    pub(crate) element: u16,
    /// Index in `Element::types`.
    pub(crate) ty: u8,
    /// This is the `_name` (id/extension) companion of a primitive.
    pub(crate) primitive_extension: bool,
    /// `1 << i` if the element is `Node::required[i]`, else 0: presence of required
    /// elements is collected as bits while walking the object, with no extra lookups.
    pub(crate) required_bit: u64,
}

/// A resource type, a complex datatype or an inline BackboneElement, with its elements.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) path: Box<str>,
    pub(crate) kind: NodeKind,
    pub(crate) elements: Vec<Element>,
    pub(crate) children: HashMap<Box<str>, Child, FxBuildHasher>,
    /// Indices of the elements with `min >= 1` (at most 64; R4 has at most 9 in a node).
    pub(crate) required: Vec<u16>,
    /// The Extension datatype: ext-1 applies.
    pub(crate) is_extension: bool,
}

impl Node {
    pub(crate) fn child(&self, json_name: &str) -> Option<(Child, &Element)> {
        let child = *self.children.get(json_name)?;
        Some((child, &self.elements[usize::from(child.element)]))
    }
}

pub(crate) struct Schema {
    fhir_version: String,
    resource_types: Vec<Box<str>>,
    abstract_resource_types: Vec<Box<str>>,
    nodes: Vec<Node>,
    /// Every resource type and complex datatype (abstract ones too) by name.
    type_roots: HashMap<Box<str>, NodeId>,
    /// Concrete resource types only.
    resource_roots: HashMap<Box<str>, NodeId>,
    /// Indexed by `Primitive as usize`; compiled once here, never per call.
    regexes: Vec<Option<Regex>>,
    /// The value sets of the required bindings, sorted by id; `Binding::value_set` indexes it.
    value_sets: Vec<ValueSet>,
    pub(crate) element_node: NodeId,
}

impl Schema {
    pub(crate) fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    pub(crate) fn value_set(&self, index: u16) -> &ValueSet {
        &self.value_sets[usize::from(index)]
    }

    pub(crate) fn resource_node(&self, name: &str) -> Option<NodeId> {
        self.resource_roots.get(name).copied()
    }

    pub(crate) fn is_abstract_resource_type(&self, name: &str) -> bool {
        self.abstract_resource_types.iter().any(|t| &**t == name)
    }

    fn build(text: &str) -> Result<Schema, String> {
        let raw: RawSchema = serde_json::from_str(text).map_err(|e| e.to_string())?;
        Builder::new(&raw)?.finish(raw.fhir_version.clone())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSchema {
    fhir_version: String,
    primitives: HashMap<String, Option<String>>,
    resources: Vec<String>,
    abstract_resources: Vec<String>,
    types: HashMap<String, RawType>,
    value_sets: HashMap<String, RawValueSet>,
    /// Element path (as in the snapshots) to value set id.
    bindings: HashMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawValueSet {
    url: String,
    /// Code system to codes, in definition order (serde_json keeps it: `preserve_order`).
    include: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawType {
    kind: String,
    #[serde(rename = "abstract")]
    _is_abstract: bool,
    base: Option<String>,
    elements: Vec<Row>,
}

/// `[path relative to the type, min, max, "code|code" or "#contentReference"]`, and a fifth
/// item `true` when the element is marked `isSummary`.
#[derive(Deserialize, Clone, PartialEq, Debug)]
struct Row(String, u32, String, String, #[serde(default)] bool);

const INLINE_TYPES: [&str; 2] = ["BackboneElement", "Element"];

struct Builder<'r> {
    raw: &'r RawSchema,
    /// Every type's rows, inherited ones included (the generator left those out), with the
    /// rows grouped by parent (`""` for the type's top level).
    types: HashMap<&'r str, TypeRows>,
    /// Node ids by full path (`Patient`, `Patient.contact`).
    ids: HashMap<String, NodeId>,
    /// (type name, relative path or "" for the root) of each node, by id.
    order: Vec<(&'r str, String)>,
}

#[derive(Default)]
struct TypeRows {
    rows: Vec<Row>,
    /// Indices into `rows` of the direct children of each parent path.
    children: HashMap<String, Vec<usize>>,
    /// Relative paths of the inline (BackboneElement/Element with children) elements.
    inline: Vec<String>,
}

impl<'r> Builder<'r> {
    fn new(raw: &'r RawSchema) -> Result<Builder<'r>, String> {
        let mut b = Builder {
            raw,
            types: HashMap::new(),
            ids: HashMap::new(),
            order: Vec::new(),
        };
        let mut names: Vec<&str> = raw.types.keys().map(String::as_str).collect();
        names.sort_unstable();
        for &name in &names {
            b.complete(name)?;
        }
        for &name in &names {
            b.add_node(name, String::new());
            for rel in b.types[name].inline.clone() {
                b.add_node(name, rel);
            }
        }
        Ok(b)
    }

    fn add_node(&mut self, type_name: &'r str, rel: String) {
        let id = self.order.len() as NodeId;
        self.ids.insert(full_path(type_name, &rel), id);
        self.order.push((type_name, rel));
    }

    /// Rebuilds the rows of `name` that the generator left out, as `full_rows` in
    /// tools/gen-r4-schema.py does: the base type's top-level rows, then the type's own
    /// (replacing inherited ones of the same path), then the BackboneElement/Element rows of
    /// each inline element.
    fn complete(&mut self, name: &str) -> Result<(), String> {
        if self.types.contains_key(name) {
            return Ok(());
        }
        let (key, t) = self
            .raw
            .types
            .get_key_value(name)
            .ok_or_else(|| format!("unknown type {name}"))?;
        let mut rows: Vec<Row> = Vec::new();
        if let Some(base) = &t.base {
            self.complete(base)?;
            let base_rows = &self.types[base.as_str()].rows;
            rows.extend(base_rows.iter().filter(|r| !r.0.contains('.')).cloned());
        }
        for row in &t.elements {
            match rows.iter_mut().find(|r| r.0 == row.0) {
                Some(existing) => *existing = row.clone(),
                None => rows.push(row.clone()),
            }
        }
        let parents: std::collections::HashSet<&str> = rows
            .iter()
            .filter_map(|r| r.0.rsplit_once('.').map(|(parent, _)| parent))
            .collect();
        let inline: Vec<(String, String)> = rows
            .iter()
            .filter(|r| INLINE_TYPES.contains(&r.3.as_str()) && parents.contains(r.0.as_str()))
            .map(|r| (r.0.clone(), r.3.clone()))
            .collect();
        for (parent, parent_type) in &inline {
            self.complete(parent_type)?;
            for inherited in &self.types[parent_type.as_str()].rows {
                let path = format!("{parent}.{}", inherited.0);
                if !rows.iter().any(|r| r.0 == path) {
                    rows.push(Row(
                        path,
                        inherited.1,
                        inherited.2.clone(),
                        inherited.3.clone(),
                        inherited.4,
                    ));
                }
            }
        }
        let mut children: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, row) in rows.iter().enumerate() {
            let parent = row.0.rsplit_once('.').map_or("", |(parent, _)| parent);
            children.entry(parent.to_string()).or_default().push(i);
        }
        let inline = inline.into_iter().map(|(rel, _)| rel).collect();
        self.types.insert(
            key.as_str(),
            TypeRows {
                rows,
                children,
                inline,
            },
        );
        Ok(())
    }

    fn finish(self, fhir_version: String) -> Result<Schema, String> {
        let raw = self.raw;
        let mut regexes = Vec::new();
        for p in Primitive::ALL {
            let regex = match raw.primitives.get(p.code()) {
                None => return Err(format!("primitive {} missing", p.code())),
                Some(None) => None,
                Some(Some(spec)) => Some(
                    Regex::new(&format!("^(?:{})$", translate_regex(spec)))
                        .map_err(|e| format!("regex of {}: {e}", p.code()))?,
                ),
            };
            regexes.push(regex);
        }
        if raw.primitives.len() != Primitive::ALL.len() {
            return Err("unexpected primitive types".into());
        }

        let mut vs_ids: Vec<&str> = raw.value_sets.keys().map(String::as_str).collect();
        vs_ids.sort_unstable();
        let value_sets = vs_ids
            .iter()
            .map(|&id| ValueSet::build(id, &raw.value_sets[id]))
            .collect::<Result<Vec<_>, _>>()?;
        let vs_index: HashMap<&str, u16> = vs_ids
            .iter()
            .enumerate()
            .map(|(i, &id)| Ok((id, u16::try_from(i).map_err(|_| "too many value sets")?)))
            .collect::<Result<_, String>>()?;

        let mut nodes = Vec::with_capacity(self.order.len());
        for (type_name, rel) in &self.order {
            nodes.push(self.build_node(type_name, rel, &vs_index)?);
        }
        // Each element path is one element, so every binding must have been used once.
        let bound = nodes
            .iter()
            .flat_map(|n| &n.elements)
            .filter(|e| e.binding.is_some())
            .count();
        if bound != raw.bindings.len() {
            return Err(format!(
                "{} bindings but {bound} bound elements: a binding names no element",
                raw.bindings.len()
            ));
        }
        let mut used = vec![false; value_sets.len()];
        for element in nodes.iter().flat_map(|n| &n.elements) {
            if let Some(b) = element.binding {
                used[usize::from(b.value_set)] = true;
            }
        }
        if let Some(unused) = used.iter().position(|u| !u) {
            return Err(format!("value set {} is bound nowhere", vs_ids[unused]));
        }
        let type_roots = raw
            .types
            .keys()
            .map(|name| (name.as_str().into(), self.ids[name.as_str()]))
            .collect();
        let mut resource_types: Vec<Box<str>> =
            raw.resources.iter().map(|s| s.as_str().into()).collect();
        resource_types.sort_unstable();
        let resource_roots = resource_types
            .iter()
            .map(|name| {
                let id = *self
                    .ids
                    .get(&**name)
                    .ok_or_else(|| format!("resource {name} has no definition"))?;
                Ok((name.clone(), id))
            })
            .collect::<Result<_, String>>()?;
        Ok(Schema {
            fhir_version,
            resource_types,
            abstract_resource_types: raw
                .abstract_resources
                .iter()
                .map(|s| s.as_str().into())
                .collect(),
            nodes,
            type_roots,
            resource_roots,
            regexes,
            value_sets,
            element_node: self.ids["Element"],
        })
    }

    fn build_node(
        &self,
        type_name: &str,
        rel: &str,
        vs_index: &HashMap<&str, u16>,
    ) -> Result<Node, String> {
        let raw_type = &self.raw.types[type_name];
        let type_rows = &self.types[type_name];
        let path = full_path(type_name, rel);
        let kind = if !rel.is_empty() {
            NodeKind::Backbone
        } else if raw_type.kind == "resource" {
            NodeKind::Resource
        } else {
            NodeKind::Datatype
        };
        let mut elements = Vec::new();
        for &i in type_rows.children.get(rel).map_or(&[][..], Vec::as_slice) {
            let row = &type_rows.rows[i];
            let name = row
                .0
                .rsplit_once('.')
                .map_or(row.0.as_str(), |(_, name)| name);
            elements.push(self.build_element(type_name, &path, name, row, vs_index)?);
        }
        let mut children = HashMap::default();
        let mut required = Vec::new();
        for (index, element) in elements.iter().enumerate() {
            let index = u16::try_from(index).map_err(|_| "too many elements")?;
            let mut required_bit = 0;
            if element.min > 0 {
                if required.len() == 64 {
                    return Err(format!("more than 64 required elements in {path}"));
                }
                required_bit = 1 << required.len();
                required.push(index);
            }
            for (ty, t) in element.types.iter().enumerate() {
                let ty = u8::try_from(ty).map_err(|_| "too many types")?;
                let mut insert = |name: String, primitive_extension| {
                    let child = Child {
                        element: index,
                        ty,
                        primitive_extension,
                        required_bit,
                    };
                    match children.insert(name.into_boxed_str(), child) {
                        None => Ok(()),
                        Some(_) => Err(format!("duplicate JSON name in {path}")),
                    }
                };
                insert(t.json_name.to_string(), false)?;
                if let Some(extension_name) = &t.extension_name {
                    insert(extension_name.to_string(), true)?;
                }
            }
        }
        Ok(Node {
            is_extension: path == "Extension",
            path: path.into(),
            kind,
            elements,
            children,
            required,
        })
    }

    fn build_element(
        &self,
        type_name: &str,
        node_path: &str,
        name: &str,
        row: &Row,
        vs_index: &HashMap<&str, u16>,
    ) -> Result<Element, String> {
        let Row(rel, min, max, codes, summary) = row;
        let path = format!("{node_path}.{name}");
        let max = match max.as_str() {
            "*" => None,
            n => Some(n.parse().map_err(|_| format!("bad max at {path}"))?),
        };
        let choice = name.ends_with("[x]");
        let stem = name.trim_end_matches("[x]");
        let mut types = Vec::new();
        if let Some(target) = codes.strip_prefix('#') {
            let id = *self
                .ids
                .get(&full_path(type_name, target))
                .ok_or_else(|| format!("contentReference {codes} at {path}"))?;
            types.push(ElementType {
                code: format!("{type_name}.{target}").into(),
                json_name: name.into(),
                extension_name: None,
                kind: TypeKind::Node(id),
            });
        } else {
            for code in codes.split('|') {
                let kind = if let Some(p) = Primitive::from_code(code) {
                    TypeKind::Primitive(p)
                } else if code == "Resource" {
                    TypeKind::Resource(None)
                } else if self
                    .raw
                    .types
                    .get(code)
                    .is_some_and(|t| t.kind == "resource")
                {
                    TypeKind::Resource(Some(self.ids[code]))
                } else if let Some(&id) = INLINE_TYPES
                    .contains(&code)
                    .then(|| self.ids.get(&full_path(type_name, rel)))
                    .flatten()
                {
                    TypeKind::Node(id)
                } else {
                    TypeKind::Node(
                        *self
                            .ids
                            .get(code)
                            .ok_or_else(|| format!("unknown type {code} at {path}"))?,
                    )
                };
                let json_name = if choice {
                    let mut upper = code.chars();
                    let first = upper.next().ok_or("empty type code")?;
                    format!("{stem}{}{}", first.to_ascii_uppercase(), upper.as_str())
                } else {
                    name.to_string()
                };
                // xhtml admits no extensions (xhtml.extension is 0..0).
                let extension_name =
                    matches!(kind, TypeKind::Primitive(p) if p != Primitive::Xhtml)
                        .then(|| format!("_{json_name}").into());
                types.push(ElementType {
                    code: code.into(),
                    json_name: json_name.into(),
                    extension_name,
                    kind,
                });
            }
        }
        let special = if path == "Reference.reference" {
            Special::ReferenceString
        } else if name == "contained"
            && rel == "contained"
            && types.iter().all(|t| t.kind == TypeKind::Resource(None))
        {
            Special::Contained
        } else {
            Special::None
        };
        let binding = match self.raw.bindings.get(&path) {
            None => None,
            Some(vs) => {
                let value_set = *vs_index
                    .get(vs.as_str())
                    .ok_or_else(|| format!("unknown value set {vs} bound at {path}"))?;
                let kind = match types.as_slice() {
                    [t] if t.kind == TypeKind::Primitive(Primitive::Code) => BindingKind::Code,
                    [t] if &*t.code == "Coding" => BindingKind::Coding,
                    [t] if &*t.code == "CodeableConcept" => BindingKind::CodeableConcept,
                    _ => return Err(format!("binding at {path}, which is not a code type")),
                };
                Some(Binding { value_set, kind })
            }
        };
        Ok(Element {
            path: path.into(),
            name: name.into(),
            min: *min,
            max,
            types,
            choice,
            summary: *summary,
            special,
            binding,
        })
    }
}

/// FxHash (as in rustc): the child maps are looked up once per JSON property, and SipHash
/// was a sixth of validation time. Flooding is no concern: the maps are built once from our
/// own data and never grow, so a hostile key costs at most a probe through a small table.
#[derive(Clone, Copy, Default)]
pub(crate) struct FxBuildHasher;

impl std::hash::BuildHasher for FxBuildHasher {
    type Hasher = FxHasher;
    fn build_hasher(&self) -> FxHasher {
        FxHasher(0)
    }
}

pub(crate) struct FxHasher(u64);

impl FxHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, mut bytes: &[u8]) {
        while let Some((word, rest)) = bytes.split_first_chunk::<8>() {
            self.add(u64::from_le_bytes(*word));
            bytes = rest;
        }
        if let Some((word, rest)) = bytes.split_first_chunk::<4>() {
            self.add(u64::from(u32::from_le_bytes(*word)));
            bytes = rest;
        }
        if let Some((word, rest)) = bytes.split_first_chunk::<2>() {
            self.add(u64::from(u16::from_le_bytes(*word)));
            bytes = rest;
        }
        if let Some(&byte) = bytes.first() {
            self.add(u64::from(byte));
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

fn full_path(type_name: &str, rel: &str) -> String {
    if rel.is_empty() {
        type_name.to_string()
    } else {
        format!("{type_name}.{rel}")
    }
}

/// Rewrites a spec regex for the `regex` crate.
///
/// The FHIR patterns come from the XML Schema (fhir-base.xsd), where `\s` is the XML
/// whitespace class `[ \t\n\r]`; the `regex` crate's `\s` is Unicode whitespace, which would
/// reject e.g. a no-break space in a `string`. Everything else in the R4 patterns means the
/// same in both dialects.
fn translate_regex(spec: &str) -> String {
    let mut out = String::with_capacity(spec.len() + 32);
    let mut chars = spec.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('s') => out.push_str(r"[ \t\n\r]"),
            Some('S') => out.push_str(r"[^ \t\n\r]"),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn loads_all_r4_resource_types() {
        assert_eq!(fhir_version(), "4.0.1");
        let types: Vec<_> = resource_types().collect();
        assert_eq!(types.len(), 146);
        assert!(types.windows(2).all(|w| w[0] < w[1]), "sorted");
        for name in [
            "Patient",
            "Observation",
            "Bundle",
            "Questionnaire",
            "Parameters",
        ] {
            assert!(is_resource_type(name), "{name}");
        }
        for name in [
            "Resource",
            "DomainResource",
            "HumanName",
            "SubscriptionStatus",
            "",
        ] {
            assert!(!is_resource_type(name), "{name}");
        }
    }

    #[test]
    fn rebuilds_inherited_elements() {
        // From Resource, DomainResource, BackboneElement and Quantity.
        for path in [
            "Patient.id",
            "Patient.meta",
            "Patient.contained",
            "Patient.contact.modifierExtension",
            "Timing.repeat.extension",
            "Age.value",
            "Bundle.id",
        ] {
            assert!(element(path).is_some(), "{path}");
        }
        assert!(
            element("Bundle.text").is_none(),
            "Bundle is not a DomainResource"
        );
        assert!(
            element("Timing.repeat.modifierExtension").is_none(),
            "Element, not Backbone"
        );
        assert_eq!(
            element("Patient.id")
                .unwrap()
                .type_codes()
                .collect::<Vec<_>>(),
            ["id"]
        );
    }

    #[test]
    fn has_r4_elements_only() {
        // What the npm package adds to R4 is left out (tools/gen-r4-schema.py, NON_R4_ELEMENTS):
        // Medplum's own elements and R5 backports.
        for path in [
            "Meta.project",
            "Meta.author",
            "Meta.onBehalfOf",
            "Meta.account",
            "Meta.accounts",
            "Meta.compartment",
            "ObservationDefinition.publisher",
            "Binary.url",
            "DeviceDefinition.classification",
            "DeviceDefinition.bodySite",
            "ResearchStudy.name",
            "ResearchStudy.studyDesign",
            "ResearchStudy.recruitment",
            "ResearchStudy.objective.description",
            "EvidenceVariable.characteristic.definitionByTypeAndValue",
            "EvidenceVariable.characteristic.linkId",
        ] {
            assert!(element(path).is_none(), "{path} is not R4");
        }
        // R4's Meta, as resource.html#Meta defines it.
        let s = schema();
        let meta = s.node(s.type_roots["Meta"]);
        let mut names: Vec<&str> = meta.elements.iter().map(|e| &*e.name).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "extension",
                "id",
                "lastUpdated",
                "profile",
                "security",
                "source",
                "tag",
                "versionId"
            ]
        );
        // EvidenceVariable.characteristic as R4 has it, not the package's R5 shape.
        let characteristic = element("EvidenceVariable.characteristic").unwrap();
        assert_eq!(characteristic.min(), 1);
        let definition = element("EvidenceVariable.characteristic.definition[x]").unwrap();
        assert_eq!(definition.min(), 1);
        assert!(
            definition
                .json_names()
                .any(|n| n == "definitionTriggerDefinition")
        );
        assert_eq!(
            element("EvidenceVariable.characteristic.description")
                .unwrap()
                .type_codes()
                .collect::<Vec<_>>(),
            ["string"]
        );
        assert!(element("EvidenceVariable.characteristic.timeFromStart").is_some());
        assert_eq!(
            element("Bundle.entry.response.outcome")
                .unwrap()
                .type_codes()
                .collect::<Vec<_>>(),
            ["Resource"]
        );
    }

    #[test]
    fn resolves_choices_and_content_references() {
        let value = element("Observation.value[x]").unwrap();
        assert!(value.is_choice());
        assert!(value.json_names().any(|n| n == "valueQuantity"));
        assert!(value.json_names().any(|n| n == "valueDateTime"));
        assert_eq!(
            element("Questionnaire.item.item.item.linkId")
                .unwrap()
                .min(),
            1
        );
        assert_eq!(element("Patient.name.given").unwrap().max(), None);
        assert_eq!(element("Patient.gender").unwrap().max(), Some(1));
        assert!(element("Patient.nope").is_none());
        assert!(element("Nope.id").is_none());
    }

    #[test]
    fn summary_flags_follow_the_definitions() {
        let summary = |path: &str| {
            element(path)
                .unwrap_or_else(|| panic!("{path}"))
                .is_summary()
        };
        for path in [
            // From Resource, inherited.
            "Patient.id",
            "Patient.meta",
            "Patient.implicitRules",
            "Patient.identifier",
            "Patient.name",
            "Patient.birthDate",
            "Patient.deceased[x]",
            "Patient.managingOrganization",
            // A modifier BackboneElement and its required children.
            "Patient.link",
            "Patient.link.other",
            "Patient.link.type",
            // From BackboneElement, inherited by every inline node.
            "Patient.contact.modifierExtension",
            "Observation.status",
            "Observation.code",
            "Observation.value[x]",
            "Observation.component",
            "Observation.component.code",
            "Observation.component.value[x]",
            // Through a contentReference (Bundle.entry.link is Bundle.link).
            "Bundle.entry.link.url",
            // Datatype elements carry the flag too; Age.value is Quantity.value.
            "HumanName.family",
            "Attachment.contentType",
            "Age.value",
        ] {
            assert!(summary(path), "{path} is summary");
        }
        for path in [
            "Patient.language",
            "Patient.text",
            "Patient.contained",
            "Patient.extension",
            // A modifier, yet not summary in R4: summarize keeps it anyway.
            "Patient.modifierExtension",
            "Patient.maritalStatus",
            "Patient.multipleBirth[x]",
            "Patient.photo",
            "Patient.contact",
            "Patient.contact.name",
            "Patient.communication",
            "Patient.communication.language",
            "Patient.generalPractitioner",
            "Patient.contact.id",
            "Patient.contact.extension",
            "Observation.category",
            "Observation.note",
            "Observation.referenceRange",
            "Observation.component.interpretation",
            "Attachment.data",
            "HumanName.extension",
        ] {
            assert!(!summary(path), "{path} is not summary");
        }
        let s = schema();
        let flagged = s
            .nodes
            .iter()
            .flat_map(|n| &n.elements)
            .filter(|e| e.summary)
            .count();
        // As many as the snapshots of the package mark (the generator left inherited ones out).
        assert_eq!(flagged, 3_266, "regenerated definitions? read the diff");
    }

    /// What summarize keeps of a node: the resource roots, then the summary inline nodes.
    fn required_dropped_by_summary(s: &Schema, node: &Node, out: &mut Vec<String>) {
        for element in &node.elements {
            if element.min >= 1 && !element.summary {
                out.push(element.path.to_string());
            }
            if !element.summary {
                continue;
            }
            for t in &element.types {
                if let TypeKind::Node(id) = t.kind {
                    let inner = s.node(id);
                    // Content references point back up (Questionnaire.item.item): stop there.
                    if inner.kind == NodeKind::Backbone && inner.path.len() > node.path.len() {
                        required_dropped_by_summary(s, inner, out);
                    }
                }
            }
        }
    }

    #[test]
    fn a_summary_drops_required_elements_of_four_types_only() {
        let s = schema();
        let mut dropped = Vec::new();
        for name in resource_types() {
            let root = s.node(s.resource_node(name).unwrap());
            required_dropped_by_summary(s, root, &mut dropped);
        }
        dropped.sort();
        assert_eq!(
            dropped,
            [
                "Appointment.participant",
                "AuditEvent.agent",
                "AuditEvent.source",
                "Provenance.agent"
            ]
        );
    }

    #[test]
    fn every_node_is_reachable_and_has_children() {
        let s = schema();
        for node in &s.nodes {
            assert!(!node.elements.is_empty(), "{}", node.path);
            for element in &node.elements {
                assert!(!element.types.is_empty(), "{}", element.path);
            }
        }
        assert!(s.node(s.element_node).children.contains_key("extension"));
    }

    #[test]
    fn required_bindings_resolve_to_expanded_value_sets() {
        let s = schema();
        let bound: Vec<&Element> = s
            .nodes
            .iter()
            .flat_map(|n| &n.elements)
            .filter(|e| e.binding.is_some())
            .collect();
        // 366 required bindings in R4, 17 of them not enumerable.
        assert_eq!(bound.len(), 349);
        assert_eq!(s.value_sets.len(), 220);
        assert!(s.value_sets.iter().all(|vs| !vs.is_empty()));

        // Bound as `…/administrative-gender|4.0.1`: the versioned canonical resolves.
        let gender = element("Patient.gender")
            .unwrap()
            .required_binding()
            .unwrap();
        assert_eq!(gender.id(), "administrative-gender");
        assert_eq!(
            gender.codes().collect::<Vec<_>>(),
            ["male", "female", "other", "unknown"]
                .map(|c| ("http://hl7.org/fhir/administrative-gender", c))
        );
        // Elements share one value set.
        let status = |path: &str| element(path).unwrap().required_binding().unwrap().id();
        assert_eq!(status("Practitioner.gender"), "administrative-gender");
        assert_eq!(status("Bundle.entry.request.method"), "http-verb");
        assert_eq!(status("Questionnaire.item.item.type"), "item-type");
        assert_eq!(status("Age.comparator"), "quantity-comparator");
        // The package binds this one to an R5 value set; the generator restores R4's.
        assert_eq!(status("DetectedIssue.status"), "observation-status");

        // Nested concepts are in, abstract ones out.
        let observation = element("Observation.status")
            .unwrap()
            .required_binding()
            .unwrap();
        assert!(observation.contains_code("corrected"));
        let items = element("Questionnaire.item.type")
            .unwrap()
            .required_binding()
            .unwrap();
        assert!(items.contains_code("boolean") && !items.contains_code("question"));

        // Several code systems in one value set.
        let timing = element("Timing.repeat.when")
            .unwrap()
            .required_binding()
            .unwrap();
        assert!(timing.contains("http://hl7.org/fhir/event-timing", "MORN"));
        assert!(timing.contains("http://terminology.hl7.org/CodeSystem/v3-TimingEvent", "AC"));
        assert!(!timing.contains("http://hl7.org/fhir/event-timing", "AC"));
        assert!(timing.contains_code("AC") && timing.contains_code("MORN"));

        let clinical = element("Condition.clinicalStatus").unwrap();
        assert_eq!(
            clinical.binding.map(|b| b.kind),
            Some(BindingKind::CodeableConcept)
        );
        assert!(
            clinical
                .required_binding()
                .unwrap()
                .includes_system("http://terminology.hl7.org/CodeSystem/condition-clinical")
        );

        // Not enumerable from the definitions: recorded nowhere (see PROVENANCE.md).
        for path in [
            "Attachment.contentType",
            "Binary.contentType",
            "Money.currency",
            "MolecularSequence.structureVariant.variantType",
            "RiskEvidenceSynthesis.riskEstimate.unitOfMeasure",
            // Preferred and extensible bindings are never recorded.
            "Patient.language",
            "Patient.maritalStatus",
        ] {
            let element = element(path).unwrap();
            assert!(element.required_binding().is_none(), "{path}");
        }
    }

    const FAST: [Primitive; 14] = [
        Primitive::Uuid,
        Primitive::Oid,
        Primitive::Base64Binary,
        Primitive::String,
        Primitive::Markdown,
        Primitive::Uri,
        Primitive::Url,
        Primitive::Canonical,
        Primitive::Code,
        Primitive::Id,
        Primitive::Date,
        Primitive::DateTime,
        Primitive::Instant,
        Primitive::Time,
    ];

    /// Strings that match the spec regex of `p`, and near misses of them.
    fn format_samples(p: Primitive) -> impl Strategy<Value = String> {
        let spec = schema_raw_regex(p);
        let pattern = translate_regex(&spec);
        let matching = || proptest::string::string_regex(&pattern).unwrap();
        let noise = "[0-9a-fT:.Z+/=\\- \t\n\u{a0}é]{0,3}";
        prop_oneof![
            matching(),
            "[0-9T:.Z+\\- a\t]{0,30}",
            (
                matching(),
                any::<prop::sample::Index>(),
                noise,
                any::<bool>()
            )
                .prop_map(|(s, at, noise, replace)| {
                    let cut = s
                        .char_indices()
                        .map(|(i, _)| i)
                        .chain([s.len()])
                        .collect::<Vec<_>>();
                    let i = *at.get(&cut);
                    let rest = if replace {
                        s[i..].chars().skip(1).collect::<String>()
                    } else {
                        s[i..].to_string()
                    };
                    format!("{}{noise}{rest}", &s[..i])
                }),
        ]
    }

    fn schema_raw_regex(p: Primitive) -> String {
        let raw: RawSchema = serde_json::from_str(SCHEMA_JSON).unwrap();
        raw.primitives[p.code()].clone().unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The hand-coded formats agree with the spec regexes.
        #[test]
        fn hand_coded_formats_equal_the_regexes(
            (p, s) in prop::sample::select(&FAST[..]).prop_flat_map(|p| (Just(p), format_samples(p)))
        ) {
            prop_assert_eq!(p.is_valid_format(&s), p.matches_regex(&s), "{:?} {:?}", p, s);
        }
    }

    #[test]
    fn hand_coded_formats_on_edge_cases() {
        let cases = [
            (Primitive::Date, "0000", false),
            (Primitive::Date, "0001", true),
            (Primitive::Date, "2020-00", false),
            (Primitive::DateTime, "2020-01-01T00:00:00+14:00", true),
            (Primitive::DateTime, "2020-01-01T00:00:00+14:01", false),
            (Primitive::DateTime, "2020-01-01T00:00:00-13:59", true),
            (Primitive::DateTime, "2020-01-01T00:00:00.Z", false),
            (Primitive::DateTime, "2020-01T00:00:00Z", false),
            (Primitive::Instant, "2020-01-01", false),
            (Primitive::Time, "23:59:60.123", true),
            (Primitive::Time, "23:59:61", false),
            (Primitive::Code, "a b c", true),
            (Primitive::Code, "a\tb", true),
            (Primitive::Code, "a\n", false),
            (Primitive::Id, "", false),
            (Primitive::Oid, "urn:oid:1", false),
            (Primitive::Oid, "urn:oid:1.0.10", true),
            (Primitive::Oid, "urn:oid:1.", false),
            (
                Primitive::Uuid,
                "urn:uuid:c757873d-ec9a-4326-a141-556f4323952",
                false,
            ),
            (Primitive::Base64Binary, " aGVs\nbG8= ", true),
            (Primitive::Base64Binary, "aGV sbG8=", false),
            (Primitive::Base64Binary, "  ", false),
        ];
        for (p, s, expected) in cases {
            assert_eq!(p.is_valid_format(s), expected, "{p:?} {s:?}");
            assert_eq!(p.matches_regex(s), expected, "{p:?} {s:?}");
        }
    }

    #[test]
    fn regexes_use_xml_schema_whitespace() {
        assert!(Primitive::String.matches_regex("a\u{a0}b"));
        assert!(!Primitive::Uri.matches_regex("http://a b"));
        assert!(Primitive::Uri.matches_regex("http://a\u{a0}b"));
        assert!(!Primitive::Code.matches_regex(" a"));
        assert!(Primitive::Code.matches_regex("a b"));
        assert!(!Primitive::Code.matches_regex("a  b"));
        assert!(Primitive::Id.matches_regex("a-1.B"));
        assert!(!Primitive::Id.matches_regex(&"a".repeat(65)));
        assert!(Primitive::Date.matches_regex("2020-02"));
        assert!(!Primitive::Date.matches_regex("2020-2"));
        assert!(Primitive::Xhtml.matches_regex("anything"));
    }
}
