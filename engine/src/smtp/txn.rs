//! The transaction half of the sans-I/O client core: one message to a list of recipients, in as
//! many SMTP transactions as the relay needs, with exactly one outcome per recipient.
//!
//! [`Deliver`] is a [`Machine`]: it takes replies and events and says what to send next. Each
//! transaction is `[RSET] MAIL RCPT... DATA`, then the message, then the reply to the final dot:
//!
//! - **One path, two groupings.** The commands of a transaction come from one cursor (`Next`);
//!   the session decides where a command group ends. With PIPELINING the whole transaction is one
//!   group (TXN-1); without it every command is a group of its own. A command is put in a group
//!   only when everything before it is either in the same group or answered, so what lock-step
//!   learns from a reply before the next command (MAIL refused, too many recipients, nobody
//!   accepted) simply cuts the cursor short, and a pipelined transaction, which sent everything
//!   at once, reads and sorts the same replies in the same order.
//! - **Replies** (TXN-2, TXN-4): a 421 anywhere ends the session (TXN-6). MAIL 4yz/5yz decides
//!   every recipient still undecided once the transaction is over. Each RCPT reply is classified
//!   ([`classify_rcpt`]); too-many-recipients (TXN-3) ends the transaction's RCPTs: the ones not
//!   sent yet, and those refused so, go to the front of the next transaction on this connection,
//!   and the relay's limit is learned from the number of RCPTs before it (at the first RCPT it is
//!   a transient refusal of every recipient instead). A 4yz/5yz to DATA, or to the final dot,
//!   decides every accepted recipient; 2yz after the dot delivers them, except that a 552 for a
//!   message within the advertised SIZE on a connection that already carried messages means the
//!   relay's allowance per connection is used up (TXN-5).
//! - **Desync.** A reply before the message data was all written (the driver reports it), a reply
//!   of the wrong class for where the session is, or garbage, ends the session; so do the events
//!   the driver reports (lost connection, time-out, the transaction deadline). Every recipient not
//!   decided by then is deferred with the reason, never lost (TXN-6).
//!
//! Issue 12's additions are new states of this machine, not new paths. BDAT (RFC 3030) is another
//! body: `BDAT n LAST` and the raw message go in the same group as MAIL and the RCPTs, and the
//! BDAT reply takes the place of the reply to the final dot (same verdict code below).
//! Cross-message pipelining is more than one transaction in flight: every owed reply already
//! carries its transaction's tag, so the next transaction's group may be formed while replies are
//! still owed (a window, instead of "nothing owed"), each reply goes to the transaction it
//! answers, and a loss defers the undecided recipients of every transaction in flight.
//!
//! Without CHUNKING (TXN-14) the same window works over DATA: once a transaction's message is
//! in the output buffer up to its final dot, the next transaction's `RSET MAIL RCPT... DATA`
//! follow in the same write (RFC 2920 §3.1 lets the message content be the first "command" of
//! a group). Its message waits for its 354, so at most two transactions are in flight: one
//! waiting for the reply to its final dot, the next for the replies to its commands. A reply
//! that comes before the final dot is written still interrupts the data; one that comes while
//! the next commands are written does not (the write says where the data ends).
//!
//! TXN-15: `BODY=8BITMIME` and `SMTPUTF8` on MAIL as [`ext`] says; a recipient whose address
//! cannot be sent without SMTPUTF8 fails before any command, as a bad address does.

use std::collections::VecDeque;
use std::io;

use super::command::{path_ok, Command, MailParams, Verb};
use super::data::{DotStuffer, DATA_CHUNK};
use super::ext;
use super::reply::{classify_rcpt, Capabilities, RcptVerdict, Reply};
use super::session::{Lost, Machine, Session, Step, Written};
use crate::outcome::Outcome;

/// The outcome for one recipient, with the reply that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptResult {
    /// Delivered, failed or deferred.
    pub outcome: Outcome,
    /// Delivered: the 2yz after the final dot. Failed: the 5yz (to RCPT, MAIL, DATA or the final
    /// dot). Deferred: the 4yz, the 421, or a synthetic `451 4.4.2 Connection lost (...)` when the
    /// connection dropped or timed out before the recipient was decided.
    pub reply: Reply,
}

