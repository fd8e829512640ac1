//! The durable spool (DESIGN §2, §5): jobs in, copies out, every recipient accounted for.
//!
//! Layout of a spool directory `SPOOL/`:
//! - `incoming/`   producers drop `*.MAIL` jobs here (see [`crate::job`]); [`submit`] too.
//! - `quarantine/` malformed jobs, each with `NAME.reason` beside it.
//! - `spool.db`    SQLite (WAL): jobs (message stored once), copies (at most MAXBSMTP recipients),
//!   failures, per-job delivered/failed counters.
//! - `spool.lock`  held (exclusive `flock`) by the one process that owns the spool.
//! - `ledger.jsonl` one JSON line per recipient outcome (see [`crate::ledger`]), unless
//!   [`SpoolOptions::ledger_path`] puts it elsewhere.
//!
//! Durability rule: ingest commits a file's copies (synchronous=FULL for that commit) before it
//! removes the file; [`Spool::complete`] appends and `fdatasync`s the ledger, then commits SQLite,
//! then returns. Claims are only marked in memory, so after a crash the copies in flight are
//! simply queued again: a restart repeats at most the transactions that were in flight.

use std::future::Future;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::config::{Pool, PoolSet, DEFAULT_MAX_BSMTP};
use crate::job::{JobWriter, WriteError};

mod ingest;
mod sqlite;

pub use ingest::{is_job_name, list_incoming};
pub use sqlite::{read_stats, SqliteSpool};

/// Folder names inside a spool directory.
pub const INCOMING: &str = "incoming";
pub const QUARANTINE: &str = "quarantine";
pub const DB_FILE: &str = "spool.db";
pub const LOCK_FILE: &str = "spool.lock";
pub const LEDGER_FILE: &str = "ledger.jsonl";

/// How the spool splits, retries and bounds jobs.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// MAXBSMTP: most recipients in one copy.
    pub max_bsmtp: u32,
    /// SORT_RECIPIENTS 0, 1 or 2.
    pub sort_recipients: u8,
    /// The pool of jobs without `POOL=`.
    pub default_pool: Pool,
    /// First back-off after a deferral; doubles per attempt.
    pub retry_base: Duration,
    /// Back-off cap.
    pub retry_max: Duration,
    /// A deferred recipient of a job older than this fails with its last reply (see
    /// [`SpoolOptions::expired`]).
    pub lifetime: Duration,
    /// Default `SPOOL/ledger.jsonl`.
    pub ledger_path: Option<PathBuf>,
    /// Largest message (unstuffed, CRLF) a job may carry; larger jobs are quarantined.
    pub max_message_bytes: u64,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        Self {
            max_bsmtp: DEFAULT_MAX_BSMTP,
            sort_recipients: 0,
            default_pool: Pool::DEFAULT,
            retry_base: Duration::from_secs(30),
            retry_max: Duration::from_secs(15 * 60),
            lifetime: Duration::from_secs(5 * 24 * 3600),
            ledger_path: None,
            max_message_bytes: 64 * 1024 * 1024,
        }
    }
}

impl SpoolOptions {
    /// Whether a job created at `job_created` has outlived the lifetime at `now`: then whatever
    /// kept a recipient from being delivered (a 4yz reply, a lost connection, a host that could
    /// not be reached) fails it instead of deferring it. The one place this rule lives.
    pub fn expired(&self, job_created: jiff::Timestamp, now: jiff::Timestamp) -> bool {
        let lifetime =
            jiff::SignedDuration::try_from(self.lifetime).unwrap_or(jiff::SignedDuration::MAX);
        now.duration_since(job_created) > lifetime
    }

    /// The back-off before attempt `attempts + 1`, after `attempts` earlier deferrals of a copy:
    /// `retry_base * 2^attempts`, capped at `retry_max`.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let factor = 1u32.checked_shl(attempts.min(31)).unwrap_or(u32::MAX);
        self.retry_base
            .checked_mul(factor)
            .unwrap_or(self.retry_max)
            .min(self.retry_max)
    }
}

