//! Deterministic faults and the movable clock, over in-memory streams (paused time where the
//! clock matters).

use std::time::Duration;

use crate::common::*;
use jiff::civil::{date, time};
use mock_mta::{Faults, MockConfig, MockMta, RandomFaults, RcptRule};
use tokio::time::Instant;

const T: Duration = Duration::from_secs(20);

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(T, f)
        .await
        .expect("test finished in time")
}

fn with_faults(f: Faults) -> MockMta {
    let mut cfg = MockConfig::iis();
    cfg.faults = f;
    mock(cfg)
}

async fn send_one<S>(c: &mut Raw<S>, rcpts: &[&str]) -> (Vec<String>, Option<Reply>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    c.cmd("MAIL FROM:<s@src.example>").await;
    let mut rr = Vec::new();
    for r in rcpts {
        rr.push(c.cmd(&format!("RCPT TO:<{r}>")).await.line());
    }
    if c.cmd("DATA").await.code != 354 {
        return (rr, None);
    }
    c.send(&mock_mta::dot_stuff(message(0).as_bytes())).await;
    (rr, c.try_reply().await)
}

#[tokio::test]
async fn recipient_patterns_get_their_codes() {
    within(async {
        let mta = with_faults(Faults {
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
                RcptRule {
                    pattern: "vip?@odd.example".into(),
                    code: 553,
                    text: Some("5.1.3 No such mailbox {addr}".into()),
                },
            ],
            ..Faults::default()
        });
        let (mut c, _h) = ready(&mta).await;
        let (rr, end) = send_one(
            &mut c,
            &[
                "ok@good.example",
                "x@BAD.example",
                "y@slow.example",
                "vip1@odd.example",
                "vip10@odd.example",
            ],
        )
        .await;
        assert_eq!(
            rr,
            [
                "250 2.1.5 ok@good.example",
                "550 5.1.1 User unknown",
                "451 4.2.0 Temporary failure, try again later",
                "553 5.1.3 No such mailbox vip1@odd.example",
                "250 2.1.5 vip10@odd.example",
            ]
        );
        assert_eq!(end.expect("reply").code, 250);
        assert_eq!(
            mta.journal().delivered_recipients(),
            ["ok@good.example", "vip10@odd.example"]
        );
    })
    .await;
}

#[tokio::test]
async fn greeting_421_closes_and_554_accepts_only_quit() {
    within(async {
        let mta = with_faults(Faults {
            greet_code: Some(421),
            ..Faults::default()
        });
        let (mut c, h) = connect(&mta);
        assert_eq!(
            c.reply().await.line(),
            "421 4.3.2 Service not available, closing transmission channel"
        );
        assert!(c.is_closed().await);
        h.await.expect("session");

        let mta = with_faults(Faults {
            greet_code: Some(554),
            ..Faults::default()
        });
        let (mut c, h) = connect(&mta);
        assert_eq!(
            c.reply().await.line(),
            "554 5.3.2 mock-iis.example.org Service unavailable"
        );
        assert_eq!(
            c.cmd("EHLO x.example").await.line(),
            "503 5.5.1 Bad sequence of commands"
        );
        assert_eq!(c.cmd("MAIL FROM:<a@b.example>").await.code, 503);
        assert_eq!(c.cmd("QUIT").await.code, 221);
        assert!(c.is_closed().await);
        h.await.expect("session");
    })
    .await;
}

