//! Untrusted HL7 v2 messages (what any system on the hospital network may send to the MLLP
//! listener) through `hygie_hl7v2::parse` with the default limits. It must never panic, must
//! keep its bounds, must return a normalized message, and what it returns must encode to
//! bytes that parse back to the same message and encode again to the same bytes; the
//! acknowledgement of any parsed message, and the NAK of any refused one, must themselves
//! parse.
#![no_main]

use hygie_hl7v2::{AckCode, AckError, Limits, Message, ack, encode, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let limits = Limits::default();
    // Re-encoding may grow a message (a raw control byte becomes `\Xhh\`), so the round
    // trip is checked without the size bound; every other bound holds as is.
    let unbounded = Limits {
        max_message_bytes: usize::MAX,
        ..limits
    };
    let message = match parse(bytes, &limits) {
        Ok(message) => message,
        Err(error) => {
            let nak_error = AckError::from(&error);
            assert!(!nak_error.diagnostic.is_empty());
            return;
        }
    };
    assert!(bytes.len() <= limits.max_message_bytes);
    assert!(!message.segments.is_empty() && message.segments.len() <= limits.max_segments);
    assert_eq!(message.segments[0].name, "MSH");
    assert_eq!(message, message.normalized(), "parse returns normalized messages");
    for segment in &message.segments {
        assert!(segment.fields.len() <= limits.max_fields_per_segment);
        for field in &segment.fields {
            assert!(field.repetitions.len() <= limits.max_repetitions);
            for repetition in &field.repetitions {
                assert!(repetition.components.len() <= limits.max_components);
                for component in &repetition.components {
                    assert!(component.subcomponents.len() <= limits.max_subcomponents);
                }
            }
        }
    }

    let encoded = encode(&message);
    let reparsed: Message = parse(&encoded, &unbounded).expect("an encoded message parses");
    assert_eq!(reparsed, message, "parse(encode(m)) == m");
    assert_eq!(encode(&reparsed), encoded, "encoding is stable");

    let error = AckError {
        code: hygie_hl7v2::ErrorCode::ApplicationInternalError,
        location: None,
        diagnostic: "fuzz | ^ ~ \\ &".to_owned(),
    };
    for code in [AckCode::Accept, AckCode::Error, AckCode::Reject] {
        let reply = ack(&message, code, Some(&error), "ACK-1", "20250101000000");
        let reply_bytes = encode(&reply);
        assert_eq!(
            parse(&reply_bytes, &unbounded).as_ref(),
            Ok(&reply),
            "an acknowledgement parses back"
        );
    }
});
