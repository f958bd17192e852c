//! Static deltas: one file that turns a repository holding commit FROM into one also
//! holding commit TO (docs/delta.md).
//!
//! A delta carries every object TO reaches and FROM does not. A regular file that
//! replaces a file at the same path in FROM is compressed with zstd against the old
//! content, used as a prefix, which is zstd's "patch from" mode. Everything else is
//! compressed on its own, and each object gets whichever encoding is smaller.
//! Applying a delta checks every object against its id as it is written, then checks
//! that TO is complete. A delta from outside is hostile: every length is bounded,
//! and nothing is trusted that a hash does not confirm.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use rayon::prelude::*;
use serde::Serialize;
use zstd::zstd_safe::{CCtx, CParameter, DCtx, DParameter};

use crate::fsutil;
use crate::lock::LockWait;
use crate::store::encoding::{Commit, DirTree};
use crate::store::refs::RefName;
use crate::store::transaction::Transaction;
use crate::store::{ObjectId, ObjectKind, Repo};
use crate::store::{reach, wire};

const MAGIC: &[u8; 12] = b"ARBORDELTA\0\x01";
/// Level for objects compressed on their own.
const FULL_LEVEL: i32 = 15;
/// Level for files compressed against their previous version.
const PATCH_LEVEL: i32 = 19;
/// Executables larger than this are diffed with bsdiff.
const BSDIFF_FROM: usize = 256 << 10;
/// The largest object a delta may carry (decompressed).
const MAX_OBJECT: u64 = 4 << 30;
/// The largest metadata block of a record.
const MAX_META: u32 = 1 << 20;

/// How an object is stored in a delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    /// zstd on its own.
    Full = 0,
    /// zstd with the base object as prefix ("patch from").
    Patch = 1,
    /// bsdiff against the base object (BSDIFF40, bzip2 inside), which follows the
    /// shifted addresses of a rebuilt executable far better.
    Bsdiff = 2,
}

/// One object of a delta, compressed.
struct Record {
    kind: ObjectKind,
    id: ObjectId,
    base: Option<(ObjectId, Encoding)>,
    meta: Vec<u8>,
    raw_len: u64,
    data: Vec<u8>,
}

/// Sizes of a delta against a full fetch of the same objects.
#[derive(Clone, Debug, Serialize)]
pub struct DeltaStats {
    /// The commit the receiver has.
    pub from: ObjectId,
    /// The commit it gets.
    pub to: ObjectId,
    /// Objects TO has and FROM lacks.
    pub objects: u64,
    /// Their size uncompressed.
    pub raw_bytes: u64,
    /// Their size compressed one by one (what a full fetch transfers).
    pub full_bytes: u64,
    /// The delta's size.
    pub delta_bytes: u64,
    /// Files sent as a patch against their previous version.
    pub patched: u64,
}

impl DeltaStats {
    /// 1 − delta / full, in percent.
    pub fn reduction_percent(&self) -> f64 {
        if self.full_bytes == 0 {
            return 0.0;
        }
        100.0 * (1.0 - self.delta_bytes as f64 / self.full_bytes as f64)
    }
}

pub(crate) fn compress(data: &[u8], level: i32, prefix: Option<&[u8]>) -> Result<Vec<u8>> {
    let mut cctx = CCtx::create();
    let window = |n: usize| (usize::BITS - n.max(1 << 10).leading_zeros()).clamp(10, 30);
    let span = data.len() + prefix.map_or(0, <[u8]>::len);
    let set = |c: &mut CCtx, p| c.set_parameter(p).map_err(|e| anyhow::anyhow!("zstd: {e}"));
    set(&mut cctx, CParameter::CompressionLevel(level))?;
    set(&mut cctx, CParameter::WindowLog(window(span)))?;
    set(&mut cctx, CParameter::EnableLongDistanceMatching(true))?;
    if let Some(p) = prefix {
        cctx.ref_prefix(p)
            .map_err(|e| anyhow::anyhow!("zstd prefix: {e}"))?;
    }
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
    cctx.compress2(&mut out, data)
        .map_err(|e| anyhow::anyhow!("zstd: {e}"))?;
    Ok(out)
}

/// The most zstd can expand: a block of at most 128 KiB costs a few bytes at least
/// (an RLE block, or one long match), so no honest frame grows past this ratio. Checked
/// before the output is allocated, so a hostile size costs nothing.
const MAX_ZSTD_RATIO: u64 = 1 << 16;

