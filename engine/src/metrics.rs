//! What an operator scrapes (`GET /metrics`, Prometheus text format 0.0.4): one [`Metrics`]
//! per running engine, fed by small hooks, rendered on demand. docs/metrics.md lists every
//! series and its meaning (OPS-2).
//!
//! The hooks, and who calls them:
//! - [`Metrics::recorded`]: the spool, once a batch of outcomes is durable (ledger and database),
//!   so `smtpw_recipients_total` counts exactly the ledger's lines of this process (OPS-3).
//! - [`Metrics::transaction`], [`Metrics::connected`], [`Metrics::relay_error`],
//!   [`Metrics::worker_state`]: the workers.
//! - [`Metrics::ingested`]: whatever takes jobs in (the `incoming/` scan; the listener).
//! - [`Metrics::set_rates`]: the engine's rate-status keeper.
//!
//! Everything here is counters and small maps keyed by pool, relay or reply code: a scrape costs
//! a few locks and a string, whatever the queue holds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use jiff::Timestamp;
use serde::Serialize;

use crate::outcome::Outcome;
use crate::ratelimit::RateStatus;
use crate::spool::{CopyState, QueueStats};

/// Upper bounds (seconds) of `smtpw_delivery_latency_seconds`' buckets: from a fast relay's
/// second to the 5-day lifetime.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.5,
    1.0,
    5.0,
    15.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4.0 * 3600.0,
    86400.0,
    2.0 * 86400.0,
    5.0 * 86400.0,
];

/// What a worker is doing, for `smtpw_workers{state}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Connecting, or delivering a copy.
    Active,
    /// Waiting for work.
    Idle,
    /// Outside every opentime window (no host to use now).
    OutsideWindow,
    /// No host answered: waiting out the back-off.
    BackingOff,
    /// Every pool it serves is suspended by the operator.
    Suspended,
}

impl WorkerState {
    /// Every state, in the order `smtpw_workers` lists them.
    pub const ALL: [WorkerState; 5] = [
        WorkerState::Active,
        WorkerState::Idle,
        WorkerState::OutsideWindow,
        WorkerState::BackingOff,
        WorkerState::Suspended,
    ];

    /// The `state` label of `smtpw_workers`.
    pub fn label(self) -> &'static str {
        match self {
            WorkerState::Active => "active",
            WorkerState::Idle => "idle",
            WorkerState::OutsideWindow => "outside_window",
            WorkerState::BackingOff => "backing_off",
            WorkerState::Suspended => "suspended",
        }
    }
}

/// The last trouble seen with one relay, and when it is tried again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RelayStatus {
    /// The last error: why it could not be reached, or the last 4yz/5yz reply.
    pub last_error: Option<String>,
    /// When the last error was seen.
    pub last_error_at: Option<Timestamp>,
    /// After a failed connection: when a worker tries it again.
    pub next_retry: Option<Timestamp>,
}

/// How one transaction (one copy handed to a relay) ended, for `smtpw_transactions_total`.
pub fn transaction_result(outcomes: &[Outcome], connection_lost: bool) -> &'static str {
    if connection_lost {
        "connection_lost"
    } else if outcomes.iter().all(|o| *o == Outcome::Delivered) {
        "delivered"
    } else if outcomes.iter().all(|o| *o == Outcome::Failed) {
        "failed"
    } else if outcomes.iter().all(|o| *o == Outcome::Deferred) {
        "deferred"
    } else {
        "mixed"
    }
}

#[derive(Debug, Default)]
struct Histogram {
    /// Per bucket of [`LATENCY_BUCKETS`] (not cumulative), then +Inf.
    counts: [u64; LATENCY_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i] += 1;
        self.sum += secs;
        self.count += 1;
    }
}

#[derive(Debug, Default)]
struct Counts {
    /// (pool, outcome) -> recipients.
    recipients: BTreeMap<(String, &'static str), u64>,
    latency: Histogram,
    /// (relay, result) -> transactions.
    transactions: BTreeMap<(String, &'static str), u64>,
    /// (relay, code) -> replies.
    replies: BTreeMap<(String, u16), u64>,
    /// relay -> open connections.
    connections: BTreeMap<String, u64>,
    /// (source, result) -> jobs.
    ingest: BTreeMap<(&'static str, &'static str), u64>,
    relays: BTreeMap<String, RelayStatus>,
    /// Worker slot -> state (`None`: that worker has stopped).
    workers: Vec<Option<WorkerState>>,
    rates: Option<RateStatus>,
}

/// The engine's metrics: shared (`Arc`) by the spool, the workers, the intake and the admin
/// endpoint. Counters count from the start of the process.
#[derive(Debug, Default)]
pub struct Metrics {
    counts: Mutex<Counts>,
    scrapes: AtomicU64,
    /// This process's node name on a database spool (`smtpw_node_info{node}`).
    node: std::sync::OnceLock<String>,
}

/// An open connection counted in `smtpw_connections{relay}`: uncounted when dropped.
#[derive(Debug)]
pub struct ConnectionGuard {
    metrics: Arc<Metrics>,
    relay: String,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut c = self.metrics.lock();
        if let Some(n) = c.connections.get_mut(&self.relay) {
            *n = n.saturating_sub(1);
        }
    }
}

fn outcome_label(o: Outcome) -> &'static str {
    match o {
        Outcome::Delivered => "delivered",
        Outcome::Failed => "failed",
        Outcome::Deferred => "deferred",
    }
}

