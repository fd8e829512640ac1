//! What a message asks of the relay's extensions (TXN-15), as pure functions.
//!
//! - `BODY=8BITMIME` (RFC 6152) on MAIL when the message has bytes above 127 and the relay
//!   offers 8BITMIME. A relay that does not offer it gets the message as it is, as before (most
//!   relays take 8-bit data anyway; converting to 7-bit is not smtpw's job).
//! - `SMTPUTF8` (RFC 6531) on MAIL when an address of the envelope is internationalised (not
//!   ASCII) and the relay offers it. When it does not, such an address cannot be sent: that
//!   recipient fails locally with a clear reason (`553 5.6.7`, RFC 6531 §3.6.3 / RFC 6533), the
//!   other recipients of the copy go on without it; an internationalised sender fails them all.
//! - `SMTPUTF8` also when the message's header section holds raw UTF-8 (RFC 6532: a non-ASCII
//!   byte in a header field, the header section valid UTF-8) and the relay offers it (RFC 6531
//!   §3.4: the client MUST supply it when "the envelope or message being sent requires" it).
//!   When the relay does not offer it, the message goes as it is, 8-bit data as before (with
//!   `BODY=8BITMIME` when offered): our decision, Postfix's default too. RFC 6531 §3.2 would
//!   have the client refuse it, but Postfix does so only for mail whose sender asked for
//!   SMTPUTF8, and a job carries no such request; relays without SMTPUTF8 (IIS among them)
//!   take such header fields as 8-bit text, and failing every recipient of a list message for
//!   a raw UTF-8 Subject would lose mail that was deliverable yesterday. Downgrading (rewriting
//!   the header fields as RFC 2047 encoded words) is not smtpw's job and would break the list
//!   server's signatures. Only the top-level header section is looked at (RFC 6531 §3.6 does
//!   not require a client to parse the MIME parts); 8-bit header bytes that are not UTF-8
//!   (legacy Latin-1 and the like) are not RFC 6532 and keep the 8-bit rule above.

use super::reply::{Capabilities, Reply};

/// Whether the message has 8-bit bytes (and so wants `BODY=8BITMIME`).
pub fn has_8bit(message: &[u8]) -> bool {
    !message.is_ascii()
}

/// Whether an address is internationalised: it has non-ASCII characters (RFC 6531), so it can
/// only be sent with `SMTPUTF8`.
pub fn is_internationalised(addr: &str) -> bool {
    !addr.is_ascii()
}

/// The header section of a message: everything before the first empty line (the whole message
/// when there is none). A bare LF ends a line too.
pub fn header_section(message: &[u8]) -> &[u8] {
    let mut start = 0;
    loop {
        match message.get(start) {
            None => return message,
            // An empty line: "\r\n" or "\n" at the start of a line.
            Some(b'\n') => return &message[..start],
            Some(b'\r') if message.get(start + 1) == Some(&b'\n') => return &message[..start],
            _ => {}
        }
        match memchr::memchr(b'\n', &message[start..]) {
            Some(i) => start += i + 1,
            None => return message,
        }
    }
}

/// Whether the message's header section holds raw UTF-8 (RFC 6532): some byte above 127, and
/// the section is valid UTF-8. Such a message can only be sent with `SMTPUTF8`.
pub fn has_utf8_headers(message: &[u8]) -> bool {
    let h = header_section(message);
    !h.is_ascii() && std::str::from_utf8(h).is_ok()
}

/// The extension parameters of one message's MAIL commands, and which of its addresses cannot
/// be sent to this relay.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Extensions {
    /// `BODY=8BITMIME`.
    pub body_8bit: bool,
    /// `SMTPUTF8`.
    pub smtputf8: bool,
    /// The sender cannot be sent (internationalised, no SMTPUTF8): every recipient fails.
    pub sender_unsendable: bool,
    /// Places of the recipients that cannot be sent (internationalised, no SMTPUTF8).
    pub unsendable: Vec<usize>,
}

