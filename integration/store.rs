//! End-to-end tests of the object store through the real `arbor` binary, on real
//! Debian trees from the shared corpus and on small trees made here.
//!
//! Bare repositories store owners, so these tests need root (CI is root); each one
//! says so in its name and stops with a message otherwise.
#![allow(clippy::print_stderr, clippy::print_stdout)] // tests may say why they skip

#[macro_use]
mod common;

use std::path::Path;
use std::process::Command;

use arbor_store::encoding::{DirEntry, DirTree, FileEntry};
use arbor_store::{Commit, ObjectId, ObjectKind};
use common::*;

fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&arbor_ok(args)).unwrap()
}

fn init_repo(dir: &Path) -> String {
    let repo = dir.join("repo");
    arbor_ok(&["--repo", s(&repo), "init"]);
    repo.to_str().unwrap().to_string()
}

fn commit(repo: &str, branch: &str, tree: &Path) -> String {
    arbor_ok(&[
        "--repo",
        repo,
        "commit",
        "-b",
        branch,
        "--timestamp",
        "1700000000",
        s(tree),
    ])
    .trim()
    .to_string()
}

/// A scratch folder holding a feature tree at `src` committed to `branch` in `repo`.
fn feature_repo(branch: &str) -> (tempfile::TempDir, std::path::PathBuf, String) {
    let t = scratch();
    let src = t.path().join("src");
    make_feature_tree(&src);
    let repo = init_repo(t.path());
    commit(&repo, branch, &src);
    (t, src, repo)
}

fn assert_same_tree(src: &Path, dest: &Path) {
    let (a, b) = (describe_tree(src), describe_tree(dest));
    assert_eq!(a.len(), b.len(), "entry counts differ");
    for (path, info) in &a {
        assert_eq!(Some(info), b.get(path), "{path} differs");
    }
}

#[test]
fn root_corpus_a_round_trip_keeps_content_modes_owners_and_links() {
    as_root!();
    let src = corpus("a");
    let t = scratch();
    let repo = init_repo(t.path());
    commit(&repo, "debian/a", &src);
    let dest = t.path().join("checkout");
    arbor_ok(&[
        "--repo",
        &repo,
        "checkout",
        "--hardlink",
        "debian/a",
        s(&dest),
    ]);
    assert_same_tree(&src, &dest);
    // Every group of hardlinks in the source is one inode in the checkout.
    let groups = hardlink_groups(&src);
    assert!(!groups.is_empty(), "corpus a has hardlinks (perl, ...)");
    for g in groups {
        let inodes: std::collections::BTreeSet<u64> =
            g.iter().map(|p| inode(&dest.join(p))).collect();
        assert_eq!(
            inodes.len(),
            1,
            "hardlink group {g:?} split in the checkout"
        );
    }
    assert!(arbor_ok(&["--repo", &repo, "fsck"]).contains("no problems"));
}

#[test]
fn root_xattrs_caps_setuid_owners_survive_hardlink_and_copy_checkouts() {
    as_root!();
    let (t, src, repo) = feature_repo("features");
    for (mode, dest) in [("--hardlink", "co-link"), ("--copy", "co-copy")] {
        let dest = t.path().join(dest);
        arbor_ok(&["--repo", &repo, "checkout", mode, "features", s(&dest)]);
        assert_same_tree(&src, &dest);
        let caps = Command::new("getcap")
            .arg(dest.join("usr/bin/ping"))
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&caps.stdout).contains("cap_net_raw"),
            "{mode}: capability lost"
        );
    }
    // Copies share no inode with the store; hardlinks do.
    let objects_inode = |p: &str| inode(&t.path().join(p).join("usr/big"));
    assert_ne!(objects_inode("co-link"), objects_inode("co-copy"));
}

