//! `[listen]`: the SMTP listener list managers hand their mail to.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{parse_duration, Cx, DURATION_EXPECTED};
use crate::config::Pool;

/// An address range `addr/prefix` (`127.0.0.0/8`, `::1/128`); a bare address is `/32` or
/// `/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    /// The network's address.
    pub addr: IpAddr,
    /// How many leading bits must match.
    pub prefix: u8,
}

impl IpNet {
    /// Parse `a.b.c.d/n`, `x::y/n` or a bare address.
    pub fn parse(s: &str) -> Result<IpNet, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{} is not an IP address", crate::text::quoted_prefix(a, 40)))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|n| *n <= max).ok_or_else(|| {
                format!(
                    "/{} is not a prefix length for this address (0 to {max})",
                    crate::text::short_prefix(p, 10)
                )
            })?,
        };
        Ok(IpNet { addr, prefix })
    }

    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An envelope-sender pattern: `*` matches any run of characters; case does not matter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SenderPattern(String);

impl SenderPattern {
    /// A pattern (compared without regard to case).
    pub fn new(p: &str) -> Self {
        SenderPattern(p.to_ascii_lowercase())
    }

    /// The pattern, lower-cased.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `sender` matches (ASCII case-insensitive).
    pub fn matches(&self, sender: &str) -> bool {
        let s = sender.to_ascii_lowercase();
        let parts: Vec<&str> = self.0.split('*').collect();
        let (first, rest) = match parts.split_first() {
            Some(x) => x,
            None => return s.is_empty(),
        };
        let Some(mut tail) = s.strip_prefix(first) else {
            return false;
        };
        let Some((last, middle)) = rest.split_last() else {
            return tail.is_empty();
        };
        for m in middle {
            match tail.find(m) {
                Some(i) => tail = &tail[i + m.len()..],
                None => return false,
            }
        }
        tail.ends_with(last)
    }
}

/// The listener's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSettings {
    /// Where it listens.
    pub addresses: Vec<SocketAddr>,
    /// Clients allowed to submit; others get `554 5.7.1`.
    pub allow: Vec<IpNet>,
    /// Advertised as SIZE; larger messages are refused with 552.
    pub max_message_bytes: u64,
    /// Recipients per transaction.
    pub max_recipients: u32,
    /// Connections at once; more are answered `421` and closed.
    pub max_connections: u32,
    /// A client silent this long is disconnected.
    pub idle_timeout: Duration,
    /// Envelope-sender patterns and the pool their mail goes to, first match wins.
    pub pools: Vec<(SenderPattern, Pool)>,
    /// Threads serving the connections, each with its own event loop (the delivery engine
    /// runs on others).
    pub threads: u32,
}

impl ListenSettings {
    /// The default of `max_message_bytes` (50 MiB).
    pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 52_428_800;
    /// The default of `max_recipients`.
    pub const DEFAULT_MAX_RECIPIENTS: u32 = 100_000;
    /// The default of `max_connections`.
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 200;
    /// RFC 5321's server time-out.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
    /// The default of `threads`: one serves ~9,600 single-recipient messages or ~86,000
    /// recipients a second on a 2-CPU machine (docs/PERFORMANCE.md), more than the few
    /// connections of a list manager send.
    pub const DEFAULT_THREADS: u32 = 1;
    /// The most `threads`.
    pub const MAX_THREADS: u32 = 256;

    /// Defaults for `addresses` (loopback only).
    pub fn on(addresses: Vec<SocketAddr>) -> Self {
        ListenSettings {
            addresses,
            allow: default_allow(),
            max_message_bytes: Self::DEFAULT_MAX_MESSAGE_BYTES,
            max_recipients: Self::DEFAULT_MAX_RECIPIENTS,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            pools: Vec::new(),
            threads: Self::DEFAULT_THREADS,
        }
    }

    /// Whether a client at `ip` may submit.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|n| n.contains(ip))
    }

    /// The pool of a sender's mail by the `[listen.pools]` map, if a pattern matches.
    pub fn pool_for_sender(&self, sender: &str) -> Option<Pool> {
        self.pools
            .iter()
            .find(|(p, _)| p.matches(sender))
            .map(|(_, pool)| *pool)
    }
}

