//! Packages through the real binary with Debian's own tools: composing images from
//! treefiles with mmdebstrap, layering with apt and dpkg on an overlay, and the package
//! database of commits.
#![allow(clippy::print_stderr, clippy::print_stdout)]

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::*;

/// A bootable image: kernel, systemd, and a few small packages to play with.
const SERVER: &str = r#"
name = "server"
version = "12.7"
suite = "bookworm"
packages = ["systemd-sysv", "linux-image-amd64", "initramfs-tools", "less"]
units = ["systemd-networkd.service"]
postprocess = ["echo 'built by arbor' > /etc/motd"]

[etc]
"hostname" = "server\n"
"#;

/// `arbor ARGS…` with a fixed SOURCE_DATE_EPOCH, so composes are reproducible.
fn arbor_at_epoch(args: &[&str]) -> Output {
    Command::new(arbor_bin())
        .args(args)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .env_remove("ARBOR_REPO")
        .output()
        .unwrap()
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn err(out: Output, what: &str) -> String {
    assert!(!out.status.success(), "{what} should have failed");
    String::from_utf8(out.stderr).unwrap()
}

/// Composes a treefile into branch `bad` of REPO, which must fail; returns stderr.
fn compose_fails(repo: &Path, tf: &Path) -> String {
    let args = ["--repo", s_(repo), "compose", "tree", s_(tf), "-b", "bad"];
    err(arbor_at_epoch(&args), "compose")
}

fn treefile(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

/// A local package whose postinst fails.
fn failing_deb(dir: &Path) -> PathBuf {
    let d = dir.join("fail-pkg");
    std::fs::create_dir_all(d.join("DEBIAN")).unwrap();
    std::fs::write(
        d.join("DEBIAN/control"),
        "Package: arbor-test-fail\nVersion: 1.0\nArchitecture: all\nMaintainer: arbor tests <t@example.org>\nDescription: fails to configure\n",
    )
    .unwrap();
    std::fs::write(
        d.join("DEBIAN/postinst"),
        "#!/bin/sh\necho failing on purpose >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(
        d.join("DEBIAN/postinst"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let deb = dir.join("arbor-test-fail_1.0_all.deb");
    let out = Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .arg(&d)
        .arg(&deb)
        .output()
        .unwrap();
    ok(out, "dpkg-deb --build");
    deb
}

fn layers(s: &str) -> serde_json::Value {
    status(s)[0]["origin"]["layers"].clone()
}

fn package_names(s: &str, rev: &str) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&arbor_ok(&["--sysroot", s, "db", "list", rev, "--json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

fn commit_of(s: &str, index: usize) -> String {
    status(s)[index]["commit"].as_str().unwrap().to_string()
}

/// The SERVER image, composed once per test run (mmdebstrap takes a minute or two)
/// into a sysroot of its own: (that sysroot, the commit). Removed when the test
/// process exits.
fn server_image() -> &'static (PathBuf, String) {
    static IMAGE: OnceLock<(PathBuf, String)> = OnceLock::new();
    extern "C" fn remove_image() {
        if let Some((s, _)) = IMAGE.get()
            && let Some(dir) = s.parent()
        {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    IMAGE.get_or_init(|| {
        let dir = scratch().keep();
        // SAFETY: registers a plain function; it runs once, at exit.
        unsafe { libc::atexit(remove_image) };
        let s = sysroot(&dir);
        let tf = treefile(&dir, "server", SERVER);
        let out = arbor_at_epoch(&["--sysroot", &s, "compose", "tree", s_(&tf), "-b", "server"]);
        let commit = ok(out, "compose tree").trim().to_string();
        (PathBuf::from(s), commit)
    })
}

/// A sysroot of the test's own in DIR holding the composed SERVER image (a copy, so
/// that the tests share no store), with it deployed when DEPLOY.
fn server_sysroot(dir: &Path, deploy: bool) -> (String, String) {
    let (image, commit) = server_image();
    let s = dir.join("sysroot");
    let out = Command::new("cp")
        .arg("-a")
        .arg(image)
        .arg(&s)
        .output()
        .unwrap();
    ok(out, "copying the composed sysroot");
    let s = s_(&s).to_string();
    if deploy {
        arbor_ok(&["--sysroot", &s, "deploy", "server"]);
    }
    (s, commit.clone())
}

/// Layers `hello` from the archive and `sl` from the corpus's local .deb.
fn install_hello_and_sl(s: &str) {
    let sl = corpus("debs").join("sl_5.02-1+b1_amd64.deb");
    arbor_ok(&["--sysroot", s, "install", "hello", s_(&sl)]);
}

#[test]
#[cfg_attr(
    not(arbor_root),
    ignore = "needs root: an overlay with redirect_dir=off and trusted xattrs (layering, mmdebstrap) needs real root"
)]
fn root_compose_builds_an_image_with_its_etc_units_and_one_kernel() {
    require_root!();
    let t = scratch();
    let (s, _) = server_sysroot(t.path(), false);
    let pkgs = package_names(&s, "server");
    for p in ["systemd", "linux-image-amd64", "less", "base-files"] {
        assert!(pkgs.contains(&p.to_string()), "{p} missing from db list");
    }
    arbor_ok(&["--sysroot", &s, "deploy", "server"]);
    assert_eq!(versions(&s), ["12.7"]);
    let dep = deployment_dir(&s, 0);
    assert_eq!(
        std::fs::read_to_string(dep.join("etc/motd")).unwrap(),
        "built by arbor\n"
    );
    assert_eq!(
        std::fs::read_to_string(dep.join("etc/hostname")).unwrap(),
        "server\n"
    );
    assert!(
        dep.join("etc/systemd/system/multi-user.target.wants/systemd-networkd.service")
            .symlink_metadata()
            .is_ok()
    );
    assert_eq!(std::fs::read(dep.join("usr/etc/machine-id")).unwrap(), b"");
    assert!(
        dep.join("usr/lib/modules").read_dir().unwrap().count() == 1,
        "one kernel"
    );
}

#[test]
#[cfg_attr(
    not(arbor_root),
    ignore = "needs root: an overlay with redirect_dir=off and trusted xattrs (layering, mmdebstrap) needs real root"
)]
fn root_install_layers_an_archive_package_and_a_local_deb_over_an_untouched_base() {
    require_root!();
    let t = scratch();
    let (s, base) = server_sysroot(t.path(), true);
    let base_usr = describe_tree(&deployment_dir(&s, 0).join("usr"));
    install_hello_and_sl(&s);
    let layered = deployment_dir(&s, 0);
    let hello = Command::new("chroot")
        .arg(&layered)
        .arg("/usr/bin/hello")
        .output()
        .unwrap();
    assert_eq!(ok(hello, "hello in the layered root"), "Hello, world!\n");
    assert!(layered.join("usr/games/sl").is_file());
    assert_eq!(status(&s)[0]["base"], base.as_str());
    assert_eq!(layers(&s)["packages"], serde_json::json!(["hello"]));
    assert_eq!(layers(&s)["local"][0]["name"], "sl");
    // The base deployment and the store are untouched.
    let base_dep = deployment_dir(&s, 1);
    assert!(!base_dep.join("usr/bin/hello").exists());
    assert_eq!(describe_tree(&base_dep.join("usr")), base_usr);
    arbor_ok(&["--sysroot", &s, "fsck"]);
    let diff = arbor_ok(&["--sysroot", &s, "db", "diff", &base, &commit_of(&s, 0)]);
    assert!(
        diff.contains("added      hello:amd64") && diff.contains("added      sl:amd64"),
        "{diff}"
    );
    let status_text = arbor_ok(&["--sysroot", &s, "status"]);
    assert!(status_text.contains("Layered:   hello sl"), "{status_text}");
}

#[test]
#[cfg_attr(
    not(arbor_root),
    ignore = "needs root: an overlay with redirect_dir=off and trusted xattrs (layering, mmdebstrap) needs real root"
)]
fn root_a_failed_install_or_uninstall_leaves_no_deployment_and_says_why() {
    require_root!();
    let t = scratch();
    let (s, _) = server_sysroot(t.path(), true);
    arbor_ok(&["--sysroot", &s, "install", "hello"]);
    let before = status(&s);
    let fail = failing_deb(t.path());
    let e = arbor_err(&["--sysroot", &s, "install", s_(&fail)]);
    assert!(
        e.contains("post-installation script") && e.contains("exit status 1"),
        "{e}"
    );
    let e = arbor_err(&["--sysroot", &s, "install", "nosuchpkg-arbor"]);
    assert!(
        e.contains("Unable to locate package nosuchpkg-arbor"),
        "{e}"
    );
    let e = arbor_err(&["--sysroot", &s, "install", "hello"]);
    assert!(e.contains("hello is already layered"), "{e}");
    let e = arbor_err(&["--sysroot", &s, "uninstall", "less"]);
    assert!(e.contains("less is not a layered package"), "{e}");
    assert_eq!(status(&s), before);
    let leftovers: Vec<_> = std::fs::read_dir(Path::new(&s).join("arbor/repo"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".scratch-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
#[cfg_attr(
    not(arbor_root),
    ignore = "needs root: an overlay with redirect_dir=off and trusted xattrs (layering, mmdebstrap) needs real root"
)]
fn root_uninstall_and_override_remove_and_reset_change_only_their_package() {
    require_root!();
    let t = scratch();
    let (s, _) = server_sysroot(t.path(), true);
    install_hello_and_sl(&s);
    // Uninstall: hello goes, sl stays.
    arbor_ok(&["--sysroot", &s, "uninstall", "hello"]);
    let d = deployment_dir(&s, 0);
    assert!(!d.join("usr/bin/hello").exists() && d.join("usr/games/sl").is_file());
    assert_eq!(layers(&s)["packages"], serde_json::json!([]));
    // Override: remove a base package, then reset.
    arbor_ok(&["--sysroot", &s, "override", "remove", "less"]);
    assert!(!deployment_dir(&s, 0).join("usr/bin/less").exists());
    assert!(deployment_dir(&s, 0).join("usr/games/sl").is_file());
    assert!(!package_names(&s, &commit_of(&s, 0)).contains(&"less".to_string()));
    assert!(arbor_ok(&["--sysroot", &s, "status"]).contains("Removed:   less"));
    arbor_ok(&["--sysroot", &s, "override", "reset", "less"]);
    assert!(deployment_dir(&s, 0).join("usr/bin/less").exists());
}

#[test]
#[cfg_attr(
    not(arbor_root),
    ignore = "needs root: an overlay with redirect_dir=off and trusted xattrs (layering, mmdebstrap) needs real root"
)]
fn root_upgrade_reapplies_the_layers_on_the_new_base() {
    require_root!();
    let t = scratch();
    let (s, _) = server_sysroot(t.path(), true);
    let sl = corpus("debs").join("sl_5.02-1+b1_amd64.deb");
    arbor_ok(&["--sysroot", &s, "install", s_(&sl)]);
    let co = t.path().join("v2");
    arbor_ok(&["--sysroot", &s, "checkout", "server", s_(&co), "--copy"]);
    std::fs::write(co.join("usr/share/arbor-v2"), "second image\n").unwrap();
    arbor_ok(&[
        "--sysroot",
        &s,
        "commit",
        "-b",
        "server",
        "--metadata",
        "version=12.8",
        s_(&co),
    ]);
    arbor_ok(&["--sysroot", &s, "upgrade"]);
    assert_eq!(versions(&s)[0], "12.8");
    let d = deployment_dir(&s, 0);
    assert!(d.join("usr/share/arbor-v2").is_file() && d.join("usr/games/sl").is_file());
    assert_eq!(layers(&s)["local"][0]["name"], "sl");
    assert!(arbor_ok(&["--sysroot", &s, "upgrade"]).contains("no upgrade"));
    arbor_ok(&["--sysroot", &s, "fsck"]);
}

