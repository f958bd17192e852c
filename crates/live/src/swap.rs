//! Bringing a live tree (the running `/etc`) to a wanted state so that every entry is,
//! at each instant, either old or new: never missing, never half-written.
//!
//! A rename is atomic only within one mount, and the wanted tree is staged in the run
//! folder, which is another mount than the live tree (on a machine `/run` is a tmpfs;
//! in a test the live `/etc` is a bind mount). So nothing is renamed from the staging
//! folder. Each new entry is first copied beside its destination, under a temporary
//! name in the same directory ([`TEMP_PREFIX`]), and only when every copy is written
//! and synced are they renamed into place:
//! - a file or symlink over a file or symlink (or into an empty place) with a plain
//!   rename, which replaces atomically;
//! - anything over a directory, or a directory over a non-directory, with
//!   `RENAME_EXCHANGE`, after which the old entry (now under the temporary name) is
//!   removed.
//!
//! Everything that can fail for want of space or rights (the copies) fails before the
//! first rename, and then the live tree is untouched. A rename fails only when the
//! tree changed under us (a mount point in the way); the error names the path, the
//! entries before it are new and the rest old, and running again finishes the work.
//! Temporaries a crash left behind are removed by the next run ([`remove_temporaries`])
//! and never read as part of the tree ([`arbor_sysroot::etc::merge::scan`] skips them).

use std::collections::BTreeSet;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use anyhow::{Context, Result, bail};
use rustix::fs::{self as rfs, AtFlags, RenameFlags};

use arbor_core::fsutil;
use arbor_store::encoding::Meta;
pub use arbor_sysroot::etc::merge::TEMP_PREFIX;
use arbor_sysroot::etc::merge::{EtcEntry, EtcTree};

/// One change to the live tree, in the order they are carried out (parents first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Put the wanted entry at this path (a file, a symlink, or a directory with all
    /// it holds), replacing whatever is there.
    Put(String),
    /// The directory stays; only its mode, owner or xattrs change.
    Meta(String, Meta),
    /// Remove this path and everything below it.
    Remove(String),
}

impl Step {
    /// The path the step changes, relative to the tree's root.
    pub fn path(&self) -> &str {
        match self {
            Step::Put(p) | Step::Meta(p, _) | Step::Remove(p) => p,
        }
    }
}

/// True when some ancestor of `path` is in `whole`.
fn below_any(path: &str, whole: &BTreeSet<String>) -> bool {
    let mut p = path;
    while let Some((parent, _)) = p.rsplit_once('/') {
        if whole.contains(parent) {
            return true;
        }
        p = parent;
    }
    false
}

/// The steps that turn `current` into `wanted`. A path that is put or removed whole
/// takes everything below it along, so nothing below it gets a step of its own.
pub fn plan(current: &EtcTree, wanted: &EtcTree) -> Vec<Step> {
    let paths: BTreeSet<&String> = current.keys().chain(wanted.keys()).collect();
    let mut whole = BTreeSet::new();
    let mut steps = Vec::new();
    for p in paths {
        if below_any(p, &whole) {
            continue;
        }
        match (current.get(p), wanted.get(p)) {
            (Some(c), Some(w)) if c == w => {}
            (Some(EtcEntry::Dir(_)), Some(EtcEntry::Dir(m))) => {
                steps.push(Step::Meta(p.clone(), m.clone()));
            }
            (c, Some(w)) => {
                if matches!(w, EtcEntry::Dir(_)) || matches!(c, Some(EtcEntry::Dir(_))) {
                    whole.insert(p.clone());
                }
                steps.push(Step::Put(p.clone()));
            }
            (Some(_), None) => {
                whole.insert(p.clone());
                steps.push(Step::Remove(p.clone()));
            }
            (None, None) => {}
        }
    }
    steps
}

fn split(rel: &str) -> (&str, &str) {
    rel.rsplit_once('/').unwrap_or(("", rel))
}

/// A new entry written beside its destination, waiting to be renamed into place.
struct Prepared {
    step: usize,
    parent: OwnedFd,
    temp: String,
}

/// Steps whose new entries are written and synced beside their destinations, ready to
/// be renamed into place by [`Swap::commit`]. Dropped without a commit, it removes
/// what it wrote: the live tree is then as it was.
pub struct Swap {
    live: OwnedFd,
    steps: Vec<Step>,
    prepared: Vec<Prepared>,
    label: String,
}

