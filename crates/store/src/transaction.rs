//! Writing objects: one transaction under the repository's writer lock.
//!
//! Crash safety without an fsync per object: new objects are written, unsynced, into a
//! private staging folder `tmp/staging-…`. [`Transaction::finish`] then syncs them
//! (one `syncfs`, or an fsync each for a few objects), renames every staged object into
//! `objects/`, syncs again and only then writes refs. So an object in `objects/` always has durable content, a ref
//! never names an object that could vanish in a power cut, and a crash at any point
//! leaves nothing but garbage in `tmp/`, which the next writer removes.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use rayon::prelude::*;
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};

use super::encoding::{FileBody, FileHeader, Meta};
use super::refs::RefName;
use super::{ObjectId, ObjectKind, Repo, write_error};
use arbor_core::fsutil;
use arbor_core::lock::{LockError, LockWait, WriterLock};

/// Files up to this size are read whole, hashed, and written only when new; larger
/// ones are streamed into a temporary while hashing.
const SMALL_FILE: u64 = 1 << 20;
/// The buffer a larger file streams through (one per thread at a time: a commit's
/// memory stays small whatever the files).
const STREAM_BUFFER: usize = 256 << 10;

/// Up to this many new objects, publishing fsyncs each instead of syncing the filesystem.
const FEW_OBJECTS: usize = 64;

fn is_symlink_at(dir: &OwnedFd, name: &str) -> bool {
    rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| st.st_mode & 0o170000 == 0o120000)
}

/// A file object just stored (or found already stored).
#[derive(Clone, Copy, Debug)]
pub struct WrittenFile {
    /// The file object's id.
    pub id: ObjectId,
    /// BLAKE3 of the content.
    pub content: [u8; 32],
    /// Content size.
    pub size: u64,
    /// (device, inode) of the new object, when this call created it: its inode
    /// cache entry lets a later commit of a hardlinked checkout skip rehashing.
    pub new_object_inode: Option<(u64, u64)>,
}

/// Counters of what a transaction wrote.
#[derive(Debug, Default)]
pub struct TxnStats {
    /// Objects newly written.
    pub objects_written: AtomicU64,
    /// Bytes of file content newly written.
    pub bytes_written: AtomicU64,
}

/// The objects a transaction claimed (true once staged), in shards: fewer threads
/// wait on one lock, and growing one shard at a time never holds two copies of the
/// whole set (a commit of a large tree claims tens of thousands).
#[derive(Default)]
struct Claimed {
    shards: [Mutex<HashMap<(ObjectId, ObjectKind), bool>>; 16],
}

impl Claimed {
    fn shard(&self, id: &ObjectId) -> &Mutex<HashMap<(ObjectId, ObjectKind), bool>> {
        &self.shards[usize::from(id.0[0] & 15)]
    }
}

/// An open write transaction; dropping it unfinished discards everything staged.
pub struct Transaction<'r> {
    repo: &'r Repo,
    lock: WriterLock,
    staging_name: String,
    staging: OwnedFd,
    claimed: Claimed,
    tmp_counter: AtomicU64,
    stats: TxnStats,
    finished: bool,
}

impl<'r> Transaction<'r> {
    /// Takes the writer lock, clears what crashed writers left in `tmp/`, and opens a
    /// fresh staging folder.
    pub fn begin(repo: &'r Repo, wait: LockWait<'_>) -> Result<Self> {
        let lock =
            WriterLock::acquire(repo.root_fd(), repo.path(), "lock", wait).map_err(
                |e| match e {
                    LockError::Held(s) => anyhow::Error::new(s),
                    e => anyhow::Error::new(e),
                },
            )?;
        clean_tmp(repo)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let staging_name = format!("staging-{}-{}", std::process::id(), nanos.as_nanos());
        let tmp = fsutil::open_dir_at(repo.root_fd(), b"tmp").context("opening tmp/")?;
        rfs::mkdirat(&tmp, staging_name.as_str(), Mode::from_raw_mode(0o700)).map_err(|e| {
            write_error(e.into(), || {
                format!("creating {}/tmp/{staging_name}", repo.path().display())
            })
        })?;
        let staging = fsutil::open_dir_at(tmp.as_fd(), staging_name.as_bytes())?;
        Ok(Transaction {
            repo,
            lock,
            staging_name,
            staging,
            claimed: Claimed::default(),
            tmp_counter: AtomicU64::new(0),
            stats: TxnStats::default(),
            finished: false,
        })
    }

