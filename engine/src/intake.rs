//! The intake loop: when the engine ingests, what it says about it, and when `--until-empty`
//! stops.
//!
//! Two modules share the word "ingest":
//! - this one is the loop the engine runs: an ingest pass every `interval`
//!   ([`Spool::ingest_incoming`]); each fact of a pass logged once (a quarantined or set-aside
//!   entry (JOB-3), folded lines); a failing pass logged once per condition ([`ConditionLog`]);
//!   and with `until_empty`, the decision to stop;
//! - `spool::ingest` is one pass of the SQLite spool: it reads the files of `SPOOL/incoming`,
//!   commits their jobs and copies, and quarantines or sets aside what it cannot take.
//!
//! Until-empty (QUEUE-8): the run stops once no copy is queued and `incoming/` holds no work
//! ([`list_incoming`] decides what counts), or only entries the last pass could neither read
//! nor move to quarantine: those end the run, listed, since they will not go by themselves.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::condition::{ConditionLog, Notice, REPEAT_EVERY};
use crate::spool::{
    list_incoming, IncomingFile, IngestReport, SetAside, Spool, ASIDE_FIRST, ASIDE_MAX,
};
use crate::text::escape_controls;

/// The intake loop of one engine run.
pub struct Intake<S: Spool> {
    pub spool: Arc<S>,
    /// The spool's `incoming/` folder.
    pub incoming: PathBuf,
    /// How often a pass runs.
    pub interval: Duration,
    /// Stop the run (cancel `shutdown`) once nothing is left to deliver.
    pub until_empty: bool,
    /// The run's stop: the loop ends when it is cancelled, and cancels it with `until_empty`.
    pub shutdown: CancellationToken,
    /// Counts the jobs taken in (`smtpw_ingest_jobs_total{source="file"}`).
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl<S: Spool> Intake<S> {
    /// Ingest every `interval` until the run stops. Returns, when `until_empty` stopped the
    /// run with entries left in `incoming/` that can be neither read nor moved, those entries
    /// (each logged as an error); otherwise nothing.
    pub async fn run(self) -> Vec<SetAside> {
        let Self {
            spool,
            incoming,
            interval,
            until_empty,
            shutdown,
            metrics,
        } = self;
        let mut failures = ConditionLog::default();
        loop {
            let stuck = match spool.ingest_incoming().await {
                Ok(r) => {
                    if let Some(n) = failures.succeeded(tokio::time::Instant::now()) {
                        log_ingest_notice(&n, interval);
                    }
                    log_ingest_report(&r);
                    metrics.ingested("file", "accepted", r.jobs);
                    metrics.ingested("file", "quarantined", r.quarantined.len() as u64);
                    Some(r.stuck)
                }
                Err(e) => {
                    let n = failures.failed(e.to_string(), tokio::time::Instant::now());
                    if let Some(n) = n {
                        log_ingest_notice(&n, interval);
                    }
                    None
                }
            };
            if until_empty && spool.queued_copies() == 0 {
                match incoming_left(&incoming, stuck.as_deref()) {
                    Left::Nothing => {
                        info!("queue empty; stopping");
                        shutdown.cancel();
                        break Vec::new();
                    }
                    Left::OnlyStuck(left) => {
                        for s in &left {
                            error!(
                                file = %escape_controls(&s.name),
                                reason = %escape_controls(&s.reason),
                                "--until-empty: nothing else is queued, and this file can be neither read nor moved to quarantine; stopping without it"
                            );
                        }
                        shutdown.cancel();
                        break left;
                    }
                    Left::Work => {}
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break Vec::new(),
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}

/// What `--until-empty` finds in `incoming/` once nothing is queued.
#[derive(Debug, PartialEq, Eq)]
enum Left {
    /// No incoming work: done.
    Nothing,
    /// Only entries the last ingest pass could neither read nor move: they will not go.
    OnlyStuck(Vec<SetAside>),
    /// Work ingest has yet to do (a new file, or the last pass failed).
    Work,
}

/// The incoming work (as [`list_incoming`] decides it, the same as for ingest and `smtpw
/// queue`) against what the last pass left stuck (`None`: the pass failed).
fn incoming_left(dir: &Path, stuck: Option<&[SetAside]>) -> Left {
    match list_incoming(dir) {
        Ok(work) => left_over(&work, stuck),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Left::Nothing,
        Err(_) => Left::Work,
    }
}

/// The until-empty decision on a listing of `incoming/`.
fn left_over(work: &[IncomingFile], stuck: Option<&[SetAside]>) -> Left {
    if work.is_empty() {
        return Left::Nothing;
    }
    let Some(stuck) = stuck else {
        return Left::Work;
    };
    let only_stuck = work.iter().all(|w| stuck.iter().any(|s| s.name == w.name));
    if only_stuck {
        Left::OnlyStuck(
            stuck
                .iter()
                .filter(|s| work.iter().any(|w| w.name == s.name))
                .cloned()
                .collect(),
        )
    } else {
        Left::Work
    }
}

/// Log one notice of the ingest pass's failure condition.
fn log_ingest_notice(n: &Notice, interval: Duration) {
    match n {
        Notice::Began { message } => error!(
            error = %escape_controls(message),
            "ingest failed; new jobs are not read until it works again (tried every {} ms, logged again every {} min while it lasts)",
            interval.as_millis(),
            REPEAT_EVERY.as_secs() / 60
        ),
        Notice::Lasts {
            message,
            lasted,
            times,
        } => error!(
            error = %escape_controls(message),
            failing_for_secs = lasted.as_secs(),
            attempts = times,
            "ingest still failing"
        ),
        Notice::Ended { lasted, times } => info!(
            failed_for_secs = lasted.as_secs(),
            attempts = times,
            "ingest works again"
        ),
    }
}

/// Log what an ingest pass did: each fact once (a quarantined or set-aside entry is reported
/// by the pass only the first time).
fn log_ingest_report(r: &IngestReport) {
    if r.jobs > 0 {
        info!(
            jobs = r.jobs,
            copies = r.copies,
            recipients = r.recipients,
            "ingested"
        );
    }
    for q in &r.quarantined {
        warn!(
            file = %escape_controls(&q.file.display().to_string()),
            reason = %escape_controls(&q.reason),
            "job quarantined"
        );
    }
    for s in &r.set_aside {
        warn!(
            file = %escape_controls(&s.name),
            reason = %escape_controls(&s.reason),
            "left in incoming: it can be neither read nor moved to quarantine; looked at again in {} min, then less and less often (up to every {} min); fix it or remove it",
            ASIDE_FIRST.as_secs() / 60,
            ASIDE_MAX.as_secs() / 60
        );
    }
    for name in &r.resumed {
        info!(file = %escape_controls(name), "an entry set aside earlier was taken at last");
    }
    for f in &r.folded {
        warn!(
            file = %escape_controls(&f.file),
            job_line = f.line,
            folded_lines = f.lines,
            "message lines longer than {} bytes were folded (CRLF and a space inserted): RFC 5321 allows 1000 with the CRLF",
            crate::job::MAX_TEXT_LINE
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::EntryKind;

    fn work(name: &str) -> IncomingFile {
        IncomingFile {
            path: PathBuf::from("incoming").join(name),
            name: name.to_string(),
            mtime_ns: 0,
            size: 1,
            kind: EntryKind::Job,
        }
    }

    fn stuck(name: &str) -> SetAside {
        SetAside {
            file: PathBuf::from("incoming").join(name),
            name: name.to_string(),
            reason: format!("{name} cannot be read"),
        }
    }

    #[test]
    fn an_empty_incoming_is_done_whatever_the_last_pass_said() {
        assert_eq!(left_over(&[], None), Left::Nothing);
        assert_eq!(left_over(&[], Some(&[stuck("gone.MAIL")])), Left::Nothing);
    }

    #[test]
    fn after_a_failed_pass_any_file_is_work() {
        assert_eq!(left_over(&[work("a.MAIL")], None), Left::Work);
    }

    #[test]
    fn a_file_the_pass_did_not_leave_stuck_is_work() {
        let s = [stuck("a.MAIL")];
        assert_eq!(
            left_over(&[work("a.MAIL"), work("b.MAIL")], Some(&s)),
            Left::Work
        );
        assert_eq!(left_over(&[work("b.MAIL")], Some(&[])), Left::Work);
    }

    #[test]
    fn only_stuck_files_end_the_run_listing_those_still_there() {
        let s = [stuck("a.MAIL"), stuck("gone.MAIL"), stuck("b.MAIL")];
        assert_eq!(
            left_over(&[work("b.MAIL"), work("a.MAIL")], Some(&s)),
            Left::OnlyStuck(vec![stuck("a.MAIL"), stuck("b.MAIL")])
        );
    }

    #[test]
    fn a_missing_incoming_folder_is_nothing_left() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            incoming_left(&dir.path().join("incoming"), None),
            Left::Nothing
        );
    }
}
