//! Ingest: `SPOOL/incoming/*.MAIL` -> jobs and copies in the database, one transaction per file,
//! committed (synchronous=FULL) before the file is removed. Recipients are streamed: in job order
//! they go straight into copies; when SORT_RECIPIENTS asks for an order they go through a
//! temporary staging table that SQLite sorts on disk, so memory stays flat for a million.
//!
//! This is one pass over `incoming/`; the loop that runs passes (how often, what is logged,
//! when `--until-empty` stops) is [`crate::intake`].

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use rusqlite::{params, Connection};

use super::sqlite::{lock, ms, Shared};
use super::{Folded, IngestReport, Quarantined, SetAside, SpoolError, INCOMING, QUARANTINE};
use crate::chunk::{domain_of, grouped_sizes, uniform_sizes, SortMode};
use crate::config::Pool;
use crate::job::{JobError, JobReader};

/// Is `name` a job file name (`*.MAIL`, any case)?
pub fn is_job_name(name: &str) -> bool {
    name.len() > 5
        && name
            .get(name.len() - 5..)
            .is_some_and(|ext| ext.eq_ignore_ascii_case(".MAIL"))
}

/// What an entry of `incoming/` with a job name is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file, or a symbolic link to a regular file outside `incoming/`: a job to read.
    Job,
    /// Anything else (a directory, a FIFO, a socket, a device, a dangling or looping link, a
    /// link to another job of `incoming/`): never opened, set aside with this reason.
    Odd(String),
}

/// An entry of `incoming/` that ingest acts on: "incoming work". [`list_incoming`] is the one
/// place that decides what counts, for the ingest pass, `--until-empty` and `smtpw queue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingFile {
    /// Its full path.
    pub path: PathBuf,
    /// The file name (read lossily when it is not UTF-8).
    pub name: String,
    /// Modification time, nanoseconds since the epoch (of the link's target for a link).
    pub mtime_ns: i64,
    /// Size in bytes.
    pub size: u64,
    /// What kind of entry it is.
    pub kind: EntryKind,
}

fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// "a directory", "a FIFO (named pipe)", ... for an entry that is not a regular file.
fn describe(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// What the entry at `path` (its own metadata `meta`, not followed) is, with the modification
/// time and size that identify its content.
fn classify(
    incoming: &mut Incoming<'_>,
    path: &Path,
    meta: &std::fs::Metadata,
) -> (EntryKind, i64, u64) {
    let ft = meta.file_type();
    let odd = |why: String| (EntryKind::Odd(why), mtime_ns(meta), meta.len());
    if ft.is_file() {
        return (EntryKind::Job, mtime_ns(meta), meta.len());
    }
    if !ft.is_symlink() {
        return odd(format!("{}, not a job file", describe(ft)));
    }
    match std::fs::metadata(path) {
        Ok(target) if target.is_file() => {
            // A link to another job of incoming/ would queue that job twice.
            let twice = std::fs::canonicalize(path).is_ok_and(|t| {
                t.parent() == incoming.canonical()
                    && t.file_name()
                        .is_some_and(|n| is_job_name(&n.to_string_lossy()))
            });
            if twice {
                odd("a symbolic link to another job in incoming (it would be queued twice)".into())
            } else {
                (EntryKind::Job, mtime_ns(&target), target.len())
            }
        }
        Ok(target) => odd(format!(
            "a symbolic link to {}, not to a job file",
            describe(target.file_type())
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            odd("a symbolic link to nothing (its target does not exist)".into())
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => odd("a loop of symbolic links".into()),
        Err(e) => odd(format!("a symbolic link that cannot be followed: {e}")),
    }
}

/// The incoming work of an incoming folder: every entry named `*.MAIL`, whatever it is, oldest
/// first (modification time, then name). Entries that are not jobs come with the reason they
/// will be set aside; nothing is opened here.
pub fn list_incoming(dir: &Path) -> std::io::Result<Vec<IncomingFile>> {
    let mut incoming = Incoming { dir, canon: None };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_job_name(&name) {
            continue;
        }
        let path = entry.path();
        let (kind, mtime_ns, size) = match std::fs::symlink_metadata(&path) {
            Ok(meta) => classify(&mut incoming, &path, &meta),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => (EntryKind::Odd(format!("cannot be examined: {e}")), 0, 0),
        };
        out.push(IncomingFile {
            path,
            name,
            mtime_ns,
            size,
            kind,
        });
    }
    out.sort_by(|a, b| (a.mtime_ns, &a.name).cmp(&(b.mtime_ns, &b.name)));
    Ok(out)
}

/// The folder being listed, its canonical path found only when a link needs it (a pass runs
/// every 200 ms: no needless system calls).
struct Incoming<'a> {
    dir: &'a Path,
    canon: Option<Option<PathBuf>>,
}

impl Incoming<'_> {
    fn canonical(&mut self) -> Option<&Path> {
        let dir = self.dir;
        self.canon
            .get_or_insert_with(|| std::fs::canonicalize(dir).ok())
            .as_deref()
    }
}

