//! The `.MAIL` job format: how a list server hands outgoing mail to smtpw.
//!
//! A job file is **BSMTP** (batched SMTP), the text a client would send to an SMTP server,
//! written to a file:
//!
//! ```text
//! HELO LISTSERV.EXAMPLE.ORG                    (optional; HELO or EHLO, ignored)
//! MAIL FROM:<owner-news@LISTSERV.EXAMPLE.ORG> POOL=A
//! RCPT TO:<alice@example.com>
//! RCPT TO:<bob@example.net>
//! DATA
//! From: news@LISTSERV.EXAMPLE.ORG
//! Subject: hello
//!
//! ..a body line that starts with a dot is written with two dots
//! .
//! QUIT                                         (optional)
//! ```
//!
//! - Verbs (`HELO`, `EHLO`, `MAIL FROM:`, `RCPT TO:`, `DATA`, `QUIT`) are case-insensitive;
//!   a space after the colon is allowed (`MAIL FROM: <a@b>`).
//! - `MAIL FROM:<addr>` may carry the job's **pool** as an ESMTP-style parameter: `POOL=x`, where x
//!   is `A`..`Z` (either case) or `-` (the default pool, POOL-1). Without `POOL=` the job goes
//!   to the configured default pool. `SIZE=n` and `BODY=...` are accepted and ignored; any other
//!   parameter is an error. The null sender `MAIL FROM:<>` is allowed (bounces).
//! - One `RCPT TO:<addr>` per line, at least one per job, no parameters. An address is any
//!   non-empty text without spaces, control characters, `<` or `>`.
//! - `DATA` starts the message, which ends at a line holding a single `.`. Message lines that
//!   begin with `.` are dot-stuffed (one extra `.` in front, RFC 5321 §4.5.2).
//! - Lines end in CRLF or LF; the stored message always uses CRLF.
//! - **Long lines are folded** at ingest, as Postfix does (`smtp_line_length_limit = 998`): a
//!   message line longer than 998 bytes (RFC 5321 allows 1000 octets per line with the CRLF) is
//!   stored as several lines, CRLF and a SPACE inserted every 998 bytes (997 after the first,
//!   never inside a UTF-8 character); ingest logs a warning per job with the number of folded
//!   lines. In a header this is ordinary folding; in a body the reader sees a line break and a
//!   space where the long line was cut. The stored message is what goes on the wire, so the
//!   rate limits count the bytes actually sent.
//! - Several `MAIL`..`.` transactions in one file are several jobs (each with its own pool).
//!   Blank lines between transactions are ignored; after `QUIT` only blank lines may follow.
//! - **Dropping a file**: write it under a temporary name (any name not ending in `.MAIL`) in
//!   `SPOOL/incoming/`, then rename it to `*.MAIL` (case-insensitive). The engine reads only
//!   `*.MAIL` names, oldest first (modification time, then name), so it never sees a half-written
//!   file. `smtpw submit` does exactly this.
//! - A file that does not follow these rules goes to `SPOOL/quarantine/NAME`, with
//!   `SPOOL/quarantine/NAME.reason` beside it naming the file, the line and what was expected;
//!   nothing of it is queued.
//! - **What counts as a job**: every entry of `SPOOL/incoming/` named `*.MAIL` is incoming work
//!   (ingest, `smtpw run --until-empty` and `smtpw queue` count the same entries). A regular
//!   file is read. A **symbolic link to a regular file** is read too (the target's content, as
//!   if it were in `incoming/`); after the commit the **link is removed and the target left
//!   alone**: the target lives elsewhere and belongs to whoever made it, and removing the link
//!   is what takes the job off the queue. A link to another `*.MAIL` of `incoming/` is not read
//!   (that job would be queued twice). Anything else named `*.MAIL` (a directory, a FIFO, a
//!   socket, a device, a link to one of these, a dangling link, a loop of links, that other-job
//!   link) is never opened and goes to quarantine with its reason, as does a file that cannot be
//!   read (say EACCES). What cannot be moved to quarantine either stays where it is: it is
//!   reported once, then looked at again after 1 minute, 2, 4, ... up to every hour, and taken
//!   (read or quarantined) at the first look that can; a changed file (modification time or
//!   size) is looked at at once. Every other job goes on meanwhile. `--until-empty` stops with
//!   exit status 3 when only such entries are left, naming them.
//!
//! The reader ([`JobReader`]) streams: it yields recipients one at a time (a job of a million
//! recipients never sits in memory), and only the message after `DATA` is read into memory,
//! bounded by a maximum size. The writer ([`JobWriter`]) streams the same way.

