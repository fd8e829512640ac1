//! Damaged spools: a spool with queued recipients and a ledger is damaged on disk (the database
//! truncated to zero, the WAL's header overwritten after a SIGKILL, a page of the database
//! overwritten). `smtpw run` must refuse to start: a non-zero exit, a message naming the file and
//! how to recover, and not a byte to the relay; never "queue empty" over recipients that
//! vanished.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use mock_mta::MockConfig;

use smtpw_testkit::ledger::scan_ledger;
use smtpw_testkit::proc::{num, serial, wait_until, LoopbackMock, SilentRelay};
use smtpw_testkit::site::{verdict, Site};
use smtpw_testkit::workload::recipients;

use crate::SMTPW;

/// Queued recipients the damaged spool held.
const QUEUED: usize = 1_000;
/// Delivered before the damage (so the ledger shows a past).
const DELIVERED: usize = 100;

/// A spool that delivered `DELIVERED` recipients (ledger lines) and holds `queued` more, left by
/// a run stopped with SIGTERM (`kill_instead`: SIGKILL, leaving the WAL in place).
fn spool_with_a_past(site: &mut Site, queued: usize, kill_instead: bool) {
    let mock = LoopbackMock::start(MockConfig::iis());
    site.point_at(mock.port, 2, 50);
    let first: Vec<String> = (0..DELIVERED)
        .map(|i| format!("past{i}@d.example"))
        .collect();
    site.submit(&first);
    let mut kid = site.run(true, &[]);
    let st = kid
        .wait_for(Duration::from_secs(30))
        .expect("the first run ends");
    assert!(st.success(), "first run: {st}\n{}", site.log_text());
    assert_eq!(num(&site.queue(), "delivered"), DELIVERED as u64);
    // The rest stays queued: the workers' relay never answers.
    let relay = SilentRelay::start();
    site.point_at(relay.port, 2, 50);
    site.submit(&recipients(queued));
    let mut kid = site.run(false, &[]);
    assert!(
        wait_until(Duration::from_secs(30), || {
            let q = site.queue();
            num(&q, "queued") == queued as u64 && num(&q, "incoming_files") == 0
        }),
        "not ingested: {}",
        site.queue()
    );
    if kill_instead {
        kid.kill();
    } else {
        let (st, _) = kid.term_and_wait(Duration::from_secs(10));
        assert_eq!(st.and_then(|s| s.code()), Some(0), "{}", site.log_text());
    }
}

/// Run `smtpw run --until-empty` against a good relay on the damaged spool and check that it
/// refused to start.
fn refuses_to_start(case: &str, site: &Site, queued: usize, damaged: &str, what: &str) {
    let mock = LoopbackMock::start(MockConfig::iis());
    site.point_at(mock.port, 2, 50);
    let from = site.log_text().len();
    let mut kid = site.run(true, &[]);
    let status = kid.wait_for(Duration::from_secs(20));
    if status.is_none() {
        kid.kill();
    }
    let said = site.log_since(from);
    let mut violations = Vec::new();
    match status {
        None => {
            violations.push("`smtpw run --until-empty` neither started nor refused in 20 s".into())
        }
        Some(s) if s.success() => violations.push(format!(
            "`smtpw run --until-empty` exited 0 on a damaged spool ({what}): the queued \
             recipients vanished without a word"
        )),
        Some(_) => {}
    }
    if !said.contains(damaged) {
        violations.push(format!("the message does not name {damaged}"));
    }
    let lower = said.to_ascii_lowercase();
    if !["recover", "restore", "backup"]
        .iter()
        .any(|w| lower.contains(w))
    {
        violations.push("the message does not say how to recover".into());
    }
    let sent = mock.mta.stats().recipients_accepted;
    if sent != 0 {
        violations.push(format!(
            "{sent} recipients were delivered from a damaged spool"
        ));
    }
    let ledger_lines = scan_ledger(&site.ledger).lines.len();
    eprintln!(
        "edge {case}: spool with {queued} queued and {DELIVERED} delivered ({ledger_lines} ledger \
         lines); after the damage `smtpw run --until-empty` exited {status:?}, relay got {sent}; \
         it said: {:?}",
        said.lines().rev().take(3).collect::<Vec<_>>()
    );
    verdict(case, &violations);
}

#[test]
fn zero_length_database_with_a_ledger() {
    const CASE: &str = "zero-length spool.db with a ledger";
    let _one_at_a_time = serial();
    let mut site = Site::new(SMTPW);
    spool_with_a_past(&mut site, QUEUED, false);
    let db = site.spool.join("spool.db");
    std::fs::File::create(&db).unwrap();
    for side in ["spool.db-wal", "spool.db-shm"] {
        let _ = std::fs::remove_file(site.spool.join(side));
    }
    refuses_to_start(
        CASE,
        &site,
        QUEUED,
        "spool.db",
        "spool.db is empty, the ledger is not",
    );
}

#[test]
fn wal_header_damaged_after_sigkill() {
    const CASE: &str = "WAL header damaged after a SIGKILL";
    let _one_at_a_time = serial();
    let mut site = Site::new(SMTPW);
    spool_with_a_past(&mut site, QUEUED, true);
    let wal = site.spool.join("spool.db-wal");
    let len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert!(
        len > 32,
        "the SIGKILL left no WAL to damage ({len} bytes); the case cannot be set up"
    );
    overwrite(&wal, 0, &[0xA5; 32]);
    refuses_to_start(CASE, &site, QUEUED, "spool.db", "its WAL header is damaged");
}

#[test]
fn corrupted_page() {
    const CASE: &str = "a corrupted database page";
    let _one_at_a_time = serial();
    let mut site = Site::new(SMTPW);
    spool_with_a_past(&mut site, 5 * QUEUED, false);
    let db = site.spool.join("spool.db");
    let len = std::fs::metadata(&db).unwrap().len();
    let page = 4096u64;
    assert!(
        len >= 8 * page,
        "spool.db is too small to damage a middle page ({len} bytes)"
    );
    // A page in the middle of the file (never page 1, the header).
    let at = (len / page / 2) * page;
    overwrite(&db, at, &[0xA5; 4096]);
    refuses_to_start(
        CASE,
        &site,
        5 * QUEUED,
        "spool.db",
        "a page of spool.db is overwritten",
    );
}

fn overwrite(p: &Path, at: u64, bytes: &[u8]) {
    let mut f = std::fs::File::options().write(true).open(p).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}
