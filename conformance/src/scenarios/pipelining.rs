//! Transactions in flight under faults (issue 12 items 4 and 6; TXN-13, TXN-14, TXN-3, TXN-6):
//! every recipient delivered exactly once, none lost, in the relay's journal and in the ledger,
//! when the relay misbehaves in the middle of a window of pipelined transactions.
//!
//! Two relays: IIS as it is (CHUNKING + PIPELINING: whole transactions with `BDAT n LAST`, up to
//! 16 in flight) and IIS without CHUNKING (PIPELINING only: DATA, the next transaction's commands
//! riding on the previous message's final dot). Each meets three faults, virtual mode:
//!
//! 1. a drop mid-message (no reply) once 20,000 bytes of one message arrived: the 30 KB message
//!    crosses it, the 2 KB ones in the same window do not; the drop is lifted once it happened;
//! 2. 421 and a close at the MAIL after 4 messages of a connection (transactions behind it in the
//!    window never reached the relay: back to the queue untouched);
//! 3. 452 past 3 recipients of a transaction, copies of 5 (MAXBSMTP=5): the rest of that copy
//!    goes in a later transaction, never with another copy's recipients.
//!
//! Real time: `mock-mta --max-recipients 3 --too-many-code 452` (with and without CHUNKING, the
//! latter from a `--config` file) and `smtpw run --until-empty` as processes. (The 421 and the
//! drop are virtual only: the retry back-off of the copy they defer is too slow for wall time.)

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::civil::date;
use mock_mta::{Faults, MockConfig};
use smtpw_engine::ledger::{LedgerLine, Outcome as LedgerOutcome};

use crate::report::Mode;
use crate::runner::{temp_dir, Bin, Ctx, Failure, Outcome, Scenario, ScenarioResult, BOTH};
use crate::site::ProcessSite;
use smtpw_testkit::assert::exactly_once;
use smtpw_testkit::proc::MockProcess;
use smtpw_testkit::topology::{fast_options, Topology};

const RELAY: &str = "RELAY.EXAMPLE.ORG:25";
const SITE: &str =
    "SMTP_FORWARD=RELAY.EXAMPLE.ORG\nSMTP_FORWARD_1=2*RELAY.EXAMPLE.ORG\nMAXBSMTP=5\n";

pub fn scenario() -> Scenario {
    Scenario::new("pipelining-faults", BOTH, pipelining).needs(&[Bin::Smtpw, Bin::MockMta])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// CHUNKING offered: BDAT.
    Bdat,
    /// PIPELINING only: DATA.
    Data,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    DropMidMessage,
    Close421,
    TooMany452,
}

/// The IIS profile's EHLO keywords, without CHUNKING (and BINARYMIME, which needs it).
fn without_chunking(keywords: &[String]) -> Vec<String> {
    keywords
        .iter()
        .filter(|k| !k.eq_ignore_ascii_case("CHUNKING") && !k.eq_ignore_ascii_case("BINARYMIME"))
        .cloned()
        .collect()
}

fn faults(fault: Fault, on: bool) -> Faults {
    Faults {
        drop_mid_data_after_bytes: (on && fault == Fault::DropMidMessage).then_some(20_000),
        close_after_messages: (on && fault == Fault::Close421).then_some(4),
        ..Faults::default()
    }
}

fn mock(body: Body, fault: Fault) -> MockConfig {
    let mut c = MockConfig::iis();
    if body == Body::Data {
        c.profile.ehlo_keywords = without_chunking(&c.profile.ehlo_keywords);
    }
    if fault == Fault::TooMany452 {
        c.profile.max_recipients = Some(3);
        c.profile.too_many_code = 452;
    }
    c.faults = faults(fault, true);
    c
}

/// 300 recipients of a 2 KB message (60 copies of 5) and 10 of a 30 KB one (2 copies).
fn recipients() -> (Vec<String>, Vec<String>) {
    let small = (0..300)
        .map(|i| format!("s{i:03}@d{}.example", i % 7))
        .collect();
    let large = (0..10).map(|i| format!("big{i}@ok.example")).collect();
    (small, large)
}

