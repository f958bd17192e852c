//! The client the TUF project's conformance suite drives (its CLIENT-CLI.md: `init`,
//! `refresh`, `download`), over the same code path `arbor remote` uses: [`tuf::load`]
//! with arbor's HTTP client, its bounds and its datastore. It exists so that an
//! outside judge tests arbor's TUF client, not a fresh use of the library.
//!
//! The suite reads the trusted metadata from the metadata folder as `root.json`,
//! `timestamp.json`, …, and every `.json` there must be metadata. tough's datastore
//! also keeps `latest_known_time.json`, so the datastore is a hidden folder inside,
//! and its role files are mirrored next to it after every run.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::Digest;
use url::Url;

use super::http::Http;
use super::tuf;
use arbor_core::fsutil;

/// The datastore folder inside the metadata folder.
const DATASTORE: &str = ".arbor-tuf";
/// The datastore file that is not metadata.
const NOT_METADATA: &str = "latest_known_time.json";

/// A client's local state: the folder of trusted metadata.
pub struct TufClient {
    metadata_dir: PathBuf,
}

impl TufClient {
    /// The client keeping its trusted metadata in `metadata_dir`.
    pub fn new(metadata_dir: &Path) -> TufClient {
        TufClient {
            metadata_dir: metadata_dir.to_path_buf(),
        }
    }

    fn datastore(&self) -> PathBuf {
        self.metadata_dir.join(DATASTORE)
    }

    /// Trusts `root` (the out-of-band root metadata); fetches nothing.
    pub fn init(&self, root: &Path) -> Result<()> {
        let bytes = std::fs::read(root).with_context(|| format!("reading {}", root.display()))?;
        serde_json::from_slice::<tough::schema::Signed<tough::schema::Root>>(&bytes)
            .with_context(|| format!("{} is not TUF root metadata", root.display()))?;
        std::fs::create_dir_all(&self.metadata_dir)?;
        fsutil::write_file_atomic(&self.metadata_dir.join("root.json"), &bytes, 0o644)?;
        Ok(())
    }

    /// Updates the top-level metadata from the repository at `metadata_url`.
    pub fn refresh(&self, metadata_url: &str) -> Result<()> {
        self.run(metadata_url, None, |_, _, _| Ok(()))
    }

    /// Refreshes, then downloads each target in order into `target_dir` (stopping at
    /// the first failure). A target already there with the signed length and hashes is
    /// not fetched again. Returns the files written or kept.
    pub fn download(
        &self,
        metadata_url: &str,
        targets_url: &str,
        names: &[String],
        target_dir: &Path,
    ) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(target_dir)?;
        self.run(metadata_url, Some(targets_url), |http, repo, targets| {
            let mut out = Vec::new();
            for name in names {
                let file = target_dir.join(file_name(name));
                if !cached(&repo, name, &file)? {
                    let bytes = tuf::read_target(http, &repo, targets, name)?
                        .ok_or_else(|| anyhow::anyhow!("no target '{name}' in the repository"))?;
                    fsutil::write_file_atomic(&file, &bytes, 0o644)?;
                }
                out.push(file);
            }
            Ok(out)
        })
    }

    /// Loads the repository and runs `then` on it; mirrors the datastore into the
    /// metadata folder afterwards, also on failure (what tough verified before the
    /// failure is trusted from then on, as the workflow says).
    fn run<T>(
        &self,
        metadata_url: &str,
        targets_url: Option<&str>,
        then: impl FnOnce(&Http, tough::Repository, &Url) -> Result<T>,
    ) -> Result<T> {
        let http = Http::new(metadata_url)?;
        let metadata = http.url("")?;
        let targets = match targets_url {
            Some(t) => Http::new(t)?.url("")?,
            // tough needs a targets URL even when none is read.
            None => metadata.join("../targets/")?,
        };
        let root = std::fs::read(self.metadata_dir.join("root.json"))
            .context("no trusted root: run init first")?;
        let datastore = self.datastore();
        let result = tuf::runtime()?
            .block_on(tuf::load(
                &http,
                metadata,
                targets.clone(),
                &root,
                &datastore,
            ))
            .and_then(|repo| then(&http, repo, &targets));
        self.mirror()?;
        result
    }

    /// Makes the metadata folder's `.json` files those of the datastore.
    fn mirror(&self) -> Result<()> {
        let datastore = self.datastore();
        let raw = tuf::RawMetadata::new(&datastore);
        let is_role = |name: &str| name.ends_with(".json") && name != NOT_METADATA;
        let mut kept = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&datastore) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if is_role(&name) {
                    // The bytes as the repository sent them, where they are known.
                    let bytes = match raw.trusted(&name) {
                        Some((bytes, _)) => bytes,
                        None => std::fs::read(e.path())?,
                    };
                    fsutil::write_file_atomic(&self.metadata_dir.join(&name), &bytes, 0o644)?;
                    kept.push(name);
                }
            }
        }
        for e in std::fs::read_dir(&self.metadata_dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // The root stays even before the datastore has one (init wrote it).
            if is_role(&name) && name != "root.json" && !kept.contains(&name) {
                std::fs::remove_file(e.path())?;
            }
        }
        Ok(())
    }
}

/// One flat file per target name: percent-encoded, so `a/b` and `a%2Fb` stay apart
/// and nothing escapes the folder.
fn file_name(target: &str) -> String {
    let name: String = url::form_urlencoded::byte_serialize(target.as_bytes()).collect();
    // Dots are left as they are: a leading one is encoded so that no name is `.`,
    // `..` or hidden.
    match name.strip_prefix('.') {
        Some(rest) => format!("%2E{rest}"),
        None => name,
    }
}

/// True when `file` holds what the targets metadata says target `name` is.
fn cached(repo: &tough::Repository, name: &str, file: &Path) -> Result<bool> {
    let Ok(bytes) = std::fs::read(file) else {
        return Ok(false);
    };
    let target = tough::TargetName::new(name).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let Ok(signed) = repo.targets().signed.find_target(&target, false) else {
        return Ok(false);
    };
    Ok(signed.length == bytes.len() as u64
        && signed.hashes.sha256.as_ref() == sha2::Sha256::digest(&bytes).as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_file_names_are_flat_and_distinct() {
        assert_eq!(file_name("a.txt"), "a.txt");
        assert_ne!(file_name("a/b"), file_name("a%2Fb"));
        for n in ["../x", "/etc/passwd", "a/../../b", ".."] {
            let f = file_name(n);
            assert!(!f.contains('/') && f != ".." && f != ".", "{n} -> {f}");
        }
    }
}
