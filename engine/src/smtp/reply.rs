//! SMTP replies: parsing (RFC 5321 §4.2, multi-line; RFC 3463 enhanced status codes), reply
//! classes, EHLO capabilities and the classification of RCPT replies (TXN-2, TXN-3).
//!
//! Everything here is pure and never panics on any input (property-tested).

use std::fmt::{self, Write as _};

/// The largest reply we accept (all lines together). RFC 5321 §4.5.3.1.5 gives 512 octets per
/// reply line; EHLO replies have many lines. Anything longer is a protocol error.
pub const MAX_REPLY_LEN: usize = 64 * 1024;

/// One complete SMTP reply.
///
/// `text` holds the text of every line without the code and without the enhanced status code
/// (when a line repeats it), the lines joined with `'\n'`. `Display` gives one line:
/// `552 5.5.3 Too many recipients`, continuation lines joined with `" / "`, control characters
/// escaped (`\r`, `\u{1b}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// RFC 3463 `class.subject.detail`, taken from the first line.
    pub enhanced: Option<(u8, u16, u16)>,
    /// The text, lines joined with `'\n'` (see above).
    pub text: String,
}

impl Reply {
    /// A reply from its parts.
    pub fn new(code: u16, enhanced: Option<(u8, u16, u16)>, text: impl Into<String>) -> Self {
        Self {
            code,
            enhanced,
            text: text.into(),
        }
    }

    /// The synthetic reply for a connection that dropped (RFC 5321 §3.8: treat it as a 451).
    pub fn connection_lost() -> Self {
        Self::new(451, Some((4, 4, 2)), "Connection lost")
    }

    /// `451 4.4.2 Connection lost (<why>)`: same code, with the reason kept for the logs.
    pub fn connection_lost_because(why: impl fmt::Display) -> Self {
        Self::new(451, Some((4, 4, 2)), format!("Connection lost ({why})"))
    }

    /// `451 4.4.1 <host:port> unreachable: <why>[; <host:port> unreachable: <why>]`: the reply
    /// every recipient of a copy gets when no host could take it (refused, time-out, a refusing
    /// greeting, a refused EHLO), one part per host tried. Control characters in a reason
    /// become spaces, so the reply stays one line.
    pub fn host_unreachable<H: fmt::Display, W: fmt::Display>(
        failures: impl IntoIterator<Item = (H, W)>,
    ) -> Self {
        let mut text = String::new();
        for (host, why) in failures {
            if !text.is_empty() {
                text.push_str("; ");
            }
            let why = why.to_string();
            text.push_str(&format!("{host} unreachable: "));
            text.extend(why.chars().map(|c| if c.is_control() { ' ' } else { c }));
        }
        Self::new(451, Some((4, 4, 1)), text)
    }

    /// First digit of the code.
    pub fn class(&self) -> u16 {
        self.code / 100
    }
    /// 2yz.
    pub fn is_positive(&self) -> bool {
        self.class() == 2
    }
    /// 3yz (354 after DATA).
    pub fn is_intermediate(&self) -> bool {
        self.class() == 3
    }
    /// 4yz: temporary failure.
    pub fn is_transient(&self) -> bool {
        self.class() == 4
    }
    /// 5yz: permanent failure.
    pub fn is_permanent(&self) -> bool {
        self.class() == 5
    }
    /// 421: the server is closing the connection (RFC 5321 §3.8).
    pub fn is_closing(&self) -> bool {
        self.code == 421
    }

    /// The text lines (at least one, possibly empty).
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.text.split('\n')
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some((c, s, d)) = self.enhanced {
            write!(f, " {c}.{s}.{d}")?;
        }
        let mut first = true;
        for line in self.lines() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            f.write_str(if first { " " } else { " / " })?;
            // The relay's text is untrusted: a control character (a bare CR, an escape
            // sequence) is shown escaped, never handed raw to a log or a terminal.
            for c in line.chars() {
                if c.is_control() {
                    write!(f, "{}", c.escape_debug())?;
                } else {
                    f.write_char(c)?;
                }
            }
            first = false;
        }
        Ok(())
    }
}

/// Why a byte sequence is not an SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("malformed reply line: {0:?}")]
    /// A line that is not `ddd`, `ddd-text` or `ddd text`.
    Malformed(String),
    #[error("reply lines disagree on the code ({first} then {other})")]
    /// A multi-line reply whose lines carry different codes.
    CodeMismatch {
        /// The first line's code.
        first: u16,
        /// The code of a later line.
        other: u16,
    },
    #[error("reply longer than {MAX_REPLY_LEN} bytes")]
    /// A reply too long to be an SMTP reply.
    TooLong,
}

