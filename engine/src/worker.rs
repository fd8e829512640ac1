//! One SMTP worker: route by the clock, claim the oldest copy of a served pool, keep a connection,
//! pass the rate gate, run the transaction, record every recipient's outcome.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::clock::SharedClock;
use crate::config::{HostPort, Pool, PoolSet, TimeOfDay, WorkerSpec};
use crate::metrics::{ConnectionGuard, Metrics, WorkerState};
use crate::net::{BoxFuture, Connector};
use crate::ratelimit::RateLimiter;
use crate::route::{route, Via};
use crate::smtp::{Client, ClientConfig, ConnectError, DataGate, Message, Reply};
use crate::spool::{ClaimedCopy, CopyResult, Outcome, RcptOutcome, Spool, SpoolError};

/// Back-off for an unreachable host with no failover (WRK-6): 30 s doubling to 15 min.
pub const UNREACHABLE_BACKOFF_MIN: Duration = Duration::from_secs(30);
pub const UNREACHABLE_BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);

/// How long a connection to the failover, opened because the primary was unreachable, is used
/// before the primary is tried again.
pub const FAILOVER_RECHECK: Duration = Duration::from_secs(5 * 60);
/// How long a stopping worker waits for the relay's reply to QUIT.
pub const QUIT_AT_STOP: Duration = Duration::from_secs(2);
/// How many copies' worth of durable completions (`Spool::complete_many`: the writer's ledger
/// `fdatasync` and SQLite commit) a worker leaves outstanding while it claims and delivers its
/// next batch: at most this many times MAXBSMTP recipients (however many copies hold them). A
/// copy stays in flight in the spool until its completion is durable, so a crash repeats at
/// most these plus the batch being delivered (at most MAXBSMTP recipients, or one copy): at
/// most `(COMPLETIONS_OUTSTANDING + 1) * MAXBSMTP` recipients per worker. A stop waits for all
/// of them.
pub const COMPLETIONS_OUTSTANDING: usize = 2;
/// The most copies a worker claims ahead for one connection (TXN-13): it delivers them with
/// their transactions in flight together (up to the connection's window). The batch (the copy
/// plus those claimed ahead) holds at most MAXBSMTP recipients ([`Spool::claim_many`]'s
/// budget), so claiming ahead does not widen the crash bound: it pays off for copies of few
/// recipients (mail merge: 16 copies of one recipient where MAXBSMTP >= 16), not for full ones.
pub const CLAIM_AHEAD: usize = 16;

/// Counters every worker adds to, read by the CLI and the tests.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// SMTP transactions (MAIL commands) sent.
    pub transactions: AtomicU64,
    /// Copies attempted.
    pub copies: AtomicU64,
    /// Recipients delivered.
    pub delivered: AtomicU64,
    /// Recipients failed.
    pub failed: AtomicU64,
    /// Recipients deferred.
    pub deferred: AtomicU64,
    /// Transactions that carried recipients over to the next one after a 452 or 552.
    pub too_many_recoveries: AtomicU64,
    /// Connections set up.
    pub connections: AtomicU64,
    /// Connection attempts that failed.
    pub connect_failures: AtomicU64,
    /// Copies whose transaction the drain deadline cut off (given back to the queue).
    pub returned_at_stop: AtomicU64,
    /// Copies delivered whose outcomes the spool could not record before the drain deadline
    /// (a full disk): the next run repeats them.
    pub unrecorded_at_stop: AtomicU64,
    per_host: Mutex<BTreeMap<String, HostStats>>,
}

/// What one relay host received.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct HostStats {
    /// Copies sent to it.
    pub copies: u64,
    /// Recipients delivered through it.
    pub delivered: u64,
    /// Recipients it refused.
    pub failed: u64,
    /// Recipients deferred on it.
    pub deferred: u64,
}

impl DeliveryStats {
    /// The counts of each relay host (`host:port`) so far.
    pub fn per_host(&self) -> BTreeMap<String, HostStats> {
        self.per_host
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn record(&self, host: &str, results: &[RcptOutcome], recoveries: u32, transactions: u32) {
        let (mut d, mut f, mut q) = (0, 0, 0);
        for r in results {
            match r.outcome {
                Outcome::Delivered => d += 1,
                Outcome::Failed => f += 1,
                Outcome::Deferred => q += 1,
            }
        }
        self.copies.fetch_add(1, Ordering::Relaxed);
        self.transactions
            .fetch_add(u64::from(transactions), Ordering::Relaxed);
        self.delivered.fetch_add(d, Ordering::Relaxed);
        self.failed.fetch_add(f, Ordering::Relaxed);
        self.deferred.fetch_add(q, Ordering::Relaxed);
        self.too_many_recoveries
            .fetch_add(u64::from(recoveries), Ordering::Relaxed);
        let mut m = self.per_host.lock().unwrap_or_else(PoisonError::into_inner);
        let h = m.entry(host.to_string()).or_default();
        h.copies += 1;
        h.delivered += d;
        h.failed += f;
        h.deferred += q;
    }
}

/// Which hosts of the site are unreachable right now, shared by the workers and the synchronous
/// fallback (FWD-3).
#[derive(Debug, Default)]
pub struct Reachability {
    /// Worker id -> since when (monotonic) neither of its hosts could be reached.
    stranded_since: Mutex<BTreeMap<u32, tokio::time::Instant>>,
}

impl Reachability {
    fn set(&self, worker: u32, stranded: bool) {
        let mut m = self
            .stranded_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if stranded {
            m.entry(worker).or_insert_with(tokio::time::Instant::now);
        } else {
            m.remove(&worker);
        }
    }

