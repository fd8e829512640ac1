//! A relay in pure code for the machine's tests: it answers what a [`Machine`] writes, the way
//! the scripted relay of the stream tests does over a pipe, and keeps a record of what it got.
//! [`run`] is the driver's loop without I/O: writes go to the relay, reads take its replies,
//! silence is a time-out and a closed relay is the end of the stream.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::time::Duration;

use crate::smtp::data::dot_unstuff;
use crate::smtp::reply::{parse_reply, Reply};
use crate::smtp::session::{Lost, Machine, Session, Step, Written};
use crate::smtp::txn::{Deliver, Delivery};
use crate::smtp::ClientConfig;

/// One reply from its wire form (`"250 2.1.0 Sender OK"`).
pub(crate) fn reply(s: &str) -> Reply {
    let wire = format!("{}\r\n", s.replace('\n', "\r\n"));
    match parse_reply(wire.as_bytes()) {
        Ok(Some((r, _))) => r,
        other => panic!("not a reply: {s:?} ({other:?})"),
    }
}

pub(crate) const IIS_EHLO: &[&str] = &[
    "SIZE 2097152",
    "PIPELINING",
    "ENHANCEDSTATUSCODES",
    "8bitmime",
    "CHUNKING",
];
pub(crate) const PLAIN_EHLO: &[&str] = &["SIZE", "8BITMIME"];

