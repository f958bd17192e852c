//! Keeping the repository's roots ([`arbor_store::roots`]) equal to the deployments.
//!
//! The order of writes makes every prune safe: a deployment's root is written before
//! the deployment can be seen (before its folder is renamed into place and its boot
//! entry or staged record is written), and dropped only after it is gone. A crash in
//! between leaves an extra root, which keeps a few objects alive until the next
//! transaction syncs the roots again; never a deployment without one.

use std::collections::BTreeMap;

use anyhow::Result;

use super::{Deployment, Sysroot};
use arbor_core::lock::WriterLock;
use arbor_store::ObjectId;

/// The root name of a deployment: `<os>/<commit>.<serial>`.
pub fn root_name(d: &Deployment) -> String {
    format!("{}/{}", d.os, d.dir_name())
}

/// The root name of a deployment's `/etc` snapshot.
pub fn etc_root_name(d: &Deployment) -> String {
    format!("{}.etc", root_name(d))
}

impl Sysroot {
    /// Records the root of a deployment about to be made.
    pub fn add_root(&self, lock: &WriterLock, d: &Deployment) -> Result<()> {
        self.repo().write_root(lock, &root_name(d), Some(&d.commit))
    }

    /// Makes the stored roots exactly the deployments' (boot entries and the staged
    /// one) and their `/etc` snapshots: adds what is missing, drops what is stale.
    pub fn sync_roots(&self, lock: &WriterLock) -> Result<()> {
        let mut live = self.deployments()?;
        live.extend(self.staged()?);
        let stored: BTreeMap<String, ObjectId> = self
            .repo()
            .list_roots()?
            .into_iter()
            .map(|r| (r.name, r.commit))
            .collect();
        let mut wanted: BTreeMap<String, ObjectId> = BTreeMap::new();
        for d in &live {
            wanted.insert(root_name(d), d.commit);
            let snap = etc_root_name(d);
            if let Some(id) = stored.get(&snap) {
                wanted.insert(snap, *id);
            }
        }
        self.repo().init_roots(lock)?;
        for (name, id) in &wanted {
            if stored.get(name) != Some(id) {
                self.repo().write_root(lock, name, Some(id))?;
            }
        }
        for name in stored.keys().filter(|n| !wanted.contains_key(*n)) {
            self.repo().write_root(lock, name, None)?;
        }
        Ok(())
    }

    /// Records the roots once on a sysroot made before they existed, so that a prune
    /// through `--repo` can trust them. Best effort: a sysroot whose entries cannot be
    /// read keeps working, and such a prune keeps refusing.
    pub(crate) fn ensure_roots(&self, lock: &WriterLock) {
        if !self.repo().has_roots() {
            if let Err(e) = self.sync_roots(lock) {
                tracing::warn!("recording the deployments as roots of the repository: {e:#}");
            }
        }
    }
}
