//! The listener's SMTP session, sans-I/O: bytes in, replies and jobs out (LISTEN-1..LISTEN-6).
//!
//! The driver appends what it reads to a buffer and calls [`Session::step`] until it says
//! [`Step::NeedInput`]; each step consumes a command line, a run of message data or a BDAT
//! chunk from the front of the buffer. Replies are queued by the driver and written when the
//! machine needs input: that is PIPELINING (RFC 2920), since a pipelining client's commands are
//! all in the buffer already. At the end of a message the machine hands out a [`Step::Store`]
//! and goes on with the next command: the driver starts storing the job and keeps the reply's
//! place; [`Session::stored`] makes the reply from the spool's answer (LISTEN-3: 250 with the
//! job id only once the job is committed). Replies are written in order, so a pipelining client's
//! messages are stored together (one group commit) and still answered one by one.
//!
//! The command parser is the engine's own, not `smtp-proto`'s (which the mock uses): the
//! listener needs a private MAIL parameter (`XPOOL=`), must tell a malformed address (501) from
//! an unknown parameter (555), and stays a pure function of its input, which the property tests
//! drive with arbitrary bytes.

use std::sync::Arc;

use bytes::{Buf, BytesMut};

use crate::config::Pool;
use crate::settings::ListenSettings;

/// The longest command line accepted (RFC 5321 asks for 512; extensions make them longer).
pub const MAX_COMMAND_LINE: usize = 4096;
/// Message data is consumed in runs of at most this much, even without a line ending.
const DATA_RUN: usize = 64 * 1024;

/// What a session knows of where it runs.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Our name in the greeting and EHLO.
    pub hostname: String,
    /// `[listen]`: limits, allowed clients, the sender-to-pool map.
    pub settings: Arc<ListenSettings>,
}

/// A message received whole: what the driver stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Envelope sender ("" for the null sender).
    pub mail_from: String,
    /// Its recipients, as accepted.
    pub rcpts: Vec<String>,
    /// The pool it goes to (LISTEN-4); `None`: the default pool (DEFAULT_LIST_POOL).
    pub pool: Option<Pool>,
    /// What decided the pool: `xpool`, `header`, `sender map` or `default`.
    pub pool_by: &'static str,
    /// Unstuffed, CRLF line endings, without any `Delivery-Pool:` header.
    pub message: Vec<u8>,
}

/// Why the spool could not store a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The disk is full (it may pass).
    DiskFull,
    /// Anything else the spool said.
    Other,
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Queue this reply (CRLF-terminated, possibly several lines).
    Reply(String),
    /// Store this message durably; its reply ([`Session::stored`]) comes next in the queue,
    /// before the replies of the steps that follow.
    Store(Received),
    /// Write the queued replies (this one last) and close the connection.
    Close(String),
    /// Write the queued replies and read more.
    NeedInput,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Greeted (or not yet: HELO/EHLO not seen).
    Command,
    /// After 354: message lines until a lone dot.
    Data {
        at_line_start: bool,
    },
    /// Inside a BDAT chunk: `left` bytes to take; `last` ends the message.
    Bdat {
        left: u64,
        last: bool,
    },
    Closed,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Txn {
    mail_from: Option<String>,
    rcpts: Vec<String>,
    xpool: Option<Pool>,
    message: Vec<u8>,
    /// The message grew past the limit: the rest is read and dropped, then 552.
    too_big: bool,
    /// A BDAT chunk was taken: DATA is out of place until the message ends.
    chunking: bool,
    /// BDAT chunks are being refused (no MAIL, no recipients): each is read, dropped and
    /// answered with this.
    refused: Option<String>,
}

/// One SMTP session of the listener.
#[derive(Debug, Clone)]
pub struct Session {
    cfg: SessionConfig,
    state: State,
    greeted: bool,
    txn: Txn,
}

impl Session {
    /// A session with a client; [`Session::greeting`] is its first step.
    pub fn new(cfg: SessionConfig) -> Self {
        Session {
            cfg,
            state: State::Command,
            greeted: false,
            txn: Txn::default(),
        }
    }

