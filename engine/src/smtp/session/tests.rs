//! The handshake and QUIT without tokio, against the relay model of `model_relay`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use super::*;
use crate::smtp::model_relay::*;

fn handshake(relay: Relay) -> (Session, Relay, Result<(), ConnectError>) {
    let mut relay = start(relay);
    let mut s = Session::new(&cfg());
    run(&mut s, &mut relay);
    let r = s.handshake_result();
    (s, relay, r)
}

#[test]
fn greeting_ehlo_and_the_capabilities() {
    let (s, relay, r) = handshake(Relay::pipelining());
    r.unwrap();
    assert_eq!(
        s.greeting().to_string(),
        "220 mx.example.org Microsoft ESMTP MAIL Service ready"
    );
    assert!(s.capabilities().pipelining && s.capabilities().esmtp);
    assert_eq!(
        relay.groups,
        vec![vec!["EHLO lists.example.org".to_string()]]
    );
    assert!(s.is_usable());
}

#[test]
fn a_554_or_421_greeting_is_a_refusal_and_quit_is_said_without_waiting() {
    for code in ["554 5.3.2 No service here", "421 4.3.2 Too busy"] {
        let (_, relay, r) = handshake(Relay {
            greeting: code.into(),
            ..Relay::pipelining()
        });
        match r {
            Err(ConnectError::Greeting(r)) => assert_eq!(r.to_string(), code),
            other => panic!("{other:?}"),
        }
        assert_eq!(relay.commands(), vec!["QUIT"]);
        // No wait for QUIT's reply.
        assert_eq!(relay.steps.last(), Some(&Step::Done));
        assert!(!relay
            .steps
            .iter()
            .skip(1)
            .any(|s| matches!(s, Step::Read { .. })));
    }
    // QUIT is a courtesy: a failed write changes nothing.
    let mut s = Session::new(&cfg());
    s.on_reply(Reply::new(554, None, "no"));
    assert!(matches!(s.next(), Step::Write { what: "QUIT", .. }));
    s.on_written(Written::Failed(io::ErrorKind::BrokenPipe.into()));
    assert_eq!(s.next(), Step::Done);
    assert!(matches!(
        s.handshake_result(),
        Err(ConnectError::Greeting(_))
    ));
}

#[test]
fn helo_when_ehlo_is_refused_with_a_5yz() {
    let (s, relay, r) = handshake(Relay {
        ehlo: None,
        ..Relay::pipelining()
    });
    r.unwrap();
    assert_eq!(s.capabilities(), &Capabilities::default());
    assert_eq!(
        relay.commands(),
        ["EHLO lists.example.org", "HELO lists.example.org"]
    );
    assert!(s.ends_group(Verb::Mail), "no pipelining after HELO");
    // Then mail goes lock-step, without SIZE.
    let (mut s, mut relay) = connect(Relay {
        ehlo: None,
        ..Relay::pipelining()
    });
    let d = deliver(&mut s, &mut relay, "l@x.org", &rcpts(2), MSG, 100);
    assert_eq!(d.delivered(), 2);
    assert_eq!(
        relay.commands()[..3],
        [
            "EHLO lists.example.org",
            "HELO lists.example.org",
            "MAIL FROM:<l@x.org>"
        ]
    );
    assert!(relay.groups.iter().all(|g| g.len() == 1));

    // HELO refused too, or EHLO refused with 4yz (421 included): no session.
    let (_, _, r) = handshake(Relay {
        ehlo: None,
        helo: "550 5.7.1 Go away".into(),
        ..Relay::pipelining()
    });
    assert!(matches!(r, Err(ConnectError::Helo(r)) if r.code == 550));
    let (_, relay, r) = handshake(Relay {
        reply_421_at: Some(1),
        ..Relay::pipelining()
    });
    assert!(matches!(r, Err(ConnectError::Helo(r)) if r.code == 421));
    assert_eq!(relay.commands(), ["EHLO lists.example.org"]);
}

