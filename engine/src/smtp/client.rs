//! The SMTP transaction driver (issue 4 item 4; SPEC §9, §11 A6, §12 D2/D5; RFC 5321, RFC 2920).
//!
//! One [`Client`] owns one connection. [`Client::handshake`] reads the greeting and says EHLO
//! (HELO when EHLO gets a 5yz); [`Client::deliver`] sends one message to a list of recipients in
//! as many transactions as needed and returns one outcome per recipient, always.
//!
//! Replies are read from the client's own buffer (never `read_line` under a time-out), so every
//! time-out is cancel-safe. While a command group or a block of message data is being written,
//! whatever the server sends is read into that buffer too, so a server that answers while it reads
//! can never dead-lock against a long pipelined group.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::data::{DotStuffer, DATA_CHUNK};
use super::reply::{classify_rcpt, parse_reply, Capabilities, RcptVerdict, Reply};
use super::{ClientConfig, ConnectError, DataGate};
use crate::net::BoxStream;

/// Bytes of unread server output we are willing to hold (a pipelined group of a few thousand
/// RCPTs has replies of a few hundred KiB at most).
const MAX_BUFFERED: usize = 16 * 1024 * 1024;

/// The outcome for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptResult {
    /// Accepted, and the message got a 2yz after the final dot: that reply.
    Delivered(Reply),
    /// Permanent failure: the 5yz reply (to RCPT, MAIL, DATA or the final dot).
    Failed(Reply),
    /// Try again later: the 4yz reply, the 421, or a synthetic `451 4.4.2 Connection lost (...)`
    /// when the connection dropped or timed out before the recipient was decided.
    Deferred(Reply),
}

impl RcptResult {
    pub fn reply(&self) -> &Reply {
        match self {
            RcptResult::Delivered(r) | RcptResult::Failed(r) | RcptResult::Deferred(r) => r,
        }
    }
    pub fn is_delivered(&self) -> bool {
        matches!(self, RcptResult::Delivered(_))
    }
    pub fn is_failed(&self) -> bool {
        matches!(self, RcptResult::Failed(_))
    }
    pub fn is_deferred(&self) -> bool {
        matches!(self, RcptResult::Deferred(_))
    }
}

/// What [`Client::deliver`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// One per recipient, same order as the `rcpts` given, always.
    pub results: Vec<RcptResult>,
    /// MAIL commands sent.
    pub transactions: u32,
    /// Transactions that ended with recipients carried to the next one (452 / 552 5.5.3).
    pub too_many_recoveries: u32,
    /// Set when the connection was lost (421, I/O error, EOF, time-out, protocol error): the 421
    /// or the synthetic 451 every undecided recipient got. The client is then not usable.
    pub connection_lost: Option<Reply>,
}

impl Delivery {
    pub fn delivered(&self) -> usize {
        self.results.iter().filter(|r| r.is_delivered()).count()
    }
    pub fn failed(&self) -> usize {
        self.results.iter().filter(|r| r.is_failed()).count()
    }
    pub fn deferred(&self) -> usize {
        self.results.iter().filter(|r| r.is_deferred()).count()
    }
}

/// Why a session cannot go on.
#[derive(Debug)]
enum Lost {
    /// 421: the server closes the connection.
    Closing(Reply),
    Io(io::Error),
    Eof(&'static str),
    Timeout(&'static str),
    /// The transaction reached its overall deadline (of this length).
    Deadline(Duration),
    Protocol(String),
}

impl Lost {
    fn reply(&self) -> Reply {
        match self {
            Lost::Closing(r) => r.clone(),
            Lost::Io(e) => Reply::connection_lost_because(format_args!("I/O error: {e}")),
            Lost::Eof(what) => Reply::connection_lost_because(format_args!(
                "closed by the server while waiting for the {what} reply"
            )),
            Lost::Timeout(what) => Reply::connection_lost_because(format_args!(
                "time-out waiting for the {what} reply"
            )),
            Lost::Deadline(d) => Reply::connection_lost_because(format_args!(
                "the transaction took longer than its {:.1} s deadline",
                d.as_secs_f64()
            )),
            Lost::Protocol(why) => {
                Reply::connection_lost_because(format_args!("protocol error: {why}"))
            }
        }
    }

    fn into_connect_error(self) -> ConnectError {
        match self {
            Lost::Closing(r) => ConnectError::Helo(r),
            Lost::Io(e) => ConnectError::Io(e),
            Lost::Eof(what) => ConnectError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed while waiting for the {what} reply"),
            )),
            Lost::Timeout(what) => ConnectError::Timeout(what),
            Lost::Deadline(_) => ConnectError::Timeout("transaction"),
            Lost::Protocol(why) => ConnectError::Protocol(why),
        }
    }
}

