//! The origin file beside each deployment (`<commit>.<serial>.origin`): what the
//! deployment tracks, and whether it is pinned. An ini file as OSTree writes it:
//! ```text
//! [origin]
//! refspec=debian/bookworm/x86_64
//! override-commit=<commit id>     (only when an older commit of the ref was deployed)
//! image-digest=sha256:<hex>       (a container image's manifest digest, `arbor switch`)
//!
//! [arbor]
//! pinned=true
//! var=var.1                       (its own /var after `arbor reset --level var|all`)
//!
//! [packages]                      (layered on the base: `arbor install`)
//! requested=hello;cowsay
//! requested-local=<blake3 of the .deb>:<package name>;…
//!
//! [overrides]                     (`arbor override remove|replace`)
//! remove=nano;…
//! replace-local=<blake3 of the .deb>:<package name>;…
//! ```

use anyhow::{Context, Result, bail};
use arbor_core::object::ObjectId;
use serde::{Deserialize, Serialize};

/// What a deployment was made from and how it is kept.
#[derive(
    Clone,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    zvariant::Type,
    zvariant::Value,
    zvariant::OwnedValue,
)]
#[zvariant(signature = "dict")]
pub struct Origin {
    /// The ref it tracks (upgrades follow it), or the commit id it was deployed from.
    pub refspec: String,
    /// Set when an older commit of the ref was deployed (`REF^`), as rpm-ostree's
    /// `override-commit`: the deployment holds this commit, not the ref's tip.
    pub override_commit: Option<ObjectId>,
    /// For a deployment of a container image from a registry (`refspec` is then
    /// `docker://HOST/NAME:TAG`): the manifest digest deployed, which `upgrade`
    /// compares with the tag's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// Pinned deployments are never removed by deploy or cleanup.
    pub pinned: bool,
    /// Packages layered on the base and base packages overridden.
    #[serde(default)]
    pub layers: Layers,
    /// The folder of the stateroot bound on `/var` at boot, when not the shared
    /// `var` ([`valid_var_name`]): a reset to a fresh `/var` gives the new deployment
    /// its own, and deployments made from it inherit it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub var: Option<String>,
}

/// The stateroot's shared `/var` folder name.
pub const SHARED_VAR: &str = "var";

/// `var`, or `var.` followed by letters, digits, `-` or `_`: a folder of the
/// stateroot, never a path.
pub fn valid_var_name(name: &str) -> bool {
    name == SHARED_VAR
        || name.strip_prefix("var.").is_some_and(|rest| {
            !rest.is_empty()
                && rest.len() <= 64
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl Origin {
    /// The stateroot folder bound on `/var` for this deployment.
    pub fn var_dir(&self) -> &str {
        self.var.as_deref().unwrap_or(SHARED_VAR)
    }
}

/// A local `.deb` kept in the sysroot (`arbor/debs/<id>.deb`) for re-layering.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    zvariant::Type,
    zvariant::Value,
    zvariant::OwnedValue,
)]
#[zvariant(signature = "dict")]
pub struct LocalDeb {
    /// BLAKE3 of the file, hex: its name in `arbor/debs/`.
    pub id: String,
    /// The package it holds.
    pub name: String,
}

/// What a deployment adds to, or takes from, its base commit; re-applied on each new
/// base (upgrade, deploy).
#[derive(
    Clone,
    Debug,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    zvariant::Type,
    zvariant::Value,
    zvariant::OwnedValue,
)]
#[zvariant(signature = "dict")]
pub struct Layers {
    /// Packages from the configured archive, by name.
    pub packages: Vec<String>,
    /// Local packages.
    pub local: Vec<LocalDeb>,
    /// Base packages removed.
    pub remove: Vec<String>,
    /// Base packages replaced by local ones.
    pub replace: Vec<LocalDeb>,
}

impl Layers {
    /// True when the deployment is its base commit as it is.
    pub fn is_empty(&self) -> bool {
        self.packages.is_empty()
            && self.local.is_empty()
            && self.remove.is_empty()
            && self.replace.is_empty()
    }

    /// Every package the layer installs, by name.
    pub fn installed_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.packages.clone();
        v.extend(self.local.iter().map(|d| d.name.clone()));
        v.extend(self.replace.iter().map(|d| d.name.clone()));
        v
    }
}

fn join_debs(debs: &[LocalDeb]) -> String {
    debs.iter()
        .map(|d| format!("{}:{}", d.id, d.name))
        .collect::<Vec<_>>()
        .join(";")
}

