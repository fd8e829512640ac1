//! The `mock-mta` binary: an IIS SMTP service emulation on a TCP port.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use mock_mta::{MockConfig, MockMta, OverCap, OversizeData, RcptRule, W3cConfig, W3cFieldSet};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProfileName {
    Iis,
    Xp,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Fields {
    Recommended,
    Full,
}

/// An emulation of the Microsoft IIS SMTP service with real limits, deterministic faults, a
/// journal (JSON lines) and the IIS W3C log.
#[derive(Debug, Parser)]
#[command(name = "mock-mta", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50025")]
    listen: SocketAddr,
    /// Base profile: iis (IIS 6.0 defaults) or xp (10 connections).
    #[arg(long, value_enum, default_value = "iis")]
    profile: ProfileName,
    /// TOML configuration over the profile (see README); command-line options win over it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Server FQDN (banner, EHLO, queue ids).
    #[arg(long)]
    hostname: Option<String>,
    /// Recipients per message (0 = no limit).
    #[arg(long)]
    max_recipients: Option<u32>,
    /// Code for the RCPT past the recipient limit.
    #[arg(long, value_parser = ["452", "552"])]
    too_many_code: Option<String>,
    /// Message size limit in KB (0 = no limit).
    #[arg(long)]
    max_message_kb: Option<u64>,
    /// Session size limit in KB (0 = no limit).
    #[arg(long)]
    max_session_kb: Option<u64>,
    /// Reply 552 4.3.1 and close as soon as DATA crosses the size limit (M14 behaviour).
    #[arg(long)]
    oversize_close: bool,
    /// Concurrent connections (0 = unlimited).
    #[arg(long)]
    max_connections: Option<u32>,
    /// Close connections past the cap without the 421.
    #[arg(long)]
    silent_over_cap: bool,
    /// Messages per connection, then 421 (0 = off).
    #[arg(long)]
    max_messages: Option<u32>,
    /// Idle time-out in seconds.
    #[arg(long)]
    idle_timeout: Option<u64>,
    /// Relay allow-list entry (IP, subnet or *); repeat for several. Replaces the profile's list.
    #[arg(long = "relay-allow")]
    relay_allow: Vec<String>,
    /// Write the journal as JSON lines to FILE (appended, flushed per line).
    #[arg(long)]
    journal: Option<PathBuf>,
    /// Write the IIS W3C log (exYYMMDD.log) into DIR.
    #[arg(long = "w3c-log")]
    w3c_log: Option<PathBuf>,
    /// W3C field set.
    #[arg(long, value_enum, default_value = "recommended")]
    w3c_fields: Fields,
    /// Keep message bodies in the journal.
    #[arg(long)]
    keep_bodies: bool,
    /// Recipient fault PATTERN=CODE, e.g. '*@bad.example=550' (repeatable; added after the
    /// config file's rules).
    #[arg(long = "rcpt-rule")]
    rcpt_rules: Vec<String>,
    /// Scheduled fault, e.g. 'down 10:00-10:05' or 'rcpt-451 12:00-12:30' (repeatable; local time).
    #[arg(long = "schedule")]
    schedule: Vec<String>,
    /// Greet with 421 (then close) or 554 (then only QUIT) instead of 220.
    #[arg(long, value_parser = ["421", "554"])]
    greet_code: Option<String>,
    /// Delay before answering a command, VERB=MS (VERB: EHLO, MAIL, RCPT, DATA, DOT, QUIT, *).
    #[arg(long = "command-latency")]
    command_latency: Vec<String>,
}

fn none_if_zero<T: PartialEq + Default>(v: T) -> Option<T> {
    (v != T::default()).then_some(v)
}