impl RcptResult {
    /// A result from its parts.
    pub fn new(outcome: Outcome, reply: Reply) -> Self {
        Self { outcome, reply }
    }
    /// Delivered, by `reply`.
    pub fn delivered(reply: Reply) -> Self {
        Self::new(Outcome::Delivered, reply)
    }
    /// Failed, by `reply`.
    pub fn failed(reply: Reply) -> Self {
        Self::new(Outcome::Failed, reply)
    }
    /// Deferred, by `reply`.
    pub fn deferred(reply: Reply) -> Self {
        Self::new(Outcome::Deferred, reply)
    }
    /// The reply that decided it.
    pub fn reply(&self) -> &Reply {
        &self.reply
    }
    /// Whether it was delivered.
    pub fn is_delivered(&self) -> bool {
        self.outcome == Outcome::Delivered
    }
    /// Whether it failed.
    pub fn is_failed(&self) -> bool {
        self.outcome == Outcome::Failed
    }
    /// Whether it was deferred.
    pub fn is_deferred(&self) -> bool {
        self.outcome == Outcome::Deferred
    }
}

/// What delivering one message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// One per recipient, same order as the recipients given, always.
    pub results: Vec<RcptResult>,
    /// MAIL commands sent.
    pub transactions: u32,
    /// Transactions that ended with recipients carried to the next one (452 / 552 5.5.3).
    pub too_many_recoveries: u32,
    /// Set when the connection was lost (421, I/O error, EOF, time-out, protocol error): the 421
    /// or the synthetic 451 every undecided recipient got. The session is then not usable.
    pub connection_lost: Option<Reply>,
}

impl Delivery {
    /// How many recipients were delivered.
    pub fn delivered(&self) -> usize {
        self.results.iter().filter(|r| r.is_delivered()).count()
    }
    /// How many recipients failed.
    pub fn failed(&self) -> usize {
        self.results.iter().filter(|r| r.is_failed()).count()
    }
    /// How many recipients were deferred.
    pub fn deferred(&self) -> usize {
        self.results.iter().filter(|r| r.is_deferred()).count()
    }
}

/// The outcome a reply gives by its class (TXN-2): 2yz delivered, 4yz deferred, 5yz failed.
fn outcome_of(r: &Reply) -> Option<Outcome> {
    match r.class() {
        2 => Some(Outcome::Delivered),
        4 => Some(Outcome::Deferred),
        5 => Some(Outcome::Failed),
        _ => None,
    }
}

/// TXN-5: a 552 after the final dot for a message within the advertised size, on a connection
/// that already carried messages, is the relay's allowance per connection used up (IIS's session
/// size, which it answers with 552 and a close), not a verdict on this message.
pub(crate) fn allowance_used_up(
    end_of_data: &Reply,
    messages_before: u32,
    size_limit: Option<u64>,
    message_bytes: usize,
) -> bool {
    end_of_data.code == 552
        && messages_before > 0
        && size_limit.is_none_or(|l| l == 0 || message_bytes as u64 <= l)
}

/// The next command of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Rset,
    Mail,
    /// The RCPT of the recipient at this place of the batch.
    Rcpt(usize),
    Data,
    /// Every command is out (or will not be sent).
    Nothing,
}

/// The message body of a transaction.
#[derive(Debug)]
enum Body<'m> {
    /// No 354 yet.
    Waiting,
    /// Being written, block by block.
    Streaming(DotStuffer<'m>),
    /// Written, cut short by a reply or a failed write, or never to be written.
    Over,
}

/// One SMTP transaction (MAIL to the reply to the final dot).
#[derive(Debug)]
struct Txn<'m> {
    id: u32,
    /// The message (index in [`Deliver`]'s jobs) it carries.
    job: usize,
    /// Indexes of the recipients it carries, in order.
    batch: Vec<usize>,
    next: Next,
    /// MAIL was refused: RCPT replies are read and ignored.
    mail_refused: bool,
    /// What every recipient still undecided gets when the transaction is over (MAIL refused, or
    /// too many recipients at the first RCPT).
    stop: Option<RcptResult>,
    /// Recipients accepted by RCPT, waiting for the end of data.
    accepted: Vec<usize>,
    /// Recipients for the next transaction (too many recipients).
    retry: Vec<usize>,
    /// Place of the first too-many-recipients reply.
    first_too_many: Option<usize>,
    body: Body<'m>,
    /// The server replied before the message data was all written.
    interrupted: bool,
    /// A reply to one of its commands has arrived.
    replied: bool,
}