    /// The repository being written.
    pub fn repo(&self) -> &'r Repo {
        self.repo
    }

    /// The writer lock this transaction holds.
    pub fn lock(&self) -> &WriterLock {
        &self.lock
    }

    /// What was written so far.
    pub fn stats(&self) -> &TxnStats {
        &self.stats
    }

    /// True when the object is stored or already being written by this transaction.
    pub fn is_present(&self, id: &ObjectId, kind: ObjectKind) -> bool {
        self.claimed
            .shard(id)
            .lock()
            .unwrap()
            .contains_key(&(*id, kind))
            || self.repo.has_object(id, kind)
    }

    /// True when the caller should write this object: it is neither stored nor
    /// claimed by another thread of this transaction. Claims it.
    fn claim(&self, id: &ObjectId, kind: ObjectKind) -> bool {
        let mut shard = self.claimed.shard(id).lock().unwrap();
        match shard.entry((*id, kind)) {
            // Claimed before (and perhaps staged since: leave its flag alone).
            std::collections::hash_map::Entry::Occupied(_) => return false,
            std::collections::hash_map::Entry::Vacant(v) => v.insert(false),
        };
        drop(shard);
        !self.repo.has_object(id, kind)
    }

    fn staged_name(id: &ObjectId, kind: ObjectKind) -> String {
        format!("{id}.{}", kind.extension())
    }

    fn create_staged(&self, name: &str) -> io::Result<File> {
        let fd = rfs::openat(
            &self.staging,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        Ok(File::from(fd))
    }

    fn io_context(&self, e: io::Error) -> anyhow::Error {
        write_error(e, || {
            format!("writing objects into {}/tmp", self.repo.path().display())
        })
    }

    fn mark_staged(&self, id: ObjectId, kind: ObjectKind, bytes: u64) {
        self.claimed
            .shard(&id)
            .lock()
            .unwrap()
            .insert((id, kind), true);
        self.stats.objects_written.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes_written.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Stores a dirtree, dirmeta or commit encoding; returns its id.
    pub fn write_meta(&self, kind: ObjectKind, bytes: &[u8]) -> Result<ObjectId> {
        let id = ObjectId::of(bytes);
        if self.claim(&id, kind) {
            let mut f = self
                .create_staged(&Self::staged_name(&id, kind))
                .map_err(|e| self.io_context(e))?;
            f.write_all(bytes).map_err(|e| self.io_context(e))?;
            rfs::fchmod(&f, Mode::from_raw_mode(0o644))?;
            self.mark_staged(id, kind, 0);
        }
        Ok(id)
    }

    /// Stores a symlink with its owner and xattrs.
    pub fn write_symlink(&self, target: &[u8], meta: &Meta) -> Result<ObjectId> {
        let header = FileHeader {
            meta: meta.clone(),
            body: FileBody::Symlink {
                target: target.to_vec(),
            },
        };
        let id = header.id();
        if self.claim(&id, ObjectKind::File) {
            let name = Self::staged_name(&id, ObjectKind::File);
            rfs::symlinkat(target, &self.staging, name.as_str())
                .map_err(|e| self.io_context(e.into()))?;
            fsutil::apply_meta_symlink_at(self.staging.as_fd(), name.as_bytes(), meta)
                .map_err(|e| self.io_context(e))?;
            fsutil::zero_times_at(self.staging.as_fd(), name.as_bytes())?;
            self.mark_staged(id, ObjectKind::File, 0);
        }
        Ok(id)
    }

    /// Stores a regular file read from `src` with metadata `meta`, hashing while it
    /// reads. Returns what it stored; the content is whatever `src` yielded, so the id
    /// always matches the bytes written.
    pub fn write_regular<R: Read>(
        &self,
        mut src: R,
        size_hint: u64,
        meta: &Meta,
    ) -> Result<WrittenFile> {
        if size_hint > SMALL_FILE {
            return self.write_regular_streaming(src, meta);
        }
        let mut buf = Vec::with_capacity(size_hint as usize + 1);
        src.read_to_end(&mut buf)?;
        let content = *blake3::hash(&buf).as_bytes();
        let header = FileHeader {
            meta: meta.clone(),
            body: FileBody::Regular {
                size: buf.len() as u64,
                content,
            },
        };
        let id = header.id();
        let mut written = WrittenFile {
            id,
            content,
            size: buf.len() as u64,
            new_object_inode: None,
        };
        if self.claim(&id, ObjectKind::File) {
            let name = Self::staged_name(&id, ObjectKind::File);
            let mut f = self.create_staged(&name).map_err(|e| self.io_context(e))?;
            f.write_all(&buf).map_err(|e| self.io_context(e))?;
            written.new_object_inode = Some(self.seal_regular(&f, meta)?);
            self.mark_staged(id, ObjectKind::File, buf.len() as u64);
        }
        Ok(written)
    }

    /// Stores a regular file from an open file. A large file is hashed first (one
    /// read pass), so that an object already stored costs neither a write nor disk
    /// space; only a new one is read again while being written, and must hash the same.
    pub fn write_regular_file(
        &self,
        file: &File,
        size_hint: u64,
        meta: &Meta,
    ) -> Result<WrittenFile> {
        if size_hint <= SMALL_FILE {
            return self.write_regular(file, size_hint, meta);
        }
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; STREAM_BUFFER];
        let mut size = 0u64;
        loop {
            let n = std::os::unix::fs::FileExt::read_at(file, &mut buf, size)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        let content = *hasher.finalize().as_bytes();
        let id = FileHeader {
            meta: meta.clone(),
            body: FileBody::Regular { size, content },
        }
        .id();
        if self.is_present(&id, ObjectKind::File) {
            return Ok(WrittenFile {
                id,
                content,
                size,
                new_object_inode: None,
            });
        }
        // The file offset is still 0: read_at does not move it.
        let written = self.write_regular_streaming(file, meta)?;
        if written.id != id {
            anyhow::bail!("the file changed while being committed; commit again");
        }
        Ok(written)
    }

    fn write_regular_streaming<R: Read>(&self, mut src: R, meta: &Meta) -> Result<WrittenFile> {
        let tmp = format!("tmp-{}", self.tmp_counter.fetch_add(1, Ordering::Relaxed));
        let mut f = self.create_staged(&tmp).map_err(|e| self.io_context(e))?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; STREAM_BUFFER];
        let mut size = 0u64;
        loop {
            let n = src.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            f.write_all(&buf[..n]).map_err(|e| self.io_context(e))?;
            size += n as u64;
        }
        let content = *hasher.finalize().as_bytes();
        let header = FileHeader {
            meta: meta.clone(),
            body: FileBody::Regular { size, content },
        };
        let id = header.id();
        let mut written = WrittenFile {
            id,
            content,
            size,
            new_object_inode: None,
        };
        if self.claim(&id, ObjectKind::File) {
            written.new_object_inode = Some(self.seal_regular(&f, meta)?);
            let name = Self::staged_name(&id, ObjectKind::File);
            rfs::renameat(&self.staging, tmp.as_str(), &self.staging, name.as_str())?;
            self.mark_staged(id, ObjectKind::File, size);
        } else {
            rfs::unlinkat(&self.staging, tmp.as_str(), AtFlags::empty())?;
        }
        Ok(written)
    }

    /// Hardlinks the stored (or staged) file object `id` as `name` in `dir`: how an
    /// image import lays out its tree from the objects it just wrote, so the tree's
    /// files are the objects themselves. Nothing may ever write through such a link.
    pub fn link_file(&self, id: &ObjectId, dir: BorrowedFd<'_>, name: &[u8]) -> Result<()> {
        let staged = Self::staged_name(id, ObjectKind::File);
        match rfs::linkat(&self.staging, staged.as_str(), dir, name, AtFlags::empty()) {
            Err(rustix::io::Errno::NOENT) => rfs::linkat(
                self.repo.objects_fd(),
                id.relative_path(ObjectKind::File),
                dir,
                name,
                AtFlags::empty(),
            )
            .with_context(|| format!("linking object {id}")),
            r => r.with_context(|| format!("linking object {id}")),
        }
    }

    /// Final owner, mode, xattrs and mtime 0 on a new file object; returns its inode.
    fn seal_regular(&self, f: &File, meta: &Meta) -> Result<(u64, u64)> {
        fsutil::apply_meta_fd(f.as_fd(), meta).map_err(|e| self.io_context(e))?;
        let zero = rfs::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        rfs::futimens(
            f,
            &rfs::Timestamps {
                last_access: zero,
                last_modification: zero,
            },
        )?;
        let st = rfs::fstat(f)?;
        let _ = arbor_core::sys::start_writeback(f.as_fd());
        Ok((st.st_dev, st.st_ino))
    }

    /// Makes everything staged durable and visible, then points `refs` at their
    /// commits (or deletes them for `None`). See the module comment for the order.
    pub fn finish(mut self, refs: &[(RefName, Option<ObjectId>)]) -> Result<()> {
        let staged = self.stats.objects_written.load(Ordering::Relaxed);
        if staged > 0 {
            let t = std::time::Instant::now();
            self.publish(staged as usize)?;
            tracing::debug!("published {staged} objects in {:?}", t.elapsed());
        }
        arbor_core::failpoint::hit("store-objects-written")?;
        for (r, id) in refs {
            self.repo.write_ref(&self.lock, r, id.as_ref())?;
            arbor_core::failpoint::hit("store-ref-moved")?;
        }
        self.finished = true;
        self.remove_staging();
        Ok(())
    }

    /// Syncs the staged objects, renames them into `objects/` and syncs the renames.
    /// A few objects get an fsync each; many get one `syncfs`, which is far cheaper
    /// than thousands of fsyncs but costs as much as whatever else is dirty on the
    /// filesystem, so a small transaction does not pay it.
    fn publish(&self, count: usize) -> Result<()> {
        let shards: Vec<_> = self
            .claimed
            .shards
            .iter()
            .map(|s| std::mem::take(&mut *s.lock().unwrap()))
            .collect();
        // Walked in place: a commit of a large tree stages tens of thousands.
        let staged = || {
            shards
                .iter()
                .flat_map(|s| s.iter().filter(|(_, staged)| **staged).map(|(k, _)| k))
        };
        let few = count <= FEW_OBJECTS;
        if few {
            for (id, kind) in staged() {
                let name = Self::staged_name(id, *kind);
                if *kind == ObjectKind::File && is_symlink_at(&self.staging, &name) {
                    continue; // a symlink's target is written with its directory entry
                }
                let fd = rfs::openat(
                    &self.staging,
                    name.as_str(),
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                rfs::fsync(&fd).map_err(|e| self.io_context(e.into()))?;
            }
            rfs::fsync(&self.staging).map_err(|e| self.io_context(e.into()))?;
        } else {
            fsutil::sync_filesystem(&self.staging).map_err(|e| self.io_context(e))?;
        }
        let objects = self.repo.objects_fd();
        shards.par_iter().try_for_each(|shard| {
            shard
                .par_iter()
                .filter(|(_, staged)| **staged)
                .try_for_each(|((id, kind), _)| {
                    rfs::renameat(
                        &self.staging,
                        Self::staged_name(id, *kind),
                        objects,
                        id.relative_path(*kind),
                    )
                    .with_context(|| format!("publishing object {id} ({kind})"))
                })
        })?;
        if few {
            let dirs: HashSet<u8> = staged().map(|(id, _)| id.0[0]).collect();
            for d in dirs {
                let fd = fsutil::open_dir_at(objects, format!("{d:02x}").as_bytes())?;
                rfs::fsync(&fd).context("syncing the repository")?;
            }
        } else {
            fsutil::sync_filesystem(objects).context("syncing the repository")?;
        }
        Ok(())
    }

    fn remove_staging(&self) {
        let path = self.repo.path().join("tmp").join(&self.staging_name);
        let _ = std::fs::remove_dir_all(path);
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.remove_staging();
        }
    }
}

