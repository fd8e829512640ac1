//! Assembling and running everything: the intake loop (`intake`), the workers, the
//! synchronous fallback, the drain deadline and shutdown.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clock::{SharedClock, SystemClock};
use crate::config::{Pool, PoolSet, SiteConfig};
use crate::intake::Intake;
use crate::net::{Connector, TcpConnector};
use crate::ratelimit::{keep_status, RateLimiter, RateMeter, RateStatus, DEFAULT_DEPTH};
use crate::smtp::ClientConfig;
use crate::spool::{SetAside, Spool};
use crate::worker::{self, Reachability, RelayLimits, Role, WorkerContext};

pub use crate::worker::{
    DeliveryStats, HostStats, CLAIM_AHEAD, COMPLETIONS_OUTSTANDING, FAILOVER_RECHECK, QUIT_AT_STOP,
};

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
    /// How the SMTP client talks to the relays (HELO name, time-outs, PIPELINING).
    pub client: ClientConfig,
    /// What `GET /metrics` shows; give the spool the same one ([`SpoolOptions::metrics`]) so
    /// that the recipients counted are the ledger's.
    ///
    /// [`SpoolOptions::metrics`]: crate::spool::SpoolOptions::metrics
    pub metrics: Arc<crate::metrics::Metrics>,
    /// A rate limit shared with the other nodes of a cluster (RATE-6), on top of SITE.CFG's.
    pub shared_limit: Option<Arc<dyn crate::ratelimit::SharedLimit>>,
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
            metrics: crate::metrics::Metrics::new(),
            shared_limit: None,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunSummary {
    /// Copies attempted.
    pub copies: u64,
    /// SMTP transactions (MAIL commands) sent.
    pub transactions: u64,
    /// Recipients delivered.
    pub delivered: u64,
    /// Recipients failed.
    pub failed: u64,
    /// Recipients deferred (to be tried again).
    pub deferred: u64,
    /// Transactions that carried recipients over to the next one after a 452 or 552.
    pub too_many_recoveries: u64,
    /// Connections set up.
    pub connections: u64,
    /// Connection attempts that failed.
    pub connect_failures: u64,
    /// Copies whose transaction the drain deadline cut off: they went back to the queue.
    pub returned_at_stop: u64,
    /// Copies delivered whose outcomes could not be recorded before the drain deadline (the
    /// spool could not write, e.g. a full disk): the next run repeats them.
    pub unrecorded_at_stop: u64,
    /// The same counts for each relay host (`host:port`).
    pub per_host: std::collections::BTreeMap<String, HostStats>,
    /// With `until_empty`: the entries of `incoming/` it stopped without, because they can be
    /// neither read nor moved to quarantine (mail that was never sent).
    pub left_in_incoming: Vec<SetAside>,
}

/// A worker (or, `spec` = `None`, the synchronous path) of the running crew, and its own stop.
struct Member {
    spec: Option<crate::config::WorkerSpec>,
    stop: CancellationToken,
}

/// What a reload changed, one line each (what the log says).
pub fn describe_changes(old: &SiteConfig, new: &SiteConfig) -> Vec<String> {
    let mut out = Vec::new();
    for w in &old.workers {
        if !new.workers.contains(w) {
            out.push(format!(
                "worker {} ({}, pools {}) finishes its transaction and stops",
                w.id, w.primary, w.pools
            ));
        }
    }
    for w in &new.workers {
        if !old.workers.contains(w) {
            out.push(format!(
                "worker {} ({}, pools {}) starts",
                w.id, w.primary, w.pools
            ));
        }
    }
    if old.max_bsmtp != new.max_bsmtp {
        out.push(format!("MAXBSMTP {} -> {}", old.max_bsmtp, new.max_bsmtp));
    }
    if old.rate_limits != new.rate_limits {
        out.push(format!(
            "rate limits {:?} -> {:?} (every worker starts again with them)",
            old.rate_limits, new.rate_limits
        ));
    }
    if old.sync_forward != new.sync_forward {
        out.push(format!(
            "SMTP_FORWARD {} -> {}",
            old.sync_forward
                .as_ref()
                .map_or("none".into(), |h| h.to_string()),
            new.sync_forward
                .as_ref()
                .map_or("none".into(), |h| h.to_string())
        ));
    }
    if out.is_empty() && old != new {
        out.push("settings that take effect at the next start only (spool, ledger, node)".into());
    }
    out
}

