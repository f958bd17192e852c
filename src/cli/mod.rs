//! The `arbor` command line: argument definitions and printing, nothing else.
//!
//! Each subcommand parses its arguments, calls one library function and prints the
//! typed result, as text or, with `--json`, as JSON. This is the one module allowed to
//! print.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod boot;
mod delta;
mod deployments;
mod etc;
mod image;
mod interop;
mod live;
mod outcome;
mod output;
mod packages;
mod progress;
mod publish;
mod serve;
mod store;
mod updates;

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
    Commit(store::CommitArgs),
    /// Check a commit out into a new directory.
    Checkout(store::CheckoutArgs),
    /// Show the history of a branch or commit.
    Log(store::LogArgs),
    /// Show one commit.
    Show(store::RevArgs),
    /// List a path inside a commit.
    Ls(store::LsArgs),
    /// Print a file inside a commit.
    Cat(store::CatArgs),
    /// List what changed between two commits.
    Diff(store::DiffArgs),
    /// List the refs.
    Refs(store::RefsArgs),
    /// Rehash every object and walk every ref; exit 1 if anything is wrong.
    Fsck(store::FsckArgs),
    /// Delete objects that no ref reaches.
    Prune(store::PruneArgs),
    /// Set up a sysroot and its stateroots.
    #[command(subcommand)]
    Admin(deployments::AdminCommand),
    /// Build image trees.
    #[command(subcommand)]
    Compose(deployments::ComposeCommand),
    /// Deploy a commit: it boots next; the current one becomes the rollback.
    #[command(disable_version_flag = true)]
    Deploy(deployments::DeployArgs),
    /// Show the deployments: booted, pending, rollback, pinned.
    Status(OutputArgs),
    /// Boot the rollback deployment next.
    Rollback(OutputArgs),
    /// Remove a deployment (never the booted one).
    Undeploy(deployments::IndexArgs),
    /// Keep a deployment from being removed by later deploys (--unpin to undo).
    Pin(deployments::IndexArgs),
    /// Show or edit the kernel arguments of the default deployment.
    Kargs(deployments::KargsArgs),
    /// Print a GRUB menu fragment of the deployments (for loaders without BLS).
    GrubConfig(boot::GrubConfigArgs),
    /// Make the staged deployment the default boot entry (run at shutdown).
    FinalizeStaged(OutputArgs),
    /// Compute what a systemd-boot-style loader boots next, consuming one try.
    BootSelect(boot::BootSelectArgs),
    /// Mark the booted deployment good (remove its boot-counting suffix).
    BootComplete(OutputArgs),
    /// Run /etc/arbor/health.d/*; all pass: mark the boot good; exit 1 otherwise.
    HealthCheck(boot::HealthCheckArgs),
    /// Assemble a deployment's root at a target, as the initramfs does at boot.
    PrepareRoot(arbor_prepare_root::PrepareRootArgs),
    /// Remove unreferenced deployments and kernels, then prune the repository.
    Cleanup(OutputArgs),
    /// Factory reset: a new deployment of the booted commit with a pristine /etc (and
    /// /var); the previous one stays as the rollback, so 'arbor rollback' undoes it.
    Reset(deployments::ResetArgs),
    /// The machine's /etc against the image's defaults: diff, restore.
    #[command(subcommand)]
    Etc(etc::EtcCommand),
    /// Layer packages (names, or local .deb files) on the deployment: a new deployment.
    /// `arbor install to-disk` writes a bootable disk instead.
    Install(packages::InstallArgs),
    /// Remove layered packages: a new deployment.
    Uninstall(packages::PackagesArgs),
    /// Remove or replace packages of the base image, or undo that: a new deployment.
    #[command(subcommand)]
    Override(packages::OverrideCommand),
    /// Deploy the tip of the tracked ref with the layered packages re-applied.
    Upgrade(packages::UpgradeArgs),
    /// A writable overlay on /usr: transient, or a hotfix kept across reboots.
    #[command(after_long_help = live::USROVERLAY_HELP)]
    Usroverlay(live::UsrOverlayArgs),
    /// Make the running system match the pending deployment without a reboot.
    ApplyLive(live::ApplyLiveArgs),
    /// Publish versions to a folder served over HTTP (TUF-signed).
    #[command(subcommand)]
    Publish(publish::PublishCommand),
    /// Published repositories this sysroot updates from.
    #[command(subcommand)]
    Remote(updates::RemoteCommand),
    /// Follow another channel (CHANNEL, or REMOTE:CHANNEL): fetch and stage its version.
    #[command(disable_version_flag = true)]
    Rebase(deployments::RebaseArgs),
    /// Follow a bootable container image in a registry (docker://HOST/NAME:TAG): fetch
    /// the layers not already here and stage it; upgrade then follows its tag.
    Switch(deployments::SwitchArgs),
    /// Show where the update is (checking, downloading, staged, testing, ...).
    UpdateStatus(OutputArgs),
    /// Check, download or stage as /etc/arbor/arbor.toml says (the timer runs this).
    AutoUpdate(updates::AutoUpdateArgs),
    /// The transaction history: who did what, when, and how it ended.
    History(updates::HistoryArgs),
    /// Static deltas between commits: create, apply, stats.
    #[command(subcommand)]
    Delta(delta::DeltaCommand),
    /// The package database of commits: list, diff.
    #[command(subcommand)]
    Db(packages::DbCommand),
    /// Move commits between arbor and OSTree repositories.
    #[command(subcommand)]
    Ostree(interop::OstreeCommand),
    /// Mount a commit read-only with FUSE, straight from the store.
    Mount(interop::MountArgs),
    /// Serve a JSON HTTP API for dashboards (a D-Bus client of arbord).
    Serve(serve::ServeArgs),
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
    ops::perform(
        sysroot,
        req,
        lock_wait(cli),
        &ops::Initiator::this_process(),
        &progress::Term::new(),
    )
}