#[test]
fn silence_or_a_close_in_the_handshake_is_a_connect_error() {
    let (_, relay, r) = handshake(Relay {
        silent_from: Some(1),
        ..Relay::pipelining()
    });
    assert!(matches!(r, Err(ConnectError::Timeout("EHLO"))), "{r:?}");
    assert!(matches!(
        relay.steps[..],
        [
            Step::Read {
                what: "greeting",
                ..
            },
            Step::Write { what: "EHLO", .. },
            Step::Read { what: "EHLO", .. },
            Step::Done
        ]
    ));
    let (_, _, r) = handshake(Relay {
        close_at: Some(1),
        ..Relay::pipelining()
    });
    match r {
        Err(ConnectError::Io(e)) => {
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
            assert_eq!(
                e.to_string(),
                "connection closed while waiting for the EHLO reply"
            );
        }
        other => panic!("{other:?}"),
    }
    // No greeting at all: the greeting's own time-out.
    let mut s = Session::new(&cfg());
    assert_eq!(
        s.next(),
        Step::Read {
            timeout: Duration::from_secs(300),
            what: "greeting"
        }
    );
    s.on_lost(Lost::Timeout("greeting"));
    assert_eq!(s.next(), Step::Done);
    assert!(matches!(
        s.handshake_result(),
        Err(ConnectError::Timeout("greeting"))
    ));
}

#[test]
fn quit_waits_for_its_reply_only_when_it_went_out() {
    let (mut s, mut relay) = connect(Relay::pipelining());
    assert!(s.start_quit());
    run(&mut s, &mut relay);
    assert_eq!(relay.commands().last().map(String::as_str), Some("QUIT"));
    assert!(matches!(
        relay.steps[relay.steps.len() - 3..],
        [
            Step::Write { what: "QUIT", .. },
            Step::Read { what: "QUIT", .. },
            Step::Done
        ]
    ));

    let (mut s, _) = connect(Relay::pipelining());
    assert!(s.start_quit());
    assert!(matches!(s.next(), Step::Write { what: "QUIT", .. }));
    s.on_written(Written::Failed(io::ErrorKind::BrokenPipe.into()));
    assert_eq!(s.next(), Step::Done);

    // Nothing to say on a session that is gone.
    let (mut s, _) = connect(Relay::pipelining());
    s.mark_lost(&Lost::Eof("next command"));
    assert!(!s.start_quit());
    assert_eq!(s.next(), Step::Done);
}

#[test]
fn the_learned_limit_only_goes_down_and_bounds_each_transaction() {
    let (mut s, _) = connect(Relay::pipelining());
    assert_eq!(s.rcpt_limit(100), 100);
    assert_eq!(s.rcpt_limit(0), 1);
    s.set_learned_rcpt_limit(10);
    s.set_learned_rcpt_limit(50);
    assert_eq!(s.learned_rcpt_limit(), Some(10));
    assert_eq!((s.rcpt_limit(100), s.rcpt_limit(3)), (10, 3));
    s.set_learned_rcpt_limit(0);
    assert_eq!(s.learned_rcpt_limit(), Some(1));
}

#[test]
fn a_lost_session_keeps_the_first_reason() {
    let (mut s, _) = connect(Relay::pipelining());
    let r421 = Reply::new(421, Some((4, 4, 2)), "idle timeout");
    s.mark_lost(&Lost::Closing(r421.clone()));
    s.mark_lost(&Lost::Protocol("later".into()));
    assert!(!s.is_usable());
    assert_eq!(s.lost, Some(r421));
}

fn secured(
    mode: TlsMode,
    auth: Option<Credentials>,
    relay: Relay,
) -> (Session, Relay, Result<(), ConnectError>) {
    let mut relay = start(relay);
    let mut s = Session::with_security(
        &cfg(),
        SessionSecurity {
            mode,
            tls: None,
            auth,
            allow_plaintext_auth: false,
        },
    );
    run(&mut s, &mut relay);
    let r = s.handshake_result();
    (s, relay, r)
}

fn with_starttls() -> Relay {
    let mut ehlo: Vec<&str> = IIS_EHLO.to_vec();
    ehlo.push("STARTTLS");
    Relay::new(&ehlo)
}

fn lists_password() -> Option<Credentials> {
    Some(Credentials {
        username: "lists".into(),
        secret: auth::CredentialSecret::Password(crate::settings::Secret::new("pw")),
        mechanism: None,
    })
}

#[test]
fn starttls_when_offered_then_ehlo_again_with_what_was_learned_in_clear_forgotten() {
    for mode in [TlsMode::Opportunistic, TlsMode::Required] {
        let (s, relay, r) = secured(mode, None, with_starttls());
        r.unwrap();
        assert_eq!(s.tls_version(), Some("TLSv1.3"));
        assert_eq!(
            relay.commands(),
            [
                "EHLO lists.example.org",
                "STARTTLS",
                "<TLS handshake>",
                "EHLO lists.example.org"
            ]
        );
        // The capabilities are those of the second EHLO (no STARTTLS there).
        assert!(!s.capabilities().starttls && s.capabilities().pipelining);
    }
}