/// A running engine: the workers, the synchronous fallback and the intake loop over one spool.
/// Build it with [`Engine::builder`].
pub struct Engine<S: Spool> {
    config: SiteConfig,
    spool: Arc<S>,
    stats: Arc<DeliveryStats>,
    shutdown: CancellationToken,
    opts: EngineOptions,
    /// The operator's suspensions of pools and relays (kept in the spool directory).
    suspensions: Arc<crate::suspend::Suspensions>,
    /// The configuration in force (the one given, then each reload's).
    reload_tx: tokio::sync::watch::Sender<Arc<SiteConfig>>,
    /// The relays' TLS and AUTH in force (smtpw.toml's, then each reload's): workers started
    /// after a change use the new ones.
    relays_tx: tokio::sync::watch::Sender<Arc<crate::relay::RelayPolicy>>,
    /// The cluster-wide limit in force (RATE-6), replaced when a reload changes it.
    limit_tx: tokio::sync::watch::Sender<Option<Arc<dyn crate::ratelimit::SharedLimit>>>,
    /// smtpw.toml's settings in force: what reloads applied, the rest as at start.
    settings_now: std::sync::Mutex<crate::settings::Settings>,
    connector: Arc<dyn Connector>,
    clock: SharedClock,
    spool_dir: PathBuf,
}

/// Builds an [`Engine`]: the site, the spool and its directory are required; the connector
/// (default [`TcpConnector::default`]), the clock (default
/// [`SystemClock`]) and the options (default [`EngineOptions::default`]) are not.
pub struct EngineBuilder<S: Spool> {
    config: SiteConfig,
    spool: Arc<S>,
    spool_dir: PathBuf,
    connector: Option<Arc<dyn Connector>>,
    clock: Option<SharedClock>,
    opts: EngineOptions,
}

impl<S: Spool> EngineBuilder<S> {
    /// How connections to the relays are opened (tests use a [`crate::net::MemoryConnector`]).
    pub fn connector(mut self, connector: Arc<dyn Connector>) -> Self {
        self.connector = Some(connector);
        self
    }

    /// The clock every decision reads (opentime windows, retries, expiry, rates).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// How the engine runs, beyond SITE.CFG.
    pub fn options(mut self, opts: EngineOptions) -> Self {
        self.opts = opts;
        self
    }

    /// The engine, not yet running: call [`Engine::run`] or [`Engine::run_until`].
    pub fn build(self) -> Engine<S> {
        let suspensions = crate::suspend::Suspensions::load(&self.spool_dir).unwrap_or_else(|e| {
            warn!(error = %e, "cannot read the suspensions; starting with none (the file is \
                replaced at the next suspend)");
            crate::suspend::Suspensions::empty(&self.spool_dir)
        });
        Engine {
            suspensions: Arc::new(suspensions),
            reload_tx: tokio::sync::watch::Sender::new(Arc::new(self.config.clone())),
            relays_tx: tokio::sync::watch::Sender::new(Arc::new(crate::relay::RelayPolicy::new(
                self.opts.settings.relays.clone(),
            ))),
            limit_tx: tokio::sync::watch::Sender::new(self.opts.shared_limit.clone()),
            settings_now: std::sync::Mutex::new(self.opts.settings.clone()),
            config: self.config,
            spool: self.spool,
            stats: Arc::new(DeliveryStats::default()),
            shutdown: CancellationToken::new(),
            opts: self.opts,
            connector: self
                .connector
                .unwrap_or_else(|| Arc::new(TcpConnector::default())),
            clock: self.clock.unwrap_or_else(SystemClock::shared),
            spool_dir: self.spool_dir,
        }
    }
}

