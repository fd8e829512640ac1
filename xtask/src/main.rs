//! `cargo xtask <task>`: project tasks in plain Rust.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};

mod bench;
mod bench_listen;
mod bench_pg;
mod fuzz;
mod postfix;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run the conformance suite and write target/conformance/report.{md,html}.
    Conformance(ConformanceArgs),
    /// Run the end-to-end benchmarks (smtpw vs smtp-source/smtp-sink) and write
    /// target/bench/report.md and chart.svg.
    Bench(bench::BenchArgs),
    /// Build the libFuzzer targets in fuzz/ (cargo-fuzz, stable toolchain) and run each for
    /// --seconds; prints executions, exec/s and coverage per target, fails on a crash.
    Fuzz(fuzz::FuzzArgs),
}

#[derive(Args)]
struct ConformanceArgs {
    /// Run only the scenarios whose name contains NAME (case-insensitive).
    #[arg(long, value_name = "NAME")]
    filter: Option<String>,
    /// Only the real-time runs (the binaries as processes over loopback).
    #[arg(long, conflicts_with = "virtual_only")]
    real_time_only: bool,
    /// Only the virtual runs (paused time, in process).
    #[arg(long)]
    virtual_only: bool,
    /// Where to write the report (default: <target dir>/conformance).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::Conformance(a) => conformance(a),
        Task::Bench(a) => bench::bench(a),
        Task::Fuzz(a) => fuzz::fuzz(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn cargo() -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut c = Command::new(program);
    c.current_dir(workspace_root());
    c
}

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

fn run(mut c: Command, what: &str) -> anyhow::Result<()> {
    let status = c.status().with_context(|| format!("cannot start {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// The cargo target directory (respects CARGO_TARGET_DIR and cargo config).
fn target_dir() -> anyhow::Result<PathBuf> {
    let out = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("cannot run cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("cargo metadata printed no JSON")?;
    v.get("target_directory")
        .and_then(|t| t.as_str())
        .map(PathBuf::from)
        .context("cargo metadata has no target_directory")
}

fn conformance(a: ConformanceArgs) -> anyhow::Result<ExitCode> {
    // The binaries users run, built as users build them (not feature-unified with the suite).
    let mut build = cargo();
    build.args(["build", "-p", "smtpw", "-p", "mock-mta", "--bins"]);
    run(build, "cargo build -p smtpw -p mock-mta --bins")?;
    let mut build = cargo();
    build.args(["build", "-p", "conformance", "--bin", "conformance"]);
    run(build, "cargo build -p conformance --bin conformance")?;

    let debug = target_dir()?.join("debug");
    let exe = |name: &str| debug.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let mut suite = Command::new(exe("conformance"));
    suite
        .current_dir(workspace_root())
        .env("SMTPW_BIN", exe("smtpw"))
        .env("MOCK_MTA_BIN", exe("mock-mta"));
    if let Some(f) = &a.filter {
        suite.arg("--filter").arg(f);
    }
    if a.real_time_only {
        suite.arg("--real-time-only");
    }
    if a.virtual_only {
        suite.arg("--virtual-only");
    }
    if let Some(o) = &a.out {
        suite.arg("--out").arg(o);
    }
    let status = suite
        .status()
        .with_context(|| format!("cannot start {}", exe("conformance").display()))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => {
            eprintln!("xtask: the conformance suite was killed by a signal ({status})");
            ExitCode::from(1)
        }
    })
}
