//! Package layering: a deployment = its base commit + packages installed (or base
//! packages removed or replaced) by apt and dpkg.
//!
//! The base is checked out with hardlinks, and apt runs in a mount namespace on an
//! overlay whose lower layer is that checkout (`layer.sh`). So the store, which the
//! checkout's files are hardlinks of, is never written through. The upper layer is
//! then applied onto the checkout ([`super::overlay_apply`]), and the result is
//! committed with `arbor.base` (the base commit) and its package list in the metadata.

use std::collections::HashSet;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::overlay_apply;
use super::run_logged;
use arbor_boot::origin::{Layers, LocalDeb};
use arbor_core::fsutil;
use arbor_core::lock::LockWait;
use arbor_core::progress::{Observer, checkpoint};
use arbor_store::ObjectId;
use arbor_store::checkout::TreeCheckout;
use arbor_store::commit::{CommitOptions, commit_tree};
use arbor_store::refs::RefName;
use arbor_sysroot::Sysroot;

pub use arbor_sysroot::BASE_KEY;

const SCRIPT: &str = include_str!("layer.sh");

pub use arbor_sysroot::base_of;

/// Where the sysroot keeps local packages for re-layering.
pub fn debs_dir(sysroot: &Sysroot) -> PathBuf {
    sysroot.path().join("arbor/debs")
}

/// Reads a `.deb`'s package name with `dpkg-deb` and keeps a copy in the sysroot,
/// named by its content.
pub fn keep_local_deb(sysroot: &Sysroot, path: &Path) -> Result<LocalDeb> {
    let out = Command::new("dpkg-deb")
        .args(["--field"])
        .arg(path)
        .arg("Package")
        .output()
        .context("running dpkg-deb")?;
    if !out.status.success() {
        bail!(
            "{} is not a Debian package: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !super::treefile::valid_package(&name) {
        bail!("{} names an invalid package '{name}'", path.display());
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let id = blake3::hash(&bytes).to_hex().to_string();
    let dir = debs_dir(sysroot);
    std::fs::create_dir_all(&dir)?;
    let dir_fd = fsutil::open_dir(&dir)?;
    let file = format!("{id}.deb");
    if fsutil::kind_at(dir_fd.as_fd(), &file)?.is_none() {
        fsutil::atomic_write(dir_fd.as_fd(), &file, &bytes, 0o644)
            .with_context(|| format!("keeping {} in {}", path.display(), dir.display()))?;
    }
    Ok(LocalDeb { id, name })
}

/// `opts` with its layered packages built into the commit it deploys (nothing to do
/// when it has none, or holds them already): what every deploy that layers runs
/// before `sysroot::deploy::deploy`.
pub fn prepare(
    sysroot: &Sysroot,
    opts: &arbor_sysroot::plan::DeployOptions,
    obs: &dyn Observer,
) -> Result<arbor_sysroot::plan::DeployOptions> {
    let mut out = opts.clone();
    if !opts.layers_built {
        out.commit = build(sysroot, &opts.os, &opts.commit, &opts.layers, obs)?;
        out.layers_built = true;
    }
    Ok(out)
}

/// Builds `base` + `layers` into a new commit and returns it (`base` itself when there
/// is nothing to layer). `os` names the ref the commit is kept under.
pub fn build(
    sysroot: &Sysroot,
    os: &str,
    base: &ObjectId,
    layers: &Layers,
    obs: &dyn Observer,
) -> Result<ObjectId> {
    if layers.is_empty() {
        return Ok(*base);
    }
    let repo = sysroot.repo();
    let base_commit = repo.load_commit(base)?;
    let work = arbor_store::scratch::ScratchDir::new(repo.path(), "layer")?;
    let w = work.path();
    let work_fd = fsutil::open_dir(w)?;
    obs.task_begin("checkout-base");
    let mut co = TreeCheckout::new(repo, false);
    co.observer = Some(obs);
    co.run(
        work_fd.as_fd(),
        b"lower",
        &base_commit.root_tree,
        &base_commit.root_meta,
    )?;
    obs.task_end("checkout-base");
    for d in ["upper", "work", "merged", "debs"] {
        std::fs::create_dir(w.join(d))?;
    }
    // The local packages, by hardlink from the sysroot's keep.
    let mut install: Vec<String> = layers.packages.clone();
    for d in layers.local.iter().chain(&layers.replace) {
        let file = format!("{}_{}.deb", d.name, &d.id[..16.min(d.id.len())]);
        std::fs::hard_link(
            debs_dir(sysroot).join(format!("{}.deb", d.id)),
            w.join("debs").join(&file),
        )
        .with_context(|| format!("the kept package {} ({}) is missing", d.name, d.id))?;
        install.push(format!("/run/arbor-debs/{file}"));
    }
    for name in layers.packages.iter().chain(&layers.remove) {
        if !super::treefile::valid_package(name) {
            bail!("'{name}' is not a Debian package name");
        }
    }
    checkpoint(obs)?;
    obs.task_begin("apt");
    obs.message(&format!(
        "layering on {}: install {} remove {}",
        &base.short(),
        if install.is_empty() {
            "-".into()
        } else {
            layers.installed_names().join(" ")
        },
        if layers.remove.is_empty() {
            "-".into()
        } else {
            layers.remove.join(" ")
        },
    ));
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "--pid",
        "--fork",
        "--kill-child",
        "--",
    ])
    .args(["sh", "-c", SCRIPT, "arbor-layer"])
    .args(["merged", "lower", "upper", "work", "debs"].map(|d| w.join(d)))
    // Local packages may need dependencies from the archive too.
    .arg(if install.is_empty() {
        "noupdate"
    } else {
        "update"
    });
    if !layers.remove.is_empty() {
        cmd.arg("--purge").args(&layers.remove);
    }
    if !install.is_empty() {
        cmd.arg("--install").args(&install);
    }
    run_logged(cmd, "installing the layered packages", &w.join("apt.log"))?;
    obs.task_end("apt");
    checkpoint(obs)?;

    obs.task_begin("commit");
    let upper = fsutil::open_dir(&w.join("upper"))?;
    let lower = fsutil::open_dir(&w.join("lower"))?;
    overlay_apply::apply(
        upper.as_fd(),
        lower.as_fd(),
        &["etc", "proc", "sys", "dev", "run", "tmp", "var"],
    )?;
    let pkgs =
        super::tree_packages(&w.join("lower"))?.context("the layered tree has no dpkg database")?;
    let mut metadata: Vec<(String, String)> = base_commit
        .metadata
        .iter()
        .filter(|(k, _)| k == "version" || k == "arbor.treefile.name")
        .cloned()
        .collect();
    metadata.push((BASE_KEY.into(), base.to_hex()));
    metadata.push(("arbor.layers".into(), serde_json::to_string(layers)?));
    super::add_metadata(&mut metadata, &pkgs);
    let opts = CommitOptions {
        branch: RefName::parse(&format!("arbor/layered/{os}"))?,
        subject: format!("{} + {}", &base.short(), layers.installed_names().join(" ")),
        body: String::new(),
        metadata,
        timestamp: base_commit.timestamp,
        orphan: true,
        skip_special: true,
        use_cache: true,
        progress: None,
    };
    let r = commit_tree(repo, &w.join("lower"), &opts, LockWait::NoWait)?;
    arbor_core::failpoint::hit("layer-committed")?;
    super::remember(repo, &r.commit, &pkgs);
    obs.task_end("commit");
    Ok(r.commit)
}

