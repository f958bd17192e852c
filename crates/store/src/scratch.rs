//! Scratch folders beside the objects (same filesystem, so checkouts there hardlink):
//! compose, layering and export build their trees in them.
//!
//! Each holds an flock on a file inside it for as long as it is in use. A process
//! killed mid-way leaves its folder behind with the lock released, which
//! [`remove_stale`] recognizes and removes; a folder in use elsewhere is left alone.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rustix::fs::{FlockOperation, flock};

const PREFIX: &str = ".scratch-";
const LOCK: &str = ".in-use";

/// A scratch folder in use; removed when dropped.
pub struct ScratchDir {
    // Field order matters: the folder goes first, then the lock is released.
    dir: tempfile::TempDir,
    _lock: File,
}

impl ScratchDir {
    /// A new scratch folder in `parent`, named after what it is for.
    pub fn new(parent: &Path, purpose: &str) -> Result<ScratchDir> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{purpose}-"))
            .tempdir_in(parent)
            .with_context(|| format!("creating a scratch folder in {}", parent.display()))?;
        let lock = File::create(dir.path().join(LOCK))?;
        flock(lock.as_fd(), FlockOperation::NonBlockingLockExclusive)?;
        Ok(ScratchDir { dir, _lock: lock })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Removes the scratch folders in `parent` that nobody uses any more (left by a
/// crash); returns them.
pub fn remove_stale(parent: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for e in std::fs::read_dir(parent)?.flatten() {
        if !e.file_name().to_string_lossy().starts_with(PREFIX) || !e.file_type()?.is_dir() {
            continue;
        }
        let p = e.path();
        let stale = match File::open(p.join(LOCK)) {
            Ok(f) => flock(f.as_fd(), FlockOperation::NonBlockingLockExclusive).is_ok(),
            // Between the folder's creation and its lock file's: only an old one is stale.
            Err(_) => e
                .metadata()?
                .modified()?
                .elapsed()
                .is_ok_and(|age| age.as_secs() > 3600),
        };
        if stale {
            arbor_core::fsutil::remove_tree(&p)
                .with_context(|| format!("removing the stale scratch folder {}", p.display()))?;
            removed.push(p);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unused_scratch_folders_are_removed() {
        let t = tempfile::tempdir().unwrap();
        let busy = ScratchDir::new(t.path(), "busy").unwrap();
        let dead = ScratchDir::new(t.path(), "dead").unwrap();
        let dead_path = dead.path().to_path_buf();
        // A crash: the folder stays, the lock goes with the process.
        let ScratchDir { dir, _lock } = dead;
        let kept = dir.keep();
        drop(_lock);
        assert_eq!(kept, dead_path);
        std::fs::create_dir(t.path().join("unrelated")).unwrap();
        let removed = remove_stale(t.path()).unwrap();
        assert_eq!(removed, vec![dead_path.clone()]);
        assert!(busy.path().exists() && !dead_path.exists());
        assert!(t.path().join("unrelated").exists());
    }
}
