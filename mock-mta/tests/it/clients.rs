//! Independent clients over loopback TCP: lettre (Rust) and Python's standard smtplib.

use std::process::Command;
use std::time::Duration;

use lettre::transport::smtp::AsyncSmtpTransport;
use lettre::{AsyncTransport, Message, Tokio1Executor};
use mock_mta::{Faults, MockConfig, MockMta, RcptRule};
use smtpw_clock::SystemClock;

const T: Duration = Duration::from_secs(30);

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(T, f)
        .await
        .expect("test finished in time")
}

fn faulty_config() -> MockConfig {
    let mut cfg = MockConfig::iis();
    cfg.faults = Faults {
        rcpt_rules: vec![
            RcptRule {
                pattern: "*@bad.example".into(),
                code: 550,
                text: None,
            },
            RcptRule {
                pattern: "*@slow.example".into(),
                code: 451,
                text: None,
            },
        ],
        ..Faults::default()
    };
    cfg.keep_bodies = true;
    cfg
}

fn lettre_to(port: u16) -> AsyncSmtpTransport<Tokio1Executor> {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .timeout(Some(Duration::from_secs(10)))
        .build()
}

fn email(to: &[String], body: &str) -> Message {
    let mut b = Message::builder()
        .from("Sender <sender@src.example>".parse().expect("from"))
        .subject("lettre test");
    for t in to {
        b = b.to(t.parse().expect("to"));
    }
    b.body(body.to_string()).expect("message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lettre_delivers_and_sees_exact_codes() {
    within(async {
        let mta = MockMta::new(faulty_config(), SystemClock::shared());
        let server = mta
            .listen("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("listen");
        let t = lettre_to(server.local_addr().port());

        let ok = t
            .send(email(
                &["a@dst.example".into(), "b@dst.example".into()],
                "Hello\r\n.dot\r\n",
            ))
            .await
            .expect("delivered");
        assert_eq!(ok.code().to_string(), "250");
        assert!(ok
            .message()
            .next()
            .expect("text")
            .ends_with("Queued mail for delivery"));

        // lettre aborts a message on any refused RCPT: it shows the exact code.
        let bad = t
            .send(email(
                &["a@dst.example".into(), "x@bad.example".into()],
                "x",
            ))
            .await
            .expect_err("550");
        assert_eq!(bad.status().map(|c| c.to_string()).as_deref(), Some("550"));
        let slow = t
            .send(email(&["y@slow.example".into()], "x"))
            .await
            .expect_err("451");
        assert_eq!(slow.status().map(|c| c.to_string()).as_deref(), Some("451"));
        assert!(slow.is_transient());

        let many: Vec<String> = (0..101).map(|i| format!("r{i}@dst.example")).collect();
        let too_many = t
            .send(email(&many, "x"))
            .await
            .expect_err("552 on the 101st");
        assert_eq!(
            too_many.status().map(|c| c.to_string()).as_deref(),
            Some("552")
        );

        server.shutdown().await;
        let j = mta.journal();
        let acc = j.accepted_transactions();
        assert_eq!(acc.len(), 1);
        assert_eq!(acc[0].mail_from, "sender@src.example");
        let body = acc[0].body.as_deref().expect("kept body");
        assert!(body.contains("Subject: lettre test\r\n"), "{body}");
        assert!(
            body.contains("\r\n\r\nHello\r\n.dot\r\n"),
            "unstuffed: {body:?}"
        );
        let rejected: Vec<(String, u16)> = j
            .rcpt_replies()
            .into_iter()
            .filter(|r| r.code != 250)
            .map(|r| (r.addr.clone(), r.code))
            .collect();
        assert_eq!(
            rejected,
            [
                ("x@bad.example".to_string(), 550),
                ("y@slow.example".to_string(), 451),
                ("r100@dst.example".to_string(), 552)
            ]
        );
    })
    .await;
}

/// Run an inline Python script (stdlib only) with the port as argv[1]; it prints one JSON value.
fn python(script: &str, port: u16) -> serde_json::Value {
    let out = Command::new("timeout")
        .args(["30", "python3", "-c", script, &port.to_string()])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python printed JSON")
}

const PY_LIMITS: &str = r#"
import smtplib, sys, json, hashlib
port = int(sys.argv[1])
res = {}
s = smtplib.SMTP('127.0.0.1', port, timeout=10)
res['banner'] = s.ehlo('py.example')[1].decode().split('\n')
# 150 recipients: smtplib returns the refused ones
rcpts = ['r%d@dst.example' % i for i in range(150)]
msg = 'Subject: py\r\n\r\nline one\r\n.starts with a dot\r\n'
refused = s.sendmail('py@src.example', rcpts + ['x@bad.example', 'y@slow.example'], msg)
res['refused'] = {k: [v[0], v[1].decode()] for k, v in refused.items()}
res['sha256'] = hashlib.sha256(msg.encode()).hexdigest()
# all refused
try:
    s.sendmail('py@src.example', ['x@bad.example'], msg)
except smtplib.SMTPRecipientsRefused as e:
    res['all_refused'] = {k: [v[0], v[1].decode()] for k, v in e.recipients.items()}
# over-size: smtplib declares SIZE= from the length
try:
    s.sendmail('py@src.example', ['a@dst.example'], 'x' * (2048 * 1024 + 10))
except smtplib.SMTPSenderRefused as e:
    res['size'] = [e.smtp_code, e.smtp_error.decode()]
# over-size without SIZE= (HELO session): discarded, 552 after the dot
s.quit()
s = smtplib.SMTP('127.0.0.1', port, timeout=10)
s.helo('py.example')
try:
    s.sendmail('py@src.example', ['a@dst.example'], 'y' * (2048 * 1024 + 10))
except smtplib.SMTPDataError as e:
    res['data_size'] = [e.smtp_code, e.smtp_error.decode()]
res['after'] = s.noop()[0]
s.quit()
print(json.dumps(res))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_sees_every_limit() {
    within(async {
        let mta = MockMta::new(faulty_config(), SystemClock::shared());
        let server = mta
            .listen("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("listen");
        let port = server.local_addr().port();
        let v = tokio::task::spawn_blocking(move || python(PY_LIMITS, port))
            .await
            .expect("task");
        let banner: Vec<String> = serde_json::from_value(v["banner"].clone()).expect("banner");
        assert!(banner.contains(&"SIZE 2097152".to_string()));
        assert!(banner.contains(&"PIPELINING".to_string()));
        let refused = v["refused"].as_object().expect("refused");
        assert_eq!(refused.len(), 52);
        for i in 100..150 {
            assert_eq!(
                refused[&format!("r{i}@dst.example")],
                serde_json::json!([552, "5.5.3 Too many recipients"])
            );
        }
        assert_eq!(
            refused["x@bad.example"],
            serde_json::json!([552, "5.5.3 Too many recipients"])
        );
        assert_eq!(
            v["all_refused"]["x@bad.example"],
            serde_json::json!([550, "5.1.1 User unknown"])
        );
        assert_eq!(
            v["size"],
            serde_json::json!([552, "5.3.4 Message size exceeds fixed maximum message size"])
        );
        assert_eq!(
            v["data_size"],
            serde_json::json!([552, "5.3.4 Message size exceeds fixed maximum message size"])
        );
        assert_eq!(v["after"], 250);
        server.shutdown().await;
        let j = mta.journal();
        let acc = j.accepted_transactions();
        assert_eq!(acc.len(), 1);
        assert_eq!(acc[0].sha256, v["sha256"].as_str().expect("sha"));
        assert_eq!(j.delivered_recipients().len(), 100);
        assert_eq!(j.sessions.len(), 2);
        assert_eq!(j.sessions[0].ehlo.as_deref(), Some("py.example"));
    })
    .await;
}

const PY_CAP: &str = r#"
import smtplib, sys, json
port = int(sys.argv[1])
held = [smtplib.SMTP('127.0.0.1', port, timeout=10) for _ in range(10)]
res = {}
try:
    smtplib.SMTP('127.0.0.1', port, timeout=10)
    res['eleventh'] = 'accepted'
except smtplib.SMTPConnectError as e:
    res['eleventh'] = [e.smtp_code, e.smtp_error.decode()]
held[0].quit()
import time
time.sleep(0.2)
again = smtplib.SMTP('127.0.0.1', port, timeout=10)
res['after_one_left'] = again.noop()[0]
again.quit()
for h in held[1:]:
    h.quit()
print(json.dumps(res))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_meets_the_xp_connection_cap() {
    within(async {
        let mta = MockMta::new(MockConfig::xp(), SystemClock::shared());
        let server = mta
            .listen("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("listen");
        let port = server.local_addr().port();
        let v = tokio::task::spawn_blocking(move || python(PY_CAP, port))
            .await
            .expect("task");
        assert_eq!(
            v["eleventh"],
            serde_json::json!([
                421,
                "4.3.2 Service not available, closing transmission channel"
            ])
        );
        assert_eq!(v["after_one_left"], 250);
        let st = mta.stats();
        assert_eq!((st.peak_connections, st.over_cap, st.sessions), (10, 1, 11));
        server.shutdown().await;
    })
    .await;
}

const PY_GREET: &str = r#"
import smtplib, sys, json
port = int(sys.argv[1])
try:
    smtplib.SMTP('127.0.0.1', port, timeout=10)
    print(json.dumps('connected'))
except smtplib.SMTPConnectError as e:
    print(json.dumps([e.smtp_code, e.smtp_error.decode()]))
except (ConnectionRefusedError, smtplib.SMTPServerDisconnected) as e:
    print(json.dumps(type(e).__name__))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_sees_greeting_faults_and_refusal() {
    within(async {
        let mta = MockMta::new(MockConfig::iis(), SystemClock::shared());
        let server = mta
            .listen("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("listen");
        let port = server.local_addr().port();
        let run = || async move {
            tokio::task::spawn_blocking(move || python(PY_GREET, port))
                .await
                .expect("task")
        };
        assert_eq!(run().await, "connected");
        mta.set_faults(Faults {
            greet_code: Some(554),
            ..Faults::default()
        });
        assert_eq!(
            run().await,
            serde_json::json!([554, "5.3.2 mock-iis.example.org Service unavailable"])
        );
        mta.set_faults(Faults {
            greet_code: Some(421),
            ..Faults::default()
        });
        assert_eq!(
            run().await,
            serde_json::json!([
                421,
                "4.3.2 Service not available, closing transmission channel"
            ])
        );
        mta.set_faults(Faults {
            refuse_connections: true,
            ..Faults::default()
        });
        tokio::time::sleep(Duration::from_millis(300)).await; // the listener closes
        assert_eq!(run().await, "ConnectionRefusedError");
        mta.set_faults(Faults::default());
        tokio::time::sleep(Duration::from_millis(300)).await; // and reopens
        assert_eq!(run().await, "connected");
        server.shutdown().await;
    })
    .await;
}
