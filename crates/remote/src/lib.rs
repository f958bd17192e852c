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
pub mod mirror_url;
pub mod mirrors;
pub mod oci;
pub mod oci_files;
pub mod oci_login;
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
    /// Other servers of the same publication, asked in this order after `url`
    /// (docs/remote.md, "Mirrors").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<String>,
    /// Its folder in the sysroot.
    #[serde(skip)]
    pub dir: PathBuf,
    /// The rate cap of this run's downloads (`--max-rate`, the policy's `max_rate`),
    /// shared by every download from it.
    #[serde(skip)]
    pub limiter: Option<std::sync::Arc<rate::Limiter>>,
    /// The servers this run passed over, and why (shared by its clones).
    #[serde(skip)]
    pub skips: mirrors::SkipLog,
    /// The blob digests the verified metadata gave this run (for a registry).
    #[serde(skip)]
    pub book: oci_files::Book,
}

/// The file, in a remote's folder, of the login to its registry (mode 0600; never
/// printed, logged or sent over D-Bus).
const CREDENTIALS: &str = "credentials.toml";

/// The file, in a remote's folder, of the mirrors its last verified channel index
/// named: asked after the configured ones.
const INDEX_MIRRORS: &str = "index-mirrors.json";

/// How a remote is added, beyond its name, URL and trust anchor.
#[derive(Clone, Debug, Default)]
pub struct AddOptions {
    /// Do not contact it now.
    pub offline: bool,
    /// How long its servers may send nothing (default [`http::DEFAULT_TIMEOUT`]).
    pub timeout: Option<std::time::Duration>,
    /// Its mirrors, in order.
    pub mirrors: Vec<String>,
    /// A registry login to keep for it (copied, mode 0600).
    pub credentials: Option<PathBuf>,
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
    /// Adds a remote, trusting `root_json`; checks the URL, the mirrors and the root
    /// now, and that the remote's metadata verifies against it (unless `offline`).
    pub fn add(
        sysroot: &Sysroot,
        name: &str,
        url: &str,
        root_json: &Path,
        opts: &AddOptions,
    ) -> Result<Remote> {
        let (offline, timeout, mirror_urls) = (opts.offline, opts.timeout, &opts.mirrors);
        let credentials = opts.credentials.as_deref();
        ensure!(
            valid_name(name),
            "'{name}' is not a remote name (letters, digits, . _ -)"
        );
        if credentials.is_some() {
            ensure!(
                oci::is_oci(url) || mirror_urls.iter().any(|m| oci::is_oci(m)),
                "credentials are for a registry (oci://): remote '{name}' has none"
            );
        }
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
            mirrors: checked_mirrors(mirror_urls)?,
            dir: dir.clone(),
            limiter: None,
            skips: Default::default(),
            book: Default::default(),
        };
        std::fs::create_dir_all(&dir)?;
        if let Some(c) = credentials {
            oci::Credentials::load(c)?;
            let bytes = std::fs::read(c)?;
            fsutil::write_file_atomic(&dir.join(CREDENTIALS), &bytes, 0o600)?;
        }
        if !offline {
            // Verified into a scratch datastore: a remote that does not verify is not
            // added.
            let probe = tempfile::tempdir_in(&dir)?;
            if let Err(e) = remote.load_channel(&root, probe.path(), "probe")
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

    /// Replaces the remote's mirrors (empty: none).
    pub fn set_mirrors(sysroot: &Sysroot, name: &str, mirror_urls: &[String]) -> Result<Remote> {
        let mut r = Remote::open(sysroot, name)?;
        r.mirrors = checked_mirrors(mirror_urls)?;
        let text = toml::to_string(&r)?;
        fsutil::write_file_atomic(&r.dir.join("remote.toml"), text.as_bytes(), 0o644)?;
        Ok(r)
    }

    /// The login to its registry, if it was given one.
    fn credentials(&self) -> Result<oci::Credentials> {
        let path = self.dir.join(CREDENTIALS);
        if !path.exists() {
            return Ok(oci::Credentials::default());
        }
        oci::Credentials::load(&path)
    }

    /// True when any of its servers is an OCI registry.
    pub fn is_oci(&self) -> bool {
        oci::is_oci(&self.url)
            || self
                .mirrors
                .iter()
                .chain(&self.index_mirrors())
                .any(|m| oci::is_oci(m))
    }

    /// The mirrors its last verified channel index named.
    pub fn index_mirrors(&self) -> Vec<String> {
        std::fs::read(self.dir.join(INDEX_MIRRORS))
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<String>>(&b).ok())
            .unwrap_or_default()
    }

