//! Publishing: a folder of static files that any HTTP server or CDN can serve
//! (docs/remote.md). Packed objects, manifests and deltas are written first and synced;
//! then the channel index, as a TUF target named by its digest; then versioned targets
//! and snapshot metadata; `timestamp.json` last. A client reading mid-publish sees the
//! old repository or the new one, never a mix.

mod digests;
pub mod keys;
mod mirrors;
pub mod oci_push;
pub mod rollout;
pub mod s3;

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use chrono::{DateTime, Duration, Utc};
use rayon::prelude::*;
use serde::Serialize;
use tough::editor::RepositoryEditor;
use tough::schema::{RoleType, Target};
use tough::{ExpirationEnforcement, IntoVec, RepositoryLoader, TargetName};

use arbor_core::fsutil;
use arbor_core::lock::{LockWait, WriterLock};
use arbor_delta as delta;
use arbor_remote::index::{
    ChannelIndex, DeltaRef, FileRef, FullFrom, INDEX_FORMAT, VersionEntry, valid_channel,
};
use arbor_remote::pack::{self, Manifest, ManifestEntry};
use arbor_remote::tuf::runtime;
use arbor_store::{ObjectId, ObjectKind, Repo};

/// How long each role's metadata stays valid after signing.
#[derive(Clone, Copy, Debug)]
pub struct Expiry {
    /// Root metadata (signed at init and rotation).
    pub root: Duration,
    /// The targets (channel indexes).
    pub targets: Duration,
    /// The snapshot.
    pub snapshot: Duration,
    /// The timestamp: how long a device trusts that nothing newer exists. Re-sign
    /// before then (`arbor publish refresh`, from cron).
    pub timestamp: Duration,
}

impl Default for Expiry {
    fn default() -> Self {
        Expiry {
            root: Duration::days(365),
            targets: Duration::days(90),
            snapshot: Duration::days(30),
            timestamp: Duration::days(7),
        }
    }
}

/// Parses `30s`, `12h`, `7d` (and a bare number of seconds).
pub fn parse_duration(s: &str) -> Result<Duration> {
    // A bare number is seconds, as before humantime; everything else is humantime's
    // ("30d", "12h", "1h 30m", "2weeks").
    let std = match s.parse::<u64>() {
        Ok(secs) => std::time::Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s)
            .with_context(|| format!("'{s}' is not a duration (such as 90s, 15m, 12h, 30d)"))?,
    };
    Duration::from_std(std).with_context(|| format!("'{s}' is too long a duration"))
}

/// A published folder and the keys that sign it.
pub struct Publisher {
    /// The folder served over HTTP.
    pub dir: PathBuf,
    /// Where the private keys are (never inside `dir`).
    pub keys: PathBuf,
    /// Expiry of what this publisher signs.
    pub expiry: Expiry,
}

/// What `publish init` made.
#[derive(Debug, Serialize)]
pub struct InitResult {
    /// The root metadata clients trust (`arbor remote add … --trust`).
    pub root: PathBuf,
    /// The private keys.
    pub keys: PathBuf,
}

/// What `publish add` did.
#[derive(Debug, Serialize)]
pub struct AddResult {
    /// The new version's entry, as clients see it.
    pub entry: VersionEntry,
    /// Objects packed now (the rest were published before).
    pub objects_written: u64,
    /// Deltas made.
    pub deltas: Vec<delta::DeltaStats>,
}

/// What a version is published as.
pub struct AddOptions {
    /// The channel.
    pub channel: String,
    /// The version string.
    pub version: String,
    /// The commit.
    pub commit: ObjectId,
    /// Urgent (security) update.
    pub critical: bool,
    /// Rollout percentage.
    pub phase: u8,
    /// Make deltas from this many previous versions of the channel.
    pub deltas_from: usize,
    /// Where the release notes are.
    pub release_notes: Option<String>,
    /// A version of the channel that machines must run before this one
    /// ([`VersionEntry::requires`]).
    pub requires: Option<String>,
    /// Diff xz files in the deltas by their content ([`delta::CreateOptions`]).
    pub recompress: bool,
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

impl Publisher {
    fn metadata(&self) -> PathBuf {
        self.dir.join("metadata")
    }

