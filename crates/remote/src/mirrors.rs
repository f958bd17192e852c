//! Mirrors: the servers of one publication, tried in order (docs/remote.md,
//! "Mirrors"). Whoever serves a byte, it is checked against the signed metadata, so a
//! mirror that is down, stalls past the remote's timeout, serves stale or forged
//! metadata or a corrupt file is harmless: it is skipped, the reason is kept for the
//! caller to show, and the next server is asked.

use std::sync::{Arc, Mutex};

use anyhow::Result;
use serde::Serialize;
use url::Url;

use super::http::{FetchError, Http};
use super::index::FileRef;
use arbor_core::error::StoreError;
use arbor_core::progress::Cancelled;

/// A server passed over, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Skip {
    /// The server's base URL.
    pub url: String,
    /// What it was asked for and what went wrong.
    pub reason: String,
}

/// What one run passed over, shared by every clone of a remote and its sources.
#[derive(Clone, Debug, Default)]
pub struct SkipLog(Arc<Mutex<SkipState>>);

#[derive(Debug, Default)]
struct SkipState {
    skips: Vec<Skip>,
    /// The server that served the verified metadata: asked first for the files.
    preferred: Option<String>,
    /// Servers that could not be reached or stalled: asked last for the rest of the run.
    down: Vec<String>,
}

/// At most this many skips are kept (a mirror down for every one of thousands of
/// objects would otherwise fill memory with one story).
const MAX_SKIPS: usize = 64;

impl SkipLog {
    /// Records that `url` was passed over for `what` because of `e`; logged too.
    pub fn note(&self, url: &str, what: &str, e: &anyhow::Error) {
        let reason = format!("{what}: {e:#}");
        tracing::warn!("mirror {url} skipped: {reason}");
        let mut s = self.0.lock().unwrap();
        let down = e.chain().any(|c| {
            matches!(
                c.downcast_ref::<FetchError>(),
                Some(FetchError::Offline { .. } | FetchError::TimedOut { .. })
            ) || matches!(
                c.downcast_ref::<arbor_core::error::Error>(),
                Some(arbor_core::error::Error::Offline(_))
            )
        });
        if down && !s.down.iter().any(|d| d == url) {
            s.down.push(url.to_string());
        }
        // One line per server and file is the story: a server that is down fails the
        // same way whatever the details (ports, timings) of each attempt say.
        let prefix = format!("{what}: ");
        let repeat = s.skips.iter().any(|k| {
            k.url == url && (k.reason == reason || (down && k.reason.starts_with(&prefix)))
        });
        if !repeat && s.skips.len() < MAX_SKIPS {
            s.skips.push(Skip {
                url: url.to_string(),
                reason,
            });
        }
    }

    /// Every skip so far, in order.
    pub fn skips(&self) -> Vec<Skip> {
        self.0.lock().unwrap().skips.clone()
    }

    /// Asks `url` first from now on (it served the metadata that verified).
    pub fn prefer(&self, url: &str) {
        self.0.lock().unwrap().preferred = Some(url.to_string());
    }

    /// `servers` in the order to ask them: the preferred one first, the ones found
    /// down last, the rest as configured.
    fn order<'a>(&self, servers: &'a [Http]) -> Vec<&'a Http> {
        let s = self.0.lock().unwrap();
        let rank = |h: &Http| {
            let u = h.base().as_str();
            if s.down.iter().any(|d| d == u) {
                2
            } else if s.preferred.as_deref() == Some(u) {
                0
            } else {
                1
            }
        };
        let mut v: Vec<&Http> = servers.iter().collect();
        v.sort_by_key(|h| rank(h));
        v
    }
}

/// True when another server might do better than the one that gave `e`: not when the
/// run was cancelled, the disk is full or the store is locked (the same everywhere).
fn worth_another(e: &anyhow::Error) -> bool {
    !e.chain().any(|c| {
        c.is::<Cancelled>()
            || matches!(
                c.downcast_ref::<StoreError>(),
                Some(StoreError::NoSpace { .. } | StoreError::LockHeld { .. })
            )
            || c.downcast_ref::<std::io::Error>()
                .is_some_and(arbor_core::fsutil::is_no_space)
    })
}

/// The servers of one publication, in order, and the log of those passed over.
pub struct Sources {
    servers: Vec<Http>,
    skips: SkipLog,
}

