//! `/etc/shadow` and `/etc/gshadow` keep the modes the image gives them (Debian's
//! 0640, root:shadow; 0000 as other distributions ship it) through every path a file
//! takes: commit, compose, deploy, the /etc merge, rollback and delta apply (OCI
//! import: `integration/image.rs`). rpm-ostree once made them world-readable
//! (CVE-2024-2905); this test would catch arbor doing the same.

#[macro_use]
mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;

/// (path below the root, mode, group) of each secret file in the test trees.
const SECRETS: &[(&str, u32, u32)] = &[
    ("etc/shadow", 0o640, 42),
    ("etc/gshadow", 0o000, 0),
    ("etc/shadow-", 0o600, 0),
];

fn plant_secrets(root: &Path, version: &str) {
    for (rel, mode, gid) in SECRETS {
        let p = root.join(rel);
        std::fs::write(&p, format!("root:*:{version}:0:99999:7:::\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
        std::os::unix::fs::chown(&p, Some(0), Some(*gid)).unwrap();
    }
}

/// Every secret under `root/prefix` has its mode and group.
fn assert_kept(root: &Path, prefix: &str, when: &str) {
    for (rel, mode, gid) in SECRETS {
        let p = root.join(prefix).join(rel.trim_start_matches("etc/"));
        let m = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{when}: {p:?}: {e}"));
        assert_eq!(
            (m.mode() & 0o7777, m.gid()),
            (*mode, *gid),
            "{when}: {p:?} has mode {:o}",
            m.mode() & 0o7777
        );
    }
}

/// The mode the store records for each secret, as `arbor ls` reads it.
fn assert_stored(args: &[&str], dir: &str, when: &str) {
    for (rel, mode, _) in SECRETS {
        let name = rel.trim_start_matches("etc/");
        let mut a = args.to_vec();
        let path = format!("{dir}/{name}");
        a.extend(["ls", "--json", "", &path]);
        let rev = a.len() - 2;
        a[rev] = "os";
        let v: serde_json::Value = serde_json::from_str(&arbor_ok(&a)).unwrap();
        let m = v[0]["mode"].as_u64().unwrap() as u32;
        assert_eq!(
            m & 0o7777,
            *mode,
            "{when}: {path} stored as {:o}",
            m & 0o7777
        );
    }
}

#[test]
fn root_shadow_files_keep_their_modes_through_commit_deploy_merge_rollback_and_delta() {
    as_root!();
    let t = scratch();
    let sr = sysroot(t.path());
    let one = rootfs(t.path(), "1");
    plant_secrets(&one, "1");
    // compose moves /etc to /usr/etc; the store keeps the modes.
    compose(&sr, &one, "os", "1");
    assert_stored(&["--sysroot", &sr], "/usr/etc", "compose");
    // A store holding only version 1, for the delta below.
    let other = t.path().join("other");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(Path::new(&sr).join("arbor/repo"))
        .arg(&other)
        .status()
        .unwrap();
    assert!(copied.success());
    arbor_ok(&["--sysroot", &sr, "deploy", "os"]);
    let d = deployment_dir(&sr, 0);
    assert_kept(&d, "usr/etc", "deploy, /usr/etc");
    assert_kept(&d, "etc", "deploy, /etc");
    // A local edit (a password change) keeps the mode; the merge carries it over.
    let shadow = d.join("etc/shadow");
    let edited = "root:$y$edited:1:0:99999:7:::\n";
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&shadow)
        .unwrap();
    std::io::Write::write_all(&mut f, edited.as_bytes()).unwrap();
    drop(f);
    let two = rootfs(&t.path().join("2"), "2");
    plant_secrets(&two, "2");
    compose(&sr, &two, "os", "2");
    arbor_ok(&["--sysroot", &sr, "deploy", "os"]);
    let d2 = deployment_dir(&sr, 0);
    assert_kept(&d2, "etc", "merge");
    assert_kept(&d2, "usr/etc", "deploy 2, /usr/etc");
    assert_eq!(
        std::fs::read_to_string(d2.join("etc/shadow")).unwrap(),
        edited
    );
    arbor_ok(&["--sysroot", &sr, "rollback"]);
    assert_kept(&deployment_dir(&sr, 0), "etc", "rollback");
    // A delta from 1 to 2 applied to the store that has only 1 gives the same modes.
    let log: serde_json::Value =
        serde_json::from_str(&arbor_ok(&["--sysroot", &sr, "log", "--json", "os"])).unwrap();
    let (new, old) = (
        log[0]["id"].as_str().unwrap().to_string(),
        log[1]["id"].as_str().unwrap().to_string(),
    );
    let delta = t.path().join("1-2.delta");
    arbor_ok(&[
        "--sysroot",
        &sr,
        "delta",
        "create",
        &old,
        &new,
        "-o",
        s(&delta),
    ]);
    let o = s(&other).to_string();
    arbor_ok(&["--repo", &o, "delta", "apply", s(&delta), "-b", "os"]);
    assert_stored(&["--repo", &o], "/usr/etc", "delta apply");
    let co = t.path().join("co");
    arbor_ok(&["--repo", &o, "checkout", "os", s(&co)]);
    assert_kept(&co, "usr/etc", "checkout after delta apply");
}
