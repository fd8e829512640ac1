//! The `smtpw` command line: a thin layer over the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod config_cmd;

#[derive(Parser, Debug)]
#[command(
    name = "smtpw",
    version,
    about = "LISTSERV-style SMTP workers: fast, rate-limited, lossless delivery to forwarding MTAs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Read, check and explain a SITE.CFG.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Config(c) => config_cmd::run(c),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("smtpw: {e:#}");
            ExitCode::FAILURE
        }
    }
}
