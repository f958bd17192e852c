//! Moving commits between arbor and real OSTree repositories, through libostree.
//!
//! Import reads an OSTree commit object by object (dirtrees, dirmetas, file streams
//! with their metadata and xattrs) and writes arbor objects; export checks the arbor
//! commit out (hardlinks) and lets libostree commit that tree, so `ostree fsck` and
//! `ostree checkout` judge our trees with OSTree's own code.

use arbor_store::encoding::DirMetaEncoding;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use gio::prelude::*;
use serde::Serialize;

use arbor_core::fsutil;
use arbor_core::lock::LockWait;
use arbor_store::checkout::TreeCheckout;
use arbor_store::encoding::{DirEntry, FileEntry, S_IFLNK, S_IFMT, S_IFREG, Xattrs};
use arbor_store::refs::RefName;
use arbor_store::{Commit, DirTree, Meta, ObjectId, ObjectKind, Repo, Transaction};

/// What an import brought in.
#[derive(Clone, Debug, Serialize)]
pub struct ImportResult {
    /// The OSTree commit read (SHA-256).
    pub ostree_commit: String,
    /// The arbor commit written.
    pub commit: ObjectId,
    /// The arbor branch now pointing at it.
    pub branch: String,
    /// Files and symlinks read from OSTree (each distinct object once).
    pub files: u64,
}

/// What an export wrote.
#[derive(Clone, Debug, Serialize)]
pub struct ExportResult {
    /// The arbor commit exported.
    pub commit: ObjectId,
    /// The OSTree commit written (SHA-256).
    pub ostree_commit: String,
    /// The OSTree ref now pointing at it.
    pub ostree_ref: String,
}

fn open_ostree(path: &Path) -> Result<ostree::Repo> {
    let repo = ostree::Repo::new_for_path(path);
    repo.open(gio::Cancellable::NONE)
        .with_context(|| format!("opening OSTree repository {}", path.display()))?;
    Ok(repo)
}

fn checksum_of(v: &glib::Variant, what: &str) -> Result<String> {
    let bytes = v.fixed_array::<u8>().map_err(|e| anyhow!("{what}: {e}"))?;
    if bytes.len() != 32 {
        bail!("{what}: checksum of {} bytes", bytes.len());
    }
    Ok(hex::encode(bytes))
}

/// `a(ayay)` xattrs as OSTree stores them (names carry their trailing NUL).
fn xattrs_of(v: &glib::Variant) -> Result<Xattrs> {
    let mut pairs = Vec::with_capacity(v.n_children());
    for i in 0..v.n_children() {
        let pair = v.child_value(i);
        let name = pair
            .child_value(0)
            .fixed_array::<u8>()
            .map_err(|e| anyhow!("xattr name: {e}"))?
            .to_vec();
        let value = pair
            .child_value(1)
            .fixed_array::<u8>()
            .map_err(|e| anyhow!("xattr value: {e}"))?
            .to_vec();
        let name = name.strip_suffix(b"\0").map(<[u8]>::to_vec).unwrap_or(name);
        pairs.push((name, value));
    }
    Ok(Xattrs::new(pairs))
}

struct Importer<'a, 't> {
    src: &'a ostree::Repo,
    txn: &'a Transaction<'t>,
    files: HashMap<String, ObjectId>,
    trees: HashMap<String, ObjectId>,
    metas: HashMap<String, ObjectId>,
}

impl Importer<'_, '_> {
    fn dirmeta(&mut self, csum: &str) -> Result<ObjectId> {
        if let Some(id) = self.metas.get(csum) {
            return Ok(*id);
        }
        let v = self.src.load_variant(ostree::ObjectType::DirMeta, csum)?;
        let (uid, gid, mode) = (
            u32::from_be(v.child_value(0).get::<u32>().context("dirmeta uid")?),
            u32::from_be(v.child_value(1).get::<u32>().context("dirmeta gid")?),
            u32::from_be(v.child_value(2).get::<u32>().context("dirmeta mode")?),
        );
        let meta = Meta {
            mode,
            uid,
            gid,
            xattrs: xattrs_of(&v.child_value(3))?,
        };
        // Decode our own encoding back: it refuses what arbor would refuse from disk.
        arbor_store::encoding::Meta::decode_dirmeta(&meta.encode_dirmeta())
            .map_err(|e| anyhow!("OSTree dirmeta {csum}: {e}"))?;
        let id = self
            .txn
            .write_meta(ObjectKind::DirMeta, &meta.encode_dirmeta())?;
        self.metas.insert(csum.to_string(), id);
        Ok(id)
    }

