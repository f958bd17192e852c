//! `arbor reset`: a factory reset that can itself be undone.
//!
//! A reset is a new deployment of the booted commit that boots next, made with a
//! pristine `/etc` (the image's defaults, no merge) and, at level `var` or `all`, a
//! `/var` of its own: a new folder of the stateroot (`var.N`), empty but for what the
//! policy keeps (`reset_keep`, `/home` and `/root` by default) at level `all`. The
//! previous deployment keeps its `/etc` and its `/var` untouched and stays as the
//! rollback, so `arbor rollback` brings everything back; a `/var` folder goes only
//! once no deployment uses it any more. Every level keeps what makes the machine boot
//! and be itself (`reset_keep_etc`: its fstab, machine id, host keys, arbor's policy). Level `all` also drops layered packages and
//! overrides: the new deployment is the base image.

use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::deploy::{DeployResult, deploy};
use super::origin::{Layers, valid_var_name};
use super::plan::DeployOptions;
use super::select::current;
use super::{Deployment, Sysroot};
use crate::fsutil;
use crate::lock::WriterLock;
use crate::progress::Observer;

/// How much a reset puts back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ResetLevel {
    /// A pristine `/etc`; `/var` shared with the previous deployment.
    Etc,
    /// A pristine `/etc` and an empty `/var`.
    Var,
    /// A pristine `/etc`, an empty `/var` but for what the policy keeps, and the base
    /// image without layered packages or overrides.
    All,
}

impl ResetLevel {
    /// Its name, as the CLI and D-Bus take it.
    pub fn as_str(self) -> &'static str {
        match self {
            ResetLevel::Etc => "etc",
            ResetLevel::Var => "var",
            ResetLevel::All => "all",
        }
    }

    /// Parses a level, naming the three in the error.
    pub fn parse(s: &str) -> Result<ResetLevel> {
        match s {
            "etc" => Ok(ResetLevel::Etc),
            "var" => Ok(ResetLevel::Var),
            "all" => Ok(ResetLevel::All),
            _ => bail!("'{s}' is not a reset level: use etc, var or all"),
        }
    }
}

/// What the deploy of a reset does differently (see [`DeployOptions::reset`]).
#[derive(Clone, Debug)]
pub struct ResetPlan {
    /// The level.
    pub level: ResetLevel,
    /// The `/var` folder the new deployment gets, prepared before the deploy; `None`
    /// shares the previous deployment's.
    pub var: Option<String>,
    /// Paths of `/etc` (absolute; a last component may end in `*`) copied from the
    /// previous deployment into the pristine one: the machine's own mounts, identity
    /// and keys, without which it would not boot or not be itself.
    pub keep_etc: Vec<String>,
}

/// Copies what `keep` names from the `/etc` being left (`from`) into the new
/// pristine one (`to`), replacing the image's defaults there; returns what it copied
/// (absolute paths). Never through a symlink; what is absent is skipped.
pub fn carry_etc(from: &Path, to: &Path, keep: &[String]) -> Result<Vec<String>> {
    let from_fd = fsutil::open_dir(from)?;
    let to_fd = fsutil::open_dir(to)?;
    let mut carried = Vec::new();
    for k in keep {
        let Some(rel) = k.strip_prefix("/etc/") else {
            bail!("reset_keep_etc: '{k}' is not below /etc");
        };
        let (dir, leaf) = rel.rsplit_once('/').unwrap_or(("", rel));
        if dir.split('/').any(|c| c == ".." || c == ".") || leaf.is_empty() || leaf == ".." {
            bail!("reset_keep_etc: '{k}' is not a plain path");
        }
        let Ok(src) = fsutil::open_beneath(from_fd.as_fd(), dir) else {
            continue;
        };
        let names: Vec<String> = match leaf.strip_suffix('*') {
            Some(prefix) => fsutil::list_dir(src.as_fd())?
                .into_iter()
                .map(|(n, _)| fsutil::show(&n))
                .filter(|n| n.starts_with(prefix))
                .collect(),
            None => vec![leaf.to_string()],
        };
        for name in names {
            if fsutil::kind_at(src.as_fd(), &name)?.is_none() {
                continue;
            }
            let dst = fsutil::mkdir_p_beneath(to_fd.as_fd(), dir)?;
            fsutil::remove_at(dst.as_fd(), name.as_bytes())?;
            fsutil::copy_entry_at(src.as_fd(), &name, dst.as_fd(), &name)
                .with_context(|| format!("keeping /etc/{dir}/{name}"))?;
            carried.push(if dir.is_empty() {
                format!("/etc/{name}")
            } else {
                format!("/etc/{dir}/{name}")
            });
        }
    }
    Ok(carried)
}

