//! A damaged spool is refused, never taken for an empty one: opening it (`smtpw run`) and reading
//! it (`smtpw queue`) report what is wrong with which file and how to recover, instead of
//! "queued 0" and an exit 0 that would silently drop every queued recipient.
//!
//! Damage built here: a zero-length `spool.db` beside a ledger; `spool.db` gone with the spool's
//! marker still there; a write-ahead log whose header or first frame was damaged after a SIGKILL
//! (SQLite silently ignores such a log, and a spool that was never checkpointed then looks
//! empty); a damaged index page that only `PRAGMA quick_check` notices. Controls: a fresh
//! directory opens, and a spool killed with SIGKILL (log intact) reopens with everything queued.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use smtpw_engine::clock::SystemClock;
use smtpw_engine::config::PoolSet;
use smtpw_engine::spool::{read_stats, submit, Spool, SpoolOptions, SqliteSpool};
use smtpw_testkit::proc::{free_port, write_site_cfg, Kid};
use smtpw_testkit::workload::{all_delivered, recipients};

use crate::SMTPW;

fn opts() -> SpoolOptions {
    SpoolOptions {
        max_bsmtp: 10,
        ..SpoolOptions::default()
    }
}

fn open(dir: &Path) -> Result<SqliteSpool, smtpw_engine::spool::SpoolError> {
    SqliteSpool::open(dir, opts(), SystemClock::shared())
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A spool with `n` queued recipients (copies of 10) and one copy delivered (so the ledger has
/// lines), closed cleanly (the log checkpointed and removed).
fn spool_with_history(dir: &Path, n: usize) {
    submit(
        dir,
        "owner@l.example",
        None,
        recipients(n).into_iter(),
        &b"Subject: s\r\n\r\nx\r\n"[..],
    )
    .unwrap();
    let spool = open(dir).unwrap();
    spool.ingest_blocking().unwrap();
    block_on(async {
        let c = spool.claim(PoolSet::ALL).await.unwrap().unwrap();
        let res = all_delivered("mx:25", c.rcpts.len(), "250 ok");
        spool.complete(c.copy_id, res).await.unwrap();
    });
    drop(spool);
    assert!(!dir.join("spool.db-wal").exists());
}

/// What `smtpw queue` says, and its exit status.
fn queue_cli(dir: &Path) -> (Option<i32>, String) {
    let out = SMTPW
        .command()
        .args(["queue", "--spool"])
        .arg(dir)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// The spool is refused by `open`, by `read_stats` and by `smtpw queue`, each time naming `file`
/// and saying how to recover.
fn assert_refused(dir: &Path, file: &str, what: &str) {
    let err = match open(dir) {
        Ok(s) => panic!(
            "{what}: the damaged spool was opened (queued copies {})",
            s.queued_copies()
        ),
        Err(e) => e.to_string(),
    };
    eprintln!("{what}: open: {err}");
    assert!(err.contains(file), "{what}: the error names {file}: {err}");
    assert!(
        err.contains("recover"),
        "{what}: the error says how to recover: {err}"
    );
    match read_stats(dir, jiff::Timestamp::now()) {
        Ok(st) => panic!(
            "{what}: read_stats took the damaged spool for one with {} queued",
            st.queued
        ),
        Err(e) => assert!(e.to_string().contains(file), "{what}: {e}"),
    }
    let (code, text) = queue_cli(dir);
    assert_ne!(code, Some(0), "{what}: smtpw queue exits 0 with:\n{text}");
    assert!(text.contains(file), "{what}: smtpw queue says:\n{text}");
}

#[test]
fn a_zero_length_database_beside_a_ledger_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    spool_with_history(dir.path(), 100);
    std::fs::File::create(dir.path().join("spool.db")).unwrap(); // truncates to 0
    assert_refused(dir.path(), "spool.db", "zero-length spool.db");

    // And the daemon does not start on it (exit 2), where before it said "queue empty" and 0.
    let cfg = write_site_cfg(dir.path(), free_port(), 1, 10);
    let log = dir.path().join("run.log");
    let mut kid = Kid::spawn(
        SMTPW.run_cmd(
            &cfg,
            dir.path(),
            &dir.path().join("ledger.jsonl"),
            true,
            &log,
        ),
        "smtpw run",
    );
    let status = kid.wait_for(Duration::from_secs(20)).expect("it exits");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        status.code(),
        Some(2),
        "smtpw run on the damaged spool:\n{text}"
    );
    assert!(text.contains("spool.db"), "{text}");
}

#[test]
fn a_missing_database_with_the_spool_marker_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    spool_with_history(dir.path(), 100);
    std::fs::remove_file(dir.path().join("spool.db")).unwrap();
    std::fs::remove_file(dir.path().join("ledger.jsonl")).unwrap();
    assert_refused(dir.path(), "spool.db", "spool.db removed");
}

