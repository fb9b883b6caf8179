//! Strict parsing and printing of sizes (binary units) and durations.
//!
//! Agents and operators write `512M`, `1.5G`, `10m`, `500ms`, and CPUs as `0.25`.
//! Parsing is exact integer arithmetic (no floats), rejects signs, blanks inside
//! numbers, exponents, unknown units and overflow, and every error names the
//! offending text.

use std::fmt;
use std::time::Duration;

/// Why a size or duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("empty value")]
    Empty,
    #[error("`{0}` is not a number followed by an optional unit")]
    NotANumber(String),
    #[error("`{text}` has unknown unit `{unit}` (accepted: {accepted})")]
    UnknownUnit {
        text: String,
        unit: String,
        accepted: &'static str,
    },
    #[error("`{0}` is too large")]
    Overflow(String),
    #[error("`{text}` has more than {places} decimal places")]
    TooPrecise { text: String, places: usize },
    #[error(
        "`{0}` is not a plain decimal number (digits with at most one `.`; no sign, no exponent)"
    )]
    NotADecimal(String),
}

/// The size units accepted, for error messages and docs.
pub const SIZE_UNITS: &str = "none (bytes), K, M, G, T (binary; KiB/KB/k forms accepted)";
/// The duration units accepted, for error messages and docs.
pub const DURATION_UNITS: &str = "ms, s, m, h, d (a bare number is seconds)";

/// A decimal number split into its integer part and a fraction in billionths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decimal {
    int: u128,
    nanos: u128,
}

/// Splits `text` into (number, unit) at the first character that cannot be part of
/// an unsigned decimal number.
fn split_number(text: &str) -> Result<(Decimal, &str), UnitError> {
    if text.is_empty() {
        return Err(UnitError::Empty);
    }
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(end);
    let bad = || UnitError::NotANumber(text.to_string());
    let (int_s, frac_s) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int_s.is_empty() || (num.contains('.') && frac_s.is_empty()) || frac_s.contains('.') {
        return Err(bad());
    }
    if frac_s.len() > 9 {
        return Err(UnitError::TooPrecise {
            text: text.to_string(),
            places: 9,
        });
    }
    if int_s.len() > 30 {
        return Err(UnitError::Overflow(text.to_string()));
    }
    let int: u128 = int_s.parse().map_err(|_| bad())?;
    let nanos: u128 = if frac_s.is_empty() {
        0
    } else {
        let padded = format!("{frac_s:0<9}");
        padded.parse().map_err(|_| bad())?
    };
    Ok((Decimal { int, nanos }, unit))
}

/// `value * multiplier`, exactly, truncating sub-unit fractions.
fn scale(d: Decimal, multiplier: u128, text: &str) -> Result<u128, UnitError> {
    let over = || UnitError::Overflow(text.to_string());
    let whole = d.int.checked_mul(multiplier).ok_or_else(over)?;
    let frac = d.nanos.checked_mul(multiplier).ok_or_else(over)? / 1_000_000_000;
    whole.checked_add(frac).ok_or_else(over)
}

/// Parses an unsigned decimal with at most `places` fractional digits, exactly, as a
/// count of `10^-places` units: `parse_fixed("0.1", 3)` is 100, `parse_fixed("2", 3)`
/// is 2000. Rejects signs, exponents, blanks, `.5`, `1.`, more digits than `places`
/// after the point, and values above `u64::MAX` units.
pub fn parse_fixed(text: &str, places: usize) -> Result<u64, UnitError> {
    if text.is_empty() {
        return Err(UnitError::Empty);
    }
    let (int_s, frac_s) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let dotted = text.contains('.');
    if int_s.is_empty() || (dotted && frac_s.is_empty()) || !digits(int_s) || !digits(frac_s) {
        return Err(UnitError::NotADecimal(text.to_string()));
    }
    if frac_s.len() > places {
        return Err(UnitError::TooPrecise {
            text: text.to_string(),
            places,
        });
    }
    let over = || UnitError::Overflow(text.to_string());
    let unit = 10u64.checked_pow(u32::try_from(places).map_err(|_| over())?);
    let int: u64 = int_s.parse().map_err(|_| over())?;
    let frac: u64 = if frac_s.is_empty() {
        0
    } else {
        // At most `places` digits, padded to exactly `places`: `0.1` is 100 thousandths.
        format!("{frac_s:0<places$}").parse().map_err(|_| over())?
    };
    unit.and_then(|u| int.checked_mul(u))
        .and_then(|whole| whole.checked_add(frac))
        .ok_or_else(over)
}

