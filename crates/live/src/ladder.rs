//! The facts of the activation ladder ([`crate::activation`]), read from the two
//! deployments and the machine: what apply-live would do, whether the kernel or its
//! command line changes, which changed libraries running services keep mapped,
//! whether systemd can soft-reboot and kexec is possible.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use serde::Serialize;

use crate::activation::{self, Choice, Facts, Step};
use crate::apply::{self, ApplyOptions};
use crate::plan::{LivePlan, usr_path};
use arbor_store::ObjectId;
use arbor_store::dpkg::PackageDiff;
use arbor_sysroot::{Deployment, Sysroot, status};

/// What the administrator and the policy allow.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The mildest step allowed (`--apply`; live allows every step).
    pub cap: Step,
    /// Steps the policy forbids.
    pub forbidden: BTreeSet<Step>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cap: Step::Live,
            forbidden: BTreeSet::new(),
        }
    }
}

/// The choice as the CLI, JSON and D-Bus carry it.
#[derive(
    Clone,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    serde::Deserialize,
    zvariant::Type,
    zvariant::Value,
    zvariant::OwnedValue,
)]
#[zvariant(signature = "dict")]
pub struct Activation {
    /// The step that will be taken: live, soft-reboot, kexec or reboot.
    pub step: String,
    /// The mildest step the changes allow, before limits and the machine.
    pub needed: String,
    /// One line per milder step passed over: "STEP: why".
    pub passed_over: Vec<String>,
    /// The step and the reason, in one line.
    pub summary: String,
}

impl From<&Choice> for Activation {
    fn from(c: &Choice) -> Self {
        Activation {
            step: c.step.name().to_string(),
            needed: c.needed.name().to_string(),
            passed_over: c
                .passed_over
                .iter()
                .map(|(s, why)| format!("{s}: {why}"))
                .collect(),
            summary: c.summary(),
        }
    }
}

/// The live root of a sysroot: `/` on the running system, else the booted
/// deployment's checkout (a folder sysroot, where `ARBOR_CMDLINE` names the booted).
pub fn live_root(sysroot: &Sysroot, booted: &Deployment) -> PathBuf {
    if sysroot.is_running_system() {
        return PathBuf::from("/");
    }
    sysroot.deployment_path(booted)
}

/// The step that brings the machine to its pending (staged) deployment.
pub fn for_pending(sysroot: &Sysroot, limits: &Limits) -> Result<Choice> {
    Ok(for_pending_planned(sysroot, limits)?.0)
}

/// [`for_pending`] with the apply-live plan it was chosen from, for a caller that goes
/// on to apply live ([`apply::apply_live_planned`]): the plan reads the whole `/etc`
/// three times over, the commits' difference and every unit file, which is most of
/// a second on a slow machine.
pub fn for_pending_planned(sysroot: &Sysroot, limits: &Limits) -> Result<(Choice, apply::Planned)> {
    let booted = crate::booted(sysroot)?;
    let root = live_root(sysroot, &booted);
    let planned = apply::plan_for_apply(sysroot, &root, &ApplyOptions::default())?;
    let pending = status::status(sysroot)?.next().cloned();
    let kargs_changed = pending.is_some_and(|p| own_kargs(&p.kargs) != own_kargs(&booted.kargs));
    let plan = &planned.plan;
    let choice = choose(
        sysroot,
        &root,
        plan,
        kernel_changes(plan),
        kargs_changed,
        limits,
    );
    tracing::debug!(step = %choice.step, "the ladder chose");
    Ok((choice, planned))
}

/// The step that would bring the machine to `commit` (downloaded, not deployed),
/// with the booted deployment's kernel arguments.
pub fn for_commit(sysroot: &Sysroot, commit: &ObjectId, limits: &Limits) -> Result<Choice> {
    let root = live_root(sysroot, &crate::booted(sysroot)?);
    let plan = apply::plan_for_commit(sysroot, &root, commit)?;
    let kernel = kernel_changes(&plan);
    Ok(choose(sysroot, &root, &plan, kernel, false, limits))
}

