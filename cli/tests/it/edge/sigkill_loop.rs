//! SIGKILL loops: `smtpw run` is killed at seeded pseudo-random moments at least 50 times while
//! it delivers and while it ingests large jobs (a new one is dropped into incoming every few
//! runs; while it waits there, the kill delays sweep upwards so that kills fall before, inside
//! and after its ingest), then a last run goes to the end. Nothing is lost, every repeat at the relay comes
//! from copies in flight at a kill (at most the in-flight bound per kill, checked run by run),
//! every recipient has a ledger line, and the spool counts each recipient once.

use std::time::{Duration, Instant};

use mock_mta::MockConfig;

use smtpw_testkit::ledger::Tally;
use smtpw_testkit::proc::{num, received, repeat_bound_per_crash, serial, Kid, LoopbackMock};
use smtpw_testkit::site::{verdict, Site};
use smtpw_testkit::workload::Lcg;

use crate::SMTPW;

const KILLS: usize = 60;
const WORKERS: u32 = 4;
const MAX_BSMTP: u32 = 80;
/// A new large job every this many runs (the first before run 1).
const JOB_EVERY: usize = 10;
const JOB_RCPTS: usize = 30_000;
const DOT_LATENCY_MS: u64 = 30;

#[test]
fn fifty_sigkills_during_delivery_and_ingest() {
    const CASE: &str = "SIGKILL loop";
    let _one_at_a_time = serial();
    let t0 = Instant::now();
    let mut mc = MockConfig::iis();
    // The reply after the dot waits a little (a relay queueing the message), so that
    // transactions are in flight at each kill.
    mc.faults
        .command_latency_ms
        .insert("DOT".into(), DOT_LATENCY_MS);
    let mock = LoopbackMock::start(mc);
    let mut site = Site::new(SMTPW);
    site.point_at(mock.port, WORKERS, MAX_BSMTP);
    let per_kill = repeat_bound_per_crash(WORKERS, MAX_BSMTP);
    let mut rng = Lcg(0xed6e_5eed);
    let mut killed = 0u64;
    let mut violations = Vec::new();
    // Per run: (ms before the kill, files in incoming before, after; delivered at the relay
    // before, after).
    let mut runs: Vec<(u64, u64, u64, u64, u64)> = Vec::new();
    let mut jobs = 0usize;
    let mut ingest_delay = 10u64;
    for i in 0..KILLS {
        if i % JOB_EVERY == 0 {
            let rcpts: Vec<String> = (0..JOB_RCPTS)
                .map(|r| format!("j{jobs}r{r}@d{}.example", r % 89))
                .collect();
            site.submit(&rcpts);
            jobs += 1;
        }
        let files_before = num(&site.queue(), "incoming_files");
        let relay_before = mock.mta.stats().recipients_accepted;
        // While a job waits in incoming, the delays sweep upwards from a short one, so that
        // successive kills fall before, during and after its ingest; else they are random.
        let delay = if files_before > 0 {
            ingest_delay += rng.between(4, 14);
            ingest_delay
        } else {
            ingest_delay = 10;
            rng.between(50, 400)
        };
        let killed_before = killed;
        let mut kid = site.run(true, &[]);
        if kid.wait_for(Duration::from_millis(delay)).is_none() && kid.kill() {
            killed += 1;
        }
        let files_after = num(&site.queue(), "incoming_files");
        let relay_after = mock.mta.stats().recipients_accepted;
        runs.push((delay, files_before, files_after, relay_before, relay_after));
        let dups: u64 = received(&mock).values().map(|n| u64::from(n - 1)).sum();
        // Each repeat comes from a copy in flight at an earlier kill: the bound holds run by
        // run, not only at the end.
        if dups > killed_before * per_kill {
            violations.push(format!(
                "after run {}: {dups} repeats at the relay > {killed_before} earlier kills x \
                 {per_kill} (the in-flight bound)",
                i + 1
            ));
            break;
        }
    }
    // The last run, to completion.
    let t_last = Instant::now();
    let mut kid: Kid = site.run(true, &[]);
    match kid.wait_for(Duration::from_secs(150)) {
        None => {
            kid.kill();
            violations.push("the last run did not finish in 150 s".into());
        }
        Some(s) if !s.success() => violations.push(format!(
            "the last run exited {s}; log:\n{}",
            site.log_text()
        )),
        Some(_) => {}
    }
    let last = t_last.elapsed();
    assert!(
        mock.wait_idle(Duration::from_secs(10)),
        "the mock's sessions end"
    );
    let got = received(&mock);
    let lost = site
        .submitted
        .iter()
        .filter(|r| !got.contains_key(*r))
        .count();
    if lost > 0 {
        violations.push(format!("{lost} recipients never reached the relay"));
    }
    let mut t = Tally::count(&site, &got);
    if (t.queued, t.failed) != (0, 0) || t.delivered != t.submitted {
        violations.push(format!(
            "after the last run the spool says delivered {}, failed {}, queued {} of {}",
            t.delivered, t.failed, t.queued, t.submitted
        ));
    }
    let bound = killed * per_kill;
    if t.repeated > bound {
        violations.push(format!(
            "{} repeats at the relay > {bound} ({killed} kills x {per_kill})",
            t.repeated
        ));
    }
    let during_ingest = runs
        .iter()
        .filter(|(_, before, after, _, _)| *before > 0 && *after > 0)
        .count();
    let during_delivery = runs
        .iter()
        .filter(|(_, _, _, before, after)| after > before)
        .count();
    t.report(
        CASE,
        &format!(
            "{jobs} jobs of {JOB_RCPTS}, {} runs ({killed} SIGKILLed: {during_ingest} with a job \
             still in incoming, {during_delivery} while the relay received), then the last in \
             {:.1} s; repeat bound {bound} ({} copies in flight x MAXBSMTP {MAX_BSMTP} = \
             {per_kill} per kill), lost {lost}; {:.1} s in all",
            runs.len() + 1,
            last.as_secs_f64(),
            per_kill / u64::from(MAX_BSMTP),
            t0.elapsed().as_secs_f64()
        ),
    );
    for (i, (d, fb, fa, rb, ra)) in runs.iter().enumerate() {
        eprintln!(
            "  run {:2}: killed after {d:3} ms; files in incoming {fb} -> {fa}; relay {rb:6} -> {ra:6}",
            i + 1
        );
    }
    if killed < 50 {
        violations.push(format!(
            "only {killed} runs were killed mid-way (want >= 50)"
        ));
    }
    if during_ingest < 5 || during_delivery < 20 {
        violations.push(format!(
            "the kills did not fall where wanted: {during_ingest} during ingest (want >= 5), \
             {during_delivery} during delivery (want >= 20)"
        ));
    }
    violations.append(&mut t.violations);
    verdict(CASE, &violations);
}
