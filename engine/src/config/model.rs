//! The resolved site configuration: what SITE.CFG means once parsed and validated.
//!
//! These types are shared by the parser (`config::parse`), the router, the engine and the CLI.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// A host and TCP port, host as written in the file (case kept).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct HostPort {
    /// The host name or address, as written.
    pub host: String,
    /// The TCP port.
    pub port: u16,
}

impl HostPort {
    /// A host and port.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
        }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// A time of day in whole minutes since local midnight, 0..1440.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeOfDay(u16);

impl TimeOfDay {
    /// 00:00.
    pub const MIDNIGHT: TimeOfDay = TimeOfDay(0);

    /// `None` unless `hour < 24 && minute < 60`.
    pub fn new(hour: u8, minute: u8) -> Option<Self> {
        (hour < 24 && minute < 60).then(|| Self(u16::from(hour) * 60 + u16::from(minute)))
    }
    /// Minutes since midnight.
    pub fn minutes(self) -> u16 {
        self.0
    }
    /// The hour, `0..24`.
    pub fn hour(self) -> u8 {
        (self.0 / 60) as u8
    }
    /// The minute, `0..60`.
    pub fn minute(self) -> u8 {
        (self.0 % 60) as u8
    }
    /// The minute a wall-clock time falls in (seconds are dropped).
    pub fn from_civil(t: jiff::civil::Time) -> Self {
        Self(t.hour() as u16 * 60 + t.minute() as u16)
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.hour(), self.minute())
    }
}

impl Serialize for TimeOfDay {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An opentime window `[start, end)` in local server time (WRK-4). `end < start` crosses
/// midnight; `end == start` is the whole day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Window {
    /// The first minute inside the window.
    pub start: TimeOfDay,
    /// The first minute after the window.
    pub end: TimeOfDay,
}

