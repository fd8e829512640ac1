//! `[cluster] rate_limit` (RATE-6): one limit shared exactly by every node of a cluster.
//!
//! The database keeps, per limit (overall, and each limited pool), the time up to which the rate
//! is spoken for (`rate_leases.tat_us`, microseconds of the database's clock). A node that needs
//! bits leases a slice of them: `tat = max(tat, now) + slice / rate`, and may send the slice from
//! the old `tat` on, paced at the rate. The database hands out no more than the rate over any
//! span, whatever the number of nodes; a node is ahead of its lease by at most one slice (50 ms
//! of the rate), so a 10 s window is exceeded by at most one slice per node (0.5% each). Time
//! not used is not saved up (no burst after an idle spell).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::Client;

use super::{connect, pg_error, schema};
use crate::config::{Pool, RateLimits};
use crate::ratelimit::SharedLimit;
use crate::spool::SpoolError;

/// The share of a second one lease covers.
const SLICE: Duration = Duration::from_millis(50);

#[derive(Debug)]
struct Slot {
    rate_bps: u64,
    /// When the next bits may go.
    cursor: Instant,
    /// Bits leased and not yet spent.
    remaining: u64,
}

/// The cluster-wide limiter of one node.
pub struct ClusterLimit {
    db: tokio::sync::Mutex<Client>,
    slots: HashMap<String, Mutex<Slot>>,
    pools: Vec<Option<String>>,
    overall: Option<String>,
}

impl std::fmt::Debug for ClusterLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterLimit")
            .field("keys", &self.slots.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ClusterLimit {
    /// Connect for `limits` (the same syntax as SMTP_RATE_LIMIT).
    pub async fn open(url: &str, limits: &RateLimits) -> Result<Arc<Self>, SpoolError> {
        let mut db = connect(url).await?;
        schema::migrate(&mut db).await?;
        let mut slots = HashMap::new();
        let now = Instant::now();
        let slot = |rate_bps: u64| {
            Mutex::new(Slot {
                rate_bps: rate_bps.max(1),
                cursor: now,
                remaining: 0,
            })
        };
        let overall = limits.overall_bps.map(|bps| {
            slots.insert("overall".to_string(), slot(bps));
            "overall".to_string()
        });
        let mut pools: Vec<Option<String>> = (0..Pool::COUNT).map(|_| None).collect();
        for (pool, bps) in &limits.pools {
            let key = format!("pool {pool}");
            slots.insert(key.clone(), slot(*bps));
            pools[pool.index()] = Some(key);
        }
        for key in slots.keys() {
            db.execute(
                "INSERT INTO rate_leases(key, tat_us) VALUES ($1, 0) ON CONFLICT (key) DO NOTHING",
                &[key],
            )
            .await
            .map_err(pg_error)?;
        }
        Ok(Arc::new(Self {
            db: tokio::sync::Mutex::new(db),
            slots,
            pools,
            overall,
        }))
    }

    async fn take(&self, key: &str, bits: u64) {
        let Some(slot) = self.slots.get(key) else {
            return;
        };
        let mut failing = false;
        loop {
            let at = {
                let mut s = lock(slot);
                if s.remaining >= bits {
                    let at = s.cursor.max(Instant::now());
                    s.cursor = at + time_for(bits, s.rate_bps);
                    s.remaining -= bits;
                    Some(at)
                } else {
                    None
                }
            };
            if let Some(at) = at {
                tokio::time::sleep_until(at).await;
                return;
            }
            // One lease at a time; another task may have leased meanwhile.
            let db = self.db.lock().await;
            let (need, rate) = {
                let s = lock(slot);
                if s.remaining >= bits {
                    continue;
                }
                (bits - s.remaining, s.rate_bps)
            };
            let size = need.max(rate.saturating_mul(SLICE.as_millis() as u64) / 1000);
            let cost_us =
                i64::try_from(u128::from(size) * 1_000_000 / u128::from(rate)).unwrap_or(i64::MAX);
            let leased = db
                .query_one(
                    "WITH n AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8 AS now_us) \
                     UPDATE rate_leases r SET tat_us = GREATEST(r.tat_us, n.now_us) + $2 FROM n \
                     WHERE r.key = $1 RETURNING r.tat_us - $2 - n.now_us",
                    &[&key, &cost_us],
                )
                .await;
            drop(db);
            match leased {
                Ok(row) => {
                    let wait_us = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
                    let start = Instant::now() + Duration::from_micros(wait_us);
                    let mut s = lock(slot);
                    s.cursor = s.cursor.max(start);
                    s.remaining += size;
                    if failing {
                        tracing::warn!(limit = key, "the cluster rate limit's leases work again");
                        failing = false;
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::error!(limit = key, error = %schema::describe(&e), "cannot lease from the cluster rate limit; sending waits until it can");
                        failing = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

fn lock(m: &Mutex<Slot>) -> std::sync::MutexGuard<'_, Slot> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn time_for(bits: u64, rate_bps: u64) -> Duration {
    Duration::from_nanos(
        u64::try_from(u128::from(bits) * 1_000_000_000 / u128::from(rate_bps)).unwrap_or(u64::MAX),
    )
}

impl SharedLimit for ClusterLimit {
    fn acquire(&self, pool: Pool, bytes: u64) -> crate::net::BoxFuture<'_, ()> {
        let bits = bytes.saturating_mul(8);
        let pool_key = self.pools.get(pool.index()).cloned().flatten();
        Box::pin(async move {
            if let Some(k) = pool_key {
                self.take(&k, bits).await;
            }
            if let Some(k) = &self.overall {
                self.take(k, bits).await;
            }
        })
    }
}
