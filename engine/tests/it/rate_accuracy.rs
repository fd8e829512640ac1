//! SMTP_RATE_LIMIT accuracy on paused time (RATE-1, RATE-4): the engine delivers to in-process
//! mocks over in-memory streams, and the achieved rates are measured at the mocks from their
//! journals (message bytes, and DATA times read from the engine's VirtualClock).
//!
//! Each scenario runs with the shared limiter (the default) and with LISTSERV's per-worker split
//! (`EngineOptions::per_worker_rate_split`), and prints both figures (`--nocapture`).
//!
//! The backlogged span is `RATE_SPAN_SECS` (default 300 s of virtual time: about 12,000
//! transactions at 1.5 Mbit/s, ~15 s of real time here; `RATE_SPAN_SECS=3600` runs the full hour).
//! Case 16 and the idle-share scenario run a fifth of it (`RATE_SPAN_SECS=18000` for their hour).
//!
//! Measured (worst 10 s windows over a backlogged hour, 22 Nov 2026), shared | per-worker split:
//! - overall 1.5 Mbit/s, 4 workers:  -0.29%..+0.41%  |  -0.62%..+1.63%
//! - case 16, A and B at 1.5 Mbit/s: -0.52%..+0.60%  |  -0.63%..+1.62%;  C: -0.45%..+0.66%  |
//!   -0.61%..+1.00%; overall 12 Mbit/s: -0.10%..+0.10%  |  57% short (D held to 2 of 8.85 Mbit/s)
//! - idle share, A alone: 100.00% of the limit  |  50.00%; A+B: -0.23%..+0.31%  |  -0.79%..+1.05%

use std::time::Duration;

use jiff::civil::date;
use mock_mta::{MockConfig, Profile};
use smtpw_engine::engine::EngineOptions;
use smtpw_engine::spool::Spool;
use smtpw_testkit::rate::{mean_bps, points, window_extremes, Point, KBPS, MBPS};
use smtpw_testkit::topology::{fast_options, Topology};
use smtpw_testkit::workload::sizes;

const MX: &str = "MX.EXAMPLE.ORG:25";
const W10: Duration = Duration::from_secs(10);

fn span() -> Duration {
    let secs = std::env::var("RATE_SPAN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    Duration::from_secs(secs)
}

/// IIS, but without the session size limit (an hour at 12 Mbit/s is far past 10 MB per
/// connection) and with room for a 1 MB message.
fn mock() -> MockConfig {
    MockConfig::with_profile(Profile {
        max_session_kb: None,
        max_message_kb: Some(8192),
        max_recipients: None,
        ..Profile::iis()
    })
}

fn harness(cfg: &str) -> Topology {
    Topology::new(
        &format!("NODE=LISTSERV.EXAMPLE.ORG\nSMTP_FORWARD=SYNC.EXAMPLE.ORG\n{cfg}"),
        date(2026, 11, 22).at(12, 0, 0, 0),
        &[(MX, mock())],
    )
}

/// Queue `bytes_needed` bytes for `pool`: jobs of `per_job` recipients at `domain` (one copy per
/// recipient with MAXBSMTP=1), message sizes spread over `[lo, hi]`.
fn queue_bytes(
    h: &Topology,
    pool: char,
    domain: &str,
    bytes_needed: u64,
    (lo, hi): (usize, usize),
    per_job: usize,
) {
    let mean = (lo + hi) / 2;
    let jobs = (bytes_needed / (mean * per_job) as u64) as usize + 1;
    for (j, size) in sizes(jobs, lo, hi, pool as u64).into_iter().enumerate() {
        let rcpts = (0..per_job).map(|i| format!("u{j}x{i}@{domain}"));
        h.submit(Some(pool), rcpts, size);
    }
}

/// Run the engine for `span` of virtual time (the backlog already ingested), then stop it.
/// Returns the (virtual) time the span ended, in ns.
async fn run_for(h: &Topology, split: bool, span: Duration) -> i128 {
    let r = h.spool.ingest_incoming().await.expect("ingest");
    assert!(r.quarantined.is_empty(), "{r:?}");
    let engine = h.engine(EngineOptions {
        per_worker_rate_split: split,
        ..fast_options()
    });
    let e = engine.clone();
    let task = tokio::spawn(async move { e.run().await });
    tokio::time::sleep(span).await;
    assert!(
        h.spool.queued_copies() > 0,
        "the backlog must outlast the measured span"
    );
    let end = now_ns(h);
    engine.shutdown().cancel();
    tokio::time::timeout(Duration::from_secs(600), task)
        .await
        .expect("engine stops")
        .expect("engine task");
    end
}

fn now_ns(h: &Topology) -> i128 {
    h.clock.now().as_nanosecond()
}

fn mode(split: bool) -> &'static str {
    if split {
        "per-worker split"
    } else {
        "shared"
    }
}

