//! Remote updates end to end: a published folder served by a real nginx, clients that
//! deploy from it, upgrade through deltas, follow phased rollouts, resume interrupted
//! downloads, boot the result, and refuse every kind of hostile server.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::nginx::Nginx;
use common::{corpus, s, scratch};

const MACHINE: &str = "5f1e0c9a2b7d4e3f8a6b1c0d9e8f7a6b";

/// Runs arbor as a client machine with a fixed machine id.
fn run(args: &[&str]) -> Output {
    Command::new(common::arbor_bin())
        .args(args)
        .env_remove("ARBOR_REPO")
        .env("ARBOR_MACHINE_ID", MACHINE)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "arbor {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn err(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "arbor {args:?} should have failed");
    String::from_utf8(out.stderr).unwrap()
}

fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(args)).unwrap()
}

/// A client sysroot with remote `origin` added.
fn client(dir: &Path, url: &str, root_json: &Path) -> String {
    let sys = dir.to_str().unwrap().to_string();
    ok(&["admin", "init-fs", &sys]);
    ok(&["--sysroot", &sys, "admin", "os-init", "debian"]);
    ok(&[
        "--sysroot",
        &sys,
        "remote",
        "add",
        "origin",
        url,
        "--trust",
        s(root_json),
    ]);
    sys
}

/// Publishes REF of repository `b` as VERSION of channel stable in folder `p`.
fn publish(b: &str, p: &str, version: &str, rev: &str, extra: &[&str]) {
    let mut args = vec![
        "--repo",
        b,
        "publish",
        "add",
        p,
        "--channel",
        "stable",
        "--version",
        version,
        "--ref",
        rev,
    ];
    args.extend_from_slice(extra);
    ok(&args);
}

fn offered(sys: &str) -> Option<String> {
    let v = json(&["--sysroot", sys, "upgrade", "--check", "--json"]);
    v["update"]["offered"]["version"]
        .as_str()
        .map(str::to_string)
}

fn device_phase(sys: &str, version: &str) -> u8 {
    let v = json(&[
        "--sysroot",
        sys,
        "upgrade",
        "--dry-run",
        "--phase-override",
        "--json",
    ]);
    let c = v["update"]["considered"].as_array().unwrap();
    let entry = c.iter().find(|x| x["version"] == version).unwrap();
    entry["device_phase"].as_u64().unwrap() as u8
}

/// A build repository and the folder nginx will serve (`srv/pub`), both empty.
fn server(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let build = dir.join("build");
    ok(&["--repo", s(&build), "init"]);
    let srv = dir.join("srv");
    (build, srv.clone(), srv.join("pub"))
}

