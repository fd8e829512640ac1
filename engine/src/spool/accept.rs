//! Jobs handed over whole ([`Spool::accept`](super::Spool::accept)): the SMTP listener's
//! messages. One thread commits them in groups: while one commit syncs, the jobs that arrive
//! wait for the next, so a disk flush is shared by every job that came meanwhile (LISTEN-3).

use std::sync::mpsc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use rusqlite::{params, Connection};
use tokio::sync::oneshot;

use super::sqlite::{lock, ms, Shared};
use super::{NewJob, SpoolError};
use crate::chunk::{chunk, SortMode};
use crate::config::Pool;

/// A job waiting for the next group commit.
pub(super) struct AcceptRequest {
    pub(super) job: NewJob,
    pub(super) reply: oneshot::Sender<Result<i64, SpoolError>>,
}

/// Most jobs in one commit (a bound on the transaction, not on throughput).
const GROUP_MAX: usize = 1024;

/// How long a commit waits, at most, for the messages being received meanwhile to join it;
/// only while some are ([`crate::listen::receiving`]: clients past their DATA's 354, whose
/// data is on its way), so a lone client is never delayed and one whose message is complete
/// is not made to wait for clients still at MAIL or RCPT. Bound: about two disk flushes
/// (fdatasync takes ~0.2 ms here), so a commit's latency at most doubles while the clients
/// that go in lock step (smtp-source's) share one flush instead of one each.
const GROUP_WAIT: Duration = Duration::from_micros(500);

/// Add to `group` every job waiting; then, while messages are still being received, wait for
/// them up to [`GROUP_WAIT`] after `first`.
fn gather(rx: &mpsc::Receiver<AcceptRequest>, group: &mut Vec<AcceptRequest>, first: Instant) {
    let deadline = first + GROUP_WAIT;
    loop {
        while group.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        if group.len() >= GROUP_MAX || crate::listen::receiving() == 0 {
            return;
        }
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        match rx.recv_timeout(deadline - now) {
            Ok(r) => group.push(r),
            Err(_) => return,
        }
    }
}

/// The accept thread: take every job waiting, commit them in one transaction (synchronous=FULL),
/// index their copies, then answer each with its job id. A commit that fails answers every
/// job of the group with the error: none of them is stored.
pub(super) fn accept_loop(sh: &Shared, rx: mpsc::Receiver<AcceptRequest>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        gather(&rx, &mut group, Instant::now());
        let now = sh.clock.now();
        let result = {
            let mut db = lock(&sh.db);
            commit_group(sh, &mut db, &group, now)
        };
        match result {
            Ok(stored) => {
                let now_ms = ms(now);
                let mut idx = lock(&sh.index);
                for (_, copies) in &stored {
                    for &(id, pool) in copies {
                        idx.add(id, pool, 0, now_ms);
                    }
                }
                drop(idx);
                sh.notify.notify_waiters();
                for (req, (job_id, _)) in group.into_iter().zip(stored) {
                    let _ = req.reply.send(Ok(job_id));
                }
            }
            Err(e) => {
                let e = sh.locate(e);
                tracing::error!(
                    spool = %sh.dir.display(),
                    jobs = group.len(),
                    error = %e,
                    "cannot commit accepted jobs; their senders are told to try again later"
                );
                let text = e.to_string();
                let full = e.is_disk_full();
                for req in group {
                    let err = if full {
                        SpoolError::DiskFull {
                            path: sh.dir.clone(),
                            detail: text.clone(),
                        }
                    } else {
                        SpoolError::Corrupt(text.clone())
                    };
                    let _ = req.reply.send(Err(err));
                }
            }
        }
    }
}

type Stored = Vec<(i64, Vec<(i64, Pool)>)>;

fn commit_group(
    sh: &Shared,
    db: &mut Connection,
    group: &[AcceptRequest],
    now: Timestamp,
) -> Result<Stored, SpoolError> {
    db.pragma_update(None, "synchronous", "FULL")?;
    let result = (|| {
        let tx = db.transaction()?;
        let mut stored = Vec::with_capacity(group.len());
        for req in group {
            stored.push(insert_job(sh, &tx, &req.job, now)?);
        }
        tx.commit()?;
        Ok::<_, rusqlite::Error>(stored)
    })();
    // Once committed, the jobs are stored whatever happens next: a failure to restore the
    // pragma must not tell their clients otherwise (they would send them again).
    if let Err(e) = db.pragma_update(None, "synchronous", "NORMAL") {
        tracing::warn!(error = %e, "cannot restore synchronous=NORMAL after accepting jobs");
    }
    Ok(result?)
}

