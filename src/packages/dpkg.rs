//! The dpkg database as arbor reads it: the installed packages of a tree, and what
//! changed between two trees.
//!
//! The list comes from dpkg's `status` file. In a committed tree that file is at
//! `/usr/lib/arbor/dpkg/status` (DESIGN §2). Versions compare by Debian's rules
//! (epochs, `~`, revisions) through the `debversion` crate.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

pub use crate::statedb::Package;

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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
