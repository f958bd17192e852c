//! Live changes through overlayfs (DESIGN §4): a writable `/usr` for hotfixes
//! (`usroverlay`), and moving the running system to the pending deployment without a
//! reboot (`apply-live`).
//!
//! Both mount an overlay on the live root's `/usr` whose lower layer is the running
//! deployment's read-only `/usr`, so the deployment and the store below it are never
//! written. Transient state lives under the sysroot's run folder (a tmpfs on a
//! machine, so a reboot drops it); a hotfix lives beside its deployment and
//! prepare-root mounts it again at each boot.

pub mod activate;
pub mod activation;
pub mod apply;
pub mod changes;
mod etc;
pub mod hotfix_commit;
pub mod ladder;
pub mod overlay;
pub mod plan;
pub mod request;
pub mod swap;
mod upper;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rustix::mount::{self, UnmountFlags};
use serde::Serialize;

use arbor_sysroot::{Deployment, Sysroot};

pub use request::{UsrOverlayOutcome, UsrOverlayRequest};

/// An overlay mounted on a `/usr`, as `/proc/self/mountinfo` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsrMount {
    /// Its upper layer (where writes go).
    pub upper: PathBuf,
}

/// What the overlay on `/usr` is for.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    zvariant::Type,
    zvariant::Value,
    zvariant::OwnedValue,
)]
#[zvariant(signature = "s", rename_all = "kebab-case")]
#[serde(rename_all = "kebab-case")]
pub enum OverlayKind {
    /// `usroverlay`: writable until the next boot.
    Transient,
    /// `usroverlay --hotfix`: writable, and mounted again at every boot of this
    /// deployment.
    Hotfix,
    /// `apply-live`: the difference to another commit.
    Live,
}

/// The state of the live root's `/usr`.
#[derive(Clone, Debug, Serialize, zvariant::Type, zvariant::Value, zvariant::OwnedValue)]
#[zvariant(signature = "dict")]
pub struct UsrStatus {
    /// The running deployment.
    pub deployment: String,
    /// What the overlay on `/usr` is, if there is one.
    pub overlay: Option<OverlayKind>,
    /// The overlay's upper layer (where writes go), if there is one.
    pub upper: Option<String>,
    /// The commit `/usr` shows when apply-live made it another than the deployment's.
    pub live_commit: Option<arbor_store::ObjectId>,
    /// The overlay's label (`--name`).
    pub name: Option<String>,
    /// The commit `--commit` made of the overlay, deployed for the next boot.
    pub committed: Option<arbor_store::ObjectId>,
}

pub use arbor_core::mounts::mount_overlay;

/// The overlay mounted on `usr` in this mount namespace (the topmost mount there).
pub fn usr_mount(usr: &Path) -> Result<Option<UsrMount>> {
    let usr = usr.canonicalize().unwrap_or_else(|_| usr.to_path_buf());
    let top = arbor_core::mounts::list()?
        .into_iter()
        .rfind(|m| m.mount_point == usr);
    Ok(top
        .filter(|m| m.fs_type == "overlay")
        .and_then(|m| m.option("upperdir").map(PathBuf::from))
        .map(|upper| UsrMount { upper }))
}

/// The running deployment; live changes need one.
pub fn booted(sysroot: &Sysroot) -> Result<Deployment> {
    sysroot
        .deployments()?
        .into_iter()
        .find(|d| d.booted)
        .context("no deployment of this sysroot is running (arbor= on the kernel command line)")
}

fn transient_dir(sysroot: &Sysroot, d: &Deployment) -> PathBuf {
    sysroot
        .run_dir()
        .join("arbor/usroverlay")
        .join(format!("{}-{}", d.os, d.dir_name()))
}

/// Where apply-live keeps its layer and its record.
pub fn live_dir(sysroot: &Sysroot) -> PathBuf {
    arbor_sysroot::live_record::live_dir(sysroot)
}

fn kind_of(sysroot: &Sysroot, d: &Deployment, upper: &Path) -> OverlayKind {
    if upper.starts_with(sysroot.hotfix_dir(d)) {
        OverlayKind::Hotfix
    } else if upper.starts_with(live_dir(sysroot)) {
        OverlayKind::Live
    } else {
        OverlayKind::Transient
    }
}

/// What `/usr` of the live root `root` is now.
pub fn status(sysroot: &Sysroot, root: &Path) -> Result<UsrStatus> {
    let d = booted(sysroot)?;
    let mount = usr_mount(&root.join("usr"))?;
    let overlay = mount.as_ref().map(|m| kind_of(sysroot, &d, &m.upper));
    let live_commit = match overlay {
        Some(OverlayKind::Live) => arbor_sysroot::live_record::LiveRecord::read(sysroot)?
            .filter(|r| r.booted == d.dir_name())
            .map(|r| r.commit),
        _ => None,
    };
    let info = match (overlay, &mount) {
        (Some(OverlayKind::Transient | OverlayKind::Hotfix), Some(m)) => {
            overlay::OverlayInfo::read(m.upper.parent().unwrap_or(&m.upper))?
        }
        _ => overlay::OverlayInfo::default(),
    };
    Ok(UsrStatus {
        deployment: format!("{}/{}", d.os, d.dir_name()),
        overlay,
        upper: mount.map(|m| m.upper.display().to_string()),
        live_commit,
        name: info.name,
        committed: info.committed,
    })
}