/// A message the relay took (a 2yz, 4yz or 5yz after its final dot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Taken {
    pub mail: String,
    pub rcpts: Vec<String>,
    /// As written (dot-stuffed, with the terminator).
    pub raw: Vec<u8>,
    pub data: Vec<u8>,
    pub reply: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Relay {
    pub greeting: String,
    /// EHLO keyword lines; `None`: EHLO gets 502 (HELO fallback).
    pub ehlo: Option<Vec<String>>,
    pub helo: String,
    pub mail: String,
    /// Accepted recipients per transaction; the next ones get `too_many`.
    pub limit: Option<usize>,
    pub too_many: String,
    pub rcpt: HashMap<String, String>,
    pub data: String,
    /// The DATA reply when no recipient was accepted.
    pub data_no_rcpt: String,
    /// Replies to the final dot, in order; then `250 2.6.0 ...`.
    pub finals: VecDeque<String>,
    /// Close without a reply when command number n (1-based, EHLO included) arrives.
    pub close_at: Option<usize>,
    /// Answer command number n with 421 and close.
    pub reply_421_at: Option<usize>,
    /// Stop answering from command number n on.
    pub silent_from: Option<usize>,
    /// Close once this many bytes of message data have arrived.
    pub close_in_data_after: Option<usize>,
    /// Say this as soon as message data arrives, then close.
    pub reply_in_data: Option<String>,
    /// Never answer a final dot.
    pub hang_at_end_of_data: bool,
    /// The reply to STARTTLS.
    pub starttls: String,
    /// How the TLS handshake after a 220 to STARTTLS ends.
    pub tls_handshake: Result<&'static str, String>,

    // What it got.
    /// Each write of commands, as lines.
    pub groups: Vec<Vec<String>>,
    pub messages: Vec<Taken>,
    /// RCPT commands per transaction.
    pub rcpts_per_txn: Vec<usize>,
    /// RCPTs accepted per address.
    pub accepted_count: HashMap<String, usize>,
    /// The steps the machine asked for.
    pub steps: Vec<Step>,

    /// Where it is in the session.
    pub st: Wire,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Wire {
    n_cmds: usize,
    in_txn: bool,
    mail_from: String,
    accepted: Vec<String>,
    body: Option<Vec<u8>>,
    partial: Vec<u8>,
    replies: VecDeque<Reply>,
    closed: bool,
    silent: bool,
    /// The session is under TLS.
    tls: bool,
    /// In a BDAT chunk: bytes still to come, and the refusal to say at its end (if refused).
    bdat: Option<(usize, Option<String>)>,
}

impl Relay {
    pub(crate) fn new(ehlo: &[&str]) -> Self {
        Self {
            greeting: "220 mx.example.org Microsoft ESMTP MAIL Service ready".into(),
            ehlo: Some(ehlo.iter().map(|s| s.to_string()).collect()),
            helo: "250 mx.example.org Hello".into(),
            mail: "250 2.1.0 Sender OK".into(),
            limit: None,
            too_many: "552 5.5.3 Too many recipients".into(),
            rcpt: HashMap::new(),
            data: "354 Start mail input; end with <CRLF>.<CRLF>".into(),
            data_no_rcpt: "554 5.5.1 No valid recipients".into(),
            finals: VecDeque::new(),
            close_at: None,
            reply_421_at: None,
            silent_from: None,
            close_in_data_after: None,
            reply_in_data: None,
            hang_at_end_of_data: false,
            starttls: "220 2.0.0 Ready to start TLS".into(),
            tls_handshake: Ok("TLSv1.3"),
            groups: Vec::new(),
            messages: Vec::new(),
            rcpts_per_txn: Vec::new(),
            accepted_count: HashMap::new(),
            steps: Vec::new(),
            st: Wire::default(),
        }
    }
    pub(crate) fn pipelining() -> Self {
        Self::new(IIS_EHLO)
    }
    pub(crate) fn lockstep() -> Self {
        Self::new(PLAIN_EHLO)
    }
    pub(crate) fn rcpt(mut self, addr: &str, reply: &str) -> Self {
        self.rcpt.insert(addr.to_string(), reply.to_string());
        self
    }

    /// Whether it has closed the connection.
    pub(crate) fn closed(&self) -> bool {
        self.st.closed
    }

    /// The command lines it got, in order.
    pub(crate) fn commands(&self) -> Vec<String> {
        self.groups.iter().flatten().cloned().collect()
    }

    /// The verb of each command, group by group.
    pub(crate) fn verbs(&self) -> Vec<Vec<String>> {
        self.groups
            .iter()
            .map(|g| {
                g.iter()
                    .map(|c| c.split([' ', ':']).next().unwrap_or("").to_string())
                    .collect()
            })
            .collect()
    }

    /// How many blocks of message data the machine wrote.
    pub(crate) fn data_writes(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| matches!(s, Step::Write { what, .. } if *what == "message data"))
            .count()
    }

    /// Every wait for a reply: its time-out and what it waited for.
    pub(crate) fn reads(&self) -> Vec<(Duration, &'static str)> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Step::Read { timeout, what } => Some((*timeout, *what)),
                _ => None,
            })
            .collect()
    }

    /// Recipients whose message got a 2yz after its dot, with repeats.
    pub(crate) fn delivered(&self) -> Vec<String> {
        self.messages
            .iter()
            .filter(|m| m.reply.starts_with('2'))
            .flat_map(|m| m.rcpts.clone())
            .collect()
    }

    fn say(&mut self, r: &str) {
        self.st.replies.push_back(reply(r));
    }

    fn close(&mut self) {
        self.st.closed = true;
        self.st.partial.clear();
    }

    /// Take what the client wrote.
    fn receive(&mut self, bytes: &[u8], interrupt_before: usize) -> Written {
        if self.st.closed {
            return Written::Failed(io::ErrorKind::BrokenPipe.into());
        }
        self.st.partial.extend_from_slice(bytes);
        let mut group = Vec::new();
        // A reply that cuts the write short (the reply to a final dot at the end of a write
        // does not: everything was written by then).
        let mut cut_short = false;
        while !self.st.closed && !self.st.silent {
            if let Some((remaining, refusal)) = self.st.bdat.take() {
                let take = remaining.min(self.st.partial.len());
                let chunk: Vec<u8> = self.st.partial.drain(..take).collect();
                let got = self.st.body.as_ref().map_or(0, Vec::len) + take;
                if refusal.is_none() && self.close_in_data_after.is_some_and(|k| got >= k) {
                    self.close();
                    break;
                }
                if refusal.is_none() {
                    self.st
                        .body
                        .get_or_insert_with(Vec::new)
                        .extend_from_slice(&chunk);
                }
                if take < remaining {
                    self.st.bdat = Some((remaining - take, refusal));
                    break;
                }
                match refusal {
                    Some(r) => self.say(&r),
                    None => self.end_of_bdat(),
                }
                continue;
            }
            if self.st.body.is_some() {
                if self.st.partial.is_empty() {
                    break;
                }
                if let Some(r) = self.reply_in_data.take() {
                    self.say(&r);
                    self.close();
                    cut_short = true;
                    break;
                }
                let got = self.st.body.as_ref().map_or(0, Vec::len) + self.st.partial.len();
                if self.close_in_data_after.is_some_and(|k| got >= k) {
                    self.close();
                    break;
                }
                let Some(nl) = memchr::memchr(b'\n', &self.st.partial) else {
                    break;
                };
                let line: Vec<u8> = self.st.partial.drain(..=nl).collect();
                let body = self.st.body.get_or_insert_with(Vec::new);
                body.extend_from_slice(&line);
                if line == b".\r\n" {
                    self.end_of_data();
                }
                continue;
            }
            let Some(nl) = memchr::memchr(b'\n', &self.st.partial) else {
                break;
            };
            let line = String::from_utf8_lossy(&self.st.partial[..nl])
                .trim_end_matches('\r')
                .to_string();
            self.st.partial.drain(..=nl);
            group.push(line.clone());
            self.command(&line);
        }
        if !group.is_empty() {
            self.groups.push(group);
        }
        if interrupt_before > 0 && cut_short {
            Written::Interrupted
        } else {
            Written::All
        }
    }

    fn end_of_data(&mut self) {
        let raw = self.st.body.take().unwrap_or_default();
        if self.hang_at_end_of_data {
            self.st.silent = true;
            return;
        }
        let r = self
            .finals
            .pop_front()
            .unwrap_or_else(|| "250 2.6.0 <id@mx.example.org> Queued mail for delivery".into());
        let data = dot_unstuff(&raw).unwrap_or_default();
        self.messages.push(Taken {
            mail: self.st.mail_from.clone(),
            rcpts: std::mem::take(&mut self.st.accepted),
            raw,
            data,
            reply: r.clone(),
        });
        self.st.in_txn = false;
        self.say(&r);
    }

    /// The end of a `BDAT n LAST` chunk: the message as it came (no dot-stuffing).
    fn end_of_bdat(&mut self) {
        let raw = self.st.body.take().unwrap_or_default();
        if self.hang_at_end_of_data {
            self.st.silent = true;
            return;
        }
        let r = self
            .finals
            .pop_front()
            .unwrap_or_else(|| "250 2.6.0 <id@mx.example.org> Queued mail for delivery".into());
        self.messages.push(Taken {
            mail: self.st.mail_from.clone(),
            rcpts: std::mem::take(&mut self.st.accepted),
            data: raw.clone(),
            raw,
            reply: r.clone(),
        });
        self.st.in_txn = false;
        self.say(&r);
    }

    fn command(&mut self, line: &str) {
        self.st.n_cmds += 1;
        if self.silent_from.is_some_and(|k| self.st.n_cmds >= k) {
            self.st.silent = true;
            return;
        }
        if self.close_at == Some(self.st.n_cmds) {
            return self.close();
        }
        if self.reply_421_at == Some(self.st.n_cmds) {
            self.say("421 4.3.2 Service not available, closing transmission channel");
            return self.close();
        }
        let verb = line
            .split([' ', ':'])
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let arg = line.get(verb.len()..).unwrap_or("").trim();
        let addr = {
            let s = arg.find('<').map_or(arg, |i| &arg[i + 1..]);
            s.split('>').next().unwrap_or("").to_string()
        };
        let r: String = match verb.as_str() {
            "EHLO" => match &self.ehlo {
                Some(lines) => {
                    let mut r = String::from("250-mx.example.org Hello [127.0.0.1]");
                    // STARTTLS is not offered again under TLS (RFC 3207 §4.2).
                    for l in lines.iter().filter(|l| !(self.st.tls && *l == "STARTTLS")) {
                        r.push_str("\n250-");
                        r.push_str(l);
                    }
                    r.push_str("\n250 OK");
                    r
                }
                None => "502 5.5.2 Command not recognized".into(),
            },
            "HELO" => self.helo.clone(),
            "STARTTLS" => self.starttls.clone(),
            "MAIL" if self.st.in_txn => "503 5.5.1 Sender already specified".into(),
            "MAIL" => {
                self.rcpts_per_txn.push(0);
                self.st.mail_from = addr;
                self.st.accepted.clear();
                self.st.in_txn = self.mail.starts_with('2');
                self.mail.clone()
            }
            "RCPT" if !self.st.in_txn => "503 5.5.1 Need MAIL before RCPT".into(),
            "RCPT" => {
                if let Some(n) = self.rcpts_per_txn.last_mut() {
                    *n += 1;
                }
                if self.limit.is_some_and(|l| self.st.accepted.len() >= l) {
                    self.too_many.clone()
                } else {
                    let r = self
                        .rcpt
                        .get(&addr)
                        .cloned()
                        .unwrap_or_else(|| format!("250 2.1.5 <{addr}>"));
                    if r.starts_with('2') {
                        *self.accepted_count.entry(addr.clone()).or_insert(0) += 1;
                        self.st.accepted.push(addr);
                    }
                    r
                }
            }
            "DATA" if !self.st.in_txn => "503 5.5.1 Need MAIL command".into(),
            "DATA" => {
                let r = if self.st.accepted.is_empty() {
                    self.data_no_rcpt.clone()
                } else {
                    self.data.clone()
                };
                if r.starts_with("354") {
                    self.st.body = Some(Vec::new());
                }
                r
            }
            "BDAT" => {
                let mut words = arg.split_ascii_whitespace();
                let size: usize = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                let refusal = if !self.st.in_txn {
                    Some("503 5.5.1 Need MAIL command".to_string())
                } else if self.st.accepted.is_empty() {
                    Some(self.data_no_rcpt.clone())
                } else {
                    None
                };
                if refusal.is_none() {
                    self.st.body = Some(Vec::new());
                }
                if size == 0 {
                    match refusal {
                        Some(r) => self.say(&r),
                        None => self.end_of_bdat(),
                    }
                } else {
                    self.st.bdat = Some((size, refusal));
                }
                return;
            }
            "RSET" => {
                self.st.in_txn = false;
                self.st.accepted.clear();
                "250 2.0.0 Resetting".into()
            }
            "QUIT" => {
                self.say("221 2.0.0 mx.example.org Service closing transmission channel");
                return self.close();
            }
            _ => "500 5.3.3 Unrecognized command".into(),
        };
        self.say(&r);
    }

    /// [`Relay::receive`] for tests that step a machine by hand.
    pub(crate) fn receive_for_test(&mut self, bytes: &[u8]) -> Written {
        self.receive(bytes, 0)
    }

    /// The next reply (a test stepping by hand: it must be owed).
    pub(crate) fn answer_for_test(&mut self, what: &'static str) -> Reply {
        match self.answer(what) {
            Ok(r) => r,
            Err(lost) => panic!("no {what} reply: {lost:?}"),
        }
    }

    /// The next reply, or why none comes.
    fn answer(&mut self, what: &'static str) -> Result<Reply, Lost> {
        if let Some(r) = self.st.replies.pop_front() {
            return Ok(r);
        }
        if self.st.closed {
            Err(Lost::Eof(what))
        } else if self.st.silent {
            Err(Lost::Timeout(what))
        } else {
            panic!("the machine waits for a {what} reply the relay does not owe")
        }
    }
}

