//! Carrying out the ladder's step (docs/activation.md) with every promise of a reboot:
//! the staged deployment is finalized (its `/etc` merged, its boot entry made the
//! default) right before the switch, as the shutdown would; the switch is recorded
//! where the boot it starts finds it ([`arbor_sysroot::switch_mark`]), so its health
//! check can fall back at once; a soft-reboot's new root is assembled by prepare-root's
//! own code at `/run/nextroot`; a kexec'd kernel gets the deployment's own command
//! line. Live is `apply-live` ([`crate::apply`]) and needs none of this.
//!
//! Preparing happens under the sysroot lock, inside the operation; starting the
//! switch ([`start`]) is left to the caller, once it has said what happens: the
//! userspace that says it goes away.

use std::ffi::CString;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::activation::Step;
use arbor_core::lock::WriterLock;
use arbor_statedb::HistoryKind;
use arbor_sysroot::switch_mark::SwitchMark;
use arbor_sysroot::{Deployment, Sysroot, deploy, prepare_root};

/// Where systemd's soft-reboot looks for the new root.
pub const NEXTROOT: &str = "/run/nextroot";

/// A switch prepared and recorded, for the caller to start.
#[derive(
    Clone,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    zvariant::Type,
    zvariant::Value,
    zvariant::OwnedValue,
)]
#[zvariant(signature = "dict")]
pub struct Switch {
    /// `soft-reboot`, `kexec` or `reboot`.
    pub step: String,
    /// The deployment it brings up (`<commit>.<serial>`).
    pub deployment: String,
    /// Its version, when it has one.
    pub version: String,
}

/// Prepares the switch into the pending deployment by `step` (soft-reboot, kexec or
/// reboot): finalizes a staged one, assembles the new root or loads the new kernel,
/// and records the switch. Nothing is started: see [`start`].
pub fn prepare(sysroot: &Sysroot, lock: &WriterLock, step: Step) -> Result<Switch> {
    if !sysroot.is_running_system() {
        bail!("{step} switches the running system; this sysroot is not it");
    }
    let from = crate::booted(sysroot)?;
    deploy::finalize_staged_locked(sysroot, lock)?;
    tracing::debug!("{step}: the staged deployment is finalized");
    let order = sysroot.deployments()?;
    let target = order
        .first()
        .filter(|d| !d.booted)
        .cloned()
        .context("no deployment is pending: the booted one is the default")?;
    switch_to(sysroot, step, &target, &from, false)
}

/// After a soft-reboot or a kexec into a deployment whose health check failed: makes
/// the deployment it came from the default again and switches back into it, by
/// soft-reboot when it came by soft-reboot (the running kernel is that deployment's),
/// by a reboot through the loader otherwise. `None` when the boot did not come by such
/// a switch, or was itself a fall back (nothing falls back twice).
pub fn fall_back(sysroot: &Sysroot, lock: &WriterLock, failed: &str) -> Result<Option<Switch>> {
    let Some(mark) = sysroot.switch_mark().filter(|m| m.deployment == failed) else {
        return Ok(None);
    };
    if mark.fallback || mark.step == Step::Reboot.name() {
        return Ok(None);
    }
    let order = sysroot.deployments()?;
    let booted = order.iter().find(|d| d.booted).cloned();
    let Some(booted) = booted.filter(|b| b.dir_name() == failed) else {
        return Ok(None);
    };
    let Some(back) = order.iter().find(|d| d.dir_name() == mark.from).cloned() else {
        bail!(
            "cannot fall back: {} (where the {} came from) is no longer deployed",
            mark.from,
            mark.step
        );
    };
    let mut new_order: Vec<Deployment> = vec![back.clone()];
    new_order.extend(
        order
            .into_iter()
            .filter(|d| d.dir_name() != back.dir_name()),
    );
    // The failed entry keeps no tries, as one the loader gave up on: neither the
    // loader nor a later `arbor rollback` picks it by mistake.
    for d in new_order.iter_mut().filter(|d| d.dir_name() == failed) {
        let done = d.tries.map_or(0, |t| t.done + t.left);
        d.tries = Some(arbor_boot::Tries { left: 0, done });
    }
    sysroot.write_boot_order(lock, &new_order)?;
    let msg = format!(
        "automatic rollback: {} failed its health check after a {}; back to {} ({})",
        booted.version.as_deref().unwrap_or("no version"),
        mark.step,
        back.version.as_deref().unwrap_or("no version"),
        back.dir_name()
    );
    sysroot.note(HistoryKind::AutomaticRollback, &Err(msg));
    let step = if mark.step == Step::SoftReboot.name() {
        Step::SoftReboot
    } else {
        Step::Reboot
    };
    switch_to(sysroot, step, &back, &booted, true).map(Some)
}

