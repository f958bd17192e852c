//! `arbor publish`, `arbor remote`, and the update commands that follow a remote
//! channel: `upgrade`, `deploy REMOTE:CHANNEL`/`--version`, `rebase`, `update-status`,
//! `auto-update`, `history`.

use arbor_ops::{Outcome, Request};
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::output::{human_bytes, json, utc};
use super::{Cli, OutputArgs, lock_wait};
use arbor_ops::update::{self, Action, Policy};
use arbor_publish::{self as publish, AddOptions, Expiry, Publisher, parse_duration};
use arbor_remote::Remote;
use arbor_statedb::StateDb;
use arbor_store::Repo;
use arbor_sysroot::Sysroot;

/// `arbor publish …`.
#[derive(Subcommand, Debug)]
pub enum PublishCommand {
    /// Create a published folder and its signing keys.
    Init(PublishDirArgs),
    /// Publish a commit as a new version of a channel (objects, manifest, deltas, signed index).
    #[command(disable_version_flag = true)]
    Add(PublishAddArgs),
    /// Change the rollout percentage of a published version.
    #[command(disable_version_flag = true)]
    Phase(PublishPhaseArgs),
    /// Sign the metadata again with fresh expiry dates (run from cron before the
    /// timestamp expires).
    Refresh(PublishDirArgs),
    /// Replace one role's key (root, targets, snapshot, timestamp); a new root names it.
    RotateKey(PublishRotateArgs),
    /// Print a channel's index as published.
    Show(PublishShowArgs),
}

