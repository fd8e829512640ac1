//! IIS limits by real counters, over in-memory streams, with the exact replies.

use std::time::Duration;

use crate::common::*;
use mock_mta::{MockConfig, OverCap, OversizeData};
use sha2::{Digest, Sha256};

const T: Duration = Duration::from_secs(20);

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(T, f)
        .await
        .expect("test finished in time")
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(start_paused = true)]
async fn iis_dialogue_replies_exactly() {
    within(async {
        let mta = mock(MockConfig::iis());
        let (mut c, h) = connect(&mta);
        let g = c.reply().await;
        assert_eq!(g.code, 220);
        assert!(
            g.lines[0].starts_with("mock-iis.example.org Microsoft ESMTP MAIL Service, Version: 6.0.3790.3959 ready at  Sun, 22 Nov 2026 09:00:"),
            "{g:?}"
        );
        let e = c.cmd("EHLO client.example").await;
        assert_eq!(
            e.lines,
            [
                "mock-iis.example.org Hello [127.0.0.1]",
                "TURN",
                "ATRN",
                "SIZE 2097152",
                "ETRN",
                "PIPELINING",
                "DSN",
                "ENHANCEDSTATUSCODES",
                "8bitmime",
                "BINARYMIME",
                "CHUNKING",
                "VRFY",
                "OK"
            ]
        );
        assert_eq!(
            c.cmd("MAIL FROM:<sender@src.example> BODY=8BITMIME").await.line(),
            "250 2.1.0 sender@src.example....Sender OK"
        );
        assert_eq!(
            c.cmd("RCPT TO:<one@dst.example>").await.line(),
            "250 2.1.5 one@dst.example"
        );
        assert_eq!(
            c.cmd("DATA").await.line(),
            "354 Start mail input; end with <CRLF>.<CRLF>"
        );
        let msg = "Subject: x\r\n\r\n.leading dot\r\n..two dots\r\nend\r\n";
        c.send(&mock_mta::dot_stuff(msg.as_bytes())).await;
        let r = c.reply().await.line();
        assert!(r.starts_with("250 2.6.0 <MOCK-IIS"), "{r}");
        assert!(r.ends_with("@mock-iis.example.org> Queued mail for delivery"), "{r}");
        assert_eq!(c.cmd("NOOP").await.line(), "250 2.0.0 OK");
        assert_eq!(c.cmd("RSET").await.line(), "250 2.0.0 Resetting");
        assert_eq!(
            c.cmd("QUIT").await.line(),
            "221 2.0.0 mock-iis.example.org Service closing transmission channel"
        );
        assert!(c.is_closed().await);
        h.await.expect("session task");
        let j = mta.journal();
        assert_eq!(j.sessions.len(), 1);
        let s = &j.sessions[0];
        assert_eq!(s.ehlo.as_deref(), Some("client.example"));
        assert_eq!(s.end_reason.as_deref(), Some("quit"));
        let t = &s.transactions[0];
        assert!(t.accepted);
        assert_eq!(t.mail_from, "sender@src.example");
        assert_eq!(t.bytes, msg.len() as u64);
        assert_eq!(t.sha256, hex(&Sha256::digest(msg.as_bytes())));
        assert_eq!(j.delivered_recipients(), ["one@dst.example"]);
        assert_eq!(
            t.started_at.to_string(),
            "2026-11-22T09:00:00Z",
            "journal time comes from the injected clock"
        );
    })
    .await;
}

#[tokio::test]
async fn pipelined_mail_150_rcpts_and_data_in_one_write() {
    within(async {
        let mta = mock(MockConfig::iis());
        let (mut c, _h) = ready(&mta).await;
        let mut burst = String::from("MAIL FROM:<list@src.example>\r\n");
        for i in 0..150 {
            burst.push_str(&format!("RCPT TO:<r{i}@dst.example>\r\n"));
        }
        burst.push_str("DATA\r\n");
        c.send(burst.as_bytes()).await;
        assert_eq!(c.reply().await.code, 250);
        for i in 0..150 {
            let r = c.reply().await.line();
            if i < 100 {
                assert_eq!(r, format!("250 2.1.5 r{i}@dst.example"));
            } else {
                assert_eq!(r, "552 5.5.3 Too many recipients", "RCPT #{}", i + 1);
            }
        }
        assert_eq!(c.reply().await.code, 354);
        c.send(&mock_mta::dot_stuff(message(1).as_bytes())).await;
        assert_eq!(c.reply().await.code, 250);
        let j = mta.journal();
        let t = &j.sessions[0].transactions[0];
        assert_eq!(t.rcpts.len(), 150);
        assert_eq!(j.delivered_recipients().len(), 100);
        assert_eq!(j.delivered_recipients()[99], "r99@dst.example");
        assert_eq!(t.rcpts[100].code, 552);
        let st = mta.stats();
        assert_eq!((st.recipients_accepted, st.recipients_rejected), (100, 50));
        // The limit is per message: the next transaction gets 100 again.
        let mut burst = String::from("MAIL FROM:<list@src.example>\r\n");
        for i in 100..150 {
            burst.push_str(&format!("RCPT TO:<r{i}@dst.example>\r\n"));
        }
        c.send(burst.as_bytes()).await;
        for _ in 0..51 {
            assert_eq!(c.reply().await.code, 250);
        }
    })
    .await;
}

