//! A full disk never repeats or hides mail: an outcome that cannot be recorded is kept and
//! retried until it is, no new copy is claimed meanwhile, the operator reads one error for the
//! condition (not one per copy), and delivery resumes by itself once space returns.
//!
//! Each case mounts a small tmpfs (root only; skipped with a notice otherwise) and fills it:
//! - the ledger on the full disk (its append fails: nothing may be left torn in it);
//! - the spool database on the full disk, the ledger elsewhere (the ledger lines of a batch are
//!   written, then the database commit fails: the retry must not write them again);
//! - the real `smtpw run --until-empty` with its whole spool on the disk: it must not exit 0
//!   while outcomes are unrecorded, and must finish with each recipient delivered once.
//!
//! The bound on relay deliveries while nothing can be recorded: each worker has at most the copy
//! it is delivering plus `COMPLETIONS_OUTSTANDING` copies whose outcomes wait to be recorded.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

mod common;
mod proc_support;
mod tmpfs_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{fast_options, Harness};
use jiff::civil::date;
use mock_mta::MockConfig;
use smtpw::engine::EngineOptions;
use smtpw::ledger::{read_ledger, LedgerOutcome};
use smtpw::spool::Spool;
use smtpw::worker::COMPLETIONS_OUTSTANDING;
use tmpfs_support::Tmpfs;

const A: &str = "A.EXAMPLE.ORG:25";
const WORKERS: usize = 3;
const MAX_BSMTP: usize = 10;
const N: usize = 400;

/// Recipients a site of `workers` workers can send without recording anything.
fn in_flight_bound(workers: usize, max_bsmtp: usize) -> usize {
    workers * (COMPLETIONS_OUTSTANDING + 1) * max_bsmtp
}