    /// The newest root metadata file.
    fn latest_root(&self) -> Result<(u64, PathBuf)> {
        let mut best = None;
        let dir = self.metadata();
        for e in std::fs::read_dir(&dir).with_context(|| {
            format!(
                "{} is not a published repository ('arbor publish init')",
                self.dir.display()
            )
        })? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if let Some(n) = name
                .strip_suffix(".root.json")
                .and_then(|n| n.parse::<u64>().ok())
                && best.as_ref().is_none_or(|(b, _)| n > *b)
            {
                best = Some((n, dir.join(&name)));
            }
        }
        best.ok_or_else(|| anyhow::anyhow!("no root metadata in {}", dir.display()))
    }

    /// Takes the publisher's lock (`publish.lock` in the keys folder): two publishers
    /// on one folder would each sign a version N+1 of the metadata, and one of them
    /// would be lost. The keys folder is where every publisher of a folder must go.
    fn lock(&self, wait: LockWait<'_>) -> Result<WriterLock> {
        std::fs::create_dir_all(&self.keys)
            .with_context(|| format!("creating {}", self.keys.display()))?;
        let dir = fsutil::open_dir(&self.keys)?;
        Ok(WriterLock::acquire(
            dir.as_fd(),
            &self.keys,
            "publish.lock",
            wait,
        )?)
    }

