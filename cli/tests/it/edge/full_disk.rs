//! Full disk: the spool (and its ledger) on a small tmpfs that fills up while `smtpw run
//! --until-empty` delivers, and gets its space back a few seconds later. While the spool cannot
//! record outcomes, no new copy may go out: the relay's deliveries stay within the in-flight
//! bound of what the spool recorded; the operator sees a few clear errors, not one per copy;
//! once space returns delivery resumes by itself, `--until-empty` ends, every recipient is
//! delivered, counted once, with a whole ledger line, and the repeats at the relay stay within
//! the in-flight bound. Root only (tmpfs); skipped with a notice otherwise.

use std::time::{Duration, Instant};

use mock_mta::MockConfig;

use smtpw_testkit::ledger::Tally;
use smtpw_testkit::proc::{
    num, received, repeat_bound_per_crash, serial, wait_until, LoopbackMock,
};
use smtpw_testkit::site::{verdict, Site};
use smtpw_testkit::tmpfs::Tmpfs;
use smtpw_testkit::workload::recipients;

use crate::SMTPW;

const N: usize = 20_000;
const WORKERS: u32 = 2;
const MAX_BSMTP: u32 = 50;
/// How long the disk stays full.
const FULL_FOR: Duration = Duration::from_secs(4);
/// Error lines about the full disk allowed while it is full: one per condition (the ledger, the
/// database, the status file), a few times over, not one per copy.
const MAX_ENOSPC_LINES: usize = 10;

fn is_enospc_line(l: &str) -> bool {
    let l = l.to_ascii_lowercase();
    l.contains("no space left") || l.contains("os error 28") || l.contains("disk is full")
}

#[test]
fn delivery_while_the_disk_fills_and_after_space_returns() {
    const CASE: &str = "full disk";
    let _one_at_a_time = serial();
    let mut site = Site::new(SMTPW);
    let disk = match Tmpfs::mount_on(&site.spool, "16m") {
        Ok(d) => d,
        Err(why) => {
            eprintln!("edge {CASE}: NOTICE: skipped ({why}); it needs root to mount a tmpfs");
            return;
        }
    };
    let mut mc = MockConfig::iis();
    mc.faults.command_latency_ms.insert("DOT".into(), 20);
    let mock = LoopbackMock::start(mc);
    site.point_at(mock.port, WORKERS, MAX_BSMTP);
    site.submit(&recipients(N));
    let bound = repeat_bound_per_crash(WORKERS, MAX_BSMTP);
    let mut violations = Vec::new();

    let mut kid = site.run(true, &[]);
    assert!(
        wait_until(Duration::from_secs(30), || {
            mock.mta.stats().recipients_accepted >= 2_000
                && num(&site.queue(), "incoming_files") == 0
        }),
        "no delivery within 30 s; log:\n{}",
        site.log_text()
    );
    // Fill the disk to the last byte.
    let filler = disk.fill("filler");
    let filled = filler.bytes;
    let log_at_full = site.log_text().len();
    let relay_at_full = mock.mta.stats().recipients_accepted;
    let full_at = Instant::now();
    std::thread::sleep(FULL_FOR);
    let relay_while_full = mock.mta.stats().recipients_accepted;
    let recorded_while_full = match site.try_queue() {
        Ok(q) => Some(num(&q, "delivered")),
        Err(e) => {
            violations.push(format!("`smtpw queue` failed while the disk was full: {e}"));
            None
        }
    };
    let full_log = site.log_since(log_at_full);
    let enospc_lines = full_log.lines().filter(|l| is_enospc_line(l)).count();
    if let Some(rec) = recorded_while_full {
        if relay_while_full > rec + bound {
            violations.push(format!(
                "while the disk was full the relay accepted {relay_while_full} recipients but \
                 the spool recorded {rec}: {} beyond the in-flight bound {bound} (copies went out \
                 that could not be recorded)",
                relay_while_full - rec - bound
            ));
        }
    }
    if enospc_lines > MAX_ENOSPC_LINES {
        violations.push(format!(
            "{enospc_lines} error lines about the full disk in {FULL_FOR:?} (want at most \
             {MAX_ENOSPC_LINES}: one per condition, not one per copy)"
        ));
    }
    // Space returns.
    std::fs::remove_file(&filler).unwrap();
    let freed_at = Instant::now();
    let full_for = freed_at - full_at;
    let status = kid.wait_for(Duration::from_secs(60));
    let finish = freed_at.elapsed();
    match status {
        None => {
            kid.kill();
            violations.push(format!(
                "`smtpw run --until-empty` did not end within 60 s of space returning (queue: \
                 {:?})",
                site.try_queue()
            ));
        }
        Some(s) if !s.success() => violations.push(format!("`smtpw run` exited {s}")),
        Some(_) => {}
    }
    assert!(
        mock.wait_idle(Duration::from_secs(10)),
        "the mock's sessions end"
    );
    let got = received(&mock);
    let mut t = Tally::count(&site, &got);
    if (t.delivered, t.queued, t.failed) != (N as u64, 0, 0) {
        violations.push(format!(
            "at the end: delivered {}, queued {}, failed {} of {N}",
            t.delivered, t.queued, t.failed
        ));
    }
    let relay_total: u64 = got.values().map(|n| u64::from(*n)).sum();
    if relay_total > N as u64 + bound {
        violations.push(format!(
            "the relay accepted {relay_total} deliveries for {N} recipients: {} repeats > the \
             in-flight bound {bound}",
            relay_total - N as u64
        ));
    }
    if (t.relay_distinct as usize) < N {
        violations.push(format!(
            "{} recipients never reached the relay",
            N - t.relay_distinct as usize
        ));
    }
    t.report(
        CASE,
        &format!(
            "disk filled ({} KiB of filler) after {relay_at_full} relay deliveries; {:.1} s \
             later the relay had {relay_while_full} and the spool recorded {}; {enospc_lines} \
             error lines about it; after space returned, {} in {:.1} s; relay deliveries \
             {relay_total} for {N} (bound {bound})",
            filled / 1024,
            full_for.as_secs_f64(),
            recorded_while_full.map_or("?".to_string(), |r| r.to_string()),
            if status.is_some_and(|s| s.success()) {
                "--until-empty ended"
            } else {
                "--until-empty did not end"
            },
            finish.as_secs_f64()
        ),
    );
    violations.append(&mut t.violations);
    verdict(CASE, &violations);
}
