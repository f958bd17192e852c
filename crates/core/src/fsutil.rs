//! Small dirfd-relative file-system helpers shared by the store, commit and checkout.
//!
//! Everything here works relative to an open directory and never follows a symlink in
//! the last component, so a hostile tree cannot redirect a write outside itself.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, XattrFlags};

use crate::meta::{Meta, Xattrs};

/// `/proc/self/fd/<dirfd>/<name>`: names an entry of an open directory for the few
/// calls (l*xattr on symlinks) that have no `*at` form. The kernel resolves the fd
/// link to the directory itself, so only `name` is looked up, without following it.
pub fn fd_path(dir: BorrowedFd<'_>, name: &[u8]) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    p.push(OsStr::from_bytes(name));
    p
}

/// Opens a subdirectory without following a symlink in its place.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    Ok(rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens a directory by path (following symlinks: the caller named it explicitly).
pub fn open_dir(path: &std::path::Path) -> io::Result<OwnedFd> {
    Ok(rfs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens the directory `rel` below `root` with no symlink anywhere on the way and no
/// way out (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`): how arbor walks
/// into trees that come from outside.
pub fn open_beneath(root: BorrowedFd<'_>, rel: &str) -> io::Result<OwnedFd> {
    let rel = if rel.is_empty() { "." } else { rel };
    Ok(rfs::openat2(
        root,
        rel,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        rfs::ResolveFlags::BENEATH | rfs::ResolveFlags::NO_SYMLINKS,
    )?)
}

/// Creates (as needed) and opens `rel` below `root`, refusing symlinks on the way.
pub fn mkdir_p_beneath(root: BorrowedFd<'_>, rel: &str) -> io::Result<OwnedFd> {
    let mut dir = open_beneath(root, "")?;
    for comp in rel.split('/').filter(|c| !c.is_empty()) {
        if comp == ".." || comp == "." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("'{rel}' is not a plain relative path"),
            ));
        }
        match rfs::mkdirat(&dir, comp, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        dir = open_beneath(dir.as_fd(), comp)?;
    }
    Ok(dir)
}

/// Removes everything inside an open directory, never following a symlink.
pub fn empty_dir_at(dir: BorrowedFd<'_>) -> io::Result<()> {
    for (name, _) in list_dir(dir)? {
        remove_at(dir, &name)?;
    }
    Ok(())
}

/// Removes the entry `name` of `dir` (a directory with its contents), never following
/// a symlink. A missing entry is not an error.
pub fn remove_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
        Ok(st) if st.st_mode & 0o170000 == 0o040000 => {
            empty_dir_at(open_dir_at(dir, name)?.as_fd())?;
            Ok(rfs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
        }
        Ok(_) => Ok(rfs::unlinkat(dir, name, AtFlags::empty())?),
    }
}

/// What an entry is, without following a symlink: `None` when absent.
pub fn kind_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<Option<rfs::FileType>> {
    match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(rfs::FileType::from_raw_mode(st.st_mode))),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The names in a directory, without `.` and `..`, with the type getdents reports.
pub fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<(Vec<u8>, rfs::FileType)>> {
    let mut out = Vec::new();
    let mut d = rfs::Dir::read_from(dir)?;
    while let Some(entry) = d.read() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push((name.to_vec(), entry.file_type()));
        }
    }
    Ok(out)
}

fn parse_xattr_names(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    buf.split(|b| *b == 0).filter(|n| !n.is_empty())
}

/// Reads list then values, growing buffers when a concurrent change makes them short.
fn read_xattrs_with(
    list: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
    get: impl Fn(&[u8], &mut [u8]) -> rustix::io::Result<usize>,
) -> io::Result<Xattrs> {
    let mut names = vec![0u8; 1024];
    let n = loop {
        match list(&mut names) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => names.resize(names.len() * 4, 0),
            Err(rustix::io::Errno::NOTSUP) => return Ok(Xattrs::default()),
            Err(e) => return Err(e.into()),
        }
    };
    if n == 0 {
        return Ok(Xattrs::default());
    }
    let mut pairs = Vec::new();
    let mut value = vec![0u8; 256];
    for name in parse_xattr_names(&names[..n]) {
        let len = loop {
            match get(name, &mut value) {
                Ok(len) => break len,
                Err(rustix::io::Errno::RANGE) => value.resize(65536, 0),
                Err(e) => return Err(e.into()),
            }
        };
        pairs.push((name.to_vec(), value[..len].to_vec()));
    }
    Ok(Xattrs::new(pairs))
}

