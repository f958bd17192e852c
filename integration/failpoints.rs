//! A crash at every durable step. For each failpoint of `arbor::failpoint::ALL`, a
//! scenario that reaches it runs twice with the point armed: `abort` (the process dies
//! there, as a power cut leaves it) and `error` (the step fails). After each, the
//! invariants are checked (fsck clean; the loader on one complete entry set whose
//! deployments are complete; a published folder read as the old or the new version),
//! and the same operation run again must succeed. A failpoint that no scenario
//! reaches fails the test. The table of what held is printed to
//! `target/failpoint-sweep.txt` (scripts/test.sh shows it).
#![allow(clippy::print_stderr, clippy::print_stdout)]

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};

use common::*;

/// Paths a scenario's steps use, by name.
type Env = BTreeMap<&'static str, String>;

/// An operation to crash, the state it starts from, and what must hold after.
struct Scenario {
    name: &'static str,
    points: &'static [&'static str],
    setup: fn(&Path) -> Env,
    run: fn(&Env) -> Vec<String>,
    /// Checks the invariants; returns what it checked, for the table.
    check: fn(&Env, &str) -> &'static str,
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// `arbor ARGS` with the failpoint armed.
fn arbor_armed(args: &[String], point: &str, action: &str) -> Output {
    Command::new(arbor_bin())
        .args(args)
        .env_remove("ARBOR_REPO")
        .env("ARBOR_FAILPOINTS", format!("{point}={action}"))
        .output()
        .unwrap()
}

/// A sysroot with trees 1..=n composed (not deployed).
fn sysroot_with_trees(dir: &Path, n: u32) -> String {
    let s = sysroot(dir);
    for v in 1..=n {
        let tree = rootfs(dir, &v.to_string());
        compose(&s, &tree, &format!("os/{v}"), &v.to_string());
    }
    s
}

fn deploy_setup(dir: &Path) -> Env {
    let s = sysroot_with_trees(dir, 3);
    arbor_ok(&["--sysroot", &s, "deploy", "os/1"]);
    arbor_ok(&["--sysroot", &s, "deploy", "os/2"]);
    Env::from([("sysroot", s)])
}

fn sysroot_check(env: &Env, when: &str) -> &'static str {
    assert_consistent(&env["sysroot"], when);
    "fsck clean; loader on one complete entry set"
}

fn repo_check(env: &Env, when: &str) -> &'static str {
    let out = arbor(&["--repo", &env["repo"], "fsck"]);
    assert!(
        out.status.success(),
        "{when}: fsck:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    "fsck clean"
}

/// The published folder reads, through TUF, as version 1 or 2 of the channel.
fn publish_check(env: &Env, when: &str) -> &'static str {
    assert_consistent(&env["client"], when);
    let show = arbor_ok(&[
        "--sysroot",
        &env["client"],
        "remote",
        "show",
        "origin",
        "stable",
    ]);
    let index: serde_json::Value = serde_json::from_str(&show).unwrap();
    let versions: Vec<&str> = index["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert!(
        versions == ["1"] || versions == ["1", "2"],
        "{when}: the channel reads as neither the old nor the new index: {versions:?}"
    );
    "client fsck clean; it reads the old or the new index"
}

