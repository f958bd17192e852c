//! The three-way merge of `/etc` at deploy (rules in `docs/etc-merge.md`).
//!
//! Inputs: the old default (`/usr/etc` of the deployment being left), the local state
//! (its `/etc`), and the new default (`/usr/etc` of the new deployment, already copied
//! to the new `/etc`). A path the user did not touch takes the new default; a path the
//! user changed, added or retyped keeps the user's version (local wins); a path the user
//! deleted stays deleted. Mode, owner, xattrs and symlink targets count as changes.
//! Planning is pure ([`plan`]); [`apply`] carries a plan out.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use anyhow::{Context, Result};
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};
use serde::Serialize;

use arbor_core::fsutil;
use arbor_store::encoding::{Meta, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};

/// One path of an `/etc` tree, as far as the merge compares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EtcEntry {
    /// A directory with its metadata.
    Dir(Meta),
    /// A regular file: metadata and BLAKE3 of its content.
    File(Meta, [u8; 32]),
    /// A symlink: metadata and target.
    Symlink(Meta, Vec<u8>),
}

/// A tree: relative path ("ssh/sshd_config") → entry. Sorted, so parents come first.
pub type EtcTree = BTreeMap<String, EtcEntry>;

/// One step of a merge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", content = "path", rename_all = "kebab-case")]
pub enum EtcAction {
    /// Put the local version of this path into the new `/etc`.
    KeepLocal(String),
    /// Remove this path from the new `/etc` (the user deleted it).
    Remove(String),
}

/// What a merge does with one path that the user or the update changed.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    serde::Deserialize,
    zvariant::Type,
    zvariant::Value,
    zvariant::OwnedValue,
)]
#[zvariant(signature = "s", rename_all = "kebab-case")]
#[serde(rename_all = "kebab-case")]
pub enum MergeOutcome {
    /// The user changed or added it, the update did not: the local version stays.
    KeptLocal,
    /// The user deleted it: it stays deleted.
    KeptDeleted,
    /// Only the update changed (or added, or removed) it: the new default is taken.
    TookNewDefault,
    /// Both changed it: the local version stays, and the new default is saved beside
    /// it (`<path>` + [`DIST_SUFFIX`]) for the administrator to compare.
    Conflict,
    /// Both changed a file of users or groups (`passwd`, `group`, `shadow`,
    /// `gshadow`): merged entry by entry ([`super::userdb`]).
    MergedEntries,
}

/// One path of a merge report.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    serde::Deserialize,
    zvariant::Type,
    zvariant::Value,
    zvariant::OwnedValue,
)]
#[zvariant(signature = "dict")]
pub struct MergeEntry {
    /// Relative to `/etc` (`ssh/sshd_config`).
    pub path: String,
    /// What the merge did, or will do.
    pub outcome: MergeOutcome,
    /// For a conflict, where the new default was saved (relative to `/etc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved: Option<String>,
}

/// The name beside a conflicting file under which the new default is saved, in the
/// manner of dpkg's `.dpkg-dist`.
pub const DIST_SUFFIX: &str = ".arbor-dist";

/// What merging `local` (judged against `old_default`) into `new_default` does with
/// each path either side changed: the report `etc diff`, deploy and finalize give.
/// Paths below a directory the user deleted are not listed (the directory is).
pub fn report(old_default: &EtcTree, local: &EtcTree, new_default: &EtcTree) -> Vec<MergeEntry> {
    let mut paths: Vec<&String> = old_default
        .keys()
        .chain(local.keys())
        .chain(new_default.keys())
        .collect();
    paths.sort();
    paths.dedup();
    let mut out = Vec::new();
    let mut deleted: Option<&str> = None;
    for path in paths {
        if deleted.is_some_and(|d| under(path, d)) {
            continue;
        }
        let (o, l, n) = (
            old_default.get(path),
            local.get(path),
            new_default.get(path),
        );
        let local_changed = o != l;
        let update_changed = o != n;
        let outcome = match (local_changed, update_changed) {
            (false, false) => continue,
            (false, true) => MergeOutcome::TookNewDefault,
            (true, _) if l.is_none() => {
                deleted = Some(path);
                MergeOutcome::KeptDeleted
            }
            (true, false) => MergeOutcome::KeptLocal,
            // Both sides made it the same: nothing to choose.
            (true, true) if l == n => continue,
            (true, true) if super::userdb::is_backup(path) => MergeOutcome::KeptLocal,
            (true, true) => match (l, n) {
                (Some(EtcEntry::File(..)), Some(EtcEntry::File(..)))
                    if super::userdb::is_userdb(path) =>
                {
                    MergeOutcome::MergedEntries
                }
                (_, Some(EtcEntry::File(..) | EtcEntry::Symlink(..))) => MergeOutcome::Conflict,
                _ => MergeOutcome::KeptLocal,
            },
        };
        out.push(MergeEntry {
            path: path.clone(),
            outcome,
            saved: (outcome == MergeOutcome::Conflict).then(|| format!("{path}{DIST_SUFFIX}")),
        });
    }
    out
}

