//! Updates from a remote channel: check, download, verify, stage (docs/remote.md).
//! `arbor upgrade`, `deploy --version`, `rebase`, `auto-update` and the daemon's
//! Upgrade all run [`run`]; each step moves the persisted [`state::State`].

pub mod apply_step;
mod fleet;
pub mod leash;
pub mod policy;
pub mod state;

use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;

use arbor_core::lock::{LockWait, WriterLock};
use arbor_core::progress::{Download, Observer, Span};
use arbor_packages::layer::{base_of, default_deployment};
use arbor_remote::fetch::{self, FetchResult, Plan};
use arbor_remote::index::{Considered, Method, VersionEntry, choose, device_phase};
use arbor_remote::{self as remote, Remote, split_refspec};
use arbor_statedb::StateDb;
use arbor_store::dpkg::{self, PackageDiff};
use arbor_store::refs::RefName;
use arbor_store::transaction::Transaction;
use arbor_store::{ObjectId, Repo, reach};
use arbor_sysroot::Sysroot;
use arbor_sysroot::deploy::{DeployOptions, deploy};
pub use policy::{Action, Policy};
use state::{Offer, State, UpdateRecord, enter};

/// What to update to and how far to go.
#[derive(Clone, Debug, Default)]
pub struct UpdateOptions {
    /// The stateroot (default: the only one).
    pub os: Option<String>,
    /// A specific version (no phasing: asked for by name).
    pub version: Option<String>,
    /// Switch to this channel: `channel` (same remote) or `remote:channel`.
    pub rebase: Option<String>,
    /// Ignore phased rollout.
    pub phase_override: bool,
    /// Only compute and report the plan (`--dry-run`): nothing fetched or persisted.
    pub dry_run: bool,
    /// `--apply`: once staged, carry the update out by the mildest step at least this
    /// strong (live allows every step); None stages it for the next boot.
    pub apply: Option<arbor_live::activation::Step>,
    /// The steps the policy forbids (`apply_forbid`).
    pub forbid: Vec<String>,
    /// Download at most this many bytes a second (`--max-rate`); None: the policy's
    /// `max_rate`, if any.
    pub max_rate: Option<u64>,
}

/// What an update run found and did.
#[derive(
    Clone, Debug, Default, Serialize, zvariant::Type, zvariant::Value, zvariant::OwnedValue,
)]
#[zvariant(signature = "dict")]
pub struct UpdateResult {
    /// The remote.
    pub remote: String,
    /// The channel.
    pub channel: String,
    /// The commit running (the base of the default deployment), if any.
    pub current: Option<ObjectId>,
    /// The versions considered, newest first, with this device's phase for each.
    pub considered: Vec<Considered>,
    /// The version offered (None: up to date).
    pub offered: Option<VersionEntry>,
    /// How it would be (or was) fetched.
    pub plan: Option<Plan>,
    /// The package changes from the running base to the offered version, read from
    /// the list its publisher recorded (None when either side has none).
    pub packages: Option<PackageDiff>,
    /// What the fetch did.
    pub fetched: Option<FetchResult>,
    /// The staged deployment.
    pub deployment: Option<String>,
    /// The update state afterwards.
    pub state: State,
    /// Why `auto-update` did nothing (not due, waiting for the preferred time).
    pub skipped: Option<String>,
    /// A dry run's list of the `/etc` files (relative to `/etc`) that both the
    /// machine and the offered version changed: the merge keeps the machine's and
    /// saves the new default beside it. None when unknown: the version is not
    /// downloaded yet, or this is not a dry run.
    pub etc_conflicts: Option<Vec<String>>,
    /// The mildest step that brings the machine to the update (live, soft-reboot,
    /// kexec or reboot) and why (docs/activation.md): for the staged deployment, or
    /// in a dry run for a version already downloaded. None when unknown.
    pub activation: Option<arbor_live::ladder::Activation>,
    /// What `--apply` did: the step taken, and the switch the caller starts.
    pub applied: Option<apply_step::Applied>,
    /// A version this machine had staged that its publisher withdrew: the staged
    /// deployment was dropped (docs/fleet.md).
    pub withdrawn: Option<String>,
    /// The servers of the remote this run passed over (down, stalled, stale, forged
    /// or corrupt), each as "URL: what: why" (docs/remote.md, "Mirrors").
    pub mirrors_skipped: Vec<String>,
}

