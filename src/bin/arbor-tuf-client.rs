//! `arbor-tuf-client`: the client-under-test of the TUF conformance suite
//! (`../shared/vendor/tuf-conformance/CLIENT-CLI.md`), over arbor's own TUF client
//! (`arbor_remote::tuf_client`). A test tool: not installed by the package.
#![allow(clippy::print_stderr)] // an edge: it reports the error it exits with

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The conformance suite's client protocol.
#[derive(Parser, Debug)]
#[command(name = "arbor-tuf-client", version)]
struct Args {
    /// Where the trusted metadata is kept.
    #[arg(long, value_name = "DIR")]
    metadata_dir: PathBuf,
    /// The repository's metadata URL.
    #[arg(long, value_name = "URL")]
    metadata_url: Option<String>,
    /// A target to download (repeatable; in order).
    #[arg(long = "target-name", value_name = "PATH")]
    target_names: Vec<String>,
    /// The repository's targets URL.
    #[arg(long, value_name = "URL")]
    target_base_url: Option<String>,
    /// Where downloaded targets go.
    #[arg(long, value_name = "DIR")]
    target_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// What to do.
#[derive(Subcommand, Debug)]
enum Command {
    /// Trusts a root metadata file.
    Init {
        /// The root metadata trusted out of band.
        trusted_root: PathBuf,
    },
    /// Updates the top-level metadata.
    Refresh,
    /// Refreshes and downloads the named targets.
    Download,
}

fn run(args: Args) -> anyhow::Result<()> {
    let client = arbor_remote::tuf_client::TufClient::new(&args.metadata_dir);
    let need = |v: Option<String>, flag: &str| {
        v.ok_or_else(|| anyhow::anyhow!("{flag} is needed for this command"))
    };
    match args.command {
        Command::Init { trusted_root } => client.init(&trusted_root),
        Command::Refresh => client.refresh(&need(args.metadata_url, "--metadata-url")?),
        Command::Download => {
            let dir = args
                .target_dir
                .ok_or_else(|| anyhow::anyhow!("--target-dir is needed for download"))?;
            client
                .download(
                    &need(args.metadata_url, "--metadata-url")?,
                    &need(args.target_base_url, "--target-base-url")?,
                    &args.target_names,
                    &dir,
                )
                .map(drop)
        }
    }
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("arbor-tuf-client: {e:#}");
        std::process::exit(1);
    }
}
