//! A private Postfix instance for `cargo xtask bench`: the peer users would pick instead of smtpw.
//!
//! Its own `main.cf`/`master.cf` (from the system's master.cf, chroot off) and queue, smtpd on
//! a loopback port only (never port 25), relaying everything to the bench's smtp-sink with the
//! cell's connection count and recipients per message. Each run pre-loads the queue (smtp-source
//! into its smtpd; a header check puts every message on hold), then releases the hold
//! (`postsuper -H ALL`, `postkick ... qmgr FAD` to scan at once) and times until the queue is
//! empty. The instance is stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::bench::{free_port, is_root, Cell, Sample, Tools};

#[path = "../../testkit/src/postfix_master.rs"]
mod postfix_master;

const QUEUES: [&str; 5] = ["maildrop", "incoming", "active", "deferred", "hold"];

/// Why Postfix cannot be run here, or `None` when it can.
pub fn unavailable() -> Option<String> {
    if !is_root() {
        return Some("the private Postfix instance needs root (its master runs as root)".into());
    }
    for b in ["postfix", "postsuper", "postkick", "postconf"] {
        if !Path::new("/usr/sbin").join(b).is_file() {
            return Some(format!("/usr/sbin/{b} is missing"));
        }
    }
    if !Path::new("/etc/postfix/master.cf").is_file() {
        return Some("/etc/postfix/master.cf is missing".into());
    }
    None
}

pub struct Instance {
    dir: PathBuf,
    port: u16,
    sent: u64,
    running: bool,
}

fn postfix(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("/usr/sbin/postfix")
        .arg("-c")
        .arg(dir.join("etc"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running postfix")?;
    if !out.status.success() {
        bail!(
            "postfix {} failed ({}); see {}",
            args.join(" "),
            out.status,
            dir.join("maillog").display()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Instance {
    /// Create and start an instance in `dir` relaying to 127.0.0.1:`sink` (the sink itself, or
    /// the latency proxy in front of it in a round-trip cell).
    pub fn start(dir: &Path, sink: u16, cell: &Cell) -> anyhow::Result<Self> {
        let _ = std::fs::remove_dir_all(dir);
        for d in ["etc", "spool", "data"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        let st = Command::new("chown")
            .arg("postfix")
            .arg(dir.join("data"))
            .status()?;
        if !st.success() {
            bail!("chown postfix {} failed", dir.join("data").display());
        }
        let port = free_port()?;
        let master = std::fs::read_to_string("/etc/postfix/master.cf")?;
        let mc = postfix_master::master_cf(&master, port);
        std::fs::write(dir.join("etc/master.cf"), mc)?;
        let d = dir.display();
        let w = cell.workers;
        let r = cell.rcpts;
        std::fs::write(
            dir.join("etc/main.cf"),
            format!(
                "compatibility_level = 3.6
queue_directory = {d}/spool
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix-bench.example
mydomain = bench.example
myorigin = bench.example
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains =
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:{sink}
default_destination_concurrency_limit = {w}
initial_destination_concurrency = {w}
default_destination_recipient_limit = {r}
smtp_destination_recipient_limit = {r}
default_process_limit = {procs}
message_size_limit = 0
header_checks = regexp:{d}/etc/hold
smtp_connection_cache_on_demand = yes
smtp_connection_cache_destinations = [127.0.0.1]:{sink}
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
syslog_name = postfix-bench
alias_maps =
alias_database =
local_recipient_maps =
biff = no
smtputf8_enable = no
",
                procs = w + 20
            ),
        )?;
        std::fs::write(dir.join("etc/hold"), "/^From:/ HOLD\n")?;
        postfix(dir, &["start"])?;
        let mut me = Instance {
            dir: dir.to_path_buf(),
            port,
            sent: 0,
            running: true,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                me.stop();
                bail!("the Postfix instance does not listen on 127.0.0.1:{port}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(me)
    }

    fn queued(&self) -> u64 {
        QUEUES
            .iter()
            .map(|q| count_files(&self.dir.join("spool").join(q)))
            .sum()
    }

    fn sent_lines(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("maillog"))
            .map(|s| s.matches("status=sent").count() as u64)
            .unwrap_or(0)
    }

    /// Pre-load the queue (on hold), release it, time until it is empty.
    pub fn run(&mut self, tools: &Tools, cell: &Cell, limit: Duration) -> anyhow::Result<Sample> {
        let payload = cell.size.saturating_sub(150).max(1);
        let st = Command::new(&tools.source)
            .args(["-d", "-s"])
            .arg(cell.workers.to_string())
            .arg("-m")
            .arg(cell.messages.to_string())
            .arg("-r")
            .arg(cell.rcpts.to_string())
            .arg("-l")
            .arg(payload.to_string())
            .args(["-M", "bench.example", "-f", "bench-owner@bench.example"])
            .args(["-t", "u@d.bench.example"])
            .arg(format!("127.0.0.1:{}", self.port))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .context("starting smtp-source")?;
        if !st.success() {
            bail!("smtp-source into Postfix failed ({st})");
        }
        let hold = self.dir.join("spool/hold");
        let deadline = Instant::now() + limit;
        while count_files(&hold) < cell.messages {
            if Instant::now() > deadline {
                bail!(
                    "Postfix holds {} of {} messages",
                    count_files(&hold),
                    cell.messages
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let etc = self.dir.join("etc");
        let t0 = Instant::now();
        let st = Command::new("/usr/sbin/postsuper")
            .arg("-c")
            .arg(&etc)
            .args(["-H", "ALL"])
            .stderr(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("postsuper -H ALL failed ({st})");
        }
        // Ask the queue manager to scan the deferred queue now (as `postqueue -f` does). A kick
        // that finds qmgr busy may fail with SIGPIPE; qmgr then scans on its own shortly.
        for _ in 0..3 {
            let st = Command::new("/usr/sbin/postkick")
                .arg("-c")
                .arg(&etc)
                .args(["public", "qmgr", "FAD"])
                .stderr(Stdio::null())
                .status()?;
            if st.success() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        while self.queued() > 0 {
            if t0.elapsed() > limit {
                bail!(
                    "Postfix still queues {} messages after {limit:?}",
                    self.queued()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let secs = t0.elapsed().as_secs_f64();
        // The log is written by a separate daemon: give it a moment to catch up.
        let want = self.sent + cell.recipients();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut sent = self.sent_lines();
        while sent < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            sent = self.sent_lines();
        }
        if sent != want {
            bail!(
                "Postfix logged {} sent recipients of {}; see {}",
                sent - self.sent,
                cell.recipients(),
                self.dir.join("maillog").display()
            );
        }
        self.sent = sent;
        Ok(Sample {
            secs,
            rss_kb: 0,
            cpu: 0.0,
            db_cpu: 0.0,
            db_active: 0.0,
        })
    }

    pub fn stop(&mut self) {
        if self.running {
            self.running = false;
            let _ = postfix(&self.dir, &["stop"]);
            // `postfix stop` returns before the master has gone: wait for it.
            let pid = std::fs::read_to_string(self.dir.join("spool/pid/master.pid"))
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok());
            let alive = |pid: u32| {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| !s.contains(") Z "))
                    .unwrap_or(false)
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while pid.is_some_and(alive) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.stop();
    }
}

fn count_files(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in rd.flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => n += count_files(&e.path()),
            Ok(_) => n += 1,
            Err(_) => {}
        }
    }
    n
}
