//! Time windows while delivering (WRK-4, WRK-5, EX-6, EX-7), virtual mode: a
//! 24-hour day on a `VirtualClock`, one job per worker every hour, and the engine delivering.
//!
//! Each worker serves its own pool, so the recipients of a copy say which worker sent it:
//! - worker 1, case 6: `UNIXSERVER.BAR.COM(00:00-05:00);SMTP.BAZ.NET`;
//! - worker 2, a window crossing midnight with a failover on another port;
//! - worker 3, case 7: `SMTP.BAZ.NET(10:00-14:00)`, no failover;
//! - worker 4, a half-hour window crossing midnight, no failover.
//!
//! Every delivered transaction's host must be the one `smtpw_engine::route::explain` gives for that
//! worker at the minute it was delivered; every job must go out at the first minute its worker is
//! active (at once when it is), and jobs of inactive workers wait (case 7's jobs after 14:00 are
//! still queued at midnight).

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::civil::date;
use mock_mta::MockConfig;
use smtpw_engine::config::TimeOfDay;
use smtpw_engine::engine::EngineOptions;
use smtpw_engine::route::{self, Via};

use crate::report::{Chart, Lane};
use crate::runner::{Ctx, Failure, Outcome, Scenario, ScenarioResult, VIRTUAL_ONLY};
use smtpw_testkit::topology::{iis_with_dot_latency, Topology};

const SITE: &str = "\
SMTP_FORWARD=SYNC.EXAMPLE.ORG
SMTP_FORWARD_1=UNIXSERVER.BAR.COM(00:00-05:00);SMTP.BAZ.NET;POOL=A
SMTP_FORWARD_2=NIGHT.EXAMPLE.ORG(22:00-02:00);DAY.EXAMPLE.ORG:2525;POOL=B
SMTP_FORWARD_3=SMTP.BAZ.NET(10:00-14:00);POOL=C
SMTP_FORWARD_4=LATE.EXAMPLE.ORG(23:30-00:30);POOL=D
";
const POOLS: [char; 4] = ['A', 'B', 'C', 'D'];
const HOSTS: [&str; 6] = [
    "UNIXSERVER.BAR.COM:25",
    "SMTP.BAZ.NET:25",
    "NIGHT.EXAMPLE.ORG:25",
    "DAY.EXAMPLE.ORG:2525",
    "LATE.EXAMPLE.ORG:25",
    "SYNC.EXAMPLE.ORG:25",
];
/// A job is due within this of its worker becoming active (ingest every 10 s, and an inactive
/// worker looks again every minute).
const PROMPT: u16 = 2;

pub fn scenario() -> Scenario {
    Scenario::new("windows-day-delivery", VIRTUAL_ONLY, day)
}

fn tod(minute: u16) -> TimeOfDay {
    TimeOfDay::new((minute / 60 % 24) as u8, (minute % 60) as u8).unwrap_or(TimeOfDay::MIDNIGHT)
}

/// "host:port" of worker `w` (0-based) at `minute`, or None when inactive, per explain().
fn explained(cfg: &smtpw_engine::config::SiteConfig, w: usize, minute: u16) -> Option<String> {
    route::explain(cfg, tod(minute))
        .get(w)
        .and_then(|r| match (&r.host, r.port, r.via) {
            (Some(h), Some(p), Via::Primary | Via::Failover) => Some(format!("{h}:{p}")),
            _ => None,
        })
}

