//! `arbor compose image` and `arbor install to-disk`: container images in, bootable
//! disks out (parse and print only).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::output::{human_bytes, json};
use super::{Cli, OutputArgs, lock_wait};
use arbor_compose::image::{ImageOptions, ImageSource};
use arbor_store::Repo;
use arbor_store::refs::RefName;

/// `arbor compose image`.
#[derive(Args, Debug)]
pub struct ImageArgs {
    /// The image: oci:DIR[:TAG], oci-archive:FILE[:TAG], containers-storage:NAME or
    /// docker://HOST/NAME[:TAG|@DIGEST] (a registry).
    #[arg(value_name = "TRANSPORT:REF")]
    pub image: String,
    /// Branch to commit to.
    #[arg(short, long = "branch", value_name = "REF")]
    pub branch: String,
    /// The image's version, recorded as commit metadata (default: its
    /// org.opencontainers.image.version label).
    #[arg(long)]
    pub version: Option<String>,
    /// Refuse a compressed layer that unpacks to more than N times its size (a
    /// decompression bomb).
    #[arg(long, value_name = "N", default_value_t = arbor_compose::image::DEFAULT_MAX_RATIO)]
    pub max_ratio: u64,
    /// The login to the registry (docker://): a credentials file, mode 0600
    /// (username/password, or token_file; docs/registry.md).
    #[arg(long, value_name = "FILE")]
    pub credentials: Option<PathBuf>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Runs `arbor compose image`.
pub fn compose_image(cli: &Cli, a: &ImageArgs) -> Result<i32> {
    let repo = Repo::open(&cli.repo_path())?;
    let source: ImageSource = a.image.parse()?;
    let opts = ImageOptions {
        branch: RefName::parse(&a.branch)?,
        version: a.version.clone(),
        max_ratio: a.max_ratio,
        login: a.credentials.clone(),
    };
    let r = arbor_compose::image::compose_image(&repo, &source, &opts, lock_wait(cli))?;
    if a.output.json {
        return json(&r).map(|_| 0);
    }
    println!("{}", r.commit.commit);
    let files: u64 = r.layers.iter().map(|l| l.files).sum();
    let reused = match r.layers_reused {
        0 => String::new(),
        n => format!(" over {n} kept from an earlier import"),
    };
    eprintln!(
        "imported {} ({}, {} layers{reused}, {files} files, {} fetched) into {} ({} new objects, {})",
        a.image,
        r.digest,
        r.layers.len(),
        human_bytes(r.fetched_bytes),
        r.commit.branch,
        r.commit.stats.objects_written,
        human_bytes(r.commit.stats.bytes_written)
    );
    Ok(0)
}

/// `arbor install to-disk`.
#[derive(Args, Debug)]
pub struct ToDiskArgs {
    /// A block device, or a disk image file (with --via-loopback).
    pub target: PathBuf,
    /// What to deploy: a branch or commit of the repository (--repo), or an image
    /// (oci:DIR[:TAG], oci-archive:FILE[:TAG], containers-storage:NAME,
    /// docker://HOST/NAME[:TAG|@DIGEST]).
    #[arg(long, value_name = "REF|TRANSPORT:REF")]
    pub source: String,
    /// The boot loader.
    #[arg(long, value_enum, default_value = "systemd-boot")]
    pub bootloader: arbor_boot::Loader,
    /// A kernel argument (repeatable; root= and rw are added).
    #[arg(long = "karg", value_name = "ARG")]
    pub kargs: Vec<String>,
    /// Create (or resize) the image file to this size (4G, 8GiB, ...).
    #[arg(long, value_name = "N", value_parser = parse_size)]
    pub size: Option<u64>,
    /// The target is an image file: reach it through a loop device.
    #[arg(long)]
    pub via_loopback: bool,
    /// Erase a target that already holds a partition table.
    #[arg(long)]
    pub wipe: bool,
    /// The stateroot's name.
    #[arg(long, default_value = "debian", value_name = "NAME")]
    pub os: String,
    /// The branch the deployment follows (default: the REF, or OS/image).
    #[arg(long, value_name = "REF")]
    pub branch: Option<String>,
    /// The root file system's label.
    #[arg(long, default_value = "arbor-root")]
    pub label: String,
    /// Configure this remote on the disk (NAME=URL; with --trust).
    #[arg(long, value_name = "NAME=URL", requires = "trust")]
    pub remote: Option<String>,
    /// The remote's TUF root (its 1.root.json, or a later one).
    #[arg(long, value_name = "ROOT.json", requires = "remote")]
    pub trust: Option<PathBuf>,
    /// The remote channel the deployment follows, so that `arbor upgrade` fetches from
    /// it (REMOTE:CHANNEL; --source must be a version of it).
    #[arg(long, value_name = "REMOTE:CHANNEL")]
    pub follow: Option<String>,
    /// The ESP's size.
    #[arg(long, default_value = "512MiB", value_parser = parse_size)]
    pub esp_size: u64,
    #[command(flatten)]
    pub output: OutputArgs,
}

fn parse_size(s: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s)
        .map_err(|e| format!("'{s}' is not a size: {e}"))
}

/// Runs `arbor install to-disk`.
pub fn to_disk(cli: &Cli, a: &ToDiskArgs) -> Result<i32> {
    let opts = arbor_ops::to_disk::InstallOptions {
        target: a.target.clone(),
        source: arbor_ops::to_disk::InstallSource::parse(&a.source, &cli.repo_path()),
        bootloader: a.bootloader,
        kargs: a.kargs.clone(),
        size: a.size,
        wipe: a.wipe,
        via_loopback: a.via_loopback,
        os: a.os.clone(),
        branch: a.branch.clone(),
        remote: match &a.remote {
            Some(r) => {
                let (name, url) = r
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--remote {r}: expected NAME=URL"))?;
                Some((name.to_string(), url.to_string()))
            }
            None => None,
        },
        trust: a.trust.clone(),
        follow: a.follow.clone(),
        label: a.label.clone(),
        esp_size: a.esp_size,
    };
    let r = arbor_ops::to_disk::install_to_disk(&opts)?;
    if a.output.json {
        return json(&r).map(|_| 0);
    }
    println!(
        "installed {} {} on {} ({:?}): ESP {} ({}), root {} ({})",
        r.deployment.os,
        r.deployment.dir_name(),
        r.target.display(),
        r.bootloader,
        human_bytes(r.esp.size),
        r.esp.uuid,
        human_bytes(r.root.size),
        r.root.uuid
    );
    Ok(0)
}