/// One job and its copies (MAXBSMTP recipients each, SORT_RECIPIENTS order), as ingest stores
/// a job of a file.
fn insert_job(
    sh: &Shared,
    tx: &Connection,
    job: &NewJob,
    now: Timestamp,
) -> Result<(i64, Vec<(i64, Pool)>), rusqlite::Error> {
    let pool = job.pool.unwrap_or(sh.opts.default_pool);
    tx.prepare_cached(
        "INSERT INTO jobs(pool, mail_from, message, created, source, rcpts) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        pool.index() as i64,
        job.mail_from,
        &job.message[..],
        ms(now),
        job.source,
        job.rcpts.len() as i64
    ])?;
    let job_id = tx.last_insert_rowid();
    let max = sh.opts.split_size();
    let mode = SortMode::from_setting(sh.opts.sort_recipients);
    let mut copies = Vec::new();
    let mut st =
        tx.prepare_cached("INSERT INTO copies(job_id, pool, n, rcpts) VALUES (?1, ?2, ?3, ?4)")?;
    let mut buf = String::new();
    for part in chunk(&job.rcpts, max, mode) {
        buf.clear();
        for (k, &i) in part.iter().enumerate() {
            if k > 0 {
                buf.push('\n');
            }
            buf.push_str(&job.rcpts[i]);
        }
        st.execute(params![job_id, pool.index() as i64, part.len() as i64, buf])?;
        copies.push((tx.last_insert_rowid(), pool));
    }
    Ok((job_id, copies))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::SystemClock;
    use crate::config::PoolSet;
    use crate::spool::{Spool, SpoolOptions, SqliteSpool};

    fn job(i: usize, rcpts: usize, pool: Option<Pool>) -> NewJob {
        NewJob {
            mail_from: format!("owner-{i}@lists.example"),
            pool,
            rcpts: (0..rcpts)
                .map(|r| format!("r{r}@d{}.example", r % 3))
                .collect(),
            message: bytes::Bytes::from(format!("Subject: {i}\r\n\r\nbody {i}\r\n")),
            source: format!("smtp:test-{i}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn accepted_jobs_share_commits_are_split_into_copies_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SpoolOptions {
            max_bsmtp: 4,
            ..SpoolOptions::default()
        };
        let spool =
            Arc::new(SqliteSpool::open(dir.path(), opts.clone(), SystemClock::shared()).unwrap());
        let b = Pool::from_char('B').unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..50 {
            let s = spool.clone();
            let pool = (i % 2 == 0).then_some(b);
            tasks.spawn(async move { (i, s.accept(job(i, 10, pool)).await.unwrap()) });
        }
        let mut ids = Vec::new();
        while let Some(r) = tasks.join_next().await {
            ids.push(r.unwrap().1);
        }
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 50, "each job its own id");
        // 10 recipients at MAXBSMTP 4: copies of 4, 4, 2.
        assert_eq!(spool.queued_copies(), 150);
        let st = spool.stats().await.unwrap();
        assert_eq!((st.jobs, st.queued), (50, 500));
        let in_b: u64 = st
            .pools
            .iter()
            .filter(|p| p.pool == b)
            .map(|p| p.recipients)
            .sum();
        assert_eq!(in_b, 250, "XPOOL'd jobs in B, the rest in the default pool");
        drop(tasks);
        let spool = Arc::into_inner(spool).unwrap();
        drop(spool);
        // Reopened: every copy is there and claimable, with its message.
        let spool = SqliteSpool::open(dir.path(), opts, SystemClock::shared()).unwrap();
        assert_eq!(spool.queued_copies(), 150);
        let mut only_b = PoolSet::EMPTY;
        only_b.insert(b);
        let c = spool.claim(only_b).await.unwrap().unwrap();
        assert_eq!(c.rcpts.len(), 4);
        assert!(c.message.starts_with(b"Subject: "));
        let src: String = lock(&spool.shared().db)
            .query_row("SELECT source FROM jobs WHERE id = ?1", [c.job_id], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(src.starts_with("smtp:test-"), "{src}");
    }
}