impl Swap {
    /// Writes every new entry `steps` needs, copied from `source` (a folder holding
    /// the wanted tree, on any mount), beside its destination in the live tree `live`,
    /// and syncs them. `label` prefixes paths in messages ("/etc"). Changes nothing
    /// that is visible under its own name.
    pub fn prepare(live: &Path, source: &Path, steps: Vec<Step>, label: &str) -> Result<Swap> {
        let live_fd =
            fsutil::open_dir(live).with_context(|| format!("opening {}", live.display()))?;
        let source_fd =
            fsutil::open_dir(source).with_context(|| format!("opening {}", source.display()))?;
        let mut swap = Swap {
            live: live_fd,
            steps,
            prepared: Vec::new(),
            label: label.to_string(),
        };
        for (i, step) in swap.steps.iter().enumerate() {
            let Step::Put(rel) = step else { continue };
            let (parent, name) = split(rel);
            let at = || format!("writing the new {label}/{rel} beside the old one");
            let dir = fsutil::open_beneath(swap.live.as_fd(), parent).with_context(at)?;
            let from = fsutil::open_beneath(source_fd.as_fd(), parent).with_context(at)?;
            let temp = format!("{TEMP_PREFIX}{i}");
            fsutil::remove_at(dir.as_fd(), temp.as_bytes()).with_context(at)?;
            let copied = fsutil::copy_entry_at(from.as_fd(), name, dir.as_fd(), &temp);
            swap.prepared.push(Prepared {
                step: i,
                parent: dir,
                temp,
            });
            copied
                .map_err(|e| arbor_store::write_error(e, at))
                .with_context(|| format!("{label} was left as it was"))?;
        }
        // The copies are on disk before any of them replaces an old entry.
        fsutil::sync_filesystem(&swap.live)
            .with_context(|| format!("syncing the new entries of {label}"))?;
        Ok(swap)
    }

    /// Renames every prepared entry into place, applies metadata changes and removals,
    /// in order, and syncs.
    pub fn commit(mut self) -> Result<()> {
        let prepared = std::mem::take(&mut self.prepared);
        let mut pending = prepared.into_iter();
        let label = self.label.clone();
        for (i, step) in self.steps.iter().enumerate() {
            let result = match step {
                Step::Put(rel) => {
                    let p = pending.next().filter(|p| p.step == i);
                    let p = p.expect("every Put step was prepared, in order");
                    let r = put(&p, split(rel).1);
                    if r.is_err() {
                        let _ = fsutil::remove_at(p.parent.as_fd(), p.temp.as_bytes());
                    }
                    r
                }
                Step::Meta(rel, meta) => fsutil::open_beneath(self.live.as_fd(), rel)
                    .and_then(|d| fsutil::apply_meta_fd(d.as_fd(), meta))
                    .map_err(anyhow::Error::from),
                Step::Remove(rel) => remove(self.live.as_fd(), rel, i),
            };
            let result = result.and_then(|()| arbor_core::failpoint::hit("live-etc-switching"));
            if let Err(e) = result {
                discard(&pending.collect::<Vec<_>>());
                return Err(e.context(format!(
                    "replacing {label}/{}: the entries of {label} before it are new, the \
                     others as they were; run the command again once the cause is fixed",
                    step.path()
                )));
            }
        }
        fsutil::sync_filesystem(&self.live).with_context(|| format!("syncing {label}"))?;
        Ok(())
    }
}

impl Drop for Swap {
    fn drop(&mut self) {
        discard(&self.prepared);
    }
}

/// [`Swap::prepare`] then [`Swap::commit`].
pub fn apply(live: &Path, source: &Path, steps: Vec<Step>, label: &str) -> Result<()> {
    Swap::prepare(live, source, steps, label)?.commit()
}

/// Renames a prepared entry over its destination.
fn put(p: &Prepared, name: &str) -> Result<()> {
    let dir = p.parent.as_fd();
    let old = fsutil::kind_at(dir, name)?;
    let new = fsutil::kind_at(dir, &p.temp)?;
    let is_dir = |k: Option<rfs::FileType>| k == Some(rfs::FileType::Directory);
    if old.is_some() && (is_dir(old) || is_dir(new)) {
        // One atomic swap; the old entry is then under the temporary name.
        rfs::renameat_with(dir, p.temp.as_str(), dir, name, RenameFlags::EXCHANGE)?;
        fsutil::remove_at(dir, p.temp.as_bytes())?;
    } else {
        rfs::renameat(dir, p.temp.as_str(), dir, name)?;
    }
    Ok(())
}

