//! Live changes on a folder sysroot "booted" with prepare-root in a mount namespace:
//! usroverlay (transient and hotfix), and apply-live of a layered package and of the
//! corpus point update a → b.
#![allow(clippy::print_stderr, clippy::print_stdout)]

#[macro_use]
mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Writes the kernel command line that boots deployment 0 (`ARBOR_CMDLINE`).
fn boot_first(sysroot: &str, dir: &Path) -> String {
    let cmdline = dir.join("cmdline");
    arbor_ok(&[
        "--sysroot",
        sysroot,
        "boot-select",
        "--cmdline-out",
        s(&cmdline),
    ]);
    s(&cmdline).to_string()
}

/// Runs a shell script in a private mount namespace, with `A` = arbor on the sysroot
/// (booted as `cmdline` says) and `T` = an empty folder to assemble the root in.
/// Returns the output; fails the test when the script fails.
fn in_namespace(sysroot: &str, cmdline: &str, dir: &Path, script: &str) -> String {
    let target = dir.join("target");
    std::fs::create_dir_all(&target).unwrap();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "set -eu\nA='{} --sysroot {sysroot}'\nT={}\nboot() {{ $A prepare-root --cmdline {cmdline} --target $T >/dev/null; }}\nreboot() {{ umount -R $T; boot; }}\n{script}",
            arbor_bin(),
            s(&target)
        ))
        .env("ARBOR_CMDLINE", cmdline)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the script failed:\n{text}");
    text
}

#[test]
fn root_usroverlay_transient_goes_at_reboot_and_hotfix_stays() {
    require_root!();
    let t = scratch();
    let sr = sysroot(t.path());
    compose(&sr, &rootfs(t.path(), "1"), "os", "1");
    arbor_ok(&["--sysroot", &sr, "deploy", "os"]);
    let cmdline = boot_first(&sr, t.path());
    let out = in_namespace(
        &sr,
        &cmdline,
        t.path(),
        r#"
boot
if touch $T/usr/bin/x 2>/dev/null; then echo "usr writable before"; exit 1; fi
$A usroverlay --root $T
echo patched > $T/usr/bin/tool
test "$(cat $T/usr/bin/tool)" = patched
$A usroverlay --status --root $T | grep -q 'gone at reboot'
$A usroverlay --remove --root $T
test "$(cat $T/usr/bin/tool)" = "tool 1"
$A usroverlay --root $T
echo patched > $T/usr/bin/tool
reboot
test "$(cat $T/usr/bin/tool)" = "tool 1"
echo transient-gone
$A usroverlay --hotfix --root $T
echo hot > $T/usr/bin/tool
reboot
test "$(cat $T/usr/bin/tool)" = hot
$A status | grep -q 'Hotfix:'
echo hotfix-kept
$A usroverlay --remove --root $T
test "$(cat $T/usr/bin/tool)" = "tool 1"
reboot
test "$(cat $T/usr/bin/tool)" = "tool 1"
! $A status | grep -q 'Hotfix:'
echo hotfix-removed
"#,
    );
    for m in ["transient-gone", "hotfix-kept", "hotfix-removed"] {
        assert!(out.contains(m), "{out}");
    }
    // The lower layer, the deployment, was never written.
    assert_eq!(
        std::fs::read_to_string(deployment_dir(&sr, 0).join("usr/bin/tool")).unwrap(),
        "tool 1\n"
    );
    arbor_ok(&["--sysroot", &sr, "fsck"]);
    let h: serde_json::Value =
        serde_json::from_str(&arbor_ok(&["--sysroot", &sr, "status", "--json"])).unwrap();
    assert_eq!(h["deployments"][0]["hotfix"], false);
}

/// `arbor ARGS…` as seen from the booted system (ARBOR_CMDLINE), asserting success.
fn booted_ok(cmdline: &str, args: &[&str]) -> String {
    let out = Command::new(arbor_bin())
        .args(args)
        .env("ARBOR_CMDLINE", cmdline)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "arbor {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn booted_status(cmdline: &str, sysroot: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&booted_ok(
        cmdline,
        &["--sysroot", sysroot, "status", "--json"],
    ))
    .unwrap();
    v["deployments"].as_array().unwrap().clone()
}

