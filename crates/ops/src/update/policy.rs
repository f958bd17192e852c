//! Update policies: `/etc/arbor/arbor.toml` (docs/remote.md). Every key is optional;
//! a missing file means the defaults.
//!
//! ```toml
//! check_interval = "24h"    # how often the timer checks
//! auto_download = true      # fetch an offered version in the background
//! auto_install = false      # also stage it (it runs after the next reboot)
//! critical_install = true   # stage critical versions even without auto_install
//! notify_available = true   # say that a version is available (in auto-update's output)
//! preferred_time = "03:00"  # when the timer runs (local time, HH:MM)
//! channel = "stable"        # the channel `arbor rebase` uses when none is named
//! reset_keep = ["/home", "/root"]  # what `arbor reset --level all` carries over
//! reset_keep_etc = ["/etc/fstab", "/etc/machine-id", ...]  # what every reset keeps of /etc
//! apply = ""                # once auto_install staged a version: "" (at the next boot),
//!                           # "auto" or a step (docs/activation.md)
//! apply_forbid = []         # steps never taken: "live", "soft-reboot", "kexec"
//! max_rate = ""             # download at most this fast: "" (no cap), "500K", "2M"
//! daily_quota = ""          # automatic downloads stop at this many bytes a day: "" (none), "2G"
//! metered_download = false  # download automatically on a metered connection too
//! reports = "off"           # health reports to the channel's report location:
//!                           # "off", "on", "no-boot-time" (docs/fleet.md)
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};

/// Where the policies are read from, unless `ARBOR_CONFIG` names another file.
pub const CONFIG_PATH: &str = "/etc/arbor/arbor.toml";

/// The update policies.
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
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Interval between checks, as `30m`, `24h`, `7d`.
    pub check_interval: String,
    /// Download offered versions automatically.
    pub auto_download: bool,
    /// Stage downloaded versions automatically.
    pub auto_install: bool,
    /// Stage critical versions even when `auto_install` is off.
    pub critical_install: bool,
    /// Say when a version is available.
    pub notify_available: bool,
    /// Local time of day for automatic runs, `HH:MM`.
    pub preferred_time: String,
    /// The default channel.
    pub channel: String,
    /// Paths (below `/var`, or linked into it like `/home`) that `arbor reset --level
    /// all` copies into the new `/var`.
    pub reset_keep: Vec<String>,
    /// Paths of `/etc` that every reset carries into the pristine `/etc`: what makes
    /// this machine boot and be itself (its mounts, identity, host keys, arbor's own
    /// policy and checks). A last component may end in `*`.
    pub reset_keep_etc: Vec<String>,
    /// What an automatic update does once staged: empty (it runs from the next boot),
    /// `auto` (the mildest safe step) or a step, the mildest allowed
    /// (docs/activation.md).
    pub apply: String,
    /// Steps never taken, fleet-wide (`live`, `soft-reboot`, `kexec`; a reboot
    /// cannot be forbidden): for `--apply` and for automatic updates.
    pub apply_forbid: Vec<String>,
    /// Health reports after each boot verdict (docs/fleet.md): `off`, `on`, or
    /// `no-boot-time` (without the time from boot to verdict). Never a hostname or
    /// an address either way.
    pub reports: String,
    /// The download rate cap in bytes a second with an optional K/M/G (`500K`); empty:
    /// none. `--max-rate` overrides it for one run.
    pub max_rate: String,
    /// Automatic downloads that would pass this many bytes in a day (UTC) wait for the
    /// next day (`500M`, `2G`); empty: no quota.
    pub daily_quota: String,
    /// Download automatically on a metered connection (NetworkManager's `Metered`)
    /// too; critical versions come regardless.
    pub metered_download: bool,
}

/// What a reset keeps of `/etc` unless the policy says otherwise.
pub const RESET_KEEP_ETC: &[&str] = &[
    "/etc/fstab",
    "/etc/crypttab",
    "/etc/machine-id",
    "/etc/hostname",
    "/etc/arbor",
    "/etc/ssh/ssh_host_*",
];

impl Default for Policy {
    fn default() -> Self {
        Policy {
            check_interval: "24h".into(),
            auto_download: true,
            auto_install: false,
            critical_install: true,
            notify_available: true,
            preferred_time: "03:00".into(),
            channel: "stable".into(),
            reset_keep: vec!["/home".into(), "/root".into()],
            reset_keep_etc: RESET_KEEP_ETC.iter().map(|p| p.to_string()).collect(),
            apply: String::new(),
            apply_forbid: Vec::new(),
            reports: "off".into(),
            max_rate: String::new(),
            daily_quota: String::new(),
            metered_download: false,
        }
    }
}

impl Policy {
    /// The policy file: `path`, else `$ARBOR_CONFIG`, else [`CONFIG_PATH`].
    pub fn location(path: Option<&Path>) -> PathBuf {
        let env = std::env::var_os("ARBOR_CONFIG");
        path.map(Path::to_path_buf)
            .or(env.map(Into::into))
            .unwrap_or_else(|| CONFIG_PATH.into())
    }

    /// Reads the policy file (defaults when it does not exist) and checks its values.
    pub fn load(path: Option<&Path>) -> Result<Policy> {
        let path = Policy::location(path);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Policy::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let p: Policy = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        p.check().with_context(|| format!("{}", path.display()))?;
        Ok(p)
    }

    /// This policy with `changes` applied (names and values as in the file), checked:
    /// an unknown name, a value of the wrong type or a bad value is an error that
    /// names it. What a settings panel sends (`SetAutomaticUpdatePolicy`).
    pub fn with_changes(&self, changes: toml::Table) -> Result<Policy> {
        let mut table = toml::Table::try_from(self).context("the current policy")?;
        table.extend(changes);
        let p: Policy = table.try_into()?;
        p.check()?;
        Ok(p)
    }