/// What a message from `from` to `rcpts` with body `message` asks of a relay that advertised
/// `caps`.
pub fn extensions(caps: &Capabilities, from: &str, rcpts: &[String], message: &[u8]) -> Extensions {
    let intl_from = is_internationalised(from);
    let intl_rcpts: Vec<usize> = rcpts
        .iter()
        .enumerate()
        .filter(|(_, r)| is_internationalised(r))
        .map(|(i, _)| i)
        .collect();
    let eight = has_8bit(message);
    let body_8bit = caps.eight_bit_mime && eight;
    // The header section is looked at only when the message is 8-bit (an ASCII message has no
    // UTF-8 header field): one pass over ASCII messages, as before.
    let utf8_headers = eight && has_utf8_headers(message);
    let wants_utf8 = intl_from || !intl_rcpts.is_empty() || utf8_headers;
    if !wants_utf8 {
        Extensions {
            body_8bit,
            ..Extensions::default()
        }
    } else if caps.smtputf8 {
        Extensions {
            body_8bit,
            smtputf8: true,
            ..Extensions::default()
        }
    } else {
        Extensions {
            body_8bit,
            smtputf8: false,
            sender_unsendable: intl_from,
            unsendable: intl_rcpts,
        }
    }
}

/// The local failure of a recipient that cannot be sent without SMTPUTF8.
pub fn no_smtputf8_rcpt() -> Reply {
    Reply::new(
        553,
        Some((5, 6, 7)),
        "Recipient address is internationalised and the relay does not offer SMTPUTF8 (not sent)",
    )
}

