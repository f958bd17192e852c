//! A read-only FUSE filesystem showing one commit, served straight from the objects.
//!
//! The whole tree's shape is read once at mount (dirtrees, plus an lstat of each file
//! object), so every inode number is fixed for the mount's life. Like a hardlinked
//! checkout, all paths of one file object share one inode (and its link count).
//! Content is read from the object files; everything is immutable, so the kernel may
//! cache attributes, entries and pages for as long as it likes.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    MountOption, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use rayon::prelude::*;

use crate::encoding::{S_IFLNK, S_IFMT, Xattrs};
use crate::{ObjectId, Repo};

/// How long the kernel may cache what we answer: the tree never changes.
const TTL: Duration = Duration::from_secs(3600);

enum NodeKind {
    Dir {
        parent: u64,
        entries: Vec<(Vec<u8>, u64)>,
    },
    File {
        object: ObjectId,
    },
    Symlink {
        target: Vec<u8>,
    },
}

struct Node {
    attr: FileAttr,
    xattrs: Xattrs,
    kind: NodeKind,
}

/// The filesystem: the repository, the tree's nodes indexed by inode - 1, and the
/// open object files by handle.
pub struct CommitFs {
    repo: Repo,
    nodes: Vec<Node>,
    handles: Mutex<HashMap<u64, Arc<File>>>,
    next_handle: AtomicU64,
}

fn attr(ino: u64, kind: FileType, mode: u32, uid: u32, gid: u32, size: u64) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind,
        perm: (mode & 0o7777) as u16,
        nlink: 1,
        uid,
        gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl CommitFs {
    /// Reads the shape of `commit` from `repo`.
    pub fn new(repo: Repo, commit: &ObjectId) -> Result<Self> {
        let c = repo.load_commit(commit)?;
        let mut fs = CommitFs {
            repo,
            nodes: Vec::new(),
            handles: Mutex::default(),
            next_handle: AtomicU64::new(1),
        };
        let mut files: HashMap<ObjectId, u64> = HashMap::new();
        fs.add_dir(&c.root_tree, &c.root_meta, 1, "", &mut files)?;
        // Metadata of every distinct file object, read in parallel.
        let infos: Vec<(u64, crate::FileInfo)> = files
            .par_iter()
            .map(|(id, ino)| {
                fs.repo
                    .file_info(id)
                    .map(|i| (*ino, i))
                    .with_context(|| format!("reading object {id}"))
            })
            .collect::<Result<_>>()?;
        for (ino, info) in infos {
            let node = &mut fs.nodes[ino as usize - 1];
            let nlink = node.attr.nlink;
            let kind = if info.meta.mode & S_IFMT == S_IFLNK {
                FileType::Symlink
            } else {
                FileType::RegularFile
            };
            node.attr = attr(
                ino,
                kind,
                info.meta.mode,
                info.meta.uid,
                info.meta.gid,
                info.size,
            );
            node.attr.nlink = nlink;
            node.xattrs = info.meta.xattrs;
            if let Some(target) = info.target {
                node.kind = NodeKind::Symlink { target };
            }
        }
        Ok(fs)
    }

    fn add_dir(
        &mut self,
        tree: &ObjectId,
        meta: &ObjectId,
        parent: u64,
        path: &str,
        files: &mut HashMap<ObjectId, u64>,
    ) -> Result<u64> {
        let shown = if path.is_empty() { "/" } else { path };
        let m = self
            .repo
            .load_dirmeta(meta)
            .with_context(|| format!("reading {shown}"))?;
        let t = self
            .repo
            .load_dirtree(tree)
            .with_context(|| format!("reading {shown}"))?;
        let ino = self.nodes.len() as u64 + 1;
        let mut dir_attr = attr(ino, FileType::Directory, m.mode, m.uid, m.gid, 0);
        dir_attr.nlink = 2 + t.dirs.len() as u32;
        let parent = if parent == 0 { ino } else { parent };
        self.nodes.push(Node {
            attr: dir_attr,
            xattrs: m.xattrs,
            kind: NodeKind::Dir {
                parent,
                entries: Vec::new(),
            },
        });
        let mut entries = Vec::with_capacity(t.files.len() + t.dirs.len());
        for f in &t.files {
            let child = match files.get(&f.file) {
                Some(&existing) => {
                    self.nodes[existing as usize - 1].attr.nlink += 1;
                    existing
                }
                None => {
                    let child = self.nodes.len() as u64 + 1;
                    let placeholder = attr(child, FileType::RegularFile, 0, 0, 0, 0);
                    self.nodes.push(Node {
                        attr: placeholder,
                        xattrs: Xattrs::default(),
                        kind: NodeKind::File { object: f.file },
                    });
                    files.insert(f.file, child);
                    child
                }
            };
            entries.push((f.name.clone(), child));
        }
        for d in &t.dirs {
            let sub = format!("{path}/{}", String::from_utf8_lossy(&d.name));
            let child = self.add_dir(&d.tree, &d.meta, ino, &sub, files)?;
            entries.push((d.name.clone(), child));
        }
        entries.sort();
        self.nodes[ino as usize - 1].kind = NodeKind::Dir { parent, entries };
        Ok(ino)
    }

    fn node(&self, ino: INodeNo) -> Result<&Node, Errno> {
        self.nodes
            .get((ino.0 as usize).wrapping_sub(1))
            .ok_or(Errno::ENOENT)
    }

    /// Number of inodes (directories plus distinct file objects).
    pub fn inode_count(&self) -> usize {
        self.nodes.len()
    }
}

