//! An urgent pool never waits behind a bulk pool's backlog (POOL-4, JOB-1): 100,000 bulk
//! recipients queued in pool B (four workers serving B, MAXBSMTP 100, B held to 2 Mbit/s so the
//! backlog lasts), and single-recipient jobs in pool A with a worker of its own are delivered
//! within a second of submission. Real time (the runtime is not paused); in-memory mocks.

use std::time::Duration;

use mock_mta::MockConfig;
use smtpw_engine::engine::EngineOptions;
use smtpw_engine::spool::Spool;
use smtpw_testkit::topology::Topology;

const MX: &str = "MX.EXAMPLE.ORG:25";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urgent_pool_is_delivered_within_a_second_behind_a_100k_backlog() {
    let start = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .datetime();
    let h = Topology::new(
        "NODE=LISTSERV.EXAMPLE.ORG\nSMTP_FORWARD=MX.EXAMPLE.ORG\n\
         SMTP_FORWARD_1=4*MX.EXAMPLE.ORG;POOL=B\nSMTP_FORWARD_2=MX.EXAMPLE.ORG;POOL=A\n\
         MAXBSMTP=100\nSMTP_RATE_LIMIT=B:2Mbps\n",
        start,
        &[(MX, MockConfig::iis())],
    );
    for j in 0..10 {
        let rcpts = (0..10_000).map(move |i| format!("bulk{j}x{i}@bulk.example"));
        h.submit(Some('B'), rcpts, 2_000);
    }
    let r = h.spool.ingest_incoming().await.expect("ingest");
    assert_eq!(r.recipients, 100_000);
    assert_eq!(h.spool.queued_copies(), 1_000);

    // Production defaults: incoming/ scanned every 200 ms, idle workers woken by new copies.
    let engine = h.engine(EngineOptions::default());
    let e = engine.clone();
    let task = tokio::spawn(async move { e.run().await });
    let mx = h.mock(MX);
    // Let the bulk pool get going first.
    tokio::time::timeout(Duration::from_secs(10), async {
        while mx.journal().accepted_transactions().len() < 20 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("bulk delivery started");

    let mut latencies = Vec::new();
    for k in 0..5 {
        let addr = format!("urgent{k}@urgent.example");
        let submitted = h.clock.now();
        h.submit(Some('A'), std::iter::once(addr.clone()), 1_500);
        let delivered_at = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let j = mx.journal();
                if let Some(t) = j
                    .accepted_transactions()
                    .into_iter()
                    .find(|t| t.accepted_rcpts().any(|r| r.addr == addr))
                {
                    return t.ended_at;
                }
                drop(j);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("urgent job delivered");
        let latency = delivered_at.duration_since(submitted);
        latencies.push(latency.as_secs_f64());
        // the bulk backlog is still there
        assert!(
            h.spool.queued_copies() > 300,
            "bulk backlog still queued: {}",
            h.spool.queued_copies()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let bulk_done = mx.journal().accepted_transactions().len();
    engine.shutdown().cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("engine stops")
        .expect("engine task");
    eprintln!(
        "[urgent pool A behind 100,000 bulk recipients in B] submit-to-250 latencies (s): {latencies:.3?}; \
         bulk transactions done meanwhile: {bulk_done}"
    );
    for l in &latencies {
        assert!(*l < 1.0, "urgent job took {l:.3} s: {latencies:?}");
    }
}
