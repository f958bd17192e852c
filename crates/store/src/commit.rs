//! Turning a directory tree into objects and a commit.
//!
//! The walk is parallel (rayon: directories and their entries fan out across cores),
//! works only through directory fds and never follows a symlink. Every regular file
//! is hashed while it is read; the inode cache of the state database lets a file
//! whose (device, inode, mtime, size) is unchanged skip reading altogether.

use crate::encoding::DirMetaEncoding;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};
use serde::Serialize;

use crate::encoding::{self, DirEntry, FileBody, FileEntry, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};
use crate::refs::RefName;
use crate::{Commit, DirTree, FileHeader, ObjectId, ObjectKind, Repo, Transaction};
use arbor_core::fsutil::{self, show};
use arbor_core::lock::LockWait;
use arbor_core::progress::Progress;
use arbor_statedb::{Cached, HistoryKind, InodeCache, InodeEntry, InodeRows, StateDb};

/// What to commit besides the tree.
#[derive(Clone, Debug)]
pub struct CommitOptions {
    /// The branch to move to the new commit.
    pub branch: RefName,
    /// One-line summary.
    pub subject: String,
    /// Longer description.
    pub body: String,
    /// Key=value metadata (version, ...).
    pub metadata: Vec<(String, String)>,
    /// Commit time, seconds since the epoch. Fixed by the caller so that equal input
    /// can give equal commit ids (SOURCE_DATE_EPOCH).
    pub timestamp: i64,
    /// Leave the new commit without a parent even when the branch exists.
    pub orphan: bool,
    /// Leave out device nodes, sockets and fifos instead of failing on them.
    pub skip_special: bool,
    /// Use the inode cache (off only for measurements and paranoia).
    pub use_cache: bool,
    /// Counts entries and bytes as they are committed, for a progress display.
    pub progress: Option<Arc<Progress>>,
}

/// What a commit did, for the user and for benchmarks.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CommitStats {
    /// Regular files in the tree.
    pub files: u64,
    /// Symlinks in the tree.
    pub symlinks: u64,
    /// Directories in the tree (the root included).
    pub dirs: u64,
    /// Regular files read and hashed.
    pub files_hashed: u64,
    /// Regular files known unchanged from the inode cache, not read.
    pub files_from_cache: u64,
    /// Objects new to the store.
    pub objects_written: u64,
    /// File content bytes new to the store.
    pub bytes_written: u64,
    /// Special files left out (`--skip-special`), by path.
    pub skipped_special: Vec<String>,
}

/// The new commit and what it took.
#[derive(Clone, Debug, Serialize)]
pub struct CommitResult {
    /// The new commit.
    pub commit: ObjectId,
    /// The branch that now points at it.
    pub branch: String,
    /// Its root dirtree.
    pub root_tree: ObjectId,
    /// Its parent.
    pub parent: Option<ObjectId>,
    /// Counters.
    pub stats: CommitStats,
}

/// `$SOURCE_DATE_EPOCH`, when set: the time reproducible builds put on what they make.
pub fn source_date_epoch() -> Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) => Ok(Some(s.trim().parse().with_context(|| {
            format!("SOURCE_DATE_EPOCH='{s}' is not a number of seconds")
        })?)),
        Err(_) => Ok(None),
    }
}

/// A commit's time when the caller gives none: `$SOURCE_DATE_EPOCH`, else now.
pub fn default_timestamp() -> Result<i64> {
    match source_date_epoch()? {
        Some(t) => Ok(t),
        None => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64),
    }
}

/// Commits the tree at `src` to `opts.branch`; on any error nothing is published and
/// the branch is unchanged. The history records it.
pub fn commit_tree(
    repo: &Repo,
    src: &Path,
    opts: &CommitOptions,
    wait: LockWait<'_>,
) -> Result<CommitResult> {
    commit_tree_recorded(repo, src, opts, wait, true)
}

