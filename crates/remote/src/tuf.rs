//! TUF on the client: loads a remote's metadata with `tough` (signatures, thresholds,
//! expiry, version rollback, snapshot/targets consistency, root rotation) and reads a
//! channel index through it. What `tough` verified last is kept in the remote's
//! datastore, so a server that later serves older metadata is caught.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use async_trait::async_trait;
use bytes::Bytes;
use sha2::Digest;
use tough::{
    RepositoryLoader, TargetName, Transport, TransportError, TransportErrorKind, TransportStream,
};
use url::Url;

use super::http::{FetchError, Http};
use super::index::ChannelIndex;
use arbor_core::fsutil;

/// The most any metadata file or channel index may be (tough applies its own, smaller
/// limits to each role on top).
const MAX_METADATA: u64 = 32 << 20;

/// A tough transport over [`Http`], so TUF fetches share its bounds and its errors.
/// It also keeps the bytes of the top-level metadata as the server sent them (tough's
/// datastore holds them re-serialized), which lets it apply two rules of the TUF
/// client workflow that tough does not: a timestamp of the version already trusted is
/// not taken in place of the trusted one (5.4.3), and a snapshot or targets file of
/// the version already trusted is not downloaded again (5.5, 5.6).
#[derive(Clone)]
struct HttpTransport {
    http: Http,
    raw: RawMetadata,
}

impl std::fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpTransport")
    }
}

/// The last bytes received for each top-level role, in `raw/` of the datastore. Only
/// ever used when they are, as JSON, what tough's datastore holds as verified.
#[derive(Clone)]
pub struct RawMetadata {
    datastore: PathBuf,
}

impl RawMetadata {
    /// The raw copies beside the datastore `datastore`.
    pub fn new(datastore: &Path) -> RawMetadata {
        RawMetadata {
            datastore: datastore.to_path_buf(),
        }
    }

    /// The top-level role a metadata file name is of (`3.root.json` is `root.json`).
    fn role(file: &str) -> Option<&'static str> {
        let name = file.trim_start_matches(|c: char| c.is_ascii_digit());
        let name = if name.len() < file.len() {
            name.strip_prefix('.')?
        } else {
            name
        };
        [
            "root.json",
            "timestamp.json",
            "snapshot.json",
            "targets.json",
        ]
        .into_iter()
        .find(|r| *r == name)
    }

    /// The bytes as received of the verified copy of `role` (`root.json`, …), with its
    /// version; `None` unless they match what the datastore verified.
    pub fn trusted(&self, role: &str) -> Option<(Vec<u8>, u64)> {
        let raw = std::fs::read(self.datastore.join("raw").join(role)).ok()?;
        let kept = std::fs::read(self.datastore.join(role)).ok()?;
        let value = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).ok();
        let raw_value = value(&raw)?;
        if Some(&raw_value) != value(&kept).as_ref() {
            return None;
        }
        let version = raw_value["signed"]["version"].as_u64()?;
        Some((raw, version))
    }

    /// True when `bytes` are what the verified role above `role` (the timestamp for
    /// the snapshot, the snapshot for targets) lists for it: its version, and its
    /// length and SHA-256 where listed. Any other hash listed: false (fetch instead).
    fn listed_as(&self, role: &str, bytes: &[u8]) -> bool {
        let parent = if role == "snapshot.json" {
            "timestamp.json"
        } else {
            "snapshot.json"
        };
        let Ok(text) = std::fs::read(self.datastore.join(parent)) else {
            return false;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&text) else {
            return false;
        };
        let meta = &v["signed"]["meta"][role];
        if meta["version"].as_u64().is_none() || meta["version"].as_u64() != version_of(bytes) {
            return false;
        }
        if let Some(len) = meta.get("length")
            && len.as_u64() != Some(bytes.len() as u64)
        {
            return false;
        }
        match meta.get("hashes").and_then(|h| h.as_object()) {
            None => true,
            Some(hashes) => hashes.iter().all(|(alg, want)| {
                alg == "sha256" && want.as_str() == Some(&hex::encode(sha2::Sha256::digest(bytes)))
            }),
        }
    }

    /// True when `timestamp` is signed by a threshold of the timestamp keys of the
    /// root the datastore trusts (tough writes it before fetching the timestamp).
    fn signed_by_root(&self, timestamp: &[u8]) -> bool {
        let Ok(root) = std::fs::read(self.datastore.join("root.json")) else {
            return false;
        };
        let (Ok(root), Ok(ts)) = (
            serde_json::from_slice::<tough::schema::Signed<tough::schema::Root>>(&root),
            serde_json::from_slice::<tough::schema::Signed<tough::schema::Timestamp>>(timestamp),
        ) else {
            return false;
        };
        root.signed.verify_role(&ts).is_ok()
    }

    fn record(&self, role: &str, bytes: &[u8]) {
        let dir = self.datastore.join("raw");
        // A cache: failing to keep it costs a download later, nothing else.
        let _ = std::fs::create_dir_all(&dir)
            .and_then(|()| fsutil::write_file_atomic(&dir.join(role), bytes, 0o644));
    }
}

