//! `smtpw config check` and `smtpw config explain`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use smtpw_engine::config::{self, ConfigError, SiteConfig, TimeOfDay};
use smtpw_engine::route;

/// Exit status for a configuration that cannot be used.
const BAD_FILE: u8 = 2;

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Check a SITE.CFG (or go.user) and print the resolved configuration.
    Check(CheckArgs),
    /// Show, for each worker, the host it uses at a local time and why.
    Explain(ExplainArgs),
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The SITE.CFG (Windows form) or go.user (unix form) to read.
    pub file: PathBuf,
    /// An override file read after FILE (LISTSERV's SITECFG.FILE).
    #[arg(long, value_name = "SITECFG.FILE")]
    pub overrides: Option<PathBuf>,
    /// Print the resolved configuration as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// The SITE.CFG (Windows form) or go.user (unix form) to read.
    pub file: PathBuf,
    /// Local time of day, HH:MM (24-hour clock).
    #[arg(long, value_parser = parse_at)]
    pub at: TimeOfDay,
    /// An override file read after FILE (LISTSERV's SITECFG.FILE).
    #[arg(long, value_name = "SITECFG.FILE")]
    pub overrides: Option<PathBuf>,
    /// Print JSON: a list of {"id", "via", "host", "port"}.
    #[arg(long)]
    pub json: bool,
}

fn parse_at(s: &str) -> Result<TimeOfDay, String> {
    s.parse()
}

pub fn run(cmd: ConfigCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCommand::Check(a) => check(a),
        ConfigCommand::Explain(a) => explain(a),
    }
}

/// Loads the file; on failure prints every diagnostic to stderr and gives the exit status.
fn load(
    file: &std::path::Path,
    overrides: Option<&std::path::Path>,
) -> Result<SiteConfig, ExitCode> {
    match config::load_with_overrides(file, overrides) {
        Ok(cfg) => Ok(cfg),
        Err(e @ ConfigError::Io { .. }) => {
            eprintln!("smtpw: {e}");
            Err(ExitCode::from(BAD_FILE))
        }
        Err(e) => {
            let mut err = std::io::stderr().lock();
            for d in e.diagnostics() {
                let _ = writeln!(err, "{d}");
            }
            let n = e.errors().count();
            let _ = writeln!(
                err,
                "{}: {n} error{}; the configuration was not used",
                smtpw_engine::text::escape_controls(&file.display().to_string()),
                if n == 1 { "" } else { "s" }
            );
            Err(ExitCode::from(BAD_FILE))
        }
    }
}

pub fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let cfg = match load(&args.file, args.overrides.as_deref()) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &cfg.view())?;
        writeln!(out)?;
    } else {
        write!(out, "{}", cfg.to_table())?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn explain(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let cfg = match load(&args.file, args.overrides.as_deref()) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let rows = route::explain(&cfg, args.at);
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        writeln!(
            out,
            "No SMTP_FORWARD_n workers: at {} all mail goes through SMTP_FORWARD ({}).",
            args.at,
            cfg.sync_forward
                .as_ref()
                .map_or_else(|| "not set".to_string(), ToString::to_string)
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(out, "At {} (local time):", args.at)?;
    let target = |r: &route::Explained| match (&r.host, r.port) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        _ => "-".to_string(),
    };
    let width = rows
        .iter()
        .map(|r| target(r).len())
        .max()
        .unwrap_or(1)
        .max(4);
    writeln!(out, "  {:>3}  {:<8}  {:<width$}  WHY", "ID", "VIA", "HOST")?;
    for r in &rows {
        let via = match r.via {
            route::Via::Primary => "primary",
            route::Via::Failover => "failover",
            route::Via::Inactive => "inactive",
        };
        writeln!(
            out,
            "  {:>3}  {:<8}  {:<width$}  {}",
            r.id,
            via,
            target(r),
            r.reason
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
