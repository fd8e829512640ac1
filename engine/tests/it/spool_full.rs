//! A full disk never repeats or hides mail: an outcome that cannot be recorded is kept and
//! retried until it is, no new copy is claimed meanwhile, the operator reads one error for the
//! condition (not one per copy), and delivery resumes by itself once space returns.
//!
//! Each case mounts a small tmpfs (root only; skipped with a notice otherwise) and fills it:
//! - the ledger on the full disk (its append fails: nothing may be left torn in it);
//! - the spool database on the full disk, the ledger elsewhere (the ledger lines of a batch are
//!   written, then the database commit fails: the retry must not write them again);
//! - (the real `smtpw run` with its whole spool on the disk is the CLI's `spool_full` test).
//!
//! The bound on relay deliveries while nothing can be recorded: each worker has at most the copy
//! it is delivering plus `COMPLETIONS_OUTSTANDING` copies whose outcomes wait to be recorded.

use std::time::{Duration, Instant};

use jiff::civil::date;
use mock_mta::MockConfig;
use smtpw_engine::engine::EngineOptions;
use smtpw_engine::ledger::Outcome;
use smtpw_engine::spool::Spool;
use smtpw_testkit::ledger::delivered_lines;
use smtpw_testkit::logs::{process_log, process_log_lines};
use smtpw_testkit::proc::{repeat_bound_per_crash, settle};
use smtpw_testkit::tmpfs::Tmpfs;
use smtpw_testkit::topology::{fast_options, Topology};

const A: &str = "A.EXAMPLE.ORG:25";
const WORKERS: usize = 3;
const MAX_BSMTP: usize = 10;
const N: usize = 400;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Where the disk goes in the in-process cases.
enum OnDisk {
    Ledger,
    Database,
}

fn full_disk_in_process(test: &str, on: OnDisk) {
    let Some(disk) = Tmpfs::mount(test, "2m") else {
        return;
    };
    process_log();
    let rt = runtime();
    let elsewhere = tempfile::tempdir().unwrap();
    let ledger = match on {
        OnDisk::Ledger => disk.path.join("ledger.jsonl"),
        OnDisk::Database => elsewhere.path().join("ledger.jsonl"),
    };
    let parent = match on {
        OnDisk::Ledger => None,
        OnDisk::Database => Some(disk.path.as_path()),
    };
    let cfg = format!("SMTP_FORWARD_1={WORKERS}*A.EXAMPLE.ORG\nMAXBSMTP={MAX_BSMTP}\n");
    let l = ledger.clone();
    let h = Topology::with_options_in(
        parent,
        &cfg,
        date(2026, 11, 22).at(12, 0, 0, 0),
        &[(A, MockConfig::iis())],
        move |o| o.ledger_path = Some(l),
    );
    h.submit_n(None, N, "x.example", 1000);
    assert_eq!(h.spool.ingest_blocking().unwrap().recipients, N as u64);
    // A restart: the database's write-ahead log is checkpointed and removed, so the first
    // commit after the disk fills must grow a file on it.
    let h = h.reopen();
    let copies = h.spool.queued_copies();
    assert_eq!(copies, (N / MAX_BSMTP) as u64);
    let filler = disk.fill("filler");
    let spool_dir = h.spool_dir().display().to_string();

    let (_engine, handle) = {
        let _rt = rt.enter();
        h.spawn(EngineOptions {
            until_empty: true,
            ..fast_options()
        })
    };
    let relay = || h.mock(A).journal().delivered_recipients().len();
    let end = Instant::now() + Duration::from_secs(20);
    while h.spool.recording_error().is_none() {
        assert!(
            Instant::now() < end,
            "the spool did not report that it cannot record; the relay has {}",
            relay()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let stalled_at = settle(Duration::from_secs(20), Duration::from_millis(700), relay);
    let bound = repeat_bound_per_crash(WORKERS as u32, MAX_BSMTP as u32) as usize;
    eprintln!("{test}: the relay received {stalled_at} of {N} recipients before delivery paused (bound {bound})");
    assert!(
        stalled_at <= bound,
        "the relay received {stalled_at} recipients while nothing could be recorded (in-flight bound {bound})"
    );
    assert_eq!(
        h.spool.queued_copies(),
        copies,
        "nothing recorded, nothing lost"
    );
    let err = h.spool.recording_error();
    eprintln!("{test}: recording_error: {err:?}");
    let err = err.expect("the spool reports that it cannot record");
    assert!(
        err.contains("No space left") || err.contains("full"),
        "{err}"
    );
    let (lines, _) = delivered_lines(&ledger);
    match on {
        OnDisk::Ledger => assert_eq!(lines, 0, "no line reached the full ledger"),
        OnDisk::Database => assert!(lines <= stalled_at, "{lines} ledger lines"),
    }
    // Still paused a while later: no new claim, no new delivery.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        relay(),
        stalled_at,
        "no copy is claimed while outcomes wait"
    );
    let paused = process_log_lines(&spool_dir)
        .into_iter()
        .filter(|l| l.contains("delivery is paused"))
        .count();
    assert_eq!(paused, 1, "one error for the condition");

    // Space returns: delivery resumes by itself and the queue empties.
    std::fs::remove_file(&filler).unwrap();
    let t = Instant::now();
    let summary = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(60), handle).await })
        .expect("the engine empties the queue once space returns")
        .unwrap();
    eprintln!(
        "{test}: emptied {:.1?} after space returned; {summary:?}",
        t.elapsed()
    );
    let counts = h.delivered_counts();
    assert_eq!(counts.len(), N, "every recipient reached the relay");
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(repeated.is_empty(), "repeated at the relay: {repeated:?}");
    let (lines, per) = delivered_lines(&ledger);
    assert_eq!(
        (lines, per.len()),
        (N, N),
        "one ledger line per recipient outcome"
    );
    let st = rt.block_on(h.spool.stats()).unwrap();
    assert_eq!((st.queued, st.delivered, st.failed), (0, N as u64, 0));
    assert_eq!(h.spool.recording_error(), None);
    let mine = process_log_lines(&spool_dir);
    let resumed = mine
        .iter()
        .filter(|l| l.contains("delivery resumes"))
        .count();
    assert_eq!(resumed, 1, "one line when it recovers: {mine:#?}");
    let per_copy = process_log_lines("recording the outcome failed");
    assert!(per_copy.is_empty(), "no line per copy: {per_copy:#?}");
}

