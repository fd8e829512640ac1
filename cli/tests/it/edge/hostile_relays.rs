//! Hostile relays: `smtpw run` delivers to a relay that misbehaves at one point of the session;
//! while it does, the operator stops the daemon with SIGTERM. The stop must come within the
//! drain deadline (`--drain-timeout`), memory must stay bounded whatever the relay sends, and no
//! recipient may disappear: delivered + failed + queued = submitted in the spool, the ledger
//! agrees, and nothing is delivered that the relay did not accept.

use std::collections::HashMap;
use std::time::Duration;

use smtpw_testkit::hostile::{HostileRelay, Script};
use smtpw_testkit::ledger::Tally;
use smtpw_testkit::proc::{peak_rss_kib, serial};
use smtpw_testkit::site::{verdict, Site};
use smtpw_testkit::workload::recipients;

use super::{DRAIN_SECS, STOP_MARGIN};
use crate::SMTPW;

const N: usize = 30;
const WORKERS: u32 = 1;
const MAX_BSMTP: u32 = 10;
/// Peak resident memory allowed to `smtpw run` (a debug build idles at about 20 MiB; the client
/// keeps at most one reply of 64 KiB and 16 MiB of unread output).
const PEAK_RSS_LIMIT_KIB: u64 = 128 * 1024;

fn hostile(case: &str, script: Script, dwell: Duration) {
    let _one_at_a_time = serial();
    let relay = HostileRelay::start(script);
    let mut site = Site::new(SMTPW);
    site.point_at(relay.port, WORKERS, MAX_BSMTP);
    site.submit(&recipients(N));
    let mut violations = Vec::new();
    let extra = site.drain_args(DRAIN_SECS).unwrap_or_else(|| {
        violations.push(
            "`smtpw run` has no --drain-timeout: a graceful stop has no bound (issue 10, item 6)"
                .to_string(),
        );
        Vec::new()
    });
    let mut kid = site.run(false, &extra);
    if !relay.wait_trapped(Duration::from_secs(20)) {
        violations.push(format!(
            "the relay's misbehaviour never began within 20 s ({:?}); log:\n{}",
            relay.log(),
            site.log_text()
        ));
    }
    std::thread::sleep(dwell);
    let rss = peak_rss_kib(kid.pid());
    if let Some(s) = kid.child.try_wait().unwrap() {
        violations.push(format!("`smtpw run` exited by itself ({s})"));
    }
    let limit = Duration::from_secs(DRAIN_SECS) + STOP_MARGIN;
    let (status, took) = kid.term_and_wait(limit);
    match status {
        None => violations.push(format!(
            "`smtpw run` did not stop within {limit:?} of SIGTERM (drain deadline {DRAIN_SECS} s); \
             SIGKILLed"
        )),
        Some(s) if s.code() != Some(0) => violations.push(format!(
            "`smtpw run` exited with {s} after SIGTERM, expected 0; log:\n{}",
            site.log_text()
        )),
        Some(_) => {}
    }
    if let Some(kib) = rss {
        if kib > PEAK_RSS_LIMIT_KIB {
            violations.push(format!(
                "peak memory {} MiB > {} MiB while the relay misbehaved",
                kib / 1024,
                PEAK_RSS_LIMIT_KIB / 1024
            ));
        }
    }
    let log = relay.log();
    let mut accepted: HashMap<String, u32> = HashMap::new();
    for r in &log.accepted {
        *accepted.entry(r.clone()).or_default() += 1;
    }
    let mut t = Tally::count(&site, &accepted);
    t.report(
        case,
        &format!(
            "stop took {} ms{}, peak RSS {} MiB, relay: {} connections, {} bytes sent, {} \
             recipients past the final dot",
            took.as_millis(),
            if status.is_none() { " (killed)" } else { "" },
            rss.map_or(0, |k| k / 1024),
            log.connections,
            log.bytes_sent,
            log.dot_seen.len()
        ),
    );
    violations.append(&mut t.violations);
    verdict(case, &violations);
}

#[test]
fn relay_silent_after_greeting() {
    hostile(
        "relay silent after the greeting",
        Script::SilentAfterGreeting,
        Duration::from_millis(500),
    );
}

#[test]
fn relay_silent_mid_transaction() {
    hostile(
        "relay silent mid-transaction",
        Script::SilentMidTransaction,
        Duration::from_millis(500),
    );
}

#[test]
fn relay_silent_after_data() {
    hostile(
        "relay silent after the data",
        Script::SilentAfterData,
        Duration::from_millis(500),
    );
}

#[test]
fn relay_drips_one_byte_at_a_time() {
    hostile(
        "relay drips one byte per 100 ms",
        Script::Drip(Duration::from_millis(100)),
        Duration::from_secs(1),
    );
}

#[test]
fn relay_sends_garbage() {
    hostile(
        "relay sends garbage",
        Script::Garbage,
        Duration::from_millis(500),
    );
}

#[test]
fn relay_sends_an_oversized_reply() {
    hostile(
        "relay sends a 1 MiB reply line",
        Script::OversizedReply,
        Duration::from_secs(1),
    );
}

#[test]
fn relay_sends_a_reply_line_that_never_ends() {
    hostile(
        "relay sends a reply line that never ends",
        Script::EndlessLine,
        Duration::from_secs(2),
    );
}

#[test]
fn relay_sends_a_multiline_reply_that_never_ends() {
    hostile(
        "relay sends a multi-line reply that never ends",
        Script::EndlessMultiline,
        Duration::from_secs(2),
    );
}

#[test]
fn relay_answers_data_with_250() {
    hostile(
        "relay answers DATA with 250 instead of 354",
        Script::WrongDataReply,
        Duration::from_millis(500),
    );
}

#[test]
fn relay_closes_after_the_final_dot() {
    hostile(
        "relay closes right after the final dot",
        Script::CloseAfterDot,
        Duration::from_millis(500),
    );
}
