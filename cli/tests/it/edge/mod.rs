//! The edge suite (issue 10): the promise "every recipient delivered, failed or queued, and never
//! silently repeated" at the first edges of a real deployment, driven through the `smtpw` binary
//! as an operator (or a hostile relay) would. Each case asserts delivered + failed + queued =
//! submitted (in the spool, `smtpw queue --json`, and in the ledger) and prints its figures,
//! repeats included: `cargo test -p smtpw --test it edge:: -- --nocapture`. The cases run one at
//! a time and each takes seconds.
//!
//! Cases (module, test) and the issue 10 items they depend on:
//!
//! | case | test | items |
//! |---|---|---|
//! | full disk | `full_disk::delivery_while_the_disk_fills_and_after_space_returns` (root: a tmpfs spool) | 1 (and 2 for `--until-empty`) |
//! | hostile relays | `hostile_relays::relay_silent_after_greeting` | 6 (`--drain-timeout`) |
//! |  | `hostile_relays::relay_silent_mid_transaction` | 6 |
//! |  | `hostile_relays::relay_silent_after_data` | 6 |
//! |  | `hostile_relays::relay_drips_one_byte_at_a_time` | 6 |
//! |  | `hostile_relays::relay_sends_garbage` | 6 |
//! |  | `hostile_relays::relay_sends_an_oversized_reply` | 6 |
//! |  | `hostile_relays::relay_sends_a_reply_line_that_never_ends` | 6 |
//! |  | `hostile_relays::relay_sends_a_multiline_reply_that_never_ends` | 6 |
//! |  | `hostile_relays::relay_answers_data_with_250` | 6 |
//! |  | `hostile_relays::relay_closes_after_the_final_dot` | 6 |
//! | odd files in incoming | `odd_files::odd_entries_named_mail_beside_good_jobs` | 3, 4 (and 2) |
//! | damaged spools | `damaged_spool::zero_length_database_with_a_ledger` | 5 |
//! |  | `damaged_spool::wal_header_damaged_after_sigkill` | 5 |
//! |  | `damaged_spool::corrupted_page` | 5 |
//! | SIGKILL loops | `sigkill_loop::fifty_sigkills_during_delivery_and_ingest` | (2 for the last `--until-empty` run) |
//!
//! Every hostile-relay case needs `smtpw run --drain-timeout SECS` (item 6) and reports its
//! absence as a violation before running without it, so its other checks still say something.
//!
//! Fixtures, in the test kit: `smtpw_testkit::site` (a spool driven through the binary),
//! `smtpw_testkit::ledger` (the tally and the strict ledger scan), `smtpw_testkit::hostile` (the
//! scripted hostile relay), `smtpw_testkit::tmpfs` (a small file system mounted for the full-disk
//! case), `smtpw_testkit::proc` (processes, shared with the other process-level tests).

use std::time::Duration;

/// The drain deadline the cases give `smtpw run --drain-timeout` (seconds).
pub const DRAIN_SECS: u64 = 2;
/// How long a stop may take beyond the drain deadline: the courtesy QUIT at a stop
/// (`engine::QUIT_AT_STOP`, 2 s) and process exit on a loaded machine.
pub const STOP_MARGIN: Duration = Duration::from_secs(5);

mod damaged_spool;
mod full_disk;
mod hostile_relays;
mod odd_files;
mod sigkill_loop;
