//! What `usroverlay` manages beyond mounting: which overlay a request means, its label
//! (`--name`), and adding files to it (`--add`).
//!
//! An overlay's folder holds `upper/` and `work/` (what overlayfs needs) and
//! `overlay.json` ([`OverlayInfo`]): its name, when it was made, and the commit it was
//! turned into by `--commit`. prepare-root reads the last to drop a committed hotfix.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};

use super::{OverlayKind, booted, kind_of, usr_mount};
use arbor_core::fsutil;
use arbor_sysroot::select::select_deployment;
use arbor_sysroot::{Deployment, Sysroot};

pub use arbor_boot::hotfix::OverlayInfo;

/// The longest label `--name` takes.
const MAX_NAME: usize = 80;

/// Checks a `--name` label: printable, one line, not too long.
pub fn check_name(name: &str) -> Result<()> {
    if name.trim().is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        bail!("'{name}' is not a usable overlay name: one printable line of 1 to {MAX_NAME} bytes");
    }
    Ok(())
}

/// One overlay of a deployment's `/usr`, found for a request.
#[derive(Clone, Debug)]
pub struct FoundOverlay {
    /// The deployment whose `/usr` it covers.
    pub deployment: Deployment,
    /// Transient, hotfix or live.
    pub kind: OverlayKind,
    /// Its folder (`upper/`, `work/`, `overlay.json`).
    pub dir: PathBuf,
    /// Mounted on the live root's `/usr` now.
    pub mounted: bool,
}

impl FoundOverlay {
    /// Its upper layer.
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
}

/// The overlay a request means: the one on the live root's `/usr` (or the booted
/// deployment's kept hotfix when this mount namespace has none mounted), or with
/// `which` the kept hotfix of that deployment.
pub fn find(sysroot: &Sysroot, root: &Path, which: Option<&str>) -> Result<FoundOverlay> {
    let d = match which {
        Some(w) => select_deployment(sysroot, w)?,
        None => booted(sysroot)?,
    };
    if d.booted
        && let Some(m) = usr_mount(&root.join("usr"))?
    {
        let dir = m
            .upper
            .parent()
            .context("an upper layer at /")?
            .to_path_buf();
        return Ok(FoundOverlay {
            kind: kind_of(sysroot, &d, &m.upper),
            deployment: d,
            dir,
            mounted: true,
        });
    }
    let hotfix = sysroot.hotfix_dir(&d);
    if hotfix.join("upper").is_dir() {
        return Ok(FoundOverlay {
            deployment: d,
            kind: OverlayKind::Hotfix,
            dir: hotfix,
            mounted: false,
        });
    }
    bail!(
        "deployment {}/{} has no /usr overlay; make one with 'arbor usroverlay'",
        d.os,
        d.dir_name()
    )
}

/// Turns `--add SRC[:DEST]` into (source, path below `/usr`). DEST defaults to SRC read
/// as a path from `/` (`usr/bin/x` and `/usr/bin/x` both mean `/usr/bin/x`).
pub fn parse_add(spec: &str) -> Result<(PathBuf, String)> {
    let (src, dest) = match spec.split_once(':') {
        Some((s, d)) => (s, d),
        None => (spec, spec),
    };
    if src.is_empty() {
        bail!("--add '{spec}': no source path");
    }
    let mut parts = Vec::new();
    for c in Path::new(dest).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => {
                let n = n
                    .to_str()
                    .with_context(|| format!("--add '{spec}': a name that is not UTF-8"))?;
                parts.push(n);
            }
            Component::ParentDir | Component::Prefix(_) => {
                bail!("--add '{spec}': '{dest}' must not contain '..'")
            }
        }
    }
    if parts.first() != Some(&"usr") {
        bail!("--add '{spec}': '{dest}' is not below /usr; only /usr has an overlay");
    }
    Ok((PathBuf::from(src), parts[1..].join("/")))
}

/// Opens (creating what is missing) the directory `rel` below the live `/usr`.
/// Symlinks on the way are followed only while they stay below `/usr`: the kernel
/// refuses the rest (`RESOLVE_BENEATH`).
fn open_usr_dir(usr: BorrowedFd<'_>, rel: &str, shown: &str) -> Result<OwnedFd> {
    let mut dir = rfs::openat(
        usr,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut walked = String::from("/usr");
    for comp in rel.split('/').filter(|c| !c.is_empty()) {
        walked.push('/');
        walked.push_str(comp);
        match rfs::mkdirat(&dir, comp, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e).with_context(|| format!("{shown}: creating {walked}")),
        }
        dir = rfs::openat2(
            &dir,
            comp,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            rfs::ResolveFlags::BENEATH,
        )
        .map_err(|e| match e {
            rustix::io::Errno::XDEV => anyhow::anyhow!(
                "{shown}: {walked} is a symlink that leaves /usr (or is absolute); refusing to write through it"
            ),
            rustix::io::Errno::NOTDIR => anyhow::anyhow!("{shown}: {walked} is not a directory"),
            e => anyhow::Error::new(e).context(format!("{shown}: opening {walked}")),
        })?;
    }
    Ok(dir)
}

