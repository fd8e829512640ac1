//! Delivery pools (POOL-1): `POOL=` sets, `DEFAULT_LIST_POOL`, `DEFAULT_DIST_POOL`,
//! `DIST_BACKGROUND_POOL_PRIORITY`. Letters are case-insensitive (POOL-2, POOL-4).

use super::model::{DeliveryPools, Pool, PoolPriority, PoolSet};
use super::span::{shown, Diags, Span};
use crate::text::{short_prefix, QUOTE_MAX_CHARS};

const POOL_EXPECTED: &str = "a pool letter A-Z or '-' (the default pool)";

/// `POOL=` value: `*` alone, or a run of letters and `-` (`A-`, `b`, `XYZ`).
pub(crate) fn parse_pool_set(s: &Span<'_>, d: &mut Diags) -> Option<PoolSet> {
    let t = s.text;
    const EXPECTED: &str = "'*' (all pools) or pool letters A-Z and '-' such as POOL=A-";
    if t.is_empty() {
        d.error(s, "POOL= has no pools", EXPECTED);
        return None;
    }
    if t == "*" {
        return Some(PoolSet::ALL);
    }
    if let Some(i) = t.find('*') {
        d.error_at(
            s,
            i,
            format!(
                "POOL={} mixes '*' with pool letters ('*' already means every pool)",
                short_prefix(t, QUOTE_MAX_CHARS)
            ),
            "either POOL=* alone or only letters and '-'",
        );
        return None;
    }
    let mut set = PoolSet::EMPTY;
    for (i, c) in t.char_indices() {
        match Pool::from_char(c) {
            Some(p) => set.insert(p),
            None => {
                d.error_at(
                    s,
                    i,
                    format!(
                        "{} is not a pool name in POOL={}",
                        shown(c.encode_utf8(&mut [0; 4])),
                        short_prefix(t, QUOTE_MAX_CHARS)
                    ),
                    EXPECTED,
                );
                return None;
            }
        }
    }
    Some(set)
}

/// A single pool name (`A`..`Z`, `-`).
pub(crate) fn parse_pool(s: &Span<'_>, d: &mut Diags, what: &str) -> Option<Pool> {
    let mut chars = s.text.chars();
    match (chars.next().and_then(Pool::from_char), chars.next()) {
        (Some(p), None) => Some(p),
        _ => {
            d.error(
                s,
                format!("{what} {} is not a pool name", shown(s.text)),
                POOL_EXPECTED,
            );
            None
        }
    }
}

/// `DEFAULT_LIST_POOL=x [y]` (POOL-3): x for postings, y (default x) for admin mail.
/// The two values are separated by a space, as documented; a comma (as in the list header's
/// `Delivery-Pool= x,y`) is accepted too.
pub(crate) fn parse_default_list_pool(s: &Span<'_>, d: &mut Diags) -> Option<DeliveryPools> {
    let mut parts = Vec::new();
    let mut start = None;
    for (i, c) in s
        .text
        .char_indices()
        .chain(std::iter::once((s.text.len(), ' ')))
    {
        let sep = c.is_whitespace() || c == ',';
        match (sep, start) {
            (false, None) => start = Some(i),
            (true, Some(b)) => {
                parts.push(s.slice(b..i));
                start = None;
            }
            _ => {}
        }
    }
    match parts.as_slice() {
        [] => {
            d.error(
                s,
                "DEFAULT_LIST_POOL is empty",
                "one or two pool names such as A or 'A B'",
            );
            None
        }
        [x] => parse_pool(x, d, "DEFAULT_LIST_POOL").map(|p| DeliveryPools {
            postings: p,
            admin: p,
        }),
        [x, y] => {
            let px = parse_pool(x, d, "DEFAULT_LIST_POOL posting pool");
            let py = parse_pool(y, d, "DEFAULT_LIST_POOL admin pool");
            Some(DeliveryPools {
                postings: px?,
                admin: py?,
            })
        }
        [_, _, extra, ..] => {
            d.error(
                extra,
                "DEFAULT_LIST_POOL has more than two pools",
                "a posting pool and optionally an admin pool, such as 'A B'",
            );
            None
        }
    }
}

/// `DIST_BACKGROUND_POOL_PRIORITY=I*B` (POOL-5): highest first; `*` = every pool not listed;
/// without `*`, unlisted pools go last. The result lists all 27 pools.
pub(crate) fn parse_priority(s: &Span<'_>, d: &mut Diags) -> Option<PoolPriority> {
    const EXPECTED: &str = "pool letters A-Z and '-', highest priority first, with at most one '*' for the unlisted pools, such as I*B";
    let t = s.text;
    if t.is_empty() {
        d.error(s, "DIST_BACKGROUND_POOL_PRIORITY is empty", EXPECTED);
        return None;
    }
    let mut before = Vec::new();
    let mut after = Vec::new();
    let mut star = false;
    let mut seen = PoolSet::EMPTY;
    let mut ok = true;
    for (i, c) in t.char_indices() {
        if c == '*' {
            if star {
                d.error_at(
                    s,
                    i,
                    "a second '*' in DIST_BACKGROUND_POOL_PRIORITY",
                    EXPECTED,
                );
                ok = false;
            }
            star = true;
            continue;
        }
        match Pool::from_char(c) {
            Some(p) if seen.contains(p) => {
                d.error_at(
                    s,
                    i,
                    format!("pool {p} is listed twice in DIST_BACKGROUND_POOL_PRIORITY"),
                    "each pool at most once",
                );
                ok = false;
            }
            Some(p) => {
                seen.insert(p);
                if star {
                    after.push(p)
                } else {
                    before.push(p)
                }
            }
            None => {
                d.error_at(s, i, format!("'{c}' is not a pool name"), EXPECTED);
                ok = false;
            }
        }
    }
    if !ok {
        return None;
    }
    let mut order = before;
    order.extend(Pool::all().filter(|p| !seen.contains(*p)));
    order.extend(after);
    Some(PoolPriority(order))
}

/// The list header keyword `Delivery-Pool= x[,y]` (POOL-3): x for postings, y (default x) for
/// administrative mail. Spaces around the names are ignored.
pub fn parse_delivery_pool(value: &str) -> Result<DeliveryPools, String> {
    let one = |s: &str| {
        let s = s.trim();
        let mut c = s.chars();
        match (c.next().and_then(Pool::from_char), c.next()) {
            (Some(p), None) => Ok(p),
            _ => Err(format!(
                "Delivery-Pool: {} is not a pool name, expected {POOL_EXPECTED}",
                shown(s)
            )),
        }
    };
    match value.split_once(',') {
        None => one(value).map(|p| DeliveryPools {
            postings: p,
            admin: p,
        }),
        Some((x, y)) => Ok(DeliveryPools {
            postings: one(x)?,
            admin: one(y)?,
        }),
    }
}
