//! The `.MAIL` job format: round trips, dot-stuffing, malformed input with line numbers.

use proptest::prelude::*;
use smtpw_engine::config::Pool;
use smtpw_engine::job::{dot_stuff, dot_unstuff, read_all, to_crlf, Job, JobError, JobWriter};

const MAX: u64 = 1 << 20;

fn addr() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9._%+=-]{1,12}@[a-zA-Z0-9-]{1,10}(\\.[a-z]{2,4}){0,2}"
}

fn pool() -> impl Strategy<Value = Option<Pool>> {
    prop_oneof![Just(None), (0usize..Pool::COUNT).prop_map(Pool::from_index),]
}

/// Message lines: arbitrary printable text including leading dots and lone dots, CRLF joined.
fn message() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            Just(".".to_string()),
            Just("..".to_string()),
            Just(String::new()),
            "\\.?[ -~]{0,40}",
        ],
        0..20,
    )
    .prop_map(|lines| {
        let mut m = Vec::new();
        for l in lines {
            m.extend_from_slice(l.as_bytes());
            m.extend_from_slice(b"\r\n");
        }
        m
    })
}

fn write_jobs(jobs: &[Job], lf_only: bool) -> Vec<u8> {
    let mut w = JobWriter::new(Vec::new());
    w.helo("LISTSERV.EXAMPLE.ORG").unwrap();
    for j in jobs {
        w.job(&j.mail_from, j.pool, &j.rcpts, &j.message[..])
            .unwrap();
    }
    let out = w.finish().unwrap();
    if lf_only {
        String::from_utf8(out)
            .unwrap()
            .replace("\r\n", "\n")
            .into_bytes()
    } else {
        out
    }
}

proptest! {
    #[test]
    fn write_then_read_gives_the_same_jobs(
        jobs in prop::collection::vec(
            (prop_oneof![addr(), Just(String::new())], pool(), prop::collection::vec(addr(), 1..30), message())
                .prop_map(|(mail_from, pool, rcpts, message)| Job { mail_from, pool, rcpts, message }),
            1..4),
        lf_only in any::<bool>(),
    ) {
        let text = write_jobs(&jobs, lf_only);
        let back = read_all(&text[..], MAX).unwrap();
        prop_assert_eq!(back, jobs);
    }

    #[test]
    fn the_reader_never_panics_on_garbage(
        lines in prop::collection::vec(
            prop_oneof![
                Just("MAIL FROM:<a@b>".to_string()),
                Just("RCPT TO:<c@d>".to_string()),
                Just("DATA".to_string()),
                Just(".".to_string()),
                Just("QUIT".to_string()),
                "[ -~]{0,30}",
                prop::collection::vec(any::<u8>(), 0..30).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
            ],
            0..30),
        max in 0u64..200,
    ) {
        let text = lines.join("\n");
        match read_all(text.as_bytes(), max) {
            Ok(jobs) => {
                for j in jobs {
                    prop_assert!(!j.rcpts.is_empty());
                    prop_assert!(j.message.len() as u64 <= max);
                }
            }
            Err(JobError::Malformed { line, .. }) | Err(JobError::TooLarge { line, .. }) => {
                prop_assert!(line >= 1 && line as usize <= lines.len() + 1);
            }
            Err(JobError::Io(e)) => prop_assert!(false, "io error from a slice: {e}"),
        }
    }

    #[test]
    fn dot_unstuff_inverts_dot_stuff(m in message()) {
        let stuffed = dot_stuff(&m);
        // No line of the stuffed text is a lone ".", so it cannot end the message early.
        prop_assert!(!stuffed.split(|b| *b == b'\n').any(|l| l == b".\r" || l == b"."));
        prop_assert_eq!(dot_unstuff(&stuffed), m);
    }

    #[test]
    fn stuffing_normalizes_lf_to_crlf(lines in prop::collection::vec("\\.?[a-z .]{0,10}", 0..10)) {
        let lf: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let crlf: String = lines.iter().map(|l| format!("{l}\r\n")).collect();
        prop_assert_eq!(dot_stuff(lf.as_bytes()), dot_stuff(crlf.as_bytes()));
        prop_assert_eq!(to_crlf(lf.as_bytes()), crlf.as_bytes().to_vec());
    }
}