/// Removes everything in `tmp/`: under the writer lock, all of it belongs to writers
/// that died. `remove_dir_all` does not follow symlinks.
pub(crate) fn clean_tmp(repo: &Repo) -> Result<()> {
    let tmp = repo.path().join("tmp");
    let dir = fsutil::open_dir(&tmp).with_context(|| format!("opening {}", tmp.display()))?;
    for (name, ft) in fsutil::list_dir(dir.as_fd())? {
        let p = tmp.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&name));
        let r = if ft == rfs::FileType::Directory {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.with_context(|| format!("removing leftover {}", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_claimed_again_after_staging_is_still_published() {
        let t = tempfile::tempdir().unwrap();
        let repo = Repo::init(&t.path().join("r")).unwrap();
        let txn = Transaction::begin(&repo, LockWait::NoWait).unwrap();
        let a = txn.write_meta(ObjectKind::DirMeta, b"one").unwrap();
        // The second write finds it claimed and staged; that must not unmark it.
        assert_eq!(txn.write_meta(ObjectKind::DirMeta, b"one").unwrap(), a);
        assert!(txn.is_present(&a, ObjectKind::DirMeta));
        txn.finish(&[]).unwrap();
        assert!(repo.has_object(&a, ObjectKind::DirMeta));
    }
}
