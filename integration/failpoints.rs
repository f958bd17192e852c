//! A crash at every durable step. For each failpoint of `arbor_core::failpoint::ALL`, a
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
    /// The operation: the arguments of `arbor`, or of a shell script (see [`SH`]).
    run: fn(&Env) -> Vec<String>,
    /// Checks the invariants; returns what it checked, for the table.
    check: fn(&Env, &str) -> &'static str,
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// A `run` that starts with this is a shell script (the rest of the arguments), run
/// in a private mount namespace, for operations on a booted root.
const SH: &str = "#!sh";

/// The operation of `args`, with the failpoint armed (when `point` is given).
fn operation(args: &[String], armed: Option<(&str, &str)>) -> Output {
    let mut cmd = match args.first() {
        Some(first) if first == SH => {
            let mut c = Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "sh", "-c", &args[1]]);
            c
        }
        _ => {
            let mut c = Command::new(arbor_bin());
            c.args(args);
            c
        }
    };
    cmd.env_remove("ARBOR_REPO");
    if let Some((point, action)) = armed {
        cmd.env("ARBOR_FAILPOINTS", format!("{point}={action}"));
    }
    cmd.output().unwrap()
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

/// GRUB boots the old default or the new one, and counts only the one its grub.cfg
/// names first (never a deployment it does not boot by default).
fn grub_check(env: &Env, when: &str) -> &'static str {
    assert_consistent(&env["sysroot"], when);
    let grub = Path::new(&env["sysroot"]).join("boot/grub");
    let cfg = std::fs::read_to_string(grub.join("grub.cfg")).unwrap();
    let default = cfg
        .lines()
        .find_map(|l| l.strip_prefix("set arbor_default="))
        .unwrap()
        .trim_matches('\'')
        .to_string();
    let first = status(&env["sysroot"])[0].clone();
    let first_id = format!(
        "{}/{}.{}",
        first["os"].as_str().unwrap(),
        first["commit"].as_str().unwrap(),
        first["serial"]
    );
    if when.ends_with("run again") {
        assert_eq!(
            default, first_id,
            "{when}: grub.cfg's default is the boot order's"
        );
    } else {
        assert!(
            default == first_id || default == env["before"],
            "{when}: grub.cfg boots {default}, neither the old default nor the new"
        );
    }
    let envblock = std::fs::read_to_string(grub.join("grubenv")).unwrap_or_default();
    assert!(
        envblock.is_empty() || envblock.len() == 1024,
        "{when}: grubenv is {} bytes",
        envblock.len()
    );
    // A count in grubenv for another deployment than grub.cfg's default is ignored by
    // the script (it compares arbor_entry with arbor_default): nothing to check there.
    "grub.cfg names the old or the new default; grubenv whole"
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
    let r = build_repo(dir, &["1", "2"]);
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
    let client = file_client(&dir.join("client"), &p);
    arbor_ok(&["--sysroot", &client, "deploy", "origin:stable"]);
    Env::from([("repo", r), ("pub", p), ("client", client)])
}

/// Version 1 booted (in a namespace, as prepare-root assembles it) with version 2
/// pending: what apply-live works on. The /etc trees of both are kept to compare.
fn live_setup(dir: &Path) -> Env {
    let sr = sysroot(dir);
    let cmdline = live::booted_1_pending_2(&sr, dir);
    let target = dir.join("target");
    std::fs::create_dir_all(&target).unwrap();
    let (pending, booted) = (deployment_dir(&sr, 0), deployment_dir(&sr, 1));
    Env::from([
        ("sysroot", sr),
        ("cmdline", cmdline),
        ("target", s(&target).to_string()),
        (
            "old-etc",
            serde_json::to_string(&describe_tree(&booted.join("etc"))).unwrap(),
        ),
        (
            "new-etc",
            serde_json::to_string(&describe_tree(&pending.join("etc"))).unwrap(),
        ),
        ("booted-etc", s(&booted.join("etc")).to_string()),
    ])
}

/// Boots, then apply-live; exits with apply-live's status. The namespace, and with
/// it the live /usr, goes when the script ends, as at a reboot; /etc is the booted
/// deployment's own, on disk.
fn live_run(env: &Env) -> Vec<String> {
    let (sr, cmdline, target) = (&env["sysroot"], &env["cmdline"], &env["target"]);
    let a = format!("{} --sysroot {sr}", arbor_bin());
    let script = format!(
        "set -u\nexport ARBOR_CMDLINE={cmdline}\n\
         {a} prepare-root --cmdline {cmdline} --target {target} >/dev/null || exit 99\n\
         mkdir -p {sr}/run && mount -t tmpfs run {sr}/run\n\
         {a} apply-live --root {target}\nrc=$?\n\
         [ $rc = 0 ] && {{ test \"$(cat {target}/usr/bin/tool)\" = 'tool 2' || exit 98; }}\n\
         exit $rc\n"
    );
    vec![SH.to_string(), script]
}

