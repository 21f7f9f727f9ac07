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
    let mut scratch = Scratch::default();
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
        segments.push(parser.segment(line, segments.len() + 1, &mut scratch)?);
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

/// What a special byte means in the current message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Text,
    Field,
    Repetition,
    Component,
    Subcomponent,
    Escape,
}

/// The high bit of each byte of a word.
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
/// The other bits.
const LOW_BITS: u64 = !HIGH_BITS;

struct Parser<'a> {
    delimiters: Delimiters,
    limits: &'a Limits,
    latin1: bool,
    classes: [Class; 256],
    /// Each delimiter byte repeated over a word, for [`Parser::specials`].
    splats: [u64; 5],
    /// Whether a field made of one value is within every per-field limit, so that the fast
    /// path of [`Splitter::split`] may skip counting (always, unless a limit is 0).
    one_value_fits: bool,
}

impl<'a> Parser<'a> {
    fn new(delimiters: Delimiters, limits: &'a Limits, latin1: bool) -> Self {
        let mut classes = [Class::Text; 256];
        // Delimiters are ASCII (checked in `read_delimiters`), so a byte stands for them.
        let bytes = [
            (delimiters.field, Class::Field),
            (delimiters.repetition, Class::Repetition),
            (delimiters.component, Class::Component),
            (delimiters.subcomponent, Class::Subcomponent),
            (delimiters.escape, Class::Escape),
        ]
        .map(|(delimiter, class)| {
            classes[delimiter as usize] = class;
            delimiter as u8
        });
        Parser {
            delimiters,
            limits,
            latin1,
            classes,
            splats: bytes.map(|b| u64::from(b) * 0x0101_0101_0101_0101),
            one_value_fits: limits.max_repetitions > 0
                && limits.max_components > 0
                && limits.max_subcomponents > 0,
        }
    }

    /// The high bit of each byte of `word` that is a delimiter, exactly (no false positive: the
    /// splitter visits every bit set). Per delimiter, `(t & LOW) + LOW | t` has a byte's high
    /// bit set when that byte of `t` is not zero, without carries from byte to byte.
    #[inline(always)]
    fn specials(&self, word: u64) -> u64 {
        let differs = |splat: u64| {
            let t = word ^ splat;
            ((t & LOW_BITS) + LOW_BITS) | t
        };
        let [a, b, c, d, e] = self.splats;
        !(differs(a) & differs(b) & differs(c) & differs(d) & differs(e)) & HIGH_BITS
    }

    /// [`Parser::specials`] of the 8 bytes of `bytes` from `base`, padded with zeros (never a
    /// delimiter) past the end.
    #[inline(always)]
    fn specials_at(&self, bytes: &[u8], base: usize) -> u64 {
        let word = match bytes.get(base..base + 8) {
            Some(word) => u64::from_le_bytes(word.try_into().unwrap_or_default()),
            None => {
                let mut word = [0; 8];
                let rest = bytes.get(base..).unwrap_or_default();
                word[..rest.len()].copy_from_slice(rest);
                u64::from_le_bytes(word)
            }
        };
        self.specials(word)
    }

    /// The class of the byte at `index`, a field separator past the end.
    #[inline(always)]
    fn class_at(&self, bytes: &[u8], index: usize) -> Class {
        bytes
            .get(index)
            .map_or(Class::Field, |b| self.classes[usize::from(*b)])
    }

    fn segment(
        &self,
        line: &str,
        segment: usize,
        scratch: &mut Scratch,
    ) -> Result<Segment, ParseError> {
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
        let mut splitter = Splitter {
            parser: self,
            fields: std::mem::take(&mut scratch.fields),
            scratch,
            line,
            segment,
            name,
            field: 1,
            pending_fields: 0,
            repetition_count: 0,
            component_count: 0,
            subcomponent_count: 0,
        };
        // Index of the field separator that opens the first field to split.
        let mut opening = 3;
        if segment == 1 {
            // MSH-1 is the separator itself and MSH-2 the encoding characters, kept verbatim.
            // Both are non-empty, so these are `Field::from_value` without its normalizing copy.
            let encoding = self.delimiters.encoding_characters();
            opening = 4 + encoding.len();
            let mut separator = [0; 4];
            let separator = self.delimiters.field.encode_utf8(&mut separator);
            for value in [&*separator, &encoding] {
                splitter.fields.push(Field {
                    repetitions: Parts::one(Repetition {
                        components: Parts::one(Component {
                            subcomponents: Parts::one(CompactString::new(value)),
                        }),
                    }),
                });
            }
            splitter.field = 3;
        }
        if opening < bytes.len() {
            splitter.split(opening + 1)?;
        }
        // The fields were read into a vector reused from segment to segment (so there is no
        // need to count them first); the segment gets them in one exact-size allocation.
        let mut fields = Vec::with_capacity(splitter.fields.len());
        fields.append(&mut splitter.fields);
        splitter.scratch.fields = splitter.fields;
        Ok(Segment {
            name: name.to_owned(),
            fields,
        })
    }
}

