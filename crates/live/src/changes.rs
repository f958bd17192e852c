//! What an overlay changed (`usroverlay --list`): its upper layer read against the
//! deployment's `/usr` below it.
//!
//! The upper layer alone says too much and too little: a file copied up by an
//! `open(O_RDWR)` that wrote nothing is there unchanged, and a deletion is a whiteout
//! (a character device 0:0) or an opaque directory, which hide lower entries without
//! naming them. So every upper entry is compared with the lower one: content, type,
//! mode, owner and xattrs (overlayfs's own `trusted.overlay.*` left out).

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use anyhow::{Context, Result};
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use serde::Serialize;

use arbor_core::fsutil;

/// How a path differs from the deployment.
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
pub enum ChangeKind {
    /// Not in the deployment.
    Added,
    /// In both, different (see [`Change::what`]).
    Modified,
    /// In the deployment, hidden by the overlay.
    Deleted,
}

/// The type of a file system entry, as `--list` shows it.
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
pub enum EntryType {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A device, fifo or socket.
    Special,
}

/// One changed path.
#[derive(
    Clone, Debug, PartialEq, Eq, Serialize, zvariant::Type, zvariant::Value, zvariant::OwnedValue,
)]
#[zvariant(signature = "dict")]
pub struct Change {
    /// The path, from `/` (`/usr/bin/x`).
    pub path: String,
    /// Added, modified or deleted.
    pub change: ChangeKind,
    /// What it is now (for a deletion: what it was).
    #[serde(rename = "type")]
    #[zvariant(rename = "type")]
    pub entry_type: EntryType,
    /// Its permission bits and setuid/setgid/sticky (`0o7777` of `st_mode`).
    pub mode: u32,
    /// Its size in bytes (a symlink's: its target's length).
    pub size: u64,
    /// For a modification, what differs: `content`, `type`, `mode`, `owner`,
    /// `xattrs`, `target` (a symlink's), or `opaque` (a directory whose old content is
    /// hidden; the entries it hid are listed as deleted).
    pub what: Vec<String>,
}

fn entry_type(st: &rfs::Stat) -> EntryType {
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => EntryType::File,
        FileType::Directory => EntryType::Dir,
        FileType::Symlink => EntryType::Symlink,
        _ => EntryType::Special,
    }
}

fn lstat_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<Option<rfs::Stat>> {
    match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn change(path: &str, change: ChangeKind, st: &rfs::Stat, what: Vec<&'static str>) -> Change {
    Change {
        path: path.to_string(),
        change,
        entry_type: entry_type(st),
        mode: st.st_mode & 0o7777,
        size: if entry_type(st) == EntryType::Dir {
            0
        } else {
            st.st_size as u64
        },
        what: what.into_iter().map(String::from).collect(),
    }
}

/// The xattrs of an entry that belong to the tree (not overlayfs's own).
fn tree_xattrs(dir: BorrowedFd<'_>, name: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    Ok(fsutil::read_xattrs_at(dir, name)?
        .pairs()
        .iter()
        .filter(|(k, _)| !k.starts_with(fsutil::OVERLAY_XATTR_PREFIX))
        .cloned()
        .collect())
}

fn same_content(upper: BorrowedFd<'_>, lower: BorrowedFd<'_>, name: &[u8]) -> Result<bool> {
    let open = |d: BorrowedFd<'_>| -> Result<std::fs::File> {
        Ok(rfs::openat(
            d,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?
        .into())
    };
    let (mut a, mut b) = (open(upper)?, open(lower)?);
    let (mut x, mut y) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = a.read(&mut x)?;
        if n == 0 {
            return Ok(b.read(&mut y[..1])? == 0);
        }
        let mut got = 0;
        while got < n {
            let m = b.read(&mut y[got..n])?;
            if m == 0 {
                return Ok(false);
            }
            got += m;
        }
        if x[..n] != y[..n] {
            return Ok(false);
        }
    }
}

