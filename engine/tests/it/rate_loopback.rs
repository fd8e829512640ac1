//! SMTP_RATE_LIMIT in real time over TCP on 127.0.0.1: the engine (TcpConnector, SQLite spool,
//! system clock) delivers a backlog to a mock-mta listening on loopback, and the rate is measured
//! at the mock over 10 s: 1 Mbit/s (1,048,576 bit/s) within 5% (a noisy 2-core machine).

use std::sync::Arc;
use std::time::Duration;

use mock_mta::{MockConfig, MockMta, Profile};
use smtpw_engine::clock::SystemClock;
use smtpw_engine::engine::{Engine, EngineOptions};
use smtpw_engine::net::TcpConnector;
use smtpw_engine::spool::{Spool, SpoolOptions, SqliteSpool};
use smtpw_testkit::rate::{mean_bps, points, MBPS};
use smtpw_testkit::workload::sizes;

async fn loopback(split: bool) -> f64 {
    let clock = SystemClock::shared();
    let mta = MockMta::new(
        MockConfig::with_profile(Profile {
            max_session_kb: None,
            ..Profile::iis()
        }),
        clock.clone(),
    );
    let server = mta
        .listen("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("listen");
    let port = server.local_addr().port();
    let cfg = smtpw_engine::config::parse_str(
        &format!(
            "NODE=LISTSERV.EXAMPLE.ORG\nSMTP_FORWARD=127.0.0.1:{port}\n\
             SMTP_FORWARD_1=2*127.0.0.1:{port}\nSMTP_RATE_LIMIT=1Mbps\nMAXBSMTP=1\n"
        ),
        "SITE.CFG",
    )
    .expect("config");
    let dir = tempfile::tempdir().expect("tempdir");
    // 1 Mbit/s is 128 KB/s: 14 s of copies of 1-4 KB.
    let spool = Arc::new(
        SqliteSpool::open(
            dir.path(),
            SpoolOptions {
                max_bsmtp: 1,
                ..SpoolOptions::default()
            },
            clock.clone(),
        )
        .expect("spool"),
    );
    let msg = |n: usize| {
        let mut m = String::from("From: a@lists.example.org\r\nSubject: rate\r\n\r\n");
        while m.len() < n {
            m.push_str("0123456789 abcdefghijklmnopqrstuvwxyz 0123456789 ABCDEFGHIJKLMNOP\r\n");
        }
        m
    };
    for (j, size) in sizes(24, 1_000, 4_000, 7).into_iter().enumerate() {
        let rcpts = (0..30).map(|i| format!("u{j}x{i}@loop.example"));
        smtpw_engine::spool::submit(
            dir.path(),
            "owner@lists.example.org",
            None,
            rcpts,
            msg(size).as_bytes(),
        )
        .expect("submit");
    }
    spool.ingest_incoming().await.expect("ingest");
    let engine = Arc::new(
        Engine::builder(cfg, spool.clone(), dir.path().to_path_buf())
            .connector(Arc::new(TcpConnector::new(Duration::from_secs(5))))
            .clock(clock.clone())
            .options(EngineOptions {
                per_worker_rate_split: split,
                ..EngineOptions::default()
            })
            .build(),
    );
    let e = engine.clone();
    let task = tokio::spawn(async move { e.run().await });
    tokio::time::sleep(Duration::from_secs(12)).await;
    let queued = spool.queued_copies();
    engine.shutdown().cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("engine stops")
        .expect("engine task");
    server.shutdown().await;
    assert!(queued > 0, "the backlog lasted the measurement");
    let p = points(&mta.journal(), "loop.example");
    let first = p.first().expect("delivered").at_ns;
    // From 1 s in (connections set up, the bucket's saved 100 ms spent) for 10 s.
    let from = first + 1_000_000_000;
    let bps = mean_bps(&p, from, from + 10_000_000_000);
    let limit = MBPS as f64;
    eprintln!(
        "[loopback 1Mbps, 2 workers, 1-4 KB, 10 s, {}] {bps:.0} bit/s ({:+.3}%)",
        if split { "per-worker split" } else { "shared" },
        (bps / limit - 1.0) * 100.0
    );
    bps / limit
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mbit_per_second_over_loopback_within_5pct() {
    let r = loopback(false).await;
    assert!((r - 1.0).abs() < 0.05, "achieved {r:.4} x the limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mbit_per_second_over_loopback_with_per_worker_split() {
    let r = loopback(true).await;
    assert!((r - 1.0).abs() < 0.05, "achieved {r:.4} x the limit");
}
