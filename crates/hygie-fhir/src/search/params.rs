//! The R4 search parameters of every resource type.
//!
//! They come from the committed, generated `data/r4-search-params.json` (HL7 FHIR 4.0.1, CC0;
//! see `data/PROVENANCE.md` and `tools/gen-r4-search.py`): one row per (resource type, code),
//! the expression already restricted to that type. The file is embedded at compile time and
//! parsed once, on first use (or at [`preload`]); each expression is then compiled with
//! [`fhirpath`](super::fhirpath) against the R4 structure definitions.
//!
//! A parameter is `supported` when its expression is in the FHIRPath subset, names only
//! elements that exist, and selects at least one type that [`index`](super::index) knows how
//! to index for the parameter's kind (e.g. `Observation` `value-quantity` selects `Quantity`
//! and `SampledData`: supported, SampledData is ignored). Unsupported parameters are never
//! indexed and never accepted in a search; [`SearchParam::unsupported_reason`] says why.
//!
//! ```
//! use hygie_fhir::search::params::{ParamType, search_param, search_params};
//! let subject = search_param("Observation", "subject").unwrap();
//! assert_eq!(subject.kind, ParamType::Reference);
//! assert!(subject.targets.iter().any(|t| t == "Patient"));
//! assert!(!search_param("Patient", "deceased").unwrap().supported);
//! assert!(search_params("Patient").windows(2).all(|w| w[0].code < w[1].code));
//! assert!(search_params("NoSuchType").is_empty());
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::LazyLock;

use serde::Deserialize;

use super::fhirpath::{self, Compiled, Ty};
use crate::schema;

/// The generated definitions; see `data/PROVENANCE.md`.
const PARAMS_JSON: &str = include_str!("../../data/r4-search-params.json");

/// Canonical URL prefix of every R4 SearchParameter (the data file stores the id only).
const URL_PREFIX: &str = "http://hl7.org/fhir/SearchParameter/";

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    // The input is a constant checked by this crate's tests, so failing here is a build defect.
    Registry::build(PARAMS_JSON).expect("embedded data/r4-search-params.json is consistent")
});

/// `SearchParameter.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamType {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

impl ParamType {
    /// The R4 code: `number`, `date`, …
    pub fn as_code(self) -> &'static str {
        match self {
            ParamType::Number => "number",
            ParamType::Date => "date",
            ParamType::String => "string",
            ParamType::Token => "token",
            ParamType::Reference => "reference",
            ParamType::Composite => "composite",
            ParamType::Quantity => "quantity",
            ParamType::Uri => "uri",
            ParamType::Special => "special",
        }
    }

    fn from_code(code: &str) -> Option<ParamType> {
        Some(match code {
            "number" => ParamType::Number,
            "date" => ParamType::Date,
            "string" => ParamType::String,
            "token" => ParamType::Token,
            "reference" => ParamType::Reference,
            "composite" => ParamType::Composite,
            "quantity" => ParamType::Quantity,
            "uri" => ParamType::Uri,
            "special" => ParamType::Special,
            _ => return None,
        })
    }

    /// Whether `index` can index a node of FHIR type `type_code` for this kind.
    pub fn indexes(self, type_code: &str) -> bool {
        match self {
            ParamType::Number => matches!(
                type_code,
                "decimal" | "integer" | "positiveInt" | "unsignedInt"
            ),
            ParamType::Date => matches!(
                type_code,
                "date" | "dateTime" | "instant" | "Period" | "Timing"
            ),
            ParamType::String => matches!(
                type_code,
                "string"
                    | "markdown"
                    | "code"
                    | "id"
                    | "uri"
                    | "url"
                    | "canonical"
                    | "HumanName"
                    | "Address"
            ),
            ParamType::Token => matches!(
                type_code,
                "Coding"
                    | "CodeableConcept"
                    | "Identifier"
                    | "ContactPoint"
                    | "code"
                    | "boolean"
                    | "id"
                    | "string"
                    | "uri"
                    | "url"
                    | "canonical"
                    | "oid"
                    | "uuid"
            ),
            ParamType::Reference => matches!(type_code, "Reference" | "canonical" | "uri" | "url"),
            ParamType::Quantity => matches!(
                type_code,
                "Quantity"
                    | "Age"
                    | "Duration"
                    | "Distance"
                    | "Count"
                    | "SimpleQuantity"
                    | "MoneyQuantity"
                    | "Money"
                    | "Range"
            ),
            ParamType::Uri => matches!(type_code, "uri" | "url" | "canonical" | "oid" | "uuid"),
            ParamType::Composite | ParamType::Special => false,
        }
    }
}

