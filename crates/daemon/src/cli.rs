//! `arbord`'s command line: where to serve, which sysroot, when to exit. An edge: it
//! reports the error the daemon exits with.
#![allow(clippy::print_stderr)]

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::{self as daemon, DaemonOptions};

const ABOUT_BUS: &str = "\
arbord serves org.arbor.Arbor1 on the system bus, normally started by D-Bus
activation (org.arbor.Arbor1.service, arbord.service). Interfaces: see
/usr/share/dbus-1/interfaces/org.arbor.Arbor1.xml and docs/dbus.md.

Exit status:
  0  exited after being idle
  1  failure (the reason is printed on stderr)
  2  the command line could not be parsed";

/// The arbor D-Bus daemon: sysroot state and transactions for settings panels.
#[derive(Parser, Debug)]
#[command(name = "arbord", version, about, after_long_help = ABOUT_BUS)]
pub struct ArbordCli {
    /// The physical root it manages.
    #[arg(long, env = "ARBOR_SYSROOT", default_value = "/", value_name = "DIR")]
    pub sysroot: PathBuf,
    /// The running system's root that ApplyLive and UsrOverlay change.
    #[arg(long, default_value = "/", value_name = "DIR")]
    pub root: PathBuf,
    /// Serve on this bus instead (default: the activating bus, else the system bus).
    #[arg(long, value_name = "ADDRESS")]
    pub bus_address: Option<String>,
    /// Exit after this many seconds without calls or transactions; 0 never exits.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub idle_exit: u64,
}

/// Parses the process arguments and runs the daemon; the whole of `arbord`'s `main`.
pub fn run_from_env() -> i32 {
    let cli = ArbordCli::parse();
    let opts = DaemonOptions {
        sysroot: cli.sysroot,
        root: cli.root,
        bus_address: cli.bus_address,
        idle_exit: (cli.idle_exit > 0).then(|| Duration::from_secs(cli.idle_exit)),
    };
    match daemon::run_daemon(&opts) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("arbord: error: {e:#}");
            1
        }
    }
}