/// Copies `src` into `dir` as `name`: a file or symlink is written beside the
/// destination and renamed over it; a folder is merged entry by entry.
fn add_entry(src: &Path, dir: BorrowedFd<'_>, name: &str, shown: &str) -> Result<()> {
    let st =
        std::fs::symlink_metadata(src).with_context(|| format!("reading {}", src.display()))?;
    let existing = fsutil::kind_at(dir, name)?;
    if st.is_dir() {
        if existing.is_some_and(|k| k != rfs::FileType::Directory) {
            bail!(
                "{shown} exists and is not a directory; --remove it from the overlay first or add a file"
            );
        }
        if existing.is_none() {
            rfs::mkdirat(dir, name, Mode::from_raw_mode(0o755))
                .with_context(|| format!("creating {shown}"))?;
        }
        let sub = rfs::openat2(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            rfs::ResolveFlags::BENEATH | rfs::ResolveFlags::NO_SYMLINKS,
        )
        .with_context(|| format!("opening {shown}"))?;
        let mut children: Vec<_> = std::fs::read_dir(src)
            .with_context(|| format!("reading {}", src.display()))?
            .collect::<std::io::Result<_>>()?;
        children.sort_by_key(|e| e.file_name());
        for c in children {
            let n = c.file_name();
            let n = n
                .to_str()
                .with_context(|| format!("{}: a name that is not UTF-8", c.path().display()))?;
            add_entry(&c.path(), sub.as_fd(), n, &format!("{shown}/{n}"))?;
        }
        let meta = fsutil::meta_from_stat(
            &rfs::stat(src)?,
            fsutil::read_xattrs_fd(fsutil::open_dir(src)?.as_fd())?,
        );
        fsutil::apply_meta_fd(sub.as_fd(), &meta)
            .with_context(|| format!("setting the mode of {shown}"))?;
        return Ok(());
    }
    if existing == Some(rfs::FileType::Directory) {
        bail!("{shown} is a directory; a file cannot replace it");
    }
    if !(st.is_file() || st.file_type().is_symlink()) {
        bail!(
            "{}: only files, symlinks and folders can be added",
            src.display()
        );
    }
    let parent = src
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let src_dir =
        fsutil::open_dir(parent).with_context(|| format!("opening {}", parent.display()))?;
    let src_name = src
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: no usable file name", src.display()))?;
    let tmp = format!(".{name}.arbor-add");
    fsutil::remove_at(dir, tmp.as_bytes())?;
    let written = (|| -> Result<()> {
        fsutil::copy_entry_at(src_dir.as_fd(), src_name, dir, &tmp)?;
        if st.is_file() {
            let f = rfs::openat(
                dir,
                tmp.as_str(),
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            rfs::fsync(&f)?;
        }
        rfs::renameat(dir, tmp.as_str(), dir, name)?;
        rfs::fsync(dir)?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = rfs::unlinkat(dir, tmp.as_str(), AtFlags::empty());
        return Err(e).with_context(|| format!("adding {} as {shown}", src.display()));
    }
    Ok(())
}

/// Copies each (source, path below `/usr`) into the live root's `/usr`, which must
/// have a writable overlay; returns the destinations, as `/usr/...` (a folder's ends
/// in `/`).
pub fn add(root: &Path, items: &[(PathBuf, String)]) -> Result<Vec<String>> {
    let usr = fsutil::open_dir(&root.join("usr"))
        .with_context(|| format!("opening {}/usr", root.display()))?;
    let mut added = Vec::new();
    for (src, dest) in items {
        let shown = format!("/usr/{dest}");
        let (parent, name) = match dest.rsplit_once('/') {
            Some((p, n)) => (p, n),
            None => ("", dest.as_str()),
        };
        if name.is_empty() {
            // The whole of /usr: a folder's content merged into it.
            if !src.is_dir() {
                bail!(
                    "{}: only a folder can be added as /usr itself",
                    src.display()
                );
            }
            for c in std::fs::read_dir(src)? {
                let c = c?;
                let n = c.file_name();
                let n = n.to_str().context("a name that is not UTF-8")?.to_string();
                add_entry(&c.path(), usr.as_fd(), &n, &format!("/usr/{n}"))?;
            }
            added.push("/usr/".to_string());
            continue;
        }
        let dir = open_usr_dir(usr.as_fd(), parent, &shown)?;
        add_entry(src, dir.as_fd(), name, &shown)?;
        added.push(if src.is_dir() {
            format!("{shown}/")
        } else {
            shown
        });
    }
    Ok(added)
}
