//! `SMTP_RATE_LIMIT=limit [limit ...]` (RATE-1, RATE-4).
//!
//! `limit := [pools ":"] number unit`; `number` may have decimals; `unit` is `kbps`, `Mbps` or
//! `Gbps` in any case, directly after the number; k, M and G are powers of two and the unit is
//! bits per second. A bare `0` alone disables limiting; a zero rate with a unit is an error.

use super::model::{Pool, RateLimits};
use super::span::{shown, Diags, Span};

const EXPECTED: &str = "a positive rate directly followed by kbps, Mbps or Gbps, optionally after pool letters and ':', such as 12Mbps or AB:1.5Mbps";

/// Splits `s` at whitespace into non-empty tokens, with their spans.
pub(crate) fn tokens<'a>(s: &Span<'a>) -> Vec<Span<'a>> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in s.text.char_indices() {
        match (c.is_whitespace(), start) {
            (false, None) => start = Some(i),
            (true, Some(b)) => {
                out.push(s.slice(b..i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(b) = start {
        out.push(s.from(b));
    }
    out
}

fn unit_shift(u: &str) -> Option<u32> {
    match u.to_ascii_lowercase().as_str() {
        "kbps" => Some(10),
        "mbps" => Some(20),
        "gbps" => Some(30),
        _ => None,
    }
}

fn looks_like_unit(t: &str) -> bool {
    unit_shift(t).is_some() || t.eq_ignore_ascii_case("bps")
}

/// `number` × 2^`shift`, rounded to the nearest bit/s (half up). `None` on overflow.
pub(crate) fn scaled_bps(int: &str, frac: &str, shift: u32) -> Option<u64> {
    if int.len() + frac.len() > 30 {
        return None;
    }
    let mant: u128 = format!("{int}{frac}").parse().ok()?;
    let scale = 10u128.checked_pow(u32::try_from(frac.len()).ok()?)?;
    let num = mant.checked_mul(1u128 << shift)?;
    let rounded = (num + scale / 2) / scale;
    u64::try_from(rounded).ok()
}

/// Parses the whole value. Pushes errors and returns `None` when any limit is wrong.
pub(crate) fn parse_rate_limits(s: &Span<'_>, d: &mut Diags) -> Option<RateLimits> {
    let toks = tokens(s);
    let mut out = RateLimits::default();
    if toks.is_empty() {
        d.error(
            s,
            "SMTP_RATE_LIMIT is empty",
            format!("0 (no limit) or {EXPECTED}"),
        );
        return None;
    }
    if toks.len() == 1 && toks[0].text == "0" {
        return Some(out);
    }
    let mut ok = true;
    let mut skip_next = false;
    for (i, tok) in toks.iter().enumerate() {
        if std::mem::take(&mut skip_next) {
            continue;
        }
        let t = tok.text;
        if t == "0" {
            d.error(
                tok,
                "a bare 0 turns rate limiting off and cannot be combined with other limits",
                "either SMTP_RATE_LIMIT=0 alone or only rates with units",
            );
            ok = false;
            continue;
        }
        let (pools, rate) = match t.find(':') {
            None => (None, *tok),
            Some(c) => (Some(tok.slice(0..c)), tok.from(c + 1)),
        };
        let mut pool_list = Vec::new();
        if let Some(p) = pools {
            if p.text.is_empty() {
                d.error(
                    tok,
                    format!("no pool names before ':' in {}", shown(t)),
                    EXPECTED,
                );
                ok = false;
                continue;
            }
            let mut bad = false;
            for (j, c) in p.text.char_indices() {
                match Pool::from_char(c) {
                    Some(pool) => pool_list.push(pool),
                    None => {
                        d.error_at(
                            &p,
                            j,
                            format!("'{c}' is not a pool name in {}", shown(t)),
                            "pool letters A-Z and '-' before ':', such as AB:1.5Mbps",
                        );
                        bad = true;
                        break;
                    }
                }
            }
            if bad {
                ok = false;
                continue;
            }
        }
        let rt = rate.text;
        let int_len = rt.bytes().take_while(u8::is_ascii_digit).count();
        let (frac, after) = match rt[int_len..].strip_prefix('.') {
            Some(rest) => {
                let n = rest.bytes().take_while(u8::is_ascii_digit).count();
                (&rest[..n], int_len + 1 + n)
            }
            None => ("", int_len),
        };
        if int_len == 0 || (after > int_len && frac.is_empty()) {
            d.error(
                &rate,
                format!("rate {} does not start with a number", shown(rt)),
                EXPECTED,
            );
            ok = false;
            continue;
        }
        let unit = &rt[after..];
        let shift = if unit.is_empty() {
            match toks.get(i + 1) {
                Some(next) if looks_like_unit(next.text) => {
                    d.error_at(
                        &rate,
                        after,
                        format!(
                            "a space between {} and its unit {}",
                            shown(rt),
                            shown(next.text)
                        ),
                        format!(
                            "the unit directly after the number, such as {}",
                            example_rate(rt, next.text)
                        ),
                    );
                    skip_next = true;
                }
                _ => d.error_at(
                    &rate,
                    after,
                    format!("rate {} has no unit", shown(rt)),
                    format!(
                        "kbps, Mbps or Gbps directly after the number, such as {}",
                        example_rate(rt, "Mbps")
                    ),
                ),
            }
            ok = false;
            continue;
        } else if let Some(sh) = unit_shift(unit) {
            sh
        } else {
            let why = if unit.eq_ignore_ascii_case("bps") {
                format!("plain bps in {} is not a documented unit", shown(rt))
            } else {
                format!("unknown unit {} in {}", shown(unit), shown(rt))
            };
            d.error_at(
                &rate,
                after,
                why,
                "kbps, Mbps or Gbps (any case), k/M/G being powers of 2",
            );
            ok = false;
            continue;
        };
        let bps = match scaled_bps(&rt[..int_len], frac, shift) {
            None => {
                d.error(&rate, format!("rate {} is too large", shown(rt)), EXPECTED);
                ok = false;
                continue;
            }
            Some(0) => {
                let zero = rt[..int_len].bytes().chain(frac.bytes()).all(|b| b == b'0');
                let why = if zero {
                    format!("a zero rate {} would stop all mail", shown(rt))
                } else {
                    format!("rate {} rounds to 0 bits per second", shown(rt))
                };
                d.error(
                    &rate,
                    why,
                    "a positive rate; to turn limiting off, set SMTP_RATE_LIMIT=0 alone",
                );
                ok = false;
                continue;
            }
            Some(v) => v,
        };
        if pool_list.is_empty() {
            if out.overall_bps.replace(bps).is_some() {
                d.warn(
                    tok,
                    "a second overall limit in SMTP_RATE_LIMIT; the last one counts",
                );
            }
        } else {
            for p in pool_list {
                if out.pools.insert(p, bps).is_some() {
                    d.warn(
                        tok,
                        format!(
                            "pool {p} is limited twice in SMTP_RATE_LIMIT; the last limit counts"
                        ),
                    );
                }
            }
        }
    }
    ok.then_some(out)
}

/// `12Mbps` from the number and unit written apart, for an "expected" text; a fixed example when
/// they are too long to repeat whole.
fn example_rate(number: &str, unit: &str) -> String {
    if number.len() + unit.len() <= 24 {
        crate::text::escape_controls(&format!("{number}{unit}")).into_owned()
    } else {
        "12Mbps".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_is_exact_and_rounds_to_nearest() {
        assert_eq!(scaled_bps("12", "", 20), Some(12_582_912));
        assert_eq!(scaled_bps("1", "5", 20), Some(1_572_864));
        assert_eq!(scaled_bps("150", "", 10), Some(153_600));
        // 0.1 kbps = 102.4 -> 102; 0.15 kbps = 153.6 -> 154
        assert_eq!(scaled_bps("0", "1", 10), Some(102));
        assert_eq!(scaled_bps("0", "15", 10), Some(154));
        assert_eq!(scaled_bps("1", "", 30), Some(1 << 30));
        assert_eq!(scaled_bps("99999999999999999999", "", 30), None);
    }
}