/// Makes the live root's `/usr` writable through an overlay: until the next boot, or
/// with `hotfix` for every boot of this deployment; `name` labels it.
pub fn usroverlay(
    sysroot: &Sysroot,
    root: &Path,
    hotfix: bool,
    name: Option<&str>,
) -> Result<UsrStatus> {
    if let Some(n) = name {
        overlay::check_name(n)?;
    }
    let d = booted(sysroot)?;
    let usr = root.join("usr");
    if let Some(m) = usr_mount(&usr)? {
        bail!(
            "{} already has an overlay ({:?}, upper layer {}); 'arbor usroverlay --remove' first",
            usr.display(),
            kind_of(sysroot, &d, &m.upper),
            m.upper.display()
        );
    }
    let dir = if hotfix {
        sysroot.hotfix_dir(&d)
    } else {
        transient_dir(sysroot, &d)
    };
    // A leftover of an earlier overlay of this kind starts over (a hotfix one is kept:
    // it is what the hotfix is).
    if !hotfix && dir.exists() {
        arbor_core::fsutil::remove_tree(&dir)?;
    }
    for sub in ["upper", "work"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("creating {}", dir.join(sub).display()))?;
    }
    let mut info = overlay::OverlayInfo::read(&dir)?;
    if info.created == 0 {
        info.created = arbor_store::commit::default_timestamp()?;
    }
    if let Some(n) = name {
        info.name = Some(n.to_string());
    }
    info.write(&dir)?;
    mount_overlay(&usr, &dir.join("upper"), &dir.join("work"))?;
    if let Some(n) = &info.name {
        sysroot.set_history_detail(format!("name: {n}"));
    }
    status(sysroot, root)
}

/// Labels the overlay on the live root's `/usr` (`usroverlay --name` alone), making
/// a transient one when there is none.
pub fn usroverlay_name(sysroot: &Sysroot, root: &Path, name: &str) -> Result<UsrStatus> {
    overlay::check_name(name)?;
    if usr_mount(&root.join("usr"))?.is_none() {
        return usroverlay(sysroot, root, false, Some(name));
    }
    let found = overlay::find(sysroot, root, None)?;
    if found.kind == OverlayKind::Live {
        bail!("/usr shows a live-applied commit, which has no name");
    }
    let mut info = overlay::OverlayInfo::read(&found.dir)?;
    info.name = Some(name.to_string());
    info.write(&found.dir)?;
    sysroot.set_history_detail(format!("name: {name}"));
    status(sysroot, root)
}

/// Copies files and folders into the live root's `/usr` (`usroverlay --add`): each
/// item is (source, path below `/usr`), see [`overlay::parse_add`]. Without an
/// overlay one is made first (transient, or kept with `hotfix`).
pub fn usroverlay_add(
    sysroot: &Sysroot,
    root: &Path,
    items: &[(PathBuf, String)],
    hotfix: bool,
    name: Option<&str>,
) -> Result<UsrStatus> {
    let d = booted(sysroot)?;
    match usr_mount(&root.join("usr"))? {
        None => {
            usroverlay(sysroot, root, hotfix, name)?;
        }
        Some(m) => {
            let kind = kind_of(sysroot, &d, &m.upper);
            if kind == OverlayKind::Live {
                bail!(
                    "/usr shows a live-applied commit; 'arbor apply-live --reset' before adding files"
                );
            }
            if hotfix && kind != OverlayKind::Hotfix {
                bail!(
                    "/usr has a transient overlay; --hotfix asks for a kept one ('arbor usroverlay --remove' first)"
                );
            }
            if let Some(n) = name {
                usroverlay_name(sysroot, root, n)?;
            }
        }
    }
    let added = overlay::add(root, items)?;
    let st = status(sysroot, root)?;
    let label = st
        .name
        .as_deref()
        .map(|n| format!(" ({n})"))
        .unwrap_or_default();
    sysroot.set_history_detail(format!("added{label}: {}", added.join(" ")));
    Ok(st)
}

/// Unmounts the overlay on the live root's `/usr` and drops its layer (for a hotfix:
/// it is not mounted at the next boot either). An apply-live layer is removed with
/// `apply-live --reset` instead.
pub fn usroverlay_remove(sysroot: &Sysroot, root: &Path) -> Result<UsrStatus> {
    let d = booted(sysroot)?;
    let usr = root.join("usr");
    let hotfix = sysroot.hotfix_dir(&d);
    match usr_mount(&usr)? {
        Some(m) if kind_of(sysroot, &d, &m.upper) == OverlayKind::Live => {
            bail!("/usr shows a live-applied commit: 'arbor apply-live --reset' removes it")
        }
        Some(_) => {
            mount::unmount(&usr, UnmountFlags::DETACH)
                .with_context(|| format!("unmounting the overlay on {}", usr.display()))?;
        }
        None if hotfix.exists() => {} // not mounted in this namespace, but kept for boot
        None => bail!("{} has no overlay", usr.display()),
    }
    for dir in [hotfix, transient_dir(sysroot, &d)] {
        if dir.exists() {
            arbor_core::fsutil::remove_tree(&dir)?;
        }
    }
    status(sysroot, root)
}