/// The step an offered version would take, estimated before anything is downloaded
/// from the package lists its publisher recorded (`AvailableUpdate`): a kernel or
/// initramfs generator package changes → kexec, a core package → soft-reboot, else
/// live. The choice is made again from the trees once the version is staged.
pub fn estimate(sysroot: &Sysroot, packages: &PackageDiff, limits: &Limits) -> Choice {
    // Without a booted deployment (a first deploy) there is nothing running to keep.
    let root = match crate::booted(sysroot) {
        Ok(b) => live_root(sysroot, &b),
        Err(_) => sysroot.path().to_path_buf(),
    };
    let kernel = packages
        .added
        .iter()
        .chain(&packages.removed)
        .map(|p| p.name.as_str())
        .chain(packages.upgraded.iter().map(|c| c.name.as_str()))
        .chain(packages.downgraded.iter().map(|c| c.name.as_str()))
        .any(|n| {
            n.starts_with("linux-image-")
                || matches!(n, "initramfs-tools" | "dracut" | "dracut-core")
        });
    let plan = LivePlan {
        from: ObjectId([0; 32]),
        to: ObjectId([0; 32]),
        added: Vec::new(),
        changed: Vec::new(),
        removed: Vec::new(),
        packages: packages.clone(),
        services: Vec::new(),
        etc_changed: Vec::new(),
        refusals: Vec::new(),
    };
    choose(sysroot, &root, &plan, kernel, false, limits)
}

fn choose(
    sysroot: &Sysroot,
    root: &Path,
    plan: &LivePlan,
    kernel_changed: bool,
    kargs_changed: bool,
    limits: &Limits,
) -> Choice {
    let running = sysroot.is_running_system();
    activation::choose(&Facts {
        live: plan,
        kernel_changed,
        kargs_changed,
        mapped_libraries: if running {
            mapped_elsewhere(root, plan)
        } else {
            Vec::new()
        },
        soft_reboot_available: running && systemd_version().is_some_and(|v| v >= 254),
        kexec_unavailable: if running {
            kexec_unavailable()
        } else {
            Some("not the running system".to_string())
        },
        cap: limits.cap,
        forbidden: &limits.forbidden,
    })
}

/// The kernel arguments a deployment was given, without the `arbor=` that names it.
fn own_kargs(kargs: &[String]) -> Vec<&String> {
    kargs.iter().filter(|k| !k.starts_with("arbor=")).collect()
}

/// The kernel image or the initramfs of a module folder changes.
fn kernel_changes(plan: &LivePlan) -> bool {
    plan.added
        .iter()
        .chain(&plan.changed)
        .chain(&plan.removed)
        .any(|p| {
            p.starts_with("/usr/lib/modules/")
                && (p.ends_with("/vmlinuz") || p.ends_with("/initramfs.img"))
        })
}

/// Shared libraries that change (or go) and that a process of a service live would
/// not restart (or PID 1) has mapped; read from `/proc/PID/maps` and the process's
/// cgroup. Login sessions are left out: a shell that keeps an old library harms
/// nothing the update is about.
fn mapped_elsewhere(root: &Path, plan: &LivePlan) -> Vec<String> {
    let libs: BTreeSet<&str> = plan
        .changed
        .iter()
        .chain(&plan.removed)
        .map(String::as_str)
        .filter(|p| p.rsplit('/').next().is_some_and(|n| n.contains(".so")))
        .collect();
    if libs.is_empty() || root != Path::new("/") {
        return Vec::new();
    }
    let restarted: BTreeSet<&str> = plan.services.iter().map(String::as_str).collect();
    let mut found = BTreeSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        // In doubt, not live.
        return vec!["(unknown: /proc cannot be read)".to_string()];
    };
    for p in procs.flatten() {
        let pid = p.file_name();
        let Some(pid) = pid
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Some(unit) = unit_of(pid) else { continue };
        if restarted.contains(unit.as_str()) {
            continue;
        }
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            continue;
        };
        for l in maps.lines() {
            // "addr perms offset dev inode   /path (deleted)?"
            let Some(path) = l.split_whitespace().nth(5) else {
                continue;
            };
            let path = usr_path(path);
            if libs.contains(path.as_str()) {
                found.insert(path);
            }
        }
    }
    found.into_iter().collect()
}

