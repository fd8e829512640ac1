//! The listener's session machine (LISTEN-1..LISTEN-7) on arbitrary client bytes. The first
//! byte chooses the limits (largest message, most recipients) and the store's answer; the second
//! seeds the split points of the reads; the rest is what the client sends. Checked:
//! - no panic, and every reply is a proper SMTP reply (three digits, space or dash, CRLF);
//! - the result does not depend on how the bytes arrive: whole, or in reads of random sizes;
//! - a stored message has a valid sender (or none), 1..=max recipients, each a valid address,
//!   and at most the largest message size, CRLF-terminated (or empty), without Delivery-Pool;
//! - the session ends (a Close) only after QUIT or a broken BDAT.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use smtpw_engine::job::valid_address;
use smtpw_engine::listen::{Session, SessionConfig, Step, StoreError};
use smtpw_engine::settings::ListenSettings;

#[derive(Debug, PartialEq)]
enum Ev {
    Reply(String),
    Store(smtpw_engine::listen::Received),
    Close(String),
}

fn run(cfg: &SessionConfig, pieces: &[&[u8]], fail: bool) -> Vec<Ev> {
    let mut s = Session::new(cfg.clone());
    let mut evs = Vec::new();
    if let Step::Reply(r) = s.greeting(true, "127.0.0.1") {
        evs.push(Ev::Reply(r));
    }
    let mut buf = bytes::BytesMut::new();
    let mut next = pieces.iter();
    let mut id = 0;
    loop {
        match s.step(&mut buf) {
            Step::Reply(r) => evs.push(Ev::Reply(r)),
            Step::Store(r) => {
                evs.push(Ev::Store(r));
                id += 1;
                let answer = if fail { Err(StoreError::DiskFull) } else { Ok(id) };
                evs.push(Ev::Reply(Session::stored(answer)));
            }
            Step::Close(r) => {
                evs.push(Ev::Close(r));
                return evs;
            }
            Step::NeedInput => match next.next() {
                Some(p) => buf.extend_from_slice(p),
                None => return evs,
            },
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, seed, input @ ..] = data else {
        return;
    };
    let mut settings = ListenSettings::on(Vec::new());
    settings.max_message_bytes = [100, 1000, 100_000, 52_428_800][usize::from(mode & 3)];
    settings.max_recipients = [1, 2, 5, 100][usize::from((mode >> 2) & 3)];
    let fail = mode & 16 != 0;
    let cfg = SessionConfig {
        hostname: "fuzz.example".into(),
        settings: Arc::new(settings.clone()),
    };
    let whole = run(&cfg, &[input], fail);
    let mut pieces = Vec::new();
    let mut rest = input;
    let mut rng = u64::from(*seed);
    while !rest.is_empty() {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let n = (1 + (rng >> 33) as usize % 17).min(rest.len());
        pieces.push(&rest[..n]);
        rest = &rest[n..];
    }
    assert_eq!(whole, run(&cfg, &pieces, fail), "reads cut elsewhere changed the session");
    for ev in &whole {
        match ev {
            Ev::Reply(r) | Ev::Close(r) => {
                if r.is_empty() {
                    continue;
                }
                assert!(r.ends_with("\r\n"), "{r:?}");
                for l in r.split_terminator("\r\n") {
                    let b = l.as_bytes();
                    assert!(b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit), "{l:?}");
                    assert!(b[3] == b' ' || b[3] == b'-', "{l:?}");
                }
            }
            Ev::Store(m) => {
                assert!(m.mail_from.is_empty() || valid_address(&m.mail_from), "{m:?}");
                assert!(!m.rcpts.is_empty() && m.rcpts.len() <= settings.max_recipients as usize);
                assert!(m.rcpts.iter().all(|r| valid_address(r)), "{m:?}");
                assert!(m.message.len() as u64 <= settings.max_message_bytes + 2);
                assert!(m.message.is_empty() || m.message.ends_with(b"\r\n"), "{m:?}");
            }
        }
    }
});