fn default_allow() -> Vec<IpNet> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .filter_map(|s| IpNet::parse(s).ok())
        .collect()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    addresses: Option<Spanned<Vec<Spanned<String>>>>,
    allow: Option<Vec<Spanned<String>>>,
    max_message_bytes: Option<Spanned<u64>>,
    max_recipients: Option<Spanned<u32>>,
    max_connections: Option<Spanned<u32>>,
    idle_timeout: Option<Spanned<String>>,
    threads: Option<Spanned<u32>>,
    // A table keyed by pattern; order is the file's (toml keeps insertion order only with
    // preserve_order, so patterns are tried most specific (longest) first).
    pools: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
}

pub(super) fn check(r: RawListen, cx: &mut Cx<'_>) -> ListenSettings {
    let mut s = ListenSettings::on(Vec::new());
    match r.addresses {
        None => cx.error(
            0..0,
            "[listen] has no addresses",
            "addresses = [\"127.0.0.1:2525\"]",
        ),
        Some(list) => {
            let span = list.span();
            let list = list.into_inner();
            if list.is_empty() {
                cx.error(
                    span,
                    "[listen] addresses is empty",
                    "at least one ADDRESS:PORT",
                );
            }
            for a in list {
                match a.get_ref().parse::<SocketAddr>() {
                    Ok(sa) => s.addresses.push(sa),
                    Err(_) => cx.error(
                        a.span(),
                        format!(
                            "[listen] address {} is not ADDRESS:PORT",
                            crate::text::quoted_prefix_in(a.get_ref(), 40, '"')
                        ),
                        "such as \"127.0.0.1:2525\" or \"[::1]:2525\"",
                    ),
                }
            }
        }
    }
    if let Some(allow) = r.allow {
        s.allow.clear();
        for a in allow {
            match IpNet::parse(a.get_ref()) {
                Ok(n) => s.allow.push(n),
                Err(e) => cx.error(
                    a.span(),
                    format!("[listen] allow: {e}"),
                    "an address or range such as \"192.0.2.0/24\" or \"::1/128\"",
                ),
            }
        }
    }
    if let Some(v) = r.max_message_bytes {
        if *v.get_ref() == 0 {
            cx.error(
                v.span(),
                "[listen] max_message_bytes is 0",
                "a size in bytes, such as 52428800",
            );
        }
        s.max_message_bytes = *v.get_ref();
    }
    if let Some(v) = r.max_recipients {
        if *v.get_ref() == 0 {
            cx.error(
                v.span(),
                "[listen] max_recipients is 0",
                "at least 1 (RFC 5321 asks for 100)",
            );
        }
        s.max_recipients = *v.get_ref();
    }
    if let Some(v) = r.max_connections {
        if *v.get_ref() == 0 {
            cx.error(v.span(), "[listen] max_connections is 0", "at least 1");
        }
        s.max_connections = *v.get_ref();
    }
    if let Some(v) = r.threads {
        let n = *v.get_ref();
        if n == 0 || n > ListenSettings::MAX_THREADS {
            cx.error(
                v.span(),
                format!("[listen] threads is {n}"),
                &format!(
                    "1 to {} (default {})",
                    ListenSettings::MAX_THREADS,
                    ListenSettings::DEFAULT_THREADS
                ),
            );
        }
        s.threads = n;
    }
    if let Some(t) = r.idle_timeout {
        match parse_duration(t.get_ref()) {
            Ok(d) if !d.is_zero() => s.idle_timeout = d,
            Ok(_) => cx.error(t.span(), "[listen] idle_timeout is zero", DURATION_EXPECTED),
            Err(e) => cx.error(
                t.span(),
                format!("[listen] idle_timeout: {e}"),
                DURATION_EXPECTED,
            ),
        }
    }
    if let Some(pools) = r.pools {
        for (pat, pool) in pools {
            let p = pool.get_ref();
            let mut chars = p.chars();
            let parsed = match (chars.next(), chars.next()) {
                (Some(c), None) => Pool::from_char(c),
                _ => None,
            };
            match parsed {
                Some(pool) => s.pools.push((SenderPattern::new(pat.get_ref()), pool)),
                None => cx.error(
                    pool.span(),
                    format!(
                        "[listen.pools] {} = {} is not a pool",
                        crate::text::quoted_prefix_in(pat.get_ref(), 40, '"'),
                        crate::text::quoted_prefix_in(p, 10, '"')
                    ),
                    "a pool letter A-Z, or - for the default pool",
                ),
            }
        }
        // The most specific pattern (the longest) is tried first.
        s.pools.sort_by(|a, b| {
            b.0.as_str()
                .len()
                .cmp(&a.0.as_str().len())
                .then(a.0.as_str().cmp(b.0.as_str()))
        });
    }
    s
}
