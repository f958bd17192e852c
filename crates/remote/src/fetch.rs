//! Fetching a published version into the store: choose the path (full, or a chain of
//! deltas, fewest bytes), check disk space, then download and verify.
//!
//! Full fetches run in parallel (bounded) and publish objects in chunks, each made
//! durable before the next starts, so an interrupted fetch keeps what arrived: the next
//! run finds those objects stored and does not fetch them again. The commit object
//! comes in the last chunk, so a stored commit means a complete one. Deltas download to
//! `downloads/<blake3>.part` and resume with Range requests.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail, ensure};
use rayon::prelude::*;
use serde::Serialize;

use super::Remote;
use super::index::{Candidate, ChannelIndex, FileRef, Method, VersionEntry, delta_chains};
use super::mirrors::Sources;
use super::pack::{self, Manifest, ManifestEntry};
use arbor_core::lock::LockWait;
use arbor_core::progress::{Download, Observer, checkpoint};
use arbor_statedb::StateDb;
use arbor_store::dpkg::{self, Package};
use arbor_store::transaction::Transaction;
use arbor_store::{ObjectId, ObjectKind, Repo, StoreError};

/// Parallel downloads at once.
const PARALLEL: usize = 8;
/// A chunk of a full fetch: made durable as one.
const CHUNK_OBJECTS: usize = 256;
const CHUNK_BYTES: u64 = 16 << 20;
/// Free space kept beyond what a fetch needs.
const SPACE_MARGIN: u64 = 64 << 20;

/// How a version would be fetched, and the alternatives.
#[derive(Clone, Debug, Serialize, zvariant::Type, zvariant::Value, zvariant::OwnedValue)]
#[zvariant(signature = "dict")]
pub struct Plan {
    /// The version.
    pub version: String,
    /// Its commit.
    pub commit: ObjectId,
    /// Every way considered, the chosen one first.
    pub candidates: Vec<Candidate>,
    /// Objects a full fetch would transfer (at most that many when `full_estimated`).
    pub missing_objects: u64,
    /// The full candidate's figures are the publisher's upper bound for a store holding
    /// a delta's start, not counted from the manifest: the delta path was clearly
    /// cheaper, so the manifest was not downloaded.
    pub full_estimated: bool,
    /// Bytes the chosen way writes into the store (for the disk-space check).
    pub needs_bytes: u64,
    /// Already in the store: nothing to fetch.
    pub present: bool,
}

/// A [`Plan`] with what carrying it out needs and a report leaves out: the manifest
/// entries a full fetch transfers.
#[derive(Clone, Debug)]
pub struct FetchPlan {
    /// What is reported.
    pub plan: Plan,
    missing: Vec<ManifestEntry>,
}

impl std::ops::Deref for FetchPlan {
    type Target = Plan;
    fn deref(&self) -> &Plan {
        &self.plan
    }
}

impl Plan {
    /// The chosen way.
    pub fn chosen(&self) -> Option<&Candidate> {
        self.candidates.first()
    }

    /// The chosen way when something must be fetched (`None`: the commit is stored).
    pub fn to_fetch(&self) -> Option<&Candidate> {
        self.chosen().filter(|_| !self.present)
    }
}

/// Where a verified file the index names is cached: by its BLAKE3, so a changed file
/// is a new entry and a cached one is checked again by hashing it.
fn cache_path(remote: &Remote, f: &FileRef, ext: &str) -> PathBuf {
    remote.dir.join("cache").join(format!("{}.{ext}", f.blake3))
}

/// A file the signed index names, from the cache if an earlier run downloaded it (and
/// it still hashes to what the index says).
fn cached(remote: &Remote, f: &FileRef, ext: &str) -> Option<Vec<u8>> {
    std::fs::read(cache_path(remote, f, ext))
        .ok()
        .filter(|b| blake3::hash(b).to_hex().as_str() == f.blake3)
}

