//! The rollout controller (docs/fleet.md): reads the machines' health reports from
//! the folder they were `PUT` into, counts each machine's latest verdict on each
//! version, and widens or halts the versions of a channel by the channel's rules,
//! signing a new index when anything changed. It runs on the publisher's side, by
//! hand or from a timer; machines need nothing but the static publication.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use arbor_core::lock::LockWait;
use arbor_remote::index::{ChannelIndex, VersionEntry};
use arbor_remote::report::{MAX_REPORT, Rejected, Report, SignedReport, Verdict};
use arbor_remote::rollout::RolloutRules;

use super::s3::{self, AccessKey, Synced};
use super::{Publisher, now};

/// The most report files one run reads per channel: a flood beyond it is counted,
/// not read (a fleet sends one report per machine and boot).
pub const MAX_FILES: usize = 1_000_000;

/// Reports that were not counted, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Ignored {
    /// Not a report envelope, or larger than a report can be.
    pub malformed: u64,
    /// The signature does not verify.
    pub bad_signature: u64,
    /// A format this arbor does not read.
    pub unknown_format: u64,
    /// About a version or commit the channel does not list, another channel, a bucket
    /// out of range, or from the future.
    pub impossible: u64,
    /// Beyond [`MAX_FILES`].
    pub not_read: u64,
}

/// How a version's machines fare: each machine counted once, by its latest verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VersionStatus {
    /// The version.
    pub version: String,
    /// Its phase, as published.
    pub phase: u8,
    /// Withdrawn (halted).
    pub withdrawn: bool,
    /// Machines whose latest verdict is good.
    pub good: u64,
    /// … a failed health check.
    pub failed: u64,
    /// … an automatic rollback.
    pub rolled_back: u64,
    /// The median time from boot to a good verdict, in milliseconds (from the reports
    /// that carry it).
    pub median_boot_to_verdict_ms: Option<u64>,
}

impl VersionStatus {
    /// Every machine that reported.
    pub fn machines(&self) -> u64 {
        self.good + self.failed + self.rolled_back
    }

    /// Machines whose latest verdict is a failure.
    pub fn failures(&self) -> u64 {
        self.failed + self.rolled_back
    }
}

/// A channel's versions as the reports tell.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChannelStatus {
    /// The channel.
    pub channel: String,
    /// Its versions, oldest first.
    pub versions: Vec<VersionStatus>,
    /// Reports not counted.
    pub ignored: Ignored,
}

/// What the controller did, or why it did nothing, for one version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "kebab-case")]
pub enum Decision {
    /// The phase grew.
    Widen {
        /// The version.
        version: String,
        /// From this percentage…
        from: u8,
        /// …to this one.
        to: u8,
    },
    /// Too many of its machines failed: withdrawn.
    Halt {
        /// The version.
        version: String,
        /// Machines whose verdict is a failure.
        failures: u64,
        /// Machines that reported.
        machines: u64,
    },
    /// Nothing to do yet, and why.
    Hold {
        /// The version.
        version: String,
        /// Why ("soaking: 12 min left", "3 of 5 good reports").
        why: String,
    },
}

/// One controller run on one channel.
#[derive(Clone, Debug, Serialize)]
pub struct RolloutRun {
    /// The channel's status as read, before the decisions.
    pub status: ChannelStatus,
    /// The decisions, one per version still rolling out.
    pub decisions: Vec<Decision>,
    /// A new index was signed.
    pub signed: bool,
    /// What was copied from the channel's S3 report bucket first, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synced: Option<Synced>,
    /// The S3 report form was past half its life: a new one was signed.
    pub form_renewed: bool,
}

