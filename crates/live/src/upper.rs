//! The live layer: an overlay upper layer holding the difference between the booted
//! and the pending `/usr`.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use anyhow::{Context, Result, bail};
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};

use arbor_core::fsutil;
use arbor_store::diff::ChangeKind;

/// The paths below `/usr` that a live layer changes, by kind of change.
pub struct UpperChanges<'p> {
    /// Paths that appear.
    pub added: &'p [String],
    /// Paths whose content or metadata changes.
    pub changed: &'p [String],
    /// Paths that go away.
    pub removed: &'p [String],
}

/// Puts the changes into an overlay upper layer: copies from the target's `/usr`,
/// whiteouts for removals, directories with the metadata they get.
pub fn build_upper(
    target_usr: &Path,
    live_usr: &Path,
    upper: &Path,
    plan: &UpperChanges<'_>,
) -> Result<()> {
    let src = fsutil::open_dir(target_usr)?;
    let live = fsutil::open_dir(live_usr)?;
    let up = fsutil::open_dir(upper)?;
    let mut whited: Vec<String> = Vec::new();
    let mut all: Vec<(&String, ChangeKind)> = plan
        .added
        .iter()
        .map(|p| (p, ChangeKind::Added))
        .chain(plan.changed.iter().map(|p| (p, ChangeKind::Modified)))
        .chain(plan.removed.iter().map(|p| (p, ChangeKind::Removed)))
        .collect();
    all.sort();
    for (path, kind) in all {
        let rel = path.trim_start_matches("/usr/");
        if whited.iter().any(|w| rel.starts_with(&format!("{w}/"))) {
            continue; // below a removed directory
        }
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let dir = ensure_parents(src.as_fd(), live.as_fd(), up.as_fd(), parent)
            .with_context(|| format!("preparing {path}"))?;
        let r = if kind == ChangeKind::Removed {
            whited.push(rel.to_string());
            fsutil::remove_at(dir.as_fd(), name.as_bytes())?;
            rfs::mknodat(
                &dir,
                name,
                FileType::CharacterDevice,
                Mode::empty(),
                rfs::makedev(0, 0),
            )
            .map_err(anyhow::Error::from)
        } else {
            copy_entry(src.as_fd(), rel, dir.as_fd(), name)
        };
        r.with_context(|| format!("putting {path} in the live layer"))?;
    }
    Ok(())
}

/// Opens (creating as needed) `rel` in the upper layer, each directory made with the
/// metadata it has in the target, else in the live tree.
fn ensure_parents(
    src: BorrowedFd<'_>,
    live: BorrowedFd<'_>,
    upper: BorrowedFd<'_>,
    rel: &str,
) -> Result<rustix::fd::OwnedFd> {
    let mut cur = rfs::openat(
        upper,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut sofar = String::new();
    for comp in rel.split('/').filter(|c| !c.is_empty()) {
        sofar = if sofar.is_empty() {
            comp.to_string()
        } else {
            format!("{sofar}/{comp}")
        };
        if fsutil::kind_at(cur.as_fd(), comp)?.is_none() {
            let st = rfs::statat(src, sofar.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                .or_else(|_| rfs::statat(live, sofar.as_str(), AtFlags::SYMLINK_NOFOLLOW))?;
            rfs::mkdirat(&cur, comp, Mode::from_raw_mode(0o700))?;
            let d = fsutil::open_dir_at(cur.as_fd(), comp.as_bytes())?;
            let x = fsutil::read_xattrs_at(src, sofar.as_bytes()).unwrap_or_default();
            fsutil::apply_meta_fd(d.as_fd(), &fsutil::meta_from_stat(&st, x))?;
        }
        cur = fsutil::open_dir_at(cur.as_fd(), comp.as_bytes())?;
    }
    Ok(cur)
}

/// Copies one entry of the target into the upper layer (a directory without its
/// content: its children are entries of the plan themselves).
fn copy_entry(src: BorrowedFd<'_>, rel: &str, dir: BorrowedFd<'_>, name: &str) -> Result<()> {
    let st = rfs::statat(src, rel, AtFlags::SYMLINK_NOFOLLOW)?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => {
            let xattrs = fsutil::read_xattrs_at(src, rel.as_bytes())?;
            if fsutil::kind_at(dir, name)? != Some(FileType::Directory) {
                fsutil::remove_at(dir, name.as_bytes())?;
                rfs::mkdirat(dir, name, Mode::from_raw_mode(0o700))?;
            }
            let d = fsutil::open_dir_at(dir, name.as_bytes())?;
            fsutil::apply_meta_fd(d.as_fd(), &fsutil::meta_from_stat(&st, xattrs))?;
        }
        FileType::Symlink | FileType::RegularFile => {
            fsutil::remove_at(dir, name.as_bytes())?;
            fsutil::copy_entry_at(src, rel, dir, name)?;
        }
        other => bail!("{rel} is a {other:?}, which an image does not hold"),
    }
    Ok(())
}
