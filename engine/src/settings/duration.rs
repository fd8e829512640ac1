//! Durations as people write them in settings and on the command line: `90s`, `15m`, `2h`,
//! `1h30m`, `500ms`, `1d`.

use std::time::Duration;

/// What a duration looks like, for error messages.
pub const DURATION_EXPECTED: &str =
    "a number with a unit, such as 500ms, 90s, 15m, 2h, 1d or 1h30m";

/// Parse `90s`, `15m`, `2h`, `1h30m`, `500ms`, `1d`: one or more number-and-unit parts
/// (units `ms`, `s`, `m`, `h`, `d`), no spaces, no sign. The error says what was wrong.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("the duration is empty".into());
    }
    if t.contains(char::is_whitespace) {
        return Err(format!(
            "{} is not a duration: no spaces are allowed",
            crate::text::quoted_prefix(t, 40)
        ));
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "{} is not a duration: a number must come before each unit",
                crate::text::quoted_prefix(t, 40)
            ));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| {
            format!(
                "{} is not a duration: the number is too large",
                crate::text::quoted_prefix(t, 40)
            )
        })?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let unit = &rest[..unit_len];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => n
                .checked_mul(60)
                .map(Duration::from_secs)
                .unwrap_or(Duration::MAX),
            "h" => n
                .checked_mul(3600)
                .map(Duration::from_secs)
                .unwrap_or(Duration::MAX),
            "d" => n
                .checked_mul(86_400)
                .map(Duration::from_secs)
                .unwrap_or(Duration::MAX),
            "" => {
                return Err(format!(
                    "{} has no unit after {n}",
                    crate::text::quoted_prefix(t, 40)
                ))
            }
            other => {
                return Err(format!(
                    "{} has an unknown unit {}",
                    crate::text::quoted_prefix(t, 40),
                    crate::text::quoted_prefix(other, 10)
                ))
            }
        };
        if part == Duration::MAX {
            return Err(format!(
                "{} is not a duration: the number is too large",
                crate::text::quoted_prefix(t, 40)
            ));
        }
        total = total.checked_add(part).ok_or_else(|| {
            format!(
                "{} is not a duration: it is too long",
                crate::text::quoted_prefix(t, 40)
            )
        })?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// The shortest text [`parse_duration`] reads back as `d` (whole milliseconds), e.g. `1h30m`.
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    if ms > 0 {
        out.push_str(&format!("{ms}ms"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_forms_people_write() {
        for (t, secs) in [
            ("90s", 90),
            ("15m", 900),
            ("2h", 7200),
            ("1h30m", 5400),
            ("1d", 86_400),
            ("0s", 0),
        ] {
            assert_eq!(parse_duration(t), Ok(Duration::from_secs(secs)), "{t}");
        }
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    }

    #[test]
    fn what_is_refused_and_why() {
        for (t, why) in [
            ("", "empty"),
            ("90", "no unit"),
            ("s", "number must come before"),
            ("5x", "unknown unit"),
            ("-5s", "number must come before"),
            ("5 s", "no spaces"),
            ("99999999999999999999s", "too large"),
            ("999999999999999999d", "too large"),
        ] {
            let e = parse_duration(t).expect_err(t);
            assert!(e.contains(why), "{t}: {e}");
        }
    }

    proptest! {
        #[test]
        fn formatted_durations_read_back(ms in 0u64..10_000_000_000) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn no_input_panics(s in "\\PC{0,30}") {
            let _ = parse_duration(&s);
        }
    }
}
