//! The PostgreSQL spool's schema, created and migrated by smtpw (versioned in `smtpw_schema`).
//!
//! Each migration runs once, in order, in one transaction that holds an advisory lock, so that
//! nodes starting together do not race; a database whose version is newer than this smtpw
//! knows is refused (an older smtpw must not write a newer layout).

use tokio_postgres::Client;

use super::pg_error;
use crate::spool::SpoolError;

/// The advisory lock key of migrations ("smtpw" in ASCII).
const MIGRATION_LOCK: i64 = 0x0073_6d74_7077;

/// Migrations in order; version N is `MIGRATIONS[N - 1]`.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE nodes(
  name TEXT PRIMARY KEY,
  heartbeat TIMESTAMPTZ NOT NULL,
  started TIMESTAMPTZ NOT NULL,
  workers INTEGER NOT NULL DEFAULT 0,
  profile TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE jobs(
  id BIGSERIAL PRIMARY KEY,
  pool SMALLINT NOT NULL,
  mail_from TEXT NOT NULL,
  message BYTEA NOT NULL,
  created BIGINT NOT NULL,
  source TEXT NOT NULL,
  node TEXT NOT NULL,
  rcpts BIGINT NOT NULL,
  delivered BIGINT NOT NULL DEFAULT 0,
  failed BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE copies(
  id BIGSERIAL PRIMARY KEY,
  job_id BIGINT NOT NULL,
  pool SMALLINT NOT NULL,
  n INTEGER NOT NULL,
  rcpts TEXT NOT NULL,
  replies TEXT,
  attempts INTEGER NOT NULL DEFAULT 0,
  not_before BIGINT NOT NULL DEFAULT 0,
  assigned_to TEXT,
  claimed_by TEXT
);
CREATE INDEX copies_job ON copies(job_id);
CREATE INDEX copies_claimed ON copies(claimed_by) WHERE claimed_by IS NOT NULL;
CREATE TABLE failures(
  job_id BIGINT NOT NULL,
  copy_id BIGINT NOT NULL,
  rcpt TEXT NOT NULL,
  reply TEXT NOT NULL,
  time BIGINT NOT NULL,
  expired BOOLEAN NOT NULL,
  node TEXT NOT NULL
);
CREATE TABLE totals(
  pool SMALLINT PRIMARY KEY,
  delivered BIGINT NOT NULL,
  failed BIGINT NOT NULL
);
CREATE TABLE delivered_by(
  node TEXT PRIMARY KEY,
  delivered BIGINT NOT NULL,
  failed BIGINT NOT NULL
);
CREATE TABLE rate_leases(
  key TEXT PRIMARY KEY,
  tat_us BIGINT NOT NULL
);
CREATE TABLE spool_copies(
  source TEXT PRIMARY KEY
);
CREATE TABLE ingested(
  node TEXT NOT NULL,
  name TEXT NOT NULL,
  mtime_ns BIGINT NOT NULL,
  size BIGINT NOT NULL,
  PRIMARY KEY(node, name, mtime_ns, size)
);
",
    "
-- Claims walk the ready copies alone, in id order; deferred ones are found by their retry time
-- (made ready once due). Without them a claim walked the primary key past every deferred copy
-- queued before the first ready one.
CREATE INDEX copies_ready ON copies(id) WHERE not_before = 0;
CREATE INDEX copies_deferred ON copies(not_before) WHERE not_before > 0;
",
];

/// The schema version this smtpw writes.
pub const VERSION: i32 = MIGRATIONS.len() as i32;

/// Bring the database to [`VERSION`]; returns the version found before.
pub async fn migrate(client: &mut Client) -> Result<i32, SpoolError> {
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS smtpw_schema(version INTEGER NOT NULL)")
        .await
        .map_err(pg_error)?;
    let found: i32 = tx
        .query_opt("SELECT version FROM smtpw_schema", &[])
        .await
        .map_err(pg_error)?
        .map_or(0, |r| r.get(0));
    if found > VERSION {
        return Err(SpoolError::Corrupt(format!(
            "the database's spool schema is version {found}, newer than this smtpw knows \
             ({VERSION}); use the smtpw that wrote it or a newer one"
        )));
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(found).unwrap_or(0))
    {
        tx.batch_execute(sql).await.map_err(|e| {
            SpoolError::Postgres(format!(
                "migrating the schema to version {}: {}",
                i + 1,
                describe(&e)
            ))
        })?;
    }
    if found == 0 {
        tx.execute("INSERT INTO smtpw_schema(version) VALUES ($1)", &[&VERSION])
            .await
            .map_err(pg_error)?;
    } else if found < VERSION {
        tx.execute("UPDATE smtpw_schema SET version = $1", &[&VERSION])
            .await
            .map_err(pg_error)?;
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(found)
}

pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(x) = src {
                s.push_str(": ");
                s.push_str(&x.to_string());
                src = x.source();
            }
            s
        }
    }
}
