//! A job file the daemon cannot read (EACCES), run as a user runs `smtpw run --until-empty`.
//!
//! How the test makes a file unreadable, honestly: `chmod 000` stops reads for an ordinary
//! user, but not for root, whose CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH bypass file modes.
//! As root the daemon is therefore started through `setpriv`, with those two capabilities
//! dropped from its bounding and inheritable sets: it is then refused with EACCES exactly as
//! a daemon running under its own account would be, while it still owns (and may write) the
//! spool it created. Without `setpriv`, as root, the tests are skipped with a notice.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use mock_mta::MockConfig;
use smtpw_testkit::proc::{log_to, without_dac_override, write_site_cfg, Kid, LoopbackMock};
use smtpw_testkit::workload::recipients;

use crate::SMTPW;

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    spool: PathBuf,
    cfg: PathBuf,
    ledger: PathBuf,
    log: PathBuf,
}

/// A spool whose oldest job (`000-old.MAIL`, 5 recipients) cannot be read, and two newer jobs
/// (10 recipients) behind it.
fn setup(mock: &LoopbackMock) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let spool = root.join("spool");
    let inc = spool.join("incoming");
    std::fs::create_dir_all(&inc).unwrap();
    let old = inc.join("000-old.MAIL");
    let mut t = String::from("MAIL FROM:<o@l.example>\r\n");
    for i in 0..5 {
        t.push_str(&format!("RCPT TO:<old{i}@x.example>\r\n"));
    }
    t.push_str("DATA\r\nSubject: old\r\n\r\nold\r\n.\r\n");
    std::fs::write(&old, t).unwrap();
    let past = SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(past)
        .unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o000)).unwrap();
    let rc = recipients(10);
    SMTPW.submit(&root, &spool, &rc[..6]);
    SMTPW.submit(&root, &spool, &rc[6..]);
    let cfg = write_site_cfg(&root, mock.port, 2, 100);
    Setup {
        _dir: dir,
        ledger: root.join("ledger.jsonl"),
        log: root.join("run.log"),
        root,
        spool,
        cfg,
    }
}

/// Run `smtpw run --until-empty` (unprivileged) for at most `limit`: its exit code (`None`
/// when the test is skipped). Still running at `limit` fails the test (the process is killed).
fn run_until_empty(s: &Setup, limit: Duration) -> Option<Option<i32>> {
    let cmd = SMTPW.run_cmd(&s.cfg, &s.spool, &s.ledger, true, &s.log);
    let Some(mut cmd) = without_dac_override(&cmd) else {
        eprintln!("NOTICE: skipped: running as root without setpriv, a file cannot be made unreadable to the daemon");
        return None;
    };
    log_to(&mut cmd, &s.log);
    let mut kid = Kid::spawn(cmd, "smtpw run");
    let Some(st) = kid.wait_for(limit) else {
        kid.kill();
        let log = log_text(s);
        let n = log.lines().filter(|l| l.contains("WARN")).count();
        panic!(
            "still running after {limit:?}, {n} warnings; log (first 10 lines):\n{}",
            log.lines().take(10).collect::<Vec<_>>().join("\n")
        );
    };
    Some(st.code())
}

fn log_text(s: &Setup) -> String {
    std::fs::read_to_string(&s.log).unwrap_or_default()
}

#[test]
fn an_unreadable_job_is_quarantined_and_the_newer_ones_go() {
    let mock = LoopbackMock::start(MockConfig::iis());
    let s = setup(&mock);
    let Some(code) = run_until_empty(&s, Duration::from_secs(30)) else {
        return;
    };
    let log = log_text(&s);
    assert_eq!(code, Some(0), "exit status; log:\n{log}");
    assert_eq!(mock.mta.journal().delivered_recipients().len(), 10, "{log}");
    let q = s.spool.join("quarantine");
    assert!(q.join("000-old.MAIL").exists(), "{log}");
    let reason = std::fs::read_to_string(q.join("000-old.MAIL.reason")).unwrap();
    assert!(
        reason.starts_with("incoming/000-old.MAIL: cannot be read: ")
            && reason.contains("Permission denied"),
        "{reason}"
    );
    let warnings = log.lines().filter(|l| l.contains("000-old.MAIL")).count();
    assert_eq!(warnings, 1, "one warning about it: {log}");
    drop(s.root);
}

#[test]
fn until_empty_exits_3_naming_what_it_could_neither_read_nor_move() {
    let mock = LoopbackMock::start(MockConfig::iis());
    let s = setup(&mock);
    // Nothing can be moved to quarantine: it is not writable (to the unprivileged daemon).
    let q = s.spool.join("quarantine");
    std::fs::create_dir_all(&q).unwrap();
    std::fs::set_permissions(&q, std::fs::Permissions::from_mode(0o555)).unwrap();
    let result = run_until_empty(&s, Duration::from_secs(30));
    std::fs::set_permissions(&q, std::fs::Permissions::from_mode(0o755)).unwrap();
    let Some(code) = result else { return };
    let log = log_text(&s);
    assert_eq!(code, Some(3), "exit status; log:\n{log}");
    assert_eq!(mock.mta.journal().delivered_recipients().len(), 10, "{log}");
    assert!(s.spool.join("incoming/000-old.MAIL").exists());
    assert!(
        log.contains("--until-empty: 1 file in incoming can be neither read nor moved to quarantine, so it was not sent: 000-old.MAIL (cannot be read: Permission denied"),
        "{log}"
    );
    let warnings = log
        .lines()
        .filter(|l| l.contains("000-old.MAIL") && l.contains("WARN"))
        .count();
    assert_eq!(warnings, 1, "one warning, not one per pass: {log}");
}