/// Where updates come from for this sysroot: (remote, channel, current base commit,
/// layers source).
fn source(
    sysroot: &Sysroot,
    os: &str,
    rebase: Option<&str>,
) -> Result<(String, String, Option<arbor_sysroot::Deployment>)> {
    let current = next_deployment(sysroot, os)?;
    let (remote, channel) = channel_to_follow(
        rebase,
        current.as_ref().map(|d| d.origin.refspec.as_str()),
        os,
    )?;
    Ok((remote, channel, current))
}

/// The (remote, channel) an update follows: `rebase` (`CHANNEL` on the same remote,
/// or `REMOTE:CHANNEL`), else what the deployment that runs next tracks (`tracked`,
/// its origin's refspec, `None` without a deployment).
fn channel_to_follow(
    rebase: Option<&str>,
    tracked: Option<&str>,
    os: &str,
) -> Result<(String, String)> {
    let followed = tracked
        .and_then(split_refspec)
        .map(|(r, c)| (r.to_string(), c.to_string()));
    Ok(match (rebase, followed) {
        (Some(spec), tracked) => match split_refspec(spec) {
            Some((r, c)) => (r.to_string(), c.to_string()),
            None => match tracked {
                Some((r, _)) => (r, spec.to_string()),
                None => bail!("name the remote too: 'arbor rebase REMOTE:{spec}'"),
            },
        },
        (None, Some(t)) => t,
        (None, None) => match tracked {
            Some(local) => bail!(
                "the deployment follows the local ref '{local}', not a remote channel ('arbor rebase REMOTE:CHANNEL')"
            ),
            None => bail!("stateroot {os} has no deployment: 'arbor deploy REMOTE:CHANNEL' first"),
        },
    })
}

/// The deployment that runs next in stateroot `os`: the staged one (whatever the boot
/// entries say yet), else the default.
pub(crate) fn next_deployment(
    sysroot: &Sysroot,
    os: &str,
) -> Result<Option<arbor_sysroot::Deployment>> {
    Ok(match sysroot.staged()? {
        Some(d) if d.os == os => Some(d),
        _ => default_deployment(sysroot, os).ok(),
    })
}

/// True when the deployment that runs next follows a configured remote's channel (so
/// `upgrade` fetches from it rather than moving to a local ref's tip).
pub fn follows_remote(sysroot: &Sysroot, os: Option<&str>) -> bool {
    let os = match os {
        Some(o) => o.to_string(),
        None => match sysroot.default_os() {
            Ok(o) => o,
            Err(_) => return false,
        },
    };
    matches!(next_deployment(sysroot, &os), Ok(Some(d))
        if remote::configured_refspec(sysroot, &d.origin.refspec).is_some())
}

/// Passes progress on, and keeps the persisted byte count current (once a second).
struct Recording<'a> {
    inner: &'a dyn Observer,
    sysroot: &'a Sysroot,
    rec: &'a Mutex<UpdateRecord>,
    last: Mutex<Instant>,
}

impl Observer for Recording<'_> {
    fn task_begin(&self, t: &str) {
        self.inner.task_begin(t)
    }
    fn task_end(&self, t: &str) {
        self.inner.task_end(t)
    }
    fn message(&self, t: &str) {
        self.inner.message(t)
    }
    fn percent(&self, t: &str, p: u32) {
        self.inner.percent(t, p)
    }
    fn cancelled(&self) -> bool {
        self.inner.cancelled()
    }
    fn download(&self, d: &Download) {
        self.inner.download(d);
        let mut last = self.last.lock().unwrap();
        if last.elapsed().as_millis() >= 1000 || d.bytes_done == d.bytes_total {
            *last = Instant::now();
            let mut r = self.rec.lock().unwrap();
            r.bytes_done = d.bytes_done;
            let _ = state::save(self.sysroot, &mut r);
        }
    }
}