    /// Pools whose every serving worker has been stranded for at least `grace`.
    pub fn stranded_pools(&self, workers: &[WorkerSpec], grace: Duration) -> PoolSet {
        let m = self
            .stranded_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = tokio::time::Instant::now();
        Pool::all()
            .filter(|p| {
                let mut serving = workers.iter().filter(|w| w.pools.contains(*p)).peekable();
                serving.peek().is_some()
                    && serving.all(|w| {
                        m.get(&w.id)
                            .is_some_and(|t| now.duration_since(*t) >= grace)
                    })
            })
            .collect()
    }
}

/// Recipients-per-transaction limits learned from relays (TXN-3: "remember the relay's observed
/// limit"), shared by every worker so that a new connection starts with what earlier ones learned.
#[derive(Debug, Default)]
pub struct RelayLimits {
    learned: Mutex<std::collections::HashMap<HostPort, usize>>,
}

impl RelayLimits {
    pub fn get(&self, relay: &HostPort) -> Option<usize> {
        self.learned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(relay)
            .copied()
    }

    /// Remember `limit` for `relay` (only ever lowers it).
    pub fn learn(&self, relay: &HostPort, limit: usize) {
        let mut m = self.learned.lock().unwrap_or_else(PoisonError::into_inner);
        let e = m.entry(relay.clone()).or_insert(limit);
        *e = (*e).min(limit);
    }
}

/// The rate gate for one copy's pool.
struct PoolGate<'a> {
    limiter: &'a RateLimiter,
    pool: Pool,
    /// The first transaction's wait was already done by the worker (where a stop can still
    /// give the copy back untouched).
    prepaid: AtomicBool,
}

impl DataGate for PoolGate<'_> {
    fn acquire(&self, bytes: u64) -> BoxFuture<'_, ()> {
        if self.prepaid.swap(false, Ordering::Relaxed) {
            return Box::pin(std::future::ready(()));
        }
        Box::pin(self.limiter.acquire(self.pool, bytes))
    }
}

/// Everything a worker shares with the others.
pub struct WorkerContext<S: Spool> {
    pub spool: Arc<S>,
    pub connector: Arc<dyn Connector>,
    pub clock: SharedClock,
    pub limiter: Arc<RateLimiter>,
    pub client: ClientConfig,
    pub max_bsmtp: usize,
    /// How many workers the site has: a worker claims ahead at most its share of the queue.
    pub workers: usize,
    /// A stop was requested: finish the transaction under way, start no other.
    pub shutdown: CancellationToken,
    /// The stop's drain deadline has passed: cut off the transaction under way too (its copy
    /// goes back to the queue).
    pub cutoff: CancellationToken,
    pub stats: Arc<DeliveryStats>,
    pub reachability: Arc<Reachability>,
    pub relay_limits: Arc<RelayLimits>,
    /// Each relay's TLS and AUTH (TXN-10 to TXN-12).
    pub relays: Arc<crate::relay::RelayPolicy>,
    /// How long to wait for work before looking again (new copies also wake workers at once).
    pub idle_poll: Duration,
    /// Connections, transactions, replies, relay errors and worker states (`GET /metrics`).
    pub metrics: Arc<Metrics>,
    /// Pools and relays the operator suspended: left out of every claim and connection.
    pub suspensions: Arc<crate::suspend::Suspensions>,
}

/// An open connection and where it goes.
struct Open {
    client: Client,
    target: HostPort,
    opened: tokio::time::Instant,
    /// Counted in `smtpw_connections` while open.
    _counted: ConnectionGuard,
}

/// What a worker is: its spec, or the synchronous fallback path.
pub enum Role {
    Worker(WorkerSpec),
    /// SMTP_FORWARD: serves `always` pools, plus pools that the workers left stranded; no rate limit.
    Sync {
        target: HostPort,
        always: PoolSet,
        workers: Vec<WorkerSpec>,
        grace: Duration,
    },
}

impl Role {
    fn name(&self) -> String {
        match self {
            Role::Worker(w) => format!("worker {}", w.id),
            Role::Sync { .. } => "sync".to_string(),
        }
    }
}