fn malformed_line(text: &str) -> (u64, String) {
    match read_all(text.as_bytes(), MAX) {
        Err(JobError::Malformed {
            line,
            found,
            expected,
        }) => (line, format!("{found} / {expected}")),
        other => panic!("expected a malformed job, got {other:?}"),
    }
}

#[test]
fn malformed_jobs_name_the_line_and_what_was_expected() {
    let cases: &[(&str, u64, &str)] = &[
        ("", 1, "MAIL FROM"),
        ("HELO x\nRCPT TO:<a@b>\n", 2, "MAIL FROM"),
        ("MAIL FROM:<a@b>\nDATA\n.\n", 2, "at least one"),
        (
            "MAIL FROM:<a@b>\nRCPT TO:<a@b>\nRCPT TO:a@b\nDATA\nx\n.\n",
            3,
            "RCPT TO:<address>",
        ),
        (
            "MAIL FROM:<a@b>\nRCPT TO:<>\nDATA\n.\n",
            2,
            "non-empty address",
        ),
        (
            "MAIL FROM:<a@b>\nRCPT TO:<a b@c>\nDATA\n.\n",
            2,
            "without spaces",
        ),
        (
            "MAIL FROM:<a@b> POOL=AB\nRCPT TO:<x@y>\nDATA\n.\n",
            1,
            "POOL=x",
        ),
        (
            "MAIL FROM:<a@b> POOL=1\nRCPT TO:<x@y>\nDATA\n.\n",
            1,
            "A..Z",
        ),
        (
            "MAIL FROM:<a@b> NOTIFY=x\nRCPT TO:<x@y>\nDATA\n.\n",
            1,
            "POOL=x",
        ),
        (
            "MAIL FROM:<a@b>\nRCPT TO:<x@y> NOTIFY=NEVER\nDATA\n.\n",
            2,
            "without parameters",
        ),
        (
            "MAIL FROM:<a@b>\nRCPT TO:<x@y>\nDATA\nhello\n",
            5,
            "\".\" ending the message",
        ),
        ("MAIL FROM:<a@b>\nRCPT TO:<x@y>\n", 3, "DATA"),
        (
            "MAIL FROM:<a@b>\nRCPT TO:<x@y>\nDATA\n.\nQUIT\nMAIL FROM:<a@b>\n",
            6,
            "nothing after QUIT",
        ),
        (
            "MAIL FROM:<a@b>\nRCPT TO:<x@y>\nDATA\n.\nRCPT TO:<x@y>\n",
            5,
            "MAIL FROM",
        ),
        ("MAIL FROM:<a@b>\nRCPT TO:<x@y>", 3, "DATA"),
        ("HELO x\nQUIT\n", 2, "MAIL FROM"),
        ("HELO x\n\n", 3, "MAIL FROM"),
    ];
    for (text, line, expect) in cases {
        let (got_line, what) = malformed_line(text);
        assert_eq!(got_line, *line, "{text:?}: {what}");
        assert!(
            what.contains(expect),
            "{text:?}: {what} should mention {expect}"
        );
    }
}

#[test]
fn lenient_parts_are_accepted() {
    let text = "ehlo me\r\n\r\nmail from: <> pool=b SIZE=10 BODY=8BITMIME\r\nrcpt to:<Postmaster>\r\ndata\r\n..x\r\n.\r\n\r\nMAIL FROM:<o@l>\nRCPT TO:<a@b>\nDATA\n\n.\nquit\n\n";
    let jobs = read_all(text.as_bytes(), MAX).unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0].mail_from, "");
    assert_eq!(jobs[0].pool, Pool::from_char('B'));
    assert_eq!(jobs[0].rcpts, vec!["Postmaster"]);
    assert_eq!(jobs[0].message, b".x\r\n");
    assert_eq!(jobs[1].pool, None);
    assert_eq!(jobs[1].message, b"\r\n");
}

