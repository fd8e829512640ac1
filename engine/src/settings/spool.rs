//! `[spool]`: where the queue lives: a directory (the embedded SQLite spool) or a database URL.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{Cx, Secret};

/// Where the spool is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpoolSettings {
    /// A spool directory.
    pub path: Option<PathBuf>,
    /// A database URL (`postgres://...`); it may hold a password, so it is a secret: show it
    /// with [`SpoolSettings::url_for_display`].
    pub url: Option<Secret>,
    /// With a database spool: the node whose DIST_FORWARD shares out the jobs that `smtpw
    /// sendmail` and `smtpw submit` queue when their command line names none (`--via`).
    pub via: Option<String>,
}

impl SpoolSettings {
    /// The URL with any password replaced by `***`.
    pub fn url_for_display(&self) -> Option<String> {
        self.url.as_ref().map(|u| redact_url(u.expose()))
    }
}

/// `scheme://user:password@host/db` -> `scheme://user:***@host/db`.
pub fn redact_url(u: &str) -> String {
    let Some((scheme, rest)) = u.split_once("://") else {
        return u.to_owned();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(x) => x,
        None => return u.to_owned(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => u.to_owned(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpool {
    path: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    via: Option<Spanned<String>>,
}

pub(super) fn check(r: RawSpool, cx: &mut Cx<'_>) -> SpoolSettings {
    let mut s = SpoolSettings::default();
    if let (Some(_), Some(u)) = (&r.path, &r.url) {
        cx.error(u.span(), "[spool] gives both path and url", "one of them");
    }
    if let Some(p) = &r.path {
        if p.get_ref().is_empty() {
            cx.error(p.span(), "[spool] path is empty", "a directory");
        }
        s.path = Some(cx.resolve(p.get_ref()));
    }
    if let Some(u) = &r.url {
        let text = u.get_ref();
        if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
            cx.error(
                u.span(),
                format!(
                    "[spool] url {} is not a database URL smtpw knows",
                    crate::text::quoted_prefix_in(&redact_url(text), 60, '"')
                ),
                "postgres://USER@HOST/DB",
            );
        }
        s.url = Some(Secret::new(text.clone()));
    }
    if let Some(v) = &r.via {
        let name = v.get_ref();
        if r.url.is_none() {
            cx.error(
                v.span(),
                "[spool] via is for a database spool, and there is no [spool] url",
                "url = \"postgres://USER@HOST/DB\" beside it, or no via",
            );
        } else if name.trim().is_empty()
            || name.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            cx.error(
                v.span(),
                format!(
                    "[spool] via {} is not a node name",
                    crate::text::quoted_prefix_in(name, 60, '"')
                ),
                "a node's NODE= from its SITE.CFG",
            );
        } else {
            s.via = Some(name.clone());
        }
    }
    s
}
