//! `smtpw submit`: queue a message for a list of recipients by writing a `.MAIL` job into
//! `SPOOL/incoming` (temporary name, then renamed), whether or not a daemon runs.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use smtpw_engine::config::Pool;
use smtpw_engine::spool::SubmitError;

use crate::spool_at::SpoolAt;

/// Arguments of `smtpw submit`.
#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    /// The spool directory (the job goes to DIR/incoming), or a database spool's URL
    /// (postgres://USER@HOST/DB; then --via is needed). Default: `SMTPW_SPOOL`, else the
    /// settings file's `[spool] url` or `path`.
    #[arg(long, value_name = "DIR|URL")]
    pub spool: Option<PathBuf>,
    /// smtpw.toml, for `[spool]` (default: `SMTPW_SETTINGS`, else /etc/smtpw/smtpw.toml when it
    /// exists).
    #[arg(long, value_name = "FILE")]
    pub settings: Option<PathBuf>,
    /// With a database spool: queue the job as if node NODE had ingested it (its copies shared
    /// out by that node's DIST_FORWARD, split by its MAXBSMTP and SORT_RECIPIENTS). Default: the
    /// settings file's `[spool] via`.
    #[arg(long, value_name = "NODE")]
    pub via: Option<String>,
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

/// What a recipient list must hold (said after a line that does not).
const ONE_PER_LINE: &str = "one address per line (blank lines and lines starting with # are \
     skipped; <angle brackets> are optional), without spaces, control characters, < or >";

/// Streams addresses from a reader, one per line; stops at the first bad line with an error
/// that names the file and the line.
struct Addresses<R> {
    input: R,
    /// The file's name as given (`-`: standard input).
    name: String,
    line_no: u64,
    buf: Vec<u8>,
    count: u64,
}

impl<R: BufRead> Addresses<R> {
    fn bad_line(&self, what: String, expected: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "{}:{}: {what}, expected {expected}",
            self.name,
            self.line_no
        )
    }
}

impl<R: BufRead> Iterator for Addresses<R> {
    type Item = anyhow::Result<String>;
    fn next(&mut self) -> Option<anyhow::Result<String>> {
        loop {
            self.buf.clear();
            match self.input.read_until(b'\n', &mut self.buf) {
                Ok(0) => {
                    if self.count == 0 {
                        return Some(Err(anyhow::anyhow!(
                            "{}: no recipient in {} line{}, expected {ONE_PER_LINE}",
                            self.name,
                            self.line_no,
                            if self.line_no == 1 { "" } else { "s" }
                        )));
                    }
                    return None;
                }
                Ok(_) => self.line_no += 1,
                Err(e) => {
                    return Some(Err(anyhow::Error::new(e).context(format!(
                        "reading recipients from {} after line {}",
                        self.name, self.line_no
                    ))))
                }
            }
            let Ok(line) = std::str::from_utf8(&self.buf) else {
                let at = std::str::from_utf8(&self.buf)
                    .err()
                    .map_or(0, |e| e.valid_up_to());
                return Some(Err(self.bad_line(
                    format!(
                        "the line is not UTF-8 (byte 0x{:02x} at column {})",
                        self.buf.get(at).copied().unwrap_or(0),
                        at + 1
                    ),
                    "one address per line in UTF-8",
                )));
            };
            let a = line.trim();
            if a.is_empty() || a.starts_with('#') {
                continue;
            }
            let a = a
                .strip_prefix('<')
                .and_then(|x| x.strip_suffix('>'))
                .unwrap_or(a);
            if !smtpw_engine::job::valid_address(a) {
                let shown = smtpw_engine::text::quoted_prefix_in(a, 80, '"');
                return Some(Err(
                    self.bad_line(format!("invalid address {shown}"), ONE_PER_LINE)
                ));
            }
            self.count += 1;
            return Some(Ok(a.to_string()));
        }
    }
}

/// Run `smtpw submit`.
pub fn run(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    if args.rcpts == "-" && args.message == "-" {
        bail!("--rcpts and MESSAGE cannot both be standard input");
    }
    let mut rcpts = Addresses {
        input: BufReader::with_capacity(256 * 1024, open(&args.rcpts)?),
        name: if args.rcpts == "-" {
            "standard input".to_string()
        } else {
            args.rcpts.clone()
        },
        line_no: 0,
        buf: Vec::with_capacity(256),
        count: 0,
    };
    let message = open(&args.message)?;
    let settings = crate::spool_at::load_settings(args.settings.as_deref())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let spool = match crate::spool_at::locate(args.spool.as_deref(), settings.as_ref())
        .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        SpoolAt::Dir(d) => d,
        SpoolAt::Db(url) => {
            let via = args
                .via
                .clone()
                .or_else(|| settings.as_ref().and_then(|s| s.spool.via.clone()));
            let Some(via) = via else {
                bail!(
                    "a database spool needs --via NODE (or [spool] via in the settings file): \
                     the node whose share-out the job takes"
                );
            };
            return submit_db(url.expose(), &via, &args, &mut rcpts, message);
        }
    };
    if args.via.is_some() {
        bail!("--via is for a database spool (--spool postgres://...)");
    }
    let path =
        match smtpw_engine::spool::try_submit(&spool, &args.from, args.pool, &mut rcpts, message) {
            Ok(p) => p,
            Err(SubmitError::Input(e)) => return Err(e),
            Err(SubmitError::Spool(e)) => {
                return Err(
                    anyhow::Error::new(e).context(format!("submitting to {}", spool.display()))
                )
            }
        };
    let pool = args
        .pool
        .map_or_else(|| "the default pool".to_string(), |p| format!("pool {p}"));
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "queued {} ({} recipients, {pool})",
        path.display(),
        rcpts.count
    )?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// `smtpw submit` to a database spool, through node `via`.
fn submit_db(
    url: &str,
    via: &str,
    args: &SubmitArgs,
    rcpts: &mut Addresses<BufReader<Box<dyn Read>>>,
    mut message: Box<dyn Read>,
) -> anyhow::Result<ExitCode> {
    let rcpts: Vec<String> = rcpts.by_ref().collect::<anyhow::Result<_>>()?;
    let mut raw = Vec::new();
    message
        .read_to_end(&mut raw)
        .with_context(|| format!("reading {}", args.message))?;
    let job = smtpw_engine::spool::postgres::DirectJob {
        mail_from: args.from.clone(),
        pool: args.pool,
        rcpts,
        message: smtpw_engine::job::to_crlf(&raw),
    };
    let n = job.rcpts.len();
    let (id, copies) = crate::spool_at::submit_via(url, via, job)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "queued job {id} via {via} ({n} recipients, {copies} copies)"
    )?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
