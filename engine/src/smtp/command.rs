//! Typed SMTP commands (RFC 5321 §4.1): each one formats itself onto an output buffer, and its
//! [`Verb`] knows the time-out of the reply it waits for and its name in messages.
//!
//! The client never builds a command line from raw bytes anywhere else. Addresses are checked
//! with [`path_ok`] before a transaction starts: a CR, LF or NUL in an address would let it end
//! the command line and inject one of its own, so such an address is never sent.
//!
//! Later commands fit as new variants: `STARTTLS` (a verb whose 220 hands the stream to a TLS
//! upgrade), `AUTH` with its initial response and the continuation lines that answer 334
//! challenges (their text never shown in messages), and `BDAT n [LAST]` (RFC 3030, whose reply
//! plays the part of the reply to the final dot).

use std::time::Duration;

use super::Timeouts;

/// What a reply answers: a command without its arguments, plus the two replies that answer no
/// command line (the greeting and the reply to the final dot). The reply queue of a session
/// holds these; each knows how long its reply may take and what to call it in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// The server's greeting (not a command).
    Greeting,
    Ehlo,
    Helo,
    Mail,
    Rcpt,
    Data,
    /// The message data up to and including the final dot; its reply decides the transaction.
    EndOfData,
    Rset,
    Quit,
    /// STARTTLS: its 220 hands the stream to the TLS handshake.
    StartTls,
    /// AUTH and each line that answers one of its 334 challenges.
    Auth,
    /// `BDAT n LAST` with the message (RFC 3030): its reply decides the transaction, as the
    /// reply to the final dot does.
    Bdat,
}

impl Verb {
    /// The name used in messages ("time-out waiting for the RCPT reply").
    pub fn name(self) -> &'static str {
        match self {
            Verb::Greeting => "greeting",
            Verb::Ehlo => "EHLO",
            Verb::Helo => "HELO",
            Verb::Mail => "MAIL",
            Verb::Rcpt => "RCPT",
            Verb::Data => "DATA",
            Verb::EndOfData => "end of data",
            Verb::Rset => "RSET",
            Verb::Quit => "QUIT",
            Verb::StartTls => "STARTTLS",
            Verb::Auth => "AUTH",
            Verb::Bdat => "BDAT",
        }
    }

    /// How long the reply may take (RFC 5321 §4.5.3.2 for the defaults of [`Timeouts`]). Writing
    /// the command is bounded by the same time-out.
    pub fn timeout(self, t: &Timeouts) -> Duration {
        match self {
            Verb::Greeting => t.greeting,
            Verb::Ehlo | Verb::Helo => t.ehlo,
            // RSET has no time-out of its own in RFC 5321; it gets MAIL's.
            Verb::Mail | Verb::Rset => t.mail,
            Verb::Rcpt => t.rcpt,
            Verb::Data => t.data_init,
            // The message is in the same write: its reply is the one to the final dot.
            Verb::EndOfData | Verb::Bdat => t.data_term,
            Verb::Quit => t.quit,
            // Part of the handshake: EHLO's time-out.
            Verb::StartTls | Verb::Auth => t.ehlo,
        }
    }

    /// Whether a pipelined command group must end with this command: RFC 2920 §3.1 lets only
    /// RSET, MAIL and RCPT be followed by more commands before their replies are read (DATA,
    /// EHLO, HELO, NOOP and QUIT change the session's state or end it). BDAT carries its data
    /// with it and may be followed too (RFC 3030 §4.2).
    pub fn ends_group(self) -> bool {
        !matches!(self, Verb::Rset | Verb::Mail | Verb::Rcpt | Verb::Bdat)
    }
}

/// The parameters of MAIL FROM (RFC 5321 §4.1.1.2 and the extensions that add them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=<octets>` (RFC 1870), when the relay advertises SIZE.
    pub size: Option<u64>,
    /// `BODY=8BITMIME` (RFC 6152): the message has 8-bit bytes and the relay offers 8BITMIME.
    pub body_8bit: bool,
    /// `SMTPUTF8` (RFC 6531): an address is internationalised and the relay offers SMTPUTF8.
    pub smtputf8: bool,
}