/// Where the splitter is in a line: the special bytes (delimiters) of the 8-byte word at
/// `base` not visited yet, as the high bits of `specials`. Visiting special bytes only, a word
/// at a time, skips plain text without a branch per byte.
struct Cursor {
    base: usize,
    specials: u64,
}

impl Cursor {
    /// A cursor on the special bytes from `from` on.
    fn new(parser: &Parser, bytes: &[u8], from: usize) -> Cursor {
        let base = from & !7;
        let below = (from - base) * 8;
        Cursor {
            base,
            specials: parser.specials_at(bytes, base) & (u64::MAX << below),
        }
    }

    /// The index of the next special byte, the line's length when there is none left.
    #[inline(always)]
    fn next(&mut self, parser: &Parser, bytes: &[u8]) -> usize {
        while self.specials == 0 {
            self.base += 8;
            if self.base >= bytes.len() {
                return bytes.len();
            }
            self.specials = parser.specials_at(bytes, self.base);
        }
        let index = self.base + (self.specials.trailing_zeros() / 8) as usize;
        self.specials &= self.specials - 1;
        index
    }

    /// The next special byte that is not the escape character, and its class; `escaped` is set
    /// when escape characters were passed.
    #[inline(always)]
    fn next_delimiter(
        &mut self,
        parser: &Parser,
        bytes: &[u8],
        escaped: &mut bool,
    ) -> (usize, Class) {
        loop {
            let index = self.next(parser, bytes);
            let class = parser.class_at(bytes, index);
            if class != Class::Escape {
                return (index, class);
            }
            *escaped = true;
        }
    }
}

/// Which per-field limit a field went over.
#[derive(Clone, Copy)]
enum Over {
    Repetitions,
    Components,
    Subcomponents,
}

/// Buffers reused from field to field and segment to segment, so that splitting allocates
/// only what the message keeps.
#[derive(Default)]
struct Scratch {
    /// The fields of the segment being split.
    fields: Vec<Field>,
    /// The values of the field being split, empty ones included.
    values: Vec<Value>,
    /// The text of values that held escapes, decoded.
    decoded: String,
    /// For each component of the field: the end of its values in `values`.
    components: Vec<usize>,
    /// For each repetition of the field: the end of its components in `components`.
    repetitions: Vec<usize>,
}

/// A value as a byte range of the segment, or of [`Scratch::decoded`] when it held escapes.
#[derive(Clone, Copy)]
struct Value {
    start: usize,
    end: usize,
    decoded: bool,
}