#[tokio::test]
async fn too_many_recipients_452_by_switch() {
    within(async {
        let mut cfg = MockConfig::iis();
        cfg.profile.max_recipients = Some(3);
        cfg.profile.too_many_code = 452;
        let mta = mock(cfg);
        let (mut c, _h) = ready(&mta).await;
        c.cmd("MAIL FROM:<a@src.example>").await;
        for i in 0..3 {
            assert_eq!(c.cmd(&format!("RCPT TO:<r{i}@d.example>")).await.code, 250);
        }
        assert_eq!(
            c.cmd("RCPT TO:<r3@d.example>").await.line(),
            "452 4.5.3 Too many recipients"
        );
        assert_eq!(
            c.cmd("RCPT TO:<r4@d.example>").await.line(),
            "452 4.5.3 Too many recipients"
        );
    })
    .await;
}

#[tokio::test]
async fn mail_size_over_the_limit_is_552_5_3_4() {
    within(async {
        let mta = mock(MockConfig::iis());
        let (mut c, _h) = ready(&mta).await;
        assert_eq!(
            c.cmd("MAIL FROM:<a@src.example> SIZE=2097153").await.line(),
            "552 5.3.4 Message size exceeds fixed maximum message size"
        );
        assert_eq!(
            c.cmd("MAIL FROM:<a@src.example> SIZE=2097152").await.code,
            250
        );
    })
    .await;
}

fn big(n: usize) -> String {
    let line = "x".repeat(78) + "\r\n";
    let mut s = String::from("Subject: big\r\n\r\n");
    while s.len() < n {
        s.push_str(&line);
    }
    s
}

#[tokio::test]
async fn oversize_data_is_discarded_and_552_after_the_dot() {
    within(async {
        let mut cfg = MockConfig::iis();
        cfg.profile.max_message_kb = Some(1);
        let mta = mock(cfg);
        let (mut c, _h) = ready(&mta).await;
        let body = big(50_000);
        c.cmd("MAIL FROM:<a@src.example>").await;
        c.cmd("RCPT TO:<b@dst.example>").await;
        assert_eq!(c.cmd("DATA").await.code, 354);
        c.send(&mock_mta::dot_stuff(body.as_bytes())).await;
        assert_eq!(
            c.reply().await.line(),
            "552 5.3.4 Message size exceeds fixed maximum message size"
        );
        // The session goes on: the data was discarded cleanly.
        c.cmd("MAIL FROM:<a@src.example>").await;
        c.cmd("RCPT TO:<b@dst.example>").await;
        c.cmd("DATA").await;
        c.send(&mock_mta::dot_stuff(message(2).as_bytes())).await;
        assert_eq!(c.reply().await.code, 250);
        let j = mta.journal();
        let ts = &j.sessions[0].transactions;
        assert!(!ts[0].accepted);
        assert_eq!(ts[0].bytes, body.len() as u64);
        assert!(ts[1].accepted);
    })
    .await;
}

#[tokio::test]
async fn oversize_data_close_mid_data_switch_replies_552_4_3_1() {
    within(async {
        let mut cfg = MockConfig::iis();
        cfg.profile.max_message_kb = Some(1);
        cfg.profile.oversize_data = OversizeData::CloseMidData;
        let mta = mock(cfg);
        let (mut c, h) = ready(&mta).await;
        c.cmd("MAIL FROM:<a@src.example>").await;
        c.cmd("RCPT TO:<b@dst.example>").await;
        c.cmd("DATA").await;
        c.send(big(2000).as_bytes()).await; // no final dot
        assert_eq!(
            c.reply().await.line(),
            "552 4.3.1 Message size exceeds fixed maximum message size"
        );
        assert!(c.is_closed().await);
        h.await.expect("session");
        let j = mta.journal();
        assert_eq!(j.sessions[0].end_reason.as_deref(), Some("size-close"));
        assert!(!j.sessions[0].transactions[0].accepted);
    })
    .await;
}