/// A copy handed to a worker: one SMTP transaction's worth of a job.
#[derive(Debug, Clone)]
pub struct ClaimedCopy {
    pub copy_id: i64,
    pub job_id: i64,
    pub pool: Pool,
    /// Envelope sender, without brackets ("" for the null sender).
    pub mail_from: String,
    pub rcpts: Vec<String>,
    /// The message, unstuffed, CRLF line endings (shared between copies of a job).
    pub message: bytes::Bytes,
    /// Earlier attempts of this copy that ended with deferred recipients.
    pub attempts: u32,
    pub job_created: jiff::Timestamp,
}

/// The fate of one recipient in one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Delivered,
    Failed,
    Deferred,
}

/// A recipient's outcome with the reply that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptOutcome {
    pub outcome: Outcome,
    /// The relay's reply, e.g. `250 2.6.0 <id> Queued mail for delivery`.
    pub reply: String,
}

/// What a worker reports for a claimed copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyResult {
    /// `host:port` of the relay, if one answered.
    pub relay: Option<String>,
    /// One per [`ClaimedCopy::rcpts`], same order.
    pub rcpts: Vec<RcptOutcome>,
}

/// What one [`Spool::ingest_incoming`] pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IngestReport {
    /// Files read and removed from `incoming/` after their commit.
    pub files: u64,
    pub jobs: u64,
    pub copies: u64,
    pub recipients: u64,
    /// Files moved to `quarantine/`, with the reason.
    pub quarantined: Vec<Quarantined>,
}

/// A file moved to quarantine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quarantined {
    pub file: PathBuf,
    pub reason: String,
}

/// Where a queued copy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyState {
    /// Claimable now.
    Ready,
    /// Waiting for its back-off.
    Deferred,
    /// Claimed by a worker (only the owning process knows this).
    InFlight,
}

/// Copies and recipients of one pool in one state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolStats {
    pub pool: Pool,
    pub state: CopyState,
    pub copies: u64,
    pub recipients: u64,
    /// Age of the oldest job among these copies, in seconds.
    pub oldest_age_secs: u64,
}

/// The queue at a glance; totals are counted in recipients.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// Recipients still queued (ready, deferred or in flight).
    pub queued: u64,
    pub delivered: u64,
    pub failed: u64,
    /// Copies still queued.
    pub copies: u64,
    pub jobs: u64,
    /// Age of the oldest queued job, in seconds.
    pub oldest_age_secs: u64,
    /// `*.MAIL` files waiting in `incoming/` (not yet ingested).
    pub incoming_files: u64,
    pub pools: Vec<PoolStats>,
    /// The most frequent replies of failed recipients (at most 20), most frequent first.
    pub failure_reasons: Vec<FailureReason>,
}

/// How many recipients failed with one reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureReason {
    pub reply: String,
    pub recipients: u64,
}

/// Why the spool failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {0}: another process holds the lock {1}")]
    Locked(PathBuf, PathBuf),
    // The inner errors are part of the message, not `source()`, so that `{:#}` chains do
    // not print them twice.
    #[error("spool database: {0}")]
    Db(rusqlite::Error),
    #[error("{context}: {error}")]
    Io {
        context: String,
        error: std::io::Error,
    },
    #[error("copy {0} is not claimed")]
    NotClaimed(i64),
    #[error("copy {copy}: {got} outcomes for {expected} recipients")]
    OutcomeCount {
        copy: i64,
        expected: usize,
        got: usize,
    },
    #[error("invalid job: {0}")]
    Job(WriteError),
    #[error("the spool's writer thread has stopped")]
    WriterGone,
    #[error("spool database is corrupt: {0}")]
    Corrupt(String),
}

impl SpoolError {
    pub(crate) fn io(context: impl Into<String>, error: std::io::Error) -> Self {
        SpoolError::Io {
            context: context.into(),
            error,
        }
    }
}

impl From<rusqlite::Error> for SpoolError {
    fn from(e: rusqlite::Error) -> Self {
        SpoolError::Db(e)
    }
}

impl From<WriteError> for SpoolError {
    fn from(e: WriteError) -> Self {
        SpoolError::Job(e)
    }
}

