//! The driver: moves bytes between a sans-I/O [`Machine`] and a stream, with deadlines.
//!
//! One [`Client`] owns one connection: the stream, its read buffer and a [`Session`]. It runs a
//! machine step by step: it waits for the rate gate and arms the transaction's deadline
//! ([`Step::Begin`]), writes what the machine formatted ([`Step::Write`]), reads the next reply
//! ([`Step::Read`]), and reports each result back. It decides nothing about SMTP.
//!
//! - Replies are read from the client's own buffer (never `read_line` under a time-out), so every
//!   time-out is cancel-safe.
//! - While a command group or a block of message data is written, whatever the server sends is
//!   read into that buffer too, so a server that answers while it reads can never dead-lock
//!   against a long pipelined group; a write that must stop at a reply (the message data) stops
//!   as soon as a complete reply is in.
//! - Every wait ends at its own time-out or at the transaction's deadline
//!   ([`TxnDeadline`](super::TxnDeadline)), whichever comes first.
//! - The server may not buffer more than [`MAX_BUFFERED`] bytes of unread output.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::auth::Credentials;
use super::reply::{parse_reply, Capabilities, Reply};
use super::session::{Lost, Machine, Session, SessionSecurity, Step, Written};
use super::txn::{Deliver, Delivery, Msg};
use super::{ClientConfig, ConnectError, DataGate, NoGate};
use crate::net::BoxStream;
use crate::settings::TlsMode;
use crate::tls::TlsTarget;

/// How a connection is protected and authenticated (TXN-11, TXN-12): the relay's TLS mode, what
/// a TLS handshake needs (absent: TLS is not possible, so `opportunistic` means plaintext and
/// `required`/`implicit` fail), and the AUTH credentials.
#[derive(Debug, Clone)]
pub struct Security {
    /// The relay's TLS mode.
    pub mode: TlsMode,
    /// What a handshake needs; `None`: TLS is not possible.
    pub tls: Option<TlsTarget>,
    /// Who to log in as, if anyone.
    pub auth: Option<Credentials>,
    /// Whether AUTH may be sent without TLS (the settings say so explicitly).
    pub allow_plaintext_auth: bool,
}

impl Security {
    /// Plaintext, no AUTH (what [`Client::handshake`] does).
    pub fn plaintext() -> Self {
        Self {
            mode: TlsMode::None,
            tls: None,
            auth: None,
            allow_plaintext_auth: false,
        }
    }
}

/// Bytes of unread server output we are willing to hold (a pipelined group of a few thousand
/// RCPTs has replies of a few hundred KiB at most).
const MAX_BUFFERED: usize = 16 * 1024 * 1024;

/// One SMTP connection, after the greeting and EHLO.
pub struct Client {
    io: Io,
    session: Session,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("caps", self.session.capabilities())
            .field("learned_limit", &self.session.learned_rcpt_limit())
            .field("usable", &self.session.is_usable())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Read the greeting (220 required), then EHLO; HELO when EHLO gets a 5yz. Plaintext, no
    /// AUTH.
    pub async fn handshake(stream: BoxStream, cfg: &ClientConfig) -> Result<Client, ConnectError> {
        Self::connect(stream, cfg, &Security::plaintext()).await
    }

    /// The handshake with TLS and AUTH as `security` says: TLS first (implicit), the greeting,
    /// EHLO, STARTTLS and EHLO again (opportunistic, required), AUTH.
    pub async fn connect(
        stream: BoxStream,
        cfg: &ClientConfig,
        security: &Security,
    ) -> Result<Client, ConnectError> {
        let mode = match (security.mode, &security.tls) {
            (TlsMode::Required | TlsMode::Implicit, None) => {
                return Err(ConnectError::TlsRequired(
                    "no TLS client is set up for this relay".into(),
                ))
            }
            (TlsMode::Opportunistic, None) => TlsMode::None,
            (m, _) => m,
        };
        let mut io = Io::new(stream, security.tls.clone());
        let mut tls = None;
        if mode == TlsMode::Implicit {
            match io.upgrade(cfg.timeouts.greeting).await {
                Ok(v) => tls = Some(v),
                Err(why) => {
                    return Err(ConnectError::TlsRequired(format!(
                        "TLS handshake failed: {why}"
                    )))
                }
            }
        }
        let sec = SessionSecurity {
            mode,
            tls,
            auth: security.auth.clone(),
            allow_plaintext_auth: security.allow_plaintext_auth,
        };
        let mut c = Client {
            io,
            session: Session::with_security(cfg, sec),
        };
        c.io.drive(&mut c.session, &[&NoGate]).await;
        c.session.handshake_result()?;
        tracing::debug!(caps = ?c.session.capabilities(), tls = ?c.session.tls_version(), "SMTP session ready");
        Ok(c)
    }

