//! Fleets (docs/fleet.md): machines that send signed health reports by WebDAV `PUT`
//! to a real nginx after each boot verdict, and the publisher's rollout controller
//! that reads them and halts a failing release or widens a good one.

#[macro_use]
mod common;

use std::path::Path;
use std::process::Command;

use common::fleet::{Machine, Publication, arbor, arbor_json, failing_health_check};
use common::nginx::Nginx;
use common::{s, scratch};

/// The reports the server holds for `channel`, as parsed JSON.
fn reports_on_server(srv: &Path) -> Vec<serde_json::Value> {
    let mut out: Vec<_> = std::fs::read_dir(srv.join("reports/stable"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_else(|_| Vec::new());
    out.sort();
    out.iter()
        .map(|p| {
            let env: serde_json::Value =
                serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
            serde_json::from_str(env["report"].as_str().unwrap()).unwrap()
        })
        .collect()
}

/// Version 2 fails its health check on its canary: the machine reports it (signed, by
/// WebDAV PUT, no hostname), the controller halts the rollout and withdraws 2, a
/// machine that had staged 2 drops it at its next check, a machine outside the canary
/// phase is never offered it, and the canary's automatic rollback is reported too.
/// A report that cannot be sent waits in the outbox for the next check; forged,
/// malformed and impossible reports are counted and ignored. Then version 3, healthy,
/// widens step by step.
#[test]
fn root_a_failing_canary_halts_the_rollout_and_a_good_release_widens() {
    as_root!();
    let t = scratch();
    let publ = Publication::new(t.path(), &["1", "2", "3"], |v, tree| {
        if v == "2" {
            failing_health_check(tree)
        }
    });
    let (srv, p) = (publ.srv.clone(), publ.dir.clone());
    let add = |v: &str, phase: &str| publ.add(v, &["--phase", phase]);
    add("1", "100");
    let nginx = Nginx::start_with_reports(&srv, &t.path().join("nginx"));
    let reports_url = format!("{}reports", nginx.url);
    let rules = arbor(&[
        "publish",
        "rollout-rules",
        &p,
        "--channel",
        "stable",
        "--reports",
        &reports_url,
        "--steps",
        "1,50,100",
        "--min-good",
        "1",
        "--max-failed",
        "20",
        "--soak",
        "0s",
    ]);
    assert!(rules.contains("reports to http://127.0.0.1"), "{rules}");
    let url = format!("{}pub", nginx.url);
    let root = publ.root();
    let machines: Vec<Machine> = ["m1", "m2", "m3", "m4", "m5", "m6"]
        .iter()
        .map(|n| Machine::new(t.path(), n, &url, &root))
        .collect();

    // Every machine installs 1 and boots it: a good report each, on the server.
    for m in &machines {
        m.ok(&["deploy", "origin:stable"]);
        assert_eq!(m.reboot(), "1");
    }
    let on_server = reports_on_server(&srv);
    assert_eq!(on_server.len(), machines.len(), "{on_server:#?}");
    let hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    for r in &on_server {
        assert_eq!(r["verdict"], "good");
        assert_eq!(r["version"], "1");
        let keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "at_ms", "bucket", "channel", "commit", "format", "verdict", "version"
            ],
            "nothing else, no hostname or address (a folder sysroot has no boot time)"
        );
        assert!(hostname.trim().is_empty() || !r.to_string().contains(hostname.trim()));
    }
    let status = arbor_json(&[
        "publish",
        "status",
        &p,
        "--channel",
        "stable",
        "--reports",
        s(&srv.join("reports")),
        "--json",
    ]);
    assert_eq!(status["versions"][0]["good"], 6, "{status:#}");

    // Version 2 goes to the canaries: the machine with the lowest phase for it.
    add("2", "0");
    let mut by_phase: Vec<(u64, &Machine)> =
        machines.iter().map(|m| (m.phase_of("2"), m)).collect();
    by_phase.sort_by_key(|(ph, _)| *ph);
    let (canary_phase, canary) = by_phase[0];
    let (stager, outsider) = (by_phase[1].1, by_phase[5].1);
    assert!(
        by_phase[5].0 > canary_phase,
        "{:?}",
        by_phase.iter().map(|x| x.0).collect::<Vec<_>>()
    );
    publ.phase("2", canary_phase + 1);
    let out = canary.ok(&["upgrade"]);
    assert!(out.contains("staged"), "{out}");
    // Another machine stages 2 by name (an administrator ahead of the rollout).
    stager.ok(&["deploy", "--version", "2"]);
    assert!(
        !outsider
            .ok(&["upgrade", "--check"])
            .contains("update: stable 2")
    );

    // The canary boots 2 and fails its check; its report goes out at once.
    assert_eq!(canary.reboot(), "2");
    let failed: Vec<_> = reports_on_server(&srv)
        .into_iter()
        .filter(|r| r["version"] == "2")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert_eq!(failed[0]["verdict"], "failed");
    assert_eq!(failed[0]["bucket"], canary_phase);

    // Hostile reports: garbage, a forged verdict, a report about a version the
    // channel does not have (signed), and an oversized file.
    let folder = srv.join("reports/stable");
    std::fs::write(folder.join("garbage.json"), "not json").unwrap();
    // A good report turned into a failure (its signature no longer matches).
    let real = std::fs::read_dir(&folder)
        .unwrap()
        .flatten()
        .find(|e| String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()).contains("good"))
        .unwrap()
        .path();
    let mut env: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&real).unwrap()).unwrap();
    let forged = env["report"]
        .as_str()
        .unwrap()
        .replace("\"good\"", "\"failed\"");
    env["report"] = forged.into();
    std::fs::write(folder.join("forged.json"), env.to_string()).unwrap();
    std::fs::write(folder.join("huge.json"), vec![b' '; 100_000]).unwrap();

    // The controller halts 2 and signs the index.
    let run = arbor(&[
        "publish",
        "rollout",
        &p,
        "--channel",
        "stable",
        "--reports",
        s(&srv.join("reports")),
    ]);
    assert!(run.contains("2: HALTED, 1 of 1 machines failed"), "{run}");
    assert!(run.contains("2 malformed, 1 bad signature"), "{run}");
    assert!(run.contains("index of stable signed"), "{run}");
    let shown = arbor(&["publish", "show", &p, "stable"]);
    assert!(shown.contains("\"withdrawn\": true"), "{shown}");

    // The machine that staged 2 drops it at its next check; the outsider never gets it
    // and cannot ask for it by name.
    let out = stager.ok(&["upgrade", "--check"]);
    assert!(out.contains("version 2 was withdrawn"), "{out}");
    let st: serde_json::Value = serde_json::from_str(&stager.ok(&["status", "--json"])).unwrap();
    assert!(st["staged"].is_null(), "{st:#}");
    assert_eq!(stager.reboot(), "1");
    let out = outsider.ok(&["upgrade", "--check", "--phase-override"]);
    assert!(
        out.contains("withdrawn") && !out.contains("update: stable 2"),
        "{out}"
    );
    let e = outsider.run(&["deploy", "--version", "2"]);
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("withdrawn by its publisher"));

    // The canary keeps failing until the loader gives up on 2: the rollback is
    // reported. With the server down, the report waits for the next check.
    nginx.stop();
    assert_eq!(canary.reboot_until("1"), "1", "the loader fell back to 1");
    let outbox = canary.outbox();
    let waiting = std::fs::read_dir(&outbox).unwrap().count();
    assert!(
        waiting >= 2,
        "the rollback and the good boot of 1 wait: {waiting}"
    );
    nginx.resume();
    canary.ok(&["upgrade", "--check"]);
    assert_eq!(
        std::fs::read_dir(&outbox).unwrap().count(),
        0,
        "sent at the check"
    );
    let status = arbor_json(&[
        "publish",
        "status",
        &p,
        "--channel",
        "stable",
        "--reports",
        s(&srv.join("reports")),
        "--json",
    ]);
    let v2 = &status["versions"][1];
    assert_eq!(
        (v2["rolled_back"].as_u64(), v2["failed"].as_u64()),
        (Some(1), Some(0)),
        "{status:#}"
    );
    assert_eq!(v2["withdrawn"], true);

    // Version 3 is healthy: a good canary widens it to the next step, and the
    // controller holds while the wider phase has not reported.
    add("3", "0");
    publ.phase("3", canary.phase_of("3") + 1);
    let out = canary.ok(&["upgrade"]);
    assert!(out.contains("staged"), "{out}");
    assert_eq!(canary.reboot(), "3");
    let run = arbor(&[
        "publish",
        "rollout",
        &p,
        "--channel",
        "stable",
        "--reports",
        s(&srv.join("reports")),
    ]);
    assert!(run.contains("3: widened from"), "{run}");
    let shown: serde_json::Value =
        serde_json::from_str(&arbor(&["publish", "show", &p, "stable"])).unwrap();
    let phase3 = shown["versions"][2]["phase"].as_u64().unwrap();
    assert!(phase3 == 50 || phase3 == 100, "{shown:#}");
    let run = arbor(&[
        "publish",
        "rollout",
        &p,
        "--channel",
        "stable",
        "--reports",
        s(&srv.join("reports")),
        "--dry-run",
    ]);
    assert!(
        run.contains("dry run: nothing signed") || run.contains("holding"),
        "{run}"
    );
}

