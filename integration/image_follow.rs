//! `arbor switch docker://…` and `upgrade` following the tag, the bootc way: the
//! Containerfile images (containerfiles/build.sh) pushed to Debian's docker-registry
//! with `podman push`, followed by a folder sysroot.
#![allow(clippy::print_stderr, clippy::print_stdout)]

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::registry::Registry;
use common::*;

/// Builds the base and update images (podman's cache makes a rebuild quick).
fn build_images() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("containerfiles/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(["base", "update"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "containerfiles/build.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `podman push localhost/arbor-NAME` to `dest` (docker://…).
fn push(name: &str, dest: &str) {
    let out = Command::new("podman")
        .args(["push", "--quiet", "--tls-verify=false"])
        .arg(format!("localhost/arbor-{name}"))
        .arg(dest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "podman push {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The manifest `os/arbor:TAG` names.
fn manifest(reg: &Registry, tag: &str) -> (String, BTreeSet<String>, String) {
    manifest_of(reg, &format!("os/arbor:{tag}"))
}

/// The manifest NAME:TAG names: (its digest, its config and layer digests, its
/// config's).
fn manifest_of(reg: &Registry, reference: &str) -> (String, BTreeSet<String>, String) {
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{}/{reference}", reg.host))
        .output()
        .unwrap();
    assert!(out.status.success());
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut blobs: BTreeSet<String> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    let config = m["config"]["digest"].as_str().unwrap().to_string();
    blobs.insert(config.clone());
    (sha256(&out.stdout), blobs, config)
}

fn sha256(b: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

/// The blobs the registry sent since its log was cleared.
fn blobs_sent(reg: &Registry) -> BTreeSet<String> {
    reg.requests()
        .into_iter()
        .filter(|(m, p, st, _)| m == "GET" && *st == 200 && p.contains("/blobs/"))
        .map(|(_, p, _, _)| p.rsplit('/').next().unwrap().to_string())
        .collect()
}

/// The origin of the deployment that runs next (staged, else the default), as the
/// origin file says: "refspec image-digest held".
fn next_origin(sr: &str) -> String {
    let out = arbor_ok(&["--sysroot", sr, "status", "--json"]);
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    let d = if st["staged"].is_object() {
        &st["staged"]
    } else {
        &st["deployments"][0]
    };
    let o = &d["origin"];
    format!(
        "{} {} {}",
        o["refspec"].as_str().unwrap(),
        o["image_digest"].as_str().unwrap_or("-"),
        if o["override_commit"].is_string() {
            "held"
        } else {
            "following"
        }
    )
}

#[test]
#[cfg_attr(
    not(arbor_root),
    ignore = "needs root: podman builds and pushes images as root"
)]
fn root_switch_follows_a_tag_fetching_only_the_new_layers() {
    require_root!();
    build_images();
    let t = scratch();
    let reg = Registry::start(&t.path().join("registry"), None);
    let image = format!("docker://{}/os/arbor", reg.host);
    push("base", &format!("{image}:latest"));
    let (base_digest, base_blobs, base_config) = manifest(&reg, "latest");
    let sr = sysroot(t.path());

    // The first switch fetches every layer and deploys the image; the origin tracks the
    // tag and records the digest.
    let out = arbor_ok(&["--sysroot", &sr, "switch", &image]);
    assert!(out.contains("0 kept from an earlier import"), "{out}");
    let origin = next_origin(&sr);
    let file = std::fs::read_dir(Path::new(&sr).join("arbor/deploy/debian/deploy"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".origin"))
        .unwrap();
    let text = std::fs::read_to_string(file.path()).unwrap();
    assert!(
        text.contains(&format!("image-digest={base_digest}")),
        "{text}"
    );
    assert_eq!(origin, format!("{image}:latest {base_digest} following"));
    let out = arbor_ok(&["--sysroot", &sr, "upgrade"]);
    assert!(out.contains("no upgrade"), "{out}");

    // The tag moves to the update: only its own layers (and config) are fetched.
    push("update", &format!("{image}:latest"));
    let (update_digest, update_blobs, update_config) = manifest(&reg, "latest");
    let new: BTreeSet<String> = update_blobs.difference(&base_blobs).cloned().collect();
    assert!(!new.is_empty() && new.len() < update_blobs.len());
    // --check says so, fetching the manifest and config only.
    reg.clear_log();
    let out = arbor_ok(&["--sysroot", &sr, "upgrade", "--check"]);
    assert!(
        out.contains("image update available") && out.contains(&update_digest),
        "{out}"
    );
    assert_eq!(blobs_sent(&reg), BTreeSet::from([update_config]));
    reg.clear_log();
    let out = arbor(&["--sysroot", &sr, "upgrade", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let u: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(u["image"]["digest"], update_digest.as_str(), "{u}");
    assert_eq!(u["image"]["previous"], base_digest.as_str(), "{u}");
    assert_eq!(
        u["image"]["layers_reused"].as_u64().unwrap() as usize,
        base_blobs.len() - 1,
        "{u}"
    );
    assert_eq!(
        blobs_sent(&reg),
        new,
        "only the new layers and config are fetched"
    );
    assert_eq!(
        next_origin(&sr),
        format!("{image}:latest {update_digest} following")
    );
    let staged = u["deploy"]["deployment"]["commit"]
        .as_str()
        .unwrap()
        .to_string();
    let ls = arbor_ok(&["--sysroot", &sr, "ls", &staged, "/usr/bin/hello"]);
    assert!(ls.contains("/usr/bin/hello"), "{ls}");
    // Built over kept layers, the commit is the one a fresh import gives.
    let fresh = sysroot(&t.path().join("fresh"));
    let again = arbor_ok(&[
        "--sysroot",
        &fresh,
        "compose",
        "image",
        &format!("{image}:latest"),
        "-b",
        "img",
    ]);
    assert_eq!(again.trim(), staged);

    // --digest pins the base image: its layers are all here, only its config is
    // fetched, and upgrade refuses to move until a switch without it.
    reg.clear_log();
    let out = arbor_ok(&["--sysroot", &sr, "switch", &image, "--digest", &base_digest]);
    assert!(out.contains("held at this digest"), "{out}");
    assert_eq!(blobs_sent(&reg), BTreeSet::from([base_config]));
    assert_eq!(
        next_origin(&sr),
        format!("{image}:latest {base_digest} held")
    );
    let err = arbor_err(&["--sysroot", &sr, "upgrade"]);
    assert!(
        err.contains("held at") && err.contains("arbor switch"),
        "{err}"
    );
    let out = arbor_ok(&["--sysroot", &sr, "switch", &format!("{image}:latest")]);
    assert!(out.contains(&update_digest), "{out}");

    // An image without a kernel is refused before anything is deployed, and the
    // layers kept for the followed image stay kept.
    let ctx = t.path().join("tiny");
    std::fs::create_dir_all(ctx.join("usr/bin")).unwrap();
    std::fs::create_dir_all(ctx.join("etc")).unwrap();
    std::fs::write(ctx.join("usr/bin/hi"), "hi\n").unwrap();
    std::fs::write(ctx.join("etc/hostname"), "tiny\n").unwrap();
    std::fs::write(
        ctx.join("Containerfile"),
        "FROM scratch\nCOPY usr /usr\nCOPY etc /etc\n",
    )
    .unwrap();
    podman_build(&ctx, "test-tiny");
    push("test-tiny", &format!("docker://{}/os/tiny:1", reg.host));
    // The refs of kept layers (a failed import adds those it verified, for a retry).
    let kept = |sr: &str| -> BTreeSet<String> {
        arbor_ok(&["--sysroot", sr, "refs"])
            .lines()
            .filter(|l| l.starts_with("image-layers/"))
            .map(str::to_string)
            .collect()
    };
    let (layers_before, before) = (kept(&sr), status(&sr).len());
    let err = arbor_err(&[
        "--sysroot",
        &sr,
        "switch",
        &format!("docker://{}/os/tiny:1", reg.host),
    ]);
    assert!(err.contains("no kernel"), "{err}");
    assert!(kept(&sr).is_superset(&layers_before));
    assert_eq!(status(&sr).len(), before);
    assert_eq!(
        next_origin(&sr),
        format!("{image}:latest {update_digest} following")
    );

    // Bad references and a tag that is not there: clear errors, nothing deployed.
    for (args, says) in [
        (vec![format!("{image}@{base_digest}")], "names a digest"),
        (
            vec![image.clone(), "--digest".into(), "sha256:abc".into()],
            "--digest",
        ),
        (vec![format!("{image}:missing")], "missing"),
        (vec!["oci:/nowhere".into()], "not a registry image"),
    ] {
        let mut a = vec!["--sysroot", &sr, "switch"];
        a.extend(args.iter().map(String::as_str));
        let err = arbor_err(&a);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert_eq!(status(&sr).len(), before);
    arbor_ok(&["--sysroot", &sr, "fsck"]);
}

/// Builds a small image from a tiny Debian-shaped tree of VERSION (with a kernel), as
/// `localhost/arbor-test-small-VERSION`.
fn small_image(dir: &Path, version: &str) {
    let ctx = dir.join(format!("ctx-{version}"));
    std::fs::create_dir_all(&ctx).unwrap();
    let tree = rootfs(&ctx, version);
    std::fs::rename(&tree, ctx.join("rootfs")).unwrap();
    std::fs::write(ctx.join("Containerfile"), "FROM scratch\nCOPY rootfs/ /\n").unwrap();
    podman_build(&ctx, &format!("test-small-{version}"));
}

/// Builds the Containerfile in `ctx` offline (no network, chroot isolation, as
/// containerfiles/build.sh does) as `localhost/arbor-NAME`.
fn podman_build(ctx: &Path, name: &str) {
    let built = Command::new("unshare")
        .args(["--net", "podman", "build", "--quiet", "--pull=never"])
        .args(["--isolation=chroot", "-t"])
        .arg(format!("localhost/arbor-{name}"))
        .arg(ctx)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
}

/// The daemon follows an image as the CLI does: Rebase with a docker:// reference
/// switches (and pins, with the "digest" option), Check and Upgrade follow the tag.
#[test]
#[cfg_attr(not(arbor_root), ignore = "needs root: podman builds images as root")]
fn root_the_daemon_switches_to_an_image_and_follows_its_tag() {
    require_root!();
    let t = scratch();
    small_image(t.path(), "1");
    small_image(t.path(), "2");
    let reg = Registry::start(&t.path().join("registry"), None);
    let image = format!("docker://{}/os/small:stable", reg.host);
    push("test-small-1", &image);
    let (d1, _, _) = small_manifest(&reg);
    let sr = sysroot(t.path());
    let bus = common::bus::Bus::launch(&sr, 60, None);
    let p = bus.start(&["Rebase", "sa{sv}", &image, "0"]).unwrap();
    assert_eq!(bus.wait(&p), (true, String::new()));
    assert_eq!(next_origin(&sr), format!("{image} {d1} following"));

    push("test-small-2", &image);
    let (d2, _, _) = small_manifest(&reg);
    let p = bus.start(&["Check", "a{sv}", "0"]).unwrap();
    assert_eq!(bus.wait(&p), (true, String::new()));
    assert_eq!(next_origin(&sr), format!("{image} {d1} following"));
    let p = bus.start(&["Upgrade", "a{sv}", "0"]).unwrap();
    assert_eq!(bus.wait(&p), (true, String::new()));
    assert_eq!(next_origin(&sr), format!("{image} {d2} following"));
    let st: serde_json::Value =
        serde_json::from_str(&arbor_ok(&["--sysroot", &sr, "status", "--json"])).unwrap();
    let staged = st["staged"]["commit"].as_str().unwrap();
    assert_eq!(
        arbor_ok(&["--sysroot", &sr, "cat", staged, "/usr/bin/tool"]),
        "tool 2\n"
    );

    let p = bus
        .start(&["Rebase", "sa{sv}", &image, "1", "digest", "s", &d1])
        .unwrap();
    assert_eq!(bus.wait(&p), (true, String::new()));
    assert_eq!(next_origin(&sr), format!("{image} {d1} held"));
    // Options of channels are refused for an image.
    let err = bus
        .start(&["Rebase", "sa{sv}", &image, "1", "version", "s", "2"])
        .unwrap_err();
    assert!(err.contains("version"), "{err}");
}

/// The manifest `os/small:stable` names.
fn small_manifest(reg: &Registry) -> (String, BTreeSet<String>, String) {
    manifest_of(reg, "os/small:stable")
}
