//! Reading SITE.CFG / go.user lines (CFG-1) and resolving every keyword into a [`SiteConfig`].
//!
//! Line forms accepted:
//! - `KEY=value` (Windows SITE.CFG), `KEY="value"` (unix go.user), `KEY = 'value'` (z/VM style);
//!   one pair of surrounding double or single quotes is stripped; spaces around `=` are allowed.
//! - `export KEY [KEY ...]` and `export KEY="value"` (unix).
//! - Comments: lines starting with `*`, `#`, `;` or `REM ` (after leading spaces), and blank lines.
//!   A `# comment` may end a line after a closing quote or after a space (shell form).
//!   LISTSERV's manuals (site keyword reference, 1.8c to 17.0) document the `KEY=value` /
//!   `KEY="value"` / `KEY = 'value'` forms but no comment syntax for SITE.CFG; go.user is a
//!   Bourne shell script (so `#`), and `*`, `;` and `REM` cover the DOS/INI/VM habits.
//! - CRLF or LF line ends, an optional UTF-8 byte-order mark; bytes that are not UTF-8 are read
//!   lossily (as U+FFFD), so a Latin-1 comment does not stop the read.
//!
//! A key set again later wins, with a warning (no warning when the later value comes from the
//! override file, SITECFG.FILE, whose whole purpose is to override).

use std::collections::{BTreeMap, HashMap, HashSet};

use super::dist::parse_dist_forward;
use super::forward::{parse_sync_forward, parse_worker_line, WorkerLine, MAX_WORKERS};
use super::model::*;
use super::pools::{parse_default_list_pool, parse_pool, parse_priority};
use super::rate::parse_rate_limits;
use super::span::{shown, Diags, Span};

/// One file to read: its name (as shown in diagnostics) and its text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Source<'a> {
    pub name: &'a str,
    pub text: &'a str,
}

struct Setting<'a> {
    key: String,
    key_span: Span<'a>,
    value: Span<'a>,
}

/// Longest setting line read, in bytes (without its line end). No keyword needs more: a
/// worker line with a failover host, windows and pools is well under 300.
pub const MAX_LINE_BYTES: usize = 4096;

/// The keywords with delivery behaviour in smtpw (SMTP_FORWARD_n aside).
pub const DELIVERY_KEYWORDS: &[&str] = &[
    "NODE",
    "SMTP_FORWARD",
    "DEFAULT_LIST_POOL",
    "DEFAULT_DIST_POOL",
    "MAXBSMTP",
    "SORT_RECIPIENTS",
    "SMTP_RATE_LIMIT",
    "DIST_FORWARD",
    "DIST_FORWARD_THRESHOLD",
    "DIST_FORWARD_MINSIZE",
    "DIST_BACKGROUND_POOL_PRIORITY",
];

/// Keywords read and kept in [`SiteConfig::passive`] without a warning: documented ones smtpw
/// parses but does not act on (COPY-3, DIST-3, CFG-4) and common general LISTSERV ones.
pub const PASSIVE_KEYWORDS: &[&str] = &[
    "EMBEDDED_MAIL_MERGE",
    "DEFAULT_DIST_BACKGROUND",
    "DIST_BACKGROUND_JOBSIZE",
    "DIST_BACKGROUND_CHUNKSIZE",
    "MYDOMAIN",
    "MYORGNAME",
    "LOCAL",
    "POSTMASTER",
    "CREATEPW",
];

fn is_key(t: &str) -> bool {
    let mut b = t.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

fn is_comment(t: &str) -> bool {
    if t.starts_with(['*', '#', ';']) {
        return true;
    }
    let b = t.as_bytes();
    b.len() >= 3
        && b[..3].eq_ignore_ascii_case(b"REM")
        && (b.len() == 3 || b[3].is_ascii_whitespace())
}

/// Removes one pair of surrounding quotes; checks nothing but a `#` comment follows.
fn dequote<'a>(v: Span<'a>, d: &mut Diags, key: &str) -> Option<Span<'a>> {
    let v = v.trim();
    let Some(q) = v.text.chars().next().filter(|c| *c == '"' || *c == '\'') else {
        // Unquoted: a shell comment (`#` after a space) ends the value, as in go.user.
        let end = v
            .text
            .char_indices()
            .find(|&(i, c)| c == '#' && i > 0 && v.text[..i].ends_with(char::is_whitespace))
            .map_or(v.text.len(), |(i, _)| i);
        return Some(v.slice(0..end).trim());
    };
    match v.text[1..].find(q) {
        None => {
            d.error(
                &v,
                format!("the value of {key} opens a quote {q} that is never closed"),
                format!("a closing {q} at the end of the value"),
            );
            None
        }
        Some(rel) => {
            let close = 1 + rel;
            let rest = v.from(close + 1).trim();
            if !rest.text.is_empty() && !rest.text.starts_with('#') {
                d.error(
                    &rest,
                    format!(
                        "unexpected {} after the closing quote of {key}",
                        shown(rest.text)
                    ),
                    "the end of the line (or a # comment)",
                );
                return None;
            }
            Some(v.slice(1..close).trim())
        }
    }
}

