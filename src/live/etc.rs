//! The `/etc` of a live root, merged as a deploy merges it: the booted deployment's
//! defaults, the pending one's, and the local changes.

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, Result, bail};
use rustix::fs::{self as rfs, FileType, Mode};

use crate::etc_merge;
use crate::fsutil;
use crate::inspect;
use crate::sysroot::{Deployment, Sysroot};

/// The /etc merge for the live root: (the new /etc as a plan, conflicts).
pub struct EtcPlan {
    pub actions: Vec<etc_merge::EtcAction>,
    pub local: etc_merge::EtcTree,
    pub changed: Vec<String>,
    pub conflicts: Vec<String>,
}

pub fn plan_etc(
    sysroot: &Sysroot,
    from: &Deployment,
    to: &Deployment,
    root: &Path,
) -> Result<EtcPlan> {
    let old_default = etc_merge::scan(&sysroot.deployment_path(from).join("usr/etc"))?;
    let new_default = etc_merge::scan(&sysroot.deployment_path(to).join("usr/etc"))?;
    let local = etc_merge::scan(&root.join("etc"))?;
    let actions = etc_merge::plan(&old_default, &local);
    let touched_locally: BTreeSet<&str> = actions
        .iter()
        .map(|a| match a {
            etc_merge::EtcAction::KeepLocal(p) | etc_merge::EtcAction::Remove(p) => p.as_str(),
        })
        .collect();
    let mut conflicts = Vec::new();
    let mut changed = Vec::new();
    let paths: BTreeSet<&String> = old_default.keys().chain(new_default.keys()).collect();
    for p in paths {
        if old_default.get(p) == new_default.get(p) {
            continue;
        }
        if touched_locally.contains(p.as_str()) {
            conflicts.push(format!("/etc/{p}"));
        } else {
            changed.push(format!("/etc/{p}"));
        }
    }
    Ok(EtcPlan {
        actions,
        local,
        changed,
        conflicts,
    })
}

/// Brings the live `/etc` to the merge of the pending deployment's defaults with the
/// local changes: the merged tree is built beside the layer, then each differing
/// entry is replaced in `/etc` by a rename.
pub fn merge_etc_live(
    sysroot: &Sysroot,
    to: &Deployment,
    root: &Path,
    etc: &EtcPlan,
    dir: &Path,
) -> Result<()> {
    let staged = dir.join("etc");
    let inspect::Node::Dir(tree, meta) = inspect::lookup(sysroot.repo(), &to.commit, "/usr/etc")?
    else {
        bail!("/usr/etc of the pending commit is not a directory");
    };
    let dir_fd = fsutil::open_dir(dir)?;
    crate::checkout::TreeCheckout::new(sysroot.repo(), true).run(
        dir_fd.as_fd(),
        b"etc",
        &tree,
        &meta,
    )?;
    let live_etc = root.join("etc");
    etc_merge::apply(&etc.actions, &etc.local, &live_etc, &staged)?;
    let merged = etc_merge::scan(&staged)?;
    let live_fd = fsutil::open_dir(&live_etc)?;
    let staged_fd = fsutil::open_dir(&staged)?;
    // Parents first for additions; children first for removals.
    for (rel, entry) in &merged {
        if etc.local.get(rel) == Some(entry) {
            continue;
        }
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let lp = if parent.is_empty() {
            fsutil::open_dir(&live_etc)?
        } else {
            fsutil::open_beneath(live_fd.as_fd(), parent)?
        };
        let sp = if parent.is_empty() {
            fsutil::open_dir(&staged)?
        } else {
            fsutil::open_beneath(staged_fd.as_fd(), parent)?
        };
        match entry {
            etc_merge::EtcEntry::Dir(m) => {
                if fsutil::kind_at(lp.as_fd(), name)? != Some(FileType::Directory) {
                    fsutil::remove_at(lp.as_fd(), name.as_bytes())?;
                    rfs::mkdirat(&lp, name, Mode::from_raw_mode(0o700))?;
                }
                fsutil::apply_meta_fd(
                    fsutil::open_dir_at(lp.as_fd(), name.as_bytes())?.as_fd(),
                    m,
                )?;
            }
            _ => {
                fsutil::remove_at(lp.as_fd(), name.as_bytes())?;
                rfs::renameat(&sp, name, &lp, name)
                    .with_context(|| format!("replacing /etc/{rel}"))?;
            }
        }
    }
    let gone: Vec<&String> = etc
        .local
        .keys()
        .filter(|k| !merged.contains_key(*k))
        .collect();
    for rel in gone.into_iter().rev() {
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let lp = if parent.is_empty() {
            fsutil::open_dir(&live_etc)?
        } else {
            match fsutil::open_beneath(live_fd.as_fd(), parent) {
                Ok(d) => d,
                Err(_) => continue,
            }
        };
        fsutil::remove_at(lp.as_fd(), name.as_bytes())?;
    }
    Ok(())
}