/// How a transaction ended when the connection survived it.
#[derive(Debug, Default)]
struct TxnEnd {
    /// Recipients that got too-many-recipients: next transaction.
    retry: Vec<usize>,
    /// Every recipient still undecided gets this (MAIL refused, or too-many at the first RCPT).
    stop: Option<Stop>,
    /// Recipients accepted by RCPT, waiting for the end of data.
    accepted: Vec<usize>,
    /// Place of the first too-many-recipients reply in this transaction.
    first_too_many: Option<usize>,
}

#[derive(Debug)]
enum Stop {
    Defer(Reply),
    Fail(Reply),
}

/// Outcome of writing while reading.
#[derive(Debug, PartialEq, Eq)]
enum Written {
    All,
    /// A complete reply arrived before everything was written (only when asked to stop on one).
    Interrupted,
}

/// One SMTP connection, after the greeting and EHLO.
pub struct Client {
    stream: BoxStream,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    cfg: ClientConfig,
    caps: Capabilities,
    greeting: Reply,
    learned_limit: Option<usize>,
    /// Messages the relay accepted on this connection.
    messages: u32,
    /// A MAIL has been sent on this connection: the next transaction starts with RSET.
    need_rset: bool,
    usable: bool,
    /// A write failed: stop writing, read what the server still says.
    write_error: Option<io::Error>,
    /// Why the connection is gone (reported by later `deliver` calls).
    lost: Option<Reply>,
    /// The transaction under way must be over by then (its [`TxnDeadline`] from its start).
    ///
    /// [`TxnDeadline`]: super::TxnDeadline
    txn_deadline: Option<(Instant, Duration)>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("caps", &self.caps)
            .field("learned_limit", &self.learned_limit)
            .field("usable", &self.usable)
            .finish_non_exhaustive()
    }
}

fn angle(addr: &str) -> String {
    let a = addr.trim();
    if a.starts_with('<') && a.ends_with('>') {
        a.to_owned()
    } else {
        format!("<{a}>")
    }
}

