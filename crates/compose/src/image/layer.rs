//! Applying one image layer (a tar stream) to the tree being imported.
//!
//! Regular files go straight into the object store as they stream by, and the tree
//! gets a hardlink to the stored object, so file content is written once. Directories
//! and symlinks are made in the tree. Whiteouts follow the OCI image spec: `.wh.NAME`
//! removes NAME from the layers below, `.wh..wh..opq` empties its directory of what
//! the layers below put there.
//!
//! A layer is hostile until proven otherwise: a name that is absolute, holds `..`, an
//! empty component or a NUL, a path that goes through a symlink, and a hardlink to a
//! name outside the image are refused, and the whole import fails before anything is
//! published.

use std::collections::HashSet;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use anyhow::{Context, Result, bail};
use rustix::fs::{self as rfs, AtFlags, Mode};

use arbor_core::fsutil;
use arbor_statedb::{Cached, InodeEntry};
use arbor_store::Transaction;
use arbor_store::encoding::{Meta, S_IFDIR, S_IFREG, Xattrs};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// What a layer held.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LayerStats {
    /// Regular files (hardlinks included).
    pub files: u64,
    /// Whiteouts (opaque ones included).
    pub whiteouts: u64,
    /// Device nodes, fifos and sockets, which an image tree does not carry.
    pub skipped_special: u64,
}

/// Checks and normalizes a member name: relative, no `..`, no empty component, no
/// NUL; a leading `./` and a trailing `/` are dropped. `""` is the root itself.
pub fn clean_name(raw: &[u8]) -> Result<String> {
    let s = std::str::from_utf8(raw)
        .with_context(|| format!("the name {:?} is not UTF-8", String::from_utf8_lossy(raw)))?;
    if s.starts_with('/') {
        bail!("the name '{s}' is absolute");
    }
    let trimmed = s.strip_prefix("./").unwrap_or(s).trim_end_matches('/');
    if trimmed.is_empty() || trimmed == "." {
        return Ok(String::new());
    }
    for comp in trimmed.split('/') {
        if comp.is_empty() || comp == "." || comp == ".." || comp.contains('\0') {
            bail!("the name '{s}' is not a plain relative path");
        }
    }
    Ok(trimmed.to_string())
}

fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

/// Writes layers into a tree, one after the other, under one store transaction.
pub struct LayerWriter<'t, 'r> {
    txn: &'t Transaction<'r>,
    root: OwnedFd,
    /// Inode cache rows for the file objects linked into the tree: the commit that
    /// follows then need not read them again.
    pub rows: Vec<InodeEntry>,
}

impl<'t, 'r> LayerWriter<'t, 'r> {
    /// A writer into the (empty) directory `root`.
    pub fn new(txn: &'t Transaction<'r>, root: OwnedFd) -> Self {
        LayerWriter {
            txn,
            root,
            rows: Vec::new(),
        }
    }

    /// Opens the parent directory of `path`, creating missing directories (0755,
    /// root-owned) and refusing to go through anything but real directories.
    fn parent(&self, path: &str) -> Result<OwnedFd> {
        let (parent, _) = split(path);
        if let Ok(fd) = fsutil::open_beneath(self.root.as_fd(), parent) {
            return Ok(fd);
        }
        fsutil::mkdir_p_beneath(self.root.as_fd(), parent).with_context(|| {
            format!("/{parent} is not a directory of the image (a symlink or a file is in the way)")
        })
    }