#[test]
fn root_same_tree_in_two_fresh_repos_gives_the_same_commit_id() {
    as_root!();
    let src = corpus("a");
    let t = scratch();
    let (r1, r2) = (t.path().join("r1"), t.path().join("r2"));
    let run = |repo: &Path| {
        arbor_ok(&["--repo", s(repo), "init"]);
        let out = Command::new(arbor_bin())
            .args([
                "--repo",
                s(repo),
                "commit",
                "-b",
                "debian/a",
                "-s",
                "corpus a",
                "--metadata",
                "version=12.0",
                s(&src),
            ])
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let (a, b) = (run(&r1), run(&r2));
    assert_eq!(a, b, "same tree and inputs, different commit ids");
    assert_eq!(a.len(), 64);
    // Without a fixed time the commits differ, but the trees never do.
    let r3 = init_repo(t.path());
    arbor_ok(&["--repo", &r3, "commit", "-b", "x", s(&src)]);
    let tree =
        |repo: &str| json(&["--repo", repo, "show", "--json", "debian/a"])["root_tree"].clone();
    let tree3 = json(&["--repo", &r3, "show", "--json", "x"])["root_tree"].clone();
    assert_eq!(tree(s(&r1)), tree3);
}

#[test]
fn root_recommit_of_unchanged_tree_and_of_its_checkout_reads_no_file() {
    as_root!();
    let src = corpus("small"); // built long before: no racily-clean files
    let t = scratch();
    let repo = init_repo(t.path());
    let stats = |args: &[&str]| json(args)["stats"].clone();
    let first = stats(&["--repo", &repo, "commit", "--json", "-b", "s", s(&src)]);
    assert!(first["files_hashed"].as_u64().unwrap() > 4000);
    let again = stats(&["--repo", &repo, "commit", "--json", "-b", "s", s(&src)]);
    assert_eq!(
        again["files_hashed"], 0,
        "unchanged source was reread: {again}"
    );
    assert_eq!(again["objects_written"], 1, "only the new commit object");
    let dest = t.path().join("co");
    arbor_ok(&["--repo", &repo, "checkout", "s", s(&dest)]);
    let co = stats(&["--repo", &repo, "commit", "--json", "-b", "co", s(&dest)]);
    assert_eq!(
        co["files_hashed"], 0,
        "hardlinked checkout was reread: {co}"
    );
    // A replaced file (new inode; writing in place would edit the store's object
    // through the hardlink) is noticed and only it is hashed.
    std::fs::remove_file(dest.join("etc/hostname")).unwrap();
    std::fs::write(dest.join("etc/hostname"), b"changed-host\n").unwrap();
    let changed = stats(&["--repo", &repo, "commit", "--json", "-b", "co", s(&dest)]);
    assert_eq!(changed["files_hashed"], 1, "{changed}");
    let diff = arbor_ok(&["--repo", &repo, "diff", "s", "co"]);
    assert_eq!(diff.trim(), "M    /etc/hostname");
}

/// An emptied commit, a truncated one and a missing one (OSTree's corrupt-repo cases):
/// fsck names each, and log, show and diff fail with a clear error, never a panic.
#[test]
fn root_emptied_truncated_and_missing_commits_are_reported_not_crashed_on() {
    as_root!();
    let (t, src, repo) = feature_repo("a");
    let mut ids = vec![
        json(&["--repo", &repo, "show", "--json", "a"])["id"]
            .as_str()
            .unwrap()
            .to_string(),
    ];
    for b in ["b", "c", "d"] {
        std::fs::write(src.join(format!("usr/{b}")), b).unwrap();
        commit(&repo, b, &src);
        ids.push(
            json(&["--repo", &repo, "show", "--json", b])["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let path =
        |id: &str| Path::new(&repo).join(format!("objects/{}/{}.commit", &id[..2], &id[2..]));
    std::fs::write(path(&ids[1]), b"").unwrap();
    let bytes = std::fs::read(path(&ids[2])).unwrap();
    std::fs::write(path(&ids[2]), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::remove_file(path(&ids[3])).unwrap();
    let fsck = arbor(&["--repo", &repo, "fsck"]);
    let report = String::from_utf8_lossy(&fsck.stdout);
    assert_eq!(fsck.status.code(), Some(1), "{report}");
    for id in &ids[1..] {
        assert!(
            report.contains(id.as_str()),
            "fsck does not name {id}:\n{report}"
        );
    }
    for (branch, id) in [("b", &ids[1]), ("c", &ids[2]), ("d", &ids[3])] {
        for args in [
            vec!["log", branch],
            vec!["show", branch],
            vec!["diff", "a", branch],
            vec!["ls", branch],
        ] {
            let mut a = vec!["--repo", repo.as_str()];
            a.extend(&args);
            let out = arbor(&a);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
            assert!(!err.contains("panicked"), "{args:?}: {err}");
            assert!(
                err.contains(&id[..12]) || err.contains(id.as_str()),
                "{args:?}: {err}"
            );
        }
    }
    drop(t);
}

#[test]
fn root_fsck_names_a_flipped_byte_and_a_deleted_object() {
    as_root!();
    let (_t, _src, repo) = feature_repo("f");
    assert!(arbor_ok(&["--repo", &repo, "fsck"]).contains("no problems"));
    let object_of = |path: &str| -> ObjectId {
        json(&["--repo", &repo, "ls", "--json", "f", path])[0]["object"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let flipped = object_of("/usr/bin/su");
    let deleted = object_of("/etc/ssl/key");
    let flipped_path = Path::new(&repo)
        .join("objects")
        .join(flipped.relative_path(ObjectKind::File));
    let mut bytes = std::fs::read(&flipped_path).unwrap();
    bytes[3] ^= 0x01;
    std::fs::write(&flipped_path, bytes).unwrap(); // keeps inode, mode and owner
    std::fs::remove_file(
        Path::new(&repo)
            .join("objects")
            .join(deleted.relative_path(ObjectKind::File)),
    )
    .unwrap();
    let out = arbor(&["--repo", &repo, "fsck"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("corrupt: object {flipped}")),
        "{text}"
    );
    assert!(text.contains("used by f:/usr/bin/su"), "{text}");
    assert!(
        text.contains(&format!("missing: object {deleted}")),
        "{text}"
    );
    assert!(text.contains("used by f:/etc/ssl/key"), "{text}");
    let out = arbor(&["--repo", &repo, "fsck", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["problems"].as_array().unwrap().len(), 2);
}

/// Stores `bytes` as an object the way a hostile peer would: correctly named.
fn plant(repo: &str, kind: ObjectKind, bytes: &[u8]) -> ObjectId {
    let id = ObjectId::of(bytes);
    let p = Path::new(repo).join("objects").join(id.relative_path(kind));
    std::fs::write(p, bytes).unwrap();
    id
}

#[test]
fn root_hostile_trees_are_refused_and_nothing_is_written_outside_dest() {
    as_root!();
    let t = scratch();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("f"), b"payload").unwrap();
    std::os::unix::fs::symlink(t.path(), src.join("link")).unwrap();
    let repo = init_repo(t.path());
    commit(&repo, "good", &src);
    let good = json(&["--repo", &repo, "show", "--json", "good"]);
    let meta: ObjectId = good["root_meta"].as_str().unwrap().parse().unwrap();
    let file: ObjectId = json(&["--repo", &repo, "ls", "--json", "good", "/f"])[0]["object"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let link: ObjectId = json(&["--repo", &repo, "ls", "--json", "good", "/link"])[0]["object"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let empty = plant(&repo, ObjectKind::DirTree, &DirTree::default().encode());
    let fe = |name: &[u8], id: ObjectId| FileEntry {
        name: name.to_vec(),
        file: id,
    };
    let de = |name: &[u8], tree: ObjectId| DirEntry {
        name: name.to_vec(),
        tree,
        meta,
    };
    let cases: Vec<(&str, DirTree, &str)> = vec![
        (
            "dotdot",
            DirTree {
                files: vec![fe(b"..", file)],
                dirs: vec![],
            },
            "'..' is not allowed",
        ),
        (
            "slash",
            DirTree {
                files: vec![fe(b"../escaped", file)],
                dirs: vec![],
            },
            "contains '/'",
        ),
        (
            "empty",
            DirTree {
                files: vec![fe(b"", file)],
                dirs: vec![],
            },
            "empty file name",
        ),
        (
            "dirslash",
            DirTree {
                files: vec![],
                dirs: vec![de(b"a/b", empty)],
            },
            "contains '/'",
        ),
        (
            "dot",
            DirTree {
                files: vec![],
                dirs: vec![de(b".", empty)],
            },
            "'.' is not allowed",
        ),
        (
            "absolute",
            DirTree {
                files: vec![fe(b"/x", file)],
                dirs: vec![],
            },
            "contains '/'",
        ),
        (
            "nul",
            DirTree {
                files: vec![fe(b"a\0b", file)],
                dirs: vec![],
            },
            "NUL",
        ),
        // A symlink and a directory of one name: the directory would be created
        // through the symlink, outside the checkout.
        (
            "twice",
            DirTree {
                files: vec![fe(b"x", link)],
                dirs: vec![de(b"x", empty)],
            },
            "both a file and a directory",
        ),
        (
            "missing",
            DirTree {
                files: vec![fe(b"gone", ObjectId([7; 32]))],
                dirs: vec![],
            },
            "is missing",
        ),
        (
            "missingdir",
            DirTree {
                files: vec![],
                dirs: vec![de(b"sub", ObjectId([8; 32]))],
            },
            "is missing",
        ),
    ];
    let before: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    for (name, tree, why) in cases {
        let tree_id = plant(&repo, ObjectKind::DirTree, &tree.encode());
        let c = Commit {
            root_tree: tree_id,
            root_meta: meta,
            parent: None,
            timestamp: 0,
            subject: name.into(),
            body: String::new(),
            metadata: vec![],
        };
        let cid = plant(&repo, ObjectKind::Commit, &c.encode());
        std::fs::write(
            Path::new(&repo).join("refs/heads").join(name),
            format!("{cid}\n"),
        )
        .unwrap();
        let dest = t.path().join(format!("dest-{name}"));
        let err = arbor_err(&["--repo", &repo, "checkout", name, s(&dest)]);
        assert!(err.contains(why), "{name}: {err}");
        assert!(!dest.exists(), "{name}: partial checkout left behind");
        if !name.starts_with("missing") {
            let err = arbor_err(&["--repo", &repo, "ls", "-R", name]);
            assert!(err.contains("corrupt"), "{name}: {err}");
        }
        // The FUSE view: refused at mount (the root is read first), or, where only an
        // object below is missing, mounted without showing anything it cannot read.
        let mnt = t.path().join(format!("mnt-{name}"));
        std::fs::create_dir(&mnt).unwrap();
        let out = arbor(&["--repo", &repo, "mount", name, s(&mnt)]);
        if out.status.success() {
            let listed: Vec<String> = std::fs::read_dir(&mnt)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            let _ = Command::new("umount").arg(&mnt).status();
            assert!(name.starts_with("missing"), "{name}: mounted: {listed:?}");
            assert!(
                listed
                    .iter()
                    .all(|n| !n.contains('/') && n != ".." && n != "."),
                "{name}: the mount lists {listed:?}"
            );
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(why), "{name}: mount: {err}");
        }
        std::fs::remove_dir(&mnt).unwrap();
    }
    let after: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after, "something was written beside the checkouts");
    let fsck = arbor(&["--repo", &repo, "fsck"]);
    assert_eq!(
        fsck.status.code(),
        Some(1),
        "fsck must flag the hostile objects"
    );
}

#[test]
fn root_bad_input_leaves_refs_and_store_unchanged() {
    as_root!();
    let (t, src, repo) = feature_repo("b");
    let head = arbor_ok(&["--repo", &repo, "refs"]);
    let count = object_count(Path::new(&repo));

    let err = arbor_err(&[
        "--repo",
        &repo,
        "commit",
        "-b",
        "b",
        s(&t.path().join("nope")),
    ]);
    assert!(
        err.contains("nope") && err.contains("No such file"),
        "{err}"
    );

    // An unreadable file: root without CAP_DAC_OVERRIDE/READ_SEARCH is an ordinary
    // user to a mode-000 file owned by someone else.
    let secret = src.join("etc/unreadable");
    std::fs::write(&secret, b"x").unwrap();
    Command::new("chown")
        .args(["65534:65534", s(&secret)])
        .status()
        .unwrap();
    Command::new("chmod")
        .args(["000", s(&secret)])
        .status()
        .unwrap();
    let out = Command::new("setpriv")
        .args([
            "--bounding-set",
            "-dac_override,-dac_read_search",
            arbor_bin(),
            "--repo",
            &repo,
            "commit",
            "-b",
            "b",
            s(&src),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("/etc/unreadable")
            && err.contains("Permission denied"),
        "{err}"
    );
    std::fs::remove_file(&secret).unwrap();

    let fifo = src.join("run-fifo");
    Command::new("mkfifo").arg(&fifo).status().unwrap();
    let err = arbor_err(&["--repo", &repo, "commit", "-b", "b", s(&src)]);
    assert!(
        err.contains("/run-fifo is a fifo") && err.contains("--skip-special"),
        "{err}"
    );

    assert_eq!(
        arbor_ok(&["--repo", &repo, "refs"]),
        head,
        "a failed commit moved a ref"
    );
    assert_eq!(
        object_count(Path::new(&repo)),
        count,
        "a failed commit published objects"
    );
    assert_eq!(
        std::fs::read_dir(Path::new(&repo).join("tmp"))
            .unwrap()
            .count(),
        0,
        "staging left behind"
    );
    let err = arbor_err(&["--repo", s(&t.path().join("not-a-repo")), "refs"]);
    assert!(err.contains("not-a-repo"), "{err}");
}

/// A small tmpfs, unmounted at drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn new(size: &str) -> Self {
        let d = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                s(d.path()),
            ])
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs");
        Tmpfs(d)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn root_disk_full_during_commit_publishes_nothing() {
    as_root!();
    let fs = Tmpfs::new("48m");
    let repo = init_repo(fs.0.path());
    let err = arbor_err(&[
        "--repo",
        &repo,
        "commit",
        "-b",
        "small",
        s(&corpus("small")),
    ]);
    assert!(err.contains("no space left"), "{err}");
    assert!(
        arbor_ok(&["--repo", &repo, "refs"]).is_empty(),
        "ref written after a failed commit"
    );
    assert_eq!(
        object_count(Path::new(&repo)),
        0,
        "objects published by a failed commit"
    );
    assert_eq!(
        std::fs::read_dir(Path::new(&repo).join("tmp"))
            .unwrap()
            .count(),
        0,
        "staging left behind"
    );
    // The repository still works once space allows.
    let t = scratch();
    std::fs::create_dir(t.path().join("tiny")).unwrap();
    std::fs::write(t.path().join("tiny/f"), b"fits").unwrap();
    commit(&repo, "tiny", &t.path().join("tiny"));
    assert!(arbor_ok(&["--repo", &repo, "fsck"]).contains("no problems"));
}

#[test]
fn root_checkout_onto_another_filesystem_copies_and_says_so() {
    as_root!();
    let (_t, src, repo) = feature_repo("f");
    let fs = Tmpfs::new("64m");
    let dest = fs.0.path().join("co");
    let out = arbor(&["--repo", &repo, "checkout", "f", s(&dest)]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another filesystem"));
    assert_same_tree(&src, &dest);
    let err = arbor_err(&[
        "--repo",
        &repo,
        "checkout",
        "--hardlink",
        "f",
        s(&fs.0.path().join("co2")),
    ]);
    assert!(err.contains("another filesystem"), "{err}");
}

#[test]
fn root_second_writer_waits_or_names_the_holder() {
    as_root!();
    let t = scratch();
    let repo = init_repo(t.path());
    let mut first = spawn_lock_holder(
        &["--repo", &repo, "commit", "-b", "a", s(&corpus("a"))],
        &Path::new(&repo).join("lock"),
    );
    let small = t.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let err = arbor_err(&["--repo", &repo, "--no-wait", "commit", "-b", "b", s(&small)]);
    assert!(
        err.contains(&format!("locked by pid {}", first.id())),
        "{err}"
    );
    let out = arbor(&["--repo", &repo, "commit", "-b", "b", s(&small)]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("waiting for the lock held by pid {}", first.id())),
        "{err}"
    );
    assert!(first.wait().unwrap().success());
    assert!(arbor_ok(&["--repo", &repo, "fsck"]).contains("no problems"));
}

#[test]
fn root_log_show_ls_cat_diff_refs_and_prune_behave() {
    as_root!();
    let t = scratch();
    let src = t.path().join("src");
    make_feature_tree(&src);
    let repo = init_repo(t.path());
    let c1 = arbor_ok(&[
        "--repo",
        &repo,
        "commit",
        "-b",
        "os",
        "-s",
        "first",
        "--metadata",
        "version=1",
        s(&src),
    ]);
    std::fs::write(src.join("etc/new"), b"new\n").unwrap();
    std::fs::remove_file(src.join("usr/bin/perl-link")).unwrap();
    std::fs::write(src.join("usr/bin/ping"), b"patched").unwrap();
    let c2 = arbor_ok(&[
        "--repo",
        &repo,
        "commit",
        "-b",
        "os",
        "-s",
        "second",
        "--metadata",
        "version=2",
        s(&src),
    ]);
    let (c1, c2) = (c1.trim(), c2.trim());

    let log = arbor_ok(&["--repo", &repo, "log", "os"]);
    assert!(log.find(c2).unwrap() < log.find(c1).unwrap(), "{log}");
    assert!(
        log.contains("version: 2") && log.contains("    first"),
        "{log}"
    );
    assert_eq!(
        json(&["--repo", &repo, "log", "--json", "os"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(json(&["--repo", &repo, "show", "--json", "os^"])["id"], c1);
    assert_eq!(
        json(&["--repo", &repo, "show", "--json", c2])["metadata"]["version"],
        "2"
    );

    let ls = arbor_ok(&["--repo", &repo, "ls", "os", "/usr/bin"]);
    assert!(
        ls.contains("-04755 0 0") && ls.contains("/usr/bin/su"),
        "{ls}"
    );
    assert!(
        ls.contains("/usr/bin/dangling -> /nonexistent/target"),
        "{ls}"
    );
    let key = json(&["--repo", &repo, "ls", "--json", "os", "/etc/ssl/key"]);
    assert_eq!(
        (
            key[0]["uid"].as_u64(),
            key[0]["gid"].as_u64(),
            key[0]["mode"].as_u64()
        ),
        (Some(101), Some(102), Some(0o100600))
    );
    assert_eq!(
        arbor_ok(&["--repo", &repo, "cat", "os", "/etc/new"]),
        "new\n"
    );
    assert!(arbor_err(&["--repo", &repo, "cat", "os", "/usr"]).contains("is a directory"));

    let diff = arbor_ok(&["--repo", &repo, "diff", "os^", "os"]);
    assert_eq!(
        diff,
        "A    /etc/new\nD    /usr/bin/perl-link\nM    /usr/bin/ping\n"
    );
    let dj = json(&["--repo", &repo, "diff", "--json", c1, c2]);
    assert_eq!(dj["changes"].as_array().unwrap().len(), 3);

    arbor_ok(&[
        "--repo",
        &repo,
        "commit",
        "-b",
        "other",
        "--orphan",
        s(&corpus("small")),
    ]);
    assert_eq!(arbor_ok(&["--repo", &repo, "refs"]).lines().count(), 2);
    let dry = json(&["--repo", &repo, "prune", "--json", "--dry-run"]);
    assert_eq!(dry["objects_removed"], 0, "everything is reachable: {dry}");
    arbor_ok(&["--repo", &repo, "refs", "--delete", "other"]);
    let before = object_count(Path::new(&repo));
    let dry = json(&["--repo", &repo, "prune", "--json", "--dry-run"]);
    let n = dry["objects_removed"].as_u64().unwrap() as usize;
    assert!(n > 4000, "{dry}");
    assert_eq!(object_count(Path::new(&repo)), before, "dry run deleted");
    let done = json(&["--repo", &repo, "prune", "--json"]);
    assert_eq!(done["objects_removed"].as_u64().unwrap() as usize, n);
    assert_eq!(object_count(Path::new(&repo)), before - n);
    assert!(arbor_ok(&["--repo", &repo, "fsck"]).contains("no problems"));
    assert_eq!(
        arbor_ok(&["--repo", &repo, "cat", "os", "/usr/bin/ping"]),
        "patched"
    );
}
