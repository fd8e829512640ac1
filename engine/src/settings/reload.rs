//! What a reload of `smtpw.toml` changes (OPS-8): the relays' TLS and AUTH and `[cluster]
//! rate_limit` apply to the running engine; the listener, the admin endpoint, the spool and
//! `[cluster] node_timeout` only at the next start. Described one line each, never a secret.

use super::{RelayAuth, RelaySettings, Settings};

/// The difference between the settings in force and a reloaded file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingsChanges {
    /// What the running engine applies, one line each.
    pub applied: Vec<String>,
    /// What changed but takes effect at the next start only, one line each.
    pub at_restart: Vec<String>,
    /// `[relays]` changed: the workers start again with the new settings.
    pub relays: bool,
    /// `[cluster] rate_limit` changed.
    pub rate_limit: bool,
}

impl SettingsChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.applied.is_empty() && self.at_restart.is_empty()
    }
}

/// Compare the settings in force (`old`) with a reloaded file (`new`).
pub fn describe_changes(old: &Settings, new: &Settings) -> SettingsChanges {
    let mut c = SettingsChanges::default();
    let keys: std::collections::BTreeSet<&String> = old
        .relays
        .by_key
        .keys()
        .chain(new.relays.by_key.keys())
        .collect();
    let mut relay_lines = Vec::new();
    for k in keys {
        match (old.relays.by_key.get(k), new.relays.by_key.get(k)) {
            (Some(a), Some(b)) => relay_lines.extend(relay_diff(k, a, b)),
            (None, Some(b)) => relay_lines.push(format!("[relays.\"{k}\"] added ({})", summary(b))),
            (Some(_), None) => relay_lines.push(format!(
                "[relays.\"{k}\"] removed (the host gets [relays.\"*\"]'s settings)"
            )),
            (None, None) => {}
        }
    }
    relay_lines.extend(relay_diff("*", &old.relays.default, &new.relays.default));
    c.relays = !relay_lines.is_empty();
    for l in relay_lines {
        c.applied.push(format!(
            "{l}: the next connection each worker opens uses it"
        ));
    }
    if old.cluster.rate_limit != new.cluster.rate_limit {
        c.rate_limit = true;
        let show = |r: &Option<crate::config::RateLimits>| {
            r.as_ref()
                .map_or_else(|| "none".to_owned(), |r| format!("{r:?}"))
        };
        c.applied.push(format!(
            "[cluster] rate_limit {} -> {}",
            show(&old.cluster.rate_limit),
            show(&new.cluster.rate_limit)
        ));
    }
    let restart = |what: &str| format!("{what} changed, takes effect at restart");
    if old.listen != new.listen {
        c.at_restart.push(restart("[listen]"));
    }
    if old.admin != new.admin {
        c.at_restart.push(restart("[admin]"));
    }
    if old.spool != new.spool {
        c.at_restart.push(restart("[spool]"));
    }
    if old.cluster.node_timeout != new.cluster.node_timeout {
        c.at_restart.push(restart("[cluster] node_timeout"));
    }
    c
}

/// The settings a running engine holds after applying `new` over `old`: what it applies from
/// `new`, the rest (what takes effect at restart) as it was, so that the next reload still
/// says so.
pub fn applied(old: &Settings, new: &Settings) -> Settings {
    let mut s = old.clone();
    s.relays = new.relays.clone();
    s.cluster.rate_limit = new.cluster.rate_limit.clone();
    s
}

/// `tls T, user U` (or `no AUTH`): never a secret.
fn summary(s: &RelaySettings) -> String {
    format!(
        "tls {}, {}",
        s.tls.as_str(),
        s.auth.as_ref().map_or_else(
            || "no AUTH".to_owned(),
            |a| format!("user {}", a.username())
        )
    )
}

fn relay_diff(key: &str, a: &RelaySettings, b: &RelaySettings) -> Option<String> {
    let mut parts = Vec::new();
    if a.tls != b.tls {
        parts.push(format!("tls {} -> {}", a.tls.as_str(), b.tls.as_str()));
    }
    if a.ca_file != b.ca_file {
        parts.push("ca_file changed".to_owned());
    }
    if a.auth != b.auth {
        let user = |x: &Option<RelayAuth>| {
            x.as_ref()
                .map_or_else(|| "none".to_owned(), |a| a.username().to_owned())
        };
        if user(&a.auth) == user(&b.auth) {
            parts.push(format!(
                "credentials of user {} changed (password or token command)",
                user(&b.auth)
            ));
        } else {
            parts.push(format!(
                "credentials changed: user {} -> {}",
                user(&a.auth),
                user(&b.auth)
            ));
        }
    }
    if a.mechanism != b.mechanism {
        let m = |x: Option<super::AuthMechanism>| x.map_or("best offered", |m| m.as_str());
        parts.push(format!(
            "mechanism {} -> {}",
            m(a.mechanism),
            m(b.mechanism)
        ));
    }
    if a.allow_plaintext_auth != b.allow_plaintext_auth {
        parts.push(format!(
            "allow_plaintext_auth {} -> {}",
            a.allow_plaintext_auth, b.allow_plaintext_auth
        ));
    }
    (!parts.is_empty()).then(|| format!("[relays.\"{key}\"] {}", parts.join(", ")))
}