use std::io::{self, BufRead, Read, Write};

use crate::config::Pool;

/// Longest envelope line accepted (`MAIL`, `RCPT`, ...), in bytes.
pub const MAX_ENVELOPE_LINE: usize = 4096;

/// Longest message line stored, in bytes without its CRLF: RFC 5321 allows 1000 octets per
/// line with the CRLF. Longer lines are folded at ingest (see the module docs).
pub const MAX_TEXT_LINE: usize = 998;

/// The pieces a message line is stored as: the whole line when it fits [`MAX_TEXT_LINE`], else
/// a first piece of at most 998 bytes and more of at most 997 (each is stored after an inserted
/// SPACE), cut before a UTF-8 continuation byte when one is near.
fn fold_pieces(line: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(1 + line.len() / (MAX_TEXT_LINE - 1));
    let mut rest = line;
    let mut room = MAX_TEXT_LINE;
    while rest.len() > room {
        let mut cut = room;
        // Back off over at most 3 continuation bytes (10xxxxxx): a character is never split.
        let back = rest[cut - 3..=cut]
            .iter()
            .rev()
            .take_while(|b| *b & 0xc0 == 0x80)
            .count();
        if back < 4 {
            cut -= back;
        }
        out.push(&rest[..cut]);
        rest = &rest[cut..];
        room = MAX_TEXT_LINE - 1;
    }
    out.push(rest);
    out
}

/// A message (CRLF line endings) with every line longer than [`MAX_TEXT_LINE`] folded as ingest
/// folds `.MAIL` files, and how many lines were; `None` when no line is too long (the message is
/// kept as it is). Used for messages that arrive by SMTP.
pub fn fold_long_lines(message: &[u8]) -> Option<(Vec<u8>, u64)> {
    let too_long = message
        .split(|b| *b == b'\n')
        .any(|l| l.strip_suffix(b"\r").unwrap_or(l).len() > MAX_TEXT_LINE);
    if !too_long {
        return None;
    }
    let mut out = Vec::with_capacity(message.len() + message.len() / MAX_TEXT_LINE * 3);
    let mut folded = 0;
    let mut lines = message.split(|b| *b == b'\n').peekable();
    while let Some(l) = lines.next() {
        let last = lines.peek().is_none();
        let (content, cr) = match l.strip_suffix(b"\r") {
            Some(c) => (c, true),
            None => (l, false),
        };
        let pieces = fold_pieces(content);
        if pieces.len() > 1 {
            folded += 1;
        }
        for (i, p) in pieces.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b"\r\n ");
            }
            out.extend_from_slice(p);
        }
        if !last {
            out.extend_from_slice(if cr { b"\r\n" } else { b"\n" });
        } else if cr {
            out.push(b'\r');
        }
    }
    Some((out, folded))
}

/// Why a job could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The file breaks the format at a line (1-based).
    #[error("line {line}: {found}, expected {expected}")]
    Malformed {
        /// The line, 1-based.
        line: u64,
        /// What the line holds.
        found: String,
        /// What the format wants there.
        expected: String,
    },
    /// The message after `DATA` is larger than allowed.
    #[error("line {line}: message larger than the maximum of {max} bytes")]
    TooLarge {
        /// The line where the limit was passed, 1-based.
        line: u64,
        /// The limit, in bytes.
        max: u64,
    },
    #[error("reading the job: {0}")]
    /// The job could not be read.
    Io(io::Error),
}

impl From<io::Error> for JobError {
    fn from(e: io::Error) -> Self {
        JobError::Io(e)
    }
}

impl JobError {
    /// True when the file itself is at fault (quarantine it), false for an I/O error.
    pub fn is_malformed(&self) -> bool {
        !matches!(self, JobError::Io(_))
    }
}