/// Open a job file for reading, never blocking: a FIFO (or anything else that is not a regular
/// file by the time it is opened) is refused with what it is.
pub(super) fn open_job(path: &Path) -> Result<File, OpenError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(OpenError::Io)?;
    let meta = file.metadata().map_err(OpenError::Io)?;
    if !meta.is_file() {
        return Err(OpenError::NotRegular(describe(meta.file_type())));
    }
    Ok(file)
}

pub(super) enum OpenError {
    Io(std::io::Error),
    NotRegular(&'static str),
}

/// First wait before looking again at an entry that could be neither read nor moved; it doubles
/// at every look up to [`ASIDE_MAX`].
pub const ASIDE_FIRST: std::time::Duration = std::time::Duration::from_secs(60);
/// The longest wait before looking again at such an entry.
pub const ASIDE_MAX: std::time::Duration = std::time::Duration::from_secs(3600);

/// Entries of `incoming/` that could be neither read nor moved to quarantine, by name: each is
/// reported once, then looked at again with a growing interval. A changed modification time
/// or size is a new file, looked at again at once.
#[derive(Debug, Default)]
pub(super) struct SetAsideEntries {
    by_name: HashMap<String, AsideEntry>,
}

#[derive(Debug)]
struct AsideEntry {
    mtime_ns: i64,
    size: u64,
    reason: String,
    interval: std::time::Duration,
    next_look: Timestamp,
}

impl SetAsideEntries {
    /// `Some(reason)` while `f` waits for its next look.
    fn waiting(&mut self, f: &IncomingFile, now: Timestamp) -> Option<String> {
        let a = self.by_name.get(&f.name)?;
        let same = (a.mtime_ns, a.size) == (f.mtime_ns, f.size);
        (same && now < a.next_look).then(|| a.reason.clone())
    }

    /// Note that `f` could be neither read nor moved; true the first time (report it then).
    fn note(&mut self, f: &IncomingFile, reason: &str, now: Timestamp) -> bool {
        let interval = match self.by_name.get(&f.name) {
            Some(a) if (a.mtime_ns, a.size) == (f.mtime_ns, f.size) => {
                a.interval.saturating_mul(2).min(ASIDE_MAX)
            }
            _ => ASIDE_FIRST,
        };
        let first = interval == ASIDE_FIRST;
        let next_look = now.checked_add(interval).unwrap_or(Timestamp::MAX);
        self.by_name.insert(
            f.name.clone(),
            AsideEntry {
                mtime_ns: f.mtime_ns,
                size: f.size,
                reason: reason.to_string(),
                interval,
                next_look,
            },
        );
        first
    }

