//! HTTP for remotes: every read bounded by a size the caller trusts, downloads that
//! resume with Range requests, and errors that say what went wrong in words a user can
//! act on (offline, not found, too large).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use thiserror::Error;
use url::Url;

use super::index::FileRef;
use arbor_core::progress::Cancelled;

/// Why a fetch failed, where a caller must tell the cases apart.
#[derive(Clone, Debug, Error)]
pub enum FetchError {
    /// The server could not be reached at all.
    #[error("cannot reach {url}: {detail} (offline?)")]
    Offline {
        /// What was asked for.
        url: String,
        /// The transport's words.
        detail: String,
    },
    /// The server has no such file.
    #[error("{url}: not found on the server")]
    NotFound {
        /// What was asked for.
        url: String,
    },
    /// The server sent more than the trusted size.
    #[error("{url}: the server sent more than the {limit} bytes expected: refusing it")]
    TooLarge {
        /// What was asked for.
        url: String,
        /// The most that was allowed.
        limit: u64,
    },
    /// Any other HTTP status.
    #[error("{url}: HTTP status {code}")]
    Status {
        /// What was asked for.
        url: String,
        /// The status.
        code: u16,
        /// How long the server asked to wait before the next try (`Retry-After`, in
        /// seconds), if it said.
        retry_after: Option<u64>,
    },
    /// The server accepted the connection and then sent nothing for too long.
    #[error("{url}: the server sent nothing for {secs} s (the remote's timeout): giving up")]
    TimedOut {
        /// What was asked for.
        url: String,
        /// The timeout.
        secs: u64,
    },
    /// The transfer broke off.
    #[error("{url}: the transfer broke off: {detail}")]
    Broken {
        /// What was asked for.
        url: String,
        /// The transport's words.
        detail: String,
    },
}

/// An answer being read: its status (200, or 206 for a range) and its body.
struct Fetched {
    status: u16,
    body: Box<dyn Read + Send>,
}

/// A `file://` URL as a fetch: a missing file is `NotFound`, like a 404.
fn open_file(url: &Url, range_from: Option<u64>) -> Result<Fetched, FetchError> {
    let not_found = || FetchError::NotFound {
        url: url.to_string(),
    };
    let path = url.to_file_path().map_err(|_| not_found())?;
    let mut f = std::fs::File::open(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => not_found(),
        _ => FetchError::Broken {
            url: url.to_string(),
            detail: e.to_string(),
        },
    })?;
    if !f.metadata().map(|m| m.is_file()).unwrap_or(false) {
        return Err(not_found());
    }
    if let Some(from) = range_from {
        f.seek(SeekFrom::Start(from))
            .map_err(|e| FetchError::Broken {
                url: url.to_string(),
                detail: e.to_string(),
            })?;
    }
    Ok(Fetched {
        status: if range_from.is_some() { 206 } else { 200 },
        body: Box::new(f),
    })
}

impl FetchError {
    /// True for a failure that trying again may cure: a server error (5xx, 429, 408)
    /// or a transfer that broke off. Not a timeout: one is already the bound a
    /// stalled server gets.
    fn transient(&self) -> bool {
        match self {
            FetchError::Status { code, .. } => *code >= 500 || *code == 429 || *code == 408,
            FetchError::Broken { .. } => true,
            _ => false,
        }
    }
}

/// How often a request is tried in all when it fails in a way that may pass.
const ATTEMPTS: u32 = 4;

/// How long a server may send nothing (for the response, or between reads) unless
/// the remote says otherwise (`remote add --timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Maps a path of a publication to the URL it is fetched from, where that is not the
/// base URL joined with the path: a blob of an OCI registry (`oci_files`).
pub trait Resolve: Send + Sync {
    /// The URL of `rel`, and the `Authorization` header to send with it.
    fn resolve(&self, rel: &str) -> Result<(Url, Option<String>), FetchError>;
    /// After a 401: true when authorization was renewed and the request may be sent
    /// again.
    fn unauthorized(&self) -> bool;
}

