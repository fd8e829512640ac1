//! The durable spool (docs/architecture.md): jobs in, copies out, every recipient accounted for.
//!
//! Layout of a spool directory `SPOOL/`:
//! - `incoming/`   producers drop `*.MAIL` jobs here (see [`crate::job`]); [`submit`] too.
//! - `quarantine/` malformed jobs and entries of `incoming/` that are not jobs or cannot be read,
//!   each with `NAME.reason` beside it.
//! - `spool.db`    SQLite (WAL): jobs (message stored once), copies (at most MAXBSMTP recipients),
//!   failures, per-job delivered/failed counters.
//! - `spool.lock`  held (exclusive `flock`) by the one process that owns the spool.
//! - `spool.id`    written once the database's tables exist; with it, a missing or empty
//!   `spool.db` is damage, never a new spool.
//! - `ledger.jsonl` one JSON line per recipient outcome (see [`crate::ledger`]), unless
//!   [`SpoolOptions::ledger_path`] puts it elsewhere.
//!
//! Durability rule: ingest commits a file's copies (synchronous=FULL for that commit) before it
//! removes the file; [`Spool::complete`] appends and `fdatasync`s the ledger, then commits SQLite,
//! then returns. Claims are only marked in memory, so after a crash the copies in flight are
//! simply queued again: a restart repeats at most the transactions that were in flight.
//!
//! Faults: an outcome that cannot be recorded (a full disk) is kept and retried until it is, and
//! nothing is claimed meanwhile ([`Spool::recording_error`]); a spool that cannot be read (a lost
//! database, a damaged write-ahead log or page) is refused at open with what is wrong and how to
//! recover ([`SpoolError::Damaged`]), never taken for an empty one.

use std::future::Future;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::config::{Pool, PoolSet, SiteConfig, DEFAULT_MAX_BSMTP};
use crate::job::{JobWriter, WriteError};

mod accept;
mod check;
mod group;
mod index;
mod ingest;
mod owner;
pub(crate) mod policy;
pub mod postgres;
mod sqlite;

pub use ingest::{is_job_name, list_incoming, EntryKind, IncomingFile, ASIDE_FIRST, ASIDE_MAX};
pub use owner::{engine_state, EngineState};
pub use postgres::{PgOptions, PgSpool};
pub use sqlite::{read_stats, SqliteSpool};

thread_local! {
    /// Whether this thread runs one of the daemon's own single-threaded event loops (the SMTP
    /// listener's), on real time.
    static OWN_LOOP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Mark the calling thread as running one of the daemon's own single-threaded event loops: the
/// spool's threads then wake its tasks directly, as they do on the multi-threaded runtime,
/// instead of through tokio's blocking pool (which only tests on paused time need).
pub(crate) fn mark_own_loop() {
    OWN_LOOP.with(|c| c.set(true));
}

/// Whether [`mark_own_loop`] was called on this thread.
pub(crate) fn on_own_loop() -> bool {
    OWN_LOOP.with(|c| c.get())
}

/// Folder names inside a spool directory.
pub const INCOMING: &str = "incoming";
/// Where malformed jobs and unreadable entries go, each with `NAME.reason`.
pub const QUARANTINE: &str = "quarantine";
/// The SQLite database.
pub const DB_FILE: &str = "spool.db";
/// The lock held by the process that owns the spool.
pub const LOCK_FILE: &str = "spool.lock";
/// The ledger's default file name.
pub const LEDGER_FILE: &str = "ledger.jsonl";
/// Written when a spool is created: a spool with this file but without its database tables has
/// lost its database, and is refused rather than taken for an empty one.
pub const MARKER_FILE: &str = "spool.id";

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
    /// Where the outcomes recorded are counted ([`crate::metrics::Metrics::recorded`], once
    /// durable): share it with the engine's.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// MAXBSMTP as a reload set it ([`Spool::set_max_bsmtp`]; 0: not reloaded, `max_bsmtp`
    /// holds); shared by the clones of these options. Read it through
    /// [`SpoolOptions::split_size`].
    pub reloaded_max_bsmtp: Arc<std::sync::atomic::AtomicU32>,
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
            metrics: crate::metrics::Metrics::new(),
            reloaded_max_bsmtp: Arc::new(std::sync::atomic::AtomicU32::new(0)),
        }
    }
}

impl SpoolOptions {
    /// The spool settings SITE.CFG gives (MAXBSMTP, SORT_RECIPIENTS, the postings pool of
    /// DEFAULT_LIST_POOL), everything else at its default: the one way to derive them, so that an
    /// embedder cannot forget one. Callers then set what is theirs (the ledger's place, the
    /// lifetime).
    pub fn from_site(site: &SiteConfig) -> Self {
        Self {
            max_bsmtp: site.max_bsmtp,
            sort_recipients: site.sort_recipients,
            default_pool: site.default_list_pool.postings,
            ..Self::default()
        }
    }

