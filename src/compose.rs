//! `compose rootfs`: turning a plain Debian root filesystem into the committed shape
//! of DESIGN §2, as rpm-ostree's postprocess does, and committing it.
//!
//! The source is never modified: the work happens in a staging copy made of hardlinks
//! (a copy when the source is on another filesystem), where entries are only renamed,
//! removed or created, never written in place.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use anyhow::{Context, Result, bail};
use rustix::fs::{self as rfs, AtFlags, Mode};

use crate::commit::{CommitOptions, CommitResult, commit_tree};
use crate::fsutil;
use crate::lock::LockWait;
use crate::store::Repo;
use crate::store::encoding::{S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};

/// Directories that become symlinks into `/var`, as on OSTree systems.
pub const VAR_LINKS: &[(&str, &str)] = &[
    ("home", "var/home"),
    ("root", "var/roothome"),
    ("opt", "var/opt"),
    ("srv", "var/srv"),
    ("mnt", "var/mnt"),
    ("usr/local", "../var/usrlocal"),
];

/// tmpfiles.d lines that recreate at boot what the committed tree points into `/var`.
const TMPFILES: &str = "\
# Written by arbor compose: /var is empty in an image and filled at boot.
d /var/home 0755 root root -
d /var/roothome 0700 root root -
d /var/opt 0755 root root -
d /var/srv 0755 root root -
d /var/mnt 0755 root root -
d /var/usrlocal 0755 root root -
d /var/usrlocal/bin 0755 root root -
d /var/usrlocal/sbin 0755 root root -
d /var/lib 0755 root root -
L /var/lib/dpkg - - - - ../../usr/lib/arbor/dpkg
";

/// Makes a staging copy of `src` at `dest` (which must not exist): hardlinks when both
/// are on one filesystem, copies otherwise. Special files are left out.
pub fn stage_tree(src: &Path, dest: &Path) -> Result<()> {
    let s = fsutil::open_dir(src).with_context(|| format!("opening {}", src.display()))?;
    std::fs::create_dir(dest).with_context(|| format!("creating {}", dest.display()))?;
    let d = fsutil::open_dir(dest)?;
    let same_fs = rfs::fstat(&s)?.st_dev == rfs::fstat(&d)?.st_dev;
    let meta = fsutil::meta_from_stat(&rfs::fstat(&s)?, fsutil::read_xattrs_fd(s.as_fd())?);
    fsutil::apply_meta_fd(d.as_fd(), &meta)?;
    stage_dir(s.as_fd(), d.as_fd(), same_fs, "")
}

fn stage_dir(src: BorrowedFd<'_>, dest: BorrowedFd<'_>, link: bool, path: &str) -> Result<()> {
    for (name, _) in fsutil::list_dir(src)? {
        let p = format!("{path}/{}", fsutil::show(&name));
        let st = rfs::statat(src, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)?;
        match st.st_mode & S_IFMT {
            S_IFDIR => {
                let sub = fsutil::open_dir_at(src, &name)?;
                rfs::mkdirat(dest, name.as_slice(), Mode::from_raw_mode(0o700))?;
                let out = fsutil::open_dir_at(dest, &name)?;
                stage_dir(sub.as_fd(), out.as_fd(), link, &p)?;
                let meta = fsutil::meta_from_stat(&st, fsutil::read_xattrs_fd(sub.as_fd())?);
                fsutil::apply_meta_fd(out.as_fd(), &meta)?;
            }
            S_IFREG | S_IFLNK if link => {
                rfs::linkat(
                    src,
                    name.as_slice(),
                    dest,
                    name.as_slice(),
                    AtFlags::empty(),
                )
                .with_context(|| format!("linking {p} into the staging tree"))?;
            }
            S_IFLNK => {
                let target = rfs::readlinkat(src, name.as_slice(), Vec::new())?;
                rfs::symlinkat(target.as_bytes(), dest, name.as_slice())?;
                let meta = fsutil::meta_from_stat(&st, fsutil::read_xattrs_at(src, &name)?);
                fsutil::apply_meta_symlink_at(dest, &name, &meta)?;
            }
            S_IFREG => {
                let fd = rfs::openat(
                    src,
                    name.as_slice(),
                    rfs::OFlags::RDONLY | rfs::OFlags::NOFOLLOW,
                    Mode::empty(),
                )?;
                let mut from = std::fs::File::from(fd);
                let out = rfs::openat(
                    dest,
                    name.as_slice(),
                    rfs::OFlags::WRONLY
                        | rfs::OFlags::CREATE
                        | rfs::OFlags::EXCL
                        | rfs::OFlags::NOFOLLOW,
                    Mode::from_raw_mode(0o600),
                )?;
                let mut out = std::fs::File::from(out);
                std::io::copy(&mut from, &mut out)
                    .map_err(|e| crate::store::write_error(e, || format!("copying {p}")))?;
                let meta = fsutil::meta_from_stat(&st, fsutil::read_xattrs_fd(from.as_fd())?);
                fsutil::apply_meta_fd(out.as_fd(), &meta)?;
            }
            _ => {} // device nodes, fifos, sockets: nothing an image carries
        }
    }
    Ok(())
}

fn empty_dir(path: &Path) -> Result<()> {
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries {
            let e = e?;
            if e.file_type()?.is_dir() {
                std::fs::remove_dir_all(e.path())?;
            } else {
                std::fs::remove_file(e.path())?;
            }
        }
    }
    Ok(())
}

