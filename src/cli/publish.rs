//! `arbor publish`: versions into a folder served over HTTP, signed with TUF, and the
//! rollout controller that widens or halts them by the machines' health reports
//! (docs/remote.md, docs/fleet.md).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::output::{human_bytes, json};
use super::{Cli, OutputArgs, lock_wait};
use arbor_publish::rollout::{ChannelStatus, Decision};
use arbor_publish::{self as publish, AddOptions, Expiry, Publisher, parse_duration};
use arbor_remote::oci;
use arbor_remote::rollout::RolloutRules;
use arbor_store::Repo;

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
    /// Set a channel's rollout rules: where machines send health reports, and when
    /// `publish rollout` widens or halts a version.
    RolloutRules(PublishRulesArgs),
    /// One run of the rollout controller: read the health reports, widen each
    /// version's phase or halt it by the channel's rules, sign the index if changed.
    Rollout(PublishRolloutArgs),
    /// How many machines report each version good, failed or rolled back.
    Status(PublishStatusArgs),
    /// Set the mirrors a channel's signed index names: machines ask them after the
    /// servers they were configured with (no URL: none).
    Mirrors(PublishMirrorsArgs),
    /// Push a published folder to a registry repository (oci://HOST/NAME), as
    /// commands on an oci:// publication do after signing: a copy machines can follow.
    Push(PublishPushArgs),
    /// Withdraw a version by hand, as a halted rollout does: no machine is offered
    /// it, and machines that staged it drop it at their next check.
    #[command(disable_version_flag = true)]
    Withdraw(PublishVersionArgs),
}

/// `arbor publish push`.
#[derive(Args, Debug)]
pub struct PublishPushArgs {
    /// The published folder.
    pub folder: PathBuf,
    /// The registry repository (oci://HOST/NAME).
    pub registry: String,
    /// The login to the registry (a TOML file of mode 0600).
    #[arg(long, value_name = "FILE")]
    pub credentials: Option<PathBuf>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `arbor publish mirrors`.
#[derive(Args, Debug)]
pub struct PublishMirrorsArgs {
    #[command(flatten)]
    pub dir: PublishDirArgs,
    /// The channel.
    #[arg(long)]
    pub channel: String,
    /// http(s) folder URLs or registry repositories (oci://HOST/NAME) serving a copy
    /// of this publication, in the order machines should ask them (at most 16).
    pub urls: Vec<String>,
}

/// `arbor publish rollout-rules`.
#[derive(Args, Debug)]
pub struct PublishRulesArgs {
    #[command(flatten)]
    pub dir: PublishDirArgs,
    /// The channel.
    #[arg(long)]
    pub channel: String,
    /// Where machines PUT their reports: an http(s) folder URL (WebDAV, or an
    /// S3-compatible prefix). Without it, machines send none.
    #[arg(long, value_name = "URL")]
    pub reports: Option<String>,
    /// Or an S3 bucket machines upload their reports to, through a POST policy signed
    /// here (no machine holds a key): http(s)://HOST/BUCKET/PREFIX, path-style.
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "reports",
        requires = "s3_credentials"
    )]
    pub reports_s3: Option<String>,
    /// The bucket's access key: a 0600 credentials file, the key's id as username and
    /// its secret as password.
    #[arg(long, value_name = "FILE")]
    pub s3_credentials: Option<PathBuf>,
    /// The region the bucket's key is scoped to.
    #[arg(long, value_name = "REGION", default_value = "us-east-1")]
    pub s3_region: String,
    /// How long the upload form lasts; `publish rollout` signs a new one, as long,
    /// past half of it (so run it more often than that).
    #[arg(long, value_name = "DURATION", default_value = "7d")]
    pub s3_valid: String,
    /// The phases a version goes through, ending in 100.
    #[arg(
        long,
        value_name = "PCT,…",
        value_delimiter = ',',
        default_value = "1,10,50,100"
    )]
    pub steps: Vec<u8>,
    /// Good reports from the current phase's machines before it widens.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub min_good: u32,
    /// Halt when more than this percentage of a version's machines failed…
    #[arg(long, value_name = "PCT", default_value_t = 10)]
    pub max_failed: u8,
    /// …and at least this many did.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub min_failed: u32,
    /// How long a phase soaks before it widens (e.g. 30m, 2h, 1d).
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    pub soak: String,
}

