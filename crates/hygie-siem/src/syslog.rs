//! RFC 5424 messages and RFC 6587 octet-counted frames for AuditEvent leaves. Pure: no IO.
//!
//! One leaf becomes
//! `LEN SP <PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID [hygie@PEN index="N" subtype=".." outcome=".."] BOM JSON`:
//!
//! - PRI is `facility * 8 + severity`, the severity read from the AuditEvent's `outcome`
//!   (0 → 6 informational, 4 → 4 warning, 8 and 12 → 3 error; absent or unknown → 4, since
//!   an event that cannot be classified deserves a look);
//! - TIMESTAMP is the leaf's recorded time in UTC with microseconds (`-` if it does not fit
//!   a four-digit year);
//! - MSGID is the AuditEvent's `type.code` (`rest`), `-` when absent;
//! - the structured data carries the leaf index, by which a SIEM removes the duplicates that
//!   at-least-once delivery sends, and finds gaps (indices are dense);
//! - MSG is the AuditEvent JSON as stored, after a UTF-8 BOM (RFC 5424 §6.4).
//!
//! A message longer than `max_message_bytes` has its MSG cut (at a character boundary) and
//! the SD parameter `truncated="<full JSON bytes>"` added: receivers drop or split oversize
//! messages unpredictably (rsyslog's default limit is 8 KiB), whereas a cut one still tells
//! who did what to whom in its first bytes, and its index names the leaf to fetch whole.

use std::fmt::Write as _;

use serde::Deserialize;

use crate::config::{DEFAULT_APP_NAME, DEFAULT_ENTERPRISE_ID, DEFAULT_FACILITY};
use crate::source::ExportLeaf;

/// RFC 5424 §6.2.4.
pub const HOSTNAME_BYTES_MAX: usize = 255;
/// RFC 5424 §6.2.5.
pub const APP_NAME_BYTES_MAX: usize = 48;
/// RFC 5424 §6.2.7.
pub const MSGID_BYTES_MAX: usize = 32;
/// Structured-data values are cut to this: they are for filtering, the full value is in MSG.
pub const SD_VALUE_BYTES_MAX: usize = 64;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// How leaves become syslog messages: the header fields a site configures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogFormat {
    /// 0 to 23; 13 is "log audit".
    pub facility: u8,
    /// 1 to 255 printable US-ASCII characters, or `-`.
    pub hostname: String,
    /// 1 to 48 printable US-ASCII characters.
    pub app_name: String,
    /// The Private Enterprise Number of the SD-ID `hygie@PEN`.
    pub enterprise_id: u32,
    /// The longest message (LEN of the frame, the LEN prefix and its space excluded).
    pub max_message_bytes: usize,
}