/// Parses a byte size: `4096`, `512K`, `1.5G`, `2g`, `64MiB`, `1T`. Units are binary.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let (d, unit) = split_number(text)?;
    let shift = match unit {
        "" | "B" | "b" => 0,
        "K" | "k" | "KB" | "KiB" | "kb" | "kib" => 10,
        "M" | "m" | "MB" | "MiB" | "mb" | "mib" => 20,
        "G" | "g" | "GB" | "GiB" | "gb" | "gib" => 30,
        "T" | "t" | "TB" | "TiB" | "tb" | "tib" => 40,
        _ => {
            return Err(UnitError::UnknownUnit {
                text: text.to_string(),
                unit: unit.to_string(),
                accepted: SIZE_UNITS,
            });
        }
    };
    let bytes = scale(d, 1u128 << shift, text)?;
    u64::try_from(bytes).map_err(|_| UnitError::Overflow(text.to_string()))
}

/// Parses a duration: `500ms`, `30s`, `10m`, `1.5h`, `2d`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let (d, unit) = split_number(text)?;
    let nanos_per: u128 = match unit {
        "ms" => 1_000_000,
        "" | "s" => 1_000_000_000,
        "m" | "min" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "d" => 86_400_000_000_000,
        _ => {
            return Err(UnitError::UnknownUnit {
                text: text.to_string(),
                unit: unit.to_string(),
                accepted: DURATION_UNITS,
            });
        }
    };
    let nanos = scale(d, nanos_per, text)?;
    let nanos = u64::try_from(nanos).map_err(|_| UnitError::Overflow(text.to_string()))?;
    Ok(Duration::from_nanos(nanos))
}

/// A byte count printed for humans with binary units: `64 MiB`, `1.5 GiB`, `512 B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanSize(pub u64);

impl fmt::Display for HumanSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut unit = 0;
        let mut scaled = self.0 as f64;
        while scaled >= 1024.0 && unit + 1 < UNITS.len() {
            scaled /= 1024.0;
            unit += 1;
        }
        if unit == 0 || (scaled - scaled.round()).abs() < 0.05 {
            write!(f, "{} {}", scaled.round() as u64, UNITS[unit])
        } else {
            write!(f, "{scaled:.1} {}", UNITS[unit])
        }
    }
}