#[test]
#[cfg_attr(
    not(arbor_root),
    ignore = "needs root: an overlay with redirect_dir=off and trusted xattrs (layering, mmdebstrap) needs real root"
)]
fn root_compose_twice_gives_one_commit_and_failures_are_clear() {
    require_root!();
    let t = scratch();
    let repo = t.path().join("repo");
    arbor_ok(&["--repo", s_(&repo), "init"]);
    // Trixie (Debian 13, stable since 2025), where SERVER is bookworm: compose tree
    // is tested with both releases.
    let small = "name = \"small\"\nversion = \"1\"\nsuite = \"trixie\"\npackages = [\"less\"]\n[etc]\n\"hostname\" = \"small\\n\"\n";
    let tf = treefile(t.path(), "small", small);
    let one = ok(
        arbor_at_epoch(&["--repo", s_(&repo), "compose", "tree", s_(&tf), "-b", "one"]),
        "compose",
    );
    let two = ok(
        arbor_at_epoch(&["--repo", s_(&repo), "compose", "tree", s_(&tf), "-b", "two"]),
        "compose",
    );
    assert_eq!(one, two, "the same package versions give the same commit");
    let list = arbor_ok(&["--repo", s_(&repo), "db", "list", "one"]);
    assert!(list.lines().any(|l| l.starts_with("less amd64 ")), "{list}");
    let show: serde_json::Value =
        serde_json::from_str(&arbor_ok(&["--repo", s_(&repo), "show", "one", "--json"])).unwrap();
    assert_eq!(show["timestamp"], 1700000000, "{show}");

    // An unknown package, a failing postprocess script, a bad field: clear errors, no ref.
    let bad = treefile(
        t.path(),
        "bad",
        &small.replace("\"less\"", "\"nosuchpkg-arbor\""),
    );
    let e = compose_fails(&repo, &bad);
    assert!(
        e.contains("nosuchpkg-arbor") && e.contains("mmdebstrap failed"),
        "{e}"
    );
    let script = treefile(
        t.path(),
        "script",
        &format!("postprocess = [\"echo broken >&2; exit 3\"]\n{small}"),
    );
    let e = compose_fails(&repo, &script);
    assert!(
        e.contains("postprocess script 1 failed") && e.contains("broken"),
        "{e}"
    );
    let typo = treefile(t.path(), "typo", &small.replace("packages", "pakages"));
    let e = compose_fails(&repo, &typo);
    assert!(e.contains("pakages") && e.contains("typo.toml"), "{e}");
    let refs = arbor_ok(&["--repo", s_(&repo), "refs"]);
    assert!(!refs.contains("bad"), "{refs}");
}

