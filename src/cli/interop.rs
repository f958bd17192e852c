//! `arbor ostree import|export` and `arbor mount`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::output::json;
use super::{Cli, OutputArgs, lock_wait};
use arbor_store::Repo;
use arbor_store::refs::RefName;

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

/// Where `arbor-ostree` is installed (beside `arbor` in a build folder).
const OSTREE_HELPER: &str = "/usr/lib/arbor/arbor-ostree";

/// Hands `arbor ostree …` over to `arbor-ostree` with the same arguments. OSTree
/// interop lives in its own program because libostree loads some sixty libraries:
/// linked into `arbor`, they cost every command 17 ms to start and 12 MB of memory.
pub fn exec_ostree_helper() -> Result<i32> {
    use std::os::unix::process::CommandExt;
    let beside = std::env::current_exe()?.with_file_name("arbor-ostree");
    let helper = std::env::var_os("ARBOR_OSTREE_HELPER")
        .map(PathBuf::from)
        .or_else(|| beside.is_file().then_some(beside))
        .unwrap_or_else(|| PathBuf::from(OSTREE_HELPER));
    let err = std::process::Command::new(&helper)
        .arg0("arbor")
        .args(std::env::args_os().skip(1))
        .exec();
    Err(err).with_context(|| {
        format!(
            "running {} (OSTree interop is in that program; is it installed?)",
            helper.display()
        )
    })
}

/// Runs `arbor ostree …` (in `arbor-ostree`).
pub fn ostree(cli: &Cli, cmd: &OstreeCommand) -> Result<i32> {
    let repo = Repo::open(&cli.repo_path())?;
    match cmd {
        OstreeCommand::Import(a) => {
            let branch = RefName::parse(a.branch.as_deref().unwrap_or(&a.rev))
                .context("name the arbor branch with -b")?;
            let r = arbor_ostree::import(&repo, &a.ostree_repo, &a.rev, &branch, lock_wait(cli))?;
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
            let r = arbor_ostree::export(&repo, &id, &a.ostree_repo, &a.branch)?;
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

/// `arbor mount`.
#[derive(Args, Debug)]
pub struct MountArgs {
    /// Branch or commit to show.
    pub rev: String,
    /// An existing, empty directory.
    pub mountpoint: PathBuf,
    /// Stay in the foreground until unmounted or interrupted (Ctrl-C unmounts).
    #[arg(long)]
    pub foreground: bool,
}

/// True when `path` is a mount point (a line of /proc/self/mountinfo names it).
fn is_mounted(path: &std::path::Path) -> bool {
    arbor_core::mounts::list().is_ok_and(|l| l.iter().any(|m| m.mount_point == path))
}

/// Runs `arbor mount`.
pub fn mount(cli: &Cli, a: &MountArgs) -> Result<i32> {
    let repo = Repo::open(&cli.repo_path())?;
    let commit = repo.resolve_rev(&a.rev)?;
    let mountpoint = a
        .mountpoint
        .canonicalize()
        .with_context(|| format!("mount point {}", a.mountpoint.display()))?;
    if a.foreground {
        arbor_store::fuse::serve(repo, &commit, &mountpoint, |fs| {
            eprintln!(
                "serving {} ({} inodes) on {}; unmount or press Ctrl-C to stop",
                commit.short(),
                fs.inode_count(),
                mountpoint.display()
            );
        })?;
        return Ok(0);
    }
    // Background: a detached copy of this command in the foreground; return once the
    // filesystem is mounted, or report why it could not be.
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("--repo")
        .arg(repo.path())
        .args(["mount", "--foreground"])
        .arg(commit.to_hex())
        .arg(&mountpoint)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .context("starting the FUSE server")?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        if is_mounted(&mountpoint) {
            println!(
                "mounted {} on {} (pid {})",
                commit,
                mountpoint.display(),
                child.id()
            );
            return Ok(0);
        }
        if let Some(status) = child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            anyhow::bail!("the FUSE server exited ({status}): {}", err.trim());
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!("{} was not mounted within 300 s", mountpoint.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
