//! SHA-256 beside BLAKE3 for every file a channel index names, and each version's
//! table of object digests: what a client following the publication in an OCI
//! registry asks the registry for, since registries name blobs by SHA-256
//! (docs/registry.md). Signed with the index, so the mapping is as trusted as it.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use rayon::prelude::*;
use sha2::Digest;

use arbor_core::fsutil;
use arbor_remote::index::FileRef;
use arbor_remote::pack::Manifest;

/// The [`FileRef`] of `dir/rel`: its size, BLAKE3 and SHA-256, from one read.
pub fn file_ref(dir: &Path, rel: &str) -> Result<FileRef> {
    let path = dir.join(rel);
    let mut f =
        std::fs::File::open(&path).with_context(|| format!("reading {}", path.display()))?;
    let (mut b3, mut s2) = (blake3::Hasher::new(), sha2::Sha256::new());
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        b3.update(&buf[..n]);
        s2.update(&buf[..n]);
        size += n as u64;
    }
    Ok(FileRef {
        path: rel.into(),
        size,
        blake3: b3.finalize().to_hex().to_string(),
        sha256: Some(hex::encode(s2.finalize())),
    })
}

/// The [`FileRef`] of bytes about to be written at `rel`.
pub fn bytes_ref(rel: &str, bytes: &[u8]) -> FileRef {
    FileRef {
        path: rel.into(),
        size: bytes.len() as u64,
        blake3: blake3::hash(bytes).to_hex().to_string(),
        sha256: Some(hex::encode(sha2::Sha256::digest(bytes))),
    }
}

/// Writes `manifests/<commit>.sha256`: the SHA-256 of each packed object of
/// `manifest`, in its order, read back from the published folder.
pub fn write_table(dir: &Path, manifest: &Manifest) -> Result<FileRef> {
    let digests: Vec<[u8; 32]> = manifest
        .entries
        .par_iter()
        .map(|e| {
            let path = dir.join(e.path());
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            Ok(sha2::Sha256::digest(&bytes).into())
        })
        .collect::<Result<_>>()?;
    let rel = format!("manifests/{}.sha256", manifest.commit);
    let bytes = digests.concat();
    fsutil::write_file_atomic(&dir.join(&rel), &bytes, 0o644)?;
    Ok(bytes_ref(&rel, &bytes))
}
