//! SMTP_RATE_LIMIT: exact token buckets shared by every worker (RATE-1, RATE-4).
//!
//! A [`Bucket`] is a GCRA-style token bucket kept as one number, its *zero point*: the instant at
//! which the bucket's level is (or was) zero. At any instant `t` the level, in bits, is
//! `min(depth, rate * (t - zero))`, negative while a large message's debt is being paid off.
//!
//! A message of `n` bits needs `need = min(n, depth)` tokens: it may start at the first instant
//! `s >= now` with `level(s) >= need`, that is `s = max(now, zero + need / rate)`. Sending takes `n`
//! bits, so a message larger than the depth goes as soon as the bucket is full and leaves it in
//! debt, and is never split (RATE-2). The start instant is *reserved* under the lock when the
//! caller asks, so callers are served first come, first served and a large message is never starved
//! by small ones.
//!
//! A message limited by two buckets (its pool's and the overall one) waits for them in turn: it
//! reserves its slot in the pool's bucket and sleeps until then, then reserves its slot in the
//! overall bucket at that moment and sleeps again if needed; whichever is stricter sets the wait
//! (RATE-3). Charging the overall bucket only when the pool lets the message go matters: a pool
//! whose own limit holds a long backlog must not reserve the overall bucket far into the future,
//! or every other pool would wait behind it and an idle pool's share could not be used by others.
//!
//! Under a saturated overall limit the overall bucket is one FIFO: each waiting copy takes its
//! turn, so each worker gets about one copy per round of all waiting workers' copies. A pool's
//! bucket is charged at its slot, not at the send, so its own pacing continues while its copy
//! waits its turn: a pool keeps its full limit as long as its workers' copies per round cover
//! it; otherwise it gets its turns' worth (the limits are caps, RATE-3). Sites give a limited
//! pool enough workers, as LISTSERV advises; see the test
//! `a_limited_pool_keeps_its_limit_while_its_turns_cover_it`.
//!
//! All arithmetic is in integer nanoseconds and bits, so the long-run rate is exact: after any
//! backlogged run the bits admitted up to `t` never exceed `rate * (t - t0) + depth`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::clock::SharedClock;
use crate::config::{Pool, RateLimits, SiteConfig};

const NANOS: u128 = 1_000_000_000;

/// How much idle time a bucket may save up by default: 100 ms of its rate.
pub const DEFAULT_DEPTH: Duration = Duration::from_millis(100);

/// One token bucket: `rate_bps` bits per second, holding at most `depth_bits`.
#[derive(Debug)]
pub struct Bucket {
    rate_bps: u64,
    depth_bits: u64,
    zero: Mutex<Option<Instant>>,
}

impl Bucket {
    /// A full bucket. `rate_bps` must be positive (the config parser refuses zero rates);
    /// `depth` is how much time's worth of tokens it can hold (at least one bit).
    pub fn new(rate_bps: u64, depth: Duration) -> Self {
        let rate_bps = rate_bps.max(1);
        let depth_bits = (u128::from(rate_bps) * depth.as_nanos() / NANOS).max(1);
        Self {
            rate_bps,
            depth_bits: u64::try_from(depth_bits).unwrap_or(u64::MAX),
            zero: Mutex::new(None),
        }
    }

    /// The limit, in bits per second.
    pub fn rate_bps(&self) -> u64 {
        self.rate_bps
    }

    /// How many bits the bucket holds when full.
    pub fn depth_bits(&self) -> u64 {
        self.depth_bits
    }

