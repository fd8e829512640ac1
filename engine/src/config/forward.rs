//! `SMTP_FORWARD` and `SMTP_FORWARD_n` values (FWD-1, WRK-1, WRK-3, WRK-4).
//!
//! Worker grammar (WRK-1):
//! `value := [count "*"] host [":" port] ["(" window *("," window) ")"] *(";" seg)`,
//! `seg := NAME "=" VALUE | failover-host[":" port]`, `window := H:MM "-" H:MM`.

use super::host::parse_host_port;
use super::model::{HostPort, PoolSet, TimeOfDay, Window};
use super::pools::parse_pool_set;
use super::span::{shown, Diags, Span};

/// The largest `x*` count accepted on one line.
pub const MAX_COUNT: u32 = 1000;

/// The most workers a configuration may define in all. Each worker keeps a connection of its own
/// to a relay (a socket, so a file descriptor): a process may by default have only 1024 files
/// open, and no forwarding MTA takes thousands of connections from one client.
pub const MAX_WORKERS: usize = 1000;

const WORKER_EXPECTED: &str = "[count*]host[:port][(HH:MM-HH:MM)][;failover-host[:port]][;POOL=pools], such as 2*MAIL.EXAMPLE.ORG:25(00:00-05:00);BACKUP.EXAMPLE.ORG;POOL=A-";

/// One `SMTP_FORWARD_n` line before `x*` expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WorkerLine {
    pub count: u32,
    pub primary: HostPort,
    pub failover: Option<HostPort>,
    pub windows: Vec<Window>,
    pub pools: PoolSet,
}

/// `SMTP_FORWARD=host[:port]`.
pub(crate) fn parse_sync_forward(s: &Span<'_>, d: &mut Diags) -> Option<HostPort> {
    if let Some(i) = s.text.find(char::is_whitespace) {
        d.error_at(
            s,
            i,
            "spaces are not allowed in SMTP_FORWARD",
            "a single host[:port] such as MAIL.EXAMPLE.ORG:25",
        );
        return None;
    }
    parse_host_port(s, d, "SMTP_FORWARD host")
}

/// One `SMTP_FORWARD_n` value; `key` names the keyword in messages.
pub(crate) fn parse_worker_line(s: &Span<'_>, d: &mut Diags, key: &str) -> Option<WorkerLine> {
    let t = s.text;
    let errors_before = d.items.len();
    if t.is_empty() {
        d.error(s, format!("{key} is empty"), WORKER_EXPECTED);
        return None;
    }
    if let Some(i) = t.find(char::is_whitespace) {
        d.error_at(
            s,
            i,
            format!("spaces are not allowed inside {key}"),
            WORKER_EXPECTED,
        );
        return None;
    }
    // Split into the head and the ';' segments.
    let head_end = t.find(';').unwrap_or(t.len());
    let head = s.slice(0..head_end);

    // head := [count*]host[:port][(windows)]
    let (main, windows) = match head.text.find('(') {
        None => {
            if let Some(i) = head.text.find(')') {
                d.error_at(
                    &head,
                    i,
                    format!("')' without '(' in {key}"),
                    WORKER_EXPECTED,
                );
                return None;
            }
            (head, Vec::new())
        }
        Some(open) => {
            let main = head.slice(0..open);
            match head.text[open..].find(')') {
                None => {
                    d.error_at(
                        &head,
                        open,
                        format!("the open-time window in {key} has no closing ')'"),
                        "(HH:MM-HH:MM) with a closing ')'",
                    );
                    (main, Vec::new())
                }
                Some(rel) => {
                    let close = open + rel;
                    if close + 1 < head.text.len() {
                        d.error_at(
                            &head,
                            close + 1,
                            format!(
                                "unexpected {} after the open-time window",
                                shown(&head.text[close + 1..])
                            ),
                            "';' or the end of the value after ')' (the port goes before the window: HOST:PORT(HH:MM-HH:MM))",
                        );
                    }
                    let ws = parse_windows(&head.slice(open + 1..close), d);
                    (main, ws)
                }
            }
        }
    };
    let (count, hostport) = match main.text.find('*') {
        None => (Some(1), main),
        Some(star) => {
            let c = main.slice(0..star);
            (parse_count(&c, d, key), main.from(star + 1))
        }
    };
    let primary = parse_host_port(&hostport, d, "worker host");

    let mut failover: Option<HostPort> = None;
    let mut failover_seen = false;
    let mut pools: Option<PoolSet> = None;
    let seg_starts: Vec<usize> = t.match_indices(';').map(|(i, _)| i + 1).collect();
    for (k, &start) in seg_starts.iter().enumerate() {
        let end = seg_starts.get(k + 1).map_or(t.len(), |&n| n - 1);
        let seg = s.slice(start..end);
        if seg.text.is_empty() {
            d.warn(&seg, format!("empty ';' segment in {key} is ignored"));
            continue;
        }
        if let Some(eq) = seg.text.find('=') {
            let name = seg.text[..eq].to_ascii_uppercase();
            let value = seg.from(eq + 1);
            if name == "POOL" {
                if pools.is_some() {
                    d.warn(
                        &seg,
                        format!("POOL= appears again in {key}; the last one counts"),
                    );
                }
                if let Some(p) = parse_pool_set(&value, d) {
                    pools = Some(p);
                }
            } else {
                d.warn(
                    &seg,
                    format!(
                        "unknown option {} in {key} is ignored (only POOL= is supported; LISTSERV's undocumented tuning parameters are not)",
                        shown(seg.text)
                    ),
                );
            }
            continue;
        }
        if failover_seen {
            d.error(
                &seg,
                format!("a second failover host {} in {key}", shown(seg.text)),
                "at most one failover host per SMTP_FORWARD_n line",
            );
            continue;
        }
        failover_seen = true;
        if seg.text.contains('(') {
            d.error_at(
                &seg,
                seg.text.find('(').unwrap_or(0),
                "the failover host cannot have an open-time window",
                "the window right after the primary host: HOST(HH:MM-HH:MM);FAILOVER",
            );
            continue;
        }
        failover = parse_host_port(&seg, d, "failover host");
    }
    if d.items[errors_before..]
        .iter()
        .any(|x| x.severity == super::model::Severity::Error)
    {
        return None;
    }
    Some(WorkerLine {
        count: count?,
        primary: primary?,
        failover,
        windows,
        pools: pools.unwrap_or(PoolSet::ALL),
    })
}

