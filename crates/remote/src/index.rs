//! The channel index: the signed list of a channel's versions (docs/remote.md), and
//! the choices a client makes from it: which version this device may take (phased
//! rollout) and how to fetch it (full, or a chain of deltas, fewest bytes).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use anyhow::{Result, bail, ensure};
use serde::{Deserialize, Serialize};

use arbor_store::ObjectId;

/// The format this arbor writes and reads.
pub const INDEX_FORMAT: u32 = 1;

/// A file of the published repository that the index vouches for.
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
pub struct FileRef {
    /// Relative path in the repository (`deltas/…`, `manifests/…`).
    pub path: String,
    /// Exact size: a download never reads more.
    pub size: u64,
    /// BLAKE3 of the file, hex.
    pub blake3: String,
    /// SHA-256 of the file, hex: its blob digest in an OCI registry (docs/registry.md).
    /// Absent in indexes written before arbor 0.15.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// A static delta to a version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaRef {
    /// The commit it starts from.
    pub from: ObjectId,
    /// The delta file.
    #[serde(flatten)]
    pub file: FileRef,
    /// The bytes it writes into the store (for the disk-space check).
    pub raw_bytes: u64,
    /// What a full fetch costs a store that holds `from`: the client weighs the delta
    /// against it without downloading the target's manifest (absent in indexes written
    /// before arbor 0.9; the client then reads the manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_from: Option<FullFrom>,
    /// The delta file's format (docs/delta.md); 1 in indexes that predate the field. A
    /// client passes over a delta newer than it reads, and fetches another way.
    #[serde(default = "delta_format_1")]
    pub format: u32,
}

fn delta_format_1() -> u32 {
    1
}

/// The objects of a version that a commit lacks, summed by the publisher.
#[derive(
    Clone,
    Copy,
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
pub struct FullFrom {
    /// Packed bytes a full fetch transfers.
    pub bytes: u64,
    /// Objects a full fetch transfers.
    pub objects: u64,
}

/// One published version of a channel.
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
pub struct VersionEntry {
    /// The version string (`12.1`), unique in the channel.
    pub version: String,
    /// Its commit.
    pub commit: ObjectId,
    /// Unix time of publication.
    pub published: i64,
    /// Security or otherwise urgent: the `critical_install` policy installs it.
    #[serde(default)]
    pub critical: bool,
    /// Percentage of devices offered this version (phased rollout).
    pub phase: u8,
    /// Where the release notes are.
    #[serde(default)]
    pub release_notes: Option<String>,
    /// Every object of the commit with its sizes.
    pub manifest: FileRef,
    /// The packed size of all its objects (a fetch from nothing).
    pub full_bytes: u64,
    /// Their size unpacked.
    pub raw_bytes: u64,
    /// Deltas that lead to it.
    #[serde(default)]
    pub deltas: Vec<DeltaRef>,
    /// Its installed packages, one `name:arch version` per line: what a client shows
    /// an update changes before fetching any of it. Absent when the tree has no dpkg
    /// database, and in indexes written before arbor 0.10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages: Option<FileRef>,
    /// A version a machine must run before this one: the last release of a major
    /// version, carrying what the next one's migration needs. A machine on an older
    /// version, or on one the channel does not list, is offered that version in this
    /// one's place (whatever its phase) and is refused this one when it asks for it
    /// by name ([`next_step`]). Absent unless the publisher set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires: Option<String>,
    /// Withdrawn by the publisher (`arbor publish rollout` halted it, or `publish
    /// withdraw`): offered to no machine, and a machine that staged it and has not
    /// booted it drops the staged deployment at its next check. A machine already
    /// running it stays there unless its own health check says otherwise. Its phase
    /// is 0 too, so that clients before arbor 0.14, which do not read this, offer it
    /// to no new machine either.
    #[serde(default)]
    pub withdrawn: bool,
    /// Unix time its phase was last set: the rollout controller widens it only after
    /// the channel's soak time has passed since (absent in indexes before arbor 0.14).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_since: Option<i64>,
    /// The SHA-256 of every packed object of the manifest, 32 bytes each in the
    /// manifest's order (`manifests/<commit>.sha256`): what a client following an OCI
    /// registry asks the registry for (docs/registry.md). Absent in indexes written
    /// before arbor 0.15.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digests: Option<FileRef>,
}