impl Txn<'_> {
    /// Everything it sends is written or in the output buffer: its commands, and its message
    /// (BDAT, or DATA's up to the final dot). Only then may the next transaction's commands
    /// follow (RFC 2920 §3.1: the message content may be the first "command" of a group; a
    /// DATA awaiting its 354 ends one).
    fn on_the_wire(&self) -> bool {
        self.next == Next::Nothing && matches!(self.body, Body::Over)
    }

    fn new(id: u32, job: usize, batch: Vec<usize>, rset: bool) -> Self {
        Self {
            id,
            job,
            accepted: Vec::with_capacity(batch.len()),
            batch,
            next: if rset { Next::Rset } else { Next::Mail },
            mail_refused: false,
            stop: None,
            retry: Vec::new(),
            first_too_many: None,
            body: Body::Waiting,
            interrupted: false,
            replied: false,
        }
    }
}

/// One message of a [`Deliver`]: the envelope and the unstuffed message (headers and body with
/// CRLF line ends).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Msg<'m> {
    pub(crate) from: &'m str,
    pub(crate) rcpts: &'m [String],
    pub(crate) message: &'m [u8],
}

/// What a [`Deliver`] knows of one of its messages.
#[derive(Debug)]
struct Job<'m> {
    from: &'m str,
    rcpts: &'m [String],
    message: &'m [u8],
    results: Vec<Option<RcptResult>>,
    /// Recipients not yet in a transaction, in order.
    pending: VecDeque<usize>,
    transactions: u32,
    too_many_recoveries: u32,
    /// One of its transactions is in flight. A message has one at a time: what a transaction
    /// learns (too many recipients) decides what the next one carries.
    busy: bool,
    /// The connection was lost while the message was still under way.
    lost: bool,
    /// Its [`Delivery`] was handed out ([`Deliver::take_over`]).
    reported: bool,
    /// `BODY=8BITMIME` and `SMTPUTF8` on its MAIL commands (TXN-15).
    body_8bit: bool,
    smtputf8: bool,
}

impl<'m> Job<'m> {
    fn new(m: Msg<'m>, usable: bool, caps: &Capabilities) -> Self {
        let mut j = Self {
            from: m.from,
            rcpts: m.rcpts,
            message: m.message,
            results: vec![None; m.rcpts.len()],
            pending: VecDeque::new(),
            transactions: 0,
            too_many_recoveries: 0,
            busy: false,
            lost: !usable,
            reported: false,
            body_8bit: false,
            smtputf8: false,
        };
        if !usable {
            return j;
        }
        if !path_ok(m.from) {
            let r = Reply::new(501, Some((5, 1, 7)), "Bad sender address syntax (not sent)");
            j.results.fill(Some(RcptResult::failed(r)));
            return j;
        }
        let x = ext::extensions(caps, m.from, m.rcpts, m.message);
        if x.sender_unsendable {
            j.results
                .fill(Some(RcptResult::failed(ext::no_smtputf8_sender())));
            return j;
        }
        (j.body_8bit, j.smtputf8) = (x.body_8bit, x.smtputf8);
        for &i in &x.unsendable {
            j.results[i] = Some(RcptResult::failed(ext::no_smtputf8_rcpt()));
        }
        let bad = Reply::new(
            501,
            Some((5, 1, 3)),
            "Bad recipient address syntax (not sent)",
        );
        for (i, rcpt) in m.rcpts.iter().enumerate() {
            if j.results[i].is_some() {
                continue;
            }
            if path_ok(rcpt) {
                j.pending.push_back(i);
            } else {
                j.results[i] = Some(RcptResult::failed(bad.clone()));
            }
        }
        j
    }

