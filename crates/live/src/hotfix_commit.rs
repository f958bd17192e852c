//! `usroverlay --commit`: a fix tested live on `/usr` becomes a real deployment.
//!
//! The new commit is the booted commit with its `/usr` edited where the overlay's
//! upper layer says: only those paths are read (through the mounted overlay, which
//! shows their final content) and stored; every other entry keeps its object id, so
//! `arbor diff` between the two commits lists exactly the overlay's changes. It is
//! deployed as the next boot with the booted deployment's origin and layers, and the
//! overlay is marked as committed: prepare-root drops a committed hotfix at the next
//! boot, since the deployment now carries it.

use arbor_store::encoding::DirMetaEncoding;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::OverlayKind;
use super::changes::{self, Change};
use super::overlay::{self, OverlayInfo};
use arbor_core::fsutil;
use arbor_core::lock::{LockWait, WriterLock};
use arbor_core::progress::Observer;
use arbor_statedb::InodeCache;
use arbor_store::commit::{Item, TreeWriter};
use arbor_store::encoding::DirEntry;
use arbor_store::encoding::Xattrs;
use arbor_store::refs::RefName;
use arbor_store::{Commit, ObjectId, ObjectKind, Repo, Transaction};
use arbor_sysroot::deploy::{DeployResult, deploy};
use arbor_sysroot::plan::DeployOptions;
use arbor_sysroot::{BASE_KEY, Sysroot};

/// Commit metadata: the overlay's name.
pub const NAME_KEY: &str = "arbor.usroverlay.name";
/// Commit metadata: the booted commit the overlay was on.
pub const FROM_KEY: &str = "arbor.usroverlay.from";

/// What `usroverlay --commit` made.
#[derive(Clone, Debug, Serialize, zvariant::Type, zvariant::Value, zvariant::OwnedValue)]
#[zvariant(signature = "dict")]
pub struct OverlayCommit {
    /// The new commit.
    pub commit: ObjectId,
    /// The commit it was made on (the booted one).
    pub from: ObjectId,
    /// The overlay's name, if it had one.
    pub name: Option<String>,
    /// What it changed, as `--list` shows it.
    pub changes: Vec<Change>,
    /// The new pending deployment.
    pub deploy: DeployResult,
}

/// Writes the `/usr` directory edited by one upper-layer directory: `base` is its
/// dirtree in the booted commit, `upper` the upper layer's directory, `view` the same
/// directory through the mounted overlay.
fn edit_dir(
    w: &TreeWriter<'_, '_>,
    repo: &Repo,
    base: &ObjectId,
    upper: BorrowedFd<'_>,
    view: BorrowedFd<'_>,
    path: &str,
) -> Result<(ObjectId, ObjectId)> {
    let mut tree = repo.load_dirtree(base)?;
    for (name, kind) in fsutil::list_dir(upper)? {
        let shown = format!("{path}/{}", fsutil::show(&name));
        let old_dir = tree.dirs.iter().find(|e| e.name == name).map(|e| e.tree);
        tree.files.retain(|e| e.name != name);
        tree.dirs.retain(|e| e.name != name);
        if fsutil::is_overlay_whiteout(upper, &name)? {
            continue;
        }
        let merge =
            kind == rustix::fs::FileType::Directory && !fsutil::is_overlay_opaque(upper, &name)?;
        match old_dir {
            Some(old) if merge => {
                let u = fsutil::open_dir_at(upper, &name)?;
                let v =
                    fsutil::open_dir_at(view, &name).with_context(|| format!("opening {shown}"))?;
                let (t, m) = edit_dir(w, repo, &old, u.as_fd(), v.as_fd(), &shown)?;
                tree.dirs.push(DirEntry {
                    name,
                    tree: t,
                    meta: m,
                });
            }
            _ => match w.write_entry(view, name, path)? {
                Item::File(f) => tree.files.push(f),
                Item::Dir(d) => tree.dirs.push(d),
                Item::Skipped => {}
            },
        }
    }
    tree.sort();
    let tree_id = w.txn().write_meta(ObjectKind::DirTree, &tree.encode())?;
    let st = rustix::fs::fstat(view)?;
    let xattrs = fsutil::read_xattrs_fd(view)?
        .pairs()
        .iter()
        .filter(|(k, _)| !k.starts_with(fsutil::OVERLAY_XATTR_PREFIX))
        .cloned()
        .collect();
    let meta = fsutil::meta_from_stat(&st, Xattrs::new(xattrs));
    let meta_id = w
        .txn()
        .write_meta(ObjectKind::DirMeta, &meta.encode_dirmeta())?;
    Ok((tree_id, meta_id))
}

