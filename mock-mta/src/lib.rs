//! mock-mta: an emulation of the Microsoft IIS SMTP service (IIS-1 to IIS-6, TXN-1, IIS-1) with real
//! limits, deterministic faults, a journal to assert on, the IIS W3C log, and time from an
//! injected clock.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use mock_mta::{MockConfig, MockMta};
//! let mta = MockMta::new(MockConfig::iis(), smtpw_clock::SystemClock::shared());
//! let server = mta.listen("127.0.0.1:0".parse().unwrap()).await?;
//! // ... point a client at server.local_addr() ...
//! let journal = mta.journal();
//! println!("{} messages", journal.accepted_transactions().len());
//! server.shutdown().await;
//! # Ok(()) }
//! ```

pub mod faults;
pub mod journal;
pub mod profile;
pub mod server;
pub mod session;
pub mod tls;
pub mod w3c;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use smtpw_clock::SharedClock;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, Notify};

pub use faults::{Faults, RandomFaults, RcptRule, ScheduleEntry, ScheduledAction};
pub use journal::{Journal, RcptRecord, SessionRecord, TransactionRecord};
pub use profile::{IpNet, OverCap, OversizeData, Profile};
pub use server::MockServer;
pub use session::{dot_stuff, Unstuffer, DELAY_LINE_WRITES};
pub use tls::{AuthConfig, TestCertificates, TlsConfig};
pub use w3c::{W3cConfig, W3cFieldSet};

/// Everything a mock is configured with. Deserializes from TOML (every field optional; the
/// defaults are the IIS profile with no faults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MockConfig {
    /// The server's FQDN, used in the banner, EHLO, QUIT and queue ids.
    pub hostname: String,
    /// Limits.
    pub profile: Profile,
    /// Faults.
    pub faults: Faults,
    /// Write the journal as JSON lines to this file (appended, flushed per line).
    pub journal_file: Option<PathBuf>,
    /// Keep the journal in memory for [`MockMta::journal`] (default true; a long-running binary
    /// may turn it off).
    pub keep_journal: bool,
    /// Keep message bodies in the journal (default false).
    pub keep_bodies: bool,
    /// Write the IIS W3C log.
    pub w3c: Option<W3cConfig>,
    /// STARTTLS, implicit TLS.
    pub tls: TlsConfig,
    /// SMTP AUTH.
    pub auth: AuthConfig,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self::iis()
    }
}

impl MockConfig {
    /// IIS 6.0 defaults, no faults.
    pub fn iis() -> Self {
        Self::with_profile(Profile::iis())
    }
    /// Windows XP (10 connections), no faults.
    pub fn xp() -> Self {
        Self::with_profile(Profile::xp())
    }
    /// A profile, no faults.
    pub fn with_profile(profile: Profile) -> Self {
        Self {
            hostname: "mock-iis.example.org".into(),
            profile,
            faults: Faults::default(),
            journal_file: None,
            keep_journal: true,
            keep_bodies: false,
            w3c: None,
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
        }
    }

