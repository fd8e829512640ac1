//! Ingest: `SPOOL/incoming/*.MAIL` -> jobs and copies in the database, one transaction per file,
//! committed (synchronous=FULL) before the file is removed. Recipients are streamed: in job order
//! they go straight into copies; when SORT_RECIPIENTS asks for an order they go through a
//! temporary staging table that SQLite sorts on disk, so memory stays flat for a million.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use rusqlite::{params, Connection};

use super::sqlite::{lock, ms, Shared};
use super::{IngestReport, Quarantined, SpoolError, INCOMING, QUARANTINE};
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

/// A job file waiting in `incoming/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingFile {
    pub path: PathBuf,
    pub name: String,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    pub size: u64,
}

/// The `*.MAIL` files of an incoming folder, oldest first (modification time, then name).
pub fn list_incoming(dir: &Path) -> std::io::Result<Vec<IncomingFile>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if !is_job_name(&name) {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        out.push(IncomingFile {
            path: entry.path(),
            name,
            mtime_ns,
            size: meta.len(),
        });
    }
    out.sort_by(|a, b| (a.mtime_ns, &a.name).cmp(&(b.mtime_ns, &b.name)));
    Ok(out)
}

/// New copies to index: (copy id, pool).
type NewCopies = Vec<(i64, Pool)>;

/// What one batch transaction committed (files not yet removed).
#[derive(Debug, Default)]
pub(super) struct Batch {
    /// Committed now: file, jobs, recipients, copies to index.
    ingested: Vec<(IncomingFile, u64, u64, NewCopies)>,
    /// Committed by an earlier pass (a crash came before their removal).
    already_in: Vec<IncomingFile>,
    malformed: Vec<(IncomingFile, JobError)>,
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
    Job(JobError),
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
            JobError::Io(io) => Abort::Spool(SpoolError::io("reading a job file", io)),
            other => Abort::Job(other),
        }
    }
}

impl Shared {
    /// One ingest pass over `incoming/`: files are committed in batches (one transaction,
    /// synchronous=FULL, per up to 512 files), then removed.
    pub(super) fn ingest_all(&self, now: Timestamp) -> Result<IngestReport, SpoolError> {
        let _pass = lock(&self.ingest_lock);
        let incoming = self.dir.join(INCOMING);
        let files = list_incoming(&incoming)
            .map_err(|e| SpoolError::io(format!("listing {}", incoming.display()), e))?;
        let mut report = IngestReport::default();
        let mut rest = files.as_slice();
        while !rest.is_empty() {
            let (batch, used) = {
                let mut db = lock(&self.db);
                self.ingest_batch(&mut db, rest, now)?
            };
            rest = &rest[used..];
            let mut removed = Vec::new();
            let now_ms = ms(now);
            for (f, jobs, rcpts, copies) in batch.ingested {
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
                tracing::debug!(file = %f.name, jobs, recipients = rcpts, "ingested");
                removed.push(f);
            }
            self.notify.notify_waiters();
            for f in batch.already_in {
                remove(&f.path)?;
                removed.push(f);
            }
            for (f, err) in batch.malformed {
                let q = self.quarantine(&f, &err, now)?;
                tracing::warn!(file = %f.name, reason = %q.reason, "quarantined");
                report.quarantined.push(q);
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
        if report.files > 0 {
            tracing::info!(
                files = report.files,
                jobs = report.jobs,
                recipients = report.recipients,
                copies = report.copies,
                "ingested"
            );
        }
        Ok(report)
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
                let file = match File::open(&f.path) {
                    Ok(file) => file,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        return Err(Abort::Spool(SpoolError::io(
                            format!("opening {}", f.path.display()),
                            e,
                        )))
                    }
                };
                let sp = tx.savepoint()?;
                match self.ingest_jobs(&sp, file, f, now) {
                    Ok((jobs, rcpts, copies)) => {
                        sp.execute(
                            "INSERT OR IGNORE INTO ingested(name, mtime_ns, size) VALUES (?1, ?2, ?3)",
                            params![f.name, f.mtime_ns, f.size as i64],
                        )?;
                        sp.commit()?;
                        rcpts_in_batch += rcpts;
                        batch.ingested.push((f.clone(), jobs, rcpts, copies));
                    }
                    Err(Abort::Job(e)) => {
                        drop(sp); // rolls back this file
                        batch.malformed.push((f.clone(), e));
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
        }
    }

    fn ingest_jobs(
        &self,
        tx: &Connection,
        file: File,
        f: &IncomingFile,
        now: Timestamp,
    ) -> Result<(u64, u64, NewCopies), Abort> {
        let max = self.opts.max_bsmtp.max(1);
        let mode = SortMode::from_setting(self.opts.sort_recipients);
        let mut reader = JobReader::new(
            BufReader::with_capacity(256 * 1024, file),
            self.opts.max_message_bytes,
        );
        let mut copies = Vec::new();
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
            tx.prepare_cached("UPDATE jobs SET message = ?2, rcpts = ?3 WHERE id = ?1")?
                .execute(params![job_id, message, n as i64])?;
            jobs += 1;
            total_rcpts += n;
        }
        Ok((jobs, total_rcpts, copies))
    }

    fn quarantine(
        &self,
        f: &IncomingFile,
        err: &JobError,
        now: Timestamp,
    ) -> Result<Quarantined, SpoolError> {
        let qdir = self.dir.join(QUARANTINE);
        std::fs::create_dir_all(&qdir)
            .map_err(|e| SpoolError::io(format!("creating {}", qdir.display()), e))?;
        let mut dest = qdir.join(&f.name);
        let mut k = 1;
        while dest.exists() {
            dest = qdir.join(format!("{}.{k}", f.name));
            k += 1;
        }
        let reason = format!("{}/{}: {err}", INCOMING, f.name);
        let line = match err {
            JobError::Malformed { line, .. } | JobError::TooLarge { line, .. } => *line,
            JobError::Io(_) => 0,
        };
        let mut reason_path = dest.clone().into_os_string();
        reason_path.push(".reason");
        let text = format!(
            "{reason}\nfile: {}/{}\nline: {line}\nquarantined: {}\n",
            INCOMING, f.name, now
        );
        super::write_all(Path::new(&reason_path), text.as_bytes())?;
        std::fs::rename(&f.path, &dest)
            .map_err(|e| SpoolError::io(format!("moving {} to quarantine", f.path.display()), e))?;
        Ok(Quarantined { file: dest, reason })
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
        assert_eq!(batch.ingested[0].2, 4);
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

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }
}
