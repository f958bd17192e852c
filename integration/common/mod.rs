//! Helpers for the end-to-end tests: run the real `arbor` binary, find the corpus,
//! describe trees with independent tools (find, getfattr) to compare them.
#![allow(dead_code)]

pub mod bus;
pub mod fake_registry;
pub mod fleet;
pub mod hostile_http;
pub mod live;
pub mod netem_router;
pub mod nginx;
pub mod panel;
pub mod registry;
pub mod s3;
pub mod userns;
pub mod vm;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Fails a test that needs root (bare repositories store owners; mounts) when it runs
/// as another user. Such tests are compiled as ignored unless built as root
/// (`cfg(arbor_root)`, see build.rs), so this only fires for a root build run by
/// someone else: a failure saying why, never a pass that tested nothing.
#[allow(unused_macros)] // not every test file needs root
macro_rules! require_root {
    () => {
        assert!(
            $crate::common::is_root(),
            "needs root (bare repositories store owners, mounts): run the tests as root"
        );
    };
}

/// Runs the rest of the test as root: as it is when the tests run as root, else again
/// in a user namespace where this user is root (userns.rs): for tests that need root
/// only for file owners and mounts.
#[allow(unused_macros)]
macro_rules! as_root {
    () => {{
        fn here() {}
        if $crate::common::userns::enter(std::any::type_name_of_val(&here)) {
            return;
        }
    }};
}

/// The binary under test.
pub fn arbor_bin() -> &'static str {
    env!("CARGO_BIN_EXE_arbor")
}

