//! The embedded SQLite spool: one file `SPOOL/spool.db` (WAL, synchronous=NORMAL), an in-memory
//! index for claims, and a writer thread that group-commits completions.
//!
//! Schema:
//! - `jobs(id, pool, mail_from, message BLOB, created, source, rcpts, delivered, failed)`:
//!   the message is stored once per job; once no copy of a job is left, its counters are added
//!   to `totals(pool, delivered, failed)` and the row is deleted.
//! - `copies(id, job_id, pool, n, rcpts, replies, attempts, not_before)`: `rcpts` holds the
//!   addresses one per line; after a deferral only the deferred recipients remain, `replies`
//!   their last replies (JSON array) and `not_before` the retry time (ms since the epoch).
//! - `failures(job_id, copy_id, rcpt, reply, time, expired)`: every failed recipient.
//! - `ingested(name, mtime_ns, size)`: files committed but perhaps not yet removed (so a crash
//!   between commit and removal does not ingest a file twice).
//!
//! In memory: per pool a set of ready copy ids (ordered = FIFO by creation) and a set of
//! (not_before, id) for deferred ones; the copies in flight with their recipients; a cache of
//! job messages. Claims never write to SQLite.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use bytes::Bytes;
use jiff::Timestamp;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::{oneshot, Notify};