/// What the offered version changes in the packages of the running base: its
/// published list against the base's own. `None` when the publisher recorded no list
/// or the base has no dpkg database; a list that fails to download or verify fails the
/// check.
fn package_changes(
    repo: &Repo,
    remote: &Remote,
    current: Option<&ObjectId>,
    target: &VersionEntry,
) -> Result<Option<PackageDiff>> {
    let Some(theirs) = fetch::packages(remote, target)? else {
        return Ok(None);
    };
    let ours = match current {
        Some(c) => match arbor_store::dpkg::packages_of(repo, c) {
            Ok(p) => p,
            Err(e) => {
                tracing::info!("no package changes: the running base has no list: {e:#}");
                return Ok(None);
            }
        },
        None => Vec::new(),
    };
    Ok(Some(dpkg::diff(&ours, &theirs)))
}

/// Checks the commit and everything it reaches is stored.
fn verify_complete(repo: &Repo, commit: &ObjectId) -> Result<()> {
    reach::check_complete(repo, commit).context("the fetched commit is incomplete")
}

/// Runs an update as far as `action` says, under the sysroot lock the caller holds.
pub fn perform(
    sysroot: &Sysroot,
    lock: &WriterLock,
    opts: &UpdateOptions,
    action: Action,
    obs: &dyn Observer,
) -> Result<UpdateResult> {
    let os = match &opts.os {
        Some(o) => o.clone(),
        None => sysroot.default_os()?,
    };
    let (remote_name, channel, mut current_d) = source(sysroot, &os, opts.rebase.as_deref())?;
    let mut remote = Remote::open(sysroot, &remote_name)?;
    if let Some(rate) = max_rate(opts.max_rate)? {
        remote.limiter = Some(remote::rate::Limiter::new(rate)?);
    }
    let repo = sysroot.repo();
    let mut current = match &current_d {
        Some(d) => Some(base_of(repo, &d.commit)?),
        None => None,
    };
    let mut result = UpdateResult {
        remote: remote_name.clone(),
        channel: channel.clone(),
        current,
        ..UpdateResult::default()
    };
    let limits = apply_step::limits(opts.apply, &opts.forbid)?;
    let mut rec = state::stored(sysroot)?;
    let persist = !opts.dry_run;
    let step = |rec: &mut UpdateRecord, s: State| -> Result<()> {
        if persist {
            enter(sysroot, rec, s)
        } else {
            Ok(())
        }
    };
    rec.remote = Some(remote_name.clone());
    rec.channel = Some(channel.clone());
    step(&mut rec, State::Checking)?;
    // One figure across the steps (docs/dbus.md): a check alone is the whole of it.
    let spans = match action {
        _ if opts.dry_run => [100, 100, 100],
        Action::Check => [100, 100, 100],
        Action::Download => [5, 90, 100],
        Action::Stage => [5, 70, 75],
    };
    let outcome = (|| -> Result<()> {
        obs.percent("checking", 0);
        obs.task_begin("check");
        let idx = remote.channel(&channel)?;
        if !opts.dry_run {
            fleet::note_reports(sysroot, &os, &remote_name, &idx);
            if let Some(v) = fleet::drop_withdrawn(sysroot, lock, &os, &idx)? {
                result.withdrawn = Some(v);
                current_d = next_deployment(sysroot, &os)?;
                current = match &current_d {
                    Some(d) => Some(base_of(repo, &d.commit)?),
                    None => None,
                };
                result.current = current;
            }
        }
        let machine = remote::machine_id()?;
        let offered = match &opts.version {
            Some(v) => {
                let e = idx.version(v)?;
                ensure!(
                    !e.withdrawn,
                    "version {v} of channel {channel} was withdrawn by its publisher \
                     (its rollout was halted): nothing was changed"
                );
                result.considered.push(Considered {
                    version: v.clone(),
                    device_phase: device_phase(&machine, &channel, v),
                    phase: e.phase,
                    offered: true,
                    withdrawn: false,
                });
                // Asked for by name: a required version not yet reached is an error,
                // not a silent detour.
                let step = remote::index::next_step(&idx, current.as_ref(), e)?;
                ensure!(
                    std::ptr::eq(step, e),
                    "version {v} requires that this machine run version {} first: \
                     deploy it (`arbor deploy --version {}`), boot it, then upgrade \
                     again; nothing was changed",
                    step.version,
                    step.version
                );
                (current != Some(e.commit) || opts.rebase.is_some()).then_some(e)
            }
            None => {
                let same_channel = opts.rebase.is_none();
                let (v, considered) = choose(
                    &idx,
                    current.as_ref().filter(|_| same_channel),
                    &machine,
                    opts.phase_override,
                );
                result.considered = considered;
                match v.filter(|v| Some(v.commit) != current || !same_channel) {
                    // A required version not yet reached comes first.
                    Some(v) => Some(remote::index::next_step(&idx, current.as_ref(), v)?),
                    None => None,
                }
            }
        };
        obs.task_end("check");
        tracing::debug!("checked the channel");
        obs.percent("checked", spans[0]);
        rec.last_check = Some(chrono::Utc::now().timestamp());
        rec.available = offered.map(|v| v.version.clone());
        rec.critical = offered.is_some_and(|v| v.critical);
        rec.offer = None;
        result.offered = offered.cloned();
        let Some(target) = offered else {
            // Up to date, with the update already staged: `--apply` carries it out.
            if opts.apply.is_some() && action == Action::Stage && !opts.dry_run && pending(sysroot)?
            {
                apply_pending(sysroot, lock, &limits, &mut result)?;
                rec.activation = result.activation.clone();
                return step(&mut rec, State::Staged);
            }
            return step(&mut rec, State::Idle);
        };
        let plan = fetch::plan(repo, &remote, &idx, target)?;
        result.plan = Some(plan.plan.clone());
        result.packages = package_changes(repo, &remote, current.as_ref(), target)?;
        rec.offer = Some(Offer {
            version: target.version.clone(),
            commit: target.commit,
            remote: remote_name.clone(),
            channel: channel.clone(),
            critical: target.critical,
            release_notes: target.release_notes.clone(),
            published: target.published,
            download_bytes: plan.to_fetch().map_or(0, |c| c.bytes),
            method: plan
                .to_fetch()
                .map_or(Method::Present, |c| c.kind)
                .to_string(),
            packages: result.packages.clone(),
            activation: result.packages.as_ref().map(|p| {
                let mut a = arbor_live::ladder::Activation::from(&arbor_live::ladder::estimate(
                    sysroot, p, &limits,
                ));
                a.summary = format!("estimated from the package lists: {}", a.summary);
                a
            }),
        });
        if opts.dry_run {
            result.etc_conflicts =
                arbor_sysroot::etc_state::conflicts_with_commit(sysroot, &os, &target.commit)?;
            if result.etc_conflicts.is_some() {
                result.activation = activation(sysroot, || {
                    arbor_live::ladder::for_commit(sysroot, &target.commit, &limits)
                });
            }
        }
        if opts.dry_run || action == Action::Check {
            return step(&mut rec, State::Idle);
        }
        rec.version = Some(target.version.clone());
        rec.commit = Some(target.commit);
        rec.deployment = None;
        rec.activation = None;
        rec.bytes_total = plan.chosen().map_or(0, |c| c.bytes);
        rec.bytes_done = 0;
        step(&mut rec, State::Downloading)?;
        obs.task_begin("download");
        let shared = Mutex::new(rec.clone());
        let downloading = Span::new(obs, spans[0], spans[1]);
        let recording = Recording {
            inner: &downloading,
            sysroot,
            rec: &shared,
            last: Mutex::new(Instant::now()),
        };
        let db = StateDb::open(&sysroot.state_db_path())?;
        let fetched = fetch::execute(repo, &remote, &db, &plan, &recording);
        rec = shared.into_inner().unwrap();
        let fetched = fetched?;
        leash::count(&mut rec, fetched.bytes);
        result.fetched = Some(fetched);
        obs.task_end("download");
        step(&mut rec, State::Verifying)?;
        obs.percent("verifying", spans[1]);
        verify_complete(repo, &target.commit)?;
        let refname = RefName::parse(&format!("{remote_name}:{channel}"))?;
        Transaction::begin(repo, LockWait::Wait(&|_| {}))?
            .finish(&[(refname, Some(target.commit))])
            .context("recording the channel's ref")?;
        if action == Action::Download {
            return step(&mut rec, State::Idle);
        }
        step(&mut rec, State::Staging)?;
        let d_opts = DeployOptions {
            os: os.clone(),
            refspec: format!("{remote_name}:{channel}"),
            override_commit: None,
            commit: target.commit,
            layers: current_d
                .as_ref()
                .map(|d| d.origin.layers.clone())
                .unwrap_or_default(),
            kargs: None,
            stage: current_d.is_some(),
            layers_built: false,
            reset: None,
            image_digest: None,
        };
        obs.percent("staging", spans[2]);
        let span = Span::new(obs, spans[2], 100);
        let d_opts = arbor_packages::layer::prepare(sysroot, &d_opts, &span)?;
        let r = deploy(sysroot, lock, &d_opts, &span)?;
        let name = r.deployment.dir_name();
        result.deployment = Some(name.clone());
        rec.deployment = Some(name);
        // What was offered is what boots next: nothing is available beyond it.
        rec.offer = None;
        if current_d.is_some() {
            if opts.apply.is_some() {
                apply_pending(sysroot, lock, &limits, &mut result)?;
            } else {
                result.activation = activation(sysroot, || {
                    arbor_live::ladder::for_pending(sysroot, &limits)
                });
            }
            rec.activation = result.activation.clone();
        }
        // A first deployment has nothing to stage behind: it is simply the default.
        step(&mut rec, State::Staged)
    })();
    if let Err(e) = &outcome
        && persist
    {
        rec.error = Some(format!("{e:#}"));
        let _ = enter(sysroot, &mut rec, State::Failed);
    }
    outcome?;
    result.state = rec.state;
    result.mirrors_skipped = remote
        .skips
        .skips()
        .into_iter()
        .map(|k| format!("{}: {}", k.url, k.reason))
        .collect();
    Ok(result)
}

