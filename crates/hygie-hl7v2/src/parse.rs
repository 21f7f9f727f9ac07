//! Bytes to [`Message`]: delimiters from MSH, character set from MSH-18, escapes decoded.

use std::borrow::Cow;

use compact_str::CompactString;

use crate::model::{Component, Delimiters, Field, Message, Parts, Repetition, Segment};

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
    /// `byte_offset` counts from the first byte given to [`parse`].
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
    let bom_len = if bytes.starts_with(UTF8_BOM) {
        UTF8_BOM.len()
    } else {
        0
    };
    let bytes = &bytes[bom_len..];
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
                byte_offset: bom_len + start + e.valid_up_to(),
            })?,
        )
    };
    let parser = Parser::new(delimiters, limits, latin1);
    // Sized once from the separators (an upper bound: empty lines are skipped), capped by the
    // limit so that a hostile message cannot make us reserve more than the limit allows.
    let separators = memchr::memchr2_iter(b'\r', b'\n', bytes).count();
    let mut segments = Vec::with_capacity(separators.min(limits.max_segments) + 1);
    let mut rest: &str = &text;
    while !rest.is_empty() {
        let end = memchr::memchr2(b'\r', b'\n', rest.as_bytes()).unwrap_or(rest.len());
        let line = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or("");
        if line.is_empty() {
            continue;
        }
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

/// What a byte means in the current message, looked up once per byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Text,
    Field,
    Repetition,
    Component,
    Subcomponent,
    Escape,
}

struct Parser<'a> {
    delimiters: Delimiters,
    limits: &'a Limits,
    latin1: bool,
    classes: [Class; 256],
    field_byte: u8,
    /// Whether a field made of one value is within every per-field limit, so that the fast
    /// path of [`FieldsBuilder::split`] may skip counting (always, unless a limit is 0).
    one_value_fits: bool,
}

impl<'a> Parser<'a> {
    fn new(delimiters: Delimiters, limits: &'a Limits, latin1: bool) -> Self {
        let mut classes = [Class::Text; 256];
        // Delimiters are ASCII (checked in `read_delimiters`), so a byte stands for them.
        classes[delimiters.field as usize] = Class::Field;
        classes[delimiters.repetition as usize] = Class::Repetition;
        classes[delimiters.component as usize] = Class::Component;
        classes[delimiters.subcomponent as usize] = Class::Subcomponent;
        classes[delimiters.escape as usize] = Class::Escape;
        Parser {
            delimiters,
            limits,
            latin1,
            classes,
            field_byte: delimiters.field as u8,
            one_value_fits: limits.max_repetitions > 0
                && limits.max_components > 0
                && limits.max_subcomponents > 0,
        }
    }

    fn segment(&self, line: &str, segment: usize) -> Result<Segment, ParseError> {
        let bytes = line.as_bytes();
        let name_ok = bytes.len() >= 3
            && bytes[..3]
                .iter()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            && bytes
                .get(3)
                .is_none_or(|b| self.classes[usize::from(*b)] == Class::Field);
        if !name_ok {
            return Err(ParseError::SegmentName { segment });
        }
        let name = &line[..3];
        let field_byte = self.field_byte;
        let mut builder = FieldsBuilder {
            parser: self,
            segment,
            name,
            field: 1,
            // One field per field separator (MSH-1 is one more), capped like `segments`.
            fields: Vec::with_capacity(
                bytes
                    .iter()
                    .filter(|b| **b == field_byte)
                    .count()
                    .min(self.limits.max_fields_per_segment)
                    + 1,
            ),
            pending_fields: 0,
            repetitions: Parts::new(),
            pending_repetitions: 0,
            repetition_count: 0,
            components: Parts::new(),
            pending_components: 0,
            component_count: 0,
            subcomponents: Parts::new(),
            pending_subcomponents: 0,
            subcomponent_count: 0,
        };
        // Index of the field separator that opens the first field to split.
        let mut opening = 3;
        if segment == 1 {
            // MSH-1 is the separator itself and MSH-2 the encoding characters, kept verbatim.
            let encoding = self.delimiters.encoding_characters();
            opening = 4 + encoding.len();
            builder
                .fields
                .push(Field::from_value(self.delimiters.field.to_string()));
            builder.fields.push(Field::from_value(encoding));
            builder.field = 3;
        }
        if opening < bytes.len() {
            builder.split(line, opening + 1)?;
        }
        Ok(Segment {
            name: name.to_owned(),
            fields: builder.fields,
        })
    }
}

