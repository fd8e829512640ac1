//! A full disk under the real `smtpw run`: the spool (and its ledger) on a small tmpfs (root
//! only; skipped with a notice otherwise) that fills up while it delivers. `--until-empty` must
//! not exit 0 while outcomes are unrecorded and must finish with each recipient delivered once;
//! a stop while outcomes wait ends at the drain deadline and the next run repeats only what was
//! not recorded. (The in-process cases are the engine's `spool_full` tests.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mock_mta::MockConfig;
use smtpw_engine::clock::SystemClock;
use smtpw_engine::spool::{SpoolOptions, SqliteSpool};
use smtpw_testkit::ledger::delivered_lines;
use smtpw_testkit::proc::{num, repeat_bound_per_crash, settle, write_site_cfg, Kid, LoopbackMock};
use smtpw_testkit::tmpfs::{Filler, Tmpfs};
use smtpw_testkit::workload::recipients;

use crate::SMTPW;

const RCPTS: usize = 3000;
const W: u32 = 3;
const BSMTP: u32 = 20;

/// A site whose whole spool is on a small tmpfs, `RCPTS` recipients ingested (before the disk
/// fills: ingest on a full disk is another matter), then the disk full but for a little room:
/// enough to start (SQLite's shared-memory file) and record the first few outcomes. `None` (the
/// test is skipped) without the right to mount.
struct FullDisk {
    mock: LoopbackMock,
    cfg: PathBuf,
    spool: PathBuf,
    ledger: PathBuf,
    log: PathBuf,
    filler: Filler,
    // Last: dropped after everything on the disk.
    _work: tempfile::TempDir,
    _disk: Tmpfs,
}

fn full_disk(test: &str) -> Option<FullDisk> {
    let disk = Tmpfs::mount(test, "8m")?;
    let work = tempfile::tempdir().unwrap();
    let mock = LoopbackMock::start(MockConfig::iis());
    let cfg = write_site_cfg(work.path(), mock.port, W, BSMTP);
    let spool = disk.path.join("spool");
    let ledger = spool.join("ledger.jsonl");
    let log = work.path().join("smtpw.log");
    SMTPW.submit(work.path(), &spool, &recipients(RCPTS));
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
    Some(FullDisk {
        _disk: disk,
        _work: work,
        mock,
        cfg,
        spool,
        ledger,
        log,
        filler,
    })
}

/// Waits (30 s at most) until the log of the running `kid` says that delivery is paused.
fn wait_until_paused(kid: &mut Kid, log: &Path, relay: &impl Fn() -> usize) {
    let end = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains("delivery is paused")
    {
        assert!(
            kid.child.try_wait().unwrap().is_none() && Instant::now() < end,
            "no 'delivery is paused' within 30 s; the relay has {}; log:\n{}",
            relay(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn smtpw_run_until_empty_waits_out_a_full_disk_and_delivers_each_recipient_once() {
    let Some(fd) = full_disk("smtpw run on a full disk") else {
        return;
    };
    let (mock, cfg, spool, ledger, log) = (&fd.mock, &fd.cfg, &fd.spool, &fd.ledger, &fd.log);
    let filler = &fd.filler;

    let mut kid = Kid::spawn(SMTPW.run_cmd(cfg, spool, ledger, true, log), "smtpw run");
    let relay = || mock.mta.journal().delivered_recipients().len();
    wait_until_paused(&mut kid, log, &relay);
    let stalled_at = settle(Duration::from_secs(30), Duration::from_millis(1500), relay);
    let (ledgered, _) = delivered_lines(ledger);
    // Recorded: in the database (the ledger may also hold the lines of a batch whose database
    // commit is the part that failed).
    let recorded = num(&SMTPW.queue_json(spool), "delivered") as usize;
    let bound = repeat_bound_per_crash(W, BSMTP) as usize;
    let text = std::fs::read_to_string(log).unwrap();
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

    std::fs::remove_file(filler).unwrap();
    let status = kid.wait_for(Duration::from_secs(90)).unwrap_or_else(|| {
        panic!(
            "smtpw run did not finish 90 s after space returned; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        )
    });
    let text = std::fs::read_to_string(log).unwrap();
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
    let (lines, per) = delivered_lines(ledger);
    assert_eq!((lines, per.len()), (RCPTS, RCPTS), "one ledger line each");
    let q = SMTPW.queue_json(spool);
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
    let Some(fd) = full_disk("a stop on a full disk") else {
        return;
    };
    let (mock, cfg, spool, ledger, log) = (&fd.mock, &fd.cfg, &fd.spool, &fd.ledger, &fd.log);
    let filler = &fd.filler;

    let mut cmd = SMTPW.run_cmd(cfg, spool, ledger, false, log);
    cmd.args(["--drain-timeout", "1"]);
    let mut kid = Kid::spawn(cmd, "smtpw run");
    let relay = || mock.mta.journal().delivered_recipients().len();
    wait_until_paused(&mut kid, log, &relay);
    let stalled_at = settle(Duration::from_secs(30), Duration::from_millis(1500), relay);
    let stop = Instant::now();
    kid.term();
    let status = kid.wait_for(Duration::from_secs(20)).unwrap_or_else(|| {
        panic!(
            "smtpw run did not stop within 20 s of SIGTERM on a full disk (drain deadline 1 s); log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        )
    });
    let took = stop.elapsed();
    let text = std::fs::read_to_string(log).unwrap();
    assert_eq!(
        status.code(),
        Some(4),
        "exit status 4: outcomes given up; log:\n{text}"
    );
    assert!(
        text.contains("not recorded"),
        "the reason is printed; log:\n{text}"
    );
    let recorded = num(&SMTPW.queue_json(spool), "delivered") as usize;
    eprintln!(
        "a stop on a full disk: the relay had {stalled_at} of {RCPTS}, the spool recorded {recorded}; \
         stopped in {took:.2?} with --drain-timeout 1"
    );

    // Space returns; the next run delivers the rest, repeating only what was not recorded.
    std::fs::remove_file(filler).unwrap();
    let mut kid = Kid::spawn(
        SMTPW.run_cmd(cfg, spool, ledger, true, log),
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
    let bound = repeat_bound_per_crash(W, BSMTP) as usize;
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
    let q = SMTPW.queue_json(spool);
    assert_eq!((num(&q, "queued"), num(&q, "delivered")), (0, RCPTS as u64));
}