/// Every `tracing` line of this test process (the spool's writer is a thread of its own, so a
/// thread-local capture would miss it).
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || LogWriter(w.clone()))
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_global_default(sub).unwrap();
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log lines that mention `needle`.
fn log_lines(needle: &str) -> Vec<String> {
    let buf = logs();
    let text = String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
    text.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Poll `f` until its value has not changed for `quiet`; panics after `limit`.
fn settle(limit: Duration, quiet: Duration, f: impl Fn() -> usize) -> usize {
    let end = Instant::now() + limit;
    let (mut last, mut since) = (f(), Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let v = f();
        if v != last {
            (last, since) = (v, Instant::now());
        } else if since.elapsed() >= quiet {
            return v;
        }
        assert!(Instant::now() < end, "still changing after {limit:?} ({v})");
    }
}

/// The ledger's lines: (whole lines in the file, per recipient how many `delivered` lines).
fn ledger_lines(path: &Path) -> (usize, BTreeMap<String, u32>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "the ledger ends with a torn line: {:?}",
        &text[text.len().saturating_sub(80)..]
    );
    let raw = text.lines().count();
    let mut per = BTreeMap::new();
    let mut parsed = 0;
    for l in read_ledger(path).unwrap() {
        parsed += 1;
        assert_eq!(l.outcome, LedgerOutcome::Delivered, "{l:?}");
        *per.entry(l.rcpt).or_default() += 1;
    }
    assert_eq!(parsed, raw, "every ledger line is whole JSON");
    (raw, per)
}

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
    let _ = logs();
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
    let h = Harness::with_options_in(
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
    let bound = in_flight_bound(WORKERS, MAX_BSMTP);
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
    let (lines, _) = ledger_lines(&ledger);
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
    let paused = log_lines(&spool_dir)
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
    let (lines, per) = ledger_lines(&ledger);
    assert_eq!(
        (lines, per.len()),
        (N, N),
        "one ledger line per recipient outcome"
    );
    let st = rt.block_on(h.spool.stats()).unwrap();
    assert_eq!((st.queued, st.delivered, st.failed), (0, N as u64, 0));
    assert_eq!(h.spool.recording_error(), None);
    let mine = log_lines(&spool_dir);
    let resumed = mine
        .iter()
        .filter(|l| l.contains("delivery resumes"))
        .count();
    assert_eq!(resumed, 1, "one line when it recovers: {mine:#?}");
    let per_copy = log_lines("recording the outcome failed");
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
fn smtpw_run_until_empty_waits_out_a_full_disk_and_delivers_each_recipient_once() {
    use proc_support::{num, queue_json, recipients, run_cmd, submit_cli, write_site_cfg, Kid};
    use smtpw::clock::SystemClock;
    use smtpw::spool::{SpoolOptions, SqliteSpool};

    const RCPTS: usize = 3000;
    const W: u32 = 3;
    const BSMTP: u32 = 20;
    let Some(disk) = Tmpfs::mount("smtpw run on a full disk", "8m") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let mock = proc_support::LoopbackMock::start(MockConfig::iis());
    let cfg = write_site_cfg(work.path(), mock.port, W, BSMTP);
    let spool = disk.path.join("spool");
    let ledger = spool.join("ledger.jsonl");
    let log = work.path().join("smtpw.log");
    let all = recipients(RCPTS);
    submit_cli(work.path(), &spool, &all);
    // Ingested before the disk fills (ingest on a full disk is another matter).
    let opts = SpoolOptions {
        max_bsmtp: BSMTP,
        ..SpoolOptions::default()
    };
    let s = SqliteSpool::open(&spool, opts, SystemClock::shared()).unwrap();
    assert_eq!(s.ingest_blocking().unwrap().recipients, RCPTS as u64);
    drop(s);
    // Full, but for a little room: enough to start (SQLite's shared-memory file) and record the
    // first few outcomes.
    let filler = disk.fill("filler");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap();
    f.set_len(f.metadata().unwrap().len() - 96 * 1024).unwrap();
    drop(f);

    let mut kid = Kid::spawn(run_cmd(&cfg, &spool, &ledger, true, &log), "smtpw run");
    let relay = || mock.mta.journal().delivered_recipients().len();
    let end = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("delivery is paused")
    {
        assert!(
            kid.child.try_wait().unwrap().is_none() && Instant::now() < end,
            "no 'delivery is paused' within 30 s; the relay has {}; log:\n{}",
            relay(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let stalled_at = settle(Duration::from_secs(30), Duration::from_millis(1500), relay);
    let (ledgered, _) = ledger_lines(&ledger);
    // Recorded: in the database (the ledger may also hold the lines of a batch whose database
    // commit is the part that failed).
    let recorded = num(&queue_json(&spool), "delivered") as usize;
    let bound = in_flight_bound(W as usize, BSMTP as usize);
    let text = std::fs::read_to_string(&log).unwrap();
    eprintln!(
        "smtpw run on a full disk: when paused, of {RCPTS}: relay {stalled_at}, ledger {ledgered}, \
         database {recorded} (bound {bound})"
    );
    assert!(
        recorded <= ledgered,
        "the ledger is written before the database"
    );
    assert!(
        kid.child.try_wait().unwrap().is_none(),
        "smtpw run exited while outcomes were unrecorded; log:\n{text}"
    );
    assert!(
        stalled_at <= recorded + bound,
        "the relay received {stalled_at} recipients, the ledger holds {recorded} (in-flight bound {bound})"
    );
    assert!(stalled_at < RCPTS, "delivery paused before the end");
    assert!(text.contains("delivery is paused"), "log:\n{text}");
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        relay(),
        stalled_at,
        "no copy is claimed while outcomes wait"
    );

    std::fs::remove_file(&filler).unwrap();
    let status = kid.wait_for(Duration::from_secs(90)).unwrap_or_else(|| {
        panic!(
            "smtpw run did not finish 90 s after space returned; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status}; log:\n{text}");
    let mut at_relay: BTreeMap<String, u32> = BTreeMap::new();
    for r in mock.mta.journal().delivered_recipients() {
        *at_relay.entry(r).or_default() += 1;
    }
    let repeated = at_relay.values().filter(|n| **n > 1).count();
    assert_eq!(
        (at_relay.len(), repeated),
        (RCPTS, 0),
        "each recipient reached the relay exactly once"
    );
    let (lines, per) = ledger_lines(&ledger);
    assert_eq!((lines, per.len()), (RCPTS, RCPTS), "one ledger line each");
    let q = queue_json(&spool);
    assert_eq!((num(&q, "queued"), num(&q, "delivered")), (0, RCPTS as u64));
    let paused = text.matches("delivery is paused").count();
    let resumed = text.matches("delivery resumes").count();
    eprintln!("smtpw run on a full disk: {paused} pause line(s), {resumed} resume line(s):");
    for l in text
        .lines()
        .filter(|l| l.contains("delivery is paused") || l.contains("delivery resumes"))
    {
        eprintln!("  {l}");
    }
    assert!(
        paused == 1 && resumed == 1,
        "one line when recording stops (a full disk, whichever file hits it), one when it resumes; log:\n{text}"
    );
}

/// A stop while the spool cannot record: the drain deadline ends the wait for the unrecorded
/// outcomes (the process does not hang on a full disk), the exit status says so, and the next run
/// delivers those copies again, within the in-flight bound, losing nothing.
#[test]
fn a_stop_on_a_full_disk_ends_at_the_drain_deadline_and_the_next_run_repeats_only_the_unrecorded() {
    use proc_support::{num, queue_json, recipients, run_cmd, submit_cli, write_site_cfg, Kid};
    use smtpw::clock::SystemClock;
    use smtpw::spool::{SpoolOptions, SqliteSpool};

    const RCPTS: usize = 3000;
    const W: u32 = 3;
    const BSMTP: u32 = 20;
    let Some(disk) = Tmpfs::mount("a stop on a full disk", "8m") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let mock = proc_support::LoopbackMock::start(MockConfig::iis());
    let cfg = write_site_cfg(work.path(), mock.port, W, BSMTP);
    let spool = disk.path.join("spool");
    let ledger = spool.join("ledger.jsonl");
    let log = work.path().join("smtpw.log");
    submit_cli(work.path(), &spool, &recipients(RCPTS));
    let opts = SpoolOptions {
        max_bsmtp: BSMTP,
        ..SpoolOptions::default()
    };
    let s = SqliteSpool::open(&spool, opts, SystemClock::shared()).unwrap();
    assert_eq!(s.ingest_blocking().unwrap().recipients, RCPTS as u64);
    drop(s);
    let filler = disk.fill("filler");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap();
    f.set_len(f.metadata().unwrap().len() - 96 * 1024).unwrap();
    drop(f);

    let mut cmd = run_cmd(&cfg, &spool, &ledger, false, &log);
    cmd.args(["--drain-timeout", "1"]);
    let mut kid = Kid::spawn(cmd, "smtpw run");
    let relay = || mock.mta.journal().delivered_recipients().len();
    let end = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("delivery is paused")
    {
        assert!(
            kid.child.try_wait().unwrap().is_none() && Instant::now() < end,
            "no 'delivery is paused' within 30 s; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let stalled_at = settle(Duration::from_secs(30), Duration::from_millis(1500), relay);
    let stop = Instant::now();
    kid.term();
    let status = kid.wait_for(Duration::from_secs(20)).unwrap_or_else(|| {
        panic!(
            "smtpw run did not stop within 20 s of SIGTERM on a full disk (drain deadline 1 s); log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    let took = stop.elapsed();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        status.code(),
        Some(4),
        "exit status 4: outcomes given up; log:\n{text}"
    );
    assert!(
        text.contains("not recorded"),
        "the reason is printed; log:\n{text}"
    );
    let recorded = num(&queue_json(&spool), "delivered") as usize;
    eprintln!(
        "a stop on a full disk: the relay had {stalled_at} of {RCPTS}, the spool recorded {recorded}; \
         stopped in {took:.2?} with --drain-timeout 1"
    );

    // Space returns; the next run delivers the rest, repeating only what was not recorded.
    std::fs::remove_file(&filler).unwrap();
    let mut kid = Kid::spawn(
        run_cmd(&cfg, &spool, &ledger, true, &log),
        "smtpw run (again)",
    );
    let status = kid
        .wait_for(Duration::from_secs(90))
        .expect("the second run ends");
    assert!(status.success(), "{status}");
    let mut at_relay: BTreeMap<String, u32> = BTreeMap::new();
    for r in mock.mta.journal().delivered_recipients() {
        *at_relay.entry(r).or_default() += 1;
    }
    let repeats: u32 = at_relay.values().map(|n| n - 1).sum();
    let bound = in_flight_bound(W as usize, BSMTP as usize);
    eprintln!("a stop on a full disk: after the second run {} recipients at the relay, {repeats} repeated (bound {bound})", at_relay.len());
    assert_eq!(at_relay.len(), RCPTS, "nothing lost");
    assert!(
        repeats as usize <= stalled_at - recorded.min(stalled_at),
        "only what was delivered but not recorded is repeated: {repeats} repeats, {stalled_at} delivered, {recorded} recorded"
    );
    assert!(
        repeats as usize <= bound,
        "{repeats} repeats, in-flight bound {bound}"
    );
    let q = queue_json(&spool);
    assert_eq!((num(&q, "queued"), num(&q, "delivered")), (0, RCPTS as u64));
}

#[test]
fn a_failed_ledger_append_leaves_no_torn_line_and_its_retry_writes_each_line_once() {
    use smtpw::ledger::{Ledger, LedgerLineRef};
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
                    time: "2026-11-22T12:00:00Z",
                    job: 1,
                    copy: i as i64,
                    pool: "-",
                    rcpt: &rcpt,
                    outcome: LedgerOutcome::Delivered,
                    relay: Some("mx:25"),
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
    let (lines, per) = ledger_lines(&path);
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
    let err = smtpw::spool::submit(
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
    use smtpw::clock::SystemClock;
    use smtpw::spool::{SpoolOptions, SqliteSpool};
    let Some(disk) = Tmpfs::mount("ingest on a full disk", "4m") else {
        return;
    };
    let spool_dir = disk.path.join("spool");
    let spool =
        SqliteSpool::open(&spool_dir, SpoolOptions::default(), SystemClock::shared()).unwrap();
    let job = smtpw::spool::submit(
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
    use smtpw::clock::SystemClock;
    use smtpw::config::PoolSet;
    use smtpw::spool::{CopyResult, Outcome, RcptOutcome, SpoolOptions, SqliteSpool};
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
    smtpw::spool::submit(
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
    let res = CopyResult {
        relay: Some("mx:25".into()),
        rcpts: vec![RcptOutcome {
            outcome: Outcome::Delivered,
            reply: "250 ok".into(),
        }],
    };
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
    // Both copies are still queued for the next run.
    let spool = SqliteSpool::open(dir.path(), opts, SystemClock::shared())
        .unwrap_or_else(|e| panic!("reopening after a close with an outcome unrecorded: {e}"));
    assert_eq!(spool.queued_copies(), 2);
}
