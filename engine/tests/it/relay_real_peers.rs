//! TLS and AUTH against real peers nobody here wrote (TXN-11, TXN-12), in real time over
//! 127.0.0.1: Python's aiosmtpd with STARTTLS and AUTH required, and Postfix's smtpd with
//! `smtpd_tls_security_level = encrypt`. The engine (TcpConnector, SQLite spool, system clock)
//! delivers a small backlog; what the peer received is the evidence.
//!
//! `.ci/run` installs both (a venv in target/venv with aiosmtpd; the postfix package). Without
//! them these tests say loudly that they skipped and how to get what they need; under CI
//! (`CI=true`) a missing peer is a failure instead.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mock_mta::TestCertificates;
use smtpw_engine::clock::SystemClock;
use smtpw_engine::engine::{Engine, EngineOptions};
use smtpw_engine::net::TcpConnector;
use smtpw_engine::settings::{RelayAuth, RelaySettings, Secret, TlsMode};
use smtpw_engine::spool::{Spool, SpoolOptions, SqliteSpool};
use smtpw_testkit::postfix::PostfixInstance;
use smtpw_testkit::proc::free_port;

const RCPTS: usize = 40;

/// Skips (loudly) or, under CI, fails.
fn missing(what: &str, how: &str) {
    if std::env::var_os("CI").is_some_and(|v| v == "true") {
        panic!("{what} is missing under CI: {how}");
    }
    eprintln!("SKIPPED: {what} is missing; {how}");
}

fn venv_python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/venv/bin/python")
}

/// Runs the engine until its queue is empty (within `limit`) against `site` with `relay` for
/// 127.0.0.1; returns the number delivered.
async fn deliver(port: u16, relay: RelaySettings, dir: &Path, limit: Duration) -> u64 {
    let clock = SystemClock::shared();
    let cfg = smtpw_engine::config::parse_str(
        &format!(
            "NODE=LISTSERV.EXAMPLE.ORG\nSMTP_FORWARD=127.0.0.1:{port}\nSMTP_FORWARD_1=2*127.0.0.1:{port}\nMAXBSMTP=10\n"
        ),
        "SITE.CFG",
    )
    .unwrap();
    let spool = Arc::new(
        SqliteSpool::open(
            &dir.join("spool"),
            SpoolOptions::from_site(&cfg),
            clock.clone(),
        )
        .unwrap(),
    );
    smtpw_engine::spool::submit(
        &dir.join("spool"),
        "owner@lists.example.org",
        None,
        (0..RCPTS).map(|i| format!("u{i}@peer.example")),
        smtpw_testkit::workload::message(2000).as_bytes(),
    )
    .unwrap();
    let opts = EngineOptions {
        until_empty: true,
        ..smtpw_testkit::topology::options_with_relay("127.0.0.1", relay)
    };
    let engine = Engine::builder(cfg, spool.clone(), dir.join("spool"))
        .connector(Arc::new(TcpConnector::new(Duration::from_secs(5))))
        .clock(clock)
        .options(opts)
        .build();
    let s = tokio::time::timeout(limit, engine.run())
        .await
        .unwrap_or_else(|_| {
            engine.shutdown().cancel();
            panic!(
                "the queue did not empty within {limit:?}: {} copies left",
                spool.queued_copies()
            )
        });
    s.delivered
}

const AIOSMTPD: &str = r#"
import sys, ssl, threading
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
port, cert, key, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
class Handler:
    async def handle_DATA(self, server, session, envelope):
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else "-"
        tls = session.ssl.get("cipher", ("-",))[1] if session.ssl else "plain"
        with open(out, "a") as f:
            for r in envelope.rcpt_tos:
                f.write(f"{r} {tls} {login}\n")
        return "250 2.0.0 OK"
def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"lists" and auth_data.password == b"pw-aiosmtpd"
    return AuthResult(success=ok, auth_data=auth_data if ok else None)
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
c = Controller(Handler(), hostname="127.0.0.1", port=port, tls_context=ctx,
               require_starttls=True, auth_required=True, auth_require_tls=True,
               authenticator=authenticator, server_hostname="localhost")
c.start()
print("ready", flush=True)
sys.stdin.read()
c.stop()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiosmtpd_with_starttls_and_auth_required_gets_every_recipient_over_tls() {
    let py = venv_python();
    if !py.is_file() {
        return missing(
            "aiosmtpd (target/venv)",
            "run .ci/run, or: python3 -m venv target/venv && target/venv/bin/pip install aiosmtpd",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCertificates::generate("localhost").unwrap();
    let (cert, key, ca, out) = (
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
        dir.path().join("ca.pem"),
        dir.path().join("received.txt"),
    );
    std::fs::write(&cert, &certs.chain_pem).unwrap();
    std::fs::write(&key, &certs.key_pem).unwrap();
    std::fs::write(&ca, &certs.ca_pem).unwrap();
    let port = free_port();
    let mut child = std::process::Command::new(&py)
        .arg("-c")
        .arg(AIOSMTPD)
        .arg(port.to_string())
        .args([&cert, &key, &out])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The script ends when its standard input closes: at the end of the test, or when `child`
    // is dropped by a failing assertion.
    {
        use std::io::BufRead;
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "aiosmtpd did not start");
    }
    // The certificate names localhost; the relay is 127.0.0.1: it is in the certificate too.
    let delivered = deliver(
        port,
        RelaySettings {
            tls: TlsMode::Required,
            ca_file: Some(ca),
            auth: Some(RelayAuth::Password {
                username: "lists".into(),
                password: Secret::new("pw-aiosmtpd"),
            }),
            ..RelaySettings::default()
        },
        dir.path(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(delivered, RCPTS as u64);
    let got = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines.len(), RCPTS, "{got}");
    assert!(
        lines
            .iter()
            .all(|l| l.ends_with(" TLSv1.3 lists") || l.ends_with(" TLSv1.2 lists")),
        "{got}"
    );
    drop(child.stdin.take());
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_smtpd_with_tls_encrypt_gets_every_recipient() {
    if let Some(why) = smtpw_testkit::postfix::unavailable() {
        return missing(
            &format!("Postfix ({why})"),
            "run .ci/run, or: apt-get install postfix",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCertificates::generate("localhost").unwrap();
    // Postfix relays what it accepts to a mock-mta (the sink) on another loopback port.
    let clock = SystemClock::shared();
    let sink = mock_mta::MockMta::new(mock_mta::MockConfig::iis(), clock);
    let sink_server = sink.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let pf = PostfixInstance::start(
        &dir.path().join("postfix"),
        sink_server.local_addr().port(),
        &certs,
        "smtpd_tls_security_level = encrypt\n",
    )
    .unwrap_or_else(|e| panic!("the Postfix instance: {e}"));
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &certs.ca_pem).unwrap();
    let delivered = deliver(
        pf.port(),
        RelaySettings {
            tls: TlsMode::Required,
            ca_file: Some(ca),
            ..RelaySettings::default()
        },
        dir.path(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(delivered, RCPTS as u64);
    // Postfix passes every recipient on to the sink.
    let t0 = std::time::Instant::now();
    while sink.journal().delivered_recipients().len() < RCPTS
        && t0.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut got = sink.journal().delivered_recipients();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), RCPTS);
    let log = pf.log();
    assert!(
        log.contains("TLS connection established from"),
        "Postfix's log shows no TLS session:\n{log}"
    );
    drop(pf);
    sink_server.shutdown().await;
}
