//! Nothing lost (QUEUE-1), with the binaries users run: `smtpw run` delivering a large job to
//! a mock-mta on loopback is killed with SIGKILL at pseudo-random moments a dozen times, then a
//! last run finishes; the mock's journal, the ledger and `smtpw queue --json` must show every
//! recipient delivered, the database counting each once, and duplicates at the relay bounded by
//! the transactions in flight at each kill. SIGTERM instead drains the transactions in flight and
//! exits 0; a restart delivers the rest, with no recipient lost or repeated.
//!
//! `cargo test -p smtpw --test it engine_crash:: -- --nocapture` prints the figures.

use std::time::{Duration, Instant};

use mock_mta::{Faults, MockConfig};
use smtpw_testkit::ledger::ledgered;
use smtpw_testkit::proc::{
    in_flight_copies, num, received, repeat_bound_per_crash, write_site_cfg, Kid, LoopbackMock,
    SilentRelay,
};
use smtpw_testkit::workload::{recipients, Lcg};

use crate::SMTPW;

const N: usize = 40_000;
const WORKERS: u32 = 4;
const MAX_BSMTP: u32 = 80;
const KILLS: usize = 12;
const DOT_LATENCY_MS: u64 = 30;

#[test]
fn sigkill_at_random_points_loses_no_recipient() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut mc = MockConfig::iis();
    // The reply after the dot waits a little (a relay queueing the message), so the delivery
    // spans the dozen kills and transactions are in flight at each.
    mc.faults
        .command_latency_ms
        .insert("DOT".into(), DOT_LATENCY_MS);
    let mock = LoopbackMock::start(mc);
    let cfg = write_site_cfg(dir.path(), mock.port, WORKERS, MAX_BSMTP);
    let spool = dir.path().join("spool");
    let ledger = dir.path().join("ledger.jsonl");
    let log = dir.path().join("smtpw.log");
    let all = recipients(N);
    SMTPW.submit(dir.path(), &spool, &all);

    let mut rng = Lcg(0x5eed_c0de);
    let mut killed = 0usize;
    // Per run: (ms before the kill, recipients the DB counted delivered, recipients the mock accepted).
    let mut runs: Vec<(u64, u64, u64)> = Vec::new();
    // In flight per worker: the copy being delivered plus those whose outcomes are being made
    // durable (a worker claims its next copy while the previous completions sync).
    let in_flight = in_flight_copies(WORKERS);
    let per_kill = repeat_bound_per_crash(WORKERS, MAX_BSMTP);
    // A run killed before it delivered anything (a slow start on a loaded machine) makes the
    // next one a little longer, so the kills still fall during delivery.
    let mut stalled = 0u64;
    for i in 0..KILLS {
        let delay = rng.between(50, 400) + 150 * stalled;
        let killed_before = killed as u64;
        let mut kid = Kid::spawn(
            SMTPW.run_cmd(&cfg, &spool, &ledger, true, &log),
            "smtpw run",
        );
        if kid.wait_for(Duration::from_millis(delay)).is_none() && kid.kill() {
            killed += 1;
        }
        let q = SMTPW.queue_json(&spool);
        let stats = mock.mta.stats();
        if runs.last().map_or(0, |r| r.2) == stats.recipients_accepted {
            stalled += 1;
        } else {
            stalled = 0;
        }
        runs.push((delay, num(&q, "delivered"), stats.recipients_accepted));
        // Each repeat at the relay comes from a copy in flight at an earlier kill: the bound
        // holds run by run, not only at the end.
        let dups = received(&mock)
            .values()
            .map(|n| u64::from(n - 1))
            .sum::<u64>();
        assert!(
            dups <= killed_before * per_kill,
            "after run {}: {dups} repeats > {killed_before} kills x {per_kill}",
            i + 1
        );
    }
    // The last run, to completion.
    let t_last = Instant::now();
    let mut kid = Kid::spawn(
        SMTPW.run_cmd(&cfg, &spool, &ledger, true, &log),
        "smtpw run",
    );
    let status = kid.wait_for(Duration::from_secs(90)).unwrap_or_else(|| {
        panic!(
            "the last run did not finish in 90 s; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    assert!(
        status.success(),
        "the last run exits 0: {status}; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let last_run = t_last.elapsed();
    assert!(
        mock.wait_idle(Duration::from_secs(10)),
        "the mock's sessions end"
    );

    // The database: every recipient delivered, counted once.
    let q = SMTPW.queue_json(&spool);
    assert_eq!(
        (num(&q, "queued"), num(&q, "delivered"), num(&q, "failed")),
        (0, N as u64, 0),
        "smtpw queue --json after the last run: {q}"
    );
    // The relay's view: every recipient received, nothing it was not sent.
    let got = received(&mock);
    let lost = all.iter().filter(|r| !got.contains_key(*r)).count();
    let unknown = got.len() + lost - all.len();
    let duplicated: u64 = got.values().map(|n| u64::from(n - 1)).sum();
    let cut = mock
        .mta
        .journal()
        .transactions()
        .filter(|t| !t.accepted)
        .count();
    // The ledger: a delivered line for every recipient, repeats only where the relay got repeats.
    let led = ledgered(&ledger);
    let missing_in_ledger = all.iter().filter(|r| !led.contains_key(*r)).count();
    let ledger_dups: u64 = led.values().map(|n| u64::from(n - 1)).sum();
    let ledger_beyond_relay = led
        .iter()
        .filter(|(r, n)| got.get(*r).copied().unwrap_or(0) < **n)
        .count();
    let bound = killed as u64 * per_kill;
    eprintln!(
        "crash test: {} runs ({killed} SIGKILLed mid-way, then 1 to completion in {:.1} s), \
         {N} recipients, lost {lost}, duplicated at the relay {duplicated}, ledger repeats \
         {ledger_dups}, bound {bound} ({in_flight} copies in flight x MAXBSMTP {MAX_BSMTP} = \
         {per_kill} per kill), transactions cut by kills {cut}, total {:.1} s",
        KILLS + 1,
        last_run.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    for (i, (d, db, relay)) in runs.iter().enumerate() {
        eprintln!(
            "  run {:2}: killed after {d:3} ms; delivered so far: database {db:5}, relay {relay:5}",
            i + 1
        );
    }
    assert_eq!(lost, 0, "no recipient lost");
    assert_eq!(unknown, 0, "the relay got only submitted addresses");
    assert_eq!(missing_in_ledger, 0, "a ledger line for every recipient");
    assert_eq!(
        ledger_beyond_relay, 0,
        "the ledger repeats only relay repeats"
    );
    assert!(
        duplicated <= bound,
        "{duplicated} duplicates > {bound} (transactions in flight at the kills)"
    );
    assert!(
        killed >= KILLS - 2,
        "most runs were killed mid-way ({killed} of {KILLS})"
    );
    // The kills fell during delivery, not only before or after it.
    let mid = runs
        .iter()
        .filter(|(_, db, _)| *db > 0 && *db < N as u64)
        .count();
    assert!(mid >= KILLS / 2, "kills during delivery: {mid}; {runs:?}");
}

#[test]
fn sigterm_drains_in_flight_transactions_and_a_restart_finishes() {
    const N: usize = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let mut mc = MockConfig::iis();
    // Each end of data waits 300 ms, so at any moment several transactions are in flight.
    mc.faults.command_latency_ms.insert("DOT".into(), 300);
    let mock = LoopbackMock::start(mc);
    let cfg = write_site_cfg(dir.path(), mock.port, WORKERS, 50);
    let spool = dir.path().join("spool");
    let ledger = dir.path().join("ledger.jsonl");
    let log = dir.path().join("smtpw.log");
    let all = recipients(N);
    SMTPW.submit(dir.path(), &spool, &all);

    let mut kid = Kid::spawn(
        SMTPW.run_cmd(&cfg, &spool, &ledger, false, &log),
        "smtpw run",
    );
    let end = Instant::now() + Duration::from_secs(30);
    while mock.mta.stats().messages < 4 {
        assert!(Instant::now() < end, "no delivery within 30 s");
        assert!(kid.child.try_wait().unwrap().is_none(), "smtpw run exited");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Let the workers get into their next transactions, then ask for a stop.
    std::thread::sleep(Duration::from_millis(100));
    let at_term = mock.mta.stats();
    let t = Instant::now();
    kid.term();
    let status = kid
        .wait_for(Duration::from_secs(5))
        .expect("smtpw run stops within 5 s of SIGTERM");
    let stop_time = t.elapsed();
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    assert!(
        mock.wait_idle(Duration::from_secs(5)),
        "the mock's sessions end"
    );
    let after = mock.mta.stats();
    let j = mock.mta.journal();
    // No transaction was cut: every one that began ended with the reply after the dot (250).
    for t in j.transactions() {
        assert!(
            t.data_started_at.is_some() && t.data_reply.is_some() && t.accepted,
            "transaction cut mid-way: {t:?}"
        );
    }
    // Every session ended with QUIT, none with the connection dropped.
    for s in &j.sessions {
        assert_eq!(
            s.end_reason.as_deref(),
            Some("quit"),
            "session {} ended {:?}",
            s.id,
            s.end_reason
        );
    }
    // The transactions in flight at SIGTERM finished (they were drained, not dropped).
    assert!(
        after.messages > at_term.messages,
        "transactions in flight at SIGTERM completed: {} at SIGTERM, {} at exit",
        at_term.messages,
        after.messages
    );
    // The database knows exactly what the relay accepted.
    let q = SMTPW.queue_json(&spool);
    let delivered_first = num(&q, "delivered");
    assert_eq!(delivered_first, after.recipients_accepted, "{q}");
    assert_eq!(num(&q, "queued"), N as u64 - delivered_first, "{q}");
    assert!(num(&q, "queued") > 0, "SIGTERM came before the end: {q}");
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        log_text.contains("signal received"),
        "the log says why it stops:\n{log_text}"
    );

    // A restart (no latency now) delivers the rest.
    mock.mta.set_faults(Faults::default());
    let mut kid = Kid::spawn(
        SMTPW.run_cmd(&cfg, &spool, &ledger, true, &log),
        "smtpw run",
    );
    let status = kid
        .wait_for(Duration::from_secs(60))
        .expect("the restart finishes within 60 s");
    assert!(status.success(), "{status}");
    let q = SMTPW.queue_json(&spool);
    assert_eq!(
        (num(&q, "queued"), num(&q, "delivered"), num(&q, "failed")),
        (0, N as u64, 0),
        "{q}"
    );
    let got = received(&mock);
    assert_eq!(got.len(), N, "every recipient received");
    assert!(
        all.iter().all(|r| got.get(r) == Some(&1)),
        "each recipient exactly once"
    );
    let led = ledgered(&ledger);
    assert_eq!(led.len(), N);
    assert!(led.values().all(|n| *n == 1), "one ledger line each");
    eprintln!(
        "sigterm test: {N} recipients, {} delivered before SIGTERM ({} messages at SIGTERM, {} \
         at exit), stopped in {} ms, the rest after the restart; lost 0, duplicated 0",
        delivered_first,
        at_term.messages,
        after.messages,
        stop_time.as_millis()
    );
}

#[test]
fn sigkill_during_ingest_neither_loses_nor_doubles_a_job() {
    const JOBS: usize = 8;
    const PER_JOB: usize = 50_000;
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // Workers that never get a greeting: nothing is delivered, the database shows what ingest did.
    let relay = SilentRelay::start();
    let cfg = write_site_cfg(dir.path(), relay.port, 2, 100);
    let spool = dir.path().join("spool");
    let ledger = dir.path().join("ledger.jsonl");
    let log = dir.path().join("smtpw.log");
    for j in 0..JOBS {
        let rcpts: Vec<String> = (0..PER_JOB)
            .map(|i| format!("j{j}r{i}@d{}.example", i % 89))
            .collect();
        SMTPW.submit(dir.path(), &spool, &rcpts);
    }
    let total = (JOBS * PER_JOB) as u64;
    let mut rng = Lcg(0x1e57_1a11);
    // Per kill: (ms, recipients in the database, files still in incoming/).
    let mut kills: Vec<(u64, u64, u64)> = Vec::new();
    // Kills that leave the database as it was make the next wait longer, so that a slow
    // machine still gets past each batch commit.
    let mut stalled = 0u64;
    for k in 0..20 {
        let mut kid = Kid::spawn(
            SMTPW.run_cmd(&cfg, &spool, &ledger, false, &log),
            "smtpw run",
        );
        let delay = if k % 2 == 1 {
            // At a pseudo-random moment (every other run)...
            let delay = rng.between(30, 600) + 200 * stalled;
            assert!(
                kid.wait_for(Duration::from_millis(delay)).is_none(),
                "smtpw run exited:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            delay
        } else {
            // ...or (first) as soon as a batch commit shows in the database: the moment between
            // the commit and the removal of its files.
            let t = Instant::now();
            let before = kills.last().map_or(0, |k| k.1);
            while num(&SMTPW.queue_json(&spool), "queued") == before
                && t.elapsed() < Duration::from_secs(10)
            {
                assert!(kid.child.try_wait().unwrap().is_none(), "smtpw run exited");
            }
            t.elapsed().as_millis() as u64
        };
        kid.kill();
        let q = SMTPW.queue_json(&spool);
        let (queued, files) = (num(&q, "queued"), num(&q, "incoming_files"));
        if kills
            .last()
            .is_some_and(|(_, q, f)| (*q, *f) == (queued, files))
            || (queued, files) == (0, JOBS as u64)
        {
            stalled += 1;
        } else {
            stalled = 0;
        }
        kills.push((delay, queued, files));
        // Whole jobs only, never more than were submitted.
        assert_eq!(queued % PER_JOB as u64, 0, "a job half-ingested: {q}");
        assert!(queued <= total, "{q}");
        assert!(
            queued + files * PER_JOB as u64 >= total,
            "a job lost: {queued} queued, {files} files left; {q}"
        );
        if files == 0 {
            break;
        }
    }
    // A last run ingests whatever is left; then everything is queued exactly once.
    let started = |text: &str| text.matches("synchronous path").count();
    let before = started(&std::fs::read_to_string(&log).unwrap_or_default());
    let mut kid = Kid::spawn(
        SMTPW.run_cmd(&cfg, &spool, &ledger, false, &log),
        "smtpw run",
    );
    let end = Instant::now() + Duration::from_secs(60);
    let q = loop {
        let q = SMTPW.queue_json(&spool);
        let up = started(&std::fs::read_to_string(&log).unwrap_or_default()) > before;
        if up && num(&q, "incoming_files") == 0 && num(&q, "queued") == total {
            break q;
        }
        assert!(
            Instant::now() < end,
            "not all ingested in 60 s: {q}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    kid.term();
    assert_eq!(
        kid.wait_for(Duration::from_secs(10)).and_then(|s| s.code()),
        Some(0)
    );
    let q2 = SMTPW.queue_json(&spool);
    assert_eq!(num(&q2, "queued"), total, "{q2}");
    assert_eq!(num(&q2, "jobs"), JOBS as u64, "{q2}");
    assert_eq!(num(&q2, "delivered") + num(&q2, "failed"), 0, "{q2}");
    let mid = kills
        .iter()
        .filter(|(_, queued, files)| *files > 0 && (*queued > 0 || *files < JOBS as u64))
        .count();
    eprintln!(
        "ingest crash test: {JOBS} jobs x {PER_JOB} recipients, {} kills ({mid} between the first \
         and the last commit), then all {total} queued once ({q}); {:.1} s",
        kills.len(),
        t0.elapsed().as_secs_f64()
    );
    for (d, queued, files) in &kills {
        eprintln!("  killed after {d:3} ms: {queued:6} recipients queued, {files} files left");
    }
    assert!(mid >= 1, "a kill fell inside the ingest: {kills:?}");
}
