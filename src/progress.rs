//! Progress counters that long operations bump and a front end may watch.
//!
//! The library never prints; it only counts. The CLI draws a bar from these counters
//! when stderr is a terminal, and the D-Bus daemon can turn them into signals.

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Bytes downloaded so far of the total this transaction fetches.
    fn download(&self, _done: u64, _total: u64) {}
    /// True once someone asked the transaction to stop.
    fn cancelled(&self) -> bool {
        false
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
