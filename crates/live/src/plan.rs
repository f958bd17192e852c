//! The decisions of `apply-live`, as a pure function of what was read: which paths
//! the live layer adds, changes and removes, which units restart, and why it refuses.
//! `apply::plan` gathers the facts from the store and the running system; keeping the
//! rules here lets them be tested without a sysroot.

use std::collections::BTreeSet;

use anyhow::{Result, bail};
use serde::Serialize;

use arbor_store::ObjectId;
use arbor_store::diff::{Change, ChangeKind};
use arbor_store::dpkg::PackageDiff;

/// Where systemd's vendor units live in a merged-/usr tree.
pub const UNIT_DIR: &str = "/usr/lib/systemd/system";

/// What apply-live does (or, with `--dry-run`, would do).
#[derive(Clone, Debug, Serialize, zvariant::Type, zvariant::Value, zvariant::OwnedValue)]
#[zvariant(signature = "dict")]
pub struct LivePlan {
    /// The running deployment's commit.
    pub from: ObjectId,
    /// The commit `/usr` will show.
    pub to: ObjectId,
    /// Paths below `/usr` that appear.
    pub added: Vec<String>,
    /// Paths below `/usr` whose content or metadata changes.
    pub changed: Vec<String>,
    /// Paths below `/usr` that go away.
    pub removed: Vec<String>,
    /// Package changes (of the named packages only, with `--packages`).
    pub packages: PackageDiff,
    /// Units whose unit file or executable changes.
    pub services: Vec<String>,
    /// `/etc` paths the merge changes in the live `/etc`.
    pub etc_changed: Vec<String>,
    /// Why it cannot be applied live without `--force` (kernel change, `/etc`
    /// conflicts, removed files still open).
    pub refusals: Vec<String>,
}

/// The outcome of the `/etc` merge's planning, as far as the live plan needs it.
#[derive(Clone, Debug, Default)]
pub struct EtcOutcome {
    /// Paths that take the new default.
    pub changed: Vec<String>,
    /// Paths changed locally where the default changed too.
    pub conflicts: Vec<String>,
}

/// Everything the plan is decided from.
pub struct Facts<'a> {
    /// The booted commit.
    pub from: ObjectId,
    /// The pending commit.
    pub to: ObjectId,
    /// Every path that differs between the two.
    pub changes: Vec<Change>,
    /// How the package sets differ.
    pub packages: PackageDiff,
    /// With `--packages`: the names asked for, and every file dpkg lists for them on
    /// either side (merged-/usr paths).
    pub only: Option<(&'a [String], BTreeSet<String>)>,
    /// The `.service` files of the pending tree's [`UNIT_DIR`] (file names).
    pub units: Vec<String>,
    /// The text of a file of the pending tree, for the units' `ExecStart=`.
    pub read: &'a dyn Fn(&str) -> Option<String>,
    /// The `/etc` merge's plan; `None` with `--packages` (no `/etc` merge then).
    pub etc: Option<EtcOutcome>,
    /// Which of the given removed paths some process still has open.
    pub open: &'a dyn Fn(&[String]) -> Vec<String>,
}

/// Paths in dpkg's lists are as the package ships them; on a merged-/usr system
/// `/bin/ls` is `/usr/bin/ls`.
pub fn usr_path(p: &str) -> String {
    for top in ["/bin/", "/sbin/", "/lib/", "/lib32/", "/lib64/", "/libx32/"] {
        if p.starts_with(top) {
            return format!("/usr{p}");
        }
    }
    p.to_string()
}

