//! Property tests: generated valid SMTP_FORWARD_n values parse to the workers they describe,
//! rate limits resolve to the exact bits per second, and no input makes the parser panic.

use proptest::prelude::*;
use smtpw_engine::config::{parse_str, HostPort, Pool, PoolSet, Severity, TimeOfDay, Window};

#[derive(Debug, Clone)]
struct Host {
    text: String,
}

fn label() -> impl Strategy<Value = String> {
    "[a-zA-Z]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?"
}

fn host() -> impl Strategy<Value = Host> {
    prop_oneof![
        proptest::collection::vec(label(), 2..5).prop_map(|ls| Host { text: ls.join(".") }),
        any::<[u8; 4]>().prop_map(|o| Host {
            text: format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3])
        }),
    ]
}

#[derive(Debug, Clone)]
struct Time {
    minutes: u16,
    one_digit_hour: bool,
    as_24: bool,
}

impl Time {
    fn render(&self, is_end: bool) -> String {
        let (h, m) = (self.minutes / 60, self.minutes % 60);
        if is_end && self.minutes == 0 && self.as_24 {
            return "24:00".into();
        }
        if self.one_digit_hour && h < 10 {
            format!("{h}:{m:02}")
        } else {
            format!("{h:02}:{m:02}")
        }
    }
    fn tod(&self) -> TimeOfDay {
        TimeOfDay::new((self.minutes / 60) as u8, (self.minutes % 60) as u8).unwrap()
    }
}

fn time() -> impl Strategy<Value = Time> {
    (
        prop_oneof![0u16..1440, Just(0u16), Just(1439u16)],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(minutes, one_digit_hour, as_24)| Time {
            minutes,
            one_digit_hour,
            as_24,
        })
}

#[derive(Debug, Clone)]
enum PoolSpec {
    Star,
    Letters(String),
}

fn pool_spec() -> impl Strategy<Value = PoolSpec> {
    prop_oneof![
        Just(PoolSpec::Star),
        "[A-Za-z-]{1,6}".prop_map(PoolSpec::Letters),
    ]
}

#[derive(Debug, Clone)]
struct Line {
    count: Option<u32>,
    primary: Host,
    port: Option<u16>,
    windows: Vec<(Time, Time)>,
    failover: Option<(Host, Option<u16>)>,
    pools: Option<PoolSpec>,
    unknown: Option<(String, String)>,
    seg_order: Vec<usize>,
    quoted: bool,
}

fn line() -> impl Strategy<Value = Line> {
    (
        proptest::option::of(0u32..12),
        host(),
        proptest::option::of(1u16..=65535),
        proptest::collection::vec((time(), time()), 0..4),
        proptest::option::of((host(), proptest::option::of(1u16..=65535))),
        proptest::option::of(pool_spec()),
        proptest::option::of(("X[A-Z]{1,6}", "[0-9A-Z]{1,4}")),
        Just(vec![0usize, 1, 2]).prop_shuffle(),
        any::<bool>(),
    )
        .prop_map(
            |(count, primary, port, windows, failover, pools, unknown, seg_order, quoted)| Line {
                count,
                primary,
                port,
                windows,
                failover,
                pools,
                unknown,
                seg_order,
                quoted,
            },
        )
}

impl Line {
    fn render(&self) -> String {
        let mut s = String::new();
        if let Some(c) = self.count {
            s += &format!("{c}*");
        }
        s += &self.primary.text;
        if let Some(p) = self.port {
            s += &format!(":{p}");
        }
        if !self.windows.is_empty() {
            let ws: Vec<String> = self
                .windows
                .iter()
                .map(|(a, b)| format!("{}-{}", a.render(false), b.render(true)))
                .collect();
            s += &format!("({})", ws.join(","));
        }
        for i in &self.seg_order {
            match i {
                0 => {
                    if let Some((h, p)) = &self.failover {
                        s += &format!(";{}", h.text);
                        if let Some(p) = p {
                            s += &format!(":{p}");
                        }
                    }
                }
                1 => match &self.pools {
                    Some(PoolSpec::Star) => s += ";POOL=*",
                    Some(PoolSpec::Letters(l)) => s += &format!(";pool={l}"),
                    None => {}
                },
                _ => {
                    if let Some((k, v)) = &self.unknown {
                        s += &format!(";{k}={v}");
                    }
                }
            }
        }
        if self.quoted {
            format!("\"{s}\"")
        } else {
            s
        }
    }