fn remove_path(p: &Path) -> Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p)?,
        Ok(_) => std::fs::remove_file(p)?,
        Err(_) => {}
    }
    Ok(())
}

/// Reshapes a staged root filesystem in place (DESIGN §2, "What a committed tree looks
/// like"); see `docs/compose.md` for each step.
pub fn postprocess(root: &Path) -> Result<()> {
    let usr = root.join("usr");
    if !usr.is_dir() {
        bail!("{} has no /usr: not a root filesystem", root.display());
    }
    // Kernel and initramfs into /usr/lib/modules/<kver>/.
    let boot = root.join("boot");
    if let Ok(entries) = std::fs::read_dir(&boot) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(kver) = name.strip_prefix("vmlinuz-") else {
                continue;
            };
            let dir = usr.join("lib/modules").join(kver);
            std::fs::create_dir_all(&dir)?;
            std::fs::rename(e.path(), dir.join("vmlinuz"))?;
            for (from, to) in [
                ("initrd.img-", "initramfs.img"),
                ("config-", "config"),
                ("System.map-", "System.map"),
            ] {
                let p = boot.join(format!("{from}{kver}"));
                if p.exists() {
                    std::fs::rename(&p, dir.join(to))?;
                }
            }
        }
    }
    empty_dir(&boot)?;
    for link in ["vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"] {
        let p = root.join(link);
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            std::fs::remove_file(&p)?;
        }
    }
    // The default /etc lives in /usr/etc; a deployment's /etc is made from it.
    if usr.join("etc").exists() {
        bail!(
            "{} already has /usr/etc: is it composed already?",
            root.display()
        );
    }
    if root.join("etc").is_dir() {
        std::fs::rename(root.join("etc"), usr.join("etc"))?;
    }
    // The package database moves into /usr; /var is empty in an image.
    let dpkg = root.join("var/lib/dpkg");
    if dpkg.is_dir() {
        std::fs::create_dir_all(usr.join("lib/arbor"))?;
        std::fs::rename(&dpkg, usr.join("lib/arbor/dpkg"))?;
    }
    std::fs::create_dir_all(root.join("var"))?;
    empty_dir(&root.join("var"))?;
    for (dir, target) in VAR_LINKS {
        let p = root.join(dir);
        remove_path(&p)?;
        std::os::unix::fs::symlink(target, &p)?;
    }
    let tmpfiles = usr.join("lib/tmpfiles.d");
    std::fs::create_dir_all(&tmpfiles)?;
    std::fs::write(tmpfiles.join("arbor.conf"), TMPFILES)?;
    // API filesystems and scratch space are mounted or created at boot; /sysroot is
    // where prepare-root mounts the physical root.
    for d in ["dev", "proc", "sys", "run", "tmp", "sysroot"] {
        let p = root.join(d);
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            empty_dir(&p)?;
        } else {
            remove_path(&p)?;
            std::fs::create_dir(&p)?;
        }
    }
    Ok(())
}

/// Composes the root filesystem at `src` into a commit on `opts.branch`.
pub fn compose_rootfs(
    repo: &Repo,
    src: &Path,
    opts: &CommitOptions,
    wait: LockWait<'_>,
) -> Result<CommitResult> {
    let staging = tempfile::Builder::new()
        .prefix(".compose-")
        .tempdir_in(repo.path())?;
    let root = staging.path().join("root");
    stage_tree(src, &root)?;
    postprocess(&root)?;
    let mut opts = opts.clone();
    opts.skip_special = true;
    commit_tree(repo, &root, &opts, wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postprocess_shapes_a_debian_like_tree() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for d in [
            "usr/bin",
            "etc/apt",
            "var/lib/dpkg",
            "var/log",
            "boot",
            "home/user",
            "root",
            "dev",
            "usr/local/bin",
        ] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::write(r.join("etc/hostname"), "debian\n").unwrap();
        std::fs::write(r.join("var/lib/dpkg/status"), "Package: x\n").unwrap();
        std::fs::write(r.join("var/log/x.log"), "log").unwrap();
        std::fs::write(r.join("boot/vmlinuz-6.1.0-1-amd64"), "kernel").unwrap();
        std::fs::write(r.join("boot/initrd.img-6.1.0-1-amd64"), "initrd").unwrap();
        std::os::unix::fs::symlink("boot/vmlinuz-6.1.0-1-amd64", r.join("vmlinuz")).unwrap();
        postprocess(r).unwrap();
        let m = r.join("usr/lib/modules/6.1.0-1-amd64");
        assert_eq!(std::fs::read(m.join("vmlinuz")).unwrap(), b"kernel");
        assert_eq!(std::fs::read(m.join("initramfs.img")).unwrap(), b"initrd");
        assert_eq!(
            std::fs::read(r.join("usr/etc/hostname")).unwrap(),
            b"debian\n"
        );
        assert!(!r.join("etc").exists() && !r.join("vmlinuz").exists());
        assert!(r.join("usr/lib/arbor/dpkg/status").is_file());
        assert_eq!(std::fs::read_dir(r.join("var")).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(r.join("boot")).unwrap().count(), 0);
        assert_eq!(
            std::fs::read_link(r.join("home")).unwrap(),
            Path::new("var/home")
        );
        assert_eq!(
            std::fs::read_link(r.join("usr/local")).unwrap(),
            Path::new("../var/usrlocal")
        );
        assert!(postprocess(r).is_err(), "composing twice is refused");
    }
}
