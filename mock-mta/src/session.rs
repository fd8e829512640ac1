//! One SMTP session over any `AsyncRead + AsyncWrite`, PIPELINING-safe: input is read into the
//! session's own buffer, every complete command in it is answered in order, and the replies of a
//! read go out in one write (at once, or after `reply_latency_ms` on a delay line that does not
//! stop the session reading). DATA is unstuffed as it streams; a message is
//! never held whole (unless the mock was asked to keep bodies).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use jiff::Timestamp;
use sha2::{Digest, Sha256};
use smtp_proto::{Error as ParseError, Request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::faults::{default_rcpt_text, Active, Faults, SplitMix64};
use crate::journal::{RcptRecord, SessionRecord, TransactionRecord};
use crate::profile::{OverCap, OversizeData};
use crate::w3c::W3cRecord;
use crate::Shared;

/// Longest command line accepted, in bytes without its CRLF (RFC 5321 asks for 512; IIS takes
/// more). A longer line gets one [`REPLY_TOO_LONG`] and is discarded whole, up to its LF, however
/// it arrives: nothing of it runs as a command.
const MAX_LINE: usize = 4096;

const REPLY_TOO_LONG: &str = "500 5.5.2 Line too long";

/// The reply at the connection cap, to a 421 greeting fault, and on shutdown.
pub const REPLY_421: &str = "421 4.3.2 Service not available, closing transmission channel";

/// Streaming dot-unstuffer: finds the `<CRLF>.<CRLF>` end of data and removes the leading dot
/// of stuffed lines. A bare LF also ends a line (lenient, as most servers are).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Unstuffer {
    state: UState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum UState {
    /// At the start of a line.
    #[default]
    Start,
    /// Saw `.` at the start of a line.
    Dot,
    /// Saw `.\r` at the start of a line.
    DotCr,
    /// Inside a line.
    Mid,
}

impl Unstuffer {
    /// A fresh unstuffer (at the start of the first line).
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed input; message bytes go to `out` (in order, possibly in several pieces). Returns how
    /// many input bytes were used and whether the end of data was seen (then the bytes after it
    /// were not used).
    pub fn feed(&mut self, input: &[u8], out: &mut impl FnMut(&[u8])) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                UState::Start => {
                    if input[i] == b'.' {
                        self.state = UState::Dot;
                        i += 1;
                    } else {
                        self.state = UState::Mid;
                    }
                }
                UState::Dot => match input[i] {
                    b'\r' => {
                        self.state = UState::DotCr;
                        i += 1;
                    }
                    b'\n' => {
                        self.state = UState::Start;
                        return (i + 1, true);
                    }
                    _ => self.state = UState::Mid,
                },
                UState::DotCr => {
                    if input[i] == b'\n' {
                        self.state = UState::Start;
                        return (i + 1, true);
                    }
                    out(b"\r");
                    self.state = UState::Mid;
                }
                UState::Mid => match memchr::memchr(b'\n', &input[i..]) {
                    Some(j) => {
                        out(&input[i..=i + j]);
                        i += j + 1;
                        self.state = UState::Start;
                    }
                    None => {
                        out(&input[i..]);
                        i = input.len();
                    }
                },
            }
        }
        (i, false)
    }
}

/// Dot-stuff a message for DATA and append the terminator (a helper for tests and clients).
/// A message that does not end in CRLF gets one.
pub fn dot_stuff(msg: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(msg.len() + 8);
    let mut start = true;
    for &b in msg {
        if start && b == b'.' {
            v.push(b'.');
        }
        v.push(b);
        start = b == b'\n';
    }
    if !msg.is_empty() && !msg.ends_with(b"\r\n") {
        v.extend_from_slice(b"\r\n");
    }
    v.extend_from_slice(b".\r\n");
    v
}

#[derive(Debug)]
struct Body {
    bytes: u64,
    max: Option<u64>,
    oversize: bool,
    hasher: Sha256,
    keep: Option<Vec<u8>>,
}

