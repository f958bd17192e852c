//! The D-Bus daemon through real clients on a private `dbus-daemon`: busctl and gdbus
//! read state and start transactions, a Rust client follows one to `Finished`, a
//! non-root caller is refused, transactions exclude each other and the CLI, the daemon
//! exits when idle and is activated again, and the interface file matches what the
//! daemon says about itself.
#![allow(clippy::print_stderr, clippy::print_stdout)]

#[macro_use]
mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::bus::Bus;
use common::*;
use zbus::zvariant::OwnedValue;

const SYSROOT: &str = "org.arbor.Arbor1.Sysroot";
const TXN: &str = "org.arbor.Arbor1.Transaction";
const ROOT: &str = "/org/arbor/Arbor1";

/// A sysroot with os/a (version 1) deployed and os/b (version 2) composed.
fn two_versions(dir: &Path) -> String {
    let s = sysroot(dir);
    compose(&s, &rootfs(dir, "1"), "os/a", "1");
    compose(&s, &rootfs(dir, "2"), "os/b", "2");
    arbor_ok(&["--sysroot", &s, "deploy", "os/a"]);
    s
}

/// [`two_versions`] served by a bus whose daemon exits after IDLE seconds. The bus
/// comes first so that it (and the daemon) stop before the sysroot is removed.
fn two_versions_on_a_bus(idle: u64) -> (Bus, String, tempfile::TempDir) {
    let t = scratch();
    let s = two_versions(t.path());
    (Bus::launch(&s, idle, None), s, t)
}