/// `arbor publish rollout`.
#[derive(Args, Debug)]
pub struct PublishRolloutArgs {
    #[command(flatten)]
    pub dir: PublishDirArgs,
    /// The channel.
    #[arg(long)]
    pub channel: String,
    /// The folder the reports were PUT into (its `<channel>/` folder is read); with an
    /// S3 bucket, where its reports are copied to first.
    #[arg(long, value_name = "DIR")]
    pub reports: PathBuf,
    /// The S3 report bucket's access key (credentials file), when the channel's
    /// reports go to one: new reports are copied from it, and the machines' upload
    /// form is signed again past half its week.
    #[arg(long, value_name = "FILE")]
    pub s3_credentials: Option<PathBuf>,
    /// Decide and print, sign nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `arbor publish status`.
#[derive(Args, Debug)]
pub struct PublishStatusArgs {
    /// The published folder.
    pub dir: PathBuf,
    /// The channel.
    #[arg(long)]
    pub channel: String,
    /// The folder the reports were PUT into.
    #[arg(long, value_name = "DIR")]
    pub reports: PathBuf,
    /// The S3 report bucket's access key: copy its new reports into the folder first.
    #[arg(long, value_name = "FILE")]
    pub s3_credentials: Option<PathBuf>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `arbor publish withdraw`.
#[derive(Args, Debug)]
pub struct PublishVersionArgs {
    #[command(flatten)]
    pub dir: PublishDirArgs,
    /// The channel.
    #[arg(long)]
    pub channel: String,
    /// The version.
    #[arg(long = "version", id = "target_version")]
    pub version: String,
}

/// The published folder, its keys and expiry dates.
#[derive(Args, Debug)]
pub struct PublishDirArgs {
    /// The folder to serve over HTTP, or a registry repository (oci://HOST/NAME,
    /// docs/registry.md: made in KEYS/publication, then pushed).
    pub dir: PathBuf,
    /// The private keys (default: DIR.keys beside it; never inside DIR; needed for
    /// a registry).
    #[arg(long, value_name = "DIR")]
    pub keys: Option<PathBuf>,
    /// The login to the registry: a TOML file of mode 0600 (`username`, `password` or
    /// `token_file`; default KEYS/registry.toml when it exists).
    #[arg(long, value_name = "FILE")]
    pub credentials: Option<PathBuf>,
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

/// The registry a publication goes to, when DIR is `oci://…`.
fn registry_of(a: &PublishDirArgs) -> Option<&str> {
    a.dir.to_str().filter(|d| oci::is_oci(d))
}

fn publisher(a: &PublishDirArgs) -> Result<Publisher> {
    let (dir, keys) = match registry_of(a) {
        Some(r) => {
            oci::Location::parse(r)?;
            let keys = a.keys.clone().with_context(|| {
                format!("publishing to {r} needs --keys DIR (its staging copy is kept there)")
            })?;
            (keys.join("publication"), keys)
        }
        None => {
            let keys = a.keys.clone().unwrap_or_else(|| {
                let mut s = a.dir.clone().into_os_string();
                s.push(".keys");
                PathBuf::from(s)
            });
            (a.dir.clone(), keys)
        }
    };
    Ok(Publisher {
        dir,
        keys,
        expiry: Expiry {
            root: parse_duration(&a.root_expires)?,
            targets: parse_duration(&a.targets_expires)?,
            snapshot: parse_duration(&a.snapshot_expires)?,
            timestamp: parse_duration(&a.timestamp_expires)?,
        },
    })
}

/// The folder, keys and login of a command that signs (None: it reads only, or
/// pushes on its own).
fn signing_args(cmd: &PublishCommand) -> Option<&PublishDirArgs> {
    match cmd {
        PublishCommand::Init(a) | PublishCommand::Refresh(a) => Some(a),
        PublishCommand::Add(a) => Some(&a.dir),
        PublishCommand::Phase(a) => Some(&a.dir),
        PublishCommand::RotateKey(a) => Some(&a.dir),
        PublishCommand::Mirrors(a) => Some(&a.dir),
        PublishCommand::RolloutRules(a) => Some(&a.dir),
        PublishCommand::Rollout(a) if !a.dry_run => Some(&a.dir),
        PublishCommand::Withdraw(a) => Some(&a.dir),
        _ => None,
    }
}

/// The S3 report bucket's key from its credentials file, if one was given.
fn s3_key(file: Option<&PathBuf>) -> Result<Option<publish::s3::AccessKey>> {
    file.map(|f| publish::s3::AccessKey::load(f)).transpose()
}

/// A client of `registry` logged in with the credentials file `creds`, if any.
fn registry_client(registry: &str, creds: Option<PathBuf>) -> Result<oci::Registry> {
    let creds = match creds {
        Some(f) => oci::Credentials::load(&f)?,
        None => oci::Credentials::default(),
    };
    let timeout = std::time::Duration::from_secs(60);
    Ok(oci::Registry::new(
        oci::Location::parse(registry)?,
        creds,
        timeout,
    ))
}

/// The registry client of a publication in `registry`, its login checked (and the
/// registry reached) before anything is signed.
fn push_client(a: &PublishDirArgs, registry: &str) -> Result<oci::Registry> {
    let p = publisher(a)?;
    let default = p.keys.join("registry.toml");
    let creds = a
        .credentials
        .clone()
        .or(default.exists().then_some(default));
    let reg = registry_client(registry, creds)?;
    reg.has_blob(&oci::digest_of(b"{}"))
        .with_context(|| format!("{registry}: nothing was signed"))?;
    Ok(reg)
}

fn print_push(r: &publish::oci_push::PushResult) {
    println!(
        "pushed {} new files ({}) to {}; {} were there already",
        r.blobs_pushed,
        human_bytes(r.bytes_pushed),
        r.registry,
        r.blobs_present
    );
}

/// Runs `arbor publish …`; a command that signed a registry's publication pushes it.
pub fn publish(cli: &Cli, cmd: &PublishCommand) -> Result<i32> {
    let to_push = signing_args(cmd).and_then(|a| registry_of(a).map(|r| (a, r)));
    let client = match to_push {
        Some((a, r)) => Some((a, r, push_client(a, r)?)),
        None => None,
    };
    let code = publish_here(cli, cmd)?;
    if let Some((a, registry, reg)) = client {
        let staging = publisher(a)?.dir;
        let r = publish::oci_push::push(&staging, &reg)
            .with_context(|| format!("pushing to {registry} (run `arbor publish push` again)"))?;
        if !a.output.json {
            print_push(&r);
        }
    }
    Ok(code)
}

fn publish_here(cli: &Cli, cmd: &PublishCommand) -> Result<i32> {
    match cmd {
        PublishCommand::Push(a) => {
            let reg = registry_client(&a.registry, a.credentials.clone())?;
            let r = publish::oci_push::push(&a.folder, &reg)?;
            if a.output.json {
                return json(&r).map(|_| 0);
            }
            print_push(&r);
        }
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
            json(&reader(&a.dir).channel(&a.channel)?)?;
        }
        PublishCommand::Mirrors(a) => {
            let idx = publisher(&a.dir)?.set_mirrors(&a.channel, &a.urls, lock_wait(cli))?;
            if a.dir.output.json {
                return json(&idx.mirrors).map(|_| 0);
            }
            if idx.mirrors.is_empty() {
                println!("{}: no mirrors named", a.channel);
            }
            for m in &idx.mirrors {
                println!("{}: mirror {m}", a.channel);
            }
        }
        PublishCommand::RolloutRules(a) => {
            let report_form = match &a.reports_s3 {
                Some(url) => {
                    let bucket = publish::s3::Bucket::parse(url, &a.s3_region)?;
                    let key = s3_key(a.s3_credentials.as_ref())?.expect("clap requires it");
                    Some(publish::s3::sign_form(
                        &bucket,
                        &key,
                        chrono::Utc::now(),
                        parse_duration(&a.s3_valid)?.to_std()?,
                    ))
                }
                None => None,
            };
            let rules = RolloutRules {
                reports: a.reports.clone(),
                report_form,
                steps: a.steps.clone(),
                min_good: a.min_good,
                max_failed_percent: a.max_failed,
                min_failed: a.min_failed,
                soak_secs: parse_duration(&a.soak)?.num_seconds().max(0) as u64,
            };
            let idx = publisher(&a.dir)?.set_rollout_rules(&a.channel, rules, lock_wait(cli))?;
            if a.dir.output.json {
                return json(&idx.rollout).map(|_| 0);
            }
            let r = idx.rollout.expect("just set");
            println!(
                "{}: phases {:?}, widen after {} good reports and {} s, halt above {}% failed \
                 (at least {}); reports to {}",
                a.channel,
                r.steps,
                r.min_good,
                r.soak_secs,
                r.max_failed_percent,
                r.min_failed,
                match (&r.reports, &r.report_form) {
                    (Some(url), _) => url.clone(),
                    (None, Some(f)) => format!(
                        "the S3 bucket {}{} (form valid until {})",
                        f.url,
                        f.key_prefix,
                        chrono::DateTime::from_timestamp(f.expires, 0).unwrap_or_default()
                    ),
                    (None, None) => "nowhere (machines send none)".into(),
                }
            );
        }
        PublishCommand::Rollout(a) => {
            let key = s3_key(a.s3_credentials.as_ref())?;
            let run = publisher(&a.dir)?.rollout(
                &a.channel,
                &a.reports,
                key.as_ref(),
                a.dry_run,
                lock_wait(cli),
            )?;
            if a.dir.output.json {
                return json(&run).map(|_| 0);
            }
            if let Some(s) = &run.synced {
                println!(
                    "copied {} new reports from the bucket ({} listed, {} not reports)",
                    s.copied, s.listed, s.skipped
                );
            }
            if run.form_renewed {
                println!("the machines' S3 upload form was past half its life: signed anew");
            }
            print_status(&run.status);
            for d in &run.decisions {
                match d {
                    Decision::Widen { version, from, to } => {
                        println!("{version}: widened from {from}% to {to}%")
                    }
                    Decision::Halt {
                        version,
                        failures,
                        machines,
                    } => println!(
                        "{version}: HALTED, {failures} of {machines} machines failed: withdrawn"
                    ),
                    Decision::Hold { version, why } => println!("{version}: holding, {why}"),
                }
            }
            match (run.signed, a.dry_run) {
                (true, _) => println!("index of {} signed", a.channel),
                (false, true) => println!("dry run: nothing signed"),
                (false, false) => println!("nothing changed"),
            }
        }
        PublishCommand::Status(a) => {
            let key = s3_key(a.s3_credentials.as_ref())?;
            let s = reader(&a.dir).rollout_status(&a.channel, &a.reports, key.as_ref())?;
            if a.output.json {
                return json(&s).map(|_| 0);
            }
            print_status(&s);
        }
        PublishCommand::Withdraw(a) => {
            publisher(&a.dir)?.withdraw(&a.channel, &a.version, lock_wait(cli))?;
            println!(
                "{} {} withdrawn: offered to no machine; machines that staged it drop it",
                a.channel, a.version
            );
        }
    }
    Ok(0)
}

/// A publisher that only reads the folder (no keys needed).
fn reader(dir: &std::path::Path) -> Publisher {
    Publisher {
        dir: dir.to_path_buf(),
        keys: PathBuf::new(),
        expiry: Expiry::default(),
    }
}

fn print_status(s: &ChannelStatus) {
    println!(
        "{:<14} {:>5} {:>6} {:>6} {:>11}  boot to verdict (median)",
        "version", "phase", "good", "failed", "rolled-back"
    );
    for v in &s.versions {
        println!(
            "{:<14} {:>4}% {:>6} {:>6} {:>11}  {}{}",
            v.version,
            v.phase,
            v.good,
            v.failed,
            v.rolled_back,
            v.median_boot_to_verdict_ms
                .map_or("-".to_string(), |ms| format!("{:.1} s", ms as f64 / 1000.0)),
            if v.withdrawn { "  WITHDRAWN" } else { "" }
        );
    }
    let i = &s.ignored;
    let ignored = i.malformed + i.bad_signature + i.unknown_format + i.impossible + i.not_read;
    if ignored > 0 {
        println!(
            "ignored: {} malformed, {} bad signature, {} unknown format, {} impossible, {} not read",
            i.malformed, i.bad_signature, i.unknown_format, i.impossible, i.not_read
        );
    }
}
