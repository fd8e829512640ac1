//! Reply handling end to end on paused time (TXN-4, TXN-3, QUEUE-1): MAXBSMTP chunking, the
//! relay's recipient limit learned from 552/452, 550 failures, 451 retries with back-off, the
//! lifetime, and a relay that closes or drops connections.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::civil::date;
use mock_mta::{Faults, MockConfig, RcptRule};
use smtpw_engine::ledger::Outcome;
use smtpw_engine::spool::Spool;
use smtpw_testkit::topology::{fast_options, wait_for, Topology};

const A: &str = "A.EXAMPLE.ORG:25";

fn noon() -> jiff::civil::DateTime {
    date(2026, 11, 22).at(12, 0, 0, 0)
}

/// Recipients per accepted transaction, in order.
fn txn_sizes(h: &Topology, host: &str) -> Vec<usize> {
    h.mock(host)
        .journal()
        .accepted_transactions()
        .iter()
        .map(|t| t.accepted_rcpts().count())
        .collect()
}

fn assert_each_once(h: &Topology, n: usize) {
    let c = h.delivered_counts();
    assert_eq!(c.len(), n, "distinct recipients delivered");
    let twice: Vec<_> = c.iter().filter(|(_, k)| **k > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
}

#[tokio::test(start_paused = true)]
async fn maxbsmtp_chunks_2500_into_1000_1000_500() {
    let mut m = MockConfig::iis();
    m.profile.max_recipients = Some(1000);
    let h = Topology::new(
        "SMTP_FORWARD_1=A.EXAMPLE.ORG\nMAXBSMTP=1000\n",
        noon(),
        &[(A, m)],
    );
    h.submit_n(None, 2500, "example.com", 1000);
    let s = h.run_until_empty(Duration::from_secs(60)).await;
    assert_eq!(txn_sizes(&h, A), vec![1000, 1000, 500]);
    assert_eq!((s.copies, s.transactions, s.delivered), (3, 3, 2500));
    assert_eq!(s.too_many_recoveries, 0);
    assert_eq!(h.mock(A).stats().recipients_rejected, 0);
    assert_each_once(&h, 2500);
}

async fn too_many_case(code: u16) {
    let mut m = MockConfig::iis();
    m.profile.too_many_code = code;
    let h = Topology::new(
        "SMTP_FORWARD_1=A.EXAMPLE.ORG\nMAXBSMTP=1000\n",
        noon(),
        &[(A, m)],
    );
    h.submit_n(None, 2500, "example.com", 1000);
    let s = h.run_until_empty(Duration::from_secs(60)).await;
    // The first copy: 1000 RCPTs, 100 accepted, 900 refused as too many; then 9 x 100. Later
    // copies on the connection use the learned limit from the start.
    let sizes = txn_sizes(&h, A);
    assert_eq!(sizes.len(), 25, "{sizes:?}");
    assert!(sizes[..24].iter().all(|n| *n == 100), "{sizes:?}");
    assert_eq!(sizes[24], 100);
    let all: Vec<usize> = h
        .mock(A)
        .journal()
        .transactions()
        .map(|t| t.rcpts.len())
        .collect();
    assert_eq!(all[0], 1000, "the first transaction tried MAXBSMTP");
    assert!(all[1..].iter().all(|n| *n == 100), "{all:?}");
    assert_eq!(h.mock(A).stats().recipients_rejected, 900);
    let refusal = h
        .mock(A)
        .journal()
        .rcpt_replies()
        .iter()
        .find(|r| r.code == code)
        .map(|r| r.reply.clone())
        .expect("a too-many reply");
    assert!(refusal.contains("Too many recipients"), "{refusal}");
    assert_eq!(s.too_many_recoveries, 1, "{s:?}");
    assert_eq!(s.transactions, 25);
    assert_eq!(s.delivered, 2500);
    assert_each_once(&h, 2500);
    assert!(h
        .ledger()
        .iter()
        .all(|l| l.outcome == Outcome::Delivered && l.attempts == 1));
}

#[tokio::test(start_paused = true)]
async fn iis_552_too_many_recipients_recovered_in_session() {
    too_many_case(552).await;
}

#[tokio::test(start_paused = true)]
async fn rfc_452_too_many_recipients_recovered_in_session() {
    too_many_case(452).await;
}

/// The learned limit belongs to the relay, not to one connection: a new connection (here after
/// the relay's idle time-out) starts with it.
#[tokio::test(start_paused = true)]
async fn learned_recipient_limit_outlives_the_connection() {
    let mut m = MockConfig::iis();
    m.profile.idle_timeout_secs = 5;
    let h = Topology::new(
        "SMTP_FORWARD_1=A.EXAMPLE.ORG\nMAXBSMTP=1000\n",
        noon(),
        &[(A, m)],
    );
    h.submit_n(None, 300, "one.example", 1000);
    let (engine, run) = h.spawn(fast_options());
    wait_for("the first job", Duration::from_secs(60), || {
        h.delivered_everywhere().len() == 300
    })
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    h.submit_n(None, 300, "two.example", 1000);
    wait_for("the second job", Duration::from_secs(60), || {
        h.delivered_everywhere().len() == 600
    })
    .await;
    engine.shutdown().cancel();
    let s = run.await.expect("engine");
    assert_eq!(
        h.mock(A).stats().sessions,
        2,
        "a new connection for the second job"
    );
    assert_eq!(s.too_many_recoveries, 1, "{s:?}");
    assert_eq!(h.mock(A).stats().recipients_rejected, 200);
    assert_each_once(&h, 600);
}

#[tokio::test(start_paused = true)]
async fn permanent_550_fails_with_the_exact_reply_and_the_rest_arrive() {
    let mut m = MockConfig::iis();
    m.faults.rcpt_rules.push(RcptRule {
        pattern: "*@bad.example".into(),
        code: 550,
        text: None,
    });
    let h = Topology::new(
        "SMTP_FORWARD_1=2*A.EXAMPLE.ORG\nMAXBSMTP=50\n",
        noon(),
        &[(A, m)],
    );
    let rcpts = (0..200).map(|i| {
        if i % 10 == 3 {
            format!("user{i}@bad.example")
        } else {
            format!("user{i}@good.example")
        }
    });
    h.submit(None, rcpts, 1000);
    let s = h.run_until_empty(Duration::from_secs(60)).await;
    assert_eq!((s.delivered, s.failed, s.deferred), (180, 20, 0));
    let mock_replies: BTreeMap<String, String> = h
        .mock(A)
        .journal()
        .rcpt_replies()
        .iter()
        .map(|r| (r.addr.clone(), r.reply.clone()))
        .collect();
    let finals = h.final_outcomes();
    assert_eq!(finals.len(), 200);
    for (rcpt, l) in &finals {
        if rcpt.ends_with("@bad.example") {
            assert_eq!(l.outcome, Outcome::Failed, "{rcpt}");
            assert_eq!(l.reply, "550 5.1.1 User unknown");
            assert_eq!(&l.reply, &mock_replies[rcpt], "the mock's exact reply");
        } else {
            assert_eq!(l.outcome, Outcome::Delivered, "{rcpt}");
            assert!(l.reply.starts_with("250 2.6.0 <"), "{}", l.reply);
        }
    }
    assert_each_once(&h, 180);
    let st = h.spool.stats().await.expect("stats");
    assert_eq!((st.queued, st.delivered, st.failed), (0, 180, 20));
    assert_eq!(st.failure_reasons[0].reply, "550 5.1.1 User unknown");
}

#[tokio::test(start_paused = true)]
async fn transient_451_is_retried_after_the_backoff_and_delivered_once_lifted() {
    let slow = Faults {
        rcpt_rules: vec![RcptRule {
            pattern: "*@slow.example".into(),
            code: 451,
            text: None,
        }],
        ..Faults::default()
    };
    let mut m = MockConfig::iis();
    m.faults = slow;
    let h = Topology::new(
        "SMTP_FORWARD_1=A.EXAMPLE.ORG\nMAXBSMTP=100\n",
        noon(),
        &[(A, m)],
    );
    let rcpts = (0..30).map(|i| {
        if i < 10 {
            format!("s{i}@slow.example")
        } else {
            format!("g{i}@good.example")
        }
    });
    h.submit(None, rcpts, 1000);
    let t0 = tokio::time::Instant::now();
    let (engine, run) = h.spawn(fast_options());
    // First attempt at once, the retry 30 s later (still 451), the next 60 s after that.
    tokio::time::sleep(Duration::from_secs(10)).await;
    // Counted by the mock as they happen (its journal writes a transaction when it ends).
    let slow_tries = |h: &Topology| h.mock(A).stats().recipients_rejected;
    assert_eq!(slow_tries(&h), 10);
    assert_eq!(h.mock(A).stats().recipients_accepted, 20);
    tokio::time::sleep_until(t0 + Duration::from_secs(29)).await;
    assert_eq!(slow_tries(&h), 10, "not before the back-off");
    tokio::time::sleep_until(t0 + Duration::from_secs(31)).await;
    assert_eq!(slow_tries(&h), 20, "retried after 30 s");
    h.mock(A).set_faults(Faults::default());
    tokio::time::sleep_until(t0 + Duration::from_secs(89)).await;
    assert_eq!(slow_tries(&h), 20, "the second back-off is 60 s");
    wait_for("the retry", Duration::from_secs(60), || {
        h.spool.queued_copies() == 0
    })
    .await;
    assert!(t0.elapsed() < Duration::from_secs(92));
    engine.shutdown().cancel();
    run.await.expect("engine");
    assert_each_once(&h, 30);
    let ledger = h.ledger();
    let slow_lines: Vec<_> = ledger
        .iter()
        .filter(|l| l.rcpt == "s0@slow.example")
        .collect();
    assert_eq!(slow_lines.len(), 3);
    assert_eq!(slow_lines[0].outcome, Outcome::Deferred);
    assert_eq!(
        slow_lines[0].reply,
        "451 4.2.0 Temporary failure, try again later"
    );
    assert!(slow_lines[0].retry_at.is_some());
    assert_eq!(slow_lines[1].outcome, Outcome::Deferred);
    assert_eq!(slow_lines[2].outcome, Outcome::Delivered);
    assert_eq!(
        slow_lines.iter().map(|l| l.attempts).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    // The good recipients were not sent again with the retries.
    assert_eq!(h.mock(A).stats().recipients_accepted, 30);
}

#[tokio::test(start_paused = true)]
async fn a_recipient_never_accepted_fails_at_the_lifetime_with_its_last_reply() {
    let mut m = MockConfig::iis();
    m.faults.rcpt_rules.push(RcptRule {
        pattern: "*@slow.example".into(),
        code: 451,
        text: Some("4.2.0 still busy {addr}".into()),
    });
    let h = Topology::with_options(
        "SMTP_FORWARD_1=A.EXAMPLE.ORG\nMAXBSMTP=100\n",
        noon(),
        &[(A, m)],
        |o| o.lifetime = Duration::from_secs(200),
    );
    let rcpts = (0..10).map(|i| {
        if i < 2 {
            format!("s{i}@slow.example")
        } else {
            format!("g{i}@good.example")
        }
    });
    h.submit(None, rcpts, 1000);
    let t0 = tokio::time::Instant::now();
    let s = h.run_until_empty(Duration::from_secs(3600)).await;
    // Attempts at 0, 30, 90, 210 s: the one at 210 s is past the 200 s lifetime.
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(210) && took < Duration::from_secs(212),
        "{took:?}"
    );
    assert_eq!(s.delivered, 8);
    let finals = h.final_outcomes();
    for i in 0..2 {
        let l = &finals[&format!("s{i}@slow.example")];
        assert_eq!(l.outcome, Outcome::Failed);
        assert!(l.expired);
        assert_eq!(l.attempts, 4);
        assert_eq!(l.reply, format!("451 4.2.0 still busy s{i}@slow.example"));
    }
    let st = h.spool.stats().await.expect("stats");
    assert_eq!((st.queued, st.delivered, st.failed), (0, 8, 2));
}

/// delivered + failed + queued = submitted, from the spool and from the ledger.
async fn assert_accounted(h: &Topology, submitted: u64) {
    let st = h.spool.stats().await.expect("stats");
    assert_eq!(st.delivered + st.failed + st.queued, submitted, "{st:?}");
    let finals = h.final_outcomes();
    let delivered = finals
        .values()
        .filter(|l| l.outcome == Outcome::Delivered)
        .count() as u64;
    let failed = finals
        .values()
        .filter(|l| l.outcome == Outcome::Failed)
        .count() as u64;
    assert_eq!((delivered, failed), (st.delivered, st.failed));
    // What the relay accepted is exactly what the ledger says was delivered.
    assert_eq!(h.delivered_everywhere().len() as u64, st.delivered);
}

#[tokio::test(start_paused = true)]
async fn relay_closing_with_421_after_n_messages_loses_nothing() {
    let mut m = MockConfig::iis();
    m.faults.close_after_messages = Some(3);
    let h = Topology::new(
        "SMTP_FORWARD_1=2*A.EXAMPLE.ORG\nMAXBSMTP=10\n",
        noon(),
        &[(A, m)],
    );
    h.submit_n(None, 200, "example.com", 1000);
    let (engine, run) = h.spawn(fast_options());
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert_accounted(&h, 200).await;
    }
    wait_for("everything", Duration::from_secs(600), || {
        h.spool.queued_copies() == 0
    })
    .await;
    engine.shutdown().cancel();
    let s = run.await.expect("engine");
    assert_accounted(&h, 200).await;
    assert_each_once(&h, 200);
    // Each connection took 3 messages, then 421 on the 4th MAIL (that copy deferred, not lost).
    let j = h.mock(A).journal();
    assert!(j
        .sessions
        .iter()
        .all(|s| s.transactions.iter().filter(|t| t.accepted).count() <= 3));
    assert!(j
        .sessions
        .iter()
        .any(|s| s.end_reason.as_deref() == Some("fault-421")));
    assert!(s.deferred > 0, "{s:?}");
    assert_eq!(s.delivered, 200);
}

