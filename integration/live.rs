//! Live changes on a folder sysroot "booted" with prepare-root in a mount namespace:
//! usroverlay (transient and hotfix), and apply-live of a layered package and of the
//! corpus point update a → b.
#![allow(clippy::print_stderr, clippy::print_stdout)]

#[macro_use]
mod common;

use std::path::Path;
use std::process::Command;

use common::live::*;
use common::*;

#[test]
fn root_usroverlay_transient_goes_at_reboot_and_hotfix_stays() {
    as_root!();
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

fn booted_status(cmdline: &str, sysroot: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&booted_ok(
        cmdline,
        &["--sysroot", sysroot, "status", "--json"],
    ))
    .unwrap();
    v["deployments"].as_array().unwrap().clone()
}

#[test]
fn root_apply_live_merges_etc_defaults_across_mounts() {
    as_root!();
    let t = scratch();
    let sr = sysroot(t.path());
    let cmdline = booted_1_pending_2(&sr, t.path());
    let (pending, booted) = (deployment_dir(&sr, 0), deployment_dir(&sr, 1));
    in_namespace(
        &sr,
        &cmdline,
        t.path(),
        &format!(
            "{}$A apply-live --root $T\ntest \"$(cat $T/usr/bin/tool)\" = 'tool 2'\n",
            boot_with_tmpfs_run(&sr)
        ),
    );
    // The live /etc is exactly what the deploy of 2 merged from it.
    assert_eq!(
        describe_tree(&booted.join("etc")),
        describe_tree(&pending.join("etc"))
    );
    let etc = booted.join("etc");
    assert_eq!(
        std::fs::read_to_string(etc.join("hostname")).unwrap(),
        "edited locally\n"
    );
    assert_eq!(
        std::fs::read_to_string(etc.join("cron.conf/main")).unwrap(),
        "now a directory\n"
    );
    assert_eq!(
        std::fs::read_to_string(etc.join("old.d")).unwrap(),
        "now a file\n"
    );
    assert_eq!(
        std::fs::read_link(etc.join("localtime")).unwrap(),
        Path::new("/usr/share/zoneinfo/Europe/Paris")
    );
    assert!(!etc.join("default/grub").exists() && !etc.join("obsolete").exists());
    arbor_ok(&["--sysroot", &sr, "fsck"]);
}

#[test]
fn root_apply_live_that_fails_part_way_loses_nothing_and_runs_again() {
    as_root!();
    let t = scratch();
    let sr = sysroot(t.path());
    let cmdline = booted_1_pending_2(&sr, t.path());
    let (pending, booted) = (deployment_dir(&sr, 0), deployment_dir(&sr, 1));
    let old = describe_tree(&booted.join("etc"));
    let new = describe_tree(&pending.join("etc"));
    let boot = boot_with_tmpfs_run(&sr);
    let dir = s(t.path());

    // A read-only directory: the new sshd_config cannot be written beside the old one,
    // so nothing in /etc changes.
    let out = in_namespace(
        &sr,
        &cmdline,
        t.path(),
        &format!(
            "{boot}mount --bind $T/etc/ssh $T/etc/ssh\nmount -o remount,bind,ro $T/etc/ssh\n\
             if $A apply-live --root $T 2> {dir}/err; then echo applied; exit 1; fi\ncat {dir}/err"
        ),
    );
    assert!(
        out.contains("/etc/ssh/sshd_config") && out.contains("Read-only"),
        "{out}"
    );
    assert!(out.contains("left as it was"), "{out}");
    assert_eq!(describe_tree(&booted.join("etc")), old);

    // A mount point in the way of one rename: the entries before it are new, the rest
    // old, none missing; the error names it.
    let out = in_namespace(
        &sr,
        &cmdline,
        t.path(),
        &format!(
            "{boot}cp -a $T/etc/motd {dir}/motd\nmount --bind {dir}/motd $T/etc/motd\n\
             if $A apply-live --root $T 2> {dir}/err; then echo applied; exit 1; fi\ncat {dir}/err"
        ),
    );
    assert!(out.contains("replacing /etc/motd"), "{out}");
    let now = describe_tree(&booted.join("etc"));
    assert_eq!(neither_old_nor_new(&old, &new, &now), Vec::<String>::new());
    assert_ne!(now, old, "nothing was switched before the failing rename");
    assert_ne!(now, new, "the failing rename did not stop the switch");
    assert!(!now.keys().any(|k| k.contains(".arbor-live.")), "{now:?}");

    // The cause gone, the same command finishes the work.
    in_namespace(
        &sr,
        &cmdline,
        t.path(),
        &format!("{boot}$A apply-live --root $T\n"),
    );
    assert_eq!(describe_tree(&booted.join("etc")), new);
}

