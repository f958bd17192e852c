//! Importing one image: opened once (its manifest and configuration verified, so a
//! tag that moves afterwards changes nothing), then its layers applied on the highest
//! tree an earlier import kept ([`super::chain`]), each fetched layer streamed into the
//! store as it arrives, and the result committed as `compose` commits a tree.

use std::io::{self, Read};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::chain;
use super::layer::{LayerStats, LayerWriter};
use super::oci::{Compression, Hasher, Image, Layout};
use super::{DIGEST_KEY, ImageImport, ImageOptions, ImageSource, ZSTD_WINDOW_LOG_MAX};
use arbor_core::lock::LockWait;
use arbor_statedb::StateDb;
use arbor_store::checkout::{CheckoutMode, checkout};
use arbor_store::commit::{CommitOptions, commit_tree_unrecorded};
use arbor_store::scratch::ScratchDir;
use arbor_store::{Repo, Transaction};

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

/// An image found and verified (manifest and configuration), its layers not read yet.
pub struct OpenedImage {
    // Field order matters: the layout may read from the scratch folder.
    layout: Layout,
    image: Image,
    scratch: ScratchDir,
}

impl OpenedImage {
    /// Finds the image `source` names (for a registry: resolves its tag now, once).
    /// `login` is a credentials file for a registry (docs/registry.md, "Logins").
    pub fn open(repo: &Repo, source: &ImageSource, login: Option<&Path>) -> Result<OpenedImage> {
        let scratch = ScratchDir::new(repo.path(), "image")?;
        let layout = match source {
            ImageSource::OciDir { dir, .. } => Layout::open_dir(dir)?,
            ImageSource::OciArchive { file, .. } => Layout::open_archive(file)?,
            ImageSource::ContainersStorage { name } => {
                let dir = scratch.path().join("oci");
                from_containers_storage(name, &dir)?;
                Layout::open_dir(&dir)?
            }
            ImageSource::Registry { spec } => Layout::open_registry(spec, login)?,
        };
        let tag = match source {
            ImageSource::OciDir { tag, .. } | ImageSource::OciArchive { tag, .. } => tag.as_deref(),
            ImageSource::ContainersStorage { .. } => Some("arbor"),
            ImageSource::Registry { .. } => None,
        };
        let image = layout.image(tag)?;
        Ok(OpenedImage {
            layout,
            image,
            scratch,
        })
    }

    /// The image's manifest digest (`sha256:…`): its identity.
    pub fn digest(&self) -> &str {
        &self.image.digest
    }

    /// Imports the image into `repo` and commits it to `opts.branch`. On any error the
    /// branch is unchanged; the layers verified and applied before it stay kept
    /// ([`chain`]), so that a retry fetches only what lies above them.
    pub fn import(
        self,
        repo: &Repo,
        opts: &ImageOptions,
        wait: LockWait<'_>,
    ) -> Result<ImageImport> {
        let image = &self.image;
        let diff_ids = image.config.rootfs().diff_ids().clone();
        let descs = image.manifest.layers();
        if diff_ids.len() != descs.len() {
            bail!(
                "{}: the manifest has {} layers but the config declares {}",
                self.layout.label(),
                descs.len(),
                diff_ids.len()
            );
        }
        let chains = chain::chain_ids(&diff_ids);
        let root = self.scratch.path().join("root");
        let reused = match chain::highest_kept(repo, &chains) {
            Some((n, commit)) => {
                checkout(repo, &commit, &root, CheckoutMode::Hardlink, None)
                    .context("checking out the layers kept from an earlier import")?;
                n
            }
            None => {
                std::fs::create_dir(&root)?;
                0
            }
        };
        let mut room = free_bytes(repo.path())?;
        let mut layers = Vec::new();
        let mut fetched_bytes = 0;
        for (i, desc) in descs.iter().enumerate().skip(reused) {
            let what = format!("layer {} of {}", i + 1, descs.len());
            let stats = self.apply_layer(
                repo,
                &root,
                desc,
                &diff_ids[i],
                &what,
                opts,
                &mut room,
                wait,
            )?;
            fetched_bytes += desc.size();
            layers.push(stats);
            // The raw tree (before compose shapes it) is what the next image's upper
            // layers apply to.
            let keep = CommitOptions {
                branch: chain::ref_name(&chains[i])?,
                subject: format!("image layers {}", chains[i]),
                body: String::new(),
                metadata: Vec::new(),
                timestamp: 0,
                orphan: true,
                skip_special: true,
                use_cache: true,
                progress: None,
            };
            commit_tree_unrecorded(repo, &root, &keep, wait)
                .with_context(|| format!("keeping the tree of {what}"))?;
        }
        let commit = self.commit(repo, &root, opts, wait)?;
        Ok(ImageImport {
            commit,
            digest: self.image.digest.clone(),
            layers,
            layers_reused: reused,
            fetched_bytes,
            chains,
        })
    }

    /// Streams one layer into the store and applies it to `root`, checking it against
    /// its compressed and uncompressed digests.
    #[allow(clippy::too_many_arguments)]
    fn apply_layer(
        &self,
        repo: &Repo,
        root: &Path,
        desc: &oci_spec::image::Descriptor,
        diff_id: &str,
        what: &str,
        opts: &ImageOptions,
        room: &mut u64,
        wait: LockWait<'_>,
    ) -> Result<LayerStats> {
        let txn = Transaction::begin(repo, wait)?;
        let mut writer = LayerWriter::new(&txn, arbor_core::fsutil::open_dir(root)?);
        let mut blob = self.layout.blob(desc, what)?;
        let compression = Compression::of(desc.media_type())?;
        let limit = match compression {
            Compression::None => desc.size(),
            _ => desc
                .size()
                .saturating_mul(opts.max_ratio)
                .saturating_add(1 << 20),
        }
        .min(*room);
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
            what: what.to_string(),
        };
        let applied = writer.apply(&mut tar, what).and_then(|stats| {
            // The tar's end-of-archive padding is part of the uncompressed digest.
            io::copy(&mut tar, &mut io::sink())
                .with_context(|| format!("{what}: reading its end"))?;
            let got = tar.hasher.take().expect("hashed once").finish();
            if got != diff_id {
                bail!("{what} unpacks to {got}, not the {diff_id} the image config declares");
            }
            Ok(stats)
        });
        *room = room.saturating_sub(tar.read);
        drop(tar);
        // A blob that is not what the manifest says explains any other failure.
        blob.verify()?;
        let stats = applied?;
        let rows = std::mem::take(&mut writer.rows);
        drop(writer);
        // The objects are durable before a tree that links them is committed.
        txn.finish(&[])?;
        if let Ok(mut db) = StateDb::open(&repo.state_db_path()) {
            let _ = db.store_inode_cache(rows.into_iter().collect());
        }
        Ok(stats)
    }

    /// Commits the tree as `compose` does, with the image's identity in the metadata.
    fn commit(
        &self,
        repo: &Repo,
        root: &Path,
        opts: &ImageOptions,
        wait: LockWait<'_>,
    ) -> Result<arbor_store::commit::CommitResult> {
        let image = &self.image;
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
        crate::compose_staged(repo, root, &commit_opts, wait)
    }
}