/// Parse one reply from the start of `buf`.
///
/// `Ok(None)`: not complete yet (read more). `Ok(Some((reply, used)))`: a reply and the number of
/// bytes it took. Lines end in CRLF; a bare LF is accepted too. A line is `ddd`, then `-`
/// (more lines follow), `' '` or nothing (last line), then text. The code must be 2yz..5yz.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
    let mut pos = 0usize;
    let mut code: Option<u16> = None;
    let mut enhanced: Option<(u8, u16, u16)> = None;
    let mut text = String::new();
    loop {
        let rest = &buf[pos..];
        let Some(nl) = memchr::memchr(b'\n', rest) else {
            if buf.len() > MAX_REPLY_LEN {
                return Err(ReplyError::TooLong);
            }
            // A partial line that already cannot be a reply line fails now rather than later.
            check_prefix(rest)?;
            return Ok(None);
        };
        let end = pos + nl + 1;
        if end > MAX_REPLY_LEN {
            return Err(ReplyError::TooLong);
        }
        let mut line = &rest[..nl];
        if let [head @ .., b'\r'] = line {
            line = head;
        }
        let (line_code, last, body) = split_line(line)?;
        match code {
            None => code = Some(line_code),
            Some(first) if first != line_code => {
                return Err(ReplyError::CodeMismatch {
                    first,
                    other: line_code,
                })
            }
            Some(_) => {}
        }
        let (esc, body) = split_enhanced(body, line_code);
        let first_line = pos == 0;
        if first_line {
            enhanced = esc;
        } else {
            text.push('\n');
        }
        // Continuation lines repeat the enhanced code (RFC 2034 §3); keep it only when it differs.
        let body = if !first_line && esc.is_some() && esc != enhanced {
            line[4..].as_ref()
        } else {
            body
        };
        text.push_str(&String::from_utf8_lossy(body));
        pos = end;
        if last {
            let code = code.unwrap_or(line_code);
            return Ok(Some((
                Reply {
                    code,
                    enhanced,
                    text,
                },
                pos,
            )));
        }
    }
}

fn malformed(line: &[u8]) -> ReplyError {
    let shown = &line[..line.len().min(80)];
    ReplyError::Malformed(String::from_utf8_lossy(shown).into_owned())
}

/// Reject a partial line early when its first bytes cannot start a reply line.
fn check_prefix(rest: &[u8]) -> Result<(), ReplyError> {
    for (i, &b) in rest.iter().take(4).enumerate() {
        let ok = match i {
            0 => (b'2'..=b'5').contains(&b),
            1 | 2 => b.is_ascii_digit(),
            _ => matches!(b, b' ' | b'-' | b'\r'),
        };
        if !ok {
            return Err(malformed(rest));
        }
    }
    Ok(())
}

/// `(code, is_last_line, text)` of one line without its line ending.
fn split_line(line: &[u8]) -> Result<(u16, bool, &[u8]), ReplyError> {
    let (digits, rest) = match line {
        [a, b, c, rest @ ..] => ([*a, *b, *c], rest),
        _ => return Err(malformed(line)),
    };
    if !(b'2'..=b'5').contains(&digits[0]) || !digits[1..].iter().all(u8::is_ascii_digit) {
        return Err(malformed(line));
    }
    let code = digits
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    match rest {
        [] => Ok((code, true, rest)),
        [b' ', text @ ..] => Ok((code, true, text)),
        [b'-', text @ ..] => Ok((code, false, text)),
        _ => Err(malformed(line)),
    }
}

/// Split a leading `c.s.d ` enhanced status code off `body` when its class matches the code's.
fn split_enhanced(body: &[u8], code: u16) -> (Option<(u8, u16, u16)>, &[u8]) {
    let end = body
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(body.len());
    let token = &body[..end];
    let Some(esc) = parse_enhanced(token) else {
        return (None, body);
    };
    if u16::from(esc.0) != code / 100 {
        return (None, body);
    }
    let rest = &body[end..];
    let rest = rest.strip_prefix(b" ").unwrap_or(rest);
    (Some(esc), rest)
}

