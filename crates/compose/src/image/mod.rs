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

pub mod chain;
mod import;
pub mod layer;
pub mod oci;

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use arbor_core::lock::LockWait;
use arbor_store::Repo;
use arbor_store::commit::CommitResult;
use arbor_store::refs::RefName;
pub use import::OpenedImage;
use layer::LayerStats;

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

/// A reference as docker and skopeo complete it: a first component that is no host
/// (no `.` or `:`, not `localhost`) means Docker Hub, and a single name there is in
/// `library/` (`debian:trixie` is `docker.io/library/debian:trixie`).
fn with_registry(spec: &str) -> String {
    let first = spec.split('/').next().unwrap_or_default();
    let is_host = first.contains('.') || first.contains(':') || first == "localhost";
    match (is_host && spec.contains('/'), spec.contains('/')) {
        (true, _) => spec.to_string(),
        (false, true) => format!("docker.io/{spec}"),
        (false, false) => format!("docker.io/library/{spec}"),
    }
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
                if spec.is_empty() || spec.starts_with('/') {
                    bail!("'{s}': give the registry and the image, HOST/NAME[:TAG|@DIGEST]");
                }
                ImageSource::Registry {
                    spec: with_registry(spec),
                }
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
    /// The login to a registry (a credentials file, mode 0600: docs/registry.md).
    pub login: Option<PathBuf>,
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
    /// What each fetched layer held, bottom first.
    pub layers: Vec<LayerStats>,
    /// The lower layers not fetched: an earlier import kept the tree they make
    /// ([`chain`]).
    pub layers_reused: usize,
    /// The bytes of the layer blobs fetched (as stored: compressed).
    pub fetched_bytes: u64,
    /// The image's layer chains, bottom first ([`chain`]): what to keep once the
    /// image is in use.
    #[serde(skip)]
    pub chains: Vec<String>,
}

/// Imports the image into `repo` and commits it to `opts.branch`. On any error
/// nothing is published and the branch is unchanged.
pub fn compose_image(
    repo: &Repo,
    source: &ImageSource,
    opts: &ImageOptions,
    wait: LockWait<'_>,
) -> Result<ImageImport> {
    let import =
        OpenedImage::open(repo, source, opts.login.as_deref())?.import(repo, opts, wait)?;
    chain::keep_only(repo, &import.chains, wait)?;
    Ok(import)
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
        for bad in ["docker://", "docker:///x", "oci:", "plain", "dir:/x"] {
            assert!(bad.parse::<ImageSource>().is_err(), "{bad}");
        }
        for (short, full) in [
            ("docker://debian:trixie", "docker.io/library/debian:trixie"),
            ("docker://fedora/bootc", "docker.io/fedora/bootc"),
            ("docker://localhost:5000/os", "localhost:5000/os"),
            ("docker://quay.io/x/y@sha256:00", "quay.io/x/y@sha256:00"),
        ] {
            assert_eq!(
                short.parse::<ImageSource>().unwrap(),
                ImageSource::Registry { spec: full.into() },
                "{short}"
            );
        }
    }
}
