//! Conformance results and the report: a table, `report.md`, and `report.html` with SVG charts.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::svg;

/// How a scenario ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Paused tokio time, in-memory connections, in-process mocks: fast and exact.
    Virtual,
    /// Real time over loopback sockets with the `smtpw` and `mock-mta` binaries as processes.
    RealTime,
    /// The same real-time run with the spool in PostgreSQL (testkit's private server) instead
    /// of a spool directory: for the scenarios marked [`crate::runner::Scenario::both_spools`].
    RealTimePg,
}

impl Mode {
    /// Whether the binaries run as processes in real time (either spool).
    pub fn is_real_time(self) -> bool {
        matches!(self, Mode::RealTime | Mode::RealTimePg)
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Virtual => "virtual",
            Mode::RealTime => "real-time",
            Mode::RealTimePg => "real-time-pg",
        })
    }
}

/// A chart a scenario asks the report to draw.
#[derive(Debug, Clone, Serialize)]
pub enum Chart {
    /// Lines over a shared x axis (e.g. achieved rate vs limit over time).
    Lines {
        title: String,
        x_label: String,
        y_label: String,
        series: Vec<Series>,
    },
    /// Pairs of bars per category: measured vs expected (e.g. copies per host vs weight).
    Bars {
        title: String,
        y_label: String,
        bars: Vec<Bar>,
    },
    /// One row per lane with labelled spans over 0..24 h (e.g. each worker's host over a day).
    Timeline { title: String, lanes: Vec<Lane> },
}

#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Dashed line (a limit or an expectation).
    pub dashed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Bar {
    pub label: String,
    pub measured: f64,
    pub expected: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Lane {
    pub name: String,
    /// (start hour, end hour, label) with 0 <= start < end <= 24.
    pub spans: Vec<(f64, f64, String)>,
}

/// The result of one scenario in one mode.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub scenario: String,
    pub mode: Mode,
    pub passed: bool,
    /// The one figure that says how well it went (e.g. "split 2.00:1, 3 connections").
    pub figure: String,
    /// On failure: what was expected and what happened.
    pub failure: Option<String>,
    #[serde(serialize_with = "ser_secs")]
    pub took: Duration,
    pub charts: Vec<Chart>,
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// The plain-text table printed at the end of a run.
pub fn table(results: &[CaseResult]) -> String {
    let w = results
        .iter()
        .map(|r| r.scenario.len())
        .max()
        .unwrap_or(8)
        .max(8);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<w$}  {:<9}  {:<6}  {:>8}  figure",
        "scenario", "mode", "result", "time"
    );
    for r in results {
        let _ = writeln!(
            out,
            "{:<w$}  {:<9}  {:<6}  {:>7.2}s  {}",
            r.scenario,
            r.mode.to_string(),
            if r.passed { "pass" } else { "FAIL" },
            r.took.as_secs_f64(),
            r.figure
        );
        if let Some(f) = &r.failure {
            for line in f.lines() {
                let _ = writeln!(out, "{:<w$}    ! {line}", "");
            }
        }
    }
    let passed = results.iter().filter(|r| r.passed).count();
    let _ = writeln!(out, "{} passed, {} failed", passed, results.len() - passed);
    out
}

/// The Markdown report.
pub fn markdown(results: &[CaseResult]) -> String {
    let mut out = String::from("# smtpw conformance report\n\n");
    let passed = results.iter().filter(|r| r.passed).count();
    let _ = writeln!(out, "{passed} of {} cases passed.\n", results.len());
    out.push_str("| scenario | mode | result | time | figure |\n|---|---|---|---|---|\n");
    for r in results {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.2} s | {} |",
            r.scenario,
            r.mode,
            if r.passed { "pass" } else { "**FAIL**" },
            r.took.as_secs_f64(),
            r.figure.replace('|', "\\|")
        );
    }
    for r in results.iter().filter(|r| !r.passed) {
        let _ = writeln!(
            out,
            "\n## {} ({}) failed\n\n```\n{}\n```",
            r.scenario,
            r.mode,
            r.failure.as_deref().unwrap_or("")
        );
    }
    out.push_str("\nCharts are in report.html.\n");
    out
}

/// The HTML report with every chart drawn as inline SVG.
pub fn html(results: &[CaseResult]) -> String {
    let mut out = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>smtpw conformance</title>\
         <style>body{font-family:sans-serif;margin:2em;max-width:1000px}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}.FAIL{color:#b00;font-weight:bold}\
         .pass{color:#070}pre{background:#f6f6f6;padding:8px}</style></head><body>\
         <h1>smtpw conformance report</h1>",
    );
    let passed = results.iter().filter(|r| r.passed).count();
    let _ = write!(out, "<p>{passed} of {} cases passed.</p>", results.len());
    out.push_str(
        "<table><tr><th>scenario</th><th>mode</th><th>result</th><th>time</th><th>figure</th></tr>",
    );
    for r in results {
        let res = if r.passed { "pass" } else { "FAIL" };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"{res}\">{res}</td><td>{:.2} s</td><td>{}</td></tr>",
            svg::esc(&r.scenario),
            r.mode,
            r.took.as_secs_f64(),
            svg::esc(&r.figure)
        );
    }
    out.push_str("</table>");
    for r in results {
        if r.charts.is_empty() && r.passed {
            continue;
        }
        let _ = write!(out, "<h2>{} ({})</h2>", svg::esc(&r.scenario), r.mode);
        if let Some(f) = &r.failure {
            let _ = write!(out, "<pre>{}</pre>", svg::esc(f));
        }
        for c in &r.charts {
            out.push_str(&svg::render(c));
        }
    }
    out.push_str("</body></html>\n");
    out
}

/// Write `report.md`, `report.html` and `results.json` into `dir`.
pub fn write_all(dir: &Path, results: &[CaseResult]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("report.md"), markdown(results))?;
    std::fs::write(dir.join("report.html"), html(results))?;
    let json = serde_json::to_string_pretty(results).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("results.json"), json)?;
    Ok(())
}
