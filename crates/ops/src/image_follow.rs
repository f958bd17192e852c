//! Following a bootable container image in a registry, the bootc way: `arbor switch
//! docker://HOST/NAME:TAG` deploys it, and `upgrade` then follows the tag (docs/image.md,
//! "Following an image in a registry").
//!
//! The deployment's origin tracks the image reference and records the manifest digest
//! deployed; `upgrade` asks the registry for the tag's digest and does nothing when it
//! is the same. A new image is imported over the lower layers kept from the last
//! import, so only the layers above them are fetched, each streamed into the store as
//! it arrives. `switch --digest` pins one digest: the origin then holds that commit
//! (as `override-commit` holds an older commit of a ref) until a switch without it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use arbor_compose::image::{DEFAULT_MAX_RATIO, ImageOptions, ImageSource, OpenedImage};
use arbor_core::lock::{LockWait, WriterLock};
use arbor_core::progress::Observer;
use arbor_packages::layer;
use arbor_store::refs::RefName;
use arbor_sysroot::Sysroot;
use arbor_sysroot::deploy::{self, DeployResult};
use arbor_sysroot::plan::DeployOptions;

use crate::update::next_deployment;

/// `switch`: the image to follow.
#[derive(Clone, Debug)]
pub struct SwitchRequest {
    /// `docker://HOST/NAME[:TAG]` or `registry:HOST/NAME[:TAG]`.
    pub image: String,
    /// Deploy this manifest digest of the image and hold it there.
    pub digest: Option<String>,
    /// The stateroot.
    pub os: Option<String>,
    /// A login to the registry (a credentials file, mode 0600), kept for upgrades.
    pub credentials: Option<PathBuf>,
}

/// What following an image found and fetched.
#[derive(
    Clone, Debug, Default, Serialize, zvariant::Type, zvariant::Value, zvariant::OwnedValue,
)]
#[zvariant(signature = "dict")]
pub struct ImageUpdate {
    /// The image followed, `docker://HOST/NAME:TAG`.
    pub image: String,
    /// The manifest digest the tag names now (or the pinned one).
    pub digest: String,
    /// The digest the deployment that runs next was made from, if any.
    pub previous: String,
    /// Held at `digest` (`switch --digest`).
    pub pinned: bool,
    /// Layers fetched from the registry.
    pub layers_fetched: u32,
    /// Lower layers not fetched: kept from an earlier import.
    pub layers_reused: u32,
    /// The bytes of the layer blobs fetched.
    pub fetched_bytes: u64,
    /// The new deployment is staged behind the running one (it becomes the default at
    /// shutdown); false for a first deployment, which is simply the default.
    pub staged: bool,
}

/// True for an image reference (`docker://…`, `registry:…`) rather than a ref.
pub fn is_image_ref(s: &str) -> bool {
    s.starts_with("docker://") || s.starts_with("registry:")
}

/// `HOST/NAME:TAG` of a reference: a tag is added (`latest`) when none is given, and
/// a digest reference is refused (`--digest` pins one).
fn tagged(image: &str) -> Result<String> {
    let spec = match image.parse::<ImageSource>()? {
        ImageSource::Registry { spec } => spec,
        _ => bail!("'{image}' is not a registry image: give docker://HOST/NAME[:TAG]"),
    };
    if spec.contains('@') {
        bail!("'{image}' names a digest: give the tag to follow, and the digest with --digest");
    }
    let last = spec.rsplit('/').next().unwrap_or_default();
    Ok(if last.contains(':') {
        spec
    } else {
        format!("{spec}:latest")
    })
}

/// The file, in the sysroot, of the login to a registry `host` that `switch
/// --credentials` keeps (mode 0600; never printed, logged or sent over D-Bus).
fn login_file(sysroot: &Sysroot, spec: &str) -> Result<PathBuf> {
    let host = spec.split('/').next().unwrap_or_default();
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    {
        bail!("'{host}' is not a registry host");
    }
    Ok(sysroot
        .path()
        .join(format!("arbor/image-logins/{host}.toml")))
}

