//! A download rate cap (`--max-rate`, the policy's `max_rate`; docs/fleet.md): one
//! budget shared by every body a remote's downloads read, so parallel fetches together
//! stay under it. What is read beyond the budget is paid for by sleeping; the server
//! then slows down as TCP's window fills.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};

/// The budget: `rate` bytes a second, with at most a quarter second of idle time
/// saved up as a burst.
#[derive(Debug)]
pub struct Limiter {
    rate: u64,
    /// When the bytes read so far are paid for.
    paid_until: Mutex<Instant>,
}

/// The smallest cap taken: below it a download would look hung.
pub const MIN_RATE: u64 = 4096;

impl Limiter {
    /// A cap of `rate` bytes a second.
    pub fn new(rate: u64) -> Result<Arc<Limiter>> {
        ensure!(
            rate >= MIN_RATE,
            "a rate cap of {rate} bytes/s (at least {MIN_RATE})"
        );
        Ok(Arc::new(Limiter {
            rate,
            paid_until: Mutex::new(Instant::now()),
        }))
    }

    /// The cap, in bytes a second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Accounts for `n` bytes read, sleeping as long as they are ahead of the budget.
    fn consume(&self, n: usize) {
        let wait = {
            let mut paid = self.paid_until.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let burst = now.checked_sub(Duration::from_millis(250)).unwrap_or(now);
            let from = (*paid).max(burst);
            *paid = from + Duration::from_secs_f64(n as f64 / self.rate as f64);
            paid.saturating_duration_since(now)
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// A body read under a [`Limiter`]: reads of at most a tenth of a second's budget.
pub struct Throttled<R> {
    inner: R,
    limiter: Arc<Limiter>,
}

impl<R> Throttled<R> {
    /// `inner` under `limiter`.
    pub fn new(inner: R, limiter: Arc<Limiter>) -> Throttled<R> {
        Throttled { inner, limiter }
    }
}

impl<R: Read> Read for Throttled<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let most = (self.limiter.rate / 10).max(MIN_RATE) as usize;
        let len = buf.len().min(most);
        let n = self.inner.read(&mut buf[..len])?;
        self.limiter.consume(n);
        Ok(n)
    }
}

/// Parses a rate as `--max-rate` and the policy take it: bytes a second, with an
/// optional K, M or G suffix (powers of 1024), `/s` allowed: `500K`, `2M/s`.
pub fn parse_rate(s: &str) -> Result<u64> {
    let rate = parse_size(s.trim().trim_end_matches("/s"))
        .map_err(|_| anyhow::anyhow!("'{s}' is not a rate (such as 500K, 2M)"))?;
    ensure!(rate >= MIN_RATE, "a rate of {s}: at least 4K");
    Ok(rate)
}

/// Parses a size: bytes with an optional K, M or G suffix (powers of 1024), as the
/// `parse_size` crate reads it (the same rules as `install to-disk --size`).
pub fn parse_size(s: &str) -> Result<u64> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s.trim())
        .map_err(|e| anyhow::anyhow!("'{s}' is not a size (such as 500K, 2G): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_reads_keep_to_the_budget() {
        assert_eq!(parse_rate("500K").unwrap(), 500 << 10);
        assert_eq!(parse_rate("2M/s").unwrap(), 2 << 20);
        assert_eq!(parse_rate("65536").unwrap(), 65536);
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("1K").is_err());
        // 256 KiB at 512 KiB/s: about half a second (less the saved-up burst).
        let limiter = Limiter::new(512 << 10).unwrap();
        let data = vec![7u8; 256 << 10];
        let begun = Instant::now();
        let mut out = Vec::new();
        Throttled::new(&data[..], limiter)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
        assert!(
            begun.elapsed() >= Duration::from_millis(200),
            "{:?}",
            begun.elapsed()
        );
    }
}
