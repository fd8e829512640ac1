//! Worker counts (WRK-3, EX-4, EX-8): `2*A` + `B` shares the copies 2:1 over
//! exactly three connections; `10*H:50025` opens ten connections to port 50025.
//!
//! Virtual mode: in-process mocks on paused time (each copy takes 100 ms at the relay, so the
//! workers run side by side). Real time (`workers-2a-1b`): two `mock-mta` processes with
//! `--journal`, `smtpw submit` and `smtpw run --until-empty`, then the journals and
//! `smtpw queue --json` are compared with what was submitted.

use std::time::Duration;

use jiff::civil::date;

use crate::report::{Bar, Chart, Mode};
use crate::runner::{
    temp_dir, Bin, Ctx, Failure, Outcome, Scenario, ScenarioResult, BOTH, VIRTUAL_ONLY,
};
use crate::site::ProcessSite;
use mock_mta::Journal;
use smtpw_testkit::assert::exactly_once;
use smtpw_testkit::proc::MockProcess;
use smtpw_testkit::topology::{fast_options, iis_with_dot_latency, Topology};

/// Recipients per run and MAXBSMTP: 60 copies of 10.
const RCPTS: usize = 600;
const MAXBSMTP: u32 = 10;
/// A's share of the copies must be 2/3 within this (absolute) tolerance.
const SHARE_TOLERANCE: f64 = 0.07;

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario::new("workers-2a-1b", BOTH, two_a_one_b)
            .needs(&[Bin::Smtpw, Bin::MockMta])
            .both_spools(),
        Scenario::new("workers-10x-port", VIRTUAL_ONLY, ten_on_port),
    ]
}

fn rcpts(n: usize, domain: &str) -> Vec<String> {
    (0..n).map(|i| format!("user{i}@{domain}")).collect()
}

/// Checks the split and the connections; returns the figure and the chart.
fn judge_split(a: usize, b: usize, peak: i64, sessions: u64) -> ScenarioResult {
    let total = (a + b) as f64;
    let share = if total > 0.0 { a as f64 / total } else { 0.0 };
    if total as usize != RCPTS / MAXBSMTP as usize {
        return Err(Failure::new(
            format!(
                "{} copies of {MAXBSMTP} recipients in all",
                RCPTS / MAXBSMTP as usize
            ),
            format!("{a} at A + {b} at B"),
        ));
    }
    if (share - 2.0 / 3.0).abs() > SHARE_TOLERANCE {
        return Err(Failure::new(
            format!(
                "A (2 workers) to get 2/3 of the copies, ±{SHARE_TOLERANCE} (WRK-3: load shared by worker count)"
            ),
            format!("A {a}, B {b}: share {share:.3}"),
        ));
    }
    if peak > 3 {
        return Err(Failure::new(
            "never more than 3 connections at once (one per worker, WRK-3)",
            format!("{peak} at once"),
        ));
    }
    if peak < 3 || sessions != 3 {
        return Err(Failure::new(
            "exactly 3 connections, all open together (3 workers, one connection each, kept open)",
            format!("{sessions} sessions, at most {peak} at once"),
        ));
    }
    let ratio = if b > 0 {
        a as f64 / b as f64
    } else {
        f64::INFINITY
    };
    let per = total / 3.0;
    Ok(Outcome::new(format!(
        "split {ratio:.2}:1 (A {a}, B {b} copies; tolerance ±{SHARE_TOLERANCE} of 2/3), 3 connections, peak {peak}"
    ))
    .chart(Chart::Bars {
        title: "Copies per host vs weight (2*A + B)".into(),
        y_label: "copies".into(),
        bars: vec![
            Bar {
                label: "A (weight 2)".into(),
                measured: a as f64,
                expected: 2.0 * per,
            },
            Bar {
                label: "B (weight 1)".into(),
                measured: b as f64,
                expected: per,
            },
        ],
    }))
}

async fn two_a_one_b(ctx: Ctx) -> ScenarioResult {
    match ctx.mode() {
        Mode::Virtual => two_a_one_b_virtual().await,
        Mode::RealTime | Mode::RealTimePg => two_a_one_b_real(&ctx).await,
    }
}

async fn two_a_one_b_virtual() -> ScenarioResult {
    let cfg = format!(
        "SMTP_FORWARD=A.EXAMPLE.ORG\nSMTP_FORWARD_1=2*A.EXAMPLE.ORG\nSMTP_FORWARD_2=B.EXAMPLE.ORG\nMAXBSMTP={MAXBSMTP}\n"
    );
    let t = Topology::new(
        &cfg,
        date(2026, 11, 22).at(12, 0, 0, 0),
        &[
            ("A.EXAMPLE.ORG:25", iis_with_dot_latency(100)),
            ("B.EXAMPLE.ORG:25", iis_with_dot_latency(100)),
        ],
    );
    let want = rcpts(RCPTS, "example.com");
    t.submit(None, want.iter().cloned(), 2000);
    let s = t
        .try_run_until_empty(fast_options(), Duration::from_secs(3600))
        .await?;
    exactly_once(&want, t.delivered_everywhere(), "A and B")?;
    if s.delivered != RCPTS as u64 {
        return Err(Failure::new(
            format!("the engine to report {RCPTS} delivered"),
            format!("{s:?}"),
        ));
    }
    let (ma, mb) = (t.mock("A.EXAMPLE.ORG:25"), t.mock("B.EXAMPLE.ORG:25"));
    let a = ma.journal().accepted_transactions().len();
    let b = mb.journal().accepted_transactions().len();
    let (sa, sb) = (ma.stats(), mb.stats());
    if sa.peak_connections > 2 || sb.peak_connections > 1 {
        return Err(Failure::new(
            "at most 2 connections to A and 1 to B at once",
            format!(
                "A {} and B {} at once",
                sa.peak_connections, sb.peak_connections
            ),
        ));
    }
    let peak = (sa.peak_connections + sb.peak_connections) as i64;
    judge_split(a, b, peak, sa.sessions + sb.sessions)
}

