//! Named failpoints at the durable steps of every transaction, for tests that prove a
//! crash or a failure at that step loses nothing. `ARBOR_FAILPOINTS=NAME=ACTION`
//! (comma-separated for several) makes point NAME `error` (return an error there),
//! `panic`, or `abort` (the process dies on the spot, as a power cut leaves it, with
//! what was synced on disk). The sweep test (`integration/failpoints.rs`) crashes at
//! each point of [`ALL`] in turn and checks the invariants afterwards.
//!
//! Compiled in for debug builds (the tests) and with the `failpoints` feature; a
//! release build has none, and each point costs nothing.

use anyhow::{Result, bail};

/// True when failpoints are compiled in.
pub const ENABLED: bool = cfg!(any(debug_assertions, feature = "failpoints"));

/// Every failpoint, with the step it follows. The sweep test crashes at each; a unit
/// test checks that the source has a `hit` for each and no `hit` missing here.
pub const ALL: &[(&str, &str)] = &[
    (
        "store-objects-written",
        "a store transaction's objects are in objects/, synced; no ref moved",
    ),
    (
        "store-ref-moved",
        "a store transaction's refs are written (one at a time)",
    ),
    (
        "deploy-checked-out",
        "the new tree is checked out under a temporary name",
    ),
    ("deploy-etc-merged", "its /etc is merged and synced"),
    (
        "deploy-origin-written",
        "its origin file is written; the tree still has its temporary name",
    ),
    ("deploy-tree-in-place", "the tree has its final name"),
    (
        "deploy-kernel-installed",
        "the kernel and initramfs are in /boot; no entry names them yet",
    ),
    (
        "deploy-staged",
        "a staged deployment is recorded, to be finalized at shutdown",
    ),
    (
        "boot-entries-written",
        "the new boot entry set is written and synced; the loader still uses the old",
    ),
    ("boot-loader-switched", "the loader uses the new entry set"),
    (
        "grubenv-written",
        "GRUB's environment counts the new default; grub.cfg still names the old",
    ),
    (
        "deploy-unlisted-removing",
        "one deployment no entry lists is removed; others may remain",
    ),
    (
        "layer-committed",
        "the layered commit is in the store; no deployment uses it yet",
    ),
    (
        "live-upper-built",
        "apply-live's upper layer is built under the run folder; nothing is mounted",
    ),
    (
        "live-usr-mounted",
        "the live /usr shows the pending deployment; /etc is not switched yet",
    ),
    (
        "live-etc-switching",
        "one /etc entry is switched to the merged one; the others are as they were",
    ),
    (
        "prune-removing",
        "one unreachable object is deleted; others remain",
    ),
    (
        "delta-staged",
        "a delta's objects are staged; the transaction is not finished",
    ),
    (
        "fetch-chunk-stored",
        "one chunk of fetched objects is in the store; the ref has not moved",
    ),
    (
        "publish-objects-written",
        "a published commit's objects and manifest are written; no index names it",
    ),
    (
        "publish-index-written",
        "the channel index is written as a target; the TUF metadata does not sign it yet",
    ),
    (
        "publish-metadata-writing",
        "one signed metadata file is written; the timestamp, written last, may be old",
    ),
    (
        "ops-execute",
        "an operation took the lock and is about to run",
    ),
];

/// Fails as `ARBOR_FAILPOINTS` says for the point `name`, or does nothing.
pub fn hit(name: &str) -> Result<()> {
    if !ENABLED {
        return Ok(());
    }
    debug_assert!(
        ALL.iter().any(|(n, _)| *n == name),
        "failpoint {name} is not listed in failpoint::ALL"
    );
    let Ok(spec) = std::env::var("ARBOR_FAILPOINTS") else {
        return Ok(());
    };
    for item in spec.split(',') {
        match item.split_once('=') {
            Some((n, "panic")) if n == name => panic!("failpoint {name}"),
            Some((n, "error")) if n == name => bail!("failpoint {name}"),
            Some((n, "abort")) if n == name => {
                // No core file: the point is the disk as a crash leaves it.
                let none = rustix::process::Rlimit {
                    current: Some(0),
                    maximum: None,
                };
                let _ = rustix::process::setrlimit(rustix::process::Resource::Core, none);
                std::process::abort()
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `hit("…")` in the source names a listed point, and every listed point has
    /// a `hit` somewhere: the sweep reaches only what is listed.
    #[test]
    fn the_list_and_the_source_agree() {
        let mut used = std::collections::BTreeSet::new();
        // Every crate of the workspace, and the CLI's own source.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut stack = vec![root.join("src"), root.join("crates")];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("failpoint.rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    for piece in text.split("failpoint::hit(\"").skip(1) {
                        used.insert(piece.split('"').next().unwrap().to_string());
                    }
                }
            }
        }
        let listed: std::collections::BTreeSet<String> =
            ALL.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(used, listed, "failpoint::ALL and the hit() calls differ");
    }

    #[test]
    fn unset_or_other_points_do_nothing() {
        // The variable is process-wide: only points no other test arms are used here.
        assert!(hit("store-ref-moved").is_ok());
    }
}
