//! The inode cache: (device, inode, mtime, size) → content digest, or, with an
//! unchanged ctime too, → the whole file object id. It lets a re-commit skip reading,
//! and even listing the xattrs of, files that did not change.
//!
//! Kept as one blob of fixed-size records per device, sorted by inode, rather than a
//! row per inode: a re-commit loads it with one read instead of stepping through
//! hundreds of thousands of SQLite rows (that alone took longer than the rest of a
//! re-commit of a large tree), and looks inodes up by binary search in place. A
//! commit collects its new records in the same 64-byte form, so the cache costs a
//! commit of a large tree a few megabytes, not tens.

use std::io::{Read, Write};
use std::sync::Mutex;

use anyhow::Result;
use rusqlite::{Connection, MAIN_DB, OptionalExtension, TransactionBehavior, params};

use super::StateDb;

/// What the cache knows of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cached {
    /// BLAKE3 of its content. Used for store objects themselves (a hardlinked
    /// checkout): every new link moves their ctime.
    Content([u8; 32]),
    /// The file object (content with mode, owner and xattrs), valid while ctime is
    /// unchanged: any change of mode, owner or xattrs moves ctime, so a re-commit
    /// needs neither the xattrs nor a hash.
    Object {
        /// ctime in nanoseconds when the object was read.
        ctime_ns: i64,
        /// The file object id.
        id: [u8; 32],
    },
}

/// One inode cache row: this inode, with this mtime and size, holds this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InodeEntry {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// mtime in nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Size in bytes.
    pub size: u64,
    /// What it holds.
    pub cached: Cached,
}

/// Bytes of one record: ino, mtime, size, ctime (8 each), digest (32). A ctime of
/// [`CONTENT`] marks a content record.
const RECORD: usize = 64;
const CONTENT: i64 = i64::MIN;

type Record = [u8; RECORD];

fn u64_at(r: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(r[at..at + 8].try_into().unwrap())
}

fn encode(e: &InodeEntry) -> Record {
    let (ctime, digest) = match e.cached {
        Cached::Content(c) => (CONTENT, c),
        Cached::Object { ctime_ns, id } => (ctime_ns, id),
    };
    let mut r = [0u8; RECORD];
    r[0..8].copy_from_slice(&e.ino.to_le_bytes());
    r[8..16].copy_from_slice(&e.mtime_ns.to_le_bytes());
    r[16..24].copy_from_slice(&e.size.to_le_bytes());
    r[24..32].copy_from_slice(&ctime.to_le_bytes());
    r[32..64].copy_from_slice(&digest);
    r
}

fn decode(dev: u64, r: &[u8]) -> InodeEntry {
    let digest: [u8; 32] = r[32..64].try_into().unwrap();
    let ctime = u64_at(r, 24) as i64;
    InodeEntry {
        dev,
        ino: u64_at(r, 0),
        mtime_ns: u64_at(r, 8) as i64,
        size: u64_at(r, 16),
        cached: if ctime == CONTENT {
            Cached::Content(digest)
        } else {
            Cached::Object {
                ctime_ns: ctime,
                id: digest,
            }
        },
    }
}

/// The records of one device, sorted by inode.
struct DeviceRecords {
    dev: u64,
    records: Vec<Record>,
}

impl DeviceRecords {
    fn find(&self, ino: u64) -> Option<InodeEntry> {
        let i = self
            .records
            .binary_search_by_key(&ino, |r| u64_at(r, 0))
            .ok()?;
        Some(decode(self.dev, &self.records[i]))
    }
}

/// The cache records of some devices, loaded whole so commit threads can read it
/// freely.
#[derive(Default)]
pub struct InodeCache {
    devices: Vec<DeviceRecords>,
}

impl InodeCache {
    fn get(&self, dev: u64, ino: u64, mtime_ns: i64, size: u64) -> Option<Cached> {
        let e = self.devices.iter().find(|d| d.dev == dev)?.find(ino)?;
        (e.mtime_ns == mtime_ns && e.size == size).then_some(e.cached)
    }

    /// The content digest of an unchanged inode, if cached with this mtime and size
    /// as a content record (store objects, files with several links, and files too
    /// recently changed for their ctime to vouch for them).
    pub fn lookup(&self, dev: u64, ino: u64, mtime_ns: i64, size: u64) -> Option<[u8; 32]> {
        match self.get(dev, ino, mtime_ns, size)? {
            Cached::Content(c) => Some(c),
            Cached::Object { .. } => None,
        }
    }

