//! The commands at their edges: a closed standard output, bad recipient files, a full disk, and
//! what `smtpw queue` can honestly say about the engine.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use smtpw_engine::clock::SystemClock;
use smtpw_engine::ratelimit::{RateStatus, RATE_STATUS_FILE};
use smtpw_engine::spool::{SpoolOptions, SqliteSpool};
use smtpw_testkit::tmpfs::Tmpfs;

use crate::SMTPW;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const CFG: &str = "NODE=LISTSERV.EXAMPLE.ORG\nSMTP_FORWARD=S.EXAMPLE.ORG\nSMTP_FORWARD_1=2*MX.EXAMPLE.ORG;POOL=A\nSMTP_RATE_LIMIT=2Mbps A:1Mbps\n";

/// Run with standard output a pipe whose reading end is already closed: every write to it fails
/// with EPIPE (as `smtpw queue | head` once `head` has gone).
fn with_closed_stdout(cmd: &mut Command) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    cmd.stdout(writer).stderr(Stdio::piped()).output().unwrap()
}

/// A spool with a few jobs in incoming, so that `queue` has lines to print.
fn spool_with_jobs(dir: &Path) -> PathBuf {
    let spool = dir.join("spool");
    drop(SqliteSpool::open(&spool, SpoolOptions::default(), SystemClock::shared()).unwrap());
    for i in 0..3 {
        let rcpts = (0..5).map(|r| format!("r{r}@x{i}.example"));
        smtpw_engine::spool::submit(
            &spool,
            "o@l.example",
            None,
            rcpts,
            &b"Subject: s\r\n\r\nhi\r\n"[..],
        )
        .unwrap();
    }
    spool
}

#[test]
fn a_closed_stdout_ends_every_printing_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_with_jobs(dir.path());
    let cfg = dir.path().join("SITE.CFG");
    std::fs::write(&cfg, CFG).unwrap();
    let msg = dir.path().join("m.eml");
    std::fs::write(&msg, "Subject: x\n\nbody\n").unwrap();
    let rcpts = dir.path().join("r.txt");
    std::fs::write(&rcpts, "a@x.example\n").unwrap();
    let (s, c) = (spool.to_str().unwrap(), cfg.to_str().unwrap());
    let runs: Vec<Vec<&str>> = vec![
        vec!["queue", "--spool", s],
        vec!["queue", "--spool", s, "--config", c],
        vec!["queue", "--spool", s, "--json"],
        vec!["config", "check", c],
        vec!["config", "check", "--json", c],
        vec!["config", "explain", c, "--at", "12:00"],
        vec!["config", "explain", c, "--at", "12:00", "--json"],
        vec![
            "submit",
            "--spool",
            s,
            "--from",
            "o@l.example",
            "--rcpts",
            rcpts.to_str().unwrap(),
            msg.to_str().unwrap(),
        ],
    ];
    let mut wrong = Vec::new();
    for args in &runs {
        let out = with_closed_stdout(SMTPW.command().args(args));
        if out.status.code() != Some(0) || !out.stderr.is_empty() {
            wrong.push(format!(
                "{args:?}: exit {:?}, stderr {:?}",
                out.status.code(),
                text(&out.stderr)
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // submit's job was queued all the same (only its report line was lost).
    let n = std::fs::read_dir(spool.join("incoming")).unwrap().count();
    assert_eq!(n, 4);
}

fn submit(spool: &Path, rcpts: &Path) -> Output {
    let msg = spool.parent().unwrap().join("m.eml");
    std::fs::write(&msg, "Subject: x\n\nx\n").unwrap();
    SMTPW
        .submit_cmd(spool, "o@l.example", rcpts, None, &msg)
        .output()
        .unwrap()
}

fn nothing_left_in_incoming(spool: &Path) {
    let left: Vec<_> = match std::fs::read_dir(spool.join("incoming")) {
        Ok(d) => d.map(|e| e.unwrap().file_name()).collect(),
        Err(_) => Vec::new(),
    };
    assert!(
        left.is_empty(),
        "no job and no temporary file is left: {left:?}"
    );
}

#[test]
fn submit_names_the_file_and_line_of_a_bad_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("sp");
    let rcpts = dir.path().join("r.txt");
    std::fs::write(
        &rcpts,
        "ok@x.example\n\n# a comment\n<also@x.example>\nnot an address\nlast@x.example\n",
    )
    .unwrap();
    let out = submit(&spool, &rcpts);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:5: invalid address \"not an address\"",
            rcpts.display()
        )),
        "{err}"
    );
    assert!(err.contains("expected one address per line"), "{err}");
    nothing_left_in_incoming(&spool);
}

