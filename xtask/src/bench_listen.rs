//! `cargo xtask bench --ingest-smtp`: the SMTP listener's acceptance rate (LISTEN-3).
//!
//! Per cell (10 connections; 1 and 100 recipients per message; 2 KB), alternately `runs` times:
//! - `physical`: `smtp-source` -> `smtp-sink`, the rate of a sink that throws mail away;
//! - `ingest-smtp`: the same `smtp-source` -> `smtpw run --listen` (no relay configured, so only
//!   the listener works): every 250 follows the job's commit; after the run the spool must hold
//!   every message (checked with `smtpw queue --json`);
//! - `ingest-smtp-pipelined`: our own pipelining client (each connection writes 50 whole
//!   transactions at a time, then reads their replies) -> `smtpw run --listen`;
//! - `ingest-deliver`: the same smtp-source -> `smtpw run --listen` whose engine delivers what
//!   it accepts to smtp-sink at the same time (10 workers, MAXBSMTP=100): messages/s accepted,
//!   and the time until the ledger holds every delivery (each counted once, or the run fails).
//!
//! With `--baseline SMTPW`, that binary's `ingest-smtp` and pipelined runs alternate with the
//! current one's (before/after figures in one run).
//!
//! The report gives messages/s (medians, with the spread of the runs), the server's CPU per
//! message (user + system of the smtp-sink or smtpw process, all threads, from /proc) and the
//! ratio ingest-smtp / physical (the goal: >= 0.8).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::bench::{free_port, median, run_source, start_sink, wait_listening, Cell, Guard, Tools};

const CONNECTIONS: u32 = 10;
const SIZE: usize = 2048;
/// Transactions a pipelining connection writes before reading their replies.
const WINDOW: usize = 50;

fn cells() -> [Cell; 2] {
    [
        Cell {
            workers: CONNECTIONS,
            rcpts: 1,
            size: SIZE,
            messages: 5000,
            rtt_ms: 0,
        },
        Cell {
            workers: CONNECTIONS,
            rcpts: 100,
            size: SIZE,
            messages: 1000,
            rtt_ms: 0,
        },
    ]
}

/// `smtpw run --listen` on a fresh spool, no relay: the listener alone.
fn start_listener(smtpw: &Path, dir: &Path) -> anyhow::Result<(Guard, u16)> {
    // A relay nobody listens on (port 1: refused at once, then backed off): the listener is
    // measured alone, not competing with deliveries.
    start_listener_with(
        smtpw,
        dir,
        "NODE=BENCH.EXAMPLE\r\nSMTP_FORWARD=127.0.0.1:1\r\n",
    )
}

/// `smtpw run --listen` on a fresh spool in `dir`, with `site_cfg` and the ledger `dir/ledger`.
fn start_listener_with(smtpw: &Path, dir: &Path, site_cfg: &str) -> anyhow::Result<(Guard, u16)> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let cfg = dir.join("SITE.CFG");
    std::fs::write(&cfg, site_cfg)?;
    let port = free_port()?;
    let mut c = Command::new(smtpw);
    c.arg("run")
        .arg("--config")
        .arg(&cfg)
        .arg("--spool")
        .arg(dir.join("spool"))
        .arg("--ledger")
        .arg(dir.join("ledger"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = c.spawn().context("starting smtpw run --listen")?;
    wait_listening(port, &mut child, "smtpw run --listen")?;
    Ok((Guard(Some(child)), port))
}

/// Jobs and recipients the spool holds (`smtpw queue --json`).
fn committed(smtpw: &Path, spool: &Path) -> anyhow::Result<(u64, u64)> {
    let out = Command::new(smtpw)
        .args(["queue", "--json", "--spool"])
        .arg(spool)
        .output()
        .context("smtpw queue")?;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("smtpw queue --json printed no JSON")?;
    Ok((
        v["jobs"].as_u64().unwrap_or(0),
        v["queued"].as_u64().unwrap_or(0),
    ))
}

/// One pipelining connection: `n` messages of `cell`, `WINDOW` transactions per write.
fn pipeline_conn(port: u16, cell: Cell, n: u64, id: u32) -> anyhow::Result<u64> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    // Replies until a final line; the code of the last line.
    let mut reply = |r: &mut BufReader<TcpStream>| -> anyhow::Result<u16> {
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                bail!("the listener closed the connection");
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(line.get(..3).unwrap_or("0").parse().unwrap_or(0));
            }
        }
    };
    reply(&mut r)?;
    w.write_all(b"EHLO pipeliner.bench.example\r\n")?;
    reply(&mut r)?;
    let body = {
        let mut b = String::from("From: bench@bench.example\r\nSubject: bench\r\n\r\n");
        while b.len() + 80 < cell.size {
            b.push_str(&"x".repeat(76));
            b.push_str("\r\n");
        }
        b
    };
    let mut accepted = 0;
    let mut sent = 0;
    while sent < n {
        let batch = (n - sent).min(WINDOW as u64);
        let mut conv = String::new();
        for k in 0..batch {
            conv.push_str("MAIL FROM:<bench-owner@bench.example>\r\n");
            for i in 0..cell.rcpts {
                let _ = write!(conv, "RCPT TO:<u{id}-{}-{i}@d.bench.example>\r\n", sent + k);
            }
            conv.push_str("DATA\r\n");
            conv.push_str(&body);
            conv.push_str(".\r\n");
        }
        w.write_all(conv.as_bytes())?;
        for _ in 0..batch {
            reply(&mut r)?; // MAIL
            for _ in 0..cell.rcpts {
                reply(&mut r)?;
            }
            reply(&mut r)?; // 354
            if reply(&mut r)? == 250 {
                accepted += 1;
            }
        }
        sent += batch;
    }
    w.write_all(b"QUIT\r\n")?;
    Ok(accepted)
}

