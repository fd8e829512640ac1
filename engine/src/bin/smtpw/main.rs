//! The `smtpw` command line: a thin layer over the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod queue_cmd;
mod submit_cmd;

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
    /// Read and explain a SITE.CFG.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Queue a message for a list of recipients (writes a .MAIL job into SPOOL/incoming).
    Submit(submit_cmd::SubmitArgs),
    /// Show what a spool holds: copies and recipients per pool and state.
    Queue(queue_cmd::QueueArgs),
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Check a SITE.CFG and print the resolved configuration.
    Check {
        file: std::path::PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Config(ConfigCommand::Check { file, json }) => {
            eprintln!(
                "config check {} (json={json}): not yet implemented",
                file.display()
            );
            Ok(ExitCode::from(1))
        }
        Command::Submit(args) => submit_cmd::run(args),
        Command::Queue(args) => queue_cmd::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("smtpw: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
