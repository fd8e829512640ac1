//! smtpw: deliver a list server's outgoing mail through LISTSERV-style SMTP workers.
//!
//! Data flows one way (DESIGN §2): job files -> ingest (parse, split into copies of at most
//! MAXBSMTP recipients) -> durable spool -> workers (route, connection, rate gate, pipelined
//! transaction) -> outcome per recipient in the spool and the ledger.
//!
//! Pure policy lives in `config`, `route`, `chunk`, `job` and `smtp::reply`; I/O lives at the
//! edges (`net`, `spool`, `ledger`, `worker`, `engine`).

pub mod chunk;
pub mod condition;
pub mod config;
pub mod engine;
pub mod intake;
pub mod job;
pub mod ledger;
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