fn version_of(bytes: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(bytes).ok()?["signed"]["version"].as_u64()
}

impl HttpTransport {
    fn get(&self, url: &Url) -> Result<Vec<u8>, FetchError> {
        let file = url
            .path_segments()
            .and_then(|mut s| s.next_back())
            .unwrap_or("");
        let role = RawMetadata::role(file);
        let trusted = role.and_then(|r| self.raw.trusted(r));
        if let (Some(r @ ("snapshot.json" | "targets.json")), Some((bytes, have))) =
            (role, &trusted)
            && file.strip_suffix(r).and_then(|v| v.strip_suffix('.')) == Some(&have.to_string())
            && self.raw.listed_as(r, bytes)
        {
            return Ok(bytes.clone());
        }
        let bytes = self.http.get_url_bounded(url, MAX_METADATA)?;
        if let (Some("timestamp.json"), Some((kept, have))) = (role, &trusted)
            && version_of(&bytes) == Some(*have)
            && self.raw.signed_by_root(&bytes)
        {
            // Signed as it must be, but not newer: the trusted one stays (TUF 5.4.3).
            // One that is not signed so goes to tough as it is, which refuses it.
            return Ok(kept.clone());
        }
        if let Some(r) = role {
            self.raw.record(r, &bytes);
        }
        Ok(bytes)
    }
}

#[async_trait]
impl Transport for HttpTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        // One metadata file at a time on a current-thread runtime: blocking here
        // holds up nothing else.
        match self.get(&url) {
            Ok(bytes) => Ok(Box::pin(futures::stream::once(async move {
                Ok(Bytes::from(bytes))
            }))),
            Err(FetchError::NotFound { .. }) => Err(TransportError::new(
                TransportErrorKind::FileNotFound,
                url.as_str(),
            )),
            Err(e) => Err(TransportError::new_with_cause(
                TransportErrorKind::Other,
                url.as_str(),
                e,
            )),
        }
    }
}

/// Finds a [`FetchError`] in an error's chain, to say "offline" rather than a TUF
/// library's nested wording.
pub fn fetch_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a FetchError> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(f) = err.downcast_ref::<FetchError>() {
            return Some(f);
        }
        cur = err.source();
    }
    None
}

/// A runtime for tough's async API; arbor itself is synchronous.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .context("starting the async runtime for TUF")
}

/// The root to start from: the newest root the datastore holds (tough persists each
/// root it verified while walking the chain), else the root trusted out of band. The
/// TUF client workflow starts from the latest trusted root; starting from the first
/// one again would let keys the repository has since rotated away sign a new chain.
fn starting_root(trusted_root: &[u8], datastore: &Path) -> Vec<u8> {
    let version = |bytes: &[u8]| {
        serde_json::from_slice::<tough::schema::Signed<tough::schema::Root>>(bytes)
            .ok()
            .map(|r| r.signed.version.get())
    };
    match std::fs::read(datastore.join("root.json")) {
        Ok(kept) if version(&kept).is_some_and(|k| Some(k) >= version(trusted_root)) => kept,
        _ => trusted_root.to_vec(),
    }
}

/// Loads and verifies a TUF repository (the whole top-level client workflow: root
/// chain, timestamp, snapshot, targets, and delegations as targets are read) from the
/// root trusted out of band, through arbor's HTTP client and its bounds.
/// `datastore` keeps what was verified last, so a server that later serves older
/// metadata is caught. Used by `arbor remote` and by the TUF conformance client.
pub async fn load(
    http: &Http,
    metadata: Url,
    targets: Url,
    trusted_root: &[u8],
    datastore: &Path,
) -> Result<tough::Repository> {
    std::fs::create_dir_all(datastore)
        .with_context(|| format!("creating {}", datastore.display()))?;
    let root = starting_root(trusted_root, datastore);
    RepositoryLoader::new(&root, metadata, targets)
        .transport(HttpTransport {
            http: http.clone(),
            raw: RawMetadata::new(datastore),
        })
        .datastore(datastore)
        .load()
        .await
        .map_err(|e| describe(e, "verifying the remote's signed metadata"))
}

