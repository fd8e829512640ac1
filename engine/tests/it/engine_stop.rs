//! A stop is bounded: after `EngineOptions::drain_timeout` the transactions still in flight are
//! cut off and their copies go back to the queue untouched (released: claimable at once by this
//! process, and by the next one), while completions already under way are still awaited.
//! Over the scripted SMTP server on in-memory streams, in paused time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::civil::date;
use smtpw_engine::config::HostPort;
use smtpw_engine::engine::EngineOptions;
use smtpw_engine::ledger::Outcome;
use smtpw_engine::spool::{CopyState, Spool};
use smtpw_testkit::logs::LogCapture;
use smtpw_testkit::scripted::{delivered_counts, route, Mta, Rec};
use smtpw_testkit::topology::{fast_options, wait_for, Topology};

const SITE: &str = "NODE=LISTS.EXAMPLE.ORG\nSMTP_FORWARD_1=1*RELAY.EXAMPLE.ORG\nMAXBSMTP=10\n";

fn relay(h: &Topology, mta: Mta) -> (Arc<Mutex<Mta>>, Rec) {
    route(&h.connector, HostPort::new("RELAY.EXAMPLE.ORG", 25), mta)
}

#[tokio::test(start_paused = true)]
async fn a_stop_ends_at_the_drain_deadline_and_the_silent_relays_copy_is_queued_again() {
    let logs = LogCapture::default();
    let _guard = logs.install();
    let h = Topology::new(SITE, date(2026, 11, 22).at(12, 0, 0, 0), &[]);
    // The relay takes the whole message, then never answers the final dot.
    let (mta, rec) = relay(
        &h,
        Mta {
            hang_at_end_of_data: true,
            ..Mta::pipelining()
        },
    );
    h.submit_n(None, 5, "example.net", 2_000);
    let drain = Duration::from_secs(1);
    let (engine, handle) = h.spawn(EngineOptions {
        drain_timeout: drain,
        ..fast_options()
    });
    wait_for(
        "the relay to hold the final dot",
        Duration::from_secs(60),
        || rec.lock().unwrap().hung_dots == 1,
    )
    .await;
    engine.shutdown().cancel();
    let t0 = tokio::time::Instant::now();
    let summary = handle.await.unwrap();
    let took = t0.elapsed();
    // The deadline, plus at most one ingest pass / poll interval of slack.
    assert!(
        took >= drain && took <= drain + Duration::from_millis(250),
        "the stop took {took:?} with a drain deadline of {drain:?}"
    );
    assert_eq!(summary.returned_at_stop, 1, "{summary:?}");
    assert!(
        logs.text()
            .contains("1 copies in flight went back to the queue"),
        "{}",
        logs.text()
    );
    // Nothing was recorded: the copy is queued again, ready at once, its 5 recipients undecided.
    assert!(h.ledger().is_empty(), "{:?}", h.ledger());
    assert_eq!(h.spool.queued_copies(), 1);
    let stats = h.spool.stats().await.unwrap();
    assert_eq!((stats.queued, stats.delivered, stats.failed), (5, 0, 0));
    let ready: Vec<_> = stats
        .pools
        .iter()
        .map(|p| (p.state, p.copies, p.recipients))
        .collect();
    assert_eq!(ready, vec![(CopyState::Ready, 1, 5)], "{stats:?}");
    drop(engine);

    // A later run of this process, with the relay answering again, delivers each recipient
    // exactly once.
    *mta.lock().unwrap() = Mta::pipelining();
    h.run_until_empty(Duration::from_secs(600)).await;
    let got = delivered_counts(&rec);
    assert_eq!(got.len(), 5, "{got:?}");
    assert!(got.values().all(|&n| n == 1), "{got:?}");
    let outcomes = h.final_outcomes();
    assert_eq!(outcomes.len(), 5);
    assert!(outcomes.values().all(|l| l.outcome == Outcome::Delivered));
    assert_eq!(h.ledger().len(), 5, "one ledger line per recipient");
}

#[tokio::test(start_paused = true)]
async fn run_until_stops_when_its_future_resolves_and_drains_like_a_stop() {
    let logs = LogCapture::default();
    let _guard = logs.install();
    let h = Topology::new(SITE, date(2026, 11, 22).at(12, 0, 0, 0), &[]);
    let (_mta, rec) = relay(
        &h,
        Mta {
            hang_at_end_of_data: true,
            ..Mta::pipelining()
        },
    );
    h.submit_n(None, 5, "example.net", 2_000);
    let drain = Duration::from_secs(1);
    let engine = h.engine(EngineOptions {
        drain_timeout: drain,
        ..fast_options()
    });
    // The shutdown future resolves once the relay holds the final dot.
    let held = wait_for(
        "the relay to hold the final dot",
        Duration::from_secs(60),
        || rec.lock().unwrap().hung_dots == 1,
    );
    let summary = tokio::time::timeout(Duration::from_secs(60), engine.run_until(held))
        .await
        .expect("run_until returns once its future resolved and the drain ended");
    assert!(engine.shutdown().is_cancelled());
    // The same drain as a stop: the copy in flight went back to the queue, nothing recorded.
    assert_eq!(summary.returned_at_stop, 1, "{summary:?}");
    assert!(
        logs.text()
            .contains("1 copies in flight went back to the queue"),
        "{}",
        logs.text()
    );
    assert!(h.ledger().is_empty(), "{:?}", h.ledger());
    assert_eq!(h.spool.queued_copies(), 1);
    let stats = h.spool.stats().await.unwrap();
    assert_eq!((stats.queued, stats.delivered, stats.failed), (5, 0, 0));
}
