use hygie_hl7v2::ack::ErrorLocation;
use hygie_hl7v2::{AckCode, AckError, ErrorCode, Limits, ParseError, ack, encode, parse};

const ORIGINAL: &str = "MSH|^~\\&|LABAPP|LABFAC^1.2.3^ISO|HUB|HUBFAC|20250101120000||ORU^R01^ORU_R01|MSG-7|P|2.5.1\rPID|1||123";

fn original() -> hygie_hl7v2::Message {
    parse(ORIGINAL.as_bytes(), &Limits::default()).unwrap()
}

#[test]
fn accept_swaps_sender_and_receiver_and_echoes_the_control_id() {
    let reply = ack(
        &original(),
        AckCode::Accept,
        None,
        "ACK-1",
        "20250101120001",
    );
    assert_eq!(
        String::from_utf8(encode(&reply)).unwrap(),
        "MSH|^~\\&|HUB|HUBFAC|LABAPP|LABFAC^1.2.3^ISO|20250101120001||ACK^R01^ACK|ACK-1|P|2.5.1\rMSA|AA|MSG-7"
    );
    assert_eq!(reply.message_type(), ("ACK", "R01", "ACK"));
    assert_eq!(reply.sending_application(), "HUB");
    assert_eq!(reply.control_id(), "ACK-1");
    assert_eq!(reply.version(), "2.5.1");
    assert!(reply.segment("ERR").is_none());
}

#[test]
fn error_ack_carries_location_code_severity_and_escaped_diagnostic() {
    let error = AckError {
        code: ErrorCode::RequiredFieldMissing,
        location: Some(ErrorLocation {
            segment_id: "PID".into(),
            sequence: 2,
            field: Some(5),
            field_repetition: Some(1),
            component: Some(2),
        }),
        diagnostic: "PID-5 must hold a name|given^family & more".into(),
    };
    let reply = ack(
        &original(),
        AckCode::Error,
        Some(&error),
        "ACK-2",
        "20250101120002",
    );
    let text = String::from_utf8(encode(&reply)).unwrap();
    assert!(text.ends_with(
        "\rMSA|AE|MSG-7\rERR||PID^2^5^1^2|101^Required field missing^HL70357|E||||PID-5 must hold a name\\F\\given\\S\\family \\T\\ more"
    ), "{text}");
    let reparsed = parse(text.as_bytes(), &Limits::default()).unwrap();
    let err = reparsed.segment("ERR").unwrap();
    assert_eq!(err.value(8), error.diagnostic);
    assert_eq!(err.field(3).unwrap().component(1).unwrap().value(), "101");
    assert_eq!(err.value(4), "E");
}

#[test]
fn reject_from_a_parse_error_points_at_the_field() {
    let bad =
        "MSH|^~\\&|LAB|FAC|HUB|HUBFAC|20250101||ADT^A08^ADT_A01|C9|P|2.3\rEVN|A08\rPID|1||12\\X\\3";
    let parse_error = parse(bad.as_bytes(), &Limits::default()).unwrap_err();
    assert!(matches!(
        parse_error,
        ParseError::BadEscape {
            segment: 3,
            field: 3,
            ..
        }
    ));
    let error = AckError::from(&parse_error);
    assert_eq!(error.code, ErrorCode::DataTypeError);
    // The header itself parsed: acknowledge with what it says.
    let header = parse(
        bad.split('\r').next().unwrap().as_bytes(),
        &Limits::default(),
    )
    .unwrap();
    let reply = ack(
        &header,
        AckCode::Reject,
        Some(&error),
        "N1",
        "20250101000000",
    );
    let err = reply.segment("ERR").unwrap();
    let location = err.field(2).unwrap();
    let parts: Vec<&str> = location.repetitions[0]
        .components
        .iter()
        .map(|c| c.value())
        .collect();
    assert_eq!(parts, ["PID", "3", "3"]);
    assert_eq!(err.field(3).unwrap().first_value(), "102");
    assert_eq!(reply.segment("MSA").unwrap().value(1), "AR");
    assert_eq!(reply.segment("MSA").unwrap().value(2), "C9");
    assert_eq!(reply.message_type(), ("ACK", "A08", "ACK"));
}

#[test]
fn parse_errors_map_to_table_0357() {
    let cases = [
        (ParseError::Empty, 100, None),
        (ParseError::MissingMsh, 100, Some(("MSH", 1, None))),
        (
            ParseError::UnsupportedCharset {
                charset: "X".into(),
            },
            103,
            Some(("MSH", 1, Some(18))),
        ),
        (
            ParseError::BadDelimiters { reason: "r" },
            102,
            Some(("MSH", 1, Some(2))),
        ),
        (
            ParseError::TooManyRepetitions {
                segment: 4,
                segment_id: "OBX".into(),
                field: 5,
                limit: 1,
            },
            207,
            Some(("OBX", 4, Some(5))),
        ),
        (ParseError::TooManySegments { limit: 1 }, 207, None),
    ];
    for (parse_error, code, location) in cases {
        let error = AckError::from(&parse_error);
        assert_eq!(error.code.code(), code, "{parse_error:?}");
        assert_eq!(
            error
                .location
                .as_ref()
                .map(|l| (l.segment_id.as_str(), l.sequence, l.field)),
            location
        );
        assert_eq!(error.diagnostic, parse_error.to_string());
    }
}

#[test]
fn accept_ignores_an_error_and_keeps_the_charset() {
    let latin1 = parse(
        b"MSH|^~\\&|A|B|C|D|1||ADT^A01|X|P|2.5||||||8859/1",
        &Limits::default(),
    )
    .unwrap();
    let error = AckError::from(&ParseError::Empty);
    let reply = ack(&latin1, AckCode::Accept, Some(&error), "Y", "2");
    assert!(reply.segment("ERR").is_none());
    assert_eq!(reply.charset(), "8859/1");
}
