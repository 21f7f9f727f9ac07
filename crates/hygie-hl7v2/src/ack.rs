//! Acknowledgements in HL7 original mode: MSH, MSA and, for errors, ERR.

use crate::model::{Field, Message, Segment};
use crate::parse::ParseError;

/// MSA-1 acknowledgement code (table 0008, original mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// `AA`: accepted and processed.
    Accept,
    /// `AE`: an error the sender should look at; resending as is will fail again.
    Error,
    /// `AR`: rejected (bad header, unsupported type or version...).
    Reject,
}

impl AckCode {
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::Accept => "AA",
            AckCode::Error => "AE",
            AckCode::Reject => "AR",
        }
    }
}

/// ERR-3 HL7 error code (table 0357), the subset a hub can raise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    SegmentSequenceError,
    RequiredFieldMissing,
    DataTypeError,
    TableValueNotFound,
    UnsupportedMessageType,
    UnsupportedEventCode,
    UnsupportedProcessingId,
    UnsupportedVersionId,
    UnknownKeyIdentifier,
    DuplicateKeyIdentifier,
    ApplicationRecordLocked,
    ApplicationInternalError,
}

impl ErrorCode {
    pub fn code(self) -> u16 {
        match self {
            ErrorCode::SegmentSequenceError => 100,
            ErrorCode::RequiredFieldMissing => 101,
            ErrorCode::DataTypeError => 102,
            ErrorCode::TableValueNotFound => 103,
            ErrorCode::UnsupportedMessageType => 200,
            ErrorCode::UnsupportedEventCode => 201,
            ErrorCode::UnsupportedProcessingId => 202,
            ErrorCode::UnsupportedVersionId => 203,
            ErrorCode::UnknownKeyIdentifier => 204,
            ErrorCode::DuplicateKeyIdentifier => 205,
            ErrorCode::ApplicationRecordLocked => 206,
            ErrorCode::ApplicationInternalError => 207,
        }
    }

    /// The table's display text.
    pub fn text(self) -> &'static str {
        match self {
            ErrorCode::SegmentSequenceError => "Segment sequence error",
            ErrorCode::RequiredFieldMissing => "Required field missing",
            ErrorCode::DataTypeError => "Data type error",
            ErrorCode::TableValueNotFound => "Table value not found",
            ErrorCode::UnsupportedMessageType => "Unsupported message type",
            ErrorCode::UnsupportedEventCode => "Unsupported event code",
            ErrorCode::UnsupportedProcessingId => "Unsupported processing id",
            ErrorCode::UnsupportedVersionId => "Unsupported version id",
            ErrorCode::UnknownKeyIdentifier => "Unknown key identifier",
            ErrorCode::DuplicateKeyIdentifier => "Duplicate key identifier",
            ErrorCode::ApplicationRecordLocked => "Application record locked",
            ErrorCode::ApplicationInternalError => "Application internal error",
        }
    }
}

/// ERR-2 error location (ERL): segment id, segment position (1-based in the message),
/// field, field repetition and component.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorLocation {
    pub segment_id: String,
    pub sequence: usize,
    pub field: Option<usize>,
    pub field_repetition: Option<usize>,
    pub component: Option<usize>,
}

/// What goes wrong, where, said for the sender's help desk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckError {
    pub code: ErrorCode,
    pub location: Option<ErrorLocation>,
    /// ERR-8 user message.
    pub diagnostic: String,
}

fn at(segment_id: &str, sequence: usize, field: Option<usize>) -> Option<ErrorLocation> {
    Some(ErrorLocation {
        segment_id: segment_id.to_owned(),
        sequence,
        field,
        ..ErrorLocation::default()
    })
}

