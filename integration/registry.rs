//! A publication in an OCI registry (docs/registry.md), against Debian's real
//! `docker-registry`: `publish init|add oci://…` pushes it, machines follow it with
//! `remote add origin oci://…` (a full install, then a delta upgrade that moves the
//! same bytes as over HTTP), a login by htpasswd, a registry whose blob was tampered
//! with, and a pull-through mirror that serves an upgrade with the origin stopped.

#![allow(clippy::print_stdout)] // the byte counts, for the log

#[macro_use]
mod common;

use std::path::Path;

use common::fake_registry::{FakeRegistry, Fault};
use common::fleet::Machine;
use common::nginx::Nginx;
use common::registry::Registry;
use common::{arbor_err, arbor_ok, build_repo, s, scratch};

/// Publishes version V of the build repository to `target` (a folder or oci://).
fn publish_add(build: &str, target: &str, keys: &Path, v: &str, extra: &[&str]) -> String {
    let rev = format!("os/{v}");
    let mut args = vec![
        "--repo",
        build,
        "publish",
        "add",
        target,
        "--keys",
        s(keys),
        "--channel",
        "stable",
        "--version",
        v,
        "--ref",
        &rev,
    ];
    args.extend_from_slice(extra);
    arbor_ok(&args)
}

fn upgrade(m: &Machine) -> serde_json::Value {
    serde_json::from_str(&m.ok(&["upgrade", "--json"])).unwrap()
}