impl Body {
    fn new(max: Option<u64>, keep: bool) -> Self {
        Self {
            bytes: 0,
            max,
            oversize: false,
            hasher: Sha256::new(),
            keep: keep.then(Vec::new),
        }
    }
    fn push(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        self.hasher.update(chunk);
        if self.max.is_some_and(|m| self.bytes > m) {
            self.oversize = true;
            self.keep = None;
        }
        if let Some(k) = self.keep.as_mut() {
            k.extend_from_slice(chunk);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(H[usize::from(b >> 4)] as char);
        s.push(H[usize::from(b & 15)] as char);
    }
    s
}

#[derive(Debug)]
struct Txn {
    rec: TransactionRecord,
    accepted: u32,
    data_mono: Option<tokio::time::Instant>,
}

#[derive(Debug)]
enum Mode {
    Command,
    Data(Unstuffer),
    Bdat {
        remaining: u64,
        last: bool,
        reject: Option<(u16, String)>,
    },
}

enum Flow {
    Continue,
    Close(&'static str),
}

struct Session {
    shared: Arc<Shared>,
    faults: Arc<Faults>,
    active: Active,
    id: u64,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    helo: Option<String>,
    only_quit: bool,
    txn: Option<Txn>,
    body: Option<Body>,
    mode: Mode,
    messages: u32,
    dots: u32,
    rcpts: u32,
    session_bytes: u64,
    out: Vec<u8>,
    last_code: u16,
    transactions: usize,
    rng: Option<SplitMix64>,
    relay_ok: bool,
    /// Inside a command line already answered as too long: drop input up to its LF.
    discarding: bool,
    /// The negotiated TLS version once the session is encrypted.
    tls: Option<String>,
    /// STARTTLS was accepted: the stream is to be wrapped in TLS before anything else is read.
    upgrade: bool,
    /// The user authenticated with AUTH.
    user: Option<String>,
    /// An AUTH exchange waits for the client's next line.
    auth_wait: Option<AuthWait>,
}

/// The step of an AUTH exchange the next line answers.
#[derive(Debug)]
enum AuthWait {
    /// `334` after `AUTH PLAIN` without an initial response.
    Plain,
    /// `334 VXNlcm5hbWU6` ("Username:").
    LoginUser,
    /// `334 UGFzc3dvcmQ6` ("Password:") for this user.
    LoginPass(String),
}

/// Run one session to its end.
pub(crate) async fn run<S>(
    shared: Arc<Shared>,
    mut stream: S,
    peer: SocketAddr,
    local: Option<SocketAddr>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let faults = shared.faults();
    let active = faults.active(shared.clock.local_time());
    if active.down {
        shared.stats.refused.fetch_add(1, ORD);
        return;
    }
    let id = shared.next_session.fetch_add(1, ORD) + 1;
    let rec = SessionRecord {
        id,
        peer,
        ehlo: None,
        started_at: shared.clock.now(),
        ended_at: None,
        end_reason: None,
        transactions: Vec::new(),
    };
    let Some(_guard) = shared.admit() else {
        shared.stats.over_cap.fetch_add(1, ORD);
        shared.journal.session_start(&rec);
        if shared.config.profile.over_cap == OverCap::Reply421 {
            let _ = stream
                .write_all(format!("{REPLY_421}\r\n").as_bytes())
                .await;
        }
        let _ = stream.shutdown().await;
        shared
            .journal
            .session_end(id, peer, None, shared.clock.now(), "over-cap", 0);
        shared.notify.notify_waiters();
        return;
    };
    shared.stats.sessions.fetch_add(1, ORD);
    shared.journal.session_start(&rec);
    let rng = faults
        .random
        .as_ref()
        .map(|r| SplitMix64::new(r.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    let relay_ok = shared.relay.iter().any(|n| n.contains(peer.ip()));
    let mut s = Session {
        shared: shared.clone(),
        faults,
        active,
        id,
        peer,
        local,
        helo: None,
        only_quit: false,
        txn: None,
        body: None,
        mode: Mode::Command,
        messages: 0,
        dots: 0,
        rcpts: 0,
        session_bytes: 0,
        out: Vec::with_capacity(1024),
        last_code: 0,
        transactions: 0,
        rng,
        relay_ok,
        discarding: false,
        tls: None,
        upgrade: false,
        user: None,
        auth_wait: None,
    };
    let reason = match shared.tls.as_ref() {
        Some(t) if shared.config.tls.implicit => match t.acceptor.accept(stream).await {
            Ok(mut tls) => {
                s.tls = Some(crate::tls::version_name(tls.get_ref().1.protocol_version()));
                let r = s.run(&mut tls, true).await;
                let _ = tls.shutdown().await;
                r
            }
            Err(_) => "tls-failed",
        },
        _ => {
            let r = s.run(&mut stream, true).await;
            if s.upgrade {
                s.upgrade = false;
                match shared.tls.as_ref() {
                    Some(t) => match t.acceptor.accept(stream).await {
                        Ok(mut tls) => {
                            s.tls =
                                Some(crate::tls::version_name(tls.get_ref().1.protocol_version()));
                            let r = s.run(&mut tls, false).await;
                            let _ = tls.shutdown().await;
                            r
                        }
                        Err(_) => "tls-failed",
                    },
                    None => r,
                }
            } else {
                let _ = stream.shutdown().await;
                r
            }
        }
    };
    s.end_txn();
    shared.journal.session_end(
        id,
        peer,
        s.helo.as_deref(),
        shared.clock.now(),
        reason,
        s.transactions,
    );
    shared.notify.notify_waiters();
}

const ORD: std::sync::atomic::Ordering = std::sync::atomic::Ordering::Relaxed;

/// Writes of replies queued on the delay line at most (one per read of pipelined commands), besides
/// the one its writer holds until it is due; past that the session stops reading until the oldest
/// has left.
pub const DELAY_LINE_WRITES: usize = 64;

/// Where a session's replies go.
enum Out<'a, W> {
    /// Written at once (no reply latency).
    Direct(&'a mut W),
    /// Onto the delay line: (when to leave, bytes).
    Delayed(mpsc::Sender<(Instant, Vec<u8>)>),
}

impl<W> Out<'_, W> {
    /// Resolves when the delay line's writer has stopped (never for [`Out::Direct`]).
    async fn closed(&self) {
        match self {
            Out::Direct(_) => std::future::pending().await,
            Out::Delayed(tx) => tx.closed().await,
        }
    }
}

async fn write_within<W: AsyncWrite + Unpin>(
    stream: &mut W,
    bytes: &[u8],
    idle: Duration,
) -> std::io::Result<()> {
    let write = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    tokio::time::timeout(idle, write)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// The delay line's writer: each queued write leaves at its time, in order; writes already due
/// when one leaves go with it. Ends when the line is closed and empty, or on a write error.
async fn delay_line<W: AsyncWrite + Unpin>(
    mut rx: mpsc::Receiver<(Instant, Vec<u8>)>,
    stream: &mut W,
    idle: Duration,
) {
    let mut next = rx.recv().await;
    while let Some((due, mut bytes)) = next.take() {
        tokio::time::sleep_until(due).await;
        let now = Instant::now();
        while let Ok((d, b)) = rx.try_recv() {
            if d <= now {
                bytes.extend_from_slice(&b);
            } else {
                next = Some((d, b));
                break;
            }
        }
        if write_within(stream, &bytes, idle).await.is_err() {
            return;
        }
        if next.is_none() {
            next = rx.recv().await;
        }
    }
}

impl Session {
    fn host(&self) -> &str {
        &self.shared.config.hostname
    }

    fn reply(&mut self, line: &str) -> u64 {
        self.last_code = line
            .get(..3)
            .and_then(|c| c.parse().ok())
            .unwrap_or(self.last_code);
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
        line.len() as u64 + 2
    }

    /// Hand the replies gathered so far to `out`: written at once, or (with a reply latency)
    /// queued on the delay line to leave `reply_latency_ms` from now.
    async fn flush<W: AsyncWrite + Unpin>(&mut self, out: &mut Out<'_, W>) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        match out {
            Out::Direct(stream) => {
                // A client that stops reading must not hold its slot for ever: writes share the
                // idle limit.
                let idle = Duration::from_secs(self.shared.config.profile.idle_timeout_secs);
                write_within(stream, &self.out, idle).await?;
                self.out.clear();
            }
            Out::Delayed(tx) => {
                let due = Instant::now() + Duration::from_millis(self.faults.reply_latency_ms);
                let bytes = std::mem::replace(&mut self.out, Vec::with_capacity(1024));
                // A full line (DELAY_LINE_WRITES in flight) waits here: the session stops reading,
                // as a sender does when the TCP window is full.
                tx.send((due, bytes))
                    .await
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
            }
        }
        Ok(())
    }

    fn greeting(&mut self) -> Flow {
        match self.active.greet_code {
            None => {
                let date = self
                    .shared
                    .clock
                    .now_zoned()
                    .strftime("%a, %d %b %Y %H:%M:%S %z")
                    .to_string();
                let line = format!(
                    "220 {} Microsoft ESMTP MAIL Service, Version: {} ready at  {date}",
                    self.host(),
                    self.shared.config.profile.version
                );
                self.reply(&line);
                Flow::Continue
            }
            Some(c) if (400..500).contains(&c) => {
                let line = if c == 421 {
                    REPLY_421.to_string()
                } else {
                    format!("{c} 4.3.2 Service not available, closing transmission channel")
                };
                self.reply(&line);
                Flow::Close("greet-421")
            }
            Some(c) => {
                let line = format!("{c} 5.3.2 {} Service unavailable", self.host());
                self.reply(&line);
                self.only_quit = true;
                Flow::Continue
            }
        }
    }

    /// Serve the session over `stream` (greeting first when `greet`) until it ends, or until
    /// STARTTLS is accepted (then [`Session::upgrade`] is set and the 220 has been written).
    ///
    /// With a reply latency (`reply_latency_ms > 0` when the session starts) the replies go
    /// through a delay line, as over a network a distance away: each write of replies leaves
    /// `reply_latency_ms` after it was produced while the session goes on reading and answering
    /// pipelined commands; order is kept, at most [`DELAY_LINE_WRITES`] writes wait on the line,
    /// and what was queued before a close (a drop, a 421, QUIT, STARTTLS's 220) still goes out,
    /// on time, before it.
    async fn run<S: AsyncRead + AsyncWrite + Unpin + Send>(
        &mut self,
        stream: &mut S,
        greet: bool,
    ) -> &'static str {
        let (mut rd, mut wr) = tokio::io::split(stream);
        if self.faults.reply_latency_ms == 0 {
            return self.serve(&mut rd, Out::Direct(&mut wr), greet).await;
        }
        let idle = Duration::from_secs(self.shared.config.profile.idle_timeout_secs);
        let (tx, rx) = mpsc::channel(DELAY_LINE_WRITES);
        // `serve` owns the sender: its end closes the line, and the writer ends once the line
        // is empty.
        let reader = self.serve(
            &mut rd,
            Out::<tokio::io::WriteHalf<&mut S>>::Delayed(tx),
            greet,
        );
        let (reason, _) = tokio::join!(reader, delay_line(rx, &mut wr, idle));
        reason
    }

    async fn serve<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut R,
        mut out: Out<'_, W>,
        greet: bool,
    ) -> &'static str {
        let mut shutdown = self.shared.shutdown.subscribe();
        if greet {
            if let Flow::Close(r) = self.greeting() {
                let _ = self.flush(&mut out).await;
                return r;
            }
        }
        let idle = Duration::from_secs(self.shared.config.profile.idle_timeout_secs);
        let mut buf = BytesMut::with_capacity(16 * 1024);
        loop {
            if let Some(reason) = self.process(&mut buf).await {
                let _ = self.flush(&mut out).await;
                return reason;
            }
            if self.flush(&mut out).await.is_err() {
                return "io-error";
            }
            if self.upgrade {
                // What the client sent after STARTTLS in clear is dropped (RFC 3207 §4.2).
                return "starttls";
            }
            if *shutdown.borrow() {
                self.reply(REPLY_421);
                let _ = self.flush(&mut out).await;
                return "shutdown";
            }
            buf.reserve(16 * 1024);
            tokio::select! {
                r = tokio::time::timeout(idle, stream.read_buf(&mut buf)) => match r {
                    Err(_) => return "idle-timeout",
                    Ok(Ok(0)) => return "client-closed",
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => return "io-error",
                },
                _ = shutdown.changed() => {}
                // The delay line's writer failed (the client stopped reading, or reset).
                _ = out.closed() => return "io-error",
            }
        }
    }

