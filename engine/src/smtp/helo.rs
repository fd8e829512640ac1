//! The name the client gives with EHLO / HELO.
//!
//! Many relays refuse a greeting that is not a fully qualified domain name (`localhost`, a bare
//! host name). The name is, in this order: the operator's override (`smtpw run --helo-name`),
//! the site's `NODE=` from SITE.CFG, the host's fully qualified name, the bare host name; and
//! `localhost` only when nothing else is known, with a warning. Every name is checked: a domain
//! (letters, digits and hyphens in dot-separated labels) or an address literal (`[192.0.2.1]`,
//! `[IPv6:2001:db8::1]`), as RFC 5321 allows in EHLO.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// The longest domain name (RFC 1035: 255 octets on the wire, 253 as text).
const MAX_DOMAIN: usize = 253;
/// The longest label of a domain.
const MAX_LABEL: usize = 63;

/// Why a name cannot be sent with EHLO.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeloNameError {
    #[error("the name is empty; expected a domain such as lists.example.org or an address literal such as [192.0.2.1]")]
    /// An empty name.
    Empty,
    #[error("the name is {0} characters long; expected at most 253")]
    /// A name longer than 253 characters.
    TooLong(usize),
    #[error("character {ch:?} at position {pos} is not allowed; expected letters, digits, hyphens and dots (a domain) or an address literal in brackets")]
    /// A character not allowed in a domain.
    BadChar {
        /// The character.
        ch: char,
        /// Its position, 1-based, in characters.
        pos: usize,
    },
    #[error("label {label:?} {why}; expected dot-separated labels of 1 to 63 letters, digits or hyphens, neither starting nor ending with a hyphen")]
    /// A label that breaks the domain syntax.
    BadLabel {
        /// The label.
        label: String,
        /// What is wrong with it.
        why: &'static str,
    },
    #[error("{0:?} is not an address literal; expected [IPv4 address] or [IPv6:IPv6 address]")]
    /// Brackets around something that is not an address.
    BadLiteral(String),
}

/// Check that `name` can be sent with EHLO: a domain or an address literal.
pub fn validate(name: &str) -> Result<(), HeloNameError> {
    if name.is_empty() {
        return Err(HeloNameError::Empty);
    }
    if let Some(inner) = name.strip_prefix('[') {
        let ok = inner.strip_suffix(']').is_some_and(|lit| {
            match lit.get(..5).filter(|p| p.eq_ignore_ascii_case("IPv6:")) {
                Some(_) => lit[5..].parse::<Ipv6Addr>().is_ok(),
                None => lit.parse::<Ipv4Addr>().is_ok(),
            }
        });
        return if ok {
            Ok(())
        } else {
            Err(HeloNameError::BadLiteral(shorten(name)))
        };
    }
    let len = name.chars().count();
    if len > MAX_DOMAIN {
        return Err(HeloNameError::TooLong(len));
    }
    if let Some((pos, ch)) = name
        .chars()
        .enumerate()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        return Err(HeloNameError::BadChar { ch, pos: pos + 1 });
    }
    for label in name.split('.') {
        let why = if label.is_empty() {
            Some("is empty (two dots in a row, or a dot at either end)")
        } else if label.len() > MAX_LABEL {
            Some("is longer than 63 characters")
        } else if label.starts_with('-') || label.ends_with('-') {
            Some("starts or ends with a hyphen")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(HeloNameError::BadLabel {
                label: shorten(label),
                why,
            });
        }
    }
    Ok(())
}

/// `--helo-name`'s value parser: the name, checked.
pub fn parse_helo_name(name: &str) -> Result<String, HeloNameError> {
    validate(name).map(|()| name.to_owned())
}

/// At most 80 characters of `s` for an error message.
fn shorten(s: &str) -> String {
    if s.chars().count() <= 80 {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(77).collect();
        t.push_str("...");
        t
    }
}

/// What the system says about this host's names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostNames {
    /// The kernel's host name, as set (`vm`, or `mail.example.org`).
    pub hostname: Option<String>,
    /// The fully qualified name, when one could be found.
    pub fqdn: Option<String>,
}

