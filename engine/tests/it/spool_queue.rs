//! The SQLite spool: ingest, copies, FIFO claims, completion, deferral, lifetime, restart.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jiff::civil::date;
use jiff::{SignedDuration, Timestamp};
use smtpw_engine::clock::{SharedClock, VirtualClock};
use smtpw_engine::config::{Pool, PoolSet};
use smtpw_engine::ledger::read_ledger;
use smtpw_engine::spool::{
    read_stats, submit, CopyResult, CopyState, Outcome, RcptOutcome, Spool, SpoolError,
    SpoolOptions, SqliteSpool,
};

fn clock() -> (Arc<VirtualClock>, SharedClock) {
    VirtualClock::at_utc(date(2026, 11, 22).at(8, 0, 0, 0)).shared()
}

fn opts(max: u32) -> SpoolOptions {
    SpoolOptions {
        max_bsmtp: max,
        ..SpoolOptions::default()
    }
}

fn pool(c: char) -> Pool {
    Pool::from_char(c).unwrap()
}

fn pools(s: &str) -> PoolSet {
    s.chars().map(pool).collect()
}

fn submit_n(dir: &Path, p: Option<Pool>, tag: &str, n: usize) -> std::path::PathBuf {
    let rcpts = (0..n).map(|i| format!("{tag}{i}@d{}.example", i % 5));
    submit(
        dir,
        &format!("owner-{tag}@lists.example"),
        p,
        rcpts,
        format!("Subject: {tag}\n\n.body of {tag}\n").as_bytes(),
    )
    .unwrap()
}

fn ok(reply: &str) -> RcptOutcome {
    RcptOutcome {
        outcome: Outcome::Delivered,
        reply: reply.into(),
    }
}

fn out(outcome: Outcome, reply: &str) -> RcptOutcome {
    RcptOutcome {
        outcome,
        reply: reply.into(),
    }
}

fn all_delivered(n: usize) -> CopyResult {
    smtpw_testkit::workload::all_delivered("mx.example:25", n, "250 2.6.0 Queued mail for delivery")
}

#[tokio::test(start_paused = true)]
async fn ingest_splits_a_job_into_maxbsmtp_copies() {
    let dir = tempfile::tempdir().unwrap();
    let (_h, clock) = clock();
    let spool = SqliteSpool::open(dir.path(), opts(1000), clock).unwrap();
    let file = submit_n(dir.path(), None, "u", 2500);
    assert!(file.exists());
    let rep = spool.ingest_incoming().await.unwrap();
    assert_eq!(
        (rep.files, rep.jobs, rep.copies, rep.recipients),
        (1, 1, 3, 2500)
    );
    assert!(
        !file.exists(),
        "the incoming file is removed after the commit"
    );

    let mut sizes = Vec::new();
    let mut all = Vec::new();
    while let Some(c) = spool.claim(PoolSet::ALL).await.unwrap() {
        assert_eq!(c.pool, Pool::DEFAULT);
        assert_eq!(c.mail_from, "owner-u@lists.example");
        assert_eq!(&c.message[..], b"Subject: u\r\n\r\n.body of u\r\n");
        sizes.push(c.rcpts.len());
        all.extend(c.rcpts);
    }
    assert_eq!(sizes, vec![1000, 1000, 500]);
    let expected: Vec<String> = (0..2500)
        .map(|i| format!("u{i}@d{}.example", i % 5))
        .collect();
    assert_eq!(all, expected, "SORT_RECIPIENTS 0 keeps the job order");
    let st = spool.stats().await.unwrap();
    assert_eq!((st.queued, st.copies, st.jobs), (2500, 3, 1));
    assert_eq!(st.pools.len(), 1);
    assert_eq!(st.pools[0].state, CopyState::InFlight);
    assert_eq!(st.pools[0].recipients, 2500);
}