    fn file(&mut self, csum: &str, path: &str) -> Result<ObjectId> {
        if let Some(id) = self.files.get(csum) {
            return Ok(*id);
        }
        let (stream, info, xattrs) = self
            .src
            .load_file(csum, gio::Cancellable::NONE)
            .with_context(|| format!("reading OSTree file object {csum} ({path})"))?;
        let meta = Meta {
            mode: info.attribute_uint32("unix::mode"),
            uid: info.attribute_uint32("unix::uid"),
            gid: info.attribute_uint32("unix::gid"),
            xattrs: xattrs_of(&xattrs)?,
        };
        let id = match (meta.mode & S_IFMT, stream) {
            (S_IFLNK, _) => {
                let target = info
                    .symlink_target()
                    .with_context(|| format!("symlink {path} without target"))?;
                let meta = Meta {
                    mode: S_IFLNK | 0o777,
                    ..meta
                };
                self.txn
                    .write_symlink(target.as_os_str().as_encoded_bytes(), &meta)?
            }
            (S_IFREG, Some(stream)) => {
                let size = info.size() as u64;
                let w = self.txn.write_regular(stream.into_read(), size, &meta)?;
                if w.size != size {
                    bail!(
                        "OSTree file object {csum} ({path}) gave {} bytes, its header says {size}",
                        w.size
                    );
                }
                w.id
            }
            (fmt, _) => bail!(
                "{path}: OSTree object {csum} has unsupported mode {:o}",
                fmt
            ),
        };
        self.files.insert(csum.to_string(), id);
        Ok(id)
    }

    fn dirtree(&mut self, csum: &str, path: &str) -> Result<ObjectId> {
        if let Some(id) = self.trees.get(csum) {
            return Ok(*id);
        }
        let v = self.src.load_variant(ostree::ObjectType::DirTree, csum)?;
        let mut tree = DirTree::default();
        let files = v.child_value(0);
        for i in 0..files.n_children() {
            let e = files.child_value(i);
            let name = e
                .child_value(0)
                .str()
                .context("dirtree file name")?
                .to_string();
            let child = format!("{path}/{name}");
            let fcsum = checksum_of(&e.child_value(1), &child)?;
            let file = self.file(&fcsum, &child)?;
            tree.files.push(FileEntry {
                name: name.into_bytes(),
                file,
            });
        }
        let dirs = v.child_value(1);
        for i in 0..dirs.n_children() {
            let e = dirs.child_value(i);
            let name = e
                .child_value(0)
                .str()
                .context("dirtree directory name")?
                .to_string();
            let child = format!("{path}/{name}");
            let sub = checksum_of(&e.child_value(1), &child)?;
            let meta = checksum_of(&e.child_value(2), &child)?;
            let tree_id = self.dirtree(&sub, &child)?;
            let meta_id = self.dirmeta(&meta)?;
            tree.dirs.push(DirEntry {
                name: name.into_bytes(),
                tree: tree_id,
                meta: meta_id,
            });
        }
        tree.sort();
        // Names from OSTree pass through the same checks as any hostile dirtree.
        let bytes = tree.encode();
        DirTree::decode(&bytes).map_err(|e| anyhow!("OSTree dirtree {csum} ({path}/): {e}"))?;
        let id = self.txn.write_meta(ObjectKind::DirTree, &bytes)?;
        self.trees.insert(csum.to_string(), id);
        Ok(id)
    }
}