/// A change to what a deployment layers, as the CLI and the daemon ask for it.
#[derive(Clone, Debug)]
pub enum LayerEdit {
    /// `arbor install`: archive packages by name, and local `.deb` files.
    Install {
        /// Package names.
        names: Vec<String>,
        /// Local package files.
        files: Vec<PathBuf>,
    },
    /// `arbor uninstall`: layered packages to drop.
    Uninstall(Vec<String>),
    /// `arbor override remove`: base packages to remove.
    Remove(Vec<String>),
    /// `arbor override replace`: base packages replaced by local files.
    Replace(Vec<PathBuf>),
    /// `arbor override reset`: overrides to undo (all with an empty list).
    Reset(Vec<String>),
}

/// The deployment new layers start from: the one that boots next in the stateroot.
pub fn default_deployment(sysroot: &Sysroot, os: &str) -> Result<arbor_sysroot::Deployment> {
    sysroot
        .deployments()?
        .into_iter()
        .find(|d| d.os == os)
        .with_context(|| format!("stateroot {os} has no deployment to layer on; deploy one first"))
}

/// The most packages one install, uninstall or override may name: far above any real
/// change, and it keeps the checks of a change, and apt's command line, bounded.
pub const MAX_PACKAGES: usize = 1024;

/// Deploy options for the default deployment's base with its layers edited; errors
/// say why an edit makes no sense (already there, not layered, not in the base).
pub fn edit(
    sysroot: &Sysroot,
    os: Option<&str>,
    change: &LayerEdit,
) -> Result<arbor_sysroot::plan::DeployOptions> {
    let os = match os {
        Some(o) => o.to_string(),
        None => sysroot.default_os()?,
    };
    let d = default_deployment(sysroot, &os)?;
    let repo = sysroot.repo();
    let base = base_of(repo, &d.commit)?;
    let in_base = || -> Result<Vec<String>> {
        Ok(super::packages_of(repo, &base)?
            .into_iter()
            .map(|p| p.name)
            .collect())
    };
    let mut layers = d.origin.layers.clone();
    let count = match change {
        LayerEdit::Install { names, files } => names.len() + files.len(),
        LayerEdit::Uninstall(n) | LayerEdit::Remove(n) | LayerEdit::Reset(n) => n.len(),
        LayerEdit::Replace(f) => f.len(),
    };
    if count > MAX_PACKAGES {
        bail!("at most {MAX_PACKAGES} packages can be named in one change");
    }
    match change {
        LayerEdit::Install { names, files } => {
            let base_names: HashSet<String> = in_base()?.into_iter().collect();
            let mut layered: HashSet<String> = layers.installed_names().into_iter().collect();
            for n in names {
                if !super::treefile::valid_package(n) {
                    bail!("'{n}' is not a Debian package name");
                }
                if base_names.contains(n) {
                    bail!("{n} is already in the base image");
                }
                if !layered.insert(n.clone()) {
                    bail!("{n} is already layered");
                }
                layers.packages.push(n.clone());
            }
            for f in files {
                let deb = keep_local_deb(sysroot, f)?;
                if !layered.insert(deb.name.clone()) {
                    bail!("{} is already layered", deb.name);
                }
                layers.local.push(deb);
            }
        }
        LayerEdit::Uninstall(names) => {
            for n in names {
                let before = layers.packages.len() + layers.local.len();
                layers.packages.retain(|p| p != n);
                layers.local.retain(|d| &d.name != n);
                if before == layers.packages.len() + layers.local.len() {
                    bail!(
                        "{n} is not a layered package (to remove a base package: 'arbor override remove {n}')"
                    );
                }
            }
        }
        LayerEdit::Remove(names) => {
            let base_names: HashSet<String> = in_base()?.into_iter().collect();
            for n in names {
                if !base_names.contains(n) {
                    bail!("{n} is not in the base image");
                }
                if layers.remove.contains(n) {
                    bail!("{n} is already removed");
                }
                layers.remove.push(n.clone());
            }
        }
        LayerEdit::Replace(files) => {
            let base_names: HashSet<String> = in_base()?.into_iter().collect();
            for f in files {
                let deb = keep_local_deb(sysroot, f)?;
                if !base_names.contains(&deb.name) {
                    bail!(
                        "{} is not in the base image: 'arbor install {}' layers it",
                        deb.name,
                        f.display()
                    );
                }
                layers.replace.retain(|d| d.name != deb.name);
                layers.replace.push(deb);
            }
        }
        LayerEdit::Reset(names) if names.is_empty() => {
            layers.remove.clear();
            layers.replace.clear();
        }
        LayerEdit::Reset(names) => {
            for n in names {
                let before = layers.remove.len() + layers.replace.len();
                layers.remove.retain(|p| p != n);
                layers.replace.retain(|d| &d.name != n);
                if before == layers.remove.len() + layers.replace.len() {
                    bail!("{n} has no override");
                }
            }
        }
    }
    layers.packages.sort();
    layers.local.sort();
    layers.remove.sort();
    layers.replace.sort();
    Ok(arbor_sysroot::plan::DeployOptions {
        os,
        refspec: d.origin.refspec.clone(),
        override_commit: d.origin.override_commit.as_ref().map(|_| base),
        commit: base,
        layers,
        kargs: None,
        stage: false,
        layers_built: false,
        reset: None,
        image_digest: d.origin.image_digest.clone(),
    })
}

/// Deploy options to move the default deployment to the tip of the ref it tracks,
/// layers re-applied; `None` when it is there already (or held at a commit).
pub fn upgrade(
    sysroot: &Sysroot,
    os: Option<&str>,
) -> Result<Option<arbor_sysroot::plan::DeployOptions>> {
    let os = match os {
        Some(o) => o.to_string(),
        None => sysroot.default_os()?,
    };
    let d = default_deployment(sysroot, &os)?;
    if let Some(held) = d.origin.override_commit {
        bail!(
            "the deployment is held at commit {held} of {}: deploy {} to follow the ref again",
            d.origin.refspec,
            d.origin.refspec
        );
    }
    let repo = sysroot.repo();
    let tip = repo.resolve_rev(&d.origin.refspec)?;
    if tip == base_of(repo, &d.commit)? {
        return Ok(None);
    }
    Ok(Some(arbor_sysroot::plan::DeployOptions {
        os,
        refspec: d.origin.refspec.clone(),
        override_commit: None,
        commit: tip,
        layers: d.origin.layers.clone(),
        kargs: None,
        stage: false,
        layers_built: false,
        reset: None,
        image_digest: None,
    }))
}