fn stdout(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn root_busctl_and_gdbus_read_status_and_start_a_deploy() {
    as_root!();
    let (bus, s, _t) = two_versions_on_a_bus(60);
    // The first call activates the daemon.
    let deployments = bus.property(ROOT, SYSROOT, "Deployments");
    assert_eq!(deployments.as_array().unwrap().len(), 1);
    assert_eq!(deployments[0]["version"]["data"], "1");
    assert_eq!(deployments[0]["origin"]["data"]["refspec"]["data"], "os/a");
    assert_eq!(deployments[0]["role"]["data"], "pending");
    assert_eq!(deployments[0]["commit"]["data"], status(&s)[0]["commit"]);
    let state = bus.property(ROOT, SYSROOT, "UpdateState");
    assert_eq!(
        state, "pending-reboot",
        "nothing is booted in a folder sysroot"
    );
    // gdbus reads the same.
    let pending = stdout(&bus.gdbus(&[
        "call",
        "--dest",
        "org.arbor.Arbor1",
        "--object-path",
        ROOT,
        "--method",
        "org.freedesktop.DBus.Properties.Get",
        SYSROOT,
        "PendingDeployment",
    ]));
    assert!(pending.contains("'version': <'1'>"), "{pending}");

    // gdbus starts a deploy; it returns the transaction at once and exits.
    let out = stdout(&bus.gdbus(&[
        "call",
        "--dest",
        "org.arbor.Arbor1",
        "--object-path",
        ROOT,
        "--method",
        "org.arbor.Arbor1.Sysroot.Deploy",
        "os/b",
        "{'kernel-args': <['quiet', 'console=ttyS0']>}",
    ]));
    let path = out
        .split('\'')
        .nth(1)
        .expect("an object path in the reply")
        .to_string();
    assert!(path.starts_with("/org/arbor/Arbor1/Transaction/"), "{out}");
    assert_eq!(bus.wait(&path), (true, String::new()));
    let result = bus.document(&path, TXN, "Result");
    assert_eq!(result["kind"], "deployed", "{result}");
    assert_eq!(result["format_version"], 1, "{result}");
    assert_eq!(result["deployment"]["version"], "2");
    // The CLI sees what the daemon did, and the daemon's properties follow.
    assert_eq!(versions(&s), ["2", "1"]);
    assert_eq!(
        status(&s)[0]["kargs"],
        serde_json::json!(["quiet", "console=ttyS0"])
    );
    let deployments = bus.property(ROOT, SYSROOT, "Deployments");
    assert_eq!(deployments[0]["version"]["data"], "2");
    let last = bus.property(ROOT, SYSROOT, "LastTransaction");
    assert_eq!(last["kind"]["data"], "deploy");
    assert_eq!(last["result"]["data"], "ok");
    assert!(
        last["command"]["data"]
            .as_str()
            .unwrap()
            .starts_with("D-Bus Deploy by :"),
        "{last}"
    );

    // Every property, of both interfaces, is typed: no string carries a document.
    for (object, iface) in [(ROOT, SYSROOT), (path.as_str(), TXN)] {
        let all = bus.busctl(&[
            "--json=short",
            "call",
            "org.arbor.Arbor1",
            object,
            "org.freedesktop.DBus.Properties",
            "GetAll",
            "s",
            iface,
        ]);
        let all: serde_json::Value = serde_json::from_slice(&all.stdout).unwrap();
        let props = all["data"][0].as_object().unwrap();
        assert!(props.len() > 5, "{all}");
        for (name, v) in props {
            if v["type"] == "s" {
                let text = v["data"].as_str().unwrap();
                assert!(
                    serde_json::from_str::<serde_json::Value>(text)
                        .map_or(true, |j| !j.is_object() && !j.is_array()),
                    "{iface}.{name} carries JSON: {text}"
                );
            }
        }
    }

    // busctl starts a rollback; a bad argument is named.
    let p = bus.start(&["Rollback", "a{sv}", "0"]).unwrap();
    assert_eq!(bus.wait(&p), (true, String::new()));
    assert_eq!(versions(&s), ["1", "2"]);
    let err = bus.start(&["Deploy", "sa{sv}", "nosuch", "0"]).unwrap_err();
    assert!(err.contains("no ref or commit named 'nosuch'"), "{err}");
    let err = bus
        .start(&["Deploy", "sa{sv}", "os/b", "1", "stage", "s", "yes"])
        .unwrap_err();
    assert!(err.contains("option 'stage' must be a boolean"), "{err}");
    // A failing transaction reports why, and changes nothing.
    let p = bus
        .start(&["KernelArgs", "asasasa{sv}", "0", "1", "nosuch", "0", "0"])
        .unwrap();
    let (ok, msg) = bus.wait(&p);
    assert!(
        !ok && msg.contains("no kernel argument 'nosuch' to delete"),
        "{msg}"
    );
    assert_eq!(versions(&s), ["1", "2"]);
}

/// One observed signal.
#[derive(Debug, PartialEq)]
enum Event {
    TaskBegin(String),
    TaskEnd(String),
    Percent(u32),
    SysrootChanged(Vec<String>),
    Finished(bool, String),
}

#[test]
fn root_rust_client_follows_progress_to_finished() {
    as_root!();
    let (bus, s, _t) = two_versions_on_a_bus(60);
    let conn = zbus::blocking::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .build()
        .unwrap();
    // Subscribe before calling, so no signal can be missed.
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .build();
    let signals = zbus::blocking::MessageIterator::for_match_rule(rule, &conn, Some(1024)).unwrap();
    let reply = conn
        .call_method(
            Some("org.arbor.Arbor1"),
            ROOT,
            Some(SYSROOT),
            "Deploy",
            &("os/b", HashMap::<String, OwnedValue>::new()),
        )
        .unwrap();
    let path: zbus::zvariant::OwnedObjectPath = reply.body().deserialize().unwrap();
    let path = path.to_string();
    let (tx, rx) = mpsc::channel();
    let watched = path.clone();
    std::thread::spawn(move || {
        for m in signals {
            let m = m.unwrap();
            let h = m.header();
            let (Some(member), Some(p)) = (h.member(), h.path()) else {
                continue;
            };
            let e = match (p.as_str(), member.as_str()) {
                (p, "TaskBegin") if p == watched => {
                    Event::TaskBegin(m.body().deserialize().unwrap())
                }
                (p, "TaskEnd") if p == watched => Event::TaskEnd(m.body().deserialize().unwrap()),
                (p, "PercentProgress") if p == watched => {
                    let (_, pct): (String, u32) = m.body().deserialize().unwrap();
                    Event::Percent(pct)
                }
                (p, "Finished") if p == watched => {
                    let (ok, msg): (bool, String) = m.body().deserialize().unwrap();
                    Event::Finished(ok, msg)
                }
                (ROOT, "PropertiesChanged") => {
                    let (_, changed, _): (String, HashMap<String, OwnedValue>, Vec<String>) =
                        m.body().deserialize().unwrap();
                    let mut names: Vec<String> = changed.into_keys().collect();
                    names.sort();
                    Event::SysrootChanged(names)
                }
                _ => continue,
            };
            let done = matches!(e, Event::Finished(..));
            if tx.send(e).is_err() || done {
                return;
            }
        }
    });
    let mut events = Vec::new();
    loop {
        let e = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the transaction never finished");
        let done = matches!(e, Event::Finished(..));
        events.push(e);
        if done {
            break;
        }
    }
    assert_eq!(
        events.first(),
        Some(&Event::TaskBegin("checkout".into())),
        "{events:?}"
    );
    assert_eq!(events.last(), Some(&Event::Finished(true, String::new())));
    let percents: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            Event::Percent(p) => Some(*p),
            _ => None,
        })
        .collect();
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{percents:?}");
    assert_eq!(percents.last(), Some(&100));
    for task in ["checkout", "etc", "kernel", "boot-entries"] {
        let b = events
            .iter()
            .position(|e| *e == Event::TaskBegin(task.into()));
        let e = events
            .iter()
            .position(|e| *e == Event::TaskEnd(task.into()));
        assert!(b.is_some() && b < e, "task {task}: {events:?}");
    }
    // The new state is announced before Finished, so a client reacting to Finished
    // already has it.
    let changed = events
        .iter()
        .position(
            |e| matches!(e, Event::SysrootChanged(n) if n.contains(&"Deployments".to_string())),
        )
        .expect("Deployments changed");
    assert!(changed < events.len() - 1);
    assert_eq!(versions(&s), ["2", "1"]);
}

