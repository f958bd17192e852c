//! The record of what apply-live did (`<run>/arbor/live/record.json`): read by status
//! (which commit `/usr` shows) and written by apply-live, so status need not know how
//! apply-live works.

use std::os::fd::AsFd;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::Sysroot;
use arbor_core::fsutil;

/// The folder of the live state: `<run>/arbor/live`.
pub fn live_dir(sysroot: &Sysroot) -> PathBuf {
    sysroot.run_dir().join("arbor/live")
}

/// The record of the live state (`<run>/arbor/live/record.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LiveRecord {
    /// The running deployment (`<commit>.<serial>`) it was applied on.
    pub booted: String,
    /// The commit `/usr` shows.
    pub commit: arbor_store::ObjectId,
    /// The overlay's upper layer.
    pub upper: PathBuf,
}

impl LiveRecord {
    fn path(sysroot: &Sysroot) -> PathBuf {
        live_dir(sysroot).join("record.json")
    }

    /// The record, when there is one.
    pub fn read(sysroot: &Sysroot) -> Result<Option<LiveRecord>> {
        match std::fs::read(Self::path(sysroot)) {
            Ok(b) => Ok(Some(
                serde_json::from_slice(&b).context("reading the live record")?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes it, atomically.
    pub fn write(&self, sysroot: &Sysroot) -> Result<()> {
        let dir = fsutil::open_dir(&live_dir(sysroot))?;
        fsutil::atomic_write(
            dir.as_fd(),
            "record.json",
            &serde_json::to_vec(self)?,
            0o644,
        )?;
        Ok(())
    }
}
