//! OCI registries as a transport (docs/registry.md): a publication's files as blobs of
//! one registry repository, named by their SHA-256 as registries require. The tag
//! [`METADATA_TAG`] is an OCI 1.1 image manifest (with an `artifactType`) whose layers
//! are the TUF metadata files, each titled with its path; every other file is found by
//! the SHA-256 the signed metadata gives for it (the channel index's file references
//! and each version's object table). Nothing a registry says is trusted more than a
//! web server's answer: every byte still goes through TUF and the signed hashes.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

pub use crate::oci_login::{Credentials, check_private};
use sha2::Digest;
use url::Url;

/// The tag of the manifest that lists the TUF metadata: the one thing that moves.
pub const METADATA_TAG: &str = "arbor-metadata";
/// The `artifactType` of every manifest arbor writes.
pub const ARTIFACT_TYPE: &str = "application/vnd.arbor.publication.v1";
/// The media type of a layer: one file of the publication.
pub const FILE_MEDIA_TYPE: &str = "application/vnd.arbor.file.v1";
/// OCI image manifests.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The empty config blob of an artifact (OCI 1.1).
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// The layer annotation that holds a file's path.
pub const TITLE: &str = "org.opencontainers.image.title";
/// The largest manifest read (registries refuse larger ones to push).
pub const MAX_MANIFEST: u64 = 4 << 20;
/// How many times a request that got 429 or 503 is tried in all.
const ATTEMPTS: u32 = 5;
/// The longest `Retry-After` honoured (by this client and by `http`'s); a server
/// asking for more gets this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// A registry repository: `oci://HOST[:PORT]/NAME` (plain HTTP for a loopback host, as
/// docker and podman do; HTTPS otherwise), `oci+http://` or `oci+https://` to say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// `http(s)://HOST[:PORT]/v2/NAME/`.
    pub api: Url,
    /// `HOST[:PORT]`.
    pub host: String,
    /// The repository's name.
    pub name: String,
}

/// True for a URL this module reads.
pub fn is_oci(url: &str) -> bool {
    url.starts_with("oci://") || url.starts_with("oci+http://") || url.starts_with("oci+https://")
}

/// True for a repository name as the distribution spec allows it.
fn valid_name(name: &str) -> bool {
    let component = |c: &str| {
        !c.is_empty()
            && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && c.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    };
    name.len() <= 255 && name.split('/').all(component)
}

impl Location {
    /// Parses `oci://HOST[:PORT]/NAME` (a trailing `/` is allowed).
    pub fn parse(s: &str) -> Result<Location> {
        let (scheme, rest) = s
            .split_once("://")
            .filter(|_| is_oci(s))
            .with_context(|| format!("'{s}' is not an oci:// registry URL"))?;
        let (host, name) = rest
            .trim_end_matches('/')
            .split_once('/')
            .with_context(|| format!("'{s}': give oci://HOST/NAME"))?;
        ensure!(
            valid_name(name),
            "'{name}' is not a registry repository name (lowercase letters, digits, . _ - and /)"
        );
        let probe = Url::parse(&format!("http://{host}/"))
            .with_context(|| format!("'{host}' is not a registry host"))?;
        ensure!(
            probe.username().is_empty() && probe.password().is_none() && probe.path() == "/",
            "'{s}': credentials go in a credentials file, not in the URL"
        );
        let loopback = match probe.host() {
            Some(url::Host::Ipv4(a)) => a.is_loopback(),
            Some(url::Host::Ipv6(a)) => a.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        };
        let http = match scheme {
            "oci+http" => "http",
            "oci+https" => "https",
            _ if loopback => "http",
            _ => "https",
        };
        Ok(Location {
            api: Url::parse(&format!("{http}://{host}/v2/{name}/"))?,
            host: host.to_string(),
            name: name.to_string(),
        })
    }

    /// The URL of a blob.
    pub fn blob_url(&self, digest: &str) -> Url {
        self.api
            .join(&format!("blobs/{digest}"))
            .expect("a digest is a path")
    }

    /// The URL of a manifest by tag or digest.
    pub fn manifest_url(&self, reference: &str) -> Url {
        self.api
            .join(&format!("manifests/{reference}"))
            .expect("a reference is a path")
    }
}

/// A descriptor in a manifest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Its media type.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Its size.
    pub size: u64,
    /// Annotations; arbor's layers carry their path as the title.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Inline data (the empty config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