/// A file the signed index names: `cached` (from [`cached`]), or downloaded (no more
/// than the size the index gives), checked against its hash, and cached.
fn verified(
    remote: &Remote,
    f: &FileRef,
    ext: &str,
    what: &str,
    cached: Option<Vec<u8>>,
) -> Result<Vec<u8>> {
    if let Some(b) = cached {
        return Ok(b);
    }
    let b = remote.sources()?.get_checked(&f.path, f.size, |b| {
        ensure!(
            blake3::hash(b).to_hex().as_str() == f.blake3,
            "{}: not the {what} the signed index names (corrupt or tampered)",
            f.path
        );
        Ok(())
    })?;
    let path = cache_path(remote, f, ext);
    std::fs::create_dir_all(path.parent().unwrap())?;
    arbor_core::fsutil::write_file_atomic(&path, &b, 0o644)?;
    Ok(b)
}

/// The manifest of a version from the cache, if an earlier run downloaded it.
fn cached_manifest(remote: &Remote, v: &VersionEntry) -> Option<Vec<u8>> {
    cached(remote, &v.manifest, "manifest")
}

/// The verified manifest of a version: `cached` (from [`cached_manifest`]), or
/// downloaded and cached.
fn manifest(remote: &Remote, v: &VersionEntry, cached: Option<Vec<u8>>) -> Result<Manifest> {
    let bytes = verified(remote, &v.manifest, "manifest", "manifest", cached)?;
    let m = Manifest::decode(&bytes)?;
    ensure!(
        m.commit == v.commit,
        "the manifest of version {} is for another commit",
        v.version
    );
    Ok(m)
}

/// Learns the registry digest of each object of version `v` from its signed object
/// table (docs/registry.md): a full fetch from a registry asks for blobs by them.
fn register_object_digests(remote: &Remote, v: &VersionEntry, m: &Manifest) -> Result<()> {
    let f = v.digests.as_ref().with_context(|| {
        format!(
            "version {} was published without an object table (before arbor 0.15): \
             publish it again to fetch it whole from a registry",
            v.version
        )
    })?;
    let table = verified(
        remote,
        f,
        "sha256",
        "object table",
        cached(remote, f, "sha256"),
    )?;
    remote.book.register_objects(m, &table)
}

/// The installed packages of a version, from the list its publisher recorded (a few
/// kilobytes, verified against the signed index and cached): what an update changes
/// is known before any of it is fetched. `None` when the index names no list.
pub fn packages(remote: &Remote, v: &VersionEntry) -> Result<Option<Vec<Package>>> {
    let Some(f) = &v.packages else {
        return Ok(None);
    };
    let bytes = verified(remote, f, "list", "package list", cached(remote, f, "list"))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{}: the package list is not UTF-8", f.path))?;
    let list = dpkg::from_metadata(&text).with_context(|| format!("reading {}", f.path))?;
    Ok(Some(list))
}

/// The delta path chosen from the signed index alone, when it is clearly the cheaper
/// one: the publisher recorded what a full fetch costs a store holding a delta's start
/// ([`super::index::FullFrom`]), and the cheapest chain costs no more. The target's
/// manifest (hundreds of kilobytes for an OS) is then never downloaded.
fn plan_from_index(
    v: &VersionEntry,
    chains: &[Candidate],
    have: impl Fn(&ObjectId) -> bool,
) -> Option<(u64, u64)> {
    let best = chains.first()?;
    let full = v
        .deltas
        .iter()
        .filter(|d| have(&d.from))
        .filter_map(|d| d.full_from)
        .min_by_key(|f| f.bytes)?;
    (best.bytes <= full.bytes).then_some((full.bytes, full.objects))
}

