//! A virtual topology: a SITE.CFG, in-process `mock_mta::MockMta`s behind a `MemoryConnector`
//! (host names mapped to mock configurations; hosts not listed refuse connections), a spool in a
//! temporary directory, a `VirtualClock`, and the engine on the test's (usually paused) runtime.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jiff::civil::DateTime;
use mock_mta::{MockConfig, MockMta};
use smtpw_clock::{SharedClock, VirtualClock};
use smtpw_engine::config::{HostPort, Pool, SiteConfig};
use smtpw_engine::engine::{Engine, EngineOptions, RunSummary};
use smtpw_engine::ledger::{read_ledger, LedgerLine};
use smtpw_engine::net::MemoryConnector;
use smtpw_engine::spool::{QueueStats, Spool, SpoolOptions, SqliteSpool};

use crate::assert::counts;
use crate::workload::{message, MAIL_FROM};
use crate::{or_panic, Failure};

/// A topology (see the module's documentation).
pub struct Topology {
    pub dir: tempfile::TempDir,
    pub clock_handle: Arc<VirtualClock>,
    pub clock: SharedClock,
    pub connector: Arc<MemoryConnector>,
    /// "HOST:PORT" -> mock.
    pub mocks: BTreeMap<String, MockMta>,
    pub config: SiteConfig,
    pub spool: Arc<SqliteSpool>,
}

/// Parses a test's SITE.CFG, or panics with every error in it.
pub fn site(text: &str) -> SiteConfig {
    match smtpw_engine::config::parse_str(text, "SITE.CFG") {
        Ok(c) => c,
        Err(e) => panic!("bad test SITE.CFG:\n{text}\n{e}"),
    }
}

/// "HOST:PORT" as a [`HostPort`].
pub fn host_port(hp: &str) -> HostPort {
    let (host, port) = hp
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("HOST:PORT expected, got {hp:?}"));
    let port = port
        .parse()
        .unwrap_or_else(|_| panic!("a port number expected in {hp:?}"));
    HostPort::new(host, port)
}

/// Engine options for tests: quick ingest and polling.
pub fn fast_options() -> EngineOptions {
    EngineOptions {
        ingest_interval: Duration::from_millis(50),
        idle_poll: Duration::from_millis(200),
        ..EngineOptions::default()
    }
}

/// [`fast_options`] with settings giving `relay` to the host `host` (as written in SITE.CFG):
/// its TLS mode, trust anchors and AUTH (`[relays."host"]` of smtpw.toml).
pub fn options_with_relay(
    host: &str,
    relay: smtpw_engine::settings::RelaySettings,
) -> EngineOptions {
    let mut relays = smtpw_engine::settings::Relays::default();
    relays.by_key.insert(host.to_ascii_lowercase(), relay);
    EngineOptions {
        settings: smtpw_engine::settings::Settings {
            relays,
            ..smtpw_engine::settings::Settings::default()
        },
        ..fast_options()
    }
}

/// A mock that behaves like IIS with a latency after the final dot (so that copies take time
/// and workers run side by side).
pub fn iis_with_dot_latency(ms: u64) -> MockConfig {
    let mut c = MockConfig::iis();
    c.faults.command_latency_ms.insert("DOT".into(), ms);
    c
}

/// A moment of the test day (2026-11-22, UTC = the clocks' local time).
pub fn at(h: i8, m: i8, s: i8) -> jiff::Timestamp {
    jiff::civil::date(2026, 11, 22)
        .at(h, m, s, 0)
        .to_zoned(jiff::tz::TimeZone::UTC)
        .expect("valid time")
        .timestamp()
}

