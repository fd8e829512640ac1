//! The ledger as the tests read it: strictly (every line whole), as per-recipient counts of
//! deliveries, and the promise in figures ([`Tally`]): every submitted recipient is delivered,
//! failed or still queued, and the spool's counts (`smtpw queue --json`), the ledger and what the
//! relays received agree; a repeat at a relay is counted, never hidden.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use smtpw_engine::ledger::{read_ledger, LedgerLine, Outcome};

use crate::proc::num;
use crate::site::Site;

/// The ledger read strictly: every line must be a whole JSON ledger line.
#[derive(Debug, Default)]
pub struct LedgerScan {
    pub lines: Vec<LedgerLine>,
    /// Lines that are not a whole ledger line (a torn write), with their place (1-based).
    pub torn: Vec<(usize, String)>,
}

/// Reads the ledger at `path` strictly (a missing file is an empty ledger).
pub fn scan_ledger(path: &Path) -> LedgerScan {
    let Ok(bytes) = std::fs::read(path) else {
        return LedgerScan::default();
    };
    let mut scan = LedgerScan::default();
    let text = String::from_utf8_lossy(&bytes);
    let mut pieces: Vec<&str> = text.split('\n').collect();
    // The text after the last newline: empty when the file ends in one, else a torn line.
    let tail = pieces.pop().unwrap_or_default();
    for (i, l) in pieces.iter().enumerate() {
        match serde_json::from_str::<LedgerLine>(l) {
            Ok(line) => scan.lines.push(line),
            Err(_) => scan.torn.push((i + 1, shorten(l))),
        }
    }
    if !tail.is_empty() {
        scan.torn.push((pieces.len() + 1, shorten(tail)));
    }
    scan
}

fn shorten(s: &str) -> String {
    let mut t: String = s.chars().take(100).collect();
    if s.chars().count() > 100 {
        t.push_str("...");
    }
    t
}

/// The ledger of a run that delivered everything: (whole lines in the file, per recipient how
/// many `delivered` lines). Panics on a torn line or any outcome but `delivered`.
pub fn delivered_lines(path: &Path) -> (usize, BTreeMap<String, u32>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "the ledger ends with a torn line: {:?}",
        &text[text.len().saturating_sub(80)..]
    );
    let raw = text.lines().count();
    let mut per = BTreeMap::new();
    let mut parsed = 0;
    for l in read_ledger(path).unwrap() {
        parsed += 1;
        assert_eq!(l.outcome, Outcome::Delivered, "{l:?}");
        *per.entry(l.rcpt).or_default() += 1;
    }
    assert_eq!(parsed, raw, "every ledger line is whole JSON");
    (raw, per)
}

/// Per recipient, the ledger's `delivered` lines (with a 250 reply); panics on any other outcome.
pub fn ledgered(path: &Path) -> HashMap<String, u32> {
    let mut m: HashMap<String, u32> = HashMap::new();
    for l in read_ledger(path).unwrap() {
        assert_eq!(l.outcome, Outcome::Delivered, "{l:?}");
        assert!(l.reply.starts_with("250"), "{l:?}");
        *m.entry(l.rcpt).or_default() += 1;
    }
    m
}

/// One case's figures.
#[derive(Debug, Default)]
pub struct Tally {
    pub submitted: u64,
    /// From `smtpw queue --json`.
    pub delivered: u64,
    pub failed: u64,
    pub queued: u64,
    /// Distinct recipients with a `delivered` / `failed` line in the ledger.
    pub ledger_delivered: u64,
    pub ledger_failed: u64,
    /// Ledger lines beyond the first final line of a recipient.
    pub ledger_repeats: u64,
    /// Ledger lines that are not whole (a write cut short).
    pub torn: u64,
    /// Accepted deliveries at the relays beyond the first, over all recipients.
    pub repeated: u64,
    /// Recipients the relays accepted at least once.
    pub relay_distinct: u64,
    pub violations: Vec<String>,
}

impl Tally {
    /// Count `site` against `relay` (address -> accepted deliveries at the relays). A torn
    /// ledger line is a violation everywhere, after SIGKILLs too: a kill can cut a ledger write
    /// short, but the next run cuts the fragment off when it opens the ledger.
    pub fn count(site: &Site, relay: &HashMap<String, u32>) -> Tally {
        let q = site.queue();
        let mut t = Tally {
            submitted: site.submitted.len() as u64,
            delivered: num(&q, "delivered"),
            failed: num(&q, "failed"),
            queued: num(&q, "queued"),
            repeated: relay.values().map(|n| u64::from(n.saturating_sub(1))).sum(),
            relay_distinct: relay.values().filter(|n| **n > 0).count() as u64,
            ..Tally::default()
        };
        let submitted: HashSet<&str> = site.submitted.iter().map(String::as_str).collect();
        let scan = scan_ledger(&site.ledger);
        t.torn = scan.torn.len() as u64;
        for (at, l) in &scan.torn {
            t.violations.push(format!(
                "torn ledger line {at}: {l:?} (every line must be whole)"
            ));
        }
        let mut finals: HashMap<&str, (u32, u32)> = HashMap::new();
        for l in &scan.lines {
            if !submitted.contains(l.rcpt.as_str()) {
                t.violations.push(format!(
                    "the ledger names a recipient never submitted: {l:?}"
                ));
            }
            let e = finals.entry(l.rcpt.as_str()).or_default();
            match l.outcome {
                Outcome::Delivered => e.0 += 1,
                Outcome::Failed => e.1 += 1,
                Outcome::Deferred => {}
            }
            if l.outcome == Outcome::Delivered && relay.get(&l.rcpt).copied().unwrap_or(0) == 0 {
                t.violations.push(format!(
                    "{} is delivered in the ledger but no relay accepted it: {l:?}",
                    l.rcpt
                ));
            }
        }
        for (r, (d, f)) in &finals {
            if *d > 0 && *f > 0 {
                t.violations
                    .push(format!("{r} is both delivered and failed in the ledger"));
            }
            t.ledger_delivered += u64::from(*d > 0);
            t.ledger_failed += u64::from(*f > 0);
            t.ledger_repeats += u64::from((d + f).saturating_sub(1));
        }
        if t.delivered + t.failed + t.queued != t.submitted {
            t.violations.push(format!(
                "delivered {} + failed {} + queued {} = {} != submitted {} (recipients lost or \
                 counted twice); queue: {q}",
                t.delivered,
                t.failed,
                t.queued,
                t.delivered + t.failed + t.queued,
                t.submitted
            ));
        }
        if (t.ledger_delivered, t.ledger_failed) != (t.delivered, t.failed) {
            t.violations.push(format!(
                "the ledger ({} delivered, {} failed) disagrees with the spool ({} delivered, \
                 {} failed)",
                t.ledger_delivered, t.ledger_failed, t.delivered, t.failed
            ));
        }
        t
    }

    /// The case's figures, printed whether it passes or not (`--nocapture` shows them).
    pub fn report(&self, case: &str, extra: &str) {
        eprintln!(
            "edge {case}: submitted {}, delivered {}, failed {}, queued {} (sum {}); ledger \
             delivered {} failed {} repeats {} torn lines {}; relay accepted {} distinct, \
             repeated {}{}{}",
            self.submitted,
            self.delivered,
            self.failed,
            self.queued,
            self.delivered + self.failed + self.queued,
            self.ledger_delivered,
            self.ledger_failed,
            self.ledger_repeats,
            self.torn,
            self.relay_distinct,
            self.repeated,
            if extra.is_empty() { "" } else { "; " },
            extra
        );
    }
}