#[test]
fn root_non_root_reads_status_but_gets_access_denied() {
    as_root!();
    let (bus, s, _t) = two_versions_on_a_bus(60);
    let read = bus.busctl_as_nobody(&[
        "--json=short",
        "get-property",
        "org.arbor.Arbor1",
        ROOT,
        SYSROOT,
        "Deployments",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&read)).unwrap();
    assert_eq!(v["data"][0]["version"]["data"], "1");
    for call in [
        vec!["Deploy", "sa{sv}", "os/b", "0"],
        vec!["Rollback", "a{sv}", "0"],
        vec!["Cleanup", "a{sv}", "0"],
        vec!["KernelArgs", "asasasa{sv}", "1", "quiet", "0", "0", "0"],
        vec!["Install", "asa{sv}", "1", "hello", "0"],
        vec!["Uninstall", "asa{sv}", "1", "hello", "0"],
        vec!["Upgrade", "a{sv}", "0"],
        vec!["ApplyLive", "a{sv}", "1", "dry-run", "b", "true"],
        vec!["UsrOverlay", "a{sv}", "0"],
        vec!["Cancel"],
    ] {
        let mut args = vec!["call", "org.arbor.Arbor1", ROOT, SYSROOT];
        args.extend(call.iter());
        let out = bus.busctl_as_nobody(&args);
        assert!(!out.status.success(), "{call:?} was allowed");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Access denied"), "{call:?}: {err}");
    }
    // gdbus shows the daemon's reason.
    let out = bus.gdbus_call_as_nobody("Deploy", &["os/b", "{}"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("org.freedesktop.DBus.Error.AccessDenied")
            && err.contains("uid 65534 is not root"),
        "{err}"
    );
    assert_eq!(versions(&s), ["1"], "nothing changed");
}

/// Calls Sysroot.METHOD with python3-dbus (busctl cannot pass a 1 MB argument) and
/// returns "path <object path>" or "error <D-Bus error name> <message>".
fn call_py(bus: &Bus, method: &str, args: &str) -> String {
    let script = format!(
        "import dbus, dbus.bus\n\
         huge = 'x' * (1 << 20)\n\
         bus = dbus.bus.BusConnection('{}')\n\
         s = dbus.Interface(bus.get_object('org.arbor.Arbor1', '{ROOT}'), '{SYSROOT}')\n\
         e = dbus.Dictionary({{}}, signature='sv')\n\
         try:\n    print('path', s.{method}({args}, timeout=120))\n\
         except dbus.DBusException as x:\n    print('error', x.get_dbus_name(), str(x)[:400])\n",
        bus.address
    );
    let out = std::process::Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Hostile method arguments (`..`, absolute paths, 1 MB strings) get a clear error
/// (at the call, or as the transaction's failure), change nothing, and leave the
/// daemon serving. (A NUL cannot be sent: D-Bus strings exclude it, and client
/// libraries and the bus refuse such a message before it reaches the daemon.)
#[test]
fn root_hostile_arguments_get_clear_errors_and_change_nothing() {
    as_root!();
    let (bus, s, _t) = two_versions_on_a_bus(60);
    let before = versions(&s);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "Deploy",
            "'../../../etc/passwd', e".into(),
            "../../../etc/passwd",
        ),
        ("Deploy", "'/etc/passwd', e".into(), "/etc/passwd"),
        ("Deploy", "huge, e".into(), "bytes; at most 4096"),
        (
            "Deploy",
            "'os/b', dbus.Dictionary({'os': '../escape'}, signature='sv')".into(),
            "../escape",
        ),
        ("Rebase", "'../../x', e".into(), "../../x"),
        ("Rebase", "huge, e".into(), "bytes; at most 4096"),
        ("Install", "['../../x', '/etc/passwd'], e".into(), "../../x"),
        ("Install", "[huge], e".into(), "bytes; at most 4096"),
        (
            "KernelArgs",
            "[huge], [], [], e".into(),
            "bytes; at most 4096",
        ),
    ];
    for (method, args, named) in cases {
        let got = call_py(&bus, method, &args);
        let message = match got.strip_prefix("path ") {
            Some(path) => {
                let (ok, message) = bus.wait(path);
                assert!(!ok, "{method}: a hostile argument succeeded");
                message
            }
            None => got.clone(),
        };
        let short: String = message.chars().take(300).collect();
        assert!(
            message.len() < 4096 && message.contains(named),
            "{method}: unclear error ({} bytes): {short}",
            message.len()
        );
        assert!(bus.daemon_running(), "{method}: the daemon died");
    }
    assert_eq!(versions(&s), before, "something was deployed");
}

