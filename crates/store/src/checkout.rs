//! Materializing a commit as a directory tree.
//!
//! Hardlink mode links every file to its object (the object already has the final
//! mode, owner and xattrs), so a checkout costs one `linkat` per file. Copy mode writes
//! independent files, for a destination on another filesystem or for trees that will
//! be edited in place. Names come from validated dirtrees (one safe component each) and
//! every operation is relative to a directory fd opened without following symlinks,
//! so nothing is ever written outside DEST.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};
use serde::Serialize;

use crate::encoding::{FileEntry, S_IFLNK, S_IFMT};
use crate::{Meta, ObjectId, ObjectKind, Repo, StoreError};
use arbor_core::fsutil::{self, show};
use arbor_core::progress::{Observer, Progress, checkpoint};

/// How files reach the checkout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckoutMode {
    /// Hardlink when DEST shares the repository's filesystem, copy otherwise.
    Auto,
    /// Hardlink every file to its object; fail if that is impossible.
    Hardlink,
    /// Copy every file.
    Copy,
}

/// What a checkout did.
#[derive(Clone, Debug, Serialize)]
pub struct CheckoutResult {
    /// The commit checked out.
    pub commit: ObjectId,
    /// Where.
    pub dest: PathBuf,
    /// Hardlink or Copy: the mode actually used.
    pub mode: CheckoutMode,
    /// Why Auto chose to copy, when it did.
    pub copy_reason: Option<String>,
    /// Files and symlinks written.
    pub files: u64,
    /// Directories created (the root included).
    pub dirs: u64,
}

/// Checks out `commit` into `dest`, which must not exist yet (counting files and
/// directories into `progress`). On failure the partial `dest` is removed.
pub fn checkout(
    repo: &Repo,
    commit: &ObjectId,
    dest: &Path,
    mode: CheckoutMode,
    progress: Option<Arc<Progress>>,
) -> Result<CheckoutResult> {
    let c = repo.load_commit(commit)?;
    let name = dest
        .file_name()
        .with_context(|| format!("{} is not a usable checkout path", dest.display()))?;
    let parent_path = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parent = fsutil::open_dir(&parent_path)
        .with_context(|| format!("opening {}", parent_path.display()))?;
    if rfs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW).is_ok() {
        bail!(
            "{} already exists; check out into a new path",
            dest.display()
        );
    }
    let same_fs = rfs::fstat(&parent)?.st_dev == rfs::fstat(repo.objects_fd())?.st_dev;
    let (mut use_copy, mut copy_reason) = match (mode, same_fs) {
        (CheckoutMode::Copy, _) => (true, None),
        (CheckoutMode::Hardlink, false) => {
            bail!(
                "{} is on another filesystem than the repository; hardlinks are impossible (use --copy)",
                dest.display()
            )
        }
        (CheckoutMode::Auto, false) => (
            true,
            Some("the destination is on another filesystem than the repository".into()),
        ),
        (_, true) => (false, None),
    };
    loop {
        let mut writer = TreeCheckout::new(repo, use_copy);
        writer.progress = progress.clone();
        let result = writer.run(
            parent.as_fd(),
            name.as_encoded_bytes(),
            &c.root_tree,
            &c.root_meta,
        );
        if result.is_err() {
            let _ = std::fs::remove_dir_all(dest);
        }
        match result {
            Ok(()) => {
                return Ok(CheckoutResult {
                    commit: *commit,
                    dest: dest.to_path_buf(),
                    mode: if use_copy {
                        CheckoutMode::Copy
                    } else {
                        CheckoutMode::Hardlink
                    },
                    copy_reason,
                    files: writer.files.load(Ordering::Relaxed),
                    dirs: writer.dirs.load(Ordering::Relaxed),
                });
            }
            // A bind mount of the same filesystem has the same st_dev but refuses
            // links across it: only linkat itself can tell.
            Err(_)
                if writer.saw_exdev.load(Ordering::Relaxed)
                    && mode == CheckoutMode::Auto
                    && !use_copy =>
            {
                use_copy = true;
                copy_reason =
                    Some("hardlinks into the destination are refused (another mount)".into());
            }
            Err(e) => return Err(e),
        }
    }
}

/// Writes one tree below an open directory; reusable by deploy.
pub struct TreeCheckout<'r> {
    repo: &'r Repo,
    copy: bool,
    dirmetas: RwLock<HashMap<ObjectId, Meta>>,
    /// Bumped per file and directory written, when someone watches.
    pub progress: Option<Arc<Progress>>,
    /// Asked between directories; when it says stop, the checkout fails with
    /// [`Cancelled`] (and the caller removes what was written).
    pub observer: Option<&'r dyn Observer>,
    files: AtomicU64,
    dirs: AtomicU64,
    saw_exdev: AtomicBool,
}