    /// Forget `name` (read or moved at last); true if it had been set aside.
    fn forget(&mut self, name: &str) -> bool {
        self.by_name.remove(name).is_some()
    }

    /// Forget entries no longer in `incoming/` (an operator removed them).
    fn keep_only(&mut self, present: &[IncomingFile]) {
        if self.by_name.is_empty() {
            return;
        }
        let names: HashSet<&str> = present.iter().map(|f| f.name.as_str()).collect();
        self.by_name.retain(|n, _| names.contains(n.as_str()));
    }
}

/// New copies to index: (copy id, pool).
type NewCopies = Vec<(i64, Pool)>;

/// What was committed of one file.
#[derive(Debug, Default)]
pub(super) struct FileIngest {
    jobs: u64,
    rcpts: u64,
    /// Copies to index.
    copies: NewCopies,
    /// Jobs whose long lines were folded: (`MAIL FROM` line, lines folded).
    folded: Vec<(u64, u64)>,
}

/// What one batch transaction committed (files not yet removed).
#[derive(Debug, Default)]
pub(super) struct Batch {
    /// Committed now.
    ingested: Vec<(IncomingFile, FileIngest)>,
    /// Committed by an earlier pass (a crash came before their removal).
    already_in: Vec<IncomingFile>,
    /// Files nothing of which was committed, with why and the line (0: none): malformed,
    /// unreadable, or not a regular file after all. Each goes to quarantine.
    rejected: Vec<(IncomingFile, String, u64)>,
}

/// Files per batch transaction, and recipients after which a batch is closed.
const BATCH_FILES: usize = 512;
const BATCH_RCPTS: u64 = 200_000;

/// Accumulates recipients into copy rows.
struct CopyWriter<'a> {
    tx: &'a Connection,
    job_id: i64,
    pool: Pool,
    buf: String,
    n: u32,
    out: &'a mut Vec<(i64, Pool)>,
}

impl CopyWriter<'_> {
    fn push(&mut self, rcpt: &str) {
        if self.n > 0 {
            self.buf.push('\n');
        }
        self.buf.push_str(rcpt);
        self.n += 1;
    }
    fn flush(&mut self) -> Result<(), rusqlite::Error> {
        if self.n == 0 {
            return Ok(());
        }
        self.tx
            .prepare_cached("INSERT INTO copies(job_id, pool, n, rcpts) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![
                self.job_id,
                self.pool.index() as i64,
                self.n,
                self.buf
            ])?;
        self.out.push((self.tx.last_insert_rowid(), self.pool));
        self.buf.clear();
        self.n = 0;
        Ok(())
    }
}

#[derive(Debug)]
enum Abort {
    /// The file breaks the job format.
    Job(JobError),
    /// The file could not be read (the file's trouble, not the spool's).
    Read(std::io::Error),
    Spool(SpoolError),
}

impl From<rusqlite::Error> for Abort {
    fn from(e: rusqlite::Error) -> Self {
        Abort::Spool(SpoolError::Db(e))
    }
}

impl From<JobError> for Abort {
    fn from(e: JobError) -> Self {
        match e {
            JobError::Io(io) => Abort::Read(io),
            other => Abort::Job(other),
        }
    }
}

