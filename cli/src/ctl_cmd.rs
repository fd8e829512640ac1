//! `smtpw ctl`: the admin endpoint's JSON API from the command line (OPS-4). Exit 0 when the
//! server did it; 1 with the server's message when it refused; 2 when it cannot be reached.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

#[derive(Args, Debug)]
pub struct CtlArgs {
    /// The admin endpoint of the running `smtpw run` (its --admin or [admin] address).
    #[arg(long, value_name = "ADDR:PORT")]
    pub admin: SocketAddr,
    /// The file holding the endpoint's token ([admin] token_file).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Who asks (named in suspensions and cancel replies); default $USER.
    #[arg(long, value_name = "NAME")]
    pub by: Option<String>,
    #[command(subcommand)]
    pub verb: Verb,
}

/// `--pool P` or `--relay HOST`.
#[derive(Args, Debug)]
#[group(required = false, multiple = false)]
pub struct Target {
    /// A pool: A to Z, or - for the default pool.
    #[arg(long)]
    pub pool: Option<String>,
    /// A relay: host or host:port.
    #[arg(long)]
    pub relay: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Verb {
    /// Per pool and relay: depth, oldest age, last error, next retry, suspensions.
    Queue {
        #[arg(long)]
        json: bool,
    },
    /// The queued jobs with their counts.
    Jobs {
        #[arg(long)]
        pool: Option<String>,
        /// queued (all) or deferred.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Deliver nothing to a pool or relay for DURATION (90s, 15m, 2h...); kept across restarts.
    Suspend {
        #[command(flatten)]
        target: Target,
        #[arg(long = "for", value_name = "DURATION", value_parser = smtpw_engine::settings::parse_duration)]
        duration: std::time::Duration,
        #[arg(long)]
        reason: String,
    },
    /// End a suspension now.
    Resume {
        #[command(flatten)]
        target: Target,
    },
    /// Deferred copies (of a pool, of a relay's pools, or all) become due now.
    Flush {
        #[command(flatten)]
        target: Target,
    },
    /// Read SITE.CFG and smtpw.toml again and apply them (as SIGHUP); a bad file changes
    /// nothing and every error is shown.
    Reload,
    /// Fail the undelivered recipients of job JOB with a reply naming the reason and you.
    Cancel {
        job: i64,
        #[arg(long)]
        reason: String,
    },
}

pub fn run(args: CtlArgs) -> anyhow::Result<ExitCode> {
    let token = match &args.token_file {
        None => None,
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading the token file {}", f.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        ),
    };
    let by = args
        .by
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "operator".into());
    let target = |t: &Target| serde_json::json!({ "pool": t.pool, "relay": t.relay });
    let (method, path, body, human): (&str, String, Option<serde_json::Value>, bool) =
        match &args.verb {
            Verb::Queue { json } => ("GET", "/api/v1/queue".into(), None, !json),
            Verb::Jobs {
                pool,
                state,
                limit,
                json,
            } => {
                let mut q = Vec::new();
                if let Some(p) = pool {
                    q.push(format!("pool={p}"));
                }
                if let Some(s) = state {
                    q.push(format!("state={s}"));
                }
                if let Some(l) = limit {
                    q.push(format!("limit={l}"));
                }
                ("GET", format!("/api/v1/jobs?{}", q.join("&")), None, !json)
            }
            Verb::Suspend {
                target: t,
                duration,
                reason,
            } => {
                if t.pool.is_none() && t.relay.is_none() {
                    anyhow::bail!("suspend needs --pool P or --relay HOST");
                }
                let mut b = target(t);
                b["duration"] = format!("{}s", duration.as_secs().max(1)).into();
                b["reason"] = reason.clone().into();
                b["by"] = by.clone().into();
                ("POST", "/api/v1/suspend".into(), Some(b), true)
            }
            Verb::Resume { target: t } => {
                if t.pool.is_none() && t.relay.is_none() {
                    anyhow::bail!("resume needs --pool P or --relay HOST");
                }
                ("POST", "/api/v1/resume".into(), Some(target(t)), true)
            }
            Verb::Flush { target: t } => ("POST", "/api/v1/flush".into(), Some(target(t)), true),
            Verb::Reload => ("POST", "/api/v1/reload".into(), None, true),
            Verb::Cancel { job, reason } => (
                "POST",
                format!("/api/v1/jobs/{job}/cancel"),
                Some(serde_json::json!({ "reason": reason, "by": by })),
                true,
            ),
        };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let (status, text) = rt
        .block_on(call(args.admin, method, &path, token.as_deref(), body))
        .with_context(|| format!("reaching the admin endpoint {}", args.admin))?;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    if !(200..300).contains(&status) {
        let msg = v
            .get("error")
            .and_then(serde_json::Value::as_str)
            .map_or_else(|| text.trim().to_owned(), str::to_owned);
        eprintln!(
            "smtpw ctl: {status}: {}",
            smtpw_engine::text::escape_controls(&msg)
        );
        return Ok(ExitCode::from(1));
    }
    if human {
        match &args.verb {
            Verb::Queue { .. } => print_queue(&v),
            Verb::Jobs { .. } => print_jobs(&v),
            _ => println!("{}", serde_json::to_string_pretty(&v)?),
        }
    } else {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// One HTTP/1.1 request; the status and the body.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> anyhow::Result<(u16, String)> {
    let stream = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .context("connect timed out")??;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let res = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        send.send_request(req.body(Full::new(Bytes::from(body)))?),
    )
    .await
    .context("no answer within 120 s")??;
    let status = res.status().as_u16();
    let bytes = res.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

fn s(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(t) => smtpw_engine::text::escape_controls(t).into_owned(),
        other => other.to_string(),
    }
}

fn print_queue(v: &serde_json::Value) {
    let q = &v["queue"];
    println!(
        "queued {} recipients in {} copies of {} jobs; delivered {}, failed {}; oldest {} s",
        s(&q["queued"]),
        s(&q["copies"]),
        s(&q["jobs"]),
        s(&q["delivered"]),
        s(&q["failed"]),
        s(&q["oldest_age_secs"])
    );
    println!(
        "{:<5} {:<10} {:>8} {:>11} {:>10}",
        "pool", "state", "copies", "recipients", "oldest s"
    );
    for p in q["pools"].as_array().into_iter().flatten() {
        println!(
            "{:<5} {:<10} {:>8} {:>11} {:>10}",
            s(&p["pool"]),
            s(&p["state"]),
            s(&p["copies"]),
            s(&p["recipients"]),
            s(&p["oldest_age_secs"])
        );
    }
    if let Some(relays) = v["relays"].as_object().filter(|r| !r.is_empty()) {
        println!("relay                          next retry                 last error");
        for (name, r) in relays {
            println!(
                "{:<30} {:<26} {} ({})",
                smtpw_engine::text::escape_controls(name),
                s(&r["next_retry"]),
                s(&r["last_error"]),
                s(&r["last_error_at"])
            );
        }
    }
    for x in v["suspended"].as_array().into_iter().flatten() {
        println!(
            "suspended {} until {} by {}: {}",
            if x["pool"].is_null() {
                format!("relay {}", s(&x["relay"]))
            } else {
                format!("pool {}", s(&x["pool"]))
            },
            s(&x["until"]),
            s(&x["by"]),
            s(&x["reason"])
        );
    }
}

fn print_jobs(v: &serde_json::Value) {
    println!(
        "{:>8} {:<5} {:>10} {:>9} {:>7} {:>7} {:>8}  created",
        "job", "pool", "recipients", "delivered", "failed", "queued", "deferred"
    );
    for j in v["jobs"].as_array().into_iter().flatten() {
        println!(
            "{:>8} {:<5} {:>10} {:>9} {:>7} {:>7} {:>8}  {}",
            s(&j["id"]),
            s(&j["pool"]),
            s(&j["recipients"]),
            s(&j["delivered"]),
            s(&j["failed"]),
            s(&j["queued"]),
            s(&j["deferred"]),
            s(&j["created"])
        );
    }
}
