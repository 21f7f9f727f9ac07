//! The current parser against [`super::reference`] (the parser before the throughput work) on
//! generated messages, valid and hostile: delimiter sets (default, v2.7 truncation, unusual,
//! random and broken ones), escapes (`\Xhh\` in both character sets, malformed ones), Latin-1
//! and invalid UTF-8 bytes, CR/LF/CRLF and blank lines, long values, bad segment names, tight
//! limits (zero included) and truncated MSH. Both must give the same message or the same error.
//!
//! `HL7V2_EQUIVALENCE_CASES` raises the number of cases (e.g. 20000 for a long run).

use proptest::prelude::*;

use super::{Limits, parse, reference};

/// A piece of a generated message, rendered with the message's delimiters.
#[derive(Debug, Clone)]
enum Token {
    Text(&'static [u8]),
    /// `escape name escape`, the name as given.
    Escape(&'static [u8]),
    /// The escape character alone.
    LoneEscape,
    Field,
    Component,
    Repetition,
    Subcomponent,
    /// A segment end, then the name of the next segment.
    Segment(&'static [u8], &'static [u8]),
    Byte(u8),
}

const TEXTS: &[&[u8]] = &[
    b"a",
    b"Bc",
    b"123",
    b" ",
    b"Doe",
    b"2093-3",
    b"mmol/L",
    b"abcdefghijklmnopqrstuvwx",
    b"abcdefghijklmnopqrstuvwxy",
    b"a much longer value that does not fit inline at all, over 24 bytes",
    "\u{e9}t\u{e9}".as_bytes(),
    "\u{65e5}\u{1f600}".as_bytes(),
    b"MSH",
    b"\t\x0b",
];

const ESCAPES: &[&[u8]] = &[
    b"F", b"S", b"T", b"R", b"E", b"P", b"H", b"N", b".br", b"X41", b"X0D0A", b"XC3A9", b"XE9",
    b"XFF", b"X", b"X4", b"XZZ", b"x41", b"", b"Z1", b"FF",
];

const SEGMENT_ENDS: &[&[u8]] = &[b"\r", b"\n", b"\r\n", b"\r\r", b"\n\n", b"\r\n\r\n"];

const NAMES: &[&[u8]] = &[
    b"PID",
    b"OBX",
    b"NTE",
    b"ZZ1",
    b"MSH",
    b"PV1",
    b"pid",
    b"P1",
    b"PIDX",
    b"",
    b"\xC3\xA9AB",
];

const CHARSETS: &[&[u8]] = &[
    b"",
    b"ASCII",
    b"UNICODE UTF-8",
    b"8859/1",
    b"8859/1",
    b"8859/1",
    b"UTF-8",
    b"8859/1^x",
    b"8859/1~UNICODE UTF-8",
    b"\\F\\",
];

/// Well-formed pieces (valid escapes and segment names, no stray bytes), or also hostile ones.
fn token(hostile: bool) -> BoxedStrategy<Token> {
    let (escapes, names) = if hostile {
        (ESCAPES, NAMES)
    } else {
        (&ESCAPES[..10], &NAMES[..6])
    };
    let clean = prop_oneof![
        6 => prop::sample::select(TEXTS).prop_map(Token::Text),
        2 => prop::sample::select(escapes).prop_map(Token::Escape),
        5 => Just(Token::Field),
        3 => Just(Token::Component),
        1 => Just(Token::Repetition),
        1 => Just(Token::Subcomponent),
        2 => (prop::sample::select(SEGMENT_ENDS), prop::sample::select(names))
            .prop_map(|(end, name)| Token::Segment(end, name)),
    ];
    if !hostile {
        return clean.boxed();
    }
    prop_oneof![
        20 => clean,
        1 => Just(Token::LoneEscape),
        1 => prop::sample::select(vec![0xE9u8, 0xFF, 0xC3, 0x80, 0x00, b'\r', b'\n', b'|', b'^'])
            .prop_map(Token::Byte),
    ]
    .boxed()
}

/// Field separator then MSH-2: the usual sets, then random punctuation (possibly repeated, too
/// short or too long), then anything.
fn delimiters() -> impl Strategy<Value = Vec<u8>> {
    let punctuation: Vec<u8> = (0u8..128).filter(u8::is_ascii_punctuation).collect();
    prop_oneof![
        4 => Just(b"|^~\\&".to_vec()),
        2 => Just(b"|^~\\&#".to_vec()),
        2 => Just(b"*!@$%".to_vec()),
        3 => (Just(punctuation.clone()).prop_shuffle(), 5usize..=6)
            .prop_map(|(chars, n)| chars[..n].to_vec()),
        1 => prop::collection::vec(prop::sample::select(punctuation), 4..=7),
        1 => prop::collection::vec(prop::sample::select(b"|^~\\&#a \r".to_vec()), 0..=7),
    ]
}

fn limit(default: usize) -> impl Strategy<Value = usize> {
    prop_oneof![
        16 => Just(default),
        1 => Just(0usize),
        1 => Just(1usize),
        1 => Just(2usize),
        1 => Just(3usize),
        1 => Just(5usize),
    ]
}

fn limits() -> impl Strategy<Value = Limits> {
    let defaults = Limits::default();
    (
        prop_oneof![
            20 => Just(defaults.max_message_bytes),
            1 => Just(10usize),
            1 => Just(60usize),
            1 => Just(300usize),
        ],
        limit(defaults.max_segments),
        limit(defaults.max_fields_per_segment),
        limit(defaults.max_repetitions),
        limit(defaults.max_components),
        limit(defaults.max_subcomponents),
    )
        .prop_map(
            |(
                max_message_bytes,
                max_segments,
                max_fields_per_segment,
                max_repetitions,
                max_components,
                max_subcomponents,
            )| Limits {
                max_message_bytes,
                max_segments,
                max_fields_per_segment,
                max_repetitions,
                max_components,
                max_subcomponents,
            },
        )
}

/// Renders a message: an optional byte order mark and blank lines, `MSH`, the delimiters, MSH-3
/// to MSH-17 (maybe) and MSH-18 (maybe), then the tokens.
fn render(
    prefix: u8,
    delimiters: &[u8],
    charset: Option<&[u8]>,
    tokens: &[Token],
    cut: Option<usize>,
) -> Vec<u8> {
    let mut out = Vec::new();
    if prefix & 1 != 0 {
        out.extend_from_slice(b"\xEF\xBB\xBF");
    }
    if prefix & 2 != 0 {
        out.extend_from_slice(b"\r\n");
    }
    if prefix & 4 != 0 {
        out.extend_from_slice(b"MSX");
    } else {
        out.extend_from_slice(b"MSH");
    }
    out.extend_from_slice(delimiters);
    let at = |i: usize, fallback: u8| delimiters.get(i).copied().unwrap_or(fallback);
    let (field, component, repetition, escape, subcomponent) = (
        at(0, b'|'),
        at(1, b'^'),
        at(2, b'~'),
        at(3, b'\\'),
        at(4, b'&'),
    );
    out.push(field);
    if let Some(charset) = charset {
        out.extend(std::iter::repeat_n(field, 15));
        out.extend_from_slice(charset);
        out.push(field);
    }
    for token in tokens {
        match token {
            Token::Text(text) => out.extend_from_slice(text),
            Token::Escape(name) => {
                out.push(escape);
                out.extend_from_slice(name);
                out.push(escape);
            }
            Token::LoneEscape => out.push(escape),
            Token::Field => out.push(field),
            Token::Component => out.push(component),
            Token::Repetition => out.push(repetition),
            Token::Subcomponent => out.push(subcomponent),
            Token::Segment(end, name) => {
                out.extend_from_slice(end);
                out.extend_from_slice(name);
                if !name.is_empty() {
                    out.push(field);
                }
            }
            Token::Byte(byte) => out.push(*byte),
        }
    }
    if let Some(cut) = cut {
        out.truncate(cut);
    }
    out
}

fn message() -> impl Strategy<Value = Vec<u8>> {
    let structured = (
        prop_oneof![6 => Just(0u8), 1 => 0u8..8],
        delimiters(),
        prop::option::weighted(0.5, prop::sample::select(CHARSETS)),
        prop::bool::weighted(0.3)
            .prop_flat_map(|hostile| prop::collection::vec(token(hostile), 0..120)),
        prop::option::weighted(0.1, 0usize..40),
    )
        .prop_map(|(prefix, delimiters, charset, tokens, cut)| {
            render(prefix, &delimiters, charset, &tokens, cut)
        });
    let raw = (
        prop::sample::select(vec![&b""[..], b"MSH|^~\\&|", b"MSH|^~\\&#|"]),
        prop::collection::vec(any::<u8>(), 0..80),
    )
        .prop_map(|(head, tail)| [head, &tail[..]].concat());
    prop_oneof![8 => structured, 1 => raw]
}

fn cases() -> u32 {
    std::env::var("HL7V2_EQUIVALENCE_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn parser_matches_the_reference(bytes in message(), limits in limits()) {
        prop_assert_eq!(parse(&bytes, &limits), reference::parse(&bytes, &limits));
    }
}

#[test]
fn sample_files_and_a_large_oru_match_the_reference() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .expect("tests/data")
        .map(|e| std::fs::read(e.expect("entry").path()).expect("sample"))
        .collect();
    let mut oru = String::from("MSH|^~\\&|LAB|HOSP|HUB|HOSP|20250101||ORU^R01|1|P|2.5.1\r");
    for i in 0..200 {
        oru.push_str(&format!(
            "OBX|{i}|NM|2093-3^Cholesterol \\T\\ total^LN|{i}|{i}.5|mmol/L^mmol/L^UCUM|||||F|||20250101|LAB^Bio&1.2&ISO~X\r"
        ));
    }
    inputs.push(oru.into_bytes());
    let limits = Limits::default();
    for bytes in &inputs {
        let parsed = parse(bytes, &limits);
        assert!(parsed.is_ok());
        assert_eq!(parsed, reference::parse(bytes, &limits));
    }
}

/// Set `HL7V2_SAMPLES_DIR` to compare on a whole corpus (e.g. /work/shared/data/hl7v2): every
/// file, every 3rd prefix of it (truncated messages) and each file under tight limits.
#[test]
fn corpus_matches_the_reference_when_given() {
    let Some(dir) = std::env::var_os("HL7V2_SAMPLES_DIR") else {
        return;
    };
    let tight = Limits {
        max_message_bytes: 4096,
        max_segments: 8,
        max_fields_per_segment: 12,
        max_repetitions: 2,
        max_components: 5,
        max_subcomponents: 2,
    };
    let mut files = 0;
    for entry in std::fs::read_dir(dir).expect("samples directory") {
        let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
        files += 1;
        for limits in [Limits::default(), tight] {
            for end in (0..=bytes.len()).rev().step_by(3) {
                let prefix = &bytes[..end];
                assert_eq!(
                    parse(prefix, &limits),
                    reference::parse(prefix, &limits),
                    "{} bytes of a sample",
                    end
                );
            }
        }
    }
    assert!(files > 0);
}
