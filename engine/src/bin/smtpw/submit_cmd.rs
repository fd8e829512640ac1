//! `smtpw submit`: queue a message for a list of recipients by writing a `.MAIL` job into
//! `SPOOL/incoming` (temporary name, then renamed), whether or not a daemon runs.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use smtpw::config::Pool;

/// Arguments of `smtpw submit`.
#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    /// The spool directory (the job goes to DIR/incoming).
    #[arg(long, value_name = "DIR")]
    pub spool: PathBuf,
    /// Envelope sender (MAIL FROM); "" for the null sender.
    #[arg(long, value_name = "ADDR")]
    pub from: String,
    /// File of recipient addresses, one per line (blank lines and lines starting with # are
    /// skipped; <angle brackets> are optional), or - for standard input.
    #[arg(long, value_name = "FILE|-")]
    pub rcpts: String,
    /// Delivery pool A..Z or - (default: the spool's configured default pool).
    #[arg(long, value_name = "P", value_parser = parse_pool)]
    pub pool: Option<Pool>,
    /// The message (RFC 5322 headers and body, LF or CRLF), or - for standard input.
    #[arg(value_name = "MESSAGE.eml")]
    pub message: String,
}

fn parse_pool(s: &str) -> Result<Pool, String> {
    let mut cs = s.chars();
    match (cs.next().and_then(Pool::from_char), cs.next()) {
        (Some(p), None) => Ok(p),
        _ => Err(format!("{s:?} is not a pool: expected one of A..Z or -")),
    }
}

fn open(name: &str) -> anyhow::Result<Box<dyn Read>> {
    if name == "-" {
        Ok(Box::new(io::stdin().lock()))
    } else {
        Ok(Box::new(
            File::open(name).with_context(|| format!("opening {name}"))?,
        ))
    }
}

/// Streams addresses from a reader, remembering the first I/O error.
struct Addresses<R> {
    lines: io::Lines<R>,
    error: Option<io::Error>,
    count: u64,
}

impl<R: BufRead> Iterator for Addresses<R> {
    type Item = String;
    fn next(&mut self) -> Option<String> {
        loop {
            match self.lines.next()? {
                Ok(line) => {
                    let a = line.trim();
                    if a.is_empty() || a.starts_with('#') {
                        continue;
                    }
                    let a = a
                        .strip_prefix('<')
                        .and_then(|x| x.strip_suffix('>'))
                        .unwrap_or(a);
                    self.count += 1;
                    return Some(a.to_string());
                }
                Err(e) => {
                    self.error = Some(e);
                    return None;
                }
            }
        }
    }
}

/// Run `smtpw submit`.
pub fn run(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    if args.rcpts == "-" && args.message == "-" {
        bail!("--rcpts and MESSAGE cannot both be standard input");
    }
    let mut rcpts = Addresses {
        lines: BufReader::with_capacity(256 * 1024, open(&args.rcpts)?).lines(),
        error: None,
        count: 0,
    };
    let message = open(&args.message)?;
    let path = smtpw::spool::submit(&args.spool, &args.from, args.pool, &mut rcpts, message)
        .with_context(|| format!("submitting to {}", args.spool.display()))?;
    if let Some(e) = rcpts.error {
        let _ = std::fs::remove_file(&path);
        return Err(e).with_context(|| format!("reading recipients from {}", args.rcpts));
    }
    let pool = args
        .pool
        .map_or_else(|| "the default pool".to_string(), |p| format!("pool {p}"));
    println!(
        "queued {} ({} recipients, {pool})",
        path.display(),
        rcpts.count
    );
    Ok(ExitCode::SUCCESS)
}
