//! The requests the operations take, and the rules that follow from a request alone:
//! its kind in the history, whether it is recorded, whether it needs the lock.

use std::path::PathBuf;

use crate::update::{Action, UpdateOptions};
use arbor_live::UsrOverlayRequest;
use arbor_live::apply::ApplyOptions;
use arbor_packages::layer::LayerEdit;
use arbor_statedb::HistoryKind;
use arbor_sysroot::Sysroot;
use arbor_sysroot::kargs::KargEdit;

/// `deploy`: a local ref or commit, or a remote channel or version.
#[derive(Clone, Debug, Default)]
pub struct DeployRequest {
    /// A ref, a commit id, `REF^`, or `REMOTE:CHANNEL` of a configured remote.
    pub rev: Option<String>,
    /// A version of the channel the deployment follows.
    pub version: Option<String>,
    /// The stateroot.
    pub os: Option<String>,
    /// Kernel arguments replacing the inherited ones (local deploys).
    pub kargs: Vec<String>,
    /// Stage it: the boot entries switch at shutdown (local deploys).
    pub stage: bool,
    /// Ignore phased rollout (remote deploys).
    pub phase_override: bool,
    /// `--apply`: carry the staged update out by the mildest step at least this
    /// strong (remote deploys; docs/activation.md).
    pub apply: Option<arbor_live::activation::Step>,
    /// `--max-rate`: download at most this many bytes a second (remote deploys).
    pub max_rate: Option<u64>,
}

impl DeployRequest {
    /// The update options when the request goes to a remote (`--version`, or a
    /// `REMOTE:CHANNEL` naming a configured remote); `None` for a local deploy.
    pub fn update_options(&self, sysroot: &Sysroot) -> Option<UpdateOptions> {
        let remote = self
            .rev
            .as_deref()
            .filter(|r| arbor_remote::configured_refspec(sysroot, r).is_some());
        if self.version.is_none() && remote.is_none() {
            return None;
        }
        Some(UpdateOptions {
            os: self.os.clone(),
            version: self.version.clone(),
            rebase: remote.map(str::to_string),
            phase_override: self.phase_override,
            apply: self.apply,
            max_rate: self.max_rate,
            ..Default::default()
        })
    }
}

/// `upgrade`.
#[derive(Clone, Debug)]
pub struct UpgradeRequest {
    /// The stateroot.
    pub os: Option<String>,
    /// Check only, download only, or stage (the default).
    pub action: Action,
    /// Report the candidates and change nothing.
    pub dry_run: bool,
    /// Ignore phased rollout.
    pub phase_override: bool,
    /// `--apply`: carry the staged update out by the mildest step at least this
    /// strong (docs/activation.md).
    pub apply: Option<arbor_live::activation::Step>,
    /// `--max-rate`: download at most this many bytes a second.
    pub max_rate: Option<u64>,
}

/// One verb, with its arguments.
#[derive(Clone, Debug)]
pub enum Request {
    /// `deploy`.
    Deploy(DeployRequest),
    /// `rebase CHANNEL|REMOTE:CHANNEL`.
    Rebase {
        /// The channel to follow.
        channel: String,
        /// The stateroot.
        os: Option<String>,
        /// A version of it.
        version: Option<String>,
        /// Ignore phased rollout.
        phase_override: bool,
    },
    /// `upgrade` (also `--check` and `--download-only`).
    Upgrade(UpgradeRequest),
    /// `switch docker://…`: follow a container image in a registry.
    Switch(crate::image_follow::SwitchRequest),
    /// `rollback`.
    Rollback,
    /// `install`, `uninstall`, `override`.
    Layer {
        /// The stateroot.
        os: Option<String>,
        /// What changes.
        edit: LayerEdit,
    },
    /// `kargs`: no edit only shows them.
    Kargs(Vec<KargEdit>),
    /// `cleanup`.
    Cleanup,
    /// `prune` of the sysroot's repository.
    Prune {
        /// Report only.
        dry_run: bool,
    },
    /// `undeploy N`.
    Undeploy(usize),
    /// `pin N` / `pin --unpin N`.
    Pin {
        /// The deployment.
        index: usize,
        /// Pin or unpin.
        pinned: bool,
    },
    /// `apply-live`.
    ApplyLive {
        /// The running system's root.
        root: PathBuf,
        /// Its options.
        opts: ApplyOptions,
    },
    /// `apply-live --reset`.
    ApplyLiveReset {
        /// The running system's root.
        root: PathBuf,
    },
    /// `auto-update`: what the timer runs, under a policy.
    AutoUpdate {
        /// The policy (`/etc/arbor/arbor.toml`).
        policy: crate::update::Policy,
        /// Act now, whatever the interval and the preferred time say.
        now: bool,
    },
    /// `remote remove NAME`.
    RemoveRemote(String),
    /// `usroverlay`.
    UsrOverlay {
        /// The running system's root.
        root: PathBuf,
        /// What to do.
        req: UsrOverlayRequest,
    },
    /// `reset --level LEVEL`.
    Reset(arbor_sysroot::reset::ResetLevel),
    /// `etc restore PATH…`.
    EtcRestore {
        /// The deployment (index, commit prefix, `staged`); the current one if none.
        deployment: Option<String>,
        /// Paths below `/etc`.
        paths: Vec<String>,
    },
}

