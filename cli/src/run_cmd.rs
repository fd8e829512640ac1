//! `smtpw run`: the daemon.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tracing::{info, warn};

use smtpw_engine::clock::SystemClock;
use smtpw_engine::engine::{Engine, EngineOptions};
use smtpw_engine::listen::Listener;
use smtpw_engine::net::TcpConnector;
use smtpw_engine::settings::{ListenSettings, Settings};
use smtpw_engine::smtp::{helo, TxnDeadline};
use smtpw_engine::spool::{PgOptions, PgSpool, Spool, SpoolError, SpoolOptions, SqliteSpool};

use crate::spool_at::SpoolAt;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// SITE.CFG (Windows `KEY=value` or unix `KEY="value"` form).
    #[arg(long)]
    pub config: PathBuf,
    /// smtpw.toml: what smtpw adds to SITE.CFG (relays' TLS and AUTH, listener, admin, spool,
    /// cluster). Without it, every relay gets the defaults.
    #[arg(long, value_name = "FILE")]
    pub settings: Option<PathBuf>,
    /// The spool: a directory (created if missing: incoming/, quarantine/, spool.db), or a
    /// PostgreSQL database `postgres://USER@HOST/DB` shared by several nodes (SITE.CFG's NODE=
    /// names this one). Default: `SMTPW_SPOOL`, else smtpw.toml's `[spool] url` or `path`.
    #[arg(long, value_name = "DIR|URL")]
    pub spool: Option<PathBuf>,
    /// With a database spool: this node's own directory; jobs dropped in DIR/incoming/ are
    /// ingested (bad ones go to DIR/quarantine/), and the ledger is DIR/ledger.jsonl unless
    /// --ledger says otherwise. Required with a database spool.
    #[arg(long, value_name = "DIR")]
    pub incoming: Option<PathBuf>,
    /// Where per-recipient outcomes go (JSON lines); default SPOOL/ledger.jsonl.
    #[arg(long)]
    pub ledger: Option<PathBuf>,
    /// Exit 0 once no recipient is queued.
    #[arg(long)]
    pub until_empty: bool,
    /// Seconds every worker of a pool must fail to reach any host before the pool's copies go
    /// through SMTP_FORWARD.
    #[arg(long, default_value_t = 900)]
    pub sync_grace: u64,
    /// Connect time-out in seconds (WRK-6: 60).
    #[arg(long, default_value_t = 60)]
    pub connect_timeout: u64,
    /// Do not use PIPELINING even when the relay offers it.
    #[arg(long)]
    pub no_pipelining: bool,
    /// LISTSERV's per-worker split of SMTP_RATE_LIMIT instead of one shared limiter.
    #[arg(long)]
    pub per_worker_rate_split: bool,
    /// Deferred recipients fail after this many hours (default 5 days).
    #[arg(long, default_value_t = 120)]
    pub lifetime_hours: u64,
    /// The name to greet relays with (EHLO): a domain or an address literal such as
    /// [192.0.2.1]. Default: NODE from SITE.CFG, else this host's fully qualified name.
    #[arg(long, value_name = "NAME", value_parser = smtpw_engine::smtp::helo::parse_helo_name)]
    pub helo_name: Option<String>,
    /// Seconds a stop (SIGTERM, Ctrl-C) waits for the transactions in flight; then they are cut
    /// off and their copies go back to the queue (the next run sends them).
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub drain_timeout: u64,
    /// Every transaction must end within this many seconds plus the message's transfer at
    /// --transaction-min-rate (default 15 min: the 10 min RFC 5321 allows for the reply to the
    /// final dot, plus 5 min for one slow command); a transaction cut off ends as a lost
    /// connection and its recipients are retried later.
    #[arg(long, default_value_t = 900, value_name = "SECS")]
    pub transaction_base: u64,
    /// The slowest acceptable transfer of a message, in bytes per second (default 1 KiB/s).
    #[arg(long, default_value_t = 1024, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub transaction_min_rate: u64,
    /// Serve the admin endpoint (GET /metrics, the JSON API `smtpw ctl` uses) on ADDR:PORT,
    /// instead of smtpw.toml's [admin] address. Loopback only unless [admin] token_file is set.
    #[arg(long, value_name = "ADDR:PORT")]
    pub admin: Option<std::net::SocketAddr>,
    /// Accept mail by SMTP on ADDRESS:PORT (repeatable): list managers hand their mail here.
    /// Replaces the addresses of smtpw.toml's [listen] and keeps its other settings.
    #[arg(long, value_name = "ADDRESS:PORT")]
    pub listen: Vec<std::net::SocketAddr>,
}

