//! A small tmpfs for full-disk tests (root only: a test without the right to mount says so and
//! skips), filled to the last byte by a filler file, and unmounted when dropped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::proc::is_root;

pub struct Tmpfs {
    /// The mount point.
    pub path: PathBuf,
    /// The directory that holds the mount point, when [`Tmpfs::mount`] made it.
    _parent: Option<tempfile::TempDir>,
}

/// The file that fills a [`Tmpfs`]: remove it to give the space back.
#[derive(Debug)]
pub struct Filler {
    pub path: PathBuf,
    /// How many bytes it took to fill the disk.
    pub bytes: u64,
}

impl AsRef<Path> for Filler {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Tmpfs {
    /// Mount a tmpfs of `size` (as `mount -o size=` takes it, e.g. `4m`) on a fresh directory;
    /// `None`, with a notice naming `test` on stderr, when it cannot be mounted (not root, no
    /// mount(8), a container without the capability).
    pub fn mount(test: &str, size: &str) -> Option<Tmpfs> {
        let parent = tempfile::tempdir().unwrap();
        let path = parent.path().join("disk");
        match Self::mount_on(&path, size) {
            Ok(mut t) => {
                t._parent = Some(parent);
                Some(t)
            }
            Err(why) => {
                eprintln!("SKIPPED {test}: cannot mount a tmpfs (needs root): {why}");
                None
            }
        }
    }

    /// Mount a tmpfs of `size` on `path` (created if missing); `Err` with the reason when not
    /// root or the mount fails.
    pub fn mount_on(path: &Path, size: &str) -> Result<Tmpfs, String> {
        if !is_root() {
            return Err("not root".into());
        }
        std::fs::create_dir_all(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount(8): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
            _parent: None,
        })
    }

    /// Fill the file system: `name` grows until the disk refuses another byte.
    pub fn fill(&self, name: &str) -> Filler {
        let p = self.path.join(name);
        let mut f = std::fs::File::create(&p).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        let mut bytes = 0u64;
        for size in [64 * 1024, 4096, 512, 1] {
            loop {
                match f.write(&chunk[..size]) {
                    Ok(0) => break,
                    Ok(n) => bytes += n as u64,
                    Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                    Err(e) => panic!("filling {}: {e}", p.display()),
                }
            }
        }
        let _ = f.sync_all();
        Filler { path: p, bytes }
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
            // Something still holds a file open (a case that failed mid-way, a process of it
            // still being reaped): detach it.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}
