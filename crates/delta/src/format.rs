//! The record index of a version 2 delta (docs/delta.md): what each record is, in
//! one zstd frame ahead of the records' data.
//!
//! Version 1 spent a fifth of a point update's delta on framing: each record's own
//! id, its base's id and its file's content digest, 96 random bytes that no
//! compressor can shrink. Version 2 leaves all three out. An object's id is what it
//! hashes to once written, and the delta is proven by the completeness check from its
//! target commit down, which names every object by id. A base is named by its place
//! among the start commit's objects, which both sides can list. A file header's
//! content digest is zero, recomputed from the content as it is written.

use anyhow::{Context, Result, bail, ensure};
use integer_encoding::VarInt;

use super::Encoding;
use arbor_store::encoding::{FileBody, FileHeader};
use arbor_store::{ObjectId, ObjectKind, Repo, reach};

/// The first bytes of a version 1 delta (still applied).
pub(super) const MAGIC_V1: &[u8; 12] = b"ARBORDELTA\0\x01";
/// The first bytes of a version 2 delta (still applied).
pub(super) const MAGIC_V2: &[u8; 12] = b"ARBORDELTA\0\x02";
/// The first bytes of a version 3 delta (written): version 2's layout, and records
/// may be recompressed ([`Encoding::Recompressed`](super::Encoding::Recompressed)).
pub(super) const MAGIC_V3: &[u8; 12] = b"ARBORDELTA\0\x03";
/// The largest record index accepted, uncompressed.
pub(super) const MAX_INDEX: u64 = 256 << 20;
/// The fewest bytes an index entry takes (kind, encoding, three lengths).
const MIN_ENTRY: u64 = 5;

/// What the index says of one record.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Entry {
    pub kind: ObjectKind,
    pub encoding: Encoding,
    /// The base's place in [`Bases`] (encodings other than full).
    pub base: Option<u64>,
    /// A file's header with its content digest zeroed; empty for other kinds.
    pub header: Vec<u8>,
    /// The object's payload size.
    pub raw_len: u64,
    /// The size of the record's data.
    pub data_len: u64,
}

/// The objects of the delta's start commit, sorted by kind and id: a base is named by
/// its place here.
pub(super) struct Bases(Vec<(u8, ObjectId)>);

impl Bases {
    /// Lists the start commit's objects; it must be whole, or places would shift.
    pub fn of(repo: &Repo, from: &ObjectId) -> Result<Bases> {
        Bases::walked(&reach::walk_commit(repo, from), from)
    }

    /// [`Bases::of`] from a walk already made.
    pub fn walked(walk: &reach::Reach, from: &ObjectId) -> Result<Bases> {
        if let Some((id, kind, at, e)) = walk.unreadable.first() {
            bail!(
                "the delta builds on commit {from}, whose {kind} {id} at {at} is unreadable: {e}"
            );
        }
        let mut v: Vec<(u8, ObjectId)> =
            walk.objects.keys().map(|(id, k)| (*k as u8, *id)).collect();
        v.sort_unstable();
        Ok(Bases(v))
    }

    /// The place of an object of the start commit.
    pub fn place(&self, id: &ObjectId, kind: ObjectKind) -> Option<u64> {
        self.0
            .binary_search(&(kind as u8, *id))
            .ok()
            .map(|p| p as u64)
    }

    /// The object at `place`, which must be of `kind`.
    pub fn at(&self, place: u64, kind: ObjectKind) -> Result<ObjectId> {
        match usize::try_from(place).ok().and_then(|p| self.0.get(p)) {
            Some((k, id)) if *k == kind as u8 => Ok(*id),
            Some(_) => bail!("base {place} is not a {kind}"),
            None => bail!(
                "base {place} is past the start commit's {} objects",
                self.0.len()
            ),
        }
    }
}

/// A file header as a version 2 delta carries it: the content digest zeroed.
pub(super) fn strip_digest(header: &[u8]) -> Result<Vec<u8>> {
    let mut h = FileHeader::decode(header)?;
    if let FileBody::Regular { content, .. } = &mut h.body {
        *content = [0; 32];
    }
    Ok(h.encode())
}

fn put(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&n.encode_var_vec());
}

/// The uncompressed index of `entries`.
pub(super) fn encode_index(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    put(&mut out, entries.len() as u64);
    for e in entries {
        out.push(e.kind as u8);
        out.push(e.encoding as u8);
        if let Some(b) = e.base {
            put(&mut out, b);
        }
        put(&mut out, e.header.len() as u64);
        out.extend_from_slice(&e.header);
        put(&mut out, e.raw_len);
        put(&mut out, e.data_len);
    }
    out
}