/// Publish to a registry, follow it from a machine (install, then a delta upgrade),
/// and compare with the same publication over HTTP; then a pull-through mirror takes
/// over with the origin registry stopped, and a tampered blob is refused.
#[test]
fn root_a_publication_in_a_registry_is_followed_like_a_folder() {
    as_root!();
    let t = scratch();
    let build = build_repo(t.path(), &["1", "2"]);
    let mut origin = Registry::start(&t.path().join("registry"), None);
    let target = origin.url("arbor/os");
    let keys = t.path().join("keys");
    let init = arbor_ok(&["publish", "init", &target, "--keys", s(&keys)]);
    assert!(init.contains("pushed"), "{init}");
    let out = publish_add(&build, &target, &keys, "1", &[]);
    assert!(out.contains("pushed"), "{out}");
    let staging = keys.join("publication");
    let root = staging.join("metadata/1.root.json");

    // The registry holds an OCI 1.1 artifact manifest under the metadata tag.
    let manifest = std::process::Command::new("curl")
        .args([
            "-sf",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
        ])
        .arg(format!(
            "http://{}/v2/arbor/os/manifests/arbor-metadata",
            origin.host
        ))
        .output()
        .unwrap();
    let m: serde_json::Value = serde_json::from_slice(&manifest.stdout).unwrap();
    assert_eq!(
        m["artifactType"], "application/vnd.arbor.publication.v1",
        "{m:#}"
    );
    assert!(
        m["layers"].as_array().unwrap().iter().any(
            |l| l["annotations"]["org.opencontainers.image.title"] == "metadata/timestamp.json"
        ),
        "{m:#}"
    );

    let a = Machine::new(t.path(), "a", &target, &root);
    a.ok(&["deploy", "origin:stable"]);
    assert_eq!(a.reboot(), "1");

    // The same publication over HTTP, for the comparison (a copy: the keys folder is
    // the publisher's alone).
    let srv = t.path().join("srv");
    let copy = |to: &Path| {
        let _ = std::fs::remove_dir_all(to);
        let st = std::process::Command::new("cp")
            .args(["-a", s(&staging), s(to)])
            .status()
            .unwrap();
        assert!(st.success());
    };
    copy(&srv);
    let nginx = Nginx::start(&srv, &t.path().join("nginx"), None);
    let b = Machine::new(t.path(), "b", &nginx.url, &root);
    b.ok(&["deploy", "origin:stable"]);
    assert_eq!(b.reboot(), "1");

    publish_add(&build, &target, &keys, "2", &["--deltas-from", "1"]);
    copy(&srv);
    origin.clear_log();
    let via_registry = upgrade(&a);
    let via_http = upgrade(&b);
    for v in [&via_registry, &via_http] {
        assert_eq!(v["update"]["offered"]["version"], "2", "{v:#}");
        assert_eq!(v["update"]["fetched"]["method"], "deltas", "{v:#}");
    }
    let (reg_bytes, http_bytes) = (
        via_registry["update"]["fetched"]["bytes"].as_u64().unwrap(),
        via_http["update"]["fetched"]["bytes"].as_u64().unwrap(),
    );
    let log = origin.requests();
    let served: u64 = log.iter().map(|r| r.3).sum();
    println!(
        "delta upgrade: {reg_bytes} bytes from the registry ({served} bytes served in all), \
         {http_bytes} over HTTP"
    );
    assert_eq!(reg_bytes, http_bytes);
    let manifests = log.iter().filter(|r| r.1.contains("/manifests/")).count();
    assert_eq!(
        manifests, 1,
        "one read of the metadata tag per check: {log:?}"
    );
    assert_eq!(a.reboot(), "2");
    a.ok(&["fsck"]);

    // A pull-through mirror, warmed by one machine, serves another with the origin
    // registry stopped.
    let mut proxy = Registry::start_proxy(&t.path().join("proxy"), &origin.host);
    let c = Machine::new(t.path(), "c", &proxy.url("arbor/os"), &root);
    c.ok(&["deploy", "origin:stable", "--version", "1"]);
    assert_eq!(c.reboot(), "1");
    let warm = Machine::new(t.path(), "warm", &proxy.url("arbor/os"), &root);
    warm.ok(&["deploy", "origin:stable", "--version", "1"]);
    warm.reboot();
    upgrade(&warm);
    origin.stop();
    let v = upgrade(&c);
    assert_eq!(v["update"]["offered"]["version"], "2", "{v:#}");
    assert_eq!(c.reboot(), "2");
    proxy.stop();
    origin.resume();

    // A registry that serves other bytes for a blob than its digest: caught by the
    // signed hashes, nothing staged.
    let d = Machine::new(t.path(), "d", &target, &root);
    d.ok(&["deploy", "origin:stable", "--version", "1"]);
    assert_eq!(d.reboot(), "1");
    let idx: serde_json::Value =
        serde_json::from_str(&d.ok(&["remote", "show", "origin", "stable"])).unwrap();
    let sha = idx["versions"][1]["deltas"][0]["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = origin.blob_file(&sha);
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let out = d.run(&["upgrade"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("BLAKE3"), "{err}");
    assert_eq!(d.booted(), "1");
    let st: serde_json::Value = serde_json::from_str(&d.ok(&["status", "--json"])).unwrap();
    assert_eq!(
        st["deployments"].as_array().unwrap().len(),
        1,
        "nothing staged: {st:#}"
    );
}

/// A registry that asks for a login: the publisher and the machine log in with
/// credentials files of mode 0600, a machine without them gets a clear error, and
/// the secrets appear nowhere in the output, the history or the remote's config.
#[test]
fn root_a_registry_with_a_login_is_published_to_and_followed() {
    as_root!();
    let t = scratch();
    let build = build_repo(t.path(), &["1"]);
    let reg = Registry::start(&t.path().join("registry"), Some(("fleet", "s3cret-pw")));
    let target = reg.url("os");
    let keys = t.path().join("keys");
    let creds = t.path().join("login.toml");
    std::fs::write(&creds, "username = \"fleet\"\npassword = \"s3cret-pw\"\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
    let init = [
        "publish",
        "init",
        &target,
        "--keys",
        s(&keys),
        "--credentials",
        s(&creds),
    ];
    let err = arbor_err(&init);
    assert!(err.contains("0600"), "{err}");
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = arbor_err(&[
        "publish",
        "init",
        &target,
        "--keys",
        s(&t.path().join("k2")),
    ]);
    assert!(err.contains("asks for a login"), "{err}");
    arbor_ok(&init);
    publish_add(&build, &target, &keys, "1", &["--credentials", s(&creds)]);
    let root = keys.join("publication/metadata/1.root.json");

    let refused = common::sysroot(&t.path().join("anon"));
    let err = arbor_err(&[
        "--sysroot",
        &refused,
        "remote",
        "add",
        "origin",
        &target,
        "--trust",
        s(&root),
    ]);
    assert!(err.contains("asks for a login"), "{err}");

    let m = Machine::with_remote(t.path(), "m", &target, &root, &["--credentials", s(&creds)]);
    m.ok(&["deploy", "origin:stable"]);
    assert_eq!(m.reboot(), "1");
    let kept = Path::new(&m.sys).join("arbor/remotes/origin/credentials.toml");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&kept).unwrap().mode() & 0o777, 0o600);
    let history = m.ok(&["history", "--json"]);
    let config =
        std::fs::read_to_string(Path::new(&m.sys).join("arbor/remotes/origin/remote.toml"))
            .unwrap();
    let status = m.ok(&["status", "--json"]);
    for text in [&history, &config, &status] {
        assert!(!text.contains("s3cret-pw"), "the password leaked: {text}");
    }
}

/// A registry that answers 429 (tried again after its `Retry-After`), sends a manifest
/// whose bytes are not its digest, cuts blobs short (clear errors, nothing staged),
/// moves its tag mid-fetch (read once: no harm), and one that asks for the bearer-token exchange (a machine with a token file logs
/// in; one without is told).
#[test]
fn root_a_misbehaving_registry_gets_retries_or_clear_errors_and_nothing_unverified_is_staged() {
    as_root!();
    let t = scratch();
    let build = build_repo(t.path(), &["1", "2"]);
    let (dir, keys) = (t.path().join("pub"), t.path().join("keys"));
    arbor_ok(&["publish", "init", s(&dir), "--keys", s(&keys)]);
    publish_add(&build, s(&dir), &keys, "1", &[]);
    let reg = FakeRegistry::start(dir.clone());
    let root = dir.join("metadata/1.root.json");
    let m = Machine::new(t.path(), "m", &reg.url(), &root);
    m.ok(&["deploy", "origin:stable"]);
    assert_eq!(m.reboot(), "1");
    publish_add(&build, s(&dir), &keys, "2", &["--deltas-from", "1"]);
    let nothing_staged = |m: &Machine| {
        let st: serde_json::Value = serde_json::from_str(&m.ok(&["status", "--json"])).unwrap();
        assert_eq!(st["deployments"].as_array().unwrap().len(), 1, "{st:#}");
    };

    reg.fault(Fault::TooMany { n: 2, secs: 1 });
    let started = std::time::Instant::now();
    let check = m.ok(&["upgrade", "--check"]);
    assert!(check.contains('2'), "{check}");
    let waited = started.elapsed();
    let slowed = reg.log().iter().filter(|(_, st)| *st == 429).count();
    assert_eq!(slowed, 2, "{:?}", reg.log());
    assert!(
        waited >= std::time::Duration::from_secs(2),
        "Retry-After honoured: {waited:?}"
    );

    reg.fault(Fault::WrongManifestDigest);
    let out = m.run(&["upgrade"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not to the digest the registry gives"),
        "{err}"
    );
    nothing_staged(&m);

    reg.fault(Fault::Truncated);
    let out = m.run(&["upgrade"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("broke off"), "{err}");
    nothing_staged(&m);

    // The tag moves once it was read: the upgrade reads it once, and everything else
    // by the digests the signed metadata gives, so it goes on unharmed.
    reg.fault(Fault::TagMoves);
    let v = upgrade(&m);
    assert!(v["update"]["deployment"].is_string(), "{v:#}");
    let tag_reads = reg
        .log()
        .iter()
        .filter(|(p, _)| p.ends_with("/manifests/arbor-metadata"))
        .count();
    assert_eq!(tag_reads, 1, "{:?}", reg.log());

    reg.fault(Fault::None);
    reg.require_login("fleet", "tok-file-secret");
    let out = m.run(&["upgrade", "--check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("token service"),
        "{err}"
    );
    let token = t.path().join("token");
    std::fs::write(&token, "tok-file-secret\n").unwrap();
    let creds = t.path().join("login.toml");
    std::fs::write(
        &creds,
        format!(
            "username = \"fleet\"\ntoken_file = \"{}\"\n",
            token.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    for f in [&token, &creds] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let n = Machine::with_remote(
        t.path(),
        "n",
        &reg.url(),
        &root,
        &["--credentials", s(&creds)],
    );
    n.ok(&["deploy", "origin:stable", "--version", "1"]);
    assert_eq!(n.reboot(), "1");
    let v = upgrade(&n);
    assert_eq!(v["update"]["fetched"]["method"], "deltas", "{v:#}");
    assert_eq!(n.reboot(), "2");
    assert!(
        reg.log()
            .iter()
            .any(|(p, st)| p.starts_with("/token") && *st == 200)
    );
}
