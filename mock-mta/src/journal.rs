//! The journal: every session and transaction, readable in-process ([`crate::MockMta::journal`])
//! and written as JSON lines (`--journal FILE`), which [`Journal::read_file`] reads back into the
//! same types.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// One RCPT command and the reply it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RcptRecord {
    /// The address as given (without angle brackets).
    pub addr: String,
    /// The reply code.
    pub code: u16,
    /// The full reply line, without CRLF.
    pub reply: String,
}

/// One mail transaction (MAIL ... to its end: the reply after the dot, RSET, QUIT or a drop).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionRecord {
    /// The reverse path (empty for the null sender).
    pub mail_from: String,
    /// The `SIZE=` the client declared, if any.
    pub declared_size: Option<u64>,
    /// The other MAIL parameters the client gave, in a fixed order: `BODY=7BIT`,
    /// `BODY=8BITMIME`, `BODY=BINARYMIME`, `SMTPUTF8`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mail_params: Vec<String>,
    /// Every RCPT, in order, with its reply.
    pub rcpts: Vec<RcptRecord>,
    /// The reply code to DATA (354, 554, 503, ...) or to the last BDAT, if sent.
    pub data_code: Option<u16>,
    /// The reply after the final dot (or to BDAT LAST), if one was sent.
    pub data_reply: Option<String>,
    /// True when the end of data got 250: the message was queued.
    pub accepted: bool,
    /// The queue id given in the 250 (`<id@host>`).
    pub queue_id: Option<String>,
    /// Message size after dot-unstuffing, CRLFs included.
    pub bytes: u64,
    /// SHA-256 of the message (after dot-unstuffing), lower-case hex; empty when no data came.
    pub sha256: String,
    /// The message itself, when the mock was asked to keep bodies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// When MAIL was received.
    pub started_at: Timestamp,
    /// When DATA (or the first BDAT) was received.
    pub data_started_at: Option<Timestamp>,
    /// When the transaction ended.
    pub ended_at: Timestamp,
    /// The TLS version the transaction went over (`TLSv1.3`); absent: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    /// The user the client authenticated as (AUTH); absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl TransactionRecord {
    /// The recipients that got a 2xx reply.
    pub fn accepted_rcpts(&self) -> impl Iterator<Item = &RcptRecord> {
        self.rcpts.iter().filter(|r| (200..300).contains(&r.code))
    }
}

/// One SMTP session (one connection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionRecord {
    /// Session number, from 1.
    pub id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// The EHLO or HELO name.
    pub ehlo: Option<String>,
    /// When the connection was accepted.
    pub started_at: Timestamp,
    /// When it ended (`None` while open).
    pub ended_at: Option<Timestamp>,
    /// Why it ended: `quit`, `client-closed`, `idle-timeout`, `over-cap`, `refused`, `greet-421`,
    /// `fault-421`, `fault-drop`, `size-close`, `shutdown`, `io-error`.
    pub end_reason: Option<String>,
    /// Every transaction, in order.
    pub transactions: Vec<TransactionRecord>,
}

/// A snapshot of the journal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Journal {
    /// Sessions in order of their number.
    pub sessions: Vec<SessionRecord>,
}

impl Journal {
    /// Transactions whose data got 250, in session order.
    pub fn accepted_transactions(&self) -> Vec<&TransactionRecord> {
        self.transactions().filter(|t| t.accepted).collect()
    }

    /// Every transaction, in session order.
    pub fn transactions(&self) -> impl Iterator<Item = &TransactionRecord> {
        self.sessions.iter().flat_map(|s| s.transactions.iter())
    }

    /// The accepted recipients of accepted transactions (with repeats: a recipient delivered
    /// twice appears twice).
    pub fn delivered_recipients(&self) -> Vec<String> {
        self.transactions()
            .filter(|t| t.accepted)
            .flat_map(|t| t.accepted_rcpts().map(|r| r.addr.clone()))
            .collect()
    }

