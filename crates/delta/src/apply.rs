//! Applying a delta from outside: every length bounded before it is used, every
//! object hashed as it is written, and nothing published until the target commit is
//! proven whole.

use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use rayon::prelude::*;
use serde::Serialize;

use super::format::{self, Bases, Entry};
use super::{Encoding, MAX_META, MAX_OBJECT, base_bytes, bsdiff, decompress, recompress};
use arbor_core::lock::LockWait;
use arbor_store::encoding::{Commit, DirTree};
use arbor_store::refs::RefName;
use arbor_store::transaction::Transaction;
use arbor_store::{ObjectId, ObjectKind, Repo, wire};

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
/// as it is written, then that TO is complete, and only then publishes anything.
pub fn apply(repo: &Repo, delta: &Path, wait: LockWait<'_>) -> Result<ApplyResult> {
    apply_to(repo, delta, None, wait)
}

/// The bytes ahead of a version 2 delta's index: magic, FROM, TO and two lengths.
const V2_HEAD: u64 = 12 + 32 + 32 + 8 + 8;

/// How a delta lays out its records.
enum Layout {
    /// Version 1: each record framed in place, with its own id and its base's.
    V1,
    /// Version 2: one index ahead of the records' data; bases named by their place
    /// among FROM's objects.
    V2 {
        entries: std::vec::IntoIter<Entry>,
        bases: Bases,
    },
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
    let (v2, version) = match &magic {
        m if m == format::MAGIC_V3 => (true, 3),
        m if m == format::MAGIC_V2 => (true, 2),
        m if m == format::MAGIC_V1 => (false, 1),
        _ => bail!("{} is not an arbor delta (version 1 to 3)", delta.display()),
    };
    let from = ObjectId(read_exact(&mut r)?);
    let to = ObjectId(read_exact(&mut r)?);
    if !repo.has_object(&from, ObjectKind::Commit) {
        bail!("this delta needs commit {from}, which the repository does not have");
    }
    let (count, mut layout) = if v2 {
        let entries = read_index(&mut r, size)?;
        if let Some(i) = entries.iter().position(|e| {
            e.encoding == Encoding::Recompressed && (version < 3 || e.kind != ObjectKind::File)
        }) {
            bail!("record {i}: a recompressed record in a version {version} delta, or not a file");
        }
        let bases = Bases::of(repo, &from)?;
        let count = entries.len() as u64;
        let entries = entries.into_iter();
        (count, Layout::V2 { entries, bases })
    } else {
        let count = u64::from_le_bytes(read_exact(&mut r)?);
        // Each record takes at least 82 bytes: a count beyond that is a lie.
        ensure!(
            count <= size / 82,
            "the delta claims {count} objects in {size} bytes"
        );
        (count, Layout::V1)
    };
    let txn = Transaction::begin(repo, wait)?;
    // The metadata objects written, to check TO's completeness before they are
    // published (the store cannot read staged objects yet).
    let mut metas: HashMap<ObjectId, Vec<u8>> = HashMap::new();
    // Records are read in order and materialized in parallel, a batch at a time:
    // decompression and patching (xz or bzip2 inside bsdiff) are most of an apply's work.
    let mut batch: Vec<ReadRecord> = Vec::new();
    let mut batch_bytes = 0u64;
    for i in 0..count {
        let rec = next_record(&mut layout, &mut r, i, size)?;
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
    arbor_core::failpoint::hit("delta-staged")?;
    let refs: Vec<_> = branch.iter().map(|b| ((*b).clone(), Some(to))).collect();
    txn.finish(&refs)?;
    let _ = dir_sync(repo);
    Ok(ApplyResult { to, objects: count })
}

/// Reads and checks a version 2 delta's index, which follows FROM and TO.
fn read_index(r: &mut impl Read, size: u64) -> Result<Vec<Entry>> {
    let index_len = u64::from_le_bytes(read_exact(r)?);
    let index_raw = u64::from_le_bytes(read_exact(r)?);
    let room = size.saturating_sub(V2_HEAD);
    ensure!(
        index_len <= room,
        "the delta claims an index of {index_len} bytes in {size} bytes"
    );
    ensure!(
        index_raw <= format::MAX_INDEX,
        "the delta claims an index of {index_raw} bytes, more than arbor accepts"
    );
    let mut z = vec![0u8; index_len as usize];
    r.read_exact(&mut z).context("the delta ends early")?;
    let raw = decompress(&z, index_raw, None).context("the delta's index")?;
    format::decode_index(&raw, room - index_len).context("the delta's index")
}

/// Reads the next record, whichever the layout.
fn next_record(layout: &mut Layout, r: &mut impl Read, i: u64, size: u64) -> Result<ReadRecord> {
    let (entries, bases) = match layout {
        Layout::V1 => return read_record(r, i, size),
        Layout::V2 { entries, bases } => (entries, bases),
    };
    let e = entries
        .next()
        .context("the index has fewer records than it counts")?;
    let base = match e.base {
        Some(place) => Some(
            bases
                .at(place, e.kind)
                .with_context(|| format!("record {i}"))?,
        ),
        None => None,
    };
    // The index proved the lengths add up to the file, which bounds each of them.
    let mut data = vec![0u8; e.data_len as usize];
    r.read_exact(&mut data).context("the delta ends early")?;
    Ok(ReadRecord {
        i,
        kind: e.kind,
        id: None,
        encoding: e.encoding,
        base,
        meta: e.header,
        raw_len: e.raw_len,
        data,
    })
}

/// Raw and compressed bytes a batch of records holds at most (plus one record).
const BATCH_BYTES: u64 = 64 << 20;

/// One record of a delta file, read but not yet decoded.
struct ReadRecord {
    i: u64,
    kind: ObjectKind,
    /// The id a version 1 record declares; version 2 leaves it to the hash.
    id: Option<ObjectId>,
    encoding: Encoding,
    base: Option<ObjectId>,
    meta: Vec<u8>,
    raw_len: u64,
    data: Vec<u8>,
}

/// Reads record `i` of a version 1 delta of `size` bytes, checking every length it
/// declares.
fn read_record(r: &mut impl Read, i: u64, size: u64) -> Result<ReadRecord> {
    let kind_byte: [u8; 1] = read_exact(r)?;
    let kind = ObjectKind::from_byte(kind_byte[0])
        .with_context(|| format!("record {i}: unknown object kind {}", kind_byte[0]))?;
    let id = ObjectId(read_exact(r)?);
    let enc: [u8; 1] = read_exact(r)?;
    let encoding = Encoding::from_byte(enc[0]).with_context(|| format!("record {i}"))?;
    ensure!(
        encoding != Encoding::Recompressed,
        "record {i}: a recompressed record in a version 1 delta"
    );
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
        id: Some(id),
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
    let (i, kind, raw_len, data) = (rec.i, rec.kind, rec.raw_len, &rec.data);
    // What a message calls the record: its declared id, if it has one.
    let what = match &rec.id {
        Some(id) => format!("record {i} ({kind} {id})"),
        None => format!("record {i} ({kind})"),
    };
    let old = match rec.base {
        Some(b) => {
            Some(base_bytes(repo, &b, kind).with_context(|| format!("record {i}: its base {b}"))?)
        }
        None => None,
    };
    let payload = match (rec.encoding, &old) {
        (Encoding::Bsdiff, Some(old)) => {
            bsdiff::patch_bsdiff40(old, data, raw_len).context(what)?
        }
        (Encoding::BsdiffXz, Some(old)) => bsdiff::patch(old, data, raw_len).context(what)?,
        (Encoding::Recompressed, Some(old)) => {
            recompress::rebuild(old, data, raw_len).context(what)?
        }
        _ => decompress(data, raw_len, old.as_deref()).context(what)?,
    };
    let written = match rec.id {
        Some(id) => wire::write_verified(txn, kind, &id, &rec.meta, &payload).map(|m| (id, m)),
        None => wire::write_derived(txn, kind, &rec.meta, &payload),
    };
    let (id, meta) = written.with_context(|| format!("record {i}"))?;
    Ok(meta.map(|bytes| (id, bytes)))
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
