//! mock-mta's integration tests, one test binary (`cargo test -p mock-mta --test it MODULE::`
//! runs one module).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

mod common;

mod clients;
mod faults;
mod fuzz_regressions;
mod limits;
mod load;
mod long_lines;
mod w3c_and_binary;
