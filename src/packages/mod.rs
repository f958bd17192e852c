//! Packages: composing a tree from a package set (treefile), layering packages on a
//! deployment, and the package database of commits (DESIGN §5).
//!
//! Debian's own tools do the package work: mmdebstrap builds a root, and apt and dpkg
//! install into an overlay of the base checkout. arbor shapes the result (see
//! [`crate::compose`]) and commits it.

pub mod compose_tree;
pub mod dpkg;
pub mod layer;
mod overlay_apply;
pub mod treefile;

use std::io::Read;

use anyhow::{Context, Result};

use crate::inspect::{self, Node};
use crate::statedb::StateDb;
use crate::store::{ObjectId, Repo};
use dpkg::Package;

/// The commit metadata key holding the package list ([`dpkg::to_metadata`]).
pub const METADATA_KEY: &str = "arbor.packages";

/// Where a committed tree keeps the dpkg status file, then where a plain root does.
const STATUS_PATHS: &[&str] = &["/usr/lib/arbor/dpkg/status", "/var/lib/dpkg/status"];

/// The installed packages of a commit: from its metadata when compose recorded them,
/// else from the state database, else read from the dpkg status file in the tree (and
/// then remembered in the state database).
pub fn packages_of(repo: &Repo, commit: &ObjectId) -> Result<Vec<Package>> {
    let c = repo.load_commit(commit)?;
    if let Some(text) = c.metadata_value(METADATA_KEY) {
        return dpkg::from_metadata(text).context("reading the commit's package list");
    }
    let mut db = StateDb::open(&repo.state_db_path())?;
    let hex = commit.to_hex();
    if let Some(list) = db.packages(&hex)? {
        return Ok(list);
    }
    let list = read_status(repo, commit)?;
    db.store_packages(&hex, &list)?;
    Ok(list)
}

/// Parses the dpkg status file found in the commit's tree.
pub fn read_status(repo: &Repo, commit: &ObjectId) -> Result<Vec<Package>> {
    for path in STATUS_PATHS {
        if let Ok(Node::File(_)) = inspect::lookup(repo, commit, path) {
            let mut text = String::new();
            inspect::open_content(repo, commit, path)?
                .read_to_string(&mut text)
                .with_context(|| format!("reading {path}"))?;
            return dpkg::parse_status(&text).with_context(|| format!("parsing {path}"));
        }
    }
    anyhow::bail!(
        "commit {commit} has no dpkg database ({})",
        STATUS_PATHS.join(" or ")
    )
}

/// The installed packages of a composed tree on disk (its dpkg database in
/// `/usr/lib/arbor/dpkg`), or `None` when it has none. The tree may be hostile: the
/// path is opened beneath it without following symlinks, and the file's size is
/// bounded.
pub fn tree_packages(root: &std::path::Path) -> Result<Option<Vec<Package>>> {
    let root = crate::fsutil::open_dir(root)?;
    let Ok(dir) =
        crate::fsutil::open_beneath(std::os::fd::AsFd::as_fd(&root), "usr/lib/arbor/dpkg")
    else {
        return Ok(None);
    };
    let bytes =
        match crate::fsutil::read_bounded_at(std::os::fd::AsFd::as_fd(&dir), "status", 256 << 20) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).context("reading the dpkg status"),
        };
    let text = String::from_utf8(bytes).context("the dpkg status is not UTF-8")?;
    Ok(Some(dpkg::parse_status(&text)?))
}

/// Adds the package list to commit metadata, as compose does.
pub fn add_metadata(metadata: &mut Vec<(String, String)>, pkgs: &[Package]) {
    metadata.retain(|(k, _)| k != METADATA_KEY);
    metadata.push((METADATA_KEY.to_string(), dpkg::to_metadata(pkgs)));
}

/// Remembers a commit's package list in the state database (best effort: the commit's
/// metadata has it too).
pub fn remember(repo: &Repo, commit: &ObjectId, pkgs: &[Package]) {
    if let Ok(mut db) = StateDb::open(&repo.state_db_path()) {
        let _ = db.store_packages(&commit.to_hex(), pkgs);
    }
}