/// Run `m` against `relay` until it is done; returns the `Begin` steps' `(bytes, deadline)`.
pub(crate) fn run<M: Machine>(m: &mut M, relay: &mut Relay) {
    for _ in 0..10_000_000 {
        let step = m.next();
        relay.steps.push(step);
        match step {
            Step::Begin { .. } => {}
            Step::Write {
                interrupt_before, ..
            } => {
                let w = relay.receive(m.output(), interrupt_before);
                m.on_written(w);
            }
            Step::Read { what, .. } => match relay.answer(what) {
                Ok(r) => m.on_reply(r),
                Err(lost) => m.on_lost(lost),
            },
            Step::Upgrade { .. } => {
                let r = relay.tls_handshake.clone();
                relay.st.tls = r.is_ok();
                relay.groups.push(vec!["<TLS handshake>".into()]);
                m.on_upgraded(r);
            }
            Step::Done => return,
        }
    }
    panic!("the machine never finished");
}

/// The relay with its greeting said (unless it gives none).
pub(crate) fn start(mut relay: Relay) -> Relay {
    let g = relay.greeting.clone();
    relay.say(&g);
    relay
}

pub(crate) fn cfg() -> ClientConfig {
    ClientConfig {
        helo_name: "lists.example.org".into(),
        // The DATA path (the relays of most tests offer CHUNKING, as IIS does); the BDAT tests
        // ask for it.
        chunking: false,
        ..ClientConfig::default()
    }
}

