//! Checking the store: rehash every object and walk every ref.

use std::collections::HashSet;

use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::Serialize;

use super::reach::{self, Root};
use super::{ObjectId, ObjectKind, Repo, StoreError};

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
/// reporting corrupt, missing and stray objects with where they are used.
pub fn fsck(repo: &Repo) -> Result<FsckReport> {
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

    let refs = repo.list_refs()?;
    let roots: Vec<Root> = refs
        .iter()
        .map(|(r, id)| Root {
            label: r.to_string(),
            commit: *id,
        })
        .collect();
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
        refs_checked: refs.len() as u64,
        problems,
    })
}