fn reply_xattr(reply: ReplyXattr, data: &[u8], size: u32) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

impl Filesystem for CommitFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = self.node(parent).and_then(|n| match &n.kind {
            NodeKind::Dir { entries, .. } => entries
                .binary_search_by(|(n, _)| n.as_slice().cmp(name.as_bytes()))
                .map(|i| entries[i].1)
                .map_err(|_| Errno::ENOENT),
            _ => Err(Errno::ENOTDIR),
        });
        match found.and_then(|ino| self.node(INodeNo(ino))) {
            Ok(n) => reply.entry(&TTL, &n.attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Ok(n) => reply.attr(&TTL, &n.attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino).map(|n| &n.kind) {
            Ok(NodeKind::Symlink { target }) => reply.data(target),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let object = match self.node(ino).map(|n| &n.kind) {
            Ok(NodeKind::File { object }) => *object,
            Ok(_) => return reply.error(Errno::EISDIR),
            Err(e) => return reply.error(e),
        };
        match self.repo.open_file_object(&object) {
            Ok(f) => {
                let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
                self.handles.lock().unwrap().insert(fh, Arc::new(f));
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
            }
            Err(e) => {
                tracing::error!("opening object {object}: {e}");
                reply.error(Errno::EIO);
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(file) = self.handles.lock().unwrap().get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return reply.error(Errno::EIO),
            }
        }
        reply.data(&buf[..done]);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles.lock().unwrap().remove(&fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let (parent, entries) = match self.node(ino).map(|n| &n.kind) {
            Ok(NodeKind::Dir { parent, entries }) => (*parent, entries),
            Ok(_) => return reply.error(Errno::ENOTDIR),
            Err(e) => return reply.error(e),
        };
        let dots = [(&b"."[..], ino.0), (&b".."[..], parent)];
        let all = dots
            .into_iter()
            .chain(entries.iter().map(|(n, i)| (n.as_slice(), *i)));
        for (i, (name, child)) in all.enumerate().skip(offset as usize) {
            let kind = self.nodes[child as usize - 1].attr.kind;
            if reply.add(INodeNo(child), i as u64 + 1, kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, self.nodes.len() as u64, 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.node(ino) {
            Ok(n) => match n
                .xattrs
                .pairs()
                .iter()
                .find(|(k, _)| k.as_slice() == name.as_bytes())
            {
                Some((_, v)) => reply_xattr(reply, v, size),
                None => reply.error(Errno::ENODATA),
            },
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.node(ino) {
            Ok(n) => {
                let mut names = Vec::new();
                for (k, _) in n.xattrs.pairs() {
                    names.extend_from_slice(k);
                    names.push(0);
                }
                reply_xattr(reply, &names, size);
            }
            Err(e) => reply.error(e),
        }
    }
}

/// Mounts `commit` read-only at `mountpoint` and serves it until the filesystem is
/// unmounted (`umount`, or SIGINT/SIGTERM, which unmount it). `ready` is called once
/// the tree is read and the mount is about to be made.
pub fn serve(
    repo: Repo,
    commit: &ObjectId,
    mountpoint: &Path,
    ready: impl FnOnce(&CommitFs),
) -> Result<()> {
    // A long-running server: a write to a pipe or socket whose reader is gone (the
    // fusermount helper's socket at unmount, a closed stderr) must be an error it
    // can ignore, not the default SIGPIPE that `arbor` sets for `arbor … | head`.
    arbor_core::sys::ignore_sigpipe();
    let fs = CommitFs::new(repo, commit)?;
    ready(&fs);
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(format!("arbor:{}", commit.short())),
        MountOption::Subtype("arbor".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoAtime,
    ];
    // Other users may look (the kernel enforces the tree's own modes).
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
    );
    let target = mountpoint.to_path_buf();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    let handle = signals.handle();
    let watcher = std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            // Unmounting ends the session loop below, which then returns normally.
            let _ = rustix::mount::unmount(&target, rustix::mount::UnmountFlags::DETACH);
        }
    });
    let result = fuser::mount(fs, mountpoint, &config)
        .with_context(|| format!("mounting on {}", mountpoint.display()));
    handle.close();
    let _ = watcher.join();
    result
}
