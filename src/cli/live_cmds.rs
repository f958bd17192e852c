//! Live subcommands: usroverlay, apply-live.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::output::json;
use super::{Cli, OutputArgs, lock_wait};
use crate::live::{self, OverlayKind, UsrStatus, apply};
use crate::sysroot::Sysroot;

/// `arbor usroverlay`.
#[derive(Args, Debug)]
pub struct UsrOverlayArgs {
    /// Keep it across reboots of this deployment (mounted again by prepare-root).
    #[arg(long, conflicts_with_all = ["status", "remove"])]
    pub hotfix: bool,
    /// Show what is on /usr.
    #[arg(long, conflicts_with = "remove")]
    pub status: bool,
    /// Unmount the overlay and drop its changes.
    #[arg(long)]
    pub remove: bool,
    /// The running system's root (a prepare-root target in tests and chroots).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `arbor apply-live`.
#[derive(Args, Debug)]
pub struct ApplyLiveArgs {
    /// Only the files of these packages (comma-separated); /etc is left alone.
    #[arg(long, value_delimiter = ',', value_name = "P1,P2")]
    pub packages: Option<Vec<String>>,
    /// Restart the units whose unit files or executables changed (with systemd).
    #[arg(long)]
    pub restart_services: bool,
    /// Print the plan (files, packages, services) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Apply a kernel change, /etc conflicts or removal of open files anyway.
    #[arg(long)]
    pub force: bool,
    /// Return /usr to the booted commit.
    #[arg(long, conflicts_with_all = ["packages", "dry_run", "force", "restart_services"])]
    pub reset: bool,
    /// The running system's root (a prepare-root target in tests and chroots).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
}

fn print_usr(s: &UsrStatus) {
    match &s.overlay {
        None => println!("/usr of {} is the deployment's, read-only", s.deployment),
        Some((kind, upper)) => {
            let what = match kind {
                OverlayKind::Transient => "a writable overlay, gone at reboot",
                OverlayKind::Hotfix => "a writable hotfix overlay, kept across reboots",
                OverlayKind::Live => "the live-applied commit",
            };
            println!(
                "/usr of {} has {what} (upper layer {})",
                s.deployment,
                upper.display()
            );
            if let Some(c) = &s.live_commit {
                println!("live commit: {c}");
            }
        }
    }
}

/// Runs `arbor usroverlay`.
pub fn run_usroverlay(cli: &Cli, a: &UsrOverlayArgs) -> Result<i32> {
    let sysroot = Sysroot::open(&cli.sysroot)?;
    let st = if a.status {
        live::status(&sysroot, &a.root)?
    } else {
        let _lock = sysroot.lock(lock_wait(cli))?;
        sysroot.record("usroverlay", || {
            if a.remove {
                live::usroverlay_remove(&sysroot, &a.root)
            } else {
                live::usroverlay(&sysroot, &a.root, a.hotfix)
            }
        })?
    };
    if a.output.json {
        return json(&st).map(|_| 0);
    }
    print_usr(&st);
    Ok(0)
}

/// Runs `arbor apply-live`.
pub fn run_apply_live(cli: &Cli, a: &ApplyLiveArgs) -> Result<i32> {
    let sysroot = Sysroot::open(&cli.sysroot)?;
    let lock = sysroot.lock(lock_wait(cli))?;
    if a.reset {
        let st = sysroot.record("apply-live", || apply::reset(&sysroot, &lock, &a.root))?;
        if a.output.json {
            return json(&st).map(|_| 0);
        }
        print_usr(&st);
        return Ok(0);
    }
    let opts = apply::ApplyOptions {
        packages: a.packages.clone(),
        restart_services: a.restart_services,
        dry_run: a.dry_run,
        force: a.force,
    };
    let r = if a.dry_run {
        apply::apply_live(&sysroot, &lock, &a.root, &opts)?
    } else {
        sysroot.record("apply-live", || {
            apply::apply_live(&sysroot, &lock, &a.root, &opts)
        })?
    };
    if a.output.json {
        return json(&r).map(|_| 0);
    }
    let p = &r.plan;
    println!("{} -> {}", &p.from[..12], &p.to[..12]);
    println!(
        "/usr: {} added, {} changed, {} removed",
        p.added.len(),
        p.changed.len(),
        p.removed.len()
    );
    let d = &p.packages;
    for c in d.upgraded.iter().chain(&d.downgraded) {
        println!("  {} {} -> {}", c.name, c.from, c.to);
    }
    for x in &d.added {
        println!("  {} {} (new)", x.name, x.version);
    }
    for x in &d.removed {
        println!("  {} {} (removed)", x.name, x.version);
    }
    if !p.etc_changed.is_empty() {
        println!("/etc: {} defaults change", p.etc_changed.len());
    }
    if !p.services.is_empty() {
        let verb = if r.restarted.is_empty() {
            "to restart"
        } else {
            "restarted"
        };
        println!("services {verb}: {}", p.services.join(" "));
    }
    for why in &p.refusals {
        println!("{}: {why}", if a.force { "forced" } else { "refused" });
    }
    if r.applied {
        eprintln!(
            "applied live: /usr shows {}; 'arbor apply-live --reset' undoes it",
            &p.to[..12]
        );
    } else {
        eprintln!("dry run: nothing changed");
    }
    Ok(0)
}