/// The engine's view of a spool. Async methods return `Send` futures.
pub trait Spool: Send + Sync + 'static {
    /// Ingest every ready `*.MAIL` file in `SPOOL/incoming`, oldest first; quarantine bad ones.
    fn ingest_incoming(&self) -> impl Future<Output = Result<IngestReport, SpoolError>> + Send;
    /// The oldest ready copy among `pools` (by creation), now marked in flight; `None` if none.
    fn claim(
        &self,
        pools: PoolSet,
    ) -> impl Future<Output = Result<Option<ClaimedCopy>, SpoolError>> + Send;
    /// Record a claimed copy's outcomes; returns once they are durable (ledger and database).
    fn complete(
        &self,
        copy_id: i64,
        result: CopyResult,
    ) -> impl Future<Output = Result<(), SpoolError>> + Send;
    /// Give a claimed copy back untouched; it is claimable again at once.
    fn release(&self, copy_id: i64);
    /// Whether a job created at `job_created` has outlived the spool's lifetime at `now`
    /// ([`SpoolOptions::expired`]): a claimed copy of it that cannot be delivered is then
    /// completed (its recipients fail) instead of given back.
    fn has_expired(&self, job_created: jiff::Timestamp, now: jiff::Timestamp) -> bool;
    /// Give a claimed copy back untouched, claimable again from `not_before` (memory only: a
    /// restart makes it ready at once).
    fn release_until(&self, copy_id: i64, not_before: jiff::Timestamp);
    /// The earliest time a deferred copy of `pools` becomes claimable.
    fn next_due(&self, pools: PoolSet) -> Option<jiff::Timestamp>;
    /// Notified (`notify_waiters`) when copies become claimable through ingest or release.
    /// Deferred copies falling due are not notified: sleep until [`Spool::next_due`].
    /// To avoid missing a wake-up, `enable()` the `Notified` future before calling `claim`.
    fn notify(&self) -> Arc<tokio::sync::Notify>;
    /// Copies still queued (ready, deferred or in flight), from memory: cheap enough to poll.
    fn queued_copies(&self) -> u64;
    /// Copies and recipients per pool and state, and totals.
    fn stats(&self) -> impl Future<Output = Result<QueueStats, SpoolError>> + Send;
}

static SUBMIT_SEQ: AtomicU64 = AtomicU64::new(0);

/// Write a job to `SPOOL/incoming/<unique>.MAIL`: first under a temporary name, flushed to disk,
/// then linked to its final name (never replacing an existing file). Works whether or not a
/// daemon owns the spool. Returns the final path.
pub fn submit(
    spool_dir: &Path,
    mail_from: &str,
    pool: Option<Pool>,
    rcpts: impl Iterator<Item = String>,
    message: impl Read,
) -> Result<PathBuf, SpoolError> {
    let incoming = spool_dir.join(INCOMING);
    std::fs::create_dir_all(&incoming)
        .map_err(|e| SpoolError::io(format!("creating {}", incoming.display()), e))?;
    let pid = std::process::id();
    let (tmp_path, file) = loop {
        let n = SUBMIT_SEQ.fetch_add(1, Ordering::Relaxed);
        let p = incoming.join(format!(".submit-{pid}-{n}.tmp"));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
        {
            Ok(f) => break (p, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(SpoolError::io(format!("creating {}", p.display()), e)),
        }
    };
    let result = (|| -> Result<PathBuf, SpoolError> {
        let mut w = JobWriter::new(BufWriter::with_capacity(256 * 1024, file));
        w.job(mail_from, pool, rcpts, message)?;
        let buffered = w.finish()?;
        let file = buffered
            .into_inner()
            .map_err(|e| SpoolError::io("writing the job", e.into_error()))?;
        file.sync_all()
            .map_err(|e| SpoolError::io("syncing the job", e))?;
        drop(file);
        loop {
            let n = SUBMIT_SEQ.fetch_add(1, Ordering::Relaxed);
            let name = incoming.join(format!("submit-{pid}-{n:08}.MAIL"));
            match std::fs::hard_link(&tmp_path, &name) {
                Ok(()) => {
                    let _ = std::fs::remove_file(&tmp_path);
                    if let Ok(d) = std::fs::File::open(&incoming) {
                        let _ = d.sync_all();
                    }
                    return Ok(name);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(SpoolError::io(format!("linking {}", name.display()), e)),
            }
        }
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp_path);
    }
    result
}

/// Flush helper used by writers of job files.
pub(crate) fn write_all(path: &Path, data: &[u8]) -> Result<(), SpoolError> {
    let mut f = std::fs::File::create(path)
        .map_err(|e| SpoolError::io(format!("creating {}", path.display()), e))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| SpoolError::io(format!("writing {}", path.display()), e))
}
