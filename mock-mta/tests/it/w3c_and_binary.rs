//! The IIS W3C log (headers, fields, escaping, time-taken from the injected clock, a new file at
//! the date change) and the `mock-mta` binary (options, journal file, summary on SIGTERM).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use jiff::civil::date;
use mock_mta::journal::{Journal, TransactionRecord};
use mock_mta::{MockConfig, MockMta, W3cConfig, W3cFieldSet};

#[tokio::test(start_paused = true)]
async fn w3c_log_records_each_command_and_rolls_at_midnight() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_h, clock) = vclock(date(2026, 11, 22).at(23, 59, 58, 0));
    let mut cfg = MockConfig::iis();
    cfg.w3c = Some(W3cConfig {
        dir: dir.path().to_path_buf(),
        fields: W3cFieldSet::Recommended,
    });
    cfg.faults.command_latency_ms.insert("RCPT".into(), 1500);
    let mta = MockMta::new(cfg, clock);
    let (mut c, h) = connect(&mta);
    c.reply().await;
    c.cmd("EHLO client host").await; // EHLO name "client"; the query keeps "+client+host"
    c.cmd("MAIL FROM:<a@src.example>").await;
    c.cmd("RCPT TO:<b@dst.example>").await; // 1.5 s
    c.cmd("DATA").await;
    c.send(&mock_mta::dot_stuff(b"Subject: w3c\r\n\r\nhi\r\n"))
        .await;
    c.reply().await;
    tokio::time::sleep(Duration::from_secs(2)).await; // past midnight
    c.cmd("QUIT").await;
    h.await.expect("session");

    let day1 = std::fs::read_to_string(dir.path().join("ex261122.log")).expect("day 1 file");
    let day2 = std::fs::read_to_string(dir.path().join("ex261123.log")).expect("day 2 file");
    let lines: Vec<&str> = day1.lines().collect();
    assert_eq!(
        lines[0],
        "#Software: Microsoft Internet Information Services 6.0"
    );
    assert_eq!(lines[1], "#Version: 1.0");
    assert_eq!(lines[2], "#Date: 2026-11-22 23:59:58");
    assert_eq!(
        lines[3],
        "#Fields: date time c-ip cs-username cs-method cs-uri-query sc-status sc-win32-status sc-bytes cs-bytes time-taken"
    );
    assert!(day1.contains("\r\n"), "CRLF line ends as on Windows");
    assert_eq!(
        lines[4],
        "2026-11-22 23:59:58 127.0.0.1 client EHLO +client+host 250 0 204 18 0"
    );
    assert_eq!(
        lines[5],
        "2026-11-22 23:59:58 127.0.0.1 client MAIL +FROM:<a@src.example> 250 0 38 27 0"
    );
    assert_eq!(
        lines[6],
        "2026-11-22 23:59:59 127.0.0.1 client RCPT +TO:<b@dst.example> 250 0 25 25 1500"
    );
    let data: Vec<&str> = lines[7].split(' ').collect();
    assert_eq!(data.len(), 11);
    assert_eq!((data[4], data[6], data[9]), ("DATA", "250", "20"));
    assert!(data[5].starts_with("<MOCK-IIS"));
    let d2: Vec<&str> = day2.lines().collect();
    assert_eq!(d2[2], "#Date: 2026-11-23 00:00:01");
    assert_eq!(
        d2[4],
        "2026-11-23 00:00:01 127.0.0.1 client QUIT - 221 0 69 6 0"
    );
}

#[tokio::test(start_paused = true)]
async fn w3c_full_field_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_h, clock) = vclock(date(2026, 11, 22).at(8, 0, 0, 0));
    let mut cfg = MockConfig::iis();
    cfg.w3c = Some(W3cConfig {
        dir: dir.path().to_path_buf(),
        fields: W3cFieldSet::Full,
    });
    let mta = MockMta::new(cfg, clock);
    let (client, server) = tokio::io::duplex(64 * 1024);
    let m = mta.clone();
    let h = tokio::spawn(async move {
        m.serve_stream_at(server, peer(), "10.0.0.5:25".parse().expect("addr"))
            .await
    });
    let mut c = Raw::new(client);
    c.reply().await;
    c.cmd("HELO h.example").await;
    c.cmd("QUIT").await;
    h.await.expect("session");
    let log = std::fs::read_to_string(dir.path().join("ex261122.log")).expect("file");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines[3], format!("#Fields: {}", mock_mta::w3c::FULL_FIELDS));
    let f: Vec<&str> = lines[4].split(' ').collect();
    assert_eq!(f.len(), 22);
    assert_eq!(
        &f[..9],
        [
            "2026-11-22",
            "08:00:00",
            "127.0.0.1",
            "h.example",
            "SMTPSVC1",
            "MOCK-IIS",
            "10.0.0.5",
            "25",
            "HELO"
        ]
    );
    assert_eq!(f[17], "SMTP");
}

