//! The dpkg database as arbor reads it: the installed packages of a tree, and what
//! changed between two trees.
//!
//! The list comes from dpkg's `status` file. In a committed tree that file is at
//! `/usr/lib/arbor/dpkg/status` (DESIGN §2). Versions compare by Debian's rules
//! (epochs, `~`, revisions) through the `debversion` crate. The list of a commit is
//! recorded in its metadata by compose, or remembered in the state database.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::io::Read;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::inspect::{self, Node};
use crate::{ObjectId, Repo};
use arbor_statedb::StateDb;

pub use arbor_statedb::Package;

/// The installed packages in a dpkg `status` file, sorted by name and architecture.
///
/// Only packages whose status ends in `installed` count (config-files, half-installed
/// and not-installed entries are left out).
pub fn parse_status(text: &str) -> Result<Vec<Package>> {
    let mut out = Vec::new();
    for (n, stanza) in text.split("\n\n").enumerate() {
        let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
        for line in stanza.lines() {
            if line.starts_with([' ', '\t']) {
                continue; // a continuation line of a multi-line field
            }
            if let Some((k, v)) = line.split_once(':') {
                fields.insert(k, v.trim());
            }
        }
        let Some(name) = fields.get("Package") else {
            if fields.is_empty() {
                continue;
            }
            bail!("stanza {} of the dpkg status has no Package field", n + 1);
        };
        let status = fields.get("Status").copied().unwrap_or("");
        if status.split_whitespace().last() != Some("installed") {
            continue;
        }
        let version = fields
            .get("Version")
            .with_context(|| format!("package {name} has no Version"))?;
        out.push(Package {
            name: name.to_string(),
            arch: fields.get("Architecture").unwrap_or(&"all").to_string(),
            version: version.to_string(),
        });
    }
    out.sort();
    Ok(out)
}

/// The compact text kept in commit metadata: one `name:arch version` per line.
pub fn to_metadata(pkgs: &[Package]) -> String {
    pkgs.iter()
        .map(|p| format!("{} {}\n", p.key(), p.version))
        .collect()
}

/// Reads [`to_metadata`]'s text back.
pub fn from_metadata(text: &str) -> Result<Vec<Package>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (key, version) = line
            .split_once(' ')
            .with_context(|| format!("package line '{line}' has no version"))?;
        let (name, arch) = key
            .split_once(':')
            .with_context(|| format!("package '{key}' has no architecture"))?;
        out.push(Package {
            name: name.into(),
            arch: arch.into(),
            version: version.into(),
        });
    }
    out.sort();
    Ok(out)
}

/// A package present on both sides with another version.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    zvariant::Type,
    zvariant::Value,
    zvariant::OwnedValue,
)]
#[zvariant(signature = "dict")]
pub struct Change {
    /// Its name.
    pub name: String,
    /// Its architecture.
    pub arch: String,
    /// The version in the first tree.
    pub from: String,
    /// The version in the second tree.
    pub to: String,
}

/// What changed in the package set from one tree to another, as `rpm-ostree db diff`
/// reports it.
#[derive(
    Clone,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    zvariant::Type,
    zvariant::Value,
    zvariant::OwnedValue,
)]
#[zvariant(signature = "dict")]
pub struct PackageDiff {
    /// Only in the second tree.
    pub added: Vec<Package>,
    /// Only in the first tree.
    pub removed: Vec<Package>,
    /// Newer in the second tree.
    pub upgraded: Vec<Change>,
    /// Older in the second tree.
    pub downgraded: Vec<Change>,
}

/// Compares two Debian versions; text order when either does not parse.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    match (
        a.parse::<debversion::Version>(),
        b.parse::<debversion::Version>(),
    ) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

/// The difference from `a` to `b`.
pub fn diff(a: &[Package], b: &[Package]) -> PackageDiff {
    let index = |l: &[Package]| -> BTreeMap<(String, String), Package> {
        l.iter()
            .map(|p| ((p.name.clone(), p.arch.clone()), p.clone()))
            .collect()
    };
    let (ia, ib) = (index(a), index(b));
    let mut d = PackageDiff::default();
    for (k, pa) in &ia {
        match ib.get(k) {
            None => d.removed.push(pa.clone()),
            Some(pb) if pb.version != pa.version => {
                let c = Change {
                    name: pa.name.clone(),
                    arch: pa.arch.clone(),
                    from: pa.version.clone(),
                    to: pb.version.clone(),
                };
                match compare_versions(&pa.version, &pb.version) {
                    Ordering::Greater => d.downgraded.push(c),
                    _ => d.upgraded.push(c),
                }
            }
            Some(_) => {}
        }
    }
    d.added = ib
        .iter()
        .filter(|(k, _)| !ia.contains_key(k))
        .map(|(_, p)| p.clone())
        .collect();
    d
}

