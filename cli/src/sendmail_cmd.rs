//! `smtpw sendmail` (also run as a link named `sendmail`): the sendmail command line list
//! managers use (LISTEN-8). The message on standard input; `-f SENDER`; recipients as arguments
//! (after `--` or not) or, with `-t`, from the To, Cc and Bcc fields (Bcc removed); `-i`/`-oi`
//! (a lone dot does not end the message); `-odi`, `-oem` and the other `-od`/`-oe` modes, `-F`,
//! `-bm` accepted. The job is written to `SPOOL/incoming` and synced before the exit: 0 means
//! durable; 75 (EX_TEMPFAIL) means it could not be made so and the caller should try again;
//! 64 (EX_USAGE) a command line it does not understand.
//!
//! The spool: `--spool DIR|URL`, else `SMTPW_SPOOL`, else `[spool] url` or `path` of the
//! settings file (`--settings FILE`, else `SMTPW_SETTINGS`, else /etc/smtpw/smtpw.toml when it
//! exists). A database spool takes the job in one committed transaction, shared out as node
//! `--via NODE` (else `[spool] via`) would share it.

use std::ffi::OsString;
use std::io::{Read, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use smtpw_engine::config::Pool;
use smtpw_engine::settings::Settings;

use crate::spool_at::{SpoolAt, DEFAULT_SETTINGS};

/// sysexits.h
pub const EX_USAGE: u8 = 64;
pub const EX_DATAERR: u8 = 65;
pub const EX_TEMPFAIL: u8 = 75;

const USAGE: &str =
    "usage: smtpw sendmail [--spool DIR|URL] [--via NODE] [--settings FILE] [-t] [-i|-oi] \
     [-f SENDER] [-F NAME] [-odi|-odb|-odq] [-oem|-oep|-oeq] [-bm] [--] [RECIPIENT...] < MESSAGE";

/// A parsed sendmail command line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Args {
    pub spool: Option<PathBuf>,
    pub settings: Option<PathBuf>,
    /// With a database spool: the node whose share-out the job takes.
    pub via: Option<String>,
    pub from: Option<String>,
    pub full_name: Option<String>,
    /// `-t`: recipients from the header too.
    pub from_header: bool,
    /// `-i` / `-oi`: a line of one dot is text, not the end.
    pub ignore_dots: bool,
    pub rcpts: Vec<String>,
}

/// Parse the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args::default();
    let mut it = args.iter();
    let mut only_rcpts = false;
    while let Some(arg) = it.next() {
        if only_rcpts || !arg.starts_with('-') || arg == "-" {
            a.rcpts.extend(split_list(arg));
            continue;
        }
        let mut value = |name: &str, rest: &str| -> Result<String, String> {
            if rest.is_empty() {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))
            } else {
                Ok(rest.to_owned())
            }
        };
        match arg.as_str() {
            "--" => only_rcpts = true,
            "--spool" => a.spool = Some(PathBuf::from(value("--spool", "")?)),
            "--settings" => a.settings = Some(PathBuf::from(value("--settings", "")?)),
            "--via" => a.via = Some(value("--via", "")?),
            "-t" => a.from_header = true,
            "-i" | "-oi" => a.ignore_dots = true,
            // Delivery modes (interactive, background, queue), error modes (mail, print,
            // quiet, write, exit-zero), "deliver mail" mode: the spool decides all of them.
            "-odi" | "-odb" | "-odq" | "-odd" | "-oem" | "-oep" | "-oeq" | "-oew" | "-oee"
            | "-bm" => {}
            s if s.starts_with("-f") || s.starts_with("-r") => {
                a.from = Some(value(&s[..2], &s[2..])?);
            }
            s if s.starts_with("-F") => a.full_name = Some(value("-F", &s[2..])?),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(a)
}

/// `a@x, b@y` -> both (sendmail takes comma-separated lists in an argument).
fn split_list(arg: &str) -> impl Iterator<Item = String> + '_ {
    arg.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.strip_prefix('<')
                .and_then(|x| x.strip_suffix('>'))
                .unwrap_or(s)
                .to_owned()
        })
}

