//! The `arbor` command line: argument definitions and printing, nothing else.
//!
//! Each subcommand parses its arguments, calls one library function and prints the
//! typed result, as text or, with `--json`, as JSON. This is the one module allowed to
//! print.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod delta_cmds;
mod etc_cmds;
mod image_cmds;
mod interop_cmds;
mod live_cmds;
mod outcome;
mod output;
mod package_cmds;
mod remote_cmds;
mod repo_cmds;
mod serve_cmd;
mod sysroot_cmds;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, CommandFactory, Parser, Subcommand};

use arbor_core::lock::LockWait;
use arbor_ops as ops;
use arbor_sysroot::Sysroot;

const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  failure (fsck: problems were found; health-check: a check failed); the reason is
     printed on stderr
  2  the command line could not be parsed";

/// Image-based, transactional updates for Debian-family systems.
#[derive(Parser, Debug)]
#[command(name = "arbor", version, about, after_long_help = EXIT_CODES)]
pub struct Cli {
    /// The physical root holding arbor/repo, the deployments and /boot.
    #[arg(
        long,
        global = true,
        env = "ARBOR_SYSROOT",
        default_value = "/",
        value_name = "DIR"
    )]
    pub sysroot: PathBuf,
    /// The object store (default: SYSROOT/arbor/repo).
    #[arg(long, global = true, env = "ARBOR_REPO", value_name = "DIR")]
    pub repo: Option<PathBuf>,
    /// Fail at once, naming the holder, when another writer holds the lock (default:
    /// say who holds it and wait).
    #[arg(long, global = true)]
    pub no_wait: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `--json`, shared by every command that reports.
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct OutputArgs {
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create an empty object store.
    Init(OutputArgs),
    /// Commit a directory tree to a branch.
    Commit(repo_cmds::CommitArgs),
    /// Check a commit out into a new directory.
    Checkout(repo_cmds::CheckoutArgs),
    /// Show the history of a branch or commit.
    Log(repo_cmds::LogArgs),
    /// Show one commit.
    Show(repo_cmds::RevArgs),
    /// List a path inside a commit.
    Ls(repo_cmds::LsArgs),
    /// Print a file inside a commit.
    Cat(repo_cmds::CatArgs),
    /// List what changed between two commits.
    Diff(repo_cmds::DiffArgs),
    /// List the refs.
    Refs(repo_cmds::RefsArgs),
    /// Rehash every object and walk every ref; exit 1 if anything is wrong.
    Fsck(repo_cmds::FsckArgs),
    /// Delete objects that no ref reaches.
    Prune(repo_cmds::PruneArgs),
    /// Set up a sysroot and its stateroots.
    #[command(subcommand)]
    Admin(sysroot_cmds::AdminCommand),
    /// Build image trees.
    #[command(subcommand)]
    Compose(sysroot_cmds::ComposeCommand),
    /// Deploy a commit: it boots next; the current one becomes the rollback.
    #[command(disable_version_flag = true)]
    Deploy(sysroot_cmds::DeployArgs),
    /// Show the deployments: booted, pending, rollback, pinned.
    Status(OutputArgs),
    /// Boot the rollback deployment next.
    Rollback(OutputArgs),
    /// Remove a deployment (never the booted one).
    Undeploy(sysroot_cmds::IndexArgs),
    /// Keep a deployment from being removed by later deploys (--unpin to undo).
    Pin(sysroot_cmds::IndexArgs),
    /// Show or edit the kernel arguments of the default deployment.
    Kargs(sysroot_cmds::KargsArgs),
    /// Print a GRUB menu fragment of the deployments (for loaders without BLS).
    GrubConfig(sysroot_cmds::GrubConfigArgs),
    /// Make the staged deployment the default boot entry (run at shutdown).
    FinalizeStaged(OutputArgs),
    /// Compute what a systemd-boot-style loader boots next, consuming one try.
    BootSelect(sysroot_cmds::BootSelectArgs),
    /// Mark the booted deployment good (remove its boot-counting suffix).
    BootComplete(OutputArgs),
    /// Run /etc/arbor/health.d/*; all pass: mark the boot good; exit 1 otherwise.
    HealthCheck(sysroot_cmds::HealthCheckArgs),
    /// Assemble a deployment's root at a target, as the initramfs does at boot.
    PrepareRoot(arbor_prepare_root::PrepareRootArgs),
    /// Remove unreferenced deployments and kernels, then prune the repository.
    Cleanup(OutputArgs),
    /// Factory reset: a new deployment of the booted commit with a pristine /etc (and
    /// /var); the previous one stays as the rollback, so 'arbor rollback' undoes it.
    Reset(sysroot_cmds::ResetArgs),
    /// The machine's /etc against the image's defaults: diff, restore.
    #[command(subcommand)]
    Etc(etc_cmds::EtcCommand),
    /// Layer packages (names, or local .deb files) on the deployment: a new deployment.
    /// `arbor install to-disk` writes a bootable disk instead.
    Install(package_cmds::InstallArgs),
    /// Remove layered packages: a new deployment.
    Uninstall(package_cmds::PackagesArgs),
    /// Remove or replace packages of the base image, or undo that: a new deployment.
    #[command(subcommand)]
    Override(package_cmds::OverrideCommand),
    /// Deploy the tip of the tracked ref with the layered packages re-applied.
    Upgrade(package_cmds::UpgradeArgs),
    /// A writable overlay on /usr: transient, or a hotfix kept across reboots.
    #[command(after_long_help = live_cmds::USROVERLAY_HELP)]
    Usroverlay(live_cmds::UsrOverlayArgs),
    /// Make the running system match the pending deployment without a reboot.
    ApplyLive(live_cmds::ApplyLiveArgs),
    /// Publish versions to a folder served over HTTP (TUF-signed).
    #[command(subcommand)]
    Publish(remote_cmds::PublishCommand),
    /// Published repositories this sysroot updates from.
    #[command(subcommand)]
    Remote(remote_cmds::RemoteCommand),
    /// Follow another channel (CHANNEL, or REMOTE:CHANNEL): fetch and stage its version.
    #[command(disable_version_flag = true)]
    Rebase(sysroot_cmds::RebaseArgs),
    /// Show where the update is (checking, downloading, staged, testing, ...).
    UpdateStatus(OutputArgs),
    /// Check, download or stage as /etc/arbor/arbor.toml says (the timer runs this).
    AutoUpdate(remote_cmds::AutoUpdateArgs),
    /// The transaction history: who did what, when, and how it ended.
    History(remote_cmds::HistoryArgs),
    /// Static deltas between commits: create, apply, stats.
    #[command(subcommand)]
    Delta(delta_cmds::DeltaCommand),
    /// The package database of commits: list, diff.
    #[command(subcommand)]
    Db(package_cmds::DbCommand),
    /// Move commits between arbor and OSTree repositories.
    #[command(subcommand)]
    Ostree(interop_cmds::OstreeCommand),
    /// Mount a commit read-only with FUSE, straight from the store.
    Mount(interop_cmds::MountArgs),
    /// Serve a JSON HTTP API for dashboards (a D-Bus client of arbord).
    Serve(serve_cmd::ServeArgs),
    /// Write the man pages into DIR (used to keep man/ current).
    #[command(hide = true)]
    GenerateMan {
        /// Where to write them.
        dir: PathBuf,
    },
}

