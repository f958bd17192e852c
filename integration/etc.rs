//! `/etc` of deployments through the real binary: `etc diff` (drift, and what a merge
//! did or will do, conflicts saved beside the file), `etc restore`, and the snapshot
//! of the `/etc` a deployment last ran with, kept across a rollback.

#[macro_use]
mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// `arbor ARGS…` on a "running" system whose kernel command line is `cmdline`.
fn booted(cmdline: &Path, args: &[&str]) -> serde_json::Value {
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
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn paths_with(list: &serde_json::Value, key: &str, value: &str) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .filter(|e| e[key] == value)
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn root_etc_diff_lists_drift_and_what_the_merge_did_with_conflicts_saved_beside() {
    as_root!();
    let t = scratch();
    let s = sysroot(t.path());
    compose(&s, &rootfs(t.path(), "1"), "os", "1");
    arbor_ok(&["--sysroot", &s, "deploy", "os"]);
    let cmdline = Path::new(&boot_first(&s, t.path())).to_path_buf();
    let etc = deployment_dir(&s, 0).join("etc");
    // Changed by the machine: a file the update changes too (a conflict), one it does
    // not (kept), a deletion, an addition, a mode.
    std::fs::write(etc.join("ssh/sshd_config"), "PermitRootLogin no\n").unwrap();
    std::fs::write(etc.join("hostname"), "web1\n").unwrap();
    std::fs::remove_file(etc.join("untouched")).unwrap();
    std::fs::write(etc.join("site.conf"), "local\n").unwrap();
    std::fs::set_permissions(
        etc.join("default/grub"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();

    let d = booted(&cmdline, &["--sysroot", &s, "etc", "diff", "--json"]);
    assert_eq!(d["booted"], true, "{d:#}");
    let drift = &d["drift"];
    assert_eq!(
        paths_with(drift, "change", "modified"),
        ["default/grub", "hostname", "ssh/sshd_config"],
        "{d:#}"
    );
    assert_eq!(paths_with(drift, "change", "added"), ["site.conf"]);
    assert_eq!(paths_with(drift, "change", "removed"), ["untouched"]);
    let grub = drift
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "default/grub")
        .unwrap();
    assert_eq!(grub["aspects"], serde_json::json!(["mode"]));
    assert!(
        d.get("merge").is_none(),
        "a booted deployment has no pending merge"
    );

    // The update changes sshd_config, motd and untouched. Staged first: what the
    // merge will do.
    compose(&s, &rootfs(&t.path().join("2"), "2"), "os", "2");
    booted(&cmdline, &["--sysroot", &s, "deploy", "--stage", "os"]);
    let staged = booted(
        &cmdline,
        &["--sysroot", &s, "etc", "diff", "staged", "--json"],
    );
    assert_eq!(staged["staged"], true, "{staged:#}");
    let will = &staged["merge"];
    assert_eq!(paths_with(will, "outcome", "conflict"), ["ssh/sshd_config"]);
    assert_eq!(paths_with(will, "outcome", "took-new-default"), ["motd"]);
    assert_eq!(paths_with(will, "outcome", "kept-deleted"), ["untouched"]);
    assert_eq!(
        paths_with(will, "outcome", "kept-local"),
        ["default/grub", "hostname", "site.conf"]
    );
    let text = String::from_utf8(
        Command::new(arbor_bin())
            .args(["--sysroot", &s, "etc", "diff", "staged"])
            .env("ARBOR_CMDLINE", &cmdline)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        text.contains("will:")
            && text.contains("/etc/ssh/sshd_config: conflict: local kept, new default in /etc/ssh/sshd_config.arbor-dist"),
        "{text}"
    );
    // Listed before the reboot by status too.
    let st = booted(&cmdline, &["--sysroot", &s, "status", "--json"]);
    assert_eq!(st["etc_conflicts"], serde_json::json!(["ssh/sshd_config"]));
    let text = String::from_utf8(
        Command::new(arbor_bin())
            .args(["--sysroot", &s, "status"])
            .env("ARBOR_CMDLINE", &cmdline)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        text.contains("/etc conflicts at the next boot") && text.contains("/etc/ssh/sshd_config"),
        "{text}"
    );

    // Deployed now: the merge did what it said; the conflict's new default is beside.
    booted(&cmdline, &["--sysroot", &s, "deploy", "os"]);
    let pending = booted(&cmdline, &["--sysroot", &s, "etc", "diff", "0", "--json"]);
    assert_eq!(pending["booted"], false);
    assert_eq!(
        paths_with(&pending["merge"], "outcome", "conflict"),
        ["ssh/sshd_config"],
        "{pending:#}"
    );
    let st = booted(&cmdline, &["--sysroot", &s, "status", "--json"]);
    assert_eq!(st["etc_conflicts"], serde_json::json!(["ssh/sshd_config"]));
    let new_etc = deployment_dir(&s, 0).join("etc");
    assert_eq!(
        std::fs::read_to_string(new_etc.join("ssh/sshd_config")).unwrap(),
        "PermitRootLogin no\n"
    );
    assert_eq!(
        std::fs::read_to_string(new_etc.join("ssh/sshd_config.arbor-dist")).unwrap(),
        "# sshd defaults 2\n"
    );
    assert_eq!(
        std::fs::read_to_string(new_etc.join("motd")).unwrap(),
        "welcome to 2\n"
    );
    assert!(!new_etc.join("untouched").exists());
    // The /etc being left was kept as a snapshot of the booted deployment.
    let snap = d_snapshot(&s, &cmdline, "1");
    let motd = arbor_ok(&["--sysroot", &s, "cat", &snap, "/site.conf"]);
    assert_eq!(motd, "local\n");
}

/// The snapshot of deployment INDEX as `etc diff` names it.
fn d_snapshot(s: &str, cmdline: &Path, index: &str) -> String {
    let d = booted(cmdline, &["--sysroot", s, "etc", "diff", index, "--json"]);
    d["snapshot"]
        .as_str()
        .unwrap_or_else(|| panic!("no snapshot: {d:#}"))
        .to_string()
}

#[test]
fn root_etc_restore_puts_defaults_back_records_it_and_refuses_what_it_cannot() {
    as_root!();
    let t = scratch();
    let s = sysroot(t.path());
    compose(&s, &rootfs(t.path(), "1"), "os", "1");
    arbor_ok(&["--sysroot", &s, "deploy", "os"]);
    let cmdline = Path::new(&boot_first(&s, t.path())).to_path_buf();
    let etc = deployment_dir(&s, 0).join("etc");
    std::fs::write(etc.join("hostname"), "web1\n").unwrap();
    std::fs::remove_dir_all(etc.join("ssh")).unwrap();
    std::fs::remove_file(etc.join("default/grub")).unwrap();
    std::fs::create_dir(etc.join("default/grub")).unwrap();

    let r = booted(
        &cmdline,
        &[
            "--sysroot",
            &s,
            "etc",
            "restore",
            "/etc/hostname",
            "/etc/ssh/sshd_config",
            "/etc/default/grub",
            "--json",
        ],
    );
    assert_eq!(
        std::fs::read_to_string(etc.join("hostname")).unwrap(),
        "debian\n"
    );
    assert_eq!(
        std::fs::read_to_string(etc.join("ssh/sshd_config")).unwrap(),
        "# sshd defaults 1\n"
    );
    assert!(
        etc.join("default/grub").is_file(),
        "a directory replaced by the file"
    );
    let d = booted(&cmdline, &["--sysroot", &s, "etc", "diff", "--json"]);
    assert_eq!(d["drift"], serde_json::json!([]), "{d:#}");
    // The /etc as it was is the snapshot; the history has the restore.
    let snap = r["snapshot"].as_str().unwrap();
    assert_eq!(
        arbor_ok(&["--sysroot", &s, "cat", snap, "/hostname"]),
        "web1\n"
    );
    let history = arbor_ok(&["--sysroot", &s, "history"]);
    assert!(history.contains("etc-restore"), "{history}");
    arbor_ok(&["--sysroot", &s, "fsck"]);

    for (path, why) in [
        ("/var/lib/x", "not below /etc"),
        ("etc/hostname", "not below /etc"),
        ("/etc/../x", "not a plain path"),
        ("/etc/not-in-the-image", "not in the image"),
    ] {
        let out = Command::new(arbor_bin())
            .args(["--sysroot", &s, "etc", "restore", path])
            .env("ARBOR_CMDLINE", &cmdline)
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && e.contains(why), "{path}: {e}");
    }
}

#[test]
fn root_rollback_boots_the_previous_deployment_with_its_own_etc() {
    as_root!();
    let t = scratch();
    let s = sysroot(t.path());
    compose(&s, &rootfs(t.path(), "1"), "os", "1");
    arbor_ok(&["--sysroot", &s, "deploy", "os"]);
    let cmdline = Path::new(&boot_first(&s, t.path())).to_path_buf();
    std::fs::write(deployment_dir(&s, 0).join("etc/site.conf"), "edited on 1\n").unwrap();
    compose(&s, &rootfs(&t.path().join("2"), "2"), "os", "2");
    booted(&cmdline, &["--sysroot", &s, "deploy", "os"]);
    // Boot 2; change /etc there; roll back.
    boot_first(&s, t.path());
    let two = deployment_dir(&s, 0).join("etc");
    std::fs::write(two.join("site.conf"), "edited on 2\n").unwrap();
    std::fs::write(two.join("only-on-2"), "x\n").unwrap();
    booted(&cmdline, &["--sysroot", &s, "rollback"]);
    assert_eq!(versions(&s), ["1", "2"]);
    let one = deployment_dir(&s, 0).join("etc");
    assert_eq!(
        std::fs::read_to_string(one.join("site.conf")).unwrap(),
        "edited on 1\n",
        "the previous deployment's /etc as it ran, not 2's merged back"
    );
    assert!(!one.join("only-on-2").exists());
    // What 2 ran with is its snapshot, taken when the machine was sent back.
    let snap = d_snapshot(&s, &cmdline, "1");
    assert_eq!(
        arbor_ok(&["--sysroot", &s, "cat", &snap, "/site.conf"]),
        "edited on 2\n"
    );
    arbor_ok(&["--sysroot", &s, "fsck"]);
}

/// The text of FILE below the /var that prepare-root binds for the deployment booted
/// by `cmdline`, or "absent".
fn var_file_at_boot(s: &str, cmdline: &Path, dir: &Path, file: &str) -> String {
    let out = in_namespace(
        s,
        s_(cmdline),
        dir,
        &format!("boot\ncat $T/var/{file} 2>/dev/null || echo absent\numount -R $T"),
    );
    out.lines().next().unwrap_or_default().trim().to_string()
}

/// One good boot of what boots next: the loader picks it, its health check passes.
fn boot_good(s: &str, dir: &Path) -> std::path::PathBuf {
    let cmdline = Path::new(&boot_first(s, dir)).to_path_buf();
    booted(&cmdline, &["--sysroot", s, "boot-complete"]);
    cmdline
}

fn s_(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn root_reset_at_each_level_and_rollback_brings_everything_back() {
    as_root!();
    let t = scratch();
    let s = sysroot(t.path());
    compose(&s, &rootfs(t.path(), "1"), "os", "1");
    arbor_ok(&["--sysroot", &s, "deploy", "os"]);
    let stateroot = Path::new(&s).join("arbor/deploy/debian");
    let cmdline = boot_good(&s, t.path());
    // The machine's own state: an /etc edit, its identity, data in /var, a home.
    std::fs::write(deployment_dir(&s, 0).join("etc/motd"), "edited\n").unwrap();
    std::fs::write(deployment_dir(&s, 0).join("etc/hostname"), "web1\n").unwrap();
    std::fs::create_dir_all(stateroot.join("var/lib/app")).unwrap();
    std::fs::write(stateroot.join("var/lib/app/data"), "app data\n").unwrap();
    std::fs::create_dir_all(stateroot.join("var/home/alice")).unwrap();
    std::fs::write(stateroot.join("var/home/alice/notes"), "alice's\n").unwrap();
    let ns = t.path().join("ns");

    // etc: a pristine /etc, the same /var.
    booted(&cmdline, &["--sysroot", &s, "reset", "--level", "etc"]);
    boot_good(&s, t.path());
    let etc = deployment_dir(&s, 0).join("etc");
    assert_eq!(
        std::fs::read_to_string(etc.join("motd")).unwrap(),
        "welcome to 1\n"
    );
    assert_eq!(
        std::fs::read_to_string(etc.join("hostname")).unwrap(),
        "web1\n",
        "the machine's identity is kept (reset_keep_etc)"
    );
    assert_eq!(
        var_file_at_boot(&s, &cmdline, &ns, "lib/app/data"),
        "app data"
    );
    booted(&cmdline, &["--sysroot", &s, "rollback"]);
    boot_good(&s, t.path());
    assert_eq!(
        std::fs::read_to_string(deployment_dir(&s, 0).join("etc/motd")).unwrap(),
        "edited\n",
        "rollback brings the /etc back"
    );

    // var: and an empty /var of its own.
    let r = booted(
        &cmdline,
        &["--sysroot", &s, "reset", "--level", "var", "--json"],
    );
    assert_eq!(r["var"], "var.1", "{r:#}");
    boot_good(&s, t.path());
    assert_eq!(
        var_file_at_boot(&s, &cmdline, &ns, "lib/app/data"),
        "absent"
    );
    assert_eq!(
        var_file_at_boot(&s, &cmdline, &ns, "home/alice/notes"),
        "absent"
    );
    std::fs::write(stateroot.join("var.1/after-reset"), "new\n").unwrap();
    booted(&cmdline, &["--sysroot", &s, "rollback"]);
    boot_good(&s, t.path());
    assert_eq!(
        var_file_at_boot(&s, &cmdline, &ns, "lib/app/data"),
        "app data"
    );
    assert_eq!(
        std::fs::read_to_string(deployment_dir(&s, 0).join("etc/hostname")).unwrap(),
        "web1\n"
    );

    // all: only what the policy keeps (/home by default) comes along.
    let r = booted(
        &cmdline,
        &["--sysroot", &s, "reset", "--level", "all", "--json"],
    );
    let var = r["var"].as_str().unwrap().to_string();
    assert_eq!(r["kept"], serde_json::json!(["home"]), "{r:#}");
    boot_good(&s, t.path());
    assert_eq!(
        var_file_at_boot(&s, &cmdline, &ns, "home/alice/notes"),
        "alice's"
    );
    assert_eq!(
        var_file_at_boot(&s, &cmdline, &ns, "lib/app/data"),
        "absent"
    );
    assert_eq!(
        std::fs::read_to_string(deployment_dir(&s, 0).join("etc/motd")).unwrap(),
        "welcome to 1\n"
    );
    let history = arbor_ok(&["--sysroot", &s, "history"]);
    assert!(history.matches("reset").count() >= 3, "{history}");
    booted(&cmdline, &["--sysroot", &s, "rollback"]);
    boot_good(&s, t.path());
    assert_eq!(
        var_file_at_boot(&s, &cmdline, &ns, "lib/app/data"),
        "app data"
    );

    // Refusals: a staged update, a level that is not one of the three.
    compose(&s, &rootfs(&t.path().join("2"), "2"), "os", "2");
    booted(&cmdline, &["--sysroot", &s, "deploy", "--stage", "os"]);
    let out = Command::new(arbor_bin())
        .args(["--sysroot", &s, "reset", "--level", "etc"])
        .env("ARBOR_CMDLINE", &cmdline)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("staged") && e.contains("reboot"),
        "{e}"
    );
    let e = arbor(&["--sysroot", &s, "reset", "--level", "everything"]);
    assert_eq!(e.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&e.stderr).contains("etc, var, all"));

    // The /var folders go once no deployment uses them.
    booted(&cmdline, &["--sysroot", &s, "deploy", "os"]);
    booted(&cmdline, &["--sysroot", &s, "cleanup"]);
    let in_use: Vec<String> = status(&s)
        .iter()
        .map(|d| d["origin"]["var"].as_str().unwrap_or("var").to_string())
        .collect();
    for v in ["var", "var.1", &var] {
        assert_eq!(
            stateroot.join(v).exists(),
            in_use.iter().any(|u| u == v),
            "{v} (in use: {in_use:?})"
        );
    }
    arbor_ok(&["--sysroot", &s, "fsck"]);
}