#[tokio::test]
async fn session_size_552_then_close() {
    within(async {
        let mut cfg = MockConfig::iis();
        cfg.profile.max_message_kb = Some(1);
        cfg.profile.max_session_kb = Some(2);
        let mta = mock(cfg);
        let (mut c, h) = ready(&mta).await;
        for i in 0..3 {
            c.cmd("MAIL FROM:<a@src.example>").await;
            c.cmd("RCPT TO:<b@dst.example>").await;
            c.cmd("DATA").await;
            c.send(&mock_mta::dot_stuff(big(900).as_bytes())).await;
            let r = c.reply().await.line();
            if i < 2 {
                assert!(r.starts_with("250 2.6.0"), "{r}");
            } else {
                assert_eq!(
                    r,
                    "552 5.3.4 Session size exceeds fixed maximum session size"
                );
            }
        }
        assert!(c.is_closed().await);
        h.await.expect("session");
        assert_eq!(mta.stats().messages, 2);
    })
    .await;
}

#[tokio::test]
async fn messages_per_connection_when_set_421_after_n() {
    within(async {
        let mut cfg = MockConfig::iis();
        cfg.profile.max_messages_per_connection = Some(2);
        let mta = mock(cfg);
        let (mut c, _h) = ready(&mta).await;
        for i in 0..2 {
            c.cmd("MAIL FROM:<a@src.example>").await;
            c.cmd("RCPT TO:<b@dst.example>").await;
            c.cmd("DATA").await;
            c.send(&mock_mta::dot_stuff(message(i).as_bytes())).await;
            assert_eq!(c.reply().await.code, 250);
        }
        assert_eq!(
            c.cmd("MAIL FROM:<a@src.example>").await.line(),
            "421 4.3.2 Service not available, closing transmission channel"
        );
        assert!(c.is_closed().await);
    })
    .await;
}

#[tokio::test]
async fn relay_only_from_listed_ips_and_554_without_valid_recipients() {
    within(async {
        let mut cfg = MockConfig::iis();
        cfg.profile.local_domains = vec!["local.example".into()];
        let mta = mock(cfg);
        let (mut c, _h) = connect_from(&mta, "10.1.2.3:5000".parse().expect("addr"));
        c.reply().await;
        c.cmd("EHLO outsider.example").await;
        c.cmd("MAIL FROM:<a@src.example>").await;
        assert_eq!(
            c.cmd("RCPT TO:<x@dst.example>").await.line(),
            "550 5.7.1 Unable to relay for x@dst.example"
        );
        assert_eq!(c.cmd("DATA").await.line(), "554 5.5.1 No valid recipients");
        c.cmd("RSET").await;
        c.cmd("MAIL FROM:<a@src.example>").await;
        assert_eq!(
            c.cmd("RCPT TO:<x@local.example>").await.line(),
            "250 2.1.5 x@local.example"
        );
        // 127.0.0.1 relays (the default allow-list is 127.0.0.0/8).
        let (mut l, _h2) = ready(&mta).await;
        l.cmd("MAIL FROM:<a@src.example>").await;
        assert_eq!(l.cmd("RCPT TO:<x@dst.example>").await.code, 250);
    })
    .await;
}