impl From<&ParseError> for AckError {
    /// Framing and structure faults are 100, malformed values 102, an unknown MSH-18 103,
    /// and exceeded limits 207 (the sender's message may be valid HL7, we refuse its size).
    fn from(error: &ParseError) -> AckError {
        use ParseError as E;
        let (code, location) = match error {
            E::Empty => (ErrorCode::SegmentSequenceError, None),
            E::MissingMsh => (ErrorCode::SegmentSequenceError, at("MSH", 1, None)),
            E::SegmentName { segment } => (ErrorCode::SegmentSequenceError, at("", *segment, None)),
            E::BadDelimiters { .. } => (ErrorCode::DataTypeError, at("MSH", 1, Some(2))),
            E::UnsupportedCharset { .. } => (ErrorCode::TableValueNotFound, at("MSH", 1, Some(18))),
            E::BadCharset { .. } => (ErrorCode::DataTypeError, None),
            E::BadEscape {
                segment,
                segment_id,
                field,
            } => (
                ErrorCode::DataTypeError,
                at(segment_id, *segment, Some(*field)),
            ),
            E::MessageTooLarge { .. } | E::TooManySegments { .. } => {
                (ErrorCode::ApplicationInternalError, None)
            }
            E::TooManyFields {
                segment,
                segment_id,
                ..
            } => (
                ErrorCode::ApplicationInternalError,
                at(segment_id, *segment, None),
            ),
            E::TooManyRepetitions {
                segment,
                segment_id,
                field,
                ..
            }
            | E::TooManyComponents {
                segment,
                segment_id,
                field,
                ..
            }
            | E::TooManySubcomponents {
                segment,
                segment_id,
                field,
                ..
            } => (
                ErrorCode::ApplicationInternalError,
                at(segment_id, *segment, Some(*field)),
            ),
        };
        AckError {
            code,
            location,
            diagnostic: error.to_string(),
        }
    }
}

/// Builds the acknowledgement of `original` (HL7 original mode): sender and receiver
/// swapped, MSH-9 `ACK^<trigger>^ACK`, MSH-10 `control_id`, MSH-7 `now` (the caller owns the
/// clock), processing id, version and character set of the original; MSA with `code` and
/// the original control id; and, for `AE`/`AR` with an `error`, an ERR segment with
/// location, code (table 0357), severity `E` and the diagnostic as user message.
pub fn ack(
    original: &Message,
    code: AckCode,
    error: Option<&AckError>,
    control_id: &str,
    now: &str,
) -> Message {
    let empty = Field::default();
    let msh_field = |n: usize| {
        original
            .segment("MSH")
            .and_then(|msh| msh.field(n))
            .unwrap_or(&empty)
            .clone()
    };
    let d = original.delimiters;
    let (_, trigger, _) = original.message_type();
    let mut msh = vec![
        Field::from_value(d.field.to_string()),
        Field::from_value(d.encoding_characters()),
        msh_field(5),
        msh_field(6),
        msh_field(3),
        msh_field(4),
        Field::from_value(now),
        Field::default(),
        Field::from_components(["ACK", trigger, "ACK"]),
        Field::from_value(control_id),
        msh_field(11),
        msh_field(12),
    ];
    msh.resize(17, Field::default());
    msh.push(msh_field(18));
    let mut segments = vec![
        Segment::new("MSH", msh),
        Segment::new(
            "MSA",
            vec![
                Field::from_value(code.as_str()),
                Field::from_value(original.control_id()),
            ],
        ),
    ];
    if let Some(error) = error.filter(|_| code != AckCode::Accept) {
        segments.push(err_segment(error));
    }
    Message {
        delimiters: d,
        segments,
    }
    .normalized()
}

fn err_segment(error: &AckError) -> Segment {
    let number = |n: Option<usize>| n.map(|n| n.to_string()).unwrap_or_default();
    let location = match &error.location {
        Some(l) => Field::from_components([
            l.segment_id.clone(),
            l.sequence.to_string(),
            number(l.field),
            number(l.field_repetition),
            number(l.component),
        ]),
        None => Field::default(),
    };
    let mut fields = vec![
        Field::default(),
        location,
        Field::from_components([
            error.code.code().to_string(),
            error.code.text().to_owned(),
            "HL70357".to_owned(),
        ]),
        Field::from_value("E"),
    ];
    fields.resize(7, Field::default());
    fields.push(Field::from_value(error.diagnostic.clone()));
    Segment::new("ERR", fields)
}
