//! The connection half of the sans-I/O client core: what one SMTP session knows and owes.
//!
//! A [`Session`] holds what outlives a transaction (the greeting, the relay's capabilities, the
//! recipient limit learned from it, the messages it accepted, whether the next transaction needs
//! RSET, why the connection is gone) and the two things every exchange goes through: the output
//! buffer the next command group is formatted into, and the queue of replies the server owes,
//! oldest first, each tagged with the transaction and the command it answers ([`Owed`]). The
//! server answers in order (RFC 2920 §3.1), so each reply is matched with the head of the queue.
//!
//! No I/O and no clock here. A [`Machine`] (the session itself for the greeting, EHLO/HELO and
//! QUIT; a [`Deliver`](super::txn::Deliver) for a message's transactions) says what to do next as
//! a [`Step`]; the driver does it and reports back what happened: a reply, a write that completed,
//! was cut short by a reply, or failed, or a lost connection ([`Lost`]: an I/O error, the end of
//! the stream, a time-out, the transaction deadline, bytes that are no reply).
//!
//! The handshake is a chain of phases: `Greeting`, `Ehlo`, `Helo` when EHLO is refused, `Ready`.
//! STARTTLS fits as two more (`StartTls`: the command sent, its 220 awaited; `Upgrade`: a new
//! `Step` asks the driver to wrap the stream in TLS, with nothing left in its read buffer, then
//! `Ehlo` again with the capabilities forgotten), and AUTH as one more (`Auth`: each 334 challenge
//! answered by a continuation line; 235 leads to `Ready`, 535/534/454 to a connect error of its
//! own).

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use super::auth::{self, Auth, AuthNext, Credentials};
use super::command::{Command, MailParams, Verb};
use super::reply::{Capabilities, Reply};
use super::{ClientConfig, ConnectError, Timeouts};
use crate::settings::TlsMode;

/// What the driver does next for a [`Machine`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// A transaction starts: wait for the rate gate with `bytes` of message, then start the
    /// transaction's overall deadline of length `deadline`.
    Begin { bytes: u64, deadline: Duration },
    /// Write [`Machine::output`] within `timeout` (`what` names it in messages), reading what the
    /// server says meanwhile; stop as soon as a complete reply has arrived while fewer than
    /// `interrupt_before` bytes are out (0: never). The message data is interruptible up to its
    /// end; the next transaction's commands that follow it in the same write (TXN-14) are not.
    Write {
        timeout: Duration,
        what: &'static str,
        interrupt_before: usize,
    },
    /// Read the next reply within `timeout`.
    Read {
        timeout: Duration,
        what: &'static str,
    },
    /// Put the stream under TLS within `timeout` (after STARTTLS's 220), then report with
    /// [`Machine::on_upgraded`]. Bytes already read past the 220 are an attack (RFC 3207 §6):
    /// the driver reports them as lost instead.
    Upgrade { timeout: Duration },
    /// Nothing more to do.
    Done,
}

/// How a [`Step::Write`] went.
#[derive(Debug)]
pub(crate) enum Written {
    /// Everything was written.
    All,
    /// A complete reply arrived before the first `interrupt_before` bytes were written.
    Interrupted,
    /// The write failed; what the server said before is still in the read buffer.
    Failed(io::Error),
}