/// The download rate cap: the caller's, else the policy's. A policy that cannot be
/// read is an error: downloading uncapped where a cap was meant could cost the
/// machine's owner (`--max-rate` overrides it).
fn max_rate(asked: Option<u64>) -> Result<Option<u64>> {
    match asked {
        Some(r) => Ok(Some(r)),
        None => Policy::load(None)
            .and_then(|p| p.max_rate())
            .context("the download rate cap (max_rate; --max-rate overrides it)"),
    }
}

/// A deployment other than the booted one boots next (staged, or made the default).
fn pending(sysroot: &Sysroot) -> Result<bool> {
    Ok(sysroot.staged()?.is_some() || sysroot.deployments()?.first().is_some_and(|d| !d.booted))
}

/// Chooses the step for the pending deployment and carries it out (`--apply`). A
/// choice that cannot be made is a reboot: the step in doubt.
fn apply_pending(
    sysroot: &Sysroot,
    lock: &WriterLock,
    limits: &arbor_live::ladder::Limits,
    result: &mut UpdateResult,
) -> Result<()> {
    // The plan the choice was made from is the plan a live step carries out.
    let mut planned = None;
    result.activation = activation(sysroot, || {
        let (choice, plan) = arbor_live::ladder::for_pending_planned(sysroot, limits)?;
        planned = Some(plan);
        Ok(choice)
    });
    let chosen = result
        .activation
        .clone()
        .unwrap_or_else(|| arbor_live::ladder::Activation {
            step: "reboot".into(),
            needed: "reboot".into(),
            passed_over: Vec::new(),
            summary: "reboot: the changes could not be read".into(),
        });
    result.applied = Some(apply_step::carry_out(sysroot, lock, &chosen, planned)?);
    Ok(())
}

