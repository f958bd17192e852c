//! `apply-live`: the running system shows the pending deployment's `/usr` (or the
//! files of some packages) without a reboot.
//!
//! The difference between the booted and the pending commit goes into a fresh
//! overlay upper layer, mounted on the live root's `/usr` over the booted
//! deployment's own `/usr`. Added and changed files are copied from the pending
//! deployment, never hardlinked, because a write in the live root must not reach the
//! store. Removed files become whiteouts. `/etc` gets the three-way merge a deploy
//! does. A reboot drops it all: the layer lives under the run folder. Booting the
//! pending deployment gives the same files for real.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::etc::{plan_etc, prepare_etc_live};
use super::plan::{self, EtcOutcome, Facts, LivePlan, UNIT_DIR, usr_path};
use super::upper::{UpperChanges, build_upper};
use super::{OverlayKind, UsrStatus, booted, live_dir, mount_overlay, usr_mount};
use arbor_core::fsutil;
use arbor_core::lock::WriterLock;
use arbor_store::ObjectId;
use arbor_store::diff::diff_commits;
use arbor_store::inspect;
use arbor_sysroot::etc::merge as etc_merge;
use arbor_sysroot::live_record::LiveRecord;
use arbor_sysroot::status;
use arbor_sysroot::{Deployment, Sysroot};

/// What to apply.
#[derive(Clone, Debug, Default)]
pub struct ApplyOptions {
    /// Only the files of these packages (and no `/etc` merge).
    pub packages: Option<Vec<String>>,
    /// Restart the units whose unit files or executables changed.
    pub restart_services: bool,
    /// Say what would happen; change nothing.
    pub dry_run: bool,
    /// Apply even what cannot be applied cleanly live.
    pub force: bool,
}

/// What apply-live did.
#[derive(Clone, Debug, Serialize, zvariant::Type, zvariant::Value, zvariant::OwnedValue)]
#[zvariant(signature = "dict")]
pub struct ApplyResult {
    /// The plan it carried out.
    pub plan: LivePlan,
    /// False for a dry run.
    pub applied: bool,
    /// Units restarted through systemctl.
    pub restarted: Vec<String>,
}

fn read_text(sysroot: &Sysroot, commit: &ObjectId, path: &str) -> Option<String> {
    let mut s = String::new();
    inspect::open_content(sysroot.repo(), commit, path)
        .ok()?
        .take(16 << 20)
        .read_to_string(&mut s)
        .ok()?;
    Some(s)
}

/// The files dpkg lists for `pkg` in a commit (any architecture).
fn package_files(sysroot: &Sysroot, commit: &ObjectId, pkg: &str) -> Vec<String> {
    let info = "/usr/lib/arbor/dpkg/info";
    let mut out = Vec::new();
    if let Ok(list) = inspect::list(sysroot.repo(), commit, info, false) {
        for e in list {
            let name = e.path.rsplit('/').next().unwrap_or_default().to_string();
            let base = name.strip_suffix(".list").unwrap_or("");
            if base == pkg || base.split(':').next() == Some(pkg) && base.contains(':') {
                if let Some(text) = read_text(sysroot, commit, &format!("{info}/{name}")) {
                    out.extend(text.lines().map(usr_path));
                }
            }
        }
    }
    out
}

/// Removed paths some process still has open or mapped, found by (device, inode).
fn open_elsewhere(root: &Path, removed: &[String]) -> Vec<String> {
    let mut ids = std::collections::HashMap::new();
    for p in removed {
        if let Ok(m) = std::fs::symlink_metadata(root.join(p.trim_start_matches('/')))
            && m.is_file()
        {
            ids.insert((m.dev(), m.ino()), p.clone());
        }
    }
    let mut busy = BTreeSet::new();
    if ids.is_empty() {
        return Vec::new();
    }
    let Ok(procs) = procfs::process::all_processes() else {
        return Vec::new();
    };
    for p in procs.flatten() {
        // Open files and mapped ones (a running program's own binary and libraries);
        // the links are stat'ed, which follows them to the inode in whatever mount
        // namespace the process lives in.
        for sub in ["fd", "map_files"] {
            let Ok(entries) = std::fs::read_dir(format!("/proc/{}/{sub}", p.pid())) else {
                continue;
            };
            for e in entries.flatten() {
                if let Ok(m) = std::fs::metadata(e.path())
                    && let Some(path) = ids.get(&(m.dev(), m.ino()))
                {
                    busy.insert(path.clone());
                }
            }
        }
    }
    busy.into_iter().collect()
}

