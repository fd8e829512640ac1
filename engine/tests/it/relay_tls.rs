//! TLS and AUTH with relays (TXN-10 to TXN-12), end to end on paused time: the engine, its
//! settings, and mock-mta speaking STARTTLS, implicit TLS and AUTH over in-memory connections.
//! What the relay got (its journal), what crossed the wire (a tap on the connection), the
//! ledger and the log are the evidence.

use std::path::PathBuf;
use std::time::Duration;

use jiff::civil::date;
use mock_mta::{MockConfig, MockMta};
use smtpw_engine::engine::EngineOptions;
use smtpw_engine::settings::{RelayAuth, RelaySettings, Secret, TlsMode};
use smtpw_engine::spool::Spool;
use smtpw_testkit::logs::LogCapture;
use smtpw_testkit::topology::{options_with_relay, Topology};

const HOST: &str = "a.example.org";
const HP: &str = "a.example.org:25";
const SITE: &str = "NODE=LISTSERV.EXAMPLE.ORG\nSMTP_FORWARD=a.example.org\nSMTP_FORWARD_1=a.example.org\nMAXBSMTP=10\n";
const PASSWORD: &str = "pw-Zq8#unique-7731";

/// IIS with STARTTLS (its certificate names `a.example.org`), optionally requiring it.
fn tls_mock(require_tls: bool) -> MockConfig {
    let mut c = MockConfig::iis();
    c.hostname = HOST.into();
    c.tls.starttls = true;
    c.tls.require = require_tls;
    c
}

/// IIS with STARTTLS required and AUTH required for the user `lists`.
fn auth_mock() -> MockConfig {
    let mut c = tls_mock(true);
    c.auth.users.insert("lists".into(), PASSWORD.into());
    c.auth.require = true;
    c
}

fn topology(mock: MockConfig) -> Topology {
    Topology::new(SITE, date(2026, 11, 22).at(12, 0, 0, 0), &[(HP, mock)])
}

/// The mock's CA in a file of the topology's directory.
fn trusted_ca(h: &Topology) -> PathBuf {
    let pem = h.mock(HP).ca_pem().expect("the mock serves TLS");
    let p = h.dir.path().join("relay-ca.pem");
    std::fs::write(&p, pem).unwrap();
    p
}

/// A CA that did not sign the mock's certificate (another mock's).
fn untrusted_ca(h: &Topology) -> PathBuf {
    let other = MockMta::try_new(tls_mock(false), h.clock.clone()).unwrap();
    let p = h.dir.path().join("other-ca.pem");
    std::fs::write(&p, other.ca_pem().unwrap()).unwrap();
    p
}

fn options(relay: RelaySettings) -> EngineOptions {
    options_with_relay(HOST, relay)
}

fn password(user: &str, pw: &str) -> Option<RelayAuth> {
    Some(RelayAuth::Password {
        username: user.into(),
        password: Secret::new(pw),
    })
}

