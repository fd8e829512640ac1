//! The ledger: one JSON line per recipient outcome (QUEUE-1), appended and `fdatasync`ed in
//! batches by the spool's writer before the spool commits, so that every outcome in the spool
//! database is also in the ledger (a crash between the two can only repeat lines, never lose one).
//!
//! A line:
//! `{"time":"2026-11-22T07:30:00.123Z","job":1,"copy":3,"pool":"-","rcpt":"a@b.c","outcome":"delivered","relay":"mx1:25","reply":"250 2.6.0 Queued mail for delivery","attempts":1}`
//! `tls` (e.g. `"tls":"TLSv1.3"`, after `relay`) says the transaction went over TLS and which
//! version; absent: plaintext.
//! `outcome` is `delivered`, `failed` or `deferred` (then `retry_at` says when it is tried again;
//! `expired: true` on a `failed` line means the job outlived the configured lifetime).

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use crate::outcome::Outcome;

/// One ledger line.
///
/// Times are [`Timestamp`]s, written as jiff writes them (RFC 3339 in UTC, `Z`, with as many
/// fractional digits as needed: `2026-11-22T07:30:00.123Z`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerLine {
    /// When the outcome was decided, from the injected clock.
    pub time: Timestamp,
    /// The job's id in the spool.
    pub job: i64,
    /// The copy's id in the spool.
    pub copy: i64,
    /// The pool, as its letter or `-`.
    pub pool: String,
    /// The recipient.
    pub rcpt: String,
    /// What became of the recipient.
    pub outcome: Outcome,
    /// `host:port` of the relay that answered, if any.
    pub relay: Option<String>,
    /// The TLS version of the transaction (`TLSv1.3`); absent: plaintext (TXN-11).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    /// The reply that decided it (or the synthetic one, e.g. a lost connection).
    pub reply: String,
    /// Attempts of this copy so far, this one included.
    pub attempts: u32,
    /// For `deferred`: when it will be tried again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Timestamp>,
    /// For `failed`: true when it failed because the job outlived its lifetime.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expired: bool,
    /// On a database spool: the node that recorded the outcome (CLU-5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A ledger line borrowing its texts: what the spool's writer pushes ([`Ledger::push`] writes the
/// same JSON as [`LedgerLine`], field for field), so a batch costs no allocation per recipient.
#[derive(Debug, Clone, Copy)]
pub struct LedgerLineRef<'a> {
    /// See [`LedgerLine::time`].
    pub time: Timestamp,
    /// See [`LedgerLine::job`].
    pub job: i64,
    /// See [`LedgerLine::copy`].
    pub copy: i64,
    /// See [`LedgerLine::pool`].
    pub pool: &'a str,
    /// See [`LedgerLine::rcpt`].
    pub rcpt: &'a str,
    /// See [`LedgerLine::outcome`].
    pub outcome: Outcome,
    /// See [`LedgerLine::relay`].
    pub relay: Option<&'a str>,
    /// See [`LedgerLine::tls`].
    pub tls: Option<&'a str>,
    /// See [`LedgerLine::reply`].
    pub reply: &'a str,
    /// See [`LedgerLine::attempts`].
    pub attempts: u32,
    /// See [`LedgerLine::retry_at`].
    pub retry_at: Option<Timestamp>,
    /// See [`LedgerLine::expired`].
    pub expired: bool,
}

/// A line as it is written: [`LedgerLine`]'s fields with the times as text.
#[derive(Serialize)]
struct WireLine<'a> {
    time: &'a str,
    job: i64,
    copy: i64,
    pool: &'a str,
    rcpt: &'a str,
    outcome: Outcome,
    relay: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<&'a str>,
    reply: &'a str,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_at: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    expired: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a str>,
}

/// The text of the last time written in one field, as [`Timestamp`]'s `Display` (and so its
/// serde form) writes it. The lines of one copy share their times: each is formatted once per
/// copy, not once per recipient.
#[derive(Debug, Default)]
struct TimeText {
    at: Option<Timestamp>,
    text: String,
}

