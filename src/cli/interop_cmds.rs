//! `arbor ostree import|export` and `arbor mount`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::output::json;
use super::{Cli, OutputArgs, lock_wait};
use crate::ostree_interop;
use crate::store::Repo;
use crate::store::refs::RefName;

/// `arbor ostree …`.
#[derive(Subcommand, Debug)]
pub enum OstreeCommand {
    /// Read a commit from an OSTree repository into arbor's store.
    Import(ImportArgs),
    /// Write an arbor commit into an OSTree repository.
    Export(ExportArgs),
}

/// `arbor ostree import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The OSTree repository.
    #[arg(long, value_name = "DIR")]
    pub ostree_repo: PathBuf,
    /// OSTree ref or commit to import.
    pub rev: String,
    /// arbor branch to create or move (default: the OSTree ref's name).
    #[arg(short, long = "branch", value_name = "REF")]
    pub branch: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `arbor ostree export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// arbor branch or commit to export.
    pub rev: String,
    /// The OSTree repository (create it with `ostree init --mode=bare`).
    #[arg(long, value_name = "DIR")]
    pub ostree_repo: PathBuf,
    /// OSTree ref to create or move.
    #[arg(short, long = "branch", value_name = "REF")]
    pub branch: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Runs `arbor ostree …`.
pub fn run_ostree(cli: &Cli, cmd: &OstreeCommand) -> Result<i32> {
    let repo = Repo::open(&cli.repo_path())?;
    match cmd {
        OstreeCommand::Import(a) => {
            let branch = RefName::parse(a.branch.as_deref().unwrap_or(&a.rev))
                .context("name the arbor branch with -b")?;
            let r = ostree_interop::import(&repo, &a.ostree_repo, &a.rev, &branch, lock_wait(cli))?;
            if a.output.json {
                return json(&r).map(|_| 0);
            }
            println!("{}", r.commit);
            eprintln!(
                "imported OSTree commit {} ({} files) as {} on {}",
                r.ostree_commit,
                r.files,
                r.commit.short(),
                r.branch
            );
        }
        OstreeCommand::Export(a) => {
            let id = repo.resolve_rev(&a.rev)?;
            let r = ostree_interop::export(&repo, &id, &a.ostree_repo, &a.branch)?;
            if a.output.json {
                return json(&r).map(|_| 0);
            }
            println!("{}", r.ostree_commit);
            eprintln!(
                "exported {} as OSTree commit {} on {}",
                r.commit.short(),
                r.ostree_commit,
                r.ostree_ref
            );
        }
    }
    Ok(0)
}
