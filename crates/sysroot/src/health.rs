//! Boot counting and health checks: how a bad update rolls itself back.
//!
//! New entries carry the BLS `+3` tries suffix. Each boot of such an entry costs one try
//! (the loader renames it `+2-1`, …); `boot-complete` removes the suffix once the
//! system proved healthy (`health-check` runs `/etc/arbor/health.d/*` and calls it on
//! success). An entry that runs out of tries is skipped by the loader, which boots the
//! next one: the previous deployment. `boot-select` computes that choice the way
//! systemd-boot does, so the whole walk can be tested without rebooting.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::{Deployment, Sysroot};
use arbor_boot::{self as boot, Tries};
use arbor_core::lock::LockWait;
use arbor_statedb::HistoryKind;

/// What the loader would boot now.
#[derive(Clone, Debug, Serialize)]
pub struct BootSelection {
    /// The chosen deployment (its `tries` as they were before this boot).
    pub deployment: Deployment,
    /// Its kernel command line.
    pub cmdline: String,
    /// Tries left after this boot (`None`: a good entry, not counted).
    pub tries_after: Option<Tries>,
    /// Entries skipped because they ran out of tries: an automatic rollback.
    pub skipped: Vec<String>,
}

/// Chooses the entry a systemd-boot-style loader boots next and consumes one of its
/// tries: the first entry in boot order with tries left (or none counted); entries out
/// of tries are skipped, and if all are, the first is booted anyway. (What the booted
/// system then makes of a fallback is [`settle_fallback`]'s, as on a real machine.)
pub fn boot_select(sysroot: &Sysroot, wait: LockWait<'_>) -> Result<BootSelection> {
    let _lock = sysroot.lock(wait)?;
    let list = sysroot.deployments()?;
    if list.is_empty() {
        bail!("there is no boot entry to select");
    }
    let (chosen, tries_after) = choose_entry(&list.iter().map(|d| d.tries).collect::<Vec<_>>());
    let d = list[chosen].clone();
    let skipped: Vec<String> = list[..chosen]
        .iter()
        .map(|x| x.entry_file.clone())
        .collect();
    if let Some(after) = tries_after {
        let (base, _) = boot::parse_counter(&d.entry_file);
        let new_name = if after.done == 0 {
            format!("{base}+{}.conf", after.left)
        } else {
            format!("{base}+{}-{}.conf", after.left, after.done)
        };
        sysroot.entry_store().rename(&d.entry_file, &new_name)?;
    }
    let mut options = vec![format!("arbor={}", d.arbor_karg())];
    options.extend(d.kargs.iter().cloned());
    Ok(BootSelection {
        cmdline: options.join(" "),
        deployment: d,
        tries_after,
        skipped,
    })
}

/// The loader's choice among entries in boot order, given their tries: the first
/// with tries left (or not counted), else the first; and its tries after this boot.
pub fn choose_entry(tries: &[Option<Tries>]) -> (usize, Option<Tries>) {
    let usable = |t: &Option<Tries>| t.is_none_or(|t| t.left > 0);
    let chosen = tries.iter().position(usable).unwrap_or(0);
    let after = tries
        .get(chosen)
        .copied()
        .flatten()
        .filter(|t| t.left > 0)
        .map(|t| Tries {
            left: t.left - 1,
            done: t.done + 1,
        });
    (chosen, after)
}

