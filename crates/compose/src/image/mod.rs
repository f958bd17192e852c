//! `compose image`: committing an OCI container image, so that images built from
//! Containerfiles (podman, buildah, docker) deploy like any composed tree.
//!
//! The image is read from an OCI layout folder (`oci:DIR[:TAG]`), an OCI archive
//! (`oci-archive:FILE[:TAG]`), a registry (`docker://HOST/NAME[:TAG|@DIGEST]`, each blob
//! streamed as it is read), or podman's storage (`containers-storage:NAME`, copied to
//! a layout with skopeo first). Its layers are applied in order ([`layer`]) with every
//! blob checked against the manifest ([`oci`]); the tree then gets the same rules as
//! `compose rootfs` and is committed. Format and decisions: `docs/image.md`.
//!
//! The commit is a function of the image alone: no parent, the image's creation time,
//! its manifest digest in the metadata (`arbor.image.digest`), so importing the same
//! image twice, on any machine, gives the same commit id.

pub mod layer;
pub mod oci;

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use arbor_core::lock::LockWait;
use arbor_statedb::StateDb;
use arbor_store::commit::{CommitOptions, CommitResult};
use arbor_store::refs::RefName;
use arbor_store::scratch::ScratchDir;
use arbor_store::{Repo, Transaction};
use layer::{LayerStats, LayerWriter};
use oci::{Compression, Hasher, Layout};

pub use arbor_sysroot::IMAGE_DIGEST_KEY as DIGEST_KEY;

/// zstd frames that need a window larger than this (128 MiB) are refused, so a hostile
/// layer cannot make the decoder allocate without bound.
const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// Where an image comes from, as skopeo names transports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageSource {
    /// `oci:DIR[:TAG]`: an OCI image layout folder.
    OciDir { dir: PathBuf, tag: Option<String> },
    /// `oci-archive:FILE[:TAG]`: the same, as a tar archive.
    OciArchive { file: PathBuf, tag: Option<String> },
    /// `containers-storage:NAME`: podman's (or buildah's) local storage.
    ContainersStorage { name: String },
    /// `docker://HOST/NAME[:TAG|@DIGEST]` (or `registry:HOST/NAME…`): an image in a
    /// registry, its layers streamed into the store as they arrive.
    Registry { spec: String },
}

/// Splits `PATH[:TAG]`: a last `:` followed by something without `/` is a tag.
fn path_and_tag(s: &str) -> (PathBuf, Option<String>) {
    match s.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') && !p.is_empty() && !t.is_empty() => {
            (PathBuf::from(p), Some(t.to_string()))
        }
        _ => (PathBuf::from(s), None),
    }
}

impl FromStr for ImageSource {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (transport, rest) = s.split_once(':').with_context(|| {
            format!(
                "'{s}' names no transport: use oci:DIR[:TAG], oci-archive:FILE[:TAG], \
                 containers-storage:NAME or docker://HOST/NAME[:TAG]"
            )
        })?;
        if rest.is_empty() {
            bail!("'{s}' names no image after '{transport}:'");
        }
        Ok(match transport {
            "oci" => {
                let (dir, tag) = path_and_tag(rest);
                ImageSource::OciDir { dir, tag }
            }
            "oci-archive" => {
                let (file, tag) = path_and_tag(rest);
                ImageSource::OciArchive { file, tag }
            }
            "containers-storage" => ImageSource::ContainersStorage {
                name: rest.to_string(),
            },
            "docker" | "registry" => {
                let spec = rest.trim_start_matches("//");
                if !spec.contains('/') {
                    bail!("'{s}': give the registry and the image, HOST/NAME[:TAG|@DIGEST]");
                }
                ImageSource::Registry { spec: spec.into() }
            }
            other => bail!(
                "transport '{other}' is not supported: use oci:, oci-archive:, \
                 containers-storage: or docker://"
            ),
        })
    }
}

