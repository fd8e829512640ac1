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
