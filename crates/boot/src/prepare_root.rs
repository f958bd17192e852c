//! Assembling the root filesystem of a deployment, as the initramfs does at boot.
//!
//! From `arbor=/arbor/deploy/<os>/deploy/<commit>.<serial>` on the kernel command line:
//! the deployment is bind-mounted at the target, its `/usr` made read-only (with its
//! kept hotfix overlay on top, if it has one), `/etc` left writable, the stateroot's `/var` (the one its origin names) bound onto `/var`, and the physical root
//! bound at `/sysroot`; a read-only physical root is first made writable. Tested against a folder inside a private mount namespace; the
//! initramfs-tools scripts in `initramfs-tools/` run it at boot.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rustix::mount::{self, MountFlags, UnmountFlags};
use serde::Serialize;

use crate::{check_os_name, parse_arbor_karg};

/// What prepare-root mounted, in order.
#[derive(Clone, Debug, Serialize)]
pub struct PreparedRoot {
    /// The deployment that now forms the root.
    pub deployment: PathBuf,
    /// Mount points made, first to last.
    pub mounts: Vec<PathBuf>,
}

/// Reads `arbor=` from a kernel command line and checks it names a deployment of
/// `sysroot` (no path tricks: the value must parse as our own layout).
pub fn deployment_from_cmdline(sysroot: &Path, cmdline: &str) -> Result<PathBuf> {
    let value = cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix("arbor="))
        .context("no arbor= on the kernel command line")?;
    let (os, commit, serial) = parse_arbor_karg(value)
        .with_context(|| format!("arbor={value} does not name a deployment"))?;
    check_os_name(&os)?;
    let path = sysroot.join(format!("arbor/deploy/{os}/deploy/{commit}.{serial}"));
    if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
        bail!("arbor={value}: no such deployment in {}", sysroot.display());
    }
    Ok(path)
}

fn bind(from: &Path, to: &Path, done: &mut Vec<PathBuf>) -> Result<()> {
    if !std::fs::symlink_metadata(to).is_ok_and(|m| m.is_dir()) {
        bail!("{} is not a directory to mount on", to.display());
    }
    mount::mount_bind(from, to)
        .with_context(|| format!("binding {} on {}", from.display(), to.display()))?;
    done.push(to.to_path_buf());
    Ok(())
}

/// Removes the hotfixes `usroverlay --commit` turned into a deployment: from this
/// boot on, that deployment carries the fix, and the old one boots as it was.
fn drop_committed_hotfixes(dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(()); // no hotfix was ever made
    };
    for e in entries {
        let path = e?.path();
        let committed = super::hotfix::OverlayInfo::read(&path)
            .map(|i| i.committed.is_some())
            .unwrap_or(false);
        if committed {
            arbor_core::fsutil::remove_tree(&path)
                .with_context(|| format!("removing the committed hotfix {}", path.display()))?;
        }
    }
    Ok(())
}

/// The stateroot folder the deployment binds on `/var`: its origin's (a reset gives a
/// deployment its own), the shared `var` when it names none or has no origin file.
/// A folder that is missing stops the boot rather than boot on an empty `/var`.
fn var_of(deployment: &Path) -> Result<String> {
    let origin = PathBuf::from(format!("{}.origin", deployment.display()));
    let var = match std::fs::read_to_string(&origin) {
        Ok(text) => crate::origin::Origin::parse(&text)
            .with_context(|| format!("reading {}", origin.display()))?
            .var_dir()
            .to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => super::origin::SHARED_VAR.into(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", origin.display())),
    };
    let stateroot = deployment
        .parent()
        .and_then(Path::parent)
        .context("deployment path")?;
    if !stateroot.join(&var).is_dir() {
        bail!(
            "the deployment's /var ({}) is missing",
            stateroot.join(&var).display()
        );
    }
    Ok(var)
}

/// Mounts the root of the deployment named by `cmdline` at `target`. On failure, what
/// was mounted is unmounted again.
pub fn prepare_root(sysroot: &Path, cmdline: &str, target: &Path) -> Result<PreparedRoot> {
    let deployment = deployment_from_cmdline(sysroot, cmdline)?;
    // A boot starts with an empty /run: the live state of the last boot is gone. For a
    // folder sysroot, whose run folder is on disk, forget it here.
    if sysroot != Path::new("/") {
        for stale in ["run/arbor/live", "run/arbor/usroverlay"] {
            let p = sysroot.join(stale);
            if p.exists() {
                arbor_core::fsutil::remove_tree(&p)?;
            }
        }
    }
    // The deployment's /etc is edited in place, so the physical root must be writable
    // whether or not `rw` was on the command line (Debian's initramfs mounts it
    // read-only by default). Only a read-only one is remounted.
    let vfs = rustix::fs::statvfs(sysroot)
        .with_context(|| format!("reading the mount flags of {}", sysroot.display()))?;
    if vfs.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
        mount::mount_remount(sysroot, MountFlags::empty(), "")
            .with_context(|| format!("mounting {} read-write", sysroot.display()))?;
    }
    let stateroot = deployment
        .parent()
        .and_then(Path::parent)
        .context("deployment path")?;
    drop_committed_hotfixes(&stateroot.join("hotfix"))?;
    let var = var_of(&deployment)?;
    let mut mounts = Vec::new();
    let result = (|| -> Result<()> {
        bind(&deployment, target, &mut mounts)?;
        // The bind is a peer of the physical root's mount when that is shared (the
        // running system's is, for a soft-reboot's /run/nextroot): the mounts below
        // would show up under the deployment's folder too, where systemd unmounts
        // them at the switch, and the unmount would come back here.
        mount::mount_change(target, mount::MountPropagationFlags::PRIVATE)
            .with_context(|| format!("making {} a private mount", target.display()))?;
        let usr = target.join("usr");
        bind(&usr, &usr, &mut mounts)?;
        mount::mount_remount(&usr, MountFlags::BIND | MountFlags::RDONLY, "")
            .with_context(|| format!("making {} read-only", usr.display()))?;
        // A kept hotfix (`usroverlay --hotfix`) of this deployment comes back.
        if let Some(name) = deployment.file_name() {
            let hotfix = stateroot.join("hotfix").join(name);
            if hotfix.join("upper").is_dir() {
                arbor_core::mounts::mount_overlay(
                    &usr,
                    &hotfix.join("upper"),
                    &hotfix.join("work"),
                )?;
                mounts.push(usr.clone());
            }
        }
        bind(&stateroot.join(&var), &target.join("var"), &mut mounts)?;
        bind(sysroot, &target.join("sysroot"), &mut mounts)?;
        Ok(())
    })();
    if let Err(e) = result {
        for m in mounts.iter().rev() {
            let _ = mount::unmount(m, UnmountFlags::DETACH);
        }
        return Err(e);
    }
    Ok(PreparedRoot { deployment, mounts })
}