/// The deployment apply-live brings the running system to: the staged one, else the
/// pending one.
fn pending(sysroot: &Sysroot) -> Result<Deployment> {
    status::status(sysroot)?.next().cloned().ok_or_else(|| {
        arbor_core::error::Error::NothingPending(
            "nothing is pending: deploy, upgrade or install first".into(),
        )
        .into()
    })
}

/// Works out what apply-live would do, without changing anything: reads the facts
/// from the store and the live root, and leaves the decisions to [`plan::decide`].
pub fn plan(sysroot: &Sysroot, root: &Path, opts: &ApplyOptions) -> Result<LivePlan> {
    let to = pending(sysroot)?;
    let new_default = || etc_merge::scan(&sysroot.deployment_path(&to).join("usr/etc"));
    plan_to(sysroot, root, opts, &to.commit, &new_default)
}

/// [`plan`] for a commit in the store that is not deployed yet (an update a dry run
/// found downloaded), with its `/etc` defaults read from the store.
pub fn plan_for_commit(sysroot: &Sysroot, root: &Path, commit: &ObjectId) -> Result<LivePlan> {
    let new_default =
        || arbor_sysroot::etc::stored::scan_commit(sysroot.repo(), commit, "/usr/etc");
    plan_to(
        sysroot,
        root,
        &ApplyOptions::default(),
        commit,
        &new_default,
    )
}

/// [`plan`] from the booted deployment to `to`, whose `/etc` defaults `new_default`
/// reads.
fn plan_to(
    sysroot: &Sysroot,
    root: &Path,
    opts: &ApplyOptions,
    to: &ObjectId,
    new_default: &dyn Fn() -> Result<etc_merge::EtcTree>,
) -> Result<LivePlan> {
    let from = booted(sysroot)?;
    let repo = sysroot.repo();
    let only = opts.packages.as_deref().map(|names| {
        let mut files = BTreeSet::new();
        for n in names {
            files.extend(package_files(sysroot, &from.commit, n));
            files.extend(package_files(sysroot, to, n));
        }
        (names, files)
    });
    let units = match inspect::list(repo, to, UNIT_DIR, false) {
        Ok(list) => list
            .into_iter()
            .filter_map(|e| e.path.rsplit('/').next().map(str::to_string))
            .collect(),
        Err(_) => Vec::new(),
    };
    let etc = match opts.packages {
        None => {
            let etc = plan_etc(sysroot, &from, new_default()?, root)?;
            Some(EtcOutcome {
                changed: etc.changed,
                conflicts: etc.conflicts,
            })
        }
        Some(_) => None,
    };
    plan::decide(Facts {
        from: from.commit,
        to: *to,
        changes: diff_commits(repo, &from.commit, to)?,
        packages: arbor_store::dpkg::diff(
            &arbor_store::dpkg::packages_of(repo, &from.commit)?,
            &arbor_store::dpkg::packages_of(repo, to)?,
        ),
        only,
        units,
        read: &|path| read_text(sysroot, to, path),
        etc,
        open: &|removed| open_elsewhere(root, removed),
    })
}

