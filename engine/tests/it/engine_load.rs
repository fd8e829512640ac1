//! Connections and shutdown: a worker count is a connection cap per host, the engine over real
//! TCP on loopback, long sessions against IIS's session size, and a graceful shutdown that loses
//! nothing claimed.

use std::sync::Arc;
use std::time::Duration;

use jiff::civil::date;
use mock_mta::MockConfig;
use smtpw_engine::clock::SystemClock;
use smtpw_engine::engine::{Engine, EngineOptions};
use smtpw_engine::ledger::Outcome;
use smtpw_engine::net::TcpConnector;
use smtpw_engine::smtp::{ClientConfig, Timeouts};
use smtpw_engine::spool::{Spool, SpoolOptions, SqliteSpool};
use smtpw_testkit::topology::{fast_options, site, wait_for, Topology};

fn noon() -> jiff::civil::DateTime {
    date(2026, 11, 22).at(12, 0, 0, 0)
}

#[tokio::test(start_paused = true)]
async fn ten_workers_are_never_more_than_ten_connections() {
    const H: &str = "H.EXAMPLE.ORG:50025";
    let mut m = MockConfig::iis();
    m.faults.command_latency_ms.insert("DOT".into(), 200);
    let h = Topology::new(
        "SMTP_FORWARD_1=10*H.EXAMPLE.ORG:50025\nMAXBSMTP=10\n",
        noon(),
        &[(H, m)],
    );
    h.submit_n(None, 2000, "example.com", 1000);
    let s = h.run_until_empty(Duration::from_secs(600)).await;
    assert_eq!(s.delivered, 2000);
    let st = h.mock(H).stats();
    assert_eq!(st.peak_connections, 10, "{st:?}");
    assert_eq!(st.sessions, 10, "one connection per worker, reused");
    assert_eq!(st.messages, 200);
    // Every worker took a share.
    let per_session: Vec<usize> = h
        .mock(H)
        .journal()
        .sessions
        .iter()
        .map(|s| s.transactions.iter().filter(|t| t.accepted).count())
        .collect();
    assert!(
        per_session.iter().all(|n| (15..=25).contains(n)),
        "{per_session:?}"
    );
    let c = h.delivered_counts();
    assert_eq!(c.len(), 2000);
    assert!(c.values().all(|n| *n == 1));
}

