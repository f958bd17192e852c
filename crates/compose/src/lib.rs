//! Composing images: `compose rootfs` turns a plain Debian root filesystem into the
//! committed shape of DESIGN §2, as rpm-ostree's postprocess does, and commits it (this
//! module); `compose tree` builds one from a treefile with mmdebstrap ([`tree`]);
//! `compose image` commits an OCI image ([`image`]). All three shape the tree here.
//!
//! The source is never modified: the work happens in a staging copy made of hardlinks
//! (a copy when the source is on another filesystem), where entries are only renamed,
//! removed or created, never written in place.

pub mod image;
pub mod tree;

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use anyhow::{Context, Result, bail};
use rustix::fs::{self as rfs, AtFlags, Mode};

use arbor_core::fsutil;
use arbor_core::lock::LockWait;
use arbor_store::Repo;
use arbor_store::commit::{CommitOptions, CommitResult, commit_tree};
use arbor_store::encoding::{S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};

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
                    .map_err(|e| arbor_store::write_error(e, || format!("copying {p}")))?;
                let meta = fsutil::meta_from_stat(&st, fsutil::read_xattrs_fd(from.as_fd())?);
                fsutil::apply_meta_fd(out.as_fd(), &meta)?;
            }
            _ => {} // device nodes, fifos, sockets: nothing an image carries
        }
    }
    Ok(())
}

/// Moves the regular file `from` of `src` (if there is one) to `dest/to`.
fn move_file(src: BorrowedFd<'_>, from: &str, dest: BorrowedFd<'_>, to: &str) -> Result<()> {
    if fsutil::kind_at(src, from)? == Some(rfs::FileType::RegularFile) {
        rfs::renameat(src, from, dest, to).with_context(|| format!("moving {from}"))?;
    }
    Ok(())
}

/// Makes `name` below `dir` an empty real directory, whatever was there (a symlink in
/// an outside tree is replaced, never followed).
fn fresh_dir(dir: BorrowedFd<'_>, name: &str, mode: u32) -> Result<()> {
    match fsutil::kind_at(dir, name)? {
        Some(rfs::FileType::Directory) => {
            fsutil::empty_dir_at(fsutil::open_dir_at(dir, name.as_bytes())?.as_fd())?
        }
        other => {
            if other.is_some() {
                fsutil::remove_at(dir, name.as_bytes())?;
            }
            rfs::mkdirat(dir, name, Mode::from_raw_mode(0o755))?;
            rfs::chmodat(dir, name, Mode::from_raw_mode(mode), AtFlags::empty())?;
        }
    }
    Ok(())
}

