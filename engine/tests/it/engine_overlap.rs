//! A worker overlaps the durable completion of a copy with claiming and delivering the next:
//! at most `COMPLETIONS_OUTSTANDING` completions per worker are under way, nothing is recorded
//! before its completion returns, and a stop waits for every outstanding completion.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jiff::civil::date;
use mock_mta::MockConfig;
use smtpw_engine::config::{HostPort, PoolSet};
use smtpw_engine::engine::{Engine, EngineOptions};
use smtpw_engine::engine::{CLAIM_AHEAD, COMPLETIONS_OUTSTANDING};
use smtpw_engine::ledger::Outcome;
use smtpw_engine::smtp::ClientConfig;
use smtpw_engine::spool::{
    ClaimedCopy, CopyResult, IngestReport, NewJob, QueueStats, Spool, SpoolError, SqliteSpool,
};
use smtpw_testkit::scripted;
use smtpw_testkit::topology::{fast_options, wait_for, Topology};
use tokio::sync::{Notify, Semaphore};

const A: &str = "A.EXAMPLE.ORG:25";

/// The real spool, except that `complete` waits for a permit of `gate` before recording.
struct GatedSpool {
    inner: Arc<SqliteSpool>,
    gate: Semaphore,
    started: AtomicUsize,
    done: AtomicUsize,
}

impl Spool for GatedSpool {
    fn ingest_incoming(&self) -> impl Future<Output = Result<IngestReport, SpoolError>> + Send {
        self.inner.ingest_incoming()
    }
    fn claim(
        &self,
        pools: PoolSet,
    ) -> impl Future<Output = Result<Option<ClaimedCopy>, SpoolError>> + Send {
        self.inner.claim(pools)
    }
    fn claim_many(
        &self,
        pools: PoolSet,
        n: usize,
        max_rcpts: usize,
    ) -> impl Future<Output = Result<Vec<ClaimedCopy>, SpoolError>> + Send {
        self.inner.claim_many(pools, n, max_rcpts)
    }
    async fn complete(&self, copy_id: i64, result: CopyResult) -> Result<(), SpoolError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        self.gate.acquire().await.expect("gate open").forget();
        let r = self.inner.complete(copy_id, result).await;
        self.done.fetch_add(1, Ordering::SeqCst);
        r
    }
    fn release(&self, copy_id: i64) {
        self.inner.release(copy_id);
    }
    fn has_expired(&self, job_created: jiff::Timestamp, now: jiff::Timestamp) -> bool {
        self.inner.has_expired(job_created, now)
    }
    fn set_max_bsmtp(&self, n: u32) {
        self.inner.set_max_bsmtp(n);
    }
    fn next_due(&self, pools: PoolSet) -> Option<jiff::Timestamp> {
        self.inner.next_due(pools)
    }
    fn notify(&self) -> Arc<Notify> {
        self.inner.notify()
    }
    fn queued_copies(&self) -> u64 {
        self.inner.queued_copies()
    }
    fn accept(&self, job: NewJob) -> impl Future<Output = Result<i64, SpoolError>> + Send {
        self.inner.accept(job)
    }
    fn stats(&self) -> impl Future<Output = Result<QueueStats, SpoolError>> + Send {
        self.inner.stats()
    }
    fn flush(&self, pools: PoolSet) -> impl Future<Output = Result<u64, SpoolError>> + Send {
        self.inner.flush(pools)
    }
    fn claim_job(
        &self,
        job_id: i64,
    ) -> impl Future<Output = Result<(Vec<ClaimedCopy>, u64), SpoolError>> + Send {
        self.inner.claim_job(job_id)
    }
    fn jobs(
        &self,
        pool: Option<smtpw_engine::config::Pool>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<smtpw_engine::spool::JobSummary>, SpoolError>> + Send {
        self.inner.jobs(pool, limit)
    }
}

