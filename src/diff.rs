//! What changed between two commits, found by walking both trees and skipping every
//! subtree whose id is equal on both sides (so a point update diffs in milliseconds).

use anyhow::{Context, Result};
use serde::Serialize;

use crate::fsutil::show;
use crate::store::encoding::DirTree;
use crate::store::{ObjectId, Repo};

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
    // Files: merge the two sorted lists.
    let (mut i, mut j) = (0, 0);
    while i < ta.files.len() || j < tb.files.len() {
        let order = match (ta.files.get(i), tb.files.get(j)) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                out.push(Change {
                    change: ChangeKind::Removed,
                    path: child(&ta.files[i].name),
                    dir: false,
                });
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(Change {
                    change: ChangeKind::Added,
                    path: child(&tb.files[j].name),
                    dir: false,
                });
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                if ta.files[i].file != tb.files[j].file {
                    out.push(Change {
                        change: ChangeKind::Modified,
                        path: child(&ta.files[i].name),
                        dir: false,
                    });
                }
                i += 1;
                j += 1;
            }
        }
    }
    // Directories: the same merge, recursing into the common ones.
    let (mut i, mut j) = (0, 0);
    while i < ta.dirs.len() || j < tb.dirs.len() {
        let order = match (ta.dirs.get(i), tb.dirs.get(j)) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                let d = &ta.dirs[i];
                list_all(repo, &d.tree, &child(&d.name), ChangeKind::Removed, out)?;
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                let d = &tb.dirs[j];
                list_all(repo, &d.tree, &child(&d.name), ChangeKind::Added, out)?;
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (&ta.dirs[i], &tb.dirs[j]);
                let p = child(&x.name);
                if x.meta != y.meta {
                    out.push(Change {
                        change: ChangeKind::Modified,
                        path: p.clone(),
                        dir: true,
                    });
                }
                diff_trees(repo, &x.tree, &y.tree, &p, out)?;
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
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
    use crate::lock::LockWait;
    use crate::store::refs::RefName;

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