#[tokio::test(start_paused = true)]
async fn dropped_connections_mid_data_and_after_the_dot_lose_nothing() {
    let mut m = MockConfig::iis();
    // The 2nd message of every connection is dropped after its dot (not accepted).
    m.faults.drop_after_dot_of_message = Some(2);
    m.faults.drop_mid_data_after_bytes = Some(3000);
    let h = Topology::new(
        "SMTP_FORWARD_1=3*A.EXAMPLE.ORG\nMAXBSMTP=10\n",
        noon(),
        &[(A, m.clone())],
    );
    h.submit_n(None, 150, "example.com", 5000);
    let (engine, run) = h.spawn(fast_options());
    // Every message is dropped mid-DATA for the first 100 s.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_accounted(&h, 150).await;
    }
    assert_eq!(h.delivered_everywhere().len(), 0);
    assert!(h
        .mock(A)
        .journal()
        .sessions
        .iter()
        .any(|s| s.end_reason.as_deref() == Some("fault-drop")));
    let mut f = m.faults.clone();
    f.drop_mid_data_after_bytes = None;
    h.mock(A).set_faults(f);
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_accounted(&h, 150).await;
    }
    wait_for("everything", Duration::from_secs(3600), || {
        h.spool.queued_copies() == 0
    })
    .await;
    engine.shutdown().cancel();
    run.await.expect("engine");
    assert_accounted(&h, 150).await;
    // The mock never accepts a dropped message, so the bound on repeats is exact: none.
    assert_each_once(&h, 150);
    let finals = h.final_outcomes();
    assert!(finals.values().all(|l| l.outcome == Outcome::Delivered));
    let deferred_with_drop = h
        .ledger()
        .iter()
        .filter(|l| l.outcome == Outcome::Deferred && l.reply.starts_with("451"))
        .count();
    assert!(deferred_with_drop > 0);
}

