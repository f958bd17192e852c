//! The record beside a `/usr` overlay's layers (`overlay.json`): its label, when it
//! was made, and the commit `usroverlay --commit` made of it. Here rather than in
//! `live` because the sysroot reads it too: `status` shows a hotfix's name and
//! prepare-root drops a committed hotfix at boot.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use arbor_core::fsutil;
use arbor_core::object::ObjectId;

/// The file in an overlay's folder that describes it.
pub const INFO_FILE: &str = "overlay.json";

/// What an overlay is for, kept beside its layers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayInfo {
    /// The administrator's label (`--name`).
    #[serde(default)]
    pub name: Option<String>,
    /// Unix time it was made.
    #[serde(default)]
    pub created: i64,
    /// The commit `--commit` made of it; a committed hotfix is dropped at the next boot.
    #[serde(default)]
    pub committed: Option<ObjectId>,
}

impl OverlayInfo {
    /// Reads `dir/overlay.json`; an overlay made before labels existed has none.
    pub fn read(dir: &Path) -> Result<OverlayInfo> {
        match std::fs::read(dir.join(INFO_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", dir.join(INFO_FILE).display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(OverlayInfo::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", dir.join(INFO_FILE).display())),
        }
    }

    /// Writes it to `dir/overlay.json` (tmp + fsync + rename).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self)?;
        fsutil::write_file_atomic(&dir.join(INFO_FILE), &bytes, 0o644)
            .with_context(|| format!("writing {}", dir.join(INFO_FILE).display()))
    }
}
