//! MAXBSMTP chunking (COPY-1, TXN-3): 2,500 recipients with MAXBSMTP=1000 go as
//! transactions of 1000/1000/500 to a relay that allows 1000; against IIS's 100 (552 by default,
//! 452 with the switch) every recipient is still delivered exactly once through the in-session
//! recovery; SORT_RECIPIENTS=1 delivers each domain's recipients together.
//!
//! Virtual mode runs all four parts on paused time; real time runs the IIS-552 part with
//! `mock-mta --max-recipients 100` and `smtpw run --until-empty` as processes.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::civil::date;
use mock_mta::MockConfig;

use crate::report::Mode;
use crate::runner::{temp_dir, Bin, Ctx, Failure, Outcome, Scenario, ScenarioResult, BOTH};
use crate::site::ProcessSite;
use smtpw_testkit::assert::exactly_once;
use smtpw_testkit::proc::MockProcess;
use smtpw_testkit::topology::{fast_options, Topology};

const RELAY: &str = "RELAY.EXAMPLE.ORG:25";

pub fn scenario() -> Scenario {
    Scenario::new("maxbsmtp-chunking", BOTH, chunking)
        .needs(&[Bin::Smtpw, Bin::MockMta])
        .both_spools()
}

fn rcpts(n: usize) -> Vec<String> {
    // Ten domains, interleaved, so that sorting has something to do.
    (0..n)
        .map(|i| format!("user{i:04}@d{}.example.com", i % 10))
        .collect()
}

fn site(max_bsmtp: u32, sort: u8) -> String {
    format!(
        "SMTP_FORWARD=RELAY.EXAMPLE.ORG\nSMTP_FORWARD_1=RELAY.EXAMPLE.ORG\nMAXBSMTP={max_bsmtp}\nSORT_RECIPIENTS={sort}\n"
    )
}

fn mock(max_rcpts: u32, too_many_code: u16) -> MockConfig {
    let mut c = MockConfig::iis();
    c.profile.max_recipients = Some(max_rcpts);
    c.profile.too_many_code = too_many_code;
    c
}

async fn chunking(ctx: Ctx) -> ScenarioResult {
    match ctx.mode() {
        Mode::Virtual => {
            let a = thousand_thousand_five_hundred().await?;
            let b = against_iis(552).await?;
            let c = against_iis(452).await?;
            let d = sorted_grouping().await?;
            Ok(Outcome::new(format!("{a}; {b}; {c}; {d}")))
        }
        Mode::RealTime | Mode::RealTimePg => real_time_iis(&ctx).await.map(Outcome::new),
    }
}

/// One worker, MAXBSMTP=1000, a relay allowing 1000: transactions of 1000, 1000 and 500.
async fn thousand_thousand_five_hundred() -> Result<String, Failure> {
    let t = Topology::new(
        &site(1000, 0),
        date(2026, 11, 22).at(12, 0, 0, 0),
        &[(RELAY, mock(1000, 552))],
    );
    let want = rcpts(2500);
    t.submit(None, want.iter().cloned(), 3000);
    t.try_run_until_empty(fast_options(), Duration::from_secs(3600))
        .await?;
    exactly_once(&want, t.delivered_everywhere(), RELAY)?;
    let j = t.mock(RELAY).journal();
    let mut sizes: Vec<usize> = j.transactions().map(|t| t.rcpts.len()).collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    if sizes != [1000, 1000, 500] {
        return Err(Failure::new(
            "MAXBSMTP=1000, 2500 recipients: 3 transactions of 1000, 1000 and 500 RCPTs (COPY-1)",
            format!("{} transactions of {sizes:?} RCPTs", sizes.len()),
        ));
    }
    Ok("2500 rcpts -> 1000/1000/500".into())
}

