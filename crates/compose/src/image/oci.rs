//! Reading an OCI image layout (a folder, or the same as a tar archive) without
//! trusting it: every blob is read through its descriptor, bounded by the declared
//! size and checked against the declared digest, and every JSON document is size-capped
//! before it is parsed.
//!
//! The layout format is the OCI image spec's: `oci-layout`, `index.json`, and
//! `blobs/<algorithm>/<hex>`. An archive is read in place: its headers are scanned
//! once, and each blob is then read at its offset, so nothing is copied out.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use sha2::{Digest as _, Sha256, Sha512};

/// JSON documents (index, manifest, config) larger than this are refused.
const MAX_JSON: u64 = 4 << 20;

/// Where the layout's files are.
enum Storage {
    /// A folder.
    Dir(PathBuf),
    /// A tar archive of the folder: path → (offset, size) of each member.
    Archive(PathBuf, HashMap<String, (u64, u64)>),
    /// A registry repository, and the tag or digest of the image in it: blobs are
    /// streamed from it as they are read.
    Registry(Box<arbor_remote::oci::Registry>, String),
}

/// The size of a registry's blob that came without a length: only the descriptor's
/// then bounds it.
const UNKNOWN_SIZE: u64 = u64::MAX;

/// The media types of a manifest or index a registry may answer with.
const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// An opened OCI image layout.
pub struct Layout {
    storage: Storage,
    label: String,
}

/// The image chosen in a layout: its manifest and configuration, both verified.
pub struct Image {
    /// `sha256:…` of the manifest: the image's identity.
    pub digest: String,
    /// The manifest: config and layers.
    pub manifest: ImageManifest,
    /// The configuration: uncompressed layer digests, creation time, labels.
    pub config: ImageConfiguration,
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// From the layer's media type (OCI or Docker).
    pub fn of(media: &MediaType) -> Result<Compression> {
        Ok(match media {
            MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Compression::None,
            MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => {
                Compression::Gzip
            }
            MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => {
                Compression::Zstd
            }
            MediaType::Other(s) if s == "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
                Compression::Gzip
            }
            MediaType::Other(s) if s == "application/vnd.docker.image.rootfs.diff.tar" => {
                Compression::None
            }
            other => bail!("a layer of media type {other} is not a file system layer arbor reads"),
        })
    }
}

/// Checks a digest string and returns (algorithm, hex): sha256 or sha512, lowercase
/// hex of the right length, so it can name a blob file without path tricks.
pub fn parse_digest(digest: &str) -> Result<(&str, &str)> {
    let (alg, hex) = digest
        .split_once(':')
        .with_context(|| format!("'{digest}' is not a digest (algorithm:hex)"))?;
    let len = match alg {
        "sha256" => 64,
        "sha512" => 128,
        _ => bail!("digest {digest}: algorithm {alg} is not supported (sha256, sha512)"),
    };
    if hex.len() != len
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        bail!("'{digest}' is not a valid {alg} digest");
    }
    Ok((alg, hex))
}

/// A running digest of one algorithm.
pub enum Hasher {
    /// sha256.
    Sha256(Sha256),
    /// sha512.
    Sha512(Sha512),
}

impl Hasher {
    /// A hasher for `digest`'s algorithm.
    pub fn for_digest(digest: &str) -> Result<Hasher> {
        Ok(match parse_digest(digest)?.0 {
            "sha256" => Hasher::Sha256(Sha256::new()),
            _ => Hasher::Sha512(Sha512::new()),
        })
    }

    /// Adds bytes.
    pub fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(b),
            Hasher::Sha512(h) => h.update(b),
        }
    }

    /// `algorithm:hex` of what was hashed.
    pub fn finish(self) -> String {
        match self {
            Hasher::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize())),
            Hasher::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize())),
        }
    }
}

/// Reads a blob, hashing what passes and refusing more than the declared size.
/// [`VerifiedBlob::verify`] then checks that exactly that size came and hashed right.
pub struct VerifiedBlob {
    inner: io::Take<Box<dyn Read + Send>>,
    hasher: Option<Hasher>,
    read: u64,
    size: u64,
    digest: String,
    what: String,
}