/// The published folder, its keys and expiry dates.
#[derive(Args, Debug)]
pub struct PublishDirArgs {
    /// The folder to serve over HTTP.
    pub dir: PathBuf,
    /// The private keys (default: DIR.keys beside it; never inside DIR).
    #[arg(long, value_name = "DIR")]
    pub keys: Option<PathBuf>,
    /// Validity of the timestamp (e.g. 7d, 12h, 30s): how long devices trust that
    /// nothing newer was published.
    #[arg(long, value_name = "DURATION", default_value = "7d")]
    pub timestamp_expires: String,
    /// Validity of the snapshot.
    #[arg(long, value_name = "DURATION", default_value = "30d")]
    pub snapshot_expires: String,
    /// Validity of the targets (channel indexes).
    #[arg(long, value_name = "DURATION", default_value = "90d")]
    pub targets_expires: String,
    /// Validity of the root metadata (init, rotate-key).
    #[arg(long, value_name = "DURATION", default_value = "365d")]
    pub root_expires: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `arbor publish add`.
#[derive(Args, Debug)]
pub struct PublishAddArgs {
    #[command(flatten)]
    pub dir: PublishDirArgs,
    /// The channel.
    #[arg(long)]
    pub channel: String,
    /// The version's name (unique in the channel).
    #[arg(long = "version", id = "target_version")]
    pub version: String,
    /// The ref or commit to publish (from --repo, or the sysroot's repository).
    #[arg(long = "ref", value_name = "REF")]
    pub rev: String,
    /// A security or otherwise urgent update (installed by the critical_install policy).
    #[arg(long)]
    pub critical: bool,
    /// Offer it to this percentage of devices (phased rollout).
    #[arg(long, value_name = "PCT", default_value_t = 100)]
    pub phase: u8,
    /// Make static deltas from the N previous versions of the channel.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub deltas_from: usize,
    /// Where the release notes are (a URL).
    #[arg(long, value_name = "URL")]
    pub release_notes: Option<String>,
    /// Machines on an older version must run VERSION (of this channel) first: the
    /// last release before a major upgrade. They are offered VERSION in this one's place.
    #[arg(long, value_name = "VERSION")]
    pub requires: Option<String>,
    /// Make the deltas with xz files diffed by their content (`delta create
    /// --recompress`): for fleets on slow or metered links.
    #[arg(long)]
    pub recompress: bool,
}

/// `arbor publish phase`.
#[derive(Args, Debug)]
pub struct PublishPhaseArgs {
    #[command(flatten)]
    pub dir: PublishDirArgs,
    /// The channel.
    #[arg(long)]
    pub channel: String,
    /// The version.
    #[arg(long = "version", id = "target_version")]
    pub version: String,
    /// The new percentage.
    pub percent: u8,
}

/// `arbor publish rotate-key`.
#[derive(Args, Debug)]
pub struct PublishRotateArgs {
    #[command(flatten)]
    pub dir: PublishDirArgs,
    /// root, targets, snapshot or timestamp.
    pub role: String,
}

/// `arbor publish show`.
#[derive(Args, Debug)]
pub struct PublishShowArgs {
    /// The published folder.
    pub dir: PathBuf,
    /// The channel.
    pub channel: String,
}

fn publisher(a: &PublishDirArgs) -> Result<Publisher> {
    let keys = a.keys.clone().unwrap_or_else(|| {
        let mut s = a.dir.clone().into_os_string();
        s.push(".keys");
        PathBuf::from(s)
    });
    Ok(Publisher {
        dir: a.dir.clone(),
        keys,
        expiry: Expiry {
            root: parse_duration(&a.root_expires)?,
            targets: parse_duration(&a.targets_expires)?,
            snapshot: parse_duration(&a.snapshot_expires)?,
            timestamp: parse_duration(&a.timestamp_expires)?,
        },
    })
}

/// Runs `arbor publish …`.
pub fn publish(cli: &Cli, cmd: &PublishCommand) -> Result<i32> {
    match cmd {
        PublishCommand::Init(a) => {
            let r = publisher(a)?.init(lock_wait(cli))?;
            if a.output.json {
                return json(&r).map(|_| 0);
            }
            println!("published folder {} ready", a.dir.display());
            println!("trust anchor for clients: {}", r.root.display());
            println!(
                "private keys: {} (keep them off the server)",
                r.keys.display()
            );
        }
        PublishCommand::Add(a) => {
            let repo = Repo::open(&cli.repo_path())?;
            let opts = AddOptions {
                channel: a.channel.clone(),
                version: a.version.clone(),
                commit: repo.resolve_rev(&a.rev)?,
                critical: a.critical,
                phase: a.phase,
                deltas_from: a.deltas_from,
                release_notes: a.release_notes.clone(),
                requires: a.requires.clone(),
                recompress: a.recompress,
            };
            let r = publisher(&a.dir)?.add(&repo, &opts, lock_wait(cli))?;
            if a.dir.output.json {
                return json(&r).map(|_| 0);
            }
            println!(
                "published {} {} = {} ({} new objects, {} in all, phase {}%{})",
                a.channel,
                a.version,
                r.entry.commit,
                r.objects_written,
                human_bytes(r.entry.full_bytes),
                r.entry.phase,
                if r.entry.critical { ", critical" } else { "" }
            );
            for d in &r.entry.deltas {
                println!(
                    "delta from {}: {}",
                    d.from.short(),
                    human_bytes(d.file.size)
                );
            }
        }
        PublishCommand::Phase(a) => {
            let v =
                publisher(&a.dir)?.set_phase(&a.channel, &a.version, a.percent, lock_wait(cli))?;
            if a.dir.output.json {
                return json(&v).map(|_| 0);
            }
            println!(
                "{} {} now offered to {}% of devices",
                a.channel, v.version, v.phase
            );
        }
        PublishCommand::Refresh(a) => {
            publisher(a)?.refresh(lock_wait(cli))?;
            if a.output.json {
                return json(&serde_json::json!({ "signed": a.dir })).map(|_| 0);
            }
            println!("metadata of {} signed again", a.dir.display());
        }
        PublishCommand::RotateKey(a) => {
            let role = publish::keys::parse_role(&a.role)?;
            let v = publisher(&a.dir)?.rotate(role, lock_wait(cli))?;
            if a.dir.output.json {
                return json(&serde_json::json!({ "role": a.role, "root_version": v })).map(|_| 0);
            }
            println!("new {} key; root metadata version {v} names it", a.role);
        }
        PublishCommand::Show(a) => {
            let p = Publisher {
                dir: a.dir.clone(),
                keys: PathBuf::new(),
                expiry: Expiry::default(),
            };
            json(&p.channel(&a.channel)?)?;
        }
    }
    Ok(0)
}

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
    /// The published folder's URL.
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
}

/// Runs `arbor remote …`.
pub fn remote(cli: &Cli, cmd: &RemoteCommand) -> Result<i32> {
    let sysroot = Sysroot::open(&cli.sysroot)?;
    match cmd {
        RemoteCommand::Add(a) => {
            let r = Remote::add(&sysroot, &a.name, &a.url, &a.trust, a.no_verify, a.timeout)?;
            println!("remote {} at {} added", r.name, r.url);
        }
        RemoteCommand::List(o) => {
            let list = Remote::list(&sysroot)?;
            if o.json {
                let v: Vec<_> = list
                    .iter()
                    .map(|r| serde_json::json!({"name": r.name, "url": r.url}))
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
