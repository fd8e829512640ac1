//! Failover (WRK-5, WRK-6, FWD-3), virtual mode:
//!
//! 1. the primary refuses connections: the failover host gets every copy;
//! 2. the primary is back while the failover's connection is kept busy: the worker gives that
//!    connection up after `smtpw_engine::engine::FAILOVER_RECHECK` (5 min) and its next new connection
//!    goes to the primary, which keeps the traffic;
//! 3. a worker with no failover whose host refuses: the copies wait, and after the grace period
//!    (`EngineOptions::sync_grace`, 100 s here) go through SMTP_FORWARD.
//!
//! Real time runs parts 1 and 3 with the binaries: a primary port nobody listens on (connection
//! refused), `mock-mta` processes as the failover and as SMTP_FORWARD (which must get nothing in
//! part 1), `smtpw run --until-empty` (with `--sync-grace 1` in part 3).

use std::time::Duration;

use jiff::civil::date;
use mock_mta::{Faults, MockConfig};
use smtpw_engine::engine::FAILOVER_RECHECK;
use smtpw_engine::spool::Spool;

use crate::runner::{temp_dir, Bin, Ctx, Failure, Outcome, Scenario, ScenarioResult, BOTH};
use crate::site::ProcessSite;
use smtpw_testkit::assert::exactly_once;
use smtpw_testkit::proc::{free_port, MockProcess};
use smtpw_testkit::topology::{fast_options, host_port, Topology};

const PRIMARY: &str = "PRIMARY.EXAMPLE.ORG:25";
const FAILOVER: &str = "FAILOVER.EXAMPLE.ORG:25";
const SYNC: &str = "SYNC.EXAMPLE.ORG:25";
const DOWN: &str = "DOWN.EXAMPLE.ORG:25";
/// Neither a whole number of minutes nor a sum of the worker's back-offs (30, 60, 120 s ...),
/// so that late wake-ups show.
const GRACE: Duration = Duration::from_secs(100);
/// How late after the grace period the copies may go: the SMTP_FORWARD path looks for stranded
/// pools every `idle_poll` (200 ms here), plus a margin. (Before main's 466ecec..1d726ba merge the
/// path looked only at the next minute, up to 60 s late; this bound catches that.)
const LATE_BOUND: Duration = Duration::from_secs(2);

pub fn scenario() -> Scenario {
    Scenario::new("failover", BOTH, failover)
        .needs(&[Bin::Smtpw, Bin::MockMta])
        .both_spools()
}

fn rcpts(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}{i}@example.com")).collect()
}

fn delivered_at(t: &Topology, hp: &str) -> Result<Vec<String>, Failure> {
    Ok(t.mock(hp).journal().delivered_recipients())
}