    /// Time for `bits` at this rate, rounded up to the nanosecond.
    fn time_for(&self, bits: u64) -> Duration {
        let ns = (u128::from(bits) * NANOS).div_ceil(u128::from(self.rate_bps));
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// The zero point as of `now`, with the level capped at the depth (idle time saves up no
    /// more than `depth` bits).
    fn effective_zero(&self, zero: Option<Instant>, now: Instant) -> Instant {
        let full_since = now
            .checked_sub(self.time_for(self.depth_bits))
            .unwrap_or(now);
        match zero {
            Some(z) if z > full_since => z,
            _ => full_since,
        }
    }

    /// The earliest instant at or after `now` at which `bits` may start.
    fn earliest(&self, zero: Option<Instant>, now: Instant, bits: u64) -> Instant {
        let z = self.effective_zero(zero, now);
        (z + self.time_for(bits.min(self.depth_bits))).max(now)
    }

    /// Charge `bits` sent at `at` (the instant chosen by [`Bucket::earliest`] or later).
    fn charge(&self, zero: &mut Option<Instant>, at: Instant, bits: u64) {
        let z = self.effective_zero(*zero, at);
        *zero = Some(z + self.time_for(bits));
    }
}

fn lock(m: &Mutex<Option<Instant>>) -> std::sync::MutexGuard<'_, Option<Instant>> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reserve the start instant for `bits` in one bucket and return it.
fn reserve_in(bucket: &Bucket, now: Instant, bits: u64) -> Instant {
    let mut zero = lock(&bucket.zero);
    let at = bucket.earliest(*zero, now, bits);
    bucket.charge(&mut zero, at, bits);
    at
}

/// A limit shared with other processes (the nodes of a cluster, RATE-6): awaited after this
/// process's own buckets.
pub trait SharedLimit: Send + Sync + std::fmt::Debug {
    /// Wait until a message of `bytes` in `pool` may be sent as far as the shared limit goes.
    fn acquire(&self, pool: Pool, bytes: u64) -> crate::net::BoxFuture<'_, ()>;
}

/// The process-wide limiter: one overall bucket and one per limited pool, shared via `Arc` by every
/// worker (RATE-4).
#[derive(Debug, Default)]
pub struct RateLimiter {
    overall: Option<Bucket>,
    pools: Vec<Option<Bucket>>,
    /// What the workers actually sent, per pool (shared by the per-worker limiters of a split).
    meter: Arc<RateMeter>,
    /// The cluster's limit, if any.
    shared: Option<Arc<dyn SharedLimit>>,
}

impl RateLimiter {
    /// Buckets for the configured limits, each `depth` deep.
    pub fn new(limits: &RateLimits, depth: Duration) -> Self {
        let mut pools: Vec<Option<Bucket>> = (0..Pool::COUNT).map(|_| None).collect();
        for (pool, bps) in &limits.pools {
            pools[pool.index()] = Some(Bucket::new(*bps, depth));
        }
        Self {
            overall: limits.overall_bps.map(|bps| Bucket::new(bps, depth)),
            pools,
            meter: Arc::default(),
            shared: None,
        }
    }

    /// The same limiter, also waiting for a limit shared with other processes.
    pub fn with_shared(mut self, shared: Option<Arc<dyn SharedLimit>>) -> Self {
        self.shared = shared;
        self
    }

    /// The same limiter, recording into `meter` (so per-worker limiters can share one meter).
    pub fn with_meter(mut self, meter: Arc<RateMeter>) -> Self {
        self.meter = meter;
        self
    }

    /// The byte meter the workers feed after each delivery.
    pub fn meter(&self) -> &Arc<RateMeter> {
        &self.meter
    }

    /// The LISTSERV-compatible split (RATE-4): this worker's own buckets, with each pool limit
    /// divided by the number of workers serving that pool and the overall limit by the number of
    /// workers. `serving[p]` is the number of workers that serve pool `p`.
    pub fn per_worker_share(
        limits: &RateLimits,
        total_workers: usize,
        serving: &[usize; Pool::COUNT],
        depth: Duration,
    ) -> Self {
        let share = |bps: u64, n: usize| (bps / n.max(1) as u64).max(1);
        let mut split = RateLimits {
            overall_bps: limits.overall_bps.map(|b| share(b, total_workers)),
            pools: Default::default(),
        };
        for (pool, bps) in &limits.pools {
            split
                .pools
                .insert(*pool, share(*bps, serving[pool.index()]));
        }
        Self::new(&split, depth)
    }

    /// True when no limit applies to `pool`.
    pub fn is_unlimited(&self, pool: Pool) -> bool {
        self.overall.is_none() && self.pool_bucket(pool).is_none()
    }

    /// Whether a message of `pool` may have to wait at all (a local limit, or one shared with
    /// other processes).
    pub fn may_wait(&self, pool: Pool) -> bool {
        !self.is_unlimited(pool) || self.shared.is_some()
    }

    fn pool_bucket(&self, pool: Pool) -> Option<&Bucket> {
        self.pools.get(pool.index()).and_then(Option::as_ref)
    }

    /// Reserve a slot for a message of `bytes` in `pool`'s own bucket, without waiting; `now`
    /// when the pool has no limit of its own.
    pub fn reserve_pool(&self, pool: Pool, bytes: u64, now: Instant) -> Instant {
        match self.pool_bucket(pool) {
            Some(b) => reserve_in(b, now, bytes.saturating_mul(8)),
            None => now,
        }
    }

    /// Reserve a slot for a message of `bytes` in the overall bucket, without waiting.
    pub fn reserve_overall(&self, bytes: u64, now: Instant) -> Instant {
        match &self.overall {
            Some(b) => reserve_in(b, now, bytes.saturating_mul(8)),
            None => now,
        }
    }