/// The commit metadata key holding the package list ([`to_metadata`]).
pub const METADATA_KEY: &str = "arbor.packages";

/// Where a committed tree keeps the dpkg status file, then where a plain root does.
const STATUS_PATHS: &[&str] = &["/usr/lib/arbor/dpkg/status", "/var/lib/dpkg/status"];

/// The installed packages of a commit: from its metadata when compose recorded them,
/// else from the state database, else read from the dpkg status file in the tree (and
/// then remembered in the state database).
pub fn packages_of(repo: &Repo, commit: &ObjectId) -> Result<Vec<Package>> {
    let c = repo.load_commit(commit)?;
    if let Some(text) = c.metadata_value(METADATA_KEY) {
        return from_metadata(text).context("reading the commit's package list");
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
            return parse_status(&text).with_context(|| format!("parsing {path}"));
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
    let root = arbor_core::fsutil::open_dir(root)?;
    let Ok(dir) =
        arbor_core::fsutil::open_beneath(std::os::fd::AsFd::as_fd(&root), "usr/lib/arbor/dpkg")
    else {
        return Ok(None);
    };
    let bytes = match arbor_core::fsutil::read_bounded_at(
        std::os::fd::AsFd::as_fd(&dir),
        "status",
        256 << 20,
    ) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("reading the dpkg status"),
    };
    let text = String::from_utf8(bytes).context("the dpkg status is not UTF-8")?;
    Ok(Some(parse_status(&text)?))
}

/// Adds the package list to commit metadata, as compose does.
pub fn add_metadata(metadata: &mut Vec<(String, String)>, pkgs: &[Package]) {
    metadata.retain(|(k, _)| k != METADATA_KEY);
    metadata.push((METADATA_KEY.to_string(), to_metadata(pkgs)));
}

/// Remembers a commit's package list in the state database (best effort: the commit's
/// metadata has it too).
pub fn remember(repo: &Repo, commit: &ObjectId, pkgs: &[Package]) {
    if let Ok(mut db) = StateDb::open(&repo.state_db_path()) {
        let _ = db.store_packages(&commit.to_hex(), pkgs);
    }
}

pub use arbor_core::names::valid_package;

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "\
Package: hello
Status: install ok installed
Architecture: amd64
Version: 2.10-3
Description: example
 continued description: with a colon

Package: gone
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: perl
Status: install ok installed
Architecture: amd64
Version: 5.36.0-7+deb12u1
";

    #[test]
    fn status_lists_installed_packages_only() {
        let p = parse_status(STATUS).unwrap();
        assert_eq!(
            p.iter().map(|p| p.key()).collect::<Vec<_>>(),
            ["hello:amd64", "perl:amd64"]
        );
        assert_eq!(from_metadata(&to_metadata(&p)).unwrap(), p);
    }

    #[test]
    fn diff_uses_debian_version_order() {
        let pkg = |n: &str, v: &str| Package {
            name: n.into(),
            arch: "amd64".into(),
            version: v.into(),
        };
        let a = [
            pkg("a", "1.0"),
            pkg("b", "1.0~rc1"),
            pkg("c", "1:0.9"),
            pkg("gone", "1"),
        ];
        let b = [
            pkg("a", "1.0"),
            pkg("b", "1.0"),
            pkg("c", "2.0"),
            pkg("new", "1"),
        ];
        let d = diff(&a, &b);
        assert_eq!(d.added, [pkg("new", "1")]);
        assert_eq!(d.removed, [pkg("gone", "1")]);
        // 1.0~rc1 < 1.0 (tilde sorts first); 1:0.9 > 2.0 (the epoch wins).
        assert_eq!(
            d.upgraded.iter().map(|c| &c.name).collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(
            d.downgraded.iter().map(|c| &c.name).collect::<Vec<_>>(),
            ["c"]
        );
    }
}
