//! Helpers for the tests of live changes: a booted deployment with another pending,
//! booted in a mount namespace as prepare-root does.

use std::path::Path;
use std::process::Command;

use super::*;

/// `arbor ARGS…` as seen from the booted system (ARBOR_CMDLINE), asserting success.
pub fn booted_ok(cmdline: &str, args: &[&str]) -> String {
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

/// Two small images whose `/etc` defaults differ in every way an update can change
/// them: a file, a symlink, a directory's mode and content, a file that becomes a
/// directory, a directory that becomes a file, a removed file, a new directory.
pub fn etc_images(sr: &str, dir: &Path) {
    let one = rootfs(dir, "1");
    let two = rootfs(dir, "2");
    let write = |root: &Path, rel: &str, text: &str| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write(&one, "etc/profile.d/a.sh", "a\n");
    write(&one, "etc/cron.conf", "file\n");
    write(&one, "etc/old.d/x", "x\n");
    write(&one, "etc/obsolete", "old\n");
    write(&two, "etc/profile.d/a.sh", "a\n");
    write(&two, "etc/profile.d/b.sh", "b\n");
    write(&two, "etc/cron.conf/main", "now a directory\n");
    write(&two, "etc/old.d", "now a file\n");
    write(&two, "etc/newdir/nested/f", "new\n");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        two.join("etc/profile.d"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    std::fs::remove_file(two.join("etc/localtime")).unwrap();
    std::os::unix::fs::symlink(
        "/usr/share/zoneinfo/Europe/Paris",
        two.join("etc/localtime"),
    )
    .unwrap();
    compose(sr, &one, "os/1", "1");
    compose(sr, &two, "os/2", "2");
}

/// Boots image 1 with local `/etc` edits and deploys image 2 as pending, whose `/etc`
/// is then what a live merge must produce. Returns the kernel command line.
pub fn booted_1_pending_2(sr: &str, dir: &Path) -> String {
    etc_images(sr, dir);
    arbor_ok(&["--sysroot", sr, "deploy", "os/1"]);
    let cmdline = boot_first(sr, dir);
    let etc = deployment_dir(sr, 0).join("etc");
    std::fs::write(etc.join("hostname"), "edited locally\n").unwrap();
    std::fs::write(etc.join("mine"), "added locally\n").unwrap();
    std::fs::remove_file(etc.join("default/grub")).unwrap();
    booted_ok(&cmdline, &["--sysroot", sr, "deploy", "os/2"]);
    cmdline
}

/// The shell lines that boot and put the run folder on a tmpfs, as `/run` is on a
/// machine: another mount than `/etc`.
pub fn boot_with_tmpfs_run(sr: &str) -> String {
    format!("boot\nmkdir -p {sr}/run\nmount -t tmpfs run {sr}/run\n")
}

/// Paths of `now` that are neither as in `old` nor as in `new`, and paths both have
/// that `now` lacks.
pub fn neither_old_nor_new(
    old: &std::collections::BTreeMap<String, String>,
    new: &std::collections::BTreeMap<String, String>,
    now: &std::collections::BTreeMap<String, String>,
) -> Vec<String> {
    let mut bad = Vec::new();
    let paths: std::collections::BTreeSet<&String> =
        old.keys().chain(new.keys()).chain(now.keys()).collect();
    for p in paths {
        let n = now.get(p);
        if n != old.get(p) && n != new.get(p) {
            bad.push(format!(
                "{p}: {n:?} (old {:?}, new {:?})",
                old.get(p),
                new.get(p)
            ));
        }
    }
    bad
}
