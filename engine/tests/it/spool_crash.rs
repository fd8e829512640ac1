//! Nothing lost (QUEUE-1) at the spool level: a child process ingests a job and "delivers"
//! it with concurrent workers (journal line per recipient, then `complete`); the test kills it
//! with SIGKILL at pseudo-random moments, a dozen times, then lets a last run finish. Every
//! recipient must be delivered, the database must count each exactly once, and the recipients
//! delivered twice must be bounded by the copies that were in flight at each kill.
//!
//! `engine_crash.rs` does the same with the binaries users run (`smtpw run` over SMTP to a
//! mock-mta); this one isolates the spool (claims, the writer, ledger-then-commit) from the SMTP
//! engine and kills more often (every 15-90 ms), so a failure here points at the spool.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use smtpw_engine::clock::SystemClock;
use smtpw_engine::config::PoolSet;
use smtpw_engine::ledger::{read_ledger, Outcome};
use smtpw_engine::spool::{read_stats, submit, Spool, SpoolError, SpoolOptions, SqliteSpool};
use smtpw_testkit::workload::{all_delivered, recipients, Lcg};

const N: usize = 30_000;
/// The full name of [`crash_child`] in the test binary, for running it alone in a child process.
const CHILD_TEST: &str = "spool_crash::crash_child";
const MAX_BSMTP: u32 = 25;
const WORKERS: usize = 8;
const KILLS: usize = 12;

fn opts() -> SpoolOptions {
    SpoolOptions {
        max_bsmtp: MAX_BSMTP,
        ..SpoolOptions::default()
    }
}

/// The child: only does something when the parent test starts it.
#[test]
#[ignore = "started by crash_at_random_points_loses_nothing"]
fn crash_child() {
    let Ok(dir) = std::env::var("SMTPW_CRASH_DIR") else {
        return;
    };
    let dir = Path::new(&dir).to_path_buf();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        // The killed predecessor's lock goes with it; wait for it briefly anyway.
        let spool = loop {
            match SqliteSpool::open(&dir, opts(), SystemClock::shared()) {
                Ok(s) => break s,
                Err(SpoolError::Locked(..)) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(e) => panic!("{e}"),
            }
        };
        spool.ingest_incoming().await.unwrap();
        let journal = std::sync::Arc::new(std::sync::Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("journal.txt"))
                .unwrap(),
        ));
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..WORKERS {
            let spool = spool.clone();
            let journal = journal.clone();
            tasks.spawn(async move {
                let mut rng = Lcg(w as u64);
                while let Some(c) = spool.claim(PoolSet::ALL).await.unwrap() {
                    // The relay receives the transaction...
                    let mut text = String::new();
                    for r in &c.rcpts {
                        text.push_str(&format!("{} {r}\n", c.copy_id));
                    }
                    journal.lock().unwrap().write_all(text.as_bytes()).unwrap();
                    tokio::time::sleep(Duration::from_micros(2000 + rng.next() % 4000)).await;
                    // ...and then the engine records it.
                    let res = all_delivered(
                        "mock:25",
                        c.rcpts.len(),
                        "250 2.6.0 Queued mail for delivery",
                    );
                    spool.complete(c.copy_id, res).await.unwrap();
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    });
}

#[test]
fn crash_at_random_points_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let all = recipients(N);
    submit(
        dir.path(),
        "owner@l.example",
        None,
        all.clone().into_iter(),
        &b"Subject: crash\r\n\r\nx\r\n"[..],
    )
    .unwrap();
    let exe = std::env::current_exe().unwrap();
    let run = || {
        std::process::Command::new(&exe)
            .args([
                // The child test by its full name in this test binary (module::test).
                CHILD_TEST,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SMTPW_CRASH_DIR", dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut rng = Lcg(0x5eed);
    let mut killed = 0;
    let mut delivered_before_kill = Vec::new();
    for _ in 0..KILLS {
        let delay = Duration::from_millis(15 + rng.next() % 75);
        let mut child = run();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        child.wait().unwrap();
        let st = read_stats(dir.path(), jiff::Timestamp::now()).unwrap();
        delivered_before_kill.push(st.delivered);
    }
    let status = run().wait().unwrap();
    assert!(status.success(), "the last run finishes the queue");

    let st = read_stats(dir.path(), jiff::Timestamp::now()).unwrap();
    assert_eq!(
        (st.queued, st.delivered, st.failed),
        (0, N as u64, 0),
        "the database counts each recipient once"
    );

    // The relay's view: every recipient received, duplicates only from copies in flight.
    let journal = std::fs::read_to_string(dir.path().join("journal.txt")).unwrap();
    let mut received: HashMap<&str, u32> = HashMap::new();
    for l in journal.lines() {
        let (_, rcpt) = l.split_once(' ').unwrap();
        *received.entry(rcpt).or_default() += 1;
    }
    let lost = all
        .iter()
        .filter(|r| !received.contains_key(r.as_str()))
        .count();
    let duplicated: u32 = received.values().map(|n| n - 1).sum();
    // The ledger: every recipient has a "delivered" line.
    let mut ledgered: HashMap<String, u32> = HashMap::new();
    for l in read_ledger(&dir.path().join("ledger.jsonl")).unwrap() {
        assert_eq!(l.outcome, Outcome::Delivered);
        *ledgered.entry(l.rcpt).or_default() += 1;
    }
    let missing_in_ledger = all.iter().filter(|r| !ledgered.contains_key(*r)).count();
    let ledger_dups: u32 = ledgered.values().map(|n| n - 1).sum();
    eprintln!(
        "crash test: {KILLS} runs ({killed} killed mid-way, delivered after each: {delivered_before_kill:?}), \
         {N} recipients, lost {lost}, received twice {duplicated}, ledger duplicates {ledger_dups}"
    );
    assert_eq!(lost, 0);
    assert_eq!(missing_in_ledger, 0);
    assert!(
        killed >= KILLS / 2,
        "most runs were killed mid-way ({killed})"
    );
    let bound = (killed * WORKERS) as u32 * MAX_BSMTP;
    assert!(
        duplicated <= bound,
        "{duplicated} duplicates > {bound} (in-flight bound)"
    );
    assert!(
        ledger_dups <= duplicated,
        "ledger repeats only what the relay received twice"
    );
}