#[test]
fn an_update_comes_by_a_delta_resumes_after_a_kill_and_boots_healthy() {
    as_root!();
    let t = scratch();
    let (build, srv, pubdir) = server(t.path());
    let (b, p) = (s(&build), s(&pubdir));
    for (tree, branch, v) in [("a", "os/stable", "1"), ("b", "os/stable", "2")] {
        ok(&[
            "--repo",
            b,
            "compose",
            "rootfs",
            s(&corpus(tree)),
            "-b",
            branch,
            "--version",
            v,
        ]);
    }
    ok(&["publish", "init", p]);
    publish(b, p, "1", "os/stable^", &[]);
    // Deltas come at 400 KB/s, so one can be interrupted half-way.
    let nginx = Nginx::start(&srv, &t.path().join("nginx"), Some(400_000));
    let url = format!("{}pub", nginx.url);
    let sys = client(
        &t.path().join("client"),
        &url,
        &pubdir.join("metadata/1.root.json"),
    );

    // A fresh machine installs version 1: a full fetch, every object verified.
    let out = ok(&["--sysroot", &sys, "deploy", "origin:stable"]);
    assert!(out.contains("by full"), "{out}");
    assert_eq!(common::versions(&sys), ["1"]);
    assert!(offered(&sys).is_none(), "nothing newer yet");

    // Version 2, with a delta from 1.
    publish(b, p, "2", "os/stable", &[]);
    let plan = json(&["--sysroot", &sys, "upgrade", "--dry-run", "--json"]);
    assert_eq!(plan["upgraded"], false, "a dry run changes nothing");
    let plan = &plan["update"];
    assert_eq!(plan["offered"]["version"], "2", "{plan:#}");
    let cands = plan["plan"]["candidates"].as_array().unwrap();
    assert_eq!(
        cands[0]["kind"], "deltas",
        "the delta is the cheapest: {plan:#}"
    );
    let delta_size = cands[0]["bytes"].as_u64().unwrap();
    let full = cands.iter().find(|c| c["kind"] == "full").unwrap();
    assert!(delta_size * 3 < full["bytes"].as_u64().unwrap(), "{plan:#}");
    // The index says what a full fetch from version 1 costs, so the choice needs no
    // manifest (hundreds of kilobytes).
    assert_eq!(plan["plan"]["full_estimated"], true, "{plan:#}");
    let text = ok(&["--sysroot", &sys, "upgrade", "--dry-run"]);
    assert!(
        text.contains("this device's phase") && text.contains("* deltas"),
        "{text}"
    );

    // An unchanged check asks for the timestamp, not for the channel's index again:
    // the one kept from the last check is still the one the metadata signs.
    nginx.clear_log();
    assert_eq!(offered(&sys).as_deref(), Some("2"));
    let reqs = nginx.requests();
    assert!(
        reqs.iter()
            .any(|r| r.0.ends_with("/metadata/timestamp.json")),
        "{reqs:?}"
    );
    assert!(
        !reqs.iter().any(|r| r.0.ends_with(".stable.json")),
        "the unchanged index was fetched again: {reqs:?}"
    );

    // Kill the client half-way through the delta: the next run resumes it.
    nginx.clear_log();
    let mut child = Command::new(common::arbor_bin())
        .args(["--sysroot", &sys, "upgrade"])
        .env("ARBOR_MACHINE_ID", MACHINE)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let downloads = Path::new(&sys).join("arbor/remotes/origin/downloads");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let partial: u64 = std::fs::read_dir(&downloads)
            .map(|d| d.flatten().map(|e| e.metadata().unwrap().len()).sum())
            .unwrap_or(0);
        if partial > delta_size / 4 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the delta download never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let st = json(&["--sysroot", &sys, "update-status", "--json"]);
    assert_eq!(st["state"], "downloading", "{st:#}");
    assert_eq!(st["downloads"].as_array().unwrap().len(), 1, "{st:#}");
    let out = ok(&["--sysroot", &sys, "upgrade"]);
    assert!(out.contains("by deltas") && out.contains("staged"), "{out}");
    let reqs = nginx.requests();
    let delta_reqs: Vec<_> = reqs.iter().filter(|r| r.0.contains("/deltas/")).collect();
    assert!(
        delta_reqs.iter().any(|r| r.1 == 206),
        "no Range request: {delta_reqs:?}"
    );
    let sent: u64 = delta_reqs.iter().map(|r| r.2).sum();
    assert!(
        sent <= delta_size + 65536,
        "the resumed download fetched {sent} bytes of a {delta_size}-byte delta again"
    );
    assert!(
        !reqs.iter().any(|r| r.0.contains("/objects/")),
        "no object was needed"
    );
    assert!(
        !reqs.iter().any(|r| r.0.contains("/manifests/")),
        "the delta path fetched a manifest: {reqs:?}"
    );
    let st = json(&["--sysroot", &sys, "update-status", "--json"]);
    assert_eq!(st["state"], "staged");
    assert_eq!(st["version"], "2");
    assert!(st["downloads"].as_array().unwrap().is_empty());

    // The reboot walk: finalize at shutdown, the loader picks it, health checks pass.
    ok(&["--sysroot", &sys, "finalize-staged"]);
    let cmdline = t.path().join("cmdline");
    ok(&[
        "--sysroot",
        &sys,
        "boot-select",
        "--cmdline-out",
        s(&cmdline),
    ]);
    let booted = |args: &[&str]| {
        let out = Command::new(common::arbor_bin())
            .args(args)
            .env("ARBOR_CMDLINE", &cmdline)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let st: serde_json::Value =
        serde_json::from_str(&booted(&["--sysroot", &sys, "update-status", "--json"])).unwrap();
    assert_eq!(st["state"], "testing", "{st:#}");
    booted(&["--sysroot", &sys, "health-check", "--timeout", "5"]);
    let st: serde_json::Value =
        serde_json::from_str(&booted(&["--sysroot", &sys, "update-status", "--json"])).unwrap();
    assert_eq!(st["state"], "active", "{st:#}");
    assert_eq!(common::versions(&sys)[0], "2");
    let history = ok(&["--sysroot", &sys, "history"]);
    assert!(
        history.contains("upgrade") && history.contains("health-check"),
        "{history}"
    );
    // The store is whole.
    ok(&["--sysroot", &sys, "fsck"]);
}

/// Phased rollout: a version is offered to the devices whose phase is below its
/// percentage, and a device outside a newer version's share gets the newest one it is
/// in.
#[test]
fn root_phased_rollout_offers_each_version_to_its_share_of_devices() {
    as_root!();
    let t = scratch();
    let (build, srv, pubdir) = server(t.path());
    let (b, p) = (s(&build), s(&pubdir));
    for v in ["1", "2", "3"] {
        let tree = common::rootfs(&t.path().join(v), v);
        ok(&[
            "--repo",
            b,
            "compose",
            "rootfs",
            s(&tree),
            "-b",
            &format!("os/{v}"),
            "--version",
            v,
        ]);
    }
    ok(&["publish", "init", p]);
    publish(b, p, "1", "os/1", &[]);
    let nginx = Nginx::start(&srv, &t.path().join("nginx"), None);
    let url = format!("{}pub", nginx.url);
    let sys = client(
        &t.path().join("client"),
        &url,
        &pubdir.join("metadata/1.root.json"),
    );
    ok(&["--sysroot", &sys, "deploy", "origin:stable"]);
    assert!(offered(&sys).is_none(), "nothing newer yet");
    let phase = |version: &str, percent: u8| {
        let pct = percent.to_string();
        ok(&[
            "publish",
            "phase",
            p,
            "--channel",
            "stable",
            "--version",
            version,
            &pct,
        ]);
    };

    // At 0% nothing is offered; the device's own phase decides at the boundary.
    publish(b, p, "2", "os/2", &["--phase", "0"]);
    assert!(offered(&sys).is_none(), "a 0% version is offered to nobody");
    let p2 = device_phase(&sys, "2");
    phase("2", p2);
    assert!(offered(&sys).is_none(), "phase {p2} is not below {p2}%");
    phase("2", p2 + 1);
    assert_eq!(offered(&sys).as_deref(), Some("2"));

    // Version 3 rolls out to a share this device is not in: it is offered 2, and
    // the upgrade stages 2.
    publish(b, p, "3", "os/3", &["--phase", "0"]);
    phase("3", device_phase(&sys, "3"));
    assert_eq!(offered(&sys).as_deref(), Some("2"));
    let out = ok(&["--sysroot", &sys, "upgrade"]);
    assert!(out.contains("staged"), "{out}");
    let st = json(&["--sysroot", &sys, "update-status", "--json"]);
    assert_eq!(st["version"], "2", "{st:#}");
    // --phase-override takes the newest whatever the phase.
    let v = json(&[
        "--sysroot",
        &sys,
        "upgrade",
        "--check",
        "--phase-override",
        "--json",
    ]);
    assert_eq!(v["update"]["offered"]["version"], "3");
}

fn restore(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn hostile_servers_are_refused_and_nothing_is_deployed() {
    as_root!();
    let t = scratch();
    let (build, srv, pubdir) = server(t.path());
    let (b, p) = (s(&build), s(&pubdir));
    ok(&[
        "--repo",
        b,
        "commit",
        "-b",
        "os/stable",
        s(&corpus("small")),
    ]);
    ok(&["publish", "init", p]);
    publish(b, p, "1", "os/stable", &[]);
    let nginx = Nginx::start(&srv, &t.path().join("nginx"), None);
    let url = format!("{}pub", nginx.url);
    let root_json = pubdir.join("metadata/1.root.json");
    let sys = client(&t.path().join("client"), &url, &root_json);
    let nothing_deployed = |sys: &str| {
        assert!(common::status(sys).is_empty());
        let refs = ok(&["--sysroot", sys, "refs"]);
        assert!(!refs.contains("origin"), "{refs}");
    };

    // A tampered object: the largest packed file gets one byte flipped.
    let mut objects: Vec<_> = common::walk_files(&pubdir.join("objects"))
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "file"))
        .collect();
    objects.sort_by_key(|f| std::fs::metadata(f).unwrap().len());
    let victim = objects.last().unwrap().clone();
    let good = std::fs::read(&victim).unwrap();
    let mut bad = good.clone();
    let at = bad.len() - 10;
    bad[at] ^= 0x40;
    restore(&victim, &bad);
    let e = err(&["--sysroot", &sys, "deploy", "origin:stable"]);
    assert!(e.contains("corrupt") || e.contains("forged"), "{e}");
    nothing_deployed(&sys);

    // Endless data: the same object with bytes added.
    let mut long = good.clone();
    long.extend_from_slice(&[0; 4096]);
    restore(&victim, &long);
    let e = err(&["--sysroot", &sys, "deploy", "origin:stable"]);
    assert!(e.contains("more than"), "{e}");
    restore(&victim, &good);
    nothing_deployed(&sys);

    // Offline.
    nginx.stop();
    let e = err(&["--sysroot", &sys, "deploy", "origin:stable"]);
    assert!(e.contains("offline"), "{e}");
    nothing_deployed(&sys);
    nginx.resume();

    // A full disk stops before anything is downloaded.
    let small = t.path().join("tiny");
    std::fs::create_dir_all(&small).unwrap();
    assert!(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=40m", "tmpfs", s(&small)])
            .status()
            .unwrap()
            .success()
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    let tiny = client(&small.join("sys"), &url, &root_json);
    nginx.clear_log();
    let e = err(&["--sysroot", &tiny, "deploy", "origin:stable"]);
    assert!(e.contains("nothing was downloaded"), "{e}");
    assert!(!nginx.requests().iter().any(|r| r.0.contains("/objects/")));
    let st = json(&["--sysroot", &tiny, "update-status", "--json"]);
    assert_eq!(st["state"], "failed");

    // The metadata attacks, each checked by reading the channel through TUF.
    let meta = pubdir.join("metadata");
    let show = ["--sysroot", &sys, "remote", "show", "origin", "stable"];
    ok(&show);
    let ts = meta.join("timestamp.json");
    let ts_good = std::fs::read(&ts).unwrap();

    // Signed with another key.
    let other = srv.join("other");
    ok(&["publish", "init", s(&other)]);
    publish(b, s(&other), "1", "os/stable", &[]);
    restore(
        &ts,
        &std::fs::read(other.join("metadata/timestamp.json")).unwrap(),
    );
    let e = err(&show);
    assert!(e.contains("ignature"), "{e}");
    restore(&ts, &ts_good);
    ok(&show);

    // Rollback: once the client saw a newer timestamp, the older one is refused.
    ok(&["publish", "refresh", p]);
    ok(&show);
    restore(&ts, &ts_good);
    let e = err(&show);
    assert!(e.contains("version") || e.contains("older"), "{e}");
    ok(&["publish", "refresh", p]);
    ok(&show);

    // Mix and match: a targets file that is not the one the snapshot names, served to
    // a client that has not verified that version yet. One that has keeps its own
    // copy and does not fetch it again (TUF 5.6), so it is not fooled either.
    let fresh = client(&t.path().join("fresh"), &url, &root_json);
    let fresh_show = ["--sysroot", &fresh, "remote", "show", "origin", "stable"];
    let mut versions: Vec<u64> = std::fs::read_dir(&meta)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".targets.json")?
                .parse()
                .ok()
        })
        .collect();
    versions.sort();
    let newest = meta.join(format!("{}.targets.json", versions.last().unwrap()));
    let targets_good = std::fs::read(&newest).unwrap();
    let older = std::fs::read(meta.join(format!("{}.targets.json", versions[0]))).unwrap();
    restore(&newest, &older);
    let e = err(&fresh_show);
    assert!(e.contains("targets"), "{e}");
    nginx.clear_log();
    ok(&show);
    assert!(
        !nginx
            .requests()
            .iter()
            .any(|r| r.0.contains(".targets.json")),
        "the verified targets are fetched again: {:?}",
        nginx.requests()
    );
    restore(&newest, &targets_good);
    ok(&show);
    ok(&fresh_show);

    // Endless metadata.
    let ts_now = std::fs::read(&ts).unwrap();
    restore(&ts, &vec![b' '; 40 << 20]);
    let e = err(&show);
    assert!(e.contains("more than"), "{e}");
    restore(&ts, &ts_now);
    ok(&show);

    // Key rotation: a new root, signed by the old and the new root key, is followed;
    // metadata signed by a retired timestamp key is then refused.
    let ts_before = std::fs::read(&ts).unwrap();
    ok(&["publish", "rotate-key", p, "timestamp"]);
    ok(&["publish", "rotate-key", p, "root"]);
    ok(&show);
    assert!(meta.join("3.root.json").exists());
    let ts_rotated = std::fs::read(&ts).unwrap();
    restore(&ts, &ts_before);
    let e = err(&show);
    assert!(e.contains("ignature") || e.contains("version"), "{e}");
    restore(&ts, &ts_rotated);
    ok(&show);

    // Freeze: a timestamp that expired is refused.
    ok(&["publish", "refresh", p, "--timestamp-expires", "1s"]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let e = err(&show);
    assert!(e.contains("xpired"), "{e}");
    nothing_deployed(&sys);
}