    /// Read a TOML configuration over a base (the file's fields replace the base's, tables
    /// merge key by key).
    pub fn from_toml_over(base: &MockConfig, text: &str) -> Result<MockConfig, MockError> {
        let mut merged =
            toml::Table::try_from(base).map_err(|e| MockError::Config(e.to_string()))?;
        let over: toml::Table =
            toml::from_str(text).map_err(|e| MockError::Config(e.to_string()))?;
        merge(&mut merged, over);
        let mut c: MockConfig = toml::Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| MockError::Config(e.to_string()))?;
        c.profile.normalize();
        Ok(c)
    }

    /// Check the configuration (relay entries, limits).
    pub fn validate(&self) -> Result<(), MockError> {
        for r in &self.profile.relay_allow {
            if IpNet::parse(r).is_none() {
                return Err(MockError::Config(format!("bad relay_allow entry {r:?}")));
            }
        }
        if let (Some(m), Some(s)) = (self.profile.max_message_kb, self.profile.max_session_kb) {
            if s < m {
                return Err(MockError::Config(
                    "max_session_kb must be at least max_message_kb".into(),
                ));
            }
        }
        if ![452, 552].contains(&self.profile.too_many_code) {
            return Err(MockError::Config("too_many_code must be 452 or 552".into()));
        }
        if self.profile.max_connections == Some(0) {
            return Err(MockError::Config(
                "max_connections must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum MockError {
    /// A configuration problem.
    #[error("mock-mta configuration: {0}")]
    Config(String),
    /// A file could not be opened.
    #[error("mock-mta: {path}: {source}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Counters (a snapshot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Sessions admitted (under the connection cap).
    pub sessions: u64,
    /// Connections closed at once because of the cap.
    pub over_cap: u64,
    /// Connections refused (fault or scheduled outage).
    pub refused: u64,
    /// Transactions ended (accepted or not).
    pub transactions: u64,
    /// Messages accepted (250 after the dot).
    pub messages: u64,
    /// Bytes of accepted messages.
    pub bytes: u64,
    /// RCPTs answered 2xx.
    pub recipients_accepted: u64,
    /// RCPTs answered 4xx/5xx.
    pub recipients_rejected: u64,
    /// Connections open right now.
    pub current_connections: u64,
    /// The most connections open at once.
    pub peak_connections: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub sessions: AtomicU64,
    pub over_cap: AtomicU64,
    pub refused: AtomicU64,
    pub transactions: AtomicU64,
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
    pub rcpt_accepted: AtomicU64,
    pub rcpt_rejected: AtomicU64,
    pub current: AtomicU64,
    pub peak: AtomicU64,
}

/// State shared by every session of one mock.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: MockConfig,
    pub faults: RwLock<Arc<Faults>>,
    pub relay: Vec<IpNet>,
    pub clock: SharedClock,
    pub journal: journal::JournalSink,
    pub w3c: Option<w3c::W3cLog>,
    pub stats: Counters,
    pub next_session: AtomicU64,
    pub notify: Notify,
    pub shutdown: watch::Sender<bool>,
    pub computer_name: String,
    pub tls: Option<tls::TlsServer>,
}

/// Decrements the open-connection count when a session ends.
pub(crate) struct ConnGuard<'a>(&'a Shared);

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        self.0.stats.current.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    pub fn faults(&self) -> Arc<Faults> {
        self.faults
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Take a connection slot, or `None` at the cap.
    pub fn admit(&self) -> Option<ConnGuard<'_>> {
        let cap = self.config.profile.max_connections.map(u64::from);
        let prev = self
            .stats
            .current
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| {
                if cap.is_some_and(|m| c >= m) {
                    None
                } else {
                    Some(c + 1)
                }
            })
            .ok()?;
        self.stats.peak.fetch_max(prev + 1, Ordering::SeqCst);
        Some(ConnGuard(self))
    }
}

/// The mock: cheap to clone (an `Arc` inside); every clone is the same server.
#[derive(Debug, Clone)]
pub struct MockMta {
    inner: Arc<Shared>,
}

