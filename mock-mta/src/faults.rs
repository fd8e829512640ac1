//! Deterministic faults: by count, by address pattern, by clock schedule. Never random unless a
//! seed is given.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use jiff::civil::Time;
use serde::{Deserialize, Serialize};

/// A reply code given to recipients whose address matches a glob pattern (`*` and `?`,
/// case-insensitive), e.g. `*@bad.example` -> 550.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RcptRule {
    /// Glob over the whole address, e.g. `*@slow.example`.
    pub pattern: String,
    /// The reply code (e.g. 550, 451).
    pub code: u16,
    /// The reply text after the code; `{addr}` is replaced by the address. Default by code
    /// (see [`default_rcpt_text`]).
    #[serde(default)]
    pub text: Option<String>,
}

/// The default text for a recipient fault code.
pub fn default_rcpt_text(code: u16) -> &'static str {
    match code {
        450 => "4.2.1 Mailbox unavailable, try again later",
        451 => "4.2.0 Temporary failure, try again later",
        452 => "4.2.2 Mailbox full",
        550 => "5.1.1 User unknown",
        551 => "5.1.6 User not local",
        552 => "5.2.2 Mailbox full",
        553 => "5.1.3 Bad recipient address syntax",
        554 => "5.7.1 Recipient rejected",
        c if (200..300).contains(&c) => "2.1.5 {addr}",
        c if (400..500).contains(&c) => "4.0.0 Temporary failure",
        _ => "5.0.0 Permanent failure",
    }
}

/// What a schedule entry does while its window is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduledAction {
    /// Refuse connections (`down`).
    Down,
    /// Greet with 421 and close (`greet-421`).
    Greet421,
    /// Greet with 554 and accept only QUIT (`greet-554`).
    Greet554,
    /// Answer every RCPT with this code (`rcpt-451`, `rcpt-550`, ...).
    RcptCode(u16),
    /// Answer the end of data with this code (`data-451`, `data-554`, ...).
    DataCode(u16),
    /// Delay every reply by this many ms (`latency=500`).
    LatencyMs(u64),
    /// Recipients per message while open (`max-recipients=50`).
    MaxRecipients(u32),
}

/// One schedule entry, written `ACTION HH:MM-HH:MM` (local time of the injected clock;
/// `[start, end)`, an end before the start crosses midnight), e.g. `down 10:00-10:05`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleEntry {
    /// What happens.
    pub action: ScheduledAction,
    /// Window start (inclusive).
    pub start: Time,
    /// Window end (exclusive).
    pub end: Time,
}

impl ScheduleEntry {
    /// Whether the window contains local time `t`.
    pub fn is_open(&self, t: Time) -> bool {
        if self.start <= self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }
}

/// A schedule entry that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad schedule entry {0:?}: expected e.g. \"down 10:00-10:05\", \"greet-421 ...\", \"greet-554 ...\", \"rcpt-451 ...\", \"data-451 ...\", \"latency=500 ...\", \"max-recipients=50 ...\"")]
pub struct ScheduleError(pub String);

fn parse_hm(s: &str) -> Option<Time> {
    let (h, m) = s.split_once(':')?;
    let h: i8 = h.parse().ok()?;
    let m: i8 = m.parse().ok()?;
    if h == 24 && m == 0 {
        return Some(Time::MAX);
    }
    Time::new(h, m, 0, 0).ok()
}

impl FromStr for ScheduleEntry {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ScheduleError(s.to_string());
        let mut parts = s.split_whitespace();
        let action = parts.next().ok_or_else(err)?.to_ascii_lowercase();
        let window = parts.next().ok_or_else(err)?;
        if parts.next().is_some() {
            return Err(err());
        }
        let (a, b) = window.split_once('-').ok_or_else(err)?;
        let start = parse_hm(a).ok_or_else(err)?;
        let end = parse_hm(b).ok_or_else(err)?;
        let code = |prefix: &str| -> Option<u16> {
            action
                .strip_prefix(prefix)
                .and_then(|c| c.parse::<u16>().ok())
                .filter(|c| (200..600).contains(c))
        };
        let action = if action == "down" {
            ScheduledAction::Down
        } else if action == "greet-421" {
            ScheduledAction::Greet421
        } else if action == "greet-554" {
            ScheduledAction::Greet554
        } else if let Some(c) = code("rcpt-") {
            ScheduledAction::RcptCode(c)
        } else if let Some(c) = code("data-") {
            ScheduledAction::DataCode(c)
        } else if let Some(ms) = action.strip_prefix("latency=") {
            ScheduledAction::LatencyMs(ms.parse().map_err(|_| err())?)
        } else if let Some(n) = action.strip_prefix("max-recipients=") {
            ScheduledAction::MaxRecipients(n.parse().map_err(|_| err())?)
        } else {
            return Err(err());
        };
        Ok(Self { action, start, end })
    }
}

