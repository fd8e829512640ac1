//! `smtpw queue`: what a spool holds, read from its database (works while the daemon runs).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use smtpw::clock::{Clock, SystemClock};
use smtpw::spool::{read_stats, CopyState, QueueStats};

/// Arguments of `smtpw queue`.
#[derive(clap::Args, Debug)]
pub struct QueueArgs {
    /// The spool directory.
    #[arg(long, value_name = "DIR")]
    pub spool: PathBuf,
    /// Print JSON: {"queued", "delivered", "failed", ..., "pools": [...]}, counted in recipients.
    #[arg(long)]
    pub json: bool,
}

/// `90` -> `1m30s`, `7500` -> `2h05m`, `200000` -> `2d07h`.
pub fn human_age(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

fn state_name(s: CopyState) -> &'static str {
    match s {
        CopyState::Ready => "ready",
        CopyState::Deferred => "deferred",
        CopyState::InFlight => "in-flight",
    }
}

/// The human-readable table.
pub fn render(st: &QueueStats) -> String {
    let mut out = format!(
        "queued {} recipients in {} copies ({} jobs), delivered {}, failed {}; oldest {}; {} file(s) waiting in incoming\n",
        st.queued,
        st.copies,
        st.jobs,
        st.delivered,
        st.failed,
        human_age(st.oldest_age_secs),
        st.incoming_files
    );
    if !st.pools.is_empty() {
        out.push_str(&format!(
            "{:<5} {:<9} {:>8} {:>11} {:>8}\n",
            "POOL", "STATE", "COPIES", "RECIPIENTS", "OLDEST"
        ));
        for p in &st.pools {
            out.push_str(&format!(
                "{:<5} {:<9} {:>8} {:>11} {:>8}\n",
                p.pool.to_string(),
                state_name(p.state),
                p.copies,
                p.recipients,
                human_age(p.oldest_age_secs)
            ));
        }
    }
    if !st.failure_reasons.is_empty() {
        out.push_str("failed recipients by reply:\n");
        for f in &st.failure_reasons {
            out.push_str(&format!("{:>8}  {}\n", f.recipients, f.reply));
        }
    }
    out
}

/// Run `smtpw queue`.
pub fn run(args: QueueArgs) -> anyhow::Result<ExitCode> {
    if !args.spool.is_dir() {
        anyhow::bail!("{} is not a directory", args.spool.display());
    }
    let now = SystemClock::new().now();
    let st = read_stats(&args.spool, now)
        .with_context(|| format!("reading the spool {}", args.spool.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        print!("{}", render(&st));
    }
    Ok(ExitCode::SUCCESS)
}
