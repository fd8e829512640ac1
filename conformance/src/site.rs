//! Topologies for the engine scenarios.
//!
//! [`Topology`] (virtual mode): a SITE.CFG, in-process `mock_mta::MockMta`s behind a
//! `MemoryConnector` (host names mapped to mock configurations; hosts not listed refuse
//! connections), a spool in a temporary directory, a `VirtualClock`, and the engine on the
//! scenario's paused-time runtime. Every helper returns a [`Failure`] instead of panicking.
//!
//! [`MockProcess`] and [`read_journal_file`] (real-time mode): a `mock-mta` binary listening on
//! a port it picks itself (read back from its start-up line), and its JSON-lines journal.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jiff::civil::DateTime;
use mock_mta::{MockConfig, MockMta};
use smtpw::config::{HostPort, Pool, SiteConfig};
use smtpw::engine::{Engine, EngineOptions, RunSummary};
use smtpw::ledger::{read_ledger, LedgerLine};
use smtpw::net::MemoryConnector;
use smtpw::spool::{QueueStats, Spool, SpoolOptions, SqliteSpool};
use smtpw_clock::{SharedClock, VirtualClock};
use tokio::io::AsyncReadExt;

use crate::runner::{spawn_process, temp_dir, Failure};

/// The envelope sender of every scenario job.
pub const MAIL_FROM: &str = "owner-list@lists.example.org";

/// A virtual-mode topology.
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

/// Parses a SITE.CFG or says why not.
pub fn site(text: &str) -> Result<SiteConfig, Failure> {
    smtpw::config::parse_str(text, "SITE.CFG")
        .map_err(|e| Failure::new(format!("this SITE.CFG to parse:\n{text}"), e.to_string()))
}

/// Engine options for scenarios: quick ingest and polling.
pub fn fast_options() -> EngineOptions {
    EngineOptions {
        ingest_interval: Duration::from_millis(50),
        idle_poll: Duration::from_millis(200),
        ..EngineOptions::default()
    }
}

/// An RFC 5322 message of at least `size` bytes (CRLF line ends).
pub fn message(size: usize) -> String {
    let mut m = String::from(
        "From: owner-list@lists.example.org\r\nTo: list@lists.example.org\r\nSubject: conformance\r\n\r\n",
    );
    let line = "The quick brown fox jumps over the lazy dog. 0123456789 abcdefghij\r\n";
    while m.len() < size {
        m.push_str(line);
    }
    m
}

/// A mock that behaves like IIS with a latency after the final dot (so that copies take time
/// and workers run side by side).
pub fn iis_with_dot_latency(ms: u64) -> MockConfig {
    let mut c = MockConfig::iis();
    c.faults.command_latency_ms.insert("DOT".into(), ms);
    c
}

impl Topology {
    /// `hosts`: "HOST:PORT" -> mock configuration.
    pub fn new(cfg: &str, start: DateTime, hosts: &[(&str, MockConfig)]) -> Result<Self, Failure> {
        Self::with_spool(cfg, start, hosts, |_| {})
    }

