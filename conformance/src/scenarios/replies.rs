//! Replies and faults (TXN-4, TXN-3, QUEUE-1), virtual mode. One relay, three phases of
//! faults, set while the engine runs:
//!
//! 1. `*@bad.example` 550, `*@slow.example` and `*@stuck.example` 451, 421 at the 4th MAIL of a
//!    connection, and a drop after 20,000 bytes of DATA (only the large message crosses it);
//! 2. once a drop and a 421 have happened: the drop and the 421 are lifted;
//! 3. once the slow recipients have been deferred: their 451 is lifted.
//!
//! At the end: 550 recipients failed with the relay's reply, slow ones delivered on a retry,
//! stuck ones still queued, and delivered + failed + queued = submitted, in the spool's figures,
//! the ledger and the relay's journal, with nobody delivered twice.
//!
//! Real time: `mock-mta --rcpt-rule '*@bad.example=550' --rcpt-rule '*@stuck.example=451'` and
//! `smtpw run` as processes; once the ledger holds every outcome, `smtpw run` gets SIGTERM, and
//! `smtpw queue --json` on the closed spool must give delivered + failed + queued = submitted.
//! (The 421 and the drop are virtual only: their 30 s retry back-off is too slow for wall time.)

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::civil::date;
use mock_mta::{Faults, MockConfig, RcptRule};
use smtpw_engine::ledger::Outcome as LedgerOutcome;

use crate::runner::{temp_dir, Bin, Ctx, Failure, Outcome, Scenario, ScenarioResult, BOTH};
use crate::site::ProcessSite;
use smtpw_testkit::assert::exactly_once;
use smtpw_testkit::proc::{read_journal, MockProcess};
use smtpw_testkit::topology::{fast_options, Topology};

const RELAY: &str = "RELAY.EXAMPLE.ORG:25";

pub fn scenario() -> Scenario {
    Scenario::new("replies", BOTH, replies)
        .needs(&[Bin::Smtpw, Bin::MockMta])
        .both_spools()
}

fn rule(pattern: &str, code: u16) -> RcptRule {
    RcptRule {
        pattern: pattern.into(),
        code,
        text: None,
    }
}

fn faults(slow: bool, disruptive: bool) -> Faults {
    let mut rules = vec![rule("*@bad.example", 550), rule("*@stuck.example", 451)];
    if slow {
        rules.push(rule("*@slow.example", 451));
    }
    Faults {
        rcpt_rules: rules,
        close_after_messages: disruptive.then_some(3),
        drop_mid_data_after_bytes: disruptive.then_some(20_000),
        ..Faults::default()
    }
}

