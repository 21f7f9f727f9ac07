//! Property tests of search: the query parser never panics and reports errors well; token,
//! date and number values rendered then parsed come back the same; date ranges nest by
//! precision; extraction never panics on odd JSON.

use hygie_fhir::search::date::{ZoneRule, parse_range};
use hygie_fhir::search::index::extract;
use hygie_fhir::search::query::{
    Prefix, QueryOptions, TokenSystem, Value, parse, parse_query_string,
};
use hygie_fhir::{IssueSeverity, IssueType};
use proptest::prelude::*;
use serde_json::json;

const TYPES: [&str; 5] = [
    "Patient",
    "Observation",
    "Encounter",
    "Condition",
    "MedicationRequest",
];

/// Parameter names that reach every branch of the parser, and some noise.
fn name() -> impl Strategy<Value = String> {
    let known = prop::sample::select(vec![
        "family",
        "given",
        "name",
        "birthdate",
        "gender",
        "identifier",
        "code",
        "subject",
        "patient",
        "date",
        "value-quantity",
        "code-value-quantity",
        "status",
        "_id",
        "_lastUpdated",
        "_tag",
        "_profile",
        "_count",
        "_sort",
        "_include",
        "_revinclude",
        "_include:iterate",
        "_summary",
        "_elements",
        "_total",
        "_page",
        "_format",
        "_pretty",
        "_has:Observation:patient:code",
        "_has:Observation:subject:_has:Provenance:target:agent",
        "subject:Patient.name",
        "subject.name",
        "patient.general-practitioner.name",
        "encounter.status",
        "general-practitioner:Practitioner",
        "identifier:of-type",
        "code:text",
        "code:not",
        "code:in",
        "family:exact",
        "family:contains",
        "subject:missing",
        "subject:identifier",
        "_text",
        "_filter",
        "deceased",
        "onset-age",
        "probability",
    ]);
    prop_oneof![
        4 => known.prop_map(str::to_string),
        1 => "[a-z_:.$|A-Z-]{0,30}",
        1 => any::<String>(),
    ]
}

/// Values built from the pieces the grammar uses, and random text.
fn value() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "eq",
        "gt",
        "le",
        "ap",
        "xx",
        "2020",
        "-01",
        "-13",
        "-29",
        "T10:00",
        ":00",
        ".123",
        "Z",
        "+01:00",
        "|",
        "\\",
        "\\,",
        "\\$",
        ",",
        "$",
        "http://loinc.org",
        "Patient/",
        "1",
        "0",
        "-",
        "e5",
        "1e400",
        "mg",
        "true",
        "false",
        "Observation:subject",
        ":Patient",
        "*",
        "-date",
        "é",
        " ",
        "%",
        "\u{0}",
    ]);
    prop_oneof![
        4 => prop::collection::vec(piece, 0..8).prop_map(|p| p.concat()),
        1 => any::<String>(),
    ]
}

fn options() -> impl Strategy<Value = QueryOptions> {
    (any::<bool>(), 0usize..3).prop_map(|(strict, depth)| QueryOptions {
        strict,
        max_chain_depth: depth,
        ..QueryOptions::default()
    })
}

