//! Mirrors and failover (docs/remote.md, "Mirrors"): a remote's servers are asked in
//! order, and one that is down, stalls, serves stale or forged metadata or corrupt
//! files is skipped with its reason; a mirror the signed index names takes over when
//! the origin is down; a CDN edge (nginx with proxy_cache) serves a fleet while the
//! origin sees one fetch per file.

#![allow(clippy::print_stdout)] // the skips and the edge's figures, for the log

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::fleet::{Machine, Publication, arbor};
use common::hostile_http::{Behaviour, HostileServer};
use common::nginx::Nginx;
use common::{s, scratch};

/// Copies the published folder `from` to `to` (a mirror's copy, as rsync would).
fn mirror_copy(from: &str, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let st = std::process::Command::new("cp")
        .args(["-a", from, s(to)])
        .status()
        .unwrap();
    assert!(st.success());
}

/// Flips a byte in the middle of every file below `dir`.
fn corrupt_files(dir: &Path) {
    for f in common::walk_files(dir) {
        let mut b = std::fs::read(&f).unwrap();
        if b.is_empty() {
            continue;
        }
        let mid = b.len() / 2;
        b[mid] ^= 0x5a;
        std::fs::write(&f, b).unwrap();
    }
}

/// An address of this machine where nothing listens.
fn dead_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}/pub/")
}

fn upgrade_json(m: &Machine) -> serde_json::Value {
    serde_json::from_str(&m.ok(&["upgrade", "--json"])).unwrap()
}