    /// Handle everything complete in `buf`. `Some(reason)` closes the session.
    async fn process(&mut self, buf: &mut BytesMut) -> Option<&'static str> {
        loop {
            match &mut self.mode {
                Mode::Command => {
                    if self.discarding {
                        // The rest of a line already answered as too long: up to its LF.
                        let Some(nl) = memchr::memchr(b'\n', buf) else {
                            buf.clear();
                            return None;
                        };
                        buf.advance(nl + 1);
                        self.discarding = false;
                        continue;
                    }
                    let Some(nl) = memchr::memchr(b'\n', buf) else {
                        // A trailing CR may be the start of the line's CRLF: not content.
                        if buf.len() - usize::from(buf.last() == Some(&b'\r')) > MAX_LINE {
                            buf.clear();
                            self.discarding = true;
                            self.reply(REPLY_TOO_LONG);
                        }
                        return None;
                    };
                    if nl - usize::from(nl > 0 && buf[nl - 1] == b'\r') > MAX_LINE {
                        buf.advance(nl + 1);
                        self.reply(REPLY_TOO_LONG);
                        continue;
                    }
                    let line = buf.split_to(nl + 1);
                    if let Flow::Close(r) = self.command(&line).await {
                        return Some(r);
                    }
                    if self.upgrade {
                        buf.clear();
                        return None;
                    }
                }
                Mode::Data(u) => {
                    if buf.is_empty() {
                        return None;
                    }
                    let Some(body) = self.body.as_mut() else {
                        self.mode = Mode::Command;
                        continue;
                    };
                    let (used, done) = u.feed(buf, &mut |c| body.push(c));
                    buf.advance(used);
                    let (bytes, oversize) = (body.bytes, body.oversize);
                    if let Some(r) = self.mid_data_checks(bytes, oversize) {
                        return Some(r);
                    }
                    if !done {
                        return None;
                    }
                    self.mode = Mode::Command;
                    if let Flow::Close(r) = self.end_of_data().await {
                        return Some(r);
                    }
                }
                Mode::Bdat {
                    remaining,
                    last: _,
                    reject,
                } => {
                    let take = (*remaining).min(buf.len() as u64) as usize;
                    let mut progress = None;
                    if let Some(body) = self.body.as_mut() {
                        if reject.is_none() {
                            body.push(&buf[..take]);
                            progress = Some((body.bytes, body.oversize));
                        }
                    }
                    buf.advance(take);
                    *remaining -= take as u64;
                    let left = *remaining;
                    // The message-data faults (a drop after N bytes, IIS closing mid-data on an
                    // oversize message) apply to BDAT chunks as they do to DATA.
                    if let Some((bytes, oversize)) = progress {
                        if let Some(r) = self.mid_data_checks(bytes, oversize) {
                            return Some(r);
                        }
                    }
                    let Mode::Bdat {
                        remaining: _,
                        last,
                        reject,
                    } = &mut self.mode
                    else {
                        continue;
                    };
                    if left > 0 {
                        return None;
                    }
                    let (last, reject) = (*last, reject.take());
                    self.mode = Mode::Command;
                    if let Some((code, line)) = reject {
                        self.reply(&line);
                        if let Some(t) = self.txn.as_mut() {
                            t.rec.data_code = Some(code);
                        }
                        continue;
                    }
                    if last {
                        if let Flow::Close(r) = self.end_of_data().await {
                            return Some(r);
                        }
                    } else {
                        let n = self.body.as_ref().map_or(0, |b| b.bytes);
                        self.reply(&format!("250 2.0.0 {n} bytes received"));
                    }
                }
            }
        }
    }

    fn mid_data_checks(&mut self, bytes: u64, oversize: bool) -> Option<&'static str> {
        if self
            .faults
            .drop_mid_data_after_bytes
            .is_some_and(|n| bytes >= n)
        {
            // The replies already given (to earlier commands of a pipelined group, earlier
            // BDAT transactions) go out before the drop, as a server that answered them would
            // have sent them; what is dropped is this message.
            return Some("fault-drop");
        }
        if oversize && self.shared.config.profile.oversize_data == OversizeData::CloseMidData {
            let line = "552 4.3.1 Message size exceeds fixed maximum message size";
            self.reply(line);
            if let Some(t) = self.txn.as_mut() {
                t.rec.data_reply = Some(line.into());
            }
            return Some("size-close");
        }
        None
    }

    fn w3c(&self, method: &str, query: &str, status: u16, sc: u64, cs: u64, since: Timestamp) {
        if let Some(log) = self.shared.w3c.as_ref() {
            let now = self.shared.clock.now();
            let ms = now.duration_since(since).as_millis().max(0) as i64;
            log.write(&W3cRecord {
                at: now,
                c_ip: self.peer.ip().to_string(),
                username: self.helo.as_deref(),
                computer: &self.shared.computer_name,
                s_ip: self.local.map(|l| l.ip()),
                s_port: self.local.map(|l| l.port()),
                method,
                query,
                status,
                sc_bytes: sc,
                cs_bytes: cs,
                time_taken_ms: ms,
            });
        }
    }

    /// End the open transaction (if any) and journal it.
    fn end_txn(&mut self) {
        if let Some(t) = self.txn.take() {
            let mut rec = t.rec;
            rec.ended_at = self.shared.clock.now();
            if let Some(b) = self.body.take() {
                rec.bytes = b.bytes;
                rec.sha256 = hex(&b.hasher.finalize());
                rec.body = b.keep.map(|k| String::from_utf8_lossy(&k).into_owned());
            }
            self.transactions += 1;
            self.shared.stats.transactions.fetch_add(1, ORD);
            if rec.accepted {
                self.shared.stats.messages.fetch_add(1, ORD);
                self.shared.stats.bytes.fetch_add(rec.bytes, ORD);
            }
            self.shared
                .journal
                .transaction(self.id, self.peer, self.helo.as_deref(), rec);
            self.shared.notify.notify_waiters();
        }
        self.body = None;
    }

    async fn command(&mut self, line: &[u8]) -> Flow {
        if let Some(wait) = self.auth_wait.take() {
            let text = String::from_utf8_lossy(line);
            self.auth_continue(wait, text.trim_end_matches(['\r', '\n']));
            return Flow::Continue;
        }
        let started = self.shared.clock.now();
        let parsed = Request::parse(&mut line.iter());
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\r', '\n']);
        let verb = match &parsed {
            Ok(r) => Cow::Borrowed(r.name()),
            Err(_) => Cow::Owned(
                text.split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_ascii_uppercase(),
            ),
        };
        // AUTH's arguments carry credentials: only the mechanism is logged.
        let query = if verb == "AUTH" {
            text.get(verb.len()..)
                .and_then(|q| q.split_whitespace().next())
                .unwrap_or("")
        } else {
            text.get(verb.len()..).unwrap_or("")
        };
        // Faults in force now (the schedule may have moved since the last command).
        self.faults = self.shared.faults();
        self.active = self.faults.active(self.shared.clock.local_time());
        let delay = self.faults.command_latency(&verb) + self.active.extra_latency_ms;
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let before = self.out.len();
        let flow = if self.only_quit {
            if matches!(parsed, Ok(Request::Quit)) {
                let l = format!(
                    "221 2.0.0 {} Service closing transmission channel",
                    self.host()
                );
                self.reply(&l);
                Flow::Close("quit")
            } else {
                self.reply("503 5.5.1 Bad sequence of commands");
                Flow::Continue
            }
        } else {
            match parsed {
                Ok(req) => self.request(req).await,
                Err(e) => {
                    let l = match e {
                        ParseError::UnknownCommand => "500 5.3.3 Unrecognized command",
                        ParseError::InvalidSenderAddress | ParseError::InvalidRecipientAddress => {
                            "501 5.5.4 Invalid Address"
                        }
                        _ => "501 5.5.4 Invalid arguments",
                    };
                    self.reply(l);
                    Flow::Continue
                }
            }
        };
        // DATA and BDAT are logged when their data ends.
        if !matches!(self.mode, Mode::Data(_) | Mode::Bdat { .. }) {
            let sc = (self.out.len() - before) as u64;
            let method = if verb.is_empty() { "-" } else { &verb };
            self.w3c(
                method,
                query,
                self.last_code,
                sc,
                line.len() as u64,
                started,
            );
        }
        flow
    }

    async fn request(&mut self, req: Request<Cow<'_, str>>) -> Flow {
        match req {
            Request::Ehlo { host } => {
                self.end_txn();
                self.set_helo(&host);
                let p = &self.shared.config.profile;
                let mut lines = vec![format!("250-{} Hello [{}]", self.host(), self.peer.ip())];
                for k in &p.ehlo_keywords {
                    if k.eq_ignore_ascii_case("SIZE") {
                        match p.max_message_bytes() {
                            Some(b) => lines.push(format!("250-SIZE {b}")),
                            None => lines.push("250-SIZE".into()),
                        }
                    } else {
                        lines.push(format!("250-{k}"));
                    }
                }
                if self.shared.tls.is_some()
                    && self.shared.config.tls.starttls
                    && self.tls.is_none()
                {
                    lines.push("250-STARTTLS".into());
                }
                if !self.shared.config.auth.users.is_empty() {
                    // IIS's two lines.
                    lines.push("250-AUTH=LOGIN".into());
                    lines.push("250-AUTH GSSAPI NTLM LOGIN PLAIN".into());
                }
                lines.push("250 OK".into());
                for l in lines {
                    self.reply(&l);
                }
                Flow::Continue
            }
            Request::Helo { host } | Request::Lhlo { host } => {
                self.end_txn();
                self.set_helo(&host);
                let l = format!("250 {} Hello [{}]", self.host(), self.peer.ip());
                self.reply(&l);
                Flow::Continue
            }
            Request::Mail { from } => self.mail(&from.address, from.size as u64, from.flags),
            Request::Rcpt { to } => self.rcpt(&to.address),
            Request::Data => {
                self.data();
                Flow::Continue
            }
            Request::Bdat {
                chunk_size,
                is_last,
            } => {
                self.bdat(chunk_size as u64, is_last);
                Flow::Continue
            }
            Request::Rset => {
                self.end_txn();
                self.reply("250 2.0.0 Resetting");
                Flow::Continue
            }
            Request::Noop { .. } => {
                self.reply("250 2.0.0 OK");
                Flow::Continue
            }
            Request::Quit => {
                self.end_txn();
                let l = format!(
                    "221 2.0.0 {} Service closing transmission channel",
                    self.host()
                );
                self.reply(&l);
                Flow::Close("quit")
            }
            Request::Vrfy { value } => {
                let l = format!("252 2.1.5 Cannot VRFY user, but will take message for <{value}>");
                self.reply(&l);
                Flow::Continue
            }
            Request::Help { .. } => {
                self.reply("214-This server supports the following commands:");
                self.reply(
                    "214 HELO EHLO STARTTLS RCPT DATA RSET MAIL QUIT HELP AUTH TURN ETRN BDAT VRFY",
                );
                Flow::Continue
            }
            Request::StartTls => {
                if self.shared.tls.is_some()
                    && self.shared.config.tls.starttls
                    && self.tls.is_none()
                {
                    self.end_txn();
                    self.reply("220 2.0.0 SMTP server ready");
                    // RFC 3207 §4.2: everything learned before is forgotten.
                    self.helo = None;
                    self.upgrade = true;
                } else if self.tls.is_some() {
                    self.reply("503 5.5.1 TLS already active");
                } else {
                    self.reply("454 4.7.0 TLS not available due to temporary reason");
                }
                Flow::Continue
            }
            Request::Auth {
                mechanism,
                initial_response,
            } => {
                self.auth(mechanism, &initial_response);
                Flow::Continue
            }
            _ => {
                self.reply("502 5.3.3 Command not implemented");
                Flow::Continue
            }
        }
    }

    /// AUTH (RFC 4954): LOGIN and PLAIN against the configured users.
    fn auth(&mut self, mechanism: u64, initial: &str) {
        if self.shared.config.auth.users.is_empty() {
            self.reply("504 5.7.4 Unrecognized authentication type");
            return;
        }
        if self.helo.is_none() {
            self.reply("503 5.5.2 Send hello first");
            return;
        }
        if self.shared.config.tls.require && self.tls.is_none() {
            self.reply("530 5.7.0 Must issue a STARTTLS command first");
            return;
        }
        if self.user.is_some() {
            self.reply("503 5.5.2 Already authenticated");
            return;
        }
        if mechanism == smtp_proto::AUTH_PLAIN {
            if initial.is_empty() {
                self.reply("334 ");
                self.auth_wait = Some(AuthWait::Plain);
            } else {
                self.auth_continue(AuthWait::Plain, initial);
            }
        } else if mechanism == smtp_proto::AUTH_LOGIN {
            if initial.is_empty() {
                self.reply("334 VXNlcm5hbWU6");
                self.auth_wait = Some(AuthWait::LoginUser);
            } else {
                self.auth_continue(AuthWait::LoginUser, initial);
            }
        } else {
            self.reply("504 5.7.4 Unrecognized authentication type");
        }
    }

    fn auth_continue(&mut self, wait: AuthWait, line: &str) {
        if line == "*" {
            self.reply("501 5.7.0 Authentication cancelled");
            return;
        }
        let Some(text) = crate::tls::b64_text(line) else {
            self.reply("501 5.5.2 Cannot decode response");
            return;
        };
        match wait {
            AuthWait::LoginUser => {
                self.reply("334 UGFzc3dvcmQ6");
                self.auth_wait = Some(AuthWait::LoginPass(text));
            }
            AuthWait::LoginPass(user) => self.auth_check(user, &text),
            AuthWait::Plain => {
                // authzid NUL authcid NUL passwd
                let mut parts = text.split('\0');
                let (_authz, user, pass) = (parts.next(), parts.next(), parts.next());
                match (user, pass) {
                    (Some(u), Some(p)) => self.auth_check(u.to_owned(), p),
                    _ => {
                        self.reply("501 5.5.2 Cannot decode response");
                    }
                }
            }
        }
    }

    fn auth_check(&mut self, user: String, pass: &str) {
        if self
            .shared
            .config
            .auth
            .users
            .get(&user)
            .is_some_and(|p| p == pass)
        {
            self.reply("235 2.7.0 Authentication successful");
            self.user = Some(user);
        } else {
            self.reply("535 5.7.3 Authentication unsuccessful");
        }
    }

    fn set_helo(&mut self, host: &str) {
        self.helo = Some(host.to_string());
        self.shared.journal.ehlo(self.id, host);
    }

    fn mail(&mut self, from: &str, size: u64, flags: u64) -> Flow {
        if self.helo.is_none() {
            self.reply("503 5.5.2 Send hello first");
            return Flow::Continue;
        }
        if self.txn.is_some() {
            self.reply("503 5.5.2 Sender already specified");
            return Flow::Continue;
        }
        if self.shared.config.tls.require && self.tls.is_none() {
            self.reply("530 5.7.0 Must issue a STARTTLS command first");
            return Flow::Continue;
        }
        if self.shared.config.auth.require && self.user.is_none() {
            self.reply("530 5.7.1 Client was not authenticated");
            return Flow::Continue;
        }
        let cap = [
            self.shared.config.profile.max_messages_per_connection,
            self.faults.close_after_messages,
        ]
        .into_iter()
        .flatten()
        .min();
        if cap.is_some_and(|n| self.messages >= n) {
            self.reply(REPLY_421);
            return Flow::Close("fault-421");
        }
        let params: Vec<String> = [
            (smtp_proto::MAIL_BODY_7BIT, "BODY=7BIT"),
            (smtp_proto::MAIL_BODY_8BITMIME, "BODY=8BITMIME"),
            (smtp_proto::MAIL_BODY_BINARYMIME, "BODY=BINARYMIME"),
            (smtp_proto::MAIL_SMTPUTF8, "SMTPUTF8"),
        ]
        .into_iter()
        .filter(|(f, _)| flags & f != 0)
        .map(|(_, p)| p.to_string())
        .collect();
        let offered = |k: &str| {
            self.shared
                .config
                .profile
                .ehlo_keywords
                .iter()
                .any(|e| e.eq_ignore_ascii_case(k))
        };
        if flags & smtp_proto::MAIL_SMTPUTF8 != 0 && !offered("SMTPUTF8") {
            // A parameter the server did not offer (IIS: any MAIL argument it does not know).
            self.reply("501 5.5.4 Invalid arguments");
            return Flow::Continue;
        }
        if size > 0
            && self
                .shared
                .config
                .profile
                .max_message_bytes()
                .is_some_and(|m| size > m)
        {
            self.reply("552 5.3.4 Message size exceeds fixed maximum message size");
            return Flow::Continue;
        }
        let now = self.shared.clock.now();
        self.txn = Some(Txn {
            rec: TransactionRecord {
                mail_from: from.to_string(),
                declared_size: (size > 0).then_some(size),
                mail_params: params,
                rcpts: Vec::new(),
                data_code: None,
                data_reply: None,
                accepted: false,
                queue_id: None,
                bytes: 0,
                sha256: String::new(),
                body: None,
                started_at: now,
                data_started_at: None,
                ended_at: now,
                tls: self.tls.clone(),
                user: self.user.clone(),
            },
            accepted: 0,
            data_mono: None,
        });
        let shown = if from.is_empty() { "<>" } else { from };
        self.reply(&format!("250 2.1.0 {shown}....Sender OK"));
        Flow::Continue
    }

    fn rcpt(&mut self, addr: &str) -> Flow {
        let Some(accepted) = self.txn.as_ref().map(|t| t.accepted) else {
            self.reply("503 5.5.2 Need mail command");
            return Flow::Continue;
        };
        if addr.is_empty() {
            self.reply("501 5.5.4 Invalid Address");
            return Flow::Continue;
        }
        if self
            .faults
            .close_after_recipients
            .is_some_and(|n| self.rcpts >= n)
        {
            self.reply(REPLY_421);
            return Flow::Close("fault-421");
        }
        let pm = self
            .faults
            .random
            .as_ref()
            .map_or(0, |r| r.rcpt_451_per_mille);
        let random_451 = self.rng.as_mut().is_some_and(|g| g.chance(pm));
        let p = &self.shared.config.profile;
        let max = self.active.max_recipients.or(p.max_recipients);
        let domain = addr.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        let local = p
            .local_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain));
        let (code, line) = if max.is_some_and(|m| accepted >= m) {
            if p.too_many_code == 452 {
                (452, "452 4.5.3 Too many recipients".to_string())
            } else {
                let c = p.too_many_code;
                (c, format!("{c} 5.5.3 Too many recipients"))
            }
        } else if !self.relay_ok && !local {
            (550, format!("550 5.7.1 Unable to relay for {addr}"))
        } else if let Some(rule) = self.faults.rcpt_rule(addr) {
            let text = rule
                .text
                .as_deref()
                .unwrap_or_else(|| default_rcpt_text(rule.code));
            (
                rule.code,
                format!("{} {}", rule.code, text.replace("{addr}", addr)),
            )
        } else if let Some(c) = self.active.rcpt_code {
            (
                c,
                format!("{c} {}", default_rcpt_text(c).replace("{addr}", addr)),
            )
        } else if random_451 {
            (451, format!("451 {}", default_rcpt_text(451)))
        } else {
            (250, format!("250 2.1.5 {addr}"))
        };
        let ok = (200..300).contains(&code);
        if ok {
            self.rcpts += 1;
            self.shared.stats.rcpt_accepted.fetch_add(1, ORD);
        } else {
            self.shared.stats.rcpt_rejected.fetch_add(1, ORD);
        }
        self.reply(&line);
        if let Some(t) = self.txn.as_mut() {
            if ok {
                t.accepted += 1;
            }
            t.rec.rcpts.push(RcptRecord {
                addr: addr.to_string(),
                code,
                reply: line,
            });
        }
        Flow::Continue
    }

    /// Why DATA/BDAT cannot start, if it cannot.
    fn data_refusal(&self) -> Option<(u16, &'static str)> {
        match self.txn.as_ref() {
            None => Some((503, "503 5.5.2 Need mail command")),
            Some(t) if t.rec.rcpts.is_empty() => Some((503, "503 5.5.2 Need rcpt command")),
            Some(t) if t.accepted == 0 => Some((554, "554 5.5.1 No valid recipients")),
            Some(_) => None,
        }
    }

    fn start_body(&mut self) {
        if self.body.is_none() {
            let max = self.shared.config.profile.max_message_bytes();
            self.body = Some(Body::new(max, self.shared.config.keep_bodies));
            let now = self.shared.clock.now();
            if let Some(t) = self.txn.as_mut() {
                t.rec.data_started_at = Some(now);
                t.data_mono = Some(tokio::time::Instant::now());
            }
        }
    }

    fn data(&mut self) {
        if let Some((code, line)) = self.data_refusal() {
            self.reply(line);
            if let Some(t) = self.txn.as_mut() {
                t.rec.data_code = Some(code);
            }
            return;
        }
        self.start_body();
        self.reply("354 Start mail input; end with <CRLF>.<CRLF>");
        if let Some(t) = self.txn.as_mut() {
            t.rec.data_code = Some(354);
        }
        self.mode = Mode::Data(Unstuffer::new());
    }

    fn bdat(&mut self, size: u64, last: bool) {
        let reject = self.data_refusal().map(|(c, l)| (c, l.to_string()));
        if reject.is_none() {
            self.start_body();
        }
        self.mode = Mode::Bdat {
            remaining: size,
            last,
            reject,
        };
    }

    async fn end_of_data(&mut self) -> Flow {
        self.dots += 1;
        let started = self
            .txn
            .as_ref()
            .and_then(|t| t.rec.data_started_at)
            .unwrap_or_else(|| self.shared.clock.now());
        let delay = self.faults.command_latency("DOT") + self.active.extra_latency_ms;
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let (bytes, oversize) = self
            .body
            .as_ref()
            .map_or((0, false), |b| (b.bytes, b.oversize));
        let random_drop = {
            let pm = self
                .faults
                .random
                .as_ref()
                .map_or(0, |r| r.drop_after_dot_per_mille);
            self.rng.as_mut().is_some_and(|g| g.chance(pm))
        };
        if random_drop || self.faults.drop_after_dot_of_message == Some(self.dots) {
            // Replies to earlier commands still go out (see the mid-data drop).
            return Flow::Close("fault-drop");
        }
        let p = &self.shared.config.profile;
        let mut flow = Flow::Continue;
        let mut accepted = false;
        let line = if oversize {
            "552 5.3.4 Message size exceeds fixed maximum message size".to_string()
        } else if p
            .max_session_bytes()
            .is_some_and(|m| self.session_bytes + bytes > m)
        {
            flow = Flow::Close("size-close");
            "552 5.3.4 Session size exceeds fixed maximum session size".to_string()
        } else if let Some(c) = self.active.data_code {
            let text = match c {
                451 => "4.3.0 Mail system temporarily unavailable, try again later",
                452 => "4.3.1 Insufficient system storage",
                c if (400..500).contains(&c) => "4.0.0 Temporary failure",
                _ => "5.6.0 Message rejected",
            };
            format!("{c} {text}")
        } else {
            accepted = true;
            self.messages += 1;
            self.session_bytes += bytes;
            let label = self
                .host()
                .split('.')
                .next()
                .unwrap_or("MOCK")
                .to_ascii_uppercase();
            let qid = format!(
                "<{label}{:08X}{:08X}@{}>",
                self.id,
                self.messages,
                self.host()
            );
            if let Some(t) = self.txn.as_mut() {
                t.rec.queue_id = Some(qid.clone());
            }
            format!("250 2.6.0 {qid} Queued mail for delivery")
        };
        let sc = self.reply(&line);
        let qid = self
            .txn
            .as_ref()
            .and_then(|t| t.rec.queue_id.clone())
            .unwrap_or_default();
        if let Some(t) = self.txn.as_mut() {
            t.rec.accepted = accepted;
            t.rec.data_reply = Some(line);
        }
        self.w3c("DATA", &qid, self.last_code, sc, bytes, started);
        self.end_txn();
        flow
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn unstuff_all(input: &[u8], splits: &[usize]) -> (Vec<u8>, Option<usize>) {
        let mut u = Unstuffer::new();
        let mut out = Vec::new();
        let mut pos = 0;
        let mut cuts: Vec<usize> = splits.iter().map(|s| s % (input.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.push(input.len());
        for c in cuts {
            while pos < c {
                let (used, done) = u.feed(&input[pos..c], &mut |b| out.extend_from_slice(b));
                pos += used;
                if done {
                    return (out, Some(pos));
                }
                if used == 0 {
                    break;
                }
            }
        }
        (out, None)
    }

    #[test]
    fn basic_unstuffing() {
        let (out, end) = unstuff_all(b"a\r\n..b\r\n.\r\nMAIL", &[]);
        assert_eq!(out, b"a\r\n.b\r\n");
        assert_eq!(end, Some(11));
        let (out, end) = unstuff_all(b".\r\n", &[]);
        assert!(out.is_empty());
        assert_eq!(end, Some(3));
        let (out, end) = unstuff_all(b"x\r\n.\r", &[]);
        assert_eq!(out, b"x\r\n");
        assert_eq!(end, None);
    }

    proptest! {
        #[test]
        fn stuff_then_unstuff_roundtrips(
            lines in proptest::collection::vec("[ -~]{0,20}", 0..20),
            splits in proptest::collection::vec(any::<usize>(), 0..6),
            trailer in "[A-Z]{0,10}",
        ) {
            let msg: Vec<u8> = lines.iter().flat_map(|l| format!("{l}\r\n").into_bytes()).collect();
            let mut wire = dot_stuff(&msg);
            let end = wire.len();
            wire.extend_from_slice(trailer.as_bytes());
            let (out, got_end) = unstuff_all(&wire, &splits);
            prop_assert_eq!(out, msg);
            prop_assert_eq!(got_end, Some(end));
        }
    }
}
