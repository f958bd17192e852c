//! Static deltas: one file that turns a repository holding commit FROM into one also
//! holding commit TO (docs/delta.md).
//!
//! A delta carries every object TO reaches and FROM does not. A regular file that
//! replaces a file at the same path in FROM is compressed with zstd against the old
//! content, used as a prefix, which is zstd's "patch from" mode; a large executable is
//! diffed with bsdiff instead ([`bsdiff`]). On request, an xz file (a `.ko.xz`
//! module) is diffed by its decompressed content and compressed again on apply, where
//! that reproduces its bytes exactly ([`recompress`]). A file with no previous version at its path
//! gets the one at a similar path: the same module under another kernel version, a
//! library under another version number ([`similar_path`]). Everything else is
//! compressed on its own, and each object gets whichever encoding is smaller. The
//! file's layout is [`format`]'s.
//! Applying a delta hashes every object as it is written, then checks that TO is
//! complete. A delta from outside is hostile: every length is bounded, and nothing is
//! trusted that a hash does not confirm.

mod apply;
mod bsdiff;
mod format;
mod recompress;

use std::collections::HashMap;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use rayon::prelude::*;
use serde::Serialize;
use zstd::zstd_safe::{CCtx, CParameter, DCtx, DParameter};

pub use apply::{ApplyResult, apply, apply_to};
use format::{Bases, Entry};

use arbor_core::fsutil;
use arbor_store::{ObjectId, ObjectKind, Repo};
use arbor_store::{reach, wire};

/// The delta format [`create`] writes; [`apply`] reads this one and every earlier one.
/// A channel index names each delta's format, so a client skips what it cannot read.
pub const FORMAT: u32 = 3;
/// Level for objects compressed on their own.
const FULL_LEVEL: i32 = 15;
/// Level for files compressed against their previous version.
const PATCH_LEVEL: i32 = 19;
/// Level for content that is compressed already (see [`is_dense`]).
const DENSE_LEVEL: i32 = 3;
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
    /// shifted addresses of a rebuilt executable far better (format 1 deltas).
    Bsdiff = 2,
    /// bsdiff with its three streams in xz, 8% smaller than BSDIFF40 (delta::bsdiff).
    BsdiffXz = 3,
    /// An xz file rebuilt from its decompressed content, diffed against the base's
    /// content, then compressed again (delta::recompress; format 3).
    Recompressed = 4,
}

impl Encoding {
    fn from_byte(b: u8) -> Result<Encoding> {
        Ok(match b {
            0 => Encoding::Full,
            1 => Encoding::Patch,
            2 => Encoding::Bsdiff,
            3 => Encoding::BsdiffXz,
            4 => Encoding::Recompressed,
            e => bail!("unknown encoding {e}"),
        })
    }
}

