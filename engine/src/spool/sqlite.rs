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
//! In memory (`index.rs`): per pool a set of ready copy ids (ordered = FIFO by creation) and a
//! set of (not_before, id) for deferred ones; the copies being claimed and in flight; a cache of
//! job messages. Claims never write to SQLite.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use bytes::Bytes;
use jiff::Timestamp;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::{oneshot, Notify};

use super::check;
use super::group::Done;
use super::index::{InFlight, Index, JobInfo};
use super::policy::{self, Attempt, Fate};
use super::{
    ClaimedCopy, CopyResult, CopyState, IngestReport, JobSummary, PoolStats, QueueStats, Spool,
    SpoolError, SpoolOptions, DB_FILE, INCOMING, LEDGER_FILE, LOCK_FILE, QUARANTINE,
};
use crate::clock::SharedClock;
use crate::config::{Pool, PoolSet};
use crate::ledger::Ledger;

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

/// How long [`SqliteSpool::open`] waits for a busy `spool.lock` before it says another
/// process owns the spool.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

/// Completions waiting for the writer thread: a worker's group (one answer for all of them).
struct Request {
    items: Vec<(i64, CopyResult)>,
    now: Timestamp,
    reply: super::group::Answer,
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
    /// Set while the writer cannot record outcomes: no copy is claimed meanwhile.
    stalled: AtomicBool,
    /// Why, while `stalled`.
    recording_error: Mutex<Option<String>>,
    /// Set when the spool closes: a writer that cannot record gives up after one more try.
    closing: AtomicBool,
    /// Entries of `incoming/` that could be neither read nor moved, waiting for another look.
    pub(super) aside: Mutex<super::ingest::SetAsideEntries>,
}

impl Shared {
    fn set_recording_error(&self, e: Option<String>) {
        self.stalled.store(e.is_some(), Ordering::SeqCst);
        *lock(&self.recording_error) = e;
    }

    /// Say where a full disk is: the database's file system.
    pub(super) fn locate(&self, e: SpoolError) -> SpoolError {
        match e {
            SpoolError::Db(ref db) if super::is_db_full(db) => SpoolError::DiskFull {
                path: self.dir.join(DB_FILE),
                detail: db.to_string(),
            },
            e => e,
        }
    }
}

struct Inner {
    shared: Arc<Shared>,
    tx: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    accept_tx: Option<mpsc::Sender<super::accept::AcceptRequest>>,
    acceptor: Option<JoinHandle<()>>,
    _lock: File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A writer waiting to retry a batch it cannot record tries once more, then gives up.
        self.shared.closing.store(true, Ordering::SeqCst);
        self.tx.take();
        self.accept_tx.take();
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
        if let Some(h) = self.writer.take() {
            h.thread().unpark();
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
        // A lock that is busy is tried again for up to LOCK_PATIENCE: a process that forks
        // while the last owner still held the lock keeps a reference to it until its exec
        // (milliseconds on a loaded machine), and a stopping owner lets go as it exits.
        let patience = std::time::Instant::now() + LOCK_PATIENCE;
        let locked = loop {
            match lock_file.try_lock() {
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < patience => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => break other,
            }
        };
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
        let ledger_path = opts
            .ledger_path
            .clone()
            .unwrap_or_else(|| dir.join(LEDGER_FILE));
        let Some(db) = open_checked(dir, Some(&ledger_path), Access::Owner)? else {
            return Err(SpoolError::Corrupt(format!(
                "{} could not be created",
                db_path.display()
            )));
        };
        configure(&db)?;
        // One transaction: a crash leaves all the tables or none. Synced (synchronous=FULL)
        // before the marker is written: from then on a database without its tables is damage,
        // not a new spool.
        db.pragma_update(None, "synchronous", "FULL")?;
        db.execute_batch(&format!("BEGIN;\n{SCHEMA}\nCOMMIT;"))?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        check::write_marker(dir, clock.now())?;
        let reader = Connection::open_with_flags(
            &db_path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        reader.busy_timeout(std::time::Duration::from_secs(30))?;
        // Claims read copies and their jobs' messages on this connection, each read after the
        // writer's latest commit: SQLite then drops the connection's whole page cache, and
        // every page came back with a `pread`. Mapped, the pages of the database file are read
        // from the kernel's page cache in place (those still in the write-ahead log are read
        // as before). At most READER_MMAP bytes, so that the mapped pages the process touches
        // (part of its resident set) stay bounded.
        reader.pragma_update(None, "mmap_size", READER_MMAP)?;

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
            stalled: AtomicBool::new(false),
            recording_error: Mutex::new(None),
            closing: AtomicBool::new(false),
            aside: Mutex::new(Default::default()),
        });
        let (tx, rx) = mpsc::channel();
        let w = shared.clone();
        let writer = std::thread::Builder::new()
            .name("smtpw-spool-writer".into())
            .spawn(move || writer_loop(&w, ledger, rx))
            .map_err(|e| SpoolError::io("starting the spool writer", e))?;
        let (accept_tx, accept_rx) = mpsc::channel();
        let a = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name("smtpw-spool-accept".into())
            .spawn(move || super::accept::accept_loop(&a, accept_rx))
            .map_err(|e| SpoolError::io("starting the spool's accept thread", e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                tx: Some(tx),
                writer: Some(writer),
                accept_tx: Some(accept_tx),
                acceptor: Some(acceptor),
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
        self.shared()
            .ingest_all(now)
            .map_err(|e| self.shared().locate(e))
    }

    /// The second half of a claim begun in the index: read the copy, and put it in flight.
    /// `None` (and forgotten) when the database does not have it.
    fn finish_claim(&self, copy_id: i64) -> Result<Option<ClaimedCopy>, SpoolError> {
        Ok(self.finish_claims(&[copy_id], None)?.pop())
    }

    /// The second half of claims begun in the index: the copies' rows (read ahead, or read now
    /// in one read transaction: one snapshot, one pager refresh, one lock) put in flight, in
    /// the order given. A read also reads ahead the rows of the next claimable copies of
    /// `ahead`'s pools ([`PREFETCH`] of them), for the claims to come. Copies the database does
    /// not have are forgotten (left out of the answer); on an error every one of them is
    /// claimable again.
    fn finish_claims(
        &self,
        ids: &[i64],
        ahead: Option<PoolSet>,
    ) -> Result<Vec<ClaimedCopy>, SpoolError> {
        let sh = self.shared();
        // What is known already: rows read ahead whose job is cached.
        let mut known: Vec<Option<(InFlight, Arc<JobInfo>)>> = Vec::with_capacity(ids.len());
        let mut need = Vec::new();
        let (more, read_at) = {
            let mut idx = lock(&sh.index);
            for id in ids {
                let hit = idx
                    .take_prefetched(*id)
                    .and_then(|f| idx.cached_job(f.job_id).map(|j| (f, j)));
                if hit.is_none() {
                    need.push(*id);
                }
                known.push(hit);
            }
            match ahead {
                Some(pools) if !need.is_empty() => idx.prefetch_candidates(pools, PREFETCH),
                _ => (Vec::new(), 0),
            }
        };
        if !need.is_empty() {
            let mut read = match self.read_copies(&need, &more) {
                Ok(r) => r,
                Err(e) => {
                    let mut idx = lock(&sh.index);
                    for id in ids {
                        idx.abort_claim(*id);
                    }
                    idx.forget_read_ahead(&more);
                    return Err(e);
                }
            };
            let ahead_rows = read.split_off(need.len());
            let mut read = read.into_iter();
            for k in known.iter_mut() {
                if k.is_none() {
                    *k = read.next().flatten();
                }
            }
            self.keep_read_ahead(&more, ahead_rows, read_at);
        }
        let mut claimed = Vec::with_capacity(known.len());
        let mut flights = Vec::with_capacity(known.len());
        let mut gone = Vec::new();
        for (copy_id, r) in ids.iter().copied().zip(known) {
            let Some((fl, job)) = r else {
                gone.push(copy_id);
                continue;
            };
            claimed.push(ClaimedCopy {
                copy_id,
                job_id: fl.job_id,
                pool: fl.pool,
                mail_from: job.mail_from.clone(),
                rcpts: fl.rcpts.split('\n').map(str::to_owned).collect(),
                message: job.message.clone(),
                attempts: fl.attempts,
                job_created: job.created,
            });
            flights.push((copy_id, fl));
        }
        let mut idx = lock(&sh.index);
        for id in gone {
            idx.drop_claim(id);
        }
        for (id, fl) in flights {
            idx.finish_claim(id, fl);
        }
        Ok(claimed)
    }

    /// Read copies (and their jobs, unless cached) in one read transaction: `ids`, then
    /// `ahead` (rows read ahead), one answer each in that order.
    #[allow(clippy::type_complexity)]
    fn read_copies(
        &self,
        ids: &[i64],
        ahead: &[i64],
    ) -> Result<Vec<Option<(InFlight, Arc<JobInfo>)>>, SpoolError> {
        let sh = self.shared();
        let reader = lock(&sh.reader);
        if ids.len() + ahead.len() == 1 {
            if let Some(id) = ids.iter().chain(ahead).next() {
                // One statement is its own transaction.
                return Ok(vec![read_copy(sh, &reader, *id)?]);
            }
        }
        let tx = reader.unchecked_transaction()?;
        let read = ids
            .iter()
            .chain(ahead)
            .map(|id| read_copy(sh, &tx, *id))
            .collect::<Result<Vec<_>, _>>()?;
        // A read transaction: nothing to write, ending it releases the snapshot.
        tx.commit()?;
        Ok(read)
    }
}

/// How much of the database file the claims' read connection maps (`PRAGMA mmap_size`).
const READER_MMAP: i64 = 64 * 1024 * 1024;

/// How many rows of the next claimable copies a claim that reads the database reads ahead.
const PREFETCH: usize = 64;

/// Why [`SqliteSpool::claim_now`] stopped taking copies in one pass.
enum End {
    /// As many as asked for.
    Taken,
    /// No copy of the pools is claimable.
    Empty,
    /// The next copy would go over the recipient budget.
    Full,
    /// The next copy's recipient count is not known (its row is not read ahead).
    Unknown,
}

/// Read one copy (and its job, unless cached) on `reader`: one statement, the job's row joined
/// (its message and sender are read only when the job is not cached).
fn read_copy(
    sh: &Shared,
    reader: &Connection,
    copy_id: i64,
) -> Result<Option<(InFlight, Arc<JobInfo>)>, SpoolError> {
    // `+?1`, not `?1`: with the join, SQLite's planner marks the parameter as one whose value
    // may change the plan, and a cached statement whose parameter is bound again is compiled
    // again, at every claim (measured: one `sqlite3Reprepare` per read). The unary `+` keeps
    // the value out of the planner's sight; the plan is the same (two rowid lookups).
    let mut st = reader.prepare_cached(
        "SELECT c.job_id, c.pool, c.rcpts, c.n, c.attempts, j.id, j.rcpts, j.mail_from, j.message, j.created
         FROM copies c LEFT JOIN jobs j ON j.id = c.job_id WHERE c.id = +?1",
    )?;
    let mut rows = st.query([copy_id])?;
    let Some(r) = rows.next()? else {
        return Ok(None);
    };
    let job_id: i64 = r.get(0)?;
    if r.get::<_, Option<i64>>(5)?.is_none() {
        return Err(SpoolError::Corrupt(format!(
            "copy {copy_id} refers to job {job_id}, which is missing"
        )));
    }
    let n: i64 = r.get(3)?;
    let cached = lock(&sh.index).cached_job(job_id);
    let job = match cached {
        Some(j) => j,
        None => {
            let j = Arc::new(JobInfo {
                mail_from: r.get(7)?,
                message: Bytes::from(r.get::<_, Option<Vec<u8>>>(8)?.unwrap_or_default()),
                created: ts(r.get(9)?),
            });
            lock(&sh.index).cache_job(job_id, j.clone());
            j
        }
    };
    Ok(Some((
        InFlight {
            job_id,
            pool: pool_of(r.get(1)?),
            rcpts: r.get(2)?,
            n: usize::try_from(n).unwrap_or(0),
            attempts: u32::try_from(r.get::<_, i64>(4)?).unwrap_or(u32::MAX),
            job_created: job.created,
            // The copies of a job hold its recipients between them, each recipient once: a copy
            // holding as many as the job has is its only one.
            whole_job: n == r.get::<_, i64>(6)?,
            completing: false,
        },
        job,
    )))
}

impl Spool for SqliteSpool {
    fn ingest_incoming(
        &self,
    ) -> impl std::future::Future<Output = Result<IngestReport, SpoolError>> + Send {
        let me = self.clone();
        async move {
            let now = me.shared().clock.now();
            let sh = me.shared().clone();
            let sh2 = sh.clone();
            tokio::task::spawn_blocking(move || sh.ingest_all(now))
                .await
                .map_err(|e| SpoolError::io("ingest task", std::io::Error::other(e)))?
                .map_err(|e| sh2.locate(e))
        }
    }