/// Merges the local tree at `local_root` (judged against `old_default`, the tree at
/// `old_root`) into `new_root`, which holds the new default: the files of users and
/// groups that both sides changed are merged entry by entry, conflicting new
/// defaults are moved aside to their [`DIST_SUFFIX`] names, then the plan is applied.
/// Returns the report. Fails, changing nothing, when a locally changed file would
/// hide a directory the new default ships ([`file_over_new_dir`]) or a local user or
/// group would share its id with a new one ([`super::userdb::IdClash`]).
pub fn merge_into(
    old_default: &EtcTree,
    old_root: &Path,
    local: &EtcTree,
    local_root: &Path,
    new_root: &Path,
) -> Result<Vec<MergeEntry>> {
    let new_default = scan(new_root)?;
    let entries = report(old_default, local, &new_default);
    let saved: std::collections::BTreeSet<&str> =
        entries.iter().filter_map(|e| e.saved.as_deref()).collect();
    let merged: std::collections::BTreeSet<&str> = entries
        .iter()
        .filter(|e| e.outcome == MergeOutcome::MergedEntries)
        .map(|e| e.path.as_str())
        .collect();
    // A stale saved default from an earlier conflict does not replace this one, and a
    // file merged per entry is written whole below.
    let actions: Vec<EtcAction> = plan(old_default, local)
        .into_iter()
        .filter(|a| {
            !matches!(a, EtcAction::KeepLocal(p)
                if saved.contains(p.as_str()) || merged.contains(p.as_str()))
        })
        .collect();
    let retyped = file_over_new_dir(&new_default, local, &actions);
    if !retyped.is_empty() {
        return Err(RetypedError(retyped).into());
    }
    // Every merge is computed before anything is written, so that a clash changes
    // nothing.
    let mut userdb = Vec::new();
    for path in &merged {
        let text = |root: &Path| -> Result<String> {
            let bytes = std::fs::read(root.join(path))
                .with_context(|| format!("reading {}", root.join(path).display()))?;
            String::from_utf8(bytes).with_context(|| format!("/etc/{path} is not UTF-8"))
        };
        let out =
            super::userdb::merge(path, &text(old_root)?, &text(local_root)?, &text(new_root)?)?;
        userdb.push((*path, out));
    }
    for (path, text) in &userdb {
        let Some(EtcEntry::File(meta, _)) = new_default.get(*path) else {
            unreachable!("only files are merged per entry");
        };
        // The new default's owner and mode: `shadow` stays 640 root:shadow.
        let (dir, name) = parent_beneath(new_root, path)?;
        fsutil::atomic_write_meta(dir.as_fd(), &name, text.as_bytes(), meta)
            .with_context(|| format!("writing the merged /etc/{path}"))?;
    }
    for e in entries.iter().filter(|e| e.saved.is_some()) {
        let (dir, name) = parent_beneath(new_root, &e.path)?;
        rfs::renameat(
            &dir,
            name.as_str(),
            &dir,
            format!("{name}{DIST_SUFFIX}").as_str(),
        )
        .with_context(|| format!("saving the new default of /etc/{}", e.path))?;
    }
    apply(&actions, local, local_root, new_root)?;
    Ok(entries)
}

/// Locally changed files where the new default has a directory: the merge stops.
#[derive(Debug)]
pub struct RetypedError(pub Vec<String>);

impl std::fmt::Display for RetypedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list: Vec<String> = self.0.iter().map(|p| format!("/etc/{p}")).collect();
        write!(
            f,
            "{} changed locally, and the new version makes {} a directory: move the \
             change aside (or into the new directory once deployed) and deploy again; \
             nothing was deployed",
            list.join(", "),
            if list.len() == 1 { "it" } else { "each" }
        )
    }
}

impl std::error::Error for RetypedError {}

/// Names arbor gives entries it is swapping into a live `/etc` (the live crate's `swap`):
/// never part of the tree, whoever scans it, even if a crash left one behind.
pub const TEMP_PREFIX: &str = ".arbor-live.";