impl<S: Spool> Engine<S> {
    /// Starts building an engine for the site `config` over `spool`, whose directory is
    /// `spool_dir` (where `incoming/` is scanned and `rate-status.json` written).
    pub fn builder(config: SiteConfig, spool: Arc<S>, spool_dir: PathBuf) -> EngineBuilder<S> {
        EngineBuilder {
            config,
            spool,
            spool_dir,
            connector: None,
            clock: None,
            opts: EngineOptions::default(),
        }
    }

    /// The site configuration it delivers by.
    pub fn config(&self) -> &SiteConfig {
        &self.config
    }

    /// The spool it delivers from.
    pub fn spool(&self) -> &Arc<S> {
        &self.spool
    }

    /// The options it runs with.
    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    /// Live counters of what it has done so far (the [`RunSummary`] is made of them).
    pub fn stats(&self) -> &Arc<DeliveryStats> {
        &self.stats
    }

    /// The stop handle: cancelling it stops a running engine the way [`Engine::run_until`]
    /// does (the transactions in flight finish within the drain time-out, then `run` returns).
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Runs until `shutdown` resolves (or until the queue is empty with `until_empty`), then
    /// drains: the transactions in flight finish within [`EngineOptions::drain_timeout`].
    pub async fn run_until(&self, shutdown: impl Future<Output = ()>) -> RunSummary {
        let run = self.run();
        tokio::pin!(run);
        tokio::select! {
            summary = &mut run => summary,
            () = shutdown => {
                self.shutdown.cancel();
                run.await
            }
        }
    }

    /// The operator's suspensions of pools and relays.
    pub fn suspensions(&self) -> &Arc<crate::suspend::Suspensions> {
        &self.suspensions
    }

    /// Apply a new SITE.CFG, already read and validated (OPS-8): workers it no longer has finish
    /// their transaction and stop, new ones start; a change of MAXBSMTP or the rate limits
    /// starts every worker again with them (each finishing its transaction first). Returns what
    /// changed (also logged), empty when nothing did.
    pub fn reload(&self, new: SiteConfig) -> Vec<String> {
        let old = self.reload_tx.borrow().clone();
        let changes = describe_changes(&old, &new);
        for c in &changes {
            info!("reload: {c}");
        }
        if changes.is_empty() {
            info!("reload: nothing changed");
        } else {
            if old.max_bsmtp != new.max_bsmtp {
                // The jobs ingested from now on are split by it too.
                self.spool.set_max_bsmtp(new.max_bsmtp);
            }
            self.reload_tx.send_replace(Arc::new(new));
        }
        changes
    }

    /// Apply a new smtpw.toml, already read and validated (OPS-8): changed `[relays]` settings
    /// start every worker again with them (each finishing its transaction first), so the next
    /// connection each opens uses them; what takes effect only at the next start (`[listen]`,
    /// `[admin]`, `[spool]`, `[cluster] node_timeout`) is said and otherwise left alone.
    /// `[cluster] rate_limit` is reported here and applied by [`Engine::set_shared_limit`]
    /// (opening it takes the database). Returns what changed (also logged), never a secret.
    pub fn reload_settings(
        &self,
        new: &crate::settings::Settings,
    ) -> crate::settings::SettingsChanges {
        let mut now = self
            .settings_now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changes = crate::settings::describe_changes(&now, new);
        for c in &changes.applied {
            info!("reload: {c}");
        }
        for c in &changes.at_restart {
            warn!("reload: {c}");
        }
        if changes.relays {
            self.relays_tx
                .send_replace(Arc::new(crate::relay::RelayPolicy::new(new.relays.clone())));
        }
        *now = crate::settings::applied(&now, new);
        changes
    }