impl HostNames {
    /// The host's names from `/proc/sys/kernel/hostname` (else `/etc/hostname`, else the
    /// `HOSTNAME` / `COMPUTERNAME` variables), completed to a fully qualified name through
    /// `/etc/hosts` and `/etc/resolv.conf` as the system's resolver would for this host.
    pub fn from_system() -> Self {
        let read = |p: &str| std::fs::read_to_string(Path::new(p)).ok();
        let hostname = read("/proc/sys/kernel/hostname")
            .or_else(|| read("/etc/hostname"))
            .or_else(|| std::env::var("HOSTNAME").ok())
            .or_else(|| std::env::var("COMPUTERNAME").ok())
            .unwrap_or_default();
        Self::from_texts(
            &hostname,
            read("/etc/hosts").as_deref(),
            read("/etc/resolv.conf").as_deref(),
        )
    }

    /// The same from the texts of those files: a host name with a dot is taken as it is; else
    /// the canonical (first) name of the `/etc/hosts` line that lists it, or a dotted alias of
    /// that line starting with it; else the host name in resolv.conf's `domain` (else the first
    /// `search` domain).
    pub fn from_texts(hostname: &str, hosts: Option<&str>, resolv: Option<&str>) -> Self {
        let host = hostname.trim();
        if host.is_empty() || validate(host).is_err() {
            return Self::default();
        }
        let fq = |n: &str| n.contains('.') && validate(n).is_ok();
        let from_hosts = || {
            hosts?.lines().find_map(|line| {
                let line = line.split('#').next().unwrap_or("");
                let names: Vec<&str> = line.split_whitespace().skip(1).collect();
                if !names.iter().any(|n| n.eq_ignore_ascii_case(host)) {
                    return None;
                }
                let prefix = format!("{}.", host.to_ascii_lowercase());
                names
                    .first()
                    .filter(|n| fq(n))
                    .or_else(|| {
                        names
                            .iter()
                            .find(|n| fq(n) && n.to_ascii_lowercase().starts_with(&prefix))
                    })
                    .map(|n| (*n).to_owned())
            })
        };
        let from_resolv = || {
            let r = resolv?;
            let first = |key: &str| {
                r.lines().find_map(|l| {
                    let mut w = l.split_whitespace();
                    (w.next() == Some(key)).then(|| w.next()).flatten()
                })
            };
            let domain = first("domain").or_else(|| first("search"))?;
            let name = format!("{host}.{}", domain.trim_end_matches('.'));
            fq(&name).then_some(name)
        };
        let fqdn = if fq(host) {
            Some(host.to_owned())
        } else {
            from_hosts().or_else(from_resolv)
        };
        Self {
            hostname: Some(host.to_owned()),
            fqdn,
        }
    }
}

/// Where the EHLO name came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeloSource {
    /// `smtpw run --helo-name`.
    Override,
    /// SITE.CFG's `NODE=`.
    Node,
    /// The host's fully qualified name.
    Fqdn,
    /// The bare host name (not fully qualified).
    Hostname,
    /// Nothing known: `localhost`.
    Localhost,
}

impl fmt::Display for HeloSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HeloSource::Override => "--helo-name",
            HeloSource::Node => "NODE in SITE.CFG",
            HeloSource::Fqdn => "the host's fully qualified name",
            HeloSource::Hostname => "the host name",
            HeloSource::Localhost => "no name known",
        })
    }
}

/// The EHLO name chosen, where it came from, and what the operator should hear about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeloChoice {
    /// The name to send.
    pub name: String,
    /// Where it came from.
    pub source: HeloSource,
    /// What the operator should hear about it (logged at start).
    pub warnings: Vec<String>,
}