#[test]
fn root_apply_live_refuses_a_kernel_change_without_force() {
    as_root!();
    let t = scratch();
    let sr = sysroot(t.path());
    let one = rootfs(t.path(), "1");
    let two = rootfs(t.path(), "2");
    std::fs::write(two.join("boot/vmlinuz-6.1.0-test"), "another kernel image").unwrap();
    compose(&sr, &one, "os/1", "1");
    compose(&sr, &two, "os/2", "2");
    arbor_ok(&["--sysroot", &sr, "deploy", "os/1"]);
    let cmdline = boot_first(&sr, t.path());
    booted_ok(&cmdline, &["--sysroot", &sr, "deploy", "os/2"]);
    let out = in_namespace(
        &sr,
        &cmdline,
        t.path(),
        &format!(
            r#"
boot
if $A apply-live --root $T 2> {dir}/refused; then echo "kernel change applied without --force"; exit 1; fi
grep -q 'kernel' {dir}/refused
! findmnt -n -t overlay $T/usr
test "$(cat $T/usr/bin/tool)" = 'tool 1'
$A apply-live --force --root $T > {dir}/forced
grep -q 'forced: the kernel' {dir}/forced
test "$(cat $T/usr/bin/tool)" = 'tool 2'
$A apply-live --reset --root $T
test "$(cat $T/usr/bin/tool)" = 'tool 1'
echo kernel-ok
"#,
            dir = s(t.path()),
        ),
    );
    assert!(out.contains("kernel-ok"), "{out}");
}

/// `dpkg-query` of every package in ADMINDIR: name → version.
fn dpkg_versions(admindir: &Path) -> std::collections::BTreeMap<String, String> {
    let out = Command::new("dpkg-query")
        .arg(format!("--admindir={}", s(admindir)))
        .args(["-W", "-f", "${Package} ${Version}\\n"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(p, v)| (p.to_string(), v.to_string()))
        .collect()
}

#[test]
fn root_apply_live_of_the_point_update_a_to_b() {
    as_root!();
    let t = scratch();
    let sr = sysroot(t.path());
    compose(&sr, &corpus("a"), "os/a", "a");
    compose(&sr, &corpus("b"), "os/b", "b");
    arbor_ok(&["--sysroot", &sr, "deploy", "os/a"]);
    let cmdline = boot_first(&sr, t.path());
    booted_ok(&cmdline, &["--sysroot", &sr, "deploy", "os/b"]);
    let st = booted_status(&cmdline, &sr);
    assert!(st[1]["booted"].as_bool().unwrap() && st[0]["version"] == "b");
    let (pending, booted) = (deployment_dir(&sr, 0), deployment_dir(&sr, 1));
    let before = describe_tree(&booted.join("usr"));
    let wanted = describe_tree(&pending.join("usr"));
    let dir = s(t.path());
    let out = in_namespace(
        &sr,
        &cmdline,
        t.path(),
        &format!(
            r#"{boot}
$A apply-live --dry-run --root $T --json > {dir}/plan.json
! findmnt -n -t overlay $T/usr
start=$(date +%s%N)
$A apply-live --root $T
end=$(date +%s%N)
echo "apply-live-ms $(( (end - start) / 1000000 ))"
cp -a $T/usr/lib/arbor/dpkg {dir}/live-dpkg
find $T/usr -mindepth 1 -printf '%P\0%y %m %U %G %s %l\0' > {dir}/live-usr
$A status | grep -q "live: /usr of the booted deployment shows"
$A usroverlay --status --root $T | grep -q 'live-applied'
$A apply-live --reset --root $T
! $A status | grep -q "live:"
echo reset-ok
"#,
            boot = boot_with_tmpfs_run(&sr),
        ),
    );
    assert!(out.contains("reset-ok"), "{out}");
    let ms = out
        .lines()
        .find_map(|l| l.strip_prefix("apply-live-ms "))
        .unwrap();
    println!("apply-live a -> b took {ms} ms (debug build)");
    // The live /usr listed exactly b's entries, and its dpkg database is b's.
    let listed = std::fs::read(t.path().join("live-usr")).unwrap();
    let mut live: Vec<String> = listed
        .split(|b| *b == 0)
        .collect::<Vec<_>>()
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| String::from_utf8_lossy(c[0]).into_owned())
        .collect();
    live.sort();
    assert_eq!(live, wanted.keys().cloned().collect::<Vec<_>>());
    assert_eq!(
        dpkg_versions(&t.path().join("live-dpkg")),
        dpkg_versions(&pending.join("usr/lib/arbor/dpkg"))
    );
    // The dry run listed exactly the point update.
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(t.path().join("plan.json")).unwrap())
            .unwrap();
    let mut upgraded: Vec<&str> = plan["plan"]["packages"]["upgraded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    upgraded.sort();
    assert_eq!(upgraded, corpus_upgraded());
    assert_eq!(plan["applied"], false);
    // /etc is what the deploy of b merged; the deployment and the store are untouched.
    assert_eq!(
        describe_tree(&booted.join("etc")),
        describe_tree(&pending.join("etc"))
    );
    assert_eq!(describe_tree(&booted.join("usr")), before);
    arbor_ok(&["--sysroot", &sr, "fsck"]);
}

#[test]
#[cfg_attr(
    not(arbor_root),
    ignore = "needs root: the layering's overlay mount is refused in a user namespace"
)]
fn root_apply_live_of_a_layered_package() {
    require_root!();
    let t = scratch();
    let sr = sysroot(t.path());
    compose(&sr, &corpus("a"), "os/a", "a");
    arbor_ok(&["--sysroot", &sr, "deploy", "os/a"]);
    let cmdline = boot_first(&sr, t.path());
    let booted = deployment_dir(&sr, 0);
    let before = describe_tree(&booted.join("usr"));
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
