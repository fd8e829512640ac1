//! Operator suspensions of a pool or a relay (OPS-5): a suspended pool is not claimed from, a
//! suspended relay is not connected to (its copies stay queued; workers serve other pools, use
//! their failover, or idle). Each has a reason and an end; it is kept in
//! `SPOOL/suspensions.json` (written to a temporary file, synced, renamed), so it survives a
//! restart, and it ends by itself at its time.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::config::{HostPort, Pool, PoolSet};

/// The file, in the spool directory.
pub const SUSPENSIONS_FILE: &str = "suspensions.json";

/// One suspension: of a pool or of a relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspension {
    /// The pool's letter (`-` for the default pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// `host` or `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// Why (as the operator gave it; shown in the queue and the log).
    pub reason: String,
    /// Who asked (as the operator gave it).
    pub by: String,
    /// When it was asked for.
    pub since: Timestamp,
    /// When it ends by itself.
    pub until: Timestamp,
}

impl Suspension {
    fn pool(&self) -> Option<Pool> {
        self.pool
            .as_deref()
            .and_then(|p| p.chars().next())
            .and_then(Pool::from_char)
    }

    /// Whether it names `relay` (`host:port` matches it whole, `host` any port).
    fn names_relay(&self, relay: &HostPort) -> bool {
        self.relay.as_deref().is_some_and(|r| {
            r.eq_ignore_ascii_case(&relay.to_string()) || r.eq_ignore_ascii_case(&relay.host)
        })
    }

    /// Whether it is about the same thing as `other`.
    fn same_target(&self, pool: Option<&str>, relay: Option<&str>) -> bool {
        let eq = |a: Option<&str>, b: Option<&str>| match (a, b) {
            (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
            (None, None) => true,
            _ => false,
        };
        eq(self.pool.as_deref(), pool) && eq(self.relay.as_deref(), relay)
    }
}

/// Why the suspensions could not be read or kept.
#[derive(Debug, thiserror::Error)]
pub enum SuspendError {
    /// The file could not be read or written.
    #[error("{}: {error}", .path.display())]
    Io {
        /// The suspensions file.
        path: PathBuf,
        /// What the system said.
        error: std::io::Error,
    },
    /// The file holds something else than suspensions.
    #[error("{}: not a list of suspensions: {error}", .path.display())]
    Format {
        /// The suspensions file.
        path: PathBuf,
        /// What is wrong in it.
        error: serde_json::Error,
    },
    /// A request that names nothing to suspend, or an unknown pool.
    #[error("{0}")]
    Invalid(String),
}

/// The suspensions in force, shared by the workers and the admin endpoint.
#[derive(Debug)]
pub struct Suspensions {
    path: PathBuf,
    list: Mutex<Vec<Suspension>>,
}

impl Suspensions {
    /// Those kept in `spool_dir` (none when the file does not exist).
    pub fn load(spool_dir: &Path) -> Result<Self, SuspendError> {
        let path = spool_dir.join(SUSPENSIONS_FILE);
        let list = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| SuspendError::Format {
                path: path.clone(),
                error,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(SuspendError::Io { path, error }),
        };
        Ok(Self {
            path,
            list: Mutex::new(list),
        })
    }

