//! The persisted update state machine (docs/remote.md):
//!
//! ```text
//! Idle → Checking → Downloading → Verifying → Staging → Staged
//!   ─(reboot)→ Testing ─(health ok)→ Active
//!                      └(health fails)→ RollingBack ─(boots the old one)→ Failed
//! any step ─(error)→ Failed
//! ```
//! Kept in the state database so `update-status` and the daemon tell the same story
//! after a restart or a reboot. The boot-time states are also reconciled from the boot
//! entries whenever the state is read, since the boot itself writes nothing.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use arbor_core::wire::FORMAT_VERSION;
use arbor_statedb::{PartialDownload, StateDb};
use arbor_store::ObjectId;
use arbor_sysroot::Sysroot;

/// Where an update is.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    zvariant::Type,
    zvariant::Value,
    zvariant::OwnedValue,
)]
#[zvariant(signature = "s", rename_all = "kebab-case")]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Nothing under way.
    #[default]
    Idle,
    /// Reading the remote's signed metadata.
    Checking,
    /// Fetching objects or deltas.
    Downloading,
    /// Checking that the fetched commit is complete.
    Verifying,
    /// Making the new deployment.
    Staging,
    /// Deployed; it becomes the default at shutdown and runs after the reboot.
    Staged,
    /// Booted into the new version, which has not yet proved healthy.
    Testing,
    /// The new version runs and passed its health checks.
    Active,
    /// The new version failed its health checks; the loader falls back to the old one.
    RollingBack,
    /// The last attempt failed (see `error`).
    Failed,
}

impl State {
    /// The name shown to users and over D-Bus.
    pub fn name(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Checking => "checking",
            State::Downloading => "downloading",
            State::Verifying => "verifying",
            State::Staging => "staging",
            State::Staged => "staged",
            State::Testing => "testing",
            State::Active => "active",
            State::RollingBack => "rolling-back",
            State::Failed => "failed",
        }
    }
}

/// The persisted record, and the update-status document (`arbor update-status
/// --json`, the daemon's `UpdateStatus`, `arbor serve`'s `update_status`): as read by
/// [`current`], it also lists the partial downloads kept for resuming.
#[derive(
    Clone,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    zvariant::Type,
    zvariant::Value,
    zvariant::OwnedValue,
)]
#[zvariant(signature = "dict")]
pub struct UpdateRecord {
    /// [`FORMAT_VERSION`] of the document.
    #[serde(default = "format_version")]
    pub format_version: u32,
    /// Where the update is.
    pub state: State,
    /// The remote and channel followed.
    pub remote: Option<String>,
    /// The channel.
    pub channel: Option<String>,
    /// The newest version offered to this device at the last check.
    pub available: Option<String>,
    /// It is critical.
    #[serde(default)]
    pub critical: bool,
    /// The version being (or last) installed.
    pub version: Option<String>,
    /// Its commit.
    pub commit: Option<ObjectId>,
    /// The deployment made for it (`<commit>.<serial>`).
    pub deployment: Option<String>,
    /// Download progress.
    pub bytes_done: u64,
    /// Download size.
    pub bytes_total: u64,
    /// The error of the last failure.
    pub error: Option<String>,
    /// The last failure was the update not booting well: the previous deployment
    /// runs again (what a panel shows as "rolled back").
    #[serde(default)]
    pub rolled_back: bool,
    /// Unix time of the last successful check.
    pub last_check: Option<i64>,
    /// Unix time of the last change.
    pub changed: i64,
    /// What the last check offered, for a panel to show before anything is fetched;
    /// `None` when up to date, and once the offered version is staged.
    #[serde(default)]
    pub offer: Option<Offer>,
    /// Downloads cut short, resumed by the next run (filled in by [`current`], not
    /// stored).
    #[serde(default)]
    pub downloads: Vec<PartialDownload>,
    /// The mildest way to apply the staged update (docs/activation.md), worked out
    /// when it was staged; `None` otherwise.
    #[serde(default)]
    pub activation: Option<arbor_live::ladder::Activation>,
    /// The day (UTC, `YYYY-MM-DD`) `downloaded_bytes` counts, for the daily quota.
    #[serde(default)]
    pub downloaded_day: String,
    /// Bytes downloaded by updates that day.
    #[serde(default)]
    pub downloaded_bytes: u64,
}

fn format_version() -> u32 {
    FORMAT_VERSION
}

