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
    held_locks(&meta)
}

/// What `/proc/locks` says of the file of `meta`: a granted lock on its device and inode is an
/// engine; a lock on the same inode number of another device number is not proof either way
/// (btrfs subvolumes and overlay file systems show other device numbers to `stat` than to
/// the lock table), so `Unknown`.
#[cfg(target_os = "linux")]
fn held_locks(meta: &std::fs::Metadata) -> EngineState {
    use std::os::unix::fs::MetadataExt;
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
        return EngineState::Unknown;
    };
    let dev = meta.dev();
    // glibc's encoding of a device number; /proc/locks writes "MAJOR:MINOR:INODE", the first
    // two in hexadecimal.
    let (major, minor) = (
        ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff),
        (dev & 0xff) | ((dev >> 12) & !0xff),
    );
    let mut same_inode = false;
    for l in locks.lines() {
        match lock_on(l, meta.ino()) {
            Some(d) if d == (major, minor) => return EngineState::Running,
            Some(_) => same_inode = true,
            None => {}
        }
    }
    if same_inode {
        EngineState::Unknown
    } else {
        EngineState::NotRunning
    }
}

#[cfg(not(target_os = "linux"))]
fn held_locks(_meta: &std::fs::Metadata) -> EngineState {
    EngineState::Unknown
}

/// The (major, minor) device of a `/proc/locks` line's granted lock on inode `ino`, if it is
/// one. Lines of waiters (`1: -> FLOCK ...`) are not.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn lock_on(line: &str, ino: u64) -> Option<(u64, u64)> {
    if line.contains("->") {
        return None;
    }
    line.split_whitespace().find_map(|field| {
        let mut parts = field.split(':');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(ma), Some(mi), Some(i), None) if i.parse::<u64>() == Ok(ino) => Some((
                u64::from_str_radix(ma, 16).ok()?,
                u64::from_str_radix(mi, 16).ok()?,
            )),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_locks_lines() {
        let l = "2: FLOCK  ADVISORY  WRITE 13793 fe:00:5685295 0 EOF";
        assert_eq!(lock_on(l, 5_685_295), Some((0xfe, 0)));
        assert_eq!(lock_on(l, 5_685_296), None);
        assert_eq!(
            lock_on("1: POSIX  ADVISORY  WRITE 9 103:02:77 0 EOF", 77),
            Some((0x103, 2))
        );
        let waiter = "2: -> FLOCK  ADVISORY  WRITE 13794 fe:00:5685295 0 EOF";
        assert_eq!(lock_on(waiter, 5_685_295), None);
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