impl Read for VerifiedBlob {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.read += n as u64;
        if self.read > self.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is larger than the {} bytes declared",
                    self.what, self.size
                ),
            ));
        }
        Ok(n)
    }
}

impl VerifiedBlob {
    /// Reads what is left (so the whole blob is hashed), then checks size and digest.
    pub fn verify(mut self) -> Result<()> {
        io::copy(&mut self, &mut io::sink())?;
        if self.read != self.size {
            bail!(
                "{} has {} bytes, not the {} declared",
                self.what,
                self.read,
                self.size
            );
        }
        let got = self.hasher.take().expect("hashed once").finish();
        if got != self.digest {
            bail!(
                "{} is corrupt or tampered with: its digest is {got}, not {}",
                self.what,
                self.digest
            );
        }
        Ok(())
    }
}

impl Layout {
    /// Opens a layout folder.
    pub fn open_dir(dir: &Path) -> Result<Layout> {
        let layout = Layout {
            storage: Storage::Dir(dir.to_path_buf()),
            label: format!("oci:{}", dir.display()),
        };
        layout.check_marker()?;
        Ok(layout)
    }

    /// Opens a layout archive (`oci-archive:`), indexing its members.
    pub fn open_archive(file: &Path) -> Result<Layout> {
        let f = File::open(file).with_context(|| format!("opening {}", file.display()))?;
        let mut archive = tar::Archive::new(f);
        let mut members = HashMap::new();
        for entry in archive
            .entries_with_seek()
            .with_context(|| format!("reading {} as a tar archive", file.display()))?
        {
            let entry = entry.with_context(|| format!("reading {}", file.display()))?;
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let path = path.trim_start_matches("./").to_string();
            members.insert(path, (entry.raw_file_position(), entry.size()));
        }
        let layout = Layout {
            storage: Storage::Archive(file.to_path_buf(), members),
            label: format!("oci-archive:{}", file.display()),
        };
        layout.check_marker()?;
        Ok(layout)
    }