async fn failover(ctx: Ctx) -> ScenarioResult {
    if ctx.mode().is_real_time() {
        return real_time(&ctx).await.map(Outcome::new);
    }
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
    );
    let primary = t.mock(PRIMARY).clone();
    primary.set_faults(Faults {
        refuse_connections: true,
        ..Faults::default()
    });
    let first = rcpts("first", 100);
    t.submit(None, first.iter().cloned(), 1500);
    let run = t.start(fast_options());
    let took = t
        .try_wait_for(
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
    let tried = t.connector.connects(&host_port(PRIMARY));
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
    // The primary comes back while the failover's connection stays busy (a small job every
    // 20 s, so the relay's 10-minute idle time-out never ends it). The worker gives the failover
    // connection up after FAILOVER_RECHECK and the next new connection goes to the primary
    // (WRK-6).
    primary.set_faults(Faults::default());
    let back = tokio::time::Instant::now();
    let mut busy: Vec<String> = Vec::new();
    let mut n = 0;
    let returned = loop {
        if primary.stats().messages > 0 {
            break back.elapsed();
        }
        if back.elapsed() > FAILOVER_RECHECK + Duration::from_secs(60) {
            return Err(Failure::new(
                format!(
                    "traffic back at the primary within {} s of its return while the failover connection is busy (FAILOVER_RECHECK {} s, WRK-6)",
                    (FAILOVER_RECHECK + Duration::from_secs(60)).as_secs(),
                    FAILOVER_RECHECK.as_secs()
                ),
                format!(
                    "nothing at the primary after {} s; {} recipients at the failover",
                    back.elapsed().as_secs(),
                    delivered_at(&t, FAILOVER)?.len()
                ),
            ));
        }
        let job = rcpts(&format!("busy{n}-"), 10);
        t.submit(None, job.iter().cloned(), 1500);
        busy.extend(job);
        n += 1;
        tokio::time::sleep(Duration::from_secs(20)).await;
    };
    // Once back, the primary keeps the traffic.
    let before = delivered_at(&t, FAILOVER)?.len();
    let second = rcpts("second", 100);
    t.submit(None, second.iter().cloned(), 1500);
    let total = first.len() + busy.len() + second.len();
    t.try_wait_for("the second job delivered", Duration::from_secs(600), |t| {
        t.spool.queued_copies() == 0 && t.delivered_everywhere().len() >= total
    })
    .await?;
    run.stop().await?;
    let mut everyone = first.clone();
    everyone.extend(busy.iter().cloned());
    everyone.extend(second.iter().cloned());
    exactly_once(
        &everyone,
        t.delivered_everywhere(),
        "the primary and the failover",
    )?;
    let at_primary = delivered_at(&t, PRIMARY)?;
    let second_at_primary = at_primary
        .iter()
        .filter(|r| r.starts_with("second"))
        .count();
    let after = delivered_at(&t, FAILOVER)?.len();
    if second_at_primary != second.len() || after != before {
        return Err(Failure::new(
            "once the primary has traffic again, the next job's 100 recipients all at the primary (WRK-6)",
            format!(
                "{second_at_primary} at the primary, {} more at the failover",
                after - before
            ),
        ));
    }
    Ok(format!(
        "primary refusing: 100/100 via failover in {:.1} s; primary back: traffic returned after {:.0} s with the failover busy (recheck {} s), then 100/100 via primary",
        took.as_secs_f64(),
        returned.as_secs_f64(),
        FAILOVER_RECHECK.as_secs()
    ))
}

async fn no_failover_then_sync() -> Result<String, Failure> {
    let t = Topology::new(
        "SMTP_FORWARD=SYNC.EXAMPLE.ORG\nSMTP_FORWARD_1=DOWN.EXAMPLE.ORG\nMAXBSMTP=10\n",
        date(2026, 11, 22).at(12, 0, 0, 0),
        &[(SYNC, MockConfig::iis())],
    );
    let want = rcpts("stranded", 50);
    t.submit(None, want.iter().cloned(), 1500);
    let run = t.start(fast_options().with_sync_grace(GRACE));
    // Half-way through the grace period: nothing delivered, everything still queued.
    tokio::time::sleep(GRACE / 2).await;
    let early = delivered_at(&t, SYNC)?.len();
    let queued = t.stats().await.queued;
    if early != 0 || queued != 50 {
        return Err(Failure::new(
            "within the grace period the copies wait: 0 delivered, 50 queued",
            format!("{early} delivered through SMTP_FORWARD, {queued} queued"),
        ));
    }
    let took = t
        .try_wait_for(
            "the stranded copies to go through SMTP_FORWARD after the grace period",
            Duration::from_secs(3600),
            |t| t.delivered_everywhere().len() >= 50,
        )
        .await?
        + GRACE / 2;
    let tried = t.connector.connects(&host_port(DOWN));
    run.stop().await?;
    exactly_once(&want, delivered_at(&t, SYNC)?, SYNC)?;
    if took < GRACE || took > GRACE + LATE_BOUND {
        return Err(Failure::new(
            format!(
                "delivery through SMTP_FORWARD between {} s and {} s (grace {} s, FWD-3: the path looks for stranded pools every poll)",
                GRACE.as_secs(),
                (GRACE + LATE_BOUND).as_secs(),
                GRACE.as_secs()
            ),
            format!("after {:.1} s", took.as_secs_f64()),
        ));
    }
    let relays: std::collections::BTreeSet<Option<String>> =
        t.try_ledger()?.into_iter().map(|l| l.relay).collect();
    if relays.len() != 1 || !relays.contains(&Some(SYNC.to_string())) {
        return Err(Failure::new(
            format!("every ledger line with relay {SYNC}"),
            format!("{relays:?}"),
        ));
    }
    Ok(format!(
        "no failover: {tried} refused attempts, 50/50 through SMTP_FORWARD after {:.1} s (grace {} s, {:.1} s late)",
        took.as_secs_f64(),
        GRACE.as_secs(),
        (took.saturating_sub(GRACE)).as_secs_f64()
    ))
}