/// How long one request to the report bucket may take.
const BUCKET_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Copies the channel's reports from its S3 bucket into `reports`, when its rules
/// name a form (which takes the bucket's key); nothing otherwise.
fn sync_bucket(
    rules: &RolloutRules,
    channel: &str,
    reports: &Path,
    key: Option<&AccessKey>,
) -> Result<Option<Synced>> {
    let Some(form) = &rules.report_form else {
        return Ok(None);
    };
    let key = key.with_context(|| {
        format!(
            "channel {channel}'s reports go to the S3 bucket {}: give the bucket's key \
             (--s3-credentials) to read them",
            form.url
        )
    })?;
    let bucket = s3::Bucket::of_form(form)?;
    s3::sync(&bucket, key, channel, reports, MAX_FILES, BUCKET_TIMEOUT)
        .with_context(|| format!("copying channel {channel}'s reports from {}", form.url))
        .map(Some)
}

/// Each machine's latest report on each version.
type Latest = HashMap<(String, String), Report>;

/// Reads `<reports>/<channel>/*.json`, bounded in size and number, never following a
/// symlink, and keeps each machine's latest verdict per version.
fn read_reports(dir: &Path, idx: &ChannelIndex, now_ms: i64) -> Result<(Latest, Ignored)> {
    let mut latest: Latest = HashMap::new();
    let mut ignored = Ignored::default();
    let folder = dir.join(&idx.channel);
    let entries = match std::fs::read_dir(&folder) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((latest, ignored)),
        Err(e) => return Err(e).with_context(|| format!("reading {}", folder.display())),
    };
    let mut read = 0usize;
    for e in entries {
        let e = e.with_context(|| format!("reading {}", folder.display()))?;
        if !e.file_name().to_string_lossy().ends_with(".json") {
            continue;
        }
        if read == MAX_FILES {
            ignored.not_read += 1;
            continue;
        }
        read += 1;
        let Some(bytes) = read_small(&e.path()) else {
            ignored.malformed += 1;
            continue;
        };
        let (key, report) = match SignedReport::verify(&bytes) {
            Ok(r) => r,
            Err(Rejected::Malformed) => {
                ignored.malformed += 1;
                continue;
            }
            Err(Rejected::BadSignature) => {
                ignored.bad_signature += 1;
                continue;
            }
            Err(Rejected::UnknownFormat) => {
                ignored.unknown_format += 1;
                continue;
            }
        };
        if !possible(&report, idx, now_ms) {
            ignored.impossible += 1;
            continue;
        }
        let slot = (report.version.clone(), key);
        if latest.get(&slot).is_none_or(|r| r.at_ms < report.at_ms) {
            latest.insert(slot, report);
        }
    }
    Ok((latest, ignored))
}

/// A regular file's bytes, if it is one and no larger than a report can be.
fn read_small(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    f.take(MAX_REPORT + 1).read_to_end(&mut bytes).ok()?;
    (bytes.len() as u64 <= MAX_REPORT).then_some(bytes)
}

/// A report the channel could have caused: its version with that commit, a bucket
/// that exists, a time not ahead of ours by more than a day.
fn possible(r: &Report, idx: &ChannelIndex, now_ms: i64) -> bool {
    r.channel == idx.channel
        && r.bucket < 100
        && r.at_ms <= now_ms + 86_400_000
        && idx
            .versions
            .iter()
            .any(|v| v.version == r.version && v.commit == r.commit)
}

fn status_of(idx: &ChannelIndex, latest: &Latest, ignored: Ignored) -> ChannelStatus {
    let mut by_version: BTreeMap<&str, Vec<&Report>> = BTreeMap::new();
    for ((version, _), r) in latest {
        by_version.entry(version).or_default().push(r);
    }
    let versions = idx
        .versions
        .iter()
        .map(|v| {
            let reports = by_version.get(v.version.as_str()).map_or(&[][..], |r| r);
            let count = |verdict| reports.iter().filter(|r| r.verdict == verdict).count() as u64;
            let mut times: Vec<u64> = reports
                .iter()
                .filter(|r| r.verdict == Verdict::Good)
                .filter_map(|r| r.boot_to_verdict_ms)
                .collect();
            times.sort_unstable();
            VersionStatus {
                version: v.version.clone(),
                phase: v.phase,
                withdrawn: v.withdrawn,
                good: count(Verdict::Good),
                failed: count(Verdict::Failed),
                rolled_back: count(Verdict::RolledBack),
                median_boot_to_verdict_ms: times.get(times.len() / 2).copied(),
            }
        })
        .collect();
    ChannelStatus {
        channel: idx.channel.clone(),
        versions,
        ignored,
    }
}