/// Removes `rel`: a directory is first renamed aside, so it disappears at once rather
/// than entry by entry.
fn remove(live: BorrowedFd<'_>, rel: &str, step: usize) -> Result<()> {
    let (parent, name) = split(rel);
    let dir = fsutil::open_beneath(live, parent)?;
    match fsutil::kind_at(dir.as_fd(), name)? {
        None => {}
        Some(rfs::FileType::Directory) => {
            let aside = format!("{TEMP_PREFIX}{step}");
            fsutil::remove_at(dir.as_fd(), aside.as_bytes())?;
            rfs::renameat(&dir, name, &dir, aside.as_str())?;
            fsutil::remove_at(dir.as_fd(), aside.as_bytes())?;
        }
        Some(_) => rfs::unlinkat(&dir, name, AtFlags::empty())?,
    }
    Ok(())
}

fn discard(prepared: &[Prepared]) {
    for p in prepared {
        let _ = fsutil::remove_at(p.parent.as_fd(), p.temp.as_bytes());
    }
}

/// Removes the temporaries an interrupted [`apply`] left anywhere in `live`.
pub fn remove_temporaries(live: &Path) -> Result<()> {
    fn walk(dir: BorrowedFd<'_>) -> std::io::Result<()> {
        for (name, kind) in fsutil::list_dir(dir)? {
            if name.starts_with(TEMP_PREFIX.as_bytes()) {
                fsutil::remove_at(dir, &name)?;
            } else if kind == rfs::FileType::Directory {
                walk(fsutil::open_dir_at(dir, &name)?.as_fd())?;
            }
        }
        Ok(())
    }
    let fd = fsutil::open_dir(live)?;
    walk(fd.as_fd()).with_context(|| {
        format!(
            "removing leftover {TEMP_PREFIX}* entries in {}",
            live.display()
        )
    })?;
    Ok(())
}

