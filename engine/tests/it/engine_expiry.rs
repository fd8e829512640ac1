//! Host-level failures count toward the lifetime: a copy that no host could take (refused,
//! time-out, a refusing greeting, a refused EHLO) and whose job has outlived the lifetime fails,
//! every recipient with the reason the host could not be reached (`expired` in the ledger). A
//! copy still within its lifetime is only given back to the queue, untouched. Worker and
//! synchronous (SMTP_FORWARD) paths alike. In paused time over in-memory streams.

use std::time::Duration;

use jiff::civil::date;
use smtpw_engine::config::HostPort;
use smtpw_engine::ledger::Outcome;
use smtpw_engine::spool::{CopyState, Spool};
use smtpw_testkit::scripted;
use smtpw_testkit::topology::{fast_options, Topology};

const N: usize = 250;

/// The spool's lifetime set; RELAY.EXAMPLE.ORG:25 and SYNC.EXAMPLE.ORG:2525 refuse connections
/// as a closed port does (a test may route RELAY to a server instead).
fn harness(site: &str, lifetime: Duration) -> Topology {
    let h = Topology::with_options(site, date(2026, 11, 22).at(12, 0, 0, 0), &[], |o| {
        o.lifetime = lifetime;
    });
    for (host, port) in [("RELAY.EXAMPLE.ORG", 25), ("SYNC.EXAMPLE.ORG", 2525)] {
        h.connector.route(HostPort::new(host, port), |_| {
            Err(std::io::ErrorKind::ConnectionRefused.into())
        });
    }
    h
}

/// Every recipient failed once, expired, with a reply naming the host and containing `why`.
fn assert_all_expired_unreachable(h: &Topology, host: &str, why: &str) {
    let ledger = h.ledger();
    assert_eq!(
        ledger.len(),
        N,
        "one line per recipient: {:?}",
        ledger.first()
    );
    let outcomes = h.final_outcomes();
    assert_eq!(outcomes.len(), N);
    for l in outcomes.values() {
        assert_eq!(l.outcome, Outcome::Failed, "{l:?}");
        assert!(l.expired, "{l:?}");
        assert!(
            l.reply.starts_with("451 4.4.1 ")
                && l.reply.contains(&format!("{host} unreachable"))
                && l.reply.contains(why),
            "{}",
            l.reply
        );
        assert_eq!(l.relay, None, "no relay answered: {l:?}");
    }
    assert_eq!(h.spool.queued_copies(), 0);
}

#[tokio::test(start_paused = true)]
async fn lifetime_zero_and_a_refusing_host_every_recipient_fails_with_the_reason() {
    // MAXBSMTP=50: five copies, all expired at the first failed connection.
    let h = harness(
        "SMTP_FORWARD_1=2*RELAY.EXAMPLE.ORG\nMAXBSMTP=50\n",
        Duration::ZERO,
    );
    h.submit_n(None, N, "example.net", 1_000);
    h.run_until_empty(Duration::from_secs(3600)).await;
    assert_all_expired_unreachable(&h, "RELAY.EXAMPLE.ORG:25", "refused");
}

#[tokio::test(start_paused = true)]
async fn a_refusing_greeting_and_a_refused_ehlo_count_too() {
    for (mta, why) in [
        (
            scripted::Mta {
                greeting: Some("554 5.3.2 mx.example.org not accepting mail".into()),
                ..scripted::Mta::pipelining()
            },
            "554 5.3.2",
        ),
        (
            // EHLO refused (502), then HELO refused with 421.
            scripted::Mta {
                ehlo: None,
                helo_reply: "421 4.3.2 Service not available".into(),
                ..scripted::Mta::pipelining()
            },
            "421 4.3.2",
        ),
    ] {
        let h = harness(
            "SMTP_FORWARD_1=1*RELAY.EXAMPLE.ORG\nMAXBSMTP=50\n",
            Duration::ZERO,
        );
        scripted::route(&h.connector, HostPort::new("RELAY.EXAMPLE.ORG", 25), mta);
        h.submit_n(None, N, "example.net", 1_000);
        h.run_until_empty(Duration::from_secs(3600)).await;
        assert_all_expired_unreachable(&h, "RELAY.EXAMPLE.ORG:25", why);
    }
}