#[test]
fn opportunistic_goes_on_in_plaintext_without_starttls_and_required_fails() {
    let (s, relay, r) = secured(TlsMode::Opportunistic, None, Relay::pipelining());
    r.unwrap();
    assert_eq!(s.tls_version(), None);
    assert_eq!(relay.commands(), ["EHLO lists.example.org"]);
    let (_, relay, r) = secured(TlsMode::Required, None, Relay::pipelining());
    assert!(
        matches!(&r, Err(ConnectError::TlsRequired(why)) if why.contains("does not offer STARTTLS")),
        "{r:?}"
    );
    assert_eq!(relay.commands(), ["EHLO lists.example.org"]);
    // A refused STARTTLS: plaintext when opportunistic, unreachable when required.
    let refusing = Relay {
        starttls: "454 4.7.0 TLS not available due to temporary reason".into(),
        ..with_starttls()
    };
    let (s, _, r) = secured(TlsMode::Opportunistic, None, refusing.clone());
    r.unwrap();
    assert_eq!(s.tls_version(), None);
    let (_, relay, r) = secured(TlsMode::Required, None, refusing);
    assert!(matches!(r, Err(ConnectError::TlsRequired(_))), "{r:?}");
    assert_eq!(relay.commands(), ["EHLO lists.example.org", "STARTTLS"]);
}

#[test]
fn a_failed_handshake_sends_nothing_more() {
    let relay = Relay {
        tls_handshake: Err("invalid peer certificate: UnknownIssuer".into()),
        ..with_starttls()
    };
    let (s, relay, r) = secured(TlsMode::Required, lists_password(), relay);
    assert!(
        matches!(&r, Err(ConnectError::TlsRequired(why)) if why.contains("UnknownIssuer")),
        "{r:?}"
    );
    assert!(!s.is_usable());
    assert_eq!(
        relay.commands(),
        ["EHLO lists.example.org", "STARTTLS", "<TLS handshake>"]
    );
}

#[test]
fn auth_needs_tls_unless_allowed_and_follows_the_second_ehlo() {
    // No STARTTLS offered: the credentials are not sent.
    let mut ehlo: Vec<&str> = IIS_EHLO.to_vec();
    ehlo.push("AUTH LOGIN PLAIN");
    let (_, relay, r) = secured(TlsMode::Opportunistic, lists_password(), Relay::new(&ehlo));
    assert!(matches!(r, Err(ConnectError::AuthNeedsTls { .. })), "{r:?}");
    assert_eq!(relay.commands(), ["EHLO lists.example.org"]);
}

#[test]
fn the_implicit_mode_starts_encrypted_and_never_says_starttls() {
    let mut relay = start(with_starttls());
    let mut s = Session::with_security(
        &cfg(),
        SessionSecurity {
            mode: TlsMode::Implicit,
            tls: Some("TLSv1.3"),
            auth: None,
            allow_plaintext_auth: false,
        },
    );
    run(&mut s, &mut relay);
    s.handshake_result().unwrap();
    assert_eq!(relay.commands(), ["EHLO lists.example.org"]);
    assert_eq!(s.tls_version(), Some("TLSv1.3"));
}

#[test]
fn debug_never_shows_an_auth_line_being_written() {
    let mut ehlo: Vec<&str> = IIS_EHLO.to_vec();
    ehlo.push("AUTH PLAIN LOGIN");
    let mut relay = start(Relay::new(&ehlo));
    let mut s = Session::with_security(
        &cfg(),
        SessionSecurity {
            mode: TlsMode::Implicit,
            tls: Some("TLSv1.3"),
            auth: lists_password(),
            allow_plaintext_auth: false,
        },
    );
    // Greeting, then EHLO written and answered: the AUTH line is in the output buffer.
    for _ in 0..3 {
        match s.next() {
            Step::Write { .. } => {
                let w = relay.receive_for_test(s.output());
                s.on_written(w);
            }
            Step::Read { what, .. } => s.on_reply(relay.answer_for_test(what)),
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(s.next(), Step::Write { what: "AUTH", .. }));
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b"\0lists\0pw");
    assert!(String::from_utf8_lossy(s.output()).contains(&b64));
    let shown = format!("{s:?}");
    assert!(!shown.contains(&b64) && !shown.contains("pw\""), "{shown}");
}