async fn pipelining(ctx: Ctx) -> ScenarioResult {
    match ctx.mode() {
        Mode::Virtual => {
            let mut parts = Vec::new();
            for body in [Body::Bdat, Body::Data] {
                for fault in [Fault::DropMidMessage, Fault::Close421, Fault::TooMany452] {
                    parts.push(virtual_case(body, fault).await?);
                }
            }
            Ok(Outcome::new(parts.join("; ")))
        }
        Mode::RealTime | Mode::RealTimePg => {
            let a = real_time(&ctx, Body::Bdat).await?;
            let b = real_time(&ctx, Body::Data).await?;
            Ok(Outcome::new(format!("{a}; {b}")))
        }
    }
}

/// Sessions the relay ended for `why` (`fault-drop`, `fault-421`).
fn ended(t: &Topology, why: &str) -> usize {
    t.mocks.get(RELAY).map_or(0, |m| {
        m.journal()
            .sessions
            .iter()
            .filter(|s| s.end_reason.as_deref() == Some(why))
            .count()
    })
}

async fn virtual_case(body: Body, fault: Fault) -> Result<String, Failure> {
    let name = format!("{body:?}/{fault:?}");
    let t = Topology::new(
        SITE,
        date(2026, 11, 22).at(12, 0, 0, 0),
        &[(RELAY, mock(body, fault))],
    );
    let (small, large) = recipients();
    t.submit(None, small.iter().cloned(), 2_000);
    t.submit(None, large.iter().cloned(), 30_000);
    let want: Vec<String> = small.iter().chain(&large).cloned().collect();
    let limit = Duration::from_secs(4 * 3600);
    let mut deferred = 0;
    let mut recoveries = 0;
    if fault == Fault::DropMidMessage {
        let run = t.start(fast_options());
        t.try_wait_for(
            &format!("{name}: a drop mid-message at the relay"),
            limit,
            |t| ended(t, "fault-drop") > 0,
        )
        .await?;
        t.mock(RELAY).set_faults(faults(fault, false));
        t.try_wait_for(
            &format!("{name}: every recipient at the relay"),
            limit,
            |t| t.delivered_everywhere().len() >= want.len(),
        )
        .await?;
        run.stop().await?;
    } else {
        let s = t.try_run_until_empty(fast_options(), limit).await?;
        deferred = s.deferred;
        recoveries = s.too_many_recoveries;
    }
    exactly_once(
        &want,
        t.delivered_everywhere(),
        &format!("{name}: the relay"),
    )?;
    let ledger = t.try_ledger()?;
    let delivered = once_each_in_ledger(&name, &want, &ledger)?;
    let j = t.mock(RELAY).journal();
    let fault_seen = match fault {
        Fault::DropMidMessage => ended(&t, "fault-drop"),
        Fault::Close421 => ended(&t, "fault-421"),
        Fault::TooMany452 => j.rcpt_replies().iter().filter(|r| r.code == 452).count(),
    };
    if fault_seen == 0 || (fault == Fault::Close421 && deferred == 0) {
        return Err(Failure::new(
            format!("{name}: the fault to happen (and, for the 421, a copy deferred by it)"),
            format!("{fault_seen} seen, {deferred} deferred"),
        ));
    }
    if fault == Fault::TooMany452 {
        // Each transaction carries one copy's recipients, at most 3 of them accepted.
        let over = j
            .accepted_transactions()
            .iter()
            .filter(|t| t.accepted_rcpts().count() > 3)
            .count();
        let mixed = j
            .accepted_transactions()
            .iter()
            .filter(|t| {
                let copy = |a: &str| {
                    // s{i:03}: copies of 5 consecutive recipients of the small job.
                    a.strip_prefix('s')
                        .and_then(|n| n.get(..3))
                        .and_then(|n| n.parse::<usize>().ok())
                        .map_or(usize::MAX, |n| n / 5)
                };
                let first = t.rcpts.first().map_or(0, |r| copy(&r.addr));
                t.rcpts.iter().any(|r| copy(&r.addr) != first)
            })
            .count();
        if over > 0 || mixed > 0 || recoveries == 0 {
            return Err(Failure::new(
                format!("{name}: no transaction above 3 recipients, none mixing copies, recoveries counted (TXN-3)"),
                format!("{over} above 3, {mixed} mixing copies, {recoveries} recoveries"),
            ));
        }
    }
    Ok(format!(
        "{name}: {delivered} once each, fault seen {fault_seen}x"
    ))
}