    /// Every recipient still undecided gets `r`; none is left for another transaction.
    fn decide_rest(&mut self, r: &RcptResult) {
        for slot in self.results.iter_mut().filter(|s| s.is_none()) {
            *slot = Some(r.clone());
        }
        self.pending.clear();
    }

    fn finish(mut self, lost: Option<&Reply>) -> Delivery {
        self.delivery(lost)
    }

    /// Its transactions are all over: none in flight, no recipient waiting for one.
    fn over(&self) -> bool {
        !self.busy && self.pending.is_empty()
    }

    /// The outcomes so far (those undecided get the reason the connection was lost).
    fn delivery(&mut self, lost: Option<&Reply>) -> Delivery {
        let lost = lost.filter(|_| self.lost).cloned();
        let results = std::mem::take(&mut self.results)
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    RcptResult::deferred(lost.clone().unwrap_or_else(Reply::connection_lost))
                })
            })
            .collect();
        Delivery {
            results,
            transactions: self.transactions,
            too_many_recoveries: self.too_many_recoveries,
            connection_lost: lost,
        }
    }
}

/// Deliver messages to their recipients on one session: a [`Machine`] the driver runs, then
/// [`Deliver::finish`] (one message) or [`Deliver::take_over`] for the [`Delivery`] of each.
///
/// With BDAT (TXN-13) up to the configured window of transactions are in flight at once, each
/// complete in the bytes written (`[RSET] MAIL RCPT... BDAT n LAST` and the message); the
/// replies, in order, go to the oldest transaction that still owes some. With DATA and
/// PIPELINING (TXN-14) the next transaction's commands follow the final dot of the one before
/// (two in flight at most). Without PIPELINING one transaction at a time.
#[derive(Debug)]
pub(crate) struct Deliver<'s, 'm> {
    s: &'s mut Session,
    jobs: Vec<Job<'m>>,
    max_rcpts: usize,
    /// Transactions in flight, oldest first.
    inflight: VecDeque<Txn<'m>>,
    /// The message of the transaction begun last.
    begun: usize,
    /// A stop: no transaction begins any more (those in flight finish).
    stopping: bool,
    connection_lost: Option<Reply>,
    done: bool,
}

impl<'s, 'm> Deliver<'s, 'm> {
    /// Deliver `message` (unstuffed: headers and body with CRLF line ends; dot-stuffed as it is
    /// written) from `mail_from` to `rcpts`, at most `min(max_rcpts, learned limit)` recipients
    /// per transaction.
    pub(crate) fn new(
        s: &'s mut Session,
        mail_from: &'m str,
        rcpts: &'m [String],
        message: &'m [u8],
        max_rcpts: usize,
    ) -> Self {
        let m = Msg {
            from: mail_from,
            rcpts,
            message,
        };
        Self::new_many(s, &[m], max_rcpts)
    }

