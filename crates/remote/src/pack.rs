//! The files of a published repository that carry objects (docs/remote.md):
//! packed objects (`objects/xx/yyyy.<kind>`) and the manifest of a commit
//! (`manifests/<commit>.manifest`, every object it reaches with its sizes).
//!
//! A packed object:
//! ```text
//! "ARBOROB1" | kind u8 | header length u32 | header | raw length u64 | zstd(payload)
//! ```
//! A manifest:
//! ```text
//! "ARBORMF1" | commit [32] | count u64 | count × (kind u8 | id [32] | raw u64 | packed u64)
//! ```
//! Integers are little-endian. Both arrive from outside: every length is checked against
//! what the caller already trusts (the signed manifest's sizes) before it is used.

use anyhow::{Context, Result, bail, ensure};

use arbor_delta as delta;
use arbor_store::transaction::Transaction;
use arbor_store::wire::{self, MAX_HEADER};
use arbor_store::{ObjectId, ObjectKind, Repo, reach};

const OBJECT_MAGIC: &[u8; 8] = b"ARBOROB1";
const MANIFEST_MAGIC: &[u8; 8] = b"ARBORMF1";
/// zstd level of published objects: compressed once, fetched by every device.
const LEVEL: i32 = 12;
const RECORD: usize = 1 + 32 + 8 + 8;

/// The kinds by their byte on the wire (the order of [`ObjectKind`]).
pub fn kind_from_byte(b: u8) -> Result<ObjectKind> {
    ObjectKind::from_byte(b).with_context(|| format!("unknown object kind {b}"))
}

/// Packs a stored object for publishing; returns the bytes and the payload's length.
pub fn pack(repo: &Repo, id: &ObjectId, kind: ObjectKind) -> Result<(Vec<u8>, u64)> {
    let p = wire::parts(repo, id, kind)?;
    let z = delta::compress(&p.payload, LEVEL, None)?;
    let mut out = Vec::with_capacity(8 + 1 + 4 + p.header.len() + 8 + z.len());
    out.extend_from_slice(OBJECT_MAGIC);
    out.push(kind as u8);
    out.extend_from_slice(&(p.header.len() as u32).to_le_bytes());
    out.extend_from_slice(&p.header);
    out.extend_from_slice(&(p.payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&z);
    Ok((out, p.payload.len() as u64))
}

/// Unpacks a fetched object into `txn`, failing unless it is `entry` exactly (kind,
/// id, and the raw size the manifest promised).
pub fn unpack(txn: &Transaction<'_>, entry: &ManifestEntry, bytes: &[u8]) -> Result<()> {
    let bad = |what: &str| format!("{} {}: {what}", entry.kind, entry.id);
    ensure!(
        bytes.len() >= 21 && &bytes[..8] == OBJECT_MAGIC,
        "{}",
        bad("not a packed object")
    );
    ensure!(
        kind_from_byte(bytes[8])? == entry.kind,
        "{}",
        bad("of another kind")
    );
    let hlen = u32::from_le_bytes(bytes[9..13].try_into().unwrap());
    ensure!(
        hlen <= MAX_HEADER && 13 + hlen as usize + 8 <= bytes.len(),
        "{}",
        bad("a header longer than the object")
    );
    let header = &bytes[13..13 + hlen as usize];
    let rest = &bytes[13 + hlen as usize..];
    let raw = u64::from_le_bytes(rest[..8].try_into().unwrap());
    ensure!(
        raw == entry.raw,
        "{}",
        bad(&format!(
            "{raw} bytes where the manifest says {}",
            entry.raw
        ))
    );
    let payload = delta::decompress(&rest[8..], raw, None).with_context(|| bad("corrupt"))?;
    wire::write_verified(txn, entry.kind, &entry.id, header, &payload)?;
    Ok(())
}

/// One object of a manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManifestEntry {
    /// What it is.
    pub kind: ObjectKind,
    /// Its id.
    pub id: ObjectId,
    /// Payload size (file content, or the encoding of a metadata object).
    pub raw: u64,
    /// Size of the packed object file: the most a fetch of it may read.
    pub packed: u64,
}

impl ManifestEntry {
    /// Where the packed object lives in a published repository.
    pub fn path(&self) -> String {
        format!("objects/{}", self.id.relative_path(self.kind))
    }
}

