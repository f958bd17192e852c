//! What a settings panel does with `arbord`, done by a real GLib client
//! (`integration/clients/panel.py`) against a real nginx-served publication: check and
//! see the package changes before downloading, upgrade following one progress figure to
//! Finished, cancel mid-download and resume, two panels at once, and a panel that
//! crashes mid-transaction without stopping the work.

#[macro_use]
mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::bus::Bus;
use common::nginx::Nginx;
use common::panel::Panel;
use common::{arbor_ok, s, scratch};
use serde_json::Value;

const MACHINE: &str = "5f1e0c9a2b7d4e3f8a6b1c0d9e8f7a6b";
const ROOT: &str = "/org/arbor/Arbor1";
const MINUTES: Duration = Duration::from_secs(300);

/// A dpkg status file listing `pkgs` (name, version) as installed.
fn dpkg_status(pkgs: &[(&str, &str)]) -> String {
    pkgs.iter()
        .map(|(n, v)| {
            format!(
                "Package: {n}\nStatus: install ok installed\nArchitecture: amd64\nVersion: {v}\n\n"
            )
        })
        .collect()
}

/// A publication of channel stable with version 1 deployed on a client sysroot, and
/// version 2 published after it: tool 1.0-1 → 2.0-1, oldpkg removed, newpkg added, and
/// 24 MB of incompressible data so that the delta takes a while through a slow nginx.
struct Setup {
    client: String,
    nginx: Nginx,
    delta: PathBuf,
    /// Last: fields drop in order, and nginx needs its folder to be stopped.
    _t: tempfile::TempDir,
}