#[tokio::test(start_paused = true)]
async fn a_one_hour_lifetime_expires_once_virtual_time_passes_it() {
    let h = harness(
        "SMTP_FORWARD_1=1*RELAY.EXAMPLE.ORG\nMAXBSMTP=50\n",
        Duration::from_secs(3600),
    );
    h.submit_n(None, N, "example.net", 1_000);
    let t0 = h.clock.now();
    h.run_until_empty(Duration::from_secs(3 * 3600)).await;
    let ended = h.clock.now();
    assert!(
        ended.duration_since(t0) > jiff::SignedDuration::from_hours(1),
        "expired before the lifetime: {t0} .. {ended}"
    );
    // The unreachable back-off (30 s doubling to 15 min) means the expiry comes at most one
    // back-off step after the lifetime.
    assert!(
        ended.duration_since(t0) <= jiff::SignedDuration::from_mins(60 + 16),
        "{t0} .. {ended}"
    );
    assert_all_expired_unreachable(&h, "RELAY.EXAMPLE.ORG:25", "refused");
    for l in h.ledger() {
        let at: jiff::Timestamp = l.time;
        assert!(at.duration_since(t0) > jiff::SignedDuration::from_hours(1));
    }
}

#[tokio::test(start_paused = true)]
async fn a_copy_within_its_lifetime_is_only_given_back() {
    let h = harness(
        "SMTP_FORWARD_1=1*RELAY.EXAMPLE.ORG\nMAXBSMTP=50\n",
        Duration::from_secs(3600),
    );
    h.submit_n(None, N, "example.net", 1_000);
    let (engine, handle) = h.spawn(fast_options());
    // Ten minutes of failed connections (30 s, 60 s, 120 s, 240 s back-offs): still queued,
    // untouched, nothing in the ledger.
    tokio::time::sleep(Duration::from_secs(600)).await;
    engine.shutdown().cancel();
    handle.await.unwrap();
    assert!(h.ledger().is_empty(), "{:?}", h.ledger());
    let stats = h.spool.stats().await.unwrap();
    assert_eq!(
        (stats.queued, stats.failed, stats.delivered),
        (N as u64, 0, 0)
    );
    // Given back untouched: ready (no deferral, no attempt counted).
    assert!(
        stats.pools.iter().all(|p| p.state == CopyState::Ready),
        "{stats:?}"
    );
    let connects = h
        .connector
        .connects(&HostPort::new("RELAY.EXAMPLE.ORG", 25));
    assert!(
        (4..=6).contains(&connects),
        "{connects} connection attempts"
    );
}

#[tokio::test(start_paused = true)]
async fn the_synchronous_path_expires_unreachable_copies_too() {
    let h = harness(
        "SMTP_FORWARD=SYNC.EXAMPLE.ORG:2525\nMAXBSMTP=50\n",
        Duration::ZERO,
    );
    h.submit_n(None, N, "example.net", 1_000);
    h.run_until_empty(Duration::from_secs(3600)).await;
    assert_all_expired_unreachable(&h, "SYNC.EXAMPLE.ORG:2525", "refused");
}

/// The one lifetime rule: a job expires once strictly more than the lifetime has passed.
#[test]
fn the_lifetime_rule() {
    use smtpw_engine::spool::SpoolOptions;
    let t0: jiff::Timestamp = "2026-11-22T12:00:00Z".parse().unwrap();
    let at = |secs: i64, nanos: i32| t0 + jiff::SignedDuration::new(secs, nanos);
    let zero = SpoolOptions {
        lifetime: Duration::ZERO,
        ..SpoolOptions::default()
    };
    assert!(!zero.expired(t0, t0));
    assert!(zero.expired(t0, at(0, 1)));
    let hour = SpoolOptions {
        lifetime: Duration::from_secs(3600),
        ..SpoolOptions::default()
    };
    assert!(!hour.expired(t0, at(3600, 0)));
    assert!(hour.expired(t0, at(3600, 1)));
    // A clock that went back never expires a job.
    assert!(!hour.expired(t0, at(-7200, 0)));
    let forever = SpoolOptions {
        lifetime: Duration::MAX,
        ..SpoolOptions::default()
    };
    assert!(!forever.expired(t0, at(86400 * 365 * 100, 0)));
}
