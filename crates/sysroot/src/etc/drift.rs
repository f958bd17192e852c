//! How a `/etc` differs from its image's defaults: `arbor etc diff`.
//!
//! Pure: both sides are [`EtcTree`]s scanned by [`super::merge::scan`], compared as
//! the merge compares them (type, content, symlink target, mode, owner, xattrs).

use serde::Serialize;

use super::merge::{EtcEntry, EtcTree};

/// How one path differs.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    zvariant::Type,
    zvariant::Value,
    zvariant::OwnedValue,
)]
#[zvariant(signature = "s", rename_all = "kebab-case")]
#[serde(rename_all = "kebab-case")]
pub enum DriftKind {
    /// Not in the defaults.
    Added,
    /// In both, different.
    Modified,
    /// In the defaults only (a directory removed is listed once, not its content).
    Removed,
}

/// What about a modified path differs.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    zvariant::Type,
    zvariant::Value,
    zvariant::OwnedValue,
)]
#[zvariant(signature = "s", rename_all = "kebab-case")]
#[serde(rename_all = "kebab-case")]
pub enum Aspect {
    /// File, directory or symlink changed into another of these.
    Type,
    /// A regular file's bytes.
    Content,
    /// A symlink's target.
    Target,
    /// Permission bits.
    Mode,
    /// Owner or group.
    Owner,
    /// Extended attributes.
    Xattrs,
}

/// One path that differs from the defaults.
#[derive(
    Clone, Debug, PartialEq, Eq, Serialize, zvariant::Type, zvariant::Value, zvariant::OwnedValue,
)]
#[zvariant(signature = "dict")]
pub struct DriftEntry {
    /// Relative to `/etc`.
    pub path: String,
    /// Added, modified or removed.
    pub change: DriftKind,
    /// For a modified path, what differs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aspects: Vec<Aspect>,
}

fn under(path: &str, dir: &str) -> bool {
    path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

fn aspects(a: &EtcEntry, b: &EtcEntry) -> Vec<Aspect> {
    let (ma, mb) = match (a, b) {
        (EtcEntry::Dir(x), EtcEntry::Dir(y)) => (x, y),
        (EtcEntry::File(x, _), EtcEntry::File(y, _)) => (x, y),
        (EtcEntry::Symlink(x, _), EtcEntry::Symlink(y, _)) => (x, y),
        _ => return vec![Aspect::Type],
    };
    let mut out = Vec::new();
    match (a, b) {
        (EtcEntry::File(_, ca), EtcEntry::File(_, cb)) if ca != cb => out.push(Aspect::Content),
        (EtcEntry::Symlink(_, ta), EtcEntry::Symlink(_, tb)) if ta != tb => {
            out.push(Aspect::Target)
        }
        _ => {}
    }
    // A symlink has no mode of its own.
    if !matches!(a, EtcEntry::Symlink(..)) && ma.mode & 0o7777 != mb.mode & 0o7777 {
        out.push(Aspect::Mode);
    }
    if (ma.uid, ma.gid) != (mb.uid, mb.gid) {
        out.push(Aspect::Owner);
    }
    if ma.xattrs != mb.xattrs {
        out.push(Aspect::Xattrs);
    }
    out
}

/// Every path where `local` differs from `defaults`, sorted by path.
pub fn diff(defaults: &EtcTree, local: &EtcTree) -> Vec<DriftEntry> {
    let mut paths: Vec<&String> = defaults.keys().chain(local.keys()).collect();
    paths.sort();
    paths.dedup();
    let mut out = Vec::new();
    let mut removed: Option<&str> = None;
    for path in paths {
        if removed.is_some_and(|r| under(path, r)) {
            continue;
        }
        let (change, aspects) = match (defaults.get(path), local.get(path)) {
            (Some(d), Some(l)) if d == l => continue,
            (Some(d), Some(l)) => (DriftKind::Modified, aspects(d, l)),
            (None, Some(_)) => (DriftKind::Added, Vec::new()),
            (Some(_), None) => {
                removed = Some(path);
                (DriftKind::Removed, Vec::new())
            }
            (None, None) => continue,
        };
        out.push(DriftEntry {
            path: path.clone(),
            change,
            aspects,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etc::merge::testing::{dir, file, meta, tree};
    use arbor_store::encoding::S_IFREG;

    #[test]
    fn lists_added_modified_and_removed_with_what_changed() {
        let defaults = tree(&[
            ("a", file(1)),
            ("b", file(2)),
            ("d", dir(0o755)),
            ("d/x", file(3)),
            ("d/y", file(4)),
            ("m", file(5)),
        ]);
        let mut chmod = meta(S_IFREG | 0o600);
        chmod.uid = 7;
        let local = tree(&[
            ("a", file(1)),
            ("b", file(9)),
            ("m", EtcEntry::File(chmod, [5; 32])),
            ("new", file(6)),
        ]);
        let got = diff(&defaults, &local);
        let summary: Vec<(&str, DriftKind, Vec<Aspect>)> = got
            .iter()
            .map(|e| (e.path.as_str(), e.change, e.aspects.clone()))
            .collect();
        assert_eq!(
            summary,
            [
                ("b", DriftKind::Modified, vec![Aspect::Content]),
                ("d", DriftKind::Removed, vec![]),
                ("m", DriftKind::Modified, vec![Aspect::Mode, Aspect::Owner]),
                ("new", DriftKind::Added, vec![]),
            ]
        );
        assert!(diff(&defaults, &defaults).is_empty());
        let retyped = tree(&[("a", dir(0o755))]);
        assert_eq!(
            diff(&tree(&[("a", file(1))]), &retyped)[0].aspects,
            [Aspect::Type]
        );
    }
}
