//! Jobs handed over whole ([`Spool::accept`](super::Spool::accept)): the SMTP listener's
//! messages, committed in groups by their callers themselves (LISTEN-3).
//!
//! A caller queues its job, lets the other ready tasks of its thread run once (the sessions
//! that have a message ready queue theirs), then, unless another caller is committing (the
//! leader), becomes the leader: it commits everything queued in one transaction
//! (synchronous=FULL) on its own thread and answers each job. While a commit syncs, the jobs
//! that arrive wait for the next, so a disk flush is shared by every job that came meanwhile.
//! No job goes to another thread and back (each hand-off is a thread wake-up, costly on a
//! loaded machine): the only wake-ups left are the answers to callers on other threads.
//!
//! A leader commits at most [`ROUNDS`] groups, then hands the next group (and the lead) to one
//! of its callers, so the leader's own client is not kept waiting for its reply while others
//! keep sending.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use rusqlite::{params, Connection};
use tokio::sync::oneshot;

use super::sqlite::{lock, ms, Shared};
use super::{NewJob, SpoolError};
use crate::chunk::{chunk, SortMode};
use crate::config::Pool;

/// A job waiting for the next group commit.
pub(super) struct AcceptRequest {
    job: NewJob,
    reply: oneshot::Sender<Reply>,
}

/// What a caller is told.
enum Reply {
    /// Its job's id (committed), or why it is not stored.
    Stored(Result<i64, SpoolError>),
    /// Lead: commit this group (which holds the caller's job), then the queue; the caller's
    /// own answer comes on the receiver.
    Lead(Vec<AcceptRequest>, oneshot::Receiver<Reply>),
}

/// Most jobs in one commit (a bound on the transaction, not on throughput).
const GROUP_MAX: usize = 1024;

/// Groups a leader commits before it hands the lead to another caller.
const ROUNDS: usize = 1;

/// The jobs waiting for a commit, and whether some caller is committing.
#[derive(Default)]
pub(super) struct Acceptor {
    queue: Mutex<Vec<AcceptRequest>>,
    /// Set while a caller leads (commits), or while the lead is on its way to a caller in a
    /// [`Reply::Lead`].
    leading: AtomicBool,
}

impl Acceptor {
    fn try_lead(&self) -> bool {
        self.leading
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Up to [`GROUP_MAX`] jobs from the queue.
    fn take_group(&self) -> Vec<AcceptRequest> {
        let mut q = lock(&self.queue);
        if q.len() > GROUP_MAX {
            let rest = q.split_off(GROUP_MAX);
            std::mem::replace(&mut *q, rest)
        } else {
            std::mem::take(&mut *q)
        }
    }

    /// Commit (the caller leads): `first`, then the queue, group after group, until it is
    /// empty; after [`ROUNDS`] groups hand the next to one of its callers instead. Blocks for
    /// the commits (a disk flush each).
    ///
    /// No job is left behind: a job queued while the leader lets go is either seen by it (it
    /// looks at the queue again after letting go) or led by its own caller, whose
    /// [`Acceptor::try_lead`] then comes after the leader let go.
    fn lead(&self, sh: &Shared, mut first: Option<Vec<AcceptRequest>>) {
        let mut rounds = 0;
        loop {
            let group = match first.take() {
                Some(g) => g,
                None => self.take_group(),
            };
            if group.is_empty() {
                self.leading.store(false, Ordering::SeqCst);
                if lock(&self.queue).is_empty() || !self.try_lead() {
                    return;
                }
                rounds = 0;
                continue;
            }
            if rounds == ROUNDS {
                match hand_over(group) {
                    None => return,
                    // Every caller of the group has gone: commit it here.
                    Some(g) => {
                        rounds = 0;
                        first = Some(g);
                        continue;
                    }
                }
            }
            commit_and_answer(sh, group);
            rounds += 1;
        }
    }
}

/// Give `group` and the lead to the first of its callers still waiting; the group back when
/// none is.
fn hand_over(mut group: Vec<AcceptRequest>) -> Option<Vec<AcceptRequest>> {
    for i in 0..group.len() {
        let (tx, rx) = oneshot::channel();
        let to = std::mem::replace(&mut group[i].reply, tx);
        if to.is_closed() {
            continue;
        }
        match to.send(Reply::Lead(group, rx)) {
            Ok(()) => return None,
            Err(back) => match back {
                Reply::Lead(g, _) => group = g,
                Reply::Stored(_) => return None,
            },
        }
    }
    Some(group)
}

/// Store `job` ([`Spool::accept`](super::Spool::accept) of the SQLite spool): its id once the
/// commit that holds it is synced.
pub(super) async fn accept(sh: Arc<Shared>, job: NewJob) -> Result<i64, SpoolError> {
    let (reply, rx) = oneshot::channel();
    lock(&sh.acceptor.queue).push(AcceptRequest { job, reply });
    let mut caller = Caller { sh, rx };
    // The other tasks ready on this thread run first: the messages they hold join this commit.
    tokio::task::yield_now().await;
    loop {
        let reply = match caller.rx.try_recv() {
            Ok(r) => r,
            Err(oneshot::error::TryRecvError::Closed) => return Err(SpoolError::WriterGone),
            Err(oneshot::error::TryRecvError::Empty) => {
                if caller.sh.acceptor.try_lead() {
                    caller.sh.acceptor.lead(&caller.sh, None);
                    continue;
                }
                match (&mut caller.rx).await {
                    Ok(r) => r,
                    Err(_) => return Err(SpoolError::WriterGone),
                }
            }
        };
        match reply {
            Reply::Stored(r) => return r,
            Reply::Lead(group, next) => {
                caller.rx = next;
                caller.sh.acceptor.lead(&caller.sh, Some(group));
            }
        }
    }
}

/// A caller waiting for its answer. Dropped (its task cancelled) with the lead in its mailbox,
/// it commits that group here, so the lead is never lost.
struct Caller {
    sh: Arc<Shared>,
    rx: oneshot::Receiver<Reply>,
}

impl Drop for Caller {
    fn drop(&mut self) {
        self.rx.close();
        if let Ok(Reply::Lead(group, _)) = self.rx.try_recv() {
            self.sh.acceptor.lead(&self.sh, Some(group));
        }
    }
}

/// At close: commit what is queued (jobs whose callers have gone), unless a caller leads.
pub(super) fn finish(sh: &Shared) {
    if sh.acceptor.try_lead() {
        sh.acceptor.lead(sh, None);
    }
}

/// Commit `group` in one transaction (synchronous=FULL), index their copies, then answer each
/// with its job id. A commit that fails answers every job of the group with the error: none of
/// them is stored.
fn commit_and_answer(sh: &Shared, group: Vec<AcceptRequest>) {
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
                let _ = req.reply.send(Reply::Stored(Ok(job_id)));
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
                let _ = req.reply.send(Reply::Stored(Err(err)));
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
