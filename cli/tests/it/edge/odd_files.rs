//! Odd entries named `*.MAIL` in `SPOOL/incoming/` beside good jobs: an unreadable file (the
//! oldest), a directory, a FIFO, a symlink to a regular job file, a dangling symlink. The good
//! jobs and the symlinked one are delivered; each other entry is quarantined (moved to
//! `SPOOL/quarantine/`) or reported by name in the log; `--until-empty` ends.
//!
//! Unreadable, honestly: as root, `chmod 000` does not stop a read, so `smtpw run` runs under
//! `setpriv` without the two capabilities that bypass file permissions (CAP_DAC_OVERRIDE,
//! CAP_DAC_READ_SEARCH); the case first proves the file really is unreadable that way, and
//! leaves the unreadable entry out, with a notice, when it cannot.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use mock_mta::MockConfig;
use smtpw_engine::job::JobWriter;

use smtpw_testkit::ledger::Tally;
use smtpw_testkit::proc::{
    log_to, received, serial, unreadable_to_daemon, without_dac_override, Kid, LoopbackMock,
};
use smtpw_testkit::site::{name_of, verdict, Site};

use crate::SMTPW;

/// A `.MAIL` job to `rcpts`.
fn job_text(rcpts: &[String]) -> Vec<u8> {
    let mut w = JobWriter::new(Vec::new());
    w.job(
        "owner@lists.example",
        None,
        rcpts,
        &b"Subject: odd files\r\n\r\nHello.\r\n"[..],
    )
    .unwrap();
    w.finish().unwrap()
}

fn rcpts(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}{i}@odd.example")).collect()
}

fn set_mtime(p: &Path, t: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

#[test]
fn odd_entries_named_mail_beside_good_jobs() {
    const CASE: &str = "odd files in incoming";
    let _one_at_a_time = serial();
    let mock = LoopbackMock::start(MockConfig::iis());
    let mut site = Site::new(SMTPW);
    site.point_at(mock.port, 2, 10);
    let incoming = site.spool.join("incoming");
    std::fs::create_dir_all(&incoming).unwrap();
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);

    // The unreadable job: the oldest file, with recipients of its own (never submitted: it
    // cannot be read, so nothing of it can be queued).
    let unreadable = incoming.join("a-unreadable.MAIL");
    std::fs::write(&unreadable, job_text(&rcpts("unreadable", 5))).unwrap();
    set_mtime(&unreadable, an_hour_ago);
    std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o000)).unwrap();
    let mut odd = vec![
        incoming.join("b-directory.MAIL"),
        incoming.join("c-fifo.MAIL"),
    ];
    if unreadable_to_daemon(&unreadable) {
        odd.insert(0, unreadable.clone());
    } else {
        eprintln!(
            "edge {CASE}: NOTICE: cannot make a file unreadable to smtpw here (not root and \
             chmod 000 does not stop reads, or no setpriv); the unreadable entry is left out"
        );
        std::fs::remove_file(&unreadable).unwrap();
    }
    std::fs::create_dir(incoming.join("b-directory.MAIL")).unwrap();
    let fifo = Command::new("mkfifo")
        .arg(incoming.join("c-fifo.MAIL"))
        .status()
        .unwrap();
    assert!(fifo.success(), "mkfifo");
    let dangling = incoming.join("d-dangling.MAIL");
    symlink(site.dir.path().join("no-such-file"), &dangling).unwrap();
    odd.push(dangling);

    // Good jobs, and a symlink to a regular job file outside incoming/.
    let outside = site.dir.path().join("linked-job.txt");
    let linked = rcpts("linked", 10);
    std::fs::write(&outside, job_text(&linked)).unwrap();
    symlink(&outside, incoming.join("e-symlink.MAIL")).unwrap();
    site.submitted.extend(linked.iter().cloned());
    site.submit(&rcpts("good-one-", 20));
    site.submit(&rcpts("good-two-", 20));

    let mut violations = Vec::new();
    // As a process that file modes bind (as root: without the capabilities that bypass them).
    let run = site.run_cmd(true, &[]);
    let cmd = match without_dac_override(&run) {
        Some(mut c) => {
            log_to(&mut c, &site.log);
            c
        }
        None => run,
    };
    let mut kid = Kid::spawn(cmd, "smtpw run --until-empty");
    let limit = Duration::from_secs(30);
    let status = kid.wait_for(limit);
    match status {
        None => {
            kid.kill();
            violations.push(format!(
                "`smtpw run --until-empty` did not end within {limit:?} (the emptiness check \
                 must agree with ingest); SIGKILLed"
            ));
        }
        Some(s) if !s.success() => violations.push(format!(
            "`smtpw run --until-empty` exited with {s}; log:\n{}",
            site.log_text()
        )),
        Some(_) => {}
    }
    assert!(
        mock.wait_idle(Duration::from_secs(10)),
        "the mock's sessions end"
    );

    // Each odd entry: quarantined, or reported by name.
    let log = site.log_text();
    let quarantine = site.spool.join("quarantine");
    let mut fates = Vec::new();
    for p in &odd {
        let name = name_of(p);
        let moved = quarantine.join(&name).symlink_metadata().is_ok();
        let still_here = p.symlink_metadata().is_ok();
        let named = log.contains(&name);
        fates.push(format!(
            "{name}: {}",
            match (moved, still_here, named) {
                (true, _, _) => "quarantined",
                (false, true, true) => "left in incoming, reported",
                (false, false, true) => "gone, reported",
                (false, true, false) => "left in incoming, not reported",
                (false, false, false) => "gone without a word",
            }
        ));
        if !moved && !named {
            violations.push(format!(
                "{name} was neither quarantined nor named in the log (left in incoming: \
                 {still_here})"
            ));
        }
    }
    // Every good recipient, the symlinked job's included, was delivered.
    let got = received(&mock);
    let missing: Vec<&String> = site
        .submitted
        .iter()
        .filter(|r| !got.contains_key(*r))
        .collect();
    if !missing.is_empty() {
        violations.push(format!(
            "{} of {} good recipients were not delivered, e.g. {:?}",
            missing.len(),
            site.submitted.len(),
            &missing[..missing.len().min(3)]
        ));
    }
    let mut t = Tally::count(&site, &got);
    if t.queued != 0 {
        violations.push(format!("{} recipients still queued at exit 0", t.queued));
    }
    t.report(CASE, &fates.join(", "));
    violations.append(&mut t.violations);
    verdict(CASE, &violations);
}