    /// When a message of `bytes` (headers + body with CRLFs, RATE-2) in `pool` would start if it
    /// asked at `now` and nothing else asked meanwhile: the pool's slot, then the overall slot
    /// from that instant. Charges both buckets, as [`RateLimiter::acquire`] does.
    pub fn reserve(&self, pool: Pool, bytes: u64, now: Instant) -> Instant {
        let at = self.reserve_pool(pool, bytes, now);
        self.reserve_overall(bytes, at)
    }

    /// Wait until a message of `bytes` in `pool` may be sent, then return.
    pub async fn acquire(&self, pool: Pool, bytes: u64) {
        if self.pool_bucket(pool).is_some() {
            let at = self.reserve_pool(pool, bytes, Instant::now());
            tokio::time::sleep_until(at).await;
        }
        if self.overall.is_some() {
            let at = self.reserve_overall(bytes, Instant::now());
            tokio::time::sleep_until(at).await;
        }
        if let Some(s) = &self.shared {
            s.acquire(pool, bytes).await;
        }
    }

    /// The limit in bits/s that applies to `pool` alone, and the overall one.
    pub fn limits_for(&self, pool: Pool) -> (Option<u64>, Option<u64>) {
        (
            self.pool_bucket(pool).map(Bucket::rate_bps),
            self.overall.as_ref().map(Bucket::rate_bps),
        )
    }
}

/// Seconds of history the [`RateMeter`] keeps (a little more than the one-minute window).
const METER_SLOTS: usize = 64;
/// The window the achieved rate is measured over.
pub const METER_WINDOW: Duration = Duration::from_secs(60);

/// Bytes sent per pool, per second of tokio time, for the last minute: the engine's record of the
/// achieved rate, written to [`RATE_STATUS_FILE`] for `smtpw queue`.
#[derive(Debug)]
pub struct RateMeter {
    start: Instant,
    ring: Mutex<MeterRing>,
}

#[derive(Debug)]
struct MeterRing {
    /// The second (since `start`) each slot holds, `u64::MAX` when unused.
    secs: [u64; METER_SLOTS],
    bytes: [[u64; Pool::COUNT]; METER_SLOTS],
}

impl Default for RateMeter {
    fn default() -> Self {
        Self::new()
    }
}

/// What a [`RateMeter`] saw over a window.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterReading {
    /// The span actually covered (shorter than the window just after start).
    pub span: Duration,
    /// Bytes per pool (index [`Pool::index`]).
    pub bytes: [u64; Pool::COUNT],
}

impl MeterReading {
    /// Bytes over every pool.
    pub fn total(&self) -> u64 {
        self.bytes.iter().sum()
    }
    /// Bits per second of `bytes` over the span.
    pub fn bps(&self, bytes: u64) -> u64 {
        let ns = self.span.as_nanos().max(1);
        u64::try_from(u128::from(bytes) * 8 * NANOS / ns).unwrap_or(u64::MAX)
    }
}

impl RateMeter {
    /// A meter starting now, with nothing counted.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            ring: Mutex::new(MeterRing {
                secs: [u64::MAX; METER_SLOTS],
                bytes: [[0; Pool::COUNT]; METER_SLOTS],
            }),
        }
    }

    fn second(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_secs()
    }

    /// Count `bytes` of message data sent for `pool` now.
    pub fn record(&self, pool: Pool, bytes: u64) {
        self.record_at(pool, bytes, Instant::now());
    }

    /// Count `bytes` sent for `pool` at `at`.
    pub fn record_at(&self, pool: Pool, bytes: u64, at: Instant) {
        let sec = self.second(at);
        let slot = (sec % METER_SLOTS as u64) as usize;
        let mut r = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if r.secs[slot] != sec {
            r.secs[slot] = sec;
            r.bytes[slot] = [0; Pool::COUNT];
        }
        r.bytes[slot][pool.index()] += bytes;
    }

    /// Bytes sent in the last `window` (whole seconds, at most 60) before `now`, counting the
    /// current second up to `now`.
    pub fn reading(&self, now: Instant, window: Duration) -> MeterReading {
        let whole = window.as_secs().clamp(1, METER_SLOTS as u64 - 2);
        let cur = self.second(now);
        let first = (cur + 1).saturating_sub(whole);
        let r = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let mut bytes = [0u64; Pool::COUNT];
        for sec in first..=cur {
            let slot = (sec % METER_SLOTS as u64) as usize;
            if r.secs[slot] == sec {
                for (b, x) in bytes.iter_mut().zip(r.bytes[slot]) {
                    *b += x;
                }
            }
        }
        let span = now
            .saturating_duration_since(self.start)
            .saturating_sub(Duration::from_secs(first));
        MeterReading { span, bytes }
    }
}

