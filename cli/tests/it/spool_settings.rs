//! Where each command finds its spool (CFG-8): `--spool`, else `SMTPW_SPOOL`, else the settings
//! file's `[spool] url` or `path`; with a database spool, `[spool] via` names the node `submit`
//! and `sendmail` queue through. Checked on a PostgreSQL spool (testkit's private cluster; the
//! test says loudly that it skipped without PostgreSQL) with every command and the listener.
//!
//! `cargo test -p smtpw --test it spool_settings::`

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use mock_mta::MockConfig;
use smtpw_testkit::postgres::Postgres;
use smtpw_testkit::proc::{free_port, log_to, num, received, wait_until, Kid, LoopbackMock};

use crate::SMTPW;

const NODE: &str = "N1.EXAMPLE.ORG";

fn queue(args: &[&str], env_spool: Option<&Path>) -> serde_json::Value {
    let mut c = SMTPW.command();
    c.arg("queue").arg("--json").args(args);
    c.env_remove("SMTPW_SPOOL").env_remove("SMTPW_SETTINGS");
    if let Some(s) = env_spool {
        c.env("SMTPW_SPOOL", s);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "smtpw queue {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn sendmail(settings: &Path, rcpts: &[&str]) -> std::process::Output {
    let mut c = SMTPW.command();
    c.arg("sendmail")
        .arg("--settings")
        .arg(settings)
        .args(["-oi", "-f", "owner@lists.example.org", "--"])
        .args(rcpts)
        .env_remove("SMTPW_SPOOL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut kid = c.spawn().unwrap();
    kid.stdin
        .take()
        .unwrap()
        .write_all(b"Subject: by sendmail\n\nhello\n")
        .unwrap();
    kid.wait_with_output().unwrap()
}

/// One message over SMTP (the listener); the server's replies.
fn smtp_submit(port: u16, rcpt: &str) -> String {
    let conv = format!(
        "EHLO client.example\r\nMAIL FROM:<owner@lists.example.org>\r\nRCPT TO:<{rcpt}>\r\n\
         DATA\r\nSubject: by smtp\r\n\r\nhello\r\n.\r\nQUIT\r\n"
    );
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(conv.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// `run`, `submit`, `sendmail`, `queue` and the listener all take the database spool from
/// `--settings`' `[spool] url` (and `via`); `SMTPW_SPOOL` beats the settings file and `--spool`
/// beats both. Every recipient queued by each way reaches the relay exactly once.
#[test]
fn every_command_takes_a_database_spool_from_the_settings_file() {
    let Some(pg) = Postgres::shared(
        "spool_settings::every_command_takes_a_database_spool_from_the_settings_file",
    ) else {
        return;
    };
    let url = pg.database("settings_spool");
    let root = tempfile::tempdir().unwrap();
    let mock = LoopbackMock::start(MockConfig::iis());
    let cfg = root.path().join("SITE.CFG");
    std::fs::write(
        &cfg,
        format!(
            "NODE={NODE}\nSMTP_FORWARD=127.0.0.1:{p}\nSMTP_FORWARD_1=2*127.0.0.1:{p}\nMAXBSMTP=10\n",
            p = mock.port
        ),
    )
    .unwrap();
    let node_dir = root.path().join("node");
    let settings = root.path().join("smtpw.toml");
    let spool_toml = format!("[spool]\nurl = \"{url}\"\nvia = \"{NODE}\"\n");
    std::fs::write(&settings, &spool_toml).unwrap();
    let log = root.path().join("run1.log");

    // run: the node joins the spool named only by the settings file (nothing queued yet).
    let mut c = SMTPW.command();
    c.arg("run")
        .arg("--config")
        .arg(&cfg)
        .arg("--settings")
        .arg(&settings)
        .arg("--incoming")
        .arg(&node_dir)
        .arg("--until-empty")
        .env_remove("SMTPW_SPOOL");
    log_to(&mut c, &log);
    let status = Kid::spawn(c, "smtpw run")
        .wait_for(Duration::from_secs(60))
        .expect("the run ends");
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // queue from the settings file: the cluster's view, with the node that joined.
    let q = queue(&["--settings", settings.to_str().unwrap()], None);
    assert_eq!(q["nodes"][0]["name"], NODE, "{q}");

    // submit from the settings file (spool and via).
    let rcpts_file = root.path().join("rcpts");
    let by_submit: Vec<String> = (0..5).map(|i| format!("s{i}@x.example")).collect();
    std::fs::write(&rcpts_file, by_submit.join("\n")).unwrap();
    let msg = root.path().join("m.eml");
    std::fs::write(&msg, "Subject: by submit\n\nhello\n").unwrap();
    let out = SMTPW
        .command()
        .arg("submit")
        .arg("--settings")
        .arg(&settings)
        .args(["--from", "owner@lists.example.org", "--rcpts"])
        .arg(&rcpts_file)
        .arg(&msg)
        .env_remove("SMTPW_SPOOL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "submit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("via {NODE} (5 recipients")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // sendmail from the settings file.
    let out = sendmail(&settings, &["m0@x.example", "m1@x.example"]);
    assert!(
        out.status.success(),
        "sendmail exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    // Both are in the database (read with --spool URL).
    let q = queue(&["--spool", &url], None);
    assert_eq!(num(&q, "queued"), 7, "{q}");

    // Precedence: SMTPW_SPOOL (an empty spool directory) beats the settings file; --spool beats
    // SMTPW_SPOOL.
    let dir_spool = root.path().join("dirspool");
    std::fs::create_dir_all(&dir_spool).unwrap();
    let q = queue(
        &["--settings", settings.to_str().unwrap()],
        Some(&dir_spool),
    );
    assert!(q.get("nodes").is_none(), "SMTPW_SPOOL's directory: {q}");
    let q = queue(&["--spool", &url], Some(&dir_spool));
    assert_eq!(num(&q, "queued"), 7, "--spool wins: {q}");

    // The listener stores into the spool of the settings file; the node delivers all of it.
    let port = free_port();
    let with_listen = root.path().join("listen.toml");
    std::fs::write(
        &with_listen,
        format!("{spool_toml}[listen]\naddresses = [\"127.0.0.1:{port}\"]\n"),
    )
    .unwrap();
    let log2 = root.path().join("run2.log");
    let mut c = SMTPW.command();
    c.arg("run")
        .arg("--config")
        .arg(&cfg)
        .arg("--settings")
        .arg(&with_listen)
        .arg("--incoming")
        .arg(&node_dir)
        .env_remove("SMTPW_SPOOL");
    log_to(&mut c, &log2);
    let mut kid = Kid::spawn(c, "smtpw run");
    assert!(
        wait_until(Duration::from_secs(30), || TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "the listener did not start: {}",
        std::fs::read_to_string(&log2).unwrap_or_default()
    );
    let replies = smtp_submit(port, "l0@x.example");
    assert!(replies.contains("250 2.0.0 Ok: queued as "), "{replies}");
    let mut all: Vec<String> = by_submit.clone();
    all.extend(["m0@x.example", "m1@x.example", "l0@x.example"].map(String::from));
    assert!(
        wait_until(Duration::from_secs(60), || received(&mock).len()
            == all.len()),
        "delivered {:?}; log:\n{}",
        received(&mock),
        std::fs::read_to_string(&log2).unwrap_or_default()
    );
    let (status, _) = kid.term_and_wait(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let got = received(&mock);
    for r in &all {
        assert_eq!(got.get(r), Some(&1), "{r} delivered once: {got:?}");
    }
    let q = queue(&["--spool", &url], None);
    assert_eq!(
        (num(&q, "queued"), num(&q, "delivered")),
        (0, all.len() as u64),
        "{q}"
    );
}

/// Without `via` anywhere, `submit` and `sendmail` on a database spool say what is missing, and
/// sendmail exits 75 (the caller keeps the message).
#[test]
fn a_database_spool_without_via_is_refused_with_the_reason() {
    let root = tempfile::tempdir().unwrap();
    let settings = root.path().join("smtpw.toml");
    // No server is needed: the missing node name is found before connecting.
    std::fs::write(
        &settings,
        "[spool]\nurl = \"postgres://nobody@127.0.0.1:1/none\"\n",
    )
    .unwrap();
    let out = sendmail(&settings, &["a@x.example"]);
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--via NODE"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let msg = root.path().join("m.eml");
    std::fs::write(&msg, "Subject: s\n\nx\n").unwrap();
    let rc = root.path().join("r");
    std::fs::write(&rc, "a@x.example\n").unwrap();
    let out = SMTPW
        .command()
        .arg("submit")
        .arg("--settings")
        .arg(&settings)
        .args(["--from", "o@x.example", "--rcpts"])
        .arg(&rc)
        .arg(&msg)
        .env_remove("SMTPW_SPOOL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--via NODE"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