/// Start the binary, wait for its "listening on" line, return the child and the port.
fn start(args: &[&str]) -> (std::process::Child, u16) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mock-mta"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let port = loop {
        let l = lines.next().expect("a start-up line").expect("utf8");
        if let Some(rest) = l.split(" listening on ").nth(1) {
            let addr = rest.split(' ').next().expect("addr");
            break addr
                .rsplit(':')
                .next()
                .expect("port")
                .parse()
                .expect("port number");
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, port)
}

fn stop(mut child: std::process::Child) -> String {
    let pid = child.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "mock-mta did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    assert!(out.status.success(), "clean exit: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const PY_SEND: &str = r#"
import smtplib, sys, json
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=10)
r1 = s.sendmail('a@src.example', ['b@dst.example', 'c@dst.example', 'd@dst.example'], 'Subject: 1\r\n\r\none\r\n')
r2 = s.sendmail('a@src.example', ['e@dst.example', 'x@bad.example'], 'Subject: 2\r\n\r\ntwo\r\n')
s.quit()
print(json.dumps({k: v[0] for k, v in list(r1.items()) + list(r2.items())}))
"#;

#[test]
fn binary_runs_with_options_config_journal_and_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("mock.toml");
    std::fs::write(
        &cfg,
        "hostname = \"relay.example.net\"\n[profile]\nmax_message_kb = 512\n[[faults.rcpt_rules]]\npattern = \"*@bad.example\"\ncode = 550\n",
    )
    .expect("config");
    let journal = dir.path().join("journal.jsonl");
    let w3c = dir.path().join("logs");
    let (child, port) = start(&[
        "--listen",
        "127.0.0.1:0",
        "--profile",
        "xp",
        "--max-recipients",
        "2",
        "--too-many-code",
        "452",
        "--config",
        cfg.to_str().expect("path"),
        "--journal",
        journal.to_str().expect("path"),
        "--w3c-log",
        w3c.to_str().expect("path"),
    ]);
    let out = Command::new("timeout")
        .args(["30", "python3", "-c", PY_SEND, &port.to_string()])
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refused: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        refused,
        serde_json::json!({"d@dst.example": 452, "x@bad.example": 550})
    );
    // The journal is flushed as it goes: readable while the server runs.
    let j = Journal::read_file(&journal).expect("journal");
    let txs: Vec<&TransactionRecord> = j.transactions().collect();
    assert_eq!(txs.len(), 2);
    assert!(txs[0].accepted);
    assert_eq!(txs[0].rcpts[2].reply, "452 4.5.3 Too many recipients");
    assert_eq!(txs[1].rcpts[1].reply, "550 5.1.1 User unknown");
    assert!(txs[0]
        .data_reply
        .as_deref()
        .expect("reply")
        .contains("@relay.example.net>"));
    let summary = stop(child);
    assert!(
        summary.contains("sessions 1, messages 2, recipients accepted 3, rejected 2"),
        "{summary}"
    );
    let logs: Vec<_> = std::fs::read_dir(&w3c).expect("w3c dir").collect();
    assert_eq!(logs.len(), 1);
}

#[test]
fn toml_config_merges_over_a_profile() {
    let base = MockConfig::xp();
    let c = MockConfig::from_toml_over(
        &base,
        r#"
hostname = "smtp.example.net"
keep_bodies = true
[profile]
max_recipients = 0
too_many_code = 452
relay_allow = ["10.0.0.0/8"]
[faults]
schedule = ["down 10:00-10:05", "latency=200 12:00-13:00"]
close_after_messages = 5
[[faults.rcpt_rules]]
pattern = "*@slow.example"
code = 451
[faults.command_latency_ms]
RCPT = 100
"#,
    )
    .expect("parses");
    assert_eq!(c.hostname, "smtp.example.net");
    assert_eq!(c.profile.max_connections, Some(10), "kept from the xp base");
    assert_eq!(c.profile.max_recipients, None, "0 = no limit");
    assert_eq!(c.profile.too_many_code, 452);
    assert_eq!(c.profile.max_message_kb, Some(2048));
    assert_eq!(c.faults.schedule.len(), 2);
    assert_eq!(c.faults.schedule[1].to_string(), "latency=200 12:00-13:00");
    assert_eq!(c.faults.rcpt_rules[0].code, 451);
    assert_eq!(c.faults.command_latency_ms["RCPT"], 100);
    assert!(c.validate().is_ok());
    assert!(
        MockConfig::from_toml_over(&base, "[profile]\nmax_recipents = 5\n").is_err(),
        "typos are errors"
    );
    assert!(
        MockConfig::from_toml_over(&base, "[faults]\nschedule = [\"up 1:00-2:00\"]\n").is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn connect_duplex_refuses_during_an_outage() {
    let (_h, clock) = vclock(date(2026, 11, 22).at(9, 59, 0, 0));
    let mut cfg = MockConfig::iis();
    cfg.faults.schedule = vec!["down 10:00-10:05".parse().expect("entry")];
    let mta = MockMta::new(cfg, clock);
    let s = mta.connect_duplex(peer()).expect("up at 09:59");
    let mut c = Raw::new(s);
    assert_eq!(c.reply().await.code, 220);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let e = mta.connect_duplex(peer()).expect_err("down at 10:00");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert!(mta.connect_duplex(peer()).is_ok(), "up again at 10:05");
}
