//! Debian 13 (trixie) trees, and the major upgrade from bookworm (corpus `a`) to
//! trixie (corpus `t`) as one deployment on a folder sysroot: the administrator's
//! `/etc` (a user, an sshd edit, an nginx site, the timezone) carried across, trixie's
//! own defaults taken where nothing was edited, and a rollback to bookworm exactly as
//! it was.

#[macro_use]
mod common;

use std::path::Path;

use common::*;

/// Appends `line` to the file `etc/name`.
fn append(etc: &Path, name: &str, line: &str) {
    let p = etc.join(name);
    let mut text = std::fs::read_to_string(&p).unwrap();
    text.push_str(line);
    std::fs::write(&p, text).unwrap();
}

/// The entry names of a passwd-style file.
fn names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.to_string()))
        .collect()
}

#[test]
fn root_bookworm_to_trixie_keeps_the_administrators_etc_and_rolls_back() {
    as_root!();
    let t = scratch();
    let s = sysroot(t.path());
    compose(&s, &corpus("a"), "debian/stable", "12");
    arbor_ok(&["--sysroot", &s, "deploy", "debian/stable"]);
    let bookworm = deployment_dir(&s, 0);
    let etc = bookworm.join("etc");

    // The administrator's changes, as they would make them.
    append(&etc, "ssh/sshd_config", "PermitRootLogin no\n");
    append(
        &etc,
        "passwd",
        "alice:x:1000:1000:Alice:/home/alice:/bin/bash\n",
    );
    append(&etc, "group", "alice:x:1000:\n");
    append(
        &etc,
        "shadow",
        "alice:$y$j9T$salt$alicehash:20000:0:99999:7:::\n",
    );
    append(&etc, "gshadow", "alice:!::\n");
    std::fs::create_dir_all(etc.join("nginx/sites-available")).unwrap();
    std::fs::write(
        etc.join("nginx/sites-available/shop"),
        "server { listen 8080; }\n",
    )
    .unwrap();
    std::fs::remove_file(etc.join("localtime")).unwrap();
    std::os::unix::fs::symlink("/usr/share/zoneinfo/Europe/Berlin", etc.join("localtime")).unwrap();
    std::fs::write(etc.join("timezone"), "Europe/Berlin\n").unwrap();
    let bookworm_etc = tree_listing(&etc);

    // Trixie published as the next version of the same branch.
    compose(&s, &corpus("t"), "debian/stable", "13");
    let out: serde_json::Value = serde_json::from_str(&arbor_ok(&[
        "--sysroot",
        &s,
        "deploy",
        "debian/stable",
        "--json",
    ]))
    .unwrap();
    let st = status(&s);
    assert_eq!(versions(&s), ["13", "12"]);
    assert!(
        st[0]["linux"].as_str().unwrap().contains("6.12"),
        "trixie's kernel boots next: {:#}",
        st[0]
    );
    let trixie = deployment_dir(&s, 0);
    let new_etc = trixie.join("etc");
    let os_release = std::fs::read_to_string(trixie.join("usr/lib/os-release")).unwrap();
    assert!(
        os_release.contains("VERSION_CODENAME=trixie"),
        "{os_release}"
    );

    // Every change of the administrator is there.
    let read = |f: &str| std::fs::read_to_string(new_etc.join(f)).unwrap();
    assert!(read("ssh/sshd_config").contains("PermitRootLogin no"));
    assert_eq!(
        read("nginx/sites-available/shop"),
        "server { listen 8080; }\n"
    );
    assert_eq!(
        std::fs::read_link(new_etc.join("localtime")).unwrap(),
        Path::new("/usr/share/zoneinfo/Europe/Berlin")
    );
    assert_eq!(read("timezone"), "Europe/Berlin\n");
    for f in ["passwd", "group", "shadow", "gshadow"] {
        assert!(
            names(&read(f)).contains(&"alice".to_string()),
            "{f} lost alice"
        );
    }
    // And so is every user and group trixie brings.
    for f in ["passwd", "group"] {
        let theirs = std::fs::read_to_string(corpus("t").join("etc").join(f)).unwrap();
        let merged = names(&read(f));
        for n in names(&theirs) {
            assert!(merged.contains(&n), "{f}: trixie's {n} is missing");
        }
    }
    // Trixie's defaults arrive where nothing was edited.
    assert_eq!(
        read("debian_version"),
        std::fs::read_to_string(corpus("t").join("etc/debian_version")).unwrap()
    );
    // Nothing was overwritten silently: every path both sides changed is reported.
    let report = out["etc_merge"].as_array().unwrap();
    let outcome = |p: &str| {
        report
            .iter()
            .find(|e| e["path"] == p)
            .map(|e| e["outcome"].as_str().unwrap().to_string())
    };
    assert_eq!(
        outcome("nginx/sites-available/shop").as_deref(),
        Some("kept-local")
    );
    assert!(
        matches!(
            outcome("ssh/sshd_config").as_deref(),
            Some("kept-local" | "conflict")
        ),
        "{report:?}"
    );
    if outcome("ssh/sshd_config").as_deref() == Some("conflict") {
        assert!(new_etc.join("ssh/sshd_config.arbor-dist").is_file());
    }

    // Rollback: bookworm, with bookworm's /etc exactly as it was.
    arbor_ok(&["--sysroot", &s, "rollback"]);
    assert_eq!(versions(&s), ["12", "13"]);
    assert_eq!(deployment_dir(&s, 0), bookworm);
    assert_eq!(tree_listing(&etc), bookworm_etc);
}

/// Paths, kinds, sizes and link targets of a tree, to compare it before and after.
fn tree_listing(dir: &Path) -> Vec<String> {
    let out = std::process::Command::new("find")
        .arg(dir)
        .args(["-printf", "%P %y %s %l %m\n"])
        .output()
        .unwrap();
    let mut lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// An image for another architecture, or one without a kernel, is refused with a
/// clear error before anything changes: the deployments stay as they were.
#[test]
fn root_an_image_for_another_architecture_or_without_a_kernel_is_refused() {
    as_root!();
    let t = scratch();
    let s = sysroot(t.path());
    compose(&s, &rootfs(t.path(), "1"), "os", "1");
    arbor_ok(&["--sysroot", &s, "deploy", "os"]);
    let before = status(&s);

    let arm = rootfs(&t.path().join("arm"), "2");
    std::fs::write(
        arm.join("var/lib/dpkg/status"),
        "Package: tzdata\nArchitecture: all\n\nPackage: libc6\nArchitecture: arm64\n",
    )
    .unwrap();
    compose(&s, &arm, "os", "2");
    let err = arbor_err(&["--sysroot", &s, "deploy", "os"]);
    assert!(
        err.contains("built for arm64") && err.contains("nothing was deployed"),
        "{err}"
    );
    assert_eq!(status(&s), before);

    let bare = rootfs(&t.path().join("bare"), "3");
    for f in ["boot/vmlinuz-6.1.0-test", "boot/initrd.img-6.1.0-test"] {
        std::fs::remove_file(bare.join(f)).unwrap();
    }
    compose(&s, &bare, "os", "3");
    let err = arbor_err(&["--sysroot", &s, "deploy", "os"]);
    assert!(err.contains("no kernel"), "{err}");
    assert_eq!(status(&s), before);
    let deploy_dir = Path::new(&s).join("arbor/deploy/debian/deploy");
    let leftovers: Vec<_> = std::fs::read_dir(&deploy_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