/// After the loader fell back (every entry before the booted one ran out of tries), makes
/// the booted deployment the default again and records the automatic rollback, as
/// greenboot runs `rpm-ostree rollback`: the loader then boots it without skipping a
/// dead entry first, and the failed deployment stays below it. Returns the deployments
/// the loader gave up on (none when there was no fallback to settle).
pub fn settle_fallback(sysroot: &Sysroot, wait: LockWait<'_>) -> Result<Vec<Deployment>> {
    let lock = sysroot.lock(wait)?;
    let mut order = sysroot.deployments()?;
    let Some(b) = order.iter().position(|d| d.booted) else {
        return Ok(Vec::new());
    };
    // A deployment made default by a deploy or rollback still has tries left: only
    // entries the loader gave up on mean a fallback. GRUB says so in its environment
    // block: its default's count went below zero.
    let grub_dir = sysroot.boot_dir().join("grub");
    let grub_gave_up = sysroot.loader() == boot::Loader::Grub
        && b == 1
        && boot::grubenv::fell_back(&boot::grubenv::read(&grub_dir)?, &order[0].grub_entry().id);
    if b == 0
        || !(grub_gave_up
            || order[..b]
                .iter()
                .all(|d| d.tries.is_some_and(|t| t.left == 0)))
    {
        return Ok(Vec::new());
    }
    if grub_gave_up {
        // Its entry shows it ran out, as systemd-boot's renames would.
        let max = boot::grubenv::MAX_TRIES;
        order[0].tries = Some(Tries { left: 0, done: max });
    }
    let failed: Vec<String> = order[..b]
        .iter()
        .map(|d| {
            format!(
                "{} ({})",
                d.version.as_deref().unwrap_or("no version"),
                d.dir_name()
            )
        })
        .collect();
    let booted = order.remove(b);
    let msg = format!(
        "automatic rollback: {} ran out of tries; the loader booted {} ({}) again, which is \
         the default again",
        failed.join(", "),
        booted.version.as_deref().unwrap_or("no version"),
        booted.dir_name()
    );
    order.insert(0, booted);
    for (i, d) in order.iter_mut().enumerate() {
        d.index = i as u32;
    }
    sysroot.write_boot_order(&lock, &order)?;
    sysroot.note(HistoryKind::AutomaticRollback, &Err(msg));
    Ok(order[1..=b].to_vec())
}

/// Marks the booted deployment's entry good: its tries suffix is removed, so the loader
/// keeps booting it.
pub fn boot_complete(sysroot: &Sysroot, wait: LockWait<'_>) -> Result<Deployment> {
    let _lock = sysroot.lock(wait)?;
    let d = booted(sysroot)?;
    if sysroot.loader() == boot::Loader::Grub {
        // GRUB stops counting: it boots this entry from now on.
        let dir = sysroot.boot_dir().join("grub");
        let env = boot::grubenv::read(&dir)?;
        let id = d.grub_entry().id;
        if env.counting().is_some_and(|(e, _)| e == id) {
            boot::grubenv::write(&dir, &boot::grubenv::mark_good(&env, &id))?;
        }
    }
    if d.tries.is_some() {
        let (base, _) = boot::parse_counter(&d.entry_file);
        sysroot
            .entry_store()
            .rename(&d.entry_file, &format!("{base}.conf"))?;
    }
    sysroot.note(HistoryKind::BootComplete, &Ok(()));
    Ok(d)
}

fn booted(sysroot: &Sysroot) -> Result<Deployment> {
    sysroot.deployments()?.into_iter().find(|d| d.booted).context(
        "no booted deployment: arbor= is not on the kernel command line (ARBOR_CMDLINE names one for a folder sysroot)",
    )
}

/// One health check's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct CheckResult {
    /// The executable's name in health.d.
    pub name: String,
    /// Exit status 0 within the time limit.
    pub passed: bool,
    /// "exit status 1", "killed after 60 s", …
    pub detail: String,
    /// The last lines it printed.
    pub output: String,
}

/// All checks of one run.
#[derive(Clone, Debug, Serialize)]
pub struct HealthReport {
    /// The deployment checked.
    pub deployment: String,
    /// Each check, in name order.
    pub checks: Vec<CheckResult>,
    /// All passed (and the boot was marked good).
    pub passed: bool,
    /// The deployments the loader gave up on before booting this one (an automatic
    /// rollback this run settled), by folder name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rolled_back: Vec<String>,
}

