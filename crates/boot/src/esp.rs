//! Boot entries and kernels on a FAT EFI system partition, read by systemd-boot.
//!
//! FAT has no symlinks, so the `loader` symlink swap of an ext4 `/boot` cannot select
//! an entry set. Instead the switch relies on how systemd-boot picks its default: among
//! entries with tries left and the same `sort-key`, the highest `version` wins. Entry
//! files are named `arbor-<os>-<version>[+tries].conf`, and a change of the boot order
//! is carried out as:
//!
//! 1. Entries whose position changed get a new version number, higher than any entry
//!    file present, the new default highest of all; each is written under a name the
//!    loader ignores, synced, and renamed to its `.conf` name, the new default first.
//!    Until that first rename the old default is the highest; from it on, the new one.
//! 2. The file system is synced, then the entries no longer wanted are deleted (the
//!    new default stays the highest throughout), and it is synced again.
//!
//! So after a power cut at any instant the loader boots the old default or the new
//! one. A crash between the steps leaves extra entries of lower versions; they are
//! read as duplicates of the same deployment (the highest version counts) or as older
//! entries, and the next write deletes them. Kernels live in `arbor/<os>-<bootcsum>/`,
//! written into a temporary folder and renamed once complete.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, Result};
use rustix::fs::{self as rfs, AtFlags};

use super::{BlsEntry, Tries, parse_counter};
use arbor_core::error::write_error;
use arbor_core::fsutil;

/// Where entries live below the ESP.
const ENTRIES: &str = "loader/entries";

/// One of our entry files on the ESP.
#[derive(Clone, Debug)]
struct Current {
    name: String,
    entry: BlsEntry,
    tries: Option<Tries>,
}

/// `arbor-<os>-<version>` and tries from a file name of ours.
fn parse_name(name: &str) -> Option<(String, u32, Option<Tries>)> {
    let (base, tries) = parse_counter(name.strip_suffix(".conf")?);
    let rest = base.strip_prefix("arbor-")?;
    let (os, version) = rest.rsplit_once('-')?;
    Some((os.to_string(), version.parse().ok()?, tries))
}

/// The file name of an entry of `os` at `version`.
pub fn entry_file_name(os: &str, version: u32, tries: Option<Tries>) -> String {
    match tries {
        None => format!("arbor-{os}-{version}.conf"),
        Some(Tries { left, done: 0 }) => format!("arbor-{os}-{version}+{left}.conf"),
        Some(Tries { left, done }) => format!("arbor-{os}-{version}+{left}-{done}.conf"),
    }
}

fn read_current(esp: &Path) -> Result<Vec<Current>> {
    let dir = esp.join(ENTRIES);
    let mut out = Vec::new();
    let list = match std::fs::read_dir(&dir) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for e in list {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((_, version, tries)) = parse_name(&name) else {
            continue; // not ours, or a temporary
        };
        let text = std::fs::read_to_string(e.path())?;
        let Ok(entry) = BlsEntry::parse(&text) else {
            continue; // a torn write of an interrupted switch: never selected either
        };
        if entry.version != version || entry.arbor_path().is_none() {
            continue;
        }
        out.push(Current { name, entry, tries });
    }
    Ok(out)
}

/// The entries in boot order (highest version first), one per deployment: of several
/// files for one deployment (left by an interrupted switch) the highest version counts.
pub fn read_entries(esp: &Path) -> Result<Vec<(String, BlsEntry)>> {
    let mut current = read_current(esp)?;
    current.sort_by_key(|c| std::cmp::Reverse(c.entry.version));
    let mut seen = BTreeSet::new();
    Ok(current
        .into_iter()
        .filter(|c| seen.insert(c.entry.arbor_path().unwrap_or_default().to_string()))
        .map(|c| (c.name, c.entry))
        .collect())
}