    /// A registry's image: `HOST/NAME:TAG` or `HOST/NAME@sha256:…` (a loopback host
    /// over plain HTTP, any other over HTTPS; anonymous).
    pub fn open_registry(spec: &str, login: Option<&Path>) -> Result<Layout> {
        let (repo, reference) = match spec.split_once('@') {
            Some((r, d)) => {
                parse_digest(d)?;
                (r, d.to_string())
            }
            None => match spec.rsplit_once(':') {
                Some((r, t)) if !t.contains('/') => (r, t.to_string()),
                _ => (spec, "latest".to_string()),
            },
        };
        let tag_ok = reference.contains(':')
            || (reference.len() <= 128
                && reference
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
                && reference
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
        if !tag_ok {
            bail!("'{reference}' is not an image tag");
        }
        // Docker Hub's name is not the host of its API.
        let api = match repo.split_once('/') {
            Some(("docker.io", name)) => format!("registry-1.docker.io/{name}"),
            _ => repo.to_string(),
        };
        let loc = arbor_remote::oci::Location::parse(&format!("oci://{api}"))
            .with_context(|| format!("'{spec}': give HOST/NAME[:TAG|@DIGEST]"))?;
        let timeout = std::time::Duration::from_secs(60);
        let login = match login {
            Some(path) => arbor_remote::oci::Credentials::load(path)?,
            None => arbor_remote::oci::Credentials::default(),
        };
        let registry = arbor_remote::oci::Registry::new(loc, login, timeout);
        Ok(Layout {
            storage: Storage::Registry(Box::new(registry), reference),
            label: format!("docker://{spec}"),
        })
    }

    /// The image a registry's tag or digest names: an index (or Docker list) is
    /// resolved to linux/amd64; every document is checked against its digest.
    fn registry_image(
        &self,
        registry: &arbor_remote::oci::Registry,
        reference: &str,
    ) -> Result<Image> {
        let (bytes, media, mut digest) = registry.raw_manifest(reference, &MANIFEST_TYPES)?;
        let is_index = media.contains("index") || media.contains("manifest.list");
        let bytes = if is_index {
            let index: ImageIndex = serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: the image index is not an OCI index", self.label))?;
            let d = index
                .manifests()
                .iter()
                .find(|d| {
                    d.platform().as_ref().is_some_and(|p| {
                        p.os().to_string() == "linux" && p.architecture().to_string() == "amd64"
                    })
                })
                .with_context(|| {
                    format!("{}: the image index has no linux/amd64 image", self.label)
                })?;
            let (b, _, got) = registry.raw_manifest(d.digest().as_ref(), &MANIFEST_TYPES)?;
            digest = got;
            b
        } else {
            bytes
        };
        let manifest: ImageManifest = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not an image manifest", self.label))?;
        let config: ImageConfiguration = self.json_blob(manifest.config(), "the image config")?;
        if config.architecture().to_string() != "amd64" || config.os().to_string() != "linux" {
            bail!(
                "{} is an image for {}/{}, not linux/amd64",
                self.label,
                config.os(),
                config.architecture()
            );
        }
        if config.rootfs().diff_ids().len() != manifest.layers().len() {
            bail!(
                "the image config lists {} layers, the manifest {}",
                config.rootfs().diff_ids().len(),
                manifest.layers().len()
            );
        }
        Ok(Image {
            digest,
            manifest,
            config,
        })
    }

    fn check_marker(&self) -> Result<()> {
        let text = self
            .read_small("oci-layout")
            .with_context(|| format!("{} is not an OCI image layout", self.label))?;
        let v: serde_json::Value = serde_json::from_slice(&text)
            .with_context(|| format!("{}: oci-layout is not JSON", self.label))?;
        match v["imageLayoutVersion"].as_str() {
            Some("1.0.0") => Ok(()),
            other => bail!("{}: unsupported imageLayoutVersion {other:?}", self.label),
        }
    }

    /// Opens a member file of the layout with its size.
    fn open(&self, rel: &str) -> Result<(Box<dyn Read + Send>, u64)> {
        match &self.storage {
            Storage::Dir(dir) => {
                let fd = rustix::fs::open(
                    dir.join(rel),
                    rustix::fs::OFlags::RDONLY
                        | rustix::fs::OFlags::NOFOLLOW
                        | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .with_context(|| format!("{}: opening {rel}", self.label))?;
                let f = File::from(fd);
                let size = f.metadata()?.len();
                Ok((Box::new(f), size))
            }
            Storage::Archive(file, members) => {
                let &(offset, size) = members
                    .get(rel)
                    .with_context(|| format!("{}: no {rel} in the archive", self.label))?;
                let mut f = File::open(file)?;
                f.seek(SeekFrom::Start(offset))?;
                Ok((Box::new(f.take(size)), size))
            }
            Storage::Registry(registry, _) => {
                let digest = rel
                    .strip_prefix("blobs/")
                    .and_then(|r| r.split_once('/'))
                    .map(|(alg, hex)| format!("{alg}:{hex}"))
                    .with_context(|| format!("{}: no {rel} in a registry", self.label))?;
                let (r, len) = registry.open_blob(&digest)?;
                // The descriptor's size bounds the read whatever the registry says.
                Ok((r, len.unwrap_or(UNKNOWN_SIZE)))
            }
        }
    }

    fn read_small(&self, rel: &str) -> Result<Vec<u8>> {
        let (r, size) = self.open(rel)?;
        if size > MAX_JSON {
            bail!("{}: {rel} is larger than {MAX_JSON} bytes", self.label);
        }
        let mut out = Vec::new();
        r.take(MAX_JSON).read_to_end(&mut out)?;
        Ok(out)
    }

    /// The blob a descriptor names, read through a size bound and a digest check.
    pub fn blob(&self, d: &Descriptor, what: &str) -> Result<VerifiedBlob> {
        let digest = d.digest().to_string();
        let (alg, hex) = parse_digest(&digest)?;
        let size = d.size();
        let (r, stored) = self.open(&format!("blobs/{alg}/{hex}"))?;
        if stored != size && stored != UNKNOWN_SIZE {
            bail!(
                "{what} ({digest}) has {stored} bytes in the layout, not the {size} its descriptor declares"
            );
        }
        Ok(VerifiedBlob {
            inner: r.take(size + 1),
            hasher: Some(Hasher::for_digest(&digest)?),
            read: 0,
            size,
            digest,
            what: format!("{what} ({})", d.digest()),
        })
    }

    /// A small JSON blob, verified, then parsed.
    fn json_blob<T: serde::de::DeserializeOwned>(&self, d: &Descriptor, what: &str) -> Result<T> {
        if d.size() > MAX_JSON {
            bail!("{what} declares {} bytes, more than {MAX_JSON}", d.size());
        }
        let mut blob = self.blob(d, what)?;
        let mut bytes = Vec::new();
        blob.read_to_end(&mut bytes)?;
        blob.verify()?;
        serde_json::from_slice(&bytes).with_context(|| format!("{what} is not valid JSON"))
    }

    /// Chooses the image `tag` names (its `org.opencontainers.image.ref.name`), or the
    /// only one when no tag is given; a nested index is resolved to linux/amd64.
    pub fn image(&self, tag: Option<&str>) -> Result<Image> {
        if let Storage::Registry(registry, reference) = &self.storage {
            return self.registry_image(registry, reference);
        }
        let index: ImageIndex = serde_json::from_slice(&self.read_small("index.json")?)
            .with_context(|| format!("{}: index.json is not an OCI index", self.label))?;
        let name = |d: &Descriptor| {
            d.annotations()
                .as_ref()
                .and_then(|a| a.get("org.opencontainers.image.ref.name").cloned())
        };
        let mut candidates: Vec<&Descriptor> = index
            .manifests()
            .iter()
            .filter(|d| tag.is_none() || name(d).as_deref() == tag)
            .collect();
        let chosen = match (candidates.len(), tag) {
            (1, _) => candidates.pop().unwrap().clone(),
            (0, Some(t)) => bail!("{}: no image is tagged {t}", self.label),
            (0, None) => bail!("{}: the layout holds no image", self.label),
            (_, _) => {
                let names: Vec<String> = candidates.iter().filter_map(|d| name(d)).collect();
                bail!(
                    "{}: it holds {} images; name one with :TAG ({})",
                    self.label,
                    candidates.len(),
                    names.join(", ")
                )
            }
        };
        let manifest_desc = if *chosen.media_type() == MediaType::ImageIndex {
            let nested: ImageIndex = self.json_blob(&chosen, "the image index")?;
            nested
                .manifests()
                .iter()
                .find(|d| {
                    d.platform().as_ref().is_none_or(|p| {
                        p.os().to_string() == "linux" && p.architecture().to_string() == "amd64"
                    })
                })
                .cloned()
                .context("the image index has no linux/amd64 image")?
        } else {
            chosen
        };
        let manifest: ImageManifest = self.json_blob(&manifest_desc, "the image manifest")?;
        let config: ImageConfiguration = self.json_blob(manifest.config(), "the image config")?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            bail!(
                "the image config lists {} layers, the manifest {}",
                diff_ids.len(),
                manifest.layers().len()
            );
        }
        Ok(Image {
            digest: manifest_desc.digest().to_string(),
            manifest,
            config,
        })
    }

    /// What the layout is, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_checked_before_naming_a_file() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            parse_digest(&good).unwrap(),
            ("sha256", "a".repeat(64).as_str())
        );
        for bad in [
            "sha256:../../etc/passwd".to_string(),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("md5:{}", "a".repeat(32)),
            "nodigest".to_string(),
        ] {
            assert!(parse_digest(&bad).is_err(), "{bad}");
        }
    }
}