/// Reads one target of a loaded repository: fetched by arbor's HTTP client, never
/// past its signed length, and checked against its signed length and every hash it
/// lists that arbor knows (SHA-256, which tough requires, and SHA-512). `None` when
/// the targets metadata (or a delegation) does not list it.
///
/// With consistent snapshots the file is `DIR/HASH.NAME` (TUF 1.0.31, 5.7.3); tough's
/// own reader prefixes the whole path (`HASH.DIR/NAME`), which no conforming
/// repository serves, hence this reader.
pub fn read_target(
    http: &Http,
    repo: &tough::Repository,
    targets: &Url,
    name: &str,
) -> Result<Option<Vec<u8>>> {
    let target_name = TargetName::new(name).map_err(|e| anyhow::anyhow!("target {name}: {e}"))?;
    let Ok(target) = repo.targets().signed.find_target(&target_name, false) else {
        return Ok(None);
    };
    let sha256 = hex::encode(&target.hashes.sha256);
    let (dir, file) = match name.rsplit_once('/') {
        Some((dir, file)) => (Some(dir), file),
        None => (None, name),
    };
    let file = if repo.root().signed.consistent_snapshot {
        format!("{sha256}.{file}")
    } else {
        file.to_string()
    };
    let mut url = targets.clone();
    {
        let mut segments = url
            .path_segments_mut()
            .map_err(|_| anyhow::anyhow!("{targets} cannot hold a path"))?;
        segments.pop_if_empty();
        // Each part is percent-encoded on its own: a name's `?`, `#` or `%` stays
        // part of the path.
        segments.extend(dir.into_iter().flat_map(|d| d.split('/')));
        segments.push(&file);
    }
    let bytes = http
        .get_url_bounded(&url, target.length)
        .map_err(|e| match e {
            e @ FetchError::Offline { .. } => {
                arbor_core::error::Error::Offline(e.to_string()).into()
            }
            e @ FetchError::TooLarge { .. } => arbor_core::error::Error::NotVerified(format!(
                "target {name}: longer than its signed length: {e}"
            ))
            .into(),
            e => anyhow::Error::new(e).context(format!("fetching target {name}")),
        })?;
    check_target(name, target, &bytes)?;
    Ok(Some(bytes))
}

/// Checks a target's bytes against its signed length and every hash it lists that
/// arbor knows (SHA-256, which tough requires, and SHA-512).
fn check_target(name: &str, target: &tough::schema::Target, bytes: &[u8]) -> Result<()> {
    let mismatch = |what: &str| {
        arbor_core::error::Error::NotVerified(format!(
            "target {name}: its {what} does not match the signed metadata; nothing was changed"
        ))
    };
    if bytes.len() as u64 != target.length {
        return Err(mismatch("length").into());
    }
    if sha2::Sha256::digest(bytes).as_slice() != target.hashes.sha256.as_ref() {
        return Err(mismatch("SHA-256").into());
    }
    if let Some(want) = target.hashes._extra.get("sha512").and_then(|v| v.as_str())
        && hex::encode(sha2::Sha512::digest(bytes)) != want.to_ascii_lowercase()
    {
        return Err(mismatch("SHA-512").into());
    }
    Ok(())
}

/// Where a remote's datastore keeps the channel indexes it verified last.
const KEPT_INDEXES: &str = "indexes";

/// A target kept in `dir` from an earlier read, if the freshly verified metadata still
/// signs exactly it (length and hashes): then nothing need be fetched. Read no further
/// than the signed length, never through a symlink; anything else (missing, changed,
/// spoiled) is `None`.
fn kept_target(repo: &tough::Repository, dir: &Path, name: &str) -> Option<Vec<u8>> {
    let target_name = TargetName::new(name).ok()?;
    let target = repo
        .targets()
        .signed
        .find_target(&target_name, false)
        .ok()?;
    let dir = fsutil::open_dir(dir).ok()?;
    let bytes =
        fsutil::read_bounded_at(std::os::fd::AsFd::as_fd(&dir), name, target.length).ok()?;
    check_target(name, target, &bytes).ok()?;
    Some(bytes)
}

