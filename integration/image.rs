//! `arbor compose image`: OCI layouts built here, byte by byte, with the layer features
//! real images use (whiteouts, opaque directories, hardlinks, xattrs, owners, gzip and
//! zstd) and the hostile ones an attacker would try.
#![allow(clippy::print_stderr, clippy::print_stdout)]

#[macro_use]
mod common;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;
use sha2::Digest;

/// How a layer blob is stored.
#[derive(Clone, Copy)]
enum Packing {
    Plain,
    Gzip,
    Zstd,
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

/// A tar built entry by entry; `raw` entries bypass the tar crate's own checks so a
/// test can write the names an attacker would.
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Layer {
        Layer(tar::Builder::new(Vec::new()))
    }
    fn header(kind: tar::EntryType, mode: u32, uid: u64, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        h
    }
    fn dir(mut self, path: &str, mode: u32) -> Layer {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0, 0);
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }
    fn file(mut self, path: &str, mode: u32, uid: u64, body: &[u8]) -> Layer {
        let mut h = Self::header(tar::EntryType::Regular, mode, uid, body.len() as u64);
        self.0.append_data(&mut h, path, body).unwrap();
        self
    }
    fn xattr_file(mut self, path: &str, xattrs: &[(&str, &[u8])], body: &[u8]) -> Layer {
        let pax: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
            .collect();
        self.0
            .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), *v)))
            .unwrap();
        self.file(path, 0o644, 0, body)
    }
    fn link(mut self, kind: tar::EntryType, path: &str, target: &str) -> Layer {
        let mut h = Self::header(kind, 0o777, 0, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }
    /// An entry whose name (and link target) are written as given, unchecked.
    fn raw(mut self, kind: tar::EntryType, name: &[u8], target: &[u8], body: &[u8]) -> Layer {
        let mut h = Self::header(kind, 0o644, 0, body.len() as u64);
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        old.linkname[..target.len()].copy_from_slice(target);
        h.set_cksum();
        self.0.append(&h, body).unwrap();
        self
    }
    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// Writes an OCI layout of `layers` (bottom first) tagged `latest`; returns the
/// manifest digest.
fn layout(dir: &Path, layers: Vec<(Vec<u8>, Packing)>) -> String {
    layout_for(dir, layers, "amd64")
}

/// [`layout`] of an image for `arch`.
fn layout_for(dir: &Path, layers: Vec<(Vec<u8>, Packing)>, arch: &str) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> (String, usize) {
        let d = sha256(bytes);
        std::fs::write(blobs.join(&d[7..]), bytes).unwrap();
        (d, bytes.len())
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (tar, packing) in layers {
        diff_ids.push(sha256(&tar));
        let (blob, media) = match packing {
            Packing::Plain => (tar, "application/vnd.oci.image.layer.v1.tar"),
            Packing::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&tar).unwrap();
                (
                    e.finish().unwrap(),
                    "application/vnd.oci.image.layer.v1.tar+gzip",
                )
            }
            Packing::Zstd => (
                zstd::encode_all(&tar[..], 3).unwrap(),
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
        };
        let (digest, size) = put(&blob);
        descs.push(serde_json::json!({"mediaType": media, "digest": digest, "size": size}));
    }
    let config = serde_json::json!({
        "created": "2024-01-02T03:04:05Z",
        "architecture": arch,
        "os": "linux",
        "config": {"Labels": {"org.opencontainers.image.version": "7.1"}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let (cdigest, csize) = put(&serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest, "size": csize},
        "layers": descs,
    });
    let (mdigest, msize) = put(&serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": mdigest, "size": msize,
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    mdigest
}

/// The smallest tree compose accepts: /usr and /etc.
fn base_layer() -> Layer {
    Layer::new()
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .dir("etc", 0o755)
        .file("etc/hostname", 0o644, 0, b"image\n")
}

/// A layout of two layers (gzip, then zstd) at `img`.
fn two_layer_image(img: &Path) -> String {
    layout(
        img,
        vec![
            (
                base_layer().file("usr/bin/a", 0o755, 0, b"a").bytes(),
                Packing::Gzip,
            ),
            (
                Layer::new().file("usr/bin/b", 0o755, 0, b"b").bytes(),
                Packing::Zstd,
            ),
        ],
    )
}

fn import(sr: &str, image: &str, branch: &str) -> std::process::Output {
    arbor(&["--sysroot", sr, "compose", "image", image, "-b", branch])
}

#[test]
fn root_image_import_applies_layers_whiteouts_hardlinks_and_xattrs() {
    as_root!();
    let t = scratch();
    let sr = sysroot(t.path());
    let one = base_layer()
        .file("usr/bin/tool", 0o755, 0, b"tool 1")
        .link(tar::EntryType::Link, "usr/bin/tool-again", "usr/bin/tool")
        .file("usr/bin/su", 0o4755, 0, b"setuid")
        .file("etc/owned", 0o600, 1000, b"secret")
        .file("etc/shadow", 0o640, 0, b"root:*:1:0:99999:7:::\n")
        .file("etc/gshadow", 0o000, 0, b"root:*::\n")
        .xattr_file(
            "usr/bin/ping",
            &[("user.note", b"hello"), ("trusted.overlay.opaque", b"y")],
            b"ping",
        )
        .file("etc/gone", 0o644, 0, b"removed by layer 2")
        .dir("usr/share", 0o755)
        .dir("usr/share/d", 0o755)
        .file("usr/share/d/old", 0o644, 0, b"hidden by layer 2")
        .link(tar::EntryType::Symlink, "usr/bin/link", "tool")
        .bytes();
    let two = Layer::new()
        .file("etc/.wh.gone", 0o644, 0, b"")
        .dir("usr/share/d", 0o750)
        .file("usr/share/d/.wh..wh..opq", 0o644, 0, b"")
        .file("usr/share/d/new", 0o644, 0, b"from layer 2")
        .file("usr/bin/tool", 0o755, 0, b"tool 2")
        .bytes();
    let three = Layer::new().file("usr/bin/three", 0o700, 0, b"3").bytes();
    let img = t.path().join("img");
    let digest = layout(
        &img,
        vec![
            (one, Packing::Plain),
            (two, Packing::Gzip),
            (three, Packing::Zstd),
        ],
    );
    let out = import(&sr, &format!("oci:{}:latest", s(&img)), "img");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let co = t.path().join("co");
    arbor_ok(&["--sysroot", &sr, "checkout", "img", s(&co)]);
    let read = |p: &str| std::fs::read_to_string(co.join(p)).unwrap();
    assert_eq!(read("usr/bin/tool"), "tool 2");
    // The hardlink was to layer 1's file, which layer 2 replaced: it keeps "tool 1".
    assert_eq!(read("usr/bin/tool-again"), "tool 1");
    assert_eq!(read("usr/bin/three"), "3");
    assert_eq!(read("usr/share/d/new"), "from layer 2");
    assert!(
        !co.join("usr/share/d/old").exists(),
        "opaque directory kept a lower entry"
    );
    assert!(!co.join("usr/etc/gone").exists(), "whiteout ignored");
    assert_eq!(
        read("usr/etc/hostname"),
        "image\n",
        "compose rules: /etc is /usr/etc"
    );
    let meta = |p: &str| std::fs::symlink_metadata(co.join(p)).unwrap();
    assert_eq!(meta("usr/bin/su").mode() & 0o7777, 0o4755);
    assert_eq!(
        (
            meta("usr/etc/owned").uid(),
            meta("usr/etc/owned").mode() & 0o777
        ),
        (1000, 0o600)
    );
    assert_eq!(meta("usr/share/d").mode() & 0o777, 0o750);
    // The secrets keep the image's modes (CVE-2024-2905: never world-readable).
    assert_eq!(meta("usr/etc/shadow").mode() & 0o7777, 0o640);
    assert_eq!(meta("usr/etc/gshadow").mode() & 0o7777, 0o000);
    assert_eq!(
        std::fs::read_link(co.join("usr/bin/link")).unwrap(),
        Path::new("tool")
    );
    let x = std::process::Command::new("getfattr")
        .args(["-d", "-m", "-", "--absolute-names"])
        .arg(co.join("usr/bin/ping"))
        .output()
        .unwrap();
    let x = String::from_utf8_lossy(&x.stdout);
    assert!(x.contains("user.note=\"hello\""), "{x}");
    assert!(!x.contains("trusted.overlay"), "{x}");
    // The commit says where it came from, and status shows it once deployed.
    let show = arbor_ok(&["--sysroot", &sr, "show", "img"]);
    assert!(
        show.contains(&format!("arbor.image.digest: {digest}")),
        "{show}"
    );
    assert!(show.contains("version: 7.1"), "{show}");
    arbor_ok(&["--sysroot", &sr, "fsck"]);
}

#[test]
fn root_image_import_is_reproducible_across_repositories_and_transports() {
    as_root!();
    let t = scratch();
    let img = t.path().join("img");
    two_layer_image(&img);
    let archive = t.path().join("img.tar");
    let st = std::process::Command::new("tar")
        .args(["-C", s(&img), "-cf", s(&archive), "."])
        .status()
        .unwrap();
    assert!(st.success());
    let mut ids = Vec::new();
    for (n, src) in [
        format!("oci:{}", s(&img)),
        format!("oci:{}:latest", s(&img)),
        format!("oci-archive:{}", s(&archive)),
    ]
    .iter()
    .enumerate()
    {
        let dir = t.path().join(format!("r{n}"));
        std::fs::create_dir(&dir).unwrap();
        let sr = sysroot(&dir);
        let out = import(&sr, src, "img");
        assert!(
            out.status.success(),
            "{src}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ids.push(String::from_utf8(out.stdout).unwrap());
        // Again into the same repository: the same commit, nothing new written.
        let again = import(&sr, src, "img2");
        assert_eq!(String::from_utf8(again.stdout).unwrap(), ids[n]);
    }
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
}

/// An image whose lower layer an earlier import kept fetches only the layer above it,
/// and its upper layer's whiteouts and hardlinks on the kept tree give the very commit
/// a fresh import gives; the store stays sound (nothing linked was written through).
#[test]
fn root_image_import_reuses_kept_lower_layers() {
    as_root!();
    let t = scratch();
    let first = t.path().join("first");
    two_layer_image(&first);
    let second = t.path().join("second");
    let upper = Layer::new()
        .file("usr/bin/c", 0o755, 0, b"c")
        .file("usr/bin/.wh.a", 0o644, 0, b"")
        .link(tar::EntryType::Link, "usr/bin/host", "etc/hostname");
    let upper = upper.bytes();
    layout(
        &second,
        vec![
            (
                base_layer().file("usr/bin/a", 0o755, 0, b"a").bytes(),
                Packing::Gzip,
            ),
            (upper.clone(), Packing::Plain),
        ],
    );
    let sr = sysroot(&t.path().join("a"));
    assert!(
        import(&sr, &format!("oci:{}", s(&first)), "one")
            .status
            .success()
    );
    let out = arbor(&[
        "--sysroot",
        &sr,
        "compose",
        "image",
        &format!("oci:{}", s(&second)),
        "-b",
        "two",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["layers_reused"], 1, "{r}");
    assert_eq!(r["fetched_bytes"], upper.len() as u64, "{r}");
    let fresh = sysroot(&t.path().join("b"));
    let again = import(&fresh, &format!("oci:{}", s(&second)), "two");
    assert_eq!(
        String::from_utf8(again.stdout).unwrap().trim(),
        r["commit"]["commit"].as_str().unwrap()
    );
    let ls = arbor_ok(&["--sysroot", &sr, "ls", "two", "/usr/bin"]);
    assert!(
        ls.contains("/usr/bin/c") && !ls.contains("/usr/bin/a"),
        "{ls}"
    );
    assert_eq!(
        arbor_ok(&["--sysroot", &sr, "cat", "one", "/usr/bin/a"]),
        "a"
    );
    // Only the newest image's chains stay kept.
    let refs = arbor_ok(&["--sysroot", &sr, "refs"]);
    assert_eq!(refs.matches("image-layers/").count(), 2, "{refs}");
    arbor_ok(&["--sysroot", &sr, "fsck"]);

    // An import whose upper layer does not match its digest fails with no branch, but
    // keeps the lower layer it verified: the retry fetches only the upper one.
    let blob = second.join(format!("blobs/sha256/{}", &sha256(&upper)[7..]));
    std::fs::write(&blob, b"not the layer").unwrap();
    let retry = sysroot(&t.path().join("c"));
    let src = format!("oci:{}", s(&second));
    assert!(!import(&retry, &src, "two").status.success());
    let refs = arbor_ok(&["--sysroot", &retry, "refs"]);
    assert_eq!(refs.matches("image-layers/").count(), 1, "{refs}");
    assert!(!refs.contains("two"), "{refs}");
    std::fs::write(&blob, &upper).unwrap();
    let out = arbor(&[
        "--sysroot",
        &retry,
        "compose",
        "image",
        &src,
        "-b",
        "two",
        "--json",
    ]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["layers_reused"], 1, "{r}");
}

/// Imports a one-layer image whose layer is `bad` and checks it is refused with
/// `message`, with no branch and no object left behind.
fn refused(bad: Layer, message: &str) {
    let t = scratch();
    let sr = sysroot(t.path());
    let img = t.path().join("img");
    layout(&img, vec![(bad.bytes(), Packing::Gzip)]);
    let repo = Path::new(&sr).join("arbor/repo");
    let before = object_count(&repo);
    let out = import(&sr, &format!("oci:{}", s(&img)), "img");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "accepted a layer that should fail with {message}"
    );
    assert!(err.contains(message), "expected '{message}' in:\n{err}");
    assert_eq!(object_count(&repo), before, "objects were stored: {err}");
    assert!(!repo.join("refs/heads/img").exists());
}

#[test]
fn root_image_import_refuses_hostile_names_and_links() {
    as_root!();
    let r = tar::EntryType::Regular;
    refused(
        base_layer().raw(r, b"../escape", b"", b"x"),
        "not a plain relative path",
    );
    refused(
        base_layer().raw(r, b"/etc/passwd", b"", b"x"),
        "is absolute",
    );
    refused(
        base_layer().raw(r, b"usr//bin/x", b"", b"x"),
        "not a plain relative path",
    );
    refused(
        base_layer().raw(r, b"etc/.wh..", b"", b""),
        "names no entry",
    );
    // A symlink to outside, then a file through it.
    refused(
        base_layer()
            .link(tar::EntryType::Symlink, "usr/lib", "/tmp")
            .file("usr/lib/planted", 0o644, 0, b"x"),
        "a symlink or a file is in the way",
    );
    refused(
        base_layer().raw(
            tar::EntryType::Link,
            b"usr/bin/shadow",
            b"../../etc/shadow",
            b"",
        ),
        "target is refused",
    );
    refused(
        base_layer().raw(tar::EntryType::Link, b"usr/bin/shadow", b"etc/shadow", b""),
        "is not a file of the image",
    );
}

#[test]
fn root_image_import_refuses_tampered_blobs_and_bombs() {
    as_root!();
    // A layer whose bytes do not match its digest (same size).
    let t = scratch();
    let sr = sysroot(t.path());
    let img = t.path().join("img");
    layout(&img, vec![(base_layer().bytes(), Packing::Plain)]);
    let manifest_index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(img.join("index.json")).unwrap()).unwrap();
    let mdigest = manifest_index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(img.join("blobs/sha256").join(&mdigest[7..])).unwrap(),
    )
    .unwrap();
    let layer = img
        .join("blobs/sha256")
        .join(&manifest["layers"][0]["digest"].as_str().unwrap()[7..]);
    let mut bytes = std::fs::read(&layer).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(&layer, &bytes).unwrap();
    let out = import(&sr, &format!("oci:{}", s(&img)), "img");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("tampered"), "{err}");
    // One byte more than declared.
    bytes[at] ^= 1;
    bytes.extend_from_slice(b"!");
    std::fs::write(&layer, &bytes).unwrap();
    let out = import(&sr, &format!("oci:{}", s(&img)), "img");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not the"), "{err}");
    assert!(!Path::new(&sr).join("arbor/repo/refs/heads/img").exists());
    // A gzip bomb: 256 MiB of zeros in one file, a few hundred KiB compressed.
    let zeros = vec![0u8; 256 << 20];
    refused(
        base_layer().file("usr/bin/bomb", 0o644, 0, &zeros),
        "unpacks to more than",
    );
}

