//! A channel's rollout rules (docs/fleet.md): where its machines send health reports,
//! and when the publisher's rollout controller widens a version's phase or halts it.
//! They live in the channel's signed index, so a machine takes the report location
//! from nowhere else, and a controller run reads the rules it acts on from the same
//! place the machines trust.

use anyhow::{Result, ensure};
use serde::{Deserialize, Serialize};

/// The rules, as the publisher set them (`arbor publish rollout-rules`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRules {
    /// Where machines `PUT` their reports: the URL of a folder (a WebDAV path, or an
    /// S3-compatible prefix that accepts `PUT`). Each report goes to
    /// `<reports>/<channel>/<key>-<time>.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reports: Option<String>,
    /// The phases a version goes through, ascending, the last one 100.
    pub steps: Vec<u8>,
    /// Good reports from machines of the current phase before it widens.
    pub min_good: u32,
    /// A version halts when more than this percentage of its machines' verdicts are
    /// failures (a failed health check or an automatic rollback)…
    pub max_failed_percent: u8,
    /// …and at least this many machines failed (1: the first failing canary counts).
    pub min_failed: u32,
    /// Seconds a phase soaks before it widens.
    pub soak_secs: u64,
}

impl Default for RolloutRules {
    fn default() -> Self {
        RolloutRules {
            reports: None,
            steps: vec![1, 10, 50, 100],
            min_good: 5,
            max_failed_percent: 10,
            min_failed: 1,
            soak_secs: 3600,
        }
    }
}

/// The longest report URL an index may name.
const MAX_URL: usize = 1024;

impl RolloutRules {
    /// Checks rules from outside (an index) or from the command line.
    pub fn check(&self) -> Result<()> {
        ensure!(
            !self.steps.is_empty()
                && self.steps.len() <= 16
                && self.steps.windows(2).all(|w| w[0] < w[1])
                && self.steps[0] >= 1
                && self.steps.last() == Some(&100),
            "rollout steps {:?}: give ascending percentages ending in 100",
            self.steps
        );
        ensure!(
            self.max_failed_percent <= 100,
            "max_failed_percent {}: a percentage",
            self.max_failed_percent
        );
        ensure!(self.min_failed >= 1, "min_failed must be at least 1");
        if let Some(u) = &self.reports {
            ensure!(u.len() <= MAX_URL, "a report URL of {} bytes", u.len());
            let url = url::Url::parse(u).map_err(|e| anyhow::anyhow!("report URL {u:?}: {e}"))?;
            ensure!(
                matches!(url.scheme(), "http" | "https")
                    && url.query().is_none()
                    && url.fragment().is_none()
                    && url.username().is_empty()
                    && url.password().is_none(),
                "report URL {u:?}: give an http(s) URL of a folder, without credentials, \
                 query or fragment"
            );
        }
        Ok(())
    }

    /// The next phase after `phase`: the first step above it.
    pub fn next_step(&self, phase: u8) -> Option<u8> {
        self.steps.iter().copied().find(|s| *s > phase)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_from_outside_are_checked() {
        let good = RolloutRules {
            reports: Some("http://reports.example/fleet/".into()),
            ..RolloutRules::default()
        };
        good.check().unwrap();
        assert_eq!(good.next_step(0), Some(1));
        assert_eq!(good.next_step(10), Some(50));
        assert_eq!(good.next_step(100), None);
        for (bad, named) in [
            (vec![10, 1, 100], "ascending"),
            (vec![1, 50], "ending in 100"),
            (vec![0, 100], "ascending"),
        ] {
            let r = RolloutRules {
                steps: bad,
                ..RolloutRules::default()
            };
            assert!(format!("{:#}", r.check().unwrap_err()).contains(named));
        }
        for url in [
            "file:///etc/shadow",
            "http://user:pw@host/x",
            "http://host/x?sig=1",
            "not a url",
        ] {
            let r = RolloutRules {
                reports: Some(url.into()),
                ..RolloutRules::default()
            };
            assert!(r.check().is_err(), "{url}");
        }
    }
}
