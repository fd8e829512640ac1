//! The engine's integration tests, one test binary (`cargo test -p smtpw-engine --test it
//! MODULE::` runs one module). The tests that run the `smtpw` binary are the CLI's (cli/tests);
//! the SMTP client's are in `smtp_client.rs`. Fixtures come from `smtpw-testkit`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

mod config_errors;
mod config_forms;
mod config_prop;
mod config_spec;
mod engine_delivery;
mod engine_expiry;
mod engine_load;
mod engine_overlap;
mod engine_replies;
mod engine_routing;
mod engine_stop;
mod fuzz_regressions;
mod ingest_edges;
mod job_format;
mod listen_edges;
mod pools_urgent;
mod rate_accuracy;
mod rate_loopback;
mod relay_real_peers;
mod relay_tls;
mod spool_chunk;
mod spool_crash;
mod spool_full;
mod spool_million;
mod spool_queue;
