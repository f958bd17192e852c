//! Checking the store: rehash every object and walk every ref.

use std::collections::HashSet;

use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::Serialize;

use rustix::fs::{self as rfs, AtFlags};

use super::reach::{self, Root};
use super::{ObjectId, ObjectKind, Repo, StoreError};
use arbor_core::lock::{LockError, LockWait, WriterLock};
use arbor_statedb::StateDb;

/// One thing wrong with the store.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    /// The object concerned (none for stray files).
    pub id: Option<ObjectId>,
    /// Its kind.
    pub kind: Option<ObjectKind>,
    /// "corrupt", "missing" or "stray".
    pub problem: &'static str,
    /// What exactly is wrong.
    pub detail: String,
    /// Where the object is used, when a ref reaches it ("ref:/path").
    pub used_by: Option<String>,
}

/// The outcome of a check.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FsckReport {
    /// Objects rehashed.
    pub objects_checked: u64,
    /// Refs walked.
    pub refs_checked: u64,
    /// Everything found wrong; empty means the store is sound.
    pub problems: Vec<Problem>,
}

impl FsckReport {
    /// True when nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

fn check_object(repo: &Repo, id: &ObjectId, kind: ObjectKind) -> Result<(), StoreError> {
    match kind {
        ObjectKind::File => {
            let got = reach::rehash_file_object(repo, id)?;
            if got != *id {
                return Err(StoreError::Corrupt {
                    id: *id,
                    kind,
                    detail: format!("its content and metadata hash to {got}"),
                });
            }
            Ok(())
        }
        ObjectKind::Commit => repo.load_commit(id).map(drop),
        ObjectKind::DirTree => repo.load_dirtree(id).map(drop),
        ObjectKind::DirMeta => repo.load_dirmeta(id).map(drop),
    }
}

/// Rehashes every stored object (in parallel) and walks the history of every ref,
/// stored root and `extra_roots` (a sysroot's deployments), reporting corrupt, missing
/// and stray objects with where they are used.
pub fn fsck(repo: &Repo, extra_roots: &[Root]) -> Result<FsckReport> {
    let (objects, stray) = reach::list_objects(repo).context("listing objects")?;
    let mut problems: Vec<Problem> = objects
        .par_iter()
        .filter_map(|(id, kind)| check_object(repo, id, *kind).err().map(|e| (id, kind, e)))
        .map(|(id, kind, e)| Problem {
            id: Some(*id),
            kind: Some(*kind),
            problem: if matches!(e, StoreError::Missing { .. }) {
                "missing"
            } else {
                "corrupt"
            },
            detail: e.to_string(),
            used_by: None,
        })
        .collect();
    problems.extend(stray.into_iter().map(|s| Problem {
        id: None,
        kind: None,
        problem: "stray",
        detail: format!("{s} is not an object name"),
        used_by: None,
    }));

    let roots = super::prune::with_extra(super::prune::repo_roots(repo)?, extra_roots);
    let walked = reach::walk(repo, &roots);
    let stored: HashSet<(ObjectId, ObjectKind)> = objects.into_iter().collect();
    for p in problems.iter_mut() {
        if let (Some(id), Some(kind)) = (p.id, p.kind) {
            p.used_by = walked.objects.get(&(id, kind)).cloned();
        }
    }
    let mut missing: Vec<Problem> = walked
        .objects
        .iter()
        .filter(|(key, _)| !stored.contains(key))
        .map(|((id, kind), used_by)| Problem {
            id: Some(*id),
            kind: Some(*kind),
            problem: "missing",
            detail: format!("object {id} ({kind}) is missing from the repository"),
            used_by: Some(used_by.clone()),
        })
        .collect();
    missing.sort_by(|a, b| a.used_by.cmp(&b.used_by));
    problems.extend(missing);
    // Unreadable objects that are present were already reported as corrupt above.
    for (id, kind, used_by, e) in walked.unreadable {
        if !stored.contains(&(id, kind)) && !problems.iter().any(|p| p.id == Some(id)) {
            problems.push(Problem {
                id: Some(id),
                kind: Some(kind),
                problem: "missing",
                detail: e.to_string(),
                used_by: Some(used_by),
            });
        }
    }
    Ok(FsckReport {
        objects_checked: stored.len() as u64,
        refs_checked: roots.len() as u64,
        problems,
    })
}

/// An object `fsck --delete` removed.
#[derive(Clone, Debug, Serialize)]
pub struct Deleted {
    /// Its id.
    pub id: ObjectId,
    /// Its kind.
    pub kind: ObjectKind,
}

/// What `fsck` found, and with `--delete` what it removed.
#[derive(Clone, Debug, Serialize)]
pub struct FsckOutcome {
    /// The check.
    #[serde(flatten)]
    pub report: FsckReport,
    /// The corrupt objects deleted (with `--delete` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted: Option<Vec<Deleted>>,
}

/// Deletes the objects `report` found corrupt (each checked again under the writer
/// lock first), as `ostree fsck --delete` does: what was damaged is then simply
/// missing, and fetching or committing the same content again puts a sound copy in
/// its place. A checkout that hardlinks a damaged file keeps its damaged copy (it is
/// the same inode): deploy again to replace it. Returns the objects deleted.
pub fn delete_corrupt(
    repo: &Repo,
    report: &FsckReport,
    wait: LockWait<'_>,
) -> Result<Vec<Deleted>> {
    let _lock =
        WriterLock::acquire(repo.root_fd(), repo.path(), "lock", wait).map_err(|e| match e {
            LockError::Held(s) => anyhow::Error::new(s),
            e => anyhow::Error::new(e),
        })?;
    let mut deleted = Vec::new();
    let mut forgotten = Vec::new();
    for p in report.problems.iter().filter(|p| p.problem == "corrupt") {
        let (Some(id), Some(kind)) = (p.id, p.kind) else {
            continue;
        };
        if check_object(repo, &id, kind).is_ok() {
            continue; // repaired since the check
        }
        let rel = id.relative_path(kind);
        if let Ok(st) = rfs::statat(repo.objects_fd(), rel.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            rfs::unlinkat(repo.objects_fd(), rel.as_str(), AtFlags::empty())
                .with_context(|| format!("deleting {kind} object {id}"))?;
            forgotten.push((st.st_dev, st.st_ino));
            deleted.push(Deleted { id, kind });
        }
    }
    if !forgotten.is_empty() {
        // The inode numbers may be reused: their cache rows must not name these ids.
        StateDb::open(&repo.state_db_path())?.forget_inodes(&forgotten)?;
    }
    // Not synced: a deletion a crash undoes leaves a damaged object that the next
    // fsck finds again.
    Ok(deleted)
}
