//! `smtpw run` as a user runs it: exit statuses, SITE.CFG errors that start nothing, a spool
//! owned by another process, `--until-empty` on an empty spool, and a second signal that cuts
//! the drain short without losing a recipient.

use std::collections::HashMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use mock_mta::{Faults, MockConfig};
use smtpw_testkit::proc::{num, write_site_cfg, Kid, LoopbackMock, SilentRelay};
use smtpw_testkit::scripted;
use smtpw_testkit::workload::recipients;

use crate::SMTPW;

fn stderr_of(log: &std::path::Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

#[test]
fn a_bad_site_cfg_exits_2_with_located_errors_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A relay that must see no connection.
    let relay = TcpListener::bind("127.0.0.1:0").unwrap();
    relay.set_nonblocking(true).unwrap();
    let port = relay.local_addr().unwrap().port();
    let cfg = dir.path().join("SITE.CFG");
    std::fs::write(
        &cfg,
        format!("SMTP_FORWARD=127.0.0.1:{port}\nSMTP_FORWARD_1=2*\nMAXBSMTP=abc\n"),
    )
    .unwrap();
    let spool = dir.path().join("spool");
    let t = Instant::now();
    let out = SMTPW
        .command()
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .arg("--spool")
        .arg(&spool)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{err}");
    assert!(t.elapsed() < Duration::from_secs(10));
    let file = cfg.display().to_string();
    let located: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with(&format!("{file}:")) && l.contains(": error: "))
        .collect();
    assert_eq!(located.len(), 2, "one located error per bad line:\n{err}");
    assert!(
        located[0].starts_with(&format!("{file}:2:")),
        "{}",
        located[0]
    );
    assert!(
        located[1].starts_with(&format!("{file}:3:")) && located[1].contains("MAXBSMTP"),
        "{}",
        located[1]
    );
    // FILE:LINE:COLUMN: the column is a number.
    for l in &located {
        let rest = &l[file.len() + 1..];
        let mut parts = rest.splitn(3, ':');
        let line = parts.next().unwrap();
        let col = parts.next().unwrap();
        assert!(
            line.parse::<u32>().is_ok() && col.parse::<u32>().is_ok(),
            "FILE:LINE:COLUMN in {l}"
        );
    }
    assert!(!spool.exists(), "no spool was created");
    assert_eq!(
        relay.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "nothing connected to the relay"
    );

    // A missing SITE.CFG: also 2, with the file named.
    let out = SMTPW
        .command()
        .arg("run")
        .arg("--config")
        .arg(dir.path().join("NOPE.CFG"))
        .arg("--spool")
        .arg(&spool)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{err}");
    assert!(err.contains("NOPE.CFG"), "{err}");
    assert!(!spool.exists(), "no spool was created");
}

#[test]
fn a_spool_owned_by_another_run_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let mock = LoopbackMock::start(MockConfig::iis());
    let cfg = write_site_cfg(dir.path(), mock.port, 2, 50);
    let spool = dir.path().join("spool");
    let ledger = dir.path().join("ledger.jsonl");
    let log1 = dir.path().join("first.log");
    let mut first = Kid::spawn(
        SMTPW.run_cmd(&cfg, &spool, &ledger, false, &log1),
        "first run",
    );
    // Wait until the first run owns the spool (its database exists and its log says so).
    let end = Instant::now() + Duration::from_secs(20);
    while !stderr_of(&log1).contains("synchronous path") {
        assert!(
            Instant::now() < end,
            "first run did not start:\n{}",
            stderr_of(&log1)
        );
        assert!(
            first.child.try_wait().unwrap().is_none(),
            "{}",
            stderr_of(&log1)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let t = Instant::now();
    let out = SMTPW
        .command()
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .arg("--spool")
        .arg(&spool)
        .arg("--until-empty")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{err}");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(
        err.contains("is in use by another process") && err.contains("spool.lock"),
        "{err}"
    );
    // The owner is unaffected and still works: a job submitted now is delivered.
    assert!(first.child.try_wait().unwrap().is_none());
    let all = recipients(120);
    SMTPW.submit(dir.path(), &spool, &all);
    let end = Instant::now() + Duration::from_secs(30);
    while mock.mta.stats().recipients_accepted < 120 {
        assert!(Instant::now() < end, "not delivered:\n{}", stderr_of(&log1));
        std::thread::sleep(Duration::from_millis(10));
    }
    first.term();
    let st = first
        .wait_for(Duration::from_secs(10))
        .expect("stops on SIGTERM");
    assert_eq!(st.code(), Some(0));
    let q = SMTPW.queue_json(&spool);
    assert_eq!((num(&q, "queued"), num(&q, "delivered")), (0, 120), "{q}");
}