/// Verifies the remote's metadata from its trusted root and returns the index of
/// `channel`, checked. `datastore` keeps what was verified last (rollback protection),
/// and the channel's index: while the signed metadata names the same index (an
/// unchanged check), it is not fetched again, which saves a fleet a third of its
/// check requests.
pub fn load_channel(
    http: &Http,
    trusted_root: &[u8],
    datastore: &Path,
    channel: &str,
) -> Result<ChannelIndex> {
    let metadata = http.url("metadata/")?;
    let targets = http.url("targets/")?;
    anyhow::ensure!(
        super::index::valid_channel(channel),
        "'{channel}' is not a channel name"
    );
    let name = format!("{channel}.json");
    let kept = datastore.join(KEPT_INDEXES);
    let bytes = runtime()?.block_on(async {
        let repo = load(http, metadata, targets.clone(), trusted_root, datastore).await?;
        if let Some(bytes) = kept_target(&repo, &kept, &name) {
            return Ok(bytes);
        }
        let bytes = read_target(http, &repo, &targets, &name)?.ok_or_else(|| {
            anyhow::Error::from(arbor_core::error::Error::ChannelNotFound(channel.into()))
        })?;
        // Not keeping it costs only a fetch at the next check.
        let _ = std::fs::create_dir_all(&kept)
            .and_then(|()| fsutil::write_file_atomic(&kept.join(&name), &bytes, 0o644));
        Ok::<_, anyhow::Error>(bytes)
    })?;
    ChannelIndex::parse(&bytes, channel)
}

/// An error from tough, with the offline case said plainly and the rest kept whole
/// (tough's messages name the role and what failed: expired, version, signature).
fn describe(e: tough::error::Error, doing: &str) -> anyhow::Error {
    let fetch = fetch_error(&e);
    if let Some(f @ FetchError::Offline { .. }) = fetch {
        return arbor_core::error::Error::Offline(f.to_string()).into();
    }
    if let Some(f @ FetchError::TimedOut { .. }) = fetch {
        // A stall said in arbor's words, and typed: a caller with mirrors passes over
        // this server for the rest of its run.
        return anyhow::Error::new(f.clone()).context(format!("{doing}; nothing was changed"));
    }
    let transport = fetch.is_some();
    let mut msg = e.to_string();
    let mut cur = std::error::Error::source(&e);
    while let Some(s) = cur {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        cur = s.source();
    }
    let text = format!("{doing}: {msg}; nothing was changed");
    if transport {
        // The server answered, but not with the file: not a verification failure.
        return anyhow::anyhow!(text);
    }
    arbor_core::error::Error::NotVerified(text).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_of_version(v: u64) -> Vec<u8> {
        format!(
            r#"{{"signed":{{"_type":"root","spec_version":"1.0.0","consistent_snapshot":true,"version":{v},"expires":"2099-01-01T00:00:00Z","keys":{{}},"roles":{{}}}},"signatures":[]}}"#
        )
        .into_bytes()
    }

    #[test]
    fn the_walk_starts_from_the_newest_root_the_datastore_verified() {
        let d = tempfile::tempdir().unwrap();
        let first = root_of_version(1);
        assert_eq!(starting_root(&first, d.path()), first, "nothing kept yet");
        std::fs::write(d.path().join("root.json"), root_of_version(3)).unwrap();
        assert_eq!(starting_root(&first, d.path()), root_of_version(3));
        // A root trusted out of band that is newer than what was kept wins.
        assert_eq!(
            starting_root(&root_of_version(4), d.path()),
            root_of_version(4)
        );
        std::fs::write(d.path().join("root.json"), b"not json").unwrap();
        assert_eq!(starting_root(&first, d.path()), first);
    }

    #[test]
    fn metadata_file_names_map_to_their_top_level_role() {
        assert_eq!(RawMetadata::role("3.root.json"), Some("root.json"));
        assert_eq!(RawMetadata::role("timestamp.json"), Some("timestamp.json"));
        assert_eq!(RawMetadata::role("12.snapshot.json"), Some("snapshot.json"));
        assert_eq!(RawMetadata::role("7.targets.json"), Some("targets.json"));
        assert_eq!(RawMetadata::role("7targets.json"), None);
        assert_eq!(RawMetadata::role("1.delegated.json"), None);
        assert_eq!(RawMetadata::role("stable.json"), None);
    }

    #[test]
    fn raw_bytes_are_trusted_only_when_they_are_what_the_datastore_verified() {
        let d = tempfile::tempdir().unwrap();
        let raw = RawMetadata::new(d.path());
        let sent = b"{ \"signed\": {\"version\": 2, \"_type\": \"snapshot\"}, \"signatures\": [] }";
        raw.record("snapshot.json", sent);
        assert!(raw.trusted("snapshot.json").is_none(), "not verified yet");
        // tough keeps its own serialization of the same document.
        std::fs::write(
            d.path().join("snapshot.json"),
            br#"{"signatures":[],"signed":{"_type":"snapshot","version":2}}"#,
        )
        .unwrap();
        assert_eq!(raw.trusted("snapshot.json"), Some((sent.to_vec(), 2)));
        std::fs::write(
            d.path().join("snapshot.json"),
            br#"{"signatures":[],"signed":{"_type":"snapshot","version":3}}"#,
        )
        .unwrap();
        assert!(raw.trusted("snapshot.json").is_none(), "another version");
    }
}