/// Checks that `live` now matches `wanted`: the guard after a swap that must not
/// silently leave something behind.
pub fn verify(live: &Path, wanted: &EtcTree, label: &str) -> Result<()> {
    let now = arbor_sysroot::etc::merge::scan(live)?;
    if let Some(step) = plan(&now, wanted).first() {
        bail!(
            "{label}/{} does not match the merge after it was applied",
            step.path()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arbor_store::encoding::{S_IFDIR, S_IFLNK};
    use arbor_sysroot::etc::merge::testing::{dir, file, meta, tree};

    #[test]
    fn plan_puts_whole_subtrees_and_skips_what_is_below_them() {
        let current = tree(&[
            ("a", file(1)),         // becomes a directory
            ("a-b", file(1)),       // sorts between a and a/…
            ("d", dir(0o755)),      // becomes a file
            ("d/x", file(1)),       // goes with d
            ("keep", dir(0o755)),   // only its mode changes
            ("keep/f", file(1)),    // changes
            ("keep/gone", file(1)), // removed
            ("old", dir(0o755)),    // removed with its content
            ("old/y", file(1)),     // goes with old
            ("same", file(7)),      // unchanged
        ]);
        let wanted = tree(&[
            ("a", dir(0o755)),
            ("a-b", file(2)),
            ("a/new", file(3)),
            ("d", file(4)),
            ("keep", dir(0o700)),
            ("keep/f", file(5)),
            (
                "new",
                EtcEntry::Symlink(meta(S_IFLNK | 0o777), b"same".to_vec()),
            ),
            ("same", file(7)),
        ]);
        use Step::*;
        assert_eq!(
            plan(&current, &wanted),
            vec![
                Put("a".into()),
                Put("a-b".into()),
                Put("d".into()),
                Meta("keep".into(), meta(S_IFDIR | 0o700)),
                Put("keep/f".into()),
                Remove("keep/gone".into()),
                Put("new".into()),
                Remove("old".into()),
            ]
        );
        assert!(plan(&wanted, &wanted).is_empty());
    }

    /// Builds `live` and `source` folders, applies, and returns the live tree.
    fn run(live: &Path, source: &Path) -> Result<()> {
        let steps = plan(
            &arbor_sysroot::etc::merge::scan(live)?,
            &arbor_sysroot::etc::merge::scan(source)?,
        );
        apply(live, source, steps, "/etc")
    }

    #[test]
    fn apply_swaps_files_directories_and_symlinks_into_place() {
        let t = tempfile::tempdir().unwrap();
        let (live, source) = (t.path().join("live"), t.path().join("source"));
        for d in [&live, &source] {
            std::fs::create_dir_all(d.join("keep")).unwrap();
        }
        std::fs::write(live.join("keep/f"), "old").unwrap();
        std::fs::write(live.join("a"), "file").unwrap();
        std::fs::create_dir_all(live.join("d/deep")).unwrap();
        std::fs::write(live.join("d/deep/x"), "x").unwrap();
        std::fs::create_dir_all(live.join("gone/sub")).unwrap();
        std::os::unix::fs::symlink("keep/f", live.join("link")).unwrap();
        std::fs::write(source.join("keep/f"), "new").unwrap();
        std::fs::create_dir_all(source.join("a/sub")).unwrap();
        std::fs::write(source.join("a/sub/y"), "y").unwrap();
        std::fs::write(source.join("d"), "now a file").unwrap();
        std::os::unix::fs::symlink("a/sub/y", source.join("link")).unwrap();
        run(&live, &source).unwrap();
        verify(
            &live,
            &arbor_sysroot::etc::merge::scan(&source).unwrap(),
            "/etc",
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(live.join("a/sub/y")).unwrap(), "y");
        assert_eq!(
            std::fs::read_to_string(live.join("d")).unwrap(),
            "now a file"
        );
        assert_eq!(
            std::fs::read_link(live.join("link")).unwrap(),
            Path::new("a/sub/y")
        );
        assert!(!live.join("gone").exists());
        let left: Vec<_> = walk_names(&live)
            .into_iter()
            .filter(|n| n.contains(TEMP_PREFIX))
            .collect();
        assert!(left.is_empty(), "temporaries left: {left:?}");
    }

    fn walk_names(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(root).unwrap().flatten() {
            out.push(e.file_name().to_string_lossy().into_owned());
            if e.file_type().unwrap().is_dir() {
                out.extend(walk_names(&e.path()));
            }
        }
        out
    }

    #[test]
    fn a_failed_copy_leaves_the_live_tree_as_it_was() {
        let t = tempfile::tempdir().unwrap();
        let (live, source) = (t.path().join("live"), t.path().join("source"));
        std::fs::create_dir_all(&live).unwrap();
        std::fs::create_dir_all(&source).unwrap();
        std::fs::write(live.join("a"), "old a").unwrap();
        std::fs::write(live.join("b"), "old b").unwrap();
        std::fs::write(source.join("a"), "new a").unwrap();
        std::fs::write(source.join("b"), "new b").unwrap();
        let mut steps = plan(
            &arbor_sysroot::etc::merge::scan(&live).unwrap(),
            &arbor_sysroot::etc::merge::scan(&source).unwrap(),
        );
        // A step whose source is missing fails while copying, after "a" was copied.
        steps.push(Step::Put("missing".into()));
        let err = apply(&live, &source, steps, "/etc").unwrap_err();
        assert!(format!("{err:#}").contains("/etc/missing"), "{err:#}");
        assert_eq!(std::fs::read_to_string(live.join("a")).unwrap(), "old a");
        assert_eq!(std::fs::read_to_string(live.join("b")).unwrap(), "old b");
        assert_eq!(walk_names(&live).len(), 2, "{:?}", walk_names(&live));
    }

    #[test]
    fn leftover_temporaries_are_removed_and_never_scanned() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("sub")).unwrap();
        std::fs::write(t.path().join("sub").join(format!("{TEMP_PREFIX}3")), "x").unwrap();
        std::fs::write(t.path().join("real"), "x").unwrap();
        let scanned = arbor_sysroot::etc::merge::scan(t.path()).unwrap();
        assert_eq!(scanned.keys().collect::<Vec<_>>(), ["real", "sub"]);
        remove_temporaries(t.path()).unwrap();
        assert_eq!(walk_names(t.path()).len(), 2);
    }
}
