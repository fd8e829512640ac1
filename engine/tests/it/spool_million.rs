//! A job of a little over a million recipients is ingested with flat memory (streamed, sorted on
//! disk by SQLite), and every recipient ends up in exactly one copy.
//!
//! Peak RSS is the process's VmHWM from /proc/self/status, read before and after the ingest;
//! this file holds one test so that nothing else in the process moves it.

use std::time::Instant;

use smtpw_engine::clock::SystemClock;
use smtpw_engine::config::PoolSet;
use smtpw_engine::spool::{submit, Spool, SpoolOptions, SqliteSpool};

fn vm_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

const N: usize = 1_000_003;

#[test]
fn a_million_recipient_job_is_ingested_with_flat_memory() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let message = "Subject: big\r\n\r\n".to_string() + &"x".repeat(70).repeat(1000);
    let t = Instant::now();
    let rcpts = (0..N).map(|i| format!("subscriber{i}@host{}.example{}", (i * 7919) % 5000, i % 3));
    submit(
        dir.path(),
        "owner-big@lists.example",
        None,
        rcpts,
        message.as_bytes(),
    )
    .unwrap();
    let written = t.elapsed();
    for sort in [0u8, 2] {
        let sub = dir.path().join(format!("s{sort}"));
        std::fs::create_dir_all(sub.join("incoming")).unwrap();
        for e in std::fs::read_dir(dir.path().join("incoming")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), sub.join("incoming").join(e.file_name())).unwrap();
        }
        let opts = SpoolOptions {
            max_bsmtp: 1000,
            sort_recipients: sort,
            ..SpoolOptions::default()
        };
        let spool = SqliteSpool::open(&sub, opts, SystemClock::shared()).unwrap();
        // Reset the peak to the current RSS (Linux: "5" to clear_refs), so each pass is measured alone.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let hwm_before = vm_kb("VmHWM:");
        let t = Instant::now();
        let rep = spool.ingest_blocking().unwrap();
        let took = t.elapsed();
        let hwm_after = vm_kb("VmHWM:");
        assert_eq!(rep.recipients, N as u64);
        if sort == 0 {
            assert_eq!(rep.copies, N.div_ceil(1000) as u64);
        } else {
            assert!(rep.copies >= N.div_ceil(1000) as u64);
        }
        let growth_mb = (hwm_after.saturating_sub(hwm_before)) as f64 / 1024.0;
        let rate = N as f64 / took.as_secs_f64();
        eprintln!(
            "SORT_RECIPIENTS={sort}: ingested {N} recipients in {took:.2?} ({rate:.0} rcpt/s; job written in {written:.2?}), \
             {} copies; VmHWM {:.1} MB -> {:.1} MB (growth {growth_mb:.1} MB)",
            rep.copies,
            hwm_before as f64 / 1024.0,
            hwm_after as f64 / 1024.0
        );
        assert!(growth_mb < 150.0, "peak RSS grew by {growth_mb:.1} MB");
        // Every recipient is in exactly one copy, none above MAXBSMTP.
        let (copies, total, distinct) = rt.block_on(async {
            let mut seen = vec![false; N];
            let (mut copies, mut total) = (0u64, 0u64);
            while let Some(c) = spool.claim(PoolSet::ALL).await.unwrap() {
                assert!(c.rcpts.len() <= 1000);
                copies += 1;
                for r in &c.rcpts {
                    let i: usize = r["subscriber".len()..r.find('@').unwrap()].parse().unwrap();
                    assert!(!seen[i], "{r} twice");
                    seen[i] = true;
                    total += 1;
                }
            }
            (copies, total, seen.iter().filter(|s| **s).count())
        });
        assert_eq!((copies, total, distinct), (rep.copies, N as u64, N));
        let st = rt.block_on(spool.stats()).unwrap();
        assert_eq!(st.queued, N as u64);
        // A restart on a spool this size: the open checks the whole database (quick_check)
        // before it rebuilds the index. How long that takes, and the check alone.
        let opts = spool.options().clone();
        drop(spool);
        let t = Instant::now();
        let spool = SqliteSpool::open(&sub, opts, SystemClock::shared()).unwrap();
        let reopen = t.elapsed();
        assert_eq!(spool.queued_copies(), rep.copies);
        drop(spool);
        let db = sub.join("spool.db");
        let size_mb = std::fs::metadata(&db).unwrap().len() as f64 / 1e6;
        let c = rusqlite::Connection::open(&db).unwrap();
        let t = Instant::now();
        let verdict: String = c.query_row("PRAGMA quick_check", [], |r| r.get(0)).unwrap();
        let check = t.elapsed();
        assert_eq!(verdict, "ok");
        eprintln!(
            "SORT_RECIPIENTS={sort}: reopened in {reopen:.2?} ({size_mb:.0} MB spool.db; quick_check alone {check:.2?})"
        );
    }
}
