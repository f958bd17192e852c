//! Objects as they travel between repositories (static deltas, published
//! repositories): a header that hashes to the object's id plus the bytes, and the
//! checked way back into a store.
//!
//! A file object travels as its [`FileHeader`] (mode, owner, xattrs, and the content
//! digest or symlink target) and its content; dirtrees, dirmetas and commits as their
//! canonical encoding. Nothing that arrives is trusted: [`write_verified`] stores it and
//! fails unless what was stored hashes to the id that was asked for.

use std::io::Read;

use anyhow::{Context, Result, ensure};

use super::encoding::{FileBody, FileHeader};
use super::transaction::Transaction;
use super::{ObjectId, ObjectKind, Repo};

/// The largest file-object header accepted from outside (xattrs included).
pub const MAX_HEADER: u32 = 1 << 20;

/// An object split for transport: `header` is empty for metadata objects.
pub struct Parts {
    /// The encoded [`FileHeader`] of a file object; empty otherwise.
    pub header: Vec<u8>,
    /// File content, symlink target, or the canonical encoding of a metadata object.
    pub payload: Vec<u8>,
}

/// Reads an object out of `repo` in its transport form.
pub fn parts(repo: &Repo, id: &ObjectId, kind: ObjectKind) -> Result<Parts> {
    if kind != ObjectKind::File {
        return Ok(Parts {
            header: Vec::new(),
            payload: repo.read_meta_object(id, kind)?,
        });
    }
    let info = repo.file_info(id)?;
    let payload = match &info.target {
        Some(t) => t.clone(),
        None => {
            let mut v = Vec::with_capacity(info.size as usize);
            repo.open_file_object(id)?.read_to_end(&mut v)?;
            v
        }
    };
    let body = match &info.target {
        Some(t) => FileBody::Symlink { target: t.clone() },
        None => FileBody::Regular {
            size: payload.len() as u64,
            content: *blake3::hash(&payload).as_bytes(),
        },
    };
    let header = FileHeader {
        meta: info.meta,
        body,
    }
    .encode();
    Ok(Parts { header, payload })
}

/// Stores an object that arrived from outside into `txn`, and fails unless it is
/// object `id`: the header must hash to `id` before anything is written, and what is
/// written must hash to `id` too. Returns the metadata object's bytes (for a caller
/// that checks completeness before the transaction is published), or `None` for files.
pub fn write_verified(
    txn: &Transaction<'_>,
    kind: ObjectKind,
    id: &ObjectId,
    header: &[u8],
    payload: &[u8],
) -> Result<Option<Vec<u8>>> {
    let forged = || format!("{kind} {id} does not hash to its id: the data is corrupt or forged");
    let (written, meta) = match kind {
        ObjectKind::File => {
            let h =
                FileHeader::decode(header).with_context(|| format!("the header of file {id}"))?;
            ensure!(h.id() == *id, "{}", forged());
            let written = match h.body {
                FileBody::Symlink { .. } => txn.write_symlink(payload, &h.meta)?,
                FileBody::Regular { .. } => {
                    txn.write_regular(payload, payload.len() as u64, &h.meta)?
                        .id
                }
            };
            (written, None)
        }
        _ => {
            ensure!(header.is_empty(), "{kind} {id} carries a file header");
            (txn.write_meta(kind, payload)?, Some(payload.to_vec()))
        }
    };
    ensure!(written == *id, "{}", forged());
    Ok(meta)
}

/// Stores an object whose sender left its id out (a version 2 delta), and returns the
/// id it hashes to, with a metadata object's bytes as [`write_verified`] does. A
/// regular file's header carries a zero content digest, computed here from `payload`.
/// Nothing here says the object is wanted: the caller proves that by finding its id
/// under a commit it trusts.
pub fn write_derived(
    txn: &Transaction<'_>,
    kind: ObjectKind,
    header: &[u8],
    payload: &[u8],
) -> Result<(ObjectId, Option<Vec<u8>>)> {
    if kind != ObjectKind::File {
        ensure!(header.is_empty(), "a {kind} that carries a file header");
        return Ok((txn.write_meta(kind, payload)?, Some(payload.to_vec())));
    }
    let h = FileHeader::decode(header).context("a file header")?;
    let id = match &h.body {
        FileBody::Symlink { target } => {
            ensure!(
                target == payload,
                "a symlink whose header and payload name different targets"
            );
            txn.write_symlink(payload, &h.meta)?
        }
        FileBody::Regular { size, content } => {
            ensure!(
                *content == [0; 32],
                "a file header that carries a content digest where none belongs"
            );
            ensure!(
                *size == payload.len() as u64,
                "a file header of {size} bytes for {} bytes of content",
                payload.len()
            );
            txn.write_regular(payload, *size, &h.meta)?.id
        }
    };
    Ok((id, None))
}
