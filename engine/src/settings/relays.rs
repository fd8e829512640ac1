//! `[relays."HOST"]`: how smtpw talks to each relay (TLS, AUTH), keyed by the host as written in
//! SITE.CFG (`"host"` for any port, `"host:port"` for one), with `"*"` for every other host
//! (TXN-10).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{Cx, Secret};
use crate::config::HostPort;

/// How a relay connection is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Never: plaintext only.
    None,
    /// STARTTLS when the relay offers it; a certificate that does not verify is logged and the
    /// session goes on encrypted; no STARTTLS offered means plaintext.
    #[default]
    Opportunistic,
    /// STARTTLS must be offered and the certificate must verify for the host name, else the
    /// host counts as unreachable; nothing is ever sent in clear.
    Required,
    /// TLS from the first byte (port 465).
    Implicit,
}

impl TlsMode {
    /// The name used in `smtpw.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::None => "none",
            TlsMode::Opportunistic => "opportunistic",
            TlsMode::Required => "required",
            TlsMode::Implicit => "implicit",
        }
    }

    /// Whether every byte of mail is encrypted in this mode.
    pub fn always_encrypted(self) -> bool {
        matches!(self, TlsMode::Required | TlsMode::Implicit)
    }
}

/// An SMTP AUTH mechanism smtpw can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum AuthMechanism {
    #[serde(rename = "PLAIN")]
    /// AUTH PLAIN (RFC 4616).
    Plain,
    #[serde(rename = "LOGIN")]
    /// AUTH LOGIN.
    Login,
    #[serde(rename = "XOAUTH2")]
    /// AUTH XOAUTH2 (an OAuth 2.0 bearer token).
    Xoauth2,
}

impl AuthMechanism {
    /// The mechanism's name in SMTP and in `smtpw.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMechanism::Plain => "PLAIN",
            AuthMechanism::Login => "LOGIN",
            AuthMechanism::Xoauth2 => "XOAUTH2",
        }
    }
}

/// Credentials for a relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayAuth {
    /// PLAIN or LOGIN.
    Password {
        /// The user name.
        username: String,
        /// The password (never shown).
        password: Secret,
    },
    /// XOAUTH2: the token is what this command prints on its standard output.
    OAuth2 {
        /// The user name.
        username: String,
        /// The command that prints a token.
        token_command: String,
    },
}

impl RelayAuth {
    /// The user name, whatever the kind.
    pub fn username(&self) -> &str {
        match self {
            RelayAuth::Password { username, .. } | RelayAuth::OAuth2 { username, .. } => username,
        }
    }
}

/// One relay's settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RelaySettings {
    /// Whether and how TLS is used.
    pub tls: TlsMode,
    /// Extra trust anchors (PEM) besides the system's.
    pub ca_file: Option<PathBuf>,
    /// The credentials, if the relay needs AUTH.
    pub auth: Option<RelayAuth>,
    /// `None`: the best mechanism the relay offers that the credentials allow.
    pub mechanism: Option<AuthMechanism>,
    /// AUTH over a connection that may be plaintext, explicitly allowed.
    pub allow_plaintext_auth: bool,
}

/// Every relay's settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Relays {
    /// Keyed by `host` or `host:port`, host in lower case.
    pub by_key: BTreeMap<String, RelaySettings>,
    /// `"*"`: hosts not listed (defaults when absent).
    pub default: RelaySettings,
}

