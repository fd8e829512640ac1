//! A harness for engine tests: a SITE.CFG, in-process mocks behind a MemoryConnector, a spool in
//! a temp dir, a VirtualClock, and the engine running on the test's (usually paused) runtime.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::civil::DateTime;
use mock_mta::{MockConfig, MockMta};
use smtpw::clock::{SharedClock, VirtualClock};
use smtpw::config::{HostPort, Pool, SiteConfig};
use smtpw::engine::{Engine, EngineOptions, RunSummary};
use smtpw::ledger::{read_ledger, LedgerLine};
use smtpw::net::MemoryConnector;
use smtpw::spool::{Spool, SpoolOptions, SqliteSpool};

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub clock_handle: Arc<VirtualClock>,
    pub clock: SharedClock,
    pub connector: Arc<MemoryConnector>,
    pub mocks: BTreeMap<String, MockMta>,
    pub config: SiteConfig,
    pub spool: Arc<SqliteSpool>,
}

pub fn site(text: &str) -> SiteConfig {
    match smtpw::config::parse_str(text, "SITE.CFG") {
        Ok(c) => c,
        Err(e) => panic!("bad test config:\n{e}"),
    }
}

impl Harness {
    /// `hosts`: "HOST:PORT" -> mock config. Hosts not listed refuse connections.
    pub fn new(cfg: &str, start: DateTime, hosts: &[(&str, MockConfig)]) -> Self {
        Self::with_options(cfg, start, hosts, |_| {})
    }

    pub fn with_options(
        cfg: &str,
        start: DateTime,
        hosts: &[(&str, MockConfig)],
        tweak: impl FnOnce(&mut SpoolOptions),
    ) -> Self {
        Self::with_options_in(None, cfg, start, hosts, tweak)
    }

