//! HL7 v2 messages as plain data: [`parse`] bytes into a [`Message`] tree (delimiters read
//! from MSH, escapes decoded, character set from MSH-18), [`encode`] it back, wrap and unwrap
//! MLLP frames ([`mllp`]) and build acknowledgements ([`ack()`]). Pure: no IO, no clock, no
//! network; the listener that owns sockets lives elsewhere.
//!
//! ```
//! use hygie_hl7v2::{Limits, encode, parse};
//!
//! let bytes = b"MSH|^~\\&|LAB|HOSP|HUB|HOSP|20250101120000||ORU^R01^ORU_R01|42|P|2.5.1\r\
//!               PID|1||123^^^HOSP^MR||Doe^Jane";
//! let message = parse(bytes, &Limits::default()).unwrap();
//! assert_eq!(message.message_type(), ("ORU", "R01", "ORU_R01"));
//! assert_eq!(message.control_id(), "42");
//! let pid = message.segment("PID").unwrap();
//! assert_eq!(pid.field(5).unwrap().component(2).unwrap().value(), "Jane");
//! assert_eq!(parse(&encode(&message), &Limits::default()).unwrap(), message);
//! ```
#![forbid(unsafe_code)]

pub mod ack;
mod encode;
pub mod mllp;
mod model;
mod parse;

/// The type of stored values (sub-components), re-exported so that callers building a
/// [`Component`] by hand need not depend on `compact_str` themselves.
pub use compact_str::CompactString;

pub use ack::{AckCode, AckError, ErrorCode, ack};
pub use encode::{encode, escape_into};
pub use model::{Component, Delimiters, Field, Message, Parts, Repetition, Segment};
pub use parse::{Limits, ParseError, parse};
