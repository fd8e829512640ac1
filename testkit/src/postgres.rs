//! A private PostgreSQL for the tests of the PostgreSQL spool.
//!
//! [`Postgres::start`] gives the server named by `SMTPW_TEST_DATABASE_URL` when set; otherwise it
//! starts one from Debian's `postgresql` package: `initdb` into a temporary directory, `pg_ctl
//! start` on a free loopback port (as the `postgres` user through `runuser` when the tests run as
//! root: PostgreSQL refuses to run as root), stopped with `pg_ctl -m immediate stop` and removed on
//! drop. Without either it returns `None` after saying loudly, on stderr, which test it skipped
//! and how to install PostgreSQL: a local `cargo test` still passes, CI (which installs the
//! package in `.ci/run`) always runs them.
//!
//! Each test takes a database of its own ([`Postgres::database`]), so tests share one server
//! without seeing each other's spool.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::proc::is_root;

/// The variable naming an existing server to test against instead of a private one
/// (`postgres://USER@HOST:PORT/DB`; the user must be allowed to create databases).
pub const URL_VAR: &str = "SMTPW_TEST_DATABASE_URL";

/// A PostgreSQL server for tests.
#[derive(Debug)]
pub struct Postgres {
    /// `postgres://USER@127.0.0.1:PORT` (no database part).
    base: String,
    /// The maintenance database's URL (to create the tests' databases).
    admin: String,
    private: Option<Private>,
}

#[derive(Debug)]
struct Private {
    bin: PathBuf,
    data: PathBuf,
    /// Removed after the server stops.
    _dir: tempfile::TempDir,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl Postgres {
    /// The shared server of this test process (started once, stopped when the last test holding
    /// it lets go), or `None` (said loudly on stderr, naming `test`) when there is none.
    pub fn shared(test: &str) -> Option<Arc<Postgres>> {
        static CURRENT: OnceLock<Mutex<Weak<Postgres>>> = OnceLock::new();
        let slot = CURRENT.get_or_init(|| Mutex::new(Weak::new()));
        let mut cur = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pg) = cur.upgrade() {
            return Some(pg);
        }
        let pg = Arc::new(Self::start(test)?);
        *cur = Arc::downgrade(&pg);
        Some(pg)
    }

    /// The server of `SMTPW_TEST_DATABASE_URL`, else a private one, else `None` (said loudly).
    pub fn start(test: &str) -> Option<Postgres> {
        if let Ok(url) = std::env::var(URL_VAR) {
            let base = match url.rfind('/') {
                Some(i) if i > "postgres://".len() => url[..i].to_string(),
                _ => url.clone(),
            };
            return Some(Postgres {
                base,
                admin: url,
                private: None,
            });
        }
        let Some(bin) = find_bin() else {
            eprintln!(
                "\n*** SKIPPED {test}: PostgreSQL is not installed (no initdb under \
                 /usr/lib/postgresql/*/bin nor on PATH). Install it with \
                 `apt-get install postgresql` (Debian), or set {URL_VAR}=postgres://USER@HOST:PORT/DB \
                 to test against a server you have. CI installs it and always runs these tests. ***\n"
            );
            return None;
        };
        Some(Self::start_private(bin))
    }

    fn start_private(bin: PathBuf) -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("smtpw-pg-")
            .tempdir()
            .expect("a temporary directory for PostgreSQL");
        let data = dir.path().join("data");
        let sock = dir.path().join("sock");
        std::fs::create_dir_all(&sock).unwrap();
        let root = is_root();
        if root {
            // PostgreSQL runs as `postgres`: it must own its directories.
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("running chown");
            assert!(
                st.success(),
                "chown -R postgres {} failed",
                dir.path().display()
            );
        }
        let as_pg = |exe: &str| {
            let mut c = if root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(bin.join(exe));
                c
            } else {
                Command::new(bin.join(exe))
            };
            c.stdin(Stdio::null());
            c
        };
        let out = as_pg("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data)
            .output()
            .expect("running initdb");
        assert!(
            out.status.success(),
            "initdb -D {} failed: {}",
            data.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = crate::proc::free_port();
        let log = dir.path().join("server.log");
        let opts = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c max_connections=200 \
             -c shared_buffers=64MB",
            sock.display()
        );
        let out = as_pg("pg_ctl")
            .args(["-w", "-t", "60", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-o", &opts, "start"])
            .output()
            .expect("running pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let base = format!("postgres://postgres@127.0.0.1:{port}");
        Postgres {
            admin: format!("{base}/postgres"),
            base,
            private: Some(Private {
                bin,
                data,
                _dir: dir,
            }),
        }
    }

    /// A new, empty database for one test; returns its URL.
    pub fn database(&self, tag: &str) -> String {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let tag: String = tag
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(30)
            .collect();
        let name = format!("t_{}_{}_{n}", std::process::id(), tag);
        self.psql(&format!("CREATE DATABASE {name}"));
        format!("{}/{name}", self.base)
    }

    /// Run one SQL statement on the maintenance database (panics on failure).
    pub fn psql(&self, sql: &str) -> String {
        psql(&self.admin, sql)
    }

    /// The server's data directory, when it is the tests' own.
    pub fn data_dir(&self) -> Option<&Path> {
        self.private.as_ref().map(|p| p.data.as_path())
    }
}

/// Run one SQL statement against `url` with `psql` and return its unaligned output.
pub fn psql(url: &str, sql: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("psql")
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                url,
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("running psql (apt-get install postgresql-client)");
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        // A server still starting says so; anything else is the test's error.
        if err.contains("starting up") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        panic!("psql {sql:?} failed: {err}");
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let Some(p) = &self.private else { return };
        let mut c = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(p.bin.join("pg_ctl"));
            c
        } else {
            Command::new(p.bin.join("pg_ctl"))
        };
        let _ = c
            .args(["-m", "immediate", "-w", "-D"])
            .arg(&p.data)
            .arg("stop")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The directory of `initdb` and `pg_ctl`: Debian's newest `/usr/lib/postgresql/N/bin`, else
/// wherever PATH has `initdb`.
fn find_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    if let Some((_, b)) = found.pop() {
        return Some(b);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
}
