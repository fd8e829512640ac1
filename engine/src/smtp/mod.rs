//! The SMTP client side of delivery (SPEC §7.4, §7.5, §9, §11 A5/A6, §12 D2/D5; issue 4 item 4).
//!
//! - [`reply`]: reply parsing, reply classes, EHLO capabilities, RCPT reply classification (pure).
//! - [`data`]: streaming dot-stuffing for the DATA phase (pure).
//! - [`client`]: the transaction driver over any [`crate::net::BoxStream`]: greeting, EHLO/HELO,
//!   pipelined or lock-step transactions, per-command time-outs, 452/552 too-many-recipients
//!   recovery inside the session, one reply kept per recipient.

pub mod client;
pub mod data;
pub mod reply;

use std::time::Duration;

pub use client::{Client, Delivery, RcptResult};
pub use reply::{classify_rcpt, parse_reply, Capabilities, RcptVerdict, Reply, ReplyError};

pub use crate::net::BoxFuture;

/// Per-command time-outs. Defaults: RFC 5321 §4.5.3.2 client minimums (SPEC §7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Waiting for the 220 greeting.
    pub greeting: Duration,
    /// EHLO / HELO reply.
    pub ehlo: Duration,
    /// MAIL reply (also RSET, and writing a pipelined command group).
    pub mail: Duration,
    /// Each RCPT reply.
    pub rcpt: Duration,
    /// The reply to DATA (354).
    pub data_init: Duration,
    /// Each write of a block of message data.
    pub data_block: Duration,
    /// The reply to the final ".".
    pub data_term: Duration,
    /// QUIT (sent politely; errors ignored).
    pub quit: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        const MIN: u64 = 60;
        Self {
            greeting: Duration::from_secs(5 * MIN),
            ehlo: Duration::from_secs(5 * MIN),
            mail: Duration::from_secs(5 * MIN),
            rcpt: Duration::from_secs(5 * MIN),
            data_init: Duration::from_secs(2 * MIN),
            data_block: Duration::from_secs(3 * MIN),
            data_term: Duration::from_secs(10 * MIN),
            quit: Duration::from_secs(MIN),
        }
    }
}

impl Timeouts {
    /// Every time-out set to `d` (tests).
    pub fn uniform(d: Duration) -> Self {
        Self {
            greeting: d,
            ehlo: d,
            mail: d,
            rcpt: d,
            data_init: d,
            data_block: d,
            data_term: d,
            quit: d,
        }
    }
}

/// How the client talks to a relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The name sent with EHLO / HELO.
    pub helo_name: String,
    pub timeouts: Timeouts,
    /// Use PIPELINING when the relay advertises it (SPEC D5). Default true.
    pub pipelining: bool,
    /// Send `SIZE=<octets>` on MAIL when the relay advertises SIZE. Default true.
    pub use_size: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            helo_name: "localhost".to_owned(),
            timeouts: Timeouts::default(),
            pipelining: true,
            use_size: true,
        }
    }
}

/// Why a connection could not be set up. Every variant means "unreachable" (SPEC §11 A5).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("time-out waiting for the {0} reply")]
    Timeout(&'static str),
    /// A greeting other than 220 (421, 554 ...).
    #[error("greeting refused: {0}")]
    Greeting(Reply),
    /// EHLO refused with 4yz (or 5yz, then HELO refused too).
    #[error("EHLO/HELO refused: {0}")]
    Helo(Reply),
    /// The server sent something that is not an SMTP reply.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Where the rate limiter plugs in: awaited before each transaction with the message size in
/// bytes (headers + body with CRLFs, envelope not counted; SPEC D1).
pub trait DataGate: Send + Sync {
    fn acquire(&self, bytes: u64) -> BoxFuture<'_, ()>;
}

/// A gate that never waits.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoGate;

impl DataGate for NoGate {
    fn acquire(&self, _bytes: u64) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}
