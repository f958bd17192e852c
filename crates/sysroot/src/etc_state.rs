//! The `/etc` of deployments: how it drifted from the image (`arbor etc diff`),
//! putting image defaults back (`arbor etc restore`), and snapshots of the `/etc` a
//! deployment last ran with.
//!
//! A snapshot is a commit of the deployment's `/etc` in the store, rooted as
//! `<os>/<commit>.<serial>.etc` ([`super::roots::etc_root_name`]) with the previous
//! snapshot of the same deployment as its parent, so `arbor log` shows its history.
//! Files equal to the image's defaults are the defaults' own objects: a snapshot costs
//! only what the machine changed. One is taken whenever arbor is about to leave or
//! change a deployment's `/etc`: a deploy or finalize that merges from it, a rollback
//! or reset away from the booted one, and `etc restore`.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use anyhow::{Context, Result, bail};
use rustix::fs::{self as rfs, Mode, RenameFlags};
use serde::Serialize;

use super::roots::etc_root_name;
use super::select::{current, select_deployment};
use super::{Deployment, Sysroot};
use crate::etc::drift::{self, DriftEntry};
use crate::etc::merge::{self, MergeEntry, TEMP_PREFIX};
use arbor_core::fsutil;
use arbor_core::lock::{LockWait, WriterLock};
use arbor_statedb::InodeCache;
use arbor_store::commit::TreeWriter;
use arbor_store::{Commit, ObjectId, ObjectKind, Transaction};

/// Commit metadata naming the deployment a snapshot is of.
pub const SNAPSHOT_KEY: &str = "arbor.etc-snapshot";

/// The name beside a deployment's origin that records what its `/etc` merge did.
pub const MERGE_RECORD_SUFFIX: &str = ".etc-merge.json";

/// What `arbor etc diff` reports for one deployment.
#[derive(Clone, Debug, Serialize, zvariant::Type, zvariant::Value, zvariant::OwnedValue)]
#[zvariant(signature = "dict")]
pub struct EtcDiff {
    /// `<os>/<commit>.<serial>`.
    pub deployment: String,
    /// It runs now.
    pub booted: bool,
    /// It is staged: its merge happens at shutdown, and `merge` says what it will do.
    pub staged: bool,
    /// Every path of its `/etc` that differs from its image's defaults.
    pub drift: Vec<DriftEntry>,
    /// For a deployment not booted yet: what its merge did (or, staged, will do) with
    /// each path the machine or the update changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merge: Option<Vec<MergeEntry>>,
    /// Its latest `/etc` snapshot, if one was taken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<ObjectId>,
}

/// The deployment `which` names (index, commit prefix, `staged`), or the current one.
pub fn pick(sysroot: &Sysroot, which: Option<&str>) -> Result<Deployment> {
    match which {
        Some(w) => select_deployment(sysroot, w),
        None => current(sysroot),
    }
}

/// `arbor etc diff`: how `d`'s `/etc` differs from its image, and for a deployment
/// that has not run yet what the merge did or will do.
pub fn diff(sysroot: &Sysroot, d: &Deployment) -> Result<EtcDiff> {
    let root = sysroot.deployment_path(d);
    let defaults = merge::scan(&root.join("usr/etc"))?;
    let local = merge::scan(&root.join("etc"))?;
    let staged = sysroot.staged()?.is_some_and(|s| s.same(d));
    let merge = if staged {
        Some(planned_merge(sysroot, d)?)
    } else if d.booted {
        None
    } else {
        read_merge_record(sysroot, d)?
    };
    Ok(EtcDiff {
        deployment: format!("{}/{}", d.os, d.dir_name()),
        booted: d.booted,
        staged,
        drift: drift::diff(&defaults, &local),
        merge,
        snapshot: snapshot_of(sysroot, d)?,
    })
}

/// The `/etc` conflicts the next boot brings, listed before the reboot (`status`):
/// of the staged deployment, what finalizing it would find as of now; else of the
/// pending one, what its merge found. Paths relative to `/etc`.
pub fn next_conflicts(
    sysroot: &Sysroot,
    staged: Option<&Deployment>,
    pending: Option<&Deployment>,
) -> Result<Vec<String>> {
    let merge = match (staged, pending) {
        (Some(d), _) => Some(planned_merge(sysroot, d)?),
        (None, Some(d)) => read_merge_record(sysroot, d)?,
        (None, None) => None,
    };
    Ok(merge
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.outcome == merge::MergeOutcome::Conflict)
        .map(|e| e.path)
        .collect())
}

