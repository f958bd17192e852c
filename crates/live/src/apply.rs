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
    text_of(inspect::open_content(sysroot.repo(), commit, path).ok()?)
}

/// A file's text, up to 16 MiB; `None` if it cannot be read as text.
fn text_of(file: std::fs::File) -> Option<String> {
    let mut s = String::new();
    file.take(16 << 20).read_to_string(&mut s).ok()?;
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

/// An apply-live plan with the two `/etc` defaults (the booted and the pending
/// deployment's) it was made from, for [`apply_live_planned`]: deployments do not
/// change, so the merge reads only the live `/etc` again.
pub struct Planned {
    /// What apply-live will do.
    pub plan: LivePlan,
    etc_defaults: Option<EtcDefaults>,
}

/// The booted and the pending deployment's `/etc` defaults.
struct EtcDefaults {
    old: etc_merge::EtcTree,
    new: etc_merge::EtcTree,
}

/// Works out what apply-live would do, without changing anything: reads the facts
/// from the store and the live root, and leaves the decisions to [`plan::decide`].
pub fn plan(sysroot: &Sysroot, root: &Path, opts: &ApplyOptions) -> Result<LivePlan> {
    Ok(plan_for_apply(sysroot, root, opts)?.plan)
}

/// [`plan`], keeping what [`apply_live_planned`] can use again.
pub fn plan_for_apply(sysroot: &Sysroot, root: &Path, opts: &ApplyOptions) -> Result<Planned> {
    let to = pending(sysroot)?;
    let new_default = || etc_merge::scan(&sysroot.deployment_path(&to).join("usr/etc"));
    plan_to(sysroot, root, opts, &to.commit, &new_default)
}

/// [`plan`] for a commit in the store that is not deployed yet (an update a dry run
/// found downloaded), with its `/etc` defaults read from the store.
pub fn plan_for_commit(sysroot: &Sysroot, root: &Path, commit: &ObjectId) -> Result<LivePlan> {
    let new_default =
        || arbor_sysroot::etc::stored::scan_commit(sysroot.repo(), commit, "/usr/etc");
    Ok(plan_to(
        sysroot,
        root,
        &ApplyOptions::default(),
        commit,
        &new_default,
    )?
    .plan)
}

/// [`plan`] from the booted deployment to `to`, whose `/etc` defaults `new_default`
/// reads.
fn plan_to(
    sysroot: &Sysroot,
    root: &Path,
    opts: &ApplyOptions,
    to: &ObjectId,
    new_default: &dyn Fn() -> Result<etc_merge::EtcTree>,
) -> Result<Planned> {
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
    let listed = inspect::list(repo, to, UNIT_DIR, false).unwrap_or_default();
    let units = listed
        .iter()
        .filter(|e| e.path != UNIT_DIR)
        .filter_map(|e| e.path.rsplit('/').next().map(str::to_string))
        .collect();
    // The unit files by their objects: read through the commit's root, each of the
    // few hundred would load the dirtrees from `/` down again. An alias (a symlink)
    // has no text of its own.
    let unit_objects: std::collections::BTreeMap<String, ObjectId> = listed
        .into_iter()
        .filter(|e| e.type_char() == '-')
        .map(|e| (e.path, e.object))
        .collect();
    let etc_defaults = match opts.packages {
        None => Some(EtcDefaults {
            old: etc_merge::scan(&sysroot.deployment_path(&from).join("usr/etc"))?,
            new: new_default()?,
        }),
        Some(_) => None,
    };
    let etc = match &etc_defaults {
        Some(d) => {
            let etc = plan_etc(&d.old, &d.new, root)?;
            tracing::debug!("plan: /etc read");
            Some(EtcOutcome {
                changed: etc.changed,
                conflicts: etc.conflicts,
            })
        }
        None => None,
    };
    let plan = plan::decide(Facts {
        from: from.commit,
        to: *to,
        changes: diff_commits(repo, &from.commit, to)?,
        packages: arbor_store::dpkg::diff(
            &arbor_store::dpkg::packages_of(repo, &from.commit)?,
            &arbor_store::dpkg::packages_of(repo, to)?,
        ),
        only,
        units,
        // Only unit files are read, all from the listing.
        read: &|path| text_of(repo.open_file_object(unit_objects.get(path)?).ok()?),
        etc,
        open: &|removed| open_elsewhere(root, removed),
    })?;
    Ok(Planned { plan, etc_defaults })
}

/// Makes the live root's `/usr` (and `/etc`) match the pending deployment.
pub fn apply_live(
    sysroot: &Sysroot,
    lock: &WriterLock,
    root: &Path,
    opts: &ApplyOptions,
) -> Result<ApplyResult> {
    let planned = plan_for_apply(sysroot, root, opts)?;
    apply_live_planned(sysroot, lock, root, opts, planned)
}

/// [`apply_live`] with a plan already made by [`plan_for_apply`] for the same options
/// (the activation ladder's), under the same writer lock: the pending deployment
/// cannot have changed since. The live `/etc` is read again right before it is merged.
pub fn apply_live_planned(
    sysroot: &Sysroot,
    _lock: &WriterLock,
    root: &Path,
    opts: &ApplyOptions,
    planned: Planned,
) -> Result<ApplyResult> {
    let Planned { plan, etc_defaults } = planned;
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
    tracing::debug!("live: upper layer built");
    arbor_core::failpoint::hit("live-upper-built")?;
    // Everything that can fail for want of space or rights happens before the
    // overlay is mounted; the /etc entries then switch by renames beside themselves.
    let etc_swap = match (&opts.packages, etc_defaults) {
        (None, Some(d)) => {
            let etc = plan_etc(&d.old, &d.new, root)?;
            Some(prepare_etc_live(sysroot, &to, root, &etc, &dir)?)
        }
        (None, None) => bail!("the plan was made for some packages only, not for all"),
        (Some(_), _) => None,
    };
    tracing::debug!("live: /etc merge prepared");
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
        // A reload re-reads every unit and reruns the generators: a second or two
        // on a small machine, needed only when what they read changed.
        if let Some(path) = daemon_reload_reason(&plan) {
            ok(&["daemon-reload"]);
            tracing::debug!("live: systemd reloaded ({path} changes)");
        }
        let mut args = vec!["try-restart"];
        args.extend(plan.services.iter().map(String::as_str));
        if !ok(&args) {
            bail!("applied, but restarting {} failed", plan.services.join(" "));
        }
        tracing::debug!("live: services restarted");
        restarted = plan.services.clone();
    }
    Ok(ApplyResult {
        plan,
        applied: true,
        restarted,
    })
}

