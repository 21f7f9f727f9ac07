//! Dates as search sees them: the range of instants a `date`, `dateTime` or `instant` value
//! stands for, by its precision, in microseconds since 1970-01-01T00:00:00Z, both bounds
//! inclusive.
//!
//! `2020` is the whole year 2020, `2020-03` the month, `2020-03-01` the day,
//! `2020-03-01T10:00:00Z` that second, `…:00.5Z` that tenth of a second (digits past the
//! sixth are read but cannot narrow the range below one microsecond). A value without a time
//! zone (a date, or a stored dateTime written without one) is read as UTC.
//!
//! ```
//! use hygie_fhir::search::date::{ZoneRule, parse_range};
//! let (low, high) = parse_range("1970-01-01", ZoneRule::AssumeUtc).unwrap();
//! assert_eq!((low, high), (0, 86_400_000_000 - 1));
//! let (low, _) = parse_range("1970-01-01T01:00:00+01:00", ZoneRule::Required).unwrap();
//! assert_eq!(low, 0);
//! assert!(parse_range("1970-01-01T01:00:00", ZoneRule::Required).is_err());
//! ```

const US_PER_SECOND: i64 = 1_000_000;
const US_PER_MINUTE: i64 = 60 * US_PER_SECOND;
const US_PER_DAY: i64 = 86_400 * US_PER_SECOND;

/// What a time without a time zone means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneRule {
    /// A search value: R4 requires the zone when a time is given; it is an error without.
    Required,
    /// A stored value: read as UTC (R4 dateTimes with a time always carry a zone, so this only
    /// matters for data that bent the rule).
    AssumeUtc,
}

/// How much of a date a value gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Precision {
    Year,
    Month,
    Day,
    Minute,
    Second,
    /// Fraction digits (1 or more).
    Fraction(u8),
}

/// The parts of a parsed date, for callers that need more than the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    pub precision: Precision,
    /// Inclusive bounds, microseconds since the Unix epoch, UTC.
    pub low_us: i64,
    pub high_us: i64,
}

/// The inclusive range of `s`, a FHIR date, dateTime or instant (minutes without seconds are
/// accepted too, as some clients send them in searches). The error says what was expected.
pub fn parse_range(s: &str, zone: ZoneRule) -> Result<(i64, i64), String> {
    parse(s, zone).map(|d| (d.low_us, d.high_us))
}

/// As [`parse_range`], with the precision.
pub fn parse(s: &str, zone: ZoneRule) -> Result<DateTime, String> {
    Parser {
        b: s.as_bytes(),
        i: 0,
    }
    .date_time(zone)
}

struct Parser<'b> {
    b: &'b [u8],
    i: usize,
}

