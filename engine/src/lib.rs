//! smtpw-engine: deliver a list server's outgoing mail through LISTSERV-style SMTP workers:
//! weighted worker connections to forwarding relays, opentime windows and failover, delivery
//! pools, exact shared rate limits, and a durable spool that never loses a recipient.
//!
//! This is the library; the `smtpw` command (package `smtpw`, in `cli/`) is a thin layer over it.
//! The rules the code follows are in the repository's `docs/behaviour.md` (cited by their tags,
//! such as `TXN-3`), and the shape in `docs/architecture.md`.
//!
//! # Layout
//!
//! In the order mail flows through it:
//!
//! - [`config`]: SITE.CFG, both LISTSERV forms, every delivery keyword ([`config::SiteConfig`]);
//!   [`settings`]: `smtpw.toml`, what smtpw adds (relays' TLS and AUTH, listener, admin, spool,
//!   cluster).
//! - [`job`]: the `.MAIL` job format (BSMTP): reading and writing, dot-stuffing, long lines.
//! - [`listen`]: the SMTP listener list managers submit to (jobs stored through
//!   [`spool::Spool::accept`]).
//! - [`intake`]: the engine's ingest loop over `SPOOL/incoming/`, and when a batch run is done.
//! - [`spool`]: the durable queue: the [`spool::Spool`] trait and the embedded SQLite spool
//!   (file ingest, claims, the writer thread, the completion [`spool::policy`], damage checks);
//!   [`chunk`] splits a job into copies of at most MAXBSMTP recipients.
//! - [`engine`]: assembling and running it all: workers, the synchronous fallback, the status
//!   file, the drain deadline at a stop.
//! - [`worker`]: one worker: [`route`] by the clock, a connection through [`net`], the rate gate
//!   ([`ratelimit`]), the transaction, the outcome.
//! - [`smtp`]: the SMTP client, sans-I/O: typed commands, the session and transaction machines,
//!   and a thin driver over any byte stream.
//! - [`outcome`], [`ledger`]: what became of each recipient, and the JSON-lines record of it.
//! - Helpers: [`condition`] (one log line per failing condition), [`text`] (input shown escaped),
//!   [`clock`] (the one injected clock).

pub mod chunk;
pub mod condition;
pub mod config;
pub mod engine;
pub mod intake;
pub mod job;
pub mod ledger;
pub mod listen;
pub mod net;
pub mod outcome;
pub mod ratelimit;
pub mod route;
pub mod settings;
pub mod smtp;
pub mod spool;
pub mod text;
pub mod worker;

pub use smtpw_clock as clock;
