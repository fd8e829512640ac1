//! Checks made before a spool is trusted: a damaged spool is refused, never taken for an empty
//! one (which would silently drop every recipient it held).
//!
//! - Signs of a past life: the marker file written when the spool was created, a write-ahead
//!   log, quarantined files, ledger lines. A spool with any of them but without its tables has
//!   lost its database (a zero-length `spool.db`, a deleted one).
//! - The write-ahead log, read before SQLite opens it: SQLite silently ignores a log whose
//!   header, or whose first frame, does not verify, so a spool that was never checkpointed
//!   would open empty. A log that holds whole frames but would be ignored is refused.
//! - `PRAGMA quick_check` on the database (b-tree structure, pages, free list).

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::{SpoolError, DB_FILE, LEDGER_FILE, MARKER_FILE, QUARANTINE};

/// The write-ahead log beside the database.
pub(super) fn wal_path(dir: &Path) -> PathBuf {
    dir.join(format!("{DB_FILE}-wal"))
}

/// The error for a damaged spool: what is wrong with which file, and how to recover.
pub(super) fn damaged(dir: &Path, file: PathBuf, problem: impl Into<String>) -> SpoolError {
    SpoolError::Damaged {
        dir: dir.to_path_buf(),
        file,
        problem: problem.into(),
    }
}

/// What in `dir` shows that the spool held a queue before. `ledger` is the configured ledger
/// when it is not the spool's own; it counts only beside an existing database file (a new
/// spool may well share a ledger that already has lines).
pub(super) fn signs_of_use(dir: &Path, ledger: Option<&Path>) -> Vec<String> {
    let mut signs = Vec::new();
    if dir.join(MARKER_FILE).exists() {
        signs.push(format!("its marker {MARKER_FILE} is there"));
    }
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let wal = wal_path(dir);
    // A log of its header alone holds no change: SQLite writes it when a new spool's database
    // is first opened, before any table exists (a kill right then leaves exactly that).
    if len(&wal) > WAL_HEADER as u64 {
        signs.push(format!("{} holds {} bytes", wal.display(), len(&wal)));
    }
    let quarantined = std::fs::read_dir(dir.join(QUARANTINE))
        .map(|d| d.filter_map(Result::ok).count())
        .unwrap_or(0);
    if quarantined > 0 {
        signs.push(format!("{QUARANTINE}/ holds {quarantined} files"));
    }
    let own = dir.join(LEDGER_FILE);
    let mut ledgers = vec![own.clone()];
    if let Some(l) = ledger.filter(|l| *l != own && dir.join(DB_FILE).exists()) {
        ledgers.push(l.to_path_buf());
    }
    for l in ledgers {
        if len(&l) > 0 {
            signs.push(format!(
                "the ledger {} holds {} bytes",
                l.display(),
                len(&l)
            ));
        }
    }
    signs
}

/// Does the database hold the spool's tables?
pub(super) fn has_tables(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'copies')",
        [],
        |r| r.get(0),
    )
}

/// `PRAGMA quick_check`: `None` if it says "ok", else its first findings.
pub(super) fn quick_check(conn: &Connection) -> rusqlite::Result<Option<String>> {
    let mut st = conn.prepare("PRAGMA quick_check(5)")?;
    let rows: Vec<String> = st
        .query_map([], |r| r.get::<_, String>(0))?
        .map(|r| r.map(|l| l.lines().collect::<Vec<_>>().join(" ")))
        .collect::<Result<_, _>>()?;
    if rows.len() == 1 && rows[0] == "ok" {
        Ok(None)
    } else {
        Ok(Some(rows.join("; ")))
    }
}

/// A problem found by SQLite that means the file is damaged (rather than busy or unreadable).
pub(super) fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
    )
}