    /// The TLS version the session runs under (`TLSv1.3`), `None` in plaintext.
    pub fn tls_version(&self) -> Option<&'static str> {
        self.session.tls_version()
    }

    /// The user AUTH logged in as, if any.
    pub fn authenticated(&self) -> Option<&str> {
        self.session.authenticated()
    }

    /// What the relay advertised in its EHLO reply.
    pub fn capabilities(&self) -> &Capabilities {
        self.session.capabilities()
    }

    /// The server's 220 greeting.
    pub fn greeting(&self) -> &Reply {
        self.session.greeting()
    }

    /// The recipients-per-transaction limit learned from a too-many-recipients reply.
    pub fn learned_rcpt_limit(&self) -> Option<usize> {
        self.session.learned_rcpt_limit()
    }

    /// Seed the limit (e.g. learned for this relay on an earlier connection). Only lowers it.
    pub fn set_learned_rcpt_limit(&mut self, limit: usize) {
        self.session.set_learned_rcpt_limit(limit);
    }

    /// False after a 421, an I/O error, EOF, a time-out or a protocol desync.
    pub fn is_usable(&self) -> bool {
        self.session.is_usable()
    }

    /// Whether an idle connection is still there, without waiting: false when the server has
    /// closed it or sent something unasked (typically a 421 on its idle time-out). Call before
    /// reusing a connection that sat idle, to reconnect instead of deferring recipients (WRK-7).
    pub async fn check_alive(&mut self) -> bool {
        if !self.is_usable() {
            return false;
        }
        let lost = if self.io.rbuf.is_empty() {
            match self.io.poll_idle().await {
                Idle::Quiet => return true,
                Idle::Eof => Lost::Eof("next command"),
                Idle::Error(e) => Lost::Io(e),
                Idle::Unsolicited => match parse_reply(&self.io.rbuf) {
                    Ok(Some((r, _))) if r.is_closing() => Lost::Closing(r),
                    _ => Lost::Protocol("unsolicited data from the server".into()),
                },
            }
        } else {
            // Left over from an earlier exchange.
            Lost::Protocol("unsolicited data from the server".into())
        };
        self.session.mark_lost(&lost);
        false
    }

    /// Send QUIT and wait for its reply within the QUIT time-out; errors ignored.
    pub async fn quit(mut self) {
        let t = self.session.timeouts().quit;
        if self.session.start_quit() {
            self.io.drive(&mut self.session, &[&NoGate]).await;
        }
        let _ = tokio::time::timeout(t, self.io.stream.shutdown()).await;
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
        let mut job = Deliver::new(&mut self.session, mail_from, rcpts, message, max_rcpts);
        self.io.drive(&mut job, &[gate]).await;
        job.finish()
    }

    /// How many messages this connection keeps under way at once (TXN-13, TXN-14): the
    /// configured window when the relay offers PIPELINING (with BDAT that many transactions in
    /// flight; with DATA the next message's commands follow the previous one's final dot), and
    /// one without. A caller with several messages for this connection passes up to this many
    /// to [`Client::deliver_many`].
    pub fn window(&self) -> usize {
        self.session.window()
    }

    /// Deliver several messages on this connection, as [`Client::deliver`] does each, with up
    /// to [`Client::window`] transactions in flight (TXN-13). The returned [`Batch`] hands out
    /// each message's [`Delivery`] as soon as its transactions are over.
    pub fn deliver_many<'c, 'm>(
        &'c mut self,
        msgs: &[Message<'m>],
        max_rcpts: usize,
    ) -> Batch<'c, 'm> {
        let msgs: Vec<Msg<'m>> = msgs
            .iter()
            .map(|m| Msg {
                from: m.mail_from,
                rcpts: m.rcpts,
                message: m.message,
            })
            .collect();
        Batch {
            io: &mut self.io,
            job: Deliver::new_many(&mut self.session, &msgs, max_rcpts),
        }
    }
}

/// Messages under way on one connection ([`Client::deliver_many`]).
pub struct Batch<'c, 'm> {
    io: &'c mut Io,
    job: Deliver<'c, 'm>,
}