/// Reads the lines of every source into settings (last wins).
fn read_settings<'a>(
    sources: &[Source<'a>],
    d: &mut Diags,
) -> (Vec<Setting<'a>>, HashSet<String>, bool) {
    let mut settings: Vec<Setting<'a>> = Vec::new();
    let mut index: HashMap<String, (usize, usize)> = HashMap::new(); // key -> (slot, source)
    let mut exports = HashSet::new();
    let mut unix_form = false;
    for (src_i, src) in sources.iter().enumerate() {
        let text = src.text.strip_prefix('\u{feff}').unwrap_or(src.text);
        for (i, raw) in text.split('\n').enumerate() {
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            let line = Span {
                text: raw,
                file: src.name,
                line: i + 1,
                col: 1,
            }
            .trim();
            if line.text.is_empty() || is_comment(line.text) {
                continue;
            }
            if raw.len() > MAX_LINE_BYTES {
                // Not read further: neither kept nor quoted (a 10 MB value stays out of memory
                // copies and out of the messages).
                d.error(
                    &line.slice(0..0),
                    format!("a line of {} bytes", raw.len()),
                    format!("at most {MAX_LINE_BYTES} bytes on a line"),
                );
                continue;
            }
            let mut exported = false;
            let mut body = line;
            if let Some(rest) = line.text.strip_prefix("export") {
                if rest.starts_with(char::is_whitespace) {
                    unix_form = true;
                    body = line.from(6).trim();
                    if !body.text.contains('=') {
                        for name in super::rate::tokens(&body) {
                            if is_key(name.text) {
                                exports.insert(name.text.to_ascii_uppercase());
                            } else {
                                d.error(
                                    &name,
                                    format!("{} is not a variable name", shown(name.text)),
                                    "export followed by keyword names such as export SMTP_FORWARD_1",
                                );
                            }
                        }
                        continue;
                    }
                    exported = true;
                }
            }
            let Some(eq) = body.text.find('=') else {
                d.error(
                    &body,
                    format!("{} is not a setting", shown(body.text)),
                    "KEY=value, KEY=\"value\", an export line, or a comment starting with *, #, ; or REM",
                );
                continue;
            };
            let key_span = body.slice(0..eq).trim();
            if !is_key(key_span.text) {
                d.error(
                    &key_span,
                    format!("{} is not a keyword name", shown(key_span.text)),
                    "a keyword of letters, digits and '_' before '=', such as SMTP_FORWARD_1",
                );
                continue;
            }
            let key = key_span.text.to_ascii_uppercase();
            let Some(value) = dequote(body.from(eq + 1), d, &key) else {
                continue;
            };
            if exported {
                exports.insert(key.clone());
            }
            let setting = Setting {
                key: key.clone(),
                key_span,
                value,
            };
            match index.get(&key).copied() {
                Some((slot, prev_src)) => {
                    if prev_src == src_i {
                        let prev = &settings[slot].key_span;
                        d.warn(
                            &key_span,
                            format!(
                                "{key} is set again; this value replaces the one on line {}",
                                prev.line
                            ),
                        );
                    }
                    settings[slot] = setting;
                    index.insert(key, (slot, src_i));
                }
                None => {
                    index.insert(key, (settings.len(), src_i));
                    settings.push(setting);
                }
            }
        }
    }
    (settings, exports, unix_form)
}

/// `SMTP_FORWARD_n` with n = 1, 2, ... (no sign, no leading zero).
fn worker_n(key: &str) -> Option<Result<u32, ()>> {
    let suffix = key.strip_prefix("SMTP_FORWARD_")?;
    let ok = !suffix.is_empty()
        && suffix.bytes().all(|b| b.is_ascii_digit())
        && !suffix.starts_with('0');
    Some(if ok {
        suffix.parse().map_err(|_| ())
    } else {
        Err(())
    })
}

fn parse_uint(
    s: &Span<'_>,
    d: &mut Diags,
    key: &str,
    range: std::ops::RangeInclusive<u32>,
) -> Option<u32> {
    let digits =
        !s.text.is_empty() && s.text.len() <= 10 && s.text.bytes().all(|b| b.is_ascii_digit());
    match digits.then(|| s.text.parse::<u32>().ok()).flatten() {
        Some(v) if range.contains(&v) => Some(v),
        _ => {
            d.error(
                s,
                format!(
                    "{key}={} is not valid",
                    crate::text::short_prefix(s.text, crate::text::QUOTE_MAX_CHARS)
                ),
                format!("a whole number from {} to {}", range.start(), range.end()),
            );
            None
        }
    }
}