/// Runs the engine for `secs` of virtual time, then stops it.
async fn run_for(h: &Topology, opts: EngineOptions, secs: u64) {
    let r = h.start(opts);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    r.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn required_tls_with_a_trusted_ca_delivers_everything_over_tls() {
    let h = topology(tls_mock(true));
    let ca = trusted_ca(&h);
    h.submit_n(None, 50, "example.com", 500);
    let opts = options(RelaySettings {
        tls: TlsMode::Required,
        ca_file: Some(ca),
        ..RelaySettings::default()
    });
    let s = h
        .try_run_until_empty(opts, Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(s.delivered, 50, "{s:?}");
    let j = h.mock(HP).journal();
    let txns: Vec<_> = j.transactions().collect();
    assert!(!txns.is_empty());
    assert!(
        txns.iter().all(|t| t.tls.as_deref() == Some("TLSv1.3")),
        "every transaction over TLS 1.3: {:?}",
        txns.iter().map(|t| &t.tls).collect::<Vec<_>>()
    );
    assert_eq!(h.delivered_counts().len(), 50);
    let ledger = h.ledger();
    assert_eq!(ledger.len(), 50);
    assert!(
        ledger.iter().all(|l| l.tls.as_deref() == Some("TLSv1.3")),
        "{ledger:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn required_tls_with_an_untrusted_ca_sends_nothing_in_clear_and_delivers_nothing() {
    let h = topology(tls_mock(false));
    let ca = untrusted_ca(&h);
    let wire = h.capture_client_bytes(HP);
    h.submit_n(None, 20, "example.com", 500);
    let log = LogCapture::default();
    let _g = log.install();
    run_for(
        &h,
        options(RelaySettings {
            tls: TlsMode::Required,
            ca_file: Some(ca),
            ..RelaySettings::default()
        }),
        120,
    )
    .await;
    // The mock would have taken mail in clear (it does not require TLS): it got none.
    assert_eq!(h.mock(HP).journal().transactions().count(), 0);
    let sent = String::from_utf8_lossy(&wire.lock().unwrap()).into_owned();
    assert!(
        sent.contains("STARTTLS\r\n"),
        "STARTTLS was tried: {sent:?}"
    );
    for never in ["MAIL FROM", "RCPT TO", "example.com", "Subject"] {
        assert!(
            !sent.contains(never),
            "{never:?} went out in clear: {sent:?}"
        );
    }
    // Every copy is still queued; no outcome was written.
    assert_eq!(h.spool.queued_copies(), 2);
    assert!(h.try_ledger().map_or(true, |l| l.is_empty()));
    let text = log.text();
    assert!(
        text.contains("host unreachable") && text.contains("TLS handshake failed"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn required_tls_without_starttls_offered_counts_the_host_unreachable() {
    let h = topology(MockConfig {
        hostname: HOST.into(),
        ..MockConfig::iis()
    });
    let wire = h.capture_client_bytes(HP);
    h.submit_n(None, 20, "example.com", 500);
    let log = LogCapture::default();
    let _g = log.install();
    run_for(
        &h,
        options(RelaySettings {
            tls: TlsMode::Required,
            ..RelaySettings::default()
        }),
        60,
    )
    .await;
    assert_eq!(h.mock(HP).journal().transactions().count(), 0);
    let sent = String::from_utf8_lossy(&wire.lock().unwrap()).into_owned();
    assert!(!sent.contains("MAIL FROM"), "{sent:?}");
    assert_eq!(h.spool.queued_copies(), 2);
    assert!(
        log.text()
            .contains("no TLS: the relay does not offer STARTTLS"),
        "{}",
        log.text()
    );
}

#[tokio::test(start_paused = true)]
async fn opportunistic_falls_back_to_plaintext_when_starttls_is_not_offered() {
    let h = topology(MockConfig::iis());
    h.submit_n(None, 30, "example.com", 500);
    let s = h
        .try_run_until_empty(options(RelaySettings::default()), Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(s.delivered, 30);
    assert!(h.mock(HP).journal().transactions().all(|t| t.tls.is_none()));
    assert!(h.ledger().iter().all(|l| l.tls.is_none()));
}

#[tokio::test(start_paused = true)]
async fn opportunistic_goes_on_encrypted_when_the_certificate_does_not_verify() {
    let h = topology(tls_mock(true));
    h.submit_n(None, 30, "example.com", 500);
    let log = LogCapture::default();
    let _g = log.install();
    // No ca_file: nothing the mock's certificate chains to.
    let s = h
        .try_run_until_empty(options(RelaySettings::default()), Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(s.delivered, 30);
    assert!(h
        .mock(HP)
        .journal()
        .transactions()
        .all(|t| t.tls.as_deref() == Some("TLSv1.3")));
    assert!(
        log.text()
            .contains("does not verify; opportunistic TLS goes on encrypted"),
        "{}",
        log.text()
    );
}

#[tokio::test(start_paused = true)]
async fn implicit_tls_delivers_from_the_first_byte() {
    let mut m = tls_mock(false);
    m.tls.starttls = false;
    m.tls.implicit = true;
    let h = topology(m);
    let ca = trusted_ca(&h);
    let wire = h.capture_client_bytes(HP);
    h.submit_n(None, 20, "example.com", 500);
    let s = h
        .try_run_until_empty(
            options(RelaySettings {
                tls: TlsMode::Implicit,
                ca_file: Some(ca),
                ..RelaySettings::default()
            }),
            Duration::from_secs(600),
        )
        .await
        .unwrap();
    assert_eq!(s.delivered, 20);
    let sent = wire.lock().unwrap().clone();
    // A TLS record (handshake, content type 22), not an SMTP command.
    assert_eq!(sent.first(), Some(&22u8));
    assert!(!String::from_utf8_lossy(&sent).contains("EHLO"));
    assert!(h
        .ledger()
        .iter()
        .all(|l| l.tls.as_deref() == Some("TLSv1.3")));
}

#[tokio::test(start_paused = true)]
async fn auth_over_required_tls_delivers_and_the_relay_records_the_user() {
    let h = topology(auth_mock());
    let ca = trusted_ca(&h);
    h.submit_n(None, 30, "example.com", 500);
    let s = h
        .try_run_until_empty(
            options(RelaySettings {
                tls: TlsMode::Required,
                ca_file: Some(ca),
                auth: password("lists", PASSWORD),
                ..RelaySettings::default()
            }),
            Duration::from_secs(600),
        )
        .await
        .unwrap();
    assert_eq!(s.delivered, 30);
    assert!(h
        .mock(HP)
        .journal()
        .transactions()
        .all(|t| t.user.as_deref() == Some("lists") && t.tls.is_some()));
}

#[tokio::test(start_paused = true)]
async fn a_wrong_password_leaves_everything_queued_and_the_log_names_relay_user_and_reply() {
    let h = topology(auth_mock());
    let ca = trusted_ca(&h);
    h.submit_n(None, 20, "example.com", 500);
    let log = LogCapture::default();
    let _g = log.install_at(tracing::Level::TRACE);
    let wrong = "wrong-Pw-5521-unique";
    run_for(
        &h,
        options(RelaySettings {
            tls: TlsMode::Required,
            ca_file: Some(ca),
            auth: password("lists", wrong),
            ..RelaySettings::default()
        }),
        120,
    )
    .await;
    assert_eq!(h.mock(HP).journal().transactions().count(), 0);
    assert_eq!(h.spool.queued_copies(), 2);
    let text = log.text();
    let line = text
        .lines()
        .find(|l| l.contains("host unreachable"))
        .unwrap_or_else(|| panic!("no unreachable line in {text}"));
    assert!(
        line.contains(HP)
            && line.contains("refused AUTH PLAIN for user lists")
            && line.contains("535 5.7.3 Authentication unsuccessful"),
        "{line}"
    );
    // Neither the password nor its base64 form is anywhere in the log or the ledger.
    let b64 = base64_of(&format!("\0lists\0{wrong}"));
    for secret in [wrong, b64.as_str()] {
        assert!(!text.contains(secret), "the secret is in the log");
        let ledger = std::fs::read_to_string(h.dir.path().join(smtpw_engine::spool::LEDGER_FILE))
            .unwrap_or_default();
        assert!(!ledger.contains(secret), "the secret is in the ledger");
    }
}

#[tokio::test(start_paused = true)]
async fn auth_is_never_sent_in_clear_when_the_relay_offers_no_starttls() {
    let mut m = MockConfig::iis();
    m.hostname = HOST.into();
    m.auth.users.insert("lists".into(), PASSWORD.into());
    let h = topology(m);
    let wire = h.capture_client_bytes(HP);
    h.submit_n(None, 20, "example.com", 500);
    let log = LogCapture::default();
    let _g = log.install();
    run_for(
        &h,
        options(RelaySettings {
            tls: TlsMode::Opportunistic,
            auth: password("lists", PASSWORD),
            ..RelaySettings::default()
        }),
        60,
    )
    .await;
    let sent = String::from_utf8_lossy(&wire.lock().unwrap()).into_owned();
    assert!(sent.contains("EHLO") && !sent.contains("AUTH"), "{sent:?}");
    assert!(!sent.contains("MAIL FROM"), "{sent:?}");
    assert_eq!(h.spool.queued_copies(), 2);
    assert!(
        log.text().contains("the session is not encrypted"),
        "{}",
        log.text()
    );
}

fn base64_of(s: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