/// Parses the process arguments and runs the command; the whole of `main`.
pub fn run_from_env() -> i32 {
    let cli = Cli::parse();
    exit_code(dispatch(&cli))
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
        Command::Ostree(cmd) => interop::ostree(&cli, cmd),
        _ => Err(anyhow::anyhow!(
            "arbor-ostree runs only `arbor ostree …`; use arbor for the rest"
        )),
    })
}

/// Runs one parsed command; returns the exit code. The one place that maps the
/// command tree to the functions that run it.
pub fn dispatch(cli: &Cli) -> Result<i32> {
    use Command as C;
    match &cli.command {
        // The object store.
        C::Init(o) => store::init(cli, o),
        C::Commit(a) => store::commit(cli, a),
        C::Checkout(a) => store::checkout(cli, a),
        C::Log(a) => store::log(cli, a),
        C::Show(a) => store::show(cli, a),
        C::Ls(a) => store::ls(cli, a),
        C::Cat(a) => store::cat(cli, a),
        C::Diff(a) => store::diff(cli, a),
        C::Refs(a) => store::refs(cli, a),
        C::Fsck(a) => store::fsck(cli, a),
        C::Prune(a) => store::prune(cli, a),
        // Deployments.
        C::Admin(cmd) => deployments::admin(cli, cmd),
        C::Compose(cmd) => deployments::compose(cli, cmd),
        C::Deploy(a) => deployments::deploy(cli, a),
        C::Rebase(a) => deployments::rebase(cli, a),
        C::Switch(a) => deployments::switch(cli, a),
        C::Status(o) => deployments::status(cli, o),
        C::Rollback(o) => deployments::rollback(cli, o),
        C::Undeploy(a) => deployments::undeploy(cli, a),
        C::Pin(a) => deployments::pin(cli, a),
        C::Kargs(a) => deployments::kargs(cli, a),
        C::Cleanup(o) => deployments::cleanup(cli, o),
        C::Reset(a) => deployments::reset(cli, a),
        // Boot.
        C::GrubConfig(a) => boot::grub_config(cli, a),
        C::FinalizeStaged(o) => boot::finalize_staged(cli, o),
        C::BootSelect(a) => boot::boot_select(cli, a),
        C::BootComplete(o) => boot::boot_complete(cli, o),
        C::HealthCheck(a) => boot::health_check(cli, a),
        C::PrepareRoot(a) => arbor_prepare_root::run_prepare_root(&cli.sysroot, a),
        // /etc, packages, live changes.
        C::Etc(cmd) => etc::etc(cli, cmd),
        C::Install(packages::InstallArgs {
            target: Some(packages::InstallTarget::ToDisk(a)),
            ..
        }) => image::to_disk(cli, a),
        C::Install(a) => packages::install(cli, &a.packages),
        C::Uninstall(a) => packages::uninstall(cli, a),
        C::Override(cmd) => packages::override_base(cli, cmd),
        C::Upgrade(a) => packages::upgrade(cli, a),
        C::Db(cmd) => packages::db(cli, cmd),
        C::Usroverlay(a) => live::usroverlay(cli, a),
        C::ApplyLive(a) => live::apply_live(cli, a),
        // Updates from remotes.
        C::Publish(cmd) => publish::publish(cli, cmd),
        C::Remote(cmd) => updates::remote(cli, cmd),
        C::UpdateStatus(o) => updates::update_status(cli, o),
        C::AutoUpdate(a) => updates::auto_update(cli, a),
        C::History(a) => updates::history(cli, a),
        C::Delta(cmd) => delta::delta(cli, cmd),
        // Interoperation and the edges.
        C::Ostree(_) => interop::exec_ostree_helper(),
        C::Mount(a) => interop::mount(cli, a),
        C::Serve(a) => serve::serve(a),
        C::GenerateMan { dir } => generate_man(dir).map(|_| 0),
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
