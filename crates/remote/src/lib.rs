//! Remotes: published repositories a sysroot updates from (docs/remote.md).
//!
//! A remote lives in `<sysroot>/arbor/remotes/<name>/`: `remote.toml` (its URL),
//! `root.json` (the TUF root it was added with: the trust anchor), `tuf/` (what TUF
//! verified last), `cache/` (verified manifests) and `downloads/` (partial deltas, which
//! later runs resume). A deployment follows a remote's channel with the refspec
//! `<remote>:<channel>`, whose commits land in the ref `remotes/<remote>/<channel>`.

pub mod fetch;
pub mod http;
pub mod index;
pub mod pack;
pub mod rate;
pub mod report;
pub mod rollout;
pub mod tuf;
pub mod tuf_client;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

use arbor_core::fsutil;
use arbor_sysroot::Sysroot;
use index::{ChannelIndex, valid_channel};

/// A configured remote.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Remote {
    /// Its name.
    #[serde(skip)]
    pub name: String,
    /// The published folder's URL.
    pub url: String,
    /// How long its server may send nothing before a fetch gives up, in seconds
    /// (default: [`http::DEFAULT_TIMEOUT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Its folder in the sysroot.
    #[serde(skip)]
    pub dir: PathBuf,
    /// The rate cap of this run's downloads (`--max-rate`, the policy's `max_rate`),
    /// shared by every download from it.
    #[serde(skip)]
    pub limiter: Option<std::sync::Arc<rate::Limiter>>,
}

/// True for a remote name: a folder name and a ref component.
pub fn valid_name(n: &str) -> bool {
    valid_channel(n)
}

fn remotes_dir(sysroot: &Sysroot) -> PathBuf {
    sysroot.path().join("arbor/remotes")
}

/// Splits a refspec `remote:channel`; `None` for a local ref.
pub fn split_refspec(refspec: &str) -> Option<(&str, &str)> {
    refspec
        .split_once(':')
        .filter(|(r, c)| valid_name(r) && valid_channel(c))
}

/// [`split_refspec`], only when the remote is configured in `sysroot`: then the
/// refspec means "fetch from it"; otherwise it is a local ref that looks alike.
pub fn configured_refspec<'a>(sysroot: &Sysroot, refspec: &'a str) -> Option<(&'a str, &'a str)> {
    split_refspec(refspec).filter(|(r, _)| Remote::open(sysroot, r).is_ok())
}

/// The ref a remote channel's commits land in.
pub fn channel_ref(remote: &str, channel: &str) -> String {
    format!("remotes/{remote}/{channel}")
}

impl Remote {
    /// Adds a remote, trusting `root_json`; checks the URL and the root now, and that
    /// the remote's metadata verifies against it (unless `offline`).
    pub fn add(
        sysroot: &Sysroot,
        name: &str,
        url: &str,
        root_json: &Path,
        offline: bool,
        timeout: Option<std::time::Duration>,
    ) -> Result<Remote> {
        ensure!(
            valid_name(name),
            "'{name}' is not a remote name (letters, digits, . _ -)"
        );
        let dir = remotes_dir(sysroot).join(name);
        if dir.join("remote.toml").exists() {
            bail!("remote '{name}' exists ('arbor remote remove {name}' first)");
        }
        http::Http::new(url)?;
        let root =
            std::fs::read(root_json).with_context(|| format!("reading {}", root_json.display()))?;
        serde_json::from_slice::<tough::schema::Signed<tough::schema::Root>>(&root)
            .with_context(|| format!("{} is not TUF root metadata", root_json.display()))?;
        if let Some(t) = timeout {
            ensure!(
                (1..=3600).contains(&t.as_secs()),
                "a timeout of {} s: give 1 s to 1 h",
                t.as_secs()
            );
        }
        let remote = Remote {
            name: name.into(),
            url: url.into(),
            timeout_secs: timeout.map(|t| t.as_secs()),
            dir: dir.clone(),
            limiter: None,
        };
        std::fs::create_dir_all(&dir)?;
        if !offline {
            // Verified into a scratch datastore: a remote that does not verify is not
            // added.
            let probe = tempfile::tempdir_in(&dir)?;
            if let Err(e) = tuf::load_channel(&remote.http()?, &root, probe.path(), "probe")
                && !e.chain().any(|c| {
                    matches!(
                        c.downcast_ref::<arbor_core::error::Error>(),
                        Some(arbor_core::error::Error::ChannelNotFound(_))
                    )
                })
            {
                drop(probe);
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e.context(format!("remote '{name}' at {url}")));
            }
        }
        fsutil::write_file_atomic(&dir.join("root.json"), &root, 0o644)?;
        let text = toml::to_string(&remote)?;
        fsutil::write_file_atomic(&dir.join("remote.toml"), text.as_bytes(), 0o644)?;
        Ok(remote)
    }

    /// Opens a configured remote.
    pub fn open(sysroot: &Sysroot, name: &str) -> Result<Remote> {
        ensure!(valid_name(name), "'{name}' is not a remote name");
        let dir = remotes_dir(sysroot).join(name);
        let text = std::fs::read_to_string(dir.join("remote.toml"))
            .map_err(|_| anyhow::anyhow!("no remote '{name}' ('arbor remote add')"))?;
        let mut r: Remote =
            toml::from_str(&text).with_context(|| format!("{}/remote.toml", dir.display()))?;
        r.name = name.into();
        r.dir = dir;
        Ok(r)
    }

    /// Every configured remote, by name.
    pub fn list(sysroot: &Sysroot) -> Result<Vec<Remote>> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(remotes_dir(sysroot)) else {
            return Ok(out);
        };
        for e in rd {
            let name = e?.file_name().to_string_lossy().into_owned();
            if let Ok(r) = Remote::open(sysroot, &name) {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes a remote's configuration and downloads (not the commits it brought).
    pub fn remove(sysroot: &Sysroot, name: &str) -> Result<()> {
        let r = Remote::open(sysroot, name)?;
        fsutil::remove_tree(&r.dir).with_context(|| format!("removing {}", r.dir.display()))
    }

    /// An HTTP client for it.
    pub fn http(&self) -> Result<http::Http> {
        let timeout = self
            .timeout_secs
            .map_or(http::DEFAULT_TIMEOUT, std::time::Duration::from_secs);
        let h = http::Http::with_timeout(&self.url, timeout)?;
        Ok(match &self.limiter {
            Some(l) => h.with_limiter(l.clone()),
            None => h,
        })
    }

    /// Verifies the remote's metadata and returns a channel's index.
    pub fn channel(&self, channel: &str) -> Result<ChannelIndex> {
        ensure!(valid_channel(channel), "'{channel}' is not a channel name");
        let root = std::fs::read(self.dir.join("root.json"))?;
        tuf::load_channel(&self.http()?, &root, &self.dir.join("tuf"), channel)
            .with_context(|| format!("remote '{}' ({})", self.name, self.url))
    }
}

/// This machine's id, for phased rollout: `/etc/machine-id` of the running system.
/// Tests and image builders set `ARBOR_MACHINE_ID`.
pub fn machine_id() -> Result<String> {
    if let Ok(id) = std::env::var("ARBOR_MACHINE_ID") {
        return Ok(id);
    }
    let id = std::fs::read_to_string("/etc/machine-id")
        .context("reading /etc/machine-id (needed for phased rollout)")?;
    ensure!(!id.trim().is_empty(), "/etc/machine-id is empty");
    Ok(id.trim().to_string())
}
