//! A channel's rollout rules (docs/fleet.md): where its machines send health reports,
//! and when the publisher's rollout controller widens a version's phase or halts it.
//! They live in the channel's signed index, so a machine takes the report location
//! from nowhere else, and a controller run reads the rules it acts on from the same
//! place the machines trust.

use std::collections::BTreeMap;

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
    /// Or an S3 bucket's pre-signed POST form that machines upload their reports
    /// through (instead of `reports`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_form: Option<ReportForm>,
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
            report_form: None,
            steps: vec![1, 10, 50, 100],
            min_good: 5,
            max_failed_percent: 10,
            min_failed: 1,
            soak_secs: 3600,
        }
    }
}

/// An S3 pre-signed POST ("browser-based upload", signature version 4): a policy the
/// publisher signed with the bucket's key, which lets anyone who has it upload a small
/// object whose key starts with `key_prefix`, until it expires, and nothing else. A
/// pre-signed `PUT` URL names one object, so one URL for a fleet would have every
/// machine overwrite the same report; the POST policy is how S3 lets many anonymous
/// clients write under a prefix. The publisher's controller signs a new one before
/// this one expires (docs/fleet.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportForm {
    /// Where the form is posted: the bucket's URL (`https://HOST/BUCKET/`).
    pub url: String,
    /// What every report's key starts with (the policy allows no other); a report is
    /// `<key_prefix><channel>/<key>-<time>.json`, as under a `reports` folder.
    pub key_prefix: String,
    /// The signed fields, posted as they are: `policy`, `x-amz-algorithm`,
    /// `x-amz-credential`, `x-amz-date`, `x-amz-signature`.
    pub fields: BTreeMap<String, String>,
    /// When it was signed (Unix seconds).
    pub signed: i64,
    /// When the policy expires (Unix seconds).
    pub expires: i64,
}

/// The fields a report form may carry: S3's signature version 4 POST fields.
const FORM_FIELDS: &[&str] = &[
    "policy",
    "x-amz-algorithm",
    "x-amz-credential",
    "x-amz-date",
    "x-amz-signature",
    "x-amz-security-token",
];

/// The longest report URL an index may name.
const MAX_URL: usize = 1024;

/// Checks a report URL from outside: http(s), no credentials, query or fragment.
fn check_url(u: &str, what: &str) -> Result<()> {
    ensure!(u.len() <= MAX_URL, "a {what} of {} bytes", u.len());
    let url = url::Url::parse(u).map_err(|e| anyhow::anyhow!("{what} {u:?}: {e}"))?;
    ensure!(
        matches!(url.scheme(), "http" | "https")
            && url.query().is_none()
            && url.fragment().is_none()
            && url.username().is_empty()
            && url.password().is_none(),
        "{what} {u:?}: give an http(s) URL of a folder, without credentials, query or \
         fragment"
    );
    Ok(())
}

impl ReportForm {
    /// Checks a form from outside (an index): a URL as for `reports`, a key prefix of
    /// plain path segments, only S3's POST fields, each value short and on one line
    /// (they go into a multipart body).
    pub fn check(&self) -> Result<()> {
        check_url(&self.url, "report form URL")?;
        let p = &self.key_prefix;
        ensure!(
            p.len() <= 256
                && !p.starts_with('/')
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
                && p.split('/').all(|s| s != ".." && s != "."),
            "report key prefix {p:?}: give plain path segments"
        );
        ensure!(
            self.fields.len() <= FORM_FIELDS.len(),
            "a report form of {} fields",
            self.fields.len()
        );
        for (k, v) in &self.fields {
            ensure!(
                FORM_FIELDS.contains(&k.as_str()),
                "report form field {k:?}: not an S3 POST field"
            );
            ensure!(
                v.len() <= 4096 && v.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"'),
                "report form field {k}: not a short line of plain text"
            );
        }
        Ok(())
    }
}

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
            check_url(u, "report URL")?;
        }
        if let Some(f) = &self.report_form {
            ensure!(
                self.reports.is_none(),
                "give reports a folder URL or an S3 form, not both"
            );
            f.check()?;
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

    #[test]
    fn report_forms_from_outside_are_checked() {
        let form = ReportForm {
            url: "https://s3.example.org/fleet/".into(),
            key_prefix: "reports/".into(),
            fields: BTreeMap::from([
                ("policy".to_string(), "eyJ9".to_string()),
                ("x-amz-signature".into(), "ab12".into()),
            ]),
            signed: 0,
            expires: 600,
        };
        let rules = |f: ReportForm| RolloutRules {
            report_form: Some(f),
            ..RolloutRules::default()
        };
        rules(form.clone()).check().unwrap();
        let both = RolloutRules {
            reports: Some("https://h/r/".into()),
            ..rules(form.clone())
        };
        assert!(format!("{:#}", both.check().unwrap_err()).contains("not both"));
        type Spoil = Box<dyn Fn(&mut ReportForm)>;
        let bad: Vec<(&str, Spoil)> = vec![
            ("query", Box::new(|f| f.url = "https://h/b/?x=1".into())),
            ("prefix ..", Box::new(|f| f.key_prefix = "r/../x/".into())),
            ("prefix /", Box::new(|f| f.key_prefix = "/r/".into())),
            ("prefix space", Box::new(|f| f.key_prefix = "r s/".into())),
            (
                "unknown field",
                Box::new(|f| {
                    f.fields
                        .insert("success_action_redirect".into(), "x".into());
                }),
            ),
            (
                "a line break in a value",
                Box::new(|f| {
                    f.fields
                        .insert("policy".into(), "a\r\nContent-Type: x".into());
                }),
            ),
            (
                "a quote in a value",
                Box::new(|f| {
                    f.fields.insert("policy".into(), "a\"b".into());
                }),
            ),
            (
                "a long value",
                Box::new(|f| {
                    f.fields.insert("policy".into(), "a".repeat(5000));
                }),
            ),
        ];
        for (what, spoil) in bad {
            let mut f = form.clone();
            spoil(&mut f);
            assert!(rules(f).check().is_err(), "{what}");
        }
    }
}