#[tokio::test]
async fn close_after_n_messages_and_after_n_recipients() {
    within(async {
        let mta = with_faults(Faults {
            close_after_messages: Some(2),
            ..Faults::default()
        });
        let (mut c, _h) = ready(&mta).await;
        for _ in 0..2 {
            let (_, end) = send_one(&mut c, &["a@d.example"]).await;
            assert_eq!(end.expect("reply").code, 250);
        }
        assert_eq!(
            c.cmd("MAIL FROM:<s@src.example>").await.line(),
            "421 4.3.2 Service not available, closing transmission channel"
        );
        assert!(c.is_closed().await);

        let mta = with_faults(Faults {
            close_after_recipients: Some(3),
            ..Faults::default()
        });
        let (mut c, h) = ready(&mta).await;
        c.cmd("MAIL FROM:<s@src.example>").await;
        for i in 0..3 {
            assert_eq!(c.cmd(&format!("RCPT TO:<r{i}@d.example>")).await.code, 250);
        }
        assert_eq!(c.cmd("RCPT TO:<r3@d.example>").await.code, 421);
        assert!(c.is_closed().await);
        h.await.expect("session");
        let j = mta.journal();
        assert_eq!(j.sessions[0].end_reason.as_deref(), Some("fault-421"));
        assert!(!j.sessions[0].transactions[0].accepted);
        assert!(j.delivered_recipients().is_empty());
    })
    .await;
}