/// Run one worker until shutdown.
pub async fn run<S: Spool>(role: Role, ctx: Arc<WorkerContext<S>>) {
    let name = role.name();
    let mut open: Option<Open> = None;
    let mut backoff = UNREACHABLE_BACKOFF_MIN;
    let notify = ctx.spool.notify();
    let mut was_stranded = PoolSet::EMPTY;
    // No host could be reached at the last try.
    let mut stranded = false;
    let mut pending = Completions::default();
    let slot = ctx.metrics.worker_slot();
    let state = |s: WorkerState| ctx.metrics.worker_state(slot, s);
    loop {
        if ctx.shutdown.is_cancelled() {
            break;
        }
        // Registered before the claim, so a copy queued between the claim and the wait wakes us.
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();

        // Which hosts, which pools, now, less what the operator suspended (OPS-5).
        let (targets, pools, limited) = plan(&role, &ctx);
        let (targets, pools, held) = ctx.suspensions.filter(targets, pools, ctx.clock.now());
        if let Role::Sync {
            target,
            always,
            grace,
            ..
        } = &role
        {
            log_stranded(target, *always, *grace, pools, &mut was_stranded);
            if pools.is_empty() {
                // Nothing to do until some pool is stranded: look again soon (the grace period
                // of a stranded pool ends without any notification).
                state(WorkerState::Idle);
                close(&ctx, &mut open).await;
                idle(&ctx, notified, None, ctx.idle_poll).await;
                continue;
            }
        }
        if held && (targets.is_empty() || pools.is_empty()) {
            // Suspended: nothing to do until the suspension ends (by itself, or a resume).
            state(WorkerState::Suspended);
            close(&ctx, &mut open).await;
            idle(&ctx, notified, None, ctx.idle_poll).await;
            continue;
        }
        if targets.is_empty() || pools.is_empty() {
            state(WorkerState::OutsideWindow);
            close(&ctx, &mut open).await;
            // Inactive (outside every window with no failover): look again at the next minute.
            let now = ctx.clock.local_time();
            let to_next_minute = Duration::from_secs(60 - u64::from(now.second().unsigned_abs()))
                .saturating_sub(Duration::from_nanos(u64::from(
                    now.subsec_nanosecond().unsigned_abs(),
                )));
            idle(
                &ctx,
                notified,
                None,
                to_next_minute.max(Duration::from_millis(1)),
            )
            .await;
            continue;
        }
        // A connection to a host the route no longer allows (e.g. the window closed) is closed.
        // A connection to the failover, opened because the primary was unreachable, is kept
        // until it ends or for FAILOVER_RECHECK at most; the primary is tried again on the next
        // new connection (WRK-6). Without the bound, a busy connection to the failover would
        // never end and the primary would never be tried again.
        if open.as_ref().is_some_and(|o| {
            !targets.contains(&o.target)
                || (targets.first() != Some(&o.target) && o.opened.elapsed() >= FAILOVER_RECHECK)
        }) {
            close(&ctx, &mut open).await;
        }
        let copy = match ctx.spool.claim(pools).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                if !pending.is_empty() {
                    // Nothing to claim: let the outstanding completions finish first (one may
                    // defer a copy, whose due time the idle wait needs), then look again.
                    pending.drain(&ctx, &name).await;
                    continue;
                }
                if stranded && open.is_none() {
                    state(WorkerState::BackingOff);
                    // No host was reachable at the last try and there is nothing to deliver
                    // (the sync path may have taken it all): look for the hosts anyway, on the
                    // same back-off schedule, so that the pool stops counting as stranded as
                    // soon as a host is back (FWD-3), not only when new work arrives.
                    match connect_or_back_off(
                        &ctx,
                        &role,
                        &name,
                        &targets,
                        pools,
                        None,
                        &mut pending,
                        &mut backoff,
                        slot,
                    )
                    .await
                    {
                        Attempt::Stopped => break,
                        Attempt::Unreachable => {}
                        Attempt::Connected(o) => {
                            info!(worker = %name, "a host is reachable again");
                            open = Some(*o);
                            stranded = false;
                        }
                    }
                    continue;
                }
                state(WorkerState::Idle);
                idle(&ctx, notified, Some(pools), ctx.idle_poll).await;
                continue;
            }
            Err(e) => {
                warn!(worker = %name, error = %e, "claim failed");
                idle(&ctx, notified, Some(pools), ctx.idle_poll).await;
                continue;
            }
        };
        state(WorkerState::Active);
        // An idle connection may have been closed by the relay (idle time-out, 421).
        if let Some(o) = open.as_mut() {
            if !o.client.check_alive().await {
                open = None;
            }
        }
        if open.is_none() {
            match connect_or_back_off(
                &ctx,
                &role,
                &name,
                &targets,
                pools,
                Some(&copy),
                &mut pending,
                &mut backoff,
                slot,
            )
            .await
            {
                Attempt::Stopped => break,
                Attempt::Unreachable => {
                    stranded = true;
                    continue;
                }
                Attempt::Connected(o) => {
                    open = Some(*o);
                    stranded = false;
                }
            }
        }
        let Some(o) = open.as_mut() else { continue };
        // Claim ahead (TXN-13): as many copies as the connection keeps transactions in flight,
        // so that the next messages' commands follow before the replies to the earlier ones.
        // Only where no rate limit can make a copy wait inside the transaction window (a stop
        // gives back a copy that waits for its rate, which it cannot do once the copy is in a
        // window with others).
        let mut batch = vec![copy];
        // At most half this worker's share of what is queued, so that a short queue is still
        // shared by every worker as their weights say (WRK-3); none ahead on a failover
        // connection, which gives way to the primary after FAILOVER_RECHECK.
        let share = ctx.spool.queued_copies() / (2 * ctx.workers as u64).max(1);
        let ahead = o
            .client
            .window()
            .min(CLAIM_AHEAD)
            .min(usize::try_from(share).unwrap_or(usize::MAX).max(1));
        let on_failover = targets.first() != Some(&o.target);
        // The batch holds at most MAXBSMTP recipients (the copy may be alone at up to MAXBSMTP),
        // the in-flight bound of a crash (see COMPLETIONS_OUTSTANDING).
        let room = ctx.max_bsmtp.saturating_sub(batch[0].rcpts.len());
        if ahead > 1
            && room > 0
            && !on_failover
            && !(limited && pools.iter().any(|p| ctx.limiter.may_wait(p)))
        {
            // The rest in one go: one read of the spool for all of them (Spool::claim_many).
            if !ctx.shutdown.is_cancelled() {
                match ctx.spool.claim_many(pools, ahead - 1, room).await {
                    Ok(more) => batch.extend(more),
                    Err(e) => warn!(worker = %name, error = %e, "claim failed"),
                }
            }
        }
        if deliver(&ctx, &name, o, batch, limited, &mut pending).await {
            // The drain deadline cut the transactions off: those not over went back to the
            // queue untouched and the connection (mid-transaction) is dropped.
            open = None;
            break;
        }
        if open.as_ref().is_some_and(|o| !o.client.is_usable()) {
            open = None;
        }
    }
    // Every transaction's outcome is durable before the worker stops (the drain deadline does
    // not cut these: the relay has decided, and a lost outcome would repeat the copy), unless
    // the spool cannot record at all (a full disk): then the drain deadline ends the wait, and
    // the next run repeats those copies (they are still in flight in the database).
    pending.drain(&ctx, &name).await;
    // At a stop, QUIT is a courtesy: a relay slow to answer it does not hold the stop up.
    let _ = tokio::time::timeout(QUIT_AT_STOP, close(&ctx, &mut open)).await;
    ctx.metrics.worker_gone(slot);
    debug!(worker = %name, "stopped");
}