/// TXN-4: a 4xx to the end of data defers the whole message (retried after the back-off); a
/// 5xx fails its recipients with the reply.
#[tokio::test(start_paused = true)]
async fn end_of_data_451_is_retried_and_554_fails_with_the_reply() {
    let mut m = MockConfig::iis();
    m.faults.schedule = vec!["data-451 12:00-12:01".parse().expect("schedule")];
    let h = Topology::new(
        "SMTP_FORWARD_1=A.EXAMPLE.ORG\nMAXBSMTP=10\n",
        noon(),
        &[(A, m)],
    );
    h.submit_n(None, 30, "example.com", 1000);
    let t0 = tokio::time::Instant::now();
    let s = h.run_until_empty(Duration::from_secs(600)).await;
    // Attempts at 0 and 30 s fall in the 451 window; the one at 90 s gets through.
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(90) && took < Duration::from_secs(92),
        "{took:?}"
    );
    assert_eq!((s.delivered, s.failed), (30, 0));
    assert_each_once(&h, 30);
    let ledger = h.ledger();
    let deferred: Vec<_> = ledger
        .iter()
        .filter(|l| l.outcome == Outcome::Deferred)
        .collect();
    assert_eq!(deferred.len(), 60);
    assert!(deferred
        .iter()
        .all(|l| l.reply == "451 4.3.0 Mail system temporarily unavailable, try again later"));

    let mut m = MockConfig::iis();
    m.faults.schedule = vec!["data-554 00:00-24:00".parse().expect("schedule")];
    let h = Topology::new(
        "SMTP_FORWARD_1=A.EXAMPLE.ORG\nMAXBSMTP=10\n",
        noon(),
        &[(A, m)],
    );
    h.submit_n(None, 30, "example.com", 1000);
    let s = h.run_until_empty(Duration::from_secs(60)).await;
    assert_eq!((s.delivered, s.failed), (0, 30));
    assert!(h.delivered_everywhere().is_empty());
    let finals = h.final_outcomes();
    assert_eq!(finals.len(), 30);
    assert!(finals
        .values()
        .all(|l| l.outcome == Outcome::Failed && l.reply == "554 5.6.0 Message rejected"));
}

