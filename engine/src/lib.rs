//! smtpw-engine: deliver a list server's outgoing mail through LISTSERV-style SMTP workers:
//! weighted worker connections to forwarding relays, opentime windows and failover, delivery
//! pools, exact shared rate limits, and a durable spool that never loses a recipient.
//!
//! This is the library; the `smtpw` command (package `smtpw`, in `cli/`) is a thin layer over it.
//! The rules the code follows are in the repository's `docs/behaviour.md` (cited by their tags,
//! such as `TXN-3`), and the shape in `docs/architecture.md`.
//!
//! # Example
//!
//! Deliver one job through a worker connection. Here the relay is the repository's mock IIS
//! SMTP service reached through an in-memory [`MemoryConnector`], so the example runs without a
//! network; an embedder leaves the connector out and gets a [`TcpConnector`].
//!
//! ```
//! use std::sync::Arc;
//!
//! use smtpw_engine::{config, submit, Engine, EngineOptions, MemoryConnector, SpoolOptions};
//! use smtpw_engine::{Spool, SqliteSpool, SystemClock};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // SITE.CFG: one worker to the relay, copies of at most 100 recipients.
//! let site = config::parse_str("SMTP_FORWARD_1=RELAY.EXAMPLE.ORG:25\nMAXBSMTP=100\n", "SITE.CFG")?;
//!
//! // The relay: a mock MTA answering in memory (a real deployment needs none of this).
//! let clock = SystemClock::shared();
//! let relay = mock_mta::MockMta::new(mock_mta::MockConfig::iis(), clock.clone());
//! let connector = MemoryConnector::new();
//! connector.route(config::HostPort::new("RELAY.EXAMPLE.ORG", 25), move |stream| {
//!     let relay = relay.clone();
//!     tokio::spawn(async move { relay.serve_stream(stream, ([127, 0, 0, 1], 40000).into()).await });
//!     Ok(())
//! });
//!
//! // The spool, and a job dropped into its `incoming/` folder.
//! let dir = tempfile::tempdir()?;
//! let spool = Arc::new(SqliteSpool::open(dir.path(), SpoolOptions::from_site(&site), clock.clone())?);
//! let rcpts = (1..=3).map(|i| format!("user{i}@example.net"));
//! let message: &[u8] = b"Subject: hello\r\n\r\nHello, list.\r\n";
//! submit(dir.path(), "owner-list@lists.example.org", None, rcpts, message)?;
//!
//! // Run until the queue is empty (a service would use `run_until(ctrl_c)` instead).
//! let engine = Engine::builder(site, spool.clone(), dir.path().to_path_buf())
//!     .connector(Arc::new(connector))
//!     .clock(clock)
//!     .options(EngineOptions { until_empty: true, ..EngineOptions::default() })
//!     .build();
//! let summary = engine.run().await;
//! assert_eq!((summary.delivered, summary.failed, summary.deferred), (3, 0, 0));
//! assert_eq!(spool.queued_copies(), 0);
//! # Ok(())
//! # }
//! ```
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
//! - `intake`: the engine's ingest loop over `SPOOL/incoming/`, and when a batch run is done.
//! - [`spool`]: the durable queue: the [`spool::Spool`] trait and the embedded SQLite spool
//!   (file ingest, claims, the writer thread, the completion policy, damage checks);
//!   [`chunk`] splits a job into copies of at most MAXBSMTP recipients.
//! - [`engine`]: assembling and running it all: workers, the synchronous fallback, the status
//!   file, the drain deadline at a stop.
//! - `worker`: one worker: [`route`] by the clock, a connection through [`net`], the rate gate
//!   ([`ratelimit`]), the transaction, the outcome.
//! - [`smtp`]: the SMTP client, sans-I/O: typed commands, the session and transaction machines,
//!   and a thin driver over any byte stream.
//! - [`outcome`], [`ledger`]: what became of each recipient, and the JSON-lines record of it.
//! - Helpers: `condition` (one log line per failing condition), [`text`] (input shown escaped),
//!   [`clock`] (the one injected clock).

#![warn(missing_docs)]

pub mod chunk;
pub(crate) mod condition;
pub mod config;
pub mod engine;
pub(crate) mod intake;
pub mod job;
pub mod ledger;
pub mod listen;
pub mod metrics;
pub mod net;
pub mod outcome;
pub mod ratelimit;
pub mod relay;
pub mod route;
pub mod settings;
pub mod smtp;
pub mod spool;
pub mod suspend;
pub mod text;
pub mod tls;
pub(crate) mod worker;

pub use smtpw_clock as clock;

pub use clock::{Clock, SharedClock, SystemClock, VirtualClock};
pub use config::SiteConfig;
pub use engine::{DeliveryStats, Engine, EngineBuilder, EngineOptions, HostStats, RunSummary};
pub use net::{Connector, MemoryConnector, TcpConnector};
pub use outcome::Outcome;
pub use settings::Settings;
pub use spool::{submit, Spool, SpoolOptions, SqliteSpool};
