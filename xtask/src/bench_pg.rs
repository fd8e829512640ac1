//! The `postgres` variant of `cargo xtask bench`: `smtpw run --until-empty` on a PostgreSQL spool,
//! beside the SQLite `smtpw` of the same cell (issue 15 wants at least half its recipients/s).
//!
//! The server is the test kit's private cluster, held by the `bench-postgres` binary (benches/):
//! it prints the server's URL and data directory, and stops the cluster (`pg_ctl stop`, by its
//! postmaster.pid) when its stdin closes, which happens when [`Server`] is dropped or this process
//! exits in any way. Per cell the pre-loaded SQLite spool is moved once into a template database
//! with `smtpw spool copy`; each run gets a fresh `CREATE DATABASE ... TEMPLATE` of it (a file
//! copy, not timed) and drops it afterwards.
//!
//! Database time per copy, two ways: the user + system CPU seconds of the cluster's processes
//! (the postmaster, its live children, and the children it has reaped: backends, WAL writer,
//! checkpointer, autovacuum) during the run, from /proc, which counts what the database computed;
//! and the run's database's `pg_stat_database.active_time`, the time its sessions spent executing
//! statements (commit flushes included). Both divided by the copies delivered.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};

use crate::bench::{copy_dir, delivered_secs, site_cfg, wait_usage, Cell, Sample, RUN_LIMIT};

/// A PostgreSQL server for the bench, held by a `bench-postgres` process.
pub(crate) struct Server {
    child: Option<Child>,
    /// `postgres://USER@127.0.0.1:PORT` (no database).
    base: String,
    /// The private cluster's data directory (None for SMTPW_TEST_DATABASE_URL's server).
    data: Option<PathBuf>,
    seq: u32,
}