impl Metrics {
    /// Fresh metrics, every counter at 0 (they count from the start of the process).
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A batch of ledger lines of `pool` is durable: `outcomes` as written, with the age of the
    /// job (from its ingest) for the final ones.
    pub fn recorded(&self, pool: &str, outcomes: impl IntoIterator<Item = (Outcome, f64)>) {
        let mut c = self.lock();
        for (o, age) in outcomes {
            *c.recipients
                .entry((pool.to_owned(), outcome_label(o)))
                .or_default() += 1;
            if o != Outcome::Deferred {
                c.latency.observe(age.max(0.0));
            }
        }
    }

    /// One copy's recorded outcomes, by count: `delivered`, `failed` and `deferred` recipients
    /// of pool `pool`, whose job was `age_secs` old (what both spools call once durable).
    pub fn recorded_copy(
        &self,
        pool: &str,
        delivered: usize,
        failed: usize,
        deferred: usize,
        age_secs: f64,
    ) {
        let outcomes = std::iter::repeat_n(Outcome::Delivered, delivered)
            .chain(std::iter::repeat_n(Outcome::Failed, failed))
            .chain(std::iter::repeat_n(Outcome::Deferred, deferred))
            .map(|o| (o, age_secs));
        self.recorded(pool, outcomes);
    }

    /// A copy's transaction with `relay` ended: `result` (see [`transaction_result`]) and the
    /// reply code that decided each recipient.
    pub fn transaction(&self, relay: &str, result: &'static str, codes: &[u16]) {
        let mut c = self.lock();
        *c.transactions
            .entry((relay.to_owned(), result))
            .or_default() += 1;
        for code in codes {
            *c.replies.entry((relay.to_owned(), *code)).or_default() += 1;
        }
    }

    /// A connection to `relay` is open until the guard is dropped.
    pub fn connected(self: &Arc<Self>, relay: &str) -> ConnectionGuard {
        *self.lock().connections.entry(relay.to_owned()).or_default() += 1;
        ConnectionGuard {
            metrics: self.clone(),
            relay: relay.to_owned(),
        }
    }

    /// The last trouble with `relay` (never a secret: the relay's reply or a connect error), and
    /// when it is tried again if known.
    pub fn relay_error(
        &self,
        relay: &str,
        error: &str,
        at: Timestamp,
        next_retry: Option<Timestamp>,
    ) {
        let mut c = self.lock();
        let s = c.relays.entry(relay.to_owned()).or_default();
        s.last_error = Some(error.to_owned());
        s.last_error_at = Some(at);
        s.next_retry = next_retry;
    }

    /// A worker tries `relay` again at `at` (after a failed connection).
    pub fn relay_retry(&self, relay: &str, at: Option<Timestamp>) {
        self.lock()
            .relays
            .entry(relay.to_owned())
            .or_default()
            .next_retry = at;
    }

    /// `relay` answered: no retry pending.
    pub fn relay_reached(&self, relay: &str) {
        if let Some(s) = self.lock().relays.get_mut(relay) {
            s.next_retry = None;
        }
    }

    /// Every relay seen with trouble.
    pub fn relays(&self) -> BTreeMap<String, RelayStatus> {
        self.lock().relays.clone()
    }

    /// A slot for one worker's state (starts idle).
    pub fn worker_slot(&self) -> usize {
        let mut c = self.lock();
        c.workers.push(Some(WorkerState::Idle));
        c.workers.len() - 1
    }

    /// Worker `slot` is now in `state`.
    pub fn worker_state(&self, slot: usize, state: WorkerState) {
        if let Some(s) = self.lock().workers.get_mut(slot) {
            *s = Some(state);
        }
    }

    /// The worker of `slot` has stopped (a reload retired it, or the engine stops).
    pub fn worker_gone(&self, slot: usize) {
        if let Some(s) = self.lock().workers.get_mut(slot) {
            *s = None;
        }
    }

