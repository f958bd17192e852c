//! The command line as a user meets it: man pages, usage errors, exit codes.
#![allow(clippy::print_stderr, clippy::print_stdout)] // tests may say why they skip

#[macro_use]
mod common;

use common::*;

/// man/ is generated from the CLI definition; regenerate with
/// `cargo run -- generate-man man` after changing an option.
#[test]
fn man_pages_are_current() {
    let t = tempfile::tempdir().unwrap();
    arbor_ok(&["generate-man", s(t.path())]);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let mut fresh: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut checked_in: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    fresh.sort();
    checked_in.sort();
    assert_eq!(
        fresh, checked_in,
        "man/ lists other pages than the CLI has: run `cargo run -- generate-man man`"
    );
    for name in fresh {
        let a = std::fs::read(t.path().join(&name)).unwrap();
        let b = std::fs::read(dir.join(&name)).unwrap();
        assert!(
            a == b,
            "man/{} is stale: run `cargo run -- generate-man man`",
            name.to_string_lossy()
        );
    }
}

#[test]
fn usage_errors_exit_2_and_failures_exit_1() {
    assert_eq!(arbor(&["no-such-command"]).status.code(), Some(2));
    let out = arbor(&["--repo", "/nonexistent/arbor-repo", "refs"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("/nonexistent/arbor-repo"),
        "{err}"
    );
}

#[test]
fn bad_ref_names_and_metadata_are_refused_clearly() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    arbor_ok(&["--repo", s(&repo), "init"]);
    let err = arbor_err(&["--repo", s(&repo), "commit", "-b", "../escape", s(t.path())]);
    assert!(err.contains("'../escape' is not a valid ref name"), "{err}");
    let err = arbor_err(&[
        "--repo",
        s(&repo),
        "commit",
        "-b",
        "ok",
        "--metadata",
        "novalue",
        s(t.path()),
    ]);
    assert!(err.contains("expected KEY=VALUE"), "{err}");
    let err = arbor_err(&["--repo", s(&repo), "log", "missing"]);
    assert!(err.contains("no ref or commit named 'missing'"), "{err}");
    let err = arbor_err(&["--repo", s(&repo), "init"]);
    assert!(err.contains("not empty"), "{err}");
}

/// The units in systemd/ pass `systemd-analyze verify` (with /usr/bin/arbor and arbord
/// pointed at the binaries under test, which verify requires to exist).
#[test]
fn systemd_units_verify() {
    let t = tempfile::tempdir().unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let mut units = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            continue; // drop-ins for other units (systemd-bless-boot.service.d)
        }
        let text = std::fs::read_to_string(e.path())
            .unwrap()
            .replace("/usr/bin/arbord", &common::bus::arbord_bin())
            .replace("/usr/bin/arbor", arbor_bin());
        let out = t.path().join(e.file_name());
        std::fs::write(&out, text).unwrap();
        units.push(out);
    }
    assert!(units.len() >= 3);
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
        .expect("systemd-analyze (package systemd) is needed");
    let err = String::from_utf8_lossy(&out.stderr);
    // Complaints about other units already on this machine are not ours to fix.
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("arbor")).collect();
    assert!(out.status.success() && ours.is_empty(), "{err}");
}

/// Every sysroot command that takes `--json` prints one JSON document with it.
#[test]
fn root_every_sysroot_command_honours_json() {
    as_root!();
    let t = scratch();
    let sr = sysroot(t.path());
    compose(&sr, &rootfs(t.path(), "1"), "os/a", "1");
    compose(&sr, &rootfs(&t.path().join("2"), "2"), "os/b", "2");
    arbor_ok(&["--sysroot", &sr, "deploy", "os/a"]);
    arbor_ok(&["--sysroot", &sr, "deploy", "os/b"]);
    let runs: &[&[&str]] = &[
        &["status"],
        &["kargs"],
        &["kargs", "--append", "quiet"],
        &["pin", "1"],
        &["pin", "--unpin", "1"],
        &["finalize-staged"],
        &["boot-select"],
        &["history"],
        &["update-status"],
        &["refs"],
        &["log", "os/b"],
        &["show", "os/b"],
        &["ls", "os/b", "/usr/bin"],
        &["diff", "os/a", "os/b"],
        &["fsck"],
        &["prune", "--dry-run"],
        &["cleanup"],
        &["rollback"],
        &["undeploy", "1"],
        &["usroverlay", "--list", "--deployment", "0"],
    ];
    for args in runs {
        let mut all = vec!["--sysroot", sr.as_str()];
        all.extend_from_slice(args);
        all.push("--json");
        let out = arbor(&all);
        let text = String::from_utf8_lossy(&out.stdout);
        if args[0] == "usroverlay" {
            // No hotfix here: an error, and nothing half-printed on stdout.
            assert!(!out.status.success() && text.is_empty(), "{args:?}: {text}");
            continue;
        }
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str::<serde_json::Value>(&text)
            .unwrap_or_else(|e| panic!("arbor {args:?} --json printed no JSON ({e}):\n{text}"));
    }
}
