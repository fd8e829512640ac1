//! What became of one recipient in one attempt: the one outcome type the SMTP client reports,
//! the spool records and the ledger writes.

use serde::{Deserialize, Serialize};

/// The fate of one recipient in one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The relay accepted the message for this recipient (a 2yz after the final dot).
    Delivered,
    /// Permanently refused (a 5yz), or deferred past the job's lifetime.
    Failed,
    /// Try again later (a 4yz, a lost connection, an unreachable relay).
    Deferred,
}