/// The message as read from standard input: up to a lone dot unless `ignore_dots`.
pub fn read_message(input: &[u8], ignore_dots: bool) -> &[u8] {
    if ignore_dots {
        return input;
    }
    let mut pos = 0;
    while pos < input.len() {
        let end = memchr_nl(&input[pos..]).map_or(input.len(), |i| pos + i + 1);
        let line = &input[pos..end];
        let bare = line
            .strip_suffix(b"\n")
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .unwrap_or(line);
        if bare == b"." {
            return &input[..pos];
        }
        pos = end;
    }
    input
}

fn memchr_nl(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

/// What `-t` takes from the header: the addresses of To, Cc and Bcc; the message without Bcc.
/// Also the address of From (the sender when -f is not given) and the Delivery-Pool field.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub rcpts: Vec<String>,
    pub from: Option<String>,
    /// Whether the header has a From field (whatever its value).
    pub has_from: bool,
    pub message: Vec<u8>,
}

/// Read the header fields of `message` (up to the first empty line); remove every Bcc field.
pub fn scan_header(message: &[u8]) -> Header {
    let mut h = Header::default();
    let mut fields: Vec<(String, String, bool)> = Vec::new(); // name, value, is_bcc
    let mut pos = 0;
    let mut out = Vec::with_capacity(message.len());
    let mut dropping = false;
    let mut in_header = true;
    while pos < message.len() {
        let end = memchr_nl(&message[pos..]).map_or(message.len(), |i| pos + i + 1);
        let line = &message[pos..end];
        pos = end;
        if !in_header {
            out.extend_from_slice(line);
            continue;
        }
        let text = String::from_utf8_lossy(line);
        let bare = text.trim_end_matches(['\r', '\n']);
        if bare.is_empty() {
            in_header = false;
            out.extend_from_slice(line);
            continue;
        }
        if line.first().is_some_and(|c| *c == b' ' || *c == b'\t') {
            if let Some(f) = fields.last_mut() {
                f.1.push(' ');
                f.1.push_str(bare.trim());
            }
        } else if let Some((name, value)) = bare.split_once(':') {
            let name = name.trim().to_ascii_lowercase();
            dropping = name == "bcc";
            fields.push((name, value.trim().to_owned(), dropping));
        } else {
            // Not a header field: the body starts here (no empty line between).
            in_header = false;
            dropping = false;
        }
        if !dropping {
            out.extend_from_slice(line);
        }
    }
    for (name, value, _) in fields {
        match name.as_str() {
            "to" | "cc" | "bcc" => h.rcpts.extend(addresses(&value)),
            "from" => {
                h.has_from = true;
                if h.from.is_none() {
                    h.from = addresses(&value).into_iter().next();
                }
            }
            _ => {}
        }
    }
    h.message = out;
    h
}

/// `-F NAME` for a message without a From field: `From: NAME <sender>` put before the header
/// (LISTEN-8). The name loses its control characters (no header can be injected through it) and
/// is quoted when it is more than words of RFC 5322 atoms.
pub fn add_from(message: &[u8], name: &str, sender: &str) -> Vec<u8> {
    let clean: String = name.chars().filter(|c| !c.is_control()).collect();
    let clean = clean.trim();
    let atom = |c: char| c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~ ".contains(c);
    let shown = if clean.chars().all(atom) {
        clean.to_owned()
    } else {
        format!("\"{}\"", clean.replace('\\', "\\\\").replace('"', "\\\""))
    };
    let sender: String = sender.chars().filter(|c| !c.is_control()).collect();
    let crlf = message.windows(2).any(|w| w == b"\r\n");
    let mut out = Vec::with_capacity(message.len() + shown.len() + sender.len() + 12);
    out.extend_from_slice(format!("From: {shown} <{sender}>").as_bytes());
    out.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
    out.extend_from_slice(message);
    out
}

/// The addresses of an address-list field: `Name <a@x>, b@y, group: c@z;`.
pub fn addresses(value: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let (mut cur, mut quoted, mut angle, mut depth) = (String::new(), false, false, 0u32);
    for c in value.chars() {
        match c {
            '"' if depth == 0 => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => {
                depth -= 1;
                continue;
            }
            '<' if !quoted && depth == 0 => angle = true,
            '>' if !quoted && depth == 0 => angle = false,
            ',' | ';' if !quoted && !angle && depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            ':' if !quoted && !angle && depth == 0 => {
                // A group's name: what came before is not an address.
                cur.clear();
                continue;
            }
            _ => {}
        }
        if depth == 0 {
            cur.push(c);
        }
    }
    parts.push(cur);
    parts
        .iter()
        .filter_map(|p| {
            let p = p.trim();
            let a = match (p.rfind('<'), p.rfind('>')) {
                (Some(i), Some(j)) if i < j => &p[i + 1..j],
                _ => p,
            };
            let a = a.trim();
            (a.contains('@') && smtpw_engine::job::valid_address(a)).then(|| a.to_owned())
        })
        .collect()
}

