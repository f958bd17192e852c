//! The activation ladder: the mildest step that moves the machine from the booted
//! deployment to the staged one safely, chosen from what changes between them
//! (docs/activation.md). From mildest to strongest:
//!
//! - **live**: the new `/usr` shown through the live overlay and the changed services
//!   restarted (`apply-live`); only when nothing a running process keeps changes;
//! - **soft-reboot**: systemd restarts userspace into the new root, the kernel keeps
//!   running (systemd 254 and newer);
//! - **kexec**: the new kernel started without the firmware and the loader;
//! - **reboot**: through the firmware, always possible, and the answer when in doubt.
//!
//! A pure function of the facts, as [`crate::plan::decide`] is for apply-live, so the
//! rules are tested without a machine; gathering the facts is the caller's.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::plan::LivePlan;

/// One rung of the ladder, mildest first: the order is the strength.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// `apply-live` with the changed services restarted.
    Live,
    /// `systemctl soft-reboot` into the staged deployment.
    SoftReboot,
    /// The staged kernel loaded and started with kexec.
    Kexec,
    /// A full reboot through the firmware.
    Reboot,
}

impl Step {
    /// Every step, mildest first.
    pub const ALL: [Step; 4] = [Step::Live, Step::SoftReboot, Step::Kexec, Step::Reboot];

    /// The name the command line, the policy and D-Bus use.
    pub fn name(self) -> &'static str {
        match self {
            Step::Live => "live",
            Step::SoftReboot => "soft-reboot",
            Step::Kexec => "kexec",
            Step::Reboot => "reboot",
        }
    }

    /// Parses a [`Step::name`].
    pub fn parse(s: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|x| x.name() == s)
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Packages whose new version a running system cannot take by restarting services:
/// PID 1 and the bus every service talks to, the C library and the loader every
/// process maps, udev and the login manager. Their change needs at least a new
/// userspace.
pub const CORE_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "libsystemd0",
    "libsystemd-shared",
    "udev",
    "libudev1",
    "dbus",
    "dbus-daemon",
    "dbus-system-bus-common",
    "dbus-broker",
    "libdbus-1-3",
    "libc6",
    "libc-bin",
    "libgcc-s1",
    "libstdc++6",
    "libpam-systemd",
    "libpam0g",
    "libpam-modules",
    "libnss-systemd",
    "libssl3",
    "libssl3t64",
    "libcrypt1",
    "libselinux1",
    "libcap2",
    "libzstd1",
    "liblzma5",
    "zlib1g",
];

/// What the choice is made from, read from the two deployments and the running
/// machine by the caller.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    /// What apply-live would do: changed paths, packages, services to restart, and
    /// its own refusals (kernel change, `/etc` conflicts, removed files still open).
    pub live: &'a LivePlan,
    /// The kernel image or the initramfs differs between the two deployments.
    pub kernel_changed: bool,
    /// The kernel command line differs (a kexec passes the staged one; a
    /// soft-reboot keeps the running kernel's).
    pub kargs_changed: bool,
    /// Shared libraries (paths under `/usr`) that change and that a process which
    /// live would not restart has mapped.
    pub mapped_libraries: Vec<String>,
    /// The running systemd can soft-reboot (254 or newer).
    pub soft_reboot_available: bool,
    /// Why kexec cannot be used on this machine (no kexec tool, kexec disabled,
    /// Secure Boot lockdown), or `None` when it can.
    pub kexec_unavailable: Option<String>,
    /// The mildest step the administrator allows (`--apply`): steps milder than it
    /// are not taken.
    pub cap: Step,
    /// Steps the policy forbids fleet-wide (live, kexec).
    pub forbidden: &'a BTreeSet<Step>,
}

/// The step chosen, and why: each milder step with the reason it was passed over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Choice {
    /// The step that will be taken.
    pub step: Step,
    /// The mildest step the changes allow, before the cap, the policy and the
    /// machine's abilities are applied.
    pub needed: Step,
    /// For each step milder than `step`: why it is not taken (naming the packages
    /// or files that forced it).
    pub passed_over: Vec<(Step, String)>,
}

impl Choice {
    /// One line for `--dry-run`: the step and the reason the next milder one was
    /// passed over.
    pub fn summary(&self) -> String {
        match self.passed_over.last() {
            None => format!("{}: the mildest step", self.step),
            Some((milder, why)) => format!("{} (not {milder}: {why})", self.step),
        }
    }
}

