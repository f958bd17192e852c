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

use crate::boot::{self, Tries};
use crate::lock::LockWait;
use crate::sysroot::{Deployment, Sysroot};

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
/// of tries are skipped, and if all are, the first is booted anyway.
pub fn boot_select(sysroot: &Sysroot, wait: LockWait<'_>) -> Result<BootSelection> {
    let _lock = sysroot.lock(wait)?;
    let list = sysroot.deployments()?;
    if list.is_empty() {
        bail!("there is no boot entry to select");
    }
    let usable = |d: &Deployment| d.tries.is_none_or(|t| t.left > 0);
    let chosen = list.iter().position(usable).unwrap_or(0);
    let d = list[chosen].clone();
    let skipped: Vec<String> = list[..chosen]
        .iter()
        .map(|x| x.entry_file.clone())
        .collect();
    let tries_after = d.tries.filter(|t| t.left > 0).map(|t| Tries {
        left: t.left - 1,
        done: t.done + 1,
    });
    if let Some(after) = tries_after {
        let (base, _) = boot::parse_counter(&d.entry_file);
        let new_name = if after.done == 0 {
            format!("{base}+{}.conf", after.left)
        } else {
            format!("{base}+{}-{}.conf", after.left, after.done)
        };
        sysroot.entry_store().rename(&d.entry_file, &new_name)?;
    }
    if !skipped.is_empty() {
        let msg = format!(
            "automatic rollback: {} ran out of tries; booting deployment {} ({})",
            skipped.join(", "),
            d.index,
            d.dir_name()
        );
        sysroot.note("rollback (automatic)", &Err(msg));
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

/// Marks the booted deployment's entry good: its tries suffix is removed, so the loader
/// keeps booting it.
pub fn boot_complete(sysroot: &Sysroot, wait: LockWait<'_>) -> Result<Deployment> {
    let _lock = sysroot.lock(wait)?;
    let d = booted(sysroot)?;
    if d.tries.is_some() {
        let (base, _) = boot::parse_counter(&d.entry_file);
        sysroot
            .entry_store()
            .rename(&d.entry_file, &format!("{base}.conf"))?;
    }
    sysroot.note("boot-complete", &Ok(()));
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
    let start = Instant::now();
    let detail = loop {
        if let Some(status) = child.try_wait()? {
            break if status.success() {
                "passed".to_string()
            } else {
                status.to_string()
            };
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break format!("killed after {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
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

/// Runs every executable in health.d (in name order, each within `timeout`). All pass:
/// the boot is marked good. One fails: the result is recorded, the entry keeps
/// counting down and the loader will fall back once it runs out of tries.
pub fn health_check(
    sysroot: &Sysroot,
    timeout: Duration,
    wait: LockWait<'_>,
) -> Result<HealthReport> {
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
    };
    if passed {
        boot_complete(sysroot, wait)?;
    }
    crate::update::state::note_health(sysroot, &report.deployment, passed);
    let failed: Vec<String> = report
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    sysroot.note(
        "health-check",
        &if passed {
            Ok(())
        } else {
            Err(failed.join("; "))
        },
    );
    Ok(report)
}
