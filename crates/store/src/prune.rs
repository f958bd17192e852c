//! Removing objects that nothing reaches.

use std::collections::HashSet;

use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, Result, bail};
use rustix::fs::{self as rfs, AtFlags};
use serde::Serialize;

use super::reach::{self, Root};
use super::{ObjectKind, Repo};
use arbor_core::lock::{LockError, LockWait, WriterLock};
use arbor_statedb::StateDb;

/// What a prune removed, or would remove with `dry_run`.
#[derive(
    Clone, Debug, Default, Serialize, zvariant::Type, zvariant::Value, zvariant::OwnedValue,
)]
#[zvariant(signature = "dict")]
pub struct PruneReport {
    /// Nothing was deleted.
    pub dry_run: bool,
    /// Objects reached by a ref or an extra root, kept.
    pub objects_kept: u64,
    /// Objects deleted (or to delete).
    pub objects_removed: u64,
    /// Their size on disk in bytes (file content shared with a checkout is not freed
    /// until the checkout goes too).
    pub bytes_removed: u64,
}

/// Who guards the roots of the sysroot that owns the repository, if one does.
pub enum Owner<'a> {
    /// The caller holds the sysroot's lock (the sysroot's own prune and cleanup).
    Held(&'a WriterLock),
    /// Take the owner's lock here, waiting as the prune's `wait` says: a prune through
    /// `--repo`, which must not run between a deploy's commit and its root.
    Take,
}

fn acquire(dir: &Path, wait: LockWait<'_>) -> Result<WriterLock> {
    let fd =
        arbor_core::fsutil::open_dir(dir).with_context(|| format!("opening {}", dir.display()))?;
    WriterLock::acquire(fd.as_fd(), dir, "lock", wait).map_err(|e| match e {
        LockError::Held(s) => anyhow::Error::new(s),
        e => anyhow::Error::new(e),
    })
}

/// Every root of the repository: its refs and its stored roots (deployments and their
/// `/etc` snapshots), labelled for messages.
pub fn repo_roots(repo: &Repo) -> Result<Vec<Root>> {
    let mut roots: Vec<Root> = repo
        .list_refs()?
        .into_iter()
        .map(|(r, id)| Root {
            label: r.to_string(),
            commit: id,
        })
        .collect();
    roots.extend(repo.list_roots()?.into_iter().map(|r| Root {
        label: format!("deployment {}", r.name),
        commit: r.commit,
    }));
    Ok(roots)
}

/// `roots` and `extra` without repeats (a sysroot passes its deployments, which the
/// repository also records).
pub fn with_extra(mut roots: Vec<Root>, extra: &[Root]) -> Vec<Root> {
    for r in extra {
        if !roots
            .iter()
            .any(|k| k.label == r.label && k.commit == r.commit)
        {
            roots.push(r.clone());
        }
    }
    roots
}

/// Deletes every object not reached by a ref, a stored root ([`super::roots`]) or
/// `extra_roots`. Refuses to delete anything when part of the history cannot be read,
/// since what lies below it would look unreachable, and when the repository belongs
/// to a sysroot whose deployments were never recorded as roots.
pub fn prune(
    repo: &Repo,
    owner: Owner<'_>,
    extra_roots: &[Root],
    dry_run: bool,
    wait: LockWait<'_>,
) -> Result<PruneReport> {
    let owner_lock = match (owner, repo.owner_lock_path()) {
        (Owner::Take, Some(path)) => {
            let dir = path.parent().context("owner lock path")?;
            let l = acquire(dir, wait)?;
            if !repo.has_roots() {
                bail!(
                    "not pruning: {} belongs to the sysroot at {}, whose deployments are not \
                     recorded as roots yet; run 'arbor --sysroot {} cleanup' instead",
                    repo.path().display(),
                    dir.parent().unwrap_or(dir).display(),
                    dir.parent().unwrap_or(dir).display()
                );
            }
            Some(l)
        }
        _ => None,
    };
    let lock = acquire(repo.path(), wait)?;
    if !dry_run {
        super::transaction::clean_tmp(repo)?;
    }
    let roots = with_extra(repo_roots(repo)?, extra_roots);
    let walked = reach::walk(repo, &roots);
    if let Some((id, kind, used_by, e)) = walked.unreadable.first() {
        bail!(
            "not pruning: {kind} object {id} used by {used_by} cannot be read ({e}); run 'arbor fsck'"
        );
    }
    let keep: HashSet<_> = walked.objects.keys().copied().collect();
    let (objects, _) = reach::list_objects(repo)?;
    let stored = objects.len() as u64;
    let mut report = PruneReport {
        dry_run,
        ..Default::default()
    };
    let mut forgotten = Vec::new();
    // Commits first: a crash midway then leaves no commit whose tree is half gone.
    let mut doomed: Vec<_> = objects.into_iter().filter(|o| !keep.contains(o)).collect();
    doomed.sort_by_key(|(_, k)| *k != ObjectKind::Commit);
    for (id, kind) in doomed {
        let rel = id.relative_path(kind);
        let Ok(st) = rfs::statat(repo.objects_fd(), rel.as_str(), AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        report.objects_removed += 1;
        report.bytes_removed += st.st_size as u64;
        if !dry_run {
            rfs::unlinkat(repo.objects_fd(), rel.as_str(), AtFlags::empty())?;
            if kind == ObjectKind::File {
                forgotten.push((st.st_dev, st.st_ino));
            }
            arbor_core::failpoint::hit("prune-removing")?;
        }
    }
    report.objects_kept = stored - report.objects_removed;
    if !forgotten.is_empty() {
        // A freed inode number may be reused by a new file: drop its cache row.
        StateDb::open(&repo.state_db_path())?.forget_inodes(&forgotten)?;
    }
    drop(lock);
    drop(owner_lock);
    Ok(report)
}
