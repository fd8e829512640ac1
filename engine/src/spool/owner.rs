//! Is an engine running on a spool? The one that owns a spool holds an exclusive `flock` on
//! `SPOOL/spool.lock` for as long as it runs, so the lock answers the question, not a status
//! file that may simply have failed to be written.
//!
//! The lock is looked up without being taken (taking it, even for a moment, could make an
//! engine that starts at that very moment believe the spool is in use): on Linux the kernel
//! lists every held lock in `/proc/locks` by device and inode.

use std::path::Path;

use serde::Serialize;

use super::LOCK_FILE;

/// Whether a process owns a spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineState {
    /// A process holds `spool.lock`.
    Running,
    /// Nobody holds `spool.lock` (or there is none).
    NotRunning,
    /// This system does not say (no `/proc/locks`).
    Unknown,
}

/// Whether a process (an `smtpw run`) owns the spool in `dir` right now.
pub fn engine_state(dir: &Path) -> EngineState {
    let meta = match std::fs::metadata(dir.join(LOCK_FILE)) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return EngineState::NotRunning,
        Err(_) => return EngineState::Unknown,
    };
    held_locks(&meta).map_or(EngineState::Unknown, |held| {
        if held {
            EngineState::Running
        } else {
            EngineState::NotRunning
        }
    })
}

/// `Some(true)` when `/proc/locks` lists a granted lock on the file of `meta`; `None` when it
/// cannot be read.
#[cfg(target_os = "linux")]
fn held_locks(meta: &std::fs::Metadata) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let dev = meta.dev();
    // glibc's encoding of a device number; /proc/locks writes "MAJOR:MINOR:INODE", the first
    // two in hexadecimal.
    let (major, minor) = (
        ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff),
        (dev & 0xff) | ((dev >> 12) & !0xff),
    );
    Some(
        locks
            .lines()
            .any(|l| is_lock_on(l, major, minor, meta.ino())),
    )
}

#[cfg(not(target_os = "linux"))]
fn held_locks(_meta: &std::fs::Metadata) -> Option<bool> {
    None
}

/// Does a `/proc/locks` line describe a granted lock on (major, minor, inode)? Lines of waiters
/// (`1: -> FLOCK ...`) are not.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn is_lock_on(line: &str, major: u64, minor: u64, ino: u64) -> bool {
    if line.contains("->") {
        return false;
    }
    line.split_whitespace().any(|field| {
        let mut parts = field.split(':');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(ma), Some(mi), Some(i), None) => {
                u64::from_str_radix(ma, 16) == Ok(major)
                    && u64::from_str_radix(mi, 16) == Ok(minor)
                    && i.parse::<u64>() == Ok(ino)
            }
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_locks_lines() {
        let l = "2: FLOCK  ADVISORY  WRITE 13793 fe:00:5685295 0 EOF";
        assert!(is_lock_on(l, 0xfe, 0, 5_685_295));
        assert!(!is_lock_on(l, 0xfe, 0, 5_685_296));
        assert!(!is_lock_on(l, 0xfd, 0, 5_685_295));
        assert!(!is_lock_on(
            "2: -> FLOCK  ADVISORY  WRITE 13794 fe:00:5685295 0 EOF",
            0xfe,
            0,
            5_685_295
        ));
    }

    #[test]
    fn an_open_spool_is_running_and_a_closed_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(engine_state(dir.path()), EngineState::NotRunning);
        let clock = crate::clock::SystemClock::shared();
        let spool = super::super::SqliteSpool::open(dir.path(), Default::default(), clock).unwrap();
        let expect = |held| {
            if cfg!(target_os = "linux") {
                held
            } else {
                EngineState::Unknown
            }
        };
        assert_eq!(engine_state(dir.path()), expect(EngineState::Running));
        drop(spool);
        assert_eq!(engine_state(dir.path()), expect(EngineState::NotRunning));
    }
}