/// The largest package list a client reads (a Debian system with every package of
/// the archive lists about 3 MB).
pub const MAX_PACKAGE_LIST: u64 = 16 << 20;

/// The index of one channel, oldest version first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelIndex {
    /// [`INDEX_FORMAT`].
    pub format: u32,
    /// The channel's name.
    pub channel: String,
    /// Its versions in publication order.
    pub versions: Vec<VersionEntry>,
    /// Where its machines send health reports, and the rules the rollout controller
    /// widens and halts by (docs/fleet.md). Absent: no reports, phases by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutRules>,
    /// Other servers of this publication, asked after the ones a machine configured
    /// (docs/remote.md, "Mirrors"). Signed, so a server cannot add one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<String>,
}

/// True for a path a published repository may name: relative, no `..`, plain characters.
fn safe_path(p: &str, prefix: &str) -> bool {
    p.starts_with(prefix)
        && p.len() < 256
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
}

/// True for a channel name: it becomes a file name and a ref component.
pub fn valid_channel(c: &str) -> bool {
    c.len() <= 64
        && c.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl ChannelIndex {
    /// Parses and checks an index that arrived from outside.
    pub fn parse(bytes: &[u8], channel: &str) -> Result<ChannelIndex> {
        let idx: ChannelIndex = serde_json::from_slice(bytes)
            .map_err(|e| anyhow::anyhow!("the index of channel {channel} is malformed: {e}"))?;
        ensure!(
            idx.format == INDEX_FORMAT,
            "the index of channel {channel} has format {}, this arbor reads {INDEX_FORMAT}",
            idx.format
        );
        ensure!(
            idx.channel == channel,
            "the index of channel {channel} says it is channel {}",
            idx.channel
        );
        if let Some(r) = &idx.rollout {
            r.check()
                .map_err(|e| e.context(format!("the index of channel {channel}")))?;
        }
        ensure!(
            idx.mirrors.len() <= crate::mirror_url::MAX_MIRRORS,
            "the index of channel {channel} names {} mirrors (at most {})",
            idx.mirrors.len(),
            crate::mirror_url::MAX_MIRRORS
        );
        for m in &idx.mirrors {
            crate::mirror_url::check_named(m)
                .map_err(|e| e.context(format!("the index of channel {channel}")))?;
        }
        let mut seen = std::collections::HashSet::new();
        for v in &idx.versions {
            ensure!(
                seen.insert(&v.version),
                "channel {channel} lists version {} twice",
                v.version
            );
            ensure!(v.phase <= 100, "version {}: phase {}%", v.version, v.phase);
            let refs = std::iter::once(("manifests/", &v.manifest))
                .chain(v.deltas.iter().map(|d| ("deltas/", &d.file)))
                .chain(v.packages.iter().map(|f| ("packages/", f)))
                .chain(v.digests.iter().map(|f| ("manifests/", f)));
            for (prefix, f) in refs {
                let hex64 = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
                if !safe_path(&f.path, prefix)
                    || !hex64(&f.blake3)
                    || f.sha256.as_deref().is_some_and(|h| !hex64(h))
                {
                    bail!("version {}: refusing the file name {:?}", v.version, f.path);
                }
            }
            if let Some(r) = &v.requires {
                // A required version listed after this one would be a loop; one the
                // channel does not list is the publisher's error, told to each machine
                // that needs it (next_step), not a reason to distrust the index.
                if let Some(at) = idx.versions.iter().position(|o| &o.version == r) {
                    ensure!(
                        idx.versions.iter().position(|o| o.version == v.version) > Some(at),
                        "version {} requires {r}, which is not an earlier version",
                        v.version
                    );
                }
            }
            if let Some(f) = &v.packages {
                ensure!(
                    f.size <= MAX_PACKAGE_LIST,
                    "version {}: a package list of {} bytes (at most {MAX_PACKAGE_LIST})",
                    v.version,
                    f.size
                );
            }
        }
        Ok(idx)
    }

    /// The version entry of `version`.
    pub fn version(&self, version: &str) -> Result<&VersionEntry> {
        self.versions
            .iter()
            .find(|v| v.version == version)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "channel {} has no version {version} (it has: {})",
                    self.channel,
                    self.versions
                        .iter()
                        .map(|v| v.version.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }

    /// Position of a commit in the channel, if published there.
    pub fn position_of(&self, commit: &ObjectId) -> Option<usize> {
        self.versions.iter().rposition(|v| v.commit == *commit)
    }
}

/// This device's phase for a version: `blake3(machine-id, channel, version) mod 100`.
/// A version published at `p`% is offered when the phase is below `p`.
pub fn device_phase(machine_id: &str, channel: &str, version: &str) -> u8 {
    let mut h = blake3::Hasher::new();
    for part in [machine_id.trim(), channel, version] {
        h.update(part.as_bytes());
        h.update(&[0]);
    }
    let first: [u8; 8] = h.finalize().as_bytes()[..8].try_into().unwrap();
    (u64::from_le_bytes(first) % 100) as u8
}

/// A version this device considered, and why it was or was not offered.
#[derive(Clone, Debug, Serialize, zvariant::Type, zvariant::Value, zvariant::OwnedValue)]
#[zvariant(signature = "dict")]
pub struct Considered {
    /// The version.
    pub version: String,
    /// The device's phase for it.
    pub device_phase: u8,
    /// The version's rollout percentage.
    pub phase: u8,
    /// Whether it is offered to this device.
    pub offered: bool,
    /// Withdrawn by its publisher: offered to no device.
    #[serde(default)]
    pub withdrawn: bool,
}

/// Which version this device should run: the newest offered one, if newer than what it
/// runs. `None` when the device is current (or ahead of every offered version).
pub fn choose<'a>(
    idx: &'a ChannelIndex,
    current: Option<&ObjectId>,
    machine_id: &str,
    phase_override: bool,
) -> (Option<&'a VersionEntry>, Vec<Considered>) {
    let current_pos = current.and_then(|c| idx.position_of(c));
    let mut considered = Vec::new();
    for (pos, v) in idx.versions.iter().enumerate().rev() {
        let device_phase = device_phase(machine_id, &idx.channel, &v.version);
        let offered = !v.withdrawn && (phase_override || device_phase < v.phase);
        considered.push(Considered {
            version: v.version.clone(),
            device_phase,
            phase: v.phase,
            offered,
            withdrawn: v.withdrawn,
        });
        if offered {
            let newer = current_pos.is_none_or(|c| pos > c);
            return (newer.then_some(v), considered);
        }
    }
    (None, considered)
}

/// A version's required version ([`VersionEntry::requires`]) that the channel does not
/// list: the publication skips it, and no machine that needs it may update past it.
#[derive(Debug, thiserror::Error)]
#[error(
    "version {version} requires that machines run {required} first, and channel {channel} \
     does not list {required}: the publication skips a required version (ask its \
     publisher); nothing was changed"
)]
pub struct RequiredVersionMissing {
    /// The version chosen or asked for.
    pub version: String,
    /// The version it requires.
    pub required: String,
    /// The channel.
    pub channel: String,
}