/// Splits the fields of one segment in a single pass over its bytes. Empty values are only
/// counted until a non-empty one follows, so trailing empties are never stored (the result is
/// normalized) and cost no allocation.
struct FieldsBuilder<'p, 'a> {
    parser: &'p Parser<'a>,
    segment: usize,
    name: &'p str,
    /// HL7 number of the field being read.
    field: usize,
    fields: Vec<Field>,
    pending_fields: usize,
    repetitions: Parts<Repetition>,
    pending_repetitions: usize,
    repetition_count: usize,
    components: Parts<Component>,
    pending_components: usize,
    component_count: usize,
    subcomponents: Parts<CompactString>,
    pending_subcomponents: usize,
    subcomponent_count: usize,
}

impl FieldsBuilder<'_, '_> {
    fn split(&mut self, line: &str, from: usize) -> Result<(), ParseError> {
        let limits = self.parser.limits;
        let classes = &self.parser.classes;
        let bytes = line.as_bytes();
        let mut start = from;
        loop {
            // `start` is the first byte of field number `self.field`.
            if self.field > limits.max_fields_per_segment {
                return Err(self.too_many_fields());
            }
            // Most fields hold a single value: find the first delimiter, and if it ends the
            // field, store the value directly instead of going through the general splitter.
            let mut index = start;
            let mut escaped = false;
            let mut class = Class::Field;
            while let Some(byte) = bytes.get(index) {
                match classes[usize::from(*byte)] {
                    Class::Text => {}
                    Class::Escape => escaped = true,
                    other => {
                        class = other;
                        break;
                    }
                }
                index += 1;
            }
            let end = if class == Class::Field && self.parser.one_value_fits {
                self.single_value_field(&line[start..index], escaped)?;
                index
            } else {
                // Bytes `start..index` are text: carry on from `index` with the same state.
                self.general_field(line, start, index, escaped)?
            };
            if end >= bytes.len() {
                return Ok(());
            }
            start = end + 1;
            self.field += 1;
        }
    }

    /// A field that holds one value (no repetition, component or sub-component separator):
    /// the same result as the general splitter, without its bookkeeping.
    fn single_value_field(&mut self, text: &str, escaped: bool) -> Result<(), ParseError> {
        if text.is_empty() {
            self.pending_fields += 1;
            return Ok(());
        }
        let value = self.leaf(text, escaped)?;
        for _ in 0..std::mem::take(&mut self.pending_fields) {
            self.fields.push(Field::default());
        }
        self.fields.push(Field {
            repetitions: Parts::one(Repetition {
                components: Parts::one(Component {
                    subcomponents: Parts::one(value),
                }),
            }),
        });
        Ok(())
    }

    /// Splits one field from `from` (its first byte), going on at `index` with the text in
    /// `from..index` read and `escaped` telling whether it holds the escape character. Returns
    /// the index of the separator that ends the field (the line's length at its end).
    fn general_field(
        &mut self,
        line: &str,
        from: usize,
        mut index: usize,
        mut escaped: bool,
    ) -> Result<usize, ParseError> {
        let classes = &self.parser.classes;
        let bytes = line.as_bytes();
        let mut start = from;
        while let Some(byte) = bytes.get(index) {
            match classes[usize::from(*byte)] {
                Class::Text => {}
                Class::Escape => escaped = true,
                class => {
                    self.value(&line[start..index], escaped)?;
                    start = index + 1;
                    escaped = false;
                    match class {
                        Class::Subcomponent => {}
                        Class::Component => self.end_component()?,
                        Class::Repetition => self.end_repetition()?,
                        _ => {
                            self.end_field()?;
                            return Ok(index);
                        }
                    }
                }
            }
            index += 1;
        }
        self.value(&line[start..], escaped)?;
        self.end_field()?;
        Ok(bytes.len())
    }