/// The activation ladder's choice, where the machine has a booted deployment to
/// compare with. Advisory: a fact it cannot read is logged, and the update goes on.
fn activation(
    sysroot: &Sysroot,
    choose: impl FnOnce() -> Result<arbor_live::activation::Choice>,
) -> Option<arbor_live::ladder::Activation> {
    if arbor_live::booted(sysroot).is_err() {
        return None;
    }
    match choose() {
        Ok(c) => Some((&c).into()),
        Err(e) => {
            tracing::warn!("cannot tell how the update can be applied: {e:#}");
            None
        }
    }
}

/// True when local time is in the hour that starts at `preferred` (`HH:MM`).
fn in_window(preferred: &str) -> bool {
    use chrono::Timelike;
    let now = chrono::Local::now();
    in_window_at(
        preferred,
        i64::from(now.hour()) * 60 + i64::from(now.minute()),
    )
}

/// [`in_window`] at `minutes` past midnight. A time that does not parse puts no
/// limit (the policy file is checked when it is loaded).
fn in_window_at(preferred: &str, minutes: i64) -> bool {
    let Some((h, m)) = preferred.split_once(':') else {
        return true;
    };
    let (Ok(h), Ok(m)) = (h.parse::<i64>(), m.parse::<i64>()) else {
        return true;
    };
    (minutes - (h * 60 + m)).rem_euclid(24 * 60) < 60
}