/// What differs between an entry present in both layers (same name, `u` and `l`).
fn differences(
    upper: BorrowedFd<'_>,
    lower: BorrowedFd<'_>,
    name: &[u8],
    u: &rfs::Stat,
    l: &rfs::Stat,
) -> Result<Vec<&'static str>> {
    let mut what = Vec::new();
    if entry_type(u) != entry_type(l) {
        return Ok(vec!["type"]);
    }
    match entry_type(u) {
        EntryType::File if u.st_size != l.st_size || !same_content(upper, lower, name)? => {
            what.push("content")
        }
        EntryType::Symlink => {
            let a = rfs::readlinkat(upper, name, Vec::new())?;
            let b = rfs::readlinkat(lower, name, Vec::new())?;
            if a != b {
                what.push("target");
            }
        }
        _ => {}
    }
    if entry_type(u) != EntryType::Symlink && u.st_mode & 0o7777 != l.st_mode & 0o7777 {
        what.push("mode");
    }
    if (u.st_uid, u.st_gid) != (l.st_uid, l.st_gid) {
        what.push("owner");
    }
    if tree_xattrs(upper, name)? != tree_xattrs(lower, name)? {
        what.push("xattrs");
    }
    Ok(what)
}

/// Lists a directory of the upper layer that the lower layer lacks: all added.
fn all_added(dir: BorrowedFd<'_>, path: &str, out: &mut Vec<Change>) -> Result<()> {
    for (name, kind) in fsutil::list_dir(dir)? {
        if fsutil::is_overlay_whiteout(dir, &name)? {
            continue; // hides nothing: nothing is below
        }
        let p = format!("{path}/{}", fsutil::show(&name));
        let st = rfs::statat(dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)?;
        out.push(change(&p, ChangeKind::Added, &st, Vec::new()));
        if kind == FileType::Directory {
            all_added(fsutil::open_dir_at(dir, &name)?.as_fd(), &p, out)?;
        }
    }
    Ok(())
}

/// Lists a deleted lower entry and, for a directory, everything below it (as
/// `arbor diff` lists a removed directory).
fn deleted(
    lower: BorrowedFd<'_>,
    name: &[u8],
    st: &rfs::Stat,
    path: &str,
    out: &mut Vec<Change>,
) -> Result<()> {
    out.push(change(path, ChangeKind::Deleted, st, Vec::new()));
    if entry_type(st) == EntryType::Dir {
        let d = fsutil::open_dir_at(lower, name)?;
        for (child, _) in fsutil::list_dir(d.as_fd())? {
            let cst = rfs::statat(&d, child.as_slice(), AtFlags::SYMLINK_NOFOLLOW)?;
            let p = format!("{path}/{}", fsutil::show(&child));
            deleted(d.as_fd(), &child, &cst, &p, out)?;
        }
    }
    Ok(())
}