    fn claim(
        &self,
        pools: PoolSet,
    ) -> impl std::future::Future<Output = Result<Option<ClaimedCopy>, SpoolError>> + Send {
        let me = self.clone();
        async move { Ok(me.claim_now(pools, 1, usize::MAX)?.pop()) }
    }

    fn claim_many(
        &self,
        pools: PoolSet,
        n: usize,
        max_rcpts: usize,
    ) -> impl std::future::Future<Output = Result<Vec<ClaimedCopy>, SpoolError>> + Send {
        let me = self.clone();
        async move { me.claim_now(pools, n, max_rcpts) }
    }

    fn complete(
        &self,
        copy_id: i64,
        result: CopyResult,
    ) -> impl std::future::Future<Output = Result<(), SpoolError>> + Send {
        let me = self.clone();
        async move {
            me.complete_many(vec![(copy_id, result)])
                .await
                .pop()
                .unwrap_or(Err(SpoolError::WriterGone))
        }
    }

    fn complete_many(
        &self,
        results: Vec<(i64, CopyResult)>,
    ) -> impl std::future::Future<Output = Vec<Result<(), SpoolError>>> + Send {
        let me = self.clone();
        async move {
            let sh = me.shared();
            let mut out: Vec<Option<Result<(), SpoolError>>> =
                results.iter().map(|_| None).collect();
            let mut items = Vec::with_capacity(results.len());
            let mut slots = Vec::with_capacity(results.len());
            {
                let mut idx = lock(&sh.index);
                for (slot, (copy_id, result)) in results.into_iter().enumerate() {
                    let Some(f) = idx.in_flight(copy_id) else {
                        out[slot] = Some(Err(SpoolError::NotClaimed(copy_id)));
                        continue;
                    };
                    if f.n != result.rcpts.len() {
                        out[slot] = Some(Err(SpoolError::OutcomeCount {
                            copy: copy_id,
                            expected: f.n,
                            got: result.rcpts.len(),
                        }));
                        continue;
                    }
                    // It was sent: from now on a release (a stop that gives copies back)
                    // leaves it alone, however long recording takes.
                    idx.mark_completing(copy_id);
                    items.push((copy_id, result));
                    slots.push(slot);
                }
            }
            if !items.is_empty() {
                let now = sh.clock.now();
                let (reply, rx) = oneshot::channel();
                let answer = match me.inner.tx.as_ref() {
                    Some(tx) => match tx.send(Request { items, now, reply }) {
                        Ok(()) => wait_for_thread(rx).await,
                        Err(_) => Err(SpoolError::WriterGone),
                    },
                    None => Err(SpoolError::WriterGone),
                };
                super::group::place(&mut out, slots, answer);
            }
            super::group::finish(out)
        }
    }

    fn release(&self, copy_id: i64) {
        let sh = self.shared();
        let now = ms(sh.clock.now());
        lock(&sh.index).release(copy_id, None, now);
        sh.notify.notify_waiters();
    }

    fn set_max_bsmtp(&self, n: u32) {
        self.shared()
            .opts
            .reloaded_max_bsmtp
            .store(n, Ordering::Relaxed);
    }

    fn has_expired(&self, job_created: Timestamp, now: Timestamp) -> bool {
        self.shared().opts.expired(job_created, now)
    }

