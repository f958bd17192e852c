//! The mount table of this mount namespace (`/proc/self/mountinfo`), read with procfs
//! for every caller: live changes (what is on `/usr`), `install to-disk` (is the disk
//! mounted), `arbor mount` (is the mount point taken); and mounting an overlay on
//! `/usr` (a hotfix at boot, a live change).
//!
//! procfs splits the records but leaves the kernel's octal escapes (`\040` for a
//! space) in paths; they are undone here, so a path with a space compares equal.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rustix::mount::{self, MountFlags};

/// One mount.
#[derive(Clone, Debug)]
pub struct Mount {
    /// `major:minor` of the mounted device.
    pub majmin: String,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Its file system type (`overlay`, `ext4`, ...).
    pub fs_type: String,
    /// Its super-block options, for an overlay its layers (`upperdir=...`), unescaped.
    pub super_options: Vec<(String, Option<String>)>,
}

impl Mount {
    /// The value of a super-block option.
    pub fn option(&self, name: &str) -> Option<&str> {
        self.super_options
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// Undoes the kernel's escapes in a mountinfo field (`\040` space, `\011` tab, `\012`
/// newline, `\134` backslash).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(v) = b
                .get(i + 1..i + 4)
                .and_then(|o| std::str::from_utf8(o).ok())
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mounts of this mount namespace, in mount order (a later one covers an earlier
/// one on the same point).
pub fn list() -> Result<Vec<Mount>> {
    let infos = procfs::process::Process::myself()
        .and_then(|p| p.mountinfo())
        .context("reading /proc/self/mountinfo")?;
    Ok(infos
        .into_iter()
        .map(|m| Mount {
            majmin: m.majmin,
            mount_point: PathBuf::from(unescape(&m.mount_point.to_string_lossy())),
            fs_type: m.fs_type,
            super_options: m
                .super_options
                .into_iter()
                .map(|(k, v)| (k, v.map(|v| unescape(&v))))
                .collect(),
        })
        .collect())
}

/// Mounts an overlay on `usr` with `usr` itself (its current content) as the lower
/// layer.
pub fn mount_overlay(usr: &Path, upper: &Path, work: &Path) -> Result<()> {
    for p in [usr, upper, work] {
        let s = p.to_string_lossy();
        if s.contains([',', ':', '\\']) {
            bail!("{s}: overlayfs cannot take a path with ',' ':' or '\\\\'");
        }
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        usr.display(),
        upper.display(),
        work.display()
    );
    let data = std::ffi::CString::new(data).context("an overlay option with a NUL byte")?;
    mount::mount(
        "overlay",
        usr,
        "overlay",
        MountFlags::empty(),
        data.as_c_str(),
    )
    .with_context(|| format!("mounting an overlay on {}", usr.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_undone() {
        assert_eq!(unescape(r"/var/tmp/a\040b"), "/var/tmp/a b");
        assert_eq!(unescape(r"a\134b\011c"), "a\\b\tc");
        assert_eq!(unescape(r"trailing\04"), r"trailing\04");
    }

    #[test]
    fn the_root_is_mounted() {
        assert!(
            list()
                .unwrap()
                .iter()
                .any(|m| m.mount_point == std::path::Path::new("/"))
        );
    }
}