/// The local failure of every recipient of a message whose sender cannot be sent without
/// SMTPUTF8.
pub fn no_smtputf8_sender() -> Reply {
    Reply::new(
        553,
        Some((5, 6, 7)),
        "Sender address is internationalised and the relay does not offer SMTPUTF8 (not sent)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn caps(eight_bit_mime: bool, smtputf8: bool) -> Capabilities {
        Capabilities {
            eight_bit_mime,
            smtputf8,
            ..Capabilities::default()
        }
    }

    #[test]
    fn examples() {
        let to = vec!["a@example.net".to_string(), "jörg@exämple.de".to_string()];
        let e = extensions(&caps(true, true), "l@x.org", &to, "Grüße\r\n".as_bytes());
        assert_eq!(
            e,
            Extensions {
                body_8bit: true,
                smtputf8: true,
                ..Extensions::default()
            }
        );
        let e = extensions(&caps(false, false), "l@x.org", &to, b"plain\r\n");
        assert_eq!(e.unsendable, vec![1]);
        assert!(!e.smtputf8 && !e.body_8bit && !e.sender_unsendable);
        let e = extensions(&caps(true, false), "lïst@x.org", &to[..1], b"x");
        assert!(e.sender_unsendable);
        assert_eq!(no_smtputf8_rcpt().to_string().get(..9), Some("553 5.6.7"));
    }

    #[test]
    fn utf8_header_fields() {
        let to = vec!["a@example.net".to_string()];
        let utf8 = "From: l@x.org\r\nSubject: Grüße aus Köln\r\n\r\nBody\r\n".as_bytes();
        // Offered: SMTPUTF8 (and BODY=8BITMIME, which a SMTPUTF8 relay offers too).
        let e = extensions(&caps(true, true), "l@x.org", &to, utf8);
        assert!(e.smtputf8 && e.body_8bit);
        // Not offered: the message goes as 8-bit data, BODY=8BITMIME when offered.
        for eight in [true, false] {
            let e = extensions(&caps(eight, false), "l@x.org", &to, utf8);
            assert!(!e.smtputf8 && e.body_8bit == eight, "{e:?}");
            assert!(e.unsendable.is_empty() && !e.sender_unsendable);
        }
        // UTF-8 only in the body: 8BITMIME's business, not SMTPUTF8's.
        let body = "Subject: hello\r\n\r\nGrüße\r\n".as_bytes();
        let e = extensions(&caps(true, false), "l@x.org", &to, body);
        assert!(e.body_8bit && !e.smtputf8);
        let e = extensions(&caps(true, true), "l@x.org", &to, body);
        assert!(!e.smtputf8);
        // LF-only line ends, and a message that is all header.
        assert!(has_utf8_headers("Subject: é\n\nx".as_bytes()));
        assert!(!has_utf8_headers("Subject: e\n\né".as_bytes()));
        assert!(has_utf8_headers("Subject: é".as_bytes()));
        // Legacy 8-bit header bytes that are not UTF-8 (Latin-1 'é'): not RFC 6532.
        let latin1 = b"Subject: caf\xe9\r\n\r\nx\r\n";
        assert!(!has_utf8_headers(latin1));
        let e = extensions(&caps(true, false), "l@x.org", &to, latin1);
        assert!(e.body_8bit && !e.smtputf8);
        assert_eq!(header_section(b"A: b\r\n\r\nc"), b"A: b\r\n");
        assert_eq!(header_section(b"\r\nc"), b"");
    }

    fn addr() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z]{1,5}@[a-z]{1,5}\\.org",
            "[a-zé日]{1,5}@[a-zä]{1,5}\\.de"
        ]
    }

    /// A message: header lines (some with UTF-8, some with Latin-1 bytes), an empty line (or
    /// none), a body; CRLF or LF line ends.
    fn message() -> impl Strategy<Value = Vec<u8>> {
        let line = prop_oneof![
            "[A-Za-z]{1,8}: [ -~]{0,20}".prop_map(String::into_bytes),
            "[A-Za-z]{1,8}: [ -~äöü日本]{0,10}".prop_map(String::into_bytes),
            proptest::collection::vec(prop_oneof![32u8..127, 160u8..=255], 0..12).prop_map(
                |mut v| {
                    let mut l = b"X-Latin1: ".to_vec();
                    l.append(&mut v);
                    l
                }
            ),
        ];
        (
            proptest::collection::vec(line, 0..6),
            any::<bool>(),
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..32),
        )
            .prop_map(|(lines, crlf, blank, body)| {
                let eol: &[u8] = if crlf { b"\r\n" } else { b"\n" };
                let mut m = Vec::new();
                for l in lines {
                    m.extend_from_slice(&l);
                    m.extend_from_slice(eol);
                }
                if blank {
                    m.extend_from_slice(eol);
                    m.extend_from_slice(&body);
                }
                m
            })
    }

    proptest! {
        #[test]
        fn header_section_is_the_text_before_the_first_empty_line(m in message()) {
            let h = header_section(&m);
            prop_assert!(m.starts_with(h));
            // No empty line inside it...
            let lines: Vec<&[u8]> = h.split(|&b| b == b'\n').collect();
            for l in &lines[..lines.len().saturating_sub(1)] {
                prop_assert!(!l.is_empty() && *l != b"\r", "{:?}", h);
            }
            // ...and what follows starts with one, or the header is the whole message.
            let rest = &m[h.len()..];
            prop_assert!(
                rest.is_empty() || rest.starts_with(b"\n") || rest.starts_with(b"\r\n"),
                "{:?} | {:?}", h, rest
            );
        }

        #[test]
        fn utf8_headers_need_smtputf8(
            m in message(),
            eight in any::<bool>(),
            utf8 in any::<bool>(),
        ) {
            let to = vec!["a@example.net".to_string()];
            let e = extensions(&caps(eight, utf8), "l@x.org", &to, &m);
            let h = header_section(&m);
            let needs = !h.is_ascii() && std::str::from_utf8(h).is_ok();
            // SMTPUTF8 exactly when the header section holds UTF-8 and the relay offers it;
            // when it does not, the message goes as it is (nothing unsendable).
            prop_assert_eq!(e.smtputf8, needs && utf8);
            // The 8-bit rule is untouched by it.
            prop_assert_eq!(e.body_8bit, eight && !m.is_ascii());
            prop_assert!(e.unsendable.is_empty() && !e.sender_unsendable);
        }

        #[test]
        fn parameters_follow_the_message_and_the_offer(
            from in addr(),
            rcpts in proptest::collection::vec(addr(), 0..8),
            body in proptest::collection::vec(any::<u8>(), 0..64),
            eight in any::<bool>(),
            utf8 in any::<bool>(),
        ) {
            // An ASCII header section then any body: the envelope's rules alone.
            let mut body = body;
            body.splice(0..0, b"Subject: x\r\n\r\n".iter().copied());
            let e = extensions(&caps(eight, utf8), &from, &rcpts, &body);
            // BODY=8BITMIME exactly when offered and some byte is above 127.
            prop_assert_eq!(e.body_8bit, eight && body.iter().any(|&b| b > 127));
            let intl: Vec<usize> = (0..rcpts.len()).filter(|&i| !rcpts[i].is_ascii()).collect();
            let any_intl = !from.is_ascii() || !intl.is_empty();
            // SMTPUTF8 only when offered and needed; then nothing is unsendable.
            prop_assert_eq!(e.smtputf8, utf8 && any_intl);
            if utf8 {
                prop_assert!(e.unsendable.is_empty() && !e.sender_unsendable);
            } else {
                // Without it, exactly the internationalised recipients (and sender) fail.
                prop_assert_eq!(&e.unsendable, &intl);
                prop_assert_eq!(e.sender_unsendable, !from.is_ascii());
            }
            // An all-ASCII envelope never asks for SMTPUTF8 nor loses a recipient.
            if !any_intl {
                prop_assert!(!e.smtputf8 && e.unsendable.is_empty() && !e.sender_unsendable);
            }
        }
    }
}