    /// Applies one layer; `label` names it in messages.
    pub fn apply(&mut self, tar: impl Read, label: &str) -> Result<LayerStats> {
        let mut stats = LayerStats::default();
        let mut made_here: HashSet<String> = HashSet::new();
        let mut archive = tar::Archive::new(tar);
        for entry in archive
            .entries()
            .with_context(|| format!("{label}: reading the tar stream"))?
        {
            let mut entry = entry.with_context(|| format!("{label}: reading the tar stream"))?;
            let raw = entry.path_bytes().into_owned();
            let path = clean_name(&raw).with_context(|| format!("{label}: refused"))?;
            self.apply_entry(&mut entry, &path, &mut made_here, &mut stats)
                .with_context(|| format!("{label}: /{path}"))?;
        }
        Ok(stats)
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &str,
        made_here: &mut HashSet<String>,
        stats: &mut LayerStats,
    ) -> Result<()> {
        let (_, name) = split(path);
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            stats.whiteouts += 1;
            let dir = self.parent(path)?;
            if name == OPAQUE {
                let (parent, _) = split(path);
                for (child, _) in fsutil::list_dir(dir.as_fd())? {
                    let child = fsutil::show(&child);
                    let full = if parent.is_empty() {
                        child.clone()
                    } else {
                        format!("{parent}/{child}")
                    };
                    if !made_here.contains(&full) {
                        fsutil::remove_at(dir.as_fd(), child.as_bytes())?;
                    }
                }
            } else {
                // `.wh.` and `.wh..` would name the directory itself or its parent.
                if clean_name(hidden.as_bytes())?.is_empty() {
                    bail!("a whiteout that names no entry");
                }
                fsutil::remove_at(dir.as_fd(), hidden.as_bytes())?;
            }
            return Ok(());
        }
        let header = entry.header().clone();
        let meta = |fmt: u32| -> Result<Meta> {
            Ok(Meta {
                mode: fmt | (header.mode()? & 0o7777),
                uid: u32::try_from(header.uid()?).context("a uid over 2^32")?,
                gid: u32::try_from(header.gid()?).context("a gid over 2^32")?,
                xattrs: Xattrs::default(),
            })
        };
        let kind = header.entry_type();
        if path.is_empty() {
            if kind.is_dir() {
                let mut m = meta(S_IFDIR)?;
                m.xattrs = xattrs_of(entry)?;
                fsutil::apply_meta_fd(self.root.as_fd(), &m)?;
            }
            return Ok(());
        }
        made_here.insert(path.to_string());
        let dir = self.parent(path)?;
        let dir = dir.as_fd();
        match kind {
            tar::EntryType::Directory => {
                let mut m = meta(S_IFDIR)?;
                m.xattrs = xattrs_of(entry)?;
                if fsutil::kind_at(dir, name)? != Some(rfs::FileType::Directory) {
                    fsutil::remove_at(dir, name.as_bytes())?;
                    rfs::mkdirat(dir, name, Mode::from_raw_mode(0o700))?;
                }
                fsutil::apply_meta_fd(fsutil::open_dir_at(dir, name.as_bytes())?.as_fd(), &m)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                stats.files += 1;
                let mut m = meta(S_IFREG)?;
                m.xattrs = xattrs_of(entry)?;
                let size = entry.size();
                let w = self
                    .txn
                    .write_regular(&mut *entry, size, &m)
                    .context("storing its content")?;
                if w.size != size {
                    bail!(
                        "the tar stream ended inside it ({} of {size} bytes)",
                        w.size
                    );
                }
                fsutil::remove_at(dir, name.as_bytes())?;
                self.txn.link_file(&w.id, dir, name.as_bytes())?;
                let st = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
                self.rows.push(InodeEntry {
                    dev: st.st_dev,
                    ino: st.st_ino,
                    mtime_ns: 0,
                    size: w.size,
                    cached: Cached::Content(w.content),
                });
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .context("a symlink without a target")?
                    .into_owned();
                let mut m = meta(0o120000)?;
                m.xattrs = xattrs_of(entry)?;
                fsutil::remove_at(dir, name.as_bytes())?;
                rfs::symlinkat(target.as_slice(), dir, name)?;
                fsutil::apply_meta_symlink_at(dir, name.as_bytes(), &m)?;
            }
            tar::EntryType::Link => {
                stats.files += 1;
                let raw = entry
                    .link_name_bytes()
                    .context("a hardlink without a target")?
                    .into_owned();
                let target = clean_name(&raw).context("the hardlink's target is refused")?;
                if target.is_empty() || target == path {
                    bail!("a hardlink to itself or to the root");
                }
                let (tparent, tname) = split(&target);
                let tdir = fsutil::open_beneath(self.root.as_fd(), tparent).with_context(|| {
                    format!("the hardlink's target /{target} is not in the image")
                })?;
                match fsutil::kind_at(tdir.as_fd(), tname)? {
                    Some(rfs::FileType::RegularFile) => {}
                    _ => bail!("the hardlink's target /{target} is not a file of the image"),
                }
                fsutil::remove_at(dir, name.as_bytes())?;
                rfs::linkat(&tdir, tname, dir, name, AtFlags::empty())?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                stats.skipped_special += 1;
            }
            other => bail!("a tar member of type {other:?} is not supported"),
        }
        Ok(())
    }
}

/// The extended attributes a member carries (PAX `SCHILY.xattr.*`), without overlayfs's
/// own, which describe a build host's overlay and not the image.
fn xattrs_of<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Xattrs> {
    let mut pairs = Vec::new();
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            let Ok(key) = ext.key() else { continue };
            let Some(name) = key.strip_prefix("SCHILY.xattr.") else {
                continue;
            };
            if name.starts_with("trusted.overlay.") || name.is_empty() {
                continue;
            }
            pairs.push((name.as_bytes().to_vec(), ext.value_bytes().to_vec()));
        }
    }
    Ok(Xattrs::new(pairs))
}

/// The root of the tree, for the caller (postprocess and commit work on the path).
impl LayerWriter<'_, '_> {
    /// The tree's root directory.
    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned_or_refused() {
        assert_eq!(clean_name(b"./usr/bin/").unwrap(), "usr/bin");
        assert_eq!(clean_name(b"usr").unwrap(), "usr");
        assert_eq!(clean_name(b"./").unwrap(), "");
        for bad in [
            &b"/etc/passwd"[..],
            b"../x",
            b"usr/../../x",
            b"usr//bin",
            b"usr/./bin",
            b"a\0b",
            b"\xff",
        ] {
            assert!(
                clean_name(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
