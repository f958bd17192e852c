//! OSTree interop through real libostree and the `ostree` tool, and the FUSE view of a
//! commit through the kernel, on corpus tree `a` and on a tree with xattrs and caps.
#![allow(clippy::print_stderr, clippy::print_stdout)] // tests may say why they skip

#[macro_use]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn ostree(args: &[&str]) -> String {
    let out = Command::new("ostree")
        .args(args)
        .output()
        .expect("ostree (package ostree) is needed");
    assert!(
        out.status.success(),
        "ostree {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn content_checksum(repo: &Path, rev: &str) -> String {
    let show = ostree(&[&format!("--repo={}", repo.display()), "show", rev]);
    show.lines()
        .find_map(|l| l.strip_prefix("ContentChecksum:"))
        .expect("ContentChecksum")
        .trim()
        .to_string()
}

fn setup(tree: &Path) -> (tempfile::TempDir, String) {
    let t = scratch();
    let repo = t.path().join("repo");
    arbor_ok(&["--repo", s(&repo), "init"]);
    arbor_ok(&[
        "--repo",
        s(&repo),
        "commit",
        "-b",
        "os",
        "-s",
        "tree",
        "--timestamp",
        "1700000000",
        "--metadata",
        "version=12.0",
        s(tree),
    ]);
    (t, repo.to_str().unwrap().to_string())
}

fn export_checks_out_equal(tree: &Path) {
    let (t, repo) = setup(tree);
    let orepo = t.path().join("ostree");
    ostree(&[
        &format!("--repo={}", orepo.display()),
        "init",
        "--mode=bare",
    ]);
    let csum = arbor_ok(&[
        "--repo",
        &repo,
        "ostree",
        "export",
        "os",
        "--ostree-repo",
        s(&orepo),
        "-b",
        "exported",
    ]);
    assert_eq!(csum.trim().len(), 64);
    let fsck = ostree(&[&format!("--repo={}", orepo.display()), "fsck"]);
    assert!(fsck.contains("no errors found"), "{fsck}");
    let (oco, aco) = (t.path().join("ostree-co"), t.path().join("arbor-co"));
    ostree(&[
        &format!("--repo={}", orepo.display()),
        "checkout",
        "-H",
        "exported",
        s(&oco),
    ]);
    arbor_ok(&["--repo", &repo, "checkout", "os", s(&aco)]);
    assert_eq!(describe_tree(&oco), describe_tree(&aco));
    // OSTree's own commit of the source tree has the same content checksum.
    ostree(&[
        &format!("--repo={}", orepo.display()),
        "commit",
        "-b",
        "native",
        &format!("--tree=dir={}", tree.display()),
    ]);
    assert_eq!(
        content_checksum(&orepo, "exported"),
        content_checksum(&orepo, "native")
    );
    let show = ostree(&[&format!("--repo={}", orepo.display()), "show", "exported"]);
    assert!(
        show.contains("Version: 12.0") && show.contains("2023-11-14 22:13:20"),
        "{show}"
    );
}

#[test]
#[cfg_attr(not(arbor_root), ignore = "needs root: run the tests as root")]
fn root_export_of_corpus_a_passes_ostree_fsck_and_checks_out_equal() {
    require_root!();
    export_checks_out_equal(&corpus("a"));
}

#[test]
#[cfg_attr(not(arbor_root), ignore = "needs root: run the tests as root")]
fn root_export_keeps_xattrs_caps_and_owners() {
    require_root!();
    let t = scratch();
    make_feature_tree(&t.path().join("src"));
    export_checks_out_equal(&t.path().join("src"));
}

fn import_equals_commit(tree: &Path) {
    let t = scratch();
    let orepo = t.path().join("ostree");
    let o = format!("--repo={}", orepo.display());
    ostree(&[&o, "init", "--mode=bare"]);
    ostree(&[
        &o,
        "commit",
        "-b",
        "deb/a",
        "-s",
        "tree",
        "--timestamp=@1700000000",
        "--add-metadata-string=version=12.0",
        &format!("--tree=dir={}", tree.display()),
    ]);
    let repo = t.path().join("repo");
    arbor_ok(&["--repo", s(&repo), "init"]);
    let imported = arbor_ok(&[
        "--repo",
        s(&repo),
        "ostree",
        "import",
        "--ostree-repo",
        s(&orepo),
        "deb/a",
    ]);
    let committed = arbor_ok(&[
        "--repo",
        s(&repo),
        "commit",
        "-b",
        "direct",
        "-s",
        "tree",
        "--timestamp",
        "1700000000",
        "--metadata",
        "version=12.0",
        s(tree),
    ]);
    assert_eq!(
        imported.trim(),
        committed.trim(),
        "import of ostree's commit differs from arbor's commit of the tree"
    );
    assert!(arbor_ok(&["--repo", s(&repo), "fsck"]).contains("no problems"));
    let err = arbor_err(&[
        "--repo",
        s(&repo),
        "ostree",
        "import",
        "--ostree-repo",
        s(&orepo),
        "no/such/ref",
    ]);
    assert!(err.contains("no/such/ref"), "{err}");
}