impl Relays {
    /// The settings for `relay`: its `host:port` entry, else its host's, else `"*"`'s.
    pub fn for_host(&self, relay: &HostPort) -> &RelaySettings {
        let host = relay.host.to_ascii_lowercase();
        self.by_key
            .get(&format!("{host}:{}", relay.port))
            .or_else(|| self.by_key.get(&host))
            .unwrap_or(&self.default)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRelay {
    tls: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    oauth2_token_command: Option<Spanned<String>>,
    mechanism: Option<Spanned<String>>,
    allow_plaintext_auth: Option<bool>,
}

const TLS_EXPECTED: &str = "\"none\", \"opportunistic\", \"required\" or \"implicit\"";
const MECH_EXPECTED: &str = "\"PLAIN\", \"LOGIN\" or \"XOAUTH2\"";

pub(super) fn check(raw: BTreeMap<Spanned<String>, RawRelay>, cx: &mut Cx<'_>) -> Relays {
    let mut out = Relays::default();
    for (key, r) in raw {
        let span = key.span();
        let name = key.into_inner();
        let Some(norm) = normalise_key(&name) else {
            cx.error(
                span,
                format!(
                    "[relays.{}] is not a relay",
                    crate::text::quoted_prefix_in(&name, 40, '"')
                ),
                "\"*\", a host as written in SITE.CFG, or host:port",
            );
            continue;
        };
        let settings = check_one(&name, r, cx);
        if norm == "*" {
            out.default = settings;
        } else if out.by_key.insert(norm.clone(), settings).is_some() {
            cx.error(
                span,
                format!("[relays.\"{norm}\"] is given twice (host names are not case-sensitive)"),
                "each relay once",
            );
        }
    }
    out
}

/// `*`, `host` or `host:port`, host in lower case; `None` when it is none of these.
fn normalise_key(k: &str) -> Option<String> {
    if k == "*" {
        return Some(k.to_owned());
    }
    let (host, port) = match k.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (k, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    (host_ok && port_ok).then(|| k.to_ascii_lowercase())
}

fn check_one(name: &str, r: RawRelay, cx: &mut Cx<'_>) -> RelaySettings {
    let table = format!("[relays.\"{}\"]", crate::text::escape_controls(name));
    let mut s = RelaySettings::default();
    if let Some(t) = &r.tls {
        s.tls = match t.get_ref().as_str() {
            "none" => TlsMode::None,
            "opportunistic" => TlsMode::Opportunistic,
            "required" => TlsMode::Required,
            "implicit" => TlsMode::Implicit,
            other => {
                cx.error(
                    t.span(),
                    format!(
                        "{table} tls = {} is not a TLS mode",
                        crate::text::quoted_prefix_in(other, 20, '"')
                    ),
                    TLS_EXPECTED,
                );
                TlsMode::default()
            }
        };
    }
    if let Some(f) = &r.ca_file {
        s.ca_file = cx.existing_file(f, &format!("{table} ca_file"));
    }
    if let Some(m) = &r.mechanism {
        s.mechanism = match m.get_ref().to_ascii_uppercase().as_str() {
            "PLAIN" => Some(AuthMechanism::Plain),
            "LOGIN" => Some(AuthMechanism::Login),
            "XOAUTH2" => Some(AuthMechanism::Xoauth2),
            _ => {
                cx.error(
                    m.span(),
                    format!(
                        "{table} mechanism = {} is not an AUTH mechanism smtpw speaks",
                        crate::text::quoted_prefix_in(m.get_ref(), 20, '"')
                    ),
                    MECH_EXPECTED,
                );
                None
            }
        };
    }
    s.allow_plaintext_auth = r.allow_plaintext_auth.unwrap_or(false);
    let secrets: Vec<&Spanned<String>> = [&r.password, &r.password_file, &r.oauth2_token_command]
        .into_iter()
        .flatten()
        .collect();
    if secrets.len() > 1 {
        cx.error(
            secrets[1].span(),
            format!(
                "{table} gives more than one of password, password_file and oauth2_token_command"
            ),
            "exactly one of them",
        );
    }
    match (&r.username, secrets.first()) {
        (None, None) => {}
        (None, Some(sec)) => cx.error(
            sec.span(),
            format!("{table} has a secret but no username"),
            "username = \"...\" beside it",
        ),
        (Some(u), None) => cx.error(
            u.span(),
            format!(
                "{table} has a username but no password, password_file or oauth2_token_command"
            ),
            "one of them beside the username",
        ),
        (Some(u), Some(_)) => {
            let username = u.get_ref().clone();
            if username.is_empty() || username.chars().any(char::is_control) {
                cx.error(
                    u.span(),
                    format!("{table} username is empty or holds control characters"),
                    "the login name the relay expects",
                );
            }
            s.auth = if let Some(cmd) = &r.oauth2_token_command {
                if cmd.get_ref().trim().is_empty() {
                    cx.error(
                        cmd.span(),
                        format!("{table} oauth2_token_command is empty"),
                        "a command that prints an OAuth 2 access token",
                    );
                }
                Some(RelayAuth::OAuth2 {
                    username,
                    token_command: cmd.get_ref().clone(),
                })
            } else if let Some(p) = &r.password {
                if p.get_ref().is_empty() {
                    cx.error(
                        p.span(),
                        format!("{table} password is empty"),
                        "the password",
                    );
                }
                Some(RelayAuth::Password {
                    username,
                    password: Secret::new(p.get_ref().clone()),
                })
            } else if let Some(f) = &r.password_file {
                cx.secret_file(f, &format!("{table} password_file"))
                    .map(|password| RelayAuth::Password { username, password })
            } else {
                None
            };
        }
    }
    // The mechanism must fit the credentials.
    match (&s.mechanism, &s.auth, &r.mechanism) {
        (Some(AuthMechanism::Xoauth2), Some(RelayAuth::Password { .. }), Some(m)) => cx.error(
            m.span(),
            format!("{table} mechanism = \"XOAUTH2\" needs oauth2_token_command, not a password"),
            "\"PLAIN\" or \"LOGIN\" with a password",
        ),
        (
            Some(AuthMechanism::Plain | AuthMechanism::Login),
            Some(RelayAuth::OAuth2 { .. }),
            Some(m),
        ) => cx.error(
            m.span(),
            format!(
                "{table} mechanism = \"{}\" needs a password, not oauth2_token_command",
                s.mechanism.map_or("", AuthMechanism::as_str)
            ),
            "\"XOAUTH2\" with oauth2_token_command",
        ),
        (Some(_), None, Some(m)) => cx.error(
            m.span(),
            format!("{table} names a mechanism but no credentials"),
            "username and a password or oauth2_token_command",
        ),
        _ => {}
    }
    if s.auth.is_some() && s.tls == TlsMode::None && !s.allow_plaintext_auth {
        let at = r
            .tls
            .as_ref()
            .map(Spanned::span)
            .or_else(|| r.username.as_ref().map(Spanned::span))
            .unwrap_or(0..0);
        cx.error(
            at,
            format!(
                "{table} sends AUTH credentials with tls = \"none\": they would cross the network \
                 in clear"
            ),
            "tls = \"required\" or \"implicit\" (or allow_plaintext_auth = true to accept it)",
        );
    }
    s
}