/// Reshapes a staged root filesystem in place (DESIGN §2, "What a committed tree looks
/// like"); see `docs/compose.md` for each step. The tree comes from outside, so every
/// step works through directory fds and no symlink in it is ever followed.
pub fn postprocess(root_path: &Path) -> Result<()> {
    let root =
        fsutil::open_dir(root_path).with_context(|| format!("opening {}", root_path.display()))?;
    let root = root.as_fd();
    let usr = fsutil::open_beneath(root, "usr").with_context(|| {
        format!(
            "{} has no /usr directory (a symlink does not count)",
            root_path.display()
        )
    })?;
    if fsutil::kind_at(usr.as_fd(), "etc")?.is_some() {
        bail!(
            "{} already has /usr/etc: is it composed already?",
            root_path.display()
        );
    }
    // Kernel and initramfs into /usr/lib/modules/<kver>/.
    if fsutil::kind_at(root, "boot")? == Some(rfs::FileType::Directory) {
        let boot = fsutil::open_dir_at(root, b"boot")?;
        for (name, _) in fsutil::list_dir(boot.as_fd())? {
            let name = fsutil::show(&name);
            let Some(kver) = name.strip_prefix("vmlinuz-") else {
                continue;
            };
            if fsutil::kind_at(boot.as_fd(), &name)? != Some(rfs::FileType::RegularFile) {
                continue;
            }
            arbor_store::encoding::check_name(kver.as_bytes())
                .with_context(|| format!("kernel {name}"))?;
            let modules = fsutil::mkdir_p_beneath(root, &format!("usr/lib/modules/{kver}"))
                .with_context(|| {
                    format!("creating /usr/lib/modules/{kver} (no symlinks allowed on the way)")
                })?;
            move_file(boot.as_fd(), &name, modules.as_fd(), "vmlinuz")?;
            for (from, to) in [
                ("initrd.img-", "initramfs.img"),
                ("config-", "config"),
                ("System.map-", "System.map"),
            ] {
                move_file(boot.as_fd(), &format!("{from}{kver}"), modules.as_fd(), to)?;
            }
        }
    }
    fresh_dir(root, "boot", 0o755)?;
    for link in ["vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"] {
        if fsutil::kind_at(root, link)? == Some(rfs::FileType::Symlink) {
            rfs::unlinkat(root, link, AtFlags::empty())?;
        }
    }
    // A machine's identity is made at its first boot (systemd fills an empty
    // machine-id), never shipped in an image that many machines deploy.
    if let Ok(etc) = fsutil::open_beneath(root, "etc") {
        if fsutil::kind_at(etc.as_fd(), "machine-id")? == Some(rfs::FileType::RegularFile) {
            fsutil::remove_at(etc.as_fd(), b"machine-id")?;
            fsutil::atomic_write(etc.as_fd(), "machine-id", b"", 0o444)?;
        }
    }
    // The default /etc lives in /usr/etc; a deployment's /etc is made from it.
    match fsutil::kind_at(root, "etc")? {
        Some(rfs::FileType::Directory) => {
            rfs::renameat(root, "etc", &usr, "etc").context("moving /etc to /usr/etc")?
        }
        None => {}
        Some(_) => bail!("{}/etc is not a directory", root_path.display()),
    }
    // The package database moves into /usr; /var is empty in an image.
    if let Ok(var_lib) = fsutil::open_beneath(root, "var/lib") {
        if fsutil::kind_at(var_lib.as_fd(), "dpkg")? == Some(rfs::FileType::Directory) {
            let arbor = fsutil::mkdir_p_beneath(root, "usr/lib/arbor")?;
            rfs::renameat(&var_lib, "dpkg", &arbor, "dpkg").context("moving /var/lib/dpkg")?;
        }
    }
    // What packages put in /var comes back at every boot, as tmpfiles.d lines (as
    // rpm-ostree does): directories with their owner and mode, and symlinks.
    let var_lines = match fsutil::open_beneath(root, "var") {
        Ok(var) => var_tmpfiles(var.as_fd(), "/var")?,
        Err(_) => String::new(),
    };
    fresh_dir(root, "var", 0o755)?;
    for (path, target) in VAR_LINKS {
        let (parent, leaf) = path.rsplit_once('/').unwrap_or(("", path));
        let dir = fsutil::open_beneath(root, parent)?;
        fsutil::remove_at(dir.as_fd(), leaf.as_bytes())?;
        rfs::symlinkat(*target, &dir, leaf)?;
    }
    let tmpfiles = fsutil::mkdir_p_beneath(root, "usr/lib/tmpfiles.d")?;
    fsutil::remove_at(tmpfiles.as_fd(), b"arbor.conf")?;
    fsutil::atomic_write(tmpfiles.as_fd(), "arbor.conf", TMPFILES.as_bytes(), 0o644)?;
    fsutil::remove_at(tmpfiles.as_fd(), b"arbor-var.conf")?;
    if !var_lines.is_empty() {
        let text = format!(
            "# Written by arbor compose: what the image's packages had in /var, made at boot.\n{var_lines}"
        );
        fsutil::atomic_write(tmpfiles.as_fd(), "arbor-var.conf", text.as_bytes(), 0o644)?;
    }
    // API filesystems and scratch space are mounted or created at boot; /sysroot is
    // where prepare-root mounts the physical root.
    for (d, mode) in [
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("run", 0o755),
        ("tmp", 0o1777),
        ("sysroot", 0o755),
    ] {
        fresh_dir(root, d, mode)?;
    }
    Ok(())
}

