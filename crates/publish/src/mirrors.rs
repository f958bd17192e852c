//! The mirrors a channel's signed index names (docs/remote.md, "Mirrors"): machines
//! ask them after the servers they were configured with, so a publisher can add a
//! region or a CDN without touching a single machine.

use anyhow::Result;

use arbor_core::lock::LockWait;
use arbor_remote::index::ChannelIndex;
use arbor_remote::mirror_url::{MAX_MIRRORS, check_named};

use super::Publisher;

impl Publisher {
    /// Sets the mirrors channel `channel`'s index names (empty: none) and signs it
    /// again. Each is an http(s) folder URL or a registry (oci://) serving a copy of
    /// this publication.
    pub fn set_mirrors(
        &self,
        channel: &str,
        mirrors: &[String],
        wait: LockWait<'_>,
    ) -> Result<ChannelIndex> {
        anyhow::ensure!(
            mirrors.len() <= MAX_MIRRORS,
            "{} mirrors: at most {MAX_MIRRORS}",
            mirrors.len()
        );
        let mut urls = Vec::new();
        for m in mirrors {
            urls.push(check_named(m)?.to_string());
        }
        let _lock = self.lock(wait)?;
        let mut idx = self.channel(channel)?;
        anyhow::ensure!(
            !idx.versions.is_empty(),
            "channel {channel} has no versions yet ('arbor publish add' first)"
        );
        idx.mirrors = urls;
        self.sign(Some(&idx))?;
        Ok(idx)
    }
}
