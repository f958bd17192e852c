//! `arbor-prepare-root`: the initramfs's own binary, and the arguments `arbor
//! prepare-root` shares with it. It does prepare-root and nothing else, and depends on
//! the boot pieces and the file system helpers alone, so it links no OSTree, GLib,
//! HTTP or SQLite code: the initramfs grows by about a megabyte instead of the full
//! `arbor` and its libraries (docs/boot.md).
#![allow(clippy::print_stdout, clippy::print_stderr)] // an edge: it reports

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser};

const ABOUT_BOOT: &str = "\
Run by the initramfs-tools script local-bottom/arbor once the physical root is mounted
(normally at /root): when the kernel command line has arbor=, it assembles that
deployment at --target, which the script then moves over the root mount. It is
'arbor prepare-root' without the rest of arbor.

Exit status:
  0  the root was assembled
  1  failure (the reason is printed on stderr; the script stops the boot)
  2  the command line could not be parsed";

/// Assembles the root of the deployment named by arbor= (initramfs helper).
#[derive(Parser, Debug)]
#[command(name = "arbor-prepare-root", version, about, after_long_help = ABOUT_BOOT)]
pub struct PrepareRootCli {
    /// The physical root, as the initramfs mounted it.
    #[arg(long, default_value = "/root", value_name = "DIR")]
    pub sysroot: PathBuf,
    /// What to assemble, and where.
    #[command(flatten)]
    pub args: PrepareRootArgs,
}

/// Parses the process arguments and assembles the root; the whole of the binary's
/// `main`.
pub fn run_from_env() -> i32 {
    let cli = PrepareRootCli::parse();
    match run_prepare_root(&cli.sysroot, &cli.args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("arbor-prepare-root: error: {e:#}");
            1
        }
    }
}

/// `arbor prepare-root`.
#[derive(Args, Debug)]
pub struct PrepareRootArgs {
    /// The kernel command line to read arbor= from (at boot: /proc/cmdline).
    #[arg(long, value_name = "FILE", default_value = "/proc/cmdline")]
    pub cmdline: PathBuf,
    /// Where to assemble the root.
    #[arg(long, value_name = "DIR")]
    pub target: PathBuf,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Runs `arbor prepare-root` (no sysroot lock: it runs before anything else at boot).
pub fn run_prepare_root(sysroot: &std::path::Path, a: &PrepareRootArgs) -> Result<i32> {
    let cmdline = std::fs::read_to_string(&a.cmdline)
        .with_context(|| format!("reading {}", a.cmdline.display()))?;
    let started = std::time::Instant::now();
    let r = arbor_boot::prepare_root::prepare_root(sysroot, &cmdline, &a.target)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(0);
    }
    println!(
        "assembled {} at {} in {:.1} ms",
        r.deployment.display(),
        a.target.display(),
        started.elapsed().as_secs_f64() * 1000.0
    );
    Ok(0)
}
