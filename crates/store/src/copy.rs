//! Copying a commit from one repository into another on this machine: what `install
//! to-disk --source REF` does to fill the new disk's store from the host's. Every
//! object is written through the target's transaction, so it is hashed again and must
//! match its id: a corrupt source object stops the copy instead of spreading.

use anyhow::{Context, Result, bail};

use super::reach::walk_commit;
use super::refs::RefName;
use super::{ObjectId, ObjectKind, Repo, Transaction};
use arbor_core::lock::LockWait;

/// What a copy did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CopyStats {
    /// Objects the target lacked and now has.
    pub objects: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// Copies `commit` (its tree, not its history) from `src` into `dst` and points
/// `branch` of `dst` at it. Nothing is published unless every object arrived intact.
pub fn copy_commit(
    src: &Repo,
    dst: &Repo,
    commit: &ObjectId,
    branch: &RefName,
    wait: LockWait<'_>,
) -> Result<CopyStats> {
    let reach = walk_commit(src, commit);
    if let Some((id, kind, at, e)) = reach.unreadable.first() {
        bail!("cannot read {kind} {id} (used by {at}) in the source repository: {e}");
    }
    let txn = Transaction::begin(dst, wait)?;
    let mut stats = CopyStats::default();
    for ((id, kind), used_by) in &reach.objects {
        if txn.is_present(id, *kind) {
            continue;
        }
        let copied = match kind {
            ObjectKind::File => {
                let info = src.file_info(id)?;
                match &info.target {
                    Some(target) => txn.write_symlink(target, &info.meta)?,
                    None => {
                        let f = src.open_file_object(id)?;
                        let w = txn.write_regular_file(&f, info.size, &info.meta)?;
                        stats.bytes += w.size;
                        w.id
                    }
                }
            }
            _ => txn.write_meta(*kind, &src.read_meta_object(id, *kind)?)?,
        };
        if copied != *id {
            bail!(
                "{kind} {id} (used by {used_by}) is corrupt in the source repository: it hashes to {copied}; run 'arbor fsck' there"
            );
        }
        stats.objects += 1;
    }
    txn.finish(&[(branch.clone(), Some(*commit))])
        .context("publishing the copied objects")?;
    Ok(stats)
}