fn build_config(a: &Args) -> anyhow::Result<MockConfig> {
    let base = match a.profile {
        ProfileName::Iis => MockConfig::iis(),
        ProfileName::Xp => MockConfig::xp(),
    };
    let mut c = match &a.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            MockConfig::from_toml_over(&base, &text)?
        }
        None => base,
    };
    // The binary keeps no in-memory journal: the file is the record.
    c.keep_journal = false;
    if let Some(h) = &a.hostname {
        c.hostname.clone_from(h);
    }
    if let Some(n) = a.max_recipients {
        c.profile.max_recipients = none_if_zero(n);
    }
    if let Some(code) = &a.too_many_code {
        c.profile.too_many_code = code.parse()?;
    }
    if let Some(n) = a.max_message_kb {
        c.profile.max_message_kb = none_if_zero(n);
    }
    if let Some(n) = a.max_session_kb {
        c.profile.max_session_kb = none_if_zero(n);
    }
    if a.oversize_close {
        c.profile.oversize_data = OversizeData::CloseMidData;
    }
    if let Some(n) = a.max_connections {
        c.profile.max_connections = none_if_zero(n);
    }
    if a.silent_over_cap {
        c.profile.over_cap = OverCap::SilentClose;
    }
    if let Some(n) = a.max_messages {
        c.profile.max_messages_per_connection = none_if_zero(n);
    }
    if let Some(s) = a.idle_timeout {
        c.profile.idle_timeout_secs = s;
    }
    if !a.relay_allow.is_empty() {
        c.profile.relay_allow.clone_from(&a.relay_allow);
    }
    if a.journal.is_some() {
        c.journal_file.clone_from(&a.journal);
    }
    if let Some(dir) = &a.w3c_log {
        c.w3c = Some(W3cConfig {
            dir: dir.clone(),
            fields: match a.w3c_fields {
                Fields::Recommended => W3cFieldSet::Recommended,
                Fields::Full => W3cFieldSet::Full,
            },
        });
    }
    if a.keep_bodies {
        c.keep_bodies = true;
    }
    for r in &a.rcpt_rules {
        let (pattern, code) = r
            .rsplit_once('=')
            .with_context(|| format!("--rcpt-rule {r:?}: expected PATTERN=CODE"))?;
        c.faults.rcpt_rules.push(RcptRule {
            pattern: pattern.to_string(),
            code: code
                .parse()
                .with_context(|| format!("--rcpt-rule {r:?}: bad code"))?,
            text: None,
        });
    }
    for e in &a.schedule {
        c.faults.schedule.push(e.parse()?);
    }
    if let Some(g) = &a.greet_code {
        c.faults.greet_code = Some(g.parse()?);
    }
    for l in &a.command_latency {
        let (verb, ms) = l
            .split_once('=')
            .with_context(|| format!("--command-latency {l:?}: expected VERB=MS"))?;
        c.faults.command_latency_ms.insert(
            verb.to_ascii_uppercase(),
            ms.parse()
                .with_context(|| format!("--command-latency {l:?}: bad ms"))?,
        );
    }
    c.validate()?;
    Ok(c)
}

/// Ctrl-C or SIGTERM. The handlers are installed when this is called (before the first poll),
/// so call it first: a signal that comes during start-up is not lost.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let int = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        async move {
            match (int, term) {
                (Ok(mut i), Ok(mut t)) => {
                    tokio::select! {
                        _ = i.recv() => {}
                        _ = t.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let stop = stop_signal();
    let args = Args::parse();
    let config = build_config(&args)?;
    let p = &config.profile;
    let mta = MockMta::try_new(config.clone(), smtpw_clock::SystemClock::shared())?;
    let server = mta
        .listen(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let lim = |v: Option<u64>| v.map_or("none".to_string(), |v| v.to_string());
    eprintln!(
        "mock-mta: {} profile, {} listening on {} (recipients {}, too-many {}, message {} KB, session {} KB, connections {}, idle {} s)",
        p.name,
        config.hostname,
        server.local_addr(),
        lim(p.max_recipients.map(u64::from)),
        p.too_many_code,
        lim(p.max_message_kb),
        lim(p.max_session_kb),
        lim(p.max_connections.map(u64::from)),
        p.idle_timeout_secs
    );
    stop.await;
    eprintln!("mock-mta: stopping");
    server.shutdown().await;
    let s = mta.stats();
    println!(
        "mock-mta summary: sessions {}, messages {}, recipients accepted {}, rejected {}, bytes {}, over-cap {}, refused {}, peak connections {}",
        s.sessions,
        s.messages,
        s.recipients_accepted,
        s.recipients_rejected,
        s.bytes,
        s.over_cap,
        s.refused,
        s.peak_connections
    );
    Ok(())
}
