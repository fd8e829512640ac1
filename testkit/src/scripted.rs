//! A small scripted SMTP server for tests of the client and of the engine over in-memory streams
//! (paused time) or loopback TCP (real time).
//!
//! It records every command line, grouped by what arrived before it had to answer (a lock-step
//! client sends groups of one command; a pipelining client sends `RSET? MAIL RCPT... DATA` as one
//! group), and every message with its recipients and its raw (stuffed) and unstuffed data.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smtpw_engine::config::HostPort;
use smtpw_engine::net::{BoxStream, MemoryConnector};
use smtpw_engine::smtp::data::dot_unstuff;
use smtpw_engine::smtp::{Client, ClientConfig, Reply};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

// ---------------------------------------------------------------------------------------------
// The scripted server
// ---------------------------------------------------------------------------------------------

pub const IIS_EHLO: &[&str] = &[
    "TURN",
    "SIZE 2097152",
    "ETRN",
    "PIPELINING",
    "DSN",
    "ENHANCEDSTATUSCODES",
    "8bitmime",
    "BINARYMIME",
    "CHUNKING",
    "VRFY",
];
pub const PLAIN_EHLO: &[&str] = &["SIZE", "8BITMIME"];

#[derive(Clone, Debug)]
pub struct Mta {
    /// `None`: never greet (and never answer).
    pub greeting: Option<String>,
    /// EHLO keyword lines; `None`: EHLO gets 502 (HELO fallback).
    pub ehlo: Option<Vec<String>>,
    pub helo_reply: String,
    pub mail_reply: String,
    /// Accepted recipients per transaction; the next ones get `too_many`.
    pub limit: Option<usize>,
    pub too_many: String,
    /// Replies for particular addresses (instead of `250 2.1.5 <addr>`).
    pub rcpt_replies: HashMap<String, String>,
    pub data_reply: String,
    /// DATA reply when no recipient was accepted (RFC 2920: 554).
    pub data_no_rcpt: String,
    /// Replies to the final dot, in order; then `250 2.6.0 ...`.
    pub final_replies: VecDeque<String>,
    /// Close without reply when command number n (1-based, EHLO included) arrives.
    pub close_at: Option<usize>,
    /// Answer command number n with 421 and close.
    pub reply_421_at: Option<usize>,
    /// Stop answering from command number n on (keep the connection open).
    pub silent_from: Option<usize>,
    /// Close once this many bytes of message data have arrived.
    pub close_in_data_after: Option<usize>,
    /// Send this reply as soon as message data arrives, then close (IIS's 552 4.3.1).
    pub reply_in_data: Option<String>,
    /// Never answer the final dot.
    pub hang_at_end_of_data: bool,
    /// Never answer the final dot of the n-th message of a session (1-based) and later ones.
    pub hang_from_message: Option<usize>,
    /// Send replies one byte at a time, this long apart (a relay that drips its output).
    pub drip: Option<Duration>,
}