/// A binary of another crate of the workspace (`arbord`, `arbor-prepare-root`), built
/// beside `arbor` by `cargo build` or `cargo test` at the top (scripts/test.sh builds
/// them all first).
pub fn workspace_bin(name: &str) -> PathBuf {
    let p = Path::new(arbor_bin()).with_file_name(name);
    assert!(
        p.is_file(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        p.display()
    );
    p
}

/// Runs `arbor ARGS…` and returns its output, whatever the exit code.
pub fn arbor(args: &[&str]) -> Output {
    Command::new(arbor_bin())
        .args(args)
        .env_remove("ARBOR_REPO")
        .output()
        .expect("running arbor")
}

/// Runs `arbor ARGS…`, asserting success; returns stdout.
pub fn arbor_ok(args: &[&str]) -> String {
    let out = arbor(args);
    assert!(
        out.status.success(),
        "arbor {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `arbor ARGS…`, asserting failure; returns stderr.
pub fn arbor_err(args: &[&str]) -> String {
    let out = arbor(args);
    assert!(!out.status.success(), "arbor {args:?} should have failed");
    String::from_utf8(out.stderr).unwrap()
}

/// Where the shared corpus is (`ARBOR_CORPUS`, else make-trees.sh's folder).
pub fn corpus_base() -> PathBuf {
    std::env::var_os("ARBOR_CORPUS").map_or_else(|| "/var/tmp/arbor-corpus".into(), PathBuf::from)
}

/// A tree of the shared corpus; the suite is run after `make-trees.sh`, so a missing
/// corpus is a broken setup, not a reason to skip. (In a user namespace,
/// `ARBOR_CORPUS` names this user's copy of it: userns.rs.)
pub fn corpus(name: &str) -> PathBuf {
    let base = corpus_base();
    let p = base.join(name);
    assert!(
        base.join("READY").exists() && p.is_dir(),
        "corpus tree {} missing: run scripts/test.sh (it builds ../shared/corpus first)",
        p.display()
    );
    p
}

/// Starts `arbor ARGS…` in the background and returns once it holds the lock file
/// `lock` (the holder writes its pid there right after taking it).
pub fn spawn_lock_holder(args: &[&str], lock: &Path) -> std::process::Child {
    let child = Command::new(arbor_bin())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !std::fs::read_to_string(lock)
        .unwrap_or_default()
        .contains("pid")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "arbor {args:?} never took {}",
            lock.display()
        );
    }
    child
}

/// True when running as root; tests that need it say so and stop otherwise.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A scratch folder on the same filesystem as the corpus (so hardlinks work), removed
/// at drop.
pub fn scratch() -> tempfile::TempDir {
    let base = std::env::var("ARBOR_TEST_TMP").unwrap_or_else(|_| "/var/tmp".into());
    tempfile::Builder::new()
        .prefix("arbor-test.")
        .tempdir_in(base)
        .unwrap()
}

/// Path as &str.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every entry of a tree: relative path → "type mode uid gid size target content-hash
/// xattrs", from `find -printf` and `getfattr`, tools independent of arbor.
pub fn describe_tree(root: &Path) -> BTreeMap<String, String> {
    let out = Command::new("find")
        .arg(root)
        .args(["-mindepth", "1", "-printf", "%P\\0%y %m %U %G %s %l\\0"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let xattrs = xattrs_of(root);
    let fields: Vec<&[u8]> = out.stdout.split(|b| *b == 0).collect();
    let mut map = BTreeMap::new();
    for pair in fields.chunks(2) {
        let [path, info] = pair else { continue };
        let path = String::from_utf8_lossy(path).into_owned();
        let mut info = String::from_utf8_lossy(info).into_owned();
        if info.starts_with("d ") {
            // A directory's size is a property of the filesystem, not of the tree.
            let mut parts: Vec<&str> = info.split(' ').collect();
            parts[4] = "-";
            info = parts.join(" ");
        }
        if info.starts_with("f ") {
            let bytes = std::fs::read(root.join(&path)).unwrap();
            info.push_str(&format!(" {}", blake3::hash(&bytes).to_hex()));
        }
        if let Some(x) = xattrs.get(&path) {
            info.push_str(&format!(" {x}"));
        }
        map.insert(path, info);
    }
    map
}

fn xattrs_of(root: &Path) -> BTreeMap<String, String> {
    let out = Command::new("getfattr")
        .args(["-R", "-h", "-d", "-m", "-", "-e", "hex", "--absolute-names"])
        .arg(root)
        .output()
        .expect("getfattr (package attr) is needed");
    let text = String::from_utf8_lossy(&out.stdout);
    let prefix = format!("{}/", root.display());
    let mut map = BTreeMap::new();
    for block in text.split("\n\n") {
        let mut lines = block.lines();
        let Some(file) = lines.next().and_then(|l| l.strip_prefix("# file: ")) else {
            continue;
        };
        let Some(rel) = file.strip_prefix(&prefix) else {
            continue;
        };
        let mut attrs: Vec<&str> = lines.collect();
        attrs.sort();
        map.insert(rel.to_string(), attrs.join(","));
    }
    map
}

/// Groups of paths that are one inode (regular files with more than one link).
pub fn hardlink_groups(root: &Path) -> Vec<BTreeSet<String>> {
    let out = Command::new("find")
        .arg(root)
        .args(["-type", "f", "-links", "+1", "-printf", "%i %P\\n"])
        .output()
        .unwrap();
    let mut by_inode: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let (ino, path) = line.split_once(' ').unwrap();
        by_inode
            .entry(ino.to_string())
            .or_default()
            .insert(path.to_string());
    }
    by_inode.into_values().filter(|g| g.len() > 1).collect()
}

/// Inode of a path (not following symlinks).
pub fn inode(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).unwrap().ino()
}

/// Number of objects stored in a repository.
pub fn object_count(repo: &Path) -> usize {
    walk_files(&repo.join("objects")).len()
}

/// All non-directory paths below `dir`.
pub fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// A small tree with what a real OS tree has and the corpus lacks: file capabilities,
/// user xattrs, setuid, odd owners, hardlinks, empty directories, dangling and
/// absolute symlinks, a large file.
pub fn make_feature_tree(root: &Path) {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let sh = |cmd: &str| {
        let st = Command::new("sh")
            .arg("-ec")
            .arg(cmd)
            .current_dir(root)
            .status()
            .unwrap();
        assert!(st.success(), "{cmd}");
    };
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::create_dir_all(root.join("var/empty/deeper")).unwrap();
    std::fs::create_dir_all(root.join("etc/ssl")).unwrap();
    std::fs::write(root.join("usr/bin/ping"), b"\x7fELF fake ping").unwrap();
    std::fs::write(root.join("usr/bin/su"), b"\x7fELF fake su").unwrap();
    std::fs::write(root.join("usr/bin/perl"), b"\x7fELF fake perl").unwrap();
    std::fs::hard_link(root.join("usr/bin/perl"), root.join("usr/bin/perl5.36.0")).unwrap();
    std::fs::write(root.join("etc/ssl/key"), b"secret").unwrap();
    std::fs::write(root.join("etc/empty-file"), b"").unwrap();
    std::fs::write(root.join("usr/big"), vec![0x5au8; 9 << 20]).unwrap();
    symlink("perl", root.join("usr/bin/perl-link")).unwrap();
    symlink("/nonexistent/target", root.join("usr/bin/dangling")).unwrap();
    symlink("../../etc", root.join("usr/bin/up")).unwrap();
    std::fs::set_permissions(
        root.join("usr/bin/su"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    std::fs::set_permissions(
        root.join("etc/ssl/key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::set_permissions(
        root.join("var/empty"),
        std::fs::Permissions::from_mode(0o1777),
    )
    .unwrap();
    sh("chown 101:102 etc/ssl/key && chown -h 7:8 usr/bin/dangling && chown 5:6 var/empty/deeper");
    sh(
        "setcap cap_net_raw+ep usr/bin/ping && setfattr -n user.note -v hello etc/empty-file \
        && setfattr -n user.dir -v tag var/empty",
    );
}

/// A sysroot in DIR/sysroot with stateroot `debian`.
pub fn sysroot(dir: &Path) -> String {
    let s = dir.join("sysroot");
    arbor_ok(&["admin", "init-fs", s.to_str().unwrap()]);
    arbor_ok(&[
        "--sysroot",
        s.to_str().unwrap(),
        "admin",
        "os-init",
        "debian",
    ]);
    s.to_str().unwrap().to_string()
}

/// A tiny Debian-shaped root filesystem with a (fake) kernel and /etc defaults.
pub fn rootfs(dir: &Path, version: &str) -> PathBuf {
    let r = dir.join(format!("rootfs-{version}"));
    for d in [
        "usr/bin",
        "etc/ssh",
        "etc/default",
        "var/lib/dpkg",
        "boot",
        "home",
        "root",
    ] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::write(r.join("usr/bin/tool"), format!("tool {version}\n")).unwrap();
    std::fs::write(r.join("etc/hostname"), "debian\n").unwrap();
    std::fs::write(
        r.join("etc/ssh/sshd_config"),
        format!("# sshd defaults {version}\n"),
    )
    .unwrap();
    std::fs::write(r.join("etc/default/grub"), "GRUB_TIMEOUT=5\n").unwrap();
    std::fs::write(r.join("etc/motd"), format!("welcome to {version}\n")).unwrap();
    std::fs::write(r.join("etc/untouched"), format!("default {version}\n")).unwrap();
    symlink("/usr/share/zoneinfo/UTC", r.join("etc/localtime")).unwrap();
    std::fs::write(r.join("var/lib/dpkg/status"), "Package: tool\n").unwrap();
    std::fs::write(r.join("boot/vmlinuz-6.1.0-test"), "kernel image").unwrap();
    std::fs::write(r.join("boot/initrd.img-6.1.0-test"), "initramfs image").unwrap();
    r
}

/// A build repository in DIR/build with one small tree per version composed into
/// branch `os/VERSION` (what a publisher publishes from); returns its path.
pub fn build_repo(dir: &Path, versions: &[&str]) -> String {
    build_repo_shaped(dir, versions, |_, _| {})
}

/// [`build_repo`], with `shape` changing each version's tree before it is composed.
pub fn build_repo_shaped(dir: &Path, versions: &[&str], shape: impl Fn(&str, &Path)) -> String {
    let repo = dir.join("build");
    let r = s(&repo).to_string();
    arbor_ok(&["--repo", &r, "init"]);
    for v in versions {
        let tree = rootfs(&dir.join(format!("tree-{v}")), v);
        shape(v, &tree);
        let branch = format!("os/{v}");
        arbor_ok(&[
            "--repo",
            &r,
            "compose",
            "rootfs",
            s(&tree),
            "-b",
            &branch,
            "--version",
            v,
        ]);
    }
    r
}

/// A client sysroot in DIR following the published folder PUB over `file://` as
/// remote `origin`, trusting its first root.
pub fn file_client(dir: &Path, pub_dir: &str) -> String {
    let client = sysroot(dir);
    let url = format!("file://{pub_dir}");
    let root = format!("{pub_dir}/metadata/1.root.json");
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
    client
}

/// Composes TREE into BRANCH of sysroot S with a version.
pub fn compose(sysroot: &str, tree: &Path, branch: &str, version: &str) {
    arbor_ok(&[
        "--sysroot",
        sysroot,
        "compose",
        "rootfs",
        s(tree),
        "-b",
        branch,
        "--version",
        version,
    ]);
}

/// `arbor status --json`'s deployments.
pub fn status(sysroot: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(&arbor_ok(&["--sysroot", sysroot, "status", "--json"])).unwrap();
    v["deployments"].as_array().unwrap().clone()
}

/// The versions of the deployments, in boot order.
pub fn versions(sysroot: &str) -> Vec<String> {
    status(sysroot)
        .iter()
        .map(|d| d["version"].as_str().unwrap().to_string())
        .collect()
}

/// The folder of deployment INDEX of sysroot S.
pub fn deployment_dir(sysroot: &str, index: usize) -> PathBuf {
    let d = &status(sysroot)[index];
    Path::new(sysroot).join(format!(
        "arbor/deploy/{}/deploy/{}.{}",
        d["os"].as_str().unwrap(),
        d["commit"].as_str().unwrap(),
        d["serial"]
    ))
}

/// The packages the corpus point update a → b upgraded, sorted (from its MANIFEST).
pub fn corpus_upgraded() -> Vec<String> {
    let manifest = std::fs::read_to_string(corpus("a").parent().unwrap().join("MANIFEST")).unwrap();
    let mut names: Vec<String> = manifest
        .lines()
        .find_map(|l| l.strip_prefix("upgraded:"))
        .expect("MANIFEST lists the upgraded packages")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

/// Writes the kernel command line that boots deployment 0 (`ARBOR_CMDLINE`).
pub fn boot_first(sysroot: &str, dir: &Path) -> String {
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
pub fn in_namespace(sysroot: &str, cmdline: &str, dir: &Path, script: &str) -> String {
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

/// Checks what must hold after any crash: fsck passes, status works, `boot/loader`
/// names a complete entry set whose every entry names a complete deployment and an
/// existing kernel.
pub fn assert_consistent(s: &str, when: &str) {
    let fsck = arbor(&["--sysroot", s, "fsck"]);
    assert!(
        fsck.status.success(),
        "{when}: fsck: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let list = status(s);
    assert!(!list.is_empty(), "{when}: no deployments");
    let boot = Path::new(s).join("boot");
    let set = std::fs::read_link(boot.join("loader")).unwrap();
    assert!(
        set == Path::new("loader.0") || set == Path::new("loader.1"),
        "{when}: loader -> {set:?}"
    );
    let entries: Vec<_> = std::fs::read_dir(boot.join(&set).join("entries"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        entries.len(),
        list.len(),
        "{when}: entries and deployments differ"
    );
    for e in entries {
        let text = std::fs::read_to_string(&e).unwrap();
        let linux = text
            .lines()
            .find_map(|l| l.strip_prefix("linux "))
            .unwrap_or_else(|| panic!("{when}: {e:?} has no linux"));
        assert!(
            boot.join(linux.trim_start_matches('/')).is_file(),
            "{when}: kernel {linux} missing"
        );
        let arbor = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix("arbor="))
            .unwrap();
        let dir = Path::new(s).join(arbor.trim_start_matches('/'));
        assert!(
            dir.join("usr/bin").is_dir() && dir.join("etc/hostname").is_file(),
            "{when}: {dir:?} incomplete"
        );
        assert!(
            Path::new(&format!("{}.origin", dir.display())).is_file(),
            "{when}: {dir:?} has no origin"
        );
    }
}
