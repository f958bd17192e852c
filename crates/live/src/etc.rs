//! The `/etc` of a live root, merged as a deploy merges it: the booted deployment's
//! defaults, the pending one's, and the local changes.

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Result, bail};

use super::swap;
use arbor_core::fsutil;
use arbor_store::inspect;
use arbor_sysroot::etc::merge as etc_merge;
use arbor_sysroot::{Deployment, Sysroot};

/// The /etc merge for the live root: (the new /etc as a plan, conflicts).
pub struct EtcPlan {
    /// What the local state carries into the merge.
    pub actions: Vec<etc_merge::EtcAction>,
    /// The live `/etc` as it was scanned.
    pub local: etc_merge::EtcTree,
    /// Paths whose default changes and that take the new default.
    pub changed: Vec<String>,
    /// Paths whose default changes where the live `/etc` changed too (and does not
    /// already hold the new default).
    pub conflicts: Vec<String>,
}

/// Plans the live `/etc` merge: the booted deployment's defaults (`old_default`)
/// against the pending one's (`new_default`), with the live `/etc` as the local state.
pub fn plan_etc(
    old_default: &etc_merge::EtcTree,
    new_default: &etc_merge::EtcTree,
    root: &Path,
) -> Result<EtcPlan> {
    let local = etc_merge::scan(&root.join("etc"))?;
    let actions = etc_merge::plan(old_default, &local);
    let (changed, conflicts) = classify(old_default, new_default, &local, &actions);
    Ok(EtcPlan {
        actions,
        local,
        changed,
        conflicts,
    })
}

/// Splits the paths whose default changes into those the merge can take (changed) and
/// those the administrator changed too (conflicts). A local version that already is
/// the new default is no conflict: an earlier, interrupted apply-live put it there.
fn classify(
    old_default: &etc_merge::EtcTree,
    new_default: &etc_merge::EtcTree,
    local: &etc_merge::EtcTree,
    actions: &[etc_merge::EtcAction],
) -> (Vec<String>, Vec<String>) {
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
        if touched_locally.contains(p.as_str()) && local.get(p) != new_default.get(p) {
            conflicts.push(format!("/etc/{p}"));
        } else {
            changed.push(format!("/etc/{p}"));
        }
    }
    (changed, conflicts)
}

/// The live `/etc` merge, written beside the live entries and ready to be switched in
/// (see [`swap`]): nothing visible has changed until [`swap::Swap::commit`].
pub fn prepare_etc_live(
    sysroot: &Sysroot,
    to: &Deployment,
    root: &Path,
    etc: &EtcPlan,
    dir: &Path,
) -> Result<swap::Swap> {
    let live_etc = root.join("etc");
    // What an interrupted run left must not be taken for local files.
    swap::remove_temporaries(&live_etc)?;
    // The merged tree is built in the layer's folder (the run folder: another mount).
    let staged = dir.join("etc");
    if staged.exists() {
        fsutil::remove_tree(&staged)?;
    }
    let inspect::Node::Dir(tree, meta) = inspect::lookup(sysroot.repo(), &to.commit, "/usr/etc")?
    else {
        bail!("/usr/etc of the pending commit is not a directory");
    };
    let dir_fd = fsutil::open_dir(dir)?;
    arbor_store::checkout::TreeCheckout::new(sysroot.repo(), true).run(
        dir_fd.as_fd(),
        b"etc",
        &tree,
        &meta,
    )?;
    etc_merge::apply(&etc.actions, &etc.local, &live_etc, &staged)?;
    let merged = etc_merge::scan(&staged)?;
    let steps = swap::plan(&etc.local, &merged);
    swap::Swap::prepare(&live_etc, &staged, steps, "/etc")
}

#[cfg(test)]
mod tests {
    use super::*;
    use arbor_sysroot::etc::merge::EtcTree;
    use arbor_sysroot::etc::merge::testing::file;

    fn tree(entries: &[(&str, u8)]) -> EtcTree {
        entries
            .iter()
            .map(|(p, c)| (p.to_string(), file(*c)))
            .collect()
    }

    #[test]
    fn a_local_file_that_already_is_the_new_default_is_no_conflict() {
        let old = tree(&[("a", 1), ("b", 1), ("c", 1)]);
        let new = tree(&[("a", 2), ("b", 2), ("c", 2)]);
        // a: untouched; b: already the new default (an interrupted run); c: edited.
        let local = tree(&[("a", 1), ("b", 2), ("c", 9)]);
        let actions = etc_merge::plan(&old, &local);
        let (changed, conflicts) = classify(&old, &new, &local, &actions);
        assert_eq!(changed, ["/etc/a", "/etc/b"]);
        assert_eq!(conflicts, ["/etc/c"]);
    }
}