/// [`commit_tree`] for a commit that is a step of a larger operation (the layers an
/// image import keeps), which the history records once, as that operation.
pub fn commit_tree_unrecorded(
    repo: &Repo,
    src: &Path,
    opts: &CommitOptions,
    wait: LockWait<'_>,
) -> Result<CommitResult> {
    commit_tree_recorded(repo, src, opts, wait, false)
}

fn commit_tree_recorded(
    repo: &Repo,
    src: &Path,
    opts: &CommitOptions,
    wait: LockWait<'_>,
    record: bool,
) -> Result<CommitResult> {
    let root = fsutil::open_dir(src)
        .with_context(|| format!("opening the tree to commit, {}", src.display()))?;
    let mut db = StateDb::open(&repo.state_db_path())?;
    let txn = Transaction::begin(repo, wait)?;
    let history = if record {
        Some(db.begin_history_row(
            HistoryKind::Commit,
            &std::env::args().collect::<Vec<_>>().join(" "),
            rustix::process::getuid().as_raw(),
        )?)
    } else {
        None
    };
    let started = std::time::Instant::now();
    let written = commit_in(&txn, &db, root, opts);
    tracing::debug!("wrote the tree in {:?}", started.elapsed());
    // The row says ok only once the objects and the branch are durable.
    let result = written.and_then(|(r, rows)| {
        txn.finish(&[(opts.branch.clone(), Some(r.commit))])?;
        Ok((r, rows))
    });
    if let Some(history) = history {
        let _ = db.end_history_row(
            history,
            &result.as_ref().map(|_| ()).map_err(|e| format!("{e:#}")),
        );
    }
    let (result, cache_rows) = result?;
    if let Err(e) = db.store_inode_cache(cache_rows) {
        // The commit is durable; a cache that fails to save only costs speed next time.
        tracing::warn!("could not update the inode cache: {e:#}");
    }
    Ok(result)
}

fn commit_in(
    txn: &Transaction<'_>,
    db: &StateDb,
    root: OwnedFd,
    opts: &CommitOptions,
) -> Result<(CommitResult, InodeRows)> {
    let repo = txn.repo();
    let src_dev = rfs::fstat(&root)?.st_dev;
    let repo_dev = rfs::fstat(repo.objects_fd())?.st_dev;
    let t = std::time::Instant::now();
    let cache = if opts.use_cache {
        db.load_inode_cache(&[src_dev, repo_dev])?
    } else {
        InodeCache::default()
    };
    tracing::debug!(
        "loaded {} inode cache rows in {:?}",
        cache.len(),
        t.elapsed()
    );
    let parent = if opts.orphan {
        None
    } else {
        repo.read_ref(&opts.branch)?
    };
    let mut walker = TreeWriter::new(txn, &cache, opts.skip_special);
    walker.progress = opts.progress.clone();
    let (root_tree, root_meta) = walker.write_dir(root, "")?;
    let commit = Commit {
        root_tree,
        root_meta,
        parent,
        timestamp: opts.timestamp,
        subject: opts.subject.clone(),
        body: opts.body.clone(),
        metadata: Commit::new_metadata(opts.metadata.clone()),
    };
    let id = txn.write_meta(ObjectKind::Commit, &commit.encode())?;
    let (stats, rows) = walker.into_stats();
    let result = CommitResult {
        commit: id,
        branch: opts.branch.to_string(),
        root_tree,
        parent,
        stats,
    };
    Ok((result, rows))
}

/// Writes a directory tree into a transaction: the reusable core of every commit
/// (plain commits here, composes and layered packages later).
pub struct TreeWriter<'t, 'r> {
    txn: &'t Transaction<'r>,
    cache: &'t InodeCache,
    skip_special: bool,
    /// Files modified after this instant (ns) are not cached: they could change again
    /// within the file system's timestamp granularity without changing mtime.
    racy_after_ns: i64,
    new_rows: InodeRows,
    skipped: Mutex<Vec<String>>,
    /// Bumped per entry and per content byte, when someone watches.
    pub progress: Option<Arc<Progress>>,
    files: AtomicU64,
    symlinks: AtomicU64,
    dirs: AtomicU64,
    hashed: AtomicU64,
    from_cache: AtomicU64,
}