fn skipped(v: &serde_json::Value) -> Vec<String> {
    v["update"]["mirrors_skipped"]
        .as_array()
        .unwrap_or_else(|| panic!("no mirrors_skipped in {v:#}"))
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

/// The machine trusts version 2's metadata; then its servers are, in order: one where
/// nothing listens, one that stalls, a stale copy (version 1's metadata: a freeze),
/// a forged copy (a timestamp changed without its key), a copy whose files are
/// corrupt, and the origin. The upgrade to 3 passes over each with its reason and
/// stages 3 from verified bytes, and the machine boots it.
#[test]
fn root_mirrors_that_are_down_stall_are_stale_or_lie_are_skipped_with_their_reason() {
    as_root!();
    let t = scratch();
    let publ = Publication::new(t.path(), &["1", "2", "3"], |_, _| {});
    let srv = publ.srv.clone();
    publ.add("1", &[]);
    mirror_copy(&publ.dir, &srv.join("stale"));
    publ.add("2", &["--deltas-from", "1"]);
    let nginx = Nginx::start(&srv, &t.path().join("nginx"), None);
    let origin = format!("{}pub/", nginx.url);
    let dead = dead_url();

    // Installed through the first working server: version 2's metadata is trusted.
    let m = Machine::with_remote(
        t.path(),
        "m",
        &dead,
        &publ.root(),
        &["--mirror", &origin, "--timeout", "2s"],
    );
    m.ok(&["deploy", "origin:stable"]);
    assert_eq!(m.reboot(), "2");

    publ.add("3", &["--deltas-from", "2"]);
    mirror_copy(&publ.dir, &srv.join("forged"));
    let ts = srv.join("forged/metadata/timestamp.json");
    let forged = std::fs::read_to_string(&ts).unwrap().replacen(
        "\"version\":",
        "\"version\": 1000000 , \"was\":",
        1,
    );
    std::fs::write(&ts, forged).unwrap();
    mirror_copy(&publ.dir, &srv.join("corrupt"));
    corrupt_files(&srv.join("corrupt/deltas"));
    corrupt_files(&srv.join("corrupt/objects"));
    corrupt_files(&srv.join("corrupt/manifests"));
    let stall = HostileServer::start(std::path::PathBuf::from(&publ.dir));
    stall.behave(Behaviour::Stall(String::new()));
    let mirrors = [
        stall.url.clone(),
        format!("{}stale/", nginx.url),
        format!("{}forged/", nginx.url),
        format!("{}corrupt/", nginx.url),
        origin.clone(),
    ];
    let mut set = vec!["remote", "mirrors", "origin"];
    set.extend(mirrors.iter().map(String::as_str));
    m.ok(&set);
    let listed: serde_json::Value =
        serde_json::from_str(&m.ok(&["remote", "mirrors", "origin", "--json"])).unwrap();
    assert_eq!(listed["mirrors"].as_array().unwrap().len(), 5, "{listed:#}");

    let started = std::time::Instant::now();
    let v = upgrade_json(&m);
    let took = started.elapsed();
    let skips = skipped(&v);
    println!("skipped:\n{}", skips.join("\n"));
    let reason_of = |url: &str| {
        skips
            .iter()
            .filter(|x| x.starts_with(url))
            .cloned()
            .collect::<Vec<_>>()
            .join(" | ")
    };
    assert!(reason_of(&dead).contains("cannot reach"), "{skips:#?}");
    assert!(
        reason_of(&stall.url).contains("sent nothing for 2 s"),
        "{skips:#?}"
    );
    let stale = reason_of(&mirrors[1]);
    assert!(
        stale.contains("timestamp") && stale.contains("previously fetched version"),
        "the freeze is named: {skips:#?}"
    );
    let lie = reason_of(&mirrors[2]);
    assert!(lie.contains("Signature threshold"), "{skips:#?}");
    let corrupt = reason_of(&mirrors[3]);
    assert!(
        corrupt.contains("BLAKE3") && !corrupt.contains("signed metadata"),
        "the corrupt copy's metadata verified, its delta did not: {skips:#?}"
    );
    assert_eq!(
        skips.iter().filter(|x| x.starts_with(&stall.url)).count(),
        1,
        "a server that stalled once is asked last for the rest of the run: {skips:#?}"
    );
    assert_eq!(v["update"]["offered"]["version"], "3", "{v:#}");
    assert!(
        took < std::time::Duration::from_secs(60),
        "each bad server costs at most its timeout: {took:?}"
    );
    assert_eq!(m.reboot(), "3");
    m.ok(&["fsck"]);
}

/// The publisher names a mirror in the signed index; machines remember it, and when
/// the origin is down the next upgrade comes from the mirror, saying why.
#[test]
fn root_a_mirror_the_signed_index_names_serves_when_the_origin_is_down() {
    as_root!();
    let t = scratch();
    let publ = Publication::new(t.path(), &["1", "2"], |_, _| {});
    publ.add("1", &[]);
    let origin = Nginx::start(&publ.srv, &t.path().join("origin"), None);
    let mirror_srv = t.path().join("mirror-srv");
    std::fs::create_dir_all(&mirror_srv).unwrap();
    let mirror = Nginx::start(&mirror_srv, &t.path().join("mirror"), None);
    let mirror_url = format!("{}pub/", mirror.url);
    arbor(&[
        "publish",
        "mirrors",
        &publ.dir,
        "--channel",
        "stable",
        &mirror_url,
    ]);
    // A mirror that is a path on the machines is refused before signing.
    common::arbor_err(&[
        "publish",
        "mirrors",
        &publ.dir,
        "--channel",
        "stable",
        "file:///etc/",
    ]);
    mirror_copy(&publ.dir, &mirror_srv.join("pub"));

    let m = Machine::new(t.path(), "m", &format!("{}pub/", origin.url), &publ.root());
    m.ok(&["deploy", "origin:stable"]);
    assert_eq!(m.reboot(), "1");
    let listed: serde_json::Value =
        serde_json::from_str(&m.ok(&["remote", "mirrors", "origin", "--json"])).unwrap();
    assert_eq!(
        listed["index_mirrors"][0],
        mirror_url.as_str(),
        "{listed:#}"
    );

    publ.add("2", &["--deltas-from", "1"]);
    mirror_copy(&publ.dir, &mirror_srv.join("pub"));
    origin.stop();
    mirror.clear_log();
    let v = upgrade_json(&m);
    assert_eq!(v["update"]["offered"]["version"], "2", "{v:#}");
    let skips = skipped(&v);
    assert!(
        skips.iter().any(|x| x.contains("cannot reach")),
        "the origin's absence is said: {skips:#?}"
    );
    assert!(
        mirror
            .requests()
            .iter()
            .any(|(p, st, _)| p.contains("/deltas/") && *st == 200),
        "the delta came from the mirror"
    );
    assert_eq!(m.reboot(), "2");

    // With no server reachable at all, the error says offline and names both.
    mirror.stop();
    let out = m.run(&["upgrade", "--check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach") && err.contains(&mirror.url),
        "{err}"
    );
}

/// Six machines install version 1 and upgrade to 2 through a CDN edge (nginx with
/// proxy_cache in front of the origin nginx). The origin sees each file once, however
/// many machines fetched it; only `timestamp.json` and the probes for a next root
/// version (404) are asked again, as their short cache lives say.
#[test]
fn root_an_edge_cache_serves_a_fleet_while_the_origin_sees_one_fetch_per_file() {
    as_root!();
    let t = scratch();
    let publ = Publication::new(t.path(), &["1", "2"], |_, _| {});
    publ.add("1", &[]);
    let origin = Nginx::start(&publ.srv, &t.path().join("origin"), None);
    let edge = Nginx::start_edge(&origin.url, &t.path().join("edge"));
    let url = format!("{}pub/", edge.url);
    let machines: Vec<Machine> = (0..6)
        .map(|i| Machine::new(t.path(), &format!("m{i}"), &url, &publ.root()))
        .collect();
    std::thread::scope(|sc| {
        for m in &machines {
            sc.spawn(|| {
                m.ok(&["deploy", "origin:stable"]);
                assert_eq!(m.reboot(), "1");
            });
        }
    });
    publ.add("2", &["--deltas-from", "1"]);
    // The edge keeps the timestamp for 1 s: the machines look after that.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    std::thread::scope(|sc| {
        for m in &machines {
            sc.spawn(|| {
                let v = upgrade_json(m);
                assert_eq!(v["update"]["offered"]["version"], "2", "{v:#}");
                assert_eq!(v["update"]["fetched"]["method"], "deltas", "{v:#}");
                assert_eq!(m.reboot(), "2");
            });
        }
    });

    let mut at_origin: BTreeMap<String, (u32, u16)> = BTreeMap::new();
    for (path, status, _) in origin.requests() {
        let e = at_origin.entry(path).or_insert((0, status));
        e.0 += 1;
    }
    let served_by_edge = edge.requests().len();
    let repeated: Vec<_> = at_origin
        .iter()
        .filter(|(p, (n, status))| {
            *n > 1 && !p.ends_with("/metadata/timestamp.json") && *status != 404
        })
        .collect();
    println!(
        "edge answered {served_by_edge} requests; the origin {} ({} distinct paths)",
        origin.requests().len(),
        at_origin.len()
    );
    assert!(
        repeated.is_empty(),
        "the origin was asked more than once for: {repeated:#?}"
    );
    let deltas: Vec<_> = at_origin
        .keys()
        .filter(|p| p.contains("/deltas/"))
        .collect();
    assert_eq!(deltas.len(), 1, "{at_origin:#?}");
    let delta_at_edge = edge
        .requests()
        .iter()
        .filter(|(p, st, _)| p.contains("/deltas/") && *st == 200)
        .count();
    assert_eq!(
        delta_at_edge, 6,
        "every machine fetched the delta from the edge"
    );
    assert!(
        served_by_edge > 3 * at_origin.len(),
        "the edge took the load"
    );
}
