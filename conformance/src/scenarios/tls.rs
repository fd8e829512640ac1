//! TLS and AUTH with relays (TXN-10, TXN-11, TXN-12).
//!
//! Virtual mode (in-memory connections, mock-mta with STARTTLS):
//! 1. `tls = "required"` with the mock's CA trusted delivers every recipient, each transaction
//!    over TLS (the mock's journal and the ledger say TLSv1.3);
//! 2. with a CA that did not sign the mock's certificate nothing is delivered and nothing of
//!    the mail crosses the wire in clear (a tap on the connection sees STARTTLS, never MAIL);
//! 3. `opportunistic` against a mock without STARTTLS delivers in plaintext;
//! 4. a wrong password (AUTH required by the mock) leaves every copy queued, and the log names
//!    the relay, the user and the reply.
//!
//! Real time runs the binaries: a `mock-mta` process requiring STARTTLS and AUTH (its CA
//! written to a file), `smtpw run --settings` with that CA and the right password delivers
//! everything over TLS as the user; with a wrong password nothing is delivered.

use std::path::Path;
use std::time::Duration;

use jiff::civil::date;
use mock_mta::{MockConfig, MockMta};
use smtpw_engine::engine::EngineOptions;
use smtpw_engine::settings::{RelayAuth, RelaySettings, Secret, TlsMode};
use smtpw_engine::spool::Spool;
use smtpw_testkit::assert::exactly_once;
use smtpw_testkit::logs::LogCapture;
use smtpw_testkit::proc::MockProcess;
use smtpw_testkit::topology::{options_with_relay, Topology};

use crate::runner::{temp_dir, Bin, Ctx, Failure, Outcome, Scenario, ScenarioResult, BOTH};
use crate::site::ProcessSite;

const HOST: &str = "relay.example.org";
const HP: &str = "relay.example.org:25";

pub fn scenario() -> Scenario {
    Scenario::new("relay-tls-auth", BOTH, tls)
        .needs(&[Bin::Smtpw, Bin::MockMta])
        .both_spools()
}

fn rcpts(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}{i}@example.com")).collect()
}

fn check(what: &str, ok: bool, got: impl FnOnce() -> String) -> Result<(), Failure> {
    if ok {
        Ok(())
    } else {
        Err(Failure::new(what, got()))
    }
}

async fn tls(ctx: Ctx) -> ScenarioResult {
    if ctx.mode().is_real_time() {
        return real_time(&ctx).await.map(Outcome::new);
    }
    let a = required(true).await?;
    let b = required(false).await?;
    let c = opportunistic_plaintext().await?;
    let d = wrong_password().await?;
    Ok(Outcome::new(format!("{a}; {b}; {c}; {d}")))
}

fn mock(starttls: bool) -> MockConfig {
    let mut c = MockConfig::iis();
    c.hostname = HOST.into();
    c.tls.starttls = starttls;
    c
}

fn topology(m: MockConfig) -> Topology {
    Topology::new(
        "SMTP_FORWARD=relay.example.org\nSMTP_FORWARD_1=2*relay.example.org\nMAXBSMTP=10\n",
        date(2026, 11, 22).at(12, 0, 0, 0),
        &[(HP, m)],
    )
}

fn options(relay: RelaySettings) -> EngineOptions {
    options_with_relay(HOST, relay)
}

fn write_ca(dir: &Path, name: &str, pem: Option<&str>) -> Result<std::path::PathBuf, Failure> {
    let pem = pem.ok_or_else(|| Failure::new("the mock to serve TLS", "no CA"))?;
    let p = dir.join(name);
    std::fs::write(&p, pem).map_err(|e| Failure::new("to write the CA", e.to_string()))?;
    Ok(p)
}

async fn required(trusted: bool) -> Result<String, Failure> {
    let t = topology(mock(true));
    let ca = if trusted {
        write_ca(t.dir.path(), "ca.pem", t.mock(HP).ca_pem())?
    } else {
        let other = MockMta::try_new(mock(true), t.clock.clone())
            .map_err(|e| Failure::new("a second mock", e.to_string()))?;
        write_ca(t.dir.path(), "other.pem", other.ca_pem())?
    };
    let wire = t.capture_client_bytes(HP);
    let to = rcpts(if trusted { "trusted" } else { "untrusted" }, 50);
    t.submit(None, to.iter().cloned(), 1500);
    let opts = options(RelaySettings {
        tls: TlsMode::Required,
        ca_file: Some(ca),
        ..RelaySettings::default()
    });
    if trusted {
        t.try_run_until_empty(opts, Duration::from_secs(600))
            .await?;
        exactly_once(&to, t.delivered_everywhere(), HP)?;
        let j = t.mock(HP).journal();
        check(
            "every transaction over TLSv1.3 at the relay",
            j.transactions()
                .all(|x| x.tls.as_deref() == Some("TLSv1.3")),
            || format!("{:?}", j.transactions().map(|x| &x.tls).collect::<Vec<_>>()),
        )?;
        let ledger = t.try_ledger()?;
        check(
            "every ledger line says tls TLSv1.3",
            ledger.iter().all(|l| l.tls.as_deref() == Some("TLSv1.3")),
            || format!("{ledger:?}"),
        )?;
        Ok(format!(
            "required, trusted CA: {} recipients over TLSv1.3",
            to.len()
        ))
    } else {
        let run = t.start(opts);
        tokio::time::sleep(Duration::from_secs(120)).await;
        run.stop().await?;
        let sent = String::from_utf8_lossy(
            &wire
                .lock()
                .map_err(|_| Failure::new("the tap", "poisoned"))?,
        )
        .into_owned();
        check(
            "STARTTLS tried, no MAIL, RCPT or address in clear",
            sent.contains("STARTTLS")
                && !sent.contains("MAIL FROM")
                && !sent.contains("example.com"),
            || format!("{sent:?}"),
        )?;
        check(
            "nothing delivered, every copy still queued",
            t.mock(HP).journal().transactions().count() == 0 && t.spool.queued_copies() == 5,
            || format!("{} copies queued", t.spool.queued_copies()),
        )?;
        Ok(format!(
            "required, untrusted CA: 0 delivered; the {} bytes sent were EHLO, STARTTLS and TLS handshakes, no mail",
            sent.len()
        ))
    }
}

