//! Assembling and running everything: the intake loop ([`crate::intake`]), the workers, the
//! synchronous fallback, the drain deadline and shutdown.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clock::SharedClock;
use crate::config::{Pool, PoolSet, SiteConfig};
use crate::intake::Intake;
use crate::net::Connector;
use crate::ratelimit::{keep_status, RateLimiter, RateMeter, RateStatus, DEFAULT_DEPTH};
use crate::smtp::ClientConfig;
use crate::spool::{SetAside, Spool};
use crate::worker::{self, DeliveryStats, Reachability, RelayLimits, Role, WorkerContext};

/// How the engine runs, beyond SITE.CFG.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Exit once nothing is queued (batch use, benchmarks, the demo).
    pub until_empty: bool,
    /// How long every worker serving a pool must have been unable to reach any host before that
    /// pool's copies go through SMTP_FORWARD (FWD-3).
    pub sync_grace: Duration,
    /// How often SPOOL/incoming is scanned for new jobs.
    pub ingest_interval: Duration,
    /// How long an idle worker waits before looking again (new copies wake it at once).
    pub idle_poll: Duration,
    /// How often `SPOOL/rate-status.json` (what `smtpw queue` shows of the rates) is rewritten.
    /// A simulated day in paused time would otherwise write it 86,400 times.
    pub status_interval: Duration,
    /// smtpw.toml: relays' TLS and AUTH, listener, admin, spool, cluster.
    pub settings: crate::settings::Settings,
    /// Rate-limit bucket depth (how much idle time saves up).
    pub rate_depth: Duration,
    /// LISTSERV's per-worker split of the rate limits instead of one shared limiter (RATE-4).
    pub per_worker_rate_split: bool,
    /// How long a stop waits for the transactions in flight. Then they are cut off and their
    /// copies go back to the queue untouched (the next run sends them again); outcomes already
    /// being recorded are still awaited, so nothing the relay decided is lost.
    pub drain_timeout: Duration,
    pub client: ClientConfig,
}

/// How long a stop waits for the transactions in flight by default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            until_empty: false,
            sync_grace: Duration::from_secs(15 * 60),
            ingest_interval: Duration::from_millis(200),
            idle_poll: Duration::from_secs(1),
            status_interval: Duration::from_secs(1),
            settings: crate::settings::Settings::default(),
            rate_depth: DEFAULT_DEPTH,
            per_worker_rate_split: false,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            client: ClientConfig::default(),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunSummary {
    pub copies: u64,
    pub transactions: u64,
    pub delivered: u64,
    pub failed: u64,
    pub deferred: u64,
    pub too_many_recoveries: u64,
    pub connections: u64,
    pub connect_failures: u64,
    /// Copies whose transaction the drain deadline cut off: they went back to the queue.
    pub returned_at_stop: u64,
    /// Copies delivered whose outcomes could not be recorded before the drain deadline (the
    /// spool could not write, e.g. a full disk): the next run repeats them.
    pub unrecorded_at_stop: u64,
    pub per_host: std::collections::BTreeMap<String, worker::HostStats>,
    /// With `until_empty`: the entries of `incoming/` it stopped without, because they can be
    /// neither read nor moved to quarantine (mail that was never sent).
    pub left_in_incoming: Vec<SetAside>,
}

/// A running engine.
pub struct Engine<S: Spool> {
    pub config: SiteConfig,
    pub spool: Arc<S>,
    pub stats: Arc<DeliveryStats>,
    pub shutdown: CancellationToken,
    pub opts: EngineOptions,
    connector: Arc<dyn Connector>,
    clock: SharedClock,
    spool_dir: PathBuf,
}

impl<S: Spool> Engine<S> {
    pub fn new(
        config: SiteConfig,
        spool: Arc<S>,
        spool_dir: PathBuf,
        connector: Arc<dyn Connector>,
        clock: SharedClock,
        opts: EngineOptions,
    ) -> Self {
        Self {
            config,
            spool,
            stats: Arc::new(DeliveryStats::default()),
            shutdown: CancellationToken::new(),
            opts,
            connector,
            clock,
            spool_dir,
        }
    }

