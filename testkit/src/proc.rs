//! The real binaries as processes, as a user runs them: the `smtpw` commands ([`Smtpw`]), a child
//! that is killed when dropped ([`Kid`]), bounded waits, free ports, signals by PID, a mock-mta on
//! loopback in this process ([`LoopbackMock`]) or as a process of its own ([`MockProcess`]), and a
//! relay that never says a word ([`SilentRelay`]).
//!
//! Blocking helpers are for tests (which run on their own threads); the `async` ones
//! ([`run_process`], [`spawn_process`], [`MockProcess`]) for the conformance suite's real-time
//! scenarios, which run on a tokio runtime.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use mock_mta::{MockConfig, MockMta, MockServer};
use smtpw_engine::engine::COMPLETIONS_OUTSTANDING;
use tokio::io::AsyncReadExt;

use crate::Failure;

/// The `smtpw` binary under test. Its path exists only in the test crates of the package that
/// builds it: `const SMTPW: Smtpw = Smtpw::new(env!("CARGO_BIN_EXE_smtpw"));` there, or
/// [`Smtpw::at`] a path found at run time.
#[derive(Debug, Clone)]
pub struct Smtpw {
    exe: Cow<'static, str>,
}

impl Smtpw {
    pub const fn new(exe: &'static str) -> Smtpw {
        Smtpw {
            exe: Cow::Borrowed(exe),
        }
    }

    /// The binary at `path` (which must be UTF-8).
    pub fn at(path: &Path) -> Smtpw {
        let exe = path
            .to_str()
            .unwrap_or_else(|| panic!("a UTF-8 path for smtpw, not {}", path.display()));
        Smtpw {
            exe: Cow::Owned(exe.to_owned()),
        }
    }

    pub fn path(&self) -> &Path {
        Path::new(self.exe.as_ref())
    }

    /// `smtpw` with no arguments yet.
    pub fn command(&self) -> Command {
        Command::new(self.exe.as_ref())
    }

    /// `smtpw ARGS...` run to its end.
    pub fn output(&self, args: &[&str]) -> std::process::Output {
        self.command()
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {} {args:?}: {e}", self.exe))
    }

    /// `smtpw run --config CFG --spool SPOOL --ledger LEDGER [--until-empty]`, its log (stderr,
    /// `RUST_LOG=info`) appended to `log`.
    pub fn run_cmd(
        &self,
        cfg: &Path,
        spool: &Path,
        ledger: &Path,
        until_empty: bool,
        log: &Path,
    ) -> Command {
        let mut c = self.command();
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
        c.env("RUST_LOG", "info");
        log_to(&mut c, log);
        c
    }

    /// `smtpw submit --spool SPOOL --from FROM --rcpts RCPTS [--pool P] MESSAGE`.
    pub fn submit_cmd(
        &self,
        spool: &Path,
        from: &str,
        rcpts: &Path,
        pool: Option<char>,
        message: &Path,
    ) -> Command {
        let mut c = self.command();
        c.arg("submit")
            .arg("--spool")
            .arg(spool)
            .arg("--from")
            .arg(from)
            .arg("--rcpts")
            .arg(rcpts);
        if let Some(p) = pool {
            c.arg("--pool").arg(p.to_string());
        }
        c.arg(message);
        c
    }

    /// `smtpw submit` of one job (a short message) to `rcpts`, its files written in `dir`;
    /// panics unless it exits 0.
    pub fn submit(&self, dir: &Path, spool: &Path, rcpts: &[String]) {
        self.submit_to_pool(dir, spool, rcpts, None);
    }

