//! Runs the conformance suite, prints the table, writes the report, exits 1 on any failure.
//!
//! Real-time scenarios find the binaries through `$SMTPW_BIN` / `$MOCK_MTA_BIN` (set by `cargo
//! xtask conformance`), else build them with cargo.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use conformance::report;
use conformance::runner::{self, Selection};
use conformance::scenarios;

#[derive(Parser, Debug)]
#[command(name = "conformance", about = "Run the smtpw conformance suite")]
struct Cli {
    /// Run only the scenarios whose name contains NAME (case-insensitive).
    #[arg(long, value_name = "NAME")]
    filter: Option<String>,
    /// Only the real-time runs (the binaries as processes).
    #[arg(long, conflicts_with = "virtual_only")]
    real_time_only: bool,
    /// Only the virtual runs (paused time, in process).
    #[arg(long)]
    virtual_only: bool,
    /// Not the real-time runs on a PostgreSQL spool (mode real-time-pg).
    #[arg(long)]
    no_postgres: bool,
    /// Where to write report.md, report.html and results.json.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let sel = Selection {
        filter: cli.filter,
        virtual_mode: !cli.real_time_only,
        real_time: !cli.virtual_only,
        postgres: !cli.no_postgres,
    };
    let out = match cli.out {
        Some(d) => d,
        None => runner::target_dir()
            .unwrap_or_else(|_| runner::workspace_root().join("target"))
            .join("conformance"),
    };
    let all = scenarios::all();
    let started = Instant::now();
    let mut mode_time = [0.0f64; 2];
    let results = runner::run(&all, &sel, |r| {
        mode_time[usize::from(r.mode.is_real_time())] += r.took.as_secs_f64();
        let mut e = std::io::stderr().lock();
        let _ = writeln!(
            e,
            "{} {} ({}) {:.2}s",
            if r.passed { "pass" } else { "FAIL" },
            r.scenario,
            r.mode,
            r.took.as_secs_f64()
        );
    });
    if results.is_empty() {
        eprintln!("conformance: no scenario matches the selection");
        return Ok(ExitCode::from(2));
    }
    print!("{}", report::table(&results));
    println!(
        "time: virtual {:.2}s, real-time {:.2}s, total {:.2}s",
        mode_time[0],
        mode_time[1],
        started.elapsed().as_secs_f64()
    );
    report::write_all(&out, &results)?;
    println!("report: {}", out.join("report.html").display());
    Ok(if results.iter().all(|r| r.passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