/// Exit status after a second SIGTERM/Ctrl-C cut the drain short (128 + SIGINT, as shells do).
const EXIT_FORCED: i32 = 130;
/// Exit status when a stop gave up outcomes the spool could not record (a full disk).
const EXIT_UNRECORDED: u8 = 4;

/// Exit status of `--until-empty` when nothing else is queued but files in `incoming/` can be
/// neither read nor moved to quarantine: their mail was never sent.
const EXIT_LEFT_IN_INCOMING: u8 = 3;

/// `smtpw run`. Exit status: 0 after a normal stop (`--until-empty` found the queue empty, or
/// SIGTERM/Ctrl-C drained the transactions in flight, or cut them off at `--drain-timeout` and
/// put their copies back in the queue); 2 when it cannot start (SITE.CFG errors,
/// printed as `FILE:LINE:COLUMN: error: ...`; a spool another process owns; an unusable spool);
/// 3 when `--until-empty` stopped with files left in `incoming/` that can be neither read nor
/// moved to quarantine (named on stderr); 130 when a second signal stopped it before the drain
/// ended.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = match smtpw_engine::config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let settings = match &args.settings {
        None => Settings::default(),
        Some(path) => match Settings::load(path) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                return Ok(ExitCode::from(2));
            }
        },
    };
    for w in &settings.warnings {
        tracing::warn!("{w}");
    }
    for k in smtpw_engine::relay::relay_rows(&config, &settings.relays).1 {
        tracing::warn!(
            "[relays.\"{}\"] names no host of the configuration",
            smtpw_engine::text::escape_controls(&k)
        );
    }
    let helo = match helo::choose(
        args.helo_name.as_deref(),
        config.node.as_deref(),
        &helo::HostNames::from_system(),
    ) {
        Ok(h) => h,
        Err(e) => {
            // (clap's parser has checked it already; kept for the library's own check.)
            eprintln!("smtpw: error: --helo-name: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    for w in &helo.warnings {
        warn!("{w}");
    }
    info!(name = %helo.name, from = %helo.source, "greeting relays with EHLO {}", helo.name);
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(async move {
        // Take over SIGTERM/Ctrl-C first: a signal during start-up (opening a large spool takes
        // a while) then stops the engine cleanly instead of killing the process.
        let signals = Signals::install();
        let clock = SystemClock::shared();
        let metrics = smtpw_engine::metrics::Metrics::new();
        let opts = SpoolOptions {
            metrics: metrics.clone(),
            ledger_path: args.ledger.clone(),
            lifetime: Duration::from_secs(args.lifetime_hours * 3600),
            ..SpoolOptions::from_site(&config)
        };
        let where_ = match crate::spool_at::locate(args.spool.as_deref(), Some(&settings)) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("smtpw: error: {e}");
                return Ok(ExitCode::from(2));
            }
        };
        let mut eopts = EngineOptions {
            until_empty: args.until_empty,
            sync_grace: Duration::from_secs(args.sync_grace),
            per_worker_rate_split: args.per_worker_rate_split,
            ..EngineOptions::default()
        };
        let admin = settings.admin.clone();
        let listen = match (&settings.listen, args.listen.is_empty()) {
            (_, false) => Some(ListenSettings {
                addresses: args.listen.clone(),
                ..settings
                    .listen
                    .clone()
                    .unwrap_or_else(|| ListenSettings::on(Vec::new()))
            }),
            (Some(l), true) => Some(l.clone()),
            (None, true) => None,
        };
        let listener = match listen {
            Some(l) => Some(
                Listener::bind(l, helo.name.clone())
                    .await
                    .context("starting the SMTP listener")?
                    .with_metrics(metrics.clone()),
            ),
            None => None,
        };
        eopts.settings = settings;
        eopts.metrics = metrics.clone();
        eopts.client.pipelining = !args.no_pipelining;
        eopts.client.helo_name = helo.name;
        eopts.drain_timeout = Duration::from_secs(args.drain_timeout);
        eopts.client.txn_deadline = TxnDeadline {
            base: Duration::from_secs(args.transaction_base),
            min_rate: args.transaction_min_rate,
        };
        let connector = Arc::new(TcpConnector {
            connect_timeout: Duration::from_secs(args.connect_timeout),
        });
        match where_ {
            SpoolAt::Dir(dir) => {
                if eopts.settings.cluster.rate_limit.is_some() {
                    warn!("[cluster] rate_limit applies to a database spool's nodes; with a spool directory it is not used (SMTP_RATE_LIMIT is)");
                }
                let spool = match SqliteSpool::open(&dir, opts, clock.clone()) {
                    Ok(s) => Arc::new(s),
                    Err(SpoolError::Locked(dir, lock)) => {
                        anyhow::bail!(
                            "the spool {} is in use by another process (it holds {}); stop that \
                             `smtpw run` first, or give this one another --spool",
                            dir.display(),
                            lock.display()
                        );
                    }
                    Err(e) => {
                        return Err(anyhow::Error::new(e)
                            .context(format!("opening the spool {}", dir.display())))
                    }
                };
                let engine = Arc::new(
                    Engine::builder(config, spool, dir)
                        .connector(connector)
                        .clock(clock)
                        .options(eopts)
                        .build(),
                );
                if let Err(code) = start_operations(&engine, &args, admin, metrics, None).await {
                    return Ok(code);
                }
                serve(engine, signals, listener).await
            }
            SpoolAt::Db(url) => {
                let Some(node) = config.node.clone() else {
                    eprintln!(
                        "smtpw: error: a database spool needs SITE.CFG's NODE= (this node's name \
                         in the cluster)"
                    );
                    return Ok(ExitCode::from(2));
                };
                let Some(local) = args.incoming.clone() else {
                    eprintln!(
                        "smtpw: error: a database spool needs --incoming DIR (this node's own \
                         directory: DIR/incoming/, DIR/quarantine/, DIR/ledger.jsonl)"
                    );
                    return Ok(ExitCode::from(2));
                };
                if let Some(limits) = eopts.settings.cluster.rate_limit.clone() {
                    let limit = smtpw_engine::spool::postgres::limit::ClusterLimit::open(
                        url.expose(),
                        &limits,
                    )
                    .await
                    .context("setting up [cluster] rate_limit")?;
                    info!("[cluster] rate_limit is shared with every node of the spool");
                    eopts.shared_limit = Some(limit);
                }
                let mut pg = PgOptions::new(url.expose(), node);
                pg.node_timeout = eopts.settings.cluster.node_timeout;
                pg.dist_forward = config.dist_forward.clone();
                pg.dist_limits = smtpw_engine::spool::postgres::share::DistLimits::of(&config);
                pg.local_dir = Some(local.clone());
                pg.workers = i32::try_from(config.workers.len()).unwrap_or(i32::MAX);
                let spool = match PgSpool::open(opts, pg, clock.clone()).await {
                    Ok(s) => Arc::new(s),
                    Err(e @ SpoolError::NodeTaken(_)) => {
                        eprintln!("smtpw: error: {e}");
                        return Ok(ExitCode::from(2));
                    }
                    Err(e) => {
                        return Err(anyhow::Error::new(e).context(format!(
                            "opening the spool {}",
                            smtpw_engine::settings::redact_url(url.expose())
                        )))
                    }
                };
                info!(node = %spool.node(), ledger = %spool.ledger_path().display(), "joined the cluster");
                metrics.set_node(spool.node());
                let engine = Arc::new(
                    Engine::builder(config, spool.clone(), local)
                        .connector(connector)
                        .clock(clock)
                        .options(eopts)
                        .build(),
                );
                if let Err(code) =
                    start_operations(&engine, &args, admin, metrics, Some(url.clone())).await
                {
                    return Ok(code);
                }
                let code = serve(engine, signals, listener).await;
                if let Err(e) = spool.close().await {
                    warn!(error = %e, "could not give back the copies this node held; the other nodes take them after node_timeout");
                }
                code
            }
        }
    })
}

