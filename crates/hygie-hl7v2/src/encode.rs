//! [`Message`] to bytes: the inverse of [`crate::parse`] on normalized messages.

use std::fmt::Write as _;

use compact_str::CompactString;

use crate::model::{Component, Delimiters, Field, Message, Repetition, Segment};

/// Encodes a message with `\r` between segments, values escaped, trailing empty values
/// dropped. The bytes are Latin-1 when MSH-18 says `8859/1` (characters Latin-1 cannot hold
/// become `?`), UTF-8 otherwise. Control characters (CR, LF, the MLLP block bytes...) are
/// written as `\Xhh\` so the output never breaks a segment or an MLLP frame.
pub fn encode(message: &Message) -> Vec<u8> {
    let d = &message.delimiters;
    let mut out = String::new();
    for (index, segment) in message.segments.iter().enumerate() {
        if index > 0 {
            out.push('\r');
        }
        encode_segment(&mut out, segment, d, index == 0 && segment.name == "MSH");
    }
    if message.charset() == "8859/1" {
        out.chars()
            .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
            .collect()
    } else {
        out.into_bytes()
    }
}

fn encode_segment(out: &mut String, segment: &Segment, d: &Delimiters, is_header: bool) {
    out.push_str(&segment.name);
    let fields = trimmed(&segment.fields, Field::is_empty);
    let skip = if is_header {
        // MSH-1 and MSH-2 come from the delimiters, whatever the fields hold.
        out.push(d.field);
        out.push_str(&d.encoding_characters());
        2
    } else {
        0
    };
    for field in fields.iter().skip(skip) {
        out.push(d.field);
        let repetitions = trimmed(&field.repetitions, Repetition::is_empty);
        for (r, repetition) in repetitions.iter().enumerate() {
            if r > 0 {
                out.push(d.repetition);
            }
            let components = trimmed(&repetition.components, Component::is_empty);
            for (c, component) in components.iter().enumerate() {
                if c > 0 {
                    out.push(d.component);
                }
                let subcomponents = trimmed(&component.subcomponents, CompactString::is_empty);
                for (s, value) in subcomponents.iter().enumerate() {
                    if s > 0 {
                        out.push(d.subcomponent);
                    }
                    escape_into(out, value, d);
                }
            }
        }
    }
}

fn trimmed<T>(items: &[T], is_empty: impl Fn(&T) -> bool) -> &[T] {
    let len = items
        .iter()
        .rposition(|i| !is_empty(i))
        .map_or(0, |p| p + 1);
    &items[..len]
}

/// Writes `value` with delimiters and control characters escaped.
pub fn escape_into(out: &mut String, value: &str, d: &Delimiters) {
    for c in value.chars() {
        let name = match c {
            _ if c == d.field => "F",
            _ if c == d.component => "S",
            _ if c == d.subcomponent => "T",
            _ if c == d.repetition => "R",
            _ if c == d.escape => "E",
            _ if Some(c) == d.truncation => "P",
            _ if c.is_ascii_control() => {
                let _ = write!(out, "{}X{:02X}{}", d.escape, u32::from(c), d.escape);
                continue;
            }
            _ => {
                out.push(c);
                continue;
            }
        };
        out.push(d.escape);
        out.push_str(name);
        out.push(d.escape);
    }
}