    /// The most recipients in one copy of a job ingested now: MAXBSMTP as the last reload set
    /// it, else as at start (OPS-8); at least 1.
    pub fn split_size(&self) -> u32 {
        match self
            .reloaded_max_bsmtp
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => self.max_bsmtp,
            n => n,
        }
        .max(1)
    }

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

/// A whole job handed to [`Spool::accept`]: what a listener received in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    /// Envelope sender, without brackets ("" for the null sender).
    pub mail_from: String,
    /// Its pool; `None`: the spool's default pool (DEFAULT_LIST_POOL).
    pub pool: Option<Pool>,
    /// At least one recipient, each a valid address.
    pub rcpts: Vec<String>,
    /// The message, unstuffed, CRLF line endings.
    pub message: bytes::Bytes,
    /// Where it came from, kept with the job (e.g. `smtp:127.0.0.1:40312`).
    pub source: String,
}

/// A copy handed to a worker: one SMTP transaction's worth of a job.
#[derive(Debug, Clone)]
pub struct ClaimedCopy {
    /// The copy's id.
    pub copy_id: i64,
    /// The id of the job it belongs to.
    pub job_id: i64,
    /// The job's pool.
    pub pool: Pool,
    /// Envelope sender, without brackets ("" for the null sender).
    pub mail_from: String,
    /// The copy's recipients (at most MAXBSMTP).
    pub rcpts: Vec<String>,
    /// The message, unstuffed, CRLF line endings (shared between copies of a job).
    pub message: bytes::Bytes,
    /// Earlier attempts of this copy that ended with deferred recipients.
    pub attempts: u32,
    /// When the job was ingested (its lifetime runs from here).
    pub job_created: jiff::Timestamp,
}

pub use crate::outcome::Outcome;

/// A recipient's outcome with the reply that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptOutcome {
    /// Delivered, failed or deferred.
    pub outcome: Outcome,
    /// The relay's reply, e.g. `250 2.6.0 <id> Queued mail for delivery`.
    pub reply: String,
}

/// What a worker reports for a claimed copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyResult {
    /// `host:port` of the relay, if one answered.
    pub relay: Option<String>,
    /// The TLS version the transactions went over (`TLSv1.3`); `None`: plaintext (TXN-11).
    pub tls: Option<&'static str>,
    /// One per [`ClaimedCopy::rcpts`], same order.
    pub rcpts: Vec<RcptOutcome>,
}

/// What one [`Spool::ingest_incoming`] pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IngestReport {
    /// Files read and removed from `incoming/` after their commit.
    pub files: u64,
    /// Jobs read.
    pub jobs: u64,
    /// Copies queued.
    pub copies: u64,
    /// Recipients queued.
    pub recipients: u64,
    /// Files moved to `quarantine/`, with the reason.
    pub quarantined: Vec<Quarantined>,
    /// Jobs with message lines folded for being longer than SMTP allows.
    pub folded: Vec<Folded>,
    /// Entries found this pass that could be neither read (or used) nor moved to quarantine:
    /// each is reported here once, then looked at again with back-off (1 min doubling to 1 h).
    pub set_aside: Vec<SetAside>,
    /// Every entry this pass left in `incoming/` because it can be neither read nor moved (the
    /// ones of `set_aside` and those set aside earlier, waiting for their next look).
    pub stuck: Vec<SetAside>,
    /// Names set aside earlier that were ingested or quarantined this pass.
    pub resumed: Vec<String>,
}

/// A job whose long message lines were folded at ingest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Folded {
    /// The file's name in `incoming/`.
    pub file: String,
    /// The job's `MAIL FROM` line in the file.
    pub line: u64,
    /// How many message lines were folded.
    pub lines: u64,
}

/// An entry of `incoming/` left where it is: it can be neither read nor moved to quarantine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SetAside {
    /// Its full path.
    pub file: PathBuf,
    /// The name in `incoming/`.
    pub name: String,
    /// What is wrong with it, and why it could not be moved.
    pub reason: String,
}

/// A file moved to quarantine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quarantined {
    /// Where it is now.
    pub file: PathBuf,
    /// Why it was moved (also in `NAME.reason` beside it).
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
    /// The pool.
    pub pool: Pool,
    /// The state.
    pub state: CopyState,
    /// Copies.
    pub copies: u64,
    /// Recipients.
    pub recipients: u64,
    /// Age of the oldest job among these copies, in seconds.
    pub oldest_age_secs: u64,
}