/// What the switch writes and deletes: pure, so it is tested without a disk.
#[derive(Debug, PartialEq, Eq)]
pub struct SwitchPlan {
    /// New entry files (name, entry), the new default first.
    pub write: Vec<(String, BlsEntry)>,
    /// Files deleted once the new ones are durable.
    pub delete: Vec<String>,
}

/// Plans the switch from the files present to `wanted` (boot order, each entry with
/// its tries; the `version` of the given entries is ignored).
fn plan(current: &[Current], wanted: &[(BlsEntry, Option<Tries>, String)]) -> SwitchPlan {
    let top = current.iter().map(|c| c.entry.version).max().unwrap_or(0);
    let best: BTreeMap<&str, &Current> = {
        let mut m: BTreeMap<&str, &Current> = BTreeMap::new();
        for c in current {
            let p = c.entry.arbor_path().unwrap_or_default();
            if m.get(p).is_none_or(|o| o.entry.version < c.entry.version) {
                m.insert(p, c);
            }
        }
        m
    };
    let same = |c: &Current, e: &BlsEntry, tries: &Option<Tries>| {
        let mut e = e.clone();
        e.version = c.entry.version;
        c.entry == e && c.tries == *tries
    };
    // From the bottom up: an entry keeps its file while its version stays above the
    // one below it; the first that cannot, and all above it, get new numbers. The
    // default keeps its file only when it already is the highest there is.
    let mut floor = 0;
    let mut next_new = top;
    let mut chosen: Vec<(u32, Option<String>)> = vec![(0, None); wanted.len()];
    for (i, (e, tries, _)) in wanted.iter().enumerate().rev() {
        let keep = best
            .get(e.arbor_path().unwrap_or_default())
            .filter(|c| c.entry.version > floor && same(c, e, tries))
            .filter(|c| i > 0 || c.entry.version == top)
            .filter(|_| next_new == top);
        chosen[i] = match keep {
            Some(c) => (c.entry.version, Some(c.name.clone())),
            None => {
                next_new = next_new.max(floor) + 1;
                (next_new, None)
            }
        };
        floor = chosen[i].0;
    }
    let mut write = Vec::new();
    let mut kept = BTreeSet::new();
    for ((version, existing), (e, tries, os)) in chosen.into_iter().zip(wanted) {
        match existing {
            Some(name) => {
                kept.insert(name);
            }
            None => {
                let mut e = e.clone();
                e.version = version;
                write.push((entry_file_name(os, version, *tries), e));
            }
        }
    }
    let delete = current
        .iter()
        .map(|c| c.name.clone())
        .filter(|n| !kept.contains(n))
        .collect();
    SwitchPlan { write, delete }
}

/// Makes `wanted` (boot order; entry, tries, stateroot) the boot configuration on the
/// ESP, as the module comment describes.
pub fn write_entries(esp: &Path, wanted: &[(BlsEntry, Option<Tries>, String)]) -> Result<()> {
    let dir_path = esp.join(ENTRIES);
    std::fs::create_dir_all(&dir_path)
        .map_err(|e| write_error(e, || format!("creating {}", dir_path.display())))?;
    let dir = fsutil::open_dir(&dir_path)?;
    let switch = plan(&read_current(esp)?, wanted);
    for (name, entry) in &switch.write {
        // atomic_write's temporary is a dot-name without `.conf`: the loader skips it.
        fsutil::atomic_write(dir.as_fd(), name, entry.to_text().as_bytes(), 0o644)
            .map_err(|e| write_error(e, || format!("writing boot entry {name}")))?;
    }
    fsutil::sync_filesystem(&dir).context("syncing the ESP")?;
    for name in &switch.delete {
        match rfs::unlinkat(&dir, name.as_str(), AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e).with_context(|| format!("removing boot entry {name}")),
        }
    }
    fsutil::sync_filesystem(&dir).context("syncing the ESP")?;
    Ok(())
}