    /// Every RCPT reply, in order.
    pub fn rcpt_replies(&self) -> Vec<&RcptRecord> {
        self.transactions().flat_map(|t| t.rcpts.iter()).collect()
    }

    /// Reads a journal file the mock wrote (`--journal FILE`) back into sessions and their
    /// transactions, in the order the sessions began. A file several runs of the mock appended
    /// to holds each run's sessions (their numbers start again at 1). A session still open when
    /// the file was read has no end yet (`ended_at: None`).
    pub fn read_file(path: &Path) -> Result<Journal, JournalFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| JournalFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut lines = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let parsed: JournalLine<'static> =
                serde_json::from_str(line).map_err(|source| JournalFileError::Line {
                    path: path.to_path_buf(),
                    line: n + 1,
                    source,
                })?;
            lines.push(parsed);
        }
        Ok(Journal::from_lines(lines))
    }

    /// Sessions rebuilt from journal lines, in the order they began.
    pub fn from_lines<'a>(lines: impl IntoIterator<Item = JournalLine<'a>>) -> Journal {
        let mut b = Rebuild::default();
        for line in lines {
            match line {
                JournalLine::SessionStart { session, peer, at } => {
                    b.open.remove(&session);
                    b.session(session, peer, at);
                }
                JournalLine::Transaction {
                    session,
                    peer,
                    ehlo,
                    record,
                } => {
                    let s = b.session(session, peer, record.started_at);
                    if let Some(e) = ehlo {
                        s.ehlo = Some(e.into_owned());
                    }
                    s.transactions.push(record.into_owned());
                }
                JournalLine::SessionEnd {
                    session,
                    peer,
                    ehlo,
                    at,
                    reason,
                    ..
                } => {
                    let s = b.session(session, peer, at);
                    if let Some(e) = ehlo {
                        s.ehlo = Some(e.into_owned());
                    }
                    s.ended_at = Some(at);
                    s.end_reason = Some(reason.into_owned());
                    b.open.remove(&session);
                }
            }
        }
        Journal {
            sessions: b.sessions,
        }
    }

    /// The most sessions open at once across several journals (a session that ends at the
    /// instant another begins is not counted with it). A session without an end counts as open
    /// from its start on.
    pub fn peak_concurrent_sessions(journals: &[&Journal]) -> usize {
        let mut events: Vec<(Timestamp, i32)> = journals
            .iter()
            .flat_map(|j| j.sessions.iter())
            .flat_map(|s| std::iter::once((s.started_at, 1)).chain(s.ended_at.map(|at| (at, -1))))
            .collect();
        // Ends (-1) sort before starts (+1) at the same instant.
        events.sort();
        let (mut now, mut peak) = (0i32, 0i32);
        for (_, d) in events {
            now += d;
            peak = peak.max(now);
        }
        usize::try_from(peak).unwrap_or(0)
    }
}

/// Sessions being rebuilt from journal lines.
#[derive(Default)]
struct Rebuild {
    sessions: Vec<SessionRecord>,
    /// Session number -> its place in `sessions` (the latest session of that number).
    open: HashMap<u64, usize>,
}

impl Rebuild {
    /// The open session of this number, begun now if there is none.
    fn session(&mut self, id: u64, peer: SocketAddr, at: Timestamp) -> &mut SessionRecord {
        let sessions = &mut self.sessions;
        let i = *self.open.entry(id).or_insert_with(|| {
            sessions.push(SessionRecord {
                id,
                peer,
                ehlo: None,
                started_at: at,
                ended_at: None,
                end_reason: None,
                transactions: Vec::new(),
            });
            sessions.len() - 1
        });
        &mut self.sessions[i]
    }
}

/// A journal file that could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum JournalFileError {
    /// The file could not be read.
    #[error("cannot read the journal {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A line is not a journal line.
    #[error("line {line} of the journal {} is not a journal line: {source}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
}