#[test]
fn a_fresh_directory_opens_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("new");
    let spool = open(&sub).unwrap();
    assert_eq!(spool.queued_copies(), 0);
    drop(spool);
    let spool = open(&sub).unwrap();
    assert_eq!(spool.queued_copies(), 0);
    drop(spool);
    assert_eq!(read_stats(&sub, jiff::Timestamp::now()).unwrap().queued, 0);
    // An existing but empty directory, too.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert_eq!(open(&empty).unwrap().queued_copies(), 0);
}

const KILLED_RCPTS: usize = 1000;

/// `smtpw run` ingests a job (its relay is unreachable, so nothing is delivered) and is killed
/// with SIGKILL: the spool's content is then only in the write-ahead log.
fn killed_spool(root: &Path) -> PathBuf {
    let cfg = write_site_cfg(root, free_port(), 2, 10);
    let spool = root.join("spool");
    SMTPW.submit(root, &spool, &recipients(KILLED_RCPTS));
    let log = root.join("run.log");
    let mut kid = Kid::spawn(
        SMTPW.run_cmd(&cfg, &spool, &spool.join("ledger.jsonl"), false, &log),
        "smtpw run",
    );
    let end = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("ingested")
    {
        assert!(Instant::now() < end, "no ingest within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(kid.kill(), "still running when killed");
    let wal = spool.join("spool.db-wal");
    assert!(
        std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) > 32,
        "the killed run left a write-ahead log"
    );
    spool
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn flip(path: &Path, offset: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0x5a;
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&b).unwrap();
}

#[test]
fn a_damaged_write_ahead_log_after_sigkill_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let killed = killed_spool(root.path());

    // Control: the log intact, the restart finds every recipient queued.
    let ok = root.path().join("intact");
    copy_dir(&killed, &ok);
    let st = read_stats(&ok, jiff::Timestamp::now()).unwrap();
    assert_eq!(
        st.queued, KILLED_RCPTS as u64,
        "read_stats of the killed spool"
    );
    let spool = open(&ok).unwrap();
    assert_eq!(
        block_on(spool.stats()).unwrap().queued,
        KILLED_RCPTS as u64,
        "a spool killed with SIGKILL reopens with everything queued"
    );
    drop(spool);

    // Damage: the log's magic number, its header checksum, a byte of its first frame's page.
    for (what, offset) in [
        ("log header magic", 0u64),
        ("log header checksum", 24),
        ("first frame", 32 + 24 + 100),
    ] {
        let d = root.path().join(what.replace(' ', "-"));
        copy_dir(&killed, &d);
        flip(&d.join("spool.db-wal"), offset);
        assert_refused(&d, "spool.db-wal", what);
    }
}

#[test]
fn a_damaged_index_page_is_caught_at_open() {
    let dir = tempfile::tempdir().unwrap();
    spool_with_history(dir.path(), 2000);
    let (root, page_size): (i64, i64) = {
        let c = rusqlite::Connection::open(dir.path().join("spool.db")).unwrap();
        let root = c
            .query_row(
                "SELECT rootpage FROM sqlite_master WHERE name = 'copies_job'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let ps = c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        (root, ps)
    };
    // Scribble over the index's root page (the claims never read this index, so only a check
    // of the whole file notices it before a completion trips over it).
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("spool.db"))
            .unwrap();
        f.seek(SeekFrom::Start(((root - 1) * page_size) as u64))
            .unwrap();
        f.write_all(&vec![0xA5u8; page_size as usize]).unwrap();
    }
    let err = match open(dir.path()) {
        Ok(s) => panic!(
            "the spool with a damaged page was opened (queued copies {})",
            s.queued_copies()
        ),
        Err(e) => e.to_string(),
    };
    eprintln!("damaged page: open: {err}");
    assert!(err.contains("spool.db"), "{err}");
    assert!(err.contains("quick_check"), "{err}");
    assert!(err.contains("recover"), "{err}");
}