/// Polls `cond` every `every` (virtual or real time) until it holds: how long that took, or
/// `Err` with the time waited once `limit` has passed.
pub async fn poll(
    limit: Duration,
    every: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<Duration, Duration> {
    let t0 = tokio::time::Instant::now();
    loop {
        if cond() {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() >= limit {
            return Err(t0.elapsed());
        }
        tokio::time::sleep(every).await;
    }
}

/// Polls `cond` every 50 ms (virtual or real) until it holds; panics after `limit`.
pub async fn wait_for(what: &str, limit: Duration, cond: impl FnMut() -> bool) {
    if poll(limit, Duration::from_millis(50), cond).await.is_err() {
        panic!("timed out after {limit:?} waiting for {what}");
    }
}

impl Topology {
    /// `hosts`: "HOST:PORT" -> mock configuration.
    pub fn new(cfg: &str, start: DateTime, hosts: &[(&str, MockConfig)]) -> Self {
        Self::with_options(cfg, start, hosts, |_| {})
    }

    /// [`Topology::new`] with the spool's options (from SITE.CFG) changed by `tweak`.
    pub fn with_options(
        cfg: &str,
        start: DateTime,
        hosts: &[(&str, MockConfig)],
        tweak: impl FnOnce(&mut SpoolOptions),
    ) -> Self {
        Self::with_options_in(None, cfg, start, hosts, tweak)
    }

    /// [`Topology::with_options`] with the spool directory made inside `parent` (e.g. a small
    /// file system), instead of the system's temporary directory.
    pub fn with_options_in(
        parent: Option<&Path>,
        cfg: &str,
        start: DateTime,
        hosts: &[(&str, MockConfig)],
        tweak: impl FnOnce(&mut SpoolOptions),
    ) -> Self {
        let config = site(cfg);
        let (clock_handle, clock) = VirtualClock::at_utc(start).shared();
        let connector = Arc::new(MemoryConnector::new());
        let mut mocks = BTreeMap::new();
        for (i, (hp, mc)) in hosts.iter().enumerate() {
            let mta = MockMta::try_new(mc.clone(), clock.clone())
                .unwrap_or_else(|e| panic!("a mock for {hp}: {e}"));
            let m = mta.clone();
            let peer = SocketAddr::from(([127, 0, 0, (i + 1).min(250) as u8], 40000));
            connector.route(host_port(hp), move |stream| {
                if m.is_refusing() {
                    return Err(std::io::ErrorKind::ConnectionRefused.into());
                }
                let m = m.clone();
                tokio::spawn(async move { m.serve_stream(stream, peer).await });
                Ok(())
            });
            mocks.insert((*hp).to_string(), mta);
        }
        let dir = match parent {
            Some(p) => tempfile::tempdir_in(p),
            None => tempfile::tempdir(),
        }
        .expect("a temporary directory");
        let mut opts = SpoolOptions::from_site(&config);
        tweak(&mut opts);
        let spool = Arc::new(
            SqliteSpool::open(dir.path(), opts, clock.clone())
                .unwrap_or_else(|e| panic!("the spool to open: {e}")),
        );
        Self {
            dir,
            clock_handle,
            clock,
            connector,
            mocks,
            config,
            spool,
        }
    }

    /// Drop this spool (every other holder must be gone: engines included) and open it again
    /// from its directory, as a restarted process would.
    pub fn reopen(self) -> Self {
        let opts = self.spool.options().clone();
        let spool = match Arc::try_unwrap(self.spool) {
            Ok(s) => s,
            Err(_) => panic!("the spool is still shared (an engine still alive?)"),
        };
        drop(spool);
        let spool = SqliteSpool::open(self.dir.path(), opts, self.clock.clone()).expect("reopen");
        Topology {
            spool: Arc::new(spool),
            ..self
        }
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Submit a job of `n` recipients named `user{i}@{domain}` (a message of about `size` bytes).
    pub fn submit_n(&self, pool: Option<char>, n: usize, domain: &str, size: usize) -> PathBuf {
        let rcpts = (0..n).map(|i| format!("user{i}@{domain}"));
        self.submit(pool, rcpts, size)
    }

    /// Submit one job (one message of about `size` bytes) for these recipients.
    pub fn submit(
        &self,
        pool: Option<char>,
        rcpts: impl Iterator<Item = String>,
        size: usize,
    ) -> PathBuf {
        let msg = message(size);
        smtpw_engine::spool::submit(
            self.dir.path(),
            MAIL_FROM,
            pool.and_then(Pool::from_char),
            rcpts,
            msg.as_bytes(),
        )
        .expect("submit")
    }

    pub fn engine(&self, opts: EngineOptions) -> Arc<Engine<SqliteSpool>> {
        Arc::new(
            Engine::builder(self.config.clone(), self.spool.clone(), self.spool_dir())
                .connector(self.connector.clone())
                .clock(self.clock.clone())
                .options(opts)
                .build(),
        )
    }

    /// Start the engine in a task; stop it with `engine.shutdown().cancel()` and await the handle.
    pub fn spawn(
        &self,
        opts: EngineOptions,
    ) -> (
        Arc<Engine<SqliteSpool>>,
        tokio::task::JoinHandle<RunSummary>,
    ) {
        let engine = self.engine(opts);
        let e = engine.clone();
        let handle = tokio::spawn(async move { e.run().await });
        (engine, handle)
    }

    /// Starts an engine that runs until [`Running::stop`].
    pub fn start(&self, opts: EngineOptions) -> Running {
        let (engine, task) = self.spawn(opts);
        Running { engine, task }
    }

    /// Runs an engine with `until_empty` until the queue is empty, within `limit` (of virtual
    /// time, on a paused runtime); past it the engine is stopped and this fails.
    pub async fn try_run_until_empty(
        &self,
        opts: EngineOptions,
        limit: Duration,
    ) -> Result<RunSummary, Failure> {
        let engine = self.engine(EngineOptions {
            until_empty: true,
            ..opts
        });
        match tokio::time::timeout(limit, engine.run()).await {
            Ok(s) => Ok(s),
            Err(_) => {
                engine.shutdown().cancel();
                Err(Failure::new(
                    format!(
                        "the engine to empty the queue within {} s (virtual)",
                        limit.as_secs()
                    ),
                    format!(
                        "{} copies still queued; {:?}",
                        self.spool.queued_copies(),
                        engine.summary()
                    ),
                ))
            }
        }
    }

    /// [`Topology::try_run_until_empty`] with [`fast_options`]; panics past `limit`.
    pub async fn run_until_empty(&self, limit: Duration) -> RunSummary {
        or_panic(self.try_run_until_empty(fast_options(), limit).await)
    }

    /// Polls `cond` every 100 ms (of virtual time) until it holds: how long that took, or a
    /// failure after `limit`.
    pub async fn try_wait_for(
        &self,
        what: &str,
        limit: Duration,
        mut cond: impl FnMut(&Self) -> bool,
    ) -> Result<Duration, Failure> {
        poll(limit, Duration::from_millis(100), || cond(self))
            .await
            .map_err(|waited| {
                Failure::new(
                    format!("{what} within {} s (virtual)", limit.as_secs()),
                    format!(
                        "not after {} s; {} copies queued",
                        waited.as_secs(),
                        self.spool.queued_copies()
                    ),
                )
            })
    }

    pub fn mock(&self, hp: &str) -> &MockMta {
        self.mocks
            .get(hp)
            .unwrap_or_else(|| panic!("no mock named {hp} in the topology"))
    }

    /// The lines of the ledger in its default place (`SPOOL/ledger.jsonl`), in order, or a
    /// failure when it cannot be read (it does not exist before the first outcome).
    pub fn try_ledger(&self) -> Result<Vec<LedgerLine>, Failure> {
        let path = self.dir.path().join(smtpw_engine::spool::LEDGER_FILE);
        read_ledger(&path).map(|it| it.collect()).map_err(|e| {
            Failure::new(
                format!("the ledger {} to be readable", path.display()),
                e.to_string(),
            )
        })
    }

    /// [`Topology::try_ledger`]; panics when it cannot be read.
    pub fn ledger(&self) -> Vec<LedgerLine> {
        or_panic(self.try_ledger())
    }

    /// The last ledger line of each recipient.
    pub fn final_outcomes(&self) -> BTreeMap<String, LedgerLine> {
        let mut m = BTreeMap::new();
        for l in self.ledger() {
            m.insert(l.rcpt.clone(), l);
        }
        m
    }

    pub async fn stats(&self) -> QueueStats {
        self.spool
            .stats()
            .await
            .unwrap_or_else(|e| panic!("the spool's statistics: {e}"))
    }

    /// Every recipient delivered across all mocks, with repeats.
    pub fn delivered_everywhere(&self) -> Vec<String> {
        self.mocks
            .values()
            .flat_map(|m| m.journal().delivered_recipients())
            .collect()
    }

    /// From now on, every byte smtpw sends to the mock `hp` is also recorded in the returned
    /// buffer (a tap between the two ends of the in-memory connection): what crossed the
    /// "network", to show what was or was not sent in clear.
    pub fn capture_client_bytes(&self, hp: &str) -> Arc<std::sync::Mutex<Vec<u8>>> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let m = self.mock(hp).clone();
        let idx = self.mocks.keys().position(|k| k == hp).unwrap_or(0);
        let peer = SocketAddr::from(([127, 0, 0, (idx + 1).min(250) as u8], 40000));
        let rec = seen.clone();
        self.connector.route(host_port(hp), move |client_side| {
            if m.is_refusing() {
                return Err(std::io::ErrorKind::ConnectionRefused.into());
            }
            let (tap, server_side) = tokio::io::duplex(64 * 1024);
            let m = m.clone();
            tokio::spawn(async move { m.serve_stream(server_side, peer).await });
            let rec = rec.clone();
            tokio::spawn(async move {
                let (mut cr, mut cw) = tokio::io::split(client_side);
                let (mut tr, mut tw) = tokio::io::split(tap);
                let up = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                rec.lock()
                                    .expect("capture lock")
                                    .extend_from_slice(&buf[..n]);
                                if tw.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = tw.shutdown().await;
                };
                let down = async {
                    let _ = tokio::io::copy(&mut tr, &mut cw).await;
                    let _ = cw.shutdown().await;
                };
                tokio::join!(up, down);
            });
            Ok(())
        });
        seen
    }

    /// Recipients delivered per address, across all mocks.
    pub fn delivered_counts(&self) -> BTreeMap<String, u32> {
        counts(self.delivered_everywhere())
    }
}

/// An engine running in the background.
pub struct Running {
    pub engine: Arc<Engine<SqliteSpool>>,
    task: tokio::task::JoinHandle<RunSummary>,
}

impl Running {
    /// Stops it (transactions in flight finish) and returns its summary.
    pub async fn stop(self) -> Result<RunSummary, Failure> {
        self.engine.shutdown().cancel();
        match tokio::time::timeout(Duration::from_secs(3600), self.task).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(Failure::new("the engine to stop", e.to_string())),
            Err(_) => Err(Failure::new(
                "the engine to stop within a virtual hour of its shutdown",
                "it was still running",
            )),
        }
    }
}