async fn replies(ctx: Ctx) -> ScenarioResult {
    if ctx.mode().is_real_time() {
        return real_time(&ctx).await;
    }
    let t = Topology::new(
        "SMTP_FORWARD=RELAY.EXAMPLE.ORG\nSMTP_FORWARD_1=2*RELAY.EXAMPLE.ORG\nMAXBSMTP=20\n",
        date(2026, 11, 22).at(12, 0, 0, 0),
        &[(RELAY, MockConfig::iis())],
    );
    let relay = t.mock(RELAY).clone();
    relay.set_faults(faults(true, true));

    let kinds = ["bad", "slow", "stuck"];
    let small: Vec<String> = (0..200)
        .map(|i| {
            let d = kinds.get(i % 10).copied().unwrap_or("ok");
            format!("r{i}@{d}.example")
        })
        .collect();
    let large: Vec<String> = (0..40).map(|i| format!("big{i}@ok.example")).collect();
    t.submit(None, small.iter().cloned(), 2_000);
    t.submit(None, large.iter().cloned(), 30_000);
    let submitted = (small.len() + large.len()) as u64;
    let of = |d: &str| -> Vec<String> {
        small
            .iter()
            .chain(&large)
            .filter(|a| a.ends_with(&format!("@{d}.example")))
            .cloned()
            .collect()
    };
    let (bad, slow, stuck) = (of("bad"), of("slow"), of("stuck"));
    let mut ok = of("ok");

    let run = t.start(fast_options());
    let ended = |t: &Topology, why: &str| {
        t.mocks.get(RELAY).map_or(0, |m| {
            m.journal()
                .sessions
                .iter()
                .filter(|s| s.end_reason.as_deref() == Some(why))
                .count()
        })
    };
    t.try_wait_for(
        "a drop mid-DATA and a 421 at the relay",
        Duration::from_secs(1800),
        |t| ended(t, "fault-drop") > 0 && ended(t, "fault-421") > 0,
    )
    .await?;
    relay.set_faults(faults(true, false));
    t.try_wait_for(
        "the slow recipients deferred in the ledger",
        Duration::from_secs(1800),
        |t| {
            t.try_ledger().is_ok_and(|l| {
                l.iter()
                    .filter(|x| {
                        x.outcome == LedgerOutcome::Deferred && x.rcpt.ends_with("@slow.example")
                    })
                    .count()
                    >= slow.len()
            })
        },
    )
    .await?;
    relay.set_faults(faults(false, false));
    // Everything but the stuck recipients settles.
    let settle = Duration::from_secs(2 * 3600);
    let t0 = tokio::time::Instant::now();
    let st = loop {
        let st = t.stats().await;
        if st.delivered + st.failed == submitted - stuck.len() as u64 || t0.elapsed() > settle {
            break st;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    };
    run.stop().await?;
    let drops = ended(&t, "fault-drop");
    let closes = ended(&t, "fault-421");

    // The spool's account.
    let want_delivered = (ok.len() + slow.len()) as u64;
    if st.delivered != want_delivered
        || st.failed != bad.len() as u64
        || st.queued != stuck.len() as u64
        || st.delivered + st.failed + st.queued != submitted
    {
        return Err(Failure::new(
            format!(
                "delivered {want_delivered} + failed {} + queued {} = submitted {submitted} (QUEUE-1)",
                bad.len(),
                stuck.len()
            ),
            format!(
                "delivered {} + failed {} + queued {} = {}",
                st.delivered,
                st.failed,
                st.queued,
                st.delivered + st.failed + st.queued
            ),
        ));
    }
    // The relay's account: each good or slow recipient exactly once.
    ok.extend(slow.iter().cloned());
    exactly_once(&ok, relay.journal().delivered_recipients(), RELAY)?;

    // The ledger's account: each recipient's last outcome.
    let ledger = t.try_ledger()?;
    let mut last: BTreeMap<&str, (&LedgerOutcome, &str)> = BTreeMap::new();
    let mut deferred_slow = 0;
    for l in &ledger {
        last.insert(&l.rcpt, (&l.outcome, &l.reply));
        if l.outcome == LedgerOutcome::Deferred && l.rcpt.ends_with("@slow.example") {
            deferred_slow += 1;
        }
    }
    for b in &bad {
        match last.get(b.as_str()) {
            Some((LedgerOutcome::Failed, reply)) if reply.starts_with("550 5.1.1") => {}
            other => {
                return Err(Failure::new(
                    format!("{b} failed with the relay's reply `550 5.1.1 User unknown`"),
                    format!("{other:?}"),
                ))
            }
        }
    }
    for s in &slow {
        if !matches!(last.get(s.as_str()), Some((LedgerOutcome::Delivered, _))) {
            return Err(Failure::new(
                format!("{s} deferred by 451, then delivered on a retry"),
                format!("{:?}", last.get(s.as_str())),
            ));
        }
    }
    for s in &stuck {
        match last.get(s.as_str()) {
            Some((LedgerOutcome::Deferred, reply)) if reply.starts_with("451") => {}
            other => {
                return Err(Failure::new(
                    format!("{s} still deferred with its 451"),
                    format!("{other:?}"),
                ))
            }
        }
    }
    if st
        .failure_reasons
        .iter()
        .all(|r| !r.reply.starts_with("550 5.1.1"))
    {
        return Err(Failure::new(
            "the 550 reply among the spool's failure reasons",
            format!("{:?}", st.failure_reasons),
        ));
    }
    Ok(Outcome::new(format!(
        "{submitted} submitted = {} delivered + {} failed (550, reply kept) + {} queued (451); {deferred_slow} deferrals retried; {closes} x 421, {drops} drops mid-DATA; nobody twice",
        st.delivered, st.failed, st.queued
    )))
}

async fn real_time(ctx: &Ctx) -> ScenarioResult {
    let mock = ctx.bin(Bin::MockMta)?;
    let dir = temp_dir()?;
    let d = dir.path();
    let m = MockProcess::start(
        mock,
        d,
        "relay",
        &[
            "--rcpt-rule",
            "*@bad.example=550",
            "--rcpt-rule",
            "*@stuck.example=451",
        ],
    )
    .await?;
    let p = m.addr.port();
    let mut site = ProcessSite::new(
        ctx,
        d,
        &format!("SMTP_FORWARD=127.0.0.1:{p}\nSMTP_FORWARD_1=2*127.0.0.1:{p}\nMAXBSMTP=20\n"),
    )?;
    let kinds = ["bad", "stuck"];
    let all: Vec<String> = (0..200)
        .map(|i| {
            let d = kinds.get(i % 10).copied().unwrap_or("ok");
            format!("r{i}@{d}.example")
        })
        .collect();
    let of = |d: &str| -> Vec<String> {
        all.iter()
            .filter(|a| a.ends_with(&format!("@{d}.example")))
            .cloned()
            .collect()
    };
    let (ok, bad, stuck) = (of("ok"), of("bad"), of("stuck"));
    site.submit(&all, 2000).await?;
    let child = site.start(&[])?;
    // Wait until the ledger has an outcome for everybody (the stuck ones deferred).
    let t0 = std::time::Instant::now();
    let counts = loop {
        let l = site.ledger().unwrap_or_default();
        let n = |o: LedgerOutcome| l.iter().filter(|x| x.outcome == o).count();
        let c = (
            n(LedgerOutcome::Delivered),
            n(LedgerOutcome::Failed),
            n(LedgerOutcome::Deferred),
        );
        if c.0 >= ok.len() && c.1 >= bad.len() && c.2 >= stuck.len() {
            break c;
        }
        if t0.elapsed() > Duration::from_secs(20) {
            return Err(Failure::new(
                format!(
                    "within 20 s, ledger outcomes for all: {} delivered, {} failed, {} deferred",
                    ok.len(),
                    bad.len(),
                    stuck.len()
                ),
                format!("{c:?}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // SIGTERM: in-flight transactions finish, then the daemon stops.
    site.stop(child).await?;
    let q = site.queue().await?;
    let get = |k: &str| q[k].as_u64().unwrap_or(u64::MAX);
    let (dl, fl, qd) = (get("delivered"), get("failed"), get("queued"));
    let submitted = all.len() as u64;
    if dl != ok.len() as u64
        || fl != bad.len() as u64
        || qd != stuck.len() as u64
        || dl + fl + qd != submitted
    {
        return Err(Failure::new(
            format!(
                "`smtpw queue --json`: delivered {} + failed {} + queued {} = submitted {submitted}",
                ok.len(),
                bad.len(),
                stuck.len()
            ),
            format!("delivered {dl} + failed {fl} + queued {qd}"),
        ));
    }
    let j = read_journal(&m.journal)?;
    drop(m);
    exactly_once(&ok, j.delivered_recipients(), "the mock-mta process")?;
    for l in site.ledger()? {
        if l.rcpt.ends_with("@bad.example")
            && !(l.outcome == LedgerOutcome::Failed && l.reply.starts_with("550 5.1.1"))
        {
            return Err(Failure::new(
                format!("{} failed with `550 5.1.1 User unknown`", l.rcpt),
                format!("{:?} with `{}`", l.outcome, l.reply),
            ));
        }
    }
    Ok(Outcome::new(format!(
        "processes: {submitted} submitted = {dl} delivered + {fl} failed (550 kept) + {qd} queued (451); ledger {counts:?}"
    )))
}