#[tokio::test(start_paused = true)]
async fn claims_are_fifo_per_pool_and_across_served_pools() {
    let dir = tempfile::tempdir().unwrap();
    let (_h, clock) = clock();
    let spool = SqliteSpool::open(dir.path(), opts(100), clock).unwrap();
    // Written in this order, but ingest order is by modification time: make the files' times
    // say j1 < j2 < j3 < j4 whatever their names.
    let files = [
        submit_n(dir.path(), Some(pool('A')), "j1", 1),
        submit_n(dir.path(), Some(pool('B')), "j2", 1),
        submit_n(dir.path(), Some(pool('a')), "j3", 1),
        submit_n(dir.path(), None, "j4", 1),
    ];
    let base = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    for (i, f) in files.iter().rev().enumerate() {
        let fh = std::fs::File::options().write(true).open(f).unwrap();
        fh.set_modified(base - Duration::from_secs(i as u64))
            .unwrap();
    }
    assert_eq!(spool.ingest_incoming().await.unwrap().jobs, 4);
    let tag = |c: Option<smtpw_engine::spool::ClaimedCopy>| c.map(|c| c.mail_from);
    assert_eq!(
        tag(spool.claim(pools("A")).await.unwrap()).as_deref(),
        Some("owner-j1@lists.example")
    );
    assert_eq!(
        tag(spool.claim(PoolSet::ALL).await.unwrap()).as_deref(),
        Some("owner-j2@lists.example")
    );
    assert_eq!(tag(spool.claim(pools("B")).await.unwrap()), None);
    assert_eq!(
        tag(spool.claim(pools("A-")).await.unwrap()).as_deref(),
        Some("owner-j3@lists.example")
    );
    assert_eq!(tag(spool.claim(pools("ABC")).await.unwrap()), None);
    assert_eq!(
        tag(spool.claim(pools("-")).await.unwrap()).as_deref(),
        Some("owner-j4@lists.example")
    );
    assert_eq!(
        spool.queued_copies(),
        4,
        "claimed copies are still queued until completed"
    );
}

