//! The repository's `config` file: format version, mode and where the state database is.
//!
//! An ini-style file as OSTree users know it:
//! ```text
//! [core]
//! format-version = 1
//! mode = bare
//! state-db = state.db
//! owner-lock = ../lock
//! ```
//! `owner-lock` is written for the repository of a sysroot only.

use anyhow::{Result, bail};

/// The only store format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Settings of one repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoConfig {
    /// Store format version; a newer one is refused rather than misread.
    pub format_version: u32,
    /// Path of the state database, relative to the repository. A plain repository
    /// keeps it inside (`state.db`); the repository of a sysroot shares the sysroot's
    /// (`../state.db`, that is `<sysroot>/arbor/state.db`).
    pub state_db: String,
    /// The lock of the sysroot this repository belongs to, relative to the repository
    /// (`../lock`): whoever deletes objects takes it, since the sysroot's deployments
    /// are recorded as roots under it ([`super::roots`]). `None` for a plain one.
    pub owner_lock: Option<String>,
}

impl Default for RepoConfig {
    fn default() -> Self {
        RepoConfig {
            format_version: FORMAT_VERSION,
            state_db: "state.db".into(),
            owner_lock: None,
        }
    }
}

impl RepoConfig {
    /// The file's text.
    pub fn to_text(&self) -> String {
        let mut text = format!(
            "[core]\nformat-version = {}\nmode = bare\nstate-db = {}\n",
            self.format_version, self.state_db
        );
        if let Some(l) = &self.owner_lock {
            text.push_str(&format!("owner-lock = {l}\n"));
        }
        text
    }

    /// The owner's lock, relative to the repository. A sysroot's repository made
    /// before `owner-lock` existed is known by its shared state database.
    pub fn owner_lock(&self) -> Option<&str> {
        match &self.owner_lock {
            Some(l) => Some(l),
            None if self.state_db == "../state.db" => Some("../lock"),
            None => None,
        }
    }

    /// Parses the file, refusing unknown versions and modes.
    pub fn parse(text: &str) -> Result<Self> {
        let mut cfg = RepoConfig {
            format_version: 0,
            ..Default::default()
        };
        let mut section = String::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s.to_string();
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                bail!("line {}: expected 'key = value'", n + 1);
            };
            let (k, v) = (k.trim(), v.trim());
            match (section.as_str(), k) {
                ("core", "format-version") => {
                    cfg.format_version = v
                        .parse()
                        .map_err(|_| anyhow::anyhow!("line {}: bad format-version", n + 1))?
                }
                ("core", "mode") if v != "bare" => {
                    bail!("mode '{v}' is not supported (only 'bare')")
                }
                ("core", "state-db") => {
                    if v.is_empty() || v.starts_with('/') {
                        bail!("state-db must be a relative path");
                    }
                    cfg.state_db = v.to_string()
                }
                ("core", "owner-lock") => {
                    if v.is_empty() || v.starts_with('/') {
                        bail!("owner-lock must be a relative path");
                    }
                    cfg.owner_lock = Some(v.to_string())
                }
                _ => {}
            }
        }
        if cfg.format_version != FORMAT_VERSION {
            bail!(
                "store format version {} is not supported by this arbor (it reads version {FORMAT_VERSION})",
                cfg.format_version
            );
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let c = RepoConfig {
            state_db: "../state.db".into(),
            owner_lock: Some("../lock".into()),
            ..Default::default()
        };
        assert_eq!(RepoConfig::parse(&c.to_text()).unwrap(), c);
        assert_eq!(RepoConfig::default().owner_lock(), None);
        assert!(RepoConfig::parse("[core]\nformat-version = 2\n").is_err());
        assert!(RepoConfig::parse("[core]\nformat-version = 1\nmode = archive\n").is_err());
        assert!(RepoConfig::parse("").is_err());
    }
}
