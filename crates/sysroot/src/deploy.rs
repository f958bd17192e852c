//! Deployments: deploy, rollback, undeploy, pin and cleanup, each one transaction under
//! the sysroot lock.
//!
//! Deploy writes the new deployment under a temporary name (hardlinked checkout, `/etc`
//! made from `/usr/etc` and merged with the current one, origin file), syncs, renames it
//! into place, installs its kernel, and only then switches the boot configuration in one
//! rename (see [`arbor_boot`]). A crash before the switch leaves the old configuration
//! and a leftover folder that the next transaction removes; after it, the new one. A
//! staged deploy stops before the merge and the switch; `finalize_staged` does both.

use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::arch;
use crate::etc::merge as etc_merge;
pub use crate::kargs::{KargEdit, edit_kargs, kargs};
use crate::plan::rollback_order;
pub use crate::plan::{DeployOptions, merge_source, next_order};
use crate::{Deployment, Origin, Sysroot};
use arbor_boot as boot;
use arbor_core::fsutil;
use arbor_core::lock::{LockWait, WriterLock};
use arbor_core::progress::{Observer, checkpoint};
use arbor_statedb::HistoryKind;
use arbor_store::ObjectId;
use arbor_store::checkout::TreeCheckout;
use arbor_store::inspect::{self, Node};
use arbor_store::prune::{self, PruneReport};
use arbor_store::reach::Root;

/// What a deploy did.
#[derive(Clone, Debug, Serialize, zvariant::Type, zvariant::Value, zvariant::OwnedValue)]
#[zvariant(signature = "dict")]
pub struct DeployResult {
    /// The new deployment (index 0: it boots next).
    pub deployment: Deployment,
    /// What the `/etc` merge did with each path the user or the update changed
    /// (empty for a staged deployment, merged when finalized).
    pub etc_merge: Vec<etc_merge::MergeEntry>,
    /// Deployments no longer in the boot order, removed.
    pub removed: Vec<String>,
}

