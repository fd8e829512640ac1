//! Which host a worker uses at a local time of day (WRK-4, WRK-5): a pure function of
//! the worker's configuration and the time. Inside any window (or with no windows) the primary;
//! outside, the failover if there is one, otherwise the worker is inactive. The engine itself
//! adds the "primary unreachable -> failover" switch (WRK-6).

use serde::Serialize;

use crate::config::{HostPort, SiteConfig, TimeOfDay, WorkerSpec};

/// How a worker is routed at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// Inside its open-time window (or open all day): the primary host.
    Primary,
    /// Outside its window, with a failover host.
    Failover,
    /// Outside its window and without a failover host: the worker claims no files.
    Inactive,
}

/// The host a worker uses at a moment; `target` is `None` exactly when `via` is `Inactive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'a> {
    /// How the worker reaches its host now.
    pub via: Via,
    /// The host it uses now.
    pub target: Option<&'a HostPort>,
}

/// Whether `t` falls in the worker's open time (always, when it has no windows).
pub fn is_open(w: &WorkerSpec, t: TimeOfDay) -> bool {
    w.windows.is_empty() || w.windows.iter().any(|win| win.contains(t))
}

/// The route of worker `w` at local time `t`.
pub fn route(w: &WorkerSpec, t: TimeOfDay) -> Route<'_> {
    if is_open(w, t) {
        Route {
            via: Via::Primary,
            target: Some(&w.primary),
        }
    } else if let Some(f) = &w.failover {
        Route {
            via: Via::Failover,
            target: Some(f),
        }
    } else {
        Route {
            via: Via::Inactive,
            target: None,
        }
    }
}

/// One row of `smtpw config explain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explained {
    /// The worker's id.
    pub id: u32,
    /// How the worker reaches its host at that time.
    pub via: Via,
    /// The host it uses then, if any.
    pub host: Option<String>,
    /// That host's port, if any.
    pub port: Option<u16>,
    /// Why, in words.
    pub reason: String,
}

/// Every worker's route at `t`, with the reason.
pub fn explain(cfg: &SiteConfig, t: TimeOfDay) -> Vec<Explained> {
    cfg.workers
        .iter()
        .map(|w| {
            let r = route(w, t);
            let windows = || {
                w.windows
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let reason = match r.via {
                Via::Primary if w.windows.is_empty() => "open all day".to_string(),
                Via::Primary => format!("{t} is inside its window {}", windows()),
                Via::Failover => format!("{t} is outside its window {}", windows()),
                Via::Inactive => {
                    format!(
                        "{t} is outside its window {} and it has no failover",
                        windows()
                    )
                }
            };
            Explained {
                id: w.id,
                via: r.via,
                host: r.target.map(|h| h.host.clone()),
                port: r.target.map(|h| h.port),
                reason,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PoolSet, Window};
    use proptest::prelude::*;

    fn tod(h: u8, m: u8) -> TimeOfDay {
        TimeOfDay::new(h, m).unwrap()
    }

    fn worker(windows: Vec<Window>, failover: bool) -> WorkerSpec {
        WorkerSpec {
            id: 1,
            source_n: 1,
            primary: HostPort::new("P.EXAMPLE.ORG", 25),
            failover: failover.then(|| HostPort::new("F.EXAMPLE.ORG", 2525)),
            windows,
            pools: PoolSet::ALL,
        }
    }

    #[test]
    fn spec_cases_6_and_7() {
        // #6: UNIXSERVER during 00:00-05:00, SMTP.BAZ.NET at all other times.
        let w = worker(
            vec![Window {
                start: tod(0, 0),
                end: tod(5, 0),
            }],
            true,
        );
        assert_eq!(route(&w, tod(0, 0)).via, Via::Primary);
        assert_eq!(route(&w, tod(4, 59)).via, Via::Primary);
        assert_eq!(route(&w, tod(5, 0)).via, Via::Failover);
        assert_eq!(route(&w, tod(5, 0)).target.unwrap().host, "F.EXAMPLE.ORG");
        assert_eq!(route(&w, tod(23, 59)).via, Via::Failover);
        // #7: active only 10:00-14:00, no failover.
        let w = worker(
            vec![Window {
                start: tod(10, 0),
                end: tod(14, 0),
            }],
            false,
        );
        assert_eq!(route(&w, tod(9, 59)).via, Via::Inactive);
        assert_eq!(route(&w, tod(9, 59)).target, None);
        assert_eq!(route(&w, tod(10, 0)).via, Via::Primary);
        assert_eq!(route(&w, tod(14, 0)).via, Via::Inactive);
    }

    #[test]
    fn crossing_midnight_and_whole_day() {
        let w = worker(
            vec![Window {
                start: tod(22, 0),
                end: tod(2, 0),
            }],
            false,
        );
        assert!(is_open(&w, tod(23, 0)));
        assert!(is_open(&w, tod(1, 59)));
        assert!(!is_open(&w, tod(2, 0)));
        assert!(!is_open(&w, tod(21, 59)));
        let w = worker(
            vec![Window {
                start: tod(7, 0),
                end: tod(7, 0),
            }],
            false,
        );
        assert!((0..1440u16).all(|m| is_open(&w, tod((m / 60) as u8, (m % 60) as u8))));
    }

    fn arb_window() -> impl Strategy<Value = Window> {
        (0u16..1440, 0u16..1440).prop_map(|(a, b)| Window {
            start: tod((a / 60) as u8, (a % 60) as u8),
            end: tod((b / 60) as u8, (b % 60) as u8),
        })
    }

    proptest! {
        /// The route agrees with a brute-force reading of the windows: minute m is open when
        /// some window, walked minute by minute from its start, reaches m before its end.
        #[test]
        fn route_matches_brute_force(ws in proptest::collection::vec(arb_window(), 0..4),
                                     failover in any::<bool>(), m in 0u16..1440) {
            let w = worker(ws.clone(), failover);
            let t = tod((m / 60) as u8, (m % 60) as u8);
            let open = ws.is_empty() || ws.iter().any(|win| {
                let (s, e) = (win.start.minutes(), win.end.minutes());
                let len = if e == s { 1440 } else { (e + 1440 - s) % 1440 };
                (0..len).any(|k| (s + k) % 1440 == m)
            });
            let r = route(&w, t);
            prop_assert_eq!(is_open(&w, t), open);
            let expected = match (open, failover) {
                (true, _) => Via::Primary,
                (false, true) => Via::Failover,
                (false, false) => Via::Inactive,
            };
            prop_assert_eq!(r.via, expected);
            prop_assert_eq!(r.target.is_none(), expected == Via::Inactive);
            if expected == Via::Primary {
                prop_assert_eq!(r.target, Some(&w.primary));
            }
        }
    }
}