/// MAXBSMTP=1000 against IIS's 100-recipient limit answered with `code`.
async fn against_iis(code: u16) -> Result<String, Failure> {
    let t = Topology::new(
        &site(1000, 0),
        date(2026, 11, 22).at(12, 0, 0, 0),
        &[(RELAY, mock(100, code))],
    );
    let want = rcpts(2500);
    t.submit(None, want.iter().cloned(), 3000);
    let s = t
        .try_run_until_empty(fast_options(), Duration::from_secs(3600))
        .await?;
    exactly_once(
        &want,
        t.delivered_everywhere(),
        &format!("an IIS relay answering {code} past 100 recipients"),
    )?;
    let j = t.mock(RELAY).journal();
    let too_many = j.rcpt_replies().iter().filter(|r| r.code == code).count();
    let over: Vec<usize> = j
        .accepted_transactions()
        .iter()
        .map(|t| t.accepted_rcpts().count())
        .filter(|n| *n > 100)
        .collect();
    if !over.is_empty() {
        return Err(Failure::new(
            "no accepted transaction with more than 100 recipients",
            format!("{over:?}"),
        ));
    }
    if too_many == 0 || s.too_many_recoveries == 0 {
        return Err(Failure::new(
            format!("the relay to answer {code} and the engine to recover (TXN-3)"),
            format!(
                "{too_many} {code} replies, {} recoveries counted by the engine",
                s.too_many_recoveries
            ),
        ));
    }
    // D2: the observed limit is remembered, so only the first transaction of a connection
    // meets the limit.
    let hit: usize = j
        .sessions
        .iter()
        .map(|s| {
            s.transactions
                .iter()
                .filter(|t| t.rcpts.iter().any(|r| r.code == code))
                .count()
        })
        .sum();
    let sessions = j.sessions.len();
    let n = j.accepted_transactions().len();
    if n != 25 {
        return Err(Failure::new(
            format!("copies of 1000/1000/500 sent as 10 + 10 + 5 transactions of 100 after {code}s (25 in all)"),
            format!(
                "{n} accepted transactions of {:?} recipients",
                j.accepted_transactions().iter().map(|t| t.accepted_rcpts().count()).collect::<Vec<_>>()
            ),
        ));
    }
    if hit > sessions {
        return Err(Failure::new(
            "the relay's limit learned: at most one transaction per connection meets the limit (TXN-3)",
            format!("{hit} transactions got {code} over {sessions} connections"),
        ));
    }
    let ok = failures_in_ledger(&t)?;
    Ok(format!(
        "vs IIS {code}: 2500 once each, {} transactions, {too_many} x {code}, {ok}",
        j.accepted_transactions().len()
    ))
}

/// No ledger line says failed.
fn failures_in_ledger(t: &Topology) -> Result<String, Failure> {
    let l = t.try_ledger()?;
    let failed: Vec<_> = l
        .iter()
        .filter(|x| x.outcome == smtpw_engine::ledger::Outcome::Failed)
        .collect();
    if let Some(f) = failed.first() {
        return Err(Failure::new(
            "no recipient failed",
            format!("{} failed, e.g. {} with {}", failed.len(), f.rcpt, f.reply),
        ));
    }
    Ok(format!("{} ledger lines, 0 failed", l.len()))
}

/// Runs of equal domains in a sequence of addresses.
fn domain_runs(addrs: &[String]) -> usize {
    let mut runs = 0;
    let mut prev: Option<&str> = None;
    for a in addrs {
        let d = smtpw_engine::chunk::domain_of(a);
        if prev != Some(d) {
            runs += 1;
            prev = Some(d);
        }
    }
    runs
}