#[test]
fn root_db_diff_of_corpus_a_and_b_lists_the_point_update() {
    as_root!();
    let t = scratch();
    let repo = t.path().join("repo");
    arbor_ok(&["--repo", s_(&repo), "init"]);
    for name in ["a", "b"] {
        arbor_ok(&["--repo", s_(&repo), "commit", "-b", name, s_(&corpus(name))]);
    }
    let d: serde_json::Value = serde_json::from_str(&arbor_ok(&[
        "--repo",
        s_(&repo),
        "db",
        "diff",
        "a",
        "b",
        "--json",
    ]))
    .unwrap();
    let expected = corpus_upgraded();
    let mut upgraded: Vec<&str> = d["upgraded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    upgraded.sort();
    assert_eq!(upgraded, expected);
    for c in d["upgraded"].as_array().unwrap() {
        assert_ne!(c["from"], c["to"]);
        assert!(!c["from"].as_str().unwrap().is_empty());
    }
    assert_eq!(d["added"], serde_json::json!([]));
    assert_eq!(d["removed"], serde_json::json!([]));
    assert_eq!(d["downgraded"], serde_json::json!([]));
    // `db list` agrees with dpkg's own view of the tree.
    let dpkg = Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            corpus("a").join("var/lib/dpkg").display()
        ))
        .args(["-W", "-f", "${db:Status-Status} ${Package}\n"])
        .output()
        .unwrap();
    let installed = ok(dpkg, "dpkg-query")
        .lines()
        .filter(|l| l.starts_with("installed "))
        .count();
    let listed = arbor_ok(&["--repo", s_(&repo), "db", "list", "a"])
        .lines()
        .count();
    assert_eq!(listed, installed);
}