/// Downloads on a leash: `--max-rate` and the policy's `max_rate` hold an update's
/// download to the cap (the whole transfer, not one file), and an uncapped one is not
/// held back. A rate that cannot be read is refused with its name.
#[test]
fn root_downloads_keep_to_the_rate_cap() {
    as_root!();
    let t = scratch();
    let publ = Publication::new(t.path(), &["1", "2"], |v, tree| {
        if v == "2" {
            // Incompressible: what crosses the wire is what the cap sees.
            let mut noise = vec![0u8; 768 << 10];
            let mut x = 0x9e3779b97f4a7c15u64;
            for b in noise.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            std::fs::write(tree.join("usr/bin/big"), noise).unwrap();
        }
    });
    let srv = publ.srv.clone();
    let add = |v: &str| publ.add(v, &["--deltas-from", "0"]);
    add("1");
    let nginx = Nginx::start(&srv, &t.path().join("nginx"), None);
    let url = format!("{}pub", nginx.url);
    let root = publ.root();
    let machines: Vec<Machine> = ["m", "m2", "m3"]
        .iter()
        .map(|n| {
            let m = Machine::new(t.path(), n, &url, &root);
            std::fs::write(&m.config, "").unwrap();
            m.ok(&["deploy", "origin:stable"]);
            m
        })
        .collect();
    add("2");
    let (m, m2, m3) = (&machines[0], &machines[1], &machines[2]);
    let timed = |args: &[&str]| {
        let begun = std::time::Instant::now();
        let out = m.ok(args);
        (begun.elapsed().as_secs_f64(), out)
    };
    // 768 KiB at 256 KiB/s: at least 3 s less the quarter second saved up.
    let (secs, out) = timed(&["upgrade", "--download-only", "--max-rate", "256K"]);
    assert!(secs >= 2.5, "{secs:.2} s for 768 KiB at 256K/s: {out}");
    let bad = m.run(&["upgrade", "--max-rate", "fast"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a rate"));
    // A local deploy downloads nothing: the cap is refused, not ignored.
    let st = arbor_json(&["--sysroot", &m.sys, "status", "--json"]);
    let commit = st["deployments"][0]["commit"].as_str().unwrap().to_string();
    let bad = m.run(&["deploy", &commit, "--max-rate", "1M"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--max-rate are for deploys from a remote"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // The same cap from the policy, on a fresh machine.
    std::fs::write(&m2.config, "max_rate = \"256K\"\n").unwrap();
    let begun = std::time::Instant::now();
    m2.ok(&["upgrade", "--download-only"]);
    let secs = begun.elapsed().as_secs_f64();
    assert!(secs >= 2.5, "{secs:.2} s under the policy's 256K");
    std::fs::write(&m2.config, "max_rate = \"quick\"\n").unwrap();
    let bad = m2.run(&["upgrade", "--check"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("max_rate"));

    // Uncapped, a third machine takes it at once.
    let begun = std::time::Instant::now();
    m3.ok(&["upgrade", "--download-only"]);
    assert!(
        begun.elapsed().as_secs_f64() < 2.5,
        "uncapped took {:?}",
        begun.elapsed()
    );
}

/// A stand-in for NetworkManager on a private bus: only its `Metered` property.
struct FakeNetworkManager {
    metered: u32,
}

#[zbus::interface(name = "org.freedesktop.NetworkManager")]
impl FakeNetworkManager {
    #[zbus(property)]
    fn metered(&self) -> u32 {
        self.metered
    }
}

/// A private dbus-daemon (stopped at drop) and its address.
struct PrivateBus(std::process::Child, String);

impl PrivateBus {
    fn start() -> PrivateBus {
        use std::io::BufRead;
        let mut child = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("dbus-daemon (scripts/setup.sh installs dbus)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        PrivateBus(child, line.trim().to_string())
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Automatic downloads wait on a metered connection (NetworkManager's `Metered`, read
/// over D-Bus from a stand-in on a private bus) unless the policy allows them, and
/// wait once the daily quota would be passed; an administrator's own upgrade is not
/// held back, and its bytes count toward the day.
#[test]
fn root_automatic_downloads_wait_on_a_metered_connection_and_at_the_quota() {
    as_root!();
    let t = scratch();
    let publ = Publication::new(t.path(), &["1", "2", "3"], |v, tree| {
        std::fs::write(tree.join("usr/bin/payload"), v.repeat(64 << 10)).unwrap();
    });
    let srv = publ.srv.clone();
    let add = |v: &str| publ.add(v, &[]);
    add("1");
    let nginx = Nginx::start(&srv, &t.path().join("nginx"), None);
    let url = format!("{}pub", nginx.url);
    let m = Machine::new(t.path(), "m", &url, &publ.root());
    m.ok(&["deploy", "origin:stable"]);
    add("2");

    let bus = PrivateBus::start();
    let _nm = zbus::blocking::connection::Builder::address(bus.1.as_str())
        .unwrap()
        .name("org.freedesktop.NetworkManager")
        .unwrap()
        .serve_at(
            "/org/freedesktop/NetworkManager",
            FakeNetworkManager { metered: 1 },
        )
        .unwrap()
        .build()
        .unwrap();
    let now =
        String::from_utf8(Command::new("date").arg("+%H:%M").output().unwrap().stdout).unwrap();
    let policy = |extra: &str| {
        std::fs::write(
            &m.config,
            format!(
                "check_interval = \"1s\"\npreferred_time = \"{}\"\n{extra}",
                now.trim()
            ),
        )
        .unwrap()
    };
    let auto = || {
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let out = Command::new(common::arbor_bin())
            .args([
                "--sysroot",
                &m.sys,
                "auto-update",
                "--config",
                s(&m.config),
                "--json",
            ])
            .env("ARBOR_MACHINE_ID", &m.id)
            .env("ARBOR_CONFIG", &m.config)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.1)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let state =
        || serde_json::from_str::<serde_json::Value>(&m.ok(&["update-status", "--json"])).unwrap();

    policy("");
    let r = auto();
    let skipped = r["skipped"].as_str().unwrap_or_default().to_string();
    assert!(skipped.contains("metered"), "{r:#}");
    assert!(r["fetched"].is_null(), "nothing downloaded: {r:#}");
    policy("metered_download = true\n");
    let r = auto();
    assert!(r["skipped"].is_null(), "{r:#}");
    assert!(r["fetched"]["bytes"].as_u64().unwrap() > 0, "{r:#}");
    let today = state()["downloaded_bytes"].as_u64().unwrap();
    assert!(today >= r["fetched"]["bytes"].as_u64().unwrap());

    // The quota: what was downloaded today plus version 3 would pass 1K.
    add("3");
    policy("metered_download = true\ndaily_quota = \"1K\"\n");
    let r = auto();
    let skipped = r["skipped"].as_str().unwrap_or_default().to_string();
    assert!(skipped.contains("daily quota"), "{r:#}");
    // The administrator's own upgrade goes regardless, and counts.
    m.ok(&["upgrade", "--download-only"]);
    assert!(state()["downloaded_bytes"].as_u64().unwrap() > today);
}

/// A flood of reports, twenty times a fleet of a thousand: every machine's ten
/// reports, as many forged ones and as much garbage. The controller counts each
/// machine once, counts and ignores the rest, and stays small (its peak memory is
/// measured by GNU time).
#[test]
fn root_a_flood_of_reports_neither_stops_the_controller_nor_fills_its_memory() {
    as_root!();
    use arbor_remote::report::{MachineKey, REPORT_FORMAT, Report, Verdict};
    let t = scratch();
    let publ = Publication::new(t.path(), &["1"], |_, _| {});
    publ.add("1", &[]);
    let p = publ.dir.clone();
    let shown: serde_json::Value =
        serde_json::from_str(&arbor(&["publish", "show", &p, "stable"])).unwrap();
    let commit = shown["versions"][0]["commit"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let folder = t.path().join("reports/stable");
    std::fs::create_dir_all(&folder).unwrap();
    let keys = t.path().join("keys");
    let fleet = 1000;
    for m in 0..fleet {
        let key = MachineKey::load_or_create(&keys.join(format!("{m}"))).unwrap();
        for n in 0..10 {
            let r = Report {
                format: REPORT_FORMAT,
                channel: "stable".into(),
                version: "1".into(),
                commit,
                bucket: (m % 100) as u8,
                verdict: if n == 9 {
                    Verdict::Good
                } else {
                    Verdict::Failed
                },
                boot_to_verdict_ms: Some(20_000),
                at_ms: 1_700_000_000_000 + n,
            };
            let bytes = key.sign(&r).unwrap();
            std::fs::write(folder.join(format!("{m}-{n}.json")), &bytes).unwrap();
            let mut forged: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            forged["report"] = forged["report"]
                .as_str()
                .unwrap()
                .replace("\"1\"", "\"9\"")
                .into();
            std::fs::write(
                folder.join(format!("{m}-{n}-forged.json")),
                forged.to_string(),
            )
            .unwrap();
            std::fs::write(folder.join(format!("{m}-{n}-junk.json")), [n as u8; 300]).unwrap();
        }
    }
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(common::arbor_bin())
        .args(["publish", "status", &p, "--channel", "stable", "--reports"])
        .arg(t.path().join("reports"))
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        st["versions"][0]["good"], fleet,
        "each machine once, by its latest: {st:#}"
    );
    assert_eq!(st["versions"][0]["failed"], 0);
    assert_eq!(st["ignored"]["bad_signature"], fleet * 10);
    assert_eq!(st["ignored"]["malformed"], fleet * 10);
    let peak_kb: u64 = String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        peak_kb < 128 << 10,
        "the controller peaked at {peak_kb} KB over 30000 reports"
    );
}
