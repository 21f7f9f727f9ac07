use std::path::Path;

use hygie_hl7v2::{Delimiters, Field, Limits, Message, ParseError, Segment, encode, parse};

fn parse_default(text: &str) -> Result<Message, ParseError> {
    parse(text.as_bytes(), &Limits::default())
}

fn sample(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    std::fs::read(path).expect("sample file")
}

fn samples_in(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("samples directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "hl7"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).expect("read")))
        .collect()
}

fn assert_reencodes(name: &str, bytes: &[u8]) {
    let message = parse(bytes, &Limits::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let encoded = encode(&message);
    assert!(
        !encoded.contains(&b'\n'),
        "{name}: segments end with CR only"
    );
    let reparsed = parse(&encoded, &Limits::default()).expect("re-parses");
    assert_eq!(reparsed, message, "{name}");
}

#[test]
fn sample_files_reencode_to_the_same_message() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let files = samples_in(&dir);
    assert!(files.len() >= 5);
    for (name, bytes) in files {
        assert_reencodes(&name, &bytes);
    }
}

/// Set `HL7V2_SAMPLES_DIR` to run over a whole corpus (e.g. /work/shared/data/hl7v2).
#[test]
fn corpus_reencodes_when_given() {
    let Some(dir) = std::env::var_os("HL7V2_SAMPLES_DIR") else {
        return;
    };
    for (name, bytes) in samples_in(Path::new(&dir)) {
        assert_reencodes(&name, &bytes);
    }
}

#[test]
fn adt_a01_header_accessors() {
    let message = parse(&sample("ADT-A01-01.hl7"), &Limits::default()).unwrap();
    assert_eq!(message.delimiters, Delimiters::default());
    assert_eq!(message.message_type(), ("ADT", "A01", "ADT_A01"));
    assert_eq!(message.control_id(), "MSG00001");
    assert_eq!(message.version(), "2.8");
    assert_eq!(message.sending_application(), "ADTApp");
    assert_eq!(message.sending_facility(), "GHHSFacility");
    assert_eq!(message.charset(), "");
    let msh = message.segment("MSH").unwrap();
    assert_eq!(msh.value(1), "|");
    assert_eq!(msh.value(2), "^~\\&");
    assert_eq!(msh.value(3), "ADTApp");
    assert_eq!(
        msh.field(4).unwrap().component(2).unwrap().value(),
        "2.16.840.1.122848.1.30"
    );
    assert_eq!(message.segments.len(), 24);
}

#[test]
fn adt_a01_repetitions_components_subcomponents_and_escapes() {
    let message = parse(&sample("ADT-A01-01.hl7"), &Limits::default()).unwrap();
    let pid = message.segment("PID").unwrap();
    let identifiers = pid.field(3).unwrap();
    assert_eq!(identifiers.repetitions.len(), 2);
    assert_eq!(identifiers.first_value(), "PATID1234");
    let authority = identifiers.component(4).unwrap();
    assert_eq!(authority.subcomponents, ["test1", "2.16.1", "HCD"]);
    assert_eq!(
        identifiers.repetitions[1].component(4).unwrap().value(),
        "USSSA"
    );
    let name = pid.field(5).unwrap();
    assert_eq!(name.component(1).unwrap().subcomponent(5), Some("Aniston"));
    assert_eq!(name.component(2).unwrap().value(), "ADAM");
    // PV1-14: "NHS Provider-General (inc.A\T\E-this Hosp)".
    let pv1 = message.segment("PV1").unwrap();
    assert_eq!(pv1.value(14), "NHS Provider-General (inc.A&E-this Hosp)");
    assert_eq!(message.segments("ROL").count(), 3);
}

#[test]
fn other_samples_identify_themselves() {
    let limits = Limits::default();
    let a08 = parse(&sample("ADT-A08-01.hl7"), &limits).unwrap();
    assert_eq!(a08.message_type().1, "A08");
    let a40 = parse(&sample("ADT-A40-01.hl7"), &limits).unwrap();
    assert_eq!(a40.message_type(), ("ADT", "A40", "ADT_A40"));
    assert_eq!(a40.control_id(), "8919-40");
    assert_eq!(
        a40.segment("MRG")
            .unwrap()
            .field(1)
            .unwrap()
            .component(4)
            .unwrap()
            .value(),
        "BCBS"
    );
    let oru = parse(&sample("ORU-R01-01.hl7"), &limits).unwrap();
    assert_eq!(oru.message_type(), ("ORU", "R01", "ORU_R01"));
    assert_eq!(oru.version(), "2.5.1");
    assert!(oru.segments("OBX").count() >= 1);
    // A UTF-8 byte order mark and CRLF line ends.
    let lab = parse(&sample("LAB-ORU-1.hl7"), &limits).unwrap();
    assert_eq!(lab.segments[0].name, "MSH");
}

#[test]
fn segment_separators_cr_lf_crlf_and_blank_lines() {
    let expected = parse_default("MSH|^~\\&|A\rPID|1\rPV1|2").unwrap();
    for text in [
        "MSH|^~\\&|A\nPID|1\nPV1|2\n",
        "MSH|^~\\&|A\r\nPID|1\r\nPV1|2\r\n",
        "\r\nMSH|^~\\&|A\r\rPID|1\n\nPV1|2\r",
    ] {
        assert_eq!(parse_default(text).unwrap(), expected, "{text:?}");
    }
}

#[test]
fn escapes_are_decoded() {
    let message =
        parse_default("MSH|^~\\&|A\rNTE|1||a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\X0D0A\\g\\XC3A9\\")
            .unwrap();
    assert_eq!(
        message.segment("NTE").unwrap().value(3),
        "a|b^c&d~e\\f\r\ng\u{e9}"
    );
}

#[test]
fn formatting_escapes_are_kept_verbatim() {
    let message = parse_default("MSH|^~\\&|A\rNTE|1||\\H\\bold\\N\\ line\\.br\\next").unwrap();
    assert_eq!(
        message.segment("NTE").unwrap().value(3),
        "\\H\\bold\\N\\ line\\.br\\next"
    );
}

#[test]
fn truncation_character_escape_is_decoded_from_v27() {
    let message = parse_default("MSH|^~\\&#|A\rNTE|1||a\\P\\b").unwrap();
    assert_eq!(message.delimiters.truncation, Some('#'));
    assert_eq!(message.segment("MSH").unwrap().value(2), "^~\\&#");
    assert_eq!(message.segment("NTE").unwrap().value(3), "a#b");
}

#[test]
fn other_delimiters_are_read_from_msh() {
    let message = parse_default("MSH*!@$%*APP!X*FAC\rPID*1**a!b@c%d").unwrap();
    let d = message.delimiters;
    assert_eq!((d.field, d.component, d.repetition), ('*', '!', '@'));
    assert_eq!((d.escape, d.subcomponent), ('$', '%'));
    assert_eq!(message.sending_application(), "APP");
    let field = message.segment("PID").unwrap().field(3).unwrap();
    assert_eq!(field.repetitions.len(), 2);
    assert_eq!(field.repetitions[1].components[0].subcomponents, ["c", "d"]);
}

#[test]
fn malformed_escapes_are_errors_naming_the_field() {
    for bad in ["a\\Fb", "\\\\", "\\X1\\", "\\XZZ\\", "\\XFF\\"] {
        let text = format!("MSH|^~\\&|A\rPID|1\rNTE|1||{bad}");
        assert_eq!(
            parse_default(&text),
            Err(ParseError::BadEscape {
                segment: 3,
                segment_id: "NTE".into(),
                field: 3
            }),
            "{bad:?}"
        );
    }
}

#[test]
fn trailing_empty_values_are_not_kept() {
    let message = parse_default("MSH|^~\\&|A\rPID|1|a^^~|b&&^||").unwrap();
    let pid = message.segment("PID").unwrap();
    assert_eq!(pid.fields.len(), 3);
    assert_eq!(pid.field(2).unwrap().repetitions.len(), 1);
    assert_eq!(pid.field(2).unwrap().repetitions[0].components.len(), 1);
    assert_eq!(
        pid.field(3).unwrap().component(1).unwrap().subcomponents,
        ["b"]
    );
    assert_eq!(message, message.normalized());
    assert_eq!(encode(&message), b"MSH|^~\\&|A\rPID|1|a|b");
}

#[test]
fn z_segments_are_kept() {
    let message = parse_default("MSH|^~\\&|A\rZPI|custom^value").unwrap();
    assert_eq!(
        message
            .segment("ZPI")
            .unwrap()
            .field(1)
            .unwrap()
            .component(2)
            .unwrap()
            .value(),
        "value"
    );
}

#[test]
fn charsets() {
    let latin1 = b"MSH|^~\\&|A|||||||||||||||8859/1\rPID|1||Ren\xe9";
    let message = parse(latin1, &Limits::default()).unwrap();
    assert_eq!(message.charset(), "8859/1");
    assert_eq!(message.segment("PID").unwrap().value(3), "Ren\u{e9}");
    assert_eq!(encode(&message), latin1);

    let utf8 = "MSH|^~\\&|A|||||||||||||||UNICODE UTF-8\rPID|1||Ren\u{e9}";
    let message = parse_default(utf8).unwrap();
    assert_eq!(message.segment("PID").unwrap().value(3), "Ren\u{e9}");

    let bad_utf8 = b"MSH|^~\\&|A\rPID|1||Ren\xe9";
    assert_eq!(
        parse(bad_utf8, &Limits::default()),
        Err(ParseError::BadCharset {
            charset: "UTF-8",
            byte_offset: 21
        })
    );
    assert_eq!(
        parse_default("MSH|^~\\&|A|||||||||||||||ISO IR87\rPID|1"),
        Err(ParseError::UnsupportedCharset {
            charset: "ISO IR87".into()
        })
    );
}

#[test]
fn structural_errors() {
    assert_eq!(parse_default(""), Err(ParseError::Empty));
    assert_eq!(parse_default("\r\n\r"), Err(ParseError::Empty));
    assert_eq!(
        parse_default("PID|1\rMSH|^~\\&"),
        Err(ParseError::MissingMsh)
    );
    assert!(matches!(
        parse_default("MSH|^~\\|A"),
        Err(ParseError::BadDelimiters { .. })
    ));
    assert!(matches!(
        parse_default("MSH|^~\\^|A"),
        Err(ParseError::BadDelimiters { .. })
    ));
    assert!(matches!(
        parse_default("MSHa^~\\&aA"),
        Err(ParseError::BadDelimiters { .. })
    ));
    assert!(matches!(
        parse_default("MSH"),
        Err(ParseError::BadDelimiters { .. })
    ));
    for bad_name in ["pid|1", "PI|1", "PIDX|1", "P D|1", "PIDé|"] {
        let text = format!("MSH|^~\\&|A\r{bad_name}");
        assert_eq!(
            parse_default(&text),
            Err(ParseError::SegmentName { segment: 2 }),
            "{bad_name:?}"
        );
    }
}

#[test]
fn zero_limits_refuse_even_single_value_fields() {
    // Single-value fields take a fast path in the parser: it must refuse them as the general
    // splitter does, empty ones included, with the same location.
    let zero = |set: fn(&mut Limits)| {
        let mut limits = Limits::default();
        set(&mut limits);
        limits
    };
    let at = |field| (1, "MSH".to_owned(), field, 0);
    for text in ["MSH|^~\\&|A", "MSH|^~\\&||"] {
        let field = 3;
        let (segment, segment_id, field, limit) = at(field);
        assert_eq!(
            parse(text.as_bytes(), &zero(|l| l.max_subcomponents = 0)),
            Err(ParseError::TooManySubcomponents {
                segment,
                segment_id: segment_id.clone(),
                field,
                limit
            }),
            "{text:?}"
        );
        assert_eq!(
            parse(text.as_bytes(), &zero(|l| l.max_components = 0)),
            Err(ParseError::TooManyComponents {
                segment,
                segment_id: segment_id.clone(),
                field,
                limit
            }),
            "{text:?}"
        );
        assert_eq!(
            parse(text.as_bytes(), &zero(|l| l.max_repetitions = 0)),
            Err(ParseError::TooManyRepetitions {
                segment,
                segment_id,
                field,
                limit
            }),
            "{text:?}"
        );
    }
}

#[test]
fn limits_are_enforced_with_locations() {
    let tight = Limits {
        max_message_bytes: 200,
        max_segments: 3,
        max_fields_per_segment: 5,
        max_repetitions: 2,
        max_components: 3,
        max_subcomponents: 2,
    };
    let ok = "MSH|^~\\&|A|B\rPID|1|2|3|4|5\rNTE|a~b|c^d^e|f&g";
    assert!(parse(ok.as_bytes(), &tight).is_ok());
    let cases: [(&str, ParseError); 7] = [
        (
            "MSH|^~\\&|A|B|C|D",
            ParseError::TooManyFields {
                segment: 1,
                segment_id: "MSH".into(),
                limit: 5,
            },
        ),
        (
            "MSH|^~\\&\rPID|1|2|3|4|5|6",
            ParseError::TooManyFields {
                segment: 2,
                segment_id: "PID".into(),
                limit: 5,
            },
        ),
        (
            "MSH|^~\\&\rPID|1|a~b~c",
            ParseError::TooManyRepetitions {
                segment: 2,
                segment_id: "PID".into(),
                field: 2,
                limit: 2,
            },
        ),
        (
            "MSH|^~\\&|a^b^c^d",
            ParseError::TooManyComponents {
                segment: 1,
                segment_id: "MSH".into(),
                field: 3,
                limit: 3,
            },
        ),
        (
            "MSH|^~\\&\rPID|1|||a&b&c",
            ParseError::TooManySubcomponents {
                segment: 2,
                segment_id: "PID".into(),
                field: 4,
                limit: 2,
            },
        ),
        (
            "MSH|^~\\&\rPID\rPID\rPID",
            ParseError::TooManySegments { limit: 3 },
        ),
        (
            &"MSH|^~\\&|".repeat(23),
            ParseError::MessageTooLarge {
                bytes: 207,
                limit: 200,
            },
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(parse(text.as_bytes(), &tight), Err(expected), "{text:?}");
    }
}

#[test]
fn built_messages_encode_as_hl7() {
    let message = Message {
        delimiters: Delimiters::default(),
        segments: vec![
            Segment::new(
                "MSH",
                vec![
                    Field::from_value("|"),
                    Field::from_value("^~\\&"),
                    Field::from_value("HUB"),
                ],
            ),
            Segment::new(
                "NTE",
                vec![
                    Field::from_value("1"),
                    Field::default(),
                    Field::from_components(["a|b", "c^d", "", ""]),
                ],
            ),
        ],
    };
    assert_eq!(
        encode(&message),
        b"MSH|^~\\&|HUB\rNTE|1||a\\F\\b^c\\S\\d".to_vec()
    );
}

#[test]
fn bad_charset_offset_counts_the_byte_order_mark() {
    let bytes = b"\xEF\xBB\xBF\r\nMSH|^~\\&|A\xff";
    assert_eq!(
        parse(bytes, &Limits::default()),
        Err(ParseError::BadCharset {
            charset: "UTF-8",
            byte_offset: 15
        })
    );
}
