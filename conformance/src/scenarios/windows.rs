//! Time windows over a 24 h day (WRK-4, WRK-5, EX-6, EX-7): which host each
//! worker uses, minute by minute, against the documented schedule; and `config explain` agrees
//! with the router.
//!
//! Virtual mode walks a paused-time day on a `VirtualClock` (one tokio sleep per minute), asks
//! `smtpw_engine::route::route` at every minute and `smtpw_engine::route::explain` at every hour. Real time
//! walks the router over the same day and runs `smtpw config explain FILE --at HH:MM --json` at
//! every hour and on both sides of every window edge.

use std::time::Duration;

use serde_json::Value;
use smtpw_clock::{Clock, VirtualClock};
use smtpw_engine::config::{SiteConfig, TimeOfDay};
use smtpw_engine::route::{self, Via};

use crate::report::{Chart, Lane, Mode};
use crate::runner::{temp_dir, Bin, Ctx, Failure, Outcome, Scenario, ScenarioResult, BOTH};
use smtpw_testkit::proc::run_process;

/// Case 6 (worker 1), a window crossing midnight with a failover on another port (worker 2),
/// case 7 as written, `_3` (worker 3), and a half-hour window crossing midnight with no failover
/// (worker 4).
pub const SITE_CFG: &str = "\
SMTP_FORWARD=SYNC.EXAMPLE.ORG
SMTP_FORWARD_1=UNIXSERVER.BAR.COM(00:00-05:00);SMTP.BAZ.NET
SMTP_FORWARD_2=NIGHT.EXAMPLE.ORG(22:00-02:00);DAY.EXAMPLE.ORG:2525
SMTP_FORWARD_3=SMTP.BAZ.NET(10:00-14:00)
SMTP_FORWARD_4=LATE.EXAMPLE.ORG(23:30-00:30)
";

const INACTIVE: &str = "inactive";

/// The documented schedule, written out by hand from WRK-4, WRK-5 ([start, end),
/// primary inside, failover outside, else inactive): per worker, `(from minute, host)` until the
/// next entry (or midnight).
pub fn documented() -> Vec<Vec<(u16, &'static str)>> {
    let h = |hh: u16, mm: u16| hh * 60 + mm;
    vec![
        vec![
            (h(0, 0), "UNIXSERVER.BAR.COM:25"),
            (h(5, 0), "SMTP.BAZ.NET:25"),
        ],
        vec![
            (h(0, 0), "NIGHT.EXAMPLE.ORG:25"),
            (h(2, 0), "DAY.EXAMPLE.ORG:2525"),
            (h(22, 0), "NIGHT.EXAMPLE.ORG:25"),
        ],
        vec![
            (h(0, 0), INACTIVE),
            (h(10, 0), "SMTP.BAZ.NET:25"),
            (h(14, 0), INACTIVE),
        ],
        vec![
            (h(0, 0), "LATE.EXAMPLE.ORG:25"),
            (h(0, 30), INACTIVE),
            (h(23, 30), "LATE.EXAMPLE.ORG:25"),
        ],
    ]
}