    /// Writes the policy file durably (aside, synced, renamed): a crash leaves the old
    /// file or the new one. The file is written whole, so comments in it are not kept.
    pub fn save(&self, path: Option<&Path>) -> Result<()> {
        let path = Policy::location(path);
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let text = format!(
            "# arbor's update policies (docs/remote.md), last written through arbord.\n{}",
            toml::to_string(self).context("encoding the policy")?
        );
        arbor_core::fsutil::write_file_atomic(&path, text.as_bytes(), 0o644)
            .with_context(|| format!("writing {}", path.display()))
    }

    fn check(&self) -> Result<()> {
        arbor_publish::parse_duration(&self.check_interval).context("check_interval")?;
        let ok = self.preferred_time.split_once(':').is_some_and(|(h, m)| {
            h.parse::<u8>().is_ok_and(|h| h < 24)
                && m.len() == 2
                && m.parse::<u8>().is_ok_and(|m| m < 60)
        });
        ensure!(ok, "preferred_time '{}' is not HH:MM", self.preferred_time);
        ensure!(
            self.reset_keep.len() <= 64
                && self
                    .reset_keep
                    .iter()
                    .all(|p| p.starts_with('/') && !p.split('/').any(|c| c == "..")),
            "reset_keep must list absolute paths without '..'"
        );
        ensure!(
            self.reset_keep_etc.len() <= 64
                && self
                    .reset_keep_etc
                    .iter()
                    .all(|p| p.starts_with("/etc/") && !p.split('/').any(|c| c == "..")),
            "reset_keep_etc must list paths below /etc without '..'"
        );
        self.apply_step().context("apply")?;
        super::apply_step::limits(None, &self.apply_forbid)?;
        crate::report::parse_reporting(&self.reports)?;
        self.max_rate().context("max_rate")?;
        self.daily_quota().context("daily_quota")?;
        ensure!(
            arbor_remote::index::valid_channel(&self.channel),
            "channel '{}' is not a channel name",
            self.channel
        );
        Ok(())
    }

    /// The `apply` setting: None when a staged version waits for the next boot.
    pub fn apply_step(&self) -> Result<Option<arbor_live::activation::Step>> {
        match self.apply.as_str() {
            "" => Ok(None),
            w => super::apply_step::parse_apply(w).map(Some),
        }
    }

    /// The `max_rate` setting in bytes a second (None: no cap).
    pub fn max_rate(&self) -> Result<Option<u64>> {
        match self.max_rate.trim() {
            "" => Ok(None),
            r => arbor_remote::rate::parse_rate(r).map(Some),
        }
    }

    /// The `daily_quota` setting in bytes (None: no quota).
    pub fn daily_quota(&self) -> Result<Option<u64>> {
        match self.daily_quota.trim() {
            "" => Ok(None),
            q => arbor_remote::rate::parse_size(q).map(Some),
        }
    }

    /// What `arbor auto-update` does with an offered version.
    pub fn action(&self, critical: bool) -> Action {
        if self.auto_install || (critical && self.critical_install) {
            Action::Stage
        } else if self.auto_download {
            Action::Download
        } else {
            Action::Check
        }
    }
}

/// How far an update goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Action {
    /// Only look.
    Check,
    /// Fetch and verify, do not deploy.
    Download,
    /// Fetch, verify and stage the deployment.
    Stage,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_bad_values_are_named() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("arbor.toml");
        assert_eq!(Policy::load(Some(&p)).unwrap(), Policy::default());
        std::fs::write(&p, "auto_install = true\npreferred_time = \"04:30\"\n").unwrap();
        let pol = Policy::load(Some(&p)).unwrap();
        assert!(pol.auto_install && pol.preferred_time == "04:30");
        assert_eq!(pol.action(false), Action::Stage);
        assert_eq!(Policy::default().action(false), Action::Download);
        assert_eq!(Policy::default().action(true), Action::Stage);
        std::fs::write(&p, "preferred_time = \"25:00\"\n").unwrap();
        assert!(format!("{:#}", Policy::load(Some(&p)).unwrap_err()).contains("preferred_time"));
        std::fs::write(&p, "auto_instal = true\n").unwrap();
        assert!(format!("{:#}", Policy::load(Some(&p)).unwrap_err()).contains("auto_instal"));
    }

    #[test]
    fn changes_are_checked_then_saved_whole() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("etc/arbor/arbor.toml");
        let change = |k: &str, v: toml::Value| toml::Table::from_iter([(k.to_string(), v)]);
        let pol = Policy::default()
            .with_changes(change("auto_install", true.into()))
            .unwrap()
            .with_changes(change("preferred_time", "04:30".into()))
            .unwrap();
        assert!(pol.auto_install && pol.preferred_time == "04:30");
        pol.save(Some(&p)).unwrap();
        assert_eq!(Policy::load(Some(&p)).unwrap(), pol);
        for (k, v, named) in [
            (
                "preferred_time",
                toml::Value::from("25:00"),
                "preferred_time",
            ),
            ("auto_instal", true.into(), "auto_instal"),
            ("auto_install", "yes".into(), "auto_install"),
            ("check_interval", "often".into(), "check_interval"),
            ("channel", "../x".into(), "channel"),
            ("apply", "fast".into(), "apply"),
            ("reports", "always".into(), "reports"),
            ("max_rate", "fast".into(), "max_rate"),
            (
                "apply_forbid",
                toml::Value::Array(vec!["reboot".into()]),
                "reboot",
            ),
        ] {
            let e = pol.with_changes(change(k, v)).unwrap_err();
            assert!(format!("{e:#}").contains(named), "{k}: {e:#}");
        }
    }
}
