//! The deployment commands: admin, compose, deploy, rebase, status, rollback,
//! undeploy, pin, kargs, cleanup, reset.

use super::outcome::run_and_print;
use arbor_ops::{DeployRequest, Request};
use arbor_sysroot::kargs::KargEdit;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::output::{human_bytes, json};
use super::{Cli, OutputArgs, lock_wait};
use arbor_store::Repo;
use arbor_store::commit::CommitOptions;
use arbor_store::refs::RefName;
use arbor_sysroot::Sysroot;
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
    Tree(super::packages::TreeArgs),
    /// Commit an OCI container image (built from a Containerfile, say).
    Image(super::image::ImageArgs),
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
    /// With a remote version, once staged, apply it at once by the mildest safe way: auto, or a step that is
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

/// `arbor rebase`.
#[derive(Args, Debug)]
pub struct RebaseArgs {
    /// CHANNEL of the remote followed now, or REMOTE:CHANNEL (a container image,
    /// docker://HOST/NAME:TAG, is followed as `arbor switch` does).
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

/// Runs `arbor rebase` (an image reference is `arbor switch`'s, as rpm-ostree rebases
/// onto container images too).
pub fn rebase(cli: &Cli, a: &RebaseArgs) -> Result<i32> {
    if arbor_ops::image_follow::is_image_ref(&a.channel) {
        if a.version.is_some() || a.phase_override {
            anyhow::bail!(
                "--version and --phase-override are for channels: a container image has tags and digests ('arbor switch IMAGE --digest D')"
            );
        }
        let req = Request::Switch(arbor_ops::image_follow::SwitchRequest {
            image: a.channel.clone(),
            digest: None,
            os: a.os.clone(),
            credentials: None,
        });
        return run_and_print(cli, &req, &a.output);
    }
    let req = Request::Rebase {
        channel: a.channel.clone(),
        os: a.os.clone(),
        version: a.version.clone(),
        phase_override: a.phase_override,
    };
    run_and_print(cli, &req, &a.output)
}

/// `arbor switch`.
#[derive(Args, Debug)]
pub struct SwitchArgs {
    /// The image to follow: docker://HOST/NAME[:TAG] (or registry:HOST/NAME[:TAG]).
    pub image: String,
    /// Deploy this manifest digest (sha256:…) of the image and stay on it: upgrade
    /// refuses until a switch without --digest.
    #[arg(long, value_name = "DIGEST")]
    pub digest: Option<String>,
    /// The login to the registry: a credentials file, mode 0600 (username/password, or
    /// token_file; docs/registry.md). Kept, root-only, for the upgrades that follow.
    #[arg(long, value_name = "FILE")]
    pub credentials: Option<std::path::PathBuf>,
    /// The stateroot (default: the only one).
    #[arg(long, value_name = "NAME")]
    pub os: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Runs `arbor switch`.
pub fn switch(cli: &Cli, a: &SwitchArgs) -> Result<i32> {
    let req = Request::Switch(arbor_ops::image_follow::SwitchRequest {
        image: a.image.clone(),
        digest: a.digest.clone(),
        os: a.os.clone(),
        credentials: a.credentials.clone(),
    });
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
pub fn admin(cli: &Cli, cmd: &AdminCommand) -> Result<i32> {
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
pub fn compose(cli: &Cli, cmd: &ComposeCommand) -> Result<i32> {
    let a = match cmd {
        ComposeCommand::Rootfs(a) => a,
        ComposeCommand::Tree(a) => return super::packages::compose_tree(cli, a),
        ComposeCommand::Image(a) => return super::image::compose_image(cli, a),
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

/// `arbor reset`.
pub fn reset(cli: &Cli, a: &ResetArgs) -> Result<i32> {
    run_and_print(cli, &Request::Reset(a.level), &a.output)
}

/// `arbor deploy`.
pub fn deploy(cli: &Cli, a: &DeployArgs) -> Result<i32> {
    let req = Request::Deploy(DeployRequest {
        rev: a.rev.clone(),
        version: a.version.clone(),
        os: a.os.clone(),
        kargs: a.kargs.clone(),
        stage: a.stage,
        phase_override: a.phase_override,
        apply: a
            .apply
            .as_deref()
            .map(super::packages::parse_apply)
            .transpose()?,
        max_rate: a.max_rate,
    });
    run_and_print(cli, &req, &a.output)
}

/// `arbor status`.
pub fn status(cli: &Cli, out: &OutputArgs) -> Result<i32> {
    let sysroot = Sysroot::open(&cli.sysroot)?;
    let st = status::status_with_conflicts(&sysroot)?;
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
    if !st.etc_conflicts.is_empty() {
        println!(
            "  /etc conflicts at the next boot (your version stays, the new default is \
             saved beside it as .arbor-dist; arbor etc diff):"
        );
        for p in &st.etc_conflicts {
            println!("    /etc/{p}");
        }
    }
    Ok(0)
}

/// `arbor kargs`.
pub fn kargs(cli: &Cli, a: &KargsArgs) -> Result<i32> {
    let edits: Vec<KargEdit> = a
        .append
        .iter()
        .map(|x| KargEdit::Append(x.clone()))
        .chain(a.delete.iter().map(|x| KargEdit::Delete(x.clone())))
        .chain(a.replace.iter().map(|x| KargEdit::Replace(x.clone())))
        .collect();
    run_and_print(cli, &Request::Kargs(edits), &a.output)
}

/// `arbor rollback`.
pub fn rollback(cli: &Cli, out: &OutputArgs) -> Result<i32> {
    run_and_print(cli, &Request::Rollback, out)
}

/// `arbor undeploy`.
pub fn undeploy(cli: &Cli, a: &IndexArgs) -> Result<i32> {
    run_and_print(cli, &Request::Undeploy(a.index), &a.output)
}

/// `arbor pin`.
pub fn pin(cli: &Cli, a: &IndexArgs) -> Result<i32> {
    let req = Request::Pin {
        index: a.index,
        pinned: !a.unpin,
    };
    run_and_print(cli, &req, &a.output)
}

/// `arbor cleanup`.
pub fn cleanup(cli: &Cli, out: &OutputArgs) -> Result<i32> {
    run_and_print(cli, &Request::Cleanup, out)
}