/// The file in the spool directory where a running engine keeps its [`RateStatus`].
pub const RATE_STATUS_FILE: &str = "rate-status.json";

/// One line of the rate report: the overall limit (`pool` = `*`) or one pool's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLine {
    /// `*` for the overall limit, else the pool letter (`-` for the default pool).
    pub pool: String,
    /// The configured limit in bits per second (`None`: unlimited).
    pub limit_bps: Option<u64>,
    /// The same in bytes per second.
    pub limit_bytes_per_s: Option<u64>,
    /// Workers serving this pool (all workers for the overall line).
    pub workers: usize,
    /// With the per-worker split: each worker's share of the limit, in bits per second.
    pub per_worker_bps: Option<u64>,
    /// Message bytes sent over the window (headers + body, before dot-stuffing).
    pub bytes: u64,
    /// `bytes` over the window, in bits per second.
    pub achieved_bps: u64,
}

/// The rate report: what is configured, who serves it, and what was achieved over the last
/// minute. Logged at start-up; written every second to [`RATE_STATUS_FILE`] by a running engine
/// and read by `smtpw queue`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateStatus {
    /// When this was written (RFC 3339, from the engine's clock).
    pub written_at: String,
    /// The engine's process id.
    pub pid: u32,
    /// LISTSERV's per-worker split instead of one shared limiter.
    pub per_worker_split: bool,
    /// The span the achieved figures cover, in seconds.
    pub window_secs: f64,
    /// How many workers the limits are shared by.
    pub workers: usize,
    /// The overall limit and what was achieved against it.
    pub overall: RateLine,
    /// Every pool with a limit of its own, with workers restricted to it, or with traffic.
    pub pools: Vec<RateLine>,
    /// Pools no worker serves (their mail goes through SMTP_FORWARD, FWD-3); `""` if none.
    pub unserved: String,
    /// Whether SMTP_FORWARD is set (without it, unserved pools' mail stays queued).
    #[serde(default)]
    pub sync_forward: bool,
    /// Per relay with trouble: its last error and next retry (what `smtpw queue` shows of the
    /// relays; filled in by the running engine).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub relays: std::collections::BTreeMap<String, crate::metrics::RelayStatus>,
}

impl RateStatus {
    /// The report for `cfg`, with the achieved figures of `reading` (zero without one).
    pub fn new(
        cfg: &SiteConfig,
        per_worker_split: bool,
        reading: Option<&MeterReading>,
        written_at: jiff::Timestamp,
    ) -> Self {
        let n = cfg.workers.len();
        let mut serving = [0usize; Pool::COUNT];
        for w in &cfg.workers {
            for p in w.pools.iter() {
                serving[p.index()] += 1;
            }
        }
        let split = |bps: Option<u64>, k: usize| {
            bps.filter(|_| per_worker_split)
                .map(|b| (b / k.max(1) as u64).max(1))
        };
        let achieved = |bytes: u64| reading.map_or(0, |r| r.bps(bytes));
        let total = reading.map_or(0, MeterReading::total);
        let overall = RateLine {
            pool: "*".to_string(),
            limit_bps: cfg.rate_limits.overall_bps,
            limit_bytes_per_s: cfg.rate_limits.overall_bps.map(|b| b / 8),
            workers: n,
            per_worker_bps: split(cfg.rate_limits.overall_bps, n),
            bytes: total,
            achieved_bps: achieved(total),
        };
        let restricted = cfg.workers.iter().any(|w| !w.pools.is_all());
        let mut pools = Vec::new();
        for p in Pool::all() {
            let limit = cfg.rate_limits.pools.get(&p).copied();
            let bytes = reading.map_or(0, |r| r.bytes[p.index()]);
            let k = serving[p.index()];
            let shown = limit.is_some() || bytes > 0 || (restricted && k > 0 && k < n);
            if shown {
                pools.push(RateLine {
                    pool: p.to_string(),
                    limit_bps: limit,
                    limit_bytes_per_s: limit.map(|b| b / 8),
                    workers: k,
                    per_worker_bps: split(limit, k),
                    bytes,
                    achieved_bps: achieved(bytes),
                });
            }
        }
        Self {
            written_at: written_at.to_string(),
            pid: std::process::id(),
            per_worker_split,
            window_secs: reading.map_or(0.0, |r| r.span.as_secs_f64()),
            workers: n,
            overall,
            pools,
            unserved: cfg.unserved_pools().to_string(),
            sync_forward: cfg.sync_forward.is_some(),
            relays: std::collections::BTreeMap::new(),
        }
    }