/// The decision on one version by the rules, at `now` (Unix seconds).
fn decide(v: &VersionEntry, s: &VersionStatus, rules: &RolloutRules, now: i64) -> Decision {
    let version = v.version.clone();
    let failures = s.failures();
    let machines = s.machines();
    if failures >= u64::from(rules.min_failed)
        && failures * 100 > u64::from(rules.max_failed_percent) * machines
    {
        return Decision::Halt {
            version,
            failures,
            machines,
        };
    }
    let Some(next) = rules.next_step(v.phase) else {
        return Decision::Hold {
            version,
            why: format!("offered to {}% of machines", v.phase),
        };
    };
    if s.good < u64::from(rules.min_good) {
        return Decision::Hold {
            version,
            why: format!("{} of {} good reports", s.good, rules.min_good),
        };
    }
    let since = v.phase_since.unwrap_or(v.published);
    let left = since + rules.soak_secs as i64 - now;
    if left > 0 {
        return Decision::Hold {
            version,
            why: format!("soaking: {left} s left at {}%", v.phase),
        };
    }
    Decision::Widen {
        version,
        from: v.phase,
        to: next,
    }
}

impl Publisher {
    /// How a channel's versions fare, from the reports in `reports` (read only).
    /// With the bucket's `key`, reports in the channel's S3 bucket are copied into
    /// `reports` first.
    pub fn rollout_status(
        &self,
        channel: &str,
        reports: &Path,
        key: Option<&AccessKey>,
    ) -> Result<ChannelStatus> {
        let idx = self.channel(channel)?;
        if let (Some(rules), Some(_)) = (&idx.rollout, key) {
            sync_bucket(rules, channel, reports, key)?;
        }
        let (latest, ignored) = read_reports(reports, &idx, now().timestamp_millis())?;
        Ok(status_of(&idx, &latest, ignored))
    }

    /// One controller run on `channel`: widens or halts its versions by its rules and
    /// signs a new index if anything changed (not with `dry_run`). A channel whose
    /// reports go to an S3 bucket takes the bucket's `key`: its new reports are copied
    /// into `reports` first, and its form is signed again past half its life.
    pub fn rollout(
        &self,
        channel: &str,
        reports: &Path,
        key: Option<&AccessKey>,
        dry_run: bool,
        wait: LockWait<'_>,
    ) -> Result<RolloutRun> {
        let _lock = self.lock(wait)?;
        let mut idx = self.channel(channel)?;
        let rules = idx.rollout.clone().with_context(|| {
            format!("channel {channel} has no rollout rules ('arbor publish rollout-rules')")
        })?;
        let now = now();
        let synced = sync_bucket(&rules, channel, reports, key)?;
        let (latest, ignored) = read_reports(reports, &idx, now.timestamp_millis())?;
        let status = status_of(&idx, &latest, ignored);
        let mut form_renewed = false;
        if let (Some(form), Some(key)) = (&rules.report_form, key)
            && s3::needs_renewal(form, now.timestamp())
        {
            let bucket = s3::Bucket::of_form(form)?;
            // As long as the publisher chose for the form it replaces.
            let valid = std::time::Duration::from_secs((form.expires - form.signed).max(1) as u64);
            let renewed = s3::sign_form(&bucket, key, now, valid);
            if let Some(r) = idx.rollout.as_mut() {
                r.report_form = Some(renewed);
                form_renewed = true;
            }
        }
        let mut decisions = Vec::new();
        for (v, s) in idx.versions.iter_mut().zip(&status.versions) {
            if v.withdrawn {
                continue;
            }
            let d = decide(v, s, &rules, now.timestamp());
            match &d {
                Decision::Widen { to, .. } => {
                    v.phase = *to;
                    v.phase_since = Some(now.timestamp());
                }
                Decision::Halt { .. } => {
                    v.withdrawn = true;
                    v.phase = 0;
                    v.phase_since = Some(now.timestamp());
                }
                Decision::Hold { .. } => {}
            }
            decisions.push(d);
        }
        let changed = form_renewed
            || decisions
                .iter()
                .any(|d| !matches!(d, Decision::Hold { .. }));
        if changed && !dry_run {
            self.sign(Some(&idx))?;
        }
        Ok(RolloutRun {
            status,
            decisions,
            signed: changed && !dry_run,
            synced,
            form_renewed: form_renewed && !dry_run,
        })
    }