/// A build repository with trees 1 and 2, published as version 1 to a folder that a
/// client (a sysroot) follows over file://.
fn publish_setup(dir: &Path) -> Env {
    let repo = dir.join("build");
    let r = s(&repo).to_string();
    arbor_ok(&["--repo", &r, "init"]);
    for v in ["1", "2"] {
        let tree = rootfs(dir, v);
        arbor_ok(&[
            "--repo",
            &r,
            "compose",
            "rootfs",
            s(&tree),
            "-b",
            &format!("os/{v}"),
            "--version",
            v,
        ]);
    }
    let p = dir.join("srv/pub");
    let p = s(&p).to_string();
    arbor_ok(&["publish", "init", &p]);
    arbor_ok(&[
        "--repo",
        &r,
        "publish",
        "add",
        &p,
        "--channel",
        "stable",
        "--version",
        "1",
        "--ref",
        "os/1",
    ]);
    let client = sysroot(&dir.join("client"));
    let url = format!("file://{p}");
    let root = format!("{p}/metadata/1.root.json");
    arbor_ok(&[
        "--sysroot",
        &client,
        "remote",
        "add",
        "origin",
        &url,
        "--trust",
        &root,
    ]);
    arbor_ok(&["--sysroot", &client, "deploy", "origin:stable"]);
    Env::from([("repo", r), ("pub", p), ("client", client)])
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "commit",
        points: &["store-objects-written", "store-ref-moved"],
        setup: |dir| {
            let repo = dir.join("repo");
            arbor_ok(&["--repo", s(&repo), "init"]);
            let tree = rootfs(dir, "1");
            Env::from([
                ("repo", s(&repo).to_string()),
                ("tree", s(&tree).to_string()),
            ])
        },
        run: |env| strings(&["--repo", &env["repo"], "commit", "-b", "main", &env["tree"]]),
        check: repo_check,
    },
    Scenario {
        name: "deploy",
        points: &[
            "ops-execute",
            "deploy-checked-out",
            "deploy-etc-merged",
            "deploy-origin-written",
            "deploy-tree-in-place",
            "deploy-kernel-installed",
            "boot-entries-written",
            "boot-loader-switched",
            "deploy-unlisted-removing",
        ],
        setup: deploy_setup,
        run: |env| strings(&["--sysroot", &env["sysroot"], "deploy", "os/3"]),
        check: sysroot_check,
    },
    Scenario {
        name: "deploy --stage",
        points: &["deploy-staged"],
        setup: deploy_setup,
        run: |env| strings(&["--sysroot", &env["sysroot"], "deploy", "--stage", "os/3"]),
        check: sysroot_check,
    },
    Scenario {
        name: "finalize-staged",
        points: &["boot-entries-written", "boot-loader-switched"],
        setup: |dir| {
            let env = deploy_setup(dir);
            arbor_ok(&["--sysroot", &env["sysroot"], "deploy", "--stage", "os/3"]);
            env
        },
        run: |env| strings(&["--sysroot", &env["sysroot"], "finalize-staged"]),
        check: sysroot_check,
    },
    Scenario {
        name: "rollback",
        points: &["boot-entries-written", "boot-loader-switched"],
        setup: deploy_setup,
        run: |env| strings(&["--sysroot", &env["sysroot"], "rollback"]),
        check: sysroot_check,
    },
    Scenario {
        name: "prune",
        points: &["prune-removing"],
        setup: |dir| {
            let repo = dir.join("repo");
            let r = s(&repo).to_string();
            arbor_ok(&["--repo", &r, "init"]);
            for v in ["1", "2"] {
                let tree = rootfs(dir, v);
                arbor_ok(&["--repo", &r, "commit", "-b", &format!("b{v}"), s(&tree)]);
            }
            arbor_ok(&["--repo", &r, "refs", "--delete", "b1"]);
            Env::from([("repo", r)])
        },
        run: |env| strings(&["--repo", &env["repo"], "prune"]),
        check: repo_check,
    },
    Scenario {
        name: "delta apply",
        points: &["delta-staged"],
        setup: |dir| {
            let (a, b) = (dir.join("a"), dir.join("b"));
            arbor_ok(&["--repo", s(&a), "init"]);
            let one = rootfs(dir, "1");
            let from = arbor_ok(&["--repo", s(&a), "commit", "-b", "main", s(&one)]);
            let from = from.split_whitespace().next().unwrap().to_string();
            let copied = Command::new("cp")
                .arg("-a")
                .arg(&a)
                .arg(&b)
                .status()
                .unwrap();
            assert!(copied.success());
            let two = rootfs(dir, "2");
            arbor_ok(&["--repo", s(&a), "commit", "-b", "main", s(&two)]);
            let delta = dir.join("1-2.delta");
            arbor_ok(&[
                "--repo",
                s(&a),
                "delta",
                "create",
                &from,
                "main",
                "-o",
                s(&delta),
            ]);
            Env::from([
                ("repo", s(&b).to_string()),
                ("delta", s(&delta).to_string()),
            ])
        },
        run: |env| {
            strings(&[
                "--repo",
                &env["repo"],
                "delta",
                "apply",
                &env["delta"],
                "-b",
                "main",
            ])
        },
        check: repo_check,
    },
    Scenario {
        name: "deploy from a remote",
        points: &["fetch-chunk-stored"],
        setup: |dir| {
            let mut env = publish_setup(dir);
            arbor_ok(&[
                "--repo",
                &env["repo"],
                "publish",
                "add",
                &env["pub"],
                "--channel",
                "stable",
                "--version",
                "2",
                "--ref",
                "os/2",
                "--deltas-from",
                "0",
            ]);
            env.insert("sysroot", env["client"].clone());
            env
        },
        run: |env| strings(&["--sysroot", &env["client"], "deploy", "origin:stable"]),
        check: sysroot_check,
    },
    Scenario {
        name: "publish add",
        points: &[
            "publish-objects-written",
            "publish-index-written",
            "publish-metadata-writing",
        ],
        setup: publish_setup,
        run: |env| {
            strings(&[
                "--repo",
                &env["repo"],
                "publish",
                "add",
                &env["pub"],
                "--channel",
                "stable",
                "--version",
                "2",
                "--ref",
                "os/2",
            ])
        },
        check: publish_check,
    },
];