/// A relay that closes with 421 in the middle of the RCPTs (after n recipients per connection):
/// the recipients of that transaction are not delivered, so they are retried; nothing is lost
/// or doubled.
#[tokio::test(start_paused = true)]
async fn relay_closing_with_421_between_recipients_loses_nothing() {
    let mut m = MockConfig::iis();
    m.faults.close_after_recipients = Some(25);
    let h = Topology::new(
        "SMTP_FORWARD_1=2*A.EXAMPLE.ORG\nMAXBSMTP=10\n",
        noon(),
        &[(A, m)],
    );
    h.submit_n(None, 200, "example.com", 1000);
    let (engine, run) = h.spawn(fast_options());
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_accounted(&h, 200).await;
    }
    wait_for("everything", Duration::from_secs(3600), || {
        h.spool.queued_copies() == 0
    })
    .await;
    engine.shutdown().cancel();
    run.await.expect("engine");
    assert_accounted(&h, 200).await;
    assert_each_once(&h, 200);
    assert!(h
        .mock(A)
        .journal()
        .sessions
        .iter()
        .any(|s| s.end_reason.as_deref() == Some("fault-421")));
    assert!(h
        .ledger()
        .iter()
        .any(|l| l.outcome == Outcome::Deferred && l.reply.starts_with("421 ")));
}
