//! Visibility of pools and rate limits: the start-up rate report (per pool: limit in bits/s and
//! bytes/s, workers serving it), pools no worker serves (log, SPOOL/rate-status.json and
//! `smtpw queue` text and JSON), and the achieved rate over the last minute that a running
//! engine keeps in the spool for `smtpw queue`, which runs in another process.

use std::time::Duration;

use mock_mta::MockConfig;
use smtpw_engine::ratelimit::{RateStatus, RATE_STATUS_FILE};
use smtpw_engine::spool::Spool;
use smtpw_testkit::logs::LogCapture;
use smtpw_testkit::topology::{fast_options, site, Topology};

use crate::SMTPW;

const CFG: &str = "NODE=LISTSERV.EXAMPLE.ORG\nSMTP_FORWARD=SYNC.EXAMPLE.ORG\n\
    SMTP_FORWARD_1=2*MX.EXAMPLE.ORG;POOL=A\nSMTP_FORWARD_2=MX.EXAMPLE.ORG;POOL=C-\n\
    SMTP_RATE_LIMIT=2Mbps A:1Mbps\nMAXBSMTP=1\n";

fn smtpw(args: &[&str]) -> (String, bool) {
    let out = SMTPW.output(args);
    (
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        out.status.success(),
    )
}

#[tokio::test(start_paused = true)]
async fn report_at_start_status_file_and_smtpw_queue() {
    let log = LogCapture::default();
    let _guard = log.install();

    // The virtual clock starts at the real time, so `smtpw queue` (system clock) sees the status
    // as current.
    let start = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .datetime();
    let h = Topology::new(
        CFG,
        start,
        &[
            ("MX.EXAMPLE.ORG:25", MockConfig::iis()),
            ("SYNC.EXAMPLE.ORG:25", MockConfig::iis()),
        ],
    );
    // Pool A: 30 s of backlog at its 1 Mbit/s (4 KB copies); pool B: served by no worker.
    for j in 0..10 {
        let rcpts = (0..100).map(move |i| format!("a{j}x{i}@a.example"));
        h.submit(Some('A'), rcpts, 4_000);
    }
    h.submit(Some('B'), (0..5).map(|i| format!("b{i}@b.example")), 1_000);
    h.spool.ingest_incoming().await.expect("ingest");

    let engine = h.engine(fast_options());
    let e = engine.clone();
    let task = tokio::spawn(async move { e.run().await });
    tokio::time::sleep(Duration::from_secs(20)).await;

    // 1. The start-up report.
    let text = log.text();
    for want in [
        "rate limit overall: 2097152 bit/s (262144 bytes/s), 3 worker(s), shared by all workers",
        "rate limit pool A: 1048576 bit/s (131072 bytes/s), 2 worker(s), shared by all workers",
        "rate limit pool C: no limit, 1 worker(s) (overall limit only)",
        "rate limit pool -: no limit, 1 worker(s) (overall limit only)",
        "pools served by no worker: BDEFGHIJKLMNOPQRSTUVWXYZ (their mail goes through SMTP_FORWARD)",
    ] {
        assert!(text.contains(want), "missing {want:?} in the log:\n{text}");
    }

    // 2. The status file: configured limits, workers, unserved pools, achieved rate.
    let st = RateStatus::read(&h.spool_dir())
        .expect("read")
        .expect("status written");
    assert_eq!(st.unserved, "BDEFGHIJKLMNOPQRSTUVWXYZ");
    assert_eq!(st.overall.limit_bps, Some(2 * 1_048_576));
    assert_eq!(st.overall.workers, 3);
    let a = st.pools.iter().find(|p| p.pool == "A").expect("pool A");
    assert_eq!(
        (a.limit_bps, a.limit_bytes_per_s, a.workers),
        (Some(1_048_576), Some(131_072), 2)
    );
    // A has been backlogged for 20 s at 1 Mbit/s: its achieved rate over the window is the limit
    // (within 2%: the first second holds the bucket's saved 100 ms).
    let r = a.achieved_bps as f64 / 1_048_576.0;
    assert!(
        (0.98..1.03).contains(&r),
        "A achieved {} bit/s",
        a.achieved_bps
    );
    // B went through SMTP_FORWARD (FWD-3) and is counted as sent.
    let b = st
        .pools
        .iter()
        .find(|p| p.pool == "B")
        .expect("pool B has traffic");
    assert_eq!(b.workers, 0);
    assert!(b.bytes > 0);
    assert_eq!(
        h.mock("SYNC.EXAMPLE.ORG:25")
            .journal()
            .delivered_recipients()
            .len(),
        5
    );

    // 3. `smtpw queue`, text and JSON, from another process.
    let spool = h.spool_dir();
    let spool_s = spool.to_str().expect("path");
    let (out, ok) = smtpw(&["queue", "--spool", spool_s]);
    assert!(ok, "{out}");
    assert!(
        out.contains("rate limits (shared by all workers; achieved over the last"),
        "{out}"
    );
    assert!(
        out.contains("pools served by no worker: BDEFGHIJKLMNOPQRSTUVWXYZ"),
        "{out}"
    );
    let a_line = out
        .lines()
        .skip_while(|l| !l.contains("LIMIT bit/s"))
        .find(|l| l.starts_with("A "))
        .unwrap_or_else(|| panic!("no pool A line:\n{out}"));
    let cols: Vec<&str> = a_line.split_whitespace().collect();
    assert_eq!(&cols[..4], &["A", "1048576", "131072", "2"], "{a_line}");
    let achieved: f64 = cols[4].parse().expect("achieved");
    assert!((achieved / 1_048_576.0 - 1.0).abs() < 0.03, "{a_line}");
    let (json, ok) = smtpw(&["queue", "--spool", spool_s, "--json"]);
    assert!(ok, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["rates"]["source"], "engine");
    assert_eq!(v["rates"]["stale"], false);
    assert_eq!(v["rates"]["unserved"], "BDEFGHIJKLMNOPQRSTUVWXYZ");
    assert_eq!(v["rates"]["overall"]["limit_bps"], 2_097_152);
    assert!(v["queued"].as_u64().expect("queued") > 0);
    eprintln!("{out}");

    engine.shutdown().cancel();
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("stops")
        .expect("task");
}

