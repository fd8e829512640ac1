//! The fixtures of smtpw's tests, conformance suite and benches, each in one place.
//!
//! | module | what |
//! |---|---|
//! | [`topology`] | a SITE.CFG, in-process mocks behind a `MemoryConnector`, a spool, a virtual clock and the engine on the test's runtime |
//! | [`workload`] | messages, recipients and BSMTP job streams; a seeded pseudo-random sequence |
//! | [`postgres`] | a private PostgreSQL server (or the one `SMTPW_TEST_DATABASE_URL` names), one database per test |
//! | [`proc`] | the real binaries as processes: the `smtpw` commands, children killed on drop, bounded waits, free ports, a mock-mta on loopback or as a process |
//! | [`site`] | one spool driven through the `smtpw` binary as an operator would |
//! | [`scripted`] | a scripted SMTP relay (in memory or on loopback) that records what it got |
//! | [`hostile`] | a relay that misbehaves at one point of a session |
//! | [`ledger`] | the ledger read strictly or leniently; the tally of an edge case |
//! | [`rate`] | achieved rates at the mocks over sliding windows |
//! | [`tmpfs`] | a small file system that really fills up |
//! | [`logs`] | `tracing` output captured for assertions |
//! | [`postfix`] | a private Postfix instance with TLS on a loopback port (a real peer) |
//! | [`assert`] | exactly-once delivery, saying what is missing, repeated or unexpected |
//!
//! Fixture errors (a bad test SITE.CFG, a port that cannot be bound) panic with what went wrong:
//! a test fails by panicking, and the conformance runner reports a panic as a failure with its
//! place. Outcomes under test that the conformance suite reports (an engine that does not empty
//! its queue in time, a condition that never holds, a delivery that is not exactly once) are
//! [`Failure`]s.
//!
//! The `smtpw` binary exists only for the tests of the package that builds it: its path comes
//! from that test crate (`env!("CARGO_BIN_EXE_smtpw")`) into [`proc::Smtpw`].

#![allow(clippy::unwrap_used, clippy::expect_used)] // test fixtures: a failed unwrap is a failed test

use std::fmt;

pub mod admin;
pub mod assert;
pub mod hostile;
pub mod ledger;
pub mod logs;
pub mod postfix;
pub mod postfix_master;
pub mod postgres;
pub mod proc;
pub mod rate;
pub mod scripted;
pub mod site;
pub mod tmpfs;
pub mod topology;
pub mod workload;

/// Why a check failed: what was expected and what happened, both concrete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub expected: String,
    pub got: String,
}

impl Failure {
    pub fn new(expected: impl Into<String>, got: impl Into<String>) -> Self {
        Self {
            expected: expected.into(),
            got: got.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "expected: {}\n     got: {}", self.expected, self.got)
    }
}

impl std::error::Error for Failure {}

/// The value, or a panic with the failure (for tests, which fail by panicking).
pub fn or_panic<T>(r: Result<T, Failure>) -> T {
    match r {
        Ok(v) => v,
        Err(f) => panic!("{f}"),
    }
}
