//! The SMTP reply parser, as the client uses it: replies are parsed from the front of a buffer
//! that grows as the server's bytes arrive. The first byte seeds the split points; the rest is
//! what a server sends. Checked:
//! - a parsed reply never uses more bytes than it was given, uses whole lines, and parsing just
//!   those bytes gives the same reply (a reply does not depend on what follows it);
//! - the replies (and whether the stream ends in an error) do not depend on how the bytes were
//!   split into reads;
//! - a reply's code is 200..=599, its one-line form has no raw control character (it goes into
//!   the ledger, the logs and `smtpw queue`'s table as one line, and the relay is not trusted),
//!   and the EHLO capabilities and RCPT classification of any reply can be read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtpw_engine::smtp::{classify_rcpt, parse_reply, Capabilities, Reply};

/// Parse replies from `buf` until it needs more or fails; returns how many bytes they used and
/// whether it failed.
fn drain(buf: &[u8], out: &mut Vec<Reply>) -> (usize, bool) {
    let mut pos = 0;
    loop {
        match parse_reply(&buf[pos..]) {
            Ok(Some((reply, used))) => {
                let rest = &buf[pos..];
                assert!(
                    used >= 1 && used <= rest.len(),
                    "used {used} of {}",
                    rest.len()
                );
                assert_eq!(rest[used - 1], b'\n', "a reply ends at the end of a line");
                assert_eq!(
                    parse_reply(&rest[..used]),
                    Ok(Some((reply.clone(), used))),
                    "the reply depends on the bytes after it"
                );
                check(&reply);
                out.push(reply);
                pos += used;
            }
            Ok(None) => return (pos, false),
            Err(_) => return (pos, true),
        }
    }
}

fn check(r: &Reply) {
    assert!((200..=599).contains(&r.code), "code {}", r.code);
    let line = r.to_string();
    assert!(
        !line.chars().any(char::is_control),
        "the one-line form shows a raw control character: {line:?}"
    );
    assert!(line.starts_with(&r.code.to_string()));
    let caps = Capabilities::from_ehlo(r);
    assert!(caps.esmtp);
    let _ = classify_rcpt(r);
}

fuzz_target!(|data: &[u8]| {
    let [seed, stream @ ..] = data else { return };
    // All at once.
    let mut whole = Vec::new();
    let (_, whole_failed) = drain(stream, &mut whole);

    // In reads of pseudo-random sizes, consuming replies as the client does.
    let mut rng = u64::from(*seed) | 1;
    let mut split = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut at = 0;
    let mut split_failed = false;
    while at < stream.len() {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let n = (1 + (rng >> 33) as usize % 29).min(stream.len() - at);
        buf.extend_from_slice(&stream[at..at + n]);
        at += n;
        let (used, failed) = drain(&buf, &mut split);
        buf.drain(..used);
        if failed {
            split_failed = true;
            break;
        }
    }
    assert_eq!(
        whole, split,
        "the replies depend on how the bytes were split"
    );
    assert_eq!(
        whole_failed, split_failed,
        "an error depends on how the bytes were split"
    );
});
