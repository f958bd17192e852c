//! A publication's files as a client finds them in an OCI registry (docs/registry.md):
//! the TUF metadata by the titles of the [`oci::METADATA_TAG`] manifest, a channel
//! index by the digest in its name, and every other file by the SHA-256 the signed
//! metadata gives for it, kept in a [`Book`] as the verified index and object tables
//! arrive. A path nothing signed names is not asked for at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{Result, ensure};
use url::Url;

use super::http::{FetchError, Resolve};
use super::index::{ChannelIndex, FileRef};
use super::oci::{self, Credentials, Location, Registry};
use super::pack::Manifest;

/// Path → SHA-256 (hex) of the files a run may fetch, shared by a remote's clones.
#[derive(Clone, Debug, Default)]
pub struct Book(Arc<Mutex<HashMap<String, String>>>);

impl Book {
    fn insert(&self, f: &FileRef) {
        if let Some(sha) = &f.sha256 {
            self.0.lock().unwrap().insert(f.path.clone(), sha.clone());
        }
    }

    fn get(&self, rel: &str) -> Option<String> {
        self.0.lock().unwrap().get(rel).cloned()
    }

    /// Learns the digests a verified channel index gives (manifests, deltas, package
    /// lists, object tables).
    pub fn register_index(&self, idx: &ChannelIndex) {
        for v in &idx.versions {
            self.insert(&v.manifest);
            v.deltas.iter().for_each(|d| self.insert(&d.file));
            v.packages.iter().for_each(|f| self.insert(f));
            v.digests.iter().for_each(|f| self.insert(f));
        }
    }

    /// Learns each packed object's digest from a version's verified object table (32
    /// bytes per manifest entry, in order).
    pub fn register_objects(&self, m: &Manifest, table: &[u8]) -> Result<()> {
        ensure!(
            table.len() == m.entries.len() * 32,
            "the object table of {} has {} bytes for {} objects",
            m.commit,
            table.len(),
            m.entries.len()
        );
        let mut book = self.0.lock().unwrap();
        for (e, sha) in m.entries.iter().zip(table.chunks_exact(32)) {
            book.insert(e.path(), hex::encode(sha));
        }
        Ok(())
    }
}

/// Resolves paths to blobs of one registry repository.
pub struct OciFiles {
    registry: Registry,
    book: Book,
    /// Metadata paths of the `arbor-metadata` manifest, once read by this client.
    metadata: Mutex<Option<HashMap<String, String>>>,
}

impl OciFiles {
    /// Files of the repository at `loc`.
    pub fn new(
        loc: Location,
        creds: Credentials,
        timeout: std::time::Duration,
        book: Book,
    ) -> OciFiles {
        OciFiles {
            registry: Registry::new(loc, creds, timeout),
            book,
            metadata: Mutex::new(None),
        }
    }

    /// Reads the metadata manifest (the tag that moves).
    fn read_metadata(&self, rel: &str) -> Result<HashMap<String, String>, FetchError> {
        let url = self.registry.loc.manifest_url(oci::METADATA_TAG);
        let failed = |e: anyhow::Error| {
            let text = format!("{e:#}");
            let offline = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<arbor_core::error::Error>(),
                    Some(arbor_core::error::Error::Offline(_))
                )
            });
            if offline {
                FetchError::Offline {
                    url: url.to_string(),
                    detail: text,
                }
            } else {
                FetchError::Broken {
                    url: format!("{url} (for {rel})"),
                    detail: text,
                }
            }
        };
        let m = self
            .registry
            .manifest(oci::METADATA_TAG)
            .map_err(failed)?
            .ok_or_else(|| FetchError::NotFound {
                url: format!("{url}: no arbor publication is tagged here"),
            })?;
        Ok(m.files()
            .into_iter()
            .filter(|(p, _)| p.starts_with("metadata/"))
            .map(|(p, (sha, _))| (p, sha))
            .collect())
    }

    fn digest_of(&self, rel: &str) -> Result<Option<String>, FetchError> {
        if rel.starts_with("metadata/") {
            // Once per client: each verification of the metadata makes a new one, so
            // a check reads the tag once, and the files of one check agree.
            let mut metadata = self.metadata.lock().unwrap();
            if metadata.is_none() {
                *metadata = Some(self.read_metadata(rel)?);
            }
            return Ok(metadata.as_ref().and_then(|m| m.get(rel).cloned()));
        }
        if let Some(name) = rel.strip_prefix("targets/")
            && let Some((sha, _)) = name.split_once('.')
            && sha.len() == 64
            && sha.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Ok(Some(sha.to_ascii_lowercase()));
        }
        Ok(self.book.get(rel))
    }
}

impl Resolve for OciFiles {
    fn resolve(&self, rel: &str) -> Result<(Url, Option<String>), FetchError> {
        match self.digest_of(rel)? {
            Some(sha) => Ok((
                self.registry.loc.blob_url(&format!("sha256:{sha}")),
                self.registry.authorization(),
            )),
            None => Err(FetchError::NotFound {
                url: format!(
                    "{}{rel} (no digest for it in the signed metadata)",
                    self.registry.loc.api
                ),
            }),
        }
    }

    fn unauthorized(&self) -> bool {
        // The token may have expired: the manifest's read asks for a new one.
        self.registry
            .manifest(oci::METADATA_TAG)
            .map(|_| true)
            .unwrap_or(false)
    }
}
