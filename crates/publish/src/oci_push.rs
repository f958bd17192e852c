//! Publishing into an OCI registry (docs/registry.md). The publication is made in a
//! local folder as always (for `oci://` the staging copy kept in the keys folder);
//! then its new files are pushed as blobs, then image manifests that reference them
//! (so the registry's garbage collection keeps them), and the metadata manifest's tag
//! last: as `timestamp.json` is the last file written to a folder, that tag is the
//! switch. A push that stops half-way is simply run again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use sha2::Digest;

use arbor_core::fsutil;
use arbor_remote::oci::{self, ImageManifest, Registry};

/// How many files one content manifest lists (registries refuse manifests over 4 MiB).
const FILES_PER_MANIFEST: usize = 1000;

/// What a push did.
#[derive(Debug, Default, Serialize)]
pub struct PushResult {
    /// Where to.
    pub registry: String,
    /// Blobs uploaded.
    pub blobs_pushed: u64,
    /// Their bytes.
    pub bytes_pushed: u64,
    /// Files the registry already held.
    pub blobs_present: u64,
    /// The digest of the new metadata manifest (tag [`oci::METADATA_TAG`]).
    pub metadata_manifest: String,
}

/// The record of what a registry holds, beside the folder: path → SHA-256.
fn state_path(dir: &Path, registry: &Registry) -> PathBuf {
    let key: String = format!("{}/{}", registry.loc.host, registry.loc.name)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    dir.join(".oci").join(format!("{key}.json"))
}

/// Every file of the publication (not the dot-folders of work in progress and
/// records, nor health reports), relative, sorted.
fn files(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for top in [
        "objects",
        "manifests",
        "deltas",
        "packages",
        "targets",
        "metadata",
    ] {
        let root = dir.join(top);
        if !root.exists() {
            continue;
        }
        let mut stack = vec![root];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
                let e = e?;
                let name = e.file_name().to_string_lossy().into_owned();
                let t = e.file_type()?;
                if name.starts_with('.') || name.ends_with(".tmp") {
                    continue;
                }
                if t.is_dir() {
                    stack.push(e.path());
                } else if t.is_file() {
                    let rel = e.path().strip_prefix(dir)?.to_string_lossy().into_owned();
                    out.push(rel);
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The metadata files a client needs: every root, the newest snapshot and targets,
/// and the timestamp.
fn current_metadata(all: &[String]) -> Vec<String> {
    let newest = |suffix: &str| {
        all.iter()
            .filter_map(|p| {
                let n = p.strip_prefix("metadata/")?.strip_suffix(suffix)?;
                Some((n.parse::<u64>().ok()?, p.clone()))
            })
            .max()
            .map(|(_, p)| p)
    };
    let mut out: Vec<String> = all
        .iter()
        .filter(|p| p.starts_with("metadata/") && p.ends_with(".root.json"))
        .cloned()
        .collect();
    out.extend(newest(".snapshot.json"));
    out.extend(newest(".targets.json"));
    out.extend(
        all.iter()
            .find(|p| *p == "metadata/timestamp.json")
            .cloned(),
    );
    out
}

/// Pushes the published folder `dir` to `registry`.
pub fn push(dir: &Path, registry: &Registry) -> Result<PushResult> {
    let state_file = state_path(dir, registry);
    let mut held: BTreeMap<String, String> = std::fs::read(&state_file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut r = PushResult {
        registry: format!("oci://{}/{}", registry.loc.host, registry.loc.name),
        ..PushResult::default()
    };
    let all = files(dir)?;
    let upload = |rel: &str, r: &mut PushResult| -> Result<(String, u64)> {
        let bytes = std::fs::read(dir.join(rel)).with_context(|| format!("reading {rel}"))?;
        let sha = hex::encode(sha2::Sha256::digest(&bytes));
        if registry.has_blob(&format!("sha256:{sha}"))? {
            r.blobs_present += 1;
        } else {
            registry
                .push_blob(&bytes)
                .with_context(|| format!("pushing {rel}"))?;
            r.blobs_pushed += 1;
            r.bytes_pushed += bytes.len() as u64;
        }
        Ok((sha, bytes.len() as u64))
    };
    if !registry.has_blob(&oci::digest_of(b"{}"))? {
        registry.push_blob(b"{}")?;
    }
    // Content first: files named by their content or version never change, so one the
    // record says is held is not read again.
    let mut new = Vec::new();
    for rel in all.iter().filter(|p| !p.starts_with("metadata/")) {
        if held.contains_key(rel) {
            continue;
        }
        let (sha, size) = upload(rel, &mut r)?;
        new.push((rel.clone(), sha, size));
    }
    let stamp = chrono::Utc::now().format("%Y%m%d%H%M%S%f");
    for (i, chunk) in new.chunks(FILES_PER_MANIFEST).enumerate() {
        registry.push_manifest(
            &format!("arbor-files-{stamp}-{i}"),
            &ImageManifest::of_files(chunk),
        )?;
    }
    for (rel, sha, _) in &new {
        held.insert(rel.clone(), sha.clone());
    }
    save(&state_file, &held)?;
    // Then the metadata, and its tag last: the switch.
    let mut meta = Vec::new();
    for rel in current_metadata(&all) {
        let (sha, size) = upload(&rel, &mut r)?;
        meta.push((rel, sha, size));
    }
    r.metadata_manifest =
        registry.push_manifest(oci::METADATA_TAG, &ImageManifest::of_files(&meta))?;
    Ok(r)
}

fn save(path: &Path, held: &BTreeMap<String, String>) -> Result<()> {
    std::fs::create_dir_all(path.parent().unwrap())?;
    fsutil::write_file_atomic(path, &serde_json::to_vec(held)?, 0o644)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metadata_manifest_lists_every_root_and_the_newest_of_the_rest() {
        let all: Vec<String> = [
            "metadata/1.root.json",
            "metadata/2.root.json",
            "metadata/1.snapshot.json",
            "metadata/10.snapshot.json",
            "metadata/9.snapshot.json",
            "metadata/10.targets.json",
            "metadata/timestamp.json",
            "objects/ab/cd.file",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            current_metadata(&all),
            [
                "metadata/1.root.json",
                "metadata/2.root.json",
                "metadata/10.snapshot.json",
                "metadata/10.targets.json",
                "metadata/timestamp.json"
            ]
        );
    }
}
