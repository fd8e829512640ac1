//! `cargo xtask bench`: the end-to-end throughput harness (docs/PERFORMANCE.md has its results).
//!
//! Everything runs on 127.0.0.1, every run is bounded in messages and in time (a run that
//! overstays [`RUN_LIMIT`] is killed and reported). Per cell (workers x recipients per copy x
//! message size), the variants run alternately, `--runs` times each, and the report gives medians:
//!
//! - `physical`: `smtp-source` -> `smtp-sink` (Postfix's own tools; no PIPELINING in smtp-source);
//! - `smtpw`: a pre-loaded spool, `smtpw run --until-empty` -> the same `smtp-sink`;
//! - `mock` / `mock+journal`: smtpw -> mock-mta without / with its JSON-lines journal;
//! - `wan` / `wan-nopipe`: smtpw -> mock-mta answering every write 1 ms late, with and without
//!   PIPELINING;
//! - `smtpw+scrape`: as `smtpw`, with the admin endpoint scraped (`GET /metrics`) every 100 ms.
//! - `tls`: smtpw -> mock-mta over STARTTLS (`tls = "required"` in a settings file trusting the
//!   CA the mock generates): the cost of TLS next to `mock`.
//! - `postgres`: as `smtpw`, on a PostgreSQL spool (a private cluster, see [`crate::bench_pg`]).
//!
//! Round-trip cells (labels ending in `-rttN`, N ms) put `latency-proxy` (benches/src/bin) in
//! front of the relay: `physical`, `smtpw` and `postfix` reach the same `smtp-sink` through it,
//! `wan` reaches mock-mta (CHUNKING + PIPELINING, no reply latency of its own) through it. Their
//! message counts are sized by the RTT so that a run takes seconds, not minutes.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use clap::Args;

use crate::{cargo, run, target_dir};

/// The round-trip times of the round-trip cells, ms.
const RTTS_MS: [u32; 3] = [1, 10, 50];

/// Longest a single run may take before it is killed.
pub(crate) const RUN_LIMIT: Duration = Duration::from_secs(180);

#[derive(Args)]
pub struct BenchArgs {
    /// A small subset of the matrix (about a minute).
    #[arg(long)]
    quick: bool,
    /// Alternating runs per variant and cell (the report gives medians).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Only cells whose label (e.g. `w10-r100-20KB`, `w10-r1-2KB-rtt10`) contains one of these
    /// texts (comma-separated); `rtt` selects every round-trip cell.
    #[arg(long, value_name = "TEXT,..")]
    filter: Option<String>,
    /// Only these variants (comma-separated names: physical, smtpw, baseline, postfix,
    /// postgres, mock, mock+journal, wan, wan-nopipe, smtpw+scrape, tls).
    #[arg(long, value_name = "NAME,..")]
    variants: Option<String>,
    /// Recipients per cell and run (before the per-cell bounds).
    #[arg(long, value_name = "N")]
    recipients: Option<u64>,
    /// Leave out the round-trip cells (1, 10, 50 ms RTT through latency-proxy).
    #[arg(long)]
    no_rtt: bool,
    /// Messages per connection in the round-trip cells, instead of what the slowest peer sends
    /// in about 6 s (`--quick`: 1.5 s); at most 3000. More messages weigh the connection setup
    /// less (a windowed peer's messages per round trip).
    #[arg(long, value_name = "N")]
    rtt_per_conn: Option<u64>,
    /// Also run the memory-at-scale test: one job of 100,000 and one of 1,000,000 recipients.
    #[arg(long)]
    scale: bool,
    /// Only the memory-at-scale test.
    #[arg(long)]
    scale_only: bool,
    /// Skip `cargo build --release` (use the binaries already built).
    #[arg(long)]
    no_build: bool,
    /// A/B: also run this smtpw binary (variant `baseline`, same workload and sink) alternating
    /// with the current one, for before/after figures of an optimisation.
    #[arg(long, value_name = "SMTPW")]
    baseline: Option<PathBuf>,
    /// Also measure the SMTP listener's acceptance rate (variant `ingest-smtp`: smtp-source ->
    /// `smtpw run --listen`, against smtp-source -> smtp-sink; and a pipelining client).
    #[arg(long)]
    ingest_smtp: bool,
    /// Only the ingest-smtp measurement.
    #[arg(long)]
    ingest_smtp_only: bool,
    /// Where to write report.md and the charts (default: <target dir>/bench).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// The Postfix test tools, found or not.
pub(crate) struct Tools {
    sink: PathBuf,
    pub(crate) source: PathBuf,
}

fn find_tool(name: &str) -> Option<PathBuf> {
    [
        "/usr/sbin",
        "/usr/lib/postfix",
        "/usr/libexec/postfix",
        "/usr/local/sbin",
    ]
    .iter()
    .map(|d| Path::new(d).join(name))
    .find(|p| p.is_file())
}

fn find_tools() -> Option<Tools> {
    Some(Tools {
        sink: find_tool("smtp-sink")?,
        source: find_tool("smtp-source")?,
    })
}

const INSTALL_HINT: &str = "\
xtask bench needs Postfix's test tools smtp-sink and smtp-source (Debian package `postfix`),
looked for in /usr/sbin, /usr/lib/postfix, /usr/libexec/postfix and /usr/local/sbin.
Nothing is installed for you. On Debian or Ubuntu, as root:

    apt-get update
    echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get install -y postfix

(\"No configuration\" leaves the system's mail setup alone; if the package starts a daemon on
port 25, `postfix stop` stops it: the bench never uses port 25.)";

/// The binaries under test.
pub(crate) struct Bins {
    pub(crate) smtpw: PathBuf,
    pub(crate) baseline: Option<PathBuf>,
    mock: PathBuf,
    load: PathBuf,
    proxy: PathBuf,
    pub(crate) postgres: PathBuf,
}

/// One cell of the matrix.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cell {
    pub(crate) workers: u32,
    pub(crate) rcpts: u64,
    pub(crate) size: usize,
    /// Messages (transactions) per run.
    pub(crate) messages: u64,
    /// Round-trip time added by `latency-proxy` in front of the relay, ms (0: none).
    pub(crate) rtt_ms: u32,
}

/// Round trips the slowest peer needs per message: smtp-source has no PIPELINING, so EHLO
/// aside it waits for MAIL, each RCPT, DATA, the end of data (and reconnects now and then).
fn round_trips_per_message(rcpts: u64) -> u64 {
    5 + rcpts
}