    /// Run until shutdown (or until the queue is empty with `until_empty`).
    pub async fn run(&self) -> RunSummary {
        let cfg = &self.config;
        let reach = Arc::new(Reachability::default());
        let relay_limits = Arc::new(RelayLimits::default());
        let relays = Arc::new(crate::relay::RelayPolicy::new(
            self.opts.settings.relays.clone(),
        ));
        let unserved = cfg.unserved_pools();
        // One meter of bytes sent, shared by every limiter, kept in SPOOL/rate-status.json.
        let meter = Arc::new(RateMeter::new());
        let shared = Arc::new(
            RateLimiter::new(&cfg.rate_limits, self.opts.rate_depth).with_meter(meter.clone()),
        );
        RateStatus::new(cfg, self.opts.per_worker_rate_split, None, self.clock.now()).log_report();
        // Fires `drain_timeout` after a stop is requested: the workers then cut off what they
        // are still sending. (In a JoinSet: aborted when `run` ends or is dropped.)
        let cutoff = CancellationToken::new();
        let mut drain_deadline = tokio::task::JoinSet::new();
        drain_deadline.spawn({
            let (shutdown, cutoff, drain) = (
                self.shutdown.clone(),
                cutoff.clone(),
                self.opts.drain_timeout,
            );
            async move {
                shutdown.cancelled().await;
                tokio::time::sleep(drain).await;
                cutoff.cancel();
            }
        });
        let ctx_for = |limiter: Arc<RateLimiter>| {
            Arc::new(WorkerContext {
                spool: self.spool.clone(),
                connector: self.connector.clone(),
                clock: self.clock.clone(),
                limiter,
                client: self.opts.client.clone(),
                max_bsmtp: cfg.max_bsmtp as usize,
                shutdown: self.shutdown.clone(),
                cutoff: cutoff.clone(),
                stats: self.stats.clone(),
                reachability: reach.clone(),
                relay_limits: relay_limits.clone(),
                relays: relays.clone(),
                idle_poll: self.opts.idle_poll,
            })
        };
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(keep_status(
            cfg.clone(),
            self.opts.per_worker_rate_split,
            meter.clone(),
            self.clock.clone(),
            self.spool_dir.clone(),
            self.opts.status_interval,
            self.shutdown.clone(),
        ));
        let mut serving = [0usize; Pool::COUNT];
        for w in &cfg.workers {
            for p in w.pools.iter() {
                serving[p.index()] += 1;
            }
        }
        for w in &cfg.workers {
            let limiter = if self.opts.per_worker_rate_split {
                Arc::new(
                    RateLimiter::per_worker_share(
                        &cfg.rate_limits,
                        cfg.workers.len(),
                        &serving,
                        self.opts.rate_depth,
                    )
                    .with_meter(meter.clone()),
                )
            } else {
                shared.clone()
            };
            tasks.spawn(worker::run(Role::Worker(w.clone()), ctx_for(limiter)));
        }
        match &cfg.sync_forward {
            Some(target) => {
                let always = if cfg.workers.is_empty() {
                    PoolSet::ALL
                } else {
                    unserved
                };
                info!(host = %target, "synchronous path (SMTP_FORWARD) ready");
                tasks.spawn(worker::run(
                    Role::Sync {
                        target: target.clone(),
                        always,
                        workers: cfg.workers.clone(),
                        grace: self.opts.sync_grace,
                    },
                    ctx_for(shared.clone()),
                ));
            }
            None if cfg.workers.is_empty() => {
                warn!("neither SMTP_FORWARD nor SMTP_FORWARD_n is set: nothing can be delivered");
            }
            None => {}
        }
        // The intake loop, and the until-empty watch: it ends the run.
        let left_in_incoming = Intake {
            spool: self.spool.clone(),
            incoming: self.spool_dir.join(crate::spool::INCOMING),
            interval: self.opts.ingest_interval,
            until_empty: self.opts.until_empty,
            shutdown: self.shutdown.clone(),
        }
        .run()
        .await;
        while tasks.join_next().await.is_some() {}
        drain_deadline.abort_all();
        if cutoff.is_cancelled() {
            let n = self.stats.returned_at_stop.load(Ordering::Relaxed);
            warn!(
                copies = n,
                drain_timeout = ?self.opts.drain_timeout,
                "drain deadline reached: {n} copies in flight went back to the queue"
            );
        }
        RunSummary {
            left_in_incoming,
            ..self.summary()
        }
    }

    pub fn summary(&self) -> RunSummary {
        let s = &self.stats;
        RunSummary {
            copies: s.copies.load(Ordering::Relaxed),
            transactions: s.transactions.load(Ordering::Relaxed),
            delivered: s.delivered.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            deferred: s.deferred.load(Ordering::Relaxed),
            too_many_recoveries: s.too_many_recoveries.load(Ordering::Relaxed),
            connections: s.connections.load(Ordering::Relaxed),
            connect_failures: s.connect_failures.load(Ordering::Relaxed),
            returned_at_stop: s.returned_at_stop.load(Ordering::Relaxed),
            unrecorded_at_stop: s.unrecorded_at_stop.load(Ordering::Relaxed),
            per_host: s.per_host(),
            left_in_incoming: Vec::new(),
        }
    }
}