/// `arbor auto-update`: what the timer runs (hourly). Checks when `check_interval`
/// has passed since the last check (or `force`), then downloads or stages as the
/// policy says: critical versions at once, others in the hour after `preferred_time`.
pub fn auto_update(
    sysroot: &Sysroot,
    lock: &WriterLock,
    policy: &Policy,
    force: bool,
    obs: &dyn Observer,
) -> Result<UpdateResult> {
    let interval = arbor_publish::parse_duration(&policy.check_interval)?;
    let rec = state::stored(sysroot)?;
    let now = chrono::Utc::now().timestamp();
    if !force
        && rec
            .last_check
            .is_some_and(|t| now - t < interval.num_seconds())
    {
        return Ok(UpdateResult {
            skipped: Some(format!(
                "not due: checked less than {} ago",
                policy.check_interval
            )),
            state: rec.state,
            ..UpdateResult::default()
        });
    }
    let opts = UpdateOptions::default();
    let mut checked = perform(sysroot, lock, &opts, Action::Check, obs)?;
    let Some(v) = &checked.offered else {
        return Ok(checked);
    };
    if policy.notify_available {
        obs.message(&format!(
            "version {} is available on {}:{}{}",
            v.version,
            checked.remote,
            checked.channel,
            if v.critical { " (critical)" } else { "" }
        ));
    }
    let action = policy.action(v.critical);
    if action == Action::Check {
        return Ok(checked);
    }
    if !force && !v.critical && !in_window(&policy.preferred_time) {
        checked.skipped = Some(format!(
            "version {} waits for the preferred time {}",
            v.version, policy.preferred_time
        ));
        return Ok(checked);
    }
    if !force {
        let rec = state::stored(sysroot)?;
        let bytes = rec.offer.as_ref().map_or(0, |o| o.download_bytes);
        if let Some(why) = leash::hold_back(policy, &rec, v.critical, bytes, leash::metered)? {
            checked.skipped = Some(format!("version {} waits: {why}", v.version));
            return Ok(checked);
        }
    }
    let opts = UpdateOptions {
        apply: policy.apply_step()?.filter(|_| action == Action::Stage),
        forbid: policy.apply_forbid.clone(),
        // The policy auto-update was given (`--config`), not only the default file.
        max_rate: policy.max_rate()?,
        ..opts
    };
    perform(sysroot, lock, &opts, action, obs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preferred_time_opens_a_one_hour_window() {
        let at = |h: i64, m: i64| h * 60 + m;
        assert!(in_window_at("03:00", at(3, 0)));
        assert!(in_window_at("03:00", at(3, 59)));
        assert!(!in_window_at("03:00", at(4, 0)));
        assert!(!in_window_at("03:00", at(2, 59)));
        // Across midnight.
        assert!(in_window_at("23:30", at(0, 15)));
        assert!(!in_window_at("23:30", at(0, 30)));
        assert!(in_window_at("not a time", at(12, 0)));
    }

    #[test]
    fn updates_follow_the_tracked_channel_or_the_rebase() {
        let pair = |r: &str, c: &str| (r.to_string(), c.to_string());
        assert_eq!(
            channel_to_follow(None, Some("origin:stable"), "os").unwrap(),
            pair("origin", "stable")
        );
        assert_eq!(
            channel_to_follow(Some("beta"), Some("origin:stable"), "os").unwrap(),
            pair("origin", "beta")
        );
        assert_eq!(
            channel_to_follow(Some("mirror:beta"), Some("origin:stable"), "os").unwrap(),
            pair("mirror", "beta")
        );
        let e = channel_to_follow(None, Some("os/a"), "os").unwrap_err();
        assert!(
            e.to_string().contains("follows the local ref 'os/a'"),
            "{e}"
        );
        let e = channel_to_follow(Some("beta"), None, "os").unwrap_err();
        assert!(e.to_string().contains("REMOTE:beta"), "{e}");
        let e = channel_to_follow(None, None, "os").unwrap_err();
        assert!(e.to_string().contains("has no deployment"), "{e}");
    }
}