/// What [`TreeWriter::write_entry`] made of one directory entry.
pub enum Item {
    /// A regular file or symlink, stored.
    File(FileEntry),
    /// A directory, stored with everything below it.
    Dir(DirEntry),
    /// A special file left out (`skip_special`).
    Skipped,
}

fn mtime_ns(st: &rfs::Stat) -> i64 {
    st.st_mtime * 1_000_000_000 + st.st_mtime_nsec as i64
}

fn ctime_ns(st: &rfs::Stat) -> i64 {
    st.st_ctime * 1_000_000_000 + st.st_ctime_nsec as i64
}

fn join(parent: &str, name: &[u8]) -> String {
    format!("{parent}/{}", show(name))
}

impl<'t, 'r> TreeWriter<'t, 'r> {
    /// A writer into `txn`, consulting `cache` for unchanged files.
    pub fn new(txn: &'t Transaction<'r>, cache: &'t InodeCache, skip_special: bool) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        TreeWriter {
            txn,
            cache,
            skip_special,
            racy_after_ns: now.as_nanos() as i64 - 2_000_000_000,
            new_rows: InodeRows::default(),
            skipped: Mutex::new(Vec::new()),
            progress: None,
            files: AtomicU64::new(0),
            symlinks: AtomicU64::new(0),
            dirs: AtomicU64::new(0),
            hashed: AtomicU64::new(0),
            from_cache: AtomicU64::new(0),
        }
    }

    /// The transaction it writes into.
    pub fn txn(&self) -> &'t Transaction<'r> {
        self.txn
    }

    /// Counters and the inode cache rows worth saving.
    pub fn into_stats(self) -> (CommitStats, InodeRows) {
        let s = self.txn.stats();
        let mut skipped = self.skipped.into_inner().unwrap();
        skipped.sort();
        let stats = CommitStats {
            files: self.files.into_inner(),
            symlinks: self.symlinks.into_inner(),
            dirs: self.dirs.into_inner(),
            files_hashed: self.hashed.into_inner(),
            files_from_cache: self.from_cache.into_inner(),
            objects_written: s.objects_written.load(Ordering::Relaxed),
            bytes_written: s.bytes_written.load(Ordering::Relaxed),
            skipped_special: skipped,
        };
        (stats, self.new_rows)
    }

    /// Writes the directory open at `dir` (shown as `path`, "" for the root) and
    /// everything below it; returns its (dirtree, dirmeta) ids.
    pub fn write_dir(&self, dir: OwnedFd, path: &str) -> Result<(ObjectId, ObjectId)> {
        self.dirs.fetch_add(1, Ordering::Relaxed);
        let shown = if path.is_empty() { "/" } else { path };
        let st = rfs::fstat(&dir).with_context(|| format!("stat {shown}"))?;
        let xattrs = fsutil::read_xattrs_fd(dir.as_fd())
            .with_context(|| format!("reading xattrs of {shown}"))?;
        let meta = fsutil::meta_from_stat(&st, xattrs);
        let names =
            fsutil::list_dir(dir.as_fd()).with_context(|| format!("reading directory {shown}"))?;
        let items: Vec<Item> = names
            .into_par_iter()
            .map(|(name, _)| self.write_entry(dir.as_fd(), name, path))
            .collect::<Result<_>>()?;
        let mut tree = DirTree::default();
        for item in items {
            match item {
                Item::File(f) => tree.files.push(f),
                Item::Dir(d) => tree.dirs.push(d),
                Item::Skipped => {}
            }
        }
        tree.sort();
        let tree_id = self.txn.write_meta(ObjectKind::DirTree, &tree.encode())?;
        let meta_id = self
            .txn
            .write_meta(ObjectKind::DirMeta, &meta.encode_dirmeta())?;
        Ok((tree_id, meta_id))
    }

    /// Writes the entry `name` of `dir` (shown below `parent`): a file, a symlink, or a
    /// directory with everything below it. How a caller edits one path of a tree.
    pub fn write_entry(&self, dir: BorrowedFd<'_>, name: Vec<u8>, parent: &str) -> Result<Item> {
        if let Some(p) = &self.progress {
            p.add_items(1);
        }
        let path = join(parent, &name);
        encoding::check_name(&name).with_context(|| format!("cannot commit {path}"))?;
        let st = rfs::statat(dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
            .with_context(|| format!("stat {path}"))?;
        match st.st_mode & S_IFMT {
            S_IFDIR => {
                let fd = fsutil::open_dir_at(dir, &name)
                    .with_context(|| format!("opening directory {path}"))?;
                let (tree, meta) = self.write_dir(fd, &path)?;
                Ok(Item::Dir(DirEntry { name, tree, meta }))
            }
            S_IFREG => {
                self.files.fetch_add(1, Ordering::Relaxed);
                if let Some(file) = self.unchanged_file(dir, &name, &st, &path)? {
                    return Ok(Item::File(FileEntry { name, file }));
                }
                let file = self.write_regular(dir, &name, &path)?;
                Ok(Item::File(FileEntry { name, file }))
            }
            S_IFLNK => {
                self.symlinks.fetch_add(1, Ordering::Relaxed);
                let target = rfs::readlinkat(dir, name.as_slice(), Vec::new())
                    .with_context(|| format!("reading symlink {path}"))?
                    .into_bytes();
                let xattrs = fsutil::read_xattrs_at(dir, &name)
                    .with_context(|| format!("reading xattrs of {path}"))?;
                let meta = fsutil::meta_from_stat(&st, xattrs);
                let file = self
                    .txn
                    .write_symlink(&target, &meta)
                    .with_context(|| format!("storing {path}"))?;
                Ok(Item::File(FileEntry { name, file }))
            }
            fmt => {
                if self.skip_special {
                    self.skipped.lock().unwrap().push(path);
                    return Ok(Item::Skipped);
                }
                bail!(
                    "{path} is a {}; arbor commits only regular files, symlinks and directories \
                     (use --skip-special to leave such files out)",
                    special_kind(fmt)
                )
            }
        }
    }

    /// The fast path of a re-commit: when the inode cache knows this (device, inode,
    /// mtime, size) and the resulting object is stored, the file is not even opened.
    /// With an unchanged ctime too, the cached object id stands for mode, owner and
    /// xattrs as well, and not even the xattrs are read.
    fn unchanged_file(
        &self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        st: &rfs::Stat,
        path: &str,
    ) -> Result<Option<ObjectId>> {
        let (size, mtime, ctime) = (st.st_size as u64, mtime_ns(st), ctime_ns(st));
        if let Some(id) = self
            .cache
            .lookup_object(st.st_dev, st.st_ino, mtime, ctime, size)
            .map(ObjectId)
            .filter(|id| self.txn.is_present(id, ObjectKind::File))
        {
            self.from_cache.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(id));
        }
        let Some(content) = self.cache.lookup(st.st_dev, st.st_ino, mtime, size) else {
            return Ok(None);
        };
        let xattrs = fsutil::read_xattrs_at(dir, name)
            .with_context(|| format!("reading xattrs of {path}"))?;
        let meta = fsutil::meta_from_stat(st, xattrs);
        let id = FileHeader {
            meta,
            body: FileBody::Regular { size, content },
        }
        .id();
        if !self.txn.is_present(&id, ObjectKind::File) {
            return Ok(None);
        }
        self.from_cache.fetch_add(1, Ordering::Relaxed);
        if self.object_cacheable(st) {
            self.new_rows.push(InodeEntry {
                dev: st.st_dev,
                ino: st.st_ino,
                mtime_ns: mtime,
                size,
                cached: Cached::Object {
                    ctime_ns: ctime,
                    id: id.0,
                },
            });
        }
        Ok(Some(id))
    }

    /// Whether a file's object id may be cached against its ctime: not when ctime is
    /// too recent to vouch for it, and not for a file with several links (a store
    /// object in a hardlinked checkout), whose ctime moves with every link made or
    /// removed; its content digest is cached instead.
    fn object_cacheable(&self, st: &rfs::Stat) -> bool {
        ctime_ns(st) < self.racy_after_ns && st.st_nlink == 1
    }

    fn write_regular(&self, dir: BorrowedFd<'_>, name: &[u8], path: &str) -> Result<ObjectId> {
        let file = open_for_reading(dir, name).with_context(|| format!("opening {path}"))?;
        // fstat the open file, not the name: this is the inode whose bytes we read.
        let st = rfs::fstat(&file).with_context(|| format!("stat {path}"))?;
        if st.st_mode & S_IFMT != S_IFREG {
            bail!("{path} changed type while being committed");
        }
        let xattrs = fsutil::read_xattrs_fd(file.as_fd())
            .with_context(|| format!("reading xattrs of {path}"))?;
        let meta = fsutil::meta_from_stat(&st, xattrs);
        let (dev, ino, mtime, size) = (st.st_dev, st.st_ino, mtime_ns(&st), st.st_size as u64);
        let ctime = ctime_ns(&st);
        let w = self
            .txn
            .write_regular_file(&file, size, &meta)
            .with_context(|| format!("storing {path}"))?;
        self.hashed.fetch_add(1, Ordering::Relaxed);
        if let Some(p) = &self.progress {
            p.add_bytes(w.size);
        }
        if mtime < self.racy_after_ns && w.size == size {
            self.new_rows.push(InodeEntry {
                dev,
                ino,
                mtime_ns: mtime,
                size,
                cached: if self.object_cacheable(&st) {
                    Cached::Object {
                        ctime_ns: ctime,
                        id: w.id.0,
                    }
                } else {
                    Cached::Content(w.content)
                },
            });
        }
        if let Some((dev, ino)) = w.new_object_inode {
            self.new_rows.push(InodeEntry {
                dev,
                ino,
                mtime_ns: 0,
                size: w.size,
                cached: Cached::Content(w.content),
            });
        }
        Ok(w.id)
    }
}