    /// Replace the cluster-wide limit (RATE-6) after a reload changed `[cluster] rate_limit`:
    /// every worker starts again with it (each finishing its transaction first).
    pub fn set_shared_limit(&self, limit: Option<Arc<dyn crate::ratelimit::SharedLimit>>) {
        self.limit_tx.send_replace(limit);
    }

    /// smtpw.toml's settings in force (those a reload applied, the rest as at start).
    pub fn settings_in_force(&self) -> crate::settings::Settings {
        self.settings_now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The SITE.CFG in force (the last reload's).
    pub fn current_config(&self) -> Arc<SiteConfig> {
        self.reload_tx.borrow().clone()
    }

    /// The engine's clock (what suspensions and retries are timed by).
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Runs until [`Engine::shutdown`] is cancelled (or until the queue is empty with `until_empty`).
    pub async fn run(&self) -> RunSummary {
        let cfg = &self.config;
        let reach = Arc::new(Reachability::default());
        let relay_limits = Arc::new(RelayLimits::default());
        let mut relays_rx = self.relays_tx.subscribe();
        let mut limit_rx = self.limit_tx.subscribe();
        let mut relays = relays_rx.borrow_and_update().clone();
        let mut shared_limit = limit_rx.borrow_and_update().clone();
        // One meter of bytes sent, shared by every limiter, kept in SPOOL/rate-status.json.
        let meter = Arc::new(RateMeter::new());
        let mut shared = Arc::new(
            RateLimiter::new(&cfg.rate_limits, self.opts.rate_depth)
                .with_meter(meter.clone())
                .with_shared(shared_limit.clone()),
        );
        let rates = RateStatus::new(cfg, self.opts.per_worker_rate_split, None, self.clock.now());
        rates.log_report();
        self.opts.metrics.set_rates(rates);
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
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(keep_status(
            self.opts.metrics.clone(),
            self.reload_tx.subscribe(),
            self.opts.per_worker_rate_split,
            meter.clone(),
            self.clock.clone(),
            self.spool_dir.clone(),
            self.opts.status_interval,
            self.shutdown.clone(),
        ));
        // The workers, started again as reloads change them (OPS-8).
        let mut reloads = self.reload_tx.subscribe();
        reloads.mark_unchanged();
        let crew = async {
            let mut crew: Vec<Member> = Vec::new();
            let mut running = tokio::task::JoinSet::new();
            let mut current: Option<Arc<SiteConfig>> = None;
            let mut next = Some(Arc::new(cfg.clone()));
            // A reload of smtpw.toml changed the relays or the cluster limit: every worker
            // starts again with them.
            let mut restart_all = false;
            loop {
                if let Some(cfg) = next.take() {
                    let keep_all = !std::mem::take(&mut restart_all)
                        && current.as_ref().is_some_and(|c| {
                            c.max_bsmtp == cfg.max_bsmtp
                                && c.rate_limits == cfg.rate_limits
                                && (!self.opts.per_worker_rate_split
                                    || c.workers.len() == cfg.workers.len())
                        });
                    // Retire what the new configuration does not have as it is: each finishes
                    // its transaction (and records it), then stops.
                    crew.retain(|m| {
                        let kept = keep_all
                            && match &m.spec {
                                Some(w) => cfg.workers.contains(w),
                                None => current.as_ref().is_some_and(|c| {
                                    c.sync_forward == cfg.sync_forward && c.workers == cfg.workers
                                }),
                            };
                        if !kept {
                            m.stop.cancel();
                        }
                        kept
                    });
                    let limiter = if keep_all {
                        shared.clone()
                    } else {
                        Arc::new(
                            RateLimiter::new(&cfg.rate_limits, self.opts.rate_depth)
                                .with_meter(meter.clone())
                                .with_shared(shared_limit.clone()),
                        )
                    };
                    if !keep_all {
                        shared = limiter.clone();
                    }
                    let ctx_for = |limiter: Arc<RateLimiter>, stop: CancellationToken| {
                        Arc::new(WorkerContext {
                            spool: self.spool.clone(),
                            connector: self.connector.clone(),
                            clock: self.clock.clone(),
                            limiter,
                            client: self.opts.client.clone(),
                            max_bsmtp: cfg.max_bsmtp as usize,
                            workers: cfg.workers.len().max(1),
                            shutdown: stop.clone(),
                            cutoff: cutoff.clone(),
                            stats: self.stats.clone(),
                            reachability: reach.clone(),
                            relay_limits: relay_limits.clone(),
                            relays: relays.clone(),
                            idle_poll: self.opts.idle_poll,
                            metrics: self.opts.metrics.clone(),
                            suspensions: self.suspensions.clone(),
                        })
                    };
                    let mut serving = [0usize; Pool::COUNT];
                    for w in &cfg.workers {
                        for p in w.pools.iter() {
                            serving[p.index()] += 1;
                        }
                    }
                    for w in &cfg.workers {
                        if crew.iter().any(|m| m.spec.as_ref() == Some(w)) {
                            continue;
                        }
                        let limiter = if self.opts.per_worker_rate_split {
                            Arc::new(
                                RateLimiter::per_worker_share(
                                    &cfg.rate_limits,
                                    cfg.workers.len(),
                                    &serving,
                                    self.opts.rate_depth,
                                )
                                .with_meter(meter.clone())
                                .with_shared(shared_limit.clone()),
                            )
                        } else {
                            limiter.clone()
                        };
                        let stop = self.shutdown.child_token();
                        running.spawn(worker::run(
                            Role::Worker(w.clone()),
                            ctx_for(limiter, stop.clone()),
                        ));
                        crew.push(Member {
                            spec: Some(w.clone()),
                            stop,
                        });
                    }
                    let has_sync = crew.iter().any(|m| m.spec.is_none());
                    match &cfg.sync_forward {
                        Some(target) if !has_sync => {
                            let always = if cfg.workers.is_empty() {
                                PoolSet::ALL
                            } else {
                                cfg.unserved_pools()
                            };
                            info!(host = %target, "synchronous path (SMTP_FORWARD) ready");
                            let stop = self.shutdown.child_token();
                            running.spawn(worker::run(
                                Role::Sync {
                                    target: target.clone(),
                                    always,
                                    workers: cfg.workers.clone(),
                                    grace: self.opts.sync_grace,
                                },
                                ctx_for(limiter.clone(), stop.clone()),
                            ));
                            crew.push(Member { spec: None, stop });
                        }
                        None if cfg.workers.is_empty() => {
                            warn!("neither SMTP_FORWARD nor SMTP_FORWARD_n is set: nothing can be delivered");
                        }
                        _ => {}
                    }
                    current = Some(cfg);
                }
                tokio::select! {
                    () = self.shutdown.cancelled() => break,
                    changed = reloads.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        next = Some(reloads.borrow_and_update().clone());
                    }
                    changed = relays_rx.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        relays = relays_rx.borrow_and_update().clone();
                        restart_all = true;
                        next = Some(reloads.borrow().clone());
                    }
                    changed = limit_rx.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        shared_limit = limit_rx.borrow_and_update().clone();
                        restart_all = true;
                        next = Some(reloads.borrow().clone());
                    }
                    // Retired workers end here as they finish.
                    Some(_) = running.join_next(), if !running.is_empty() => {}
                }
            }
            while running.join_next().await.is_some() {}
        };
        // The intake loop, and the until-empty watch: it ends the run.
        let intake = Intake {
            spool: self.spool.clone(),
            incoming: self.spool_dir.join(crate::spool::INCOMING),
            interval: self.opts.ingest_interval,
            until_empty: self.opts.until_empty,
            shutdown: self.shutdown.clone(),
            metrics: self.opts.metrics.clone(),
        }
        .run();
        let (left_in_incoming, ()) = tokio::join!(intake, crew);
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

    /// What the engine has done so far (`left_in_incoming` is only filled by [`Engine::run`]).
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
