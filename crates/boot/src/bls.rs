//! Boot Loader Specification entries (`loader/entries/*.conf`): reader and writer.
//!
//! One entry per deployment. The entry is the source of truth for which deployments
//! exist and in which order: `version` orders them (highest first, as systemd-boot
//! sorts), and `options` carries `arbor=/arbor/deploy/<os>/deploy/<commit>.<serial>`.

use anyhow::{Result, bail};

/// One boot entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlsEntry {
    /// Menu title.
    pub title: String,
    /// Ordering key: the highest version is the default entry.
    pub version: u32,
    /// Groups our entries together in a menu sorted by sort-key.
    pub sort_key: String,
    /// Kernel, relative to the boot partition (`/arbor/<os>-<bootcsum>/vmlinuz-<kver>`).
    pub linux: String,
    /// Initramfs, relative to the boot partition.
    pub initrd: Option<String>,
    /// Kernel command line, `arbor=` included.
    pub options: Vec<String>,
}

impl BlsEntry {
    /// The entry file's text.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "title {}\nversion {}\nsort-key {}\nlinux {}\n",
            self.title, self.version, self.sort_key, self.linux
        );
        if let Some(i) = &self.initrd {
            s.push_str(&format!("initrd {i}\n"));
        }
        s.push_str(&format!("options {}\n", self.options.join(" ")));
        s
    }

    /// Parses an entry file; unknown keys are ignored, as loaders do.
    pub fn parse(text: &str) -> Result<Self> {
        let mut e = BlsEntry {
            title: String::new(),
            version: 0,
            sort_key: String::new(),
            linux: String::new(),
            initrd: None,
            options: Vec::new(),
        };
        let mut have_version = false;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let value = value.trim();
            match key {
                "title" => e.title = value.to_string(),
                "version" => {
                    e.version = value
                        .parse()
                        .map_err(|_| anyhow::anyhow!("version '{value}' is not a number"))?;
                    have_version = true;
                }
                "sort-key" => e.sort_key = value.to_string(),
                "linux" => e.linux = value.to_string(),
                "initrd" => e.initrd = Some(value.to_string()),
                "options" => e
                    .options
                    .extend(value.split_whitespace().map(str::to_string)),
                _ => {}
            }
        }
        if !have_version || e.linux.is_empty() {
            bail!("entry lacks 'version' or 'linux'");
        }
        Ok(e)
    }

    /// The `arbor=` value: the deployment's path below the sysroot.
    pub fn arbor_path(&self) -> Option<&str> {
        self.options.iter().find_map(|o| o.strip_prefix("arbor="))
    }

    /// The kernel arguments other than `arbor=`.
    pub fn user_kargs(&self) -> Vec<String> {
        self.options
            .iter()
            .filter(|o| !o.starts_with("arbor="))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_lookups() {
        let e = BlsEntry {
            title: "Debian (arbor 12.0)".into(),
            version: 3,
            sort_key: "arbor-debian".into(),
            linux: "/arbor/debian-ab/vmlinuz-6.1.0".into(),
            initrd: Some("/arbor/debian-ab/initramfs-6.1.0.img".into()),
            options: vec![
                "quiet".into(),
                "arbor=/arbor/deploy/debian/deploy/abc.0".into(),
            ],
        };
        let back = BlsEntry::parse(&e.to_text()).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.arbor_path(), Some("/arbor/deploy/debian/deploy/abc.0"));
        assert_eq!(back.user_kargs(), vec!["quiet".to_string()]);
        assert!(BlsEntry::parse("title x\n").is_err());
    }
}