/// All extended attributes of an open file or directory.
pub fn read_xattrs_fd(fd: BorrowedFd<'_>) -> io::Result<Xattrs> {
    read_xattrs_with(|b| rfs::flistxattr(fd, b), |n, b| rfs::fgetxattr(fd, n, b))
}

/// All extended attributes of a directory entry, not following a symlink there.
pub fn read_xattrs_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Xattrs> {
    let p = fd_path(dir, name);
    read_xattrs_with(|b| rfs::llistxattr(&p, b), |n, b| rfs::lgetxattr(&p, n, b))
}

/// The metadata arbor records for an inode: its mode, owner and the given xattrs.
pub fn meta_from_stat(st: &rfs::Stat, xattrs: Xattrs) -> Meta {
    Meta {
        mode: st.st_mode,
        uid: st.st_uid,
        gid: st.st_gid,
        xattrs,
    }
}

/// Gives an open file or directory its final owner, mode and xattrs, in the only
/// order that works: chown clears setuid bits and file capabilities, so it goes first.
pub fn apply_meta_fd(fd: BorrowedFd<'_>, meta: &Meta) -> io::Result<()> {
    rfs::fchown(
        fd,
        Some(rfs::Uid::from_raw(meta.uid)),
        Some(rfs::Gid::from_raw(meta.gid)),
    )?;
    rfs::fchmod(fd, Mode::from_raw_mode(meta.mode & 0o7777))?;
    for (k, v) in meta.xattrs.pairs() {
        rfs::fsetxattr(fd, k.as_slice(), v, XattrFlags::empty())?;
    }
    Ok(())
}