    pub fn with_spool(
        cfg: &str,
        start: DateTime,
        hosts: &[(&str, MockConfig)],
        tweak: impl FnOnce(&mut SpoolOptions),
    ) -> Result<Self, Failure> {
        let config = site(cfg)?;
        let (clock_handle, clock) = VirtualClock::at_utc(start).shared();
        let connector = Arc::new(MemoryConnector::new());
        let mut mocks = BTreeMap::new();
        for (i, (hp, mc)) in hosts.iter().enumerate() {
            let mta = MockMta::try_new(mc.clone(), clock.clone())
                .map_err(|e| Failure::new(format!("a mock for {hp}"), e.to_string()))?;
            let target = host_port(hp)?;
            let m = mta.clone();
            let peer = SocketAddr::from(([127, 0, 0, (i + 1).min(250) as u8], 40000));
            connector.route(target, move |stream| {
                if m.is_refusing() {
                    return Err(std::io::ErrorKind::ConnectionRefused.into());
                }
                let m = m.clone();
                tokio::spawn(async move { m.serve_stream(stream, peer).await });
                Ok(())
            });
            mocks.insert((*hp).to_string(), mta);
        }
        let dir = temp_dir()?;
        let mut opts = SpoolOptions {
            max_bsmtp: config.max_bsmtp,
            sort_recipients: config.sort_recipients,
            default_pool: config.default_list_pool.postings,
            ..SpoolOptions::default()
        };
        tweak(&mut opts);
        let spool = Arc::new(
            SqliteSpool::open(dir.path(), opts, clock.clone())
                .map_err(|e| Failure::new("the spool to open", e.to_string()))?,
        );
        Ok(Self {
            dir,
            clock_handle,
            clock,
            connector,
            mocks,
            config,
            spool,
        })
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Submits one job (one message of about `size` bytes) for these recipients.
    pub fn submit(
        &self,
        pool: Option<char>,
        rcpts: impl Iterator<Item = String>,
        size: usize,
    ) -> Result<(), Failure> {
        let msg = message(size);
        smtpw::spool::submit(
            self.dir.path(),
            MAIL_FROM,
            pool.and_then(Pool::from_char),
            rcpts,
            msg.as_bytes(),
        )
        .map(|_| ())
        .map_err(|e| Failure::new("the job to be submitted", e.to_string()))
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

    /// Runs an engine with `until_empty` until the queue is empty, within `limit` of virtual time.
    pub async fn run_until_empty(
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
                engine.shutdown.cancel();
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

    /// Starts an engine that runs until [`Running::stop`].
    pub fn start(&self, opts: EngineOptions) -> Running {
        let engine = self.engine(opts);
        let e = engine.clone();
        let task = tokio::spawn(async move { e.run().await });
        Running { engine, task }
    }

    pub fn mock(&self, hp: &str) -> Result<&MockMta, Failure> {
        self.mocks
            .get(hp)
            .ok_or_else(|| Failure::new(format!("a mock named {hp}"), "none in the topology"))
    }

    pub fn ledger(&self) -> Result<Vec<LedgerLine>, Failure> {
        let path = self.dir.path().join(smtpw::spool::LEDGER_FILE);
        read_ledger(&path)
            .map(|it| it.collect())
            .map_err(|e| Failure::new("the ledger to be readable", e.to_string()))
    }

    pub async fn stats(&self) -> Result<QueueStats, Failure> {
        self.spool
            .stats()
            .await
            .map_err(|e| Failure::new("the spool's statistics", e.to_string()))
    }

    /// Every recipient delivered across all mocks, with repeats.
    pub fn delivered_everywhere(&self) -> Vec<String> {
        self.mocks
            .values()
            .flat_map(|m| m.journal().delivered_recipients())
            .collect()
    }

    /// Waits (polling every 100 ms of virtual time) until `cond` holds, at most `limit`.
    pub async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        mut cond: impl FnMut(&Self) -> bool,
    ) -> Result<Duration, Failure> {
        let t0 = tokio::time::Instant::now();
        loop {
            if cond(self) {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() >= limit {
                return Err(Failure::new(
                    format!("{what} within {} s (virtual)", limit.as_secs()),
                    format!(
                        "not after {} s; {} copies queued",
                        t0.elapsed().as_secs(),
                        self.spool.queued_copies()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
        self.engine.shutdown.cancel();
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

/// "HOST:PORT" as a [`HostPort`].
pub fn host_port(hp: &str) -> Result<HostPort, Failure> {
    let (host, port) = hp
        .rsplit_once(':')
        .ok_or_else(|| Failure::new("HOST:PORT", hp.to_string()))?;
    let port = port
        .parse()
        .map_err(|_| Failure::new("a port number", hp.to_string()))?;
    Ok(HostPort::new(host, port))
}

/// Counts of each item.
pub fn counts<I: IntoIterator<Item = String>>(items: I) -> BTreeMap<String, u32> {
    let mut m = BTreeMap::new();
    for i in items {
        *m.entry(i).or_insert(0) += 1;
    }
    m
}

/// Every one of `want` delivered exactly once in `got` (and nothing else): Ok, or a failure naming
/// the first few missing, repeated and unexpected addresses.
pub fn exactly_once(want: &[String], got: Vec<String>, where_: &str) -> Result<(), Failure> {
    let seen = counts(got);
    let missing: Vec<&String> = want.iter().filter(|w| !seen.contains_key(*w)).collect();
    let repeated: Vec<(&String, &u32)> = seen.iter().filter(|(_, n)| **n > 1).collect();
    let wanted: std::collections::BTreeSet<&String> = want.iter().collect();
    let extra: Vec<&String> = seen.keys().filter(|k| !wanted.contains(k)).collect();
    if missing.is_empty() && repeated.is_empty() && extra.is_empty() {
        return Ok(());
    }
    Err(Failure::new(
        format!(
            "each of the {} recipients delivered exactly once at {where_}",
            want.len()
        ),
        format!(
            "{} missing (e.g. {:?}), {} delivered more than once (e.g. {:?}), {} unexpected (e.g. {:?})",
            missing.len(),
            missing.iter().take(3).collect::<Vec<_>>(),
            repeated.len(),
            repeated.iter().take(3).collect::<Vec<_>>(),
            extra.len(),
            extra.iter().take(3).collect::<Vec<_>>()
        ),
    ))
}

// ---- real time -------------------------------------------------------------------------------

/// A `mock-mta` process listening on a port of its own choosing on 127.0.0.1, with a journal
/// file. Killed when dropped.
pub struct MockProcess {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    pub journal: PathBuf,
}

impl MockProcess {
    /// Starts `bin --listen 127.0.0.1:0 --journal DIR/NAME.jsonl EXTRA...` and reads the port from
    /// its start-up line ("... listening on 127.0.0.1:PORT ...") on stderr.
    pub async fn start(
        bin: &Path,
        dir: &Path,
        name: &str,
        extra: &[&str],
    ) -> Result<Self, Failure> {
        let journal = dir.join(format!("{name}.jsonl"));
        let j = journal.display().to_string();
        let mut args = vec!["--listen", "127.0.0.1:0", "--journal", j.as_str()];
        args.extend_from_slice(extra);
        let mut child = spawn_process(bin, &args)?;
        let mut stderr = child
            .stderr
            .take()
            .ok_or_else(|| Failure::new("mock-mta's stderr", "not piped"))?;
        let mut buf = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let addr = loop {
            if let Some(a) = listening_addr(&String::from_utf8_lossy(&buf)) {
                break a;
            }
            let mut chunk = [0u8; 1024];
            let n = match tokio::time::timeout_at(deadline, stderr.read(&mut chunk)).await {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(Failure::new("mock-mta's start-up line", e.to_string())),
                Err(_) => {
                    return Err(Failure::new(
                        "mock-mta to say where it listens within 10 s",
                        String::from_utf8_lossy(&buf).into_owned(),
                    ))
                }
            };
            if n == 0 {
                return Err(Failure::new(
                    "mock-mta to start listening",
                    format!("it exited: {}", String::from_utf8_lossy(&buf).trim()),
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        // Keep draining stderr so that the mock never blocks on a full pipe.
        tokio::spawn(async move {
            let mut sink = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            addr,
            journal,
        })
    }

    /// Stops it (SIGKILL; the journal is flushed per line) and reads the journal.
    pub async fn finish(mut self) -> Result<FileJournal, Failure> {
        let _ = self.child.kill().await;
        read_journal_file(&self.journal)
    }
}

fn listening_addr(text: &str) -> Option<SocketAddr> {
    let i = text.find("listening on ")?;
    let rest = &text[i + "listening on ".len()..];
    let end = rest.find(|c: char| c.is_whitespace())?;
    rest[..end].parse().ok()
}

/// A transaction from a journal file.
#[derive(Debug, Clone)]
pub struct FileTransaction {
    pub session: u64,
    pub rcpts: Vec<(String, u16)>,
    pub accepted: bool,
    pub bytes: u64,
}

impl FileTransaction {
    pub fn accepted_rcpts(&self) -> impl Iterator<Item = &String> {
        self.rcpts
            .iter()
            .filter(|(_, c)| (200..300).contains(c))
            .map(|(a, _)| a)
    }
}

/// What a journal file says.
#[derive(Debug, Clone, Default)]
pub struct FileJournal {
    pub transactions: Vec<FileTransaction>,
    /// (time, +1 for a session start / -1 for an end).
    pub session_events: Vec<(jiff::Timestamp, i32)>,
    pub sessions: u64,
}

impl FileJournal {
    pub fn delivered_recipients(&self) -> Vec<String> {
        self.transactions
            .iter()
            .filter(|t| t.accepted)
            .flat_map(|t| t.accepted_rcpts().cloned())
            .collect()
    }
    pub fn accepted(&self) -> impl Iterator<Item = &FileTransaction> {
        self.transactions.iter().filter(|t| t.accepted)
    }
}

/// Reads a mock's JSON-lines journal.
pub fn read_journal_file(path: &Path) -> Result<FileJournal, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::new(format!("the journal {}", path.display()), e.to_string()))?;
    let mut j = FileJournal::default();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            Failure::new(
                format!("JSON on line {} of {}", n + 1, path.display()),
                format!("{e}: {line}"),
            )
        })?;
        let at = |k: &str| -> Result<jiff::Timestamp, Failure> {
            v[k].as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| Failure::new(format!("a time in `{k}`"), line.to_string()))
        };
        match v["kind"].as_str() {
            Some("session-start") => {
                j.sessions += 1;
                j.session_events.push((at("at")?, 1));
            }
            Some("session-end") => j.session_events.push((at("at")?, -1)),
            Some("transaction") => {
                let rcpts = v["rcpts"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|r| {
                                (
                                    r["addr"].as_str().unwrap_or_default().to_string(),
                                    r["code"].as_u64().unwrap_or(0) as u16,
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                j.transactions.push(FileTransaction {
                    session: v["session"].as_u64().unwrap_or(0),
                    rcpts,
                    accepted: v["accepted"].as_bool().unwrap_or(false),
                    bytes: v["bytes"].as_u64().unwrap_or(0),
                });
            }
            _ => {}
        }
    }
    Ok(j)
}

/// The most sessions open at once across several journals (ends sort before starts at the same
/// instant, so back-to-back sessions do not count twice).
pub fn peak_concurrent(journals: &[&FileJournal]) -> i32 {
    let mut ev: Vec<(jiff::Timestamp, i32)> = journals
        .iter()
        .flat_map(|j| j.session_events.iter().copied())
        .collect();
    ev.sort();
    let (mut cur, mut peak) = (0, 0);
    for (_, d) in ev {
        cur += d;
        peak = peak.max(cur);
    }
    peak
}

/// A spool directory with a SITE.CFG for the `smtpw` binary (real-time scenarios).
pub struct ProcessSite {
    pub smtpw: PathBuf,
    pub dir: PathBuf,
    pub cfg: PathBuf,
    pub spool: PathBuf,
    jobs: u32,
}

impl ProcessSite {
    /// Writes `site_cfg` to `dir/SITE.CFG`; the spool is `dir/spool`.
    pub fn new(smtpw: &Path, dir: &Path, site_cfg: &str) -> Result<Self, Failure> {
        let cfg = dir.join("SITE.CFG");
        std::fs::write(&cfg, site_cfg)
            .map_err(|e| Failure::new("to write SITE.CFG", e.to_string()))?;
        Ok(Self {
            smtpw: smtpw.to_path_buf(),
            dir: dir.to_path_buf(),
            cfg,
            spool: dir.join("spool"),
            jobs: 0,
        })
    }

    /// `smtpw submit` of one job (a message of about `size` bytes) for these recipients.
    pub async fn submit(&mut self, rcpts: &[String], size: usize) -> Result<(), Failure> {
        self.submit_to(None, rcpts, size).await
    }

    /// `smtpw submit --pool P` (or the default pool) of one job.
    pub async fn submit_to(
        &mut self,
        pool: Option<char>,
        rcpts: &[String],
        size: usize,
    ) -> Result<(), Failure> {
        self.jobs += 1;
        let rf = self.dir.join(format!("rcpts{}.txt", self.jobs));
        let mf = self.dir.join(format!("message{}.eml", self.jobs));
        std::fs::write(&rf, rcpts.join("\n"))
            .and_then(|()| std::fs::write(&mf, message(size)))
            .map_err(|e| Failure::new("to write the job's files", e.to_string()))?;
        let (spool, rf, mf) = (
            self.spool.display().to_string(),
            rf.display().to_string(),
            mf.display().to_string(),
        );
        let pool_s = pool.map(String::from);
        let mut args = vec![
            "submit",
            "--spool",
            spool.as_str(),
            "--from",
            MAIL_FROM,
            "--rcpts",
            rf.as_str(),
        ];
        if let Some(p) = &pool_s {
            args.extend_from_slice(&["--pool", p.as_str()]);
        }
        args.push(mf.as_str());
        let ran = crate::runner::run_process(&self.smtpw, &args, Duration::from_secs(20)).await?;
        if ran.code != Some(0) {
            return Err(Failure::new(
                "`smtpw submit` to exit 0",
                format!("exit {:?}: {}", ran.code, ran.stderr.trim()),
            ));
        }
        Ok(())
    }

    fn run_args<'a>(&'a self, cfg: &'a str, spool: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec![
            "run",
            "--config",
            cfg,
            "--spool",
            spool,
            "--connect-timeout",
            "5",
        ];
        v.extend_from_slice(extra);
        v
    }

    /// `smtpw run --until-empty EXTRA...`, which must exit 0 within `limit`.
    pub async fn run_until_empty(&self, extra: &[&str], limit: Duration) -> Result<(), Failure> {
        let (cfg, spool) = (
            self.cfg.display().to_string(),
            self.spool.display().to_string(),
        );
        let mut args = self.run_args(&cfg, &spool, extra);
        args.push("--until-empty");
        let ran = crate::runner::run_process(&self.smtpw, &args, limit).await?;
        if ran.code != Some(0) {
            return Err(Failure::new(
                "`smtpw run --until-empty` to exit 0",
                format!("exit {:?}: {}", ran.code, ran.stderr.trim()),
            ));
        }
        Ok(())
    }

    /// Starts `smtpw run EXTRA...` (killed when the child is dropped).
    pub fn start(&self, extra: &[&str]) -> Result<tokio::process::Child, Failure> {
        let (cfg, spool) = (
            self.cfg.display().to_string(),
            self.spool.display().to_string(),
        );
        let args = self.run_args(&cfg, &spool, extra);
        spawn_process(&self.smtpw, &args)
    }

    /// Sends SIGTERM to a `smtpw run` started with [`ProcessSite::start`] and waits (15 s) for it
    /// to exit 0.
    pub async fn stop(&self, mut child: tokio::process::Child) -> Result<(), Failure> {
        if let Some(pid) = child.id() {
            // `kill(1)`: the workspace denies unsafe code, so no libc::kill here.
            crate::runner::run_process(
                Path::new("kill"),
                &["-TERM", &pid.to_string()],
                Duration::from_secs(5),
            )
            .await?;
        }
        match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
            Ok(Ok(st)) if st.success() => Ok(()),
            other => Err(Failure::new(
                "`smtpw run` to stop with status 0 on SIGTERM",
                format!("{other:?}"),
            )),
        }
    }

    /// `smtpw queue --json`, parsed.
    pub async fn queue(&self) -> Result<serde_json::Value, Failure> {
        let ran = crate::runner::run_process(
            &self.smtpw,
            &[
                "queue",
                "--spool",
                &self.spool.display().to_string(),
                "--json",
            ],
            Duration::from_secs(20),
        )
        .await?;
        serde_json::from_str(&ran.stdout).map_err(|e| {
            Failure::new(
                "`smtpw queue --json` to print JSON",
                format!("{e}: {} {}", ran.stdout.trim(), ran.stderr.trim()),
            )
        })
    }

    pub fn ledger(&self) -> Result<Vec<LedgerLine>, Failure> {
        read_ledger(&self.spool.join(smtpw::spool::LEDGER_FILE))
            .map(|it| it.collect())
            .map_err(|e| Failure::new("the ledger to be readable", e.to_string()))
    }
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn dead_port() -> Result<u16, Failure> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Failure::new("a free port", e.to_string()))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| Failure::new("a free port", e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_the_listening_line() {
        let a = listening_addr("mock-mta: iis profile, mock-iis.example.org listening on 127.0.0.1:41234 (recipients 100, ...)");
        assert_eq!(a, Some("127.0.0.1:41234".parse().unwrap()));
        assert_eq!(listening_addr("mock-mta: starting"), None);
    }

    #[test]
    fn exactly_once_names_what_is_wrong() {
        let want: Vec<String> = vec!["a".into(), "b".into()];
        assert!(exactly_once(&want, vec!["b".into(), "a".into()], "x").is_ok());
        let f = exactly_once(&want, vec!["a".into(), "a".into(), "c".into()], "x").unwrap_err();
        assert!(f.got.contains("1 missing"), "{f}");
        assert!(f.got.contains("1 delivered more than once"), "{f}");
        assert!(f.got.contains("1 unexpected"), "{f}");
    }
}
