//! Noticing what others change, without polling: inotify on the folders that hold the
//! files the status depends on (the lock file every transaction rewrites, the boot
//! selector and entries, the policy file), so that the daemon sleeps until one of
//! them moves and tells its watchers at once.
//!
//! A path is watched through its parent folder, since the files are replaced by
//! rename; a folder among them is watched itself too, for the entries written into
//! it. A folder that does not exist yet (no `/etc/arbor` before a policy is written)
//! is watched through its nearest existing ancestor, and the watches are set again
//! after every event, so that it is followed as soon as it appears.

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
use rustix::io::Errno;

/// An inotify instance watching the folders of a set of paths.
pub(crate) struct Watcher {
    fd: OwnedFd,
    paths: Vec<PathBuf>,
}

/// What changes a folder's entries: files written, replaced, made or removed.
fn flags() -> WatchFlags {
    WatchFlags::CLOSE_WRITE
        | WatchFlags::MOVED_TO
        | WatchFlags::MOVED_FROM
        | WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::ATTRIB
        | WatchFlags::MODIFY
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVE_SELF
}

impl Watcher {
    /// Watches the folders of `paths`.
    pub(crate) fn new(paths: &[PathBuf]) -> Result<Watcher> {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)
            .context("creating an inotify instance")?;
        let w = Watcher {
            fd,
            paths: paths.to_vec(),
        };
        w.arm();
        Ok(w)
    }

    /// Adds a watch for each folder that decides a path (adding one twice is harmless:
    /// the kernel keeps one per folder).
    fn arm(&self) {
        for p in &self.paths {
            if p.is_dir() {
                self.add(p);
            }
            if let Some(parent) = p.parent() {
                self.add(nearest_existing(parent));
            }
        }
    }

    fn add(&self, dir: &Path) {
        if let Err(e) = inotify::add_watch(&self.fd, dir, flags()) {
            // Without the watch, a change there is announced late (at the next
            // change elsewhere, or the next read), never wrong: the status cache
            // compares the files themselves.
            tracing::warn!("watching {}: {e}", dir.display());
        }
    }

    /// Waits up to `timeout` (for ever with `None`) for a change; true when something
    /// changed in a watched folder (the caller compares what it cares about).
    pub(crate) fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        let ts = timeout.map(|t| Timespec {
            tv_sec: t.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: t.subsec_nanos().into(),
        });
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, ts.as_ref()) {
            Ok(0) => return Ok(false),
            Ok(_) => {}
            Err(Errno::INTR) => return Ok(false),
            Err(e) => return Err(e).context("waiting for inotify events"),
        }
        let changed = self.drain()?;
        if changed {
            // A folder may have appeared (or been replaced): follow it.
            self.arm();
        }
        Ok(changed)
    }

    /// Reads every queued event; true if there was any.
    fn drain(&self) -> Result<bool> {
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut reader = inotify::Reader::new(self.fd.as_fd(), &mut buf);
        let mut any = false;
        loop {
            match reader.next() {
                Ok(_) => any = true,
                Err(Errno::AGAIN) => return Ok(any),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e).context("reading inotify events"),
            }
        }
    }
}

/// `dir`, or its closest ancestor that exists.
fn nearest_existing(dir: &Path) -> &Path {
    dir.ancestors()
        .find(|a| a.is_dir())
        .unwrap_or(Path::new("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_file_wakes_it_and_quiet_times_out() {
        let d = tempfile::tempdir().unwrap();
        let lock = d.path().join("arbor/lock");
        std::fs::create_dir(d.path().join("arbor")).unwrap();
        std::fs::write(&lock, "a").unwrap();
        let w = Watcher::new(std::slice::from_ref(&lock)).unwrap();
        assert!(!w.wait(Some(Duration::from_millis(50))).unwrap());
        let tmp = d.path().join("arbor/lock.tmp");
        std::fs::write(&tmp, "b").unwrap();
        std::fs::rename(&tmp, &lock).unwrap();
        assert!(w.wait(Some(Duration::from_secs(5))).unwrap());
        // Everything queued was read: nothing more to wake for.
        assert!(!w.wait(Some(Duration::from_millis(50))).unwrap());
    }

    #[test]
    fn a_folder_that_appears_later_is_followed() {
        let d = tempfile::tempdir().unwrap();
        let policy = d.path().join("etc/arbor/arbor.toml");
        let w = Watcher::new(std::slice::from_ref(&policy)).unwrap();
        std::fs::create_dir_all(d.path().join("etc/arbor")).unwrap();
        assert!(w.wait(Some(Duration::from_secs(5))).unwrap());
        while w.wait(Some(Duration::from_millis(50))).unwrap() {}
        std::fs::write(&policy, "auto_download = true\n").unwrap();
        assert!(w.wait(Some(Duration::from_secs(5))).unwrap());
    }

    #[test]
    fn a_new_entry_in_a_watched_folder_wakes_it() {
        let d = tempfile::tempdir().unwrap();
        let entries = d.path().join("loader/entries");
        std::fs::create_dir_all(&entries).unwrap();
        let w = Watcher::new(std::slice::from_ref(&entries)).unwrap();
        std::fs::write(entries.join("arbor-1.conf"), "title x\n").unwrap();
        assert!(w.wait(Some(Duration::from_secs(5))).unwrap());
    }
}