/// The measured span: from 1 s after the first transaction (the bucket starts full: 100 ms of
/// saved tokens are a legitimate burst, 1% of one 10 s window) to `end`.
fn measured(p: &[Point], end: i128) -> (i128, i128) {
    let first = p.first().expect("something was delivered").at_ns;
    (first + 1_000_000_000, end)
}

// ---------------------------------------------------------------------------------------------
// 1. One overall limit, four workers: 1.5 Mbit/s = 1,572,864 bit/s.

async fn overall_only(split: bool) -> (f64, f64) {
    let limit = 3 * MBPS / 2;
    assert_eq!(limit, 1_572_864);
    let h = harness("SMTP_FORWARD_1=4*MX.EXAMPLE.ORG\nSMTP_RATE_LIMIT=1.5Mbps\nMAXBSMTP=1\n");
    let span = span();
    let need = limit / 8 * span.as_secs() * 11 / 10;
    queue_bytes(&h, '-', "bulk.example", need, (2_000, 8_000), 100);
    let end = run_for(&h, split, span).await;
    let p = points(&h.mock(MX).journal(), "");
    let (from, to) = measured(&p, end);
    let ex = window_extremes(&p, W10, from, to);
    let mean = mean_bps(&p, from, to);
    eprintln!(
        "[overall 1.5Mbps, 4 workers, 2-8 KB, {} s, {}] mean {:.0} bit/s ({:+.4}%); 10 s windows: {}",
        span.as_secs(),
        mode(split),
        mean,
        (mean / limit as f64 - 1.0) * 100.0,
        ex.describe(limit as f64)
    );
    (
        ex.worst_error(limit as f64),
        (mean / limit as f64 - 1.0).abs(),
    )
}

#[tokio::test(start_paused = true)]
async fn overall_limit_holds_within_1pct_over_every_10s_window() {
    let (worst, mean) = overall_only(false).await;
    assert!(
        worst < 0.01,
        "worst 10 s window off by {:.3}%",
        worst * 100.0
    );
    assert!(mean < 0.001, "mean off by {:.4}%", mean * 100.0);
}

#[tokio::test(start_paused = true)]
async fn overall_limit_with_per_worker_split_evenly_busy() {
    // Four evenly busy workers each at a quarter: the sum is the limit on average, but each
    // worker's bucket rounds on its own messages, so windows wobble more.
    let (worst, mean) = overall_only(true).await;
    assert!(mean < 0.005, "mean off by {:.4}%", mean * 100.0);
    assert!(
        worst < 0.03,
        "worst 10 s window off by {:.3}%",
        worst * 100.0
    );
}

// ---------------------------------------------------------------------------------------------
// 2. EX-16: `12Mbps AB:1.5Mbps C:150kbps`, A, B, C and an unlimited D all backlogged:
//    A = B = 1.5 Mbit/s, C = 150 kbit/s, and D takes the rest of the 12 Mbit/s.