    /// The start-up report, one line per limit (RATE-4: rates are in bits, and bytes shown too).
    pub fn report_lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        let how = if self.per_worker_split {
            "split per worker (LISTSERV compatible)"
        } else {
            "shared by all workers"
        };
        let line = |l: &RateLine, what: &str| match l.limit_bps {
            Some(bps) => {
                let mut s = format!(
                    "{what}: {bps} bit/s ({} bytes/s), {} worker(s), {how}",
                    bps / 8,
                    l.workers
                );
                if let Some(w) = l.per_worker_bps {
                    s.push_str(&format!(", {w} bit/s each"));
                }
                s
            }
            None => format!("{what}: no limit, {} worker(s)", l.workers),
        };
        out.push(line(&self.overall, "rate limit overall"));
        for p in &self.pools {
            let what = format!("rate limit pool {}", p.pool);
            let mut s = line(p, &what);
            if p.limit_bps.is_none() {
                s.push_str(" (overall limit only)");
            }
            out.push(s);
        }
        if !self.unserved.is_empty() {
            out.push(self.unserved_line());
        }
        out
    }

    /// `pools served by no worker: ...` and what happens to their mail.
    pub fn unserved_line(&self) -> String {
        let fate = if self.sync_forward {
            "their mail goes through SMTP_FORWARD"
        } else {
            "SMTP_FORWARD is not set: their mail stays queued"
        };
        format!("pools served by no worker: {} ({fate})", self.unserved)
    }

    /// Log [`RateStatus::report_lines`].
    /// The unserved-pools line, if any, is a warning: that mail waits or takes the slow path.
    pub fn log_report(&self) {
        let unserved = (!self.unserved.is_empty()).then(|| self.unserved_line());
        for l in self.report_lines() {
            if unserved.as_ref() == Some(&l) {
                tracing::warn!("{l}");
            } else {
                tracing::info!("{l}");
            }
        }
    }

    /// Write atomically to `SPOOL/rate-status.json` (a temporary file renamed over it).
    pub fn write(&self, spool_dir: &Path) -> std::io::Result<()> {
        let path = spool_dir.join(RATE_STATUS_FILE);
        let tmp = spool_dir.join(format!(".{RATE_STATUS_FILE}.tmp"));
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, &path)
    }

    /// Read `SPOOL/rate-status.json`; `Ok(None)` when there is none.
    pub fn read(spool_dir: &Path) -> std::io::Result<Option<Self>> {
        match std::fs::read(spool_dir.join(RATE_STATUS_FILE)) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// How often the engine repeats that pools are served by no worker (without SMTP_FORWARD).
pub const UNSERVED_WARNING_EVERY: Duration = Duration::from_secs(3600);

/// Keep `SPOOL/rate-status.json` (and the metrics' rate gauges) current: every `every` until
/// `shutdown`, then once more.
#[allow(clippy::too_many_arguments)]
pub async fn keep_status(
    metrics: Arc<crate::metrics::Metrics>,
    cfg: tokio::sync::watch::Receiver<Arc<SiteConfig>>,
    per_worker_split: bool,
    meter: Arc<RateMeter>,
    clock: SharedClock,
    spool_dir: PathBuf,
    every: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    // Without SMTP_FORWARD, mail of an unserved pool stays queued: say so every hour (POOL-4).
    let mut next_warning = Instant::now() + UNSERVED_WARNING_EVERY;
    // A status that cannot be written (a full disk, a read-only spool) is said once per
    // condition: `smtpw queue` then says the engine runs but cannot write its status.
    let mut write_failures = crate::condition::ConditionLog::default();
    loop {
        let stop = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tokio::time::sleep(every) => false,
        };
        let reading = meter.reading(Instant::now(), METER_WINDOW);
        // The configuration in force (a reload changes it).
        let now_cfg = cfg.borrow().clone();
        let mut st = RateStatus::new(&now_cfg, per_worker_split, Some(&reading), clock.now());
        metrics.set_rates(st.clone());
        st.relays = metrics.relays();
        let notice = match st.write(&spool_dir) {
            Ok(()) => write_failures.succeeded(Instant::now()),
            Err(e) => write_failures.failed(e.to_string(), Instant::now()),
        };
        match notice {
            Some(crate::condition::Notice::Began { message }) => tracing::warn!(
                error = %message,
                "cannot write {RATE_STATUS_FILE} (smtpw queue shows no current rates meanwhile)"
            ),
            Some(crate::condition::Notice::Lasts {
                message, lasted, ..
            }) => tracing::warn!(
                error = %message,
                failing_for_secs = lasted.as_secs(),
                "still cannot write {RATE_STATUS_FILE}"
            ),
            Some(crate::condition::Notice::Ended { .. }) => {
                tracing::info!("{RATE_STATUS_FILE} is written again")
            }
            None => {}
        }
        if !st.unserved.is_empty() && !st.sync_forward && Instant::now() >= next_warning {
            tracing::warn!("{}", st.unserved_line());
            next_warning = Instant::now() + UNSERVED_WARNING_EVERY;
        }
        if stop {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits(overall: Option<u64>, pools: &[(char, u64)]) -> RateLimits {
        RateLimits {
            overall_bps: overall,
            pools: pools
                .iter()
                .filter_map(|(c, b)| Pool::from_char(*c).map(|p| (p, *b)))
                .collect(),
        }
    }

    #[test]
    fn unlimited_pool_starts_at_once() {
        let rl = RateLimiter::new(&limits(None, &[('A', 1000)]), DEFAULT_DEPTH);
        let now = Instant::now();
        let b = Pool::from_char('B').expect("pool");
        assert_eq!(rl.reserve(b, 1_000_000, now), now);
        assert!(rl.is_unlimited(b));
    }

    #[test]
    fn a_message_larger_than_the_bucket_goes_when_full_and_leaves_debt() {
        // 8000 bit/s, depth 100 ms = 800 bits. A 1000-byte (8000-bit) message goes at once (the
        // bucket starts full), and the next one waits until the debt is paid and the bucket is full
        // again: 7200 bits of debt + 800 bits = 1 s.
        let rl = RateLimiter::new(&limits(Some(8000), &[]), DEFAULT_DEPTH);
        let now = Instant::now();
        let p = Pool::DEFAULT;
        assert_eq!(rl.reserve(p, 1000, now), now);
        assert_eq!(rl.reserve(p, 1000, now), now + Duration::from_secs(1));
        assert_eq!(rl.reserve(p, 1000, now), now + Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn the_stricter_of_pool_and_overall_applies() {
        // Pool A 800 bit/s, overall 8000 bit/s, depth 1 s. 100-byte messages (800 bits).
        let rl = Arc::new(RateLimiter::new(
            &limits(Some(8000), &[('A', 800)]),
            Duration::from_secs(1),
        ));
        let a = Pool::from_char('A').expect("pool");
        let t0 = Instant::now();
        rl.acquire(a, 100).await;
        assert_eq!(t0.elapsed(), Duration::ZERO, "both buckets start full");
        let ra = rl.clone();
        let second_a = tokio::spawn(async move {
            ra.acquire(a, 100).await;
            t0.elapsed()
        });
        tokio::task::yield_now().await;
        // The default pool only has the overall limit, of which A has used 800 of 8000 bits.
        rl.acquire(Pool::DEFAULT, 100).await;
        assert_eq!(
            t0.elapsed(),
            Duration::ZERO,
            "the overall bucket is not held by A's wait"
        );
        assert_eq!(
            second_a.await.expect("a"),
            Duration::from_secs(1),
            "pool A is the stricter limit"
        );
        // At 1 s the overall bucket is full again (8000) less A's second message: 7200 bits. Ten
        // more default-pool messages (8000 bits): nine go at once, the tenth 100 ms later.
        for _ in 0..10 {
            rl.acquire(Pool::DEFAULT, 100).await;
        }
        assert_eq!(t0.elapsed(), Duration::from_millis(1100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pool_backlog_does_not_reserve_the_overall_bucket_ahead() {
        // Pool A: 8 kbit/s; overall: 80 kbit/s. A has a backlog of 50 messages of 1000 bytes
        // (50 s at its own limit). Pool B, limited only overall, must still get the other
        // 72 kbit/s: its 90 messages of 1000 bytes (= 720 kbit) take about 10 s, not 50.
        let rl = Arc::new(RateLimiter::new(
            &limits(Some(80_000), &[('A', 8_000)]),
            DEFAULT_DEPTH,
        ));
        let a = Pool::from_char('A').expect("pool");
        let b = Pool::from_char('B').expect("pool");
        let t0 = Instant::now();
        let ra = rl.clone();
        let ta = tokio::spawn(async move {
            for _ in 0..50 {
                ra.acquire(a, 1000).await;
            }
            t0.elapsed()
        });
        let rb = rl.clone();
        let tb = tokio::spawn(async move {
            for _ in 0..90 {
                rb.acquire(b, 1000).await;
            }
            t0.elapsed()
        });
        let (da, db) = (ta.await.expect("a"), tb.await.expect("b"));
        assert!(
            da >= Duration::from_secs(48),
            "A is held to its own rate: {da:?}"
        );
        assert!(
            db <= Duration::from_millis(12_600),
            "B used the overall share A left idle: {db:?}"
        );
    }

    /// Workers that loop `acquire` with no other delay: `pools[i]` is (pool, workers, bytes).
    async fn contend(rl: Arc<RateLimiter>, pools: &[(Pool, usize, u64)], secs: u64) -> Vec<u64> {
        let t_end = Instant::now() + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for (i, (pool, workers, bytes)) in pools.iter().copied().enumerate() {
            for _ in 0..workers {
                let rl = rl.clone();
                tasks.push((
                    i,
                    tokio::spawn(async move {
                        let mut sent = 0u64;
                        loop {
                            rl.acquire(pool, bytes).await;
                            if Instant::now() >= t_end {
                                return sent;
                            }
                            sent += bytes;
                        }
                    }),
                ));
            }
        }
        let mut out = vec![0u64; pools.len()];
        for (i, t) in tasks {
            out[i] += t.await.expect("worker");
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn a_limited_pool_keeps_its_limit_while_its_turns_cover_it() {
        // Overall 12 Mbit/s, pool A 1.5 Mbit/s with ONE worker sending 5 KB copies (26 ms each at
        // A's rate); pool D unlimited, two workers with 10 KB copies, saturating the overall.
        // A's pool bucket is charged at A's slot, so the overall queue (two D copies, 13 ms) that
        // A's copy waits after its slot does not add to A's pace: A gets its full limit.
        let (a, d) = (
            Pool::from_char('A').expect("A"),
            Pool::from_char('D').expect("D"),
        );
        let rl = Arc::new(RateLimiter::new(
            &limits(Some(12 << 20), &[('A', 3 << 19)]),
            DEFAULT_DEPTH,
        ));
        let secs = 60;
        let got = contend(rl, &[(a, 1, 5_000), (d, 2, 10_000)], secs).await;
        let a_bps = got[0] as f64 * 8.0 / secs as f64;
        let all_bps = (got[0] + got[1]) as f64 * 8.0 / secs as f64;
        assert!(
            (a_bps / f64::from(3u32 << 19) - 1.0).abs() < 0.003,
            "A got {a_bps} bit/s"
        );
        assert!(
            (all_bps / f64::from(12u32 << 20) - 1.0).abs() < 0.003,
            "overall {all_bps} bit/s"
        );
        // With four D workers, a round of the overall FIFO (4 x 10 KB + 5 KB, 28.6 ms) is longer
        // than A's copy time: A's one worker gets one copy per round, 5 KB / 28.6 ms = 1.4 Mbit/s.
        let rl = Arc::new(RateLimiter::new(
            &limits(Some(12 << 20), &[('A', 3 << 19)]),
            DEFAULT_DEPTH,
        ));
        let got = contend(rl, &[(a, 1, 5_000), (d, 4, 10_000)], secs).await;
        let a_round = got[0] as f64 * 8.0 / secs as f64;
        let expect = 5_000.0 * 8.0 / (45_000.0 * 8.0 / f64::from(12u32 << 20));
        assert!(
            (a_round / expect - 1.0).abs() < 0.01,
            "A got {a_round}, one copy per round {expect}"
        );
        // Two A workers: two copies per round would be 2.8 Mbit/s, so A is held to its limit.
        let rl = Arc::new(RateLimiter::new(
            &limits(Some(12 << 20), &[('A', 3 << 19)]),
            DEFAULT_DEPTH,
        ));
        let got = contend(rl, &[(a, 2, 5_000), (d, 4, 10_000)], secs).await;
        let a2 = got[0] as f64 * 8.0 / secs as f64;
        assert!(
            (a2 / f64::from(3u32 << 19) - 1.0).abs() < 0.003,
            "A (2 workers) got {a2}"
        );
    }

    #[test]
    fn idle_time_saves_up_no_more_than_the_depth() {
        let rl = RateLimiter::new(&limits(Some(8000), &[]), Duration::from_millis(100));
        let p = Pool::DEFAULT;
        let t0 = Instant::now();
        rl.reserve(p, 100, t0); // 800 bits: empties the 800-bit bucket
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(rl.reserve(p, 100, later), later);
        assert_eq!(
            rl.reserve(p, 100, later),
            later + Duration::from_millis(100),
            "an hour idle still holds only 100 ms of tokens"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_meter_counts_the_last_minute_per_pool() {
        let m = RateMeter::new();
        let t0 = Instant::now();
        let a = Pool::from_char('A').expect("pool");
        // 1000 bytes of A every second for 100 s, and 500 bytes of `-` in the last 10 s.
        for s in 0..100u64 {
            m.record_at(
                a,
                1000,
                t0 + Duration::from_secs(s) + Duration::from_millis(500),
            );
            if s >= 90 {
                m.record_at(Pool::DEFAULT, 500, t0 + Duration::from_secs(s));
            }
        }
        // At 100 s: the window is seconds 41..=100 (the current one just begun): 59 full seconds.
        let r = m.reading(t0 + Duration::from_secs(100), METER_WINDOW);
        assert_eq!(r.span, Duration::from_secs(59));
        assert_eq!(r.bytes[a.index()], 59_000);
        assert_eq!(r.bytes[Pool::DEFAULT.index()], 5_000);
        assert_eq!(r.bps(r.bytes[a.index()]), 8000);
        // Just after start, the span is what has elapsed.
        let m = RateMeter::new();
        m.record_at(a, 100, t0);
        let r = m.reading(t0 + Duration::from_millis(250), METER_WINDOW);
        assert_eq!((r.span, r.total()), (Duration::from_millis(250), 100));
        assert_eq!(r.bps(100), 3200);
        // Old seconds in reused slots are not counted.
        let later = t0 + Duration::from_secs(1000);
        assert_eq!(m.reading(later, METER_WINDOW).total(), 0);
    }

    #[test]
    fn per_worker_share_divides_by_serving_workers() {
        let mut serving = [3usize; Pool::COUNT];
        let a = Pool::from_char('A').expect("pool");
        serving[a.index()] = 2;
        let rl = RateLimiter::per_worker_share(
            &limits(Some(12_582_912), &[('A', 1_572_864)]),
            3,
            &serving,
            DEFAULT_DEPTH,
        );
        assert_eq!(rl.limits_for(a), (Some(786_432), Some(4_194_304)));
    }

    proptest! {
        /// Backlogged senders are admitted at exactly the configured rate: the bits admitted up to
        /// each start instant never exceed rate x elapsed + depth + the one message in flight, and
        /// over the whole run the rate is within 0.1 % of the limit.
        #[test]
        fn backlogged_admission_is_exact(
            rate in 1_000u64..50_000_000,
            sizes in proptest::collection::vec(1u64..300_000, 50..400),
            depth_ms in 1u64..2_000,
        ) {
            let depth = Duration::from_millis(depth_ms);
            let rl = RateLimiter::new(&limits(Some(rate), &[]), depth);
            let depth_bits = rl.overall.as_ref().map(|b| b.depth_bits()).unwrap_or(0);
            let t0 = Instant::now();
            let mut admitted: u128 = 0;
            let mut last = t0;
            for bytes in &sizes {
                // every request arrives at t0: a backlog
                let at = rl.reserve(Pool::DEFAULT, *bytes, t0);
                prop_assert!(at >= last, "FIFO: starts never go backwards");
                last = at;
                let elapsed = at.duration_since(t0).as_nanos();
                let allowance = u128::from(rate) * elapsed / NANOS + u128::from(depth_bits) + 1;
                prop_assert!(admitted <= allowance, "admitted {} > allowance {}", admitted, allowance);
                admitted += u128::from(*bytes) * 8;
            }
            // The bucket was full at t0 and the run ended in debt: everything admitted except the
            // depth took exactly `admitted - depth` bits of time (to the nanosecond, rounded up).
            let span = last.duration_since(t0).as_nanos();
            let last_bits = u128::from(*sizes.last().unwrap_or(&0)) * 8;
            let paid = admitted - last_bits;
            if paid > u128::from(depth_bits) * 10 {
                let expect = (paid - u128::from(depth_bits).min(paid)) * NANOS / u128::from(rate);
                let err = span.abs_diff(expect) as f64 / expect as f64;
                prop_assert!(err < 0.001 + (u128::from(depth_bits) * NANOS / u128::from(rate)) as f64 / expect as f64,
                    "span {} vs expected {} (err {})", span, expect, err);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn shared_by_concurrent_workers_on_paused_time() {
        // 10 workers share 1 Mbit/s; each sends 200 messages of 12,500 bytes (100,000 bits):
        // 2000 messages = 200 Mbit = 200 s at 1 Mbit/s (less the initial 100 ms depth).
        let rl = Arc::new(RateLimiter::new(
            &limits(Some(1_000_000), &[]),
            DEFAULT_DEPTH,
        ));
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let rl = rl.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..200 {
                    rl.acquire(Pool::DEFAULT, 12_500).await;
                }
            }));
        }
        for t in tasks {
            t.await.expect("worker");
        }
        let took = t0.elapsed();
        // Each message is exactly the 100 ms depth, so the full bucket saves only the first one:
        // message k starts at (k - 1) x 0.1 s and the 2000th at 199.9 s.
        assert_eq!(took, Duration::from_millis(199_900), "took {took:?}");
    }
}
