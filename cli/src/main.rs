//! The `smtpw` command line: a thin layer over the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod admin;
mod config_cmd;
mod ctl_cmd;
#[cfg(feature = "demo")]
mod demo_cmd;
mod queue_cmd;
mod reload;
mod run_cmd;
mod sdnotify;
mod sendmail_cmd;
mod spool_at;
mod spool_cmd;
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
    /// Control a running `smtpw run` through its admin endpoint: queue, jobs, suspend, resume,
    /// flush, cancel.
    Ctl(ctl_cmd::CtlArgs),
    /// Spool maintenance: `smtpw spool copy --from DIR --to URL`.
    #[command(subcommand)]
    Spool(spool_cmd::SpoolCommand),
    /// The sendmail command line list managers use (also when run as a link named
    /// `sendmail`): the message on standard input, queued durably before exit 0; 75 when it
    /// cannot be. `smtpw sendmail [--spool DIR] [-t] [-i|-oi] [-f SENDER] [--] RCPT...`
    #[command(disable_help_flag = true)]
    Sendmail {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Deliver a sample 10,000-recipient job to two in-process IIS-like relays: no setup.
    #[cfg(feature = "demo")]
    Demo(demo_cmd::DemoArgs),
}

/// Logs go to stderr; `RUST_LOG` overrides `default` (e.g. `RUST_LOG=smtpw=debug`).
fn init_logging(json: bool, default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
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
    // Run as `sendmail` (a link), or `smtpw sendmail`: sendmail's own command line, which clap
    // would not parse (`-oi`, `-fSENDER`, recipients after `--`).
    let mut argv = std::env::args_os();
    let program = argv.next().unwrap_or_default();
    let named_sendmail = std::path::Path::new(&program)
        .file_name()
        .is_some_and(|n| n == "sendmail");
    let rest: Vec<std::ffi::OsString> = argv.collect();
    if named_sendmail {
        init_logging(false, "warn");
        return sendmail_cmd::run(rest);
    }
    if rest.first().is_some_and(|a| a == "sendmail") {
        init_logging(false, "warn");
        return sendmail_cmd::run(rest[1..].to_vec());
    }
    let cli = Cli::parse();
    // The demo prints its own report; its progress is not worth INFO lines.
    #[cfg(feature = "demo")]
    let default_level = if matches!(cli.command, Command::Demo(_)) {
        "warn"
    } else {
        "info"
    };
    #[cfg(not(feature = "demo"))]
    let default_level = "info";
    init_logging(cli.log_json, default_level);
    let result = match cli.command {
        Command::Config(c) => config_cmd::run(c),
        Command::Run(args) => run_cmd::run(args),
        Command::Submit(args) => submit_cmd::run(args),
        Command::Queue(args) => queue_cmd::run(args),
        Command::Ctl(args) => ctl_cmd::run(args),
        Command::Spool(c) => spool_cmd::run(c),
        Command::Sendmail { args } => return sendmail_cmd::run(args),
        #[cfg(feature = "demo")]
        Command::Demo(args) => demo_cmd::run(args),
    };
    match result {
        Ok(code) => code,
        // The reader of our output has gone (`smtpw queue | head`): nothing is wrong with the
        // command, and there is no one left to tell.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            use std::io::Write as _;
            // Errors quote files and input: never raw control characters on the terminal.
            let text =
                smtpw_engine::text::escape_controls_keep_lines(&format!("{e:#}")).into_owned();
            let _ = writeln!(std::io::stderr(), "smtpw: error: {text}");
            ExitCode::from(2)
        }
    }
}

/// True when `e` comes from writing to a pipe whose reader has closed it (EPIPE).
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind)
                == Some(std::io::ErrorKind::BrokenPipe)
    })
}