/// FWD-3: the log says when a pool's copies start (and stop) going through SMTP_FORWARD
/// because no worker host of the pool could be reached for the grace period.
fn log_stranded(
    target: &HostPort,
    always: PoolSet,
    grace: Duration,
    pools: PoolSet,
    was: &mut PoolSet,
) {
    let now: PoolSet = pools.iter().filter(|p| !always.contains(*p)).collect();
    if now == *was {
        return;
    }
    let started: PoolSet = now.iter().filter(|p| !was.contains(*p)).collect();
    let ended: PoolSet = was.iter().filter(|p| !now.contains(*p)).collect();
    if !started.is_empty() {
        warn!(pools = %started, host = %target, grace = ?grace,
            "every worker host of these pools has been unreachable for the grace period; their copies go through SMTP_FORWARD");
    }
    if !ended.is_empty() {
        info!(pools = %ended, host = %target,
            "worker hosts of these pools reachable again; their copies no longer go through SMTP_FORWARD");
    }
    *was = now;
}

/// The hosts to try in order, the pools to claim from, and whether rate limits apply.
fn plan<S: Spool>(role: &Role, ctx: &WorkerContext<S>) -> (Vec<HostPort>, PoolSet, bool) {
    match role {
        Role::Worker(w) => {
            let t = TimeOfDay::from_civil(ctx.clock.local_time());
            let targets: Vec<HostPort> = match route(w, t).via {
                Via::Primary => std::iter::once(w.primary.clone())
                    .chain(w.failover.clone())
                    .collect(),
                Via::Failover => w.failover.iter().cloned().collect(),
                Via::Inactive => Vec::new(),
            };
            (targets, w.pools, true)
        }
        Role::Sync {
            target,
            always,
            workers,
            grace,
        } => {
            let stranded = ctx.reachability.stranded_pools(workers, *grace);
            let pools: PoolSet = always.iter().chain(stranded.iter()).collect();
            (vec![target.clone()], pools, false)
        }
    }
}

