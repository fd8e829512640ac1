//! `cargo xtask fuzz`: build the libFuzzer targets in `fuzz/` and run each for a while.
//!
//! The targets are built by `cargo fuzz build -s none` (coverage instrumentation only, no
//! sanitizer): every flag that sets is a stable `-C`/`--cfg` flag, so the stable toolchain builds
//! them. They go to `<target dir>/fuzz/`, beside the workspace's own builds. Each target then runs
//! for `--seconds` with its seeds (`fuzz/seeds/T`, in git, small) and a working corpus
//! (`<target dir>/fuzz/corpus/T`, kept between runs, not in git); a crash input lands in
//! `<target dir>/fuzz/artifacts/T/` and fails the task. The figures printed per target come from
//! libFuzzer's final statistics: executions, executions per second, and the coverage reached
//! (`cov:` edges and `ft:` features of its last status line).

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;

use crate::{cargo, target_dir, workspace_root};

/// A target (`fuzz/Cargo.toml`'s `[[bin]]`) and how it is run.
struct Target {
    name: &'static str,
    /// The longest input: long enough to cross the limit the code enforces (an envelope line of
    /// 4096 bytes, a reply of 64 KiB, a command line of 4096 bytes).
    max_len: usize,
    /// Try long inputs from the start (libFuzzer's `-len_control=0`) instead of growing them
    /// slowly: the limits above are where the bugs of line handling live, and a short run would
    /// never reach them.
    long_at_once: bool,
}

const TARGETS: &[Target] = &[
    Target {
        name: "site_cfg",
        max_len: 4096,
        long_at_once: false,
    },
    Target {
        name: "job_reader",
        max_len: 10_000,
        long_at_once: true,
    },
    Target {
        name: "smtp_reply",
        max_len: 70_000,
        long_at_once: false,
    },
    Target {
        name: "mock_session",
        max_len: 20_000,
        long_at_once: true,
    },
    Target {
        name: "settings_toml",
        max_len: 8192,
        long_at_once: false,
    },
    Target {
        name: "listen_session",
        max_len: 20_000,
        long_at_once: true,
    },
];

/// An input that runs longer than this (seconds) counts as a hang, and fails the run.
const INPUT_TIMEOUT_SECS: u64 = 10;
/// libFuzzer's memory limit per process (MB): an input that needs more is a failure too.
const RSS_LIMIT_MB: u64 = 2048;

#[derive(Args)]
pub struct FuzzArgs {
    /// How long each target runs, in seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// Only this target (repeat for several): site_cfg, job_reader, smtp_reply, mock_session,
    /// settings_toml, listen_session.
    #[arg(long = "target", value_name = "T")]
    targets: Vec<String>,
    /// Skip the build (use the binaries already built).
    #[arg(long)]
    no_build: bool,
}

/// What one run of one target did.
#[derive(Debug, Default)]
struct Figures {
    runs: Option<u64>,
    exec_per_sec: Option<u64>,
    cov: Option<u64>,
    ft: Option<u64>,
    corpus: Option<u64>,
    crash_input: Option<String>,
    failure: Option<String>,
}

pub fn fuzz(a: FuzzArgs) -> anyhow::Result<ExitCode> {
    for t in &a.targets {
        if !TARGETS.iter().any(|x| x.name == t) {
            let names: Vec<&str> = TARGETS.iter().map(|x| x.name).collect();
            bail!("no fuzz target {t:?}; the targets are {}", names.join(", "));
        }
    }
    let chosen: Vec<&Target> = TARGETS
        .iter()
        .filter(|x| a.targets.is_empty() || a.targets.iter().any(|t| t == x.name))
        .collect();
    let out = target_dir()?.join("fuzz");
    if !a.no_build {
        build(&out)?;
    }
    let bin_dir = out.join(host_triple()?).join("release");
    let mut failed = Vec::new();
    let mut rows = Vec::new();
    for target in chosen {
        let name = target.name;
        eprintln!("== fuzz {name}: {} s", a.seconds);
        let f = run_target(&bin_dir, &out, target, a.seconds)?;
        if let Some(why) = &f.failure {
            failed.push(format!(
                "{name}: {why}{}",
                f.crash_input
                    .as_deref()
                    .map(|p| format!(" (input: {p})"))
                    .unwrap_or_default()
            ));
        }
        rows.push((name, f));
    }
    let show = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |n| n.to_string());
    println!(
        "{:<13} {:>12} {:>9} {:>7} {:>8} {:>7}  result",
        "target", "executions", "exec/s", "cov", "ft", "corpus"
    );
    for (name, f) in &rows {
        println!(
            "{:<13} {:>12} {:>9} {:>7} {:>8} {:>7}  {}",
            name,
            show(f.runs),
            show(f.exec_per_sec),
            show(f.cov),
            show(f.ft),
            show(f.corpus),
            if f.failure.is_some() { "FAILED" } else { "ok" }
        );
    }
    if failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for f in &failed {
        eprintln!("xtask: fuzz target {f}");
    }
    eprintln!(
        "xtask: replay a crash with `{}/T INPUT`; turn it into a regression test in the crate \
         that owns the code",
        bin_dir.display()
    );
    Ok(ExitCode::from(1))
}