/// Chooses the mildest step that is safe, allowed and available.
pub fn choose(f: &Facts) -> Choice {
    let mut passed_over = Vec::new();
    let needed = needed_step(f, &mut passed_over);
    let mut step = needed;
    // Go up the ladder from what the changes need until a step is allowed and
    // available; reboot always is.
    loop {
        let no = if step < f.cap {
            Some(format!("--apply allows nothing milder than {}", f.cap))
        } else if f.forbidden.contains(&step) && step != Step::Reboot {
            Some("the policy forbids it".to_string())
        } else {
            unavailable(f, step)
        };
        match no {
            None => break,
            Some(why) => {
                passed_over.retain(|(s, _)| *s != step);
                passed_over.push((step, why));
                step = Step::ALL[step as usize + 1];
            }
        }
    }
    passed_over.sort_by_key(|(s, _)| *s);
    Choice {
        step,
        needed,
        passed_over,
    }
}

/// The mildest step the changes themselves allow; records why each milder one is
/// not enough.
fn needed_step(f: &Facts, passed_over: &mut Vec<(Step, String)>) -> Step {
    if f.kernel_changed {
        let why = "the kernel or the initramfs changes".to_string();
        passed_over.push((Step::Live, why.clone()));
        passed_over.push((Step::SoftReboot, why));
        return Step::Kexec;
    }
    if f.kargs_changed {
        let why = "the kernel command line changes".to_string();
        passed_over.push((Step::Live, why.clone()));
        passed_over.push((Step::SoftReboot, why));
        return Step::Kexec;
    }
    let mut why_not_live = Vec::new();
    let core = core_packages(f.live);
    if !core.is_empty() {
        why_not_live.push(format!("core packages change: {}", core.join(", ")));
    }
    if !f.mapped_libraries.is_empty() {
        why_not_live.push(format!(
            "libraries that running processes keep mapped change: {}",
            name_some(&f.mapped_libraries)
        ));
    }
    why_not_live.extend(f.live.refusals.iter().cloned());
    if why_not_live.is_empty() {
        Step::Live
    } else {
        passed_over.push((Step::Live, why_not_live.join("; ")));
        Step::SoftReboot
    }
}

/// Why STEP cannot be used on this machine, if it cannot.
fn unavailable(f: &Facts, step: Step) -> Option<String> {
    match step {
        Step::Live | Step::Reboot => None,
        Step::SoftReboot if !f.soft_reboot_available => {
            Some("the running systemd cannot soft-reboot (254 or newer can)".to_string())
        }
        Step::SoftReboot => None,
        Step::Kexec => f.kexec_unavailable.clone(),
    }
}

