//! Fixture: a small tmpfs mounted on a directory for the length of a case (root only), so that a
//! spool's disk can really fill up. Unmounted when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::site::is_root;

pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    /// Mount a tmpfs of `size` (e.g. `"16m"`) on `path` (created); `Err` with the reason when
    /// not root or the mount fails.
    pub fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
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
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process of the case that is still being reaped does not keep it mounted.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