/// Parses every source (the main file first, then overrides) into a configuration.
/// Returns the configuration only when there is no error; the diagnostics are sorted by place.
pub(crate) fn parse_sources(sources: &[Source<'_>]) -> (Option<SiteConfig>, Vec<Diagnostic>) {
    let mut d = Diags::default();
    let (settings, exports, unix_form) = read_settings(sources, &mut d);
    let main_name = sources.first().map_or("", |s| s.name);

    let mut cfg = SiteConfig {
        source: main_name.to_string(),
        node: None,
        sync_forward: None,
        workers: Vec::new(),
        default_list_pool: DeliveryPools::default(),
        default_dist_pool: Pool::DEFAULT,
        max_bsmtp: DEFAULT_MAX_BSMTP,
        sort_recipients: 0,
        rate_limits: RateLimits::default(),
        dist_forward: Vec::new(),
        dist_forward_threshold: 0,
        dist_forward_minsize: 0,
        dist_background_pool_priority: None,
        passive: BTreeMap::new(),
        warnings: Vec::new(),
    };
    let mut worker_lines: BTreeMap<u32, (&Setting<'_>, Option<WorkerLine>)> = BTreeMap::new();
    let mut rate_span = None;
    let mut sync_span = None;

    for s in &settings {
        let v = &s.value;
        let key = s.key.as_str();
        if unix_form && !exports.contains(key) && key != "NODE" {
            let delivery = DELIVERY_KEYWORDS.contains(&key) || matches!(worker_n(key), Some(Ok(_)));
            if delivery {
                d.warn(
                    &s.key_span,
                    format!(
                        "{key} is set but not exported in this file; on unix LISTSERV sees only exported variables (add 'export {key}' unless the go script exports it)"
                    ),
                );
            }
        }
        match key {
            "NODE" => {
                if v.text.is_empty() {
                    d.warn(v, "NODE is empty");
                } else {
                    cfg.node = Some(v.text.to_string());
                }
            }
            "SMTP_FORWARD" => {
                sync_span = Some(s.key_span);
                cfg.sync_forward = parse_sync_forward(v, &mut d);
            }
            "DEFAULT_LIST_POOL" => {
                if let Some(p) = parse_default_list_pool(v, &mut d) {
                    cfg.default_list_pool = p;
                }
            }
            "DEFAULT_DIST_POOL" => {
                if let Some(p) = parse_pool(v, &mut d, "DEFAULT_DIST_POOL") {
                    cfg.default_dist_pool = p;
                }
            }
            "MAXBSMTP" => {
                if let Some(n) = parse_uint(v, &mut d, key, 1..=u32::MAX) {
                    cfg.max_bsmtp = n;
                }
            }
            "SORT_RECIPIENTS" => {
                if let Some(n) = parse_uint(v, &mut d, key, 0..=2) {
                    cfg.sort_recipients = n as u8;
                }
            }
            "SMTP_RATE_LIMIT" => {
                rate_span = Some(s.key_span);
                if let Some(r) = parse_rate_limits(v, &mut d) {
                    cfg.rate_limits = r;
                }
            }
            "DIST_FORWARD" => {
                if let Some(e) = parse_dist_forward(v, &mut d) {
                    cfg.dist_forward = e;
                }
            }
            "DIST_FORWARD_THRESHOLD" => {
                if let Some(n) = parse_uint(v, &mut d, key, 0..=u32::MAX) {
                    cfg.dist_forward_threshold = n;
                }
            }
            "DIST_FORWARD_MINSIZE" => {
                if let Some(n) = parse_uint(v, &mut d, key, 0..=u32::MAX) {
                    cfg.dist_forward_minsize = n;
                }
            }
            "DIST_BACKGROUND_POOL_PRIORITY" => {
                cfg.dist_background_pool_priority = parse_priority(v, &mut d);
            }
            "EMBEDDED_MAIL_MERGE" | "DEFAULT_DIST_BACKGROUND" => {
                parse_uint(v, &mut d, key, 0..=1);
                cfg.passive.insert(s.key.clone(), v.text.to_string());
            }
            "ASYNCH_SMTP" => {
                d.warn(
                    &s.key_span,
                    "ASYNCH_SMTP is deprecated (SMTP_FORWARD_n replaces it) and has no effect here",
                );
                cfg.passive.insert(s.key.clone(), v.text.to_string());
            }
            _ => match worker_n(key) {
                Some(Ok(n)) => {
                    let line = parse_worker_line(v, &mut d, key);
                    worker_lines.insert(n, (s, line));
                }
                Some(Err(())) => {
                    d.warn(
                        &s.key_span,
                        format!("{key} is not a worker keyword (workers are SMTP_FORWARD_1, SMTP_FORWARD_2, ...) and is ignored"),
                    );
                    cfg.passive.insert(s.key.clone(), v.text.to_string());
                }
                None => {
                    if !PASSIVE_KEYWORDS.contains(&key) {
                        d.warn(
                            &s.key_span,
                            format!("{key} is not a keyword smtpw acts on; it is kept but has no effect"),
                        );
                    }
                    cfg.passive.insert(s.key.clone(), v.text.to_string());
                }
            },
        }
    }

    // SMTP_FORWARD_n: _1 up to the first gap, expanded in line order (WRK-2, WRK-3).
    let mut expect = 1u32;
    let mut gap_at: Option<u32> = None;
    for (&n, (s, line)) in &worker_lines {
        if gap_at.is_none() && n != expect {
            gap_at = Some(expect);
        }
        if let Some(missing) = gap_at {
            d.warn(
                &s.key_span,
                format!(
                    "{} is ignored because SMTP_FORWARD_{missing} is missing (workers are read from SMTP_FORWARD_1 up to the first gap)",
                    s.key
                ),
            );
            continue;
        }
        expect = n + 1;
        let Some(line) = line else { continue };
        let total = cfg.workers.len() + line.count as usize;
        if total > MAX_WORKERS {
            d.error(
                &s.key_span,
                format!("{} brings the workers to {total}", s.key),
                format!("at most {MAX_WORKERS} workers in all (each keeps a connection of its own to a relay, and a process may by default have only 1024 files open)"),
            );
            break;
        }
        if line.count == 0 {
            d.warn(
                &s.value,
                format!("{} asks for 0 workers (0*), so it adds none", s.key),
            );
        }
        for _ in 0..line.count {
            cfg.workers.push(WorkerSpec {
                id: cfg.workers.len() as u32 + 1,
                source_n: n,
                primary: line.primary.clone(),
                failover: line.failover.clone(),
                windows: line.windows.clone(),
                pools: line.pools,
            });
        }
    }

    let first_worker = worker_lines.values().next().map(|(s, _)| s.key_span);
    let file_start = Span {
        text: "",
        file: main_name,
        line: 1,
        col: 1,
    };
    if sync_span.is_none() {
        let at = first_worker.unwrap_or(file_start);
        if cfg.workers.is_empty() {
            // A verdict on the whole file, given when nothing else is wrong with it: a file with
            // errors is refused anyway, and a bad worker line says itself what is wrong.
            if !d.has_errors() {
                d.error(
                    &at,
                    "neither SMTP_FORWARD nor any SMTP_FORWARD_n worker is set, so no mail can be delivered (LISTSERV on unix would use the local host; smtpw does not guess)",
                    "SMTP_FORWARD=host[:port], or at least one SMTP_FORWARD_n=host line",
                );
            }
        } else {
            d.warn(
                &at,
                "SMTP_FORWARD is not set; LISTSERV on Windows requires it even with workers, and without it there is no synchronous fallback",
            );
        }
    }
    if !d.has_errors() {
        if let Some(at) = first_worker {
            let unserved = cfg.unserved_pools();
            if !cfg.workers.is_empty() && !unserved.is_empty() {
                let names: Vec<String> = unserved.iter().map(|p| p.to_string()).collect();
                d.warn(
                    &at,
                    format!(
                        "no worker serves pool{} {}; mail in {} {}",
                        if names.len() > 1 { "s" } else { "" },
                        names.join(" "),
                        if names.len() > 1 { "them" } else { "it" },
                        if cfg.sync_forward.is_some() {
                            "goes through SMTP_FORWARD"
                        } else {
                            "stays queued, since SMTP_FORWARD is not set"
                        }
                    ),
                );
            }
        }
        if let Some(at) = rate_span {
            if cfg.workers.is_empty() && !cfg.rate_limits.is_unlimited() {
                d.warn(
                    &at,
                    "SMTP_RATE_LIMIT applies only to SMTP_FORWARD_n workers; with none defined it has no effect",
                );
            }
        }
    }

    let order = |f: &str| {
        sources
            .iter()
            .position(|s| s.name == f)
            .unwrap_or(usize::MAX)
    };
    d.items.sort_by_key(|x| (order(&x.file), x.line, x.column));
    if d.has_errors() {
        return (None, d.items);
    }
    cfg.warnings = d.items.clone();
    (Some(cfg), d.items)
}