    /// [`Smtpw::submit`] into `pool` (`None`: the default).
    pub fn submit_to_pool(&self, dir: &Path, spool: &Path, rcpts: &[String], pool: Option<char>) {
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
        let out = self
            .submit_cmd(spool, "owner@lists.example", &list, pool, &msg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "smtpw submit: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `smtpw ctl --admin ADDR ARGS...`.
    pub fn ctl(&self, admin: std::net::SocketAddr, args: &[&str]) -> std::process::Output {
        self.command()
            .arg("ctl")
            .arg("--admin")
            .arg(admin.to_string())
            .args(args)
            .output()
            .unwrap()
    }

    /// `smtpw queue --json --spool SPOOL`.
    pub fn queue_cmd(&self, spool: &Path) -> Command {
        let mut c = self.command();
        c.args(["queue", "--json", "--spool"]).arg(spool);
        c
    }

    /// `smtpw queue --json` as a user runs it (it works while a process owns the spool), or what
    /// it said when it failed.
    pub fn try_queue_json(&self, spool: &Path) -> Result<serde_json::Value, String> {
        let out = self.queue_cmd(spool).output().unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    /// `smtpw queue --json`, parsed; panics unless it exits 0.
    pub fn queue_json(&self, spool: &Path) -> serde_json::Value {
        self.try_queue_json(spool)
            .unwrap_or_else(|e| panic!("smtpw queue: {e}"))
    }
}

/// A number of `smtpw queue --json`'s output; panics when it is missing.
pub fn num(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// No input, no output, and standard error appended to `log`.
pub fn log_to(cmd: &mut Command, log: &Path) {
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(logf));
}

/// Are we root (effective uid 0)? Read from /proc, without unsafe code.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    })
}

/// The capabilities that let root read and search any file whatever its mode.
const DAC_CAPS: &str = "-dac_override,-dac_read_search";

/// `cmd` as a process that file modes bind: unchanged when not root; as root, through
/// `setpriv` without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (dropped from its bounding and
/// inheritable sets), so that a file with mode 000 is refused with EACCES as it would be to a
/// daemon under its own account. `None` as root without `setpriv`. Standard input and output
/// are not carried over: set them on the result (e.g. [`log_to`]).
pub fn without_dac_override(cmd: &Command) -> Option<Command> {
    if !is_root() {
        let mut c = Command::new(cmd.get_program());
        c.args(cmd.get_args());
        copy_env(cmd, &mut c);
        return Some(c);
    }
    let ok = Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        return None;
    }
    let mut c = Command::new("setpriv");
    c.arg(format!("--inh-caps={DAC_CAPS}"))
        .arg(format!("--bounding-set={DAC_CAPS}"))
        .arg(cmd.get_program())
        .args(cmd.get_args());
    copy_env(cmd, &mut c);
    Some(c)
}

fn copy_env(from: &Command, to: &mut Command) {
    for (k, v) in from.get_envs() {
        match v {
            Some(v) => to.env(k, v),
            None => to.env_remove(k),
        };
    }
}

/// Is `file` unreadable to a process that file modes bind ([`without_dac_override`])?
pub fn unreadable_to_daemon(file: &Path) -> bool {
    let mut cat = Command::new("cat");
    cat.arg(file);
    without_dac_override(&cat).is_some_and(|mut c| c.output().is_ok_and(|o| !o.status.success()))
}

/// Send a signal by name (`TERM`, `INT`, ...) to a process through kill(1) (no unsafe code):
/// whether kill(1) succeeded (it fails for a process that no longer exists).
pub fn signal(pid: u32, name: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("running kill(1)")
        .success()
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

    /// Send SIGTERM.
    pub fn term(&self) {
        self.signal("TERM");
    }

    /// Send a signal by name (`TERM`, `INT`, ...).
    pub fn signal(&self, name: &str) {
        assert!(
            signal(self.pid(), name),
            "kill -{name} {} failed",
            self.pid()
        );
    }

    /// SIGTERM, then wait at most `limit`: the exit status and how long the stop took, or `None`
    /// (then the process was SIGKILLed) and the time waited.
    pub fn term_and_wait(&mut self, limit: Duration) -> (Option<ExitStatus>, Duration) {
        let t = Instant::now();
        self.term();
        match self.wait_for(limit) {
            Some(s) => (Some(s), t.elapsed()),
            None => {
                self.kill();
                (None, t.elapsed())
            }
        }
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Peak resident memory of a running process (VmHWM), in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Poll `cond` every 20 ms for at most `limit`: whether it came to hold.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Poll `f` until its value has not changed for `quiet`; panics after `limit`.
pub fn settle(limit: Duration, quiet: Duration, f: impl Fn() -> usize) -> usize {
    let end = Instant::now() + limit;
    let (mut last, mut since) = (f(), Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let v = f();
        if v != last {
            (last, since) = (v, Instant::now());
        } else if since.elapsed() >= quiet {
            return v;
        }
        assert!(Instant::now() < end, "still changing after {limit:?} ({v})");
    }
}

/// One at a time: for cases that measure time-outs and kill processes, where a neighbour's load
/// would blur both. Hold the guard for the length of the case.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("a free port on 127.0.0.1: {e}"))
}

/// A SITE.CFG in `dir`: NODE=LISTSERV.EXAMPLE.ORG, `workers` workers on 127.0.0.1:`port`, the
/// same as SMTP_FORWARD, and MAXBSMTP.
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

/// MAXBSMTP-recipient batches in flight at any moment, the most a crash (or a lost outcome) can
/// repeat: per worker, the batch being delivered (one copy, or several claimed ahead for one
/// connection, holding at most MAXBSMTP recipients together) plus the completions being made
/// durable (a worker claims its next batch while the previous completions sync), at most
/// `COMPLETIONS_OUTSTANDING` x MAXBSMTP recipients.
pub fn in_flight_copies(workers: u32) -> u64 {
    u64::from(workers) * (COMPLETIONS_OUTSTANDING as u64 + 1)
}

/// Recipients one crash can repeat at the relay (or a site can send without recording
/// anything): `(COMPLETIONS_OUTSTANDING + 1) x MAXBSMTP` per worker.
pub fn repeat_bound_per_crash(workers: u32, max_bsmtp: u32) -> u64 {
    in_flight_copies(workers) * u64::from(max_bsmtp)
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
        let mta = MockMta::new(config, smtpw_engine::clock::SystemClock::shared());
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

/// A relay that accepts TCP connections and never says a word (an overloaded server): it holds
/// the sockets until dropped (or for two minutes at most).
pub struct SilentRelay {
    pub port: u16,
    pub accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SilentRelay {
    pub fn start() -> SilentRelay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
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
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---- on a tokio runtime (the conformance suite's real-time scenarios) ------------------------

/// What a finished process gave.
#[derive(Debug, Clone)]
pub struct Ran {
    /// `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

fn shown(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion (its output captured) with a time limit; the child is killed if the
/// limit passes or the caller is cancelled.
pub async fn run_command(cmd: Command, limit: Duration) -> Result<Ran, Failure> {
    let what = shown(&cmd);
    let child = tokio::process::Command::from(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Failure::new(format!("`{what}` to start"), e.to_string()))?;
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(o)) => Ok(Ran {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }),
        Ok(Err(e)) => Err(Failure::new(format!("`{what}` to run"), e.to_string())),
        Err(_) => Err(Failure::new(
            format!("`{what}` to exit within {} s", limit.as_secs()),
            "it was still running and was killed",
        )),
    }
}

/// [`run_command`] of `program args...`.
pub async fn run_process(program: &Path, args: &[&str], limit: Duration) -> Result<Ran, Failure> {
    let mut c = Command::new(program);
    c.args(args);
    run_command(c, limit).await
}

/// Starts a long-running process (a mock MTA, the engine) with piped output; it is killed when
/// the returned child is dropped, so a failing or cancelled scenario leaves nothing behind.
pub fn spawn_command(cmd: Command) -> Result<tokio::process::Child, Failure> {
    let what = shown(&cmd);
    tokio::process::Command::from(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Failure::new(format!("`{what}` to start"), e.to_string()))
}

/// [`spawn_command`] of `program args...`.
pub fn spawn_process(program: &Path, args: &[&str]) -> Result<tokio::process::Child, Failure> {
    let mut c = Command::new(program);
    c.args(args);
    spawn_command(c)
}

/// A `mock-mta` process listening on a port of its own choosing on 127.0.0.1, with a journal
/// file (read it with `mock_mta::journal::Journal::read_file`). Killed when dropped.
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
    pub async fn finish(mut self) -> Result<mock_mta::Journal, Failure> {
        let _ = self.child.kill().await;
        read_journal(&self.journal)
    }
}

/// A mock's journal file, or a failure saying why it cannot be read.
pub fn read_journal(path: &Path) -> Result<mock_mta::Journal, Failure> {
    mock_mta::Journal::read_file(path)
        .map_err(|e| Failure::new("a readable mock-mta journal", e.to_string()))
}

fn listening_addr(text: &str) -> Option<SocketAddr> {
    let i = text.find("listening on ")?;
    let rest = &text[i + "listening on ".len()..];
    let end = rest.find(|c: char| c.is_whitespace())?;
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_listening_line() {
        let a = listening_addr("mock-mta: iis profile, mock-iis.example.org listening on 127.0.0.1:41234 (recipients 100, ...)");
        assert_eq!(a, Some("127.0.0.1:41234".parse().unwrap()));
        assert_eq!(listening_addr("mock-mta: starting"), None);
    }
}
