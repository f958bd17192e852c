//! The origin file beside each deployment (`<commit>.<serial>.origin`): what the
//! deployment tracks, and whether it is pinned. An ini file as OSTree writes it:
//! ```text
//! [origin]
//! refspec=debian/bookworm/x86_64
//! override-commit=<commit id>     (only when an older commit of the ref was deployed)
//!
//! [arbor]
//! pinned=true
//! ```

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// What a deployment was made from and how it is kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The ref it tracks (upgrades follow it), or the commit id it was deployed from.
    pub refspec: String,
    /// Set when an older commit of the ref was deployed (`REF^`), as rpm-ostree's
    /// `override-commit`: the deployment holds this commit, not the ref's tip.
    pub override_commit: Option<String>,
    /// Pinned deployments are never removed by deploy or cleanup.
    pub pinned: bool,
}

impl Origin {
    /// The file's text.
    pub fn to_text(&self) -> String {
        let mut s = format!("[origin]\nrefspec={}\n", self.refspec);
        if let Some(c) = &self.override_commit {
            s.push_str(&format!("override-commit={c}\n"));
        }
        if self.pinned {
            s.push_str("\n[arbor]\npinned=true\n");
        }
        s
    }

    /// Parses an origin file.
    pub fn parse(text: &str) -> Result<Self> {
        let mut o = Origin::default();
        let mut section = "";
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s;
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                bail!("origin line '{line}' is not key=value")
            };
            match (section, k.trim()) {
                ("origin", "refspec") => o.refspec = v.trim().to_string(),
                ("origin", "override-commit") => o.override_commit = Some(v.trim().to_string()),
                ("arbor", "pinned") => o.pinned = v.trim() == "true",
                _ => {}
            }
        }
        if o.refspec.is_empty() {
            bail!("origin has no refspec");
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for pinned in [false, true] {
            let o = Origin {
                refspec: "debian/a".into(),
                override_commit: pinned.then(|| "ab".to_string()),
                pinned,
            };
            assert_eq!(Origin::parse(&o.to_text()).unwrap(), o);
        }
        assert!(Origin::parse("[origin]\n").is_err());
    }
}