/// A client for one remote's base URL.
#[derive(Clone)]
pub struct Http {
    agent: ureq::Agent,
    base: Url,
    timeout: Duration,
    limiter: Option<std::sync::Arc<crate::rate::Limiter>>,
    resolver: Option<std::sync::Arc<dyn Resolve>>,
}

fn classify(url: &str, e: ureq::Error, timeout: Duration) -> FetchError {
    match e {
        ureq::Error::Timeout(_) => FetchError::TimedOut {
            url: url.into(),
            secs: timeout.as_secs(),
        },
        ureq::Error::StatusCode(404) => FetchError::NotFound { url: url.into() },
        ureq::Error::StatusCode(code) => FetchError::Status {
            url: url.into(),
            code,
            retry_after: None,
        },
        ureq::Error::Io(ref io) if io.kind() != std::io::ErrorKind::ConnectionRefused => {
            FetchError::Broken {
                url: url.into(),
                detail: e.to_string(),
            }
        }
        e => FetchError::Offline {
            url: url.into(),
            detail: e.to_string(),
        },
    }
}

/// A client for one short exchange with a server named by signed data (a health
/// report, the publisher's report bucket): the whole exchange bounded by `timeout`,
/// no redirects (it goes where it was told, nowhere else), statuses returned.
pub fn bounded_agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .max_redirects(0)
        .user_agent(concat!("arbor/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// Sends `body` by HTTP `PUT` to `url` (a health report: docs/fleet.md), the whole
/// exchange bounded by `timeout`, the answer's body unread. Any 2xx is success.
pub fn put(url: &str, body: &[u8], timeout: Duration) -> Result<(), FetchError> {
    let agent = bounded_agent(timeout);
    let resp = agent
        .put(url)
        .header("Content-Type", "application/json")
        .send(body)
        .map_err(|e| classify(url, e, timeout))?;
    match resp.status().as_u16() {
        200..=299 => Ok(()),
        code => Err(classify(url, ureq::Error::StatusCode(code), timeout)),
    }
}

/// Uploads `body` as the file of an HTML-style form (`multipart/form-data`) posted to
/// `url` with `fields` before it: an S3 pre-signed POST (a health report:
/// docs/fleet.md). Bounded and judged as [`put`]. The caller checked the fields
/// (short, one line, no quotes); the boundary is one no report can contain, as
/// reports are JSON.
pub fn post_form(
    url: &str,
    fields: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<(), FetchError> {
    let boundary = format!("arbor-report-{}", blake3::hash(body).to_hex());
    let mut form = Vec::with_capacity(body.len() + 2048);
    for (name, value) in fields {
        form.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    // S3 takes the fields after "file" as not signed: the file comes last.
    form.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
             filename=\"report.json\"\r\nContent-Type: application/json\r\n\r\n"
        )
        .as_bytes(),
    );
    form.extend_from_slice(body);
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let agent = bounded_agent(timeout);
    let resp = agent
        .post(url)
        .header(
            "Content-Type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .send(&form[..])
        .map_err(|e| classify(url, e, timeout))?;
    match resp.status().as_u16() {
        200..=299 => Ok(()),
        code => Err(classify(url, ureq::Error::StatusCode(code), timeout)),
    }
}

impl Http {
    /// A client for the repository at `base` (a folder URL; a missing trailing `/` is
    /// added so relative paths land inside it).
    pub fn new(base: &str) -> Result<Http> {
        Http::with_timeout(base, DEFAULT_TIMEOUT)
    }

    /// [`Http::new`] with another timeout for a server that sends nothing.
    pub fn with_timeout(base: &str, timeout: Duration) -> Result<Http> {
        let mut base = base.to_string();
        if !base.ends_with('/') {
            base.push('/');
        }
        let base = Url::parse(&base).with_context(|| format!("'{base}' is not a URL"))?;
        anyhow::ensure!(
            matches!(base.scheme(), "http" | "https" | "file") || crate::oci::is_oci(base.as_str()),
            "remote URL {base}: only http, https, file and oci (a registry) are supported"
        );
        if crate::oci::is_oci(base.as_str()) {
            crate::oci::Location::parse(base.as_str())?;
        }
        Ok(Http {
            agent: crate::oci::agent(timeout),
            base,
            timeout,
            limiter: None,
            resolver: None,
        })
    }

    /// This client with paths found by `resolver` (an OCI registry's blobs).
    pub fn with_resolver(mut self, resolver: std::sync::Arc<dyn Resolve>) -> Http {
        self.resolver = Some(resolver);
        self
    }

    /// This client with every body it reads kept under `limiter`'s rate.
    pub fn with_limiter(mut self, limiter: std::sync::Arc<crate::rate::Limiter>) -> Http {
        self.limiter = Some(limiter);
        self
    }

    /// The repository's base URL (ends with `/`).
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The URL of a path inside the repository.
    pub fn url(&self, rel: &str) -> Result<Url> {
        self.base
            .join(rel)
            .with_context(|| format!("joining {rel} to {}", self.base))
    }

    /// Opens `url` (from byte `range_from`): over HTTP, or a local file for a
    /// `file://` remote (a published folder on a USB stick or a shared folder), which
    /// then goes through the same bounds and checks as a download.
    fn get(&self, url: &Url, range_from: Option<u64>) -> Result<Fetched, FetchError> {
        if url.scheme() == "file" {
            return open_file(url, range_from);
        }
        let (target, auth) = match &self.resolver {
            Some(r) => {
                let rel = url
                    .as_str()
                    .strip_prefix(self.base.as_str())
                    .ok_or_else(|| FetchError::NotFound {
                        url: format!("{url} (outside {})", self.base),
                    })?;
                r.resolve(rel)?
            }
            None => (url.clone(), None),
        };
        let call = |auth: &Option<String>| {
            let mut req = self.agent.get(target.as_str());
            if let Some(from) = range_from {
                req = req.header("Range", format!("bytes={from}-"));
            }
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            req.call()
                .map_err(|e| classify(target.as_str(), e, self.timeout))
        };
        let mut resp = call(&auth)?;
        if resp.status().as_u16() == 401
            && let Some(r) = &self.resolver
            && r.unauthorized()
        {
            let (_, renewed) =
                r.resolve(url.as_str().strip_prefix(self.base.as_str()).unwrap_or(""))?;
            resp = call(&renewed)?;
        }
        match resp.status().as_u16() {
            code @ (200 | 206) => {
                let body = resp.into_body().into_reader();
                Ok(Fetched {
                    status: code,
                    body: match &self.limiter {
                        Some(l) => Box::new(crate::rate::Throttled::new(body, l.clone())),
                        None => Box::new(body),
                    },
                })
            }
            code => {
                let mut e = classify(url.as_str(), ureq::Error::StatusCode(code), self.timeout);
                if let FetchError::Status { retry_after, .. } = &mut e {
                    *retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok());
                }
                Err(e)
            }
        }
    }

    /// A read error of a body: a timeout said as one.
    fn read_error(&self, url: &Url, e: std::io::Error) -> FetchError {
        let ureq_timeout = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<ureq::Error>())
            .is_some_and(|u| matches!(u, ureq::Error::Timeout(_)));
        if e.kind() == std::io::ErrorKind::TimedOut || ureq_timeout {
            FetchError::TimedOut {
                url: url.to_string(),
                secs: self.timeout.as_secs(),
            }
        } else {
            FetchError::Broken {
                url: url.to_string(),
                detail: e.to_string(),
            }
        }
    }

    /// Runs `f` again after a transient failure, up to [`ATTEMPTS`] times in all,
    /// waiting a little longer each time.
    fn retrying<T>(
        &self,
        url: &Url,
        f: impl Fn() -> Result<T, FetchError>,
    ) -> Result<T, FetchError> {
        let mut delay = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            match f() {
                Err(e) if attempt < ATTEMPTS && e.transient() => {
                    // A server that says when to come back (429, 503) is waited for
                    // that long, bounded; otherwise the wait doubles.
                    let wait = match &e {
                        FetchError::Status {
                            retry_after: Some(secs),
                            ..
                        } => Duration::from_secs(*secs).min(crate::oci::MAX_RETRY_AFTER),
                        _ => delay,
                    };
                    tracing::warn!("{e}; trying {url} again in {wait:?} ({attempt} of {ATTEMPTS})");
                    std::thread::sleep(wait);
                    delay *= 2;
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    /// Fetches a whole file of at most `max` bytes.
    pub fn get_bounded(&self, rel: &str, max: u64) -> Result<Vec<u8>, FetchError> {
        let url = self.url(rel).map_err(|e| FetchError::NotFound {
            url: format!("{rel} ({e})"),
        })?;
        self.get_url_bounded(&url, max)
    }

    /// [`Http::get_bounded`] for a full URL.
    pub fn get_url_bounded(&self, url: &Url, max: u64) -> Result<Vec<u8>, FetchError> {
        self.retrying(url, || self.get_url_bounded_once(url, max))
    }

    fn get_url_bounded_once(&self, url: &Url, max: u64) -> Result<Vec<u8>, FetchError> {
        let resp = self.get(url, None)?;
        let mut out = Vec::new();
        resp.body
            .take(max + 1)
            .read_to_end(&mut out)
            .map_err(|e| self.read_error(url, e))?;
        if out.len() as u64 > max {
            return Err(FetchError::TooLarge {
                url: url.to_string(),
                limit: max,
            });
        }
        Ok(out)
    }

    /// Downloads `file` into `part`, resuming from what `part` already holds (a Range
    /// request), never reading past the signed size, and checks its BLAKE3 at the end.
    /// `progress` gets the bytes received so far, resumed bytes included; when it says
    /// [`Cancelled`], what arrived is made durable (the next call resumes from it) and
    /// the download stops with that error. Returns the bytes this call transferred.
    pub fn download(
        &self,
        file: &FileRef,
        part: &Path,
        progress: &dyn Fn(u64) -> Result<(), Cancelled>,
    ) -> Result<u64> {
        let url = self.url(&file.path)?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(part)
            .with_context(|| format!("opening {}", part.display()))?;
        let mut have = f.metadata()?.len();
        if have > file.size {
            f.set_len(0)?;
            have = 0;
        }
        let mut transferred = 0;
        if have < file.size {
            let resp = self.retrying(&url, || self.get(&url, (have > 0).then_some(have)))?;
            if resp.status == 200 && have > 0 {
                // The server ignored the Range: start over.
                f.set_len(0)?;
                have = 0;
            }
            f.seek(SeekFrom::Start(have))?;
            let mut body = resp.body.take(file.size - have + 1);
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = body.read(&mut buf).map_err(|e| self.read_error(&url, e))?;
                if n == 0 {
                    break;
                }
                if have + n as u64 > file.size {
                    return Err(FetchError::TooLarge {
                        url: url.to_string(),
                        limit: file.size,
                    }
                    .into());
                }
                f.write_all(&buf[..n]).map_err(|e| {
                    arbor_store::write_error(e, || format!("writing {}", part.display()))
                })?;
                have += n as u64;
                transferred += n as u64;
                if let Err(stop) = progress(have) {
                    f.sync_all()?;
                    return Err(stop.into());
                }
            }
        }
        anyhow::ensure!(
            have == file.size,
            FetchError::Broken {
                url: url.to_string(),
                detail: format!("{have} of {} bytes arrived", file.size),
            }
        );
        f.sync_all()?;
        f.seek(SeekFrom::Start(0))?;
        let mut hasher = blake3::Hasher::new();
        std::io::copy(&mut f, &mut hasher)?;
        if hasher.finalize().to_hex().as_str() != file.blake3 {
            drop(f);
            let _ = std::fs::remove_file(part);
            anyhow::bail!(
                "{url}: its BLAKE3 is not the one the signed index gives: corrupt or tampered (discarded)"
            );
        }
        Ok(transferred)
    }
}
