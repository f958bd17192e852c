//! Root without root: most end-to-end tests need root only for what a user namespace
//! gives any user, file owners (the subordinate ids of /etc/subuid mapped) and mounts
//! of overlayfs, tmpfs and FUSE in a mount namespace of their own. A test that starts
//! with `as_root!()` runs as it is when the tests run as root (CI), and otherwise runs
//! again, alone, in such a namespace (`unshare --map-root-user --map-auto --mount`),
//! where the parent waits for it and fails when it fails.
//!
//! The corpus is root's: in the namespace its files belong to no mapped id, so they
//! cannot be hardlinked and its private files (/etc/shadow) cannot be read. Such a
//! test reads this user's copy of it instead (scripts/user-corpus.sh, made once per
//! corpus): the same owners, modes and links, with what this user cannot read left
//! empty.
//!
//! What a user namespace cannot give stays with real root (`require_root!()`): loop
//! devices and partitions, `trusted.*` xattrs, device nodes, the contents of the
//! corpus's private files.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Set in the re-executed test, so it cannot try again.
const INSIDE: &str = "ARBOR_TEST_USERNS";

/// True in a test that runs in its user namespace.
fn inside() -> bool {
    std::env::var_os(INSIDE).is_some()
}

/// Where this user's copy of the corpus at `corpus` is kept (beside it, so that the
/// scratch folders of the tests are on its filesystem).
fn corpus_copy(corpus: &Path) -> PathBuf {
    let uid = rustix::process::getuid().as_raw();
    let mut name = corpus.as_os_str().to_owned();
    name.push(format!("-user-{uid}"));
    PathBuf::from(name)
}

/// Makes or refreshes this user's copy of the corpus and returns where it is; the
/// corpus itself when there is none (a test that needs it says so).
fn prepare_corpus_copy() -> PathBuf {
    let corpus = super::corpus_base();
    if !corpus.join("READY").exists() {
        return corpus;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/user-corpus.sh");
    let out = Command::new(script)
        .arg(&corpus)
        .arg(corpus_copy(&corpus))
        .output()
        .expect("running scripts/user-corpus.sh");
    assert!(
        out.status.success(),
        "copying the corpus for this user failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    corpus_copy(&corpus)
}

/// The test's name for libtest's filter, from the path of an item defined in it
/// (`deploy::deploys_a_tree::here` → `deploys_a_tree`).
fn test_name(item_path: &str) -> &str {
    let path = item_path.strip_suffix("::here").unwrap_or(item_path);
    path.split_once("::").map_or(path, |(_crate, rest)| rest)
}

/// Called first by a test that needs root only for owners and mounts. Returns false
/// when the test should go on here (it runs as root: as root, or already in its
/// namespace); true when it ran in a user namespace instead and passed (a failure
/// there fails this test).
pub fn enter(item_path: &str) -> bool {
    if super::is_root() {
        return false;
    }
    assert!(
        !inside(),
        "in a user namespace but not root in it: the id mapping failed"
    );
    let corpus = prepare_corpus_copy();
    let name = test_name(item_path);
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new("unshare")
        .args(["--map-root-user", "--map-auto", "--mount", "--"])
        .arg(&exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .env("ARBOR_CORPUS", corpus)
        .output()
        .expect("running unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{name} failed in a user namespace ({}); it needs root, or a range of \
         subordinate ids for this user in /etc/subuid and /etc/subgid (usermod \
         --add-subuids 100000-165535 --add-subgids 100000-165535 $USER) and newuidmap \
         (package uidmap).\n--- its output ---\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // A filter that matched nothing would pass having tested nothing.
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "{name} did not run in its user namespace"
    );
    true
}