impl Cell {
    fn new(workers: u32, rcpts: u64, size: usize, target_rcpts: u64) -> Self {
        let w = u64::from(workers);
        // Enough copies for every worker twice over, about `target_rcpts` recipients, at most
        // 300 messages per worker (a single connection must not take minutes) and 64 MB of
        // message bytes per run.
        let bytes_cap = (64 << 20) / size as u64;
        let messages = target_rcpts
            .div_ceil(rcpts)
            .max(2 * w)
            .min(300 * w)
            .min(bytes_cap)
            .max(w);
        Cell {
            workers,
            rcpts,
            size,
            messages,
            rtt_ms: 0,
        }
    }
    /// A round-trip cell: 2 KB messages, as many per connection as the slowest peer sends in
    /// about `budget` at `rtt_ms` (at least `min_per_conn`, at most 300).
    /// `per_conn` instead, when given (at most 3000).
    fn rtt(
        workers: u32,
        rcpts: u64,
        rtt_ms: u32,
        budget: Duration,
        min_per_conn: u64,
        per_conn: Option<u64>,
    ) -> Self {
        let per_msg = round_trips_per_message(rcpts) as f64 * f64::from(rtt_ms.max(1)) / 1000.0;
        let sized = ((budget.as_secs_f64() / per_msg) as u64).clamp(min_per_conn, 300);
        let per_conn = per_conn.map_or(sized, |n| n.clamp(1, 3000));
        Cell {
            workers,
            rcpts,
            size: 2048,
            messages: per_conn * u64::from(workers),
            rtt_ms,
        }
    }
    pub(crate) fn label(&self) -> String {
        let mut l = format!("w{}-r{}-{}KB", self.workers, self.rcpts, self.size / 1024);
        if self.rtt_ms > 0 {
            l.push_str(&format!("-rtt{}", self.rtt_ms));
        }
        l
    }
    pub(crate) fn recipients(&self) -> u64 {
        self.messages * self.rcpts
    }
    fn bytes(&self) -> u64 {
        self.messages * self.size as u64
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Physical,
    Smtpw,
    Baseline,
    Postfix,
    Mock,
    MockJournal,
    Wan,
    WanNoPipe,
    Scraped,
    Tls,
    Postgres,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Physical => "physical",
            Variant::Smtpw => "smtpw",
            Variant::Baseline => "baseline",
            Variant::Postfix => "postfix",
            Variant::Mock => "mock",
            Variant::MockJournal => "mock+journal",
            Variant::Wan => "wan",
            Variant::WanNoPipe => "wan-nopipe",
            Variant::Scraped => "smtpw+scrape",
            Variant::Tls => "tls",
            Variant::Postgres => "postgres",
        }
    }
    fn what(self) -> &'static str {
        match self {
            Variant::Physical => "smtp-source -> smtp-sink (same connections, recipients, size)",
            Variant::Smtpw => "smtpw run --until-empty (pre-loaded spool) -> smtp-sink",
            Variant::Baseline => "as smtpw, with the --baseline binary (before an optimisation)",
            Variant::Postfix => {
                "a private Postfix instance (own config and queue, smtpd on a loopback port) \
                 relaying to smtp-sink: queue pre-loaded on hold, timed from release to empty"
            }
            Variant::Mock => "smtpw -> mock-mta, no journal",
            Variant::MockJournal => "smtpw -> mock-mta with --journal (JSON lines)",
            Variant::Wan => {
                "smtpw -> mock-mta replying 1 ms late per write, PIPELINING (round-trip cells: \
                 through latency-proxy instead, no reply latency; the mock offers CHUNKING too)"
            }
            Variant::WanNoPipe => "as wan, smtpw run --no-pipelining",
            Variant::Scraped => {
                "as smtpw, with --admin and GET /metrics every 100 ms during the run"
            }
            Variant::Tls => {
                "smtpw -> mock-mta over STARTTLS (tls = \"required\", the mock's CA trusted)"
            }
            Variant::Postgres => {
                "as smtpw, on a PostgreSQL spool (private cluster; the pre-loaded jobs moved in \
                 with `smtpw spool copy`, each run on a fresh copy of that database)"
            }
        }
    }
}

/// What one run measured.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sample {
    /// Seconds from start until the last recipient was recorded (smtpw) or the tool exited.
    pub(crate) secs: f64,
    /// Peak RSS of the engine, KB (0 when not measured).
    pub(crate) rss_kb: u64,
    /// User + system CPU seconds of the engine.
    pub(crate) cpu: f64,
    /// User + system CPU seconds of the database cluster's processes meanwhile (`postgres`).
    pub(crate) db_cpu: f64,
    /// Seconds the database spent executing smtpw's statements (`postgres`: the run's
    /// database's `pg_stat_database.active_time`).
    pub(crate) db_active: f64,
}

struct Row {
    cell: Cell,
    variant: Variant,
    samples: Vec<Sample>,
    failed: Option<String>,
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl Row {
    fn med(&self, f: impl Fn(&Sample) -> f64) -> f64 {
        let mut v: Vec<f64> = self.samples.iter().map(f).collect();
        median(&mut v)
    }
    fn secs(&self) -> f64 {
        self.med(|s| s.secs)
    }
    /// (max - min) / median of the run times, percent.
    fn spread(&self) -> f64 {
        let v: Vec<f64> = self.samples.iter().map(|s| s.secs).collect();
        let (lo, hi) = v
            .iter()
            .fold((f64::INFINITY, 0.0f64), |(l, h), &x| (l.min(x), h.max(x)));
        100.0 * (hi - lo) / self.secs()
    }
    fn rcpts_per_sec(&self) -> f64 {
        self.cell.recipients() as f64 / self.secs()
    }
}

/// Spawned processes are killed on drop: nothing outlives the bench.
pub(crate) struct Guard(pub(crate) Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

pub(crate) fn wait_listening(port: u16, child: &mut Child, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(st) = child.try_wait()? {
            bail!("{what} exited before listening ({st})");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{what} is not listening on 127.0.0.1:{port} after 10 s")
}

pub(crate) fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

pub(crate) fn start_sink(tools: &Tools) -> anyhow::Result<(Guard, u16)> {
    let port = free_port()?;
    let mut c = Command::new(&tools.sink);
    if is_root() {
        // smtp-sink refuses to keep root privileges.
        c.args(["-u", "nobody"]);
    }
    c.args(["-m", "512", "-t", "60"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("1024")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = c.spawn().context("starting smtp-sink")?;
    wait_listening(port, &mut child, "smtp-sink")?;
    Ok((Guard(Some(child)), port))
}

/// A mock-mta on a free port; with `tls`, offering STARTTLS with a certificate signed by a CA
/// it writes to `dir/mock-ca.pem`.
fn start_mock(
    bins: &Bins,
    dir: &Path,
    journal: bool,
    latency_ms: u64,
    tls: bool,
) -> anyhow::Result<(Guard, u16)> {
    let port = free_port()?;
    let toml = dir.join("mock.toml");
    let mut text = format!("[faults]\nreply_latency_ms = {latency_ms}\n");
    if tls {
        text.push_str(&format!(
            "[tls]\nstarttls = true\nca_file_out = {:?}\n",
            dir.join("mock-ca.pem").display().to_string()
        ));
    }
    std::fs::write(&toml, text)?;
    let mut c = Command::new(&bins.mock);
    c.arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--config")
        .arg(&toml)
        .args([
            "--max-recipients",
            "0",
            "--max-message-kb",
            "0",
            "--max-session-kb",
            "0",
        ]);
    if journal {
        c.arg("--journal").arg(dir.join("mock-journal.jsonl"));
    }
    c.env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = c.spawn().context("starting mock-mta")?;
    wait_listening(port, &mut child, "mock-mta")?;
    Ok((Guard(Some(child)), port))
}

/// `latency-proxy` adding `rtt_ms` of round-trip time in front of 127.0.0.1:`target`. It stops
/// when dropped, and by itself when this process exits (its stdin closes) or after an hour.
fn start_proxy(bins: &Bins, target: u16, rtt_ms: u32) -> anyhow::Result<(Guard, u16)> {
    let mut child = Command::new(&bins.proxy)
        .arg("--target")
        .arg(format!("127.0.0.1:{target}"))
        .args(["--rtt-ms", &rtt_ms.to_string(), "--for-secs", "3600"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting latency-proxy")?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    // The port is printed once the socket listens.
    let guard = Guard(Some(child));
    let port: u16 = match line.trim().parse() {
        Ok(p) => p,
        Err(_) => bail!("latency-proxy printed {line:?}, expected its port"),
    };
    Ok((guard, port))
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Ctrl-C / SIGTERM: stop at the next check, so that every guard (sink, mock, Postfix
/// instance) is dropped and nothing is left running.
#[allow(unsafe_code)]
fn catch_interrupts() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

pub(crate) fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Peak resident set of a running process (`VmHWM`, KB), 0 once it has exited.
fn vm_hwm(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse().ok())
        })
        .unwrap_or(0)
}

/// Resource use of a finished child, from `wait4`.
pub(crate) struct Usage {
    pub(crate) ok: bool,
    pub(crate) rss_kb: u64,
    pub(crate) cpu: f64,
}

/// Wait for `child` (killing it after `limit`) and return its exit status and resource use.
#[allow(unsafe_code)]
pub(crate) fn wait_usage(child: &mut Child, limit: Duration) -> anyhow::Result<Usage> {
    let deadline = Instant::now() + limit;
    let pid = i32::try_from(child.id()).context("pid")?;
    // ru_maxrss counts the parent's pages the child had before exec: sample the child's own
    // high-water mark instead (every 2 ms; it only grows, so only the last moments can be missed).
    let mut hwm = 0u64;
    loop {
        hwm = hwm.max(vm_hwm(pid));
        let mut status: libc::c_int = 0;
        // SAFETY: an all-zero `rusage` is a valid value of that plain C struct.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `pid` is our own unreaped child; `status` and `ru` are valid for writes.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            return Ok(Usage {
                ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                rss_kb: hwm,
                cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
            });
        }
        if r < 0 {
            bail!("wait4: {}", std::io::Error::last_os_error());
        }
        let interrupted = INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed);
        if interrupted || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            if interrupted {
                bail!("interrupted");
            }
            bail!("killed after {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The SITE.CFG of an smtpw run: `workers` workers to the relay on `port`, and MAXBSMTP the
/// cell's recipients per message but at least LISTSERV's default (100): a mail-merge site keeps
/// its usual MAXBSMTP, its messages just have one recipient each. (MAXBSMTP also bounds the
/// recipients a worker claims ahead for one connection: with MAXBSMTP=1 a worker could not
/// pipeline single-recipient messages at all.)
pub(crate) fn site_cfg(
    dir: &Path,
    port: u16,
    workers: u32,
    max_bsmtp: u64,
) -> anyhow::Result<PathBuf> {
    let max_bsmtp = max_bsmtp.max(100);
    let p = dir.join("SITE.CFG");
    std::fs::write(
        &p,
        format!(
            "NODE=BENCH.EXAMPLE\r\nSMTP_FORWARD=127.0.0.1:{port}\r\n\
             SMTP_FORWARD_1={workers}*127.0.0.1:{port}\r\nMAXBSMTP={max_bsmtp}\r\n"
        ),
    )?;
    Ok(p)
}

pub(crate) fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let t = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &t)?;
        } else {
            std::fs::copy(e.path(), &t)?;
        }
    }
    Ok(())
}

/// Check that the ledger at `ledger` records every recipient of `cell` delivered (and nothing
/// else), and return the seconds from `start` to its last write (at most `wall`): the moment
/// smtpw's queue became empty.
pub(crate) fn delivered_secs(
    ledger: &Path,
    cell: &Cell,
    dir: &Path,
    start: SystemTime,
    wall: f64,
) -> anyhow::Result<f64> {
    let (lines, delivered) = ledger_counts(ledger)?;
    if delivered != cell.recipients() || lines != delivered {
        bail!(
            "smtpw recorded {delivered} delivered of {} recipients ({lines} ledger lines); see {}",
            cell.recipients(),
            dir.display()
        );
    }
    let last = std::fs::metadata(ledger)?.modified()?;
    Ok(last
        .duration_since(start)
        .map(|d| d.as_secs_f64())
        .unwrap_or(wall)
        .min(wall))
}

/// Whether a ledger line records a delivered recipient.
pub(crate) fn is_delivered(line: &str) -> bool {
    line.contains("\"outcome\":\"delivered\"")
}

/// Count the ledger's lines and those of delivered recipients.
fn ledger_counts(path: &Path) -> anyhow::Result<(u64, u64)> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (mut lines, mut delivered) = (0, 0);
    for l in BufReader::with_capacity(1 << 20, f).lines() {
        let l = l?;
        lines += 1;
        if is_delivered(&l) {
            delivered += 1;
        }
    }
    Ok((lines, delivered))
}