/// Reads a tree (regular files, symlinks, directories; other types are ignored, and so
/// are arbor's own temporaries, [`TEMP_PREFIX`]).
pub fn scan(root: &Path) -> Result<EtcTree> {
    let mut tree = EtcTree::new();
    if !root.exists() {
        return Ok(tree);
    }
    let fd = fsutil::open_dir(root).with_context(|| format!("opening {}", root.display()))?;
    scan_dir(fd.as_fd(), "", &mut tree).with_context(|| format!("reading {}", root.display()))?;
    Ok(tree)
}

fn scan_dir(dir: BorrowedFd<'_>, prefix: &str, tree: &mut EtcTree) -> Result<()> {
    for (name, _) in fsutil::list_dir(dir)? {
        if name.starts_with(TEMP_PREFIX.as_bytes()) {
            continue;
        }
        let path = if prefix.is_empty() {
            fsutil::show(&name)
        } else {
            format!("{prefix}/{}", fsutil::show(&name))
        };
        let st = rfs::statat(dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)?;
        match st.st_mode & S_IFMT {
            S_IFDIR => {
                let sub = fsutil::open_dir_at(dir, &name)?;
                let meta = fsutil::meta_from_stat(&st, fsutil::read_xattrs_fd(sub.as_fd())?);
                tree.insert(path.clone(), EtcEntry::Dir(meta));
                scan_dir(sub.as_fd(), &path, tree)?;
            }
            S_IFREG => {
                let fd = rfs::openat(
                    dir,
                    name.as_slice(),
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                let mut f = std::fs::File::from(fd);
                let meta = fsutil::meta_from_stat(&st, fsutil::read_xattrs_fd(f.as_fd())?);
                let mut bytes = Vec::new();
                f.read_to_end(&mut bytes)?;
                tree.insert(path, EtcEntry::File(meta, *blake3::hash(&bytes).as_bytes()));
            }
            S_IFLNK => {
                let target = rfs::readlinkat(dir, name.as_slice(), Vec::new())?.into_bytes();
                let meta = fsutil::meta_from_stat(&st, fsutil::read_xattrs_at(dir, &name)?);
                tree.insert(path, EtcEntry::Symlink(meta, target));
            }
            _ => {}
        }
    }
    Ok(())
}

fn under(path: &str, dir: &str) -> bool {
    path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

/// The merge of `local` against `old_default`, in an order that can be applied as
/// is (parents before children; nothing below a removed path).
pub fn plan(old_default: &EtcTree, local: &EtcTree) -> Vec<EtcAction> {
    let mut actions: Vec<EtcAction> = Vec::new();
    let mut paths: Vec<&String> = old_default.keys().chain(local.keys()).collect();
    paths.sort();
    paths.dedup();
    let mut removed: Option<&str> = None;
    for path in paths {
        if removed.is_some_and(|r| under(path, r)) {
            continue;
        }
        match (old_default.get(path), local.get(path)) {
            (Some(o), Some(l)) if o == l => {}
            (_, Some(_)) => actions.push(EtcAction::KeepLocal(path.clone())),
            (Some(_), None) => {
                actions.push(EtcAction::Remove(path.clone()));
                removed = Some(path);
            }
            (None, None) => {}
        }
    }
    actions
}

/// Paths the plan would keep as the user's file or symlink where the new default
/// has a directory. Keeping the file would drop everything the new version ships in
/// that directory, and putting the directory there would drop the user's change:
/// the deploy stops instead and names them (as OSTree's merge does).
pub fn file_over_new_dir(
    new_default: &EtcTree,
    local: &EtcTree,
    actions: &[EtcAction],
) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            EtcAction::KeepLocal(p)
                if matches!(new_default.get(p), Some(EtcEntry::Dir(_)))
                    && !matches!(local.get(p), Some(EtcEntry::Dir(_))) =>
            {
                Some(p.clone())
            }
            _ => None,
        })
        .collect()
}