/// How an attempt to reach a worker's hosts ended.
enum Attempt {
    Connected(Box<Open>),
    /// No host answered; the claimed copy was given back (or, its job expired, failed) and the
    /// back-off has been waited out.
    Unreachable,
    /// A stop arrived (any claimed copy went back to the queue).
    Stopped,
}

/// Try the route's hosts in order. Setting up a connection is not a transaction, so a stop
/// cancels it. The result is recorded for the synchronous path's grace period. When no host
/// answers, the claimed copy (if any) goes back to the queue, untouched, for other workers to
/// take, unless its job has outlived the lifetime: a host that cannot be reached is a failure
/// like any other, so then the copy is completed with every recipient deferred by the reason
/// (which the spool's lifetime rule turns into failed), and so is every further expired copy
/// waiting for these pools. Then the worker waits out its back-off (30 s doubling to 15 min)
/// before the next try.
#[allow(clippy::too_many_arguments)]
async fn connect_or_back_off<'c, S: Spool>(
    ctx: &'c WorkerContext<S>,
    role: &Role,
    name: &str,
    targets: &[HostPort],
    pools: PoolSet,
    copy: Option<&ClaimedCopy>,
    pending: &mut Completions<'c>,
    backoff: &mut Duration,
    slot: usize,
) -> Attempt {
    let connected = tokio::select! {
        biased;
        _ = ctx.shutdown.cancelled() => None,
        c = connect(ctx, name, targets) => Some(c),
    };
    let Some(connected) = connected else {
        if let Some(c) = copy {
            ctx.spool.release(c.copy_id);
        }
        return Attempt::Stopped;
    };
    if let Role::Worker(w) = role {
        ctx.reachability.set(w.id, connected.is_err());
    }
    let reason = match connected {
        Ok(o) => {
            *backoff = UNREACHABLE_BACKOFF_MIN;
            return Attempt::Connected(Box::new(o));
        }
        Err(reason) => reason,
    };
    // Each host is tried again once the back-off is over (shown by `smtpw ctl queue`).
    if let Ok(wait) = jiff::SignedDuration::try_from(*backoff) {
        let again = ctx.clock.now().checked_add(wait).ok();
        for t in targets {
            ctx.metrics.relay_retry(&t.to_string(), again);
        }
    }
    match copy {
        Some(c) if ctx.spool.has_expired(c.job_created, ctx.clock.now()) => {
            let copies = expire_unreachable(ctx, name, pools, c, &reason, pending).await;
            warn!(worker = %name, copies, reason = %reason,
                "no host reachable and the job outlived its lifetime: the copy's recipients fail");
        }
        Some(c) => {
            ctx.spool.release(c.copy_id);
            warn!(worker = %name, retry_in = ?*backoff, "no host reachable; the copy goes back to the queue");
        }
        None => warn!(worker = %name, retry_in = ?*backoff, "still no host reachable"),
    }
    ctx.metrics.worker_state(slot, WorkerState::BackingOff);
    let stopped = tokio::select! {
        _ = ctx.shutdown.cancelled() => true,
        _ = tokio::time::sleep(*backoff) => false,
    };
    *backoff = (*backoff * 2).min(UNREACHABLE_BACKOFF_MAX);
    if stopped {
        Attempt::Stopped
    } else {
        Attempt::Unreachable
    }
}

/// Complete `first`, then every further claimable copy of `pools` whose job has expired too
/// (oldest first, until one that has not, which goes back untouched), each with every recipient
/// deferred by `reason`: the spool fails them as expired. Without this sweep a backlog behind an
/// unreachable host would expire one copy per back-off. Returns the copies completed.
async fn expire_unreachable<'c, S: Spool>(
    ctx: &'c WorkerContext<S>,
    name: &str,
    pools: PoolSet,
    first: &ClaimedCopy,
    reason: &Reply,
    pending: &mut Completions<'c>,
) -> u64 {
    let complete = |c: &ClaimedCopy| {
        ctx.stats.copies.fetch_add(1, Ordering::Relaxed);
        ctx.stats
            .deferred
            .fetch_add(c.rcpts.len() as u64, Ordering::Relaxed);
        let reply = reason.to_string();
        let rcpts = c
            .rcpts
            .iter()
            .map(|_| RcptOutcome {
                outcome: Outcome::Deferred,
                reply: reply.clone(),
            })
            .collect();
        (
            c.copy_id,
            CopyResult {
                relay: None,
                tls: None,
                rcpts,
            },
        )
    };
    let limit = outstanding_rcpts(ctx);
    pending.push(ctx, name, vec![complete(first)], limit).await;
    let mut n = 1;
    while !ctx.shutdown.is_cancelled() {
        match ctx.spool.claim(pools).await {
            Ok(Some(c)) if ctx.spool.has_expired(c.job_created, ctx.clock.now()) => {
                pending.push(ctx, name, vec![complete(&c)], limit).await;
                n += 1;
            }
            Ok(Some(c)) => {
                ctx.spool.release(c.copy_id);
                break;
            }
            Ok(None) => break,
            Err(e) => {
                warn!(worker = %name, error = %e, "claim failed");
                break;
            }
        }
    }
    n
}