/// `smtpw run --until-empty` on a copy of the pre-loaded spool `tpl`; the time is from the start
/// of the process to the last ledger write (the moment the queue became empty).
/// Scrape `GET /metrics` at `addr` every [`SCRAPE_EVERY`] until `stop`; returns the scrapes
/// answered.
fn scrape_metrics(
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> u64 {
    use std::io::Write as _;
    let mut answered = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let t = Instant::now();
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            let mut body = Vec::new();
            if s.write_all(req.as_bytes()).is_ok()
                && s.read_to_end(&mut body).is_ok()
                && body.starts_with(b"HTTP/1.1 200")
            {
                answered += 1;
            }
        }
        std::thread::sleep(SCRAPE_EVERY.saturating_sub(t.elapsed()));
    }
    answered
}

/// How often `smtpw+scrape` scrapes the metrics.
const SCRAPE_EVERY: Duration = Duration::from_millis(100);

fn run_smtpw(
    smtpw: &Path,
    tpl: &Path,
    dir: &Path,
    port: u16,
    cell: &Cell,
    pipelining: bool,
    settings: Option<&Path>,
) -> anyhow::Result<Sample> {
    let how = How {
        pipelining,
        scrape: false,
        settings,
    };
    run_smtpw_with(smtpw, tpl, dir, port, cell, how)
}

/// How `smtpw run` is started for a sample.
struct How<'a> {
    pipelining: bool,
    /// Scrape its admin endpoint every [`SCRAPE_EVERY`] meanwhile.
    scrape: bool,
    /// A settings file (`--settings`).
    settings: Option<&'a Path>,
}

fn run_smtpw_with(
    smtpw: &Path,
    tpl: &Path,
    dir: &Path,
    port: u16,
    cell: &Cell,
    how: How<'_>,
) -> anyhow::Result<Sample> {
    let How {
        pipelining,
        scrape,
        settings,
    } = how;
    let _ = std::fs::remove_dir_all(dir);
    let spool = dir.join("spool");
    copy_dir(tpl, &spool)?;
    let cfg = site_cfg(dir, port, cell.workers, cell.rcpts)?;
    let mut c = Command::new(smtpw);
    c.arg("run")
        .arg("--config")
        .arg(&cfg)
        .arg("--spool")
        .arg(&spool)
        .arg("--until-empty");
    if !pipelining {
        c.arg("--no-pipelining");
    }
    let admin: std::net::SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    if scrape {
        c.arg("--admin").arg(admin.to_string());
    }
    if let Some(st) = settings {
        c.arg("--settings").arg(st);
    }
    c.env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("smtpw.log"))?);
    let start = SystemTime::now();
    let t0 = Instant::now();
    let mut child = c.spawn().context("starting smtpw")?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraper = scrape.then(|| {
        let stop = stop.clone();
        std::thread::spawn(move || scrape_metrics(admin, stop))
    });
    let u = wait_usage(&mut child, RUN_LIMIT);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let scrapes = scraper.map(|t| t.join().unwrap_or(0));
    let u = u?;
    let wall = t0.elapsed().as_secs_f64();
    if let Some(n) = scrapes {
        // At least one scrape per second of the run: the endpoint was really read meanwhile.
        if (n as f64) < wall.floor() {
            bail!(
                "only {n} scrapes answered in {wall:.1} s; see {}",
                dir.join("smtpw.log").display()
            );
        }
        eprintln!("    smtpw+scrape: {n} scrapes in {wall:.1} s");
    }
    if !u.ok {
        bail!("smtpw failed; see {}", dir.join("smtpw.log").display());
    }
    let secs = delivered_secs(&spool.join("ledger.jsonl"), cell, dir, start, wall)?;
    Ok(Sample {
        secs,
        rss_kb: u.rss_kb,
        cpu: u.cpu,
        db_cpu: 0.0,
        db_active: 0.0,
    })
}

pub(crate) fn run_source(tools: &Tools, port: u16, cell: &Cell) -> anyhow::Result<Sample> {
    // smtp-source adds its own headers (From, To, Date, Message-Id: about 150 bytes).
    let payload = cell.size.saturating_sub(150).max(1);
    let mut c = Command::new(&tools.source);
    c.args(["-d", "-s"])
        .arg(cell.workers.to_string())
        .arg("-m")
        .arg(cell.messages.to_string())
        .arg("-r")
        .arg(cell.rcpts.to_string())
        .arg("-l")
        .arg(payload.to_string())
        .args(["-M", "bench.example", "-f", "bench-owner@bench.example"])
        .args(["-t", "u@d.bench.example"])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = c.spawn().context("starting smtp-source")?;
    let mut err = child.stderr.take();
    let u = wait_usage(&mut child, RUN_LIMIT)?;
    let secs = t0.elapsed().as_secs_f64();
    if !u.ok {
        let mut s = String::new();
        if let Some(e) = &mut err {
            let _ = e.read_to_string(&mut s);
        }
        bail!("smtp-source failed: {}", s.trim());
    }
    Ok(Sample {
        secs,
        rss_kb: u.rss_kb,
        cpu: u.cpu,
        db_cpu: 0.0,
        db_active: 0.0,
    })
}