async fn two_a_one_b_real(ctx: &Ctx) -> ScenarioResult {
    let mock = ctx.bin(Bin::MockMta)?;
    let dir = temp_dir()?;
    let d = dir.path();
    let ma = MockProcess::start(mock, d, "a", &["--command-latency", "DOT=20"]).await?;
    let mb = MockProcess::start(mock, d, "b", &["--command-latency", "DOT=20"]).await?;
    let (pa, pb) = (ma.addr.port(), mb.addr.port());
    let want = rcpts(RCPTS, "example.com");
    let mut site = ProcessSite::new(
        ctx,
        d,
        &format!(
            "SMTP_FORWARD=127.0.0.1:{pa}\nSMTP_FORWARD_1=2*127.0.0.1:{pa}\nSMTP_FORWARD_2=127.0.0.1:{pb}\nMAXBSMTP={MAXBSMTP}\n"
        ),
    )?;
    site.submit(&want, 2000).await?;
    site.run_until_empty(&[], Duration::from_secs(40)).await?;
    let q = site.queue().await?;
    if q["queued"].as_u64() != Some(0) || q["delivered"].as_u64() != Some(RCPTS as u64) {
        return Err(Failure::new(
            format!("`smtpw queue --json`: queued 0, delivered {RCPTS}"),
            format!("queued {}, delivered {}", q["queued"], q["delivered"]),
        ));
    }
    let ja = ma.finish().await?;
    let jb = mb.finish().await?;
    let mut all = ja.delivered_recipients();
    all.extend(jb.delivered_recipients());
    exactly_once(&want, all, "the two mock-mta processes")?;
    let peak = Journal::peak_concurrent_sessions(&[&ja, &jb]) as i64;
    let pa_peak = Journal::peak_concurrent_sessions(&[&ja]);
    let pb_peak = Journal::peak_concurrent_sessions(&[&jb]);
    if pa_peak > 2 || pb_peak > 1 {
        return Err(Failure::new(
            "at most 2 connections to A and 1 to B at once",
            format!("A {pa_peak}, B {pb_peak}"),
        ));
    }
    judge_split(
        ja.accepted_transactions().len(),
        jb.accepted_transactions().len(),
        peak,
        (ja.sessions.len() + jb.sessions.len()) as u64,
    )
}

/// `10*H.EXAMPLE.ORG:50025`: ten workers, each with its own connection, all to port 50025.
async fn ten_on_port(_ctx: Ctx) -> ScenarioResult {
    let t = Topology::new(
        "SMTP_FORWARD=H.EXAMPLE.ORG:50025\nSMTP_FORWARD_1=10*H.EXAMPLE.ORG:50025\nMAXBSMTP=10\n",
        date(2026, 11, 22).at(12, 0, 0, 0),
        &[
            ("H.EXAMPLE.ORG:50025", iis_with_dot_latency(100)),
            // Port 25 is there too, so that a worker that ignored the port would be seen.
            ("H.EXAMPLE.ORG:25", iis_with_dot_latency(100)),
        ],
    );
    if t.config.workers.len() != 10 {
        return Err(Failure::new(
            "10 workers",
            format!("{}", t.config.workers.len()),
        ));
    }
    let want = rcpts(1000, "example.com");
    t.submit(None, want.iter().cloned(), 1000);
    t.try_run_until_empty(fast_options(), Duration::from_secs(3600))
        .await?;
    exactly_once(&want, t.delivered_everywhere(), "H:50025")?;
    let s = t.mock("H.EXAMPLE.ORG:50025").stats();
    let s25 = t.mock("H.EXAMPLE.ORG:25").stats();
    if s25.sessions != 0 {
        return Err(Failure::new(
            "no connection to port 25",
            format!("{} sessions on port 25", s25.sessions),
        ));
    }
    if s.sessions != 10 || s.peak_connections != 10 {
        return Err(Failure::new(
            "10 connections to H:50025, all open together",
            format!(
                "{} sessions, at most {} at once",
                s.sessions, s.peak_connections
            ),
        ));
    }
    let per: Vec<usize> = t
        .mock("H.EXAMPLE.ORG:50025")
        .journal()
        .sessions
        .iter()
        .map(|s| s.transactions.iter().filter(|t| t.accepted).count())
        .collect();
    Ok(Outcome::new(format!(
        "10 connections to port 50025 (peak 10, 0 to port 25); copies per connection {per:?}"
    )))
}
