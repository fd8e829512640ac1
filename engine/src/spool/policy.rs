//! The completion policy: what one attempt of a copy means for each of its recipients. Pure: the
//! spool's writer thread asks [`decide`], then records what it says (ledger lines, SQL), and
//! decides nothing itself.
//!
//! The rule (QUEUE-4), per recipient, from the outcome the transaction reported:
//! - delivered: done;
//! - failed (a 5yz): done, failed;
//! - deferred (a 4yz, a lost connection, an unreachable relay): tried again after the back-off
//!   ([`SpoolOptions::backoff`] of the copy's earlier attempts: `retry_base` doubling up to
//!   `retry_max`), unless the job has outlived its lifetime ([`SpoolOptions::expired`]): then it
//!   fails with its last reply, marked expired.
//!
//! Every attempt counts, whatever its outcomes: the ledger's `attempts` is the copy's earlier
//! attempts plus this one.

use jiff::Timestamp;

use super::{Outcome, RcptOutcome, SpoolOptions};

/// One attempt of a copy, as the writer knows it when the outcomes come in.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// Each recipient's outcome and the reply that decided it, in the copy's order.
    pub outcomes: &'a [RcptOutcome],
    /// Earlier attempts of the copy (each one that left recipients deferred).
    pub previous_attempts: u32,
    /// When the copy's job was ingested.
    pub job_created: Timestamp,
    /// When the outcomes were reported.
    pub now: Timestamp,
}

/// What becomes of one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fate {
    /// Done: the relay took it.
    Delivered,
    /// Done: permanently refused.
    Failed,
    /// Done: deferred once more, but the job has outlived its lifetime, so it fails with its
    /// last reply.
    Expired,
    /// Tried again, not before `retry_at`.
    Deferred {
        /// The attempt time plus the back-off.
        retry_at: Timestamp,
    },
}

impl Fate {
    /// The outcome recorded for it (in the ledger and the spool's counters).
    pub fn outcome(self) -> Outcome {
        match self {
            Fate::Delivered => Outcome::Delivered,
            Fate::Failed | Fate::Expired => Outcome::Failed,
            Fate::Deferred { .. } => Outcome::Deferred,
        }
    }

    /// Whether it failed because the job outlived its lifetime (the ledger's `expired`).
    pub fn is_expired(self) -> bool {
        self == Fate::Expired
    }

    /// When it is tried again (the ledger's `retry_at`): only a deferred recipient is.
    pub fn retry_at(self) -> Option<Timestamp> {
        match self {
            Fate::Deferred { retry_at } => Some(retry_at),
            _ => None,
        }
    }
}

/// The decision for one attempt of a copy: the fields every ledger line of the attempt shares,
/// and (through [`Decision::recipients`]) each recipient's fate, in the copy's order.
#[derive(Debug, Clone, Copy)]
pub struct Decision<'a> {
    /// When the outcomes were reported (the ledger's `time`).
    pub time: Timestamp,
    /// Attempts of the copy, this one included (the ledger's `attempts`).
    pub attempts: u32,
    /// Whether the job has outlived its lifetime: its deferred recipients fail.
    pub expired: bool,
    /// When the copy is next tried: `Some` exactly when a recipient is deferred.
    pub next_attempt: Option<Timestamp>,
    retry_at: Timestamp,
    outcomes: &'a [RcptOutcome],
}

/// One recipient's part of a [`Decision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RcptDecision<'a> {
    pub fate: Fate,
    /// The reply that decided it (the ledger's `reply`).
    pub reply: &'a str,
}

impl<'a> Decision<'a> {
    /// The fate of a recipient with this outcome.
    pub fn fate(&self, outcome: Outcome) -> Fate {
        match outcome {
            Outcome::Delivered => Fate::Delivered,
            Outcome::Failed => Fate::Failed,
            Outcome::Deferred if self.expired => Fate::Expired,
            Outcome::Deferred => Fate::Deferred {
                retry_at: self.retry_at,
            },
        }
    }

    /// The ledger line of `rcpt` (whose part of the decision is `r`) in copy `copy` of job `job`,
    /// pool `pool`, sent through the relay and TLS version `result` names: what both spools
    /// write.
    pub fn ledger_line<'b>(
        &self,
        r: RcptDecision<'b>,
        rcpt: &'b str,
        (job, copy, pool): (i64, i64, &'b str),
        result: &'b super::CopyResult,
    ) -> crate::ledger::LedgerLineRef<'b> {
        crate::ledger::LedgerLineRef {
            time: self.time,
            job,
            copy,
            pool,
            rcpt,
            outcome: r.fate.outcome(),
            relay: result.relay.as_deref(),
            tls: result.tls,
            reply: r.reply,
            attempts: self.attempts,
            retry_at: r.fate.retry_at(),
            expired: r.fate.is_expired(),
        }
    }

    /// Each recipient's fate and reply, one per outcome of the attempt, in order.
    pub fn recipients(&self) -> impl ExactSizeIterator<Item = RcptDecision<'a>> + '_ {
        self.outcomes.iter().map(|o| RcptDecision {
            fate: self.fate(o.outcome),
            reply: &o.reply,
        })
    }
}