/// A size in the compact form the parser accepts back (`512M`, `1536K`, `4096`).
pub fn compact_size(bytes: u64) -> String {
    const UNITS: [(u32, &str); 4] = [(40, "T"), (30, "G"), (20, "M"), (10, "K")];
    for (shift, unit) in UNITS {
        if bytes != 0 && bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// A duration in a compact form the parser accepts back exactly (`10m`, `1500ms`, and
/// `1.0000001s` for a duration finer than a millisecond).
pub fn compact_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        let frac = format!("{:09}", d.subsec_nanos());
        return format!("{}.{}s", d.as_secs(), frac.trim_end_matches('0'));
    }
    match ms {
        0 => "0s".to_string(),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_exactly() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("0.5M"), Ok(512 << 10));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
    }

    #[test]
    fn bad_sizes_name_the_problem() {
        assert_eq!(parse_size(""), Err(UnitError::Empty));
        assert!(matches!(parse_size("-1G"), Err(UnitError::NotANumber(_))));
        assert!(matches!(parse_size(" 1G"), Err(UnitError::NotANumber(_))));
        assert!(matches!(parse_size("1.G"), Err(UnitError::NotANumber(_))));
        assert!(matches!(parse_size(".5G"), Err(UnitError::NotANumber(_))));
        assert!(matches!(
            parse_size("1.2.3G"),
            Err(UnitError::NotANumber(_))
        ));
        assert!(matches!(
            parse_size("1e9"),
            Err(UnitError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_size("1 G"),
            Err(UnitError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_size("12X"),
            Err(UnitError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_size("99999999999T"),
            Err(UnitError::Overflow(_))
        ));
        assert!(matches!(
            parse_size("340282366920938463463374607431768211456"),
            Err(UnitError::Overflow(_))
        ));
        assert!(matches!(
            parse_size("1.0000000001G"),
            Err(UnitError::TooPrecise { places: 9, .. })
        ));
        let msg = parse_size("3Q").unwrap_err().to_string();
        assert!(msg.contains("`Q`") && msg.contains("K, M, G"), "{msg}");
    }

    /// Decimal fractions are counted exactly: no binary scaling, no float rounding.
    #[test]
    fn fixed_point_decimals_parse_exactly() {
        let cases: &[(&str, u64)] = &[
            ("0.1", 100),
            ("0.333", 333),
            ("0.01", 10),
            ("0.001", 1),
            ("2", 2000),
            ("2.0", 2000),
            ("1.25", 1250),
            ("007.5", 7500),
            ("1024", 1_024_000),
            ("0", 0),
        ];
        for (text, milli) in cases {
            assert_eq!(parse_fixed(text, 3), Ok(*milli), "{text}");
        }
        assert_eq!(
            parse_fixed("0.5", 0),
            Err(UnitError::TooPrecise {
                text: "0.5".into(),
                places: 0
            })
        );
        assert_eq!(parse_fixed("42", 0), Ok(42));
    }

    #[test]
    fn bad_fixed_point_decimals_name_the_problem() {
        for text in [
            "-1", "+1", "1e3", "1E-2", "NaN", "nan", "inf", " 1", "1 ", ".5", "1.", "1.2.3",
            "0x10", "1_000", "½", "1,5",
        ] {
            assert_eq!(
                parse_fixed(text, 3),
                Err(UnitError::NotADecimal(text.to_string())),
                "{text}"
            );
        }
        assert_eq!(parse_fixed("", 3), Err(UnitError::Empty));
        assert_eq!(
            parse_fixed("0.0001", 3),
            Err(UnitError::TooPrecise {
                text: "0.0001".into(),
                places: 3
            })
        );
        for huge in [
            "18446744073709552",
            "99999999999999999999999",
            "18446744073709551615",
        ] {
            assert_eq!(
                parse_fixed(huge, 3),
                Err(UnitError::Overflow(huge.to_string())),
                "{huge}"
            );
        }
        assert_eq!(parse_fixed("18446744073709551.615", 3), Ok(u64::MAX));
        let msg = parse_fixed("1e3", 3).unwrap_err().to_string();
        assert!(
            msg.contains("`1e3`") && msg.contains("no exponent"),
            "{msg}"
        );
    }

    #[test]
    fn durations_parse_exactly() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert!(matches!(
            parse_duration("10y"),
            Err(UnitError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration("-5s"),
            Err(UnitError::NotANumber(_))
        ));
    }

    #[test]
    fn printing_round_trips() {
        for bytes in [0u64, 4096, 512 << 10, 64 << 20, 3 << 29, 1 << 40, 12345] {
            assert_eq!(parse_size(&compact_size(bytes)), Ok(bytes), "{bytes}");
        }
        for ms in [0u64, 1, 1500, 60_000, 3_600_000, 90_000] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&compact_duration(d)), Ok(d));
        }
        // Finer than a millisecond (the fuzzer's find: `1.0000001s` printed as `1s`).
        for nanos in [100u64, 1_000_000_100, 86_400_000_000_001, 999_999] {
            let d = Duration::from_nanos(nanos);
            assert_eq!(parse_duration(&compact_duration(d)), Ok(d), "{nanos}");
        }
        assert_eq!(
            compact_duration(Duration::from_nanos(1_000_000_100)),
            "1.0000001s"
        );
        assert_eq!(HumanSize(64 << 20).to_string(), "64 MiB");
        assert_eq!(HumanSize(3 << 29).to_string(), "1.5 GiB");
        assert_eq!(HumanSize(100).to_string(), "100 B");
    }
}
