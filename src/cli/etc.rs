//! `arbor etc diff|restore`: the machine's `/etc` against its image's defaults.

use anyhow::Result;
use clap::{Args, Subcommand};

use super::outcome::run_and_print;
use super::output::json;
use super::{Cli, OutputArgs};
use arbor_ops::Request;
use arbor_sysroot::Sysroot;
use arbor_sysroot::etc::drift::{Aspect, DriftKind};
use arbor_sysroot::etc::merge::MergeOutcome;
use arbor_sysroot::etc_state;

/// `arbor etc …`.
#[derive(Subcommand, Debug)]
pub enum EtcCommand {
    /// List what differs in /etc from the image's defaults (and, for a deployment
    /// that has not booted yet, what its /etc merge did or will do).
    Diff(EtcDiffArgs),
    /// Put the image's defaults of these paths back into /etc (recorded in the
    /// history; the /etc as it was is kept as a snapshot first).
    Restore(EtcRestoreArgs),
}

/// `arbor etc diff`.
#[derive(Args, Debug)]
pub struct EtcDiffArgs {
    /// The deployment: its index in `arbor status`, a commit prefix, or `staged`
    /// (default: the booted one, else the default one).
    pub deployment: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `arbor etc restore`.
#[derive(Args, Debug)]
pub struct EtcRestoreArgs {
    /// Paths below /etc (`/etc/ssh/sshd_config`); a directory is restored whole.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<String>,
    /// The deployment whose /etc to change (default: the booted one).
    #[arg(long)]
    pub deployment: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

fn aspect_word(a: Aspect) -> &'static str {
    match a {
        Aspect::Type => "type",
        Aspect::Content => "content",
        Aspect::Target => "target",
        Aspect::Mode => "mode",
        Aspect::Owner => "owner",
        Aspect::Xattrs => "xattrs",
    }
}

/// Runs `arbor etc …`.
pub fn etc(cli: &Cli, cmd: &EtcCommand) -> Result<i32> {
    match cmd {
        EtcCommand::Diff(a) => {
            let sysroot = Sysroot::open(&cli.sysroot)?;
            let d = etc_state::pick(&sysroot, a.deployment.as_deref())?;
            let report = etc_state::diff(&sysroot, &d)?;
            if a.output.json {
                return json(&report).map(|_| 0);
            }
            for e in &report.drift {
                let tag = match e.change {
                    DriftKind::Added => 'A',
                    DriftKind::Modified => 'M',
                    DriftKind::Removed => 'D',
                };
                let what: Vec<&str> = e.aspects.iter().map(|a| aspect_word(*a)).collect();
                match what.is_empty() {
                    true => println!("{tag}    /etc/{}", e.path),
                    false => println!("{tag}    /etc/{}  ({})", e.path, what.join(", ")),
                }
            }
            if let Some(m) = &report.merge {
                let when = if report.staged { "will" } else { "did" };
                println!("the /etc merge of {} {when}:", report.deployment);
                for e in m {
                    let what = match e.outcome {
                        MergeOutcome::KeptLocal => "kept local".to_string(),
                        MergeOutcome::KeptDeleted => "kept deleted".to_string(),
                        MergeOutcome::TookNewDefault => "took the new default".to_string(),
                        MergeOutcome::Conflict => format!(
                            "conflict: local kept, new default in /etc/{}",
                            e.saved.as_deref().unwrap_or_default()
                        ),
                        MergeOutcome::MergedEntries => {
                            "merged entry by entry (local users and groups kept, new ones added)"
                                .to_string()
                        }
                    };
                    println!("  /etc/{}: {what}", e.path);
                }
            }
            if report.drift.is_empty() && report.merge.is_none() {
                eprintln!("/etc of {} is as its image ships it", report.deployment);
            }
            Ok(0)
        }
        EtcCommand::Restore(a) => {
            let req = Request::EtcRestore {
                deployment: a.deployment.clone(),
                paths: a.paths.clone(),
            };
            run_and_print(cli, &req, &a.output)
        }
    }
}
