//! Instants as the hub stores them (microseconds since the Unix epoch) and as FHIR writes
//! them (`2026-11-29T14:20:31.123456Z`).

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Now, in microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    let now = OffsetDateTime::now_utc();
    (now.unix_timestamp_nanos() / 1_000) as i64
}

/// A FHIR `instant` (UTC, microsecond precision) for a stored timestamp.
pub fn format_instant(us: i64) -> String {
    let datetime = OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        datetime.year(),
        u8::from(datetime.month()),
        datetime.day(),
        datetime.hour(),
        datetime.minute(),
        datetime.second(),
        datetime.microsecond()
    )
}

/// The HTTP date (`Last-Modified`) of a stored timestamp.
pub fn http_date(us: i64) -> String {
    let datetime = OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[datetime.weekday().number_days_from_monday() as usize],
        datetime.day(),
        MONTHS[u8::from(datetime.month()) as usize - 1],
        datetime.year(),
        datetime.hour(),
        datetime.minute(),
        datetime.second()
    )
}

/// Parses a FHIR `instant` or a `dateTime` with a time zone, or a bare date (taken as
/// midnight UTC), into microseconds since the epoch: what `_since` accepts.
pub fn parse_fhir_instant_us(text: &str) -> Option<i64> {
    let datetime = if text.len() == 10 {
        OffsetDateTime::parse(&format!("{text}T00:00:00Z"), &Rfc3339).ok()?
    } else {
        OffsetDateTime::parse(text, &Rfc3339).ok()?
    };
    Some((datetime.unix_timestamp_nanos() / 1_000) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_instants() {
        let us = 1_764_426_031_123_456;
        let text = format_instant(us);
        assert_eq!(text, "2025-11-29T14:20:31.123456Z");
        assert_eq!(parse_fhir_instant_us(&text), Some(us));
        assert_eq!(http_date(us), "Sat, 29 Nov 2025 14:20:31 GMT");
        assert_eq!(
            parse_fhir_instant_us("2025-11-29"),
            Some(1_764_374_400_000_000)
        );
        assert_eq!(parse_fhir_instant_us("2025-13-01"), None);
        assert_eq!(parse_fhir_instant_us("yesterday"), None);
    }
}