/// A line of the JSON-lines journal file: what the mock writes (borrowing) and what
/// [`Journal::read_file`] reads (owning).
// One line at a time is written or read: the size of the transaction variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum JournalLine<'a> {
    /// A session opened.
    SessionStart {
        /// The session's number.
        session: u64,
        /// The client's address.
        peer: SocketAddr,
        /// When the connection was accepted.
        at: Timestamp,
    },
    /// A transaction ended.
    Transaction {
        /// The session's number.
        session: u64,
        /// The client's address.
        peer: SocketAddr,
        /// The EHLO or HELO name, if one was given.
        ehlo: Option<Cow<'a, str>>,
        /// The transaction.
        #[serde(flatten)]
        record: Cow<'a, TransactionRecord>,
    },
    /// A session ended.
    SessionEnd {
        /// The session's number.
        session: u64,
        /// The client's address.
        peer: SocketAddr,
        /// The EHLO or HELO name, if one was given.
        ehlo: Option<Cow<'a, str>>,
        /// When it ended.
        at: Timestamp,
        /// Why it ended (see [`SessionRecord::end_reason`]).
        reason: Cow<'a, str>,
        /// How many transactions it had.
        transactions: usize,
    },
}

/// Where the journal goes: memory (for tests), a JSONL file (for other processes), or both.
#[derive(Debug)]
pub(crate) struct JournalSink {
    keep: bool,
    sessions: Mutex<BTreeMap<u64, SessionRecord>>,
    file: Mutex<Option<BufWriter<File>>>,
}

impl JournalSink {
    /// In memory only (or nowhere, when `keep_in_memory` is false).
    pub fn memory(keep_in_memory: bool) -> Self {
        Self {
            keep: keep_in_memory,
            sessions: Mutex::new(BTreeMap::new()),
            file: Mutex::new(None),
        }
    }