/// Live reload by SIGHUP (OPS-8) and the admin endpoint (OPS-1) for a started engine; `Err`:
/// the exit status when the admin endpoint cannot start.
async fn start_operations<S: Spool>(
    engine: &Arc<Engine<S>>,
    args: &RunArgs,
    admin: Option<smtpw_engine::settings::AdminSettings>,
    metrics: Arc<smtpw_engine::metrics::Metrics>,
    db_url: Option<smtpw_engine::settings::Secret>,
) -> Result<(), ExitCode> {
    let reloader = Arc::new(crate::reload::Reloader {
        config: args.config.clone(),
        settings: args.settings.clone(),
        engine: engine.clone(),
        db_url,
    });
    // SIGHUP: reload (OPS-8).
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hup) => {
            let reloader = reloader.clone();
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    info!("SIGHUP: reloading SITE.CFG and smtpw.toml");
                    let r = reloader.clone();
                    let _ = tokio::task::spawn_blocking(move || r.reload()).await;
                }
            });
        }
        Err(e) => warn!(error = %e, "cannot listen for SIGHUP: no reload by signal"),
    }
    let admin_addr = args.admin.or(admin.as_ref().map(|a| a.address));
    if let Some(addr) = admin_addr {
        let state = Arc::new(crate::admin::AdminState {
            engine: engine.clone(),
            metrics,
            token: admin.and_then(|a| a.token),
            reloader,
            queue_cache: tokio::sync::Mutex::new(None),
        });
        if let Err(e) = crate::admin::start(addr, state).await {
            eprintln!("smtpw: error: {e:#}");
            return Err(ExitCode::from(2));
        }
    }
    Ok(())
}