/// Decompresses one zstd frame that must give exactly `raw_len` bytes.
pub(crate) fn decompress(data: &[u8], raw_len: u64, prefix: Option<&[u8]>) -> Result<Vec<u8>> {
    ensure!(
        raw_len <= MAX_OBJECT,
        "an object of {raw_len} bytes, more than arbor accepts"
    );
    ensure!(
        raw_len <= (data.len() as u64).saturating_mul(MAX_ZSTD_RATIO),
        "{} compressed bytes cannot make {raw_len}",
        data.len()
    );
    let mut dctx = DCtx::create();
    dctx.set_parameter(DParameter::WindowLogMax(31))
        .map_err(|e| anyhow::anyhow!("zstd: {e}"))?;
    if let Some(p) = prefix {
        dctx.ref_prefix(p)
            .map_err(|e| anyhow::anyhow!("zstd prefix: {e}"))?;
    }
    let mut out = Vec::with_capacity(raw_len as usize);
    let n = dctx
        .decompress(&mut out, data)
        .map_err(|e| anyhow::anyhow!("zstd: a corrupt record ({e})"))?;
    ensure!(
        n as u64 == raw_len,
        "a record decompresses to {n} bytes, not {raw_len}"
    );
    Ok(out)
}

/// Regular file and directory ids by path, for finding each new object's previous
/// version.
fn objects_by_path(repo: &Repo, commit: &ObjectId) -> Result<HashMap<(String, char), ObjectId>> {
    let mut out = HashMap::new();
    for e in crate::inspect::list(repo, commit, "/", true)? {
        let t = e.type_char();
        if t == '-' || t == 'd' {
            out.insert((e.path.clone(), t), e.object);
        }
    }
    if let Ok(c) = repo.load_commit(commit) {
        out.insert(("/".to_string(), 'd'), c.root_tree);
    }
    Ok(out)
}

/// The bytes of a base object (a file's content, a dirtree's encoding).
fn base_bytes(repo: &Repo, id: &ObjectId, kind: ObjectKind) -> Result<Vec<u8>> {
    match kind {
        ObjectKind::File => read_all(repo, id),
        _ => Ok(repo.read_meta_object(id, kind)?),
    }
}

fn bsdiff(old: &[u8], new: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    // One thread per file: the files themselves are diffed in parallel.
    qbsdiff::Bsdiff::new(old, new)
        .parallel_scheme(qbsdiff::ParallelScheme::Never)
        .compression_level(9)
        .compare(std::io::Cursor::new(&mut out))?;
    Ok(out)
}

/// A writer that refuses to grow past a limit: a hostile patch cannot make apply
/// allocate more than the object's declared size.
struct Bounded(Vec<u8>, usize);

