//! What a switch that skips the boot loader leaves behind for the boot it starts
//! (docs/activation.md). A soft-reboot keeps the running kernel, so `/proc/cmdline`
//! still names the deployment the loader booted; a kexec starts the staged kernel
//! without the loader, so nothing counted the try. Two marks say what happened:
//!
//! - `/run/arbor/soft-reboot` names the deployment a soft-reboot switched into (`/run`
//!   is carried across a soft-reboot and starts empty at every kernel boot);
//! - `arbor/switch` on the physical root (it must outlive a kexec) says which step
//!   brought which deployment up, from which, so that its health check can fall back
//!   at once when it fails: no loader counts down the tries of a boot it never saw.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{Deployment, Sysroot};
use arbor_core::fsutil;

/// The switch under way, or that brought the booted deployment up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchMark {
    /// `soft-reboot`, `kexec` or `reboot`.
    pub step: String,
    /// The deployment switched into (`<commit>.<serial>`).
    pub deployment: String,
    /// The deployment switched from.
    pub from: String,
    /// This switch is itself the fall back from a failed one: it does not fall back
    /// again.
    pub fallback: bool,
}

impl Sysroot {
    fn switch_mark_path(&self) -> PathBuf {
        self.path().join("arbor/switch")
    }

    /// Records the switch about to happen (durably: a kexec follows at once).
    pub fn write_switch_mark(&self, mark: &SwitchMark) -> Result<()> {
        let path = self.switch_mark_path();
        let dir = fsutil::open_dir(path.parent().unwrap())
            .with_context(|| format!("opening {}", path.display()))?;
        fsutil::atomic_write(
            std::os::fd::AsFd::as_fd(&dir),
            "switch",
            serde_json::to_string(mark)?.as_bytes(),
            0o644,
        )
        .with_context(|| format!("writing {}", path.display()))
    }

    /// The switch recorded last, if any (an unreadable mark counts as none: it only
    /// ever makes a fall back quicker).
    pub fn switch_mark(&self) -> Option<SwitchMark> {
        let text = std::fs::read_to_string(self.switch_mark_path()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Forgets the recorded switch once the boot it started has its verdict.
    pub fn clear_switch_mark(&self) -> Result<()> {
        match std::fs::remove_file(self.switch_mark_path()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).context("removing the switch mark"),
        }
    }

    /// Where the running system notes the deployment a soft-reboot switches into.
    pub fn soft_reboot_mark_path(&self) -> PathBuf {
        self.run_dir().join("arbor/soft-reboot")
    }

    /// Notes that a soft-reboot switches into `d` (before the switch: the new
    /// userspace reads it to know which deployment it is).
    pub fn write_soft_reboot_mark(&self, d: &Deployment) -> Result<()> {
        let path = self.soft_reboot_mark_path();
        let dir = path.parent().unwrap();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let fd = fsutil::open_dir(dir)?;
        fsutil::atomic_write(
            std::os::fd::AsFd::as_fd(&fd),
            "soft-reboot",
            format!("arbor={}\n", d.arbor_karg()).as_bytes(),
            0o644,
        )
        .with_context(|| format!("writing {}", path.display()))
    }

    /// The `arbor=` value of the deployment a soft-reboot switched into, when the
    /// running root really is that deployment's folder (same device and inode: a mark
    /// left by a soft-reboot that never happened names a folder that is not `/`).
    pub(crate) fn soft_rebooted_karg(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.soft_reboot_mark_path()).ok()?;
        let value = text.trim().strip_prefix("arbor=")?.to_string();
        let (os, commit, serial) = arbor_boot::parse_arbor_karg(&value)?;
        arbor_boot::check_os_name(&os).ok()?;
        let folder = self
            .path()
            .join(format!("arbor/deploy/{os}/deploy/{commit}.{serial}"));
        same_inode(Path::new("/"), &folder).then_some(value)
    }
}

fn same_inode(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_soft_reboot_mark_names_a_folder_only_when_it_is_the_root() {
        let t = tempfile::tempdir().unwrap();
        assert!(same_inode(t.path(), t.path()));
        std::fs::create_dir(t.path().join("x")).unwrap();
        assert!(!same_inode(t.path(), &t.path().join("x")));
        assert!(!same_inode(t.path(), &t.path().join("missing")));
    }
}