/// Renames an entry file (boot counting, and marking a boot good), durably.
pub fn rename_entry(esp: &Path, from: &str, to: &str) -> Result<()> {
    let dir = fsutil::open_dir(&esp.join(ENTRIES))?;
    rfs::renameat(&dir, from, &dir, to)
        .with_context(|| format!("renaming boot entry {from} to {to}"))?;
    fsutil::sync_filesystem(&dir).context("syncing the ESP")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kargs: &str) -> BlsEntry {
        BlsEntry {
            title: path.into(),
            version: 0,
            sort_key: "arbor-os".into(),
            linux: "/arbor/k/vmlinuz".into(),
            initrd: None,
            options: vec![
                format!("arbor=/arbor/deploy/os/deploy/{path}"),
                kargs.into(),
            ],
        }
    }
    fn current(path: &str, version: u32) -> Current {
        let mut e = entry(path, "quiet");
        e.version = version;
        Current {
            name: entry_file_name("os", version, None),
            entry: e,
            tries: None,
        }
    }
    fn wanted(paths: &[&str]) -> Vec<(BlsEntry, Option<Tries>, String)> {
        paths
            .iter()
            .map(|p| (entry(p, "quiet"), None, "os".to_string()))
            .collect()
    }
    fn written(p: &SwitchPlan) -> Vec<(String, u32)> {
        p.write
            .iter()
            .map(|(_, e)| {
                (
                    e.arbor_path()
                        .unwrap()
                        .rsplit('/')
                        .next()
                        .unwrap()
                        .to_string(),
                    e.version,
                )
            })
            .collect()
    }

    #[test]
    fn a_deploy_writes_one_entry_above_all_and_drops_the_oldest() {
        let cur = [current("b", 5), current("a", 4), current("old", 3)];
        let p = plan(&cur, &wanted(&["new", "b", "a"]));
        assert_eq!(written(&p), [("new".to_string(), 6)]);
        assert_eq!(p.delete, ["arbor-os-3.conf"]);
    }

    #[test]
    fn a_rollback_rewrites_the_new_default_above_the_old_one() {
        let cur = [current("b", 5), current("a", 4)];
        let p = plan(&cur, &wanted(&["a", "b"]));
        assert_eq!(written(&p), [("a".to_string(), 6)]);
        assert_eq!(p.delete, ["arbor-os-4.conf"]);
    }

    #[test]
    fn removing_the_default_rewrites_the_next_so_no_third_entry_is_ever_default() {
        let cur = [current("x", 7), current("y", 6), current("a", 5)];
        let p = plan(&cur, &wanted(&["a"]));
        assert_eq!(written(&p), [("a".to_string(), 8)]);
        let mut d = p.delete.clone();
        d.sort();
        assert_eq!(d, ["arbor-os-5.conf", "arbor-os-6.conf", "arbor-os-7.conf"]);
    }

    #[test]
    fn a_changed_entry_below_the_default_gets_new_numbers_up_to_the_top() {
        let cur = [current("a", 5), current("b", 4)];
        let mut w = wanted(&["a", "b"]);
        w[1].0.options[1] = "console=ttyS0".into();
        let p = plan(&cur, &w);
        assert_eq!(written(&p), [("a".to_string(), 7), ("b".to_string(), 6)]);
        assert_eq!(p.write[0].1.version, 7, "the default is written first");
        assert!(
            plan(&cur, &wanted(&["a", "b"])).write.is_empty(),
            "nothing to do"
        );
    }

    #[test]
    fn file_names_round_trip() {
        let t = Some(Tries { left: 2, done: 1 });
        let name = entry_file_name("debian", 12, t);
        assert_eq!(name, "arbor-debian-12+2-1.conf");
        assert_eq!(parse_name(&name), Some(("debian".into(), 12, t)));
        assert_eq!(parse_name("other.conf"), None);
        assert_eq!(parse_name(".arbor-debian-12.conf.tmp-1"), None);
    }
}
