//! Package subcommands: db, compose tree, install, uninstall, override.

use super::outcome::run_and_print;
use anyhow::Result;
use arbor_ops::update::Action;
use arbor_ops::{Request, UpgradeRequest};
use clap::{Args, Subcommand};

use std::path::PathBuf;

use super::output::{PrintSteps, human_bytes, json, with_progress};
use super::{Cli, OutputArgs, lock_wait};
use arbor_compose::tree as compose_tree;
use arbor_packages::layer::LayerEdit;
use arbor_packages::treefile::Treefile;
use arbor_packages::{self as packages, dpkg};
use arbor_store::Repo;
use arbor_store::refs::RefName;
use arbor_sysroot::Sysroot;

/// `arbor db …`.
#[derive(Subcommand, Debug)]
pub enum DbCommand {
    /// List the packages of a commit (default: the booted deployment, else the default).
    List(DbListArgs),
    /// Show the packages added, removed, upgraded and downgraded from A to B.
    Diff(DbDiffArgs),
}

/// `arbor db list`.
#[derive(Args, Debug)]
pub struct DbListArgs {
    /// A ref or commit.
    pub rev: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `arbor db diff`.
#[derive(Args, Debug)]
pub struct DbDiffArgs {
    /// The older ref or commit.
    pub from: String,
    /// The newer ref or commit.
    pub to: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `arbor compose tree`.
#[derive(Args, Debug)]
pub struct TreeArgs {
    /// The treefile (docs/treefile.md).
    pub treefile: PathBuf,
    /// Branch to commit to.
    #[arg(short, long = "branch", value_name = "REF")]
    pub branch: String,
    /// Where downloaded packages are kept between composes.
    #[arg(long, value_name = "DIR", default_value = compose_tree::DEFAULT_CACHE)]
    pub cache_dir: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Runs `arbor compose tree`.
pub fn compose_tree(cli: &Cli, a: &TreeArgs) -> Result<i32> {
    let tf = Treefile::load(&a.treefile)?;
    let repo = Repo::open(&cli.repo_path())?;
    let branch = RefName::parse(&a.branch)?;
    let r = with_progress("committing", |progress| {
        let opts = compose_tree::ComposeTreeOptions {
            branch,
            cache_dir: a.cache_dir.clone(),
            progress,
        };
        compose_tree::compose_tree(&repo, &tf, &opts, &PrintSteps, lock_wait(cli))
    })?;
    if a.output.json {
        return json(&r).map(|_| 0);
    }
    println!("{}", r.commit.commit);
    eprintln!(
        "composed {} into {}: {} packages, {} files, {} new objects ({})",
        tf.name,
        r.commit.branch,
        r.packages,
        r.commit.stats.files + r.commit.stats.symlinks,
        r.commit.stats.objects_written,
        human_bytes(r.commit.stats.bytes_written)
    );
    if !r.reproducible {
        eprintln!(
            "note: no SOURCE_DATE_EPOCH (environment or treefile): this build is not reproducible"
        );
    }
    Ok(0)
}

/// `arbor install` / `arbor uninstall`.
#[derive(Args, Debug)]
pub struct PackagesArgs {
    /// Package names; for install also local files (a path with '/' or ending in .deb).
    #[arg(required = true, value_name = "PKG")]
    pub packages: Vec<String>,
    /// The stateroot (default: the only one).
    #[arg(long, value_name = "NAME")]
    pub os: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `arbor install`: packages to layer, or `to-disk`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct InstallArgs {
    /// Write a bootable disk instead of layering packages.
    #[command(subcommand)]
    pub target: Option<InstallTarget>,
    #[command(flatten)]
    pub packages: PackagesArgs,
}

/// What `arbor install` can write besides packages.
#[derive(Subcommand, Debug)]
pub enum InstallTarget {
    /// Make a bootable disk (GPT, ESP, ext4 root) from a commit or a container image.
    ToDisk(super::image::ToDiskArgs),
}

/// `arbor override …`.
#[derive(Subcommand, Debug)]
pub enum OverrideCommand {
    /// Remove base packages from the deployment (dpkg --purge).
    Remove(PackagesArgs),
    /// Replace base packages with local .deb files.
    Replace(PackagesArgs),
    /// Undo overrides of the named packages (all without names).
    Reset(ResetArgs),
}

/// `arbor override reset`.
#[derive(Args, Debug)]
pub struct ResetArgs {
    /// Packages whose override to drop; none: all.
    pub packages: Vec<String>,
    /// The stateroot (default: the only one).
    #[arg(long, value_name = "NAME")]
    pub os: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `arbor upgrade`.
#[derive(Args, Debug)]
pub struct UpgradeArgs {
    /// The stateroot (default: the only one).
    #[arg(long, value_name = "NAME")]
    pub os: Option<String>,
    /// Only look: report the version offered and how it would be fetched.
    #[arg(long, conflicts_with = "download_only")]
    pub check: bool,
    /// Download and verify, but do not deploy.
    #[arg(long)]
    pub download_only: bool,
    /// Print the candidates (full fetch, delta chains) with their sizes and this
    /// device's phase; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Ignore phased rollout: take the newest version.
    #[arg(long)]
    pub phase_override: bool,
    /// Once staged, apply it at once by the mildest safe way: auto, or a step that is
    /// the mildest allowed (live, soft-reboot, kexec, reboot; docs/activation.md).
    #[arg(long, value_name = "STEP", value_parser = ["auto", "live", "soft-reboot", "kexec", "reboot"])]
    pub apply: Option<String>,
    /// Download at most this fast, in bytes a second with an optional K, M or G
    /// (500K, 2M); overrides the policy's max_rate.
    #[arg(long, value_name = "RATE", value_parser = arbor_remote::rate::parse_rate)]
    pub max_rate: Option<u64>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `--apply`'s word as the step it allows at the mildest.
pub fn parse_apply(word: &str) -> Result<arbor_live::activation::Step> {
    arbor_ops::update::apply_step::parse_apply(word)
}

fn is_file_arg(a: &str) -> bool {
    a.contains('/') || a.ends_with(".deb")
}

/// Asks for a new deployment with the layered packages edited.
fn layer(cli: &Cli, edit: LayerEdit, os: &Option<String>, out: &OutputArgs) -> Result<i32> {
    let req = Request::Layer {
        os: os.clone(),
        edit,
    };
    run_and_print(cli, &req, out)
}

/// `arbor install PACKAGE…` (`install to-disk` is image::to_disk).
pub fn install(cli: &Cli, a: &PackagesArgs) -> Result<i32> {
    let (files, names): (Vec<&String>, Vec<&String>) =
        a.packages.iter().partition(|p| is_file_arg(p));
    let edit = LayerEdit::Install {
        names: names.into_iter().cloned().collect(),
        files: files.into_iter().map(PathBuf::from).collect(),
    };
    layer(cli, edit, &a.os, &a.output)
}

/// `arbor uninstall`.
pub fn uninstall(cli: &Cli, a: &PackagesArgs) -> Result<i32> {
    layer(
        cli,
        LayerEdit::Uninstall(a.packages.clone()),
        &a.os,
        &a.output,
    )
}

/// `arbor override …`.
pub fn override_base(cli: &Cli, cmd: &OverrideCommand) -> Result<i32> {
    match cmd {
        OverrideCommand::Remove(a) => {
            layer(cli, LayerEdit::Remove(a.packages.clone()), &a.os, &a.output)
        }
        OverrideCommand::Replace(a) => {
            let debs = a.packages.iter().map(PathBuf::from).collect();
            layer(cli, LayerEdit::Replace(debs), &a.os, &a.output)
        }
        OverrideCommand::Reset(a) => {
            layer(cli, LayerEdit::Reset(a.packages.clone()), &a.os, &a.output)
        }
    }
}

/// `arbor upgrade`.
pub fn upgrade(cli: &Cli, a: &UpgradeArgs) -> Result<i32> {
    let action = if a.check {
        Action::Check
    } else if a.download_only {
        Action::Download
    } else {
        Action::Stage
    };
    let req = Request::Upgrade(UpgradeRequest {
        os: a.os.clone(),
        action,
        dry_run: a.dry_run,
        phase_override: a.phase_override,
        apply: a.apply.as_deref().map(parse_apply).transpose()?,
        max_rate: a.max_rate,
    });
    run_and_print(cli, &req, &a.output)
}

/// The commit a `db` command reads when none is named.
fn default_commit(cli: &Cli) -> Result<String> {
    let sysroot = Sysroot::open(&cli.sysroot)?;
    let list = sysroot.deployments()?;
    let d = list
        .iter()
        .find(|d| d.booted)
        .or(list.first())
        .ok_or_else(|| anyhow::anyhow!("no deployment: name a ref or commit"))?;
    Ok(d.commit.to_hex())
}

/// Runs `arbor db …`.
pub fn db(cli: &Cli, cmd: &DbCommand) -> Result<i32> {
    let repo = Repo::open(&cli.repo_path())?;
    match cmd {
        DbCommand::List(a) => {
            let rev = match &a.rev {
                Some(r) => r.clone(),
                None => default_commit(cli)?,
            };
            let list = packages::packages_of(&repo, &repo.resolve_rev(&rev)?)?;
            if a.output.json {
                return json(&list).map(|_| 0);
            }
            for p in &list {
                println!("{} {} {}", p.name, p.arch, p.version);
            }
        }
        DbCommand::Diff(a) => {
            let from = packages::packages_of(&repo, &repo.resolve_rev(&a.from)?)?;
            let to = packages::packages_of(&repo, &repo.resolve_rev(&a.to)?)?;
            let d = dpkg::diff(&from, &to);
            if a.output.json {
                return json(&d).map(|_| 0);
            }
            super::outcome::print_package_diff(&d);
        }
    }
    Ok(0)
}