/// Compares the upper directory `upper` with the lower one `lower` (`None` when the
/// lower layer has none there); `opaque` when the upper one hides the lower content.
fn compare(
    upper: BorrowedFd<'_>,
    lower: BorrowedFd<'_>,
    path: &str,
    opaque: bool,
    out: &mut Vec<Change>,
) -> Result<()> {
    let names = fsutil::list_dir(upper)?;
    for (name, kind) in &names {
        let p = format!("{path}/{}", fsutil::show(name));
        let st = rfs::statat(upper, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
            .with_context(|| format!("reading the overlay's {p}"))?;
        let low = lstat_at(lower, name)?;
        if fsutil::is_overlay_whiteout(upper, name)? {
            if let Some(l) = low.filter(|_| !opaque) {
                deleted(lower, name, &l, &p, out)?;
            }
            continue;
        }
        let Some(l) = low else {
            out.push(change(&p, ChangeKind::Added, &st, Vec::new()));
            if *kind == FileType::Directory {
                all_added(fsutil::open_dir_at(upper, name)?.as_fd(), &p, out)?;
            }
            continue;
        };
        let mut what = differences(upper, lower, name, &st, &l)?;
        if *kind == FileType::Directory && what != ["type"] {
            let hides = fsutil::is_overlay_opaque(upper, name)?;
            if hides {
                what.push("opaque");
            }
            if !what.is_empty() {
                out.push(change(&p, ChangeKind::Modified, &st, what));
            }
            let u = fsutil::open_dir_at(upper, name)?;
            let lo = fsutil::open_dir_at(lower, name)?;
            compare(u.as_fd(), lo.as_fd(), &p, hides, out)?;
            continue;
        }
        if !what.is_empty() {
            out.push(change(&p, ChangeKind::Modified, &st, what.clone()));
        }
        if what == ["type"] && *kind == FileType::Directory {
            all_added(fsutil::open_dir_at(upper, name)?.as_fd(), &p, out)?;
        }
    }
    if opaque {
        // What an opaque directory hides: every lower entry it does not have again.
        for (name, _) in fsutil::list_dir(lower)? {
            if !names.iter().any(|(n, _)| *n == name) {
                let st = rfs::statat(lower, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)?;
                let p = format!("{path}/{}", fsutil::show(&name));
                deleted(lower, &name, &st, &p, out)?;
            }
        }
    }
    Ok(())
}

/// Every path the upper layer `upper` changes compared with `lower` (the deployment's
/// `/usr`), sorted by path, shown under `/usr`.
pub fn list(upper: &Path, lower: &Path) -> Result<Vec<Change>> {
    let u = fsutil::open_dir(upper).with_context(|| format!("opening {}", upper.display()))?;
    let l = fsutil::open_dir(lower).with_context(|| format!("opening {}", lower.display()))?;
    let mut out = Vec::new();
    compare(u.as_fd(), l.as_fd(), "/usr", false, &mut out)?;
    // /usr itself (chmod /usr).
    let (us, ls) = (rfs::fstat(&u)?, rfs::fstat(&l)?);
    let mut what = Vec::new();
    if us.st_mode & 0o7777 != ls.st_mode & 0o7777 {
        what.push("mode");
    }
    if (us.st_uid, us.st_gid) != (ls.st_uid, ls.st_gid) {
        what.push("owner");
    }
    if !what.is_empty() {
        out.push(change("/usr", ChangeKind::Modified, &us, what));
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn whiteout(dir: &Path, name: &str) {
        let d = fsutil::open_dir(dir).unwrap();
        rfs::mknodat(
            &d,
            name,
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
    }

    #[test]
    #[cfg_attr(not(arbor_root), ignore = "needs root: trusted.* xattrs")]
    fn lists_added_modified_and_deleted_paths() {
        let t = tempfile::tempdir().unwrap();
        let (u, l) = (t.path().join("upper"), t.path().join("lower"));
        for d in [&u, &l] {
            std::fs::create_dir_all(d.join("bin")).unwrap();
            std::fs::create_dir_all(d.join("share/doc")).unwrap();
        }
        std::fs::write(l.join("bin/same"), "x").unwrap();
        std::fs::write(u.join("bin/same"), "x").unwrap(); // copied up, unchanged
        std::fs::write(l.join("bin/tool"), "old").unwrap();
        std::fs::write(u.join("bin/tool"), "new").unwrap();
        std::fs::write(l.join("bin/mode"), "m").unwrap();
        std::fs::write(u.join("bin/mode"), "m").unwrap();
        std::fs::set_permissions(u.join("bin/mode"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        std::fs::write(l.join("bin/gone"), "g").unwrap();
        whiteout(&u.join("bin"), "gone");
        std::fs::create_dir_all(l.join("share/old/sub")).unwrap();
        std::fs::write(l.join("share/old/sub/f"), "f").unwrap();
        whiteout(&u.join("share"), "old");
        std::fs::write(u.join("bin/new"), "n").unwrap();
        std::fs::create_dir_all(u.join("lib/fresh")).unwrap();
        std::fs::write(u.join("lib/fresh/a"), "a").unwrap();
        std::fs::write(l.join("share/doc/old1"), "1").unwrap();
        std::fs::write(l.join("share/doc/old2"), "2").unwrap();
        std::fs::write(u.join("share/doc/kept"), "k").unwrap();
        rfs::setxattr(
            u.join("share/doc"),
            "trusted.overlay.opaque",
            b"y",
            rfs::XattrFlags::empty(),
        )
        .unwrap();
        let got: Vec<String> = list(&u, &l)
            .unwrap()
            .iter()
            .map(|c| format!("{:?} {} {}", c.change, c.path, c.what.join("+")))
            .collect();
        assert_eq!(
            got,
            [
                "Deleted /usr/bin/gone ",
                "Modified /usr/bin/mode mode",
                "Added /usr/bin/new ",
                "Modified /usr/bin/tool content",
                "Added /usr/lib ",
                "Added /usr/lib/fresh ",
                "Added /usr/lib/fresh/a ",
                "Modified /usr/share/doc opaque",
                "Added /usr/share/doc/kept ",
                "Deleted /usr/share/doc/old1 ",
                "Deleted /usr/share/doc/old2 ",
                "Deleted /usr/share/old ",
                "Deleted /usr/share/old/sub ",
                "Deleted /usr/share/old/sub/f ",
            ]
        );
    }
}