/// Where an image is imported: one branch per image reference.
fn branch_for(spec: &str) -> Result<RefName> {
    let name: String = spec
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-/".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    RefName::parse(&format!("image/{name}"))
        .with_context(|| format!("'{spec}' does not make a branch name"))
}

/// What to follow, and from where.
struct Target<'a> {
    /// The stateroot.
    os: &'a str,
    /// `HOST/NAME:TAG`.
    spec: &'a str,
    /// The digest to deploy and hold, instead of the tag's.
    digest: Option<&'a str>,
    /// The digest the next deployment runs, when it follows the same reference.
    previous: Option<&'a str>,
    /// The credentials file for the registry.
    login: Option<&'a Path>,
    /// Only find the digest (`upgrade --check`): nothing fetched beyond the manifest
    /// and config, nothing deployed.
    check: bool,
}

/// Resolves, imports and deploys the target. No deployment when the registry names the
/// image already deployed (nothing fetched), or for a check.
fn follow(
    sysroot: &Sysroot,
    lock: &WriterLock,
    t: &Target<'_>,
    obs: &dyn Observer,
) -> Result<(ImageUpdate, Option<DeployResult>)> {
    let repo = sysroot.repo();
    let (os, spec) = (t.os, t.spec);
    let name = spec.rsplit_once(':').map_or(spec, |(n, _)| n);
    let fetch = match t.digest {
        Some(d) => format!("{name}@{d}"),
        None => spec.to_string(),
    };
    obs.task_begin("resolve");
    let opened = OpenedImage::open(repo, &ImageSource::Registry { spec: fetch }, t.login)?;
    obs.task_end("resolve");
    let mut report = ImageUpdate {
        image: format!("docker://{spec}"),
        digest: opened.digest().to_string(),
        previous: t.previous.unwrap_or_default().to_string(),
        pinned: t.digest.is_some(),
        ..Default::default()
    };
    if t.check || t.previous == Some(opened.digest()) {
        return Ok((report, None));
    }
    let opts = ImageOptions {
        branch: branch_for(spec)?,
        version: None,
        max_ratio: DEFAULT_MAX_RATIO,
        login: None,
    };
    obs.task_begin("download");
    let import = opened.import(repo, &opts, LockWait::Wait(&|_| {}))?;
    obs.task_end("download");
    report.layers_fetched = import.layers.len() as u32;
    report.layers_reused = import.layers_reused as u32;
    report.fetched_bytes = import.fetched_bytes;
    let current = next_deployment(sysroot, os)?;
    let commit = import.commit.commit;
    let opts = DeployOptions {
        os: os.to_string(),
        refspec: report.image.clone(),
        override_commit: t.digest.map(|_| commit),
        commit,
        layers: current
            .as_ref()
            .map(|d| d.origin.layers.clone())
            .unwrap_or_default(),
        kargs: None,
        stage: current.is_some(),
        layers_built: false,
        reset: None,
        image_digest: Some(import.digest.clone()),
    };
    report.staged = opts.stage;
    let opts = layer::prepare(sysroot, &opts, obs)?;
    let deployed = deploy::deploy(sysroot, lock, &opts, obs)?;
    arbor_compose::image::chain::keep_only(repo, &import.chains, LockWait::Wait(&|_| {}))?;
    Ok((report, Some(deployed)))
}

fn stateroot(sysroot: &Sysroot, os: Option<&str>) -> Result<String> {
    match os {
        Some(o) => Ok(o.to_string()),
        None => sysroot.default_os(),
    }
}

