//! `smtpw config check` and `smtpw config explain`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use smtpw_engine::config::{self, ConfigError, SiteConfig, TimeOfDay};
use smtpw_engine::relay::RelayRow;
use smtpw_engine::route;
use smtpw_engine::settings::Settings;

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
    /// The smtpw settings file (smtpw.toml): also check it and show, per worker host, its TLS
    /// mode and AUTH user (never a secret).
    #[arg(long, value_name = "SMTPW.TOML")]
    pub settings: Option<PathBuf>,
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
    let settings = match &args.settings {
        None => None,
        Some(path) => match Settings::load(path) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("{e}");
                return Ok(ExitCode::from(BAD_FILE));
            }
        },
    };
    let relays = settings
        .as_ref()
        .map(|s| smtpw_engine::relay::relay_rows(&cfg, &s.relays));
    if let (Some(s), Some((_, unmatched))) = (&settings, &relays) {
        let mut err = std::io::stderr().lock();
        for w in &s.warnings {
            writeln!(err, "{w}")?;
        }
        for k in unmatched {
            writeln!(
                err,
                "warning: [relays.\"{}\"] names no host of {}",
                smtpw_engine::text::escape_controls(k),
                smtpw_engine::text::escape_controls(&args.file.display().to_string())
            )?;
        }
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut v = serde_json::to_value(cfg.view())?;
        if let (Some((rows, unmatched)), Some(obj)) = (&relays, v.as_object_mut()) {
            obj.insert("relays".into(), serde_json::to_value(rows)?);
            obj.insert("unmatched_relays".into(), serde_json::to_value(unmatched)?);
        }
        serde_json::to_writer_pretty(&mut out, &v)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", cfg.to_table())?;
        if let Some((rows, _)) = &relays {
            write_relays(&mut out, rows)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The relays table: per worker host, TLS mode and AUTH user (TXN-10).
fn write_relays(out: &mut impl std::io::Write, rows: &[RelayRow]) -> std::io::Result<()> {
    writeln!(out, "\nRelays (smtpw.toml):")?;
    let head = ["WHERE", "HOST", "TLS", "AUTH USER", "MECHANISM", "SETTINGS"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.role.clone(),
                r.host.clone(),
                r.tls.as_str().to_owned(),
                r.user.clone().unwrap_or_else(|| "-".into()),
                r.mechanism.clone().unwrap_or_else(|| "-".into()),
                r.settings.clone(),
            ]
        })
        .collect();
    let mut width = head.map(str::len);
    for c in &cells {
        for (w, v) in width.iter_mut().zip(c) {
            *w = (*w).max(v.len());
        }
    }
    let line = |out: &mut dyn std::io::Write, c: [&str; 6]| -> std::io::Result<()> {
        let mut s = String::from(" ");
        for (v, w) in c.iter().zip(width) {
            s.push_str(&format!(" {v:<w$}"));
        }
        writeln!(out, "{}", s.trim_end())
    };
    line(out, head)?;
    for c in &cells {
        line(
            out,
            [&c[0], &c[1], &c[2], &c[3], &c[4], &c[5]].map(String::as_str),
        )?;
    }
    Ok(())
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
