//! What `arbor status` and the daemon's properties show: the deployments with their
//! roles (booted, pending, rollback) and the staged one.

use anyhow::Result;
use serde::Serialize;

use super::{Deployment, Sysroot};

/// One deployment with the role words users read.
#[derive(Clone, Debug, Serialize)]
pub struct StatusRow {
    /// The deployment.
    #[serde(flatten)]
    pub deployment: Deployment,
    /// Boots next but is not running.
    pub pending: bool,
    /// What `arbor rollback` would make the default.
    pub rollback: bool,
}

/// The whole picture of a sysroot.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// Prepared, to become the default at shutdown.
    pub staged: Option<Deployment>,
    /// In boot order.
    pub deployments: Vec<StatusRow>,
    /// The commit `apply-live` made the running system's `/usr` show, if any.
    pub live_commit: Option<String>,
}

impl Status {
    /// The running deployment.
    pub fn booted(&self) -> Option<&StatusRow> {
        self.deployments.iter().find(|r| r.deployment.booted)
    }

    /// The deployment that boots next when it is not the running one.
    pub fn pending(&self) -> Option<&StatusRow> {
        self.deployments.iter().find(|r| r.pending)
    }

    /// What runs after the next reboot when it is not the running deployment: the
    /// staged one (its entry is written at shutdown), else the pending one.
    pub fn next(&self) -> Option<&Deployment> {
        self.staged
            .as_ref()
            .or_else(|| self.pending().map(|r| &r.deployment))
    }

    /// The rollback target.
    pub fn rollback(&self) -> Option<&StatusRow> {
        self.deployments.iter().find(|r| r.rollback)
    }
}

/// Adds roles to a boot order: pending = boots next but is not running; rollback = the
/// entry after the running one (or after the pending one when nothing of ours runs).
pub fn with_roles(list: Vec<Deployment>) -> Vec<StatusRow> {
    let booted = list.iter().position(|d| d.booted);
    list.into_iter()
        .enumerate()
        .map(|(i, deployment)| StatusRow {
            deployment,
            pending: i == 0 && booted != Some(0),
            rollback: match booted {
                Some(b) => i == b + 1,
                None => i == 1,
            },
        })
        .collect()
}

/// Reads the status of `sysroot`.
pub fn status(sysroot: &Sysroot) -> Result<Status> {
    let deployments = with_roles(sysroot.deployments()?);
    let booted = deployments.iter().find(|r| r.deployment.booted);
    let live_commit = match (booted, crate::live::record::LiveRecord::read(sysroot)?) {
        (Some(b), Some(r)) if r.booted == b.deployment.dir_name() => Some(r.commit),
        _ => None,
    };
    Ok(Status {
        staged: sysroot.staged()?,
        deployments,
        live_commit,
    })
}
