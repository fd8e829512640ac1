//! SMTP_RATE_LIMIT: exact token buckets shared by every worker (SPEC §4, §12 D1).
//!
//! A [`Bucket`] is a GCRA-style token bucket kept as one number, its *zero point*: the instant at
//! which the bucket's level is (or was) zero. At any instant `t` the level, in bits, is
//! `min(depth, rate * (t - zero))`, negative while a large message's debt is being paid off.
//!
//! A message of `n` bits needs `need = min(n, depth)` tokens: it may start at the first instant
//! `s >= now` with `level(s) >= need`, that is `s = max(now, zero + need / rate)`. Sending takes `n`
//! bits, so a message larger than the depth goes as soon as the bucket is full and leaves it in
//! debt, and is never split (SPEC 4.5). The start instant is *reserved* under the lock when the
//! caller asks, so callers are served first come, first served and a large message is never starved
//! by small ones.
//!
//! A message limited by two buckets (its pool's and the overall one) waits for them in turn: it
//! reserves its slot in the pool's bucket and sleeps until then, then reserves its slot in the
//! overall bucket at that moment and sleeps again if needed; whichever is stricter sets the wait
//! (SPEC 4.3). Charging the overall bucket only when the pool lets the message go matters: a pool
//! whose own limit holds a long backlog must not reserve the overall bucket far into the future,
//! or every other pool would wait behind it and an idle pool's share could not be used by others.
//!
//! All arithmetic is in integer nanoseconds and bits, so the long-run rate is exact: after any
//! backlogged run the bits admitted up to `t` never exceed `rate * (t - t0) + depth`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Pool, RateLimits};

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

    pub fn rate_bps(&self) -> u64 {
        self.rate_bps
    }

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

/// The process-wide limiter: one overall bucket and one per limited pool, shared via `Arc` by every
/// worker (SPEC §12 D1).
#[derive(Debug, Default)]
pub struct RateLimiter {
    overall: Option<Bucket>,
    pools: Vec<Option<Bucket>>,
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
        }
    }

    /// The LISTSERV-compatible split (SPEC 4.6): this worker's own buckets, with each pool limit
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

    /// When a message of `bytes` (headers + body with CRLFs, SPEC 4.4) in `pool` would start if it
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
    }

    /// The limit in bits/s that applies to `pool` alone, and the overall one.
    pub fn limits_for(&self, pool: Pool) -> (Option<u64>, Option<u64>) {
        (
            self.pool_bucket(pool).map(Bucket::rate_bps),
            self.overall.as_ref().map(Bucket::rate_bps),
        )
    }
}

/// A limiter shared by every worker.
pub type SharedRateLimiter = Arc<RateLimiter>;

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
