//! Live reload (SIGHUP or `POST /api/v1/reload`, OPS-8): SITE.CFG and smtpw.toml are read again
//! and checked as at start; a file with errors changes nothing (every error is reported, the
//! engine keeps its configuration); a good SITE.CFG is applied by the engine.

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
        let mut changes = self.engine.reload(config);
        if settings != self.engine.options().settings {
            let line = "smtpw.toml changed: its settings (relays' TLS and AUTH, listener, admin, \
                        spool, cluster) take effect at the next start";
            tracing::warn!("reload: {line}");
            changes.push(line.to_owned());
        }
        Ok(changes)
    }
}