/// Writes the four files of users and groups of tree `r`: a base with root and
/// daemon, plus `extra` (name, id, password hash) as a user with a group of its own;
/// the shadow files 640 root:shadow, as Debian ships them.
fn users(r: &Path, extra: &[(&str, u32, &str)]) {
    use std::os::unix::fs::PermissionsExt;
    let etc = r.join("etc");
    let mut passwd =
        "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
            .to_string();
    let mut group = "root:x:0:\ndaemon:x:1:\nshadow:x:42:\n".to_string();
    let mut shadow = "root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n".to_string();
    let mut gshadow = "root:*::\ndaemon:*::\nshadow:*::\n".to_string();
    for (name, id, hash) in extra {
        passwd += &format!("{name}:x:{id}:{id}::/home/{name}:/bin/bash\n");
        group += &format!("{name}:x:{id}:\n");
        shadow += &format!("{name}:{hash}:20000:0:99999:7:::\n");
        gshadow += &format!("{name}:!::\n");
    }
    for (file, text) in [
        ("passwd", passwd),
        ("group", group),
        ("shadow", shadow),
        ("gshadow", gshadow),
    ] {
        let p = etc.join(file);
        std::fs::write(&p, text).unwrap();
        if file.ends_with("shadow") {
            std::os::unix::fs::chown(&p, Some(0), Some(42)).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        }
    }
}

