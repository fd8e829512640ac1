//! Fixture: one spool driven through the `smtpw` binary as an operator would (SITE.CFG, submit,
//! run, queue, signals), with its log, and the process facts the cases measure (stop time, peak
//! memory).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::proc_support::{queue_json, smtpw, submit_cli, write_site_cfg, Kid};

/// The drain deadline the cases give `smtpw run --drain-timeout` (seconds).
pub const DRAIN_SECS: u64 = 2;
/// How long a stop may take beyond the drain deadline: the courtesy QUIT at a stop
/// (`worker::QUIT_AT_STOP`, 2 s) and process exit on a loaded machine.
pub const STOP_MARGIN: Duration = Duration::from_secs(5);

/// The cases run one at a time: they measure time-outs and kill processes, and a neighbour's
/// load would blur both.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

pub struct EdgeSite {
    pub dir: tempfile::TempDir,
    pub spool: PathBuf,
    pub ledger: PathBuf,
    pub log: PathBuf,
    pub cfg: PathBuf,
    /// Every recipient submitted so far, in order.
    pub submitted: Vec<String>,
}

impl EdgeSite {
    /// A fresh site: `DIR/spool`, its ledger `DIR/spool/ledger.jsonl` (the spool's default
    /// place, so that it shares the spool's disk), the log `DIR/smtpw.log`.
    pub fn new() -> EdgeSite {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        std::fs::create_dir_all(&spool).unwrap();
        EdgeSite {
            ledger: spool.join("ledger.jsonl"),
            log: dir.path().join("smtpw.log"),
            cfg: dir.path().join("SITE.CFG"),
            spool,
            dir,
            submitted: Vec::new(),
        }
    }

    /// SITE.CFG: `workers` workers and SMTP_FORWARD on 127.0.0.1:`port`.
    pub fn point_at(&self, port: u16, workers: u32, max_bsmtp: u32) {
        let p = write_site_cfg(self.dir.path(), port, workers, max_bsmtp);
        assert_eq!(p, self.cfg);
    }

    /// `smtpw submit` of one job to `rcpts`.
    pub fn submit(&mut self, rcpts: &[String]) {
        submit_cli(self.dir.path(), &self.spool, rcpts);
        self.submitted.extend_from_slice(rcpts);
    }

    /// `smtpw run` on this site, logs appended to [`EdgeSite::log`]; `wrap` is a program (and
    /// its arguments) that runs smtpw, e.g. `setpriv ... --`.
    pub fn run_cmd(&self, until_empty: bool, extra: &[String], wrap: &[&str]) -> Command {
        let exe = env!("CARGO_BIN_EXE_smtpw");
        let mut c = match wrap.split_first() {
            None => smtpw(),
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(exe);
                c
            }
        };
        c.arg("run")
            .arg("--config")
            .arg(&self.cfg)
            .arg("--spool")
            .arg(&self.spool)
            .arg("--ledger")
            .arg(&self.ledger);
        if until_empty {
            c.arg("--until-empty");
        }
        c.args(extra);
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(logf))
            .env("RUST_LOG", "info");
        c
    }

    pub fn run(&self, until_empty: bool, extra: &[String]) -> Kid {
        Kid::spawn(self.run_cmd(until_empty, extra, &[]), "smtpw run")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log from byte `from` on (what one run added).
    pub fn log_since(&self, from: usize) -> String {
        self.log_text().get(from..).unwrap_or_default().to_string()
    }

    pub fn queue(&self) -> serde_json::Value {
        queue_json(&self.spool)
    }

    /// `smtpw queue --json`, or what it said when it failed.
    pub fn try_queue(&self) -> Result<serde_json::Value, String> {
        let out = smtpw()
            .args(["queue", "--json", "--spool"])
            .arg(&self.spool)
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }
}

/// `--drain-timeout DRAIN_SECS` when this `smtpw run` has the option, else `None` (the bounded
/// stop is missing: a case reports that and runs without it).
pub fn drain_args() -> Option<Vec<String>> {
    static HAS: OnceLock<bool> = OnceLock::new();
    let has = *HAS.get_or_init(|| {
        let out = smtpw().args(["run", "--help"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).contains("--drain-timeout")
    });
    has.then(|| vec!["--drain-timeout".to_string(), DRAIN_SECS.to_string()])
}

/// SIGTERM, then wait at most `limit`: the exit status and how long the stop took, or `None`
/// (then the process was SIGKILLed) and the time waited.
pub fn term_and_wait(kid: &mut Kid, limit: Duration) -> (Option<ExitStatus>, Duration) {
    let t = Instant::now();
    kid.term();
    match kid.wait_for(limit) {
        Some(s) => (Some(s), t.elapsed()),
        None => {
            kid.kill();
            (None, t.elapsed())
        }
    }
}

/// Peak resident memory of a running process (VmHWM), in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Poll `cond` every 20 ms for at most `limit`.
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

/// Are we root (uid 0)? Read from /proc, without unsafe code.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Panic with every violation found by a case, after its figures were printed.
pub fn verdict(case: &str, violations: &[String]) {
    if !violations.is_empty() {
        panic!(
            "edge case {case}: {} violation(s):\n  - {}",
            violations.len(),
            violations.join("\n  - ")
        );
    }
}

/// The file name of a path, for messages.
pub fn name_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