impl Mta {
    pub fn new(ehlo: &[&str]) -> Self {
        Self {
            greeting: Some("220 mx.example.org Microsoft ESMTP MAIL Service ready".into()),
            ehlo: Some(ehlo.iter().map(|s| s.to_string()).collect()),
            helo_reply: "250 mx.example.org Hello".into(),
            mail_reply: "250 2.1.0 Sender OK".into(),
            limit: None,
            too_many: "552 5.5.3 Too many recipients".into(),
            rcpt_replies: HashMap::new(),
            data_reply: "354 Start mail input; end with <CRLF>.<CRLF>".into(),
            data_no_rcpt: "554 5.5.1 No valid recipients".into(),
            final_replies: VecDeque::new(),
            close_at: None,
            reply_421_at: None,
            silent_from: None,
            close_in_data_after: None,
            reply_in_data: None,
            hang_at_end_of_data: false,
            hang_from_message: None,
            drip: None,
        }
    }
    pub fn pipelining() -> Self {
        Self::new(IIS_EHLO)
    }
    pub fn lockstep() -> Self {
        Self::new(PLAIN_EHLO)
    }
    pub fn rcpt(mut self, addr: &str, reply: &str) -> Self {
        self.rcpt_replies
            .insert(addr.to_string(), reply.to_string());
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub mail: String,
    pub rcpts: Vec<String>,
    pub raw: Vec<u8>,
    pub data: Vec<u8>,
    pub reply: String,
}

#[derive(Debug, Default)]
pub struct Record {
    pub groups: Vec<Vec<String>>,
    pub messages: Vec<Message>,
    /// RCPT commands per address.
    pub rcpt_count: HashMap<String, usize>,
    /// RCPT commands per transaction (MAIL .. end).
    pub rcpts_per_txn: Vec<usize>,
    /// RCPTs accepted (2yz) per address.
    pub accepted_count: HashMap<String, usize>,
    /// Final dots left unanswered (`hang_at_end_of_data`).
    pub hung_dots: usize,
    pub closed: bool,
}

impl Record {
    pub fn commands(&self) -> Vec<String> {
        self.groups.iter().flatten().cloned().collect()
    }
    pub fn verbs(&self) -> Vec<Vec<String>> {
        self.groups
            .iter()
            .map(|g| {
                g.iter()
                    .map(|c| c.split([' ', ':']).next().unwrap_or("").to_string())
                    .collect()
            })
            .collect()
    }
}

pub type Rec = Arc<Mutex<Record>>;

#[derive(Default)]
pub struct State {
    /// Final dots received in this session.
    pub dots: usize,
    pub n_cmds: usize,
    pub in_txn: bool,
    pub mail: String,
    pub rcpts: Vec<String>,
    pub data: Option<Vec<u8>>,
    /// In a `BDAT n LAST` chunk (RFC 3030): bytes still to come, and the refusal to say at
    /// its end when the chunk is refused (no transaction, no recipient).
    pub bdat: Option<(usize, Option<String>)>,
}

pub enum Finish {
    Close,
    Hang,
}

pub fn addr_of(arg: &str) -> String {
    let s = arg.find('<').map_or(arg, |i| &arg[i + 1..]);
    s.split('>').next().unwrap_or("").to_string()
}

pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, mut mta: Mta, rec: Rec) {
    let Some(greeting) = mta.greeting.clone() else {
        std::future::pending::<()>().await;
        return;
    };
    if s.write_all(format!("{greeting}\r\n").as_bytes())
        .await
        .is_err()
    {
        return;
    }
    let mut st = State::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut tmp = vec![0u8; 256 * 1024];
    loop {
        let n = match s.read(&mut tmp).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&tmp[..n]);
        let mut out = String::new();
        let mut group = Vec::new();
        let mut finish = None;
        loop {
            if let Some((remaining, refusal)) = st.bdat.take() {
                if refusal.is_none() && !buf.is_empty() {
                    if let Some(r) = mta.reply_in_data.take() {
                        out.push_str(&r);
                        out.push_str("\r\n");
                        finish = Some(Finish::Close);
                        break;
                    }
                }
                let take = remaining.min(buf.len());
                let chunk: Vec<u8> = buf.drain(..take).collect();
                let got = st.data.as_ref().map_or(0, Vec::len) + take;
                if refusal.is_none() && mta.close_in_data_after.is_some_and(|k| got >= k) {
                    finish = Some(Finish::Close);
                    break;
                }
                if refusal.is_none() {
                    st.data
                        .get_or_insert_with(Vec::new)
                        .extend_from_slice(&chunk);
                }
                if take < remaining {
                    st.bdat = Some((remaining - take, refusal));
                    break;
                }
                if let Some(r) = refusal {
                    out.push_str(&r);
                    out.push_str("\r\n");
                    continue;
                }
                let raw = st.data.take().unwrap_or_default();
                st.dots += 1;
                if mta.hang_at_end_of_data || mta.hang_from_message.is_some_and(|n| st.dots >= n) {
                    rec.lock().unwrap().hung_dots += 1;
                    finish = Some(Finish::Hang);
                    break;
                }
                let reply = mta.final_replies.pop_front().unwrap_or_else(|| {
                    "250 2.6.0 <id@mx.example.org> Queued mail for delivery".into()
                });
                rec.lock().unwrap().messages.push(Message {
                    mail: st.mail.clone(),
                    rcpts: std::mem::take(&mut st.rcpts),
                    data: raw.clone(),
                    raw,
                    reply: reply.clone(),
                });
                st.in_txn = false;
                out.push_str(&reply);
                out.push_str("\r\n");
                continue;
            }
            if st.data.is_some() {
                if let Some(r) = mta.reply_in_data.take() {
                    out.push_str(&r);
                    out.push_str("\r\n");
                    finish = Some(Finish::Close);
                    break;
                }
                let got = st.data.as_ref().map_or(0, Vec::len) + buf.len();
                if mta.close_in_data_after.is_some_and(|k| got >= k) {
                    finish = Some(Finish::Close);
                    break;
                }
                let Some(nl) = memchr::memchr(b'\n', &buf) else {
                    break;
                };
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let data = st.data.as_mut().unwrap();
                data.extend_from_slice(&line);
                if line == b".\r\n" {
                    let raw = st.data.take().unwrap();
                    st.dots += 1;
                    if mta.hang_at_end_of_data
                        || mta.hang_from_message.is_some_and(|n| st.dots >= n)
                    {
                        rec.lock().unwrap().hung_dots += 1;
                        finish = Some(Finish::Hang);
                        break;
                    }
                    let reply = mta.final_replies.pop_front().unwrap_or_else(|| {
                        "250 2.6.0 <id@mx.example.org> Queued mail for delivery".into()
                    });
                    let data = dot_unstuff(&raw).expect("terminated");
                    rec.lock().unwrap().messages.push(Message {
                        mail: st.mail.clone(),
                        rcpts: std::mem::take(&mut st.rcpts),
                        raw,
                        data,
                        reply: reply.clone(),
                    });
                    st.in_txn = false;
                    out.push_str(&reply);
                    out.push_str("\r\n");
                }
                continue;
            }
            let Some(nl) = memchr::memchr(b'\n', &buf) else {
                break;
            };
            let line = String::from_utf8_lossy(&buf[..nl])
                .trim_end_matches('\r')
                .to_string();
            buf.drain(..=nl);
            group.push(line.clone());
            st.n_cmds += 1;
            if mta.silent_from.is_some_and(|k| st.n_cmds >= k) {
                finish = Some(Finish::Hang);
                break;
            }
            if mta.close_at == Some(st.n_cmds) {
                finish = Some(Finish::Close);
                break;
            }
            if mta.reply_421_at == Some(st.n_cmds) {
                out.push_str("421 4.3.2 Service not available, closing transmission channel\r\n");
                finish = Some(Finish::Close);
                break;
            }
            let verb = line
                .split([' ', ':'])
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            let arg = line.get(verb.len()..).unwrap_or("").trim();
            let reply: String = match verb.as_str() {
                "EHLO" => match &mta.ehlo {
                    Some(lines) => {
                        let mut r = String::from("250-mx.example.org Hello [127.0.0.1]");
                        for l in lines {
                            r.push_str("\r\n250-");
                            r.push_str(l);
                        }
                        r.push_str("\r\n250 OK");
                        r
                    }
                    None => "502 5.5.2 Command not recognized".into(),
                },
                "HELO" => mta.helo_reply.clone(),
                "MAIL" => {
                    if st.in_txn {
                        "503 5.5.1 Sender already specified".into()
                    } else {
                        rec.lock().unwrap().rcpts_per_txn.push(0);
                        st.mail = addr_of(arg);
                        st.rcpts.clear();
                        st.in_txn = mta.mail_reply.starts_with('2');
                        mta.mail_reply.clone()
                    }
                }
                "RCPT" => {
                    let a = addr_of(arg);
                    let mut r = rec.lock().unwrap();
                    *r.rcpt_count.entry(a.clone()).or_insert(0) += 1;
                    if !st.in_txn {
                        "503 5.5.1 Need MAIL before RCPT".into()
                    } else {
                        if let Some(last) = r.rcpts_per_txn.last_mut() {
                            *last += 1;
                        }
                        if mta.limit.is_some_and(|l| st.rcpts.len() >= l) {
                            mta.too_many.clone()
                        } else {
                            let reply = mta
                                .rcpt_replies
                                .get(&a)
                                .cloned()
                                .unwrap_or_else(|| format!("250 2.1.5 <{a}>"));
                            if reply.starts_with('2') {
                                *r.accepted_count.entry(a.clone()).or_insert(0) += 1;
                                st.rcpts.push(a);
                            }
                            reply
                        }
                    }
                }
                "DATA" => {
                    if !st.in_txn {
                        "503 5.5.1 Need MAIL command".into()
                    } else if st.rcpts.is_empty() {
                        if mta.data_no_rcpt.starts_with("354") {
                            st.data = Some(Vec::new());
                        }
                        mta.data_no_rcpt.clone()
                    } else {
                        if mta.data_reply.starts_with("354") {
                            st.data = Some(Vec::new());
                        }
                        mta.data_reply.clone()
                    }
                }
                "BDAT" => {
                    // `BDAT n LAST`, the whole message in one chunk (what smtpw sends).
                    let size: usize = arg
                        .split_ascii_whitespace()
                        .next()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    let refusal = if !st.in_txn {
                        Some("503 5.5.1 Need MAIL command".to_string())
                    } else if st.rcpts.is_empty() {
                        Some(mta.data_no_rcpt.clone())
                    } else {
                        None
                    };
                    if refusal.is_none() {
                        st.data = None;
                    }
                    st.bdat = Some((size, refusal));
                    continue;
                }
                "RSET" => {
                    st.in_txn = false;
                    st.rcpts.clear();
                    "250 2.0.0 Resetting".into()
                }
                "QUIT" => {
                    finish = Some(Finish::Close);
                    "221 2.0.0 mx.example.org Service closing transmission channel".into()
                }
                _ => "500 5.3.3 Unrecognized command".into(),
            };
            out.push_str(&reply);
            out.push_str("\r\n");
            if finish.is_some() {
                break;
            }
        }
        if !group.is_empty() {
            rec.lock().unwrap().groups.push(group);
        }
        if !out.is_empty() && write_out(&mut s, out.as_bytes(), mta.drip).await.is_err() {
            break;
        }
        match finish {
            Some(Finish::Close) => break,
            Some(Finish::Hang) => std::future::pending::<()>().await,
            None => {}
        }
    }
    rec.lock().unwrap().closed = true;
}