/// Users and groups that both the machine and the update changed are merged entry
/// by entry: the machine's user (and the password it set for root) and the new
/// release's system user both end up in the new `/etc`, the shadow files keep their
/// owner and mode, and a uid both would use stops the deploy with nothing deployed.
#[test]
fn root_users_and_groups_are_merged_entry_by_entry() {
    as_root!();
    use std::os::unix::fs::MetadataExt;
    let t = scratch();
    let s = sysroot(t.path());
    let tree = |v: &str, extra: &[(&str, u32, &str)]| {
        let r = rootfs(&t.path().join(v), v);
        users(&r, extra);
        compose(&s, &r, "os", v);
    };
    tree("1", &[]);
    arbor_ok(&["--sysroot", &s, "deploy", "os"]);
    // The administrator adds alice and sets root's password.
    let etc = deployment_dir(&s, 0).join("etc");
    let edit = |file: &str, f: &dyn Fn(String) -> String| {
        let p = etc.join(file);
        std::fs::write(&p, f(std::fs::read_to_string(&p).unwrap())).unwrap();
    };
    edit("passwd", &|t| {
        t + "alice:x:1000:1000:Alice:/home/alice:/bin/bash\n"
    });
    edit("group", &|t| t + "alice:x:1000:\n");
    edit("shadow", &|t| {
        t.replace("root:*:", "root:$y$j9T$salt$roothash:")
            + "alice:$y$j9T$salt$alicehash:20000:0:99999:7:::\n"
    });
    edit("gshadow", &|t| t + "alice:!::\n");

    // The new release brings a system user of its own.
    tree("2", &[("systemd-timesync", 996, "!*")]);
    let out: serde_json::Value =
        serde_json::from_str(&arbor_ok(&["--sysroot", &s, "deploy", "os", "--json"])).unwrap();
    let merged = paths_with(&out["etc_merge"], "outcome", "merged-entries");
    assert_eq!(merged, ["group", "gshadow", "passwd", "shadow"], "{out:#}");
    let new_etc = deployment_dir(&s, 0).join("etc");
    let read = |f: &str| std::fs::read_to_string(new_etc.join(f)).unwrap();
    for (file, want) in [
        ("passwd", "alice:x:1000:1000:Alice:/home/alice:/bin/bash"),
        ("passwd", "systemd-timesync:x:996:996:"),
        ("group", "alice:x:1000:"),
        ("group", "systemd-timesync:x:996:"),
        ("shadow", "root:$y$j9T$salt$roothash:"),
        ("shadow", "alice:$y$j9T$salt$alicehash:"),
        ("shadow", "systemd-timesync:!*:"),
        ("gshadow", "alice:!::"),
        ("gshadow", "systemd-timesync:!::"),
    ] {
        assert!(
            read(file).contains(want),
            "{file} lacks {want}:\n{}",
            read(file)
        );
    }
    for f in ["shadow", "gshadow"] {
        let m = std::fs::metadata(new_etc.join(f)).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o640, 0, 42), "{f}");
    }
    assert!(!new_etc.join("passwd.arbor-dist").exists());

    // A release whose new user takes alice's uid: refused, nothing deployed.
    tree(
        "3",
        &[("systemd-timesync", 996, "!*"), ("_clash", 1000, "!*")],
    );
    let before = status(&s).len();
    let err = arbor_err(&["--sysroot", &s, "deploy", "os"]);
    for want in ["id 1000 is", "'alice'", "'_clash'", "nothing was deployed"] {
        assert!(err.contains(want), "{want}: {err}");
    }
    assert_eq!(status(&s).len(), before);
    assert_eq!(status(&s)[0]["version"], "2");
}
