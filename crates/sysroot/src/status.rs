//! What `arbor status` and the daemon's properties show: the deployments with their
//! roles (booted, pending, rollback) and the staged one.

use anyhow::Result;
use serde::Serialize;

use super::{Deployment, Sysroot};
use arbor_store::ObjectId;

/// The version of the status document, as of every wire document (`arbor_core::wire`).
pub use arbor_core::wire::FORMAT_VERSION;

/// What a deployment is to the running system.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    serde::Deserialize,
    zvariant::Type,
    zvariant::Value,
    zvariant::OwnedValue,
)]
#[serde(rename_all = "kebab-case")]
#[zvariant(signature = "s", rename_all = "kebab-case")]
pub enum Role {
    /// It is running.
    Booted,
    /// It boots next, and is not the running one.
    Pending,
    /// What `arbor rollback` would make the default.
    Rollback,
    /// Kept in the boot menu (older, or pinned).
    Other,
    /// Staged: it becomes the default at shutdown (only `StagedDeployment` has it).
    Staged,
}

/// What the sysroot is doing about updates, in one word: the daemon's `UpdateState`.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    serde::Deserialize,
    zvariant::Type,
    zvariant::Value,
    zvariant::OwnedValue,
)]
#[serde(rename_all = "kebab-case")]
#[zvariant(signature = "s", rename_all = "kebab-case")]
pub enum UpdateState {
    /// Nothing under way, nothing waiting.
    Idle,
    /// A transaction runs.
    Busy,
    /// An update waits for shutdown to become the default.
    Staged,
    /// The next boot runs another deployment.
    PendingReboot,
}

impl UpdateState {
    /// The word for `status`, with `busy` when a transaction holds the lock.
    pub fn of(status: &Status, busy: bool) -> UpdateState {
        if busy {
            UpdateState::Busy
        } else if status.staged.is_some() {
            UpdateState::Staged
        } else if status.pending().is_some() {
            UpdateState::PendingReboot
        } else {
            UpdateState::Idle
        }
    }
}

/// One deployment with the role words users read. On the bus, one dictionary: the
/// deployment's fields with `role`, `pending`, `rollback` and `staged` beside them, as
/// the JSON has them (flattened).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct StatusRow {
    /// The deployment.
    #[serde(flatten)]
    pub deployment: Deployment,
    /// Its role, one word (the booleans below say the same, kept for scripts).
    pub role: Role,
    /// Boots next but is not running.
    pub pending: bool,
    /// What `arbor rollback` would make the default.
    pub rollback: bool,
    /// The staged deployment (only the staged row says true).
    #[serde(default)]
    pub staged: bool,
}

impl zvariant::Type for StatusRow {
    const SIGNATURE: &'static zvariant::Signature = arbor_core::wire::DICT;
}

impl From<StatusRow> for zvariant::Value<'_> {
    fn from(r: StatusRow) -> Self {
        let mut e =
            arbor_core::wire::entries(r.deployment.into()).expect("a deployment is a dictionary");
        e.insert("role".into(), r.role.into());
        e.insert("pending".into(), r.pending.into());
        e.insert("rollback".into(), r.rollback.into());
        e.insert("staged".into(), r.staged.into());
        zvariant::Value::from(e)
    }
}

impl TryFrom<zvariant::Value<'_>> for StatusRow {
    type Error = zvariant::Error;
    fn try_from(v: zvariant::Value<'_>) -> Result<Self, Self::Error> {
        use arbor_core::wire::take;
        // The derived conversions take owned ('static) values.
        let v: zvariant::Value<'static> = v.try_to_owned()?.into();
        let mut e = arbor_core::wire::entries(v.try_clone()?)?;
        Ok(StatusRow {
            deployment: Deployment::try_from(v)?,
            role: take(&mut e, "role")?,
            pending: take(&mut e, "pending")?,
            rollback: take(&mut e, "rollback")?,
            staged: take(&mut e, "staged")?,
        })
    }
}

arbor_core::owned_value_through_value!(StatusRow);

