//! The real-time scenarios' site: a spool directory with a SITE.CFG for the `smtpw` binary, driven
//! on the scenario's tokio runtime. The commands come from the test kit ([`Smtpw`]); the
//! virtual-mode topology, the mock-mta processes and the journal reader are the kit's too.
//!
//! In [`Mode::RealTimePg`] the spool is a fresh database of the kit's PostgreSQL: `smtpw run
//! --spool URL --incoming SPOOL` (the site is a node; jobs are still submitted as files into
//! `SPOOL/incoming`, which the node ingests, and its ledger is `SPOOL/ledger.jsonl` as with a
//! spool directory), `smtpw queue --spool URL`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use smtpw_engine::ledger::{read_ledger, LedgerLine};
use smtpw_testkit::proc::{run_command, signal, spawn_command, Smtpw};
use smtpw_testkit::workload::{message, MAIL_FROM};
use smtpw_testkit::Failure;

use crate::report::Mode;
use crate::runner::{Bin, Ctx};

/// The node name of a site whose SITE.CFG has none (a database spool needs one).
const NODE: &str = "CONFORMANCE.EXAMPLE.ORG";

/// A spool directory with a SITE.CFG for the `smtpw` binary (real-time scenarios).
pub struct ProcessSite {
    pub smtpw: Smtpw,
    pub dir: PathBuf,
    pub cfg: PathBuf,
    pub spool: PathBuf,
    /// In [`Mode::RealTimePg`]: the database spool's URL.
    pub database: Option<String>,
    jobs: u32,
}

impl ProcessSite {
    /// Writes `site_cfg` to `dir/SITE.CFG`; the spool is `dir/spool` (in
    /// [`Mode::RealTimePg`]: a fresh database, `dir/spool` the node's own directory, and
    /// `NODE=` added to SITE.CFG when it has none).
    pub fn new(ctx: &Ctx, dir: &Path, site_cfg: &str) -> Result<Self, Failure> {
        let smtpw = ctx.bin(Bin::Smtpw)?;
        let database = match (ctx.mode(), ctx.database()) {
            (Mode::RealTimePg, Some(pg)) => Some(pg.database(ctx.name())),
            (Mode::RealTimePg, None) => {
                return Err(Failure::new(
                    "a PostgreSQL server in real-time-pg mode",
                    "none was given to the scenario",
                ))
            }
            _ => None,
        };
        let mut text = site_cfg.to_owned();
        if database.is_some() && !text.lines().any(|l| l.trim_start().starts_with("NODE=")) {
            text.push_str(&format!("NODE={NODE}\n"));
        }
        let cfg = dir.join("SITE.CFG");
        std::fs::write(&cfg, text).map_err(|e| Failure::new("to write SITE.CFG", e.to_string()))?;
        Ok(Self {
            smtpw: Smtpw::at(smtpw),
            dir: dir.to_path_buf(),
            cfg,
            spool: dir.join("spool"),
            database,
            jobs: 0,
        })
    }

    /// What `--spool` says: the database's URL, or the spool directory.
    fn spool_arg(&self) -> std::ffi::OsString {
        match &self.database {
            Some(url) => url.into(),
            None => self.spool.clone().into_os_string(),
        }
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
        let cmd = self
            .smtpw
            .submit_cmd(&self.spool, MAIL_FROM, &rf, pool, &mf);
        let ran = run_command(cmd, Duration::from_secs(20)).await?;
        if ran.code != Some(0) {
            return Err(Failure::new(
                "`smtpw submit` to exit 0",
                format!("exit {:?}: {}", ran.code, ran.stderr.trim()),
            ));
        }
        Ok(())
    }

    /// `smtpw run --config CFG --spool SPOOL --connect-timeout 5 EXTRA...`.
    fn run_cmd(&self, extra: &[&str]) -> std::process::Command {
        let mut c = self.smtpw.command();
        c.arg("run")
            .arg("--config")
            .arg(&self.cfg)
            .arg("--spool")
            .arg(self.spool_arg())
            .args(["--connect-timeout", "5"]);
        if self.database.is_some() {
            c.arg("--incoming").arg(&self.spool);
        }
        c.args(extra);
        c
    }

    /// `smtpw run --until-empty EXTRA...`, which must exit 0 within `limit`.
    pub async fn run_until_empty(&self, extra: &[&str], limit: Duration) -> Result<(), Failure> {
        let mut cmd = self.run_cmd(extra);
        cmd.arg("--until-empty");
        let ran = run_command(cmd, limit).await?;
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
        spawn_command(self.run_cmd(extra))
    }

    /// Sends SIGTERM to a `smtpw run` started with [`ProcessSite::start`] and waits (15 s) for it
    /// to exit 0.
    pub async fn stop(&self, mut child: tokio::process::Child) -> Result<(), Failure> {
        if let Some(pid) = child.id() {
            // (A process that has exited already is seen by the wait below.)
            let _ = signal(pid, "TERM");
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
        let spool = self.spool_arg();
        let ran = run_command(
            self.smtpw.queue_cmd(Path::new(&spool)),
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
        read_ledger(&self.spool.join(smtpw_engine::spool::LEDGER_FILE))
            .map(|it| it.collect())
            .map_err(|e| Failure::new("the ledger to be readable", e.to_string()))
    }
}
