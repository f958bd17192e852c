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
fn root_export_of_corpus_a_passes_ostree_fsck_and_checks_out_equal() {
    as_root!();
    export_checks_out_equal(&corpus("a"));
}

#[test]
fn root_export_keeps_xattrs_caps_and_owners() {
    as_root!();
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
fn root_ostree_commit_of_corpus_a_imports_as_the_same_arbor_commit() {
    as_root!();
    import_equals_commit(&corpus("a"));
}

#[test]
fn root_import_keeps_xattrs_caps_and_owners() {
    as_root!();
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
fn root_mount_of_corpus_a_matches_a_checkout_and_unmounts() {
    as_root!();
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
fn root_mount_shows_xattrs_and_ctrl_c_unmounts() {
    as_root!();
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

/// OSTree's `ostree-path-traverse` fixture, made here: commits whose root dirtree
/// names a file `../afile`, `/x`, `.`, `a/b` or the empty name, written straight into
/// an OSTree repository (libostree would not write them). The import refuses each
/// with the name, and neither a ref nor a commit lands in the arbor store.
#[test]
fn root_import_refuses_ostree_commits_whose_names_leave_the_tree() {
    use ostree::glib::Variant;
    use ostree::glib::prelude::*;
    use sha2::Digest;
    as_root!();
    let t = scratch();
    let orepo = t.path().join("ostree");
    let o = format!("--repo={}", orepo.display());
    ostree(&[&o, "init", "--mode=archive"]);
    let tree = t.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("afile"), "payload\n").unwrap();
    let good = ostree(&[
        &o,
        "commit",
        "-b",
        "good",
        "-s",
        "good",
        &format!("--tree=dir={}", tree.display()),
    ]);
    let good = good.trim();
    let repo = ostree::Repo::new_for_path(&orepo);
    repo.open(ostree::gio::Cancellable::NONE).unwrap();
    let commit = repo.load_variant(ostree::ObjectType::Commit, good).unwrap();
    let root_tree = hex::encode(commit.child_value(6).fixed_array::<u8>().unwrap());
    let dirtree = repo
        .load_variant(ostree::ObjectType::DirTree, &root_tree)
        .unwrap();
    let file_csum: Vec<u8> = dirtree
        .child_value(0)
        .child_value(0)
        .child_value(1)
        .fixed_array::<u8>()
        .unwrap()
        .to_vec();
    // Writes a metadata object as an archive repository stores it; returns its checksum.
    let put = |v: &Variant, ext: &str| -> String {
        let bytes = v.data().to_vec();
        let csum = hex::encode(sha2::Sha256::digest(&bytes));
        let dir = orepo.join("objects").join(&csum[..2]);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{}.{ext}", &csum[2..])), bytes).unwrap();
        csum
    };
    let arepo = t.path().join("repo");
    arbor_ok(&["--repo", s(&arepo), "init"]);
    for (i, name) in ["../afile", "/x", ".", "a/b", ""].into_iter().enumerate() {
        let files = vec![(name.to_string(), file_csum.clone())];
        let dirs: Vec<(String, Vec<u8>, Vec<u8>)> = Vec::new();
        let bad_tree = put(&(files, dirs).to_variant(), "dirtree");
        let children: Vec<Variant> = (0..commit.n_children())
            .map(|c| match c {
                6 => hex::decode(&bad_tree).unwrap().to_variant(),
                _ => commit.child_value(c),
            })
            .collect();
        let bad_commit = put(&Variant::tuple_from_iter(children), "commit");
        let branch = format!("bad{i}");
        std::fs::write(
            orepo.join("refs/heads").join(&branch),
            format!("{bad_commit}\n"),
        )
        .unwrap();
        let err = arbor_err(&[
            "--repo",
            s(&arepo),
            "ostree",
            "import",
            "--ostree-repo",
            s(&orepo),
            &branch,
        ]);
        let why = ["is not allowed", "contains '/' or NUL", "empty file name"];
        assert!(
            err.contains("OSTree dirtree") && why.iter().any(|w| err.contains(w)),
            "{name:?}: {err}"
        );
        let refs = arbor_ok(&["--repo", s(&arepo), "refs"]);
        assert!(refs.trim().is_empty(), "{name:?}: a ref landed: {refs}");
    }
    let fsck = arbor_ok(&["--repo", s(&arepo), "fsck"]);
    assert!(fsck.contains("no problems"), "{fsck}");
    assert_eq!(
        object_count(&arepo),
        0,
        "objects of refused imports were kept"
    );
}