impl Shared {
    /// One ingest pass over `incoming/`: files are committed in batches (one transaction,
    /// synchronous=FULL, per up to 512 files), then removed. An entry that is not a job, or
    /// cannot be read, or is malformed, goes to quarantine; if it cannot be moved either, it is
    /// set aside (reported once, looked at again with back-off) and the pass goes on.
    pub(super) fn ingest_all(&self, now: Timestamp) -> Result<IngestReport, SpoolError> {
        let _pass = lock(&self.ingest_lock);
        let incoming = self.dir.join(INCOMING);
        let entries = list_incoming(&incoming)
            .map_err(|e| SpoolError::io(format!("listing {}", incoming.display()), e))?;
        let mut report = IngestReport::default();
        lock(&self.aside).keep_only(&entries);
        let mut files = Vec::with_capacity(entries.len());
        for f in entries {
            if let Some(reason) = lock(&self.aside).waiting(&f, now) {
                report.stuck.push(set_aside(&f, reason));
                continue;
            }
            match &f.kind {
                EntryKind::Job => files.push(f),
                EntryKind::Odd(why) => {
                    let why = why.clone();
                    self.reject(f, &why, 0, now, &mut report);
                }
            }
        }
        let mut rest = files.as_slice();
        while !rest.is_empty() {
            let (batch, used) = {
                let mut db = lock(&self.db);
                self.ingest_batch(&mut db, rest, now)?
            };
            rest = &rest[used..];
            let mut removed = Vec::new();
            let now_ms = ms(now);
            for (f, done) in batch.ingested {
                let FileIngest {
                    jobs,
                    rcpts,
                    copies,
                    folded,
                } = done;
                remove(&f.path)?;
                report.files += 1;
                report.jobs += jobs;
                report.recipients += rcpts;
                report.copies += copies.len() as u64;
                let mut idx = lock(&self.index);
                for (id, pool) in copies {
                    idx.add(id, pool, 0, now_ms);
                }
                drop(idx);
                for (line, lines) in folded {
                    report.folded.push(Folded {
                        file: f.name.clone(),
                        line,
                        lines,
                    });
                }
                if lock(&self.aside).forget(&f.name) {
                    report.resumed.push(f.name.clone());
                }
                tracing::debug!(file = %f.name, jobs, recipients = rcpts, "ingested");
                removed.push(f);
            }
            self.notify.notify_waiters();
            for f in batch.already_in {
                remove(&f.path)?;
                removed.push(f);
            }
            for (f, why, line) in batch.rejected {
                self.reject(f, &why, line, now, &mut report);
            }
            if !removed.is_empty() {
                // The files are gone: their "committed but not yet removed" records can go too.
                let mut db = lock(&self.db);
                let tx = db.transaction()?;
                {
                    let mut del = tx.prepare_cached(
                        "DELETE FROM ingested WHERE name = ?1 AND mtime_ns = ?2 AND size = ?3",
                    )?;
                    for f in &removed {
                        del.execute(params![f.name, f.mtime_ns, f.size as i64])?;
                    }
                }
                tx.commit()?;
            }
        }
        Ok(report)
    }

    /// Quarantine `f` for `why`; when it cannot be moved, set it aside instead.
    fn reject(
        &self,
        f: IncomingFile,
        why: &str,
        line: u64,
        now: Timestamp,
        report: &mut IngestReport,
    ) {
        match self.quarantine(&f, why, line, now) {
            Ok(q) => {
                if lock(&self.aside).forget(&f.name) {
                    report.resumed.push(f.name.clone());
                }
                report.quarantined.push(q);
            }
            Err(e) => {
                let reason = format!("{why}; it cannot be moved to quarantine either: {e}");
                let first = lock(&self.aside).note(&f, &reason, now);
                let entry = set_aside(&f, reason);
                if first {
                    report.set_aside.push(entry.clone());
                }
                report.stuck.push(entry);
            }
        }
    }