impl std::fmt::Debug for Batch<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").finish_non_exhaustive()
    }
}

impl Batch<'_, '_> {
    /// Run the transactions until some messages are over; their index and [`Delivery`] (a
    /// message whose transactions never started when the connection was lost has
    /// `transactions == 0` and every recipient deferred). `gates[i]` is awaited before each
    /// transaction of message `i` (the last gate for any message beyond). Empty once every
    /// message was handed out.
    ///
    /// Once `shutdown` is cancelled no other transaction begins: the messages none of whose
    /// transactions began come back as `None`, for the caller to give back untouched. When
    /// `cutoff` is cancelled, the exchange stops where it is and the connection is not used
    /// again: every message not handed out yet comes back as `None`.
    pub async fn next_over(
        &mut self,
        gates: &[&dyn DataGate],
        shutdown: &CancellationToken,
        cutoff: &CancellationToken,
    ) -> Vec<(usize, Option<Delivery>)> {
        loop {
            if shutdown.is_cancelled() {
                self.job.stop_beginning();
            }
            if self.job.any_over() || self.job.is_done() {
                break;
            }
            // Between steps only (a write is not cancel-safe): a stop lets the transactions in
            // flight finish and begins no other.
            let stop =
                |m: &Deliver<'_, '_>| m.any_over() || (shutdown.is_cancelled() && !m.is_stopping());
            let cut = tokio::select! {
                biased;
                () = cutoff.cancelled() => true,
                () = self.io.drive_until(&mut self.job, gates, stop) => false,
            };
            if cut {
                self.io.deadline = None;
                let out = self.job.take_over(true);
                self.job
                    .on_lost(Lost::Protocol("cut off at the drain deadline".into()));
                return out;
            }
        }
        self.job.take_over(false)
    }

    /// The recipients-per-transaction limit the relay taught this connection.
    pub fn learned_rcpt_limit(&self) -> Option<usize> {
        self.job.session().learned_rcpt_limit()
    }
}

/// One message for [`Client::deliver_many`].
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The envelope sender.
    pub mail_from: &'a str,
    /// The envelope recipients.
    pub rcpts: &'a [String],
    /// The unstuffed message: headers and body with CRLF line ends.
    pub message: &'a [u8],
}

impl Client {}

/// What an idle connection had to say.
#[derive(Debug)]
enum Idle {
    /// Nothing.
    Quiet,
    Eof,
    Error(std::io::Error),
    /// Bytes nobody asked for (now in the read buffer).
    Unsolicited,
}

/// The byte-moving half of a client: a stream, its read buffer and the running deadline.
struct Io {
    stream: BoxStream,
    rbuf: BytesMut,
    /// The transaction under way must be over by then (the deadline's length, to report).
    deadline: Option<(Instant, Duration)>,
    /// What a [`Step::Upgrade`] needs.
    tls: Option<TlsTarget>,
}

