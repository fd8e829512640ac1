//! Delivery pools (SPEC §3.6, §11 A7, §12 D4), virtual mode:
//!
//! 1. an urgent pool with its own worker is not delayed by a bulk backlog: pool A's worker
//!    delivers at once while pool B's two workers have thousands of copies queued at a slow
//!    relay (0.5 s per copy);
//! 2. a pool that no worker serves goes through SMTP_FORWARD (SPEC D4), at once, while the served
//!    pool goes through its worker.

use std::time::Duration;

use jiff::civil::date;
use mock_mta::MockConfig;

use crate::runner::{Ctx, Failure, Outcome, Scenario, ScenarioResult, VIRTUAL_ONLY};
use crate::topology::{exactly_once, fast_options, iis_with_dot_latency, Topology};

const URGENT: &str = "URGENT.EXAMPLE.ORG:25";
const BULK: &str = "BULK.EXAMPLE.ORG:25";
const SYNC: &str = "SYNC.EXAMPLE.ORG:25";
const W: &str = "W.EXAMPLE.ORG:25";
const BULK_COPIES: usize = 3000;
const BULK_DOT_MS: u64 = 500;

pub fn scenario() -> Scenario {
    Scenario::new("pools", VIRTUAL_ONLY, pools)
}

async fn pools(_ctx: Ctx) -> ScenarioResult {
    let a = urgent_not_delayed().await?;
    let b = unserved_pool_through_sync().await?;
    Ok(Outcome::new(format!("{a}; {b}")))
}

async fn urgent_not_delayed() -> Result<String, Failure> {
    let t = Topology::new(
        "SMTP_FORWARD=SYNC.EXAMPLE.ORG\nSMTP_FORWARD_1=URGENT.EXAMPLE.ORG;POOL=A\nSMTP_FORWARD_2=2*BULK.EXAMPLE.ORG;POOL=B\nMAXBSMTP=1\n",
        date(2026, 11, 22).at(12, 0, 0, 0),
        &[
            (URGENT, MockConfig::iis()),
            (BULK, iis_with_dot_latency(BULK_DOT_MS)),
            (SYNC, MockConfig::iis()),
        ],
    )?;
    let bulk = (0..BULK_COPIES).map(|i| format!("bulk{i}@example.com"));
    t.submit(Some('B'), bulk, 1000)?;
    let run = t.start(fast_options());
    // Let the backlog build up and the bulk workers get going.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let urgent: Vec<String> = (0..5).map(|i| format!("urgent{i}@example.com")).collect();
    t.submit(Some('A'), urgent.iter().cloned(), 1000)?;
    let took = t
        .wait_for(
            "the urgent pool's 5 copies delivered",
            Duration::from_secs(3600),
            |t| {
                t.mocks
                    .get(URGENT)
                    .is_some_and(|m| m.journal().delivered_recipients().len() >= 5)
            },
        )
        .await?;
    let bulk_done = t.mock(BULK)?.journal().delivered_recipients().len();
    let bulk_queued = t.stats().await?.queued;
    run.stop().await?;
    exactly_once(
        &urgent,
        t.mock(URGENT)?.journal().delivered_recipients(),
        URGENT,
    )?;
    // Behind the backlog, FIFO through B's workers would have taken this long.
    let fifo_wait = (BULK_COPIES - bulk_done) as f64 * BULK_DOT_MS as f64 / 1000.0 / 2.0;
    if took > Duration::from_secs(2) || bulk_queued < (BULK_COPIES as u64) * 9 / 10 {
        return Err(Failure::new(
            format!(
                "pool A delivered within 2 s of submission while B still has most of its {BULK_COPIES} copies queued (SPEC 3.6)"
            ),
            format!(
                "A took {:.2} s; B had {bulk_queued} queued, {bulk_done} delivered",
                took.as_secs_f64()
            ),
        ));
    }
    Ok(format!(
        "urgent A: 5 copies in {:.2} s with B {bulk_queued} queued (behind B: ~{:.0} s)",
        took.as_secs_f64(),
        fifo_wait
    ))
}

async fn unserved_pool_through_sync() -> Result<String, Failure> {
    let t = Topology::new(
        "SMTP_FORWARD=SYNC.EXAMPLE.ORG\nSMTP_FORWARD_1=W.EXAMPLE.ORG;POOL=A\nMAXBSMTP=10\n",
        date(2026, 11, 22).at(12, 0, 0, 0),
        &[(W, MockConfig::iis()), (SYNC, MockConfig::iis())],
    )?;
    let served: Vec<String> = (0..50).map(|i| format!("a{i}@example.com")).collect();
    let unserved: Vec<String> = (0..50).map(|i| format!("c{i}@example.com")).collect();
    t.submit(Some('A'), served.iter().cloned(), 1000)?;
    t.submit(Some('C'), unserved.iter().cloned(), 1000)?;
    let t0 = tokio::time::Instant::now();
    t.run_until_empty(fast_options(), Duration::from_secs(3600))
        .await?;
    let took = t0.elapsed();
    exactly_once(&served, t.mock(W)?.journal().delivered_recipients(), W)?;
    exactly_once(
        &unserved,
        t.mock(SYNC)?.journal().delivered_recipients(),
        "SMTP_FORWARD (pool C has no worker)",
    )?;
    if took > Duration::from_secs(10) {
        return Err(Failure::new(
            "the unserved pool delivered through SMTP_FORWARD at once, not after the grace period",
            format!("the queue emptied after {:.1} s", took.as_secs_f64()),
        ));
    }
    Ok(format!(
        "unserved pool C: 50/50 via SMTP_FORWARD, served A: 50/50 via its worker, in {:.2} s",
        took.as_secs_f64()
    ))
}