/// Deploys `opts.commit` (which holds `opts.layers` already: `packages::layer::prepare`)
/// as the new default boot entry, or stages it, with the sysroot lock held (`lock`
/// proves it), reporting its steps to `obs`. `obs` may cancel it until the deployment
/// is written; after that it runs to the end, since stopping between the kernel
/// install and the boot switch would only leave more to clean up.
pub fn deploy(
    sysroot: &Sysroot,
    lock: &WriterLock,
    opts: &DeployOptions,
    obs: &dyn Observer,
) -> Result<DeployResult> {
    let repo = sysroot.repo();
    let stateroot = sysroot.stateroot(&opts.os);
    if !stateroot.join("deploy").is_dir() {
        return Err(arbor_core::error::Error::NoStateroot {
            os: opts.os.clone(),
            sysroot: sysroot.path().display().to_string(),
        }
        .into());
    }
    if !opts.layers_built && !opts.layers.is_empty() {
        bail!("internal: the layered packages are not built (packages::layer::prepare)");
    }
    // Before anything changes (a staged deployment is replaced below): a commit that
    // cannot boot must not cost the machine the deployment it had staged.
    arch::check(repo, &opts.commit)?;
    let commit_id = opts.commit;
    let Node::Dir(etc_tree, etc_meta) = inspect::lookup(repo, &commit_id, "/usr/etc")
        .context("the commit has no /usr/etc: compose it with 'arbor compose rootfs'")?
    else {
        bail!("/usr/etc in the commit is not a directory");
    };
    check_kernel(repo, &commit_id)?;
    remove_leftovers(sysroot)?;
    // A new deploy replaces a deployment staged earlier.
    sysroot.set_staged(lock, None)?;
    let current = sysroot.deployments()?;
    let commit = repo.load_commit(&commit_id)?;
    let deploy_dir = stateroot.join("deploy");
    let serial = (0..)
        .find(|s| !deploy_dir.join(format!("{}.{s}", commit_id)).exists())
        .unwrap();
    let name = format!("{}.{serial}", commit_id);
    // Rooted before anything names it, so no prune (from any path) can take it.
    let root = format!("{}/{name}", opts.os);
    repo.write_root(lock, &root, Some(&commit_id))?;
    let tmp_name = format!(".{name}.tmp");
    let tmp = deploy_dir.join(&tmp_name);
    let deploy_fd = fsutil::open_dir(&deploy_dir)?;
    let written = (|| -> Result<(Vec<etc_merge::MergeEntry>, boot::KernelFiles)> {
        checkpoint(obs)?;
        obs.task_begin("checkout");
        obs.percent("checking out the tree", 0);
        let mut files = TreeCheckout::new(repo, false);
        files.observer = Some(obs);
        files.run(
            deploy_fd.as_fd(),
            tmp_name.as_bytes(),
            &commit.root_tree,
            &commit.root_meta,
        )?;
        obs.task_end("checkout");
        arbor_core::failpoint::hit("deploy-checked-out")?;
        let kernel = boot::find_kernel(&tmp)?;
        obs.task_begin("etc");
        obs.percent("merging /etc", 60);
        // /etc is a copy (it is edited in place), made from the new default.
        let tmp_fd = fsutil::open_dir(&tmp)?;
        if tmp.join("etc").exists() {
            std::fs::remove_dir_all(tmp.join("etc"))?;
        }
        TreeCheckout::new(repo, true).run(tmp_fd.as_fd(), b"etc", &etc_tree, &etc_meta)?;
        // A staged deployment merges /etc when it is finalized, to catch later edits;
        // a reset keeps the pristine copy, but for the machine's own files.
        let actions = if let Some(r) = &opts.reset {
            if let Some(prev) = merge_source(&current, &opts.os) {
                let from = sysroot.deployment_path(prev).join("etc");
                super::etc_state::carry_etc(&from, &tmp.join("etc"), &r.keep_etc)?;
            }
            Vec::new()
        } else if opts.stage {
            Vec::new()
        } else {
            merge_etc(sysroot, lock, &current, &opts.os, &tmp.join("etc"))?
        };
        obs.task_end("etc");
        obs.percent("syncing", 70);
        fsutil::sync_filesystem(&tmp_fd).context("syncing the deployment")?;
        arbor_core::failpoint::hit("deploy-etc-merged")?;
        // The last point where stopping leaves nothing behind.
        checkpoint(obs)?;
        Ok((actions, kernel))
    })();
    let (etc_merge, kernel) = match written {
        Ok(a) => a,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            let _ = repo.write_root(lock, &root, None);
            return Err(e);
        }
    };
    // The machine's /var goes with it, unless a reset made a new one.
    let var = match &opts.reset {
        Some(r) => r.var.clone(),
        None => merge_source(&current, &opts.os).and_then(|d| d.origin.var.clone()),
    };
    let origin = Origin {
        refspec: opts.refspec.clone(),
        override_commit: opts.override_commit,
        image_digest: opts.image_digest.clone(),
        pinned: false,
        layers: opts.layers.clone(),
        var,
    };
    fsutil::atomic_write(
        deploy_fd.as_fd(),
        &format!("{name}.origin"),
        origin.to_text().as_bytes(),
        0o644,
    )
    .map_err(|e| arbor_store::write_error(e, || format!("writing {name}.origin")))?;
    // What the merge did, when there was one (a first deployment merges nothing).
    if !opts.stage && merge_source(&current, &opts.os).is_some() {
        super::etc_state::write_merge_record(sysroot, &opts.os, &name, &etc_merge)?;
    }
    arbor_core::failpoint::hit("deploy-origin-written")?;
    std::fs::rename(&tmp, deploy_dir.join(&name))?;
    rustix::fs::fsync(&deploy_fd)?;
    arbor_core::failpoint::hit("deploy-tree-in-place")?;
    let kernel = kernel.moved(&tmp, &deploy_dir.join(&name));
    obs.task_begin("kernel");
    obs.percent("installing the kernel", 80);
    let bootcsum = kernel_checksum(repo, &commit_id, &kernel)?;
    let installed = boot::install_kernel(
        sysroot.entry_store().kernels_root(),
        &opts.os,
        &kernel,
        &bootcsum,
    )?;
    arbor_core::failpoint::hit("deploy-kernel-installed")?;
    let inherited = merge_source(&current, &opts.os)
        .map(|d| d.kargs.clone())
        .unwrap_or_default();
    let new = Deployment {
        index: 0,
        os: opts.os.clone(),
        commit: commit_id,
        serial,
        origin,
        kargs: opts.kargs.clone().unwrap_or(inherited),
        version: commit.metadata_value("version").map(str::to_string),
        base: commit
            .metadata_value(crate::BASE_KEY)
            .and_then(|h| h.parse().ok()),
        image: commit
            .metadata_value(crate::IMAGE_DIGEST_KEY)
            .map(str::to_string),
        hotfix: false,
        hotfix_name: None,
        timestamp: commit.timestamp,
        booted: false,
        linux: installed.linux,
        initrd: installed.initrd,
        tries: Some(boot::NEW_ENTRY_TRIES),
        entry_file: String::new(),
    };
    if opts.stage {
        sysroot.set_staged(lock, Some(&new))?;
        arbor_core::failpoint::hit("deploy-staged")?;
        let removed = remove_unlisted(sysroot, lock, &current)?;
        return Ok(DeployResult {
            deployment: new,
            etc_merge,
            removed,
        });
    }
    obs.task_end("kernel");
    obs.task_begin("boot-entries");
    obs.percent("writing the boot entries", 90);
    let order = next_order(new.clone(), &current);
    sysroot.write_boot_order(lock, &order)?;
    obs.task_end("boot-entries");
    let removed = remove_unlisted(sysroot, lock, &order)?;
    obs.percent("done", 100);
    Ok(DeployResult {
        deployment: new,
        etc_merge,
        removed,
    })
}