impl Write for Bounded {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + b.len() > self.1 {
            return Err(std::io::Error::other(
                "the patch makes a larger object than declared",
            ));
        }
        self.0.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn read_all(repo: &Repo, id: &ObjectId) -> Result<Vec<u8>> {
    let mut v = Vec::new();
    repo.open_file_object(id)?.read_to_end(&mut v)?;
    Ok(v)
}

fn record_for(
    repo: &Repo,
    id: ObjectId,
    kind: ObjectKind,
    base: Option<ObjectId>,
    measure_full: bool,
) -> Result<(Record, u64)> {
    let wire::Parts {
        header: meta,
        payload,
    } = wire::parts(repo, &id, kind)?;
    let mut rec = Record {
        kind,
        id,
        base: None,
        meta,
        raw_len: payload.len() as u64,
        data: Vec::new(),
    };
    let mut full_len = 0;
    if base.is_none() || measure_full {
        rec.data = compress(&payload, FULL_LEVEL, None)?;
        full_len = rec.data.len() as u64;
    }
    if let Some(b) = base {
        let old = base_bytes(repo, &b, kind)?;
        let mut consider = |data: Vec<u8>, enc: Encoding| {
            if rec.data.is_empty() || data.len() < rec.data.len() {
                rec.data = data;
                rec.base = Some((b, enc));
            }
        };
        // A large executable shifts addresses all over when rebuilt: bsdiff follows
        // that, zstd does not. For the rest zstd's patch is as good and much faster.
        if payload.starts_with(b"\x7fELF") && payload.len() > BSDIFF_FROM {
            consider(bsdiff(&old, &payload)?, Encoding::Bsdiff);
        } else {
            consider(
                compress(&payload, PATCH_LEVEL, Some(&old))?,
                Encoding::Patch,
            );
        }
    }
    Ok((rec, full_len))
}

/// Writes the delta from `from` to `to` into `out` (written aside and renamed, so a
/// crash leaves no half delta); returns its sizes.
/// With `measure_full`, every object is also compressed on its own, to report what a
/// full fetch would transfer (`delta stats`); otherwise that work is skipped.
pub fn create(
    repo: &Repo,
    from: &ObjectId,
    to: &ObjectId,
    out: &Path,
    measure_full: bool,
) -> Result<DeltaStats> {
    let have = reach::walk_commit(repo, from);
    let want = reach::walk_commit(repo, to);
    if let Some((id, kind, at, e)) = want.unreadable.first().or(have.unreadable.first()) {
        bail!("cannot read {kind} {id} at {at}: {e}");
    }
    let old_paths = objects_by_path(repo, from)?;
    let mut new: Vec<(ObjectId, ObjectKind, Option<ObjectId>)> = Vec::new();
    for ((id, kind), used_at) in &want.objects {
        if have.objects.contains_key(&(*id, *kind)) {
            continue;
        }
        let path = used_at.split_once(':').map_or("", |(_, p)| p);
        let base = match kind {
            ObjectKind::File => old_paths.get(&(path.to_string(), '-')).copied(),
            ObjectKind::DirTree => old_paths.get(&(path.to_string(), 'd')).copied(),
            _ => None,
        };
        new.push((*id, *kind, base));
    }
    // Stable output: the same commits give the same delta.
    new.sort_by_key(|(id, kind, _)| (*kind as u8, *id));
    let records: Vec<(Record, u64)> = new
        .par_iter()
        .map(|(id, kind, base)| {
            let regular =
                *kind != ObjectKind::File || repo.file_info(id).is_ok_and(|i| i.target.is_none());
            let base = base.filter(|_| regular);
            record_for(repo, *id, *kind, base, measure_full)
                .with_context(|| format!("object {id} ({kind})"))
        })
        .collect::<Result<_>>()?;
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir_fd = fsutil::open_dir(dir)?;
    let name = out
        .file_name()
        .context("the delta needs a file name")?
        .to_string_lossy()
        .into_owned();
    let tmp = format!(".{name}.tmp");
    let file = rustix::fs::openat(
        &dir_fd,
        tmp.as_str(),
        rustix::fs::OFlags::WRONLY
            | rustix::fs::OFlags::CREATE
            | rustix::fs::OFlags::TRUNC
            | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::from_raw_mode(0o644),
    )?;
    let mut w = BufWriter::new(std::fs::File::from(file));
    w.write_all(MAGIC)?;
    w.write_all(&from.0)?;
    w.write_all(&to.0)?;
    w.write_all(&(records.len() as u64).to_le_bytes())?;
    let mut stats = DeltaStats {
        from: *from,
        to: *to,
        objects: records.len() as u64,
        raw_bytes: 0,
        full_bytes: 0,
        delta_bytes: 0,
        patched: 0,
    };
    for (r, full_len) in &records {
        w.write_all(&[r.kind as u8])?;
        w.write_all(&r.id.0)?;
        match r.base {
            Some((b, enc)) => {
                w.write_all(&[enc as u8])?;
                w.write_all(&b.0)?;
                stats.patched += 1;
            }
            None => w.write_all(&[Encoding::Full as u8])?,
        }
        w.write_all(&(r.meta.len() as u32).to_le_bytes())?;
        w.write_all(&r.meta)?;
        w.write_all(&r.raw_len.to_le_bytes())?;
        w.write_all(&(r.data.len() as u64).to_le_bytes())?;
        w.write_all(&r.data)?;
        stats.raw_bytes += r.raw_len;
        stats.full_bytes += full_len;
    }
    if !measure_full {
        stats.full_bytes = 0;
    }
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    stats.delta_bytes = f.metadata()?.len();
    rustix::fs::renameat(&dir_fd, tmp.as_str(), &dir_fd, name.as_str())?;
    rustix::fs::fsync(&dir_fd)?;
    Ok(stats)
}

fn read_exact<const N: usize>(r: &mut impl Read) -> Result<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b).context("the delta ends early")?;
    Ok(b)
}

/// What applying a delta did.
#[derive(Clone, Debug, Serialize)]
pub struct ApplyResult {
    /// The commit now complete in the repository.
    pub to: ObjectId,
    /// Objects written (all verified against their ids).
    pub objects: u64,
}

