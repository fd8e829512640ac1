//! `smtpw ctl` against a running `smtpw run` (OPS-4..7): a suspended pool gets nothing for its
//! time (across a restart) while another drains, then resumes by itself; flush sends a deferred
//! copy at once; cancel fails the rest of a job with the reason in the ledger.

use std::net::SocketAddr;
use std::time::Duration;

use jiff::Timestamp;
use mock_mta::{Faults, MockConfig, RcptRule};
use smtpw_engine::ledger::{LedgerLine, Outcome};
use smtpw_testkit::admin::wait_up;
use smtpw_testkit::ledger::scan_ledger;
use smtpw_testkit::proc::{free_port, wait_until, Kid, LoopbackMock};
use smtpw_testkit::site::Site;

use crate::SMTPW;

fn admin_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

fn start(site: &Site, addr: SocketAddr) -> Kid {
    let kid = site.run(false, &["--admin".into(), addr.to_string()]);
    assert!(
        wait_up(addr, Duration::from_secs(20)),
        "{}",
        site.log_text()
    );
    kid
}

/// `smtpw ctl`: (exit code, stdout, stderr).
fn ctl(addr: SocketAddr, args: &[&str]) -> (i32, String, String) {
    let out = SMTPW.ctl(addr, args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn lines(site: &Site) -> Vec<LedgerLine> {
    let scan = scan_ledger(&site.ledger);
    assert!(scan.torn.is_empty());
    scan.lines
}

fn delivered_in(site: &Site, domain: &str) -> Vec<LedgerLine> {
    lines(site)
        .into_iter()
        .filter(|l| l.outcome == Outcome::Delivered && l.rcpt.ends_with(domain))
        .collect()
}

fn addrs(n: usize, domain: &str) -> Vec<String> {
    (0..n).map(|i| format!("u{i}@{domain}")).collect()
}

#[test]
fn a_suspended_pool_gets_nothing_for_its_time_across_a_restart_then_resumes_by_itself() {
    let mock = LoopbackMock::start(MockConfig::iis());
    let mut site = Site::new(SMTPW);
    site.point_at(mock.port, 2, 10);
    let addr = admin_addr();
    let mut kid = start(&site, addr);
    let (code, out, err) = ctl(
        addr,
        &[
            "--by",
            "alice",
            "suspend",
            "--pool",
            "A",
            "--for",
            "8s",
            "--reason",
            "list owner asked",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let until: Timestamp = v["suspended"]["until"].as_str().unwrap().parse().unwrap();
    site.submit_to_pool(&addrs(20, "pool-a.example"), 'A');
    site.submit(&addrs(20, "pool-default.example"));
    assert!(
        wait_until(Duration::from_secs(6), || delivered_in(
            &site,
            "@pool-default.example"
        )
        .len()
            == 20),
        "the other pool drains meanwhile\n{}",
        site.log_text()
    );
    assert!(delivered_in(&site, "@pool-a.example").is_empty());
    // The suspension is kept across a restart.
    kid.term_and_wait(Duration::from_secs(20));
    let mut kid = start(&site, addr);
    let (code, out, _) = ctl(addr, &["queue", "--json"]);
    assert_eq!(code, 0);
    let q: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(q["suspended"][0]["pool"], "A", "{q}");
    assert_eq!(q["suspended"][0]["by"], "alice", "{q}");
    assert!(
        wait_until(Duration::from_secs(30), || delivered_in(
            &site,
            "@pool-a.example"
        )
        .len()
            == 20),
        "pool A resumes by itself\n{}",
        site.log_text()
    );
    let first = delivered_in(&site, "@pool-a.example")
        .iter()
        .map(|l| l.time)
        .min()
        .unwrap();
    assert!(first >= until, "nothing of pool A before {until}: {first}");
    // Nothing left to resume: the server's message, exit 1.
    let (code, _, err) = ctl(addr, &["resume", "--pool", "A"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no such suspension"), "{err}");
    kid.term_and_wait(Duration::from_secs(20));
    assert_eq!(mock.mta.journal().delivered_recipients().len(), 40);
}

#[test]
fn flush_sends_a_deferred_copy_at_once() {
    let mut mc = MockConfig::iis();
    mc.faults.rcpt_rules = vec![RcptRule {
        pattern: "*".into(),
        code: 451,
        text: None,
    }];
    let mock = LoopbackMock::start(mc);
    let mut site = Site::new(SMTPW);
    site.point_at(mock.port, 1, 10);
    site.submit(&addrs(5, "later.example"));
    let addr = admin_addr();
    let mut kid = start(&site, addr);
    assert!(wait_until(Duration::from_secs(20), || lines(&site).len() == 5));
    let retry_at = lines(&site)[0].retry_at.expect("a deferred line says when");
    mock.mta.set_faults(Faults::default());
    let (code, out, err) = ctl(addr, &["flush"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"flushed_copies\": 1"), "{out}");
    assert!(
        wait_until(Duration::from_secs(5), || delivered_in(
            &site,
            "@later.example"
        )
        .len()
            == 5),
        "{}",
        site.log_text()
    );
    kid.term_and_wait(Duration::from_secs(20));
    for l in delivered_in(&site, "@later.example") {
        assert!(
            l.time < retry_at,
            "delivered at {} before its retry time {retry_at}",
            l.time
        );
    }
}

#[test]
fn cancel_fails_the_rest_of_a_job_with_the_reason_in_the_ledger() {
    let mut mc = MockConfig::iis();
    mc.faults.rcpt_rules = vec![RcptRule {
        pattern: "*@slow.example".into(),
        code: 451,
        text: None,
    }];
    let mock = LoopbackMock::start(mc);
    let mut site = Site::new(SMTPW);
    site.point_at(mock.port, 1, 10);
    let mut rcpts = addrs(15, "fast.example");
    rcpts.extend(addrs(15, "slow.example"));
    site.submit(&rcpts);
    let addr = admin_addr();
    let mut kid = start(&site, addr);
    assert!(wait_until(Duration::from_secs(20), || lines(&site).len() == 30));
    let job = lines(&site)[0].job.to_string();
    // The job as `ctl jobs` lists it: 15 delivered, 15 deferred.
    let (code, out, err) = ctl(addr, &["jobs", "--state", "deferred", "--json"]);
    assert_eq!(code, 0, "{err}");
    let jobs: serde_json::Value = serde_json::from_str(&out).unwrap();
    let j = &jobs["jobs"][0];
    assert_eq!(j["id"].to_string(), job, "{jobs}");
    assert_eq!(
        (
            &j["recipients"],
            &j["delivered"],
            &j["queued"],
            &j["deferred"]
        ),
        (&30.into(), &15.into(), &15.into(), &15.into()),
        "{jobs}"
    );
    let (code, out, err) = ctl(
        addr,
        &[
            "--by",
            "bob",
            "cancel",
            &job,
            "--reason",
            "sent to the wrong list",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["cancelled_recipients"], 15, "{v}");
    // Cancelling it again: nothing left.
    let (code, _, err) = ctl(addr, &["cancel", &job, "--reason", "again"]);
    assert_eq!(code, 1, "{err}");
    let (_, out, _) = ctl(addr, &["queue", "--json"]);
    kid.term_and_wait(Duration::from_secs(20));
    let q: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(q["queue"]["queued"], 0, "{q}");
    let all = lines(&site);
    let failed: Vec<&LedgerLine> = all
        .iter()
        .filter(|l| l.outcome == Outcome::Failed)
        .collect();
    assert_eq!(failed.len(), 15);
    for l in &failed {
        assert!(l.rcpt.ends_with("@slow.example"), "{l:?}");
        assert!(
            l.reply.contains("sent to the wrong list") && l.reply.contains("bob"),
            "the reason and the operator: {}",
            l.reply
        );
    }
    assert_eq!(delivered_in(&site, "@fast.example").len(), 15);
}

#[test]
fn queue_shows_a_relays_last_error_and_next_retry() {
    // Nothing listens on the relay's port: every connection fails.
    let dead = free_port();
    let mut site = Site::new(SMTPW);
    site.point_at(dead, 1, 10);
    site.submit(&addrs(3, "nowhere.example"));
    let addr = admin_addr();
    let mut kid = start(&site, addr);
    let relay = format!("127.0.0.1:{dead}");
    let mut api = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(15), || {
            let (_, out, _) = ctl(addr, &["queue", "--json"]);
            api = serde_json::from_str(&out).unwrap_or_default();
            !api["relays"][&relay]["next_retry"].is_null()
        }),
        "{api}\n{}",
        site.log_text()
    );
    let error = api["relays"][&relay]["last_error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!error.is_empty(), "{api}");
    // `smtpw queue` (from the spool directory) shows the same, from the engine's status file.
    let mut offline = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(5), || {
            offline = site.queue();
            offline["rates"]["relays"][&relay]["last_error"] == error.as_str()
        }),
        "{offline}"
    );
    let human = SMTPW.output(&["queue", "--spool", site.spool.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("relays (last error, next retry):") && text.contains(&relay),
        "{text}"
    );
    let (_, human, _) = ctl(addr, &["queue"]);
    assert!(
        human.contains(&relay) && human.contains("last error"),
        "{human}"
    );
    kid.term_and_wait(Duration::from_secs(20));
}

/// OPS-5 for a relay: `ctl suspend --relay HOST:PORT` keeps that relay's copies queued while the
/// other relay's workers keep delivering; `ctl resume --relay` releases them; a second
/// suspension ends by itself at its time, and nothing goes to the relay before it.
#[test]
fn a_suspended_relay_gets_nothing_while_another_delivers_then_resumes() {
    let (ma, mb) = (
        LoopbackMock::start(MockConfig::iis()),
        LoopbackMock::start(MockConfig::iis()),
    );
    let mut site = Site::new(SMTPW);
    std::fs::write(
        &site.cfg,
        format!(
            "NODE=LISTSERV.EXAMPLE.ORG\nSMTP_FORWARD=127.0.0.1:{b}\n\
             SMTP_FORWARD_1=2*127.0.0.1:{a};POOL=A\nSMTP_FORWARD_2=2*127.0.0.1:{b};POOL=B\n\
             MAXBSMTP=10\n",
            a = ma.port,
            b = mb.port
        ),
    )
    .unwrap();
    let addr = admin_addr();
    let mut kid = start(&site, addr);
    let relay_a = format!("127.0.0.1:{}", ma.port);
    let (code, out, err) = ctl(
        addr,
        &[
            "suspend",
            "--relay",
            &relay_a,
            "--for",
            "10m",
            "--reason",
            "relay maintenance",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    site.submit_to_pool(&addrs(20, "pool-a.example"), 'A');
    site.submit_to_pool(&addrs(20, "pool-b.example"), 'B');
    assert!(
        wait_until(Duration::from_secs(20), || delivered_in(
            &site,
            "@pool-b.example"
        )
        .len()
            == 20),
        "the other relay delivers meanwhile\n{}",
        site.log_text()
    );
    // Give the suspended relay's workers time they would have used.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        ma.mta.stats().recipients_accepted,
        0,
        "nothing to the suspended relay"
    );
    assert!(delivered_in(&site, "@pool-a.example").is_empty());
    let (code, out, _) = ctl(addr, &["queue", "--json"]);
    assert_eq!(code, 0);
    let q: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(q["suspended"][0]["relay"], relay_a.as_str(), "{q}");

    let (code, out, err) = ctl(addr, &["resume", "--relay", &relay_a]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        wait_until(Duration::from_secs(20), || delivered_in(
            &site,
            "@pool-a.example"
        )
        .len()
            == 20),
        "resumed: the relay's copies go\n{}",
        site.log_text()
    );
    assert_eq!(ma.mta.stats().recipients_accepted, 20);

    // A suspension that ends by itself.
    let (code, out, err) = ctl(
        addr,
        &[
            "suspend", "--relay", &relay_a, "--for", "3s", "--reason", "short",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let until: Timestamp = v["suspended"]["until"].as_str().unwrap().parse().unwrap();
    site.submit_to_pool(&addrs(10, "pool-a2.example"), 'A');
    assert!(
        wait_until(Duration::from_secs(20), || delivered_in(
            &site,
            "@pool-a2.example"
        )
        .len()
            == 10),
        "the suspension expires by itself\n{}",
        site.log_text()
    );
    let first = delivered_in(&site, "@pool-a2.example")
        .iter()
        .map(|l| l.time)
        .min()
        .unwrap();
    assert!(
        first >= until,
        "nothing to the relay before {until}: {first}"
    );
    kid.term_and_wait(Duration::from_secs(20));
    assert_eq!(ma.mta.stats().recipients_accepted, 30);
    assert_eq!(mb.mta.stats().recipients_accepted, 20);
}
