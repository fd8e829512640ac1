//! The session machine without sockets: replies, stores and properties.

use std::sync::Arc;

use proptest::prelude::*;

use super::session::*;
use crate::config::Pool;
use crate::settings::{ListenSettings, SenderPattern};

fn cfg() -> SessionConfig {
    let mut s = ListenSettings::on(Vec::new());
    s.max_message_bytes = 10_000;
    s.max_recipients = 5;
    s.pools = vec![(
        SenderPattern::new("owner-bulk-*@lists.example.org"),
        Pool::from_char('B').unwrap(),
    )];
    SessionConfig {
        hostname: "mx.test".into(),
        settings: Arc::new(s),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Reply(String),
    Store(Received),
    Close(String),
}

/// Feed `chunks` one after another (the driver's reads); every Store gets `answer`.
fn run_with(chunks: &[&[u8]], answer: Result<i64, StoreError>) -> Vec<Ev> {
    let mut s = Session::new(cfg());
    let mut evs = vec![];
    if let Step::Reply(r) = s.greeting(true, "127.0.0.1") {
        evs.push(Ev::Reply(r));
    }
    let mut buf = bytes::BytesMut::new();
    let mut rest = chunks.iter();
    loop {
        match s.step(&mut buf) {
            Step::Reply(r) => evs.push(Ev::Reply(r)),
            Step::Store(rcv) => {
                evs.push(Ev::Store(rcv));
                evs.push(Ev::Reply(Session::stored(answer.clone())));
            }
            Step::Close(r) => {
                evs.push(Ev::Close(r));
                return evs;
            }
            Step::NeedInput => match rest.next() {
                Some(c) => buf.extend_from_slice(c),
                None => return evs,
            },
        }
    }
}

fn run(input: &[u8]) -> Vec<Ev> {
    run_with(&[input], Ok(7))
}

fn codes(evs: &[Ev]) -> Vec<String> {
    evs.iter()
        .map(|e| match e {
            Ev::Reply(r) | Ev::Close(r) => r.lines().last().unwrap_or("")[..3].to_string(),
            Ev::Store(_) => "store".into(),
        })
        .collect()
}

fn stores(evs: &[Ev]) -> Vec<Received> {
    evs.iter()
        .filter_map(|e| match e {
            Ev::Store(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_pipelined_transaction_is_stored_and_answered_with_its_job_id() {
    let evs = run(b"EHLO c\r\nMAIL FROM:<a@x.example> SIZE=100 BODY=8BITMIME\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<c@y.example>\r\nDATA\r\nSubject: hi\r\n\r\n..dot\r\nbody\r\n.\r\nQUIT\r\n");
    assert_eq!(
        codes(&evs),
        ["220", "250", "250", "250", "250", "354", "store", "250", "221"]
    );
    let ehlo = match &evs[1] {
        Ev::Reply(r) => r.clone(),
        _ => unreachable!(),
    };
    for ext in [
        "PIPELINING",
        "SIZE 10000",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "SMTPUTF8",
        "XPOOL",
    ] {
        assert!(ehlo.contains(ext), "{ext} advertised: {ehlo}");
    }
    let s = stores(&evs);
    assert_eq!(s[0].mail_from, "a@x.example");
    assert_eq!(s[0].rcpts, ["b@y.example", "c@y.example"]);
    assert_eq!(s[0].message, b"Subject: hi\r\n\r\n.dot\r\nbody\r\n");
    assert_eq!((s[0].pool, s[0].pool_by), (None, "default"));
    assert_eq!(evs[7], Ev::Reply("250 2.0.0 Ok: queued as 7\r\n".into()));
}

#[test]
fn many_transactions_per_connection_and_rset() {
    let evs = run(b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<b@y>\r\nRSET\r\nDATA\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\none\r\n.\r\nMAIL FROM:<a@x>\r\nRCPT TO:<c@y>\r\nDATA\r\ntwo\r\n.\r\n");
    assert_eq!(
        codes(&evs),
        [
            "220", "250", "250", "250", "250", "503", "250", "250", "354", "store", "250", "250",
            "250", "354", "store", "250"
        ]
    );
    let s = stores(&evs);
    assert_eq!(
        (s[0].message.as_slice(), s[1].message.as_slice()),
        (&b"one\r\n"[..], &b"two\r\n"[..])
    );
    assert_eq!(s[1].rcpts, ["c@y"]);
}

#[test]
fn bad_input_gets_the_right_reply_and_stores_nothing() {
    let evs = run(b"MAIL FROM:<a@x>\r\nEHLO c\r\nMAIL FROM:<not an address>\r\nMAIL FROM:<a@x> SIZE=10001\r\nMAIL FROM:<a@x> XPOOL=7\r\nMAIL FROM:<a@x> FOO=1\r\nMAIL FROM:<a@x>\r\nRCPT TO:<nodomain>\r\nRCPT TO:<@>\r\nDATA\r\nBOGUS\r\nRCPT TO:<\xc3\xa9@y>\r\n");
    assert_eq!(
        codes(&evs),
        [
            "220", "503", "250", "501", "552", "501", "555", "250", "501", "501", "554", "500",
            "250"
        ]
    );
    assert!(stores(&evs).is_empty());
}

#[test]
fn recipients_past_the_limit_get_452_and_the_rest_is_stored() {
    let mut input = b"EHLO c\r\nMAIL FROM:<a@x>\r\n".to_vec();
    for i in 0..7 {
        input.extend_from_slice(format!("RCPT TO:<r{i}@y>\r\n").as_bytes());
    }
    input.extend_from_slice(b"DATA\r\nx\r\n.\r\n");
    let evs = run(&input);
    assert_eq!(
        codes(&evs)[3..],
        ["250", "250", "250", "250", "250", "452", "452", "354", "store", "250"]
    );
    assert_eq!(stores(&evs)[0].rcpts.len(), 5);
}

#[test]
fn a_message_over_size_is_read_to_its_end_and_refused_with_552() {
    let mut input = b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n".to_vec();
    for _ in 0..200 {
        input.extend_from_slice(&[b'x'; 78]);
        input.extend_from_slice(b"\r\n");
    }
    input.extend_from_slice(b".\r\nNOOP\r\n");
    let evs = run(&input);
    assert_eq!(
        codes(&evs),
        ["220", "250", "250", "250", "354", "552", "250"]
    );
}

#[test]
fn bdat_bare_line_feeds_made_crlf_count_toward_the_size_limit() {
    // 6000 bare LFs: 6000 bytes as sent, 12000 as stored (the limit is 10000).
    let body = "\n".repeat(6000);
    let input = format!(
        "EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT {} LAST\r\n{body}NOOP\r\n",
        body.len()
    );
    let evs = run(input.as_bytes());
    assert_eq!(codes(&evs), ["220", "250", "250", "250", "552", "250"]);
}

#[test]
fn a_store_that_fails_is_answered_451_and_the_session_goes_on() {
    let input: &[u8] =
        b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nx\r\n.\r\nMAIL FROM:<a@x>\r\n";
    let evs = run_with(&[input], Err(StoreError::DiskFull));
    assert_eq!(
        codes(&evs),
        ["220", "250", "250", "250", "354", "store", "451", "250"]
    );
    assert!(matches!(&evs[6], Ev::Reply(r) if r.starts_with("451 4.3.1")));
}

#[test]
fn pool_by_xpool_then_header_then_sender_map_then_default() {
    let msg = "Delivery-Pool: C\r\nX-Other: 1\r\n\r\nbody\r\nDelivery-Pool: D\r\n";
    let tx = |from: &str, xpool: &str| {
        format!("MAIL FROM:<{from}>{xpool}\r\nRCPT TO:<b@y>\r\nDATA\r\n{msg}.\r\n")
    };
    let input = format!(
        "EHLO c\r\n{}{}{}{}",
        tx("owner-bulk-x@lists.example.org", " XPOOL=a"),
        tx("owner-bulk-x@lists.example.org", ""),
        tx("a@x", "").replace("Delivery-Pool: C\r\n", ""),
        tx("OWNER-bulk-y@LISTS.example.org", "").replace("Delivery-Pool: C\r\n", ""),
    );
    let s = stores(&run(input.as_bytes()));
    let got: Vec<_> = s
        .iter()
        .map(|r| (r.pool.map(Pool::as_char), r.pool_by))
        .collect();
    assert_eq!(
        got,
        [
            (Some('A'), "xpool"),
            (Some('C'), "header"),
            (None, "default"),
            (Some('B'), "sender map")
        ]
    );
    // The header field goes; a line of the body that looks like one stays.
    assert_eq!(
        s[0].message,
        b"X-Other: 1\r\n\r\nbody\r\nDelivery-Pool: D\r\n"
    );
    assert_eq!(s[1].message, s[0].message);
}

#[test]
fn bdat_chunks_make_one_message_and_bdat_without_recipients_is_read_and_refused() {
    let input: &[u8] = b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 6\r\nline\r\nBDAT 8 LAST\r\n.two\r\n\r\nMAIL FROM:<a@x>\r\nBDAT 4 LAST\r\nQUITNOOP\r\n";
    let evs = run(input);
    assert_eq!(
        codes(&evs),
        ["220", "250", "250", "250", "250", "store", "250", "250", "554", "250"]
    );
    assert_eq!(stores(&evs)[0].message, b"line\r\n.two\r\n\r\n");
}

#[test]
fn a_client_outside_allow_is_refused_554_5_7_1() {
    let mut s = Session::new(cfg());
    match s.greeting(false, "192.0.2.9") {
        Step::Close(r) => assert!(r.starts_with("554 5.7.1 192.0.2.9 "), "{r}"),
        other => panic!("{other:?}"),
    }
    assert!(s.is_closed());
}

/// A valid client conversation of `n` transactions with the given messages.
fn conversation(msgs: &[Vec<Vec<u8>>], bdat: bool) -> Vec<u8> {
    let mut out = b"EHLO c\r\n".to_vec();
    for (i, lines) in msgs.iter().enumerate() {
        out.extend_from_slice(format!("MAIL FROM:<s{i}@x>\r\nRCPT TO:<r{i}@y>\r\n").as_bytes());
        let mut body = Vec::new();
        for l in lines {
            body.extend_from_slice(l);
            body.extend_from_slice(b"\r\n");
        }
        if bdat {
            out.extend_from_slice(format!("BDAT {} LAST\r\n", body.len()).as_bytes());
            out.extend_from_slice(&body);
        } else {
            out.extend_from_slice(b"DATA\r\n");
            out.extend_from_slice(&crate::smtp::data::dot_stuff(&body));
            out.extend_from_slice(b".\r\n");
        }
    }
    out.extend_from_slice(b"QUIT\r\n");
    out
}

fn split_at_points(input: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.sort_unstable();
    let mut out = Vec::new();
    let mut prev = 0;
    for p in points {
        out.push(input[prev..p].to_vec());
        prev = p;
    }
    out.push(input[prev..].to_vec());
    out
}

fn line() -> impl Strategy<Value = Vec<u8>> {
    // Lines without CR or LF, often starting with dots; at most 200 bytes.
    prop::collection::vec(
        prop_oneof![
            Just(b'.'),
            Just(b'a'),
            Just(b' '),
            0x20u8..0x7f,
            0x80u8..=0xff
        ],
        0..200,
    )
    .prop_map(|v| {
        v.into_iter()
            .filter(|b| *b != b'\r' && *b != b'\n')
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the client sends, the session never panics, every reply is a proper SMTP
    /// reply, and a store only follows MAIL and at least one accepted RCPT.
    #[test]
    fn arbitrary_input_gets_well_formed_replies(input in prop::collection::vec(any::<u8>(), 0..2000), words in prop::collection::vec(prop_oneof![
        Just(&b"EHLO c\r\n"[..]), Just(&b"MAIL FROM:<a@x>\r\n"[..]), Just(&b"RCPT TO:<b@y>\r\n"[..]),
        Just(&b"DATA\r\n"[..]), Just(&b"\r\n.\r\n"[..]), Just(&b"BDAT 3\r\n"[..]), Just(&b"RSET\r\n"[..]),
        Just(&b"BDAT 1 LAST\r\n"[..])], 0..20)) {
        let mut all = Vec::new();
        for (i, w) in words.iter().enumerate() {
            all.extend_from_slice(w);
            let k = (i * 97) % (input.len() + 1);
            all.extend_from_slice(&input[..k.min(50)]);
        }
        all.extend_from_slice(&input);
        for ev in run(&all) {
            match ev {
                Ev::Reply(r) | Ev::Close(r) if !r.is_empty() => {
                    prop_assert!(r.ends_with("\r\n"));
                    for l in r.split_terminator("\r\n") {
                        prop_assert!(l.len() >= 4 && l.as_bytes()[..3].iter().all(u8::is_ascii_digit), "{l:?}");
                        prop_assert!(l.as_bytes()[3] == b' ' || l.as_bytes()[3] == b'-');
                    }
                }
                Ev::Store(s) => prop_assert!(!s.rcpts.is_empty()),
                _ => {}
            }
        }
    }

    /// However the reads cut the stream (PIPELINING, partial lines, a split CRLF, a BDAT
    /// chunk in pieces), the session does the same; and the stored message is the one sent,
    /// CRLF-terminated, dot-stuffing undone.
    #[test]
    fn reads_cut_anywhere_change_nothing_and_messages_arrive_intact(
        msgs in prop::collection::vec(prop::collection::vec(line(), 0..8), 1..4),
        bdat in any::<bool>(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let input = conversation(&msgs, bdat);
        let whole = run(&input);
        let pieces = split_at_points(&input, &cuts);
        let refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        prop_assert_eq!(&run_with(&refs, Ok(7)), &whole);
        let stored = stores(&whole);
        prop_assert_eq!(stored.len(), msgs.len());
        for (s, lines) in stored.iter().zip(&msgs) {
            let mut want = Vec::new();
            for l in lines {
                want.extend_from_slice(l);
                want.extend_from_slice(b"\r\n");
            }
            prop_assert_eq!(&s.message, &want);
        }
    }
}