/// Each /etc entry is the old or the new one; after a successful run all are new
/// and no temporary is left.
fn live_check(env: &Env, when: &str) -> &'static str {
    let tree = |k: &str| -> BTreeMap<String, String> { serde_json::from_str(&env[k]).unwrap() };
    let (old, new) = (tree("old-etc"), tree("new-etc"));
    let now = describe_tree(Path::new(&env["booted-etc"]));
    // Temporaries beside the entries they replace: no merge reads them, and the next
    // run removes them.
    let temporary = |k: &str| k.split('/').any(|c| c.starts_with(".arbor-live."));
    let entries: BTreeMap<String, String> = now
        .iter()
        .filter(|(k, _)| !temporary(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mixed = live::neither_old_nor_new(&old, &new, &entries);
    assert!(
        mixed.is_empty(),
        "{when}: /etc entries neither old nor new: {mixed:#?}"
    );
    if when.ends_with("run again") {
        assert_eq!(now, new, "{when}: /etc is not the merged one");
        assert!(
            !now.keys().any(|k| k.contains(".arbor-live.")),
            "{when}: {now:?}"
        );
    }
    assert_consistent(&env["sysroot"], when);
    "each /etc entry old or new, /usr new after the re-run; fsck clean"
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
        name: "deploy (GRUB)",
        points: &["grubenv-written", "boot-entries-written"],
        setup: |dir| {
            let env = deploy_setup(dir);
            std::fs::write(
                Path::new(&env["sysroot"]).join("arbor/bootloader.toml"),
                "loader = \"grub\"\n",
            )
            .unwrap();
            arbor_ok(&["--sysroot", &env["sysroot"], "rollback"]);
            let first = status(&env["sysroot"])[0].clone();
            let before = format!(
                "{}/{}.{}",
                first["os"].as_str().unwrap(),
                first["commit"].as_str().unwrap(),
                first["serial"]
            );
            let mut env = env;
            env.insert("before", before);
            env
        },
        run: |env| strings(&["--sysroot", &env["sysroot"], "deploy", "os/3"]),
        check: grub_check,
    },
    Scenario {
        name: "rollback",
        points: &["boot-entries-written", "boot-loader-switched"],
        setup: deploy_setup,
        run: |env| strings(&["--sysroot", &env["sysroot"], "rollback"]),
        check: sysroot_check,
    },
    Scenario {
        name: "install (layering)",
        points: &["layer-committed"],
        setup: |dir| {
            let tree = dir.join("tree");
            let copied = Command::new("cp")
                .arg("-a")
                .arg(corpus("small"))
                .arg(&tree)
                .status()
                .unwrap();
            assert!(copied.success());
            std::fs::write(tree.join("boot/vmlinuz-6.1.0-test"), "kernel image").unwrap();
            std::fs::write(tree.join("boot/initrd.img-6.1.0-test"), "initramfs image").unwrap();
            let sr = sysroot(dir);
            compose(&sr, &tree, "os/1", "1");
            arbor_ok(&["--sysroot", &sr, "deploy", "os/1"]);
            let deb = corpus("debs").join("sl_5.02-1+b1_amd64.deb");
            Env::from([("sysroot", sr), ("deb", s(&deb).to_string())])
        },
        run: |env| strings(&["--sysroot", &env["sysroot"], "install", &env["deb"]]),
        check: sysroot_check,
    },
    Scenario {
        name: "apply-live",
        points: &["live-upper-built", "live-usr-mounted", "live-etc-switching"],
        setup: live_setup,
        run: live_run,
        check: live_check,
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
    let out = operation(&args, Some((point, action)));
    let stderr = String::from_utf8_lossy(&out.stderr);
    match action {
        // Killed by SIGABRT; through a shell, exit status 128 + SIGABRT.
        "abort" => assert!(
            out.status.signal() == Some(libc::SIGABRT)
                || out.status.code() == Some(128 + libc::SIGABRT),
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
    let again = operation(&args, None);
    assert!(
        again.status.success(),
        "{when}: running it again failed:\n{}",
        String::from_utf8_lossy(&again.stderr)
    );
    (scenario.check)(&env, &format!("{when}, run again"));
    format!("{held}; runs again")
}

#[test]
#[cfg_attr(
    not(arbor_root),
    ignore = "needs root: an overlay with redirect_dir=off and trusted xattrs (layering, mmdebstrap) needs real root"
)]
fn root_a_crash_or_failure_at_every_failpoint_loses_nothing() {
    require_root!();
    let mut table = vec![format!(
        "{:<26} {:<22} {:<6} {}",
        "failpoint", "scenario", "action", "held after it"
    )];
    for (point, _) in arbor_core::failpoint::ALL {
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
                arbor_core::failpoint::ALL.iter().any(|(n, _)| n == p),
                "scenario {} names unknown failpoint {p}",
                s.name
            );
        }
    }
    let text = table.join("\n") + "\n";
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/failpoint-sweep.txt");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(&out, &text).unwrap();
    eprintln!("{text}");
}