/// Works out every way to fetch version `v` and picks the one with the fewest bytes.
pub fn plan(
    repo: &Repo,
    remote: &Remote,
    idx: &ChannelIndex,
    v: &VersionEntry,
) -> Result<FetchPlan> {
    let mut plan = Plan {
        version: v.version.clone(),
        commit: v.commit,
        candidates: Vec::new(),
        missing_objects: 0,
        full_estimated: false,
        needs_bytes: 0,
        // Whole, not just its commit object: after `fsck --delete` removed a damaged
        // object, fetching the commit again is how the store is repaired.
        present: repo.has_object(&v.commit, ObjectKind::Commit)
            && arbor_store::reach::check_complete(repo, &v.commit).is_ok(),
    };
    if plan.present {
        return Ok(FetchPlan {
            plan,
            missing: Vec::new(),
        });
    }
    let have = |c: &ObjectId| repo.has_object(c, ObjectKind::Commit);
    let chains = delta_chains(idx, &v.commit, have);
    // A cached manifest (an interrupted full fetch) gives the exact figures for free.
    let cached = cached_manifest(remote, v);
    if cached.is_none()
        && let Some((full_bytes, full_objects)) = plan_from_index(v, &chains, have)
    {
        plan.candidates = chains;
        plan.candidates.push(Candidate {
            kind: Method::Full,
            from: None,
            deltas: Vec::new(),
            bytes: full_bytes,
        });
        plan.missing_objects = full_objects;
        plan.full_estimated = true;
        plan.needs_bytes = delta_needs(&plan.candidates[0]);
        return Ok(FetchPlan {
            plan,
            missing: Vec::new(),
        });
    }
    let m = manifest(remote, v, cached)?;
    if remote.is_oci() {
        register_object_digests(remote, v, &m)?;
    }
    let missing: Vec<ManifestEntry> = m
        .entries
        .into_iter()
        .filter(|e| !repo.has_object(&e.id, e.kind))
        .collect();
    plan.missing_objects = missing.len() as u64;
    let full = Candidate {
        kind: Method::Full,
        from: None,
        deltas: Vec::new(),
        bytes: missing.iter().map(|e| e.packed).sum(),
    };
    let full_raw: u64 = missing.iter().map(|e| e.raw).sum();
    plan.candidates = chains;
    plan.candidates.push(full);
    plan.candidates.sort_by_key(|c| c.bytes);
    let chosen = &plan.candidates[0];
    plan.needs_bytes = if chosen.kind == Method::Full {
        full_raw
    } else {
        delta_needs(chosen)
    };
    Ok(FetchPlan { plan, missing })
}

/// The room a delta chain needs: its files while they download, plus what the largest
/// writes (at most).
fn delta_needs(chain: &Candidate) -> u64 {
    chain.bytes + chain.deltas.iter().map(|d| d.raw_bytes).max().unwrap_or(0)
}

/// Fails, before anything is downloaded, when the store's filesystem lacks the room.
pub fn check_space(repo: &Repo, needs: u64) -> Result<()> {
    let st = rustix::fs::fstatvfs(repo.root_fd()).context("statvfs of the repository")?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    if free < needs.saturating_add(SPACE_MARGIN) {
        return Err(StoreError::NoSpace {
            doing: format!(
                "fetching needs {} MiB and {} has {} MiB free; nothing was downloaded",
                (needs + SPACE_MARGIN).div_ceil(1 << 20),
                repo.path().display(),
                free >> 20
            ),
        }
        .into());
    }
    Ok(())
}

/// What a fetch did.
#[derive(Clone, Debug, Serialize, zvariant::Type, zvariant::Value, zvariant::OwnedValue)]
#[zvariant(signature = "dict")]
pub struct FetchResult {
    /// The commit now complete in the store.
    pub commit: ObjectId,
    /// How it fetched.
    pub method: Method,
    /// Bytes transferred by this run.
    pub bytes: u64,
    /// Objects or deltas fetched by this run.
    pub items: u64,
}

