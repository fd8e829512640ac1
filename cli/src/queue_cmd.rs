//! `smtpw queue`: what a spool holds, read from its database (works while the daemon runs).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use smtpw_engine::clock::{Clock, SystemClock};
use smtpw_engine::ratelimit::{RateLine, RateStatus};
use smtpw_engine::spool::{engine_state, read_stats, CopyState, EngineState, QueueStats};

/// A status older than this is not current (a running engine rewrites it every second).
pub const STALE_AFTER_SECS: u64 = 10;

/// Arguments of `smtpw queue`.
#[derive(clap::Args, Debug)]
pub struct QueueArgs {
    /// The spool directory, or a database spool's URL (postgres://USER@HOST/DB): then the
    /// whole cluster's queue and each node ("nodes": alive, last heartbeat, workers, copies
    /// claimed and assigned, recipients delivered and failed). Default: `SMTPW_SPOOL`, else the
    /// settings file's `[spool] url` or `path`.
    #[arg(long, value_name = "DIR|URL")]
    pub spool: Option<PathBuf>,
    /// smtpw.toml, for `[spool]` and `[cluster] node_timeout` (default: `SMTPW_SETTINGS`, else
    /// /etc/smtpw/smtpw.toml when it exists).
    #[arg(long, value_name = "FILE")]
    pub settings: Option<PathBuf>,
    /// With a database spool: how long a node may be silent before it counts as dead (default:
    /// the settings file's [cluster] node_timeout, else 60 s).
    #[arg(long, value_name = "SECS")]
    pub node_timeout: Option<u64>,
    /// Print JSON: {"queued", "delivered", "failed", ..., "pools": [...]}, counted in recipients,
    /// and "rates": the engine's rate report (configured and achieved over the last minute).
    #[arg(long)]
    pub json: bool,
    /// SITE.CFG, for the configured limits and unserved pools when no engine has written its
    /// status in the spool (a running engine's status is used when present).
    #[arg(long, value_name = "SITE.CFG")]
    pub config: Option<PathBuf>,
}

/// The rate report `smtpw queue` shows: the engine's status file, or one made from SITE.CFG.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rates {
    /// `engine` (SPOOL/rate-status.json) or `config` (from --config: no achieved figures).
    pub source: &'static str,
    /// Seconds since the engine wrote the status (`None` for `config`).
    pub age_secs: Option<u64>,
    /// True when the engine's status is too old to be current: the engine is not running, or
    /// cannot write the file (see `engine`).
    pub stale: bool,
    /// Whether an engine owns the spool (holds `spool.lock`): `running`, `not_running` or
    /// `unknown`.
    pub engine: EngineState,
    #[serde(flatten)]
    pub status: RateStatus,
}

/// Find the rate report for `spool` (engine status first, then `config`).
pub fn rates(
    spool: &std::path::Path,
    config: Option<&std::path::Path>,
    now: jiff::Timestamp,
    engine: EngineState,
) -> anyhow::Result<Option<Rates>> {
    let from_engine = RateStatus::read(spool).with_context(|| {
        format!(
            "reading {}",
            spool
                .join(smtpw_engine::ratelimit::RATE_STATUS_FILE)
                .display()
        )
    })?;
    if let Some(st) = from_engine {
        let age = st
            .written_at
            .parse::<jiff::Timestamp>()
            .ok()
            .map(|t| u64::try_from(now.duration_since(t).as_secs()).unwrap_or(0));
        let stale = age.is_none_or(|a| a > STALE_AFTER_SECS);
        if !(stale && config.is_some()) {
            return Ok(Some(Rates {
                source: "engine",
                age_secs: age,
                stale,
                engine,
                status: st,
            }));
        }
    }
    let Some(path) = config else { return Ok(None) };
    let cfg = smtpw_engine::config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Some(Rates {
        source: "config",
        age_secs: None,
        stale: false,
        engine,
        status: RateStatus::new(&cfg, false, None, now),
    }))
}

fn limit_text(l: &RateLine) -> (String, String) {
    match l.limit_bps {
        Some(b) => (b.to_string(), (b / 8).to_string()),
        None => ("-".to_string(), "-".to_string()),
    }
}