async fn day(_ctx: Ctx) -> ScenarioResult {
    let start = date(2026, 11, 22).at(0, 0, 0, 0);
    let hosts: Vec<(&str, MockConfig)> = HOSTS
        .iter()
        .map(|h| (*h, iis_with_dot_latency(50)))
        .collect();
    let t = Topology::new(SITE, start, &hosts);
    let cfg = t.config.clone();
    if cfg.workers.len() != 4 {
        return Err(Failure::new("4 workers", format!("{}", cfg.workers.len())));
    }
    let run = t.start(EngineOptions {
        ingest_interval: Duration::from_secs(10),
        idle_poll: Duration::from_secs(30),
        // Nothing here reads the rate status; rewritten every virtual second, it alone took
        // over 60 s of wall time for the simulated day on a loaded machine (3.7 s with this).
        status_interval: Duration::from_secs(300),
        ..EngineOptions::default()
    });
    let t0 = tokio::time::Instant::now();
    for hour in 0..24u64 {
        tokio::time::sleep_until(t0 + Duration::from_secs(hour * 3600)).await;
        for (w, pool) in POOLS.iter().enumerate() {
            let rcpts = (0..3).map(move |i| format!("w{}-h{hour:02}-{i}@example.com", w + 1));
            t.submit(Some(*pool), rcpts, 1500);
        }
    }
    tokio::time::sleep_until(t0 + Duration::from_secs(24 * 3600 - 1)).await;
    let queued = t.stats().await.queued;
    run.stop().await?;

    let t0_wall = start
        .to_zoned(jiff::tz::TimeZone::UTC)
        .map_err(|e| Failure::new("the start time", e.to_string()))?
        .timestamp();
    // (worker, submit hour) -> (delivery minute, host) of every recipient.
    let mut got: BTreeMap<(usize, u16), Vec<(u16, String)>> = BTreeMap::new();
    for hp in HOSTS {
        for tr in t.mock(hp).journal().accepted_transactions() {
            let minute = (tr.started_at.duration_since(t0_wall).as_secs() / 60) as u16;
            for r in tr.accepted_rcpts() {
                let (w, h) = parse_rcpt(&r.addr)
                    .ok_or_else(|| Failure::new("only scenario recipients", r.addr.clone()))?;
                got.entry((w, h))
                    .or_default()
                    .push((minute, hp.to_string()));
            }
        }
    }
    let mut waiting = 0u64;
    let mut hour_host: Vec<Vec<Option<String>>> = vec![vec![None; 24]; 4];
    for (w, lane) in hour_host.iter_mut().enumerate() {
        for h in 0..24u16 {
            let submitted = h * 60;
            let first_active = (submitted..24 * 60).find(|m| explained(&cfg, w, *m).is_some());
            let deliveries = got.get(&(w, h)).cloned().unwrap_or_default();
            match first_active {
                None => {
                    if !deliveries.is_empty() {
                        return Err(Failure::new(
                            format!(
                                "worker {}'s job of {h:02}:00 held until midnight (worker inactive for the rest of the day)",
                                w + 1
                            ),
                            format!("delivered {deliveries:?}"),
                        ));
                    }
                    waiting += 3;
                }
                Some(due) => {
                    if deliveries.len() != 3 {
                        return Err(Failure::new(
                            format!(
                                "worker {}'s job of {h:02}:00 (3 recipients) delivered once each from {}",
                                w + 1,
                                tod(due)
                            ),
                            format!("{} deliveries: {deliveries:?}", deliveries.len()),
                        ));
                    }
                    for (minute, host) in &deliveries {
                        let want = explained(&cfg, w, *minute);
                        if want.as_deref() != Some(host.as_str()) {
                            return Err(Failure::new(
                                format!(
                                    "worker {} at {} on the host route::explain gives: {}",
                                    w + 1,
                                    tod(*minute),
                                    want.as_deref().unwrap_or("none (inactive)")
                                ),
                                format!("its copy of {h:02}:00 went to {host}"),
                            ));
                        }
                        if *minute < due || *minute > due + PROMPT {
                            return Err(Failure::new(
                                format!(
                                    "worker {}'s job of {h:02}:00 delivered between {} and {}",
                                    w + 1,
                                    tod(due),
                                    tod(due + PROMPT)
                                ),
                                format!("at {}", tod(*minute)),
                            ));
                        }
                        if let Some(slot) = lane.get_mut(usize::from(*minute / 60)) {
                            *slot = Some(host.clone());
                        }
                    }
                }
            }
        }
    }
    let sync = t.mock("SYNC.EXAMPLE.ORG:25").stats().sessions;
    if sync != 0 || queued != waiting {
        return Err(Failure::new(
            format!(
                "{waiting} recipients still queued at midnight and nothing through SMTP_FORWARD"
            ),
            format!("{queued} queued, {sync} sessions at SYNC"),
        ));
    }
    let lanes = hour_host
        .iter()
        .enumerate()
        .map(|(w, hours)| Lane {
            name: format!("worker {} ({})", w + 1, POOLS[w]),
            spans: spans(hours),
        })
        .collect();
    let delivered: usize = got.values().map(Vec::len).sum();
    Ok(Outcome::new(format!(
        "{delivered} recipients over 24 h, each on explain()'s host at its minute and within {PROMPT} min of its worker being active; {waiting} held past midnight (case 7 after 14:00)"
    ))
    .chart(Chart::Timeline {
        title: "Host that received each worker's copies, hour by hour (one job per worker per hour)"
            .into(),
        lanes,
    }))
}

/// `w{n}-h{hh}-{i}@...` -> (worker index, hour).
fn parse_rcpt(a: &str) -> Option<(usize, u16)> {
    let rest = a.strip_prefix('w')?;
    let (w, rest) = rest.split_once("-h")?;
    let (h, _) = rest.split_once('-')?;
    Some((w.parse::<usize>().ok()?.checked_sub(1)?, h.parse().ok()?))
}

/// Hours with the same host as `(start, end, host)`; hours without deliveries are left out.
fn spans(hours: &[Option<String>]) -> Vec<(f64, f64, String)> {
    let mut out: Vec<(f64, f64, String)> = Vec::new();
    for (h, host) in hours.iter().enumerate() {
        let Some(host) = host else { continue };
        match out.last_mut() {
            Some(last) if last.2 == *host && last.1 == h as f64 => last.1 = h as f64 + 1.0,
            _ => out.push((h as f64, h as f64 + 1.0, host.clone())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_name_their_worker_and_hour() {
        assert_eq!(parse_rcpt("w3-h09-2@example.com"), Some((2, 9)));
        assert_eq!(parse_rcpt("x@example.com"), None);
        let s = spans(&[Some("a".into()), Some("a".into()), None, Some("a".into())]);
        assert_eq!(s.len(), 2);
    }
}