impl Sources {
    /// Sources over `servers` (at least one), recording skips in `skips`.
    pub fn new(servers: Vec<Http>, skips: SkipLog) -> Sources {
        assert!(!servers.is_empty(), "a remote has at least its own URL");
        Sources { servers, skips }
    }

    /// The URL of `rel` on the server asked first (for the record of a download).
    pub fn url(&self, rel: &str) -> Result<Url> {
        self.skips.order(&self.servers)[0].url(rel)
    }

    /// Runs `f` with each server in turn until it succeeds: a failure that another
    /// server may not share is noted as a skip of `rel` and the next is asked. The
    /// last server's error is returned, with the others' reasons as context.
    pub fn each<T>(&self, rel: &str, f: impl Fn(&Http) -> Result<T>) -> Result<T> {
        if let [only] = self.servers.as_slice() {
            // No mirrors (the common case, once per object of a full fetch): nothing
            // to order or pass over.
            return f(only);
        }
        let order = self.skips.order(&self.servers);
        let mut passed = Vec::new();
        for (i, h) in order.iter().enumerate() {
            match f(h) {
                Ok(v) => return Ok(v),
                Err(e) if i + 1 < order.len() && worth_another(&e) => {
                    self.skips.note(h.base().as_str(), rel, &e);
                    passed.push(h.base().to_string());
                }
                Err(e) if passed.is_empty() => return Err(e),
                Err(e) => {
                    return Err(e.context(format!(
                        "{rel}: no server could provide it (also tried {})",
                        passed.join(", ")
                    )));
                }
            }
        }
        unreachable!("the loop returns at the last server")
    }

    /// A whole file of at most `max` bytes that `check` accepts (the caller's hash or
    /// decode), from the first server that has it.
    pub fn get_checked(
        &self,
        rel: &str,
        max: u64,
        check: impl Fn(&[u8]) -> Result<()>,
    ) -> Result<Vec<u8>> {
        self.each(rel, |h| {
            let b = h.get_bounded(rel, max)?;
            check(&b)?;
            Ok(b)
        })
    }

    /// [`Http::download`] from the first server that delivers the signed bytes; a
    /// partial file another server left is resumed (the hash at the end decides).
    pub fn download(
        &self,
        file: &FileRef,
        part: &std::path::Path,
        progress: &dyn Fn(u64) -> Result<(), Cancelled>,
    ) -> Result<u64> {
        self.each(&file.path, |h| h.download(file, part, progress))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_asked_preferred_first_and_down_last() {
        let h = |u: &str| Http::new(u).unwrap();
        let servers = vec![h("http://a/"), h("http://b/"), h("http://c/")];
        let log = SkipLog::default();
        let names = |log: &SkipLog| {
            log.order(&servers)
                .iter()
                .map(|h| h.base().host_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&log), ["a", "b", "c"]);
        log.prefer("http://c/");
        assert_eq!(names(&log), ["c", "a", "b"]);
        let offline = anyhow::Error::new(FetchError::Offline {
            url: "http://a/x".into(),
            detail: "refused".into(),
        });
        log.note("http://a/", "x", &offline);
        log.note("http://a/", "y", &offline);
        assert_eq!(names(&log), ["c", "b", "a"]);
        assert_eq!(log.skips().len(), 2, "{:?}", log.skips());
    }

    #[test]
    fn each_moves_on_but_not_past_a_full_disk_or_a_cancel() {
        let h = |u: &str| Http::new(u).unwrap();
        let s = Sources::new(vec![h("http://a/"), h("http://b/")], SkipLog::default());
        let got = s.each("f", |h| {
            anyhow::ensure!(h.base().host_str() == Some("b"), "bad bytes");
            Ok(7)
        });
        assert_eq!(got.unwrap(), 7);
        assert_eq!(s.skips.skips()[0].url, "http://a/");
        let calls = std::cell::Cell::new(0);
        let cancelled = s.each("g", |_| -> Result<()> {
            calls.set(calls.get() + 1);
            Err(Cancelled.into())
        });
        assert!(cancelled.unwrap_err().is::<Cancelled>());
        assert_eq!(calls.get(), 1, "a cancel stops the run");
        calls.set(0);
        let full = s.each("h", |_| -> Result<()> {
            calls.set(calls.get() + 1);
            Err(StoreError::NoSpace { doing: "x".into() }.into())
        });
        assert!(full.is_err());
        assert_eq!(calls.get(), 1, "a full disk is not the server's fault");
    }
}
