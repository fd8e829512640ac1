//! `smtpw spool copy`: move a stopped SQLite spool's queued work into a database spool.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

/// `smtpw spool ...`
#[derive(clap::Subcommand, Debug)]
pub enum SpoolCommand {
    /// Move the queued work of a stopped spool directory into a database spool (CLU-6): every
    /// queued job with its recipients left, attempts and retry times; jobs in DIR/incoming/ are
    /// ingested first. Run again after an interruption, it never queues a job twice.
    Copy(CopyArgs),
}

#[derive(clap::Args, Debug)]
pub struct CopyArgs {
    /// The spool directory (no `smtpw run` may be using it).
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// The database spool: postgres://USER@HOST/DB.
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// Print what was moved as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(c: SpoolCommand) -> anyhow::Result<ExitCode> {
    let SpoolCommand::Copy(args) = c;
    if !smtpw_engine::spool::postgres::is_url(&args.to) {
        anyhow::bail!(
            "--to {}: expected a database spool URL postgres://USER@HOST/DB",
            smtpw_engine::settings::redact_url(&args.to)
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let report = rt
        .block_on(smtpw_engine::spool::postgres::copy::copy_sqlite(
            &args.from,
            &args.to,
            smtpw_engine::clock::SystemClock::shared(),
        ))
        .with_context(|| {
            format!(
                "copying {} to {}",
                args.from.display(),
                smtpw_engine::settings::redact_url(&args.to)
            )
        })?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        writeln!(
            out,
            "moved {} jobs ({} copies, {} recipients){}",
            report.jobs,
            report.copies,
            report.recipients,
            if report.already_copied > 0 {
                format!(
                    "; {} jobs an interrupted copy had moved were removed from the directory",
                    report.already_copied
                )
            } else {
                String::new()
            }
        )?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
