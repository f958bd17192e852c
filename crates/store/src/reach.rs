//! Which objects a set of commits reaches: the walk behind fsck and prune.

use std::collections::HashMap;

use super::encoding::FileBody;
use super::{ObjectId, ObjectKind, Repo, StoreError};
use arbor_core::fsutil::show;

/// A starting point of the walk: a commit and a label for messages (a ref name).
#[derive(Clone, Debug)]
pub struct Root {
    /// What names the commit ("ref debian/a", "deployment 0").
    pub label: String,
    /// The commit; its whole history is walked.
    pub commit: ObjectId,
}

/// Every object reached, with the first place it was reached from.
#[derive(Default)]
pub struct Reach {
    /// Object → where it is used ("debian/a:/usr/bin/ls").
    pub objects: HashMap<(ObjectId, ObjectKind), String>,
    /// Objects that could not be read or decoded, with where they are used. Below an
    /// unreadable commit or dirtree the walk cannot see, so what it reaches there is
    /// unknown: prune must stop when this is not empty.
    pub unreadable: Vec<(ObjectId, ObjectKind, String, StoreError)>,
}

impl Reach {
    fn mark(&mut self, id: ObjectId, kind: ObjectKind, used_by: impl FnOnce() -> String) -> bool {
        use std::collections::hash_map::Entry;
        match self.objects.entry((id, kind)) {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                v.insert(used_by());
                true
            }
        }
    }
}

/// Walks the history of every root and every tree in it. Missing file objects are not
/// detected here (that needs a stat per file); callers compare with what is stored.
pub fn walk(repo: &Repo, roots: &[Root]) -> Reach {
    let mut reach = Reach::default();
    for root in roots {
        let mut next = Some(root.commit);
        let mut depth = 0;
        while let Some(id) = next.take() {
            let label = if depth == 0 {
                root.label.clone()
            } else {
                format!("{}~{depth}", root.label)
            };
            if !reach.mark(id, ObjectKind::Commit, || label.clone()) {
                break; // history shared with an earlier root
            }
            match repo.load_commit(&id) {
                Ok(c) => {
                    reach.mark(c.root_meta, ObjectKind::DirMeta, || format!("{label}:/"));
                    walk_tree(repo, &mut reach, c.root_tree, &label, "");
                    next = c.parent;
                }
                Err(e) => reach.unreadable.push((id, ObjectKind::Commit, label, e)),
            }
            depth += 1;
        }
    }
    reach
}

/// Fails naming the first object of `commit` that is missing or unreadable: a
/// commit is usable (deployable, a delta source, "already fetched") only when whole.
pub fn check_complete(repo: &Repo, commit: &ObjectId) -> anyhow::Result<()> {
    let r = walk_commit(repo, commit);
    if let Some((id, kind, at, e)) = r.unreadable.first() {
        anyhow::bail!("{kind} {id} at {at}: {e}");
    }
    for ((id, kind), at) in &r.objects {
        if *kind == ObjectKind::File && !repo.has_object(id, *kind) {
            anyhow::bail!("file {id} at {at} is missing");
        }
    }
    Ok(())
}

/// The objects of one commit: the commit and its tree, not its history (what a delta
/// or a fetch of that commit needs).
pub fn walk_commit(repo: &Repo, commit: &ObjectId) -> Reach {
    let mut reach = Reach::default();
    let label = commit.short();
    reach.mark(*commit, ObjectKind::Commit, || label.clone());
    match repo.load_commit(commit) {
        Ok(c) => {
            reach.mark(c.root_meta, ObjectKind::DirMeta, || format!("{label}:/"));
            walk_tree(repo, &mut reach, c.root_tree, &label, "");
        }
        Err(e) => reach
            .unreadable
            .push((*commit, ObjectKind::Commit, label.clone(), e)),
    }
    reach
}

fn walk_tree(repo: &Repo, reach: &mut Reach, tree: ObjectId, label: &str, path: &str) {
    let here = || format!("{label}:{}", if path.is_empty() { "/" } else { path });
    if !reach.mark(tree, ObjectKind::DirTree, here) {
        return;
    }
    let t = match repo.load_dirtree(&tree) {
        Ok(t) => t,
        Err(e) => {
            reach
                .unreadable
                .push((tree, ObjectKind::DirTree, here(), e));
            return;
        }
    };
    for f in &t.files {
        reach.mark(f.file, ObjectKind::File, || {
            format!("{label}:{path}/{}", show(&f.name))
        });
    }
    for d in &t.dirs {
        let sub = format!("{path}/{}", show(&d.name));
        reach.mark(d.meta, ObjectKind::DirMeta, || format!("{label}:{sub}"));
        walk_tree(repo, reach, d.tree, label, &sub);
    }
}

/// Objects found by [`list_objects`], and names in `objects/` that are not objects.
pub type Listing = (Vec<(ObjectId, ObjectKind)>, Vec<String>);

/// Every object stored, by listing `objects/xx/`; names that are not objects are
/// returned apart so fsck can report them.
pub fn list_objects(repo: &Repo) -> std::io::Result<Listing> {
    let mut objects = Vec::new();
    let mut stray = Vec::new();
    for i in 0..=255u8 {
        let dir = format!("{i:02x}");
        let fd = arbor_core::fsutil::open_dir_at(repo.objects_fd(), dir.as_bytes())?;
        for (name, _) in arbor_core::fsutil::list_dir(std::os::fd::AsFd::as_fd(&fd))? {
            let name = show(&name);
            let parsed = name.split_once('.').and_then(|(rest, ext)| {
                let id: ObjectId = format!("{dir}{rest}").parse().ok()?;
                Some((id, ObjectKind::from_extension(ext)?))
            });
            match parsed {
                Some(o) => objects.push(o),
                None => stray.push(format!("objects/{dir}/{name}")),
            }
        }
    }
    Ok((objects, stray))
}

/// Recomputes a file object's id from what is on disk: content hash, mode, owner,
/// xattrs (or symlink target).
pub fn rehash_file_object(repo: &Repo, id: &ObjectId) -> Result<ObjectId, StoreError> {
    let info = repo.file_info(id)?;
    let body = match info.target {
        Some(target) => FileBody::Symlink { target },
        None => {
            let corrupt = |e: std::io::Error| StoreError::Corrupt {
                id: *id,
                kind: ObjectKind::File,
                detail: e.to_string(),
            };
            let f = repo.open_file_object(id)?;
            let mut hasher = blake3::Hasher::new();
            let size = std::io::copy(&mut &f, &mut hasher).map_err(corrupt)?;
            FileBody::Regular {
                size,
                content: *hasher.finalize().as_bytes(),
            }
        }
    };
    Ok(super::FileHeader {
        meta: info.meta,
        body,
    }
    .id())
}