/// Route `target` on `connector` to the scripted server; each new connection reads `mta` as it
/// is then, so a test can change the relay's behaviour between connections.
pub fn route(connector: &MemoryConnector, target: HostPort, mta: Mta) -> (Arc<Mutex<Mta>>, Rec) {
    let mta = Arc::new(Mutex::new(mta));
    let rec = Rec::default();
    let (m, r) = (mta.clone(), rec.clone());
    connector.route(target, move |stream| {
        let script = m.lock().unwrap().clone();
        tokio::spawn(serve(stream, script, r.clone()));
        Ok(())
    });
    (mta, rec)
}

/// Recipients the server accepted a message for (a 2yz to the final dot), with repeats.
pub fn delivered_counts(rec: &Rec) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for msg in &rec.lock().unwrap().messages {
        if msg.reply.starts_with('2') {
            for r in &msg.rcpts {
                *m.entry(r.clone()).or_default() += 1;
            }
        }
    }
    m
}

/// Write `out` at once, or one byte per `drip`.
async fn write_out<S: AsyncWrite + Unpin>(
    s: &mut S,
    out: &[u8],
    drip: Option<Duration>,
) -> std::io::Result<()> {
    let Some(every) = drip else {
        return s.write_all(out).await;
    };
    for b in out {
        tokio::time::sleep(every).await;
        s.write_all(std::slice::from_ref(b)).await?;
        s.flush().await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// For the SMTP client's own tests (engine/tests/smtp_client.rs): the server on an in-memory
// stream, and a client that has greeted it.
// ---------------------------------------------------------------------------------------------

pub fn start(mta: Mta) -> (BoxStream, Rec) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let rec = Rec::default();
    tokio::spawn(serve(server, mta, rec.clone()));
    (Box::new(client), rec)
}

pub fn cfg() -> ClientConfig {
    ClientConfig {
        helo_name: "lists.example.org".into(),
        // The DATA path (the relay offers CHUNKING, as IIS does): the client tests here are
        // about DATA; the BDAT window is tested on the machine (smtp::txn::window_tests) and
        // through the engine.
        chunking: false,
        ..ClientConfig::default()
    }
}

pub async fn connect(mta: Mta) -> (Client, Rec) {
    let (s, rec) = start(mta);
    let c = Client::handshake(s, &cfg()).await.expect("handshake");
    (c, rec)
}

pub fn rcpts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("u{i}@example.net")).collect()
}