/// What to commit the image as.
#[derive(Clone, Debug)]
pub struct ImageOptions {
    /// The branch that will point at the commit.
    pub branch: RefName,
    /// `version` metadata; default: the image's `org.opencontainers.image.version` label.
    pub version: Option<String>,
    /// A compressed layer may unpack to at most this many times its size (plus 1 MiB):
    /// the bound that stops a decompression bomb. OS layers unpack 2 to 5 times.
    pub max_ratio: u64,
}

/// [`ImageOptions::max_ratio`] unless the caller says otherwise.
pub const DEFAULT_MAX_RATIO: u64 = 64;

/// What an import did.
#[derive(Clone, Debug, Serialize)]
pub struct ImageImport {
    /// The commit.
    pub commit: CommitResult,
    /// The image's manifest digest.
    pub digest: String,
    /// What each layer held, bottom first.
    pub layers: Vec<LayerStats>,
}

/// Hashes and counts what passes, refusing more than `limit` bytes.
struct Counting<R> {
    inner: R,
    hasher: Option<Hasher>,
    read: u64,
    limit: u64,
    what: String,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} unpacks to more than {} bytes (the bound is its compressed size times \
                     --max-ratio, and the free space of the repository): refusing it",
                    self.what, self.limit
                ),
            ));
        }
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// Copies a containers-storage image to a layout folder with skopeo.
fn from_containers_storage(name: &str, dir: &Path) -> Result<()> {
    let out = Command::new("skopeo")
        .arg("copy")
        .arg("--quiet")
        .arg(format!("containers-storage:{name}"))
        .arg(format!("oci:{}:arbor", dir.display()))
        .output()
        .context("running skopeo (Debian package skopeo) to read containers-storage")?;
    if !out.status.success() {
        bail!(
            "skopeo could not copy containers-storage:{name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The bytes free on the file system of `path`.
fn free_bytes(path: &Path) -> Result<u64> {
    let v = rustix::fs::statvfs(path)?;
    Ok(v.f_bavail.saturating_mul(v.f_frsize))
}

/// Imports the image into `repo` and commits it to `opts.branch`. On any error
/// nothing is published and the branch is unchanged.
pub fn compose_image(
    repo: &Repo,
    source: &ImageSource,
    opts: &ImageOptions,
    wait: LockWait<'_>,
) -> Result<ImageImport> {
    let scratch = ScratchDir::new(repo.path(), "image")?;
    let layout = match source {
        ImageSource::OciDir { dir, .. } => Layout::open_dir(dir)?,
        ImageSource::OciArchive { file, .. } => Layout::open_archive(file)?,
        ImageSource::ContainersStorage { name } => {
            let dir = scratch.path().join("oci");
            from_containers_storage(name, &dir)?;
            Layout::open_dir(&dir)?
        }
        ImageSource::Registry { spec } => Layout::open_registry(spec)?,
    };
    let tag = match source {
        ImageSource::OciDir { tag, .. } | ImageSource::OciArchive { tag, .. } => tag.as_deref(),
        ImageSource::ContainersStorage { .. } => Some("arbor"),
        ImageSource::Registry { .. } => None,
    };
    let image = layout.image(tag)?;
    let root = scratch.path().join("root");
    std::fs::create_dir(&root)?;
    let mut room = free_bytes(repo.path())?;
    let txn = Transaction::begin(repo, wait)?;
    let mut writer = LayerWriter::new(&txn, arbor_core::fsutil::open_dir(&root)?);
    let mut layers = Vec::new();
    let diff_ids = image.config.rootfs().diff_ids().clone();
    for (i, (desc, diff_id)) in image.manifest.layers().iter().zip(&diff_ids).enumerate() {
        let what = format!("layer {} of {}", i + 1, image.manifest.layers().len());
        let mut blob = layout.blob(desc, &what)?;
        let compression = Compression::of(desc.media_type())?;
        let limit = match compression {
            Compression::None => desc.size(),
            _ => desc
                .size()
                .saturating_mul(opts.max_ratio)
                .saturating_add(1 << 20),
        }
        .min(room);
        let plain: Box<dyn Read> = match compression {
            Compression::None => Box::new(&mut blob),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut blob)),
            Compression::Zstd => {
                let mut d = zstd::stream::read::Decoder::new(&mut blob)?;
                d.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
                Box::new(d)
            }
        };
        let mut tar = Counting {
            inner: plain,
            hasher: Some(Hasher::for_digest(diff_id)?),
            read: 0,
            limit,
            what: what.clone(),
        };
        let applied = writer.apply(&mut tar, &what).and_then(|stats| {
            // The tar's end-of-archive padding is part of the uncompressed digest.
            io::copy(&mut tar, &mut io::sink())
                .with_context(|| format!("{what}: reading its end"))?;
            let got = tar.hasher.take().expect("hashed once").finish();
            if got != *diff_id {
                bail!("{what} unpacks to {got}, not the {diff_id} the image config declares");
            }
            Ok(stats)
        });
        room = room.saturating_sub(tar.read);
        drop(tar);
        // A blob that is not what the manifest says explains any other failure.
        blob.verify()?;
        layers.push(applied?);
    }
    let rows = std::mem::take(&mut writer.rows);
    drop(writer);
    // The objects are durable before the tree that links them is committed.
    txn.finish(&[])?;
    if let Ok(mut db) = StateDb::open(&repo.state_db_path()) {
        let _ = db.store_inode_cache(rows.into_iter().collect());
    }
    let labels = image
        .config
        .config()
        .as_ref()
        .and_then(|c| c.labels().clone())
        .unwrap_or_default();
    let version = opts
        .version
        .clone()
        .or_else(|| labels.get("org.opencontainers.image.version").cloned());
    let mut metadata = vec![(DIGEST_KEY.to_string(), image.digest.clone())];
    if let Some(v) = version {
        metadata.push(("version".to_string(), v));
    }
    let timestamp = match image.config.created() {
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .with_context(|| format!("the image's creation time '{t}' is not RFC 3339"))?
            .timestamp(),
        None => arbor_store::commit::source_date_epoch()?.unwrap_or(0),
    };
    let commit_opts = CommitOptions {
        branch: opts.branch.clone(),
        subject: format!("image {}", image.digest),
        body: String::new(),
        metadata,
        timestamp,
        orphan: true,
        skip_special: true,
        use_cache: true,
        progress: None,
    };
    let commit = crate::compose_staged(repo, &root, &commit_opts, wait)?;
    Ok(ImageImport {
        commit,
        digest: image.digest,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_parse() {
        assert_eq!(
            "oci:/srv/img:latest".parse::<ImageSource>().unwrap(),
            ImageSource::OciDir {
                dir: "/srv/img".into(),
                tag: Some("latest".into())
            }
        );
        assert_eq!(
            "oci:/srv/img".parse::<ImageSource>().unwrap(),
            ImageSource::OciDir {
                dir: "/srv/img".into(),
                tag: None
            }
        );
        assert_eq!(
            "oci-archive:./a.tar".parse::<ImageSource>().unwrap(),
            ImageSource::OciArchive {
                file: "./a.tar".into(),
                tag: None
            }
        );
        assert_eq!(
            "containers-storage:localhost/base"
                .parse::<ImageSource>()
                .unwrap(),
            ImageSource::ContainersStorage {
                name: "localhost/base".into()
            }
        );
        assert_eq!(
            "docker://127.0.0.1:5000/os/img:7"
                .parse::<ImageSource>()
                .unwrap(),
            ImageSource::Registry {
                spec: "127.0.0.1:5000/os/img:7".into()
            }
        );
        assert_eq!(
            "registry:quay.io/os/img".parse::<ImageSource>().unwrap(),
            ImageSource::Registry {
                spec: "quay.io/os/img".into()
            }
        );
        for bad in ["docker://x", "oci:", "plain", "dir:/x"] {
            assert!(bad.parse::<ImageSource>().is_err(), "{bad}");
        }
    }
}