/// The envelope sender and pool of one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobHeader {
    /// Without angle brackets; empty for the null sender.
    pub mail_from: String,
    /// `None`: the configured default pool.
    pub pool: Option<Pool>,
    /// The line of `MAIL FROM`.
    pub line: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first `MAIL` (a `HELO`/`EHLO` may come).
    Start,
    /// Between transactions.
    Between,
    /// After `MAIL`, reading `RCPT` lines.
    Rcpts { seen: bool },
    /// After `DATA`, the message is next.
    Data,
    /// After `QUIT` or end of file.
    Done,
}

/// Is `addr` acceptable as an address in a job (and on the wire)?
pub fn valid_address(addr: &str) -> bool {
    !addr.is_empty()
        && addr
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && c != '<' && c != '>')
}

/// A streaming reader of a `.MAIL` job file.
///
/// Use: `while let Some(h) = r.next_job()? { while let Some(rcpt) = r.next_rcpt()? {..}; let msg = r.read_message()?; }`.
#[derive(Debug)]
pub struct JobReader<R> {
    inner: R,
    line_no: u64,
    buf: Vec<u8>,
    rcpt: String,
    state: State,
    max_message: u64,
    jobs: u64,
    /// Message lines of the current job folded for being longer than [`MAX_TEXT_LINE`].
    folded: u64,
}

/// Read one line (without its LF or CRLF) into `buf`, at most `max` bytes of content.
/// Returns `Ok(false)` at end of input; an unterminated last line is returned with `Ok(true)`.
fn read_line_bounded<R: BufRead>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<bool, LineErr> {
    buf.clear();
    let mut any = false;
    loop {
        let avail = match r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(LineErr::Io(e)),
        };
        if avail.is_empty() {
            // An unterminated last line still counts as a line.
            if any && buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(any);
        }
        any = true;
        match memchr::memchr(b'\n', avail) {
            Some(i) => {
                if buf.len() + i > max.saturating_add(1) {
                    return Err(LineErr::TooLong);
                }
                buf.extend_from_slice(&avail[..i]);
                r.consume(i + 1);
                if buf.last() == Some(&b'\r') {
                    buf.pop();
                }
                if buf.len() > max {
                    return Err(LineErr::TooLong);
                }
                return Ok(true);
            }
            None => {
                let n = avail.len();
                if buf.len() + n > max.saturating_add(1) {
                    return Err(LineErr::TooLong);
                }
                buf.extend_from_slice(avail);
                r.consume(n);
            }
        }
    }
}

#[derive(Debug)]
enum LineErr {
    Io(io::Error),
    TooLong,
}