    fn next_due(&self, pools: PoolSet) -> Option<Timestamp> {
        let sh = self.shared();
        if sh.stalled.load(Ordering::SeqCst) {
            // Nothing falls due while claims are paused: the writer's recovery notifies.
            return None;
        }
        lock(&sh.index).next_due(pools).map(ts)
    }

    fn notify(&self) -> Arc<Notify> {
        self.shared().notify.clone()
    }

    fn queued_copies(&self) -> u64 {
        lock(&self.shared().index).queued_copies()
    }

    fn recording_error(&self) -> Option<String> {
        lock(&self.shared().recording_error).clone()
    }

    fn flush(
        &self,
        pools: PoolSet,
    ) -> impl std::future::Future<Output = Result<u64, SpoolError>> + Send {
        let me = self.clone();
        async move {
            tokio::task::spawn_blocking(move || me.flush_now(pools))
                .await
                .map_err(|e| SpoolError::io("flush task", std::io::Error::other(e)))?
        }
    }

    fn claim_job(
        &self,
        job_id: i64,
    ) -> impl std::future::Future<Output = Result<(Vec<ClaimedCopy>, u64), SpoolError>> + Send {
        let me = self.clone();
        async move {
            tokio::task::spawn_blocking(move || me.claim_job_now(job_id))
                .await
                .map_err(|e| SpoolError::io("cancel task", std::io::Error::other(e)))?
        }
    }

    fn jobs(
        &self,
        pool: Option<Pool>,
        limit: usize,
    ) -> impl std::future::Future<Output = Result<Vec<JobSummary>, SpoolError>> + Send {
        let me = self.clone();
        async move {
            tokio::task::spawn_blocking(move || me.jobs_now(pool, limit))
                .await
                .map_err(|e| SpoolError::io("jobs task", std::io::Error::other(e)))?
        }
    }

