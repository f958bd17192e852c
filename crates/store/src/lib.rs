//! The content-addressed object store (`<sysroot>/arbor/repo`, or any folder).
//!
//! Layout (DESIGN §2): `objects/xx/yyyy….{file,dirtree,dirmeta,commit}`, `refs/heads/…`,
//! `refs/remotes/<remote>/…`, `tmp/`, `config`, `lock`. The store is *bare*: a file
//! object is a real file (or symlink) with its final mode, owner and xattrs, and mtime
//! 0, so a checkout is a tree of hardlinks to it. Objects are immutable: nothing here
//! opens a stored object for writing. Writes go through a [`Transaction`].

pub mod checkout;
pub mod commit;
pub mod copy;
pub mod diff;
pub mod dpkg;
pub mod encoding;
pub mod fsck;
pub mod fuse;
pub mod inspect;
pub mod prune;
pub mod reach;
pub mod refs;
pub mod roots;
pub mod scratch;
pub mod transaction;
pub mod wire;

mod config;

use crate::encoding::DirMetaEncoding;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};

pub use arbor_core::object::{self, ObjectId, ObjectKind};
pub use config::RepoConfig;
pub use encoding::{Commit, DirTree, FileBody, FileHeader, Meta};
pub use transaction::Transaction;

use arbor_core::fsutil;

/// Largest dirtree, dirmeta or commit object we agree to read.
pub const MAX_META_OBJECT: u64 = 64 << 20;

pub use arbor_core::error::{StoreError, write_error};

/// An open repository: its folder, its `objects/` directory and its config.
pub struct Repo {
    path: PathBuf,
    root: OwnedFd,
    objects: OwnedFd,
    config: RepoConfig,
}

const OBJECT_DIRS_MODE: u32 = 0o755;

impl Repo {
    /// Creates an empty repository at `path` (absent, or an empty folder).
    pub fn init(path: &Path) -> Result<Repo> {
        Repo::init_with_config(path, &RepoConfig::default())
    }