/// A session through its handshake with `relay`.
pub(crate) fn connect_with(relay: Relay, cfg: &ClientConfig) -> (Session, Relay) {
    let mut relay = start(relay);
    let mut s = Session::new(cfg);
    run(&mut s, &mut relay);
    s.handshake_result().expect("handshake");
    (s, relay)
}

pub(crate) fn connect(relay: Relay) -> (Session, Relay) {
    connect_with(relay, &cfg())
}

/// One message through the machine.
pub(crate) fn deliver(
    s: &mut Session,
    relay: &mut Relay,
    from: &str,
    rcpts: &[String],
    message: &[u8],
    max_rcpts: usize,
) -> Delivery {
    let mut job = Deliver::new(s, from, rcpts, message, max_rcpts);
    run(&mut job, relay);
    job.finish()
}

pub(crate) fn rcpts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("u{i}@example.net")).collect()
}

pub(crate) const MSG: &[u8] =
    b"From: list@example.org\r\nTo: members@example.org\r\nSubject: hi\r\n\r\nHello.\r\n";

pub(crate) fn delivered_reply() -> Reply {
    reply("250 2.6.0 <id@mx.example.org> Queued mail for delivery")
}

/// Several messages through the machine (a window of transactions in flight with BDAT).
pub(crate) fn deliver_many(
    s: &mut Session,
    relay: &mut Relay,
    msgs: &[crate::smtp::txn::Msg<'_>],
    max_rcpts: usize,
) -> Vec<Delivery> {
    let mut job = Deliver::new_many(s, msgs, max_rcpts);
    run(&mut job, relay);
    let mut d: Vec<Option<Delivery>> = vec![None; msgs.len()];
    for (i, one) in job.take_over(false) {
        d[i] = one;
    }
    d.into_iter()
        .map(|d| d.expect("every message handed out"))
        .collect()
}

/// [`cfg`] with BDAT and a window of `window` transactions.
pub(crate) fn bdat_cfg(window: usize) -> ClientConfig {
    ClientConfig {
        chunking: true,
        window,
        ..cfg()
    }
}