/// Ingest figures of a pre-load.
#[derive(Default, Clone, Copy)]
struct Ingest {
    secs: f64,
    recipients: u64,
}

fn preload(bins: &Bins, dir: &Path, cell: &Cell) -> anyhow::Result<Ingest> {
    let _ = std::fs::remove_dir_all(dir);
    let out = Command::new(&bins.load)
        .arg("preload")
        .arg("--spool")
        .arg(dir)
        .args(["--jobs", &cell.messages.to_string()])
        .args(["--rcpts", &cell.rcpts.to_string()])
        .args(["--size", &cell.size.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .context("starting bench-load")?;
    if !out.status.success() {
        bail!("bench-load preload failed ({})", out.status);
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("bench-load printed no JSON")?;
    Ok(Ingest {
        secs: v["ingest_secs"].as_f64().unwrap_or(f64::NAN),
        recipients: v["recipients"].as_u64().unwrap_or(0),
    })
}

fn build(no_build: bool, baseline: Option<PathBuf>) -> anyhow::Result<Bins> {
    if !no_build {
        let mut b = cargo();
        b.args([
            "build",
            "--release",
            "-p",
            "smtpw",
            "-p",
            "mock-mta",
            "-p",
            "benches",
            "--bin",
            "smtpw",
            "--bin",
            "mock-mta",
            "--bin",
            "bench-load",
            "--bin",
            "latency-proxy",
            "--bin",
            "bench-postgres",
        ]);
        run(
            b,
            "cargo build --release (smtpw, mock-mta, bench-load, latency-proxy, bench-postgres)",
        )?;
    }
    let rel = target_dir()?.join("release");
    let exe = |n: &str| rel.join(format!("{n}{}", std::env::consts::EXE_SUFFIX));
    let bins = Bins {
        smtpw: exe("smtpw"),
        baseline,
        mock: exe("mock-mta"),
        load: exe("bench-load"),
        proxy: exe("latency-proxy"),
        postgres: exe("bench-postgres"),
    };
    for p in [
        &bins.smtpw,
        &bins.mock,
        &bins.load,
        &bins.proxy,
        &bins.postgres,
    ]
    .into_iter()
    .chain(bins.baseline.as_ref())
    {
        if !p.is_file() {
            bail!("{} is missing (run without --no-build)", p.display());
        }
    }
    Ok(bins)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map_or_else(
            || "?".into(),
            |k| format!("{:.1} GiB", k as f64 / 1048576.0),
        );
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{cores} CPUs ({cpu}), {mem} RAM, load average at start {}",
        load.join(" ")
    )
}

pub fn bench(a: BenchArgs) -> anyhow::Result<ExitCode> {
    let Some(tools) = find_tools() else {
        eprintln!("{INSTALL_HINT}");
        return Ok(ExitCode::from(2));
    };
    let bins = build(a.no_build, a.baseline.clone())?;
    catch_interrupts();
    let out = match &a.out {
        Some(o) => o.clone(),
        None => target_dir()?.join("bench"),
    };
    let work = out.join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let runs = a.runs.max(1);
    let started = Instant::now();
    let machine = machine();
    eprintln!("xtask bench: {machine}");

    let mut md = String::new();
    let _ = writeln!(md, "# smtpw benchmark report\n");
    let _ = writeln!(md, "- machine: {machine}");
    let _ = writeln!(
        md,
        "- command: `cargo xtask bench{}` ({} alternating runs per variant and cell; medians)",
        std::env::args()
            .skip(2)
            .map(|s| format!(" {s}"))
            .collect::<String>(),
        runs
    );
    let _ = writeln!(
        md,
        "- smtp-sink: {}, smtp-source: {}",
        tools.sink.display(),
        tools.source.display()
    );

    if a.ingest_smtp || a.ingest_smtp_only {
        crate::bench_listen::ingest_smtp(
            &tools,
            &bins.smtpw,
            bins.baseline.as_deref(),
            &work,
            runs,
            &mut md,
        )?;
    }
    if !a.scale_only && !a.ingest_smtp_only {
        let rows = matrix(&a, &tools, &bins, &work, runs, &mut md)?;
        std::fs::write(out.join("chart.svg"), chart(&rows))?;
        let _ = writeln!(md, "\n![recipients/s per cell](chart.svg)\n");
    }
    if a.scale || a.scale_only {
        scale(&tools, &bins, &work, &mut md)?;
    }
    let _ = writeln!(
        md,
        "\nTotal bench time: {:.0} s.",
        started.elapsed().as_secs_f64()
    );
    std::fs::write(out.join("report.md"), &md)?;
    println!("{md}");
    eprintln!("xtask bench: wrote {}", out.join("report.md").display());
    let _ = std::fs::remove_dir_all(&work);
    Ok(ExitCode::SUCCESS)
}

fn cells(a: &BenchArgs) -> Vec<(Cell, Vec<Variant>)> {
    use Variant::*;
    let target = a
        .recipients
        .unwrap_or(if a.quick { 20_000 } else { 100_000 });
    let mut v = Vec::new();
    if a.quick {
        for (w, r, s) in [
            (10, 100, 20 * 1024),
            (10, 1, 2 * 1024),
            (32, 1, 2 * 1024),
            (1, 1000, 2 * 1024),
        ] {
            let vars = match (w, r) {
                (10, 100) => vec![
                    Physical,
                    Smtpw,
                    Scraped,
                    Postfix,
                    Postgres,
                    Mock,
                    MockJournal,
                    Wan,
                    WanNoPipe,
                    Tls,
                ],
                // mock and wan: issue 12's latency ratio at one recipient per copy.
                (10, 1) => vec![Physical, Smtpw, Postfix, Postgres, Mock, Wan],
                (32, 1) => vec![Physical, Smtpw, Postfix],
                _ => vec![Physical, Smtpw],
            };
            v.push((Cell::new(w, r, s, target), vars));
        }
    } else {
        for w in [1, 10, 32] {
            for r in [1, 100, 1000] {
                for s in [2 * 1024, 20 * 1024, 200 * 1024] {
                    let vars = if w == 10 && s == 20 * 1024 {
                        vec![
                            Physical,
                            Smtpw,
                            Scraped,
                            Postfix,
                            Postgres,
                            Mock,
                            MockJournal,
                            Wan,
                            WanNoPipe,
                            Tls,
                        ]
                    } else if s == 20 * 1024 && r == 100 {
                        vec![Physical, Smtpw, Postfix]
                    } else if r == 1 && s == 2 * 1024 {
                        // Where Postfix is strongest (a message per recipient).
                        if w == 10 {
                            vec![Physical, Smtpw, Postfix, Postgres, Mock, MockJournal]
                        } else {
                            vec![Physical, Smtpw, Postfix]
                        }
                    } else if w == 10 {
                        vec![Physical, Smtpw, Mock, MockJournal]
                    } else {
                        vec![Physical, Smtpw]
                    };
                    v.push((Cell::new(w, r, s, target), vars));
                }
            }
        }
    }
    if !a.no_rtt {
        // Quick: about 1.5 s of the slowest peer per run, full: about 6 s.
        let (budget, min) = if a.quick {
            (Duration::from_millis(1500), 1)
        } else {
            (Duration::from_secs(6), 3)
        };
        for rtt in RTTS_MS {
            for w in [1, 10] {
                for r in [1, 100] {
                    v.push((
                        Cell::rtt(w, r, rtt, budget, min, a.rtt_per_conn),
                        vec![Physical, Smtpw, Postfix, Wan],
                    ));
                }
            }
        }
    }
    if let Some(f) = &a.filter {
        // A whole label selects that cell only (`w10-r1-2KB`, not its `-rtt` cells too);
        // any other text, every label containing it.
        let l = c_label_filter(f);
        let labels: Vec<String> = v.iter().map(|(c, _)| c.label()).collect();
        v.retain(|(c, _)| {
            let label = c.label();
            l.iter().any(|x| {
                if labels.contains(x) {
                    label == *x
                } else {
                    label.contains(x.as_str())
                }
            })
        });
    }
    if a.baseline.is_some() {
        for (_, vars) in v.iter_mut() {
            vars.insert(2, Baseline);
        }
    }
    if let Some(f) = &a.variants {
        let l = c_label_filter(f);
        for (_, vars) in v.iter_mut() {
            vars.retain(|x| l.iter().any(|n| n == x.name()));
        }
    }
    v.retain(|(_, vars)| !vars.is_empty());
    v
}

fn c_label_filter(f: &str) -> Vec<String> {
    f.split(',')
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect()
}

fn matrix(
    a: &BenchArgs,
    tools: &Tools,
    bins: &Bins,
    work: &Path,
    runs: usize,
    md: &mut String,
) -> anyhow::Result<Vec<Row>> {
    let (_sink, sink_port) = start_sink(tools)?;
    let mut rows: Vec<Row> = Vec::new();
    let mut ingests: Vec<(String, Ingest)> = Vec::new();
    // The PostgreSQL server, started for the first cell that has the `postgres` variant.
    let mut pg: Option<Result<crate::bench_pg::Server, String>> = None;
    for (cell, variants) in cells(a) {
        let label = cell.label();
        let tpl = work.join(format!("tpl-{label}"));
        let ing = preload(bins, &tpl, &cell)?;
        ingests.push((label.clone(), ing));
        // Round-trip cells: every peer reaches the sink through the same proxy.
        let (_proxy, relay_port) = if cell.rtt_ms > 0 {
            let (g, p) = start_proxy(bins, sink_port, cell.rtt_ms)?;
            (Some(g), p)
        } else {
            (None, sink_port)
        };
        let mut cell_rows: Vec<Row> = variants
            .iter()
            .map(|&v| Row {
                cell,
                variant: v,
                samples: Vec::new(),
                failed: None,
            })
            .collect();
        let mut pf: Option<crate::postfix::Instance> = None;
        if variants.contains(&Variant::Postfix) {
            let why = match crate::postfix::unavailable() {
                Some(why) => Some(why),
                None => match crate::postfix::Instance::start(
                    &work.join(format!("postfix-{label}")),
                    relay_port,
                    &cell,
                ) {
                    Ok(i) => {
                        pf = Some(i);
                        None
                    }
                    Err(e) => Some(format!("{e:#}")),
                },
            };
            if let Some(why) = why {
                eprintln!("  {label} postfix: skipped: {why}");
                for r in cell_rows
                    .iter_mut()
                    .filter(|r| r.variant == Variant::Postfix)
                {
                    r.failed = Some(format!("skipped: {why}"));
                }
            }
        }
        let mut pg_tpl: Option<String> = None;
        if variants.contains(&Variant::Postgres) {
            if pg.is_none() {
                pg = Some(crate::bench_pg::Server::start(&bins.postgres)?);
            }
            let why = match pg.as_mut() {
                Some(Ok(server)) => match server.template(&bins.smtpw, &tpl, work, &cell) {
                    Ok(name) => {
                        pg_tpl = Some(name);
                        None
                    }
                    Err(e) => Some(format!("{e:#}")),
                },
                Some(Err(why)) => Some(why.clone()),
                None => Some("no server".into()),
            };
            if let Some(why) = why {
                eprintln!("  {label} postgres: skipped: {why}");
                for r in cell_rows
                    .iter_mut()
                    .filter(|r| r.variant == Variant::Postgres)
                {
                    r.failed = Some(format!("skipped: {why}"));
                }
            }
        }
        for i in 0..runs {
            for row in cell_rows.iter_mut() {
                check_interrupted()?;
                if row.failed.is_some() {
                    continue;
                }
                let dir = work.join(format!("run-{label}-{}", row.variant.name()));
                std::fs::create_dir_all(&dir)?;
                let r = match row.variant {
                    Variant::Physical => run_source(tools, relay_port, &cell),
                    Variant::Smtpw => {
                        run_smtpw(&bins.smtpw, &tpl, &dir, relay_port, &cell, true, None)
                    }
                    Variant::Postgres => match (pg.as_mut(), &pg_tpl) {
                        (Some(Ok(server)), Some(t)) => {
                            server.run(&bins.smtpw, t, &dir, relay_port, &cell)
                        }
                        _ => bail!("no PostgreSQL template for {label}"),
                    },
                    Variant::Scraped => {
                        let how = How {
                            pipelining: true,
                            scrape: true,
                            settings: None,
                        };
                        run_smtpw_with(&bins.smtpw, &tpl, &dir, relay_port, &cell, how)
                    }
                    Variant::Postfix => match pf.as_mut() {
                        Some(p) => p.run(tools, &cell, RUN_LIMIT),
                        None => bail!("no Postfix instance"),
                    },
                    Variant::Baseline => match &bins.baseline {
                        Some(b) => run_smtpw(b, &tpl, &dir, relay_port, &cell, true, None),
                        None => bail!("no --baseline binary"),
                    },
                    v => {
                        let journal = v == Variant::MockJournal;
                        // In a round-trip cell the proxy is the latency, not the mock.
                        let lat =
                            if matches!(v, Variant::Wan | Variant::WanNoPipe) && cell.rtt_ms == 0 {
                                1
                            } else {
                                0
                            };
                        let mock_dir = work.join("mock");
                        let _ = std::fs::remove_dir_all(&mock_dir);
                        std::fs::create_dir_all(&mock_dir)?;
                        let tls = v == Variant::Tls;
                        let (_mock, mock_port) = start_mock(bins, &mock_dir, journal, lat, tls)?;
                        let (_mock_proxy, port) = if cell.rtt_ms > 0 {
                            let (g, p) = start_proxy(bins, mock_port, cell.rtt_ms)?;
                            (Some(g), p)
                        } else {
                            (None, mock_port)
                        };
                        let settings = if tls {
                            let p = mock_dir.join("smtpw.toml");
                            std::fs::write(
                                &p,
                                "[relays.\"127.0.0.1\"]\ntls = \"required\"\nca_file = \"mock-ca.pem\"\n",
                            )?;
                            Some(p)
                        } else {
                            None
                        };
                        run_smtpw(
                            &bins.smtpw,
                            &tpl,
                            &dir,
                            port,
                            &cell,
                            v != Variant::WanNoPipe,
                            settings.as_deref(),
                        )
                    }
                };
                match r {
                    Ok(s) => {
                        eprintln!(
                            "  {label:<16} {:<13} run {}: {:>7.3} s  {:>9.0} rcpt/s  rss {:>6} KB  cpu {:.2} s{}",
                            row.variant.name(),
                            i + 1,
                            s.secs,
                            cell.recipients() as f64 / s.secs,
                            s.rss_kb,
                            s.cpu,
                            if row.variant == Variant::Postgres {
                                format!(
                                    "  db cpu {:.2} s, db active {:.2} s",
                                    s.db_cpu, s.db_active
                                )
                            } else {
                                String::new()
                            }
                        );
                        row.samples.push(s);
                    }
                    Err(e) => {
                        check_interrupted()?;
                        eprintln!("  {label} {}: FAILED: {e:#}", row.variant.name());
                        row.failed = Some(format!("{e:#}"));
                    }
                }
            }
        }
        drop(pf);
        if let (Some(Ok(server)), Some(t)) = (pg.as_ref(), &pg_tpl) {
            server.drop_database(t);
        }
        let _ = std::fs::remove_dir_all(&tpl);
        rows.extend(cell_rows);
    }
    write_matrix(md, &rows, &ingests);
    Ok(rows)
}

fn fmt_rate(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// Median recipients/s of `variant` in the cell labelled `label`.
fn rate(rows: &[Row], label: &str, variant: Variant) -> Option<f64> {
    rows.iter()
        .find(|r| r.variant == variant && r.cell.label() == label && !r.samples.is_empty())
        .map(Row::rcpts_per_sec)
}

fn write_key_ratios(md: &mut String, rows: &[Row]) {
    let mut labels: Vec<String> = Vec::new();
    for r in rows {
        if !labels.contains(&r.cell.label()) {
            labels.push(r.cell.label());
        }
    }
    let baseline = rows.iter().any(|r| r.variant == Variant::Baseline);
    let _ = writeln!(
        md,
        "\n## Key ratios (recipients/s, medians)\n\n\
         | cell | smtpw / physical | smtpw / postfix | postgres / smtpw | wan / mock (PIPELINING) | wan-nopipe / mock | mock+journal / mock | smtpw+scrape / smtpw |{}\n\
         |---|---:|---:|---:|---:|---:|---:|---:|{}",
        if baseline { " baseline / smtpw |" } else { "" },
        if baseline { "---:|" } else { "" }
    );
    let f = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.2}", a / b),
        _ => String::new(),
    };
    use Variant::*;
    for l in &labels {
        let g = |v| rate(rows, l, v);
        let _ = writeln!(
            md,
            "| {l} | {} | {} | {} | {} | {} | {} | {} |{}",
            f(g(Smtpw), g(Physical)),
            f(g(Smtpw), g(Postfix)),
            f(g(Postgres), g(Smtpw)),
            f(g(Wan), g(Mock)),
            f(g(WanNoPipe), g(Mock)),
            f(g(MockJournal), g(Mock)),
            f(g(Scraped), g(Smtpw)),
            if baseline {
                format!(" {} |", f(g(Baseline), g(Smtpw)))
            } else {
                String::new()
            },
        );
    }
}

/// The round-trip cells: recipients/s and messages per round trip per connection.
fn write_rtt(md: &mut String, rows: &[Row]) {
    let rtt_rows: Vec<&Row> = rows.iter().filter(|r| r.cell.rtt_ms > 0).collect();
    if rtt_rows.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n## Round-trip cells\n\n\
         Every peer reaches its relay through `latency-proxy` (each byte delayed by half the RTT \
         each way, the greeting by 2 RTT after connect): `physical` = smtp-source, `smtpw` and \
         `postfix` (the private instance's relay client) into the same smtp-sink, `wan` = smtpw \
         into mock-mta (PIPELINING + CHUNKING). 2 KB messages. `msgs/RTT/conn` is msgs/s / \
         connections x RTT: how many messages a connection completes per round trip (smtp-source \
         needs about 5 round trips per 1-recipient message). Medians; `spread` as below.\n\n\
         | cell | RTT ms | conns | rcpts/msg | msgs | variant | s (median) | spread | msgs/s | rcpts/s | msgs/RTT/conn | / physical | / postfix |\n\
         |---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rtt_rows {
        let c = &r.cell;
        let label = c.label();
        if r.samples.is_empty() {
            let why = r.failed.as_deref().unwrap_or("no sample");
            let _ = writeln!(
                md,
                "| {label} | {} | {} | {} | {} | {} | {} | | | | | | |",
                c.rtt_ms,
                c.workers,
                c.rcpts,
                c.messages,
                r.variant.name(),
                why.replace('|', "/").lines().next().unwrap_or("")
            );
            continue;
        }
        let secs = r.secs();
        let msgs = c.messages as f64 / secs;
        let per_rtt = msgs / f64::from(c.workers) * f64::from(c.rtt_ms) / 1000.0;
        let vs = |v: Variant| match (r.variant == v, rate(rows, &label, v)) {
            (false, Some(x)) => format!("{:.2}", r.rcpts_per_sec() / x),
            _ => String::new(),
        };
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} | {secs:.3} | {:.0}% | {} | {} | {per_rtt:.2} | {} | {} |",
            c.rtt_ms,
            c.workers,
            c.rcpts,
            c.messages,
            r.variant.name(),
            r.spread(),
            fmt_rate(msgs),
            fmt_rate(r.rcpts_per_sec()),
            vs(Variant::Physical),
            vs(Variant::Postfix),
        );
    }
}