/// tmpfiles.d lines for the directories and symlinks below `/var` (regular files are
/// state, not image: they are left out), parents first. Names tmpfiles cannot quote
/// (white space, non-UTF-8) are left out too.
fn var_tmpfiles(dir: BorrowedFd<'_>, path: &str) -> Result<String> {
    let mut out = String::new();
    let mut names = fsutil::list_dir(dir)?;
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, _) in names {
        let Ok(name) = std::str::from_utf8(&name) else {
            continue;
        };
        let p = format!("{path}/{name}");
        if p.contains(char::is_whitespace) || p == "/var/lib/dpkg" || p == "/var/tmp" {
            continue; // /var/tmp is systemd's own; dpkg's database lives in /usr
        }
        let st = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
        match st.st_mode & S_IFMT {
            S_IFDIR => {
                out.push_str(&format!(
                    "d {p} {:04o} {} {} -\n",
                    st.st_mode & 0o7777,
                    st.st_uid,
                    st.st_gid
                ));
                let sub = fsutil::open_dir_at(dir, name.as_bytes())?;
                out.push_str(&var_tmpfiles(sub.as_fd(), &p)?);
            }
            S_IFLNK => {
                let target = rfs::readlinkat(dir, name, Vec::new())?;
                if let Ok(t) = target.to_str()
                    && !t.contains(char::is_whitespace)
                {
                    out.push_str(&format!("L {p} - - - - {t}\n"));
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Composes the root filesystem at `src` into a commit on `opts.branch`, with its
/// package list (from the dpkg database) in the metadata.
pub fn compose_rootfs(
    repo: &Repo,
    src: &Path,
    opts: &CommitOptions,
    wait: LockWait<'_>,
) -> Result<CommitResult> {
    let staging = arbor_store::scratch::ScratchDir::new(repo.path(), "compose")?;
    let root = staging.path().join("root");
    stage_tree(src, &root)?;
    compose_staged(repo, &root, opts, wait)
}

/// Shapes a staged tree that arbor owns (built in a scratch folder of the repository,
/// whose files may be hardlinks of stored objects: it is only renamed, removed and
/// added to, never written in place) and commits it with its package list: the rules
/// every compose shares, whatever the tree came from.
pub fn compose_staged(
    repo: &Repo,
    root: &Path,
    opts: &CommitOptions,
    wait: LockWait<'_>,
) -> Result<CommitResult> {
    let root = root.to_path_buf();
    postprocess(&root)?;
    let mut opts = opts.clone();
    opts.skip_special = true;
    let pkgs = arbor_store::dpkg::tree_packages(&root)?;
    if let Some(p) = &pkgs {
        arbor_store::dpkg::add_metadata(&mut opts.metadata, p);
    }
    let r = commit_tree(repo, &root, &opts, wait)?;
    if let Some(p) = &pkgs {
        arbor_store::dpkg::remember(repo, &r.commit, p);
    }
    Ok(r)
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
        std::fs::write(
            r.join("etc/machine-id"),
            "00f2b0dcf7e540c691c7c398acce4879\n",
        )
        .unwrap();
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
        assert_eq!(std::fs::read(r.join("usr/etc/machine-id")).unwrap(), b"");
        assert!(r.join("usr/lib/arbor/dpkg/status").is_file());
        assert_eq!(std::fs::read_dir(r.join("var")).unwrap().count(), 0);
        let var = std::fs::read_to_string(r.join("usr/lib/tmpfiles.d/arbor-var.conf")).unwrap();
        assert!(var.contains("d /var/log 0755 0 0 -\n"), "{var}");
        assert!(
            !var.contains("x.log") && !var.contains("/var/lib/dpkg"),
            "{var}"
        );
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

    /// A hostile source tree whose /var, /boot and /usr/lib point outside must not
    /// make compose touch anything outside the staging tree.
    #[test]
    fn postprocess_never_follows_symlinks_out_of_the_tree() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("host");
        std::fs::create_dir_all(outside.join("boot")).unwrap();
        std::fs::write(outside.join("precious"), "keep").unwrap();
        std::fs::write(outside.join("boot/vmlinuz-6.1.0-host"), "host kernel").unwrap();
        let r = t.path().join("root");
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::os::unix::fs::symlink(&outside, r.join("var")).unwrap();
        std::os::unix::fs::symlink(outside.join("boot"), r.join("boot")).unwrap();
        std::os::unix::fs::symlink(&outside, r.join("tmp")).unwrap();
        postprocess(&r).unwrap();
        assert_eq!(
            std::fs::read_to_string(outside.join("precious")).unwrap(),
            "keep"
        );
        assert!(
            outside.join("boot/vmlinuz-6.1.0-host").exists(),
            "moved a host kernel"
        );
        assert!(
            std::fs::symlink_metadata(r.join("var")).unwrap().is_dir(),
            "/var replaced by a real directory"
        );
        // A symlinked /usr/lib cannot be written through either.
        let r2 = t.path().join("root2");
        std::fs::create_dir_all(r2.join("usr")).unwrap();
        std::fs::create_dir_all(r2.join("boot")).unwrap();
        std::fs::write(r2.join("boot/vmlinuz-1"), "k").unwrap();
        std::os::unix::fs::symlink(&outside, r2.join("usr/lib")).unwrap();
        assert!(postprocess(&r2).is_err());
        assert!(!outside.join("modules").exists(), "wrote through a symlink");
    }
}
