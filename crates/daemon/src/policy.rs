//! The automatic-update policy over D-Bus: what a settings panel shows and changes.
//! It is the file `arbor auto-update` reads (`/etc/arbor/arbor.toml`, or
//! `$ARBOR_CONFIG`; docs/remote.md), so the panel and the timer never disagree.

use std::collections::HashMap;

use zbus::zvariant::OwnedValue;

use super::error::DaemonError;
use super::options::Options;
use arbor_ops::update::policy::Policy;

/// The policy's names whose values are booleans; the others are strings.
const FLAGS: [&str; 4] = [
    "auto_download",
    "auto_install",
    "critical_install",
    "notify_available",
];
/// The policy's names whose values are strings.
const STRINGS: [&str; 3] = ["check_interval", "preferred_time", "channel"];

/// The policy (on the bus `a{sv}` under the file's names; defaults where it says
/// nothing).
pub(crate) fn read() -> zbus::fdo::Result<Policy> {
    Policy::load(None).map_err(|e| zbus::fdo::Error::Failed(format!("{e:#}")))
}

/// Applies `changes` (any of the policy's names) and saves the file. A wrong name,
/// type or value refuses the whole call with `InvalidArgs` naming it, and the file
/// stays as it was.
pub(crate) fn set(changes: HashMap<String, OwnedValue>) -> Result<(), DaemonError> {
    let known: Vec<&str> = FLAGS.iter().chain(&STRINGS).copied().collect();
    let o = Options::parse(changes, &known)?;
    let mut table = toml::Table::new();
    for k in FLAGS {
        if let Some(b) = o.bool(k)? {
            table.insert(k.to_string(), b.into());
        }
    }
    for k in STRINGS {
        if let Some(s) = o.string(k)? {
            table.insert(k.to_string(), s.into());
        }
    }
    let current = Policy::load(None).map_err(DaemonError::failed)?;
    let new = current
        .with_changes(table)
        .map_err(|e| DaemonError::InvalidArgs(format!("{e:#}")))?;
    new.save(None).map_err(DaemonError::failed)
}
