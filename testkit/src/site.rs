//! One spool driven through the `smtpw` binary as an operator would (SITE.CFG, submit, run,
//! queue, signals), with its log.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::proc::{write_site_cfg, Kid, Smtpw};

/// A spool directory, its SITE.CFG, ledger and log, and every recipient submitted so far.
pub struct Site {
    pub smtpw: Smtpw,
    pub dir: tempfile::TempDir,
    pub spool: PathBuf,
    pub ledger: PathBuf,
    pub log: PathBuf,
    pub cfg: PathBuf,
    /// Every recipient submitted so far, in order.
    pub submitted: Vec<String>,
}

impl Site {
    /// A fresh site: `DIR/spool`, its ledger `DIR/spool/ledger.jsonl` (the spool's default
    /// place, so that it shares the spool's disk), the log `DIR/smtpw.log`, `DIR/SITE.CFG`.
    pub fn new(smtpw: Smtpw) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        std::fs::create_dir_all(&spool).unwrap();
        Site {
            smtpw,
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
        self.smtpw.submit(self.dir.path(), &self.spool, rcpts);
        self.submitted.extend_from_slice(rcpts);
    }

    /// `smtpw submit --pool POOL` of one job to `rcpts`.
    pub fn submit_to_pool(&mut self, rcpts: &[String], pool: char) {
        self.smtpw
            .submit_to_pool(self.dir.path(), &self.spool, rcpts, Some(pool));
        self.submitted.extend_from_slice(rcpts);
    }

    /// `smtpw run EXTRA...` on this site, logs appended to [`Site::log`].
    pub fn run_cmd(&self, until_empty: bool, extra: &[String]) -> Command {
        let mut c =
            self.smtpw
                .run_cmd(&self.cfg, &self.spool, &self.ledger, until_empty, &self.log);
        c.args(extra);
        c
    }

    pub fn run(&self, until_empty: bool, extra: &[String]) -> Kid {
        Kid::spawn(self.run_cmd(until_empty, extra), "smtpw run")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log from byte `from` on (what one run added).
    pub fn log_since(&self, from: usize) -> String {
        self.log_text().get(from..).unwrap_or_default().to_string()
    }

    /// `smtpw queue --json`.
    pub fn queue(&self) -> serde_json::Value {
        self.smtpw.queue_json(&self.spool)
    }

    /// `smtpw queue --json`, or what it said when it failed.
    pub fn try_queue(&self) -> Result<serde_json::Value, String> {
        self.smtpw.try_queue_json(&self.spool)
    }

    /// `--drain-timeout SECS` when this `smtpw run` has the option, else `None` (a bounded stop
    /// is missing: a case reports that and runs without it).
    pub fn drain_args(&self, secs: u64) -> Option<Vec<String>> {
        static HAS: OnceLock<bool> = OnceLock::new();
        let has = *HAS.get_or_init(|| {
            let out = self.smtpw.output(&["run", "--help"]);
            String::from_utf8_lossy(&out.stdout).contains("--drain-timeout")
        });
        has.then(|| vec!["--drain-timeout".to_string(), secs.to_string()])
    }
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
