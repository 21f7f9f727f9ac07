//! `parse(encode(m)) == m` for generated messages whose values hold delimiters, escape
//! characters, control characters and non-ASCII text.

use hygie_hl7v2::{
    Component, Delimiters, Field, Limits, Message, Repetition, Segment, encode, parse,
};
use proptest::prelude::*;

const DELIMITER_SETS: [Delimiters; 3] = [
    Delimiters {
        field: '|',
        component: '^',
        repetition: '~',
        escape: '\\',
        subcomponent: '&',
        truncation: None,
    },
    Delimiters {
        field: '|',
        component: '^',
        repetition: '~',
        escape: '\\',
        subcomponent: '&',
        truncation: Some('#'),
    },
    Delimiters {
        field: '*',
        component: '!',
        repetition: '@',
        escape: '$',
        subcomponent: '%',
        truncation: None,
    },
];

const CHARSETS: [&str; 3] = ["", "UNICODE UTF-8", "8859/1"];

fn value(charset: &'static str) -> impl Strategy<Value = String> {
    let mut pool: Vec<char> = "ab Z09|^~\\&#*!@$%\r\n\u{b}\u{1c}\u{e9}\u{ff}"
        .chars()
        .collect();
    if charset != "8859/1" {
        pool.extend(['\u{65e5}', '\u{1f600}']);
    }
    prop::collection::vec(prop::sample::select(pool), 0..5).prop_map(String::from_iter)
}

fn field(charset: &'static str) -> impl Strategy<Value = Field> {
    let component =
        prop::collection::vec(value(charset), 0..3).prop_map(|subcomponents| Component {
            subcomponents: subcomponents.into(),
        });
    let repetition = prop::collection::vec(component, 0..4).prop_map(|components| Repetition {
        components: components.into(),
    });
    prop::collection::vec(repetition, 0..3).prop_map(|repetitions| Field {
        repetitions: repetitions.into(),
    })
}

fn segment(charset: &'static str) -> impl Strategy<Value = Segment> {
    (
        "[A-Z][A-Z0-9]{2}".prop_filter("MSH only first", |n| n != "MSH"),
        prop::collection::vec(field(charset), 0..6),
    )
        .prop_map(|(name, fields)| Segment { name, fields })
}

fn message() -> impl Strategy<Value = Message> {
    (
        prop::sample::select(DELIMITER_SETS.to_vec()),
        prop::sample::select(CHARSETS.to_vec()),
    )
        .prop_flat_map(|(delimiters, charset)| {
            (
                Just(delimiters),
                Just(charset),
                prop::collection::vec(field(charset), 0..10),
                prop::collection::vec(segment(charset), 0..6),
            )
        })
        .prop_map(|(delimiters, charset, header_fields, body)| {
            let mut msh = vec![
                Field::from_value(delimiters.field.to_string()),
                Field::from_value(delimiters.encoding_characters()),
            ];
            msh.extend(header_fields);
            msh.resize(17, Field::default());
            msh.push(Field::from_value(charset));
            let mut segments = vec![Segment::new("MSH", msh)];
            segments.extend(body);
            Message {
                delimiters,
                segments,
            }
            .normalized()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_inverts_encode(message in message()) {
        let encoded = encode(&message);
        let parsed = parse(&encoded, &Limits::default());
        prop_assert_eq!(parsed, Ok(message));
    }

    #[test]
    fn encoded_messages_hold_no_control_bytes_but_cr(message in message()) {
        let encoded = encode(&message);
        prop_assert!(encoded.iter().all(|b| *b >= 0x20 || *b == b'\r'));
    }
}
