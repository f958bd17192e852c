//! One library operation per verb, for the CLI and the daemon alike.
//!
//! Both edges turn their arguments into a [`Request`] and hand it here: what a verb
//! means (a local ref or a remote channel, which action `--check` asks for), the
//! sysroot lock, and what the history records are decided in this one place, so the
//! command line and D-Bus cannot drift apart. The edges only parse, print and map
//! errors.

pub mod error;
pub mod image_follow;
mod outcome;
pub mod report;
mod request;
pub mod to_disk;
pub mod update;

use anyhow::{Context, Result};

use crate::update::UpdateOptions;
use arbor_core::lock::{LockWait, WriterLock};
use arbor_core::progress::Observer;
use arbor_live::{UsrOverlayOutcome, apply};
use arbor_packages::layer;
use arbor_store::prune;
use arbor_sysroot::deploy;
use arbor_sysroot::plan::DeployOptions;
use arbor_sysroot::status;
use arbor_sysroot::{Sysroot, etc_state, health, kargs};

pub use arbor_statedb::HistoryKind;
pub use outcome::{BootOrder, Kargs, Outcome, UpgradeOutcome};
pub use request::{DeployRequest, Request, UpgradeRequest};

/// Who asked, as the history records it.
#[derive(Clone, Debug)]
pub struct Initiator {
    /// The command line, or the D-Bus method and caller.
    pub command: String,
    /// The caller's uid.
    pub uid: u32,
}

impl Initiator {
    /// This process: its command line and uid (the CLI).
    pub fn this_process() -> Initiator {
        Initiator {
            command: std::env::args().collect::<Vec<_>>().join(" "),
            uid: rustix::process::getuid().as_raw(),
        }
    }
}

/// Runs `req`: takes the sysroot lock (waiting as `wait` says), then as
/// [`perform_locked`].
pub fn perform(
    sysroot: &Sysroot,
    req: &Request,
    wait: LockWait<'_>,
    who: &Initiator,
    obs: &dyn Observer,
) -> Result<Outcome> {
    if !req.needs_lock() {
        return execute(sysroot, None, req, obs);
    }
    let lock = sysroot.lock(wait)?;
    perform_locked(sysroot, &lock, req, who, obs)
}

/// Takes the sysroot lock now or fails naming its holder: how the daemon takes it
/// when a call arrives, so a busy sysroot is an immediate error, before
/// [`perform_locked`] runs the request in a worker.
pub fn lock_now(sysroot: &Sysroot) -> Result<WriterLock> {
    sysroot.lock(LockWait::NoWait)
}

/// Runs `req` with the sysroot lock held (the daemon takes it when a call arrives, so
/// a busy sysroot is an immediate error). The history records every request that may
/// change the system, and nothing else: not checks, dry runs or listings.
pub fn perform_locked(
    sysroot: &Sysroot,
    lock: &WriterLock,
    req: &Request,
    who: &Initiator,
    obs: &dyn Observer,
) -> Result<Outcome> {
    // A panic (a bug) fails the operation like an error, so its history row ends and
    // the daemon that runs it carries on.
    let guarded = || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            execute(sysroot, Some(lock), req, obs)
        }))
        .unwrap_or_else(|p| Err(anyhow::anyhow!("{}", panic_message(&*p))))
    };
    if req.recorded() {
        sysroot.record_as(req.kind(), &who.command, who.uid, guarded)
    } else {
        guarded()
    }
}

/// Says what a caught panic was about, for the error that replaces it.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    let what = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_string());
    format!("internal error (a bug in arbor, please report it): {what}")
}

fn deploy_with(
    sysroot: &Sysroot,
    lock: &WriterLock,
    opts: &DeployOptions,
    obs: &dyn Observer,
) -> Result<Outcome> {
    let opts = layer::prepare(sysroot, opts, obs)?;
    Ok(Outcome::Deployed(Box::new(deploy::deploy(
        sysroot, lock, &opts, obs,
    )?)))
}