#[tokio::test]
async fn sequence_and_syntax_errors() {
    within(async {
        let mta = mock(MockConfig::iis());
        let (mut c, _h) = connect(&mta);
        c.reply().await;
        assert_eq!(
            c.cmd("MAIL FROM:<a@src.example>").await.line(),
            "503 5.5.2 Send hello first"
        );
        assert_eq!(
            c.cmd("HELO old.example").await.line(),
            "250 mock-iis.example.org Hello [127.0.0.1]"
        );
        assert_eq!(
            c.cmd("RCPT TO:<b@dst.example>").await.line(),
            "503 5.5.2 Need mail command"
        );
        assert_eq!(c.cmd("DATA").await.line(), "503 5.5.2 Need mail command");
        assert_eq!(c.cmd("MAIL FROM:<a@src.example>").await.code, 250);
        assert_eq!(
            c.cmd("MAIL FROM:<a@src.example>").await.line(),
            "503 5.5.2 Sender already specified"
        );
        assert_eq!(c.cmd("DATA").await.line(), "503 5.5.2 Need rcpt command");
        assert_eq!(
            c.cmd("XYZZY").await.line(),
            "500 5.3.3 Unrecognized command"
        );
        assert_eq!(
            c.cmd("RCPT TO:<a..b@x>").await.line(),
            "501 5.5.4 Invalid Address"
        );
        assert_eq!(
            c.cmd("mail from:<>").await.line(),
            "503 5.5.2 Sender already specified"
        );
        c.cmd("RSET").await;
        assert_eq!(
            c.cmd("mail from:<>").await.line(),
            "250 2.1.0 <>....Sender OK",
            "lower case and the null sender"
        );
    })
    .await;
}

#[tokio::test]
async fn connection_cap_421_then_close_and_silent_switch() {
    within(async {
        for silent in [false, true] {
            let mut cfg = MockConfig::xp();
            if silent {
                cfg.profile.over_cap = OverCap::SilentClose;
            }
            let mta = mock(cfg);
            let mut held = Vec::new();
            for _ in 0..10 {
                held.push(ready(&mta).await);
            }
            let (mut extra, h) = connect(&mta);
            if silent {
                assert!(extra.try_reply().await.is_none(), "silent close");
            } else {
                assert_eq!(
                    extra.reply().await.line(),
                    "421 4.3.2 Service not available, closing transmission channel"
                );
                assert!(extra.is_closed().await);
            }
            h.await.expect("session");
            let st = mta.stats();
            assert_eq!(
                (st.current_connections, st.peak_connections, st.over_cap),
                (10, 10, 1)
            );
            // One leaves, one more may come in.
            let (mut first, h0) = held.remove(0);
            first.cmd("QUIT").await;
            h0.await.expect("session");
            let (mut again, _h) = connect(&mta);
            assert_eq!(again.reply().await.code, 220);
            assert_eq!(mta.stats().peak_connections, 10);
        }
    })
    .await;
}

#[tokio::test]
async fn bdat_chunks_are_counted_and_queued() {
    within(async {
        let mta = mock(MockConfig::iis());
        let (mut c, _h) = ready(&mta).await;
        c.cmd("MAIL FROM:<a@src.example>").await;
        c.cmd("RCPT TO:<b@dst.example>").await;
        c.send(b"BDAT 10\r\n0123456789").await;
        assert_eq!(c.reply().await.line(), "250 2.0.0 10 bytes received");
        c.send(b"BDAT 5 LAST\r\nabcde").await;
        assert!(c.reply().await.line().starts_with("250 2.6.0 <"));
        let j = mta.journal();
        let t = &j.sessions[0].transactions[0];
        assert!(t.accepted);
        assert_eq!(t.bytes, 15);
        assert_eq!(t.sha256, hex(&Sha256::digest(b"0123456789abcde")));
    })
    .await;
}

#[tokio::test]
async fn rset_and_quit_end_transactions_unaccepted() {
    within(async {
        let mta = mock(MockConfig::iis());
        let (mut c, h) = ready(&mta).await;
        c.cmd("MAIL FROM:<a@src.example>").await;
        c.cmd("RCPT TO:<b@dst.example>").await;
        c.cmd("RSET").await;
        c.cmd("MAIL FROM:<c@src.example>").await;
        c.cmd("QUIT").await;
        h.await.expect("session");
        let j = mta.journal();
        let ts = &j.sessions[0].transactions;
        assert_eq!(ts.len(), 2);
        assert!(ts.iter().all(|t| !t.accepted && t.data_code.is_none()));
        assert!(j.delivered_recipients().is_empty());
    })
    .await;
}

/// The same pipelined script, cut into arbitrary pieces, gets the same replies byte for byte.
mod chunking {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn script() -> Vec<u8> {
        let mut s = String::from("EHLO c.example\r\nMAIL FROM:<a@src.example>\r\n");
        for i in 0..5 {
            s.push_str(&format!("RCPT TO:<r{i}@dst.example>\r\n"));
        }
        s.push_str("RCPT TO:<>\r\nDATA\r\n");
        let mut v = s.into_bytes();
        v.extend_from_slice(&mock_mta::dot_stuff(
            b"Subject: p\r\n\r\n.one\r\n..two\r\n.\r\nend\r\n",
        ));
        v.extend_from_slice(b"MAIL FROM:<b@src.example>\r\nRCPT TO:<x@dst.example>\r\nDATA\r\n");
        v.extend_from_slice(&mock_mta::dot_stuff(b"second\r\n"));
        v.extend_from_slice(b"NOOP\r\nQUIT\r\n");
        v
    }