    /// [`Harness::with_options`] with the spool directory made inside `parent` (e.g. a small
    /// file system), instead of the system's temporary directory.
    pub fn with_options_in(
        parent: Option<&std::path::Path>,
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
            let mta = MockMta::new(mc.clone(), clock.clone());
            let (host, port) = hp.rsplit_once(':').expect("HOST:PORT");
            let target = HostPort::new(host, port.parse().expect("port"));
            let m = mta.clone();
            let peer: SocketAddr = format!("127.0.0.{}:40000", i + 1).parse().expect("addr");
            connector.route(target, move |stream| {
                if m.is_refusing() {
                    return Err(std::io::ErrorKind::ConnectionRefused.into());
                }
                let m = m.clone();
                tokio::spawn(async move { m.serve_stream(stream, peer).await });
                Ok(())
            });
            mocks.insert(hp.to_string(), mta);
        }
        let dir = match parent {
            Some(p) => tempfile::tempdir_in(p),
            None => tempfile::tempdir(),
        }
        .expect("tempdir");
        let mut opts = SpoolOptions {
            max_bsmtp: config.max_bsmtp,
            sort_recipients: config.sort_recipients,
            default_pool: config.default_list_pool.postings,
            ..SpoolOptions::default()
        };
        tweak(&mut opts);
        let spool = Arc::new(SqliteSpool::open(dir.path(), opts, clock.clone()).expect("spool"));
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
        let Harness {
            dir,
            clock_handle,
            clock,
            connector,
            mocks,
            config,
            spool,
        } = self;
        let opts = spool.options().clone();
        let spool = match Arc::try_unwrap(spool) {
            Ok(s) => s,
            Err(_) => panic!("the spool is still shared (an engine still alive?)"),
        };
        drop(spool);
        let spool = Arc::new(SqliteSpool::open(dir.path(), opts, clock.clone()).expect("reopen"));
        Harness {
            dir,
            clock_handle,
            clock,
            connector,
            mocks,
            config,
            spool,
        }
    }

    /// Start the engine in a task; stop it with `engine.shutdown.cancel()` and await the handle.
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

    /// Recipients delivered per address, across all mocks.
    pub fn delivered_counts(&self) -> BTreeMap<String, u32> {
        let mut seen = BTreeMap::new();
        for r in self.delivered_everywhere() {
            *seen.entry(r).or_default() += 1;
        }
        seen
    }

    /// The last ledger line of each recipient.
    pub fn final_outcomes(&self) -> BTreeMap<String, LedgerLine> {
        let mut m = BTreeMap::new();
        for l in self.ledger() {
            m.insert(l.rcpt.clone(), l);
        }
        m
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Submit a job of `rcpts` recipients named `user{i}@{domain}`.
    pub fn submit_n(&self, pool: Option<char>, n: usize, domain: &str, size: usize) -> PathBuf {
        let rcpts = (0..n).map(|i| format!("user{i}@{domain}"));
        self.submit(pool, rcpts, size)
    }

    pub fn submit(
        &self,
        pool: Option<char>,
        rcpts: impl Iterator<Item = String>,
        size: usize,
    ) -> PathBuf {
        let msg = message(size);
        smtpw::spool::submit(
            self.dir.path(),
            "owner-list@lists.example.org",
            pool.and_then(Pool::from_char),
            rcpts,
            msg.as_bytes(),
        )
        .expect("submit")
    }

    pub fn engine(&self, opts: EngineOptions) -> Arc<Engine<SqliteSpool>> {
        Arc::new(Engine::new(
            self.config.clone(),
            self.spool.clone(),
            self.spool_dir(),
            self.connector.clone(),
            self.clock.clone(),
            opts,
        ))
    }

    /// Run the engine until the queue is empty, with a (virtual) time limit.
    pub async fn run_until_empty(&self, limit: Duration) -> RunSummary {
        let engine = self.engine(EngineOptions {
            until_empty: true,
            ..fast_options()
        });
        match tokio::time::timeout(limit, engine.run()).await {
            Ok(s) => s,
            Err(_) => panic!(
                "engine did not empty the queue within {limit:?}; queued copies {}",
                self.spool.queued_copies()
            ),
        }
    }

    pub fn mock(&self, hp: &str) -> &MockMta {
        &self.mocks[hp]
    }

    pub fn ledger(&self) -> Vec<LedgerLine> {
        read_ledger(&self.dir.path().join("ledger.jsonl"))
            .expect("ledger")
            .collect()
    }

    /// Every recipient delivered across all mocks, with repeats.
    pub fn delivered_everywhere(&self) -> Vec<String> {
        let mut all = Vec::new();
        for m in self.mocks.values() {
            all.extend(m.journal().delivered_recipients());
        }
        all
    }
}

/// A moment of the test day (2026-11-22, UTC = the clocks' local time).
pub fn at(h: i8, m: i8, s: i8) -> jiff::Timestamp {
    jiff::civil::date(2026, 11, 22)
        .at(h, m, s, 0)
        .to_zoned(jiff::tz::TimeZone::UTC)
        .expect("valid time")
        .timestamp()
}

/// Poll `cond` every 50 ms (virtual or real) until it holds; panic after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let r = tokio::time::timeout(limit, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if r.is_err() {
        panic!("timed out after {limit:?} waiting for {what}");
    }
}

/// Captures `tracing` output of the current thread (paused-time tests run every task on it).
#[derive(Clone, Default)]
pub struct LogCapture(Arc<std::sync::Mutex<Vec<u8>>>);

impl LogCapture {
    /// Install for the current thread until the guard drops.
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        let sub = tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_default(sub)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log lock")).into_owned()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Engine options for tests: quick ingest and polling.
pub fn fast_options() -> EngineOptions {
    EngineOptions {
        ingest_interval: Duration::from_millis(50),
        idle_poll: Duration::from_millis(200),
        ..EngineOptions::default()
    }
}

/// An RFC 822 message of about `size` bytes.
pub fn message(size: usize) -> String {
    let mut m = String::from(
        "From: owner-list@lists.example.org\r\nTo: list@lists.example.org\r\nSubject: test\r\n\r\n",
    );
    let line = "The quick brown fox jumps over the lazy dog. 0123456789 abcdefghij\r\n";
    while m.len() + line.len() <= size.max(m.len() + line.len()) {
        m.push_str(line);
        if m.len() >= size {
            break;
        }
    }
    m
}
