//! `smtpw sendmail` (LISTEN-8) as Sympa and `-t` users run it: exit 0 only with the job durable
//! in the spool, then delivered by `smtpw run`; 64 for an option it does not know, 75 when the
//! spool cannot take the job; the same through a link named `sendmail`.
//!
//! `cargo test -p smtpw --test it sendmail_cli::`

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use mock_mta::MockConfig;
use smtpw_engine::spool::list_incoming;
use smtpw_testkit::proc::{received, write_site_cfg, Kid, LoopbackMock};

use crate::SMTPW;

fn with_stdin(mut cmd: Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command that refuses its arguments exits without reading: the pipe may be closed.
    let _ = child.stdin.take().unwrap().write_all(input);
    child.wait_with_output().unwrap()
}

fn incoming(spool: &Path) -> usize {
    list_incoming(&spool.join("incoming")).map_or(0, |v| v.len())
}

#[test]
fn sympa_arguments_and_t_through_a_link_queue_durably_and_are_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    // Sympa's bulk daemon: sendmail -oi -odi -oem -f SENDER -- RCPT...
    let mut c = SMTPW.command();
    c.args(["sendmail", "--spool"]).arg(&spool).args([
        "-oi",
        "-odi",
        "-oem",
        "-f",
        "owner-list@lists.example.org",
        "--",
        "s1@dest.example",
        "s2@dest.example",
    ]);
    let msg = b"From: list@lists.example.org\nSubject: sympa\n\nline one\n.\nafter the lone dot\n";
    let out = with_stdin(c, msg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(incoming(&spool), 1, "queued before the exit");

    // -t through a link named sendmail, the spool from SMTPW_SPOOL; no -i: a lone dot ends it.
    let link = dir.path().join("sendmail");
    std::os::unix::fs::symlink(SMTPW.path(), &link).unwrap();
    let mut c = Command::new(&link);
    c.args(["-t", "-f", "robot@lists.example.org"])
        .env("SMTPW_SPOOL", &spool);
    let msg = b"From: robot@lists.example.org\nTo: T <t1@dest.example>\nCc: t2@dest.example\nBcc: hidden@dest.example\nSubject: t\n\nbody\n.\nnot sent\n";
    let out = with_stdin(c, msg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(incoming(&spool), 2);

    // An option it does not know: usage error, nothing queued.
    let mut c = SMTPW.command();
    c.args(["sendmail", "--spool"])
        .arg(&spool)
        .args(["-bs", "x@dest.example"]);
    let out = with_stdin(c, b"Subject: x\n\nx\n");
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown option -bs"));
    assert_eq!(incoming(&spool), 2);

    // A spool that cannot take the job: EX_TEMPFAIL, said on stderr.
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, "").unwrap();
    let mut c = SMTPW.command();
    c.args(["sendmail", "--spool"])
        .arg(&not_a_dir)
        .args(["-oi", "--", "x@dest.example"]);
    let out = with_stdin(c, b"Subject: x\n\nx\n");
    assert_eq!(out.status.code(), Some(75));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT queued"));

    // Delivered: every recipient once, the lone dot kept with -oi, Bcc gone.
    let mut mc = MockConfig::iis();
    mc.keep_bodies = true;
    let mock = LoopbackMock::start(mc);
    let cfg = write_site_cfg(dir.path(), mock.port, 1, 100);
    let mut kid = Kid::spawn(
        SMTPW.run_cmd(
            &cfg,
            &spool,
            &dir.path().join("ledger.jsonl"),
            true,
            &dir.path().join("log"),
        ),
        "smtpw run",
    );
    let status = kid
        .wait_for(Duration::from_secs(60))
        .expect("run --until-empty ends");
    assert!(status.success());
    let got = received(&mock);
    let mut names: Vec<&str> = got.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "hidden@dest.example",
            "s1@dest.example",
            "s2@dest.example",
            "t1@dest.example",
            "t2@dest.example"
        ]
    );
    assert!(got.values().all(|&n| n == 1));
    let bodies: Vec<String> = mock
        .mta
        .journal()
        .accepted_transactions()
        .into_iter()
        .filter_map(|t| t.body.clone())
        .collect();
    let sympa = bodies.iter().find(|b| b.contains("sympa")).unwrap();
    assert!(
        sympa.contains("\r\nline one\r\n.\r\nafter the lone dot\r\n"),
        "{sympa}"
    );
    let t = bodies.iter().find(|b| b.contains("Subject: t")).unwrap();
    assert!(!t.contains("Bcc") && !t.contains("hidden"), "{t}");
    assert!(t.ends_with("\r\nbody\r\n"), "{t}");
}

/// `-F NAME` (LISTEN-8): a message without a From field gets `From: NAME <sender>`; a message
/// with one keeps it as it is. Read back from the jobs in the spool.
#[test]
fn f_adds_a_from_field_only_when_the_message_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let send = |msg: &[u8]| {
        let mut c = SMTPW.command();
        c.args(["sendmail", "--spool"]).arg(&spool).args([
            "-oi",
            "-F",
            "List Robot",
            "-f",
            "owner@lists.example.org",
            "--",
            "a@dest.example",
        ]);
        let out = with_stdin(c, msg);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    send(b"Subject: no from\n\nbody\n");
    send(b"From: Someone <someone@lists.example.org>\nSubject: with from\n\nbody\n");
    let jobs: Vec<String> = list_incoming(&spool.join("incoming"))
        .unwrap()
        .iter()
        .map(|e| std::fs::read_to_string(&e.path).unwrap())
        .collect();
    assert_eq!(jobs.len(), 2);
    let no_from = jobs
        .iter()
        .find(|j| j.contains("Subject: no from"))
        .unwrap();
    let at = no_from.find("From: List Robot <owner@lists.example.org>");
    assert!(
        at.is_some_and(|i| i < no_from.find("Subject: no from").unwrap()),
        "the From field before the header's others: {no_from}"
    );
    let with_from = jobs
        .iter()
        .find(|j| j.contains("Subject: with from"))
        .unwrap();
    assert!(
        with_from.contains("From: Someone <someone@lists.example.org>")
            && !with_from.contains("List Robot"),
        "{with_from}"
    );
}