use super::{
    ClaimedCopy, CopyResult, CopyState, IngestReport, Outcome, PoolStats, QueueStats, Spool,
    SpoolError, SpoolOptions, DB_FILE, INCOMING, LEDGER_FILE, LOCK_FILE, QUARANTINE,
};
use crate::clock::SharedClock;
use crate::config::{Pool, PoolSet};
use crate::ledger::{Ledger, LedgerLineRef, LedgerOutcome};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  pool INTEGER NOT NULL,
  mail_from TEXT NOT NULL,
  message BLOB,
  created INTEGER NOT NULL,
  source TEXT NOT NULL,
  rcpts INTEGER NOT NULL,
  delivered INTEGER NOT NULL DEFAULT 0,
  failed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS copies(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  job_id INTEGER NOT NULL,
  pool INTEGER NOT NULL,
  n INTEGER NOT NULL,
  rcpts TEXT NOT NULL,
  replies TEXT,
  attempts INTEGER NOT NULL DEFAULT 0,
  not_before INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS copies_job ON copies(job_id);
CREATE TABLE IF NOT EXISTS failures(
  job_id INTEGER NOT NULL,
  copy_id INTEGER NOT NULL,
  rcpt TEXT NOT NULL,
  reply TEXT NOT NULL,
  time INTEGER NOT NULL,
  expired INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS totals(
  pool INTEGER PRIMARY KEY,
  delivered INTEGER NOT NULL,
  failed INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS ingested(
  name TEXT NOT NULL,
  mtime_ns INTEGER NOT NULL,
  size INTEGER NOT NULL,
  PRIMARY KEY(name, mtime_ns, size)
);
";

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn ms(t: Timestamp) -> i64 {
    t.as_millisecond()
}

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn pool_of(i: i64) -> Pool {
    usize::try_from(i)
        .ok()
        .and_then(Pool::from_index)
        .unwrap_or(Pool::DEFAULT)
}

/// A job's envelope sender and message, shared by its copies.
#[derive(Debug)]
struct JobInfo {
    mail_from: String,
    message: Bytes,
    created: Timestamp,
}

#[derive(Debug)]
struct InFlight {
    job_id: i64,
    pool: Pool,
    /// Addresses, one per line.
    rcpts: String,
    n: usize,
    attempts: u32,
    job_created: Timestamp,
}

#[derive(Debug)]
pub(super) struct Index {
    ready: Vec<BTreeSet<i64>>,
    deferred: Vec<BTreeSet<(i64, i64)>>,
    in_flight: HashMap<i64, InFlight>,
    jobs: HashMap<i64, Arc<JobInfo>>,
    /// Bytes of messages in `jobs`.
    cached_bytes: usize,
}

/// The message cache holds at most this many jobs and about this many bytes (one message
/// larger than the budget is still cached on its own).
const JOB_CACHE: usize = 256;
const JOB_CACHE_BYTES: usize = 256 * 1024 * 1024;

impl Index {
    fn new() -> Self {
        Self {
            ready: vec![BTreeSet::new(); Pool::COUNT],
            deferred: vec![BTreeSet::new(); Pool::COUNT],
            in_flight: HashMap::new(),
            jobs: HashMap::new(),
            cached_bytes: 0,
        }
    }

    pub(super) fn add(&mut self, id: i64, pool: Pool, not_before: i64, now: i64) {
        if not_before > now {
            self.deferred[pool.index()].insert((not_before, id));
        } else {
            self.ready[pool.index()].insert(id);
        }
    }

    fn promote(&mut self, pools: PoolSet, now: i64) {
        for p in pools.iter() {
            let d = &mut self.deferred[p.index()];
            while let Some(&(nb, id)) = d.first() {
                if nb > now {
                    break;
                }
                d.pop_first();
                self.ready[p.index()].insert(id);
            }
        }
    }

    fn take_oldest(&mut self, pools: PoolSet) -> Option<(i64, Pool)> {
        let (_, p) = pools
            .iter()
            .filter_map(|p| self.ready[p.index()].first().map(|&id| (id, p)))
            .min()?;
        let id = self.ready[p.index()].pop_first()?;
        Some((id, p))
    }

    fn cache_job(&mut self, job_id: i64, job: Arc<JobInfo>) {
        let size = job.message.len();
        // Evict the newest jobs first: FIFO claims come back to the oldest soonest.
        while !self.jobs.is_empty()
            && (self.jobs.len() >= JOB_CACHE || self.cached_bytes + size > JOB_CACHE_BYTES)
        {
            let Some(&k) = self.jobs.keys().max() else {
                break;
            };
            self.uncache_job(k);
        }
        self.cached_bytes += size;
        if let Some(old) = self.jobs.insert(job_id, job) {
            self.cached_bytes -= old.message.len();
        }
    }

    fn uncache_job(&mut self, job_id: i64) {
        if let Some(old) = self.jobs.remove(&job_id) {
            self.cached_bytes -= old.message.len();
        }
    }

    fn queued_copies(&self) -> u64 {
        let r: usize = self.ready.iter().map(BTreeSet::len).sum();
        let d: usize = self.deferred.iter().map(BTreeSet::len).sum();
        (r + d + self.in_flight.len()) as u64
    }
}

/// A completion waiting for the writer thread.
struct Request {
    copy_id: i64,
    result: CopyResult,
    now: Timestamp,
    reply: oneshot::Sender<Result<(), SpoolError>>,
}

pub(super) struct Shared {
    pub(super) dir: PathBuf,
    pub(super) opts: SpoolOptions,
    pub(super) clock: SharedClock,
    /// A read-only connection for claims and stats. Declared (so dropped) before `db`: the
    /// last connection to close checkpoints and removes the WAL, which only a writer can do.
    reader: Mutex<Connection>,
    /// The writing connection (ingest and the writer thread).
    pub(super) db: Mutex<Connection>,
    pub(super) index: Mutex<Index>,
    pub(super) notify: Arc<Notify>,
    /// One ingest pass at a time.
    pub(super) ingest_lock: Mutex<()>,
}

struct Inner {
    shared: Arc<Shared>,
    tx: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    _lock: File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
    }
}

/// The SQLite spool. Cheap to clone (shared inside).
#[derive(Clone)]
pub struct SqliteSpool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteSpool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteSpool")
            .field("dir", &self.inner.shared.dir)
            .finish()
    }
}

fn configure(conn: &Connection) -> Result<(), SpoolError> {
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "temp_store", "FILE")?;
    conn.pragma_update(None, "cache_size", -16384)?;
    Ok(())
}