/// Names a kernel + initramfs by content without reading them: the commit already has
/// both as file objects, whose ids hash their content (and metadata).
fn kernel_checksum(
    repo: &arbor_store::Repo,
    commit: &ObjectId,
    k: &boot::KernelFiles,
) -> Result<String> {
    let id = |name: &str| -> Result<Option<ObjectId>> {
        match inspect::lookup(repo, commit, &format!("/usr/lib/modules/{}/{name}", k.kver)) {
            Ok(Node::File(id)) => Ok(Some(id)),
            Ok(Node::Dir(..)) => bail!("/usr/lib/modules/{}/{name} is a directory", k.kver),
            Err(_) => Ok(None),
        }
    };
    let mut h = blake3::Hasher::new();
    h.update(&id("vmlinuz")?.context("the commit's kernel vanished")?.0);
    if k.initramfs.is_some() {
        if let Some(i) = id("initramfs.img")? {
            h.update(&i.0);
        }
    }
    Ok(h.finalize().to_hex().to_string())
}

/// Merges the local /etc of the stateroot's merge source into `new_etc`.
fn merge_etc(
    sysroot: &Sysroot,
    lock: &WriterLock,
    current: &[Deployment],
    os: &str,
    new_etc: &Path,
) -> Result<Vec<etc_merge::MergeEntry>> {
    let Some(prev) = merge_source(current, os) else {
        return Ok(Vec::new());
    };
    // The /etc being left, as it last ran: a snapshot in the store.
    super::etc_state::snapshot(sysroot, lock, prev)?;
    let prev_root = sysroot.deployment_path(prev);
    let old_root = prev_root.join("usr/etc");
    let old_default = etc_merge::scan(&old_root)?;
    let local = etc_merge::scan(&prev_root.join("etc"))?;
    etc_merge::merge_into(
        &old_default,
        &old_root,
        &local,
        &prev_root.join("etc"),
        new_etc,
    )
}

/// Refuses a commit without a kernel (`/usr/lib/modules/<version>/vmlinuz`, a regular
/// file), read from the commit itself: the checkout finds the same kernel later.
fn check_kernel(repo: &arbor_store::Repo, commit: &ObjectId) -> Result<()> {
    let has = inspect::list(repo, commit, "/usr/lib/modules", false)
        .unwrap_or_default()
        .iter()
        .filter(|e| e.type_char() == 'd' && e.path != "/usr/lib/modules")
        .any(|e| {
            inspect::list(repo, commit, &format!("{}/vmlinuz", e.path), false)
                .is_ok_and(|v| v.first().is_some_and(|f| f.type_char() == '-'))
        });
    if !has {
        bail!(
            "the commit has no kernel (no /usr/lib/modules/<version>/vmlinuz); \
             compose it from a tree with linux-image installed"
        );
    }
    Ok(())
}

/// Finalizes the staged deployment (run at shutdown): merges /etc as it is now, then
/// makes it the default boot entry. Does nothing when nothing is staged.
pub fn finalize_staged(sysroot: &Sysroot, wait: LockWait<'_>) -> Result<Option<DeployResult>> {
    let lock = sysroot.lock(wait)?;
    finalize_staged_locked(sysroot, &lock)
}

