//! `smtpw spool copy --from DIR --to URL` (CLU-6): move a stopped SQLite spool's queued work into
//! a database spool, without loss or repeats.
//!
//! The SQLite spool is opened as its owner (its lock refuses a running daemon; a damaged spool is
//! refused), its `incoming/` ingested first, then every queued job with its copies (recipients
//! left, attempts, retry times) goes into the database in one transaction together with a
//! record of each job's origin (`spool_copies`); only after that commit are they deleted from
//! SQLite. A copy interrupted between the two commits, run again, finds the records and only
//! finishes the deletion: no job is queued twice.

use std::path::Path;

use rusqlite::params;

use super::{connect, pg_error, schema};
use crate::clock::SharedClock;
use crate::spool::{SpoolError, SpoolOptions, SqliteSpool, DB_FILE, MARKER_FILE};

/// What a copy moved.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CopyReport {
    /// Jobs moved.
    pub jobs: u64,
    /// Copies moved.
    pub copies: u64,
    /// Recipients moved (still queued).
    pub recipients: u64,
    /// Jobs an earlier, interrupted copy had already moved (now only removed from SQLite).
    pub already_copied: u64,
}

struct Job {
    id: i64,
    pool: i64,
    mail_from: String,
    message: Vec<u8>,
    created: i64,
    rcpts: i64,
    delivered: i64,
    failed: i64,
    copies: Vec<(i64, String, Option<String>, i64, i64)>,
}

/// Move the queued work of the SQLite spool in `dir` into the database at `url`.
pub async fn copy_sqlite(
    dir: &Path,
    url: &str,
    clock: SharedClock,
) -> Result<CopyReport, SpoolError> {
    let known = [DB_FILE, MARKER_FILE, crate::spool::INCOMING];
    if !known.iter().any(|f| dir.join(f).exists()) {
        return Err(SpoolError::io(
            format!("reading the spool {}", dir.display()),
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "there is no spool there (no spool.db, no incoming/)",
            ),
        ));
    }
    // Owner of the spool for the whole copy: a running daemon holds the lock and is refused.
    let spool = SqliteSpool::open(dir, SpoolOptions::default(), clock)?;
    spool.ingest_blocking()?;
    let origin = format!(
        "{}#{}",
        std::fs::canonicalize(dir)
            .unwrap_or_else(|_| dir.to_path_buf())
            .display(),
        std::fs::read_to_string(dir.join(MARKER_FILE))
            .ok()
            .and_then(|t| t.lines().nth(1).map(str::to_owned))
            .unwrap_or_default()
    );
    let mut lite = rusqlite::Connection::open(dir.join(DB_FILE))?;
    lite.busy_timeout(std::time::Duration::from_secs(30))?;
    let jobs = read_jobs(&lite)?;
    let mut report = CopyReport::default();
    let mut db = connect(url).await?;
    schema::migrate(&mut db).await?;
    let tx = db.transaction().await.map_err(pg_error)?;
    for j in &jobs {
        let source = format!("copy:{origin}:{}", j.id);
        let fresh = tx
            .execute(
                "INSERT INTO spool_copies(source) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&source],
            )
            .await
            .map_err(pg_error)?;
        if fresh == 0 {
            report.already_copied += 1;
            continue;
        }
        let pool = i16::try_from(j.pool).unwrap_or(0);
        let id: i64 = tx
            .query_one(
                "INSERT INTO jobs(pool, mail_from, message, created, source, node, rcpts, delivered, failed) \
                 VALUES ($1, $2, $3, $4, $5, '', $6, $7, $8) RETURNING id",
                &[&pool, &j.mail_from, &j.message, &j.created, &source, &j.rcpts, &j.delivered, &j.failed],
            )
            .await
            .map_err(pg_error)?
            .get(0);
        let ns: Vec<i32> = j
            .copies
            .iter()
            .map(|c| i32::try_from(c.0).unwrap_or(i32::MAX))
            .collect();
        let rcpts: Vec<&str> = j.copies.iter().map(|c| c.1.as_str()).collect();
        let replies: Vec<Option<&str>> = j.copies.iter().map(|c| c.2.as_deref()).collect();
        let attempts: Vec<i32> = j
            .copies
            .iter()
            .map(|c| i32::try_from(c.3).unwrap_or(i32::MAX))
            .collect();
        let not_before: Vec<i64> = j.copies.iter().map(|c| c.4).collect();
        tx.execute(
            "INSERT INTO copies(job_id, pool, n, rcpts, replies, attempts, not_before) \
             SELECT $1, $2, n, r, p, a, nb FROM unnest($3::int4[], $4::text[], $5::text[], $6::int4[], $7::int8[]) AS v(n, r, p, a, nb)",
            &[&id, &pool, &ns, &rcpts, &replies, &attempts, &not_before],
        )
        .await
        .map_err(pg_error)?;
        report.jobs += 1;
        report.copies += j.copies.len() as u64;
        report.recipients += j
            .copies
            .iter()
            .map(|c| u64::try_from(c.0).unwrap_or(0))
            .sum::<u64>();
    }
    tx.commit().await.map_err(pg_error)?;
    // Committed in the database: now they leave SQLite (their delivered and failed counters went
    // with them).
    let t = lite.transaction()?;
    for j in &jobs {
        t.execute("DELETE FROM copies WHERE job_id = ?1", params![j.id])?;
        t.execute("DELETE FROM jobs WHERE id = ?1", params![j.id])?;
    }
    t.commit()?;
    drop(spool);
    super::refresh_statistics(&db, report.copies).await;
    Ok(report)
}

fn read_jobs(c: &rusqlite::Connection) -> Result<Vec<Job>, SpoolError> {
    let mut st = c.prepare(
        "SELECT id, pool, mail_from, message, created, rcpts, delivered, failed FROM jobs \
         WHERE EXISTS (SELECT 1 FROM copies WHERE job_id = jobs.id) ORDER BY id",
    )?;
    let mut jobs: Vec<Job> = st
        .query_map([], |r| {
            Ok(Job {
                id: r.get(0)?,
                pool: r.get(1)?,
                mail_from: r.get(2)?,
                message: r.get::<_, Option<Vec<u8>>>(3)?.unwrap_or_default(),
                created: r.get(4)?,
                rcpts: r.get(5)?,
                delivered: r.get(6)?,
                failed: r.get(7)?,
                copies: Vec::new(),
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut cs = c.prepare(
        "SELECT n, rcpts, replies, attempts, not_before FROM copies WHERE job_id = ?1 ORDER BY id",
    )?;
    for j in &mut jobs {
        j.copies = cs
            .query_map([j.id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<Result<_, _>>()?;
    }
    Ok(jobs)
}