async fn opportunistic_plaintext() -> Result<String, Failure> {
    let t = topology(mock(false));
    let to = rcpts("plain", 30);
    t.submit(None, to.iter().cloned(), 1500);
    t.try_run_until_empty(options(RelaySettings::default()), Duration::from_secs(600))
        .await?;
    exactly_once(&to, t.delivered_everywhere(), HP)?;
    let ledger = t.try_ledger()?;
    check(
        "no tls on any ledger line (plaintext)",
        ledger.iter().all(|l| l.tls.is_none()),
        || format!("{ledger:?}"),
    )?;
    Ok("opportunistic without STARTTLS: plaintext, all delivered".into())
}

async fn wrong_password() -> Result<String, Failure> {
    let mut m = mock(true);
    m.tls.require = true;
    m.auth.users.insert("lists".into(), "right-password".into());
    m.auth.require = true;
    let t = topology(m);
    let ca = write_ca(t.dir.path(), "ca.pem", t.mock(HP).ca_pem())?;
    t.submit(None, rcpts("pw", 20).into_iter(), 1500);
    let log = LogCapture::default();
    let _g = log.install();
    let run = t.start(options(RelaySettings {
        tls: TlsMode::Required,
        ca_file: Some(ca),
        auth: Some(RelayAuth::Password {
            username: "lists".into(),
            password: Secret::new("wrong-password-x"),
        }),
        ..RelaySettings::default()
    }));
    tokio::time::sleep(Duration::from_secs(120)).await;
    run.stop().await?;
    let text = log.text();
    check(
        "every copy still queued, nothing at the relay",
        t.spool.queued_copies() == 2 && t.mock(HP).journal().transactions().count() == 0,
        || format!("{} copies queued", t.spool.queued_copies()),
    )?;
    check(
        "the log names the relay, the user and the reply, never the password",
        text.contains(HP)
            && text.contains("refused AUTH PLAIN for user lists: 535")
            && !text.contains("wrong-password-x"),
        || text.clone(),
    )?;
    Ok("wrong password: all queued, the refusal logged".into())
}

async fn real_time(ctx: &Ctx) -> Result<String, Failure> {
    let mock_bin = ctx.bin(Bin::MockMta)?;
    let dir = temp_dir()?;
    let ca = dir.path().join("mock-ca.pem");
    let toml = dir.path().join("mock.toml");
    std::fs::write(
        &toml,
        format!(
            "hostname = \"localhost\"\n[tls]\nstarttls = true\nrequire = true\nca_file_out = {:?}\n[auth]\nrequire = true\nusers = {{ lists = \"right-pw\" }}\n",
            ca.display().to_string()
        ),
    )
    .map_err(|e| Failure::new("to write the mock's configuration", e.to_string()))?;
    let m = MockProcess::start(
        mock_bin,
        dir.path(),
        "relay",
        &["--config", &toml.display().to_string()],
    )
    .await?;
    let port = m.addr.port();
    let mut outcomes = Vec::new();
    for (name, pw) in [("right", "right-pw"), ("wrong", "wrong-pw")] {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).map_err(|e| Failure::new("a site directory", e.to_string()))?;
        let mut site = ProcessSite::new(
            ctx,
            &d,
            &format!(
                "SMTP_FORWARD=127.0.0.1:{port}\nSMTP_FORWARD_1=2*127.0.0.1:{port}\nMAXBSMTP=10\n"
            ),
        )?;
        let settings = d.join("smtpw.toml");
        std::fs::write(
            &settings,
            format!(
                "[relays.\"127.0.0.1\"]\ntls = \"required\"\nca_file = {:?}\nusername = \"lists\"\npassword = \"{pw}\"\n",
                ca.display().to_string()
            ),
        )
        .map_err(|e| Failure::new("to write smtpw.toml", e.to_string()))?;
        let to = rcpts(name, 30);
        site.submit(&to, 1500).await?;
        let s = settings.display().to_string();
        if name == "right" {
            site.run_until_empty(&["--settings", &s], Duration::from_secs(60))
                .await?;
            let ledger = site.ledger()?;
            check(
                "30 recipients delivered, each line over TLS",
                ledger.len() == 30 && ledger.iter().all(|l| l.tls.as_deref() == Some("TLSv1.3")),
                || format!("{ledger:?}"),
            )?;
        } else {
            let child = site.start(&["--settings", &s])?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            site.stop(child).await?;
            let q = site.queue().await?;
            let ledger = site.ledger().unwrap_or_default();
            check(
                "nothing delivered with the wrong password",
                ledger.is_empty(),
                || format!("{ledger:?} {q}"),
            )?;
        }
        outcomes.push(name);
    }
    let j = m.finish().await?;
    let got = j.delivered_recipients();
    exactly_once(&rcpts("right", 30), got, "the mock-mta process")?;
    check(
        "the relay saw TLS and the user lists on every transaction",
        j.transactions()
            .filter(|t| t.accepted)
            .all(|t| t.tls.is_some() && t.user.as_deref() == Some("lists")),
        || format!("{j:?}"),
    )?;
    Ok("mock-mta process with STARTTLS + AUTH required: the right password delivers 30 over TLS as lists, the wrong one nothing".into())
}
