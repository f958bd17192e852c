//! `arbor compose image`: committing an OCI image (parse and print only).

use anyhow::Result;
use clap::Args;

use super::output::{human_bytes, json};
use super::{Cli, OutputArgs, lock_wait};
use crate::image::{ImageOptions, ImageSource, compose_image};
use crate::store::Repo;
use crate::store::refs::RefName;

/// `arbor compose image`.
#[derive(Args, Debug)]
pub struct ImageArgs {
    /// The image: oci:DIR[:TAG], oci-archive:FILE[:TAG] or containers-storage:NAME.
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
    #[arg(long, value_name = "N", default_value_t = crate::image::DEFAULT_MAX_RATIO)]
    pub max_ratio: u64,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Runs `arbor compose image`.
pub fn run_compose_image(cli: &Cli, a: &ImageArgs) -> Result<i32> {
    let repo = Repo::open(&cli.repo_path())?;
    let source: ImageSource = a.image.parse()?;
    let opts = ImageOptions {
        branch: RefName::parse(&a.branch)?,
        version: a.version.clone(),
        max_ratio: a.max_ratio,
    };
    let r = compose_image(&repo, &source, &opts, lock_wait(cli))?;
    if a.output.json {
        return json(&r).map(|_| 0);
    }
    println!("{}", r.commit.commit);
    let files: u64 = r.layers.iter().map(|l| l.files).sum();
    eprintln!(
        "imported {} ({}, {} layers, {files} files) into {} ({} new objects, {})",
        a.image,
        r.digest,
        r.layers.len(),
        r.commit.branch,
        r.commit.stats.objects_written,
        human_bytes(r.commit.stats.bytes_written)
    );
    Ok(0)
}
