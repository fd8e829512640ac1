//! The SMTP client over streams: its driver against the small scripted SMTP server of
//! `scripted/` over `tokio::io::duplex` (paused time) and over loopback TCP (real time).
//!
//! The protocol's decisions are unit-tested without tokio next to the state machine
//! (`engine/src/smtp/txn/tests.rs`, `session/tests.rs`). These are the safety net for what only a
//! stream shows: whole sessions pipelined and lock-step, a 421, a drop and a reply in the middle
//! of the data, the time-outs and the transaction deadline on the clock, the rate gate, reading
//! while writing, the idle-connection probe, and the connectors.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use smtpw::config::HostPort;
use smtpw::net::{BoxFuture, Connector, MemoryConnector, TcpConnector};
use smtpw::smtp::{
    Capabilities, Client, ClientConfig, ConnectError, DataGate, NoGate, RcptResult, Reply, Timeouts,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

// The library's crate is `smtpw_engine` since the CLI became a package of its own; the short
// name keeps this file's paths as they were.
use smtpw_engine as smtpw;
use smtpw_testkit::scripted::*;

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn pipelined_transactions_are_one_write_group_each() {
    bounded(async {
        let (mut c, rec) = connect(Mta::pipelining()).await;
        assert_eq!(
            c.capabilities(),
            &Capabilities {
                pipelining: true,
                size: Some(2_097_152),
                enhanced_status_codes: true,
                eight_bit_mime: true,
                chunking: true,
                esmtp: true,
                ..Capabilities::default()
            }
        );
        let to = rcpts(3);
        let d = c.deliver("list@example.org", &to, MSG, 100, &NoGate).await;
        assert_eq!(d.results, vec![RcptResult::delivered(delivered_reply()); 3]);
        assert_eq!((d.transactions, d.too_many_recoveries), (1, 0));
        assert!(d.connection_lost.is_none());
        let d2 = c
            .deliver("<list@example.org>", &to[..2], MSG, 100, &NoGate)
            .await;
        assert_eq!(d2.delivered(), 2);
        assert!(c.is_usable());
        c.quit().await;
        tokio::time::sleep(Duration::from_millis(10)).await;

        let r = rec.lock().unwrap();
        let size = MSG.len();
        assert_eq!(
            r.groups,
            vec![
                vec!["EHLO lists.example.org".to_string()],
                vec![
                    format!("MAIL FROM:<list@example.org> SIZE={size}"),
                    "RCPT TO:<u0@example.net>".into(),
                    "RCPT TO:<u1@example.net>".into(),
                    "RCPT TO:<u2@example.net>".into(),
                    "DATA".into(),
                ],
                vec![
                    "RSET".into(),
                    format!("MAIL FROM:<list@example.org> SIZE={size}"),
                    "RCPT TO:<u0@example.net>".into(),
                    "RCPT TO:<u1@example.net>".into(),
                    "DATA".into(),
                ],
                vec!["QUIT".into()],
            ]
        );
        assert_eq!(r.messages.len(), 2);
        assert_eq!(r.messages[0].data, MSG);
        assert_eq!(r.messages[0].mail, "list@example.org");
        assert_eq!(r.messages[0].rcpts, to);
        assert!(r.closed);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn lockstep_without_pipelining_one_command_per_group() {
    bounded(async {
        let (mut c, rec) = connect(Mta::lockstep()).await;
        assert!(!c.capabilities().pipelining);
        assert_eq!(c.capabilities().size, Some(0));
        let to = rcpts(2);
        let d = c.deliver("list@example.org", &to, MSG, 100, &NoGate).await;
        assert_eq!(d.delivered(), 2);
        let d = c
            .deliver("list@example.org", &to[..1], MSG, 100, &NoGate)
            .await;
        assert_eq!(d.delivered(), 1);
        let r = rec.lock().unwrap();
        assert_eq!(
            r.verbs(),
            vec![
                vec!["EHLO"],
                vec!["MAIL"],
                vec!["RCPT"],
                vec!["RCPT"],
                vec!["DATA"],
                vec!["RSET"],
                vec!["MAIL"],
                vec!["RCPT"],
                vec!["DATA"],
            ]
        );
        // SIZE advertised without a limit: still announced.
        assert!(r.commands()[1].ends_with(&format!("SIZE={}", MSG.len())));
        assert_eq!(r.messages.len(), 2);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn reply_421_mid_session_defers_everything_undecided() {
    bounded(async {
        // Commands: 1 EHLO, 2 MAIL, 3 RCPT u0, 4 RCPT u1 (550), 5 RCPT u2 -> 421.
        let mta = Mta {
            reply_421_at: Some(5),
            limit: Some(10),
            ..Mta::pipelining()
        }
        .rcpt("u1@example.net", "550 5.1.1 User unknown");
        let (mut c, rec) = connect(mta).await;
        let to = rcpts(4);
        let d = c.deliver("l@x.org", &to, MSG, 100, &NoGate).await;
        let r421 = Reply::new(
            421,
            Some((4, 3, 2)),
            "Service not available, closing transmission channel",
        );
        assert_eq!(
            d.results,
            vec![
                RcptResult::deferred(r421.clone()),
                RcptResult::failed(Reply::new(550, Some((5, 1, 1)), "User unknown")),
                RcptResult::deferred(r421.clone()),
                RcptResult::deferred(r421.clone()),
            ]
        );
        assert_eq!(d.connection_lost, Some(r421.clone()));
        assert!(!c.is_usable());
        // A later call does nothing on the wire and defers everything with the same reply.
        let d = c.deliver("l@x.org", &to, MSG, 100, &NoGate).await;
        assert_eq!(d.transactions, 0);
        assert_eq!(d.results, vec![RcptResult::deferred(r421.clone()); 4]);
        assert_eq!(d.connection_lost, Some(r421));
        assert!(rec.lock().unwrap().messages.is_empty());
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn eof_mid_data_defers_accepted_with_connection_lost() {
    bounded(async {
        let mta = Mta {
            close_in_data_after: Some(10),
            ..Mta::pipelining()
        };
        let (mut c, rec) = connect(mta).await;
        let big: Vec<u8> = b"0123456789abcdef\r\n".repeat(20_000);
        let d = c.deliver("l@x.org", &rcpts(3), &big, 100, &NoGate).await;
        assert_eq!(d.deferred(), 3);
        let lost = d.connection_lost.clone().expect("lost");
        assert_eq!((lost.code, lost.enhanced), (451, Some((4, 4, 2))));
        assert!(lost.to_string().starts_with("451 4.4.2 Connection lost"));
        for r in &d.results {
            assert_eq!(r.reply(), &lost);
        }
        assert!(!c.is_usable());
        assert!(rec.lock().unwrap().messages.is_empty());
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn server_reply_during_data_is_the_final_reply() {
    bounded(async {
        let mta = Mta {
            reply_in_data: Some("552 4.3.1 Message size exceeds fixed maximum message size".into()),
            ..Mta::pipelining()
        };
        let (mut c, _rec) = connect(mta).await;
        let big: Vec<u8> = b"x".repeat(300_000);
        let to = rcpts(2);
        let d = c.deliver("l@x.org", &to, &big, 1, &NoGate).await;
        // The first transaction's recipient fails with the server's reply; the connection is
        // gone, so the second is deferred.
        assert!(d.results[0].is_failed(), "{:?}", d.results[0]);
        assert_eq!(
            d.results[0].reply().to_string(),
            "552 4.3.1 Message size exceeds fixed maximum message size"
        );
        assert!(d.results[1].is_deferred());
        assert!(d.connection_lost.is_some());
        assert!(!c.is_usable());
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn greeting_timeout_default_five_minutes() {
    bounded(async {
        let mta = Mta {
            greeting: None,
            ..Mta::pipelining()
        };
        let (s, _) = start(mta);
        let t0 = tokio::time::Instant::now();
        let e = Client::handshake(s, &cfg()).await.unwrap_err();
        assert!(matches!(e, ConnectError::Timeout("greeting")), "{e:?}");
        assert_eq!(t0.elapsed(), Duration::from_secs(300));
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn rcpt_timeout_configured_defers_with_connection_lost() {
    bounded(async {
        for mta in [Mta::pipelining(), Mta::lockstep()] {
            // 1 EHLO, 2 MAIL, 3 RCPT -> silence.
            let mta = Mta {
                silent_from: Some(3),
                ..mta
            };
            let (s, _) = start(mta);
            let cfg = ClientConfig {
                timeouts: Timeouts {
                    rcpt: Duration::from_secs(7),
                    ..Timeouts::default()
                },
                ..cfg()
            };
            let mut c = Client::handshake(s, &cfg).await.unwrap();
            let t0 = tokio::time::Instant::now();
            let d = c.deliver("l@x.org", &rcpts(2), MSG, 100, &NoGate).await;
            assert_eq!(t0.elapsed(), Duration::from_secs(7));
            assert_eq!(d.deferred(), 2);
            let lost = d.connection_lost.expect("lost");
            assert_eq!(
                lost.to_string(),
                "451 4.4.2 Connection lost (time-out waiting for the RCPT reply)"
            );
            assert!(!c.is_usable());
        }
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn final_dot_timeout_default_ten_minutes() {
    bounded(async {
        let mta = Mta {
            hang_at_end_of_data: true,
            ..Mta::pipelining()
        };
        let (mut c, _) = connect(mta).await;
        let t0 = tokio::time::Instant::now();
        let d = c.deliver("l@x.org", &rcpts(1), MSG, 100, &NoGate).await;
        assert_eq!(t0.elapsed(), Duration::from_secs(600));
        assert!(d.results[0].is_deferred());
        assert!(d.results[0].reply().text.contains("end of data"));
    })
    .await;
}

/// A relay that drips its replies one byte a second never trips a per-command time-out (each
/// reply takes well under 5 minutes), so only the transaction deadline ends the transaction: at
/// `base + size / min_rate` exactly, every recipient deferred as a lost connection.
#[tokio::test(start_paused = true)]
async fn a_relay_dripping_its_replies_is_cut_at_the_transaction_deadline() {
    bounded(async {
        for mta in [Mta::pipelining(), Mta::lockstep()] {
            let mta = Mta {
                drip: Some(Duration::from_secs(1)),
                ..mta
            };
            let (s, rec) = start(mta);
            let cfg = cfg();
            let mut c = Client::handshake(s, &cfg).await.unwrap();
            let t0 = tokio::time::Instant::now();
            // 100 RCPT replies of ~28 bytes: ~2,900 s of dripping without a deadline.
            let d = c.deliver("l@x.org", &rcpts(100), MSG, 100, &NoGate).await;
            let limit = cfg.txn_deadline.for_message(MSG.len() as u64);
            assert_eq!(
                limit,
                Duration::from_secs(900)
                    + Duration::from_nanos(MSG.len() as u64 * 1_000_000_000 / 1024)
            );
            // (Paused time fires timers on whole milliseconds.)
            let took = t0.elapsed();
            assert!(
                took >= limit && took <= limit + Duration::from_millis(1),
                "the transaction ends at its deadline {limit:?}, not after {took:?}"
            );
            assert_eq!(d.deferred(), 100, "{:?}", d.results[0]);
            let lost = d.connection_lost.expect("lost");
            assert!(lost.is_transient(), "{lost}");
            assert!(
                lost.text.contains("transaction") && lost.text.contains("900"),
                "{lost}"
            );
            assert!(!c.is_usable());
            assert!(rec.lock().unwrap().messages.is_empty());
        }
    })
    .await;
}

/// The deadline covers each transaction of a delivery, not the delivery: 30 recipients at most
/// 10 per transaction are three transactions, each inside its own 0.5 s deadline (a dripping
/// relay takes ~0.35 s per transaction) though together they last more than twice that.
#[tokio::test(start_paused = true)]
async fn each_transaction_has_its_own_deadline() {
    bounded(async {
        let mta = Mta {
            drip: Some(Duration::from_millis(1)),
            ..Mta::pipelining()
        };
        let (s, rec) = start(mta);
        let cfg = ClientConfig {
            txn_deadline: smtpw::smtp::TxnDeadline {
                base: Duration::from_millis(500),
                min_rate: 1024 * 1024,
            },
            ..cfg()
        };
        let mut c = Client::handshake(s, &cfg).await.unwrap();
        let t0 = tokio::time::Instant::now();
        let d = c.deliver("l@x.org", &rcpts(30), MSG, 10, &NoGate).await;
        assert_eq!(d.delivered(), 30, "{:?}", d.connection_lost);
        assert_eq!(d.transactions, 3);
        assert!(t0.elapsed() > Duration::from_secs(1), "{:?}", t0.elapsed());
        assert_eq!(rec.lock().unwrap().messages.len(), 3);
    })
    .await;
}

struct CountingGate(Mutex<Vec<u64>>);
impl DataGate for CountingGate {
    fn acquire(&self, bytes: u64) -> BoxFuture<'_, ()> {
        self.0.lock().unwrap().push(bytes);
        Box::pin(tokio::time::sleep(Duration::from_secs(1)))
    }
}

#[tokio::test(start_paused = true)]
async fn gate_is_awaited_before_every_transaction() {
    bounded(async {
        let mta = Mta {
            limit: Some(2),
            ..Mta::pipelining()
        };
        let (mut c, _) = connect(mta).await;
        let gate = CountingGate(Mutex::new(Vec::new()));
        let t0 = tokio::time::Instant::now();
        let d = c.deliver("l@x.org", &rcpts(5), MSG, 100, &gate).await;
        assert_eq!(d.delivered(), 5);
        assert_eq!(d.transactions, 3);
        assert_eq!(*gate.0.lock().unwrap(), vec![MSG.len() as u64; 3]);
        assert_eq!(t0.elapsed(), Duration::from_secs(3));
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn check_alive_sees_idle_close_and_unsolicited_421() {
    bounded(async {
        let (mut c, _) = connect(Mta::pipelining()).await;
        assert!(c.check_alive().await);

        // A server that says 421 on its own (idle time-out) and closes.
        let (client, mut server) = tokio::io::duplex(4096);
        let h = tokio::spawn(async move {
            server.write_all(b"220 hi\r\n").await.unwrap();
            let mut b = vec![0; 256];
            let _ = server.read(&mut b).await.unwrap();
            server
                .write_all(b"250-hi\r\n250 PIPELINING\r\n")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(600)).await;
            server
                .write_all(b"421 4.4.2 idle timeout\r\n")
                .await
                .unwrap();
        });
        let mut c = Client::handshake(Box::new(client), &cfg()).await.unwrap();
        assert!(c.check_alive().await);
        h.await.unwrap();
        assert!(!c.check_alive().await);
        assert!(!c.is_usable());
        let d = c.deliver("l@x.org", &rcpts(1), MSG, 100, &NoGate).await;
        assert_eq!(d.transactions, 0);
        assert_eq!(d.results[0].reply().code, 421);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn memory_connector_to_scripted_server() {
    bounded(async {
        let mc = MemoryConnector::new();
        let target = HostPort::new("MX.EXAMPLE.ORG", 25);
        let rec = Rec::default();
        let rec2 = rec.clone();
        mc.route(target.clone(), move |s| {
            tokio::spawn(serve(s, Mta::pipelining(), rec2.clone()));
            Ok(())
        });
        let stream = mc.connect(&target).await.unwrap();
        let mut c = Client::handshake(stream, &cfg()).await.unwrap();
        let d = c.deliver("l@x.org", &rcpts(3), MSG, 100, &NoGate).await;
        assert_eq!(d.delivered(), 3);
        c.quit().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        let r = rec.lock().unwrap();
        assert_eq!(r.messages.len(), 1);
        assert!(r.closed);
        assert_eq!(mc.connects(&target), 1);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn long_pipelined_group_over_a_tiny_pipe_does_not_deadlock() {
    bounded(async {
        // 512-byte buffers each way: the group (~14 KB) and its replies (~15 KB) cannot fit, so
        // the client must read replies while it writes.
        let (client, server) = tokio::io::duplex(512);
        let rec = Rec::default();
        tokio::spawn(serve(server, Mta::pipelining(), rec.clone()));
        let mut c = Client::handshake(Box::new(client), &cfg()).await.unwrap();
        let to = rcpts(600);
        let big = b"body line\r\n".repeat(5000);
        let d = c.deliver("l@x.org", &to, &big, 1000, &NoGate).await;
        assert_eq!(d.delivered(), 600);
        assert!(c.is_usable());
        let r = rec.lock().unwrap();
        assert_eq!(r.messages[0].rcpts.len(), 600);
        assert_eq!(r.messages[0].data, big);
        // The group arrived in pieces, but the server answered while the client was writing.
        assert!(r.groups.len() > 3);
    })
    .await;
}

/// A stream whose flush does not complete at once, as a TLS stream's does not (it writes its
/// buffered records on flush): the relay may answer the final dot before the flush is over.
struct SlowFlush<S> {
    inner: S,
    unflushed: bool,
}

impl<S: AsyncRead + Unpin> AsyncRead for SlowFlush<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SlowFlush<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.unflushed = true;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if std::mem::take(&mut self.unflushed) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The reply to the final dot that comes while the last block is being flushed is the end of
/// data's reply, not a reply before the end of the message: the recipients are delivered, not
/// deferred (which would send the message again).
#[tokio::test(start_paused = true)]
async fn the_reply_to_the_final_dot_during_the_flush_is_not_a_desync() {
    bounded(async {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let rec = Rec::default();
        tokio::spawn(serve(server, Mta::pipelining(), rec.clone()));
        let stream = SlowFlush {
            inner: client,
            unflushed: false,
        };
        let mut c = Client::handshake(Box::new(stream), &cfg()).await.unwrap();
        let d = c.deliver("l@x.org", &rcpts(2), MSG, 100, &NoGate).await;
        assert_eq!(d.results, vec![RcptResult::delivered(delivered_reply()); 2]);
        assert!(c.is_usable());
        assert_eq!(rec.lock().unwrap().messages.len(), 1);
    })
    .await;
}

/// Throughput over in-memory streams: `cargo test -p smtpw --test smtp_client -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "measurement, not a check"]
async fn throughput_pipelined_in_memory() {
    let mta = Mta {
        limit: Some(100),
        ..Mta::pipelining()
    };
    let (mut c, rec) = connect(mta).await;
    let msg = b"Subject: t\r\n\r\n"
        .iter()
        .copied()
        .chain(b"0123456789 abcdefghij\r\n".repeat(200))
        .collect::<Vec<u8>>();
    let to = rcpts(1000);
    let t0 = std::time::Instant::now();
    let mut delivered = 0;
    for _ in 0..50 {
        delivered += c
            .deliver("l@x.org", &to, &msg, 1000, &NoGate)
            .await
            .delivered();
    }
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(delivered, 50_000);
    assert_eq!(rec.lock().unwrap().messages.len(), 500);
    println!(
        "{delivered} recipients, 500 transactions, {:.0} recipients/s, {:.0} transactions/s",
        delivered as f64 / secs,
        500.0 / secs
    );
}

// ---------------------------------------------------------------------------------------------
// Real time, loopback TCP
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn tcp_connector_loopback_session_and_refused_port() {
    tokio::time::timeout(Duration::from_secs(20), async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let rec = Rec::default();
        let rec2 = rec.clone();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            serve(s, Mta::pipelining(), rec2).await;
        });
        let conn = TcpConnector::default();
        assert_eq!(conn.connect_timeout, Duration::from_secs(60));
        let stream = conn
            .connect(&HostPort::new("127.0.0.1", port))
            .await
            .unwrap();
        let cfg = ClientConfig {
            timeouts: Timeouts::uniform(Duration::from_secs(5)),
            ..cfg()
        };
        let mut c = Client::handshake(stream, &cfg).await.unwrap();
        assert!(c.capabilities().pipelining);
        let d = c.deliver("l@x.org", &rcpts(4), MSG, 100, &NoGate).await;
        assert_eq!(d.delivered(), 4);
        c.quit().await;
        assert_eq!(rec.lock().unwrap().messages[0].data, MSG);

        // A port nobody listens on: refused, fast.
        let spare = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = spare.local_addr().unwrap().port();
        drop(spare);
        let t0 = std::time::Instant::now();
        let e = conn
            .connect(&HostPort::new("127.0.0.1", dead))
            .await
            .err()
            .expect("refused");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(t0.elapsed() < Duration::from_secs(2));

        // Name resolution through lookup_host.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"220 hi\r\n").await.unwrap();
        });
        let mut s = conn
            .connect(&HostPort::new("localhost", port))
            .await
            .unwrap();
        let mut b = [0u8; 8];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"220 hi\r\n");
    })
    .await
    .expect("tcp test timed out");
}
