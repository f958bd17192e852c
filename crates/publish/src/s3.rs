//! An S3 bucket as the report drop (docs/fleet.md "Reports in an S3 bucket"): the
//! publisher signs a POST policy that lets machines upload reports under one prefix
//! (no machine holds a key), and the controller copies the reports it has not seen
//! from the bucket into its reports folder before it reads them. Both sign with AWS
//! signature version 4, which every S3-compatible store speaks.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use aws_lc_rs::{digest, hmac};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Serialize;

use arbor_core::fsutil;
use arbor_remote::report::MAX_REPORT;
use arbor_remote::rollout::ReportForm;

/// A bucket and the prefix reports go under, path-style: `https://HOST/BUCKET/PREFIX/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    /// `https://HOST[:PORT]`.
    pub endpoint: url::Url,
    /// The bucket's name.
    pub bucket: String,
    /// Where reports go in it, ending in `/` (or empty: the bucket's top).
    pub prefix: String,
    /// The region the key is scoped to (`us-east-1` for most S3-compatible stores).
    pub region: String,
}

/// An access key: the id goes into every signature's scope, the secret never leaves.
pub struct AccessKey {
    /// The key's id.
    pub id: String,
    secret: String,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccessKey({}, …)", self.id)
    }
}

impl AccessKey {
    /// Reads the 0600 credentials file remotes and registries use (docs/registry.md
    /// "Logins"): `username` is the access key's id, `password` its secret.
    pub fn load(path: &Path) -> Result<AccessKey> {
        let c = arbor_remote::oci_login::Credentials::load(path)?;
        match (c.username, c.password) {
            (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => {
                Ok(AccessKey { id, secret })
            }
            _ => bail!(
                "{}: give the bucket's access key as username and its secret as password",
                path.display()
            ),
        }
    }

    /// A key from its parts (tests, and callers that hold it elsewhere).
    pub fn new(id: &str, secret: &str) -> AccessKey {
        AccessKey {
            id: id.into(),
            secret: secret.into(),
        }
    }
}

impl Bucket {
    /// Parses `https://HOST[:PORT]/BUCKET[/PREFIX]`.
    pub fn parse(url: &str, region: &str) -> Result<Bucket> {
        let u = url::Url::parse(url).with_context(|| format!("bucket URL {url:?}"))?;
        ensure!(
            matches!(u.scheme(), "http" | "https")
                && u.query().is_none()
                && u.fragment().is_none()
                && u.username().is_empty(),
            "bucket URL {url:?}: give http(s)://HOST/BUCKET/PREFIX, without credentials or query"
        );
        let mut parts = u.path().trim_start_matches('/').splitn(2, '/');
        let bucket = parts.next().unwrap_or_default().to_string();
        ensure!(
            (3..=63).contains(&bucket.len())
                && bucket
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b)),
            "bucket URL {url:?}: no bucket name after the host"
        );
        let mut prefix = parts.next().unwrap_or_default().to_string();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        let mut endpoint = u.clone();
        endpoint.set_path("");
        ensure!(
            !region.is_empty()
                && region
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-'),
            "region {region:?}: give a region name such as us-east-1"
        );
        Ok(Bucket {
            endpoint,
            bucket,
            prefix,
            region: region.into(),
        })
    }

    /// The bucket's URL, where forms are posted.
    fn url(&self) -> String {
        format!(
            "{}/{}/",
            self.endpoint.as_str().trim_end_matches('/'),
            self.bucket
        )
    }

    /// The bucket a form was signed for (its URL, prefix and the credential's region).
    pub fn of_form(form: &ReportForm) -> Result<Bucket> {
        let region = form
            .fields
            .get("x-amz-credential")
            .and_then(|c| c.split('/').nth(2))
            .context("the report form has no x-amz-credential")?;
        Bucket::parse(&format!("{}{}", form.url, form.key_prefix), region)
    }
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

