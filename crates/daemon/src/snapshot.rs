//! The sysroot's state as the daemon reads it for its properties: read once, reused
//! until a cheap fingerprint of the files every change touches says it changed.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use zbus::fdo;

use super::Shared;
use arbor_statedb::{HistoryEntry, StateDb};
use arbor_sysroot::Sysroot;
use arbor_sysroot::status::{self, Status};

/// What changes when the sysroot changes: every mutating transaction takes and releases
/// `arbor/lock` (which rewrites it, staging included), and the boot switch replaces
/// `boot/loader`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint(Vec<Option<(i64, i64, i64, u64)>>, Option<PathBuf>);

impl Fingerprint {
    /// Reads it: a `stat` per watched path and one `readlink` of the last-but-one (the
    /// `boot/loader` selector, when there is one).
    pub fn read(watched: &[PathBuf]) -> Fingerprint {
        let stat = |p: &PathBuf| {
            std::fs::symlink_metadata(p)
                .ok()
                .map(|m| (m.mtime(), m.mtime_nsec(), m.ctime_nsec(), m.ino()))
        };
        Fingerprint(
            watched.iter().map(stat).collect(),
            watched.get(1).and_then(|p| std::fs::read_link(p).ok()),
        )
    }
}

/// A read of the sysroot, reused until the fingerprint changes.
pub(crate) struct Snapshot {
    /// Deployments and their roles.
    pub status: Status,
    /// The last recorded transaction.
    pub last: Option<HistoryEntry>,
}

impl Snapshot {
    /// The snapshot in `cache`, or a new read of the sysroot when the fingerprint
    /// moved since it was taken.
    pub(crate) fn cached(
        cache: &Mutex<Option<(Fingerprint, Arc<Snapshot>)>>,
        shared: &Shared,
    ) -> fdo::Result<Arc<Snapshot>> {
        let fp = Fingerprint::read(&shared.watched);
        let mut cache = cache.lock().unwrap();
        if let Some((seen, snap)) = cache.as_ref()
            && *seen == fp
        {
            return Ok(snap.clone());
        }
        let read = || -> anyhow::Result<Snapshot> {
            let sysroot = Sysroot::open(&shared.sysroot)?;
            let db = StateDb::open(&sysroot.state_db_path())?;
            Ok(Snapshot {
                status: status::status_with_conflicts(&sysroot)?,
                last: db.history(1)?.into_iter().next(),
            })
        };
        let snap = Arc::new(read().map_err(|e| fdo::Error::Failed(format!("{e:#}")))?);
        *cache = Some((fp, snap.clone()));
        Ok(snap)
    }
}