/// The `postgres` variant beside the SQLite `smtpw` of the same cells.
fn write_pg(md: &mut String, rows: &[Row]) {
    let pg_rows: Vec<&Row> = rows
        .iter()
        .filter(|r| r.variant == Variant::Postgres)
        .collect();
    if pg_rows.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n## PostgreSQL spool (`postgres`) beside SQLite (`smtpw`)\n\n\
         Same cell, same sink, same pre-loaded jobs (moved into a template database with `smtpw \
         spool copy`; each run on a fresh copy). `db CPU/copy` is the user + system CPU of the \
         cluster's processes during the run (postmaster, backends, WAL writer, checkpointer, \
         autovacuum; from /proc) per copy delivered: what the database computed, not the time \
         smtpw waited on commits. `db active/copy` is the time the database spent executing \
         smtpw's statements, commit flushes included (`pg_stat_database.active_time` of the \
         run's own database), per copy. Issue 15's target: postgres / smtpw >= 0.5.\n\n\
         | cell | copies | smtpw rcpts/s | postgres rcpts/s | postgres / smtpw | spread (smtpw / postgres) | smtpw CPU µs/copy (SQLite) | smtpw CPU µs/copy (postgres) | db CPU µs/copy | db active µs/copy |\n\
         |---|---:|---:|---:|---:|---|---:|---:|---:|---:|"
    );
    for r in pg_rows {
        let label = r.cell.label();
        let copies = r.cell.messages as f64;
        if r.samples.is_empty() {
            let why = r.failed.as_deref().unwrap_or("no sample");
            let _ = writeln!(
                md,
                "| {label} | {} | | {} | | | | | | |",
                r.cell.messages,
                why.replace('|', "/").lines().next().unwrap_or("")
            );
            continue;
        }
        let lite = rows.iter().find(|x| {
            x.variant == Variant::Smtpw && x.cell.label() == label && !x.samples.is_empty()
        });
        let us = |cpu: f64| format!("{:.0}", cpu * 1e6 / copies);
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.cell.messages,
            lite.map_or(String::new(), |l| fmt_rate(l.rcpts_per_sec())),
            fmt_rate(r.rcpts_per_sec()),
            lite.map_or(String::new(), |l| format!(
                "{:.2}",
                r.rcpts_per_sec() / l.rcpts_per_sec()
            )),
            lite.map_or(String::new(), |l| format!(
                "{:.0}% / {:.0}%",
                l.spread(),
                r.spread()
            )),
            lite.map_or(String::new(), |l| us(l.med(|s| s.cpu))),
            us(r.med(|s| s.cpu)),
            us(r.med(|s| s.db_cpu)),
            us(r.med(|s| s.db_active)),
        );
    }
}