/// Signature version 4's key for one day, region and service (S3).
fn signing_key(secret: &str, date: &str, region: &str) -> Vec<u8> {
    let k = hmac_sha256(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac_sha256(&k, region.as_bytes());
    let k = hmac_sha256(&k, b"s3");
    hmac_sha256(&k, b"aws4_request")
}

/// The longest a report may be in the bucket: the policy refuses more.
const MAX_UPLOAD: u64 = 8192;

/// Signs a POST policy for `bucket`, valid from `now` for `valid`: uploads under the
/// prefix, of at most 8 KiB.
pub fn sign_form(
    bucket: &Bucket,
    key: &AccessKey,
    now: DateTime<Utc>,
    valid: Duration,
) -> ReportForm {
    let date = now.format("%Y%m%d").to_string();
    let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let credential = format!("{}/{date}/{}/s3/aws4_request", key.id, bucket.region);
    let expires = now + chrono::Duration::seconds(valid.as_secs() as i64);
    let policy = serde_json::json!({
        "expiration": expires.format("%Y-%m-%dT%H:%M:%S.000Z").to_string(),
        "conditions": [
            {"bucket": bucket.bucket},
            ["starts-with", "$key", bucket.prefix],
            ["content-length-range", 1, MAX_UPLOAD],
            {"x-amz-algorithm": "AWS4-HMAC-SHA256"},
            {"x-amz-credential": credential},
            {"x-amz-date": amz_date},
        ],
    });
    let policy = base64::engine::general_purpose::STANDARD.encode(policy.to_string());
    let signature = hex::encode(hmac_sha256(
        &signing_key(&key.secret, &date, &bucket.region),
        policy.as_bytes(),
    ));
    let fields = BTreeMap::from([
        ("policy".to_string(), policy),
        ("x-amz-algorithm".into(), "AWS4-HMAC-SHA256".into()),
        ("x-amz-credential".into(), credential),
        ("x-amz-date".into(), amz_date),
        ("x-amz-signature".into(), signature),
    ]);
    ReportForm {
        url: bucket.url(),
        key_prefix: bucket.prefix.clone(),
        fields,
        signed: now.timestamp(),
        expires: expires.timestamp(),
    }
}

/// Whether a form is past half its life at `now`: the controller then signs a new
/// one, so machines always hold a form with days to go.
pub fn needs_renewal(form: &ReportForm, now: i64) -> bool {
    now >= form.signed + (form.expires - form.signed) / 2
}

/// S3's URI encoding: everything but the unreserved characters, `/` kept in paths.
fn uri_encode(s: &str, path: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if path => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The SHA-256 of an empty payload, which a GET signs.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// A GET of `path` (below the endpoint) with `query`, signed with `key` in headers
/// (signature version 4); the answer's body, at most `limit` bytes.
fn signed_get(
    agent: &ureq::Agent,
    bucket: &Bucket,
    key: &AccessKey,
    path: &str,
    query: &[(&str, &str)],
    limit: u64,
) -> Result<Vec<u8>> {
    let now = Utc::now();
    let (date, amz_date) = (
        now.format("%Y%m%d").to_string(),
        now.format("%Y%m%dT%H%M%SZ").to_string(),
    );
    let host = match bucket.endpoint.port() {
        Some(p) => format!("{}:{p}", bucket.endpoint.host_str().unwrap_or_default()),
        None => bucket.endpoint.host_str().unwrap_or_default().to_string(),
    };
    let mut q: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    q.sort();
    let query = q
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let path = uri_encode(path, true);
    let canonical = format!(
        "GET\n{path}\n{query}\nhost:{host}\nx-amz-content-sha256:{EMPTY_SHA256}\n\
         x-amz-date:{amz_date}\n\nhost;x-amz-content-sha256;x-amz-date\n{EMPTY_SHA256}"
    );
    let scope = format!("{date}/{}/s3/aws4_request", bucket.region);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
    );
    let signature = hex::encode(hmac_sha256(
        &signing_key(&key.secret, &date, &bucket.region),
        to_sign.as_bytes(),
    ));
    let url = format!(
        "{}{}{}{query}",
        bucket.endpoint.as_str().trim_end_matches('/'),
        path,
        if query.is_empty() { "" } else { "?" }
    );
    let resp = agent
        .get(&url)
        .header("x-amz-content-sha256", EMPTY_SHA256)
        .header("x-amz-date", &amz_date)
        .header(
            "Authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, \
                 SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={signature}",
                key.id
            ),
        )
        .call()
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    resp.into_body()
        .into_reader()
        .take(limit + 1)
        .read_to_end(&mut body)
        .with_context(|| format!("reading {url}"))?;
    ensure!(
        status == 200,
        "GET {url}: HTTP status {status}: {}",
        String::from_utf8_lossy(&body[..body.len().min(300)])
    );
    ensure!(
        body.len() as u64 <= limit,
        "GET {url}: more than {limit} bytes"
    );
    Ok(body)
}