impl Server {
    /// Start the server; `Ok(Err(why))` when there is none here (the variant is skipped).
    pub(crate) fn start(bench_postgres: &Path) -> anyhow::Result<Result<Server, String>> {
        let mut child = Command::new(bench_postgres)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting bench-postgres")?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        let mut me = Server {
            child: Some(child),
            base: String::new(),
            data: None,
            seq: 0,
        };
        let v: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(_) => bail!("bench-postgres printed {line:?}, expected a JSON line"),
        };
        if let Some(why) = v["skipped"].as_str() {
            return Ok(Err(why.to_string()));
        }
        me.base = v["url"].as_str().unwrap_or_default().to_string();
        if me.base.is_empty() {
            bail!("bench-postgres printed no url: {line:?}");
        }
        me.data = v["data"]
            .as_str()
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        Ok(Ok(me))
    }

    fn url(&self, db: &str) -> String {
        format!("{}/{db}", self.base)
    }

    /// One SQL statement on the maintenance database.
    fn psql(&self, sql: &str) -> anyhow::Result<String> {
        let out = Command::new("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.url("postgres"))
            .args(["-c", sql])
            .stdin(Stdio::null())
            .output()
            .context("running psql (apt-get install postgresql-client)")?;
        if !out.status.success() {
            bail!(
                "psql {sql:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Move the pre-loaded SQLite spool `tpl` (left as it is) into a new template database for
    /// `cell`; returns its name.
    pub(crate) fn template(
        &mut self,
        smtpw: &Path,
        tpl: &Path,
        work: &Path,
        cell: &Cell,
    ) -> anyhow::Result<String> {
        let name: String = format!("tpl_{}", cell.label())
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        self.psql(&format!("DROP DATABASE IF EXISTS {name}"))?;
        self.psql(&format!("CREATE DATABASE {name}"))?;
        // `spool copy` empties the spool it reads: give it a copy of the template.
        let src = work.join(format!("pgsrc-{}", cell.label()));
        let _ = std::fs::remove_dir_all(&src);
        copy_dir(tpl, &src)?;
        let out = Command::new(smtpw)
            .args(["spool", "copy", "--json", "--from"])
            .arg(&src)
            .arg("--to")
            .arg(self.url(&name))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .context("running smtpw spool copy")?;
        let _ = std::fs::remove_dir_all(&src);
        if !out.status.success() {
            bail!(
                "smtpw spool copy failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .context("smtpw spool copy --json printed no JSON")?;
        let moved = v["recipients"].as_u64().unwrap_or(0);
        if moved != cell.recipients() {
            bail!(
                "smtpw spool copy moved {moved} recipients of {}",
                cell.recipients()
            );
        }
        Ok(name)
    }

    /// Drop a database (a cell's template once its runs are done); failures are only said.
    pub(crate) fn drop_database(&self, name: &str) {
        if let Err(e) = self.psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")) {
            eprintln!("    postgres: {e:#}");
        }
    }

    /// CPU seconds (user + system) the cluster's processes have used so far, if it is ours.
    fn cpu(&self) -> Option<f64> {
        let data = self.data.as_ref()?;
        let pid: u32 = std::fs::read_to_string(data.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()?;
        // utime, stime, cutime, cstime of the postmaster (the last two: its reaped children).
        let (mut ticks, _) = stat_times(pid)?;
        // Its live children (utime + stime only; their own children are not waited for here).
        for e in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if p == pid {
                continue;
            }
            if let Some((t, parent)) = stat_times_self(p) {
                if parent == pid {
                    ticks += t;
                }
            }
        }
        // /proc counts in USER_HZ, 100 on Linux.
        Some(ticks as f64 / 100.0)
    }

    /// One run of `smtpw run --until-empty` on a fresh copy of the template database `tpl`.
    pub(crate) fn run(
        &mut self,
        smtpw: &Path,
        tpl: &str,
        dir: &Path,
        port: u16,
        cell: &Cell,
    ) -> anyhow::Result<Sample> {
        self.seq += 1;
        let db = format!("run_{}", self.seq);
        self.psql(&format!("CREATE DATABASE {db} TEMPLATE {tpl}"))?;
        let r = self.run_on(smtpw, &db, dir, port, cell).and_then(|mut s| {
            // Statement time of every session on the run's database (PostgreSQL >= 14; each
            // backend adds its share when it ends, and smtpw's have ended by now).
            let active = self.psql(&format!(
                "SELECT active_time FROM pg_stat_database WHERE datname = '{db}'"
            ))?;
            s.db_active = active.parse::<f64>().map_or(f64::NAN, |ms| ms / 1000.0);
            Ok(s)
        });
        self.drop_database(&db);
        r
    }

    fn run_on(
        &self,
        smtpw: &Path,
        db: &str,
        dir: &Path,
        port: u16,
        cell: &Cell,
    ) -> anyhow::Result<Sample> {
        let _ = std::fs::remove_dir_all(dir);
        let node = dir.join("node");
        std::fs::create_dir_all(&node)?;
        let cfg = site_cfg(dir, port, cell.workers, cell.rcpts)?;
        let mut c = Command::new(smtpw);
        c.arg("run")
            .arg("--config")
            .arg(&cfg)
            .arg("--spool")
            .arg(self.url(db))
            .arg("--incoming")
            .arg(&node)
            .arg("--until-empty")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("smtpw.log"))?);
        let cpu0 = self.cpu();
        let start = SystemTime::now();
        let t0 = Instant::now();
        let mut child = c.spawn().context("starting smtpw")?;
        let u = wait_usage(&mut child, RUN_LIMIT)?;
        let wall = t0.elapsed().as_secs_f64();
        // Its backends exit once it has: let the postmaster reap them before the second sample.
        std::thread::sleep(Duration::from_millis(300));
        let db_cpu = match (cpu0, self.cpu()) {
            (Some(a), Some(b)) => b - a,
            _ => f64::NAN,
        };
        if !u.ok {
            bail!("smtpw failed; see {}", dir.join("smtpw.log").display());
        }
        let secs = delivered_secs(&node.join("ledger.jsonl"), cell, dir, start, wall)?;
        Ok(Sample {
            secs,
            rss_kb: u.rss_kb,
            cpu: u.cpu,
            db_cpu,
            db_active: f64::NAN,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Closing its stdin makes bench-postgres stop the cluster and exit.
            drop(c.stdin.take());
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!("xtask bench: bench-postgres did not stop within 30 s; killing it");
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The fields of /proc/PID/stat after the command name.
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    // Field 3 (state) is not a number: keep the others at their position (index = field - 3).
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// utime + stime + cutime + cstime of `pid`, and its parent.
fn stat_times(pid: u32) -> Option<(u64, u32)> {
    let f = stat_fields(pid)?;
    Some((
        f.get(11)? + f.get(12)? + f.get(13)? + f.get(14)?,
        u32::try_from(*f.get(1)?).ok()?,
    ))
}

/// utime + stime of `pid`, and its parent.
fn stat_times_self(pid: u32) -> Option<(u64, u32)> {
    let f = stat_fields(pid)?;
    Some((f.get(11)? + f.get(12)?, u32::try_from(*f.get(1)?).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_of_this_process_has_its_parent_and_some_cpu() {
        let me = std::process::id();
        // Burn a little CPU so that at least one tick is counted.
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(200) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        assert_ne!(x, 1);
        let (ticks, ppid) = stat_times(me).expect("/proc/self/stat");
        let (own, ppid2) = stat_times_self(me).expect("/proc/self/stat");
        assert_eq!(ppid, ppid2);
        assert!(ppid > 0 && ppid != me);
        assert!(own >= 1, "200 ms of spinning counted as {own} ticks");
        assert!(ticks >= own);
    }
}