fn write_matrix(md: &mut String, rows: &[Row], ingests: &[(String, Ingest)]) {
    write_key_ratios(md, rows);
    write_rtt(md, rows);
    write_pg(md, rows);
    let _ = writeln!(md, "\n## Variants\n");
    for v in [
        Variant::Physical,
        Variant::Smtpw,
        Variant::Baseline,
        Variant::Postfix,
        Variant::Postgres,
        Variant::Mock,
        Variant::MockJournal,
        Variant::Wan,
        Variant::WanNoPipe,
        Variant::Scraped,
    ] {
        if rows.iter().any(|r| r.variant == v) {
            let _ = writeln!(md, "- `{}`: {}", v.name(), v.what());
        }
    }
    let _ = writeln!(
        md,
        "\nA cell is workers (= smtp-source sessions) x recipients per copy (= per message) x \
         message size. `ratio` is smtpw's recipients/s over the physical limit's in the same cell. \
         `spread` is (slowest - fastest) / median of the runs. RSS is the engine's peak \
         (`VmHWM` of the smtpw process, sampled every 2 ms); CPU is its user + system seconds per 100,000 recipients. smtpw's \
         time runs from process start to its last ledger write (the queue is empty then).\n"
    );
    let _ = writeln!(
        md,
        "| cell | msgs | variant | s (median) | spread | msgs/s | rcpts/s | MB/s | ratio | peak RSS MB | CPU s/100k rcpts |"
    );
    let _ = writeln!(md, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let label = r.cell.label();
        if let Some(e) = &r.failed {
            if r.samples.is_empty() {
                let _ = writeln!(
                    md,
                    "| {label} | {} | {} | failed: {} | | | | | | | |",
                    r.cell.messages,
                    r.variant.name(),
                    e.replace('|', "/").lines().next().unwrap_or("")
                );
                continue;
            }
        }
        let secs = r.secs();
        let phys = rows
            .iter()
            .find(|p| {
                p.variant == Variant::Physical && p.cell.label() == label && !p.samples.is_empty()
            })
            .map(Row::rcpts_per_sec);
        let ratio = match (r.variant, phys) {
            (Variant::Physical, _) | (_, None) => "".to_string(),
            (_, Some(p)) => format!("{:.2}", r.rcpts_per_sec() / p),
        };
        let (rss, cpu) = if matches!(r.variant, Variant::Physical | Variant::Postfix) {
            (String::new(), String::new())
        } else {
            (
                format!("{:.1}", r.med(|s| s.rss_kb as f64) / 1024.0),
                format!(
                    "{:.2}",
                    r.med(|s| s.cpu) * 100_000.0 / r.cell.recipients() as f64
                ),
            )
        };
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {secs:.3} | {:.0}% | {} | {} | {:.1} | {ratio} | {rss} | {cpu} |",
            r.cell.messages,
            r.variant.name(),
            r.spread(),
            fmt_rate(r.cell.messages as f64 / secs),
            fmt_rate(r.rcpts_per_sec()),
            r.cell.bytes() as f64 / secs / 1e6,
        );
    }
    let _ = writeln!(
        md,
        "\n### Spool ingest (pre-load: parse the job file, split, commit)\n\n| cell | recipients | s | recipients/s |\n|---|---:|---:|---:|"
    );
    for (label, i) in ingests {
        let _ = writeln!(
            md,
            "| {label} | {} | {:.3} | {} |",
            i.recipients,
            i.secs,
            fmt_rate(i.recipients as f64 / i.secs)
        );
    }
}

