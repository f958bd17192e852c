//! Looking inside commits without checking them out: `ls`, `cat`, `log`, `show`.

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::encoding::{S_IFDIR, S_IFLNK, S_IFMT};
use crate::{Commit, ObjectId, Repo};
use arbor_core::fsutil::show;

/// What a path inside a commit is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    /// A file or symlink object.
    File(ObjectId),
    /// A directory: (dirtree, dirmeta).
    Dir(ObjectId, ObjectId),
}

/// Follows `path` ("/usr/bin/ls", or "/" for the root) through the commit's trees.
/// Symlinks inside the tree are not followed.
pub fn lookup(repo: &Repo, commit: &ObjectId, path: &str) -> Result<Node> {
    let c = repo.load_commit(commit)?;
    let mut node = Node::Dir(c.root_tree, c.root_meta);
    let mut walked = String::new();
    for comp in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
        let Node::Dir(tree, _) = node else {
            bail!("{walked} is not a directory");
        };
        let t = repo.load_dirtree(&tree)?;
        walked = format!("{walked}/{comp}");
        let name = comp.as_bytes();
        node = if let Some(f) = t.files.iter().find(|f| f.name == name) {
            Node::File(f.file)
        } else if let Some(d) = t.dirs.iter().find(|d| d.name == name) {
            Node::Dir(d.tree, d.meta)
        } else {
            bail!(
                "{walked}: no such file or directory in commit {}",
                commit.short()
            );
        };
    }
    Ok(node)
}

/// One line of `arbor ls`.
#[derive(Clone, Debug, Serialize)]
pub struct ListEntry {
    /// Absolute path in the tree.
    pub path: String,
    /// Full mode, type bits included.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size of a regular file (0 for directories, target length for symlinks).
    pub size: u64,
    /// Symlink target.
    pub target: Option<String>,
    /// Number of extended attributes.
    pub xattrs: usize,
    /// The file or dirtree object.
    pub object: ObjectId,
}

impl ListEntry {
    /// `d`, `l` or `-`, as `ls -l` shows it.
    pub fn type_char(&self) -> char {
        match self.mode & S_IFMT {
            S_IFDIR => 'd',
            S_IFLNK => 'l',
            _ => '-',
        }
    }
}

/// Lists `path` in `commit`: the entry itself, then (for a directory) its children,
/// recursively when asked.
pub fn list(repo: &Repo, commit: &ObjectId, path: &str, recursive: bool) -> Result<Vec<ListEntry>> {
    let clean = format!(
        "/{}",
        path.split('/')
            .filter(|c| !c.is_empty())
            .collect::<Vec<_>>()
            .join("/")
    );
    let node = lookup(repo, commit, &clean)?;
    let mut out = Vec::new();
    entry(repo, &clean, node, &mut out)?;
    if let Node::Dir(tree, _) = node {
        children(
            repo,
            &tree,
            clean.trim_end_matches('/'),
            recursive,
            &mut out,
        )?;
    }
    Ok(out)
}

fn entry(repo: &Repo, path: &str, node: Node, out: &mut Vec<ListEntry>) -> Result<()> {
    let e = match node {
        Node::Dir(tree, meta) => {
            let m = repo.load_dirmeta(&meta)?;
            ListEntry {
                path: path.into(),
                mode: m.mode,
                uid: m.uid,
                gid: m.gid,
                size: 0,
                target: None,
                xattrs: m.xattrs.pairs().len(),
                object: tree,
            }
        }
        Node::File(id) => {
            let i = repo
                .file_info(&id)
                .with_context(|| format!("reading {path}"))?;
            ListEntry {
                path: path.into(),
                mode: i.meta.mode,
                uid: i.meta.uid,
                gid: i.meta.gid,
                size: i.size,
                target: i.target.map(|t| show(&t)),
                xattrs: i.meta.xattrs.pairs().len(),
                object: id,
            }
        }
    };
    out.push(e);
    Ok(())
}

fn children(
    repo: &Repo,
    tree: &ObjectId,
    path: &str,
    recursive: bool,
    out: &mut Vec<ListEntry>,
) -> Result<()> {
    let t = repo.load_dirtree(tree)?;
    let mut nodes: Vec<(String, Node)> = t
        .files
        .iter()
        .map(|f| (format!("{path}/{}", show(&f.name)), Node::File(f.file)))
        .chain(t.dirs.iter().map(|d| {
            (
                format!("{path}/{}", show(&d.name)),
                Node::Dir(d.tree, d.meta),
            )
        }))
        .collect();
    nodes.sort_by(|a, b| a.0.cmp(&b.0));
    for (p, node) in nodes {
        entry(repo, &p, node, out)?;
        if let (true, Node::Dir(sub, _)) = (recursive, node) {
            children(repo, &sub, &p, true, out)?;
        }
    }
    Ok(())
}

/// Opens the content of the regular file at `path` in `commit`.
pub fn open_content(repo: &Repo, commit: &ObjectId, path: &str) -> Result<std::fs::File> {
    match lookup(repo, commit, path)? {
        Node::Dir(..) => bail!("{path} is a directory"),
        Node::File(id) => {
            let info = repo.file_info(&id)?;
            if let Some(t) = info.target {
                bail!(
                    "{path} is a symlink to '{}'; cat its target instead",
                    show(&t)
                );
            }
            Ok(repo.open_file_object(&id)?)
        }
    }
}

/// A commit with its id, for `log` and `show`.
#[derive(Clone, Debug, Serialize)]
pub struct CommitInfo {
    /// The commit id.
    pub id: ObjectId,
    /// Parent commit.
    pub parent: Option<ObjectId>,
    /// Seconds since the epoch.
    pub timestamp: i64,
    /// One-line summary.
    pub subject: String,
    /// Longer description.
    pub body: String,
    /// Key=value metadata.
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Root dirtree.
    pub root_tree: ObjectId,
    /// Root dirmeta.
    pub root_meta: ObjectId,
}

impl CommitInfo {
    fn new(id: ObjectId, c: Commit) -> Self {
        CommitInfo {
            id,
            parent: c.parent,
            timestamp: c.timestamp,
            subject: c.subject,
            body: c.body,
            metadata: c.metadata.into_iter().collect(),
            root_tree: c.root_tree,
            root_meta: c.root_meta,
        }
    }
}

/// One commit.
pub fn show_commit(repo: &Repo, id: &ObjectId) -> Result<CommitInfo> {
    Ok(CommitInfo::new(*id, repo.load_commit(id)?))
}

/// The history from `id` back, newest first; stops at a parent that is not stored.
pub fn log(repo: &Repo, id: &ObjectId, limit: Option<usize>) -> Result<Vec<CommitInfo>> {
    let mut out = Vec::new();
    let mut next = Some(*id);
    while let Some(id) = next {
        if limit.is_some_and(|l| out.len() >= l)
            || (!out.is_empty() && !repo.has_object(&id, crate::ObjectKind::Commit))
        {
            break;
        }
        let c = repo.load_commit(&id)?;
        next = c.parent;
        out.push(CommitInfo::new(id, c));
    }
    Ok(out)
}