fn parse_count(c: &Span<'_>, d: &mut Diags, key: &str) -> Option<u32> {
    let ok = !c.text.is_empty() && c.text.bytes().all(|b| b.is_ascii_digit());
    match ok.then(|| c.text.parse::<u32>().ok()).flatten() {
        Some(n) if n <= MAX_COUNT => Some(n),
        _ => {
            d.error(
                c,
                format!("worker count {} in {key} is not valid", shown(c.text)),
                format!(
                    "a whole number from 0 to {MAX_COUNT} before '*', such as 2*MAIL.EXAMPLE.ORG"
                ),
            );
            None
        }
    }
}

/// `H:MM-HH:MM[,H:MM-HH:MM...]` (the text between the parentheses).
pub(crate) fn parse_windows(s: &Span<'_>, d: &mut Diags) -> Vec<Window> {
    const EXPECTED: &str = "one or more HH:MM-HH:MM ranges (24-hour clock) separated by commas, such as (00:00-05:00) or (08:00-12:00,22:00-02:00)";
    let mut out = Vec::new();
    if s.text.is_empty() {
        d.error(s, "the open-time window is empty", EXPECTED);
        return out;
    }
    let mut start = 0;
    for part in s.text.split(',') {
        let r = s.slice(start..start + part.len());
        start += part.len() + 1;
        let Some(dash) = r.text.find('-') else {
            d.error(
                &r,
                format!("open-time range {} has no '-'", shown(r.text)),
                EXPECTED,
            );
            continue;
        };
        let a = parse_time(&r.slice(0..dash), d, false);
        let b = parse_time(&r.from(dash + 1), d, true);
        if let (Some(start), Some(end)) = (a, b) {
            out.push(Window { start, end });
        }
    }
    out
}

/// `H:MM` or `HH:MM`, hours 0-23 (24:00 allowed as an end, meaning midnight).
fn parse_time(s: &Span<'_>, d: &mut Diags, is_end: bool) -> Option<TimeOfDay> {
    let t = s.text;
    let parsed = t.split_once(':').and_then(|(h, m)| {
        let digits = |x: &str| x.bytes().all(|b| b.is_ascii_digit());
        if !(1..=2).contains(&h.len()) || m.len() != 2 || !digits(h) || !digits(m) {
            return None;
        }
        let (h, m) = (h.parse::<u8>().ok()?, m.parse::<u8>().ok()?);
        if is_end && h == 24 && m == 0 {
            return Some(TimeOfDay::MIDNIGHT);
        }
        TimeOfDay::new(h, m)
    });
    if parsed.is_none() {
        d.error(
            s,
            format!("{} is not a time of day", shown(t)),
            "HH:MM on a 24-hour clock, hours 0-23 and minutes 00-59 (24:00 only as an end)",
        );
    }
    parsed
}
