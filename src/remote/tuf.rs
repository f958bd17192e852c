//! TUF on the client: loads a remote's metadata with `tough` (signatures, thresholds,
//! expiry, version rollback, snapshot/targets consistency, root rotation) and reads a
//! channel index through it. What `tough` verified last is kept in the remote's
//! datastore, so a server that later serves older metadata is caught.

use std::path::Path;

use anyhow::{Context, Result};
use async_trait::async_trait;
use bytes::Bytes;
use tough::{
    IntoVec, RepositoryLoader, TargetName, Transport, TransportError, TransportErrorKind,
    TransportStream,
};
use url::Url;

use super::http::{FetchError, Http};
use super::index::ChannelIndex;

/// The most any metadata file or channel index may be (tough applies its own, smaller
/// limits to each role on top).
const MAX_METADATA: u64 = 32 << 20;

/// A tough transport over [`Http`], so TUF fetches share its bounds and its errors.
#[derive(Clone)]
struct HttpTransport(Http);

impl std::fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpTransport")
    }
}

#[async_trait]
impl Transport for HttpTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        // One metadata file at a time on a current-thread runtime: blocking here
        // holds up nothing else.
        match self.0.get_url_bounded(&url, MAX_METADATA) {
            Ok(bytes) => Ok(Box::pin(futures::stream::once(async move {
                Ok(Bytes::from(bytes))
            }))),
            Err(FetchError::NotFound { .. }) => Err(TransportError::new(
                TransportErrorKind::FileNotFound,
                url.as_str(),
            )),
            Err(e) => Err(TransportError::new_with_cause(
                TransportErrorKind::Other,
                url.as_str(),
                e,
            )),
        }
    }
}

/// Finds a [`FetchError`] in an error's chain, to say "offline" rather than a TUF
/// library's nested wording.
pub fn fetch_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a FetchError> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(f) = err.downcast_ref::<FetchError>() {
            return Some(f);
        }
        cur = err.source();
    }
    None
}

/// A runtime for tough's async API; arbor itself is synchronous.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .context("starting the async runtime for TUF")
}

/// Verifies the remote's metadata from its trusted root and returns the index of
/// `channel`, checked. `datastore` keeps what was verified last (rollback protection).
pub fn load_channel(
    http: &Http,
    trusted_root: &[u8],
    datastore: &Path,
    channel: &str,
) -> Result<ChannelIndex> {
    let metadata = http.url("metadata/")?;
    let targets = http.url("targets/")?;
    std::fs::create_dir_all(datastore)
        .with_context(|| format!("creating {}", datastore.display()))?;
    let rt = runtime()?;
    let bytes = rt.block_on(async {
        let repo = RepositoryLoader::new(&trusted_root, metadata, targets)
            .transport(HttpTransport(http.clone()))
            .datastore(datastore)
            .load()
            .await
            .map_err(|e| describe(e, "verifying the remote's signed metadata"))?;
        let name = TargetName::new(format!("{channel}.json"))
            .map_err(|e| anyhow::anyhow!("channel {channel}: {e}"))?;
        let stream = repo
            .read_target(&name)
            .await
            .map_err(|e| describe(e, "reading the channel index"))?
            .ok_or_else(|| crate::error::Error::ChannelNotFound(channel.to_string()))?;
        stream
            .into_vec()
            .await
            .map_err(|e| describe(e, "reading the channel index"))
    })?;
    ChannelIndex::parse(&bytes, channel)
}

/// An error from tough, with the offline case said plainly and the rest kept whole
/// (tough's messages name the role and what failed: expired, version, signature).
fn describe(e: tough::error::Error, doing: &str) -> anyhow::Error {
    let fetch = fetch_error(&e);
    if let Some(f @ FetchError::Offline { .. }) = fetch {
        return crate::error::Error::Offline(f.to_string()).into();
    }
    let transport = fetch.is_some();
    let mut msg = e.to_string();
    let mut cur = std::error::Error::source(&e);
    while let Some(s) = cur {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        cur = s.source();
    }
    let text = format!("{doing}: {msg}; nothing was changed");
    if transport {
        // The server answered, but not with the file: not a verification failure.
        return anyhow::anyhow!(text);
    }
    crate::error::Error::NotVerified(text).into()
}