impl Window {
    /// Whether `t` falls inside the window (across midnight when `end < start`).
    pub fn contains(&self, t: TimeOfDay) -> bool {
        use std::cmp::Ordering::*;
        match self.start.cmp(&self.end) {
            Less => self.start <= t && t < self.end,
            Greater => t >= self.start || t < self.end,
            Equal => true,
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// One of the 27 delivery pools: `A`..`Z`, or the default pool `-` (POOL-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pool(u8);

impl Pool {
    /// The default pool `-`.
    pub const DEFAULT: Pool = Pool(26);
    /// How many pools there are: `A` to `Z` and `-`.
    pub const COUNT: usize = 27;

    /// `A`..`Z` (either case) or `-`.
    pub fn from_char(c: char) -> Option<Pool> {
        match c {
            '-' => Some(Pool::DEFAULT),
            'a'..='z' => Some(Pool(c as u8 - b'a')),
            'A'..='Z' => Some(Pool(c as u8 - b'A')),
            _ => None,
        }
    }
    /// `0..27`: `A` = 0 .. `Z` = 25, `-` = 26.
    pub fn index(self) -> usize {
        self.0 as usize
    }
    /// The pool with this [`Pool::index`], if `i < Pool::COUNT`.
    pub fn from_index(i: usize) -> Option<Pool> {
        (i < Self::COUNT).then_some(Pool(i as u8))
    }
    /// The pool's letter, or `-` for the default pool.
    pub fn as_char(self) -> char {
        if self == Pool::DEFAULT {
            '-'
        } else {
            (b'A' + self.0) as char
        }
    }
    /// All 27 pools, `A`..`Z` then `-`.
    pub fn all() -> impl Iterator<Item = Pool> {
        (0..Self::COUNT as u8).map(Pool)
    }
}

impl Default for Pool {
    fn default() -> Self {
        Pool::DEFAULT
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_char())
    }
}

impl Serialize for Pool {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A set of pools (a bit per pool). `POOL=*`, or no `POOL=`, is [`PoolSet::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolSet(u32);

impl PoolSet {
    /// Every pool.
    pub const ALL: PoolSet = PoolSet((1 << Pool::COUNT) - 1);
    /// No pool.
    pub const EMPTY: PoolSet = PoolSet(0);

    /// Whether `p` is in the set.
    pub fn contains(self, p: Pool) -> bool {
        self.0 & (1 << p.index()) != 0
    }
    /// Adds `p` to the set.
    pub fn insert(&mut self, p: Pool) {
        self.0 |= 1 << p.index();
    }
    /// Whether every pool is in the set.
    pub fn is_all(self) -> bool {
        self == Self::ALL
    }
    /// Whether no pool is in the set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// How many pools are in the set.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }
    /// The pools in the set, in index order.
    pub fn iter(self) -> impl Iterator<Item = Pool> {
        Pool::all().filter(move |p| self.contains(*p))
    }
    /// The raw bits (bit `i` = pool with index `i`), for storage and SQL.
    pub fn bits(self) -> u32 {
        self.0
    }
}

impl FromIterator<Pool> for PoolSet {
    fn from_iter<I: IntoIterator<Item = Pool>>(iter: I) -> Self {
        let mut s = PoolSet::EMPTY;
        for p in iter {
            s.insert(p);
        }
        s
    }
}

impl fmt::Display for PoolSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_all() {
            return f.write_str("*");
        }
        for p in self.iter() {
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// `["*"]` for all pools, otherwise the pool names in order (`["A", "-"]`).
impl Serialize for PoolSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        if self.is_all() {
            let mut seq = s.serialize_seq(Some(1))?;
            seq.serialize_element("*")?;
            return seq.end();
        }
        let mut seq = s.serialize_seq(Some(self.len()))?;
        for p in self.iter() {
            seq.serialize_element(&p)?;
        }
        seq.end()
    }
}

/// One SMTP worker after `x*` expansion (WRK-1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerSpec {
    /// 1..=N in line order after expansion.
    pub id: u32,
    /// The `n` of the `SMTP_FORWARD_n` line it came from.
    pub source_n: u32,
    /// The host it delivers to inside its windows.
    pub primary: HostPort,
    /// The host it delivers to outside its windows, if any (WRK-5).
    pub failover: Option<HostPort>,
    /// Empty: open all day.
    pub windows: Vec<Window>,
    /// The pools whose copies it claims.
    pub pools: PoolSet,
}

/// SMTP_RATE_LIMIT resolved to bits per second (RATE-1, RATE-4).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RateLimits {
    /// `None`: no overall limit.
    pub overall_bps: Option<u64>,
    /// Pools with a limit of their own; every other pool is limited only by the overall one.
    pub pools: BTreeMap<Pool, u64>,
}

impl RateLimits {
    /// Whether no limit is set at all.
    pub fn is_unlimited(&self) -> bool {
        self.overall_bps.is_none() && self.pools.is_empty()
    }
}

/// `Delivery-Pool= x,y` / `DEFAULT_LIST_POOL=x y` (POOL-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct DeliveryPools {
    /// Pool for list postings.
    pub postings: Pool,
    /// Pool for administrative mail about the list.
    pub admin: Pool,
}

/// One DIST_FORWARD entry; `SELF` is the primary (DIST-1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DistEntry {
    /// The host name, or `SELF` for the primary.
    pub host: String,
    /// Its share of the distribution.
    pub weight: u32,
}

/// `DIST_BACKGROUND_POOL_PRIORITY`, highest first; `*` expanded to the unlisted pools in order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct PoolPriority(pub Vec<Pool>);

/// Severity of a diagnostic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The file cannot be used.
    Error,
    /// The file can be used, but something deserves a look.
    Warning,
}

/// One finding about a configuration file, with its place.
/// Displays as `FILE:LINE:COLUMN: error: <what is wrong>, expected <what would be right>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The file, as given.
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong.
    pub message: String,
    /// What would be right, when there is one thing to say.
    pub expected: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        // Messages quote the file: whatever it holds is shown escaped, never sent raw to a terminal.
        let esc = crate::text::escape_controls;
        write!(
            f,
            "{}:{}:{}: {sev}: {}",
            esc(&self.file),
            self.line,
            self.column,
            esc(&self.message)
        )?;
        if let Some(e) = &self.expected {
            write!(f, ", expected {}", esc(e))?;
        }
        Ok(())
    }
}

/// MAXBSMTP when unset (COPY-1).
pub const DEFAULT_MAX_BSMTP: u32 = 100;

/// The whole resolved site configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SiteConfig {
    /// The file it was read from, as given.
    pub source: String,
    /// NODE: this server's name, if set.
    pub node: Option<String>,
    /// SMTP_FORWARD: the synchronous path (FWD-1, FWD-3).
    pub sync_forward: Option<HostPort>,
    /// SMTP_FORWARD_n after `x*` expansion; empty means "synchronous only".
    pub workers: Vec<WorkerSpec>,
    /// DEFAULT_LIST_POOL: the pools of list postings and of list admin mail (POOL-3).
    pub default_list_pool: DeliveryPools,
    /// DEFAULT_DIST_POOL (POOL-3), the default pool of DISTRIBUTE jobs.
    pub default_dist_pool: Pool,
    /// MAXBSMTP: the most recipients in one copy of a job.
    pub max_bsmtp: u32,
    /// SORT_RECIPIENTS 0/1/2 (COPY-2).
    pub sort_recipients: u8,
    /// SMTP_RATE_LIMIT, resolved.
    pub rate_limits: RateLimits,
    /// Empty when DIST_FORWARD is unset.
    pub dist_forward: Vec<DistEntry>,
    /// DIST_FORWARD_THRESHOLD (DIST-3): a job of fewer recipients is not shared out; 0: unset.
    pub dist_forward_threshold: u32,
    /// DIST_FORWARD_MINSIZE (DIST-3): no node's share of a job is smaller; 0: unset.
    pub dist_forward_minsize: u32,
    /// DIST_BACKGROUND_POOL_PRIORITY, if set.
    pub dist_background_pool_priority: Option<PoolPriority>,
    /// Keywords read but without behaviour here (DIST-3, CFG-4), with their raw values.
    pub passive: BTreeMap<String, String>,
    /// Warnings found while reading (errors never produce a `SiteConfig`).
    pub warnings: Vec<Diagnostic>,
}

impl SiteConfig {
    /// Pools served by no worker (empty when there are no workers: then everything is synchronous).
    pub fn unserved_pools(&self) -> PoolSet {
        if self.workers.is_empty() {
            return PoolSet::EMPTY;
        }
        let served = self
            .workers
            .iter()
            .fold(0u32, |acc, w| acc | w.pools.bits());
        PoolSet(PoolSet::ALL.bits() & !served)
    }
}
