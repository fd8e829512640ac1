//! The `smtpw` binary as users run it, one test binary: every test that runs the binary.
//! `cargo test -p smtpw --test it MODULE::` runs one module's tests (e.g. `edge::` for the edge
//! suite; add `-- --nocapture` for its figures).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use smtpw_testkit::proc::Smtpw;

/// The binary under test (its path exists only in this package's test crates).
pub const SMTPW: Smtpw = Smtpw::new(env!("CARGO_BIN_EXE_smtpw"));

mod admin;
mod cli_edges;
mod cluster_pg;
mod config_cli;
mod config_limits;
mod ctl;
mod edge;
mod engine_cli;
mod engine_crash;
mod incoming_cli;
mod ingest_edges;
mod listen_cli;
mod listen_crash;
mod pools_report;
mod reload;
mod sendmail_cli;
mod service;
mod spool_cli;
mod spool_damage;
mod spool_emptiness;
mod spool_full;
mod spool_settings;