/// Applies a delta to `repo`, which must hold its FROM commit; checks every object
/// against its id, then that TO is complete, and only then publishes anything.
pub fn apply(repo: &Repo, delta: &Path, wait: LockWait<'_>) -> Result<ApplyResult> {
    apply_to(repo, delta, None, wait)
}

/// [`apply`], then points `branch` at the delta's target in the same transaction
/// (`arbor delta apply --branch`).
pub fn apply_to(
    repo: &Repo,
    delta: &Path,
    branch: Option<&RefName>,
    wait: LockWait<'_>,
) -> Result<ApplyResult> {
    let f = std::fs::File::open(delta).with_context(|| format!("opening {}", delta.display()))?;
    let size = f.metadata()?.len();
    let mut r = BufReader::with_capacity(1 << 20, f);
    let magic: [u8; 12] = read_exact(&mut r)?;
    ensure!(
        &magic == MAGIC,
        "{} is not an arbor delta (version 1)",
        delta.display()
    );
    let from = ObjectId(read_exact(&mut r)?);
    let to = ObjectId(read_exact(&mut r)?);
    let count = u64::from_le_bytes(read_exact(&mut r)?);
    // Each record takes at least 82 bytes: a count beyond that is a lie.
    ensure!(
        count <= size / 82,
        "the delta claims {count} objects in {size} bytes"
    );
    if !repo.has_object(&from, ObjectKind::Commit) {
        bail!("this delta needs commit {from}, which the repository does not have");
    }
    let txn = Transaction::begin(repo, wait)?;
    // The metadata objects written, to check TO's completeness before they are
    // published (the store cannot read staged objects yet).
    let mut metas: HashMap<ObjectId, Vec<u8>> = HashMap::new();
    // Records are read in order and materialized in parallel, a batch at a time:
    // decompression and patching (bzip2 inside bsdiff) are most of an apply's work.
    let mut batch: Vec<ReadRecord> = Vec::new();
    let mut batch_bytes = 0u64;
    for i in 0..count {
        let rec = read_record(&mut r, i, size)?;
        batch_bytes += rec.data.len() as u64 + rec.raw_len;
        batch.push(rec);
        if batch_bytes >= BATCH_BYTES || i + 1 == count {
            let written: Vec<Option<(ObjectId, Vec<u8>)>> = batch
                .par_drain(..)
                .map(|rec| materialize(repo, &txn, rec))
                .collect::<Result<_>>()?;
            metas.extend(written.into_iter().flatten());
            batch_bytes = 0;
        }
    }
    let mut tail = [0u8; 1];
    ensure!(
        r.read(&mut tail)? == 0,
        "the delta has bytes after its last record"
    );
    check_complete(repo, &txn, &metas, &to)?;
    crate::failpoint::hit("delta-staged")?;
    let refs: Vec<_> = branch.iter().map(|b| ((*b).clone(), Some(to))).collect();
    txn.finish(&refs)?;
    let _ = dir_sync(repo);
    Ok(ApplyResult { to, objects: count })
}

/// Raw and compressed bytes a batch of records holds at most (plus one record).
const BATCH_BYTES: u64 = 64 << 20;

/// One record of a delta file, read but not yet decoded.
struct ReadRecord {
    i: u64,
    kind: ObjectKind,
    id: ObjectId,
    encoding: Encoding,
    base: Option<ObjectId>,
    meta: Vec<u8>,
    raw_len: u64,
    data: Vec<u8>,
}

