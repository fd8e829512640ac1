//! `smtpw.toml`: everything smtpw adds to a LISTSERV site (CFG-7). SITE.CFG stays exactly
//! LISTSERV's; this file holds the relays' TLS and AUTH, the SMTP listener, the admin endpoint,
//! the spool's location and the cluster.
//!
//! ```toml
//! [relays."relay.example.org"]       # a host as written in SITE.CFG (any port), or "host:port"
//! tls = "required"                   # "none" | "opportunistic" (default) | "required" | "implicit"
//! ca_file = "relay-ca.pem"           # extra trust anchors (PEM); relative to this file
//! username = "lists"
//! password_file = "relay.pass"       # or password = "..."; or oauth2_token_command = "..."
//! mechanism = "LOGIN"                # "PLAIN" | "LOGIN" | "XOAUTH2"; default: the best offered
//!
//! [relays."*"]                       # hosts not listed
//! tls = "opportunistic"
//!
//! [listen]
//! addresses = ["127.0.0.1:2525"]
//! allow = ["127.0.0.0/8", "::1/128"]
//! max_message_bytes = 52428800
//! max_recipients = 100000
//! [listen.pools]
//! "owner-bulk-*@lists.example.org" = "B"
//!
//! [admin]
//! address = "127.0.0.1:8025"
//! token_file = "admin.token"
//!
//! [spool]
//! path = "/var/spool/smtpw"          # or url = "postgres://smtpw@db.example.org/smtpw"
//! # via = "N1.EXAMPLE.ORG"           # with url: the node sendmail/submit queue through
//!
//! [cluster]
//! node_timeout = "60s"
//! rate_limit = "12Mbps AB:1.5Mbps"
//! ```
//!
//! Reading is strict: an unknown key, a wrong type, a missing file it names, AUTH over a
//! connection that is never encrypted (unless `allow_plaintext_auth = true`) are errors, all
//! reported at once as `FILE:LINE:COLUMN: error: ...`; a secret file others can read is a
//! warning. Secrets are held as [`Secret`], which never prints its value.

mod admin;
mod cluster;
mod duration;
mod listen;
mod relays;
mod reload;
mod secret;
mod spool;

use std::fmt;
use std::path::{Path, PathBuf};

pub use admin::AdminSettings;
pub use cluster::ClusterSettings;
pub use duration::{format_duration, parse_duration, DURATION_EXPECTED};
pub use listen::{IpNet, ListenSettings, SenderPattern};
pub use relays::{AuthMechanism, RelayAuth, RelaySettings, Relays, TlsMode};
pub use reload::{applied, describe_changes, SettingsChanges};
pub use secret::Secret;
pub use spool::{redact_url, SpoolSettings};

use crate::config::{Diagnostic, Severity};

/// The settings file, read and checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// The file they were read from (`None`: the defaults, no file).
    pub path: Option<PathBuf>,
    /// `[relays]`: each relay's TLS and AUTH.
    pub relays: Relays,
    /// `[listen]`: the SMTP listener, if configured.
    pub listen: Option<ListenSettings>,
    /// `[admin]`: the admin endpoint, if configured.
    pub admin: Option<AdminSettings>,
    /// `[spool]`.
    pub spool: SpoolSettings,
    /// `[cluster]`.
    pub cluster: ClusterSettings,
    /// What is allowed but worth a look (a secret file others can read).
    pub warnings: Vec<Diagnostic>,
}

/// Why a settings file was refused: every error found, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SettingsError {
    /// Every error found, with its place, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Settings files are small; a larger one is refused rather than read.
pub const MAX_SETTINGS_BYTES: u64 = 1024 * 1024;

