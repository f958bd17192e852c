//! Logging in to a registry (docs/registry.md): credentials from a root-only file,
//! and the answer to a 401's challenge: basic, the bearer-token exchange of the
//! distribution spec, or a bearer read from a file. The secrets never reach a message.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use serde::Deserialize;
use url::Url;

/// What a registry is logged into with, from a root-only file (docs/registry.md):
/// `username` and `password`, or `token_file` (a file holding a token: the password
/// of the token exchange, or the bearer itself where the registry names no realm).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// The user name.
    #[serde(default)]
    pub username: Option<String>,
    /// The password.
    #[serde(default)]
    pub password: Option<String>,
    /// A file holding a token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets, whatever prints this.
        f.write_str("Credentials(…)")
    }
}

/// Refuses a secrets file others can read (or that is not a plain file).
pub fn check_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m =
        std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(m.is_file(), "{} is not a plain file", path.display());
    ensure!(
        m.mode() & 0o077 == 0,
        "{} can be read by others (mode {:o}): make it 0600",
        path.display(),
        m.mode() & 0o777
    );
    Ok(())
}

impl Credentials {
    /// Reads a credentials file (TOML), which must be private to its owner.
    pub fn load(path: &Path) -> Result<Credentials> {
        check_private(path)?;
        let text = std::fs::read_to_string(path)?;
        let c: Credentials = toml::from_str(&text)
            .with_context(|| format!("{} is not a credentials file", path.display()))?;
        if let Some(t) = &c.token_file {
            check_private(t)?;
        }
        Ok(c)
    }

    fn token(&self) -> Result<Option<String>> {
        match &self.token_file {
            Some(t) => Ok(Some(std::fs::read_to_string(t)?.trim().to_string())),
            None => Ok(None),
        }
    }

    fn basic(&self) -> Result<Option<String>> {
        let secret = match (&self.password, self.token()?) {
            (Some(p), _) => p.clone(),
            (None, Some(t)) => t,
            (None, None) => return Ok(None),
        };
        let user = self.username.clone().unwrap_or_default();
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"));
        Ok(Some(format!("Basic {b64}")))
    }
}

fn param<'a>(challenge: &'a str, key: &str) -> Option<&'a str> {
    challenge.split(',').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        let k = k.rsplit(' ').next()?;
        (k.eq_ignore_ascii_case(key)).then(|| v.trim().trim_matches('"'))
    })
}

/// The `Authorization` header that answers `challenge` (a `WWW-Authenticate` value)
/// of the registry `host`, spoken to at `api`. A token realm gets the login only over
/// HTTPS, or over plain HTTP when the registry itself is spoken to that way.
pub fn authorization(
    agent: &ureq::Agent,
    host: &str,
    api: &Url,
    creds: &Credentials,
    challenge: &str,
) -> Result<String> {
    let scheme = challenge.split_whitespace().next().unwrap_or("");
    if scheme.eq_ignore_ascii_case("basic") {
        return creds
            .basic()?
            .with_context(|| format!("registry {host} asks for a login: give a credentials file"));
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        bail!("registry {host} asks for '{scheme}' authentication, which arbor does not speak");
    }
    let Some(realm) = param(challenge, "realm") else {
        let token = creds.token()?.with_context(|| {
            format!("registry {host} asks for a bearer token: give a token_file")
        })?;
        return Ok(format!("Bearer {token}"));
    };
    let mut url = Url::parse(realm).with_context(|| format!("token realm '{realm}'"))?;
    ensure!(
        url.scheme() == "https" || (url.scheme() == "http" && api.scheme() == "http"),
        "registry {host} names the token service {realm}: arbor sends a login there only over https"
    );
    for key in ["service", "scope"] {
        if let Some(v) = param(challenge, key) {
            url.query_pairs_mut().append_pair(key, v);
        }
    }
    let mut req = agent.get(url.as_str());
    if let Some(b) = creds.basic()? {
        req = req.header("Authorization", b);
    }
    let mut resp = req.call().with_context(|| {
        format!(
            "asking {} for a registry token",
            url.host_str().unwrap_or("")
        )
    })?;
    ensure!(
        resp.status() == 200,
        "the token service of {host} answered {}: is the login right?",
        resp.status()
    );
    let body = resp
        .body_mut()
        .with_config()
        .limit(64 << 10)
        .read_to_vec()?;
    let v: serde_json::Value = serde_json::from_slice(&body).context("the token answer")?;
    let token = v["token"]
        .as_str()
        .or(v["access_token"].as_str())
        .context("the token answer holds no token")?;
    Ok(format!("Bearer {token}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_read_as_registries_write_them() {
        let c = r#"Bearer realm="https://auth.example.org/token",service="registry.example.org",scope="repository:os:pull""#;
        assert_eq!(param(c, "realm"), Some("https://auth.example.org/token"));
        assert_eq!(param(c, "service"), Some("registry.example.org"));
        assert_eq!(param(c, "scope"), Some("repository:os:pull"));
        assert_eq!(param(c, "nothing"), None);
    }

    #[test]
    fn credentials_never_show_their_secrets() {
        let c = Credentials {
            username: Some("u".into()),
            password: Some("hunter2".into()),
            token_file: None,
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.basic().unwrap().unwrap(), "Basic dTpodW50ZXIy");
    }
}