/// [`finalize_staged`] under the lock the caller holds: a soft-reboot or a kexec
/// finalizes right before its switch (docs/activation.md), as the shutdown would.
pub fn finalize_staged_locked(
    sysroot: &Sysroot,
    lock: &WriterLock,
) -> Result<Option<DeployResult>> {
    sysroot.record(HistoryKind::FinalizeStaged, || {
        let Some(new) = sysroot.staged()? else {
            return Ok(None);
        };
        let current = sysroot.deployments()?;
        let root = sysroot.deployment_path(&new);
        if !root.is_dir() {
            sysroot.set_staged(lock, None)?;
            bail!(
                "the staged deployment {} is gone; deploy again",
                new.dir_name()
            );
        }
        let etc_merge = merge_etc(sysroot, lock, &current, &new.os, &root.join("etc"))?;
        super::etc_state::write_merge_record(sysroot, &new.os, &new.dir_name(), &etc_merge)?;
        fsutil::sync_filesystem(fsutil::open_dir(&root)?).context("syncing the deployment")?;
        let order = next_order(new.clone(), &current);
        sysroot.write_boot_order(lock, &order)?;
        sysroot.set_staged(lock, None)?;
        let removed = remove_unlisted(sysroot, lock, &order)?;
        Ok(Some(DeployResult {
            deployment: new,
            etc_merge,
            removed,
        }))
    })
}

/// Makes the rollback deployment the default: the one after the booted one (or, with
/// nothing booted, the second), or the booted one again when another is pending.
pub fn rollback(sysroot: &Sysroot, lock: &WriterLock) -> Result<Vec<Deployment>> {
    let order = rollback_order(sysroot.deployments()?).ok_or_else(|| {
        arbor_core::error::Error::NothingPending(
            "there is no deployment to roll back to ('arbor status' lists them)".into(),
        )
    })?;
    // The booted /etc as it was when the machine is sent back: a snapshot.
    if order.first().is_some_and(|d| !d.booted) {
        super::etc_state::snapshot_booted(sysroot, lock)?;
    }
    sysroot.write_boot_order(lock, &order)?;
    sysroot.deployments()
}

/// Removes deployment `index` from the boot order and deletes it (never the booted one).
pub fn undeploy(sysroot: &Sysroot, lock: &WriterLock, index: usize) -> Result<Deployment> {
    let mut order = sysroot.deployments()?;
    if index >= order.len() {
        bail!(
            "there is no deployment {index} ('arbor status' lists {})",
            order.len()
        );
    }
    if order[index].booted {
        bail!("deployment {index} is the booted one and cannot be removed");
    }
    let d = order.remove(index);
    sysroot.write_boot_order(lock, &order)?;
    remove_unlisted(sysroot, lock, &order)?;
    Ok(d)
}

/// Drops the deployment that would boot next instead of the booted one (staged, or
/// made the default and not booted yet), as `rpm-ostree cleanup --pending` does:
/// the booted deployment boots again. Returns it, or None when nothing was pending.
pub fn drop_pending(sysroot: &Sysroot, lock: &WriterLock) -> Result<Option<Deployment>> {
    if let Some(d) = sysroot.staged()? {
        sysroot.set_staged(lock, None)?;
        remove_unlisted(sysroot, lock, &sysroot.deployments()?)?;
        return Ok(Some(d));
    }
    let order = sysroot.deployments()?;
    match order.first() {
        Some(d) if !d.booted && order.iter().any(|d| d.booted) => {
            undeploy(sysroot, lock, 0).map(Some)
        }
        _ => Ok(None),
    }
}

/// Pins (or unpins) deployment `index`: pinned deployments are never removed by deploy.
pub fn pin(
    sysroot: &Sysroot,
    _lock: &WriterLock,
    index: usize,
    pinned: bool,
) -> Result<Deployment> {
    let mut d = sysroot
        .deployments()?
        .into_iter()
        .nth(index)
        .with_context(|| format!("there is no deployment {index}"))?;
    d.origin.pinned = pinned;
    let path = sysroot.origin_path(&d);
    let dir = fsutil::open_dir(path.parent().unwrap())?;
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    fsutil::atomic_write(dir.as_fd(), &name, d.origin.to_text().as_bytes(), 0o644)?;
    Ok(d)
}

/// What cleanup removed.
#[derive(Clone, Debug, Serialize, zvariant::Type, zvariant::Value, zvariant::OwnedValue)]
#[zvariant(signature = "dict")]
pub struct CleanupResult {
    /// Deployment folders no boot entry names.
    pub deployments_removed: Vec<String>,
    /// Kernel folders in `boot/arbor` no entry uses.
    pub boot_folders_removed: Vec<String>,
    /// The prune of the repository that followed.
    pub prune: PruneReport,
}

