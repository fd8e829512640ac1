//! `[cluster]`: several smtpw nodes sharing one database spool.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{parse_duration, Cx, DURATION_EXPECTED};
use crate::config::RateLimits;

/// The cluster's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// A node silent this long is dead: its claimed and assigned copies go to the live nodes.
    pub node_timeout: Duration,
    /// A limit shared exactly by every node (same syntax as SMTP_RATE_LIMIT).
    pub rate_limit: Option<RateLimits>,
}

impl ClusterSettings {
    /// The default of `node_timeout`.
    pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_secs(60);
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            node_timeout: Self::DEFAULT_NODE_TIMEOUT,
            rate_limit: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    node_timeout: Option<Spanned<String>>,
    rate_limit: Option<Spanned<String>>,
}

pub(super) fn check(r: RawCluster, cx: &mut Cx<'_>) -> ClusterSettings {
    let mut s = ClusterSettings::default();
    if let Some(t) = &r.node_timeout {
        match parse_duration(t.get_ref()) {
            Ok(d) if d >= Duration::from_secs(1) => s.node_timeout = d,
            Ok(_) => cx.error(
                t.span(),
                "[cluster] node_timeout is under a second",
                "such as \"60s\"",
            ),
            Err(e) => cx.error(
                t.span(),
                format!("[cluster] node_timeout: {e}"),
                DURATION_EXPECTED,
            ),
        }
    }
    if let Some(rl) = &r.rate_limit {
        let (line, col) = cx.line_col(rl.span().start);
        // The value starts after the opening quote.
        match crate::config::parse_rate_limit_value(rl.get_ref(), cx.file, line, col + 1) {
            Ok(limits) => s.rate_limit = Some(limits),
            Err(diags) => cx.diags.extend(diags),
        }
    }
    s
}