/// Decides the plan. Fails only when `--packages` names a package that does not
/// change.
pub fn decide(f: Facts) -> Result<LivePlan> {
    let mut changes = f.changes;
    let mut packages = f.packages;
    if let Some((names, files)) = &f.only {
        let known: BTreeSet<&str> = packages
            .added
            .iter()
            .map(|p| p.name.as_str())
            .chain(packages.removed.iter().map(|p| p.name.as_str()))
            .chain(packages.upgraded.iter().map(|c| c.name.as_str()))
            .chain(packages.downgraded.iter().map(|c| c.name.as_str()))
            .collect();
        if let Some(n) = names.iter().find(|n| !known.contains(n.as_str())) {
            bail!("{n} does not change between the booted and the pending deployment");
        }
        changes.retain(|c| files.contains(&c.path));
        let keep = |n: &String| names.contains(n);
        packages.added.retain(|p| keep(&p.name));
        packages.removed.retain(|p| keep(&p.name));
        packages.upgraded.retain(|c| keep(&c.name));
        packages.downgraded.retain(|c| keep(&c.name));
    }
    let mut plan = LivePlan {
        from: f.from,
        to: f.to,
        added: Vec::new(),
        changed: Vec::new(),
        removed: Vec::new(),
        packages,
        services: Vec::new(),
        etc_changed: Vec::new(),
        refusals: Vec::new(),
    };
    let mut kernel = false;
    for c in &changes {
        // /usr/etc is the /etc default: it reaches the live /etc by the merge.
        if !c.path.starts_with("/usr/") || c.path.starts_with("/usr/etc/") {
            continue;
        }
        if c.path.starts_with("/usr/lib/modules/")
            && (c.path.ends_with("/vmlinuz") || c.path.ends_with("/initramfs.img"))
        {
            kernel = true;
        }
        match c.change {
            ChangeKind::Added => plan.added.push(c.path.clone()),
            ChangeKind::Modified => plan.changed.push(c.path.clone()),
            ChangeKind::Removed => plan.removed.push(c.path.clone()),
        }
    }
    let touched: BTreeSet<String> = plan
        .added
        .iter()
        .chain(&plan.changed)
        .chain(&plan.removed)
        .cloned()
        .collect();
    plan.services = affected_units(&f.units, f.read, &touched);
    if kernel {
        plan.refusals
            .push("the kernel or initramfs changes: only a reboot runs the new one".to_string());
    }
    if let Some(etc) = f.etc {
        plan.etc_changed = etc.changed;
        if !etc.conflicts.is_empty() {
            plan.refusals.push(format!(
                "/etc changed locally where the new default changed too: {}",
                etc.conflicts.join(", ")
            ));
        }
    }
    let busy = (f.open)(&plan.removed);
    if !busy.is_empty() {
        plan.refusals
            .push(format!("removed files are still open: {}", busy.join(", ")));
    }
    Ok(plan)
}