impl<'r> TreeCheckout<'r> {
    /// A checkout from `repo`, copying files when `copy` is set, hardlinking otherwise.
    pub fn new(repo: &'r Repo, copy: bool) -> Self {
        TreeCheckout {
            repo,
            copy,
            dirmetas: RwLock::new(HashMap::new()),
            progress: None,
            observer: None,
            files: AtomicU64::new(0),
            dirs: AtomicU64::new(0),
            saw_exdev: AtomicBool::new(false),
        }
    }

    /// Creates `parent/name` as the directory (tree, meta) with everything below it.
    pub fn run(
        &self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        tree: &ObjectId,
        meta: &ObjectId,
    ) -> Result<()> {
        self.make_dir(parent, name, tree, meta, "")
    }

    fn dirmeta(&self, id: &ObjectId) -> Result<Meta, StoreError> {
        if let Some(m) = self.dirmetas.read().unwrap().get(id) {
            return Ok(m.clone());
        }
        let m = self.repo.load_dirmeta(id)?;
        self.dirmetas.write().unwrap().insert(*id, m.clone());
        Ok(m)
    }

    fn make_dir(
        &self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        tree: &ObjectId,
        meta: &ObjectId,
        path: &str,
    ) -> Result<()> {
        let shown = if path.is_empty() { "/" } else { path };
        let meta = self
            .dirmeta(meta)
            .with_context(|| format!("checking out {shown}"))?;
        rfs::mkdirat(parent, name, Mode::from_raw_mode(0o700))
            .map_err(|e| crate::write_error(e.into(), || format!("creating directory {shown}")))?;
        let fd = fsutil::open_dir_at(parent, name)?;
        self.dirs.fetch_add(1, Ordering::Relaxed);
        self.fill_dir(fd.as_fd(), tree, path)?;
        // Mode last, so a read-only directory can still be filled.
        fsutil::apply_meta_fd(fd.as_fd(), &meta)
            .with_context(|| format!("setting owner and mode of {shown}"))?;
        Ok(())
    }

    fn fill_dir(&self, fd: BorrowedFd<'_>, tree: &ObjectId, path: &str) -> Result<()> {
        if let Some(obs) = self.observer {
            checkpoint(obs)?;
        }
        let shown = if path.is_empty() { "/" } else { path };
        let t = self
            .repo
            .load_dirtree(tree)
            .with_context(|| format!("checking out {shown}"))?;
        for f in &t.files {
            self.place_file(fd, f, path)?;
        }
        self.files
            .fetch_add(t.files.len() as u64, Ordering::Relaxed);
        t.dirs.par_iter().try_for_each(|d| {
            let sub = format!("{path}/{}", show(&d.name));
            self.make_dir(fd, &d.name, &d.tree, &d.meta, &sub)
        })
    }

    fn place_file(&self, dir: BorrowedFd<'_>, f: &FileEntry, parent: &str) -> Result<()> {
        let path = || format!("{parent}/{}", show(&f.name));
        if !self.copy {
            let rel = f.file.relative_path(ObjectKind::File);
            match rfs::linkat(
                self.repo.objects_fd(),
                rel.as_str(),
                dir,
                f.name.as_slice(),
                AtFlags::empty(),
            ) {
                Ok(()) => return Ok(()),
                Err(rustix::io::Errno::NOENT) => {
                    return Err(StoreError::Missing {
                        id: f.file,
                        kind: ObjectKind::File,
                    })
                    .with_context(|| format!("checking out {}", path()));
                }
                Err(rustix::io::Errno::XDEV) => {
                    self.saw_exdev.store(true, Ordering::Relaxed);
                    bail!(
                        "hardlinking {}: the destination is on another mount",
                        path()
                    );
                }
                // The object has as many links as the filesystem allows: copy this one.
                Err(rustix::io::Errno::MLINK) => {}
                Err(e) => {
                    return Err(crate::write_error(e.into(), || {
                        format!("hardlinking {}", path())
                    }));
                }
            }
        }
        self.copy_file(dir, f)
            .with_context(|| format!("copying {}", path()))
    }

    fn copy_file(&self, dir: BorrowedFd<'_>, f: &FileEntry) -> Result<()> {
        let info = self.repo.file_info(&f.file)?;
        let name = f.name.as_slice();
        if info.meta.mode & S_IFMT == S_IFLNK {
            let target = info.target.as_deref().unwrap_or_default();
            rfs::symlinkat(target, dir, name).map_err(io::Error::from)?;
            fsutil::apply_meta_symlink_at(dir, name, &info.meta)?;
            return Ok(());
        }
        let mut src = self.repo.open_file_object(&f.file)?;
        let fd: OwnedFd = rfs::openat(
            dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        let mut out = File::from(fd);
        // std::io::copy uses copy_file_range between files: no user-space round trip.
        io::copy(&mut src, &mut out)
            .map_err(|e| crate::write_error(e, || "copying file content".into()))?;
        fsutil::apply_meta_fd(out.as_fd(), &info.meta)?;
        Ok(())
    }
}
