//! Routing on paused time over in-memory mocks: time windows at their boundary, failover when the
//! primary is unreachable, back-off with no failover, and the synchronous fallback (WRK-4,
//! WRK-5, WRK-6, FWD-3).

use std::time::Duration;

use jiff::civil::date;
use mock_mta::{Faults, MockConfig};
use smtpw_engine::config::HostPort;
use smtpw_engine::engine::EngineOptions;
use smtpw_engine::ledger::Outcome;
use smtpw_engine::spool::Spool;
use smtpw_testkit::logs::LogCapture;
use smtpw_testkit::topology::{at, fast_options, wait_for, Topology};

const P: &str = "P.EXAMPLE.ORG:25";
const F: &str = "F.EXAMPLE.ORG:25";
const S: &str = "S.EXAMPLE.ORG:25";

fn rcpts(prefix: &str, n: usize) -> impl Iterator<Item = String> + '_ {
    (0..n).map(move |i| format!("{prefix}{i}@example.com"))
}

/// Every accepted transaction of a mock: (time, recipients).
fn accepted(h: &Topology, host: &str) -> Vec<(jiff::Timestamp, Vec<String>)> {
    h.mock(host)
        .journal()
        .accepted_transactions()
        .iter()
        .map(|t| {
            (
                t.ended_at,
                t.accepted_rcpts().map(|r| r.addr.clone()).collect(),
            )
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn window_switches_from_primary_to_failover_at_its_end() {
    let h = Topology::new(
        "SMTP_FORWARD=S.EXAMPLE.ORG\nSMTP_FORWARD_1=P.EXAMPLE.ORG(00:00-05:00);F.EXAMPLE.ORG\nMAXBSMTP=10\n",
        date(2026, 11, 22).at(4, 58, 0, 0),
        &[(P, MockConfig::iis()), (F, MockConfig::iis()), (S, MockConfig::iis())],
    );
    h.submit(None, rcpts("early", 50), 1000);
    let (engine, run) = h.spawn(fast_options());
    wait_for("the early job", Duration::from_secs(60), || {
        h.mock(P).stats().recipients_accepted == 50
    })
    .await;
    // Just before the boundary, a second job; just after it, a third.
    tokio::time::sleep_until(tokio::time::Instant::now() + dur_until(&h, at(4, 59, 59))).await;
    h.submit(None, rcpts("edge", 10), 1000);
    tokio::time::sleep_until(tokio::time::Instant::now() + dur_until(&h, at(5, 0, 30))).await;
    h.submit(None, rcpts("late", 50), 1000);
    wait_for("every job", Duration::from_secs(120), || {
        h.spool.queued_copies() == 0 && h.delivered_everywhere().len() == 110
    })
    .await;
    engine.shutdown().cancel();
    run.await.expect("engine");

    let p = accepted(&h, P);
    let f = accepted(&h, F);
    assert!(
        accepted(&h, S).is_empty(),
        "the sync path had nothing to do"
    );
    assert!(
        p.iter().all(|(t, _)| *t < at(5, 0, 0)),
        "P only before 05:00"
    );
    assert!(
        f.iter().all(|(t, _)| *t >= at(5, 0, 0)),
        "F only from 05:00"
    );
    let p_rcpts: Vec<&String> = p.iter().flat_map(|(_, r)| r).collect();
    let f_rcpts: Vec<&String> = f.iter().flat_map(|(_, r)| r).collect();
    assert!(p_rcpts.iter().all(|r| !r.starts_with("late")));
    assert_eq!(
        p_rcpts.iter().filter(|r| r.starts_with("early")).count(),
        50
    );
    assert_eq!(f_rcpts.iter().filter(|r| r.starts_with("late")).count(), 50);
    // The edge job went through P (submitted at 04:59:59, ingested at once) or F, never both.
    assert_eq!(p_rcpts.len() + f_rcpts.len(), 110);
    let counts = h.delivered_counts();
    assert_eq!(counts.len(), 110);
    assert!(counts.values().all(|n| *n == 1));
    // The connection to P was closed when the window closed, not left open.
    let ps = h.mock(P).journal();
    assert_eq!(ps.sessions.len(), 1, "one connection, reused");
    let sess = &ps.sessions[0];
    assert!(sess.started_at < at(4, 58, 1));
    assert_eq!(sess.end_reason.as_deref(), Some("quit"));
    let ended = sess.ended_at.expect("ended");
    assert!(ended >= at(5, 0, 0) && ended < at(5, 0, 1), "{ended}");
    let fs = h.mock(F).journal();
    assert!(fs.sessions.iter().all(|s| s.started_at >= at(5, 0, 0)));
}

fn dur_until(h: &Topology, t: jiff::Timestamp) -> Duration {
    Duration::try_from(t.duration_since(h.clock.now())).unwrap_or(Duration::ZERO)
}

#[tokio::test(start_paused = true)]
async fn worker_outside_its_window_without_failover_waits_then_delivers() {
    let h = Topology::new(
        "SMTP_FORWARD_1=P.EXAMPLE.ORG(05:00-06:00)\nMAXBSMTP=10\n",
        date(2026, 11, 22).at(4, 58, 0, 0),
        &[(P, MockConfig::iis())],
    );
    h.submit(None, rcpts("w", 30), 1000);
    let (engine, run) = h.spawn(fast_options());
    tokio::time::sleep_until(tokio::time::Instant::now() + dur_until(&h, at(4, 59, 59))).await;
    // Nothing claimed outside the window: no connection, nothing in the ledger, all queued.
    let p = HostPort::new("P.EXAMPLE.ORG", 25);
    assert_eq!(h.connector.connects(&p), 0);
    assert!(h.ledger().is_empty());
    let st = h.spool.stats().await.expect("stats");
    assert_eq!((st.queued, st.delivered, st.failed), (30, 0, 0));
    wait_for("delivery in the window", Duration::from_secs(120), || {
        h.spool.queued_copies() == 0
    })
    .await;
    engine.shutdown().cancel();
    run.await.expect("engine");
    let j = h.mock(P).journal();
    assert!(j.sessions.iter().all(|s| s.started_at >= at(5, 0, 0)));
    let t = accepted(&h, P);
    assert_eq!(t.len(), 3);
    assert!(t.iter().all(|(t, _)| *t >= at(5, 0, 0) && *t < at(5, 0, 5)));
    let counts = h.delivered_counts();
    assert_eq!(counts.len(), 30);
    assert!(counts.values().all(|n| *n == 1));
    let ledger = h.ledger();
    assert_eq!(ledger.len(), 30);
    assert!(ledger
        .iter()
        .all(|l| l.outcome == Outcome::Delivered && l.attempts == 1));
}

/// Primary unreachable in the way `fault` makes it: everything goes to the failover; once the
/// primary is back, the next new connection goes to it.
async fn failover_case(fault: Faults) {
    let mut fcfg = MockConfig::iis();
    // The failover closes idle connections after 5 s, so workers open new connections later.
    fcfg.profile.idle_timeout_secs = 5;
    let h = Topology::new(
        "SMTP_FORWARD=S.EXAMPLE.ORG\nSMTP_FORWARD_1=2*P.EXAMPLE.ORG;F.EXAMPLE.ORG\nMAXBSMTP=10\n",
        date(2026, 11, 22).at(12, 0, 0, 0),
        &[(P, MockConfig::iis()), (F, fcfg), (S, MockConfig::iis())],
    );
    h.mock(P).set_faults(fault.clone());
    h.submit(None, rcpts("first", 100), 1000);
    let (engine, run) = h.spawn(fast_options());
    wait_for("the first job", Duration::from_secs(60), || {
        h.delivered_everywhere().len() == 100 && h.spool.queued_copies() == 0
    })
    .await;
    assert_eq!(h.mock(F).stats().recipients_accepted, 100, "{fault:?}");
    assert_eq!(h.mock(P).stats().recipients_accepted, 0);
    assert!(h.mock(P).journal().transactions().next().is_none());
    let s = engine.summary();
    assert!(s.connect_failures >= 2, "{s:?}");
    let ledger = h.ledger();
    assert!(
        ledger
            .iter()
            .all(|l| l.relay.as_deref() == Some("F.EXAMPLE.ORG:25")
                && l.outcome == Outcome::Delivered)
    );
    // The primary comes back; the failover's idle connections end; new work goes to P.
    h.mock(P).set_faults(Faults::default());
    tokio::time::sleep(Duration::from_secs(10)).await;
    h.submit(None, rcpts("second", 100), 1000);
    wait_for("the second job", Duration::from_secs(60), || {
        h.spool.queued_copies() == 0 && h.delivered_everywhere().len() == 200
    })
    .await;
    engine.shutdown().cancel();
    run.await.expect("engine");
    assert_eq!(h.mock(P).stats().recipients_accepted, 100);
    assert_eq!(h.mock(F).stats().recipients_accepted, 100);
    assert!(h
        .mock(P)
        .journal()
        .delivered_recipients()
        .iter()
        .all(|r| r.starts_with("second")));
    assert_eq!(h.mock(S).stats().sessions, 0);
    let counts = h.delivered_counts();
    assert_eq!(counts.len(), 200);
    assert!(counts.values().all(|n| *n == 1));
}

#[tokio::test(start_paused = true)]
async fn failover_when_the_primary_refuses_connections() {
    failover_case(Faults {
        refuse_connections: true,
        ..Faults::default()
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn failover_when_the_primary_greets_554() {
    failover_case(Faults {
        greet_code: Some(554),
        ..Faults::default()
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn failover_when_the_primary_greets_421() {
    failover_case(Faults {
        greet_code: Some(421),
        ..Faults::default()
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn failover_when_the_primary_has_no_route() {
    let h = Topology::new(
        "SMTP_FORWARD_1=P.EXAMPLE.ORG;F.EXAMPLE.ORG\nMAXBSMTP=10\n",
        date(2026, 11, 22).at(12, 0, 0, 0),
        &[(F, MockConfig::iis())],
    );
    h.submit(None, rcpts("x", 40), 1000);
    let s = h.run_until_empty(Duration::from_secs(60)).await;
    assert_eq!(s.delivered, 40);
    assert_eq!(h.mock(F).stats().recipients_accepted, 40);
    // Tried on the first (and only) new connection.
    assert!(h.connector.connects(&HostPort::new("P.EXAMPLE.ORG", 25)) >= 1);
}

#[tokio::test(start_paused = true)]
async fn no_failover_primary_down_copies_wait_with_backoff_then_go() {
    let h = Topology::new(
        "SMTP_FORWARD_1=P.EXAMPLE.ORG\nMAXBSMTP=10\n",
        date(2026, 11, 22).at(12, 0, 0, 0),
        &[(P, MockConfig::iis())],
    );
    h.mock(P).set_faults(Faults {
        refuse_connections: true,
        ..Faults::default()
    });
    h.submit(None, rcpts("q", 20), 1000);
    let p = HostPort::new("P.EXAMPLE.ORG", 25);
    let t0 = tokio::time::Instant::now();
    let (engine, run) = h.spawn(fast_options());
    // Attempts at about 0, 30, 90, 210 s (30 s doubling).
    let mut seen = Vec::new();
    for s in [1u64, 29, 31, 89, 91, 209, 211] {
        tokio::time::sleep_until(t0 + Duration::from_secs(s)).await;
        seen.push(h.connector.connects(&p));
    }
    assert_eq!(seen, vec![1, 1, 2, 2, 3, 3, 4]);
    // The copies are untouched: still queued, nothing in the ledger.
    let st = h.spool.stats().await.expect("stats");
    assert_eq!((st.queued, st.delivered, st.failed), (20, 0, 0));
    assert!(h.ledger().is_empty());
    h.mock(P).set_faults(Faults::default());
    // The next attempt (at 450 s) delivers.
    wait_for("delivery", Duration::from_secs(600), || {
        h.spool.queued_copies() == 0
    })
    .await;
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(449) && took < Duration::from_secs(460),
        "{took:?}"
    );
    engine.shutdown().cancel();
    run.await.expect("engine");
    let counts = h.delivered_counts();
    assert_eq!(counts.len(), 20);
    assert!(counts.values().all(|n| *n == 1));
    assert!(h.ledger().iter().all(|l| l.attempts == 1));
}

#[tokio::test(start_paused = true)]
async fn stranded_copies_go_through_smtp_forward_after_the_grace_period() {
    let logs = LogCapture::default();
    let _g = logs.install();
    let h = Topology::new(
        "SMTP_FORWARD=S.EXAMPLE.ORG\nSMTP_FORWARD_1=2*P.EXAMPLE.ORG;F.EXAMPLE.ORG\nMAXBSMTP=10\n",
        date(2026, 11, 22).at(12, 0, 0, 0),
        &[
            (P, MockConfig::iis()),
            (F, MockConfig::iis()),
            (S, MockConfig::iis()),
        ],
    );
    let down = Faults {
        refuse_connections: true,
        ..Faults::default()
    };
    h.mock(P).set_faults(down.clone());
    h.mock(F).set_faults(down);
    h.submit(None, rcpts("s", 50), 1000);
    let t0 = tokio::time::Instant::now();
    let (engine, run) = h.spawn(EngineOptions {
        sync_grace: Duration::from_secs(120),
        ..fast_options()
    });
    tokio::time::sleep(Duration::from_secs(110)).await;
    assert_eq!(h.mock(S).stats().sessions, 0, "not before the grace period");
    wait_for("the sync path", Duration::from_secs(300), || {
        h.spool.queued_copies() == 0
    })
    .await;
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(120) && took < Duration::from_secs(122),
        "{took:?}: right after the grace period"
    );
    engine.shutdown().cancel();
    let s = run.await.expect("engine");
    assert_eq!(s.delivered, 50);
    assert_eq!(h.mock(S).stats().recipients_accepted, 50);
    assert!(h
        .ledger()
        .iter()
        .all(|l| l.relay.as_deref() == Some("S.EXAMPLE.ORG:25")));
    let text = logs.text();
    assert!(
        text.contains("through SMTP_FORWARD") && text.contains("unreachable"),
        "the log says so:\n{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn without_workers_everything_goes_through_smtp_forward_on_one_connection() {
    let h = Topology::new(
        "SMTP_FORWARD=S.EXAMPLE.ORG\nMAXBSMTP=10\n",
        date(2026, 11, 22).at(12, 0, 0, 0),
        &[(S, MockConfig::iis())],
    );
    h.submit(None, rcpts("a", 100), 1000);
    h.submit(Some('B'), rcpts("b", 50), 1000);
    let s = h.run_until_empty(Duration::from_secs(60)).await;
    assert_eq!(s.delivered, 150);
    let st = h.mock(S).stats();
    assert_eq!(st.sessions, 1);
    assert_eq!(st.peak_connections, 1);
    assert_eq!(h.mock(S).journal().accepted_transactions().len(), 15);
    let counts = h.delivered_counts();
    assert_eq!(counts.len(), 150);
    assert!(counts.values().all(|n| *n == 1));
}

#[tokio::test(start_paused = true)]
async fn a_pool_no_worker_serves_goes_through_smtp_forward() {
    let logs = LogCapture::default();
    let _g = logs.install();
    let h = Topology::new(
        "SMTP_FORWARD=S.EXAMPLE.ORG\nSMTP_FORWARD_1=P.EXAMPLE.ORG;POOL=A\nMAXBSMTP=10\n",
        date(2026, 11, 22).at(12, 0, 0, 0),
        &[(P, MockConfig::iis()), (S, MockConfig::iis())],
    );
    h.submit(Some('A'), rcpts("a", 40), 1000);
    h.submit(Some('B'), rcpts("b", 30), 1000);
    let s = h.run_until_empty(Duration::from_secs(60)).await;
    assert_eq!(s.delivered, 70);
    let p = h.mock(P).journal().delivered_recipients();
    let sy = h.mock(S).journal().delivered_recipients();
    assert_eq!(p.len(), 40);
    assert!(p.iter().all(|r| r.starts_with('a')));
    assert_eq!(sy.len(), 30);
    assert!(sy.iter().all(|r| r.starts_with('b')));
    let text = logs.text();
    assert!(text.contains("SMTP_FORWARD"), "{text}");
}

/// Once the worker hosts are back, the sync path stops taking their pools' copies: the next job
/// goes to the workers, all of it (the workers look for their hosts again on their back-off
/// schedule even when the sync path has left them nothing to deliver).
#[tokio::test(start_paused = true)]
async fn after_the_hosts_come_back_the_workers_deliver_again_not_the_sync_path() {
    let logs = LogCapture::default();
    let _g = logs.install();
    let h = Topology::new(
        "SMTP_FORWARD=S.EXAMPLE.ORG\nSMTP_FORWARD_1=2*P.EXAMPLE.ORG\nMAXBSMTP=10\n",
        date(2026, 11, 22).at(12, 0, 0, 0),
        &[(P, MockConfig::iis()), (S, MockConfig::iis())],
    );
    h.mock(P).set_faults(Faults {
        refuse_connections: true,
        ..Faults::default()
    });
    h.submit(None, rcpts("one", 50), 1000);
    let (engine, run) = h.spawn(EngineOptions {
        sync_grace: Duration::from_secs(60),
        ..fast_options()
    });
    wait_for("the sync path", Duration::from_secs(300), || {
        h.mock(S).stats().recipients_accepted == 50 && h.spool.queued_copies() == 0
    })
    .await;
    h.mock(P).set_faults(Faults::default());
    // Longer than the workers' back-off at this point.
    tokio::time::sleep(Duration::from_secs(600)).await;
    // Known before any new work arrives.
    assert!(
        logs.text().contains("no longer go through SMTP_FORWARD"),
        "{}",
        logs.text()
    );
    h.submit(None, rcpts("two", 50), 1000);
    wait_for("the second job", Duration::from_secs(300), || {
        h.delivered_everywhere().len() == 100 && h.spool.queued_copies() == 0
    })
    .await;
    engine.shutdown().cancel();
    run.await.expect("engine");
    assert_eq!(
        h.mock(S).stats().recipients_accepted,
        50,
        "nothing more via S"
    );
    let p = h.mock(P).journal().delivered_recipients();
    assert_eq!(p.len(), 50);
    assert!(p.iter().all(|r| r.starts_with("two")));
    let text = logs.text();
    assert_eq!(
        text.matches("no longer go through SMTP_FORWARD").count(),
        1,
        "{text}"
    );
}

/// A busy connection to the failover never ends by itself; the primary is tried again after
/// FAILOVER_RECHECK (5 min) on a new connection, and the rest goes there.
#[tokio::test(start_paused = true)]
async fn a_busy_failover_connection_gives_way_to_the_primary_after_five_minutes() {
    let mut f = MockConfig::iis();
    f.faults.command_latency_ms.insert("DOT".into(), 4000);
    let mut p = MockConfig::iis();
    p.faults.command_latency_ms.insert("DOT".into(), 4000);
    let h = Topology::new(
        "SMTP_FORWARD_1=P.EXAMPLE.ORG;F.EXAMPLE.ORG\nMAXBSMTP=10\n",
        date(2026, 11, 22).at(12, 0, 0, 0),
        &[(P, p), (F, f)],
    );
    h.mock(P).set_faults(Faults {
        refuse_connections: true,
        command_latency_ms: [("DOT".to_string(), 4000)].into(),
        ..Faults::default()
    });
    h.submit(None, rcpts("r", 1000), 500);
    let (engine, run) = h.spawn(fast_options());
    tokio::time::sleep(Duration::from_secs(30)).await;
    h.mock(P).set_faults(Faults {
        command_latency_ms: [("DOT".to_string(), 4000)].into(),
        ..Faults::default()
    });
    wait_for("everything", Duration::from_secs(1200), || {
        h.delivered_everywhere().len() == 1000 && h.spool.queued_copies() == 0
    })
    .await;
    engine.shutdown().cancel();
    run.await.expect("engine");
    let fj = h.mock(F).journal();
    assert_eq!(fj.sessions.len(), 1);
    let ended = fj.sessions[0].ended_at.expect("ended");
    let secs = ended.duration_since(at(12, 0, 0)).as_secs();
    assert!((300..=305).contains(&secs), "F used for {secs} s");
    assert_eq!(fj.sessions[0].end_reason.as_deref(), Some("quit"));
    let on_f = fj.delivered_recipients().len();
    let on_p = h.mock(P).journal().delivered_recipients().len();
    assert_eq!(on_f + on_p, 1000);
    assert!(on_f >= 700 && on_p >= 200, "F {on_f}, P {on_p}");
    let c = h.delivered_counts();
    assert_eq!(c.len(), 1000);
    assert!(c.values().all(|n| *n == 1));
}

/// Without SMTP_FORWARD, a pool no worker serves stays queued (POOL-4), and the log says that,
/// not that it goes through SMTP_FORWARD.
#[tokio::test(start_paused = true)]
async fn a_pool_no_worker_serves_stays_queued_without_smtp_forward() {
    let logs = LogCapture::default();
    let _g = logs.install();
    let h = Topology::new(
        "SMTP_FORWARD_1=P.EXAMPLE.ORG;POOL=A\nMAXBSMTP=10\n",
        date(2026, 11, 22).at(12, 0, 0, 0),
        &[(P, MockConfig::iis())],
    );
    h.submit(Some('A'), rcpts("a", 20), 1000);
    h.submit(Some('B'), rcpts("b", 20), 1000);
    let (engine, run) = h.spawn(fast_options());
    wait_for("pool A", Duration::from_secs(60), || {
        h.delivered_everywhere().len() == 20
    })
    .await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    engine.shutdown().cancel();
    run.await.expect("engine");
    let st = h.spool.stats().await.expect("stats");
    assert_eq!((st.queued, st.delivered, st.failed), (20, 20, 0));
    assert!(h
        .mock(P)
        .journal()
        .delivered_recipients()
        .iter()
        .all(|r| r.starts_with('a')));
    let text = logs.text();
    assert!(text.contains("stays queued"), "{text}");
    assert!(!text.contains("goes through SMTP_FORWARD"), "{text}");
}
