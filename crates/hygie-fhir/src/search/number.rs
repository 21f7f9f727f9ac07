//! Decimals as search sees them: a value and the range its significant figures imply.
//!
//! R4 (search.html, "number"): `100` means a value in [99.5, 100.5], `100.00` one in
//! [99.995, 100.005]: half a unit of the last digit written on either side. With an exponent
//! the unit is that of the last mantissa digit: `1e2` is [50, 150] and `1.0e2` [95, 105]. The
//! same rule reads stored values (from the JSON number as written after parsing, so trailing
//! zeros of a stored decimal are not seen: `1.50` is read as `1.5`).
//!
//! ```
//! use hygie_fhir::search::number::parse_decimal;
//! let d = parse_decimal("100").unwrap();
//! assert_eq!((d.value, d.low, d.high), (100.0, 99.5, 100.5));
//! assert!(parse_decimal("1,5").is_err());
//! ```

/// A decimal and its implicit precision range (inclusive bounds, always finite).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decimal {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

/// Exponents beyond this are refused before any arithmetic (f64 reaches about 1e308).
const MAX_EXPONENT: i64 = 400;

/// Parses a FHIR decimal (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, the R4 regex).
pub fn parse_decimal(s: &str) -> Result<Decimal, String> {
    const EXPECTED: &str = "expected a decimal such as 5, -0.25 or 1.5e3";
    let b = s.as_bytes();
    let mut i = 0;
    if b.first() == Some(&b'-') {
        i += 1;
    }
    let int_start = i;
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    let int_len = i - int_start;
    if int_len == 0 || (int_len > 1 && b[int_start] == b'0') {
        return Err(EXPECTED.into());
    }
    let mut decimals: i64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return Err(EXPECTED.into());
        }
        decimals = i64::try_from(i - start).map_err(|_| EXPECTED.to_string())?;
    }
    let mut exponent: i64 = 0;
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        let negative = match b.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let start = i;
        while let Some(&d) = b.get(i).filter(|d| d.is_ascii_digit()) {
            exponent = exponent * 10 + i64::from(d - b'0');
            if exponent > MAX_EXPONENT {
                return Err("the exponent is out of range".into());
            }
            i += 1;
        }
        if i == start {
            return Err(EXPECTED.into());
        }
        if negative {
            exponent = -exponent;
        }
    }
    if i != b.len() || decimals > MAX_EXPONENT {
        return Err(EXPECTED.into());
    }
    let value: f64 = s.parse().map_err(|_| EXPECTED.to_string())?;
    if !value.is_finite() {
        return Err("the number is out of range".into());
    }
    Ok(with_precision(value, exponent - decimals))
}

/// The value of a JSON number, with the precision of its shortest written form.
pub fn from_json(n: &serde_json::Number) -> Option<Decimal> {
    parse_decimal(&n.to_string()).ok()
}

/// `value` ± half a unit of 10^`unit_exponent`, clamped to finite numbers.
fn with_precision(value: f64, unit_exponent: i64) -> Decimal {
    let exp =
        i32::try_from(unit_exponent.clamp(-(MAX_EXPONENT * 2), MAX_EXPONENT)).unwrap_or_default();
    let half = 0.5 * 10f64.powi(exp);
    let clamp = |x: f64| x.clamp(f64::MIN, f64::MAX);
    Decimal {
        value,
        low: clamp(value - half),
        high: clamp(value + half),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = |s: &str| {
            let d = parse_decimal(s).unwrap();
            (d.value, d.low, d.high)
        };
        assert_eq!(r("100"), (100.0, 99.5, 100.5));
        assert_eq!(r("0"), (0.0, -0.5, 0.5));
        assert_eq!(r("-2"), (-2.0, -2.5, -1.5));
        assert_eq!(r("1e2"), (100.0, 50.0, 150.0));
        let (v, low, high) = r("1.0e2");
        assert_eq!((v, low, high), (100.0, 95.0, 105.0));
        let (v, low, high) = r("100.00");
        assert!(v == 100.0 && (low - 99.995).abs() < 1e-9 && (high - 100.005).abs() < 1e-9);
        let (_, low, high) = r("5.4");
        assert!((low - 5.35).abs() < 1e-9 && (high - 5.45).abs() < 1e-9);
        assert!(parse_decimal("1e308").is_ok());
        assert!(
            parse_decimal("1.7976931348623157e308")
                .unwrap()
                .high
                .is_finite()
        );
    }

    #[test]
    fn invalid() {
        for s in [
            "",
            "-",
            "01",
            "1.",
            ".5",
            "1e",
            "1e+",
            "+1",
            "1,5",
            "1 ",
            "0x10",
            "NaN",
            "inf",
            "1e999",
            "1e99999999999999999999",
            "--1",
            "1.2.3",
            "١",
        ] {
            assert!(parse_decimal(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn json_numbers() {
        let n: serde_json::Number = serde_json::from_str("37.5").unwrap();
        let d = from_json(&n).unwrap();
        assert_eq!((d.low, d.high), (37.45, 37.55));
        let n: serde_json::Number = serde_json::from_str("120").unwrap();
        assert_eq!(from_json(&n).unwrap().low, 119.5);
        let n: serde_json::Number = serde_json::from_str("1e-7").unwrap();
        assert!(from_json(&n).is_some());
    }
}