    /// Deliver each of `msgs` (see [`Deliver::new`]), several transactions in flight when the
    /// session uses BDAT.
    pub(crate) fn new_many(s: &'s mut Session, msgs: &[Msg<'m>], max_rcpts: usize) -> Self {
        let usable = s.is_usable();
        let connection_lost =
            (!usable).then(|| s.lost.clone().unwrap_or_else(Reply::connection_lost));
        Self {
            jobs: msgs
                .iter()
                .map(|m| Job::new(*m, usable, s.capabilities()))
                .collect(),
            s,
            max_rcpts,
            inflight: VecDeque::new(),
            begun: 0,
            stopping: false,
            connection_lost,
            done: !usable,
        }
    }

    /// The outcome of every recipient of the (first) message (those never decided get the
    /// reason the connection was lost).
    pub(crate) fn finish(self) -> Delivery {
        let lost = self.connection_lost;
        match self.jobs.into_iter().next() {
            Some(j) => j.finish(lost.as_ref()),
            None => Delivery {
                results: Vec::new(),
                transactions: 0,
                too_many_recoveries: 0,
                connection_lost: lost,
            },
        }
    }

    /// A stop: begin no other transaction; those in flight finish. A message none of whose
    /// transactions began is handed out as `None` by [`Deliver::take_over`].
    pub(crate) fn stop_beginning(&mut self) {
        self.stopping = true;
    }

    /// Nothing more to do: every transaction is over.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// Whether [`Deliver::stop_beginning`] was called.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping
    }

    /// Whether a message whose transactions are all over has not been handed out yet.
    pub(crate) fn any_over(&self) -> bool {
        self.jobs
            .iter()
            .any(|j| !j.reported && (j.over() || self.done))
    }

    /// Hand out the [`Delivery`] of each message whose transactions are all over (every one
    /// once the machine is done), each once, with its index. With `rest`, the others too, as
    /// `None` (a cut-off: they go back untouched); after [`Deliver::stop_beginning`], those
    /// never begun too, as `None`.
    pub(crate) fn take_over(&mut self, rest: bool) -> Vec<(usize, Option<Delivery>)> {
        let done = self.done;
        let lost = self.connection_lost.as_ref();
        let mut out = Vec::new();
        let stopping = self.stopping;
        for (i, j) in self.jobs.iter_mut().enumerate() {
            if j.reported {
                continue;
            }
            if stopping && j.transactions == 0 && !j.pending.is_empty() {
                // Never begun, and never will: back to the caller untouched.
                j.reported = true;
                out.push((i, None));
            } else if j.over() || done {
                j.reported = true;
                out.push((i, Some(j.delivery(lost))));
            } else if rest {
                j.reported = true;
                out.push((i, None));
            }
        }
        out
    }

    /// The session the transactions run on.
    pub(crate) fn session(&self) -> &Session {
        self.s
    }

    /// A new transaction, when one may start: the window has room (one at a time without
    /// PIPELINING), every transaction in flight is all out (commands and message, TXN-14), and a
    /// message has recipients waiting and none of its transactions in flight.
    fn try_begin(&mut self) -> Option<Step> {
        if self.done || self.stopping || !self.s.is_usable() {
            return None;
        }
        if self.inflight.len() >= self.s.window() || !self.inflight.iter().all(Txn::on_the_wire) {
            return None;
        }
        let j = self
            .jobs
            .iter()
            .position(|j| !j.busy && !j.pending.is_empty())?;
        Some(self.begin(j))
    }

    /// Start the next transaction of message `j` with as many pending recipients as it may
    /// carry, and put its first commands in the group being written.
    fn begin(&mut self, j: usize) -> Step {
        let job = &mut self.jobs[j];
        let take = self.s.rcpt_limit(self.max_rcpts).min(job.pending.len());
        let batch: Vec<usize> = job.pending.drain(..take).collect();
        job.transactions += 1;
        job.busy = true;
        let bytes = job.message.len() as u64;
        let id = self.s.next_txn_id();
        self.inflight
            .push_back(Txn::new(id, j, batch, self.s.need_rset));
        self.begun = j;
        self.form_group(false);
        Step::Begin {
            bytes,
            deadline: self.s.config().txn_deadline.for_message(bytes),
        }
    }

    /// Put the next commands of a transaction (the oldest in flight, or with `newest` the one
    /// just begun) in a group, up to where the session says a group ends. DATA is left out
    /// when it would start a group and no recipient was accepted; with BDAT the message itself
    /// follows its command.
    fn form_group(&mut self, oldest: bool) {
        let txn = if oldest {
            self.inflight.front_mut()
        } else {
            self.inflight.back_mut()
        };
        let Some(txn) = txn else {
            return;
        };
        let job = &self.jobs[txn.job];
        let bdat = self.s.uses_bdat();
        loop {
            let (cmd, pos) = match txn.next {
                Next::Nothing => return,
                Next::Rset => {
                    txn.next = Next::Mail;
                    (Command::Rset, 0)
                }
                Next::Mail => {
                    txn.next = if txn.batch.is_empty() {
                        Next::Data
                    } else {
                        Next::Rcpt(0)
                    };
                    self.s.need_rset = true;
                    let params = MailParams {
                        body_8bit: job.body_8bit,
                        smtputf8: job.smtputf8,
                        ..self.s.mail_params(job.message.len())
                    };
                    (
                        Command::Mail {
                            from: job.from,
                            params,
                        },
                        0,
                    )
                }
                Next::Rcpt(p) => {
                    txn.next = if p + 1 < txn.batch.len() {
                        Next::Rcpt(p + 1)
                    } else {
                        Next::Data
                    };
                    (
                        Command::Rcpt {
                            to: &job.rcpts[txn.batch[p]],
                        },
                        p,
                    )
                }
                Next::Data if bdat => {
                    // The whole message in one chunk, not dot-stuffed (RFC 3030); its reply
                    // decides the transaction as the reply to the final dot does.
                    txn.next = Next::Nothing;
                    txn.body = Body::Over;
                    let size = job.message.len() as u64;
                    self.s.send(Command::BdatLast { size }, txn.id, 0);
                    self.s.push_raw(job.message);
                    return;
                }
                Next::Data => {
                    txn.next = Next::Nothing;
                    if self.s.nothing_owed() && txn.accepted.is_empty() {
                        return;
                    }
                    (Command::Data, 0)
                }
            };
            let verb = cmd.verb();
            self.s.send(cmd, txn.id, pos);
            if self.s.ends_group(verb) {
                return;
            }
        }
    }

    /// The session cannot go on: every recipient still undecided is deferred with the reason,
    /// in every message under way.
    fn lose(&mut self, lost: Lost) {
        // A connection closed after a write failed: the write error says more.
        let lost = match (lost, self.s.write_error.take()) {
            (Lost::Eof(_), Some(e)) => Lost::Io(e),
            (l, _) => l,
        };
        tracing::debug!(?lost, "SMTP connection lost");
        if matches!(lost, Lost::Closing(_)) || !self.s.usable {
            // After a 421, or a reply that used up the relay's allowance for the connection
            // (which it then closes), the relay takes no more commands: a transaction in
            // flight behind the one it answered, with no reply of its own yet, never reached
            // it. Its recipients
            // are as they were before it began (a message with no other transaction goes back
            // to the queue untouched).
            for txn in self.inflight.iter().filter(|t| !t.replied) {
                let job = &mut self.jobs[txn.job];
                for &i in txn.batch.iter().rev() {
                    job.pending.push_front(i);
                }
                job.transactions = job.transactions.saturating_sub(1);
                job.busy = false;
            }
        }
        self.s.mark_lost(&lost);
        self.connection_lost = self.s.lost.clone();
        for j in &mut self.jobs {
            if j.busy || !j.pending.is_empty() {
                j.lost = true;
            }
        }
        self.inflight.clear();
        self.done = true;
    }

    /// The oldest transaction in flight is over with the connection in step.
    fn end_txn(&mut self) {
        let Some(txn) = self.inflight.pop_front() else {
            return;
        };
        let job = &mut self.jobs[txn.job];
        if !txn.retry.is_empty() {
            job.too_many_recoveries += 1;
            for &i in txn.retry.iter().rev() {
                job.pending.push_front(i);
            }
        }
        if let Some(stop) = &txn.stop {
            job.decide_rest(stop);
        }
        if self.inflight.is_empty() && self.s.write_error.is_some() {
            // The server answered everything it got, then the connection broke. (With later
            // transactions in flight, their replies are read first: those written before the
            // failed write may still come.)
            let e = self.s.write_error.take();
            self.lose(Lost::Io(
                e.unwrap_or_else(|| io::ErrorKind::BrokenPipe.into()),
            ));
        } else if !self.s.usable {
            // A reply before the end of the data, or the relay's allowance used up.
            self.lose(Lost::Protocol("reply before end of data".into()));
        }
        self.jobs[txn.job].busy = false;
    }

    /// The transaction the reply at hand answers (the oldest in flight) and its message.
    fn front(&mut self) -> Option<(&mut Txn<'m>, &mut Job<'m>)> {
        let txn = self.inflight.front_mut()?;
        let job = self.jobs.get_mut(txn.job)?;
        Some((txn, job))
    }

    fn on_mail(&mut self, r: Reply) {
        let stop = match outcome_of(&r) {
            Some(Outcome::Delivered) => return,
            Some(outcome) => RcptResult::new(outcome, r),
            None => return self.lose(Lost::Protocol(format!("unexpected MAIL reply: {r}"))),
        };
        if let Some(txn) = self.inflight.front_mut() {
            txn.stop = Some(stop);
            txn.mail_refused = true;
            txn.next = Next::Nothing;
        }
    }

    fn on_rcpt(&mut self, pos: usize, r: Reply) {
        let Some(txn) = self.inflight.front_mut() else {
            return;
        };
        if txn.mail_refused {
            return;
        }
        let Some(&i) = txn.batch.get(pos) else {
            return self.lose(Lost::Protocol(format!("no recipient {pos} for {r}")));
        };
        let results = &mut self.jobs[txn.job].results;
        match classify_rcpt(&r) {
            RcptVerdict::Accepted => txn.accepted.push(i),
            RcptVerdict::TempFail => results[i] = Some(RcptResult::deferred(r)),
            RcptVerdict::PermFail => results[i] = Some(RcptResult::failed(r)),
            RcptVerdict::TooMany => {
                let first = txn.first_too_many.is_none();
                if first {
                    txn.first_too_many = Some(pos);
                    if pos == 0 {
                        // Not a count limit (nothing was in the transaction): a transient
                        // refusal for everything still undecided.
                        txn.stop = Some(RcptResult::deferred(r.clone()));
                    } else {
                        self.s.set_learned_rcpt_limit(pos);
                        tracing::debug!(limit = pos, reply = %r, "relay recipient limit learned");
                    }
                }
                if txn.first_too_many == Some(0) {
                    results[i] = Some(RcptResult::deferred(r));
                } else {
                    txn.retry.push(i);
                }
                if first {
                    // Stop adding: the RCPTs not sent yet wait for the next transaction (or,
                    // after a refusal at the first, share its deferral).
                    if let Next::Rcpt(p) = txn.next {
                        if pos > 0 {
                            txn.retry.extend_from_slice(&txn.batch[p..]);
                        }
                        txn.next = Next::Data;
                    }
                }
            }
        }
    }

    fn on_data(&mut self, r: Reply) {
        let Some((txn, job)) = self.front() else {
            return;
        };
        if r.code != 354 {
            match outcome_of(&r) {
                Some(outcome @ (Outcome::Deferred | Outcome::Failed)) => {
                    for &i in &txn.accepted {
                        job.results[i] = Some(RcptResult::new(outcome, r.clone()));
                    }
                    txn.accepted.clear();
                    txn.body = Body::Over;
                }
                _ => self.lose(Lost::Protocol(format!("unexpected DATA reply: {r}"))),
            }
            return;
        }
        let (id, message) = (txn.id, job.message);
        let nobody = txn.accepted.is_empty();
        txn.body = if nobody {
            Body::Over
        } else {
            Body::Streaming(DotStuffer::new(message))
        };
        self.s.expect(Verb::EndOfData, id, 0);
        if nobody && self.s.write_error.is_none() {
            // Nothing to deliver: end the data at once (RFC 2920 §3.1 says the server should
            // have refused DATA; recipients keep their RCPT outcomes).
            self.s.put_data("DATA", false, |out| {
                out.extend_from_slice(b".\r\n");
                true
            });
        }
    }

    fn on_end_of_data(&mut self, fin: Reply) {
        let Some(txn) = self.inflight.front_mut() else {
            return;
        };
        if txn.mail_refused {
            // BDAT after a refused MAIL: its reply (503) says nothing new.
            return;
        }
        let accepted = std::mem::take(&mut txn.accepted);
        let interrupted = txn.interrupted;
        let job = &mut self.jobs[txn.job];
        if interrupted {
            // The server spoke before our final dot: it and we no longer agree on the state.
            self.s.usable = false;
            if fin.is_positive() {
                return self.lose(Lost::Protocol(format!(
                    "reply before the end of the message: {fin}"
                )));
            }
            self.s
                .lost
                .get_or_insert_with(|| Reply::connection_lost_because("reply before end of data"));
        }
        let Some(outcome) = outcome_of(&fin) else {
            return self.lose(Lost::Protocol(format!(
                "unexpected end-of-data reply: {fin}"
            )));
        };
        if accepted.is_empty() {
            return;
        }
        if allowance_used_up(
            &fin,
            self.s.messages,
            self.s.capabilities().size,
            job.message.len(),
        ) {
            // Deferred, and the connection is not used again. The 552 is kept in the text of a
            // transient reply (deferred replies are 4yz).
            tracing::debug!(reply = %fin, messages = self.s.messages, "session allowance used up");
            let r = Reply::new(
                451,
                Some((4, 3, 0)),
                format!("Session allowance used up; try a new connection ({fin})"),
            );
            for &i in &accepted {
                job.results[i] = Some(RcptResult::deferred(r.clone()));
            }
            self.s.lost.get_or_insert(r);
            self.s.usable = false;
            return;
        }
        if outcome == Outcome::Delivered {
            self.s.messages = self.s.messages.saturating_add(1);
        }
        tracing::trace!(rcpts = accepted.len(), reply = %fin, "message sent");
        for &i in &accepted {
            job.results[i] = Some(RcptResult::new(outcome, fin.clone()));
        }
    }
}