/// Write the marker that says a spool lives here (once its tables are committed).
pub(super) fn write_marker(dir: &Path, created: jiff::Timestamp) -> Result<(), SpoolError> {
    let p = dir.join(MARKER_FILE);
    if p.exists() {
        return Ok(());
    }
    let text = format!(
        "smtpw spool\ncreated {created}\n\
         This file says that spool.db here holds a queue: if spool.db is ever missing or empty\n\
         while this file is here, smtpw refuses to start rather than take the spool for empty.\n"
    );
    super::write_all(&p, text.as_bytes())?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Is the spool's lock held by a process (a running daemon)? Takes the lock shared for an
/// instant to find out.
pub(super) fn lock_is_held(dir: &Path) -> bool {
    let Ok(f) = File::open(dir.join(super::LOCK_FILE)) else {
        return false;
    };
    matches!(f.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock))
}

const WAL_HEADER: usize = 32;
const FRAME_HEADER: usize = 24;
const WAL_MAGIC: u32 = 0x377f_0682;
const WAL_VERSION: u32 = 3_007_000;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// SQLite's WAL checksum: over 32-bit words (big- or little-endian as the log's magic says),
/// two running sums, each word pair added in turn.
fn wal_checksum(data: &[u8], big_endian: bool, mut s: (u32, u32)) -> (u32, u32) {
    for w in data.chunks_exact(8) {
        let word = |i: usize| {
            let b = [w[i], w[i + 1], w[i + 2], w[i + 3]];
            if big_endian {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            }
        };
        s.0 = s.0.wrapping_add(word(0)).wrapping_add(s.1);
        s.1 = s.1.wrapping_add(word(4)).wrapping_add(s.0);
    }
    s
}