    /// Also appended to a JSON-lines file.
    pub fn with_file(keep_in_memory: bool, path: &Path) -> std::io::Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let me = Self::memory(keep_in_memory);
        *me.file.lock().unwrap_or_else(PoisonError::into_inner) = Some(BufWriter::new(f));
        Ok(me)
    }

    fn write_line(&self, line: &JournalLine<'_>) {
        let mut guard = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = guard.as_mut() {
            let res = serde_json::to_writer(&mut *f, line)
                .map_err(std::io::Error::other)
                .and_then(|()| f.write_all(b"\n"))
                .and_then(|()| f.flush());
            if let Err(e) = res {
                tracing::error!("journal write failed: {e}");
            }
        }
    }

    pub fn session_start(&self, rec: &SessionRecord) {
        if self.keep {
            self.sessions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(rec.id, rec.clone());
        }
        self.write_line(&JournalLine::SessionStart {
            session: rec.id,
            peer: rec.peer,
            at: rec.started_at,
        });
    }

    pub fn ehlo(&self, id: u64, name: &str) {
        if self.keep {
            if let Some(s) = self
                .sessions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_mut(&id)
            {
                s.ehlo = Some(name.to_string());
            }
        }
    }

    pub fn transaction(&self, id: u64, peer: SocketAddr, ehlo: Option<&str>, t: TransactionRecord) {
        self.write_line(&JournalLine::Transaction {
            session: id,
            peer,
            ehlo: ehlo.map(Cow::Borrowed),
            record: Cow::Borrowed(&t),
        });
        if self.keep {
            if let Some(s) = self
                .sessions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_mut(&id)
            {
                s.transactions.push(t);
            }
        }
    }

    pub fn session_end(
        &self,
        id: u64,
        peer: SocketAddr,
        ehlo: Option<&str>,
        at: Timestamp,
        reason: &str,
        transactions: usize,
    ) {
        if self.keep {
            if let Some(s) = self
                .sessions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_mut(&id)
            {
                s.ended_at = Some(at);
                s.end_reason = Some(reason.to_string());
            }
        }
        self.write_line(&JournalLine::SessionEnd {
            session: id,
            peer,
            ehlo: ehlo.map(Cow::Borrowed),
            at,
            reason: Cow::Borrowed(reason),
            transactions,
        });
    }

    pub fn snapshot(&self) -> Journal {
        Journal {
            sessions: self
                .sessions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .cloned()
                .collect(),
        }
    }

    pub fn clear(&self) {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn txn(from: &str, rcpts: &[(&str, u16)], accepted: bool, t: i64) -> TransactionRecord {
        TransactionRecord {
            mail_from: from.into(),
            declared_size: Some(10),
            mail_params: Vec::new(),
            rcpts: rcpts
                .iter()
                .map(|(a, c)| RcptRecord {
                    addr: (*a).into(),
                    code: *c,
                    reply: format!("{c} <{a}>"),
                })
                .collect(),
            data_code: Some(354),
            data_reply: accepted.then(|| "250 2.6.0 <1@mx> Queued".to_string()),
            accepted,
            queue_id: accepted.then(|| "<1@mx>".to_string()),
            bytes: 42,
            sha256: "ab".into(),
            body: None,
            started_at: at(t),
            data_started_at: Some(at(t + 1)),
            ended_at: at(t + 2),
            tls: None,
            user: None,
        }
    }

    /// What the file says is what the mock kept in memory.
    #[test]
    fn a_journal_file_reads_back_as_the_in_memory_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let sink = JournalSink::with_file(true, &path).unwrap();
        let peer: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        for (id, t0) in [(1u64, 0i64), (2, 5)] {
            sink.session_start(&SessionRecord {
                id,
                peer,
                ehlo: None,
                started_at: at(t0),
                ended_at: None,
                end_reason: None,
                transactions: Vec::new(),
            });
            sink.ehlo(id, "client.example");
        }
        sink.transaction(
            1,
            peer,
            Some("client.example"),
            txn("o@l", &[("a@x", 250), ("b@x", 550)], true, 1),
        );
        sink.transaction(
            2,
            peer,
            Some("client.example"),
            txn("o@l", &[("c@x", 451)], false, 6),
        );
        sink.session_end(1, peer, Some("client.example"), at(8), "quit", 1);
        sink.session_end(2, peer, Some("client.example"), at(9), "client-closed", 1);
        let read = Journal::read_file(&path).unwrap();
        assert_eq!(read, sink.snapshot());
        assert_eq!(read.delivered_recipients(), vec!["a@x".to_string()]);
        assert_eq!(Journal::peak_concurrent_sessions(&[&read]), 2);
    }

    /// Two runs appended to one file (session numbers start again): both runs' sessions, in
    /// order; a session still open has no end.
    #[test]
    fn appended_runs_and_an_open_session() {
        let peer: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        let t = txn("o@l", &[("a@x", 250)], true, 1);
        let lines = vec![
            JournalLine::SessionStart {
                session: 1,
                peer,
                at: at(0),
            },
            JournalLine::Transaction {
                session: 1,
                peer,
                ehlo: Some("one".into()),
                record: Cow::Owned(t.clone()),
            },
            JournalLine::SessionEnd {
                session: 1,
                peer,
                ehlo: Some("one".into()),
                at: at(3),
                reason: "quit".into(),
                transactions: 1,
            },
            JournalLine::SessionStart {
                session: 1,
                peer,
                at: at(3),
            },
        ];
        let text: String = lines
            .iter()
            .map(|l| serde_json::to_string(l).unwrap() + "\n")
            .collect();
        let back: Vec<JournalLine<'static>> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(back, lines);
        let j = Journal::from_lines(back);
        assert_eq!(j.sessions.len(), 2);
        assert_eq!(j.sessions[0].transactions, vec![t]);
        assert_eq!(j.sessions[0].ehlo.as_deref(), Some("one"));
        assert_eq!(j.sessions[0].end_reason.as_deref(), Some("quit"));
        assert_eq!(j.sessions[1].ended_at, None);
        // The first ends at the instant the second begins: never two at once.
        assert_eq!(Journal::peak_concurrent_sessions(&[&j]), 1);
    }

    #[test]
    fn a_line_that_is_not_a_journal_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        std::fs::write(&path, "\n{\"kind\":\"nonsense\"}\n").unwrap();
        let e = Journal::read_file(&path).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("j.jsonl"), "{e}");
    }
}