impl Parser<'_> {
    fn at_end(&self) -> bool {
        self.i == self.b.len()
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// Exactly `n` ASCII digits.
    fn digits(&mut self, n: usize, what: &str) -> Result<i64, String> {
        let end = self.i + n;
        let Some(run) = self.b.get(self.i..end) else {
            return Err(format!("{what} needs {n} digits"));
        };
        if !run.iter().all(u8::is_ascii_digit) {
            return Err(format!("{what} needs {n} digits"));
        }
        self.i = end;
        Ok(run.iter().fold(0, |acc, &d| acc * 10 + i64::from(d - b'0')))
    }

    fn date_time(&mut self, zone: ZoneRule) -> Result<DateTime, String> {
        let year = self.digits(4, "the year")?;
        if year == 0 {
            return Err("year 0000 does not exist".into());
        }
        let (mut month, mut day) = (1, 1);
        let mut precision = Precision::Year;
        if self.eat(b'-') {
            month = self.digits(2, "the month")?;
            if !(1..=12).contains(&month) {
                return Err(format!("month {month:02} is not 01 to 12"));
            }
            precision = Precision::Month;
            if self.eat(b'-') {
                day = self.digits(2, "the day")?;
                if day < 1 || day > days_in_month(year, month) {
                    return Err(format!("{year:04}-{month:02} has no day {day:02}"));
                }
                precision = Precision::Day;
            }
        }
        let days = days_from_civil(year, month, day);
        let mut low = days * US_PER_DAY;
        if precision != Precision::Day || !self.eat(b'T') {
            if !self.at_end() {
                return Err(
                    "unexpected text after the date (a time needs a full date: YYYY-MM-DDThh:mm:ss)"
                        .into(),
                );
            }
            let next = match precision {
                Precision::Year => days_from_civil(year + 1, 1, 1) * US_PER_DAY,
                Precision::Month if month == 12 => days_from_civil(year + 1, 1, 1) * US_PER_DAY,
                Precision::Month => days_from_civil(year, month + 1, 1) * US_PER_DAY,
                _ => low + US_PER_DAY,
            };
            return Ok(DateTime {
                precision,
                low_us: low,
                high_us: next - 1,
            });
        }
        let hour = self.digits(2, "the hour")?;
        if !self.eat(b':') {
            return Err("the time needs hh:mm".into());
        }
        let minute = self.digits(2, "the minutes")?;
        if hour > 23 || minute > 59 {
            return Err(format!("{hour:02}:{minute:02} is not a time of day"));
        }
        low += hour * 60 * US_PER_MINUTE + minute * US_PER_MINUTE;
        let mut width = US_PER_MINUTE;
        precision = Precision::Minute;
        if self.eat(b':') {
            let second = self.digits(2, "the seconds")?;
            // 60: a leap second, as the FHIR regex allows.
            if second > 60 {
                return Err(format!("{second:02} seconds is not 00 to 60"));
            }
            low += second * US_PER_SECOND;
            width = US_PER_SECOND;
            precision = Precision::Second;
            if self.eat(b'.') {
                let start = self.i;
                let mut unit = US_PER_SECOND;
                let mut fraction = 0;
                while let Some(d) = self.peek().filter(u8::is_ascii_digit) {
                    if unit > 1 {
                        unit /= 10;
                        fraction += i64::from(d - b'0') * unit;
                    }
                    self.i += 1;
                }
                let n = self.i - start;
                if n == 0 {
                    return Err("a '.' after the seconds needs digits".into());
                }
                low += fraction;
                width = unit;
                precision = Precision::Fraction(u8::try_from(n).unwrap_or(u8::MAX));
            }
        }
        let offset_us = match self.peek() {
            Some(b'Z') => {
                self.i += 1;
                0
            }
            Some(sign @ (b'+' | b'-')) => {
                self.i += 1;
                let h = self.digits(2, "the time zone hours")?;
                if !self.eat(b':') {
                    return Err("the time zone needs ±hh:mm".into());
                }
                let m = self.digits(2, "the time zone minutes")?;
                if h > 14 || m > 59 || (h == 14 && m > 0) {
                    return Err(format!("time zone {h:02}:{m:02} is out of range"));
                }
                let offset = (h * 60 + m) * US_PER_MINUTE;
                if sign == b'+' { offset } else { -offset }
            }
            None if zone == ZoneRule::AssumeUtc => 0,
            None => {
                return Err("a time needs a time zone: Z or ±hh:mm".into());
            }
            Some(_) => return Err("unexpected text after the time".into()),
        };
        if !self.at_end() {
            return Err("unexpected text after the time zone".into());
        }
        let low_us = low - offset_us;
        Ok(DateTime {
            precision,
            low_us,
            high_us: low_us + width - 1,
        })
    }
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: &str) -> (i64, i64) {
        parse_range(s, ZoneRule::Required).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn precisions() {
        let year_2020 = days_from_civil(2020, 1, 1) * US_PER_DAY;
        let year_2021 = days_from_civil(2021, 1, 1) * US_PER_DAY;
        assert_eq!(range("2020"), (year_2020, year_2021 - 1));
        // 2020 is a leap year: February has 29 days.
        let feb = days_from_civil(2020, 2, 1) * US_PER_DAY;
        assert_eq!(range("2020-02"), (feb, feb + 29 * US_PER_DAY - 1));
        assert_eq!(range("2020-12").1, year_2021 - 1);
        assert_eq!(
            range("2020-02-29"),
            (feb + 28 * US_PER_DAY, feb + 29 * US_PER_DAY - 1)
        );
        let t = range("2020-02-29T10:30Z");
        assert_eq!(t.1 - t.0, US_PER_MINUTE - 1);
        let t = range("2020-02-29T10:30:15Z");
        assert_eq!(t.1 - t.0, US_PER_SECOND - 1);
        let t = range("2020-02-29T10:30:15.25Z");
        assert_eq!(t.1 - t.0, 10_000 - 1);
        assert_eq!(t.0 % US_PER_SECOND, 250_000);
        let t = range("2020-02-29T10:30:15.123456789Z");
        assert_eq!((t.1 - t.0, t.0 % US_PER_SECOND), (0, 123_456));
    }

    #[test]
    fn epoch_and_zones() {
        assert_eq!(range("1970-01-01T00:00:00Z").0, 0);
        assert_eq!(range("1970-01-01T02:00:00+02:00").0, 0);
        assert_eq!(range("1969-12-31T19:00:00-05:00").0, 0);
        assert_eq!(range("1969").1, -1);
        assert_eq!(range("0001").0, days_from_civil(1, 1, 1) * US_PER_DAY);
        assert!(range("9999-12-31T23:59:59.999999Z").1 < i64::MAX);
    }

    #[test]
    fn invalid() {
        for s in [
            "",
            "20",
            "2020-",
            "2020-13",
            "2020-00",
            "2021-02-29",
            "2020-04-31",
            "0000",
            "2020-01-01T",
            "2020-01-01T25:00Z",
            "2020-01-01T10:60Z",
            "2020-01-01T10:00:61Z",
            "2020-01-01T10:00:00.Z",
            "2020-01-01T10:00:00+15:00",
            "2020-01-01T10:00:00+0100",
            "2020-01-01T10:00:00",
            "2020-01-01Z",
            "2020-01T10:00Z",
            "2020-01-01 10:00:00Z",
            "2020-01-01T10:00:00Zx",
            "２０２０",
            "2020-1-1",
        ] {
            assert!(parse_range(s, ZoneRule::Required).is_err(), "{s:?}");
        }
        assert!(parse_range("2020-01-01T10:00:00", ZoneRule::AssumeUtc).is_ok());
    }
}