/// A grouped horizontal bar chart of recipients/s per cell (log scale).
fn chart(rows: &[Row]) -> String {
    let colors = [
        (Variant::Physical, "#888888"),
        (Variant::Smtpw, "#1f77b4"),
        (Variant::Baseline, "#9467bd"),
        (Variant::Postfix, "#8c564b"),
        (Variant::Postgres, "#e377c2"),
        (Variant::Mock, "#2ca02c"),
        (Variant::MockJournal, "#98df8a"),
        (Variant::Wan, "#ff7f0e"),
        (Variant::WanNoPipe, "#d62728"),
        (Variant::Scraped, "#17becf"),
    ];
    let mut labels: Vec<String> = Vec::new();
    for r in rows {
        let l = r.cell.label();
        if !labels.contains(&l) {
            labels.push(l);
        }
    }
    let bar = 7.0;
    let left = 130.0;
    let width = 640.0;
    let max = rows
        .iter()
        .filter(|r| !r.samples.is_empty())
        .map(Row::rcpts_per_sec)
        .fold(10.0f64, f64::max);
    let lo = 10.0f64;
    let scale = |x: f64| ((x.max(lo) / lo).log10() / (max / lo).log10()) * width;
    let mut y = 40.0;
    let mut body = String::new();
    for l in &labels {
        let group: Vec<&Row> = rows.iter().filter(|r| &r.cell.label() == l).collect();
        let h = group.len() as f64 * bar + 8.0;
        let _ = writeln!(
            body,
            r#"<text x="{:.0}" y="{:.1}" font-size="11" text-anchor="end">{l}</text>"#,
            left - 6.0,
            y + h / 2.0
        );
        for (i, r) in group.iter().enumerate() {
            if r.samples.is_empty() {
                continue;
            }
            let c = colors
                .iter()
                .find(|(v, _)| *v == r.variant)
                .map_or("#000", |(_, c)| c);
            let _ = writeln!(
                body,
                r#"<rect x="{left}" y="{:.1}" width="{:.1}" height="{}" fill="{c}"><title>{} {}: {:.0} rcpts/s</title></rect>"#,
                y + i as f64 * bar,
                scale(r.rcpts_per_sec()),
                bar - 1.0,
                l,
                r.variant.name(),
                r.rcpts_per_sec()
            );
        }
        y += h;
    }
    let mut axis = String::new();
    let mut t = lo;
    while t <= max * 1.0001 {
        let x = left + scale(t);
        let _ = writeln!(
            axis,
            r##"<line x1="{x:.1}" y1="30" x2="{x:.1}" y2="{y:.0}" stroke="#ddd"/><text x="{x:.1}" y="{:.0}" font-size="10" text-anchor="middle">{}</text>"##,
            y + 12.0,
            fmt_rate(t)
        );
        t *= 10.0;
    }
    let mut legend = String::new();
    let present: Vec<&(Variant, &str)> = colors
        .iter()
        .filter(|(v, _)| rows.iter().any(|r| r.variant == *v))
        .collect();
    for (i, (v, c)) in present.into_iter().enumerate() {
        let x = left + i as f64 * 92.0;
        let _ = writeln!(
            legend,
            r#"<rect x="{x}" y="12" width="10" height="10" fill="{c}"/><text x="{}" y="21" font-size="11">{}</text>"#,
            x + 13.0,
            v.name()
        );
    }
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{:.0}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
{legend}{axis}{body}<text x="{}" y="{:.0}" font-size="11" text-anchor="middle">recipients per second (log scale, medians)</text>
</svg>
"#,
        left + width + 60.0,
        y + 34.0,
        left + width / 2.0,
        y + 28.0
    )
}

