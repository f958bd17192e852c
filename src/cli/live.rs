//! Live subcommands: usroverlay, apply-live.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::output::json;
use super::{Cli, OutputArgs, run_op};
use arbor_live::changes::ChangeKind;
use arbor_live::request::OverlayListing;
use arbor_live::{OverlayKind, UsrOverlayRequest, UsrStatus, apply, overlay};
use arbor_ops::{Outcome, Request};
use arbor_sysroot::Sysroot;

/// The workflow `arbor usroverlay --help` and its man page describe.
pub const USROVERLAY_HELP: &str = "\
A live fix, from test to deployment:
  arbor usroverlay --hotfix --name CVE-2026-1234   writable /usr, kept across reboots
  arbor usroverlay --add ./fixed-libfoo.so:/usr/lib/x86_64-linux-gnu/libfoo.so.1
  arbor usroverlay --list                          what the overlay changed (A/M/D)
  arbor usroverlay --commit -m 'libfoo fix'        a commit on the booted one, deployed
                                                   for the next boot; the overlay is
                                                   dropped at that boot
  arbor rollback                                   back to the deployment without it

The deployment below the overlay is never written. --add writes each file beside its
destination and renames it into place, and refuses destinations outside /usr or
through a symlink that leaves /usr. Every change is recorded in 'arbor history'.";

/// `arbor usroverlay`: one action (`--create` when none is given).
#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("action").multiple(false))]
pub struct UsrOverlayArgs {
    /// Mount a writable overlay on /usr (the default action).
    #[arg(long, group = "action")]
    pub create: bool,
    /// Show what is on /usr.
    #[arg(long, group = "action")]
    pub status: bool,
    /// List every path the overlay changed: added, modified, deleted.
    #[arg(long, group = "action")]
    pub list: bool,
    /// Copy files or folders into /usr (DEST defaults to SRC read from /, so
    /// `usr/bin/x` lands in /usr/bin/x); makes an overlay if there is none.
    #[arg(long, group = "action", value_name = "SRC[:DEST]", num_args = 1..)]
    pub add: Vec<String>,
    /// Turn the overlay into a commit on the booted one and deploy it for the next boot.
    #[arg(long, group = "action")]
    pub commit: bool,
    /// Unmount the overlay and drop its changes.
    #[arg(long, group = "action")]
    pub remove: bool,
    /// Keep the overlay across reboots of this deployment (mounted again by
    /// prepare-root); with --create or --add.
    #[arg(long, conflicts_with_all = ["status", "list", "commit", "remove"])]
    pub hotfix: bool,
    /// A label for the overlay, shown by status, --list and the history; alone, it
    /// renames the mounted overlay.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["status", "list", "commit", "remove"])]
    pub name: Option<String>,
    /// The commit's subject, with --commit.
    #[arg(short, long, value_name = "MESSAGE", requires = "commit")]
    pub message: Option<String>,
    /// With --list: the deployment whose kept hotfix to list, by index or commit prefix.
    #[arg(long, value_name = "N|COMMIT", requires = "list")]
    pub deployment: Option<String>,
    /// The running system's root (a prepare-root target in tests and chroots).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
}

impl UsrOverlayArgs {
    /// The library request these arguments make.
    fn request(&self) -> Result<UsrOverlayRequest> {
        Ok(if self.status {
            UsrOverlayRequest::Status
        } else if self.list {
            UsrOverlayRequest::List {
                deployment: self.deployment.clone(),
            }
        } else if !self.add.is_empty() {
            UsrOverlayRequest::Add {
                items: self
                    .add
                    .iter()
                    .map(|a| overlay::parse_add(a))
                    .collect::<Result<_>>()?,
                hotfix: self.hotfix,
                name: self.name.clone(),
            }
        } else if self.commit {
            UsrOverlayRequest::Commit {
                message: self.message.clone(),
            }
        } else if self.remove {
            UsrOverlayRequest::Remove
        } else if let (false, false, Some(n)) = (self.create, self.hotfix, &self.name) {
            UsrOverlayRequest::Name(n.clone())
        } else {
            UsrOverlayRequest::Create {
                hotfix: self.hotfix,
                name: self.name.clone(),
            }
        })
    }
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
    let label = s
        .name
        .as_deref()
        .map(|n| format!(" '{n}'"))
        .unwrap_or_default();
    match (&s.overlay, &s.upper) {
        (None, _) | (_, None) => {
            println!("/usr of {} is the deployment's, read-only", s.deployment)
        }
        (Some(kind), Some(upper)) => {
            let what = match kind {
                OverlayKind::Transient => "a writable overlay, gone at reboot",
                OverlayKind::Hotfix => "a writable hotfix overlay, kept across reboots",
                OverlayKind::Live => "the live-applied commit",
            };
            println!(
                "/usr of {} has {what}{label} (upper layer {upper})",
                s.deployment,
            );
            if let Some(c) = &s.committed {
                println!("committed as {c}: the next boot runs it, and this overlay is dropped");
            }
            if let Some(c) = &s.live_commit {
                println!("live commit: {c}");
            }
        }
    }
}