/// `arbor switch IMAGE [--digest D]`: deploys the image (staged behind the running
/// deployment, when there is one); a switch to what runs next already does nothing.
pub fn switch(
    sysroot: &Sysroot,
    lock: &WriterLock,
    req: &SwitchRequest,
    obs: &dyn Observer,
) -> Result<(ImageUpdate, Option<DeployResult>)> {
    let os = stateroot(sysroot, req.os.as_deref())?;
    let spec = tagged(&req.image)?;
    if let Some(d) = &req.digest {
        let hex = d.strip_prefix("sha256:").unwrap_or_default();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("--digest '{d}' is not sha256:<64 hex digits>");
        }
    }
    // The same image, held or followed as asked, is already what runs next.
    let next = next_deployment(sysroot, &os)?;
    let same = next.as_ref().and_then(|d| {
        let held = d.origin.override_commit.is_some();
        (d.origin.refspec == format!("docker://{spec}") && held == req.digest.is_some())
            .then(|| d.origin.image_digest.clone())
            .flatten()
    });
    let kept = login_file(sysroot, &spec)?;
    let login = match &req.credentials {
        Some(given) => Some(given.clone()),
        None => kept.exists().then(|| kept.clone()),
    };
    let target = Target {
        os: &os,
        spec: &spec,
        digest: req.digest.as_deref(),
        previous: same.as_deref(),
        login: login.as_deref(),
        check: false,
    };
    let done = follow(sysroot, lock, &target, obs)?;
    // The login that worked is kept for the upgrades that follow the tag.
    if let Some(given) = &req.credentials {
        arbor_remote::oci::Credentials::load(given)?;
        let bytes = std::fs::read(given).with_context(|| format!("reading {}", given.display()))?;
        std::fs::create_dir_all(kept.parent().expect("in a folder"))?;
        arbor_core::fsutil::write_file_atomic(&kept, &bytes, 0o600)?;
    }
    Ok(done)
}

/// `upgrade` of a deployment that follows an image: the tag's new image, if it moved
/// (with `check`, only whether it moved).
pub fn upgrade(
    sysroot: &Sysroot,
    lock: &WriterLock,
    os: Option<&str>,
    check: bool,
    obs: &dyn Observer,
) -> Result<(ImageUpdate, Option<DeployResult>)> {
    let os = stateroot(sysroot, os)?;
    let d = next_deployment(sysroot, &os)?
        .with_context(|| format!("stateroot {os} has no deployment"))?;
    let spec = tagged(&d.origin.refspec)?;
    if d.origin.override_commit.is_some() {
        bail!(
            "the deployment is held at {} of {}: 'arbor switch {}' follows the tag again",
            d.origin.image_digest.as_deref().unwrap_or("one digest"),
            d.origin.refspec,
            d.origin.refspec
        );
    }
    let kept = login_file(sysroot, &spec)?;
    let target = Target {
        os: &os,
        spec: &spec,
        digest: None,
        previous: d.origin.image_digest.as_deref(),
        login: kept.exists().then_some(kept.as_path()),
        check,
    };
    follow(sysroot, lock, &target, obs)
}

/// True when the deployment that runs next follows a registry image.
pub fn follows_image(sysroot: &Sysroot, os: Option<&str>) -> bool {
    stateroot(sysroot, os)
        .and_then(|os| next_deployment(sysroot, &os))
        .is_ok_and(|d| d.is_some_and(|d| is_image_ref(&d.origin.refspec)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_get_a_tag_and_a_branch() {
        assert_eq!(
            tagged("docker://127.0.0.1:5000/os/img").unwrap(),
            "127.0.0.1:5000/os/img:latest"
        );
        assert_eq!(
            tagged("registry:quay.io/os/img:42").unwrap(),
            "quay.io/os/img:42"
        );
        assert!(tagged("docker://h/n@sha256:00").is_err());
        assert!(tagged("oci:/srv/img").is_err());
        assert_eq!(
            branch_for("127.0.0.1:5000/os/img:42").unwrap().to_string(),
            "image/127.0.0.1_5000/os/img_42"
        );
        assert!(is_image_ref("docker://h/n") && !is_image_ref("origin:stable"));
    }
}