fn run_pipelined(port: u16, cell: Cell) -> anyhow::Result<(f64, u64)> {
    let t0 = Instant::now();
    let per = cell.messages / u64::from(cell.workers);
    let handles: Vec<_> = (0..cell.workers)
        .map(|id| std::thread::spawn(move || pipeline_conn(port, cell, per, id)))
        .collect();
    let mut accepted = 0;
    for h in handles {
        accepted += h
            .join()
            .map_err(|_| anyhow::anyhow!("a pipelining client panicked"))??;
    }
    Ok((t0.elapsed().as_secs_f64(), accepted))
}

/// User + system CPU seconds `pid` has used so far (all its threads; `/proc/PID/stat`, in
/// clock ticks of 10 ms).
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // After the command name (in parentheses, which may hold spaces): fields 3...; utime and
    // stime are fields 14 and 15.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(14) + ticks(15)) / 100.0
}

fn pid_of(g: &Guard) -> u32 {
    g.0.as_ref().map_or(0, std::process::Child::id)
}

/// One measurement: messages/s and the server's CPU per message (µs).
#[derive(Default)]
struct Figures {
    rate: Vec<f64>,
    cpu_us: Vec<f64>,
}

impl Figures {
    fn push(&mut self, messages: u64, secs: f64, cpu: f64) {
        self.rate.push(messages as f64 / secs);
        self.cpu_us.push(cpu * 1e6 / messages as f64);
    }
    fn rate(&self) -> f64 {
        median(&mut self.rate.clone())
    }
    fn cpu(&self) -> f64 {
        median(&mut self.cpu_us.clone())
    }
    /// (fastest - slowest) / median of the rates, percent.
    fn spread(&self) -> f64 {
        let (lo, hi) = self
            .rate
            .iter()
            .fold((f64::INFINITY, 0.0f64), |(l, h), &x| (l.min(x), h.max(x)));
        100.0 * (hi - lo) / self.rate()
    }
    fn show(&self) -> String {
        format!(
            "{:.0} ±{:.0}% ({:.0} µs)",
            self.rate(),
            self.spread(),
            self.cpu()
        )
    }
}

/// smtp-source into `smtpw run --listen` (`smtpw`): its figures, the spool checked to hold
/// every message.
fn smtp_source_run(
    tools: &Tools,
    smtpw: &Path,
    dir: &Path,
    cell: Cell,
    f: &mut Figures,
) -> anyhow::Result<String> {
    let (guard, port) = start_listener(smtpw, dir)?;
    let cpu0 = cpu_secs(pid_of(&guard));
    let s = run_source(tools, port, &cell)?;
    let cpu = cpu_secs(pid_of(&guard)) - cpu0;
    drop(guard);
    let (jobs, rcpts) = committed(smtpw, &dir.join("spool"))?;
    if jobs != cell.messages || rcpts != cell.recipients() {
        bail!(
            "ingest-smtp r{} ({}): the spool holds {jobs} jobs / {rcpts} recipients, \
             expected {} / {}",
            cell.rcpts,
            smtpw.display(),
            cell.messages,
            cell.recipients()
        );
    }
    f.push(cell.messages, s.secs, cpu);
    Ok(format!("{jobs} / {rcpts}"))
}

