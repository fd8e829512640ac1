//! Helpers for tests that run the `smtpw` binary as a user does: a child guard that kills on
//! drop, bounded waits, SITE.CFG and job set-up, `smtpw queue --json`, and an in-process
//! mock-mta on loopback (it outlives the engine processes it serves).

#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use mock_mta::{MockConfig, MockMta, MockServer};
use smtpw::ledger::{read_ledger, Outcome};
use smtpw::worker::COMPLETIONS_OUTSTANDING;

pub fn smtpw() -> Command {
    Command::new(env!("CARGO_BIN_EXE_smtpw"))
}

/// A child process that is killed (SIGKILL) and reaped when dropped, so a failing test leaves
/// nothing running.
pub struct Kid {
    pub child: Child,
    pub name: String,
}

impl Kid {
    pub fn spawn(mut cmd: Command, name: &str) -> Kid {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Kid {
            child,
            name: name.to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait at most `limit` for the exit; `None` if still running.
    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL and reap. Returns false if it had already exited.
    pub fn kill(&mut self) -> bool {
        let running = self.child.try_wait().unwrap().is_none();
        let _ = self.child.kill();
        let _ = self.child.wait();
        running
    }

    /// Send SIGTERM (through kill(1): no unsafe code).
    pub fn term(&self) {
        self.signal("TERM");
    }

    /// Send a signal by name (`TERM`, `INT`, ...) through kill(1).
    pub fn signal(&self, name: &str) {
        let st = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("running kill(1)");
        assert!(st.success(), "kill -{name} {} failed", self.pid());
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A SITE.CFG with `workers` workers on the mock and the mock as SMTP_FORWARD.
pub fn write_site_cfg(dir: &Path, port: u16, workers: u32, max_bsmtp: u32) -> PathBuf {
    let p = dir.join("SITE.CFG");
    std::fs::write(
        &p,
        format!(
            "NODE=LISTSERV.EXAMPLE.ORG\nSMTP_FORWARD=127.0.0.1:{port}\n\
             SMTP_FORWARD_1={workers}*127.0.0.1:{port}\nMAXBSMTP={max_bsmtp}\n"
        ),
    )
    .unwrap();
    p
}

/// Unique addresses over 97 domains.
pub fn recipients(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("r{i}@d{}.example", i % 97))
        .collect()
}

/// `smtpw submit` of one job to `rcpts`.
pub fn submit_cli(dir: &Path, spool: &Path, rcpts: &[String]) {
    let list = dir.join("rcpts.txt");
    let mut text = rcpts.join("\n");
    text.push('\n');
    std::fs::write(&list, text).unwrap();
    let msg = dir.join("message.eml");
    std::fs::write(
        &msg,
        "From: owner@lists.example\nSubject: crash test\n\nHello.\n.a dot-stuffed line\n",
    )
    .unwrap();
    let out = smtpw()
        .args(["submit", "--from", "owner@lists.example", "--rcpts"])
        .arg(&list)
        .arg("--spool")
        .arg(spool)
        .arg(&msg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "smtpw submit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `smtpw queue --json` as a user runs it (works while a process owns the spool).
pub fn queue_json(spool: &Path) -> serde_json::Value {
    let out = smtpw()
        .args(["queue", "--json", "--spool"])
        .arg(spool)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "smtpw queue: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn num(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// `smtpw run --config CFG --spool SPOOL --ledger LEDGER [--until-empty]`, logs to `log`.
pub fn run_cmd(cfg: &Path, spool: &Path, ledger: &Path, until_empty: bool, log: &Path) -> Command {
    let mut c = smtpw();
    c.arg("run")
        .arg("--config")
        .arg(cfg)
        .arg("--spool")
        .arg(spool)
        .arg("--ledger")
        .arg(ledger);
    if until_empty {
        c.arg("--until-empty");
    }
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(logf))
        .env("RUST_LOG", "info");
    c
}

/// A mock-mta on 127.0.0.1:0 served by its own runtime threads, which keep running while the
/// test thread blocks on child processes.
pub struct LoopbackMock {
    pub rt: tokio::runtime::Runtime,
    pub mta: MockMta,
    pub server: Option<MockServer>,
    pub port: u16,
}

impl LoopbackMock {
    pub fn start(config: MockConfig) -> LoopbackMock {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mta = MockMta::new(config, smtpw::clock::SystemClock::shared());
        let server = rt
            .block_on(mta.listen("127.0.0.1:0".parse().unwrap()))
            .unwrap();
        let port = server.local_addr().port();
        LoopbackMock {
            rt,
            mta,
            server: Some(server),
            port,
        }
    }

    /// Wait (at most `limit`) until no session is open.
    pub fn wait_idle(&self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if self.mta.stats().current_connections == 0 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for LoopbackMock {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            let _ = self.rt.block_on(async move {
                tokio::time::timeout(Duration::from_secs(6), s.shutdown()).await
            });
        }
    }
}

/// How many times each address was accepted in an accepted transaction at the mock.
pub fn received(mock: &LoopbackMock) -> HashMap<String, u32> {
    let mut m: HashMap<String, u32> = HashMap::new();
    for a in mock.mta.journal().delivered_recipients() {
        *m.entry(a).or_default() += 1;
    }
    m
}

/// Per recipient, the ledger's `delivered` lines; panics on any other outcome.
pub fn ledgered(path: &Path) -> HashMap<String, u32> {
    let mut m: HashMap<String, u32> = HashMap::new();
    for l in read_ledger(path).unwrap() {
        assert_eq!(l.outcome, Outcome::Delivered, "{l:?}");
        assert!(l.reply.starts_with("250"), "{l:?}");
        *m.entry(l.rcpt).or_default() += 1;
    }
    m
}

/// Copies in flight at any moment, the most a crash (or a lost outcome) can repeat: per worker,
/// the copy being delivered plus those whose outcomes are being made durable (a worker claims
/// its next copy while the previous completions sync).
pub fn in_flight_copies(workers: u32) -> u64 {
    u64::from(workers) * (COMPLETIONS_OUTSTANDING as u64 + 1)
}

/// Recipients one crash can repeat at the relay: the copies in flight, each of at most
/// MAXBSMTP recipients.
pub fn repeat_bound_per_crash(workers: u32, max_bsmtp: u32) -> u64 {
    in_flight_copies(workers) * u64::from(max_bsmtp)
}

/// A deterministic pseudo-random sequence (PCG-style LCG), for kill delays.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    /// Uniform in `lo..=hi` (roughly).
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// A relay that accepts TCP connections and never says a word (an overloaded server): it holds
/// the sockets until dropped.
pub struct SilentRelay {
    pub port: u16,
    pub accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SilentRelay {
    pub fn start() -> SilentRelay {
        use std::sync::atomic::Ordering;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (a, s) = (accepted.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            let end = Instant::now() + Duration::from_secs(120);
            while !s.load(Ordering::SeqCst) && Instant::now() < end {
                match l.accept() {
                    Ok((sock, _)) => {
                        held.push(sock);
                        a.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        SilentRelay {
            port,
            accepted,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SilentRelay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