impl Cli {
    /// The repository this invocation works on.
    pub fn repo_path(&self) -> PathBuf {
        self.repo
            .clone()
            .unwrap_or_else(|| arbor_sysroot::physical_root(&self.sysroot).join("arbor/repo"))
    }
}

fn announce_wait(holder: &str) {
    eprintln!("arbor: waiting for the lock held by {holder}");
}

/// How writers wait for the lock, from `--no-wait`.
pub fn lock_wait(cli: &Cli) -> LockWait<'static> {
    if cli.no_wait {
        LockWait::NoWait
    } else {
        LockWait::Wait(&announce_wait)
    }
}

/// Runs a library operation as the CLI does: waiting for the lock unless `--no-wait`,
/// recorded with this command line, progress on the terminal.
pub fn run_op(cli: &Cli, sysroot: &Sysroot, req: &ops::Request) -> Result<ops::Outcome> {
    ops::run(
        sysroot,
        req,
        lock_wait(cli),
        &ops::Initiator::this_process(),
        &remote_cmds::Term::new(),
    )
}

/// Parses the process arguments and runs the command; the whole of `main`.
pub fn run_from_env() -> i32 {
    let cli = Cli::parse();
    exit_code(run(&cli))
}

/// A command's exit code, its error printed.
fn exit_code(result: Result<i32>) -> i32 {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

/// What `arbor` and `arbor-ostree` set up before anything else: the default SIGPIPE,
/// a pinned mmap threshold, and logs on stderr filtered by `$ARBOR_LOG`.
pub fn init_process() {
    arbor_core::sys::default_sigpipe();
    arbor_core::sys::pin_mmap_threshold();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("ARBOR_LOG"))
        .with_writer(std::io::stderr)
        .init();
}