impl MockMta {
    /// A mock with this configuration and clock. A journal file or W3C directory that cannot be
    /// opened is logged and skipped; use [`MockMta::try_new`] to get the error instead.
    pub fn new(config: MockConfig, clock: SharedClock) -> Self {
        match Self::build(config.clone(), clock.clone(), true) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!("{e}; going on without files");
                Self::from_parts(
                    config,
                    clock,
                    journal::JournalSink::memory(true),
                    None,
                    None,
                )
            }
        }
    }

    /// As [`MockMta::new`], failing on a bad configuration or a file that cannot be opened.
    pub fn try_new(config: MockConfig, clock: SharedClock) -> Result<Self, MockError> {
        config.validate()?;
        Self::build(config, clock, true)
    }

    fn build(config: MockConfig, clock: SharedClock, files: bool) -> Result<Self, MockError> {
        let io = |p: &Path| {
            let path = p.to_path_buf();
            move |source| MockError::Io { path, source }
        };
        let journal = match (&config.journal_file, files) {
            (Some(p), true) => {
                journal::JournalSink::with_file(config.keep_journal, p).map_err(io(p))?
            }
            _ => journal::JournalSink::memory(config.keep_journal),
        };
        let w3c = match (&config.w3c, files) {
            (Some(c), true) => {
                Some(w3c::W3cLog::new(c.clone(), &config.profile.version).map_err(io(&c.dir))?)
            }
            _ => None,
        };
        let tls = tls::server(&config.tls, &config.hostname)?;
        Ok(Self::from_parts(config, clock, journal, w3c, tls))
    }

    fn from_parts(
        config: MockConfig,
        clock: SharedClock,
        journal: journal::JournalSink,
        w3c: Option<w3c::W3cLog>,
        tls: Option<tls::TlsServer>,
    ) -> Self {
        let relay = config
            .profile
            .relay_allow
            .iter()
            .filter_map(|r| {
                let n = IpNet::parse(r);
                if n.is_none() {
                    tracing::warn!("ignoring bad relay_allow entry {r:?}");
                }
                n
            })
            .collect();
        let computer_name = config
            .hostname
            .split('.')
            .next()
            .unwrap_or("MOCK")
            .to_ascii_uppercase();
        Self {
            inner: Arc::new(Shared {
                faults: RwLock::new(Arc::new(config.faults.clone())),
                relay,
                clock,
                journal,
                w3c,
                stats: Counters::default(),
                next_session: AtomicU64::new(0),
                notify: Notify::new(),
                shutdown: watch::channel(false).0,
                computer_name,
                tls,
                config,
            }),
        }
    }

    /// The configuration it was built with (faults as they were at the start).
    pub fn config(&self) -> &MockConfig {
        &self.inner.config
    }

    /// Run one SMTP session over any stream (in-memory duplex or TCP); returns when it ends.
    /// A refusing mock (see [`MockMta::is_refusing`]) drops the stream at once.
    pub async fn serve_stream<S>(&self, stream: S, peer: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        session::run(self.inner.clone(), stream, peer, None).await;
    }

    /// As [`MockMta::serve_stream`], with the server's own address (for the W3C `s-ip`/`s-port`).
    pub async fn serve_stream_at<S>(&self, stream: S, peer: SocketAddr, local: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        session::run(self.inner.clone(), stream, peer, Some(local)).await;
    }

    /// An in-memory connection: `Err(ConnectionRefused)` while the mock refuses connections,
    /// else the client end of a duplex stream whose server end runs a session in a spawned task.
    /// Must be called inside a tokio runtime.
    pub fn connect_duplex(&self, peer: SocketAddr) -> std::io::Result<tokio::io::DuplexStream> {
        if self.is_refusing() {
            return Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        }
        let (client, server) = tokio::io::duplex(256 * 1024);
        let me = self.clone();
        tokio::spawn(async move { me.serve_stream(server, peer).await });
        Ok(client)
    }

    /// True when, right now (per the clock and the fault schedule), connections are refused.
    pub fn is_refusing(&self) -> bool {
        self.inner
            .faults()
            .active(self.inner.clock.local_time())
            .down
    }

    /// Accept TCP connections on `addr` (port 0 picks one).
    pub async fn listen(&self, addr: SocketAddr) -> std::io::Result<MockServer> {
        server::listen(self.clone(), addr).await
    }

    /// The CA (PEM) a client must trust to verify this mock's certificate (`None` without TLS).
    pub fn ca_pem(&self) -> Option<&str> {
        self.inner.tls.as_ref().map(|t| t.ca_pem.as_str())
    }

    /// A snapshot of the journal.
    pub fn journal(&self) -> Journal {
        self.inner.journal.snapshot()
    }

    /// Forget the in-memory journal (counters stay).
    pub fn clear_journal(&self) {
        self.inner.journal.clear();
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let s = &self.inner.stats;
        Stats {
            sessions: s.sessions.load(Ordering::SeqCst),
            over_cap: s.over_cap.load(Ordering::SeqCst),
            refused: s.refused.load(Ordering::SeqCst),
            transactions: s.transactions.load(Ordering::SeqCst),
            messages: s.messages.load(Ordering::SeqCst),
            bytes: s.bytes.load(Ordering::SeqCst),
            recipients_accepted: s.rcpt_accepted.load(Ordering::SeqCst),
            recipients_rejected: s.rcpt_rejected.load(Ordering::SeqCst),
            current_connections: s.current.load(Ordering::SeqCst),
            peak_connections: s.peak.load(Ordering::SeqCst),
        }
    }

    /// The faults in force (as last set).
    pub fn faults(&self) -> Faults {
        (*self.inner.faults()).clone()
    }

    /// Replace the faults at run time (open sessions see them from their next command).
    pub fn set_faults(&self, faults: Faults) {
        *self
            .inner
            .faults
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(faults);
        self.inner.notify.notify_waiters();
    }

    /// Resolves at the next change (a transaction or session ended, faults set). Create it
    /// before checking the condition you wait for, or use [`MockMta::wait_until`].
    pub fn changed(&self) -> impl Future<Output = ()> + Send + '_ {
        self.inner.notify.notified()
    }

    /// Wait until `cond(stats)` holds (checked at every change; no polling).
    pub async fn wait_until(&self, mut cond: impl FnMut(&Stats) -> bool) {
        loop {
            let n = self.inner.notify.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if cond(&self.stats()) {
                return;
            }
            n.await;
        }
    }

    /// Ask every open session to end (`421` then close) and stop accepting.
    pub fn stop(&self) {
        self.inner.shutdown.send_replace(true);
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner
    }
}