/// Reads record `i` of a delta of `size` bytes, checking every length it declares.
fn read_record(r: &mut impl Read, i: u64, size: u64) -> Result<ReadRecord> {
    let kind_byte: [u8; 1] = read_exact(r)?;
    let kind = match kind_byte[0] {
        k if k == ObjectKind::File as u8 => ObjectKind::File,
        k if k == ObjectKind::DirTree as u8 => ObjectKind::DirTree,
        k if k == ObjectKind::DirMeta as u8 => ObjectKind::DirMeta,
        k if k == ObjectKind::Commit as u8 => ObjectKind::Commit,
        k => bail!("record {i}: unknown object kind {k}"),
    };
    let id = ObjectId(read_exact(r)?);
    let enc: [u8; 1] = read_exact(r)?;
    let encoding = match enc[0] {
        0 => Encoding::Full,
        1 => Encoding::Patch,
        2 => Encoding::Bsdiff,
        e => bail!("record {i}: unknown encoding {e}"),
    };
    let base = match encoding {
        Encoding::Full => None,
        _ => Some(ObjectId(read_exact(r)?)),
    };
    let meta_len = u32::from_le_bytes(read_exact(r)?);
    ensure!(
        meta_len <= MAX_META,
        "record {i}: metadata of {meta_len} bytes"
    );
    let mut meta = vec![0u8; meta_len as usize];
    r.read_exact(&mut meta).context("the delta ends early")?;
    let raw_len = u64::from_le_bytes(read_exact(r)?);
    let data_len = u64::from_le_bytes(read_exact(r)?);
    ensure!(
        raw_len <= MAX_OBJECT,
        "record {i}: an object of {raw_len} bytes"
    );
    ensure!(
        data_len <= size,
        "record {i}: {data_len} bytes in a {size}-byte delta"
    );
    let mut data = vec![0u8; data_len as usize];
    r.read_exact(&mut data).context("the delta ends early")?;
    Ok(ReadRecord {
        i,
        kind,
        id,
        encoding,
        base,
        meta,
        raw_len,
        data,
    })
}

/// Decodes a record against its base and writes the object, verified; returns a
/// metadata object's id and bytes (for the completeness check).
fn materialize(
    repo: &Repo,
    txn: &Transaction<'_>,
    rec: ReadRecord,
) -> Result<Option<(ObjectId, Vec<u8>)>> {
    let (i, kind, id, raw_len, data) = (rec.i, rec.kind, rec.id, rec.raw_len, &rec.data);
    let old = match rec.base {
        Some(b) => {
            Some(base_bytes(repo, &b, kind).with_context(|| format!("record {i}: its base {b}"))?)
        }
        None => None,
    };
    let payload = match (rec.encoding, &old) {
        (Encoding::Bsdiff, Some(old)) => {
            // Grown as the patch writes, up to the declared size.
            let start = raw_len.min(64 << 20) as usize;
            let mut out = Bounded(Vec::with_capacity(start), raw_len as usize);
            qbsdiff::Bspatch::new(data)
                .and_then(|p| p.apply(old, &mut out))
                .with_context(|| format!("record {i} ({kind} {id}): a corrupt patch"))?;
            ensure!(
                out.0.len() as u64 == raw_len,
                "record {i}: the patch gives {} bytes, not {raw_len}",
                out.0.len()
            );
            out.0
        }
        _ => decompress(data, raw_len, old.as_deref())
            .with_context(|| format!("record {i} ({kind} {id})"))?,
    };
    Ok(wire::write_verified(txn, kind, &id, &rec.meta, &payload)
        .with_context(|| format!("record {i}"))?
        .map(|bytes| (id, bytes)))
}

/// Checks that every object of commit `to` is stored or staged.
fn check_complete(
    repo: &Repo,
    txn: &Transaction<'_>,
    metas: &HashMap<ObjectId, Vec<u8>>,
    to: &ObjectId,
) -> Result<()> {
    let bytes = |id: &ObjectId, kind: ObjectKind| -> Result<Vec<u8>> {
        match metas.get(id) {
            Some(b) => Ok(b.clone()),
            None => repo
                .read_meta_object(id, kind)
                .map_err(|_| anyhow::anyhow!("the delta leaves commit {to} without {kind} {id}")),
        }
    };
    let c = Commit::decode(&bytes(to, ObjectKind::Commit)?)?;
    let mut trees = vec![(c.root_tree, c.root_meta)];
    let mut seen = std::collections::HashSet::new();
    while let Some((tree, meta)) = trees.pop() {
        ensure!(
            txn.is_present(&meta, ObjectKind::DirMeta),
            "the delta leaves commit {to} without dirmeta {meta}"
        );
        if !seen.insert(tree) {
            continue;
        }
        let t = DirTree::decode(&bytes(&tree, ObjectKind::DirTree)?)?;
        for f in &t.files {
            ensure!(
                txn.is_present(&f.file, ObjectKind::File),
                "the delta leaves commit {to} without file {}",
                f.file
            );
        }
        trees.extend(t.dirs.iter().map(|d| (d.tree, d.meta)));
    }
    Ok(())
}

fn dir_sync(repo: &Repo) -> Result<()> {
    rustix::fs::fsync(repo.objects_fd().as_fd())?;
    Ok(())
}
