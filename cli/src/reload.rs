//! Live reload (SIGHUP or `POST /api/v1/reload`, OPS-8): SITE.CFG and smtpw.toml are read again
//! and checked as at start; a file with errors changes nothing (every error is reported, the
//! engine keeps its configuration); good ones are applied by the engine: SITE.CFG, smtpw.toml's
//! relays and `[cluster] rate_limit` at once, the rest at the next start (the log says so).

use std::path::PathBuf;
use std::sync::Arc;

use smtpw_engine::engine::Engine;
use smtpw_engine::settings::Settings;
use smtpw_engine::spool::Spool;

/// What a reload reads, and the engine it applies to.
pub struct Reloader<S: Spool> {
    pub config: PathBuf,
    pub settings: Option<PathBuf>,
    pub engine: Arc<Engine<S>>,
    /// The database spool's URL, to open a changed `[cluster] rate_limit` (`None`: a spool
    /// directory, where it does not apply).
    pub db_url: Option<smtpw_engine::settings::Secret>,
}

impl<S: Spool> Reloader<S> {
    /// Read and check both files; apply them if both are good. `Ok`: what changed; `Err`: every
    /// error found (nothing was changed).
    pub fn reload(&self) -> Result<Vec<String>, String> {
        // systemd's protocol: RELOADING=1 now, READY=1 once done (whatever the outcome).
        crate::sdnotify::notify("RELOADING=1");
        let r = self.read_and_apply();
        crate::sdnotify::notify("READY=1");
        r
    }

    fn read_and_apply(&self) -> Result<Vec<String>, String> {
        let mut errors = Vec::new();
        let config = smtpw_engine::config::load(&self.config)
            .map_err(|e| errors.push(e.to_string()))
            .ok();
        let settings = match &self.settings {
            None => Some(Settings::default()),
            Some(p) => Settings::load(p)
                .map_err(|e| errors.push(e.to_string()))
                .ok(),
        };
        let (Some(config), Some(settings), true) = (config, settings, errors.is_empty()) else {
            let all = errors.join("\n");
            tracing::error!(
                "reload refused, nothing changed; the engine keeps its configuration:\n{all}"
            );
            return Err(all);
        };
        for w in config.warnings.iter().chain(&settings.warnings) {
            tracing::warn!("reload: {w}");
        }
        // The cluster limit first: a database that cannot be reached refuses the reload whole.
        let old_limit = self.engine.settings_in_force().cluster.rate_limit;
        if settings.cluster.rate_limit != old_limit {
            let limit = match (&settings.cluster.rate_limit, &self.db_url) {
                (Some(limits), Some(url)) => {
                    let opened = tokio::runtime::Handle::current().block_on(
                        smtpw_engine::spool::postgres::limit::ClusterLimit::open(
                            url.expose(),
                            limits,
                        ),
                    );
                    match opened {
                        Ok(l) => Some(l as Arc<dyn smtpw_engine::ratelimit::SharedLimit>),
                        Err(e) => {
                            let e = format!("[cluster] rate_limit cannot be set up: {e}");
                            tracing::error!("reload refused, nothing changed: {e}");
                            return Err(e);
                        }
                    }
                }
                (Some(_), None) => {
                    tracing::warn!("reload: [cluster] rate_limit applies to a database spool's nodes; with a spool directory it is not used (SMTP_RATE_LIMIT is)");
                    None
                }
                (None, _) => None,
            };
            if self.db_url.is_some() {
                self.engine.set_shared_limit(limit);
            }
        }
        let mut changes = self.engine.reload(config);
        let s = self.engine.reload_settings(&settings);
        changes.extend(s.applied);
        changes.extend(s.at_restart);
        Ok(changes)
    }
}