/// Opens a file for reading without following a symlink and, where allowed, without
/// touching its atime (reading a whole OS tree should not write to it).
fn open_for_reading(dir: BorrowedFd<'_>, name: &[u8]) -> std::io::Result<File> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match rfs::openat(dir, name, flags | OFlags::NOATIME, Mode::empty()) {
        Err(rustix::io::Errno::PERM) => rfs::openat(dir, name, flags, Mode::empty())?,
        r => r?,
    };
    Ok(File::from(fd))
}

fn special_kind(fmt: u32) -> &'static str {
    match fmt {
        0o020000 => "character device",
        0o060000 => "block device",
        0o010000 => "fifo",
        0o140000 => "socket",
        _ if fmt == S_IFLNK => "symlink",
        _ => "special file",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn opts(branch: &str) -> CommitOptions {
        CommitOptions {
            branch: RefName::parse(branch).unwrap(),
            subject: "test".into(),
            body: String::new(),
            metadata: vec![],
            timestamp: 1_700_000_000,
            orphan: false,
            skip_special: false,
            use_cache: true,
            progress: None,
        }
    }

    fn small_tree(root: &Path) {
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::create_dir(root.join("empty")).unwrap();
        std::fs::write(root.join("usr/bin/tool"), b"#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(
            root.join("usr/bin/tool"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool2")).unwrap();
        symlink("tool", root.join("usr/bin/link")).unwrap();
        std::fs::write(root.join("big"), vec![7u8; (5 << 20) + 3]).unwrap();
    }

    #[test]
    fn same_tree_same_ids_and_cache_skips_rehash() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        small_tree(&src);
        let r1 = Repo::init(&t.path().join("r1")).unwrap();
        let r2 = Repo::init(&t.path().join("r2")).unwrap();
        let a = commit_tree(&r1, &src, &opts("x"), LockWait::NoWait).unwrap();
        let b = commit_tree(&r2, &src, &opts("x"), LockWait::NoWait).unwrap();
        assert_eq!(a.commit, b.commit);
        assert_eq!((a.stats.files, a.stats.symlinks), (3, 1));
        assert_eq!(a.stats.dirs, 4);
        // A second commit onto the branch has the first as parent and, the files being
        // recent (racy), rehashes them; nothing new is written either way.
        let c = commit_tree(&r1, &src, &opts("x"), LockWait::NoWait).unwrap();
        assert_eq!(c.parent, Some(a.commit));
        assert_eq!(c.root_tree, a.root_tree);
        assert_eq!(c.stats.objects_written, 1, "only the new commit object");
    }

    /// Commits `src` with a writer that trusts every timestamp (no racy window), the
    /// way a commit of an older tree runs.
    fn commit_trusting(repo: &Repo, src: &Path) -> CommitResult {
        let db_path = repo.state_db_path();
        let mut db = StateDb::open(&db_path).unwrap();
        let txn = Transaction::begin(repo, LockWait::NoWait).unwrap();
        let dev = rfs::stat(src).unwrap().st_dev;
        let cache = db.load_inode_cache(&[dev]).unwrap();
        let mut w = TreeWriter::new(&txn, &cache, false);
        w.racy_after_ns = i64::MAX;
        let (root_tree, root_meta) = w.write_dir(fsutil::open_dir(src).unwrap(), "").unwrap();
        let id = txn
            .write_meta(
                ObjectKind::Commit,
                &Commit {
                    root_tree,
                    root_meta,
                    parent: None,
                    timestamp: 0,
                    subject: String::new(),
                    body: String::new(),
                    metadata: Commit::new_metadata(vec![]),
                }
                .encode(),
            )
            .unwrap();
        let (stats, rows) = w.into_stats();
        txn.finish(&[]).unwrap();
        db.store_inode_cache(rows).unwrap();
        CommitResult {
            commit: id,
            branch: String::new(),
            root_tree,
            parent: None,
            stats,
        }
    }

    #[test]
    fn the_cached_object_stands_only_while_ctime_is_unchanged() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        small_tree(&src);
        let repo = Repo::init(&t.path().join("r")).unwrap();
        let first = commit_trusting(&repo, &src);
        assert_eq!(first.stats.files_hashed, 3);
        let again = commit_trusting(&repo, &src);
        assert_eq!(again.root_tree, first.root_tree);
        assert_eq!(
            (again.stats.files_hashed, again.stats.files_from_cache),
            (0, 3)
        );
        // A mode change keeps mtime and size but moves ctime: the cached object is
        // not used, and the new commit has the new mode.
        std::fs::set_permissions(src.join("big"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let changed = commit_trusting(&repo, &src);
        assert_ne!(changed.root_tree, first.root_tree);
        assert_eq!(changed.stats.files_hashed, 1);
        let fresh = Repo::init(&t.path().join("r2")).unwrap();
        let plain = commit_trusting(&fresh, &src);
        assert_eq!(plain.root_tree, changed.root_tree);
        assert!(crate::fsck::fsck(&repo, &[]).unwrap().is_clean());
    }

    #[test]
    fn special_files_fail_or_are_skipped() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        small_tree(&src);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            src.join("fifo"),
            rfs::FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let repo = Repo::init(&t.path().join("r")).unwrap();
        let err = commit_tree(&repo, &src, &opts("x"), LockWait::NoWait).unwrap_err();
        assert!(format!("{err:#}").contains("/fifo is a fifo"), "{err:#}");
        assert!(
            repo.read_ref(&RefName::parse("x").unwrap())
                .unwrap()
                .is_none()
        );
        let mut o = opts("x");
        o.skip_special = true;
        let r = commit_tree(&repo, &src, &o, LockWait::NoWait).unwrap();
        assert_eq!(r.stats.skipped_special, vec!["/fifo".to_string()]);
    }
}
