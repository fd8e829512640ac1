//! The admin endpoint of a running `smtpw run` (OPS-1..3): `/metrics` agrees with the ledger,
//! a real Prometheus parser reads it, the token and loopback rules hold.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use mock_mta::{MockConfig, RcptRule};
use smtpw_testkit::admin::{get, request, samples, wait_up};
use smtpw_testkit::ledger::scan_ledger;
use smtpw_testkit::proc::{free_port, wait_until, LoopbackMock};
use smtpw_testkit::site::Site;
use smtpw_testkit::workload::recipients;

use crate::SMTPW;

/// A relay that fails `*@d1.example` (550) and defers `*@d2.example` (451).
fn picky_relay() -> LoopbackMock {
    let mut mc = MockConfig::iis();
    mc.faults.rcpt_rules = vec![
        RcptRule {
            pattern: "*@d1.example".into(),
            code: 550,
            text: None,
        },
        RcptRule {
            pattern: "*@d2.example".into(),
            code: 451,
            text: None,
        },
    ];
    LoopbackMock::start(mc)
}

fn admin_args(addr: SocketAddr) -> Vec<String> {
    vec!["--admin".into(), addr.to_string()]
}

/// Per (pool, outcome): the ledger's lines.
fn ledger_counts(site: &Site) -> BTreeMap<(String, String), u64> {
    let scan = scan_ledger(&site.ledger);
    assert!(scan.torn.is_empty(), "{:?}", scan.torn);
    let mut m = BTreeMap::new();
    for l in scan.lines {
        let outcome = serde_json::to_value(l.outcome).unwrap();
        *m.entry((l.pool, outcome.as_str().unwrap().to_owned()))
            .or_default() += 1;
    }
    m
}