/// Every recipient has exactly one `delivered` line in the ledger, and none failed.
fn once_each_in_ledger(
    name: &str,
    want: &[String],
    ledger: &[LedgerLine],
) -> Result<usize, Failure> {
    let mut n: BTreeMap<&str, usize> = BTreeMap::new();
    let mut failed = 0;
    for l in ledger {
        match l.outcome {
            LedgerOutcome::Delivered => *n.entry(l.rcpt.as_str()).or_insert(0) += 1,
            LedgerOutcome::Failed => failed += 1,
            _ => {}
        }
    }
    let wrong: Vec<&String> = want
        .iter()
        .filter(|a| n.get(a.as_str()) != Some(&1))
        .collect();
    if !wrong.is_empty() || failed > 0 || n.len() != want.len() {
        return Err(Failure::new(
            format!(
                "{name}: one delivered ledger line for each of the {} recipients, none failed",
                want.len()
            ),
            format!(
                "{} recipients without exactly one (e.g. {:?}), {} addresses delivered, {failed} failed",
                wrong.len(),
                wrong.iter().take(3).collect::<Vec<_>>(),
                n.len()
            ),
        ));
    }
    Ok(want.len())
}

/// Real time: 452 past 3 recipients, copies of 5, through the processes.
async fn real_time(ctx: &Ctx, body: Body) -> Result<String, Failure> {
    let name = format!("processes, {body:?}");
    let bin = ctx.bin(Bin::MockMta)?;
    let dir = temp_dir()?;
    let d = dir.path();
    let mut extra = vec!["--max-recipients", "3", "--too-many-code", "452"];
    let config = d.join("no-chunking.toml");
    let config_s = config.display().to_string();
    if body == Body::Data {
        let keywords = without_chunking(&MockConfig::iis().profile.ehlo_keywords);
        let list: Vec<String> = keywords.iter().map(|k| format!("{k:?}")).collect();
        std::fs::write(
            &config,
            format!("[profile]\nehlo_keywords = [{}]\n", list.join(", ")),
        )
        .map_err(|e| Failure::new("the mock's config file written", e.to_string()))?;
        extra.extend(["--config", config_s.as_str()]);
    }
    let m = MockProcess::start(bin, d, "relay", &extra).await?;
    let port = m.addr.port();
    let (small, _) = recipients();
    let mut site = ProcessSite::new(
        ctx,
        d,
        &format!("SMTP_FORWARD=127.0.0.1:{port}\nSMTP_FORWARD_1=2*127.0.0.1:{port}\nMAXBSMTP=5\n"),
    )?;
    site.submit(&small, 2_000).await?;
    site.run_until_empty(&[], Duration::from_secs(60)).await?;
    let j = m.finish().await?;
    exactly_once(&small, j.delivered_recipients(), &name)?;
    let sessions = j.sessions.len();
    let too_many = j.rcpt_replies().iter().filter(|r| r.code == 452).count();
    let over = j
        .accepted_transactions()
        .iter()
        .filter(|t| t.accepted_rcpts().count() > 3)
        .count();
    if too_many == 0 || over > 0 {
        return Err(Failure::new(
            format!("{name}: 452s from the mock and no accepted transaction above 3 recipients"),
            format!("{too_many} x 452, {over} above 3"),
        ));
    }
    let delivered = once_each_in_ledger(&name, &small, &site.ledger()?)?;
    Ok(format!(
        "{name}: {delivered} once each over {sessions} sessions, {too_many} x 452 recovered"
    ))
}
