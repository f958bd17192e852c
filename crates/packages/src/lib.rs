//! Packages: composing a tree from a package set (treefile), layering packages on a
//! deployment, and the package database of commits (DESIGN §5).
//!
//! Debian's own tools do the package work: mmdebstrap builds a root, and apt and dpkg
//! install into an overlay of the base checkout. arbor shapes the result (see
//! the compose crate) and commits it. The package lists of commits themselves are the
//! store's ([`arbor_store::dpkg`]).

pub use arbor_store::dpkg;
pub use arbor_store::dpkg::{
    METADATA_KEY, add_metadata, packages_of, read_status, remember, tree_packages,
};

pub mod layer;
mod overlay_apply;
pub mod treefile;

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The lines of a tool's log that say what went wrong, else its last lines.
pub fn log_excerpt(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let telling: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| {
            l.starts_with("E: ")
                || l.contains("dpkg: error")
                || l.contains("returned error exit status")
                || l.contains("rror processing")
                || l.starts_with("Failed to")
                || l.contains("has no installation candidate")
                || l.contains("Unable to locate package")
                || l.starts_with("sh: ")
        })
        .collect();
    let picked: Vec<&str> = if telling.is_empty() {
        lines[lines.len().saturating_sub(12)..].to_vec()
    } else {
        telling.into_iter().take(12).collect()
    };
    picked
        .iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs a command with its output in `log`; on failure, says what failed with the
/// telling lines of the log.
pub fn run_logged(mut cmd: Command, what: &str, log: &Path) -> Result<()> {
    let file = std::fs::File::create(log)?;
    cmd.stdout(file.try_clone()?).stderr(file);
    let status = cmd
        .status()
        .with_context(|| format!("{what}: cannot run {:?}", cmd.get_program()))?;
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        bail!("{what} failed ({status}):\n{}", log_excerpt(&text));
    }
    Ok(())
}