impl Settings {
    /// Read and check `path`. Relative paths inside it are relative to its directory.
    pub fn load(path: &Path) -> Result<Settings, SettingsError> {
        let name = path.display().to_string();
        let fail = |message: String, expected: Option<&str>| SettingsError {
            diagnostics: vec![Diagnostic {
                file: name.clone(),
                line: 1,
                column: 1,
                severity: Severity::Error,
                message,
                expected: expected.map(str::to_owned),
            }],
        };
        let meta = std::fs::metadata(path)
            .map_err(|e| fail(format!("cannot read the settings file: {e}"), None))?;
        if meta.len() > MAX_SETTINGS_BYTES {
            return Err(fail(
                format!("the settings file has {} bytes", meta.len()),
                Some("at most 1 MiB"),
            ));
        }
        let bytes = std::fs::read(path)
            .map_err(|e| fail(format!("cannot read the settings file: {e}"), None))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            fail(
                format!(
                    "the settings file is not UTF-8 (byte {} is not)",
                    e.utf8_error().valid_up_to()
                ),
                Some("a UTF-8 TOML file"),
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut s = Settings::parse(&text, &name, base)?;
        s.path = Some(path.to_path_buf());
        Ok(s)
    }

    /// Check `text` (the contents of the file called `name`, whose relative paths are relative
    /// to `base`).
    pub fn parse(text: &str, name: &str, base: &Path) -> Result<Settings, SettingsError> {
        let mut cx = Cx {
            file: name,
            text,
            base,
            diags: Vec::new(),
        };
        let raw: Raw = match toml::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                let (line, column) = e.span().map_or((1, 1), |s| cx.line_col(s.start));
                return Err(SettingsError {
                    diagnostics: vec![Diagnostic {
                        file: name.to_owned(),
                        line,
                        column,
                        severity: Severity::Error,
                        message: e.message().trim().to_owned(),
                        expected: None,
                    }],
                });
            }
        };
        let relays = relays::check(raw.relays, &mut cx);
        let listen = raw.listen.map(|l| listen::check(l, &mut cx));
        let admin = raw.admin.map(|a| admin::check(a, &mut cx));
        let spool = raw
            .spool
            .map(|s| spool::check(s, &mut cx))
            .unwrap_or_default();
        let cluster = raw
            .cluster
            .map(|c| cluster::check(c, &mut cx))
            .unwrap_or_default();
        let (errors, warnings): (Vec<_>, Vec<_>) = cx
            .diags
            .into_iter()
            .partition(|d| d.severity == Severity::Error);
        if !errors.is_empty() {
            return Err(SettingsError {
                diagnostics: errors,
            });
        }
        Ok(Settings {
            path: None,
            relays,
            listen,
            admin,
            spool,
            cluster,
            warnings,
        })
    }
}

/// The file as TOML gives it, before checks.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    relays: std::collections::BTreeMap<toml::Spanned<String>, relays::RawRelay>,
    listen: Option<listen::RawListen>,
    admin: Option<admin::RawAdmin>,
    spool: Option<spool::RawSpool>,
    cluster: Option<cluster::RawCluster>,
}

/// What the checks of one file share: where things are, and what was found.
pub(crate) struct Cx<'a> {
    file: &'a str,
    text: &'a str,
    base: &'a Path,
    diags: Vec<Diagnostic>,
}

impl Cx<'_> {
    /// 1-based line and column (in characters) of byte `offset`.
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut o = offset.min(self.text.len());
        while !self.text.is_char_boundary(o) {
            o -= 1;
        }
        let before = &self.text[..o];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    fn push(
        &mut self,
        severity: Severity,
        at: std::ops::Range<usize>,
        message: String,
        expected: Option<&str>,
    ) {
        let (line, column) = self.line_col(at.start);
        self.diags.push(Diagnostic {
            file: self.file.to_owned(),
            line,
            column,
            severity,
            message,
            expected: expected.map(str::to_owned),
        });
    }

    fn error(&mut self, at: std::ops::Range<usize>, message: impl Into<String>, expected: &str) {
        let expected = (!expected.is_empty()).then_some(expected);
        self.push(Severity::Error, at, message.into(), expected);
    }

    fn warn(&mut self, at: std::ops::Range<usize>, message: impl Into<String>) {
        self.push(Severity::Warning, at, message.into(), None);
    }

    /// `p` relative to the settings file's directory.
    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// A file the settings name: resolved, and an error where it cannot be read.
    fn existing_file(&mut self, v: &toml::Spanned<String>, what: &str) -> Option<PathBuf> {
        let path = self.resolve(v.get_ref());
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Some(path),
            Ok(_) => {
                self.error(
                    v.span(),
                    format!("{what} {} is not a regular file", path.display()),
                    "the path of a file",
                );
                None
            }
            Err(e) => {
                self.error(
                    v.span(),
                    format!("{what} {} cannot be read: {e}", path.display()),
                    "an existing file (relative paths are relative to the settings file)",
                );
                None
            }
        }
    }

    /// A file holding a secret: read (trailing line ends removed), with a warning when others
    /// than its owner may read it.
    fn secret_file(&mut self, v: &toml::Spanned<String>, what: &str) -> Option<Secret> {
        let path = self.existing_file(v, what)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(m) = std::fs::metadata(&path) {
                let mode = m.permissions().mode();
                if mode & 0o077 != 0 {
                    self.warn(
                        v.span(),
                        format!(
                            "{what} {} can be read by others than its owner (mode {:o}); \
                             chmod 600 it",
                            path.display(),
                            mode & 0o777
                        ),
                    );
                }
            }
        }
        match std::fs::read_to_string(&path) {
            Ok(s) => {
                let s = s.trim_end_matches(['\r', '\n']).to_owned();
                if s.is_empty() {
                    self.error(
                        v.span(),
                        format!("{what} {} is empty", path.display()),
                        "the secret on the file's first line",
                    );
                    return None;
                }
                Some(Secret::new(s))
            }
            Err(e) => {
                self.error(
                    v.span(),
                    format!("{what} {} cannot be read: {e}", path.display()),
                    "a UTF-8 file holding the secret",
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests;
