//! RFC 5424 messages and RFC 6587 frames, byte for byte.

mod common;

use common::{index_of, parse_message, take_frames};
use hygie_siem::{ExportLeaf, SyslogFormat};
use proptest::prelude::*;
use serde_json::json;

const BOM: &str = "\u{feff}";

fn format() -> SyslogFormat {
    SyslogFormat {
        hostname: "hygie.example".to_owned(),
        ..SyslogFormat::default()
    }
}

fn leaf(index: u64, json: &serde_json::Value) -> ExportLeaf {
    ExportLeaf {
        index,
        recorded_us: 1_700_000_000_123_456,
        leaf: serde_json::to_vec(json).unwrap(),
    }
}

fn message(format: &SyslogFormat, leaf: &ExportLeaf) -> String {
    let mut out = Vec::new();
    format.message(leaf, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn audit_event(
    type_code: Option<&str>,
    subtype: Option<&str>,
    outcome: Option<&str>,
) -> serde_json::Value {
    let mut event = json!({"resourceType": "AuditEvent"});
    if let Some(code) = type_code {
        event["type"] = json!({"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": code});
    }
    if let Some(code) = subtype {
        event["subtype"] =
            json!([{"system": "http://hl7.org/fhir/restful-interaction", "code": code}]);
    }
    if let Some(outcome) = outcome {
        event["outcome"] = json!(outcome);
    }
    event
}

#[test]
fn a_successful_read_is_informational() {
    let event = audit_event(Some("rest"), Some("read"), Some("0"));
    let json = event.to_string();
    assert_eq!(
        message(&format(), &leaf(42, &event)),
        format!(
            "<110>1 2023-11-14T22:13:20.123456Z hygie.example hygie - rest \
             [hygie@32473 index=\"42\" subtype=\"read\" outcome=\"0\"] {BOM}{json}"
        )
    );
}

#[test]
fn failures_are_warnings_or_errors_by_outcome() {
    // facility 13: PRI = 104 + severity.
    for (outcome, pri) in [("4", 108), ("8", 107), ("12", 107), ("99", 108)] {
        let event = audit_event(Some("rest"), Some("create"), Some(outcome));
        let text = message(&format(), &leaf(1, &event));
        assert!(text.starts_with(&format!("<{pri}>1 ")), "{outcome}: {text}");
        assert!(text.contains(&format!("outcome=\"{outcome}\"]")), "{text}");
    }
    // No outcome at all: a warning, and no outcome parameter.
    let text = message(&format(), &leaf(1, &audit_event(Some("rest"), None, None)));
    assert!(text.starts_with("<108>1 "), "{text}");
    assert!(text.contains("[hygie@32473 index=\"1\"] "), "{text}");
}

#[test]
fn facility_and_enterprise_id_come_from_the_settings() {
    let format = SyslogFormat {
        facility: 4,
        enterprise_id: 99999,
        app_name: "hub-a".to_owned(),
        ..format()
    };
    let event = audit_event(Some("rest"), Some("read"), Some("8"));
    let json = event.to_string();
    assert_eq!(
        message(&format, &leaf(0, &event)),
        format!(
            "<35>1 2023-11-14T22:13:20.123456Z hygie.example hub-a - rest \
             [hygie@99999 index=\"0\" subtype=\"read\" outcome=\"8\"] {BOM}{json}"
        )
    );
}

#[test]
fn structured_data_values_escape_quote_backslash_and_bracket() {
    let event = audit_event(Some("rest"), Some(r#"a"b\c]d"#), Some(r#"0"]"#));
    let text = message(&format(), &leaf(7, &event));
    let sd_end = text.find(&format!("] {BOM}")).unwrap();
    assert_eq!(
        &text[..sd_end + 1],
        r#"<108>1 2023-11-14T22:13:20.123456Z hygie.example hygie - rest [hygie@32473 index="7" subtype="a\"b\\c\]d" outcome="0\"\]"]"#
    );
}

#[test]
fn a_missing_or_odd_type_code_is_nil() {
    let event = audit_event(None, Some("read"), Some("0"));
    let json = event.to_string();
    assert_eq!(
        message(&format(), &leaf(3, &event)),
        format!(
            "<110>1 2023-11-14T22:13:20.123456Z hygie.example hygie - - \
             [hygie@32473 index=\"3\" subtype=\"read\" outcome=\"0\"] {BOM}{json}"
        )
    );
    // An R5-style CodeableConcept `type`, a number as outcome: treated as absent.
    let odd =
        json!({"resourceType": "AuditEvent", "type": {"coding": []}, "outcome": 0, "subtype": "x"});
    let text = message(&format(), &leaf(3, &odd));
    assert!(
        text.starts_with(
            "<108>1 2023-11-14T22:13:20.123456Z hygie.example hygie - - [hygie@32473 index=\"3\"] "
        ),
        "{text}"
    );
    // A code with spaces or non-ASCII is sanitized, one `_` per character.
    let text = message(
        &format(),
        &leaf(3, &audit_event(Some("a b é"), None, Some("0"))),
    );
    assert!(text.contains(" hygie - a_b__ [hygie"), "{text}");
}

#[test]
fn the_frame_length_counts_bytes_not_characters() {
    let event = json!({"resourceType": "AuditEvent", "type": {"code": "rest"}, "outcome": "0",
        "agent": [{"who": {"display": "Zoë Müller 日本 🩺"}}]});
    let leaf = leaf(5, &event);
    let mut frame = Vec::new();
    let framed = format().frame(&leaf, &mut frame).unwrap();
    let message = message(&format(), &leaf);
    assert!(message.len() > message.chars().count());
    assert_eq!(framed.message_bytes, message.len());
    assert_eq!(frame, format!("{} {message}", message.len()).into_bytes());
    assert!(!framed.truncated);
}

#[test]
fn an_oversize_event_is_cut_at_a_character_and_marked() {
    let big = "é".repeat(3_000); // 6,000 bytes
    let event = json!({"resourceType": "AuditEvent", "type": {"code": "rest"}, "outcome": "0",
        "outcomeDesc": big});
    let leaf = leaf(9, &event);
    let format = SyslogFormat {
        max_message_bytes: 2048,
        ..format()
    };
    let mut frame = Vec::new();
    let framed = format.frame(&leaf, &mut frame).unwrap();
    assert!(framed.truncated);
    let mut buffer = frame.clone();
    let messages = take_frames(&mut buffer).unwrap();
    assert_eq!(messages.len(), 1);
    let message = String::from_utf8(messages[0].clone()).expect("still UTF-8");
    assert!(
        message.len() <= 2048 && message.len() >= 2046,
        "{}",
        message.len()
    );
    assert!(message.contains(&format!(
        "[hygie@32473 index=\"9\" outcome=\"0\" truncated=\"{}\"] {BOM}{{",
        leaf.leaf.len()
    )));
    let json_start = message.find(BOM).unwrap() + BOM.len();
    assert!(
        std::str::from_utf8(&leaf.leaf)
            .unwrap()
            .starts_with(&message[json_start..])
    );
}

#[test]
fn a_leaf_that_is_not_an_object_is_refused_with_its_index() {
    for bad in [
        &b"[1,2]"[..],
        b"not json",
        b"{\"a\":",
        b"{\"a\":1} trailing",
        b"\xff{}",
    ] {
        let leaf = ExportLeaf {
            index: 77,
            recorded_us: 0,
            leaf: bad.to_vec(),
        };
        let error = format().frame(&leaf, &mut Vec::new()).unwrap_err();
        assert_eq!(error.index, 77, "{bad:?}");
    }
}

#[test]
fn the_test_parser_refuses_malformed_streams() {
    for bad in [&b"012 abc"[..], b"x2 ab", b" 2 ab", b"12345678901 x"] {
        assert!(take_frames(&mut bad.to_vec()).is_err(), "{bad:?}");
    }
    let mut partial = b"5 abcde3 ab".to_vec();
    assert_eq!(take_frames(&mut partial).unwrap(), vec![b"abcde".to_vec()]);
    assert_eq!(partial, b"3 ab");
}

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z\"\\\\\\] ]{0,12}",
        ".{0,40}".prop_map(|s| s.repeat(100)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the events hold, a parser of octet-counted frames reading the stream in
    /// arbitrary pieces recovers exactly the messages, each naming its leaf.
    #[test]
    fn frames_of_any_events_parse_back_to_the_messages(
        events in proptest::collection::vec(
            (any::<u64>(), any::<i64>(), proptest::option::of(any_text()), any_text(), any_text(), any_text()),
            1..12,
        ),
        max_message_bytes in prop_oneof![Just(2048usize), Just(65_536usize)],
        piece in 1usize..300,
    ) {
        let format = SyslogFormat { max_message_bytes, ..format() };
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for (index, recorded_us, type_code, subtype, outcome, who) in &events {
            let mut event = audit_event(type_code.as_deref(), Some(subtype), Some(outcome));
            event["agent"] = json!([{"who": {"display": who}}]);
            let leaf = ExportLeaf { index: *index, recorded_us: *recorded_us, leaf: serde_json::to_vec(&event).unwrap() };
            let framed = format.frame(&leaf, &mut stream).unwrap();
            prop_assert!(framed.message_bytes <= max_message_bytes);
            let mut alone = Vec::new();
            format.message(&leaf, &mut alone).unwrap();
            prop_assert_eq!(alone.len(), framed.message_bytes);
            expected.push((*index, alone, framed.truncated, leaf.leaf));
        }
        let mut buffer = Vec::new();
        let mut received = Vec::new();
        for chunk in stream.chunks(piece) {
            buffer.extend_from_slice(chunk);
            received.extend(take_frames(&mut buffer).unwrap());
        }
        prop_assert!(buffer.is_empty());
        prop_assert_eq!(received.len(), expected.len());
        for (message, ((index, alone, truncated, json), event)) in received.iter().zip(expected.iter().zip(&events)) {
            prop_assert_eq!(message, alone);
            let parsed = parse_message(message).unwrap();
            prop_assert_eq!(index_of(message), *index);
            prop_assert_eq!(&parsed.sd_id, "hygie@32473");
            // Values come back unescaped: a prefix of the original, cut at 64 bytes at most.
            for (name, original) in [("subtype", &event.3), ("outcome", &event.4)] {
                let value = parsed.param(name).unwrap();
                prop_assert!(original.starts_with(value));
                prop_assert!(value.len() + 3 >= original.len().min(64));
            }
            prop_assert_eq!(parsed.param("truncated").is_some(), *truncated);
            if *truncated {
                prop_assert!(json.starts_with(&parsed.msg));
            } else {
                prop_assert_eq!(&parsed.msg, json);
            }
        }
    }
}