    /// Commit a batch of files from the front of `files` in one transaction (each file in its
    /// own savepoint, so a malformed one leaves nothing behind). Returns what was done and how
    /// many files were looked at. Nothing is removed or moved here.
    pub(super) fn ingest_batch(
        &self,
        db: &mut Connection,
        files: &[IncomingFile],
        now: Timestamp,
    ) -> Result<(Batch, usize), SpoolError> {
        db.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS staging(seq INTEGER PRIMARY KEY, domain TEXT NOT NULL, addr TEXT NOT NULL);
             PRAGMA synchronous = FULL;",
        )?;
        let result = (|| {
            let mut batch = Batch::default();
            let mut used = 0;
            let mut rcpts_in_batch = 0u64;
            let mut tx = db.transaction()?;
            for f in files {
                if batch.ingested.len() >= BATCH_FILES || rcpts_in_batch >= BATCH_RCPTS {
                    break;
                }
                used += 1;
                let seen: bool = tx.query_row(
                    "SELECT EXISTS(SELECT 1 FROM ingested WHERE name = ?1 AND mtime_ns = ?2 AND size = ?3)",
                    params![f.name, f.mtime_ns, f.size as i64],
                    |r| r.get(0),
                )?;
                if seen {
                    batch.already_in.push(f.clone());
                    continue;
                }
                let file = match open_job(&f.path) {
                    Ok(file) => file,
                    Err(OpenError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(OpenError::Io(e)) => {
                        batch
                            .rejected
                            .push((f.clone(), format!("cannot be read: {e}"), 0));
                        continue;
                    }
                    Err(OpenError::NotRegular(what)) => {
                        batch
                            .rejected
                            .push((f.clone(), format!("{what}, not a job file"), 0));
                        continue;
                    }
                };
                let sp = tx.savepoint()?;
                match self.ingest_jobs(&sp, file, f, now) {
                    Ok(done) => {
                        sp.execute(
                            "INSERT OR IGNORE INTO ingested(name, mtime_ns, size) VALUES (?1, ?2, ?3)",
                            params![f.name, f.mtime_ns, f.size as i64],
                        )?;
                        sp.commit()?;
                        rcpts_in_batch += done.rcpts;
                        batch.ingested.push((f.clone(), done));
                    }
                    Err(Abort::Job(e)) => {
                        drop(sp); // rolls back this file
                        let line = match &e {
                            JobError::Malformed { line, .. } | JobError::TooLarge { line, .. } => {
                                *line
                            }
                            JobError::Io(_) => 0,
                        };
                        batch.rejected.push((f.clone(), e.to_string(), line));
                    }
                    Err(Abort::Read(e)) => {
                        drop(sp);
                        batch
                            .rejected
                            .push((f.clone(), format!("cannot be read: {e}"), 0));
                    }
                    Err(e) => return Err(e),
                }
            }
            tx.commit()?;
            Ok::<_, Abort>((batch, used))
        })();
        db.pragma_update(None, "synchronous", "NORMAL")?;
        match result {
            Ok(r) => Ok(r),
            Err(Abort::Spool(e)) => Err(e),
            Err(Abort::Job(e)) => Err(SpoolError::Corrupt(format!("unexpected job error: {e}"))),
            Err(Abort::Read(e)) => Err(SpoolError::io("reading a job file", e)),
        }
    }