/// An OCI image manifest, the parts arbor writes and reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// 2.
    pub schema_version: u32,
    /// [`MANIFEST_MEDIA_TYPE`].
    pub media_type: String,
    /// [`ARTIFACT_TYPE`] for arbor's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The config blob (the empty one for arbor's).
    pub config: Descriptor,
    /// The files.
    pub layers: Vec<Descriptor>,
}

/// `sha256:<hex>` of bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

impl ImageManifest {
    /// An arbor manifest listing `files` as (path, sha256 hex, size).
    pub fn of_files(files: &[(String, String, u64)]) -> ImageManifest {
        ImageManifest {
            schema_version: 2,
            media_type: MANIFEST_MEDIA_TYPE.into(),
            artifact_type: Some(ARTIFACT_TYPE.into()),
            config: Descriptor {
                media_type: EMPTY_MEDIA_TYPE.into(),
                digest: digest_of(b"{}"),
                size: 2,
                annotations: BTreeMap::new(),
                data: Some("e30=".into()),
            },
            layers: files
                .iter()
                .map(|(path, sha, size)| Descriptor {
                    media_type: FILE_MEDIA_TYPE.into(),
                    digest: format!("sha256:{sha}"),
                    size: *size,
                    annotations: BTreeMap::from([(TITLE.to_string(), path.clone())]),
                    data: None,
                })
                .collect(),
        }
    }

    /// Its files as path → (sha256 hex, size): titled layers of arbor's media type
    /// with a well-formed digest only.
    pub fn files(&self) -> BTreeMap<String, (String, u64)> {
        self.layers
            .iter()
            .filter(|l| l.media_type == FILE_MEDIA_TYPE)
            .filter_map(|l| {
                let sha = l.digest.strip_prefix("sha256:")?;
                let ok = sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit());
                let title = l.annotations.get(TITLE)?;
                ok.then(|| (title.clone(), (sha.to_ascii_lowercase(), l.size)))
            })
            .collect()
    }
}

/// A client of one registry repository: authentication (anonymous, basic, the
/// bearer-token exchange), retries of 429 and 503 honouring `Retry-After`.
pub struct Registry {
    /// Where it is.
    pub loc: Location,
    agent: ureq::Agent,
    creds: Credentials,
    /// The `Authorization` header that last worked.
    auth: Mutex<Option<String>>,
}

/// An answer, read.
pub struct Answer {
    /// Its status.
    pub status: u16,
    /// Its headers that arbor reads (lower-case names).
    pub headers: BTreeMap<String, String>,
    /// Its body (bounded by the caller).
    pub body: Vec<u8>,
}