/// One search parameter of one resource type.
pub struct SearchParam {
    /// `family`, `_id`, `code-value-quantity`.
    pub code: String,
    /// The resource type it is searched on.
    pub base: String,
    pub kind: ParamType,
    /// The SearchParameter's canonical URL (shared by every base of a shared parameter).
    pub url: String,
    /// FHIRPath, restricted to `base`; empty for the few R4 parameters without one.
    pub expression: String,
    /// Reference parameters: the resource types it may point at, sorted.
    pub targets: Vec<String>,
    /// Composite parameters: the components, in order.
    pub components: Vec<Component>,
    /// False when the FHIRPath subset cannot evaluate the expression (or a component's), when
    /// nothing it selects can be indexed, or for kind `Special` and phonetic matching. Such
    /// parameters are never indexed nor accepted.
    pub supported: bool,
    pub(crate) plan: Option<Compiled>,
    unsupported: Option<String>,
}

impl fmt::Debug for SearchParam {
    /// The definition, without the compiled expression.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SearchParam")
            .field("code", &self.code)
            .field("base", &self.base)
            .field("kind", &self.kind)
            .field("url", &self.url)
            .field("expression", &self.expression)
            .field("targets", &self.targets)
            .field("components", &self.components)
            .field("supported", &self.supported)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Component")
            .field("code", &self.code)
            .field("kind", &self.kind)
            .field("expression", &self.expression)
            .finish_non_exhaustive()
    }
}

impl PartialEq for SearchParam {
    /// (base, code) identifies a parameter.
    fn eq(&self, other: &SearchParam) -> bool {
        self.base == other.base && self.code == other.code
    }
}

impl SearchParam {
    /// Why the parameter is not supported; `None` when it is.
    pub fn unsupported_reason(&self) -> Option<&str> {
        self.unsupported.as_deref()
    }

    /// Whether a reference parameter may point at `resource_type`.
    pub fn targets_type(&self, resource_type: &str) -> bool {
        self.targets.iter().any(|t| t == resource_type)
    }
}

/// One component of a composite parameter.
pub struct Component {
    /// The code of the component's own parameter on the same base, e.g. `code`.
    pub code: String,
    pub kind: ParamType,
    /// FHIRPath relative to each node the composite's expression selects.
    pub expression: String,
    pub(crate) plan: Option<Compiled>,
}

impl PartialEq for Component {
    fn eq(&self, other: &Component) -> bool {
        self.code == other.code && self.kind == other.kind && self.expression == other.expression
    }
}

/// The parameter `code` of `resource_type`, if R4 defines one.
pub fn search_param(resource_type: &str, code: &str) -> Option<&'static SearchParam> {
    let params = search_params(resource_type);
    params
        .binary_search_by(|p| p.code.as_str().cmp(code))
        .ok()
        .map(|i| &params[i])
}

/// Every parameter of `resource_type`, sorted by code; empty for an unknown type.
pub fn search_params(resource_type: &str) -> &'static [SearchParam] {
    REGISTRY
        .by_type
        .get(resource_type)
        .map_or(&[][..], Vec::as_slice)
}