    fn ingest_jobs(
        &self,
        tx: &Connection,
        file: File,
        f: &IncomingFile,
        now: Timestamp,
    ) -> Result<FileIngest, Abort> {
        let max = self.opts.split_size();
        let mode = SortMode::from_setting(self.opts.sort_recipients);
        let mut reader = JobReader::new(
            BufReader::with_capacity(256 * 1024, file),
            self.opts.max_message_bytes,
        );
        let mut copies = Vec::new();
        let mut folded_jobs = Vec::new();
        let (mut jobs, mut total_rcpts) = (0u64, 0u64);
        while let Some(h) = reader.next_job()? {
            let pool = h.pool.unwrap_or(self.opts.default_pool);
            tx.prepare_cached(
                "INSERT INTO jobs(pool, mail_from, message, created, source, rcpts) VALUES (?1, ?2, NULL, ?3, ?4, 0)",
            )?
            .execute(params![pool.index() as i64, h.mail_from, ms(now), f.name])?;
            let job_id = tx.last_insert_rowid();
            let mut w = CopyWriter {
                tx,
                job_id,
                pool,
                buf: String::with_capacity(64 * usize::try_from(max.min(4096)).unwrap_or(64)),
                n: 0,
                out: &mut copies,
            };
            let mut n = 0u64;
            if mode == SortMode::Unsorted {
                while let Some(r) = reader.next_rcpt()? {
                    w.push(r);
                    n += 1;
                    if w.n >= max {
                        w.flush()?;
                    }
                }
                w.flush()?;
            } else {
                {
                    let mut ins = tx
                        .prepare_cached("INSERT INTO temp.staging(domain, addr) VALUES (?1, ?2)")?;
                    let mut key = String::new();
                    while let Some(r) = reader.next_rcpt()? {
                        key.clear();
                        key.push_str(domain_of(r));
                        key.make_ascii_lowercase();
                        ins.execute(params![key, r])?;
                        n += 1;
                    }
                }
                let sorted = mode.sorts(n, max);
                let sizes: Vec<u32> = if sorted && mode == SortMode::DomainGrouped {
                    let mut st = tx.prepare_cached(
                        "SELECT COUNT(*) FROM temp.staging GROUP BY domain ORDER BY domain",
                    )?;
                    let groups: Vec<u32> = st
                        .query_map([], |r| r.get::<_, u32>(0))?
                        .collect::<Result<_, _>>()?;
                    grouped_sizes(&groups, max)
                } else {
                    uniform_sizes(n, max).collect()
                };
                let sql = if sorted {
                    "SELECT addr FROM temp.staging ORDER BY domain, addr"
                } else {
                    "SELECT addr FROM temp.staging ORDER BY seq"
                };
                let mut st = tx.prepare_cached(sql)?;
                let mut rows = st.query([])?;
                for size in sizes {
                    for _ in 0..size {
                        let Some(row) = rows.next()? else { break };
                        let addr = row.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?;
                        w.push(addr);
                    }
                    w.flush()?;
                }
                drop(rows);
                tx.execute("DELETE FROM temp.staging", [])?;
            }
            let message = reader.read_message()?;
            if reader.folded_lines() > 0 {
                folded_jobs.push((h.line, reader.folded_lines()));
            }
            tx.prepare_cached("UPDATE jobs SET message = ?2, rcpts = ?3 WHERE id = ?1")?
                .execute(params![job_id, message, n as i64])?;
            jobs += 1;
            total_rcpts += n;
        }
        Ok(FileIngest {
            jobs,
            rcpts: total_rcpts,
            copies,
            folded: folded_jobs,
        })
    }

    /// Move `f` to `quarantine/` (a free name: `NAME`, `NAME.1`, ...) with `NAME.reason` beside
    /// it. On failure nothing is left behind (no reason file without its entry).
    fn quarantine(
        &self,
        f: &IncomingFile,
        why: &str,
        line: u64,
        now: Timestamp,
    ) -> Result<Quarantined, SpoolError> {
        quarantine(&self.dir, f, why, line, now)
    }
}

/// Move `f` to `DIR/quarantine/` (a free name: `NAME`, `NAME.1`, ...) with `NAME.reason` beside
/// it. On failure nothing is left behind (no reason file without its entry).
pub(super) fn quarantine(
    dir: &Path,
    f: &IncomingFile,
    why: &str,
    line: u64,
    now: Timestamp,
) -> Result<Quarantined, SpoolError> {
    let qdir = dir.join(QUARANTINE);
    std::fs::create_dir_all(&qdir)
        .map_err(|e| SpoolError::io(format!("creating {}", qdir.display()), e))?;
    // `symlink_metadata`: a dangling link already in quarantine is taken too.
    let taken = |p: &Path| std::fs::symlink_metadata(p).is_ok();
    let mut dest = qdir.join(&f.name);
    let mut k = 1;
    while taken(&dest) {
        dest = qdir.join(format!("{}.{k}", f.name));
        k += 1;
    }
    let reason = format!("{}/{}: {why}", INCOMING, f.name);
    let mut reason_path = dest.clone().into_os_string();
    reason_path.push(".reason");
    let reason_path = PathBuf::from(reason_path);
    let text = format!(
        "{reason}\nfile: {}/{}\nline: {line}\nquarantined: {}\n",
        INCOMING, f.name, now
    );
    super::write_all(&reason_path, text.as_bytes()).inspect_err(|_| {
        let _ = std::fs::remove_file(&reason_path);
    })?;
    if let Err(e) = std::fs::rename(&f.path, &dest) {
        let _ = std::fs::remove_file(&reason_path);
        return Err(SpoolError::io(
            format!("moving {} to {}", f.path.display(), qdir.display()),
            e,
        ));
    }
    Ok(Quarantined { file: dest, reason })
}