/// An address that would break the command line (CR, LF, NUL) can never be sent.
fn addr_ok(addr: &str) -> bool {
    !addr.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

impl Client {
    fn new(stream: BoxStream, cfg: &ClientConfig) -> Self {
        Self {
            stream,
            rbuf: BytesMut::with_capacity(4096),
            wbuf: Vec::with_capacity(4096),
            cfg: cfg.clone(),
            caps: Capabilities::default(),
            greeting: Reply::new(220, None, ""),
            learned_limit: None,
            messages: 0,
            need_rset: false,
            usable: true,
            write_error: None,
            lost: None,
            txn_deadline: None,
        }
    }

    /// Read the greeting (220 required), then EHLO; HELO when EHLO gets a 5yz.
    pub async fn handshake(stream: BoxStream, cfg: &ClientConfig) -> Result<Client, ConnectError> {
        let mut c = Client::new(stream, cfg);
        let t = cfg.timeouts;
        let greeting = c
            .read_raw(t.greeting, "greeting")
            .await
            .map_err(Lost::into_connect_error)?;
        if greeting.code != 220 {
            // 554 (and 421) greetings accept only QUIT (RFC 5321 §3.1); say it, do not wait.
            c.wbuf.extend_from_slice(b"QUIT\r\n");
            let _ = c.send(t.quit, "QUIT").await;
            tracing::debug!(%greeting, "greeting refused");
            return Err(ConnectError::Greeting(greeting));
        }
        c.greeting = greeting;
        let ehlo = c
            .command_raw("EHLO", &cfg.helo_name, t.ehlo, "EHLO")
            .await?;
        if ehlo.is_positive() {
            c.caps = Capabilities::from_ehlo(&ehlo);
        } else if ehlo.is_permanent() {
            let helo = c
                .command_raw("HELO", &cfg.helo_name, t.ehlo, "HELO")
                .await?;
            if !helo.is_positive() {
                return Err(ConnectError::Helo(helo));
            }
            c.caps = Capabilities::default();
        } else {
            return Err(ConnectError::Helo(ehlo));
        }
        tracing::debug!(caps = ?c.caps, "SMTP session ready");
        Ok(c)
    }

    /// Send `VERB arg` and read its reply (a future that stays `Send`: no `fmt::Arguments`
    /// is held across the await).
    async fn command_raw(
        &mut self,
        verb: &str,
        arg: &str,
        timeout: Duration,
        what: &'static str,
    ) -> Result<Reply, ConnectError> {
        self.wbuf.clear();
        self.wbuf.extend_from_slice(verb.as_bytes());
        self.wbuf.push(b' ');
        self.wbuf.extend_from_slice(arg.as_bytes());
        self.wbuf.extend_from_slice(b"\r\n");
        self.send(timeout, what)
            .await
            .map_err(Lost::into_connect_error)?;
        self.read_raw(timeout, what)
            .await
            .map_err(Lost::into_connect_error)
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// The server's 220 greeting.
    pub fn greeting(&self) -> &Reply {
        &self.greeting
    }

    /// The recipients-per-transaction limit learned from a too-many-recipients reply.
    pub fn learned_rcpt_limit(&self) -> Option<usize> {
        self.learned_limit
    }

    /// Seed the limit (e.g. learned for this relay on an earlier connection). Only lowers it.
    pub fn set_learned_rcpt_limit(&mut self, limit: usize) {
        let limit = limit.max(1);
        self.learned_limit = Some(self.learned_limit.map_or(limit, |l| l.min(limit)));
    }

    /// False after a 421, an I/O error, EOF, a time-out or a protocol desync.
    pub fn is_usable(&self) -> bool {
        self.usable && self.write_error.is_none()
    }

    /// Whether an idle connection is still there, without waiting: false when the server has
    /// closed it or sent something unasked (typically a 421 on its idle time-out). Call before
    /// reusing a connection that sat idle, to reconnect instead of deferring recipients.
    pub async fn check_alive(&mut self) -> bool {
        if !self.is_usable() {
            return false;
        }
        if !self.rbuf.is_empty() {
            self.mark_lost(&Lost::Protocol("unsolicited data from the server".into()));
            return false;
        }
        self.rbuf.reserve(512);
        let stream = &mut self.stream;
        let rbuf = &mut self.rbuf;
        let state = poll_fn(|cx| {
            Poll::Ready(
                match tokio_util::io::poll_read_buf(Pin::new(&mut *stream), cx, &mut *rbuf) {
                    Poll::Pending => None,
                    Poll::Ready(r) => Some(r),
                },
            )
        })
        .await;
        match state {
            None => true,
            Some(Ok(0)) => {
                self.mark_lost(&Lost::Eof("next command"));
                false
            }
            Some(Ok(_)) => {
                let lost = match parse_reply(&self.rbuf) {
                    Ok(Some((r, _))) if r.is_closing() => Lost::Closing(r),
                    _ => Lost::Protocol("unsolicited data from the server".into()),
                };
                self.mark_lost(&lost);
                false
            }
            Some(Err(e)) => {
                self.mark_lost(&Lost::Io(e));
                false
            }
        }
    }

    /// Send QUIT and wait for its reply within the QUIT time-out; errors ignored.
    pub async fn quit(mut self) {
        let t = self.cfg.timeouts.quit;
        if self.is_usable() {
            self.wbuf.clear();
            self.wbuf.extend_from_slice(b"QUIT\r\n");
            if self.send(t, "QUIT").await.is_ok() && self.write_error.is_none() {
                let _ = self.read_raw(t, "QUIT").await;
            }
        }
        let _ = tokio::time::timeout(t, self.stream.shutdown()).await;
    }

    fn mark_lost(&mut self, lost: &Lost) {
        self.usable = false;
        if self.lost.is_none() {
            self.lost = Some(lost.reply());
        }
    }

    fn limit(&self, max_rcpts: usize) -> usize {
        let max = max_rcpts.max(1);
        self.learned_limit.map_or(max, |l| l.min(max)).max(1)
    }

    fn pipelining(&self) -> bool {
        self.cfg.pipelining && self.caps.pipelining
    }

    /// Deliver one message to `rcpts` in as many transactions as needed on this connection.
    ///
    /// `message` is the unstuffed message (headers + body, CRLF line ends); it is dot-stuffed while
    /// written. Transactions carry at most `min(max_rcpts, learned limit)` recipients. Before each
    /// transaction, `gate.acquire(message.len())` is awaited. The result has exactly one outcome
    /// per recipient, in order.
    pub async fn deliver(
        &mut self,
        mail_from: &str,
        rcpts: &[String],
        message: &[u8],
        max_rcpts: usize,
        gate: &dyn DataGate,
    ) -> Delivery {
        let mut results: Vec<Option<RcptResult>> = vec![None; rcpts.len()];
        let mut d = Delivery {
            results: Vec::new(),
            transactions: 0,
            too_many_recoveries: 0,
            connection_lost: None,
        };
        if !self.is_usable() {
            let r = self.lost.clone().unwrap_or_else(Reply::connection_lost);
            d.connection_lost = Some(r);
        } else if !addr_ok(mail_from) {
            let r = Reply::new(501, Some((5, 1, 7)), "Bad sender address syntax (not sent)");
            results.fill(Some(RcptResult::Failed(r)));
        } else {
            let bad = Reply::new(
                501,
                Some((5, 1, 3)),
                "Bad recipient address syntax (not sent)",
            );
            for (slot, rcpt) in results.iter_mut().zip(rcpts) {
                if !addr_ok(rcpt) {
                    *slot = Some(RcptResult::Failed(bad.clone()));
                }
            }
            self.run(
                mail_from,
                rcpts,
                message,
                max_rcpts,
                gate,
                &mut results,
                &mut d,
            )
            .await;
        }
        let lost = d.connection_lost.clone();
        d.results = results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    RcptResult::Deferred(lost.clone().unwrap_or_else(Reply::connection_lost))
                })
            })
            .collect();
        d
    }

    #[allow(clippy::too_many_arguments)]
    async fn run(
        &mut self,
        mail_from: &str,
        rcpts: &[String],
        message: &[u8],
        max_rcpts: usize,
        gate: &dyn DataGate,
        results: &mut [Option<RcptResult>],
        d: &mut Delivery,
    ) {
        let mut pending: VecDeque<usize> =
            (0..rcpts.len()).filter(|&i| results[i].is_none()).collect();
        let from = angle(mail_from);
        while !pending.is_empty() {
            let take = self.limit(max_rcpts).min(pending.len());
            let batch: Vec<usize> = pending.drain(..take).collect();
            gate.acquire(message.len() as u64).await;
            d.transactions += 1;
            // The deadline runs from the first command of the transaction (after the rate gate).
            let limit = self.cfg.txn_deadline.for_message(message.len() as u64);
            self.txn_deadline = Instant::now().checked_add(limit).map(|at| (at, limit));
            let outcome = if self.pipelining() {
                self.txn_pipelined(&from, rcpts, &batch, message, results)
                    .await
            } else {
                self.txn_lockstep(&from, rcpts, &batch, message, results)
                    .await
            };
            self.txn_deadline = None;
            match outcome {
                Ok(end) => {
                    if !end.retry.is_empty() {
                        d.too_many_recoveries += 1;
                        for &i in end.retry.iter().rev() {
                            pending.push_front(i);
                        }
                    }
                    let stopped = end.stop.is_some();
                    if let Some(stop) = end.stop {
                        let (reply, fail) = match stop {
                            Stop::Defer(r) => (r, false),
                            Stop::Fail(r) => (r, true),
                        };
                        for slot in results.iter_mut().filter(|s| s.is_none()) {
                            *slot = Some(if fail {
                                RcptResult::Failed(reply.clone())
                            } else {
                                RcptResult::Deferred(reply.clone())
                            });
                        }
                    }
                    if let Some(e) = self.write_error.take() {
                        // The server answered everything it got, then the connection broke.
                        self.fail_session(Lost::Io(e), d);
                        break;
                    }
                    if !self.usable {
                        // Desync after a reply in the middle of the message data.
                        self.fail_session(Lost::Protocol("reply before end of data".into()), d);
                        break;
                    }
                    if stopped {
                        break;
                    }
                }
                Err(lost) => {
                    self.fail_session(lost, d);
                    break;
                }
            }
        }
    }

    fn fail_session(&mut self, lost: Lost, d: &mut Delivery) {
        let lost = match (lost, self.write_error.take()) {
            (Lost::Eof(_), Some(e)) => Lost::Io(e),
            (l, _) => l,
        };
        tracing::debug!(?lost, "SMTP connection lost");
        self.mark_lost(&lost);
        d.connection_lost = self.lost.clone();
    }

    fn push_mail(&mut self, from: &str, size: usize) {
        self.wbuf.extend_from_slice(b"MAIL FROM:");
        self.wbuf.extend_from_slice(from.as_bytes());
        if self.cfg.use_size && self.caps.size.is_some() {
            self.wbuf
                .extend_from_slice(format!(" SIZE={size}").as_bytes());
        }
        self.wbuf.extend_from_slice(b"\r\n");
    }

    fn push_rcpt(&mut self, rcpt: &str) {
        self.wbuf.extend_from_slice(b"RCPT TO:");
        let a = rcpt.trim();
        if a.starts_with('<') && a.ends_with('>') {
            self.wbuf.extend_from_slice(a.as_bytes());
        } else {
            self.wbuf.push(b'<');
            self.wbuf.extend_from_slice(a.as_bytes());
            self.wbuf.push(b'>');
        }
        self.wbuf.extend_from_slice(b"\r\n");
    }

    /// The MAIL reply: positive goes on; 4yz/5yz stops the delivery; anything else is a desync.
    fn mail_stop(mail: &Reply) -> Result<Option<Stop>, Lost> {
        if mail.is_positive() {
            Ok(None)
        } else if mail.is_transient() {
            Ok(Some(Stop::Defer(mail.clone())))
        } else if mail.is_permanent() {
            Ok(Some(Stop::Fail(mail.clone())))
        } else {
            Err(Lost::Protocol(format!("unexpected MAIL reply: {mail}")))
        }
    }

    /// Sort one RCPT reply. `pos` is the RCPT's place in the transaction.
    fn sort_rcpt(
        &mut self,
        i: usize,
        pos: usize,
        r: Reply,
        results: &mut [Option<RcptResult>],
        end: &mut TxnEnd,
    ) {
        match classify_rcpt(&r) {
            RcptVerdict::Accepted => end.accepted.push(i),
            RcptVerdict::TooMany => {
                if end.first_too_many.is_none() {
                    end.first_too_many = Some(pos);
                    if pos == 0 {
                        // Not a count limit (nothing was in the transaction): a transient
                        // refusal for everything still undecided.
                        end.stop = Some(Stop::Defer(r.clone()));
                    } else {
                        self.set_learned_rcpt_limit(pos);
                        tracing::debug!(limit = pos, reply = %r, "relay recipient limit learned");
                    }
                }
                if end.first_too_many == Some(0) {
                    results[i] = Some(RcptResult::Deferred(r));
                } else {
                    end.retry.push(i);
                }
            }
            RcptVerdict::TempFail => results[i] = Some(RcptResult::Deferred(r)),
            RcptVerdict::PermFail => results[i] = Some(RcptResult::Failed(r)),
        }
    }

    /// RSET? MAIL RCPT... DATA as one write, then every reply in order (RFC 2920).
    async fn txn_pipelined(
        &mut self,
        from: &str,
        rcpts: &[String],
        batch: &[usize],
        message: &[u8],
        results: &mut [Option<RcptResult>],
    ) -> Result<TxnEnd, Lost> {
        let t = self.cfg.timeouts;
        let rset = self.need_rset;
        self.wbuf.clear();
        if rset {
            self.wbuf.extend_from_slice(b"RSET\r\n");
        }
        self.push_mail(from, message.len());
        for &i in batch {
            self.push_rcpt(&rcpts[i]);
        }
        self.wbuf.extend_from_slice(b"DATA\r\n");
        self.need_rset = true;
        self.send(t.mail.max(t.rcpt), "MAIL").await?;

        if rset {
            let r = self.read(t.mail, "RSET").await?;
            if !r.is_positive() {
                tracing::warn!(reply = %r, "RSET refused");
            }
        }
        let mail = self.read(t.mail, "MAIL").await?;
        let mut end = TxnEnd {
            accepted: Vec::with_capacity(batch.len()),
            ..TxnEnd::default()
        };
        let mail_stop = Self::mail_stop(&mail)?;
        for (pos, &i) in batch.iter().enumerate() {
            let r = self.read(t.rcpt, "RCPT").await?;
            if mail_stop.is_none() {
                self.sort_rcpt(i, pos, r, results, &mut end);
            }
        }
        let data = self.read(t.data_init, "DATA").await?;
        if mail_stop.is_some() {
            end.stop = mail_stop;
            end.accepted.clear();
        }
        self.finish_data(data, &end.accepted, message, results)
            .await?;
        Ok(end)
    }

    /// One command, one reply.
    async fn txn_lockstep(
        &mut self,
        from: &str,
        rcpts: &[String],
        batch: &[usize],
        message: &[u8],
        results: &mut [Option<RcptResult>],
    ) -> Result<TxnEnd, Lost> {
        let t = self.cfg.timeouts;
        if self.need_rset {
            self.wbuf.clear();
            self.wbuf.extend_from_slice(b"RSET\r\n");
            self.send(t.mail, "RSET").await?;
            let r = self.read(t.mail, "RSET").await?;
            if !r.is_positive() {
                tracing::warn!(reply = %r, "RSET refused");
            }
        }
        self.wbuf.clear();
        self.push_mail(from, message.len());
        self.need_rset = true;
        self.send(t.mail, "MAIL").await?;
        let mail = self.read(t.mail, "MAIL").await?;
        let mut end = TxnEnd::default();
        if let Some(stop) = Self::mail_stop(&mail)? {
            end.stop = Some(stop);
            return Ok(end);
        }
        end.accepted.reserve(batch.len());
        for (pos, &i) in batch.iter().enumerate() {
            self.wbuf.clear();
            self.push_rcpt(&rcpts[i]);
            self.send(t.rcpt, "RCPT").await?;
            let r = self.read(t.rcpt, "RCPT").await?;
            self.sort_rcpt(i, pos, r, results, &mut end);
            if end.first_too_many.is_some() {
                // Stop adding; the untried ones wait for the next transaction (or, when the very
                // first RCPT was refused so, share its deferral through `end.stop`).
                end.retry.extend_from_slice(&batch[pos + 1..]);
                if end.stop.is_some() {
                    end.retry.clear();
                }
                break;
            }
        }
        if end.accepted.is_empty() {
            return Ok(end);
        }
        self.wbuf.clear();
        self.wbuf.extend_from_slice(b"DATA\r\n");
        self.send(t.data_init, "DATA").await?;
        let data = self.read(t.data_init, "DATA").await?;
        self.finish_data(data, &end.accepted, message, results)
            .await?;
        Ok(end)
    }

    /// After the DATA reply: send the message (or just the dot when nobody was accepted but the
    /// server said 354 anyway) and decide the accepted recipients.
    async fn finish_data(
        &mut self,
        data: Reply,
        accepted: &[usize],
        message: &[u8],
        results: &mut [Option<RcptResult>],
    ) -> Result<(), Lost> {
        let t = self.cfg.timeouts;
        if data.code != 354 {
            if data.is_transient() || data.is_permanent() {
                for &i in accepted {
                    results[i] = Some(if data.is_transient() {
                        RcptResult::Deferred(data.clone())
                    } else {
                        RcptResult::Failed(data.clone())
                    });
                }
                return Ok(());
            }
            return Err(Lost::Protocol(format!("unexpected DATA reply: {data}")));
        }
        let interrupted = if accepted.is_empty() {
            // Nothing to deliver: end the data at once (RFC 2920 §3.1 says the server should
            // have refused DATA; recipients keep their RCPT outcomes).
            self.wbuf.clear();
            self.wbuf.extend_from_slice(b".\r\n");
            self.send(t.data_block, "DATA").await?;
            false
        } else {
            self.send_message(message).await?
        };
        let fin = self.read(t.data_term, "end of data").await?;
        if interrupted {
            // The server spoke before our final dot: it and we no longer agree on the state.
            self.usable = false;
            if fin.is_positive() {
                return Err(Lost::Protocol(format!(
                    "reply before the end of the message: {fin}"
                )));
            }
            self.lost
                .get_or_insert_with(|| Reply::connection_lost_because("reply before end of data"));
        }
        let outcome = |r: &Reply| {
            if r.is_positive() {
                Some(RcptResult::Delivered(r.clone()))
            } else if r.is_transient() {
                Some(RcptResult::Deferred(r.clone()))
            } else if r.is_permanent() {
                Some(RcptResult::Failed(r.clone()))
            } else {
                None
            }
        };
        if outcome(&fin).is_none() {
            return Err(Lost::Protocol(format!(
                "unexpected end-of-data reply: {fin}"
            )));
        }
        if fin.code == 552
            && self.messages > 0
            && !accepted.is_empty()
            && self
                .caps
                .size
                .is_none_or(|l| l == 0 || message.len() as u64 <= l)
        {
            // A 552 after the dot for a message within the advertised size, on a connection that
            // already carried messages: the relay's allowance per session is used up (IIS's
            // session size, which it answers with 552 and a close), not a verdict on this
            // message. Deferred, and the connection is not used again.
            // The 552 is kept in the text of a transient reply (deferred replies are 4yz).
            tracing::debug!(reply = %fin, messages = self.messages, "session allowance used up");
            let r = Reply::new(
                451,
                Some((4, 3, 0)),
                format!("Session allowance used up; try a new connection ({fin})"),
            );
            for &i in accepted {
                results[i] = Some(RcptResult::Deferred(r.clone()));
            }
            self.lost.get_or_insert(r);
            self.usable = false;
            return Ok(());
        }
        if fin.is_positive() && !accepted.is_empty() {
            self.messages = self.messages.saturating_add(1);
        }
        for &i in accepted {
            results[i] = outcome(&fin);
        }
        if !accepted.is_empty() {
            tracing::trace!(rcpts = accepted.len(), reply = %fin, "message sent");
        }
        Ok(())
    }

    /// Write the dot-stuffed message in large chunks, each under the data-block time-out. Returns
    /// true when the server replied before the end (the reply is then in the buffer).
    async fn send_message(&mut self, message: &[u8]) -> Result<bool, Lost> {
        let t = self.cfg.timeouts;
        let mut stuffer = DotStuffer::new(message);
        loop {
            self.wbuf.clear();
            if !stuffer.fill(&mut self.wbuf, DATA_CHUNK) {
                return Ok(false);
            }
            if self.write_error.is_some() {
                return Ok(false);
            }
            if self
                .write_reading(t.data_block, "message data", true)
                .await?
                == Written::Interrupted
            {
                return Ok(true);
            }
        }
    }

    /// Write `wbuf` under `timeout`, reading meanwhile. A write error is remembered (the session
    /// goes on reading what the server still says, then ends).
    async fn send(&mut self, timeout: Duration, what: &'static str) -> Result<(), Lost> {
        if self.write_error.is_some() {
            return Ok(());
        }
        self.write_reading(timeout, what, false).await.map(|_| ())
    }

    /// When a wait of `timeout` starting now must end: at its own time-out, or at the
    /// transaction's deadline when that comes first (then also the deadline's length, to report).
    fn wait_until(&self, timeout: Duration) -> (Instant, Option<Duration>) {
        let own = Instant::now().checked_add(timeout);
        match (own, self.txn_deadline) {
            (Some(own), Some((txn, limit))) if txn < own => (txn, Some(limit)),
            (None, Some((txn, limit))) => (txn, Some(limit)),
            (Some(own), _) => (own, None),
            // A time-out too large to represent: in effect none.
            (None, None) => (far_future(), None),
        }
    }

    async fn write_reading(
        &mut self,
        timeout: Duration,
        what: &'static str,
        stop_on_reply: bool,
    ) -> Result<Written, Lost> {
        let (deadline, txn) = self.wait_until(timeout);
        let data = std::mem::take(&mut self.wbuf);
        let stream = &mut self.stream;
        let rbuf = &mut self.rbuf;
        let mut off = 0usize;
        let mut read_open = true;
        let fut = poll_fn(|cx| -> Poll<Result<Written, Lost>> {
            while read_open {
                if rbuf.len() > MAX_BUFFERED {
                    return Poll::Ready(Err(Lost::Protocol("server output overflow".into())));
                }
                rbuf.reserve(4096);
                match tokio_util::io::poll_read_buf(Pin::new(&mut *stream), cx, &mut *rbuf) {
                    Poll::Ready(Ok(0)) => read_open = false,
                    Poll::Ready(Ok(_)) => {
                        if stop_on_reply && matches!(parse_reply(rbuf), Ok(Some(_)) | Err(_)) {
                            return Poll::Ready(Ok(Written::Interrupted));
                        }
                    }
                    // Errors on the read side show up again on the next read.
                    Poll::Ready(Err(_)) => read_open = false,
                    Poll::Pending => break,
                }
            }
            while off < data.len() {
                match Pin::new(&mut *stream).poll_write(cx, &data[off..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(Lost::Io(io::ErrorKind::WriteZero.into())))
                    }
                    Poll::Ready(Ok(n)) => off += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Lost::Io(e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            Pin::new(&mut *stream)
                .poll_flush(cx)
                .map(|r| r.map(|()| Written::All).map_err(Lost::Io))
        });
        let res = tokio::time::timeout_at(deadline, fut).await;
        self.wbuf = data;
        self.wbuf.clear();
        match res {
            Err(_) => Err(txn.map_or(Lost::Timeout(what), Lost::Deadline)),
            Ok(Err(Lost::Io(e))) => {
                // Keep reading: the server may have said why (e.g. 552 then close).
                tracing::debug!(error = %e, what, "write failed");
                self.write_error = Some(e);
                Ok(Written::All)
            }
            Ok(other) => other,
        }
    }

    /// Next reply; a 421 ends the session.
    async fn read(&mut self, timeout: Duration, what: &'static str) -> Result<Reply, Lost> {
        let r = self.read_raw(timeout, what).await?;
        if r.is_closing() {
            return Err(Lost::Closing(r));
        }
        Ok(r)
    }

    /// Next reply from the buffer, reading more under the time-out as needed (cancel-safe).
    async fn read_raw(&mut self, timeout: Duration, what: &'static str) -> Result<Reply, Lost> {
        let (deadline, txn) = self.wait_until(timeout);
        loop {
            match parse_reply(&self.rbuf) {
                Ok(Some((reply, used))) => {
                    self.rbuf.advance(used);
                    tracing::trace!(what, %reply, "reply");
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => return Err(Lost::Protocol(e.to_string())),
            }
            self.rbuf.reserve(4096);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf)).await {
                Err(_) => return Err(txn.map_or(Lost::Timeout(what), Lost::Deadline)),
                Ok(Ok(0)) => return Err(Lost::Eof(what)),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(Lost::Io(e)),
            }
        }
    }
}

/// An instant no wait reaches (about 30 years ahead).
fn far_future() -> Instant {
    let now = Instant::now();
    now.checked_add(Duration::from_secs(86400 * 365 * 30))
        .unwrap_or(now)
}