/// Turns the overlay on the live root's `/usr` into a commit on the booted commit and
/// deploys it as the next boot, with the booted deployment's origin and layers.
pub fn commit_overlay(
    sysroot: &Sysroot,
    lock: &WriterLock,
    root: &Path,
    message: Option<&str>,
    obs: &dyn Observer,
) -> Result<OverlayCommit> {
    let found = overlay::find(sysroot, root, None)?;
    let d = found.deployment.clone();
    if found.kind == OverlayKind::Live {
        bail!("/usr shows a live-applied commit, not a usroverlay: it is already a deployment");
    }
    if !found.mounted {
        bail!(
            "the hotfix of {}/{} is not mounted on {}/usr; it is what /usr shows after the next boot",
            d.os,
            d.dir_name(),
            root.display()
        );
    }
    let mut info = OverlayInfo::read(&found.dir)?;
    let list = changes::list(&found.upper(), &sysroot.deployment_path(&d).join("usr"))?;
    if list.is_empty() {
        bail!("the overlay changes nothing in /usr: there is nothing to commit");
    }
    let repo = sysroot.repo();
    let booted = repo.load_commit(&d.commit)?;
    obs.task_begin("commit");
    let txn = Transaction::begin(repo, LockWait::NoWait)?;
    let cache = InodeCache::default();
    let writer = TreeWriter::new(&txn, &cache, false);
    let mut root_tree = repo.load_dirtree(&booted.root_tree)?;
    let usr = root_tree
        .dirs
        .iter_mut()
        .find(|e| e.name == b"usr")
        .context("the booted commit has no /usr")?;
    let upper: OwnedFd = fsutil::open_dir(&found.upper())?;
    let view = fsutil::open_dir(&root.join("usr"))?;
    let (tree, meta) = edit_dir(
        &writer,
        repo,
        &usr.tree,
        upper.as_fd(),
        view.as_fd(),
        "/usr",
    )?;
    (usr.tree, usr.meta) = (tree, meta);
    let root_id = txn.write_meta(ObjectKind::DirTree, &root_tree.encode())?;
    let mut metadata: Vec<(String, String)> = booted.metadata.clone();
    metadata.retain(|(k, _)| k != NAME_KEY && k != FROM_KEY && k != BASE_KEY);
    let base = arbor_sysroot::base_of(repo, &d.commit)?;
    metadata.push((BASE_KEY.into(), base.to_hex()));
    metadata.push((FROM_KEY.into(), d.commit.to_hex()));
    if let Some(n) = &info.name {
        metadata.push((NAME_KEY.into(), n.clone()));
    }
    let subject = match (message, &info.name) {
        (Some(m), _) => m.to_string(),
        (None, Some(n)) => format!("usroverlay '{n}' on {}", d.commit.short()),
        (None, None) => format!("usroverlay on {}", d.commit.short()),
    };
    let body = list
        .iter()
        .map(|c| format!("{:?} {}", c.change, c.path).to_lowercase())
        .collect::<Vec<_>>()
        .join("\n");
    let commit = Commit {
        root_tree: root_id,
        root_meta: booted.root_meta,
        parent: Some(d.commit),
        timestamp: arbor_store::commit::default_timestamp()?,
        subject,
        body,
        metadata: Commit::new_metadata(metadata),
    };
    let id = txn.write_meta(ObjectKind::Commit, &commit.encode())?;
    txn.finish(&[(RefName::parse(&format!("arbor/hotfix/{}", d.os))?, Some(id))])?;
    obs.task_end("commit");
    let opts = DeployOptions {
        os: d.os.clone(),
        refspec: d.origin.refspec.clone(),
        override_commit: d.origin.override_commit,
        commit: id,
        layers: d.origin.layers.clone(),
        kargs: None,
        stage: false,
        layers_built: true,
        reset: None,
        image_digest: d.origin.image_digest.clone(),
    };
    let deploy = deploy(sysroot, lock, &opts, obs)?;
    info.committed = Some(id);
    info.write(&found.dir)?;
    let label = info
        .name
        .as_deref()
        .map(|n| format!(" ({n})"))
        .unwrap_or_default();
    sysroot.set_history_detail(format!(
        "committed{label} {} changed paths as {}",
        list.len(),
        id.short()
    ));
    Ok(OverlayCommit {
        commit: id,
        from: d.commit,
        name: info.name,
        changes: list,
        deploy,
    })
}