/// Imports the OSTree commit `rev` of the repository at `ostree_path` as a new arbor
/// commit on `branch` (no parent). Subject, body, timestamp and the string metadata
/// (except OSTree's own `ostree.*` keys) carry over, so importing an `ostree commit` of
/// a tree gives the same arbor commit as `arbor commit` of it with the same inputs.
pub fn import(
    repo: &Repo,
    ostree_path: &Path,
    rev: &str,
    branch: &RefName,
    wait: LockWait<'_>,
) -> Result<ImportResult> {
    let src = open_ostree(ostree_path)?;
    let csum = src
        .resolve_rev(rev, false)?
        .with_context(|| format!("no ref or commit '{rev}' in {}", ostree_path.display()))?
        .to_string();
    let (c, _) = src.load_commit(&csum)?;
    let txn = Transaction::begin(repo, wait)?;
    let mut imp = Importer {
        src: &src,
        txn: &txn,
        files: HashMap::new(),
        trees: HashMap::new(),
        metas: HashMap::new(),
    };
    let root_tree = imp.dirtree(&checksum_of(&c.child_value(6), "root dirtree")?, "")?;
    let root_meta = imp.dirmeta(&checksum_of(&c.child_value(7), "root dirmeta")?)?;
    let mut metadata = Vec::new();
    let md = c.child_value(0);
    for i in 0..md.n_children() {
        let entry = md.child_value(i);
        let key = entry.child_value(0).str().unwrap_or_default().to_string();
        let value = entry
            .child_value(1)
            .as_variant()
            .and_then(|v| v.str().map(str::to_string));
        if let (false, Some(value)) = (key.starts_with("ostree."), value) {
            metadata.push((key, value));
        }
    }
    let commit = Commit {
        root_tree,
        root_meta,
        parent: None,
        timestamp: u64::from_be(c.child_value(5).get::<u64>().context("commit timestamp")?) as i64,
        subject: c.child_value(3).str().unwrap_or_default().to_string(),
        body: c.child_value(4).str().unwrap_or_default().to_string(),
        metadata: Commit::new_metadata(metadata),
    };
    let id = txn.write_meta(ObjectKind::Commit, &commit.encode())?;
    let files = imp.files.len() as u64;
    txn.finish(&[(branch.clone(), Some(id))])?;
    Ok(ImportResult {
        ostree_commit: csum,
        commit: id,
        branch: branch.to_string(),
        files,
    })
}

/// Writes arbor commit `commit` into the OSTree repository at `ostree_path` on
/// `ostree_ref` (whose current commit becomes the parent), keeping subject, body,
/// timestamp and metadata (as strings).
pub fn export(
    repo: &Repo,
    commit: &ObjectId,
    ostree_path: &Path,
    ostree_ref: &str,
) -> Result<ExportResult> {
    let dest = open_ostree(ostree_path)?;
    let c = repo.load_commit(commit)?;
    // A hardlinked checkout beside the store (same filesystem), read by libostree.
    let tmp = arbor_store::scratch::ScratchDir::new(repo.path(), "export")?;
    let tmp_fd = fsutil::open_dir(tmp.path())?;
    TreeCheckout::new(repo, false).run(tmp_fd.as_fd(), b"root", &c.root_tree, &c.root_meta)?;
    let parent = dest.resolve_rev(ostree_ref, true)?.map(|p| p.to_string());
    dest.prepare_transaction(gio::Cancellable::NONE)?;
    let written = (|| -> Result<String> {
        let mtree = ostree::MutableTree::new();
        dest.write_dfd_to_mtree(
            tmp_fd.as_raw_fd(),
            "root",
            &mtree,
            None,
            gio::Cancellable::NONE,
        )?;
        let root = dest.write_mtree(&mtree, gio::Cancellable::NONE)?;
        let root = root
            .downcast::<ostree::RepoFile>()
            .map_err(|_| anyhow!("libostree returned no RepoFile"))?;
        let dict = glib::VariantDict::new(None);
        for (k, v) in &c.metadata {
            dict.insert_value(k, &v.to_variant());
        }
        let csum = dest.write_commit_with_time(
            parent.as_deref(),
            Some(&c.subject),
            Some(&c.body),
            Some(&dict.end()),
            &root,
            c.timestamp as u64,
            gio::Cancellable::NONE,
        )?;
        dest.transaction_set_ref(None, ostree_ref, Some(&csum));
        dest.commit_transaction(gio::Cancellable::NONE)?;
        Ok(csum.to_string())
    })();
    let ostree_commit = match written {
        Ok(c) => c,
        Err(e) => {
            let _ = dest.abort_transaction(gio::Cancellable::NONE);
            return Err(e.context(format!(
                "writing into OSTree repository {}",
                ostree_path.display()
            )));
        }
    };
    Ok(ExportResult {
        commit: *commit,
        ostree_commit,
        ostree_ref: ostree_ref.to_string(),
    })
}