/// `class.subject.detail`: class 2, 4 or 5; subject and detail 1-3 digits (RFC 3463 §2).
fn parse_enhanced(token: &[u8]) -> Option<(u8, u16, u16)> {
    let mut parts = token.split(|&b| b == b'.');
    let class = parts.next()?;
    let subject = parts.next()?;
    let detail = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    let num = |p: &[u8], max_len: usize| -> Option<u16> {
        if p.is_empty() || p.len() > max_len || !p.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(p.iter().fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0')))
    };
    let class = num(class, 1)?;
    if !matches!(class, 2 | 4 | 5) {
        return None;
    }
    Some((class as u8, num(subject, 3)?, num(detail, 3)?))
}

/// What an EHLO reply advertises (the keywords smtpw uses).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// `None`: SIZE not advertised. `Some(0)`: advertised without a limit. `Some(n)`: limit n octets.
    pub size: Option<u64>,
    /// ENHANCEDSTATUSCODES (RFC 2034).
    pub enhanced_status_codes: bool,
    /// 8BITMIME (RFC 6152).
    pub eight_bit_mime: bool,
    /// The server answered EHLO (false after the HELO fallback).
    pub esmtp: bool,
    /// STARTTLS (RFC 3207).
    pub starttls: bool,
    /// CHUNKING (RFC 3030): BDAT.
    pub chunking: bool,
    /// SMTPUTF8 (RFC 6531): internationalised addresses.
    pub smtputf8: bool,
    /// The SASL mechanisms of `AUTH` lines (RFC 4954) and of the older `AUTH=` form IIS still
    /// sends, upper case, each once.
    pub auth: Vec<String>,
}

impl Capabilities {
    /// Read the keywords of a 250 EHLO reply (lines after the first; keywords case-insensitive).
    pub fn from_ehlo(reply: &Reply) -> Self {
        let mut caps = Capabilities {
            esmtp: true,
            ..Capabilities::default()
        };
        for line in reply.lines().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            if keyword.eq_ignore_ascii_case("PIPELINING") {
                caps.pipelining = true;
            } else if keyword.eq_ignore_ascii_case("SIZE") {
                let limit = words.next().and_then(|n| n.parse::<u64>().ok());
                caps.size = Some(limit.unwrap_or(0));
            } else if keyword.eq_ignore_ascii_case("ENHANCEDSTATUSCODES") {
                caps.enhanced_status_codes = true;
            } else if keyword.eq_ignore_ascii_case("8BITMIME") {
                caps.eight_bit_mime = true;
            } else if keyword.eq_ignore_ascii_case("STARTTLS") {
                caps.starttls = true;
            } else if keyword.eq_ignore_ascii_case("CHUNKING") {
                caps.chunking = true;
            } else if keyword.eq_ignore_ascii_case("SMTPUTF8") {
                caps.smtputf8 = true;
            } else if keyword.eq_ignore_ascii_case("AUTH")
                || keyword
                    .get(..5)
                    .is_some_and(|k| k.eq_ignore_ascii_case("AUTH="))
            {
                let first = keyword.get(5..).filter(|m| !m.is_empty());
                for m in first.into_iter().chain(words) {
                    let m = m.to_ascii_uppercase();
                    if !caps.auth.contains(&m) {
                        caps.auth.push(m);
                    }
                }
            }
        }
        caps
    }
}

/// What a RCPT reply means for that recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RcptVerdict {
    /// 2yz: in the transaction.
    Accepted,
    /// Too many recipients in this transaction: send the rest in the next one (TXN-3).
    TooMany,
    /// Other 4yz: retry later.
    TempFail,
    /// Other 5yz (and anything else unexpected): fails for good.
    PermFail,
}

/// Classify a RCPT reply (TXN-3).
///
/// TooMany: a 452 or 552 whose enhanced code is X.5.3 or whose text says "too many recipients";
/// a 452 without an enhanced code; and any other 4yz/5yz reply that carries X.5.3. A 452 with a
/// different enhanced code (say `452 4.3.1 Insufficient system storage`) is a plain TempFail.
/// 1yz/3yz (nonsense after RCPT) are treated as TempFail.
pub fn classify_rcpt(r: &Reply) -> RcptVerdict {
    match r.class() {
        2 => return RcptVerdict::Accepted,
        4 | 5 => {}
        _ => return RcptVerdict::TempFail,
    }
    let x53 = matches!(r.enhanced, Some((_, 5, 3)));
    let text_says = says_too_many(&r.text);
    let too_many = x53
        || (matches!(r.code, 452 | 552) && text_says)
        || (r.code == 452 && r.enhanced.is_none());
    if too_many && r.code != 421 {
        RcptVerdict::TooMany
    } else if r.is_transient() {
        RcptVerdict::TempFail
    } else {
        RcptVerdict::PermFail
    }
}