/// The daemon's Deploy("origin:stable") fetches from the remote as `arbor deploy
/// origin:stable` does: same commit, same version, same origin, same kind of result.
#[test]
fn root_the_daemon_deploys_a_remote_channel_as_the_cli_does() {
    as_root!();
    let t = scratch();
    let (build, srv, pubdir) = server(t.path());
    let (b, p) = (s(&build), s(&pubdir));
    let tree = common::rootfs(t.path(), "1");
    ok(&[
        "--repo",
        b,
        "compose",
        "rootfs",
        s(&tree),
        "-b",
        "os/stable",
        "--version",
        "1",
    ]);
    ok(&["publish", "init", p]);
    publish(b, p, "1", "os/stable", &[]);
    let nginx = Nginx::start(&srv, &t.path().join("nginx"), None);
    let url = format!("{}pub", nginx.url);
    let root_json = pubdir.join("metadata/1.root.json");
    let by_cli = client(&t.path().join("cli"), &url, &root_json);
    let by_bus = client(&t.path().join("bus"), &url, &root_json);

    let cli: serde_json::Value = json(&["--sysroot", &by_cli, "deploy", "origin:stable", "--json"]);
    let bus = common::bus::Bus::launch_env(&by_bus, 60, None, &[("ARBOR_MACHINE_ID", MACHINE)]);
    let path = bus
        .start(&["Deploy", "sa{sv}", "origin:stable", "0"])
        .unwrap();
    assert_eq!(bus.wait(&path), (true, String::new()));
    let daemon = bus.document(&path, "org.arbor.Arbor1.Transaction", "Result");
    for key in [
        "format_version",
        "kind",
        "remote",
        "channel",
        "offered",
        "state",
    ] {
        let (c, d) = (&cli[key], &daemon[key]);
        let plain = common::bus::without_nulls;
        assert_eq!(plain(c), plain(d), "{key}: {cli:#} vs {daemon:#}");
    }
    assert_eq!(cli["fetched"]["method"], daemon["fetched"]["method"]);
    assert_eq!(daemon["offered"]["version"], "1");
    let (a, d) = (common::status(&by_cli), common::status(&by_bus));
    for key in ["commit", "version", "origin"] {
        assert_eq!(a[0][key], d[0][key], "{key}");
    }
    assert_eq!(d[0]["origin"]["refspec"], "origin:stable");
    // Rebase to a channel the remote does not publish: refused by both, the daemon
    // naming the case.
    let path = bus.start(&["Rebase", "sa{sv}", "beta", "0"]).unwrap();
    let (done, msg) = bus.wait(&path);
    assert!(!done && msg.contains("no channel 'beta'"), "{msg}");
    assert_eq!(
        bus.property(&path, "org.arbor.Arbor1.Transaction", "ErrorName"),
        "org.arbor.Arbor1.Error.ChannelNotFound"
    );
    assert!(err(&["--sysroot", &by_cli, "rebase", "beta"]).contains("no channel 'beta'"));
    // Both recorded the deploy the same way.
    let h: serde_json::Value = json(&["--sysroot", &by_bus, "history", "--json"]);
    let deploy = h
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "deploy")
        .unwrap();
    assert!(
        deploy["command"]
            .as_str()
            .unwrap()
            .starts_with("D-Bus Deploy")
    );
    assert_eq!(deploy["result"], "ok");
    ok(&["--sysroot", &by_bus, "fsck"]);
}

