//! Rate limits (RATE-1, EX-16, RATE-4), virtual mode:
//! `SMTP_RATE_LIMIT=12Mbps AB:1.5Mbps C:150kbps`, every pool backlogged, each with its own
//! workers, one relay. Over a measured minute (after a 10 s warm-up) the achieved rate of A, B
//! and C must equal their limits and the sum of all pools the overall limit; the default pool,
//! limited only by the overall bucket, takes the rest.
//!
//! Rates are measured at the relay: message bytes (headers + body with CRLFs, what RATE-2
//! counts) by the time each transaction started (MAIL), on the virtual clock.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::civil::date;
use mock_mta::MockConfig;

use crate::report::{Chart, Series};
use crate::runner::{Ctx, Failure, Outcome, Scenario, ScenarioResult, VIRTUAL_ONLY};
use smtpw_testkit::topology::{fast_options, Topology};

const RELAY: &str = "RELAY.EXAMPLE.ORG:25";
const WARM_UP: f64 = 10.0;
const MEASURED: f64 = 60.0;
const BIN: f64 = 5.0;
/// Achieved / limit over the measured minute must be within this.
const TOLERANCE: f64 = 0.02;

const SITE: &str = "\
SMTP_FORWARD=RELAY.EXAMPLE.ORG
SMTP_FORWARD_1=2*RELAY.EXAMPLE.ORG;POOL=A
SMTP_FORWARD_2=2*RELAY.EXAMPLE.ORG;POOL=B
SMTP_FORWARD_3=2*RELAY.EXAMPLE.ORG;POOL=C
SMTP_FORWARD_4=4*RELAY.EXAMPLE.ORG;POOL=-
MAXBSMTP=1
SMTP_RATE_LIMIT=12Mbps AB:1.5Mbps C:150kbps
";

pub fn scenario() -> Scenario {
    Scenario::new("rate-limits", VIRTUAL_ONLY, rates)
}

/// (pool label, recipients' domain, message size, copies queued).
const POOLS: [(&str, &str, usize, usize); 4] = [
    ("A", "pool-a.example", 32 * 1024, 800),
    ("B", "pool-b.example", 32 * 1024, 800),
    ("C", "pool-c.example", 8 * 1024, 300),
    ("-", "pool-default.example", 32 * 1024, 5000),
];