#[test]
fn queue_without_an_engine_uses_the_config_and_flags_a_stale_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("SITE.CFG");
    std::fs::write(&cfg, CFG).expect("cfg");
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).expect("spool");
    // An empty spool database, as `smtpw queue` expects one.
    drop(
        smtpw_engine::spool::SqliteSpool::open(
            &spool,
            smtpw_engine::spool::SpoolOptions::default(),
            smtpw_engine::clock::SystemClock::shared(),
        )
        .expect("open"),
    );
    let (s, c) = (spool.to_str().expect("p"), cfg.to_str().expect("p"));
    let (out, ok) = smtpw(&["queue", "--spool", s, "--config", c]);
    assert!(ok, "{out}");
    assert!(out.contains("no engine status in the spool"), "{out}");
    assert!(
        out.contains("pools served by no worker: BDEFGHIJKLMNOPQRSTUVWXYZ"),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
            == ["A", "1048576", "131072", "2", "-", "-"]),
        "{out}"
    );

    // A status written an hour ago: the engine is not running.
    let site = site(CFG);
    let old = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1);
    RateStatus::new(&site, false, None, old)
        .write(&spool)
        .expect("write");
    assert!(spool.join(RATE_STATUS_FILE).exists());
    let (out, ok) = smtpw(&["queue", "--spool", s]);
    assert!(ok, "{out}");
    assert!(out.contains("the engine is not running"), "{out}");
    let (json, _) = smtpw(&["queue", "--spool", s, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["rates"]["stale"], true);
    // With --config, a stale status gives way to the configuration.
    let (out, _) = smtpw(&["queue", "--spool", s, "--config", c]);
    assert!(out.contains("no engine status in the spool"), "{out}");
}

#[tokio::test(start_paused = true)]
async fn without_smtp_forward_unserved_pools_are_warned_about_at_start_and_hourly() {
    let log = LogCapture::default();
    let _guard = log.install();
    let h = Topology::new(
        "NODE=LISTSERV.EXAMPLE.ORG\nSMTP_FORWARD_1=MX.EXAMPLE.ORG;POOL=AB\n",
        jiff::civil::date(2026, 11, 22).at(12, 0, 0, 0),
        &[("MX.EXAMPLE.ORG:25", MockConfig::iis())],
    );
    h.submit(Some('C'), std::iter::once("c@c.example".to_string()), 500);
    let engine = h.engine(fast_options());
    let e = engine.clone();
    let task = tokio::spawn(async move { e.run().await });
    tokio::time::sleep(Duration::from_secs(3600 + 5)).await;
    engine.shutdown().cancel();
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("stops")
        .expect("task");
    let text = log.text();
    let line = "pools served by no worker: CDEFGHIJKLMNOPQRSTUVWXYZ- (SMTP_FORWARD is not set: their mail stays queued)";
    assert_eq!(
        text.matches(line).count(),
        2,
        "at start and after an hour:\n{text}"
    );
    // The mail of pool C is still queued, and `smtpw queue` says why.
    assert_eq!(h.spool.queued_copies(), 1);
    let st = RateStatus::read(&h.spool_dir())
        .expect("read")
        .expect("status");
    assert_eq!(st.unserved, "CDEFGHIJKLMNOPQRSTUVWXYZ-");
    assert!(!st.sync_forward);
}