/// The rate table: configured limit, workers, achieved over the last minute.
pub fn render_rates(r: &Rates) -> String {
    let st = &r.status;
    let mut out = String::new();
    match (r.source, r.age_secs) {
        ("config", _) => out.push_str(&format!(
            "rate limits (from {}; no engine status in the spool, so no achieved rates):\n",
            "SITE.CFG"
        )),
        (_, Some(a)) if r.stale => out.push_str(&format!(
            "rate limits (engine status from {} ago: {}; achieved rates are as of then):\n",
            human_age(a),
            match r.engine {
                EngineState::NotRunning =>
                    "the engine is not running (no process holds spool.lock)",
                EngineState::Running => "an engine is running but cannot write its status",
                EngineState::Unknown => "the engine is not running, or cannot write its status",
            }
        )),
        _ => out.push_str(&format!(
            "rate limits ({}; achieved over the last {:.0} s):\n",
            if st.per_worker_split {
                "split per worker"
            } else {
                "shared by all workers"
            },
            st.window_secs
        )),
    }
    out.push_str(&format!(
        "{:<7} {:>12} {:>11} {:>7} {:>14} {:>7}\n",
        "POOL", "LIMIT bit/s", "LIMIT B/s", "WORKERS", "ACHIEVED bit/s", "OF LIM"
    ));
    for l in std::iter::once(&st.overall).chain(&st.pools) {
        let (bits, bytes) = limit_text(l);
        let pct = match l.limit_bps {
            Some(b) if b > 0 && r.source == "engine" => {
                format!("{:.1}%", l.achieved_bps as f64 * 100.0 / b as f64)
            }
            _ => "-".to_string(),
        };
        let achieved = if r.source == "engine" {
            l.achieved_bps.to_string()
        } else {
            "-".to_string()
        };
        let name = if l.pool == "*" { "overall" } else { &l.pool };
        out.push_str(&format!(
            "{:<7} {:>12} {:>11} {:>7} {:>14} {:>7}\n",
            name, bits, bytes, l.workers, achieved, pct
        ));
    }
    if !st.unserved.is_empty() {
        out.push_str(&st.unserved_line());
        out.push('\n');
    }
    out
}

/// `90` -> `1m30s`, `7500` -> `2h05m`, `200000` -> `2d07h`.
pub fn human_age(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

fn state_name(s: CopyState) -> &'static str {
    match s {
        CopyState::Ready => "ready",
        CopyState::Deferred => "deferred",
        CopyState::InFlight => "in-flight",
    }
}

/// The human-readable table.
pub fn render(st: &QueueStats) -> String {
    let mut out = format!(
        "queued {} recipients in {} copies ({} jobs), delivered {}, failed {}; oldest {}; {} file(s) waiting in incoming\n",
        st.queued,
        st.copies,
        st.jobs,
        st.delivered,
        st.failed,
        human_age(st.oldest_age_secs),
        st.incoming_files
    );
    if !st.pools.is_empty() {
        out.push_str(&format!(
            "{:<5} {:<9} {:>8} {:>11} {:>8}\n",
            "POOL", "STATE", "COPIES", "RECIPIENTS", "OLDEST"
        ));
        for p in &st.pools {
            out.push_str(&format!(
                "{:<5} {:<9} {:>8} {:>11} {:>8}\n",
                p.pool.to_string(),
                state_name(p.state),
                p.copies,
                p.recipients,
                human_age(p.oldest_age_secs)
            ));
        }
    }
    if !st.failure_reasons.is_empty() {
        out.push_str("failed recipients by reply:\n");
        for f in &st.failure_reasons {
            out.push_str(&format!("{:>8}  {}\n", f.recipients, f.reply));
        }
    }
    out
}

/// What is known of the engine when that is not what its status file suggests: an engine holds
/// the spool but its status is missing or old (it cannot write it), so it is not "not running".
fn engine_line(
    spool: &std::path::Path,
    engine: EngineState,
    now: jiff::Timestamp,
) -> Option<String> {
    if engine != EngineState::Running {
        return None;
    }
    let file = smtpw_engine::ratelimit::RATE_STATUS_FILE;
    let written = RateStatus::read(spool).ok().flatten().map(|st| {
        st.written_at
            .parse::<jiff::Timestamp>()
            .ok()
            .map(|t| u64::try_from(now.duration_since(t).as_secs()).unwrap_or(0))
    });
    match written {
        None => Some(format!(
            "engine: an engine is running (it holds spool.lock) but has written no status ({file}): \
             it cannot write it; see its log"
        )),
        Some(Some(age)) if age <= STALE_AFTER_SECS => None,
        Some(age) => Some(format!(
            "engine: an engine is running (it holds spool.lock) but its status is from {} ago: \
             it cannot write {file}; see its log",
            age.map_or_else(|| "an unknown time".to_string(), human_age)
        )),
    }
}

