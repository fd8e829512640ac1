//! Configuration scenarios: every example line (EX-1 to EX-21), the defaults, and every refused
//! or warned example of docs/behaviour.md.
//!
//! Each case is data: the file, what docs/behaviour.md says it means, and the figure to show. Real time runs
//! `smtpw config check FILE --json` on a temporary file and reads the JSON (a bad file must give
//! exit status 2 and an error line `FILE:LINE:COLUMN: error: ...`); virtual mode reads the same
//! file through `smtpw_engine::config::parse_str` and `SiteConfig::to_json()`. Both are then read by the
//! same independent reader ([`facts`]) and compared with the documented meaning.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

use crate::report::Mode;
use crate::runner::{
    temp_dir, Bin, Ctx, Failure, Outcome, Scenario, ScenarioResult, BOTH, VIRTUAL_ONLY,
};
use smtpw_testkit::proc::run_process;

const SYNC: &str = "SMTP_FORWARD=SYNC.EXAMPLE.ORG\n";

/// A diagnostic the file must produce: on `line` (1-based), at the column where `at` first
/// occurs in that line, with a message containing `says`.
#[derive(Debug, Clone, Copy)]
pub struct Diag {
    pub line: usize,
    pub at: &'static str,
    pub says: &'static str,
}

/// What the file must mean.
#[derive(Debug, Clone)]
pub enum Expect {
    /// Accepted; every listed fact holds (fact names as produced by [`facts`]); exactly these
    /// warnings are given.
    Parses {
        facts: Vec<(&'static str, String)>,
        warnings: Vec<Diag>,
    },
    /// Refused with exactly these errors (exit status 2 from the binary).
    Refused { errors: Vec<Diag> },
}

/// One EX-1 to EX-21 case.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: &'static str,
    /// The file's text.
    pub text: String,
    /// `go.user` (unix form) rather than `SITE.CFG`.
    pub unix: bool,
    pub expect: Expect,
    /// The key figure: `{fact name}` is replaced by the value found.
    pub figure: &'static str,
}