/// Workers: A, B, C and D (D and `-`). Under a saturated overall limit the overall bucket is one
/// FIFO, so every waiting copy takes its turn: each worker gets about one copy per round, and a
/// limited pool fills its own limit only if its workers' turns cover it (the limits are caps:
/// RATE-3, whichever is stricter *at that moment* applies; see the limiter's unit test
/// `a_limited_pool_keeps_its_limit_while_its_turns_cover_it`). Measured here on a 60 s span with
/// 2/2/1 workers for A/B/C and 4 for D: A -3.7%, B -5.1%, C -8.8% on average (worst windows
/// about -15%) while the per-worker split held them; with 3/3/3 and 4, A and B had windows 3.4%
/// and 5.3% short. With 4/4/2 and 2 (`CASE16_WORKERS`), the turns cover the limits.
/// `RATE_CASE16_WORKERS=2,2,1,4` reruns the short-handed case.
async fn case16(split: bool, w: [usize; 4]) -> Vec<(String, u64, f64, f64)> {
    let [wa, wb, wc, wd] = w;
    let h = harness(&format!(
        "SMTP_FORWARD_1={wa}*MX.EXAMPLE.ORG;POOL=A\n\
         SMTP_FORWARD_2={wb}*MX.EXAMPLE.ORG;POOL=B\n\
         SMTP_FORWARD_3={wc}*MX.EXAMPLE.ORG;POOL=C\n\
         SMTP_FORWARD_4={wd}*MX.EXAMPLE.ORG;POOL=D-\n\
         SMTP_RATE_LIMIT=12Mbps AB:1.5Mbps C:150kbps\nMAXBSMTP=1\n",
    ));
    // 12 Mbit/s is 1.5 MB/s: a shorter span keeps the transaction count like scenario 1's.
    let span = span() / 5;
    let secs = span.as_secs() * 11 / 10;
    let (a, c, all) = (3 * MBPS / 2, 150 * KBPS, 12 * MBPS);
    queue_bytes(&h, 'A', "a.example", a / 8 * secs, (2_000, 8_000), 100);
    queue_bytes(&h, 'B', "b.example", a / 8 * secs, (2_000, 8_000), 100);
    // C's 10 s window is 192 KB: small messages so that one message is well under 1% of it.
    queue_bytes(&h, 'C', "c.example", c / 8 * secs, (300, 900), 100);
    queue_bytes(&h, 'D', "d.example", all / 8 * secs, (4_000, 16_000), 100);
    let end = run_for(&h, split, span).await;
    let j = h.mock(MX).journal();
    let all_p = points(&j, "");
    let (from, to) = measured(&all_p, end);
    let mut out = Vec::new();
    for (name, dom, limit) in [
        ("A", "a.example", Some(a)),
        ("B", "b.example", Some(a)),
        ("C", "c.example", Some(c)),
        ("D", "d.example", None),
        ("overall", "", Some(all)),
    ] {
        let p = points(&j, dom);
        let mean = mean_bps(&p, from, to);
        let expect = limit.unwrap_or(all - 2 * a - c);
        let ex = window_extremes(&p, W10, from, to);
        eprintln!(
            "[case 16, workers A/B/C/D {wa}/{wb}/{wc}/{wd}, {} s, {}] {name}: limit {} -> mean {:.0} bit/s ({:+.4}%); 10 s windows: {}",
            span.as_secs(),
            mode(split),
            limit.map_or("none (rest of overall)".to_string(), |l| l.to_string()),
            mean,
            (mean / expect as f64 - 1.0) * 100.0,
            ex.describe(expect as f64)
        );
        out.push((
            name.to_string(),
            expect,
            (mean / expect as f64 - 1.0).abs(),
            ex.worst_error(expect as f64),
        ));
    }
    out
}

const CASE16_WORKERS: [usize; 4] = [4, 4, 2, 2];

/// `RATE_CASE16_WORKERS=4,4,2,2` tries other worker counts.
fn case16_workers() -> [usize; 4] {
    std::env::var("RATE_CASE16_WORKERS")
        .ok()
        .and_then(|s| {
            let v: Vec<usize> = s.split(',').filter_map(|x| x.trim().parse().ok()).collect();
            v.try_into().ok()
        })
        .unwrap_or(CASE16_WORKERS)
}

#[tokio::test(start_paused = true)]
async fn case16_pools_a_and_b_each_at_1_5_under_12_overall() {
    for (name, _, mean, worst) in case16(false, case16_workers()).await {
        assert!(mean < 0.005, "{name}: mean off by {:.3}%", mean * 100.0);
        assert!(
            worst < 0.01,
            "{name}: worst 10 s window off by {:.3}%",
            worst * 100.0
        );
    }
}