fn run_check(path: &Path, timeout: Duration) -> Result<CheckResult> {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let out = tempfile::tempfile()?;
    let mut child = Command::new(path)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out.try_clone()?)
        .current_dir("/")
        .spawn()
        .with_context(|| format!("starting health check {}", path.display()))?;
    use wait_timeout::ChildExt;
    let detail = match child.wait_timeout(timeout)? {
        Some(status) if status.success() => "passed".to_string(),
        Some(status) => status.to_string(),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            format!("killed after {} s", timeout.as_secs())
        }
    };
    let mut text = String::new();
    use std::io::{Read, Seek};
    let mut out = out;
    out.rewind()?;
    out.take(64 << 10).read_to_string(&mut text).ok();
    let tail: Vec<&str> = text.lines().rev().take(10).collect();
    let output = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
    Ok(CheckResult {
        name,
        passed: detail == "passed",
        detail,
        output,
    })
}

/// The health.d folder of the booted system: `/etc/arbor/health.d`, inside the booted
/// deployment when the sysroot is a folder.
fn health_dir(sysroot: &Sysroot, d: &Deployment) -> PathBuf {
    if sysroot.is_running_system() {
        PathBuf::from("/etc/arbor/health.d")
    } else {
        sysroot.deployment_path(d).join("etc/arbor/health.d")
    }
}

/// On the running system, waits (up to `limit`) until systemd has finished starting
/// it: the checks judge the booted system, not one still coming up. Returns at once
/// elsewhere (a folder sysroot, no systemd). The wait ends in any state but
/// "initializing" and "starting": "degraded" (a unit failed) is for the checks to judge.
pub fn wait_for_startup(sysroot: &Sysroot, limit: Duration) {
    if !sysroot.is_running_system() || !Path::new("/run/systemd/system").is_dir() {
        return;
    }
    let start = Instant::now();
    while start.elapsed() < limit {
        let state = Command::new("systemctl")
            .arg("is-system-running")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        if !matches!(state.as_str(), "initializing" | "starting") {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Runs every executable in health.d (in name order, each within `timeout`). All pass:
/// the boot is marked good. One fails: the result is recorded in the history, the
/// entry keeps counting down and the loader will fall back once it runs out of tries.
/// (The update state machine hears of it from `ops::health_check`.)
pub fn health_check(
    sysroot: &Sysroot,
    timeout: Duration,
    wait: LockWait<'_>,
) -> Result<HealthReport> {
    let rolled_back = settle_fallback(sysroot, wait)?
        .iter()
        .map(Deployment::dir_name)
        .collect();
    let d = booted(sysroot)?;
    let dir = health_dir(sysroot, &d);
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    paths.sort();
    let mut checks = Vec::new();
    for p in paths {
        use std::os::unix::fs::PermissionsExt;
        let Ok(m) = std::fs::metadata(&p) else {
            continue;
        };
        if m.is_file() && m.permissions().mode() & 0o111 != 0 {
            checks.push(run_check(&p, timeout)?);
        }
    }
    let passed = checks.iter().all(|c| c.passed);
    let report = HealthReport {
        deployment: d.dir_name(),
        checks,
        passed,
        rolled_back,
    };
    if passed {
        boot_complete(sysroot, wait)?;
    }
    let failed: Vec<String> = report
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    sysroot.note(
        HistoryKind::HealthCheck,
        &if passed {
            Ok(())
        } else {
            Err(failed.join("; "))
        },
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(left: u32, done: u32) -> Option<Tries> {
        Some(Tries { left, done })
    }

    #[test]
    fn the_loader_boots_the_first_entry_with_tries_left() {
        // A new entry: boots, one try consumed.
        assert_eq!(choose_entry(&[t(3, 0), None]), (0, t(2, 1)));
        // A good entry is not counted.
        assert_eq!(choose_entry(&[None, t(3, 0)]), (0, None));
        // Out of tries: the next one boots (the automatic rollback).
        assert_eq!(choose_entry(&[t(0, 3), None]), (1, None));
        assert_eq!(choose_entry(&[t(0, 3), t(1, 2), None]), (1, t(0, 3)));
        // All out of tries: the first boots anyway, uncounted.
        assert_eq!(choose_entry(&[t(0, 3), t(0, 3)]), (0, None));
    }
}