    /// Sets a channel's rollout rules (checked) and signs its index again.
    pub fn set_rollout_rules(
        &self,
        channel: &str,
        rules: RolloutRules,
        wait: LockWait<'_>,
    ) -> Result<ChannelIndex> {
        let _lock = self.lock(wait)?;
        rules.check()?;
        let mut idx = self.channel(channel)?;
        anyhow::ensure!(
            !idx.versions.is_empty(),
            "channel {channel} has no versions yet ('arbor publish add' first)"
        );
        idx.rollout = Some(rules);
        self.sign(Some(&idx))?;
        Ok(idx)
    }

    /// Withdraws a version by hand, as a halt would.
    pub fn withdraw(&self, channel: &str, version: &str, wait: LockWait<'_>) -> Result<()> {
        let _lock = self.lock(wait)?;
        let mut idx = self.channel(channel)?;
        idx.version(version)?;
        for v in idx.versions.iter_mut().filter(|v| v.version == version) {
            v.withdrawn = true;
            v.phase = 0;
            v.phase_since = Some(now().timestamp());
        }
        self.sign(Some(&idx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(phase: u8, since: i64) -> VersionEntry {
        let f = arbor_remote::index::FileRef {
            path: "manifests/x".into(),
            size: 1,
            blake3: "0".repeat(64),
            sha256: None,
        };
        VersionEntry {
            version: "2".into(),
            commit: arbor_store::ObjectId::of(b"2"),
            published: 0,
            critical: false,
            phase,
            release_notes: None,
            manifest: f,
            full_bytes: 0,
            raw_bytes: 0,
            deltas: Vec::new(),
            packages: None,
            requires: None,
            withdrawn: false,
            phase_since: Some(since),
            digests: None,
        }
    }

    fn status(good: u64, failed: u64, rolled_back: u64) -> VersionStatus {
        VersionStatus {
            good,
            failed,
            rolled_back,
            ..VersionStatus::default()
        }
    }

    #[test]
    fn widens_after_enough_good_reports_and_the_soak_and_halts_on_failures() {
        let rules = RolloutRules {
            min_good: 3,
            max_failed_percent: 20,
            min_failed: 1,
            soak_secs: 600,
            ..RolloutRules::default()
        };
        let v = entry(1, 1000);
        let d = |s: &VersionStatus, now| decide(&v, s, &rules, now);
        assert!(
            matches!(d(&status(2, 0, 0), 5000), Decision::Hold { why, .. } if why.contains("2 of 3"))
        );
        assert!(
            matches!(d(&status(3, 0, 0), 1500), Decision::Hold { why, .. } if why.contains("soaking"))
        );
        assert_eq!(
            d(&status(3, 0, 0), 1600),
            Decision::Widen {
                version: "2".into(),
                from: 1,
                to: 10
            }
        );
        // One failing canary of one: halted at once.
        assert!(matches!(d(&status(0, 1, 0), 1001), Decision::Halt { .. }));
        assert!(matches!(d(&status(0, 0, 1), 1001), Decision::Halt { .. }));
        // One of ten is below 20%: widening goes on.
        assert!(matches!(d(&status(9, 1, 0), 1600), Decision::Widen { .. }));
        // At 100%, a failing version still halts; a healthy one is done.
        let full = entry(100, 0);
        assert!(
            matches!(decide(&full, &status(5, 0, 0), &rules, 9999), Decision::Hold { why, .. } if why.contains("100%"))
        );
        assert!(matches!(
            decide(&full, &status(5, 5, 0), &rules, 9999),
            Decision::Halt { .. }
        ));
    }
}
