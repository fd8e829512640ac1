//! Host names and ports (FWD-1): an FQDN or a dotted IPv4 address, never IPv6 or an
//! unqualified name; `LOCALHOST` is accepted with a warning.

use super::model::HostPort;
use super::span::{shown, Diags, Span};

pub(crate) const DEFAULT_PORT: u16 = 25;

const HOST_EXPECTED: &str =
    "a fully qualified host name such as MAIL.EXAMPLE.ORG or a dotted IPv4 address such as 192.0.2.10";

/// Checks `s` as a host name (no port). Pushes errors and returns `false` when it is unusable.
pub(crate) fn check_host(s: &Span<'_>, d: &mut Diags, what: &str) -> bool {
    let t = s.text;
    if t.is_empty() {
        d.error(s, format!("missing {what}"), HOST_EXPECTED);
        return false;
    }
    if let Some(i) = t.find(['[', ']']) {
        d.error_at(
            s,
            i,
            format!(
                "{what} {} looks like an IPv6 address, which LISTSERV does not support",
                shown(t)
            ),
            HOST_EXPECTED,
        );
        return false;
    }
    if t.eq_ignore_ascii_case("localhost") {
        d.warn(
            s,
            format!(
                "{what} {} works, but LISTSERV advises the machine's fully qualified name instead of LOCALHOST",
                shown(t)
            ),
        );
        return true;
    }
    if let Some((i, c)) = t
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        if c == '%' || c == '$' {
            d.error_at(
                s,
                i,
                format!(
                    "{what} {} uses a variable substitution (%NAME% or $NAME), which smtpw does not expand",
                    shown(t)
                ),
                "the host name written out, such as MAIL.EXAMPLE.ORG",
            );
            return false;
        }
        d.error_at(
            s,
            i,
            format!("character '{c}' is not allowed in {what} {}", shown(t)),
            "letters, digits, '-' and '.' only",
        );
        return false;
    }
    if !t.contains('.') {
        d.error(
            s,
            format!(
                "{what} {} is not fully qualified (unqualified names cause errors in LISTSERV)",
                shown(t)
            ),
            if t.len() <= 63 {
                format!("a fully qualified name such as {t}.EXAMPLE.ORG, or a dotted IPv4 address")
            } else {
                "a fully qualified name such as NAME.EXAMPLE.ORG, or a dotted IPv4 address".into()
            },
        );
        return false;
    }
    if t.len() > 253 {
        d.error(
            s,
            format!("{what} is {} characters long", t.len()),
            "at most 253 characters",
        );
        return false;
    }
    let labels: Vec<&str> = t.split('.').collect();
    if labels
        .iter()
        .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
    {
        let ok = labels.len() == 4
            && labels
                .iter()
                .all(|l| l.len() <= 3 && l.parse::<u16>().is_ok_and(|v| v <= 255));
        if !ok {
            d.error(
                s,
                format!("{what} {} is not a valid IPv4 address", shown(t)),
                "four numbers from 0 to 255 separated by dots, such as 192.0.2.10",
            );
        }
        return ok;
    }
    let mut off = 0;
    for l in &labels {
        let bad = if l.is_empty() {
            Some("has an empty part (two dots in a row, or a dot at the start or end)")
        } else if l.len() > 63 {
            Some("has a part longer than 63 characters")
        } else if l.starts_with('-') || l.ends_with('-') {
            Some("has a part that starts or ends with '-'")
        } else {
            None
        };
        if let Some(why) = bad {
            d.error_at(s, off, format!("{what} {} {why}", shown(t)), HOST_EXPECTED);
            return false;
        }
        off += l.len() + 1;
    }
    true
}

/// Parses `host[:port]` (port 25 when absent). Pushes errors and returns `None` when unusable.
pub(crate) fn parse_host_port(s: &Span<'_>, d: &mut Diags, what: &str) -> Option<HostPort> {
    let t = s.text;
    if t.contains(['[', ']']) || t.matches(':').count() > 1 {
        d.error(
            s,
            format!(
                "{what} {} looks like an IPv6 address, which LISTSERV does not support",
                shown(t)
            ),
            HOST_EXPECTED,
        );
        return None;
    }
    let (host, port) = match t.find(':') {
        None => (s.slice(0..t.len()), None),
        Some(i) => (s.slice(0..i), Some(s.from(i + 1))),
    };
    let host_ok = check_host(&host, d, what);
    let port = match port {
        None => Some(DEFAULT_PORT),
        Some(p) => parse_port(&p, d),
    };
    match (host_ok, port) {
        (true, Some(port)) => Some(HostPort::new(host.text, port)),
        _ => None,
    }
}

pub(crate) fn parse_port(p: &Span<'_>, d: &mut Diags) -> Option<u16> {
    let ok = !p.text.is_empty() && p.text.len() <= 5 && p.text.bytes().all(|b| b.is_ascii_digit());
    match ok.then(|| p.text.parse::<u32>().ok()).flatten() {
        Some(v @ 1..=65535) => u16::try_from(v).ok(),
        _ => {
            d.error(
                p,
                format!("port {} is not valid", shown(p.text)),
                "a port number from 1 to 65535 after ':'",
            );
            None
        }
    }
}
