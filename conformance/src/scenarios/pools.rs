//! Delivery pools (POOL-4, FWD-3), virtual mode:
//!
//! 1. an urgent pool with its own worker is not delayed by a bulk backlog: pool A's worker
//!    delivers at once while pool B's two workers have thousands of copies queued at a slow
//!    relay (0.5 s per copy);
//! 2. a pool that no worker serves goes through SMTP_FORWARD (FWD-3), at once, while the served
//!    pool goes through its worker.
//!
//! Real time does both at once with the binaries: `mock-mta` processes for the urgent relay, the
//! bulk relay (100 ms per message) and SMTP_FORWARD; 400 bulk copies queued, then an urgent job
//! and a job for a pool with no worker submitted while `smtpw run` works through the backlog.

use std::time::Duration;

use jiff::civil::date;
use mock_mta::MockConfig;

use crate::runner::{temp_dir, Bin, Ctx, Failure, Outcome, Scenario, ScenarioResult, BOTH};
use crate::site::ProcessSite;
use smtpw_testkit::assert::exactly_once;
use smtpw_testkit::proc::{read_journal, MockProcess};
use smtpw_testkit::topology::{fast_options, iis_with_dot_latency, Topology};

const URGENT: &str = "URGENT.EXAMPLE.ORG:25";
const BULK: &str = "BULK.EXAMPLE.ORG:25";
const SYNC: &str = "SYNC.EXAMPLE.ORG:25";
const W: &str = "W.EXAMPLE.ORG:25";
const BULK_COPIES: usize = 3000;
const BULK_DOT_MS: u64 = 500;

pub fn scenario() -> Scenario {
    Scenario::new("pools", BOTH, pools)
        .needs(&[Bin::Smtpw, Bin::MockMta])
        .both_spools()
}

async fn pools(ctx: Ctx) -> ScenarioResult {
    if ctx.mode().is_real_time() {
        return real_time(&ctx).await;
    }
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
    );
    let bulk = (0..BULK_COPIES).map(|i| format!("bulk{i}@example.com"));
    t.submit(Some('B'), bulk, 1000);
    let run = t.start(fast_options());
    // Let the backlog build up and the bulk workers get going.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let urgent: Vec<String> = (0..5).map(|i| format!("urgent{i}@example.com")).collect();
    t.submit(Some('A'), urgent.iter().cloned(), 1000);
    let took = t
        .try_wait_for(
            "the urgent pool's 5 copies delivered",
            Duration::from_secs(3600),
            |t| {
                t.mocks
                    .get(URGENT)
                    .is_some_and(|m| m.journal().delivered_recipients().len() >= 5)
            },
        )
        .await?;
    let bulk_done = t.mock(BULK).journal().delivered_recipients().len();
    let bulk_queued = t.stats().await.queued;
    run.stop().await?;
    exactly_once(
        &urgent,
        t.mock(URGENT).journal().delivered_recipients(),
        URGENT,
    )?;
    // Behind the backlog, FIFO through B's workers would have taken this long.
    let fifo_wait = (BULK_COPIES - bulk_done) as f64 * BULK_DOT_MS as f64 / 1000.0 / 2.0;
    if took > Duration::from_secs(2) || bulk_queued < (BULK_COPIES as u64) * 9 / 10 {
        return Err(Failure::new(
            format!(
                "pool A delivered within 2 s of submission while B still has most of its {BULK_COPIES} copies queued (POOL-4)"
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
    );
    let served: Vec<String> = (0..50).map(|i| format!("a{i}@example.com")).collect();
    let unserved: Vec<String> = (0..50).map(|i| format!("c{i}@example.com")).collect();
    t.submit(Some('A'), served.iter().cloned(), 1000);
    t.submit(Some('C'), unserved.iter().cloned(), 1000);
    let t0 = tokio::time::Instant::now();
    t.try_run_until_empty(fast_options(), Duration::from_secs(3600))
        .await?;
    let took = t0.elapsed();
    exactly_once(&served, t.mock(W).journal().delivered_recipients(), W)?;
    exactly_once(
        &unserved,
        t.mock(SYNC).journal().delivered_recipients(),
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

async fn real_time(ctx: &Ctx) -> ScenarioResult {
    let mock = ctx.bin(Bin::MockMta)?;
    let dir = temp_dir()?;
    let d = dir.path();
    let urgent_m = MockProcess::start(mock, d, "urgent", &[]).await?;
    let bulk_m = MockProcess::start(mock, d, "bulk", &["--command-latency", "DOT=100"]).await?;
    let sync_m = MockProcess::start(mock, d, "sync", &[]).await?;
    let (u, b, s) = (urgent_m.addr.port(), bulk_m.addr.port(), sync_m.addr.port());
    let mut site = ProcessSite::new(
        ctx,
        d,
        &format!(
            "SMTP_FORWARD=127.0.0.1:{s}\nSMTP_FORWARD_1=127.0.0.1:{u};POOL=A\nSMTP_FORWARD_2=2*127.0.0.1:{b};POOL=B\nMAXBSMTP=1\n"
        ),
    )?;
    let bulk: Vec<String> = (0..400).map(|i| format!("bulk{i}@example.com")).collect();
    site.submit_to(Some('B'), &bulk, 1000).await?;
    let child = site.start(&[])?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let urgent: Vec<String> = (0..5).map(|i| format!("urgent{i}@example.com")).collect();
    let unserved: Vec<String> = (0..20).map(|i| format!("c{i}@example.com")).collect();
    let t0 = std::time::Instant::now();
    site.submit_to(Some('A'), &urgent, 1000).await?;
    site.submit_to(Some('C'), &unserved, 1000).await?;
    let delivered = |m: &MockProcess| {
        read_journal(&m.journal)
            .map(|j| j.delivered_recipients())
            .unwrap_or_default()
    };
    let (took, bulk_done) = loop {
        if delivered(&urgent_m).len() >= 5 && delivered(&sync_m).len() >= 20 {
            break (t0.elapsed(), delivered(&bulk_m).len());
        }
        if t0.elapsed() > Duration::from_secs(15) {
            return Err(Failure::new(
                "within 15 s: the urgent job (pool A) at its relay and pool C's job through SMTP_FORWARD",
                format!(
                    "{} urgent, {} through SMTP_FORWARD",
                    delivered(&urgent_m).len(),
                    delivered(&sync_m).len()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    site.stop(child).await?;
    exactly_once(&urgent, delivered(&urgent_m), "the urgent mock-mta")?;
    exactly_once(&unserved, delivered(&sync_m), "the SMTP_FORWARD mock-mta")?;
    if took > Duration::from_secs(3) || bulk_done > 300 {
        return Err(Failure::new(
            "the urgent and unserved pools delivered within 3 s while most of the 400 bulk copies still wait",
            format!(
                "{:.2} s; {bulk_done} bulk copies delivered by then",
                took.as_secs_f64()
            ),
        ));
    }
    Ok(Outcome::new(format!(
        "processes: urgent A 5/5 and unserved C 20/20 (via SMTP_FORWARD) in {:.2} s, with {} of 400 bulk copies still queued",
        took.as_secs_f64(),
        400 - bulk_done
    )))
}