    /// A non-empty value as stored: unescaped when it holds the escape character.
    fn leaf(&self, text: &str, escaped: bool) -> Result<CompactString, ParseError> {
        if !escaped {
            return Ok(CompactString::new(text));
        }
        let parser = self.parser;
        let value = unescape(text, &parser.delimiters, parser.latin1).ok_or_else(|| {
            ParseError::BadEscape {
                segment: self.segment,
                segment_id: self.name.to_owned(),
                field: self.field,
            }
        })?;
        Ok(value.into())
    }

    fn value(&mut self, text: &str, escaped: bool) -> Result<(), ParseError> {
        self.subcomponent_count += 1;
        let limit = self.parser.limits.max_subcomponents;
        if self.subcomponent_count > limit {
            return Err(ParseError::TooManySubcomponents {
                segment: self.segment,
                segment_id: self.name.to_owned(),
                field: self.field,
                limit,
            });
        }
        if text.is_empty() {
            self.pending_subcomponents += 1;
            return Ok(());
        }
        let value = self.leaf(text, escaped)?;
        for _ in 0..std::mem::take(&mut self.pending_subcomponents) {
            self.subcomponents.push(CompactString::default());
        }
        // Every escape decodes to at least one character: `value` is not empty.
        self.subcomponents.push(value);
        Ok(())
    }

    fn end_component(&mut self) -> Result<(), ParseError> {
        self.component_count += 1;
        let limit = self.parser.limits.max_components;
        if self.component_count > limit {
            return Err(ParseError::TooManyComponents {
                segment: self.segment,
                segment_id: self.name.to_owned(),
                field: self.field,
                limit,
            });
        }
        self.subcomponent_count = 0;
        self.pending_subcomponents = 0;
        if self.subcomponents.is_empty() {
            self.pending_components += 1;
            return Ok(());
        }
        for _ in 0..std::mem::take(&mut self.pending_components) {
            self.components.push(Component::default());
        }
        let subcomponents = std::mem::take(&mut self.subcomponents);
        self.components.push(Component { subcomponents });
        Ok(())
    }

    fn end_repetition(&mut self) -> Result<(), ParseError> {
        self.end_component()?;
        self.repetition_count += 1;
        let limit = self.parser.limits.max_repetitions;
        if self.repetition_count > limit {
            return Err(ParseError::TooManyRepetitions {
                segment: self.segment,
                segment_id: self.name.to_owned(),
                field: self.field,
                limit,
            });
        }
        self.component_count = 0;
        self.pending_components = 0;
        if self.components.is_empty() {
            self.pending_repetitions += 1;
            return Ok(());
        }
        for _ in 0..std::mem::take(&mut self.pending_repetitions) {
            self.repetitions.push(Repetition::default());
        }
        let components = std::mem::take(&mut self.components);
        self.repetitions.push(Repetition { components });
        Ok(())
    }

    fn end_field(&mut self) -> Result<(), ParseError> {
        self.end_repetition()?;
        self.repetition_count = 0;
        self.pending_repetitions = 0;
        if self.repetitions.is_empty() {
            self.pending_fields += 1;
            return Ok(());
        }
        for _ in 0..std::mem::take(&mut self.pending_fields) {
            self.fields.push(Field::default());
        }
        let repetitions = std::mem::take(&mut self.repetitions);
        self.fields.push(Field { repetitions });
        Ok(())
    }

    fn too_many_fields(&self) -> ParseError {
        ParseError::TooManyFields {
            segment: self.segment,
            segment_id: self.name.to_owned(),
            limit: self.parser.limits.max_fields_per_segment,
        }
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