#[test]
fn a_full_disk_under_the_ledger_pauses_delivery_until_space_returns() {
    full_disk_in_process("ledger on a full disk", OnDisk::Ledger);
}

#[test]
fn a_full_disk_under_the_database_pauses_delivery_and_the_ledger_is_not_repeated() {
    full_disk_in_process("database on a full disk", OnDisk::Database);
}

#[test]
fn a_failed_ledger_append_leaves_no_torn_line_and_its_retry_writes_each_line_once() {
    use smtpw_engine::ledger::{Ledger, LedgerLineRef};
    let Some(disk) = Tmpfs::mount("ledger append on a full disk", "256k") else {
        return;
    };
    let path = disk.path.join("ledger.jsonl");
    let mut ledger = Ledger::open(&path).unwrap();
    let reply = "250 2.6.0 <id@mock> Queued mail for delivery".to_string();
    let push = |ledger: &mut Ledger, from: usize, to: usize| {
        for i in from..to {
            let rcpt = format!("recipient{i}@example.org");
            ledger
                .push(&LedgerLineRef {
                    time: "2026-11-22T12:00:00Z".parse().unwrap(),
                    job: 1,
                    copy: i as i64,
                    pool: "-",
                    rcpt: &rcpt,
                    outcome: Outcome::Delivered,
                    relay: Some("mx:25"),
                    tls: None,
                    reply: &reply,
                    attempts: 1,
                    retry_at: None,
                    expired: false,
                })
                .unwrap();
        }
    };
    push(&mut ledger, 0, 10);
    ledger.commit().unwrap();
    let before = std::fs::metadata(&path).unwrap().len();
    let filler = disk.fill("filler");
    // More than the slack left in the ledger's last page: part of it would fit.
    push(&mut ledger, 10, 300);
    for attempt in 1..=3 {
        let e = ledger.commit().expect_err("the disk is full");
        assert_eq!(e.raw_os_error(), Some(28), "{e}");
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            before,
            "attempt {attempt}: the failed append is cut off whole"
        );
    }
    std::fs::remove_file(&filler).unwrap();
    ledger.commit().unwrap();
    ledger.commit().unwrap(); // nothing pending: writes nothing
    let (lines, per) = delivered_lines(&path);
    assert_eq!((lines, per.len()), (300, 300), "each line once");
}

