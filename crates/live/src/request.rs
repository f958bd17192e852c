//! `usroverlay` as one operation: the CLI and the daemon both turn their arguments
//! into a [`UsrOverlayRequest`] and call [`run`], so they cannot disagree on what a
//! verb does.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use super::changes::{self, Change};
use super::hotfix_commit::{self, OverlayCommit};
use super::overlay::{self, OverlayInfo};
use super::{OverlayKind, UsrStatus};
use arbor_core::lock::WriterLock;
use arbor_core::progress::Observer;
use arbor_sysroot::Sysroot;

/// What `usroverlay` is asked to do.
#[derive(Clone, Debug)]
pub enum UsrOverlayRequest {
    /// Show what is on `/usr` (`--status`).
    Status,
    /// List what an overlay changed (`--list`), of the booted deployment or of the one
    /// named by index or commit prefix.
    List {
        /// `--deployment`.
        deployment: Option<String>,
    },
    /// Mount a writable overlay (`--create`, the default).
    Create {
        /// Kept across reboots of this deployment.
        hotfix: bool,
        /// Its label.
        name: Option<String>,
    },
    /// Label the mounted overlay (`--name` alone).
    Name(String),
    /// Copy files into `/usr`, making an overlay if there is none (`--add`).
    Add {
        /// (source, path below `/usr`) pairs, see [`overlay::parse_add`].
        items: Vec<(PathBuf, String)>,
        /// Make a kept overlay when one is made.
        hotfix: bool,
        /// Its label.
        name: Option<String>,
    },
    /// Make the overlay a commit and deploy it (`--commit`).
    Commit {
        /// The commit's subject.
        message: Option<String>,
    },
    /// Unmount the overlay and drop its changes (`--remove`).
    Remove,
}

impl UsrOverlayRequest {
    /// True for the requests that change the system: they take the sysroot lock and
    /// are recorded in the history; the others only read.
    pub fn writes(&self) -> bool {
        !matches!(
            self,
            UsrOverlayRequest::Status | UsrOverlayRequest::List { .. }
        )
    }
}

/// An overlay's changes, as `--list` reports them.
#[derive(Clone, Debug, Serialize, zvariant::Type, zvariant::Value, zvariant::OwnedValue)]
#[zvariant(signature = "dict")]
pub struct OverlayListing {
    /// The deployment below it (`os/commit.serial`).
    pub deployment: String,
    /// Transient, hotfix or live.
    pub kind: OverlayKind,
    /// Its label.
    pub name: Option<String>,
    /// Mounted on the live root's `/usr` now.
    pub mounted: bool,
    /// The commit `--commit` made of it, if any.
    pub committed: Option<arbor_store::ObjectId>,
    /// Its upper layer.
    pub upper: String,
    /// Every changed path, sorted.
    pub changes: Vec<Change>,
}

/// What a request gave (each is a kind of `ops::Outcome`).
#[derive(Clone, Debug)]
pub enum UsrOverlayOutcome {
    /// What is on `/usr` now.
    Status(UsrStatus),
    /// An overlay's changes.
    List(OverlayListing),
    /// The commit and its deployment.
    Committed(Box<OverlayCommit>),
}

/// Lists what the overlay of `which` (default: the booted deployment) changed.
pub fn list(sysroot: &Sysroot, root: &Path, which: Option<&str>) -> Result<OverlayListing> {
    let found = overlay::find(sysroot, root, which)?;
    let lower = sysroot.deployment_path(&found.deployment).join("usr");
    let info = OverlayInfo::read(&found.dir)?;
    Ok(OverlayListing {
        deployment: format!("{}/{}", found.deployment.os, found.deployment.dir_name()),
        kind: found.kind,
        name: info.name,
        mounted: found.mounted,
        committed: info.committed,
        changes: changes::list(&found.upper(), &lower)?,
        upper: found.upper().display().to_string(),
    })
}

/// Runs a request on the live root `root`. `lock` must be held for the requests that
/// [`UsrOverlayRequest::writes`].
pub fn perform(
    sysroot: &Sysroot,
    lock: Option<&WriterLock>,
    root: &Path,
    req: &UsrOverlayRequest,
    obs: &dyn Observer,
) -> Result<UsrOverlayOutcome> {
    if req.writes() && lock.is_none() {
        anyhow::bail!("usroverlay: this request needs the sysroot lock");
    }
    Ok(match req {
        UsrOverlayRequest::Status => UsrOverlayOutcome::Status(super::status(sysroot, root)?),
        UsrOverlayRequest::List { deployment } => {
            UsrOverlayOutcome::List(list(sysroot, root, deployment.as_deref())?)
        }
        UsrOverlayRequest::Create { hotfix, name } => {
            UsrOverlayOutcome::Status(super::usroverlay(sysroot, root, *hotfix, name.as_deref())?)
        }
        UsrOverlayRequest::Name(n) => {
            UsrOverlayOutcome::Status(super::usroverlay_name(sysroot, root, n)?)
        }
        UsrOverlayRequest::Add {
            items,
            hotfix,
            name,
        } => UsrOverlayOutcome::Status(super::usroverlay_add(
            sysroot,
            root,
            items,
            *hotfix,
            name.as_deref(),
        )?),
        UsrOverlayRequest::Commit { message } => {
            let lock = lock.context("usroverlay --commit needs the sysroot lock")?;
            UsrOverlayOutcome::Committed(Box::new(hotfix_commit::commit_overlay(
                sysroot,
                lock,
                root,
                message.as_deref(),
                obs,
            )?))
        }
        UsrOverlayRequest::Remove => {
            UsrOverlayOutcome::Status(super::usroverlay_remove(sysroot, root)?)
        }
    })
}