/// Decide what an attempt means (see the module's documentation for the rule).
pub fn decide<'a>(opts: &SpoolOptions, attempt: Attempt<'a>) -> Decision<'a> {
    let now = attempt.now;
    let expired = opts.expired(attempt.job_created, now);
    // Past the largest time jiff can hold the retry is now: the copy is not held back forever.
    let retry_at = now
        .checked_add(opts.backoff(attempt.previous_attempts))
        .unwrap_or(now);
    let deferred = !expired
        && attempt
            .outcomes
            .iter()
            .any(|o| o.outcome == Outcome::Deferred);
    Decision {
        time: now,
        attempts: attempt.previous_attempts.saturating_add(1),
        expired,
        next_attempt: deferred.then_some(retry_at),
        retry_at,
        outcomes: attempt.outcomes,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jiff::SignedDuration;
    use proptest::prelude::*;

    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn rcpt(outcome: Outcome, reply: &str) -> RcptOutcome {
        RcptOutcome {
            outcome,
            reply: reply.to_string(),
        }
    }

    fn opts() -> SpoolOptions {
        SpoolOptions {
            retry_base: Duration::from_secs(30),
            retry_max: Duration::from_secs(15 * 60),
            lifetime: Duration::from_secs(24 * 3600),
            ..SpoolOptions::default()
        }
    }

    fn fates(d: &Decision<'_>) -> Vec<Fate> {
        d.recipients().map(|r| r.fate).collect()
    }

    #[test]
    fn a_fresh_copy_defers_by_the_first_back_off() {
        let outcomes = [
            rcpt(Outcome::Delivered, "250 ok"),
            rcpt(Outcome::Deferred, "451 later"),
            rcpt(Outcome::Failed, "550 no"),
        ];
        let now = t("2026-11-22T07:30:00.123Z");
        let d = decide(
            &opts(),
            Attempt {
                outcomes: &outcomes,
                previous_attempts: 0,
                job_created: t("2026-11-22T07:00:00Z"),
                now,
            },
        );
        let retry_at = t("2026-11-22T07:30:30.123Z");
        assert_eq!(
            fates(&d),
            vec![Fate::Delivered, Fate::Deferred { retry_at }, Fate::Failed]
        );
        assert_eq!(d.time, now);
        assert_eq!(d.attempts, 1);
        assert!(!d.expired);
        assert_eq!(d.next_attempt, Some(retry_at));
        let replies: Vec<&str> = d.recipients().map(|r| r.reply).collect();
        assert_eq!(replies, ["250 ok", "451 later", "550 no"]);
    }

    #[test]
    fn later_attempts_wait_longer_up_to_the_cap() {
        let outcomes = [rcpt(Outcome::Deferred, "451 later")];
        let now = t("2026-11-22T07:30:00Z");
        let next = |previous_attempts| {
            decide(
                &opts(),
                Attempt {
                    outcomes: &outcomes,
                    previous_attempts,
                    job_created: now,
                    now,
                },
            )
            .next_attempt
            .map(|r| r.duration_since(now))
        };
        let secs = |s| Some(SignedDuration::from_secs(s));
        assert_eq!(next(1), secs(60));
        assert_eq!(next(4), secs(480));
        assert_eq!(next(5), secs(900));
        assert_eq!(next(u32::MAX), secs(900));
    }

    #[test]
    fn past_the_lifetime_deferred_recipients_fail_expired_and_nothing_is_retried() {
        let outcomes = [
            rcpt(Outcome::Deferred, "421 unreachable"),
            rcpt(Outcome::Delivered, "250 ok"),
            rcpt(Outcome::Failed, "550 no"),
        ];
        let created = t("2026-11-22T07:30:00Z");
        let decide_at = |now| {
            decide(
                &opts(),
                Attempt {
                    outcomes: &outcomes,
                    previous_attempts: 6,
                    job_created: created,
                    now,
                },
            )
        };
        // Exactly the lifetime: not yet past it.
        let at_limit = decide_at(t("2026-11-23T07:30:00Z"));
        assert!(!at_limit.expired);
        assert!(matches!(fates(&at_limit)[0], Fate::Deferred { .. }));
        let past = decide_at(t("2026-11-23T07:30:00.001Z"));
        assert!(past.expired);
        assert_eq!(
            fates(&past),
            vec![Fate::Expired, Fate::Delivered, Fate::Failed]
        );
        assert_eq!(past.next_attempt, None);
        assert_eq!(past.attempts, 7);
        // A 5yz is a plain failure even then: only deferrals expire.
        assert!(!fates(&past)[2].is_expired());
    }

    #[test]
    fn fates_map_to_the_recorded_fields() {
        let retry_at = t("2026-11-22T07:30:30Z");
        let rows = [
            (Fate::Delivered, Outcome::Delivered, false, None),
            (Fate::Failed, Outcome::Failed, false, None),
            (Fate::Expired, Outcome::Failed, true, None),
            (
                Fate::Deferred { retry_at },
                Outcome::Deferred,
                false,
                Some(retry_at),
            ),
        ];
        for (fate, outcome, expired, retry) in rows {
            assert_eq!(fate.outcome(), outcome, "{fate:?}");
            assert_eq!(fate.is_expired(), expired, "{fate:?}");
            assert_eq!(fate.retry_at(), retry, "{fate:?}");
        }
    }

    #[test]
    fn a_copy_with_no_recipient_deferred_has_no_next_attempt() {
        let outcomes = [
            rcpt(Outcome::Delivered, "250 ok"),
            rcpt(Outcome::Failed, "550 no"),
        ];
        let now = t("2026-11-22T07:30:00Z");
        let d = decide(
            &opts(),
            Attempt {
                outcomes: &outcomes,
                previous_attempts: 2,
                job_created: now,
                now,
            },
        );
        assert_eq!(d.next_attempt, None);
        assert_eq!(d.attempts, 3);
        assert!(d.recipients().all(|r| r.fate.retry_at().is_none()));
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            Just(Outcome::Delivered),
            Just(Outcome::Failed),
            Just(Outcome::Deferred),
        ]
    }

    proptest! {
        #[test]
        fn every_recipient_gets_exactly_one_consistent_fate(
            kinds in proptest::collection::vec(outcome(), 0..40),
            previous_attempts in prop_oneof![0u32..40, Just(u32::MAX)],
            age_ms in 0i64..20 * 24 * 3600 * 1000,
            base_s in 1u64..120,
            cap_s in 1u64..7200,
            lifetime_s in 0u64..10 * 24 * 3600,
        ) {
            let opts = SpoolOptions {
                retry_base: Duration::from_secs(base_s),
                retry_max: Duration::from_secs(cap_s),
                lifetime: Duration::from_secs(lifetime_s),
                ..SpoolOptions::default()
            };
            let outcomes: Vec<RcptOutcome> = kinds
                .iter()
                .enumerate()
                .map(|(i, k)| rcpt(*k, &format!("reply {i}")))
                .collect();
            let created = t("2026-11-22T07:30:00Z");
            let now = created.checked_add(SignedDuration::from_millis(age_ms)).unwrap();
            let d = decide(&opts, Attempt { outcomes: &outcomes, previous_attempts, job_created: created, now });

            // One decision per recipient, in order, each with its own reply.
            let rs: Vec<RcptDecision<'_>> = d.recipients().collect();
            prop_assert_eq!(rs.len(), outcomes.len());
            for (r, o) in rs.iter().zip(&outcomes) {
                prop_assert_eq!(r.reply, o.reply.as_str());
            }

            // Expired exactly when the job is older than its lifetime.
            let lifetime_ms = i64::try_from(lifetime_s * 1000).unwrap();
            prop_assert_eq!(d.expired, age_ms > lifetime_ms);

            // The back-off: the base doubled per earlier attempt, never beyond the cap.
            let expect = (0..previous_attempts.min(64))
                .try_fold(base_s, |b, _| b.checked_mul(2).filter(|b| *b < cap_s))
                .map_or(cap_s, |b| b.min(cap_s));
            let retry = now.checked_add(SignedDuration::from_secs(i64::try_from(expect).unwrap())).unwrap();

            prop_assert_eq!(d.attempts, previous_attempts.saturating_add(1));
            prop_assert_eq!(d.time, now);
            for (r, o) in rs.iter().zip(&outcomes) {
                // The outcome recorded is the transaction's, except that an expired deferral
                // fails; only deferred recipients get a retry time.
                let want = match (o.outcome, d.expired) {
                    (Outcome::Delivered, _) => Fate::Delivered,
                    (Outcome::Failed, _) => Fate::Failed,
                    (Outcome::Deferred, true) => Fate::Expired,
                    (Outcome::Deferred, false) => Fate::Deferred { retry_at: retry },
                };
                prop_assert_eq!(r.fate, want);
                if matches!(o.outcome, Outcome::Delivered | Outcome::Failed) {
                    prop_assert_eq!(r.fate.retry_at(), None);
                    prop_assert!(!r.fate.is_expired());
                }
            }
            // The copy is tried again exactly when a recipient is deferred, at their time.
            let any_deferred = rs.iter().any(|r| matches!(r.fate, Fate::Deferred { .. }));
            prop_assert_eq!(d.next_attempt.is_some(), any_deferred);
            if any_deferred {
                prop_assert_eq!(d.next_attempt, Some(retry));
            }
        }
    }
}
