//! Deciding what a deployment operation does, as plain data: what a deploy asks for,
//! which deployment it merges `/etc` from, the boot order after it, and what a rollback
//! makes the default. No effects here, so every rule is unit-tested.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::{Deployment, Sysroot};
use arbor_boot::origin::Layers;
use arbor_store::ObjectId;

/// What to deploy.
#[derive(Clone, Debug)]
pub struct DeployOptions {
    /// The stateroot.
    pub os: String,
    /// What the deployment tracks (a ref, or a commit id): recorded in the origin.
    pub refspec: String,
    /// Set when the commit is not the tip of `refspec` (an older commit of it).
    pub override_commit: Option<ObjectId>,
    /// The base commit it resolved to.
    pub commit: ObjectId,
    /// Packages to layer on the base (built into a new commit by the deploy).
    pub layers: Layers,
    /// Kernel arguments; `None` keeps those of the deployment merged from.
    pub kargs: Option<Vec<String>>,
    /// Prepare now, switch boot entries at shutdown (`finalize-staged`).
    pub stage: bool,
    /// `commit` already holds `layers` (`usroverlay --commit` builds on the booted,
    /// layered commit): the deploy records them in the origin but layers nothing.
    pub layers_built: bool,
    /// A factory reset: a pristine `/etc` instead of the merge, and the `/var` the
    /// reset prepared (`arbor reset`).
    pub reset: Option<ResetPlan>,
    /// The container image's manifest digest, for a deployment of a registry image
    /// (`arbor switch docker://…`): recorded in the origin.
    pub image_digest: Option<String>,
}

impl DeployOptions {
    /// Options to deploy `rev` (a ref, a commit id, or `REF^…` for an older commit of
    /// REF, tracked as REF and held at that commit), as `arbor deploy` takes them.
    pub fn for_rev(
        sysroot: &Sysroot,
        rev: &str,
        os: Option<&str>,
        kargs: Vec<String>,
        stage: bool,
    ) -> Result<DeployOptions> {
        let os = match os {
            Some(os) => os.to_string(),
            None => sysroot.default_os()?,
        };
        let commit = sysroot.repo().resolve_rev(rev)?;
        let base = rev.trim_end_matches('^');
        // Layered packages follow the deployment to its new base, as with rpm-ostree.
        let current = sysroot.deployments()?;
        let layers = merge_source(&current, &os)
            .map(|d| d.origin.layers.clone())
            .unwrap_or_default();
        Ok(DeployOptions {
            os,
            refspec: base.to_string(),
            override_commit: (base != rev).then_some(commit),
            commit,
            layers,
            kargs: (!kargs.is_empty()).then_some(kargs),
            stage,
            layers_built: false,
            reset: None,
            image_digest: None,
        })
    }
}

/// The deployment whose `/etc` a new one merges with, and whose kargs it inherits: the
/// booted one when it is of this stateroot, else this stateroot's first.
pub fn merge_source<'a>(current: &'a [Deployment], os: &str) -> Option<&'a Deployment> {
    current
        .iter()
        .find(|d| d.booted && d.os == os)
        .or_else(|| current.iter().find(|d| d.os == os))
}

/// The boot order after a deploy: the new deployment, then what must be kept (the
/// booted one and its rollback, or without a booted one the previous default), then
/// the pinned ones. Everything else is dropped, as `ostree admin deploy` does.
pub fn next_order(new: Deployment, current: &[Deployment]) -> Vec<Deployment> {
    let mut keep: Vec<&Deployment> = Vec::new();
    match current.iter().position(|d| d.booted) {
        Some(b) => {
            keep.push(&current[b]);
            keep.extend(current.get(b + 1));
        }
        None => keep.extend(current.first()),
    }
    keep.extend(current.iter().filter(|d| d.origin.pinned));
    let mut order = vec![new];
    for d in keep {
        if !order
            .iter()
            .any(|o| o.os == d.os && o.commit == d.commit && o.serial == d.serial)
        {
            order.push(d.clone());
        }
    }
    for (i, d) in order.iter_mut().enumerate() {
        d.index = i as u32;
    }
    order
}

/// The boot order a rollback makes: the rollback deployment first (the one after the
/// booted one; with nothing booted, the second), or the booted one again when another
/// is pending; `None` when there is nothing to roll back to.
pub fn rollback_order(mut order: Vec<Deployment>) -> Option<Vec<Deployment>> {
    let target = match order.iter().position(|d| d.booted) {
        Some(0) | None => 1,
        Some(b) => b,
    };
    if target >= order.len() {
        return None;
    }
    let d = order.remove(target);
    order.insert(0, d);
    for (i, d) in order.iter_mut().enumerate() {
        d.index = i as u32;
    }
    Some(order)
}

/// How much a reset puts back.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    zvariant::Type,
    zvariant::Value,
    zvariant::OwnedValue,
)]
#[zvariant(signature = "s", rename_all = "kebab-case")]
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

#[cfg(test)]
mod tests {
    use super::*;

    fn d(name: u8, booted: bool, pinned: bool) -> Deployment {
        let mut d = Deployment::for_test(name, booted);
        d.origin.pinned = pinned;
        d.kargs = vec![format!("k{name}")];
        d
    }
    fn names(list: &[Deployment]) -> Vec<String> {
        list.iter().map(|d| d.version.clone().unwrap()).collect()
    }

    #[test]
    fn a_deploy_keeps_the_booted_its_rollback_and_the_pinned() {
        let current = [
            d(3, false, false),
            d(2, true, false),
            d(1, false, false),
            d(0, false, true),
        ];
        let order = next_order(d(4, false, false), &current);
        assert_eq!(
            names(&order),
            ["4", "2", "1", "0"],
            "3, pending and not booted, goes"
        );
        assert_eq!(
            order.iter().map(|d| d.index).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        // Nothing booted (a folder sysroot): the previous default is kept.
        let order = next_order(
            d(4, false, false),
            &[d(3, false, false), d(2, false, false)],
        );
        assert_eq!(names(&order), ["4", "3"]);
        // Deploying the booted commit's deployment again does not list it twice.
        let order = next_order(d(2, true, false), &[d(2, true, false), d(1, false, false)]);
        assert_eq!(names(&order), ["2", "1"]);
    }

    #[test]
    fn rollback_targets_the_one_after_the_booted_or_the_booted_when_another_is_pending() {
        let booted_first = vec![d(2, true, false), d(1, false, false)];
        assert_eq!(names(&rollback_order(booted_first).unwrap()), ["1", "2"]);
        let pending_first = vec![d(3, false, false), d(2, true, false), d(1, false, false)];
        assert_eq!(
            names(&rollback_order(pending_first).unwrap()),
            ["2", "3", "1"]
        );
        let nothing_booted = vec![d(2, false, false), d(1, false, false)];
        assert_eq!(names(&rollback_order(nothing_booted).unwrap()), ["1", "2"]);
        assert!(rollback_order(vec![d(1, true, false)]).is_none());
    }

    #[test]
    fn the_merge_source_is_the_booted_deployment_of_the_stateroot_else_its_first() {
        let mut other = d(9, true, false);
        other.os = "other".into();
        let list = [other, d(2, false, false), d(1, true, false)];
        assert_eq!(
            merge_source(&list, "os").unwrap().version.as_deref(),
            Some("1")
        );
        let list = [d(2, false, false), d(1, false, false)];
        assert_eq!(
            merge_source(&list, "os").unwrap().version.as_deref(),
            Some("2")
        );
        assert!(merge_source(&list, "none").is_none());
    }
}
