//! `arbor remote`, and the update commands that follow a remote channel: `upgrade`,
//! `deploy REMOTE:CHANNEL`/`--version`, `rebase`, `update-status`, `auto-update`,
//! `history`.

use arbor_ops::{Outcome, Request};
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::output::{human_bytes, json, utc};
use super::{Cli, OutputArgs};
use arbor_ops::update::{self, Action, Policy};
use arbor_remote::Remote;
use arbor_statedb::StateDb;
use arbor_sysroot::Sysroot;

/// `arbor remote …`.
#[derive(Subcommand, Debug)]
pub enum RemoteCommand {
    /// Add a published repository, trusting the given TUF root metadata.
    Add(RemoteAddArgs),
    /// List the remotes.
    List(OutputArgs),
    /// Remove a remote (the commits it brought stay until cleanup).
    Remove {
        /// Its name.
        name: String,
    },
    /// Print a remote's mirrors, or replace them: other servers of the same
    /// publication, asked in order after its URL when it is down, stalls, or serves
    /// stale, forged or corrupt files.
    Mirrors {
        /// The remote.
        name: String,
        /// The new list, in the order to ask them (with none: print the list).
        urls: Vec<String>,
        /// Remove every configured mirror.
        #[arg(long, conflicts_with = "urls")]
        clear: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Print a channel's verified index.
    Show {
        /// The remote.
        name: String,
        /// The channel.
        channel: String,
    },
}

/// `arbor remote add`.
#[derive(Args, Debug)]
pub struct RemoteAddArgs {
    /// A name for it.
    pub name: String,
    /// The published folder's URL, or a registry repository (oci://HOST/NAME).
    pub url: String,
    /// Its TUF root metadata (from the publisher; `1.root.json` of `publish init`).
    #[arg(long, value_name = "ROOT.JSON")]
    pub trust: PathBuf,
    /// Do not contact the remote now.
    #[arg(long)]
    pub no_verify: bool,
    /// How long its server may send nothing before a fetch gives up (e.g. 30s, 2m;
    /// default 60s). Failed requests a retry may cure (server errors, broken
    /// transfers) are tried up to 4 times.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// Another server of the same publication, asked after URL and the mirrors
    /// before it (repeat, in order; at most 16). Everything a mirror serves is
    /// verified as if URL had served it.
    #[arg(long = "mirror", value_name = "URL")]
    pub mirrors: Vec<String>,
    /// The login to a registry (oci://): a TOML file of mode 0600 with `username` and
    /// `password`, or `token_file`; kept in the remote's folder, readable by root only.
    #[arg(long, value_name = "FILE")]
    pub credentials: Option<PathBuf>,
}

/// Runs `arbor remote …`.
pub fn remote(cli: &Cli, cmd: &RemoteCommand) -> Result<i32> {
    let sysroot = Sysroot::open(&cli.sysroot)?;
    match cmd {
        RemoteCommand::Add(a) => {
            let opts = arbor_remote::AddOptions {
                offline: a.no_verify,
                timeout: a.timeout,
                mirrors: a.mirrors.clone(),
                credentials: a.credentials.clone(),
            };
            let r = Remote::add(&sysroot, &a.name, &a.url, &a.trust, &opts)?;
            println!("remote {} at {} added", r.name, r.url);
            for m in &r.mirrors {
                println!("  mirror {m}");
            }
        }
        RemoteCommand::List(o) => {
            let list = Remote::list(&sysroot)?;
            if o.json {
                let v: Vec<_> = list
                    .iter()
                    .map(
                        |r| serde_json::json!({"name": r.name, "url": r.url, "mirrors": r.mirrors}),
                    )
                    .collect();
                return json(&v).map(|_| 0);
            }
            for r in list {
                println!("{}\t{}", r.name, r.url);
            }
        }
        RemoteCommand::Remove { name } => {
            super::run_op(cli, &sysroot, &Request::RemoveRemote(name.clone()))?;
            println!("remote {name} removed");
        }
        RemoteCommand::Mirrors {
            name,
            urls,
            clear,
            output,
        } => {
            let r = if urls.is_empty() && !clear {
                Remote::open(&sysroot, name)?
            } else {
                Remote::set_mirrors(&sysroot, name, urls)?
            };
            let named = r.index_mirrors();
            if output.json {
                let v = serde_json::json!({
                    "name": r.name, "url": r.url, "mirrors": r.mirrors, "index_mirrors": named
                });
                return json(&v).map(|_| 0);
            }
            println!("{}\t{}", r.name, r.url);
            for m in &r.mirrors {
                println!("mirror\t{m}");
            }
            for m in &named {
                println!("mirror\t{m}\t(named by the signed index)");
            }
        }
        RemoteCommand::Show { name, channel } => {
            json(&Remote::open(&sysroot, name)?.channel(channel)?)?;
        }
    }
    Ok(0)
}

/// `arbor auto-update`.
#[derive(Args, Debug)]
pub struct AutoUpdateArgs {
    /// The policy file (default /etc/arbor/arbor.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check now and act now, whatever the interval and the preferred time say.
    #[arg(long)]
    pub now: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Runs `arbor auto-update`.
pub fn auto_update(cli: &Cli, a: &AutoUpdateArgs) -> Result<i32> {
    let policy = Policy::load(a.config.as_deref())?;
    let sysroot = Sysroot::open(&cli.sysroot)?;
    let req = Request::AutoUpdate {
        policy: policy.clone(),
        now: a.now,
    };
    let out = super::run_op(cli, &sysroot, &req)?;
    if a.output.json {
        json(&out)?;
    } else {
        print_auto_update(&out, &policy);
    }
    // The policy's `apply`: a switch prepared for the staged version starts now.
    super::outcome::start_switch(&out)?;
    Ok(0)
}

fn print_auto_update(out: &Outcome, policy: &Policy) {
    let Outcome::Update(r) = out else {
        unreachable!("auto-update gave a {} outcome", out.kind())
    };
    if let Some(why) = &r.skipped {
        println!("{why}");
        if r.offered.is_none() {
            return;
        }
    }
    let action = match (&r.offered, &r.skipped) {
        (Some(v), None) => policy.action(v.critical),
        _ => Action::Check,
    };
    super::outcome::print_update(r, action, false);
}

/// Runs `arbor update-status`.
pub fn update_status(cli: &Cli, o: &OutputArgs) -> Result<i32> {
    let sysroot = Sysroot::open(&cli.sysroot)?;
    let rec = update::state::current(&sysroot)?;
    if o.json {
        return json(&rec).map(|_| 0);
    }
    println!("state:     {}", rec.state.name());
    if let (Some(r), Some(c)) = (&rec.remote, &rec.channel) {
        println!("following: {r}:{c}");
    }
    if let Some(t) = rec.last_check {
        println!("checked:   {}", utc(t));
    }
    if let Some(v) = &rec.available {
        println!(
            "available: {v}{}",
            if rec.critical { " (critical)" } else { "" }
        );
    }
    if let Some(v) = &rec.version {
        println!(
            "version:   {v} ({})",
            rec.commit.map_or("?".to_string(), |c| c.to_hex())
        );
    }
    if rec.bytes_total > 0 {
        println!(
            "download:  {} of {}",
            human_bytes(rec.bytes_done),
            human_bytes(rec.bytes_total)
        );
    }
    for d in &rec.downloads {
        println!("partial:   {} ({})", d.url, human_bytes(d.size));
    }
    if let Some(a) = &rec.activation {
        println!("apply:     {}", a.summary);
    }
    if let Some(e) = &rec.error {
        println!("error:     {e}");
    }
    Ok(0)
}

/// `arbor history`.
#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// How many entries (newest first).
    #[arg(short = 'n', long, default_value_t = 50)]
    pub limit: usize,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Runs `arbor history`.
pub fn history(cli: &Cli, a: &HistoryArgs) -> Result<i32> {
    let sysroot = Sysroot::open(&cli.sysroot)?;
    let db = StateDb::open(&sysroot.state_db_path())?;
    let list = db.history(a.limit)?;
    if a.output.json {
        return json(&list).map(|_| 0);
    }
    for e in list {
        println!(
            "{:>5}  {}  {:<13} uid {:<5} {}  {}",
            e.id,
            utc(e.started),
            e.kind,
            e.uid,
            e.result.as_deref().unwrap_or("running or interrupted"),
            e.command
        );
        if let Some(d) = &e.detail {
            println!("       {d}");
        }
    }
    Ok(0)
}