/// SORT_RECIPIENTS=1: in delivery order, every domain's recipients are contiguous; with 0 they
/// keep the job's interleaved order.
async fn sorted_grouping() -> Result<String, Failure> {
    let mut runs = [0usize; 2];
    for sort in [0u8, 1] {
        let t = Topology::new(
            &site(100, sort),
            date(2026, 11, 22).at(12, 0, 0, 0),
            &[(RELAY, mock(100, 552))],
        );
        let want = rcpts(500);
        t.submit(None, want.iter().cloned(), 1000);
        t.try_run_until_empty(fast_options(), Duration::from_secs(3600))
            .await?;
        let journal = t.mock(RELAY).journal();
        let sizes: Vec<usize> = journal.transactions().map(|t| t.rcpts.len()).collect();
        if sizes != [100; 5] {
            return Err(Failure::new(
                format!("SORT_RECIPIENTS={sort}, MAXBSMTP=100, 500 recipients: 5 transactions of 100 RCPTs"),
                format!("{} transactions of {sizes:?} RCPTs", sizes.len()),
            ));
        }
        let got = journal.delivered_recipients();
        exactly_once(&want, got.clone(), RELAY)?;
        runs[usize::from(sort)] = domain_runs(&got);
        if sort == 1 {
            let domains: BTreeSet<&str> = got
                .iter()
                .map(|a| smtpw_engine::chunk::domain_of(a))
                .collect();
            if runs[1] != domains.len() {
                return Err(Failure::new(
                    format!(
                        "SORT_RECIPIENTS=1: each of the {} domains' recipients together (COPY-2): {} runs",
                        domains.len(),
                        domains.len()
                    ),
                    format!("{} runs of equal domains in delivery order", runs[1]),
                ));
            }
            let mut sorted = got.clone();
            sorted.sort_by(|a, b| smtpw_engine::chunk::compare_recipients(a, b));
            if sorted != got {
                return Err(Failure::new(
                    "SORT_RECIPIENTS=1: recipients delivered sorted by domain, then address",
                    "another order",
                ));
            }
        } else if runs[0] != 500 {
            return Err(Failure::new(
                "SORT_RECIPIENTS=0: the job's order kept (500 interleaved recipients, 500 domain runs)",
                format!("{} runs", runs[0]),
            ));
        }
    }
    Ok(format!(
        "SORT_RECIPIENTS=1: 10 domains in {} runs (0: {} runs)",
        runs[1], runs[0]
    ))
}

/// Real time: MAXBSMTP=1000 through `smtpw run` to `mock-mta --max-recipients 100`.
async fn real_time_iis(ctx: &Ctx) -> Result<String, Failure> {
    let mock = ctx.bin(Bin::MockMta)?;
    let dir = temp_dir()?;
    let d = dir.path();
    let m = MockProcess::start(mock, d, "iis", &["--max-recipients", "100"]).await?;
    let port = m.addr.port();
    let want = rcpts(2500);
    let mut site = ProcessSite::new(
        ctx,
        d,
        &format!(
            "SMTP_FORWARD=127.0.0.1:{port}\nSMTP_FORWARD_1=2*127.0.0.1:{port}\nMAXBSMTP=1000\n"
        ),
    )?;
    site.submit(&want, 3000).await?;
    site.run_until_empty(&[], Duration::from_secs(40)).await?;
    let j = m.finish().await?;
    exactly_once(
        &want,
        j.delivered_recipients(),
        "mock-mta --max-recipients 100",
    )?;
    let too_many = j
        .transactions()
        .flat_map(|t| t.rcpts.iter())
        .filter(|r| r.code == 552)
        .count();
    let over = j
        .accepted_transactions()
        .iter()
        .filter(|t| t.accepted_rcpts().count() > 100)
        .count();
    // Copies of 1000/1000/500 at 100 per transaction: 10 + 10 + 5.
    if j.accepted_transactions().len() != 25 {
        return Err(Failure::new(
            "copies of 1000/1000/500 sent as 10 + 10 + 5 transactions of 100 (25 in all)",
            format!(
                "{} accepted transactions of {:?} recipients",
                j.accepted_transactions().len(),
                j.accepted_transactions()
                    .iter()
                    .map(|t| t.accepted_rcpts().count())
                    .collect::<Vec<_>>()
            ),
        ));
    }
    if over > 0 || too_many == 0 {
        return Err(Failure::new(
            "552s from the mock and no accepted transaction above 100 recipients",
            format!("{too_many} x 552, {over} transactions above 100"),
        ));
    }
    let delivered = site
        .ledger()?
        .iter()
        .filter(|l| l.outcome == smtpw_engine::ledger::Outcome::Delivered)
        .count();
    if delivered != want.len() {
        return Err(Failure::new(
            format!("{} delivered lines in the ledger", want.len()),
            format!("{delivered}"),
        ));
    }
    Ok(format!(
        "processes: 2500 rcpts once each through {} transactions ({too_many} x 552 recovered), ledger agrees",
        j.accepted_transactions().len()
    ))
}