/// Escapes a token part as a client must.
fn escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if matches!(c, ',' | '$' | '|' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A date at some precision: (rendered, precision rank 0..=5).
fn date() -> impl Strategy<Value = (String, usize)> {
    date_from(0)
}

/// A date with at least the given precision rank (3: minutes, 4: seconds, 5: fraction).
fn date_from(min_precision: usize) -> impl Strategy<Value = (String, usize)> {
    (
        1u32..=9999,
        1u32..=12,
        1u32..=28,
        0u32..24,
        0u32..60,
        0u32..60,
        prop::option::of("[0-9]{1,9}"),
        min_precision..=5,
        prop_oneof![
            Just("Z".to_string()),
            (0u32..=13, 0u32..60, any::<bool>())
                .prop_map(|(h, m, plus)| format!("{}{h:02}:{m:02}", if plus { '+' } else { '-' }))
        ],
    )
        .prop_map(|(y, mo, d, h, mi, s, frac, precision, zone)| {
            let text = match precision {
                0 => format!("{y:04}"),
                1 => format!("{y:04}-{mo:02}"),
                2 => format!("{y:04}-{mo:02}-{d:02}"),
                3 => format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}{zone}"),
                4 => format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{zone}"),
                _ => format!(
                    "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{}{zone}",
                    frac.unwrap_or_else(|| "5".into())
                ),
            };
            (text, precision)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// No pairs make the parser panic; every error names its parameter and says something.
    #[test]
    fn parse_never_panics(
        t in prop::sample::select(TYPES.to_vec()),
        pairs in prop::collection::vec((name(), value()), 0..8),
        options in options(),
    ) {
        match parse(t, &pairs, &options) {
            Ok(request) => {
                prop_assert!(request.count <= options.max_count);
                for f in &request.filters {
                    prop_assert!(f.path.len() <= options.max_chain_depth);
                    prop_assert!(!f.values.is_empty() || matches!(
                        f.modifier,
                        Some(hygie_fhir::search::query::Modifier::Missing(_))
                    ));
                    prop_assert!(f.param.supported);
                }
                prop_assert!(request.ignored.iter().all(|i| i.severity == IssueSeverity::Warning));
                // Strict mode ignores nothing but empty values.
                prop_assert!(!options.strict || request.ignored.iter().all(|i| i.code == IssueType::Invalid));
            }
            Err(issues) => {
                prop_assert!(!issues.is_empty());
                for i in &issues {
                    prop_assert_eq!(i.severity, IssueSeverity::Error);
                    prop_assert!(i.expression.as_deref() != Some(""));
                    prop_assert!(!i.diagnostics.is_empty());
                    prop_assert!(i.diagnostics.chars().count() < 4000, "{}", i.diagnostics);
                }
            }
        }
    }

    /// Any string through the query-string decoder and the parser: no panic.
    #[test]
    fn query_strings_never_panic(q in any::<String>(), raw in "[a-z_:%+=&.|,$0-9A-F-]{0,60}") {
        for s in [&q, &raw] {
            if let Ok(pairs) = parse_query_string(s) {
                for t in TYPES {
                    let _ = parse(t, &pairs, &QueryOptions::default());
                }
            }
        }
    }

    /// A token value rendered with escapes parses back to the same system and code.
    #[test]
    fn token_round_trip(
        system in prop::option::of("[a-z:/.|,$\\\\]{0,12}"),
        code in "[a-zA-Z0-9 |,$\\\\.-]{1,12}",
    ) {
        let rendered = match &system {
            None => escape(&code),
            Some(s) => format!("{}|{}", escape(s), escape(&code)),
        };
        let pairs = vec![("code".to_string(), rendered.clone())];
        let request = parse("Observation", &pairs, &QueryOptions::default())
            .map_err(|e| TestCaseError::fail(format!("{rendered}: {e:?}")))?;
        let expected_system = match system {
            None => TokenSystem::Any,
            Some(s) if s.is_empty() => TokenSystem::NoSystem,
            Some(s) => TokenSystem::Is(s),
        };
        prop_assert_eq!(
            &request.filters[0].values,
            &vec![Value::Token { system: expected_system, code: Some(code) }]
        );
    }

    /// A date with a prefix parses back to its precision range; ranges are well formed.
    #[test]
    fn date_round_trip((text, _) in date(), prefix in prop::sample::select(Prefix::ALL.to_vec())) {
        let pairs = vec![("birthdate".to_string(), format!("{}{text}", prefix.as_code()))];
        let request = parse("Patient", &pairs, &QueryOptions::default())
            .map_err(|e| TestCaseError::fail(format!("{text}: {e:?}")))?;
        let (low_us, high_us) = parse_range(&text, ZoneRule::Required).unwrap();
        prop_assert!(low_us <= high_us);
        prop_assert_eq!(
            &request.filters[0].values,
            &vec![Value::Date { prefix, low_us, high_us }]
        );
    }

    /// In UTC, each finer rendering of one instant lies within every coarser one.
    #[test]
    fn finer_dates_nest((text, _) in date_from(3)) {
        let utc = match text.find(['Z', '+']).or_else(|| text.rfind('-').filter(|&i| i > 10)) {
            Some(i) => format!("{}Z", &text[..i]),
            None => text.clone(),
        };
        let prefixes = [4usize, 7, 10];
        let mut outer = parse_range(&utc, ZoneRule::Required).unwrap();
        prop_assert!(outer.0 <= outer.1);
        for &n in prefixes.iter().rev() {
            let coarse = parse_range(&utc[..n], ZoneRule::Required).unwrap();
            prop_assert!(coarse.0 <= outer.0 && outer.1 <= coarse.1, "{} in {}", utc, &utc[..n]);
            outer = coarse;
        }
        let minute = format!("{}Z", &utc[..16]);
        let m = parse_range(&minute, ZoneRule::Required).unwrap();
        let full = parse_range(&utc, ZoneRule::Required).unwrap();
        prop_assert!(m.0 <= full.0 && full.1 <= m.1);
    }

    /// A number with a prefix parses back to its value, inside its precision range.
    #[test]
    fn number_round_trip(
        int in 0u64..1_000_000,
        frac in prop::option::of("[0-9]{1,6}"),
        exp in prop::option::of(-20i32..20),
        negative in any::<bool>(),
        prefix in prop::sample::select(Prefix::ALL.to_vec()),
    ) {
        let mut text = format!("{}{int}", if negative { "-" } else { "" });
        if let Some(f) = &frac {
            text = format!("{text}.{f}");
        }
        if let Some(e) = exp {
            text = format!("{text}e{e}");
        }
        let pairs = vec![("probability".to_string(), format!("{}{text}", prefix.as_code()))];
        let request = parse("RiskAssessment", &pairs, &QueryOptions::default())
            .map_err(|e| TestCaseError::fail(format!("{text}: {e:?}")))?;
        let Value::Number { prefix: p, value, low, high } = request.filters[0].values[0].clone() else {
            return Err(TestCaseError::fail("not a number"));
        };
        prop_assert_eq!(p, prefix);
        prop_assert_eq!(value, text.parse::<f64>().unwrap());
        prop_assert!(low <= value && value <= high && low < high);
    }

    /// Extraction never panics, whatever is where the parameters look.
    #[test]
    fn extraction_never_panics(
        t in prop::sample::select(TYPES.to_vec()),
        leaf in prop_oneof![
            Just(json!(null)), Just(json!(true)), Just(json!(1.5)), Just(json!("2020-13")),
            Just(json!("x")), Just(json!([])), Just(json!({})), Just(json!([null, 1, "a"])),
            Just(json!({"value": "x", "system": 1, "coding": "c", "start": 5})),
            Just(json!({"reference": "Patient/1/_history/x"})),
        ],
        keys in prop::collection::vec(prop::sample::select(vec![
            "name", "birthDate", "gender", "identifier", "code", "subject", "valueQuantity",
            "component", "effectivePeriod", "telecom", "address", "onsetRange", "period",
            "dosageInstruction", "medicationReference", "contained", "meta",
        ]), 1..4),
    ) {
        let mut resource = json!({"resourceType": t});
        for k in keys {
            resource[k] = leaf.clone();
        }
        let _ = extract(&resource);
    }
}
