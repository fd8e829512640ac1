//! The smtpw conformance suite (issue 6): scenarios that prove the documented rules, each run on
//! paused time over in-memory connections and, where it makes sense, in real time with the
//! binaries users run. `cargo test -p conformance` runs them; `cargo xtask conformance` runs them
//! and writes `target/conformance/report.{md,html}`.

pub mod report;
pub mod runner;
pub mod scenarios;
pub mod svg;
pub mod topology;