/// What a reset did.
#[derive(Clone, Debug, Serialize)]
pub struct ResetResult {
    /// The level.
    pub level: ResetLevel,
    /// The new deployment (it boots next), and what the deploy removed.
    pub deploy: DeployResult,
    /// The deployment reset from: the rollback now.
    pub previous: String,
    /// The new `/var` folder of the stateroot, for levels var and all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub var: Option<String>,
    /// What was carried into the new `/var` (level all), relative to `/var`.
    pub kept: Vec<String>,
}

/// The paths the policy keeps across `reset --level all`, relative to `/var`: each
/// either below `/var` or a top-level link of the image into it (`/home` is
/// `var/home` in an arbor image).
pub fn kept_in_var(deployment_root: &Path, keep: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for k in keep {
        let rel = k.trim_start_matches('/').trim_end_matches('/');
        if rel.is_empty()
            || rel
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            bail!("reset_keep: '{k}' is not a plain absolute path");
        }
        let in_var = match rel.strip_prefix("var/") {
            Some(r) => r.to_string(),
            None => {
                let (top, rest) = rel.split_once('/').unwrap_or((rel, ""));
                let link = std::fs::read_link(deployment_root.join(top)).ok();
                let target = link
                    .as_ref()
                    .and_then(|l| l.to_str())
                    .map(|l| l.trim_start_matches('/'));
                match target.and_then(|t| t.strip_prefix("var/")) {
                    Some(t) if rest.is_empty() => t.to_string(),
                    Some(t) => format!("{t}/{rest}"),
                    None => bail!(
                        "reset_keep: '{k}' is not below /var, so nothing of it lives on a reset"
                    ),
                }
            }
        };
        out.push(in_var);
    }
    Ok(out)
}

/// A new `/var` folder name for stateroot `os`: `var.1`, `var.2`, … not yet used.
fn fresh_var_name(sysroot: &Sysroot, os: &str) -> String {
    let root = sysroot.stateroot(os);
    (1..)
        .map(|n| format!("var.{n}"))
        .find(|n| !root.join(n).exists() && !root.join(format!(".{n}.tmp")).exists())
        .unwrap()
}

/// Makes the new `/var` folder: empty, or with `keep` copied from `from` (metadata
/// and all), written aside, synced and renamed into place.
fn make_var(
    sysroot: &Sysroot,
    os: &str,
    from: &str,
    keep: &[String],
) -> Result<(String, Vec<String>)> {
    let root = sysroot.stateroot(os);
    let name = fresh_var_name(sysroot, os);
    let tmp = root.join(format!(".{name}.tmp"));
    let root_fd = fsutil::open_dir(&root)?;
    std::fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let old = fsutil::open_dir(&root.join(from))
        .with_context(|| format!("opening {}", root.join(from).display()))?;
    let new = fsutil::open_dir(&tmp)?;
    let mut kept = Vec::new();
    for k in keep {
        let (dir, leaf) = k.rsplit_once('/').unwrap_or(("", k));
        let Ok(src) = fsutil::open_beneath(old.as_fd(), dir) else {
            continue;
        };
        if fsutil::kind_at(src.as_fd(), leaf)?.is_none() {
            continue;
        }
        let dst = fsutil::mkdir_p_beneath(new.as_fd(), dir)?;
        fsutil::copy_entry_at(src.as_fd(), leaf, dst.as_fd(), leaf)
            .with_context(|| format!("keeping /var/{k}"))?;
        kept.push(k.clone());
    }
    let st = rustix::fs::fstat(&old)?;
    let meta = fsutil::meta_from_stat(&st, fsutil::read_xattrs_fd(old.as_fd())?);
    fsutil::apply_meta_fd(new.as_fd(), &meta)?;
    fsutil::sync_filesystem(&new).context("syncing the new /var")?;
    std::fs::rename(&tmp, root.join(&name))?;
    rustix::fs::fsync(&root_fd)?;
    Ok((name, kept))
}