impl Machine for Deliver<'_, '_> {
    fn next(&mut self) -> Step {
        loop {
            // More transactions while the window has room: they join the group being written.
            if let Some(begin) = self.try_begin() {
                return begin;
            }
            if let Some(w) = self.s.pending_write() {
                return w;
            }
            if self.done {
                return Step::Done;
            }
            let owed_head = self.s.owed_head_txn();
            let write_failed = self.s.write_error.is_some();
            let Some(txn) = self.inflight.front_mut() else {
                // Nothing in flight and nothing to begin.
                self.done = true;
                continue;
            };
            if let Body::Streaming(stuffer) = &mut txn.body {
                // Large writes, bounded memory; a failed write stops the data, and the reply to
                // what was sent is still read (a relay that refuses a message mid-way says so).
                if !write_failed
                    && self
                        .s
                        .put_data("message data", true, |out| stuffer.fill(out, DATA_CHUNK))
                {
                    if stuffer.is_done() {
                        // The final dot is in this block: the next transaction's commands
                        // may follow it in the same write (TXN-14).
                        txn.body = Body::Over;
                    }
                    continue;
                }
                txn.body = Body::Over;
            }
            if txn.next == Next::Nothing && owed_head != Some(txn.id) {
                self.end_txn();
                continue;
            }
            if let Some(read) = self.s.pending_read() {
                return read;
            }
            if let Some(e) = self.s.write_error.take() {
                // Nothing more can be sent, so no reply can come.
                self.lose(Lost::Io(e));
                continue;
            }
            self.form_group(true);
        }
    }