/// The first of `targets` that answers, or why none did (one part per host).
async fn connect<S: Spool>(
    ctx: &WorkerContext<S>,
    name: &str,
    targets: &[HostPort],
) -> Result<Open, Reply> {
    let mut failures: Vec<(&HostPort, String)> = Vec::with_capacity(targets.len());
    for target in targets {
        ctx.stats.connections.fetch_add(1, Ordering::Relaxed);
        let error = match ctx.relays.security(target).await {
            // A ca_file that cannot be read, a token command that fails: nothing is sent.
            Err(why) => why,
            Ok(security) => match ctx.connector.connect(target).await {
                Ok(stream) => match Client::connect(stream, &ctx.client, &security).await {
                    Ok(mut client) => {
                        if let Some(l) = ctx.relay_limits.get(target) {
                            client.set_learned_rcpt_limit(l);
                        }
                        debug!(worker = %name, host = %target,
                            tls = client.tls_version().unwrap_or("none"),
                            user = client.authenticated().unwrap_or("-"), "connected");
                        let relay = target.to_string();
                        ctx.metrics.relay_reached(&relay);
                        return Ok(Open {
                            client,
                            target: target.clone(),
                            opened: tokio::time::Instant::now(),
                            _counted: ctx.metrics.connected(&relay),
                        });
                    }
                    Err(e) => {
                        if matches!(e, ConnectError::AuthRefused { .. }) {
                            // Our configuration's fault (TXN-12): an OAuth 2 token is fetched
                            // again for the next try.
                            ctx.relays.login_refused(target);
                        }
                        e.to_string()
                    }
                },
                Err(e) => ConnectError::Io(e).to_string(),
            },
        };
        ctx.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
        ctx.metrics
            .relay_error(&target.to_string(), &error, ctx.clock.now(), None);
        warn!(worker = %name, host = %target, error = %error, "host unreachable");
        failures.push((target, error));
    }
    Err(Reply::host_unreachable(failures))
}

/// The most recipients a worker's outstanding completions hold: `COMPLETIONS_OUTSTANDING` x
/// MAXBSMTP.
fn outstanding_rcpts<S: Spool>(ctx: &WorkerContext<S>) -> usize {
    COMPLETIONS_OUTSTANDING * ctx.max_bsmtp.max(1)
}

/// Outcomes being made durable for one worker, oldest first: each is a group of copies handed to
/// the spool together (one [`Spool::complete_many`]), with its copies' ids, and counts them
/// (copies, recipients).
#[derive(Default)]
struct Completions<'c> {
    groups: VecDeque<Recording<'c>>,
    /// Copies in `groups`.
    copies: usize,
    /// Recipients in `groups`.
    rcpts: usize,
}

/// A group of outcomes the spool is recording.
struct Recording<'c> {
    /// The spool's answer to come, one result per copy.
    answer: BoxFuture<'c, Vec<Result<(), SpoolError>>>,
    /// The copies, in the answer's order.
    ids: Vec<i64>,
    /// Their recipients.
    rcpts: usize,
}

