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
