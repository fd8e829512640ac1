//! IIS SMTP service limits and defaults (IIS-1 to IIS-6, IIS-1).
//!
//! [`Profile::iis`] is the IIS 6.0 (Windows Server 2003) service with its factory settings;
//! [`Profile::xp`] is the Windows XP Professional service, whose only difference that matters is
//! the fixed limit of 10 inbound connections.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// What the server does when a message crosses the size limit during DATA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OversizeData {
    /// Keep reading, discard the rest, reply `552 5.3.4 ...` after the final dot (default).
    #[default]
    AfterDot,
    /// Reply `552 4.3.1 ...` at once and close the connection mid-data (seen from a Microsoft
    /// server, IIS-2 / M14).
    CloseMidData,
}

/// What the server does with a connection past the connection cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OverCap {
    /// Send `421 4.3.2 Service not available, closing transmission channel`, then close (default).
    #[default]
    Reply421,
    /// Close without a word.
    SilentClose,
}

/// The limits of one IIS SMTP virtual server. Every field has the IIS 6.0 default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Profile {
    /// Profile name, informative ("iis", "xp", ...).
    pub name: String,
    /// Banner version, e.g. `6.0.3790.3959`.
    pub version: String,
    /// Recipients per message; `None` = no limit. IIS: 100.
    pub max_recipients: Option<u32>,
    /// The code for the RCPT past the limit: 552 (IIS, default) or 452 (RFC 5321).
    pub too_many_code: u16,
    /// Message size limit in KB (1 KB = 1024 bytes); `None` = no limit (bare `SIZE`). IIS: 2048.
    pub max_message_kb: Option<u64>,
    /// What to do when DATA crosses the message size limit.
    pub oversize_data: OversizeData,
    /// Session size limit in KB: total message bytes per connection; `None` = off. IIS: 10240.
    pub max_session_kb: Option<u64>,
    /// Idle time-out in seconds (no command, or no data, for this long: close without reply).
    pub idle_timeout_secs: u64,
    /// Concurrent inbound connections; `None` = unlimited (IIS), XP: 10.
    pub max_connections: Option<u32>,
    /// What to do past the connection cap.
    pub over_cap: OverCap,
    /// Messages per connection (inbound); `None` = off (IIS applies its limit to outbound mail
    /// only, IIS-2). When set, the MAIL after the n-th message gets 421 and the close.
    pub max_messages_per_connection: Option<u32>,
    /// Client IPs or subnets allowed to relay (`127.0.0.1`, `10.0.0.0/8`, `::1/128`, `*` = all).
    pub relay_allow: Vec<String>,
    /// Recipient domains accepted from any client (not relaying). Empty by default.
    pub local_domains: Vec<String>,
    /// EHLO keywords in order; `SIZE` is written `SIZE <bytes>` when a size limit is set. The
    /// last line, `250 OK`, is always added.
    pub ehlo_keywords: Vec<String>,
}

impl Default for Profile {
    fn default() -> Self {
        Self::iis()
    }
}

impl Profile {
    /// IIS 6.0 SMTP service, factory settings.
    pub fn iis() -> Self {
        Self {
            name: "iis".into(),
            version: "6.0.3790.3959".into(),
            max_recipients: Some(100),
            too_many_code: 552,
            max_message_kb: Some(2048),
            oversize_data: OversizeData::AfterDot,
            max_session_kb: Some(10240),
            idle_timeout_secs: 600,
            max_connections: None,
            over_cap: OverCap::Reply421,
            max_messages_per_connection: None,
            relay_allow: vec!["127.0.0.0/8".into(), "::1/128".into()],
            local_domains: Vec::new(),
            ehlo_keywords: [
                "TURN",
                "ATRN",
                "SIZE",
                "ETRN",
                "PIPELINING",
                "DSN",
                "ENHANCEDSTATUSCODES",
                "8bitmime",
                "BINARYMIME",
                "CHUNKING",
                "VRFY",
            ]
            .iter()
            .map(|s| (*s).to_string())
            .collect(),
        }
    }

    /// Windows XP Professional's SMTP service: as IIS, with 10 inbound connections at most.
    pub fn xp() -> Self {
        Self {
            name: "xp".into(),
            version: "6.0.2600.5512".into(),
            max_connections: Some(10),
            ..Self::iis()
        }
    }

    /// A profile by name (`iis` or `xp`, case-insensitive).
    pub fn by_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "iis" | "iis6" => Some(Self::iis()),
            "xp" => Some(Self::xp()),
            _ => None,
        }
    }

    /// Read a zero limit as "no limit" (`Some(0)` becomes `None`), as the command line does.
    pub fn normalize(&mut self) {
        fn z32(v: &mut Option<u32>) {
            if *v == Some(0) {
                *v = None;
            }
        }
        fn z64(v: &mut Option<u64>) {
            if *v == Some(0) {
                *v = None;
            }
        }
        z32(&mut self.max_recipients);
        z32(&mut self.max_connections);
        z32(&mut self.max_messages_per_connection);
        z64(&mut self.max_message_kb);
        z64(&mut self.max_session_kb);
    }

    /// The message size limit in bytes.
    pub fn max_message_bytes(&self) -> Option<u64> {
        self.max_message_kb.map(|k| k.saturating_mul(1024))
    }

    /// The session size limit in bytes.
    pub fn max_session_bytes(&self) -> Option<u64> {
        self.max_session_kb.map(|k| k.saturating_mul(1024))
    }
}

/// An IP network (address and prefix length), parsed from `a.b.c.d`, `a.b.c.d/n`, `::1`, `x::/n`
/// or `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
    any: bool,
}

impl IpNet {
    /// Parse one allow-list entry.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if s == "*" {
            return Some(Self {
                addr: IpAddr::from([0, 0, 0, 0]),
                prefix: 0,
                any: true,
            });
        }
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Self {
            addr,
            prefix,
            any: false,
        })
    }

    /// Whether `ip` lies in this network (IPv4-mapped IPv6 addresses match IPv4 networks).
    pub fn contains(&self, ip: IpAddr) -> bool {
        if self.any {
            return true;
        }
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        let n = IpNet::parse("127.0.0.0/8").expect("valid");
        assert!(n.contains("127.1.2.3".parse().expect("ip")));
        assert!(!n.contains("10.0.0.1".parse().expect("ip")));
        assert!(n.contains("::ffff:127.0.0.1".parse().expect("ip")));
        let one = IpNet::parse("192.168.1.7").expect("valid");
        assert!(one.contains("192.168.1.7".parse().expect("ip")));
        assert!(!one.contains("192.168.1.8".parse().expect("ip")));
        assert!(IpNet::parse("0.0.0.0/0")
            .expect("valid")
            .contains("8.8.8.8".parse().expect("ip")));
        assert!(IpNet::parse("*")
            .expect("valid")
            .contains("::2".parse().expect("ip")));
        assert!(IpNet::parse("10.0.0.0/33").is_none());
        assert!(IpNet::parse("nope").is_none());
    }
}
