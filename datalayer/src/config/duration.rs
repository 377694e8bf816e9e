//! Durations as the environment writes them: `500ms`, `30s`, `10m`, `1h`, or a bare whole number
//! of seconds.
//!
//! Kept instead of `humantime`: that crate also accepts compound durations (`1h 30m`) and units
//! (`us`, `ns`, days, months) that none of these settings should take, and its errors cannot
//! name the variable; this grammar is the documented one, and its messages are ours.

use std::time::Duration;

/// What a duration variable accepts, for error messages.
pub(crate) const ACCEPTED: &str =
    "use a whole number with a unit (500ms, 30s, 10m, 1h) or a bare number of seconds";

/// Parses `500ms`, `30s`, `10m`, `1h` or a bare whole number of seconds.
///
/// Returns `None` for anything else: negative numbers, fractions, unknown units, overflow.
pub(crate) fn parse(raw: &str) -> Option<Duration> {
    let text = raw.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let millis_per_unit: u64 = match unit.trim_start() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    n.checked_mul(millis_per_unit).map(Duration::from_millis)
}

/// Formats a duration the way [`parse`] reads it, in the largest unit that is exact.
pub(crate) fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0".to_string()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_units_and_bare_seconds() {
        assert_eq!(parse("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("15"), Some(Duration::from_secs(15)));
        assert_eq!(parse(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse("5 s"), Some(Duration::from_secs(5)));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "s",
            "-5s",
            "1.5s",
            "10x",
            "ten",
            "5sec",
            "99999999999999999999",
            "1e3",
        ] {
            assert_eq!(parse(bad), None, "{bad:?} should not parse");
        }
        assert_eq!(parse(&format!("{}h", u64::MAX / 1000)), None, "overflow");
    }

    #[test]
    fn format_round_trips() {
        for text in ["0", "250ms", "1500ms", "30s", "10m", "90s", "2h"] {
            let d = parse(text).expect("valid");
            assert_eq!(parse(&format(d)), Some(d));
        }
        assert_eq!(format(Duration::from_secs(90)), "90s");
        assert_eq!(format(Duration::from_secs(600)), "10m");
    }
}