impl SqliteSpool {
    /// Open (create) the spool in `dir`, taking its lock, and rebuild the index from the
    /// database: every queued copy, including those in flight when the last owner stopped, is
    /// claimable again.
    pub fn open(dir: &Path, opts: SpoolOptions, clock: SharedClock) -> Result<Self, SpoolError> {
        for sub in [INCOMING, QUARANTINE] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p)
                .map_err(|e| SpoolError::io(format!("creating {}", p.display()), e))?;
        }
        let lock_path = dir.join(LOCK_FILE);
        let lock_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| SpoolError::io(format!("opening {}", lock_path.display()), e))?;
        // `File::try_lock` (Rust 1.89, the workspace's rust-version): no unsafe flock needed.
        let locked = lock_file.try_lock();
        match locked {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(SpoolError::Locked(dir.to_path_buf(), lock_path))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(SpoolError::io(
                    format!("locking {}", lock_path.display()),
                    e,
                ))
            }
        }
        let db_path = dir.join(DB_FILE);
        let db = Connection::open(&db_path)?;
        configure(&db)?;
        // One transaction: a crash leaves all the tables or none.
        db.execute_batch(&format!("BEGIN;\n{SCHEMA}\nCOMMIT;"))?;
        let reader = Connection::open_with_flags(
            &db_path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        reader.busy_timeout(std::time::Duration::from_secs(30))?;

        let now = ms(clock.now());
        let mut index = Index::new();
        {
            let mut st = db.prepare("SELECT id, pool, not_before FROM copies ORDER BY id")?;
            let mut rows = st.query([])?;
            while let Some(r) = rows.next()? {
                index.add(r.get(0)?, pool_of(r.get(1)?), r.get(2)?, now);
            }
        }
        // Forget ingest records of files that are gone (their removal completed).
        {
            let incoming = dir.join(INCOMING);
            let mut st = db.prepare("SELECT name FROM ingested")?;
            let names: Vec<String> = st
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<_, _>>()?;
            for n in names {
                if !incoming.join(&n).exists() {
                    db.execute("DELETE FROM ingested WHERE name = ?1", [&n])?;
                }
            }
        }
        let ledger_path = opts
            .ledger_path
            .clone()
            .unwrap_or_else(|| dir.join(LEDGER_FILE));
        let ledger = Ledger::open(&ledger_path)
            .map_err(|e| SpoolError::io(format!("opening ledger {}", ledger_path.display()), e))?;

        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            opts,
            clock,
            db: Mutex::new(db),
            reader: Mutex::new(reader),
            index: Mutex::new(index),
            notify: Arc::new(Notify::new()),
            ingest_lock: Mutex::new(()),
        });
        let (tx, rx) = mpsc::channel();
        let w = shared.clone();
        let writer = std::thread::Builder::new()
            .name("smtpw-spool-writer".into())
            .spawn(move || writer_loop(&w, ledger, rx))
            .map_err(|e| SpoolError::io("starting the spool writer", e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                tx: Some(tx),
                writer: Some(writer),
                _lock: lock_file,
            }),
        })
    }

    pub(super) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.shared().dir
    }

    /// Where the ledger is written.
    pub fn ledger_path(&self) -> PathBuf {
        let sh = self.shared();
        sh.opts
            .ledger_path
            .clone()
            .unwrap_or_else(|| sh.dir.join(LEDGER_FILE))
    }

    /// The options it was opened with.
    pub fn options(&self) -> &SpoolOptions {
        &self.shared().opts
    }

    /// Ingest one pass synchronously (blocking; prefer [`Spool::ingest_incoming`] in async code).
    pub fn ingest_blocking(&self) -> Result<IngestReport, SpoolError> {
        let now = self.shared().clock.now();
        self.shared().ingest_all(now)
    }

    fn read_copy(&self, copy_id: i64) -> Result<Option<(InFlight, Arc<JobInfo>)>, SpoolError> {
        let sh = self.shared();
        let reader = lock(&sh.reader);
        let row = reader
            .prepare_cached("SELECT job_id, pool, rcpts, n, attempts FROM copies WHERE id = ?1")?
            .query_row([copy_id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .optional()?;
        let Some((job_id, pool, rcpts, n, attempts)) = row else {
            return Ok(None);
        };
        let cached = lock(&sh.index).jobs.get(&job_id).cloned();
        let job = match cached {
            Some(j) => j,
            None => {
                let j = reader
                    .prepare_cached("SELECT mail_from, message, created FROM jobs WHERE id = ?1")?
                    .query_row([job_id], |r| {
                        Ok(JobInfo {
                            mail_from: r.get(0)?,
                            message: Bytes::from(
                                r.get::<_, Option<Vec<u8>>>(1)?.unwrap_or_default(),
                            ),
                            created: ts(r.get(2)?),
                        })
                    })
                    .optional()?;
                let Some(j) = j else {
                    return Err(SpoolError::Corrupt(format!(
                        "copy {copy_id} refers to job {job_id}, which is missing"
                    )));
                };
                let j = Arc::new(j);
                let mut idx = lock(&sh.index);
                idx.cache_job(job_id, j.clone());
                j
            }
        };
        Ok(Some((
            InFlight {
                job_id,
                pool: pool_of(pool),
                rcpts,
                n: usize::try_from(n).unwrap_or(0),
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                job_created: job.created,
            },
            job,
        )))
    }

    fn release_inner(&self, copy_id: i64, not_before: Option<Timestamp>) {
        let sh = self.shared();
        let now = ms(sh.clock.now());
        let mut idx = lock(&sh.index);
        if let Some(f) = idx.in_flight.remove(&copy_id) {
            idx.add(copy_id, f.pool, not_before.map_or(0, ms), now);
        }
        drop(idx);
        sh.notify.notify_waiters();
    }
}

impl Spool for SqliteSpool {
    fn ingest_incoming(
        &self,
    ) -> impl std::future::Future<Output = Result<IngestReport, SpoolError>> + Send {
        let me = self.clone();
        async move {
            let now = me.shared().clock.now();
            let sh = me.shared().clone();
            tokio::task::spawn_blocking(move || sh.ingest_all(now))
                .await
                .map_err(|e| SpoolError::io("ingest task", std::io::Error::other(e)))?
        }
    }

    fn claim(
        &self,
        pools: PoolSet,
    ) -> impl std::future::Future<Output = Result<Option<ClaimedCopy>, SpoolError>> + Send {
        let me = self.clone();
        async move {
            let sh = me.shared();
            loop {
                let now = ms(sh.clock.now());
                let taken = {
                    let mut idx = lock(&sh.index);
                    idx.promote(pools, now);
                    idx.take_oldest(pools)
                };
                let Some((copy_id, pool)) = taken else {
                    return Ok(None);
                };
                let read = match me.read_copy(copy_id) {
                    Ok(r) => r,
                    Err(e) => {
                        lock(&sh.index).ready[pool.index()].insert(copy_id);
                        return Err(e);
                    }
                };
                // A copy the index knows but the database does not: skip it.
                let Some((fl, job)) = read else { continue };
                let rcpts: Vec<String> = fl.rcpts.split('\n').map(str::to_owned).collect();
                let claimed = ClaimedCopy {
                    copy_id,
                    job_id: fl.job_id,
                    pool: fl.pool,
                    mail_from: job.mail_from.clone(),
                    rcpts,
                    message: job.message.clone(),
                    attempts: fl.attempts,
                    job_created: job.created,
                };
                lock(&sh.index).in_flight.insert(copy_id, fl);
                return Ok(Some(claimed));
            }
        }
    }

    fn complete(
        &self,
        copy_id: i64,
        result: CopyResult,
    ) -> impl std::future::Future<Output = Result<(), SpoolError>> + Send {
        let me = self.clone();
        async move {
            let sh = me.shared();
            {
                let idx = lock(&sh.index);
                let Some(f) = idx.in_flight.get(&copy_id) else {
                    return Err(SpoolError::NotClaimed(copy_id));
                };
                if f.n != result.rcpts.len() {
                    return Err(SpoolError::OutcomeCount {
                        copy: copy_id,
                        expected: f.n,
                        got: result.rcpts.len(),
                    });
                }
            }
            let now = sh.clock.now();
            let (reply, rx) = oneshot::channel();
            let tx = me.inner.tx.as_ref().ok_or(SpoolError::WriterGone)?;
            tx.send(Request {
                copy_id,
                result,
                now,
                reply,
            })
            .map_err(|_| SpoolError::WriterGone)?;
            let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
            if matches!(flavor, Ok(tokio::runtime::RuntimeFlavor::MultiThread)) {
                // The daemon: the writer thread wakes this task directly (no hop through the
                // blocking pool: two thread switches fewer per copy).
                rx.await.unwrap_or(Err(SpoolError::WriterGone))
            } else {
                // Current-thread runtimes (paused-time tests): waiting in the blocking pool keeps
                // paused time from auto-advancing while the writer syncs.
                tokio::task::spawn_blocking(move || {
                    rx.blocking_recv().unwrap_or(Err(SpoolError::WriterGone))
                })
                .await
                .map_err(|_| SpoolError::WriterGone)?
            }
        }
    }

    fn release(&self, copy_id: i64) {
        self.release_inner(copy_id, None);
    }

    fn has_expired(&self, job_created: Timestamp, now: Timestamp) -> bool {
        self.shared().opts.expired(job_created, now)
    }

    fn release_until(&self, copy_id: i64, not_before: Timestamp) {
        self.release_inner(copy_id, Some(not_before));
    }

    fn next_due(&self, pools: PoolSet) -> Option<Timestamp> {
        let idx = lock(&self.shared().index);
        pools
            .iter()
            .filter_map(|p| idx.deferred[p.index()].first().map(|&(nb, _)| nb))
            .min()
            .map(ts)
    }

    fn notify(&self) -> Arc<Notify> {
        self.shared().notify.clone()
    }

    fn queued_copies(&self) -> u64 {
        lock(&self.shared().index).queued_copies()
    }

    fn stats(&self) -> impl std::future::Future<Output = Result<QueueStats, SpoolError>> + Send {
        let me = self.clone();
        async move {
            let sh = me.shared();
            let now = sh.clock.now();
            let mut stats = {
                let reader = lock(&sh.reader);
                stats_from_db(&reader, now)?
            };
            stats.incoming_files = super::list_incoming(&sh.dir.join(INCOMING))
                .map(|v| v.len() as u64)
                .unwrap_or(0);
            // Copies in flight are "ready" in the database; move them to their own state.
            let idx = lock(&sh.index);
            let mut flight: HashMap<Pool, (u64, u64, Timestamp)> = HashMap::new();
            for f in idx.in_flight.values() {
                let e = flight.entry(f.pool).or_insert((0, 0, f.job_created));
                e.0 += 1;
                e.1 += f.n as u64;
                e.2 = e.2.min(f.job_created);
            }
            drop(idx);
            for (pool, (copies, rcpts, oldest)) in flight {
                if let Some(r) = stats
                    .pools
                    .iter_mut()
                    .find(|s| s.pool == pool && s.state == CopyState::Ready)
                {
                    r.copies = r.copies.saturating_sub(copies);
                    r.recipients = r.recipients.saturating_sub(rcpts);
                }
                stats.pools.push(PoolStats {
                    pool,
                    state: CopyState::InFlight,
                    copies,
                    recipients: rcpts,
                    oldest_age_secs: age_secs(now, oldest),
                });
            }
            stats.pools.retain(|s| s.copies > 0);
            stats.pools.sort_by_key(|s| (s.pool, s.state));
            Ok(stats)
        }
    }
}

fn age_secs(now: Timestamp, then: Timestamp) -> u64 {
    u64::try_from(now.duration_since(then).as_secs()).unwrap_or(0)
}

fn stats_from_db(conn: &Connection, now: Timestamp) -> Result<QueueStats, SpoolError> {
    let mut stats = QueueStats::default();
    let now_ms = ms(now);
    let mut st = conn.prepare_cached(
        "SELECT c.pool, c.not_before > ?1, COUNT(*), SUM(c.n), MIN(j.created)
         FROM copies c JOIN jobs j ON j.id = c.job_id GROUP BY 1, 2",
    )?;
    let mut rows = st.query([now_ms])?;
    let mut oldest: Option<i64> = None;
    while let Some(r) = rows.next()? {
        let copies = u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0);
        let rcpts = u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0);
        let created: i64 = r.get(4)?;
        oldest = Some(oldest.map_or(created, |o| o.min(created)));
        stats.copies += copies;
        stats.queued += rcpts;
        stats.pools.push(PoolStats {
            pool: pool_of(r.get(0)?),
            state: if r.get::<_, bool>(1)? {
                CopyState::Deferred
            } else {
                CopyState::Ready
            },
            copies,
            recipients: rcpts,
            oldest_age_secs: age_secs(now, ts(created)),
        });
    }
    stats.oldest_age_secs = oldest.map_or(0, |o| age_secs(now, ts(o)));
    let (d, f, j): (i64, i64, i64) = conn.query_row(
        "SELECT COALESCE(SUM(delivered), 0) + (SELECT COALESCE(SUM(delivered), 0) FROM totals),
                COALESCE(SUM(failed), 0) + (SELECT COALESCE(SUM(failed), 0) FROM totals),
                COUNT(*) FROM jobs",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let mut st = conn.prepare_cached(
        "SELECT reply, COUNT(*) FROM failures GROUP BY reply ORDER BY 2 DESC, 1 LIMIT 20",
    )?;
    stats.failure_reasons = st
        .query_map([], |r| {
            Ok(super::FailureReason {
                reply: r.get(0)?,
                recipients: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
            })
        })?
        .collect::<Result<_, _>>()?;
    stats.delivered = u64::try_from(d).unwrap_or(0);
    stats.failed = u64::try_from(f).unwrap_or(0);
    stats.jobs = u64::try_from(j).unwrap_or(0);
    Ok(stats)
}