/// Executes a plan: afterwards the commit is complete in the store.
pub fn execute(
    repo: &Repo,
    remote: &Remote,
    db: &StateDb,
    plan: &FetchPlan,
    obs: &dyn Observer,
) -> Result<FetchResult> {
    let Some(chosen) = plan.to_fetch() else {
        return Ok(FetchResult {
            commit: plan.commit,
            method: Method::Present,
            bytes: 0,
            items: 0,
        });
    };
    ensure!(
        chosen.kind != Method::Full || !plan.full_estimated,
        "internal error: a full fetch planned without the manifest"
    );
    check_space(repo, plan.needs_bytes)?;
    let http = remote.sources()?;
    let (bytes, items) = if chosen.kind == Method::Full {
        fetch_full(repo, &http, &plan.missing, chosen.bytes, obs)?
    } else {
        fetch_deltas(repo, remote, &http, db, chosen, obs)?
    };
    ensure!(
        repo.has_object(&plan.commit, ObjectKind::Commit),
        "the fetch ended without commit {}",
        plan.commit
    );
    Ok(FetchResult {
        commit: plan.commit,
        method: chosen.kind,
        bytes,
        items,
    })
}

/// Fetches each missing object; returns the bytes and objects transferred.
fn fetch_full(
    repo: &Repo,
    http: &Sources,
    missing: &[ManifestEntry],
    total: u64,
    obs: &dyn Observer,
) -> Result<(u64, u64)> {
    let done = AtomicU64::new(0);
    // Objects stored by this run (those found present are not counted).
    let objects = AtomicU64::new(0);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(PARALLEL)
        .build()?;
    let mut start = 0;
    let mut items = 0;
    while start < missing.len() {
        checkpoint(obs)?;
        let mut end = start;
        let mut bytes = 0;
        while end < missing.len() && end - start < CHUNK_OBJECTS && bytes < CHUNK_BYTES {
            bytes += missing[end].packed;
            end += 1;
        }
        let txn = Transaction::begin(repo, LockWait::Wait(&|_| {}))?;
        let chunk = &missing[start..end];
        pool.install(|| {
            chunk.par_iter().try_for_each(|e| {
                if txn.is_present(&e.id, e.kind) {
                    return Ok(());
                }
                // Checked as it is stored: a server with a corrupt copy is passed over.
                let len = http.each(&e.path(), |h| {
                    let data = h.get_bounded(&e.path(), e.packed)?;
                    ensure!(
                        data.len() as u64 == e.packed,
                        "{}: {} bytes where the manifest says {}",
                        e.path(),
                        data.len(),
                        e.packed
                    );
                    pack::unpack(&txn, e, &data)?;
                    Ok(data.len() as u64)
                })?;
                let d = done.fetch_add(len, Ordering::Relaxed) + len;
                obs.download(&Download {
                    bytes_done: d,
                    bytes_total: total,
                    items_done: objects.fetch_add(1, Ordering::Relaxed) + 1,
                    items_total: missing.len() as u64,
                });
                anyhow::Ok(())
            })
        })?;
        txn.finish(&[])?;
        arbor_core::failpoint::hit("fetch-chunk-stored")?;
        items += chunk.len() as u64;
        start = end;
    }
    Ok((done.into_inner(), items))
}

/// The partial-download file of a delta.
fn part_path(remote: &Remote, blake3: &str) -> PathBuf {
    remote.dir.join("downloads").join(format!("{blake3}.part"))
}