fn starts_with_ci(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

fn is_verb(line: &[u8], verb: &[u8]) -> bool {
    starts_with_ci(line, verb) && (line.len() == verb.len() || line[verb.len()] == b' ')
}

fn show(line: &[u8]) -> String {
    if line.is_empty() {
        return "an empty line".to_string();
    }
    // Control characters escaped: the text ends up in .reason files and logs.
    crate::text::quoted_prefix_in(&String::from_utf8_lossy(line), 80, '"')
}

/// Parse `<addr>` at the start of `rest` (after optional spaces); returns the address and the
/// text after `>`.
fn parse_path(rest: &str) -> Option<(&str, &str)> {
    let rest = rest.trim_start_matches(' ');
    let inner = rest.strip_prefix('<')?;
    let end = inner.find('>')?;
    Some((&inner[..end], &inner[end + 1..]))
}

impl<R: BufRead> JobReader<R> {
    /// A reader whose messages may be at most `max_message_bytes` long (as stored: unstuffed, CRLF).
    pub fn new(inner: R, max_message_bytes: u64) -> Self {
        Self {
            inner,
            line_no: 0,
            buf: Vec::with_capacity(256),
            rcpt: String::new(),
            state: State::Start,
            max_message: max_message_bytes,
            jobs: 0,
            folded: 0,
        }
    }

    /// How many lines of the last message read were folded (longer than [`MAX_TEXT_LINE`]).
    pub fn folded_lines(&self) -> u64 {
        self.folded
    }

    /// The number of the last line read (1-based).
    pub fn line(&self) -> u64 {
        self.line_no
    }

    fn malformed(&self, found: String, expected: &str) -> JobError {
        JobError::Malformed {
            line: self.line_no,
            found,
            expected: expected.to_string(),
        }
    }

    /// Read the next envelope line into `self.buf`; `Ok(false)` at end of file.
    fn next_line(&mut self, expected: &str) -> Result<bool, JobError> {
        match read_line_bounded(&mut self.inner, &mut self.buf, MAX_ENVELOPE_LINE) {
            Ok(true) => {
                self.line_no += 1;
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(LineErr::Io(e)) => Err(JobError::Io(e)),
            Err(LineErr::TooLong) => {
                self.line_no += 1;
                Err(self.malformed(
                    format!("a line longer than {MAX_ENVELOPE_LINE} bytes"),
                    expected,
                ))
            }
        }
    }

    /// The next transaction's `MAIL FROM`, or `None` at the end of the file. Errors if the
    /// previous transaction was not read to its end.
    pub fn next_job(&mut self) -> Result<Option<JobHeader>, JobError> {
        const EXPECTED: &str = "\"MAIL FROM:<address>\" (optionally with POOL=x)";
        match self.state {
            State::Start | State::Between => {}
            State::Done => return Ok(None),
            State::Rcpts { .. } | State::Data => {
                return Err(self.malformed(
                    "a new job before the previous one ended".into(),
                    "the previous job to be read to its end",
                ))
            }
        }
        loop {
            let expected = if self.state == State::Start {
                "\"HELO\", \"EHLO\" or \"MAIL FROM:<address>\""
            } else {
                EXPECTED
            };
            if !self.next_line(expected)? {
                if self.jobs == 0 {
                    self.line_no += 1;
                    return Err(self.malformed("the end of the file".into(), EXPECTED));
                }
                self.state = State::Done;
                return Ok(None);
            }
            let line = self.buf.as_slice();
            if line.iter().all(|b| *b == b' ' || *b == b'\t') {
                continue;
            }
            if self.state == State::Start && (is_verb(line, b"HELO") || is_verb(line, b"EHLO")) {
                self.state = State::Between;
                continue;
            }
            if is_verb(line, b"QUIT") && self.jobs > 0 {
                return self.after_quit();
            }
            if !starts_with_ci(line, b"MAIL FROM:") {
                return Err(self.malformed(show(line), EXPECTED));
            }
            let Ok(text) = std::str::from_utf8(&line[10..]) else {
                return Err(self.malformed("an address that is not UTF-8".into(), EXPECTED));
            };
            let Some((addr, params)) = parse_path(text) else {
                return Err(self.malformed(show(line), EXPECTED));
            };
            if !addr.is_empty() && !valid_address(addr) {
                return Err(self.malformed(
                    format!("the address {}", show(addr.as_bytes())),
                    "an address without spaces or control characters",
                ));
            }
            let mut pool = None;
            for p in params.split(' ').filter(|p| !p.is_empty()) {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                if k.eq_ignore_ascii_case("POOL") {
                    let mut cs = v.chars();
                    match (cs.next().and_then(Pool::from_char), cs.next()) {
                        (Some(x), None) => pool = Some(x),
                        _ => {
                            return Err(self
                                .malformed(format!("POOL={v}"), "POOL=x with x one of A..Z or -"))
                        }
                    }
                } else if k.eq_ignore_ascii_case("SIZE") || k.eq_ignore_ascii_case("BODY") {
                    // accepted and ignored
                } else {
                    return Err(self.malformed(
                        format!("the parameter {}", show(p.as_bytes())),
                        "POOL=x (or SIZE=n, BODY=...) after MAIL FROM:<address>",
                    ));
                }
            }
            let header = JobHeader {
                mail_from: addr.to_string(),
                pool,
                line: self.line_no,
            };
            self.state = State::Rcpts { seen: false };
            self.jobs += 1;
            return Ok(Some(header));
        }
    }

    fn after_quit(&mut self) -> Result<Option<JobHeader>, JobError> {
        self.state = State::Done;
        while self.next_line("nothing after QUIT")? {
            if !self.buf.iter().all(|b| *b == b' ' || *b == b'\t') {
                return Err(self.malformed(show(&self.buf), "nothing after QUIT"));
            }
        }
        Ok(None)
    }

    /// The next recipient of the current job, or `None` once `DATA` is read. The returned
    /// string is reused by the next call (no allocation per recipient).
    pub fn next_rcpt(&mut self) -> Result<Option<&str>, JobError> {
        const EXPECTED: &str = "\"RCPT TO:<address>\" or \"DATA\"";
        let seen = match self.state {
            State::Rcpts { seen } => seen,
            _ => return Ok(None),
        };
        if !self.next_line(EXPECTED)? {
            self.line_no += 1;
            return Err(self.malformed("the end of the file".into(), EXPECTED));
        }
        let line = self.buf.as_slice();
        if line.eq_ignore_ascii_case(b"DATA") {
            if !seen {
                return Err(self.malformed("DATA".into(), "at least one \"RCPT TO:<address>\""));
            }
            self.state = State::Data;
            return Ok(None);
        }
        if !starts_with_ci(line, b"RCPT TO:") {
            return Err(self.malformed(show(line), EXPECTED));
        }
        let Ok(text) = std::str::from_utf8(&line[8..]) else {
            return Err(self.malformed("an address that is not UTF-8".into(), EXPECTED));
        };
        let Some((addr, rest)) = parse_path(text) else {
            return Err(self.malformed(show(line), "\"RCPT TO:<address>\""));
        };
        if !valid_address(addr) {
            return Err(self.malformed(
                format!("the address {}", show(addr.as_bytes())),
                "a non-empty address without spaces or control characters",
            ));
        }
        if !rest.trim().is_empty() {
            return Err(self.malformed(
                format!("{} after the address", show(rest.as_bytes())),
                "\"RCPT TO:<address>\" without parameters",
            ));
        }
        self.rcpt.clear();
        self.rcpt.push_str(addr);
        self.state = State::Rcpts { seen: true };
        Ok(Some(&self.rcpt))
    }

    /// Skip any remaining recipients, then read the message up to the line `.`: unstuffed, CRLF.
    pub fn read_message(&mut self) -> Result<Vec<u8>, JobError> {
        while let State::Rcpts { .. } = self.state {
            self.next_rcpt()?;
        }
        if self.state != State::Data {
            return Err(self.malformed("no DATA".into(), "\"DATA\" before the message"));
        }
        let mut msg = Vec::new();
        let max = usize::try_from(self.max_message).unwrap_or(usize::MAX);
        let data_line = self.line_no;
        self.folded = 0;
        loop {
            let limit = max.saturating_sub(msg.len()).saturating_add(1);
            match read_line_bounded(&mut self.inner, &mut self.buf, limit) {
                Ok(true) => self.line_no += 1,
                Ok(false) => {
                    self.line_no += 1;
                    return Err(self.malformed(
                        format!("the end of the file in the message begun after line {data_line}"),
                        "a line \".\" ending the message",
                    ));
                }
                Err(LineErr::Io(e)) => return Err(JobError::Io(e)),
                Err(LineErr::TooLong) => {
                    return Err(JobError::TooLarge {
                        line: self.line_no + 1,
                        max: self.max_message,
                    })
                }
            }
            let line = self.buf.as_slice();
            if line == b"." {
                break;
            }
            let content = line.strip_prefix(b".").unwrap_or(line);
            if content.len() <= MAX_TEXT_LINE {
                if msg.len() + content.len() + 2 > max {
                    return Err(JobError::TooLarge {
                        line: self.line_no,
                        max: self.max_message,
                    });
                }
                msg.extend_from_slice(content);
                msg.extend_from_slice(b"\r\n");
                continue;
            }
            // Folded as Postfix does (smtp_line_length_limit = 998): CRLF SPACE inserted.
            let pieces = fold_pieces(content);
            let stored = content.len() + 3 * (pieces.len() - 1) + 2;
            if msg.len() + stored > max {
                return Err(JobError::TooLarge {
                    line: self.line_no,
                    max: self.max_message,
                });
            }
            for (i, p) in pieces.iter().enumerate() {
                if i > 0 {
                    msg.push(b' ');
                }
                msg.extend_from_slice(p);
                msg.extend_from_slice(b"\r\n");
            }
            self.folded += 1;
        }
        self.state = State::Between;
        Ok(msg)
    }
}

/// Dot-stuff a message for a job file: line endings become CRLF (a bare LF becomes CRLF, a
/// missing final ending is added) and every line that starts with `.` gets one more. The result
/// does not include the terminating `.` line. The stuffing itself is the wire encoder's
/// ([`crate::smtp::data::dot_stuff`]).
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = crate::smtp::data::dot_stuff(&to_crlf(message));
    // The wire form ends with the terminator line; a job file writes its own.
    out.truncate(out.len().saturating_sub(b".\r\n".len()));
    out
}

/// The inverse of [`dot_stuff`]: removes one leading `.` from each line (CRLF or LF endings),
/// returns CRLF lines. Stops at a line `.` if there is one.
pub fn dot_unstuff(stuffed: &[u8]) -> Vec<u8> {
    let mut wire = to_crlf(stuffed);
    wire.extend_from_slice(b".\r\n");
    crate::smtp::data::dot_unstuff(&wire).unwrap_or_default()
}

/// Normalize line endings to CRLF (a bare LF becomes CRLF; a missing final ending is added).
pub fn to_crlf(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 2);
    for line in lines(message) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The lines of `text` without their LF / CRLF endings; an empty text has no lines.
fn lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (line, next) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    })
}

