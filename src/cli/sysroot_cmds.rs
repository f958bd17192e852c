//! Sysroot subcommands: admin, compose rootfs, deploy, status, rollback, undeploy, pin,
//! cleanup.

use super::outcome::run_and_print;
use arbor_ops::{DeployRequest, Request};
use arbor_sysroot::kargs::KargEdit;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::output::{human_bytes, json};
use super::{Cli, OutputArgs, lock_wait};
use arbor_store::Repo;
use arbor_store::commit::CommitOptions;
use arbor_store::refs::RefName;
use arbor_sysroot::Sysroot;
use arbor_sysroot::deploy;
use arbor_sysroot::status;

/// `arbor reset`.
#[derive(Args, Debug)]
pub struct ResetArgs {
    /// etc: a pristine /etc; var: and an empty /var; all: and only what the policy
    /// keeps of /var (reset_keep: /home and /root), on the base image without layers.
    #[arg(long, value_enum)]
    pub level: arbor_sysroot::reset::ResetLevel,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `arbor admin …`.
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Create the sysroot layout (repository, state database, deploy/, boot/) in DIR.
    InitFs {
        /// The sysroot to create (may exist).
        dir: PathBuf,
    },
    /// Create a stateroot (an OS install with its own /var) in the sysroot.
    OsInit {
        /// Its name, such as debian.
        name: String,
    },
}

/// `arbor compose …`.
#[derive(Subcommand, Debug)]
pub enum ComposeCommand {
    /// Turn a plain root filesystem into an image tree and commit it.
    Rootfs(RootfsArgs),
    /// Build an image from a treefile (TOML) with mmdebstrap and apt, and commit it.
    Tree(super::package_cmds::TreeArgs),
    /// Commit an OCI container image (built from a Containerfile, say).
    Image(super::image_cmds::ImageArgs),
}