/// IIS caps the bytes of one session (10240 KB by default): a worker connection that lives long
/// enough crosses it. The message that crosses it is refused with 552 and the connection closed;
/// it must be sent again on a new connection, not failed.
#[tokio::test(start_paused = true)]
async fn iis_session_size_limit_is_not_a_permanent_failure() {
    const A: &str = "A.EXAMPLE.ORG:25";
    let h = Topology::new(
        "SMTP_FORWARD_1=A.EXAMPLE.ORG\nMAXBSMTP=100\n",
        noon(),
        &[(A, MockConfig::iis())],
    );
    // 60 copies of a 200 KB message: 12,000 KB over one connection.
    h.submit_n(None, 6000, "example.com", 200 * 1024);
    let s = h.run_until_empty(Duration::from_secs(3600)).await;
    assert_eq!((s.delivered, s.failed), (6000, 0), "{s:?}");
    let j = h.mock(A).journal();
    assert!(j
        .sessions
        .iter()
        .any(|s| s.end_reason.as_deref() == Some("size-close")));
    let deferred: Vec<_> = h
        .ledger()
        .into_iter()
        .filter(|l| l.outcome == Outcome::Deferred)
        .collect();
    assert_eq!(deferred.len(), 100, "the one crossing message, retried");
    assert!(deferred.iter().all(|l| l.reply.starts_with("451 4.3.0 ")
        && l.reply
            .contains("(552 5.3.4 Session size exceeds fixed maximum session size)")));
    let c = h.delivered_counts();
    assert_eq!(c.len(), 6000);
    assert!(c.values().all(|n| *n == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_time_over_loopback_every_recipient_once() {
    let clock = SystemClock::shared();
    let mta = mock_mta::MockMta::new(MockConfig::iis(), clock.clone());
    let server = mta
        .listen("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("listen");
    let port = server.local_addr().port();
    let cfg = site(&format!(
        "SMTP_FORWARD_1=4*127.0.0.1:{port}\nMAXBSMTP=100\n"
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Arc::new(
        SqliteSpool::open(
            dir.path(),
            SpoolOptions {
                max_bsmtp: cfg.max_bsmtp,
                ..SpoolOptions::default()
            },
            clock.clone(),
        )
        .expect("spool"),
    );
    let n = 3000;
    smtpw_engine::spool::submit(
        dir.path(),
        "owner-list@lists.example.org",
        None,
        (0..n).map(|i| format!("user{i}@example.com")),
        smtpw_testkit::workload::message(3000).as_bytes(),
    )
    .expect("submit");
    let engine = Engine::builder(cfg, spool.clone(), dir.path().to_path_buf())
        .connector(Arc::new(TcpConnector::new(Duration::from_secs(5))))
        .clock(clock)
        .options(EngineOptions {
            until_empty: true,
            client: ClientConfig {
                timeouts: Timeouts::uniform(Duration::from_secs(10)),
                ..ClientConfig::default()
            },
            ..fast_options()
        })
        .build();
    let s = tokio::time::timeout(Duration::from_secs(30), engine.run())
        .await
        .expect("delivered within 30 s");
    server.shutdown().await;
    assert_eq!((s.delivered, s.failed, s.deferred), (n, 0, 0), "{s:?}");
    let j = mta.journal();
    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    for r in j.delivered_recipients() {
        *seen.entry(r).or_default() += 1;
    }
    assert_eq!(seen.len() as u64, n);
    assert!(seen.values().all(|k| *k == 1));
    assert_eq!(j.accepted_transactions().len(), 30);
    assert!(mta.stats().peak_connections <= 4);
    let st = spool.stats().await.expect("stats");
    assert_eq!((st.queued, st.delivered), (0, n));
}

#[tokio::test(start_paused = true)]
async fn graceful_shutdown_finishes_what_is_in_flight_and_a_restart_delivers_the_rest() {
    const A: &str = "A.EXAMPLE.ORG:25";
    let mut m = MockConfig::iis();
    m.faults.command_latency_ms.insert("DOT".into(), 3000);
    let h = Topology::new(
        "SMTP_FORWARD_1=4*A.EXAMPLE.ORG\nMAXBSMTP=10\n",
        noon(),
        &[(A, m)],
    );
    h.submit_n(None, 400, "example.com", 1000);
    // One transaction in flight per connection (a relay without CHUNKING): four in flight at
    // the stop, one per worker.
    let (engine, run) = h.spawn(EngineOptions {
        client: smtpw_engine::smtp::ClientConfig {
            window: 1,
            ..smtpw_engine::smtp::ClientConfig::default()
        },
        ..fast_options()
    });
    // Let some transactions finish and four more get under way (each waits 3 s for its 250).
    wait_for("some messages", Duration::from_secs(60), || {
        h.mock(A).stats().messages >= 8
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = h.mock(A).stats().messages;
    let cancelled_at = tokio::time::Instant::now();
    engine.shutdown().cancel();
    let s = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("run() returns")
        .expect("engine");
    let waited = cancelled_at.elapsed();
    let after = h.mock(A).stats().messages;
    assert_eq!(
        after,
        before + 4,
        "the four transactions in flight completed"
    );
    assert!(waited >= Duration::from_millis(1400), "{waited:?}");
    // Nothing is in flight; everything is delivered or queued, and the records agree.
    let st = h.spool.stats().await.expect("stats");
    assert!(st
        .pools
        .iter()
        .all(|p| p.state != smtpw_engine::spool::CopyState::InFlight));
    assert_eq!(st.delivered, after * 10);
    assert_eq!(st.delivered + st.queued, 400);
    assert_eq!(s.delivered, st.delivered);
    assert_eq!(h.delivered_everywhere().len() as u64, st.delivered);
    assert!(
        h.mock(A).journal().transactions().all(|t| t.accepted),
        "no transaction was cut off"
    );
    drop(engine);
    // A restarted engine on the same spool delivers the rest, each recipient once in all.
    let h = h.reopen();
    let s2 = h.run_until_empty(Duration::from_secs(600)).await;
    assert_eq!(s.delivered + s2.delivered, 400);
    let c = h.delivered_counts();
    assert_eq!(c.len(), 400);
    assert!(c.values().all(|n| *n == 1));
    let finals = h.final_outcomes();
    assert_eq!(finals.len(), 400);
    assert!(finals.values().all(|l| l.outcome == Outcome::Delivered));
}

/// Shutdown while a worker is still setting up its connection (a relay slow to greet): no
/// transaction is under way, so the worker gives its copy back and stops at once.
#[tokio::test(start_paused = true)]
async fn shutdown_does_not_wait_for_a_connection_being_set_up() {
    const A: &str = "A.EXAMPLE.ORG:25";
    let mut m = MockConfig::iis();
    m.faults.reply_latency_ms = 100_000;
    let h = Topology::new(
        "SMTP_FORWARD_1=2*A.EXAMPLE.ORG\nMAXBSMTP=10\n",
        noon(),
        &[(A, m)],
    );
    h.submit_n(None, 30, "example.com", 1000);
    let (engine, run) = h.spawn(fast_options());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        h.mock(A).stats().sessions,
        2,
        "both workers are waiting for a greeting"
    );
    let t = tokio::time::Instant::now();
    engine.shutdown().cancel();
    let s = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("run() returns")
        .expect("engine");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(s.transactions, 0);
    let st = h.spool.stats().await.expect("stats");
    assert_eq!((st.queued, st.delivered, st.failed), (30, 0, 0));
    assert!(h.ledger().is_empty());
    drop(engine);
    let h = h.reopen();
    h.mock(A).set_faults(mock_mta::Faults::default());
    let s = h.run_until_empty(Duration::from_secs(60)).await;
    assert_eq!(s.delivered, 30);
    let c = h.delivered_counts();
    assert_eq!(c.len(), 30);
    assert!(c.values().all(|n| *n == 1));
}