/// The whole picture of a sysroot: the status document (`arbor status --json`).
#[derive(
    Clone,
    Debug,
    Serialize,
    serde::Deserialize,
    zvariant::Type,
    zvariant::Value,
    zvariant::OwnedValue,
)]
#[zvariant(signature = "dict")]
pub struct Status {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Prepared, to become the default at shutdown.
    pub staged: Option<Deployment>,
    /// In boot order.
    pub deployments: Vec<StatusRow>,
    /// The commit `apply-live` made the running system's `/usr` show, if any.
    pub live_commit: Option<ObjectId>,
    /// The `/etc` files the next boot has in conflict (both the machine and the
    /// update changed them: the machine's version stays, the new default is saved
    /// beside it), relative to `/etc`: of the staged deployment as of now, else as the
    /// pending one's merge found them. Empty when nothing is pending, and unless read
    /// by [`status_with_conflicts`].
    #[serde(default)]
    pub etc_conflicts: Vec<String>,
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

    /// The staged deployment as a row of its own (role `staged`).
    pub fn staged_row(&self) -> Option<StatusRow> {
        self.staged.clone().map(|deployment| StatusRow {
            deployment,
            role: Role::Staged,
            pending: false,
            rollback: false,
            staged: true,
        })
    }
}

/// Adds roles to a boot order: pending = boots next but is not running; rollback = the
/// entry after the running one (or after the pending one when nothing of ours runs).
pub fn with_roles(list: Vec<Deployment>) -> Vec<StatusRow> {
    let booted = list.iter().position(|d| d.booted);
    list.into_iter()
        .enumerate()
        .map(|(i, deployment)| {
            let pending = i == 0 && booted != Some(0);
            let rollback = match booted {
                Some(b) => i == b + 1,
                None => i == 1,
            };
            let role = if deployment.booted {
                Role::Booted
            } else if pending {
                Role::Pending
            } else if rollback {
                Role::Rollback
            } else {
                Role::Other
            };
            StatusRow {
                deployment,
                role,
                pending,
                rollback,
                staged: false,
            }
        })
        .collect()
}

/// Reads the status of `sysroot`.
pub fn status(sysroot: &Sysroot) -> Result<Status> {
    let deployments = with_roles(sysroot.deployments()?);
    let booted = deployments.iter().find(|r| r.deployment.booted);
    let live_commit = match (booted, super::live_record::LiveRecord::read(sysroot)?) {
        (Some(b), Some(r)) if r.booted == b.deployment.dir_name() => Some(r.commit),
        _ => None,
    };
    Ok(Status {
        format_version: FORMAT_VERSION,
        staged: sysroot.staged()?,
        deployments,
        live_commit,
        etc_conflicts: Vec::new(),
    })
}

/// [`status`] with [`Status::etc_conflicts`] filled in, for what shows the status to
/// someone (`arbor status`, the daemon): listing a staged deployment's conflicts
/// reads three `/etc` trees, which no other caller needs.
pub fn status_with_conflicts(sysroot: &Sysroot) -> Result<Status> {
    let mut st = status(sysroot)?;
    let pending = st.pending().map(|r| &r.deployment);
    // The list informs; a tree it cannot read must not make the status unreadable.
    st.etc_conflicts = super::etc_state::next_conflicts(sysroot, st.staged.as_ref(), pending)
        .unwrap_or_else(|e| {
            tracing::warn!("listing the /etc conflicts of the next boot: {e:#}");
            Vec::new()
        });
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(booted: Option<usize>, n: usize) -> Vec<Role> {
        with_roles(
            (0..n)
                .map(|i| Deployment::for_test(0, booted == Some(i)))
                .collect(),
        )
        .into_iter()
        .map(|r| r.role)
        .collect()
    }

    #[test]
    fn roles_follow_the_booted_deployment() {
        use Role::*;
        // After a deploy: the new one is pending, the running one next, then its rollback.
        assert_eq!(roles(Some(1), 3), [Pending, Booted, Rollback]);
        // Running the default: the next one is the rollback.
        assert_eq!(roles(Some(0), 3), [Booted, Rollback, Other]);
        // Nothing booted (a folder sysroot): 0 boots next, 1 is what rollback picks.
        assert_eq!(roles(None, 2), [Pending, Rollback]);
        assert_eq!(roles(Some(0), 1), [Booted]);
        let rows = with_roles((0..3).map(|i| Deployment::for_test(0, i == 1)).collect());
        assert!(rows[0].pending && !rows[0].rollback && rows[2].rollback);
    }
}
