//! Exclusive writer locks (`flock`) that say who holds them.
//!
//! One writer at a time per repository (and, later, per sysroot). The holder writes
//! its pid, command line and start time into the lock file so that a second writer
//! can name it. The kernel drops an flock when its holder dies, so a crash never
//! leaves a stale lock; the text left behind by a dead holder is simply overwritten.

use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, FlockOperation, Mode, OFlags};

use crate::error::StoreError;

/// How to behave when someone else holds the lock.
#[derive(Clone, Copy)]
pub enum LockWait<'a> {
    /// Fail at once with [`StoreError::LockHeld`].
    NoWait,
    /// Call this with the holder's description, then block until the lock is free.
    Wait(&'a dyn Fn(&str)),
}

/// A held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct WriterLock {
    file: File,
    path: PathBuf,
}

impl WriterLock {
    /// Takes the lock file `name` in `dir` (created if needed).
    pub fn acquire(
        dir: BorrowedFd<'_>,
        dir_path: &Path,
        name: &str,
        wait: LockWait<'_>,
    ) -> Result<Self, LockError> {
        let path = dir_path.join(name);
        let fd = rfs::openat(
            dir,
            name,
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map_err(|e| LockError::Io(path.clone(), e.into()))?;
        let mut file = File::from(fd);
        if let Err(e) = rfs::flock(file.as_fd(), FlockOperation::NonBlockingLockExclusive) {
            if e != rustix::io::Errno::WOULDBLOCK {
                return Err(LockError::Io(path, e.into()));
            }
            let holder =
                wait_for_holder(&mut file).map_err(|e| LockError::Io(path.clone(), e.into()))?;
            match (holder, wait) {
                // Let go while we waited for its name: ours now.
                (None, _) => {}
                (Some(holder), LockWait::NoWait) => {
                    return Err(LockError::Held(StoreError::LockHeld { path, holder }));
                }
                (Some(holder), LockWait::Wait(notify)) => {
                    notify(&holder);
                    rfs::flock(file.as_fd(), FlockOperation::LockExclusive)
                        .map_err(|e| LockError::Io(path.clone(), e.into()))?;
                }
            }
        }
        let me = describe_self();
        // Best effort: the description only serves messages, the flock is the lock.
        // Written before the old length is cut, so the file is never empty while held.
        let _ = file
            .write_all_at(me.as_bytes(), 0)
            .and_then(|_| file.set_len(me.len() as u64));
        Ok(WriterLock { file, path })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WriterLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
    }
}

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Someone else holds it.
    #[error(transparent)]
    Held(StoreError),
    /// The lock file could not be opened or locked.
    #[error("locking {0}: {1}")]
    Io(PathBuf, io::Error),
}

/// How long a contender gives a holder to say who it is: the lock file is empty for a
/// moment after a holder takes the lock and as it lets go.
const HOLDER_GRACE: std::time::Duration = std::time::Duration::from_millis(300);

/// Who holds the lock, as it describes itself; `None` if the lock was let go, and
/// taken by us, while we waited for the description.
fn wait_for_holder(file: &mut File) -> Result<Option<String>, rustix::io::Errno> {
    let start = std::time::Instant::now();
    loop {
        let holder = read_holder(file);
        if !holder.is_empty() {
            return Ok(Some(holder));
        }
        if start.elapsed() >= HOLDER_GRACE {
            return Ok(Some("another process (it has not said which yet)".into()));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        match rfs::flock(file.as_fd(), FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(None),
            Err(rustix::io::Errno::WOULDBLOCK) => {}
            Err(e) => return Err(e),
        }
    }
}

fn read_holder(file: &mut File) -> String {
    let mut s = String::new();
    let _ = file
        .rewind()
        .and_then(|_| file.take(4096).read_to_string(&mut s));
    s.trim().to_string()
}

fn describe_self() -> String {
    let cmd: Vec<String> = std::env::args().collect();
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "pid {} ('{}', since unix time {since})",
        std::process::id(),
        cmd.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::open_dir;

    #[test]
    fn second_writer_is_told_who_holds_the_lock() {
        let t = tempfile::tempdir().unwrap();
        let d = open_dir(t.path()).unwrap();
        let held = WriterLock::acquire(d.as_fd(), t.path(), "lock", LockWait::NoWait).unwrap();
        // flock locks belong to the open file description, so a second open conflicts
        // even within one process.
        let err = WriterLock::acquire(d.as_fd(), t.path(), "lock", LockWait::NoWait).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(held);
        WriterLock::acquire(d.as_fd(), t.path(), "lock", LockWait::NoWait).unwrap();
    }

    /// The moments the lock file is empty while held (just taken, letting go): a
    /// contender waits for the description, or takes the lock once it is free.
    #[test]
    fn a_holder_that_has_not_said_who_it_is_yet_is_waited_for() {
        let t = tempfile::tempdir().unwrap();
        let d = open_dir(t.path()).unwrap();
        let acquire = || WriterLock::acquire(d.as_fd(), t.path(), "lock", LockWait::NoWait);
        let held = acquire().unwrap();
        held.file.set_len(0).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(50));
                held.file.write_all_at(b"pid 7 ('late')", 0).unwrap();
            });
            let msg = acquire().unwrap_err().to_string();
            assert!(msg.contains("pid 7 ('late')"), "{msg}");
        });
        held.file.set_len(0).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(50));
                drop(held);
            });
            let mine = acquire().expect("taken once let go");
            let text = std::fs::read_to_string(t.path().join("lock")).unwrap();
            assert!(text.contains(&format!("pid {}", std::process::id())));
            drop(mine);
        });
    }
}