/// Makes the live root's `/usr` (and `/etc`) match the pending deployment.
pub fn apply_live(
    sysroot: &Sysroot,
    _lock: &WriterLock,
    root: &Path,
    opts: &ApplyOptions,
) -> Result<ApplyResult> {
    let plan = plan(sysroot, root, opts)?;
    if opts.dry_run {
        return Ok(ApplyResult {
            plan,
            applied: false,
            restarted: Vec::new(),
        });
    }
    if !plan.refusals.is_empty() && !opts.force {
        return Err(
            anyhow::Error::new(arbor_core::error::Error::Refused(plan.refusals.clone()))
                .context("cannot apply live without --force"),
        );
    }
    let from = booted(sysroot)?;
    let to = pending(sysroot)?;
    let usr = root.join("usr");
    match usr_mount(&usr)? {
        Some(m) if m.upper.starts_with(live_dir(sysroot)) => {
            rustix::mount::unmount(&usr, rustix::mount::UnmountFlags::DETACH)
                .context("unmounting the previous live layer")?;
        }
        Some(m) => bail!(
            "/usr has a usroverlay (upper layer {}): 'arbor usroverlay --remove' first",
            m.upper.display()
        ),
        None => {}
    }
    let base = live_dir(sysroot);
    std::fs::create_dir_all(&base)?;
    // Earlier layers are no longer mounted here: drop them.
    for e in std::fs::read_dir(&base)?.flatten() {
        if e.file_name().to_string_lossy().starts_with("layer-") {
            fsutil::remove_tree(&e.path())?;
        }
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let dir = base.join(format!("layer-{nanos}"));
    for sub in ["upper", "work"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    build_upper(
        &sysroot.deployment_path(&to).join("usr"),
        &usr,
        &dir.join("upper"),
        &UpperChanges {
            added: &plan.added,
            changed: &plan.changed,
            removed: &plan.removed,
        },
    )?;
    arbor_core::failpoint::hit("live-upper-built")?;
    // Everything that can fail for want of space or rights happens before the
    // overlay is mounted; the /etc entries then switch by renames beside themselves.
    let etc_swap = match opts.packages {
        None => {
            let new_default = etc_merge::scan(&sysroot.deployment_path(&to).join("usr/etc"))?;
            let etc = plan_etc(sysroot, &from, new_default, root)?;
            Some(prepare_etc_live(sysroot, &to, root, &etc, &dir)?)
        }
        Some(_) => None,
    };
    mount_overlay(&usr, &dir.join("upper"), &dir.join("work"))?;
    arbor_core::failpoint::hit("live-usr-mounted")?;
    LiveRecord {
        booted: from.dir_name(),
        commit: to.commit,
        upper: dir.join("upper"),
    }
    .write(sysroot)?;
    if let Some(swap) = etc_swap {
        swap.commit()
            .context("/usr shows the pending deployment, but /etc was not fully merged")?;
    }
    let mut restarted = Vec::new();
    let systemd_runs = root == Path::new("/") && Path::new("/run/systemd/system").is_dir();
    if opts.restart_services && systemd_runs && !plan.services.is_empty() {
        let ok = |args: &[&str]| {
            std::process::Command::new("systemctl")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        ok(&["daemon-reload"]);
        let mut args = vec!["try-restart"];
        args.extend(plan.services.iter().map(String::as_str));
        if !ok(&args) {
            bail!("applied, but restarting {} failed", plan.services.join(" "));
        }
        restarted = plan.services.clone();
    }
    Ok(ApplyResult {
        plan,
        applied: true,
        restarted,
    })
}

/// Returns the live root's `/usr` to the booted deployment: the live layer is
/// unmounted and dropped. `/etc` keeps what the merge gave it: the next boot of either
/// deployment merges it again anyway.
pub fn reset(sysroot: &Sysroot, _lock: &WriterLock, root: &Path) -> Result<UsrStatus> {
    let usr = root.join("usr");
    match usr_mount(&usr)? {
        Some(m) if m.upper.starts_with(live_dir(sysroot)) => {
            rustix::mount::unmount(&usr, rustix::mount::UnmountFlags::DETACH)
                .context("unmounting the live layer")?;
        }
        Some(_) => bail!("/usr has a usroverlay, not a live layer: 'arbor usroverlay --remove'"),
        None => bail!("nothing is applied live on {}", usr.display()),
    }
    let dir = live_dir(sysroot);
    if dir.exists() {
        fsutil::remove_tree(&dir)?;
    }
    let st = super::status(sysroot, root)?;
    debug_assert!(!matches!(st.overlay, Some(OverlayKind::Live)));
    Ok(st)
}