/// The entry point of `arbor-ostree`, the program `arbor ostree …` hands over to: the
/// same command line, run where libostree is loaded.
pub fn run_ostree_helper_from_env() -> i32 {
    let cli = Cli::parse();
    exit_code(match &cli.command {
        Command::Ostree(cmd) => interop_cmds::run_ostree(&cli, cmd),
        _ => Err(anyhow::anyhow!(
            "arbor-ostree runs only `arbor ostree …`; use arbor for the rest"
        )),
    })
}

/// Runs one parsed command; returns the exit code.
pub fn run(cli: &Cli) -> Result<i32> {
    match &cli.command {
        Command::GenerateMan { dir } => generate_man(dir).map(|_| 0),
        Command::Ostree(_) => interop_cmds::exec_ostree_helper(),
        Command::Db(cmd) => package_cmds::run_db(cli, cmd),
        Command::Etc(cmd) => etc_cmds::run(cli, cmd),
        Command::Delta(cmd) => delta_cmds::run(cli, cmd),
        Command::Publish(cmd) => remote_cmds::run_publish(cli, cmd),
        Command::Remote(cmd) => remote_cmds::run_remote(cli, cmd),
        Command::Rebase(a) => sysroot_cmds::run_rebase(cli, a),
        Command::UpdateStatus(o) => remote_cmds::run_update_status(cli, o),
        Command::AutoUpdate(a) => remote_cmds::run_auto_update(cli, a),
        Command::History(a) => remote_cmds::run_history(cli, a),
        Command::Usroverlay(a) => live_cmds::run_usroverlay(cli, a),
        Command::ApplyLive(a) => live_cmds::run_apply_live(cli, a),
        Command::Install(package_cmds::InstallArgs {
            target: Some(package_cmds::InstallTarget::ToDisk(a)),
            ..
        }) => image_cmds::run_to_disk(cli, a),
        Command::Install(_)
        | Command::Uninstall(_)
        | Command::Override(_)
        | Command::Upgrade(_) => package_cmds::run_layering(cli, &cli.command),
        Command::Mount(a) => interop_cmds::run_mount(cli, a),
        Command::Serve(a) => serve_cmd::run_serve(a),
        Command::Admin(cmd) => sysroot_cmds::run_admin(cli, cmd),
        Command::PrepareRoot(a) => arbor_prepare_root::run_prepare_root(&cli.sysroot, a),
        Command::Compose(cmd) => sysroot_cmds::run_compose(cli, cmd),
        Command::Deploy(_)
        | Command::Status(_)
        | Command::Rollback(_)
        | Command::Undeploy(_)
        | Command::Pin(_)
        | Command::Kargs(_)
        | Command::FinalizeStaged(_)
        | Command::GrubConfig(_)
        | Command::BootSelect(_)
        | Command::BootComplete(_)
        | Command::HealthCheck(_)
        | Command::Cleanup(_)
        | Command::Reset(_) => sysroot_cmds::run(cli, &cli.command),
        _ => repo_cmds::run(cli),
    }
}

/// Writes `arbor.1`, one `arbor-<command>.1` per visible subcommand, `arbord.8` and
/// `arbor-prepare-root.8`.
pub fn generate_man(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command();
    let write_section = |name: &str, c: clap::Command, section: &str| -> Result<()> {
        let mut buf = Vec::new();
        clap_mangen::Man::new(c).section(section).render(&mut buf)?;
        std::fs::write(dir.join(format!("{name}.{section}")), buf)?;
        Ok(())
    };
    write_section("arbord", arbor_daemon::cli::ArbordCli::command(), "8")?;
    write_section(
        "arbor-prepare-root",
        arbor_prepare_root::PrepareRootCli::command(),
        "8",
    )?;
    let write = |name: &str, c: clap::Command| write_section(name, c, "1");
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("arbor-{}", sub.get_name());
        write(
            &name,
            sub.clone()
                .name(name.clone())
                .version(cmd.get_version().unwrap_or_default().to_string()),
        )?;
    }
    write("arbor", cmd)
}