impl<'c> Completions<'c> {
    fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Hand a group of copies' outcomes to the spool (one request), after waiting for the
    /// oldest outstanding completions while more than `limit` recipients would be under way
    /// ([`outstanding_rcpts`]; a group alone may be larger).
    ///
    /// The spool's future is polled once here, which hands the outcomes to its writer (both
    /// spools send them at the first poll), and then only when the answer is needed
    /// ([`Completions::wait_oldest`]). That first poll's waker wakes nobody: the writer's answer
    /// waits in the future without waking the worker. Before, each group was a task of its own
    /// (a spawn, two polls and a wake-up per single-recipient copy).
    async fn push<S: Spool>(
        &mut self,
        ctx: &'c WorkerContext<S>,
        name: &str,
        results: Vec<(i64, CopyResult)>,
        limit: usize,
    ) {
        if results.is_empty() {
            return;
        }
        let n = results.len();
        let k: usize = results.iter().map(|(_, r)| r.rcpts.len()).sum();
        while !self.groups.is_empty() && self.rcpts + k > limit.max(1) {
            self.wait_oldest(ctx, name).await;
        }
        let ids: Vec<i64> = results.iter().map(|(id, _)| *id).collect();
        let mut answer: BoxFuture<'c, _> = Box::pin(ctx.spool.complete_many(results));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if let std::task::Poll::Ready(results) = answer.as_mut().poll(&mut cx) {
            report(name, &ids, results);
            return;
        }
        self.copies += n;
        self.rcpts += k;
        self.groups.push_back(Recording {
            answer,
            ids,
            rcpts: k,
        });
    }

    /// Wait for the oldest outstanding completion. Once the drain deadline has passed and the
    /// spool cannot record at all (a full disk), give up every outstanding completion instead:
    /// they are counted in [`DeliveryStats::unrecorded_at_stop`], and the next run repeats
    /// those copies (the database still has them queued). So no wait on the spool outlasts a
    /// stop's drain deadline.
    async fn wait_oldest<S: Spool>(&mut self, ctx: &WorkerContext<S>, name: &str) {
        loop {
            if ctx.cutoff.is_cancelled() {
                if let Some(why) = ctx.spool.recording_error() {
                    let n = self.copies as u64;
                    ctx.stats.unrecorded_at_stop.fetch_add(n, Ordering::Relaxed);
                    error!(worker = %name, copies = n, error = %why,
                        "drain deadline: outcomes the spool cannot record are given up; the next run repeats these copies");
                    self.groups.clear();
                    self.copies = 0;
                    self.rcpts = 0;
                    return;
                }
            }
            let Some(oldest) = self.groups.front_mut() else {
                return;
            };
            tokio::select! {
                results = &mut oldest.answer => {
                    if let Some(done) = self.groups.pop_front() {
                        self.copies -= done.ids.len();
                        self.rcpts -= done.rcpts;
                        report(name, &done.ids, results);
                    }
                    return;
                }
                () = ctx.cutoff.cancelled(), if !ctx.cutoff.is_cancelled() => {}
                // Past the deadline with a spool that records: its completion is moments away;
                // look again now and then in case the spool stops recording meanwhile.
                () = tokio::time::sleep(Duration::from_millis(200)), if ctx.cutoff.is_cancelled() => {}
            }
        }
    }

    /// Wait for every outstanding completion (see [`Completions::wait_oldest`] for the one
    /// exception at a stop).
    async fn drain<S: Spool>(&mut self, ctx: &WorkerContext<S>, name: &str) {
        while !self.groups.is_empty() {
            self.wait_oldest(ctx, name).await;
        }
    }
}

/// Log the copies of a group whose outcomes the spool could not record. The spool keeps and
/// retries outcomes it cannot record yet (a full disk), so what comes back here cannot be
/// retried: a copy not claimed, a wrong count, a spool that stopped.
fn report(name: &str, ids: &[i64], results: Vec<Result<(), SpoolError>>) {
    for (copy_id, r) in ids.iter().zip(results) {
        if let Err(e) = r {
            error!(worker = %name, copy = copy_id, error = %e, "recording the outcome failed");
        }
    }
}

/// Deliver `copies` on the connection (their transactions in flight together, TXN-13),
/// recording the outcomes of the copies whose transactions are over as one group each time
/// (one [`Spool::complete_many`]: one request to the spool's writer, one answer); returns
/// whether the drain deadline cut the transactions off. A copy given back is not recorded: all of them
/// when a stop came while waiting for the first one's rate limit; any whose transactions never
/// started because the connection was lost before; and, at the drain deadline, every copy whose
/// transactions were not over. At most `COMPLETIONS_OUTSTANDING` x MAXBSMTP recipients'
/// completions are outstanding (the next group's recording waits for the oldest), and the batch
/// holds at most MAXBSMTP recipients, so a worker holds at most `(COMPLETIONS_OUTSTANDING + 1)
/// x MAXBSMTP` recipients in flight.
async fn deliver<'c, S: Spool>(
    ctx: &'c WorkerContext<S>,
    name: &str,
    o: &mut Open,
    copies: Vec<ClaimedCopy>,
    limited: bool,
    pending: &mut Completions<'c>,
) -> bool {
    let gates: Vec<PoolGate<'_>> = copies
        .iter()
        .map(|c| PoolGate {
            limiter: &ctx.limiter,
            pool: c.pool,
            prepaid: AtomicBool::new(false),
        })
        .collect();
    if let (true, Some(first), Some(gate)) = (limited, copies.first(), gates.first()) {
        // Waiting for the rate limit is not a transaction yet: a stop gives the copies back.
        tokio::select! {
            () = ctx.limiter.acquire(first.pool, first.message.len() as u64) => {
                gate.prepaid.store(true, Ordering::Relaxed);
            }
            () = ctx.shutdown.cancelled() => {
                for c in &copies {
                    ctx.spool.release(c.copy_id);
                }
                return false;
            }
        }
    }
    let no_gate = crate::smtp::NoGate;
    let gates: Vec<&dyn DataGate> = if limited {
        gates.iter().map(|g| g as &dyn DataGate).collect()
    } else {
        vec![&no_gate]
    };
    let msgs: Vec<Message<'_>> = copies
        .iter()
        .map(|c| Message {
            mail_from: &c.mail_from,
            rcpts: &c.rcpts,
            message: &c.message,
        })
        .collect();
    let outstanding = outstanding_rcpts(ctx);
    let host = o.target.to_string();
    let tls = o.client.tls_version();
    let mut cut = false;
    let mut learned = None;
    {
        let mut batch = o.client.deliver_many(&msgs, ctx.max_bsmtp);
        loop {
            let over = batch.next_over(&gates, &ctx.shutdown, &ctx.cutoff).await;
            if over.is_empty() {
                break;
            }
            learned = batch.learned_rcpt_limit();
            // The outcomes of the copies over now, recorded as one group at once (not at the
            // end of the batch: a slow relay would hold every outcome of the batch back).
            let mut results = Vec::with_capacity(over.len());
            for (i, d) in over {
                let Some(copy) = copies.get(i) else { continue };
                match d {
                    None if !ctx.cutoff.is_cancelled() => {
                        // A stop came before its transaction began.
                        ctx.spool.release(copy.copy_id);
                    }
                    None => {
                        cut = true;
                        ctx.spool.release(copy.copy_id);
                        ctx.stats.returned_at_stop.fetch_add(1, Ordering::Relaxed);
                        warn!(worker = %name, copy = copy.copy_id, "drain deadline: transaction cut off, the copy goes back to the queue");
                    }
                    Some(d) if d.transactions == 0 && d.connection_lost.is_some() => {
                        // Never sent: the connection was lost first. Back to the queue.
                        ctx.spool.release(copy.copy_id);
                    }
                    Some(d) => {
                        let result = record(ctx, name, &host, tls, learned, copy, d);
                        results.push((copy.copy_id, result));
                    }
                }
            }
            pending.push(ctx, name, results, outstanding).await;
        }
    }
    if let Some(l) = learned {
        ctx.relay_limits.learn(&o.target, l);
    }
    cut
}