fn execute(
    sysroot: &Sysroot,
    lock: Option<&WriterLock>,
    req: &Request,
    obs: &dyn Observer,
) -> Result<Outcome> {
    arbor_core::failpoint::hit("ops-execute")?;
    let held = || lock.context("this operation needs the sysroot lock");
    Ok(match req {
        Request::Deploy(d) => match d.update_options(sysroot) {
            Some(mut opts) => {
                opts.forbid = forbidden_steps(opts.apply.is_some())?;
                let r = update::perform(sysroot, held()?, &opts, update::Action::Stage, obs)?;
                Outcome::Update(Box::new(r))
            }
            None if d.apply.is_some() || d.max_rate.is_some() => {
                anyhow::bail!(
                    "--apply and --max-rate are for deploys from a remote (a channel or --version)"
                )
            }
            None => {
                let rev = d.rev.as_deref().unwrap_or_default();
                let opts = DeployOptions::for_rev(
                    sysroot,
                    rev,
                    d.os.as_deref(),
                    d.kargs.clone(),
                    d.stage,
                )?;
                deploy_with(sysroot, held()?, &opts, obs)?
            }
        },
        Request::Rebase {
            channel,
            os,
            version,
            phase_override,
        } => {
            let opts = UpdateOptions {
                os: os.clone(),
                version: version.clone(),
                rebase: Some(channel.clone()),
                phase_override: *phase_override,
                ..Default::default()
            };
            let r = update::perform(sysroot, held()?, &opts, update::Action::Stage, obs)?;
            Outcome::Update(Box::new(r))
        }
        Request::Upgrade(u) => Outcome::Upgrade(Box::new(upgrade(sysroot, held()?, u, obs)?)),
        Request::Switch(s) => {
            let (image, deploy) = image_follow::switch(sysroot, held()?, s, obs)?;
            Outcome::Upgrade(Box::new(UpgradeOutcome {
                upgraded: deploy.is_some(),
                update: None,
                deploy,
                image: Some(image),
            }))
        }
        Request::Rollback => {
            let order = deploy::rollback(sysroot, held()?)?;
            Outcome::Order(Box::new(BootOrder {
                deployments: status::with_roles(order),
            }))
        }
        Request::Layer { os, edit } => {
            let opts = layer::edit(sysroot, os.as_deref(), edit)?;
            deploy_with(sysroot, held()?, &opts, obs)?
        }
        Request::Kargs(edits) if edits.is_empty() => Outcome::Kargs(Box::new(Kargs {
            kargs: sysroot
                .deployments()?
                .first()
                .map(|d| d.kargs.clone())
                .unwrap_or_default(),
        })),
        Request::Kargs(edits) => Outcome::Kargs(Box::new(Kargs {
            kargs: kargs::kargs(sysroot, held()?, edits)?,
        })),
        Request::Cleanup => Outcome::Cleanup(Box::new(deploy::cleanup(sysroot, held()?)?)),
        Request::Prune { dry_run } => Outcome::Prune(Box::new(prune::prune(
            sysroot.repo(),
            prune::Owner::Held(held()?),
            &deploy::deployment_roots(sysroot)?,
            *dry_run,
            LockWait::NoWait,
        )?)),
        Request::Undeploy(index) => {
            Outcome::Deployment(Box::new(deploy::undeploy(sysroot, held()?, *index)?))
        }
        Request::Pin { index, pinned } => {
            Outcome::Deployment(Box::new(deploy::pin(sysroot, held()?, *index, *pinned)?))
        }
        Request::ApplyLive { root, opts } => {
            Outcome::ApplyLive(Box::new(apply::apply_live(sysroot, held()?, root, opts)?))
        }
        Request::ApplyLiveReset { root } => {
            Outcome::UsrStatus(Box::new(apply::reset(sysroot, held()?, root)?))
        }
        Request::AutoUpdate { policy, now } => Outcome::Update(Box::new(update::auto_update(
            sysroot,
            held()?,
            policy,
            *now,
            obs,
        )?)),
        Request::RemoveRemote(name) => {
            held()?;
            arbor_remote::Remote::remove(sysroot, name)?;
            Outcome::Done
        }
        Request::Reset(level) => {
            let d = arbor_sysroot::select::current(sysroot)?;
            // The reset machine's own policy (or $ARBOR_CONFIG's).
            let own = sysroot.deployment_path(&d).join("etc/arbor/arbor.toml");
            let path = std::env::var_os("ARBOR_CONFIG").map_or(own, Into::into);
            let policy = crate::update::Policy::load(Some(&path))?;
            Outcome::Reset(Box::new(arbor_sysroot::reset::reset(
                sysroot,
                held()?,
                *level,
                &policy.reset_keep,
                &policy.reset_keep_etc,
                obs,
            )?))
        }
        Request::EtcRestore { deployment, paths } => {
            let d = etc_state::pick(sysroot, deployment.as_deref())?;
            Outcome::EtcRestore(Box::new(etc_state::restore(sysroot, held()?, &d, paths)?))
        }
        Request::UsrOverlay { root, req } => {
            match arbor_live::request::perform(sysroot, lock, root, req, obs)? {
                UsrOverlayOutcome::Status(s) => Outcome::UsrStatus(Box::new(s)),
                UsrOverlayOutcome::List(l) => Outcome::OverlayListing(Box::new(l)),
                UsrOverlayOutcome::Committed(c) => Outcome::OverlayCommit(c),
            }
        }
    })
}