/// The first path that makes systemd reload after the plan is applied, if any: a unit
/// file, a drop-in, a generator or systemd's own configuration changes or goes
/// (anything under a `systemd` folder of `/usr` or `/etc`), or a file a generator
/// reads does (`/etc/fstab`, `/etc/crypttab`, `/etc/veritytab`, the SysV scripts).
/// Needing none:
/// - a unit file that is only added: systemd loads a unit it does not know when it is
///   first named (it sees that its unit folders changed), and nothing running
///   depends on it yet; an added drop-in (`*.d/`) or generator changes units already
///   loaded, so it does need one;
/// - links in `.wants`, `.requires` and `.upholds` folders: they say what a target
///   starts, which matters the next time it starts (the next boot), not to anything
///   running now.
fn daemon_reload_reason(plan: &LivePlan) -> Option<&str> {
    let systemd_reads = |p: &str| {
        let parent = p.rsplit_once('/').map_or("", |(d, _)| d);
        let links = [".wants", ".requires", ".upholds"];
        (p.contains("/systemd/") && !links.iter().any(|l| parent.ends_with(l)))
            || p.starts_with("/etc/init.d/")
            || matches!(p, "/etc/fstab" | "/etc/crypttab" | "/etc/veritytab")
    };
    let added_changes_loaded = |p: &str| {
        let parent = p.rsplit_once('/').map_or("", |(d, _)| d);
        parent.ends_with(".d") || p.contains("-generators/")
    };
    plan.changed
        .iter()
        .chain(&plan.removed)
        .chain(&plan.etc_changed)
        .find(|p| systemd_reads(p))
        .or_else(|| {
            plan.added
                .iter()
                .find(|p| systemd_reads(p) && added_changes_loaded(p))
        })
        .map(String::as_str)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_with(changed: &[&str], etc_changed: &[&str]) -> LivePlan {
        LivePlan {
            from: ObjectId::of(b"a"),
            to: ObjectId::of(b"b"),
            added: Vec::new(),
            changed: changed.iter().map(|p| p.to_string()).collect(),
            removed: Vec::new(),
            packages: Default::default(),
            services: Vec::new(),
            etc_changed: etc_changed.iter().map(|p| p.to_string()).collect(),
            refusals: Vec::new(),
        }
    }

    fn plan_adding(added: &[&str]) -> LivePlan {
        let mut p = plan_with(&[], &[]);
        p.added = added.iter().map(|p| p.to_string()).collect();
        p
    }

    #[test]
    fn systemd_reloads_only_when_what_it_reads_changes() {
        // New units are loaded when first named; links say what starts at the next boot.
        let none = plan_adding(&[
            "/usr/lib/systemd/system/probe.service",
            "/usr/lib/systemd/system/multi-user.target.wants/probe.service",
            "/usr/bin/probe",
        ]);
        assert_eq!(daemon_reload_reason(&none), None);
        let links = plan_with(
            &[],
            &["/etc/systemd/system/multi-user.target.wants/probe.service"],
        );
        assert_eq!(daemon_reload_reason(&links), None);
        let programs = plan_with(
            &["/usr/bin/hello", "/usr/libexec/arbor-demo/demo-server"],
            &["/etc/hello.conf"],
        );
        assert_eq!(daemon_reload_reason(&programs), None);
        for added in [
            "/usr/lib/systemd/system/nginx.service.d/10-limits.conf",
            "/usr/lib/systemd/system-generators/new-generator",
        ] {
            assert_eq!(daemon_reload_reason(&plan_adding(&[added])), Some(added));
        }
        for unit in [
            "/usr/lib/systemd/system/nginx.service",
            "/usr/lib/systemd/system/nginx.service.d/10-x.conf",
            "/usr/lib/systemd/system-generators/systemd-fstab-generator",
        ] {
            assert_eq!(daemon_reload_reason(&plan_with(&[unit], &[])), Some(unit));
        }
        for etc in [
            "/etc/systemd/system.conf",
            "/etc/systemd/system/nginx.service",
            "/etc/fstab",
            "/etc/init.d/x",
        ] {
            assert_eq!(daemon_reload_reason(&plan_with(&[], &[etc])), Some(etc));
        }
    }
}