/// A caller that leaves the bus while polkit is still deciding gets nothing done in
/// its name, even when polkit then says yes (fail closed).
#[test]
fn root_a_caller_that_leaves_during_authorization_is_denied() {
    as_root!();
    let (bus, s, _t) = two_versions_on_a_bus(60);
    // A rule that takes 3 s, then allows: an agent asking for a password, say.
    let _polkit = bus.polkitd(
        r#"polkit.addRule(function(action, subject) {
    if (action.id == "org.arbor.Arbor1.deploy") {
        var t = Date.now();
        while (Date.now() - t < 3000) {}
        return polkit.Result.YES;
    }
});"#,
    );
    let before = versions(&s);
    let last = bus.property(ROOT, SYSROOT, "LastTransaction");
    // busctl gives up after 1 s and exits, taking its connection with it.
    let out = bus.busctl_as_nobody(&[
        "--timeout=1",
        "call",
        "org.arbor.Arbor1",
        ROOT,
        SYSROOT,
        "Deploy",
        "sa{sv}",
        "os/b",
        "0",
    ]);
    assert!(!out.status.success(), "the call should have timed out");
    std::thread::sleep(std::time::Duration::from_secs(5));
    assert_eq!(versions(&s), before, "deployed for a caller that had left");
    assert_eq!(bus.property(ROOT, SYSROOT, "LastTransaction"), last);
    // The same call, waited for, goes through.
    let out = bus.busctl_as_nobody(&[
        "--timeout=30",
        "call",
        "org.arbor.Arbor1",
        ROOT,
        SYSROOT,
        "Deploy",
        "sa{sv}",
        "os/b",
        "0",
    ]);
    let path = stdout(&out).split('"').nth(1).unwrap().to_string();
    assert_eq!(bus.wait(&path), (true, String::new()));
}

#[test]
fn root_polkit_authorizes_a_non_root_caller_per_action() {
    as_root!();
    let (bus, s, _t) = two_versions_on_a_bus(60);
    // The real polkitd, with a rule that lets nobody roll back and nothing else.
    let _polkit = bus.polkitd(
        r#"polkit.addRule(function(action, subject) {
    if (action.id == "org.arbor.Arbor1.rollback" && subject.user == "nobody")
        return polkit.Result.YES;
    if (action.id.indexOf("org.arbor.Arbor1.") == 0)
        return polkit.Result.NO;
});"#,
    );
    arbor_ok(&["--sysroot", &s, "deploy", "os/b"]);
    let out = bus.busctl_as_nobody(&[
        "call",
        "org.arbor.Arbor1",
        ROOT,
        SYSROOT,
        "Rollback",
        "a{sv}",
        "0",
    ]);
    let path = stdout(&out).split('"').nth(1).unwrap().to_string();
    assert_eq!(bus.wait(&path), (true, String::new()));
    assert_eq!(versions(&s), ["1", "2"]);
    let last = bus.property(ROOT, SYSROOT, "LastTransaction");
    assert_eq!(
        last["uid"]["data"], 65534,
        "recorded as the caller, not as root"
    );
    let out = bus.busctl_as_nobody(&[
        "call",
        "org.arbor.Arbor1",
        ROOT,
        SYSROOT,
        "Deploy",
        "sa{sv}",
        "os/b",
        "0",
    ]);
    assert!(!out.status.success());
    let out = bus.gdbus_call_as_nobody("Deploy", &["os/b", "{}"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not authorized for org.arbor.Arbor1.deploy (polkit said no)"),
        "{err}"
    );
    assert_eq!(versions(&s), ["1", "2"]);
}