/// Queue statistics of a spool read from its database without taking the spool's lock (works
/// while a daemon owns it). In-flight copies show as ready: only the owner knows them.
pub fn read_stats(dir: &Path, now: Timestamp) -> Result<QueueStats, SpoolError> {
    let db_path = dir.join(DB_FILE);
    let incoming = super::list_incoming(&dir.join(INCOMING))
        .map(|v| v.len() as u64)
        .unwrap_or(0);
    if !db_path.exists() {
        return Ok(QueueStats {
            incoming_files: incoming,
            ..QueueStats::default()
        });
    }
    let conn = match Connection::open_with_flags(&db_path, OpenFlags::SQLITE_OPEN_READ_ONLY) {
        Ok(c) => c,
        Err(_) => Connection::open_with_flags(&db_path, OpenFlags::SQLITE_OPEN_READ_WRITE)?,
    };
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // A daemon that is starting (or was killed while starting) may not have created the tables
    // yet: nothing is queued in the database then.
    let ready: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'totals')",
        [],
        |r| r.get(0),
    )?;
    if !ready {
        return Ok(QueueStats {
            incoming_files: incoming,
            ..QueueStats::default()
        });
    }
    let mut stats = stats_from_db(&conn, now)?;
    stats.incoming_files = incoming;
    stats.pools.sort_by_key(|s| (s.pool, s.state));
    Ok(stats)
}

