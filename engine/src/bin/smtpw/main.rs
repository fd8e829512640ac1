//! The `smtpw` command line: a thin layer over the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod config_cmd;
mod queue_cmd;
mod run_cmd;
mod submit_cmd;

#[derive(Parser, Debug)]
#[command(
    name = "smtpw",
    version,
    about = "LISTSERV-style SMTP workers: fast, rate-limited, lossless delivery to forwarding MTAs"
)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Read, check and explain a SITE.CFG.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Deliver the spool's jobs through the workers SITE.CFG defines.
    Run(run_cmd::RunArgs),
    /// Queue a message for a list of recipients (writes a .MAIL job into SPOOL/incoming).
    Submit(submit_cmd::SubmitArgs),
    /// Show what a spool holds: copies and recipients per pool and state.
    Queue(queue_cmd::QueueArgs),
}

fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only on a terminal, not in log files or the journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    let result = match cli.command {
        Command::Config(c) => config_cmd::run(c),
        Command::Run(args) => run_cmd::run(args),
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