    fn output(&self) -> &[u8] {
        self.s.output_buf()
    }

    fn begun(&self) -> usize {
        self.begun
    }

    fn on_written(&mut self, written: Written) {
        self.s.clear_output();
        match written {
            Written::All => {}
            Written::Interrupted => {
                if let Some(txn) = self.inflight.front_mut() {
                    txn.interrupted = true;
                    txn.body = Body::Over;
                }
            }
            Written::Failed(e) => {
                // Keep reading: the server may have said why (e.g. 552 then close).
                tracing::debug!(error = %e, "write failed");
                self.s.write_error = Some(e);
            }
        }
    }

    fn on_reply(&mut self, r: Reply) {
        let owed = self.s.pop_owed();
        let Some(owed) = owed.filter(|o| self.inflight.front().is_some_and(|t| t.id == o.txn))
        else {
            return self.lose(Lost::Protocol(format!("a reply nobody waited for: {r}")));
        };
        if let Some(t) = self.inflight.front_mut() {
            t.replied = true;
        }
        if r.is_closing() {
            return self.lose(Lost::Closing(r));
        }
        match owed.verb {
            Verb::Rset => {
                if !r.is_positive() {
                    tracing::warn!(reply = %r, "RSET refused");
                }
            }
            Verb::Mail => self.on_mail(r),
            Verb::Rcpt => self.on_rcpt(owed.pos, r),
            Verb::Data => self.on_data(r),
            Verb::EndOfData | Verb::Bdat => self.on_end_of_data(r),
            other => self.lose(Lost::Protocol(format!(
                "a {} reply in a transaction: {r}",
                other.name()
            ))),
        }
    }

    fn on_lost(&mut self, lost: Lost) {
        self.lose(lost);
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod window_tests;
