//! Inputs the `mock_session` fuzz target (`cargo xtask fuzz`) found, kept as tests: what the mock
//! says must not depend on how a client's bytes arrive, and a line gets one reply.

use std::net::SocketAddr;

use mock_mta::{MockConfig, MockMta};
use smtpw_clock::SystemClock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One session fed `input` in pieces of `piece` bytes; the final line of each reply, in order.
async fn replies(input: &[u8], piece: usize) -> Vec<String> {
    let mta = MockMta::new(MockConfig::iis(), SystemClock::shared());
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let client = mta.connect_duplex(peer).unwrap();
    let (mut rd, mut wr) = tokio::io::split(client);
    let write = async {
        for chunk in input.chunks(piece) {
            if wr.write_all(chunk).await.is_err() {
                break;
            }
            // Let the session read this piece before the next one arrives.
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
        }
        let _ = wr.shutdown().await;
    };
    let read = async {
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        out
    };
    let ((), out) = tokio::join!(write, read);
    String::from_utf8_lossy(&out)
        .split("\r\n")
        .filter(|l| l.len() >= 3 && l.as_bytes().get(3) != Some(&b'-'))
        .map(str::to_string)
        .collect()
}

fn codes(lines: &[String]) -> Vec<&str> {
    lines.iter().map(|l| &l[..3]).collect()
}

/// A 16 KiB command line with "QUIT" at its end, then NOOP: one `500 Line too long` for the whole
/// line (its tail never runs as a command, so the session does not close), then NOOP's 250 -
/// whether the line arrives at once or in pieces (issue 10, item 10).
#[tokio::test]
async fn a_long_line_gets_one_reply_and_its_tail_never_runs() {
    let mut input = b"EHLO client.example\r\n".to_vec();
    input.extend(std::iter::repeat_n(b'X', 16_384));
    input.extend_from_slice(b"QUIT\r\nNOOP\r\n");
    for piece in [input.len(), 4_000, 1_000, 97] {
        let r = replies(&input, piece).await;
        assert_eq!(
            codes(&r),
            ["220", "250", "500", "250"],
            "pieces of {piece} bytes: {r:?}"
        );
        assert!(r[2].contains("Line too long"), "pieces of {piece}: {r:?}");
    }
}

/// A command line of 4,097..16,383 bytes gets `500 Line too long`, as the mock's README
/// promises, not the reply of the command it starts with.
#[tokio::test]
async fn a_line_over_4096_bytes_is_too_long() {
    let mut input = b"EHLO client.example\r\nNOOP ".to_vec();
    input.extend(std::iter::repeat_n(b'y', 5_000));
    input.extend_from_slice(b"\r\nQUIT\r\n");
    for piece in [input.len(), 1_000] {
        let r = replies(&input, piece).await;
        assert_eq!(
            codes(&r),
            ["220", "250", "500", "221"],
            "pieces of {piece} bytes: {r:?}"
        );
        assert!(r[2].contains("Line too long"), "pieces of {piece}: {r:?}");
    }
}