#[tokio::test(start_paused = true)]
async fn a_worker_delivers_ahead_of_its_completions_and_a_stop_waits_for_them() {
    assert_eq!(COMPLETIONS_OUTSTANDING, 2);
    // MAXBSMTP 1: each copy is a whole MAXBSMTP's worth of recipients, so at most
    // COMPLETIONS_OUTSTANDING copies' completions are outstanding.
    let h = Topology::new(
        "SMTP_FORWARD_1=1*A.EXAMPLE.ORG\nMAXBSMTP=1\n",
        date(2026, 11, 22).at(12, 0, 0, 0),
        &[(A, MockConfig::iis())],
    );
    // Five single-recipient jobs: five copies, each its own transaction.
    for i in 0..5 {
        h.submit(None, std::iter::once(format!("user{i}@example.com")), 1000);
    }
    let spool = Arc::new(GatedSpool {
        inner: h.spool.clone(),
        gate: Semaphore::new(0),
        started: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
    });
    // One transaction in flight per connection (as with a relay without CHUNKING): the
    // window of claimed-ahead copies is the next test's.
    let engine = Arc::new(
        Engine::builder(h.config.clone(), spool.clone(), h.spool_dir())
            .connector(h.connector.clone())
            .clock(h.clock.clone())
            .options(EngineOptions {
                client: ClientConfig {
                    window: 1,
                    ..ClientConfig::default()
                },
                ..fast_options()
            })
            .build(),
    );
    let e = engine.clone();
    let mut run = tokio::spawn(async move { e.run().await });

    // No completion can finish, yet the worker delivers copy 1, copy 2 while 1 is being
    // recorded, copy 3 while 1 and 2 are, and then waits for the oldest.
    wait_for("three transactions", Duration::from_secs(60), || {
        h.mock(A).stats().messages >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        h.mock(A).stats().messages,
        3,
        "no more than 2 completions outstanding"
    );
    assert_eq!(
        spool.started.load(Ordering::SeqCst),
        COMPLETIONS_OUTSTANDING
    );
    assert_eq!(spool.done.load(Ordering::SeqCst), 0);
    // Nothing is recorded before its completion: every copy still counts as queued.
    assert!(h.ledger().is_empty());
    assert_eq!(h.spool.queued_copies(), 5);

    // A stop does not return while completions are outstanding ...
    engine.shutdown().cancel();
    assert!(
        tokio::time::timeout(Duration::from_secs(10), &mut run)
            .await
            .is_err(),
        "run() returned before its completions were recorded"
    );
    // ... and returns once they are, with all three transactions recorded.
    spool.gate.add_permits(100);
    let s = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("run() returns")
        .expect("engine");
    assert_eq!(spool.done.load(Ordering::SeqCst), 3);
    assert_eq!(s.delivered, 3);
    let ledger = h.ledger();
    assert_eq!(ledger.len(), 3);
    assert!(ledger.iter().all(|l| l.outcome == Outcome::Delivered));
    let mut rcpts: Vec<String> = ledger.iter().map(|l| l.rcpt.clone()).collect();
    rcpts.sort();
    rcpts.dedup();
    assert_eq!(rcpts.len(), 3);
    let mut sent = h.delivered_everywhere();
    sent.sort();
    assert_eq!(
        sent, rcpts,
        "the ledger records exactly what the relay accepted"
    );
    let st = h.spool.stats().await.expect("stats");
    assert_eq!((st.delivered, st.queued), (3, 2));
    assert_eq!(h.spool.queued_copies(), 2, "nothing left in flight");

    // A restart delivers the other two, every recipient once in all.
    drop(engine);
    drop(spool);
    let h = h.reopen();
    let s2 = h.run_until_empty(Duration::from_secs(600)).await;
    assert_eq!(s2.delivered, 2);
    let c = h.delivered_counts();
    assert_eq!(c.len(), 5);
    assert!(c.values().all(|n| *n == 1));
}

/// With BDAT (the IIS mock offers CHUNKING and PIPELINING) a worker claims copies ahead and
/// delivers them with their transactions in flight together, the batch holding at most MAXBSMTP
/// recipients (10 copies of one recipient here, not CLAIM_AHEAD = 16), and its outstanding
/// completions at most COMPLETIONS_OUTSTANDING x MAXBSMTP recipients: while nothing can be
/// recorded it delivers exactly `(COMPLETIONS_OUTSTANDING + 1) x MAXBSMTP` = 30 recipients (the
/// in-flight bound of the crash tests, testkit::proc::repeat_bound_per_crash) and then waits;
/// once the spool records again, every recipient is delivered once.
#[tokio::test(start_paused = true)]
async fn a_worker_claims_ahead_for_a_bdat_connection_within_the_in_flight_bound() {
    const MAX_BSMTP: usize = 10;
    // The recipient budget, not CLAIM_AHEAD, limits the batch.
    const { assert!(MAX_BSMTP < CLAIM_AHEAD) };
    let h = Topology::new(
        &format!("SMTP_FORWARD_1=1*A.EXAMPLE.ORG\nMAXBSMTP={MAX_BSMTP}\n"),
        date(2026, 11, 22).at(12, 0, 0, 0),
        &[(A, MockConfig::iis())],
    );
    let bound = (COMPLETIONS_OUTSTANDING + 1) * MAX_BSMTP;
    let total = bound + 12;
    for i in 0..total {
        h.submit(None, std::iter::once(format!("user{i}@example.com")), 1000);
    }
    let spool = Arc::new(GatedSpool {
        inner: h.spool.clone(),
        gate: Semaphore::new(0),
        started: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
    });
    let engine = Arc::new(
        Engine::builder(h.config.clone(), spool.clone(), h.spool_dir())
            .connector(h.connector.clone())
            .clock(h.clock.clone())
            .options(fast_options())
            .build(),
    );
    let e = engine.clone();
    let run = tokio::spawn(async move { e.run().await });
    wait_for("the in-flight bound", Duration::from_secs(60), || {
        h.mock(A).stats().messages >= bound as u64
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(h.mock(A).stats().messages, bound as u64);
    assert_eq!(
        spool.started.load(Ordering::SeqCst),
        COMPLETIONS_OUTSTANDING * MAX_BSMTP
    );
    assert!(h.ledger().is_empty());

    spool.gate.add_permits(10_000);
    wait_for("every copy", Duration::from_secs(120), || {
        spool.done.load(Ordering::SeqCst) == total
    })
    .await;
    engine.shutdown().cancel();
    let s = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("run() returns")
        .expect("engine");
    assert_eq!(s.delivered, total as u64);
    let c = h.delivered_counts();
    assert_eq!(c.len(), total);
    assert!(c.values().all(|n| *n == 1));
}

/// The drain deadline cuts off transactions, never completions: copy 1 was accepted by the relay
/// and is being recorded (held up here) when the stop comes; copy 2's transaction hangs at the
/// final dot. At the deadline copy 2 goes back to the queue, and the stop still waits for copy
/// 1's outcome to be durable.
#[tokio::test(start_paused = true)]
async fn the_drain_deadline_cuts_transactions_but_waits_for_completions_under_way() {
    let h = Topology::new(
        "SMTP_FORWARD_1=1*RELAY.EXAMPLE.ORG\nMAXBSMTP=10\n",
        date(2026, 11, 22).at(12, 0, 0, 0),
        &[],
    );
    let (_, rec) = scripted::route(
        &h.connector,
        HostPort::new("RELAY.EXAMPLE.ORG", 25),
        scripted::Mta {
            hang_from_message: Some(2),
            ..scripted::Mta::pipelining()
        },
    );
    for i in 0..2 {
        h.submit(None, std::iter::once(format!("user{i}@example.com")), 1000);
    }
    let spool = Arc::new(GatedSpool {
        inner: h.spool.clone(),
        gate: Semaphore::new(0),
        started: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
    });
    let drain = Duration::from_secs(1);
    let engine = Arc::new(
        Engine::builder(h.config.clone(), spool.clone(), h.spool_dir())
            .connector(h.connector.clone())
            .clock(h.clock.clone())
            .options(EngineOptions {
                drain_timeout: drain,
                ..fast_options()
            })
            .build(),
    );
    let e = engine.clone();
    let mut run = tokio::spawn(async move { e.run().await });
    wait_for(
        "copy 2 held at its final dot",
        Duration::from_secs(60),
        || rec.lock().expect("rec").hung_dots == 1,
    )
    .await;
    assert_eq!(
        spool.started.load(Ordering::SeqCst),
        1,
        "copy 1 is being recorded"
    );
    engine.shutdown().cancel();
    // Well past the deadline, the stop still waits for copy 1's completion...
    assert!(
        tokio::time::timeout(drain * 10, &mut run).await.is_err(),
        "run() returned before copy 1's outcome was recorded"
    );
    // ... copy 2 is already back in the queue, ready, while copy 1 is still in flight ...
    let mut states: Vec<_> = h
        .spool
        .stats()
        .await
        .expect("stats")
        .pools
        .iter()
        .map(|p| (p.state, p.copies))
        .collect();
    states.sort();
    use smtpw_engine::spool::CopyState::{InFlight, Ready};
    assert_eq!(states, vec![(Ready, 1), (InFlight, 1)]);
    spool.gate.add_permits(10);
    let s = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("run() returns")
        .expect("engine");
    assert_eq!(s.returned_at_stop, 1);
    assert_eq!(spool.done.load(Ordering::SeqCst), 1);
    // ... and copy 1's outcome is durable: delivered in the ledger, copy 2 queued, ready.
    let ledger = h.ledger();
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert_eq!(ledger[0].rcpt, "user0@example.com");
    assert_eq!(ledger[0].outcome, Outcome::Delivered);
    let st = h.spool.stats().await.expect("stats");
    assert_eq!((st.delivered, st.queued), (1, 1));
    assert_eq!(h.spool.queued_copies(), 1);
    assert!(st
        .pools
        .iter()
        .all(|p| p.state == smtpw_engine::spool::CopyState::Ready));
}