/// Per (pool, outcome): `smtpw_recipients_total`.
fn metric_counts(text: &str) -> BTreeMap<(String, String), u64> {
    let mut m = BTreeMap::new();
    for (k, v) in samples(text) {
        let Some(labels) = k.strip_prefix("smtpw_recipients_total{") else {
            continue;
        };
        let pool = labels
            .split("pool=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let outcome = labels
            .split("outcome=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        m.insert((pool.to_owned(), outcome.to_owned()), v as u64);
    }
    m
}

#[test]
fn metrics_agree_with_the_ledger_after_failures_and_deferrals() {
    const N: usize = 300;
    let mock = picky_relay();
    let mut site = Site::new(SMTPW);
    site.point_at(mock.port, 2, 20);
    let rcpts = recipients(N);
    site.submit(&rcpts[..150]);
    site.submit(&rcpts[150..]);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut kid = site.run(false, &admin_args(addr));
    assert!(
        wait_up(addr, Duration::from_secs(20)),
        "{}",
        site.log_text()
    );
    // Every recipient tried once (the deferred ones come back only after 30 s).
    assert!(
        wait_until(Duration::from_secs(30), || scan_ledger(&site.ledger)
            .lines
            .len()
            >= N),
        "{}",
        site.log_text()
    );
    // Taken when nothing moves: the same counts before and after reading the ledger.
    let (text, ledger) = loop {
        let a = get(addr, "/metrics");
        let ledger = ledger_counts(&site);
        let b = get(addr, "/metrics");
        if metric_counts(&a) == metric_counts(&b) {
            break (b, ledger);
        }
    };
    let metrics = metric_counts(&text);
    let failed = rcpts.iter().filter(|r| r.ends_with("@d1.example")).count() as u64;
    let deferred = rcpts.iter().filter(|r| r.ends_with("@d2.example")).count() as u64;
    let expect: BTreeMap<(String, String), u64> = [
        (
            ("-".to_owned(), "delivered".to_owned()),
            N as u64 - failed - deferred,
        ),
        (("-".to_owned(), "failed".to_owned()), failed),
        (("-".to_owned(), "deferred".to_owned()), deferred),
    ]
    .into();
    assert_eq!(ledger, expect, "the ledger has what the relay decided");
    assert_eq!(
        metrics, ledger,
        "smtpw_recipients_total == the ledger\n{text}"
    );
    let s = samples(&text);
    // The replies that decided them, per code, and the queue: the deferred ones wait.
    let relay = format!("127.0.0.1:{}", mock.port);
    let reply = |code: u16| s[&format!("smtpw_replies_total{{relay=\"{relay}\",code=\"{code}\"}}")];
    assert_eq!(reply(550), failed as f64, "{text}");
    assert_eq!(reply(451), deferred as f64, "{text}");
    assert_eq!(reply(250), (N as u64 - failed - deferred) as f64, "{text}");
    // The queue's figures are at most 1 s old.
    let deferred_gauge = "smtpw_queue_recipients{pool=\"-\",state=\"deferred\"}";
    let mut last = text.clone();
    assert!(
        wait_until(Duration::from_secs(5), || {
            last = get(addr, "/metrics");
            samples(&last).get(deferred_gauge) == Some(&(deferred as f64))
        }),
        "{last}"
    );
    assert_eq!(
        s["smtpw_delivery_latency_seconds_count"],
        (N as u64 - deferred) as f64,
        "one latency per final outcome\n{text}"
    );
    assert_eq!(
        s["smtpw_ingest_jobs_total{source=\"file\",result=\"accepted\"}"],
        2.0
    );
    kid.term_and_wait(Duration::from_secs(20));
}

/// Python's prometheus_client (the reference parser) reads the whole text; skipped, loudly,
/// where it is not installed (.ci/run installs it in target/venv).
#[test]
fn prometheus_client_parses_the_metrics() {
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/venv/bin/python3");
    let python = if venv.exists() {
        venv
    } else {
        std::path::PathBuf::from("python3")
    };
    let probe = std::process::Command::new(&python)
        .args(["-c", "import prometheus_client"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "SKIPPED prometheus_client_parses_the_metrics: no Python prometheus_client \
             (python3 -m venv target/venv && target/venv/bin/pip install prometheus_client)"
        );
        return;
    }
    let mock = picky_relay();
    let mut site = Site::new(SMTPW);
    site.point_at(mock.port, 1, 10);
    site.submit(&recipients(40));
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut kid = site.run(false, &admin_args(addr));
    assert!(
        wait_up(addr, Duration::from_secs(20)),
        "{}",
        site.log_text()
    );
    // Counted once the outcomes are durable: all 40, every one tried once.
    assert!(wait_until(Duration::from_secs(30), || {
        metric_counts(&get(addr, "/metrics")).values().sum::<u64>() >= 40
    }));
    let text = get(addr, "/metrics");
    kid.term_and_wait(Duration::from_secs(20));
    let script = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\n\
                  fams = {f.name: f for f in p(sys.stdin.read())}\n\
                  n = sum(s.value for s in fams['smtpw_recipients'].samples if s.name == 'smtpw_recipients_total')\n\
                  print(len(fams), int(n), fams['smtpw_delivery_latency_seconds'].type)\n";
    let mut child = std::process::Command::new(&python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fields: Vec<&str> = said.split_whitespace().collect();
    assert!(fields[0].parse::<u32>().unwrap() >= 12, "families: {said}");
    assert_eq!(fields[1], "40", "every recipient counted once: {said}");
    assert_eq!(fields[2], "histogram");
}

#[test]
fn a_non_loopback_admin_address_without_a_token_refuses_to_start() {
    let mock = LoopbackMock::start(MockConfig::iis());
    let mut site = Site::new(SMTPW);
    site.point_at(mock.port, 1, 10);
    site.submit(&recipients(5));
    let out = site
        .run_cmd(
            false,
            &["--admin".into(), format!("0.0.0.0:{}", free_port())],
        )
        .output()
        .unwrap();
    let log = site.log_text();
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(log.contains("not a loopback address"), "{log}");
    assert_eq!(
        mock.mta.journal().delivered_recipients().len(),
        0,
        "nothing was sent"
    );
}

#[test]
fn with_a_token_a_request_without_it_gets_401() {
    let mock = LoopbackMock::start(MockConfig::iis());
    let site = Site::new(SMTPW);
    site.point_at(mock.port, 1, 10);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let token_file = site.dir.path().join("admin.token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let settings = site.dir.path().join("smtpw.toml");
    std::fs::write(
        &settings,
        format!(
            "[admin]\naddress = \"{addr}\"\ntoken_file = \"{}\"\n",
            token_file.display()
        ),
    )
    .unwrap();
    let mut kid = site.run(
        false,
        &["--settings".into(), settings.display().to_string()],
    );
    assert!(
        wait_until(Duration::from_secs(20), || request(
            addr, "GET", "/metrics", None, None
        )
        .is_some()),
        "{}",
        site.log_text()
    );
    let none = request(addr, "GET", "/metrics", None, None).unwrap();
    let wrong = request(addr, "GET", "/api/v1/queue", Some("s3cret-tokeX"), None).unwrap();
    let right = request(addr, "GET", "/metrics", Some("s3cret-token"), None).unwrap();
    kid.term_and_wait(Duration::from_secs(20));
    assert_eq!(none.0, 401, "{none:?}");
    assert_eq!(wrong.0, 401, "{wrong:?}");
    assert_eq!(right.0, 200, "{right:?}");
    assert!(right.1.contains("smtpw_recipients_total"));
    assert!(
        !site.log_text().contains("s3cret-token"),
        "the token is never logged"
    );
}
