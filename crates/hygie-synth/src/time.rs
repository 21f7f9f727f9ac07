//! Calendar arithmetic for generated timestamps, relative to a fixed epoch.
//!
//! Every timestamp is whole seconds since 1970-01-01T00:00:00Z (`UnixSeconds`). Generated data
//! is anchored at [`EPOCH_UNIX_SECONDS`] rather than "now" so that output never changes with
//! the day it is generated on.

/// Seconds since 1970-01-01T00:00:00Z.
pub(crate) type UnixSeconds = i64;

pub(crate) const MINUTE_SECONDS: i64 = 60;
pub(crate) const HOUR_SECONDS: i64 = 60 * MINUTE_SECONDS;
pub(crate) const DAY_SECONDS: i64 = 24 * HOUR_SECONDS;
pub(crate) const YEAR_DAYS: i64 = 365;

/// 2026-01-01T00:00:00Z: the "today" of every generated data set. Nothing generated is later.
pub const EPOCH_UNIX_SECONDS: i64 = 1_767_225_600;

/// The civil (proleptic Gregorian) date of a day count since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days_since_1970: i64) -> (i64, u32, u32) {
    let shifted = days_since_1970 + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The calendar date of a timestamp: (year, month 1–12, day 1–31).
pub(crate) fn civil_date(at: UnixSeconds) -> (i64, u32, u32) {
    civil_from_days(at.div_euclid(DAY_SECONDS))
}

/// FHIR `date`: `YYYY-MM-DD`.
pub(crate) fn fhir_date(at: UnixSeconds) -> String {
    let (year, month, day) = civil_date(at);
    format!("{year:04}-{month:02}-{day:02}")
}

/// FHIR `dateTime` / `instant` in UTC: `YYYY-MM-DDThh:mm:ssZ` (a time needs a zone in FHIR).
pub(crate) fn fhir_date_time(at: UnixSeconds) -> String {
    let seconds_of_day = at.rem_euclid(DAY_SECONDS);
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        fhir_date(at),
        seconds_of_day / HOUR_SECONDS,
        seconds_of_day % HOUR_SECONDS / MINUTE_SECONDS,
        seconds_of_day % MINUTE_SECONDS
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_is_new_year_2026() {
        assert_eq!(fhir_date_time(EPOCH_UNIX_SECONDS), "2026-01-01T00:00:00Z");
        assert_eq!(
            fhir_date_time(EPOCH_UNIX_SECONDS - 1),
            "2025-12-31T23:59:59Z"
        );
        assert_eq!(fhir_date_time(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn leap_days_and_dates_before_1970() {
        // 2024-02-29 is 19782 days after 1970-01-01.
        assert_eq!(fhir_date(19_782 * DAY_SECONDS), "2024-02-29");
        assert_eq!(fhir_date(19_783 * DAY_SECONDS), "2024-03-01");
        assert_eq!(fhir_date(-DAY_SECONDS), "1969-12-31");
        // 1930-06-15 is 14445 days before 1970-01-01.
        assert_eq!(fhir_date(-14_445 * DAY_SECONDS), "1930-06-15");
        assert_eq!(fhir_date_time(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn every_day_of_a_century_follows_the_previous_one() {
        let mut previous = civil_date(-40 * YEAR_DAYS * DAY_SECONDS);
        for day in (-40 * YEAR_DAYS + 1)..(60 * YEAR_DAYS) {
            let current = civil_date(day * DAY_SECONDS);
            let next_day = (previous.0, previous.1, previous.2 + 1);
            let next_month = (previous.0, previous.1 + 1, 1);
            let next_year = (previous.0 + 1, 1, 1);
            assert!(
                current == next_day || current == next_month || current == next_year,
                "{previous:?} -> {current:?}"
            );
            assert!((1..=31).contains(&current.2));
            previous = current;
        }
    }
}