    /// `n` jobs taken in from `source` (`file`, `submit`, `smtp`, `sendmail`) with `result`
    /// (`accepted`, `quarantined`, `rejected`...).
    pub fn ingested(&self, source: &'static str, result: &'static str, n: u64) {
        if n > 0 {
            *self.lock().ingest.entry((source, result)).or_default() += n;
        }
    }

    /// This process is node `name` of a database spool: `/metrics` says so once, in
    /// `smtpw_node_info{node}` (the other series keep their labels; see docs/metrics.md). The
    /// first name given stays.
    pub fn set_node(&self, name: &str) {
        let _ = self.node.set(name.to_owned());
    }

    /// The latest rate report (limits and what was achieved over the last minute).
    pub fn set_rates(&self, rates: RateStatus) {
        self.lock().rates = Some(rates);
    }

    /// The recipients counted so far per (pool, outcome).
    pub fn recipients(&self) -> BTreeMap<(String, &'static str), u64> {
        self.lock().recipients.clone()
    }

    /// Prometheus text format 0.0.4: everything counted here, plus the queue's gauges from
    /// `queue` (the spool's [`QueueStats`], when it could be read).
    pub fn render(&self, queue: Option<&QueueStats>) -> String {
        self.scrapes.fetch_add(1, Ordering::Relaxed);
        let c = self.lock();
        let mut out = String::with_capacity(4096);
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(
            &mut out,
            "smtpw_recipients_total",
            "counter",
            "Recipient outcomes recorded (ledger lines written) by this process, per pool and outcome.",
        );
        for ((pool, outcome), n) in &c.recipients {
            let _ = writeln!(
                out,
                "smtpw_recipients_total{{pool=\"{}\",outcome=\"{outcome}\"}} {n}",
                esc(pool)
            );
        }
        if let Some(q) = queue {
            head(
                &mut out,
                "smtpw_queue_recipients",
                "gauge",
                "Recipients queued, per pool and state (queued = ready now).",
            );
            let mut per: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
            let mut oldest: BTreeMap<String, u64> = BTreeMap::new();
            for p in &q.pools {
                let state = match p.state {
                    CopyState::Ready => "queued",
                    CopyState::Deferred => "deferred",
                    CopyState::InFlight => "in_flight",
                };
                *per.entry((p.pool.to_string(), state)).or_default() += p.recipients;
                let o = oldest.entry(p.pool.to_string()).or_default();
                *o = (*o).max(p.oldest_age_secs);
            }
            for ((pool, state), n) in &per {
                let _ = writeln!(
                    out,
                    "smtpw_queue_recipients{{pool=\"{}\",state=\"{state}\"}} {n}",
                    esc(pool)
                );
            }
            head(
                &mut out,
                "smtpw_queue_oldest_age_seconds",
                "gauge",
                "Age of the oldest job with a recipient queued, per pool.",
            );
            for (pool, age) in &oldest {
                let _ = writeln!(
                    out,
                    "smtpw_queue_oldest_age_seconds{{pool=\"{}\"}} {age}",
                    esc(pool)
                );
            }
            head(
                &mut out,
                "smtpw_incoming_files",
                "gauge",
                "Job files waiting in SPOOL/incoming.",
            );
            let _ = writeln!(out, "smtpw_incoming_files {}", q.incoming_files);
        }
        head(
            &mut out,
            "smtpw_transactions_total",
            "counter",
            "Copies handed to a relay, per relay and how the transaction ended.",
        );
        for ((relay, result), n) in &c.transactions {
            let _ = writeln!(
                out,
                "smtpw_transactions_total{{relay=\"{}\",result=\"{result}\"}} {n}",
                esc(relay)
            );
        }
        head(
            &mut out,
            "smtpw_replies_total",
            "counter",
            "Replies that decided a recipient, per relay and reply code.",
        );
        for ((relay, code), n) in &c.replies {
            let _ = writeln!(
                out,
                "smtpw_replies_total{{relay=\"{}\",code=\"{code}\"}} {n}",
                esc(relay)
            );
        }
        head(
            &mut out,
            "smtpw_connections",
            "gauge",
            "Open connections, per relay.",
        );
        for (relay, n) in &c.connections {
            let _ = writeln!(out, "smtpw_connections{{relay=\"{}\"}} {n}", esc(relay));
        }
        head(
            &mut out,
            "smtpw_workers",
            "gauge",
            "Workers (and the synchronous path) per state.",
        );
        for s in WorkerState::ALL {
            let n = c.workers.iter().filter(|w| **w == Some(s)).count();
            let _ = writeln!(out, "smtpw_workers{{state=\"{}\"}} {n}", s.label());
        }
        if let Some(r) = &c.rates {
            head(
                &mut out,
                "smtpw_rate_limit_bits_per_second",
                "gauge",
                "Configured rate limit per pool (pool \"*\" = overall); absent = unlimited.",
            );
            for l in std::iter::once(&r.overall).chain(&r.pools) {
                if let Some(bps) = l.limit_bps {
                    let _ = writeln!(
                        out,
                        "smtpw_rate_limit_bits_per_second{{pool=\"{}\"}} {bps}",
                        esc(&l.pool)
                    );
                }
            }
            head(
                &mut out,
                "smtpw_rate_achieved_bits_per_second",
                "gauge",
                "Message bits sent per second over the last minute, per pool (pool \"*\" = overall).",
            );
            for l in std::iter::once(&r.overall).chain(&r.pools) {
                let _ = writeln!(
                    out,
                    "smtpw_rate_achieved_bits_per_second{{pool=\"{}\"}} {}",
                    esc(&l.pool),
                    l.achieved_bps
                );
            }
        }
        head(
            &mut out,
            "smtpw_ingest_jobs_total",
            "counter",
            "Jobs taken in, per source and result.",
        );
        for ((source, result), n) in &c.ingest {
            let _ = writeln!(
                out,
                "smtpw_ingest_jobs_total{{source=\"{source}\",result=\"{result}\"}} {n}"
            );
        }
        head(
            &mut out,
            "smtpw_delivery_latency_seconds",
            "histogram",
            "Time from a job's ingest to each recipient's final outcome (delivered or failed).",
        );
        let mut cumulative = 0;
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += c.latency.counts[i];
            let _ = writeln!(
                out,
                "smtpw_delivery_latency_seconds_bucket{{le=\"{b}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "smtpw_delivery_latency_seconds_bucket{{le=\"+Inf\"}} {}\n\
             smtpw_delivery_latency_seconds_sum {}\n\
             smtpw_delivery_latency_seconds_count {}",
            c.latency.count, c.latency.sum, c.latency.count
        );
        if let Some(node) = self.node.get() {
            head(
                &mut out,
                "smtpw_node_info",
                "gauge",
                "This process's node name on a database spool (always 1).",
            );
            let _ = writeln!(out, "smtpw_node_info{{node=\"{}\"}} 1", esc(node));
        }
        head(
            &mut out,
            "smtpw_metrics_scrapes_total",
            "counter",
            "Scrapes of this endpoint.",
        );
        let _ = writeln!(
            out,
            "smtpw_metrics_scrapes_total {}",
            self.scrapes.load(Ordering::Relaxed)
        );
        out
    }
}

/// A label value as the text format wants it: `\`, `"` and line feeds escaped.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_as_the_text_format() {
        let m = Metrics::new();
        m.recorded(
            "-",
            [
                (Outcome::Delivered, 2.0),
                (Outcome::Delivered, 2.0),
                (Outcome::Failed, 100.0),
                (Outcome::Deferred, 3.0),
            ],
        );
        m.transaction("mx:25", "mixed", &[250, 250, 550, 451]);
        let g = m.connected("mx:25");
        assert!(
            !m.render(None).contains("smtpw_node_info"),
            "no node on a spool directory"
        );
        m.set_node("N1.EXAMPLE.ORG");
        let text = m.render(None);
        assert!(text.contains("smtpw_node_info{node=\"N1.EXAMPLE.ORG\"} 1\n"));
        assert!(text.contains("smtpw_recipients_total{pool=\"-\",outcome=\"delivered\"} 2\n"));
        assert!(text.contains("smtpw_recipients_total{pool=\"-\",outcome=\"failed\"} 1\n"));
        assert!(text.contains("smtpw_recipients_total{pool=\"-\",outcome=\"deferred\"} 1\n"));
        assert!(text.contains("smtpw_replies_total{relay=\"mx:25\",code=\"250\"} 2\n"));
        assert!(text.contains("smtpw_connections{relay=\"mx:25\"} 1\n"));
        // Latency of final outcomes only: 2 s twice (le 5), 100 s once (le 300).
        assert!(text.contains("smtpw_delivery_latency_seconds_bucket{le=\"1\"} 0\n"));
        assert!(text.contains("smtpw_delivery_latency_seconds_bucket{le=\"5\"} 2\n"));
        assert!(text.contains("smtpw_delivery_latency_seconds_bucket{le=\"300\"} 3\n"));
        assert!(text.contains("smtpw_delivery_latency_seconds_count 3\n"));
        drop(g);
        assert!(m
            .render(None)
            .contains("smtpw_connections{relay=\"mx:25\"} 0\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
