//! Treefiles: the TOML description of an image (`docs/treefile.md`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// An image described as a package set.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Treefile {
    /// What the image is called (commit subject, logs).
    pub name: String,
    /// The image's version, recorded as commit metadata and shown by `status`.
    pub version: Option<String>,
    /// Debian suite or codename (`bookworm`).
    pub suite: String,
    /// Archive components.
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    /// Mirror URL; by default the one configured in `/etc/apt`.
    pub mirror: Option<String>,
    /// Debian architecture; by default the host's.
    pub architecture: Option<String>,
    /// The mmdebstrap variant the package set starts from.
    #[serde(default = "default_variant")]
    pub variant: String,
    /// Packages to install (with their dependencies).
    #[serde(default)]
    pub packages: Vec<String>,
    /// Packages to purge after the install (the compose fails if another needs them).
    #[serde(default)]
    pub exclude_packages: Vec<String>,
    /// systemd units to enable.
    #[serde(default)]
    pub units: Vec<String>,
    /// Shell scripts run in the built root (chroot), in order, before it is shaped.
    #[serde(default)]
    pub postprocess: Vec<String>,
    /// Files of the default `/etc`: path below `/etc` → content.
    #[serde(default)]
    pub etc: BTreeMap<String, String>,
    /// The build's SOURCE_DATE_EPOCH when the environment does not set one.
    pub source_date_epoch: Option<i64>,
}

fn default_components() -> Vec<String> {
    vec!["main".into()]
}

fn default_variant() -> String {
    "minbase".into()
}

pub use arbor_store::dpkg::valid_package;

fn valid_word(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.@:".contains(&c))
}

impl Treefile {
    /// Reads and checks a treefile; errors name the file and the field.
    pub fn load(path: &Path) -> Result<Treefile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading treefile {}", path.display()))?;
        Treefile::parse(&text).with_context(|| format!("treefile {}", path.display()))
    }

    /// Parses and checks treefile text.
    pub fn parse(text: &str) -> Result<Treefile> {
        let t: Treefile = toml::from_str(text)?;
        t.check()?;
        Ok(t)
    }

    fn check(&self) -> Result<()> {
        if !valid_word(&self.name) {
            bail!(
                "field 'name': '{}' must be a non-empty word (letters, digits, - _ . @ :)",
                self.name
            );
        }
        if !valid_word(&self.suite) {
            bail!("field 'suite': '{}' is not a suite name", self.suite);
        }
        for (field, list) in [
            ("packages", &self.packages),
            ("exclude-packages", &self.exclude_packages),
        ] {
            if let Some(p) = list.iter().find(|p| !valid_package(p)) {
                bail!("field '{field}': '{p}' is not a Debian package name");
            }
        }
        if let Some(c) = self.components.iter().find(|c| !valid_word(c)) {
            bail!("field 'components': '{c}' is not a component name");
        }
        if let Some(a) = &self.architecture
            && !valid_word(a)
        {
            bail!("field 'architecture': '{a}' is not an architecture");
        }
        if !valid_word(&self.variant) {
            bail!(
                "field 'variant': '{}' is not an mmdebstrap variant",
                self.variant
            );
        }
        if let Some(u) = self
            .units
            .iter()
            .find(|u| !valid_word(u) || !u.contains('.'))
        {
            bail!("field 'units': '{u}' is not a unit name (such as ssh.service)");
        }
        if let Some(m) = &self.mirror
            && !(m.starts_with("http://") || m.starts_with("https://") || m.starts_with("file:/"))
        {
            bail!("field 'mirror': '{m}' is not an http(s):// or file:/ URL");
        }
        for path in self.etc.keys() {
            let bad = path.is_empty()
                || path.starts_with('/')
                || path
                    .split('/')
                    .any(|c| c.is_empty() || c == "." || c == "..");
            if bad {
                bail!("field 'etc': '{path}' must be a relative path below /etc without '..'");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_treefile_parses() {
        let t = Treefile::parse(
            r#"
name = "server"
version = "12.1"
suite = "bookworm"
components = ["main", "contrib"]
mirror = "http://deb.debian.org/debian"
architecture = "amd64"
packages = ["systemd-sysv", "linux-image-amd64", "libstdc++6"]
exclude-packages = ["nano"]
units = ["ssh.service"]
postprocess = ["echo hi > /etc/motd"]
source-date-epoch = 1700000000

[etc]
"hostname" = "server\n"
"ssh/sshd_config.d/arbor.conf" = "PermitRootLogin no\n"
"#,
        )
        .unwrap();
        assert_eq!(t.packages.len(), 3);
        assert_eq!(t.etc["hostname"], "server\n");
        let min = Treefile::parse("name = \"m\"\nsuite = \"bookworm\"\n").unwrap();
        assert_eq!(min.components, ["main"]);
        assert_eq!(min.variant, "minbase");
    }

    #[test]
    fn the_reference_images_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../containerfiles");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "toml") {
                Treefile::load(&e.path()).unwrap();
                n += 1;
            }
        }
        assert!(n >= 2);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                "name = \"m\"\nsuite = \"bookworm\"\npakages = [\"x\"]\n",
                "pakages",
            ),
            ("name = \"m\"\n", "suite"),
            (
                "name = \"m\"\nsuite = \"bookworm\"\npackages = \"hello\"\n",
                "packages",
            ),
            (
                "name = \"m\"\nsuite = \"bookworm\"\npackages = [\"Hello World\"]\n",
                "field 'packages'",
            ),
            (
                "name = \"m\"\nsuite = \"bookworm\"\n[etc]\n\"../shadow\" = \"x\"\n",
                "field 'etc'",
            ),
            (
                "name = \"m\"\nsuite = \"bookworm\"\nunits = [\"ssh\"]\n",
                "field 'units'",
            ),
            (
                "name = \"m\"\nsuite = \"bookworm\"\nmirror = \"ftp://x\"\n",
                "field 'mirror'",
            ),
        ];
        for (text, want) in cases {
            let e = format!("{:#}", Treefile::parse(text).unwrap_err());
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