/// `arbor compose rootfs`.
#[derive(Args, Debug)]
pub struct RootfsArgs {
    /// The root filesystem (never modified).
    pub src: PathBuf,
    /// Branch to commit to.
    #[arg(short, long = "branch", value_name = "REF")]
    pub branch: String,
    /// The image's version, recorded as commit metadata.
    #[arg(long)]
    pub version: Option<String>,
    /// Commit subject (default: "compose of SRC").
    #[arg(short, long)]
    pub subject: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `arbor deploy`.
#[derive(Args, Debug)]
pub struct DeployArgs {
    /// Branch or commit to deploy; REMOTE:CHANNEL fetches from a remote (default with
    /// --version: the channel the deployment follows).
    #[arg(required_unless_present = "target_version")]
    pub rev: Option<String>,
    /// Deploy this version of the remote channel (fetched and verified first).
    #[arg(long = "version", id = "target_version", value_name = "VERSION")]
    pub version: Option<String>,
    /// Ignore phased rollout: take the newest version of the channel.
    #[arg(long)]
    pub phase_override: bool,
    /// The stateroot (default: the only one).
    #[arg(long, value_name = "NAME")]
    pub os: Option<String>,
    /// Kernel argument (repeatable); replaces the inherited ones.
    #[arg(long = "karg", value_name = "K=V")]
    pub kargs: Vec<String>,
    /// Prepare it now; write the boot entries at shutdown (finalize-staged).
    #[arg(long)]
    pub stage: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `arbor rebase`.
#[derive(Args, Debug)]
pub struct RebaseArgs {
    /// CHANNEL of the remote followed now, or REMOTE:CHANNEL.
    pub channel: String,
    /// A specific version of that channel (default: the newest offered).
    #[arg(long = "version", id = "target_version", value_name = "VERSION")]
    pub version: Option<String>,
    /// The stateroot (default: the only one).
    #[arg(long, value_name = "NAME")]
    pub os: Option<String>,
    /// Ignore phased rollout.
    #[arg(long)]
    pub phase_override: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Runs `arbor rebase`.
pub fn run_rebase(cli: &Cli, a: &RebaseArgs) -> Result<i32> {
    let req = Request::Rebase {
        channel: a.channel.clone(),
        os: a.os.clone(),
        version: a.version.clone(),
        phase_override: a.phase_override,
    };
    run_and_print(cli, &req, &a.output)
}

/// `arbor kargs`.
#[derive(Args, Debug)]
pub struct KargsArgs {
    /// Add KEY=VALUE (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub append: Vec<String>,
    /// Remove KEY=VALUE, or every KEY (repeatable).
    #[arg(long, value_name = "KEY[=VALUE]")]
    pub delete: Vec<String>,
    /// KEY=NEW replaces every KEY; KEY=OLD=NEW replaces one value (repeatable).
    #[arg(long, value_name = "KEY=[OLD=]NEW")]
    pub replace: Vec<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `arbor boot-select`.
#[derive(Args, Debug)]
pub struct BootSelectArgs {
    /// Also write the chosen kernel command line to FILE (for ARBOR_CMDLINE).
    #[arg(long, value_name = "FILE")]
    pub cmdline_out: Option<PathBuf>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `arbor health-check`.
#[derive(Args, Debug)]
pub struct HealthCheckArgs {
    /// Seconds each check may take before it is killed and counts as failed.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// On a running system, first wait up to this many seconds for systemd to finish
    /// starting the system (what arbor-health-check.service does at boot).
    #[arg(long, value_name = "SECONDS")]
    pub wait_for_startup: Option<u64>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `arbor grub-config`.
#[derive(Args, Debug)]
pub struct GrubConfigArgs {
    /// Prefix for paths under /boot ("/boot" when /boot is not its own partition).
    #[arg(long, default_value = "")]
    pub boot_prefix: String,
}

/// A command on one deployment.
#[derive(Args, Debug)]
pub struct IndexArgs {
    /// Position in `arbor status` (0 boots next).
    pub index: usize,
    /// Remove the pin instead (pin only).
    #[arg(long)]
    pub unpin: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Runs `arbor admin …`.
pub fn run_admin(cli: &Cli, cmd: &AdminCommand) -> Result<i32> {
    match cmd {
        AdminCommand::InitFs { dir } => {
            Sysroot::init_fs(dir)?;
            println!("initialized sysroot {}", dir.display());
        }
        AdminCommand::OsInit { name } => {
            Sysroot::open(&cli.sysroot)?.os_init(name)?;
            println!("created stateroot {name}");
        }
    }
    Ok(0)
}

/// Runs `arbor compose …`.
pub fn run_compose(cli: &Cli, cmd: &ComposeCommand) -> Result<i32> {
    let a = match cmd {
        ComposeCommand::Rootfs(a) => a,
        ComposeCommand::Tree(a) => return super::package_cmds::run_compose_tree(cli, a),
        ComposeCommand::Image(a) => return super::image_cmds::run_compose_image(cli, a),
    };
    let repo = Repo::open(&cli.repo_path())?;
    let mut metadata = Vec::new();
    if let Some(v) = &a.version {
        metadata.push(("version".to_string(), v.clone()));
    }
    let opts = CommitOptions {
        branch: RefName::parse(&a.branch)?,
        subject: a
            .subject
            .clone()
            .unwrap_or_else(|| format!("compose of {}", a.src.display())),
        body: String::new(),
        metadata,
        timestamp: arbor_store::commit::default_timestamp()?,
        orphan: false,
        skip_special: true,
        use_cache: true,
        progress: None,
    };
    let r = super::output::with_progress("composing", |progress| {
        arbor_compose::compose_rootfs(
            &repo,
            &a.src,
            &CommitOptions { progress, ..opts },
            lock_wait(cli),
        )
    })?;
    if a.output.json {
        return json(&r).map(|_| 0);
    }
    println!("{}", r.commit);
    eprintln!(
        "composed {} into {} ({} files, {} new objects, {})",
        a.src.display(),
        r.branch,
        r.stats.files + r.stats.symlinks,
        r.stats.objects_written,
        human_bytes(r.stats.bytes_written)
    );
    Ok(0)
}

/// Runs the deployment commands.
pub fn run(cli: &Cli, cmd: &super::Command) -> Result<i32> {
    use super::Command as C;
    let sysroot = Sysroot::open(&cli.sysroot)?;
    let wait = lock_wait(cli);
    match cmd {
        C::Reset(a) => return run_and_print(cli, &Request::Reset(a.level), &a.output),
        C::Deploy(a) => {
            let req = Request::Deploy(DeployRequest {
                rev: a.rev.clone(),
                version: a.version.clone(),
                os: a.os.clone(),
                kargs: a.kargs.clone(),
                stage: a.stage,
                phase_override: a.phase_override,
            });
            return run_and_print(cli, &req, &a.output);
        }
        C::Status(out) => {
            let st = status::status(&sysroot)?;
            if out.json {
                return json(&st).map(|_| 0);
            }
            if let Some(d) = &st.staged {
                println!("  staged (finalized at shutdown)");
                println!(
                    "    {} {}",
                    d.os,
                    d.version.as_deref().unwrap_or("(no version)")
                );
                println!("    Commit:    {}", d.commit);
            }
            super::outcome::print_status(&st.deployments);
            if let Some(c) = &st.live_commit {
                println!("  live: /usr of the booted deployment shows {c} (apply-live)");
            }
        }
        C::GrubConfig(a) => print!(
            "{}",
            arbor_boot::grub::fragment(
                &sysroot
                    .deployments()?
                    .iter()
                    .map(arbor_sysroot::Deployment::grub_entry)
                    .collect::<Vec<_>>(),
                &a.boot_prefix
            )
        ),
        C::FinalizeStaged(out) => match deploy::finalize_staged(&sysroot, wait)? {
            r if out.json => return json(&serde_json::json!({ "finalized": r })).map(|_| 0),
            Some(r) => println!(
                "finalized {}/{}: it boots next",
                r.deployment.os,
                r.deployment.dir_name()
            ),
            None => println!("nothing staged"),
        },
        C::BootSelect(a) => {
            let sel = arbor_sysroot::health::boot_select(&sysroot, wait)?;
            if let Some(f) = &a.cmdline_out {
                std::fs::write(f, format!("{}\n", sel.cmdline))
                    .with_context(|| format!("writing {}", f.display()))?;
            }
            if a.output.json {
                return json(&sel).map(|_| 0);
            }
            for s in &sel.skipped {
                eprintln!("skipped {s}: no tries left");
            }
            println!("{}", sel.cmdline);
        }
        C::BootComplete(out) => {
            let d = arbor_sysroot::health::boot_complete(&sysroot, wait)?;
            if out.json {
                return json(&d).map(|_| 0);
            }
            println!("deployment {} ({}) is marked good", d.index, d.dir_name());
        }
        C::HealthCheck(a) => {
            if let Some(secs) = a.wait_for_startup {
                arbor_sysroot::health::wait_for_startup(
                    &sysroot,
                    std::time::Duration::from_secs(secs),
                );
            }
            let r =
                arbor_ops::health_check(&sysroot, std::time::Duration::from_secs(a.timeout), wait)?;
            if a.output.json {
                json(&r)?;
            } else {
                for c in &r.checks {
                    println!(
                        "{} {}: {}",
                        if c.passed { "ok  " } else { "FAIL" },
                        c.name,
                        c.detail
                    );
                    if !c.passed && !c.output.is_empty() {
                        for l in c.output.lines() {
                            println!("     | {l}");
                        }
                    }
                }
                println!(
                    "{}",
                    if r.passed {
                        "healthy: the boot is marked good"
                    } else {
                        "unhealthy: the boot was not marked good"
                    }
                );
            }
            return Ok(if r.passed { 0 } else { 1 });
        }
        C::Kargs(a) => {
            let edits: Vec<KargEdit> = a
                .append
                .iter()
                .map(|x| KargEdit::Append(x.clone()))
                .chain(a.delete.iter().map(|x| KargEdit::Delete(x.clone())))
                .chain(a.replace.iter().map(|x| KargEdit::Replace(x.clone())))
                .collect();
            return run_and_print(cli, &Request::Kargs(edits), &a.output);
        }
        C::Rollback(out) => return run_and_print(cli, &Request::Rollback, out),
        C::Undeploy(a) => {
            return run_and_print(cli, &Request::Undeploy(a.index), &a.output);
        }
        C::Pin(a) => {
            let req = Request::Pin {
                index: a.index,
                pinned: !a.unpin,
            };
            return run_and_print(cli, &req, &a.output);
        }
        C::Cleanup(out) => return run_and_print(cli, &Request::Cleanup, out),
        _ => unreachable!("not a deployment command"),
    }
    Ok(0)
}
