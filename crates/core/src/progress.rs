//! Progress counters that long operations bump and a front end may watch.
//!
//! The library never prints; it only counts. The CLI draws a bar from these counters
//! when stderr is a terminal, and the D-Bus daemon can turn them into signals.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Items (files, directories) and bytes done so far.
#[derive(Debug, Default)]
pub struct Progress {
    items: AtomicU64,
    bytes: AtomicU64,
}

impl Progress {
    /// Counts `n` more items.
    pub fn add_items(&self, n: u64) {
        self.items.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` more bytes.
    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// (items, bytes) so far.
    pub fn get(&self) -> (u64, u64) {
        (
            self.items.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

/// Follows a transaction as it runs, and may ask it to stop.
///
/// The CLI passes [`Unobserved`] (it prints the typed result at the end); the D-Bus
/// daemon turns these calls into `TaskBegin`, `Message` and `PercentProgress` signals
/// and answers [`Observer::cancelled`] from its `Cancel` method. Called from worker
/// threads, so implementations must be `Sync`.
pub trait Observer: Sync {
    /// A named step begins.
    fn task_begin(&self, _task: &str) {}
    /// The step named last ends.
    fn task_end(&self, _task: &str) {}
    /// Something worth telling whoever follows.
    fn message(&self, _text: &str) {}
    /// Overall progress, 0 to 100, with what is being done.
    fn percent(&self, _text: &str, _percent: u32) {}
    /// How far the download this transaction makes has come.
    fn download(&self, _progress: &Download) {}
    /// True once someone asked the transaction to stop.
    fn cancelled(&self) -> bool {
        false
    }
}

/// Where a download is: bytes and items (objects of a full fetch, or deltas of a delta
/// chain) done so far, and the totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Download {
    /// Bytes transferred so far.
    pub bytes_done: u64,
    /// Bytes the download transfers in all.
    pub bytes_total: u64,
    /// Objects or deltas stored so far.
    pub items_done: u64,
    /// Objects or deltas in all.
    pub items_total: u64,
}

/// One step of several that share a single 0-100 figure: passes progress on with the
/// step's own percentages scaled into `lo..=hi`, and a download's bytes turned into a
/// percentage of that span. An update's check, download, verification and staging are
/// each a span, so whoever follows sees one figure that never moves backwards.
pub struct Span<'a> {
    inner: &'a dyn Observer,
    lo: u32,
    hi: u32,
    /// The last figure passed on, so a download's many calls send each value once.
    last: AtomicU32,
}

impl<'a> Span<'a> {
    /// The step that covers `lo..=hi` of the whole.
    pub fn new(inner: &'a dyn Observer, lo: u32, hi: u32) -> Self {
        Span {
            inner,
            lo,
            hi: hi.max(lo),
            last: AtomicU32::new(u32::MAX),
        }
    }

    /// `percent` of this step as a percentage of the whole.
    pub fn scale(&self, percent: u32) -> u32 {
        self.lo + (self.hi - self.lo) * percent.min(100) / 100
    }

    /// Passes on `percent` of this step, unless it was the last value sent.
    fn send(&self, text: &str, percent: u32) {
        let whole = self.scale(percent);
        if self.last.swap(whole, Ordering::Relaxed) != whole {
            self.inner.percent(text, whole);
        }
    }
}

impl Observer for Span<'_> {
    fn task_begin(&self, task: &str) {
        self.inner.task_begin(task)
    }
    fn task_end(&self, task: &str) {
        self.inner.task_end(task)
    }
    fn message(&self, text: &str) {
        self.inner.message(text)
    }
    fn percent(&self, text: &str, percent: u32) {
        self.send(text, percent)
    }
    fn download(&self, d: &Download) {
        self.inner.download(d);
        if let Some(p) = (d.bytes_done.min(d.bytes_total) * 100).checked_div(d.bytes_total) {
            self.send("downloading", p as u32);
        }
    }
    fn cancelled(&self) -> bool {
        self.inner.cancelled()
    }
}

/// An observer that watches nothing and never cancels.
pub struct Unobserved;

impl Observer for Unobserved {}

/// A transaction stopped at a safe point because it was asked to; nothing it did
/// remains.
#[derive(Debug, thiserror::Error)]
#[error("cancelled before it changed anything")]
pub struct Cancelled;

/// Returns [`Cancelled`] when the observer asked to stop: called at safe points only.
pub fn checkpoint(obs: &dyn Observer) -> Result<(), Cancelled> {
    if obs.cancelled() {
        Err(Cancelled)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Seen(Mutex<Vec<u32>>);

    impl Observer for Seen {
        fn percent(&self, _text: &str, p: u32) {
            self.0.lock().unwrap().push(p);
        }
    }

    #[test]
    fn steps_share_one_figure_that_moves_forward() {
        let seen = Seen::default();
        let download = Span::new(&seen, 5, 70);
        let at = |done| Download {
            bytes_done: done,
            bytes_total: 1000,
            ..Download::default()
        };
        for done in [0, 1, 2, 500, 500, 1000, 2000] {
            download.download(&at(done));
        }
        let stage = Span::new(&seen, 75, 100);
        for p in [0, 60, 100, 250] {
            stage.percent("x", p);
        }
        // Each value once; a byte count past the total is clamped.
        assert_eq!(*seen.0.lock().unwrap(), vec![5, 37, 70, 75, 90, 100]);
    }
}