    /// The file object id of an unchanged inode, if cached with this mtime, size and
    /// ctime.
    pub fn lookup_object(
        &self,
        dev: u64,
        ino: u64,
        mtime_ns: i64,
        ctime_ns: i64,
        size: u64,
    ) -> Option<[u8; 32]> {
        match self.get(dev, ino, mtime_ns, size)? {
            Cached::Object { ctime_ns: c, id } if c == ctime_ns => Some(id),
            _ => None,
        }
    }

    /// Number of records loaded.
    pub fn len(&self) -> usize {
        self.devices.iter().map(|d| d.records.len()).sum()
    }

    /// True when nothing was loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// New records a commit collects from many threads, already in their stored form.
#[derive(Default)]
pub struct InodeRows {
    devices: Mutex<Vec<(u64, Vec<Record>)>>,
}

impl InodeRows {
    /// Adds a record.
    pub fn push(&self, e: InodeEntry) {
        let mut devices = self.devices.lock().unwrap();
        let i = match devices.iter().position(|(d, _)| *d == e.dev) {
            Some(i) => i,
            None => {
                devices.push((e.dev, Vec::new()));
                devices.len() - 1
            }
        };
        devices[i].1.push(encode(&e));
    }
}

impl FromIterator<InodeEntry> for InodeRows {
    fn from_iter<I: IntoIterator<Item = InodeEntry>>(iter: I) -> Self {
        let rows = InodeRows::default();
        for e in iter {
            rows.push(e);
        }
        rows
    }
}

/// The records of one device, read through SQLite's incremental blob I/O (no
/// intermediate copy of a blob of megabytes). A malformed blob is an empty cache,
/// not an error: the cache only saves time.
fn device_records(conn: &Connection, dev: u64) -> Result<DeviceRecords> {
    let rowid: Option<i64> = conn
        .prepare_cached("SELECT rowid FROM inode_records WHERE dev = ?1")?
        .query_row(params![dev as i64], |r| r.get(0))
        .optional()?;
    let mut records = Vec::new();
    if let Some(rowid) = rowid {
        let mut blob = conn.blob_open(MAIN_DB, c"inode_records", c"records", rowid, true)?;
        let len = blob.len();
        if len % RECORD == 0 {
            records = vec![[0u8; RECORD]; len / RECORD];
            blob.read_exact(records.as_flattened_mut())?;
        }
        if !records.is_sorted_by_key(|r| u64_at(r, 0)) || len % RECORD != 0 {
            tracing::warn!("the inode cache of device {dev} is malformed; ignoring it");
            records = Vec::new();
        }
    }
    Ok(DeviceRecords { dev, records })
}

/// Replaces the records of a device, written through incremental blob I/O.
fn write_device_records(conn: &Connection, dev: u64, records: &[Record]) -> Result<()> {
    let bytes = records.as_flattened();
    conn.execute(
        "INSERT OR REPLACE INTO inode_records (dev, records) VALUES (?1, zeroblob(?2))",
        params![dev as i64, bytes.len() as i64],
    )?;
    let rowid = conn.last_insert_rowid();
    let mut blob = conn.blob_open(MAIN_DB, c"inode_records", c"records", rowid, false)?;
    blob.write_all(bytes)?;
    Ok(())
}

/// Merges sorted `old` with `new` (sorted here; `new` wins over `old`), leaving out
/// the inodes `drop` names (sorted).
fn merge(old: Vec<Record>, mut new: Vec<Record>, drop: &[u64]) -> Vec<Record> {
    // In place: a commit's records are megabytes. Two records of one inode in one
    // commit (a file linked twice into the tree) say the same, so either may stay.
    new.sort_unstable_by_key(|r| u64_at(r, 0));
    new.dedup_by_key(|r| u64_at(r, 0));
    if old.is_empty() && drop.is_empty() {
        return new;
    }
    // A prune forgets thousands of inodes out of a hundred thousand records.
    let keep = |r: &Record| drop.binary_search(&u64_at(r, 0)).is_err();
    let mut out = Vec::with_capacity(old.len() + new.len());
    let (mut a, mut b) = (old.into_iter().peekable(), new.into_iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => match u64_at(x, 0).cmp(&u64_at(y, 0)) {
                std::cmp::Ordering::Less => a.next(),
                std::cmp::Ordering::Greater => b.next(),
                std::cmp::Ordering::Equal => {
                    a.next();
                    b.next()
                }
            },
            (Some(_), None) => a.next(),
            (None, Some(_)) => b.next(),
            (None, None) => break,
        };
        if let Some(r) = next.filter(keep) {
            out.push(r);
        }
    }
    out
}

