//! The layers of images already imported, kept so that the next image that shares
//! its lower layers fetches only the ones above them.
//!
//! A layer's effect depends on every layer under it, so what is kept is the tree a
//! *chain* of layers makes: the OCI spec's ChainID (`chain(1) = diff_id(1)`,
//! `chain(n) = sha256(chain(n-1) + " " + diff_id(n))`) names the tree that layers 1..n
//! unpack to. After each layer an import commits that raw tree (before `compose`
//! shapes it) to the ref `image-layers/<chain hex>`; the next import starts from the
//! highest chain it finds, checked out by hardlinks, and fetches only what lies above.
//! Only the chains of the newest image in use are kept ([`keep_only`]): a cache, not a
//! history, and the commits stay reachable from the deployments that use them anyway.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use arbor_core::lock::LockWait;
use arbor_store::refs::RefName;
use arbor_store::{ObjectId, Repo, Transaction};

/// The ref prefix of the kept chains.
pub const PREFIX: &str = "image-layers";

/// The ChainIDs of an image's layers, bottom first, from their uncompressed digests.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(below) => {
                let mut h = Sha256::new();
                h.update(below.as_bytes());
                h.update(b" ");
                h.update(d.as_bytes());
                format!("sha256:{}", hex::encode(h.finalize()))
            }
        };
        out.push(next);
    }
    out
}

/// The ref that keeps the tree of `chain` (`algorithm:hex`).
pub fn ref_name(chain: &str) -> Result<RefName> {
    let hex = chain.split_once(':').map_or(chain, |(_, h)| h);
    RefName::parse(&format!("{PREFIX}/{hex}"))
        .with_context(|| format!("'{chain}' is not a layer chain id"))
}

/// The highest chain of `chains` whose tree the repository keeps: (how many layers it
/// covers, its commit). None when no layer of the image is known.
pub fn highest_kept(repo: &Repo, chains: &[String]) -> Option<(usize, ObjectId)> {
    chains.iter().enumerate().rev().find_map(|(i, c)| {
        let commit = repo.read_ref(&ref_name(c).ok()?).ok()??;
        // A commit whose objects are gone (a damaged repository) is no base.
        repo.load_commit(&commit).ok()?;
        Some((i + 1, commit))
    })
}

/// Drops the kept chains that are not among `keep`: called once the image an import
/// made is in use (committed for `compose image`, deployed for `switch`), so a failed
/// switch does not throw away the layers the running image's upgrade will want.
pub fn keep_only(repo: &Repo, keep: &[String], wait: LockWait<'_>) -> Result<()> {
    let keep: Vec<RefName> = keep.iter().map(|c| ref_name(c)).collect::<Result<_>>()?;
    let drops: Vec<(RefName, Option<ObjectId>)> = repo
        .list_refs()?
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| name.remote.is_none() && name.name.starts_with(&format!("{PREFIX}/")))
        .filter(|name| !keep.contains(name))
        .map(|name| (name, None))
        .collect();
    if !drops.is_empty() {
        Transaction::begin(repo, wait)?.finish(&drops)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_spec() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let chains = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chains[0], a);
        let mut h = Sha256::new();
        h.update(format!("{a} {b}").as_bytes());
        assert_eq!(chains[1], format!("sha256:{}", hex::encode(h.finalize())));
        // The same layer over another base is another chain.
        assert_ne!(chain_ids(&[b.clone(), b.clone()])[1], chains[1]);
        assert_eq!(
            ref_name(&chains[1]).unwrap().to_string(),
            format!("{PREFIX}/{}", &chains[1][7..])
        );
    }
}