/// Our pipelining client into `smtpw run --listen` (`smtpw`).
fn pipelined_run(smtpw: &Path, dir: &Path, cell: Cell, f: &mut Figures) -> anyhow::Result<()> {
    let (guard, port) = start_listener(smtpw, dir)?;
    let cpu0 = cpu_secs(pid_of(&guard));
    let (secs, accepted) = run_pipelined(port, cell)?;
    let cpu = cpu_secs(pid_of(&guard)) - cpu0;
    drop(guard);
    let (jobs, _) = committed(smtpw, &dir.join("spool"))?;
    if jobs != accepted {
        bail!("pipelined: {accepted} answered 250 but the spool holds {jobs} jobs");
    }
    f.push(accepted, secs, cpu);
    Ok(())
}

/// Deliveries the ledger at `path` holds, read from `*offset` on (advanced past whole lines).
fn delivered_since(path: &Path, offset: &mut u64, count: &mut u64) -> std::io::Result<()> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    f.seek(SeekFrom::Start(*offset))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let whole = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let text = String::from_utf8_lossy(&buf[..whole]);
    *count += text
        .lines()
        .filter(|l| crate::bench::is_delivered(l))
        .count() as u64;
    *offset += whole as u64;
    Ok(())
}

/// smtp-source into `smtpw run --listen` while its engine delivers what it accepts to
/// smtp-sink (10 workers, MAXBSMTP=100): messages/s accepted and CPU per message into
/// `accepted`, seconds from the first message to the last delivery in the ledger into `all`.
fn deliver_run(
    tools: &Tools,
    smtpw: &Path,
    dir: &Path,
    cell: Cell,
    accepted: &mut Figures,
    all: &mut Vec<f64>,
) -> anyhow::Result<()> {
    let (sink, sink_port) = start_sink(tools)?;
    let (guard, port) = start_listener_with(
        smtpw,
        dir,
        &format!(
            "NODE=BENCH.EXAMPLE\r\nSMTP_FORWARD_1={CONNECTIONS}*127.0.0.1:{sink_port}\r\nMAXBSMTP=100\r\n"
        ),
    )?;
    let cpu0 = cpu_secs(pid_of(&guard));
    let t0 = Instant::now();
    let s = run_source(tools, port, &cell)?;
    let (mut offset, mut count) = (0, 0);
    let want = cell.recipients();
    while count < want {
        if t0.elapsed() > crate::bench::RUN_LIMIT {
            bail!(
                "ingest-deliver r{} ({}): {count} of {want} deliveries in the ledger after {:?}",
                cell.rcpts,
                smtpw.display(),
                crate::bench::RUN_LIMIT
            );
        }
        std::thread::sleep(Duration::from_millis(20));
        delivered_since(&dir.join("ledger"), &mut offset, &mut count)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_secs(pid_of(&guard)) - cpu0;
    drop(guard);
    drop(sink);
    if count != want {
        bail!(
            "ingest-deliver r{} ({}): {count} deliveries in the ledger for {want} recipients",
            cell.rcpts,
            smtpw.display()
        );
    }
    accepted.push(cell.messages, s.secs, cpu);
    all.push(secs);
    Ok(())
}

/// Run the ingest-smtp cells and append their section to `md`; with `baseline`, that smtpw
/// binary too (alternating with the current one), for before/after figures.
pub(crate) fn ingest_smtp(
    tools: &Tools,
    smtpw: &Path,
    baseline: Option<&Path>,
    work: &Path,
    runs: usize,
    md: &mut String,
) -> anyhow::Result<()> {
    let _ = writeln!(
        md,
        "\n### Ingest by SMTP (`ingest-smtp`)\n\n{CONNECTIONS} connections, 2 KB messages; \
         `physical` is smtp-source -> smtp-sink, `ingest-smtp` the same smtp-source -> `smtpw run \
         --listen` (its relay refuses connections: the listener alone; every 250 after its job's commit, and the \
         spool checked to hold every message after the run), `pipelined` our own client writing \
         {WINDOW} transactions per write{}. Medians of {runs} alternating runs: messages/s, \
         ± the spread of the runs ((fastest - slowest) / median), and in parentheses the server's \
         CPU (user + system, all threads) per message.\n\n\
         | recipients/msg | msgs | physical msgs/s | ingest-smtp msgs/s | ratio | pipelined msgs/s |{} committed jobs / recipients |\n\
         |---:|---:|---:|---:|---:|---:|{}---|",
        if baseline.is_some() {
            "; `baseline` the same with the --baseline binary"
        } else {
            ""
        },
        if baseline.is_some() {
            " baseline ingest-smtp msgs/s | baseline ratio | baseline pipelined msgs/s |"
        } else {
            ""
        },
        if baseline.is_some() { "---:|---:|---:|" } else { "" },
    );
    // The second table: accepting while delivering (`ingest-deliver`).
    let mut deliver_md = String::new();
    for cell in cells() {
        let (mut phys, mut smtp, mut pipe) =
            (Figures::default(), Figures::default(), Figures::default());
        let (mut base, mut base_pipe) = (Figures::default(), Figures::default());
        let (mut deliv, mut base_deliv) = (Figures::default(), Figures::default());
        let (mut deliv_all, mut base_deliv_all) = (Vec::new(), Vec::new());
        let mut check = String::new();
        let dir = work.join(format!("ingest-smtp-r{}", cell.rcpts));
        for run in 0..runs {
            eprintln!("  ingest-smtp r{} run {}/{runs}", cell.rcpts, run + 1);
            let (sink, sink_port) = start_sink(tools)?;
            let cpu0 = cpu_secs(pid_of(&sink));
            let s = run_source(tools, sink_port, &cell)?;
            phys.push(cell.messages, s.secs, cpu_secs(pid_of(&sink)) - cpu0);
            drop(sink);

            check = smtp_source_run(tools, smtpw, &dir, cell, &mut smtp)?;
            if let Some(b) = baseline {
                smtp_source_run(tools, b, &dir, cell, &mut base)?;
            }
            pipelined_run(smtpw, &dir, cell, &mut pipe)?;
            if let Some(b) = baseline {
                pipelined_run(b, &dir, cell, &mut base_pipe)?;
            }
            deliver_run(tools, smtpw, &dir, cell, &mut deliv, &mut deliv_all)?;
            if let Some(b) = baseline {
                deliver_run(tools, b, &dir, cell, &mut base_deliv, &mut base_deliv_all)?;
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        let (p, s) = (phys.rate(), smtp.rate());
        let mut line = format!(
            "| {} | {} | {} | {} | {:.2} | {} |",
            cell.rcpts,
            cell.messages,
            phys.show(),
            smtp.show(),
            s / p,
            pipe.show()
        );
        if baseline.is_some() {
            let _ = write!(
                line,
                " {} | {:.2} | {} |",
                base.show(),
                base.rate() / p,
                base_pipe.show()
            );
        }
        let _ = writeln!(md, "{line} {check} |");
        eprintln!(
            "  ingest-smtp r{}: physical {}, smtpw {} (ratio {:.2}), pipelined {}",
            cell.rcpts,
            phys.show(),
            smtp.show(),
            s / p,
            pipe.show()
        );
        if baseline.is_some() {
            eprintln!(
                "  ingest-smtp r{}: baseline {} (ratio {:.2}), baseline pipelined {}",
                cell.rcpts,
                base.show(),
                base.rate() / p,
                base_pipe.show()
            );
        }
        let mut line = format!(
            "| {} | {} | {} | {:.2} s |",
            cell.rcpts,
            cell.messages,
            deliv.show(),
            median(&mut deliv_all)
        );
        if baseline.is_some() {
            let _ = write!(
                line,
                " {} | {:.2} s |",
                base_deliv.show(),
                median(&mut base_deliv_all)
            );
        }
        let _ = writeln!(deliver_md, "{line}");
        eprintln!(
            "  ingest-deliver r{}: accepted {}, all delivered in {:.2} s",
            cell.rcpts,
            deliv.show(),
            median(&mut deliv_all)
        );
    }
    let _ = writeln!(
        md,
        "\nAccepting and delivering at once (`ingest-deliver`): the same smtp-source -> `smtpw run \
         --listen`, whose engine delivers what it accepts to smtp-sink ({CONNECTIONS} workers, \
         MAXBSMTP=100, a ledger). Messages/s accepted (as above, CPU per message in parentheses), \
         and the time from the first message to the ledger's last delivery (median).\n\n\
         | recipients/msg | msgs | accepted msgs/s | all delivered |{}\n\
         |---:|---:|---:|---:|{}\n{deliver_md}",
        if baseline.is_some() {
            " baseline accepted msgs/s | baseline all delivered |"
        } else {
            ""
        },
        if baseline.is_some() { "---:|---:|" } else { "" },
    );
    Ok(())
}