#[tokio::test(start_paused = true)]
async fn complete_records_outcomes_in_the_ledger_and_the_stats() {
    let dir = tempfile::tempdir().unwrap();
    let (_h, clock) = clock();
    let spool = SqliteSpool::open(dir.path(), opts(100), clock.clone()).unwrap();
    submit(
        dir.path(),
        "owner@l.example",
        Some(pool('C')),
        ["a@x.example", "b@x.example", "c@y.example", "d@y.example"]
            .into_iter()
            .map(String::from),
        &b"Subject: t\r\n\r\nhi\r\n"[..],
    )
    .unwrap();
    spool.ingest_incoming().await.unwrap();
    let c = spool.claim(PoolSet::ALL).await.unwrap().unwrap();
    let res = CopyResult {
        relay: Some("mx1.example:25".into()),
        tls: None,
        rcpts: vec![
            ok("250 2.1.5 a"),
            out(Outcome::Failed, "550 5.1.1 no such user"),
            out(Outcome::Deferred, "451 4.3.0 try later"),
            ok("250 2.1.5 d"),
        ],
    };
    let before = clock.now();
    spool.complete(c.copy_id, res).await.unwrap();

    let lines: Vec<_> = read_ledger(&dir.path().join("ledger.jsonl"))
        .unwrap()
        .collect();
    assert_eq!(lines.len(), 4);
    let got: Vec<_> = lines
        .iter()
        .map(|l| (l.rcpt.as_str(), l.outcome, l.reply.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("a@x.example", Outcome::Delivered, "250 2.1.5 a"),
            ("b@x.example", Outcome::Failed, "550 5.1.1 no such user"),
            ("c@y.example", Outcome::Deferred, "451 4.3.0 try later"),
            ("d@y.example", Outcome::Delivered, "250 2.1.5 d"),
        ]
    );
    for l in &lines {
        assert_eq!(l.job, c.job_id);
        assert_eq!(l.copy, c.copy_id);
        assert_eq!(l.pool, "C");
        assert_eq!(l.relay.as_deref(), Some("mx1.example:25"));
        assert_eq!(l.time, before);
    }
    let retry: Timestamp = lines[2].retry_at.unwrap();
    assert_eq!(retry, before + SignedDuration::from_secs(30));

    let st = spool.stats().await.unwrap();
    assert_eq!((st.queued, st.delivered, st.failed), (1, 2, 1));
    assert_eq!(st.pools.len(), 1);
    assert_eq!(
        (st.pools[0].pool, st.pools[0].state, st.pools[0].recipients),
        (pool('C'), CopyState::Deferred, 1)
    );
    // The same figures from a read-only look at the database (what `smtpw queue` does).
    let ro = read_stats(dir.path(), clock.now()).unwrap();
    assert_eq!((ro.queued, ro.delivered, ro.failed), (1, 2, 1));
    assert_eq!(ro.failure_reasons.len(), 1);
    assert_eq!(
        (
            ro.failure_reasons[0].reply.as_str(),
            ro.failure_reasons[0].recipients
        ),
        ("550 5.1.1 no such user", 1)
    );

    // Completing twice, or with the wrong number of outcomes, is refused.
    assert!(matches!(
        spool.complete(c.copy_id, all_delivered(4)).await,
        Err(SpoolError::NotClaimed(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn deferrals_back_off_and_expire_after_the_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let (h, clock) = clock();
    let o = SpoolOptions {
        retry_base: Duration::from_secs(30),
        retry_max: Duration::from_secs(100),
        lifetime: Duration::from_secs(5 * 24 * 3600),
        ..opts(10)
    };
    let spool = SqliteSpool::open(dir.path(), o, clock.clone()).unwrap();
    submit_n(dir.path(), None, "r", 2);
    spool.ingest_incoming().await.unwrap();
    let start = clock.now();

    let mut expected_waits = vec![30u64, 60, 100, 100].into_iter();
    let mut attempts = 0;
    loop {
        let c = spool.claim(PoolSet::ALL).await.unwrap().unwrap();
        assert_eq!(c.attempts, attempts);
        assert_eq!(c.rcpts.len(), 2);
        let t0 = clock.now();
        let res = CopyResult {
            relay: None,
            tls: None,
            rcpts: vec![
                out(Outcome::Deferred, "451 later"),
                out(Outcome::Deferred, "452 full"),
            ],
        };
        spool.complete(c.copy_id, res).await.unwrap();
        attempts += 1;
        let Some(wait) = expected_waits.next() else {
            break;
        };
        let due = spool.next_due(PoolSet::ALL).unwrap();
        assert_eq!(due, t0 + SignedDuration::from_secs(wait as i64));
        assert!(
            spool.next_due(pools("A")).is_none(),
            "pool A has nothing deferred"
        );
        // Not claimable before it is due.
        tokio::time::sleep(Duration::from_secs(wait - 1)).await;
        assert!(spool.claim(PoolSet::ALL).await.unwrap().is_none());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Five days pass; the next deferral fails both recipients with their last replies.
    h.jump(SignedDuration::from_hours(5 * 24));
    let c = spool.claim(PoolSet::ALL).await.unwrap().unwrap();
    let res = CopyResult {
        relay: Some("mx:25".into()),
        tls: None,
        rcpts: vec![out(Outcome::Deferred, "451 still later"), ok("250 ok")],
    };
    spool.complete(c.copy_id, res).await.unwrap();
    assert!(clock.now().duration_since(start) > SignedDuration::from_hours(120));
    let lines: Vec<_> = read_ledger(&dir.path().join("ledger.jsonl"))
        .unwrap()
        .collect();
    let deferred = lines
        .iter()
        .filter(|l| l.outcome == Outcome::Deferred)
        .count();
    assert_eq!(deferred, 2 * 5);
    let last: Vec<_> = lines[lines.len() - 2..]
        .iter()
        .map(|l| (l.outcome, l.reply.as_str(), l.expired, l.attempts))
        .collect();
    assert_eq!(
        last,
        vec![
            (Outcome::Failed, "451 still later", true, 6),
            (Outcome::Delivered, "250 ok", false, 6)
        ]
    );
    let st = spool.stats().await.unwrap();
    assert_eq!((st.queued, st.delivered, st.failed, st.jobs), (0, 1, 1, 0));
    assert_eq!(st.failure_reasons[0].reply, "451 still later");
    assert_eq!(spool.queued_copies(), 0);
    assert!(spool.next_due(PoolSet::ALL).is_none());
}

#[test]
fn backoff_doubles_and_is_capped() {
    let o = SpoolOptions::default();
    let secs: Vec<u64> = (0..8).map(|a| o.backoff(a).as_secs()).collect();
    assert_eq!(secs, vec![30, 60, 120, 240, 480, 900, 900, 900]);
    assert_eq!(o.backoff(200).as_secs(), 900);
}

#[tokio::test(start_paused = true)]
async fn a_restart_requeues_claimed_copies_and_keeps_totals() {
    let dir = tempfile::tempdir().unwrap();
    let (_h, clock) = clock();
    {
        let spool = SqliteSpool::open(dir.path(), opts(2), clock.clone()).unwrap();
        submit_n(dir.path(), None, "k", 6);
        spool.ingest_incoming().await.unwrap();
        let c1 = spool.claim(PoolSet::ALL).await.unwrap().unwrap();
        let c2 = spool.claim(PoolSet::ALL).await.unwrap().unwrap();
        spool.complete(c1.copy_id, all_delivered(2)).await.unwrap();
        assert_eq!(c2.rcpts, vec!["k2@d2.example", "k3@d3.example"]);
        // Dropped with c2 in flight and the third copy never claimed (like a SIGKILL: claims
        // are only in memory).
        assert!(matches!(
            SqliteSpool::open(dir.path(), opts(2), clock.clone()),
            Err(SpoolError::Locked(..))
        ));
    }
    let spool = SqliteSpool::open(dir.path(), opts(2), clock.clone()).unwrap();
    let st = spool.stats().await.unwrap();
    assert_eq!((st.queued, st.delivered, st.copies), (4, 2, 2));
    let a = spool.claim(PoolSet::ALL).await.unwrap().unwrap();
    let b = spool.claim(PoolSet::ALL).await.unwrap().unwrap();
    assert_eq!(a.rcpts, vec!["k2@d2.example", "k3@d3.example"]);
    assert_eq!(b.rcpts, vec!["k4@d4.example", "k5@d0.example"]);
    assert!(spool.claim(PoolSet::ALL).await.unwrap().is_none());
    // Release gives a copy back at once, in its FIFO place.
    spool.release(a.copy_id);
    assert_eq!(
        spool.claim(PoolSet::ALL).await.unwrap().unwrap().copy_id,
        a.copy_id
    );
}

#[tokio::test(start_paused = true)]
async fn malformed_jobs_are_quarantined_with_a_reason_and_nothing_queued() {
    let dir = tempfile::tempdir().unwrap();
    let (_h, clock) = clock();
    let spool = SqliteSpool::open(dir.path(), opts(10), clock).unwrap();
    let incoming = dir.path().join("incoming");
    // The first job of the file is fine, the second is broken at line 9: nothing is queued.
    std::fs::write(
        incoming.join("BAD.mail"),
        "MAIL FROM:<a@b>\nRCPT TO:<x@y>\nDATA\nhi\n.\nMAIL FROM:<a@b>\nRCPT TO:<x@y>\nDATA\nRCPT TO:<z@y>\n",
    )
    .unwrap();
    std::fs::write(incoming.join("ALSO-BAD.MAIL"), "MAIL FROM:<a@b> POOL=7\n").unwrap();
    std::fs::write(incoming.join("half-written.tmp"), "MAIL FROM:<a@b>\n").unwrap();
    submit_n(dir.path(), None, "good", 3);
    let rep = spool.ingest_incoming().await.unwrap();
    assert_eq!((rep.files, rep.jobs, rep.recipients), (1, 1, 3));
    assert_eq!(rep.quarantined.len(), 2);
    let q = dir.path().join("quarantine");
    assert!(q.join("BAD.mail").exists() && !incoming.join("BAD.mail").exists());
    let reason = std::fs::read_to_string(q.join("BAD.mail.reason")).unwrap();
    assert!(reason.contains("BAD.mail"), "{reason}");
    assert!(reason.contains("line 10"), "{reason}");
    assert!(reason.contains("\".\" ending the message"), "{reason}");
    let reason = std::fs::read_to_string(q.join("ALSO-BAD.MAIL.reason")).unwrap();
    assert!(
        reason.contains("line 1") && reason.contains("POOL=x"),
        "{reason}"
    );
    assert!(
        incoming.join("half-written.tmp").exists(),
        "only *.MAIL names are read"
    );
    let st = spool.stats().await.unwrap();
    assert_eq!((st.queued, st.jobs), (3, 1));
}

#[tokio::test(start_paused = true)]
async fn several_jobs_in_one_file_with_their_pools() {
    let dir = tempfile::tempdir().unwrap();
    let (_h, clock) = clock();
    let o = SpoolOptions {
        default_pool: pool('Q'),
        ..opts(10)
    };
    let spool = SqliteSpool::open(dir.path(), o, clock).unwrap();
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/sample.MAIL");
    std::fs::copy(sample, dir.path().join("incoming/sample.MAIL")).unwrap();
    let rep = spool.ingest_incoming().await.unwrap();
    assert_eq!((rep.jobs, rep.copies, rep.recipients), (2, 2, 4));
    let a = spool.claim(pools("A")).await.unwrap().unwrap();
    assert_eq!(a.rcpts.len(), 3);
    assert!(spool.claim(pools("A")).await.unwrap().is_none());
    let q = spool.claim(pools("Q")).await.unwrap().unwrap();
    assert_eq!(q.mail_from, "");
    assert_eq!(q.rcpts, vec!["postmaster@example.org"]);
}

#[tokio::test(start_paused = true)]
async fn sorted_modes_match_the_pure_plan() {
    use smtpw_engine::chunk::{chunk, SortMode};
    for mode in [1u8, 2] {
        let dir = tempfile::tempdir().unwrap();
        let (_h, clock) = clock();
        let o = SpoolOptions {
            sort_recipients: mode,
            ..opts(7)
        };
        let spool = SqliteSpool::open(dir.path(), o, clock).unwrap();
        let rcpts: Vec<String> = (0..40)
            .map(|i| {
                format!(
                    "u{}@{}",
                    (i * 7919) % 100,
                    ["B.org", "a.com", "c.net", "b.ORG", "z.io"][i % 5]
                )
            })
            .collect();
        submit(
            dir.path(),
            "o@l",
            None,
            rcpts.clone().into_iter(),
            &b"x\r\n"[..],
        )
        .unwrap();
        spool.ingest_incoming().await.unwrap();
        let mut got = Vec::new();
        while let Some(c) = spool.claim(PoolSet::ALL).await.unwrap() {
            got.push(c.rcpts);
        }
        let plan: Vec<Vec<String>> = chunk(&rcpts, 7, SortMode::from_setting(mode))
            .into_iter()
            .map(|c| c.into_iter().map(|i| rcpts[i].clone()).collect())
            .collect();
        assert_eq!(got, plan, "SORT_RECIPIENTS={mode}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_completions_are_group_committed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = smtpw_engine::clock::SystemClock::shared();
    let spool = SqliteSpool::open(dir.path(), opts(1), clock.clone()).unwrap();
    submit_n(dir.path(), None, "g", 300);
    spool.ingest_incoming().await.unwrap();
    let mut claimed = Vec::new();
    while let Some(c) = spool.claim(PoolSet::ALL).await.unwrap() {
        claimed.push(c);
    }
    assert_eq!(claimed.len(), 300);
    let t = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in claimed {
        let s = spool.clone();
        tasks.spawn(async move { s.complete(c.copy_id, all_delivered(1)).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    eprintln!("300 completions in {:?}", t.elapsed());
    let lines: Vec<_> = read_ledger(&dir.path().join("ledger.jsonl"))
        .unwrap()
        .collect();
    assert_eq!(lines.len(), 300);
    let mut rcpts: Vec<_> = lines.iter().map(|l| l.rcpt.clone()).collect();
    rcpts.sort();
    rcpts.dedup();
    assert_eq!(rcpts.len(), 300);
    let st = spool.stats().await.unwrap();
    assert_eq!((st.queued, st.delivered, st.jobs), (0, 300, 0));
}

#[tokio::test(start_paused = true)]
async fn ingest_notifies_waiting_workers() {
    let dir = tempfile::tempdir().unwrap();
    let (_h, clock) = clock();
    let spool = SqliteSpool::open(dir.path(), opts(10), clock).unwrap();
    let notify = spool.notify();
    let waiter = {
        let s = spool.clone();
        tokio::spawn(async move {
            loop {
                let n = notify.notified();
                tokio::pin!(n);
                n.as_mut().enable();
                if let Some(c) = s.claim(PoolSet::ALL).await.unwrap() {
                    return c.rcpts.len();
                }
                n.await;
            }
        })
    };
    tokio::task::yield_now().await;
    submit_n(dir.path(), None, "w", 5);
    spool.ingest_incoming().await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 5);
}

#[tokio::test(start_paused = true)]
async fn paused_time_does_not_run_while_a_completion_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let (_h, clock) = clock();
    let spool = SqliteSpool::open(dir.path(), opts(1), clock.clone()).unwrap();
    submit_n(dir.path(), None, "p", 50);
    spool.ingest_incoming().await.unwrap();
    // A timer an hour away: if the runtime auto-advanced while we wait for the writer thread,
    // the clock would jump to it.
    let _far = tokio::spawn(tokio::time::sleep(Duration::from_secs(3600)));
    let t0 = clock.now();
    for _ in 0..50 {
        let c = spool.claim(PoolSet::ALL).await.unwrap().unwrap();
        spool.complete(c.copy_id, all_delivered(1)).await.unwrap();
    }
    assert_eq!(clock.now(), t0);
}

#[tokio::test(start_paused = true)]
async fn a_copy_completed_twice_at_once_counts_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_h, clock) = clock();
    let spool = SqliteSpool::open(dir.path(), opts(3), clock).unwrap();
    submit_n(dir.path(), None, "t", 3);
    spool.ingest_incoming().await.unwrap();
    let c = spool.claim(PoolSet::ALL).await.unwrap().unwrap();
    let (a, b) = tokio::join!(
        spool.complete(c.copy_id, all_delivered(3)),
        spool.complete(c.copy_id, all_delivered(3))
    );
    assert!(a.is_ok() != b.is_ok(), "{a:?} {b:?}");
    let st = spool.stats().await.unwrap();
    assert_eq!((st.delivered, st.queued), (3, 0));
    assert_eq!(
        read_ledger(&dir.path().join("ledger.jsonl"))
            .unwrap()
            .count(),
        3
    );
}

#[test]
fn many_small_files_ingest_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let spool = SqliteSpool::open(
        dir.path(),
        opts(100),
        smtpw_engine::clock::SystemClock::shared(),
    )
    .unwrap();
    const FILES: usize = 2000;
    for i in 0..FILES {
        submit(
            dir.path(),
            "o@l",
            None,
            std::iter::once(format!("merge{i}@x.example")),
            &b"Subject: m\r\n\r\nx\r\n"[..],
        )
        .unwrap();
    }
    let t = std::time::Instant::now();
    let rep = spool.ingest_blocking().unwrap();
    let took = t.elapsed();
    eprintln!(
        "{FILES} single-recipient files ingested in {took:.2?} ({:.0} files/s)",
        FILES as f64 / took.as_secs_f64()
    );
    assert_eq!(
        (rep.files, rep.jobs, rep.recipients),
        (FILES as u64, FILES as u64, FILES as u64)
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("incoming"))
            .unwrap()
            .count(),
        0
    );
}

/// Claim + complete throughput with 16 concurrent "workers" (real time, real disk).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_complete_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let spool = SqliteSpool::open(
        dir.path(),
        opts(10),
        smtpw_engine::clock::SystemClock::shared(),
    )
    .unwrap();
    const RCPTS: usize = 100_000;
    submit_n(dir.path(), None, "t", RCPTS);
    spool.ingest_incoming().await.unwrap();
    let t = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let s = spool.clone();
        tasks.spawn(async move {
            let mut n = 0usize;
            while let Some(c) = s.claim(PoolSet::ALL).await.unwrap() {
                n += c.rcpts.len();
                s.complete(c.copy_id, all_delivered(c.rcpts.len()))
                    .await
                    .unwrap();
            }
            n
        });
    }
    let mut total = 0;
    while let Some(n) = tasks.join_next().await {
        total += n.unwrap();
    }
    let took = t.elapsed();
    eprintln!(
        "claim+complete: {} copies of 10 ({RCPTS} recipients) in {took:.2?}: {:.0} copies/s, {:.0} recipients/s",
        RCPTS / 10,
        (RCPTS / 10) as f64 / took.as_secs_f64(),
        RCPTS as f64 / took.as_secs_f64()
    );
    assert_eq!(total, RCPTS);
    let st = spool.stats().await.unwrap();
    assert_eq!((st.queued, st.delivered), (0, RCPTS as u64));
    assert_eq!(
        read_ledger(&dir.path().join("ledger.jsonl"))
            .unwrap()
            .count(),
        RCPTS
    );
}

/// SITE.CFG's spool settings reach the spool through `SpoolOptions::from_site`, the one place
/// they are derived: MAXBSMTP, SORT_RECIPIENTS and DEFAULT_LIST_POOL's postings pool; the rest
/// keeps its defaults. A job of 7 recipients without POOL= becomes copies of at most 3 in pool Q.
#[tokio::test(start_paused = true)]
async fn spool_options_come_from_site_cfg() {
    let site = smtpw_engine::config::parse_str(
        "SMTP_FORWARD=MX.EXAMPLE.ORG\nMAXBSMTP=3\nSORT_RECIPIENTS=2\nDEFAULT_LIST_POOL=Q\n",
        "SITE.CFG",
    )
    .unwrap();
    let o = SpoolOptions::from_site(&site);
    let d = SpoolOptions::default();
    assert_eq!(
        (o.max_bsmtp, o.sort_recipients, o.default_pool),
        (3, 2, pool('Q'))
    );
    assert_eq!(
        (o.retry_base, o.retry_max, o.lifetime, o.ledger_path.clone()),
        (d.retry_base, d.retry_max, d.lifetime, d.ledger_path.clone())
    );
    assert_eq!(o.max_message_bytes, d.max_message_bytes);

    let dir = tempfile::tempdir().unwrap();
    let (_h, clock) = clock();
    submit_n(dir.path(), None, "s", 7);
    let spool = SqliteSpool::open(dir.path(), o, clock).unwrap();
    spool.ingest_blocking().unwrap();
    let mut sizes = Vec::new();
    while let Some(c) = spool.claim(PoolSet::ALL).await.unwrap() {
        assert_eq!(c.pool, pool('Q'));
        sizes.push(c.rcpts.len());
    }
    assert_eq!(sizes.iter().sum::<usize>(), 7, "{sizes:?}");
    assert!(
        sizes.len() >= 3 && sizes.iter().all(|n| *n <= 3),
        "{sizes:?}"
    );
}