fn print_listing(l: &OverlayListing) {
    let kind = match l.kind {
        OverlayKind::Transient => "transient overlay",
        OverlayKind::Hotfix => "hotfix",
        OverlayKind::Live => "live-applied layer",
    };
    let label = l
        .name
        .as_deref()
        .map(|n| format!(" '{n}'"))
        .unwrap_or_default();
    let mounted = if l.mounted { "" } else { ", not mounted here" };
    println!(
        "{kind}{label} on {}{mounted}: {} changed paths",
        l.deployment,
        l.changes.len()
    );
    for c in &l.changes {
        let mark = match c.change {
            ChangeKind::Added => 'A',
            ChangeKind::Modified => 'M',
            ChangeKind::Deleted => 'D',
        };
        let what = if c.what.is_empty() {
            String::new()
        } else {
            format!("  ({})", c.what.join(", "))
        };
        println!(
            "{mark} {:<7} {:04o} {:>10}  {}{what}",
            format!("{:?}", c.entry_type).to_lowercase(),
            c.mode,
            c.size,
            c.path
        );
    }
}

/// Runs `arbor usroverlay`.
pub fn usroverlay(cli: &Cli, a: &UsrOverlayArgs) -> Result<i32> {
    let sysroot = Sysroot::open(&cli.sysroot)?;
    let req = Request::UsrOverlay {
        root: a.root.clone(),
        req: a.request()?,
    };
    let out = run_op(cli, &sysroot, &req)?;
    if a.output.json {
        return json(&out).map(|_| 0);
    }
    match &out {
        Outcome::UsrStatus(st) => print_usr(st),
        Outcome::OverlayListing(l) => print_listing(l),
        Outcome::OverlayCommit(c) => {
            println!(
                "committed {} changed paths of /usr as {} (on {})",
                c.changes.len(),
                c.commit,
                c.from.short()
            );
            println!(
                "deployed as {}/{}: it boots next; the overlay is dropped at that boot",
                c.deploy.deployment.os,
                c.deploy.deployment.dir_name()
            );
        }
        other => unreachable!("usroverlay gave a {} outcome", other.kind()),
    }
    Ok(0)
}

/// Runs `arbor apply-live`.
pub fn apply_live(cli: &Cli, a: &ApplyLiveArgs) -> Result<i32> {
    let sysroot = Sysroot::open(&cli.sysroot)?;
    let req = if a.reset {
        Request::ApplyLiveReset {
            root: a.root.clone(),
        }
    } else {
        Request::ApplyLive {
            root: a.root.clone(),
            opts: apply::ApplyOptions {
                packages: a.packages.clone(),
                restart_services: a.restart_services,
                dry_run: a.dry_run,
                force: a.force,
            },
        }
    };
    let out = run_op(cli, &sysroot, &req)?;
    if a.output.json {
        return json(&out).map(|_| 0);
    }
    let r = match out {
        Outcome::UsrStatus(st) => {
            print_usr(&st);
            return Ok(0);
        }
        Outcome::ApplyLive(r) => r,
        other => unreachable!("apply-live gave a {} outcome", other.kind()),
    };
    let p = &r.plan;
    println!("{} -> {}", p.from.short(), p.to.short());
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
            p.to.short()
        );
    } else {
        eprintln!("dry run: nothing changed");
    }
    Ok(0)
}
