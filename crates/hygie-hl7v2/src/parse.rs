//! Bytes to [`Message`]: delimiters from MSH, character set from MSH-18, escapes decoded.

use std::borrow::Cow;

use crate::model::{Component, Delimiters, Field, Message, Repetition, Segment, trim_trailing};

/// Bounds on what [`parse`] accepts, so a hostile sender costs bounded memory and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_segments: usize,
    pub max_fields_per_segment: usize,
    pub max_repetitions: usize,
    pub max_components: usize,
    pub max_subcomponents: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 1024 * 1024,
            max_segments: 10_000,
            max_fields_per_segment: 1_000,
            max_repetitions: 1_000,
            max_components: 100,
            max_subcomponents: 100,
        }
    }
}

/// Why a message was refused. `segment` is the 1-based position of the segment in the
/// message and `field` the HL7 field number, so that a NAK can point at the culprit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the message is empty")]
    Empty,
    #[error("the message is {bytes} bytes, over the limit of {limit}")]
    MessageTooLarge { bytes: usize, limit: usize },
    #[error("the message does not start with an MSH segment")]
    MissingMsh,
    #[error("bad delimiters in MSH-1/MSH-2: {reason}")]
    BadDelimiters { reason: &'static str },
    #[error(
        "unsupported character set {charset:?} in MSH-18 (supported: ASCII, UNICODE UTF-8, 8859/1)"
    )]
    UnsupportedCharset { charset: String },
    #[error("the bytes at offset {byte_offset} are not valid {charset}")]
    BadCharset {
        charset: &'static str,
        byte_offset: usize,
    },
    #[error("segment {segment}: a segment name is 3 uppercase letters or digits")]
    SegmentName { segment: usize },
    #[error("more than {limit} segments")]
    TooManySegments { limit: usize },
    #[error("segment {segment} ({segment_id}): more than {limit} fields")]
    TooManyFields {
        segment: usize,
        segment_id: String,
        limit: usize,
    },
    #[error("{segment_id}-{field} (segment {segment}): more than {limit} repetitions")]
    TooManyRepetitions {
        segment: usize,
        segment_id: String,
        field: usize,
        limit: usize,
    },
    #[error("{segment_id}-{field} (segment {segment}): more than {limit} components")]
    TooManyComponents {
        segment: usize,
        segment_id: String,
        field: usize,
        limit: usize,
    },
    #[error("{segment_id}-{field} (segment {segment}): more than {limit} sub-components")]
    TooManySubcomponents {
        segment: usize,
        segment_id: String,
        field: usize,
        limit: usize,
    },
    #[error("{segment_id}-{field} (segment {segment}): malformed escape sequence")]
    BadEscape {
        segment: usize,
        segment_id: String,
        field: usize,
    },
}

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Parses one HL7 v2 message.
///
/// - Segments may be separated by `\r` (the standard), `\n` or `\r\n` (files edited by
///   hand); empty lines and a leading UTF-8 byte order mark are skipped.
/// - MSH-18 picks the character set: empty, `ASCII` or `UNICODE UTF-8` mean UTF-8 (ASCII
///   is a subset, and senders that declare ASCII send UTF-8 often enough), `8859/1` means
///   Latin-1; anything else is refused rather than guessed.
/// - Escapes `\F\ \S\ \T\ \R\ \E\` (and `\P\` when MSH-2 declares a truncation character)
///   and `\Xhh..\` are decoded; `\H\`, `\N\`, `\.br\` and other formatting or local
///   escapes are kept verbatim, since they describe presentation, not data. A malformed
///   escape (no closing escape character, empty, bad hex or hex that is not valid text in
///   the character set) is an error: silently keeping it would hide a sender's bug.
/// - The result is normalized (see [`Message::normalized`]).
pub fn parse(bytes: &[u8], limits: &Limits) -> Result<Message, ParseError> {
    if bytes.len() > limits.max_message_bytes {
        return Err(ParseError::MessageTooLarge {
            bytes: bytes.len(),
            limit: limits.max_message_bytes,
        });
    }
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    let start = bytes
        .iter()
        .position(|b| !is_segment_separator(*b))
        .ok_or(ParseError::Empty)?;
    let bytes = &bytes[start..];
    if !bytes.starts_with(b"MSH") {
        return Err(ParseError::MissingMsh);
    }
    let delimiters = read_delimiters(bytes)?;
    let latin1 = read_charset(bytes, &delimiters)?;
    let text: Cow<str> = if latin1 {
        Cow::Owned(bytes.iter().map(|b| char::from(*b)).collect())
    } else {
        Cow::Borrowed(
            std::str::from_utf8(bytes).map_err(|e| ParseError::BadCharset {
                charset: "UTF-8",
                byte_offset: start + e.valid_up_to(),
            })?,
        )
    };
    let parser = Parser {
        delimiters,
        limits,
        latin1,
    };
    let mut segments = Vec::new();
    for line in text.split(['\r', '\n']).filter(|l| !l.is_empty()) {
        if segments.len() == limits.max_segments {
            return Err(ParseError::TooManySegments {
                limit: limits.max_segments,
            });
        }
        segments.push(parser.segment(line, segments.len() + 1)?);
    }
    Ok(Message {
        delimiters,
        segments,
    })
}