impl StateDb {
    /// Loads the cache records of the given devices.
    pub fn load_inode_cache(&self, devs: &[u64]) -> Result<InodeCache> {
        let mut cache = InodeCache::default();
        for &dev in devs {
            if cache.devices.iter().all(|d| d.dev != dev) {
                cache.devices.push(device_records(&self.conn, dev)?);
            }
        }
        Ok(cache)
    }

    /// Rewrites the records of each device: `new` added, the inodes in `drop`
    /// removed. One transaction holding the write lock from the start, so two
    /// commits at once lose no update.
    fn edit_devices(
        &mut self,
        mut new: Vec<(u64, Vec<Record>)>,
        drop: &[(u64, u64)],
    ) -> Result<()> {
        let mut devs: Vec<u64> = new
            .iter()
            .map(|(d, _)| *d)
            .chain(drop.iter().map(|(d, _)| *d))
            .collect();
        devs.sort_unstable();
        devs.dedup();
        if devs.is_empty() {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for dev in devs {
            let old = device_records(&tx, dev)?.records;
            let added = new
                .iter_mut()
                .find(|(d, _)| *d == dev)
                .map(|(_, r)| std::mem::take(r))
                .unwrap_or_default();
            let mut gone: Vec<u64> = drop
                .iter()
                .filter(|(d, _)| *d == dev)
                .map(|(_, i)| *i)
                .collect();
            gone.sort_unstable();
            write_device_records(&tx, dev, &merge(old, added, &gone))?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records cache rows (replacing older rows of the same inodes), in one transaction.
    pub fn store_inode_cache(&mut self, rows: InodeRows) -> Result<()> {
        self.edit_devices(rows.devices.into_inner().unwrap(), &[])
    }

    /// Drops cache rows of inodes that no longer hold what they did (pruned objects).
    pub fn forget_inodes(&mut self, inodes: &[(u64, u64)]) -> Result<()> {
        self.edit_devices(Vec::new(), inodes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ino: u64, cached: Cached) -> InodeEntry {
        InodeEntry {
            dev: 5,
            ino,
            mtime_ns: 100,
            size: 3,
            cached,
        }
    }

    #[test]
    fn records_round_trip_merge_and_forget() {
        let t = tempfile::tempdir().unwrap();
        let mut db = StateDb::open(&t.path().join("s.db")).unwrap();
        let object = Cached::Object {
            ctime_ns: 200,
            id: [7; 32],
        };
        let rows: InodeRows = [entry(9, Cached::Content([4; 32])), entry(2, object)]
            .into_iter()
            .collect();
        db.store_inode_cache(rows).unwrap();
        // reopen: migrations are idempotent
        let mut db = StateDb::open(&t.path().join("s.db")).unwrap();
        let c = db.load_inode_cache(&[5, 5]).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c.lookup(5, 9, 100, 3), Some([4; 32]));
        assert_eq!(c.lookup(5, 9, 101, 3), None, "mtime changed");
        assert_eq!(c.lookup(5, 9, 100, 4), None, "size changed");
        assert_eq!(
            c.lookup(5, 2, 100, 3),
            None,
            "an object record has no content"
        );
        assert_eq!(c.lookup_object(5, 2, 100, 200, 3), Some([7; 32]));
        assert_eq!(c.lookup_object(5, 2, 100, 201, 3), None, "ctime changed");
        assert_eq!(c.lookup_object(5, 2, 101, 200, 3), None, "mtime changed");
        assert!(db.load_inode_cache(&[6]).unwrap().is_empty());
        // A second commit's rows merge in; forgetting removes.
        db.store_inode_cache([entry(5, Cached::Content([1; 32]))].into_iter().collect())
            .unwrap();
        db.forget_inodes(&[(5, 9), (6, 1)]).unwrap();
        let c = db.load_inode_cache(&[5]).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c.lookup(5, 5, 100, 3), Some([1; 32]));
        assert_eq!(c.lookup(5, 9, 100, 3), None);
    }

    #[test]
    fn a_malformed_blob_is_an_empty_cache() {
        let t = tempfile::tempdir().unwrap();
        let db = StateDb::open(&t.path().join("s.db")).unwrap();
        db.conn
            .execute(
                "INSERT INTO inode_records (dev, records) VALUES (5, x'0102')",
                [],
            )
            .unwrap();
        assert!(db.load_inode_cache(&[5]).unwrap().is_empty());
    }
}