/// The `/etc` conflicts deploying `commit` into stateroot `os` would find as of now
/// (`upgrade --dry-run`): the merge source's `/etc` against its defaults and the
/// commit's `/usr/etc`, read from the store. `None` when the commit is not stored (a
/// dry run downloads nothing). Package layers are not applied for this: their files
/// under `/etc` are rare, and would only add defaults.
pub fn conflicts_with_commit(
    sysroot: &Sysroot,
    os: &str,
    commit: &ObjectId,
) -> Result<Option<Vec<String>>> {
    let repo = sysroot.repo();
    if !repo.has_object(commit, ObjectKind::Commit) {
        return Ok(None);
    }
    let current = sysroot.deployments()?;
    let Some(src) = super::plan::merge_source(&current, os) else {
        return Ok(Some(Vec::new()));
    };
    let src_root = sysroot.deployment_path(src);
    let report = merge::report(
        &merge::scan(&src_root.join("usr/etc"))?,
        &merge::scan(&src_root.join("etc"))?,
        &crate::etc::stored::scan_commit(repo, commit, "/usr/etc")?,
    );
    Ok(Some(
        report
            .into_iter()
            .filter(|e| e.outcome == merge::MergeOutcome::Conflict)
            .map(|e| e.path)
            .collect(),
    ))
}

/// What finalizing the staged deployment `d` will do to `/etc`, as of now.
fn planned_merge(sysroot: &Sysroot, d: &Deployment) -> Result<Vec<MergeEntry>> {
    let current = sysroot.deployments()?;
    let Some(src) = super::plan::merge_source(&current, &d.os) else {
        return Ok(Vec::new());
    };
    let src_root = sysroot.deployment_path(src);
    Ok(merge::report(
        &merge::scan(&src_root.join("usr/etc"))?,
        &merge::scan(&src_root.join("etc"))?,
        &merge::scan(&sysroot.deployment_path(d).join("usr/etc"))?,
    ))
}

/// Records what the merge into deployment `dir_name` of `os` did, beside its origin (read by `etc diff`).
pub fn write_merge_record(
    sysroot: &Sysroot,
    os: &str,
    dir_name: &str,
    m: &[MergeEntry],
) -> Result<()> {
    let dir = sysroot.stateroot(os).join("deploy");
    let fd = fsutil::open_dir(&dir)?;
    let name = format!("{dir_name}{MERGE_RECORD_SUFFIX}");
    fsutil::atomic_write(fd.as_fd(), &name, &serde_json::to_vec(m)?, 0o644)
        .with_context(|| format!("writing {name}"))
}

