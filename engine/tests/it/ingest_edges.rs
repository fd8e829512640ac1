//! Ingest at its edges: a body line longer than SMTP allows, and odd entries in `incoming/`.

use std::time::Duration;

use jiff::civil::date;
use mock_mta::MockConfig;
use smtpw_testkit::logs::LogCapture;
use smtpw_testkit::topology::Topology;
use smtpw_testkit::workload::{job_text, odd_incoming, ODD_ENTRIES as ODD};

const CFG: &str = "NODE=LISTSERV.EXAMPLE.ORG\nSMTP_FORWARD=S.EXAMPLE.ORG\n";
const S: &str = "S.EXAMPLE.ORG:25";

fn keep_bodies() -> MockConfig {
    let mut m = MockConfig::iis();
    m.keep_bodies = true;
    m
}

#[tokio::test(start_paused = true)]
async fn a_two_million_byte_body_line_reaches_the_relay_folded() {
    let logs = LogCapture::default();
    let _g = logs.install();
    let h = Topology::new(
        CFG,
        date(2026, 11, 22).at(12, 0, 0, 0),
        &[(S, keep_bodies())],
    );
    let mut body = String::from("Subject: long line\r\n\r\n");
    body.push_str(&"y".repeat(2_000_000));
    body.push_str("\r\nshort\r\n");
    smtpw_engine::spool::submit(
        &h.spool_dir(),
        "o@l.example",
        None,
        ["a@x.example".to_string()].into_iter(),
        body.as_bytes(),
    )
    .unwrap();
    let s = h.run_until_empty(Duration::from_secs(600)).await;
    assert_eq!(s.delivered, 1, "{s:?}");
    let j = h.mock(S).journal();
    let t = &j.accepted_transactions()[0];
    let got = t.body.as_deref().expect("kept body");
    let longest = got.split("\r\n").map(str::len).max().unwrap_or(0);
    assert!(
        longest <= 998,
        "the relay got a line of {longest} bytes (RFC 5321: 1000 with CRLF)"
    );
    assert_eq!(
        got.replace("\r\n ", ""),
        body,
        "unfolding gives the message back"
    );
    assert_eq!(t.bytes as usize, got.len());
    let log = logs.text();
    assert!(
        log.contains("folded") && log.contains("folded_lines=1"),
        "one warning for the job, with its count: {log}"
    );
}

fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn odd_entries_are_quarantined_with_a_reason_and_links_to_jobs_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let target = odd_incoming(&spool_dir);
    let spool = smtpw_engine::spool::SqliteSpool::open(
        &spool_dir,
        smtpw_engine::spool::SpoolOptions::default(),
        smtpw_engine::clock::SystemClock::shared(),
    )
    .unwrap();
    // The pass must not block on the FIFO: it runs on a thread with a deadline.
    let (tx, rx) = std::sync::mpsc::channel();
    let s = spool.clone();
    std::thread::spawn(move || tx.send(s.ingest_blocking()).unwrap());
    let rep = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the ingest pass ended (it must never open a FIFO)")
        .unwrap();
    assert_eq!((rep.jobs, rep.recipients), (2, 5), "{rep:?}");
    assert!(target.exists(), "the link's target is left alone");
    assert_eq!(names_in(&spool_dir.join("incoming")), Vec::<String>::new());
    let q = names_in(&spool_dir.join("quarantine"));
    for name in ODD {
        assert!(
            q.contains(&name.to_string()),
            "{name} not in quarantine: {q:?}"
        );
        let reason =
            std::fs::read_to_string(spool_dir.join("quarantine").join(format!("{name}.reason")))
                .unwrap_or_else(|e| panic!("{name}.reason: {e}"));
        assert!(
            reason.starts_with(&format!("incoming/{name}: ")),
            "{reason}"
        );
    }
    let reason = |n: &str| {
        std::fs::read_to_string(spool_dir.join("quarantine").join(format!("{n}.reason"))).unwrap()
    };
    assert!(
        reason("dir.MAIL").contains("a directory"),
        "{}",
        reason("dir.MAIL")
    );
    assert!(reason("fifo.MAIL").contains("a FIFO"));
    assert!(reason("sock.MAIL").contains("a socket"));
    assert!(reason("dangling.MAIL").contains("a symbolic link to nothing"));
    assert!(reason("loop.MAIL").contains("a loop of symbolic links"));
    assert!(reason("device.MAIL").contains("a device"));
    assert!(reason("twice.MAIL").contains("another job in incoming"));
    assert_eq!(rep.quarantined.len(), ODD.len(), "{rep:?}");
}

#[tokio::test(start_paused = true)]
async fn until_empty_ends_once_odd_entries_are_set_aside() {
    let h = Topology::new(
        CFG,
        date(2026, 11, 22).at(12, 0, 0, 0),
        &[(S, MockConfig::iis())],
    );
    odd_incoming(&h.spool_dir());
    let s = h.run_until_empty(Duration::from_secs(60)).await;
    assert_eq!(s.delivered, 5, "{s:?}");
    assert_eq!(
        names_in(&h.spool_dir().join("incoming")),
        Vec::<String>::new()
    );
}