fn is_segment_separator(byte: u8) -> bool {
    byte == b'\r' || byte == b'\n'
}

fn is_delimiter_byte(byte: u8) -> bool {
    byte.is_ascii_punctuation()
}

fn read_delimiters(bytes: &[u8]) -> Result<Delimiters, ParseError> {
    let field = *bytes.get(3).ok_or(ParseError::BadDelimiters {
        reason: "no field separator after MSH",
    })?;
    if !is_delimiter_byte(field) {
        return Err(ParseError::BadDelimiters {
            reason: "the field separator must be ASCII punctuation",
        });
    }
    let rest = &bytes[4..];
    let end = rest
        .iter()
        .position(|b| *b == field || is_segment_separator(*b))
        .unwrap_or(rest.len());
    let encoding = &rest[..end];
    if !(4..=5).contains(&encoding.len()) {
        return Err(ParseError::BadDelimiters {
            reason: "MSH-2 must hold 4 or 5 encoding characters",
        });
    }
    if !encoding.iter().all(|b| is_delimiter_byte(*b)) {
        return Err(ParseError::BadDelimiters {
            reason: "encoding characters must be ASCII punctuation",
        });
    }
    let mut all = vec![field];
    for b in encoding {
        if all.contains(b) {
            return Err(ParseError::BadDelimiters {
                reason: "delimiters must be distinct",
            });
        }
        all.push(*b);
    }
    Ok(Delimiters {
        field: char::from(field),
        component: char::from(encoding[0]),
        repetition: char::from(encoding[1]),
        escape: char::from(encoding[2]),
        subcomponent: char::from(encoding[3]),
        truncation: encoding.get(4).map(|b| char::from(*b)),
    })
}

/// Whether the message is Latin-1 (otherwise UTF-8), from the raw MSH-18 first value.
fn read_charset(bytes: &[u8], delimiters: &Delimiters) -> Result<bool, ParseError> {
    let msh_end = bytes
        .iter()
        .position(|b| is_segment_separator(*b))
        .unwrap_or(bytes.len());
    // Split on the field separator: piece 0 is "MSH", piece n-1 is MSH-n.
    let msh18 = bytes[..msh_end]
        .split(|b| *b == delimiters.field as u8)
        .nth(17)
        .unwrap_or(b"");
    // Cut at any delimiter so the name matches what `Message::charset` returns.
    let cut = [
        delimiters.component,
        delimiters.repetition,
        delimiters.subcomponent,
        delimiters.escape,
    ];
    let end = msh18
        .iter()
        .position(|b| cut.contains(&char::from(*b)))
        .unwrap_or(msh18.len());
    match &msh18[..end] {
        b"" | b"ASCII" | b"UNICODE UTF-8" => Ok(false),
        b"8859/1" => Ok(true),
        other => Err(ParseError::UnsupportedCharset {
            charset: String::from_utf8_lossy(other).into_owned(),
        }),
    }
}

struct Parser<'a> {
    delimiters: Delimiters,
    limits: &'a Limits,
    latin1: bool,
}

