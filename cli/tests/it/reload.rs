//! Live reload of a running `smtpw run` (OPS-8): a reload adds workers (the relay sees more
//! connections) without losing or repeating a recipient; a bad SITE.CFG changes nothing and
//! every error is reported.

use std::net::SocketAddr;
use std::time::Duration;

use mock_mta::MockConfig;
use smtpw_testkit::admin::{get, samples, wait_up};
use smtpw_testkit::ledger::scan_ledger;
use smtpw_testkit::proc::{free_port, received, wait_until, write_site_cfg, LoopbackMock};
use smtpw_testkit::site::Site;
use smtpw_testkit::workload::recipients;

use crate::SMTPW;

fn workers_counted(addr: SocketAddr) -> f64 {
    samples(&get(addr, "/metrics"))
        .iter()
        .filter(|(k, _)| k.starts_with("smtpw_workers{"))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn a_reload_adds_workers_and_a_bad_one_changes_nothing() {
    const N: usize = 600;
    let mut mc = MockConfig::iis();
    // 100 ms per message: one worker needs about 6 s for the 60 copies.
    mc.faults.command_latency_ms.insert("DOT".into(), 100);
    let mock = LoopbackMock::start(mc);
    let mut site = Site::new(SMTPW);
    site.point_at(mock.port, 1, 10);
    site.submit(&recipients(N));
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut kid = site.run(true, &["--admin".into(), addr.to_string()]);
    assert!(
        wait_up(addr, Duration::from_secs(20)),
        "{}",
        site.log_text()
    );
    assert!(wait_until(Duration::from_secs(10), || mock
        .mta
        .stats()
        .messages
        >= 2));
    assert_eq!(mock.mta.stats().current_connections, 1, "one worker");
    let before = workers_counted(addr);

    // Three workers.
    write_site_cfg(site.dir.path(), mock.port, 3, 10);
    let out = SMTPW.ctl(addr, &["reload"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("worker 2") && said.contains("starts"),
        "{said}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || mock
            .mta
            .stats()
            .current_connections
            >= 3),
        "the connection count rises to 3: {}\n{}",
        mock.mta.stats().current_connections,
        site.log_text()
    );
    let three = workers_counted(addr);
    assert_eq!(three, before + 2.0, "two workers more");

    // A SITE.CFG with errors: refused with every error, nothing changes.
    std::fs::write(
        &site.cfg,
        format!(
            "SMTP_FORWARD=127.0.0.1:{}\nSMTP_FORWARD_1=5*\nMAXBSMTP=abc\n",
            mock.port
        ),
    )
    .unwrap();
    let out = SMTPW.ctl(addr, &["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let file = site.cfg.display().to_string();
    assert!(
        err.contains(&format!("{file}:2:")) && err.contains(&format!("{file}:3:")),
        "every error, located: {err}"
    );
    assert_eq!(workers_counted(addr), three, "the same workers");
    assert!(site.log_text().contains("reload refused, nothing changed"));

    // Everything delivered once: nothing lost or repeated across the reloads.
    assert!(
        kid.wait_for(Duration::from_secs(60))
            .is_some_and(|s| s.success()),
        "{}",
        site.log_text()
    );
    let got = received(&mock);
    assert_eq!(got.len(), N);
    assert!(got.values().all(|n| *n == 1), "no recipient twice");
    let lines = scan_ledger(&site.ledger).lines;
    assert_eq!(lines.len(), N, "one ledger line each");
}

/// OPS-8: a reload of smtpw.toml that switches a relay's credentials applies them to the next
/// connection each worker opens: the relay's journal shows the old user for the job before the
/// reload and the new user for every transaction of the job after it; `ctl reload` says what
/// changed without the password; a change of `[listen]` is reported as taking effect at restart.
#[test]
fn a_reload_switches_a_relays_credentials_for_the_next_connection() {
    let mut mc = MockConfig::iis();
    mc.auth.users.insert("old-user".into(), "old-secret".into());
    mc.auth.users.insert("new-user".into(), "new-secret".into());
    mc.auth.require = true;
    let mock = LoopbackMock::start(mc);
    let mut site = Site::new(SMTPW);
    site.point_at(mock.port, 2, 10);
    let toml = site.dir.path().join("smtpw.toml");
    let write = |user: &str, pass: &str, listen: &str| {
        std::fs::write(
            &toml,
            format!(
                "[relays.\"127.0.0.1\"]\ntls = \"none\"\nallow_plaintext_auth = true\n\
                 username = \"{user}\"\npassword = \"{pass}\"\n{listen}"
            ),
        )
        .unwrap();
    };
    let listen_a = format!("[listen]\naddresses = [\"127.0.0.1:{}\"]\n", free_port());
    write("old-user", "old-secret", &listen_a);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut kid = site.run(
        false,
        &[
            "--admin".into(),
            addr.to_string(),
            "--settings".into(),
            toml.display().to_string(),
        ],
    );
    assert!(
        wait_up(addr, Duration::from_secs(20)),
        "{}",
        site.log_text()
    );
    let first: Vec<String> = recipients(40);
    site.submit(&first);
    assert!(
        wait_until(Duration::from_secs(30), || received(&mock).len() == 40),
        "{}",
        site.log_text()
    );

    let listen_b = format!("[listen]\naddresses = [\"127.0.0.1:{}\"]\n", free_port());
    write("new-user", "new-secret", &listen_b);
    let out = SMTPW.ctl(addr, &["reload"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("credentials changed: user old-user -> new-user"),
        "{said}"
    );
    assert!(
        said.contains("[listen] changed, takes effect at restart"),
        "{said}"
    );
    assert!(
        !said.contains("secret") && !site.log_text().contains("new-secret"),
        "{said}"
    );

    let second: Vec<String> = recipients(80)[40..].to_vec();
    site.submit(&second);
    assert!(
        wait_until(Duration::from_secs(30), || received(&mock).len() == 80),
        "{}",
        site.log_text()
    );
    let journal = mock.mta.journal();
    let user_of = |r: &String| -> Vec<Option<String>> {
        journal
            .accepted_transactions()
            .into_iter()
            .filter(|t| t.accepted_rcpts().any(|x| &x.addr == r))
            .map(|t| t.user.clone())
            .collect()
    };
    for r in &first {
        assert_eq!(user_of(r), [Some("old-user".to_string())], "{r}");
    }
    for r in &second {
        assert_eq!(user_of(r), [Some("new-user".to_string())], "{r}");
    }
    let (status, _) = kid.term_and_wait(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{}", site.log_text());
}

/// OPS-8: a reloaded MAXBSMTP splits the jobs ingested after the reload: a job of 30 before
/// (MAXBSMTP=10) has 3 copies, one of 30 after (MAXBSMTP=5) has 6, as the ledger's copy ids
/// say; every recipient delivered once.
#[test]
fn a_reloaded_maxbsmtp_splits_the_jobs_ingested_after_it() {
    let mock = LoopbackMock::start(MockConfig::iis());
    let mut site = Site::new(SMTPW);
    site.point_at(mock.port, 1, 10);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut kid = site.run(false, &["--admin".into(), addr.to_string()]);
    assert!(
        wait_up(addr, Duration::from_secs(20)),
        "{}",
        site.log_text()
    );
    let first = recipients(30);
    site.submit(&first);
    assert!(
        wait_until(Duration::from_secs(30), || scan_ledger(&site.ledger)
            .lines
            .len()
            == 30),
        "{}",
        site.log_text()
    );
    write_site_cfg(site.dir.path(), mock.port, 1, 5);
    let out = SMTPW.ctl(addr, &["reload"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("MAXBSMTP 10 -> 5"), "{said}");
    let second = recipients(60)[30..].to_vec();
    site.submit(&second);
    assert!(
        wait_until(Duration::from_secs(30), || scan_ledger(&site.ledger)
            .lines
            .len()
            == 60),
        "{}",
        site.log_text()
    );
    let lines = scan_ledger(&site.ledger).lines;
    let copies = |rcpts: &[String]| {
        lines
            .iter()
            .filter(|l| rcpts.contains(&l.rcpt))
            .map(|l| l.copy)
            .collect::<std::collections::BTreeSet<i64>>()
            .len()
    };
    assert_eq!(copies(&first), 3, "before the reload: copies of 10");
    assert_eq!(copies(&second), 6, "after the reload: copies of 5");
    let got = received(&mock);
    assert_eq!(got.len(), 60);
    assert!(got.values().all(|n| *n == 1));
    let (status, _) = kid.term_and_wait(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{}", site.log_text());
}