/// Builder-style setter for the grace period.
trait WithGrace {
    fn with_sync_grace(self, d: Duration) -> Self;
}

impl WithGrace for smtpw_engine::engine::EngineOptions {
    fn with_sync_grace(mut self, d: Duration) -> Self {
        self.sync_grace = d;
        self
    }
}

async fn real_time(ctx: &Ctx) -> Result<String, Failure> {
    let mock = ctx.bin(Bin::MockMta)?;
    let dir = temp_dir()?;
    let d = dir.path();
    let fo = MockProcess::start(mock, d, "failover", &[]).await?;
    let sync = MockProcess::start(mock, d, "sync", &[]).await?;
    let dead = free_port();
    let (f, s) = (fo.addr.port(), sync.addr.port());
    let sub = |name: &str| -> Result<std::path::PathBuf, Failure> {
        let p = d.join(name);
        std::fs::create_dir_all(&p)
            .map(|()| p)
            .map_err(|e| Failure::new("a directory", e.to_string()))
    };
    // 1: the primary refuses; the failover gets every copy.
    let mut one = ProcessSite::new(
        ctx,
        &sub("one")?,
        &format!(
            "SMTP_FORWARD=127.0.0.1:{s}\nSMTP_FORWARD_1=127.0.0.1:{dead};127.0.0.1:{f}\nMAXBSMTP=10\n"
        ),
    )?;
    let first = rcpts("first", 100);
    one.submit(&first, 1500).await?;
    one.run_until_empty(&[], Duration::from_secs(30)).await?;
    // 3: no failover; after the 1 s grace, SMTP_FORWARD.
    let mut three = ProcessSite::new(
        ctx,
        &sub("three")?,
        &format!("SMTP_FORWARD=127.0.0.1:{s}\nSMTP_FORWARD_1=127.0.0.1:{dead}\nMAXBSMTP=10\n"),
    )?;
    let stranded = rcpts("stranded", 50);
    three.submit(&stranded, 1500).await?;
    let t0 = std::time::Instant::now();
    three
        .run_until_empty(&["--sync-grace", "1"], Duration::from_secs(30))
        .await?;
    let took = t0.elapsed();
    // The binary polls every second (EngineOptions::default().idle_poll); 1 s more of margin.
    let bound = Duration::from_secs(3);
    if took < Duration::from_secs(1) || took > bound {
        return Err(Failure::new(
            format!(
                "the stranded copies through SMTP_FORWARD after the 1 s grace, within {} s of the start (FWD-3)",
                bound.as_secs()
            ),
            format!("`smtpw run --until-empty` ended after {:.2} s", took.as_secs_f64()),
        ));
    }
    let relays3: std::collections::BTreeSet<Option<String>> =
        three.ledger()?.into_iter().map(|l| l.relay).collect();
    let want3 = Some(format!("127.0.0.1:{s}"));
    if relays3.len() != 1 || !relays3.contains(&want3) {
        return Err(Failure::new(
            format!("every ledger line of part 3 with relay {want3:?}"),
            format!("{relays3:?}"),
        ));
    }
    let jf = fo.finish().await?;
    let js = sync.finish().await?;
    exactly_once(&first, jf.delivered_recipients(), "the failover mock-mta")?;
    exactly_once(
        &stranded,
        js.delivered_recipients(),
        "the SMTP_FORWARD mock-mta (part 3 only; nothing from part 1)",
    )?;
    let relays: std::collections::BTreeSet<Option<String>> =
        one.ledger()?.into_iter().map(|l| l.relay).collect();
    let want = Some(format!("127.0.0.1:{f}"));
    if relays.len() != 1 || !relays.contains(&want) {
        return Err(Failure::new(
            format!("every ledger line with the failover as relay, {want:?}"),
            format!("{relays:?}"),
        ));
    }
    Ok(format!(
        "processes: primary refusing (port {dead}) -> 100/100 via the failover; no failover -> 50/50 via SMTP_FORWARD, run ended {:.2} s after start (grace 1 s)",
        took.as_secs_f64()
    ))
}
