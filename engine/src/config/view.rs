//! Views of a resolved configuration: the JSON shape of `smtpw config check --json` and the
//! readable table of `smtpw config check`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::model::*;

/// The JSON view of a [`SiteConfig`] (hosts keep the case written in the file).
#[derive(Debug, Clone, Serialize)]
pub struct ResolvedView<'a> {
    /// The file it was read from.
    pub source: &'a str,
    /// NODE.
    pub node: Option<&'a str>,
    /// SMTP_FORWARD.
    pub sync_forward: Option<&'a HostPort>,
    /// MAXBSMTP.
    pub max_bsmtp: u32,
    /// `"A"`, or `"A B"` when list admin mail has a pool of its own.
    pub default_list_pool: String,
    /// DEFAULT_DIST_POOL.
    pub default_dist_pool: Pool,
    /// SORT_RECIPIENTS.
    pub sort_recipients: u8,
    /// The workers after expansion.
    pub workers: &'a [WorkerSpec],
    /// SMTP_RATE_LIMIT, resolved.
    pub rate_limits: &'a RateLimits,
    /// DIST_FORWARD's entries.
    pub dist_forward: &'a [DistEntry],
    /// DIST_FORWARD_THRESHOLD (0: unset).
    pub dist_forward_threshold: u32,
    /// DIST_FORWARD_MINSIZE (0: unset).
    pub dist_forward_minsize: u32,
    /// DIST_BACKGROUND_POOL_PRIORITY.
    pub dist_background_pool_priority: Option<&'a PoolPriority>,
    /// Keywords read without behaviour here, with their raw values.
    pub passive: &'a BTreeMap<String, String>,
    /// Each warning as `FILE:LINE:COLUMN: warning: ...`.
    pub warnings: Vec<String>,
}

impl DeliveryPools {
    /// `A` when both are the same pool, else `A B` (the DEFAULT_LIST_POOL form).
    pub fn to_setting(&self) -> String {
        if self.postings == self.admin {
            self.postings.to_string()
        } else {
            format!("{} {}", self.postings, self.admin)
        }
    }
}