/// The queue at a glance; totals are counted in recipients.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// Recipients still queued (ready, deferred or in flight).
    pub queued: u64,
    /// Recipients delivered since the spool was created.
    pub delivered: u64,
    /// Recipients failed since the spool was created.
    pub failed: u64,
    /// Copies still queued.
    pub copies: u64,
    /// Jobs with copies still queued.
    pub jobs: u64,
    /// Age of the oldest queued job, in seconds.
    pub oldest_age_secs: u64,
    /// Entries named `*.MAIL` waiting in `incoming/` (not yet ingested, quarantined or set
    /// aside): what [`list_incoming`] counts as incoming work.
    pub incoming_files: u64,
    /// The queue by pool and state.
    pub pools: Vec<PoolStats>,
    /// The most frequent replies of failed recipients (at most 20), most frequent first.
    pub failure_reasons: Vec<FailureReason>,
}

/// How many recipients failed with one reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureReason {
    /// The reply.
    pub reply: String,
    /// How many recipients failed with it.
    pub recipients: u64,
}

/// Why the spool failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {0}: another process holds the lock {1}")]
    /// Another process owns the spool (its directory, then the lock file).
    Locked(PathBuf, PathBuf),
    // The inner errors are part of the message, not `source()`, so that `{:#}` chains do
    // not print them twice.
    #[error("spool database: {0}")]
    /// The database refused an operation.
    Db(rusqlite::Error),
    #[error("{context}: {}", describe_io(.error))]
    /// A file operation failed.
    Io {
        /// What was being done.
        context: String,
        /// The error.
        error: std::io::Error,
    },
    #[error("the disk holding {} is full ({detail}); free space there", .path.display())]
    /// The disk is full: nothing more can be recorded until space returns.
    DiskFull {
        /// The file or directory being written.
        path: PathBuf,
        /// The system's error.
        detail: String,
    },
    #[error("copy {0} is not claimed")]
    /// An outcome for a copy that is not claimed.
    NotClaimed(i64),
    #[error("copy {copy}: {got} outcomes for {expected} recipients")]
    /// A worker reported a different number of outcomes than the copy has recipients.
    OutcomeCount {
        /// The copy.
        copy: i64,
        /// Its recipients.
        expected: usize,
        /// The outcomes reported.
        got: usize,
    },
    #[error("invalid job: {0}")]
    /// A job that cannot be written (submit).
    Job(WriteError),
    #[error("the spool's writer thread has stopped")]
    /// The writer thread ended (the spool is closing).
    WriterGone,
    #[error("copy {0}: its outcomes could not be recorded before the spool closed ({1}); it stays queued and the next run sends it again")]
    /// A copy's outcomes were not recorded before the spool closed.
    Unrecorded(i64, String),
    #[error("PostgreSQL spool: {0}")]
    /// The PostgreSQL spool failed (the URL's password is never in the text).
    Postgres(String),
    #[error("a live node named {0} already uses this spool database (two nodes cannot share a name: give this one another NODE=, or stop the other)")]
    /// Another live node already has this NODE name.
    NodeTaken(String),
    #[error("spool database is corrupt: {0}")]
    /// The database or a job holds what smtpw never writes there.
    Corrupt(String),
    #[error("{}", damaged_message(.dir, .file, .problem))]
    /// The spool cannot be read: what is wrong and how to recover.
    Damaged {
        /// The spool directory.
        dir: PathBuf,
        /// The damaged (or missing) file.
        file: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
}

/// What is wrong, and what the operator can do about it.
fn damaged_message(dir: &Path, file: &Path, problem: &str) -> String {
    let db = dir.join(DB_FILE);
    format!(
        "the spool {dir} is damaged: {file}: {problem}. It is not opened, so that the queue it \
         held is not taken for an empty one. To recover: stop every smtpw using it and keep a \
         copy of the whole directory; `sqlite3 {db} .recover | sqlite3 recovered.db` saves what \
         SQLite can still read (then put recovered.db in place of {DB_FILE} and remove \
         {DB_FILE}-wal and {DB_FILE}-shm); the ledger holds every outcome recorded so far. To \
         start over instead, move the directory aside and submit again the jobs that were queued",
        dir = dir.display(),
        file = file.display(),
        db = db.display(),
    )
}

impl SpoolError {
    pub(crate) fn io(context: impl Into<String>, error: std::io::Error) -> Self {
        SpoolError::Io {
            context: context.into(),
            error,
        }
    }