/// Would SQLite throw away changes held in this write-ahead log? `Ok(None)` when the log is
/// absent, holds no whole frame, or verifies; `Ok(Some(problem))` when it holds frames that
/// SQLite would ignore because its header or first frame does not verify.
pub(super) fn check_wal(path: &Path) -> io::Result<Option<String>> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let mut h = [0u8; WAL_HEADER];
    if len < WAL_HEADER as u64 {
        return Ok(None);
    }
    f.read_exact(&mut h)?;
    let lost = |what: String| {
        Some(format!(
            "{what}, so SQLite would ignore the {len} bytes of changes it holds, and the \
             queue they record"
        ))
    };
    // The smallest frame a log can hold (a 512-byte page): a damaged header in front of less
    // than that hides nothing.
    let holds_any_frame = len >= (WAL_HEADER + FRAME_HEADER + 512) as u64;
    let magic = be32(&h, 0);
    if magic & !1 != WAL_MAGIC {
        return Ok(holds_any_frame
            .then(|| {
                lost(format!(
                    "its header is damaged (magic number {magic:#010x}, expected {WAL_MAGIC:#010x} or {:#010x})",
                    WAL_MAGIC | 1
                ))
            })
            .flatten());
    }
    let version = be32(&h, 4);
    let page = be32(&h, 8);
    let big_endian = magic & 1 == 1;
    let sum = wal_checksum(&h[..24], big_endian, (0, 0));
    let header_ok = version == WAL_VERSION
        && page.is_power_of_two()
        && (512..=65536).contains(&page)
        && sum == (be32(&h, 24), be32(&h, 28));
    if !header_ok {
        return Ok(holds_any_frame
            .then(|| {
                lost(format!(
                    "its header is damaged (version {version}, page size {page}, checksum {})",
                    if sum == (be32(&h, 24), be32(&h, 28)) {
                        "right"
                    } else {
                        "wrong"
                    }
                ))
            })
            .flatten());
    }
    let page = page as usize;
    if len < (WAL_HEADER + FRAME_HEADER + page) as u64 {
        return Ok(None);
    }
    let mut frame = vec![0u8; FRAME_HEADER + page];
    f.read_exact(&mut frame)?;
    let (salt1, salt2) = (be32(&h, 16), be32(&h, 20));
    if (be32(&frame, 8), be32(&frame, 12)) != (salt1, salt2) {
        // A log restarted after a complete checkpoint gets its new header (first salt plus
        // one) just before its first frame: a stop in between leaves the previous round's
        // frames, all in the database already. Any other salt is damage.
        if be32(&frame, 8) == salt1.wrapping_sub(1) {
            return Ok(None);
        }
        return Ok(lost(
            "its first frame does not belong to its header (salt differs)".to_string(),
        ));
    }
    let mut s = wal_checksum(&frame[..8], big_endian, (be32(&h, 24), be32(&h, 28)));
    s = wal_checksum(&frame[FRAME_HEADER..], big_endian, s);
    if be32(&frame, 0) == 0 || s != (be32(&frame, 16), be32(&frame, 20)) {
        return Ok(lost(
            "its first frame is damaged (checksum mismatch)".to_string(),
        ));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a kill during a spool's creation leaves (a database without tables and a log of
    /// its header alone) is no sign of use; a log with a frame is.
    #[test]
    fn a_log_of_its_header_alone_is_no_sign_of_use() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), vec![0u8; 4096]).unwrap();
        std::fs::write(wal_path(dir.path()), vec![0u8; WAL_HEADER]).unwrap();
        assert_eq!(signs_of_use(dir.path(), None), Vec::<String>::new());
        std::fs::write(
            wal_path(dir.path()),
            vec![0u8; WAL_HEADER + FRAME_HEADER + 4096],
        )
        .unwrap();
        assert_eq!(signs_of_use(dir.path(), None).len(), 1);
    }

    /// A log written by SQLite itself verifies; each kind of damage is named.
    #[test]
    fn a_log_written_by_sqlite_verifies_and_damage_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let wal = dir.path().join("t.db-wal");
        let c = Connection::open(&db).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.execute_batch(
            "PRAGMA wal_autocheckpoint = 0; CREATE TABLE t(x); INSERT INTO t VALUES (1), (2);",
        )
        .unwrap();
        // Keep the log: copy it while the connection is open (a close would checkpoint it).
        let saved = dir.path().join("saved-wal");
        std::fs::copy(&wal, &saved).unwrap();
        drop(c);
        assert_eq!(check_wal(&saved).unwrap(), None);
        assert_eq!(check_wal(&dir.path().join("absent")).unwrap(), None);
        let bytes = std::fs::read(&saved).unwrap();
        for (offset, expect) in [
            (0usize, "magic number"),
            (5, "header is damaged"),
            (25, "checksum wrong"),
            (32 + 8, "does not belong"),
            (32 + 24 + 7, "checksum mismatch"),
        ] {
            let mut b = bytes.clone();
            b[offset] ^= 0x40;
            let p = dir.path().join(format!("bad-{offset}"));
            std::fs::write(&p, &b).unwrap();
            let problem = check_wal(&p)
                .unwrap()
                .unwrap_or_else(|| panic!("offset {offset}"));
            assert!(problem.contains(expect), "offset {offset}: {problem}");
        }
        // A header alone (or with a torn first frame) hides nothing.
        let p = dir.path().join("short");
        std::fs::write(&p, &bytes[..WAL_HEADER + 100]).unwrap();
        assert_eq!(check_wal(&p).unwrap(), None);
        // The previous round's first frame behind a fresh header: already checkpointed.
        let mut b = bytes.clone();
        let salt1 = be32(&b, 16).wrapping_add(1);
        b[16..20].copy_from_slice(&salt1.to_be_bytes());
        let sum = wal_checksum(&b[..24], b[3] & 1 == 1, (0, 0));
        b[24..28].copy_from_slice(&sum.0.to_be_bytes());
        b[28..32].copy_from_slice(&sum.1.to_be_bytes());
        let p = dir.path().join("restarted");
        std::fs::write(&p, &b).unwrap();
        assert_eq!(check_wal(&p).unwrap(), None);
    }
}