/// What the writer decided for one completion.
struct Plan {
    copy_id: i64,
    job_id: i64,
    pool: Pool,
    delivered: i64,
    failed: Vec<(String, String, bool)>,
    deferred: Vec<(String, String)>,
    not_before: i64,
    now: i64,
    reply: oneshot::Sender<Result<(), SpoolError>>,
}

fn writer_loop(sh: &Shared, mut ledger: Ledger, rx: mpsc::Receiver<Request>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 8192 {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        commit_batch(sh, &mut ledger, batch);
    }
}

fn commit_batch(sh: &Shared, ledger: &mut Ledger, batch: Vec<Request>) {
    // What the batch needs of the in-flight records, taken under the index lock (one copy of the
    // recipient list per copy); the ledger lines are serialized after the lock is released, so
    // claims are not held up meanwhile.
    let mut work = Vec::with_capacity(batch.len());
    {
        let idx = lock(&sh.index);
        let mut in_batch = std::collections::HashSet::with_capacity(batch.len());
        for req in batch {
            // A copy completed twice in one batch counts once.
            match idx.in_flight.get(&req.copy_id) {
                Some(f) if in_batch.insert(req.copy_id) => work.push((
                    req,
                    f.job_id,
                    f.pool,
                    f.rcpts.clone(),
                    f.attempts,
                    f.job_created,
                )),
                _ => {
                    let _ = req.reply.send(Err(SpoolError::NotClaimed(req.copy_id)));
                }
            }
        }
    }
    ledger.begin();
    let mut ledger_error: Option<std::io::Error> = None;
    let mut plans = Vec::with_capacity(work.len());
    for (req, job_id, pool, rcpts, prev_attempts, job_created) in work {
        let time = req.now.to_string();
        let pool_name = pool.to_string();
        let attempts = prev_attempts.saturating_add(1);
        let expired = sh.opts.expired(job_created, req.now);
        let not_before = req
            .now
            .checked_add(sh.opts.backoff(prev_attempts))
            .unwrap_or(req.now);
        let retry_at = not_before.to_string();
        let mut plan = Plan {
            copy_id: req.copy_id,
            job_id,
            pool,
            delivered: 0,
            failed: Vec::new(),
            deferred: Vec::new(),
            not_before: ms(not_before),
            now: ms(req.now),
            reply: req.reply,
        };
        for (rcpt, o) in rcpts.split('\n').zip(&req.result.rcpts) {
            let (outcome, exp) = match o.outcome {
                Outcome::Delivered => {
                    plan.delivered += 1;
                    (LedgerOutcome::Delivered, false)
                }
                Outcome::Failed => {
                    plan.failed.push((rcpt.to_owned(), o.reply.clone(), false));
                    (LedgerOutcome::Failed, false)
                }
                Outcome::Deferred if expired => {
                    plan.failed.push((rcpt.to_owned(), o.reply.clone(), true));
                    (LedgerOutcome::Failed, true)
                }
                Outcome::Deferred => {
                    plan.deferred.push((rcpt.to_owned(), o.reply.clone()));
                    (LedgerOutcome::Deferred, false)
                }
            };
            if ledger_error.is_none() {
                let line = LedgerLineRef {
                    time: &time,
                    job: job_id,
                    copy: req.copy_id,
                    pool: &pool_name,
                    rcpt,
                    outcome,
                    relay: req.result.relay.as_deref(),
                    reply: &o.reply,
                    attempts,
                    retry_at: (outcome == LedgerOutcome::Deferred).then_some(retry_at.as_str()),
                    expired: exp,
                };
                ledger_error = ledger.push(&line).err();
            }
        }
        plans.push(plan);
    }
    if plans.is_empty() {
        return;
    }
    let fail_all = |plans: Vec<Plan>, e: &dyn Fn() -> SpoolError| {
        for p in plans {
            let _ = p.reply.send(Err(e()));
        }
    };
    let written = match ledger_error {
        Some(e) => {
            ledger.begin();
            Err(e)
        }
        None => ledger.commit(),
    };
    if let Err(e) = written {
        tracing::error!(error = %e, ledger = %ledger.path().display(), "ledger write failed");
        let msg = e.to_string();
        fail_all(plans, &|| {
            SpoolError::io(
                "appending to the ledger",
                std::io::Error::other(msg.clone()),
            )
        });
        return;
    }
    let done_jobs = {
        let mut db = lock(&sh.db);
        match write_plans(&mut db, &plans) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "spool commit failed");
                let msg = e.to_string();
                fail_all(plans, &|| {
                    SpoolError::Corrupt(format!("commit failed: {msg}"))
                });
                return;
            }
        }
    };
    let mut idx = lock(&sh.index);
    for p in &plans {
        idx.in_flight.remove(&p.copy_id);
        if !p.deferred.is_empty() {
            idx.deferred[p.pool.index()].insert((p.not_before, p.copy_id));
        }
    }
    for j in done_jobs {
        idx.uncache_job(j);
    }
    drop(idx);
    for p in plans {
        let _ = p.reply.send(Ok(()));
    }
}