/// `cargo fuzz build -s none`, into `<target dir>/fuzz`.
fn build(out: &Path) -> anyhow::Result<()> {
    let version = cargo().args(["fuzz", "--version"]).output();
    if !version.is_ok_and(|o| o.status.success()) {
        bail!("cargo-fuzz is not installed: run `cargo install cargo-fuzz --locked`");
    }
    let mut c = cargo();
    c.args(["fuzz", "build", "-s", "none", "--target-dir"])
        .arg(out);
    crate::run(c, "cargo fuzz build -s none")
}

/// The host's target triple (cargo-fuzz builds for it), from `rustc -vV`.
fn host_triple() -> anyhow::Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(rustc)
        .arg("-vV")
        .output()
        .context("cannot run rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_string)
        .context("rustc -vV names no host")
}

fn run_target(
    bin_dir: &Path,
    out: &Path,
    target: &Target,
    seconds: u64,
) -> anyhow::Result<Figures> {
    let name = target.name;
    let exe = bin_dir.join(name);
    if !exe.is_file() {
        bail!("{} is missing: build the targets first", exe.display());
    }
    let corpus = out.join("corpus").join(name);
    let artifacts = out.join("artifacts").join(name);
    let logs = out.join("logs");
    for d in [&corpus, &artifacts, &logs] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let seeds = workspace_root().join("fuzz").join("seeds").join(name);
    let log_path = logs.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut prefix = artifacts.into_os_string();
    prefix.push("/");
    let mut c = Command::new(&exe);
    c.arg(format!("-max_total_time={seconds}"))
        .arg(format!("-max_len={}", target.max_len))
        .args(target.long_at_once.then_some("-len_control=0"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg("-print_final_stats=1")
        .arg({
            let mut a = std::ffi::OsString::from("-artifact_prefix=");
            a.push(&prefix);
            a
        })
        .arg(&corpus)
        .arg(&seeds)
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the log handle")?)
        .stderr(log);
    let mut child = c
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    // libFuzzer stops itself after max_total_time; this bounds a run that does not.
    let limit = Duration::from_secs(seconds + 2 * INPUT_TIMEOUT_SECS + 120);
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let mut f = parse_log(&text);
    match status {
        None => f.failure = Some(format!("still running after {limit:?}; killed")),
        Some(s) if !s.success() => {
            let why = text
                .lines()
                .find(|l| l.contains("panicked at"))
                .and_then(|_| {
                    // The panic message is the line after "panicked at".
                    let mut it = text.lines().skip_while(|l| !l.contains("panicked at"));
                    it.next();
                    it.next().map(str::to_string)
                })
                .or_else(|| {
                    text.lines()
                        .find(|l| l.contains("ERROR: libFuzzer"))
                        .map(str::to_string)
                })
                .unwrap_or_else(|| format!("exited with {s}"));
            f.failure = Some(format!("{why} (log: {})", log_path.display()));
        }
        Some(_) => {}
    }
    Ok(f)
}

/// The figures of a libFuzzer log: the final statistics and the last status line, e.g.
/// `#301634 DONE   cov: 699 ft: 2139 corp: 396/90Kb lim: 901 exec/s: 27421 rss: 28Mb`.
fn parse_log(text: &str) -> Figures {
    let stat = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let mut f = Figures {
        runs: stat("stat::number_of_executed_units:"),
        exec_per_sec: stat("stat::average_exec_per_sec:"),
        ..Figures::default()
    };
    if let Some(last) = text.lines().rev().find(|l| l.contains(" cov: ")) {
        let field = |key: &str| {
            let mut words = last.split_whitespace();
            words.find(|w| *w == key)?;
            let v = words.next()?;
            v.split('/').next()?.parse::<u64>().ok()
        };
        f.cov = field("cov:");
        f.ft = field("ft:");
        f.corpus = field("corp:");
    }
    f.crash_input = text
        .lines()
        .find_map(|l| l.split_once("Test unit written to "))
        .map(|(_, p)| p.trim().to_string());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_figures() {
        let log = "INFO: Seed: 1\n#2\tINITED cov: 10 ft: 11 corp: 1/1b exec/s: 0 rss: 20Mb\n\
                   #301634\tDONE   cov: 699 ft: 2139 corp: 396/90Kb lim: 901 exec/s: 27421 rss: 28Mb\n\
                   Done 301634 runs in 11 second(s)\n\
                   stat::number_of_executed_units: 301634\n\
                   stat::average_exec_per_sec:     27421\n";
        let f = parse_log(log);
        assert_eq!(f.runs, Some(301_634));
        assert_eq!(f.exec_per_sec, Some(27_421));
        assert_eq!((f.cov, f.ft, f.corpus), (Some(699), Some(2139), Some(396)));
        assert_eq!(f.crash_input, None);
        let crash = "artifact_prefix='/t/'; Test unit written to /t/crash-64b7\n";
        assert_eq!(
            parse_log(crash).crash_input.as_deref(),
            Some("/t/crash-64b7")
        );
    }
}
