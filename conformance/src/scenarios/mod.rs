//! Every scenario of the suite, in report order.
//!
//! To add one: write `async fn my_case(ctx: Ctx) -> ScenarioResult` in a module here (branch on
//! `ctx.mode()`: paused time and in-memory connections, or the binaries over loopback), and add
//! `Scenario::new("my-case", BOTH, my_case)` (with `.needs(&[Bin::Smtpw, Bin::MockMta])` when the
//! real-time run starts processes) to [`all`].

pub mod chunking;
pub mod config;
pub mod dayrun;
pub mod failover;
pub mod pipelining;
pub mod pools;
pub mod rates;
pub mod replies;
pub mod smtputf8;
pub mod tls;
pub mod windows;
pub mod workers;

use crate::runner::Scenario;

/// The whole suite.
pub fn all() -> Vec<Scenario> {
    let mut v = config::scenarios();
    v.push(windows::scenario());
    v.push(dayrun::scenario());
    v.extend(workers::scenarios());
    v.push(chunking::scenario());
    v.push(pipelining::scenario());
    v.push(failover::scenario());
    v.push(replies::scenario());
    v.push(pools::scenario());
    v.push(rates::scenario());
    v.push(tls::scenario());
    v.push(smtputf8::scenario());
    v
}
