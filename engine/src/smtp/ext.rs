//! What a message asks of the relay's extensions (TXN-15), as pure functions.
//!
//! - `BODY=8BITMIME` (RFC 6152) on MAIL when the message has bytes above 127 and the relay
//!   offers 8BITMIME. A relay that does not offer it gets the message as it is, as before (most
//!   relays take 8-bit data anyway; converting to 7-bit is not smtpw's job).
//! - `SMTPUTF8` (RFC 6531) on MAIL when an address of the envelope is internationalised (not
//!   ASCII) and the relay offers it. When it does not, such an address cannot be sent: that
//!   recipient fails locally with a clear reason (`553 5.6.7`, RFC 6531 §3.6.3 / RFC 6533), the
//!   other recipients of the copy go on without it; an internationalised sender fails them all.

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
    let wants_utf8 = intl_from || !intl_rcpts.is_empty();
    let (smtputf8, sender_unsendable, unsendable) = if !wants_utf8 {
        (false, false, Vec::new())
    } else if caps.smtputf8 {
        (true, false, Vec::new())
    } else {
        (false, intl_from, intl_rcpts)
    };
    Extensions {
        body_8bit: caps.eight_bit_mime && has_8bit(message),
        smtputf8,
        sender_unsendable,
        unsendable,
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

    fn addr() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z]{1,5}@[a-z]{1,5}\\.org",
            "[a-zé日]{1,5}@[a-zä]{1,5}\\.de"
        ]
    }

    proptest! {
        #[test]
        fn parameters_follow_the_message_and_the_offer(
            from in addr(),
            rcpts in proptest::collection::vec(addr(), 0..8),
            body in proptest::collection::vec(any::<u8>(), 0..64),
            eight in any::<bool>(),
            utf8 in any::<bool>(),
        ) {
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