    /// Creates an empty repository with the given settings (a sysroot's repository
    /// shares the sysroot's state database).
    pub fn init_with_config(path: &Path, config: &RepoConfig) -> Result<Repo> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        match std::fs::create_dir(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let mut entries = std::fs::read_dir(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                if entries.next().is_some() {
                    anyhow::bail!(
                        "{} exists and is not empty; choose a new folder",
                        path.display()
                    );
                }
            }
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
        let root = fsutil::open_dir(path).with_context(|| format!("opening {}", path.display()))?;
        let mkdir = |dir: BorrowedFd<'_>, name: &str| -> Result<()> {
            rfs::mkdirat(dir, name, Mode::from_raw_mode(OBJECT_DIRS_MODE))
                .with_context(|| format!("creating {}/{name}", path.display()))
        };
        for d in ["objects", "refs", "tmp"] {
            mkdir(root.as_fd(), d)?;
        }
        let objects = fsutil::open_dir_at(root.as_fd(), b"objects")?;
        for i in 0..=255u8 {
            mkdir(objects.as_fd(), &format!("{i:02x}"))?;
        }
        let refs = fsutil::open_dir_at(root.as_fd(), b"refs")?;
        mkdir(refs.as_fd(), "heads")?;
        mkdir(refs.as_fd(), "remotes")?;
        rfs::fsync(&objects)?;
        rfs::fsync(&refs)?;
        // The config is written last: a folder without it is not a repository yet.
        fsutil::atomic_write(root.as_fd(), "config", config.to_text().as_bytes(), 0o644)
            .with_context(|| format!("writing {}/config", path.display()))?;
        Repo::open(path)
    }

    /// Opens an existing repository, checking its format version.
    pub fn open(path: &Path) -> Result<Repo> {
        let root = fsutil::open_dir(path)
            .with_context(|| format!("opening repository {}", path.display()))?;
        let text = fsutil::read_bounded_at(root.as_fd(), "config", 64 << 10).with_context(|| {
            format!("{} is not an arbor repository (no readable config); create one with 'arbor init --repo DIR'", path.display())
        })?;
        let config = RepoConfig::parse(&String::from_utf8_lossy(&text))
            .with_context(|| format!("reading {}/config", path.display()))?;
        let objects = fsutil::open_dir_at(root.as_fd(), b"objects")
            .with_context(|| format!("opening {}/objects", path.display()))?;
        Ok(Repo {
            path: path.to_path_buf(),
            root,
            objects,
            config,
        })
    }

    /// The repository's folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The repository's settings.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// The repository folder, for dirfd-relative work.
    pub fn root_fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// `objects/`, for dirfd-relative work (hardlinking checkouts).
    pub fn objects_fd(&self) -> BorrowedFd<'_> {
        self.objects.as_fd()
    }

    /// Where the state database lives (see [`RepoConfig::state_db`]).
    pub fn state_db_path(&self) -> PathBuf {
        self.path.join(&self.config.state_db)
    }

    /// True when the object is in the store.
    pub fn has_object(&self, id: &ObjectId, kind: ObjectKind) -> bool {
        rfs::statat(
            &self.objects,
            id.relative_path(kind),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .is_ok()
    }

    /// `lstat` of a stored object.
    pub fn stat_object(&self, id: &ObjectId, kind: ObjectKind) -> Result<rfs::Stat, StoreError> {
        rfs::statat(
            &self.objects,
            id.relative_path(kind),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|_| StoreError::Missing { id: *id, kind })
    }

    /// Reads a dirtree, dirmeta or commit object and checks that it hashes to `id`.
    pub fn read_meta_object(&self, id: &ObjectId, kind: ObjectKind) -> Result<Vec<u8>, StoreError> {
        let rel = id.relative_path(kind);
        let bytes = match fsutil::read_bounded_at(self.objects.as_fd(), &rel, MAX_META_OBJECT) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::Missing { id: *id, kind });
            }
            Err(e) => {
                return Err(StoreError::Corrupt {
                    id: *id,
                    kind,
                    detail: e.to_string(),
                });
            }
        };
        let got = ObjectId::of(&bytes);
        if got != *id {
            return Err(StoreError::Corrupt {
                id: *id,
                kind,
                detail: format!("its content hashes to {got}"),
            });
        }
        Ok(bytes)
    }

    fn decode<T>(
        &self,
        id: &ObjectId,
        kind: ObjectKind,
        f: fn(&[u8]) -> Result<T, encoding::DecodeError>,
    ) -> Result<T, StoreError> {
        let bytes = self.read_meta_object(id, kind)?;
        f(&bytes).map_err(|e| StoreError::Corrupt {
            id: *id,
            kind,
            detail: e.to_string(),
        })
    }

    /// Loads and validates a commit.
    pub fn load_commit(&self, id: &ObjectId) -> Result<Commit, StoreError> {
        self.decode(id, ObjectKind::Commit, Commit::decode)
    }

    /// Loads and validates a dirtree (names are safe components, sorted, unique).
    pub fn load_dirtree(&self, id: &ObjectId) -> Result<DirTree, StoreError> {
        self.decode(id, ObjectKind::DirTree, DirTree::decode)
    }

    /// Loads and validates a dirmeta.
    pub fn load_dirmeta(&self, id: &ObjectId) -> Result<Meta, StoreError> {
        self.decode(id, ObjectKind::DirMeta, Meta::decode_dirmeta)
    }

    /// Opens the content of a regular file object for reading.
    pub fn open_file_object(&self, id: &ObjectId) -> Result<std::fs::File, StoreError> {
        let fd = rfs::openat(
            &self.objects,
            id.relative_path(ObjectKind::File),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            rustix::io::Errno::NOENT => StoreError::Missing {
                id: *id,
                kind: ObjectKind::File,
            },
            rustix::io::Errno::LOOP => StoreError::Corrupt {
                id: *id,
                kind: ObjectKind::File,
                detail: "it is a symlink, not a regular file".into(),
            },
            e => StoreError::Corrupt {
                id: *id,
                kind: ObjectKind::File,
                detail: e.to_string(),
            },
        })?;
        Ok(std::fs::File::from(fd))
    }

    /// What a file object is, read from the stored file itself without hashing its
    /// content (fsck is the place that rehashes).
    pub fn file_info(&self, id: &ObjectId) -> Result<FileInfo, StoreError> {
        let kind = ObjectKind::File;
        let st = self.stat_object(id, kind)?;
        let corrupt = |e: io::Error| StoreError::Corrupt {
            id: *id,
            kind,
            detail: e.to_string(),
        };
        let (dir, name) = id
            .relative_path(kind)
            .split_once('/')
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .unwrap();
        let dirfd = fsutil::open_dir_at(self.objects.as_fd(), dir.as_bytes()).map_err(corrupt)?;
        let xattrs = fsutil::read_xattrs_at(dirfd.as_fd(), name.as_bytes()).map_err(corrupt)?;
        let meta = fsutil::meta_from_stat(&st, xattrs);
        let target = if st.st_mode & encoding::S_IFMT == encoding::S_IFLNK {
            let t = rfs::readlinkat(&dirfd, name.as_str(), Vec::new())
                .map_err(|e| corrupt(e.into()))?;
            Some(t.into_bytes())
        } else {
            None
        };
        Ok(FileInfo {
            meta,
            size: st.st_size as u64,
            target,
        })
    }
}

/// Mode, owner, xattrs, size and symlink target of a stored file object.
#[derive(Clone, Debug)]
pub struct FileInfo {
    /// Mode (type bits included), owner, xattrs.
    pub meta: Meta,
    /// Content size (the target length for symlinks).
    pub size: u64,
    /// Symlink target, for symlinks.
    pub target: Option<Vec<u8>>,
}