#[test]
fn until_empty_on_an_empty_spool_exits_0_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mock = LoopbackMock::start(MockConfig::iis());
    let cfg = write_site_cfg(dir.path(), mock.port, 2, 50);
    let spool = dir.path().join("spool");
    let log = dir.path().join("run.log");
    let mut kid = Kid::spawn(
        SMTPW.run_cmd(&cfg, &spool, &dir.path().join("l.jsonl"), true, &log),
        "run",
    );
    let st = kid
        .wait_for(Duration::from_secs(20))
        .expect("exits by itself");
    assert_eq!(st.code(), Some(0), "{}", stderr_of(&log));
    assert!(spool.join("spool.db").exists(), "the spool was created");
    assert!(
        stderr_of(&log).contains("queue empty"),
        "{}",
        stderr_of(&log)
    );
    let q = SMTPW.queue_json(&spool);
    assert_eq!((num(&q, "queued"), num(&q, "delivered")), (0, 0), "{q}");
}

#[test]
fn a_second_signal_stops_at_once_and_the_restart_loses_nothing() {
    const N: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    let mut mc = MockConfig::iis();
    // The relay takes 20 s to answer the end of data: a drain would take that long.
    mc.faults.command_latency_ms.insert("DOT".into(), 20_000);
    let mock = LoopbackMock::start(mc);
    let cfg = write_site_cfg(dir.path(), mock.port, 2, 50);
    let spool = dir.path().join("spool");
    let ledger = dir.path().join("ledger.jsonl");
    let log = dir.path().join("run.log");
    let all = recipients(N);
    SMTPW.submit(dir.path(), &spool, &all);
    let mut kid = Kid::spawn(SMTPW.run_cmd(&cfg, &spool, &ledger, false, &log), "run");
    // Wait until both workers are connected, then give them time to send their first dot.
    let end = Instant::now() + Duration::from_secs(20);
    while mock.mta.stats().current_connections < 2 {
        assert!(Instant::now() < end, "no sessions:\n{}", stderr_of(&log));
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    kid.term();
    // The first signal starts a drain that would last ~20 s...
    assert!(
        kid.wait_for(Duration::from_millis(500)).is_none(),
        "the first signal drains, it does not stop at once"
    );
    // ...the second stops at once.
    let t = Instant::now();
    kid.term();
    let st = kid
        .wait_for(Duration::from_secs(5))
        .expect("a second signal stops it at once");
    assert_eq!(st.code(), Some(130), "{}", stderr_of(&log));
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(
        stderr_of(&log).contains("second signal"),
        "{}",
        stderr_of(&log)
    );
    // Nothing was recorded as delivered; a restart against a quick relay delivers everyone.
    let q = SMTPW.queue_json(&spool);
    assert_eq!(num(&q, "queued"), N as u64, "{q}");
    mock.mta.set_faults(Faults::default());
    let mut kid = Kid::spawn(SMTPW.run_cmd(&cfg, &spool, &ledger, true, &log), "restart");
    let st = kid
        .wait_for(Duration::from_secs(60))
        .expect("the restart finishes");
    assert!(st.success(), "{}", stderr_of(&log));
    let q = SMTPW.queue_json(&spool);
    assert_eq!(
        (num(&q, "queued"), num(&q, "delivered"), num(&q, "failed")),
        (0, N as u64, 0),
        "{q}"
    );
    let mut got: HashMap<String, u32> = HashMap::new();
    for a in mock.mta.journal().delivered_recipients() {
        *got.entry(a).or_default() += 1;
    }
    assert!(all.iter().all(|r| got.contains_key(r)), "no recipient lost");
}

#[test]
fn sigterm_does_not_wait_for_a_relay_that_never_greets() {
    let dir = tempfile::tempdir().unwrap();
    let relay = SilentRelay::start();
    let cfg = write_site_cfg(dir.path(), relay.port, 2, 50);
    let spool = dir.path().join("spool");
    let ledger = dir.path().join("ledger.jsonl");
    let log = dir.path().join("run.log");
    let all = recipients(60);
    SMTPW.submit(dir.path(), &spool, &all);
    let mut kid = Kid::spawn(SMTPW.run_cmd(&cfg, &spool, &ledger, false, &log), "run");
    // Both workers are connected and waiting for a greeting (5 minutes by default).
    let end = Instant::now() + Duration::from_secs(20);
    while relay.accepted.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(Instant::now() < end, "no connection:\n{}", stderr_of(&log));
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    kid.term();
    let st = kid.wait_for(Duration::from_secs(5)).unwrap_or_else(|| {
        panic!(
            "smtpw run still waits for the greeting 5 s after SIGTERM:\n{}",
            stderr_of(&log)
        )
    });
    assert_eq!(st.code(), Some(0), "{}", stderr_of(&log));
    assert!(t.elapsed() < Duration::from_secs(5));
    // Nothing was sent, nothing is lost: every recipient is still queued.
    let q = SMTPW.queue_json(&spool);
    assert_eq!(
        (num(&q, "queued"), num(&q, "delivered"), num(&q, "failed")),
        (60, 0, 0),
        "{q}"
    );
}

#[test]
fn a_relay_slow_to_answer_quit_does_not_hold_up_the_stop() {
    let dir = tempfile::tempdir().unwrap();
    let mut mc = MockConfig::iis();
    mc.faults.command_latency_ms.insert("QUIT".into(), 30_000);
    let mock = LoopbackMock::start(mc);
    let cfg = write_site_cfg(dir.path(), mock.port, 2, 50);
    let spool = dir.path().join("spool");
    let ledger = dir.path().join("ledger.jsonl");
    let log = dir.path().join("run.log");
    let all = recipients(200);
    SMTPW.submit(dir.path(), &spool, &all);
    let t = Instant::now();
    let mut kid = Kid::spawn(SMTPW.run_cmd(&cfg, &spool, &ledger, true, &log), "run");
    let st = kid.wait_for(Duration::from_secs(20)).unwrap_or_else(|| {
        panic!(
            "smtpw run --until-empty still waits for 221 after 20 s:\n{}",
            stderr_of(&log)
        )
    });
    assert_eq!(st.code(), Some(0), "{}", stderr_of(&log));
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    let q = SMTPW.queue_json(&spool);
    assert_eq!((num(&q, "queued"), num(&q, "delivered")), (0, 200), "{q}");
}

#[test]
fn logs_to_a_file_carry_no_terminal_colours() {
    let dir = tempfile::tempdir().unwrap();
    let mock = LoopbackMock::start(MockConfig::iis());
    let cfg = write_site_cfg(dir.path(), mock.port, 1, 50);
    let spool = dir.path().join("spool");
    let log = dir.path().join("run.log");
    let mut kid = Kid::spawn(
        SMTPW.run_cmd(&cfg, &spool, &dir.path().join("l.jsonl"), true, &log),
        "run",
    );
    let st = kid.wait_for(Duration::from_secs(20)).expect("exits");
    assert!(st.success());
    let text = stderr_of(&log);
    assert!(text.contains("queue empty"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "escape codes in a log file:\n{text:?}"
    );
}

#[test]
fn sigterm_does_not_wait_for_the_rate_limit_before_a_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let mock = LoopbackMock::start(MockConfig::iis());
    // 8 kbps (1 KiB/s) and a 40 KB message: the first transaction waits ~40 s for the gate.
    let cfg = dir.path().join("SITE.CFG");
    std::fs::write(
        &cfg,
        format!(
            "SMTP_FORWARD=127.0.0.1:{p}\nSMTP_FORWARD_1=2*127.0.0.1:{p}\nMAXBSMTP=50\nSMTP_RATE_LIMIT=8kbps\n",
            p = mock.port
        ),
    )
    .unwrap();
    let spool = dir.path().join("spool");
    let ledger = dir.path().join("ledger.jsonl");
    let log = dir.path().join("run.log");
    let mut body = String::from("Subject: big\r\n\r\n");
    while body.len() < 40_000 {
        body.push_str(
            "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n",
        );
    }
    smtpw_engine::spool::submit(
        &spool,
        "owner@lists.example",
        None,
        recipients(100).into_iter(),
        body.as_bytes(),
    )
    .unwrap();
    let mut kid = Kid::spawn(SMTPW.run_cmd(&cfg, &spool, &ledger, false, &log), "run");
    let end = Instant::now() + Duration::from_secs(20);
    while mock.mta.stats().current_connections < 2 {
        assert!(Instant::now() < end, "no sessions:\n{}", stderr_of(&log));
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    kid.term();
    let st = kid.wait_for(Duration::from_secs(5)).unwrap_or_else(|| {
        panic!(
            "smtpw run still waits for the rate limit 5 s after SIGTERM:\n{}",
            stderr_of(&log)
        )
    });
    assert_eq!(st.code(), Some(0), "{}", stderr_of(&log));
    assert!(mock.wait_idle(Duration::from_secs(5)));
    let j = mock.mta.journal();
    // The first message goes through at once (the limiter runs into debt); the next one waits,
    // and the stop does not begin it.
    assert!(
        j.transactions().count() <= 1,
        "{:?}",
        j.transactions().count()
    );
    assert!(j.transactions().all(|t| t.accepted), "no transaction cut");
    assert!(j
        .sessions
        .iter()
        .all(|s| s.end_reason.as_deref() == Some("quit")));
    let q = SMTPW.queue_json(&spool);
    let delivered = mock.mta.stats().recipients_accepted;
    assert_eq!(
        (num(&q, "queued"), num(&q, "delivered")),
        (100 - delivered, delivered),
        "{q}"
    );
    assert!(num(&q, "queued") >= 50, "{q}");
}

#[test]
fn ctrl_c_drains_like_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut mc = MockConfig::iis();
    mc.faults.command_latency_ms.insert("DOT".into(), 400);
    let mock = LoopbackMock::start(mc);
    let cfg = write_site_cfg(dir.path(), mock.port, 2, 50);
    let spool = dir.path().join("spool");
    let ledger = dir.path().join("ledger.jsonl");
    let log = dir.path().join("run.log");
    SMTPW.submit(dir.path(), &spool, &recipients(1000));
    let mut kid = Kid::spawn(SMTPW.run_cmd(&cfg, &spool, &ledger, false, &log), "run");
    let end = Instant::now() + Duration::from_secs(20);
    while mock.mta.stats().messages < 2 {
        assert!(Instant::now() < end, "no delivery:\n{}", stderr_of(&log));
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    kid.signal("INT");
    let st = kid
        .wait_for(Duration::from_secs(5))
        .expect("stops on SIGINT");
    assert_eq!(st.code(), Some(0), "{}", stderr_of(&log));
    assert!(mock.wait_idle(Duration::from_secs(5)));
    let j = mock.mta.journal();
    assert!(j.transactions().all(|t| t.accepted), "no transaction cut");
    let q = SMTPW.queue_json(&spool);
    let delivered = mock.mta.stats().recipients_accepted;
    assert_eq!(num(&q, "delivered"), delivered, "{q}");
    assert_eq!(num(&q, "queued"), 1000 - delivered, "{q}");
}

#[test]
fn queue_works_while_a_starting_daemon_creates_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    SMTPW.submit(dir.path(), &spool, &recipients(10));
    // What `smtpw queue` can meet while `smtpw run` starts (or after it was killed then): the
    // database file exists, its tables do not yet.
    std::fs::write(spool.join("spool.db"), b"").unwrap();
    let q = SMTPW.queue_json(&spool);
    assert_eq!(
        (
            num(&q, "queued"),
            num(&q, "delivered"),
            num(&q, "incoming_files")
        ),
        (0, 0, 1),
        "{q}"
    );
}

/// A relay that takes the message and then never answers the final dot: SIGTERM waits for the
/// transactions in flight only until `--drain-timeout`, then their copies go back to the queue
/// and the process exits 0. A restart delivers every recipient exactly once.
#[test]
fn sigterm_with_a_relay_silent_after_the_dot_exits_at_the_drain_timeout() {
    const N: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let relay = scripted::TcpScripted::start(scripted::Mta {
        hang_at_end_of_data: true,
        ..scripted::Mta::pipelining()
    });
    let cfg = write_site_cfg(dir.path(), relay.port, 2, 50);
    let spool = dir.path().join("spool");
    let ledger = dir.path().join("ledger.jsonl");
    let log = dir.path().join("run.log");
    let all = recipients(N);
    SMTPW.submit(dir.path(), &spool, &all);
    let mut cmd = SMTPW.run_cmd(&cfg, &spool, &ledger, false, &log);
    cmd.args(["--drain-timeout", "1"]);
    let mut kid = Kid::spawn(cmd, "run");
    // Both workers have sent their copy and wait for the reply to the dot (10 min by default).
    let end = Instant::now() + Duration::from_secs(30);
    while relay.rec.lock().unwrap().hung_dots < 2 {
        assert!(Instant::now() < end, "no transaction:\n{}", stderr_of(&log));
        std::thread::sleep(Duration::from_millis(10));
    }
    let t = Instant::now();
    kid.term();
    let st = kid.wait_for(Duration::from_secs(3)).unwrap_or_else(|| {
        panic!(
            "smtpw run still drains 3 s after SIGTERM with --drain-timeout 1:\n{}",
            stderr_of(&log)
        )
    });
    let took = t.elapsed();
    assert_eq!(st.code(), Some(0), "{}", stderr_of(&log));
    assert!(took >= Duration::from_secs(1), "{took:?}");
    let text = stderr_of(&log);
    assert!(
        text.contains("2 copies in flight went back to the queue"),
        "{text}"
    );
    // Nothing recorded, nothing lost: both copies queued again.
    let q = SMTPW.queue_json(&spool);
    assert_eq!(
        (num(&q, "queued"), num(&q, "delivered"), num(&q, "failed")),
        (N as u64, 0, 0),
        "{q}"
    );
    *relay.mta.lock().unwrap() = scripted::Mta::pipelining();
    // (Not --until-empty: its emptiness check has a race of its own, issue 10 defect 2.)
    let mut kid = Kid::spawn(SMTPW.run_cmd(&cfg, &spool, &ledger, false, &log), "restart");
    let end = Instant::now() + Duration::from_secs(60);
    while num(&SMTPW.queue_json(&spool), "delivered") < N as u64 {
        assert!(Instant::now() < end, "restart:\n{}", stderr_of(&log));
        std::thread::sleep(Duration::from_millis(50));
    }
    kid.term();
    let st = kid
        .wait_for(Duration::from_secs(10))
        .expect("the restart stops");
    assert!(st.success(), "{}", stderr_of(&log));
    let q = SMTPW.queue_json(&spool);
    assert_eq!(
        (num(&q, "queued"), num(&q, "delivered")),
        (0, N as u64),
        "{q}"
    );
    let got = scripted::delivered_counts(&relay.rec);
    assert_eq!(got.len(), N);
    assert!(got.values().all(|&n| n == 1), "repeated: {got:?}");
}

/// Host-level failures count toward the lifetime: with `--lifetime-hours 0` and a relay port
/// nobody listens on, every recipient fails (expired) with the connection failure as its reason,
/// and `--until-empty` ends.
#[test]
fn an_unreachable_host_with_lifetime_zero_fails_every_recipient_and_until_empty_ends() {
    const N: usize = 120;
    let dir = tempfile::tempdir().unwrap();
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let cfg = write_site_cfg(dir.path(), port, 2, 50);
    let spool = dir.path().join("spool");
    let ledger = dir.path().join("ledger.jsonl");
    let log = dir.path().join("run.log");
    SMTPW.submit(dir.path(), &spool, &recipients(N));
    let mut cmd = SMTPW.run_cmd(&cfg, &spool, &ledger, true, &log);
    cmd.args(["--lifetime-hours", "0"]);
    let t = Instant::now();
    let mut kid = Kid::spawn(cmd, "run");
    let st = kid.wait_for(Duration::from_secs(60)).unwrap_or_else(|| {
        panic!(
            "--until-empty still runs after 60 s with every copy expired:\n{}",
            stderr_of(&log)
        )
    });
    assert_eq!(st.code(), Some(0), "{}", stderr_of(&log));
    let took = t.elapsed();
    let q = SMTPW.queue_json(&spool);
    assert_eq!(
        (num(&q, "queued"), num(&q, "delivered"), num(&q, "failed")),
        (0, 0, N as u64),
        "{q}"
    );
    let lines: Vec<_> = smtpw_engine::ledger::read_ledger(&ledger)
        .unwrap()
        .collect();
    assert_eq!(lines.len(), N, "one line per recipient");
    let want = format!("451 4.4.1 127.0.0.1:{port} unreachable: ");
    for l in &lines {
        assert_eq!(l.outcome, smtpw_engine::ledger::Outcome::Failed, "{l:?}");
        assert!(l.expired, "{l:?}");
        assert!(
            l.reply.starts_with(&want) && l.reply.to_lowercase().contains("refused"),
            "{}",
            l.reply
        );
    }
    assert!(took < Duration::from_secs(45), "{took:?}");
}

/// What the relay got with EHLO (or HELO), one per session.
fn ehlo_names(relay: &scripted::TcpScripted) -> Vec<String> {
    relay
        .rec
        .lock()
        .unwrap()
        .commands()
        .iter()
        .filter_map(|c| {
            c.strip_prefix("EHLO ")
                .or_else(|| c.strip_prefix("HELO "))
                .map(str::to_owned)
        })
        .collect()
}

/// The relay is greeted with NODE from SITE.CFG, or with `--helo-name` when given; never with
/// `localhost`.
#[test]
fn relays_are_greeted_with_node_or_the_helo_name_override() {
    for (extra, want) in [
        (None, "LISTSERV.EXAMPLE.ORG"),
        (Some("relay-client.example.com"), "relay-client.example.com"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let relay = scripted::TcpScripted::start(scripted::Mta::pipelining());
        // NODE=LISTSERV.EXAMPLE.ORG, two workers.
        let cfg = write_site_cfg(dir.path(), relay.port, 2, 50);
        let spool = dir.path().join("spool");
        let ledger = dir.path().join("ledger.jsonl");
        let log = dir.path().join("run.log");
        SMTPW.submit(dir.path(), &spool, &recipients(100));
        let mut cmd = SMTPW.run_cmd(&cfg, &spool, &ledger, false, &log);
        if let Some(name) = extra {
            cmd.args(["--helo-name", name]);
        }
        let mut kid = Kid::spawn(cmd, "run");
        let end = Instant::now() + Duration::from_secs(30);
        while scripted::delivered_counts(&relay.rec).len() < 100 {
            assert!(Instant::now() < end, "not delivered:\n{}", stderr_of(&log));
            std::thread::sleep(Duration::from_millis(10));
        }
        kid.term();
        let st = kid.wait_for(Duration::from_secs(10)).expect("stops");
        assert_eq!(st.code(), Some(0), "{}", stderr_of(&log));
        let names = ehlo_names(&relay);
        assert!(!names.is_empty());
        assert!(
            names.iter().all(|n| n == want),
            "EHLO {names:?}, expected {want}"
        );
        assert!(
            stderr_of(&log).contains(&format!("greeting relays with EHLO {want}")),
            "{}",
            stderr_of(&log)
        );
    }
}

/// An unusable `--helo-name` is refused before anything starts.
#[test]
fn an_invalid_helo_name_is_refused_at_start() {
    for (bad, why) in [
        ("bad name", "character ' ' at position 4 is not allowed"),
        (
            "lists.example.org\r\nRSET",
            "character '\\r' at position 18",
        ),
        ("-x.example", "starts or ends with a hyphen"),
        ("[300.1.1.1]", "not an address literal"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let relay = scripted::TcpScripted::start(scripted::Mta::pipelining());
        let cfg = write_site_cfg(dir.path(), relay.port, 2, 50);
        let spool = dir.path().join("spool");
        let out = SMTPW
            .command()
            .args(["run", "--until-empty", "--config"])
            .arg(&cfg)
            .arg("--spool")
            .arg(&spool)
            .arg(format!("--helo-name={bad}"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {err}");
        assert!(
            err.contains("--helo-name") && err.contains(why),
            "{bad:?}: {err}"
        );
        assert!(!spool.exists(), "nothing started");
        assert!(ehlo_names(&relay).is_empty());
    }
}

/// A bad smtpw.toml is refused before anything starts, with every error located and no secret
/// shown.
#[test]
fn a_bad_settings_file_exits_2_with_every_error_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let relay = scripted::TcpScripted::start(scripted::Mta::pipelining());
    let cfg = write_site_cfg(dir.path(), relay.port, 2, 50);
    let settings = dir.path().join("smtpw.toml");
    std::fs::write(
        &settings,
        "[relays.\"127.0.0.1\"]\ntls = \"none\"\nusername = \"lists\"\npassword = \"hunter2\"\n\
         [listen]\naddresses = [\"nowhere\"]\n",
    )
    .unwrap();
    let spool = dir.path().join("spool");
    let out = SMTPW
        .command()
        .args(["run", "--until-empty", "--config"])
        .arg(&cfg)
        .arg("--spool")
        .arg(&spool)
        .arg("--settings")
        .arg(&settings)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let file = settings.display().to_string();
    let located: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with(&format!("{file}:")) && l.contains(": error: "))
        .collect();
    assert_eq!(located.len(), 2, "{err}");
    assert!(located[0].contains("in clear"), "{err}");
    assert!(located[1].contains("ADDRESS:PORT"), "{err}");
    assert!(!err.contains("hunter2"), "no secret in errors: {err}");
    assert!(!spool.exists(), "nothing started");
    assert!(ehlo_names(&relay).is_empty());
}
