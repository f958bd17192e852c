//! Writers started at once (as ostree's test-admin-locking does): each lands, waits
//! its turn, or is refused naming the lock holder; nothing is lost and the sysroot,
//! the store and a published folder stay consistent.
#![allow(clippy::print_stderr, clippy::print_stdout)]

#[macro_use]
mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

/// Starts every command at once and waits for all of them.
fn all_at_once(commands: Vec<Vec<String>>) -> Vec<(Vec<String>, Output)> {
    let children: Vec<_> = commands
        .into_iter()
        .map(|args| {
            let child = Command::new(arbor_bin())
                .args(&args)
                .env_remove("ARBOR_REPO")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (args, child)
        })
        .collect();
    children
        .into_iter()
        .map(|(args, c)| (args, c.wait_with_output().unwrap()))
        .collect()
}

fn nproc() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn root_deploys_started_at_once_land_one_at_a_time_or_name_the_holder() {
    as_root!();
    let t = scratch();
    let s = sysroot(t.path());
    let n = 2 * nproc();
    for v in 1..=n {
        let tree = rootfs(t.path(), &v.to_string());
        compose(&s, &tree, &format!("os/{v}"), &v.to_string());
    }
    arbor_ok(&["--sysroot", &s, "deploy", "os/1"]);
    // Waiting writers: every one lands, in some order.
    let waiting: Vec<Vec<String>> = (1..=n)
        .map(|v| {
            ["--sysroot", &s, "deploy", &format!("os/{v}")]
                .map(String::from)
                .to_vec()
        })
        .collect();
    for (args, out) in all_at_once(waiting) {
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    assert_consistent(&s, "after waiting deploys");
    // --no-wait writers: each lands or is refused, naming who holds the lock.
    let eager: Vec<Vec<String>> = (1..=n)
        .map(|v| {
            ["--sysroot", &s, "--no-wait", "deploy", &format!("os/{v}")]
                .map(String::from)
                .to_vec()
        })
        .collect();
    let mut landed = 0;
    for (args, out) in all_at_once(eager) {
        if out.status.success() {
            landed += 1;
        } else {
            let e = stderr(&out);
            assert!(
                e.contains("is locked by pid"),
                "{args:?} failed otherwise: {e}"
            );
        }
    }
    assert!(landed >= 1, "no --no-wait deploy landed");
    assert_consistent(&s, "after --no-wait deploys");
}

#[test]
fn root_prune_racing_deploys_of_unreferenced_commits_leaves_the_store_whole() {
    as_root!();
    let t = scratch();
    let s = sysroot(t.path());
    let mut commits = Vec::new();
    for v in 1..=4 {
        let tree = rootfs(t.path(), &v.to_string());
        compose(&s, &tree, &format!("os/{v}"), &v.to_string());
        let show: serde_json::Value = serde_json::from_str(&arbor_ok(&[
            "--sysroot",
            &s,
            "show",
            &format!("os/{v}"),
            "--json",
        ]))
        .unwrap();
        commits.push(show["id"].as_str().unwrap().to_string());
    }
    arbor_ok(&["--sysroot", &s, "deploy", "os/1"]);
    for v in 2..=4 {
        arbor_ok(&["--sysroot", &s, "refs", "--delete", &format!("os/{v}")]);
    }
    // Each round: a deploy of a commit no ref keeps, and a prune, at once. The deploy
    // lands (and its commit is kept from then on) or finds the commit pruned.
    for c in &commits[1..] {
        let race = vec![
            ["--sysroot", &s, "deploy", c].map(String::from).to_vec(),
            ["--sysroot", &s, "prune"].map(String::from).to_vec(),
        ];
        for (args, out) in all_at_once(race) {
            let e = stderr(&out);
            assert!(
                out.status.success() || e.contains(&c[..12]) || e.contains("no such"),
                "{args:?}: {e}"
            );
        }
        assert_consistent(&s, &format!("after deploy {c} raced a prune"));
    }
}

/// A build repository with one tree and a published folder with version 1.
fn published(dir: &Path) -> (String, String) {
    let r = build_repo(dir, &["1"]);
    let p = s(&dir.join("pub")).to_string();
    arbor_ok(&["publish", "init", &p]);
    (r, p)
}

#[test]
fn root_publishers_on_one_folder_take_turns_and_lose_no_version() {
    as_root!();
    let t = scratch();
    let (r, p) = published(t.path());
    let n = 2 * nproc();
    let adds: Vec<Vec<String>> = (1..=n)
        .map(|v| {
            [
                "--repo",
                &r,
                "publish",
                "add",
                &p,
                "--channel",
                "stable",
                "--version",
                &v.to_string(),
                "--ref",
                "os/1",
                "--deltas-from",
                "0",
            ]
            .map(String::from)
            .to_vec()
        })
        .collect();
    for (args, out) in all_at_once(adds) {
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    let index: serde_json::Value =
        serde_json::from_str(&arbor_ok(&["publish", "show", &p, "stable"])).unwrap();
    let mut versions: Vec<u64> = index["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap().parse().unwrap())
        .collect();
    versions.sort();
    assert_eq!(
        versions,
        (1..=n as u64).collect::<Vec<_>>(),
        "a version was lost"
    );
    // And a client verifies what they signed together.
    let client = file_client(&t.path().join("client"), &p);
    arbor_ok(&["--sysroot", &client, "remote", "show", "origin", "stable"]);
}