fn good(
    name: &'static str,
    text: impl Into<String>,
    facts: &[(&'static str, &str)],
    figure: &'static str,
) -> Case {
    Case {
        name,
        text: text.into(),
        unix: false,
        expect: Expect::Parses {
            facts: facts.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            warnings: Vec::new(),
        },
        figure,
    }
}

fn refused(name: &'static str, text: &str, errors: &[Diag]) -> Case {
    Case {
        name,
        text: text.to_string(),
        unix: false,
        expect: Expect::Refused {
            errors: errors.to_vec(),
        },
        figure: "",
    }
}

impl Case {
    fn unix(mut self) -> Self {
        self.unix = true;
        self
    }
    fn warns(mut self, w: Diag) -> Self {
        if let Expect::Parses { warnings, .. } = &mut self.expect {
            warnings.push(w);
        }
        self
    }
    fn file_name(&self) -> &'static str {
        if self.unix {
            "go.user"
        } else {
            "SITE.CFG"
        }
    }
}

/// The documented meaning of every example line (EX-1 to EX-21; defaults from POOL-3, RATE-1,
/// COPY-2, COPY-1).
pub fn cases() -> Vec<Case> {
    let all_day = "windows=all-day";
    let w = |p: &str, f: &str, win: &str, pools: &str| {
        format!("primary={p} failover={f} {win} pools={pools}")
    };
    let unix_any = w("UNIXSERVER.BAR.COM:25", "none", all_day, "*");
    let smtp_baz = w("SMTP.BAZ.NET:25", "none", all_day, "*");
    let case3_4 = [
        ("workers", "3"),
        ("load UNIXSERVER.BAR.COM", "2/3"),
        ("load SMTP.BAZ.NET", "1/3"),
    ];
    vec![
        good(
            "config-defaults",
            "SMTP_FORWARD=H.EXAMPLE.ORG\n",
            &[
                ("sync", "H.EXAMPLE.ORG:25"),
                ("workers", "0"),
                ("max_bsmtp", "100"),
                ("sort_recipients", "0"),
                ("default_list_pool", "postings -, admin -"),
                ("default_dist_pool", "-"),
                ("rate overall", "none"),
                ("rate pools", "none"),
                ("dist", "none"),
                ("priority", "none"),
            ],
            "MAXBSMTP {max_bsmtp}; pools {default_list_pool}; rate {rate overall}",
        ),
        good(
            "config-01-sync-forward-port",
            "SMTP_FORWARD=LISTSERV.EXAMPLE.ORG:50025\n",
            &[("sync", "LISTSERV.EXAMPLE.ORG:50025"), ("workers", "0")],
            "sync {sync}",
        ),
        good(
            "config-02-unix-quoted-sync-forward",
            "SMTP_FORWARD=\"UNIX.XYZ.COM\"\nexport SMTP_FORWARD\n",
            &[("sync", "UNIX.XYZ.COM:25")],
            "sync {sync} (quotes stripped)",
        )
        .unix(),
        good(
            "config-03-three-lines",
            format!(
                "{SYNC}SMTP_FORWARD_1=UNIXSERVER.BAR.COM\nSMTP_FORWARD_2=SMTP.BAZ.NET\nSMTP_FORWARD_3=UNIXSERVER.BAR.COM\n"
            ),
            &[
                case3_4[0],
                case3_4[1],
                case3_4[2],
                ("worker 1", &unix_any),
                ("worker 2", &smtp_baz),
                ("worker 3", &unix_any),
            ],
            "{workers} workers; {load UNIXSERVER.BAR.COM} to UNIXSERVER.BAR.COM",
        ),
        good(
            "config-04-multiplier",
            format!("{SYNC}SMTP_FORWARD_1=2*UNIXSERVER.BAR.COM\nSMTP_FORWARD_2=SMTP.BAZ.NET\n"),
            &[
                case3_4[0],
                case3_4[1],
                case3_4[2],
                ("worker 1", &unix_any),
                ("worker 2", &unix_any),
                ("worker 3", &smtp_baz),
            ],
            "{workers} workers; {load UNIXSERVER.BAR.COM} to UNIXSERVER.BAR.COM (same as #3)",
        ),
        good(
            "config-05-multiplier-failover",
            format!("{SYNC}SMTP_FORWARD_1=2*UNIXSERVER.BAR.COM;SMTP.BAZ.NET\n"),
            &[
                ("workers", "2"),
                (
                    "worker 1",
                    &w("UNIXSERVER.BAR.COM:25", "SMTP.BAZ.NET:25", all_day, "*"),
                ),
                (
                    "worker 2",
                    &w("UNIXSERVER.BAR.COM:25", "SMTP.BAZ.NET:25", all_day, "*"),
                ),
            ],
            "{workers} workers; each {worker 2}",
        ),
        good(
            "config-06-window-failover",
            format!("{SYNC}SMTP_FORWARD_1=UNIXSERVER.BAR.COM(00:00-05:00);SMTP.BAZ.NET\n"),
            &[
                ("workers", "1"),
                (
                    "worker 1",
                    &w(
                        "UNIXSERVER.BAR.COM:25",
                        "SMTP.BAZ.NET:25",
                        "windows=00:00-05:00",
                        "*",
                    ),
                ),
            ],
            "{workers} worker; {worker 1}",
        ),
        good(
            // _3 needs _1 and _2 before it (WRK-2: reading stops at the first gap).
            "config-07-window-no-failover",
            format!(
                "{SYNC}SMTP_FORWARD_1=A.EXAMPLE.ORG\nSMTP_FORWARD_2=B.EXAMPLE.ORG\nSMTP_FORWARD_3=SMTP.BAZ.NET(10:00-14:00)\n"
            ),
            &[
                ("workers", "3"),
                (
                    "worker 3",
                    &w("SMTP.BAZ.NET:25", "none", "windows=10:00-14:00", "*"),
                ),
            ],
            "worker 3: {worker 3}",
        ),
        good(
            "config-08-ten-workers-port",
            format!("{SYNC}SMTP_FORWARD_1=10*LISTSERV.EXAMPLE.ORG:50025\n"),
            &[
                ("workers", "10"),
                ("load LISTSERV.EXAMPLE.ORG", "10/10"),
                ("ports", "50025"),
                (
                    "worker 10",
                    &w("LISTSERV.EXAMPLE.ORG:50025", "none", all_day, "*"),
                ),
            ],
            "{workers} workers, port {ports}",
        ),
        good(
            "config-09-quoted-worker",
            format!("{SYNC}SMTP_FORWARD_1=\"MAILHOST.BAR.COM\"\n"),
            &[
                ("workers", "1"),
                ("worker 1", &w("MAILHOST.BAR.COM:25", "none", all_day, "*")),
            ],
            "{workers} worker; {worker 1}",
        ),
        good(
            // Only pools A and - are served: the rest are reported (POOL-4).
            "config-10-pool-a-default",
            format!("{SYNC}SMTP_FORWARD_1=2*SCOOBY.EXAMPLE.ORG;POOL=A-\n"),
            &[
                ("workers", "2"),
                (
                    "worker 1",
                    &w("SCOOBY.EXAMPLE.ORG:25", "none", all_day, "A-"),
                ),
                (
                    "worker 2",
                    &w("SCOOBY.EXAMPLE.ORG:25", "none", all_day, "A-"),
                ),
            ],
            "{workers} workers, pools {pools of 1}",
        )
        .warns(Diag {
            line: 2,
            at: "SMTP_FORWARD_1",
            says: "no worker serves pools B C D",
        }),
        good(
            "config-11-pool-b",
            format!(
                "{SYNC}SMTP_FORWARD_1=2*SCOOBY.EXAMPLE.ORG;POOL=A-\nSMTP_FORWARD_2=SCRAPPY.EXAMPLE.ORG;POOL=B\n"
            ),
            &[
                ("workers", "3"),
                (
                    "worker 3",
                    &w("SCRAPPY.EXAMPLE.ORG:25", "none", all_day, "B"),
                ),
            ],
            "worker 3 pools {pools of 3}",
        )
        .warns(Diag {
            line: 2,
            at: "SMTP_FORWARD_1",
            says: "no worker serves pools C D",
        }),
        good(
            "config-12-pool-star",
            format!("{SYNC}SMTP_FORWARD_1=H.EXAMPLE.ORG;POOL=*\n"),
            &[
                ("workers", "1"),
                ("worker 1", &w("H.EXAMPLE.ORG:25", "none", all_day, "*")),
                ("pool count of 1", "27"),
            ],
            "pools {pools of 1} ({pool count of 1} pools)",
        ),
        good(
            "config-13-default-list-pool",
            format!("{SYNC}DEFAULT_LIST_POOL=A\n"),
            &[
                ("default_list_pool", "postings A, admin A"),
                ("default_dist_pool", "-"),
            ],
            "{default_list_pool}",
        ),
        good(
            "config-15-overall-rate",
            format!("{SYNC}SMTP_FORWARD_1=H.EXAMPLE.ORG\nSMTP_RATE_LIMIT=12Mbps\n"),
            &[("rate overall", "12582912"), ("rate pools", "none")],
            "overall {rate overall} bit/s",
        ),
        good(
            "config-16-pool-rates",
            format!(
                "{SYNC}SMTP_FORWARD_1=H.EXAMPLE.ORG\nSMTP_RATE_LIMIT=12Mbps AB:1.5Mbps C:150kbps\n"
            ),
            &[
                ("rate overall", "12582912"),
                ("rate pools", "A B C"),
                ("rate pool A", "1572864"),
                ("rate pool B", "1572864"),
                ("rate pool C", "153600"),
            ],
            "overall {rate overall}; A {rate pool A}, B {rate pool B}, C {rate pool C} bit/s",
        ),
        good(
            "config-17-dist-forward-thirds",
            format!("{SYNC}DIST_FORWARD=DIST1.EXAMPLE.ORG DIST2.EXAMPLE.ORG\n"),
            &[(
                "dist",
                "SELF=1/3 DIST1.EXAMPLE.ORG=1/3 DIST2.EXAMPLE.ORG=1/3",
            )],
            "{dist}",
        ),
        good(
            "config-18-dist-forward-weight",
            format!("{SYNC}DIST_FORWARD=2*DIST.EXAMPLE.ORG\n"),
            &[("dist", "SELF=1/3 DIST.EXAMPLE.ORG=2/3")],
            "{dist}",
        ),
        good(
            "config-19-unix-dist-forward-self-0",
            "SMTP_FORWARD=\"SYNC.EXAMPLE.COM\"\nDIST_FORWARD=\"0*SELF DIST1.EXAMPLE.COM DIST2.EXAMPLE.COM\"\nexport SMTP_FORWARD DIST_FORWARD\n",
            &[(
                "dist",
                "SELF=0/2 DIST1.EXAMPLE.COM=1/2 DIST2.EXAMPLE.COM=1/2",
            )],
            "{dist}",
        )
        .unix(),
        good(
            "config-20-background-pool-priority",
            format!("{SYNC}DIST_BACKGROUND_POOL_PRIORITY=I*B\n"),
            &[("priority", "IACDEFGHJKLMNOPQRSTUVWXYZ-B")],
            "order {priority}",
        ),
        good(
            "config-21-maxbsmtp-sort-merge",
            format!("{SYNC}MAXBSMTP=1000\nSORT_RECIPIENTS=2\nEMBEDDED_MAIL_MERGE=1\n"),
            &[
                ("max_bsmtp", "1000"),
                ("sort_recipients", "2"),
                ("passive EMBEDDED_MAIL_MERGE", "1"),
            ],
            "MAXBSMTP {max_bsmtp}, SORT_RECIPIENTS {sort_recipients}, EMBEDDED_MAIL_MERGE {passive EMBEDDED_MAIL_MERGE}",
        ),
        refused(
            "config-neg-unqualified-host",
            "SMTP_FORWARD=MAILHOST\n",
            &[Diag {
                line: 1,
                at: "MAILHOST",
                says: "not fully qualified",
            }],
        ),
        good(
            "config-neg-localhost-warns",
            "SMTP_FORWARD=LOCALHOST\n",
            &[("sync", "LOCALHOST:25")],
            "sync {sync}, {warnings} warning",
        )
        .warns(Diag {
            line: 1,
            at: "LOCALHOST",
            says: "LOCALHOST",
        }),
        refused(
            "config-neg-ipv6",
            "SMTP_FORWARD=[::1]\n",
            &[Diag {
                line: 1,
                at: "[::1]",
                says: "IPv6",
            }],
        ),
        refused(
            "config-neg-rate-space-before-unit",
            "SMTP_FORWARD=H.EXAMPLE.ORG\nSMTP_FORWARD_1=W.EXAMPLE.ORG\nSMTP_RATE_LIMIT=12 Mbps\n",
            &[Diag {
                line: 3,
                at: " Mbps",
                says: "a space between '12' and its unit 'Mbps'",
            }],
        ),
        good(
            "config-neg-rate-unit-any-case",
            "SMTP_FORWARD=H.EXAMPLE.ORG\nSMTP_FORWARD_1=W.EXAMPLE.ORG\nSMTP_RATE_LIMIT=12mbps\n",
            &[("rate overall", "12582912")],
            "12mbps = {rate overall} bit/s",
        ),
    ]
}

/// Every configuration scenario: the example file cases in both modes, and case 14 (a list header,
/// which no CLI command reads) through the library.
pub fn scenarios() -> Vec<Scenario> {
    let mut v: Vec<Scenario> = cases()
        .into_iter()
        .map(|c| {
            let name = c.name;
            Scenario::new(name, BOTH, move |ctx| run_case(c.clone(), ctx))
                .needs(&[Bin::Smtpw])
                .time_limit(Duration::from_secs(30))
        })
        .collect();
    // Keep the report in the examples' order: EX-14 after EX-13.
    let at = v
        .iter()
        .position(|s| s.name == "config-15-overall-rate")
        .unwrap_or(v.len());
    v.insert(
        at,
        Scenario::new("config-14-delivery-pool-header", VIRTUAL_ONLY, |_ctx| {
            delivery_pool_header()
        }),
    );
    v
}

/// The column (1-based, in characters) where `at` first occurs in line `line` of `text`.
fn column_of(text: &str, d: &Diag) -> Option<usize> {
    let l = text.lines().nth(d.line.checked_sub(1)?)?;
    let byte = l.find(d.at)?;
    Some(l[..byte].chars().count() + 1)
}

/// The diagnostic lines of a given severity that `d` asks for, checked against `lines`.
fn check_diags(
    case: &Case,
    file: &str,
    severity: &str,
    want: &[Diag],
    lines: &[String],
) -> Result<(), Failure> {
    let mut wanted = Vec::new();
    for d in want {
        let col = column_of(&case.text, d).ok_or_else(|| {
            Failure::new(
                format!("'{}' on line {} of the case's file", d.at, d.line),
                "it is not there (the case itself is wrong)",
            )
        })?;
        wanted.push((format!("{file}:{}:{col}: {severity}: ", d.line), d.says));
    }
    let shown_want = wanted
        .iter()
        .map(|(p, s)| format!("`{p}...{s}...`"))
        .collect::<Vec<_>>()
        .join(" and ");
    let shown_got = if lines.is_empty() {
        format!("no {severity}s")
    } else {
        lines
            .iter()
            .map(|l| format!("`{l}`"))
            .collect::<Vec<_>>()
            .join(" and ")
    };
    let all_found = wanted
        .iter()
        .all(|(p, s)| lines.iter().any(|l| l.starts_with(p) && l.contains(s)));
    if lines.len() != wanted.len() || !all_found {
        let expected = if wanted.is_empty() {
            format!("no {severity}s")
        } else {
            format!("exactly {} {severity}(s): {shown_want}", wanted.len())
        };
        return Err(Failure::new(expected, shown_got));
    }
    Ok(())
}

async fn run_case(case: Case, ctx: Ctx) -> ScenarioResult {
    // Read the file the way this mode does: JSON (good file) or error lines (bad file).
    let (file, read) = match ctx.mode() {
        Mode::Virtual => {
            let file = case.file_name().to_string();
            let read = match smtpw_engine::config::parse_str(&case.text, &file) {
                Ok(cfg) => Read::Good(cfg.to_json()),
                Err(e) => Read::Bad {
                    status: None,
                    errors: e.errors().map(ToString::to_string).collect(),
                },
            };
            (file, read)
        }
        Mode::RealTime | Mode::RealTimePg => {
            let dir = temp_dir()?;
            let path = dir.path().join(case.file_name());
            std::fs::write(&path, &case.text)
                .map_err(|e| Failure::new(format!("to write {}", path.display()), e.to_string()))?;
            let file = path.display().to_string();
            let bin = ctx.bin(Bin::Smtpw)?;
            let ran = run_process(
                bin,
                &["config", "check", &file, "--json"],
                Duration::from_secs(20),
            )
            .await?;
            let read = match ran.code {
                Some(0) => Read::Good(serde_json::from_str(&ran.stdout).map_err(|e| {
                    Failure::new(
                        "`smtpw config check --json` to print JSON",
                        format!("{e}: {}", ran.stdout.trim()),
                    )
                })?),
                code => Read::Bad {
                    status: Some(code),
                    errors: ran
                        .stderr
                        .lines()
                        .filter(|l| l.contains(": error: "))
                        .map(str::to_string)
                        .collect(),
                },
            };
            (file, read)
        }
    };
    judge(&case, &file, read)
}

/// What a mode read from the file.
enum Read {
    Good(Value),
    /// `status`: the exit status in real time (`None` inside: killed by a signal); `None` for
    /// the library.
    Bad {
        status: Option<Option<i32>>,
        errors: Vec<String>,
    },
}

fn judge(case: &Case, file: &str, read: Read) -> ScenarioResult {
    match (&case.expect, read) {
        (
            Expect::Parses {
                facts: want,
                warnings,
            },
            Read::Good(json),
        ) => {
            let got = facts(&json)
                .map_err(|e| Failure::new("the JSON shape of `smtpw config check --json`", e))?;
            let mut wrong = Vec::new();
            for (k, v) in want {
                let g = got.get(*k).map(String::as_str).unwrap_or("(absent)");
                if g != v {
                    wrong.push((k, v.as_str(), g));
                }
            }
            if !wrong.is_empty() {
                let exp = wrong
                    .iter()
                    .map(|(k, v, _)| format!("{k} = {v}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                let g = wrong
                    .iter()
                    .map(|(k, _, g)| format!("{k} = {g}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                let lines: Vec<&str> = case
                    .text
                    .lines()
                    .filter(|l| *l != SYNC.trim_end() && !l.starts_with("export "))
                    .collect();
                return Err(Failure::new(
                    format!("`{}` to mean {exp}", lines.join(" / ")),
                    g,
                ));
            }
            let got_warnings: Vec<String> = json
                .get("warnings")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            check_diags(case, file, "warning", warnings, &got_warnings)?;
            Ok(Outcome::new(fill(case.figure, &got)))
        }
        (Expect::Parses { .. }, Read::Bad { status, errors }) => Err(Failure::new(
            "the file to be accepted",
            format!(
                "refused{}: {}",
                status_text(status),
                if errors.is_empty() {
                    "(no error lines)".to_string()
                } else {
                    errors.join(" | ")
                }
            ),
        )),
        (Expect::Refused { errors: want }, Read::Good(json)) => Err(Failure::new(
            format!(
                "the file to be refused ({}exit status 2) with {} error(s)",
                "",
                want.len()
            ),
            format!(
                "it was accepted: {}",
                facts(&json)
                    .map(|f| summary(&f))
                    .unwrap_or_else(|e| e.to_string())
            ),
        )),
        (Expect::Refused { errors: want }, Read::Bad { status, errors }) => {
            if let Some(code) = status {
                if code != Some(2) {
                    return Err(Failure::new(
                        "exit status 2 for a bad file",
                        format!("exit status {}", status_text(Some(code))),
                    ));
                }
            }
            check_diags(case, file, "error", want, &errors)?;
            let first = errors.first().map(String::as_str).unwrap_or("");
            // Show the file's base name, not the temporary directory.
            let shown = first
                .strip_prefix(file)
                .map(|rest| format!("{}{rest}", case.file_name()))
                .unwrap_or_else(|| first.to_string());
            // The figure keeps the place and what is wrong; the advice stays in the tool.
            let shown = shown.split(", expected ").next().unwrap_or(&shown);
            Ok(Outcome::new(match status {
                Some(_) => format!("exit 2; {shown}"),
                None => format!("refused; {shown}"),
            }))
        }
    }
}

fn status_text(s: Option<Option<i32>>) -> String {
    match s {
        None => String::new(),
        Some(Some(c)) => format!(" (exit status {c})"),
        Some(None) => " (killed by a signal)".to_string(),
    }
}

/// Replaces `{fact}` in `template` by the fact's value.
fn fill(template: &str, f: &BTreeMap<String, String>) -> String {
    let mut out = template.to_string();
    for (k, v) in f {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

fn summary(f: &BTreeMap<String, String>) -> String {
    let mut s = String::new();
    for k in ["sync", "workers", "rate overall", "rate pools", "dist"] {
        if let Some(v) = f.get(k) {
            let _ = write!(s, "{k} = {v}; ");
        }
    }
    s.trim_end_matches("; ").to_string()
}

/// Reads the JSON of `smtpw config check --json` into named facts, independently of the
/// library's types:
/// `sync`, `workers`, `worker N` (`primary=H:P failover=H:P|none windows=all-day|S-E,...
/// pools=*|A-`), `pools of N`, `pool count of N`, `load HOST` (`k/N` of the workers whose
/// primary is HOST), `ports` (distinct primary ports), `rate overall`, `rate pools`,
/// `rate pool X`, `dist` (`HOST=w/total ...`), `priority`, `max_bsmtp`, `sort_recipients`,
/// `default_list_pool` (`postings X, admin Y`), `default_dist_pool`, `passive KEY`, `warnings`.
pub fn facts(v: &Value) -> Result<BTreeMap<String, String>, String> {
    let mut f = BTreeMap::new();
    let get = |v: &'_ Value, k: &str| -> Result<Value, String> {
        v.get(k)
            .cloned()
            .ok_or_else(|| format!("no field '{k}' in {v}"))
    };
    let hp = |v: &Value| -> Result<String, String> {
        if v.is_null() {
            return Ok("none".to_string());
        }
        let h = get(v, "host")?;
        let p = get(v, "port")?;
        Ok(format!(
            "{}:{}",
            h.as_str().ok_or("host is not a string")?,
            p.as_u64().ok_or("port is not a number")?
        ))
    };
    let num = |v: &Value| -> String {
        match v {
            Value::Null => "none".to_string(),
            other => other.to_string().trim_matches('"').to_string(),
        }
    };
    f.insert("sync".into(), hp(&get(v, "sync_forward")?)?);
    let workers = get(v, "workers")?;
    let workers = workers.as_array().ok_or("workers is not a list")?;
    f.insert("workers".into(), workers.len().to_string());
    let mut load: BTreeMap<String, usize> = BTreeMap::new();
    let mut ports = std::collections::BTreeSet::new();
    for (i, w) in workers.iter().enumerate() {
        let primary = hp(&get(w, "primary")?)?;
        let failover = hp(&get(w, "failover")?)?;
        let windows = get(w, "windows")?;
        let windows: Vec<String> = windows
            .as_array()
            .ok_or("windows is not a list")?
            .iter()
            .map(|win| format!("{}-{}", num(&win["start"]), num(&win["end"])))
            .collect();
        let pools = get(w, "pools")?;
        let pools: Vec<String> = pools
            .as_array()
            .ok_or("pools is not a list")?
            .iter()
            .map(num)
            .collect();
        let pool_count = if pools == ["*"] { 27 } else { pools.len() };
        let n = i + 1;
        f.insert(
            format!("worker {n}"),
            format!(
                "primary={primary} failover={failover} windows={} pools={}",
                if windows.is_empty() {
                    "all-day".to_string()
                } else {
                    windows.join(",")
                },
                pools.concat()
            ),
        );
        f.insert(format!("pools of {n}"), pools.concat());
        f.insert(format!("pool count of {n}"), pool_count.to_string());
        if let Some((h, p)) = primary.rsplit_once(':') {
            *load.entry(h.to_string()).or_default() += 1;
            ports.insert(p.to_string());
        }
    }
    for (h, k) in load {
        f.insert(format!("load {h}"), format!("{k}/{}", workers.len()));
    }
    f.insert(
        "ports".into(),
        ports.into_iter().collect::<Vec<_>>().join(" "),
    );
    let rl = get(v, "rate_limits")?;
    f.insert("rate overall".into(), num(&get(&rl, "overall_bps")?));
    let pools = get(&rl, "pools")?;
    let pools = pools.as_object().ok_or("rate_limits.pools is not a map")?;
    f.insert(
        "rate pools".into(),
        if pools.is_empty() {
            "none".into()
        } else {
            pools.keys().cloned().collect::<Vec<_>>().join(" ")
        },
    );
    for (p, bps) in pools {
        f.insert(format!("rate pool {p}"), num(bps));
    }
    let dist = get(v, "dist_forward")?;
    let dist = dist.as_array().ok_or("dist_forward is not a list")?;
    let total: u64 = dist.iter().filter_map(|e| e["weight"].as_u64()).sum();
    f.insert(
        "dist".into(),
        if dist.is_empty() {
            "none".into()
        } else {
            dist.iter()
                .map(|e| format!("{}={}/{total}", num(&e["host"]), num(&e["weight"])))
                .collect::<Vec<_>>()
                .join(" ")
        },
    );
    let prio = get(v, "dist_background_pool_priority")?;
    f.insert(
        "priority".into(),
        match prio.as_array() {
            None => "none".into(),
            Some(a) => a.iter().map(num).collect::<String>(),
        },
    );
    f.insert("max_bsmtp".into(), num(&get(v, "max_bsmtp")?));
    f.insert("sort_recipients".into(), num(&get(v, "sort_recipients")?));
    let dlp = num(&get(v, "default_list_pool")?);
    let (post, admin) = dlp.split_once(' ').unwrap_or((&dlp, &dlp));
    f.insert(
        "default_list_pool".into(),
        format!("postings {post}, admin {admin}"),
    );
    f.insert(
        "default_dist_pool".into(),
        num(&get(v, "default_dist_pool")?),
    );
    if let Some(p) = get(v, "passive")?.as_object() {
        for (k, val) in p {
            f.insert(format!("passive {k}"), num(val));
        }
    }
    let warnings = get(v, "warnings")?;
    f.insert(
        "warnings".into(),
        warnings.as_array().map_or(0, Vec::len).to_string(),
    );
    Ok(f)
}

/// EX-14: `* Delivery-Pool= C,D` -> postings C, admin D; `* Delivery-Pool= C` ->
/// both C (POOL-3). A list header, read by the library only.
async fn delivery_pool_header() -> ScenarioResult {
    let mut seen = Vec::new();
    for (value, post, admin) in [(" C,D", 'C', 'D'), (" C", 'C', 'C')] {
        let got = smtpw_engine::config::parse_delivery_pool(value).map_err(|e| {
            Failure::new(
                format!("Delivery-Pool={value} to give postings {post}, admin {admin}"),
                format!("refused: {e}"),
            )
        })?;
        let g = (got.postings.as_char(), got.admin.as_char());
        if g != (post, admin) {
            return Err(Failure::new(
                format!("Delivery-Pool={value}: postings {post}, admin {admin}"),
                format!("postings {}, admin {}", g.0, g.1),
            ));
        }
        seen.push(format!("'{}' -> {}/{}", value.trim(), g.0, g.1));
    }
    if let Ok(p) = smtpw_engine::config::parse_delivery_pool("CD") {
        return Err(Failure::new(
            "Delivery-Pool=CD (two letters, no comma) to be refused",
            format!(
                "accepted as postings {}, admin {}",
                p.postings.as_char(),
                p.admin.as_char()
            ),
        ));
    }
    Ok(Outcome::new(format!(
        "{} (postings/admin); 'CD' refused",
        seen.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_case_names_a_column_that_exists() {
        for c in cases() {
            let diags = match &c.expect {
                Expect::Parses { warnings, .. } => warnings.clone(),
                Expect::Refused { errors } => errors.clone(),
            };
            for d in &diags {
                assert!(column_of(&c.text, d).is_some(), "{}: {d:?}", c.name);
            }
        }
        let d = Diag {
            line: 3,
            at: " Mbps",
            says: "",
        };
        assert_eq!(
            column_of("A=1\nB=2\nSMTP_RATE_LIMIT=12 Mbps\n", &d),
            Some(19)
        );
    }

    #[test]
    fn a_wrong_fact_says_what_was_expected_and_found() {
        let mut c = cases()
            .into_iter()
            .find(|c| c.name == "config-03-three-lines")
            .unwrap();
        c.text = format!("{SYNC}SMTP_FORWARD_1=UNIXSERVER.BAR.COM\nSMTP_FORWARD_2=SMTP.BAZ.NET\n");
        let json = smtpw_engine::config::parse_str(&c.text, "SITE.CFG")
            .unwrap()
            .to_json();
        let f = judge(&c, "SITE.CFG", Read::Good(json)).unwrap_err();
        assert!(f.expected.contains("workers = 3"), "{f}");
        assert!(
            f.expected.starts_with(
                "`SMTP_FORWARD_1=UNIXSERVER.BAR.COM / SMTP_FORWARD_2=SMTP.BAZ.NET` to mean"
            ),
            "{f}"
        );
        assert!(f.got.contains("workers = 2"), "{f}");
        assert!(f.got.contains("load UNIXSERVER.BAR.COM = 1/2"), "{f}");
    }
}