/// Memory at scale: one job of 100,000 and one of 1,000,000 recipients (MAXBSMTP 100, 2 KB,
/// 10 workers), ingested and delivered to smtp-sink by `smtpw run --until-empty`.
fn scale(tools: &Tools, bins: &Bins, work: &Path, md: &mut String) -> anyhow::Result<()> {
    let (_sink, port) = start_sink(tools)?;
    let _ = writeln!(
        md,
        "\n## Memory at scale\n\nOne job file dropped into `incoming/`, then `smtpw run --until-empty` \
         (10 workers, MAXBSMTP=100, 2 KB message) -> smtp-sink: ingest and delivery together.\n\n\
         | recipients | job file MB | s (to last ledger write) | recipients/s | peak RSS MB | CPU s | CPU s/100k rcpts |\n\
         |---:|---:|---:|---:|---:|---:|---:|"
    );
    for n in [100_000u64, 1_000_000] {
        check_interrupted()?;
        let dir = work.join(format!("scale-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        let spool = dir.join("spool");
        let incoming = spool.join("incoming");
        std::fs::create_dir_all(&incoming)?;
        let job = incoming.join("big.MAIL");
        let st = Command::new(&bins.load)
            .arg("job")
            .arg("--out")
            .arg(&job)
            .args(["--rcpts", &n.to_string(), "--size", "2048"])
            .stdout(Stdio::null())
            .status()?;
        if !st.success() {
            bail!("bench-load job failed ({st})");
        }
        let file_mb = std::fs::metadata(&job)?.len() as f64 / 1e6;
        let cell = Cell {
            workers: 10,
            rcpts: 100,
            size: 2048,
            messages: n / 100,
            rtt_ms: 0,
        };
        // The spool is already in place: run on it directly (no template copy).
        let tpl = dir.join("tpl");
        std::fs::rename(&spool, &tpl)?;
        let r = run_smtpw(&bins.smtpw, &tpl, &dir.join("run"), port, &cell, true, None);
        match r {
            Ok(s) => {
                eprintln!(
                    "  scale {n}: {:.2} s, rss {} KB, cpu {:.2} s",
                    s.secs, s.rss_kb, s.cpu
                );
                let _ = writeln!(
                    md,
                    "| {n} | {file_mb:.1} | {:.2} | {:.0} | {:.1} | {:.2} | {:.2} |",
                    s.secs,
                    n as f64 / s.secs,
                    s.rss_kb as f64 / 1024.0,
                    s.cpu,
                    s.cpu * 100_000.0 / n as f64
                );
            }
            Err(e) => {
                eprintln!("  scale {n}: FAILED: {e:#}");
                let _ = writeln!(md, "| {n} | {file_mb:.1} | failed: {e} | | | | |");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn cells_are_bounded() {
        for w in [1, 10, 32] {
            for r in [1, 100, 1000] {
                for size in [2048, 20_480, 204_800] {
                    let c = Cell::new(w, r, size, 100_000);
                    let w = u64::from(w);
                    assert!(c.messages >= w, "{c:?}: every worker gets a copy");
                    assert!(c.messages <= 300 * w, "{c:?}: at most 300 per worker");
                    assert!(c.bytes() <= (64 << 20) || c.messages == w, "{c:?}: 64 MB");
                }
            }
        }
        assert_eq!(Cell::new(10, 100, 20_480, 100_000).messages, 1000);
        assert_eq!(Cell::new(1, 1, 2048, 100_000).messages, 300);
        assert_eq!(Cell::new(32, 1000, 2048, 100_000).label(), "w32-r1000-2KB");
    }

    /// `cargo xtask bench ARGS...` as clap parses them.
    fn args(a: &[&str]) -> BenchArgs {
        #[derive(clap::Parser)]
        struct T {
            #[command(flatten)]
            a: BenchArgs,
        }
        let mut v = vec!["bench"];
        v.extend_from_slice(a);
        <T as clap::Parser>::try_parse_from(v).unwrap().a
    }

    #[test]
    fn rtt_cells_are_named_bounded_and_selectable() {
        let all = cells(&args(&["--quick", "--filter", "rtt"]));
        assert_eq!(
            all.len(),
            12,
            "3 RTTs x 1, 10 connections x 1, 100 recipients"
        );
        let mut est_total = 0.0;
        for (c, vars) in &all {
            assert!(c.rtt_ms > 0 && c.size == 2048, "{c:?}");
            assert!(c.label().ends_with(&format!("-rtt{}", c.rtt_ms)), "{c:?}");
            let names: Vec<&str> = vars.iter().map(|v| v.name()).collect();
            assert_eq!(names, ["physical", "smtpw", "postfix", "wan"]);
            // The slowest peer (one round trip per command) must finish in seconds.
            let per_conn = c.messages / u64::from(c.workers);
            let est =
                per_conn as f64 * round_trips_per_message(c.rcpts) as f64 * f64::from(c.rtt_ms)
                    / 1000.0;
            assert!(
                per_conn >= 1 && est <= 6.0,
                "{c:?}: about {est:.1} s per run"
            );
            est_total += est * vars.len() as f64 * 3.0;
        }
        // The whole quick RTT matrix, 3 runs of 4 variants: a few minutes at most.
        assert!(est_total < 300.0, "about {est_total:.0} s");
        let labels: Vec<String> = all.iter().map(|(c, _)| c.label()).collect();
        assert!(
            labels.contains(&"w10-r1-2KB-rtt10".to_string()),
            "{labels:?}"
        );
        assert!(
            labels.contains(&"w1-r100-2KB-rtt50".to_string()),
            "{labels:?}"
        );

        // The full matrix: bounded too, and a 50 ms cell is no longer than the budget allows.
        for (c, _) in cells(&args(&["--filter", "rtt50"])) {
            let per_conn = c.messages / u64::from(c.workers);
            let est = per_conn as f64 * round_trips_per_message(c.rcpts) as f64 * 0.05;
            assert!(per_conn >= 3 && est <= 16.0, "{c:?}: about {est:.1} s");
        }

        let one = cells(&args(&[
            "--quick",
            "--filter",
            "w10-r1-2KB-rtt10",
            "--variants",
            "physical,wan",
        ]));
        assert_eq!(one.len(), 1);
        let names: Vec<&str> = one[0].1.iter().map(|v| v.name()).collect();
        assert_eq!(names, ["physical", "wan"]);
        assert!(cells(&args(&["--quick", "--no-rtt", "--filter", "rtt"])).is_empty());
        // A whole label is that cell alone; a part of one selects all that contain it.
        let exact = cells(&args(&["--quick", "--filter", "w10-r1-2KB"]));
        assert_eq!(exact.len(), 1);
        assert_eq!(exact[0].0.label(), "w10-r1-2KB");
        let w10r1: Vec<String> = cells(&args(&["--quick", "--filter", "w10-r1-"]))
            .iter()
            .map(|(c, _)| c.label())
            .collect();
        assert_eq!(
            w10r1,
            [
                "w10-r1-2KB",
                "w10-r1-2KB-rtt1",
                "w10-r1-2KB-rtt10",
                "w10-r1-2KB-rtt50"
            ]
        );
    }

    #[test]
    fn postfix_and_postgres_run_in_the_single_recipient_cells() {
        for quick in [true, false] {
            let a = if quick {
                args(&["--quick", "--no-rtt"])
            } else {
                args(&["--no-rtt"])
            };
            let cs = cells(&a);
            let find = |l: &str| {
                cs.iter()
                    .find(|(c, _)| c.label() == l)
                    .map(|(_, v)| v.clone())
            };
            let w10 = find("w10-r1-2KB").expect("w10-r1-2KB");
            let w32 = find("w32-r1-2KB").expect("w32-r1-2KB");
            assert!(w10.contains(&Variant::Postfix) && w10.contains(&Variant::Postgres));
            assert!(w32.contains(&Variant::Postfix));
        }
    }

    #[test]
    fn rtt_report_gives_messages_per_round_trip_per_connection() {
        let cell = Cell::rtt(10, 1, 10, Duration::from_secs(1), 1, None);
        // --rtt-per-conn sizes the cell instead, within its bound.
        let more = Cell::rtt(10, 1, 10, Duration::from_secs(1), 1, Some(500));
        assert_eq!(more.messages, 5000);
        let most = Cell::rtt(1, 1, 10, Duration::from_secs(1), 1, Some(1_000_000));
        assert_eq!(most.messages, 3000);
        let row = |variant, msgs_per_sec: f64| Row {
            cell,
            variant,
            samples: vec![
                Sample {
                    secs: cell.messages as f64 / msgs_per_sec,
                    ..Sample::default()
                };
                3
            ],
            failed: None,
        };
        // 1000 msgs/s over 10 connections at 10 ms: 1 message per round trip and connection.
        let rows = vec![
            row(Variant::Physical, 250.0),
            row(Variant::Smtpw, 1000.0),
            row(Variant::Postfix, 500.0),
        ];
        let mut md = String::new();
        write_matrix(&mut md, &rows, &[]);
        let line = md
            .lines()
            .find(|l| {
                l.starts_with("| w10-r1-2KB-rtt10 | 10 | 10 | 1 |") && l.contains("| smtpw |")
            })
            .unwrap_or_else(|| panic!("no smtpw line in the round-trip table:\n{md}"));
        assert!(line.contains("| 1.00 | 4.00 | 2.00 |"), "{line}");
        let phys = md
            .lines()
            .find(|l| l.starts_with("| w10-r1-2KB-rtt10 | 10 |") && l.contains("| physical |"))
            .unwrap_or_else(|| panic!("{md}"));
        assert!(phys.contains("| 0.25 |"), "{phys}");
    }

    #[test]
    fn report_has_ratios_and_chart_is_svg() {
        let cell = Cell::new(10, 100, 20_480, 1000);
        let row = |variant, secs| Row {
            cell,
            variant,
            samples: vec![
                Sample {
                    secs,
                    rss_kb: 10_240,
                    cpu: 0.1,
                    db_cpu: 0.0,
                    db_active: 0.0,
                };
                3
            ],
            failed: None,
        };
        let rows = vec![row(Variant::Physical, 2.0), row(Variant::Smtpw, 1.0)];
        let mut md = String::new();
        write_matrix(&mut md, &rows, &[]);
        assert!(md.contains("| w10-r100-20KB | 2.00 |"), "{md}");
        assert!(!md.contains("baseline"), "{md}");
        let svg = chart(&rows);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<title>").count(), 2);
    }
}