impl Io {
    /// Put the stream under TLS within `timeout`; the negotiated version, or why not.
    async fn upgrade(&mut self, timeout: Duration) -> Result<&'static str, String> {
        let Some(t) = self.tls.clone() else {
            return Err("no TLS client is set up for this relay".into());
        };
        if !self.rbuf.is_empty() {
            // Bytes the server sent after its 220 would be taken as said under TLS.
            return Err("the relay sent data after its STARTTLS reply".into());
        }
        let placeholder: BoxStream =
            Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink()));
        let plain = std::mem::replace(&mut self.stream, placeholder);
        match tokio::time::timeout(timeout, t.connector.connect(t.name.clone(), plain)).await {
            Err(_) => Err(format!("no TLS handshake within {timeout:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(tls)) => {
                let version = crate::tls::version_name(tls.get_ref().1.protocol_version());
                self.stream = Box::new(tls);
                Ok(version)
            }
        }
    }

    fn new(stream: BoxStream, tls: Option<TlsTarget>) -> Self {
        Self {
            stream,
            rbuf: BytesMut::with_capacity(4096),
            deadline: None,
            tls,
        }
    }

    /// Run `m` until it is done.
    async fn drive<M: Machine>(&mut self, m: &mut M, gates: &[&dyn DataGate]) {
        self.drive_until(m, gates, |_| false).await;
    }

    /// Run `m` until it is done, or until `stop` says so after a step (then the deadline runs
    /// on, and a later call goes on where this one stopped).
    async fn drive_until<M: Machine>(
        &mut self,
        m: &mut M,
        gates: &[&dyn DataGate],
        stop: impl Fn(&M) -> bool,
    ) {
        loop {
            if stop(m) {
                return;
            }
            match m.next() {
                Step::Begin { bytes, deadline } => {
                    let gate = gates.get(m.begun()).or(gates.last());
                    if let Some(gate) = gate {
                        gate.acquire(bytes).await;
                    }
                    // The deadline runs from the first command of the transaction (after the
                    // rate gate).
                    self.deadline = Instant::now()
                        .checked_add(deadline)
                        .map(|at| (at, deadline));
                }
                Step::Write {
                    timeout,
                    what,
                    interrupt_before,
                } => match self
                    .write_reading(m.output(), timeout, what, interrupt_before)
                    .await
                {
                    Ok(w) => m.on_written(w),
                    Err(lost) => m.on_lost(lost),
                },
                Step::Read { timeout, what } => match self.read_reply(timeout, what).await {
                    Ok(r) => m.on_reply(r),
                    Err(lost) => m.on_lost(lost),
                },
                Step::Upgrade { timeout } => {
                    let r = self.upgrade(timeout).await;
                    m.on_upgraded(r);
                }
                Step::Done => break,
            }
        }
        self.deadline = None;
    }

    /// When a wait of `timeout` starting now must end: at its own time-out, or at the
    /// transaction's deadline when that comes first (then also the deadline's length, to report).
    fn wait_until(&self, timeout: Duration) -> (Instant, Option<Duration>) {
        let own = Instant::now().checked_add(timeout);
        match (own, self.deadline) {
            (Some(own), Some((txn, limit))) if txn < own => (txn, Some(limit)),
            (None, Some((txn, limit))) => (txn, Some(limit)),
            (Some(own), _) => (own, None),
            // A time-out too large to represent: in effect none.
            (None, None) => (far_future(), None),
        }
    }

    /// Write `data` under `timeout`, reading meanwhile. Stop once a complete reply (or bytes that
    /// cannot be one) came in while fewer than `interrupt_before` bytes were written; a reply
    /// that comes later answers what was written (the final dot, and the next transaction's
    /// commands after it).
    async fn write_reading(
        &mut self,
        data: &[u8],
        timeout: Duration,
        what: &'static str,
        interrupt_before: usize,
    ) -> Result<Written, Lost> {
        let (deadline, txn) = self.wait_until(timeout);
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
                        // Once the interruptible bytes are out (the rest and the flush may still
                        // be under way), a reply answers what was written, not an interruption.
                        if off < interrupt_before
                            && matches!(parse_reply(rbuf), Ok(Some(_)) | Err(_))
                        {
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
                        return Poll::Ready(Ok(Written::Failed(
                            std::io::ErrorKind::WriteZero.into(),
                        )))
                    }
                    Poll::Ready(Ok(n)) => off += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Ok(Written::Failed(e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            Pin::new(&mut *stream).poll_flush(cx).map(|r| match r {
                Ok(()) => Ok(Written::All),
                Err(e) => Ok(Written::Failed(e)),
            })
        });
        match tokio::time::timeout_at(deadline, fut).await {
            Err(_) => Err(txn.map_or(Lost::Timeout(what), Lost::Deadline)),
            Ok(res) => res,
        }
    }

    /// Next reply from the buffer, reading more under the time-out as needed (cancel-safe).
    async fn read_reply(&mut self, timeout: Duration, what: &'static str) -> Result<Reply, Lost> {
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

    /// Look at an idle connection without waiting.
    async fn poll_idle(&mut self) -> Idle {
        self.rbuf.reserve(512);
        let stream = &mut self.stream;
        let rbuf = &mut self.rbuf;
        poll_fn(|cx| {
            Poll::Ready(
                match tokio_util::io::poll_read_buf(Pin::new(&mut *stream), cx, &mut *rbuf) {
                    Poll::Pending => Idle::Quiet,
                    Poll::Ready(Ok(0)) => Idle::Eof,
                    Poll::Ready(Ok(_)) => Idle::Unsolicited,
                    Poll::Ready(Err(e)) => Idle::Error(e),
                },
            )
        })
        .await
    }
}

/// An instant no wait reaches (about 30 years ahead).
fn far_future() -> Instant {
    let now = Instant::now();
    now.checked_add(Duration::from_secs(86400 * 365 * 30))
        .unwrap_or(now)
}