    /// Creates the folder, the keys and version 1 of every role.
    pub fn init(&self, wait: LockWait<'_>) -> Result<InitResult> {
        ensure!(
            !self.keys.starts_with(&self.dir),
            "the keys must not be inside the published folder"
        );
        let _lock = self.lock(wait)?;
        if self.metadata().exists() {
            bail!("{} is already a published repository", self.dir.display());
        }
        for d in [
            "metadata",
            "targets",
            "objects",
            "deltas",
            "manifests",
            "packages",
        ] {
            std::fs::create_dir_all(self.dir.join(d))?;
        }
        std::fs::create_dir_all(&self.keys)?;
        std::fs::set_permissions(
            &self.keys,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        for role in keys::ROLES {
            if !keys::key_path(&self.keys, role).exists() {
                keys::generate(&self.keys, role)?;
            }
        }
        let root_path = self.metadata().join("1.root.json");
        runtime()?.block_on(async {
            let root = keys::make_root(&self.keys, 1, now() + self.expiry.root).await?;
            let bytes = keys::sign_root(&self.keys, root, None).await?;
            fsutil::write_file_atomic(&root_path, &bytes, 0o644)?;
            anyhow::Ok(())
        })?;
        self.sign(None)?;
        Ok(InitResult {
            root: root_path,
            keys: self.keys.clone(),
        })
    }

    /// Reads a channel's index as published (empty for a new channel).
    pub fn channel(&self, channel: &str) -> Result<ChannelIndex> {
        let empty = ChannelIndex {
            format: INDEX_FORMAT,
            channel: channel.into(),
            versions: Vec::new(),
            rollout: None,
            mirrors: Vec::new(),
        };
        let bytes = runtime()?.block_on(async {
            let Some(repo) = self.load().await? else {
                return anyhow::Ok(None);
            };
            let name = TargetName::new(format!("{channel}.json"))?;
            match repo.read_target(&name).await? {
                Some(s) => Ok(Some(s.into_vec().await?)),
                None => Ok(None),
            }
        })?;
        match bytes {
            Some(b) => ChannelIndex::parse(&b, channel),
            None => Ok(empty),
        }
    }

    async fn load(&self) -> Result<Option<tough::Repository>> {
        if !self.metadata().join("timestamp.json").exists() {
            return Ok(None);
        }
        let (_, root_path) = self.latest_root()?;
        let root = std::fs::read(&root_path)?;
        let url = |p: PathBuf| {
            url::Url::from_directory_path(std::fs::canonicalize(&p)?)
                .map_err(|_| anyhow::anyhow!("{} as a URL", p.display()))
        };
        let datastore = tempfile::tempdir()?;
        // The publisher re-signs expired metadata, so it must be able to read it.
        let repo =
            RepositoryLoader::new(&root, url(self.metadata())?, url(self.dir.join("targets"))?)
                .expiration_enforcement(ExpirationEnforcement::Unsafe)
                .datastore(datastore.path())
                .load()
                .await
                .context("reading the published metadata")?;
        Ok(Some(repo))
    }

    /// Signs the metadata again with new expiry dates (`publish refresh`): what a
    /// publisher runs before the timestamp expires.
    pub fn refresh(&self, wait: LockWait<'_>) -> Result<()> {
        let _lock = self.lock(wait)?;
        self.sign(None)
    }

    /// Signs new targets, snapshot and timestamp metadata, with `change` (a channel and
    /// its new index) applied, and publishes them timestamp last.
    fn sign(&self, change: Option<&ChannelIndex>) -> Result<()> {
        self.sign_under(change, None)
    }

    /// [`Publisher::sign`], with `new_root` (a root not yet published) as the root
    /// that signs: the current metadata is read under the current root, and the new
    /// root is published with the rest.
    fn sign_under(&self, change: Option<&ChannelIndex>, new_root: Option<&Path>) -> Result<()> {
        let root_path = match new_root {
            Some(p) => p.to_path_buf(),
            None => self.latest_root()?.1,
        };
        let staging = tempfile::Builder::new()
            .prefix(".staging-")
            .tempdir_in(&self.dir)?;
        runtime()?.block_on(async {
            let (mut editor, next) = match self.load().await? {
                Some(repo) => {
                    let next = [
                        repo.targets().signed.version.get(),
                        repo.snapshot().signed.version.get(),
                        repo.timestamp().signed.version.get(),
                    ]
                    .map(|v| std::num::NonZeroU64::new(v + 1).unwrap());
                    (RepositoryEditor::from_repo(&root_path, repo).await?, next)
                }
                None => (
                    RepositoryEditor::new(&root_path).await?,
                    [std::num::NonZeroU64::new(1).unwrap(); 3],
                ),
            };
            if let Some(idx) = change {
                let name = format!("{}.json", idx.channel);
                let staged = staging.path().join(&name);
                let bytes = serde_json::to_vec_pretty(idx)?;
                std::fs::write(&staged, &bytes)?;
                let target = Target::from_path(&staged).await?;
                let digest = hex::encode(&target.hashes.sha256);
                fsutil::write_file_atomic(
                    &self.dir.join("targets").join(format!("{digest}.{name}")),
                    &bytes,
                    0o644,
                )?;
                editor.add_target(TargetName::new(name)?, target)?;
                arbor_core::failpoint::hit("publish-index-written")?;
            }
            let t = now();
            editor
                .targets_version(next[0])?
                .targets_expires(t + self.expiry.targets)?
                .snapshot_version(next[1])
                .snapshot_expires(t + self.expiry.snapshot)
                .timestamp_version(next[2])
                .timestamp_expires(t + self.expiry.timestamp);
            let keys: Vec<_> = [RoleType::Targets, RoleType::Snapshot, RoleType::Timestamp]
                .into_iter()
                .map(|r| keys::source(&self.keys, r))
                .collect::<Result<_>>()?;
            let signed = editor.sign(&keys).await.context("signing metadata")?;
            let out = staging.path().join("metadata");
            signed.write(&out).await?;
            anyhow::Ok(())
        })?;
        // Versioned files first, the switch last.
        let out = staging.path().join("metadata");
        let mut names: Vec<String> = std::fs::read_dir(&out)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<_>>()?;
        names.sort_by_key(|n| n == "timestamp.json");
        for n in names {
            let dest = self.metadata().join(&n);
            if n.ends_with(".root.json") && dest.exists() {
                continue;
            }
            let bytes = std::fs::read(out.join(&n))?;
            fsutil::write_file_atomic(&dest, &bytes, 0o644)
                .with_context(|| format!("writing {}", dest.display()))?;
            if n != "timestamp.json" {
                arbor_core::failpoint::hit("publish-metadata-writing")?;
            }
        }
        Ok(())
    }

    /// Publishes `commit` as a new version of a channel.
    pub fn add(&self, repo: &Repo, opts: &AddOptions, wait: LockWait<'_>) -> Result<AddResult> {
        let _lock = self.lock(wait)?;
        ensure!(
            valid_channel(&opts.channel),
            "'{}' is not a channel name (letters, digits, . _ -)",
            opts.channel
        );
        ensure!(
            !opts.version.is_empty() && opts.version.len() <= 128,
            "a version needs 1 to 128 characters"
        );
        ensure!(opts.phase <= 100, "a phase is a percentage (0-100)");
        let mut idx = self.channel(&opts.channel)?;
        ensure!(
            idx.versions.iter().all(|v| v.version != opts.version),
            "channel {} already has version {}",
            opts.channel,
            opts.version
        );
        if let Some(r) = &opts.requires {
            // Checked before anything is written: a channel must never skip it.
            idx.version(r)
                .with_context(|| format!("version {} cannot require {r}", opts.version))?;
        }
        let (manifest, written) = self.export_objects(repo, &opts.commit)?;
        let manifest_bytes = manifest.encode();
        let manifest_path = format!("manifests/{}.manifest", opts.commit);
        fsutil::write_file_atomic(&self.dir.join(&manifest_path), &manifest_bytes, 0o644)?;
        let packages = self.export_packages(repo, &opts.commit)?;
        let mut deltas = Vec::new();
        let mut stats = Vec::new();
        let mut sources: Vec<ObjectId> = Vec::new();
        for v in idx.versions.iter().rev() {
            if sources.len() >= opts.deltas_from {
                break;
            }
            if v.commit != opts.commit && !sources.contains(&v.commit) {
                sources.push(v.commit);
            }
        }
        for from in sources {
            ensure!(
                repo.has_object(&from, ObjectKind::Commit),
                "cannot make a delta from {from}: the repository does not hold that commit"
            );
            let rel = format!("deltas/{from}-{}.delta", opts.commit);
            let how = delta::CreateOptions {
                measure_full: false,
                recompress: opts.recompress,
            };
            let s = delta::create(repo, &from, &opts.commit, &self.dir.join(&rel), how)?;
            deltas.push(DeltaRef {
                from,
                file: digests::file_ref(&self.dir, &rel)?,
                raw_bytes: s.raw_bytes,
                full_from: Some(full_from(repo, &from, &manifest)?),
                format: delta::FORMAT,
            });
            stats.push(s);
        }
        let digest_table = digests::write_table(&self.dir, &manifest)?;
        fsutil::sync_filesystem(fsutil::open_dir(&self.dir)?)?;
        arbor_core::failpoint::hit("publish-objects-written")?;
        let entry = VersionEntry {
            version: opts.version.clone(),
            commit: opts.commit,
            published: now().timestamp(),
            critical: opts.critical,
            phase: opts.phase,
            release_notes: opts.release_notes.clone(),
            manifest: digests::bytes_ref(&manifest_path, &manifest_bytes),
            full_bytes: manifest.entries.iter().map(|e| e.packed).sum(),
            raw_bytes: manifest.entries.iter().map(|e| e.raw).sum(),
            deltas,
            packages,
            requires: opts.requires.clone(),
            withdrawn: false,
            phase_since: Some(now().timestamp()),
            digests: Some(digest_table),
        };
        idx.versions.push(entry.clone());
        self.sign(Some(&idx))?;
        Ok(AddResult {
            entry,
            objects_written: written,
            deltas: stats,
        })
    }

    /// Changes a published version's rollout percentage.
    pub fn set_phase(
        &self,
        channel: &str,
        version: &str,
        phase: u8,
        wait: LockWait<'_>,
    ) -> Result<VersionEntry> {
        let _lock = self.lock(wait)?;
        ensure!(phase <= 100, "a phase is a percentage (0-100)");
        let mut idx = self.channel(channel)?;
        idx.version(version)?;
        let v = idx
            .versions
            .iter_mut()
            .find(|v| v.version == version)
            .unwrap();
        v.phase = phase;
        v.phase_since = Some(now().timestamp());
        let out = v.clone();
        self.sign(Some(&idx))?;
        Ok(out)
    }

    /// Replaces one role's key: a new root version, signed by the old and the new root
    /// key, names it; then everything is signed again.
    pub fn rotate(&self, role: RoleType, wait: LockWait<'_>) -> Result<u64> {
        let _lock = self.lock(wait)?;
        let (version, _) = self.latest_root()?;
        let old = keys::key_path(&self.keys, role);
        let retired = self
            .keys
            .join(format!("{}.pk8.retired-{version}", keys::role_name(role)));
        std::fs::rename(&old, &retired)?;
        keys::generate(&self.keys, role)?;
        let next = version + 1;
        let staging = tempfile::Builder::new()
            .prefix(".rotate-")
            .tempdir_in(&self.dir)?;
        let path = staging.path().join(format!("{next}.root.json"));
        runtime()?.block_on(async {
            let root = keys::make_root(&self.keys, next, now() + self.expiry.root).await?;
            let old_root = (role == RoleType::Root).then_some(retired.as_path());
            let bytes = keys::sign_root(&self.keys, root, old_root).await?;
            std::fs::write(&path, &bytes)?;
            anyhow::Ok(())
        })?;
        self.sign_under(None, Some(&path))?;
        Ok(next)
    }

    /// Writes the package list of `commit` to `packages/<commit>.list` (before any index
    /// names it: the caller syncs the folder), so that a client diffs an update's
    /// packages against its own without fetching the tree. `None` for a tree without a
    /// dpkg database.
    fn export_packages(&self, repo: &Repo, commit: &ObjectId) -> Result<Option<FileRef>> {
        let pkgs = match arbor_store::dpkg::packages_of(repo, commit) {
            Ok(p) if !p.is_empty() => p,
            Ok(_) => return Ok(None),
            Err(e) => {
                tracing::info!("publishing {commit} without a package list: {e:#}");
                return Ok(None);
            }
        };
        let rel = format!("packages/{commit}.list");
        let path = self.dir.join(&rel);
        std::fs::create_dir_all(path.parent().unwrap())?;
        let text = arbor_store::dpkg::to_metadata(&pkgs);
        fsutil::write_file_atomic(&path, text.as_bytes(), 0o644)?;
        digests::file_ref(&self.dir, &rel).map(Some)
    }

    /// Packs every object of `commit` not yet published; returns the manifest and how
    /// many objects were written.
    fn export_objects(&self, repo: &Repo, commit: &ObjectId) -> Result<(Manifest, u64)> {
        let objects = Manifest::objects_of(repo, commit)?;
        let written = std::sync::atomic::AtomicU64::new(0);
        let entries: Vec<ManifestEntry> = objects
            .par_iter()
            .map(|(id, kind)| {
                let mut e = ManifestEntry {
                    kind: *kind,
                    id: *id,
                    raw: 0,
                    packed: 0,
                };
                let path = self.dir.join(e.path());
                if let Ok(m) = std::fs::metadata(&path) {
                    e.packed = m.len();
                    e.raw = match kind {
                        ObjectKind::File => repo.file_info(id)?.size,
                        _ => repo.read_meta_object(id, *kind)?.len() as u64,
                    };
                    return Ok(e);
                }
                let (bytes, raw) = pack::pack(repo, id, *kind)?;
                std::fs::create_dir_all(path.parent().unwrap())?;
                // Renamed into place; one syncfs covers them all before any index
                // names them.
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, &bytes)?;
                std::fs::rename(&tmp, &path)?;
                written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                e.raw = raw;
                e.packed = bytes.len() as u64;
                Ok(e)
            })
            .collect::<Result<_>>()?;
        Ok((
            Manifest {
                commit: *commit,
                entries,
            },
            written.into_inner(),
        ))
    }
}

/// What a full fetch of `target` costs a store that holds commit `from`.
fn full_from(repo: &Repo, from: &ObjectId, target: &Manifest) -> Result<FullFrom> {
    let have: std::collections::HashSet<_> =
        Manifest::objects_of(repo, from)?.into_iter().collect();
    let missing = target
        .entries
        .iter()
        .filter(|e| !have.contains(&(e.id, e.kind)));
    let (bytes, objects) = missing.fold((0, 0), |(b, n), e| (b + e.packed, n + 1));
    Ok(FullFrom { bytes, objects })
}