/// Why a job could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(
        "invalid address {0:?}: it must be non-empty, without spaces, control characters, < or >"
    )]
    /// An address that cannot be written into a job.
    InvalidAddress(String),
    #[error("a job needs at least one recipient")]
    /// A job without recipients.
    NoRecipients,
    /// Reading the message to put in the job failed.
    #[error("reading the message: {0}")]
    Message(io::Error),
    /// Writing the job failed.
    #[error("{0}")]
    Io(io::Error),
}

impl From<io::Error> for WriteError {
    fn from(e: io::Error) -> Self {
        WriteError::Io(e)
    }
}

/// A streaming writer of `.MAIL` jobs (CRLF line endings).
#[derive(Debug)]
pub struct JobWriter<W: Write> {
    out: W,
    helo_written: bool,
}

impl<W: Write> JobWriter<W> {
    /// A writer of one job into `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            helo_written: false,
        }
    }

    /// Write an optional `HELO` line (only before the first job).
    pub fn helo(&mut self, name: &str) -> Result<(), WriteError> {
        if !self.helo_written {
            write!(self.out, "HELO {name}\r\n")?;
            self.helo_written = true;
        }
        Ok(())
    }

    /// Write one whole job: envelope, `DATA`, the dot-stuffed message read from `message`
    /// (LF or CRLF; streamed line by line), and `.`.
    pub fn job<I, S>(
        &mut self,
        mail_from: &str,
        pool: Option<Pool>,
        rcpts: I,
        message: impl Read,
    ) -> Result<u64, WriteError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.helo_written = true;
        if !mail_from.is_empty() && !valid_address(mail_from) {
            return Err(WriteError::InvalidAddress(mail_from.to_string()));
        }
        write!(self.out, "MAIL FROM:<{mail_from}>")?;
        if let Some(p) = pool {
            write!(self.out, " POOL={p}")?;
        }
        self.out.write_all(b"\r\n")?;
        let mut n = 0u64;
        for r in rcpts {
            let r = r.as_ref();
            if !valid_address(r) {
                return Err(WriteError::InvalidAddress(r.to_string()));
            }
            self.out.write_all(b"RCPT TO:<")?;
            self.out.write_all(r.as_bytes())?;
            self.out.write_all(b">\r\n")?;
            n += 1;
        }
        if n == 0 {
            return Err(WriteError::NoRecipients);
        }
        self.out.write_all(b"DATA\r\n")?;
        let mut reader = io::BufReader::with_capacity(64 * 1024, message);
        let mut line = Vec::with_capacity(1024);
        loop {
            line.clear();
            if reader
                .read_until(b'\n', &mut line)
                .map_err(WriteError::Message)?
                == 0
            {
                break;
            }
            let mut content = line.as_slice();
            content = content.strip_suffix(b"\n").unwrap_or(content);
            content = content.strip_suffix(b"\r").unwrap_or(content);
            if content.first() == Some(&b'.') {
                self.out.write_all(b".")?;
            }
            self.out.write_all(content)?;
            self.out.write_all(b"\r\n")?;
        }
        self.out.write_all(b".\r\n")?;
        Ok(n)
    }

    /// Write `QUIT` and return the inner writer (flushed).
    pub fn finish(mut self) -> Result<W, WriteError> {
        self.out.write_all(b"QUIT\r\n")?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// One whole job read into memory (convenience for tests and small jobs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The envelope sender, without brackets ("" for the null sender).
    pub mail_from: String,
    /// The job's pool (`POOL=` on MAIL FROM); `None`: the configured default pool.
    pub pool: Option<Pool>,
    /// The recipients, in order.
    pub rcpts: Vec<String>,
    /// Unstuffed, CRLF.
    pub message: Vec<u8>,
}

