//! `smtpw demo`: the engine delivering a sample job to an in-process IIS-like mock, no setup.
//!
//! Starts two mock-mta relays on 127.0.0.1 (IIS defaults: 100 recipients per message, 552 on the
//! 101st), writes a SITE.CFG with three workers weighted 2:1 and MAXBSMTP=1000 (above the relays'
//! limit, so the engine must recover in-session), submits one job of 10,000 recipients with a few
//! bad addresses (the relays answer 550 for them), delivers it with a progress bar, and prints the
//! outcome table, checked against what the relays themselves recorded.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mock_mta::{MockConfig, MockMta, RcptRule};

use smtpw_engine::clock::SystemClock;
use smtpw_engine::engine::{Engine, EngineOptions};
use smtpw_engine::ledger::{read_ledger, Outcome};
use smtpw_engine::net::TcpConnector;
use smtpw_engine::spool::{Spool, SpoolOptions, SqliteSpool};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Recipients in the sample job.
    #[arg(long, default_value_t = 10_000)]
    pub recipients: usize,
    /// One recipient in this many is at bad.example (the relays refuse it with 550).
    #[arg(long, default_value_t = 500)]
    pub bad_every: usize,
    /// Keep the demo's SITE.CFG, spool and ledger in this directory (default: a temporary one).
    #[arg(long)]
    pub keep: Option<PathBuf>,
    /// Print the outcome as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct DemoReport {
    recipients: usize,
    delivered: u64,
    failed: u64,
    queued: u64,
    failure_reasons: BTreeMap<String, u64>,
    copies_per_host: BTreeMap<String, u64>,
    workers_per_host: BTreeMap<String, u64>,
    transactions: u64,
    too_many_recoveries: u64,
    seconds: f64,
    recipients_per_second: f64,
    relays_received: u64,
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(demo(args))
}

async fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let tmp;
    let dir = match &args.keep {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => {
            tmp = tempdir()?;
            tmp.0.clone()
        }
    };
    let clock = SystemClock::shared();

    // Two IIS-like relays, each refusing bad.example recipients.
    let mut relay_cfg = MockConfig::iis();
    relay_cfg.faults.rcpt_rules.push(RcptRule {
        pattern: "*@bad.example".into(),
        code: 550,
        text: None,
    });
    let relays = [
        MockMta::new(relay_cfg.clone(), clock.clone()),
        MockMta::new(relay_cfg, clock.clone()),
    ];
    let loopback = "127.0.0.1:0".parse().context("loopback address")?;
    let s1 = relays[0]
        .listen(loopback)
        .await
        .context("starting relay 1")?;
    let s2 = relays[1]
        .listen(loopback)
        .await
        .context("starting relay 2")?;
    let (p1, p2) = (s1.local_addr().port(), s2.local_addr().port());

    let site_cfg = format!(
        "* smtpw demo: two IIS-like relays on loopback, three workers weighted 2:1\n\
         NODE=DEMO.EXAMPLE.ORG\n\
         SMTP_FORWARD=127.0.0.1:{p1}\n\
         SMTP_FORWARD_1=2*127.0.0.1:{p1}\n\
         SMTP_FORWARD_2=127.0.0.1:{p2}\n\
         MAXBSMTP=1000\n"
    );
    let cfg_path = dir.join("SITE.CFG");
    std::fs::write(&cfg_path, &site_cfg)
        .with_context(|| format!("writing {}", cfg_path.display()))?;
    let config = match smtpw_engine::config::load(&cfg_path) {
        Ok(c) => c,
        Err(e) => bail!("the demo's own SITE.CFG was refused:\n{e}"),
    };

    let spool_dir = dir.join("spool");
    let ledger_path = spool_dir.join("ledger.jsonl");
    let spool = Arc::new(
        SqliteSpool::open(
            &spool_dir,
            SpoolOptions {
                ledger_path: Some(ledger_path.clone()),
                ..SpoolOptions::from_site(&config)
            },
            clock.clone(),
        )
        .with_context(|| format!("opening the spool {}", spool_dir.display()))?,
    );

    let n = args.recipients;
    let bad_every = args.bad_every.max(1);
    let rcpts = (0..n).map(move |i| {
        if i % bad_every == bad_every - 1 {
            format!("nobody{i}@bad.example")
        } else {
            format!("subscriber{i:06}@example.com")
        }
    });
    let message = sample_message();
    smtpw_engine::spool::submit(
        &spool_dir,
        "owner-demo-l@demo.example.org",
        None,
        rcpts,
        message.as_bytes(),
    )
    .context("submitting the sample job")?;

    if !args.json {
        eprintln!(
            "smtpw demo: {n} recipients, relays 127.0.0.1:{p1} (2 workers) and 127.0.0.1:{p2} (1 worker), \
             IIS limit 100 recipients/message, MAXBSMTP=1000, workdir {}",
            dir.display()
        );
    }
    let engine = Arc::new(
        Engine::builder(config.clone(), spool.clone(), spool_dir.clone())
            .connector(Arc::new(TcpConnector {
                connect_timeout: Duration::from_secs(5),
            }))
            .clock(clock.clone())
            .options(EngineOptions {
                until_empty: true,
                ingest_interval: Duration::from_millis(50),
                idle_poll: Duration::from_millis(100),
                ..EngineOptions::default()
            })
            .build(),
    );

    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(n as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} recipients  {per_sec}  {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let runner = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.run().await })
    };
    let stats = engine.stats().clone();
    let limit = Duration::from_secs(300);
    while !runner.is_finished() {
        let done = stats.delivered.load(Ordering::Relaxed) + stats.failed.load(Ordering::Relaxed);
        bar.set_position(done);
        if started.elapsed() > limit {
            engine.shutdown().cancel();
            bail!("the demo did not finish within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let summary = runner.await.context("the engine task")?;
    let took = started.elapsed();
    bar.finish_and_clear();

    let queued = spool.stats().await.map(|s| s.queued).unwrap_or(0);
    let mut failure_reasons = BTreeMap::new();
    for line in read_ledger(&ledger_path).context("reading the ledger")? {
        if line.outcome == Outcome::Failed {
            *failure_reasons.entry(line.reply.clone()).or_insert(0u64) += 1;
        }
    }
    let mut workers_per_host = BTreeMap::new();
    for w in &config.workers {
        *workers_per_host
            .entry(w.primary.to_string())
            .or_insert(0u64) += 1;
    }
    let relays_received: u64 = relays
        .iter()
        .map(|r| r.journal().delivered_recipients().len() as u64)
        .sum();
    s1.shutdown().await;
    s2.shutdown().await;

    let report = DemoReport {
        recipients: n,
        delivered: summary.delivered,
        failed: summary.failed,
        queued,
        failure_reasons,
        copies_per_host: summary
            .per_host
            .iter()
            .map(|(h, s)| (h.clone(), s.copies))
            .collect(),
        workers_per_host,
        transactions: summary.transactions,
        too_many_recoveries: summary.too_many_recoveries,
        seconds: took.as_secs_f64(),
        recipients_per_second: n as f64 / took.as_secs_f64().max(1e-9),
        relays_received,
    };
    // A reader that went away (`smtpw demo | head`) does not hide a mismatch: the check comes
    // before the write error is returned.
    let printed = {
        let mut out = std::io::stdout().lock();
        if args.json {
            serde_json::to_string_pretty(&report)
                .map_err(std::io::Error::other)
                .and_then(|j| writeln!(out, "{j}"))
        } else {
            print_table(&mut out, &report)
        }
        .and_then(|()| out.flush())
    };
    // The demo proves its own claim: every recipient accounted for, and the relays agree.
    let accounted = report.delivered + report.failed + report.queued;
    if accounted != n as u64 || report.relays_received != report.delivered {
        eprintln!(
            "smtpw demo: MISMATCH: {n} submitted, {accounted} accounted for, relays received {}",
            report.relays_received
        );
        return Ok(ExitCode::from(1));
    }
    printed?;
    Ok(ExitCode::SUCCESS)
}

fn print_table(o: &mut impl Write, r: &DemoReport) -> std::io::Result<()> {
    writeln!(o)?;
    writeln!(o, "  outcome            recipients")?;
    writeln!(o, "  delivered          {:>10}", r.delivered)?;
    writeln!(o, "  failed             {:>10}", r.failed)?;
    for (reason, count) in &r.failure_reasons {
        writeln!(o, "    {count:>6} x {reason}")?;
    }
    writeln!(o, "  still queued       {:>10}", r.queued)?;
    writeln!(o, "  submitted          {:>10}", r.recipients)?;
    writeln!(o)?;
    writeln!(o, "  relay                 workers   copies")?;
    for (host, copies) in &r.copies_per_host {
        let w = r.workers_per_host.get(host).copied().unwrap_or(0);
        writeln!(o, "  {host:<21} {w:>7} {copies:>8}")?;
    }
    writeln!(o)?;
    writeln!(
        o,
        "  {} SMTP transactions; {} times a relay said \"too many recipients\" and the rest went in the next transaction",
        r.transactions, r.too_many_recoveries
    )?;
    writeln!(
        o,
        "  relays recorded {} recipients accepted (ledger: {} delivered)",
        r.relays_received, r.delivered
    )?;
    writeln!(
        o,
        "  {:.2} s, {:.0} recipients/s",
        r.seconds, r.recipients_per_second
    )
}

fn sample_message() -> String {
    let mut m = String::from(
        "From: Demo List <demo-l@demo.example.org>\r\n\
         To: Demo List <demo-l@demo.example.org>\r\n\
         Subject: smtpw demo posting\r\n\
         Message-ID: <demo-1@demo.example.org>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\r\n",
    );
    for i in 0..40 {
        m.push_str(&format!(
            "Line {i:02} of the demo posting. .A line may start with a dot; smtpw stuffs it.\r\n"
        ));
    }
    m.push_str(".\r\n..\r\nEnd of the demo posting.\r\n");
    m
}

/// A temporary directory removed on drop (no tempfile dependency in the binary).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> anyhow::Result<TempDir> {
    let base = std::env::temp_dir();
    for i in 0..1000u32 {
        let p = base.join(format!("smtpw-demo-{}-{i}", std::process::id()));
        if std::fs::create_dir(&p).is_ok() {
            return Ok(TempDir(p));
        }
    }
    bail!(
        "cannot create a temporary directory under {}",
        base.display()
    )
}
