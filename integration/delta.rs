//! Static deltas through the real binary on the corpus point update a → b: the delta
//! rebuilds b exactly in a repository that has only a, and a damaged or forged delta
//! changes nothing.
#![allow(clippy::print_stderr, clippy::print_stdout)]

#[macro_use]
mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// A repository with corpus `name` committed at a fixed time, so that two
/// repositories get the same commit ids.
fn repo_with(dir: &Path, trees: &[&str]) -> String {
    let repo = dir.to_str().unwrap().to_string();
    arbor_ok(&["--repo", &repo, "init"]);
    for t in trees {
        let out = Command::new(arbor_bin())
            .args(["--repo", &repo, "commit", "-b", t, s(&corpus(t))])
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    repo
}

#[test]
#[cfg_attr(not(arbor_root), ignore = "needs root: run the tests as root")]
fn root_delta_rebuilds_b_from_a_and_refuses_damage() {
    require_root!();
    let t = scratch();
    let src = repo_with(&t.path().join("src"), &["a", "b"]);
    let delta = t.path().join("ab.delta");
    let stats: serde_json::Value = serde_json::from_str(&arbor_ok(&[
        "--repo", &src, "delta", "stats", "a", "b", "--json",
    ]))
    .unwrap();
    assert!(
        stats["delta_bytes"].as_u64().unwrap() * 3 < stats["full_bytes"].as_u64().unwrap(),
        "{stats}"
    );
    arbor_ok(&["--repo", &src, "delta", "create", "a", "b", "-o", s(&delta)]);
    let b = arbor_ok(&["--repo", &src, "show", "b", "--json"]);
    let b_id = serde_json::from_str::<serde_json::Value>(&b).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Damage, each on a copy, each refused with nothing written.
    let dst = repo_with(&t.path().join("dst"), &["a"]);
    let bytes = std::fs::read(&delta).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "flipped byte",
            {
                let mut v = bytes.clone();
                let i = v.len() - 100;
                v[i] ^= 0x55;
                v
            },
            "record",
        ),
        ("truncated", bytes[..bytes.len() / 2].to_vec(), "ends early"),
        ("not a delta", b"hello".repeat(100), "not an arbor delta"),
        (
            "a lying count",
            {
                let mut v = bytes.clone();
                v[76..84].copy_from_slice(&u64::MAX.to_le_bytes());
                v
            },
            "claims",
        ),
    ];
    for (what, data, want) in cases {
        let bad = t.path().join("bad.delta");
        std::fs::write(&bad, data).unwrap();
        let e = arbor_err(&["--repo", &dst, "delta", "apply", s(&bad), "-b", "b"]);
        assert!(e.contains(want), "{what}: {e}");
        assert!(
            !arbor_ok(&["--repo", &dst, "refs"]).contains("b\t"),
            "{what}: ref b moved"
        );
        let show = arbor(&["--repo", &dst, "show", &b_id]);
        assert!(!show.status.success(), "{what}: commit b appeared");
    }
    arbor_ok(&["--repo", &dst, "fsck"]);
    // A repository without the delta's FROM commit is told which one it needs.
    let empty = t.path().join("empty");
    arbor_ok(&["--repo", s(&empty), "init"]);
    let e = arbor_err(&["--repo", s(&empty), "delta", "apply", s(&delta)]);
    assert!(e.contains("needs commit"), "{e}");

    // The real thing: b, complete and identical.
    let out = arbor_ok(&["--repo", &dst, "delta", "apply", s(&delta), "-b", "b"]);
    assert!(out.starts_with(&b_id), "{out}");
    arbor_ok(&["--repo", &dst, "fsck"]);
    let co = t.path().join("co");
    arbor_ok(&["--repo", &dst, "checkout", "b", s(&co)]);
    assert_eq!(describe_tree(&co), describe_tree(&corpus("b")));
}