    /// The greeting: `220`, or for a client outside `allow` a `554 5.7.1` refusal (then close).
    pub fn greeting(&mut self, client_allowed: bool, client: &str) -> Step {
        if client_allowed {
            Step::Reply(format!("220 {} ESMTP smtpw ready\r\n", self.cfg.hostname))
        } else {
            self.state = State::Closed;
            Step::Close(format!(
                "554 5.7.1 {} is not allowed to submit mail here\r\n",
                sanitize(client)
            ))
        }
    }

    /// The reply to a client over the connection cap (LISTEN-6).
    pub fn too_many_connections() -> &'static str {
        "421 4.3.2 too many connections; try again later\r\n"
    }

    /// The reply when the client stayed silent past the idle time-out (then close).
    pub fn idle_timeout(&mut self) -> String {
        self.state = State::Closed;
        format!(
            "421 4.4.2 {} idle too long; closing the connection\r\n",
            self.cfg.hostname
        )
    }

    /// The reply when the listener stops with the client connected (then close).
    pub fn shutting_down(&mut self) -> String {
        self.state = State::Closed;
        format!(
            "421 4.3.2 {} is shutting down; try again later\r\n",
            self.cfg.hostname
        )
    }

    /// Whether the session has ended (a Close was handed out).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether a message is being received (the client is inside DATA or BDAT).
    pub fn in_message(&self) -> bool {
        matches!(self.state, State::Data { .. } | State::Bdat { .. })
    }

    /// The input ended (the client closed its side): a message being received is dropped.
    pub fn eof(&mut self) {
        self.state = State::Closed;
        self.txn = Txn::default();
    }

    /// Consume from the front of `buf` and say what to do.
    pub fn step(&mut self, buf: &mut BytesMut) -> Step {
        match self.state.clone() {
            State::Closed => Step::Close(String::new()),
            State::Command => self.command(buf),
            State::Data { at_line_start } => self.data(buf, at_line_start),
            State::Bdat { left, last } => self.bdat(buf, left, last),
        }
    }

    /// The reply to a [`Step::Store`], from the spool's answer.
    pub fn stored(result: Result<i64, StoreError>) -> String {
        match result {
            Ok(id) => format!("250 2.0.0 Ok: queued as {id}\r\n"),
            Err(StoreError::DiskFull) => {
                "451 4.3.1 the spool's disk is full; try again later\r\n".into()
            }
            Err(StoreError::Other) => {
                "451 4.3.0 the spool cannot store the message now; try again later\r\n".into()
            }
        }
    }

    fn command(&mut self, buf: &mut BytesMut) -> Step {
        let Some(nl) = memchr::memchr(b'\n', buf) else {
            if buf.len() > MAX_COMMAND_LINE {
                buf.clear();
                return Step::Reply("500 5.5.6 command line too long\r\n".into());
            }
            return Step::NeedInput;
        };
        // Split off, not copied: the rest of the buffer (a pipelining client's next commands)
        // is not moved for every line.
        let line = buf.split_to(nl + 1);
        if line.len() > MAX_COMMAND_LINE + 2 {
            return Step::Reply("500 5.5.6 command line too long\r\n".into());
        }
        let line = trim_line(&line);
        let Ok(line) = std::str::from_utf8(line) else {
            return Step::Reply("500 5.5.2 the command is not valid UTF-8\r\n".into());
        };
        let (verb, arg) = match line.find(' ') {
            Some(i) => (&line[..i], line[i + 1..].trim()),
            None => (line, ""),
        };
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" | "HELO" if arg.is_empty() => {
                Step::Reply(format!("501 5.5.4 {verb} needs a domain\r\n"))
            }
            "EHLO" => {
                self.greeted = true;
                self.txn = Txn::default();
                Step::Reply(format!(
                    "250-{}\r\n250-PIPELINING\r\n250-SIZE {}\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250-SMTPUTF8\r\n250 XPOOL\r\n",
                    self.cfg.hostname, self.cfg.settings.max_message_bytes
                ))
            }
            "HELO" => {
                self.greeted = true;
                self.txn = Txn::default();
                Step::Reply(format!("250 {}\r\n", self.cfg.hostname))
            }
            "MAIL" => Step::Reply(self.mail(arg)),
            "RCPT" => Step::Reply(self.rcpt(arg)),
            "DATA" => {
                if let Some(r) = self.ready_for_message() {
                    return Step::Reply(r);
                }
                if self.txn.chunking {
                    return Step::Reply("503 5.5.1 DATA in the middle of BDAT chunks\r\n".into());
                }
                if !arg.is_empty() {
                    return Step::Reply("501 5.5.4 DATA takes no argument\r\n".into());
                }
                self.state = State::Data {
                    at_line_start: true,
                };
                Step::Reply("354 End data with <CR><LF>.<CR><LF>\r\n".into())
            }
            "BDAT" => self.bdat_command(buf, arg),
            "RSET" => {
                self.txn = Txn::default();
                Step::Reply("250 2.0.0 Ok\r\n".into())
            }
            "NOOP" => Step::Reply("250 2.0.0 Ok\r\n".into()),
            "QUIT" => {
                self.state = State::Closed;
                Step::Close("221 2.0.0 Bye\r\n".into())
            }
            "VRFY" => Step::Reply("252 2.5.0 Cannot VRFY user; try RCPT\r\n".into()),
            "HELP" => Step::Reply("214 2.0.0 See RFC 5321\r\n".into()),
            "STARTTLS" | "AUTH" | "ETRN" | "EXPN" | "TURN" => Step::Reply(format!(
                "502 5.5.1 {} is not implemented\r\n",
                sanitize(verb)
            )),
            _ => Step::Reply("500 5.5.2 command not recognized\r\n".into()),
        }
    }

    /// `None` when DATA/BDAT may start; else the refusal.
    fn ready_for_message(&self) -> Option<String> {
        if self.txn.mail_from.is_none() {
            return Some("503 5.5.1 MAIL first\r\n".into());
        }
        if self.txn.rcpts.is_empty() {
            return Some("554 5.5.1 no valid recipients\r\n".into());
        }
        None
    }

    fn mail(&mut self, arg: &str) -> String {
        if !self.greeted {
            return "503 5.5.1 EHLO or HELO first\r\n".into();
        }
        if self.txn.mail_from.is_some() {
            return "503 5.5.1 MAIL already given (RSET first)\r\n".into();
        }
        let Some((addr, params)) = path_arg(arg, "FROM:") else {
            return "501 5.5.4 syntax: MAIL FROM:<address>\r\n".into();
        };
        let mut utf8 = false;
        let mut xpool = None;
        for p in params.split_ascii_whitespace() {
            let (k, v) = match p.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (p, None),
            };
            match (k.to_ascii_uppercase().as_str(), v) {
                ("SIZE", Some(v)) => match v.parse::<u64>() {
                    Ok(n) if n > self.cfg.settings.max_message_bytes => {
                        return format!(
                            "552 5.3.4 message size {n} exceeds the limit of {} bytes\r\n",
                            self.cfg.settings.max_message_bytes
                        )
                    }
                    Ok(_) => {}
                    Err(_) => return "501 5.5.4 SIZE= takes a number\r\n".into(),
                },
                ("BODY", Some(v))
                    if v.eq_ignore_ascii_case("7BIT") || v.eq_ignore_ascii_case("8BITMIME") => {}
                ("SMTPUTF8", None) => utf8 = true,
                ("XPOOL", Some(v)) => {
                    let mut cs = v.chars();
                    match (cs.next().and_then(Pool::from_char), cs.next()) {
                        (Some(p), None) => xpool = Some(p),
                        _ => {
                            return format!(
                                "501 5.5.4 XPOOL={} is not a pool (a letter A-Z, or -)\r\n",
                                sanitize(v)
                            )
                        }
                    }
                }
                _ => {
                    return format!(
                        "555 5.5.4 MAIL parameter {} is not supported\r\n",
                        sanitize(p)
                    )
                }
            }
        }
        if !addr.is_empty() {
            if let Some(r) = check_address(addr, utf8, "5.1.7", "sender") {
                return r;
            }
        }
        self.txn = Txn {
            mail_from: Some(addr.to_owned()),
            xpool,
            ..Txn::default()
        };
        "250 2.1.0 Ok\r\n".into()
    }

    fn rcpt(&mut self, arg: &str) -> String {
        if self.txn.mail_from.is_none() {
            return "503 5.5.1 MAIL first\r\n".into();
        }
        let Some((addr, params)) = path_arg(arg, "TO:") else {
            return "501 5.5.4 syntax: RCPT TO:<address>\r\n".into();
        };
        if let Some(p) = params.split_ascii_whitespace().next() {
            return format!(
                "555 5.5.4 RCPT parameter {} is not supported\r\n",
                sanitize(p)
            );
        }
        // The transaction's SMTPUTF8 was checked with MAIL; a UTF-8 recipient needs it too.
        if let Some(r) = check_address(addr, true, "5.1.3", "recipient") {
            return r;
        }
        if self.txn.rcpts.len() >= self.cfg.settings.max_recipients as usize {
            return format!(
                "452 4.5.3 too many recipients (at most {} per message)\r\n",
                self.cfg.settings.max_recipients
            );
        }
        self.txn.rcpts.push(addr.to_owned());
        "250 2.1.5 Ok\r\n".into()
    }

    fn bdat_command(&mut self, buf: &mut BytesMut, arg: &str) -> Step {
        let mut it = arg.split_ascii_whitespace();
        let size = it.next().and_then(|s| s.parse::<u64>().ok());
        let last = match it.next() {
            None => false,
            Some(l) if l.eq_ignore_ascii_case("LAST") => true,
            Some(_) => return Step::Reply("501 5.5.4 syntax: BDAT <size> [LAST]\r\n".into()),
        };
        let Some(size) = size.filter(|_| it.next().is_none()) else {
            // Without a size the chunk cannot be skipped: the session cannot go on.
            self.state = State::Closed;
            return Step::Close("501 5.5.4 syntax: BDAT <size> [LAST]; closing\r\n".into());
        };
        if !self.txn.chunking && self.txn.refused.is_none() {
            self.txn.refused = self.ready_for_message();
        }
        self.txn.chunking = true;
        self.bdat(buf, size, last)
    }

    fn bdat(&mut self, buf: &mut BytesMut, left: u64, last: bool) -> Step {
        let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if self.txn.refused.is_none() {
            self.append(&buf[..take]);
        }
        buf.advance(take);
        let left = left - take as u64;
        if left > 0 {
            self.state = State::Bdat { left, last };
            return Step::NeedInput;
        }
        self.state = State::Command;
        if let Some(r) = self.txn.refused.clone() {
            if last {
                self.txn = Txn::default();
            }
            return Step::Reply(r);
        }
        if !last {
            return Step::Reply(format!(
                "250 2.0.0 {} octets received\r\n",
                self.txn.message.len()
            ));
        }
        // Chunks are raw: bare LFs become CRLF here, which may take the message over the limit.
        self.txn.message = crate::job::to_crlf(&self.txn.message);
        if self.txn.message.len() as u64 > self.cfg.settings.max_message_bytes {
            self.txn.too_big = true;
        }
        self.end_of_message()
    }

    fn data(&mut self, buf: &mut BytesMut, mut at_line_start: bool) -> Step {
        // Lines are read in place and the consumed part dropped once at the end: no copy of
        // each line, no move of the rest of the buffer per line.
        let mut pos = 0;
        let step = loop {
            let rest = &buf[pos..];
            let (end, complete) = match memchr::memchr(b'\n', rest) {
                Some(i) => (i + 1, true),
                None if rest.len() > DATA_RUN => (rest.len() - 1, false),
                None => {
                    self.state = State::Data { at_line_start };
                    break Step::NeedInput;
                }
            };
            let mut body: &[u8] = &rest[..end];
            pos += end;
            if complete {
                body = trim_line(body);
            }
            if at_line_start && complete && body == b"." {
                self.state = State::Command;
                break self.end_of_message();
            }
            if at_line_start && body.first() == Some(&b'.') {
                body = &body[1..];
            }
            self.append(body);
            if complete {
                self.append(b"\r\n");
            }
            at_line_start = complete;
        };
        buf.advance(pos);
        step
    }

    fn append(&mut self, bytes: &[u8]) {
        if self.txn.too_big {
            return;
        }
        let max = self.cfg.settings.max_message_bytes;
        if (self.txn.message.len() + bytes.len()) as u64 > max {
            self.txn.too_big = true;
            self.txn.message = Vec::new();
            return;
        }
        self.txn.message.extend_from_slice(bytes);
    }

    fn end_of_message(&mut self) -> Step {
        let txn = std::mem::take(&mut self.txn);
        if txn.too_big {
            return Step::Reply(format!(
                "552 5.3.4 message exceeds the limit of {} bytes\r\n",
                self.cfg.settings.max_message_bytes
            ));
        }
        let mail_from = txn.mail_from.unwrap_or_default();
        let (message, header_pool) = take_pool_header(txn.message);
        let (pool, pool_by) = if let Some(p) = txn.xpool {
            (Some(p), "xpool")
        } else if let Some(p) = header_pool {
            (Some(p), "header")
        } else if let Some(p) = self.cfg.settings.pool_for_sender(&mail_from) {
            (Some(p), "sender map")
        } else {
            (None, "default")
        };
        self.state = State::Command;
        Step::Store(Received {
            mail_from,
            rcpts: txn.rcpts,
            pool,
            pool_by,
            message,
        })
    }
}