    /// None, kept in `spool_dir` once one is added.
    pub fn empty(spool_dir: &Path) -> Self {
        Self {
            path: spool_dir.join(SUSPENSIONS_FILE),
            list: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Suspension>> {
        self.list.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The suspensions in force at `now`.
    pub fn active(&self, now: Timestamp) -> Vec<Suspension> {
        self.lock()
            .iter()
            .filter(|s| s.until > now)
            .cloned()
            .collect()
    }

    /// Add (or replace, for the same pool or relay) a suspension, and keep it on disk before
    /// returning.
    pub fn suspend(&self, s: Suspension) -> Result<(), SuspendError> {
        match (&s.pool, &s.relay) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(SuspendError::Invalid(
                    "a suspension names either a pool or a relay".into(),
                ))
            }
            (Some(_), None) if s.pool().is_none() => {
                return Err(SuspendError::Invalid(format!(
                    "{} is not a pool (A to Z, or - for the default pool)",
                    crate::text::quoted_prefix_in(s.pool.as_deref().unwrap_or(""), 20, '"')
                )))
            }
            _ => {}
        }
        let mut list = self.lock();
        let mut next: Vec<Suspension> = list
            .iter()
            .filter(|o| o.until > s.since && !o.same_target(s.pool.as_deref(), s.relay.as_deref()))
            .cloned()
            .collect();
        next.push(s);
        self.save(&next)?;
        *list = next;
        Ok(())
    }

    /// End the suspension of a pool or relay at `now`; returns whether one was in force.
    /// Those already over are forgotten too.
    pub fn resume(
        &self,
        pool: Option<&str>,
        relay: Option<&str>,
        now: Timestamp,
    ) -> Result<bool, SuspendError> {
        let mut list = self.lock();
        let live = |o: &&Suspension| o.until > now;
        let was = list.iter().filter(live).any(|o| o.same_target(pool, relay));
        let next: Vec<Suspension> = list
            .iter()
            .filter(live)
            .filter(|o| !o.same_target(pool, relay))
            .cloned()
            .collect();
        if !was {
            return Ok(false);
        }
        self.save(&next)?;
        *list = next;
        Ok(true)
    }

    fn save(&self, list: &[Suspension]) -> Result<(), SuspendError> {
        let io = |error| SuspendError::Io {
            path: self.path.clone(),
            error,
        };
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(list).map_err(|e| io(std::io::Error::other(e)))?;
        {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&text).and_then(|()| f.sync_all()).map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// What a worker may use at `now`: `pools` without the suspended ones, `targets` without
    /// the suspended relays; and whether a suspension took anything away.
    pub fn filter(
        &self,
        targets: Vec<HostPort>,
        pools: PoolSet,
        now: Timestamp,
    ) -> (Vec<HostPort>, PoolSet, bool) {
        let list = self.lock();
        let live: Vec<&Suspension> = list.iter().filter(|s| s.until > now).collect();
        if live.is_empty() {
            return (targets, pools, false);
        }
        let kept_pools: PoolSet = pools
            .iter()
            .filter(|p| !live.iter().any(|s| s.pool() == Some(*p)))
            .collect();
        let before = targets.len();
        let kept_targets: Vec<HostPort> = targets
            .into_iter()
            .filter(|t| !live.iter().any(|s| s.names_relay(t)))
            .collect();
        let held = kept_pools != pools || kept_targets.len() != before;
        (kept_targets, kept_pools, held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn pool(p: &str, until: i64) -> Suspension {
        Suspension {
            pool: Some(p.into()),
            relay: None,
            reason: "maintenance".into(),
            by: "ops".into(),
            since: at(0),
            until: at(until),
        }
    }

    #[test]
    fn a_suspension_holds_until_its_end_and_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let s = Suspensions::load(dir.path()).unwrap();
        s.suspend(pool("A", 60)).unwrap();
        let a = Pool::from_char('A').unwrap();
        let all = PoolSet::ALL;
        let (_, pools, held) = s.filter(vec![], all, at(30));
        assert!(held && !pools.contains(a));
        let again = Suspensions::load(dir.path()).unwrap();
        let (_, pools, _) = again.filter(vec![], all, at(59));
        assert!(!pools.contains(a), "kept on disk");
        let (_, pools, held) = again.filter(vec![], all, at(60));
        assert!(!held && pools.contains(a), "ended by itself");
        assert!(
            !again.resume(Some("A"), None, at(60)).unwrap(),
            "over already"
        );
        assert!(again.resume(Some("A"), None, at(10)).unwrap());
        assert!(!again.resume(Some("A"), None, at(10)).unwrap());
    }

    #[test]
    fn a_suspended_relay_is_left_out_by_host_or_host_and_port() {
        let dir = tempfile::tempdir().unwrap();
        let s = Suspensions::empty(dir.path());
        s.suspend(Suspension {
            relay: Some("mx1.example".into()),
            pool: None,
            ..pool("-", 60)
        })
        .unwrap();
        let targets = vec![
            HostPort::new("mx1.example", 25),
            HostPort::new("mx2.example", 25),
        ];
        let (t, _, held) = s.filter(targets, PoolSet::ALL, at(1));
        assert_eq!(t, vec![HostPort::new("mx2.example", 25)]);
        assert!(held);
        assert!(s.suspend(pool("7", 60)).is_err(), "not a pool");
    }
}