/// Units whose unit file changed, or whose `ExecStart=` program did. Template units
/// (`name@.service`) are left out: restarting needs an instance name.
fn affected_units(
    units: &[String],
    read: &dyn Fn(&str) -> Option<String>,
    touched: &BTreeSet<String>,
) -> Vec<String> {
    let mut out = BTreeSet::new();
    for name in units {
        if !name.ends_with(".service") || name.contains('@') {
            continue;
        }
        let path = format!("{UNIT_DIR}/{name}");
        if touched.contains(&path) {
            out.insert(name.clone());
            continue;
        }
        let Some(text) = read(&path) else {
            continue;
        };
        for l in text.lines() {
            let Some(cmd) = l.trim().strip_prefix("ExecStart=") else {
                continue;
            };
            // systemd's prefixes: ignore failure, argv[0], privileged, no env expansion.
            let prog = cmd.trim_start_matches(['-', '@', '+', '!', ':']);
            let prog = prog.split_whitespace().next().unwrap_or_default();
            if touched.contains(&usr_path(prog)) {
                out.insert(name.clone());
            }
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arbor_store::dpkg::{Change as PkgChange, Package};

    fn id(b: u8) -> ObjectId {
        ObjectId([b; 32])
    }

    fn change(kind: ChangeKind, path: &str) -> Change {
        Change {
            change: kind,
            path: path.to_string(),
            dir: false,
        }
    }

    fn no_file(_: &str) -> Option<String> {
        None
    }

    fn nothing_open(_: &[String]) -> Vec<String> {
        Vec::new()
    }

    fn facts(changes: Vec<Change>) -> Facts<'static> {
        Facts {
            from: id(1),
            to: id(2),
            changes,
            packages: PackageDiff::default(),
            only: None,
            units: Vec::new(),
            read: &no_file,
            etc: Some(EtcOutcome::default()),
            open: &nothing_open,
        }
    }

    #[test]
    fn usr_paths_are_sorted_by_kind_and_etc_defaults_and_the_root_are_left_to_the_merge() {
        let plan = decide(facts(vec![
            change(ChangeKind::Added, "/usr/bin/new"),
            change(ChangeKind::Modified, "/usr/lib/x.so"),
            change(ChangeKind::Removed, "/usr/share/old"),
            change(ChangeKind::Modified, "/usr/etc/default/grub"),
            change(ChangeKind::Modified, "/"),
            change(ChangeKind::Added, "/opt/thing"),
        ]))
        .unwrap();
        assert_eq!(plan.added, ["/usr/bin/new"]);
        assert_eq!(plan.changed, ["/usr/lib/x.so"]);
        assert_eq!(plan.removed, ["/usr/share/old"]);
        assert!(plan.refusals.is_empty(), "{:?}", plan.refusals);
        assert_eq!((plan.from, plan.to), (id(1), id(2)));
    }

    #[test]
    fn a_new_kernel_or_initramfs_is_refused_but_a_new_module_is_not() {
        let plan = decide(facts(vec![change(
            ChangeKind::Added,
            "/usr/lib/modules/6.1.0-40-amd64/kernel/fs/x.ko",
        )]))
        .unwrap();
        assert!(plan.refusals.is_empty());
        for file in ["vmlinuz", "initramfs.img"] {
            let path = format!("/usr/lib/modules/6.1.0-40-amd64/{file}");
            let plan = decide(facts(vec![change(ChangeKind::Modified, &path)])).unwrap();
            assert_eq!(plan.refusals.len(), 1, "{file}");
            assert!(plan.refusals[0].contains("kernel"), "{:?}", plan.refusals);
        }
    }

    #[test]
    fn units_restart_when_their_file_or_their_program_changes() {
        let read = |p: &str| match p {
            "/usr/lib/systemd/system/ssh.service" => {
                Some("[Service]\nExecStart=-/usr/sbin/sshd -D\n".to_string())
            }
            // dpkg's merged-/usr: /sbin/agetty is /usr/sbin/agetty.
            "/usr/lib/systemd/system/getty.service" => {
                Some("[Service]\nExecStart=-/sbin/agetty -o x\n".to_string())
            }
            "/usr/lib/systemd/system/cron.service" => {
                Some("[Service]\nExecStart=/usr/sbin/cron -f\n".to_string())
            }
            _ => None,
        };
        let mut f = facts(vec![
            change(ChangeKind::Modified, "/usr/sbin/sshd"),
            change(ChangeKind::Modified, "/usr/sbin/agetty"),
            change(
                ChangeKind::Modified,
                "/usr/lib/systemd/system/timer.service",
            ),
            change(
                ChangeKind::Modified,
                "/usr/lib/systemd/system/tmpl@.service",
            ),
        ]);
        f.units = ["ssh", "getty", "cron", "timer", "tmpl@"]
            .iter()
            .map(|u| format!("{u}.service"))
            .collect();
        f.read = &read;
        let plan = decide(f).unwrap();
        assert_eq!(
            plan.services,
            ["getty.service", "ssh.service", "timer.service"]
        );
    }

    #[test]
    fn etc_conflicts_and_open_removed_files_are_refusals() {
        let open = |removed: &[String]| {
            removed
                .iter()
                .filter(|p| p.ends_with(".so"))
                .cloned()
                .collect::<Vec<_>>()
        };
        let mut f = facts(vec![
            change(ChangeKind::Removed, "/usr/lib/libgone.so"),
            change(ChangeKind::Removed, "/usr/share/doc/gone"),
        ]);
        f.etc = Some(EtcOutcome {
            changed: vec!["/etc/a".into()],
            conflicts: vec!["/etc/b".into(), "/etc/c".into()],
        });
        f.open = &open;
        let plan = decide(f).unwrap();
        assert_eq!(plan.etc_changed, ["/etc/a"]);
        assert_eq!(
            plan.refusals,
            [
                "/etc changed locally where the new default changed too: /etc/b, /etc/c",
                "removed files are still open: /usr/lib/libgone.so",
            ]
        );
    }

    #[test]
    fn packages_limit_the_plan_to_their_files_and_an_unchanged_one_is_an_error() {
        let pkg = |name: &str| Package {
            name: name.into(),
            arch: "amd64".into(),
            version: "1".into(),
        };
        let mut diff = PackageDiff::default();
        diff.added.push(pkg("htop"));
        diff.upgraded.push(PkgChange {
            name: "curl".into(),
            arch: "amd64".into(),
            from: "1".into(),
            to: "2".into(),
        });
        let names = vec!["htop".to_string()];
        let mut f = facts(vec![
            change(ChangeKind::Added, "/usr/bin/htop"),
            change(ChangeKind::Modified, "/usr/bin/curl"),
        ]);
        f.packages = diff.clone();
        f.only = Some((&names, BTreeSet::from(["/usr/bin/htop".to_string()])));
        f.etc = None;
        let plan = decide(f).unwrap();
        assert_eq!(plan.added, ["/usr/bin/htop"]);
        assert!(plan.changed.is_empty());
        assert_eq!(plan.packages.added, [pkg("htop")]);
        assert!(plan.packages.upgraded.is_empty());

        let names = vec!["bash".to_string()];
        let mut f = facts(Vec::new());
        f.packages = diff;
        f.only = Some((&names, BTreeSet::new()));
        let err = decide(f).unwrap_err().to_string();
        assert!(err.contains("bash does not change"), "{err}");
    }

    #[test]
    fn usr_path_maps_the_merged_usr_links() {
        assert_eq!(usr_path("/bin/ls"), "/usr/bin/ls");
        assert_eq!(usr_path("/lib64/ld.so"), "/usr/lib64/ld.so");
        assert_eq!(usr_path("/usr/bin/ls"), "/usr/bin/ls");
        assert_eq!(usr_path("/etc/x"), "/etc/x");
        assert_eq!(usr_path("/library"), "/library");
    }
}