fn says_too_many(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("too many recipients") || lower.contains("too many rcpt")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(s: &str) -> Reply {
        let (r, used) = parse_reply(s.as_bytes()).unwrap().unwrap();
        assert_eq!(used, s.len());
        r
    }

    #[test]
    fn single_line_with_enhanced_code() {
        let r = parse_all("552 5.5.3 Too many recipients\r\n");
        assert_eq!(r.code, 552);
        assert_eq!(r.enhanced, Some((5, 5, 3)));
        assert_eq!(r.text, "Too many recipients");
        assert_eq!(r.to_string(), "552 5.5.3 Too many recipients");
    }

    #[test]
    fn single_line_without_text() {
        let r = parse_all("250\r\n");
        assert_eq!((r.code, r.enhanced, r.text.as_str()), (250, None, ""));
        assert_eq!(r.to_string(), "250");
        let r = parse_all("354 \r\n");
        assert_eq!(r.code, 354);
    }

    #[test]
    fn multi_line_joined() {
        let s = "550-5.1.1 The email account does not exist.\r\n550-5.1.1 Please check\r\n550 5.1.1 https://example.org/help\r\n";
        let r = parse_all(s);
        assert_eq!(r.code, 550);
        assert_eq!(r.enhanced, Some((5, 1, 1)));
        assert_eq!(
            r.text,
            "The email account does not exist.\nPlease check\nhttps://example.org/help"
        );
        assert_eq!(
            r.to_string(),
            "550 5.1.1 The email account does not exist. / Please check / https://example.org/help"
        );
    }

    #[test]
    fn two_replies_in_one_buffer_and_partials() {
        let s = b"250 2.1.0 Sender OK\r\n250 2.1.5 <a@b>\r\n354 go";
        let (r1, n1) = parse_reply(s).unwrap().unwrap();
        assert_eq!((r1.code, n1), (250, 21));
        let (r2, n2) = parse_reply(&s[n1..]).unwrap().unwrap();
        assert_eq!((r2.code, r2.text.as_str()), (250, "<a@b>"));
        assert_eq!(parse_reply(&s[n1 + n2..]).unwrap(), None);
        assert_eq!(parse_reply(b"").unwrap(), None);
        assert_eq!(parse_reply(b"25").unwrap(), None);
        assert_eq!(parse_reply(b"250-first\r\n250-sec").unwrap(), None);
    }

    #[test]
    fn bare_lf_accepted() {
        let r = parse_all("220-a\n220 b\n");
        assert_eq!((r.code, r.text.as_str()), (220, "a\nb"));
    }

    #[test]
    fn enhanced_code_must_match_class() {
        let r = parse_all("250 5.1.1 odd\r\n");
        assert_eq!(r.enhanced, None);
        assert_eq!(r.text, "5.1.1 odd");
        let r = parse_all("250 2.6.0 <id@host> Queued mail for delivery\r\n");
        assert_eq!(r.enhanced, Some((2, 6, 0)));
        let r = parse_all("451 4.999.999 x\r\n");
        assert_eq!(r.enhanced, Some((4, 999, 999)));
        let r = parse_all("451 4.1000.1 x\r\n");
        assert_eq!(r.enhanced, None);
        let r = parse_all("250 2.0.0\r\n");
        assert_eq!((r.enhanced, r.text.as_str()), (Some((2, 0, 0)), ""));
    }

    #[test]
    fn malformed_rejected() {
        assert!(parse_reply(b"hello\r\n").is_err());
        assert!(parse_reply(b"hel").is_err());
        assert!(parse_reply(b"250x\r\n").is_err());
        assert!(parse_reply(b"650 no\r\n").is_err());
        assert!(parse_reply(b"25\r\n").is_err());
        assert!(matches!(
            parse_reply(b"250-a\r\n251 b\r\n"),
            Err(ReplyError::CodeMismatch {
                first: 250,
                other: 251
            })
        ));
        let long = vec![b'2'; MAX_REPLY_LEN + 10];
        assert!(parse_reply(&long).is_err());
        let mut long = b"250-".to_vec();
        for _ in 0..MAX_REPLY_LEN / 8 {
            long.extend_from_slice(b"x\r\n250-y");
        }
        assert_eq!(parse_reply(&long), Err(ReplyError::TooLong));
    }

    #[test]
    fn ehlo_capabilities() {
        let s = "250-mx.example.org Hello [127.0.0.1]\r\n250-TURN\r\n250-SIZE 5242880\r\n250-ETRN\r\n250-PIPELINING\r\n250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n250-8bitmime\r\n250-AUTH GSSAPI NTLM\r\n250 OK\r\n";
        let caps = Capabilities::from_ehlo(&parse_all(s));
        assert_eq!(
            caps,
            Capabilities {
                pipelining: true,
                size: Some(5_242_880),
                enhanced_status_codes: true,
                eight_bit_mime: true,
                esmtp: true,
                starttls: false,
                chunking: false,
                smtputf8: false,
                auth: vec!["GSSAPI".into(), "NTLM".into()],
            }
        );
        let caps = Capabilities::from_ehlo(&parse_all("250-mx\r\n250-chunking\r\n250 OK\r\n"));
        assert!(caps.chunking);
        let caps = Capabilities::from_ehlo(&parse_all("250-mx\r\n250-SmtpUtf8\r\n250 OK\r\n"));
        assert!(caps.smtputf8 && !caps.chunking);
        // IIS with AUTH LOGIN: both forms, each mechanism once; STARTTLS.
        let caps = Capabilities::from_ehlo(&parse_all(
            "250-mx\r\n250-STARTTLS\r\n250-AUTH=LOGIN\r\n250-AUTH GSSAPI NTLM login\r\n250 OK\r\n",
        ));
        assert!(caps.starttls);
        assert_eq!(caps.auth, ["LOGIN", "GSSAPI", "NTLM"]);
        let caps = Capabilities::from_ehlo(&parse_all("250-host\r\n250 SIZE\r\n"));
        assert_eq!(caps.size, Some(0));
        assert!(!caps.pipelining);
        // The greeting line is never a keyword.
        let caps = Capabilities::from_ehlo(&parse_all("250 PIPELINING\r\n"));
        assert!(!caps.pipelining);
    }

    #[test]
    fn rcpt_classification() {
        let c = |s: &str| classify_rcpt(&parse_all(s));
        assert_eq!(c("250 2.1.5 <a@b>\r\n"), RcptVerdict::Accepted);
        assert_eq!(c("251 User not local\r\n"), RcptVerdict::Accepted);
        assert_eq!(c("452 4.5.3 Too many recipients\r\n"), RcptVerdict::TooMany);
        assert_eq!(c("452 Too many recipients\r\n"), RcptVerdict::TooMany);
        assert_eq!(c("452 too many\r\n"), RcptVerdict::TooMany);
        assert_eq!(c("552 5.5.3 Too many recipients\r\n"), RcptVerdict::TooMany);
        assert_eq!(c("552 too many recipients\r\n"), RcptVerdict::TooMany);
        assert_eq!(c("552 5.2.3 TOO MANY RECIPIENTS\r\n"), RcptVerdict::TooMany);
        assert_eq!(c("451 4.5.3 slow down\r\n"), RcptVerdict::TooMany);
        assert_eq!(
            c("452 4.3.1 Insufficient system storage\r\n"),
            RcptVerdict::TempFail
        );
        assert_eq!(
            c("552 5.3.4 Message size exceeds fixed maximum\r\n"),
            RcptVerdict::PermFail
        );
        assert_eq!(c("552 mailbox full\r\n"), RcptVerdict::PermFail);
        assert_eq!(c("450 4.2.1 try later\r\n"), RcptVerdict::TempFail);
        assert_eq!(c("421 4.5.3 closing\r\n"), RcptVerdict::TempFail);
        assert_eq!(c("550 5.1.1 User unknown\r\n"), RcptVerdict::PermFail);
        assert_eq!(c("354 what\r\n"), RcptVerdict::TempFail);
    }

    #[test]
    fn synthetic_replies() {
        assert_eq!(
            Reply::connection_lost().to_string(),
            "451 4.4.2 Connection lost"
        );
        let r = Reply::host_unreachable([("mx.example.org:25", "refused\r\n(os error 111)")]);
        assert!(r.is_transient());
        assert_eq!(
            r.to_string(),
            "451 4.4.1 mx.example.org:25 unreachable: refused  (os error 111)"
        );
        let r = Reply::host_unreachable([("a:25", "refused"), ("b:26", "time-out")]);
        assert_eq!(
            r.to_string(),
            "451 4.4.1 a:25 unreachable: refused; b:26 unreachable: time-out"
        );
        let r = Reply::connection_lost_because("time-out waiting for the RCPT reply");
        assert!(r.is_transient());
        assert_eq!(
            r.to_string(),
            "451 4.4.2 Connection lost (time-out waiting for the RCPT reply)"
        );
    }

    /// Found by the `smtp_reply` fuzz target: a relay's bare CR (or any control character) in
    /// a reply's text came out raw in the one-line form that goes to the logs, the ledger and
    /// `smtpw queue`'s failure table, where a terminal acts on it.
    #[test]
    fn one_line_form_escapes_control_characters_from_the_relay() {
        let (r, _) = parse_reply(b"452 4.5.3 Too many recipients\rESMTG ready\r\n")
            .unwrap()
            .unwrap();
        let shown = r.to_string();
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert_eq!(shown, "452 4.5.3 Too many recipients\\rESMTG ready");
        let (r, _) = parse_reply(b"550-5.1.1 \x1b[2Jgone\r\n550 5.1.1 tab\there\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.to_string(), "550 5.1.1 \\u{1b}[2Jgone / tab\\there");
    }

    fn reply_strategy() -> impl Strategy<Value = (u16, Option<(u8, u16, u16)>, Vec<String>)> {
        (
            200u16..600,
            proptest::option::of((0u16..1000, 0u16..1000)),
            proptest::collection::vec("[ -~]{0,40}", 1..6),
        )
            .prop_map(|(code, esc, lines)| {
                // Enhanced codes exist for classes 2, 4 and 5 only (RFC 3463).
                let esc = esc
                    .filter(|_| code / 100 != 3)
                    .map(|(s, d)| ((code / 100) as u8, s, d));
                (code, esc, lines)
            })
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut pos = 0;
            // Parse repeatedly like the client does; must terminate and never panic.
            while let Ok(Some((_, used))) = parse_reply(&bytes[pos..]) {
                prop_assert!(used > 0);
                pos += used;
            }
        }

        #[test]
        fn near_replies_never_panic(s in "([2-5][0-9]{2}[ -]?[0-9. a-zA-Z]{0,12}\r?\n){0,5}[2-5]?[0-9]{0,2}[ -]?") {
            let _ = parse_reply(s.as_bytes());
        }

        #[test]
        fn roundtrip((code, esc, lines) in reply_strategy(), split in 0usize..400) {
            let mut wire = String::new();
            for (i, line) in lines.iter().enumerate() {
                let sep = if i + 1 == lines.len() { ' ' } else { '-' };
                wire.push_str(&code.to_string());
                wire.push(sep);
                if let Some((c, s, d)) = esc {
                    wire.push_str(&format!("{c}.{s}.{d} "));
                }
                wire.push_str(line);
                wire.push_str("\r\n");
            }
            let bytes = wire.as_bytes();
            let (r, used) = parse_reply(bytes).unwrap().unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(r.code, code);
            prop_assert_eq!(r.enhanced, esc);
            // Text survives when it does not itself start like an enhanced code.
            if esc.is_some() || lines.iter().all(|l| parse_enhanced(l.split(' ').next().unwrap_or("").as_bytes()).is_none()) {
                prop_assert_eq!(r.text, lines.join("\n"));
            }
            // Any strict prefix is incomplete, never an error and never a reply.
            let cut = split.min(bytes.len().saturating_sub(1));
            prop_assert_eq!(parse_reply(&bytes[..cut]), Ok(None));
        }

        #[test]
        fn classification_follows_code_class((code, esc, lines) in reply_strategy()) {
            let r = Reply::new(code, esc, lines.join("\n"));
            let v = classify_rcpt(&r);
            match code / 100 {
                2 => prop_assert_eq!(v, RcptVerdict::Accepted),
                3 => prop_assert_eq!(v, RcptVerdict::TempFail),
                4 => prop_assert!(matches!(v, RcptVerdict::TempFail | RcptVerdict::TooMany)),
                _ => prop_assert!(matches!(v, RcptVerdict::PermFail | RcptVerdict::TooMany)),
            }
            if v == RcptVerdict::TooMany {
                prop_assert!(
                    matches!(esc, Some((_, 5, 3))) || code == 452 || code == 552
                );
            }
        }
    }
}
