//! `arbor delta`: static deltas between commits.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::output::{human_bytes, json};
use super::{Cli, OutputArgs, lock_wait};
use arbor_delta as delta;
use arbor_store::Repo;
use arbor_store::refs::RefName;

/// `arbor delta …`.
#[derive(Subcommand, Debug)]
pub enum DeltaCommand {
    /// Write the delta that takes a repository from FROM to TO.
    Create(DeltaPairArgs),
    /// Apply a delta (its FROM commit must be here); every object is verified.
    Apply(DeltaApplyArgs),
    /// Compare a delta's size with a full fetch of the same objects.
    Stats(DeltaPairArgs),
}

/// Two commits, and where to write.
#[derive(Args, Debug)]
pub struct DeltaPairArgs {
    /// The commit the receiver has.
    pub from: String,
    /// The commit it wants.
    pub to: String,
    /// The delta file (create; default FROM-TO.delta with short ids).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Diff xz files (`.ko.xz` modules) by their content, compressed again on apply:
    /// fewer bytes, much more CPU for the client (docs/delta.md).
    #[arg(long)]
    pub recompress: bool,
    #[command(flatten)]
    pub out: OutputArgs,
}

/// `arbor delta apply`.
#[derive(Args, Debug)]
pub struct DeltaApplyArgs {
    /// The delta file.
    pub delta: PathBuf,
    /// Point this branch at the delta's TO commit.
    #[arg(short, long = "branch", value_name = "REF")]
    pub branch: Option<String>,
    #[command(flatten)]
    pub out: OutputArgs,
}

fn print_stats(s: &delta::DeltaStats) {
    println!(
        "objects:   {} ({} patched against their old version, {} of them xz files \
         diffed by content)",
        s.objects, s.patched, s.recompressed
    );
    println!("raw:       {}", human_bytes(s.raw_bytes));
    if s.full_bytes > 0 {
        println!("full:      {}", human_bytes(s.full_bytes));
        println!(
            "delta:     {} ({:.1}% smaller than a full fetch)",
            human_bytes(s.delta_bytes),
            s.reduction_percent()
        );
    } else {
        println!("delta:     {}", human_bytes(s.delta_bytes));
    }
}

/// Runs `arbor delta …`.
pub fn delta(cli: &Cli, cmd: &DeltaCommand) -> Result<i32> {
    let repo = Repo::open(&cli.repo_path())?;
    match cmd {
        DeltaCommand::Create(a) | DeltaCommand::Stats(a) => {
            let from = repo.resolve_rev(&a.from)?;
            let to = repo.resolve_rev(&a.to)?;
            let scratch;
            let out = match (cmd, &a.output) {
                (DeltaCommand::Stats(_), _) => {
                    scratch = arbor_store::scratch::ScratchDir::new(repo.path(), "delta")?;
                    scratch.path().join("stats.delta")
                }
                (_, Some(o)) => o.clone(),
                (_, None) => PathBuf::from(format!("{}-{}.delta", from.short(), to.short())),
            };
            let measure = matches!(cmd, DeltaCommand::Stats(_));
            let how = delta::CreateOptions {
                measure_full: measure,
                recompress: a.recompress,
            };
            let s = delta::create(&repo, &from, &to, &out, how)?;
            if a.out.json {
                return json(&s).map(|_| 0);
            }
            print_stats(&s);
            if let DeltaCommand::Create(_) = cmd {
                println!("wrote {}", out.display());
            }
        }
        DeltaCommand::Apply(a) => {
            let branch = a.branch.as_deref().map(RefName::parse).transpose()?;
            let r = delta::apply_to(&repo, &a.delta, branch.as_ref(), lock_wait(cli))?;
            if a.out.json {
                return json(&r).map(|_| 0);
            }
            println!("{} ({} objects verified)", r.to, r.objects);
        }
    }
    Ok(0)
}