/// The metrics, counters and log of one copy's delivery; its outcomes to record.
fn record<S: Spool>(
    ctx: &WorkerContext<S>,
    name: &str,
    host: &str,
    tls: Option<&'static str>,
    learned: Option<usize>,
    copy: &ClaimedCopy,
    d: crate::smtp::Delivery,
) -> CopyResult {
    {
        let outcomes: Vec<Outcome> = d.results.iter().map(|r| r.outcome).collect();
        let codes: Vec<u16> = d.results.iter().map(|r| r.reply.code).collect();
        let result = crate::metrics::transaction_result(&outcomes, d.connection_lost.is_some());
        ctx.metrics.transaction(host, result, &codes);
        let trouble = d.connection_lost.as_ref().or_else(|| {
            d.results
                .iter()
                .find(|r| r.outcome != Outcome::Delivered)
                .map(|r| &r.reply)
        });
        if let Some(r) = trouble {
            ctx.metrics
                .relay_error(host, &r.to_string(), ctx.clock.now(), None);
        }
    }
    let rcpts: Vec<RcptOutcome> = d
        .results
        .into_iter()
        .map(|r| RcptOutcome {
            outcome: r.outcome,
            reply: r.reply.to_string(),
        })
        .collect();
    ctx.stats
        .record(host, &rcpts, d.too_many_recoveries, d.transactions);
    // The achieved rate `smtpw queue` shows: message bytes of each transaction sent.
    let sent = (copy.message.len() as u64).saturating_mul(u64::from(d.transactions));
    ctx.limiter.meter().record(copy.pool, sent);
    if d.too_many_recoveries > 0 {
        info!(worker = %name, host = %host, learned = ?learned, "relay limited recipients; rest sent in the next transaction");
    }
    debug!(worker = %name, host = %host, copy = copy.copy_id, tls = tls.unwrap_or("none"),
        transactions = d.transactions, "copy sent");
    CopyResult {
        relay: Some(host.to_string()),
        tls,
        rcpts,
    }
}

/// QUIT and close; cut short by the drain deadline.
async fn close<S: Spool>(ctx: &WorkerContext<S>, open: &mut Option<Open>) {
    if let Some(o) = open.take() {
        tokio::select! {
            () = o.client.quit() => {}
            () = ctx.cutoff.cancelled() => {}
        }
    }
}

/// Wait for new work (`notified`), the next deferred copy of `pools` coming due, `max`, or
/// shutdown.
async fn idle<S: Spool>(
    ctx: &WorkerContext<S>,
    notified: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
    pools: Option<PoolSet>,
    max: Duration,
) {
    let mut wait = max;
    if let Some(due) = pools.and_then(|p| ctx.spool.next_due(p)) {
        let until =
            Duration::try_from(due.duration_since(ctx.clock.now())).unwrap_or(Duration::ZERO);
        wait = wait.min(until.max(Duration::from_millis(1)));
    }
    tokio::select! {
        _ = ctx.shutdown.cancelled() => {}
        _ = notified => {}
        _ = tokio::time::sleep(wait) => {}
    }
}