/// An entry that can be neither used nor moved is reported once, then looked at again after 1
/// minute, 2 more, 4 more...; it is taken at the first look after it can be.
#[test]
fn an_entry_that_cannot_be_moved_is_looked_at_again_with_back_off() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let (clock_handle, clock) =
        smtpw_engine::clock::VirtualClock::at_utc(date(2026, 11, 22).at(12, 0, 0, 0)).shared();
    let t0 = clock.now();
    let spool = smtpw_engine::spool::SqliteSpool::open(
        &spool_dir,
        smtpw_engine::spool::SpoolOptions::default(),
        clock.clone(),
    )
    .unwrap();
    let inc = spool_dir.join("incoming");
    let q = spool_dir.join("quarantine");
    // Nothing can be moved to quarantine: it is a file, not a folder.
    std::fs::remove_dir(&q).unwrap();
    std::fs::write(&q, "in the way").unwrap();
    symlink("nowhere.txt", inc.join("dangling.MAIL")).unwrap();
    symlink("later.txt", inc.join("later.MAIL")).unwrap();
    let pass = |secs: i64| {
        clock_handle.set(t0 + jiff::SignedDuration::from_secs(secs));
        spool.ingest_blocking().unwrap()
    };
    let names =
        |v: &[smtpw_engine::spool::SetAside]| v.iter().map(|s| s.name.clone()).collect::<Vec<_>>();

    let r = pass(0);
    assert_eq!(
        names(&r.set_aside),
        ["dangling.MAIL", "later.MAIL"],
        "{r:?}"
    );
    assert_eq!(names(&r.stuck), ["dangling.MAIL", "later.MAIL"]);
    assert!(r.set_aside[0].reason.starts_with(
        "a symbolic link to nothing (its target does not exist); it cannot be moved to quarantine either: "
    ), "{:?}", r.set_aside[0]);
    let r = pass(1);
    assert!(r.set_aside.is_empty(), "reported once: {r:?}");
    assert_eq!(r.stuck.len(), 2);

    // `later.MAIL` becomes a job: a changed entry is looked at at once, and read.
    std::fs::write(
        inc.parent().unwrap().join("incoming/later.txt"),
        job_text(2, "later.example"),
    )
    .unwrap();
    let r = pass(2);
    assert_eq!((r.jobs, r.recipients), (1, 2), "{r:?}");
    assert_eq!(r.resumed, ["later.MAIL"]);

    // dangling.MAIL: looked at again after 60 s (at 61 s: fails, so 2 min more), then after
    // 181 s. (A second past each due time: the virtual wall clock also moves with real time.)
    let r = pass(61);
    assert_eq!(names(&r.stuck), ["dangling.MAIL"]);
    assert!(r.set_aside.is_empty());
    std::fs::remove_file(&q).unwrap(); // quarantine can be made now
    let r = pass(121);
    assert_eq!(
        names(&r.stuck),
        ["dangling.MAIL"],
        "still waiting for its look at 181 s: {r:?}"
    );
    assert!(inc.join("dangling.MAIL").symlink_metadata().is_ok());
    let r = pass(182);
    assert!(r.stuck.is_empty(), "{r:?}");
    assert_eq!(r.resumed, ["dangling.MAIL"]);
    assert_eq!(r.quarantined.len(), 1);
    assert!(q.join("dangling.MAIL").symlink_metadata().is_ok());
    assert!(q.join("dangling.MAIL.reason").exists());
}

/// An ingest pass that keeps failing is one error when it starts, one every 10 minutes while
/// it lasts, and one line when it works again: not a warning every 200 ms.
#[tokio::test(start_paused = true)]
async fn a_failing_ingest_is_logged_once_per_condition() {
    let logs = LogCapture::default();
    let _g = logs.install();
    let h = Topology::new(
        CFG,
        date(2026, 11, 22).at(12, 0, 0, 0),
        &[(S, MockConfig::iis())],
    );
    let inc = h.spool_dir().join("incoming");
    std::fs::remove_dir(&inc).unwrap();
    std::fs::write(&inc, "not a folder").unwrap();
    let (engine, run) = h.spawn(smtpw_engine::engine::EngineOptions::default());
    tokio::time::sleep(Duration::from_secs(25 * 60)).await;
    std::fs::remove_file(&inc).unwrap();
    std::fs::create_dir(&inc).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    engine.shutdown().cancel();
    run.await.unwrap();
    let log = logs.text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("ingest")).collect();
    assert_eq!(lines.len(), 4, "{}", lines.join("\n"));
    assert!(
        lines[0].contains("ERROR")
            && lines[0].contains("ingest failed")
            && lines[0].contains("Not a directory"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("ingest still failing") && lines[1].contains("failing_for_secs=600"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].contains("ingest still failing") && lines[2].contains("failing_for_secs=1200"),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].contains("INFO") && lines[3].contains("ingest works again"),
        "{}",
        lines[3]
    );
}
