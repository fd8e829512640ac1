//! The `smtpw` command line: a thin layer over the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    match cli.command {
        Command::Config(ConfigCommand::Check { file, json }) => {
            eprintln!(
                "config check {} (json={json}): not yet implemented",
                file.display()
            );
            ExitCode::from(1)
        }
    }
}
