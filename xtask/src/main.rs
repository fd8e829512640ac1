//! `cargo xtask <task>`: project tasks in plain Rust.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run the conformance suite and write target/conformance/report.{md,html}.
    Conformance,
    /// Run the end-to-end benchmarks.
    Bench,
}

fn main() -> ExitCode {
    match Cli::parse().task {
        Task::Conformance | Task::Bench => {
            eprintln!("xtask: this task is not built yet");
            ExitCode::from(1)
        }
    }
}
