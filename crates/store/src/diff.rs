//! What changed between two commits, found by walking both trees and skipping every
//! subtree whose id is equal on both sides (so a point update diffs in milliseconds).

use anyhow::{Context, Result};
use serde::Serialize;

use crate::encoding::DirTree;
use crate::{ObjectId, Repo};
use arbor_core::fsutil::show;

/// How a path changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// Only in the newer commit.
    Added,
    /// Only in the older commit.
    Removed,
    /// In both, with other content or metadata.
    Modified,
}

/// One changed path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Added, removed or modified.
    pub change: ChangeKind,
    /// Absolute path inside the tree.
    pub path: String,
    /// True for a directory (a modified directory changed mode, owner or xattrs).
    pub dir: bool,
}

/// All changes from commit `a` to commit `b`, sorted by path. An added or removed
/// directory is listed with everything below it.
pub fn diff_commits(repo: &Repo, a: &ObjectId, b: &ObjectId) -> Result<Vec<Change>> {
    let ca = repo.load_commit(a)?;
    let cb = repo.load_commit(b)?;
    let mut out = Vec::new();
    if ca.root_meta != cb.root_meta {
        out.push(Change {
            change: ChangeKind::Modified,
            path: "/".into(),
            dir: true,
        });
    }
    diff_trees(repo, &ca.root_tree, &cb.root_tree, "", &mut out)?;
    out.sort_by(|x, y| x.path.cmp(&y.path).then(x.change.cmp(&y.change)));
    Ok(out)
}

fn load(repo: &Repo, id: &ObjectId, path: &str) -> Result<DirTree> {
    repo.load_dirtree(id)
        .with_context(|| format!("reading {}", if path.is_empty() { "/" } else { path }))
}

fn diff_trees(
    repo: &Repo,
    a: &ObjectId,
    b: &ObjectId,
    path: &str,
    out: &mut Vec<Change>,
) -> Result<()> {
    if a == b {
        return Ok(());
    }
    let (ta, tb) = (load(repo, a, path)?, load(repo, b, path)?);
    let child = |name: &[u8]| format!("{path}/{}", show(name));
    let change = |change, path, dir| Change { change, path, dir };
    for side in merge_sorted(&ta.files, &tb.files, |f| &f.name) {
        match side {
            Side::Old(f) => out.push(change(ChangeKind::Removed, child(&f.name), false)),
            Side::New(f) => out.push(change(ChangeKind::Added, child(&f.name), false)),
            Side::Both(x, y) if x.file != y.file => {
                out.push(change(ChangeKind::Modified, child(&x.name), false))
            }
            Side::Both(..) => {}
        }
    }
    for side in merge_sorted(&ta.dirs, &tb.dirs, |d| &d.name) {
        match side {
            Side::Old(d) => list_all(repo, &d.tree, &child(&d.name), ChangeKind::Removed, out)?,
            Side::New(d) => list_all(repo, &d.tree, &child(&d.name), ChangeKind::Added, out)?,
            Side::Both(x, y) => {
                let p = child(&x.name);
                if x.meta != y.meta {
                    out.push(change(ChangeKind::Modified, p.clone(), true));
                }
                diff_trees(repo, &x.tree, &y.tree, &p, out)?;
            }
        }
    }
    Ok(())
}

/// Where an entry of two sorted lists is.
enum Side<'a, T> {
    Old(&'a T),
    New(&'a T),
    Both(&'a T, &'a T),
}

/// Walks two lists sorted by `key` together, pairing equal keys.
fn merge_sorted<'a, T>(a: &'a [T], b: &'a [T], key: fn(&T) -> &Vec<u8>) -> Vec<Side<'a, T>> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    while i < a.len() || j < b.len() {
        let order = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => key(x).cmp(key(y)),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                out.push(Side::Old(&a[i]));
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(Side::New(&b[j]));
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(Side::Both(&a[i], &b[j]));
                i += 1;
                j += 1;
            }
        }
    }
    out
}

fn list_all(
    repo: &Repo,
    tree: &ObjectId,
    path: &str,
    change: ChangeKind,
    out: &mut Vec<Change>,
) -> Result<()> {
    out.push(Change {
        change,
        path: path.to_string(),
        dir: true,
    });
    let t = load(repo, tree, path)?;
    for f in &t.files {
        out.push(Change {
            change,
            path: format!("{path}/{}", show(&f.name)),
            dir: false,
        });
    }
    for d in &t.dirs {
        list_all(
            repo,
            &d.tree,
            &format!("{path}/{}", show(&d.name)),
            change,
            out,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit::{CommitOptions, commit_tree};
    use crate::refs::RefName;
    use arbor_core::lock::LockWait;

    #[test]
    fn diff_lists_added_removed_modified() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("d/sub")).unwrap();
        std::fs::write(src.join("keep"), b"same").unwrap();
        std::fs::write(src.join("change"), b"old").unwrap();
        std::fs::write(src.join("gone"), b"x").unwrap();
        std::fs::write(src.join("d/sub/f"), b"x").unwrap();
        let repo = Repo::init(&t.path().join("r")).unwrap();
        let opts = CommitOptions {
            branch: RefName::parse("x").unwrap(),
            subject: String::new(),
            body: String::new(),
            metadata: vec![],
            timestamp: 0,
            orphan: false,
            skip_special: false,
            use_cache: true,
            progress: None,
        };
        let a = commit_tree(&repo, &src, &opts, LockWait::NoWait)
            .unwrap()
            .commit;
        std::fs::write(src.join("change"), b"new").unwrap();
        std::fs::remove_file(src.join("gone")).unwrap();
        std::fs::remove_dir_all(src.join("d")).unwrap();
        std::fs::create_dir(src.join("n")).unwrap();
        let b = commit_tree(&repo, &src, &opts, LockWait::NoWait)
            .unwrap()
            .commit;
        let got: Vec<(ChangeKind, String)> = diff_commits(&repo, &a, &b)
            .unwrap()
            .into_iter()
            .map(|c| (c.change, c.path))
            .collect();
        use ChangeKind::*;
        let want = vec![
            (Modified, "/change".to_string()),
            (Removed, "/d".into()),
            (Removed, "/d/sub".into()),
            (Removed, "/d/sub/f".into()),
            (Removed, "/gone".into()),
            (Added, "/n".into()),
        ];
        assert_eq!(got, want);
        assert!(diff_commits(&repo, &a, &a).unwrap().is_empty());
    }
}
