//! The repository's own roots: commits that something other than a ref needs.
//!
//! A deployment's commit (a layered commit, a hotfix commit, an old version) often has
//! no ref once later commits move the branch on. OSTree keeps a ref per deployment
//! (`ostree/0/1/0`) so that any prune, from any path, keeps it; arbor does the same
//! with `refs/deployments/<name>` files: one per deployment (and one per `/etc`
//! snapshot), written by the sysroot before a deployment becomes visible and removed
//! after it is gone. [`super::prune`] and [`super::fsck`] walk them like refs.
//!
//! A repository that belongs to a sysroot names the sysroot's lock in its config
//! ([`super::RepoConfig::owner_lock`]); a prune through `--repo` takes that lock first,
//! so it never runs between a commit and the root that keeps it.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use rustix::fs::{self as rfs, AtFlags, Mode};

use super::{ObjectId, Repo};
use arbor_core::fsutil;
use arbor_core::lock::WriterLock;

/// The folder below `refs/` that holds the roots.
pub const ROOTS_DIR: &str = "deployments";

/// One stored root: its name below `refs/deployments/` and the commit it keeps.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct StoredRoot {
    /// `<os>/<commit>.<serial>` for a deployment, `…​.etc` for its `/etc` snapshot.
    pub name: String,
    /// The commit kept with its whole history.
    pub commit: ObjectId,
}

fn check_name(name: &str) -> Result<()> {
    let ok = |c: &str| {
        !c.is_empty()
            && !c.starts_with('.')
            && c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    if name.split('/').count() != 2 || !name.split('/').all(ok) {
        bail!("'{name}' is not a root name (OS/NAME of letters, digits, '.', '_', '-')");
    }
    Ok(())
}

impl Repo {
    /// Every stored root, sorted by name. Empty when the repository has none (and no
    /// `refs/deployments` folder: see [`Repo::has_roots`]).
    pub fn list_roots(&self) -> Result<Vec<StoredRoot>> {
        let mut out = Vec::new();
        let Some(dir) = self.roots_dir()? else {
            return Ok(out);
        };
        for (os, ft) in fsutil::list_dir(dir.as_fd())? {
            if ft != rfs::FileType::Directory || os.starts_with(b".") {
                continue;
            }
            let os_fd = fsutil::open_dir_at(dir.as_fd(), &os)?;
            for (leaf, ft) in fsutil::list_dir(os_fd.as_fd())? {
                if ft != rfs::FileType::RegularFile || leaf.starts_with(b".") {
                    continue; // temporaries of atomic_write
                }
                let name = format!("{}/{}", fsutil::show(&os), fsutil::show(&leaf));
                let text = fsutil::read_bounded_at(os_fd.as_fd(), &fsutil::show(&leaf), 1024)
                    .with_context(|| format!("reading root {name}"))?;
                let commit = String::from_utf8_lossy(&text)
                    .trim()
                    .parse()
                    .with_context(|| format!("root refs/{ROOTS_DIR}/{name} is damaged"))?;
                out.push(StoredRoot { name, commit });
            }
        }
        out.sort();
        Ok(out)
    }

    /// Whether the roots were ever recorded here (the folder exists, even empty).
    pub fn has_roots(&self) -> bool {
        rfs::statat(
            self.root_fd(),
            format!("refs/{ROOTS_DIR}").as_str(),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .is_ok()
    }

    /// Creates the (empty) roots folder: from now on the roots are recorded.
    pub fn init_roots(&self, _lock: &WriterLock) -> Result<()> {
        let refs = fsutil::open_dir_at(self.root_fd(), b"refs").context("opening refs/")?;
        match rfs::mkdirat(&refs, ROOTS_DIR, Mode::from_raw_mode(0o755)) {
            Ok(()) => Ok(rfs::fsync(&refs)?),
            Err(rustix::io::Errno::EXIST) => Ok(()),
            Err(e) => Err(io::Error::from(e)).context("creating refs/deployments"),
        }
    }

    /// Records (`Some`) or drops (`None`) the root `name`, atomically and durably. The
    /// caller holds the writer lock that guards the repository's owner.
    pub fn write_root(
        &self,
        lock: &WriterLock,
        name: &str,
        commit: Option<&ObjectId>,
    ) -> Result<()> {
        check_name(name)?;
        self.init_roots(lock)?;
        let (os, leaf) = name.split_once('/').unwrap();
        let roots = self.roots_dir()?.context("refs/deployments vanished")?;
        match commit {
            Some(id) => {
                match rfs::mkdirat(&roots, os, Mode::from_raw_mode(0o755)) {
                    Ok(()) => rfs::fsync(&roots)?,
                    Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(io::Error::from(e).into()),
                }
                let dir = fsutil::open_dir_at(roots.as_fd(), os.as_bytes())?;
                fsutil::atomic_write(dir.as_fd(), leaf, format!("{id}\n").as_bytes(), 0o644)
                    .map_err(|e| super::write_error(e, || format!("writing root {name}")))
            }
            None => {
                let Ok(dir) = fsutil::open_dir_at(roots.as_fd(), os.as_bytes()) else {
                    return Ok(());
                };
                match rfs::unlinkat(&dir, leaf, AtFlags::empty()) {
                    Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(rfs::fsync(&dir)?),
                    Err(e) => {
                        Err(io::Error::from(e)).with_context(|| format!("dropping root {name}"))
                    }
                }
            }
        }
    }

    /// The lock a writer that deletes objects must hold besides the repository's own:
    /// the owning sysroot's (`<sysroot>/arbor/lock`), or none for a plain repository.
    pub fn owner_lock_path(&self) -> Option<PathBuf> {
        self.config().owner_lock().map(|rel| self.path().join(rel))
    }

    fn roots_dir(&self) -> Result<Option<OwnedFd>> {
        match fsutil::open_dir_at(self.root_fd(), format!("refs/{ROOTS_DIR}").as_bytes()) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("opening refs/deployments"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_names() {
        for ok in ["debian/abc.0", "os/x.1.etc"] {
            check_name(ok).unwrap();
        }
        for bad in ["", "a", "a/b/c", "../x", "a/..", "a/.x", "/a/b", "a b/c"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
