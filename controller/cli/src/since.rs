//! Times of `agentcg history`: `--since` as an age (`2h`), an RFC 3339 time
//! (`2026-12-05T07:00:00Z`, any offset) or unix milliseconds, and start times shown as
//! UTC. Pure; the calendar arithmetic is agentcg_core::civil.

use agentcg_core::civil::{civil_from_days, days_from_civil, days_in_month};
use agentcg_core::units;

const MS_PER_DAY: i64 = 86_400_000;

/// Why `--since` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--since `{value}`: {reason} (expected an age like 2h, an RFC 3339 time like 2026-12-05T07:00:00Z, or unix milliseconds)"
)]
pub struct SinceError {
    pub value: String,
    pub reason: String,
}

/// `--since` as unix milliseconds, `now_unix_ms` being the time now.
pub fn parse_since(text: &str, now_unix_ms: u64) -> Result<u64, SinceError> {
    let err = |reason: String| SinceError {
        value: text.to_string(),
        reason,
    };
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().map_err(|_| err("too large".into()));
    }
    if t.len() >= 10 && t.as_bytes()[4] == b'-' {
        let ms = parse_rfc3339(t).map_err(err)?;
        return u64::try_from(ms).map_err(|_| err("before 1970".into()));
    }
    let age = units::parse_duration(t).map_err(|e| err(e.to_string()))?;
    let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
    Ok(now_unix_ms.saturating_sub(age_ms))
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` (`t` or a space for `T`, `z` for `Z`)
/// as unix milliseconds.
pub fn parse_rfc3339(text: &str) -> Result<i64, String> {
    let b = text.as_bytes();
    let num = |from: usize, len: usize| -> Result<i64, String> {
        let part = text
            .get(from..from + len)
            .filter(|p| p.bytes().all(|c| c.is_ascii_digit()))
            .ok_or_else(|| format!("expected {len} digits at position {}", from + 1))?;
        part.parse().map_err(|_| "not a number".to_string())
    };
    let sep = |at: usize, ok: &[u8]| {
        if b.get(at).is_some_and(|c| ok.contains(c)) {
            Ok(())
        } else {
            Err(format!("unexpected character at position {}", at + 1))
        }
    };
    let (y, mo, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    sep(4, b"-")?;
    sep(7, b"-")?;
    sep(10, b"Tt ")?;
    let (h, mi, s) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    sep(13, b":")?;
    sep(16, b":")?;
    if !(1..=12).contains(&mo) || !(1..=days_in_month(y, mo)).contains(&d) {
        return Err(format!("no such date {y:04}-{mo:02}-{d:02}"));
    }
    if h > 23 || mi > 59 || s > 60 {
        return Err(format!("no such time {h:02}:{mi:02}:{s:02}"));
    }
    let mut at = 19;
    let mut ms = 0;
    if b.get(at) == Some(&b'.') {
        let digits = b[at + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if digits == 0 {
            return Err("a fraction of a second needs digits".into());
        }
        let frac = &text[at + 1..at + 1 + digits.min(3)];
        ms = frac.parse::<i64>().unwrap_or(0) * 10i64.pow(3 - frac.len() as u32);
        at += 1 + digits;
    }
    let offset_min = match b.get(at) {
        Some(b'Z' | b'z') if at + 1 == b.len() => 0,
        Some(&c @ (b'+' | b'-')) if at + 6 == b.len() => {
            sep(at + 3, b":")?;
            let (oh, om) = (num(at + 1, 2)?, num(at + 4, 2)?);
            if oh > 23 || om > 59 {
                return Err("no such offset".into());
            }
            let off = oh * 60 + om;
            if c == b'-' { -off } else { off }
        }
        _ => return Err("expected Z or an offset like +02:00 at the end".into()),
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s - offset_min * 60;
    Ok(secs * 1000 + ms)
}

/// A unix time in ms as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn show_utc(unix_ms: u64) -> String {
    let ms = i64::try_from(unix_ms).unwrap_or(i64::MAX);
    let (days, in_day) = (ms.div_euclid(MS_PER_DAY), ms.rem_euclid(MS_PER_DAY) / 1000);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_796_000_000_000;

    #[test]
    fn ages_are_counted_back_from_now() {
        assert_eq!(parse_since("2h", NOW), Ok(NOW - 7_200_000));
        assert_eq!(parse_since("90s", NOW), Ok(NOW - 90_000));
        assert_eq!(parse_since("1d", 5), Ok(0), "not before 1970");
    }

    #[test]
    fn unix_milliseconds_are_taken_as_they_are() {
        assert_eq!(parse_since("1700000000000", NOW), Ok(1_700_000_000_000));
        assert_eq!(parse_since("0", NOW), Ok(0));
    }

    #[test]
    fn rfc3339_times_in_any_offset() {
        assert_eq!(parse_since("1970-01-01T00:00:00Z", NOW), Ok(0));
        assert_eq!(
            parse_since("2023-11-14T22:13:20Z", NOW),
            Ok(1_700_000_000_000)
        );
        assert_eq!(
            parse_since("2023-11-14T23:13:20.5+01:00", NOW),
            Ok(1_700_000_000_500)
        );
        assert_eq!(
            parse_since("2023-11-14 19:13:20.123456-03:00", NOW),
            Ok(1_700_000_000_123)
        );
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z"), Ok(1_709_164_800_000));
    }

    #[test]
    fn bad_times_are_refused_with_the_value_and_why() {
        for bad in [
            "yesterday",
            "",
            "2023-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2023-11-14T25:00:00Z",
            "2023-11-14T22:13:20",
            "2023-11-14T22:13:20+1",
            "2023-11-14T22:13:20.Z",
            "1969-12-31T23:59:59Z",
            "99999999999999999999999",
        ] {
            let err = parse_since(bad, NOW).unwrap_err();
            assert_eq!(err.value, bad);
            assert!(err.to_string().contains("--since"), "{err}");
        }
    }

    #[test]
    fn start_times_are_shown_in_utc() {
        assert_eq!(show_utc(0), "1970-01-01 00:00:00");
        assert_eq!(show_utc(1_700_000_000_999), "2023-11-14 22:13:20");
        assert_eq!(show_utc(1_709_164_800_000), "2024-02-29 00:00:00");
        for ms in [0, 951_782_400_000, 1_700_000_000_000, 4_107_542_400_000] {
            let shown = show_utc(ms).replace(' ', "T") + "Z";
            assert_eq!(parse_rfc3339(&shown), Ok(ms as i64), "{shown}");
        }
    }
}