#[test]
fn submit_says_which_line_is_not_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("sp");
    let rcpts = dir.path().join("latin1.txt");
    for (bytes, line) in [
        (&b"caf\xe9@x.example\nb@x.example\n"[..], 1),
        (&b"a@x.example\nb@x.example\n\xff\xfe\n"[..], 3),
    ] {
        std::fs::write(&rcpts, bytes).unwrap();
        let out = submit(&spool, &rcpts);
        assert_eq!(out.status.code(), Some(2));
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!(
                "{}:{line}: the line is not UTF-8",
                rcpts.display()
            )),
            "{err}"
        );
        assert!(
            err.contains("expected one address per line in UTF-8"),
            "{err}"
        );
        assert!(!err.contains("at least one recipient"), "{err}");
        nothing_left_in_incoming(&spool);
    }
    // No address at all is said as such, naming the file.
    std::fs::write(&rcpts, "\n# nobody\n").unwrap();
    let out = submit(&spool, &rcpts);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("{}: no recipient in 2 lines", rcpts.display())),
        "{err}"
    );
    nothing_left_in_incoming(&spool);
}

#[test]
fn submit_on_a_full_disk_says_so_and_leaves_no_job() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let Ok(_fs) = Tmpfs::mount_on(&mnt, "256k") else {
        eprintln!(
            "NOTICE: skipped: mounting a tmpfs needs root (this checks submit on a full disk)"
        );
        return;
    };
    let spool = mnt.join("spool");
    std::fs::create_dir_all(spool.join("incoming")).unwrap();
    // The message alone is larger than the file system.
    let msg = dir.path().join("big.eml");
    let mut body = String::from("Subject: big\n\n");
    while body.len() < 512 * 1024 {
        body.push_str("a line of the body that fills the disk\n");
    }
    std::fs::write(&msg, &body).unwrap();
    let rcpts = dir.path().join("r.txt");
    std::fs::write(&rcpts, "a@x.example\n").unwrap();
    let out = SMTPW
        .submit_cmd(&spool, "o@l.example", &rcpts, None, &msg)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(
        !err.contains("invalid job"),
        "the job was not invalid: {err}"
    );
    assert!(out.stdout.is_empty());
    nothing_left_in_incoming(&spool);
}

fn queue(spool: &Path) -> String {
    let out = SMTPW
        .command()
        .args(["queue", "--spool"])
        .arg(spool)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn queue_tells_a_status_it_could_not_write_from_an_engine_that_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let site = smtpw_engine::config::parse_str(CFG, "SITE.CFG").unwrap();
    drop(SqliteSpool::open(&spool, SpoolOptions::default(), SystemClock::shared()).unwrap());

    // An engine owns the spool (this process holds its lock) but never wrote its status.
    let owner = SqliteSpool::open(&spool, SpoolOptions::default(), SystemClock::shared()).unwrap();
    let out = queue(&spool);
    assert!(
        out.contains("an engine is running (it holds spool.lock) but has written no status"),
        "{out}"
    );
    // ... or wrote it an hour ago and no more since.
    let old = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1);
    RateStatus::new(&site, false, None, old)
        .write(&spool)
        .unwrap();
    let out = queue(&spool);
    assert!(!out.contains("not running"), "{out}");
    assert!(
        out.contains("an engine is running (it holds spool.lock) but its status is from 1h00m ago"),
        "{out}"
    );
    let json = SMTPW.queue_cmd(&spool).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["rates"]["stale"], true);
    assert_eq!(v["rates"]["engine"], "running");

    // Once the owner is gone, the same old status means the engine is not running.
    drop(owner);
    let out = queue(&spool);
    assert!(
        out.contains("the engine is not running (no process holds spool.lock)"),
        "{out}"
    );
    std::fs::remove_file(spool.join(RATE_STATUS_FILE)).unwrap();
    let out = queue(&spool);
    assert!(!out.contains("an engine is running"), "{out}");
}
