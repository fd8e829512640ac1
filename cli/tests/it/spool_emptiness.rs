//! "Nothing queued" must be exact: `smtpw run --until-empty` stops when
//! `Spool::queued_copies()` reads 0 (and `incoming/` is empty), so a copy that is counted nowhere
//! for an instant, e.g. while a worker's claim reads it from the database, turns into an exit 0
//! with the job unsent.
//!
//! - `queued_copies_never_reads_zero_while_a_copy_is_being_claimed`: one thread claims and gives
//!   back the only copy as fast as it can, another reads `queued_copies()` meanwhile: it must
//!   never read 0.
//! - `until_empty_delivers_a_fresh_job_every_time`: 20 runs of the real binary, each with a fresh
//!   spool holding one 50-recipient job: every run must deliver all 50 before it exits 0.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mock_mta::MockConfig;
use smtpw_engine::clock::SystemClock;
use smtpw_engine::config::PoolSet;
use smtpw_engine::ledger::{read_ledger, Outcome};
use smtpw_engine::spool::{submit, Spool, SpoolOptions, SqliteSpool};
use smtpw_testkit::proc::{write_site_cfg, Kid, LoopbackMock};
use smtpw_testkit::workload::recipients;

use crate::SMTPW;

#[test]
fn queued_copies_never_reads_zero_while_a_copy_is_being_claimed() {
    let dir = tempfile::tempdir().unwrap();
    submit(
        dir.path(),
        "owner@l.example",
        None,
        ["a@x.example".to_string()].into_iter(),
        &b"Subject: one\r\n\r\nx\r\n"[..],
    )
    .unwrap();
    let spool =
        SqliteSpool::open(dir.path(), SpoolOptions::default(), SystemClock::shared()).unwrap();
    assert_eq!(spool.ingest_blocking().unwrap().copies, 1);
    let stop = Arc::new(AtomicBool::new(false));
    let claims = Arc::new(AtomicU64::new(0));
    let claimer = {
        let (spool, stop, claims) = (spool.clone(), stop.clone(), claims.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                let c = rt.block_on(spool.claim(PoolSet::ALL)).unwrap();
                let c = c.expect("the one copy is always claimable here");
                spool.release(c.copy_id);
                claims.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let (mut reads, mut zeros) = (0u64, 0u64);
    let end = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < end {
        reads += 1;
        if spool.queued_copies() == 0 {
            zeros += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    claimer.join().unwrap();
    let claims = claims.load(Ordering::Relaxed);
    eprintln!("{claims} claims, {reads} reads of queued_copies(), {zeros} read 0");
    assert!(claims > 100, "the claimer ran ({claims} claims)");
    assert_eq!(
        zeros, 0,
        "queued_copies() read 0 {zeros} times out of {reads} while the only copy was being claimed"
    );
}

const RUNS: usize = 20;
const RCPTS: usize = 50;

#[test]
fn until_empty_delivers_a_fresh_job_every_time() {
    let mock = LoopbackMock::start(MockConfig::iis());
    let mut per_run = Vec::new();
    for run in 0..RUNS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_site_cfg(dir.path(), mock.port, 4, 100);
        let spool = dir.path().join("spool");
        let ledger = dir.path().join("ledger.jsonl");
        let log = dir.path().join("smtpw.log");
        let all: Vec<String> = recipients(RCPTS)
            .into_iter()
            .map(|r| format!("run{run}.{r}"))
            .collect();
        SMTPW.submit(dir.path(), &spool, &all);
        let before = mock.mta.journal().delivered_recipients().len();
        let mut kid = Kid::spawn(
            SMTPW.run_cmd(&cfg, &spool, &ledger, true, &log),
            "smtpw run",
        );
        let status = kid.wait_for(Duration::from_secs(30)).unwrap_or_else(|| {
            panic!(
                "run {run} did not finish in 30 s; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        assert!(status.success(), "run {run}: {status}");
        let delivered = mock.mta.journal().delivered_recipients().len() - before;
        let ledgered = read_ledger(&ledger)
            .map(|l| l.filter(|l| l.outcome == Outcome::Delivered).count())
            .unwrap_or(0);
        per_run.push((delivered, ledgered));
    }
    eprintln!("(relay, ledger) deliveries per run: {per_run:?}");
    let short = per_run
        .iter()
        .filter(|&&(d, l)| d != RCPTS || l != RCPTS)
        .count();
    assert_eq!(
        short, 0,
        "{short} of {RUNS} runs exited 0 before delivering their {RCPTS} recipients: {per_run:?}"
    );
}