/// The texts of every `<tag>…</tag>` in `xml`, in order. A listing is flat and small;
/// a key with an XML entity in it is not a report's (reports' names are plain), so
/// nothing is unescaped.
fn elements<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

/// What one copy from the bucket did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Synced {
    /// Objects listed under the channel's prefix.
    pub listed: u64,
    /// New reports copied into the folder.
    pub copied: u64,
    /// Objects whose name is not a report's, or larger than one: left in the bucket.
    pub skipped: u64,
}

/// The most bytes one listing page may take (1,000 keys of a few hundred bytes).
const MAX_PAGE: u64 = 4 << 20;

/// Copies `channel`'s reports from the bucket into `dir/<channel>/`, each one not
/// already there: one listing per thousand reports and one GET per new one, at most
/// `max` objects listed. Names are checked before they become file names; each
/// report is written whole (tmp + rename) or not at all.
pub fn sync(
    bucket: &Bucket,
    key: &AccessKey,
    channel: &str,
    dir: &Path,
    max: usize,
    timeout: Duration,
) -> Result<Synced> {
    ensure!(
        arbor_remote::index::valid_channel(channel),
        "'{channel}' is not a channel name"
    );
    let agent = arbor_remote::http::bounded_agent(timeout);
    let folder = dir.join(channel);
    std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
    let prefix = format!("{}{channel}/", bucket.prefix);
    let bucket_path = format!("/{}/", bucket.bucket);
    let mut synced = Synced::default();
    let mut token: Option<String> = None;
    loop {
        let mut query = vec![("list-type", "2"), ("prefix", prefix.as_str())];
        if let Some(t) = &token {
            query.push(("continuation-token", t.as_str()));
        }
        let page = signed_get(&agent, bucket, key, &bucket_path, &query, MAX_PAGE)?;
        let page = String::from_utf8(page).context("a bucket listing that is not UTF-8")?;
        for object in elements(&page, "Key") {
            synced.listed += 1;
            let name = object.strip_prefix(prefix.as_str()).unwrap_or_default();
            let plain = !name.is_empty()
                && name.len() <= 128
                && name.ends_with(".json")
                && !name.starts_with('.')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !plain {
                synced.skipped += 1;
                continue;
            }
            let path = folder.join(name);
            if path.exists() {
                continue;
            }
            let object_path = format!("/{}/{object}", bucket.bucket);
            match signed_get(&agent, bucket, key, &object_path, &[], MAX_REPORT) {
                Ok(bytes) => {
                    fsutil::write_file_atomic(&path, &bytes, 0o644)
                        .with_context(|| format!("writing {}", path.display()))?;
                    synced.copied += 1;
                }
                // Larger than a report: the controller would not count it anyway.
                Err(_) => synced.skipped += 1,
            }
        }
        let truncated = elements(&page, "IsTruncated").first() == Some(&"true");
        token = elements(&page, "NextContinuationToken")
            .first()
            .map(|t| t.to_string());
        if !truncated || token.is_none() || synced.listed as usize >= max {
            return Ok(synced);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signing_key_is_aws_own_example() {
        // AWS's "deriving the signing key" example (general reference, signature
        // version 4), there for the iam service; the derivation is the same.
        let k = hmac_sha256(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", b"20120215");
        let k = hmac_sha256(&k, b"us-east-1");
        let k = hmac_sha256(&k, b"iam");
        let k = hmac_sha256(&k, b"aws4_request");
        assert_eq!(
            hex::encode(k),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }

    #[test]
    fn buckets_parse_path_style() {
        let b = Bucket::parse("https://s3.example.org:8443/fleet/reports", "eu-west-1").unwrap();
        assert_eq!(b.bucket, "fleet");
        assert_eq!(b.prefix, "reports/");
        assert_eq!(b.url(), "https://s3.example.org:8443/fleet/");
        let top = Bucket::parse("http://127.0.0.1:7480/fleet", "us-east-1").unwrap();
        assert_eq!(top.prefix, "");
        for bad in [
            "ftp://h/fleet",
            "https://h/",
            "https://u:p@h/fleet",
            "https://h/fleet?x=1",
            "https://h/Fleet_Bucket",
        ] {
            assert!(Bucket::parse(bad, "us-east-1").is_err(), "{bad}");
        }
        assert!(Bucket::parse("https://h/fleet", "us east").is_err());
    }

    #[test]
    fn a_form_says_what_it_allows_and_is_renewed_at_half_life() {
        let b = Bucket::parse("https://h/fleet/r", "us-east-1").unwrap();
        let now = DateTime::parse_from_rfc3339("2026-12-04T02:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let f = sign_form(
            &b,
            &AccessKey::new("AK", "SECRET"),
            now,
            Duration::from_secs(7 * 86400),
        );
        f.check().unwrap();
        assert_eq!(f.key_prefix, "r/");
        assert_eq!(
            f.fields["x-amz-credential"],
            "AK/20261204/us-east-1/s3/aws4_request"
        );
        assert_eq!(f.fields["x-amz-date"], "20261204T020000Z");
        let policy = base64::engine::general_purpose::STANDARD
            .decode(&f.fields["policy"])
            .unwrap();
        let policy: serde_json::Value = serde_json::from_slice(&policy).unwrap();
        assert_eq!(policy["expiration"], "2026-12-11T02:00:00.000Z");
        let conditions = policy["conditions"].to_string();
        assert!(
            conditions.contains(r#"["starts-with","$key","r/"]"#),
            "{conditions}"
        );
        assert!(
            conditions.contains(r#"["content-length-range",1,8192]"#),
            "{conditions}"
        );
        assert_eq!(Bucket::of_form(&f).unwrap(), b);
        assert!(!needs_renewal(&f, now.timestamp() + 3 * 86400));
        assert!(needs_renewal(&f, now.timestamp() + 4 * 86400));
    }

    #[test]
    fn listings_are_read_without_a_parser() {
        let xml = "<ListBucketResult><IsTruncated>true</IsTruncated><Contents><Key>r/s/a.json</Key>\
                   </Contents><Contents><Key>r/s/b.json</Key></Contents>\
                   <NextContinuationToken>T1</NextContinuationToken></ListBucketResult>";
        assert_eq!(elements(xml, "Key"), ["r/s/a.json", "r/s/b.json"]);
        assert_eq!(elements(xml, "NextContinuationToken"), ["T1"]);
        assert_eq!(elements("<Key>unclosed", "Key"), Vec::<&str>::new());
        assert_eq!(uri_encode("a b/c~", true), "a%20b/c~");
        assert_eq!(uri_encode("r/s/", false), "r%2Fs%2F");
    }
}