/// Gives a symlink its owner and xattrs (symlinks have no mode of their own).
pub fn apply_meta_symlink_at(dir: BorrowedFd<'_>, name: &[u8], meta: &Meta) -> io::Result<()> {
    rfs::chownat(
        dir,
        name,
        Some(rfs::Uid::from_raw(meta.uid)),
        Some(rfs::Gid::from_raw(meta.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    if !meta.xattrs.is_empty() {
        let p = fd_path(dir, name);
        for (k, v) in meta.xattrs.pairs() {
            rfs::lsetxattr(&p, k.as_slice(), v, XattrFlags::empty())?;
        }
    }
    Ok(())
}

/// Sets atime and mtime of an entry to the epoch, as stored objects have (like OSTree),
/// so that timestamps never make two equal trees differ.
pub fn zero_times_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let zero = rfs::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let ts = rfs::Timestamps {
        last_access: zero,
        last_modification: zero,
    };
    rfs::utimensat(dir, name, &ts, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

/// Writes `bytes` to `dir/name` so that after a crash the name holds either the old
/// content or all of the new: temporary name, fsync, rename, fsync of the directory.
pub fn atomic_write(dir: BorrowedFd<'_>, name: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
    atomic_write_then(dir, name, bytes, mode, |_| Ok(()))
}

/// [`atomic_write`] of a file that carries `meta` (owner, mode, xattrs) from the
/// moment it has its name.
pub fn atomic_write_meta(
    dir: BorrowedFd<'_>,
    name: &str,
    bytes: &[u8],
    meta: &Meta,
) -> io::Result<()> {
    atomic_write_then(dir, name, bytes, 0o600, |fd| apply_meta_fd(fd, meta))
}

/// The body of the atomic writes: `finish` runs on the written temporary file before
/// it is synced and renamed.
fn atomic_write_then(
    dir: BorrowedFd<'_>,
    name: &str,
    bytes: &[u8],
    mode: u32,
    finish: impl FnOnce(BorrowedFd<'_>) -> io::Result<()>,
) -> io::Result<()> {
    use std::io::Write;
    let tmp = format!(".{name}.tmp-{}", std::process::id());
    let fd = rfs::openat(
        dir,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )?;
    let mut f = std::fs::File::from(fd);
    let result = f
        .write_all(bytes)
        .and_then(|_| finish(f.as_fd()))
        .and_then(|_| f.sync_all())
        .and_then(|_| {
            rfs::renameat(dir, tmp.as_str(), dir, name)?;
            rfs::fsync(dir)?;
            Ok(())
        });
    if result.is_err() {
        let _ = rfs::unlinkat(dir, tmp.as_str(), AtFlags::empty());
    }
    result
}

/// [`atomic_write`] by path: the parent folder must exist.
pub fn write_file_atomic(path: &std::path::Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    atomic_write(open_dir(dir)?.as_fd(), name, bytes, mode)
}

/// Reads a whole small file below `dir`, refusing anything larger than `max` bytes.
pub fn read_bounded_at(dir: BorrowedFd<'_>, name: &str, max: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let fd = rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let f = std::fs::File::from(fd);
    let mut out = Vec::new();
    f.take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{name} is larger than {max} bytes"),
        ));
    }
    Ok(out)
}

/// Removes a directory tree, subdirectories in parallel. Symlinks are removed, never
/// followed (`read_dir` file types do not follow them).
pub fn remove_tree(path: &std::path::Path) -> io::Result<()> {
    use rayon::prelude::*;
    let entries: Vec<std::fs::DirEntry> = std::fs::read_dir(path)?.collect::<io::Result<_>>()?;
    entries.par_iter().try_for_each(|e| {
        if e.file_type()?.is_dir() {
            remove_tree(&e.path())
        } else {
            std::fs::remove_file(e.path())
        }
    })?;
    std::fs::remove_dir(path)
}

/// Copies the entry `name` of `src` to `dst_name` in `dst` with its mode, owner and
/// xattrs: a file's bytes, a symlink's target, or a directory with everything below it.
/// Never follows a symlink; `dst_name` must not exist. Other file types are refused:
/// trees arbor copies hold none.
pub fn copy_entry_at(
    src: BorrowedFd<'_>,
    name: &str,
    dst: BorrowedFd<'_>,
    dst_name: &str,
) -> io::Result<()> {
    let st = rfs::statat(src, name, AtFlags::SYMLINK_NOFOLLOW)?;
    let meta = meta_from_stat(&st, read_xattrs_at(src, name.as_bytes())?);
    match rfs::FileType::from_raw_mode(st.st_mode) {
        rfs::FileType::Directory => {
            rfs::mkdirat(dst, dst_name, Mode::from_raw_mode(0o700))?;
            let from = open_dir_at(src, name.as_bytes())?;
            let to = open_dir_at(dst, dst_name.as_bytes())?;
            for (child, _) in list_dir(from.as_fd())? {
                let child = std::str::from_utf8(&child).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, "a name that is not UTF-8")
                })?;
                copy_entry_at(from.as_fd(), child, to.as_fd(), child)?;
            }
            // Last, so a read-only mode cannot get in the way of filling it.
            apply_meta_fd(to.as_fd(), &meta)
        }
        rfs::FileType::Symlink => {
            let target = rfs::readlinkat(src, name, Vec::new())?;
            rfs::symlinkat(target.as_c_str(), dst, dst_name)?;
            apply_meta_symlink_at(dst, dst_name.as_bytes(), &meta)
        }
        rfs::FileType::RegularFile => {
            let from = rfs::openat(
                src,
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let to = rfs::openat(
                dst,
                dst_name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )?;
            let (mut from, mut to) = (std::fs::File::from(from), std::fs::File::from(to));
            io::copy(&mut from, &mut to)?;
            apply_meta_fd(to.as_fd(), &meta)
        }
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{name} is a {other:?}, which arbor does not copy"),
        )),
    }
}