#[tokio::test]
async fn drop_mid_data_and_drop_after_dot() {
    within(async {
        let mta = with_faults(Faults {
            drop_mid_data_after_bytes: Some(100),
            ..Faults::default()
        });
        let (mut c, h) = ready(&mta).await;
        c.cmd("MAIL FROM:<s@src.example>").await;
        c.cmd("RCPT TO:<a@d.example>").await;
        c.cmd("DATA").await;
        let body = "y".repeat(60) + "\r\n";
        c.send(body.repeat(20).as_bytes()).await;
        assert!(c.try_reply().await.is_none(), "dropped without a reply");
        h.await.expect("session");
        let j = mta.journal();
        assert_eq!(j.sessions[0].end_reason.as_deref(), Some("fault-drop"));
        assert!(!j.sessions[0].transactions[0].accepted);

        let mta = with_faults(Faults {
            drop_after_dot_of_message: Some(2),
            ..Faults::default()
        });
        let (mut c, h) = ready(&mta).await;
        let (_, first) = send_one(&mut c, &["a@d.example"]).await;
        assert_eq!(first.expect("reply").code, 250);
        let (_, second) = send_one(&mut c, &["b@d.example"]).await;
        assert!(second.is_none(), "the reply to the second dot never comes");
        h.await.expect("session");
        assert_eq!(mta.journal().delivered_recipients(), ["a@d.example"]);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn latency_per_command_and_per_reply() {
    let mut f = Faults::default();
    f.command_latency_ms.insert("RCPT".into(), 1500);
    f.command_latency_ms.insert("DOT".into(), 3000);
    f.reply_latency_ms = 200;
    let mta = with_faults(f);
    let (mut c, _h) = ready(&mta).await;
    let t0 = Instant::now();
    c.cmd("MAIL FROM:<s@src.example>").await;
    assert_eq!(t0.elapsed(), Duration::from_millis(200));
    let t1 = Instant::now();
    c.cmd("RCPT TO:<a@d.example>").await;
    assert_eq!(t1.elapsed(), Duration::from_millis(1700));
    c.cmd("DATA").await;
    let t2 = Instant::now();
    c.send(&mock_mta::dot_stuff(b"x\r\n")).await;
    assert_eq!(c.reply().await.code, 250);
    assert_eq!(t2.elapsed(), Duration::from_millis(3200));
    // Pipelined: two RCPTs in one write cost two latencies but one reply write.
    c.cmd("MAIL FROM:<s@src.example>").await;
    let t3 = Instant::now();
    c.send(b"RCPT TO:<b@d.example>\r\nRCPT TO:<c@d.example>\r\n")
        .await;
    c.reply().await;
    c.reply().await;
    assert_eq!(t3.elapsed(), Duration::from_millis(3200));
}

/// One BDAT transaction, pipelined whole (MAIL, RCPT, BDAT LAST and the message in one write).
fn bdat_txn(rcpt: &str, i: usize) -> Vec<u8> {
    let msg = message(i);
    let mut v = format!(
        "MAIL FROM:<s@src.example>\r\nRCPT TO:<{rcpt}>\r\nBDAT {} LAST\r\n",
        msg.len()
    )
    .into_bytes();
    v.extend_from_slice(msg.as_bytes());
    v
}

/// The reply latency is a delay line, as a network's: a reply leaves `reply_latency_ms` after
/// it was produced while the session goes on reading, so commands sent while earlier replies
/// are in flight do not wait for them (the old model slept before each write and did not read
/// meanwhile: the RCPT below got its reply at 400 ms, and 16 transactions sent 10 ms apart
/// took 16 latencies).
#[tokio::test(start_paused = true)]
async fn reply_latency_overlaps_like_a_network_delay() {
    let mta = with_faults(Faults {
        reply_latency_ms: 200,
        ..Faults::default()
    });
    let (mut c, _h) = ready(&mta).await;
    let t0 = Instant::now();
    c.send(b"MAIL FROM:<s@src.example>\r\n").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.send(b"RCPT TO:<a@d.example>\r\n").await;
    assert_eq!(c.reply().await.code, 250);
    assert_eq!(t0.elapsed(), Duration::from_millis(200));
    assert_eq!(c.reply().await.line(), "250 2.1.5 a@d.example");
    assert_eq!(t0.elapsed(), Duration::from_millis(300));
    assert_eq!(c.cmd("RSET").await.code, 250);

    // A window of 16 BDAT transactions, one write every 10 ms: the last reply comes 200 ms
    // after the last write, in order, every message accepted.
    let t1 = Instant::now();
    for i in 0..16 {
        c.send(&bdat_txn(&format!("r{i}@d.example"), i)).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..16 {
        assert_eq!(c.reply().await.code, 250, "MAIL {i}");
        assert_eq!(c.reply().await.line(), format!("250 2.1.5 r{i}@d.example"));
        assert_eq!(c.reply().await.code, 250, "BDAT {i}");
    }
    assert_eq!(t1.elapsed(), Duration::from_millis(150 + 200));
    let want: Vec<String> = (0..16).map(|i| format!("r{i}@d.example")).collect();
    assert_eq!(mta.journal().delivered_recipients(), want);
}

/// Faults under a reply latency happen at their point in the stream: the replies produced
/// before a drop or a 421 reach the client (on time), then the connection closes; what came
/// after is not answered.
#[tokio::test(start_paused = true)]
async fn reply_latency_keeps_faults_at_their_point_in_the_stream() {
    // A drop after the second message's data, three transactions in one write.
    let mta = with_faults(Faults {
        reply_latency_ms: 200,
        drop_after_dot_of_message: Some(2),
        ..Faults::default()
    });
    let (mut c, h) = ready(&mta).await;
    let t0 = Instant::now();
    let mut w = bdat_txn("a@d.example", 0);
    w.extend(bdat_txn("b@d.example", 1));
    w.extend(bdat_txn("c@d.example", 2));
    c.send(&w).await;
    let codes = [
        c.reply().await.code,
        c.reply().await.code,
        c.reply().await.code,
    ];
    assert_eq!(codes, [250, 250, 250]);
    assert_eq!(t0.elapsed(), Duration::from_millis(200));
    // MAIL and RCPT of the second transaction were answered before its data ended.
    assert_eq!(c.reply().await.code, 250);
    assert_eq!(c.reply().await.code, 250);
    assert!(c.try_reply().await.is_none(), "dropped after the 2nd dot");
    h.await.expect("session");
    assert_eq!(mta.journal().delivered_recipients(), ["a@d.example"]);

    // 421 at the second MAIL (close_after_messages = 1).
    let mta = with_faults(Faults {
        reply_latency_ms: 200,
        close_after_messages: Some(1),
        ..Faults::default()
    });
    let (mut c, h) = ready(&mta).await;
    let mut w = bdat_txn("a@d.example", 0);
    w.extend(bdat_txn("b@d.example", 1));
    c.send(&w).await;
    let codes: Vec<u16> = vec![
        c.reply().await.code,
        c.reply().await.code,
        c.reply().await.code,
        c.reply().await.code,
    ];
    assert_eq!(codes, [250, 250, 250, 421]);
    assert!(c.try_reply().await.is_none(), "closed after the 421");
    h.await.expect("session");
    assert_eq!(mta.journal().delivered_recipients(), ["a@d.example"]);
}

/// The delay line is bounded: with replies a long way off, a client that keeps writing sees
/// the session stop reading after DELAY_LINE_WRITES writes are waiting, and go on once they
/// leave; nothing is lost or reordered.
#[tokio::test(start_paused = true)]
async fn reply_latency_buffering_is_bounded() {
    let mta = with_faults(Faults {
        reply_latency_ms: 10_000,
        ..Faults::default()
    });
    let (mut c, _h) = ready(&mta).await;
    let n = mock_mta::DELAY_LINE_WRITES + 16;
    for i in 0..n {
        c.send(&bdat_txn(&format!("r{i}@d.example"), i)).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // One write of replies per read: the session has taken in the line's capacity, the write
    // the writer holds until it is due, and the one read whose replies wait to get onto the line.
    let taken = mta.journal().transactions().count();
    assert_eq!(
        taken,
        mock_mta::DELAY_LINE_WRITES + 2,
        "{taken} transactions read with {} writes in flight at most",
        mock_mta::DELAY_LINE_WRITES
    );
    for i in 0..n {
        assert_eq!(c.reply().await.code, 250, "MAIL {i}");
        assert_eq!(c.reply().await.line(), format!("250 2.1.5 r{i}@d.example"));
        assert_eq!(c.reply().await.code, 250, "BDAT {i}");
    }
    assert_eq!(mta.journal().delivered_recipients().len(), n);
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_after_ten_virtual_minutes_without_reply() {
    let (_clock_handle, clock) = vclock(date(2026, 11, 22).at(9, 0, 0, 0));
    let mta = MockMta::new(MockConfig::iis(), clock.clone());
    let (mut c, h) = connect(&mta);
    c.reply().await;
    c.cmd("EHLO idle.example").await;
    let t0 = Instant::now();
    // Still open after 9 min 59 s...
    assert!(
        tokio::time::timeout(Duration::from_secs(599), c.try_reply())
            .await
            .is_err()
    );
    // ...closed at 10 min, with no reply.
    assert!(c.try_reply().await.is_none());
    assert_eq!(t0.elapsed(), Duration::from_secs(600));
    h.await.expect("session");
    let j = mta.journal();
    assert_eq!(j.sessions[0].end_reason.as_deref(), Some("idle-timeout"));
    let ended = j.sessions[0].ended_at.expect("ended");
    assert_eq!(ended.to_string(), "2026-11-22T09:10:00Z");
    assert_eq!(clock.local_time(), time(9, 10, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn clock_scheduled_outage_over_a_virtual_hour() {
    let (_clock_handle, clock) = vclock(date(2026, 11, 22).at(9, 30, 0, 0));
    let mut cfg = MockConfig::iis();
    cfg.faults.schedule = vec![
        "down 10:00-10:05".parse().expect("entry"),
        "rcpt-451 10:10-10:12".parse().expect("entry"),
    ];
    let mta = MockMta::new(cfg, clock.clone());
    let real = std::time::Instant::now();
    let mut refused_at = Vec::new();
    let mut tempfail_at = Vec::new();
    for minute in 0..60 {
        let now = clock.local_time();
        assert_eq!(
            mta.is_refusing(),
            (time(10, 0, 0, 0)..time(10, 5, 0, 0)).contains(&now)
        );
        let (mut c, h) = connect(&mta);
        match c.try_reply().await {
            None => refused_at.push(now.strftime("%H:%M").to_string()),
            Some(g) => {
                assert_eq!(g.code, 220);
                c.cmd("EHLO x.example").await;
                c.cmd("MAIL FROM:<s@src.example>").await;
                let r = c.cmd(&format!("RCPT TO:<m{minute}@d.example>")).await;
                if r.code == 451 {
                    tempfail_at.push(now.strftime("%H:%M").to_string());
                }
                c.cmd("QUIT").await;
            }
        }
        h.await.expect("session");
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    assert_eq!(refused_at, ["10:00", "10:01", "10:02", "10:03", "10:04"]);
    assert_eq!(tempfail_at, ["10:10", "10:11"]);
    assert_eq!(mta.stats().refused, 5);
    assert_eq!(mta.stats().sessions, 55);
    assert!(
        real.elapsed() < Duration::from_secs(5),
        "an hour of schedule in {:?}",
        real.elapsed()
    );
}

#[tokio::test]
async fn faults_can_be_switched_at_run_time() {
    within(async {
        let mta = mock(MockConfig::iis());
        assert!(!mta.is_refusing());
        mta.set_faults(Faults {
            refuse_connections: true,
            ..Faults::default()
        });
        assert!(mta.is_refusing());
        let (mut c, h) = connect(&mta);
        assert!(c.try_reply().await.is_none());
        h.await.expect("session");
        mta.set_faults(Faults::default());
        let (mut c, _h) = connect(&mta);
        assert_eq!(c.reply().await.code, 220);
        // An open session sees new faults from its next command.
        c.cmd("EHLO x.example").await;
        c.cmd("MAIL FROM:<s@src.example>").await;
        mta.set_faults(Faults {
            rcpt_rules: vec![RcptRule {
                pattern: "*".into(),
                code: 451,
                text: None,
            }],
            ..Faults::default()
        });
        assert_eq!(c.cmd("RCPT TO:<a@d.example>").await.code, 451);
    })
    .await;
}

#[tokio::test]
async fn random_faults_only_with_a_seed_and_repeatable() {
    async fn codes(seed: u64) -> Vec<u16> {
        let mta = with_faults(Faults {
            random: Some(RandomFaults {
                seed,
                rcpt_451_per_mille: 300,
                drop_after_dot_per_mille: 0,
            }),
            ..Faults::default()
        });
        let (mut c, _h) = ready(&mta).await;
        c.cmd("MAIL FROM:<s@src.example>").await;
        let mut out = Vec::new();
        for i in 0..60 {
            out.push(c.cmd(&format!("RCPT TO:<r{i}@d.example>")).await.code);
        }
        out
    }
    within(async {
        let a = codes(42).await;
        let b = codes(42).await;
        let other = codes(7).await;
        assert_eq!(a, b, "same seed, same faults");
        assert_ne!(a, other);
        let n451 = a.iter().filter(|c| **c == 451).count();
        assert!((5..40).contains(&n451), "about 30% of 60: {n451}");
        // No seed, no randomness: 100 RCPTs all accepted.
        let mta = mock(MockConfig::iis());
        let (mut c, _h) = ready(&mta).await;
        c.cmd("MAIL FROM:<s@src.example>").await;
        for i in 0..100 {
            assert_eq!(c.cmd(&format!("RCPT TO:<r{i}@d.example>")).await.code, 250);
        }
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn wait_until_wakes_on_progress() {
    let mta = mock(MockConfig::iis());
    let m = mta.clone();
    let waiter = tokio::spawn(async move { m.wait_until(|s| s.messages >= 3).await });
    let (mut c, _h) = ready(&mta).await;
    for _ in 0..3 {
        let (_, end) = send_one(&mut c, &["a@d.example"]).await;
        assert_eq!(end.expect("reply").code, 250);
    }
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woke")
        .expect("task");
    assert_eq!(mta.stats().messages, 3);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_reads_is_dropped_after_the_idle_time() {
    use tokio::io::AsyncWriteExt;
    let mta = mock(MockConfig::iis());
    let (mut client, server) = tokio::io::duplex(64);
    let m = mta.clone();
    let h = tokio::spawn(async move { m.serve_stream(server, peer()).await });
    let writer = tokio::spawn(async move {
        let _ = client.write_all(&b"NOOP\r\n".repeat(500)).await;
        client // keep it open, never read
    });
    let t0 = Instant::now();
    tokio::time::timeout(Duration::from_secs(700), h)
        .await
        .expect("session ended by itself")
        .expect("session");
    assert_eq!(t0.elapsed(), Duration::from_secs(600));
    assert_eq!(
        mta.journal().sessions[0].end_reason.as_deref(),
        Some("io-error")
    );
    assert_eq!(mta.stats().current_connections, 0, "its slot is free again");
    writer.abort();
}