/// Where a machine running `current` goes on its way to `target`: `target` itself, or
/// the earliest version it requires, directly or through another required version,
/// that the machine has not reached. A machine whose commit the channel does not list
/// has reached none. Positions fall at each step (checked when the index is read), so
/// the walk ends.
pub fn next_step<'a>(
    idx: &'a ChannelIndex,
    current: Option<&ObjectId>,
    target: &'a VersionEntry,
) -> Result<&'a VersionEntry, RequiredVersionMissing> {
    let current_pos = current.and_then(|c| idx.position_of(c));
    let mut step = target;
    while let Some(required) = &step.requires {
        let Some(at) = idx.versions.iter().position(|v| &v.version == required) else {
            return Err(RequiredVersionMissing {
                version: step.version.clone(),
                required: required.clone(),
                channel: idx.channel.clone(),
            });
        };
        if current_pos.is_some_and(|c| c >= at) {
            break;
        }
        step = &idx.versions[at];
    }
    Ok(step)
}

/// How a candidate fetches.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    zvariant::Type,
    zvariant::Value,
    zvariant::OwnedValue,
)]
#[zvariant(signature = "s", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Every missing object on its own.
    Full,
    /// A chain of static deltas.
    Deltas,
    /// Nothing to fetch: the commit is stored.
    #[default]
    Present,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad` so that `{:<7}` aligns it.
        f.pad(match self {
            Method::Full => "full",
            Method::Deltas => "deltas",
            Method::Present => "present",
        })
    }
}

/// One way to fetch a version.
#[derive(
    Clone, Debug, PartialEq, Eq, Serialize, zvariant::Type, zvariant::Value, zvariant::OwnedValue,
)]
#[zvariant(signature = "dict")]
pub struct Candidate {
    /// Full fetch or deltas.
    pub kind: Method,
    /// The commit a delta chain starts from.
    pub from: Option<ObjectId>,
    /// The deltas, in the order they apply.
    pub deltas: Vec<DeltaRef>,
    /// Bytes to download: the score (fewer is better).
    pub bytes: u64,
}

/// The first step from a commit toward the target: the delta and the commit it makes.
type Hop<'a> = (&'a DeltaRef, ObjectId);

/// The delta chains to `target` from every commit `have` accepts, each the cheapest
/// from its start (Dijkstra on the reversed delta graph), cheapest first.
pub fn delta_chains(
    idx: &ChannelIndex,
    target: &ObjectId,
    have: impl Fn(&ObjectId) -> bool,
) -> Vec<Candidate> {
    // into[c] = the deltas that produce commit c.
    let mut into: HashMap<ObjectId, Vec<&DeltaRef>> = HashMap::new();
    for v in &idx.versions {
        for d in v.deltas.iter().filter(|d| d.format <= arbor_delta::FORMAT) {
            into.entry(v.commit).or_default().push(d);
        }
    }
    // best[c] = (bytes from c to target, the first delta to take from c and where it
    // leads)
    let mut best: BTreeMap<ObjectId, (u64, Option<Hop>)> = BTreeMap::new();
    let mut heap = BinaryHeap::new();
    best.insert(*target, (0, None));
    heap.push(Reverse((0u64, *target)));
    while let Some(Reverse((cost, node))) = heap.pop() {
        if best.get(&node).is_some_and(|(c, _)| *c < cost) {
            continue;
        }
        for d in into.get(&node).into_iter().flatten() {
            let c = cost.saturating_add(d.file.size);
            if best.get(&d.from).is_none_or(|(old, _)| c < *old) {
                best.insert(d.from, (c, Some((*d, node))));
                heap.push(Reverse((c, d.from)));
            }
        }
    }
    let mut out: Vec<Candidate> = best
        .iter()
        .filter(|(c, (_, first))| first.is_some() && have(c))
        .map(|(start, (bytes, _))| {
            let mut deltas = Vec::new();
            let mut at = *start;
            while let Some((_, Some((d, to)))) = best.get(&at) {
                deltas.push((*d).clone());
                at = *to;
            }
            Candidate {
                kind: Method::Deltas,
                from: Some(*start),
                deltas,
                bytes: *bytes,
            }
        })
        .collect();
    out.sort_by_key(|c| c.bytes);
    out
}

/// On the bus a delta is one dictionary with its file's entries beside its own, as
/// serde flattens them in the index's JSON.
impl zvariant::Type for DeltaRef {
    const SIGNATURE: &'static zvariant::Signature = arbor_core::wire::DICT;
}

impl From<DeltaRef> for zvariant::Value<'_> {
    fn from(d: DeltaRef) -> Self {
        let mut e = arbor_core::wire::entries(d.file.into()).expect("a file ref is a dictionary");
        e.insert("from".into(), d.from.into());
        e.insert("raw_bytes".into(), d.raw_bytes.into());
        if let Some(f) = d.full_from {
            e.insert("full_from".into(), f.into());
        }
        e.insert("format".into(), d.format.into());
        zvariant::Value::from(e)
    }
}

impl TryFrom<zvariant::Value<'_>> for DeltaRef {
    type Error = zvariant::Error;
    fn try_from(v: zvariant::Value<'_>) -> Result<Self, Self::Error> {
        use arbor_core::wire::take;
        // The derived conversions take owned ('static) values.
        let v: zvariant::Value<'static> = v.try_to_owned()?.into();
        let mut e = arbor_core::wire::entries(v.try_clone()?)?;
        Ok(DeltaRef {
            from: take(&mut e, "from")?,
            file: FileRef::try_from(v)?,
            raw_bytes: take(&mut e, "raw_bytes")?,
            full_from: e.remove("full_from").map(|f| f.downcast()).transpose()?,
            format: take(&mut e, "format")?,
        })
    }
}

arbor_core::owned_value_through_value!(DeltaRef);

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ObjectId {
        ObjectId::of(s.as_bytes())
    }

    fn file(path: &str, size: u64) -> FileRef {
        FileRef {
            path: path.into(),
            size,
            blake3: "0".repeat(64),
            sha256: None,
        }
    }

    fn version(v: &str, phase: u8, deltas: Vec<(&str, u64)>) -> VersionEntry {
        VersionEntry {
            version: v.into(),
            commit: id(v),
            published: 0,
            critical: false,
            phase,
            release_notes: None,
            manifest: file(&format!("manifests/{v}"), 10),
            full_bytes: 1000,
            raw_bytes: 2000,
            deltas: deltas
                .into_iter()
                .map(|(from, size)| DeltaRef {
                    from: id(from),
                    file: file(&format!("deltas/{from}-{v}"), size),
                    raw_bytes: 0,
                    full_from: None,
                    format: 1,
                })
                .collect(),
            packages: None,
            requires: None,
            withdrawn: false,
            phase_since: None,
            digests: None,
        }
    }

    fn index() -> ChannelIndex {
        ChannelIndex {
            format: INDEX_FORMAT,
            channel: "stable".into(),
            versions: vec![
                version("1", 100, vec![]),
                version("2", 100, vec![("1", 50)]),
                version("3", 100, vec![("2", 40), ("1", 200)]),
            ],
            rollout: None,
            mirrors: Vec::new(),
        }
    }

    #[test]
    fn a_required_version_is_the_next_step_until_reached() {
        let mut idx = index();
        idx.versions.push(version("4", 100, vec![]));
        idx.versions[3].requires = Some("2".into());
        fn step(idx: &ChannelIndex, cur: Option<&str>) -> Result<String, RequiredVersionMissing> {
            next_step(idx, cur.map(id).as_ref(), &idx.versions[3]).map(|v| v.version.clone())
        }
        assert_eq!(step(&idx, Some("1")).unwrap(), "2");
        assert_eq!(
            step(&idx, None).unwrap(),
            "2",
            "an unlisted machine has reached nothing"
        );
        assert_eq!(step(&idx, Some("2")).unwrap(), "4");
        assert_eq!(step(&idx, Some("3")).unwrap(), "4");
        // Through a chain: 4 requires 3, which requires 2.
        idx.versions[3].requires = Some("3".into());
        idx.versions[2].requires = Some("2".into());
        assert_eq!(step(&idx, Some("1")).unwrap(), "2");
        assert_eq!(step(&idx, Some("2")).unwrap(), "3");
        // A publication that skips the required version: named, for the machines that
        // need it only.
        idx.versions[3].requires = Some("3.9".into());
        let e = step(&idx, Some("1")).unwrap_err().to_string();
        assert!(
            e.contains("requires") && e.contains("3.9") && e.contains("skips"),
            "{e}"
        );
        // A required version listed later is refused when the index is read.
        let mut bad = index();
        bad.versions[1].requires = Some("3".into());
        let json = serde_json::to_vec(&bad).unwrap();
        let e = ChannelIndex::parse(&json, "stable")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an earlier version"), "{e}");
    }

    #[test]
    fn the_cheapest_chain_wins_even_through_an_intermediate_version() {
        let idx = index();
        let chains = delta_chains(&idx, &id("3"), |c| *c == id("1"));
        assert_eq!(chains.len(), 1);
        assert_eq!(chains[0].bytes, 90);
        let paths: Vec<_> = chains[0]
            .deltas
            .iter()
            .map(|d| d.file.path.clone())
            .collect();
        assert_eq!(paths, ["deltas/1-2", "deltas/2-3"]);
        // With both 1 and 2 at hand, both starts are offered, cheapest first.
        let chains = delta_chains(&idx, &id("3"), |c| *c == id("1") || *c == id("2"));
        assert_eq!(chains.iter().map(|c| c.bytes).collect::<Vec<_>>(), [40, 90]);
        assert!(delta_chains(&idx, &id("3"), |_| false).is_empty());
        // A delta in a format this arbor cannot read is passed over.
        let mut idx = index();
        idx.versions[2].deltas[0].format = arbor_delta::FORMAT + 1;
        let chains = delta_chains(&idx, &id("3"), |c| *c == id("2"));
        assert!(chains.is_empty(), "{chains:?}");
        // An index written before the field names format 1.
        let json = serde_json::to_string(&index()).unwrap();
        let old = json.replace(r#","format":1"#, "");
        assert!(json.contains(r#","format":1}"#) && !old.contains(r#","format":1}"#));
        let parsed = ChannelIndex::parse(old.as_bytes(), "stable").unwrap();
        assert_eq!(parsed.versions[2].deltas[0].format, 1);
    }

    #[test]
    fn phases_decide_what_is_offered() {
        let mut idx = index();
        let m = "0123456789abcdef0123456789abcdef";
        let p3 = device_phase(m, "stable", "3");
        assert!(p3 < 100);
        assert_eq!(p3, device_phase(&format!("{m}\n"), "stable", "3"));
        idx.versions[2].phase = p3; // just out
        let (v, considered) = choose(&idx, Some(&id("1")), m, false);
        assert_eq!(v.unwrap().version, "2");
        assert!(!considered[0].offered);
        idx.versions[2].phase = p3 + 1; // just in
        assert_eq!(
            choose(&idx, Some(&id("1")), m, false).0.unwrap().version,
            "3"
        );
        idx.versions[2].phase = 0;
        assert_eq!(
            choose(&idx, Some(&id("1")), m, true).0.unwrap().version,
            "3"
        );
        // A device on 2 with 3 held back has nothing to do; one on 3 is never sent back.
        assert!(choose(&idx, Some(&id("2")), m, false).0.is_none());
        assert!(choose(&idx, Some(&id("3")), m, false).0.is_none());
    }

    #[test]
    fn hostile_indexes_are_refused() {
        let mut idx = index();
        let ok = serde_json::to_vec(&idx).unwrap();
        assert!(ChannelIndex::parse(&ok, "stable").is_ok());
        assert!(ChannelIndex::parse(&ok, "beta").is_err());
        idx.versions[1].deltas[0].file.path = "deltas/../../etc/passwd".into();
        assert!(ChannelIndex::parse(&serde_json::to_vec(&idx).unwrap(), "stable").is_err());
        let mut idx = index();
        idx.versions[1].manifest.path = "/etc/shadow".into();
        assert!(ChannelIndex::parse(&serde_json::to_vec(&idx).unwrap(), "stable").is_err());
        let mut idx = index();
        idx.versions[1].version = "1".into();
        assert!(ChannelIndex::parse(&serde_json::to_vec(&idx).unwrap(), "stable").is_err());
        // A package list outside packages/, or larger than any real one.
        let with_list = |path: &str, size| {
            let mut idx = index();
            idx.versions[1].packages = Some(file(path, size));
            ChannelIndex::parse(&serde_json::to_vec(&idx).unwrap(), "stable")
        };
        assert!(with_list("packages/2.list", 9000).is_ok());
        assert!(with_list("manifests/2.list", 9000).is_err());
        let e = with_list("packages/2.list", MAX_PACKAGE_LIST + 1).unwrap_err();
        assert!(e.to_string().contains("package list of"), "{e}");
        assert!(!valid_channel("../x") && !valid_channel("") && valid_channel("stable-2"));
    }
}