/// A line without its LF or CRLF.
fn trim_line(line: &[u8]) -> &[u8] {
    let l = line.strip_suffix(b"\n").unwrap_or(line);
    l.strip_suffix(b"\r").unwrap_or(l)
}

/// `FROM:<addr> params` -> (`addr`, `params`); `None` when not of that shape.
fn path_arg<'a>(arg: &'a str, keyword: &str) -> Option<(&'a str, &'a str)> {
    let head = arg.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let close = rest.find('>')?;
    let addr = &rest[..close];
    let params = &rest[close + 1..];
    if !params.is_empty() && !params.starts_with(' ') {
        return None;
    }
    // A source route (`<@a,@b:user@c>`) is accepted and ignored (RFC 5321 4.1.1.3).
    let addr = match addr.strip_prefix('@').and_then(|r| r.split_once(':')) {
        Some((_, a)) => a,
        None => addr,
    };
    Some((addr, params.trim()))
}

/// `None` when `addr` is `local@domain` and can be stored; else the 501/553 reply.
fn check_address(addr: &str, utf8: bool, code: &str, what: &str) -> Option<String> {
    let ok = crate::job::valid_address(addr)
        && addr
            .rsplit_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty());
    if !ok {
        return Some(format!(
            "501 {code} malformed {what} address <{}>\r\n",
            sanitize(addr)
        ));
    }
    if !utf8 && !addr.is_ascii() {
        return Some(format!(
            "553 5.6.7 {what} address is not ASCII; use SMTPUTF8\r\n"
        ));
    }
    None
}