/// Parses the embedded definitions and compiles every expression now instead of on first use
/// (a few tens of milliseconds; it loads [`crate::schema`] too), so that a server's first
/// search does not pay for it.
pub fn preload() {
    LazyLock::force(&REGISTRY);
}

struct Registry {
    by_type: HashMap<Box<str>, Vec<SearchParam>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawData {
    fhir_version: String,
    params: Vec<RawRow>,
}

/// `[base, code, type, id, expression, targets, components, usage?]`; see the generator.
#[derive(Deserialize)]
struct RawRow(
    String,
    String,
    String,
    String,
    String,
    Vec<String>,
    Vec<(String, String, String)>,
    #[serde(default)] Option<String>,
);

impl Registry {
    fn build(text: &str) -> Result<Registry, String> {
        let raw: RawData = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if raw.fhir_version != schema::fhir_version() {
            return Err(format!(
                "search parameters are FHIR {}, the schema {}",
                raw.fhir_version,
                schema::fhir_version()
            ));
        }
        let any_target: Vec<String> = schema::resource_types()
            .filter(|t| *t != "Parameters")
            .map(str::to_string)
            .collect();
        let mut by_type: HashMap<Box<str>, Vec<SearchParam>> = HashMap::new();
        for RawRow(base, code, kind, id, expression, targets, components, usage) in raw.params {
            if !schema::is_resource_type(&base) {
                return Err(format!("{code}: unknown base {base}"));
            }
            let kind =
                ParamType::from_code(&kind).ok_or_else(|| format!("{base}.{code}: type {kind}"))?;
            let targets = if targets == ["*"] {
                any_target.clone()
            } else {
                if let Some(t) = targets.iter().find(|t| !schema::is_resource_type(t)) {
                    return Err(format!("{base}.{code}: unknown target {t}"));
                }
                targets
            };
            let components = components
                .into_iter()
                .map(|(code, kind, expression)| {
                    Ok(Component {
                        kind: ParamType::from_code(&kind)
                            .ok_or_else(|| format!("{base}.{code}: component type {kind}"))?,
                        code,
                        expression,
                        plan: None,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            let mut param = SearchParam {
                code,
                base,
                kind,
                url: format!("{URL_PREFIX}{id}"),
                expression,
                targets,
                components,
                supported: false,
                plan: None,
                unsupported: None,
            };
            match prepare(&mut param, usage.as_deref()) {
                Ok(()) => param.supported = true,
                Err(why) => param.unsupported = Some(why),
            }
            by_type
                .entry(param.base.as_str().into())
                .or_default()
                .push(param);
        }
        for params in by_type.values_mut() {
            params.sort_by(|a, b| a.code.cmp(&b.code));
            if params.windows(2).any(|w| w[0].code == w[1].code) {
                return Err("a code is defined twice for one type".into());
            }
        }
        for t in schema::resource_types() {
            if !by_type.contains_key(t) {
                return Err(format!("no search parameters for {t}"));
            }
        }
        Ok(Registry { by_type })
    }
}

/// Compiles the expressions of `param`; the error is why it is not supported.
fn prepare(param: &mut SearchParam, usage: Option<&str>) -> Result<(), String> {
    match usage {
        None => {}
        Some("phonetic") => return Err("phonetic matching is not implemented".into()),
        Some(other) => return Err(format!("{other} search is not implemented")),
    }
    if param.kind == ParamType::Special {
        return Err("special parameters are not implemented".into());
    }
    if param.expression.is_empty() {
        return Err("R4 defines no expression for it".into());
    }
    let expr = fhirpath::parse(&param.expression).map_err(|e| format!("expression {e}"))?;
    let plan = fhirpath::compile(&expr, &param.base)?;
    if param.kind == ParamType::Composite {
        let context: Vec<Ty> = plan.result_tys().to_vec();
        if param.components.is_empty() {
            return Err("a composite without components".into());
        }
        for component in &mut param.components {
            let expr = fhirpath::parse(&component.expression)
                .map_err(|e| format!("component {}: expression {e}", component.code))?;
            let c = fhirpath::compile_for(&expr, &context)
                .map_err(|e| format!("component {}: {e}", component.code))?;
            if matches!(component.kind, ParamType::Composite | ParamType::Special) {
                return Err(format!(
                    "component {} is {}",
                    component.code,
                    component.kind.as_code()
                ));
            }
            check_indexable(component.kind, &c)
                .map_err(|e| format!("component {}: {e}", component.code))?;
            component.plan = Some(c);
        }
    } else {
        check_indexable(param.kind, &plan)?;
    }
    param.plan = Some(plan);
    Ok(())
}

fn check_indexable(kind: ParamType, plan: &Compiled) -> Result<(), String> {
    if plan.result_types().any(|t| kind.indexes(t)) {
        Ok(())
    } else {
        Err(format!(
            "a {} parameter on {}, which cannot be indexed as such",
            kind.as_code(),
            plan.result_types().collect::<Vec<_>>().join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_the_common_params() {
        for t in schema::resource_types() {
            for code in [
                "_id",
                "_lastUpdated",
                "_tag",
                "_profile",
                "_security",
                "_source",
            ] {
                let p = search_param(t, code).unwrap_or_else(|| panic!("{t}.{code}"));
                assert!(p.supported, "{t}.{code}: {:?}", p.unsupported_reason());
                assert_eq!(p.base, t);
            }
        }
        assert_eq!(
            search_param("Patient", "_id").unwrap().kind,
            ParamType::Token
        );
        assert!(!search_param("Patient", "_text").unwrap().supported);
        assert!(search_param("Bundle", "_text").is_none());
    }

    #[test]
    fn expressions_are_restricted_to_the_base() {
        let code = search_param("Condition", "code").unwrap();
        assert_eq!(code.expression, "Condition.code");
        assert_eq!(
            code.url,
            "http://hl7.org/fhir/SearchParameter/clinical-code"
        );
        let patient = search_param("Observation", "patient").unwrap();
        assert_eq!(
            patient.expression,
            "Observation.subject.where(resolve() is Patient)"
        );
        assert_eq!(patient.targets, ["Patient"]);
        let name = search_param("InsurancePlan", "name").unwrap();
        assert_eq!(name.expression, "InsurancePlan.name | InsurancePlan.alias");
        assert!(name.supported);
    }

    #[test]
    fn composites() {
        let cvq = search_param("Observation", "code-value-quantity").unwrap();
        assert!(cvq.supported, "{:?}", cvq.unsupported_reason());
        let codes: Vec<(&str, ParamType)> = cvq
            .components
            .iter()
            .map(|c| (c.code.as_str(), c.kind))
            .collect();
        assert_eq!(
            codes,
            [
                ("code", ParamType::Token),
                ("value-quantity", ParamType::Quantity)
            ]
        );
        let rel = search_param("DocumentReference", "relationship").unwrap();
        assert!(rel.supported, "{:?}", rel.unsupported_reason());
        assert_eq!(rel.components[0].expression, "target");
    }

    #[test]
    fn unsupported_reasons() {
        let deceased = search_param("Patient", "deceased").unwrap();
        assert!(deceased.unsupported_reason().unwrap().contains("exists"));
        assert!(!search_param("Location", "near").unwrap().supported);
        assert!(!search_param("Patient", "phonetic").unwrap().supported);
        assert!(
            search_param("Patient", "family")
                .unwrap()
                .unsupported_reason()
                .is_none()
        );
    }

    #[test]
    fn any_targets() {
        let focus = search_param("Observation", "focus").unwrap();
        assert!(focus.targets_type("Patient") && !focus.targets_type("Parameters"));
        assert!(focus.targets.windows(2).all(|w| w[0] < w[1]));
    }
}