/// A version offered to this device, as a check found it: what `AvailableUpdate` shows.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    zvariant::Type,
    zvariant::Value,
    zvariant::OwnedValue,
)]
#[zvariant(signature = "dict")]
pub struct Offer {
    /// The version string.
    pub version: String,
    /// Its commit.
    pub commit: ObjectId,
    /// The remote offering it.
    pub remote: String,
    /// The channel.
    pub channel: String,
    /// Security or otherwise urgent.
    pub critical: bool,
    /// Where its release notes are (as published).
    pub release_notes: Option<String>,
    /// Unix time of its publication.
    pub published: i64,
    /// Bytes to download by the cheapest path (0: everything is stored).
    pub download_bytes: u64,
    /// That path: full, deltas or present.
    pub method: String,
    /// The package changes from the running base, when both sides list their
    /// packages.
    pub packages: Option<arbor_store::dpkg::PackageDiff>,
    /// How it would be applied, estimated from `packages` before it is downloaded
    /// (docs/activation.md); None without package lists or a booted deployment.
    pub activation: Option<arbor_live::ladder::Activation>,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn db(sysroot: &Sysroot) -> Result<StateDb> {
    StateDb::open(&sysroot.state_db_path())
}

/// Reads the stored record as it is (a record this arbor cannot read is a fresh one:
/// it only tells, it decides nothing).
pub fn stored(sysroot: &Sysroot) -> Result<UpdateRecord> {
    let rec: UpdateRecord = match db(sysroot)?.update_record()? {
        Some(json) => serde_json::from_str(&json).unwrap_or_default(),
        None => UpdateRecord::default(),
    };
    Ok(UpdateRecord {
        format_version: FORMAT_VERSION,
        ..rec
    })
}

/// Writes a record.
pub fn save(sysroot: &Sysroot, rec: &mut UpdateRecord) -> Result<()> {
    rec.changed = now();
    rec.format_version = FORMAT_VERSION;
    let stored = UpdateRecord {
        downloads: Vec::new(),
        ..rec.clone()
    };
    db(sysroot)?.set_update_record(&serde_json::to_string(&stored)?)
}

/// Moves the record to `state` (clearing the error unless failing) and saves it.
pub fn enter(sysroot: &Sysroot, rec: &mut UpdateRecord, state: State) -> Result<()> {
    rec.state = state;
    if state != State::Failed {
        rec.error = None;
        rec.rolled_back = false;
    }
    save(sysroot, rec)
}

/// The record, with the boot-time states brought up to date from the boot entries,
/// and the partial downloads: the update-status document.
pub fn current(sysroot: &Sysroot) -> Result<UpdateRecord> {
    let mut rec = reconciled(sysroot)?;
    rec.downloads = db(sysroot)?.downloads()?;
    Ok(rec)
}

fn reconciled(sysroot: &Sysroot) -> Result<UpdateRecord> {
    let mut rec = stored(sysroot)?;
    let Some(target) = rec.deployment.clone() else {
        return Ok(rec);
    };
    if !matches!(
        rec.state,
        State::Staged | State::Testing | State::RollingBack
    ) {
        return Ok(rec);
    }
    let list = sysroot.deployments()?;
    let Some(booted) = list.iter().find(|d| d.booted) else {
        return Ok(rec);
    };
    let before = rec.clone();
    reconcile(
        &mut rec,
        booted.dir_name() == target,
        booted.tries.is_some(),
    );
    if rec != before {
        save(sysroot, &mut rec)?;
    }
    Ok(rec)
}

/// The boot-time transitions, read from what booted: the update's deployment while
/// still counting tries is Testing (or stays RollingBack once a check failed), and
/// Active once marked good; another deployment booting after Testing or RollingBack
/// means the update failed and the old one runs again.
fn reconcile(rec: &mut UpdateRecord, target_booted: bool, counting: bool) {
    let next = if target_booted {
        if counting && rec.state != State::RollingBack {
            State::Testing
        } else if counting {
            State::RollingBack
        } else {
            State::Active
        }
    } else if matches!(rec.state, State::Testing | State::RollingBack) {
        let why = rec
            .error
            .take()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        rec.error = Some(format!(
            "version {} did not boot well{why}; the previous deployment runs again",
            rec.version.as_deref().unwrap_or("?")
        ));
        rec.rolled_back = true;
        State::Failed
    } else {
        rec.state
    };
    if next != State::Staged {
        rec.activation = None;
    }
    rec.state = next;
}

/// Called by the health check: the update's deployment passed (Active) or failed
/// (RollingBack). Best effort: the health check's own result stands regardless.
pub fn note_health(sysroot: &Sysroot, booted: &str, result: Result<(), String>) {
    let Ok(mut rec) = stored(sysroot) else {
        return;
    };
    if rec.deployment.as_deref() != Some(booted)
        || !matches!(
            rec.state,
            State::Staged | State::Testing | State::RollingBack
        )
    {
        return;
    }
    match result {
        Ok(()) => {
            let _ = enter(sysroot, &mut rec, State::Active);
        }
        Err(failed) => {
            // Kept, so that the failure after the fallback says which check failed.
            rec.state = State::RollingBack;
            rec.error = Some(format!("health check failed: {failed}"));
            let _ = save(sysroot, &mut rec);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(state: State) -> UpdateRecord {
        UpdateRecord {
            state,
            version: Some("2".into()),
            ..UpdateRecord::default()
        }
    }

    fn after(state: State, target_booted: bool, counting: bool) -> UpdateRecord {
        let mut r = rec(state);
        reconcile(&mut r, target_booted, counting);
        r
    }

    #[test]
    fn boot_time_states_follow_what_booted() {
        use State::*;
        // Staged, then the new deployment boots with tries counting: testing.
        assert_eq!(after(Staged, true, true).state, Testing);
        // Marked good: active.
        assert_eq!(after(Testing, true, false).state, Active);
        // A failed check made it RollingBack; still on it while it counts: no change.
        assert_eq!(after(RollingBack, true, true).state, RollingBack);
        // The old deployment runs again: failed, saying which version.
        let r = after(Testing, false, false);
        assert_eq!(r.state, Failed);
        assert!(r.rolled_back);
        assert!(r.error.unwrap().contains("version 2 did not boot well"));
        let mut r = rec(RollingBack);
        r.error = Some("check 10-web failed".into());
        reconcile(&mut r, false, false);
        assert_eq!(r.state, Failed);
        assert!(r.error.unwrap().contains("(check 10-web failed)"));
        // Staged but not booted yet: nothing happened.
        assert_eq!(after(Staged, false, false).state, Staged);
    }
}
