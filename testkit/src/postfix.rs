//! A private Postfix instance for tests: a real SMTP peer nobody here wrote. Its own
//! `main.cf`/`master.cf` (see [`postfix_master`](crate::postfix_master)) and queue under a test
//! directory, smtpd on a loopback port with TLS from a [`mock_mta::TestCertificates`], relaying
//! what it accepts to 127.0.0.1:`sink` (a mock-mta). Stopped when dropped: `postfix stop`, then
//! a wait for its master's PID to go.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mock_mta::TestCertificates;

use crate::postfix_master::master_cf;
use crate::proc::free_port;

/// Why Postfix cannot be run here, or `None` when it can.
pub fn unavailable() -> Option<String> {
    // The effective user must be root: the master runs as root.
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        });
    if uid.as_deref() != Some("0") {
        return Some("a private Postfix instance needs root (its master runs as root)".into());
    }
    for b in ["postfix", "postconf"] {
        if !Path::new("/usr/sbin").join(b).is_file() {
            return Some(format!("/usr/sbin/{b} is missing"));
        }
    }
    if !Path::new("/etc/postfix/master.cf").is_file() {
        return Some("/etc/postfix/master.cf is missing".into());
    }
    None
}

/// A running instance.
pub struct PostfixInstance {
    dir: PathBuf,
    port: u16,
    running: bool,
}

fn postfix(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("/usr/sbin/postfix")
        .arg("-c")
        .arg(dir.join("etc"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running postfix: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "postfix {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(dir.join("maillog")).unwrap_or_default()
        ))
    }
}

impl PostfixInstance {
    /// Create and start an instance in `dir` (made world-traversable: Postfix's own user must
    /// reach its data directory), relaying to 127.0.0.1:`sink`, serving `certs`, with `extra`
    /// lines appended to main.cf (e.g. `smtpd_tls_security_level = encrypt`).
    pub fn start(
        dir: &Path,
        sink: u16,
        certs: &TestCertificates,
        extra: &str,
    ) -> Result<Self, String> {
        let io = |e: std::io::Error| e.to_string();
        let _ = std::fs::remove_dir_all(dir);
        for d in ["etc", "spool", "data"] {
            std::fs::create_dir_all(dir.join(d)).map_err(io)?;
        }
        let mut p = dir.to_path_buf();
        while let Some(parent) = p.parent().map(Path::to_path_buf) {
            if parent.as_os_str().is_empty() || parent == Path::new("/") {
                break;
            }
            if let Ok(m) = std::fs::metadata(&p) {
                let mode = m.permissions().mode();
                if mode & 0o011 != 0o011 {
                    let _ =
                        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode | 0o011));
                }
            }
            p = parent;
        }
        let st = Command::new("chown")
            .arg("postfix")
            .arg(dir.join("data"))
            .status()
            .map_err(io)?;
        if !st.success() {
            return Err(format!(
                "chown postfix {} failed",
                dir.join("data").display()
            ));
        }
        let port = free_port();
        let system = std::fs::read_to_string("/etc/postfix/master.cf").map_err(io)?;
        std::fs::write(dir.join("etc/master.cf"), master_cf(&system, port)).map_err(io)?;
        std::fs::write(dir.join("etc/cert.pem"), &certs.chain_pem).map_err(io)?;
        std::fs::write(dir.join("etc/key.pem"), &certs.key_pem).map_err(io)?;
        std::fs::set_permissions(
            dir.join("etc/key.pem"),
            std::fs::Permissions::from_mode(0o600),
        )
        .map_err(io)?;
        let d = dir.display();
        std::fs::write(
            dir.join("etc/main.cf"),
            format!(
                "compatibility_level = 3.6
queue_directory = {d}/spool
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = localhost
mydomain = test.example
myorigin = test.example
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains =
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:{sink}
message_size_limit = 0
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
syslog_name = postfix-test
alias_maps =
alias_database =
local_recipient_maps =
biff = no
smtputf8_enable = no
smtpd_tls_cert_file = {d}/etc/cert.pem
smtpd_tls_key_file = {d}/etc/key.pem
smtpd_tls_loglevel = 1
{extra}"
            ),
        )
        .map_err(io)?;
        postfix(dir, &["start"])?;
        let mut me = Self {
            dir: dir.to_path_buf(),
            port,
            running: true,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                let log = me.log();
                me.stop();
                return Err(format!(
                    "the Postfix instance does not listen on 127.0.0.1:{port}\n{log}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(me)
    }

    /// The port its smtpd listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    /// `postfix stop`, then wait (10 s at most) for its master's PID to go.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let pid = std::fs::read_to_string(self.dir.join("spool/pid/master.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        let _ = postfix(&self.dir, &["stop"]);
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

impl Drop for PostfixInstance {
    fn drop(&mut self) {
        self.stop();
    }
}
