//! Over-long command lines: the mock promises `500 5.5.2 Line too long` for a command line over
//! 4096 bytes (not counting its CRLF). A test oracle must not be fooled by the way the bytes
//! arrive: exactly one reply per line, the whole line discarded up to its LF (nothing of it is
//! run as a command), and the session goes on with the commands after it, in order.
//!
//! Each case runs twice: over a real loopback socket with a plain blocking `std::net` client
//! (the bytes arrive in whatever pieces TCP makes), and over the in-memory stream.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::{mock, ready};
use mock_mta::MockConfig;

const T: Duration = Duration::from_secs(30);
const TOO_LONG: &str = "500 5.5.2 Line too long";
const NOOP_OK: &str = "250 2.0.0 OK";

/// `n` bytes of command text (no line end): an unknown verb padded with `X`.
fn line_of(n: usize) -> Vec<u8> {
    vec![b'X'; n]
}

/// What a case sends after EHLO, and the reply lines it must get, in order, before the client
/// sends a final NOOP (which must be answered, proving the session is still open and nothing
/// else was owed).
struct Case {
    name: &'static str,
    input: Vec<u8>,
    replies: Vec<&'static str>,
}

fn cases() -> Vec<Case> {
    let mut long_then_quit = line_of(16_384);
    long_then_quit.extend_from_slice(b"QUIT\r\n");
    let mut pipelined = b"MAIL FROM:<a@src.example>\r\n".to_vec();
    pipelined.extend_from_slice(&line_of(5_000));
    pipelined.extend_from_slice(b"\r\nRCPT TO:<b@dst.example>\r\nNOOP\r\nRSET\r\n");
    vec![
        Case {
            // 4096 bytes is within the limit: an ordinary (unknown) command.
            name: "4096 bytes",
            input: [line_of(4_096), b"\r\n".to_vec()].concat(),
            replies: vec!["500 5.3.3 Unrecognized command"],
        },
        Case {
            name: "4097 bytes",
            input: [line_of(4_097), b"\r\n".to_vec()].concat(),
            replies: vec![TOO_LONG],
        },
        Case {
            name: "4097 bytes, bare LF",
            input: [line_of(4_097), b"\n".to_vec()].concat(),
            replies: vec![TOO_LONG],
        },
        Case {
            name: "12000 bytes (one read's worth)",
            input: [b"MAIL FROM:<".to_vec(), line_of(12_000), b">\r\n".to_vec()].concat(),
            replies: vec![TOO_LONG],
        },
        Case {
            // The tail of the line is part of the line: not a QUIT.
            name: "16384 bytes + QUIT",
            input: long_then_quit,
            replies: vec![TOO_LONG],
        },
        Case {
            name: "10 MB",
            input: [line_of(10 * 1024 * 1024), b"\r\n".to_vec()].concat(),
            replies: vec![TOO_LONG],
        },
        Case {
            name: "pipelined around a long line",
            input: pipelined,
            replies: vec![
                "250 2.1.0 a@src.example....Sender OK",
                TOO_LONG,
                "250 2.1.5 b@dst.example",
                NOOP_OK,
                "250 2.0.0 Resetting",
            ],
        },
    ]
}

#[tokio::test]
async fn over_a_loopback_socket_one_reply_per_long_line() {
    let mta = mock(MockConfig::iis());
    let server = mta
        .listen("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("listen");
    let addr = server.local_addr();
    let results = tokio::task::spawn_blocking(move || {
        cases()
            .into_iter()
            .map(|c| {
                let got = plain_client(addr, &c.input, c.replies.len() + 1);
                (c.name, c.replies, got)
            })
            .collect::<Vec<_>>()
    });
    let results = tokio::time::timeout(T, results)
        .await
        .expect("finished in time")
        .expect("client thread");
    let mut wrong = Vec::new();
    for (name, want, got) in results {
        let mut want: Vec<String> = want.iter().map(|s| (*s).to_string()).collect();
        want.push(NOOP_OK.to_string());
        if got != want {
            wrong.push(format!("{name}: got {got:?}, expected {want:?}"));
        }
    }
    mta.stop();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A plain blocking client: greeting, EHLO, then the case's bytes and `NOOP` (written by a
/// thread of their own, since the mock answers while it reads); returns the next `n` reply
/// lines, fewer if the connection ends first.
fn plain_client(addr: std::net::SocketAddr, input: &[u8], n: usize) -> Vec<String> {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(T)).expect("timeout");
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    let read_reply = |r: &mut BufReader<TcpStream>| -> Option<String> {
        loop {
            let mut l = String::new();
            if r.read_line(&mut l).ok()? == 0 {
                return None;
            }
            let l = l.trim_end().to_string();
            if l.as_bytes().get(3) != Some(&b'-') {
                return Some(l);
            }
        }
    };
    assert!(read_reply(&mut r).expect("greeting").starts_with("220 "));
    w.write_all(b"EHLO client.example\r\n").expect("ehlo");
    assert!(read_reply(&mut r).expect("ehlo reply").starts_with("250 "));
    let data = [input, b"NOOP\r\n"].concat();
    let writer = std::thread::spawn(move || w.write_all(&data));
    let mut got = Vec::new();
    while got.len() < n {
        match read_reply(&mut r) {
            Some(l) => got.push(l),
            None => break,
        }
    }
    // A session that closed early leaves the writer with an error: that is the test's failure.
    let _ = writer.join();
    got
}

#[tokio::test]
async fn in_memory_one_reply_per_long_line() {
    let mta = mock(MockConfig::iis());
    let mut wrong = Vec::new();
    for c in cases() {
        let (mut cl, h) = tokio::time::timeout(T, ready(&mta)).await.expect("ready");
        let got = tokio::time::timeout(T, async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            // Write and read at once: a 10 MB line is more than the in-memory pipe holds.
            let (mut rd, mut wr) = tokio::io::split(&mut cl.s);
            let write = async {
                // A session that closed early makes the writes fail: the replies say why.
                let _ = wr.write_all(&c.input).await;
                let _ = wr.write_all(b"NOOP\r\n").await;
                let _ = wr.flush().await;
            };
            let read = async {
                let mut replies = Vec::new();
                let mut buf = Vec::new();
                while replies.len() < c.replies.len() + 1 {
                    let mut chunk = [0u8; 4096];
                    let n = rd.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        replies.push("(closed)".to_string());
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(p) = buf.iter().position(|b| *b == b'\n') {
                        let l: Vec<u8> = buf.drain(..=p).collect();
                        replies.push(String::from_utf8_lossy(&l).trim_end().to_string());
                    }
                }
                replies
            };
            tokio::select! {
                r = read => r,
                () = async { write.await; std::future::pending().await } => unreachable!(),
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{}: no answer to NOOP in time", c.name));
        let mut want: Vec<String> = c.replies.iter().map(|s| (*s).to_string()).collect();
        want.push(NOOP_OK.to_string());
        if got != want {
            wrong.push(format!("{}: got {got:?}, expected {want:?}", c.name));
            continue;
        }
        // Nothing more is owed: QUIT is answered next and the session ends.
        let q = cl.cmd("QUIT").await;
        assert_eq!(q.code, 221, "{}", c.name);
        assert!(cl.is_closed().await, "{}", c.name);
        h.await.expect("session");
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