impl TimeText {
    fn of(&mut self, t: Timestamp) -> io::Result<&str> {
        if self.at != Some(t) {
            use std::fmt::Write as _;
            self.at = None;
            self.text.clear();
            write!(self.text, "{t}")
                .map_err(|_| io::Error::other(format!("cannot format the time {t:?}")))?;
            self.at = Some(t);
        }
        Ok(&self.text)
    }
}

/// The length of the longest prefix of the file (of `len` bytes) that ends with a line feed:
/// read backwards from the end in blocks.
fn whole_lines_len(path: &Path, len: u64) -> io::Result<u64> {
    let mut r = File::open(path)?;
    let mut end = len;
    let mut block = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let n = usize::try_from(end - start).map_err(io::Error::other)?;
        r.seek(SeekFrom::Start(start))?;
        r.read_exact(&mut block[..n])?;
        if let Some(i) = memchr::memrchr(b'\n', &block[..n]) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// An append-only ledger file.
#[derive(Debug)]
pub struct Ledger {
    file: File,
    path: PathBuf,
    /// Lines pushed and not yet written.
    buf: Vec<u8>,
    /// The file's length before a failed write whose bytes could not be cut off yet.
    cut_back_to: Option<u64>,
    /// The last `time` and `retry_at` pushed, as text.
    time: TimeText,
    retry_at: TimeText,
    /// Written on every line when set ([`Ledger::with_node`]).
    node: Option<String>,
}

impl Ledger {
    /// Every line this ledger writes names `node` (a database spool's node, CLU-5).
    pub fn with_node(mut self, node: &str) -> Self {
        self.node = Some(node.to_owned());
        self
    }

    /// Open (create) the ledger for appending.
    pub fn open(path: &Path) -> io::Result<Self> {
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)?;
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        // A crash mid-append can leave a torn last line. Its outcome was never committed to the
        // spool (the ledger is made durable first), so the copy is delivered again and gets a
        // whole line then: cut the fragment off, so that every line of the file stays valid
        // JSON and the next line is not glued to it.
        let len = file.metadata()?.len();
        if len > 0 {
            let keep = whole_lines_len(path, len)?;
            if keep < len {
                file.set_len(keep)?;
                file.sync_data()?;
            }
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            buf: Vec::with_capacity(64 * 1024),
            cut_back_to: None,
            time: TimeText::default(),
            retry_at: TimeText::default(),
            node: None,
        })
    }

    /// The ledger file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append lines and make them durable (`fdatasync`) before returning.
    pub fn append(&mut self, lines: &[LedgerLine]) -> io::Result<()> {
        self.begin();
        for l in lines {
            serde_json::to_writer(&mut self.buf, l).map_err(io::Error::other)?;
            self.buf.push(b'\n');
        }
        self.commit()
    }

    /// Start a batch: forget lines pushed but not committed.
    pub fn begin(&mut self) {
        self.buf.clear();
    }

    /// Add a line to the batch (in memory until [`Ledger::commit`]); on error nothing is added.
    pub fn push(&mut self, line: &LedgerLineRef<'_>) -> io::Result<()> {
        let retry_at = match line.retry_at {
            Some(t) => Some(self.retry_at.of(t)?),
            None => None,
        };
        let wire = WireLine {
            time: self.time.of(line.time)?,
            job: line.job,
            copy: line.copy,
            pool: line.pool,
            rcpt: line.rcpt,
            outcome: line.outcome,
            relay: line.relay,
            tls: line.tls,
            reply: line.reply,
            attempts: line.attempts,
            retry_at,
            expired: line.expired,
            node: self.node.as_deref(),
        };
        let mark = self.buf.len();
        if let Err(e) = serde_json::to_writer(&mut self.buf, &wire) {
            self.buf.truncate(mark);
            return Err(io::Error::other(e));
        }
        self.buf.push(b'\n');
        Ok(())
    }

    /// Write the batch and make it durable (`fdatasync`) before returning; an empty batch
    /// writes nothing.
    ///
    /// A write or sync that fails (a full disk) leaves no part of the batch in the file: the
    /// file is cut back to its length before the batch, and the batch stays pushed, so that
    /// `commit` again retries it whole. Once a commit has succeeded its lines are never
    /// written again.
    pub fn commit(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Some(len) = self.cut_back_to {
            self.cut_back(len)?;
            self.cut_back_to = None;
        }
        let start = self.file.metadata()?.len();
        let written = self
            .file
            .write_all(&self.buf)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            if self.cut_back(start).is_err() {
                self.cut_back_to = Some(start);
            }
            return Err(e);
        }
        self.buf.clear();
        if self.buf.capacity() > 4 * 1024 * 1024 {
            self.buf = Vec::with_capacity(64 * 1024);
        }
        Ok(())
    }

    /// Cut the file back to `len` bytes if a failed write left more.
    fn cut_back(&self, len: u64) -> io::Result<()> {
        if self.file.metadata()?.len() > len {
            self.file.set_len(len)?;
            self.file.sync_data()?;
        }
        Ok(())
    }
}