#[test]
#[cfg_attr(not(arbor_root), ignore = "needs root: run the tests as root")]
fn root_ostree_commit_of_corpus_a_imports_as_the_same_arbor_commit() {
    require_root!();
    import_equals_commit(&corpus("a"));
}

#[test]
#[cfg_attr(not(arbor_root), ignore = "needs root: run the tests as root")]
fn root_import_keeps_xattrs_caps_and_owners() {
    require_root!();
    let t = scratch();
    make_feature_tree(&t.path().join("src"));
    import_equals_commit(&t.path().join("src"));
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mounted(p: &Path) -> bool {
    Command::new("mountpoint")
        .arg("-q")
        .arg(p)
        .status()
        .unwrap()
        .success()
}

#[test]
#[cfg_attr(not(arbor_root), ignore = "needs root: run the tests as root")]
fn root_mount_of_corpus_a_matches_a_checkout_and_unmounts() {
    require_root!();
    let (t, repo) = setup(&corpus("a"));
    let (mnt, co) = (t.path().join("mnt"), t.path().join("co"));
    std::fs::create_dir(&mnt).unwrap();
    arbor_ok(&["--repo", &repo, "checkout", "os", s(&co)]);
    let out = arbor_ok(&["--repo", &repo, "mount", "os", s(&mnt)]);
    assert!(out.contains("mounted"), "{out}");
    assert!(mounted(&mnt));
    let result = std::panic::catch_unwind(|| {
        assert_eq!(describe_tree(&mnt), describe_tree(&co));
        // Inode numbers are stable for the mount's life, and paths of one object share one.
        let ino = inode(&mnt.join("usr/bin/perl"));
        assert_eq!(ino, inode(&mnt.join("usr/bin/perl")));
        assert_eq!(ino, inode(&mnt.join("usr/bin/perl5.36.0")));
        let err = std::fs::OpenOptions::new()
            .write(true)
            .open(mnt.join("etc/hostname"))
            .unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(rustix::io::Errno::ROFS.raw_os_error())
        );
        assert!(std::fs::write(mnt.join("new-file"), b"x").is_err());
    });
    let st = Command::new("umount").arg(&mnt).status().unwrap();
    assert!(st.success());
    result.unwrap();
    wait_until("the FUSE server to exit", || {
        !String::from_utf8_lossy(
            &Command::new("pgrep")
                .args([
                    "-f",
                    &format!("mount --foreground [0-9a-f]* {}", mnt.display()),
                ])
                .output()
                .unwrap()
                .stdout,
        )
        .contains(char::is_numeric)
    });
}

#[test]
#[cfg_attr(not(arbor_root), ignore = "needs root: run the tests as root")]
fn root_mount_shows_xattrs_and_ctrl_c_unmounts() {
    require_root!();
    let t0 = scratch();
    make_feature_tree(&t0.path().join("src"));
    let (t, repo) = setup(&t0.path().join("src"));
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut server = Command::new(arbor_bin())
        .args(["--repo", &repo, "mount", "--foreground", "os", s(&mnt)])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the mount", || mounted(&mnt));
    let co = t.path().join("co");
    arbor_ok(&["--repo", &repo, "checkout", "os", s(&co)]);
    let same = describe_tree(&mnt) == describe_tree(&co);
    let caps = Command::new("getcap")
        .arg(mnt.join("usr/bin/ping"))
        .output()
        .unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(server.id() as i32).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let status = server.wait().unwrap();
    assert!(same, "mount and checkout differ");
    assert!(String::from_utf8_lossy(&caps.stdout).contains("cap_net_raw"));
    assert!(status.success(), "server after SIGINT: {status}");
    assert!(!mounted(&mnt), "still mounted after SIGINT");
    let err = arbor_err(&[
        "--repo",
        &repo,
        "mount",
        "os",
        s(&t.path().join("no-such-dir")),
    ]);
    assert!(err.contains("no-such-dir"), "{err}");
}
