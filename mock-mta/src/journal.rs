//! The journal: every session and transaction, readable in-process and written as JSON lines.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use jiff::Timestamp;
use serde::Serialize;

/// One RCPT command and the reply it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RcptRecord {
    /// The address as given (without angle brackets).
    pub addr: String,
    /// The reply code.
    pub code: u16,
    /// The full reply line, without CRLF.
    pub reply: String,
}

/// One mail transaction (MAIL ... to its end: the reply after the dot, RSET, QUIT or a drop).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransactionRecord {
    /// The reverse path (empty for the null sender).
    pub mail_from: String,
    /// The `SIZE=` the client declared, if any.
    pub declared_size: Option<u64>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// When MAIL was received.
    pub started_at: Timestamp,
    /// When DATA (or the first BDAT) was received.
    pub data_started_at: Option<Timestamp>,
    /// When the transaction ended.
    pub ended_at: Timestamp,
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
}

/// A line of the JSON-lines journal file.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub(crate) enum JournalLine<'a> {
    /// A session opened.
    SessionStart {
        session: u64,
        peer: SocketAddr,
        at: Timestamp,
    },
    /// A transaction ended.
    Transaction {
        session: u64,
        peer: SocketAddr,
        ehlo: Option<&'a str>,
        #[serde(flatten)]
        record: &'a TransactionRecord,
    },
    /// A session ended.
    SessionEnd {
        session: u64,
        peer: SocketAddr,
        ehlo: Option<&'a str>,
        at: Timestamp,
        reason: &'a str,
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
            ehlo,
            record: &t,
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
            ehlo,
            at,
            reason,
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