/// `health-check`: the booted deployment's checks ([`health::health_check`]), and
/// what they mean for the update under way (testing → active, or failed).
pub fn health_check(
    sysroot: &Sysroot,
    timeout: std::time::Duration,
    wait: LockWait<'_>,
) -> Result<health::HealthReport> {
    let report = health::health_check(sysroot, timeout, wait)?;
    let failed: Vec<String> = report
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    let verdict = match report.passed {
        true => Ok(()),
        false => Err(failed.join("; ")),
    };
    update::state::note_health(sysroot, &report.deployment, verdict);
    // Before a fall back switches away: the report is out first, or queued.
    match report::after_verdict(sysroot, &report) {
        Ok(s) if s.made > 0 => tracing::info!(
            "health reports: {} made, {} sent, {} waiting",
            s.made,
            s.sent,
            s.kept
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("health report: {e:#}"),
    }
    after_switch(sysroot, &report, wait)?;
    Ok(report)
}

/// The verdict on a boot that a soft-reboot or a kexec started (no loader counted its
/// try): a pass forgets the switch; a failure falls back at once to the deployment it
/// came from, by the same kind of switch (docs/activation.md).
fn after_switch(
    sysroot: &Sysroot,
    report: &health::HealthReport,
    wait: LockWait<'_>,
) -> Result<()> {
    let Some(mark) = sysroot.switch_mark() else {
        return Ok(());
    };
    if mark.deployment != report.deployment {
        return Ok(());
    }
    if report.passed {
        return sysroot.clear_switch_mark();
    }
    let lock = sysroot.lock(wait)?;
    let back = arbor_live::activate::fall_back(sysroot, &lock, &report.deployment)?;
    drop(lock);
    match back {
        Some(s) => arbor_live::activate::start(&s),
        None => sysroot.clear_switch_mark(),
    }
}

/// The steps the policy forbids. Read for the report too, where a policy that
/// cannot be read only leaves the report without them; with `--apply` it is an error.
fn forbidden_steps(applying: bool) -> Result<Vec<String>> {
    match update::Policy::load(None) {
        Ok(p) => Ok(p.apply_forbid),
        Err(e) if applying => Err(e),
        Err(e) => {
            tracing::warn!("reading the update policy: {e:#}");
            Ok(Vec::new())
        }
    }
}

/// `upgrade`: a deployment following a remote channel checks, downloads or stages
/// what the channel offers; one following a local ref deploys the ref's tip with its
/// layers again.
fn upgrade(
    sysroot: &Sysroot,
    lock: &WriterLock,
    u: &UpgradeRequest,
    obs: &dyn Observer,
) -> Result<UpgradeOutcome> {
    if update::follows_remote(sysroot, u.os.as_deref()) {
        let opts = UpdateOptions {
            os: u.os.clone(),
            phase_override: u.phase_override,
            dry_run: u.dry_run,
            apply: u.apply,
            forbid: forbidden_steps(u.apply.is_some())?,
            max_rate: u.max_rate,
            ..Default::default()
        };
        let r = update::perform(sysroot, lock, &opts, u.action, obs)?;
        return Ok(UpgradeOutcome {
            upgraded: r.deployment.is_some(),
            update: Some(r),
            deploy: None,
            image: None,
        });
    }
    let plain = u.action == update::Action::Stage && !u.dry_run && !u.phase_override;
    if image_follow::follows_image(sysroot, u.os.as_deref()) {
        let check = u.action == update::Action::Check;
        if !(plain || check) || u.apply.is_some() || u.max_rate.is_some() {
            anyhow::bail!(
                "download-only, dry-run, phase-override, apply and max-rate are for \
                 deployments that follow a remote channel, not a registry image"
            );
        }
        let (image, deploy) = image_follow::upgrade(sysroot, lock, u.os.as_deref(), check, obs)?;
        return Ok(UpgradeOutcome {
            upgraded: deploy.is_some(),
            update: None,
            deploy,
            image: Some(image),
        });
    }
    if u.action != update::Action::Stage
        || u.dry_run
        || u.phase_override
        || u.apply.is_some()
        || u.max_rate.is_some()
    {
        anyhow::bail!(
            "check, download-only, dry-run, phase-override, apply and max-rate are for deployments that follow a remote channel"
        );
    }
    let deploy = match layer::upgrade(sysroot, u.os.as_deref())? {
        Some(opts) => {
            let opts = layer::prepare(sysroot, &opts, obs)?;
            Some(deploy::deploy(sysroot, lock, &opts, obs)?)
        }
        None => None,
    };
    Ok(UpgradeOutcome {
        upgraded: deploy.is_some(),
        update: None,
        deploy,
        image: None,
    })
}
