//! `smtpw run`: the daemon.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tracing::{info, warn};

use smtpw::clock::SystemClock;
use smtpw::engine::{Engine, EngineOptions};
use smtpw::net::TcpConnector;
use smtpw::spool::{SpoolError, SpoolOptions, SqliteSpool};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// SITE.CFG (Windows `KEY=value` or unix `KEY="value"` form).
    #[arg(long)]
    pub config: PathBuf,
    /// The spool directory (created if missing): incoming/, quarantine/, spool.db.
    #[arg(long)]
    pub spool: PathBuf,
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
    /// Connect time-out in seconds (SPEC A5: 60).
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
}

/// Exit status after a second SIGTERM/Ctrl-C cut the drain short (128 + SIGINT, as shells do).
const EXIT_FORCED: i32 = 130;

/// `smtpw run`. Exit status: 0 after a normal stop (`--until-empty` found the queue empty, or
/// SIGTERM/Ctrl-C drained the transactions in flight); 2 when it cannot start (SITE.CFG errors,
/// printed as `FILE:LINE:COLUMN: error: ...`; a spool another process owns; an unusable spool);
/// 130 when a second signal stopped it before the drain ended.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = match smtpw::config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(async move {
        let clock = SystemClock::shared();
        let opts = SpoolOptions {
            max_bsmtp: config.max_bsmtp,
            sort_recipients: config.sort_recipients,
            default_pool: config.default_list_pool.postings,
            ledger_path: args.ledger.clone(),
            lifetime: Duration::from_secs(args.lifetime_hours * 3600),
            ..SpoolOptions::default()
        };
        let spool = match SqliteSpool::open(&args.spool, opts, clock.clone()) {
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
                    .context(format!("opening the spool {}", args.spool.display())))
            }
        };
        let mut eopts = EngineOptions {
            until_empty: args.until_empty,
            sync_grace: Duration::from_secs(args.sync_grace),
            per_worker_rate_split: args.per_worker_rate_split,
            ..EngineOptions::default()
        };
        eopts.client.pipelining = !args.no_pipelining;
        let connector = Arc::new(TcpConnector {
            connect_timeout: Duration::from_secs(args.connect_timeout),
        });
        let engine = Arc::new(Engine::new(
            config,
            spool,
            args.spool.clone(),
            connector,
            clock,
            eopts,
        ));
        let stopper = engine.shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            info!("signal received: finishing transactions in flight, then stopping (signal again to stop at once)");
            stopper.cancel();
            // A second signal stops at once: nothing is lost (SPEC §12 D3), the transactions
            // still in flight are simply repeated by the next run.
            wait_for_signal().await;
            warn!("second signal: stopping now; the transactions in flight will be repeated by the next run");
            std::process::exit(EXIT_FORCED);
        });
        let summary = engine.run().await;
        info!(
            delivered = summary.delivered,
            failed = summary.failed,
            deferred = summary.deferred,
            copies = summary.copies,
            "stopped"
        );
        Ok(ExitCode::SUCCESS)
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
