//! One log line per condition, not one per attempt. Something retried every 200 ms (an ingest
//! pass, a status write) that keeps failing the same way is said when it starts, again at most
//! every `repeat` while it lasts (with how long and how many times), and once when it ends.
//! Pure policy: the caller passes the time and logs what [`ConditionLog`] returns.

use std::time::Duration;

use tokio::time::Instant;

/// How often a lasting condition is repeated by default.
pub const REPEAT_EVERY: Duration = Duration::from_secs(10 * 60);

/// The state of one condition (one thing retried).
#[derive(Debug)]
pub struct ConditionLog {
    repeat: Duration,
    failing: Option<Failing>,
}

#[derive(Debug)]
struct Failing {
    message: String,
    since: Instant,
    last_said: Instant,
    times: u64,
}

/// What to log now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The condition began, or the failure changed to another one.
    Began { message: String },
    /// Still the same failure, `repeat` after it was last said.
    Lasts {
        message: String,
        lasted: Duration,
        times: u64,
    },
    /// It works again after failing `times` times for `lasted`.
    Ended { lasted: Duration, times: u64 },
}

impl ConditionLog {
    pub fn new(repeat: Duration) -> Self {
        Self {
            repeat,
            failing: None,
        }
    }

    /// An attempt failed with `message`.
    pub fn failed(&mut self, message: impl Into<String>, now: Instant) -> Option<Notice> {
        let message = message.into();
        match &mut self.failing {
            Some(f) if f.message == message => {
                f.times += 1;
                if now.saturating_duration_since(f.last_said) < self.repeat {
                    return None;
                }
                f.last_said = now;
                Some(Notice::Lasts {
                    message,
                    lasted: now.saturating_duration_since(f.since),
                    times: f.times,
                })
            }
            _ => {
                self.failing = Some(Failing {
                    message: message.clone(),
                    since: now,
                    last_said: now,
                    times: 1,
                });
                Some(Notice::Began { message })
            }
        }
    }

    /// An attempt succeeded.
    pub fn succeeded(&mut self, now: Instant) -> Option<Notice> {
        let f = self.failing.take()?;
        Some(Notice::Ended {
            lasted: now.saturating_duration_since(f.since),
            times: f.times,
        })
    }

    /// True while failing (what the tests observe; the engine only acts on notices).
    #[cfg(test)]
    pub fn is_failing(&self) -> bool {
        self.failing.is_some()
    }
}

impl Default for ConditionLog {
    fn default() -> Self {
        Self::new(REPEAT_EVERY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn says_the_start_the_repeats_and_the_end() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_millis(s);
        let mut c = ConditionLog::new(Duration::from_secs(600));
        assert_eq!(c.succeeded(at(0)), None);
        assert_eq!(
            c.failed("disk full", at(0)),
            Some(Notice::Began {
                message: "disk full".into()
            })
        );
        // Every 200 ms for 10 minutes: silent.
        for k in 1..3000 {
            assert_eq!(c.failed("disk full", at(200 * k)), None);
        }
        assert_eq!(
            c.failed("disk full", at(600_000)),
            Some(Notice::Lasts {
                message: "disk full".into(),
                lasted: Duration::from_secs(600),
                times: 3001
            })
        );
        // Another failure is another condition.
        assert!(matches!(
            c.failed("no such directory", at(600_200)),
            Some(Notice::Began { .. })
        ));
        assert_eq!(
            c.succeeded(at(601_000)),
            Some(Notice::Ended {
                lasted: Duration::from_millis(800),
                times: 1
            })
        );
        assert_eq!(c.succeeded(at(601_200)), None);
    }

    proptest! {
        /// However attempts go, the notices are bounded: at most one per change of condition
        /// (start, other message, end) plus one per `repeat` of time while failing.
        #[test]
        fn notices_are_bounded_by_changes_and_time(
            steps in proptest::collection::vec((0u64..2000, proptest::option::of(0u8..3)), 1..400)
        ) {
            let repeat = Duration::from_secs(60);
            let t0 = Instant::now();
            let mut now = t0;
            let mut c = ConditionLog::new(repeat);
            let (mut notices, mut changes) = (0u64, 0u64);
            let mut prev: Option<Option<u8>> = None;
            for (dt, outcome) in steps {
                now += Duration::from_millis(dt * 100);
                if prev != Some(outcome) {
                    changes += 1;
                }
                prev = Some(outcome);
                let n = match outcome {
                    Some(m) => c.failed(format!("error {m}"), now),
                    None => c.succeeded(now),
                };
                notices += u64::from(n.is_some());
                prop_assert_eq!(c.is_failing(), outcome.is_some());
            }
            let elapsed = now.saturating_duration_since(t0);
            let bound = changes + elapsed.as_secs() / repeat.as_secs() + 1;
            prop_assert!(notices <= bound, "{} notices, bound {}", notices, bound);
        }
    }
}