    /// Did it fail for want of disk space (or quota)? Such a failure passes once space returns.
    pub fn is_disk_full(&self) -> bool {
        match self {
            SpoolError::DiskFull { .. } => true,
            SpoolError::Io { error, .. } => is_io_full(error),
            SpoolError::Db(e) => is_db_full(e),
            _ => false,
        }
    }
}

/// An I/O error as the operator reads it: a full disk (or quota) is said in plain words.
fn describe_io(e: &std::io::Error) -> String {
    if is_io_full(e) {
        format!("the disk is full ({e})")
    } else {
        e.to_string()
    }
}

fn is_io_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// SQLite's "database or disk is full".
pub(crate) fn is_db_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
}

impl From<rusqlite::Error> for SpoolError {
    fn from(e: rusqlite::Error) -> Self {
        SpoolError::Db(e)
    }
}

impl From<WriteError> for SpoolError {
    /// A job that cannot be written is a bad job only if its content is at fault; a failed
    /// write (a full disk) is an I/O error.
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Io(io) => SpoolError::io("writing a job", io),
            other => SpoolError::Job(other),
        }
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
    /// Up to `n` of the oldest ready copies among `pools`, oldest first, each in flight as
    /// [`Spool::claim`] leaves it, holding at most `max_rcpts` recipients together: the copies
    /// are taken in order and the first one that would go over the budget ends the claim (it is
    /// not taken, nor is any copy after it), so a budget smaller than the oldest copy claims
    /// nothing. Fewer (or none) when fewer are claimable. What a worker claims ahead for one
    /// connection, its recipients counted against MAXBSMTP (the crash bound, TXN-13): a spool
    /// knows each copy's recipient count before it takes it, and reads the copies together
    /// where it can (the SQLite spool in one read transaction, the PostgreSQL spool in one
    /// statement). Copies claimed before an error are returned, not lost: the error is
    /// returned only when nothing was claimed.
    fn claim_many(
        &self,
        pools: PoolSet,
        n: usize,
        max_rcpts: usize,
    ) -> impl Future<Output = Result<Vec<ClaimedCopy>, SpoolError>> + Send;
    /// Record several claimed copies' outcomes, each as [`Spool::complete`] would; returns once
    /// all of them are durable, with one result per copy in the order given. A spool records
    /// them as one request to its writer (one group commit, one answer); this default runs the
    /// `complete`s together.
    ///
    /// A worker polls the future once as it hands the outcomes over, with a waker that wakes
    /// nobody, and then only when it needs the answer (at its bound of outstanding completions,
    /// and before it stops): a spool should hand the outcomes to its writer at the first poll,
    /// as both spools do, and only wait for the answer after that.
    fn complete_many(
        &self,
        results: Vec<(i64, CopyResult)>,
    ) -> impl Future<Output = Vec<Result<(), SpoolError>>> + Send {
        let futs: Vec<_> = results
            .into_iter()
            .map(|(id, r)| self.complete(id, r))
            .collect();
        group::join_all(futs)
    }
    /// Give a claimed copy back untouched; it is claimable again at once. A copy whose
    /// outcomes were handed to [`Spool::complete`] was sent: it is not given back.
    fn release(&self, copy_id: i64);
    /// Whether a job created at `job_created` has outlived the spool's lifetime at `now`
    /// ([`SpoolOptions::expired`]): a claimed copy of it that cannot be delivered is then
    /// completed (its recipients fail) instead of given back.
    fn has_expired(&self, job_created: jiff::Timestamp, now: jiff::Timestamp) -> bool;
    /// A reload changed MAXBSMTP (OPS-8): the jobs ingested from now on are split by `n`.
    fn set_max_bsmtp(&self, n: u32);
    /// The earliest time a deferred copy of `pools` becomes claimable.
    fn next_due(&self, pools: PoolSet) -> Option<jiff::Timestamp>;
    /// Notified (`notify_waiters`) when copies become claimable through ingest or release.
    /// Deferred copies falling due are not notified: sleep until [`Spool::next_due`].
    /// To avoid missing a wake-up, `enable()` the `Notified` future before calling `claim`.
    fn notify(&self) -> Arc<tokio::sync::Notify>;
    /// Copies still queued (ready, deferred, being claimed or in flight), from memory: cheap
    /// enough to poll.
    fn queued_copies(&self) -> u64;
    /// Why outcomes cannot be recorded right now (a full disk...), while that lasts: the spool
    /// keeps them and retries, and claims nothing meanwhile. `None` when all is well.
    fn recording_error(&self) -> Option<String> {
        None
    }
    /// Store a whole job (its copies split and ordered as ingest does) and return its id once
    /// it is durable: committed and synced, so a crash after the answer loses nothing. Jobs
    /// accepted at once share a commit (one disk flush for all of them). On error nothing of
    /// the job is stored; [`SpoolError::is_disk_full`] says whether it is worth trying later.
    fn accept(&self, job: NewJob) -> impl Future<Output = Result<i64, SpoolError>> + Send;
    /// Copies and recipients per pool and state, and totals.
    fn stats(&self) -> impl Future<Output = Result<QueueStats, SpoolError>> + Send;
    /// An operator's flush (OPS-6): every deferred copy of `pools` becomes claimable now, in
    /// memory and in the store (so a restart keeps it due). Wakes idle workers. Returns how many.
    fn flush(&self, pools: PoolSet) -> impl Future<Output = Result<u64, SpoolError>> + Send;
    /// For an operator's cancel (OPS-7): claim every queued copy of job `job_id` that no worker
    /// holds, as [`Spool::claim`] would (the caller completes each, its recipients failed).
    /// Also returns how many of the job's copies are held by workers right now (in flight):
    /// those are left alone; call again once they are back.
    fn claim_job(
        &self,
        job_id: i64,
    ) -> impl Future<Output = Result<(Vec<ClaimedCopy>, u64), SpoolError>> + Send;
    /// The queued jobs (oldest first), at most `limit`, of `pool` if given: what
    /// `GET /api/v1/jobs` lists.
    fn jobs(
        &self,
        pool: Option<Pool>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<JobSummary>, SpoolError>> + Send;
}

