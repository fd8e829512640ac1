//! mock-mta's session over an in-memory duplex stream, fed arbitrary client bytes. The first byte
//! seeds the split points; the rest is what a client sends before closing its side. Checked:
//! - no panic, and the session ends once the client has closed (it does not sit out its idle
//!   time-out, and it does not hang);
//! - everything it says parses as SMTP replies (smtpw's own parser is the oracle), and it says at
//!   most one reply per line it was sent, plus the greeting: a line is answered once, however
//!   long it is;
//! - what it says does not depend on how the client's bytes were split into writes.
#![no_main]

use std::net::SocketAddr;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mock_mta::{MockConfig, MockMta};
use smtpw_engine::smtp::parse_reply;
use smtpw_clock::VirtualClock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The mock's idle time-out (IIS: 10 minutes); a session that ends later was not ended by the
/// client closing.
const IDLE: Duration = Duration::from_secs(600);

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");
}

/// Run one session; `seed` None writes the input in one piece. Returns what the mock said and
/// how long (virtual time) the session lasted.
async fn session(input: &[u8], seed: Option<u64>) -> (Vec<u8>, Duration) {
    let start = jiff::civil::date(2026, 11, 22).at(7, 30, 0, 0);
    let (_handle, clock) = VirtualClock::at_utc(start).shared();
    let mta = MockMta::new(MockConfig::iis(), clock);
    let (client, server) = tokio::io::duplex(64 * 1024);
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("an address");
    let (mut rd, mut wr) = tokio::io::split(client);
    let began = tokio::time::Instant::now();
    let serve = async {
        mta.serve_stream(server, peer).await;
        began.elapsed()
    };
    let write = async {
        match seed {
            None => {
                let _ = wr.write_all(input).await;
            }
            Some(mut rng) => {
                let mut rest = input;
                while !rest.is_empty() {
                    rng = rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let n = (1 + (rng >> 33) as usize % 97).min(rest.len());
                    if wr.write_all(&rest[..n]).await.is_err() {
                        break;
                    }
                    rest = &rest[n..];
                    // Let the session read this piece before the next one arrives.
                    for _ in 0..4 {
                        tokio::task::yield_now().await;
                    }
                }
            }
        }
        let _ = wr.shutdown().await;
    };
    let read = async {
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        out
    };
    let (lasted, (), out) = tokio::join!(serve, write, read);
    (out, lasted)
}

fuzz_target!(|data: &[u8]| {
    let [seed, input @ ..] = data else { return };
    let ((whole, t_whole), (split, t_split)) = RT.with(|rt| {
        rt.block_on(async {
            (
                session(input, None).await,
                session(input, Some(u64::from(*seed))).await,
            )
        })
    });
    for t in [t_whole, t_split] {
        assert!(
            t < IDLE,
            "the session outlived the client by its idle time-out ({t:?})"
        );
    }
    // Every byte it said is part of a reply.
    let mut replies = 0usize;
    let mut rest = &whole[..];
    while !rest.is_empty() {
        match parse_reply(rest) {
            Ok(Some((_, used))) => {
                replies += 1;
                rest = &rest[used..];
            }
            other => panic!(
                "the mock said something that is not an SMTP reply ({other:?}): {:?}",
                String::from_utf8_lossy(rest)
            ),
        }
    }
    let lines = input.iter().filter(|b| **b == b'\n').count();
    // The greeting, one per line sent, and one for an unfinished last line (500 Line too long).
    assert!(
        replies <= lines + 2,
        "{replies} replies to {lines} lines: {:?}",
        String::from_utf8_lossy(&whole)
    );
    assert!(
        whole == split,
        "the replies depend on how the client's bytes were split:\nwhole: {:?}\nsplit: {:?}",
        String::from_utf8_lossy(&whole),
        String::from_utf8_lossy(&split)
    );
});
