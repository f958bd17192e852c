//! `arbor/bootloader.toml`: which boot loader reads a sysroot's entries, and where its
//! EFI system partition is. Written by `install to-disk`; a sysroot without it keeps
//! the entries in its own `boot/` (the `loader` symlink swap), as folder sysroots do.
//!
//! ```toml
//! loader = "systemd-boot"   # "bls" (default), "systemd-boot" or "grub"
//! esp = "/boot/efi"         # where the running system mounts the ESP
//! ```

use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The file, below the sysroot.
pub const PATH: &str = "arbor/bootloader.toml";

/// Which loader reads the boot entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Loader {
    /// BLS entries in the sysroot's `boot/loader`, switched by a symlink: any loader
    /// that reads BLS from an ext4 `/boot`, and `arbor grub-config` for update-grub.
    #[default]
    Bls,
    /// systemd-boot: entries and kernels on the FAT ESP (see `boot::esp`).
    SystemdBoot,
    /// GRUB (EFI) reading `boot/grub/grub.cfg` on the root file system, which arbor
    /// writes with every change of the entries.
    Grub,
}

/// The sysroot's boot loader settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    /// Which loader reads the entries.
    #[serde(default)]
    pub loader: Loader,
    /// The ESP's mount point on the running system (below a folder sysroot, the same
    /// path inside it).
    #[serde(default = "default_esp")]
    pub esp: String,
}

fn default_esp() -> String {
    "/boot/efi".into()
}

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            loader: Loader::Bls,
            esp: default_esp(),
        }
    }
}

impl BootConfig {
    /// Reads the sysroot's settings (the default when the file is absent).
    pub fn read(sysroot: &Path) -> Result<BootConfig> {
        let path = sysroot.join(PATH);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let c: BootConfig =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if !c.esp.starts_with('/') || c.esp.split('/').any(|p| p == "..") {
            bail!(
                "{}: esp must be an absolute path without '..'",
                path.display()
            );
        }
        Ok(c)
    }

    /// Writes the settings into the sysroot, atomically.
    pub fn write(&self, sysroot: &Path) -> Result<()> {
        let dir = arbor_core::fsutil::open_dir(&sysroot.join("arbor"))?;
        let text = format!(
            "# Written by arbor install: which loader reads the boot entries.\n{}",
            toml::to_string(self)?
        );
        arbor_core::fsutil::atomic_write(dir.as_fd(), "bootloader.toml", text.as_bytes(), 0o644)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_defaults() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("arbor")).unwrap();
        assert_eq!(BootConfig::read(t.path()).unwrap(), BootConfig::default());
        let c = BootConfig {
            loader: Loader::SystemdBoot,
            esp: "/efi".into(),
        };
        c.write(t.path()).unwrap();
        assert_eq!(BootConfig::read(t.path()).unwrap(), c);
        std::fs::write(t.path().join(PATH), "loader = \"lilo\"\n").unwrap();
        assert!(BootConfig::read(t.path()).is_err());
        std::fs::write(t.path().join(PATH), "esp = \"../x\"\n").unwrap();
        assert!(BootConfig::read(t.path()).is_err());
    }
}