/// A cursor over untrusted bytes (an index, a patch's lengths).
pub(super) struct Cursor<'a>(pub &'a [u8]);

impl Cursor<'_> {
    pub fn byte(&mut self) -> Result<u8> {
        let (b, rest) = self.0.split_first().context("ends early")?;
        self.0 = rest;
        Ok(*b)
    }

    pub fn num(&mut self) -> Result<u64> {
        let (n, used) = u64::decode_var(self.0).context("ends early or holds a bad number")?;
        self.0 = &self.0[used..];
        Ok(n)
    }

    pub fn take(&mut self, n: u64) -> Result<&[u8]> {
        ensure!(n <= self.0.len() as u64, "ends early");
        let (a, rest) = self.0.split_at(n as usize);
        self.0 = rest;
        Ok(a)
    }
}

/// Parses an index, checking every number it holds; the records' data must fill
/// exactly the `data_bytes` that follow it.
pub(super) fn decode_index(bytes: &[u8], data_bytes: u64) -> Result<Vec<Entry>> {
    let mut c = Cursor(bytes);
    let count = c.num()?;
    ensure!(
        count <= bytes.len() as u64 / MIN_ENTRY,
        "the index claims {count} records in {} bytes",
        bytes.len()
    );
    let mut entries = Vec::with_capacity(count as usize);
    let mut total = 0u64;
    for i in 0..count {
        let k = c.byte()?;
        let kind = ObjectKind::from_byte(k)
            .with_context(|| format!("record {i}: unknown object kind {k}"))?;
        let encoding = Encoding::from_byte(c.byte()?).with_context(|| format!("record {i}"))?;
        let base = match encoding {
            Encoding::Full => None,
            _ => Some(c.num()?),
        };
        let header_len = c.num()?;
        ensure!(
            header_len <= super::MAX_META as u64,
            "record {i}: a header of {header_len} bytes"
        );
        let header = c.take(header_len)?.to_vec();
        ensure!(
            (kind == ObjectKind::File) != header.is_empty(),
            "record {i}: a {kind} with {} header bytes",
            header.len()
        );
        let raw_len = c.num()?;
        let data_len = c.num()?;
        ensure!(
            raw_len <= super::MAX_OBJECT,
            "record {i}: an object of {raw_len} bytes"
        );
        total = total.saturating_add(data_len);
        ensure!(
            total <= data_bytes,
            "record {i}: the delta ends early (its records need more than the \
             {data_bytes} bytes after the index)"
        );
        entries.push(Entry {
            kind,
            encoding,
            base,
            header,
            raw_len,
            data_len,
        });
    }
    ensure!(c.0.is_empty(), "the index has bytes after its last record");
    ensure!(
        total == data_bytes,
        "the records hold {total} bytes of data, and the delta {data_bytes}"
    );
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: ObjectKind, base: Option<u64>, header: &[u8], data_len: u64) -> Entry {
        Entry {
            kind,
            encoding: if base.is_some() {
                Encoding::Patch
            } else {
                Encoding::Full
            },
            base,
            header: header.to_vec(),
            raw_len: 1 << 31,
            data_len,
        }
    }

    #[test]
    fn index_round_trips_and_refuses_what_does_not_add_up() {
        let entries = vec![
            entry(ObjectKind::File, Some(300), b"header", 7),
            entry(ObjectKind::DirTree, None, b"", 0),
            entry(ObjectKind::Commit, None, b"", 1 << 40),
        ];
        let bytes = encode_index(&entries);
        let total = 7 + (1 << 40);
        assert_eq!(decode_index(&bytes, total).unwrap(), entries);
        let short = decode_index(&bytes, total - 1).unwrap_err();
        assert!(format!("{short:#}").contains("ends early"), "{short:#}");
        let long = decode_index(&bytes, total + 1).unwrap_err();
        assert!(format!("{long:#}").contains("hold"), "{long:#}");
        for cut in 0..bytes.len() {
            assert!(decode_index(&bytes[..cut], total).is_err(), "cut at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(decode_index(&extra, total).is_err());
        let mut lying = bytes.clone();
        lying[0] = 0x7f;
        let e = decode_index(&lying, total).unwrap_err();
        assert!(format!("{e:#}").contains("claims 127 records"), "{e:#}");
        // A dirtree that carries a file header.
        let bad = encode_index(&[entry(ObjectKind::DirTree, None, b"h", 0)]);
        assert!(decode_index(&bad, 0).is_err());
    }
}
