//! Measuring achieved rates at the mocks: per-transaction (start, bytes) points taken from a mock
//! journal, and the extremes of the rate over sliding windows.

use std::time::Duration;

use mock_mta::journal::Journal;

/// One accepted transaction as the mock saw it: when DATA came (ns since the epoch, from the
/// engine's clock) and the message bytes (after dot-unstuffing, CRLFs included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Point {
    pub at_ns: i128,
    pub bytes: u64,
}

/// Accepted transactions whose first recipient's domain ends with `domain` (each test gives each
/// pool its own recipient domain), sorted by start.
pub fn points(j: &Journal, domain: &str) -> Vec<Point> {
    let mut v: Vec<Point> = j
        .transactions()
        .filter(|t| t.accepted)
        .filter(|t| t.rcpts.first().is_some_and(|r| r.addr.ends_with(domain)))
        .map(|t| Point {
            at_ns: t.data_started_at.unwrap_or(t.ended_at).as_nanosecond(),
            bytes: t.bytes,
        })
        .collect();
    v.sort();
    v
}

/// All accepted transactions of several journals, merged and sorted.
pub fn all_points(js: &[Journal]) -> Vec<Point> {
    let mut v: Vec<Point> = js.iter().flat_map(|j| points(j, "")).collect();
    v.sort();
    v
}

/// The lowest and highest rate (bit/s) over every window of length `w` that lies inside
/// `[from_ns, to_ns]`: windows `[s, s + w)` starting at each transaction start, and windows
/// `(e - w, e]` ending at each one; these include the extremes.
#[derive(Debug, Clone, Copy)]
pub struct Extremes {
    pub min_bps: f64,
    pub max_bps: f64,
    pub windows: usize,
}

impl Extremes {
    /// The worst relative deviation from `limit_bps`.
    pub fn worst_error(&self, limit_bps: f64) -> f64 {
        ((self.min_bps - limit_bps).abs()).max((self.max_bps - limit_bps).abs()) / limit_bps
    }
    pub fn describe(&self, limit_bps: f64) -> String {
        format!(
            "min {:.0} bit/s ({:+.3}%), max {:.0} bit/s ({:+.3}%) over {} windows",
            self.min_bps,
            (self.min_bps / limit_bps - 1.0) * 100.0,
            self.max_bps,
            (self.max_bps / limit_bps - 1.0) * 100.0,
            self.windows
        )
    }
}

pub fn window_extremes(p: &[Point], w: Duration, from_ns: i128, to_ns: i128) -> Extremes {
    let w_ns = w.as_nanos() as i128;
    let secs = w.as_secs_f64();
    let mut min = f64::INFINITY;
    let mut max = 0f64;
    let mut windows = 0;
    // prefix sums
    let mut pre = Vec::with_capacity(p.len() + 1);
    pre.push(0u64);
    for x in p {
        pre.push(pre[pre.len() - 1] + x.bytes);
    }
    let first_at_or_after = |t: i128| p.partition_point(|x| x.at_ns < t);
    let first_after = |t: i128| p.partition_point(|x| x.at_ns <= t);
    for x in p {
        // [s, s + w)
        let s = x.at_ns;
        if s >= from_ns && s + w_ns <= to_ns {
            let (i, j) = (first_at_or_after(s), first_at_or_after(s + w_ns));
            let bps = (pre[j] - pre[i]) as f64 * 8.0 / secs;
            min = min.min(bps);
            max = max.max(bps);
            windows += 1;
        }
        // (e - w, e]
        let e = x.at_ns;
        if e - w_ns >= from_ns && e <= to_ns {
            let (i, j) = (first_after(e - w_ns), first_after(e));
            let bps = (pre[j] - pre[i]) as f64 * 8.0 / secs;
            min = min.min(bps);
            max = max.max(bps);
            windows += 1;
        }
    }
    Extremes {
        min_bps: min,
        max_bps: max,
        windows,
    }
}

/// Bytes started in `[from_ns, to_ns)`, as bit/s.
pub fn mean_bps(p: &[Point], from_ns: i128, to_ns: i128) -> f64 {
    let bytes: u64 = p
        .iter()
        .filter(|x| x.at_ns >= from_ns && x.at_ns < to_ns)
        .map(|x| x.bytes)
        .sum();
    bytes as f64 * 8.0 / ((to_ns - from_ns) as f64 / 1e9)
}

/// `12Mbps`-style units: k, M, G are powers of two (RATE-1).
pub const KBPS: u64 = 1 << 10;
pub const MBPS: u64 = 1 << 20;