/// Remove every `Delivery-Pool:` field (with its continuation lines) from the header section;
/// the pool of the first one that names a pool.
pub fn take_pool_header(message: Vec<u8>) -> (Vec<u8>, Option<Pool>) {
    const NAME: &[u8] = b"delivery-pool:";
    // Cheap check first: most messages have no such field.
    let header_end = memchr::memmem::find(&message, b"\r\n\r\n").map_or(message.len(), |i| i + 2);
    let has = message[..header_end]
        .windows(NAME.len())
        .any(|w| w.eq_ignore_ascii_case(NAME));
    if !has {
        return (message, None);
    }
    let mut out = Vec::with_capacity(message.len());
    let mut pool = None;
    let mut pos = 0;
    let mut dropping = false;
    while pos < header_end {
        let end =
            memchr::memchr(b'\n', &message[pos..header_end]).map_or(header_end, |i| pos + i + 1);
        let line = &message[pos..end];
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation {
            dropping = line.len() >= NAME.len() && line[..NAME.len()].eq_ignore_ascii_case(NAME);
            if dropping && pool.is_none() {
                let value = String::from_utf8_lossy(trim_line(&line[NAME.len()..]));
                let v = value.trim();
                let mut cs = v.chars();
                if let (Some(p), None) = (cs.next().and_then(Pool::from_char), cs.next()) {
                    pool = Some(p);
                }
            }
        }
        if !dropping {
            out.extend_from_slice(line);
        }
        pos = end;
    }
    out.extend_from_slice(&message[header_end..]);
    (out, pool)
}

/// Client input quoted in a reply: printable ASCII only, at most 100 characters.
fn sanitize(s: &str) -> String {
    s.chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}