#[test]
fn message_size_is_bounded() {
    let mut text = String::from("MAIL FROM:<a@b>\nRCPT TO:<x@y>\nDATA\n");
    for _ in 0..100 {
        text.push_str("0123456789012345678901234567890123456789\n");
    }
    text.push_str(".\n");
    assert_eq!(
        read_all(text.as_bytes(), 4200).unwrap()[0].message.len(),
        4200
    );
    match read_all(text.as_bytes(), 4199) {
        Err(JobError::TooLarge { line, max }) => {
            assert_eq!(max, 4199);
            assert_eq!(line, 103);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn writer_rejects_bad_addresses() {
    let mut w = JobWriter::new(Vec::new());
    assert!(w.job("a@b", None, ["bad addr"], &b"x"[..]).is_err());
    let mut w = JobWriter::new(Vec::new());
    assert!(w.job("a@b", None, Vec::<String>::new(), &b"x"[..]).is_err());
}

#[test]
fn sample_job_reads() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/sample.MAIL");
    let text = std::fs::read(path).unwrap();
    let jobs = read_all(&text[..], MAX).unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0].pool, Pool::from_char('A'));
    assert_eq!(jobs[0].rcpts.len(), 3);
    assert!(jobs[0]
        .message
        .windows(2)
        .all(|w| w[1] != b'\n' || w[0] == b'\r'));
    assert_eq!(jobs[1].pool, None);
}

/// The stored message of a one-job file whose message is `body` (LF line ends), and the number
/// of lines the reader folded.
fn stored(body: &[u8]) -> (Vec<u8>, u64) {
    let mut text = b"MAIL FROM:<a@b.example>\nRCPT TO:<x@y.example>\nDATA\n".to_vec();
    text.extend_from_slice(body);
    text.extend_from_slice(b".\n");
    let mut r = smtpw_engine::job::JobReader::new(&text[..], 64 << 20);
    r.next_job().unwrap().unwrap();
    while r.next_rcpt().unwrap().is_some() {}
    let m = r.read_message().unwrap();
    (m, r.folded_lines())
}

/// Every stored line fits RFC 5321's 1000 octets with its CRLF, and taking out the inserted
/// CRLF SPACE gives back the line as written.
#[test]
fn body_lines_over_998_bytes_are_folded_like_postfix() {
    let long = vec![b'x'; 2_000_000];
    let mut body = Vec::new();
    for line in [
        &b"Subject: fold"[..],
        b"",
        &[b'a'; 998],
        &[b'b'; 999],
        &long,
        b"end",
    ] {
        body.extend_from_slice(line);
        body.push(b'\n');
    }
    let (m, folded) = stored(&body);
    assert_eq!(folded, 2, "the 999-byte line and the 2,000,000-byte one");
    let lines: Vec<&[u8]> = m.split(|b| *b == b'\n').collect();
    for l in &lines {
        assert!(
            l.len() <= 999,
            "a stored line of {} bytes with its CR",
            l.len()
        );
    }
    // 2,000,000 bytes: 998 on the first line, then 997 after the inserted space per line.
    let continuation = lines.iter().filter(|l| l.first() == Some(&b' ')).count();
    assert_eq!(continuation, 1 + (2_000_000 - 998usize).div_ceil(997));
    let unfolded: Vec<u8> = String::from_utf8(m.clone())
        .unwrap()
        .replace("\r\n ", "")
        .into_bytes();
    assert_eq!(unfolded, to_crlf(&body));
    // A line of exactly 998 bytes stays whole.
    assert!(lines
        .iter()
        .any(|l| *l == [&[b'a'; 998][..], b"\r"].concat()));
}

#[test]
fn folding_never_cuts_a_utf8_character() {
    let line = "é".repeat(700); // 1400 bytes
    let (m, folded) = stored(format!("{line}\n").as_bytes());
    assert_eq!(folded, 1);
    let s = String::from_utf8(m).expect("still UTF-8 after folding");
    assert_eq!(s.replace("\r\n ", ""), format!("{line}\r\n"));
    assert!(s.lines().all(|l| l.len() <= 998));
}