/// Read every job of a file into memory. Not for huge jobs; ingest streams with [`JobReader`].
pub fn read_all<R: BufRead>(r: R, max_message_bytes: u64) -> Result<Vec<Job>, JobError> {
    let mut reader = JobReader::new(r, max_message_bytes);
    let mut jobs = Vec::new();
    while let Some(h) = reader.next_job()? {
        let mut rcpts = Vec::new();
        while let Some(r) = reader.next_rcpt()? {
            rcpts.push(r.to_string());
        }
        let message = reader.read_message()?;
        jobs.push(Job {
            mail_from: h.mail_from,
            pool: h.pool,
            rcpts,
            message,
        });
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_simple_job_with_lf_endings() {
        let text = b"HELO x\nMAIL FROM:<a@b> POOL=c\nRCPT TO:<x@y>\nRCPT TO:<z@w>\nDATA\nSubject: s\n\n..dot\n.\nQUIT\n";
        let jobs = read_all(&text[..], 1 << 20).unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].pool, Pool::from_char('C'));
        assert_eq!(jobs[0].rcpts, vec!["x@y", "z@w"]);
        assert_eq!(jobs[0].message, b"Subject: s\r\n\r\n.dot\r\n");
    }

    #[test]
    fn an_unbounded_maximum_does_not_overflow() {
        let text = b"MAIL FROM:<a@b>\nRCPT TO:<x@y>\nDATA\nhello\n.\n";
        assert_eq!(
            read_all(&text[..], u64::MAX).unwrap()[0].message,
            b"hello\r\n"
        );
    }

    #[test]
    fn line_numbers_in_errors() {
        let text = b"MAIL FROM:<a@b>\r\nRCPT TO:<x@y>\r\nRCPT TO x@y\r\nDATA\r\n.\r\n";
        let err = read_all(&text[..], 1 << 20).unwrap_err();
        match err {
            JobError::Malformed { line, .. } => assert_eq!(line, 3),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn fold_long_lines_folds_what_ingest_folds_and_keeps_the_rest() {
        let short = b"Subject: x\r\n\r\nbody\r\n".to_vec();
        assert_eq!(fold_long_lines(&short), None);
        let long = "y".repeat(2500);
        let msg = format!("Subject: x\r\n\r\n{long}\r\nend\r\n").into_bytes();
        let (out, n) = fold_long_lines(&msg).expect("a line over 998 bytes");
        assert_eq!(n, 1);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines[0], "Subject: x");
        assert_eq!(lines[2].len(), 998);
        assert_eq!(lines[3].len(), 998, "a space and 997 bytes");
        assert!(lines[3].starts_with(' '));
        assert_eq!(lines[4].len(), 1 + 2500 - 998 - 997);
        assert_eq!(lines[5], "end");
        assert!(text
            .lines()
            .all(|l| l.trim_end_matches('\r').len() <= MAX_TEXT_LINE));
        // Nothing lost: the pieces put back together are the line.
        assert_eq!(
            format!("{}{}{}", lines[2], &lines[3][1..], &lines[4][1..]),
            long
        );
    }
}