impl Default for SyslogFormat {
    fn default() -> SyslogFormat {
        SyslogFormat {
            facility: DEFAULT_FACILITY,
            hostname: "-".to_owned(),
            app_name: DEFAULT_APP_NAME.to_owned(),
            enterprise_id: DEFAULT_ENTERPRISE_ID,
            max_message_bytes: crate::config::DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// What [`SyslogFormat::frame`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framed {
    /// The RFC 5424 message's length: the frame's LEN.
    pub message_bytes: usize,
    /// The AuditEvent was cut to fit `max_message_bytes`.
    pub truncated: bool,
}

/// A leaf that cannot be exported as it is: the log is corrupt there, and an operator must
/// look (the exporter stops at it rather than skip it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("leaf {index} is not an AuditEvent JSON object: {reason}")]
pub struct BadLeaf {
    pub index: u64,
    pub reason: String,
}

/// The three fields of an AuditEvent the header needs. Any other shape of them (an R5
/// `type`, a number for `outcome`) counts as absent rather than failing the export.
#[derive(Deserialize)]
struct Fields {
    #[serde(rename = "type", default)]
    event_type: Lenient<Coding>,
    #[serde(default)]
    subtype: Lenient<Vec<Coding>>,
    #[serde(default)]
    outcome: Lenient<String>,
}

#[derive(Deserialize)]
struct Coding {
    #[serde(default)]
    code: Lenient<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Lenient<T> {
    Is(T),
    Other(serde::de::IgnoredAny),
}

impl<T> Default for Lenient<T> {
    fn default() -> Lenient<T> {
        Lenient::Other(serde::de::IgnoredAny)
    }
}

impl<T> Lenient<T> {
    fn get(&self) -> Option<&T> {
        match self {
            Lenient::Is(value) => Some(value),
            Lenient::Other(_) => None,
        }
    }
}

/// The RFC 5424 severity of an AuditEvent outcome code.
pub fn severity(outcome: Option<&str>) -> u8 {
    match outcome {
        Some("0") => 6,
        Some("4") => 4,
        Some("8") | Some("12") => 3,
        _ => 4,
    }
}

/// RFC 5424 PRINTUSASCII: the characters of header fields.
pub fn is_print_us_ascii(byte: u8) -> bool {
    (33..=126).contains(&byte)
}

impl SyslogFormat {
    /// Appends the octet-counted frame `LEN SP MSG` of `leaf` to `out` (RFC 6587 §3.4.1).
    pub fn frame(&self, leaf: &ExportLeaf, out: &mut Vec<u8>) -> Result<Framed, BadLeaf> {
        let mut header = String::with_capacity(256);
        let plan = self.plan(leaf, &mut header)?;
        let message_bytes = header.len() + 1 + BOM.len() + plan.json_bytes;
        out.reserve(message_bytes + 8);
        // Writing to a Vec cannot fail.
        let _ = std::io::Write::write_fmt(out, format_args!("{message_bytes} "));
        out.extend_from_slice(header.as_bytes());
        out.push(b' ');
        out.extend_from_slice(BOM);
        out.extend_from_slice(&leaf.leaf[..plan.json_bytes]);
        Ok(Framed {
            message_bytes,
            truncated: plan.json_bytes < leaf.leaf.len(),
        })
    }

    /// Appends the RFC 5424 message alone (no LEN), as a UDP or test receiver sees it.
    pub fn message(&self, leaf: &ExportLeaf, out: &mut Vec<u8>) -> Result<Framed, BadLeaf> {
        let mut framed = Vec::new();
        let info = self.frame(leaf, &mut framed)?;
        let start = framed.len() - info.message_bytes;
        out.extend_from_slice(&framed[start..]);
        Ok(info)
    }

    /// Writes HEADER SP STRUCTURED-DATA into `header` and answers how much of the JSON fits.
    fn plan(&self, leaf: &ExportLeaf, header: &mut String) -> Result<Plan, BadLeaf> {
        let bad = |reason: String| BadLeaf {
            index: leaf.index,
            reason,
        };
        let text = std::str::from_utf8(&leaf.leaf).map_err(|e| bad(format!("not UTF-8: {e}")))?;
        if !text.trim_start().starts_with('{') {
            return Err(bad("not a JSON object".to_owned()));
        }
        let fields: Fields = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let outcome = fields.outcome.get().map(String::as_str);
        let subtype = fields
            .subtype
            .get()
            .and_then(|codings| codings.first())
            .and_then(|coding| coding.code.get())
            .map(String::as_str);
        let msgid = fields.event_type.get().and_then(|c| c.code.get());

        let pri = u16::from(self.facility) * 8 + u16::from(severity(outcome));
        let _ = write!(header, "<{pri}>1 ");
        write_timestamp(header, leaf.recorded_us);
        let _ = write!(header, " {} {} - ", self.hostname, self.app_name);
        write_msgid(header, msgid.map(String::as_str));
        let _ = write!(
            header,
            " [hygie@{} index=\"{}\"",
            self.enterprise_id, leaf.index
        );
        if let Some(subtype) = subtype {
            write_sd_param(header, "subtype", subtype);
        }
        if let Some(outcome) = outcome {
            write_sd_param(header, "outcome", outcome);
        }
        let whole = header.len() + 1 + 1 + BOM.len() + leaf.leaf.len();
        if whole <= self.max_message_bytes {
            header.push(']');
            return Ok(Plan {
                json_bytes: leaf.leaf.len(),
            });
        }
        let _ = write!(header, " truncated=\"{}\"]", leaf.leaf.len());
        let room = self
            .max_message_bytes
            .saturating_sub(header.len() + 1 + BOM.len());
        Ok(Plan {
            json_bytes: char_boundary_at_most(text, room),
        })
    }
}

struct Plan {
    /// How many bytes of the leaf go into MSG.
    json_bytes: usize,
}

/// The largest `n <= limit` such that `text[..n]` ends on a character boundary, so that a
/// cut MSG stays valid UTF-8 as its BOM promises.
fn char_boundary_at_most(text: &str, limit: usize) -> usize {
    if limit >= text.len() {
        return text.len();
    }
    let mut n = limit;
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    n
}

/// RFC 3339 with microseconds, UTC (RFC 5424 §6.2.3); `-` outside years 0000–9999.
fn write_timestamp(out: &mut String, recorded_us: i64) {
    match time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(recorded_us) * 1_000) {
        Ok(t) if (0..=9999).contains(&t.year()) => {
            let _ = write!(
                out,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.microsecond()
            );
        }
        _ => out.push('-'),
    }
}

/// MSGID: 1 to 32 printable US-ASCII characters; anything else in the code becomes `_`.
fn write_msgid(out: &mut String, code: Option<&str>) {
    let Some(code) = code.filter(|c| !c.is_empty()) else {
        out.push('-');
        return;
    };
    for c in code.chars().take(MSGID_BYTES_MAX) {
        if c.is_ascii() && is_print_us_ascii(c as u8) {
            out.push(c);
        } else {
            out.push('_');
        }
    }
}

/// ` name="value"` with the value cut to [`SD_VALUE_BYTES_MAX`] and `"`, `\`, `]` escaped
/// (RFC 5424 §6.3.3).
fn write_sd_param(out: &mut String, name: &str, value: &str) {
    let value = &value[..char_boundary_at_most(value, SD_VALUE_BYTES_MAX)];
    out.push(' ');
    out.push_str(name);
    out.push_str("=\"");
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// The machine's host name for HOSTNAME, `-` when it cannot be read or is not a valid one.
/// Read from the kernel rather than through libc, so the crate stays free of `unsafe`.
pub fn machine_hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|name| name.trim().to_owned())
        .find(|name| {
            !name.is_empty()
                && name.len() <= HOSTNAME_BYTES_MAX
                && name.bytes().all(is_print_us_ascii)
        })
        .unwrap_or_else(|| "-".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_never_splits_a_character() {
        assert_eq!(char_boundary_at_most("aé", 2), 1);
        assert_eq!(char_boundary_at_most("aé", 3), 3);
        assert_eq!(char_boundary_at_most("aé", 10), 3);
    }

    #[test]
    fn timestamps_outside_four_digit_years_are_nil() {
        let mut out = String::new();
        write_timestamp(&mut out, i64::MAX);
        assert_eq!(out, "-");
        out.clear();
        write_timestamp(&mut out, 0);
        assert_eq!(out, "1970-01-01T00:00:00.000000Z");
        out.clear();
        write_timestamp(&mut out, -1);
        assert_eq!(out, "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn msgid_is_cut_and_sanitized() {
        let mut out = String::new();
        write_msgid(&mut out, Some("a b\u{e9}"));
        assert_eq!(out, "a_b_");
        out.clear();
        write_msgid(&mut out, Some(&"x".repeat(40)));
        assert_eq!(out.len(), MSGID_BYTES_MAX);
        out.clear();
        write_msgid(&mut out, Some(""));
        assert_eq!(out, "-");
    }
}