/// Fetches and applies a chain of deltas; returns the bytes and deltas transferred.
fn fetch_deltas(
    repo: &Repo,
    remote: &Remote,
    http: &Sources,
    db: &StateDb,
    chain: &Candidate,
    obs: &dyn Observer,
) -> Result<(u64, u64)> {
    std::fs::create_dir_all(remote.dir.join("downloads"))?;
    let total = chain.bytes;
    let mut before = 0;
    let mut transferred = 0;
    for (applied, d) in (0u64..).zip(&chain.deltas) {
        checkpoint(obs)?;
        if !repo.has_object(&d.from, ObjectKind::Commit) {
            bail!(
                "delta {} needs commit {}, which is not stored",
                d.file.path,
                d.from
            );
        }
        let part = part_path(remote, &d.file.blake3);
        let url = http.url(&d.file.path)?.to_string();
        db.download_started(&d.file.blake3, &url, &part, d.file.size)?;
        let progress = |have| {
            obs.download(&Download {
                bytes_done: before + have,
                bytes_total: total,
                items_done: applied,
                items_total: chain.deltas.len() as u64,
            });
            // Cancelling mid-delta is safe: the part file stays, and resumes.
            checkpoint(obs)
        };
        transferred += http.download(&d.file, &part, &progress)?;
        arbor_delta::apply(repo, &part, LockWait::Wait(&|_| {}))
            .with_context(|| format!("applying {}", d.file.path))?;
        let _ = std::fs::remove_file(&part);
        db.download_finished(&d.file.blake3)?;
        before += d.file.size;
    }
    Ok((transferred, chain.deltas.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{DeltaRef, FileRef, FullFrom};

    fn version(deltas: Vec<(ObjectId, u64, Option<u64>)>) -> VersionEntry {
        let file = |path: String, size| FileRef {
            path,
            size,
            blake3: "0".repeat(64),
            sha256: None,
        };
        VersionEntry {
            version: "2".into(),
            commit: ObjectId::of(b"2"),
            published: 0,
            critical: false,
            phase: 100,
            release_notes: None,
            manifest: file("manifests/2".into(), 800_000),
            full_bytes: 300_000_000,
            raw_bytes: 700_000_000,
            deltas: deltas
                .into_iter()
                .map(|(from, size, full)| DeltaRef {
                    from,
                    file: file(format!("deltas/{from}"), size),
                    raw_bytes: 0,
                    full_from: full.map(|bytes| FullFrom { bytes, objects: 9 }),
                    format: arbor_delta::FORMAT,
                })
                .collect(),
            packages: None,
            requires: None,
            withdrawn: false,
            phase_since: None,
            digests: None,
        }
    }

    fn chains(v: &VersionEntry, have: impl Fn(&ObjectId) -> bool) -> Vec<Candidate> {
        let idx = super::super::index::ChannelIndex {
            format: super::super::index::INDEX_FORMAT,
            channel: "stable".into(),
            versions: vec![v.clone()],
            rollout: None,
            mirrors: Vec::new(),
        };
        delta_chains(&idx, &v.commit, have)
    }

    #[test]
    fn the_manifest_is_skipped_only_when_the_index_proves_the_delta_cheaper() {
        let (one, other) = (ObjectId::of(b"1"), ObjectId::of(b"0"));
        let have_one = |c: &ObjectId| *c == one;
        // A cheaper delta from a stored commit: chosen from the index alone.
        let v = version(vec![(one, 3_000, Some(14_000))]);
        assert_eq!(
            plan_from_index(&v, &chains(&v, have_one), have_one),
            Some((14_000, 9))
        );
        // The full fetch would be cheaper: the manifest decides.
        let v = version(vec![(one, 20_000, Some(14_000))]);
        assert_eq!(plan_from_index(&v, &chains(&v, have_one), have_one), None);
        // An index from before `full_from`: the manifest decides.
        let v = version(vec![(one, 3_000, None)]);
        assert_eq!(plan_from_index(&v, &chains(&v, have_one), have_one), None);
        // The figure of a start this store lacks says nothing about this store.
        let v = version(vec![(one, 3_000, None), (other, 2_000, Some(1_000_000))]);
        assert_eq!(plan_from_index(&v, &chains(&v, have_one), have_one), None);
        // No delta reaches the target from what is stored.
        let v = version(vec![(other, 3_000, Some(14_000))]);
        assert_eq!(plan_from_index(&v, &chains(&v, have_one), have_one), None);
    }
}