    async fn replies(cuts: &[usize]) -> (Vec<u8>, Vec<String>) {
        let mut cfg = MockConfig::iis();
        cfg.profile.max_recipients = Some(3);
        cfg.keep_bodies = true;
        let mta = mock(cfg);
        let (mut client, server) = tokio::io::duplex(1024);
        let m = mta.clone();
        let h = tokio::spawn(async move { m.serve_stream(server, peer()).await });
        let data = script();
        let mut points: Vec<usize> = cuts.iter().map(|c| c % data.len()).collect();
        points.sort_unstable();
        points.push(data.len());
        let (mut rd, mut wr) = tokio::io::split(&mut client);
        let writer = async {
            let mut pos = 0;
            for p in points {
                wr.write_all(&data[pos..p]).await.expect("write");
                wr.flush().await.expect("flush");
                pos = p;
                tokio::task::yield_now().await;
            }
        };
        let mut out = Vec::new();
        let reader = rd.read_to_end(&mut out);
        let (_, r) = tokio::join!(writer, reader);
        r.expect("read");
        h.await.expect("session");
        let bodies = mta
            .journal()
            .transactions()
            .filter_map(|t| t.body.clone())
            .collect();
        (out, bodies)
    }

    fn run(cuts: Vec<usize>) -> (Vec<u8>, Vec<String>) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime")
            .block_on(replies(&cuts))
    }

    #[test]
    fn whole_script_replies() {
        let (out, bodies) = run(vec![]);
        let text = String::from_utf8(out).expect("utf8");
        let codes: Vec<&str> = text
            .lines()
            .filter(|l| l.as_bytes().get(3) == Some(&b' '))
            .map(|l| &l[..3])
            .collect();
        assert_eq!(
            codes,
            [
                "220", "250", "250", "250", "250", "250", "552", "552", "501", "354", "250", "250",
                "250", "354", "250", "250", "221"
            ]
        );
        assert_eq!(
            bodies,
            [
                "Subject: p\r\n\r\n.one\r\n..two\r\n.\r\nend\r\n",
                "second\r\n"
            ]
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn any_chunking_same_replies(cuts in proptest::collection::vec(any::<usize>(), 0..40)) {
            prop_assert_eq!(run(cuts), run(vec![]));
        }
    }
}

/// MAIL parameters are journaled; SMTPUTF8 is taken only when the profile offers it (IIS does
/// not: `501 5.5.4 Invalid arguments`, as to any MAIL argument it does not know).
#[tokio::test(start_paused = true)]
async fn mail_parameters_are_journaled_and_smtputf8_needs_the_offer() {
    within(async {
        let mta = mock(MockConfig::iis());
        let (mut c, _h) = ready(&mta).await;
        let r = c.cmd("MAIL FROM:<l@src.example> SMTPUTF8").await;
        assert_eq!(r.line(), "501 5.5.4 Invalid arguments");
        assert_eq!(
            c.cmd("MAIL FROM:<l@src.example> BODY=8BITMIME").await.code,
            250
        );
        c.cmd("RSET").await;

        let mut cfg = MockConfig::iis();
        cfg.profile.ehlo_keywords.push("SMTPUTF8".into());
        let mta = mock(cfg);
        let (mut c, _h) = ready(&mta).await;
        let r = c
            .cmd("MAIL FROM:<l@src.example> BODY=8BITMIME SMTPUTF8")
            .await;
        assert_eq!(r.code, 250);
        assert_eq!(c.cmd("RCPT TO:<jörg@exämple.de>").await.code, 250);
        assert_eq!(c.cmd("DATA").await.code, 354);
        c.send(&mock_mta::dot_stuff(
            "Subject: Grüße\r\n\r\nx\r\n".as_bytes(),
        ))
        .await;
        assert_eq!(c.reply().await.code, 250);
        let j = mta.journal();
        let t: Vec<_> = j.transactions().collect();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].mail_params, ["BODY=8BITMIME", "SMTPUTF8"]);
        assert_eq!(j.delivered_recipients(), ["jörg@exämple.de"]);
    })
    .await;
}