    /// Every server of the publication, in the order they are asked: its URL, its
    /// mirrors, then those the last verified index named; each under the remote's
    /// timeout and this run's rate cap.
    pub fn servers(&self) -> Result<Vec<http::Http>> {
        let timeout = self
            .timeout_secs
            .map_or(http::DEFAULT_TIMEOUT, std::time::Duration::from_secs);
        let mut out: Vec<http::Http> = Vec::new();
        let named = self.index_mirrors();
        let urls = std::iter::once(&self.url)
            .chain(&self.mirrors)
            .chain(named.iter().take(mirror_url::MAX_MIRRORS));
        let creds = self.credentials()?;
        for u in urls {
            let mut h = http::Http::with_timeout(u, timeout)?;
            if oci::is_oci(u) {
                // The login is the administrator's, for the servers they configured:
                // a registry the publisher's index names is asked anonymously.
                let configured = *u == self.url || self.mirrors.contains(u);
                let login = if configured {
                    creds.clone()
                } else {
                    oci::Credentials::default()
                };
                let files = oci_files::OciFiles::new(
                    oci::Location::parse(u)?,
                    login,
                    timeout,
                    self.book.clone(),
                );
                h = h.with_resolver(std::sync::Arc::new(files));
            }
            if out.iter().any(|o| o.base() == h.base()) {
                continue;
            }
            out.push(match &self.limiter {
                Some(l) => h.with_limiter(l.clone()),
                None => h,
            });
        }
        Ok(out)
    }

    /// Its servers as one source of files, asked in order, preferring the one whose
    /// metadata verified this run.
    pub fn sources(&self) -> Result<mirrors::Sources> {
        Ok(mirrors::Sources::new(self.servers()?, self.skips.clone()))
    }

    /// Verifies the remote's metadata and returns a channel's index.
    pub fn channel(&self, channel: &str) -> Result<ChannelIndex> {
        ensure!(valid_channel(channel), "'{channel}' is not a channel name");
        let root = std::fs::read(self.dir.join("root.json"))?;
        let idx = self
            .load_channel(&root, &self.dir.join("tuf"), channel)
            .with_context(|| format!("remote '{}' ({})", self.name, self.url))?;
        self.remember_index_mirrors(&idx);
        self.book.register_index(&idx);
        Ok(idx)
    }

    /// [`tuf::load_channel`] from the first server whose metadata verifies; the others
    /// are skipped with their reasons (a mirror that is down, stale or lying), and the
    /// one that verified is asked first for the files.
    fn load_channel(&self, root: &[u8], datastore: &Path, channel: &str) -> Result<ChannelIndex> {
        let servers = self.servers()?;
        let mut passed = Vec::new();
        let mut not_found = 0;
        for (i, h) in servers.iter().enumerate() {
            match tuf::load_channel(h, root, datastore, channel) {
                Ok(idx) => {
                    if servers.len() > 1 {
                        self.skips.prefer(h.base().as_str());
                    }
                    return Ok(idx);
                }
                Err(e) if i + 1 < servers.len() => {
                    let missing = e.chain().any(|c| {
                        matches!(
                            c.downcast_ref::<arbor_core::error::Error>(),
                            Some(arbor_core::error::Error::ChannelNotFound(_))
                        )
                    });
                    not_found += usize::from(missing);
                    self.skips.note(h.base().as_str(), "signed metadata", &e);
                    passed.push(h.base().to_string());
                }
                Err(e) if passed.is_empty() => return Err(e),
                Err(e) if not_found == passed.len() => return Err(e),
                Err(e) => {
                    return Err(e.context(format!(
                        "no server's metadata could be used (also tried {})",
                        passed.join(", ")
                    )));
                }
            }
        }
        unreachable!("the loop returns at the last server")
    }

    /// Keeps the mirrors a verified index names for the next runs (a cache: failing to
    /// write it only means asking the configured servers).
    fn remember_index_mirrors(&self, idx: &ChannelIndex) {
        if idx.mirrors == self.index_mirrors() {
            return;
        }
        let path = self.dir.join(INDEX_MIRRORS);
        let written = serde_json::to_vec(&idx.mirrors)
            .map_err(std::io::Error::other)
            .and_then(|b| fsutil::write_file_atomic(&path, &b, 0o644));
        if let Err(e) = written {
            tracing::warn!("keeping the mirrors the index names: {e:#}");
        }
    }
}

/// Mirror URLs checked, each a folder URL (`/` added), at most [`mirror_url::MAX_MIRRORS`].
fn checked_mirrors(urls: &[String]) -> Result<Vec<String>> {
    ensure!(
        urls.len() <= mirror_url::MAX_MIRRORS,
        "{} mirrors: at most {}",
        urls.len(),
        mirror_url::MAX_MIRRORS
    );
    urls.iter()
        .map(|u| mirror_url::check_url(u).map(|u| u.to_string()))
        .collect()
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