/// Per relay with trouble: the last error (and when), and the next retry after a failed
/// connection.
pub fn render_relays(
    relays: &std::collections::BTreeMap<String, smtpw_engine::metrics::RelayStatus>,
) -> String {
    use smtpw_engine::text::escape_controls;
    use std::fmt::Write as _;
    let mut out = String::new();
    if relays.is_empty() {
        return out;
    }
    out.push_str("relays (last error, next retry):\n");
    for (name, r) in relays {
        let at = r.last_error_at.map(|t| t.to_string()).unwrap_or_default();
        let _ = writeln!(
            out,
            "  {}: {} ({at}); next retry {}",
            escape_controls(name),
            escape_controls(r.last_error.as_deref().unwrap_or("none")),
            r.next_retry
                .map_or_else(|| "when work comes".to_string(), |t| t.to_string())
        );
    }
    out
}

/// Run `smtpw queue`.
pub fn run(args: QueueArgs) -> anyhow::Result<ExitCode> {
    let settings = crate::spool_at::load_settings(args.settings.as_deref())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let spool = match crate::spool_at::locate(args.spool.as_deref(), settings.as_ref())
        .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        crate::spool_at::SpoolAt::Dir(d) => d,
        crate::spool_at::SpoolAt::Db(url) => {
            let timeout = args.node_timeout.map_or_else(
                || {
                    settings.as_ref().map_or(
                        smtpw_engine::settings::ClusterSettings::DEFAULT_NODE_TIMEOUT,
                        |s| s.cluster.node_timeout,
                    )
                },
                std::time::Duration::from_secs,
            );
            return cluster(url.expose(), timeout, &args);
        }
    };
    if !spool.is_dir() {
        anyhow::bail!("{} is not a directory", spool.display());
    }
    let now = SystemClock::new().now();
    let st = read_stats(&spool, now)
        .with_context(|| format!("reading the spool {}", spool.display()))?;
    let engine = engine_state(&spool);
    let rates = rates(&spool, args.config.as_deref(), now, engine)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut v = serde_json::to_value(&st)?;
        if let (Some(m), Some(r)) = (v.as_object_mut(), &rates) {
            m.insert("rates".to_string(), serde_json::to_value(r)?);
        }
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        write!(out, "{}", render(&st))?;
        if let Some(line) = engine_line(&spool, engine, now) {
            writeln!(out, "{line}")?;
        }
        if let Some(r) = &rates {
            write!(out, "{}", render_rates(r))?;
        }
        if let Some(r) = &rates {
            write!(out, "{}", render_relays(&r.status.relays))?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// `smtpw queue --spool URL`: the cluster's queue and its nodes.
fn cluster(
    url: &str,
    node_timeout: std::time::Duration,
    args: &QueueArgs,
) -> anyhow::Result<ExitCode> {
    let now = SystemClock::new().now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let (st, nodes) = rt
        .block_on(smtpw_engine::spool::postgres::cluster_stats(
            url,
            node_timeout,
            now,
        ))
        .with_context(|| {
            format!(
                "reading the spool {}",
                smtpw_engine::settings::redact_url(url)
            )
        })?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut v = serde_json::to_value(&st)?;
        if let Some(m) = v.as_object_mut() {
            m.insert("nodes".to_string(), serde_json::to_value(&nodes)?);
        }
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        write!(out, "{}", render(&st))?;
        writeln!(out, "nodes:")?;
        for n in &nodes {
            writeln!(
                out,
                "  {:<24} {:<5} heartbeat {:>6.1} s ago  workers {:>3}  claimed {:>6}  assigned {:>6}  delivered {:>9}  failed {:>7}",
                n.name,
                if n.alive { "alive" } else { "dead" },
                n.heartbeat_age_secs,
                n.workers,
                n.claimed,
                n.assigned,
                n.delivered,
                n.failed
            )?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