    fn expected_pools(&self) -> PoolSet {
        match &self.pools {
            None | Some(PoolSpec::Star) => PoolSet::ALL,
            Some(PoolSpec::Letters(l)) => l.chars().map(|c| Pool::from_char(c).unwrap()).collect(),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn generated_worker_lines_parse_to_the_workers_they_describe(
        lines in proptest::collection::vec(line(), 1..5), crlf in any::<bool>()
    ) {
        let eol = if crlf { "\r\n" } else { "\n" };
        let mut text = format!("SMTP_FORWARD=SYNC.EXAMPLE.ORG{eol}");
        for (i, l) in lines.iter().enumerate() {
            text += &format!("SMTP_FORWARD_{}={}{eol}", i + 1, l.render());
        }
        let cfg = match parse_str(&text, "SITE.CFG") {
            Ok(c) => c,
            Err(e) => return Err(TestCaseError::fail(format!("{text}\n{e}"))),
        };
        let mut expected = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            for _ in 0..l.count.unwrap_or(1) {
                expected.push((
                    i as u32 + 1,
                    HostPort::new(l.primary.text.clone(), l.port.unwrap_or(25)),
                    l.failover.as_ref().map(|(h, p)| HostPort::new(h.text.clone(), p.unwrap_or(25))),
                    l.windows.iter().map(|(a, b)| Window { start: a.tod(), end: b.tod() }).collect::<Vec<_>>(),
                    l.expected_pools(),
                ));
            }
        }
        prop_assert_eq!(cfg.workers.len(), expected.len());
        for (k, (w, e)) in cfg.workers.iter().zip(&expected).enumerate() {
            prop_assert_eq!(w.id, k as u32 + 1);
            prop_assert_eq!(w.source_n, e.0);
            prop_assert_eq!(&w.primary, &e.1);
            prop_assert_eq!(&w.failover, &e.2);
            prop_assert_eq!(&w.windows, &e.3);
            prop_assert_eq!(w.pools, e.4);
        }
        let unknown = lines.iter().filter(|l| l.unknown.is_some()).count();
        let zero = lines.iter().filter(|l| l.count == Some(0)).count();
        let option_warnings = cfg.warnings.iter().filter(|w| w.message.contains("unknown option")).count();
        prop_assert_eq!(option_warnings, unknown);
        let zero_warnings = cfg.warnings.iter().filter(|w| w.message.contains("asks for 0 workers")).count();
        prop_assert_eq!(zero_warnings, zero);
    }

    #[test]
    fn rate_limits_are_exact_bits_per_second(
        int in 0u64..100_000, frac in "[0-9]{0,4}", unit in "[kKmMgG][bB][pP][sS]",
        pools in proptest::option::of("[A-Za-z-]{1,4}")
    ) {
        let num = if frac.is_empty() { int.to_string() } else { format!("{int}.{frac}") };
        let value: f64 = num.parse().unwrap();
        let shift = match unit.as_bytes()[0].to_ascii_lowercase() { b'k' => 10, b'm' => 20, _ => 30 };
        let exact = value * f64::from(1u32 << shift);
        let tok = match &pools { Some(p) => format!("{p}:{num}{unit}"), None => format!("{num}{unit}") };
        let text = format!("SMTP_FORWARD=S.EXAMPLE.ORG\nSMTP_FORWARD_1=W.EXAMPLE.ORG\nSMTP_RATE_LIMIT={tok}\n");
        let r = parse_str(&text, "SITE.CFG");
        if exact.round() < 1.0 {
            prop_assert!(r.is_err(), "{tok} should be refused");
        } else {
            let c = r.map_err(|e| TestCaseError::fail(e.to_string()))?;
            let got: Vec<u64> = match &pools {
                None => c.rate_limits.overall_bps.into_iter().collect(),
                Some(p) => p.chars().map(|ch| c.rate_limits.pools[&Pool::from_char(ch).unwrap()]).collect(),
            };
            prop_assert!(!got.is_empty());
            for g in got {
                prop_assert!((g as f64 - exact).abs() <= 0.5 + exact * 1e-12, "{tok}: {g} vs {exact}");
            }
        }
    }

    #[test]
    fn no_file_text_panics(text in any::<String>()) {
        check_no_panic(&text);
    }

    #[test]
    fn no_printable_ascii_file_panics(text in "[ -~\t\r\n]{0,300}") {
        check_no_panic(&text);
    }

    #[test]
    fn no_keyword_value_panics(
        key in prop_oneof![
            Just("SMTP_FORWARD"), Just("SMTP_FORWARD_1"), Just("SMTP_RATE_LIMIT"), Just("DIST_FORWARD"),
            Just("DIST_BACKGROUND_POOL_PRIORITY"), Just("DEFAULT_LIST_POOL"), Just("DEFAULT_DIST_POOL"),
            Just("MAXBSMTP"), Just("SORT_RECIPIENTS"), Just("export SMTP_FORWARD_2"), Just("NODE"),
        ],
        value in prop_oneof![
            "[A-Za-z0-9.:*();,=\\-\"' _#\\[\\]éß€]{0,60}",
            any::<String>(),
        ],
    ) {
        check_no_panic(&format!("SMTP_FORWARD=S.EXAMPLE.ORG\nSMTP_FORWARD_1=W.EXAMPLE.ORG\n{key}={value}\n"));
        check_no_panic(&format!("{key}={value}"));
    }
}

/// Parsing returns (never panics) and every diagnostic points into the text.
fn check_no_panic(text: &str) {
    let diags = match parse_str(text, "F") {
        Ok(c) => c.warnings,
        Err(e) => {
            assert!(e.errors().count() > 0);
            e.diagnostics().to_vec()
        }
    };
    let lines: Vec<&str> = text.split('\n').collect();
    for d in diags {
        assert!(d.line >= 1 && d.column >= 1, "{d}");
        if d.line == 1 && d.column == 1 {
            continue; // whole-file findings are placed at 1:1
        }
        let line = lines
            .get(d.line - 1)
            .unwrap_or_else(|| panic!("{d}: no such line"));
        assert!(
            d.column <= line.chars().count() + 1,
            "{d}: column past the end of {line:?}"
        );
        if d.severity == Severity::Error {
            assert!(d.expected.is_some(), "{d}");
        }
    }
}