impl Parser<'_> {
    fn segment(&self, line: &str, segment: usize) -> Result<Segment, ParseError> {
        let name_ok = line.len() >= 3
            && line.as_bytes()[..3]
                .iter()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            && line[3..]
                .chars()
                .next()
                .is_none_or(|c| c == self.delimiters.field);
        if !name_ok {
            return Err(ParseError::SegmentName { segment });
        }
        let name = &line[..3];
        let mut fields = Vec::new();
        let mut first_number = 1;
        let mut rest = line.get(4..).map(|r| r.split(self.delimiters.field));
        if segment == 1 {
            // MSH-1 is the separator itself and MSH-2 the encoding characters, kept verbatim.
            fields.push(Field::from_value(self.delimiters.field.to_string()));
            fields.push(Field::from_value(self.delimiters.encoding_characters()));
            rest.as_mut().and_then(Iterator::next);
            first_number = 3;
        }
        for (index, text) in rest.into_iter().flatten().enumerate() {
            let number = first_number + index;
            if number > self.limits.max_fields_per_segment {
                return Err(ParseError::TooManyFields {
                    segment,
                    segment_id: name.to_owned(),
                    limit: self.limits.max_fields_per_segment,
                });
            }
            fields.push(self.field(text, segment, name, number)?);
        }
        trim_trailing(&mut fields, Field::is_empty);
        Ok(Segment {
            name: name.to_owned(),
            fields,
        })
    }

    fn field(
        &self,
        text: &str,
        segment: usize,
        name: &str,
        field: usize,
    ) -> Result<Field, ParseError> {
        if text.is_empty() {
            return Ok(Field::default());
        }
        let d = &self.delimiters;
        let mut repetitions = Vec::new();
        for rep_text in text.split(d.repetition) {
            if repetitions.len() == self.limits.max_repetitions {
                return Err(ParseError::TooManyRepetitions {
                    segment,
                    segment_id: name.to_owned(),
                    field,
                    limit: self.limits.max_repetitions,
                });
            }
            let mut components = Vec::new();
            for comp_text in rep_text.split(d.component) {
                if components.len() == self.limits.max_components {
                    return Err(ParseError::TooManyComponents {
                        segment,
                        segment_id: name.to_owned(),
                        field,
                        limit: self.limits.max_components,
                    });
                }
                let mut subcomponents = Vec::new();
                for sub_text in comp_text.split(d.subcomponent) {
                    if subcomponents.len() == self.limits.max_subcomponents {
                        return Err(ParseError::TooManySubcomponents {
                            segment,
                            segment_id: name.to_owned(),
                            field,
                            limit: self.limits.max_subcomponents,
                        });
                    }
                    let value = unescape(sub_text, d, self.latin1).ok_or_else(|| {
                        ParseError::BadEscape {
                            segment,
                            segment_id: name.to_owned(),
                            field,
                        }
                    })?;
                    subcomponents.push(value);
                }
                trim_trailing(&mut subcomponents, String::is_empty);
                components.push(Component { subcomponents });
            }
            trim_trailing(&mut components, Component::is_empty);
            repetitions.push(Repetition { components });
        }
        trim_trailing(&mut repetitions, Repetition::is_empty);
        Ok(Field { repetitions })
    }
}

/// Decodes escape sequences; `None` when one is malformed.
pub(crate) fn unescape(text: &str, d: &Delimiters, latin1: bool) -> Option<String> {
    if !text.contains(d.escape) {
        return Some(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(d.escape) {
        out.push_str(&rest[..start]);
        let after = &rest[start + d.escape.len_utf8()..];
        let end = after.find(d.escape)?;
        let name = &after[..end];
        rest = &after[end + d.escape.len_utf8()..];
        match name {
            "" => return None,
            "F" => out.push(d.field),
            "S" => out.push(d.component),
            "T" => out.push(d.subcomponent),
            "R" => out.push(d.repetition),
            "E" => out.push(d.escape),
            "P" if d.truncation.is_some() => out.extend(d.truncation),
            _ if name.starts_with('X') => out.push_str(&decode_hex(&name[1..], latin1)?),
            _ => {
                out.push(d.escape);
                out.push_str(name);
                out.push(d.escape);
            }
        }
    }
    out.push_str(rest);
    Some(out)
}

fn decode_hex(hex: &str, latin1: bool) -> Option<String> {
    if hex.is_empty() || !hex.len().is_multiple_of(2) || !hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<_, _>>()
        .ok()?;
    if latin1 {
        Some(bytes.iter().map(|b| char::from(*b)).collect())
    } else {
        String::from_utf8(bytes).ok()
    }
}