/// One object of a delta, compressed.
struct Record {
    kind: ObjectKind,
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
    /// Of those, xz files diffed by their content and compressed again on apply.
    pub recompressed: u64,
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

pub fn compress(data: &[u8], level: i32, prefix: Option<&[u8]>) -> Result<Vec<u8>> {
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
pub fn decompress(data: &[u8], raw_len: u64, prefix: Option<&[u8]>) -> Result<Vec<u8>> {
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
    for e in arbor_store::inspect::list(repo, commit, "/", true)? {
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

/// True for a payload of 64 KiB or more that barely compresses: four slices of it
/// (up to 256 KiB each, one from each quarter) shrink by less than 5% at zstd's
/// fastest level.
fn is_dense(payload: &[u8]) -> Result<bool> {
    const SLICE: usize = 256 << 10;
    if payload.len() < 64 << 10 {
        return Ok(false);
    }
    // Slices that do not overlap, or the sample would repeat itself.
    let (quarter, mut sample) = (payload.len() / 4, Vec::with_capacity(4 * SLICE));
    for q in 0..4 {
        let at = quarter * q;
        sample.extend_from_slice(&payload[at..at + SLICE.min(quarter)]);
    }
    Ok(compress(&sample, 1, None)?.len() * 100 >= sample.len() * 95)
}

/// A new object's previous version, and how it was found.
type Base = (ObjectId, Match);

/// How a new file's base was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Match {
    /// The file at the same path in FROM.
    SamePath,
    /// The file at a similar path ([`similar_path`]): maybe unrelated, so the record
    /// on its own is tried as well.
    Similar,
}

/// A path with what changes between releases taken out, so that a file moved by a
/// version finds its previous version: a kernel module's kernel version
/// (`/usr/lib/modules/6.1.0-28-amd64/…` and `…/6.12.117+deb13-amd64/…`), a file in
/// /boot named after it, an `.xz` suffix (bookworm's `.ko` is trixie's `.ko.xz`), and
/// every run of digits (`python3.11/` and `python3.13/`, `libicuuc.so.72` and `.76`).
fn similar_path(path: &str) -> String {
    let mut p = path.strip_suffix(".xz").unwrap_or(path);
    let mut out = String::with_capacity(p.len());
    for tree in ["/usr/lib/modules/", "/lib/modules/"] {
        if let Some((_, rest)) = p.strip_prefix(tree).and_then(|r| r.split_once('/')) {
            out.push_str("/usr/lib/modules/*/");
            p = rest;
            break;
        }
    }
    if let Some((name, _)) = p.strip_prefix("/boot/").and_then(|n| n.split_once('-')) {
        out.push_str("/boot/");
        out.push_str(name);
        out.push_str("-*");
        return out;
    }
    let mut in_digits = false;
    for c in p.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
        } else {
            out.push(c);
        }
        in_digits = c.is_ascii_digit();
    }
    out
}

/// FROM's regular files by [`similar_path`]; where several share one, the first path
/// in sort order wins, so the same commits always give the same delta.
fn similar_files(old_paths: &HashMap<(String, char), ObjectId>) -> HashMap<String, ObjectId> {
    let mut files: Vec<(&String, &ObjectId)> = old_paths
        .iter()
        .filter(|((_, t), _)| *t == '-')
        .map(|((p, _), id)| (p, id))
        .collect();
    files.sort_unstable();
    let mut out = HashMap::with_capacity(files.len());
    for (p, id) in files {
        out.entry(similar_path(p)).or_insert(*id);
    }
    out
}

/// The bytes of a base object (a file's content, a dirtree's encoding).
fn base_bytes(repo: &Repo, id: &ObjectId, kind: ObjectKind) -> Result<Vec<u8>> {
    match kind {
        ObjectKind::File => read_all(repo, id),
        _ => Ok(repo.read_meta_object(id, kind)?),
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
    base: Option<Base>,
    opts: CreateOptions,
) -> Result<(Record, u64)> {
    let wire::Parts {
        header: meta,
        payload,
    } = wire::parts(repo, &id, kind)?;
    let mut rec = Record {
        kind,
        base: None,
        meta,
        raw_len: payload.len() as u64,
        data: Vec::new(),
    };
    // Compressed content (an initramfs, a kernel image, `.gz` files): zstd's strongest
    // levels spend tens of seconds on it for nothing (41 s on trixie's initramfs, to
    // save 1%); only runs it shares verbatim with its base can help, and a fast level
    // with long-distance matching finds those too.
    let (full_level, patch_level) = if is_dense(&payload)? {
        (DENSE_LEVEL, DENSE_LEVEL)
    } else {
        (FULL_LEVEL, PATCH_LEVEL)
    };
    let mut full_len = 0;
    // A base found by a similar path may be unrelated: the record alone is tried too.
    if opts.measure_full || !matches!(base, Some((_, Match::SamePath))) {
        rec.data = compress(&payload, full_level, None)?;
        full_len = rec.data.len() as u64;
    }
    if let Some((b, _)) = base {
        let old = base_bytes(repo, &b, kind)?;
        let mut consider = |data: Vec<u8>, enc: Encoding| {
            if rec.data.is_empty() || data.len() < rec.data.len() {
                rec.data = data;
                rec.base = Some((b, enc));
            }
        };
        // A large executable shifts addresses all over when rebuilt: bsdiff follows
        // that, zstd does not. For the rest zstd's patch is as good and much faster.
        let recompressible = opts
            .recompress
            .then(|| recompress::reproducible(&payload))
            .flatten();
        if let Some((recipe, content)) = recompressible {
            // Compressed bytes share nothing with the base: the content is diffed.
            let old = recompress::base_content(&old)?;
            let (inner, data) = recompress::inner_record(&old, &content, PATCH_LEVEL)?;
            let data = recompress::encode(recipe, inner, content.len() as u64, &data);
            consider(data, Encoding::Recompressed);
        } else if payload.starts_with(b"\x7fELF") && payload.len() > BSDIFF_FROM {
            consider(bsdiff::diff(&old, &payload)?, Encoding::BsdiffXz);
        } else {
            consider(
                compress(&payload, patch_level, Some(&old))?,
                Encoding::Patch,
            );
        }
    }
    Ok((rec, full_len))
}

/// How [`create`] works.
#[derive(Clone, Copy, Debug, Default)]
pub struct CreateOptions {
    /// Also compress every object on its own, to report what a full fetch would
    /// transfer (`delta stats`); otherwise that work is skipped.
    pub measure_full: bool,
    /// Diff xz files by their content and compress them again on apply
    /// ([`recompress`]). Off by default: on the major upgrade a → t it saves 19 MB of
    /// 198 and makes the apply take 121 s instead of 5 (xz compresses 3 MB/s a core),
    /// worth it only on links slower than about 0.2 MB/s (docs/delta.md).
    pub recompress: bool,
}

/// Writes the delta from `from` to `to` into `out` (written aside and renamed, so a
/// crash leaves no half delta); returns its sizes.
pub fn create(
    repo: &Repo,
    from: &ObjectId,
    to: &ObjectId,
    out: &Path,
    opts: CreateOptions,
) -> Result<DeltaStats> {
    let measure_full = opts.measure_full;
    let have = reach::walk_commit(repo, from);
    let want = reach::walk_commit(repo, to);
    if let Some((id, kind, at, e)) = want.unreadable.first().or(have.unreadable.first()) {
        bail!("cannot read {kind} {id} at {at}: {e}");
    }
    let bases = Bases::walked(&have, from)?;
    let old_paths = objects_by_path(repo, from)?;
    let old_similar = similar_files(&old_paths);
    let mut new: Vec<(ObjectId, ObjectKind, Option<Base>)> = Vec::new();
    for ((id, kind), used_at) in &want.objects {
        if have.objects.contains_key(&(*id, *kind)) {
            continue;
        }
        let path = used_at.split_once(':').map_or("", |(_, p)| p);
        let same = |t: char| old_paths.get(&(path.to_string(), t)).copied();
        let base = match kind {
            ObjectKind::File => same('-').map(|b| (b, Match::SamePath)).or_else(|| {
                let b = old_similar.get(&similar_path(path))?;
                Some((*b, Match::Similar))
            }),
            ObjectKind::DirTree => same('d').map(|b| (b, Match::SamePath)),
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
            record_for(repo, *id, *kind, base, opts)
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
    let mut stats = DeltaStats {
        from: *from,
        to: *to,
        objects: records.len() as u64,
        raw_bytes: 0,
        full_bytes: 0,
        delta_bytes: 0,
        patched: 0,
        recompressed: 0,
    };
    let mut entries = Vec::with_capacity(records.len());
    for (r, full_len) in &records {
        let base = match r.base {
            Some((b, _)) => Some(
                bases
                    .place(&b, r.kind)
                    .with_context(|| format!("base {b} is not an object of {from}"))?,
            ),
            None => None,
        };
        let header = match r.kind {
            ObjectKind::File => format::strip_digest(&r.meta)?,
            _ => Vec::new(),
        };
        entries.push(Entry {
            kind: r.kind,
            encoding: r.base.map_or(Encoding::Full, |(_, e)| e),
            base,
            header,
            raw_len: r.raw_len,
            data_len: r.data.len() as u64,
        });
        stats.patched += u64::from(r.base.is_some());
        stats.recompressed += u64::from(matches!(r.base, Some((_, Encoding::Recompressed))));
        stats.raw_bytes += r.raw_len;
        stats.full_bytes += full_len;
    }
    let index = format::encode_index(&entries);
    let packed_index = compress(&index, PATCH_LEVEL, None)?;
    let mut w = BufWriter::new(std::fs::File::from(file));
    w.write_all(format::MAGIC_V3)?;
    w.write_all(&from.0)?;
    w.write_all(&to.0)?;
    w.write_all(&(packed_index.len() as u64).to_le_bytes())?;
    w.write_all(&(index.len() as u64).to_le_bytes())?;
    w.write_all(&packed_index)?;
    for (r, _) in &records {
        w.write_all(&r.data)?;
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

#[cfg(test)]
mod tests {
    use super::similar_path;

    #[test]
    fn compressed_content_is_told_from_compressible() {
        let text: Vec<u8> = (0..400_000u32)
            .flat_map(|i| format!("line {}\n", i % 5000).into_bytes())
            .collect();
        assert!(!super::is_dense(&text).unwrap());
        // Bytes as compressed data looks: no redundancy (xorshift).
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..300_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(super::is_dense(&noise).unwrap());
        assert!(
            !super::is_dense(&noise[..1000]).unwrap(),
            "small: not judged"
        );
    }

    #[test]
    fn a_file_moved_by_a_version_finds_its_previous_version() {
        let same = |a: &str, b: &str| similar_path(a) == similar_path(b);
        assert!(same(
            "/usr/lib/modules/6.1.0-28-amd64/kernel/net/llc/llc2.ko",
            "/usr/lib/modules/6.12.117+deb13-amd64/kernel/net/llc/llc2.ko.xz"
        ));
        assert!(same(
            "/usr/lib/python3.11/json/decoder.py",
            "/usr/lib/python3.13/json/decoder.py"
        ));
        assert!(same(
            "/boot/config-6.1.0-28-amd64",
            "/boot/config-6.12.117+deb13-amd64"
        ));
        assert!(same(
            "/usr/lib/x86_64-linux-gnu/libicuuc.so.72.1",
            "/usr/lib/x86_64-linux-gnu/libicuuc.so.76.1"
        ));
        // Another name, another directory, another module: no match.
        assert!(!same("/usr/bin/ls", "/usr/bin/lz"));
        assert!(!same("/usr/lib/python3.11/a.py", "/usr/lib/perl5/a.py"));
        assert!(!same(
            "/usr/lib/modules/6.1.0-28-amd64/kernel/net/llc/llc2.ko",
            "/usr/lib/modules/6.1.0-28-amd64/kernel/net/llc/llc.ko"
        ));
    }
}
