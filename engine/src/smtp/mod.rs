//! The SMTP client side of delivery: a transaction with a relay (docs/behaviour.md TXN-1 to TXN-8)
//! on connections the workers open and reuse (WRK-6 to WRK-8).
//!
//! - `reply`: reply parsing, reply classes, EHLO capabilities, RCPT reply classification (pure).
//! - [`data`]: streaming dot-stuffing for the DATA phase (pure).
//! - [`ext`]: what a message asks of the relay's extensions: `BODY=8BITMIME`, `SMTPUTF8`, and
//!   the recipients that cannot be sent without it (pure).
//! - `command`: typed commands that format themselves and know their reply's time-out (pure).
//! - `session` and `txn`: the sans-I/O client core. A session (greeting, EHLO/HELO, QUIT, the
//!   queue of replies owed, what the relay taught us) and a message's transactions (pipelined or
//!   lock-step by how commands are grouped, 452/552 too-many-recipients recovery inside the
//!   session, one outcome per recipient) take replies and say what to send next (pure).
//! - `driver`: [`Client`], which moves the bytes over any [`crate::net::BoxStream`] with the
//!   per-command time-outs and the transaction deadline.

pub mod auth;
pub(crate) mod command;
pub mod data;
mod driver;
pub mod ext;
pub mod helo;
#[cfg(test)]
mod model_relay;
pub(crate) mod reply;
mod session;
mod txn;

use std::time::Duration;

pub use auth::{CredentialSecret, Credentials};
pub use driver::{Batch, Client, Message, Security};
pub use reply::{classify_rcpt, parse_reply, Capabilities, RcptVerdict, Reply, ReplyError};
pub use txn::{Delivery, RcptResult};

pub use crate::net::BoxFuture;

/// Per-command time-outs. Defaults: the client minimums of RFC 5321 (section 4.5.3.2). Each one
/// bounds a single wait; [`TxnDeadline`] bounds a whole transaction on top of them.
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

/// The overall deadline of one transaction (from the MAIL command, or the RSET before it, to the
/// reply to the final dot): `base + message bytes / min_rate`.
///
/// The per-command time-outs alone do not bound a transaction: each reply restarts them, so a
/// relay that drips its replies (one byte a second) keeps a copy for as long as its replies are
/// long, and a transaction of 100 recipients may legally wait 5 minutes for each RCPT reply. The
/// deadline is derived from the same RFC 5321 minimums, allowing ONE slow step of each kind a
/// working relay has: the default base is 15 minutes, the 10 minutes a client must allow for the
/// reply to the final dot (IIS answers it only once the message is queued, minutes when its
/// event sinks or a virus scanner are slow) plus 5 minutes, the wait allowed for one MAIL or RCPT
/// reply; every other step of a working relay takes milliseconds. The message itself gets its
/// size at `min_rate` (default 1 KiB/s, 8 kbit/s: slower than any link a forwarding MTA sits on;
/// a 2 MB message, IIS's default size limit, gets 34 minutes more).
///
/// A transaction that reaches its deadline ends as a lost connection: its undecided recipients
/// are deferred (retried later), those the relay had already refused keep their outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnDeadline {
    /// The allowance of every transaction, whatever the message size.
    pub base: Duration,
    /// The slowest acceptable transfer of the message, in bytes per second (at least 1).
    pub min_rate: u64,
}

impl Default for TxnDeadline {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(15 * 60),
            min_rate: 1024,
        }
    }
}

impl TxnDeadline {
    /// The deadline of a transaction carrying a message of `bytes` (unstuffed) bytes:
    /// `base + bytes / min_rate`, saturating.
    pub fn for_message(&self, bytes: u64) -> Duration {
        let rate = self.min_rate.max(1);
        let nanos = u128::from(bytes) * 1_000_000_000 / u128::from(rate);
        let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
        // `nanos % 1e9` is below 1e9, so it fits.
        let sub = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
        self.base.saturating_add(Duration::new(secs, sub))
    }
}

/// How the client talks to a relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The name sent with EHLO / HELO: a domain or an address literal ([`helo::validate`]).
    /// `smtpw run` uses [`helo::choose`]: `--helo-name`, else NODE, else the host's fully
    /// qualified name. The default here, `localhost`, is for tests; many relays refuse it.
    pub helo_name: String,
    /// The per-command time-outs.
    pub timeouts: Timeouts,
    /// The overall deadline of each transaction, on top of the per-command time-outs.
    pub txn_deadline: TxnDeadline,
    /// Use PIPELINING when the relay advertises it (TXN-1). Default true.
    pub pipelining: bool,
    /// Send `SIZE=<octets>` on MAIL when the relay advertises SIZE. Default true.
    pub use_size: bool,
    /// Send the message with `BDAT n LAST` when the relay advertises CHUNKING and PIPELINING
    /// (TXN-13): MAIL, the RCPTs, BDAT and the message in one write. Default true.
    pub chunking: bool,
    /// Transactions in flight at once on a connection that uses BDAT (TXN-13): the next
    /// messages' commands follow before the replies to the earlier ones arrive. 1: one at a
    /// time. Default [`DEFAULT_WINDOW`].
    pub window: usize,
}