fn documented_at(sched: &[(u16, &'static str)], minute: u16) -> &'static str {
    sched
        .iter()
        .rev()
        .find(|(from, _)| *from <= minute)
        .map_or(INACTIVE, |(_, h)| h)
}

pub fn scenario() -> Scenario {
    Scenario::new("windows-24h-day", BOTH, day).needs(&[Bin::Smtpw])
}

fn tod(minute: u16) -> TimeOfDay {
    TimeOfDay::new((minute / 60) as u8, (minute % 60) as u8).unwrap_or(TimeOfDay::MIDNIGHT)
}

fn label(r: &route::Route<'_>) -> String {
    match (r.via, r.target) {
        (Via::Inactive, None) => INACTIVE.to_string(),
        (_, Some(t)) => t.to_string(),
        (via, None) => format!("{via:?} without a host"),
    }
}

/// Minutes where some documented span starts, and the minute before each.
fn edges(doc: &[Vec<(u16, &'static str)>]) -> Vec<u16> {
    let mut v: Vec<u16> = doc
        .iter()
        .flatten()
        .flat_map(|(m, _)| [(*m + 1439) % 1440, *m])
        .chain((0..24).map(|h| h * 60))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

async fn day(ctx: Ctx) -> ScenarioResult {
    let doc = documented();
    let (cfg, path_holder) = match ctx.mode() {
        Mode::Virtual => (parse(SITE_CFG)?, None),
        Mode::RealTime | Mode::RealTimePg => {
            let dir = temp_dir()?;
            let path = dir.path().join("SITE.CFG");
            std::fs::write(&path, SITE_CFG)
                .map_err(|e| Failure::new(format!("to write {}", path.display()), e.to_string()))?;
            let cfg = smtpw_engine::config::load(&path)
                .map_err(|e| Failure::new("the windows SITE.CFG to load", e.to_string()))?;
            (cfg, Some((dir, path)))
        }
    };
    if cfg.workers.len() != doc.len() {
        return Err(Failure::new(
            format!("{} workers", doc.len()),
            format!("{} workers", cfg.workers.len()),
        ));
    }

    // The walk: each worker's host at every minute of the day, checked against the schedule.
    let mut seen: Vec<Vec<String>> = vec![Vec::with_capacity(1440); doc.len()];
    let mut explain_checks = 0usize;
    match ctx.mode() {
        Mode::Virtual => {
            let start = jiff::civil::date(2026, 11, 22).at(0, 0, 0, 0);
            let clock = VirtualClock::at_utc(start);
            for minute in 0..1440u16 {
                let t = TimeOfDay::from_civil(clock.local_time());
                if t.minutes() != minute {
                    return Err(Failure::new(
                        format!(
                            "the virtual clock to read {} after {minute} min",
                            tod(minute)
                        ),
                        format!("{t}"),
                    ));
                }
                walk_minute(&cfg, &doc, t, &mut seen)?;
                if minute % 60 == 0 {
                    let rows = route::explain(&cfg, t);
                    let got: Vec<String> = rows
                        .iter()
                        .map(|r| match (&r.host, r.port) {
                            (Some(h), Some(p)) => format!("{h}:{p}"),
                            _ => INACTIVE.to_string(),
                        })
                        .collect();
                    agree(t, "route::explain", &got, &seen, minute)?;
                    explain_checks += 1;
                }
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        }
        Mode::RealTime | Mode::RealTimePg => {
            for minute in 0..1440u16 {
                walk_minute(&cfg, &doc, tod(minute), &mut seen)?;
            }
            let (_dir, path) = path_holder
                .as_ref()
                .ok_or_else(|| Failure::new("a SITE.CFG file", "none was written"))?;
            let bin = ctx.bin(Bin::Smtpw)?;
            let file = path.display().to_string();
            for minute in edges(&doc) {
                let at = tod(minute).to_string();
                let ran = run_process(
                    bin,
                    &["config", "explain", &file, "--at", &at, "--json"],
                    Duration::from_secs(20),
                )
                .await?;
                if ran.code != Some(0) {
                    return Err(Failure::new(
                        format!("`smtpw config explain --at {at} --json` to exit 0"),
                        format!("exit {:?}: {}", ran.code, ran.stderr.trim()),
                    ));
                }
                let got = explain_json(&ran.stdout).map_err(|e| {
                    Failure::new(
                        format!("`smtpw config explain --at {at} --json` to print rows"),
                        e,
                    )
                })?;
                agree(tod(minute), "`smtpw config explain`", &got, &seen, minute)?;
                explain_checks += 1;
            }
        }
    }

    let lanes: Vec<Lane> = seen
        .iter()
        .enumerate()
        .map(|(i, mins)| Lane {
            name: format!("worker {}", i + 1),
            spans: spans(mins),
        })
        .collect();
    let switches: usize = lanes.iter().map(|l| l.spans.len().saturating_sub(1)).sum();
    let where_ = match ctx.mode() {
        Mode::Virtual => "explain() agrees at every hour",
        Mode::RealTime | Mode::RealTimePg => "`config explain` agrees",
    };
    Ok(Outcome::new(format!(
        "{} workers x 1440 min as documented ({switches} switches); {where_} ({explain_checks} times)",
        cfg.workers.len()
    ))
    .chart(Chart::Timeline {
        title: "Each worker's host over the day (EX-6, EX-7, windows across midnight)"
            .into(),
        lanes,
    }))
}

fn parse(text: &str) -> Result<SiteConfig, Failure> {
    smtpw_engine::config::parse_str(text, "SITE.CFG")
        .map_err(|e| Failure::new("the windows SITE.CFG to parse", e.to_string()))
}

/// Routes every worker at `t`, checks it against the schedule, and records it.
fn walk_minute(
    cfg: &SiteConfig,
    doc: &[Vec<(u16, &'static str)>],
    t: TimeOfDay,
    seen: &mut [Vec<String>],
) -> Result<(), Failure> {
    for (i, w) in cfg.workers.iter().enumerate() {
        let got = label(&route::route(w, t));
        let want = documented_at(&doc[i], t.minutes());
        if got != want {
            return Err(Failure::new(
                format!(
                    "worker {} at {t}: {want} (WRK-4: windows are [start, end))",
                    i + 1
                ),
                format!("route() gave {got}"),
            ));
        }
        seen[i].push(got);
    }
    Ok(())
}

/// `got` (one label per worker, from explain) equals what the router gave at `minute`.
fn agree(
    t: TimeOfDay,
    who: &str,
    got: &[String],
    seen: &[Vec<String>],
    minute: u16,
) -> Result<(), Failure> {
    let want: Vec<&str> = seen
        .iter()
        .map(|m| m.get(usize::from(minute)).map_or("?", String::as_str))
        .collect();
    if got.len() != want.len() || got.iter().zip(&want).any(|(g, w)| g != w) {
        return Err(Failure::new(
            format!("{who} at {t} to say what route() says: {}", want.join(", ")),
            got.join(", "),
        ));
    }
    Ok(())
}

/// The rows of `config explain --json` as labels, in worker order; a row's `via` must agree with
/// its host (inactive exactly when there is none).
fn explain_json(stdout: &str) -> Result<Vec<String>, String> {
    let v: Value = serde_json::from_str(stdout).map_err(|e| format!("{e}: {}", stdout.trim()))?;
    let rows = v.as_array().ok_or_else(|| format!("not a list: {v}"))?;
    let mut out = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        if r["id"].as_u64() != Some(i as u64 + 1) {
            return Err(format!("row {} has id {}", i + 1, r["id"]));
        }
        let via = r["via"].as_str().unwrap_or("?");
        let label = match (r["host"].as_str(), r["port"].as_u64()) {
            (Some(h), Some(p)) if via != INACTIVE => format!("{h}:{p}"),
            (None, None) if via == INACTIVE => INACTIVE.to_string(),
            _ => return Err(format!("row {} is inconsistent: {r}", i + 1)),
        };
        out.push(label);
    }
    Ok(out)
}

/// Consecutive equal minutes as `(start hour, end hour, label)`.
fn spans(mins: &[String]) -> Vec<(f64, f64, String)> {
    let mut out: Vec<(f64, f64, String)> = Vec::new();
    for (m, l) in mins.iter().enumerate() {
        let (s, e) = (m as f64 / 60.0, (m + 1) as f64 / 60.0);
        match out.last_mut() {
            Some(last) if last.2 == *l => last.1 = e,
            _ => out.push((s, e, l.clone())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_and_edges_are_read_as_written() {
        let doc = documented();
        assert_eq!(documented_at(&doc[0], 299), "UNIXSERVER.BAR.COM:25");
        assert_eq!(documented_at(&doc[0], 300), "SMTP.BAZ.NET:25");
        assert_eq!(documented_at(&doc[3], 29), "LATE.EXAMPLE.ORG:25");
        assert_eq!(documented_at(&doc[3], 30), INACTIVE);
        let e = edges(&doc);
        assert!(e.contains(&1439) && e.contains(&0) && e.contains(&1409) && e.contains(&1410));
        let s = spans(&["a".into(), "a".into(), "b".into()]);
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].2, "b");
    }
}
