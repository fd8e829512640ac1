//! Failover (SPEC §2.5, §11 A5, §12 D4), virtual mode:
//!
//! 1. the primary refuses connections: the failover host gets every copy;
//! 2. the primary is back: the next new connection (after the failover's connection ends at its
//!    10-minute idle time-out) goes to the primary again;
//! 3. a worker with no failover whose host refuses: the copies wait, and after the grace period
//!    (`EngineOptions::sync_grace`, 2 minutes here) go through SMTP_FORWARD.

use std::time::Duration;

use jiff::civil::date;
use mock_mta::{Faults, MockConfig};
use smtpw::spool::Spool;

use crate::runner::{Ctx, Failure, Outcome, Scenario, ScenarioResult, VIRTUAL_ONLY};
use crate::topology::{exactly_once, fast_options, host_port, Topology};

const PRIMARY: &str = "PRIMARY.EXAMPLE.ORG:25";
const FAILOVER: &str = "FAILOVER.EXAMPLE.ORG:25";
const SYNC: &str = "SYNC.EXAMPLE.ORG:25";
const DOWN: &str = "DOWN.EXAMPLE.ORG:25";
const GRACE: Duration = Duration::from_secs(120);

pub fn scenario() -> Scenario {
    Scenario::new("failover", VIRTUAL_ONLY, failover)
}

fn rcpts(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}{i}@example.com")).collect()
}

fn delivered_at(t: &Topology, hp: &str) -> Result<Vec<String>, Failure> {
    Ok(t.mock(hp)?.journal().delivered_recipients())
}

async fn failover(_ctx: Ctx) -> ScenarioResult {
    let a = primary_then_back().await?;
    let b = no_failover_then_sync().await?;
    Ok(Outcome::new(format!("{a}; {b}")))
}

async fn primary_then_back() -> Result<String, Failure> {
    let t = Topology::new(
        "SMTP_FORWARD=SYNC.EXAMPLE.ORG\nSMTP_FORWARD_1=PRIMARY.EXAMPLE.ORG;FAILOVER.EXAMPLE.ORG\nMAXBSMTP=10\n",
        date(2026, 11, 22).at(12, 0, 0, 0),
        &[
            (PRIMARY, MockConfig::iis()),
            (FAILOVER, MockConfig::iis()),
            (SYNC, MockConfig::iis()),
        ],
    )?;
    let primary = t.mock(PRIMARY)?.clone();
    primary.set_faults(Faults {
        refuse_connections: true,
        ..Faults::default()
    });
    let first = rcpts("first", 100);
    t.submit(None, first.iter().cloned(), 1500)?;
    let run = t.start(fast_options());
    let took = t
        .wait_for(
            "the failover to get the 100 recipients while the primary refuses",
            Duration::from_secs(600),
            |t| {
                t.mocks
                    .get(FAILOVER)
                    .is_some_and(|m| m.journal().delivered_recipients().len() >= 100)
            },
        )
        .await?;
    exactly_once(&first, delivered_at(&t, FAILOVER)?, FAILOVER)?;
    let tried = t.connector.connects(&host_port(PRIMARY)?);
    if tried == 0 || primary.stats().sessions != 0 || !delivered_at(&t, SYNC)?.is_empty() {
        return Err(Failure::new(
            "the primary tried first and refused, the sync path unused",
            format!(
                "{tried} connection attempts to the primary, {} sessions there, {} at SYNC",
                primary.stats().sessions,
                delivered_at(&t, SYNC)?.len()
            ),
        ));
    }
    // The primary comes back. The failover's connection ends at its idle time-out (10 min);
    // the next new connection goes to the primary (SPEC A5).
    primary.set_faults(Faults::default());
    tokio::time::sleep(Duration::from_secs(11 * 60)).await;
    let second = rcpts("second", 100);
    t.submit(None, second.iter().cloned(), 1500)?;
    t.wait_for("the second job delivered", Duration::from_secs(600), |t| {
        t.spool.queued_copies() == 0 && t.delivered_everywhere().len() >= 200
    })
    .await?;
    run.stop().await?;
    let at_primary = delivered_at(&t, PRIMARY)?;
    if at_primary.len() != 100 || at_primary.iter().any(|r| !r.starts_with("second")) {
        let at_failover = delivered_at(&t, FAILOVER)?.len();
        return Err(Failure::new(
            "after the primary is back, the second job's 100 recipients at the primary (SPEC A5: back to the primary on the next connection)",
            format!(
                "{} at the primary, {at_failover} in all at the failover",
                at_primary.len()
            ),
        ));
    }
    exactly_once(&second, at_primary, PRIMARY)?;
    Ok(format!(
        "primary refusing: 100/100 via failover in {:.1} s; primary back: 100/100 via primary",
        took.as_secs_f64()
    ))
}

async fn no_failover_then_sync() -> Result<String, Failure> {
    let t = Topology::new(
        "SMTP_FORWARD=SYNC.EXAMPLE.ORG\nSMTP_FORWARD_1=DOWN.EXAMPLE.ORG\nMAXBSMTP=10\n",
        date(2026, 11, 22).at(12, 0, 0, 0),
        &[(SYNC, MockConfig::iis())],
    )?;
    let want = rcpts("stranded", 50);
    t.submit(None, want.iter().cloned(), 1500)?;
    let run = t.start(fast_options().with_sync_grace(GRACE));
    // Half-way through the grace period: nothing delivered, everything still queued.
    tokio::time::sleep(GRACE / 2).await;
    let early = delivered_at(&t, SYNC)?.len();
    let queued = t.stats().await?.queued;
    if early != 0 || queued != 50 {
        return Err(Failure::new(
            "within the grace period the copies wait: 0 delivered, 50 queued",
            format!("{early} delivered through SMTP_FORWARD, {queued} queued"),
        ));
    }
    let took = t
        .wait_for(
            "the stranded copies to go through SMTP_FORWARD after the grace period",
            Duration::from_secs(3600),
            |t| t.delivered_everywhere().len() >= 50,
        )
        .await?
        + GRACE / 2;
    let tried = t.connector.connects(&host_port(DOWN)?);
    run.stop().await?;
    exactly_once(&want, delivered_at(&t, SYNC)?, SYNC)?;
    // Half a minute past the grace is allowed for the back-off and the polls.
    if took < GRACE || took > GRACE + Duration::from_secs(30) {
        return Err(Failure::new(
            format!(
                "delivery through SMTP_FORWARD between {} s and {} s (grace {} s, SPEC D4)",
                GRACE.as_secs(),
                GRACE.as_secs() + 30,
                GRACE.as_secs()
            ),
            format!("after {:.1} s", took.as_secs_f64()),
        ));
    }
    let relays: std::collections::BTreeSet<Option<String>> =
        t.ledger()?.into_iter().map(|l| l.relay).collect();
    if relays.len() != 1 || !relays.contains(&Some(SYNC.to_string())) {
        return Err(Failure::new(
            format!("every ledger line with relay {SYNC}"),
            format!("{relays:?}"),
        ));
    }
    Ok(format!(
        "no failover: {tried} refused attempts, 50/50 through SMTP_FORWARD after {:.1} s (grace {} s)",
        took.as_secs_f64(),
        GRACE.as_secs()
    ))
}

/// Builder-style setter for the grace period.
trait WithGrace {
    fn with_sync_grace(self, d: Duration) -> Self;
}

impl WithGrace for smtpw::engine::EngineOptions {
    fn with_sync_grace(mut self, d: Duration) -> Self {
        self.sync_grace = d;
        self
    }
}