fn s_(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The path of a corpus .deb whose name starts with PREFIX.
fn corpus_deb(prefix: &str) -> PathBuf {
    std::fs::read_dir(corpus("debs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix}*.deb in the corpus"))
}

#[test]
#[cfg_attr(
    not(arbor_root),
    ignore = "needs root: an overlay with redirect_dir=off and trusted xattrs (layering, mmdebstrap) needs real root"
)]
fn root_every_prune_keeps_the_commits_of_layered_deployments() {
    require_root!();
    // The report's steps: corpus a deployed, two local packages layered one after the
    // other, so that the rollback deployment is the first layered commit, which no
    // ref names once the second is made.
    let t = scratch();
    let s = sysroot(t.path());
    compose(&s, &corpus("a"), "debian/a", "12.0");
    arbor_ok(&["--sysroot", &s, "deploy", "debian/a"]);
    arbor_ok(&["--sysroot", &s, "install", s_(&corpus_deb("hello_"))]);
    let first_layer = commit_of(&s, 0);
    arbor_ok(&[
        "--sysroot",
        &s,
        "install",
        s_(&corpus_deb("cowsay_")),
        s_(&corpus_deb("libtext-charwidth-perl_")),
    ]);
    assert_eq!(
        commit_of(&s, 1),
        first_layer,
        "the rollback is the first layer"
    );
    let roots = Path::new(&s).join("arbor/repo/refs/deployments/debian");
    let names: Vec<String> = std::fs::read_dir(&roots)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with(&first_layer)),
        "the repository records the rollback deployment as a root: {names:?}"
    );

    // An OSTree user prunes the repository as a bare one, by its path.
    let repo = format!("{s}/arbor/repo");
    arbor_ok(&["--repo", &repo, "prune"]);
    arbor_ok(&["--repo", &repo, "show", &first_layer]);
    // Through the sysroot, cleanup, and undeploying what is not the rollback.
    arbor_ok(&["--sysroot", &s, "prune"]);
    arbor_ok(&["--sysroot", &s, "cleanup"]);
    arbor_ok(&["--sysroot", &s, "show", &first_layer]);
    let fsck = arbor_ok(&["--sysroot", &s, "fsck", "--deployments"]);
    assert!(fsck.contains("no problems"), "{fsck}");

    // A sysroot made before the roots existed: a prune by path refuses rather than
    // guess, and the first transaction on the sysroot records them.
    std::fs::remove_dir_all(Path::new(&repo).join("refs/deployments")).unwrap();
    let e = arbor_err(&["--repo", &repo, "prune"]);
    assert!(
        e.contains("not recorded as roots") && e.contains("cleanup"),
        "{e}"
    );
    arbor_ok(&["--sysroot", &s, "cleanup"]);
    arbor_ok(&["--repo", &repo, "prune"]);
    arbor_ok(&["--repo", &repo, "show", &first_layer]);

    // Undeploying the rollback drops its root, and then a prune may take it.
    arbor_ok(&["--sysroot", &s, "undeploy", "1"]);
    arbor_ok(&["--repo", &repo, "prune"]);
    let gone = arbor_err(&["--repo", &repo, "show", &first_layer]);
    assert!(gone.contains("not in the repository"), "{gone}");
    arbor_ok(&["--sysroot", &s, "fsck"]);
}
