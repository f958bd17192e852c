//! An `/etc` tree read from the store rather than from a checkout: the new defaults
//! (`/usr/etc`) of a commit that is downloaded but not deployed, so that
//! `upgrade --dry-run` can say which files the merge would find in conflict before
//! anything is staged.

use std::io::Read;

use anyhow::{Context, Result, bail};

use super::merge::{EtcEntry, EtcTree};
use arbor_store::encoding::{S_IFLNK, S_IFMT, S_IFREG};
use arbor_store::inspect::{self, Node};
use arbor_store::{ObjectId, Repo};

/// The tree at `path` of `commit` (empty if the commit has no such directory), with
/// the same entries [`super::merge::scan`] reads from a checkout of it.
pub fn scan_commit(repo: &Repo, commit: &ObjectId, path: &str) -> Result<EtcTree> {
    let mut tree = EtcTree::new();
    match inspect::lookup(repo, commit, path) {
        Ok(Node::Dir(dirtree, _)) => scan_tree(repo, &dirtree, "", &mut tree)
            .with_context(|| format!("reading {path} of commit {}", commit.short()))?,
        Ok(Node::File(_)) => bail!("{path} of commit {} is not a directory", commit.short()),
        Err(_) => {}
    }
    Ok(tree)
}

fn scan_tree(repo: &Repo, dirtree: &ObjectId, prefix: &str, tree: &mut EtcTree) -> Result<()> {
    let t = repo.load_dirtree(dirtree)?;
    let join = |name: &[u8]| {
        let name = String::from_utf8_lossy(name);
        if prefix.is_empty() {
            name.into_owned()
        } else {
            format!("{prefix}/{name}")
        }
    };
    for f in &t.files {
        let info = repo.file_info(&f.file)?;
        let entry = match (info.meta.mode & S_IFMT, info.target) {
            (S_IFLNK, Some(target)) => EtcEntry::Symlink(info.meta, target),
            (S_IFREG, _) => {
                let mut bytes = Vec::new();
                repo.open_file_object(&f.file)?.read_to_end(&mut bytes)?;
                EtcEntry::File(info.meta, *blake3::hash(&bytes).as_bytes())
            }
            _ => continue,
        };
        tree.insert(join(&f.name), entry);
    }
    for d in &t.dirs {
        let path = join(&d.name);
        tree.insert(path.clone(), EtcEntry::Dir(repo.load_dirmeta(&d.meta)?));
        scan_tree(repo, &d.tree, &path, tree)?;
    }
    Ok(())
}