/// Builds the images of `containerfiles/` (offline, with podman) and returns their
/// names; the Debian package comes from `$ARBOR_DEB` or is built.
fn build_containerfiles() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("containerfiles/build.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "containerfiles/build.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[cfg_attr(not(arbor_root), ignore = "needs root: podman builds images as root")]
fn root_containerfile_images_build_offline_and_import_with_arbor_inside() {
    require_root!();
    build_containerfiles();
    let t = scratch();
    let sr = sysroot(t.path());
    for name in ["base", "update", "broken"] {
        let out = import(
            &sr,
            &format!("containers-storage:localhost/arbor-{name}"),
            name,
        );
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cat = |branch: &str, path: &str| arbor_ok(&["--sysroot", &sr, "cat", branch, path]);
    // base: arbor from its package, the initramfs rebuilt with arbor's hook, the loader
    // for install to-disk, the health check, the demo service enabled.
    let ls = arbor_ok(&["--sysroot", &sr, "ls", "base", "/usr/lib/modules"]);
    let kver = ls
        .lines()
        .find_map(|l| {
            l.split_once("/usr/lib/modules/")
                .map(|(_, k)| k.trim().to_string())
        })
        .expect("a kernel in the image");
    let initramfs = t.path().join("initramfs.img");
    let bytes = std::process::Command::new(arbor_bin())
        .args([
            "--sysroot",
            &sr,
            "cat",
            "base",
            &format!("/usr/lib/modules/{kver}/initramfs.img"),
        ])
        .output()
        .unwrap()
        .stdout;
    std::fs::write(&initramfs, bytes).unwrap();
    let listed = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("zcat {} | cpio -t 2>/dev/null", s(&initramfs)))
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("usr/lib/arbor/arbor-prepare-root"),
        "hook missing from the initramfs"
    );
    assert!(listed.contains("scripts/local-bottom/arbor"));
    for path in [
        "/usr/bin/arbor",
        "/usr/bin/arbord",
        "/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
        "/usr/share/dbus-1/system-services/org.arbor.Arbor1.service",
        "/usr/etc/systemd/system/multi-user.target.wants/arbor-demo.service",
        "/usr/etc/systemd/system/multi-user.target.wants/arbor-health-check.service",
    ] {
        arbor_ok(&["--sysroot", &sr, "ls", "base", path]);
    }
    assert!(cat("base", "/usr/etc/arbor/health.d/10-required").contains("is-active"));
    // update: a package added, a configuration default and the service's program changed.
    let diff = arbor_ok(&["--sysroot", &sr, "diff", "base", "update"]);
    for change in [
        "A    /usr/bin/hello",
        "M    /usr/libexec/arbor-demo/demo-server",
        "M    /usr/etc/arbor-demo.conf",
    ] {
        assert!(diff.contains(change), "{change} not in:\n{diff}");
    }
    let db = arbor_ok(&["--sysroot", &sr, "db", "diff", "base", "update"]);
    assert!(db.contains("hello"), "{db}");
    assert!(cat("update", "/usr/libexec/arbor-demo/demo-server").contains("demo-server 2"));
    // broken: the required check fails.
    assert!(cat("broken", "/usr/etc/arbor/health.d/10-required").contains("exit 1"));
    // Deployed, status names the image it came from.
    arbor_ok(&["--sysroot", &sr, "deploy", "update"]);
    let st = status(&sr);
    assert!(
        st[0]["image"].as_str().unwrap().starts_with("sha256:"),
        "{st:?}"
    );
}