pub const MSG: &[u8] =
    b"From: list@example.org\r\nTo: members@example.org\r\nSubject: hi\r\n\r\nHello.\r\n";

pub fn delivered_reply() -> Reply {
    Reply::new(
        250,
        Some((2, 6, 0)),
        "<id@mx.example.org> Queued mail for delivery",
    )
}

/// Bound every test so none can hang.
pub async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(24 * 3600), f)
        .await
        .expect("test timed out")
}

/// The scripted server on 127.0.0.1 (real time), served by its own runtime threads so that it
/// keeps answering while the test thread blocks on a child process. Each connection reads `mta`
/// as it is then. Dropping it stops the server and every session at once.
pub struct TcpScripted {
    pub port: u16,
    pub mta: Arc<Mutex<Mta>>,
    pub rec: Rec,
    rt: Option<tokio::runtime::Runtime>,
}

impl TcpScripted {
    pub fn start(mta: Mta) -> TcpScripted {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let mta = Arc::new(Mutex::new(mta));
        let rec = Rec::default();
        let (m, r) = (mta.clone(), rec.clone());
        rt.spawn(async move {
            // Bounded: a test never needs more than a few hundred connections.
            for _ in 0..1000 {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let script = m.lock().unwrap().clone();
                tokio::spawn(serve(sock, script, r.clone()));
            }
        });
        TcpScripted {
            port,
            mta,
            rec,
            rt: Some(rt),
        }
    }
}

impl Drop for TcpScripted {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
