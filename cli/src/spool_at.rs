//! Where a command's spool is (CFG-8): `--spool`, else `SMTPW_SPOOL`, else the settings file's
//! `[spool] url` or `path`. One rule for `run`, `submit`, `queue` and `sendmail` (and so for the
//! listener, which stores into `run`'s spool).

use std::path::{Path, PathBuf};

use smtpw_engine::settings::{Secret, Settings};

/// The variable naming the spool when the command line does not.
pub const SPOOL_VAR: &str = "SMTPW_SPOOL";
/// The variable naming the settings file when the command line does not (sendmail, submit,
/// queue).
pub const SETTINGS_VAR: &str = "SMTPW_SETTINGS";
/// The settings file read when neither the command line nor `SMTPW_SETTINGS` names one and it
/// exists (sendmail, submit, queue).
pub const DEFAULT_SETTINGS: &str = "/etc/smtpw/smtpw.toml";

/// Where the spool is.
#[derive(Debug)]
pub enum SpoolAt {
    /// A spool directory (the SQLite spool).
    Dir(PathBuf),
    /// A database spool's URL (it may hold a password: show it with `redact_url`).
    Db(Secret),
}

impl SpoolAt {
    /// A `--spool`/`SMTPW_SPOOL` value: a `postgres://` URL or a directory.
    pub fn from_arg(s: &Path) -> SpoolAt {
        match s
            .to_str()
            .filter(|s| smtpw_engine::spool::postgres::is_url(s))
        {
            Some(url) => SpoolAt::Db(Secret::new(url.to_owned())),
            None => SpoolAt::Dir(s.to_path_buf()),
        }
    }
}

/// The settings file of sendmail, submit and queue: `flag`, else `SMTPW_SETTINGS`, else
/// [`DEFAULT_SETTINGS`] when it exists.
pub fn settings_path(flag: Option<&Path>) -> Option<PathBuf> {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os(SETTINGS_VAR).map(PathBuf::from))
        .or_else(|| {
            Path::new(DEFAULT_SETTINGS)
                .exists()
                .then(|| PathBuf::from(DEFAULT_SETTINGS))
        })
}

/// Read the settings file `settings_path` finds (`None` when there is none).
pub fn load_settings(flag: Option<&Path>) -> Result<Option<Settings>, String> {
    match settings_path(flag) {
        Some(p) => Settings::load(&p).map(Some).map_err(|e| e.to_string()),
        None => Ok(None),
    }
}

/// `flag`, else `SMTPW_SPOOL`, else `[spool] url` or `path` of `settings`.
pub fn locate(flag: Option<&Path>, settings: Option<&Settings>) -> Result<SpoolAt, String> {
    if let Some(s) = flag {
        return Ok(SpoolAt::from_arg(s));
    }
    if let Some(s) = std::env::var_os(SPOOL_VAR).filter(|s| !s.is_empty()) {
        return Ok(SpoolAt::from_arg(Path::new(&s)));
    }
    if let Some(s) = settings {
        if let Some(u) = &s.spool.url {
            return Ok(SpoolAt::Db(u.clone()));
        }
        if let Some(p) = &s.spool.path {
            return Ok(SpoolAt::Dir(p.clone()));
        }
    }
    Err(format!(
        "no spool: give --spool DIR|URL, set {SPOOL_VAR}, or set [spool] path or url in {}",
        settings.and_then(|s| s.path.as_ref()).map_or_else(
            || "the settings file (--settings FILE)".to_owned(),
            |p| p.display().to_string()
        )
    ))
}

/// Queue `job` in the database spool `url` as if node `via` had ingested it; its id and copies
/// once committed.
pub fn submit_via(
    url: &str,
    via: &str,
    job: smtpw_engine::spool::postgres::DirectJob,
) -> anyhow::Result<(i64, u64)> {
    use anyhow::Context as _;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(smtpw_engine::spool::postgres::submit_via(
        url,
        via,
        smtpw_engine::clock::SystemClock::shared(),
        job,
    ))
    .with_context(|| format!("submitting to {}", smtpw_engine::settings::redact_url(url)))
}