/// Files below `dir` (relative paths).
fn files_below(dir: &Path) -> std::collections::BTreeSet<String> {
    common::walk_files(dir)
        .into_iter()
        .map(|p| p.strip_prefix(dir).unwrap().to_string_lossy().into_owned())
        .collect()
}

/// What real networks do to a fetch: a captive portal's HTML for every path, a 404
/// on one object, a stalled connection, and a flaky server. Each failure is clear,
/// bounded in time, and deploys nothing; server errors are retried until they pass.
#[test]
fn root_portals_missing_objects_stalls_and_flaky_servers() {
    use common::hostile_http::{Behaviour, HostileServer};
    as_root!();
    let t = scratch();
    let b = &common::build_repo(t.path(), &["1", "2"]);
    let pubdir = t.path().join("srv/pub");
    let p = s(&pubdir);
    ok(&["publish", "init", p]);
    publish(b, p, "1", "os/1", &["--deltas-from", "0"]);
    let http = HostileServer::start(pubdir.clone());
    let root_json = pubdir.join("metadata/1.root.json");
    let sys = t.path().join("client");
    let sys = s(&sys).to_string();
    ok(&["admin", "init-fs", &sys]);
    ok(&["--sysroot", &sys, "admin", "os-init", "debian"]);
    ok(&[
        "--sysroot",
        &sys,
        "remote",
        "add",
        "origin",
        &http.url,
        "--trust",
        s(&root_json),
        "--timeout",
        "2s",
    ]);
    ok(&["--sysroot", &sys, "deploy", "origin:stable"]);
    let before_objects = files_below(&pubdir.join("objects"));
    publish(b, p, "2", "os/2", &["--deltas-from", "0"]);
    let new_object = files_below(&pubdir.join("objects"))
        .difference(&before_objects)
        .next()
        .cloned()
        .expect("version 2 has new objects");
    let versions = |sys: &str| -> Vec<String> {
        json(&["--sysroot", sys, "status", "--json"])["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["version"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let upgrade = ["--sysroot", &sys, "upgrade"];
    let unchanged = |when: &str| {
        assert_eq!(versions(&sys), ["1"], "{when}: something was deployed");
        let st = json(&["--sysroot", &sys, "update-status", "--json"]);
        assert_eq!(st["state"], "failed", "{when}: {st:#}");
        common::assert_consistent(&sys, when);
    };

    // A captive portal: every path is a 200 with a web page.
    http.behave(Behaviour::Portal);
    let e = err(&upgrade);
    assert!(e.contains("metadata"), "{e}");
    unchanged("portal");

    // One object missing on the server.
    http.behave(Behaviour::Missing(new_object.clone()));
    let e = err(&upgrade);
    assert!(e.contains(&new_object) && e.contains("not found"), "{e}");
    unchanged("missing object");

    // A server that sends headers, then nothing: the remote's 2 s, not forever.
    http.behave(Behaviour::Stall(new_object.clone()));
    let started = std::time::Instant::now();
    let e = err(&upgrade);
    assert!(e.contains("sent nothing for 2 s"), "{e}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    unchanged("stalled server");

    // A flaky server: every path fails twice with a 500; retries get through.
    http.behave(Behaviour::Flaky(2));
    let out = ok(&upgrade);
    assert!(out.contains("staged"), "{out}");
    let st = json(&["--sysroot", &sys, "update-status", "--json"]);
    assert_eq!(
        (&st["state"], &st["version"]),
        (&"staged".into(), &"2".into()),
        "{st:#}"
    );
    let log = http.log();
    assert!(log.iter().any(|(_, code)| *code == 500), "{log:?}");
    common::assert_consistent(&sys, "after the flaky server");
}

/// A damaged object: fsck names it, `fsck --delete` removes it, and deploying the
/// channel again fetches a sound copy (the commit is no longer whole, so it is not
/// taken as fetched); fsck is then clean.
#[test]
fn root_fsck_delete_then_a_fetch_repairs_a_damaged_store() {
    as_root!();
    let t = scratch();
    let b = &common::build_repo(t.path(), &["1"]);
    let pubdir = t.path().join("srv/pub");
    let p = s(&pubdir);
    ok(&["publish", "init", p]);
    publish(b, p, "1", "os/1", &[]);
    let url = format!("file://{p}");
    let sys = client(
        &t.path().join("client"),
        &url,
        &pubdir.join("metadata/1.root.json"),
    );
    ok(&["--sysroot", &sys, "deploy", "origin:stable"]);
    let commit = common::status(&sys)[0]["commit"]
        .as_str()
        .unwrap()
        .to_string();
    let entry = json(&["--sysroot", &sys, "ls", "--json", &commit, "/usr/bin/tool"]);
    let id = entry[0]["object"].as_str().unwrap().to_string();
    let object = Path::new(&sys)
        .join("arbor/repo/objects")
        .join(&id[..2])
        .join(format!("{}.file", &id[2..]));
    std::fs::write(&object, "tool 1 but damaged\n").unwrap();
    let fsck = run(&["--sysroot", &sys, "fsck"]);
    assert_eq!(fsck.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&fsck.stdout).contains(&format!("{id} (file) is corrupt")));
    let deleted = run(&["--sysroot", &sys, "fsck", "--delete", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&deleted.stdout).unwrap();
    assert_eq!(v["deleted"][0]["id"], id.as_str(), "{v:#}");
    assert!(!object.exists());
    let fsck = run(&["--sysroot", &sys, "fsck"]);
    assert!(String::from_utf8_lossy(&fsck.stdout).contains("missing"));
    let out = ok(&["--sysroot", &sys, "deploy", "origin:stable"]);
    assert!(out.contains("full fetch of 1 objects"), "{out}");
    ok(&["--sysroot", &sys, "fsck"]);
    // The new deployment (staged, as a remote deploy is) has the sound file.
    ok(&["--sysroot", &sys, "finalize-staged"]);
    let path = common::deployment_dir(&sys, 0).join("usr/bin/tool");
    assert_eq!(std::fs::read_to_string(path).unwrap(), "tool 1\n");
}

/// A build repository with `versions` composed (`os/V`), a publication of version 1
/// served by nginx, and a client that deployed it: (build, publication, nginx, sysroot).
fn client_on_version_1(dir: &Path, versions: &[&str]) -> (PathBuf, PathBuf, Nginx, String) {
    let (build, srv, pubdir) = server(dir);
    let (b, p) = (s(&build), s(&pubdir));
    for v in versions {
        let tree = common::rootfs(&dir.join(v), v);
        let branch = format!("os/{v}");
        ok(&[
            "--repo",
            b,
            "compose",
            "rootfs",
            s(&tree),
            "-b",
            &branch,
            "--version",
            v,
        ]);
    }
    ok(&["publish", "init", p]);
    publish(b, p, "1", "os/1", &[]);
    let nginx = Nginx::start(&srv, &dir.join("nginx"), None);
    let url = format!("{}pub", nginx.url);
    let sys = client(
        &dir.join("client"),
        &url,
        &pubdir.join("metadata/1.root.json"),
    );
    ok(&["--sysroot", &sys, "deploy", "origin:stable"]);
    (build, pubdir, nginx, sys)
}

/// A version that requires an earlier one (`publish add --requires`, the last release
/// before a major upgrade): a machine before it is offered the required version in its
/// place and upgrades to that; asked for by name (`deploy --version`), the later version is refused with
/// the step to take and nothing staged; once the machine boots the required version,
/// the later one is offered. A publisher cannot require a version the channel lacks.
#[test]
fn root_a_required_version_comes_first() {
    as_root!();
    let t = scratch();
    let (build, pubdir, _nginx, sys) = client_on_version_1(t.path(), &["1", "2", "3"]);
    let (b, p) = (s(&build), s(&pubdir));
    publish(b, p, "2", "os/2", &[]);
    let e = err(&[
        "--repo",
        b,
        "publish",
        "add",
        p,
        "--channel",
        "stable",
        "--version",
        "3",
        "--ref",
        "os/3",
        "--requires",
        "2.5",
    ]);
    assert!(
        e.contains("cannot require 2.5") && e.contains("no version 2.5"),
        "{e}"
    );
    publish(b, p, "3", "os/3", &["--requires", "2"]);
    let shown = ok(&["publish", "show", p, "stable"]);
    assert!(shown.contains("\"requires\": \"2\""), "{shown}");

    assert_eq!(offered(&sys).as_deref(), Some("2"), "3 requires 2 first");
    let e = err(&["--sysroot", &sys, "deploy", "--version", "3"]);
    assert!(
        e.contains("requires that this machine run version 2 first")
            && e.contains("deploy --version 2"),
        "{e}"
    );
    let st = json(&["--sysroot", &sys, "status", "--json"]);
    assert!(st["staged"].is_null(), "nothing staged: {st:#}");
    assert_eq!(common::versions(&sys).len(), 1);
    let out = ok(&["--sysroot", &sys, "upgrade"]);
    assert!(out.contains("staged"), "{out}");
    assert_eq!(
        json(&["--sysroot", &sys, "update-status", "--json"])["version"],
        "2"
    );

    // Boot 2: now 3 is the next step.
    ok(&["--sysroot", &sys, "finalize-staged"]);
    let cmdline = t.path().join("cmdline");
    ok(&[
        "--sysroot",
        &sys,
        "boot-select",
        "--cmdline-out",
        s(&cmdline),
    ]);
    let out = Command::new(common::arbor_bin())
        .args(["--sysroot", &sys, "upgrade", "--check", "--json"])
        .env("ARBOR_CMDLINE", &cmdline)
        .env("ARBOR_MACHINE_ID", MACHINE)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["update"]["offered"]["version"], "3", "{v:#}");
}

/// `upgrade --dry-run` lists the `/etc` files both the machine and the offered version
/// changed, once the version is downloaded (a dry run downloads nothing, and says so
/// until then); staging it then saves the new default beside the machine's file.
#[test]
fn root_a_dry_run_lists_etc_conflicts_before_anything_is_staged() {
    as_root!();
    let t = scratch();
    let (build, pubdir, _nginx, sys) = client_on_version_1(t.path(), &["1", "2"]);
    let (b, p) = (s(&build), s(&pubdir));
    publish(b, p, "2", "os/2", &[]);
    // The administrator edits sshd_config (which 2 changes too) and the hostname
    // (which 2 leaves alone).
    let etc = common::deployment_dir(&sys, 0).join("etc");
    std::fs::write(etc.join("ssh/sshd_config"), "PermitRootLogin no\n").unwrap();
    std::fs::write(etc.join("hostname"), "web1\n").unwrap();

    let dry = |json_out: bool| {
        let mut args = vec!["--sysroot", sys.as_str(), "upgrade", "--dry-run"];
        if json_out {
            args.push("--json");
        }
        ok(&args)
    };
    assert!(dry(false).contains("not known until the update is downloaded"));
    ok(&["--sysroot", &sys, "upgrade", "--download-only"]);
    let v: serde_json::Value = serde_json::from_str(&dry(true)).unwrap();
    assert_eq!(
        v["update"]["etc_conflicts"],
        serde_json::json!(["ssh/sshd_config"]),
        "{v:#}"
    );
    let text = dry(false);
    assert!(
        text.contains("/etc conflict: /etc/ssh/sshd_config"),
        "{text}"
    );
    assert!(!text.contains("hostname"), "{text}");
    let st = json(&["--sysroot", &sys, "status", "--json"]);
    assert!(st["staged"].is_null(), "a dry run stages nothing: {st:#}");

    // What the dry run said is what staging finds.
    ok(&["--sysroot", &sys, "upgrade"]);
    let st = json(&["--sysroot", &sys, "status", "--json"]);
    assert_eq!(
        st["etc_conflicts"],
        serde_json::json!(["ssh/sshd_config"]),
        "{st:#}"
    );
}

/// The update says the mildest way to apply it (docs/activation.md), from what
/// changes between the booted deployment and the update: a changed program goes
/// live; a new kernel needs kexec, which a folder sysroot (not the running system)
/// cannot do, so a reboot, with each milder step named and why it was passed over.
/// A dry run says it once the version is downloaded; staging says it too.
#[test]
fn root_an_update_says_the_mildest_way_to_apply_it() {
    as_root!();
    let t = scratch();
    let (build, pubdir, _nginx, sys) = client_on_version_1(t.path(), &["1", "2", "3"]);
    let (b, p) = (s(&build), s(&pubdir));
    let cmdline = t.path().join("cmdline");
    ok(&[
        "--sysroot",
        &sys,
        "boot-select",
        "--cmdline-out",
        s(&cmdline),
    ]);
    let booted = |args: &[&str]| {
        let out = Command::new(common::arbor_bin())
            .args(["--sysroot", &sys])
            .args(args)
            .env("ARBOR_CMDLINE", &cmdline)
            .env("ARBOR_MACHINE_ID", MACHINE)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };

    // 2 changes a program: live.
    publish(b, p, "2", "os/2", &[]);
    let dry = booted(&["upgrade", "--dry-run"]);
    assert!(!dry.contains("mildest way"), "not downloaded yet:\n{dry}");
    booted(&["upgrade", "--download-only"]);
    let v: serde_json::Value =
        serde_json::from_str(&booted(&["upgrade", "--dry-run", "--json"])).unwrap();
    assert_eq!(v["update"]["activation"]["step"], "live", "{v:#}");
    assert_eq!(
        v["update"]["activation"]["passed_over"],
        serde_json::json!([]),
        "{v:#}"
    );
    let out = booted(&["upgrade"]);
    assert!(out.contains("mildest way to apply it: live"), "{out}");
    // Kept with the update's state, for update-status and the daemon's UpdateStatus.
    let st: serde_json::Value =
        serde_json::from_str(&booted(&["update-status", "--json"])).unwrap();
    assert_eq!(st["activation"]["step"], "live", "{st:#}");
    assert!(booted(&["update-status"]).contains("apply:     live: the mildest step"));
    // `--apply` carries the staged update out: nothing newer is offered, so the staged
    // one goes live, its changed program in the booted /usr. (In a mount namespace of
    // its own: the live overlay on the folder's /usr goes with it.)
    let karg = std::fs::read_to_string(&cmdline).unwrap();
    let booted_dir = karg
        .split_whitespace()
        .find_map(|a| a.strip_prefix("arbor="))
        .unwrap()
        .to_string();
    let script = format!(
        "{} --sysroot {sys} upgrade --apply auto && cat {sys}{booted_dir}/usr/bin/tool",
        common::arbor_bin()
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env("ARBOR_CMDLINE", &cmdline)
        .env("ARBOR_MACHINE_ID", MACHINE)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("applied live") && text.contains("tool 2"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The step taken is in the history.
    let history = booted(&["history"]);
    assert!(history.contains("applied live"), "{history}");

    // 3 brings another kernel.
    let tree = t.path().join("3").join("rootfs-3");
    std::fs::write(tree.join("boot/vmlinuz-6.1.0-test"), "another kernel").unwrap();
    ok(&[
        "--repo",
        b,
        "compose",
        "rootfs",
        s(&tree),
        "-b",
        "os/3",
        "--version",
        "3",
    ]);
    publish(b, p, "3", "os/3", &[]);
    let out = booted(&["upgrade"]);
    assert!(out.contains("mildest way to apply it: reboot"), "{out}");
    for want in [
        "not live: the kernel or the initramfs changes",
        "not soft-reboot: the kernel or the initramfs changes",
        "not kexec: not the running system",
    ] {
        assert!(out.contains(want), "no {want:?}:\n{out}");
    }
    // A reboot is never started on a sysroot that is not the running system.
    let out = booted(&["upgrade", "--apply", "kexec"]);
    assert!(out.contains("apply it by reboot"), "{out}");
}