impl Value {
    fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// Splits the fields of one segment in a single pass over its special bytes. A field is first
/// read into [`Scratch`] (value ranges and where each component and repetition ends, trailing
/// empty ones dropped, so the result is normalized), then built with every list at its exact
/// size, directly (no iterator adapters for the usual lists of one item). A single-value field
/// skips [`Scratch`] altogether.
struct Splitter<'p, 'a> {
    parser: &'p Parser<'a>,
    scratch: &'p mut Scratch,
    line: &'p str,
    segment: usize,
    name: &'p str,
    /// HL7 number of the field being read.
    field: usize,
    fields: Vec<Field>,
    /// Empty fields read and not stored yet: stored only if a non-empty one follows.
    pending_fields: usize,
    repetition_count: usize,
    component_count: usize,
    subcomponent_count: usize,
}

impl Splitter<'_, '_> {
    fn split(&mut self, from: usize) -> Result<(), ParseError> {
        let parser = self.parser;
        let limits = parser.limits;
        let bytes = self.line.as_bytes();
        let mut cursor = Cursor::new(parser, bytes, from);
        let mut start = from;
        loop {
            // `start` is the first byte of field number `self.field`.
            if self.field > limits.max_fields_per_segment {
                return Err(self.too_many_fields());
            }
            // Most fields hold a single value: find the first delimiter, and if it ends the
            // field, store the value directly instead of going through the general splitter.
            let mut escaped = false;
            let (index, class) = cursor.next_delimiter(parser, bytes, &mut escaped);
            let end = if class == Class::Field && parser.one_value_fits {
                self.single_value_field(start, index, escaped)?;
                index
            } else {
                self.general_field(&mut cursor, start, index, class, escaped)?
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
    fn single_value_field(
        &mut self,
        start: usize,
        end: usize,
        escaped: bool,
    ) -> Result<(), ParseError> {
        if start == end {
            self.pending_fields += 1;
            return Ok(());
        }
        let mut value = Value {
            start,
            end,
            decoded: false,
        };
        if escaped {
            self.scratch.decoded.clear();
            value = self.decode(value)?;
        }
        self.flush_pending_fields();
        let source = if escaped {
            &self.scratch.decoded
        } else {
            self.line
        };
        let value = CompactString::new(&source[value.start..value.end]);
        self.fields.push(Field {
            repetitions: Parts::one(Repetition {
                components: Parts::one(Component {
                    subcomponents: Parts::one(value),
                }),
            }),
        });
        Ok(())
    }

    /// Splits one field from `from` (its first byte), going on at `index`, the first delimiter
    /// of the field other than the escape character (of class `class`), with `escaped` telling
    /// whether `from..index` holds the escape character. Returns the index of the separator
    /// that ends the field (the line's length at its end).
    fn general_field(
        &mut self,
        cursor: &mut Cursor,
        from: usize,
        mut index: usize,
        mut class: Class,
        mut escaped: bool,
    ) -> Result<usize, ParseError> {
        let parser = self.parser;
        let bytes = self.line.as_bytes();
        let scratch = &mut *self.scratch;
        scratch.values.clear();
        scratch.decoded.clear();
        scratch.components.clear();
        scratch.repetitions.clear();
        self.repetition_count = 0;
        self.component_count = 0;
        self.subcomponent_count = 0;
        let mut start = from;
        loop {
            self.value(start, index, escaped)?;
            match class {
                Class::Subcomponent => {}
                Class::Component => self.end_component()?,
                Class::Repetition => self.end_repetition()?,
                _ => {
                    self.end_field()?;
                    return Ok(index);
                }
            }
            start = index + 1;
            escaped = false;
            (index, class) = cursor.next_delimiter(parser, bytes, &mut escaped);
        }
    }

    /// The text of `value` decoded into [`Scratch::decoded`].
    fn decode(&mut self, value: Value) -> Result<Value, ParseError> {
        let parser = self.parser;
        let decoded = &mut self.scratch.decoded;
        let start = decoded.len();
        if unescape_into(
            &self.line[value.start..value.end],
            &parser.delimiters,
            parser.latin1,
            decoded,
        )
        .is_none()
        {
            return Err(self.bad_escape());
        }
        let end = self.scratch.decoded.len();
        Ok(Value {
            start,
            end,
            decoded: true,
        })
    }

    #[inline]
    fn value(&mut self, start: usize, end: usize, escaped: bool) -> Result<(), ParseError> {
        self.subcomponent_count += 1;
        let limit = self.parser.limits.max_subcomponents;
        if self.subcomponent_count > limit {
            return Err(self.too_many(Over::Subcomponents));
        }
        let mut value = Value {
            start,
            end,
            decoded: false,
        };
        if escaped {
            // Every escape decodes to at least one character: `value` stays non-empty.
            value = self.decode(value)?;
        }
        self.scratch.values.push(value);
        Ok(())
    }

    #[inline]
    fn end_component(&mut self) -> Result<(), ParseError> {
        self.component_count += 1;
        let limit = self.parser.limits.max_components;
        if self.component_count > limit {
            return Err(self.too_many(Over::Components));
        }
        self.subcomponent_count = 0;
        let scratch = &mut *self.scratch;
        let first = scratch.components.last().copied().unwrap_or(0);
        while scratch.values.len() > first && scratch.values.last().is_some_and(Value::is_empty) {
            scratch.values.pop();
        }
        scratch.components.push(scratch.values.len());
        Ok(())
    }

    #[inline]
    fn end_repetition(&mut self) -> Result<(), ParseError> {
        self.end_component()?;
        self.repetition_count += 1;
        let limit = self.parser.limits.max_repetitions;
        if self.repetition_count > limit {
            return Err(self.too_many(Over::Repetitions));
        }
        self.component_count = 0;
        let scratch = &mut *self.scratch;
        let first = scratch.repetitions.last().copied().unwrap_or(0);
        pop_empty_ends(&mut scratch.components, first);
        scratch.repetitions.push(scratch.components.len());
        Ok(())
    }

    fn end_field(&mut self) -> Result<(), ParseError> {
        self.end_repetition()?;
        let scratch = &mut *self.scratch;
        pop_empty_ends(&mut scratch.repetitions, 0);
        if scratch.repetitions.is_empty() {
            self.pending_fields += 1;
            return Ok(());
        }
        self.flush_pending_fields();
        let (line, scratch) = (self.line, &*self.scratch);
        let text = |value: &Value| {
            let source = if value.decoded {
                &scratch.decoded
            } else {
                line
            };
            CompactString::new(&source[value.start..value.end])
        };
        let component = |values: &[Value]| Component {
            subcomponents: match values {
                [] => Parts::new(),
                [value] => Parts::one(text(value)),
                _ => values.iter().map(text).collect(),
            },
        };
        // Ends are increasing: `components[i]` ends the values of component i, which start
        // where component i - 1 ends; the same for repetitions and components.
        let repetition = |first: usize, end: usize| {
            let start = |i: usize| if i == 0 { 0 } else { scratch.components[i - 1] };
            let values = |i: usize| &scratch.values[start(i)..scratch.components[i]];
            Repetition {
                components: if end - first == 1 {
                    Parts::one(component(values(first)))
                } else {
                    (first..end).map(|i| component(values(i))).collect()
                },
            }
        };
        let repetitions = match scratch.repetitions[..] {
            [end] => Parts::one(repetition(0, end)),
            ref ends => (0..ends.len())
                .map(|i| repetition(if i == 0 { 0 } else { ends[i - 1] }, ends[i]))
                .collect(),
        };
        self.fields.push(Field { repetitions });
        Ok(())
    }

    fn flush_pending_fields(&mut self) {
        for _ in 0..std::mem::take(&mut self.pending_fields) {
            self.fields.push(Field::default());
        }
    }

    // Errors are built out of line, so that the checks inline into the splitting loop.

    #[cold]
    #[inline(never)]
    fn too_many(&self, over: Over) -> ParseError {
        let (segment, segment_id, field) = (self.segment, self.name.to_owned(), self.field);
        let limits = self.parser.limits;
        match over {
            Over::Repetitions => ParseError::TooManyRepetitions {
                segment,
                segment_id,
                field,
                limit: limits.max_repetitions,
            },
            Over::Components => ParseError::TooManyComponents {
                segment,
                segment_id,
                field,
                limit: limits.max_components,
            },
            Over::Subcomponents => ParseError::TooManySubcomponents {
                segment,
                segment_id,
                field,
                limit: limits.max_subcomponents,
            },
        }
    }

    #[cold]
    #[inline(never)]
    fn bad_escape(&self) -> ParseError {
        ParseError::BadEscape {
            segment: self.segment,
            segment_id: self.name.to_owned(),
            field: self.field,
        }
    }

    #[cold]
    #[inline(never)]
    fn too_many_fields(&self) -> ParseError {
        ParseError::TooManyFields {
            segment: self.segment,
            segment_id: self.name.to_owned(),
            limit: self.parser.limits.max_fields_per_segment,
        }
    }
}

/// Drops the trailing entries of `ends[first..]` that end where the one before them ends
/// (they hold nothing), as normalization wants.
fn pop_empty_ends(ends: &mut Vec<usize>, first: usize) {
    while ends.len() > first {
        let last = ends.len() - 1;
        let previous = if last == 0 { 0 } else { ends[last - 1] };
        if ends[last] != previous {
            break;
        }
        ends.pop();
    }
}

/// Appends `text` to `out` with its escape sequences decoded; `None` when one is malformed.
fn unescape_into(text: &str, d: &Delimiters, latin1: bool, out: &mut String) -> Option<()> {
    // Delimiters are ASCII (checked in `read_delimiters`), so a byte search finds them.
    let escape = d.escape as u8;
    // Values are short: a plain loop beats memchr's setup.
    let find = |text: &str| text.bytes().position(|b| b == escape);
    let mut rest = text;
    while let Some(start) = find(rest) {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let end = find(after)?;
        let name = &after[..end];
        rest = &after[end + 1..];
        match name.as_bytes() {
            [] => return None,
            [b'F'] => out.push(d.field),
            [b'S'] => out.push(d.component),
            [b'T'] => out.push(d.subcomponent),
            [b'R'] => out.push(d.repetition),
            [b'E'] => out.push(d.escape),
            [b'P'] if d.truncation.is_some() => out.extend(d.truncation),
            [b'X', ..] => out.push_str(&decode_hex(&name[1..], latin1)?),
            _ => {
                out.push(d.escape);
                out.push_str(name);
                out.push(d.escape);
            }
        }
    }
    out.push_str(rest);
    Some(())
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