fn sha(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split(' ')
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn root_apply_live_of_the_point_update_a_to_b_and_of_a_layered_package() {
    require_root!();
    let t = scratch();
    let sr = sysroot(t.path());
    compose(&sr, &corpus("a"), "os/a", "a");
    compose(&sr, &corpus("b"), "os/b", "b");
    arbor_ok(&["--sysroot", &sr, "deploy", "os/a"]);
    let cmdline = boot_first(&sr, t.path());
    booted_ok(&cmdline, &["--sysroot", &sr, "deploy", "os/b"]);
    let st = booted_status(&cmdline, &sr);
    assert!(st[1]["booted"].as_bool().unwrap() && st[0]["version"] == "b");
    let booted = deployment_dir(&sr, 1);
    let before = describe_tree(&booted.join("usr"));
    let (a_perl, b_perl) = (
        sha(&corpus("a").join("usr/bin/perl")),
        sha(&corpus("b").join("usr/bin/perl")),
    );
    assert_ne!(a_perl, b_perl);

    // A kernel change is refused without --force: a copy of b with another vmlinuz.
    let k = t.path().join("k");
    arbor_ok(&["--sysroot", &sr, "checkout", "os/b", s(&k)]);
    let vmlinuz = std::fs::read_dir(k.join("usr/lib/modules"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("vmlinuz");
    let mut kernel = std::fs::read(&vmlinuz).unwrap();
    kernel.extend_from_slice(b"patched");
    std::fs::remove_file(&vmlinuz).unwrap(); // never write into the hardlinked checkout
    std::fs::write(&vmlinuz, kernel).unwrap();
    arbor_ok(&[
        "--sysroot",
        &sr,
        "commit",
        "-b",
        "os/k",
        "--metadata",
        "version=k",
        s(&k),
    ]);

    let out = in_namespace(
        &sr,
        &cmdline,
        t.path(),
        &format!(
            r#"
boot
$A apply-live --dry-run --root $T --json > {dir}/plan.json
test "$(sha256sum $T/usr/bin/perl | cut -d' ' -f1)" = {a_perl}
! findmnt -n -t overlay $T/usr
start=$(date +%s%N)
$A apply-live --root $T
end=$(date +%s%N)
echo "apply-live-ms $(( (end - start) / 1000000 ))"
test "$(sha256sum $T/usr/bin/perl | cut -d' ' -f1)" = {b_perl}
dpkg-query --admindir=$T/usr/lib/arbor/dpkg -W -f '${{Version}}' perl | grep -q deb12u4
$A status | grep -q "live: /usr of the booted deployment shows"
$A usroverlay --status --root $T | grep -q 'live-applied'
$A apply-live --reset --root $T
test "$(sha256sum $T/usr/bin/perl | cut -d' ' -f1)" = {a_perl}
! $A status | grep -q "live:"
echo reset-ok
$A deploy os/k >/dev/null 2>&1
if $A apply-live --root $T 2> {dir}/refused; then echo "kernel change applied without --force"; exit 1; fi
grep -q 'kernel' {dir}/refused
! findmnt -n -t overlay $T/usr
$A apply-live --force --root $T > {dir}/forced
grep -q 'forced: the kernel' {dir}/forced
test "$(sha256sum $T/usr/bin/perl | cut -d' ' -f1)" = {b_perl}
$A apply-live --reset --root $T
echo kernel-ok
"#,
            dir = s(t.path()),
        ),
    );
    assert!(
        out.contains("reset-ok") && out.contains("kernel-ok"),
        "{out}"
    );
    let ms = out
        .lines()
        .find_map(|l| l.strip_prefix("apply-live-ms "))
        .unwrap();
    println!("apply-live a -> b took {ms} ms (debug build)");
    // The dry run listed exactly the point update and changed nothing.
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(t.path().join("plan.json")).unwrap())
            .unwrap();
    let expected = corpus_upgraded();
    let mut listed: Vec<&str> = plan["plan"]["packages"]["upgraded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    listed.sort();
    assert_eq!(listed, expected);
    assert_eq!(plan["applied"], false);
    assert!(
        plan["plan"]["services"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("nginx.service")),
        "{plan}"
    );

    // A layered package, applied live.
    booted_ok(&cmdline, &["--sysroot", &sr, "deploy", "os/a"]);
    booted_ok(&cmdline, &["--sysroot", &sr, "install", "hello"]);
    let out = in_namespace(
        &sr,
        &cmdline,
        t.path(),
        r#"
boot
! test -e $T/usr/bin/hello
$A apply-live --root $T
chroot $T /usr/bin/hello
"#,
    );
    assert!(out.contains("Hello, world!"), "{out}");
    // The booted deployment's files and the store are as they were.
    assert!(!booted.join("usr/bin/hello").exists());
    assert_eq!(describe_tree(&booted.join("usr")), before);
    arbor_ok(&["--sysroot", &sr, "fsck"]);
}