/// One transaction for a batch of completions; returns the jobs that have no copy left.
fn write_plans(db: &mut Connection, plans: &[Plan]) -> Result<Vec<i64>, rusqlite::Error> {
    let tx = db.transaction()?;
    let mut done = Vec::new();
    {
        let mut upd_job = tx.prepare_cached(
            "UPDATE jobs SET delivered = delivered + ?2, failed = failed + ?3 WHERE id = ?1",
        )?;
        let mut ins_fail = tx.prepare_cached(
            "INSERT INTO failures(job_id, copy_id, rcpt, reply, time, expired) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut upd_copy = tx.prepare_cached(
            "UPDATE copies SET rcpts = ?2, replies = ?3, n = ?4, attempts = attempts + 1, not_before = ?5 WHERE id = ?1",
        )?;
        let mut del_copy = tx.prepare_cached("DELETE FROM copies WHERE id = ?1")?;
        let mut left =
            tx.prepare_cached("SELECT EXISTS(SELECT 1 FROM copies WHERE job_id = ?1)")?;
        // A finished job's counters move into the per-pool totals and its row goes.
        let mut fold = tx.prepare_cached(
            "INSERT INTO totals(pool, delivered, failed) SELECT pool, delivered, failed FROM jobs WHERE id = ?1
             ON CONFLICT(pool) DO UPDATE SET delivered = delivered + excluded.delivered, failed = failed + excluded.failed",
        )?;
        let mut finish = tx.prepare_cached("DELETE FROM jobs WHERE id = ?1")?;
        let mut rcpts = String::new();
        for p in plans {
            upd_job.execute(params![p.job_id, p.delivered, p.failed.len() as i64])?;
            for (rcpt, reply, expired) in &p.failed {
                ins_fail.execute(params![p.job_id, p.copy_id, rcpt, reply, p.now, expired])?;
            }
            if p.deferred.is_empty() {
                del_copy.execute([p.copy_id])?;
                let any: bool = left.query_row([p.job_id], |r| r.get(0))?;
                if !any {
                    fold.execute([p.job_id])?;
                    finish.execute([p.job_id])?;
                    done.push(p.job_id);
                }
            } else {
                rcpts.clear();
                for (i, (r, _)) in p.deferred.iter().enumerate() {
                    if i > 0 {
                        rcpts.push('\n');
                    }
                    rcpts.push_str(r);
                }
                let replies: Vec<&str> = p.deferred.iter().map(|(_, r)| r.as_str()).collect();
                let replies = serde_json::to_string(&replies).unwrap_or_default();
                upd_copy.execute(params![
                    p.copy_id,
                    rcpts,
                    replies,
                    p.deferred.len() as i64,
                    p.not_before
                ])?;
            }
        }
    }
    tx.commit()?;
    Ok(done)
}