#[test]
fn root_one_transaction_at_a_time_cli_and_daemon_exclude_each_other_and_cancel() {
    as_root!();
    let t = scratch();
    let s = sysroot(t.path());
    // A real tree, so a deploy lasts long enough to overlap with other calls.
    compose(&s, &corpus("a"), "os/a", "a");
    compose(&s, &rootfs(t.path(), "1"), "os/small", "1");
    arbor_ok(&["--sysroot", &s, "deploy", "os/small"]);
    let bus = Bus::launch(&s, 60, None);

    let first = bus.start(&["Deploy", "sa{sv}", "os/a", "0"]).unwrap();
    // busctl has exited: the transaction does not depend on its caller.
    let err = bus.start(&["Deploy", "sa{sv}", "os/a", "0"]).unwrap_err();
    assert!(
        err.contains(&format!("transaction {first} (Deploy")),
        "{err}"
    );
    let active = bus.property(ROOT, SYSROOT, "ActiveTransaction");
    assert_eq!(active[0], "Deploy");
    assert_eq!(active[2], first.as_str());
    // The CLI waits for the daemon's lock, or names arbord with --no-wait.
    let daemon = bus.daemon_pid();
    let cli = arbor_err(&["--sysroot", &s, "--no-wait", "deploy", "os/small"]);
    assert!(
        cli.contains(&format!("pid {daemon}")) && cli.contains("arbord"),
        "{cli}"
    );
    assert_eq!(bus.wait(&first), (true, String::new()));
    assert_eq!(versions(&s), ["a", "1"]);

    // A CLI transaction holds the lock: the daemon refuses at once, naming it.
    let lock = Path::new(&s).join("arbor/lock");
    let mut holder = spawn_lock_holder(&["--sysroot", &s, "deploy", "os/small"], &lock);
    let err = bus.start(&["Deploy", "sa{sv}", "os/a", "0"]).unwrap_err();
    assert!(
        err.contains(&format!("pid {}", holder.id())) && err.contains("deploy os/small"),
        "{err}"
    );
    assert!(holder.wait().unwrap().success());
    assert_eq!(versions(&s), ["1", "a"]);

    // Cancel stops a deploy at a safe point: nothing new, nothing left behind.
    let before = status(&s);
    let p = bus.start(&["Deploy", "sa{sv}", "os/a", "0"]).unwrap();
    let out = bus.busctl(&["call", "org.arbor.Arbor1", &p, TXN, "Cancel"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, msg) = bus.wait(&p);
    assert!(!ok && msg.contains("cancelled"), "{ok} {msg}");
    assert_eq!(status(&s), before);
    let deploy_dir = Path::new(&s).join("arbor/deploy/debian/deploy");
    let leftovers: Vec<_> = std::fs::read_dir(&deploy_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(
        bus.property(ROOT, SYSROOT, "LastTransaction")["result"]["data"]
            .as_str()
            .unwrap()
            .contains("cancelled")
    );
    arbor_ok(&["--sysroot", &s, "fsck"]);
    // And the next one runs.
    let p = bus.start(&["Deploy", "sa{sv}", "os/a", "0"]).unwrap();
    assert_eq!(bus.wait(&p), (true, String::new()));
}

#[test]
fn root_daemon_exits_when_idle_and_is_activated_again_with_its_state() {
    as_root!();
    let (bus, _s, _t) = two_versions_on_a_bus(2);
    assert!(!bus.daemon_running(), "not started before the first call");
    let p = bus.start(&["Deploy", "sa{sv}", "os/b", "0"]).unwrap();
    assert_eq!(bus.wait(&p), (true, String::new()));
    let first = bus.daemon_pid();
    let deadline = Instant::now() + Duration::from_secs(20);
    while bus.daemon_running() {
        assert!(
            Instant::now() < deadline,
            "the daemon never exited when idle"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Gone for real, not just off the bus (exited: no process, or a zombie until the
    // bus daemon, its parent, reaps it).
    let exited = || match std::fs::read_to_string(format!("/proc/{first}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .unwrap()
            .trim_start()
            .starts_with('Z'),
    };
    while !exited() {
        assert!(
            Instant::now() < deadline,
            "the daemon left the bus but runs on"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The next call starts a new one, which reads the state left on disk.
    let last = bus.property(ROOT, SYSROOT, "LastTransaction");
    assert_ne!(bus.daemon_pid(), first);
    assert_eq!(last["kind"]["data"], "deploy");
    assert_eq!(last["result"]["data"], "ok");
    assert_eq!(
        bus.property(ROOT, SYSROOT, "Deployments")[0]["version"]["data"],
        "2"
    );
}

/// The `<interface>` blocks of an introspection document, named.
fn interfaces(xml: &str) -> Vec<(String, String)> {
    xml.split("<interface name=\"")
        .skip(1)
        .map(|rest| {
            let name = rest.split('"').next().unwrap().to_string();
            let body = rest.split("</interface>").next().unwrap();
            (name, format!("<interface name=\"{body}</interface>"))
        })
        .collect()
}

#[test]
fn root_interface_xml_equals_live_introspection() {
    as_root!();
    let (bus, _s, _t) = two_versions_on_a_bus(60);
    let p = bus.start(&["Rollback", "a{sv}", "0"]).unwrap();
    bus.wait(&p);
    let introspect = |path: &str| {
        let out = stdout(&bus.busctl(&[
            "--json=short",
            "call",
            "org.arbor.Arbor1",
            path,
            "org.freedesktop.DBus.Introspectable",
            "Introspect",
        ]));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["data"][0].as_str().unwrap().to_string()
    };
    // Clients parse it as XML (dbus-python does, with expat): `--` in a doc comment
    // once made it malformed, so every method call from such a client failed.
    for doc in [introspect(ROOT), introspect(&p)] {
        let mut parse = std::process::Command::new("/usr/bin/python3")
            .args([
                "-c",
                "import sys, xml.dom.minidom; xml.dom.minidom.parseString(sys.stdin.read())",
            ])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        parse
            .stdin
            .take()
            .unwrap()
            .write_all(doc.as_bytes())
            .unwrap();
        assert!(
            parse.wait().unwrap().success(),
            "not well-formed XML:\n{doc}"
        );
    }
    // Each interface once (an object's introspection may show its children's too).
    let live: Vec<(String, String)> = interfaces(&introspect(ROOT))
        .into_iter()
        .chain(interfaces(&introspect(&p)))
        .filter(|(n, _)| n.starts_with("org.arbor."))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect();
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("dbus/org.arbor.Arbor1.xml");
    if std::env::var_os("ARBOR_BLESS").is_some() {
        let blocks: Vec<String> = live.iter().map(|(_, b)| format!("  {b}\n")).collect();
        std::fs::write(
            &file,
            format!(
                "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n<!-- The interfaces of arbord (org.arbor.Arbor1). Checked against the running\n     daemon by integration/dbus.rs; regenerate with ARBOR_BLESS=1. -->\n<node>\n{}</node>\n",
                blocks.join("")
            ),
        )
        .unwrap();
    }
    let written = std::fs::read_to_string(&file).unwrap();
    let mut expected = interfaces(&written);
    expected.sort();
    assert_eq!(
        expected.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        [SYSROOT, TXN]
    );
    for ((name, want), (_, got)) in expected.iter().zip(&live) {
        assert_eq!(
            want, got,
            "{name} differs from the live daemon: update dbus/org.arbor.Arbor1.xml \
             (ARBOR_BLESS=1 cargo test --test dbus interface_xml)"
        );
    }
}

#[test]
fn root_only_the_last_finished_transactions_stay_exported() {
    as_root!();
    let (bus, s, _t) = two_versions_on_a_bus(60);
    arbor_ok(&["--sysroot", &s, "deploy", "os/b"]);
    let paths: Vec<String> = (0..18)
        .map(|_| {
            let p = bus.start(&["Rollback", "a{sv}", "0"]).unwrap();
            assert_eq!(bus.wait(&p), (true, String::new()));
            p
        })
        .collect();
    let gone = bus.busctl(&[
        "get-property",
        "org.arbor.Arbor1",
        &paths[0],
        TXN,
        "Success",
    ]);
    assert!(
        !gone.status.success(),
        "the oldest transaction is still exported"
    );
    assert_eq!(bus.property(&paths[17], TXN, "Success"), true);
    assert_eq!(
        bus.property(&paths[2], TXN, "Success"),
        true,
        "the last 16 stay"
    );
}

#[test]
fn root_a_panicking_job_fails_its_transaction_and_the_daemon_carries_on() {
    as_root!();
    let t = scratch();
    let s = two_versions(t.path());
    let bus = Bus::launch_env(&s, 3, None, &[("ARBOR_FAILPOINTS", "ops-execute=panic")]);
    let p = bus.start(&["Rollback", "a{sv}", "0"]).unwrap();
    let (ok, msg) = bus.wait(&p);
    assert!(
        !ok && msg.contains("internal error") && msg.contains("failpoint ops-execute"),
        "{msg}"
    );
    // Not stuck: nothing is active, and the next call gets a transaction, not Busy.
    assert_eq!(
        bus.property(ROOT, SYSROOT, "ActiveTransaction"),
        serde_json::json!(["", "", ""])
    );
    let q = bus.start(&["Rollback", "a{sv}", "0"]).unwrap();
    assert_ne!(p, q);
    assert!(!bus.wait(&q).0);
    // The history row ended as failed; nothing changed.
    let last = bus.property(ROOT, SYSROOT, "LastTransaction");
    assert_eq!(last["kind"]["data"], "rollback");
    assert!(
        last["result"]["data"]
            .as_str()
            .unwrap()
            .contains("internal error"),
        "{last}"
    );
    assert_eq!(versions(&s), ["1"]);
    // And it still exits when idle.
    let deadline = Instant::now() + Duration::from_secs(20);
    while bus.daemon_running() {
        assert!(
            Instant::now() < deadline,
            "the daemon never exited after the panic"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn root_failed_transactions_name_their_case() {
    as_root!();
    let t = scratch();
    let s = two_versions(t.path());
    // Deployment 0 is "booted" for the daemon, so apply-live has something to compare.
    let cmdline = t.path().join("cmdline");
    arbor_ok(&[
        "--sysroot",
        &s,
        "boot-select",
        "--cmdline-out",
        cmdline.to_str().unwrap(),
    ]);
    let bus = Bus::launch(&s, 60, Some(&cmdline));
    let name = |path: &str| {
        bus.property(path, TXN, "ErrorName")
            .as_str()
            .unwrap()
            .to_string()
    };
    let p = bus
        .start(&["Deploy", "sa{sv}", "os/b", "1", "os", "s", "nowhere"])
        .unwrap();
    let (ok, msg) = bus.wait(&p);
    assert!(!ok && msg.contains("no stateroot 'nowhere'"), "{msg}");
    assert_eq!(name(&p), "org.arbor.Arbor1.Error.NoStateroot");
    let p = bus.start(&["ApplyLive", "a{sv}", "0"]).unwrap();
    let (ok, msg) = bus.wait(&p);
    assert!(!ok && msg.contains("nothing is pending"), "{msg}");
    assert_eq!(name(&p), "org.arbor.Arbor1.Error.NothingPending");
    let p = bus.start(&["Rollback", "a{sv}", "0"]).unwrap();
    let (ok, msg) = bus.wait(&p);
    assert!(
        !ok && msg.contains("no deployment to roll back to"),
        "{msg}"
    );
    assert_eq!(name(&p), "org.arbor.Arbor1.Error.NothingPending");
    let p = bus.start(&["Deploy", "sa{sv}", "os/b", "0"]).unwrap();
    assert_eq!(bus.wait(&p), (true, String::new()));
    assert_eq!(name(&p), "");
}

/// A panel on GLib (Gio through Python's `gi`) registers with RegisterClient: the
/// daemon then outlives its idle limit; it exits once the panel unregisters, and
/// again once a registered panel leaves the bus without a word.
#[test]
fn root_a_registered_client_keeps_the_daemon_until_it_leaves() {
    use std::io::{BufRead, BufReader, Write};
    as_root!();
    let (bus, _s, _t) = two_versions_on_a_bus(2);
    let script = format!(
        "import sys\n\
         import gi\n\
         gi.require_version('Gio', '2.0')\n\
         from gi.repository import Gio, GLib\n\
         flags = Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT | \
           Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION\n\
         bus = Gio.DBusConnection.new_for_address_sync('{}', flags, None, None)\n\
         def call(method, options):\n\
         \x20   try:\n\
         \x20       bus.call_sync('org.arbor.Arbor1', '{ROOT}', '{SYSROOT}', method,\n\
         \x20           GLib.Variant('(a{{sv}})', (options,)), None, Gio.DBusCallFlags.NONE,\n\
         \x20           60000, None)\n\
         \x20       print(method, 'ok', flush=True)\n\
         \x20   except GLib.Error as e:\n\
         \x20       print(method, 'error', Gio.DBusError.get_remote_error(e), flush=True)\n\
         for line in sys.stdin:\n\
         \x20   if line.strip() == 'register':\n\
         \x20       call('RegisterClient', {{'id': GLib.Variant('s', 'test panel')}})\n\
         \x20   else:\n\
         \x20       call('UnregisterClient', {{}})\n",
        bus.address
    );
    let mut panel = std::process::Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_panel = panel.stdin.take().unwrap();
    let mut from_panel = BufReader::new(panel.stdout.take().unwrap());
    let mut ask = |what: &str| {
        writeln!(to_panel, "{what}").unwrap();
        let mut line = String::new();
        from_panel.read_line(&mut line).unwrap();
        line.trim().to_string()
    };
    let exits_within = |secs: u64| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while bus.daemon_running() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        true
    };
    assert_eq!(ask("register"), "RegisterClient ok");
    std::thread::sleep(Duration::from_secs(6));
    assert!(bus.daemon_running(), "exited under a registered client");
    assert_eq!(ask("unregister"), "UnregisterClient ok");
    assert!(
        exits_within(15),
        "never exited once the client unregistered"
    );
    // Unregistering twice is an error (from a daemon the call activates).
    assert_eq!(
        ask("unregister"),
        "UnregisterClient error org.freedesktop.DBus.Error.InvalidArgs"
    );
    assert_eq!(ask("register"), "RegisterClient ok");
    std::thread::sleep(Duration::from_secs(5));
    assert!(bus.daemon_running(), "exited under a registered client");
    panel.kill().unwrap();
    panel.wait().unwrap();
    assert!(
        exits_within(15),
        "never exited once the client left the bus"
    );
}

/// The automatic-update policy as a panel sees it: read as a property, changed with
/// gdbus (GLib) into the file `arbor auto-update` reads, refused whole when a name or
/// value is wrong (the file untouched), and refused to a caller polkit does not allow.
#[test]
fn root_the_automatic_update_policy_is_read_and_changed_over_dbus() {
    as_root!();
    let t = scratch();
    let root = two_versions(t.path());
    let config = t.path().join("etc/arbor/arbor.toml");
    let bus = Bus::launch_env(&root, 0, None, &[("ARBOR_CONFIG", s(&config))]);
    let policy = || bus.property(ROOT, SYSROOT, "AutomaticUpdatePolicy");
    let p = policy();
    assert_eq!(p["auto_install"]["data"], false, "{p}");
    assert_eq!(p["preferred_time"]["data"], "03:00", "{p}");
    let set = |arg: &str| {
        bus.gdbus(&[
            "call",
            "--dest",
            "org.arbor.Arbor1",
            "--object-path",
            ROOT,
            "--method",
            "org.arbor.Arbor1.Sysroot.SetAutomaticUpdatePolicy",
            arg,
        ])
    };
    let out = set("{'auto_install': <true>, 'preferred_time': <'04:30'>}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = policy();
    assert_eq!(p["auto_install"]["data"], true, "{p}");
    assert_eq!(p["preferred_time"]["data"], "04:30", "{p}");
    let saved = std::fs::read_to_string(&config).unwrap();
    assert!(
        saved.contains("auto_install = true") && saved.contains("preferred_time = \"04:30\""),
        "{saved}"
    );
    // What the timer's command reads is what the panel wrote.
    let loaded = arbor_ops::update::policy::Policy::load(Some(&config)).unwrap();
    assert!(loaded.auto_install && loaded.preferred_time == "04:30");
    for (arg, named) in [
        (
            "{'preferred_time': <'25:00'>, 'auto_install': <false>}",
            "preferred_time",
        ),
        ("{'auto_instal': <false>}", "auto_instal"),
        ("{'auto_install': <'no'>}", "auto_install"),
        ("{'channel': <'../etc'>}", "channel"),
    ] {
        let out = set(arg);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && err.contains("org.freedesktop.DBus.Error.InvalidArgs")
                && err.contains(named),
            "{arg}: {err}"
        );
        assert_eq!(std::fs::read_to_string(&config).unwrap(), saved, "{arg}");
    }
    let out = bus.gdbus_call_as_nobody("SetAutomaticUpdatePolicy", &["{'auto_install': <false>}"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("org.freedesktop.DBus.Error.AccessDenied"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), saved);
}

#[test]
fn root_etc_diff_restore_and_reset_over_the_bus() {
    as_root!();
    let (bus, s, _t) = two_versions_on_a_bus(60);
    // No conflict waits for the next boot: an empty list (`as`), as status says.
    assert_eq!(
        bus.property(ROOT, SYSROOT, "EtcConflicts"),
        serde_json::json!([])
    );
    let etc = deployment_dir(&s, 0).join("etc");
    std::fs::write(etc.join("hostname"), "web1\n").unwrap();
    let out = bus.busctl(&[
        "--json=short",
        "call",
        "org.arbor.Arbor1",
        ROOT,
        SYSROOT,
        "EtcDiff",
        "a{sv}",
        "0",
    ]);
    let diff: serde_json::Value = serde_json::from_slice(&stdout(&out).into_bytes()).unwrap();
    let drift = &diff["data"][0]["drift"]["data"];
    assert_eq!(drift[0]["path"]["data"], "hostname", "{diff:#}");
    assert_eq!(drift[0]["change"]["data"], "modified", "{diff:#}");
    // Nobody may not restore or reset; a bad path or level is InvalidArgs.
    let refused = bus.busctl_as_nobody(&[
        "call",
        "org.arbor.Arbor1",
        ROOT,
        SYSROOT,
        "Reset",
        "sa{sv}",
        "etc",
        "0",
    ]);
    assert!(!refused.status.success());
    let e = bus
        .start(&["EtcRestore", "asa{sv}", "1", "/var/x", "0"])
        .unwrap_err();
    assert!(e.contains("not below /etc"), "{e}");
    let e = bus
        .start(&["Reset", "sa{sv}", "everything", "0"])
        .unwrap_err();
    assert!(e.contains("etc, var or all"), "{e}");

    let p = bus
        .start(&["EtcRestore", "asa{sv}", "1", "/etc/hostname", "0"])
        .unwrap();
    assert_eq!(bus.wait(&p), (true, String::new()));
    assert_eq!(
        std::fs::read_to_string(etc.join("hostname")).unwrap(),
        "debian\n"
    );
    let p = bus.start(&["Reset", "sa{sv}", "etc", "0"]).unwrap();
    assert_eq!(bus.wait(&p), (true, String::new()));
    assert_eq!(
        status(&s).len(),
        2,
        "the reset deployment and the previous one"
    );
    let history = arbor_ok(&["--sysroot", &s, "history"]);
    assert!(
        history.contains("reset") && history.contains("etc-restore"),
        "{history}"
    );
}

/// The interface file promises typed documents: no method returns a string, and the
/// string properties are words and messages, never JSON (the documents are `a{sv}`).
#[test]
fn the_interface_file_has_no_string_that_carries_a_document() {
    let xml = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dbus/org.arbor.Arbor1.xml"),
    )
    .unwrap();
    assert!(
        !xml.contains(r#"type="s" direction="out""#),
        "a method returns a string: return the document as a{{sv}}"
    );
    // The string properties, each a word or a message.
    let words = [
        "Path",
        "UpdateState",
        "CurrentTask",
        "ErrorMessage",
        "ErrorName",
        "Initiator",
        "Method",
    ];
    let strings: Vec<&str> = xml
        .split("<property name=\"")
        .skip(1)
        .filter(|p| p.split('"').nth(2) == Some("s"))
        .map(|p| p.split('"').next().unwrap())
        .collect();
    assert!(strings.contains(&"UpdateState"), "{strings:?}");
    for name in strings {
        assert!(
            words.contains(&name),
            "property {name} is a string: a document is a{{sv}}, a word is listed here"
        );
    }
}
