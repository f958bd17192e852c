//! Applying an overlayfs upper layer onto its lower tree, without a mount.
//!
//! Layering runs apt on an overlay whose lower layer is a hardlinked checkout of the
//! base. Afterwards the upper layer holds what changed: new and copied-up entries,
//! whiteouts (character devices 0:0) for deletions, and opaque directories (xattr
//! `trusted.overlay.opaque=y`) that hide the lower directory's content. Applying it to
//! the checkout gives the merged tree. Entries move by `rename` and are never written
//! in place, because the checkout's files are hardlinks into the store. overlayfs's
//! own `trusted.overlay.*` xattrs are removed from whatever moves, so the image never
//! carries them.

use std::os::fd::{AsFd, BorrowedFd};

use anyhow::{Context, Result};
use rustix::fs::{self as rfs, AtFlags, FileType};

use arbor_core::fsutil;
use arbor_store::encoding::Xattrs;

use fsutil::{OVERLAY_XATTR_PREFIX as OVERLAY_XATTR, is_overlay_opaque as is_opaque};

/// Applies `upper` onto `lower`; top-level names in `skip` are left out (mount points
/// the build covered, and /etc, which was bound onto /usr/etc).
pub fn apply(upper: BorrowedFd<'_>, lower: BorrowedFd<'_>, skip: &[&str]) -> Result<()> {
    apply_dir(upper, lower, skip, "")
}

fn is_whiteout(dir: BorrowedFd<'_>, name: &[u8]) -> Result<bool> {
    Ok(fsutil::is_overlay_whiteout(dir, name)?)
}

fn apply_dir(
    upper: BorrowedFd<'_>,
    lower: BorrowedFd<'_>,
    skip: &[&str],
    path: &str,
) -> Result<()> {
    for (name, kind) in fsutil::list_dir(upper)? {
        let shown = format!("{path}/{}", fsutil::show(&name));
        if path.is_empty() && skip.iter().any(|s| s.as_bytes() == name.as_slice()) {
            continue;
        }
        let apply_one = || -> Result<()> {
            if kind == FileType::CharacterDevice && is_whiteout(upper, &name)? {
                return Ok(fsutil::remove_at(lower, &name)?);
            }
            let lower_kind = match rfs::statat(lower, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => Some(FileType::from_raw_mode(st.st_mode)),
                Err(rustix::io::Errno::NOENT) => None,
                Err(e) => return Err(e.into()),
            };
            let merge = kind == FileType::Directory
                && lower_kind == Some(FileType::Directory)
                && !is_opaque(upper, &name)?;
            if merge {
                let u = fsutil::open_dir_at(upper, &name)?;
                let l = fsutil::open_dir_at(lower, &name)?;
                apply_dir(u.as_fd(), l.as_fd(), skip, &shown)?;
                // The directory's own metadata, in case it changed (chmod, chown).
                let st = rfs::fstat(&u)?;
                let kept = fsutil::read_xattrs_fd(u.as_fd())?
                    .pairs()
                    .iter()
                    .filter(|(k, _)| !k.starts_with(OVERLAY_XATTR))
                    .cloned()
                    .collect();
                let meta = fsutil::meta_from_stat(&st, Xattrs::new(kept));
                fsutil::apply_meta_fd(l.as_fd(), &meta)?;
                return Ok(());
            }
            fsutil::remove_at(lower, &name)?;
            rfs::renameat(upper, name.as_slice(), lower, name.as_slice())?;
            strip_overlay_xattrs(lower, &name)
        };
        apply_one().with_context(|| format!("applying the layer's {shown}"))?;
    }
    Ok(())
}

/// Removes `trusted.overlay.*` xattrs from an entry and, for a directory, everything
/// below it. Whiteouts inside a moved (opaque or new) directory hide nothing and go.
fn strip_overlay_xattrs(dir: BorrowedFd<'_>, name: &[u8]) -> Result<()> {
    let p = fsutil::fd_path(dir, name);
    for (k, _) in fsutil::read_xattrs_at(dir, name)?.pairs() {
        if k.starts_with(OVERLAY_XATTR) {
            rfs::lremovexattr(&p, k.as_slice())?;
        }
    }
    let st = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        let d = fsutil::open_dir_at(dir, name)?;
        for (child, kind) in fsutil::list_dir(d.as_fd())? {
            if kind == FileType::CharacterDevice && is_whiteout(d.as_fd(), &child)? {
                rfs::unlinkat(&d, child.as_slice(), AtFlags::empty())?;
                continue;
            }
            strip_overlay_xattrs(d.as_fd(), &child)?;
        }
    }
    Ok(())
}