/// The HTTP agent of a remote's fetches (here and in `http`): statuses as answers,
/// not errors; a server that sends nothing for `timeout` ends the request.
pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(15)))
        .timeout_recv_response(Some(timeout))
        .timeout_per_read(Some(timeout))
        .user_agent(concat!("arbor/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

impl Registry {
    /// A client for `loc`, each request bounded by `timeout`.
    pub fn new(loc: Location, creds: Credentials, timeout: Duration) -> Registry {
        Registry {
            loc,
            agent: agent(timeout),
            creds,
            auth: Mutex::new(None),
        }
    }

    /// The `Authorization` header for a request, if one is known to be needed.
    pub fn authorization(&self) -> Option<String> {
        self.auth.lock().unwrap().clone()
    }

    /// Works out the `Authorization` header from a 401's challenge.
    fn answer_challenge(&self, challenge: &str) -> Result<()> {
        let header = crate::oci_login::authorization(
            &self.agent,
            &self.loc.host,
            &self.loc.api,
            &self.creds,
            challenge,
        )?;
        *self.auth.lock().unwrap() = Some(header);
        Ok(())
    }

    /// Sends a request (`body` for PUT/POST), answering one authentication challenge
    /// and retrying 429/503 after `Retry-After` (at most [`MAX_RETRY_AFTER`]); the
    /// answer's body is left to the caller to read.
    pub fn call(
        &self,
        method: &str,
        url: &Url,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<(u16, BTreeMap<String, String>, ureq::Body)> {
        let mut challenged = false;
        let mut attempt = 1;
        let mut delay = Duration::from_millis(250);
        loop {
            let req = ureq::http::Request::builder()
                .method(method)
                .uri(url.as_str());
            let mut req = headers.iter().fold(req, |r, (k, v)| r.header(*k, *v));
            if let Some(a) = self.authorization() {
                req = req.header("Authorization", a);
            }
            let resp = match body {
                Some(b) => self.agent.run(req.body(b.to_vec())?),
                None => self.agent.run(req.body(())?),
            };
            let resp = resp.map_err(|e| match e {
                ureq::Error::Timeout(_) => {
                    anyhow::anyhow!("{url}: the registry sent nothing in time")
                }
                e => arbor_core::error::Error::Offline(format!(
                    "cannot reach registry {}: {e} (offline?)",
                    self.loc.host
                ))
                .into(),
            })?;
            let status = resp.status().as_u16();
            let headers: BTreeMap<String, String> = resp
                .headers()
                .iter()
                .filter_map(|(k, v)| {
                    Some((
                        k.as_str().to_ascii_lowercase(),
                        v.to_str().ok()?.to_string(),
                    ))
                })
                .collect();
            if status == 401 && !challenged {
                challenged = true;
                let challenge = headers.get("www-authenticate").cloned().unwrap_or_default();
                self.answer_challenge(&challenge)?;
                continue;
            }
            if matches!(status, 429 | 503) && attempt < ATTEMPTS {
                let wait = headers
                    .get("retry-after")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map_or(delay, Duration::from_secs)
                    .min(MAX_RETRY_AFTER);
                tracing::warn!(
                    "registry {} answered {status}; trying again in {wait:?}",
                    self.loc.host
                );
                std::thread::sleep(wait);
                delay *= 2;
                attempt += 1;
                continue;
            }
            return Ok((status, headers, resp.into_body()));
        }
    }

    /// [`Registry::call`], reading at most `max` bytes of the answer.
    pub fn send(
        &self,
        method: &str,
        url: &Url,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        max: u64,
    ) -> Result<Answer> {
        let (status, headers, mut resp) = self.call(method, url, headers, body)?;
        let mut out = Vec::new();
        resp.as_reader()
            .take(max + 1)
            .read_to_end(&mut out)
            .with_context(|| format!("{url}: reading the answer"))?;
        ensure!(
            out.len() as u64 <= max,
            "{url}: the registry sent more than {max} bytes"
        );
        Ok(Answer {
            status,
            headers,
            body: out,
        })
    }

    /// The raw manifest (or index) `reference` names, of one of the `accept` media
    /// types, with its media type and digest; its bytes must hash to the digest the
    /// registry gives, and to `reference` when that is a digest.
    pub fn raw_manifest(
        &self,
        reference: &str,
        accept: &[&str],
    ) -> Result<(Vec<u8>, String, String)> {
        self.find_manifest(reference, accept)?.with_context(|| {
            format!(
                "{}: no such image or tag on the registry",
                self.loc.manifest_url(reference)
            )
        })
    }

    /// [`Registry::raw_manifest`]; `None` when the registry has none.
    fn find_manifest(
        &self,
        reference: &str,
        accept: &[&str],
    ) -> Result<Option<(Vec<u8>, String, String)>> {
        let url = self.loc.manifest_url(reference);
        let accept = accept.join(", ");
        let a = self.send("GET", &url, &[("Accept", &accept)], None, MAX_MANIFEST)?;
        match a.status {
            200 => {}
            404 => return Ok(None),
            s => bail!("{url}: the registry answered {s}"),
        }
        let digest = digest_of(&a.body);
        let claimed = a.headers.get("docker-content-digest");
        if claimed.is_some_and(|c| *c != digest)
            || (reference.starts_with("sha256:") && reference != digest)
        {
            bail!(
                "{url}: the manifest's bytes hash to {digest}, not to the digest the registry \
                 gives: refusing it"
            );
        }
        let media = a.headers.get("content-type").cloned().unwrap_or_default();
        Ok(Some((a.body, media, digest)))
    }

    /// A blob as a stream (its length from the registry, if said); the caller checks
    /// the size and digest it expects as it reads.
    pub fn open_blob(&self, digest: &str) -> Result<(Box<dyn Read + Send>, Option<u64>)> {
        let url = self.loc.blob_url(digest);
        let (status, headers, body) = self.call("GET", &url, &[], None)?;
        ensure!(status == 200, "{url}: the registry answered {status}");
        let len = headers.get("content-length").and_then(|l| l.parse().ok());
        Ok((Box::new(body.into_reader()), len))
    }

    /// The arbor manifest tagged or digested `reference`; `None` when there is none.
    pub fn manifest(&self, reference: &str) -> Result<Option<ImageManifest>> {
        let url = self.loc.manifest_url(reference);
        let Some((bytes, _, _)) = self.find_manifest(reference, &[MANIFEST_MEDIA_TYPE])? else {
            return Ok(None);
        };
        let m: ImageManifest = serde_json::from_slice(&bytes)
            .with_context(|| format!("{url}: not an OCI image manifest"))?;
        Ok(Some(m))
    }

    /// True when the registry holds the blob.
    pub fn has_blob(&self, digest: &str) -> Result<bool> {
        let a = self.send("HEAD", &self.loc.blob_url(digest), &[], None, 0)?;
        Ok(a.status == 200)
    }

    /// Uploads a blob in one request (POST for a session, then PUT with its digest).
    pub fn push_blob(&self, bytes: &[u8]) -> Result<String> {
        let digest = digest_of(bytes);
        let start = self.loc.api.join("blobs/uploads/")?;
        let a = self.send("POST", &start, &[], Some(&[]), 64 << 10)?;
        ensure!(
            a.status == 202,
            "{start}: the registry answered {} to an upload",
            a.status
        );
        let location = a
            .headers
            .get("location")
            .context("an upload without a Location")?;
        let mut url = start.join(location)?;
        ensure!(
            url.host_str() == start.host_str() || url.scheme() == "https",
            "the registry sends the upload to {url}: refusing plain HTTP elsewhere"
        );
        url.query_pairs_mut().append_pair("digest", &digest);
        let a = self.send(
            "PUT",
            &url,
            &[("Content-Type", "application/octet-stream")],
            Some(bytes),
            64 << 10,
        )?;
        ensure!(
            a.status == 201,
            "uploading {digest}: the registry answered {}: {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        );
        Ok(digest)
    }

    /// Pushes a manifest under `tag`; returns its digest.
    pub fn push_manifest(&self, tag: &str, m: &ImageManifest) -> Result<String> {
        let bytes = serde_json::to_vec(m)?;
        let url = self.loc.manifest_url(tag);
        let a = self.send(
            "PUT",
            &url,
            &[("Content-Type", MANIFEST_MEDIA_TYPE)],
            Some(&bytes),
            64 << 10,
        )?;
        ensure!(
            a.status == 201,
            "pushing the manifest {tag}: the registry answered {}: {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        );
        Ok(digest_of(&bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_urls_parse_with_loopback_over_plain_http() {
        let l = Location::parse("oci://127.0.0.1:5000/arbor/os").unwrap();
        assert_eq!(l.api.as_str(), "http://127.0.0.1:5000/v2/arbor/os/");
        assert_eq!(
            l.blob_url("sha256:ab").as_str(),
            "http://127.0.0.1:5000/v2/arbor/os/blobs/sha256:ab"
        );
        let l = Location::parse("oci://registry.example.org/os/").unwrap();
        assert_eq!(l.api.as_str(), "https://registry.example.org/v2/os/");
        let l = Location::parse("oci+http://mirror.lan:5000/os").unwrap();
        assert_eq!(l.api.scheme(), "http");
        for bad in [
            "oci://host",
            "oci://host/UPPER",
            "oci://host/a/../b",
            "oci://user:pw@host/os",
            "http://host/os",
            "oci://host/os?x",
        ] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_manifest_lists_only_well_formed_titled_files() {
        let sha = "a".repeat(64);
        let mut m = ImageManifest::of_files(&[("metadata/timestamp.json".into(), sha.clone(), 9)]);
        m.layers.push(Descriptor {
            media_type: FILE_MEDIA_TYPE.into(),
            digest: "sha256:xyz".into(),
            size: 1,
            annotations: BTreeMap::from([(TITLE.to_string(), "bad".to_string())]),
            data: None,
        });
        let files = m.files();
        assert_eq!(files.len(), 1);
        assert_eq!(files["metadata/timestamp.json"], (sha, 9));
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["artifactType"], ARTIFACT_TYPE);
        assert_eq!(json["config"]["mediaType"], EMPTY_MEDIA_TYPE);
    }
}