/// The service (or `init.scope` for PID 1) a process belongs to, from its cgroup;
/// `None` for kernel threads and processes outside system services.
fn unit_of(pid: &str) -> Option<String> {
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = cg.lines().find_map(|l| l.strip_prefix("0::"))?;
    if path == "/init.scope" {
        return Some("init.scope".to_string());
    }
    let rest = path.strip_prefix("/system.slice/")?;
    let unit = rest.split('/').next()?;
    unit.ends_with(".service").then(|| unit.to_string())
}

/// The running systemd's version (`systemctl --version`: "systemd 257 (…)").
fn systemd_version() -> Option<u32> {
    if !Path::new("/run/systemd/system").is_dir() {
        return None;
    }
    let out = Command::new("systemctl").arg("--version").output().ok()?;
    parse_systemd_version(&String::from_utf8_lossy(&out.stdout))
}

fn parse_systemd_version(text: &str) -> Option<u32> {
    let first = text.lines().next()?;
    first
        .strip_prefix("systemd ")?
        .split([' ', '.', '~'])
        .next()?
        .parse()
        .ok()
}

/// Why kexec cannot be used here, if it cannot: a kernel without kexec, kexec disabled
/// by sysctl, or the kernel locked down (Secure Boot): a locked-down kernel loads only
/// signed kernels, which arbor does not check for. arbor loads the kernel itself
/// (`kexec_file_load`), so no kexec tool is needed.
fn kexec_unavailable() -> Option<String> {
    if !Path::new("/sys/kernel/kexec_loaded").exists() {
        return Some("the running kernel has no kexec".to_string());
    }
    if std::fs::read_to_string("/proc/sys/kernel/kexec_load_disabled")
        .is_ok_and(|s| s.trim() == "1")
    {
        return Some("kexec is disabled (kernel.kexec_load_disabled = 1)".to_string());
    }
    if let Ok(l) = std::fs::read_to_string("/sys/kernel/security/lockdown")
        && let Some(mode) = lockdown_mode(&l)
    {
        return Some(format!("the kernel is locked down ({mode}; Secure Boot)"));
    }
    None
}

/// The active lockdown mode from `/sys/kernel/security/lockdown` ("none [integrity]
/// confidentiality"), unless it is none.
fn lockdown_mode(text: &str) -> Option<&str> {
    let active = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))?;
    (active != "none").then_some(active)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_versions_and_lockdown_modes_parse() {
        assert_eq!(
            parse_systemd_version("systemd 257 (257.13-1~deb13u1)\n+PAM +AUDIT"),
            Some(257)
        );
        assert_eq!(
            parse_systemd_version("systemd 252 (252.39-1~deb12u1)"),
            Some(252)
        );
        assert_eq!(parse_systemd_version("something else"), None);
        assert_eq!(lockdown_mode("[none] integrity confidentiality\n"), None);
        assert_eq!(
            lockdown_mode("none [integrity] confidentiality\n"),
            Some("integrity")
        );
    }

    #[test]
    fn the_kernel_changes_when_a_module_folder_kernel_or_initramfs_does() {
        let mut p = LivePlan {
            from: ObjectId::of(b"a"),
            to: ObjectId::of(b"b"),
            added: vec!["/usr/lib/modules/6.12.1-amd64/kernel/x.ko".into()],
            changed: Vec::new(),
            removed: Vec::new(),
            packages: Default::default(),
            services: Vec::new(),
            etc_changed: Vec::new(),
            refusals: Vec::new(),
        };
        assert!(!kernel_changes(&p));
        p.changed
            .push("/usr/lib/modules/6.1.0-50-amd64/initramfs.img".into());
        assert!(kernel_changes(&p));
    }

    #[test]
    fn own_kargs_leave_arbor_out() {
        let a = vec![
            "root=UUID=1".to_string(),
            "arbor=/arbor/boot.0/x/0".to_string(),
        ];
        let b = vec![
            "root=UUID=1".to_string(),
            "arbor=/arbor/boot.1/y/0".to_string(),
        ];
        assert_eq!(own_kargs(&a), own_kargs(&b));
    }
}
