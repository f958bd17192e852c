//! Mirror URLs as a remote's configuration and a signed index give them: checked in one
//! place, below both the index and the mirrors' failover.

use anyhow::Result;
use url::Url;

/// The most mirrors a remote or a signed index may name: enough for every region, few
/// enough that a run that finds all of them down still ends soon.
pub const MAX_MIRRORS: usize = 16;

/// Checks a mirror URL from the command line or a signed index: http or https, a
/// folder, no credentials (they would end up in logs and history).
pub fn check_url(url: &str) -> Result<Url> {
    if crate::oci::is_oci(url) {
        crate::oci::Location::parse(url)?;
        return Ok(Url::parse(url.trim_end_matches('/'))?);
    }
    let mut s = url.to_string();
    if !s.ends_with('/') {
        s.push('/');
    }
    let u = Url::parse(&s).map_err(|e| anyhow::anyhow!("mirror '{url}' is not a URL: {e}"))?;
    anyhow::ensure!(
        matches!(u.scheme(), "http" | "https" | "file"),
        "mirror {url}: only http, https and file are supported"
    );
    anyhow::ensure!(
        u.username().is_empty() && u.password().is_none(),
        "mirror {url}: credentials do not belong in a URL"
    );
    anyhow::ensure!(
        u.query().is_none() && u.fragment().is_none() && url.len() <= 1024,
        "mirror {url}: a folder URL without query or fragment, at most 1024 characters"
    );
    Ok(u)
}

/// [`check_url`] for a mirror a signed index names: http, https or a registry, never
/// a path on the machine (`file://`).
pub fn check_named(url: &str) -> Result<Url> {
    let u = check_url(url)?;
    anyhow::ensure!(
        matches!(
            u.scheme(),
            "http" | "https" | "oci" | "oci+http" | "oci+https"
        ),
        "mirror {url}: machines reach a mirror by http, https or oci"
    );
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_urls_are_plain_folders() {
        assert_eq!(
            check_url("https://m.example.org/os").unwrap().as_str(),
            "https://m.example.org/os/"
        );
        assert!(check_url("ftp://m.example.org/os").is_err());
        assert!(check_url("https://user:pw@m.example.org/os").is_err());
        assert!(check_url("https://m.example.org/os?x=1").is_err());
        assert!(check_url("not a url").is_err());
        assert!(check_url("file:///srv/os").is_ok());
        assert!(check_named("file:///srv/os").is_err());
        assert!(check_named("oci://127.0.0.1:5000/os").is_ok());
    }
}
