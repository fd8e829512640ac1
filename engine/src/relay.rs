//! What each connection to a relay uses from the settings (`[relays."HOST"]`): its TLS mode
//! and client configuration (TXN-11), and its AUTH credentials (TXN-12), with the OAuth 2
//! tokens fetched by `oauth2_token_command` and kept until the relay refuses one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::config::HostPort;
use crate::settings::{RelayAuth, RelaySettings, Relays, Secret, TlsMode};
use crate::smtp::{CredentialSecret, Credentials, Security};
use crate::tls::{TlsConfigs, TlsTarget};

/// How long `oauth2_token_command` may run.
pub const TOKEN_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// The most it may print (an access token is a few KiB at most).
pub const TOKEN_MAX_BYTES: usize = 64 * 1024;

/// Every relay's connection settings, ready to use.
#[derive(Debug, Default)]
pub struct RelayPolicy {
    relays: Relays,
    tls: TlsConfigs,
    /// Tokens by command.
    tokens: Mutex<HashMap<String, Secret>>,
}

impl RelayPolicy {
    /// The policy for these per-relay settings.
    pub fn new(relays: Relays) -> Self {
        Self {
            relays,
            tls: TlsConfigs::default(),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// The settings for `relay`.
    pub fn settings(&self, relay: &HostPort) -> &RelaySettings {
        self.relays.for_host(relay)
    }

    /// What a connection to `relay` uses, or why it cannot be made (a `ca_file` that cannot be
    /// read, a token command that fails): the host then counts as unreachable.
    pub async fn security(&self, relay: &HostPort) -> Result<Security, String> {
        let s = self.relays.for_host(relay);
        let tls = match s.tls {
            TlsMode::None => None,
            mode => match self
                .tls
                .get(mode, s.ca_file.as_deref())
                .and_then(|c| TlsTarget::new(c, &relay.host))
            {
                Ok(t) => Some(t),
                Err(e) if mode == TlsMode::Opportunistic => {
                    tracing::warn!(host = %relay, error = %e, "no TLS client for this relay; opportunistic TLS falls back to plaintext");
                    None
                }
                Err(e) => return Err(e.to_string()),
            },
        };
        let auth = match &s.auth {
            None => None,
            Some(RelayAuth::Password { username, password }) => Some(Credentials {
                username: username.clone(),
                secret: CredentialSecret::Password(password.clone()),
                mechanism: s.mechanism,
            }),
            Some(RelayAuth::OAuth2 {
                username,
                token_command,
            }) => Some(Credentials {
                username: username.clone(),
                secret: CredentialSecret::Token(self.token(token_command).await?),
                mechanism: s.mechanism,
            }),
        };
        Ok(Security {
            mode: s.tls,
            tls,
            auth,
            allow_plaintext_auth: s.allow_plaintext_auth,
        })
    }

    /// The relay refused a login: an OAuth 2 token it was given is fetched again next time
    /// (it may have expired).
    pub fn login_refused(&self, relay: &HostPort) {
        if let Some(RelayAuth::OAuth2 { token_command, .. }) = &self.relays.for_host(relay).auth {
            self.lock().remove(token_command);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Secret>> {
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn token(&self, command: &str) -> Result<Secret, String> {
        if let Some(t) = self.lock().get(command) {
            return Ok(t.clone());
        }
        let t = run_token_command(command, TOKEN_COMMAND_TIMEOUT, TOKEN_MAX_BYTES).await?;
        self.lock().insert(command.to_owned(), t.clone());
        Ok(t)
    }
}

/// One worker host as `smtpw config check --settings` shows it: where SITE.CFG names it, and the
/// TLS mode and AUTH user it gets (never a secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RelayRow {
    /// `SMTP_FORWARD`, `SMTP_FORWARD_3 primary`, `SMTP_FORWARD_3 failover`.
    pub role: String,
    /// `host:port`.
    pub host: String,
    /// Its TLS mode.
    pub tls: TlsMode,
    /// Its extra trust anchors (a path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Its AUTH user (never the secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The AUTH mechanism: the one set, `best offered`, or none without credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mechanism: Option<String>,
    /// `[relays."KEY"]` that applies (`"*"` or the default when none matched).
    pub settings: String,
}

/// What the settings say for each worker host of `cfg`, and the `[relays."x"]` keys that name
/// no host of it (probably a typing error: warned about).
pub fn relay_rows(
    cfg: &crate::config::SiteConfig,
    relays: &Relays,
) -> (Vec<RelayRow>, Vec<String>) {
    let mut hosts: Vec<(String, &HostPort)> = Vec::new();
    if let Some(h) = &cfg.sync_forward {
        hosts.push(("SMTP_FORWARD".into(), h));
    }
    for w in &cfg.workers {
        hosts.push((format!("SMTP_FORWARD_{} primary", w.source_n), &w.primary));
        if let Some(f) = &w.failover {
            hosts.push((format!("SMTP_FORWARD_{} failover", w.source_n), f));
        }
    }
    let mut used = std::collections::BTreeSet::new();
    let mut rows = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (role, hp) in hosts {
        let host = hp.host.to_ascii_lowercase();
        let key = [format!("{host}:{}", hp.port), host.clone()]
            .into_iter()
            .find(|k| relays.by_key.contains_key(k));
        if let Some(k) = &key {
            used.insert(k.clone());
        }
        if !seen.insert((role.clone(), hp.to_string())) {
            continue;
        }
        let s = relays.for_host(hp);
        rows.push(RelayRow {
            role,
            host: hp.to_string(),
            tls: s.tls,
            ca_file: s.ca_file.as_ref().map(|p| p.display().to_string()),
            user: s.auth.as_ref().map(|a| a.username().to_owned()),
            mechanism: s.auth.as_ref().map(|_| {
                s.mechanism
                    .map_or_else(|| "best offered".to_owned(), |m| m.as_str().to_owned())
            }),
            settings: key.map_or_else(|| "*".to_owned(), |k| format!("\"{k}\"")),
        });
    }
    let unmatched = relays
        .by_key
        .keys()
        .filter(|k| !used.contains(*k))
        .cloned()
        .collect();
    (rows, unmatched)
}

/// Run `command` with `/bin/sh -c` (the settings file is the administrator's own, and a shell
/// lets the command be a pipeline), standard input closed, within `timeout`; its standard
/// output, trimmed, is the token. A failure names the command's exit status and the start of
/// its standard error, never its output (which would be the token).
pub async fn run_token_command(
    command: &str,
    timeout: Duration,
    max_bytes: usize,
) -> Result<Secret, String> {
    use tokio::io::AsyncReadExt;
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("oauth2_token_command could not start: {e}"))?;
    let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err("oauth2_token_command: no pipes".into());
    };
    let limit = u64::try_from(max_bytes)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let run = async {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let mut out = (&mut out).take(limit);
        let mut err = (&mut err).take(4096);
        let (o, e) = tokio::join!(out.read_to_end(&mut stdout), err.read_to_end(&mut stderr));
        o.map_err(|e| format!("oauth2_token_command: reading its output: {e}"))?;
        let _ = e;
        let status = child
            .wait()
            .await
            .map_err(|e| format!("oauth2_token_command: {e}"))?;
        Ok::<_, String>((status, stdout, stderr))
    };
    let (status, stdout, stderr) = match tokio::time::timeout(timeout, run).await {
        Err(_) => {
            return Err(format!(
                "oauth2_token_command did not finish within {timeout:?}"
            ))
        }
        Ok(r) => r?,
    };
    if !status.success() {
        let why = String::from_utf8_lossy(&stderr);
        return Err(format!(
            "oauth2_token_command failed ({status}): {}",
            crate::text::escape_controls(why.trim())
        ));
    }
    if stdout.len() > max_bytes {
        return Err(format!(
            "oauth2_token_command printed more than {max_bytes} bytes"
        ));
    }
    let token = String::from_utf8(stdout)
        .map_err(|_| "oauth2_token_command printed something that is not UTF-8".to_owned())?;
    let token = token.trim();
    if token.is_empty() || token.chars().any(char::is_control) {
        return Err("oauth2_token_command printed no token (empty, or more than one line)".into());
    }
    Ok(Secret::new(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_show_each_worker_host_its_tls_and_user_and_unmatched_keys_are_listed() {
        let cfg = crate::config::parse_str(
            "SMTP_FORWARD=sync.example.org\nSMTP_FORWARD_1=2*Relay.example.org:587;backup.example.org\n",
            "SITE.CFG",
        )
        .unwrap();
        let mut relays = Relays::default();
        relays.by_key.insert(
            "relay.example.org".into(),
            RelaySettings {
                tls: TlsMode::Required,
                auth: Some(RelayAuth::Password {
                    username: "lists".into(),
                    password: Secret::new("hunter2-secret"),
                }),
                ..RelaySettings::default()
            },
        );
        relays
            .by_key
            .insert("typo.example.org".into(), RelaySettings::default());
        let (rows, unmatched) = relay_rows(&cfg, &relays);
        let shown = serde_json::to_string(&rows).unwrap();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(unmatched, ["typo.example.org"]);
        let r: Vec<(&str, &str, TlsMode, Option<&str>)> = rows
            .iter()
            .map(|r| (r.role.as_str(), r.host.as_str(), r.tls, r.user.as_deref()))
            .collect();
        assert_eq!(
            r,
            [
                (
                    "SMTP_FORWARD",
                    "sync.example.org:25",
                    TlsMode::Opportunistic,
                    None
                ),
                (
                    "SMTP_FORWARD_1 primary",
                    "Relay.example.org:587",
                    TlsMode::Required,
                    Some("lists")
                ),
                (
                    "SMTP_FORWARD_1 failover",
                    "backup.example.org:25",
                    TlsMode::Opportunistic,
                    None
                ),
            ]
        );
        assert_eq!(rows[1].mechanism.as_deref(), Some("best offered"));
    }

    #[tokio::test]
    async fn a_token_is_fetched_once_and_again_after_a_refused_login() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("runs");
        let cmd = format!(
            "echo x >> '{}'; echo tok-$(wc -l < '{}')",
            count.display(),
            count.display()
        );
        let mut relays = Relays::default();
        relays.by_key.insert(
            "smtp.example.org".into(),
            RelaySettings {
                tls: TlsMode::None,
                auth: Some(RelayAuth::OAuth2 {
                    username: "lists@example.org".into(),
                    token_command: cmd,
                }),
                allow_plaintext_auth: true,
                ..RelaySettings::default()
            },
        );
        let p = RelayPolicy::new(relays);
        let host = HostPort::new("smtp.example.org", 587);
        let token = |s: Security| match s.auth.map(|a| a.secret) {
            Some(CredentialSecret::Token(t)) => t.expose().to_owned(),
            other => panic!("{other:?}"),
        };
        assert_eq!(token(p.security(&host).await.unwrap()), "tok-1");
        assert_eq!(token(p.security(&host).await.unwrap()), "tok-1");
        p.login_refused(&host);
        assert_eq!(token(p.security(&host).await.unwrap()), "tok-2");
        // Another relay without credentials is not affected.
        let other = HostPort::new("other.example.org", 25);
        p.login_refused(&other);
        assert!(p.security(&other).await.unwrap().auth.is_none());
        assert_eq!(token(p.security(&host).await.unwrap()), "tok-2");
    }

    #[tokio::test]
    async fn a_token_is_the_trimmed_output_and_failures_never_show_the_output() {
        let t = run_token_command("echo '  ya29.tok  '", Duration::from_secs(10), 1024)
            .await
            .unwrap();
        assert_eq!(t.expose(), "ya29.tok");
        let e = run_token_command(
            "echo secret-out; echo oops >&2; exit 3",
            Duration::from_secs(10),
            1024,
        )
        .await
        .unwrap_err();
        assert!(e.contains("oops") && !e.contains("secret-out"), "{e}");
        let e = run_token_command("sleep 5", Duration::from_millis(100), 1024)
            .await
            .unwrap_err();
        assert!(e.contains("did not finish"), "{e}");
        let e = run_token_command(
            "head -c 5000 /dev/zero | tr '\\0' a",
            Duration::from_secs(10),
            1024,
        )
        .await
        .unwrap_err();
        assert!(e.contains("more than 1024 bytes"), "{e}");
        let e = run_token_command("printf 'a\\nb\\n'", Duration::from_secs(10), 1024)
            .await
            .unwrap_err();
        assert!(e.contains("no token"), "{e}");
    }
}