impl fmt::Display for ScheduleEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.action {
            ScheduledAction::Down => write!(f, "down")?,
            ScheduledAction::Greet421 => write!(f, "greet-421")?,
            ScheduledAction::Greet554 => write!(f, "greet-554")?,
            ScheduledAction::RcptCode(c) => write!(f, "rcpt-{c}")?,
            ScheduledAction::DataCode(c) => write!(f, "data-{c}")?,
            ScheduledAction::LatencyMs(ms) => write!(f, "latency={ms}")?,
            ScheduledAction::MaxRecipients(n) => write!(f, "max-recipients={n}")?,
        }
        let end = if self.end == Time::MAX {
            "24:00".to_string()
        } else {
            self.end.strftime("%H:%M").to_string()
        };
        write!(f, " {}-{}", self.start.strftime("%H:%M"), end)
    }
}

impl Serialize for ScheduleEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ScheduleEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Seeded random faults (only with a seed; same seed, same order of events, same faults).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RandomFaults {
    /// The PRNG seed (per session: seed mixed with the session number).
    pub seed: u64,
    /// Per mille of RCPTs answered `451 4.2.0 ...`.
    pub rcpt_451_per_mille: u32,
    /// Per mille of messages whose connection drops after the final dot, before the reply.
    pub drop_after_dot_per_mille: u32,
}

/// Deterministic faults of one mock. All off by default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Refuse connections (TCP: the listener is closed, so connects get ECONNREFUSED).
    pub refuse_connections: bool,
    /// Greet with this code instead of 220: 421 (then close) or 554 (then only QUIT).
    pub greet_code: Option<u16>,
    /// Reply codes for recipients matching patterns; the first match wins.
    pub rcpt_rules: Vec<RcptRule>,
    /// After this many accepted messages in a connection, the next MAIL gets 421 and the close.
    pub close_after_messages: Option<u32>,
    /// After this many accepted recipients in a connection, the next RCPT gets 421 and the close.
    pub close_after_recipients: Option<u32>,
    /// Drop the connection (no reply) once this many message bytes arrived in DATA.
    pub drop_mid_data_after_bytes: Option<u64>,
    /// Drop the connection after the final dot of the n-th message of a connection (1-based)
    /// without replying: the message is NOT accepted (the classic "lost 250" race).
    pub drop_after_dot_of_message: Option<u32>,
    /// Delay before answering a command, by verb (`EHLO`, `MAIL`, `RCPT`, `DATA`, `DOT` for the
    /// end of data, `QUIT`, ... or `*` for all), in ms.
    pub command_latency_ms: BTreeMap<String, u64>,
    /// How late each write of replies (one per read of pipelined commands) leaves, in ms: a delay
    /// line, as a network's latency; the session goes on reading meanwhile (see the README).
    pub reply_latency_ms: u64,
    /// Clock-scheduled outages and switches, e.g. `["down 10:00-10:05", "rcpt-451 12:00-12:30"]`.
    pub schedule: Vec<ScheduleEntry>,
    /// Seeded random faults.
    pub random: Option<RandomFaults>,
}

/// The faults in force at one moment (base faults plus open schedule windows).
#[derive(Debug, Clone, Default)]
pub(crate) struct Active {
    pub down: bool,
    pub greet_code: Option<u16>,
    pub rcpt_code: Option<u16>,
    pub data_code: Option<u16>,
    pub extra_latency_ms: u64,
    pub max_recipients: Option<u32>,
}

