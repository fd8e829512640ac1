//! The smtpw conformance suite (issue 6): scenarios that prove the documented rules, each run on
//! paused time over in-memory connections and, where it makes sense, in real time with the
//! binaries users run. `cargo test -p conformance` runs them; `cargo xtask conformance` runs them
//! and writes `target/conformance/report.{md,html}`.
//!
//! Engine scenarios (modules in [`scenarios`]; topologies from `smtpw_testkit::topology`, the
//! real-time sites in [`site`]):
//!
//! | scenario | modes | what it proves |
//! |---|---|---|
//! | `windows-day-delivery` | virtual | EX-6, EX-7 and windows across midnight, delivering a job per worker per hour over a virtual day; every copy on the host `route::explain` gives at its minute, as soon as its worker is active |
//! | `workers-2a-1b` | both | `2*A` + `B`: copies 2:1 (±0.07 of the 2/3 share), exactly 3 connections, never more |
//! | `workers-10x-port` | virtual | `10*H:50025`: 10 connections, all to port 50025 |
//! | `maxbsmtp-chunking` | both | 1000/1000/500 transactions; IIS 100-recipient limit with 552 and 452: everybody once, 25 transactions; SORT_RECIPIENTS=1 groups domains |
//! | `failover` | both | refused primary -> failover; primary back -> primary; no failover -> SMTP_FORWARD once the grace period ends (within a poll) |
//! | `replies` | both | 550 failed with the reply, 451 retried or still queued, 421 and a drop mid-DATA: delivered + failed + queued = submitted |
//! | `pools` | both | an urgent pool with its own worker is not delayed by a bulk backlog; an unserved pool goes through SMTP_FORWARD |
//! | `rate-limits` | virtual | EX-16: achieved rate per pool and overall within 2% of the limits over a minute |

pub mod report;
pub mod runner;
pub mod scenarios;
pub mod site;
pub mod svg;