/// Why a session cannot go on.
#[derive(Debug)]
pub(crate) enum Lost {
    /// 421: the server closes the connection.
    Closing(Reply),
    Io(io::Error),
    /// The stream ended while this reply was awaited.
    Eof(&'static str),
    /// No reply (or no progress writing) within the step's time-out.
    Timeout(&'static str),
    /// The transaction reached its overall deadline (of this length).
    Deadline(Duration),
    /// Something that is not the reply the session is waiting for.
    Protocol(String),
}

impl Lost {
    /// The reply every undecided recipient gets: the 421 itself, else a `451 4.4.2 Connection
    /// lost (why)`.
    pub(crate) fn reply(&self) -> Reply {
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

    pub(crate) fn into_connect_error(self) -> ConnectError {
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

/// A sans-I/O exchange: it says what to do next and takes what happened.
pub(crate) trait Machine {
    /// The next thing to do. Called again after each report.
    fn next(&mut self) -> Step;
    /// The bytes a [`Step::Write`] writes.
    fn output(&self) -> &[u8];
    /// Which message the transaction of the last [`Step::Begin`] carries (its rate gate).
    fn begun(&self) -> usize {
        0
    }
    /// The write of [`Machine::output`] is over.
    fn on_written(&mut self, written: Written);
    /// The reply a [`Step::Read`] waited for.
    fn on_reply(&mut self, reply: Reply);
    /// The connection is gone (or useless).
    fn on_lost(&mut self, lost: Lost);
    /// A [`Step::Upgrade`] is over: the TLS version now in force, or why the handshake failed.
    fn on_upgraded(&mut self, result: Result<&'static str, String>) {
        if let Err(why) = result {
            self.on_lost(Lost::Protocol(format!("TLS handshake failed: {why}")));
        }
    }
}

/// How a session protects itself and authenticates (TXN-11, TXN-12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionSecurity {
    pub(crate) mode: TlsMode,
    /// The stream is already encrypted (implicit TLS) with this version.
    pub(crate) tls: Option<&'static str>,
    pub(crate) auth: Option<Credentials>,
    pub(crate) allow_plaintext_auth: bool,
}

impl Default for SessionSecurity {
    fn default() -> Self {
        Self {
            mode: TlsMode::None,
            tls: None,
            auth: None,
            allow_plaintext_auth: false,
        }
    }
}

/// A reply the server owes: what it answers, in which transaction, and (for RCPT) the place of
/// the recipient in that transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owed {
    pub(crate) verb: Verb,
    /// 0 outside transactions.
    pub(crate) txn: u32,
    pub(crate) pos: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the 220.
    Greeting,
    Ehlo,
    /// EHLO got a 5yz: HELO sent.
    Helo,
    /// STARTTLS sent, its 220 awaited.
    StartTls,
    /// STARTTLS got its 220: the driver puts the stream under TLS, then EHLO again.
    Upgrade,
    /// AUTH under way.
    Auth,
    /// The greeting was not 220: QUIT is written (best effort) and the handshake fails.
    Refused,
    /// Between transactions (or in them: a [`Deliver`](super::txn::Deliver) drives those).
    Ready,
    /// QUIT sent.
    Quit,
    /// The handshake failed, or QUIT is over.
    Closed,
}

/// How the output buffer is to be written.
#[derive(Debug, Clone, Copy)]
struct WriteSpec {
    timeout: Duration,
    what: &'static str,
    /// A reply before this many bytes are out cuts the write short (0: none does).
    interrupt_before: usize,
}

/// One SMTP session's state (see the module documentation). Its `Debug` leaves out the output
/// buffer, which may hold an AUTH line (a password in base64).
pub(crate) struct Session {
    cfg: ClientConfig,
    phase: Phase,
    caps: Capabilities,
    greeting: Reply,
    learned_limit: Option<usize>,
    /// Messages the relay accepted on this connection.
    pub(super) messages: u32,
    /// A MAIL has been sent on this connection: the next transaction starts with RSET.
    pub(super) need_rset: bool,
    /// Replies the server owes, oldest first.
    owed: VecDeque<Owed>,
    /// The next write: a command group or a block of message data.
    out: Vec<u8>,
    spec: WriteSpec,
    /// False once the session must not be used again (lost, or the relay's allowance is used up).
    pub(super) usable: bool,
    /// A write failed: nothing more is written; the replies owed are still read.
    pub(super) write_error: Option<io::Error>,
    /// Why the connection is gone (what later deliveries report).
    pub(super) lost: Option<Reply>,
    /// Why the handshake failed.
    failure: Option<ConnectError>,
    /// Transactions started (their tags in [`Owed`]).
    txns: u32,
    security: SessionSecurity,
    /// The TLS version in force, once encrypted.
    tls: Option<&'static str>,
    auth: Option<Auth>,
    /// The user the relay accepted with AUTH.
    authenticated: Option<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("phase", &self.phase)
            .field("caps", &self.caps)
            .field("tls", &self.tls)
            .field("authenticated", &self.authenticated)
            .field("messages", &self.messages)
            .field("owed", &self.owed)
            .field("usable", &self.usable)
            .field("lost", &self.lost)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session that waits for the server's greeting.
    #[cfg(test)]
    pub(crate) fn new(cfg: &ClientConfig) -> Self {
        Self::with_security(cfg, SessionSecurity::default())
    }

    /// A session that waits for the server's greeting, with TLS and AUTH as `security` says.
    pub(crate) fn with_security(cfg: &ClientConfig, security: SessionSecurity) -> Self {
        let mut s = Self {
            cfg: cfg.clone(),
            phase: Phase::Greeting,
            caps: Capabilities::default(),
            greeting: Reply::new(220, None, ""),
            learned_limit: None,
            messages: 0,
            need_rset: false,
            owed: VecDeque::new(),
            out: Vec::with_capacity(4096),
            spec: WriteSpec {
                timeout: Duration::ZERO,
                what: "",
                interrupt_before: 0,
            },
            usable: true,
            write_error: None,
            lost: None,
            failure: None,
            txns: 0,
            tls: security.tls,
            security,
            auth: None,
            authenticated: None,
        };
        s.expect(Verb::Greeting, 0, 0);
        s
    }

    /// The TLS version in force (`None`: plaintext).
    pub(crate) fn tls_version(&self) -> Option<&'static str> {
        self.tls
    }

    /// The user AUTH logged in as.
    pub(crate) fn authenticated(&self) -> Option<&str> {
        self.authenticated.as_deref()
    }

    pub(crate) fn timeouts(&self) -> &Timeouts {
        &self.cfg.timeouts
    }

    pub(crate) fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    pub(crate) fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    pub(crate) fn greeting(&self) -> &Reply {
        &self.greeting
    }

    /// The recipients-per-transaction limit learned from a too-many-recipients reply.
    pub(crate) fn learned_rcpt_limit(&self) -> Option<usize> {
        self.learned_limit
    }

    /// Seed or learn the limit. Only lowers it; at least 1.
    pub(crate) fn set_learned_rcpt_limit(&mut self, limit: usize) {
        let limit = limit.max(1);
        self.learned_limit = Some(self.learned_limit.map_or(limit, |l| l.min(limit)));
    }

    /// Recipients the next transaction may carry: `max_rcpts`, or the learned limit when lower.
    pub(super) fn rcpt_limit(&self, max_rcpts: usize) -> usize {
        let max = max_rcpts.max(1);
        self.learned_limit.map_or(max, |l| l.min(max)).max(1)
    }

    /// False after a 421, an I/O error, the end of the stream, a time-out, a desync, or the
    /// relay's allowance for this connection used up.
    pub(crate) fn is_usable(&self) -> bool {
        self.usable && self.write_error.is_none()
    }

    /// The session cannot go on; the first reason is the one kept.
    pub(crate) fn mark_lost(&mut self, lost: &Lost) {
        self.usable = false;
        if self.lost.is_none() {
            self.lost = Some(lost.reply());
        }
        self.owed.clear();
        self.out.clear();
    }

    /// Pipelining is used when wanted and offered (TXN-1): then a command group runs until a
    /// command that must end one; without it every command is a group of its own.
    pub(super) fn ends_group(&self, verb: Verb) -> bool {
        !self.pipelines() || verb.ends_group()
    }

    /// MAIL's parameters for a message of `bytes` (TXN-8: SIZE when the relay advertises it).
    pub(super) fn mail_params(&self, bytes: usize) -> MailParams {
        MailParams {
            size: (self.cfg.use_size && self.caps.size.is_some()).then_some(bytes as u64),
            ..MailParams::default()
        }
    }

    /// A new transaction's tag.
    pub(super) fn next_txn_id(&mut self) -> u32 {
        self.txns = self.txns.wrapping_add(1).max(1);
        self.txns
    }

    /// Add `cmd` to the group being written, and owe its reply.
    pub(super) fn send(&mut self, cmd: Command<'_>, txn: u32, pos: usize) {
        let verb = cmd.verb();
        self.queue(cmd);
        self.expect(verb, txn, pos);
    }

    /// Add `cmd` to the group being written without waiting for its reply. Writing a group is
    /// bounded by the longest time-out of its commands and named after its first.
    fn queue(&mut self, cmd: Command<'_>) {
        let verb = cmd.verb();
        let timeout = verb.timeout(&self.cfg.timeouts);
        if self.out.is_empty() {
            self.spec = WriteSpec {
                timeout,
                what: verb.name(),
                interrupt_before: 0,
            };
        } else {
            self.spec.timeout = self.spec.timeout.max(timeout);
        }
        cmd.write_to(&mut self.out);
    }

    /// A reply is owed for something written outside [`Session::send`] (the message data).
    pub(super) fn expect(&mut self, verb: Verb, txn: u32, pos: usize) {
        self.owed.push_back(Owed { verb, txn, pos });
    }

    pub(super) fn nothing_owed(&self) -> bool {
        self.owed.is_empty()
    }

    /// The transaction the next reply belongs to (`None`: nothing owed).
    pub(super) fn owed_head_txn(&self) -> Option<u32> {
        self.owed.front().map(|o| o.txn)
    }

    /// Transactions go out whole with `BDAT n LAST` (TXN-13): wanted and offered, with
    /// PIPELINING too (a lock-step BDAT saves nothing over DATA).
    pub(crate) fn uses_bdat(&self) -> bool {
        self.cfg.chunking && self.caps.chunking && self.pipelines()
    }

    /// PIPELINING is wanted and offered (TXN-1).
    pub(crate) fn pipelines(&self) -> bool {
        self.cfg.pipelining && self.caps.pipelining
    }

    /// How many transactions may be in flight at once (TXN-13, TXN-14): the configured window
    /// when the session pipelines, else 1. With BDAT each transaction is whole in the bytes
    /// written; with DATA the next transaction's commands follow the previous message's final
    /// dot, so at most two are in flight (the next one's message waits for its 354).
    pub(crate) fn window(&self) -> usize {
        if self.pipelines() {
            self.cfg.window.max(1)
        } else {
            1
        }
    }

    /// Append raw bytes (a BDAT chunk) to the group being written.
    pub(super) fn push_raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// The reply at hand answers the head of the queue.
    pub(super) fn pop_owed(&mut self) -> Option<Owed> {
        self.owed.pop_front()
    }

    /// Put raw message bytes to write: `fill` appends them to the (empty) output buffer and says
    /// whether it did. With `until_reply`, a reply arriving before these bytes are all out cuts
    /// the write short (commands queued after them in the same write do not count).
    pub(super) fn put_data(
        &mut self,
        what: &'static str,
        until_reply: bool,
        fill: impl FnOnce(&mut Vec<u8>) -> bool,
    ) -> bool {
        debug_assert!(self.out.is_empty());
        let filled = fill(&mut self.out) && !self.out.is_empty();
        self.spec = WriteSpec {
            timeout: self.cfg.timeouts.data_block,
            what,
            interrupt_before: if until_reply { self.out.len() } else { 0 },
        };
        filled
    }

    /// The write step for whatever is in the output buffer.
    pub(super) fn pending_write(&self) -> Option<Step> {
        (!self.out.is_empty()).then_some(Step::Write {
            timeout: self.spec.timeout,
            what: self.spec.what,
            interrupt_before: self.spec.interrupt_before,
        })
    }

    /// The read step for the reply at the head of the queue.
    pub(super) fn pending_read(&self) -> Option<Step> {
        self.owed.front().map(|o| Step::Read {
            timeout: o.verb.timeout(&self.cfg.timeouts),
            what: o.verb.name(),
        })
    }

    pub(super) fn output_buf(&self) -> &[u8] {
        &self.out
    }

    pub(super) fn clear_output(&mut self) {
        self.out.clear();
    }

    /// QUIT, when the session is still usable; false when there is nothing to say.
    pub(crate) fn start_quit(&mut self) -> bool {
        if !self.is_usable() || self.phase != Phase::Ready {
            return false;
        }
        self.send(Command::Quit, 0, 0);
        self.phase = Phase::Quit;
        true
    }

    /// After the handshake has run: the session is ready, or why not.
    pub(crate) fn handshake_result(&mut self) -> Result<(), ConnectError> {
        if let Some(e) = self.failure.take() {
            return Err(e);
        }
        if self.phase == Phase::Ready {
            return Ok(());
        }
        Err(ConnectError::Protocol(format!(
            "the handshake ended in phase {:?}",
            self.phase
        )))
    }

    fn fail(&mut self, e: ConnectError) {
        self.failure.get_or_insert(e);
        self.owed.clear();
        self.phase = Phase::Closed;
    }

    fn on_greeting(&mut self, greeting: Reply) {
        if greeting.code != 220 {
            // 554 (and 421) greetings accept only QUIT (RFC 5321 §3.1): say it, do not wait.
            tracing::debug!(%greeting, "greeting refused");
            self.queue(Command::Quit);
            self.failure = Some(ConnectError::Greeting(greeting));
            self.phase = Phase::Refused;
            return;
        }
        self.greeting = greeting;
        let name = self.cfg.helo_name.clone();
        self.send(Command::Ehlo(&name), 0, 0);
        self.phase = Phase::Ehlo;
    }

    fn on_ehlo(&mut self, ehlo: Reply) {
        if ehlo.is_positive() {
            self.caps = Capabilities::from_ehlo(&ehlo);
            self.after_ehlo();
        } else if ehlo.is_permanent() {
            // WRK-8: HELO when EHLO is refused with 5yz.
            let name = self.cfg.helo_name.clone();
            self.send(Command::Helo(&name), 0, 0);
            self.phase = Phase::Helo;
        } else {
            self.fail(ConnectError::Helo(ehlo));
        }
    }

    fn on_helo(&mut self, helo: Reply) {
        if helo.is_positive() {
            self.caps = Capabilities::default();
            self.after_ehlo();
        } else {
            self.fail(ConnectError::Helo(helo));
        }
    }

    /// The relay's capabilities are known: STARTTLS first when the mode asks for it and the
    /// session is not encrypted yet (TXN-11), then AUTH when configured (TXN-12), then ready.
    fn after_ehlo(&mut self) {
        let mode = self.security.mode;
        if self.tls.is_none() && matches!(mode, TlsMode::Opportunistic | TlsMode::Required) {
            if self.caps.starttls {
                self.send(Command::StartTls, 0, 0);
                self.phase = Phase::StartTls;
                return;
            }
            if mode == TlsMode::Required {
                self.fail(ConnectError::TlsRequired(
                    "the relay does not offer STARTTLS".into(),
                ));
                return;
            }
        }
        self.start_auth();
    }

    fn start_auth(&mut self) {
        let Some(creds) = self.security.auth.clone() else {
            self.phase = Phase::Ready;
            return;
        };
        if self.tls.is_none() && !self.security.allow_plaintext_auth {
            // The credentials never cross the network in clear.
            self.fail(ConnectError::AuthNeedsTls {
                user: creds.username,
            });
            return;
        }
        match auth::choose(&creds, &self.caps.auth) {
            Ok(Some(mechanism)) => {
                let a = Auth::new(creds, mechanism);
                let line = a.first_line();
                self.queue_secret(&line, Verb::Auth);
                self.auth = Some(a);
                self.phase = Phase::Auth;
            }
            Ok(None) => {
                tracing::debug!(user = %creds.username, "the relay offers no AUTH: going on without");
                self.phase = Phase::Ready;
            }
            Err(why) => self.fail(ConnectError::AuthUnavailable {
                user: creds.username,
                why,
            }),
        }
    }

    fn on_starttls(&mut self, reply: Reply) {
        if reply.code == 220 {
            self.phase = Phase::Upgrade;
        } else if self.security.mode == TlsMode::Required {
            self.fail(ConnectError::TlsRequired(format!(
                "the relay refused STARTTLS: {reply}"
            )));
        } else {
            // Opportunistic: plaintext, as if STARTTLS had not been offered.
            tracing::info!(%reply, "the relay refused STARTTLS; going on in plaintext");
            self.caps.starttls = false;
            self.start_auth();
        }
    }

    fn on_auth(&mut self, reply: Reply) {
        let Some(a) = self.auth.as_mut() else {
            self.fail(ConnectError::Protocol(format!(
                "an AUTH reply without AUTH: {reply}"
            )));
            return;
        };
        match a.on_reply(&reply) {
            AuthNext::Send(line) => self.queue_secret(&line, Verb::Auth),
            AuthNext::Done => {
                self.authenticated = Some(a.username().to_owned());
                self.auth = None;
                self.phase = Phase::Ready;
            }
            AuthNext::Refused(reply) => {
                let (user, mechanism) = (a.username().to_owned(), a.mechanism());
                self.auth = None;
                self.fail(ConnectError::AuthRefused {
                    user,
                    mechanism: mechanism.as_str(),
                    reply,
                });
            }
        }
    }

    /// Queue a line that carries a secret (never logged) and owe its reply.
    fn queue_secret(&mut self, line: &[u8], verb: Verb) {
        debug_assert!(self.out.is_empty());
        self.spec = WriteSpec {
            timeout: verb.timeout(&self.cfg.timeouts),
            what: verb.name(),
            interrupt_before: 0,
        };
        self.out.extend_from_slice(line);
        self.expect(verb, 0, 0);
    }
}

/// The session's own exchanges: the handshake (greeting, EHLO, HELO) and QUIT.
impl Machine for Session {
    fn next(&mut self) -> Step {
        if let Some(w) = self.pending_write() {
            return w;
        }
        match self.phase {
            Phase::Greeting
            | Phase::Ehlo
            | Phase::Helo
            | Phase::StartTls
            | Phase::Auth
            | Phase::Quit => self.pending_read().unwrap_or(Step::Done),
            Phase::Upgrade => Step::Upgrade {
                timeout: self.cfg.timeouts.ehlo,
            },
            Phase::Refused | Phase::Ready | Phase::Closed => Step::Done,
        }
    }

    fn output(&self) -> &[u8] {
        &self.out
    }

    fn on_written(&mut self, written: Written) {
        self.out.clear();
        let Written::Failed(e) = written else {
            return;
        };
        match self.phase {
            // QUIT after a refusing greeting is a courtesy.
            Phase::Refused => {}
            // QUIT did not go out: no reply to wait for.
            Phase::Quit => {
                self.owed.clear();
                self.phase = Phase::Closed;
            }
            _ => {
                // Keep reading: the server may still answer. The session is not usable after.
                tracing::debug!(error = %e, "write failed");
                self.write_error = Some(e);
            }
        }
    }

    fn on_reply(&mut self, reply: Reply) {
        let Some(owed) = self.owed.pop_front() else {
            return;
        };
        match (self.phase, owed.verb) {
            (Phase::Greeting, Verb::Greeting) => self.on_greeting(reply),
            (Phase::Ehlo, Verb::Ehlo) => self.on_ehlo(reply),
            (Phase::Helo, Verb::Helo) => self.on_helo(reply),
            (Phase::StartTls, Verb::StartTls) => self.on_starttls(reply),
            (Phase::Auth, Verb::Auth) => self.on_auth(reply),
            (Phase::Quit, Verb::Quit) => self.phase = Phase::Closed,
            (phase, verb) => self.fail(ConnectError::Protocol(format!(
                "a {} reply in phase {phase:?}: {reply}",
                verb.name()
            ))),
        }
    }

    fn on_upgraded(&mut self, result: Result<&'static str, String>) {
        match result {
            Ok(version) => {
                // RFC 3207 §4.2: forget what the relay said in clear; EHLO again.
                self.tls = Some(version);
                self.caps = Capabilities::default();
                let name = self.cfg.helo_name.clone();
                self.send(Command::Ehlo(&name), 0, 0);
                self.phase = Phase::Ehlo;
            }
            Err(why) => {
                self.usable = false;
                self.fail(ConnectError::TlsRequired(format!(
                    "TLS handshake failed: {why}"
                )));
            }
        }
    }

    fn on_lost(&mut self, lost: Lost) {
        self.out.clear();
        self.owed.clear();
        match self.phase {
            Phase::Refused => {}
            Phase::Quit | Phase::Closed => self.phase = Phase::Closed,
            _ => {
                self.mark_lost(&lost);
                self.fail(lost.into_connect_error());
            }
        }
    }
}

#[cfg(test)]
mod tests;