fn setup(slow_deltas: Option<u32>) -> Setup {
    let t = scratch();
    let build = t.path().join("build");
    let b = s(&build).to_string();
    arbor_ok(&["--repo", &b, "init"]);
    let srv = t.path().join("srv");
    let pubdir = srv.join("pub");
    arbor_ok(&["publish", "init", s(&pubdir)]);
    let versions: [(&str, &[(&str, &str)]); 2] = [
        (
            "1",
            &[("libfoo", "1.0-1"), ("oldpkg", "0.9"), ("tool", "1.0-1")],
        ),
        (
            "2",
            &[("libfoo", "1.0-1"), ("newpkg", "3.1"), ("tool", "2.0-1")],
        ),
    ];
    let nginx = Nginx::start(&srv, &t.path().join("nginx"), slow_deltas);
    let url = format!("{}pub", nginx.url);
    let client = t.path().join("client");
    let sys = s(&client).to_string();
    for (v, pkgs) in versions {
        let tree = common::rootfs(&t.path().join(format!("tree-{v}")), v);
        std::fs::write(tree.join("var/lib/dpkg/status"), dpkg_status(pkgs)).unwrap();
        if v == "2" {
            let mut noise = vec![0u8; 24 << 20];
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            for b in noise.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            std::fs::write(tree.join("usr/bin/big-tool"), noise).unwrap();
        }
        arbor_ok(&[
            "--repo",
            &b,
            "compose",
            "rootfs",
            s(&tree),
            "-b",
            "os/stable",
            "--version",
            v,
        ]);
        arbor_ok(&[
            "--repo",
            &b,
            "publish",
            "add",
            s(&pubdir),
            "--channel",
            "stable",
            "--version",
            v,
            "--ref",
            "os/stable",
        ]);
        if v == "1" {
            let root_json = pubdir.join("metadata/1.root.json");
            arbor_ok(&["admin", "init-fs", &sys]);
            arbor_ok(&["--sysroot", &sys, "admin", "os-init", "debian"]);
            arbor_ok(&[
                "--sysroot",
                &sys,
                "remote",
                "add",
                "origin",
                &url,
                "--trust",
                s(&root_json),
            ]);
            let out = std::process::Command::new(common::arbor_bin())
                .args(["--sysroot", &sys, "deploy", "origin:stable"])
                .env("ARBOR_MACHINE_ID", MACHINE)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let delta = std::fs::read_dir(pubdir.join("deltas"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "delta"))
        .expect("version 2 was published with a delta from 1");
    Setup {
        _t: t,
        client: sys,
        nginx,
        delta,
    }
}

/// The private bus with arbord serving the client. Its policy file is the test's own
/// (`ARBOR_CONFIG`), never the machine's /etc/arbor/arbor.toml.
fn bus(setup: &Setup) -> Bus {
    let config = format!("{}/arbor.toml", setup.client);
    Bus::launch_env(
        &setup.client,
        60,
        None,
        &[
            ("ARBOR_MACHINE_ID", MACHINE),
            ("ARBOR_CONFIG", config.as_str()),
        ],
    )
}

/// A value of an `a{sv}` as the panel prints it (Python unpacks the variants).
fn names(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| p["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Waits until the panel sees AvailableUpdate change, and returns the new value.
/// The `AvailableUpdate` change a panel saw after its `since`-th event, waited for if
/// it has not come yet. It may come before or after the check's `Finished` signal
/// (which `finished` reads past), so the events already read count too.
fn available_changed(p: &mut Panel, since: usize) -> Value {
    let is_change = |e: &Value| e["path"] == ROOT && e["changed"].get("AvailableUpdate").is_some();
    let e = match p.seen[since..].iter().find(|e| is_change(e)) {
        Some(e) => e.clone(),
        None => p.until(MINUTES, is_change),
    };
    e["changed"]["AvailableUpdate"].clone()
}

#[test]
fn root_a_panel_checks_sees_package_changes_and_upgrades_following_progress() {
    as_root!();
    let setup = setup(None);
    let bus = bus(&setup);
    let mut a = Panel::connect(&bus.address);
    let mut b = Panel::connect(&bus.address);
    a.ok("register");
    b.ok("register");
    setup.nginx.clear_log();
    assert_eq!(
        a.ok("get AvailableUpdate"),
        serde_json::json!({}),
        "not checked yet"
    );

    // Check: both panels learn what version 2 changes, before anything is fetched.
    let (since_a, since_b) = (a.seen.len(), b.seen.len());
    let check = a.ok("start Check").as_str().unwrap().to_string();
    assert_eq!(a.finished(&check, MINUTES), (true, String::new()));
    let offer = available_changed(&mut b, since_b);
    assert_eq!(available_changed(&mut a, since_a), offer);
    assert_eq!(offer["version"], "2");
    assert_eq!(offer["remote"], "origin");
    assert_eq!(offer["channel"], "stable");
    assert_eq!(offer["method"], "deltas");
    // How it would be applied, estimated from the package lists before any download.
    assert_eq!(offer["activation"]["step"], "live", "{offer}");
    assert!(
        offer["download_bytes"].as_i64().unwrap() > 1 << 20,
        "{offer}"
    );
    let pkgs = &offer["packages"];
    assert_eq!(names(&pkgs["upgraded"]), ["tool"]);
    assert_eq!(pkgs["upgraded"][0]["from"], "1.0-1");
    assert_eq!(pkgs["upgraded"][0]["to"], "2.0-1");
    assert_eq!(names(&pkgs["added"]), ["newpkg"]);
    assert_eq!(names(&pkgs["removed"]), ["oldpkg"]);
    let fetched: Vec<String> = setup
        .nginx
        .requests()
        .into_iter()
        .map(|(path, _, _)| path)
        .filter(|p| p.contains("/objects/") || p.contains("/deltas/"))
        .collect();
    assert!(fetched.is_empty(), "a check fetched {fetched:?}");
    assert_eq!(a.ok("get AvailableUpdate"), offer);

    // Upgrade, followed from the first signal (wait-for-start, then Start).
    let up = a.ok("start Upgrade").as_str().unwrap().to_string();
    assert_eq!(a.finished(&up, MINUTES), (true, String::new()));
    assert_eq!(
        b.finished(&up, MINUTES),
        (true, String::new()),
        "the other panel saw it too"
    );
    let percents: Vec<u64> = a
        .signals(&up, "PercentProgress")
        .iter()
        .map(|args| args[1].as_u64().unwrap())
        .collect();
    assert!(percents.len() >= 5, "{percents:?}");
    assert!(
        percents.windows(2).all(|w| w[0] <= w[1]),
        "backwards: {percents:?}"
    );
    assert_eq!(percents.first(), Some(&0));
    assert_eq!(percents.last(), Some(&100));
    let downloads = a.signals(&up, "DownloadProgress");
    let last = downloads.last().expect("DownloadProgress during the fetch");
    let delta_size = std::fs::metadata(&setup.delta).unwrap().len();
    assert_eq!(last[0].as_u64(), Some(delta_size), "{last:?}");
    assert_eq!(last[1].as_u64(), Some(delta_size));
    assert_eq!(
        (last[2].as_u64(), last[3].as_u64()),
        (Some(0), Some(1)),
        "one delta"
    );
    let tasks: Vec<String> = a
        .signals(&up, "TaskBegin")
        .iter()
        .map(|args| args[0].as_str().unwrap().to_string())
        .collect();
    for t in ["check", "download", "checkout", "kernel"] {
        assert!(tasks.iter().any(|x| x == t), "no task {t}: {tasks:?}");
    }
    assert_eq!(a.ok(&format!("tget {up} Percent")), 100);
    assert_eq!(a.ok(&format!("tget {up} CurrentTask")), "");
    // Staged: nothing more is available, and the state says so.
    assert_eq!(a.ok("get AvailableUpdate"), serde_json::json!({}));
    assert_eq!(a.ok("get UpdateState"), "staged");
    assert_eq!(a.ok("get StagedDeployment")["version"], "2");
}

#[test]
fn root_cancel_resume_and_a_panel_that_crashes_mid_download() {
    as_root!();
    // 4 MB/s: the delta (about 24 MB) takes seconds, time to act in the middle.
    let setup = setup(Some(4 << 20));
    // The CLI's check says what the update changes, as the daemon does.
    let out = std::process::Command::new(common::arbor_bin())
        .args(["--sysroot", &setup.client, "upgrade", "--check"])
        .env("ARBOR_MACHINE_ID", MACHINE)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "upgraded   tool:amd64 1.0-1 -> 2.0-1",
        "added      newpkg:amd64 3.1",
        "removed    oldpkg:amd64 0.9",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    let bus = bus(&setup);
    let mut a = Panel::connect(&bus.address);
    let mut b = Panel::connect(&bus.address);
    b.ok("register");

    // A transaction waits for its caller's Start: another client may not start it,
    // and a Cancel abandons it before anything ran.
    let waiting = b.ok(r#"call Upgrade {"wait-for-start": true}"#);
    let waiting = waiting.as_str().unwrap().to_string();
    let r = a.ask(&format!("tcall {waiting} Start"));
    assert_eq!(r["error"], "org.freedesktop.DBus.Error.AccessDenied", "{r}");
    assert_eq!(b.ok(&format!("tget {waiting} Running")), true);
    b.ok(&format!("tcall {waiting} Cancel"));
    let (done, msg) = b.finished(&waiting, MINUTES);
    assert!(!done && msg.contains("cancelled"), "{msg}");
    assert!(a.signals(&waiting, "TaskBegin").is_empty(), "nothing ran");

    // Cancel mid-download: the transaction stops at its next safe point, deploys
    // nothing, and keeps what it fetched.
    let first = a.ok("start Upgrade").as_str().unwrap().to_string();
    a.until(MINUTES, |e| {
        e["signal"] == "DownloadProgress"
            && e["path"] == first.as_str()
            && e["args"][0].as_u64().unwrap() > 4 << 20
    });
    assert_eq!(a.ok(&format!("tget {first} CurrentTask")), "download");
    let mid = a.ok(&format!("tget {first} Percent")).as_u64().unwrap();
    assert!((5..70).contains(&mid), "{mid}");
    a.ok(&format!("tcall {first} Cancel"));
    let (done, msg) = a.finished(&first, MINUTES);
    assert!(!done && msg.contains("cancelled"), "{msg}");
    assert_eq!(
        a.ok(&format!("tget {first} ErrorName")),
        "org.arbor.Arbor1.Error.Cancelled"
    );
    assert_eq!(a.ok("get StagedDeployment"), serde_json::json!({}));
    let rates: Vec<u64> = a
        .signals(&first, "DownloadProgress")
        .iter()
        .map(|args| args[4].as_u64().unwrap())
        .collect();
    assert!(rates.iter().any(|r| *r > 0), "no rate: {rates:?}");

    // The next Upgrade resumes the download; its panel crashes mid-way, and the work
    // goes on: the other panel sees it finish.
    setup.nginx.clear_log();
    let second = a.ok("start Upgrade").as_str().unwrap().to_string();
    let resumed = a.until(MINUTES, |e| {
        e["signal"] == "DownloadProgress" && e["path"] == second.as_str()
    });
    assert!(
        resumed["args"][0].as_u64().unwrap() > 4 << 20,
        "it started again from nothing: {resumed}"
    );
    a.kill();
    assert_eq!(b.finished(&second, MINUTES), (true, String::new()));
    // The outcome document, a real a{sv}.
    let result: Value = b.ok(&format!("tget {second} Result"));
    assert_eq!(result["kind"], "upgrade", "{result}");
    let delta_size = std::fs::metadata(&setup.delta).unwrap().len();
    let fetched = result["update"]["fetched"]["bytes"].as_u64().unwrap();
    assert!(
        fetched < delta_size - (4 << 20),
        "{fetched} of {delta_size}: not resumed"
    );
    assert_eq!(b.ok("get StagedDeployment")["version"], "2");
    arbor_ok(&["--sysroot", &setup.client, "fsck"]);
}

/// `arbor serve` on a unix socket (and on TCP with a token), driven with curl.
struct Served {
    child: std::process::Child,
    socket: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(args: &[&str], ready: &std::path::Path) -> Served {
    let child = std::process::Command::new(common::arbor_bin())
        .arg("serve")
        .args(args)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let s = Served {
        child,
        socket: ready.to_path_buf(),
    };
    while !ready.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "arbor serve never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    s
}

/// curl ARGS…: (HTTP status, body as JSON, or as a string when it is not JSON).
fn curl(args: &[&str]) -> (u16, Value) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "--max-time", "300"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    let body = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.into()));
    (code.parse().unwrap(), body)
}

#[test]
fn root_a_dashboard_uses_the_http_api_with_curl() {
    as_root!();
    let setup = setup(None);
    let bus = bus(&setup);
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let served = serve(
        &["--socket", s(&sock), "--bus-address", &bus.address],
        &sock,
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "only its owner may connect by default");
    let api = |method: &str, path: &str, body: Option<&str>| {
        let url = format!("http://arbor{path}");
        let mut args = vec![
            "--unix-socket",
            s(&served.socket),
            "-X",
            method,
            url.as_str(),
        ];
        if let Some(b) = body {
            args.extend(["-H", "Content-Type: application/json", "--data", b]);
        }
        curl(&args)
    };
    let (code, status) = api("GET", "/api/status", None);
    assert_eq!(code, 200, "{status}");
    assert_eq!(status["pending"]["version"], "1");
    // Nothing offered yet: null, as a missing document is in JSON.
    assert_eq!(status["available"], Value::Null, "{status}");

    // Progress as server-sent events, followed from before anything starts.
    let mut events = std::process::Command::new("curl")
        .args(["-sN", "--unix-socket", s(&sock), "http://arbor/api/events"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out = events.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::sleep(Duration::from_millis(500));

    let (code, checked) = api("POST", "/api/check?wait=true", None);
    assert_eq!(code, 200, "{checked}");
    assert_eq!(checked["available"]["version"], "2");
    assert_eq!(
        checked["available"]["packages"]["upgraded"][0]["name"],
        "tool"
    );

    let (code, started) = api("POST", "/api/apply", None);
    assert_eq!(code, 202, "{started}");
    let url = started["url"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + MINUTES;
    let done = loop {
        let (code, t) = api("GET", &url, None);
        assert_eq!(code, 200, "{t}");
        if t["running"] == false {
            break t;
        }
        assert!(std::time::Instant::now() < deadline, "never finished: {t}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(done["success"], true, "{done}");
    assert_eq!(done["percent"], 100);
    assert_eq!(done["result"]["update"]["offered"]["version"], "2");
    let (_, status) = api("GET", "/api/status", None);
    assert_eq!(status["staged"]["version"], "2");
    assert_eq!(status["update_status"]["state"], "staged");

    // The event stream saw the upgrade's progress to its end.
    let mut lines = Vec::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(5)) {
        lines.push(l);
        if lines.iter().any(|l| l == "event: Finished")
            && lines
                .iter()
                .filter(|l| l.starts_with("event: Finished"))
                .count()
                >= 2
        {
            break;
        }
    }
    let _ = events.kill();
    let _ = events.wait();
    for e in [
        "event: PercentProgress",
        "event: DownloadProgress",
        "event: TaskBegin",
        "event: Finished",
        "event: PropertiesChanged",
    ] {
        assert!(
            lines.iter().any(|l| l == e),
            "no {e} in:\n{}",
            lines.join("\n")
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("data: ") && l.contains("\"percent\":100")),
        "{}",
        lines.join("\n")
    );

    // Rollback, waited for. In a folder sysroot nothing is booted, so there is nothing
    // to roll back to: the request worked (200) and the transaction failed, named.
    let (code, rolled) = api("POST", "/api/rollback?wait=true", None);
    assert_eq!(code, 200, "{rolled}");
    assert_eq!(rolled["method"], "Rollback", "{rolled}");
    assert_eq!(rolled["success"], false, "{rolled}");
    assert_eq!(
        rolled["error_name"],
        "org.arbor.Arbor1.Error.NothingPending"
    );
    assert!(
        rolled["error"]
            .as_str()
            .unwrap()
            .contains("no deployment to roll back to")
    );

    // The policy: read, changed, a wrong value refused whole.
    let (code, auto) = api("PUT", "/api/auto", Some(r#"{"auto_install": true}"#));
    assert_eq!(
        (code, &auto["auto_install"]),
        (200, &Value::Bool(true)),
        "{auto}"
    );
    let (code, err) = api("PUT", "/api/auto", Some(r#"{"preferred_time": "25:00"}"#));
    assert_eq!(code, 400, "{err}");
    assert_eq!(err["error"], "org.freedesktop.DBus.Error.InvalidArgs");
    assert_eq!(api("GET", "/api/auto", None).1["preferred_time"], "03:00");
    let (code, err) = api("PUT", "/api/auto", Some("not json"));
    assert_eq!(code, 400, "{err}");

    // TCP only with a private token file; a request without the token is 401.
    let out = common::arbor(&["serve", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs --token-file"));
    let token = dir.path().join("token");
    std::fs::write(&token, "a-long-enough-test-token-0123\n").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let args = [
        "serve",
        "--listen",
        &addr,
        "--token-file",
        s(&token),
        "--bus-address",
        &bus.address,
    ];
    let out = common::arbor(&args);
    assert!(String::from_utf8_lossy(&out.stderr).contains("others may read it"));
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut tcp = std::process::Command::new(common::arbor_bin())
        .args(args)
        .spawn()
        .unwrap();
    let url = format!("http://{addr}/api/status");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "never listened on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, body) = curl(&[&url]);
    assert_eq!(code, 401, "{body}");
    assert_eq!(body["error"], "unauthorized");
    let (code, _) = curl(&[
        "-H",
        "Authorization: Bearer wrong-token-of-some-length",
        &url,
    ]);
    assert_eq!(code, 401);
    let (code, body) = curl(&[
        "-H",
        "Authorization: Bearer a-long-enough-test-token-0123",
        &url,
    ]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["staged"]["version"], "2");
    let _ = tcp.kill();
    let _ = tcp.wait();
}

/// arbor's Cockpit page (`cockpit/arbor`) in a real browser: Debian's cockpit-ws with
/// a local session whose bridge reaches the test's bus, chromium headless driven
/// through chromedriver. It clicks Check and Install against the nginx-served
/// publication and checks what the page shows at each step; the screenshots are kept
/// in `target/cockpit-screenshots/`.
#[test]
fn root_the_cockpit_page_checks_and_installs_in_a_browser() {
    as_root!();
    for tool in [
        "/usr/lib/cockpit/cockpit-ws",
        "/usr/bin/chromium",
        "/usr/bin/chromedriver",
    ] {
        assert!(
            std::path::Path::new(tool).exists(),
            "{tool} is missing: run scripts/setup.sh"
        );
    }
    // 3 MB/s: the 24 MB delta takes long enough to be seen downloading.
    let setup = setup(Some(3 << 20));
    let bus = bus(&setup);
    // A change to /etc for the page to list, and for the reset to undo (not
    // /etc/hostname: a reset keeps the machine's own name).
    std::fs::write(
        common::deployment_dir(&setup.client, 0).join("etc/panel-test.conf"),
        "web1\n",
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir(data.path().join("cockpit")).unwrap();
    let page = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("cockpit/arbor");
    std::os::unix::fs::symlink(&page, data.path().join("cockpit/arbor")).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let bin_dir = PathBuf::from(common::arbor_bin())
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut ws = std::process::Command::new("/usr/lib/cockpit/cockpit-ws")
        .args(["--no-tls", "-a", "127.0.0.1", "-p", &port.to_string()])
        .arg("--local-session=cockpit-bridge")
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .env(
            "XDG_DATA_DIRS",
            format!("{}:/usr/share", data.path().display()),
        )
        .env("PATH", path)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "cockpit-ws never listened"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/cockpit-screenshots");
    // The page in Cockpit's shell, where its menu leads.
    let url = format!("http://127.0.0.1:{port}/arbor");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/integration/clients/cockpit_page.py"
    );
    let mut browser = std::process::Command::new("/usr/bin/python3")
        .args([script, &url, s(&shots)])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut go = browser.stdin.take().unwrap();
    let mut steps: Vec<Value> = Vec::new();
    {
        use std::io::{BufRead, Write};
        let lines = std::io::BufReader::new(browser.stdout.take().unwrap()).lines();
        for line in lines.map_while(Result::ok) {
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["step"] == "reboot-needed" {
                setup.nginx.stop();
                writeln!(go, "go").unwrap();
            }
            steps.push(v);
        }
    }
    let out = browser.wait_with_output().unwrap();
    let _ = ws.kill();
    let _ = ws.wait();
    assert!(
        out.status.success(),
        "the browser test failed after {steps:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let step = |name: &str| steps.iter().find(|s| s["step"] == name).unwrap().clone();
    // Nothing booted in a folder sysroot: version 1 waits for a reboot.
    let initial = step("initial");
    assert_eq!(initial["state"], "reboot", "{initial}");
    let etc = initial["etc"].as_str().unwrap();
    assert!(
        etc.contains("/etc/panel-test.conf") && etc.contains("Added"),
        "{etc}"
    );
    let confirm = step("reset-confirm");
    assert!(
        confirm["dialog"]
            .as_str()
            .unwrap()
            .contains("Roll back brings it all back"),
        "{confirm}"
    );
    let reset = step("reset-done");
    assert!(
        reset["etc"].as_str().unwrap().contains("No changes"),
        "{reset}"
    );
    assert_eq!(reset["error"], "", "{reset}");
    assert!(
        initial["deployments"]
            .as_str()
            .unwrap()
            .contains("origin:stable")
    );
    let available = step("update-available");
    assert_eq!(available["chip"], "Update available: 2", "{available}");
    // Beside Install: the step, estimated from the package lists (leaf packages).
    let hint = available["apply"].as_str().unwrap();
    assert!(
        hint.starts_with("Applies by live") && hint.contains("estimated from the package lists"),
        "{available}"
    );
    let text = available["available"].as_str().unwrap();
    for want in [
        "Version 2 on origin:stable",
        "tool 1.0-1 → 2.0-1",
        "added newpkg 3.1",
        "removed oldpkg 0.9",
    ] {
        assert!(text.contains(want), "no {want:?} in {text:?}");
    }
    let downloading = step("downloading");
    assert!(
        downloading["chip"]
            .as_str()
            .unwrap()
            .starts_with("Downloading "),
        "{downloading}"
    );
    assert!(
        downloading["progress"]
            .as_str()
            .unwrap()
            .contains(" MB of "),
        "{downloading}"
    );
    let done = step("reboot-needed");
    assert_eq!(done["chip"], "Staged, reboot needed", "{done}");
    assert_eq!(done["error"], "");
    let table = done["deployments"].as_str().unwrap();
    assert!(
        table.contains("staged") && table.contains("tool 1.0-1 → 2.0-1"),
        "{table}"
    );
    // The server gone, a check says so, with the daemon's message.
    let offline = step("offline");
    assert_eq!(offline["chip"], "Offline", "{offline}");
    assert!(!offline["error"].as_str().unwrap().is_empty(), "{offline}");
    for name in [
        "initial",
        "reset-confirm",
        "reset-done",
        "update-available",
        "downloading",
        "reboot-needed",
        "offline",
    ] {
        let png = std::fs::read(shots.join(format!("{name}.png"))).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{name}.png"
        );
    }
}
