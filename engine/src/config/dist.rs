//! `DIST_FORWARD=[n*]host [[n*]host ...]` (DIST-1): DISTRIBUTE workers and their weights.
//! `SELF` is the primary; when it is not listed it takes part with weight 1 (DIST-1).

use super::host::check_host;
use super::model::DistEntry;
use super::rate::tokens;
use super::span::{shown, Diags, Span};

/// The name of the primary instance in DIST_FORWARD.
pub const SELF: &str = "SELF";
/// The largest weight accepted.
pub const MAX_WEIGHT: u32 = 1000;

/// Entries in the order written, `SELF` first when it is implicit. Duplicate hosts (any case)
/// are merged by adding their weights, with a warning.
pub(crate) fn parse_dist_forward(s: &Span<'_>, d: &mut Diags) -> Option<Vec<DistEntry>> {
    const EXPECTED: &str =
        "space-separated [n*]host entries such as 'DIST1.EXAMPLE.ORG 2*DIST2.EXAMPLE.ORG 0*SELF'";
    let toks = tokens(s);
    if toks.is_empty() {
        d.error(s, "DIST_FORWARD is empty", EXPECTED);
        return None;
    }
    let mut out: Vec<DistEntry> = Vec::new();
    let mut ok = true;
    for tok in &toks {
        let (weight, host) = match tok.text.find('*') {
            None => (Some(1), *tok),
            Some(star) => {
                let w = tok.slice(0..star);
                let digits = !w.text.is_empty() && w.text.bytes().all(|b| b.is_ascii_digit());
                let n = digits
                    .then(|| w.text.parse::<u32>().ok())
                    .flatten()
                    .filter(|n| *n <= MAX_WEIGHT);
                if n.is_none() {
                    d.error(
                        &w,
                        format!("weight {} in DIST_FORWARD is not valid", shown(w.text)),
                        format!("a whole number from 0 to {MAX_WEIGHT} before '*', such as 2*DIST.EXAMPLE.ORG"),
                    );
                }
                (n, tok.from(star + 1))
            }
        };
        let name = if host.text.eq_ignore_ascii_case(SELF) {
            Some(SELF.to_string())
        } else if host.text.contains(':')
            && !host.text.contains('[')
            && host.text.matches(':').count() == 1
        {
            d.error_at(
                &host,
                host.text.find(':').unwrap_or(0),
                format!("DIST_FORWARD host {} has a port", shown(host.text)),
                "a host name without a port (DISTRIBUTE workers are other LISTSERV instances)",
            );
            None
        } else {
            check_host(&host, d, "DIST_FORWARD host").then(|| host.text.to_string())
        };
        let (Some(weight), Some(name)) = (weight, name) else {
            ok = false;
            continue;
        };
        if let Some(e) = out.iter_mut().find(|e| e.host.eq_ignore_ascii_case(&name)) {
            d.warn(
                tok,
                format!("{name} appears more than once in DIST_FORWARD; its weights are added"),
            );
            e.weight += weight;
        } else {
            out.push(DistEntry { host: name, weight });
        }
    }
    if !ok {
        return None;
    }
    if !out.iter().any(|e| e.host == SELF) {
        out.insert(
            0,
            DistEntry {
                host: SELF.to_string(),
                weight: 1,
            },
        );
    }
    if out.iter().all(|e| e.weight == 0) {
        d.error(
            s,
            "every DIST_FORWARD weight is 0, so no instance would do the work",
            "at least one entry with a weight above 0",
        );
        return None;
    }
    Some(out)
}