/// Resets the booted deployment (the default one on a folder sysroot) to `level`.
/// Refused while a deployment is staged: finishing or dropping the update first
/// keeps a reset from being finalized over, or mixed with, it.
pub fn reset(
    sysroot: &Sysroot,
    lock: &WriterLock,
    level: ResetLevel,
    keep: &[String],
    keep_etc: &[String],
    obs: &dyn Observer,
) -> Result<ResetResult> {
    if let Some(s) = sysroot.staged()? {
        bail!(
            "an update is staged ({}/{}, it boots after the next reboot): reboot into it \
             first, or deploy the booted commit again to drop it, then reset",
            s.os,
            s.dir_name()
        );
    }
    let d = current(sysroot)?;
    let root = sysroot.deployment_path(&d);
    // The /etc being left, as it last ran.
    super::etc_state::snapshot(sysroot, lock, &d)?;
    let (var, kept) = match level {
        ResetLevel::Etc => (None, Vec::new()),
        ResetLevel::Var => {
            let (v, _) = make_var(sysroot, &d.os, d.origin.var_dir(), &[])?;
            (Some(v), Vec::new())
        }
        ResetLevel::All => {
            let keep = kept_in_var(&root, keep)?;
            let (v, k) = make_var(sysroot, &d.os, d.origin.var_dir(), &keep)?;
            (Some(v), k)
        }
    };
    let (commit, layers) = match (level, d.base) {
        (ResetLevel::All, Some(base)) => (base, Layers::default()),
        _ => (d.commit, d.origin.layers.clone()),
    };
    let opts = DeployOptions {
        os: d.os.clone(),
        refspec: d.origin.refspec.clone(),
        override_commit: d.origin.override_commit,
        commit,
        layers,
        kargs: None,
        stage: false,
        // The booted commit already holds its layers.
        layers_built: true,
        reset: Some(ResetPlan {
            level,
            var: var.clone(),
            keep_etc: keep_etc.to_vec(),
        }),
    };
    let deploy = deploy(sysroot, lock, &opts, obs)?;
    Ok(ResetResult {
        level,
        deploy,
        previous: format!("{}/{}", d.os, d.dir_name()),
        var,
        kept,
    })
}

/// Removes the `/var` folders of stateroot `os` that no deployment in `live` uses,
/// once some deployment exists (what a reset kept for its rollback goes with it), and
/// what a crashed reset left (`.var.N.tmp`).
pub fn remove_unused_vars(sysroot: &Sysroot, os: &str, live: &[Deployment]) -> Result<Vec<String>> {
    let mine: Vec<&Deployment> = live.iter().filter(|d| d.os == os).collect();
    if mine.is_empty() {
        return Ok(Vec::new());
    }
    let root = sysroot.stateroot(os);
    let mut removed = Vec::new();
    for e in std::fs::read_dir(&root)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let leftover = name.starts_with(".var.") && name.ends_with(".tmp");
        if !(valid_var_name(&name) || leftover)
            || !e.file_type()?.is_dir()
            || mine.iter().any(|d| d.origin.var_dir() == name)
        {
            continue;
        }
        fsutil::remove_tree(&e.path())
            .with_context(|| format!("removing {}", e.path().display()))?;
        removed.push(format!("{os}/{name}"));
    }
    Ok(removed)
}