fn read_merge_record(sysroot: &Sysroot, d: &Deployment) -> Result<Option<Vec<MergeEntry>>> {
    let path = sysroot
        .stateroot(&d.os)
        .join("deploy")
        .join(format!("{}{MERGE_RECORD_SUFFIX}", d.dir_name()));
    match std::fs::read(&path) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b).with_context(|| format!("reading {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The latest snapshot of `d`'s `/etc`, if any.
pub fn snapshot_of(sysroot: &Sysroot, d: &Deployment) -> Result<Option<ObjectId>> {
    let name = etc_root_name(d);
    Ok(sysroot
        .repo()
        .list_roots()?
        .into_iter()
        .find(|r| r.name == name)
        .map(|r| r.commit))
}

/// Commits `d`'s `/etc` as its newest snapshot and roots it. Special files are left
/// out (the merge ignores them too).
pub fn snapshot(sysroot: &Sysroot, lock: &WriterLock, d: &Deployment) -> Result<ObjectId> {
    let repo = sysroot.repo();
    let etc = sysroot.deployment_path(d).join("etc");
    let fd = fsutil::open_dir(&etc).with_context(|| format!("opening {}", etc.display()))?;
    let parent = snapshot_of(sysroot, d)?;
    let txn = Transaction::begin(repo, LockWait::Wait(&|_| {}))?;
    let cache = InodeCache::default();
    let writer = TreeWriter::new(&txn, &cache, true);
    let (root_tree, root_meta) = writer
        .write_dir(fd, "/etc")
        .with_context(|| format!("taking a snapshot of {}", etc.display()))?;
    let label = format!("{}/{}", d.os, d.dir_name());
    let commit = Commit {
        root_tree,
        root_meta,
        parent,
        timestamp: arbor_store::commit::default_timestamp()?,
        subject: format!("/etc of {label}"),
        body: String::new(),
        metadata: Commit::new_metadata(vec![(SNAPSHOT_KEY.into(), label)]),
    };
    let id = txn.write_meta(ObjectKind::Commit, &commit.encode())?;
    txn.finish(&[])?;
    repo.write_root(lock, &etc_root_name(d), Some(&id))?;
    Ok(id)
}

/// What `arbor etc restore` did.
#[derive(Clone, Debug, Serialize, zvariant::Type, zvariant::Value, zvariant::OwnedValue)]
#[zvariant(signature = "dict")]
pub struct RestoreResult {
    /// `<os>/<commit>.<serial>`.
    pub deployment: String,
    /// The paths put back, as given (`/etc/...`).
    pub restored: Vec<String>,
    /// The snapshot of `/etc` taken before (the way back).
    pub snapshot: ObjectId,
}

/// The most paths one restore takes.
pub const MAX_RESTORE_PATHS: usize = 4096;

/// Checks a path given to `etc restore` and returns it relative to `/etc`.
pub fn etc_relative(path: &str) -> Result<String> {
    let rel = path
        .strip_prefix("/etc/")
        .with_context(|| format!("{path} is not below /etc: only /etc/... can be restored"))?;
    let rel = rel.trim_end_matches('/');
    if rel.is_empty()
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == ".." || c.starts_with(TEMP_PREFIX))
        || rel.contains('\0')
    {
        bail!("{path} is not a plain path below /etc (no '.', '..' or empty components)");
    }
    Ok(rel.to_string())
}

/// `arbor etc restore`: puts the image's default of each path back into `d`'s `/etc`
/// (the whole subtree for a directory), each path in one rename, after a snapshot of
/// the `/etc` as it was. Every path is checked before anything changes.
pub fn restore(
    sysroot: &Sysroot,
    lock: &WriterLock,
    d: &Deployment,
    paths: &[String],
) -> Result<RestoreResult> {
    if paths.is_empty() {
        bail!("name the paths to restore (/etc/...)");
    }
    if paths.len() > MAX_RESTORE_PATHS {
        bail!("at most {MAX_RESTORE_PATHS} paths can be restored at once");
    }
    let root = sysroot.deployment_path(d);
    let defaults = fsutil::open_dir(&root.join("usr/etc"))?;
    let etc = fsutil::open_dir(&root.join("etc"))?;
    let mut rels = Vec::new();
    for p in paths {
        let rel = etc_relative(p)?;
        let (dir, name) = split(&rel);
        let present = fsutil::open_beneath(defaults.as_fd(), dir)
            .ok()
            .and_then(|fd| fsutil::kind_at(fd.as_fd(), name).ok().flatten())
            .is_some();
        if !present {
            bail!(
                "{p} is not in the image of {}: there is no default to restore",
                d.os
            );
        }
        rels.push(rel);
    }
    let snapshot = snapshot(sysroot, lock, d)?;
    for (rel, shown) in rels.iter().zip(paths) {
        restore_one(defaults.as_fd(), etc.as_fd(), rel)
            .with_context(|| format!("restoring {shown}"))?;
    }
    Ok(RestoreResult {
        deployment: format!("{}/{}", d.os, d.dir_name()),
        restored: paths.to_vec(),
        snapshot,
    })
}

fn split(rel: &str) -> (&str, &str) {
    rel.rsplit_once('/').unwrap_or(("", rel))
}

/// Opens `dir` below `etc`, making the directories that are missing as the defaults
/// have them; never through a symlink.
fn parent_in_etc(defaults: BorrowedFd<'_>, etc: BorrowedFd<'_>, dir: &str) -> Result<OwnedFd> {
    let mut here = fsutil::open_dir_at(etc, b".")?;
    let mut shown = String::from("/etc");
    let mut sofar = String::new();
    for c in dir.split('/').filter(|c| !c.is_empty()) {
        shown = format!("{shown}/{c}");
        sofar = if sofar.is_empty() {
            c.into()
        } else {
            format!("{sofar}/{c}")
        };
        match fsutil::kind_at(here.as_fd(), c)? {
            Some(rfs::FileType::Directory) => {}
            None => {
                let def = fsutil::open_beneath(defaults, &sofar)?;
                let st = rfs::fstat(&def)?;
                let meta = fsutil::meta_from_stat(&st, fsutil::read_xattrs_fd(def.as_fd())?);
                rfs::mkdirat(&here, c, Mode::from_raw_mode(0o700))?;
                fsutil::apply_meta_fd(
                    fsutil::open_dir_at(here.as_fd(), c.as_bytes())?.as_fd(),
                    &meta,
                )?;
            }
            Some(_) => bail!("{shown} is not a directory here: restore {shown} itself first"),
        }
        here = fsutil::open_dir_at(here.as_fd(), c.as_bytes())?;
    }
    Ok(here)
}

fn restore_one(defaults: BorrowedFd<'_>, etc: BorrowedFd<'_>, rel: &str) -> Result<()> {
    let (dir, name) = split(rel);
    let from = fsutil::open_beneath(defaults, dir)?;
    let to = parent_in_etc(defaults, etc, dir)?;
    let tmp = format!("{TEMP_PREFIX}restore.{name}");
    let _ = fsutil::remove_at(to.as_fd(), tmp.as_bytes());
    fsutil::copy_entry_at(from.as_fd(), name, to.as_fd(), &tmp)?;
    sync_tree_at(to.as_fd(), &tmp)?;
    match fsutil::kind_at(to.as_fd(), name)? {
        None => rfs::renameat(&to, tmp.as_str(), &to, name)?,
        // One exchange puts the default in place whatever the types; the old entry,
        // now under the temporary name, goes after.
        Some(_) => {
            rfs::renameat_with(&to, tmp.as_str(), &to, name, RenameFlags::EXCHANGE)?;
            fsutil::remove_at(to.as_fd(), tmp.as_bytes())?;
        }
    }
    rfs::fsync(&to)?;
    Ok(())
}

/// fsyncs a copied entry: a file, or a directory with everything below it.
fn sync_tree_at(dir: BorrowedFd<'_>, name: &str) -> Result<()> {
    match fsutil::kind_at(dir, name)? {
        Some(rfs::FileType::Directory) => {
            let fd = fsutil::open_dir_at(dir, name.as_bytes())?;
            for (child, _) in fsutil::list_dir(fd.as_fd())? {
                sync_tree_at(fd.as_fd(), &fsutil::show(&child))?;
            }
            rfs::fsync(&fd)?;
        }
        Some(rfs::FileType::RegularFile) => {
            let fd = rfs::openat(
                dir,
                name,
                rfs::OFlags::RDONLY | rfs::OFlags::NOFOLLOW | rfs::OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            rfs::fsync(&fd)?;
        }
        _ => {}
    }
    Ok(())
}

/// Snapshots the booted deployment's `/etc` before arbor leaves it (rollback, reset);
/// nothing when none is booted (a folder sysroot).
pub fn snapshot_booted(sysroot: &Sysroot, lock: &WriterLock) -> Result<Option<ObjectId>> {
    match sysroot.deployments()?.into_iter().find(|d| d.booted) {
        Some(d) => snapshot(sysroot, lock, &d).map(Some),
        None => Ok(None),
    }
}

/// Copies what `keep` names from the `/etc` being left (`from`) into the new
/// pristine one (`to`), replacing the image's defaults there; returns what it copied
/// (absolute paths). Never through a symlink; what is absent is skipped.
pub fn carry_etc(from: &Path, to: &Path, keep: &[String]) -> Result<Vec<String>> {
    let from_fd = fsutil::open_dir(from)?;
    let to_fd = fsutil::open_dir(to)?;
    let mut carried = Vec::new();
    for k in keep {
        let Some(rel) = k.strip_prefix("/etc/") else {
            bail!("reset_keep_etc: '{k}' is not below /etc");
        };
        let (dir, leaf) = rel.rsplit_once('/').unwrap_or(("", rel));
        if dir.split('/').any(|c| c == ".." || c == ".") || leaf.is_empty() || leaf == ".." {
            bail!("reset_keep_etc: '{k}' is not a plain path");
        }
        let Ok(src) = fsutil::open_beneath(from_fd.as_fd(), dir) else {
            continue;
        };
        let names: Vec<String> = match leaf.strip_suffix('*') {
            Some(prefix) => fsutil::list_dir(src.as_fd())?
                .into_iter()
                .map(|(n, _)| fsutil::show(&n))
                .filter(|n| n.starts_with(prefix))
                .collect(),
            None => vec![leaf.to_string()],
        };
        for name in names {
            if fsutil::kind_at(src.as_fd(), &name)?.is_none() {
                continue;
            }
            let dst = fsutil::mkdir_p_beneath(to_fd.as_fd(), dir)?;
            fsutil::remove_at(dst.as_fd(), name.as_bytes())?;
            fsutil::copy_entry_at(src.as_fd(), &name, dst.as_fd(), &name)
                .with_context(|| format!("keeping /etc/{dir}/{name}"))?;
            carried.push(if dir.is_empty() {
                format!("/etc/{name}")
            } else {
                format!("/etc/{dir}/{name}")
            });
        }
    }
    Ok(carried)
}