/// Removes unreferenced deployments and boot folders, then prunes the repository
/// (refs and deployed commits are kept).
pub fn cleanup(sysroot: &Sysroot, lock: &WriterLock) -> Result<CleanupResult> {
    remove_leftovers(sysroot)?;
    let order = sysroot.deployments()?;
    let deployments_removed = remove_unlisted(sysroot, lock, &order)?;
    // The staged deployment's kernel too: finalizing it at shutdown names it.
    let staged = sysroot.staged()?;
    let used: Vec<String> = order
        .iter()
        .chain(staged.as_ref())
        .filter_map(|d| d.linux.split('/').nth(2).map(str::to_string))
        .collect();
    let mut boot_folders_removed = Vec::new();
    let kernels = sysroot.entry_store().kernels_root().join("arbor");
    if let Ok(entries) = std::fs::read_dir(&kernels) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !used.contains(&name) {
                std::fs::remove_dir_all(e.path())?;
                boot_folders_removed.push(name);
            }
        }
    }
    let prune = prune::prune(
        sysroot.repo(),
        prune::Owner::Held(lock),
        &deployment_roots(sysroot)?,
        false,
        LockWait::NoWait,
    )?;
    Ok(CleanupResult {
        deployments_removed,
        boot_folders_removed,
        prune,
    })
}

/// The commits a prune of the sysroot's repository must keep besides its refs: every
/// deployment's and the staged one's (a layered or hotfix commit of an older
/// deployment may have no ref any more). `cleanup` and `prune` both keep these.
pub fn deployment_roots(sysroot: &Sysroot) -> Result<Vec<Root>> {
    let mut list = sysroot.deployments()?;
    list.extend(sysroot.staged()?);
    Ok(list
        .iter()
        .map(|d| Root {
            label: format!("deployment {}/{}", d.os, d.dir_name()),
            commit: d.commit,
        })
        .collect())
}

/// Removes what crashed transactions left: temporary deployment folders, and scratch
/// folders of composes and layering nobody uses any more.
fn remove_leftovers(sysroot: &Sysroot) -> Result<()> {
    arbor_store::scratch::remove_stale(sysroot.repo().path())?;
    for os in list_stateroots(sysroot)? {
        let dir = sysroot.stateroot(&os).join("deploy");
        for e in std::fs::read_dir(&dir)?.flatten() {
            if e.file_name().to_string_lossy().starts_with('.') {
                let p = e.path();
                if e.file_type()?.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                }
                .with_context(|| format!("removing leftover {}", p.display()))?;
            }
        }
    }
    Ok(())
}

fn list_stateroots(sysroot: &Sysroot) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(sysroot.path().join("arbor/deploy"))?.flatten() {
        if e.file_type()?.is_dir() {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(out)
}

/// Deletes deployment folders (with their origins and hotfixes) that neither `order`
/// nor the staged record names, then drops their roots from the repository.
fn remove_unlisted(
    sysroot: &Sysroot,
    lock: &WriterLock,
    order: &[Deployment],
) -> Result<Vec<String>> {
    let staged = sysroot.staged()?;
    let order: Vec<&Deployment> = order.iter().chain(staged.as_ref()).collect();
    let mut removed = Vec::new();
    for os in list_stateroots(sysroot)? {
        let dir = sysroot.stateroot(&os).join("deploy");
        for e in std::fs::read_dir(&dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let base = name
                .strip_suffix(".origin")
                .or_else(|| name.strip_suffix(super::etc_state::MERGE_RECORD_SUFFIX))
                .unwrap_or(&name);
            if name.starts_with('.') || order.iter().any(|d| d.os == os && d.dir_name() == base) {
                continue;
            }
            let p = e.path();
            if e.file_type()?.is_dir() {
                fsutil::remove_tree(&p)?;
                removed.push(format!("{os}/{name}"));
                arbor_core::failpoint::hit("deploy-unlisted-removing")?;
                // Its kept /usr hotfix goes with it.
                let hotfix = sysroot.stateroot(&os).join("hotfix").join(&name);
                if hotfix.exists() {
                    fsutil::remove_tree(&hotfix)?;
                }
            } else {
                std::fs::remove_file(&p)?;
            }
        }
    }
    sysroot.sync_roots(lock)?;
    // `order` holds the staged deployment too.
    let live: Vec<Deployment> = order.iter().map(|d| (*d).clone()).collect();
    for os in list_stateroots(sysroot)? {
        removed.extend(super::var_dirs::remove_unused_vars(sysroot, &os, &live)?);
    }
    Ok(removed)
}