fn split_list(v: &str) -> Vec<String> {
    v.split(';')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

fn split_debs(v: &str) -> Result<Vec<LocalDeb>> {
    split_list(v)
        .into_iter()
        .map(|x| match x.split_once(':') {
            // The id names a file and the name goes into a command line: both are
            // checked, whoever wrote the origin.
            Some((id, name))
                if id.len() == 64
                    && id.bytes().all(|b| b.is_ascii_hexdigit())
                    && arbor_core::names::valid_package(name) =>
            {
                Ok(LocalDeb {
                    id: id.into(),
                    name: name.into(),
                })
            }
            _ => bail!("origin: local package '{x}' is not <blake3 hex>:<package name>"),
        })
        .collect()
}

impl Origin {
    /// The file's text.
    pub fn to_text(&self) -> String {
        let mut s = format!("[origin]\nrefspec={}\n", self.refspec);
        if let Some(c) = &self.override_commit {
            s.push_str(&format!("override-commit={c}\n"));
        }
        if let Some(d) = &self.image_digest {
            s.push_str(&format!("image-digest={d}\n"));
        }
        if self.pinned || self.var.is_some() {
            s.push_str("\n[arbor]\n");
            if self.pinned {
                s.push_str("pinned=true\n");
            }
            if let Some(v) = &self.var {
                s.push_str(&format!("var={v}\n"));
            }
        }
        let l = &self.layers;
        if !l.packages.is_empty() || !l.local.is_empty() {
            s.push_str("\n[packages]\n");
            if !l.packages.is_empty() {
                s.push_str(&format!("requested={}\n", l.packages.join(";")));
            }
            if !l.local.is_empty() {
                s.push_str(&format!("requested-local={}\n", join_debs(&l.local)));
            }
        }
        if !l.remove.is_empty() || !l.replace.is_empty() {
            s.push_str("\n[overrides]\n");
            if !l.remove.is_empty() {
                s.push_str(&format!("remove={}\n", l.remove.join(";")));
            }
            if !l.replace.is_empty() {
                s.push_str(&format!("replace-local={}\n", join_debs(&l.replace)));
            }
        }
        s
    }

    /// Parses an origin file.
    pub fn parse(text: &str) -> Result<Self> {
        let mut o = Origin::default();
        let mut section = "";
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s;
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                bail!("origin line '{line}' is not key=value")
            };
            match (section, k.trim()) {
                ("origin", "refspec") => o.refspec = v.trim().to_string(),
                ("origin", "override-commit") => {
                    let id = v.trim().parse().with_context(|| {
                        format!("origin override-commit '{}' is not a commit id", v.trim())
                    })?;
                    o.override_commit = Some(id);
                }
                ("origin", "image-digest") => {
                    let d = v.trim();
                    let hex = d.strip_prefix("sha256:").unwrap_or_default();
                    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                        bail!("origin image-digest '{d}' is not sha256:<64 hex digits>");
                    }
                    o.image_digest = Some(d.to_string());
                }
                ("arbor", "pinned") => o.pinned = v.trim() == "true",
                ("arbor", "var") => {
                    let v = v.trim();
                    if !valid_var_name(v) {
                        bail!("origin var '{v}' is not a /var folder name (var or var.NAME)");
                    }
                    o.var = Some(v.to_string()).filter(|v| v != SHARED_VAR);
                }
                ("packages", "requested") => o.layers.packages = split_list(v),
                ("packages", "requested-local") => o.layers.local = split_debs(v)?,
                ("overrides", "remove") => o.layers.remove = split_list(v),
                ("overrides", "replace-local") => o.layers.replace = split_debs(v)?,
                _ => {}
            }
        }
        if o.refspec.is_empty() {
            bail!("origin has no refspec");
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for pinned in [false, true] {
            let deb = LocalDeb {
                id: "0f".repeat(32),
                name: "hello".into(),
            };
            let o = Origin {
                refspec: "debian/a".into(),
                override_commit: pinned.then_some(ObjectId([0xab; 32])),
                pinned,
                layers: Layers {
                    packages: vec!["cowsay".into(), "sl".into()],
                    local: vec![deb.clone()],
                    remove: vec!["nano".into()],
                    replace: vec![deb],
                },
                var: pinned.then(|| "var.2".to_string()),
                image_digest: pinned.then(|| format!("sha256:{}", "ab".repeat(32))),
            };
            assert_eq!(Origin::parse(&o.to_text()).unwrap(), o);
        }
        assert!(Origin::parse("[origin]\n").is_err());
        let bad_digest = "[origin]\nrefspec=docker://h/n:1\nimage-digest=sha256:../x\n";
        assert!(Origin::parse(bad_digest).is_err());
        let traversal = "[origin]\nrefspec=a\n[packages]\nrequested-local=../../etc/passwd:x\n";
        assert!(Origin::parse(traversal).is_err());
        for bad in ["../x", "var/x", "var.", "var..", "/var", "var.a/b"] {
            assert!(!valid_var_name(bad), "{bad}");
            let text = format!("[origin]\nrefspec=a\n[arbor]\nvar={bad}\n");
            assert!(Origin::parse(&text).is_err(), "{bad}");
        }
    }
}