/// Read a ledger file line by line. A torn last line (a crash mid-write) is skipped.
pub fn read_ledger(path: &Path) -> io::Result<impl Iterator<Item = LedgerLine>> {
    let r = BufReader::new(File::open(path)?);
    Ok(r.lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<LedgerLine>(&l).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// The exact bytes of ledger lines, as written since the first release: a reader of the
    /// ledger (a script, `jq`) sees the same text whatever type the engine holds times in.
    #[test]
    fn a_line_is_pinned_byte_for_byte() {
        let now = t("2026-11-22T07:30:00.123Z");
        let retry = t("2026-11-22T07:30:30.123Z");
        let delivered = LedgerLineRef {
            time: now,
            job: 1,
            copy: 3,
            pool: "-",
            rcpt: "a@b.c",
            outcome: Outcome::Delivered,
            relay: Some("mx1:25"),
            tls: None,
            reply: "250 2.6.0 Queued mail for delivery",
            attempts: 1,
            retry_at: None,
            expired: false,
        };
        let deferred = LedgerLineRef {
            rcpt: "d@e.f",
            outcome: Outcome::Deferred,
            reply: "451 4.3.0 later",
            attempts: 2,
            retry_at: Some(retry),
            ..delivered
        };
        let expired = LedgerLineRef {
            rcpt: "g@h.i",
            outcome: Outcome::Failed,
            relay: None,
            tls: None,
            reply: "451 4.3.0 later",
            attempts: 7,
            expired: true,
            ..delivered
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.jsonl");
        let mut l = Ledger::open(&p).unwrap();
        l.begin();
        for line in [&delivered, &deferred, &expired] {
            l.push(line).unwrap();
        }
        l.commit().unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            concat!(
                r#"{"time":"2026-11-22T07:30:00.123Z","job":1,"copy":3,"pool":"-","rcpt":"a@b.c","outcome":"delivered","relay":"mx1:25","reply":"250 2.6.0 Queued mail for delivery","attempts":1}"#,
                "\n",
                r#"{"time":"2026-11-22T07:30:00.123Z","job":1,"copy":3,"pool":"-","rcpt":"d@e.f","outcome":"deferred","relay":"mx1:25","reply":"451 4.3.0 later","attempts":2,"retry_at":"2026-11-22T07:30:30.123Z"}"#,
                "\n",
                r#"{"time":"2026-11-22T07:30:00.123Z","job":1,"copy":3,"pool":"-","rcpt":"g@h.i","outcome":"failed","relay":null,"reply":"451 4.3.0 later","attempts":7,"expired":true}"#,
                "\n",
            )
        );
        // Read back, the lines are what was written.
        let back: Vec<LedgerLine> = read_ledger(&p).unwrap().collect();
        assert_eq!(back.len(), 3);
        assert_eq!(back[1].retry_at, Some(retry));
        assert_eq!(back[2].time, now);
        assert_eq!(back[0].node, None);
        // A database spool's node names itself on every line, last.
        let q = dir.path().join("n.jsonl");
        let mut l = Ledger::open(&q).unwrap().with_node("N1.EXAMPLE.ORG");
        l.begin();
        l.push(&delivered).unwrap();
        l.commit().unwrap();
        assert_eq!(
            std::fs::read_to_string(&q).unwrap(),
            concat!(
                r#"{"time":"2026-11-22T07:30:00.123Z","job":1,"copy":3,"pool":"-","rcpt":"a@b.c","outcome":"delivered","relay":"mx1:25","reply":"250 2.6.0 Queued mail for delivery","attempts":1,"node":"N1.EXAMPLE.ORG"}"#,
                "\n",
            )
        );
        let back: Vec<LedgerLine> = read_ledger(&q).unwrap().collect();
        assert_eq!(back[0].node.as_deref(), Some("N1.EXAMPLE.ORG"));
    }

    fn timestamp() -> impl Strategy<Value = Timestamp> {
        (
            0i64..4_102_444_800,
            prop_oneof![
                Just(0i32),
                (0i32..1000).prop_map(|ms| ms * 1_000_000),
                0i32..1_000_000_000,
            ],
        )
            .prop_map(|(s, n)| Timestamp::new(s, n).unwrap())
    }

    proptest! {
        /// A time in a line is exactly the text `Timestamp::to_string` gives (what the ledger
        /// held before its times were typed), whether the line is pushed by the spool's writer
        /// (which formats a time once for the lines that share it) or serialized owned, and
        /// reads back as the same instant.
        #[test]
        fn times_are_written_as_to_string_writes_them(
            times in proptest::collection::vec((timestamp(), proptest::option::of(timestamp())), 1..8),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut l = Ledger::open(&dir.path().join("l.jsonl")).unwrap();
            l.begin();
            for (i, (time, retry_at)) in times.iter().enumerate() {
                let line = LedgerLine {
                    time: *time,
                    job: 1,
                    copy: i64::try_from(i).unwrap(),
                    pool: "-".into(),
                    rcpt: "a@b".into(),
                    outcome: if retry_at.is_some() { Outcome::Deferred } else { Outcome::Delivered },
                    relay: None,
                    tls: None,
                    reply: "250 ok".into(),
                    attempts: 1,
                    retry_at: *retry_at,
                    expired: false,
                    node: None,
                };
                let mark = l.buf.len();
                l.push(&borrowed(&line)).unwrap();
                let pushed = std::str::from_utf8(&l.buf[mark..]).unwrap();
                let owned = serde_json::to_string(&line).unwrap() + "\n";
                prop_assert_eq!(pushed, owned.as_str());
                let time_field = format!("{{\"time\":\"{time}\",");
                prop_assert!(pushed.starts_with(&time_field), "{}", pushed);
                if let Some(r) = retry_at {
                    let retry_field = format!(",\"retry_at\":\"{r}\"}}\n");
                    prop_assert!(pushed.ends_with(&retry_field), "{}", pushed);
                }
                let back: LedgerLine = serde_json::from_str(pushed).unwrap();
                prop_assert_eq!(back, line);
            }
        }
    }

    #[test]
    fn append_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.jsonl");
        let mut l = Ledger::open(&p).unwrap();
        let line = LedgerLine {
            time: t("2026-01-01T00:00:00Z"),
            job: 1,
            copy: 2,
            pool: "-".into(),
            rcpt: "a@b".into(),
            outcome: Outcome::Failed,
            relay: Some("h:25".into()),
            tls: None,
            reply: "550 no".into(),
            attempts: 1,
            retry_at: None,
            expired: true,
            node: None,
        };
        l.append(std::slice::from_ref(&line)).unwrap();
        l.append(std::slice::from_ref(&line)).unwrap();
        let back: Vec<_> = read_ledger(&p).unwrap().collect();
        assert_eq!(back, vec![line.clone(), line]);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("\"outcome\":\"failed\""), "{text}");
    }

    #[test]
    fn a_torn_last_line_does_not_swallow_the_next_runs_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.jsonl");
        let line = |rcpt: &str| LedgerLine {
            time: t("2026-01-01T00:00:00Z"),
            job: 1,
            copy: 2,
            pool: "-".into(),
            rcpt: rcpt.into(),
            outcome: Outcome::Delivered,
            relay: Some("h:25".into()),
            tls: None,
            reply: "250 ok".into(),
            attempts: 1,
            retry_at: None,
            expired: false,
            node: None,
        };
        let mut l = Ledger::open(&p).unwrap();
        l.append(&[line("a@b")]).unwrap();
        drop(l);
        // A crash in the middle of the next append leaves half a line.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"time\":\"2026-01-01T00:0").unwrap();
        drop(f);
        let mut l = Ledger::open(&p).unwrap();
        l.append(&[line("c@d")]).unwrap();
        let back: Vec<_> = read_ledger(&p).unwrap().map(|l| l.rcpt).collect();
        assert_eq!(back, vec!["a@b".to_string(), "c@d".to_string()]);
        // The fragment is gone, not kept as a line of its own: a strict JSON-lines reader reads
        // every line.
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        for l in text.lines() {
            serde_json::from_str::<LedgerLine>(l).unwrap_or_else(|e| panic!("{l}: {e}"));
        }
    }

    #[test]
    fn a_ledger_of_only_a_torn_line_is_emptied_and_a_long_fragment_is_cut_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.jsonl");
        std::fs::write(&p, b"{\"time\":\"2026").unwrap();
        drop(Ledger::open(&p).unwrap());
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
        // A fragment longer than the block read backwards.
        let mut body = b"{\"a\":1}\n".to_vec();
        body.extend(std::iter::repeat_n(b'x', 200_000));
        std::fs::write(&p, &body).unwrap();
        drop(Ledger::open(&p).unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"a\":1}\n");
    }

    /// The borrowed line a batch pushes and the owned line a reader gets.
    fn borrowed(o: &LedgerLine) -> LedgerLineRef<'_> {
        LedgerLineRef {
            time: o.time,
            job: o.job,
            copy: o.copy,
            pool: &o.pool,
            rcpt: &o.rcpt,
            outcome: o.outcome,
            relay: o.relay.as_deref(),
            tls: o.tls.as_deref(),
            reply: &o.reply,
            attempts: o.attempts,
            retry_at: o.retry_at,
            expired: o.expired,
        }
    }

    #[test]
    fn borrowed_lines_serialize_as_owned_ones() {
        let owned = |time: &str, retry: Option<&str>, expired| LedgerLine {
            time: t(time),
            job: 1,
            copy: 2,
            pool: "A".into(),
            rcpt: "a@b".into(),
            outcome: Outcome::Deferred,
            relay: None,
            tls: None,
            reply: "451 later".into(),
            attempts: 3,
            retry_at: retry.map(t),
            expired,
            node: None,
        };
        // Times repeat and change from line to line, as in a batch of several copies.
        let lines = [
            owned("2026-01-01T00:00:00Z", None, false),
            owned("2026-01-01T00:00:00Z", Some("2026-01-01T00:01:00Z"), false),
            owned("2026-01-01T00:00:00Z", Some("2026-01-01T00:01:00Z"), false),
            owned(
                "2026-01-01T00:00:00.5Z",
                Some("2026-01-01T00:02:00.5Z"),
                false,
            ),
            owned("2026-01-01T00:00:00Z", Some("2026-01-01T00:01:00Z"), false),
            owned("2026-01-01T00:00:00Z", None, true),
        ];
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.jsonl");
        let mut l = Ledger::open(&p).unwrap();
        l.begin();
        for o in &lines {
            l.push(&borrowed(o)).unwrap();
        }
        l.commit().unwrap();
        let want: String = lines
            .iter()
            .map(|o| serde_json::to_string(o).unwrap() + "\n")
            .collect();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), want);

        let p = dir.path().join("l2.jsonl");
        let mut l = Ledger::open(&p).unwrap();
        l.begin();
        l.push(&borrowed(&lines[0])).unwrap();
        l.begin(); // a batch abandoned before commit leaves nothing behind
        l.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "");
    }
}