/// Where the spool is, and the settings that came with it.
fn locate_spool(args: &Args) -> Result<(SpoolAt, Option<Settings>), String> {
    let settings = crate::spool_at::load_settings(args.settings.as_deref())?;
    let spool = crate::spool_at::locate(args.spool.as_deref(), settings.as_ref()).map_err(|e| {
        if settings.is_none() {
            format!("{e} (no settings file: none given and {DEFAULT_SETTINGS} does not exist)")
        } else {
            e
        }
    })?;
    Ok((spool, settings))
}

fn login_address() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "root".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{user}@{host}")
}

fn fail(code: u8, msg: &str) -> ExitCode {
    let _ = writeln!(
        std::io::stderr(),
        "smtpw sendmail: {}",
        smtpw_engine::text::escape_controls_keep_lines(msg)
    );
    ExitCode::from(code)
}

/// Run the sendmail command on `args` (without the program name).
pub fn run(args: Vec<OsString>) -> ExitCode {
    let args: Vec<String> = match args
        .into_iter()
        .map(OsString::into_string)
        .collect::<Result<_, _>>()
    {
        Ok(a) => a,
        Err(_) => return fail(EX_USAGE, "an argument is not UTF-8"),
    };
    if args.first().is_some_and(|a| a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let a = match parse(&args) {
        Ok(a) => a,
        Err(e) => return fail(EX_USAGE, &format!("{e}\n{USAGE}")),
    };
    let (spool, settings) = match locate_spool(&a) {
        Ok(x) => x,
        Err(e) => return fail(EX_TEMPFAIL, &e),
    };
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut input) {
        return fail(EX_TEMPFAIL, &format!("reading the message: {e}"));
    }
    let message = read_message(&input, a.ignore_dots);
    let header = scan_header(message);
    let (message, header_pool) =
        smtpw_engine::listen::session::take_pool_header(header.message.clone());
    let mut rcpts = a.rcpts.clone();
    if a.from_header {
        rcpts.extend(header.rcpts.iter().cloned());
    }
    if rcpts.is_empty() {
        return fail(
            EX_USAGE,
            &format!(
                "no recipient: give them as arguments{}\n{USAGE}",
                if a.from_header {
                    ", or in To, Cc or Bcc"
                } else {
                    " (or -t to take them from the header)"
                }
            ),
        );
    }
    if let Some(bad) = rcpts.iter().find(|r| !smtpw_engine::job::valid_address(r)) {
        return fail(
            EX_DATAERR,
            &format!("invalid recipient address {bad:?}: no spaces, control characters, < or >"),
        );
    }
    let from = a
        .from
        .clone()
        .or(header.from.clone())
        .unwrap_or_else(login_address);
    let message = match (&a.full_name, header.has_from) {
        (Some(name), false) => {
            let sender = if from.is_empty() {
                login_address()
            } else {
                from.clone()
            };
            add_from(&message, name, &sender)
        }
        _ => message,
    };
    let listen = settings.as_ref().and_then(|s| s.listen.as_ref());
    let pool: Option<Pool> = header_pool.or_else(|| listen.and_then(|l| l.pool_for_sender(&from)));
    let spool = match spool {
        SpoolAt::Dir(d) => d,
        SpoolAt::Db(url) => {
            let Some(via) = a
                .via
                .clone()
                .or_else(|| settings.as_ref().and_then(|s| s.spool.via.clone()))
            else {
                return fail(
                    EX_TEMPFAIL,
                    "a database spool needs --via NODE or [spool] via in the settings file: \
                     the node whose share-out the job takes",
                );
            };
            let job = smtpw_engine::spool::postgres::DirectJob {
                mail_from: from,
                pool,
                rcpts,
                message: smtpw_engine::job::to_crlf(&message),
            };
            let n = job.rcpts.len();
            return match crate::spool_at::submit_via(url.expose(), &via, job) {
                Ok((id, _)) => {
                    tracing::info!(job = id, via = %via, recipients = n, "queued");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(
                    EX_TEMPFAIL,
                    &format!("the message is NOT queued (try again later): {e:#}"),
                ),
            };
        }
    };
    if a.via.is_some() {
        return fail(
            EX_USAGE,
            &format!("--via is for a database spool (postgres://...)\n{USAGE}"),
        );
    }
    match smtpw_engine::spool::submit(&spool, &from, pool, rcpts.iter().cloned(), &message[..]) {
        Ok(path) => {
            tracing::info!(job = %path.display(), recipients = rcpts.len(), "queued");
            ExitCode::SUCCESS
        }
        Err(e) if matches!(e, smtpw_engine::spool::SpoolError::Job(_)) => {
            fail(EX_DATAERR, &format!("the message cannot be queued: {e}"))
        }
        Err(e) => fail(
            EX_TEMPFAIL,
            &format!(
                "the message is NOT queued (try again later): {}: {e}",
                spool.display()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn sympa_arguments() {
        let a = parse(&v(&[
            "-oi",
            "-odi",
            "-oem",
            "-f",
            "owner@l.example",
            "--",
            "a@x",
            "-b@y",
        ]))
        .unwrap();
        assert!(a.ignore_dots && !a.from_header);
        assert_eq!(a.from.as_deref(), Some("owner@l.example"));
        assert_eq!(a.rcpts, ["a@x", "-b@y"]);
        let a = parse(&v(&[
            "-fowner@l",
            "-FList Robot",
            "-bm",
            "-t",
            "-i",
            "c@z, <d@z>",
        ]))
        .unwrap();
        assert_eq!(
            (
                a.from.as_deref(),
                a.full_name.as_deref(),
                a.from_header,
                a.ignore_dots
            ),
            (Some("owner@l"), Some("List Robot"), true, true)
        );
        assert_eq!(a.rcpts, ["c@z", "d@z"]);
        assert_eq!(parse(&v(&["-bs"])).unwrap_err(), "unknown option -bs");
        assert_eq!(parse(&v(&["-f"])).unwrap_err(), "-f needs a value");
    }

    #[test]
    fn f_names_the_sender_in_a_from_field_the_message_lacks() {
        assert_eq!(
            add_from(b"Subject: s\n\nbody\n", "List Robot", "owner@l.example"),
            b"From: List Robot <owner@l.example>\nSubject: s\n\nbody\n"
        );
        assert_eq!(
            add_from(b"Subject: s\r\n\r\nb\r\n", "Smith, J. \"Jr\"", "o@l"),
            b"From: \"Smith, J. \\\"Jr\\\"\" <o@l>\r\nSubject: s\r\n\r\nb\r\n"
        );
        // No header injection through the name.
        assert_eq!(
            add_from(b"\n", "Evil\r\nBcc: x@y", "o@l"),
            b"From: \"EvilBcc: x@y\" <o@l>\n\n"
        );
        assert!(scan_header(b"FROM: x\n\n").has_from);
        assert!(!scan_header(b"Subject: x\n\nFrom: body\n").has_from);
    }

    #[test]
    fn a_lone_dot_ends_the_message_unless_i() {
        let m = b"a\n.\nb\n";
        assert_eq!(read_message(m, false), b"a\n");
        assert_eq!(read_message(m, true), m);
        assert_eq!(read_message(b"a\r\n.\r\nb", false), b"a\r\n");
        assert_eq!(read_message(b"..\n", false), b"..\n");
    }

    #[test]
    fn t_takes_to_cc_and_bcc_and_removes_bcc() {
        let m = b"From: \"List, Robot\" <robot@l.example>\nTo: A <a@x>, b@y (Bee)\nBcc: hidden@z,\n  other@z\nCc: team: c@w, d@w;\nSubject: s\n\nBcc: body@stays\n";
        let h = scan_header(m);
        assert_eq!(h.rcpts, ["a@x", "b@y", "hidden@z", "other@z", "c@w", "d@w"]);
        assert_eq!(h.from.as_deref(), Some("robot@l.example"));
        assert_eq!(
            String::from_utf8(h.message).unwrap(),
            "From: \"List, Robot\" <robot@l.example>\nTo: A <a@x>, b@y (Bee)\nCc: team: c@w, d@w;\nSubject: s\n\nBcc: body@stays\n"
        );
    }
}