/// Choose the EHLO name: `override_` (refused when invalid), else a valid `node`, else the
/// host's fully qualified name, else its bare name, else `localhost`; the last two with a
/// warning, as is a `NODE=` that cannot be used.
pub fn choose(
    override_: Option<&str>,
    node: Option<&str>,
    host: &HostNames,
) -> Result<HeloChoice, HeloNameError> {
    let pick = |name: &str, source, warnings| HeloChoice {
        name: name.to_owned(),
        source,
        warnings,
    };
    if let Some(name) = override_ {
        validate(name)?;
        return Ok(pick(name, HeloSource::Override, Vec::new()));
    }
    let mut warnings = Vec::new();
    if let Some(node) = node.map(str::trim).filter(|n| !n.is_empty()) {
        match validate(node) {
            Ok(()) => return Ok(pick(node, HeloSource::Node, warnings)),
            Err(e) => warnings.push(format!(
                "NODE={} cannot be sent with EHLO ({e}); using the host's name instead",
                shorten(node)
            )),
        }
    }
    if let Some(fqdn) = &host.fqdn {
        return Ok(pick(fqdn, HeloSource::Fqdn, warnings));
    }
    let advice = "many relays refuse a name that is not fully qualified; set NODE= in SITE.CFG \
                  or give --helo-name";
    if let Some(h) = &host.hostname {
        warnings.push(format!(
            "no fully qualified name found for this host; greeting relays with EHLO {h} \
             ({advice})"
        ));
        return Ok(pick(h, HeloSource::Hostname, warnings));
    }
    warnings.push(format!(
        "no name found for this host; greeting relays with EHLO localhost ({advice})"
    ));
    Ok(pick("localhost", HeloSource::Localhost, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn domains_and_address_literals_are_accepted() {
        for ok in [
            "lists.example.org",
            "LISTSERV.EXAMPLE.ORG",
            "mail-1.example.co.uk",
            "localhost",
            "a",
            "[192.0.2.1]",
            "[IPv6:2001:db8::1]",
            "[ipv6:::1]",
        ] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("lists example.org", "' ' at position 6"),
            ("lists.example.org\r\nRCPT", "'\\r' at position 18"),
            ("tab\tname", "'\\t'"),
            ("under_score.example", "'_'"),
            ("a..b", "two dots in a row"),
            ("example.org.", "a dot at either end"),
            ("-lead.example", "hyphen"),
            ("trail-.example", "hyphen"),
            ("[192.0.2.300]", "address literal"),
            ("[2001:db8::1]", "address literal"),
            ("[192.0.2.1", "address literal"),
            ("exämple.org", "'ä'"),
        ];
        for (bad, why) in cases {
            let e = validate(bad).expect_err(bad).to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
            assert!(e.contains("expected"), "{bad:?}: {e}");
        }
        let long_label = format!("{}.org", "a".repeat(64));
        assert!(validate(&long_label)
            .expect_err("64")
            .to_string()
            .contains("longer than 63"));
        let long = vec!["abcdefghi"; 30].join(".");
        assert_eq!(validate(&long), Err(HeloNameError::TooLong(299)));
    }

    fn host(hostname: Option<&str>, fqdn: Option<&str>) -> HostNames {
        HostNames {
            hostname: hostname.map(str::to_owned),
            fqdn: fqdn.map(str::to_owned),
        }
    }

    #[test]
    fn the_override_wins_over_node_and_node_over_the_host() {
        let h = host(Some("vm"), Some("vm.example.net"));
        let c = choose(
            Some("relay-client.example.com"),
            Some("LISTS.EXAMPLE.ORG"),
            &h,
        )
        .unwrap();
        assert_eq!(
            (c.name.as_str(), c.source),
            ("relay-client.example.com", HeloSource::Override)
        );
        let c = choose(None, Some("LISTS.EXAMPLE.ORG"), &h).unwrap();
        assert_eq!(
            (c.name.as_str(), c.source),
            ("LISTS.EXAMPLE.ORG", HeloSource::Node)
        );
        assert!(c.warnings.is_empty());
        let c = choose(None, None, &h).unwrap();
        assert_eq!(
            (c.name.as_str(), c.source),
            ("vm.example.net", HeloSource::Fqdn)
        );
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn an_invalid_override_is_an_error_an_unusable_node_a_warning() {
        let h = host(Some("vm"), Some("vm.example.net"));
        assert!(matches!(
            choose(Some("bad name"), Some("LISTS.EXAMPLE.ORG"), &h),
            Err(HeloNameError::BadChar { ch: ' ', pos: 4 })
        ));
        let c = choose(None, Some("MY NODE"), &h).unwrap();
        assert_eq!(c.name, "vm.example.net");
        assert_eq!(c.warnings.len(), 1);
        assert!(
            c.warnings[0].starts_with("NODE=MY NODE cannot be sent"),
            "{c:?}"
        );
    }

    #[test]
    fn without_a_fully_qualified_name_the_host_name_then_localhost_with_a_warning() {
        let c = choose(None, None, &host(Some("vm"), None)).unwrap();
        assert_eq!((c.name.as_str(), c.source), ("vm", HeloSource::Hostname));
        assert!(c.warnings[0].contains("--helo-name"), "{c:?}");
        let c = choose(None, Some("  "), &HostNames::default()).unwrap();
        assert_eq!(
            (c.name.as_str(), c.source),
            ("localhost", HeloSource::Localhost)
        );
        assert!(c.warnings[0].contains("NODE="), "{c:?}");
    }

    #[test]
    fn the_fully_qualified_name_from_hostname_hosts_and_resolv_conf() {
        // A dotted host name is taken as it is.
        let h = HostNames::from_texts("mail.example.org\n", None, None);
        assert_eq!(h.fqdn.as_deref(), Some("mail.example.org"));
        // The canonical name of the hosts line that lists the host.
        let hosts = "127.0.0.1 localhost\n# 10.0.0.9 vm.wrong.example vm\n\
                     192.0.2.7\tvm.example.net vm  # this host\n";
        let h = HostNames::from_texts("vm", Some(hosts), None);
        assert_eq!(h.hostname.as_deref(), Some("vm"));
        assert_eq!(h.fqdn.as_deref(), Some("vm.example.net"));
        // A dotted alias when the canonical name is the bare one.
        let h = HostNames::from_texts("vm", Some("192.0.2.7 vm vm.example.net\n"), None);
        assert_eq!(h.fqdn.as_deref(), Some("vm.example.net"));
        // resolv.conf's domain, else its first search domain.
        let resolv = "nameserver 192.0.2.53\nsearch b.example c.example\ndomain a.example.\n";
        let h = HostNames::from_texts("vm", Some("127.0.0.1 vm\n"), Some(resolv));
        assert_eq!(h.fqdn.as_deref(), Some("vm.a.example"));
        let h = HostNames::from_texts("vm", None, Some("search b.example c.example\n"));
        assert_eq!(h.fqdn.as_deref(), Some("vm.b.example"));
        // Nothing to go on (this build machine: hosts lists `vm` alone, no domain).
        let h = HostNames::from_texts("vm", Some("127.0.0.1 vm\n"), Some("nameserver 1\n"));
        assert_eq!(h, host(Some("vm"), None));
        // An unusable host name is no name.
        assert_eq!(
            HostNames::from_texts("bad name", None, None),
            HostNames::default()
        );
        assert_eq!(HostNames::from_texts("", None, None), HostNames::default());
    }

    proptest! {
        #[test]
        fn generated_domains_pass_and_any_space_or_control_character_fails(
            labels in proptest::collection::vec("[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?", 1..6),
            at in 0usize..200,
            bad in prop_oneof![Just(' '), Just('\r'), Just('\n'), Just('\t'), Just('\0'), Just('\u{7f}')],
        ) {
            let name = labels.join(".");
            prop_assert_eq!(validate(&name), Ok(()));
            let mut broken: Vec<char> = name.chars().collect();
            let i = at % (broken.len() + 1);
            broken.insert(i, bad);
            let broken: String = broken.into_iter().collect();
            prop_assert!(validate(&broken).is_err());
            prop_assert!(choose(Some(&broken), None, &HostNames::default()).is_err());
        }
    }
}