#[test]
fn submitting_to_a_full_disk_says_the_disk_is_full_and_where() {
    let Some(disk) = Tmpfs::mount("submit to a full disk", "256k") else {
        return;
    };
    let spool = disk.path.join("spool");
    std::fs::create_dir_all(spool.join("incoming")).unwrap();
    let _filler = disk.fill("filler");
    let err = smtpw_engine::spool::submit(
        &spool,
        "owner@l.example",
        None,
        (0..5000).map(|i| format!("r{i}@x.example")),
        &b"Subject: s\r\n\r\nx\r\n"[..],
    )
    .unwrap_err()
    .to_string();
    eprintln!("submit on a full disk: {err}");
    assert!(!err.contains("invalid job"), "{err}");
    assert!(err.contains("the disk is full"), "{err}");
    assert!(
        err.contains(&spool.join("incoming").display().to_string()),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(spool.join("incoming")).unwrap().collect();
    assert!(left.is_empty(), "nothing is left behind: {left:?}");
}

#[test]
fn ingesting_on_a_full_disk_says_the_disk_is_full_and_keeps_the_job() {
    use smtpw_engine::clock::SystemClock;
    use smtpw_engine::spool::{SpoolOptions, SqliteSpool};
    let Some(disk) = Tmpfs::mount("ingest on a full disk", "4m") else {
        return;
    };
    let spool_dir = disk.path.join("spool");
    let spool =
        SqliteSpool::open(&spool_dir, SpoolOptions::default(), SystemClock::shared()).unwrap();
    let job = smtpw_engine::spool::submit(
        &spool_dir,
        "owner@l.example",
        None,
        (0..20_000).map(|i| format!("r{i}@x.example")),
        &b"Subject: s\r\n\r\nx\r\n"[..],
    )
    .unwrap();
    let filler = disk.fill("filler");
    let err = spool.ingest_blocking().unwrap_err().to_string();
    eprintln!("ingest on a full disk: {err}");
    assert!(err.contains("is full"), "{err}");
    assert!(
        err.contains(&spool_dir.join("spool.db").display().to_string()),
        "{err}"
    );
    assert!(job.exists(), "the job stays in incoming/");
    assert_eq!(spool.queued_copies(), 0);
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(spool.ingest_blocking().unwrap().recipients, 20_000);
}

#[test]
fn a_spool_closed_while_outcomes_wait_gives_them_up_and_keeps_their_copies() {
    use smtpw_engine::clock::SystemClock;
    use smtpw_engine::config::PoolSet;
    use smtpw_engine::spool::{SpoolError, SpoolOptions, SqliteSpool};
    use smtpw_testkit::workload::all_delivered;
    let Some(disk) = Tmpfs::mount("closing while outcomes wait", "256k") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ledger = disk.path.join("ledger.jsonl");
    let opts = SpoolOptions {
        max_bsmtp: 1,
        ledger_path: Some(ledger.clone()),
        ..SpoolOptions::default()
    };
    smtpw_engine::spool::submit(
        dir.path(),
        "owner@l.example",
        None,
        ["a@x.example".to_string(), "b@x.example".to_string()].into_iter(),
        &b"Subject: s\r\n\r\nx\r\n"[..],
    )
    .unwrap();
    let spool = SqliteSpool::open(dir.path(), opts.clone(), SystemClock::shared()).unwrap();
    spool.ingest_blocking().unwrap();
    let _filler = disk.fill("filler");
    let rt = runtime();
    let c = rt.block_on(spool.claim(PoolSet::ALL)).unwrap().unwrap();
    let res = all_delivered("mx:25", 1, "250 ok");
    let s = spool.clone();
    let pending = rt.spawn(async move { s.complete(c.copy_id, res).await });
    let end = Instant::now() + Duration::from_secs(10);
    while spool.recording_error().is_none() {
        assert!(Instant::now() < end, "the writer reports the full disk");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        rt.block_on(spool.claim(PoolSet::ALL)).unwrap().is_none(),
        "the other copy is not claimed while an outcome waits"
    );
    assert_eq!(spool.queued_copies(), 2);
    // The process stops with the outcome still unrecorded: the spool closes without hanging.
    let t = Instant::now();
    pending.abort();
    drop(rt);
    drop(spool);
    eprintln!("closed in {:?} with an outcome unrecorded", t.elapsed());
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "closing does not wait for space"
    );
    assert_eq!(std::fs::metadata(&ledger).unwrap().len(), 0, "no torn line");
    // Both copies are still queued for the next run. The spool's lock is an flock: a process
    // another test thread is starting (mount, df, the smtpw binary) holds a copy of its file
    // descriptor from fork to exec, so the lock can outlive the drop by a moment here.
    let reopen_until = Instant::now() + Duration::from_secs(2);
    let spool = loop {
        match SqliteSpool::open(dir.path(), opts.clone(), SystemClock::shared()) {
            Err(SpoolError::Locked(..)) if Instant::now() < reopen_until => {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => {
                break r.unwrap_or_else(|e| {
                    panic!("reopening after a close with an outcome unrecorded: {e}")
                })
            }
        }
    };
    assert_eq!(spool.queued_copies(), 2);
}