impl Faults {
    /// What is in force at local time `t`.
    pub(crate) fn active(&self, t: Time) -> Active {
        let mut a = Active {
            down: self.refuse_connections,
            greet_code: self.greet_code,
            ..Active::default()
        };
        for e in self.schedule.iter().filter(|e| e.is_open(t)) {
            match e.action {
                ScheduledAction::Down => a.down = true,
                ScheduledAction::Greet421 => a.greet_code = Some(421),
                ScheduledAction::Greet554 => a.greet_code = Some(554),
                ScheduledAction::RcptCode(c) => a.rcpt_code = Some(c),
                ScheduledAction::DataCode(c) => a.data_code = Some(c),
                ScheduledAction::LatencyMs(ms) => a.extra_latency_ms += ms,
                ScheduledAction::MaxRecipients(n) => a.max_recipients = Some(n),
            }
        }
        a
    }

    /// The first recipient rule matching `addr`.
    pub(crate) fn rcpt_rule(&self, addr: &str) -> Option<&RcptRule> {
        self.rcpt_rules
            .iter()
            .find(|r| glob_match(&r.pattern, addr))
    }

    /// The latency for a verb.
    pub(crate) fn command_latency(&self, verb: &str) -> u64 {
        self.command_latency_ms
            .get(verb)
            .or_else(|| self.command_latency_ms.get("*"))
            .copied()
            .unwrap_or(0)
    }
}

/// Case-insensitive glob: `*` matches any run, `?` one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().flat_map(char::to_lowercase).collect();
    let t: Vec<char> = text.chars().flat_map(char::to_lowercase).collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if *c == '?' || *c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// A tiny seeded PRNG (SplitMix64): deterministic, no dependency.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u32) -> bool {
        per_mille > 0 && (self.next_u64() % 1000) < u64::from(per_mille)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::time;
    use proptest::prelude::*;

    #[test]
    fn globs() {
        assert!(glob_match("*@bad.example", "joe@BAD.example"));
        assert!(!glob_match("*@bad.example", "joe@bad.example.org"));
        assert!(glob_match("a?c*", "abcdef"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("?", ""));
        assert!(glob_match("*x*y*", "..x..y.."));
    }

    #[test]
    fn schedule_parses_and_windows() {
        let e: ScheduleEntry = "down 10:00-10:05".parse().expect("parses");
        assert_eq!(e.action, ScheduledAction::Down);
        assert!(e.is_open(time(10, 0, 0, 0)));
        assert!(e.is_open(time(10, 4, 59, 0)));
        assert!(!e.is_open(time(10, 5, 0, 0)));
        assert!(!e.is_open(time(9, 59, 59, 0)));
        let night: ScheduleEntry = "rcpt-451 23:00-01:00".parse().expect("parses");
        assert_eq!(night.action, ScheduledAction::RcptCode(451));
        assert!(night.is_open(time(23, 30, 0, 0)));
        assert!(night.is_open(time(0, 30, 0, 0)));
        assert!(!night.is_open(time(1, 0, 0, 0)));
        assert_eq!(night.to_string(), "rcpt-451 23:00-01:00");
        assert!("up 10:00-11:00".parse::<ScheduleEntry>().is_err());
        assert!("down 10:00".parse::<ScheduleEntry>().is_err());
        assert!("down 25:00-26:00".parse::<ScheduleEntry>().is_err());
        let l: ScheduleEntry = "latency=250 00:00-24:00".parse().expect("parses");
        assert!(l.is_open(time(23, 59, 59, 0)));
    }

    proptest! {
        #[test]
        fn star_matches_everything(s in ".*") {
            prop_assert!(glob_match("*", &s));
        }
        #[test]
        fn literal_matches_itself(s in "[a-z@.]{0,20}") {
            prop_assert!(glob_match(&s, &s));
            let with_suffix = format!("{s}x");
            prop_assert!(!glob_match(&s, &with_suffix));
        }
        #[test]
        fn prefix_star(a in "[a-z]{0,8}", b in "[a-z@.]{0,8}") {
            let pattern = format!("{a}*");
            let text = format!("{a}{b}");
            prop_assert!(glob_match(&pattern, &text));
        }
    }
}
