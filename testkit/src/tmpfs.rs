//! A small tmpfs for full-disk tests: mounted on a fresh directory (root only; a test without
//! the right to mount prints a notice and skips), filled to the last page by a filler file, and
//! unmounted when dropped.

#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

pub struct Tmpfs {
    /// The mount point.
    pub path: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    /// Mount a tmpfs of `size` (as `mount -o size=` takes it, e.g. `4m`); `None`, with a notice
    /// on stderr, when it cannot be mounted (not root, no mount(8), a container without the
    /// capability).
    pub fn mount(test: &str, size: &str) -> Option<Tmpfs> {
        let parent = tempfile::tempdir().unwrap();
        let path = parent.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&path)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs {
                path,
                _parent: parent,
            }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED {test}: cannot mount a tmpfs (needs root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED {test}: cannot run mount(8): {e}");
                None
            }
        }
    }

    /// Fill the file system: `name` grows until the disk refuses another byte. Returns its path
    /// (remove it to give the space back).
    pub fn fill(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        let mut f = std::fs::File::create(&p).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        for size in [64 * 1024, 4096, 512, 1] {
            loop {
                match f.write(&chunk[..size]) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                    Err(e) => panic!("filling {}: {e}", p.display()),
                }
            }
        }
        let _ = f.sync_all();
        p
    }

    /// Bytes free, as df(1) would say.
    pub fn free(&self) -> u64 {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds a file open (a test that failed mid-way): detach it.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}