fn set_aside(f: &IncomingFile, reason: String) -> SetAside {
    SetAside {
        file: f.path.clone(),
        name: f.name.clone(),
        reason,
    }
}

fn remove(p: &Path) -> Result<(), SpoolError> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SpoolError::io(format!("removing {}", p.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::spool::{submit, Spool, SpoolOptions, SqliteSpool};

    #[test]
    fn a_file_committed_but_not_removed_is_not_ingested_twice() {
        let dir = tempfile::tempdir().unwrap();
        let clock = SystemClock::shared();
        let spool = SqliteSpool::open(dir.path(), SpoolOptions::default(), clock.clone()).unwrap();
        let rcpts = (0..4).map(|i| format!("r{i}@x.example"));
        let path = submit(dir.path(), "o@l", None, rcpts, &b"hi\r\n"[..]).unwrap();
        let f = list_incoming(&dir.path().join(INCOMING)).unwrap().remove(0);
        assert_eq!(f.path, path);
        // Commit the file as a pass would, then "crash" before removing it.
        let sh = spool.shared();
        let (batch, used) = sh
            .ingest_batch(&mut lock(&sh.db), std::slice::from_ref(&f), clock.now())
            .unwrap();
        assert_eq!(used, 1);
        assert_eq!(batch.ingested[0].1.rcpts, 4);
        // The restart's pass finds it committed: removed, nothing queued twice.
        drop(spool);
        let spool = SqliteSpool::open(dir.path(), SpoolOptions::default(), clock.clone()).unwrap();
        let rep = spool.ingest_blocking().unwrap();
        assert_eq!((rep.jobs, rep.recipients), (0, 0));
        assert!(!path.exists());
        let n: i64 = lock(&spool.shared().db)
            .query_row("SELECT COUNT(*) FROM ingested", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0, "the record goes once the file is gone");
        let st = block_on(spool.stats()).unwrap();
        assert_eq!((st.queued, st.copies, st.jobs), (4, 1, 1));
    }

    #[test]
    fn the_look_again_interval_doubles_from_a_minute_to_an_hour() {
        let mut a = SetAsideEntries::default();
        let f = IncomingFile {
            path: PathBuf::from("x.MAIL"),
            name: "x.MAIL".into(),
            mtime_ns: 7,
            size: 9,
            kind: EntryKind::Job,
        };
        let t0 = Timestamp::UNIX_EPOCH;
        let mut now = t0;
        let mut waits = Vec::new();
        for k in 0..9 {
            assert_eq!(a.note(&f, "r", now), k == 0, "reported the first time only");
            let mut m = 0;
            while a.waiting(&f, now).is_some() {
                now += jiff::SignedDuration::from_mins(1);
                m += 1;
            }
            waits.push(m);
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        // Another file under the same name (new mtime or size) is looked at at once.
        let g = IncomingFile {
            size: 10,
            ..f.clone()
        };
        a.note(&f, "r", now);
        assert!(a.waiting(&f, now).is_some());
        assert!(a.waiting(&g, now).is_none());
        assert!(a.note(&g, "r", now), "a new file is reported anew");
        assert!(a.forget("x.MAIL"));
        assert!(!a.forget("x.MAIL"));
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }
}