/// A queued job as an operator lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobSummary {
    /// The job's id (as in the ledger and the listener's 250 reply).
    pub id: i64,
    /// The delivery pool it goes through.
    pub pool: Pool,
    /// Envelope sender.
    pub mail_from: String,
    /// When it was queued.
    pub created: jiff::Timestamp,
    /// Recipients in all, delivered, failed, and still queued (ready, deferred or in flight).
    pub recipients: u64,
    /// Recipients delivered.
    pub delivered: u64,
    /// Recipients failed.
    pub failed: u64,
    /// Recipients still queued.
    pub queued: u64,
    /// Of the queued: those waiting for a retry time.
    pub deferred: u64,
    /// Copies still queued.
    pub copies: u64,
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
    try_submit::<std::convert::Infallible>(spool_dir, mail_from, pool, rcpts.map(Ok), message)
        .map_err(|e| match e {
            SubmitError::Input(never) => match never {},
            SubmitError::Spool(e) => e,
        })
}

/// Why [`try_submit`] failed: the recipients' source gave an error (the input's own, e.g. a
/// bad line of a file), or the spool did.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError<E> {
    #[error("{0}")]
    /// The recipients' source failed.
    Input(E),
    #[error(transparent)]
    /// The spool failed.
    Spool(#[from] SpoolError),
}

/// [`submit`] with recipients from a source that can fail: at its first error nothing is
/// queued (the temporary file is removed before it ever gets a `.MAIL` name) and the error is
/// returned as [`SubmitError::Input`].
pub fn try_submit<E>(
    spool_dir: &Path,
    mail_from: &str,
    pool: Option<Pool>,
    rcpts: impl Iterator<Item = Result<String, E>>,
    message: impl Read,
) -> Result<PathBuf, SubmitError<E>> {
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
            Err(e) => return Err(SpoolError::io(format!("creating {}", p.display()), e).into()),
        }
    };
    let mut failed: Option<E> = None;
    let result = (|| -> Result<PathBuf, SubmitError<E>> {
        // A write that fails is the disk's fault (say which file, e.g. "No space left on
        // device"), not the job's.
        let writing =
            |e: std::io::Error| SpoolError::io(format!("writing {}", tmp_path.display()), e);
        let job_error = |e: WriteError| match e {
            WriteError::Io(e) => writing(e),
            other => SpoolError::Job(other),
        };
        let mut w = JobWriter::new(BufWriter::with_capacity(256 * 1024, file));
        let rcpts = rcpts.map_while(|r| r.map_err(|e| failed = Some(e)).ok());
        let written = w.job(mail_from, pool, rcpts, message);
        if let Some(e) = failed.take() {
            return Err(SubmitError::Input(e));
        }
        written.map_err(job_error)?;
        let buffered = w.finish().map_err(job_error)?;
        let file = buffered.into_inner().map_err(|e| writing(e.into_error()))?;
        file.sync_all()
            .map_err(|e| SpoolError::io(format!("syncing {}", tmp_path.display()), e))?;
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
                Err(e) => {
                    return Err(SpoolError::io(format!("linking {}", name.display()), e).into())
                }
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