fn switch_to(
    sysroot: &Sysroot,
    step: Step,
    target: &Deployment,
    from: &Deployment,
    fallback: bool,
) -> Result<Switch> {
    let version = target.version.clone().unwrap_or_default();
    let what = format!(
        "{step} into {} ({}) from {}{}",
        if version.is_empty() { "?" } else { &version },
        target.dir_name(),
        from.dir_name(),
        if fallback { ", falling back" } else { "" }
    );
    sysroot.record(HistoryKind::Activate, || {
        sysroot.set_history_detail(what.clone());
        clear_next_root()?;
        match step {
            Step::SoftReboot => assemble_next_root(sysroot, target)?,
            Step::Kexec => load_kernel(sysroot, target)?,
            Step::Reboot => {}
            Step::Live => bail!("live is apply-live, not a switch"),
        }
        sysroot.write_switch_mark(&SwitchMark {
            step: step.name().to_string(),
            deployment: target.dir_name(),
            from: from.dir_name(),
            fallback,
        })
    })?;
    Ok(Switch {
        step: step.name().to_string(),
        deployment: target.dir_name(),
        version,
    })
}

/// Mounts `target`'s root at [`NEXTROOT`] as prepare-root mounts it at boot, and
/// notes it as the deployment the soft-reboot switches into.
fn assemble_next_root(sysroot: &Sysroot, target: &Deployment) -> Result<()> {
    let next = Path::new(NEXTROOT);
    std::fs::create_dir_all(next).with_context(|| format!("creating {NEXTROOT}"))?;
    prepare_root::prepare_root(
        sysroot.path(),
        &format!("arbor={}", target.arbor_karg()),
        next,
    )
    .with_context(|| format!("assembling {} at {NEXTROOT}", target.dir_name()))?;
    sysroot.write_soft_reboot_mark(target)
}

/// Unmounts a root assembled before (a switch prepared and never started), before
/// any switch is prepared: systemd would switch into it at any later reboot (`systemctl reboot` soft-reboots when
/// `/run/nextroot` holds a root).
fn clear_next_root() -> Result<()> {
    let next = Path::new(NEXTROOT);
    let mounted = arbor_core::mounts::list()?
        .iter()
        .any(|m| m.mount_point == next);
    if mounted {
        rustix::mount::unmount(next, rustix::mount::UnmountFlags::DETACH)
            .with_context(|| format!("unmounting the earlier {NEXTROOT}"))?;
    }
    Ok(())
}

/// Loads `target`'s kernel and initramfs (the files its boot entry names) with its
/// boot entry's command line.
fn load_kernel(sysroot: &Sysroot, target: &Deployment) -> Result<()> {
    let file = |p: &str| -> Result<std::fs::File> {
        let path = sysroot.entry_file_path(p);
        std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))
    };
    let kernel = file(&target.linux)?;
    let initrd = target.initrd.as_deref().map(file).transpose()?;
    let mut options = vec![format!("arbor={}", target.arbor_karg())];
    options.extend(target.kargs.iter().cloned());
    let cmdline = CString::new(options.join(" ")).context("a kernel argument holds a NUL")?;
    use std::os::fd::AsFd;
    arbor_core::sys::kexec_file_load(kernel.as_fd(), initrd.as_ref().map(|f| f.as_fd()), &cmdline)
        .map_err(|e| {
            anyhow::anyhow!(
                "the kernel refused to load {} for kexec: {e} (a locked-down kernel wants a \
             signed image; kexec may be disabled)",
                target.linux
            )
        })
}

/// Starts a prepared switch: `systemctl soft-reboot`, `kexec` or `reboot`, without
/// waiting for it (the caller's process is stopped with the rest). The live overlay
/// of the userspace that ends needs no clearing: its record names the deployment it
/// was applied on, which is no longer the booted one.
pub fn start(switch: &Switch) -> Result<()> {
    let verb = match Step::parse(&switch.step) {
        Some(Step::SoftReboot) => "soft-reboot",
        Some(Step::Kexec) => "kexec",
        Some(Step::Reboot) => "reboot",
        _ => bail!("{} is not a switch", switch.step),
    };
    let status = Command::new("systemctl")
        .args(["--no-block", verb])
        .status()
        .context("running systemctl")?;
    if !status.success() {
        bail!("systemctl {verb} failed ({status})");
    }
    Ok(())
}
