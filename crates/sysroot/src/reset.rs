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

use anyhow::{Result, bail};
use serde::Serialize;

use super::Sysroot;
use super::deploy::{DeployResult, deploy};
use super::origin::Layers;
use super::plan::{DeployOptions, ResetPlan};
use super::select::current;
use super::var_dirs::{kept_in_var, make_var};
use arbor_core::lock::WriterLock;
use arbor_core::progress::Observer;

pub use super::plan::ResetLevel;

/// What a reset did.
#[derive(Clone, Debug, Serialize, zvariant::Type, zvariant::Value, zvariant::OwnedValue)]
#[zvariant(signature = "dict")]
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
        image_digest: d.origin.image_digest.clone(),
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