impl Request {
    /// What the history calls it.
    pub fn kind(&self) -> HistoryKind {
        use HistoryKind as K;
        match self {
            Request::Deploy(_) => K::Deploy,
            Request::Rebase { .. } | Request::Switch(_) => K::Rebase,
            Request::Upgrade(u) => match u.action {
                Action::Check => K::Check,
                Action::Download => K::Download,
                Action::Stage => K::Upgrade,
            },
            Request::Rollback => K::Rollback,
            Request::Layer { edit, .. } => match edit {
                LayerEdit::Install { .. } => K::Install,
                LayerEdit::Uninstall(_) => K::Uninstall,
                _ => K::Override,
            },
            Request::Kargs(_) => K::Kargs,
            Request::Cleanup => K::Cleanup,
            Request::Prune { .. } => K::Prune,
            Request::Undeploy(_) => K::Undeploy,
            Request::Pin { .. } => K::Pin,
            Request::ApplyLive { .. } | Request::ApplyLiveReset { .. } => K::ApplyLive,
            Request::UsrOverlay { .. } => K::Usroverlay,
            Request::AutoUpdate { .. } => K::AutoUpdate,
            Request::RemoveRemote(_) => K::RemoteRemove,
            Request::EtcRestore { .. } => K::EtcRestore,
            Request::Reset(_) => K::Reset,
        }
    }

    /// True when it may change the system: the history records exactly these. Checks,
    /// dry runs, listings and showing the kernel arguments are not recorded.
    pub fn recorded(&self) -> bool {
        match self {
            Request::Upgrade(u) => u.action != Action::Check && !u.dry_run,
            Request::Kargs(edits) => !edits.is_empty(),
            Request::Prune { dry_run } => !dry_run,
            Request::ApplyLive { opts, .. } => !opts.dry_run,
            Request::UsrOverlay { req, .. } => req.writes(),
            _ => true,
        }
    }

    /// True when it takes the sysroot lock: everything but pure reads.
    pub fn needs_lock(&self) -> bool {
        match self {
            Request::Kargs(edits) => !edits.is_empty(),
            Request::UsrOverlay { req, .. } => req.writes(),
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade(action: Action, dry_run: bool) -> Request {
        Request::Upgrade(UpgradeRequest {
            os: None,
            action,
            dry_run,
            phase_override: false,
            apply: None,
            max_rate: None,
        })
    }

    #[test]
    fn checks_dry_runs_and_reads_are_not_recorded() {
        assert!(!upgrade(Action::Check, false).recorded());
        assert!(!upgrade(Action::Stage, true).recorded());
        assert!(upgrade(Action::Download, false).recorded());
        assert!(upgrade(Action::Stage, false).recorded());
        assert!(!Request::Kargs(Vec::new()).recorded());
        assert!(!Request::Kargs(Vec::new()).needs_lock());
        assert!(Request::Kargs(vec![KargEdit::Append("quiet".into())]).recorded());
        assert!(!Request::Prune { dry_run: true }.recorded());
        let list = Request::UsrOverlay {
            root: "/".into(),
            req: UsrOverlayRequest::List { deployment: None },
        };
        assert!(!list.recorded() && !list.needs_lock());
        assert!(Request::Rollback.recorded() && Request::Rollback.needs_lock());
    }

    #[test]
    fn kinds_name_the_verb() {
        assert_eq!(upgrade(Action::Check, false).kind().as_str(), "check");
        assert_eq!(upgrade(Action::Download, false).kind().as_str(), "download");
        assert_eq!(upgrade(Action::Stage, false).kind().as_str(), "upgrade");
        let install = Request::Layer {
            os: None,
            edit: LayerEdit::Install {
                names: vec!["hello".into()],
                files: Vec::new(),
            },
        };
        assert_eq!(install.kind().as_str(), "install");
        assert_eq!(
            Request::Layer {
                os: None,
                edit: LayerEdit::Reset(Vec::new())
            }
            .kind()
            .as_str(),
            "override"
        );
    }
}