/// Run the engine until it stops; the exit status.
async fn serve<S: Spool>(
    engine: Arc<Engine<S>>,
    mut signals: Signals,
    listener: Option<Listener>,
) -> anyhow::Result<ExitCode> {
    // Started: the spool is open, the admin endpoint listens (systemd Type=notify).
    crate::sdnotify::notify("READY=1");
    let stopper = engine.shutdown().clone();
    let drain_timeout = engine.options().drain_timeout;
    tokio::spawn(async move {
        signals.recv().await;
        info!(
            drain_timeout = ?drain_timeout,
            "signal received: finishing transactions in flight (for at most the drain timeout; \
             then they go back to the queue), then stopping (signal again to stop at once)"
        );
        crate::sdnotify::notify("STOPPING=1");
        stopper.cancel();
        // A second signal stops at once: nothing is lost (QUEUE-1), the transactions
        // still in flight are simply repeated by the next run.
        signals.recv().await;
        warn!("second signal: stopping now; the transactions in flight will be repeated by the next run");
        std::process::exit(EXIT_FORCED);
    });
    let listening =
        listener.map(|l| tokio::spawn(l.serve(engine.spool().clone(), engine.shutdown().clone())));
    let summary = engine.run().await;
    crate::sdnotify::notify("STOPPING=1");
    if let Some(l) = listening {
        // It stops with the engine; the messages being stored are awaited.
        let _ = l.await;
    }
    info!(
        delivered = summary.delivered,
        failed = summary.failed,
        deferred = summary.deferred,
        copies = summary.copies,
        "stopped"
    );
    if summary.unrecorded_at_stop > 0 {
        eprintln!(
            "smtpw: stopped with the outcomes of {} cop{} delivered but not recorded (the spool could not write: {}); the next run delivers {} again",
            summary.unrecorded_at_stop,
            if summary.unrecorded_at_stop == 1 { "y" } else { "ies" },
            engine
                .spool()
                .recording_error()
                .unwrap_or_else(|| "see the log".to_owned()),
            if summary.unrecorded_at_stop == 1 { "it" } else { "them" },
        );
        return Ok(ExitCode::from(EXIT_UNRECORDED));
    }
    let left = &summary.left_in_incoming;
    if !left.is_empty() {
        use smtpw_engine::text::escape_controls;
        let list: Vec<String> = left
            .iter()
            .map(|s| {
                format!(
                    "{} ({})",
                    escape_controls(&s.name),
                    escape_controls(&s.reason)
                )
            })
            .collect();
        eprintln!(
            "smtpw: --until-empty: {} file{} in incoming can be neither read nor moved to \
             quarantine, so {} not sent: {}",
            left.len(),
            if left.len() == 1 { "" } else { "s" },
            if left.len() == 1 {
                "it was"
            } else {
                "they were"
            },
            list.join("; ")
        );
        return Ok(ExitCode::from(EXIT_LEFT_IN_INCOMING));
    }
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM and SIGINT (Ctrl-C), listened to from the moment of [`Signals::install`].
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let term = signal(SignalKind::terminate())
                .map_err(|e| warn!(error = %e, "cannot listen for SIGTERM"))
                .ok();
            let int = signal(SignalKind::interrupt())
                .map_err(|e| warn!(error = %e, "cannot listen for SIGINT"))
                .ok();
            Self { term, int }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// The next SIGTERM or SIGINT.
    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        if s.recv().await.is_none() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = next(&mut self.term) => {}
                _ = next(&mut self.int) => {}
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}