/// The core packages ([`CORE_PACKAGES`]) the plan adds, removes or changes.
fn core_packages(plan: &LivePlan) -> Vec<String> {
    let p = &plan.packages;
    let names = p
        .added
        .iter()
        .map(|x| &x.name)
        .chain(p.removed.iter().map(|x| &x.name))
        .chain(p.upgraded.iter().map(|x| &x.name))
        .chain(p.downgraded.iter().map(|x| &x.name));
    let mut out: Vec<String> = names
        .filter(|n| CORE_PACKAGES.contains(&n.as_str()))
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The first few of a list, and how many more.
fn name_some(list: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = list
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if list.len() > SHOWN {
        s.push_str(&format!(" and {} more", list.len() - SHOWN));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use arbor_store::ObjectId;
    use arbor_store::dpkg::{Change, PackageDiff};

    fn plan(upgraded: &[&str], refusals: &[&str]) -> LivePlan {
        LivePlan {
            from: ObjectId::of(b"booted"),
            to: ObjectId::of(b"staged"),
            added: Vec::new(),
            changed: vec!["/usr/bin/hello".into()],
            removed: Vec::new(),
            packages: PackageDiff {
                upgraded: upgraded
                    .iter()
                    .map(|n| Change {
                        name: n.to_string(),
                        arch: "amd64".into(),
                        from: "1".into(),
                        to: "2".into(),
                    })
                    .collect(),
                ..Default::default()
            },
            services: Vec::new(),
            etc_changed: Vec::new(),
            refusals: refusals.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn facts<'a>(live: &'a LivePlan, forbidden: &'a BTreeSet<Step>) -> Facts<'a> {
        Facts {
            live,
            kernel_changed: false,
            kargs_changed: false,
            mapped_libraries: Vec::new(),
            soft_reboot_available: true,
            kexec_unavailable: None,
            cap: Step::Live,
            forbidden,
        }
    }

    #[test]
    fn a_leaf_package_goes_live() {
        let p = plan(&["hello"], &[]);
        let none = BTreeSet::new();
        let c = choose(&facts(&p, &none));
        assert_eq!((c.step, c.needed), (Step::Live, Step::Live));
        assert!(c.passed_over.is_empty());
        assert_eq!(c.summary(), "live: the mildest step");
    }

    #[test]
    fn a_core_package_or_a_mapped_library_needs_a_new_userspace() {
        let none = BTreeSet::new();
        let p = plan(&["hello", "libc6", "systemd"], &[]);
        let c = choose(&facts(&p, &none));
        assert_eq!(c.step, Step::SoftReboot);
        assert_eq!(
            c.summary(),
            "soft-reboot (not live: core packages change: libc6, systemd)"
        );
        let p = plan(&["libfoo1"], &[]);
        let mut f = facts(&p, &none);
        f.mapped_libraries = vec!["/usr/lib/x86_64-linux-gnu/libfoo.so.1".into()];
        let c = choose(&f);
        assert_eq!(c.step, Step::SoftReboot);
        assert!(c.summary().contains("libfoo.so.1"), "{}", c.summary());
        // apply-live's own refusals (an /etc conflict) rule live out too.
        let p = plan(&["hello"], &["/etc changed locally where …"]);
        assert_eq!(choose(&facts(&p, &none)).step, Step::SoftReboot);
    }

    #[test]
    fn a_kernel_change_takes_kexec_when_it_can_and_a_reboot_otherwise() {
        let none = BTreeSet::new();
        let p = plan(&["linux-image-6.12.1-amd64"], &[]);
        let mut f = facts(&p, &none);
        f.kernel_changed = true;
        let c = choose(&f);
        assert_eq!(c.step, Step::Kexec);
        assert_eq!(c.passed_over.len(), 2);
        f.kexec_unavailable = Some("Secure Boot lockdown (integrity)".into());
        let c = choose(&f);
        assert_eq!(c.step, Step::Reboot);
        assert_eq!(
            c.summary(),
            "reboot (not kexec: Secure Boot lockdown (integrity))"
        );
        // New kernel arguments need a new kernel start as well.
        let mut f = facts(&p, &none);
        f.kargs_changed = true;
        assert_eq!(choose(&f).step, Step::Kexec);
    }

    #[test]
    fn the_cap_and_the_policy_only_ever_make_the_step_stronger() {
        let p = plan(&["hello"], &[]);
        let mut forbidden = BTreeSet::new();
        forbidden.insert(Step::Live);
        let c = choose(&facts(&p, &forbidden));
        assert_eq!(c.step, Step::SoftReboot);
        assert_eq!(c.needed, Step::Live);
        assert_eq!(c.summary(), "soft-reboot (not live: the policy forbids it)");
        let none = BTreeSet::new();
        let mut f = facts(&p, &none);
        f.cap = Step::Kexec;
        assert_eq!(choose(&f).step, Step::Kexec);
        f.cap = Step::Reboot;
        assert_eq!(choose(&f).step, Step::Reboot);
        // A cap milder than what the changes need changes nothing.
        let p = plan(&["systemd"], &[]);
        let mut f = facts(&p, &none);
        f.cap = Step::Live;
        assert_eq!(choose(&f).step, Step::SoftReboot);
        // The policy cannot forbid the reboot itself.
        let all: BTreeSet<Step> = Step::ALL.into_iter().collect();
        assert_eq!(choose(&facts(&p, &all)).step, Step::Reboot);
    }

    #[test]
    fn an_old_systemd_skips_soft_reboot_for_kexec_or_reboot() {
        let none = BTreeSet::new();
        let p = plan(&["systemd"], &[]);
        let mut f = facts(&p, &none);
        f.soft_reboot_available = false;
        let c = choose(&f);
        assert_eq!(c.step, Step::Kexec);
        assert!(
            c.passed_over
                .iter()
                .any(|(s, why)| *s == Step::SoftReboot && why.contains("254"))
        );
        f.kexec_unavailable = Some("no kexec tool (package kexec-tools)".into());
        assert_eq!(choose(&f).step, Step::Reboot);
    }

    #[test]
    fn steps_parse_by_name_and_order_by_strength() {
        for s in Step::ALL {
            assert_eq!(Step::parse(s.name()), Some(s));
        }
        assert_eq!(Step::parse("warp"), None);
        assert!(Step::Live < Step::SoftReboot && Step::Kexec < Step::Reboot);
    }
}