/// The prefix of the xattrs overlayfs keeps for itself in an upper layer (opaque
/// directories, redirects): never part of a tree arbor records.
pub const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";

/// True when `dir/name` is an overlayfs whiteout (a character device 0:0): the upper
/// layer's way of saying the lower entry was deleted.
pub fn is_overlay_whiteout(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<bool> {
    let st = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(
        rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::CharacterDevice
            && st.st_rdev == 0,
    )
}

/// True when the directory `dir/name` of an overlayfs upper layer is opaque
/// (`trusted.overlay.opaque=y`): it hides everything below it in the lower layer.
pub fn is_overlay_opaque(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<bool> {
    let x = read_xattrs_at(dir, name)?;
    Ok(x.pairs().iter().any(|(k, v)| {
        k == b"trusted.overlay.opaque" && v.as_slice() == b"y" || k == b"trusted.overlay.redirect"
    }))
}

/// Bytes of a path, for messages: lossy but never panics.
pub fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// True when this error means the disk (or quota) is full, the case callers report
/// differently because the fix is the user's: free space and retry.
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == rustix::io::Errno::NOSPC.raw_os_error()
        || code == rustix::io::Errno::DQUOT.raw_os_error())
}

/// Syncs the whole filesystem holding `fd`: one call instead of an fsync per object.
pub fn sync_filesystem(fd: impl AsFd) -> io::Result<()> {
    rfs::syncfs(fd)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_file() {
        let t = tempfile::tempdir().unwrap();
        let d = open_dir(t.path()).unwrap();
        atomic_write(d.as_fd(), "x", b"one", 0o644).unwrap();
        atomic_write(d.as_fd(), "x", b"two!", 0o644).unwrap();
        assert_eq!(std::fs::read(t.path().join("x")).unwrap(), b"two!");
        let names: Vec<_> = list_dir(d.as_fd())
            .unwrap()
            .into_iter()
            .map(|n| n.0)
            .collect();
        assert_eq!(names, vec![b"x".to_vec()], "no temporary left behind");
    }

    #[test]
    fn remove_tree_removes_links_not_their_targets() {
        let t = tempfile::tempdir().unwrap();
        let keep = t.path().join("keep");
        std::fs::create_dir(&keep).unwrap();
        std::fs::write(keep.join("f"), b"x").unwrap();
        let doomed = t.path().join("doomed");
        std::fs::create_dir_all(doomed.join("a/b")).unwrap();
        std::fs::write(doomed.join("a/b/f"), b"x").unwrap();
        std::os::unix::fs::symlink(&keep, doomed.join("a/link")).unwrap();
        remove_tree(&doomed).unwrap();
        assert!(!doomed.exists());
        assert!(keep.join("f").exists(), "followed a symlink");
    }

    #[test]
    fn beneath_helpers_refuse_symlinks_and_never_follow_them() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("precious"), b"x").unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let fd = open_dir(&root).unwrap();
        assert!(open_beneath(fd.as_fd(), "link").is_err());
        assert!(open_beneath(fd.as_fd(), "real/../../outside").is_err());
        assert!(mkdir_p_beneath(fd.as_fd(), "link/sub").is_err());
        assert!(!outside.join("sub").exists());
        mkdir_p_beneath(fd.as_fd(), "real/a/b").unwrap();
        assert!(root.join("real/a/b").is_dir());
        empty_dir_at(fd.as_fd()).unwrap();
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
        assert!(
            outside.join("precious").exists(),
            "followed a symlink while emptying"
        );
    }

    #[test]
    fn read_bounded_refuses_large() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), vec![1u8; 100]).unwrap();
        let d = open_dir(t.path()).unwrap();
        assert_eq!(read_bounded_at(d.as_fd(), "f", 100).unwrap().len(), 100);
        assert!(read_bounded_at(d.as_fd(), "f", 99).is_err());
    }

    #[test]
    fn open_dir_at_does_not_follow_symlinks() {
        let t = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/", t.path().join("escape")).unwrap();
        let d = open_dir(t.path()).unwrap();
        assert!(open_dir_at(d.as_fd(), b"escape").is_err());
    }
}