async fn rates(_ctx: Ctx) -> ScenarioResult {
    let start = date(2026, 11, 22).at(12, 0, 0, 0);
    let mut relay = MockConfig::iis();
    relay.profile.max_session_kb = None;
    let t = Topology::new(SITE, start, &[(RELAY, relay)]);
    // What EX-16 says, in bit/s.
    let overall = 12 * 1024 * 1024;
    let limits: BTreeMap<&str, u64> = [("A", 1_572_864), ("B", 1_572_864), ("C", 153_600)]
        .into_iter()
        .collect();
    let rl = &t.config.rate_limits;
    let parsed: BTreeMap<String, u64> = rl
        .pools
        .iter()
        .map(|(p, b)| (p.as_char().to_string(), *b))
        .collect();
    let want: BTreeMap<String, u64> = limits.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    if rl.overall_bps != Some(overall) || parsed != want {
        return Err(Failure::new(
            format!("overall {overall} bit/s, pools {want:?} (EX-16)"),
            format!("overall {:?}, pools {parsed:?}", rl.overall_bps),
        ));
    }
    for (pool, domain, size, n) in POOLS {
        let p = if pool == "-" {
            None
        } else {
            pool.chars().next()
        };
        t.submit(p, (0..n).map(|i| format!("r{i}@{domain}")), size);
    }
    let run = t.start(fast_options());
    tokio::time::sleep(Duration::from_secs_f64(WARM_UP + MEASURED + 1.0)).await;
    run.stop().await?;

    // Bytes per pool per bin, by the time each accepted transaction started.
    let t0 = start
        .to_zoned(jiff::tz::TimeZone::UTC)
        .map_err(|e| Failure::new("the start time", e.to_string()))?
        .timestamp();
    let nbins = ((WARM_UP + MEASURED) / BIN) as usize;
    let mut bins: BTreeMap<&str, Vec<u64>> = POOLS.iter().map(|p| (p.0, vec![0; nbins])).collect();
    let mut measured: BTreeMap<&str, u64> = BTreeMap::new();
    let j = t.mock(RELAY).journal();
    for tr in j.accepted_transactions() {
        let Some(r) = tr.rcpts.first() else { continue };
        let Some(pool) = POOLS.iter().find(|p| r.addr.ends_with(p.1)).map(|p| p.0) else {
            continue;
        };
        let at = tr.started_at.duration_since(t0).as_secs_f64();
        if let Some(b) = bins
            .get_mut(pool)
            .and_then(|v| v.get_mut((at / BIN) as usize))
        {
            *b += tr.bytes;
        }
        if (WARM_UP..WARM_UP + MEASURED).contains(&at) {
            *measured.entry(pool).or_default() += tr.bytes;
        }
    }
    let bps = |pool: &str| measured.get(pool).copied().unwrap_or(0) as f64 * 8.0 / MEASURED;
    let mut figures = Vec::new();
    let mut bad = Vec::new();
    let mut check = |name: &str, got: f64, limit: u64| {
        let acc = got / limit as f64;
        figures.push(format!("{name} {:.1}%", acc * 100.0));
        if (acc - 1.0).abs() > TOLERANCE {
            bad.push(format!(
                "{name}: {got:.0} bit/s for a limit of {limit} ({:.1}%)",
                acc * 100.0
            ));
        }
    };
    for (pool, limit) in &limits {
        check(pool, bps(pool), *limit);
    }
    let total: f64 = POOLS.iter().map(|p| bps(p.0)).sum();
    check("overall", total, overall);
    if !bad.is_empty() {
        return Err(Failure::new(
            format!(
                "achieved rates within {:.0}% of the limits over {MEASURED:.0} s after a {WARM_UP:.0} s warm-up (RATE-4)",
                TOLERANCE * 100.0
            ),
            bad.join("; "),
        ));
    }
    // The chart: achieved rate per pool per bin (Mbit/s), limits dashed.
    let mbps = |b: u64| b as f64 * 8.0 / BIN / 1_048_576.0;
    let mut series: Vec<Series> = POOLS
        .iter()
        .map(|p| Series {
            name: format!("pool {}", p.0),
            points: bins[p.0]
                .iter()
                .enumerate()
                .map(|(i, b)| ((i as f64 + 0.5) * BIN, mbps(*b)))
                .collect(),
            dashed: false,
        })
        .collect();
    series.push(Series {
        name: "all pools".into(),
        points: (0..nbins)
            .map(|i| {
                let s: u64 = bins.values().map(|v| v[i]).sum();
                ((i as f64 + 0.5) * BIN, mbps(s))
            })
            .collect(),
        dashed: false,
    });
    let end = WARM_UP + MEASURED;
    for (name, l) in [
        ("limit A, B (1.5 Mbps)", 1.5),
        ("limit C (150 kbps)", 150.0 / 1024.0),
        ("limit overall (12 Mbps)", 12.0),
    ] {
        series.push(Series {
            name: name.into(),
            points: vec![(0.0, l), (end, l)],
            dashed: true,
        });
    }
    Ok(Outcome::new(format!(
        "achieved/limit over {MEASURED:.0} s: {}; default pool {:.2} Mbps (the rest of the overall)",
        figures.join(", "),
        bps("-") / 1_048_576.0
    ))
    .chart(Chart::Lines {
        title: "Achieved rate per pool vs limit (SMTP_RATE_LIMIT=12Mbps AB:1.5Mbps C:150kbps)"
            .into(),
        x_label: "seconds".into(),
        y_label: "Mbit/s".into(),
        series,
    }))
}