/// One SMTP command with its arguments. Addresses are given as they are stored (with or
/// without angle brackets); the command adds the brackets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    Ehlo(&'a str),
    Helo(&'a str),
    Mail {
        from: &'a str,
        params: MailParams,
    },
    Rcpt {
        to: &'a str,
    },
    Data,
    Rset,
    Quit,
    StartTls,
    /// `BDAT <size> LAST`: the whole message in one chunk (the message bytes follow the line,
    /// not dot-stuffed; the caller appends them).
    BdatLast {
        size: u64,
    },
}

impl Command<'_> {
    /// What the command's reply answers.
    pub fn verb(&self) -> Verb {
        match self {
            Command::Ehlo(_) => Verb::Ehlo,
            Command::Helo(_) => Verb::Helo,
            Command::Mail { .. } => Verb::Mail,
            Command::Rcpt { .. } => Verb::Rcpt,
            Command::Data => Verb::Data,
            Command::Rset => Verb::Rset,
            Command::Quit => Verb::Quit,
            Command::StartTls => Verb::StartTls,
            Command::BdatLast { .. } => Verb::Bdat,
        }
    }

    /// Append the command line, CRLF included, to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            Command::Ehlo(name) => {
                out.extend_from_slice(b"EHLO ");
                out.extend_from_slice(name.as_bytes());
            }
            Command::Helo(name) => {
                out.extend_from_slice(b"HELO ");
                out.extend_from_slice(name.as_bytes());
            }
            Command::Mail { from, params } => {
                out.extend_from_slice(b"MAIL FROM:");
                push_path(out, from);
                if let Some(size) = params.size {
                    out.extend_from_slice(b" SIZE=");
                    push_decimal(out, size);
                }
                if params.body_8bit {
                    out.extend_from_slice(b" BODY=8BITMIME");
                }
                if params.smtputf8 {
                    out.extend_from_slice(b" SMTPUTF8");
                }
            }
            Command::Rcpt { to } => {
                out.extend_from_slice(b"RCPT TO:");
                push_path(out, to);
            }
            Command::Data => out.extend_from_slice(b"DATA"),
            Command::Rset => out.extend_from_slice(b"RSET"),
            Command::Quit => out.extend_from_slice(b"QUIT"),
            Command::StartTls => out.extend_from_slice(b"STARTTLS"),
            Command::BdatLast { size } => {
                out.extend_from_slice(b"BDAT ");
                push_decimal(out, *size);
                out.extend_from_slice(b" LAST");
            }
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Whether an address can be sent at all: it must not carry a CR, LF or NUL, which would end
/// the command line early.
pub fn path_ok(addr: &str) -> bool {
    !addr.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

/// `<addr>`: the address trimmed, in angle brackets unless it already has them.
fn push_path(out: &mut Vec<u8>, addr: &str) {
    let a = addr.trim();
    if a.starts_with('<') && a.ends_with('>') {
        out.extend_from_slice(a.as_bytes());
    } else {
        out.push(b'<');
        out.extend_from_slice(a.as_bytes());
        out.push(b'>');
    }
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        // A remainder of 10 is below 10: the cast cannot truncate.
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn line(c: Command<'_>) -> String {
        let mut out = Vec::new();
        c.write_to(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn commands_format_themselves() {
        assert_eq!(
            line(Command::Ehlo("lists.example.org")),
            "EHLO lists.example.org\r\n"
        );
        assert_eq!(line(Command::Helo("[192.0.2.1]")), "HELO [192.0.2.1]\r\n");
        let mail = |from, size| Command::Mail {
            from,
            params: MailParams {
                size,
                ..MailParams::default()
            },
        };
        assert_eq!(
            line(mail("list@example.org", None)),
            "MAIL FROM:<list@example.org>\r\n"
        );
        assert_eq!(
            line(mail(" <list@example.org> ", Some(1234))),
            "MAIL FROM:<list@example.org> SIZE=1234\r\n"
        );
        assert_eq!(line(mail("", Some(0))), "MAIL FROM:<> SIZE=0\r\n");
        assert_eq!(
            line(Command::Rcpt {
                to: "u@example.net"
            }),
            "RCPT TO:<u@example.net>\r\n"
        );
        assert_eq!(line(Command::Data), "DATA\r\n");
        assert_eq!(line(Command::Rset), "RSET\r\n");
        assert_eq!(line(Command::Quit), "QUIT\r\n");
        assert_eq!(line(Command::BdatLast { size: 2048 }), "BDAT 2048 LAST\r\n");
        assert_eq!(Command::BdatLast { size: 0 }.verb(), Verb::Bdat);
    }

    #[test]
    fn each_verb_knows_its_time_out_and_name() {
        let t = Timeouts::default();
        let min = |m: u64| Duration::from_secs(60 * m);
        let table = [
            (Verb::Greeting, "greeting", min(5)),
            (Verb::Ehlo, "EHLO", min(5)),
            (Verb::Helo, "HELO", min(5)),
            (Verb::Mail, "MAIL", min(5)),
            (Verb::Rset, "RSET", min(5)),
            (Verb::Rcpt, "RCPT", min(5)),
            (Verb::Data, "DATA", min(2)),
            (Verb::EndOfData, "end of data", min(10)),
            (Verb::Quit, "QUIT", min(1)),
        ];
        for (verb, name, timeout) in table {
            assert_eq!((verb.name(), verb.timeout(&t)), (name, timeout));
        }
        let t = Timeouts {
            rcpt: Duration::from_secs(7),
            ..Timeouts::default()
        };
        assert_eq!(Verb::Rcpt.timeout(&t), Duration::from_secs(7));
        assert_eq!(
            Command::Rcpt { to: "a@b" }.verb().timeout(&t),
            Duration::from_secs(7)
        );
    }

    #[test]
    fn only_rset_mail_and_rcpt_may_be_followed_in_a_group() {
        for v in [Verb::Rset, Verb::Mail, Verb::Rcpt, Verb::Bdat] {
            assert!(!v.ends_group(), "{v:?}");
        }
        for v in [Verb::Ehlo, Verb::Helo, Verb::Data, Verb::Quit] {
            assert!(v.ends_group(), "{v:?}");
        }
    }

    #[test]
    fn addresses_that_would_end_the_line_are_refused() {
        assert!(path_ok("a@b.c"));
        assert!(path_ok("<a@b.c>"));
        assert!(!path_ok("evil@example.net>\r\nRCPT TO:<x@y"));
        assert!(!path_ok("a@b\n"));
        assert!(!path_ok("a\0@b"));
    }

    proptest! {
        #[test]
        fn size_is_written_in_decimal(n in any::<u64>()) {
            let l = line(Command::Mail { from: "a@b", params: MailParams { size: Some(n), ..MailParams::default() } });
            prop_assert_eq!(l, format!("MAIL FROM:<a@b> SIZE={n}\r\n"));
        }

        #[test]
        fn mail_parameters_each_once_in_order(
            size in proptest::option::of(any::<u64>()),
            body_8bit in any::<bool>(),
            smtputf8 in any::<bool>(),
        ) {
            let params = MailParams { size, body_8bit, smtputf8 };
            let l = line(Command::Mail { from: "a@b", params });
            let mut want = String::from("MAIL FROM:<a@b>");
            if let Some(n) = size {
                want.push_str(&format!(" SIZE={n}"));
            }
            if body_8bit {
                want.push_str(" BODY=8BITMIME");
            }
            if smtputf8 {
                want.push_str(" SMTPUTF8");
            }
            want.push_str("\r\n");
            prop_assert_eq!(l, want);
        }

        #[test]
        fn a_checked_address_is_one_line(addr in "[ -~\r\n\0]{0,40}") {
            if path_ok(&addr) {
                let l = line(Command::Rcpt { to: &addr });
                prop_assert_eq!(l.matches("\r\n").count(), 1);
                prop_assert!(l.ends_with(">\r\n"));
            }
        }
    }
}