/// Every object a published commit reaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The commit.
    pub commit: ObjectId,
    /// Its objects, the commit included.
    pub entries: Vec<ManifestEntry>,
}

impl Manifest {
    /// The objects of `commit` in `repo`, without sizes (the publisher fills them in).
    pub fn objects_of(repo: &Repo, commit: &ObjectId) -> Result<Vec<(ObjectId, ObjectKind)>> {
        let r = reach::walk_commit(repo, commit);
        if let Some((id, kind, at, e)) = r.unreadable.first() {
            bail!("cannot read {kind} {id} at {at}: {e}");
        }
        let mut v: Vec<_> = r.objects.into_keys().collect();
        v.sort_by_key(|(id, kind)| (*kind as u8, *id));
        Ok(v)
    }

    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48 + self.entries.len() * RECORD);
        out.extend_from_slice(MANIFEST_MAGIC);
        out.extend_from_slice(&self.commit.0);
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for e in &self.entries {
            out.push(e.kind as u8);
            out.extend_from_slice(&e.id.0);
            out.extend_from_slice(&e.raw.to_le_bytes());
            out.extend_from_slice(&e.packed.to_le_bytes());
        }
        out
    }

    /// Parses a manifest; the count must match the length exactly.
    pub fn decode(bytes: &[u8]) -> Result<Manifest> {
        ensure!(
            bytes.len() >= 48 && &bytes[..8] == MANIFEST_MAGIC,
            "not an arbor manifest"
        );
        let commit = ObjectId(bytes[8..40].try_into().unwrap());
        let count = u64::from_le_bytes(bytes[40..48].try_into().unwrap());
        let body = &bytes[48..];
        ensure!(
            body.len() % RECORD == 0 && (body.len() / RECORD) as u64 == count,
            "the manifest claims {count} objects in {} bytes",
            bytes.len()
        );
        let entries = body
            .chunks_exact(RECORD)
            .map(|r| {
                Ok(ManifestEntry {
                    kind: kind_from_byte(r[0])?,
                    id: ObjectId(r[1..33].try_into().unwrap()),
                    raw: u64::from_le_bytes(r[33..41].try_into().unwrap()),
                    packed: u64::from_le_bytes(r[41..49].try_into().unwrap()),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        ensure!(
            entries
                .iter()
                .any(|e| e.kind == ObjectKind::Commit && e.id == commit),
            "the manifest of {commit} does not list the commit itself"
        );
        Ok(Manifest { commit, entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let c = ObjectId::of(b"c");
        Manifest {
            commit: c,
            entries: vec![
                ManifestEntry {
                    kind: ObjectKind::Commit,
                    id: c,
                    raw: 100,
                    packed: 90,
                },
                ManifestEntry {
                    kind: ObjectKind::File,
                    id: ObjectId::of(b"f"),
                    raw: 5,
                    packed: 30,
                },
            ],
        }
    }

    #[test]
    fn manifest_round_trips_and_refuses_lies() {
        let m = sample();
        let bytes = m.encode();
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        let mut lying = bytes.clone();
        lying[40] = 3;
        assert!(Manifest::decode(&lying).is_err());
        assert!(Manifest::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut bad_kind = bytes.clone();
        bad_kind[48] = 9;
        assert!(Manifest::decode(&bad_kind).is_err());
        let mut no_commit = m.clone();
        no_commit.entries.remove(0);
        assert!(Manifest::decode(&no_commit.encode()).is_err());
    }

    /// A packed object whose payload decompresses past the size its header (and the
    /// signed manifest) declare: stopped at the declared size, with an error, before
    /// more than that is allocated or written.
    #[test]
    fn a_payload_that_decompresses_past_its_declared_size_is_refused() {
        let bomb = zstd::encode_all(&vec![0u8; 64 << 20][..], 19).unwrap();
        assert!(bomb.len() < 64 << 10, "{} bytes", bomb.len());
        let err = delta::decompress(&bomb, 4096, None).unwrap_err();
        assert!(format!("{err:#}").contains("zstd"), "{err:#}");
        let err = delta::decompress(&bomb[..64], 1 << 40, None).unwrap_err();
        assert!(
            format!("{err:#}").contains("more than arbor accepts"),
            "{err:#}"
        );
    }
}