#[tokio::test(start_paused = true)]
async fn case16_with_per_worker_split() {
    // With the split, the overall 12 Mbit/s is divided by 12 workers: each gets 1 Mbit/s of
    // overall share, so the workers of C (75 kbit/s each) and of A and B (0.375 each) leave much
    // of theirs unused, and D's two workers get only 2 Mbit/s of the 8.85 left.
    let r = case16(true, case16_workers()).await;
    let get = |n: &str| r.iter().find(|x| x.0 == n).expect("row");
    for n in ["A", "B", "C"] {
        assert!(get(n).2 < 0.005, "{n} held to its limit: {:?}", get(n));
    }
    let d = get("D");
    assert!(
        d.2 > 0.3,
        "D gets much less than the rest of the overall: {d:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. An idle pool's share is used by the others: overall 2 Mbit/s, pools A and B each with two
//    workers of their own and no limit of their own. A alone gets all 2 Mbit/s; when B's backlog
//    arrives, A and B share it.

async fn idle_share(split: bool) -> [(f64, f64, f64); 2] {
    let limit = 2 * MBPS;
    let h = harness(
        "SMTP_FORWARD_1=2*MX.EXAMPLE.ORG;POOL=A\nSMTP_FORWARD_2=2*MX.EXAMPLE.ORG;POOL=B\n\
         SMTP_RATE_LIMIT=2Mbps\nMAXBSMTP=1\n",
    );
    let phase = span() / 5;
    queue_bytes(
        &h,
        'A',
        "a.example",
        limit / 8 * phase.as_secs() * 3,
        (2_000, 8_000),
        100,
    );
    let r = h.spool.ingest_incoming().await.expect("ingest");
    assert!(r.quarantined.is_empty());
    let engine = h.engine(EngineOptions {
        per_worker_rate_split: split,
        ..fast_options()
    });
    let e = engine.clone();
    let task = tokio::spawn(async move { e.run().await });
    tokio::time::sleep(phase).await;
    let b_at = now_ns(&h);
    queue_bytes(
        &h,
        'B',
        "b.example",
        limit / 8 * phase.as_secs() * 3,
        (2_000, 8_000),
        100,
    );
    tokio::time::sleep(phase * 2).await;
    let end = now_ns(&h);
    assert!(h.spool.queued_copies() > 0, "still backlogged");
    engine.shutdown().cancel();
    tokio::time::timeout(Duration::from_secs(600), task)
        .await
        .expect("stops")
        .expect("task");
    let j = h.mock(MX).journal();
    let (pa, pb, pall) = (
        points(&j, "a.example"),
        points(&j, "b.example"),
        points(&j, ""),
    );
    let a_from = pa.first().expect("A delivered").at_ns + 1_000_000_000;
    let b_from = pb.first().expect("B delivered").at_ns + 1_000_000_000;
    assert!(b_from >= b_at);
    let l = limit as f64;
    let alone = mean_bps(&pa, a_from, b_at);
    let (a2, b2, both) = (
        mean_bps(&pa, b_from, end),
        mean_bps(&pb, b_from, end),
        mean_bps(&pall, b_from, end),
    );
    let ex_alone = window_extremes(&pa, W10, a_from, b_at);
    let ex_both = window_extremes(&pall, W10, b_from, end);
    eprintln!(
        "[idle share, overall 2Mbps, {}] A alone: {:.0} bit/s ({:.2}% of limit; windows {}); \
         A+B: {:.0} bit/s ({:.2}%; windows {}), A {:.0}, B {:.0}",
        mode(split),
        alone,
        alone / l * 100.0,
        ex_alone.describe(l),
        both,
        both / l * 100.0,
        ex_both.describe(l),
        a2,
        b2
    );
    [
        (alone / l, ex_alone.worst_error(l), 0.0),
        (both / l, ex_both.worst_error(l), a2 / b2),
    ]
}

#[tokio::test(start_paused = true)]
async fn idle_pool_share_is_used_by_the_busy_pool() {
    let [(alone, alone_worst, _), (both, both_worst, ratio)] = idle_share(false).await;
    assert!(
        (alone - 1.0).abs() < 0.002,
        "A alone got {:.3} of the limit",
        alone
    );
    assert!(alone_worst < 0.01, "A alone: worst window {alone_worst}");
    assert!(
        (both - 1.0).abs() < 0.002,
        "A+B got {:.3} of the limit",
        both
    );
    assert!(both_worst < 0.01, "A+B: worst window {both_worst}");
    assert!(
        (0.8..1.25).contains(&ratio),
        "A and B share about evenly: {ratio}"
    );
}

#[tokio::test(start_paused = true)]
async fn idle_pool_share_is_lost_with_per_worker_split() {
    // LISTSERV's "somewhat less": A's two workers hold two quarters of the overall limit, B's
    // idle quarters are not borrowable.
    let [(alone, _, _), (both, _, _)] = idle_share(true).await;
    assert!(
        (alone - 0.5).abs() < 0.005,
        "A alone got {:.3} of the limit",
        alone
    );
    assert!(
        (both - 1.0).abs() < 0.005,
        "A+B got {:.3} of the limit",
        both
    );
}

// ---------------------------------------------------------------------------------------------
// 4. A copy bigger than the bucket: 1 MB (8 Mbit, 8 s at 1 Mbit/s) in a backlog of 1 KB copies,
//    with a 100 ms (13 KB) bucket. It neither stalls nor lets more than itself through at once:
//    it goes when the bucket is full, and what follows waits until its debt is paid.

async fn big_copy(split: bool) -> (f64, f64, f64, f64) {
    let limit = MBPS;
    let h = harness("SMTP_FORWARD_1=2*MX.EXAMPLE.ORG\nSMTP_RATE_LIMIT=1Mbps\nMAXBSMTP=1\n");
    // 30 s of small copies, then the big one, then 60 s more of small ones.
    let small = |h: &Topology, n: usize, tag: &str| {
        for j in 0..n / 50 {
            let rcpts = (0..50).map(|i| format!("{tag}{j}x{i}@small.example"));
            h.submit(None, rcpts, 1_000);
        }
    };
    small(&h, 30 * 128, "s");
    h.submit(
        None,
        std::iter::once("big@big.example".to_string()),
        1 << 20,
    );
    small(&h, 60 * 128, "t");
    let end = run_for(&h, split, Duration::from_secs(60)).await;
    let j = h.mock(MX).journal();
    let p = points(&j, "");
    let big = points(&j, "big.example");
    assert_eq!(big.len(), 1, "the big copy was delivered once");
    let big = big[0];
    assert!(big.bytes >= 1 << 20);
    let i = p.iter().position(|x| *x == big).expect("big in all");
    let before = p[i - 1];
    let after = p[i + 1];
    let wait_before = (big.at_ns - before.at_ns) as f64 / 1e9;
    let pause_after = (after.at_ns - big.at_ns) as f64 / 1e9;
    let big_secs = big.bytes as f64 * 8.0 / limit as f64;
    // The most any 10 s window let through, against rate x 10 s.
    let from = p[0].at_ns + 1_000_000_000;
    let ex = window_extremes(&p, W10, from, end);
    let mean = mean_bps(&p, from, end) / limit as f64;
    // A copy counts at the instant its DATA starts, so a window that ends just after the big copy
    // holds 10 s of small copies plus the whole big one: the burst is how far past rate x 10 s the
    // fullest window goes, in copies of the big size.
    let excess_copies = (ex.max_bps * 10.0 - limit as f64 * 10.0) / (big.bytes as f64 * 8.0);
    if std::env::var("RATE_DEBUG").is_ok() {
        let t0 = p[0].at_ns;
        let mut per_s = std::collections::BTreeMap::<i128, u64>::new();
        for x in &p {
            *per_s.entry((x.at_ns - t0) / 1_000_000_000).or_default() += x.bytes;
        }
        eprintln!("{per_s:?}");
    }
    eprintln!(
        "[big copy 1 MB at 1Mbps, {}] waited {wait_before:.3} s after the previous copy; next copy \
         {pause_after:.3} s later (the copy's own time {big_secs:.3} s); mean {:.3}% of the limit; \
         fullest 10 s window: rate x 10 s + {excess_copies:.3} x the big copy",
        mode(split),
        mean * 100.0
    );
    (wait_before, pause_after / big_secs, excess_copies, mean)
}

#[tokio::test(start_paused = true)]
async fn a_copy_bigger_than_the_bucket_neither_stalls_nor_bursts() {
    let (wait_before, pause_ratio, excess, mean) = big_copy(false).await;
    // It waits only for the bucket to fill (100 ms) plus one small copy's tokens.
    assert!(wait_before < 0.2, "the big copy stalled {wait_before} s");
    // What follows waits for the debt: the copy's own time at the limit, less the 100 ms depth.
    assert!(
        (0.98..1.01).contains(&pause_ratio),
        "pause after the big copy / its time: {pause_ratio}"
    );
    // No window gets more than rate x 10 s + the one big copy (+ the 100 ms bucket, 1.3% of it).
    assert!(excess < 1.02, "burst beyond one copy: {excess} copies");
    assert!((mean - 1.0).abs() < 0.01, "mean {mean} x limit");
}

#[tokio::test(start_paused = true)]
async fn a_copy_bigger_than_the_bucket_with_per_worker_split() {
    // The worker that takes it has half the rate: the pause after it on that worker is twice as
    // long, while the other worker keeps going at its half.
    let (wait_before, _, excess, mean) = big_copy(true).await;
    assert!(wait_before < 0.2, "the big copy stalled {wait_before} s");
    assert!(excess < 1.03, "burst beyond one copy: {excess} copies");
    assert!((mean - 1.0).abs() < 0.02, "mean {mean} x limit");
}