    fn accept(
        &self,
        job: super::NewJob,
    ) -> impl std::future::Future<Output = Result<i64, SpoolError>> + Send {
        let me = self.clone();
        async move {
            let (reply, rx) = oneshot::channel();
            let tx = me.inner.accept_tx.as_ref().ok_or(SpoolError::WriterGone)?;
            tx.send(super::accept::AcceptRequest { job, reply })
                .map_err(|_| SpoolError::WriterGone)?;
            wait_for_thread(rx).await
        }
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
            for f in idx.in_flight_copies() {
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

impl SqliteSpool {
    /// Up to `n` copies of `pools`, oldest first: taken from the index under one lock, read in
    /// one transaction ([`SqliteSpool::finish_claims`]). Copies claimed before an error are
    /// kept; the error is returned only when nothing was claimed.
    /// Up to `n` copies of `pools` holding at most `max_rcpts` recipients together
    /// ([`Spool::claim_many`]). A copy's recipient count is known before it is taken from its
    /// row read ahead ([`PREFETCH`]); when the next copy's row is not read ahead, the rows of
    /// the next claimable copies are read first (once per claim: if it is still unknown then,
    /// the claim ends there). `usize::MAX`: no budget, nothing to know ahead.
    fn claim_now(
        &self,
        pools: PoolSet,
        n: usize,
        max_rcpts: usize,
    ) -> Result<Vec<ClaimedCopy>, SpoolError> {
        let sh = self.shared();
        let budgeted = max_rcpts != usize::MAX;
        let mut out: Vec<ClaimedCopy> = Vec::new();
        let mut read_ahead = false;
        while out.len() < n {
            // While outcomes cannot be recorded, no copy is sent that could not be recorded
            // either: nothing is claimable until the writer recovers (it notifies then).
            if sh.stalled.load(Ordering::SeqCst) {
                break;
            }
            let now = ms(sh.clock.now());
            let mut room = max_rcpts.saturating_sub(out.iter().map(|c| c.rcpts.len()).sum());
            // The copies stay counted as queued while they are read (`claiming`): an emptiness
            // check in between must not see the queue empty.
            let (ids, end) = {
                let mut idx = lock(&sh.index);
                let want = n - out.len();
                let mut ids = Vec::with_capacity(want.min(64));
                let mut end = End::Taken;
                while ids.len() < want {
                    if budgeted {
                        let Some((id, pool)) = idx.next_claimable(pools, now) else {
                            end = End::Empty;
                            break;
                        };
                        match idx.prefetched_rcpts(id) {
                            Some(k) if k <= room => room -= k,
                            Some(_) => {
                                end = End::Full;
                                break;
                            }
                            None => {
                                end = End::Unknown;
                                break;
                            }
                        }
                        // The copy just looked at, taken without looking again (under the same
                        // lock, so it is still there).
                        if !idx.begin_claim_next(id, pool) {
                            end = End::Empty;
                            break;
                        }
                        ids.push(id);
                        continue;
                    }
                    match idx.begin_claim(pools, now) {
                        Some((id, _)) => ids.push(id),
                        None => {
                            end = End::Empty;
                            break;
                        }
                    }
                }
                (ids, end)
            };
            if !ids.is_empty() {
                // Copies the index knows but the database does not are skipped (the loop takes
                // others in their place).
                match self.finish_claims(&ids, Some(pools)) {
                    Ok(c) => out.extend(c),
                    Err(e) if out.is_empty() => return Err(e),
                    Err(e) => {
                        tracing::warn!(spool = %sh.dir.display(), error = %e, "claim failed");
                        break;
                    }
                }
            }
            match end {
                End::Taken => {}
                End::Empty | End::Full => break,
                End::Unknown if read_ahead => break,
                End::Unknown => {
                    read_ahead = true;
                    if let Err(e) = self.read_ahead(pools) {
                        if out.is_empty() {
                            return Err(e);
                        }
                        tracing::warn!(spool = %sh.dir.display(), error = %e, "claim failed");
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Read the rows of the next claimable copies of `pools` ([`PREFETCH`] of them) ahead of
    /// their claims, without claiming any.
    fn read_ahead(&self, pools: PoolSet) -> Result<(), SpoolError> {
        let sh = self.shared();
        let (more, read_at) = lock(&sh.index).prefetch_candidates(pools, PREFETCH);
        if more.is_empty() {
            return Ok(());
        }
        match self.read_copies(&[], &more) {
            Ok(rows) => self.keep_read_ahead(&more, rows, read_at),
            Err(e) => {
                lock(&self.shared().index).forget_read_ahead(&more);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Keep the rows of copies `ids` read ahead of their claims (`rows[i]` is `ids[i]`'s, `None`
    /// when it is gone), as of the index's state `read_at`.
    fn keep_read_ahead(
        &self,
        ids: &[i64],
        rows: Vec<Option<(InFlight, Arc<JobInfo>)>>,
        read_at: u64,
    ) {
        if ids.is_empty() {
            return;
        }
        let rows = ids
            .iter()
            .zip(rows)
            .filter_map(|(id, r)| r.map(|(f, _)| (*id, f)))
            .collect();
        lock(&self.shared().index).store_prefetched(ids, rows, read_at);
    }

    fn flush_now(&self, pools: PoolSet) -> Result<u64, SpoolError> {
        let sh = self.shared();
        let now = ms(sh.clock.now());
        let list: Vec<String> = pools.iter().map(|p| p.index().to_string()).collect();
        {
            let db = lock(&sh.db);
            db.execute(
                &format!(
                    "UPDATE copies SET not_before = ?1 WHERE not_before > ?1 AND pool IN ({})",
                    list.join(",")
                ),
                [now],
            )
            .map_err(|e| sh.locate(SpoolError::Db(e)))?;
        }
        let n = lock(&sh.index).flush(pools);
        sh.notify.notify_waiters();
        Ok(n)
    }

    fn claim_job_now(&self, job_id: i64) -> Result<(Vec<ClaimedCopy>, u64), SpoolError> {
        let sh = self.shared();
        let ids: Vec<i64> = {
            let reader = lock(&sh.reader);
            let mut st = reader.prepare_cached("SELECT id FROM copies WHERE job_id = ?1")?;
            let ids = st
                .query_map([job_id], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            ids
        };
        let (mut claimed, mut held) = (Vec::new(), 0);
        for id in ids {
            let taken = {
                let mut idx = lock(&sh.index);
                if idx.is_held(id) {
                    held += 1;
                    continue;
                }
                idx.begin_claim_of(id)
            };
            if taken.is_some() {
                if let Some(c) = self.finish_claim(id)? {
                    claimed.push(c);
                }
            }
        }
        Ok((claimed, held))
    }

    fn jobs_now(&self, pool: Option<Pool>, limit: usize) -> Result<Vec<JobSummary>, SpoolError> {
        let sh = self.shared();
        let now = ms(sh.clock.now());
        let reader = lock(&sh.reader);
        let mut st = reader.prepare_cached(
            "SELECT j.id, j.pool, j.mail_from, j.created, j.rcpts, j.delivered, j.failed,
                    COALESCE(SUM(c.n), 0), COALESCE(SUM(CASE WHEN c.not_before > ?1 THEN c.n END), 0),
                    COUNT(c.id)
             FROM jobs j LEFT JOIN copies c ON c.job_id = j.id
             WHERE ?2 < 0 OR j.pool = ?2
             GROUP BY j.id ORDER BY j.id LIMIT ?3",
        )?;
        let pool_i = pool.map_or(-1, |p| p.index() as i64);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        let rows = st
            .query_map(params![now, pool_i, limit], |r| {
                Ok(JobSummary {
                    id: r.get(0)?,
                    pool: pool_of(r.get(1)?),
                    mail_from: r.get(2)?,
                    created: ts(r.get(3)?),
                    recipients: n(r.get(4)?),
                    delivered: n(r.get(5)?),
                    failed: n(r.get(6)?),
                    queued: n(r.get(7)?),
                    deferred: n(r.get(8)?),
                    copies: n(r.get(9)?),
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }
}

/// The answer of the writer or accept thread.
async fn wait_for_thread<T: Send + 'static>(
    rx: oneshot::Receiver<Result<T, SpoolError>>,
) -> Result<T, SpoolError> {
    let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
    if matches!(flavor, Ok(tokio::runtime::RuntimeFlavor::MultiThread)) || super::on_own_loop() {
        // The daemon (its runtime, or the listener's own loops): the thread wakes this task
        // directly (no hop through the blocking pool: two thread switches fewer per answer).
        rx.await.unwrap_or(Err(SpoolError::WriterGone))
    } else {
        // Other current-thread runtimes (paused-time tests): waiting in the blocking pool keeps
        // paused time from auto-advancing while the thread syncs.
        tokio::task::spawn_blocking(move || {
            rx.blocking_recv().unwrap_or(Err(SpoolError::WriterGone))
        })
        .await
        .map_err(|_| SpoolError::WriterGone)?
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
    let incoming = super::list_incoming(&dir.join(INCOMING))
        .map(|v| v.len() as u64)
        .unwrap_or(0);
    let empty = || QueueStats {
        incoming_files: incoming,
        ..QueueStats::default()
    };
    let Some(conn) = open_checked(dir, None, Access::Reader)? else {
        return Ok(empty());
    };
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // A spool made before the per-pool totals existed has no such table yet.
    let ready: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'totals')",
        [],
        |r| r.get(0),
    )?;
    if !ready {
        return Ok(empty());
    }
    let mut stats = stats_from_db(&conn, now).map_err(|e| match e {
        SpoolError::Db(e) => db_damage(dir, e),
        e => e,
    })?;
    stats.incoming_files = incoming;
    stats.pools.sort_by_key(|s| (s.pool, s.state));
    Ok(stats)
}

/// Who opens the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// The process that holds the spool's lock (and will write).
    Owner,
    /// `read_stats`: read-only, perhaps while a daemon owns the spool.
    Reader,
}

/// A database error that shows damage becomes [`SpoolError::Damaged`].
fn db_damage(dir: &Path, e: rusqlite::Error) -> SpoolError {
    if check::is_damage(&e) {
        check::damaged(
            dir,
            dir.join(DB_FILE),
            format!("SQLite cannot read it ({e})"),
        )
    } else {
        SpoolError::Db(e)
    }
}

/// Open `spool.db` once the checks that keep a damaged spool from passing for an empty one
/// have passed (see `check.rs`). `Ok(None)` (readers only): there is no database yet and
/// nothing says there ever was one.
fn open_checked(
    dir: &Path,
    ledger: Option<&Path>,
    access: Access,
) -> Result<Option<Connection>, SpoolError> {
    let db_path = dir.join(DB_FILE);
    let wal = check::wal_path(dir);
    match check::check_wal(&wal) {
        Ok(None) => {}
        // A running daemon's log changes under a reader's eyes (a frame's header and its page
        // are two writes): the daemon checked it when it started.
        Ok(Some(_)) if access == Access::Reader && check::lock_is_held(dir) => {}
        Ok(Some(problem)) => return Err(check::damaged(dir, wal, problem)),
        Err(e) => return Err(SpoolError::io(format!("reading {}", wal.display()), e)),
    }
    let signs = check::signs_of_use(dir, ledger);
    if !db_path.exists() {
        if !signs.is_empty() {
            let problem = format!(
                "it is missing, but the spool was in use: {}",
                signs.join(", ")
            );
            return Err(check::damaged(dir, db_path, problem));
        }
        if access == Access::Reader {
            return Ok(None);
        }
    }
    let conn = match access {
        Access::Owner => Connection::open(&db_path)?,
        Access::Reader => {
            // A first read makes SQLite read (or rebuild) the write-ahead log's index. After a
            // crash a read-only connection may be unable to rebuild it ("attempt to write a
            // readonly database", SQLITE_READONLY_RECOVERY; seen once in 50 SIGKILLs of
            // edge::sigkill_loop): then the reader opens the database for writing, as the next
            // owner would, and writes nothing itself.
            let read_only = Connection::open_with_flags(&db_path, OpenFlags::SQLITE_OPEN_READ_ONLY)
                .and_then(|c| {
                    c.busy_timeout(std::time::Duration::from_secs(10))?;
                    c.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))?;
                    Ok(c)
                });
            match read_only {
                Ok(c) => c,
                Err(_) => Connection::open_with_flags(&db_path, OpenFlags::SQLITE_OPEN_READ_WRITE)?,
            }
        }
    };
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    if !check::has_tables(&conn).map_err(|e| db_damage(dir, e))? {
        if !signs.is_empty() {
            let len = std::fs::metadata(&db_path).map(|m| m.len()).unwrap_or(0);
            return Err(check::damaged(
                dir,
                db_path,
                format!(
                    "it has no spool tables ({len} bytes), but the spool was in use: {}",
                    signs.join(", ")
                ),
            ));
        }
        // A new spool (or a daemon still creating it, for a reader).
        return Ok(match access {
            Access::Owner => Some(conn),
            Access::Reader => None,
        });
    }
    if access == Access::Owner {
        if let Some(findings) = check::quick_check(&conn).map_err(|e| db_damage(dir, e))? {
            return Err(check::damaged(
                dir,
                db_path,
                format!("SQLite's quick_check finds it damaged: {findings}"),
            ));
        }
    }
    Ok(Some(conn))
}

/// What the writer records for one completion, as the completion policy decided it
/// ([`policy::decide`]).
struct Plan {
    copy_id: i64,
    job_id: i64,
    /// The copy held every recipient of its job ([`InFlight::whole_job`]).
    whole_job: bool,
    /// Recipients of the copy (all of them have a ledger line).
    rcpts: usize,
    delivered: i64,
    /// Recipient, reply, expired.
    failed: Vec<(String, String, bool)>,
    /// Recipient, reply: they stay in the copy.
    deferred: Vec<(String, String)>,
    /// When the deferred recipients are tried again (ms), if there are any.
    not_before: i64,
    now: i64,
    /// The copy's pool, and how old its job is at `now` (seconds): for the metrics.
    pool: Pool,
    age_secs: f64,
    reply: Done,
}

/// One copy's completion, as the writer plans it.
struct Item {
    copy_id: i64,
    result: CopyResult,
    now: Timestamp,
}

/// The first wait before a failed batch is tried again; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(100);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);
/// Most completions (copies) taken from the queue into one batch.
const BATCH_MAX: usize = 8192;
/// A group of fewer completions (copies) than this waits once, [`GROUP_WAIT`], for more.
const GROUP_TARGET: usize = 64;
/// How long a small group waits for more completions (see [`writer_loop`]).
const GROUP_WAIT: std::time::Duration = std::time::Duration::from_micros(500);

fn writer_loop(sh: &Shared, mut ledger: Ledger, rx: mpsc::Receiver<Request>) {
    while let Ok(first) = rx.recv() {
        let mut copies = first.items.len();
        let mut batch = vec![first];
        while copies < BATCH_MAX {
            match rx.try_recv() {
                Ok(r) => {
                    copies += r.items.len();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        if copies < GROUP_TARGET && !sh.closing.load(Ordering::Relaxed) {
            // A small group while at least as many copies are still out with the workers: wait
            // once for more of them. Each group costs a ledger `fdatasync` and a commit whose
            // shared pages (the copies' and jobs' interior pages, the free list, page 1) are
            // written whatever the group's size, so fuller groups cost less per copy. Bounded:
            // one wait of GROUP_WAIT per group, and none when fewer copies are out than the
            // group holds (the wait could not double it; a worker at its outstanding
            // completions' bound sends nothing more until this group is recorded).
            let out = lock(&sh.index).in_flight_len().saturating_sub(copies);
            if out >= copies {
                std::thread::sleep(GROUP_WAIT);
                for r in rx.try_iter() {
                    copies += r.items.len();
                    batch.push(r);
                    if copies >= BATCH_MAX {
                        break;
                    }
                }
            }
        }
        let mut plans = Vec::with_capacity(batch.len());
        plan_batch(sh, &mut ledger, batch, &mut plans);
        if !plans.is_empty() {
            record(sh, &mut ledger, &rx, plans);
        }
    }
}

/// Record `plans` (their ledger lines already pushed): ledger, then database. A batch that
/// cannot be recorded is kept and tried again, with a growing wait, until it is; meanwhile the
/// spool claims nothing, and completions that arrive join the batch. Only when the spool is
/// closing does a failed batch give up (its copies stay queued: the next run sends them again).
fn record(sh: &Shared, ledger: &mut Ledger, rx: &mpsc::Receiver<Request>, mut plans: Vec<Plan>) {
    let mut wait = RETRY_FIRST;
    let mut stall: Option<(std::time::Instant, String)> = None;
    loop {
        let (failure, condition) = match write_batch(sh, ledger, &plans) {
            Ok(done_jobs) => {
                let copies = plans.len();
                let outcomes: usize = plans.iter().map(|p| p.rcpts).sum();
                finish(sh, plans, done_jobs);
                if let Some((since, _)) = stall {
                    sh.set_recording_error(None);
                    sh.notify.notify_waiters();
                    tracing::warn!(
                        spool = %sh.dir.display(),
                        stalled = ?since.elapsed(),
                        copies,
                        outcomes,
                        "the spool records outcomes again; delivery resumes"
                    );
                }
                return;
            }
            // A full disk is one condition, whichever file (ledger, database) hits it first.
            Err(e) if e.is_disk_full() => (e.to_string(), "the disk is full".to_string()),
            Err(e) => (e.to_string(), e.to_string()),
        };
        sh.set_recording_error(Some(failure.clone()));
        if stall.as_ref().is_none_or(|(_, last)| *last != condition) {
            // One error per condition: when recording starts failing, or fails differently.
            let outcomes: usize = plans.iter().map(|p| p.rcpts).sum();
            tracing::error!(
                spool = %sh.dir.display(),
                copies = plans.len(),
                outcomes,
                "cannot record delivery outcomes: {failure}; delivery is paused until the spool \
                 can record again; nothing is lost: the outcomes are kept and retried"
            );
            stall = Some((
                stall.map_or_else(std::time::Instant::now, |(t, _)| t),
                condition,
            ));
        }
        if sh.closing.load(Ordering::SeqCst) {
            let outcomes: usize = plans.iter().map(|p| p.rcpts).sum();
            tracing::error!(
                spool = %sh.dir.display(),
                copies = plans.len(),
                outcomes,
                "the spool is closing with outcomes it could not record; their copies stay \
                 queued and the next run sends them again"
            );
            for p in plans {
                p.reply
                    .send(Err(SpoolError::Unrecorded(p.copy_id, failure.clone())));
            }
            return;
        }
        std::thread::park_timeout(wait);
        wait = (wait * 2).min(RETRY_MAX);
        // Completions that came meanwhile wait with this batch (their workers are held back
        // from claiming anyway) and are recorded with it.
        let more: Vec<Request> = rx.try_iter().collect();
        plan_batch(sh, ledger, more, &mut plans);
    }
}

/// Plan each completion as the completion policy decides it and push its ledger lines (not yet
/// written). Completions of copies not in flight, or already in `plans`, are answered at once
/// with `NotClaimed`.
fn plan_batch(sh: &Shared, ledger: &mut Ledger, batch: Vec<Request>, plans: &mut Vec<Plan>) {
    if batch.is_empty() {
        return;
    }
    // The batch's in-flight records, copied under the index lock (their recipient lists with
    // them); the ledger lines are serialized after the lock is released, so claims are not held
    // up meanwhile.
    let mut work = Vec::with_capacity(batch.len());
    {
        let idx = lock(&sh.index);
        let mut in_batch: std::collections::HashSet<i64> =
            plans.iter().map(|p| p.copy_id).collect();
        for req in batch {
            let now = req.now;
            let places = Done::group(req.items.len(), req.reply);
            for ((copy_id, result), done) in req.items.into_iter().zip(places) {
                // A copy completed twice counts once.
                match idx.in_flight(copy_id) {
                    Some(f) if in_batch.insert(copy_id) => {
                        work.push(((copy_id, result, now, done), f.clone()));
                    }
                    _ => done.send(Err(SpoolError::NotClaimed(copy_id))),
                }
            }
        }
    }
    for ((copy_id, result, now, done), f) in work {
        let InFlight {
            job_id,
            pool,
            rcpts,
            attempts: previous_attempts,
            job_created,
            whole_job,
            ..
        } = f;
        let req = Item {
            copy_id,
            result,
            now,
        };
        let decision = policy::decide(
            &sh.opts,
            Attempt {
                outcomes: &req.result.rcpts,
                previous_attempts,
                job_created,
                now: req.now,
            },
        );
        let pool_name = pool.to_string();
        let mut plan = Plan {
            copy_id: req.copy_id,
            job_id,
            whole_job,
            rcpts: 0,
            delivered: 0,
            failed: Vec::new(),
            deferred: Vec::new(),
            // When the copy is next tried: set exactly when a recipient is deferred.
            not_before: decision.next_attempt.map_or(0, ms),
            now: ms(req.now),
            pool,
            age_secs: req.now.duration_since(job_created).as_secs_f64(),
            reply: done,
        };
        let mut line_error = None;
        for (rcpt, r) in rcpts.split('\n').zip(decision.recipients()) {
            match r.fate {
                Fate::Delivered => plan.delivered += 1,
                Fate::Failed => plan
                    .failed
                    .push((rcpt.to_owned(), r.reply.to_owned(), false)),
                Fate::Expired => plan
                    .failed
                    .push((rcpt.to_owned(), r.reply.to_owned(), true)),
                Fate::Deferred { .. } => {
                    plan.deferred.push((rcpt.to_owned(), r.reply.to_owned()));
                }
            }
            plan.rcpts += 1;
            let line =
                decision.ledger_line(r, rcpt, (job_id, req.copy_id, &pool_name), &req.result);
            if let Err(e) = ledger.push(&line) {
                line_error = Some(e);
                break;
            }
        }
        if let Some(e) = line_error {
            // Serializing a line into memory does not fail in practice; should it, the lines
            // of this copy already pushed cannot be told apart, so the copy is left in flight
            // (never sent again by this process) and the error returned.
            tracing::error!(copy = plan.copy_id, error = %e, "cannot write a ledger line");
            plan.reply
                .send(Err(SpoolError::io("writing a ledger line", e)));
            continue;
        }
        plans.push(plan);
    }
}

/// Write the ledger lines still pending, then commit the batch to the database. Lines written
/// by an earlier try of the same batch are not written again.
fn write_batch(sh: &Shared, ledger: &mut Ledger, plans: &[Plan]) -> Result<Vec<i64>, SpoolError> {
    ledger.commit().map_err(|e| {
        SpoolError::io(
            format!("appending to the ledger {}", ledger.path().display()),
            e,
        )
    })?;
    let mut db = lock(&sh.db);
    write_plans(&mut db, plans).map_err(|e| sh.locate(SpoolError::Db(e)))
}

/// The batch is durable: the copies leave flight (done, or deferred to their retry time) and
/// their workers hear so.
fn finish(sh: &Shared, plans: Vec<Plan>, done_jobs: Vec<i64>) {
    let mut idx = lock(&sh.index);
    for p in &plans {
        idx.complete(p.copy_id, (!p.deferred.is_empty()).then_some(p.not_before));
    }
    for j in done_jobs {
        idx.uncache_job(j);
    }
    drop(idx);
    // Counted once durable, as the ledger has them (OPS-3).
    for p in &plans {
        sh.opts.metrics.recorded_copy(
            &p.pool.to_string(),
            usize::try_from(p.delivered).unwrap_or(0),
            p.failed.len(),
            p.deferred.len(),
            p.age_secs,
        );
    }
    for p in plans {
        p.reply.send(Ok(()));
    }
}

/// One transaction for a batch of completions; returns the jobs that have no copy left.
///
/// Per copy done whose job has other copies left: the job's counters, the copy's row. Per copy
/// that was its job's last (every single-recipient job): the copy's row and the job's row, whose
/// counters (with this copy's) go into the per-pool totals, added up in memory and written once
/// per pool for the batch. A copy that held all its job's recipients (every single-recipient
/// job's) was its only one, and nothing of the job was counted before it: its job's row goes
/// without a look for other copies or at the job's counters (two statements fewer, one of them
/// a `RETURNING`, which builds a temporary table each time).
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
        let mut del_job = tx.prepare_cached("DELETE FROM jobs WHERE id = ?1")?;
        let mut left =
            tx.prepare_cached("SELECT EXISTS(SELECT 1 FROM copies WHERE job_id = ?1)")?;
        // A finished job's row goes, its counters into the per-pool totals.
        let mut finish =
            tx.prepare_cached("DELETE FROM jobs WHERE id = ?1 RETURNING pool, delivered, failed")?;
        let mut fold = tx.prepare_cached(
            "INSERT INTO totals(pool, delivered, failed) VALUES (?1, ?2, ?3)
             ON CONFLICT(pool) DO UPDATE SET delivered = delivered + excluded.delivered, failed = failed + excluded.failed",
        )?;
        // (pool, delivered, failed) of the jobs finished in this batch.
        let mut totals: Vec<(i64, i64, i64)> = Vec::new();
        let mut rcpts = String::new();
        for p in plans {
            let failed = p.failed.len() as i64;
            for (rcpt, reply, expired) in &p.failed {
                ins_fail.execute(params![p.job_id, p.copy_id, rcpt, reply, p.now, expired])?;
            }
            if p.deferred.is_empty() {
                del_copy.execute([p.copy_id])?;
                if p.whole_job {
                    if del_job.execute([p.job_id])? > 0 {
                        add_total(&mut totals, p.pool.index() as i64, p.delivered, failed);
                    }
                    done.push(p.job_id);
                    continue;
                }
                let any: bool = left.query_row([p.job_id], |r| r.get(0))?;
                if any {
                    upd_job.execute(params![p.job_id, p.delivered, failed])?;
                    continue;
                }
                let row = finish
                    .query_row([p.job_id], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, i64>(2)?,
                        ))
                    })
                    .optional()?;
                if let Some((pool, d, f)) = row {
                    add_total(&mut totals, pool, d + p.delivered, f + failed);
                }
                done.push(p.job_id);
            } else {
                upd_job.execute(params![p.job_id, p.delivered, failed])?;
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
        for (pool, d, f) in totals {
            fold.execute(params![pool, d, f])?;
        }
    }
    tx.commit()?;
    Ok(done)
}

/// Add a finished job's counters to its pool's in `totals` (pool, delivered, failed).
fn add_total(totals: &mut Vec<(i64, i64, i64)>, pool: i64, delivered: i64, failed: i64) {
    match totals.iter_mut().find(|t| t.0 == pool) {
        Some(t) => {
            t.1 += delivered;
            t.2 += failed;
        }
        None => totals.push((pool, delivered, failed)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::spool::{Outcome, RcptOutcome};

    /// A wall clock that reads what the test sets.
    #[derive(Debug)]
    struct Fixed(Mutex<Timestamp>);

    impl Clock for Fixed {
        fn now(&self) -> Timestamp {
            *lock(&self.0)
        }
        fn time_zone(&self) -> jiff::tz::TimeZone {
            jiff::tz::TimeZone::UTC
        }
    }

    fn rcpt(outcome: Outcome, reply: &str) -> RcptOutcome {
        RcptOutcome {
            outcome,
            reply: reply.to_string(),
        }
    }

    /// What the writer appends for one batch, byte for byte: the ledger's text is what readers
    /// of it (scripts, `jq`) depend on, whatever types the engine holds its fields in.
    #[tokio::test]
    async fn the_writer_appends_these_exact_ledger_lines() {
        let dir = tempfile::tempdir().unwrap();
        let start: Timestamp = "2026-11-22T07:30:00.123Z".parse().unwrap();
        let clock = Arc::new(Fixed(Mutex::new(start)));
        let opts = SpoolOptions {
            lifetime: std::time::Duration::from_secs(3600),
            ..SpoolOptions::default()
        };
        let spool = SqliteSpool::open(dir.path(), opts, clock.clone()).unwrap();
        let rcpts = ["a@x.example", "b@x.example", "c@x.example"];
        super::super::submit(
            dir.path(),
            "list@x.example",
            None,
            rcpts.iter().map(|r| r.to_string()),
            &b"Subject: t\r\n\r\nbody\r\n"[..],
        )
        .unwrap();
        spool.ingest_blocking().unwrap();
        let c = spool.claim(PoolSet::ALL).await.unwrap().unwrap();
        spool
            .complete(
                c.copy_id,
                CopyResult {
                    relay: Some("mx1:25".into()),
                    tls: None,
                    rcpts: vec![
                        rcpt(Outcome::Delivered, "250 2.6.0 Queued mail for delivery"),
                        rcpt(Outcome::Deferred, "451 4.3.0 \"later\""),
                        rcpt(Outcome::Failed, "550 5.1.1 unknown"),
                    ],
                },
            )
            .await
            .unwrap();
        // Past the lifetime: the deferred recipient fails, expired.
        *lock(&clock.0) = "2026-11-22T09:00:00Z".parse().unwrap();
        let c = spool.claim(PoolSet::ALL).await.unwrap().unwrap();
        assert_eq!(c.rcpts, vec!["b@x.example".to_string()]);
        spool
            .complete(
                c.copy_id,
                CopyResult {
                    relay: None,
                    tls: None,
                    rcpts: vec![rcpt(Outcome::Deferred, "421 4.4.0 unreachable")],
                },
            )
            .await
            .unwrap();
        let text = std::fs::read_to_string(dir.path().join(LEDGER_FILE)).unwrap();
        let want = [
            r#"{"time":"2026-11-22T07:30:00.123Z","job":1,"copy":1,"pool":"-","rcpt":"a@x.example","outcome":"delivered","relay":"mx1:25","reply":"250 2.6.0 Queued mail for delivery","attempts":1}"#,
            r#"{"time":"2026-11-22T07:30:00.123Z","job":1,"copy":1,"pool":"-","rcpt":"b@x.example","outcome":"deferred","relay":"mx1:25","reply":"451 4.3.0 \"later\"","attempts":1,"retry_at":"2026-11-22T07:30:30.123Z"}"#,
            r#"{"time":"2026-11-22T07:30:00.123Z","job":1,"copy":1,"pool":"-","rcpt":"c@x.example","outcome":"failed","relay":"mx1:25","reply":"550 5.1.1 unknown","attempts":1}"#,
            r#"{"time":"2026-11-22T09:00:00Z","job":1,"copy":1,"pool":"-","rcpt":"b@x.example","outcome":"failed","relay":null,"reply":"421 4.4.0 unreachable","attempts":2,"expired":true}"#,
        ];
        assert_eq!(text, want.map(|l| format!("{l}\n")).concat());
    }

    fn delivered(n: usize) -> CopyResult {
        CopyResult {
            relay: Some("mx1:25".into()),
            tls: None,
            rcpts: (0..n)
                .map(|_| rcpt(Outcome::Delivered, "250 2.0.0 ok"))
                .collect(),
        }
    }

    /// A copy of two recipients: the first delivered, the second deferred.
    fn delivered_and_deferred() -> CopyResult {
        CopyResult {
            relay: None,
            tls: None,
            rcpts: vec![
                rcpt(Outcome::Delivered, "250 ok"),
                rcpt(Outcome::Deferred, "451 later"),
            ],
        }
    }

    /// A spool of single-recipient copies: `jobs[i]` recipients in the pool `pools[i]` (a
    /// letter's index), one job each, submitted in that order.
    fn spool_with(dir: &Path, jobs: &[(usize, usize)]) -> SqliteSpool {
        spool_split(dir, 1, jobs)
    }

    /// [`spool_with`], each job split into copies of `max_bsmtp` recipients (the last one the
    /// rest).
    fn spool_split(dir: &Path, max_bsmtp: u32, jobs: &[(usize, usize)]) -> SqliteSpool {
        let opts = SpoolOptions {
            max_bsmtp,
            ..SpoolOptions::default()
        };
        let spool = SqliteSpool::open(dir, opts, crate::clock::SystemClock::shared()).unwrap();
        for (j, (n, pool)) in jobs.iter().enumerate() {
            super::super::submit(
                dir,
                "list@x.example",
                Pool::from_index(*pool),
                (0..*n).map(|i| format!("j{j}r{i}@x.example")),
                &b"Subject: t\r\n\r\nbody\r\n"[..],
            )
            .unwrap();
        }
        spool.ingest_blocking().unwrap();
        spool
    }

    /// A copy that holds all its job's recipients is its job's only one: done, its job's row
    /// goes at once with the copy's counts into the totals. A job of several copies, or one
    /// whose copy came back with fewer recipients (some deferred, the rest counted in the
    /// job's row), goes with its last copy, counted from its row.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_goes_with_its_last_copy_and_every_outcome_is_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        // MAXBSMTP 2. Job 1: 1 recipient (one copy), job 2: 3 (copies of 2 and 1), job 3: 2
        // (one copy).
        let spool = spool_split(dir.path(), 2, &[(1, 0), (3, 0), (2, 0)]);
        let c = spool
            .claim_many(PoolSet::ALL, 10, usize::MAX)
            .await
            .unwrap();
        let ids: Vec<i64> = c.iter().map(|c| c.copy_id).collect();
        assert_eq!(ids.len(), 4);
        let whole: Vec<bool> = {
            let idx = lock(&spool.shared().index);
            ids.iter()
                .map(|id| idx.in_flight(*id).unwrap().whole_job)
                .collect()
        };
        assert_eq!(whole, [true, false, false, true]);
        let jobs = |s: &QueueStats| (s.jobs, s.delivered, s.failed);

        // Job 2's first copy: its job stays for the other one.
        let r = spool.complete_many(vec![(ids[1], delivered(2))]).await;
        assert!(r.iter().all(|r| r.is_ok()));
        assert_eq!(jobs(&spool.stats().await.unwrap()), (3, 2, 0));
        // Job 1's copy: its job goes. Job 3's: one recipient delivered, one deferred (the job
        // stays, its row counting the delivered one).
        let r = spool
            .complete_many(vec![
                (ids[0], delivered(1)),
                (ids[3], delivered_and_deferred()),
            ])
            .await;
        assert!(r.iter().all(|r| r.is_ok()));
        assert_eq!(jobs(&spool.stats().await.unwrap()), (2, 4, 0));
        // Job 2's last copy fails: the job goes, counted from its row.
        let failed = CopyResult {
            relay: None,
            tls: None,
            rcpts: vec![rcpt(Outcome::Failed, "550 5.1.1 unknown")],
        };
        let r = spool.complete_many(vec![(ids[2], failed)]).await;
        assert!(r.iter().all(|r| r.is_ok()));
        assert_eq!(jobs(&spool.stats().await.unwrap()), (1, 4, 1));
        // Job 3's copy again, with the deferred recipient only: not its job's whole any more.
        assert_eq!(spool.flush(PoolSet::ALL).await.unwrap(), 1);
        let again = spool.claim(PoolSet::ALL).await.unwrap().unwrap();
        assert_eq!(again.copy_id, ids[3]);
        assert!(
            !lock(&spool.shared().index)
                .in_flight(again.copy_id)
                .unwrap()
                .whole_job
        );
        let r = spool
            .complete_many(vec![(again.copy_id, delivered(1))])
            .await;
        assert!(r.iter().all(|r| r.is_ok()));
        assert_eq!(jobs(&spool.stats().await.unwrap()), (0, 5, 1));
        assert_eq!(spool.queued_copies(), 0);
    }

    /// Claims in batches: oldest first, only the pools asked for, never a copy twice, a
    /// released copy claimable again, and the batch's completions recorded as one group.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn claim_many_takes_the_oldest_copies_of_the_pools_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let a = Pool::from_index(0).unwrap();
        let b = Pool::from_index(1).unwrap();
        // Job 1: 3 copies in A, job 2: 2 in B, job 3: 4 in A.
        let spool = spool_with(dir.path(), &[(3, 0), (2, 1), (4, 0)]);
        let only_a: PoolSet = std::iter::once(a).collect();
        let first = spool.claim_many(only_a, 4, usize::MAX).await.unwrap();
        let ids: Vec<i64> = first.iter().map(|c| c.copy_id).collect();
        assert_eq!(ids.len(), 4);
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first: {ids:?}");
        assert!(first.iter().all(|c| c.pool == a));
        assert_eq!(
            first.iter().map(|c| c.job_id).collect::<Vec<_>>(),
            vec![1, 1, 1, 3]
        );
        assert_eq!(first[3].rcpts, vec!["j2r0@x.example".to_string()]);
        assert_eq!(&first[0].message[..], b"Subject: t\r\n\r\nbody\r\n");
        // Fewer than asked once the pool runs out; none claimed twice.
        let rest = spool.claim_many(only_a, 10, usize::MAX).await.unwrap();
        assert_eq!(rest.len(), 3);
        assert!(rest.iter().all(|c| !ids.contains(&c.copy_id)));
        assert!(spool
            .claim_many(only_a, 10, usize::MAX)
            .await
            .unwrap()
            .is_empty());
        // Everything still counts as queued while in flight.
        assert_eq!(spool.queued_copies(), 9);
        // A released copy is claimable again, in its place (oldest first).
        spool.release(ids[1]);
        let all = spool
            .claim_many(PoolSet::ALL, 10, usize::MAX)
            .await
            .unwrap();
        let again: Vec<i64> = all.iter().map(|c| c.copy_id).collect();
        assert_eq!(again.len(), 3);
        assert_eq!(again[0], ids[1]);
        assert!(all[1..].iter().all(|c| c.pool == b));
        // One group of completions: each result in its place; a copy not claimed is refused
        // without holding up the others.
        let mut group: Vec<(i64, CopyResult)> = first
            .iter()
            .filter(|c| c.copy_id != ids[1])
            .chain(&rest)
            .chain(&all)
            .map(|c| (c.copy_id, delivered(c.rcpts.len())))
            .collect();
        group.insert(2, (9999, delivered(1)));
        let results = spool.complete_many(group).await;
        assert_eq!(results.len(), 10);
        assert!(matches!(results[2], Err(SpoolError::NotClaimed(9999))));
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 9);
        assert_eq!(spool.queued_copies(), 0);
        let stats = spool.stats().await.unwrap();
        assert_eq!((stats.delivered, stats.queued, stats.jobs), (9, 0, 0));
        let ledger = std::fs::read_to_string(dir.path().join(LEDGER_FILE)).unwrap();
        assert_eq!(ledger.lines().count(), 9);
        // Completing again is refused: they are done.
        let again = spool.complete_many(vec![(ids[0], delivered(1))]).await;
        assert!(matches!(again[0], Err(SpoolError::NotClaimed(_))));
    }

    /// A claim with a recipient budget takes the oldest copies up to the first one that would
    /// go over it, whether their rows were read ahead or not (a fresh spool has none): never a
    /// later, smaller copy past it, and nothing when the oldest copy alone is over the budget.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn claim_many_keeps_to_the_recipient_budget() {
        let dir = tempfile::tempdir().unwrap();
        // MAXBSMTP 3: copies of 3, 1, 2, 3 and 1 recipients, in that order.
        let spool = spool_split(dir.path(), 3, &[(3, 0), (1, 0), (2, 0), (3, 0), (1, 0)]);
        let sizes = |c: &[ClaimedCopy]| c.iter().map(|c| c.rcpts.len()).collect::<Vec<_>>();
        assert_eq!(lock(&spool.shared().index).prefetched(), 0);
        let a = spool.claim_many(PoolSet::ALL, 10, 5).await.unwrap();
        assert_eq!(sizes(&a), vec![3, 1], "the copy of 2 would make 6");
        assert!(spool
            .claim_many(PoolSet::ALL, 10, 1)
            .await
            .unwrap()
            .is_empty());
        let b = spool.claim_many(PoolSet::ALL, 1, 100).await.unwrap();
        assert_eq!(sizes(&b), vec![2]);
        let c = spool.claim_many(PoolSet::ALL, 10, 4).await.unwrap();
        assert_eq!(sizes(&c), vec![3, 1]);
        assert!(spool
            .claim_many(PoolSet::ALL, 10, 9)
            .await
            .unwrap()
            .is_empty());
        let ids: Vec<i64> = a.iter().chain(&b).chain(&c).map(|c| c.copy_id).collect();
        assert_eq!(ids, vec![1, 2, 3, 4, 5]);
    }

    /// Rows read ahead serve later claims, and a copy whose row a completion rewrote (deferred
    /// recipients kept) is read again: its next claim has only the deferred recipients.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rows_read_ahead_never_hide_a_rewritten_copy() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SpoolOptions {
            max_bsmtp: 2,
            ..SpoolOptions::default()
        };
        let spool =
            SqliteSpool::open(dir.path(), opts, crate::clock::SystemClock::shared()).unwrap();
        super::super::submit(
            dir.path(),
            "list@x.example",
            None,
            ["a", "b", "c", "d", "e"]
                .iter()
                .map(|r| format!("{r}@x.example")),
            &b"Subject: t\r\n\r\nbody\r\n"[..],
        )
        .unwrap();
        spool.ingest_blocking().unwrap();
        // The first claim reads copy 1 and the rows of copies 2 and 3 ahead.
        let c1 = spool.claim(PoolSet::ALL).await.unwrap().unwrap();
        assert_eq!(lock(&spool.shared().index).prefetched(), 2);
        let c2 = spool.claim(PoolSet::ALL).await.unwrap().unwrap();
        assert_eq!(c2.rcpts, vec!["c@x.example", "d@x.example"]);
        assert_eq!(lock(&spool.shared().index).prefetched(), 1);
        // Copy 2: c delivered, d deferred (its row now holds d only).
        let r = spool
            .complete_many(vec![
                (c1.copy_id, delivered(2)),
                (c2.copy_id, delivered_and_deferred()),
            ])
            .await;
        assert!(r.iter().all(|r| r.is_ok()));
        assert_eq!(spool.flush(PoolSet::ALL).await.unwrap(), 1);
        let rest = spool.claim_many(PoolSet::ALL, 5, usize::MAX).await.unwrap();
        let got: Vec<(i64, Vec<String>, u32)> = rest
            .iter()
            .map(|c| (c.copy_id, c.rcpts.clone(), c.attempts))
            .collect();
        assert_eq!(
            got,
            vec![
                (c2.copy_id, vec!["d@x.example".to_string()], 1),
                (c2.copy_id + 1, vec!["e@x.example".to_string()], 0),
            ]
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Whatever the sequence of batched claims (sizes, pools), releases and completions:
        /// each claim returns the oldest claimable copies of its pools, no copy is held twice,
        /// and in the end every recipient is recorded exactly once.
        #[test]
        fn batched_claims_match_a_model(
            jobs in proptest::collection::vec((1usize..5, 0usize..3), 1..6),
            ops in proptest::collection::vec((0usize..6, 0usize..8, 0u8..3, 0usize..6), 1..30),
        ) {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                // Copies of 1 or 2 recipients (MAXBSMTP 2).
                let spool = spool_split(dir.path(), 2, &jobs);
                // The model: claimable copies (id -> pool, recipients), ordered by id.
                let mut ready: std::collections::BTreeMap<i64, (Pool, usize)> = Default::default();
                let mut id = 0;
                for (n, p) in &jobs {
                    for k in (0..*n).step_by(2) {
                        id += 1;
                        ready.insert(id, (Pool::from_index(*p).unwrap(), (n - k).min(2)));
                    }
                }
                let total = ready.len();
                let mut held: Vec<ClaimedCopy> = Vec::new();
                let mut done = 0;
                for (n, pools, what, budget) in ops {
                    // Pools: one of three, two of them, or all.
                    let set: PoolSet = match pools % 4 {
                        0 => PoolSet::ALL,
                        k => (0..3).filter(|i| *i != k - 1).filter_map(Pool::from_index).collect(),
                    };
                    // A recipient budget of 0 to 4, or none.
                    let budget = if budget == 5 { usize::MAX } else { budget };
                    // The oldest copies of the pools, in order, up to the first that would go
                    // over the budget.
                    let mut room = budget;
                    let want: Vec<i64> = ready
                        .iter()
                        .filter(|(_, (p, _))| set.contains(*p))
                        .take(n)
                        .take_while(|(_, (_, k))| {
                            let fits = *k <= room;
                            room = room.saturating_sub(*k);
                            fits
                        })
                        .map(|(id, _)| *id)
                        .collect();
                    let got = spool.claim_many(set, n, budget).await.unwrap();
                    let ids: Vec<i64> = got.iter().map(|c| c.copy_id).collect();
                    proptest::prop_assert_eq!(&ids, &want);
                    for c in &got {
                        proptest::prop_assert_eq!(Some(c.rcpts.len()), ready.get(&c.copy_id).map(|r| r.1));
                    }
                    for id in &ids {
                        ready.remove(id);
                    }
                    held.extend(got);
                    match what {
                        // Give back the oldest held copy.
                        0 if !held.is_empty() => {
                            let c = held.remove(0);
                            spool.release(c.copy_id);
                            ready.insert(c.copy_id, (c.pool, c.rcpts.len()));
                        }
                        // Complete every held copy as one group.
                        1 => {
                            let group: Vec<_> = held
                                .drain(..)
                                .map(|c| (c.copy_id, delivered(c.rcpts.len())))
                                .collect();
                            done += group.len();
                            let r = spool.complete_many(group).await;
                            proptest::prop_assert!(r.iter().all(|r| r.is_ok()));
                        }
                        _ => {}
                    }
                    proptest::prop_assert_eq!(
                        spool.queued_copies() as usize,
                        total - done
                    );
                }
                // Finish: everything left, in batches.
                loop {
                    let got = spool.claim_many(PoolSet::ALL, 3, 4).await.unwrap();
                    if got.is_empty() {
                        break;
                    }
                    held.extend(got);
                }
                let group: Vec<_> = held
                    .drain(..)
                    .map(|c| (c.copy_id, delivered(c.rcpts.len())))
                    .collect();
                let r = spool.complete_many(group).await;
                proptest::prop_assert!(r.iter().all(|r| r.is_ok()));
                let ledger = std::fs::read_to_string(dir.path().join(LEDGER_FILE)).unwrap();
                let mut rcpts: Vec<&str> = ledger
                    .lines()
                    .filter_map(|l| l.split("\"rcpt\":\"").nth(1))
                    .filter_map(|r| r.split('"').next())
                    .collect();
                let total_rcpts: usize = jobs.iter().map(|(n, _)| n).sum();
                proptest::prop_assert_eq!(rcpts.len(), total_rcpts);
                rcpts.sort_unstable();
                rcpts.dedup();
                proptest::prop_assert_eq!(rcpts.len(), total_rcpts, "each recipient once");
                Ok(())
            })?;
        }
    }
}