/// Removes `rel` below `root` (recursively). When an ancestor of `rel` is missing or
/// a symlink, the path is not in this tree and nothing is removed: a symlink in the
/// new default is never followed.
fn remove_any(root: &Path, rel: &str) -> Result<()> {
    let (dir_rel, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    let rootfd = fsutil::open_dir(root)?;
    match fsutil::open_beneath(rootfd.as_fd(), dir_rel) {
        Ok(dir) => Ok(fsutil::remove_at(dir.as_fd(), name.as_bytes())?),
        Err(_) => Ok(()),
    }
}

/// Opens the parent of `rel` below `root`, refusing symlinks on the way.
fn parent_beneath(root: &Path, rel: &str) -> Result<(std::os::fd::OwnedFd, String)> {
    let (dir_rel, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    let rootfd = fsutil::open_dir(root)?;
    let dir = fsutil::open_beneath(rootfd.as_fd(), dir_rel)
        .with_context(|| format!("opening /etc/{dir_rel}"))?;
    Ok((dir, name.to_string()))
}

/// Carries out `actions`, copying local versions from `local_root` into `new_root`.
pub fn apply(
    actions: &[EtcAction],
    local: &EtcTree,
    local_root: &Path,
    new_root: &Path,
) -> Result<()> {
    for action in actions {
        match action {
            EtcAction::Remove(rel) => {
                remove_any(new_root, rel).with_context(|| format!("removing /etc/{rel}"))?
            }
            EtcAction::KeepLocal(rel) => keep_local(local, local_root, new_root, rel)
                .with_context(|| format!("keeping local /etc/{rel}"))?,
        }
    }
    Ok(())
}

fn keep_local(local: &EtcTree, local_root: &Path, new_root: &Path, rel: &str) -> Result<()> {
    // Parents the new default lacks are recreated as the user has them.
    let mut parent = String::new();
    for comp in rel
        .split('/')
        .collect::<Vec<_>>()
        .split_last()
        .map(|(_, p)| p.to_vec())
        .unwrap_or_default()
    {
        parent = if parent.is_empty() {
            comp.to_string()
        } else {
            format!("{parent}/{comp}")
        };
        if !std::fs::symlink_metadata(new_root.join(&parent)).is_ok_and(|m| m.is_dir()) {
            remove_any(new_root, &parent)?;
            if let Some(EtcEntry::Dir(m)) = local.get(&parent) {
                make_dir(new_root, &parent, m)?;
            }
        }
    }
    let (dir, name) = parent_beneath(new_root, rel)?;
    let name = name.as_str();
    match &local[rel] {
        EtcEntry::Dir(m) => {
            if !std::fs::symlink_metadata(new_root.join(rel)).is_ok_and(|x| x.is_dir()) {
                remove_any(new_root, rel)?;
                make_dir(new_root, rel, m)?;
            } else {
                fsutil::apply_meta_fd(
                    fsutil::open_dir_at(dir.as_fd(), name.as_bytes())?.as_fd(),
                    m,
                )?;
            }
        }
        EtcEntry::File(m, _) => {
            remove_any(new_root, rel)?;
            let mut src = std::fs::File::from(rfs::open(
                local_root.join(rel),
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?);
            let fd = rfs::openat(
                &dir,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )?;
            let mut out = std::fs::File::from(fd);
            std::io::copy(&mut src, &mut out)
                .map_err(|e| arbor_store::write_error(e, || format!("copying /etc/{rel}")))?;
            fsutil::apply_meta_fd(out.as_fd(), m)?;
        }
        EtcEntry::Symlink(m, target) => {
            remove_any(new_root, rel)?;
            rfs::symlinkat(target.as_slice(), &dir, name)?;
            fsutil::apply_meta_symlink_at(dir.as_fd(), name.as_bytes(), m)?;
        }
    }
    Ok(())
}

fn make_dir(root: &Path, rel: &str, m: &Meta) -> Result<()> {
    let (dir, name) = parent_beneath(root, rel)?;
    let name = name.as_str();
    rfs::mkdirat(&dir, name, Mode::from_raw_mode(0o700))?;
    fsutil::apply_meta_fd(
        fsutil::open_dir_at(dir.as_fd(), name.as_bytes())?.as_fd(),
        m,
    )?;
    Ok(())
}

#[doc(hidden)]
pub mod testing {
    //! Small `/etc` trees for the unit tests of the merge and of the live switch (in
    //! the live crate).
    use super::*;
    use arbor_store::encoding::Xattrs;

    /// Root-owned metadata with this mode.
    pub fn meta(mode: u32) -> Meta {
        Meta {
            mode,
            uid: 0,
            gid: 0,
            xattrs: Xattrs::default(),
        }
    }
    /// A 0644 file whose content hash is `[c; 32]`.
    pub fn file(c: u8) -> EtcEntry {
        EtcEntry::File(meta(S_IFREG | 0o644), [c; 32])
    }
    /// A directory with this mode.
    pub fn dir(mode: u32) -> EtcEntry {
        EtcEntry::Dir(meta(S_IFDIR | mode))
    }
    /// A tree of these entries.
    pub fn tree(entries: &[(&str, EtcEntry)]) -> EtcTree {
        entries
            .iter()
            .map(|(p, e)| (p.to_string(), e.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn untouched_takes_new_changed_keeps_local_deleted_stays_deleted() {
        let dir = EtcEntry::Dir(meta(S_IFDIR | 0o755));
        let old = tree(&[
            ("a", file(1)),
            ("b", file(2)),
            ("d", dir.clone()),
            ("d/x", file(3)),
            ("gone", file(4)),
        ]);
        let local = tree(&[
            ("a", file(1)),    // untouched
            ("b", file(9)),    // edited
            ("mine", file(5)), // added
            (
                "a2",
                EtcEntry::Symlink(meta(S_IFLNK | 0o777), b"a".to_vec()),
            ), // added symlink
        ]);
        use EtcAction::*;
        assert_eq!(
            plan(&old, &local),
            vec![
                KeepLocal("a2".into()),
                KeepLocal("b".into()),
                Remove("d".into()),
                Remove("gone".into()),
                KeepLocal("mine".into())
            ]
        );
    }

    #[test]
    fn the_user_databases_backups_are_the_machines_never_a_conflict() {
        let old = tree(&[
            ("passwd-", file(1)),
            ("shadow-", file(1)),
            ("issue", file(1)),
        ]);
        let local = tree(&[
            ("passwd-", file(2)),
            ("shadow-", file(2)),
            ("issue", file(2)),
        ]);
        let new = tree(&[
            ("passwd-", file(3)),
            ("shadow-", file(3)),
            ("issue", file(3)),
        ]);
        let report = report(&old, &local, &new);
        let outcome = |p: &str| report.iter().find(|e| e.path == p).unwrap().outcome;
        assert_eq!(outcome("passwd-"), MergeOutcome::KeptLocal);
        assert_eq!(outcome("shadow-"), MergeOutcome::KeptLocal);
        assert_eq!(outcome("issue"), MergeOutcome::Conflict);
    }

    /// A new default that turns a directory into a symlink pointing outside must not
    /// make the merge delete or write through it.
    #[test]
    fn apply_never_follows_symlinks_in_the_new_default() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("host");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("b"), "keep").unwrap();
        let new = t.path().join("new");
        std::fs::create_dir(&new).unwrap();
        std::os::unix::fs::symlink(&outside, new.join("a")).unwrap();
        let local_root = t.path().join("local");
        std::fs::create_dir_all(local_root.join("a")).unwrap();
        std::fs::write(local_root.join("a/c"), "mine").unwrap();
        let dir = EtcEntry::Dir(meta(S_IFDIR | 0o755));
        let old = tree(&[("a", dir.clone()), ("a/b", file(1))]);
        let local = scan(&local_root).unwrap();
        let actions = plan(&old, &local);
        assert!(actions.contains(&EtcAction::Remove("a/b".into())));
        apply(&actions, &local, &local_root, &new).unwrap();
        assert_eq!(
            std::fs::read_to_string(outside.join("b")).unwrap(),
            "keep",
            "deleted through a symlink"
        );
        assert!(!outside.join("c").exists(), "wrote through a symlink");
        assert_eq!(std::fs::read_to_string(new.join("a/c")).unwrap(), "mine");
    }

    #[test]
    fn a_changed_file_where_the_new_default_has_a_directory_is_named() {
        let dir = EtcEntry::Dir(meta(S_IFDIR | 0o755));
        let old = tree(&[
            ("cron.conf", file(1)),
            ("d", dir.clone()),
            ("same", file(1)),
        ]);
        let local = tree(&[
            ("cron.conf", file(2)),
            ("d", dir.clone()),
            ("same", file(1)),
        ]);
        let new = tree(&[
            ("cron.conf", dir.clone()),
            ("d", dir.clone()),
            ("same", dir),
        ]);
        let actions = plan(&old, &local);
        // An untouched file becomes the new directory; only the changed one conflicts.
        assert_eq!(file_over_new_dir(&new, &local, &actions), ["cron.conf"]);
    }

    #[test]
    fn mode_owner_and_type_changes_count() {
        let old = tree(&[("f", file(1)), ("g", file(1)), ("h", file(1))]);
        let mut owned = meta(S_IFREG | 0o644);
        owned.uid = 1000;
        let local = tree(&[
            ("f", EtcEntry::File(meta(S_IFREG | 0o600), [1; 32])),
            ("g", EtcEntry::File(owned, [1; 32])),
            ("h", EtcEntry::Dir(meta(S_IFDIR | 0o755))),
        ]);
        assert_eq!(plan(&old, &local).len(), 3);
    }
}