/// The default [`ClientConfig::window`]: transactions in flight per connection.
pub const DEFAULT_WINDOW: usize = 16;

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            helo_name: "localhost".to_owned(),
            timeouts: Timeouts::default(),
            txn_deadline: TxnDeadline::default(),
            pipelining: true,
            use_size: true,
            chunking: true,
            window: DEFAULT_WINDOW,
        }
    }
}

/// Why a connection could not be set up. Every variant means "unreachable" (WRK-6).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connection failed: {0}")]
    /// The connection could not be opened, or broke.
    Io(#[from] std::io::Error),
    #[error("time-out waiting for the {0} reply")]
    /// No reply to the named step in time.
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
    /// No TLS where the settings require it: STARTTLS not offered or refused, a handshake that
    /// failed, a certificate that does not verify (TXN-11).
    #[error("no TLS: {0}")]
    TlsRequired(String),
    /// AUTH is configured but the session is not encrypted: the credentials are not sent (TXN-12).
    #[error("AUTH as {user} not attempted: the session is not encrypted (the relay offers no STARTTLS) and allow_plaintext_auth is not set")]
    AuthNeedsTls {
        /// The user the settings name.
        user: String,
    },
    /// The relay offers AUTH, but no mechanism these credentials can use.
    #[error("AUTH as {user} not possible: {why}")]
    AuthUnavailable {
        /// The user the settings name.
        user: String,
        /// What the relay offers and the settings ask for.
        why: String,
    },
    /// The relay refused the login: our configuration's fault, not the recipients' (TXN-12).
    #[error("the relay refused AUTH {mechanism} for user {user}: {reply}")]
    AuthRefused {
        /// The user the settings name.
        user: String,
        /// The mechanism tried.
        mechanism: &'static str,
        /// The relay's refusal.
        reply: Reply,
    },
}

/// Where the rate limiter plugs in: awaited before each transaction with the message size in
/// bytes (headers + body with CRLFs, envelope not counted; RATE-2).
pub trait DataGate: Send + Sync {
    /// Waits until `bytes` of message may be sent.
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_default_deadline_is_fifteen_minutes_plus_the_message_at_one_kib_per_second() {
        let d = TxnDeadline::default();
        assert_eq!(d.for_message(0), Duration::from_secs(900));
        assert_eq!(d.for_message(1024 * 60), Duration::from_secs(960));
        // IIS's default size limit (2,048 KB): 34 minutes 8 seconds more.
        assert_eq!(d.for_message(2048 * 1024), Duration::from_secs(900 + 2048));
        assert_eq!(d.for_message(512), Duration::from_millis(900_500));
    }

    #[test]
    fn extremes_saturate_instead_of_overflowing() {
        let d = TxnDeadline {
            base: Duration::MAX,
            min_rate: 0,
        };
        assert_eq!(d.for_message(u64::MAX), Duration::MAX);
        let d = TxnDeadline {
            base: Duration::ZERO,
            min_rate: 1,
        };
        assert_eq!(d.for_message(u64::MAX), Duration::from_secs(u64::MAX));
    }

    proptest! {
        #[test]
        fn deadline_is_base_plus_size_over_rate_and_grows_with_size(
            base_ms in 0u64..10_000_000,
            rate in 1u64..100_000_000,
            a in 0u64..10_000_000_000,
            b in 0u64..10_000_000_000,
        ) {
            let d = TxnDeadline { base: Duration::from_millis(base_ms), min_rate: rate };
            let (small, large) = (a.min(b), a.max(b));
            prop_assert!(d.for_message(small) <= d.for_message(large));
            prop_assert!(d.for_message(small) >= d.base);
            // Sending `large` bytes at exactly `rate` fits in the size term (to the nanosecond).
            let term = d.for_message(large) - d.base;
            let at_rate = term.as_nanos() * u128::from(rate);
            let want = u128::from(large) * 1_000_000_000;
            prop_assert!(at_rate <= want && want - at_rate < u128::from(rate));
        }
    }
}