/// An image pushed (with skopeo) to a real registry imports from it as
/// `docker://HOST/NAME:TAG`, streamed, into the very commit the same image gives from
/// a layout; a blob the registry serves changed is refused, with no branch made.
#[test]
fn root_image_import_from_a_registry_is_the_same_commit_as_from_a_layout() {
    as_root!();
    let t = scratch();
    let img = t.path().join("img");
    two_layer_image(&img);
    let reg = common::registry::Registry::start(&t.path().join("registry"), None);
    let dest = format!("docker://{}/test/img:7", reg.host);
    let st = std::process::Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:latest", s(&img)))
        .arg(&dest)
        .status()
        .unwrap();
    assert!(st.success(), "skopeo copy to the registry");
    let sr = sysroot(&t.path().join("sys"));
    let from_layout = import(&sr, &format!("oci:{}", s(&img)), "img");
    assert!(from_layout.status.success());
    let from_registry = import(&sr, &dest, "img-reg");
    assert!(
        from_registry.status.success(),
        "{}",
        String::from_utf8_lossy(&from_registry.stderr)
    );
    assert_eq!(from_registry.stdout, from_layout.stdout);
    let spelled = import(
        &sr,
        &format!("registry:{}/test/img:7", reg.host),
        "img-reg2",
    );
    assert_eq!(spelled.stdout, from_layout.stdout);

    // The registry serves other bytes for the second layer: refused, no branch.
    let fresh = sysroot(&t.path().join("sys2"));
    let manifest: serde_json::Value = {
        let out = std::process::Command::new("curl")
            .args([
                "-sf",
                "-H",
                "Accept: application/vnd.oci.image.manifest.v1+json",
            ])
            .arg(format!("http://{}/v2/test/img/manifests/7", reg.host))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let layer = manifest["layers"][1]["digest"].as_str().unwrap();
    let blob = reg.blob_file(layer.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let out = import(&fresh, &dest, "bad");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a tampered layer imported");
    assert!(
        err.contains("corrupt or tampered") || err.contains("unpacks to"),
        "{err}"
    );
    let refs = arbor(&["--sysroot", &fresh, "refs"]);
    assert!(!String::from_utf8_lossy(&refs.stdout).contains("bad"));

    // An image for another architecture: refused before a layer is read.
    let arm = t.path().join("arm");
    layout_for(&arm, vec![(base_layer().bytes(), Packing::Gzip)], "arm64");
    let dest = format!("docker://{}/test/arm:1", reg.host);
    let st = std::process::Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:latest", s(&arm)))
        .arg(&dest)
        .status()
        .unwrap();
    assert!(st.success(), "skopeo copy to the registry");
    let out = import(&fresh, &dest, "arm");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("linux/arm64, not linux/amd64"),
        "{err}"
    );
}