impl SiteConfig {
    /// The JSON view of this configuration (`smtpw config check --json`).
    pub fn view(&self) -> ResolvedView<'_> {
        ResolvedView {
            source: &self.source,
            node: self.node.as_deref(),
            sync_forward: self.sync_forward.as_ref(),
            max_bsmtp: self.max_bsmtp,
            default_list_pool: self.default_list_pool.to_setting(),
            default_dist_pool: self.default_dist_pool,
            sort_recipients: self.sort_recipients,
            workers: &self.workers,
            rate_limits: &self.rate_limits,
            dist_forward: &self.dist_forward,
            dist_forward_threshold: self.dist_forward_threshold,
            dist_forward_minsize: self.dist_forward_minsize,
            dist_background_pool_priority: self.dist_background_pool_priority.as_ref(),
            passive: &self.passive,
            warnings: self.warnings.iter().map(ToString::to_string).collect(),
        }
    }

    /// The JSON of `smtpw config check --json`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.view()).unwrap_or(serde_json::Value::Null)
    }

    /// The readable report of `smtpw config check` (values from the file are shown with their
    /// control characters escaped).
    pub fn to_table(&self) -> String {
        let mut o = String::new();
        let _ = self.write_table(&mut o);
        crate::text::escape_controls_keep_lines(&o).into_owned()
    }

    fn write_table(&self, o: &mut String) -> std::fmt::Result {
        writeln!(
            o,
            "{}: node {}",
            self.source,
            self.node.as_deref().unwrap_or("(NODE not set)")
        )?;
        writeln!(o)?;
        if self.workers.is_empty() {
            writeln!(
                o,
                "Workers: none (no SMTP_FORWARD_n): all mail goes through SMTP_FORWARD"
            )?;
        } else {
            writeln!(o, "Workers: {}", self.workers.len())?;
            let rows: Vec<[String; 6]> = self
                .workers
                .iter()
                .map(|w| {
                    [
                        w.id.to_string(),
                        format!("SMTP_FORWARD_{}", w.source_n),
                        w.primary.to_string(),
                        w.failover
                            .as_ref()
                            .map_or_else(|| "-".to_string(), ToString::to_string),
                        if w.windows.is_empty() {
                            "all day".to_string()
                        } else {
                            w.windows
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(",")
                        },
                        w.pools.to_string(),
                    ]
                })
                .collect();
            let head = ["ID", "FROM", "PRIMARY", "FAILOVER", "WINDOWS", "POOLS"];
            let mut width = head.map(str::len);
            for r in &rows {
                for (w, c) in width.iter_mut().zip(r) {
                    *w = (*w).max(c.len());
                }
            }
            let line = |cells: [&str; 6]| {
                let mut s = String::from(" ");
                for (i, c) in cells.iter().enumerate() {
                    if i == 0 {
                        let _ = write!(s, " {c:>w$}", w = width[0]);
                    } else if i == 5 {
                        let _ = write!(s, "  {c}");
                    } else {
                        let _ = write!(s, "  {c:<w$}", w = width[i]);
                    }
                }
                s
            };
            writeln!(o, "{}", line(head))?;
            for r in &rows {
                writeln!(o, "{}", line(r.each_ref().map(String::as_str)))?;
            }
        }
        writeln!(o)?;
        writeln!(
            o,
            "Sync host (SMTP_FORWARD):  {}",
            self.sync_forward
                .as_ref()
                .map_or_else(|| "(not set)".to_string(), ToString::to_string)
        )?;
        writeln!(o, "MAXBSMTP:                  {}", self.max_bsmtp)?;
        writeln!(o, "SORT_RECIPIENTS:           {}", self.sort_recipients)?;
        writeln!(
            o,
            "DEFAULT_LIST_POOL:         postings {}, admin {}",
            self.default_list_pool.postings, self.default_list_pool.admin
        )?;
        writeln!(o, "DEFAULT_DIST_POOL:         {}", self.default_dist_pool)?;
        if self.rate_limits.is_unlimited() {
            writeln!(o, "Rate limits:               none")?;
        } else {
            writeln!(o, "Rate limits (bits/s):")?;
            match self.rate_limits.overall_bps {
                Some(b) => writeln!(o, "  overall  {:>15}", thousands(b))?,
                None => writeln!(o, "  overall  {:>15}", "unlimited")?,
            }
            for (p, b) in &self.rate_limits.pools {
                writeln!(o, "  pool {p}   {:>15}", thousands(*b))?;
            }
        }
        if self.dist_forward.is_empty() {
            writeln!(
                o,
                "DIST_FORWARD:              not set (no DISTRIBUTE workers)"
            )?;
        } else {
            let total: u64 = self.dist_forward.iter().map(|e| u64::from(e.weight)).sum();
            writeln!(o, "DIST_FORWARD weights:")?;
            for e in &self.dist_forward {
                writeln!(
                    o,
                    "  {:<30} {:>4}  ({}/{total})",
                    e.host, e.weight, e.weight
                )?;
            }
            if self.dist_forward_threshold > 0 {
                writeln!(
                    o,
                    "  jobs under {} recipients are not shared out (DIST_FORWARD_THRESHOLD)",
                    self.dist_forward_threshold
                )?;
            }
            if self.dist_forward_minsize > 0 {
                writeln!(
                    o,
                    "  no node's share of a job under {} recipients (DIST_FORWARD_MINSIZE)",
                    self.dist_forward_minsize
                )?;
            }
        }
        if let Some(p) = &self.dist_background_pool_priority {
            let s: String = p.0.iter().map(|p| p.as_char()).collect();
            writeln!(o, "DIST_BACKGROUND_POOL_PRIORITY (highest first): {s}")?;
        }
        if !self.passive.is_empty() {
            writeln!(o, "Read without effect:")?;
            for (k, v) in &self.passive {
                writeln!(o, "  {k}={v}")?;
            }
        }
        writeln!(o)?;
        if self.warnings.is_empty() {
            writeln!(o, "Warnings: none")?;
        } else {
            writeln!(o, "Warnings: {}", self.warnings.len())?;
            for w in &self.warnings {
                writeln!(o, "  {w}")?;
            }
        }
        Ok(())
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