/// Crashes `scenario` at `point` with `action`; checks the invariants and that the
/// operation then runs again. Returns what held, for the table.
fn crash_at(scenario: &Scenario, point: &str, action: &str) -> String {
    let t = scratch();
    let env = (scenario.setup)(t.path());
    let args = (scenario.run)(&env);
    let when = format!("{} at {point} ({action})", scenario.name);
    let out = arbor_armed(&args, point, action);
    let stderr = String::from_utf8_lossy(&out.stderr);
    match action {
        "abort" => assert_eq!(
            out.status.signal(),
            Some(libc::SIGABRT),
            "{when}: the point was not reached (exit {}):\n{stderr}",
            out.status
        ),
        _ => {
            assert!(!out.status.success(), "{when}: the point was not reached");
            assert!(
                stderr.contains(&format!("failpoint {point}")),
                "{when}:\n{stderr}"
            );
        }
    }
    let held = (scenario.check)(&env, &when);
    let again = arbor(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        again.status.success(),
        "{when}: running it again failed:\n{}",
        String::from_utf8_lossy(&again.stderr)
    );
    (scenario.check)(&env, &format!("{when}, run again"));
    format!("{held}; runs again")
}

#[test]
#[cfg_attr(not(arbor_root), ignore = "needs root: run the tests as root")]
fn root_a_crash_or_failure_at_every_failpoint_loses_nothing() {
    require_root!();
    let mut table = vec![format!(
        "{:<26} {:<22} {:<6} {}",
        "failpoint", "scenario", "action", "held after it"
    )];
    for (point, _) in arbor::failpoint::ALL {
        let users: Vec<&Scenario> = SCENARIOS
            .iter()
            .filter(|s| s.points.contains(point))
            .collect();
        assert!(!users.is_empty(), "no scenario reaches failpoint {point}");
        for scenario in users {
            for action in ["abort", "error"] {
                let held = crash_at(scenario, point, action);
                table.push(format!(
                    "{point:<26} {:<22} {action:<6} {held}",
                    scenario.name
                ));
            }
        }
    }
    for s in SCENARIOS {
        for p in s.points {
            assert!(
                arbor::failpoint::ALL.iter().any(|(n, _)| n == p),
                "scenario {} names unknown failpoint {p}",
                s.name
            );
        }
    }
    let text = table.join("\n") + "\n";
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/failpoint-sweep.txt");
    std::fs::write(&out, &text).unwrap();
    eprintln!("{text}");
}
