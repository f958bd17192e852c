//! `fsck --deployments`: does each deployment's checkout still match its commit?
//!
//! A deployment is a tree of hardlinks to store objects, so a file whose inode is
//! still the object's is unchanged (the object itself is rehashed by the store's
//! fsck). Anything else — a file copied when the checkout crossed filesystems, or one
//! replaced behind arbor's back — is hashed with its metadata and compared with the
//! object id. `/etc` (a merged copy, edited in place) and `/var` (the stateroot's,
//! bound at boot) are not part of the image and are not checked.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};

use anyhow::{Context, Result};
use rustix::fs::{self as rfs, AtFlags, OFlags};
use serde::Serialize;

use crate::{Deployment, Sysroot};
use arbor_core::fsutil;
use arbor_store::encoding::{FileBody, FileHeader, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};
use arbor_store::{ObjectId, ObjectKind, Repo};

/// How a path of a checkout differs from its commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckoutChange {
    /// Content, type, mode, owner or xattrs differ.
    Modified,
    /// In the checkout, not in the commit.
    Added,
    /// In the commit, not in the checkout.
    Removed,
}

/// One path of a deployment that differs from its commit.
#[derive(Clone, Debug, Serialize)]
pub struct CheckoutProblem {
    /// `<os>/<commit>.<serial>`.
    pub deployment: String,
    /// Absolute path inside the deployment (`/usr/bin/ls`).
    pub path: String,
    /// What differs.
    pub change: CheckoutChange,
}

/// What `arbor fsck` found on a sysroot: the store's check, and with
/// `--deployments` how each checkout differs from its commit.
#[derive(Clone, Debug, Serialize)]
pub struct SysrootFsck {
    /// The store: objects, refs, roots and deployments' commits.
    #[serde(flatten)]
    pub outcome: arbor_store::fsck::FsckOutcome,
    /// Paths that differ (with `--deployments` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkouts: Option<Vec<CheckoutProblem>>,
}

/// Top-level folders that are not the image's: never compared.
const NOT_IMAGE: [&[u8]; 2] = [b"etc", b"var"];

/// Compares every deployment (and the staged one) with its commit.
pub fn verify_deployments(sysroot: &Sysroot) -> Result<Vec<CheckoutProblem>> {
    let mut list = sysroot.deployments()?;
    list.extend(sysroot.staged()?);
    let mut out = Vec::new();
    for d in &list {
        out.extend(verify_checkout(sysroot, d)?);
    }
    Ok(out)
}

/// Compares one deployment's checkout with its commit. A commit that cannot be read
/// is the store fsck's finding, not repeated here.
pub fn verify_checkout(sysroot: &Sysroot, d: &Deployment) -> Result<Vec<CheckoutProblem>> {
    let repo = sysroot.repo();
    let Ok(commit) = repo.load_commit(&d.commit) else {
        return Ok(Vec::new());
    };
    let root = sysroot.deployment_path(d);
    let fd = fsutil::open_dir(&root).with_context(|| format!("opening {}", root.display()))?;
    let mut walk = Walk {
        repo,
        label: format!("{}/{}", d.os, d.dir_name()),
        out: Vec::new(),
    };
    walk.dir(fd.as_fd(), &commit.root_tree, "")?;
    Ok(walk.out)
}

struct Walk<'r> {
    repo: &'r Repo,
    label: String,
    out: Vec<CheckoutProblem>,
}

impl Walk<'_> {
    fn report(&mut self, path: String, change: CheckoutChange) {
        self.out.push(CheckoutProblem {
            deployment: self.label.clone(),
            path,
            change,
        });
    }

    fn dir(&mut self, dir: BorrowedFd<'_>, tree: &ObjectId, path: &str) -> Result<()> {
        let t = self.repo.load_dirtree(tree)?;
        let on_disk: BTreeSet<Vec<u8>> = fsutil::list_dir(dir)
            .with_context(|| format!("listing {}", show_path(path)))?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let top = path.is_empty();
        let mut expected = BTreeSet::new();
        for f in &t.files {
            expected.insert(f.name.clone());
            let p = format!("{path}/{}", fsutil::show(&f.name));
            if top && NOT_IMAGE.contains(&f.name.as_slice()) {
                continue;
            }
            if !on_disk.contains(&f.name) {
                self.report(p, CheckoutChange::Removed);
            } else if !self.file_matches(dir, &f.name, &f.file)? {
                self.report(p, CheckoutChange::Modified);
            }
        }
        for d in &t.dirs {
            expected.insert(d.name.clone());
            let p = format!("{path}/{}", fsutil::show(&d.name));
            if top && NOT_IMAGE.contains(&d.name.as_slice()) {
                continue;
            }
            if !on_disk.contains(&d.name) {
                self.report(p, CheckoutChange::Removed);
                continue;
            }
            let st = rfs::statat(dir, d.name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)?;
            if st.st_mode & S_IFMT != S_IFDIR {
                self.report(p, CheckoutChange::Modified);
                continue;
            }
            let sub = fsutil::open_dir_at(dir, &d.name)?;
            let meta = fsutil::meta_from_stat(&st, fsutil::read_xattrs_fd(sub.as_fd())?);
            if self.repo.load_dirmeta(&d.meta)? != meta {
                self.report(p.clone(), CheckoutChange::Modified);
            }
            self.dir(sub.as_fd(), &d.tree, &p)?;
        }
        for name in on_disk.difference(&expected) {
            if top && NOT_IMAGE.contains(&name.as_slice()) {
                continue;
            }
            self.report(
                format!("{path}/{}", fsutil::show(name)),
                CheckoutChange::Added,
            );
        }
        Ok(())
    }

    /// Whether `name` in `dir` is the file object `id`: the object's own inode, or a
    /// copy with the same content and metadata.
    fn file_matches(&self, dir: BorrowedFd<'_>, name: &[u8], id: &ObjectId) -> Result<bool> {
        let st = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
        if let Ok(obj) = self.repo.stat_object(id, ObjectKind::File) {
            if (obj.st_dev, obj.st_ino) == (st.st_dev, st.st_ino) {
                return Ok(true);
            }
        }
        let body = match st.st_mode & S_IFMT {
            S_IFLNK => FileBody::Symlink {
                target: rfs::readlinkat(dir, name, Vec::new())?.into_bytes(),
            },
            S_IFREG => {
                let fd = rfs::openat(
                    dir,
                    name,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    rfs::Mode::empty(),
                )?;
                let mut f = std::fs::File::from(fd);
                let mut h = blake3::Hasher::new();
                let mut buf = vec![0; 256 << 10];
                let mut size = 0u64;
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    size += n as u64;
                    h.update(&buf[..n]);
                }
                FileBody::Regular {
                    size,
                    content: *h.finalize().as_bytes(),
                }
            }
            _ => return Ok(false),
        };
        let meta = fsutil::meta_from_stat(&st, fsutil::read_xattrs_at(dir, name)?);
        Ok(FileHeader { meta, body }.id() == *id)
    }
}

fn show_path(p: &str) -> &str {
    if p.is_empty() { "/" } else { p }
}
