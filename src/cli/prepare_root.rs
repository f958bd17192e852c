//! `arbor-prepare-root`: the initramfs's own binary. It does prepare-root and nothing
//! else, so it links no OSTree, GLib, HTTP or SQLite code: the initramfs grows by about
//! a megabyte instead of the full `arbor` and its libraries (docs/boot.md).

use std::path::PathBuf;

use clap::Parser;

use super::sysroot_cmds::{PrepareRootArgs, run_prepare_root};

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
